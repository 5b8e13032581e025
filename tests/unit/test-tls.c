/*
 * Real TLS 1.3 connections between two threads: PSK and certificate
 * authentication, refusals (wrong key, plaintext client, other protocol
 * version), tampering detected by a relay that flips one byte, key file
 * checks (permissions, owner, symbolic links, FIFOs; the same for a
 * certificate's private key), key rollover (a server holding two keys
 * takes clients of either), abort and timeout. Prints the throughput of a
 * bulk transfer (TSB_TLS_MIB sets its size in MiB; default 256).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/rand.h>

#include "common/util.h"
#include "wire/lanes.h"
#include "wire/tls.h"
#include "wire/pacer.h"
#include "wire/wire.h"

#define HS_TIMEOUT_MS 10000

static char tmpdir[64];

static void path_in_tmp(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", tmpdir, name);
}

static void make_key(struct wire_key *k, const char *id)
{
	memset(k, 0, sizeof(*k));
	snprintf(k->id, sizeof(k->id), "%s", id);
	assert_int_equal(RAND_bytes(k->secret, sizeof(k->secret)), 1);
}

/* ---- one side of a connection ---- */

struct side {
	enum wire_tls_side tls_side;
	struct wire_key key;
	const char *cert, *keyfile, *ca; /* certificate mode when set */
	const char *peer_name;
	int fd;
	struct wire_tls *tls;
	struct wire_conn *conn;
	int err;
	char msg[WIRE_ERRMSG_MAX];
};

static void side_init(struct side *s, enum wire_tls_side tls_side,
		      const struct wire_key *key, int fd)
{
	memset(s, 0, sizeof(*s));
	s->tls_side = tls_side;
	if (key)
		s->key = *key;
	s->fd = fd;
}

static void *side_handshake(void *arg)
{
	struct side *s = arg;

	s->tls = wire_tls_new(s->tls_side);
	if (!s->tls) {
		s->err = -ENOMEM;
		return NULL;
	}
	if (s->cert)
		s->err = wire_tls_set_certs(s->tls, s->cert, s->keyfile, s->ca,
					    s->msg, sizeof(s->msg));
	else
		s->err = wire_tls_set_psk(s->tls, &s->key);
	if (s->err) {
		close(s->fd);
		return NULL;
	}
	s->conn = wire_conn_new_take(s->tls, s->fd);
	if (!s->conn) {
		s->err = -ENOMEM;
		return NULL;
	}
	if (s->peer_name)
		(void)wire_conn_set_peer_name(s->conn, s->peer_name);
	s->err = wire_conn_handshake(s->conn, HS_TIMEOUT_MS);
	if (s->err)
		snprintf(s->msg, sizeof(s->msg), "%s",
			 wire_conn_errmsg(s->conn));
	return NULL;
}

static void side_fini(struct side *s)
{
	wire_conn_free(s->conn);
	wire_tls_free(s->tls);
	s->conn = NULL;
	s->tls = NULL;
}

/* Handshakes client and server concurrently (server in a thread). */
static void handshake_pair(struct side *cli, struct side *srv)
{
	pthread_t t;

	assert_int_equal(pthread_create(&t, NULL, side_handshake, srv), 0);
	side_handshake(cli);
	assert_int_equal(pthread_join(t, NULL), 0);
	if (cli->err || srv->err)
		printf("# client: %d %s\n# server: %d %s\n", cli->err,
		       cli->msg, srv->err, srv->msg);
}

static void socket_pair(int *a, int *b)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv),
			 0);
	*a = sv[0];
	*b = sv[1];
}

/* Client and server with a shared key over a socketpair, handshake done. */
static void psk_pair(struct side *cli, struct side *srv)
{
	struct wire_key k;
	int a, b;

	make_key(&k, "test-key");
	socket_pair(&a, &b);
	side_init(cli, WIRE_TLS_CLIENT, &k, a);
	side_init(srv, WIRE_TLS_SERVER, &k, b);
	handshake_pair(cli, srv);
	assert_int_equal(cli->err, 0);
	assert_int_equal(srv->err, 0);
}

/* ---- bulk transfer both ways over TCP loopback ---- */

#define BULK_FRAME (1u << 20)

struct bulk {
	struct wire_conn *conn;
	size_t frames;
	const uint8_t *pattern; /* BULK_FRAME bytes */
	int err;
	size_t got;
	uint64_t acks;
};

/* Frame i: the pattern with i in its first 8 bytes. */
static void stamp(uint8_t *buf, const uint8_t *pattern, uint64_t i)
{
	memcpy(buf, pattern, BULK_FRAME);
	tsb_put_be64(buf, i);
}

/* Server reader: checks every STREAM frame, answers each with an ACK. */
static void *bulk_server(void *arg)
{
	struct bulk *b = arg;
	struct tsb_buf out;
	struct wire_msg m;
	int r;

	tsb_buf_init(&out);
	for (;;) {
		r = wire_conn_read_msg(b->conn, WIRE_ROLE_SENDER, &m);
		if (r <= 0) {
			b->err = r;
			break;
		}
		if (m.type != WIRE_MSG_STREAM || m.u.run.len != BULK_FRAME ||
		    tsb_load_be64(m.u.run.data) != b->got ||
		    memcmp(m.u.run.data + 8, b->pattern + 8, BULK_FRAME - 8)) {
			b->err = -EBADMSG;
			break;
		}
		b->got++;
		tsb_buf_reset(&out);
		/* No cmocka asserts outside the main thread. */
		r = wire_encode_u64(&out, WIRE_MSG_ACK, b->got);
		if (!r)
			r = wire_conn_write(b->conn, out.data, out.len);
		if (r) {
			b->err = r;
			break;
		}
	}
	tsb_buf_fini(&out);
	return NULL;
}

/* Client reader: counts ACKs until the peer closes. */
static void *bulk_acks(void *arg)
{
	struct bulk *b = arg;
	struct wire_msg m;
	int r;

	for (;;) {
		r = wire_conn_read_msg(b->conn, WIRE_ROLE_RECEIVER, &m);
		if (r <= 0) {
			b->err = r;
			break;
		}
		if (m.type != WIRE_MSG_ACK || m.u.ack != b->acks + 1) {
			b->err = -EBADMSG;
			break;
		}
		b->acks++;
		if (b->acks == b->frames)
			break;
	}
	return NULL;
}

static double cpu_seconds(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void test_psk_bulk_both_ways(void **state)
{
	struct side cli, srv;
	struct bulk sb = { 0 }, cb = { 0 };
	struct wire_conn_stats st;
	struct tsb_buf frame, out;
	struct wire_key k;
	pthread_t ts, tc;
	uint8_t *pattern;
	uint16_t port;
	int lfd, cfd, sfd;
	size_t mib = 256, i;
	uint64_t t0, t1;
	const char *env = getenv("TSB_TLS_MIB");
	uint64_t v;
	double secs, cpu0, cpu;

	if (env && tsb_parse_u64(env, 1, 1u << 16, &v) == 0)
		mib = v;
	make_key(&k, "bulk-key");
	assert_int_equal(wire_tcp_listen("127.0.0.1", "0", 4, &lfd), 0);
	assert_int_equal(wire_tcp_local_port(lfd, &port), 0);
	{
		char ps[8], msg[128];

		snprintf(ps, sizeof(ps), "%u", port);
		assert_int_equal(wire_tcp_connect("127.0.0.1", ps, 5000, &cfd,
						  msg, sizeof(msg)), 0);
	}
	assert_int_equal(wire_tcp_accept(lfd, &sfd), 0);
	close(lfd);
	assert_int_equal(wire_tcp_tune(cfd, 0), 0);
	assert_int_equal(wire_tcp_tune(sfd, 0), 0);
	side_init(&cli, WIRE_TLS_CLIENT, &k, cfd);
	side_init(&srv, WIRE_TLS_SERVER, &k, sfd);
	handshake_pair(&cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer(cli.conn), "key bulk-key");

	pattern = malloc(BULK_FRAME);
	assert_non_null(pattern);
	assert_int_equal(RAND_bytes(pattern, BULK_FRAME), 1);
	tsb_buf_init(&frame);
	tsb_buf_init(&out);
	assert_non_null(tsb_buf_extend(&frame, BULK_FRAME));

	sb.conn = srv.conn;
	sb.pattern = pattern;
	cb.conn = cli.conn;
	cb.frames = mib;
	assert_int_equal(pthread_create(&ts, NULL, bulk_server, &sb), 0);
	assert_int_equal(pthread_create(&tc, NULL, bulk_acks, &cb), 0);

	t0 = tsb_now_ns();
	cpu0 = cpu_seconds();
	for (i = 0; i < mib; i++) {
		/* Header and payload in one write, as the pipeline would. */
		tsb_buf_reset(&out);
		stamp(frame.data, pattern, i);
		assert_int_equal(wire_encode_run(&out, WIRE_MSG_STREAM,
						 frame.data, BULK_FRAME, NULL), 0);
		assert_int_equal(wire_conn_write(cli.conn, out.data, out.len), 0);
	}
	assert_int_equal(pthread_join(tc, NULL), 0);
	t1 = tsb_now_ns();
	cpu = cpu_seconds() - cpu0;
	assert_int_equal(cb.err, 0);
	assert_int_equal(cb.acks, mib);
	assert_int_equal(wire_conn_close(cli.conn), 0);
	assert_int_equal(pthread_join(ts, NULL), 0);
	/* Clean close_notify between frames: read returns 0. */
	assert_int_equal(sb.err, 0);
	assert_int_equal(sb.got, mib);

	wire_conn_get_stats(cli.conn, &st);
	secs = (double)(t1 - t0) / 1e9;
	printf("# TLS 1.3 (%s) loopback: %zu MiB in %.3f s = %.0f MiB/s "
	       "(%.1f MB/s on the socket, TLS overhead %.2f%%); CPU of both "
	       "ends incl. test checks: %.3f s = %.2f s/GiB\n",
	       "AES-128-GCM", mib, secs, (double)mib / secs,
	       (double)st.net_out / secs / 1e6,
	       100.0 * ((double)st.net_out - (double)st.app_out) /
		       (double)st.app_out,
	       cpu, cpu * 1024 / (double)mib);
	assert_true(st.app_out >= mib * BULK_FRAME);
	assert_true(st.net_out > st.app_out);

	tsb_buf_fini(&frame);
	tsb_buf_fini(&out);
	free(pattern);
	side_fini(&cli);
	side_fini(&srv);
}

/* ---- a shared WAN budget (wire/pacer.h) ---- */

static void test_pacer_book(void **state)
{
	struct wire_pacer *p = wire_pacer_new(1000000);	/* 1 MB/s */
	const uint64_t s = 1000000000ull, burst = WIRE_PACER_BURST_NS;
	uint64_t bytes, wait;

	(void)state;
	assert_null(wire_pacer_new(0));
	assert_non_null(p);
	/* Idle: the first 100 kB may go at once (a burst's worth early). */
	assert_int_equal(wire_pacer_book(p, 100000, 10 * s), 10 * s);
	/* The next waits for the first's 100 ms, less the burst. */
	assert_int_equal(wire_pacer_book(p, 100000, 10 * s), 10 * s + s / 10 - burst);
	/* A third writer queues behind both: turns in order of asking. */
	assert_int_equal(wire_pacer_book(p, 50000, 10 * s + 1), 10 * s + 2 * s / 10 - burst);
	/* After a long idle time no more than a burst is lent. */
	assert_int_equal(wire_pacer_book(p, 1000, 20 * s), 20 * s);
	assert_int_equal(wire_pacer_book(p, 20000, 20 * s), 20 * s);
	assert_int_equal(wire_pacer_book(p, 1000, 20 * s), 20 * s - burst + 21 * s / 1000);
	wire_pacer_stats(p, &bytes, &wait);
	assert_int_equal(bytes, 272000);
	assert_int_equal(wait, 0);	/* book() itself never sleeps */
	wire_pacer_free(p);
}

/* Writes on a paced connection all pass through the budget. */
static void test_paced_write(void **state)
{
	struct wire_pacer *p = wire_pacer_new(1ull << 40);
	struct side cli, srv;
	struct wire_frame f;
	uint8_t buf[100000];	/* two chunks; fits the socket buffer */
	struct tsb_buf out;
	uint64_t bytes, wait, got = 0;

	(void)state;
	psk_pair(&cli, &srv);
	wire_tls_set_pacer(cli.tls, p);
	memset(buf, 7, sizeof(buf));
	tsb_buf_init(&out);
	assert_int_equal(wire_encode_run(&out, WIRE_MSG_STREAM, buf, sizeof(buf), NULL), 0);
	assert_int_equal(wire_conn_write(cli.conn, out.data, out.len), 0);
	assert_int_equal(wire_conn_read_frame(srv.conn, &f), 1);
	got = f.len;
	assert_true(got > 0);
	wire_pacer_stats(p, &bytes, &wait);
	assert_int_equal(bytes, out.len);
	tsb_buf_fini(&out);
	side_fini(&cli);
	side_fini(&srv);
	wire_pacer_free(p);
}

/* ---- authentication failures ---- */

static void test_psk_wrong_secret(void **state)
{
	struct wire_key k1, k2;
	struct side cli, srv;
	int a, b;

	make_key(&k1, "same-id");
	make_key(&k2, "same-id");
	socket_pair(&a, &b);
	side_init(&cli, WIRE_TLS_CLIENT, &k1, a);
	side_init(&srv, WIRE_TLS_SERVER, &k2, b);
	handshake_pair(&cli, &srv);
	assert_int_equal(cli.err, -EACCES);
	assert_int_equal(srv.err, -EACCES);
	assert_non_null(strstr(cli.msg, "bad PSK"));
	assert_non_null(strstr(srv.msg, "does not share our key"));
	side_fini(&cli);
	side_fini(&srv);
}

static void test_psk_wrong_key_id(void **state)
{
	struct wire_key k1, k2;
	struct side cli, srv;
	int a, b;

	make_key(&k1, "site-a-key");
	make_key(&k2, "site-b-key");
	socket_pair(&a, &b);
	side_init(&cli, WIRE_TLS_CLIENT, &k1, a);
	side_init(&srv, WIRE_TLS_SERVER, &k2, b);
	handshake_pair(&cli, &srv);
	assert_int_equal(cli.err, -EACCES);
	assert_int_equal(srv.err, -EACCES);
	assert_non_null(strstr(srv.msg, "'site-a-key'"));
	assert_non_null(strstr(srv.msg, "'site-b-key'"));
	assert_non_null(strstr(cli.msg, "key"));
	side_fini(&cli);
	side_fini(&srv);
}

static void test_plaintext_client_refused(void **state)
{
	struct side srv;
	struct wire_key k;
	pthread_t t;
	char buf[64];
	int a, b;
	ssize_t n;

	make_key(&k, "k");
	socket_pair(&a, &b);
	side_init(&srv, WIRE_TLS_SERVER, &k, b);
	assert_int_equal(pthread_create(&t, NULL, side_handshake, &srv), 0);
	/* What `echo hi | nc` does. */
	assert_int_equal(write(a, "hi\n", 3), 3);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(srv.err, -EPROTO);
	assert_non_null(strstr(srv.msg, "not speaking TLS"));
	assert_non_null(strstr(srv.msg, "'h'"));
	side_fini(&srv); /* closes b */
	n = read(a, buf, sizeof(buf));
	assert_true(n <= 0);
	close(a);
}

static void test_peer_closes_before_handshake(void **state)
{
	struct side srv;
	struct wire_key k;
	pthread_t t;
	int a, b;

	make_key(&k, "k");
	socket_pair(&a, &b);
	side_init(&srv, WIRE_TLS_SERVER, &k, b);
	assert_int_equal(pthread_create(&t, NULL, side_handshake, &srv), 0);
	close(a);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(srv.err, -ECONNRESET);
	assert_non_null(strstr(srv.msg, "closed"));
	side_fini(&srv);
}

static void test_handshake_timeout(void **state)
{
	struct wire_tls *tls = wire_tls_new(WIRE_TLS_SERVER);
	struct wire_conn *c;
	struct wire_key k;
	int a, b;

	make_key(&k, "k");
	assert_int_equal(wire_tls_set_psk(tls, &k), 0);
	socket_pair(&a, &b);
	c = wire_conn_new_take(tls, b);
	assert_non_null(c);
	assert_int_equal(wire_conn_handshake(c, 100), -ETIMEDOUT);
	assert_non_null(strstr(wire_conn_errmsg(c), "100 ms"));
	wire_conn_free(c);
	wire_tls_free(tls);
	close(a);
}

/* ---- tampering ---- */

#define TAMPER_FRAMES 300
#define TAMPER_FRAME_LEN 16000
#define TAMPER_RECORD 40 /* flip a byte in this client->server record */

struct relay {
	int a, b; /* a: client side, b: server side */
	/* client->server TLS record parser */
	uint8_t hdr[5];
	size_t hdr_got;
	size_t body_len, body_pos;
	unsigned int records;
	bool flipped;
};

static void relay_scan(struct relay *r, uint8_t *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		if (r->hdr_got < 5) {
			r->hdr[r->hdr_got++] = p[i];
			if (r->hdr_got == 5) {
				r->body_len = (size_t)r->hdr[3] << 8 | r->hdr[4];
				r->body_pos = 0;
				r->records++;
				if (!r->body_len)
					r->hdr_got = 0;
			}
			continue;
		}
		if (r->records == TAMPER_RECORD && r->hdr[0] == 0x17 &&
		    r->body_pos == r->body_len / 2 && !r->flipped) {
			p[i] ^= 0x01;
			r->flipped = true;
		}
		if (++r->body_pos == r->body_len)
			r->hdr_got = 0;
	}
}

static bool pump(int from, int to, struct relay *scan)
{
	uint8_t buf[65536];
	ssize_t n, w, off = 0;

	n = read(from, buf, sizeof(buf));
	if (n <= 0)
		return false;
	if (scan)
		relay_scan(scan, buf, (size_t)n);
	while (off < n) {
		w = write(to, buf + off, (size_t)(n - off));
		if (w <= 0)
			return false;
		off += w;
	}
	return true;
}

static void *relay_main(void *arg)
{
	struct relay *r = arg;
	struct pollfd pfd[2] = { { .fd = r->a, .events = POLLIN },
				 { .fd = r->b, .events = POLLIN } };

	for (;;) {
		if (poll(pfd, 2, 10000) <= 0)
			break;
		if (pfd[0].revents && !pump(r->a, r->b, r))
			break;
		if (pfd[1].revents && !pump(r->b, r->a, NULL))
			break;
	}
	close(r->a);
	close(r->b);
	return NULL;
}

struct tamper_rx {
	struct wire_conn *conn;
	int err;
	char msg[WIRE_ERRMSG_MAX];
	size_t good;
	bool corrupt_delivered;
};

static void tamper_fill(uint8_t *p, size_t i)
{
	size_t j;

	tsb_put_be64(p, i);
	for (j = 8; j < TAMPER_FRAME_LEN; j++)
		p[j] = (uint8_t)(i * 31 + j);
}

static void *tamper_reader(void *arg)
{
	struct tamper_rx *t = arg;
	uint8_t want[TAMPER_FRAME_LEN];
	struct wire_msg m;
	int r;

	for (;;) {
		r = wire_conn_read_msg(t->conn, WIRE_ROLE_SENDER, &m);
		if (r <= 0) {
			t->err = r;
			snprintf(t->msg, sizeof(t->msg), "%s",
				 wire_conn_errmsg(t->conn));
			/* Drop the connection, as the pipeline would. */
			wire_conn_abort(t->conn);
			return NULL;
		}
		tamper_fill(want, t->good);
		if (m.type != WIRE_MSG_STREAM ||
		    m.u.run.len != TAMPER_FRAME_LEN ||
		    memcmp(m.u.run.data, want, TAMPER_FRAME_LEN)) {
			t->corrupt_delivered = true;
			wire_conn_abort(t->conn);
			return NULL;
		}
		t->good++;
	}
}

static void test_tampered_record_detected(void **state)
{
	struct relay rel = { 0 };
	struct tamper_rx rx = { 0 };
	struct side cli, srv;
	struct wire_key k;
	struct tsb_buf out;
	uint8_t data[TAMPER_FRAME_LEN];
	pthread_t tr, trx;
	int ca, ra, rb, sb;
	size_t i;
	int err = 0;

	make_key(&k, "tamper");
	socket_pair(&ca, &ra);
	socket_pair(&rb, &sb);
	rel.a = ra;
	rel.b = rb;
	assert_int_equal(pthread_create(&tr, NULL, relay_main, &rel), 0);
	side_init(&cli, WIRE_TLS_CLIENT, &k, ca);
	side_init(&srv, WIRE_TLS_SERVER, &k, sb);
	handshake_pair(&cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);

	rx.conn = srv.conn;
	assert_int_equal(pthread_create(&trx, NULL, tamper_reader, &rx), 0);
	tsb_buf_init(&out);
	for (i = 0; i < TAMPER_FRAMES && !err; i++) {
		tsb_buf_reset(&out);
		tamper_fill(data, i);
		assert_int_equal(wire_encode_run(&out, WIRE_MSG_STREAM, data,
						 sizeof(data), NULL), 0);
		err = wire_conn_write(cli.conn, out.data, out.len);
	}
	tsb_buf_fini(&out);
	assert_int_equal(pthread_join(trx, NULL), 0);
	/* The receiver dropped the connection: the relay sees it and ends. */
	wire_conn_abort(srv.conn);
	wire_conn_abort(cli.conn);
	assert_int_equal(pthread_join(tr, NULL), 0);

	printf("# tamper: %zu intact frames delivered, then: %s\n", rx.good,
	       rx.msg);
	assert_true(rel.flipped);
	assert_false(rx.corrupt_delivered);
	assert_int_equal(rx.err, -EBADMSG);
	assert_non_null(strstr(rx.msg, "integrity"));
	assert_true(rx.good < TAMPER_FRAMES);
	side_fini(&cli);
	side_fini(&srv);
}

/* ---- HELLO over a real connection ---- */

struct hello_side {
	struct wire_conn *conn;
	struct wire_hello_args args;
	struct wire_hello peer;
	int err;
	char site[WIRE_MAX_ID + 1];
};

static void *hello_thread(void *arg)
{
	struct hello_side *h = arg;

	h->err = wire_conn_hello(h->conn, &h->args, &h->peer);
	if (!h->err)
		snprintf(h->site, sizeof(h->site), "%.*s", (int)h->peer.site.len,
			 h->peer.site.p);
	return NULL;
}

static void test_hello_exchange(void **state)
{
	struct side cli, srv;
	struct hello_side hs = { 0 }, hc = { 0 };
	static const uint8_t filter[] = { 1, 2, 3, 4 };
	pthread_t t;

	psk_pair(&cli, &srv);
	hc.conn = cli.conn;
	hc.args = (struct wire_hello_args){ .role = WIRE_ROLE_SENDER,
					    .caps = WIRE_CAP_ZSTD,
					    .site = "tokyo-1",
					    .migration = "m-42",
					    .vm = "vm7",
					    .tenant = "acme" };
	hs.conn = srv.conn;
	hs.args = (struct wire_hello_args){ .role = WIRE_ROLE_RECEIVER,
					    .caps = WIRE_CAP_ZSTD | WIRE_CAP_REF,
					    .site = "osaka-2",
					    .tenant = "acme",
					    .store_gen = 99,
					    .filter_kind = 1,
					    .filter = filter,
					    .filter_len = sizeof(filter) };
	assert_int_equal(pthread_create(&t, NULL, hello_thread, &hs), 0);
	hello_thread(&hc);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(hc.err, 0);
	assert_int_equal(hs.err, 0);
	assert_string_equal(hc.site, "osaka-2");
	assert_string_equal(hs.site, "tokyo-1");
	assert_true(hc.peer.store_gen == 99);
	assert_int_equal(hc.peer.role, WIRE_ROLE_RECEIVER);
	side_fini(&cli);
	side_fini(&srv);
}

static void test_hello_version_mismatch(void **state)
{
	struct side cli, srv;
	struct hello_side hs = { 0 };
	struct tsb_buf b;
	struct wire_msg m;
	pthread_t t;

	psk_pair(&cli, &srv);
	hs.conn = srv.conn;
	hs.args = (struct wire_hello_args){ .role = WIRE_ROLE_RECEIVER,
					    .site = "osaka" };
	assert_int_equal(pthread_create(&t, NULL, hello_thread, &hs), 0);
	/* A HELLO from a future version 2 peer. */
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_hello(&b, &(struct wire_hello_args){
						       .role = WIRE_ROLE_SENDER,
						       .site = "future" }),
			 0);
	b.data[WIRE_HDR_LEN + 5] = 2;
	assert_int_equal(wire_conn_write(cli.conn, b.data, b.len), 0);
	tsb_buf_fini(&b);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(hs.err, -EOPNOTSUPP);
	assert_non_null(strstr(wire_conn_errmsg(srv.conn), "version 2"));
	/* The old side told the new side why, before giving up. */
	assert_int_equal(wire_conn_read_msg(cli.conn, WIRE_ROLE_RECEIVER, &m),
			 1);
	assert_int_equal(m.type, WIRE_MSG_HELLO);
	assert_int_equal(wire_conn_read_msg(cli.conn, WIRE_ROLE_RECEIVER, &m),
			 1);
	assert_int_equal(m.type, WIRE_MSG_ERROR);
	assert_int_equal(m.u.status.code, WIRE_CODE_VERSION);
	side_fini(&cli);
	side_fini(&srv);
}

static void test_message_from_wrong_role(void **state)
{
	struct side cli, srv;
	struct tsb_buf b;
	struct wire_msg m;
	static const uint8_t h[1][WIRE_HASH_LEN];

	psk_pair(&cli, &srv);
	tsb_buf_init(&b);
	/* NEED only goes receiver -> sender; the client here is the sender. */
	assert_int_equal(wire_encode_need(&b, h, 1), 0);
	assert_int_equal(wire_conn_write(cli.conn, b.data, b.len), 0);
	tsb_buf_fini(&b);
	assert_int_equal(wire_conn_read_msg(srv.conn, WIRE_ROLE_SENDER, &m),
			 -EPROTO);
	assert_non_null(strstr(wire_conn_errmsg(srv.conn), "NEED"));
	/* Sticky. */
	assert_int_equal(wire_conn_read_msg(srv.conn, WIRE_ROLE_SENDER, &m),
			 -EPROTO);
	side_fini(&cli);
	side_fini(&srv);
}

/* ---- close, abort, timeout ---- */

struct reader {
	struct wire_conn *conn;
	int err;
};

static void *read_one(void *arg)
{
	struct reader *r = arg;
	struct wire_frame f;

	r->err = wire_conn_read_frame(r->conn, &f);
	return NULL;
}

static void test_abort_wakes_reader(void **state)
{
	struct side cli, srv;
	struct reader rd = { 0 };
	pthread_t t;

	psk_pair(&cli, &srv);
	rd.conn = srv.conn;
	assert_int_equal(pthread_create(&t, NULL, read_one, &rd), 0);
	usleep(50000); /* let it block; the result does not depend on it */
	wire_conn_abort(srv.conn);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(rd.err, -ECANCELED);
	assert_non_null(strstr(wire_conn_errmsg(srv.conn), "aborted"));
	side_fini(&cli);
	side_fini(&srv);
}

static void test_read_timeout(void **state)
{
	struct side cli, srv;
	struct wire_frame f;

	psk_pair(&cli, &srv);
	wire_conn_set_timeout(srv.conn, 100);
	assert_int_equal(wire_conn_read_frame(srv.conn, &f), -ETIMEDOUT);
	side_fini(&cli);
	side_fini(&srv);
}

static void test_close_without_notify(void **state)
{
	struct side cli, srv;
	struct wire_frame f;
	struct tsb_buf b;

	psk_pair(&cli, &srv);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_u64(&b, WIRE_MSG_PING, 7), 0);
	/* Half a frame, then the socket goes away without close_notify. */
	assert_int_equal(wire_conn_write(cli.conn, b.data, 5), 0);
	tsb_buf_fini(&b);
	wire_conn_free(cli.conn);
	cli.conn = NULL;
	assert_int_equal(wire_conn_read_frame(srv.conn, &f), -ECONNRESET);
	assert_non_null(strstr(wire_conn_errmsg(srv.conn), "closed"));
	side_fini(&cli);
	side_fini(&srv);
}

/* ---- key files ---- */

static void test_keygen_and_load(void **state)
{
	char path[128], msg[WIRE_ERRMSG_MAX];
	struct wire_key k1, k2;
	struct stat st;

	path_in_tmp(path, sizeof(path), "k1.key");
	assert_int_equal(wire_keygen(path, "dc-pair-1", NULL, msg, sizeof(msg)), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(wire_key_load(path, &k1, msg, sizeof(msg)), 0);
	assert_string_equal(k1.id, "dc-pair-1");
	/* Refuses to overwrite. */
	assert_int_equal(wire_keygen(path, NULL, NULL, msg, sizeof(msg)), -EEXIST);
	assert_non_null(strstr(msg, "refusing to overwrite"));
	assert_int_equal(wire_key_load(path, &k2, msg, sizeof(msg)), 0);
	assert_memory_equal(k1.secret, k2.secret, WIRE_KEY_LEN);

	path_in_tmp(path, sizeof(path), "k2.key");
	assert_int_equal(wire_keygen(path, NULL, NULL, msg, sizeof(msg)), 0);
	assert_int_equal(wire_key_load(path, &k2, msg, sizeof(msg)), 0);
	assert_true(!strncmp(k2.id, "tsb-", 4));
	assert_memory_not_equal(k1.secret, k2.secret, WIRE_KEY_LEN);
	/* Bad id. */
	path_in_tmp(path, sizeof(path), "k3.key");
	assert_int_equal(wire_keygen(path, "has space", NULL, msg, sizeof(msg)),
			 -EINVAL);
}

static void test_key_file_mode_refused(void **state)
{
	char path[128], msg[WIRE_ERRMSG_MAX];
	struct wire_key k;

	path_in_tmp(path, sizeof(path), "open.key");
	assert_int_equal(wire_keygen(path, NULL, NULL, msg, sizeof(msg)), 0);
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EPERM);
	printf("# %s\n", msg);
	assert_non_null(strstr(msg, "chmod 600"));
	assert_non_null(strstr(msg, "0644"));
	assert_int_equal(chmod(path, 0640), 0);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EPERM);
	assert_int_equal(chmod(path, 0400), 0);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), 0);
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static void test_key_file_malformed(void **state)
{
	static const char *const bad[] = {
		"",
		"# only a comment\n",
		"tsubame-psk-v2 id 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"tsubame-psk-v1 id 00112233445566778899aabbccddeeff00112233445566778899aabbccddee\n",
		"tsubame-psk-v1 id 00112233445566778899aabbccddeeff00112233445566778899aabbccddeefg\n",
		"tsubame-psk-v1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n",
		"tsubame-psk-v1 id 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff extra\n",
	};
	char path[128], msg[WIRE_ERRMSG_MAX];
	struct wire_key k;
	size_t i;

	path_in_tmp(path, sizeof(path), "bad.key");
	for (i = 0; i < TSB_ARRAY_SIZE(bad); i++) {
		write_file(path, bad[i], 0600);
		assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)),
				 -EBADMSG);
		assert_non_null(strstr(msg, "malformed"));
	}
	write_file(path,
		   "# made by hand\n\ntsubame-psk-v1 hand-made 00112233445566778899AABBCCDDEEFF00112233445566778899aabbccddeeff\r\n",
		   0600);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), 0);
	assert_string_equal(k.id, "hand-made");
	assert_int_equal(k.secret[0], 0x00);
	assert_int_equal(k.secret[15], 0xff);
	path_in_tmp(path, sizeof(path), "missing.key");
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -ENOENT);
	assert_non_null(strstr(msg, "missing.key"));
}

/* A key line for k. */
static void key_line(char *buf, size_t len, const struct wire_key *k)
{
	size_t n = (size_t)snprintf(buf, len, "%s %s ", WIRE_KEY_MAGIC, k->id);

	for (size_t i = 0; i < WIRE_KEY_LEN && n + 3 < len; i++)
		n += (size_t)snprintf(buf + n, len - n, "%02x", k->secret[i]);
	snprintf(buf + n, len - n, "\n");
}

/* Writes a key file of one key (b NULL) or two (a first), mode 0600. */
static void write_keys(const char *path, const struct wire_key *a, const struct wire_key *b)
{
	char text[512], la[200], lb[200] = "";

	key_line(la, sizeof(la), a);
	if (b)
		key_line(lb, sizeof(lb), b);
	snprintf(text, sizeof(text), "# key rollover\n%s\n# the other one\n%s", la, lb);
	write_file(path, text, 0600);
}

/* A PSK handshake between a client and a server loading these key files. */
static void handshake_files(const char *cli_path, const char *srv_path, struct side *cli,
			    struct side *srv)
{
	char msg[WIRE_ERRMSG_MAX];
	struct wire_key kc, ks;
	int a, b;

	assert_int_equal(wire_key_load(cli_path, &kc, msg, sizeof(msg)), 0);
	assert_int_equal(wire_key_load(srv_path, &ks, msg, sizeof(msg)), 0);
	socket_pair(&a, &b);
	side_init(cli, WIRE_TLS_CLIENT, &kc, a);
	side_init(srv, WIRE_TLS_SERVER, &ks, b);
	handshake_pair(cli, srv);
	wire_key_wipe(&kc);
	wire_key_wipe(&ks);
}

static void test_key_rollover(void **state)
{
	char old_only[128], new_only[128], old_new[128], new_old[128], other[128];
	char msg[WIRE_ERRMSG_MAX];
	struct wire_key kold, knew, kother, k;
	struct side cli, srv;

	make_key(&kold, "pair-2026");
	make_key(&knew, "pair-2027");
	make_key(&kother, "pair-other");
	path_in_tmp(old_only, sizeof(old_only), "old.key");
	path_in_tmp(new_only, sizeof(new_only), "new.key");
	path_in_tmp(old_new, sizeof(old_new), "old-new.key");
	path_in_tmp(new_old, sizeof(new_old), "new-old.key");
	path_in_tmp(other, sizeof(other), "other.key");
	write_keys(old_only, &kold, NULL);
	write_keys(new_only, &knew, NULL);
	write_keys(old_new, &kold, &knew);
	write_keys(new_old, &knew, &kold);
	write_keys(other, &kother, NULL);

	assert_int_equal(wire_key_load(old_new, &k, msg, sizeof(msg)), 0);
	assert_string_equal(k.id, "pair-2026");
	assert_true(k.has_alt);
	assert_string_equal(k.alt_id, "pair-2027");
	assert_memory_equal(k.alt_secret, knew.secret, WIRE_KEY_LEN);
	assert_int_equal(wire_key_load(old_only, &k, msg, sizeof(msg)), 0);
	assert_false(k.has_alt);

	/* A server holding both takes a client of the old key and one of the new. */
	handshake_files(old_only, old_new, &cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer(srv.conn), "key pair-2026");
	side_fini(&cli);
	side_fini(&srv);
	handshake_files(new_only, old_new, &cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer(srv.conn), "key pair-2027");
	side_fini(&cli);
	side_fini(&srv);
	/* Mid-change: both sides hold both, in either order. */
	handshake_files(new_old, old_new, &cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer(srv.conn), "key pair-2027");
	side_fini(&cli);
	side_fini(&srv);
	handshake_files(old_new, new_old, &cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer(srv.conn), "key pair-2026");
	side_fini(&cli);
	side_fini(&srv);

	/* A client uses its first key only: a server with just the other refuses. */
	handshake_files(new_old, old_only, &cli, &srv);
	assert_int_equal(srv.err, -EACCES);
	assert_non_null(strstr(srv.msg, "'pair-2027'"));
	side_fini(&cli);
	side_fini(&srv);
	/* A third key is refused, and the server names both of its own. */
	handshake_files(other, old_new, &cli, &srv);
	assert_int_equal(srv.err, -EACCES);
	assert_int_not_equal(cli.err, 0);
	printf("# %s\n", srv.msg);
	assert_non_null(strstr(srv.msg, "'pair-other'"));
	assert_non_null(strstr(srv.msg, "'pair-2026' and 'pair-2027'"));
	side_fini(&cli);
	side_fini(&srv);
	/* The right id with another secret is no key of ours either. */
	make_key(&kother, "pair-2027");
	write_keys(other, &kother, NULL);
	handshake_files(other, old_new, &cli, &srv);
	assert_int_equal(srv.err, -EACCES);
	side_fini(&cli);
	side_fini(&srv);
	wire_key_wipe(&k);
}

/* tenants= in a key line binds what the key's holder may do on a server. */
static void test_key_tenants(void **state)
{
	static const char *bad[] = {
		"tenants=", "tenants=a,,b", "tenants=,a", "tenants=a,", "tenant=a",
		"tenants=a b", "x=1",
	};
	char path[128], cli_path[128], la[200], text[1200], msg[WIRE_ERRMSG_MAX];
	struct wire_key k, kb, kc;
	struct side cli, srv;
	size_t i;

	(void)state;
	assert_true(wire_tenants_allow("", "anyone", 6));
	assert_true(wire_tenants_allow("acme,beta", "beta", 4));
	assert_false(wire_tenants_allow("acme,beta", "bet", 3));
	assert_false(wire_tenants_allow("acme,beta", "acme,beta", 9));
	assert_false(wire_tenants_allow("acme", "", 0));
	assert_true(wire_tenants_valid("a,b-c,d_1", 9));
	assert_false(wire_tenants_valid("a,,b", 4));

	make_key(&kb, "bound");
	key_line(la, sizeof(la), &kb);
	la[strlen(la) - 1] = '\0';
	path_in_tmp(path, sizeof(path), "bound.key");
	snprintf(text, sizeof(text), "%s tenants=acme,beta\n", la);
	write_file(path, text, 0600);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), 0);
	assert_string_equal(k.tenants, "acme,beta");
	/* A mistyped or empty binding is an error, never a site key. */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(text, sizeof(text), "%s %s\n", la, bad[i]);
		write_file(path, text, 0600);
		assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EBADMSG);
	}
	/* Too long a list. */
	{
		size_t n = (size_t)snprintf(text, sizeof(text), "%s tenants=t", la);

		for (i = 0; i < WIRE_TENANTS_MAX / 2; i++)
			n += (size_t)snprintf(text + n, sizeof(text) - n, ",t");
		snprintf(text + n, sizeof(text) - n, "\n");
		write_file(path, text, 0600);
		assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EBADMSG);
	}
	assert_int_equal(unlink(path), 0);
	assert_int_equal(wire_keygen(path, "gen", "a,,b", msg, sizeof(msg)), -EINVAL);
	assert_int_equal(wire_keygen(path, "gen", "acme", msg, sizeof(msg)), 0);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), 0);
	assert_string_equal(k.tenants, "acme");

	/* The server knows the tenants of the key the client used. */
	snprintf(text, sizeof(text), "%s tenants=acme,beta\n", la);
	write_file(path, text, 0600);
	path_in_tmp(cli_path, sizeof(cli_path), "bound-client.key");
	write_keys(cli_path, &kb, NULL);
	handshake_files(cli_path, path, &cli, &srv);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer_tenants(srv.conn), "acme,beta");
	assert_true(wire_conn_peer_may_act_for(srv.conn, "acme", 4));
	assert_false(wire_conn_peer_may_act_for(srv.conn, "gamma", 5));
	side_fini(&cli);
	side_fini(&srv);
	/* During a rollover each key keeps its own binding. */
	make_key(&kc, "site");
	key_line(text, sizeof(text), &kc);
	snprintf(text + strlen(text), sizeof(text) - strlen(text), "%s tenants=acme\n", la);
	write_file(path, text, 0600);
	handshake_files(cli_path, path, &cli, &srv);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer_tenants(srv.conn), "acme");
	assert_false(wire_conn_peer_may_act_for(srv.conn, "beta", 4));
	side_fini(&cli);
	side_fini(&srv);
	write_keys(cli_path, &kc, NULL);
	handshake_files(cli_path, path, &cli, &srv);
	assert_int_equal(srv.err, 0);
	assert_string_equal(wire_conn_peer_tenants(srv.conn), "");
	assert_true(wire_conn_peer_may_act_for(srv.conn, "beta", 4));
	side_fini(&cli);
	side_fini(&srv);
	wire_key_wipe(&k);
}

static void test_key_file_two_keys_malformed(void **state)
{
	static const char l1[] =
		"tsubame-psk-v1 a 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n";
	static const char l2[] =
		"tsubame-psk-v1 b 00112233445566778899aabbccddeeff00112233445566778899aabbccddee00\n";
	static const char l1b[] =
		"tsubame-psk-v1 a ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff\n";
	char path[128], msg[WIRE_ERRMSG_MAX], text[512];
	struct wire_key k;

	path_in_tmp(path, sizeof(path), "two.key");
	/* The same key id twice. */
	snprintf(text, sizeof(text), "%s%s", l1, l1b);
	write_file(path, text, 0600);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EBADMSG);
	/* Three keys. */
	snprintf(text, sizeof(text), "%s%s%s", l1, l2,
		 "tsubame-psk-v1 c 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n");
	write_file(path, text, 0600);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EBADMSG);
	/* A second line that is no key. */
	snprintf(text, sizeof(text), "%sgarbage\n", l1);
	write_file(path, text, 0600);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EBADMSG);
	assert_non_null(strstr(msg, "malformed"));
	/* Two keys, CRLF and comments in between: fine. */
	snprintf(text, sizeof(text), "%.*s\r\n# next\r\n\r\n%s", (int)strlen(l1) - 1, l1, l2);
	write_file(path, text, 0600);
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), 0);
	assert_string_equal(k.id, "a");
	assert_string_equal(k.alt_id, "b");
	assert_int_equal(k.alt_secret[31], 0x00);
	wire_key_wipe(&k);
}

static void test_key_file_link_owner_fifo(void **state)
{
	char path[128], link[128], fifo[128], msg[WIRE_ERRMSG_MAX];
	struct wire_key k;

	path_in_tmp(path, sizeof(path), "real.key");
	path_in_tmp(link, sizeof(link), "link.key");
	path_in_tmp(fifo, sizeof(fifo), "fifo.key");
	assert_int_equal(wire_keygen(path, "real", NULL, msg, sizeof(msg)), 0);
	/* A symbolic link, even to a good key file. */
	assert_int_equal(symlink(path, link), 0);
	assert_int_equal(wire_key_load(link, &k, msg, sizeof(msg)), -ELOOP);
	printf("# %s\n", msg);
	assert_non_null(strstr(msg, "symbolic link"));
	/* A FIFO is refused without waiting for a writer. */
	assert_int_equal(mkfifo(fifo, 0600), 0);
	assert_int_equal(wire_key_load(fifo, &k, msg, sizeof(msg)), -EINVAL);
	assert_non_null(strstr(msg, "not a regular file"));
	/* Another user's file (only root can make one here). */
	if (geteuid() == 0) {
		assert_int_equal(chown(path, 65534, 65534), 0);
		assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), -EPERM);
		printf("# %s\n", msg);
		assert_non_null(strstr(msg, "belongs to uid 65534"));
		assert_int_equal(chown(path, 0, 0), 0);
	} else {
		printf("# not root: another user's key file not tried\n");
	}
	assert_int_equal(wire_key_load(path, &k, msg, sizeof(msg)), 0);
	wire_key_wipe(&k);
}

/* ---- certificates ---- */

static bool make_certs(void)
{
	char cmd[2048];

	snprintf(cmd, sizeof(cmd),
		 "(cd %s && "
		 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca && "
		 "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout other-ca.key -out other-ca.pem -days 2 -subj /CN=other-ca && "
		 "for n in host-a host-b rogue host-t; do "
		 "  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout $n.key -out $n.csr -subj /CN=$n && "
		 "  if [ $n = rogue ]; then c=other-ca; else c=ca; fi && "
		 "  t=; if [ $n = host-t ]; then t=',URI:" WIRE_CERT_TENANT_PREFIX "acme,URI:" WIRE_CERT_TENANT_PREFIX "beta,URI:https://example.com/'; fi && "
		 "  printf 'subjectAltName=DNS:%%s%%s\\n' $n \"$t\" > $n.ext && "
		 "  openssl x509 -req -in $n.csr -CA $c.pem -CAkey $c.key -CAcreateserial -out $n.pem -days 2 -extfile $n.ext || exit 1; "
		 "done) >/dev/null 2>&1",
		 tmpdir);
	return system(cmd) == 0;
}

static void cert_paths(char (*p)[128], const char *name)
{
	snprintf(p[0], 128, "%s/%s.pem", tmpdir, name);
	snprintf(p[1], 128, "%s/%s.key", tmpdir, name);
	snprintf(p[2], 128, "%s/ca.pem", tmpdir);
}

/* ---- one stream over several connections (wire/lanes.h) ---- */

static bool stream_is_ordered(uint8_t type)
{
	return type == WIRE_MSG_STREAM;
}

/* STREAM frame k: its 8 bytes say k. */
static void write_ordered(struct wire_conn *c, uint64_t k)
{
	struct tsb_buf b;
	uint8_t data[8];

	tsb_put_be64(data, k);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_STREAM, data, sizeof(data), NULL), 0);
	assert_int_equal(wire_conn_write(c, b.data, b.len), 0);
	tsb_buf_fini(&b);
}

static void write_ping(struct wire_conn *c, uint64_t token)
{
	struct tsb_buf b;

	tsb_buf_init(&b);
	assert_int_equal(wire_encode_u64(&b, WIRE_MSG_PING, token), 0);
	assert_int_equal(wire_conn_write(c, b.data, b.len), 0);
	tsb_buf_fini(&b);
}

/* Reads until the next ordered frame; counts the PINGs met on the way. */
static int next_ordered(struct wire_lanes *l, uint64_t *k, unsigned *pings)
{
	struct wire_frame f;
	struct wire_msg m;
	int r;

	while ((r = wire_lanes_next(l, &f)) == 1) {
		assert_int_equal(wire_frame_decode(&f, &m), 0);
		if (m.type == WIRE_MSG_PING) {
			(*pings)++;
			continue;
		}
		assert_int_equal(m.type, WIRE_MSG_STREAM);
		assert_int_equal(m.u.run.len, 8);
		*k = tsb_load_be64(m.u.run.data);
		return 1;
	}
	return r;
}

static void lanes_pairs(struct side *cli, struct side *srv, struct wire_conn **others)
{
	for (int i = 0; i < 3; i++)
		psk_pair(&cli[i], &srv[i]);
	others[0] = srv[1].conn;
	others[1] = srv[2].conn;
}

static void test_lanes(void **state)
{
	struct side cli[3], srv[3];
	struct wire_conn *others[2];
	struct wire_lanes *l;
	unsigned pings = 0;
	uint64_t k, want;
	int r;

	(void)state;
	/* Round robin in, the sender's order out; control frames on main pass. */
	lanes_pairs(cli, srv, others);
	l = wire_lanes_start(srv[0].conn, others, 3, stream_is_ordered, 1u << 20);
	assert_non_null(l);
	for (k = 0; k < 30; k++) {
		write_ordered(cli[k % 3].conn, k);
		if (k % 7 == 0)
			write_ping(cli[0].conn, k);
	}
	for (want = 0; want < 30; want++) {
		assert_int_equal(next_ordered(l, &k, &pings), 1);
		assert_int_equal(k, want);
	}
	/* The other lanes end cleanly after the last ordered frame: no end yet. */
	assert_int_equal(wire_conn_close(cli[1].conn), 0);
	assert_int_equal(wire_conn_close(cli[2].conn), 0);
	write_ping(cli[0].conn, 99);
	assert_int_equal(wire_conn_close(cli[0].conn), 0);
	assert_int_equal(next_ordered(l, &k, &pings), 0);
	assert_int_equal(pings, 6);
	assert_int_equal(wire_lanes_failed_lane(l), -1);
	wire_lanes_stop(l);
	for (int i = 0; i < 3; i++) {
		side_fini(&cli[i]);
		side_fini(&srv[i]);
	}

	/* A control frame on another lane is the peer's error. */
	lanes_pairs(cli, srv, others);
	l = wire_lanes_start(srv[0].conn, others, 3, stream_is_ordered, 1u << 20);
	assert_non_null(l);
	write_ordered(cli[0].conn, 0);
	pings = 0;
	assert_int_equal(next_ordered(l, &k, &pings), 1);
	/* (Written only now: a failed lane ends the stream at once.) */
	write_ping(cli[1].conn, 1);
	r = next_ordered(l, &k, &pings);
	assert_int_equal(r, -EBADMSG);
	assert_int_equal(wire_lanes_failed_lane(l), 1);
	wire_conn_abort(srv[0].conn);
	wire_lanes_stop(l);
	for (int i = 0; i < 3; i++) {
		side_fini(&cli[i]);
		side_fini(&srv[i]);
	}

	/* More read ahead than the cap allows: the stream fails, nothing grows. */
	lanes_pairs(cli, srv, others);
	l = wire_lanes_start(srv[0].conn, others, 3, stream_is_ordered, 100);
	assert_non_null(l);
	for (k = 1; k < 40; k++)
		if (k % 3) /* nothing on lane 0: its turn never comes */
			write_ordered(cli[k % 3].conn, k);
	pings = 0;
	r = next_ordered(l, &k, &pings);
	assert_int_equal(r, -EOVERFLOW);
	wire_conn_abort(srv[0].conn);
	wire_lanes_stop(l);
	for (int i = 0; i < 3; i++) {
		side_fini(&cli[i]);
		side_fini(&srv[i]);
	}
}

static void test_certificates(void **state)
{
	char pa[3][128], pb[3][128], pr[3][128];
	struct side cli, srv;
	int a, b;

	if (!make_certs()) {
		printf("# openssl command line not usable: skipping\n");
		skip();
	}
	cert_paths(pa, "host-a");
	cert_paths(pb, "host-b");
	cert_paths(pr, "rogue");

	/* Both certificates signed by the CA: accepted, names checked. */
	socket_pair(&a, &b);
	side_init(&cli, WIRE_TLS_CLIENT, NULL, a);
	side_init(&srv, WIRE_TLS_SERVER, NULL, b);
	cli.cert = pa[0], cli.keyfile = pa[1], cli.ca = pa[2];
	srv.cert = pb[0], srv.keyfile = pb[1], srv.ca = pb[2];
	cli.peer_name = "host-b";
	handshake_pair(&cli, &srv);
	assert_int_equal(cli.err, 0);
	assert_int_equal(srv.err, 0);
	assert_non_null(strstr(wire_conn_peer(srv.conn), "host-a"));
	assert_non_null(strstr(wire_conn_peer(cli.conn), "host-b"));
	side_fini(&cli);
	side_fini(&srv);

	/* Client certificate from another CA: the server refuses it. */
	socket_pair(&a, &b);
	side_init(&cli, WIRE_TLS_CLIENT, NULL, a);
	side_init(&srv, WIRE_TLS_SERVER, NULL, b);
	cli.cert = pr[0], cli.keyfile = pr[1], cli.ca = pr[2];
	srv.cert = pb[0], srv.keyfile = pb[1], srv.ca = pb[2];
	handshake_pair(&cli, &srv);
	assert_int_equal(srv.err, -EACCES);
	assert_non_null(strstr(srv.msg, "not trusted"));
	/*
	 * In TLS 1.3 the client finishes first; it learns of the refusal
	 * from the server's alert on its first read.
	 */
	if (!cli.err) {
		struct wire_frame f;

		assert_int_equal(wire_conn_read_frame(cli.conn, &f), -EACCES);
		assert_non_null(strstr(wire_conn_errmsg(cli.conn),
				       "rejected our certificate"));
	}
	side_fini(&cli);
	side_fini(&srv);

	/* Server presents a name other than expected: the client refuses. */
	socket_pair(&a, &b);
	side_init(&cli, WIRE_TLS_CLIENT, NULL, a);
	side_init(&srv, WIRE_TLS_SERVER, NULL, b);
	cli.cert = pa[0], cli.keyfile = pa[1], cli.ca = pa[2];
	srv.cert = pb[0], srv.keyfile = pb[1], srv.ca = pb[2];
	cli.peer_name = "host-c";
	handshake_pair(&cli, &srv);
	assert_int_equal(cli.err, -EACCES);
	assert_non_null(strstr(cli.msg, "not trusted"));
	side_fini(&cli);
	side_fini(&srv);

	/* A certificate naming tenants acts for them only; one without, for any. */
	{
		char pt[3][128];

		cert_paths(pt, "host-t");
		socket_pair(&a, &b);
		side_init(&cli, WIRE_TLS_CLIENT, NULL, a);
		side_init(&srv, WIRE_TLS_SERVER, NULL, b);
		cli.cert = pt[0], cli.keyfile = pt[1], cli.ca = pt[2];
		srv.cert = pb[0], srv.keyfile = pb[1], srv.ca = pb[2];
		handshake_pair(&cli, &srv);
		assert_int_equal(cli.err, 0);
		assert_int_equal(srv.err, 0);
		assert_string_equal(wire_conn_peer_tenants(srv.conn), "acme,beta");
		assert_true(wire_conn_peer_may_act_for(srv.conn, "acme", 4));
		assert_true(wire_conn_peer_may_act_for(srv.conn, "beta", 4));
		assert_false(wire_conn_peer_may_act_for(srv.conn, "acm", 3));
		assert_false(wire_conn_peer_may_act_for(srv.conn, "gamma", 5));
		side_fini(&cli);
		side_fini(&srv);
		socket_pair(&a, &b);
		side_init(&cli, WIRE_TLS_CLIENT, NULL, a);
		side_init(&srv, WIRE_TLS_SERVER, NULL, b);
		cli.cert = pa[0], cli.keyfile = pa[1], cli.ca = pa[2];
		srv.cert = pb[0], srv.keyfile = pb[1], srv.ca = pb[2];
		handshake_pair(&cli, &srv);
		assert_int_equal(srv.err, 0);
		assert_string_equal(wire_conn_peer_tenants(srv.conn), "");
		assert_true(wire_conn_peer_may_act_for(srv.conn, "gamma", 5));
		side_fini(&cli);
		side_fini(&srv);
	}

	/* The private key file is checked like a key file. */
	{
		struct wire_tls *t = wire_tls_new(WIRE_TLS_CLIENT);
		char link[128], msg[WIRE_ERRMSG_MAX];

		assert_non_null(t);
		assert_int_equal(chmod(pa[1], 0640), 0);
		assert_int_equal(wire_tls_set_certs(t, pa[0], pa[1], pa[2], msg, sizeof(msg)),
				 -EPERM);
		printf("# %s\n", msg);
		assert_non_null(strstr(msg, "private key"));
		assert_non_null(strstr(msg, "chmod 600"));
		assert_int_equal(chmod(pa[1], 0600), 0);
		path_in_tmp(link, sizeof(link), "host-a-link.key");
		assert_int_equal(symlink(pa[1], link), 0);
		assert_int_equal(wire_tls_set_certs(t, pa[0], link, pa[2], msg, sizeof(msg)),
				 -ELOOP);
		if (geteuid() == 0) {
			assert_int_equal(chown(pa[1], 65534, 65534), 0);
			assert_int_equal(wire_tls_set_certs(t, pa[0], pa[1], pa[2], msg,
							    sizeof(msg)), -EPERM);
			assert_non_null(strstr(msg, "belongs to uid 65534"));
			assert_int_equal(chown(pa[1], 0, 0), 0);
		}
		/* Not a key at all. */
		path_in_tmp(link, sizeof(link), "not-a.key");
		write_file(link, "-----BEGIN NOTHING-----\n", 0600);
		assert_int_equal(wire_tls_set_certs(t, pa[0], link, pa[2], msg, sizeof(msg)),
				 -EINVAL);
		assert_non_null(strstr(msg, "cannot load private key"));
		assert_int_equal(wire_tls_set_certs(t, pa[0], pa[1], pa[2], msg, sizeof(msg)), 0);
		wire_tls_free(t);
	}
}

static int setup_tmp(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/test-tls.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown_tmp(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_psk_bulk_both_ways),
		cmocka_unit_test(test_pacer_book),
		cmocka_unit_test(test_paced_write),
		cmocka_unit_test(test_psk_wrong_secret),
		cmocka_unit_test(test_psk_wrong_key_id),
		cmocka_unit_test(test_plaintext_client_refused),
		cmocka_unit_test(test_peer_closes_before_handshake),
		cmocka_unit_test(test_handshake_timeout),
		cmocka_unit_test(test_tampered_record_detected),
		cmocka_unit_test(test_hello_exchange),
		cmocka_unit_test(test_hello_version_mismatch),
		cmocka_unit_test(test_message_from_wrong_role),
		cmocka_unit_test(test_abort_wakes_reader),
		cmocka_unit_test(test_read_timeout),
		cmocka_unit_test(test_close_without_notify),
		cmocka_unit_test(test_keygen_and_load),
		cmocka_unit_test(test_key_file_mode_refused),
		cmocka_unit_test(test_key_file_malformed),
		cmocka_unit_test(test_key_rollover),
		cmocka_unit_test(test_key_tenants),
		cmocka_unit_test(test_key_file_two_keys_malformed),
		cmocka_unit_test(test_key_file_link_owner_fifo),
		cmocka_unit_test(test_certificates),
		cmocka_unit_test(test_lanes),
	};

	/* The transport itself never raises SIGPIPE; the test's raw writes may. */
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
