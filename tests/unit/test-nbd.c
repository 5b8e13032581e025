/*
 * NBD codec and engines without QEMU: round trips, truncation at every
 * byte, caps, request validation, errno mapping; the server driven by
 * hand-made client bytes (unknown options and commands, bad magics,
 * oversized lengths); our client against our server with an in-memory
 * export completing writes asynchronously out of order (flush ordering);
 * our client against a scripted server (hole/data/error chunks, a reply
 * for an unknown cookie).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/reader.h"
#include "nbd/nbd.h"

/* ---- codec ---- */

static void test_greeting_and_flags(void **state)
{
	struct tsb_buf b;
	uint16_t f;
	uint32_t cf;
	size_t k;

	tsb_buf_init(&b);
	nbd_put_greeting(&b, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	assert_int_equal(b.len, NBD_GREETING_LEN);
	for (k = 0; k < b.len; k++)
		assert_int_equal(nbd_decode_greeting(b.data, k, &f), 0);
	assert_int_equal(nbd_decode_greeting(b.data, b.len, &f), 18);
	assert_int_equal(f, 3);
	b.data[3] ^= 1;
	assert_int_equal(nbd_decode_greeting(b.data, b.len, &f), -EBADMSG);
	tsb_buf_reset(&b);
	nbd_put_client_flags(&b, 3);
	assert_int_equal(nbd_decode_client_flags(b.data, 3, &cf), 0);
	assert_int_equal(nbd_decode_client_flags(b.data, 4, &cf), 4);
	assert_int_equal(cf, 3);
	tsb_buf_fini(&b);
}

static void test_option_roundtrip(void **state)
{
	static const uint16_t info[] = { NBD_INFO_BLOCK_SIZE, NBD_INFO_NAME };
	struct tsb_buf b, d;
	struct nbd_option o;
	struct nbd_go_request g;
	size_t k;

	tsb_buf_init(&b);
	tsb_buf_init(&d);
	nbd_put_go_data(&d, "disk0", info, 2);
	nbd_put_option(&b, NBD_OPT_GO, d.data, (uint32_t)d.len);
	for (k = 0; k < b.len; k++)
		assert_int_equal(nbd_decode_option(b.data, k, &o), 0);
	assert_int_equal(nbd_decode_option(b.data, b.len, &o), (ssize_t)b.len);
	assert_int_equal(o.option, NBD_OPT_GO);
	assert_int_equal(nbd_parse_go(&o, &g), 0);
	assert_int_equal(g.name_len, 5);
	assert_memory_equal(g.name, "disk0", 5);
	assert_int_equal(g.n_info, 2);
	assert_int_equal(tsb_load_be16(g.info + 2), NBD_INFO_NAME);
	/* Every truncation of the GO data, and a trailing byte, is malformed. */
	for (k = 0; k < d.len; k++) {
		struct nbd_option t = { NBD_OPT_GO, (uint32_t)k, d.data };

		assert_int_equal(nbd_parse_go(&t, &g), -EBADMSG);
	}
	tsb_buf_put_u8(&d, 0);
	o.data = d.data;
	o.len = (uint32_t)d.len;
	assert_int_equal(nbd_parse_go(&o, &g), -EBADMSG);
	/* A name over the cap. */
	tsb_buf_reset(&d);
	tsb_buf_put_be32(&d, NBD_MAX_STRING + 1);
	o.data = d.data;
	o.len = (uint32_t)d.len;
	assert_int_equal(nbd_parse_go(&o, &g), -EMSGSIZE);
	/* Option data over the cap: refused from the header alone. */
	tsb_buf_reset(&b);
	tsb_buf_put_be64(&b, NBD_IHAVEOPT);
	tsb_buf_put_be32(&b, NBD_OPT_GO);
	tsb_buf_put_be32(&b, NBD_MAX_OPTION_DATA + 1);
	assert_int_equal(nbd_decode_option(b.data, b.len, &o), -EMSGSIZE);
	b.data[0] = 0;
	assert_int_equal(nbd_decode_option(b.data, b.len, &o), -EBADMSG);
	tsb_buf_fini(&b);
	tsb_buf_fini(&d);
}

static void test_meta_request(void **state)
{
	static const char *const q[] = { "base:allocation", "qemu:dirty-bitmap:x" };
	struct tsb_buf d;
	struct nbd_option o;
	struct nbd_meta_request m;
	const char *s;
	uint32_t l;
	size_t k;

	tsb_buf_init(&d);
	nbd_put_meta_data(&d, "e", q, 2);
	o.option = NBD_OPT_SET_META_CONTEXT;
	o.data = d.data;
	o.len = (uint32_t)d.len;
	assert_int_equal(nbd_parse_meta(&o, &m), 0);
	assert_int_equal(m.n_queries, 2);
	assert_int_equal(nbd_meta_next(&m, &s, &l), 1);
	assert_int_equal(l, 15);
	assert_memory_equal(s, "base:allocation", 15);
	assert_int_equal(nbd_meta_next(&m, &s, &l), 1);
	assert_int_equal(l, 19);
	assert_int_equal(nbd_meta_next(&m, &s, &l), 0);
	for (k = 0; k < d.len; k++) {
		o.len = (uint32_t)k;
		assert_int_equal(nbd_parse_meta(&o, &m), -EBADMSG);
	}
	tsb_buf_put_u8(&d, 'x');
	o.data = d.data;
	o.len = (uint32_t)d.len;
	assert_int_equal(nbd_parse_meta(&o, &m), -EBADMSG);
	tsb_buf_reset(&d);
	tsb_buf_put_be32(&d, 0);
	tsb_buf_put_be32(&d, NBD_MAX_META_QUERIES + 1);
	o.data = d.data;
	o.len = (uint32_t)d.len;
	assert_int_equal(nbd_parse_meta(&o, &m), -EMSGSIZE);
	tsb_buf_fini(&d);
}

static void test_option_reply_and_info(void **state)
{
	struct tsb_buf b;
	struct nbd_option_reply r;
	struct nbd_export_info info = { 0 };
	const uint8_t *p;
	size_t k;
	ssize_t n;

	tsb_buf_init(&b);
	nbd_put_info_export(&b, NBD_OPT_GO, 1 << 20, 0x4d);
	nbd_put_info_block_size(&b, NBD_OPT_GO, 1, 4096, 1 << 25);
	nbd_put_option_reply(&b, NBD_OPT_GO, NBD_REP_ACK, NULL, 0);
	for (k = 0; k < 32; k++)
		assert_int_equal(nbd_decode_option_reply(b.data, k, &r), 0);
	p = b.data;
	n = nbd_decode_option_reply(p, b.len, &r);
	assert_int_equal(n, 32);
	assert_int_equal(r.type, NBD_REP_INFO);
	assert_int_equal(nbd_parse_info(&r, &info), 0);
	assert_true(info.has_export);
	assert_int_equal(info.size, 1 << 20);
	assert_int_equal(info.tflags, 0x4d);
	/* Short INFO_EXPORT payloads are malformed. */
	for (k = 0; k < r.len; k++) {
		struct nbd_option_reply t = r;

		t.len = (uint32_t)k;
		assert_int_equal(nbd_parse_info(&t, &info), -EBADMSG);
	}
	p += n;
	n = nbd_decode_option_reply(p, b.len - 32, &r);
	assert_int_equal(n, 34);
	assert_int_equal(nbd_parse_info(&r, &info), 0);
	assert_int_equal(info.max_block, 1 << 25);
	/* min block not a power of two */
	((uint8_t *)r.data)[5] = 3;
	assert_int_equal(nbd_parse_info(&r, &info), -EBADMSG);
	p += n;
	assert_int_equal(nbd_decode_option_reply(p, 20, &r), 20);
	assert_int_equal(r.type, NBD_REP_ACK);
	assert_int_equal(nbd_parse_info(&r, &info), -EPROTO);
	/* Oversized reply data. */
	tsb_buf_reset(&b);
	tsb_buf_put_be64(&b, NBD_REP_MAGIC);
	tsb_buf_put_be32(&b, 1);
	tsb_buf_put_be32(&b, NBD_REP_SERVER);
	tsb_buf_put_be32(&b, NBD_MAX_OPTION_DATA + 1);
	assert_int_equal(nbd_decode_option_reply(b.data, b.len, &r), -EMSGSIZE);
	tsb_buf_fini(&b);
}

static void test_export_name_reply(void **state)
{
	struct tsb_buf b;
	struct nbd_export_info info;
	size_t k;

	tsb_buf_init(&b);
	nbd_put_export_name_reply(&b, 12345, 0x1, false);
	assert_int_equal(b.len, 134);
	for (k = 0; k < b.len; k++)
		assert_int_equal(nbd_decode_export_name_reply(b.data, k, false,
							      &info), 0);
	assert_int_equal(nbd_decode_export_name_reply(b.data, b.len, false,
						      &info), 134);
	assert_int_equal(info.size, 12345);
	assert_int_equal(nbd_decode_export_name_reply(b.data, b.len, true,
						      &info), 10);
	b.data[9] = 0; /* HAS_FLAGS clear */
	assert_int_equal(nbd_decode_export_name_reply(b.data, b.len, true,
						      &info), -EBADMSG);
	tsb_buf_fini(&b);
}

static void test_request_roundtrip(void **state)
{
	struct nbd_request in = { NBD_CMD_FLAG_FUA, NBD_CMD_WRITE,
				  0x1122334455667788ULL, 4096, 512 }, out;
	struct tsb_buf b;
	size_t k;

	tsb_buf_init(&b);
	nbd_put_request(&b, &in);
	assert_int_equal(b.len, NBD_REQUEST_LEN);
	for (k = 0; k < b.len; k++)
		assert_int_equal(nbd_decode_request(b.data, k, &out), 0);
	assert_int_equal(nbd_decode_request(b.data, b.len, &out), 28);
	assert_int_equal(out.flags, in.flags);
	assert_int_equal(out.type, in.type);
	assert_true(out.cookie == in.cookie);
	assert_true(out.offset == in.offset);
	assert_int_equal(out.length, in.length);
	b.data[0] = 0x26;
	assert_int_equal(nbd_decode_request(b.data, b.len, &out), -EBADMSG);
	tsb_buf_fini(&b);
}

static void test_replies_and_chunks(void **state)
{
	static const struct nbd_extent ext[2] = { { 4096, 0 }, { 8192, 3 } };
	struct tsb_buf b;
	struct nbd_reply r;
	struct nbd_chunk c;
	const uint8_t *p;
	size_t k, len;
	ssize_t n;

	tsb_buf_init(&b);
	nbd_put_simple_reply(&b, NBD_EIO, 7);
	for (k = 0; k < b.len; k++)
		assert_int_equal(nbd_decode_reply(b.data, k, &r), 0);
	assert_int_equal(nbd_decode_reply(b.data, b.len, &r), 16);
	assert_false(r.structured);
	assert_int_equal(r.error, NBD_EIO);
	assert_int_equal(r.cookie, 7);

	tsb_buf_reset(&b);
	nbd_put_chunk_data_header(&b, 0, 8, 100, 3);
	tsb_buf_append(&b, "abc", 3);
	nbd_put_chunk_hole(&b, 0, 8, 103, 50);
	nbd_put_chunk_block_status(&b, 0, 9, 1, ext, 2);
	nbd_put_chunk_error(&b, NBD_REPLY_FLAG_DONE, 8, NBD_ENOSPC, "full");
	nbd_put_chunk_header(&b, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 9, 0);
	len = b.len;
	/* Truncation anywhere in the first chunk: incomplete. */
	for (k = 0; k < 31; k++)
		assert_int_equal(nbd_decode_reply(b.data, k, &r), 0);
	p = b.data;
	n = nbd_decode_reply(p, len, &r);
	assert_int_equal(n, 31);
	assert_true(r.structured);
	assert_int_equal(nbd_parse_chunk(&r, &c), 0);
	assert_int_equal(c.offset, 100);
	assert_int_equal(c.len, 3);
	assert_memory_equal(c.data, "abc", 3);
	p += n;
	len -= (size_t)n;
	n = nbd_decode_reply(p, len, &r);
	assert_int_equal(nbd_parse_chunk(&r, &c), 0);
	assert_int_equal(c.len, 50);
	/* A hole chunk of the wrong size. */
	r.len = 11;
	assert_int_equal(nbd_parse_chunk(&r, &c), -EBADMSG);
	p += n;
	len -= (size_t)n;
	n = nbd_decode_reply(p, len, &r);
	assert_int_equal(nbd_parse_chunk(&r, &c), 0);
	assert_int_equal(c.context_id, 1);
	assert_int_equal(c.n_extents, 2);
	assert_int_equal(tsb_load_be32(c.extents + 12), 3);
	r.len = 4 + 8 + 3;
	assert_int_equal(nbd_parse_chunk(&r, &c), -EBADMSG);
	r.len = 4;
	assert_int_equal(nbd_parse_chunk(&r, &c), -EBADMSG);
	p += n;
	len -= (size_t)n;
	n = nbd_decode_reply(p, len, &r);
	assert_int_equal(nbd_parse_chunk(&r, &c), 0);
	assert_int_equal(c.error, NBD_ENOSPC);
	assert_int_equal(c.msg_len, 4);
	for (k = 0; k < r.len; k++) {
		struct nbd_reply t = r;

		t.len = (uint32_t)k;
		assert_int_equal(nbd_parse_chunk(&t, &c), -EBADMSG);
	}
	p += n;
	len -= (size_t)n;
	n = nbd_decode_reply(p, len, &r);
	assert_int_equal(n, 20);
	assert_int_equal(nbd_parse_chunk(&r, &c), 0);
	r.flags = 0; /* NONE must be the last chunk */
	assert_int_equal(nbd_parse_chunk(&r, &c), -EBADMSG);
	r.type = 77;
	assert_int_equal(nbd_parse_chunk(&r, &c), -EOPNOTSUPP);

	/* Oversized chunk, unknown magic. */
	tsb_buf_reset(&b);
	nbd_put_chunk_header(&b, 0, NBD_REPLY_TYPE_OFFSET_DATA, 1,
			     NBD_MAX_CHUNK + 1);
	assert_int_equal(nbd_decode_reply(b.data, b.len, &r), -EMSGSIZE);
	b.data[0] = 0;
	assert_int_equal(nbd_decode_reply(b.data, b.len, &r), -EBADMSG);
	tsb_buf_fini(&b);
}

static void test_validate(void **state)
{
	struct nbd_conn_params p = {
		.size = 1 << 20,
		.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH |
			  NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_WRITE_ZEROES,
		.max_payload = 65536,
	};
	struct nbd_request r = { 0, NBD_CMD_READ, 1, 0, 4096 };
	const char *why;

	assert_int_equal(nbd_validate_request(&r, &p, &why), 0);
	r.length = 65537;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EOVERFLOW);
	r.length = 0;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.length = 4096;
	r.offset = (1 << 20) - 4095;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.type = NBD_CMD_WRITE;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_ENOSPC);
	r.offset = UINT64_MAX - 10;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_ENOSPC);
	r.offset = 0;
	r.flags = NBD_CMD_FLAG_FUA;
	assert_int_equal(nbd_validate_request(&r, &p, &why), 0);
	r.flags = NBD_CMD_FLAG_NO_HOLE; /* not a WRITE flag */
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.type = NBD_CMD_WRITE_ZEROES;
	r.length = 1 << 20; /* over max_payload is fine for zeroes */
	assert_int_equal(nbd_validate_request(&r, &p, &why), 0);
	r.flags = NBD_CMD_FLAG_FAST_ZERO; /* not advertised */
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.flags = 0;
	r.type = NBD_CMD_TRIM; /* not advertised */
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.type = NBD_CMD_FLUSH;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.length = 0;
	assert_int_equal(nbd_validate_request(&r, &p, &why), 0);
	r.type = NBD_CMD_BLOCK_STATUS;
	r.length = 4096;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	p.meta_base_allocation = true;
	assert_int_equal(nbd_validate_request(&r, &p, &why), 0);
	r.type = 99;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	assert_non_null(why);
	r.type = NBD_CMD_READ;
	r.flags = NBD_CMD_FLAG_DF; /* structured replies not negotiated */
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EINVAL);
	r.flags = 0;
	r.type = NBD_CMD_WRITE;
	p.tflags |= NBD_FLAG_READ_ONLY;
	assert_int_equal(nbd_validate_request(&r, &p, &why), NBD_EPERM);
}

static void test_errno_map(void **state)
{
	static const int e[] = { EPERM, EIO, ENOMEM, EINVAL, ENOSPC,
				 EOVERFLOW, ENOTSUP, ESHUTDOWN };
	unsigned int i;

	for (i = 0; i < sizeof(e) / sizeof(e[0]); i++)
		assert_int_equal(nbd_wire_to_errno(nbd_errno_to_wire(-e[i])),
				 -e[i]);
	assert_int_equal(nbd_errno_to_wire(-ENOENT), NBD_EIO);
	assert_int_equal(nbd_wire_to_errno(4242), -EINVAL);
	assert_int_equal(nbd_wire_to_errno(0), 0);
	assert_string_equal(nbd_cmd_name(NBD_CMD_WRITE_ZEROES), "WRITE_ZEROES");
	assert_string_equal(nbd_opt_name(NBD_OPT_GO), "GO");
	assert_string_equal(nbd_rep_name(NBD_REP_ERR_UNSUP), "ERR_UNSUP");
}

/* ---- an in-memory export; async mode completes writes from a thread ---- */

#define MEM_SIZE (4U << 20)

struct mem {
	uint8_t *data;
	struct nbd_server *srv;
	bool async;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct nbd_io *pending[128];
	unsigned int n_pending;
	uint64_t outstanding[256];	/* seqs of writes not yet completed */
	unsigned int n_out;
	unsigned int flushes, flush_violations;
	bool quit;
	pthread_t thr;
};

static int m_size(void *u, uint64_t *ret)
{
	*ret = MEM_SIZE;
	return 0;
}

static int m_read(void *u, struct nbd_io *io)
{
	struct mem *m = u;

	memcpy(io->data, m->data + io->offset, io->length);
	return 0;
}

static int m_apply(struct mem *m, struct nbd_io *io)
{
	if (io->type == NBD_CMD_WRITE)
		memcpy(m->data + io->offset, io->data, io->length);
	else if (io->type != NBD_CMD_FLUSH)
		memset(m->data + io->offset, 0, io->length);
	return 0;
}

static int m_write(void *u, struct nbd_io *io)
{
	struct mem *m = u;
	int r = 0;

	unsigned int i;

	pthread_mutex_lock(&m->lock);
	if (io->type == NBD_CMD_FLUSH) {
		/* Every write that arrived before the flush is completed. */
		m->flushes++;
		for (i = 0; i < m->n_out; i++)
			if (m->outstanding[i] < io->seq)
				m->flush_violations++;
	}
	if (m->async) {
		if (io->type != NBD_CMD_FLUSH)
			m->outstanding[m->n_out++] = io->seq;
		m->pending[m->n_pending++] = io;
		pthread_cond_signal(&m->cond);
		r = NBD_IO_ASYNC;
	} else {
		m_apply(m, io);
	}
	pthread_mutex_unlock(&m->lock);
	return r;
}

/* Completes pending ios newest first (out of order) once 4 are queued,
 * or whatever is there after a short wait. */
static void *m_worker(void *arg)
{
	struct mem *m = arg;

	pthread_mutex_lock(&m->lock);
	while (!m->quit) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 2000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (m->n_pending < 4)
			pthread_cond_timedwait(&m->cond, &m->lock, &ts);
		while (m->n_pending) {
			struct nbd_io *io = m->pending[--m->n_pending];

			unsigned int i;

			m_apply(m, io);
			for (i = 0; i < m->n_out; i++)
				if (m->outstanding[i] == io->seq)
					m->outstanding[i] = m->outstanding[--m->n_out];
			nbd_server_complete(m->srv, io, 0);
		}
	}
	pthread_mutex_unlock(&m->lock);
	return NULL;
}

static const struct nbd_export_ops mem_ops = {
	.size = m_size, .read = m_read, .write = m_write,
	.write_zeroes = m_write, .trim = m_write, .flush = m_write,
};

struct srv_ctx {
	struct mem m;
	struct nbd_server *srv;
	pthread_t thr;
	int fd;
	int rc;
};

static void *srv_thread(void *arg)
{
	struct srv_ctx *c = arg;

	c->rc = nbd_server_serve_fd(c->srv, c->fd);
	return NULL;
}

/* Starts a server on one end of a socketpair; returns the other end. */
static int start_server(struct srv_ctx *c, bool async, uint32_t max_payload)
{
	struct nbd_server_config cfg = { .export_name = "mem",
					 .max_payload = max_payload };
	struct timeval tv = { .tv_sec = 10 };
	int sv[2];

	memset(c, 0, sizeof(*c));
	c->m.data = calloc(1, MEM_SIZE);
	assert_non_null(c->m.data);
	c->m.async = async;
	pthread_mutex_init(&c->m.lock, NULL);
	pthread_cond_init(&c->m.cond, NULL);
	c->srv = nbd_server_new(&cfg, &mem_ops, &c->m);
	assert_non_null(c->srv);
	c->m.srv = c->srv;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	setsockopt(sv[1], SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	c->fd = sv[0];
	if (async)
		assert_int_equal(pthread_create(&c->m.thr, NULL, m_worker, &c->m), 0);
	assert_int_equal(pthread_create(&c->thr, NULL, srv_thread, c), 0);
	return sv[1];
}

static int stop_server(struct srv_ctx *c)
{
	pthread_join(c->thr, NULL);
	if (c->m.async) {
		pthread_mutex_lock(&c->m.lock);
		c->m.quit = true;
		pthread_cond_signal(&c->m.cond);
		pthread_mutex_unlock(&c->m.lock);
		pthread_join(c->m.thr, NULL);
	}
	nbd_server_free(c->srv);
	free(c->m.data);
	return c->rc;
}

/* ---- scripted client bytes against the server ---- */

static void xwrite(int fd, const void *p, size_t n)
{
	assert_int_equal(write(fd, p, n), (ssize_t)n);
}

static void xread(int fd, void *p, size_t n)
{
	size_t got = 0;

	while (got < n) {
		ssize_t r = read(fd, (uint8_t *)p + got, n - got);

		assert_true(r > 0);
		got += (size_t)r;
	}
}

/* Reads one option reply into buf (data up to cap) and returns its type. */
static uint32_t read_opt_reply(int fd, uint32_t opt, uint8_t *data,
			       uint32_t *ret_len)
{
	uint8_t h[20];
	uint32_t len;

	xread(fd, h, 20);
	assert_true(tsb_load_be64(h) == NBD_REP_MAGIC);
	assert_int_equal(tsb_load_be32(h + 8), opt);
	len = tsb_load_be32(h + 16);
	assert_true(len < 4096);
	if (len)
		xread(fd, data, len);
	if (ret_len)
		*ret_len = len;
	return tsb_load_be32(h + 12);
}

static void send_opt(int fd, uint32_t opt, const void *data, uint32_t len)
{
	struct tsb_buf b;

	tsb_buf_init(&b);
	nbd_put_option(&b, opt, data, len);
	xwrite(fd, b.data, b.len);
	tsb_buf_fini(&b);
}

static void handshake_start(int fd, uint32_t cflags)
{
	uint8_t g[18];

	xread(fd, g, 18);
	assert_true(tsb_load_be64(g) == NBD_MAGIC);
	assert_int_equal(tsb_load_be16(g + 16), 3);
	tsb_put_be32(g, cflags);
	xwrite(fd, g, 4);
}

static void go(int fd, const char *name, uint32_t *ret_type)
{
	struct tsb_buf d;
	uint8_t buf[4096];
	uint32_t t, len;

	tsb_buf_init(&d);
	nbd_put_go_data(&d, name, NULL, 0);
	send_opt(fd, NBD_OPT_GO, d.data, (uint32_t)d.len);
	tsb_buf_fini(&d);
	while ((t = read_opt_reply(fd, NBD_OPT_GO, buf, &len)) == NBD_REP_INFO)
		;
	*ret_type = t;
}

static void test_server_options(void **state)
{
	static const char *const q[] = { "base:allocation", "x-foo:bar" };
	struct srv_ctx c;
	struct tsb_buf d;
	uint8_t buf[4096];
	uint32_t len, t;
	int fd = start_server(&c, false, 0);

	handshake_start(fd, 3);
	send_opt(fd, 42, "junk", 4);
	assert_int_equal(read_opt_reply(fd, 42, buf, &len), NBD_REP_ERR_UNSUP);
	assert_true(len > 0);
	send_opt(fd, NBD_OPT_STARTTLS, NULL, 0);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_STARTTLS, buf, NULL),
			 NBD_REP_ERR_POLICY);
	send_opt(fd, NBD_OPT_LIST, "x", 1);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_LIST, buf, NULL),
			 NBD_REP_ERR_INVALID);
	send_opt(fd, NBD_OPT_LIST, NULL, 0);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_LIST, buf, &len),
			 NBD_REP_SERVER);
	assert_int_equal(len, 7);
	assert_memory_equal(buf + 4, "mem", 3);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_LIST, buf, NULL),
			 NBD_REP_ACK);
	/* Meta contexts need structured replies first. */
	tsb_buf_init(&d);
	nbd_put_meta_data(&d, "mem", q, 2);
	send_opt(fd, NBD_OPT_SET_META_CONTEXT, d.data, (uint32_t)d.len);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, buf, NULL),
			 NBD_REP_ERR_INVALID);
	send_opt(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, buf, NULL),
			 NBD_REP_ACK);
	send_opt(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_STRUCTURED_REPLY, buf, NULL),
			 NBD_REP_ERR_INVALID);
	send_opt(fd, NBD_OPT_SET_META_CONTEXT, d.data, (uint32_t)d.len);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, buf, &len),
			 NBD_REP_META_CONTEXT);
	assert_int_equal(len, 4 + 15);
	assert_memory_equal(buf + 4, "base:allocation", 15);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, buf, NULL),
			 NBD_REP_ACK);
	/* Malformed meta request: truncated. */
	send_opt(fd, NBD_OPT_SET_META_CONTEXT, d.data, (uint32_t)d.len - 1);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_SET_META_CONTEXT, buf, NULL),
			 NBD_REP_ERR_INVALID);
	tsb_buf_fini(&d);
	/* INFO for an unknown export, then malformed GO data. */
	tsb_buf_init(&d);
	nbd_put_go_data(&d, "nope", NULL, 0);
	send_opt(fd, NBD_OPT_INFO, d.data, (uint32_t)d.len);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_INFO, buf, NULL),
			 NBD_REP_ERR_UNKNOWN);
	send_opt(fd, NBD_OPT_GO, d.data, 3);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_GO, buf, NULL),
			 NBD_REP_ERR_INVALID);
	tsb_buf_fini(&d);
	go(fd, "mem", &t);
	assert_int_equal(t, NBD_REP_ACK);

	/* Transmission: unknown command, bad READ, BLOCK_STATUS, DISC. */
	{
		struct nbd_request r = { 0, 42, 5, 0, 512 };
		struct tsb_buf b;
		uint8_t rep[64];

		tsb_buf_init(&b);
		nbd_put_request(&b, &r);
		r = (struct nbd_request){ 0, NBD_CMD_READ, 6, MEM_SIZE, 512 };
		nbd_put_request(&b, &r);
		r = (struct nbd_request){ NBD_CMD_FLAG_REQ_ONE,
					  NBD_CMD_BLOCK_STATUS, 7,
					  MEM_SIZE - 1024, 1024 };
		nbd_put_request(&b, &r);
		r = (struct nbd_request){ 0, NBD_CMD_DISC, 8, 0, 0 };
		nbd_put_request(&b, &r);
		xwrite(fd, b.data, b.len);
		tsb_buf_fini(&b);
		xread(fd, rep, 16);	/* simple EINVAL */
		assert_int_equal(tsb_load_be32(rep), NBD_SIMPLE_REPLY_MAGIC);
		assert_int_equal(tsb_load_be32(rep + 4), NBD_EINVAL);
		assert_true(tsb_load_be64(rep + 8) == 5);
		xread(fd, rep, 20);	/* structured error for the READ */
		assert_int_equal(tsb_load_be32(rep), NBD_STRUCTURED_REPLY_MAGIC);
		assert_int_equal(tsb_load_be16(rep + 6), NBD_REPLY_TYPE_ERROR);
		assert_true(tsb_load_be64(rep + 8) == 6);
		len = tsb_load_be32(rep + 16);
		xread(fd, buf, len);
		assert_int_equal(tsb_load_be32(buf), NBD_EINVAL);
		xread(fd, rep, 20 + 12); /* one extent: the last 1024 bytes */
		assert_int_equal(tsb_load_be16(rep + 6),
				 NBD_REPLY_TYPE_BLOCK_STATUS);
		assert_int_equal(tsb_load_be32(rep + 24), 1024);
		assert_int_equal(read(fd, rep, 1), 0); /* closed after DISC */
	}
	close(fd);
	assert_int_equal(stop_server(&c), 0);
}

static void test_server_export_name_and_abort(void **state)
{
	struct srv_ctx c;
	uint8_t buf[200];
	int fd;

	/* EXPORT_NAME without NO_ZEROES: 134 bytes, then transmission. */
	fd = start_server(&c, false, 0);
	handshake_start(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
	send_opt(fd, NBD_OPT_EXPORT_NAME, "mem", 3);
	xread(fd, buf, 134);
	assert_true(tsb_load_be64(buf) == MEM_SIZE);
	assert_true(tsb_load_be16(buf + 8) & NBD_FLAG_SEND_FLUSH);
	close(fd);
	assert_int_equal(stop_server(&c), -ECONNRESET);

	/* EXPORT_NAME of an unknown export: the server hangs up. */
	fd = start_server(&c, false, 0);
	handshake_start(fd, 3);
	send_opt(fd, NBD_OPT_EXPORT_NAME, "x", 1);
	assert_int_equal(read(fd, buf, 1), 0);
	close(fd);
	assert_int_equal(stop_server(&c), -ENOENT);

	/* ABORT is acknowledged. */
	fd = start_server(&c, false, 0);
	handshake_start(fd, 3);
	send_opt(fd, NBD_OPT_ABORT, NULL, 0);
	assert_int_equal(read_opt_reply(fd, NBD_OPT_ABORT, buf, NULL),
			 NBD_REP_ACK);
	close(fd);
	assert_int_equal(stop_server(&c), 0);

	/* Unknown client flags. */
	fd = start_server(&c, false, 0);
	handshake_start(fd, 0x80);
	assert_int_equal(read(fd, buf, 1), 0);
	close(fd);
	assert_int_equal(stop_server(&c), -EBADMSG);

	/* Option data over the cap. */
	fd = start_server(&c, false, 0);
	handshake_start(fd, 3);
	tsb_put_be64(buf, NBD_IHAVEOPT);
	tsb_put_be32(buf + 8, NBD_OPT_GO);
	tsb_put_be32(buf + 12, NBD_MAX_OPTION_DATA + 1);
	xwrite(fd, buf, 16);
	assert_int_equal(read(fd, buf, 1), 0);
	close(fd);
	assert_int_equal(stop_server(&c), -EMSGSIZE);
}

static void test_server_bad_requests(void **state)
{
	struct srv_ctx c;
	struct nbd_request r = { 0, NBD_CMD_WRITE, 1, 0, 8192 };
	struct tsb_buf b;
	uint8_t buf[64];
	uint32_t t;
	int fd;

	/* WRITE over the payload limit: the connection is dropped. */
	fd = start_server(&c, false, 4096);
	handshake_start(fd, 3);
	go(fd, "mem", &t);
	tsb_buf_init(&b);
	nbd_put_request(&b, &r);
	xwrite(fd, b.data, b.len);
	assert_int_equal(read(fd, buf, 1), 0);
	close(fd);
	assert_int_equal(stop_server(&c), -EMSGSIZE);

	/* WRITE beyond the end: payload consumed, ENOSPC, still usable. */
	fd = start_server(&c, false, 0);
	handshake_start(fd, 3);
	go(fd, "mem", &t);
	tsb_buf_reset(&b);
	r = (struct nbd_request){ 0, NBD_CMD_WRITE, 2, MEM_SIZE - 4, 8 };
	nbd_put_request(&b, &r);
	tsb_buf_append(&b, "12345678", 8);
	r = (struct nbd_request){ 0, NBD_CMD_FLUSH, 3, 0, 0 };
	nbd_put_request(&b, &r);
	xwrite(fd, b.data, b.len);
	xread(fd, buf, 32);
	assert_int_equal(tsb_load_be32(buf + 4), NBD_ENOSPC);
	assert_int_equal(tsb_load_be32(buf + 16 + 4), 0);
	assert_true(tsb_load_be64(buf + 16 + 8) == 3);
	/* Then a bad magic: dropped. */
	memset(buf, 0x55, 28);
	xwrite(fd, buf, 28);
	assert_int_equal(read(fd, buf, 1), 0);
	close(fd);
	assert_int_equal(stop_server(&c), -EBADMSG);
	tsb_buf_fini(&b);
}

/* ---- our client against our server ---- */

static void client_server(bool async)
{
	struct nbd_client_config cfg = { .export_name = "mem",
					 .structured = true,
					 .base_allocation = true,
					 .max_inflight = 8 };
	struct srv_ctx c;
	struct nbd_client *cl;
	struct nbd_completion comp;
	struct nbd_extent ext[4];
	uint8_t *w, *rd;
	char err[128];
	uint32_t i, n;
	int fd = start_server(&c, async, 0);

	assert_int_equal(nbd_client_connect_fd(fd, &cfg, &cl, err, sizeof(err)), 0);
	assert_true(nbd_client_structured(cl));
	assert_true(nbd_client_has_base_allocation(cl));
	assert_int_equal(nbd_client_info(cl)->size, MEM_SIZE);
	assert_int_equal(nbd_client_info(cl)->max_block, NBD_MAX_PAYLOAD);
	w = malloc(MEM_SIZE);
	rd = malloc(MEM_SIZE);
	for (i = 0; i < MEM_SIZE; i++)
		w[i] = (uint8_t)(i * 7 + (i >> 9));
	/* 64 writes of 64 KiB, a flush in the middle, all pipelined. */
	for (i = 0; i < 64; i++) {
		assert_int_equal(nbd_client_submit(cl, NBD_CMD_WRITE, 0,
						   i * 65536ULL, 65536,
						   w + i * 65536, NULL, NULL,
						   0, NULL), 0);
		if (i == 31)
			assert_int_equal(nbd_client_submit(cl, NBD_CMD_FLUSH,
							   0, 0, 0, NULL, NULL,
							   NULL, 0, NULL), 0);
	}
	assert_int_equal(nbd_client_submit(cl, NBD_CMD_WRITE_ZEROES, 0, 0,
					   4096, NULL, NULL, NULL, 0, NULL), 0);
	assert_int_equal(nbd_client_submit(cl, NBD_CMD_FLUSH, 0, 0, 0, NULL,
					   NULL, NULL, 0, NULL), 0);
	n = 0;
	while (nbd_client_wait(cl, &comp) == 0) {
		assert_int_equal(comp.err, 0);
		n++;
	}
	assert_int_equal(n, 67);
	memset(w, 0, 4096);
	assert_int_equal(nbd_client_pread(cl, rd, MEM_SIZE / 2, 0), 0);
	assert_int_equal(nbd_client_pread(cl, rd + MEM_SIZE / 2, MEM_SIZE / 2,
					  MEM_SIZE / 2), 0);
	assert_memory_equal(rd, w, MEM_SIZE);
	assert_int_equal(nbd_client_block_status(cl, 0, 8192, 0, ext, 4, &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].length, 8192);
	/* Server-side errors come back as errnos. */
	assert_int_equal(nbd_client_pread(cl, rd, 512, MEM_SIZE), -EINVAL);
	assert_int_equal(nbd_client_pwrite(cl, w, 512, MEM_SIZE - 256, 0),
			 -ENOSPC);
	assert_int_equal(nbd_client_trim(cl, 0, 4096), 0);
	assert_int_equal(nbd_client_flush(cl), 0);
	nbd_client_close(cl);
	assert_int_equal(stop_server(&c), 0);
	assert_int_equal(c.m.flush_violations, 0);
	assert_int_equal(c.m.flushes, 3);
	free(w);
	free(rd);
}

static void test_client_server_sync(void **state)
{
	client_server(false);
}

static void test_client_server_async(void **state)
{
	client_server(true);
}

/* ---- our client against a scripted server ---- */

struct script {
	int fd;
	int phase;
};

/* Answers the handshake (any options: ACK / INFO), then plays replies. */
static void *script_thread(void *arg)
{
	struct script *s = arg;
	struct tsb_buf b;
	uint8_t hdr[28], *data;
	uint64_t c1, c2, c3;

	tsb_buf_init(&b);
	nbd_put_greeting(&b, 3);
	xwrite(s->fd, b.data, b.len);
	xread(s->fd, hdr, 4);
	for (;;) {
		uint32_t opt, len;

		xread(s->fd, hdr, 16);
		opt = tsb_load_be32(hdr + 8);
		len = tsb_load_be32(hdr + 12);
		data = malloc(len + 1);
		if (len)
			xread(s->fd, data, len);
		free(data);
		tsb_buf_reset(&b);
		if (opt == NBD_OPT_GO)
			nbd_put_info_export(&b, opt, 1 << 20,
					    NBD_FLAG_HAS_FLAGS |
					    NBD_FLAG_SEND_FLUSH);
		nbd_put_option_reply(&b, opt, NBD_REP_ACK, NULL, 0);
		xwrite(s->fd, b.data, b.len);
		if (opt == NBD_OPT_GO)
			break;
	}
	/* Three READs of 16 bytes at 100. */
	xread(s->fd, hdr, 28);
	c1 = tsb_load_be64(hdr + 8);
	xread(s->fd, hdr, 28);
	c2 = tsb_load_be64(hdr + 8);
	xread(s->fd, hdr, 28);
	c3 = tsb_load_be64(hdr + 8);
	tsb_buf_reset(&b);
	/* c2 first: an error chunk; then c1 as hole + data, out of order. */
	nbd_put_chunk_error(&b, NBD_REPLY_FLAG_DONE, c2, NBD_ENOSPC, "full");
	nbd_put_chunk_data_header(&b, 0, c1, 108, 8);
	tsb_buf_append(&b, "ABCDEFGH", 8);
	nbd_put_chunk_hole(&b, NBD_REPLY_FLAG_DONE, c1, 100, 8);
	/* c3: data outside the requested range: a protocol error. */
	nbd_put_chunk_data_header(&b, NBD_REPLY_FLAG_DONE, c3, 50, 4);
	tsb_buf_append(&b, "zzzz", 4);
	xwrite(s->fd, b.data, b.len);
	tsb_buf_fini(&b);
	return NULL;
}

static void test_client_scripted(void **state)
{
	struct nbd_client_config cfg = { .export_name = "", .structured = true };
	struct script s;
	struct nbd_client *cl;
	struct nbd_completion c;
	pthread_t thr;
	uint8_t a[16], b2[16], c3[16];
	uint64_t k1, k2, k3;
	char err[128];
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
	s.fd = sv[1];
	assert_int_equal(pthread_create(&thr, NULL, script_thread, &s), 0);
	assert_int_equal(nbd_client_connect_fd(sv[0], &cfg, &cl, err,
					       sizeof(err)), 0);
	assert_false(nbd_client_has_base_allocation(cl));
	memset(a, 0xff, sizeof(a));
	assert_int_equal(nbd_client_submit(cl, NBD_CMD_READ, 0, 100, 16, NULL,
					   a, NULL, 0, &k1), 0);
	assert_int_equal(nbd_client_submit(cl, NBD_CMD_READ, 0, 100, 16, NULL,
					   b2, NULL, 0, &k2), 0);
	assert_int_equal(nbd_client_submit(cl, NBD_CMD_READ, 0, 100, 16, NULL,
					   c3, NULL, 0, &k3), 0);
	assert_int_equal(nbd_client_wait(cl, &c), 0);
	assert_true(c.cookie == k2);
	assert_int_equal(c.err, -ENOSPC);
	assert_int_equal(nbd_client_wait(cl, &c), 0);
	assert_true(c.cookie == k1);
	assert_int_equal(c.err, 0);
	assert_memory_equal(a, "\0\0\0\0\0\0\0\0ABCDEFGH", 16);
	assert_int_equal(nbd_client_wait(cl, &c), -EPROTO);
	assert_int_equal(nbd_client_flush(cl), -EPROTO); /* stays failed */
	pthread_join(thr, NULL);
	nbd_client_close(cl);
	close(sv[1]);
}

struct listen_ctx {
	struct nbd_server *srv;
	int rc;
};

static void *serve_listen(void *arg)
{
	struct listen_ctx *l = arg;

	l->rc = nbd_server_serve(l->srv);
	return NULL;
}

/* TCP listener on an ephemeral port, then nbd_server_stop() while idle. */
static void test_server_tcp_and_stop(void **state)
{
	struct nbd_server_config scfg = { .export_name = "mem" };
	struct nbd_client_config ccfg = { .export_name = "mem",
					  .structured = true };
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct listen_ctx l;
	struct nbd_client *cl;
	struct mem m = { 0 };
	pthread_t thr;
	uint8_t buf[512];
	int fd;

	m.data = calloc(1, MEM_SIZE);
	assert_non_null(m.data);
	l.srv = nbd_server_new(&scfg, &mem_ops, &m);
	assert_non_null(l.srv);
	assert_int_equal(nbd_server_listen_tcp(l.srv, "127.0.0.1", "0"), 0);
	assert_true(nbd_server_port(l.srv) > 0);
	assert_int_equal(pthread_create(&thr, NULL, serve_listen, &l), 0);
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	sa.sin_port = htons((uint16_t)nbd_server_port(l.srv));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(nbd_client_connect_fd(fd, &ccfg, &cl, NULL, 0), 0);
	memset(buf, 0x42, sizeof(buf));
	assert_int_equal(nbd_client_pwrite(cl, buf, 512, 1024, NBD_CMD_FLAG_FUA), 0);
	nbd_client_close(cl);
	pthread_join(thr, NULL);
	assert_int_equal(l.rc, 0);
	assert_int_equal(m.data[1024], 0x42);

	/* Idle in accept: stop makes serve return -ECANCELED. */
	assert_int_equal(pthread_create(&thr, NULL, serve_listen, &l), 0);
	nbd_server_stop(l.srv);
	pthread_join(thr, NULL);
	assert_int_equal(l.rc, -ECANCELED);
	nbd_server_free(l.srv);
	free(m.data);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_greeting_and_flags),
		cmocka_unit_test(test_option_roundtrip),
		cmocka_unit_test(test_meta_request),
		cmocka_unit_test(test_option_reply_and_info),
		cmocka_unit_test(test_export_name_reply),
		cmocka_unit_test(test_request_roundtrip),
		cmocka_unit_test(test_replies_and_chunks),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_errno_map),
		cmocka_unit_test(test_server_options),
		cmocka_unit_test(test_server_export_name_and_abort),
		cmocka_unit_test(test_server_bad_requests),
		cmocka_unit_test(test_client_server_sync),
		cmocka_unit_test(test_client_server_async),
		cmocka_unit_test(test_client_scripted),
		cmocka_unit_test(test_server_tcp_and_stop),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
