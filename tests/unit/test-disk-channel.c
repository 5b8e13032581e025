/*
 * Both sides of the disk channel against broken and hostile peers,
 * without QEMU. disk_recv_start() runs as in `tsubame recv`, but its QMP
 * peer is a fake (query-block, nbd-server-start...) whose NBD export is a
 * disk in memory (memdisk.c); the test plays the sender over real TLS on
 * loopback, frame by frame. disk_send_start() runs against a fake source
 * QMP (blockdev-add connects the test as the mirror job to the sender's
 * NBD server; the job is ready at once); the test plays the receiver.
 * Receiver:
 *  - a plain copy (DATA, ZERO, sectors, flush, DONE) lands in the disk;
 *  - ZERO and REF entries whose block is already in the target cause no
 *    NBD write (counted by a server of the test's own, and in the
 *    report), unless an earlier entry of the frame wrote there; the
 *    other writes still go in runs;
 *  - offsets near 2^64 do not wrap the range checks (REF, DATA, ZERO);
 *  - frames queued behind a NEED are bounded by the sender's window;
 *  - the page-cache restore map holds at most one entry per disk block;
 *  - an export whose size differs from query-block's is refused;
 *  - query-block with an impossible size or an overlong name is refused;
 *  - while it waits for the disk channel, plaintext, stalled, wrong-key
 *    and wrong-HELLO connections are refused and counted, and the real
 *    sender gets through.
 * Sender:
 *  - writes and flushes of the mirror travel and complete; DONE both ways;
 *  - a DONE before the sender's, an ACK of a frame not sent, a NEED larger
 *    than a frame and a message a receiver never sends fail the transfer.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/rand.h>

#include "common/buf.h"
#include "common/log.h"
#include "disk/disk.h"
#include "disk/internal.h"
#include "memdisk.h"
#include "nbd/nbd.h"
#include "qmp/qmp.h"
#include "scratch.h"
#include "wire/codec.h"
#include "wire/tls.h"
#include "wire/wire.h"

#define DISK_SIZE (1u << 20)
#define BLOCK 4096u
#define IO_TIMEOUT_MS 10000
#define MIGRATION "mig-disk-test"

/* ---- a fake QMP: what disk_recv_start() asks of the destination QEMU ---- */

struct fakeqmp {
	char path[128];
	int lfd;
	pthread_t th;
	char *query_block;		/* JSON text of query-block's return */
	struct memdisk *md;		/* nbd-server-start serves it */
	/* source side: blockdev-add connects this client, the mirror job */
	struct nbd_client *mirror;
	bool cancelled;			/* block-job-cancel: the job is gone */
	int cancel_flush_rc;		/* its flush of the target, as QEMU's */
	char copy_mode[32];		/* blockdev-mirror's copy-mode ("": none) */
	json_int_t buf_size;		/* and its buf-size (0: none) */
};

static bool read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		if (read(fd, buf + n, 1) != 1)
			return false;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return true;
}

static void reply(int fd, json_int_t id, const char *ret)
{
	char out[8192];
	int n = snprintf(out, sizeof(out), "{\"return\": %s, \"id\": %lld}\r\n", ret,
			 (long long)id);

	assert_true(n > 0 && (size_t)n < sizeof(out));
	assert_int_equal(write(fd, out, (size_t)n), n);
}

static void *fakeqmp_main(void *arg)
{
	struct fakeqmp *f = arg;
	static const char greeting[] = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";
	char line[8192];
	int fd = accept(f->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	if (write(fd, greeting, strlen(greeting)) < 0)
		goto out;
	while (read_line(fd, line, sizeof(line))) {
		json_t *req = json_loads(line, 0, NULL);
		const char *cmd = NULL, *path = NULL;
		json_int_t id = -1;

		if (!req || json_unpack(req, "{s:s, s:I}", "execute", &cmd, "id", &id) < 0) {
			json_decref(req);
			break;
		}
		if (!strcmp(cmd, "query-block")) {
			reply(fd, id, f->query_block);
		} else if (!strcmp(cmd, "blockdev-add")) {
			struct nbd_client_config cc = { .export_name = "disk" };

			(void)json_unpack(req, "{s:{s:{s:s}}}", "arguments", "server", "path",
					  &path);
			if (path && nbd_client_connect_unix(path, &cc, &f->mirror, NULL, 0) == 0)
				reply(fd, id, "{}");
			else
				dprintf(fd, "{\"error\": {\"class\": \"GenericError\", "
					"\"desc\": \"no\"}, \"id\": %lld}\r\n", (long long)id);
		} else if (!strcmp(cmd, "query-block-jobs")) {
			reply(fd, id, f->cancelled ? "[]" :
				      "[{\"device\": \"tsb-mirror-0\", \"ready\": true}]");
		} else if (!strcmp(cmd, "block-job-cancel")) {
			/* A ready mirror flushes its target before it goes away. */
			if (f->mirror)
				f->cancel_flush_rc = nbd_client_flush(f->mirror);
			f->cancelled = true;
			reply(fd, id, "{}");
		} else if (!strcmp(cmd, "blockdev-mirror")) {
			const char *mode = NULL;

			f->buf_size = 0;
			(void)json_unpack(req, "{s:{s?s, s?I}}", "arguments", "copy-mode", &mode,
					  "buf-size", &f->buf_size);
			snprintf(f->copy_mode, sizeof(f->copy_mode), "%s", mode ? mode : "");
			reply(fd, id, "{}");
		} else if (!strcmp(cmd, "nbd-server-start")) {
			(void)json_unpack(req, "{s:{s:{s:{s:s}}}}", "arguments", "addr", "data",
					  "path", &path);
			if (path && memdisk_listen(f->md, path) == 0)
				reply(fd, id, "{}");
			else
				dprintf(fd, "{\"error\": {\"class\": \"GenericError\", "
					"\"desc\": \"no\"}, \"id\": %lld}\r\n", (long long)id);
		} else {
			/*
			 * qmp_capabilities, block-export-add/-del, nbd-server-stop,
			 * blockdev-del
			 */
			reply(fd, id, "{}");
		}
		json_decref(req);
	}
out:
	close(fd);
	return NULL;
}

static void fakeqmp_start(struct fakeqmp *f)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	scratch_path(f->path, sizeof(f->path), "qmp.sock");
	f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	assert_true(strlen(f->path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, f->path, strlen(f->path) + 1);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 1), 0);
	assert_int_equal(pthread_create(&f->th, NULL, fakeqmp_main, f), 0);
}

static void fakeqmp_stop(struct fakeqmp *f)
{
	pthread_join(f->th, NULL);
	close(f->lfd);
	unlink(f->path);
	free(f->query_block);
	nbd_client_close(f->mirror);
}

/* ---- the receiver, its fake QEMU and the keys ---- */

struct rig {
	struct fakeqmp fq;
	struct memdisk *md;
	struct qmp *q;
	struct wire_key key;
	struct wire_tls *ts, *tc;
	char image[128], marker[160], port[16];
	struct disk_recv *dr;
	json_t *report;
};

static char *query_block_json(const char *device, const char *image, const char *size)
{
	char *s = NULL;

	assert_true(asprintf(&s, "[{\"device\": \"%s\", \"qdev\": \"\", \"inserted\": "
			     "{\"node-name\": \"node0\", \"file\": \"%s\", \"drv\": \"raw\", "
			     "\"ro\": false, \"image\": {\"virtual-size\": %s}}}]",
			     device, image, size) > 0);
	return s;
}

/* Starts the fake QEMU (its export export_size bytes; query-block qb or the default). */
static int rig_up(struct rig *r, uint64_t export_size, char *qb, char *err, size_t errlen)
{
	char size[32];
	uint16_t port;
	int lfd;

	memset(r, 0, sizeof(*r));
	scratch_path(r->image, sizeof(r->image), "disk0.raw");
	snprintf(r->marker, sizeof(r->marker), "%s.tsubame-incomplete", r->image);
	snprintf(size, sizeof(size), "%u", DISK_SIZE);
	r->md = memdisk_new("disk0", DISK_SIZE, export_size);
	assert_non_null(r->md);
	r->fq.md = r->md;
	r->fq.query_block = qb ? qb : query_block_json("disk0", r->image, size);
	fakeqmp_start(&r->fq);
	assert_int_equal(qmp_open(r->fq.path, 5000, &r->q), 0);

	memset(&r->key, 0, sizeof(r->key));
	snprintf(r->key.id, sizeof(r->key.id), "disk-test");
	assert_int_equal(RAND_bytes(r->key.secret, sizeof(r->key.secret)), 1);
	/* A second key the server takes: its holder is not this migration's sender. */
	r->key.has_alt = true;
	snprintf(r->key.alt_id, sizeof(r->key.alt_id), "disk-alt");
	assert_int_equal(RAND_bytes(r->key.alt_secret, sizeof(r->key.alt_secret)), 1);
	r->ts = wire_tls_new(WIRE_TLS_SERVER);
	r->tc = wire_tls_new(WIRE_TLS_CLIENT);
	assert_non_null(r->ts);
	assert_non_null(r->tc);
	assert_int_equal(wire_tls_set_psk(r->ts, &r->key), 0);
	assert_int_equal(wire_tls_set_psk(r->tc, &r->key), 0);
	assert_int_equal(wire_tcp_listen("127.0.0.1", "0", 16, &lfd), 0);
	assert_int_equal(wire_tcp_local_port(lfd, &port), 0);
	snprintf(r->port, sizeof(r->port), "%u", port);

	struct disk_recv_options o = { .tls = r->ts, .listen_fd = lfd, .migration = MIGRATION,
					.credential = "key disk-test" };

	r->report = json_object();
	return disk_recv_start(r->q, &o, &r->dr, err, errlen);
}

/* Ends the receiver (ok: the migration succeeded); its result. */
static int rig_finish(struct rig *r, bool ok)
{
	char err[256] = "";
	int rc = disk_recv_finish(r->dr, r->q, ok, r->report, err, sizeof(err));

	r->dr = NULL;
	if (rc < 0)
		print_message("# receiver: %s\n", err);
	return rc;
}

static void rig_down(struct rig *r)
{
	if (r->dr)
		(void)rig_finish(r, false);
	qmp_close(r->q);
	fakeqmp_stop(&r->fq);
	memdisk_free(r->md);
	wire_tls_free(r->ts);
	wire_tls_free(r->tc);
	wire_key_wipe(&r->key);
	json_decref(r->report);
}

static json_int_t report_int(struct rig *r, const char *key)
{
	return json_integer_value(json_object_get(json_object_get(r->report, "disks"), key));
}

/* ---- the test's sender ---- */

static struct wire_conn *tls_connect(struct rig *r, struct wire_tls *tls, int *ret_err)
{
	struct wire_conn *c;
	char msg[WIRE_ERRMSG_MAX];
	int fd;

	assert_int_equal(wire_tcp_connect("127.0.0.1", r->port, IO_TIMEOUT_MS, &fd, msg,
					  sizeof(msg)), 0);
	c = wire_conn_new_take(tls, fd);
	assert_non_null(c);
	wire_conn_set_timeout(c, IO_TIMEOUT_MS);
	*ret_err = wire_conn_handshake(c, IO_TIMEOUT_MS);
	return c;
}

static int hello_for(struct wire_conn *c, uint32_t caps, const char *migration)
{
	struct wire_hello_args h = { .role = WIRE_ROLE_SENDER, .caps = caps, .site = "source",
				     .migration = migration };
	struct wire_hello peer;

	return wire_conn_hello(c, &h, &peer);
}

static int hello(struct wire_conn *c, uint32_t caps)
{
	return hello_for(c, caps, MIGRATION);
}

static void send_buf(struct wire_conn *c, struct tsb_buf *b)
{
	assert_int_equal(b->err, 0);
	assert_int_equal(wire_conn_write(c, b->data, b->len), 0);
	tsb_buf_reset(b);
}

static void send_u64(struct wire_conn *c, uint8_t type, uint64_t v)
{
	struct tsb_buf b;

	tsb_buf_init(&b);
	assert_int_equal(wire_encode_u64(&b, type, v), 0);
	send_buf(c, &b);
	tsb_buf_fini(&b);
}

static void read_msg(struct wire_conn *c, struct wire_msg *m)
{
	int r = wire_conn_read_msg(c, WIRE_ROLE_RECEIVER, m);

	if (r != 1)
		fail_msg("reading from the receiver: %d %s", r, wire_conn_errmsg(c));
}

static void expect_u64(struct wire_conn *c, uint8_t type, uint64_t v)
{
	struct wire_msg m;

	read_msg(c, &m);
	if (m.type != type)
		fail_msg("expected %s, got %s%s%.*s", wire_msg_name(type), wire_msg_name(m.type),
			 m.type == WIRE_MSG_ERROR ? ": " : "",
			 m.type == WIRE_MSG_ERROR ? (int)m.u.status.text.len : 0,
			 m.type == WIRE_MSG_ERROR ? m.u.status.text.p : "");
	assert_true(m.u.ping == v);
}

/* The next message must be an ERROR with this code whose text holds what. */
static void expect_error(struct wire_conn *c, uint32_t code, const char *what)
{
	struct wire_msg m;
	char text[WIRE_MAX_TEXT + 1];

	read_msg(c, &m);
	if (m.type != WIRE_MSG_ERROR)
		fail_msg("expected ERROR (%s), got %s", what, wire_msg_name(m.type));
	snprintf(text, sizeof(text), "%.*s", (int)m.u.status.text.len, m.u.status.text.p);
	print_message("# receiver: ERROR %u %s\n", m.u.status.code, text);
	assert_int_equal(m.u.status.code, code);
	if (!strstr(text, what))
		fail_msg("'%s' is not in '%s'", what, text);
}

/* Connects as the sender of one disk and agrees on it (PONG 0). */
static struct wire_conn *sender_start(struct rig *r)
{
	struct wire_block blk = { .index = 0, .name = { "disk0", 5 }, .used_length = DISK_SIZE };
	struct wire_conn *c;
	struct wire_msg m;
	struct tsb_buf b;
	int err;

	c = tls_connect(r, r->tc, &err);
	assert_int_equal(err, 0);
	assert_int_equal(hello(c, WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK | WIRE_CAP_DISK), 0);
	read_msg(c, &m);
	assert_int_equal(m.type, WIRE_MSG_SUMMARY);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_blocks(&b, &blk, 1), 0);
	assert_int_equal(wire_encode_u64(&b, WIRE_MSG_PING, 0), 0);
	send_buf(c, &b);
	tsb_buf_fini(&b);
	expect_u64(c, WIRE_MSG_PONG, 0);
	return c;
}

/* Ends a sender's channel: DONE both ways. */
static void sender_done(struct wire_conn *c)
{
	struct tsb_buf b;
	struct wire_msg m;

	tsb_buf_init(&b);
	assert_int_equal(wire_encode_status(&b, WIRE_MSG_DONE, WIRE_CODE_OK, "done"), 0);
	send_buf(c, &b);
	tsb_buf_fini(&b);
	read_msg(c, &m);
	assert_int_equal(m.type, WIRE_MSG_DONE);
}

static void fill_block(uint8_t *p, unsigned seed)
{
	for (unsigned i = 0; i < BLOCK; i++)
		p[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 8));
}

/* One PAGES frame of page size ps; add entries with the builder first. */
static void send_pages(struct wire_conn *c, struct wire_pages_builder *pb)
{
	struct tsb_buf b;

	tsb_buf_init(&b);
	assert_int_equal(wire_pages_encode(pb, &b, NULL), 0);
	wire_pages_builder_reset(pb);
	send_buf(c, &b);
	tsb_buf_fini(&b);
}

static int setup(void **state)
{
	(void)state;
	return scratch_make("test-disk-channel");
}

static int teardown(void **state)
{
	(void)state;
	scratch_remove();
	return 0;
}

/* ---- tests ---- */

static void test_copy(void **state)
{
	struct wire_pages_builder pb;
	struct rig r;
	struct wire_conn *c;
	uint8_t blk[BLOCK], sector[512];
	char err[256];

	(void)state;
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	assert_int_equal(access(r.marker, F_OK), 0);
	memset(memdisk_data(r.md) + 16 * BLOCK, 0xee, 17 * BLOCK);

	/* DATA at block 1, a filled ZERO at block 2, 64 KiB zero at 64 KiB. */
	assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
	fill_block(blk, 1);
	assert_int_equal(wire_pages_add_data(&pb, 0, 0, BLOCK, blk), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 2 * BLOCK, 0x5a), 0);
	send_pages(c, &pb);
	expect_u64(c, WIRE_MSG_ACK, 1);
	wire_pages_builder_fini(&pb);
	assert_int_equal(wire_pages_builder_init(&pb, 65536), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 64 * 1024, 0), 0);
	send_pages(c, &pb);
	expect_u64(c, WIRE_MSG_ACK, 2);
	wire_pages_builder_fini(&pb);
	/* A 512-byte piece at the very end of the disk. */
	assert_int_equal(wire_pages_builder_init(&pb, 512), 0);
	memset(sector, 0x33, sizeof(sector));
	assert_int_equal(wire_pages_add_data(&pb, 0, 0, DISK_SIZE - 512, sector), 0);
	send_pages(c, &pb);
	expect_u64(c, WIRE_MSG_ACK, 3);
	wire_pages_builder_fini(&pb);
	/* A flush of disk 0. */
	send_u64(c, WIRE_MSG_PING, 1);
	expect_u64(c, WIRE_MSG_PONG, 1);
	assert_true(memdisk_flushes(r.md) >= 1);
	send_u64(c, WIRE_MSG_PING, DISK_TOKEN_KEEPALIVE | 5);
	expect_u64(c, WIRE_MSG_PONG, DISK_TOKEN_KEEPALIVE | 5);
	sender_done(c);
	wire_conn_free(c);

	assert_int_equal(rig_finish(&r, true), 0);
	assert_memory_equal(memdisk_data(r.md) + BLOCK, blk, BLOCK);
	memset(blk, 0x5a, BLOCK);
	assert_memory_equal(memdisk_data(r.md) + 2 * BLOCK, blk, BLOCK);
	memset(blk, 0, BLOCK);
	for (unsigned i = 16; i < 32; i++)
		assert_memory_equal(memdisk_data(r.md) + i * BLOCK, blk, BLOCK);
	assert_int_equal(memdisk_data(r.md)[32 * BLOCK], 0xee);
	assert_memory_equal(memdisk_data(r.md) + DISK_SIZE - 512, sector, 512);
	assert_int_not_equal(access(r.marker, F_OK), 0);
	assert_int_equal(report_int(&r, "refused"), 0);
	rig_down(&r);
}


/* ---- blocks already in place: a disk whose NBD server counts requests ---- */

struct cdisk {
	uint8_t data[DISK_SIZE];
	pthread_mutex_t lock;
	unsigned writes, zeroes, reads;		/* requests served */
	struct nbd_server *srv[4];
	pthread_t th[4];
	int fd[4];
	unsigned n;
};

static int cd_size(void *user, uint64_t *ret)
{
	(void)user;
	*ret = DISK_SIZE;
	return 0;
}

static int cd_read(void *user, struct nbd_io *io)
{
	struct cdisk *d = user;

	pthread_mutex_lock(&d->lock);
	memcpy(io->data, d->data + io->offset, io->length);
	d->reads++;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static int cd_write(void *user, struct nbd_io *io)
{
	struct cdisk *d = user;

	pthread_mutex_lock(&d->lock);
	memcpy(d->data + io->offset, io->data, io->length);
	d->writes++;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static int cd_write_zeroes(void *user, struct nbd_io *io)
{
	struct cdisk *d = user;

	pthread_mutex_lock(&d->lock);
	memset(d->data + io->offset, 0, io->length);
	d->zeroes++;
	pthread_mutex_unlock(&d->lock);
	return 0;
}

static int cd_flush(void *user, struct nbd_io *io)
{
	(void)user;
	(void)io;
	return 0;
}

static const struct nbd_export_ops cd_ops = {
	.size = cd_size, .read = cd_read, .write = cd_write,
	.write_zeroes = cd_write_zeroes, .flush = cd_flush,
};

static void *cd_serve(void *arg)
{
	struct cdisk *d = arg;
	unsigned i;
	int fd;

	pthread_mutex_lock(&d->lock);
	i = d->n - 1;
	fd = d->fd[i];
	pthread_mutex_unlock(&d->lock);
	(void)nbd_server_serve_fd(d->srv[i], fd);
	return NULL;
}

/* The feed the receiver reads its frames from, and where its answers go. */
struct feed {
	struct cdisk *d;
	struct tsb_buf in;
	size_t pos;
	unsigned acks;
};

static int feed_read(void *opaque, struct wire_frame *f)
{
	struct feed *fd = opaque;
	int r;

	if (fd->pos == fd->in.len)
		return 0;
	r = wire_header_decode(fd->in.data + fd->pos, f);
	if (r < 0)
		return r;
	f->payload = fd->in.data + fd->pos + WIRE_HDR_LEN;
	fd->pos += WIRE_HDR_LEN + f->len;
	return 1;
}

static int feed_write(void *opaque, const void *data, size_t len)
{
	struct feed *fd = opaque;
	const uint8_t *p = data;
	struct wire_frame f;

	while (len >= WIRE_HDR_LEN) {
		assert_int_equal(wire_header_decode(p, &f), 0);
		if (f.type == WIRE_MSG_ACK)
			fd->acks++;
		assert_int_not_equal(f.type, WIRE_MSG_NEED);
		assert_int_not_equal(f.type, WIRE_MSG_ERROR);
		p += WIRE_HDR_LEN + f.len;
		len -= WIRE_HDR_LEN + f.len;
	}
	return 0;
}

static int feed_nbd_connect(void *opaque, unsigned k, const struct nbd_client_config *cfg,
			    struct nbd_client **ret)
{
	struct feed *fd = opaque;
	struct cdisk *d = fd->d;
	struct nbd_server_config sc = { .export_name = "disk0" };
	int sv[2];

	assert_int_equal(k, 0);
	assert_true(d->n < 4);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	pthread_mutex_lock(&d->lock);
	d->srv[d->n] = nbd_server_new(&sc, &cd_ops, d);
	assert_non_null(d->srv[d->n]);
	d->fd[d->n] = sv[1];
	d->n++;
	pthread_mutex_unlock(&d->lock);
	assert_int_equal(pthread_create(&d->th[d->n - 1], NULL, cd_serve, d), 0);
	return nbd_client_connect_fd(sv[0], cfg, ret, NULL, 0);
}

static void feed_pages(struct feed *fd, struct wire_pages_builder *pb)
{
	assert_int_equal(wire_pages_encode(pb, &fd->in, NULL), 0);
	wire_pages_builder_reset(pb);
}

static json_int_t disk_int(json_t *report, const char *key, const char *sub)
{
	json_t *d = json_array_get(json_object_get(json_object_get(report, "disks"), "disks"), 0);

	if (sub)
		d = json_object_get(d, sub);
	return json_integer_value(json_object_get(d, key));
}

static void test_in_place(void **state)
{
	struct disk_dev dev = { .device = "disk0", .node = "node0", .size = DISK_SIZE };
	struct wire_block blk = { .index = 0, .name = { "disk0", 5 }, .used_length = DISK_SIZE };
	struct cdisk *d = calloc(1, sizeof(*d));
	struct feed fd = { .d = d };
	struct disk_recv_io io = { .opaque = &fd, .read_frame = feed_read, .write = feed_write,
				   .nbd_connect = feed_nbd_connect };
	struct wire_pages_builder pb;
	struct disk_recv *dr = NULL;
	uint8_t a[BLOCK], b[BLOCK], zero[BLOCK], hash[WIRE_HASH_LEN];
	json_t *report = json_object();
	unsigned i;

	(void)state;
	assert_non_null(d);
	pthread_mutex_init(&d->lock, NULL);
	fill_block(a, 3);
	fill_block(b, 9);
	memset(zero, 0, sizeof(zero));
	/* The target: zero, but block 3 holds a, block 5 0x5a, block 7 and byte 160 KiB not zero. */
	memcpy(d->data + 3 * BLOCK, a, BLOCK);
	memset(d->data + 5 * BLOCK, 0x5a, BLOCK);
	memset(d->data + 7 * BLOCK, 0xee, BLOCK);
	d->data[160 * 1024] = 1;

	tsb_buf_init(&fd.in);
	assert_int_equal(wire_encode_blocks(&fd.in, &blk, 1), 0);
	assert_int_equal(wire_encode_u64(&fd.in, WIRE_MSG_PING, 0), 0);
	assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
	assert_int_equal(wire_pages_add_data(&pb, 0, 0, 0, b), 0);		/* written */
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 1 * BLOCK, 0), 0);	/* in place */
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 2 * BLOCK, 0), 0);	/* in place */
	assert_int_equal(wire_sha256(a, BLOCK, hash), 0);
	assert_int_equal(wire_pages_add_ref(&pb, 0, 0, 3 * BLOCK, WIRE_ENC_REF, hash), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 4 * BLOCK, 0), 0);	/* in place */
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 5 * BLOCK, 0x5a), 0);	/* in place */
	/* Block 6 is zero before the frame, but its DATA comes first: zeroed again. */
	assert_int_equal(wire_pages_add_data(&pb, 0, 0, 6 * BLOCK, b), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 6 * BLOCK, 0), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 7 * BLOCK, 0), 0);	/* one run with 6 */
	feed_pages(&fd, &pb);
	wire_pages_builder_fini(&pb);
	/* 64 KiB zero ranges: 64 KiB is zero already, 128 KiB is not. */
	assert_int_equal(wire_pages_builder_init(&pb, 65536), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 65536, 0), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 2 * 65536, 0), 0);
	feed_pages(&fd, &pb);
	wire_pages_builder_fini(&pb);
	assert_int_equal(wire_encode_status(&fd.in, WIRE_MSG_DONE, WIRE_CODE_OK, "done"), 0);
	assert_int_equal(fd.in.err, 0);

	assert_int_equal(disk_recv_run_io(&dev, 1, NULL, &io, &dr), 0);
	assert_int_equal(fd.acks, 2);
	assert_int_equal(disk_recv_finish(dr, NULL, true, report, NULL, 0), 0);
	for (i = 0; i < d->n; i++) {
		nbd_server_stop(d->srv[i]);
		pthread_join(d->th[i], NULL);
		nbd_server_free(d->srv[i]);
	}

	/* NBD requests: WRITE of block 0, WRITE of block 6, WRITE_ZEROES of 6-7 and 128 KiB. */
	print_message("# server: %u writes, %u write-zeroes, %u reads\n", d->writes, d->zeroes,
		      d->reads);
	assert_int_equal(d->writes, 2);
	assert_int_equal(d->zeroes, 2);
	assert_memory_equal(d->data, b, BLOCK);
	for (i = 1; i < 256; i++)
		if (i != 3 && i != 5)
			assert_memory_equal(d->data + i * BLOCK, zero, BLOCK);
	assert_memory_equal(d->data + 3 * BLOCK, a, BLOCK);
	memset(a, 0x5a, BLOCK);
	assert_memory_equal(d->data + 5 * BLOCK, a, BLOCK);

	assert_int_equal(disk_int(report, "writes", NULL), 4);
	assert_int_equal(disk_int(report, "bytes_zero_in_place", NULL), 4 * BLOCK + 65536);
	assert_int_equal(disk_int(report, "bytes_zeroed", NULL), 2 * BLOCK + 65536);
	assert_int_equal(disk_int(report, "bytes_written", NULL), 2 * BLOCK);
	assert_int_equal(disk_int(report, "zero", "blocks"), 8);
	assert_int_equal(disk_int(report, "zero_in_place", "blocks"), 5);
	assert_int_equal(disk_int(report, "same", "blocks"), 1);
	assert_true(disk_int(report, "bytes_checked", NULL) >= 6 * BLOCK + 2 * 65536);
	json_decref(report);
	tsb_buf_fini(&fd.in);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

/* A frame built by hand would do too; the builder only checks alignment. */
static void wrapping_frame(struct wire_conn *c, int kind)
{
	static const uint64_t top4k = UINT64_MAX - BLOCK + 1;
	struct wire_pages_builder pb;
	uint8_t blk[BLOCK], h1[WIRE_HASH_LEN], h2[WIRE_HASH_LEN];

	fill_block(blk, 7);
	assert_int_equal(wire_sha256(blk, BLOCK, h1), 0);
	fill_block(blk, 8);
	assert_int_equal(wire_sha256(blk, BLOCK, h2), 0);
	switch (kind) {
	case 0:
		/*
		 * REFs at 0 and at 2^64 - 4096: offset + 4096 wraps to 0, so an
		 * unchecked sum passes "inside the disk" and "inside the range
		 * read for the in-place check", and the hash is read from 4 KiB
		 * before that buffer.
		 */
		assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
		assert_int_equal(wire_pages_add_ref(&pb, 0, 0, 0, WIRE_ENC_REF, h1), 0);
		assert_int_equal(wire_pages_add_ref(&pb, 0, 0, top4k, WIRE_ENC_REF, h2), 0);
		break;
	case 1:
		assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
		assert_int_equal(wire_pages_add_data(&pb, 0, 0, top4k, blk), 0);
		break;
	default:
		assert_int_equal(wire_pages_builder_init(&pb, 65536), 0);
		assert_int_equal(wire_pages_add_zero(&pb, 0, 0, UINT64_MAX - 65535, 0), 0);
		break;
	}
	send_pages(c, &pb);
	wire_pages_builder_fini(&pb);
}

static void test_offset_wrap(void **state)
{
	struct rig r;
	struct wire_conn *c;
	char err[256];

	(void)state;
	for (int kind = 0; kind < 3; kind++) {
		assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
		c = sender_start(&r);
		wrapping_frame(c, kind);
		expect_error(c, WIRE_CODE_PROTOCOL, "outside disk disk0");
		wire_conn_free(c);
		assert_int_equal(rig_finish(&r, true), -EIO);
		assert_int_equal(access(r.marker, F_OK), 0);	/* still incomplete */
		rig_down(&r);
	}
}

/* A REF the receiver cannot rebuild: it asks with NEED and waits. */
static void ref_frame(struct wire_conn *c, uint64_t off, uint8_t blk[BLOCK],
		      uint8_t hash[WIRE_HASH_LEN])
{
	struct wire_pages_builder pb;
	struct wire_msg m;

	fill_block(blk, 99);
	assert_int_equal(wire_sha256(blk, BLOCK, hash), 0);
	assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
	assert_int_equal(wire_pages_add_ref(&pb, 0, 0, off, WIRE_ENC_REF, hash), 0);
	send_pages(c, &pb);
	wire_pages_builder_fini(&pb);
	read_msg(c, &m);
	assert_int_equal(m.type, WIRE_MSG_NEED);
	assert_int_equal(m.u.need.count, 1);
	assert_memory_equal(m.u.need.hashes, hash, WIRE_HASH_LEN);
}

static void data_frame(struct wire_conn *c, uint64_t off, unsigned seed)
{
	struct wire_pages_builder pb;
	uint8_t blk[BLOCK];

	fill_block(blk, seed);
	assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
	assert_int_equal(wire_pages_add_data(&pb, 0, 0, off, blk), 0);
	send_pages(c, &pb);
	wire_pages_builder_fini(&pb);
}

static void test_backlog_window(void **state)
{
	struct rig r;
	struct wire_conn *c;
	struct tsb_buf b;
	uint8_t blk[BLOCK], hash[WIRE_HASH_LEN], want[BLOCK];
	char err[256];
	unsigned i;

	(void)state;
	/* What a sender may do: a window of frames and some PINGs, then the answer. */
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	ref_frame(c, 0, blk, hash);
	for (i = 1; i < DISK_WINDOW; i++) {
		data_frame(c, (uint64_t)i * BLOCK, i);
		send_u64(c, WIRE_MSG_PING, DISK_TOKEN_KEEPALIVE | i);
	}
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_hashdata(&b, BLOCK, (const uint8_t (*)[WIRE_HASH_LEN])hash,
					      blk, 1, NULL), 0);
	send_buf(c, &b);
	tsb_buf_fini(&b);
	expect_u64(c, WIRE_MSG_ACK, 1);
	for (i = 1; i < DISK_WINDOW; i++) {
		expect_u64(c, WIRE_MSG_ACK, i + 1);
		expect_u64(c, WIRE_MSG_PONG, DISK_TOKEN_KEEPALIVE | i);
	}
	sender_done(c);
	wire_conn_free(c);
	assert_int_equal(rig_finish(&r, true), 0);
	assert_memory_equal(memdisk_data(r.md), blk, BLOCK);
	fill_block(want, DISK_WINDOW - 1);
	assert_memory_equal(memdisk_data(r.md) + (DISK_WINDOW - 1) * BLOCK, want, BLOCK);
	rig_down(&r);

	/* More PAGES than a window while the NEED waits: refused, not queued. */
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	ref_frame(c, 0, blk, hash);
	for (i = 0; i <= DISK_WINDOW; i++)
		data_frame(c, (uint64_t)(i + 1) * BLOCK, i);
	expect_error(c, WIRE_CODE_PROTOCOL, "while a NEED was waiting");
	wire_conn_free(c);
	assert_int_equal(rig_finish(&r, true), -EIO);
	rig_down(&r);

	/*
	 * Or more bytes than the window's: frames of a whole MiB of data
	 * (uncompressed), far fewer than DISK_WINDOW of them.
	 */
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	ref_frame(c, 0, blk, hash);
	for (i = 0; i <= DISK_WINDOW_BYTES / DISK_SIZE; i++) {
		struct wire_pages_builder pb;

		assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
		for (unsigned k = 0; k < DISK_SIZE / BLOCK; k++) {
			fill_block(want, i + k);
			assert_int_equal(wire_pages_add_data(&pb, 0, 0, (uint64_t)k * BLOCK, want), 0);
		}
		send_pages(c, &pb);
		wire_pages_builder_fini(&pb);
	}
	assert_true(DISK_WINDOW_BYTES / DISK_SIZE + 1 < DISK_WINDOW);
	expect_error(c, WIRE_CODE_PROTOCOL, "bytes of PAGES while a NEED was waiting");
	wire_conn_free(c);
	assert_int_equal(rig_finish(&r, true), -EIO);
	rig_down(&r);

	/* So are other frames, past their own cap. */
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	ref_frame(c, 0, blk, hash);
	for (i = 0; i <= 256; i++)
		send_u64(c, WIRE_MSG_PING, DISK_TOKEN_KEEPALIVE | i);
	expect_error(c, WIRE_CODE_PROTOCOL, "while a NEED was waiting");
	wire_conn_free(c);
	assert_int_equal(rig_finish(&r, true), -EIO);
	rig_down(&r);
}

static void test_restore_map_bounded(void **state)
{
	const unsigned blocks = DISK_SIZE / BLOCK;
	struct wire_pages_builder pb;
	struct rig r;
	struct wire_conn *c;
	uint8_t blk[BLOCK], last[WIRE_HASH_LEN], out[BLOCK];
	char err[256];
	unsigned f, i;

	(void)state;
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	/* 4 x as many distinct contents as the disk has blocks, all at block 0..15. */
	assert_int_equal(wire_pages_builder_init(&pb, BLOCK), 0);
	for (f = 0; f < 4 * blocks / DISK_BATCH; f++) {
		for (i = 0; i < DISK_BATCH; i++) {
			fill_block(blk, f * DISK_BATCH + i + 1000);
			assert_int_equal(wire_pages_add_data(&pb, 0, 0, (uint64_t)(i % 16) * BLOCK,
							     blk), 0);
		}
		send_pages(c, &pb);
		expect_u64(c, WIRE_MSG_ACK, f + 1);
	}
	wire_pages_builder_fini(&pb);
	assert_int_equal(wire_sha256(blk, BLOCK, last), 0);
	/* The newest content is there to be read back. */
	assert_true(disk_recv_has(r.dr, last));
	assert_int_equal(disk_recv_get(r.dr, last, out), 0);
	assert_memory_equal(out, blk, BLOCK);
	sender_done(c);
	wire_conn_free(c);
	assert_int_equal(rig_finish(&r, true), 0);
	print_message("# restore map: %lld entries after %u distinct blocks written\n",
		      (long long)report_int(&r, "restore_map"), 4 * blocks);
	assert_true(report_int(&r, "restore_map") <= blocks);
	assert_true(report_int(&r, "restore_map") > 0);
	rig_down(&r);
}

static void test_export_size_mismatch(void **state)
{
	struct wire_block blk = { .index = 0, .name = { "disk0", 5 }, .used_length = DISK_SIZE };
	struct rig r;
	struct wire_conn *c;
	struct wire_msg m;
	struct tsb_buf b;
	char err[256];
	int e;

	(void)state;
	/* query-block says 1 MiB; the export is larger. */
	assert_int_equal(rig_up(&r, 2 * DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = tls_connect(&r, r.tc, &e);
	assert_int_equal(e, 0);
	assert_int_equal(hello(c, WIRE_CAP_DISK), 0);
	read_msg(c, &m);
	assert_int_equal(m.type, WIRE_MSG_SUMMARY);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_blocks(&b, &blk, 1), 0);
	send_buf(c, &b);
	tsb_buf_fini(&b);
	expect_error(c, WIRE_CODE_REFUSED, "exports 2097152 bytes");
	wire_conn_free(c);
	assert_true(disk_recv_failed(r.dr));
	(void)rig_finish(&r, true);
	rig_down(&r);
}

static void test_query_block_refused(void **state)
{
	char image[128], name[200], err[256] = "";
	struct rig r;

	(void)state;
	scratch_path(image, sizeof(image), "disk0.raw");
	assert_int_equal(rig_up(&r, DISK_SIZE, query_block_json("disk0", image, "-4096"), err,
				sizeof(err)), -EPROTO);
	print_message("# %s\n", err);
	assert_non_null(strstr(err, "virtual size"));
	rig_down(&r);

	assert_int_equal(rig_up(&r, DISK_SIZE, query_block_json("disk0", image, "\"big\""), err,
				sizeof(err)), -EPROTO);
	rig_down(&r);

	memset(name, 'd', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(rig_up(&r, DISK_SIZE, query_block_json(name, image, "1048576"), err,
				sizeof(err)), -ENAMETOOLONG);
	print_message("# %s\n", err);
	rig_down(&r);
}

static void test_flush_unknown_disk(void **state)
{
	struct rig r;
	struct wire_conn *c;
	char err[256];

	(void)state;
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);
	c = sender_start(&r);
	send_u64(c, WIRE_MSG_PING, (3ull << 48) | 1);
	expect_error(c, WIRE_CODE_PROTOCOL, "disk index 3");
	wire_conn_free(c);
	assert_int_equal(rig_finish(&r, true), -EIO);
	rig_down(&r);
}

/* Reads until the peer closes (or the timeout): true if it closed. */
static bool closed_by_peer(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char buf[256];

	for (;;) {
		if (poll(&p, 1, IO_TIMEOUT_MS) <= 0)
			return false;
		if (read(fd, buf, sizeof(buf)) <= 0)
			return true;
	}
}

static int tcp_connect(struct rig *r)
{
	char msg[256];
	int fd;

	assert_int_equal(wire_tcp_connect("127.0.0.1", r->port, IO_TIMEOUT_MS, &fd, msg,
					  sizeof(msg)), 0);
	return fd;
}

static void test_accept_strangers(void **state)
{
	static const char http[] = "GET / HTTP/1.0\r\n\r\n";
	struct wire_key other;
	struct wire_tls *tbad, *talt;
	struct rig r;
	struct wire_conn *c, *wrong;
	struct wire_msg m;
	char err[256];
	int plain, stalled, e;

	(void)state;
	assert_int_equal(rig_up(&r, DISK_SIZE, NULL, err, sizeof(err)), 0);

	/* A plaintext client: refused at its first byte. */
	plain = tcp_connect(&r);
	assert_int_equal(write(plain, http, strlen(http)), (ssize_t)strlen(http));
	assert_true(closed_by_peer(plain));
	close(plain);

	/* A client that stalls after one byte of a TLS record. */
	stalled = tcp_connect(&r);
	assert_int_equal(write(stalled, "\x16", 1), 1);

	/* Another key: the handshake fails. */
	memset(&other, 0, sizeof(other));
	snprintf(other.id, sizeof(other.id), "disk-test");
	assert_int_equal(RAND_bytes(other.secret, sizeof(other.secret)), 1);
	tbad = wire_tls_new(WIRE_TLS_CLIENT);
	assert_non_null(tbad);
	assert_int_equal(wire_tls_set_psk(tbad, &other), 0);
	c = tls_connect(&r, tbad, &e);
	if (e == 0) {
		/* TLS 1.3: the client may finish first and learn it on its next read. */
		struct wire_frame f;

		e = wire_conn_read_frame(c, &f);
	}
	assert_int_equal(e, -EACCES);
	wire_conn_free(c);

	/* The right key, but a HELLO without the disk capability. */
	wrong = tls_connect(&r, r.tc, &e);
	assert_int_equal(e, 0);
	assert_int_equal(hello(wrong, WIRE_CAP_ZSTD), 0);
	read_msg(wrong, &m);
	assert_int_equal(m.type, WIRE_MSG_ERROR);
	assert_int_equal(m.u.status.code, WIRE_CODE_REFUSED);
	wire_conn_free(wrong);

	/* The disks of another migration. */
	wrong = tls_connect(&r, r.tc, &e);
	assert_int_equal(e, 0);
	assert_int_equal(hello_for(wrong, WIRE_CAP_DISK, "another-migration"), 0);
	read_msg(wrong, &m);
	assert_int_equal(m.type, WIRE_MSG_ERROR);
	assert_int_equal(m.u.status.code, WIRE_CODE_REFUSED);
	wire_conn_free(wrong);

	/* A key the server takes, but not the one this migration came with. */
	memset(&other, 0, sizeof(other));
	snprintf(other.id, sizeof(other.id), "disk-alt");
	memcpy(other.secret, r.key.alt_secret, sizeof(other.secret));
	talt = wire_tls_new(WIRE_TLS_CLIENT);
	assert_non_null(talt);
	assert_int_equal(wire_tls_set_psk(talt, &other), 0);
	wrong = tls_connect(&r, talt, &e);
	assert_int_equal(e, 0);
	assert_int_equal(hello(wrong, WIRE_CAP_DISK), 0);
	read_msg(wrong, &m);
	assert_int_equal(m.type, WIRE_MSG_ERROR);
	assert_int_equal(m.u.status.code, WIRE_CODE_REFUSED);
	print_message("# %.*s\n", (int)m.u.status.text.len, m.u.status.text.p);
	wire_conn_free(wrong);
	wire_tls_free(talt);

	/* The sender gets through while the stalled client still waits. */
	c = sender_start(&r);
	data_frame(c, 0, 1);
	expect_u64(c, WIRE_MSG_ACK, 1);
	/* Once the channel is up, the receiver drops the stalled client. */
	assert_true(closed_by_peer(stalled));
	close(stalled);
	sender_done(c);
	wire_conn_free(c);

	assert_int_equal(rig_finish(&r, true), 0);
	print_message("# refused while waiting: %lld\n", (long long)report_int(&r, "refused"));
	assert_int_equal(report_int(&r, "refused"), 6);
	wire_tls_free(tbad);
	wire_key_wipe(&other);
	rig_down(&r);
}

/* ---- the sender, with the test as its receiver ---- */

struct srig {
	struct fakeqmp fq;
	struct qmp *q;
	struct wire_key key;
	struct wire_tls *ts, *tc;
	int lfd;
	char port[16];
	pthread_t th;
	struct wire_conn *c;		/* the test's end of the disk channel */
	int err;
	struct disk_send *ds;
	json_t *report;
};

/* The receiver's side up to PONG 0, on a thread while disk_send_start() runs. */
static void *recv_accept_main(void *arg)
{
	struct srig *s = arg;
	struct wire_hello_args h = { .role = WIRE_ROLE_RECEIVER, .site = "destination",
				     .caps = WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK |
					     WIRE_CAP_DISK };
	struct wire_summary sum = { 0 };
	struct wire_hello peer;
	struct wire_msg m;
	struct tsb_buf b;
	int fd;

	s->err = wire_tcp_accept(s->lfd, &fd);
	if (s->err)
		return NULL;
	s->c = wire_conn_new_take(s->ts, fd);
	if (!s->c) {
		s->err = -ENOMEM;
		return NULL;
	}
	wire_conn_set_timeout(s->c, IO_TIMEOUT_MS);
	s->err = wire_conn_handshake(s->c, IO_TIMEOUT_MS);
	if (!s->err)
		s->err = wire_conn_hello(s->c, &h, &peer);
	tsb_buf_init(&b);
	if (!s->err)
		s->err = wire_encode_summary(&b, &sum);
	if (!s->err)
		s->err = wire_conn_write(s->c, b.data, b.len);
	tsb_buf_fini(&b);
	if (!s->err && (wire_conn_read_msg(s->c, WIRE_ROLE_SENDER, &m) != 1 ||
			m.type != WIRE_MSG_BLOCKS || m.u.blocks.count != 1))
		s->err = -EPROTO;
	if (!s->err && (wire_conn_read_msg(s->c, WIRE_ROLE_SENDER, &m) != 1 ||
			m.type != WIRE_MSG_PING || m.u.ping != 0))
		s->err = -EPROTO;
	tsb_buf_init(&b);
	if (!s->err)
		s->err = wire_encode_u64(&b, WIRE_MSG_PONG, 0);
	if (!s->err)
		s->err = wire_conn_write(s->c, b.data, b.len);
	tsb_buf_fini(&b);
	return NULL;
}

static void srig_up_opts(struct srig *s, enum disk_copy_mode mode, bool set_mode,
			 bool flush_waits)
{
	char image[128], size[32], err[256] = "";
	uint16_t port;

	memset(s, 0, sizeof(*s));
	scratch_path(image, sizeof(image), "src.raw");
	snprintf(size, sizeof(size), "%u", DISK_SIZE);
	s->fq.query_block = query_block_json("disk0", image, size);
	fakeqmp_start(&s->fq);
	assert_int_equal(qmp_open(s->fq.path, 5000, &s->q), 0);
	snprintf(s->key.id, sizeof(s->key.id), "disk-test");
	assert_int_equal(RAND_bytes(s->key.secret, sizeof(s->key.secret)), 1);
	s->ts = wire_tls_new(WIRE_TLS_SERVER);
	s->tc = wire_tls_new(WIRE_TLS_CLIENT);
	assert_non_null(s->ts);
	assert_non_null(s->tc);
	assert_int_equal(wire_tls_set_psk(s->ts, &s->key), 0);
	assert_int_equal(wire_tls_set_psk(s->tc, &s->key), 0);
	assert_int_equal(wire_tcp_listen("127.0.0.1", "0", 4, &s->lfd), 0);
	assert_int_equal(wire_tcp_local_port(s->lfd, &port), 0);
	snprintf(s->port, sizeof(s->port), "%u", port);
	assert_int_equal(pthread_create(&s->th, NULL, recv_accept_main, s), 0);

	struct disk_send_options o = { .host = "127.0.0.1", .port = s->port, .tls = s->tc,
				       .ready_timeout_ms = IO_TIMEOUT_MS };

	if (set_mode)
		o.copy_mode = mode;
	o.flush_waits = flush_waits;
	if (disk_send_start(s->q, &o, &s->ds, err, sizeof(err)) < 0)
		fail_msg("disk_send_start: %s", err);
	assert_int_equal(pthread_join(s->th, NULL), 0);
	assert_int_equal(s->err, 0);
	assert_non_null(s->ds);
	assert_non_null(s->fq.mirror);
	s->report = json_object();
}

static void srig_up_mode(struct srig *s, enum disk_copy_mode mode, bool set_mode)
{
	srig_up_opts(s, mode, set_mode, false);
}

/* The sender with options left at their defaults. */
static void srig_up(struct srig *s)
{
	srig_up_mode(s, DISK_COPY_WRITE_BLOCKING, false);
}

static void srig_down(struct srig *s)
{
	disk_send_finish(s->ds, s->q, s->report);
	wire_conn_free(s->c);
	qmp_close(s->q);
	fakeqmp_stop(&s->fq);
	close(s->lfd);
	wire_tls_free(s->ts);
	wire_tls_free(s->tc);
	wire_key_wipe(&s->key);
	json_decref(s->report);
}

/* Waits (boundedly) until the sender has failed; its reason. */
static void expect_send_failed(struct srig *s, const char *what)
{
	char err[256] = "";

	for (int i = 0; i < IO_TIMEOUT_MS / 10 && !disk_send_failed(s->ds, err, sizeof(err)); i++)
		usleep(10000);
	print_message("# sender: %s\n", err);
	if (!strstr(err, what))
		fail_msg("'%s' is not in '%s'", what, err);
}

/* The test's receiver: ACKs, PONGs, DONE; counts what it got. */
enum responder_end { END_DONE, END_SILENT, END_ERROR };

struct responder {
	struct wire_conn *c;
	enum responder_end end;		/* its answer to the sender's DONE */
	unsigned pages, pings, entries;
	bool done;
};

static void *responder_main(void *arg)
{
	struct responder *rp = arg;
	struct wire_page_iter it;
	struct wire_page_entry e;
	struct wire_msg m;
	struct tsb_buf b;
	uint64_t applied = 0;

	tsb_buf_init(&b);
	while (wire_conn_read_msg(rp->c, WIRE_ROLE_SENDER, &m) == 1) {
		tsb_buf_reset(&b);
		if (m.type == WIRE_MSG_PAGES) {
			rp->pages++;
			wire_pages_iter_init(&m.u.pages, &it);
			while (wire_pages_next(&it, &e))
				rp->entries++;
			wire_encode_u64(&b, WIRE_MSG_ACK, ++applied);
		} else if (m.type == WIRE_MSG_PING) {
			rp->pings++;
			wire_encode_u64(&b, WIRE_MSG_PONG, m.u.ping);
		} else if (m.type == WIRE_MSG_DONE) {
			rp->done = true;
			if (rp->end == END_SILENT)
				break;
			if (rp->end == END_ERROR)
				wire_encode_status(&b, WIRE_MSG_ERROR, WIRE_CODE_PROTOCOL,
						   "flush failed");
			else
				wire_encode_status(&b, WIRE_MSG_DONE, WIRE_CODE_OK, "applied");
		} else {
			break;
		}
		if (wire_conn_write(rp->c, b.data, b.len) < 0 || rp->done)
			break;
	}
	tsb_buf_fini(&b);
	return NULL;
}

/*
 * A plain copy and a flush, then the switchover. flush_waits: the flush
 * completes only once the receiver answered its PING (libvirt's way);
 * otherwise at once, the PING still sent (the receiver flushes), the DONE
 * covering it.
 */
static void send_copy(bool flush_waits)
{
	struct responder rp = { 0 };
	struct srig s;
	pthread_t t;
	uint8_t blk[4 * BLOCK];
	char err[256] = "";

	srig_up_opts(&s, DISK_COPY_WRITE_BLOCKING, false, flush_waits);
	rp.c = s.c;
	assert_int_equal(pthread_create(&t, NULL, responder_main, &rp), 0);
	for (unsigned i = 0; i < 4; i++)
		fill_block(blk + i * BLOCK, i);
	assert_int_equal(nbd_client_pwrite(s.fq.mirror, blk, sizeof(blk), 8 * BLOCK, 0), 0);
	assert_int_equal(nbd_client_write_zeroes(s.fq.mirror, 64 * BLOCK, 128 * 1024, 0), 0);
	assert_int_equal(nbd_client_flush(s.fq.mirror), 0);
	if (flush_waits)
		assert_int_equal(rp.pings, 1);
	if (disk_send_switchover(s.ds, s.q, err, sizeof(err)) < 0)
		fail_msg("switchover: %s", err);
	/* The mirror's last flush, inside the downtime, waited for no PONG. */
	assert_int_equal(s.fq.cancel_flush_rc, 0);
	if (disk_send_confirmed(s.ds, IO_TIMEOUT_MS, err, sizeof(err)) < 0)
		fail_msg("confirmation: %s", err);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_true(rp.done);
	assert_int_equal(rp.pings, 1);
	assert_int_equal(rp.entries, 4 + 2);
	/*
	 * Auto by default (issue 18): the mirror starts in background (a job
	 * that never stops converging is not restarted), and it is reported.
	 */
	assert_string_equal(s.fq.copy_mode, "background");
	assert_int_equal(s.fq.buf_size, 0);
	disk_send_finish(s.ds, s.q, s.report);
	s.ds = NULL;
	assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(
		json_object_get(s.report, "disks"), "disks"), 0), "copy_mode")), "background");
	srig_down(&s);
}

static void test_send_copy(void **state)
{
	(void)state;
	send_copy(false);
}

static void test_send_copy_flush_waits(void **state)
{
	(void)state;
	send_copy(true);
}

/* --disk-copy-mode background or write-blocking reaches blockdev-mirror and the report. */
static void check_send_mode(enum disk_copy_mode mode, const char *name, int buf_size)
{
	struct responder rp = { 0 };
	struct srig s;
	pthread_t t;

	srig_up_mode(&s, mode, true);
	assert_string_equal(s.fq.copy_mode, name);
	assert_int_equal(s.fq.buf_size, buf_size);
	/* Someone answers the flush of the (fake) job's cancel. */
	rp.c = s.c;
	assert_int_equal(pthread_create(&t, NULL, responder_main, &rp), 0);
	disk_send_finish(s.ds, s.q, s.report);
	s.ds = NULL;
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(
		json_object_get(s.report, "disks"), "disks"), 0), "copy_mode")), name);
	srig_down(&s);
}

static void test_send_background_mode(void **state)
{
	(void)state;
	check_send_mode(DISK_COPY_BACKGROUND, "background", 0); /* QEMU's default buf-size */
}

/* Write-blocking keeps few bulk-copy requests ahead of a guest write. */
static void test_send_write_blocking_mode(void **state)
{
	(void)state;
	check_send_mode(DISK_COPY_WRITE_BLOCKING, "write-blocking", DISK_MIRROR_BUF_ACTIVE);
}

/*
 * The switchover does not wait for the receiver's DONE, but the commit
 * does: a receiver that never confirms, or fails to apply, gets none.
 */
static void test_send_unconfirmed(void **state)
{
	static const enum responder_end ends[] = { END_SILENT, END_ERROR };
	char err[256];

	(void)state;
	for (unsigned i = 0; i < 2; i++) {
		struct responder rp = { .end = ends[i] };
		uint8_t blk[BLOCK];
		struct srig s;
		pthread_t t;
		int r;

		srig_up(&s);
		rp.c = s.c;
		assert_int_equal(pthread_create(&t, NULL, responder_main, &rp), 0);
		fill_block(blk, 7);
		assert_int_equal(nbd_client_pwrite(s.fq.mirror, blk, BLOCK, 0, 0), 0);
		err[0] = '\0';
		if (disk_send_switchover(s.ds, s.q, err, sizeof(err)) < 0)
			fail_msg("switchover: %s", err);
		assert_int_equal(pthread_join(t, NULL), 0);
		assert_true(rp.done);
		r = disk_send_confirmed(s.ds, ends[i] == END_SILENT ? 200 : IO_TIMEOUT_MS, err,
					sizeof(err));
		print_message("# unconfirmed (%s): %s\n", i ? "error" : "silent", err);
		assert_int_equal(r, ends[i] == END_SILENT ? -ETIMEDOUT : -EIO);
		srig_down(&s);
	}
}

static void send_need(struct wire_conn *c, size_t n)
{
	uint8_t (*h)[WIRE_HASH_LEN] = calloc(n, WIRE_HASH_LEN);
	struct tsb_buf b;

	assert_non_null(h);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_need(&b, (const uint8_t (*)[WIRE_HASH_LEN])h, n), 0);
	send_buf(c, &b);
	tsb_buf_fini(&b);
	free(h);
}

static void test_send_hostile_receiver(void **state)
{
	struct srig s;
	struct tsb_buf b;
	char err[256] = "";

	(void)state;
	/* DONE before the sender's: "everything is applied" cannot be true yet. */
	srig_up(&s);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_status(&b, WIRE_MSG_DONE, WIRE_CODE_OK, "applied"), 0);
	send_buf(s.c, &b);
	tsb_buf_fini(&b);
	expect_send_failed(&s, "DONE before the sender");
	assert_true(disk_send_switchover(s.ds, s.q, err, sizeof(err)) < 0);
	srig_down(&s);

	/* An ACK of frames never sent. */
	srig_up(&s);
	send_u64(s.c, WIRE_MSG_ACK, 5);
	expect_send_failed(&s, "acknowledged a frame not sent");
	srig_down(&s);

	/* A NEED larger than a frame. */
	srig_up(&s);
	send_need(s.c, DISK_BATCH + 1);
	expect_send_failed(&s, "more blocks at once");
	srig_down(&s);

	/* What a receiver never sends on the disk channel. */
	srig_up(&s);
	send_u64(s.c, WIRE_MSG_PING, 1);
	expect_send_failed(&s, "the receiver sent PING");
	srig_down(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_in_place, setup, teardown),
		cmocka_unit_test_setup_teardown(test_offset_wrap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_backlog_window, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restore_map_bounded, setup, teardown),
		cmocka_unit_test_setup_teardown(test_export_size_mismatch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_query_block_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_unknown_disk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_accept_strangers, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_copy_flush_waits, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_unconfirmed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_write_blocking_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_background_mode, setup, teardown),
		cmocka_unit_test_setup_teardown(test_send_hostile_receiver, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	if (getenv("TSB_DISK_TRACE"))
		tsb_log_set_level(TSB_LOG_DEBUG);
	else
		tsb_log_set_level(TSB_LOG_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
