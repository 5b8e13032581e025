/*
 * The destination side of the disk route: the destination QEMU exports
 * its disks over NBD on a private unix socket; a thread takes the disk
 * channel and applies its writes through NBD clients (docs/disk.md).
 */
#include "disk/disk.h"
#include "disk/internal.h"

#include "common/buf.h"
#include "common/fault.h"
#include "common/file.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "nbd/nbd.h"
#include "qmp/qmp.h"
#include "store/diskindex.h"
#include "store/filter.h"
#include "wire/accept.h"
#include "wire/need.h"
#include "wire/codec.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define BLOCK ((unsigned)WIRE_PAGE_SIZE)
/* Largest write we hand the destination QEMU at once. */
#define RUN_MAX (4u << 20)
/*
 * Requests in flight to the destination QEMU per disk. One at a time, a
 * frame of changed blocks scattered among unchanged ones (a run breaks at
 * each block in place) cost one local round trip per block and left the
 * link idle behind the window: the receiver was the bottleneck (bench D1).
 */
#define NBD_INFLIGHT 16
/*
 * Written bytes after which a disk gets an NBD FLUSH in the background: the
 * flush the mirror makes before it is ready then finds little left to
 * write back (D1: ~100 MB dirty, 0.4-0.6 s of fdatasync at the end of the
 * bulk copy, before memory could move).
 */
#define BG_FLUSH_BYTES (32u << 20)
/*
 * The target under a frame's REF, SAME and ZERO entries is read in
 * ranges of at most TGT_READ_MAX bytes (neighbours up to TGT_GAP apart
 * share a read), TGT_MAX bytes a frame at most: a frame of 256 ZERO
 * entries of 64 KiB is 16 MiB.
 */
#define TGT_READ_MAX (4u << 20)
#define TGT_GAP (64u << 10)
#define TGT_MAX (24u << 20)
#define TGT_NONE SIZE_MAX
/*
 * Frames kept while a NEED is answered: the sender has at most DISK_WINDOW
 * PAGES frames of DISK_WINDOW_BYTES unacknowledged, besides a few PINGs
 * (flushes, keepalives) and its DONE. More is a broken or hostile sender.
 */
#define BACKLOG_MAX_PAGES DISK_WINDOW
#define BACKLOG_MAX_OTHER 256
/* The page-cache restore map starts with this many slots. */
#define WM_MIN_CAP 1024
/* A standby's image may be this large at most (sparse: only what is written takes room). */
#define DISK_STANDBY_MAX_SIZE (1ull << 43)

struct rdisk {
	struct disk_dev dev;
	char export_id[64];
	bool exported, used, marked;
	char marker[4200];
	struct nbd_client *cl;
	int tfd;			/* the image QEMU has open, or -1 */
	uint64_t unflushed;		/* bytes written since the last flush was sent */
	bool dirty;			/* NBD writes since the last flush_disk() */
	bool checked_in_file;		/* tfd was opened: the target is read in it */
	bool written_in_file;		/* and written in it (QEMU may write it) */
	/* statistics */
	uint64_t bytes_written, bytes_zeroed, flushes;
	uint64_t writes;		/* NBD WRITE and WRITE_ZEROES requests */
	uint64_t bytes_zero_in_place;	/* ZERO entries whose target held them: no write */
	uint64_t bytes_checked;		/* target bytes read to find blocks in place */
	uint64_t blk_zero, blk_data, blk_ref, blk_need, blk_same, blk_zero_same;
};

/*
 * A request to the destination QEMU not collected yet. NBD does not order
 * concurrent requests: a range is never read or written while a write
 * overlapping it is in flight (fl_overlaps).
 */
struct fl_req {
	uint64_t cookie;
	int k;			/* d[] index */
	uint16_t type;		/* NBD_CMD_READ (the target), WRITE, WRITE_ZEROES, FLUSH */
	int buf;		/* the wbuf[] a WRITE's data is in; else -1 */
	uint64_t off, len;
};

/* Which requests fl_drain() waits for: these, or those whose data is in wbuf[n]. */
#define FL_ALL (-1)
#define FL_READS (-2)

/* hash -> where it was written (page-cache restore); under disk_recv.lock. */
struct wmap_entry {
	uint8_t hash[32];
	uint64_t offset;
	int16_t disk;		/* -1: empty */
};

struct disk_recv {
	struct wire_tls *tls;
	int lfd;
	const struct disk_recv_io *io;	/* tests, fuzz: instead of conn and sock */
	struct diskindex *index;
	uint64_t stall_ms;
	char migration[WIRE_MAX_ID + 1];	/* the sender we take (disk_recv_options) */
	char credential[160];
	char dir[80], sock[100];
	bool server_started;
	/* libvirt: its QEMU's exports on nbd_addr, opened at the first write. */
	bool libvirt, libvirt_open;
	char nbd_addr[300];
	bool applied_any;		/* a PAGES frame was applied (fault point) */
	/* A standby: the disks are image files of ours in this directory. */
	char standby_dir[3800];
	pid_t qemu_pid;			/* the destination QEMU (QMP peer), or 0 */
	unsigned n;
	struct rdisk d[DISK_MAX];
	int map[DISK_MAX];		/* wire index -> d[]; -1 unknown */
	unsigned n_map;

	pthread_t th;
	bool th_started;
	pthread_mutex_t lock;
	struct wire_conn *conn;		/* set under lock (abort from finish) */
	volatile bool stop;
	volatile bool stop_accepting;	/* the listening port is needed again */
	bool connected, done, failed;
	char error[256];
	unsigned refused;		/* connections refused while accepting (lock) */

	struct wire_zstd *z;
	struct tsb_buf lit, hd, cur;
	struct wire_backlog backlog;	/* frames read while a NEED waited (wire/need.h) */
	unsigned bl_pages, bl_other;	/* PAGES and other frames in the backlog */
	uint64_t bl_page_bytes;		/* the bytes of those PAGES */
	/* fetch(): what it waits for, and where the answer's blocks go. */
	const uint8_t (*fetch_hashes)[WIRE_HASH_LEN];
	size_t fetch_count;
	uint8_t *fetch_out;
	uint64_t applied, frames_in;
	/*
	 * Where the channel thread's time goes: waiting for frames (the link
	 * or the sender is behind), applying them, and of that reading the
	 * target and writing to the destination QEMU; flushing (PING, DONE).
	 */
	uint64_t wait_ns, apply_ns, target_ns, write_ns, flush_ns;
	/*
	 * Requests in flight (the writes of the last frames, the reads of this
	 * one's target), and the data of the writes: frames fill wbuf[0] and
	 * wbuf[1] in turn, each reused once the writes of the frame before the
	 * last are done (it never moves while a write points into it).
	 */
	struct fl_req fl[DISK_MAX * NBD_INFLIGHT];
	unsigned n_fl, n_fl_reads;
	bool tgt_failed;		/* a READ of this frame's target failed */
	struct tsb_buf wbuf[2];
	unsigned wcur;			/* the one this frame fills */
	uint64_t frames_written;
	/* the current write run: run_len bytes at run_off, its data at wbuf[wcur] + run_at */
	int run_disk;
	uint64_t run_off;
	bool run_zero;
	uint64_t run_len;
	size_t run_at;
	uint8_t *resolved;		/* count * BLOCK for REF entries */
	bool *same;			/* count: already there, no write */
	size_t *tgt_at;			/* count: the entry's target in tgt, or TGT_NONE */
	uint64_t *ent_off;		/* count: offset of each entry (overlaps) */
	int *ent_disk;			/* count: its disk (d[] index), -1 if bad */
	struct tgt_read *tr;		/* count: the reads of tgt */
	size_t resolved_cap;
	struct tsb_buf tgt;		/* the target under a frame's REF/SAME/ZERO entries */
	struct wmap_entry *wm;
	size_t wm_cap, wm_count;
	size_t wm_max;			/* entries at most: blocks of the disks written */
	pthread_mutex_t rlock;		/* the read clients below */
	struct nbd_client *rd[DISK_MAX];
	uint64_t restored;
};

/* One read of the target: [lo, lo + len) of disk k into tgt at at. */
struct tgt_read {
	int k;
	uint64_t lo, len;
	size_t at;
};

static void dr_fail(struct disk_recv *dr, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void dr_fail(struct disk_recv *dr, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&dr->lock);
	if (!dr->failed) {
		dr->failed = true;
		va_start(ap, fmt);
		vsnprintf(dr->error, sizeof(dr->error), fmt, ap);
		va_end(ap);
		log_debug("disk: %s", dr->error);
	}
	pthread_mutex_unlock(&dr->lock);
}

void disk_recv_stop_listening(struct disk_recv *dr)
{
	if (dr)
		dr->stop_accepting = true;
}

int disk_recv_wait_done(struct disk_recv *dr, uint64_t timeout_ms, volatile int *sig,
			char *err, size_t errlen)
{
	uint64_t t0 = tsb_now_ns();
	bool connected, done, failed;

	if (!dr)
		return 0;
	for (;;) {
		pthread_mutex_lock(&dr->lock);
		/*
		 * The sender starts QEMU's migration only after its mirrors are
		 * ready, i.e. after our SUMMARY: a channel that is not connected
		 * by now never carried a disk.
		 */
		connected = dr->connected;
		done = dr->done;
		failed = dr->failed;
		if (failed)
			snprintf(err, errlen, "%s", dr->error);
		pthread_mutex_unlock(&dr->lock);
		if (!connected || done)
			return 0;
		if (failed)
			return -EIO;
		if (sig && *sig) {
			snprintf(err, errlen, "interrupted by signal %d", *sig);
			return -EINTR;
		}
		/* Bounded even if a sender keeps the channel alive without its DONE. */
		if (timeout_ms && tsb_now_ns() - t0 > timeout_ms * 1000000) {
			snprintf(err, errlen, "the sender's last disk writes did not come within %llu s",
				 (unsigned long long)(timeout_ms / 1000));
			return -ETIMEDOUT;
		}
		usleep(1000);
	}
}

bool disk_recv_failed(struct disk_recv *dr)
{
	bool f;

	if (!dr)
		return false;
	pthread_mutex_lock(&dr->lock);
	f = dr->failed;
	pthread_mutex_unlock(&dr->lock);
	return f;
}

/* ---- the channel: a wire_conn, or the io of disk_recv_run_io() ---- */

static int ch_read_frame(struct disk_recv *dr, struct wire_frame *f)
{
	return dr->io ? dr->io->read_frame(dr->io->opaque, f) : wire_conn_read_frame(dr->conn, f);
}

static int ch_write(struct disk_recv *dr, const void *data, size_t len)
{
	return dr->io ? dr->io->write(dr->io->opaque, data, len) :
			wire_conn_write(dr->conn, data, len);
}

static const char *ch_errmsg(struct disk_recv *dr)
{
	return dr->io ? "" : wire_conn_errmsg(dr->conn);
}

static void ch_set_timeout(struct disk_recv *dr, int ms)
{
	if (!dr->io)
		wire_conn_set_timeout(dr->conn, ms);
}

/*
 * libvirt: the destination QEMU that libvirt prepares exports its disks on
 * dr->nbd_addr; the disk list comes before libvirt's Prepare, so dial until
 * it listens (bounded).
 */
static int connect_libvirt_export(struct disk_recv *dr, const struct nbd_client_config *cc,
				  struct nbd_client **ret, char *why, size_t whylen)
{
	char host[256], port[32], m[256] = "";
	uint64_t t0 = tsb_now_ns();
	int fd, r;

	if (tsb_split_hostport(dr->nbd_addr, host, sizeof(host), port, sizeof(port)) < 0) {
		if (why)
			snprintf(why, whylen, "bad NBD address '%s'", dr->nbd_addr);
		return -EINVAL;
	}
	for (;;) {
		r = wire_tcp_connect(host, port, 1000, &fd, m, sizeof(m));
		if (r == 0)
			return nbd_client_connect_fd(fd, cc, ret, why, whylen);
		if (dr->stop || tsb_now_ns() - t0 > DISK_LIBVIRT_WAIT_MS * 1000000ull)
			break;
		usleep(100000);
	}
	if (why)
		snprintf(why, whylen, "libvirt's destination QEMU exports no disk on %s: %s",
			 dr->nbd_addr, m);
	return r;
}

/* An NBD client of the destination's export of disk k. */
static int ch_nbd_connect(struct disk_recv *dr, unsigned k, const struct nbd_client_config *cc,
			  struct nbd_client **ret, char *why, size_t whylen)
{
	int r;

	if (dr->libvirt && !dr->io)
		return connect_libvirt_export(dr, cc, ret, why, whylen);
	if (!dr->io)
		return nbd_client_connect_unix(dr->sock, cc, ret, why, whylen);
	r = dr->io->nbd_connect(dr->io->opaque, k, cc, ret);
	if (r < 0 && why)
		snprintf(why, whylen, "disk %s: cannot connect to its export: %s",
			 dr->d[k].dev.device, strerror(-r));
	return r;
}

static int send_msg(struct disk_recv *dr, struct tsb_buf *b)
{
	int r = b->err ? b->err : ch_write(dr, b->data, b->len);

	tsb_buf_reset(b);
	return r;
}

/* DONE, CANCEL or ERROR (best effort). */
static void send_status(struct disk_recv *dr, uint8_t type, uint32_t code, const char *text)
{
	struct tsb_buf b;

	tsb_buf_init(&b);
	if (wire_encode_status(&b, type, code, text) == 0)
		(void)send_msg(dr, &b);
	tsb_buf_fini(&b);
}

static int send_u64(struct disk_recv *dr, uint8_t type, uint64_t v)
{
	struct tsb_buf b;
	int r;

	tsb_buf_init(&b);
	wire_encode_u64(&b, type, v);
	r = send_msg(dr, &b);
	tsb_buf_fini(&b);
	return r;
}

static void mark_incomplete(struct rdisk *d)
{
	static const char suffix[] = ".tsubame-incomplete";
	size_t n = strnlen(d->dev.file, sizeof(d->dev.file));
	int fd;

	if (d->marked || !n || n + sizeof(suffix) > sizeof(d->marker))
		return;
	memcpy(d->marker, d->dev.file, n);
	memcpy(d->marker + n, suffix, sizeof(suffix));
	fd = open(d->marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		log_warn("disk %s: cannot create %s: %s", d->dev.device, d->marker,
			 strerror(errno));
		return;
	}
	dprintf(fd, "tsubame: this image is the target of a disk migration that has not "
		"completed; its content is not consistent\n");
	close(fd);
	d->marked = true;
}

/* ---- blocks written, for page-cache restore ---- */

/*
 * An open-addressing table (linear probing, at most half full). It holds
 * at most wm_max entries, one per block of the disks being written: the
 * sender decides how many distinct contents it writes, not how much
 * memory we spend. When it is full, a new content evicts an old one.
 */
static size_t wm_home(const uint8_t *hash, size_t cap)
{
	uint64_t h;

	memcpy(&h, hash, sizeof(h));
	return (size_t)h & (cap - 1);
}

static size_t wm_slot(const struct disk_recv *dr, const uint8_t *hash)
{
	return wm_home(hash, dr->wm_cap);
}

static void wm_insert(struct wmap_entry *wm, size_t cap, const uint8_t *hash, int disk,
		      uint64_t off, size_t *count)
{
	size_t j;

	for (j = wm_home(hash, cap); wm[j].disk >= 0; j = (j + 1) & (cap - 1))
		if (!memcmp(wm[j].hash, hash, 32))
			break;
	if (wm[j].disk < 0)
		(*count)++;
	memcpy(wm[j].hash, hash, 32);
	wm[j].disk = (int16_t)disk;
	wm[j].offset = off;
}

/* Removes slot i, moving later entries of its cluster back (no tombstones). */
static void wm_delete(struct wmap_entry *wm, size_t cap, size_t i, size_t *count)
{
	size_t j = i, k;

	for (;;) {
		j = (j + 1) & (cap - 1);
		if (wm[j].disk < 0)
			break;
		k = wm_home(wm[j].hash, cap);
		/* wm[j] stays when its home lies cyclically in (i, j]. */
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		wm[i] = wm[j];
		i = j;
	}
	wm[i].disk = -1;
	(*count)--;
}

static bool wm_has_key(const struct wmap_entry *wm, size_t cap, const uint8_t *hash)
{
	size_t j;

	for (j = wm_home(hash, cap); wm[j].disk >= 0; j = (j + 1) & (cap - 1))
		if (!memcmp(wm[j].hash, hash, 32))
			return true;
	return false;
}

/* Remembers that a block with this content now lies at (disk, off). */
static void wm_put(struct disk_recv *dr, const uint8_t *hash, int disk, uint64_t off)
{
	size_t j;

	pthread_mutex_lock(&dr->lock);
	if ((dr->wm_count + 1) * 2 > dr->wm_cap && dr->wm_count < dr->wm_max) {
		size_t cap = dr->wm_cap ? dr->wm_cap * 2 : WM_MIN_CAP, i, n = 0;
		struct wmap_entry *wm = malloc(cap * sizeof(*wm));

		if (!wm) {
			pthread_mutex_unlock(&dr->lock);
			return;		/* only an optimisation */
		}
		for (i = 0; i < cap; i++)
			wm[i].disk = -1;
		for (i = 0; i < dr->wm_cap; i++)
			if (dr->wm[i].disk >= 0)
				wm_insert(wm, cap, dr->wm[i].hash, dr->wm[i].disk,
					  dr->wm[i].offset, &n);
		free(dr->wm);
		dr->wm = wm;
		dr->wm_cap = cap;
		dr->wm_count = n;
	}
	if (!dr->wm_cap) {
		pthread_mutex_unlock(&dr->lock);
		return;
	}
	if (dr->wm_count && dr->wm_count >= dr->wm_max && !wm_has_key(dr->wm, dr->wm_cap, hash)) {
		/* Full: the first entry at or after this content's home goes. */
		for (j = wm_home(hash, dr->wm_cap); dr->wm[j].disk < 0; j = (j + 1) & (dr->wm_cap - 1))
			;
		wm_delete(dr->wm, dr->wm_cap, j, &dr->wm_count);
	}
	wm_insert(dr->wm, dr->wm_cap, hash, disk, off, &dr->wm_count);
	pthread_mutex_unlock(&dr->lock);
}

static bool wm_find(struct disk_recv *dr, const uint8_t *hash, int *ret_disk, uint64_t *ret_off)
{
	bool found = false;
	size_t j;

	pthread_mutex_lock(&dr->lock);
	if (dr->wm_cap) {
		for (j = wm_slot(dr, hash); dr->wm[j].disk >= 0; j = (j + 1) & (dr->wm_cap - 1)) {
			if (!memcmp(dr->wm[j].hash, hash, 32)) {
				*ret_disk = dr->wm[j].disk;
				*ret_off = dr->wm[j].offset;
				found = true;
				break;
			}
		}
	}
	pthread_mutex_unlock(&dr->lock);
	return found;
}

bool disk_recv_has(struct disk_recv *dr, const uint8_t hash[32])
{
	int k;
	uint64_t off;

	return dr && wm_find(dr, hash, &k, &off);
}

static int pread_full(int fd, uint8_t *buf, size_t len, uint64_t off);

int disk_recv_get(struct disk_recv *dr, const uint8_t hash[32], uint8_t out[WIRE_PAGE_SIZE])
{
	struct nbd_client_config cc = { .max_inflight = 1 };
	uint8_t got[WIRE_HASH_LEN];
	uint64_t off;
	int k, r;

	if (!dr || !wm_find(dr, hash, &k, &off))
		return -ENOENT;
	if (dr->d[k].tfd >= 0 && dr->d[k].written_in_file) {
		/* Our own writes are in the file already (a standby's image, QEMU's raw file). */
		r = pread_full(dr->d[k].tfd, out, BLOCK, off);
		goto check;
	}
	pthread_mutex_lock(&dr->rlock);
	r = 0;
	if (!dr->rd[k]) {
		cc.export_name = dr->d[k].dev.device;
		r = ch_nbd_connect(dr, (unsigned)k, &cc, &dr->rd[k], NULL, 0);
	}
	if (r == 0)
		r = nbd_client_pread(dr->rd[k], out, BLOCK, off);
	pthread_mutex_unlock(&dr->rlock);
check:
	if (r < 0 || wire_sha256(out, BLOCK, got) < 0 || memcmp(got, hash, WIRE_HASH_LEN))
		return -ENOENT;
	__atomic_add_fetch(&dr->restored, 1, __ATOMIC_RELAXED);
	return 0;
}

/*
 * The target is read, and written, straight in the image when the
 * destination QEMU has it open as a raw file of the disk's size: NBD READs
 * of the whole disk (1 GiB for D1, every unchanged block) cost the
 * destination QEMU and the receiver more than all the writes, and the
 * writes through QEMU's export (1 GiB for a clone arriving on an empty
 * target) were the disk channel's bottleneck. The file is QEMU's own: its
 * open file, taken with pidfd_getfd() (the QMP peer's PID) and checked to
 * still be the image's path, then opened anew through /proc/self/fd (our
 * own descriptor, so no O_DIRECT of QEMU's). It is opened for writing only
 * when QEMU's own descriptor is writable: the receiver (often root) must
 * not write a file that its QMP peer could only read. A raw image has
 * nothing QEMU caches above the kernel (its page cache, or O_DIRECT, which
 * the kernel keeps coherent with it), nobody but this receiver writes it
 * while the guest waits for the migration, and a flush marker or DONE is
 * answered only after fdatasync(): what QEMU reads afterwards is what the
 * NBD route would have written. Anything else (qcow2, a raw offset or
 * size, no pidfd_getfd() on QEMU): -1, NBD READs and WRITEs; a read-only
 * descriptor: reads here, NBD WRITEs (*writable false).
 */
static int open_qemu_image(pid_t pid, const struct disk_dev *dev, bool *writable)
{
	char dir[64], link[sizeof(dev->file)], self[64];
	struct dirent *e;
	struct stat st;
	int pidfd, dup = -1, fd = -1, fl;
	DIR *d;

	*writable = false;
	if (pid <= 0 || strcmp(dev->format, "raw") || dev->file[0] != '/')
		return -1;
	pidfd = pidfd_open(pid, 0);
	if (pidfd < 0)
		return -1;
	snprintf(dir, sizeof(dir), "/proc/%d/fd", (int)pid);
	d = opendir(dir);
	while (d && dup < 0 && (e = readdir(d))) {
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
		if (n <= 0)
			continue;
		link[n] = '\0';
		if (strcmp(link, dev->file))
			continue;
		dup = pidfd_getfd(pidfd, atoi(e->d_name), 0);
		if (dup < 0)
			break;
		/* The same file still (QEMU may have closed and reused that fd)? */
		snprintf(self, sizeof(self), "/proc/self/fd/%d", dup);
		n = readlink(self, link, sizeof(link) - 1);
		if (n <= 0 || (link[n] = '\0', strcmp(link, dev->file))) {
			close(dup);
			dup = -1;
		}
	}
	if (d)
		closedir(d);
	close(pidfd);
	if (dup < 0)
		return -1;
	/* Written only where QEMU itself may write; never with O_DIRECT's rules. */
	fl = fcntl(dup, F_GETFL);
	*writable = fl >= 0 && (fl & O_ACCMODE) != O_RDONLY;
	fd = open(self, (*writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	close(dup);
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
			(uint64_t)st.st_size != dev->size)) {
		close(fd);
		fd = -1;
	}
	if (fd < 0)
		*writable = false;
	else
		log_debug("disk %s: the target is read%s in %s, QEMU's open file",
			  dev->device, *writable ? " and written" : "", dev->file);
	return fd;
}

/* pread of exactly len bytes: 0, or -1 (error, or the file ended). */
static int pread_full(int fd, uint8_t *buf, size_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pread(fd, buf, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
		off += (uint64_t)n;
	}
	return 0;
}

/* Zeroes [off, off + len) of the image: ZERO_RANGE, a hole, else writes of zeroes. */
static int zero_in_file(int fd, uint64_t off, uint64_t len)
{
	static const uint8_t zeroes[64 << 10];
	int r;

	if (fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) == 0 ||
	    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off,
		      (off_t)len) == 0)
		return 0;
	while (len) {
		size_t n = len < sizeof(zeroes) ? (size_t)len : sizeof(zeroes);

		r = tsb_pwrite_all(fd, zeroes, n, (off_t)off);
		if (r < 0)
			return r;
		off += n;
		len -= n;
	}
	return 0;
}

/* ---- requests to the destination QEMU ---- */

static const char *nbd_why(struct rdisk *d, int r)
{
	return nbd_client_error(d->cl)[0] ? nbd_client_error(d->cl) : strerror(-r);
}

/*
 * Collects one finished request of disk k (one must be pending). A failed
 * write, or a lost connection, fails the channel; a failed read only means
 * that this frame's entries are written without checking the target.
 */
static int fl_collect(struct disk_recv *dr, int k)
{
	struct rdisk *d = &dr->d[k];
	struct nbd_completion c;
	struct fl_req q;
	unsigned i;
	int r;

	r = nbd_client_wait(d->cl, &c);
	if (r < 0) {
		dr_fail(dr, "disk %s: the destination QEMU's export: %s", d->dev.device,
			nbd_why(d, r));
		return r;
	}
	for (i = 0; i < dr->n_fl; i++)
		if (dr->fl[i].k == k && dr->fl[i].cookie == c.cookie)
			break;
	if (i == dr->n_fl) {
		dr_fail(dr, "disk %s: a reply to a request not made", d->dev.device);
		return -EPROTO;
	}
	q = dr->fl[i];
	dr->fl[i] = dr->fl[--dr->n_fl];
	if (q.type == NBD_CMD_READ) {
		dr->n_fl_reads--;
		if (c.err)
			dr->tgt_failed = true;
		return 0;
	}
	if (c.err) {
		dr_fail(dr, "disk %s: %s the destination QEMU: %s", d->dev.device,
			q.type == NBD_CMD_FLUSH ? "flushing" : "writing to", strerror(-c.err));
		return c.err;
	}
	return 0;
}

/*
 * Collects the pending requests of disk k (k < 0: of every disk) that
 * which selects: FL_ALL, FL_READS, or the writes from wbuf[which].
 */
static int fl_drain(struct disk_recv *dr, int k, int which)
{
	const struct fl_req *q;
	unsigned i;
	int r;

	for (;;) {
		for (i = 0; i < dr->n_fl; i++) {
			q = &dr->fl[i];
			if ((k < 0 || q->k == k) &&
			    (which == FL_ALL ||
			     (which == FL_READS ? q->type == NBD_CMD_READ : q->buf == which)))
				break;
		}
		if (i == dr->n_fl)
			return 0;
		r = fl_collect(dr, dr->fl[i].k);
		if (r < 0)
			return r;
	}
}

/* True when a write in flight on disk k overlaps [off, off + len). */
static bool fl_overlaps(const struct disk_recv *dr, int k, uint64_t off, uint64_t len)
{
	unsigned i;

	for (i = 0; i < dr->n_fl; i++)
		if ((dr->fl[i].type == NBD_CMD_WRITE || dr->fl[i].type == NBD_CMD_WRITE_ZEROES) &&
		    dr->fl[i].k == k && off < dr->fl[i].off + dr->fl[i].len &&
		    dr->fl[i].off < off + len)
			return true;
	return false;
}

/*
 * Sends a request to disk k without waiting for it (wdata or rbuf must
 * stay valid until it is collected). A range a write in flight overlaps
 * waits for that disk's requests first.
 */
static int fl_submit(struct disk_recv *dr, int k, uint16_t type, uint64_t off, uint32_t len,
		     const void *wdata, void *rbuf)
{
	struct rdisk *d = &dr->d[k];
	unsigned i, n;
	int r;

	if (type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES)
		d->dirty = true;
	if (fl_overlaps(dr, k, off, len)) {
		r = fl_drain(dr, k, FL_ALL);
		if (r < 0)
			return r;
	}
	for (;;) {
		for (n = 0, i = 0; i < dr->n_fl; i++)
			n += dr->fl[i].k == k;
		if (n < NBD_INFLIGHT)
			break;
		r = fl_collect(dr, k);
		if (r < 0)
			return r;
	}
	r = nbd_client_submit(d->cl, type, 0, off, len, wdata, rbuf, NULL, 0,
			      &dr->fl[dr->n_fl].cookie);
	if (r < 0) {
		dr_fail(dr, "disk %s: the destination QEMU's export: %s", d->dev.device,
			nbd_why(d, r));
		return r;
	}
	dr->fl[dr->n_fl].k = k;
	dr->fl[dr->n_fl].type = type;
	dr->fl[dr->n_fl].buf = type == NBD_CMD_WRITE ? (int)dr->wcur : -1;
	dr->fl[dr->n_fl].off = off;
	dr->fl[dr->n_fl].len = len;
	dr->n_fl++;
	dr->n_fl_reads += type == NBD_CMD_READ;
	return 0;
}

/* ---- applying writes ---- */

/*
 * An NBD FLUSH of disk k not waited for (one at a time): it writes back
 * what is written so far while the copy goes on. Nothing relies on it;
 * PINGs and DONE still wait for every write and flush (flush_disk).
 */
static int bg_flush(struct disk_recv *dr, int k)
{
	struct rdisk *d = &dr->d[k];
	unsigned i;

	if (!(nbd_client_info(d->cl)->tflags & NBD_FLAG_SEND_FLUSH))
		return 0;
	for (i = 0; i < dr->n_fl; i++)
		if (dr->fl[i].k == k && dr->fl[i].type == NBD_CMD_FLUSH)
			return 0;
	d->unflushed = 0;
	d->flushes++;
	return fl_submit(dr, k, NBD_CMD_FLUSH, 0, 0, NULL, NULL);
}

/*
 * The current run, written in the image itself (checked_in_file); at
 * BG_FLUSH_BYTES the kernel is told to start writing back, not waited for.
 */
static int run_write_in_file(struct disk_recv *dr, struct rdisk *d)
{
	int r;

	if (dr->run_zero) {
		r = zero_in_file(d->tfd, dr->run_off, dr->run_len);
		d->bytes_zeroed += dr->run_len;
	} else {
		r = tsb_pwrite_all(d->tfd, dr->wbuf[dr->wcur].data + dr->run_at, dr->run_len,
				   (off_t)dr->run_off);
		d->bytes_written += dr->run_len;
	}
	d->unflushed += dr->run_len;
	dr->run_len = 0;
	if (r < 0) {
		dr_fail(dr, "disk %s: writing %s: %s", d->dev.device, d->dev.file, strerror(-r));
		return r;
	}
	if (d->unflushed >= BG_FLUSH_BYTES) {
		d->unflushed = 0;
		(void)sync_file_range(d->tfd, 0, 0, SYNC_FILE_RANGE_WRITE);
	}
	return 0;
}

/* Sends the current run as one WRITE or WRITE_ZEROES (not waiting for it). */
static int run_flush(struct disk_recv *dr)
{
	struct rdisk *d;
	int r;

	if (!dr->run_len)
		return 0;
	d = &dr->d[dr->run_disk];
	d->writes++;
	if (d->written_in_file)
		return run_write_in_file(dr, d);
	if (dr->run_zero) {
		r = fl_submit(dr, dr->run_disk, NBD_CMD_WRITE_ZEROES, dr->run_off,
			      (uint32_t)dr->run_len, NULL, NULL);
		d->bytes_zeroed += dr->run_len;
	} else {
		r = fl_submit(dr, dr->run_disk, NBD_CMD_WRITE, dr->run_off, (uint32_t)dr->run_len,
			      dr->wbuf[dr->wcur].data + dr->run_at, NULL);
		d->bytes_written += dr->run_len;
		d->unflushed += dr->run_len;
	}
	dr->run_len = 0;
	if (r == 0 && d->unflushed >= BG_FLUSH_BYTES)
		r = bg_flush(dr, dr->run_disk);
	return r;
}

/* Adds a range to the current run (data NULL: zeroes). */
static int run_add(struct disk_recv *dr, int disk, uint64_t off, uint32_t len,
		   const uint8_t *data)
{
	struct tsb_buf *w = &dr->wbuf[dr->wcur];
	bool zero = !data;
	int r;

	if (dr->run_len && (dr->run_disk != disk || dr->run_zero != zero ||
			    dr->run_off + dr->run_len != off ||
			    dr->run_len + len > (zero ? (1u << 30) : RUN_MAX))) {
		r = run_flush(dr);
		if (r < 0)
			return r;
	}
	if (!zero && w->len + len > w->cap) {
		/* w grows (moves): no write may point into it. Not expected (write_entries). */
		r = fl_drain(dr, -1, (int)dr->wcur);
		if (r < 0)
			return r;
	}
	if (!dr->run_len) {
		dr->run_disk = disk;
		dr->run_off = off;
		dr->run_zero = zero;
		dr->run_at = w->len;
	}
	if (!zero && tsb_buf_append(w, data, len) < 0)
		return -ENOMEM;
	dr->run_len += len;
	return 0;
}

/* Reads the next frame: from the backlog first, then the connection. */
static int next_frame(struct disk_recv *dr, struct wire_msg *m)
{
	struct wire_frame f;
	uint64_t t0;
	int r;

	if (wire_backlog_take(&dr->backlog, &f) == 1) {
		if (f.type == WIRE_MSG_PAGES) {
			dr->bl_pages--;
			dr->bl_page_bytes -= f.len;
		} else {
			dr->bl_other--;
		}
		r = wire_msg_decode(f.type, f.flags, f.payload, f.len, m);
		return r < 0 ? r : 1;
	}
	t0 = tsb_now_ns();
	r = ch_read_frame(dr, &f);
	dr->wait_ns += tsb_now_ns() - t0;
	if (r <= 0)
		return r;
	if (!wire_msg_role_ok(f.type, WIRE_ROLE_SENDER))
		return -EPROTO;
	/* A copy: fetch() reads more frames while this one is being applied. */
	tsb_buf_reset(&dr->cur);
	if (tsb_buf_append(&dr->cur, f.payload, f.len) < 0)
		return -ENOMEM;
	r = wire_msg_decode(f.type, f.flags, dr->cur.data, f.len, m);
	return r < 0 ? r : 1;
}

/* ---- fetching blocks by NEED (wire/need.h) ---- */

static int fetch_send(void *opaque, const struct tsb_buf *frame)
{
	struct disk_recv *dr = opaque;

	return frame->err ? frame->err : ch_write(dr, frame->data, frame->len);
}

static int fetch_read(void *opaque, struct wire_frame *f)
{
	struct disk_recv *dr = opaque;
	int r = ch_read_frame(dr, f);

	if (r > 0 && !wire_msg_role_ok(f->type, WIRE_ROLE_SENDER))
		return -EPROTO;
	return r;
}

/* Only what a sender may send meanwhile, and no more than its window. */
static int fetch_may_keep(void *opaque, const struct wire_frame *f, const struct wire_backlog *bl)
{
	struct disk_recv *dr = opaque;
	bool pages = f->type == WIRE_MSG_PAGES;

	(void)bl;
	if (!pages && f->type != WIRE_MSG_PING && f->type != WIRE_MSG_DONE &&
	    f->type != WIRE_MSG_CANCEL && f->type != WIRE_MSG_ERROR) {
		dr_fail(dr, "disk channel: %s while waiting for the answer to a NEED",
			wire_msg_name(f->type));
		return -EPROTO;
	}
	if (pages ? dr->bl_pages >= BACKLOG_MAX_PAGES : dr->bl_other >= BACKLOG_MAX_OTHER) {
		dr_fail(dr, "disk channel: the sender sent more than %u %s frames while a NEED "
			"was waiting for its answer (its window is %u)",
			pages ? BACKLOG_MAX_PAGES : BACKLOG_MAX_OTHER, pages ? "PAGES" : "other",
			DISK_WINDOW);
		return -EMSGSIZE;
	}
	/* The frame being applied is unacknowledged too: the rest fits in the window's bytes. */
	if (pages && dr->bl_page_bytes + f->len > DISK_WINDOW_BYTES) {
		dr_fail(dr, "disk channel: the sender sent more than %u bytes of PAGES while a "
			"NEED was waiting for its answer (its window)", DISK_WINDOW_BYTES);
		return -EMSGSIZE;
	}
	if (pages) {
		dr->bl_pages++;
		dr->bl_page_bytes += f->len;
	} else {
		dr->bl_other++;
	}
	return 0;
}

/* The answer: every block asked for, in order, each matching its hash. */
static int fetch_answer(void *opaque, const struct wire_hashdata *h)
{
	struct disk_recv *dr = opaque;
	const uint8_t *data;
	uint8_t got[WIRE_HASH_LEN];
	size_t i;
	int r;

	if (h->obj_size != BLOCK || h->count != dr->fetch_count) {
		dr_fail(dr, "disk channel: the answer to a NEED of %zu blocks holds %u "
			"objects of %u bytes", dr->fetch_count, h->count, h->obj_size);
		return -EPROTO;
	}
	r = wire_hashdata_unpack(h, dr->z, &dr->hd, &data);
	if (r < 0)
		return r;
	for (i = 0; i < dr->fetch_count; i++) {
		/* Answers come in NEED order; check each against its hash. */
		if (memcmp(h->hashes + i * WIRE_HASH_LEN, dr->fetch_hashes[i], WIRE_HASH_LEN)) {
			dr_fail(dr, "disk channel: the answer to a NEED is out of order");
			return -EPROTO;
		}
		wire_sha256(data + i * BLOCK, BLOCK, got);
		if (memcmp(got, dr->fetch_hashes[i], WIRE_HASH_LEN)) {
			dr_fail(dr, "disk channel: a block in the answer to a NEED does not "
				"match its hash");
			return -EBADMSG;
		}
		memcpy(dr->fetch_out + i * BLOCK, data + i * BLOCK, BLOCK);
	}
	return 1;
}

/*
 * Sends NEED for the count hashes and waits for the HASHDATA answer,
 * keeping frames that arrive meanwhile for later. Fills out (count * BLOCK).
 */
static int fetch(struct disk_recv *dr, const uint8_t (*hashes)[WIRE_HASH_LEN], size_t count,
		 uint8_t *out)
{
	const struct wire_fetch_io io = {
		.opaque = dr, .send = fetch_send, .read = fetch_read, .may_keep = fetch_may_keep,
		.answer = fetch_answer,
	};

	dr->fetch_hashes = hashes;
	dr->fetch_count = count;
	dr->fetch_out = out;
	return wire_fetch(&io, &dr->backlog, hashes, count);
}

static int map_disk(struct disk_recv *dr, uint16_t block)
{
	if (block >= dr->n_map || dr->map[block] < 0)
		return -1;
	return dr->map[block];
}

/*
 * A PAGES frame is applied in passes, so that nothing is written before
 * the whole frame checks out: the target under its REFs is read once
 * (read_target), every entry is checked and each REF resolved locally or
 * listed as missing (check_entries), the missing blocks come with one
 * NEED (fetch_needed), and everything is written in runs (write_entries).
 */

/* The blocks a frame's REFs lack here, asked for with one NEED. */
struct need_list {
	uint8_t (*hash)[WIRE_HASH_LEN];
	uint32_t *idx;		/* the entry each answer is for */
	size_t n;
};

/* dr->resolved, same, tgt_at, ent_* and tr for count entries, same[] cleared. */
static int reserve_resolved(struct disk_recv *dr, size_t count)
{
	if (dr->resolved_cap < count) {
		free(dr->resolved);
		free(dr->same);
		free(dr->tgt_at);
		free(dr->ent_off);
		free(dr->ent_disk);
		free(dr->tr);
		dr->resolved = malloc(count * BLOCK);
		dr->same = malloc(count * sizeof(*dr->same));
		dr->tgt_at = malloc(count * sizeof(*dr->tgt_at));
		dr->ent_off = malloc(count * sizeof(*dr->ent_off));
		dr->ent_disk = malloc(count * sizeof(*dr->ent_disk));
		dr->tr = malloc(count * sizeof(*dr->tr));
		dr->resolved_cap = dr->resolved && dr->same && dr->tgt_at && dr->ent_off &&
				   dr->ent_disk && dr->tr ? count : 0;
		if (!dr->resolved_cap)
			return -ENOMEM;
	}
	memset(dr->same, 0, count * sizeof(*dr->same));
	return 0;
}

/*
 * Blocks already in place: most REFs of a return migration name the
 * block that is already at that offset of the target (SAME), and most
 * ZERO entries of a disk that was zero there already. One local read of
 * the target under the frame's REF, SAME and ZERO entries (a few NBD
 * READs of neighbouring ranges, never the WAN) finds them; they need no
 * write at all. Pages are aligned to the frame's page size, so two
 * entries overlap only at the same offset of the same disk: an entry
 * that an earlier entry of the frame writes over is not checked (the
 * read shows the target before the frame). tgt_at[i] is where entry i's
 * target lies in dr->tgt, TGT_NONE when it was not read (a bad entry,
 * one overlapped, past TGT_MAX, a failed read): written as usual.
 */
static bool overlaps_earlier(struct disk_recv *dr, size_t i, int k, uint64_t off,
			     uint64_t *max_end)
{
	size_t j;

	if (off >= max_end[k])
		return false;	/* in ascending order so far: nothing earlier there */
	for (j = 0; j < i; j++)
		if (dr->ent_disk[j] == k && dr->ent_off[j] == off)
			return true;
	return false;
}

static int read_target(struct disk_recv *dr, const struct wire_pages *p)
{
	struct wire_page_iter it;
	struct wire_page_entry e;
	uint64_t max_end[DISK_MAX] = { 0 };
	const uint64_t ps = p->page_size;
	struct tgt_read *cur = NULL;
	size_t i = 0, n_tr = 0, total = 0, t;
	int r;

	wire_pages_iter_init(p, &it);
	while (wire_pages_next(&it, &e)) {
		int k = map_disk(dr, e.block);
		bool ok = k >= 0 && e.offset % ps == 0 &&
			  disk_range_ok(e.offset, ps, dr->d[k].dev.size);
		bool check = ok && (e.enc == WIRE_ENC_ZERO ||
				    ((e.enc == WIRE_ENC_REF || e.enc == WIRE_ENC_SAME) &&
				     ps == BLOCK));

		dr->tgt_at[i] = TGT_NONE;
		dr->ent_disk[i] = ok ? k : -1;
		dr->ent_off[i] = e.offset;
		if (check && !overlaps_earlier(dr, i, k, e.offset, max_end)) {
			uint64_t end = e.offset + ps;

			if (cur && cur->k == k && e.offset >= cur->lo &&
			    e.offset <= cur->lo + cur->len + TGT_GAP &&
			    (end > cur->lo + cur->len ? end - cur->lo : cur->len) <= TGT_READ_MAX &&
			    total - cur->len + (end > cur->lo + cur->len ? end - cur->lo : cur->len)
			    <= TGT_MAX) {
				if (end > cur->lo + cur->len) {
					total += end - (cur->lo + cur->len);
					cur->len = end - cur->lo;
				}
				dr->tgt_at[i] = cur->at + (size_t)(e.offset - cur->lo);
			} else if (total + ps <= TGT_MAX) {
				cur = &dr->tr[n_tr++];
				cur->k = k;
				cur->lo = e.offset;
				cur->len = ps;
				cur->at = total;
				total += ps;
				dr->tgt_at[i] = cur->at;
			}
		}
		if (ok && e.offset + ps > max_end[k])
			max_end[k] = e.offset + ps;
		i++;
	}
	tsb_buf_reset(&dr->tgt);
	if (!total)
		return 0;
	if (!tsb_buf_extend(&dr->tgt, total))
		return -ENOMEM;
	/*
	 * All at once, while the last frame's writes complete (a read that one
	 * of them overlaps waits for them: fl_submit).
	 */
	dr->tgt_failed = false;
	for (t = 0; t < n_tr; t++) {
		struct tgt_read *q = &dr->tr[t];
		int tfd = dr->d[q->k].tfd;

		if (tfd < 0) {
			r = fl_submit(dr, q->k, NBD_CMD_READ, q->lo, (uint32_t)q->len, NULL,
				      dr->tgt.data + q->at);
			if (r < 0)
				return r;
			continue;
		}
		if (fl_overlaps(dr, q->k, q->lo, q->len)) {
			r = fl_drain(dr, q->k, FL_ALL);
			if (r < 0)
				return r;
		}
		if (pread_full(tfd, dr->tgt.data + q->at, q->len, q->lo) < 0)
			dr->tgt_failed = true;
	}
	r = fl_drain(dr, -1, FL_READS);
	if (r < 0)
		return r;
	if (dr->tgt_failed) {
		/* No shortcut: everything written as usual. */
		for (i = 0; i < p->count; i++)
			dr->tgt_at[i] = TGT_NONE;
		return 0;
	}
	for (t = 0; t < n_tr; t++)
		dr->d[dr->tr[t].k].bytes_checked += dr->tr[t].len;
	return 0;
}

/* The disk (d[] index) an entry writes to, its range checked; -1 (failed) if bad. */
static int entry_disk(struct disk_recv *dr, const struct wire_pages *p,
		      const struct wire_page_entry *e)
{
	int k = map_disk(dr, e->block);

	if (k < 0 || e->offset % p->page_size ||
	    !disk_range_ok(e->offset, p->page_size, dr->d[k].dev.size)) {
		if (k < 0)
			dr_fail(dr, "disk channel: a write names disk index %u, not in BLOCKS",
				e->block);
		else
			dr_fail(dr, "disk channel: a write of %u bytes at offset %llu is "
				"outside disk %s (%llu bytes)", p->page_size,
				(unsigned long long)e->offset, dr->d[k].dev.device,
				(unsigned long long)dr->d[k].dev.size);
		return -1;
	}
	return k;
}

/* True when the n bytes at p are all c. */
static bool all_bytes(const uint8_t *p, uint8_t c, size_t n)
{
	return n && p[0] == c && !memcmp(p, p + 1, n - 1);
}

static uint8_t zero_hash[WIRE_HASH_LEN];	/* SHA-256 of a block of zeroes */
static bool zero_hash_ok;

static void zero_hash_init(void)
{
	static const uint8_t zeroes[BLOCK];

	zero_hash_ok = wire_sha256(zeroes, BLOCK, zero_hash) == 0;
}

/*
 * Does the target block at t hold the content hash names? A block of
 * zeroes (most of an empty target, where a clone arrives) is told without
 * hashing it.
 */
static bool target_holds(const uint8_t *t, const uint8_t *hash)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	uint8_t h[WIRE_HASH_LEN];

	if (all_bytes(t, 0, BLOCK)) {
		pthread_once(&once, zero_hash_init);
		return zero_hash_ok && !memcmp(hash, zero_hash, WIRE_HASH_LEN);
	}
	return wire_sha256(t, BLOCK, h) == 0 && !memcmp(h, hash, WIRE_HASH_LEN);
}

/*
 * A REF or SAME entry i of disk k: already in place (same[i]), found in
 * the page-cache index (into resolved[i]), or else listed in nl.
 */
static int resolve_ref(struct disk_recv *dr, const struct wire_pages *p,
		       const struct wire_page_entry *e, int k, size_t i, struct need_list *nl)
{
	if (p->page_size != BLOCK)
		return -EPROTO;
	if (dr->tgt_at[i] != TGT_NONE && target_holds(dr->tgt.data + dr->tgt_at[i], e->hash)) {
		dr->same[i] = true;
		dr->d[k].blk_same++;
		return 0;
	}
	if (!dr->index || diskindex_get(dr->index, e->hash, dr->resolved + i * BLOCK) < 0) {
		if (!nl->hash) {
			nl->hash = malloc((size_t)p->count * WIRE_HASH_LEN);
			nl->idx = malloc((size_t)p->count * sizeof(*nl->idx));
			if (!nl->hash || !nl->idx)
				return -ENOMEM;
		}
		memcpy(nl->hash[nl->n], e->hash, WIRE_HASH_LEN);
		nl->idx[nl->n++] = (uint32_t)i;
		dr->d[k].blk_need++;
	}
	return 0;
}

/* Pass 1: checks every entry's range and encoding, resolves REFs, lists what is missing. */
static int check_entries(struct disk_recv *dr, const struct wire_pages *p, struct need_list *nl)
{
	struct wire_page_iter it;
	struct wire_page_entry e;
	size_t i = 0;
	int r;

	wire_pages_iter_init(p, &it);
	while (wire_pages_next(&it, &e)) {
		int k = entry_disk(dr, p, &e);

		if (k < 0)
			return -EPROTO;
		if (e.enc == WIRE_ENC_REF || e.enc == WIRE_ENC_SAME) {
			r = resolve_ref(dr, p, &e, k, i, nl);
			if (r < 0)
				return r;
		} else if (e.enc == WIRE_ENC_ZERO) {
			/* Already zero (or its fill byte) there: no write. */
			if (dr->tgt_at[i] != TGT_NONE &&
			    all_bytes(dr->tgt.data + dr->tgt_at[i], e.fill, p->page_size))
				dr->same[i] = true;
		} else if (e.enc != WIRE_ENC_DATA) {
			return -EOPNOTSUPP;
		}
		i++;
	}
	return 0;
}

/* Asks the sender for the blocks nl lists; each answer goes to its entry's resolved[]. */
static int fetch_needed(struct disk_recv *dr, const struct need_list *nl)
{
	uint8_t *fetched;
	size_t i;
	int r;

	if (!nl->n)
		return 0;
	fetched = malloc(nl->n * BLOCK);
	if (!fetched)
		return -ENOMEM;
	r = fetch(dr, (const uint8_t (*)[WIRE_HASH_LEN])nl->hash, nl->n, fetched);
	if (r < 0) {
		free(fetched);
		return r;
	}
	for (i = 0; i < nl->n; i++)
		memcpy(dr->resolved + (size_t)nl->idx[i] * BLOCK, fetched + i * BLOCK, BLOCK);
	free(fetched);
	return 0;
}

/* A ZERO entry i: zeroes, or a page of its fill byte; none if already there. */
static int write_zero(struct disk_recv *dr, const struct wire_pages *p,
		      const struct wire_page_entry *e, int k, size_t i)
{
	int r;

	dr->d[k].blk_zero++;
	if (dr->same[i]) {
		/* Already in place: skipped (the run breaks there). */
		dr->d[k].blk_zero_same++;
		dr->d[k].bytes_zero_in_place += p->page_size;
		return 0;
	}
	if (e->fill == 0) {
		r = run_add(dr, k, e->offset, p->page_size, NULL);
	} else {
		uint8_t *tmp = malloc(p->page_size);

		if (!tmp)
			return -ENOMEM;
		memset(tmp, e->fill, p->page_size);
		r = run_add(dr, k, e->offset, p->page_size, tmp);
		free(tmp);
	}
	return r;
}

/* A DATA entry: its page of the literal area; a block is kept for page-cache restore. */
static int write_data(struct disk_recv *dr, const struct wire_pages *p,
		      const struct wire_page_entry *e, int k, const uint8_t *lit)
{
	int r = run_add(dr, k, e->offset, p->page_size,
			lit + (size_t)e->data_index * p->page_size);

	if (r == 0 && p->page_size == BLOCK) {
		uint8_t h[WIRE_HASH_LEN];

		if (wire_sha256(lit + (size_t)e->data_index * BLOCK, BLOCK, h) == 0)
			wm_put(dr, h, k, e->offset);
	}
	dr->d[k].blk_data++;
	return r;
}

/* A REF or SAME entry i, resolved in pass 1. */
static int write_ref(struct disk_recv *dr, const struct wire_page_entry *e, int k, size_t i)
{
	int r = 0;

	/* A block already in place is skipped (the run breaks there). */
	if (!dr->same[i])
		r = run_add(dr, k, e->offset, BLOCK, dr->resolved + i * BLOCK);
	if (r == 0)
		wm_put(dr, e->hash, k, e->offset);
	dr->d[k].blk_ref++;
	return r;
}

/*
 * Pass 2: writes every entry (checked in pass 1), coalescing neighbours.
 * The writes are sent without waiting for them: they complete while the
 * next frames arrive and are checked. The frame before the last filled
 * the wbuf this one fills: its writes are collected first.
 */
static int write_entries(struct disk_recv *dr, const struct wire_pages *p, const uint8_t *lit)
{
	struct wire_page_iter it;
	struct wire_page_entry e;
	size_t i = 0;
	int r;

	dr->wcur = (unsigned)(dr->frames_written++ & 1);
	r = fl_drain(dr, -1, (int)dr->wcur);
	if (r < 0)
		return r;
	tsb_buf_reset(&dr->wbuf[dr->wcur]);
	/* A frame's data (at most a page per entry) fits: wbuf never moves under a write. */
	if (tsb_buf_reserve(&dr->wbuf[dr->wcur], (size_t)p->count * p->page_size) < 0)
		return -ENOMEM;
	wire_pages_iter_init(p, &it);
	while (r == 0 && wire_pages_next(&it, &e)) {
		int k = map_disk(dr, e.block);

		switch (e.enc) {
		case WIRE_ENC_ZERO:
			r = write_zero(dr, p, &e, k, i);
			break;
		case WIRE_ENC_DATA:
			r = write_data(dr, p, &e, k, lit);
			break;
		default:
			r = write_ref(dr, &e, k, i);
			break;
		}
		i++;
	}
	if (r == 0)
		r = run_flush(dr);
	return r;
}

static int apply_pages(struct disk_recv *dr, const struct wire_pages *p)
{
	struct need_list nl = { 0 };
	const uint8_t *lit = NULL;
	uint64_t t0;
	int r;

	if (p->n_data) {
		r = wire_pages_unpack(p, dr->z, &dr->lit, &lit);
		if (r < 0)
			return r;
	}
	r = reserve_resolved(dr, p->count);
	t0 = tsb_now_ns();
	if (r == 0)
		r = read_target(dr, p);
	dr->target_ns += tsb_now_ns() - t0;
	if (r == 0)
		r = check_entries(dr, p, &nl);
	if (r == 0)
		r = fetch_needed(dr, &nl);
	t0 = tsb_now_ns();
	if (r == 0)
		r = write_entries(dr, p, lit);
	dr->write_ns += tsb_now_ns() - t0;
	free(nl.hash);
	free(nl.idx);
	if (r == 0 && !dr->applied_any) {
		dr->applied_any = true;
		tsb_fault_point("disk-first-write");
	}
	return r;
}

/*
 * Every write sent to disk k completed, then NBD FLUSH: an NBD server
 * flushes only the writes it has replied to before the flush.
 */
static int flush_disk(struct disk_recv *dr, int k)
{
	struct rdisk *d = &dr->d[k];
	uint64_t t0 = tsb_now_ns();
	int r = fl_drain(dr, k, FL_ALL);

	if (r < 0)
		return r;
	/*
	 * libvirt ends its export once its mirror's last flush came back: DONE,
	 * which follows, has nothing more to flush there.
	 */
	if (dr->libvirt && !d->dirty)
		return 0;
	if (d->written_in_file)
		r = fdatasync(d->tfd) < 0 ? -errno : 0;
	else
		r = nbd_client_flush(d->cl);
	dr->flush_ns += tsb_now_ns() - t0;
	d->flushes++;
	d->unflushed = 0;
	d->dirty = r < 0;
	if (r < 0)
		dr_fail(dr, "disk %s: flush at the destination: %s", d->dev.device, strerror(-r));
	return r;
}

/* ---- BLOCKS: which of our disks each index names ---- */

/* A device name that can be a file name here: [A-Za-z0-9_.-], not starting with a dot. */
static bool standby_name_ok(const char *p, size_t len)
{
	size_t i;

	if (!len || len >= DISK_NAME_MAX || p[0] == '.')
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum((unsigned char)p[i]) && p[i] != '_' && p[i] != '-' && p[i] != '.')
			return false;
	return true;
}

/*
 * A disk of the sender's list that we set up ourselves (libvirt's exports,
 * a standby's files): its index, name (a file name for a standby) and size
 * checked, taken into the next d[]. NULL and why when it cannot be taken.
 */
static struct rdisk *listed_disk(struct disk_recv *dr, const struct wire_block *b, char *why,
				 size_t whylen)
{
	bool standby = dr->standby_dir[0];
	struct rdisk *d;

	if (b->index >= DISK_MAX || dr->n == DISK_MAX || dr->map[b->index] >= 0) {
		snprintf(why, whylen, "disk index %u out of range or named twice", b->index);
		return NULL;
	}
	if (!b->name.len || b->name.len >= DISK_NAME_MAX || !b->used_length ||
	    (standby && (!standby_name_ok(b->name.p, b->name.len) ||
			 b->used_length > DISK_STANDBY_MAX_SIZE))) {
		snprintf(why, whylen, "a disk without a usable name or size");
		return NULL;
	}
	d = &dr->d[dr->n];
	memcpy(d->dev.device, b->name.p, b->name.len);
	d->dev.device[b->name.len] = '\0';
	d->dev.size = b->used_length;
	for (unsigned k = 0; k < dr->n; k++)
		if (!strcmp(dr->d[k].dev.device, d->dev.device)) {
			snprintf(why, whylen, "disk %s named twice", d->dev.device);
			return NULL;
		}
	return d;
}

/* The disk listed_disk() took is in use from now on. */
static void listed_disk_taken(struct disk_recv *dr, const struct wire_block *b)
{
	dr->d[dr->n].used = true;
	dr->wm_max += dr->d[dr->n].dev.size / BLOCK;
	dr->map[b->index] = (int)dr->n++;
	if (b->index >= dr->n_map)
		dr->n_map = b->index + 1u;
}

/*
 * libvirt: the disks are the sender's list (export names and sizes); the
 * export's size is checked once it is open (open_libvirt_targets()).
 */
static int take_libvirt_blocks(struct disk_recv *dr, const struct wire_blocks *bl, char *why,
			       size_t whylen)
{
	struct wire_blocks_iter it;
	struct wire_block b;

	wire_blocks_iter_init(bl, &it);
	while (wire_blocks_next(&it, &b)) {
		if (!listed_disk(dr, &b, why, whylen))
			return -EPROTO;
		listed_disk_taken(dr, &b);
	}
	return 0;
}

/* libvirt: opens the exports of the disk list, at the first write or flush. */
static int open_libvirt_targets(struct disk_recv *dr)
{
	struct nbd_client_config cc = { .max_inflight = NBD_INFLIGHT };
	char why[512] = "";
	unsigned k;
	int r;

	for (k = 0; k < dr->n; k++) {
		cc.export_name = dr->d[k].dev.device;
		r = ch_nbd_connect(dr, k, &cc, &dr->d[k].cl, why, sizeof(why));
		if (r == 0 && nbd_client_info(dr->d[k].cl)->size != dr->d[k].dev.size) {
			snprintf(why, sizeof(why), "disk %s: %llu bytes at the source, %llu here",
				 dr->d[k].dev.device, (unsigned long long)dr->d[k].dev.size,
				 (unsigned long long)nbd_client_info(dr->d[k].cl)->size);
			r = -EINVAL;
		}
		if (r < 0) {
			dr_fail(dr, "disk channel: %s", why);
			return r;
		}
	}
	dr->libvirt_open = true;
	log_info("disks: %u export(s) of libvirt's destination QEMU open", dr->n);
	return 0;
}

/*
 * A standby: each disk of the sender's list is <standby_dir>/<device>.raw,
 * ours alone (no QEMU runs here): created, or resized to the disk's size,
 * then read and written in place like a QEMU image file.
 */
static int take_standby_blocks(struct disk_recv *dr, const struct wire_blocks *bl, char *why,
			       size_t whylen)
{
	struct wire_blocks_iter it;
	struct wire_block b;
	struct rdisk *d;
	struct stat st;
	int n, r;

	wire_blocks_iter_init(bl, &it);
	while (wire_blocks_next(&it, &b)) {
		d = listed_disk(dr, &b, why, whylen);
		if (!d)
			return -EPROTO;
		/* (disk_recv_start checked that the directory, a name and ".raw" fit) */
		n = (int)strlen(dr->standby_dir);
		memcpy(d->dev.file, dr->standby_dir, (size_t)n);
		d->dev.file[n] = '/';
		memcpy(d->dev.file + n + 1, d->dev.device, b.name.len);
		memcpy(d->dev.file + n + 1 + b.name.len, ".raw", 5);
		snprintf(d->dev.format, sizeof(d->dev.format), "raw");
		r = tsb_mkdir_p(dr->standby_dir);
		if (r < 0) {
			snprintf(why, whylen, "cannot make the standby's directory: %s", strerror(-r));
			return r;
		}
		d->tfd = open(d->dev.file, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
		if (d->tfd < 0 || fstat(d->tfd, &st) < 0 ||
		    ((uint64_t)st.st_size != d->dev.size &&
		     ftruncate(d->tfd, (off_t)d->dev.size) < 0)) {
			int e = errno;

			log_error("disks: standby image %s: %s", d->dev.file, strerror(e));
			snprintf(why, whylen, "the standby's image of %s: %s", d->dev.device,
				 strerror(e));
			if (d->tfd >= 0)
				close(d->tfd);
			d->tfd = -1;
			return -e;
		}
		d->checked_in_file = d->written_in_file = true;
		mark_incomplete(d);
		listed_disk_taken(dr, &b);
	}
	return 0;
}

/* The destination QEMU's own disks, by name: an NBD client of each export. */
static int take_blocks(struct disk_recv *dr, const struct wire_blocks *bl, char *why,
		       size_t whylen)
{
	struct nbd_client_config cc = { 0 };
	struct wire_blocks_iter it;
	struct wire_block b;
	unsigned k;
	int r;

	for (k = 0; k < DISK_MAX; k++)
		dr->map[k] = -1;
	if (dr->libvirt)
		return take_libvirt_blocks(dr, bl, why, whylen);
	if (dr->standby_dir[0])
		return take_standby_blocks(dr, bl, why, whylen);
	wire_blocks_iter_init(bl, &it);
	while (wire_blocks_next(&it, &b)) {
		if (b.index >= DISK_MAX) {
			snprintf(why, whylen, "disk index %u out of range", b.index);
			return -EPROTO;
		}
		for (k = 0; k < dr->n; k++)
			if (strlen(dr->d[k].dev.device) == b.name.len &&
			    !memcmp(dr->d[k].dev.device, b.name.p, b.name.len))
				break;
		if (k == dr->n) {
			snprintf(why, whylen, "the destination VM has no writable disk '%.*s'",
				 (int)b.name.len, b.name.p);
			return -ENOENT;
		}
		if (dr->d[k].dev.size != b.used_length) {
			snprintf(why, whylen, "disk %s: %llu bytes at the source, %llu here",
				 dr->d[k].dev.device, (unsigned long long)b.used_length,
				 (unsigned long long)dr->d[k].dev.size);
			return -EINVAL;
		}
		if (dr->d[k].used) {
			snprintf(why, whylen, "disk %s named twice", dr->d[k].dev.device);
			return -EPROTO;
		}
		cc.export_name = dr->d[k].dev.device;
		cc.max_inflight = NBD_INFLIGHT;
		r = ch_nbd_connect(dr, k, &cc, &dr->d[k].cl, why, whylen);
		if (r < 0)
			return r;
		/* Writes are checked against the size QEMU told; its export must agree. */
		if (nbd_client_info(dr->d[k].cl)->size != dr->d[k].dev.size) {
			snprintf(why, whylen, "disk %s: the destination QEMU exports %llu bytes, "
				 "not its size of %llu", dr->d[k].dev.device,
				 (unsigned long long)nbd_client_info(dr->d[k].cl)->size,
				 (unsigned long long)dr->d[k].dev.size);
			return -EIO;
		}
		dr->d[k].used = true;
		dr->d[k].tfd = open_qemu_image(dr->qemu_pid, &dr->d[k].dev,
					       &dr->d[k].written_in_file);
		dr->d[k].checked_in_file = dr->d[k].tfd >= 0;
		dr->wm_max += dr->d[k].dev.size / BLOCK;
		mark_incomplete(&dr->d[k]);
		dr->map[b.index] = (int)k;
		if (b.index >= dr->n_map)
			dr->n_map = b.index + 1u;
	}
	return 0;
}

static void add_hash(const uint8_t hash[DISKINDEX_HASH_LEN], void *arg)
{
	tsb_filter_add(arg, hash);
}

static int send_summary(struct disk_recv *dr)
{
	struct wire_summary s = { 0 };
	struct tsb_filter f;
	struct tsb_buf fb, b;
	int r = 0;

	tsb_buf_init(&fb);
	tsb_buf_init(&b);
	if (dr->index && diskindex_count(dr->index)) {
		r = tsb_filter_init(&f, diskindex_count(dr->index));
		if (r == 0) {
			diskindex_for_each_hash(dr->index, add_hash, &f);
			if (tsb_buf_extend(&fb, tsb_filter_size(&f)))
				tsb_filter_write(&f, fb.data);
			tsb_filter_fini(&f);
			s.filters[0].source = WIRE_SRC_DISK;
			s.filters[0].data = fb.data;
			s.filters[0].len = (uint32_t)fb.len;
			s.n_filters = fb.err ? 0 : 1;
		}
	}
	if (r == 0)
		r = wire_encode_summary(&b, &s);
	if (r == 0)
		r = send_msg(dr, &b);
	tsb_buf_fini(&fb);
	tsb_buf_fini(&b);
	return r;
}

/* ---- waiting for the disk channel ---- */

/*
 * Only the disk channel of the sender whose migration this is, with the
 * credential its main connection came with (wire/accept.h): the summary
 * this channel sends is that tenant's.
 */
static bool want_disk_channel(const struct wire_conn *c, const struct wire_hello *peer,
			      void *opaque, char *why, size_t len)
{
	const struct disk_recv *dr = opaque;

	if (!(peer->caps & WIRE_CAP_DISK)) {
		snprintf(why, len, "this connection takes disks only");
		return false;
	}
	if (dr->migration[0] && (peer->migration.len != strlen(dr->migration) ||
				 memcmp(peer->migration.p, dr->migration, peer->migration.len))) {
		snprintf(why, len, "this port takes the disks of migration %s only",
			 dr->migration);
		return false;
	}
	if (dr->credential[0] && strcmp(wire_conn_peer(c), dr->credential)) {
		snprintf(why, len, "the disks of migration %s come with %s only, not %s",
			 dr->migration, dr->credential, wire_conn_peer(c));
		return false;
	}
	return true;
}

static bool accept_stopped(void *opaque)
{
	struct disk_recv *dr = opaque;

	return dr->stop || dr->stop_accepting;
}

/*
 * Accepts until a sender authenticates and says HELLO with WIRE_CAP_DISK
 * (dr->conn); strangers are refused and counted (dr->refused) meanwhile.
 * No overall timeout: a sender whose VM has no disk to move never comes,
 * and that is not an error here.
 */
static int accept_channel(struct disk_recv *dr)
{
	static const struct wire_hello_args hello = {
		.role = WIRE_ROLE_RECEIVER,
		.caps = WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK | WIRE_CAP_DISK,
		.site = "destination",
	};
	struct wire_accept_options ao = {
		.tls = dr->tls, .lfd = dr->lfd, .hello = &hello, .want = want_disk_channel,
		.opaque = dr, .what = "disk channel", .stopped = accept_stopped,
	};
	struct wire_hello peer;
	struct wire_conn *c;
	unsigned refused = 0;
	int r;

	r = wire_accept_peer(&ao, &c, &peer, &refused);
	pthread_mutex_lock(&dr->lock);
	dr->refused += refused;
	if (r == 0 && !dr->stop) {
		dr->conn = c;
		dr->connected = true;
		c = NULL;
	}
	pthread_mutex_unlock(&dr->lock);
	if (r == 0 && c) {
		wire_conn_free(c);
		r = -ECANCELED;
	}
	if (r < 0)
		return r;
	log_info("disk channel: connected (%s)", wire_conn_peer(dr->conn));
	return 0;
}

/* ---- the channel ---- */

static uint32_t error_code(int r)
{
	return r == -EPROTO || r == -EBADMSG || r == -EMSGSIZE || r == -EOPNOTSUPP ?
	       WIRE_CODE_PROTOCOL : WIRE_CODE_INTERNAL;
}

/*
 * The receiver's side of the disk channel after HELLO: SUMMARY, the
 * sender's BLOCKS, then writes, flushes and NEEDs until DONE. 0 when the
 * channel ended with DONE; -errno and dr->error otherwise.
 */
static int serve_channel(struct disk_recv *dr)
{
	struct wire_msg m;
	char why[256] = "";
	uint64_t t0;
	unsigned k;
	int r;

	ch_set_timeout(dr, 30000);
	r = send_summary(dr);
	if (r < 0) {
		dr_fail(dr, "disk channel: %s", ch_errmsg(dr)[0] ? ch_errmsg(dr) : strerror(-r));
		return r;
	}
	r = next_frame(dr, &m);
	if (r > 0 && m.type == WIRE_MSG_BLOCKS) {
		r = take_blocks(dr, &m.u.blocks, why, sizeof(why));
		if (r < 0) {
			dr_fail(dr, "disk channel: %s", why);
			send_status(dr, WIRE_MSG_ERROR, WIRE_CODE_REFUSED, why);
			return r;
		}
	} else {
		dr_fail(dr, "disk channel: expected the disk list");
		if (r >= 0 || error_code(r) == WIRE_CODE_PROTOCOL)
			send_status(dr, WIRE_MSG_ERROR, WIRE_CODE_PROTOCOL, dr->error);
		return r < 0 ? r : -EPROTO;
	}
	ch_set_timeout(dr, dr->stall_ms ? (int)dr->stall_ms : -1);
	for (;;) {
		r = next_frame(dr, &m);
		if (r <= 0) {
			dr_fail(dr, "disk channel lost: %s",
				r == 0 ? "closed by the sender" :
				ch_errmsg(dr)[0] ? ch_errmsg(dr) : strerror(-r));
			if (r < 0 && error_code(r) == WIRE_CODE_PROTOCOL)
				send_status(dr, WIRE_MSG_ERROR, WIRE_CODE_PROTOCOL, dr->error);
			return r < 0 ? r : -ECONNRESET;
		}
		dr->frames_in++;
		if (m.type != WIRE_MSG_PAGES && m.type != WIRE_MSG_PING)
			log_debug("disk channel: %s", wire_msg_name(m.type));
		if (dr->libvirt && !dr->libvirt_open && (m.type == WIRE_MSG_PAGES ||
		    m.type == WIRE_MSG_DONE || (m.type == WIRE_MSG_PING && m.u.ping &&
						!(m.u.ping & DISK_TOKEN_KEEPALIVE)))) {
			r = open_libvirt_targets(dr);
			if (r < 0) {
				send_status(dr, WIRE_MSG_ERROR, WIRE_CODE_QEMU, dr->error);
				return r;
			}
		}
		switch (m.type) {
		case WIRE_MSG_PAGES:
			t0 = tsb_now_ns();
			r = apply_pages(dr, &m.u.pages);
			dr->apply_ns += tsb_now_ns() - t0;
			if (r == 0) {
				dr->applied++;
				r = send_u64(dr, WIRE_MSG_ACK, dr->applied);
			}
			break;
		case WIRE_MSG_PING:
			/* Flush marker: flush_disk() waits for every earlier write of the disk. */
			r = 0;
			if (m.u.ping && !(m.u.ping & DISK_TOKEN_KEEPALIVE)) {
				int kd = map_disk(dr, (uint16_t)(m.u.ping >> 48));

				if (kd < 0) {
					dr_fail(dr, "disk channel: a flush names disk index %u, "
						"not in BLOCKS", (unsigned)(m.u.ping >> 48));
					r = -EPROTO;
				} else {
					r = flush_disk(dr, kd);
				}
			}
			if (r == 0)
				r = send_u64(dr, WIRE_MSG_PONG, m.u.ping);
			break;
		case WIRE_MSG_DONE:
			r = 0;
			for (k = 0; k < dr->n && r == 0; k++)
				if (dr->d[k].used)
					r = flush_disk(dr, (int)k);
			if (r == 0) {
				struct tsb_buf b;

				tsb_buf_init(&b);
				wire_encode_status(&b, WIRE_MSG_DONE, WIRE_CODE_OK, "disks applied");
				r = send_msg(dr, &b);
				tsb_buf_fini(&b);
			}
			if (r == 0) {
				pthread_mutex_lock(&dr->lock);
				dr->done = true;
				pthread_mutex_unlock(&dr->lock);
				log_info("disks: every write applied and flushed");
				return 0;
			}
			break;
		case WIRE_MSG_CANCEL:
		case WIRE_MSG_ERROR:
			dr_fail(dr, "the sender stopped the disk transfer: %.*s",
				(int)m.u.status.text.len, m.u.status.text.p);
			return -ECANCELED;
		default:
			dr_fail(dr, "disk channel: unexpected %s", wire_msg_name(m.type));
			r = -EPROTO;
			break;
		}
		if (r < 0) {
			if (!disk_recv_failed(dr))
				dr_fail(dr, "disk channel: %s (%s)", strerror(-r),
					wire_msg_name(m.type));
			send_status(dr, WIRE_MSG_ERROR, error_code(r), dr->error);
			return r;
		}
	}
}

static void *channel_thread(void *arg)
{
	struct disk_recv *dr = arg;
	int r = accept_channel(dr);

	close(dr->lfd);
	dr->lfd = -1;
	if (r == 0)
		(void)serve_channel(dr);
	return NULL;
}

static struct disk_recv *dr_new(int lfd)
{
	struct disk_recv *dr = calloc(1, sizeof(*dr));

	if (!dr)
		return NULL;
	pthread_mutex_init(&dr->lock, NULL);
	pthread_mutex_init(&dr->rlock, NULL);
	dr->lfd = lfd;
	for (unsigned k = 0; k < DISK_MAX; k++)
		dr->d[k].tfd = -1;
	wire_backlog_init(&dr->backlog);
	tsb_buf_init(&dr->lit);
	tsb_buf_init(&dr->hd);
	tsb_buf_init(&dr->wbuf[0]);
	tsb_buf_init(&dr->wbuf[1]);
	tsb_buf_init(&dr->cur);
	tsb_buf_init(&dr->tgt);
	dr->z = wire_zstd_new(1);
	if (!dr->z) {
		disk_recv_finish(dr, NULL, false, NULL, NULL, 0);
		return NULL;
	}
	return dr;
}

int disk_recv_run_io(const struct disk_dev *devs, unsigned n, struct diskindex *index,
		     const struct disk_recv_io *io, struct disk_recv **ret)
{
	struct disk_recv *dr;

	*ret = NULL;
	if (n > DISK_MAX)
		return -E2BIG;
	dr = dr_new(-1);
	if (!dr)
		return -ENOMEM;
	dr->io = io;
	dr->index = index;
	dr->libvirt = io->libvirt;
	if (io->standby_dir)
		snprintf(dr->standby_dir, sizeof(dr->standby_dir), "%s", io->standby_dir);
	for (dr->n = 0; !dr->libvirt && !io->standby_dir && dr->n < n; dr->n++)
		dr->d[dr->n].dev = devs[dr->n];
	dr->connected = true;
	*ret = dr;
	return serve_channel(dr);
}

int disk_recv_start(struct qmp *q, const struct disk_recv_options *o,
		    struct disk_recv **ret, char *err, size_t errlen)
{
	struct disk_dev devs[DISK_MAX];
	struct disk_recv *dr;
	unsigned i;
	int n, r;

	*ret = NULL;
	dr = dr_new(o->listen_fd);
	if (!dr) {
		close(o->listen_fd);
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	dr->tls = o->tls;
	dr->index = o->index;
	dr->stall_ms = o->stall_ms;
	snprintf(dr->migration, sizeof(dr->migration), "%s", o->migration ? o->migration : "");
	snprintf(dr->credential, sizeof(dr->credential), "%s", o->credential ? o->credential : "");
	if (o->standby_dir) {
		/* A standby's images are ours: they come with the sender's list. */
		if (strlen(o->standby_dir) + DISK_NAME_MAX + 8 > sizeof(dr->standby_dir) ||
		    sizeof(dr->standby_dir) > sizeof(dr->d[0].dev.file)) {
			snprintf(err, errlen, "the standby directory's path is too long");
			r = -ENAMETOOLONG;
			goto fail;
		}
		snprintf(dr->standby_dir, sizeof(dr->standby_dir), "%s", o->standby_dir);
		goto start;
	}
	if (o->nbd_connect) {
		/* libvirt exports the disks itself: they come with the sender's list. */
		dr->libvirt = true;
		snprintf(dr->nbd_addr, sizeof(dr->nbd_addr), "%s", o->nbd_connect);
		n = 0;
		goto start;
	}
	n = disk_query(q, devs, DISK_MAX, err, errlen);
	if (n < 0) {
		r = n;
		goto fail;
	}
	{
		/* Whose open images the target may be read from (open_qemu_image). */
		struct ucred cred;
		socklen_t clen = sizeof(cred);

		if (getsockopt(qmp_fd(q), SOL_SOCKET, SO_PEERCRED, &cred, &clen) == 0)
			dr->qemu_pid = cred.pid;
	}
	r = disk_private_dir(dr->dir, sizeof(dr->dir), err, errlen);
	if (r < 0)
		goto fail;
	snprintf(dr->sock, sizeof(dr->sock), "%s/nbd.sock", dr->dir);
	if (n > 0) {
		r = disk_qmp(q, "nbd-server-start",
			     json_pack("{s:{s:s, s:{s:s}}}", "addr", "type", "unix", "data",
				       "path", dr->sock), NULL, err, errlen);
		if (r < 0)
			goto fail;
		dr->server_started = true;
	}
	for (i = 0; i < (unsigned)n; i++) {
		struct rdisk *d = &dr->d[dr->n];

		d->dev = devs[i];
		snprintf(d->export_id, sizeof(d->export_id), "tsb-export-%u", i);
		r = disk_qmp(q, "block-export-add",
			     json_pack("{s:s, s:s, s:s, s:b, s:s}", "type", "nbd",
				       "id", d->export_id, "node-name", d->dev.node,
				       "writable", 1, "name", d->dev.device), NULL, err, errlen);
		if (r < 0)
			goto fail;
		d->exported = true;
		dr->n++;
	}
start:
	if (tsb_thread_create(&dr->th, channel_thread, dr)) {
		snprintf(err, errlen, "cannot start a thread");
		r = -EAGAIN;
		goto fail;
	}
	dr->th_started = true;
	if (dr->libvirt)
		log_info("disks: libvirt's destination QEMU exports them on %s", dr->nbd_addr);
	else if (dr->standby_dir[0])
		log_info("disks: a standby's copies, in %s", dr->standby_dir);
	else
		log_info("disks: %u disk(s) exported for the disk channel", dr->n);
	*ret = dr;
	return 0;
fail:
	disk_recv_finish(dr, q, false, NULL, NULL, 0);
	return r;
}

size_t disk_recv_images(struct disk_recv *dr, const char **out, size_t max)
{
	size_t n = 0;
	unsigned i;
	bool done;

	if (!dr)
		return 0;
	pthread_mutex_lock(&dr->lock);
	done = dr->done;
	pthread_mutex_unlock(&dr->lock);
	for (i = 0; done && i < dr->n && n < max; i++)
		if (dr->d[i].used && dr->d[i].dev.file[0] == '/')
			out[n++] = dr->d[i].dev.file;
	return n;
}

int disk_recv_finish(struct disk_recv *dr, struct qmp *q, bool ok, json_t *report,
		     char *err, size_t errlen)
{
	json_t *arr;
	unsigned i;
	bool used = false;
	int r = 0;

	if (!dr)
		return 0;
	if (dr->th_started) {
		pthread_mutex_lock(&dr->lock);
		dr->stop = true;
		if (dr->conn && !dr->done)
			wire_conn_abort(dr->conn);
		pthread_mutex_unlock(&dr->lock);
		pthread_join(dr->th, NULL);
	}
	for (i = 0; i < dr->n; i++) {
		nbd_client_close(dr->d[i].cl);
		dr->d[i].cl = NULL;
		if (dr->d[i].tfd >= 0)
			close(dr->d[i].tfd);
		dr->d[i].tfd = -1;
		used |= dr->d[i].used;
	}
	pthread_mutex_lock(&dr->rlock);
	for (i = 0; i < DISK_MAX; i++) {
		nbd_client_close(dr->rd[i]);
		dr->rd[i] = NULL;
	}
	pthread_mutex_unlock(&dr->rlock);
	if (q) {
		for (i = 0; i < dr->n; i++)
			if (dr->d[i].exported)
				(void)disk_qmp(q, "block-export-del",
					       json_pack("{s:s}", "id", dr->d[i].export_id),
					       NULL, NULL, 0);
		if (dr->server_started)
			(void)disk_qmp(q, "nbd-server-stop", NULL, NULL, NULL, 0);
	}
	if (used && (!ok || !dr->done)) {
		if (err)
			snprintf(err, errlen, "%s", dr->failed ? dr->error :
				 "the disk transfer did not complete");
		r = -EIO;
	}
	for (i = 0; i < dr->n; i++) {
		if (!dr->d[i].marked)
			continue;
		if (r == 0 && ok)
			unlink(dr->d[i].marker);
		else
			log_error("disk %s: incomplete; marked with %s", dr->d[i].dev.device,
				  dr->d[i].marker);
	}
	if (report) {
		arr = json_array();
		for (i = 0; i < dr->n; i++) {
			struct rdisk *d = &dr->d[i];

			if (!d->used)
				continue;
			json_array_append_new(arr, json_pack(
				"{s:s, s:s, s:I, s:b, s:I, s:I, s:I, s:I, s:I, s:b, s:b, s:I, "
				"s:{s:I, s:I, s:I, s:I, s:I, s:I}}",
				"device", d->dev.device, "file", d->dev.file,
				"size", (json_int_t)d->dev.size,
				"complete", r == 0 && ok && dr->done,
				"bytes_written", (json_int_t)d->bytes_written,
				"bytes_zeroed", (json_int_t)d->bytes_zeroed,
				"bytes_zero_in_place", (json_int_t)d->bytes_zero_in_place,
				"writes", (json_int_t)d->writes,
				"bytes_checked", (json_int_t)d->bytes_checked,
				"checked_in_file", d->checked_in_file,
				"written_in_file", d->written_in_file,
				"flushes", (json_int_t)d->flushes,
				"blocks", "zero", (json_int_t)d->blk_zero,
				"data", (json_int_t)d->blk_data, "ref", (json_int_t)d->blk_ref,
				"fetched", (json_int_t)d->blk_need,
				"same", (json_int_t)d->blk_same,
				"zero_in_place", (json_int_t)d->blk_zero_same));
		}
		json_object_set_new(report, "disks", json_pack(
			"{s:o, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
			"disks", arr, "channel", dr->connected,
			"error", dr->failed ? dr->error : "",
			"refused", (json_int_t)dr->refused,
			"pages_restored", (json_int_t)dr->restored,
			"restore_map", (json_int_t)dr->wm_count,
			"wait_ms", (json_int_t)(dr->wait_ns / 1000000),
			"apply_ms", (json_int_t)(dr->apply_ns / 1000000),
			"target_read_ms", (json_int_t)(dr->target_ns / 1000000),
			"nbd_write_ms", (json_int_t)(dr->write_ns / 1000000),
			"flush_ms", (json_int_t)(dr->flush_ns / 1000000)));
	}
	if (dr->lfd >= 0)
		close(dr->lfd);
	wire_backlog_fini(&dr->backlog);
	if (dr->sock[0])
		unlink(dr->sock);
	if (dr->dir[0])
		rmdir(dr->dir);
	wire_conn_free(dr->conn);
	wire_zstd_free(dr->z);
	tsb_buf_fini(&dr->lit);
	tsb_buf_fini(&dr->hd);
	tsb_buf_fini(&dr->wbuf[0]);
	tsb_buf_fini(&dr->wbuf[1]);
	tsb_buf_fini(&dr->cur);
	tsb_buf_fini(&dr->tgt);
	free(dr->resolved);
	free(dr->same);
	free(dr->tgt_at);
	free(dr->ent_off);
	free(dr->ent_disk);
	free(dr->tr);
	free(dr->wm);
	pthread_mutex_destroy(&dr->lock);
	pthread_mutex_destroy(&dr->rlock);
	free(dr);
	return r;
}
