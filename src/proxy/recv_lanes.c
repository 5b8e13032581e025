/*
 * The receiver's lanes (wire/lanes.h): a sender that asked for several
 * connections says LANE 0 of n on the main one; the others must come with
 * the same credential, name this migration and say which lane they are.
 */
#include "proxy/receiver.h"

#include "common/log.h"
#include "common/util.h"
#include "wire/accept.h"
#include "wire/tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* Time for all lanes to come once LANE 0 arrived. */
#define LANES_DEADLINE_NS (15ull * 1000000000ull)

/* The frames the sender's WAN thread writes in order, round robin over the lanes. */
static bool is_ordered(uint8_t type)
{
	return type == WIRE_MSG_PAGES || type == WIRE_MSG_STREAM || type == WIRE_MSG_BLOCKS ||
	       type == WIRE_MSG_HASHDATA;
}

/* Only lanes of this migration, with the main connection's credential. */
static bool want_lane(const struct wire_conn *c, const struct wire_hello *peer, void *opaque,
		      char *why, size_t len)
{
	const struct receiver *rc = opaque;

	if (!(peer->caps & WIRE_CAP_LANES)) {
		snprintf(why, len, "this port now takes the lanes of migration %s only",
			 rc->rec.id);
		return false;
	}
	if (peer->migration.len != strlen(rc->rec.id) ||
	    memcmp(peer->migration.p, rc->rec.id, peer->migration.len)) {
		snprintf(why, len, "this port takes the lanes of migration %s only", rc->rec.id);
		return false;
	}
	if (strcmp(wire_conn_peer(c), rc->credential)) {
		snprintf(why, len, "the lanes of migration %s come with %s only, not %s",
			 rc->rec.id, rc->credential, wire_conn_peer(c));
		return false;
	}
	return true;
}

/* LANE from c (read within timeout_ms): 0 with *ret, or -errno with why set. */
static int read_lane(struct wire_conn *c, int timeout_ms, struct wire_lane *ret, char *why,
		     size_t len)
{
	struct wire_msg m;
	int r;

	wire_conn_set_timeout(c, timeout_ms);
	r = wire_conn_read_msg(c, WIRE_ROLE_SENDER, &m);
	if (r == 0)
		r = -ECONNRESET;
	if (r > 0 && m.type != WIRE_MSG_LANE)
		r = -EPROTO;
	if (r < 0) {
		snprintf(why, len, "%s", r == -EPROTO ? "it did not say which lane it is" :
			 wire_conn_errmsg(c)[0] ? wire_conn_errmsg(c) : strerror(-r));
		return r;
	}
	*ret = m.u.lane;
	return 0;
}

/* LANE 0 of n back on the main connection: the other lanes may come now. */
static int answer_lane(struct receiver *rc, unsigned n)
{
	int r = wire_conn_send_lane(rc->conn, 0, n);

	if (r < 0)
		recv_fail(rc, proxy_outcome_of_errno(r), "answering LANE: %s",
			  wire_conn_errmsg(rc->conn)[0] ? wire_conn_errmsg(rc->conn) : strerror(-r));
	return r < 0 ? -1 : 0;
}

/* Accepts lanes 1..n-1 (in any order) into rc->lanes. */
static int accept_lanes(struct receiver *rc, struct wire_tls *tls, int lfd, volatile int *sig,
			unsigned n)
{
	static const struct wire_hello_args hello = {
		.role = WIRE_ROLE_RECEIVER, .caps = WIRE_CAP_LANES, .site = "destination",
	};
	struct wire_accept_options ao = {
		.tls = tls, .lfd = lfd, .hello = &hello, .want = want_lane, .opaque = rc,
		.what = "lanes", .sig = sig, .deadline_ns = tsb_now_ns() + LANES_DEADLINE_NS,
	};
	struct wire_conn *conns[WIRE_MAX_LANES - 1] = { NULL };
	struct wire_lane lane;
	struct wire_conn *c;
	unsigned i;
	char why[300];
	int r;

	r = wire_accept_peers(&ao, n - 1, conns, NULL, &rc->refused);
	if (r < 0) {
		recv_fail(rc, r == -ETIMEDOUT ? PROXY_LINK : proxy_outcome_of_errno(r),
			  "the sender's %u connections did not all come: %s", n,
			  r == -ETIMEDOUT ? "not within 15 s" : strerror(-r));
		return -1;
	}
	for (i = 0; i < n - 1; i++) {
		c = conns[i];
		conns[i] = NULL;
		r = read_lane(c, WIRE_ACCEPT_HANDSHAKE_MS, &lane, why, sizeof(why));
		if (r == 0 && (lane.count != n || lane.index == 0 || rc->lanes[lane.index - 1])) {
			snprintf(why, sizeof(why), "it said LANE %u of %u, after LANE 0 of %u",
				 lane.index, lane.count, n);
			r = -EPROTO;
		}
		if (r < 0) {
			wire_conn_send_status(c, WIRE_MSG_ERROR, WIRE_CODE_REFUSED, why);
			wire_conn_free(c);
			while (++i < n - 1)
				wire_conn_free(conns[i]);
			recv_fail(rc, PROXY_FAILED, "a connection of the sender: %s", why);
			return -1;
		}
		wire_conn_set_timeout(c, rc->o->c.stall_ms);
		rc->lanes[lane.index - 1] = c;
	}
	return 0;
}

int recv_take_lanes(struct receiver *rc, struct wire_tls *tls, int lfd, volatile int *sig)
{
	struct wire_lane lane = { 0 };
	char why[300];
	unsigned n;

	if (read_lane(rc->conn, WIRE_ACCEPT_HANDSHAKE_MS, &lane, why, sizeof(why)) < 0 ||
	    lane.index != 0) {
		if (lane.index != 0)
			snprintf(why, sizeof(why), "LANE %u came on the main connection",
				 lane.index);
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_REFUSED, why);
		recv_fail(rc, PROXY_FAILED, "the sender asked for several connections, but %s",
			  why);
		return -1;
	}
	/* Back to the migration's own limit (none with --stall-timeout 0). */
	wire_conn_set_timeout(rc->conn, rc->o->c.stall_ms);
	n = lane.count;
	rc->n_lanes = n;
	/*
	 * LANE 0 back: the sender opens the other lanes only now, so that none
	 * of them can reach the accept that was waiting for the main one.
	 */
	if (answer_lane(rc, n) < 0)
		return -1;
	if (accept_lanes(rc, tls, lfd, sig, n) < 0)
		return -1;
	rc->lane_reader = wire_lanes_start(rc->conn, rc->lanes, n, is_ordered, PROXY_BACKLOG_MAX);
	if (!rc->lane_reader) {
		recv_fail(rc, PROXY_FAILED, "cannot start the readers of %u connections", n);
		return -1;
	}
	log_info("the stream comes over %u connections", n);
	return 0;
}

void recv_lanes_free(struct receiver *rc)
{
	unsigned i;

	/* Its reader of the main connection returns only when that is cut. */
	if (rc->lane_reader)
		wire_conn_abort(rc->conn);
	wire_lanes_stop(rc->lane_reader);
	rc->lane_reader = NULL;
	for (i = 0; i < WIRE_MAX_LANES - 1; i++) {
		wire_conn_free(rc->lanes[i]);
		rc->lanes[i] = NULL;
	}
}
