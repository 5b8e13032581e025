/*
 * The sender's lanes (wire/lanes.h): more connections for one stream when
 * --connections asks, each authenticated like the main one and bound to
 * this migration by its HELLO; the WAN thread writes ordered frames round
 * robin over them.
 */
#include "proxy/sender.h"

#include "common/log.h"
#include "common/thread.h"
#include "wire/tls.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

struct lane_open {
	struct sender *s;
	struct wire_tls *tls;
	const char *host, *port;
	const struct wire_hello_args *hello;
	unsigned index, count;
	struct wire_conn *conn;
	int r;
	char err[300];
	pthread_t th;
};

static void *open_one(void *arg)
{
	struct lane_open *lo = arg;
	struct wire_hello peer;
	int fd = -1, r;

	r = wire_tcp_connect(lo->host, lo->port, 10000, &fd, lo->err, sizeof(lo->err));
	if (r < 0)
		goto out;
	wire_tcp_tune(fd, 0);
	lo->conn = wire_conn_new_take(lo->tls, fd);
	if (!lo->conn) {
		r = -ENOMEM;
		snprintf(lo->err, sizeof(lo->err), "out of memory");
		goto out;
	}
	r = wire_conn_handshake(lo->conn, 15000);
	if (r == 0)
		r = wire_conn_hello(lo->conn, lo->hello, &peer);
	if (r == 0)
		r = wire_conn_send_lane(lo->conn, lo->index, lo->count);
	if (r < 0)
		snprintf(lo->err, sizeof(lo->err), "%s",
			 wire_conn_errmsg(lo->conn)[0] ? wire_conn_errmsg(lo->conn) : strerror(-r));
	else if (lo->s->o->c.stall_ms)
		wire_conn_set_timeout(lo->conn, lo->s->o->c.stall_ms);
out:
	lo->r = r;
	return NULL;
}

/* The receiver's LANE 0 of n: it accepts the other lanes from now on. */
static int await_lane_answer(struct sender *s, unsigned n, char *err, size_t errlen)
{
	struct wire_msg m;
	int r;

	r = wire_conn_read_msg(s->conn, WIRE_ROLE_RECEIVER, &m);
	if (r == 0)
		r = -ECONNRESET;
	if (r > 0 && m.type == WIRE_MSG_ERROR) {
		snprintf(err, errlen, "the receiver refused %u connections: %.*s", n,
			 (int)m.u.status.text.len, m.u.status.text.p);
		return -ECONNREFUSED;
	}
	if (r > 0 && (m.type != WIRE_MSG_LANE || m.u.lane.index != 0 || m.u.lane.count != n)) {
		snprintf(err, errlen, "the receiver sent %s where its answer to LANE was due",
			 wire_msg_name(m.type));
		return -EPROTO;
	}
	if (r < 0)
		snprintf(err, errlen, "waiting for the receiver's answer to LANE: %s",
			 wire_conn_errmsg(s->conn)[0] ? wire_conn_errmsg(s->conn) : strerror(-r));
	return r < 0 ? r : 0;
}

int sender_lanes_open(struct sender *s, struct wire_tls *tls, const char *host, const char *port,
		      unsigned n, const struct wire_hello_args *hello, char *err, size_t errlen)
{
	struct lane_open lo[WIRE_MAX_LANES - 1];
	struct wire_hello_args h = *hello;
	unsigned i, started = 0;
	int r = 0;

	if (n < 2 || n > WIRE_MAX_LANES)
		return -EINVAL;
	r = await_lane_answer(s, n, err, errlen);
	if (r < 0)
		return r;
	h.caps = WIRE_CAP_LANES;
	h.filter = NULL;
	h.filter_len = 0;
	h.filter_kind = 0;
	memset(lo, 0, sizeof(lo));
	for (i = 0; i < n - 1; i++) {
		lo[i] = (struct lane_open){ .s = s, .tls = tls, .host = host, .port = port,
					    .hello = &h, .index = i + 1, .count = n };
		if (tsb_thread_create(&lo[i].th, open_one, &lo[i])) {
			lo[i].r = -EAGAIN;
			snprintf(lo[i].err, sizeof(lo[i].err), "cannot start a thread");
			break;
		}
		started++;
	}
	for (i = 0; i < started; i++)
		pthread_join(lo[i].th, NULL);
	for (i = 0; i < n - 1; i++) {
		if (i >= started || lo[i].r < 0) {
			if (!r) {
				r = i >= started && !lo[i].r ? -EAGAIN : lo[i].r;
				snprintf(err, errlen, "connection %u of %u: %s", i + 2, n,
					 lo[i].err[0] ? lo[i].err : "not opened");
			}
		}
	}
	if (r < 0) {
		for (i = 0; i < n - 1; i++)
			wire_conn_free(lo[i].conn);
		return r;
	}
	for (i = 0; i < n - 1; i++)
		s->lanes[i] = lo[i].conn;
	s->n_lanes = n;
	log_info("the stream goes over %u connections", n);
	return 0;
}

struct wire_conn *sender_lane_next(struct sender *s)
{
	unsigned i;

	if (s->n_lanes < 2)
		return s->conn;
	i = (unsigned)(s->lane_seq++ % s->n_lanes);
	return i ? s->lanes[i - 1] : s->conn;
}

void sender_lanes_end(struct sender *s, bool clean)
{
	unsigned i;

	for (i = 0; i + 1 < s->n_lanes; i++) {
		if (!s->lanes[i])
			continue;
		if (clean)
			(void)wire_conn_close(s->lanes[i]);
		else
			wire_conn_abort(s->lanes[i]);
	}
}

void sender_lanes_free(struct sender *s)
{
	unsigned i;

	for (i = 0; i + 1 < s->n_lanes; i++) {
		wire_conn_free(s->lanes[i]);
		s->lanes[i] = NULL;
	}
	s->n_lanes = 1;
}

void sender_link_stats(const struct sender *s, struct wire_conn_stats *ret)
{
	struct wire_conn_stats l;
	unsigned i;

	memset(ret, 0, sizeof(*ret));
	if (s->conn)
		wire_conn_get_stats(s->conn, ret);
	for (i = 0; i + 1 < s->n_lanes; i++) {
		if (!s->lanes[i])
			continue;
		wire_conn_get_stats(s->lanes[i], &l);
		ret->app_in += l.app_in;
		ret->app_out += l.app_out;
		ret->net_in += l.net_in;
		ret->net_out += l.net_out;
	}
}
