/* Switchover by commit: QEMU steps and decision delivery (commit.h). */
#include "proxy/commit.h"
#include "proxy/internal.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "migctl/migctl.h"
#include "qmp/qmp.h"
#include "wire/accept.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

/* ---- QEMU ---- */

static int query_status(struct qmp *q, char *status, size_t len)
{
	json_t *st = NULL;
	const char *v;
	int r;

	r = qmp_execute(q, "query-status", NULL, &st, NULL, 0);
	if (r < 0)
		return r;
	v = json_string_value(json_object_get(st, "status"));
	snprintf(status, len, "%s", v ? v : "?");
	json_decref(st);
	return 0;
}

int commit_vm_running(struct qmp *q, bool *ret_running)
{
	char st[32];
	int r = query_status(q, st, sizeof(st));

	if (r == 0)
		*ret_running = !strcmp(st, "running");
	return r;
}

/*
 * Is QEMU's outgoing migration still busy (not yet ended one way or
 * another)? mst gets its status ("" if QEMU did not answer).
 */
static bool migration_busy(struct qmp *q, char *mst, size_t len)
{
	static const char *const busy[] = {
		"setup", "active", "pre-switchover", "device", "cancelling", "wait-unplug",
		"postcopy-active",
	};
	json_t *m = NULL;
	const char *st;
	bool b = false;
	size_t i;

	mst[0] = '\0';
	if (qmp_execute(q, "query-migrate", NULL, &m, NULL, 0) < 0)
		return false;
	st = json_string_value(json_object_get(m, "status"));
	snprintf(mst, len, "%s", st ? st : "");
	for (i = 0; st && i < TSB_ARRAY_SIZE(busy); i++)
		b |= !strcmp(st, busy[i]);
	json_decref(m);
	return b;
}

int commit_resume_source(struct qmp *q, bool was_running, bool postcopy, bool *ret_completed,
			 char *err, size_t errlen)
{
	/* A postcopy's cancel ends at once, unless QEMU paused it (below). */
	uint64_t t0 = tsb_now_ns(), limit = postcopy ? 10000000000ull : 30000000000ull;
	char st[32] = "", mst[32];
	int r;

	/*
	 * QEMU 7.2's cancel of a postcopy shuts the return path (the same
	 * socket) before it marks the migration cancelling: when the stream's
	 * failure is seen first, QEMU pauses the migration instead (and a
	 * cancel then leaves it "cancelling" for good). From there only a
	 * postcopy recovery goes on: never cancel a paused one.
	 */
	(void)migration_busy(q, mst, sizeof(mst));
	if (strcmp(mst, "postcopy-paused"))
		migctl_stop_source(q, mst);
	while (migration_busy(q, mst, sizeof(mst)) && tsb_now_ns() - t0 < limit)
		usleep(50000);
	*ret_completed = !strcmp(mst, "completed");
	if (!strcmp(mst, "postcopy-paused") || (postcopy && !strcmp(mst, "cancelling"))) {
		snprintf(err, errlen, "its QEMU paused the migration in postcopy (%s), from which "
			 "QEMU 7.2 cannot run the source again", mst);
		return -EAGAIN;
	}
	for (;;) {
		r = query_status(q, st, sizeof(st));
		if (r < 0) {
			snprintf(err, errlen, "the source QEMU does not answer: %s", strerror(-r));
			return r;
		}
		if (!strcmp(st, "running") || !was_running)
			return 0;
		if (strcmp(st, "finish-migrate") || tsb_now_ns() - t0 > 30000000000ull)
			break;
		usleep(50000);
	}
	/* Completed (postmigrate) or stopped by the migration: take it back. */
	r = qmp_execute(q, "cont", NULL, NULL, err, errlen);
	if (r == 0)
		log_notice("the source VM runs again (it was '%s')", st);
	return r;
}

int commit_run_destination(struct qmp *q, uint64_t *ret_resume_ns, char *err, size_t errlen)
{
	struct qmp_event ev;
	int r;

	*ret_resume_ns = 0;
	r = qmp_execute(q, "cont", NULL, NULL, err, errlen);
	if (r < 0) {
		/* It must never run later by someone's mistake: the source takes over. */
		commit_discard_destination(q);
		return r;
	}
	if (qmp_wait_event(q, "RESUME", 5000, &ev) == 0) {
		*ret_resume_ns = ev.time_ns;
		qmp_event_fini(&ev);
	}
	return 0;
}

void commit_discard_destination(struct qmp *q)
{
	(void)qmp_execute(q, "quit", NULL, NULL, NULL, 0);
}

/* ---- decisions over fresh connections ---- */

bool commit_expired(const struct commit_link *l)
{
	return (l->sig && *l->sig > 1) || tsb_now_ns() >= l->deadline_ns;
}

void commit_nap(const struct commit_link *l, unsigned ms)
{
	uint64_t until = tsb_now_ns() + (uint64_t)ms * 1000000;

	while (!commit_expired(l) && tsb_now_ns() < until)
		usleep(20000);
}

int proxy_dial(struct wire_tls *tls, const char *addr, const struct wire_hello_args *hello,
	       struct wire_conn **ret_conn, struct wire_hello *ret_peer, char *err, size_t errlen)
{
	char host[256], port[32];
	struct wire_conn *c;
	int fd, r;

	err[0] = '\0';
	if (tsb_split_hostport(addr, host, sizeof(host), port, sizeof(port)) < 0) {
		snprintf(err, errlen, "bad address %s", addr);
		return -EINVAL;
	}
	r = wire_tcp_connect(host, port, 5000, &fd, err, errlen);
	if (r < 0)
		return r;
	wire_tcp_tune(fd, 0);
	c = wire_conn_new_take(tls, fd);
	if (!c)
		return -ENOMEM;
	wire_conn_set_timeout(c, 10000);
	r = wire_conn_handshake(c, 10000);
	if (r == 0)
		r = wire_conn_hello(c, hello, ret_peer);
	if (r < 0) {
		snprintf(err, errlen, "%s", wire_conn_errmsg(c)[0] ? wire_conn_errmsg(c) :
			 strerror(-r));
		wire_conn_free(c);
		return r;
	}
	*ret_conn = c;
	return 0;
}

int commit_dial(const struct commit_link *l, uint64_t caps, struct wire_conn **ret_conn,
		struct wire_hello *ret_peer, char *err, size_t errlen)
{
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_SENDER, .caps = caps, .site = "source", .migration = l->id,
	};

	return proxy_dial(l->tls, l->addr, &hello, ret_conn, ret_peer, err, errlen);
}

/* One attempt: connect, HELLO, DECISION, OUTCOME. */
static int deliver_once(const struct commit_link *l, int decision, char *text, size_t textlen)
{
	struct wire_hello peer;
	struct wire_conn *c;
	struct wire_msg m;
	char msg[256];
	int r;

	r = commit_dial(l, WIRE_CAP_COMMIT | WIRE_CAP_RESOLVE, &c, &peer, msg, sizeof(msg));
	if (r < 0) {
		log_info("resolve: %s", msg);
		/* A receiver that knows no such migration holds nothing of it. */
		return r == -ECONNREFUSED && strstr(msg, "waits for its decision") ? -ENOENT : r;
	}
	r = wire_conn_send_status(c, WIRE_MSG_DECISION, (uint32_t)decision,
				  l->decision_text ? l->decision_text : l->id);
	while (r == 0) {
		r = wire_conn_read_msg(c, WIRE_ROLE_RECEIVER, &m);
		if (r == 0)
			r = -ECONNRESET;
		if (r < 0)
			break;
		if (m.type == WIRE_MSG_OUTCOME) {
			snprintf(text, textlen, "%.*s", (int)m.u.status.text.len,
				 m.u.status.text.p);
			r = (int)m.u.status.code;
			(void)wire_conn_close(c);
			wire_conn_free(c);
			return r > 0 ? r : -EBADMSG;
		}
		if (m.type == WIRE_MSG_ERROR || m.type == WIRE_MSG_CANCEL)
			r = m.u.status.code == WIRE_CODE_REFUSED ? -ENOENT : -ECONNREFUSED;
		else
			r = 0; /* PING and the like */
	}
	log_info("resolve: %s", wire_conn_errmsg(c)[0] ? wire_conn_errmsg(c) : strerror(-r));
	wire_conn_free(c);
	return r;
}

int commit_deliver(const struct commit_link *l, int decision, char *text, size_t textlen)
{
	unsigned backoff = 250, attempts = 0;
	int r;

	while (!commit_expired(l)) {
		attempts++;
		r = deliver_once(l, decision, text, textlen);
		if (r > 0) {
			log_notice("the receiver answered on reconnection %u", attempts);
			return r;
		}
		if (r == -EACCES || r == -EINVAL ||
		    (r == -ENOENT && decision == WIRE_DECIDE_ABORT))
			return r;
		commit_nap(l, backoff);
		backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
	}
	return l->sig && *l->sig > 1 ? -EINTR : -ETIMEDOUT;
}

int commit_listen_again(const struct commit_link *l, int *ret_fd)
{
	char host[256], port[32];
	int r;

	if (tsb_split_hostport(l->addr, host, sizeof(host), port, sizeof(port)) < 0)
		return -EINVAL;
	for (;;) {
		r = wire_tcp_listen(host, port, 128, ret_fd);
		if (r != -EADDRINUSE || commit_expired(l))
			return r;
		commit_nap(l, 200);
	}
}

uint64_t commit_stop_ns_of(const struct wire_str *text)
{
	char buf[WIRE_MAX_TEXT + 1];
	const char *p;

	snprintf(buf, sizeof(buf), "%.*s", (int)text->len, text->p);
	p = strstr(buf, "stop_ns=");
	return p ? strtoull(p + 8, NULL, 10) : 0;
}

bool commit_peer_wanted(const struct commit_link *l, const struct wire_conn *c,
			const struct wire_hello *peer, uint64_t caps, const char *waits,
			const char *by, char *why, size_t len)
{
	if (!(peer->caps & caps) || peer->migration.len != strlen(l->id) ||
	    memcmp(peer->migration.p, l->id, peer->migration.len)) {
		snprintf(why, len, "migration %s %s; nothing else is accepted until it is %s",
			 l->id, waits, caps & WIRE_CAP_RESUME ? "done" : "settled");
		return false;
	}
	if (l->credential && strcmp(wire_conn_peer(c), l->credential)) {
		snprintf(why, len, "migration %s began with %s; %s that credential only, not %s %s",
			 l->id, l->credential, by, caps & WIRE_CAP_RESUME ? "with" : "from",
			 wire_conn_peer(c));
		return false;
	}
	return true;
}

/* Only the sender of this migration, coming with its decision. (wire/accept.h) */
static bool want_resolver(const struct wire_conn *c, const struct wire_hello *peer,
			  void *opaque, char *why, size_t len)
{
	return commit_peer_wanted(opaque, c, peer, WIRE_CAP_RESOLVE,
				  "is waiting for its decision here",
				  "its decision is taken from", why, len);
}

int commit_await(const struct commit_link *l, struct wire_conn **ret_conn)
{
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_RECEIVER, .caps = WIRE_CAP_COMMIT, .site = "destination",
	};
	struct wire_accept_options ao = {
		.tls = l->tls, .hello = &hello, .want = want_resolver, .opaque = (void *)l,
		.what = "resolve", .sig = l->sig, .deadline_ns = l->deadline_ns,
	};
	struct wire_hello peer;
	struct wire_conn *c;
	struct wire_msg m;
	int lfd, r;

	r = commit_listen_again(l, &lfd);
	if (r < 0)
		return r;
	ao.lfd = lfd;
	log_notice("waiting for the sender's decision on %s (migration %s)", l->addr, l->id);
	while ((r = wire_accept_peer(&ao, &c, &peer, NULL)) == 0) {
		wire_conn_set_timeout(c, 10000);
		r = wire_conn_read_msg(c, WIRE_ROLE_SENDER, &m);
		if (r > 0 && m.type == WIRE_MSG_DECISION &&
		    (m.u.status.code == WIRE_DECIDE_COMMIT || m.u.status.code == WIRE_DECIDE_ABORT)) {
			if (l->ret_stop_ns)
				*l->ret_stop_ns = commit_stop_ns_of(&m.u.status.text);
			close(lfd);
			*ret_conn = c;
			return (int)m.u.status.code;
		}
		log_warn("resolve: the sender's connection ended without a decision");
		wire_conn_free(c);
	}
	close(lfd);
	return r;
}

int commit_answer(struct wire_conn *c, int outcome, const char *text)
{
	struct wire_frame f;
	uint64_t t0 = tsb_now_ns();
	int r;

	r = wire_conn_send_status(c, WIRE_MSG_OUTCOME, (uint32_t)outcome, text);
	if (r < 0)
		return r;
	tsb_fault_point("outcome-sent");
	/* The sender closes once it has read it: only then is it known there. */
	while (tsb_now_ns() - t0 < 10000000000ull) {
		r = wire_conn_read_frame(c, &f);
		if (r == 0)
			return 0;
		if (r < 0)
			return r;
	}
	return -ETIMEDOUT;
}
