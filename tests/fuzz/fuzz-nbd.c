/*
 * Fuzz target for NBD (src/nbd/proto.c, server.c, client.c).
 *
 * Input byte 0 picks the mode (low 2 bits), byte 1 the chunk size of the
 * codec modes; the rest is what a peer sends:
 *   0: client bytes through the server-side codec: client flags, options
 *      (GO/INFO and META parsed and iterated) until GO/EXPORT_NAME, then
 *      requests validated against fixed parameters, WRITE payloads
 *      skipped; bytes arrive in chunks and every decoder is retried on the
 *      growing prefix (resumption);
 *   1: server bytes through the client-side codec: greeting, option
 *      replies (INFO, SERVER, META_CONTEXT parsed) until ACK of GO, then
 *      replies (chunks parsed; simple READ data of a length derived from
 *      the cookie skipped);
 *   2: the real server (nbd_server_serve_fd, a 1 MiB memory export) fed
 *      the bytes over a socketpair, its output drained by a thread;
 *   3: the real client (nbd_client_connect_fd) reading the bytes as the
 *      server's, then a few pipelined requests.
 * For speed the feeding thread and the server of mode 2 are made once and
 * serve one input after another (a server serves connection after
 * connection in nbd_server_serve() too); each input has its own
 * socketpair, and its feeding is over before the next input starts.
 */
#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd/nbd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const struct nbd_conn_params params = {
	.size = 1 << 20,
	.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
		  NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
		  NBD_FLAG_SEND_DF | NBD_FLAG_SEND_FAST_ZERO,
	.structured = true,
	.meta_base_allocation = true,
	.max_payload = NBD_MAX_PAYLOAD,
};

/* Mode 0: returns bytes consumed from p[0..len). */
static size_t server_side(const uint8_t *p, size_t len, int *phase)
{
	size_t pos = 0;

	for (;;) {
		const uint8_t *q = p + pos;
		size_t avail = len - pos;
		ssize_t n;

		if (*phase == 0) {
			uint32_t f;

			n = nbd_decode_client_flags(q, avail, &f);
			if (n > 0)
				*phase = 1;
		} else if (*phase == 1) {
			struct nbd_option o;
			struct nbd_go_request g;
			struct nbd_meta_request m;
			const char *s;
			uint32_t l;

			n = nbd_decode_option(q, avail, &o);
			if (n <= 0)
				goto out;
			if ((o.option == NBD_OPT_GO || o.option == NBD_OPT_INFO) &&
			    nbd_parse_go(&o, &g) == 0 && g.n_info)
				(void)*(volatile const uint8_t *)
					(g.info + 2 * g.n_info - 1);
			if ((o.option == NBD_OPT_SET_META_CONTEXT ||
			     o.option == NBD_OPT_LIST_META_CONTEXT) &&
			    nbd_parse_meta(&o, &m) == 0) {
				while (nbd_meta_next(&m, &s, &l))
					if (l)
						(void)*(volatile const char *)
							(s + l - 1);
			}
			if (o.option == NBD_OPT_GO ||
			    o.option == NBD_OPT_EXPORT_NAME)
				*phase = 2;
		} else {
			struct nbd_request r;
			const char *why;

			n = nbd_decode_request(q, avail, &r);
			if (n <= 0)
				goto out;
			if (r.type == NBD_CMD_WRITE) {
				if (r.length > NBD_MAX_PAYLOAD)
					return len; /* server drops the link */
				if (avail - (size_t)n < r.length)
					return pos; /* wait for the payload */
				n += r.length;
			}
			(void)nbd_validate_request(&r, &params, &why);
		}
out:
		if (n < 0)
			return len; /* fatal: the rest is ignored */
		if (n == 0)
			return pos;
		pos += (size_t)n;
	}
}

/* Mode 1. */
static size_t client_side(const uint8_t *p, size_t len, int *phase)
{
	size_t pos = 0;

	for (;;) {
		const uint8_t *q = p + pos;
		size_t avail = len - pos;
		ssize_t n;

		if (*phase == 0) {
			uint16_t f;

			n = nbd_decode_greeting(q, avail, &f);
			if (n > 0)
				*phase = 1;
		} else if (*phase == 1) {
			struct nbd_option_reply r;
			struct nbd_export_info info = { 0 };
			const char *s;
			uint32_t id, l;

			n = nbd_decode_option_reply(q, avail, &r);
			if (n > 0) {
				if (r.type == NBD_REP_INFO)
					(void)nbd_parse_info(&r, &info);
				else if (r.type == NBD_REP_SERVER &&
					 nbd_parse_rep_server(&r, &s, &l) == 0 && l)
					(void)*(volatile const char *)(s + l - 1);
				else if (r.type == NBD_REP_META_CONTEXT)
					(void)nbd_parse_rep_meta(&r, &id, &s, &l);
				else if (r.type == NBD_REP_ACK &&
					 r.option == NBD_OPT_GO)
					*phase = 2;
			}
		} else {
			struct nbd_reply r;
			struct nbd_chunk c;
			uint32_t i;

			n = nbd_decode_reply(q, avail, &r);
			if (n > 0 && !r.structured && r.error == 0) {
				uint32_t dlen = (uint32_t)(r.cookie & 0xffff);

				if (avail - (size_t)n < dlen)
					return pos;
				n += dlen;
			} else if (n > 0 && nbd_parse_chunk(&r, &c) == 0) {
				for (i = 0; i < c.n_extents; i++)
					(void)*(volatile const uint8_t *)
						(c.extents + 8 * i + 7);
				if (c.len && c.data)
					(void)*(volatile const uint8_t *)
						(c.data + c.len - 1);
				if (c.msg_len)
					(void)*(volatile const char *)
						(c.msg + c.msg_len - 1);
			}
		}
		if (n < 0)
			return len;
		if (n == 0)
			return pos;
		pos += (size_t)n;
	}
}

/* Feeds data in chunks; decoders see the accumulated, unconsumed bytes. */
static void codec(const uint8_t *data, size_t size, size_t chunk, bool server)
{
	uint8_t *buf = malloc(size ? size : 1);
	size_t have = 0, used = 0, fed = 0;
	int phase = 0;

	if (!buf)
		return;
	while (fed < size) {
		size_t n = size - fed < chunk ? size - fed : chunk;

		memcpy(buf + have, data + fed, n);
		have += n;
		fed += n;
		used += server ? server_side(buf + used, have - used, &phase) :
				 client_side(buf + used, have - used, &phase);
	}
	free(buf);
}

/* ---- modes 2 and 3: the engines over a socketpair ---- */

static uint8_t disk[1 << 20];

static int m_size(void *u, uint64_t *ret)
{
	*ret = sizeof(disk);
	return 0;
}

static int m_read(void *u, struct nbd_io *io)
{
	memcpy(io->data, disk + io->offset, io->length);
	return 0;
}

static int m_write(void *u, struct nbd_io *io)
{
	if (io->type == NBD_CMD_WRITE)
		memcpy(disk + io->offset, io->data, io->length);
	else if (io->type != NBD_CMD_FLUSH)
		memset(disk + io->offset, 0, io->length);
	return io->flags & NBD_CMD_FLAG_FAST_ZERO ? -ENOTSUP : 0;
}

static const struct nbd_export_ops ops = {
	.size = m_size, .read = m_read, .write = m_write,
	.write_zeroes = m_write, .trim = m_write, .flush = m_write,
};

struct feed {
	int fd;
	const uint8_t *data;
	size_t size;
};

/* Writes the input, then drains what the engine sends until it closes. */
static void *feeder(void *arg)
{
	struct feed *f = arg;
	uint8_t sink[65536];
	size_t pos = 0;

	while (pos < f->size) {
		ssize_t n = send(f->fd, f->data + pos, f->size - pos,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			pos += (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN)
			break;
		if (recv(f->fd, sink, sizeof(sink), MSG_DONTWAIT) == 0)
			break;
	}
	(void)shutdown(f->fd, SHUT_WR);
	while (recv(f->fd, sink, sizeof(sink), 0) > 0)
		;
	return NULL;
}

/* The feeding thread, started once: takes feed_next, feeds it, says done. */
static pthread_mutex_t feed_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t feed_cond = PTHREAD_COND_INITIALIZER;
static struct feed *feed_next;
static bool feed_busy;

static void *feeder_main(void *arg)
{
	struct feed *f;

	(void)arg;
	for (;;) {
		pthread_mutex_lock(&feed_lock);
		while (!feed_next)
			pthread_cond_wait(&feed_cond, &feed_lock);
		f = feed_next;
		feed_next = NULL;
		pthread_mutex_unlock(&feed_lock);
		(void)feeder(f);
		pthread_mutex_lock(&feed_lock);
		feed_busy = false;
		pthread_cond_broadcast(&feed_cond);
		pthread_mutex_unlock(&feed_lock);
	}
	return NULL;
}

static bool feed_start(struct feed *f)
{
	static bool started;
	pthread_t thr;

	if (!started) {
		if (pthread_create(&thr, NULL, feeder_main, NULL))
			return false;
		started = true;
	}
	pthread_mutex_lock(&feed_lock);
	feed_busy = true;
	feed_next = f;
	pthread_cond_broadcast(&feed_cond);
	pthread_mutex_unlock(&feed_lock);
	return true;
}

static void feed_wait(void)
{
	pthread_mutex_lock(&feed_lock);
	while (feed_busy)
		pthread_cond_wait(&feed_cond, &feed_lock);
	pthread_mutex_unlock(&feed_lock);
}

/* Several exports on one server (libvirt's mirrors): "exp" and "exp2", one disk. */
static int m_select(void *opaque, struct nbd_server *srv, const char *name, uint32_t len,
		    void **ret_user, uint64_t *ret_size)
{
	(void)opaque;
	(void)srv;
	if ((len != 3 && len != 4) || memcmp(name, "exp2", len))
		return -ENOENT;
	*ret_user = NULL;
	*ret_size = len == 3 ? sizeof(disk) : sizeof(disk) / 2;
	return 0;
}

static void engine(const uint8_t *data, size_t size, bool server)
{
	static struct nbd_server *one, *several;
	struct nbd_server *srv;
	struct feed f = { .data = data, .size = size };
	int sv[2];

	if (server && !one) {
		struct nbd_server_config cfg = { .export_name = "exp" };
		struct nbd_server_config sel = { .select = m_select };

		one = nbd_server_new(&cfg, &ops, NULL);
		several = nbd_server_new(&sel, &ops, NULL);
		if (!one || !several)
			return;
	}
	/* A third of the inputs meet the server that selects among exports. */
	srv = size % 3 == 2 ? several : one;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv))
		return;
	f.fd = sv[1];
	if (!feed_start(&f)) {
		close(sv[0]);
		close(sv[1]);
		return;
	}
	if (server) {
		(void)nbd_server_serve_fd(srv, sv[0]);
	} else {
		struct nbd_client_config cfg = { .export_name = "exp",
						 .structured = true,
						 .base_allocation = true };
		struct nbd_client *cl;
		struct nbd_completion c;
		struct nbd_extent ext[4];
		static uint8_t buf[8192];

		if (nbd_client_connect_fd(sv[0], &cfg, &cl, NULL, 0) == 0) {
			(void)nbd_client_submit(cl, NBD_CMD_READ, 0, 0, 8192,
						NULL, buf, NULL, 0, NULL);
			(void)nbd_client_submit(cl, NBD_CMD_WRITE, 0, 0, 512,
						buf, NULL, NULL, 0, NULL);
			(void)nbd_client_submit(cl, NBD_CMD_BLOCK_STATUS, 0, 0,
						4096, NULL, NULL, ext, 4, NULL);
			(void)nbd_client_submit(cl, NBD_CMD_READ, 0, 4096, 100,
						NULL, buf, NULL, 0, NULL);
			while (nbd_client_wait(cl, &c) == 0)
				;
			nbd_client_close(cl);
		}
	}
	feed_wait();
	close(sv[1]);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	size_t chunk;

	if (size < 2)
		return 0;
	chunk = (size_t)data[1] + 1;
	switch (data[0] & 3) {
	case 0:
		codec(data + 2, size - 2, chunk, true);
		break;
	case 1:
		codec(data + 2, size - 2, chunk, false);
		break;
	case 2:
		engine(data + 2, size - 2, true);
		break;
	default:
		engine(data + 2, size - 2, false);
		break;
	}
	return 0;
}
