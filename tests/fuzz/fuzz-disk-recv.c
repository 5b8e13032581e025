/*
 * Fuzz target for the receiving state machine of the disk channel
 * (src/disk/recv.c: SUMMARY, BLOCKS, PAGES with ZERO/DATA/REF, the
 * in-place check, NEED and the frames queued behind it, HASHDATA, PING
 * flushes, DONE), not only its decoders.
 *
 * The input is the byte stream a sender writes after HELLO: frames (an
 * 8-byte header, then the payload), as many as fit; a truncated last
 * frame is a lost connection. disk_recv_run_io() applies them to two
 * disks in memory behind our NBD server (nbd_server_serve_fd over a
 * socketpair per connection, as tests/unit/memdisk.c does): "disk0"
 * (1 MiB) and "disk1" (68 KiB + 512 bytes, not a multiple of a block).
 * Everything the receiver writes back must be well-formed messages of a
 * receiver, and the disks' sizes never change. A fifth of the inputs run
 * as with libvirt (the disks from BLOCKS, NBD exports), a fifth as a
 * standby (the disks from BLOCKS, image files in a directory of ours,
 * removed after each input).
 *
 * For speed the disks, their server threads and their nbd_server objects
 * live across inputs (a server serves one connection after another, as
 * nbd_server_serve() does); each input starts from zeroed disks, and every
 * connection of an input is over (shut down if the receiver left it open)
 * before the next input starts. Allocating the disks and starting threads
 * per input cost far more than the receiver itself.
 * Seeds: tests/fuzz/corpus/disk-recv/ (make-seeds-disk.c).
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <jansson.h>

#include "common/log.h"
#include "disk/disk.h"
#include "disk/internal.h"
#include "nbd/nbd.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DISK0_SIZE (1u << 20)
#define DISK1_SIZE (68u * 1024 + 512)

/* ---- two disks in memory, each behind up to MD_CONNS server threads ---- */

#define MD_CONNS 16

struct md_worker {
	struct mdisk *m;
	struct nbd_server *srv;
	pthread_t th;
	int fd;		/* to serve next (the worker takes it), or -1 */
	int hold;	/* our copy of the served socket (to shut it down), or -1 */
	bool busy;	/* given a connection that it has not finished */
};

struct mdisk {
	const char *name;
	uint8_t *data;
	size_t size;
	size_t dirty_lo, dirty_hi;	/* written since the last reset (lo < hi) */
	struct md_worker w[MD_CONNS];
	unsigned n_w;
};

static pthread_mutex_t md_lock = PTHREAD_MUTEX_INITIALIZER;	/* all of the above */
static pthread_cond_t md_cond = PTHREAD_COND_INITIALIZER;
static uint8_t disk0_data[DISK0_SIZE], disk1_data[DISK1_SIZE];
static struct mdisk mdisks[2] = {
	{ .name = "disk0", .data = disk0_data, .size = DISK0_SIZE },
	{ .name = "disk1", .data = disk1_data, .size = DISK1_SIZE },
};

static int md_size(void *user, uint64_t *ret)
{
	*ret = ((struct mdisk *)user)->size;
	return 0;
}

/* The server checked the range against the export size. */
static bool md_inside(struct mdisk *m, const struct nbd_io *io)
{
	return io->offset <= m->size && io->length <= m->size - io->offset;
}

static int md_read(void *user, struct nbd_io *io)
{
	struct mdisk *m = user;

	if (!md_inside(m, io))
		return -EIO;
	pthread_mutex_lock(&md_lock);
	memcpy(io->data, m->data + io->offset, io->length);
	pthread_mutex_unlock(&md_lock);
	return 0;
}

static int md_write(void *user, struct nbd_io *io)
{
	struct mdisk *m = user;

	if (!md_inside(m, io))
		return -EIO;
	pthread_mutex_lock(&md_lock);
	memcpy(m->data + io->offset, io->data, io->length);
	if (m->dirty_lo >= m->dirty_hi || io->offset < m->dirty_lo)
		m->dirty_lo = io->offset;
	if (io->offset + io->length > m->dirty_hi)
		m->dirty_hi = io->offset + io->length;
	pthread_mutex_unlock(&md_lock);
	return 0;
}

static int md_write_zeroes(void *user, struct nbd_io *io)
{
	struct mdisk *m = user;

	if (!md_inside(m, io))
		return -EIO;
	pthread_mutex_lock(&md_lock);
	memset(m->data + io->offset, 0, io->length);
	pthread_mutex_unlock(&md_lock);
	return 0;
}

static int md_flush(void *user, struct nbd_io *io)
{
	(void)user;
	(void)io;
	return 0;
}

static const struct nbd_export_ops md_ops = {
	.size = md_size,
	.read = md_read,
	.write = md_write,
	.write_zeroes = md_write_zeroes,
	.flush = md_flush,
};

static void *md_worker_main(void *arg)
{
	struct md_worker *w = arg;
	int fd;

	for (;;) {
		pthread_mutex_lock(&md_lock);
		while (w->fd < 0)
			pthread_cond_wait(&md_cond, &md_lock);
		fd = w->fd;
		w->fd = -1;
		pthread_mutex_unlock(&md_lock);
		(void)nbd_server_serve_fd(w->srv, fd);	/* closes fd */
		pthread_mutex_lock(&md_lock);
		w->busy = false;
		pthread_cond_broadcast(&md_cond);
		pthread_mutex_unlock(&md_lock);
	}
	return NULL;
}

/* A connection to disk m served by an idle worker (a new one if none is). */
static int md_connect(struct mdisk *m, const struct nbd_client_config *cfg,
		      struct nbd_client **ret)
{
	struct md_worker *w = NULL;
	int sv[2];
	unsigned i;

	pthread_mutex_lock(&md_lock);
	for (i = 0; i < m->n_w && !w; i++)
		if (!m->w[i].busy)
			w = &m->w[i];
	if (!w && m->n_w < MD_CONNS) {
		struct nbd_server_config sc = { .export_name = m->name };

		w = &m->w[m->n_w];
		w->m = m;
		w->fd = w->hold = -1;
		w->srv = nbd_server_new(&sc, &md_ops, m);
		if (!w->srv || pthread_create(&w->th, NULL, md_worker_main, w)) {
			nbd_server_free(w->srv);
			w->srv = NULL;
			pthread_mutex_unlock(&md_lock);
			return -ENOMEM;
		}
		m->n_w++;
	}
	if (!w) {
		pthread_mutex_unlock(&md_lock);
		return -EMFILE;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		pthread_mutex_unlock(&md_lock);
		return -errno;
	}
	w->hold = dup(sv[1]);
	if (w->hold < 0) {
		close(sv[0]);
		close(sv[1]);
		pthread_mutex_unlock(&md_lock);
		return -EMFILE;
	}
	w->busy = true;
	w->fd = sv[1];
	pthread_cond_broadcast(&md_cond);
	pthread_mutex_unlock(&md_lock);
	return nbd_client_connect_fd(sv[0], cfg, ret, NULL, 0);
}

/* Ends every connection of this input (as stopping the server would) and
 * waits until no worker serves one; zeroes what was written. */
static void md_reset(void)
{
	unsigned k, i;

	pthread_mutex_lock(&md_lock);
	for (k = 0; k < 2; k++)
		for (i = 0; i < mdisks[k].n_w; i++) {
			struct md_worker *w = &mdisks[k].w[i];

			if (w->busy)
				(void)shutdown(w->hold, SHUT_RDWR);
			while (w->busy)
				pthread_cond_wait(&md_cond, &md_lock);
			if (w->hold >= 0)
				close(w->hold);
			w->hold = -1;
		}
	for (k = 0; k < 2; k++) {
		if (mdisks[k].dirty_lo < mdisks[k].dirty_hi)
			memset(mdisks[k].data + mdisks[k].dirty_lo, 0,
			       mdisks[k].dirty_hi - mdisks[k].dirty_lo);
		mdisks[k].dirty_lo = mdisks[k].dirty_hi = 0;
	}
	pthread_mutex_unlock(&md_lock);
}

struct feed {
	const uint8_t *p;
	size_t len, pos;
	size_t written;
};

static int read_frame(void *opaque, struct wire_frame *f)
{
	struct feed *fd = opaque;
	int r;

	if (fd->pos == fd->len)
		return 0;
	if (fd->len - fd->pos < WIRE_HDR_LEN)
		return -ECONNRESET;
	r = wire_header_decode(fd->p + fd->pos, f);
	if (r < 0)
		return r;
	if (fd->len - fd->pos - WIRE_HDR_LEN < f->len)
		return -ECONNRESET;
	f->payload = fd->p + fd->pos + WIRE_HDR_LEN;
	fd->pos += WIRE_HDR_LEN + f->len;
	return 1;
}

/* What the receiver says must be whole, valid frames of a receiver. */
static int write_frames(void *opaque, const void *data, size_t len)
{
	struct feed *fd = opaque;
	const uint8_t *p = data;
	struct wire_frame f;
	struct wire_msg m;

	while (len) {
		if (len < WIRE_HDR_LEN || wire_header_decode(p, &f) < 0 ||
		    len - WIRE_HDR_LEN < f.len)
			__builtin_trap();
		f.payload = p + WIRE_HDR_LEN;
		if (wire_frame_decode(&f, &m) < 0 || !wire_msg_role_ok(f.type, WIRE_ROLE_RECEIVER))
			__builtin_trap();
		p += WIRE_HDR_LEN + f.len;
		len -= WIRE_HDR_LEN + f.len;
		fd->written++;
	}
	return 0;
}

static bool libvirt_input;	/* this input runs as with libvirt (io.libvirt) */

static int nbd_connect(void *opaque, unsigned k, const struct nbd_client_config *cfg,
		       struct nbd_client **ret)
{
	(void)opaque;
	/* With libvirt, BLOCKS may name more disks than the two exports here. */
	if (k >= 2 && libvirt_input)
		return -ENOENT;
	if (k >= 2)
		__builtin_trap();
	return md_connect(&mdisks[k], cfg, ret);
}

static char standby_path[512];

static void standby_remove(void)
{
	rmdir(standby_path);
}

/* A standby's directory for this process's inputs (made once, emptied after each). */
static const char *standby_dir(void)
{
	if (!standby_path[0]) {
		snprintf(standby_path, sizeof(standby_path), "%s/fuzz-disk-standby.XXXXXX",
			 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
		if (!mkdtemp(standby_path))
			abort();
		atexit(standby_remove);
	}
	return standby_path;
}

static void standby_clear(const char *dir)
{
	struct dirent *e;
	DIR *d = opendir(dir);
	char path[1024];

	while (d && (e = readdir(d)))
		if (e->d_name[0] != '.') {
			snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
			unlink(path);
		}
	if (d)
		closedir(d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool once;
	struct disk_dev devs[2] = {
		{ .device = "disk0", .node = "node0", .size = DISK0_SIZE },
		{ .device = "disk1", .node = "node1", .size = DISK1_SIZE },
	};
	struct feed fd = { .p = data, .len = size };
	struct disk_recv_io io = {
		.opaque = &fd,
		.read_frame = read_frame,
		.write = write_frames,
		.nbd_connect = nbd_connect,
		/* Some inputs as with libvirt: the disks come from BLOCKS itself. */
		.libvirt = size % 5 == 4,
		/* Some as a standby: BLOCKS names image files of the receiver's own. */
		.standby_dir = size % 5 == 3 ? standby_dir() : NULL,
	};
	struct disk_recv *dr = NULL;
	json_t *report;
	uint8_t block[4096];
	int r;

	if (!once) {
		once = true;
		signal(SIGPIPE, SIG_IGN);
		tsb_log_set_level(getenv("TSB_FUZZ_TRACE") ? TSB_LOG_DEBUG : TSB_LOG_ERROR);
	}
	libvirt_input = io.libvirt;
	r = disk_recv_run_io(devs, 2, NULL, &io, &dr);
	if (!dr)
		goto out;
	/* SUMMARY always goes first. */
	if (!fd.written)
		__builtin_trap();
	/* Page-cache restore reads back what was written (or finds it changed). */
	if (size >= 32 && disk_recv_has(dr, data + size - 32))
		(void)disk_recv_get(dr, data + size - 32, block);
	report = json_object();
	(void)disk_recv_finish(dr, NULL, r == 0, report, NULL, 0);
	json_decref(report);
out:
	md_reset();
	if (io.standby_dir)
		standby_clear(io.standby_dir);
	return 0;
}
