/*
 * The source side of the disk route: one NBD server per disk receives
 * the source QEMU's mirror job; its writes become PAGES on the disk
 * channel (docs/disk.md).
 */
#include "disk/disk.h"
#include "disk/internal.h"

#include "common/buf.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "nbd/nbd.h"
#include "qmp/qmp.h"
#include "store/filter.h"
#include "wire/codec.h"
#include "wire/need.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/*
 * The REFs kept to answer NEEDs, in wire order: a NEED names REFs of the
 * oldest frame not acknowledged, and the window holds every REF sent
 * since (at most DISK_WINDOW_REFS).
 */
#define RING_BLOCKS DISK_WINDOW_REFS
#define MAX_FLUSHES 64
/* Connections libvirt's mirrors may open in one migration (reconnects too). */
#define LV_CONNS_MAX (4 * DISK_MAX)
#define BLOCK ((unsigned)WIRE_PAGE_SIZE)

/*
 * Auto copy mode: a background mirror that, once its first pass is done,
 * has not cut what is left by a tenth over CONVERGE_SAMPLES samples
 * (6 s) does not converge: it restarts in write-blocking.
 */
#define CONVERGE_SAMPLE_MS 2000
#define CONVERGE_SAMPLES 4

struct sdisk {
	struct disk_send *ds;
	unsigned idx;
	struct disk_dev dev;
	char sock[256];
	char node[64], job[64];
	struct nbd_server *srv;
	pthread_t th;
	bool th_started, node_added, job_started, job_gone;
	int serve_rc;
	struct wire_pages_builder pb;
	struct wire_zstd *z;
	struct tsb_buf out;
	/*
	 * The REF entries of the batch being built: their hashes and blocks
	 * (in the NBD request being encoded: a batch never outlives it), put in
	 * the ring when the batch goes on the wire.
	 */
	unsigned out_refs;
	uint8_t out_hash[DISK_BATCH][WIRE_HASH_LEN];
	const uint8_t *out_data[DISK_BATCH];
	uint64_t flush_seq;
	/* statistics (server thread only, read after it ends) */
	uint64_t writes, write_bytes, zero_bytes, flushes;
	uint64_t blk_zero, blk_data, blk_ref, blk_small, frames, wan_bytes;
	uint64_t ready_ms;
	/*
	 * The job's copy mode now (auto: background until the mirror stops
	 * converging), and what the convergence check samples: the mirror's
	 * bytes left (len - offset) every CONVERGE_SAMPLE_MS, newest last.
	 */
	enum disk_copy_mode mode;
	uint64_t switched_ms;		/* restarted in write-blocking, 0: never */
	uint64_t job_len, job_offset;	/* the last query-block-jobs */
	uint64_t left[CONVERGE_SAMPLES];
	unsigned n_left;
	bool bulk_done;			/* the first pass over the disk is done */
	/*
	 * Where the server thread's time goes: waiting for the window (the
	 * receiver is behind), writing frames (the link is full) and the
	 * rest, up to mirror_ms, encoding or waiting for QEMU's requests.
	 */
	uint64_t window_ns, send_ns;
};

struct pending_flush {
	uint64_t token;
	struct nbd_io *io;
	struct sdisk *d;
};

struct disk_send {
	struct wire_conn *conn;
	pthread_mutex_t wlock;		/* writes on conn */
	pthread_mutex_t lock;		/* everything below */
	pthread_cond_t cond;
	/*
	 * The window: frames let through (sent_frames), put on the wire
	 * (wire_frames, in the order the receiver applies and ACKs them) and
	 * acknowledged; the bytes and REFs of the unacknowledged ones, and of
	 * each on the wire by its number modulo DISK_WINDOW.
	 */
	uint64_t sent_frames, wire_frames, acked_frames;
	uint64_t unacked_bytes, unacked_refs;
	struct {
		uint32_t bytes, refs;
	} unacked[DISK_WINDOW];
	bool failed, peer_done, reader_started;
	bool sent_done;			/* our DONE is on its way: the receiver's may come */
	/*
	 * The source is stopped for the switchover: flushes complete at once,
	 * without a WAN round trip; the receiver's DONE, which it sends before
	 * PREPARED, covers them.
	 */
	bool switching;
	bool flush_waits;	/* disk_send_options.flush_waits */
	char error[256];
	struct pending_flush flushes[MAX_FLUSHES];
	bool has_filter;
	struct tsb_filter filter;
	bool has_sent;
	struct tsb_filter sent;		/* blocks written to the targets (under lock) */
	uint8_t (*rhash)[WIRE_HASH_LEN];
	uint8_t *rdata;
	size_t rpos, rcount;
	uint64_t need_served;
	pthread_t reader, ka;
	bool ka_started;
	uint64_t last_write_ns;		/* under wlock */
	char dir[80];
	unsigned n;
	struct sdisk d[DISK_MAX];
	uint64_t start_ns, mirror_ms;
	volatile int *abort_flag;
	enum disk_copy_mode copy_mode;
	bool libvirt;			/* libvirt's mirror: no QMP, no jobs of ours */
	/*
	 * libvirt's mirror connects once per disk to one port and names the
	 * disk's export: a dispatcher accepts, each connection gets a server
	 * of its own, which binds to the disk it names (libvirt_select).
	 */
	int lv_lfd;
	pthread_t lv_th;
	bool lv_th_started;
	atomic_bool lv_stop;
	struct lv_conn {
		struct nbd_server *srv;
		pthread_t th;
		int fd;
	} lv_conns[LV_CONNS_MAX];
	unsigned n_lv_conns;		/* under lock */
};

static const uint8_t zero_block[BLOCK];

static void ds_fail(struct disk_send *ds, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void ds_fail(struct disk_send *ds, const char *fmt, ...)
{
	va_list ap;
	unsigned i;

	pthread_mutex_lock(&ds->lock);
	if (!ds->failed) {
		ds->failed = true;
		va_start(ap, fmt);
		vsnprintf(ds->error, sizeof(ds->error), fmt, ap);
		va_end(ap);
		log_debug("disk: %s", ds->error);
	}
	/* Held flushes fail: the mirror job then fails, the source goes on. */
	for (i = 0; i < MAX_FLUSHES; i++) {
		if (ds->flushes[i].io) {
			nbd_server_complete(ds->flushes[i].d->srv, ds->flushes[i].io, -EIO);
			ds->flushes[i].io = NULL;
		}
	}
	pthread_cond_broadcast(&ds->cond);
	pthread_mutex_unlock(&ds->lock);
}

static void ring_put(struct disk_send *ds, const uint8_t *hash, const uint8_t *data)
{
	pthread_mutex_lock(&ds->lock);
	memcpy(ds->rhash[ds->rpos], hash, WIRE_HASH_LEN);
	memcpy(ds->rdata + ds->rpos * (size_t)BLOCK, data, BLOCK);
	ds->rpos = (ds->rpos + 1) % RING_BLOCKS;
	if (ds->rcount < RING_BLOCKS)
		ds->rcount++;
	pthread_mutex_unlock(&ds->lock);
}

/* True when a frame of len bytes with refs REF entries fits in the window (under lock). */
static bool window_open(const struct disk_send *ds, size_t len, unsigned refs)
{
	if (ds->sent_frames == ds->acked_frames)
		return true;	/* alone, any frame goes */
	return ds->sent_frames - ds->acked_frames < DISK_WINDOW &&
	       ds->unacked_bytes + len <= DISK_WINDOW_BYTES &&
	       ds->unacked_refs + refs <= DISK_WINDOW_REFS;
}

/*
 * Writes a frame; PAGES frames (d not NULL: the disk whose server thread
 * writes its batch, with refs REF entries) wait for the window and count
 * in it, and their REFs go into the ring.
 */
static int ds_write(struct disk_send *ds, const struct tsb_buf *b, struct sdisk *d,
		    unsigned refs)
{
	unsigned i;
	uint64_t t0 = tsb_now_ns(), t1;
	int r;

	if (b->err)
		return b->err;
	if (d) {
		pthread_mutex_lock(&ds->lock);
		while (!ds->failed && !window_open(ds, b->len, refs))
			pthread_cond_wait(&ds->cond, &ds->lock);
		r = ds->failed ? -EIO : 0;
		if (r == 0) {
			ds->sent_frames++;
			ds->unacked_bytes += b->len;
			ds->unacked_refs += refs;
		}
		pthread_mutex_unlock(&ds->lock);
		if (r < 0)
			return r;
	}
	t1 = tsb_now_ns();
	pthread_mutex_lock(&ds->wlock);
	if (d) {
		/* Numbered in wire order: ACK n means the first n frames on the wire. */
		pthread_mutex_lock(&ds->lock);
		ds->unacked[ds->wire_frames % DISK_WINDOW].bytes = (uint32_t)b->len;
		ds->unacked[ds->wire_frames % DISK_WINDOW].refs = refs;
		ds->wire_frames++;
		pthread_mutex_unlock(&ds->lock);
		for (i = 0; i < refs && ds->rdata; i++)
			ring_put(ds, d->out_hash[i], d->out_data[i]);
	}
	r = wire_conn_write(ds->conn, b->data, b->len);
	ds->last_write_ns = tsb_now_ns();
	pthread_mutex_unlock(&ds->wlock);
	if (d) {
		d->window_ns += t1 - t0;
		d->send_ns += ds->last_write_ns - t1;
	}
	if (r < 0) {
		ds_fail(ds, "disk channel: %s", wire_conn_errmsg(ds->conn));
		return -EIO;
	}
	return 0;
}

static int flush_batch(struct sdisk *d)
{
	unsigned refs;
	int r;

	if (!d->pb.count)
		return 0;
	tsb_buf_reset(&d->out);
	r = wire_pages_encode(&d->pb, &d->out, d->z);
	wire_pages_builder_reset(&d->pb);
	if (r < 0) {
		d->out_refs = 0;
		ds_fail(d->ds, "encoding a batch: %s", strerror(-r));
		return -EIO;
	}
	d->frames++;
	d->wan_bytes += d->out.len;
	refs = d->out_refs;
	d->out_refs = 0;
	return ds_write(d->ds, &d->out, d, refs);
}

static int use_page_size(struct sdisk *d, uint32_t ps)
{
	int r;

	if (d->pb.page_size == ps)
		return 0;
	r = flush_batch(d);
	if (r < 0)
		return r;
	wire_pages_builder_fini(&d->pb);
	return wire_pages_builder_init(&d->pb, ps);
}

/* Adds one entry through fn, flushing the batch when it is full. */
#define ADD(d, call) ({							\
	int _r = (d)->pb.count >= DISK_BATCH ? flush_batch(d) : 0;	\
	if (_r == 0) {							\
		_r = (call);						\
		if (_r == -ENOBUFS) {					\
			_r = flush_batch(d);				\
			if (_r == 0)					\
				_r = (call);				\
		}							\
	}								\
	_r; })

static int encode_write(struct sdisk *d, uint64_t off, uint32_t len, const uint8_t *data)
{
	struct disk_send *ds = d->ds;
	uint8_t hash[WIRE_HASH_LEN];
	uint32_t done = 0;
	int r = 0;

	while (done < len && r == 0) {
		uint64_t o = off + done;

		if (o % BLOCK == 0 && len - done >= BLOCK) {
			const uint8_t *p = data + done;

			r = use_page_size(d, BLOCK);
			if (r < 0)
				break;
			if (!memcmp(p, zero_block, BLOCK)) {
				r = ADD(d, wire_pages_add_zero(&d->pb, d->idx, 0, o, 0));
				d->blk_zero++;
				done += BLOCK;
				continue;
			}
			if (wire_sha256(p, BLOCK, hash) < 0) {
				r = -EIO;
				break;
			}
			if (ds->has_sent) {
				pthread_mutex_lock(&ds->lock);
				tsb_filter_add(&ds->sent, hash);
				pthread_mutex_unlock(&ds->lock);
			}
			if (ds->has_filter && tsb_filter_maybe(&ds->filter, hash)) {
				r = ADD(d, wire_pages_add_ref(&d->pb, d->idx, 0, o,
							      WIRE_ENC_REF, hash));
				if (r == 0) {
					/* In the batch ADD left it in (it may have sent the last). */
					memcpy(d->out_hash[d->out_refs], hash, WIRE_HASH_LEN);
					d->out_data[d->out_refs++] = p;
				}
				d->blk_ref++;
			} else {
				r = ADD(d, wire_pages_add_data(&d->pb, d->idx, 0, o, p));
				d->blk_data++;
			}
			done += BLOCK;
		} else if (o % WIRE_MIN_PAGE_SIZE == 0 && len - done >= WIRE_MIN_PAGE_SIZE) {
			r = use_page_size(d, WIRE_MIN_PAGE_SIZE);
			if (r == 0)
				r = ADD(d, wire_pages_add_data(&d->pb, d->idx, 0, o, data + done));
			d->blk_small++;
			done += WIRE_MIN_PAGE_SIZE;
		} else {
			return -EINVAL;	/* not sector aligned: QEMU never does this */
		}
	}
	if (r == 0)
		r = flush_batch(d);
	return r < 0 ? -EIO : 0;
}

static int encode_zero(struct sdisk *d, uint64_t off, uint32_t len)
{
	static const uint32_t sizes[] = { WIRE_MAX_PAGE_SIZE, BLOCK, WIRE_MIN_PAGE_SIZE };
	uint32_t done = 0;
	int r = 0;

	while (done < len && r == 0) {
		uint64_t o = off + done;
		uint32_t ps = 0;
		size_t i;

		for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
			if (o % sizes[i] == 0 && len - done >= sizes[i]) {
				ps = sizes[i];
				break;
			}
		}
		if (!ps)
			return -EINVAL;
		r = use_page_size(d, ps);
		if (r == 0)
			r = ADD(d, wire_pages_add_zero(&d->pb, d->idx, 0, o, 0));
		d->blk_zero += ps >= BLOCK ? ps / BLOCK : 1;
		done += ps;
	}
	if (r == 0)
		r = flush_batch(d);
	return r < 0 ? -EIO : 0;
}

/* Sends a flush marker (PING token): the receiver flushes, then answers PONG token. */
static int send_flush_marker(struct sdisk *d, uint64_t token)
{
	struct tsb_buf b;
	int r;

	d->flushes++;
	tsb_buf_init(&b);
	wire_encode_u64(&b, WIRE_MSG_PING, token);
	r = ds_write(d->ds, &b, NULL, 0);
	tsb_buf_fini(&b);
	return r;
}

/*
 * A flush (or FUA write) of the mirror: io completes when the receiver
 * answers its marker, or at once where nothing waits for that (see
 * disk_send_options.flush_waits; and once the source stopped for the
 * switchover, whose DONE covers every write).
 */
static int start_flush(struct sdisk *d, struct nbd_io *io)
{
	struct disk_send *ds = d->ds;
	uint64_t token = ((uint64_t)d->idx << 48) | ++d->flush_seq;
	bool switching, waits;
	unsigned i;

	pthread_mutex_lock(&ds->lock);
	switching = ds->switching;
	waits = ds->flush_waits && !switching;
	for (i = 0; waits && i < MAX_FLUSHES && ds->flushes[i].io; i++)
		;
	if (ds->failed || (waits && i == MAX_FLUSHES)) {
		pthread_mutex_unlock(&ds->lock);
		return -EIO;
	}
	if (waits) {
		ds->flushes[i].token = token;
		ds->flushes[i].io = io;
		ds->flushes[i].d = d;
	}
	pthread_mutex_unlock(&ds->lock);
	if (switching) {
		d->flushes++;
		return 0;
	}
	if (!waits)
		return send_flush_marker(d, token) < 0 ? -EIO : 0;
	/* Even on failure: ds_fail() completed the held io (with EIO). */
	(void)send_flush_marker(d, token);
	return NBD_IO_ASYNC;
}

static int cb_size(void *user, uint64_t *ret)
{
	*ret = ((struct sdisk *)user)->dev.size;
	return 0;
}

static int cb_read(void *user, struct nbd_io *io)
{
	(void)user;
	(void)io;
	return -EIO;	/* the target is far away; a mirror never reads it */
}

static int cb_write(void *user, struct nbd_io *io)
{
	struct sdisk *d = user;
	int r;

	d->writes++;
	d->write_bytes += io->length;
	r = encode_write(d, io->offset, io->length, io->data);
	if (r == 0 && (io->flags & NBD_CMD_FLAG_FUA))
		return start_flush(d, io);
	return r;
}

static int cb_write_zeroes(void *user, struct nbd_io *io)
{
	struct sdisk *d = user;
	int r;

	d->zero_bytes += io->length;
	r = encode_zero(d, io->offset, io->length);
	if (r == 0 && (io->flags & NBD_CMD_FLAG_FUA))
		return start_flush(d, io);
	return r;
}

static int cb_flush(void *user, struct nbd_io *io)
{
	return start_flush(user, io);
}

static const struct nbd_export_ops export_ops = {
	.size = cb_size,
	.read = cb_read,
	.write = cb_write,
	.write_zeroes = cb_write_zeroes,
	.flush = cb_flush,
};

static void *serve_thread(void *arg)
{
	struct sdisk *d = arg;

	d->serve_rc = nbd_server_serve(d->srv);
	if (d->serve_rc < 0 && d->serve_rc != -ECANCELED)
		log_debug("disk %s: nbd: %s", d->dev.device, nbd_server_error(d->srv));
	return NULL;
}

static void complete_flush(struct disk_send *ds, uint64_t token)
{
	unsigned i;

	pthread_mutex_lock(&ds->lock);
	for (i = 0; i < MAX_FLUSHES; i++) {
		if (ds->flushes[i].io && ds->flushes[i].token == token) {
			nbd_server_complete(ds->flushes[i].d->srv, ds->flushes[i].io, 0);
			ds->flushes[i].io = NULL;
			break;
		}
	}
	pthread_mutex_unlock(&ds->lock);
}

/* A block a NEED asks for: one the last REFs named (rhash/rdata). */
static int need_lookup(void *opaque, const uint8_t *hash, uint8_t *out)
{
	struct disk_send *ds = opaque;
	int r = -ENOENT;
	size_t j;

	pthread_mutex_lock(&ds->lock);
	for (j = 0; j < ds->rcount; j++)
		if (!memcmp(ds->rhash[j], hash, WIRE_HASH_LEN)) {
			memcpy(out, ds->rdata + j * (size_t)BLOCK, BLOCK);
			r = 0;
			break;
		}
	pthread_mutex_unlock(&ds->lock);
	return r;
}

static int serve_need(struct disk_send *ds, const struct wire_need *need)
{
	struct wire_zstd *z;
	struct tsb_buf b;
	int r;

	/* A receiver asks for the REFs of one frame at a time. */
	if (need->count > DISK_BATCH)
		return -EMSGSIZE;
	z = wire_zstd_new(3);
	if (!z)
		return -ENOMEM;
	tsb_buf_init(&b);
	r = wire_need_answer(need, BLOCK, need_lookup, ds, z, &b);
	if (r == 0) {
		r = ds_write(ds, &b, NULL, 0);
		ds->need_served += need->count;
	}
	tsb_buf_fini(&b);
	wire_zstd_free(z);
	return r;
}

/* A receiver that broke the protocol: tell it, and fail (held flushes fail too). */
static void refuse(struct disk_send *ds, const char *why)
{
	ds_fail(ds, "disk channel: %s", why);
	pthread_mutex_lock(&ds->wlock);
	(void)wire_conn_send_status(ds->conn, WIRE_MSG_ERROR, WIRE_CODE_PROTOCOL, why);
	pthread_mutex_unlock(&ds->wlock);
}

static void *reader_thread(void *arg)
{
	struct disk_send *ds = arg;
	struct wire_msg m;
	char why[128];
	bool bad;
	int r;

	for (;;) {
		r = wire_conn_read_msg(ds->conn, WIRE_ROLE_RECEIVER, &m);
		if (r <= 0) {
			pthread_mutex_lock(&ds->lock);
			bool done = ds->peer_done;
			pthread_mutex_unlock(&ds->lock);
			if (!done)
				ds_fail(ds, "disk channel lost: %s",
					r < 0 ? wire_conn_errmsg(ds->conn) : "closed by the receiver");
			return NULL;
		}
		switch (m.type) {
		case WIRE_MSG_ACK:
			pthread_mutex_lock(&ds->lock);
			bad = m.u.ack > ds->wire_frames;
			for (; !bad && ds->acked_frames < m.u.ack; ds->acked_frames++) {
				ds->unacked_bytes -= ds->unacked[ds->acked_frames % DISK_WINDOW].bytes;
				ds->unacked_refs -= ds->unacked[ds->acked_frames % DISK_WINDOW].refs;
			}
			pthread_cond_broadcast(&ds->cond);
			pthread_mutex_unlock(&ds->lock);
			if (bad) {
				refuse(ds, "the receiver acknowledged a frame not sent yet");
				return NULL;
			}
			break;
		case WIRE_MSG_PONG:
			complete_flush(ds, m.u.ping);
			break;
		case WIRE_MSG_NEED:
			r = serve_need(ds, &m.u.need);
			if (r == -EMSGSIZE) {
				refuse(ds, "the receiver needs more blocks at once than a frame holds");
				return NULL;
			}
			if (r < 0) {
				pthread_mutex_lock(&ds->wlock);
				wire_conn_send_status(ds->conn, WIRE_MSG_ERROR, WIRE_CODE_NOT_FOUND,
						      "a needed disk block is no longer held");
				pthread_mutex_unlock(&ds->wlock);
				ds_fail(ds, "the receiver needs a block the sender no longer holds");
				return NULL;
			}
			break;
		case WIRE_MSG_DONE:
			/* All applied: only meaningful once we said there is no more. */
			pthread_mutex_lock(&ds->lock);
			bad = !ds->sent_done;
			if (!bad)
				ds->peer_done = true;
			pthread_cond_broadcast(&ds->cond);
			pthread_mutex_unlock(&ds->lock);
			if (bad) {
				refuse(ds, "the receiver said DONE before the sender did");
				return NULL;
			}
			break;
		case WIRE_MSG_ERROR:
		case WIRE_MSG_CANCEL:
			ds_fail(ds, "the receiver stopped the disk transfer: %.*s",
				(int)m.u.status.text.len, m.u.status.text.p);
			return NULL;
		default:
			snprintf(why, sizeof(why), "the receiver sent %s on the disk channel",
				 wire_msg_name(m.type));
			refuse(ds, why);
			return NULL;
		}
	}
}

/*
 * An idle disk channel (no guest writes while memory moves) still carries
 * a PING every few seconds, so that both ends' stall timeouts only fire
 * on a dead link. Keepalive tokens have bit 63 set.
 */
static void *keepalive_thread(void *arg)
{
	struct disk_send *ds = arg;
	uint64_t n = 0, last;
	struct tsb_buf b;

	tsb_buf_init(&b);
	for (;;) {
		pthread_mutex_lock(&ds->lock);
		bool stop = ds->failed || ds->peer_done;
		pthread_mutex_unlock(&ds->lock);
		if (stop)
			break;
		pthread_mutex_lock(&ds->wlock);
		last = ds->last_write_ns;
		pthread_mutex_unlock(&ds->wlock);
		if (tsb_now_ns() - last > DISK_KEEPALIVE_MS * 1000000ull) {
			tsb_buf_reset(&b);
			wire_encode_u64(&b, WIRE_MSG_PING, DISK_TOKEN_KEEPALIVE | ++n);
			if (ds_write(ds, &b, NULL, 0) < 0)
				break;
		}
		usleep(200000);
	}
	tsb_buf_fini(&b);
	return NULL;
}

/*
 * One connection, TLS and HELLO: 0, 1 when the peer is not the disk
 * channel's acceptor, or -errno.
 */
static int open_channel(struct disk_send *ds, const struct disk_send_options *o,
			char *err, size_t errlen)
{
	struct wire_hello_args hello = { 0 };
	struct wire_hello peer;
	int fd, r;

	r = wire_tcp_connect(o->host, o->port, 10000, &fd, err, errlen);
	if (r < 0)
		return r;
	wire_tcp_tune(fd, 0);
	ds->conn = wire_conn_new_take(o->tls, fd);
	if (!ds->conn)
		return -ENOMEM;
	wire_conn_set_timeout(ds->conn, 30000);
	r = wire_conn_handshake(ds->conn, 15000);
	if (r == 0) {
		hello.role = WIRE_ROLE_SENDER;
		hello.caps = WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK | WIRE_CAP_DISK;
		hello.site = "source";
		hello.migration = o->migration;
		r = wire_conn_hello(ds->conn, &hello, &peer);
	}
	if (r == 0 && !(peer.caps & WIRE_CAP_DISK)) {
		snprintf(err, errlen, "the receiver does not take disks");
		return 1;
	}
	if (r < 0)
		snprintf(err, errlen, "disk channel: %s", wire_conn_errmsg(ds->conn));
	return r;
}

/* Connects the disk channel and agrees on the disks. */
static int connect_channel(struct disk_send *ds, const struct disk_send_options *o,
			   char *err, size_t errlen)
{
	struct wire_block blocks[DISK_MAX];
	struct wire_msg m;
	struct tsb_buf b;
	unsigned i;
	int r;

	/*
	 * A receiver's HELLO without DISK: its main connection's acceptor,
	 * still busy on a loaded host when we came (a sender without a store
	 * connects at once), took us. Its disk acceptor takes over a moment
	 * later on the same port; an old receiver never does.
	 */
	for (i = 0; (r = open_channel(ds, o, err, errlen)) == 1 && i < 4; i++) {
		wire_conn_free(ds->conn);
		ds->conn = NULL;
		usleep(50000u << i);
	}
	if (r == 1)
		return -EPROTO;
	if (r < 0)
		return r;
	/* The receiver's view: a filter of the disk blocks it holds. */
	r = wire_conn_read_msg(ds->conn, WIRE_ROLE_RECEIVER, &m);
	if (r <= 0)
		goto conn_err;
	if (m.type != WIRE_MSG_SUMMARY) {
		snprintf(err, errlen, "disk channel: expected SUMMARY, got %s",
			 wire_msg_name(m.type));
		return -EPROTO;
	}
	for (i = 0; i < m.u.summary.n_filters && !ds->has_filter; i++) {
		if (m.u.summary.filters[i].source != WIRE_SRC_DISK)
			continue;
		if (tsb_filter_parse(&ds->filter, m.u.summary.filters[i].data,
				     m.u.summary.filters[i].len) == 0)
			ds->has_filter = true;
	}
	if (ds->has_filter) {
		ds->rhash = calloc(RING_BLOCKS, WIRE_HASH_LEN);
		ds->rdata = malloc((size_t)RING_BLOCKS * BLOCK);
		if (!ds->rhash || !ds->rdata)
			return -ENOMEM;
	}
	for (i = 0; i < ds->n; i++) {
		blocks[i].index = (uint16_t)i;
		blocks[i].name.p = ds->d[i].dev.device;
		blocks[i].name.len = strlen(ds->d[i].dev.device);
		blocks[i].used_length = ds->d[i].dev.size;
	}
	tsb_buf_init(&b);
	r = wire_encode_blocks(&b, blocks, ds->n);
	if (r == 0)
		r = wire_encode_u64(&b, WIRE_MSG_PING, 0);
	if (r == 0)
		r = wire_conn_write(ds->conn, b.data, b.len);
	tsb_buf_fini(&b);
	if (r < 0)
		goto conn_err;
	/* PONG 0: the receiver has every target open. */
	r = wire_conn_read_msg(ds->conn, WIRE_ROLE_RECEIVER, &m);
	if (r <= 0)
		goto conn_err;
	if (m.type == WIRE_MSG_ERROR || m.type == WIRE_MSG_CANCEL) {
		snprintf(err, errlen, "the receiver refused the disks: %.*s",
			 (int)m.u.status.text.len, m.u.status.text.p);
		return -ECONNREFUSED;
	}
	if (m.type != WIRE_MSG_PONG || m.u.ping != 0) {
		snprintf(err, errlen, "disk channel: unexpected %s", wire_msg_name(m.type));
		return -EPROTO;
	}
	wire_conn_set_timeout(ds->conn, o->stall_ms ? (int)o->stall_ms : -1);
	return 0;
conn_err:
	snprintf(err, errlen, "disk channel: %s",
		 r == 0 ? "closed by the receiver" : wire_conn_errmsg(ds->conn));
	return r == 0 ? -ECONNRESET : r;
}

/* Our jobs in query-block-jobs: *ret_ready counts ready ones, *ret_gone vanished ones. */
static int poll_jobs(struct disk_send *ds, struct qmp *q, unsigned *ret_ready,
		     unsigned *ret_gone, char *err, size_t errlen)
{
	json_t *res = NULL, *e;
	unsigned i, ready = 0, gone = 0;
	size_t k;
	int r;

	r = disk_qmp(q, "query-block-jobs", NULL, &res, err, errlen);
	if (r < 0)
		return r;
	for (i = 0; i < ds->n; i++) {
		struct sdisk *d = &ds->d[i];
		bool found = false;

		if (!d->job_started || d->job_gone) {
			gone += d->job_started;
			continue;
		}
		json_array_foreach(res, k, e) {
			const char *id = json_string_value(json_object_get(e, "device"));

			if (!id || strcmp(id, d->job))
				continue;
			found = true;
			d->job_len = (uint64_t)json_integer_value(json_object_get(e, "len"));
			d->job_offset = (uint64_t)json_integer_value(json_object_get(e, "offset"));
			if (json_is_true(json_object_get(e, "ready"))) {
				ready++;
				if (!d->ready_ms)
					d->ready_ms = (tsb_now_ns() - ds->start_ns) / 1000000;
			}
		}
		if (!found) {
			d->job_gone = true;
			gone++;
		}
	}
	json_decref(res);
	*ret_ready = ready;
	*ret_gone = gone;
	return 0;
}

bool disk_send_has(struct disk_send *ds, const uint8_t hash[32])
{
	bool r;

	if (!ds || !ds->has_sent)
		return false;
	pthread_mutex_lock(&ds->lock);
	r = tsb_filter_maybe(&ds->sent, hash);
	pthread_mutex_unlock(&ds->lock);
	return r;
}

bool disk_send_failed(struct disk_send *ds, char *err, size_t errlen)
{
	bool f;

	if (!ds)
		return false;
	pthread_mutex_lock(&ds->lock);
	f = ds->failed;
	if (f && err)
		snprintf(err, errlen, "%s", ds->error);
	pthread_mutex_unlock(&ds->lock);
	return f;
}

static bool wanted(const struct disk_send_options *o, const struct disk_dev *d)
{
	unsigned i;

	if (!o->n_only)
		return true;
	for (i = 0; i < o->n_only; i++)
		if (!strcmp(o->only[i], d->device) || !strcmp(o->only[i], d->node) ||
		    (d->qdev[0] && !strcmp(o->only[i], d->qdev)))
			return true;
	return false;
}

/*
 * disk_send_start in phases: choose the disks, set up their encoders,
 * connect the channel and start its threads, start one NBD server and
 * mirror job per disk, then wait for the bulk copy.
 */

static struct disk_send *ds_new(const struct disk_send_options *o)
{
	struct disk_send *ds = calloc(1, sizeof(*ds));

	if (!ds)
		return NULL;
	pthread_mutex_init(&ds->lock, NULL);
	pthread_mutex_init(&ds->wlock, NULL);
	pthread_cond_init(&ds->cond, NULL);
	ds->abort_flag = o->abort_flag;
	ds->copy_mode = o->copy_mode;
	ds->flush_waits = o->flush_waits || o->nbd_listen;
	ds->start_ns = tsb_now_ns();
	return ds;
}

/* The disks of devs[0..n) that o wants; every --disk must name one of them. */
static int choose_disks(struct disk_send *ds, const struct disk_send_options *o,
			const struct disk_dev *devs, unsigned n, char *err, size_t errlen)
{
	unsigned i, k;

	for (i = 0; i < n; i++) {
		if (!wanted(o, &devs[i]))
			continue;
		ds->d[ds->n].dev = devs[i];
		ds->d[ds->n].ds = ds;
		ds->d[ds->n].idx = ds->n;
		ds->n++;
	}
	for (k = 0; k < o->n_only; k++) {
		for (i = 0; i < ds->n; i++)
			if (wanted(&(struct disk_send_options){ .only = { o->only[k] }, .n_only = 1 },
				   &ds->d[i].dev))
				break;
		if (i == ds->n) {
			snprintf(err, errlen, "--disk %s: no such writable disk in the source VM",
				 o->only[k]);
			return -ENOENT;
		}
	}
	return 0;
}

/* Each disk's PAGES builder and compressor, and the filter of blocks sent. */
static int init_encoders(struct disk_send *ds, char *err, size_t errlen)
{
	uint64_t blocks = 0;
	unsigned i;

	for (i = 0; i < ds->n; i++) {
		struct sdisk *d = &ds->d[i];

		if (wire_pages_builder_init(&d->pb, BLOCK) < 0 || !(d->z = wire_zstd_new(3))) {
			snprintf(err, errlen, "out of memory");
			return -ENOMEM;
		}
		tsb_buf_init(&d->out);
	}
	for (i = 0; i < ds->n; i++)
		blocks += ds->d[i].dev.size / BLOCK;
	ds->has_sent = tsb_filter_init(&ds->sent, blocks ? blocks : 1) == 0;
	return 0;
}

/* Connects the disk channel, then starts its reader and its keepalive. */
static int start_channel(struct disk_send *ds, const struct disk_send_options *o,
			 char *err, size_t errlen)
{
	int r;

	r = connect_channel(ds, o, err, errlen);
	if (r < 0)
		return r;
	if (tsb_thread_create(&ds->reader, reader_thread, ds)) {
		snprintf(err, errlen, "cannot start a thread");
		return -EAGAIN;
	}
	ds->reader_started = true;
	ds->last_write_ns = tsb_now_ns();
	if (tsb_thread_create(&ds->ka, keepalive_thread, ds)) {
		snprintf(err, errlen, "cannot start a thread");
		return -EAGAIN;
	}
	ds->ka_started = true;
	return 0;
}

/* Starts disk i's mirror job in its copy mode (d->mode). */
static int start_job(struct qmp *q, struct sdisk *d, char *err, size_t errlen)
{
	json_t *args;
	int r;

	/* copy-mode (QEMU 3.0+): write-blocking paces the guest to the link. */
	args = json_pack("{s:s, s:s, s:s, s:s, s:s}", "job-id", d->job, "device", d->dev.node,
			 "target", d->node, "sync", "full", "copy-mode", disk_copy_mode_name(d->mode));
	/*
	 * A guest write reaches our server behind the bulk copy's requests,
	 * each of which waits for the window: keep few of them in flight
	 * (docs/disk.md, "Copy mode").
	 */
	if (args && d->mode == DISK_COPY_WRITE_BLOCKING)
		json_object_set_new(args, "buf-size", json_integer(DISK_MIRROR_BUF_ACTIVE));
	r = disk_qmp(q, "blockdev-mirror", args, NULL, err, errlen);
	if (r < 0)
		return r;
	d->job_started = true;
	d->job_gone = false;
	return 0;
}

/*
 * Disk i: our NBD server on a unix socket in ds->dir and its thread, the
 * source QEMU's NBD client node on it, and the mirror job into that node.
 * Each step is flagged as it succeeds, for disk_send_finish to undo.
 */
static int start_mirror(struct disk_send *ds, struct qmp *q, unsigned i, char *err,
			size_t errlen)
{
	static const struct nbd_server_config cfg = { .export_name = "disk" };
	struct sdisk *d = &ds->d[i];
	int r;

	snprintf(d->sock, sizeof(d->sock), "%s/d%u.sock", ds->dir, i);
	snprintf(d->node, sizeof(d->node), "tsb-target-%u", i);
	snprintf(d->job, sizeof(d->job), "tsb-mirror-%u", i);
	d->srv = nbd_server_new(&cfg, &export_ops, d);
	if (!d->srv) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r = nbd_server_listen_unix(d->srv, d->sock);
	if (r < 0) {
		snprintf(err, errlen, "cannot listen on %s: %s", d->sock, strerror(-r));
		return r;
	}
	if (tsb_thread_create(&d->th, serve_thread, d)) {
		snprintf(err, errlen, "cannot start a thread");
		return -EAGAIN;
	}
	d->th_started = true;
	r = disk_qmp(q, "blockdev-add",
		     json_pack("{s:s, s:s, s:{s:s, s:s}, s:s}", "driver", "nbd",
			       "node-name", d->node, "server", "type", "unix",
			       "path", d->sock, "export", "disk"), NULL, err, errlen);
	if (r < 0)
		return r;
	d->node_added = true;
	d->mode = ds->copy_mode == DISK_COPY_WRITE_BLOCKING ? DISK_COPY_WRITE_BLOCKING
							     : DISK_COPY_BACKGROUND;
	return start_job(q, d, err, errlen);
}

/* Waits (bounded) until disk d's cancelled job has left QEMU's list. */
static int wait_job_gone(struct disk_send *ds, struct qmp *q, struct sdisk *d, char *err,
			 size_t errlen)
{
	unsigned ready, gone;
	int r;

	for (int i = 0; i < 1500; i++) {
		r = poll_jobs(ds, q, &ready, &gone, err, errlen);
		if (r < 0)
			return r;
		if (d->job_gone)
			return 0;
		usleep(20000);
	}
	snprintf(err, errlen, "the mirror of %s did not end after block-job-cancel",
		 d->dev.device);
	return -ETIMEDOUT;
}

/*
 * Auto copy mode, every CONVERGE_SAMPLE_MS: a background mirror whose
 * first pass is done and that cut what it has left by less than a tenth
 * over the last samples is restarted in write-blocking. The new job
 * copies the whole disk again, but what the target already holds goes as
 * REFs that the receiver finds in place. 0 or -errno.
 */
static int check_converging(struct disk_send *ds, struct qmp *q, struct sdisk *d,
			    char *err, size_t errlen)
{
	uint64_t left = d->job_len > d->job_offset ? d->job_len - d->job_offset : 0;
	uint64_t oldest;
	int r;

	if (ds->copy_mode != DISK_COPY_AUTO || d->mode != DISK_COPY_BACKGROUND || d->ready_ms ||
	    !d->job_started || d->job_gone)
		return 0;
	if (d->job_offset >= d->dev.size)
		d->bulk_done = true;
	if (d->n_left == CONVERGE_SAMPLES) {
		memmove(d->left, d->left + 1, (CONVERGE_SAMPLES - 1) * sizeof(d->left[0]));
		d->n_left--;
	}
	d->left[d->n_left++] = left;
	oldest = d->left[0];
	if (!d->bulk_done || d->n_left < CONVERGE_SAMPLES || left < oldest / 10 * 9)
		return 0;
	log_notice("disks: %s: the guest writes faster than its mirror copies (%.1f MB left, "
		   "%.1f MB %u s before): mirroring its writes as they happen (write-blocking) "
		   "from now on", d->dev.device, left / 1e6, oldest / 1e6,
		   (CONVERGE_SAMPLES - 1) * CONVERGE_SAMPLE_MS / 1000);
	r = disk_qmp(q, "block-job-cancel", json_pack("{s:s}", "device", d->job), NULL, err,
		     errlen);
	if (r == 0)
		r = wait_job_gone(ds, q, d, err, errlen);
	if (r < 0)
		return r;
	d->mode = DISK_COPY_WRITE_BLOCKING;
	d->switched_ms = (tsb_now_ns() - ds->start_ns) / 1000000;
	d->n_left = 0;
	return start_job(q, d, err, errlen);
}

/* The bulk copy: every mirror must be ready before memory moves. */
static int wait_mirrors_ready(struct disk_send *ds, struct qmp *q,
			      const struct disk_send_options *o, char *err, size_t errlen)
{
	uint64_t last_sample = tsb_now_ns();
	unsigned ready, gone;
	int r;

	for (uint64_t last_ka = tsb_now_ns();;) {
		char why[256];

		if (o->keepalive && tsb_now_ns() - last_ka > 5000000000ull) {
			o->keepalive(o->keepalive_opaque);
			last_ka = tsb_now_ns();
		}

		if (disk_send_failed(ds, why, sizeof(why))) {
			snprintf(err, errlen, "%s", why);
			return -ECONNRESET;
		}
		r = poll_jobs(ds, q, &ready, &gone, err, errlen);
		if (r < 0)
			return r;
		if (gone) {
			/* A job that failed because the channel did: the link or the peer. */
			if (disk_send_failed(ds, err, errlen))
				return -ECONNRESET;
			snprintf(err, errlen, "a mirror job ended before it was ready");
			return -EIO;
		}
		if (ready == ds->n)
			return 0;
		if (tsb_now_ns() - last_sample >= CONVERGE_SAMPLE_MS * 1000000ull) {
			last_sample = tsb_now_ns();
			for (unsigned i = 0; i < ds->n; i++) {
				r = check_converging(ds, q, &ds->d[i], err, errlen);
				if (r < 0)
					return r;
			}
		}
		if (o->abort_flag && *o->abort_flag) {
			snprintf(err, errlen, "interrupted");
			return -ECANCELED;
		}
		if (o->ready_timeout_ms &&
		    (tsb_now_ns() - ds->start_ns) / 1000000 > o->ready_timeout_ms) {
			snprintf(err, errlen, "the disk mirrors did not converge in time");
			return -ETIMEDOUT;
		}
		/*
		 * Memory moves only once every mirror is ready: a coarse poll
		 * adds its half period to the whole migration (one
		 * query-block-jobs every 20 ms costs QEMU next to nothing).
		 */
		usleep(20000);
	}
}

/* A connection of libvirt's mirror names its disk's export: bind the two. */
static int libvirt_select(void *opaque, struct nbd_server *srv, const char *name, uint32_t len,
			  void **ret_user, uint64_t *ret_size)
{
	struct disk_send *ds = opaque;
	unsigned i;

	for (i = 0; i < ds->n; i++) {
		struct sdisk *d = &ds->d[i];

		if (strlen(d->dev.device) != len || memcmp(d->dev.device, name, len))
			continue;
		pthread_mutex_lock(&ds->lock);
		d->srv = srv;	/* its flushes complete on this connection */
		pthread_mutex_unlock(&ds->lock);
		*ret_user = d;
		*ret_size = d->dev.size;
		return 0;
	}
	return -ENOENT;
}

static void *lv_conn_thread(void *arg)
{
	struct lv_conn *c = arg;
	int r = nbd_server_serve_fd(c->srv, c->fd);

	if (r < 0 && r != -ECANCELED)
		log_debug("disks: libvirt's mirror connection: %s", nbd_server_error(c->srv));
	return NULL;
}

/* Accepts libvirt's mirror connections until disk_send_finish(). */
static void *lv_dispatch_thread(void *arg)
{
	struct disk_send *ds = arg;
	const struct nbd_server_config cfg = { .select = libvirt_select, .select_opaque = ds };
	struct pollfd p = { .fd = ds->lv_lfd, .events = POLLIN };
	struct lv_conn *c;
	int fd;

	while (!ds->lv_stop && !disk_send_failed(ds, NULL, 0)) {
		if (poll(&p, 1, 200) <= 0 || wire_tcp_accept(ds->lv_lfd, &fd) < 0)
			continue;
		pthread_mutex_lock(&ds->lock);
		c = ds->n_lv_conns < LV_CONNS_MAX ? &ds->lv_conns[ds->n_lv_conns] : NULL;
		if (c && (c->srv = nbd_server_new(&cfg, &export_ops, NULL)) != NULL) {
			c->fd = fd;
			if (tsb_thread_create(&c->th, lv_conn_thread, c) == 0) {
				ds->n_lv_conns++;
				fd = -1;
			} else {
				nbd_server_free(c->srv);
			}
		}
		pthread_mutex_unlock(&ds->lock);
		if (fd >= 0) {
			log_warn("disks: refused a connection of libvirt's mirror (too many)");
			close(fd);
		}
	}
	return NULL;
}

/* Stops libvirt's mirror connections and the dispatcher; frees them. */
static void lv_stop_all(struct disk_send *ds)
{
	unsigned i;

	ds->lv_stop = true;
	if (ds->lv_th_started)
		pthread_join(ds->lv_th, NULL);
	ds->lv_th_started = false;
	for (i = 0; i < ds->n_lv_conns; i++)
		nbd_server_stop(ds->lv_conns[i].srv);
	for (i = 0; i < ds->n_lv_conns; i++) {
		pthread_join(ds->lv_conns[i].th, NULL);
		nbd_server_free(ds->lv_conns[i].srv);
	}
	ds->n_lv_conns = 0;
	for (i = 0; i < ds->n; i++)
		ds->d[i].srv = NULL;	/* was one of those */
	pthread_mutex_lock(&ds->lock);
	if (ds->lv_lfd >= 0)
		close(ds->lv_lfd);
	ds->lv_lfd = -1;
	pthread_mutex_unlock(&ds->lock);
}

void disk_send_abort(struct disk_send *ds, const char *why)
{
	if (!ds)
		return;
	/*
	 * From here every request of libvirt's mirrors is answered with an
	 * error (held flushes too), so their jobs fail at once and libvirt's
	 * cancel finds nothing in flight. Their connections stay open until
	 * disk_send_finish(): a closed one makes QEMU's NBD client reconnect
	 * to our port in the background, and a connection it makes there
	 * must not hang its next request. No new one can: we stop listening.
	 */
	ds_fail(ds, "%s", why);
	pthread_mutex_lock(&ds->lock);
	if (ds->lv_lfd >= 0)
		(void)shutdown(ds->lv_lfd, SHUT_RDWR); /* Linux: no longer listening */
	pthread_mutex_unlock(&ds->lock);
}

/* libvirt: the disks given, and our NBD port for its mirror on nbd_listen. */
static int start_libvirt(const struct disk_send_options *o, struct disk_send **ret, char *err,
			 size_t errlen)
{
	struct disk_send *ds;
	char host[256], port[32];
	struct sdisk *d;
	int r;

	if (tsb_split_hostport(o->nbd_listen, host, sizeof(host), port, sizeof(port)) < 0) {
		snprintf(err, errlen, "bad NBD endpoint '%s'", o->nbd_listen);
		return -EINVAL;
	}
	ds = ds_new(o);
	if (!ds) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	ds->libvirt = true;
	ds->lv_lfd = -1;
	for (; ds->n < o->n_given && ds->n < DISK_MAX; ds->n++) {
		d = &ds->d[ds->n];
		d->ds = ds;
		d->idx = ds->n;
		snprintf(d->dev.device, sizeof(d->dev.device), "%s", o->given_names[ds->n]);
		snprintf(d->dev.file, sizeof(d->dev.file), "%s", o->given_files[ds->n]);
		d->dev.size = o->given_sizes[ds->n];
	}
	r = init_encoders(ds, err, errlen);
	if (r == 0)
		r = start_channel(ds, o, err, errlen);
	if (r == 0) {
		r = wire_tcp_listen(host, port, 16, &ds->lv_lfd);
		if (r < 0)
			snprintf(err, errlen, "cannot listen for libvirt's mirror on %s: %s",
				 o->nbd_listen, strerror(-r));
	}
	if (r == 0) {
		if (tsb_thread_create(&ds->lv_th, lv_dispatch_thread, ds))
			r = -EAGAIN;
		else
			ds->lv_th_started = true;
	}
	if (r < 0) {
		disk_send_finish(ds, NULL, NULL);
		return r;
	}
	log_info("disks: libvirt's mirror of %u disk(s) goes through %s", ds->n, o->nbd_listen);
	*ret = ds;
	return 0;
}

/*
 * Ready means applied at the destination: memory moves only after the
 * disks' bulk (the page-cache restore finds it there), and the backlog of
 * the window does not wait for the switchover. A mirror whose flushes
 * wait (flush_waits) got that from its flush before it turned ready.
 */
static int wait_applied(struct disk_send *ds, const struct disk_send_options *o, char *err,
			size_t errlen)
{
	uint64_t t0 = tsb_now_ns(), acked = 0, target, beat = t0;
	struct timespec until;
	int r = 0;

	pthread_mutex_lock(&ds->lock);
	/* What was sent by now: a guest that keeps writing adds more all along. */
	target = ds->wire_frames;
	while (!ds->failed && ds->acked_frames < target) {
		if (o->keepalive && tsb_now_ns() - beat > 5000000000ull) {
			beat = tsb_now_ns();
			pthread_mutex_unlock(&ds->lock);
			o->keepalive(o->keepalive_opaque);
			pthread_mutex_lock(&ds->lock);
		}
		if (o->abort_flag && *o->abort_flag) {
			r = -EINTR;
			snprintf(err, errlen, "interrupted");
			break;
		}
		if (ds->acked_frames != acked) {
			acked = ds->acked_frames;
			t0 = tsb_now_ns();
		} else if (o->stall_ms && (tsb_now_ns() - t0) / 1000000 > o->stall_ms) {
			r = -ETIMEDOUT;
			snprintf(err, errlen, "disk channel: the receiver applied nothing for %llu ms",
				 (unsigned long long)o->stall_ms);
			break;
		}
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 100000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		(void)pthread_cond_timedwait(&ds->cond, &ds->lock, &until);
	}
	if (ds->failed && !r) {
		snprintf(err, errlen, "%s", ds->error);
		r = -EIO;
	}
	pthread_mutex_unlock(&ds->lock);
	return r;
}

/* Our DONE follows every write; the receiver's says all is applied. 0 or -errno. */
static int send_done(struct disk_send *ds, char *err, size_t errlen)
{
	struct tsb_buf b;
	int r;

	pthread_mutex_lock(&ds->lock);
	ds->sent_done = true;
	pthread_mutex_unlock(&ds->lock);
	tsb_buf_init(&b);
	wire_encode_status(&b, WIRE_MSG_DONE, WIRE_CODE_OK, "disks complete");
	r = ds_write(ds, &b, NULL, 0);
	tsb_buf_fini(&b);
	if (r < 0)
		disk_send_failed(ds, err, errlen);
	return r;
}

int disk_send_libvirt_done(struct disk_send *ds, char *err, size_t errlen)
{
	if (!ds)
		return 0;
	if (disk_send_failed(ds, err, errlen))
		return -EIO;
	return send_done(ds, err, errlen);
}

int disk_send_count(struct qmp *q, const struct disk_send_options *o, char *err,
		    size_t errlen)
{
	struct disk_dev devs[DISK_MAX];
	int n, i, wanted_n = 0;

	n = disk_query(q, devs, DISK_MAX, err, errlen);
	for (i = 0; i < n; i++)
		wanted_n += wanted(o, &devs[i]);
	return n < 0 ? n : wanted_n;
}

int disk_send_start(struct qmp *q, const struct disk_send_options *o,
		    struct disk_send **ret, char *err, size_t errlen)
{
	struct disk_dev devs[DISK_MAX];
	struct disk_send *ds;
	unsigned i;
	int n, r;

	*ret = NULL;
	if (o->nbd_listen)
		return start_libvirt(o, ret, err, errlen);
	n = disk_query(q, devs, DISK_MAX, err, errlen);
	if (n < 0)
		return n;
	ds = ds_new(o);
	if (!ds) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r = choose_disks(ds, o, devs, (unsigned)n, err, errlen);
	if (r < 0)
		goto fail;
	if (!ds->n) {
		disk_send_finish(ds, NULL, NULL);
		return 0;
	}
	r = init_encoders(ds, err, errlen);
	if (r < 0)
		goto fail;
	log_info("disks: moving %u disk(s) with the VM", ds->n);
	r = start_channel(ds, o, err, errlen);
	if (r < 0)
		goto fail;
	r = disk_private_dir(ds->dir, sizeof(ds->dir), err, errlen);
	if (r < 0)
		goto fail;
	for (i = 0; i < ds->n; i++) {
		r = start_mirror(ds, q, i, err, errlen);
		if (r < 0)
			goto fail;
	}
	r = wait_mirrors_ready(ds, q, o, err, errlen);
	if (r == 0)
		r = wait_applied(ds, o, err, errlen);
	if (r < 0)
		goto fail;
	ds->mirror_ms = (tsb_now_ns() - ds->start_ns) / 1000000;
	log_info("disks: mirrors ready after %llu ms", (unsigned long long)ds->mirror_ms);
	*ret = ds;
	return 0;
fail:
	disk_send_finish(ds, q, NULL);
	return r;
}

/* Waits until none of our jobs is listed any more (bounded). */
static int wait_jobs_gone(struct disk_send *ds, struct qmp *q, uint64_t timeout_ms,
			  char *err, size_t errlen)
{
	uint64_t t0 = tsb_now_ns();
	unsigned ready, gone, i, running;
	int r;

	for (;;) {
		r = poll_jobs(ds, q, &ready, &gone, err, errlen);
		if (r < 0)
			return r;
		for (running = 0, i = 0; i < ds->n; i++)
			running += ds->d[i].job_started && !ds->d[i].job_gone;
		if (!running)
			return 0;
		if ((tsb_now_ns() - t0) / 1000000 > timeout_ms) {
			snprintf(err, errlen, "the mirror jobs did not end in time");
			return -ETIMEDOUT;
		}
		usleep(1000);	/* inside the downtime: notice the end at once */
	}
}

static void del_nodes(struct disk_send *ds, struct qmp *q)
{
	unsigned i;

	for (i = 0; i < ds->n; i++) {
		if (!ds->d[i].node_added)
			continue;
		if (disk_qmp(q, "blockdev-del", json_pack("{s:s}", "node-name", ds->d[i].node),
			     NULL, NULL, 0) == 0)
			ds->d[i].node_added = false;
	}
}

int disk_send_switchover(struct disk_send *ds, struct qmp *q, char *err, size_t errlen)
{
	unsigned i;
	int r;

	if (!ds)
		return 0;
	if (disk_send_failed(ds, err, errlen))
		return -EIO;
	pthread_mutex_lock(&ds->lock);
	ds->switching = true;
	pthread_mutex_unlock(&ds->lock);
	log_debug("disks: the source stopped: completing the mirrors");
	/* A ready mirror cancelled completes without pivot, target flushed. */
	for (i = 0; i < ds->n; i++) {
		r = disk_qmp(q, "block-job-cancel", json_pack("{s:s}", "device", ds->d[i].job),
			     NULL, err, errlen);
		if (r < 0)
			return r;
	}
	r = wait_jobs_gone(ds, q, 60000, err, errlen);
	if (r < 0)
		return r;
	log_debug("disks: the mirrors completed");
	if (disk_send_failed(ds, err, errlen))
		return -EIO;
	del_nodes(ds, q);
	r = send_done(ds, err, errlen);
	if (r < 0)
		return r;
	tsb_fault_point("disk-done-sent");
	/* No wait for the receiver's DONE here: disk_send_confirmed(), before the commit. */
	log_debug("disks: mirrors complete, DONE sent");
	return 0;
}

int disk_send_confirmed(struct disk_send *ds, uint64_t timeout_ms, char *err, size_t errlen)
{
	struct timespec until;
	int r;

	if (!ds)
		return 0;
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += (time_t)(timeout_ms / 1000);
	until.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (until.tv_nsec >= 1000000000) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&ds->lock);
	r = 0;
	while (!ds->peer_done && !ds->failed && r != ETIMEDOUT)
		r = pthread_cond_timedwait(&ds->cond, &ds->lock, &until);
	if (ds->failed) {
		snprintf(err, errlen, "%s", ds->error);
		r = -EIO;
	} else if (!ds->peer_done) {
		snprintf(err, errlen, "the receiver did not confirm the disks");
		r = -ETIMEDOUT;
	} else {
		r = 0;
	}
	pthread_mutex_unlock(&ds->lock);
	if (r == 0)
		log_info("disks: every write applied and flushed at the destination");
	return r;
}

size_t disk_send_images(struct disk_send *ds, const char **out, size_t max)
{
	size_t n = 0;
	unsigned i;

	for (i = 0; ds && i < ds->n && n < max; i++)
		if (ds->d[i].dev.file[0] == '/')
			out[n++] = ds->d[i].dev.file;
	return n;
}

unsigned disk_send_devs(const struct disk_send *ds, const struct disk_dev **out, unsigned max)
{
	unsigned i;

	for (i = 0; ds && i < ds->n && i < max; i++)
		out[i] = &ds->d[i].dev;
	return i;
}

static json_t *make_report(struct disk_send *ds)
{
	struct wire_conn_stats st = { 0 };
	json_t *arr = json_array();
	unsigned i;

	if (ds->conn)
		wire_conn_get_stats(ds->conn, &st);
	for (i = 0; i < ds->n; i++) {
		struct sdisk *d = &ds->d[i];

		json_array_append_new(arr, json_pack(
			"{s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I}, s:I, "
			"s:I, s:I}",
			"device", d->dev.device, "format", d->dev.format,
			"copy_mode", disk_copy_mode_name(d->mode),
			"size", (json_int_t)d->dev.size,
			"ready_ms", (json_int_t)d->ready_ms,
			"nbd_writes", (json_int_t)d->writes,
			"write_bytes", (json_int_t)d->write_bytes,
			"write_zeroes_bytes", (json_int_t)d->zero_bytes,
			"frame_bytes", (json_int_t)d->wan_bytes,
			"blocks", "zero", (json_int_t)d->blk_zero, "data", (json_int_t)d->blk_data,
			"ref", (json_int_t)d->blk_ref, "sector", (json_int_t)d->blk_small,
			"flushes", (json_int_t)d->flushes,
			"window_wait_ms", (json_int_t)(d->window_ns / 1000000),
			"channel_write_ms", (json_int_t)(d->send_ns / 1000000)));
		if (d->switched_ms)
			/* Auto: when the mirror was restarted in write-blocking. */
			json_object_set_new(json_array_get(arr, i), "write_blocking_from_ms",
					    json_integer((json_int_t)d->switched_ms));
	}
	return json_pack("{s:o, s:I, s:I, s:I, s:I, s:b}", "disks", arr,
			 "mirror_ms", (json_int_t)ds->mirror_ms,
			 "channel_net_bytes", (json_int_t)(st.net_out + st.net_in),
			 "channel_net_out", (json_int_t)st.net_out,
			 "need_served", (json_int_t)ds->need_served,
			 "receiver_filter", ds->has_filter);
}

void disk_send_finish(struct disk_send *ds, struct qmp *q, json_t *report)
{
	unsigned i;
	bool running = false;
	char err[256];

	if (!ds)
		return;
	for (i = 0; i < ds->n; i++)
		running |= ds->d[i].job_started && !ds->d[i].job_gone;
	if (q && running) {
		/* Not switched over: stop the copy, the source keeps its disks. */
		for (i = 0; i < ds->n; i++)
			if (ds->d[i].job_started && !ds->d[i].job_gone)
				(void)disk_qmp(q, "block-job-cancel",
					       json_pack("{s:s, s:b}", "device", ds->d[i].job,
							 "force", 1), NULL, NULL, 0);
		/* Unblock held flushes so the jobs can end. */
		if (!ds->failed)
			ds_fail(ds, "disk transfer stopped");
		(void)wait_jobs_gone(ds, q, 30000, err, sizeof(err));
	}
	if (q)
		del_nodes(ds, q);
	if (ds->conn && !ds->peer_done) {
		pthread_mutex_lock(&ds->wlock);
		wire_conn_send_status(ds->conn, WIRE_MSG_CANCEL, 0, "disk transfer stopped");
		pthread_mutex_unlock(&ds->wlock);
	}
	if (!ds->failed && ds->n)
		ds_fail(ds, "finished");
	if (ds->libvirt)
		lv_stop_all(ds);
	for (i = 0; i < ds->n; i++) {
		if (ds->d[i].srv)
			nbd_server_stop(ds->d[i].srv);
		if (ds->d[i].th_started)
			pthread_join(ds->d[i].th, NULL);
	}
	if (ds->conn) {
		if (ds->peer_done)
			wire_conn_close(ds->conn);
		wire_conn_abort(ds->conn);
	}
	if (ds->reader_started)
		pthread_join(ds->reader, NULL);
	if (ds->ka_started)
		pthread_join(ds->ka, NULL);
	if (report)
		json_object_set_new(report, "disks", make_report(ds));
	for (i = 0; i < ds->n; i++) {
		struct sdisk *d = &ds->d[i];

		nbd_server_free(d->srv);
		if (d->sock[0])
			unlink(d->sock);
		wire_pages_builder_fini(&d->pb);
		wire_zstd_free(d->z);
		tsb_buf_fini(&d->out);
	}
	if (ds->dir[0])
		rmdir(ds->dir);
	wire_conn_free(ds->conn);
	if (ds->has_filter)
		tsb_filter_fini(&ds->filter);
	if (ds->has_sent)
		tsb_filter_fini(&ds->sent);
	free(ds->rhash);
	free(ds->rdata);
	pthread_mutex_destroy(&ds->lock);
	pthread_mutex_destroy(&ds->wlock);
	pthread_cond_destroy(&ds->cond);
	free(ds);
}
