/*
 * Switchover by commit (docs/protocol.md, "Switchover"): what send and
 * recv do to settle who runs the guest, on the QEMUs and over fresh
 * connections when the migration's own connection is gone.
 */
#ifndef TSB_PROXY_COMMIT_H
#define TSB_PROXY_COMMIT_H

#include "proxy/proxy.h"
#include "wire/wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qmp;
struct wire_conn;
struct wire_tls;

/* Where to reach the peer for a decision, and for how long to try. */
struct commit_link {
	const struct proxy_common_options *c;
	struct wire_tls *tls;
	const char *addr;	/* send: the receiver's HOST:PORT; recv: its --listen */
	const char *id;		/* the migration id */
	const char *credential;	/* recv: the sender's (wire_conn_peer()); NULL: any */
	const char *decision_text; /* send: DECISION's text (NULL: the migration id) */
	uint64_t *ret_stop_ns;	/* recv: the source's STOP time a DECISION carried */
	uint64_t deadline_ns;	/* CLOCK_MONOTONIC */
	volatile int *sig;	/* stop early when it holds a signal number (> 1) */
};

/* Is the local QEMU's VM running ("running" state)? */
int commit_vm_running(struct qmp *q, bool *ret_running);

/*
 * Source, abort: ends QEMU's migration and runs the guest again if it ran
 * when the migration began (cont from the state the migration left it
 * in). *ret_completed: QEMU's migration had completed (so the receiver
 * may hold the guest). 0 when the source runs (or was not to be resumed);
 * -EAGAIN when QEMU paused the migration in postcopy instead of cancelling
 * it (only a postcopy recovery goes on from there). postcopy: the
 * migration may have switched to postcopy.
 */
int commit_resume_source(struct qmp *q, bool was_running, bool postcopy, bool *ret_completed,
			 char *err, size_t errlen);

/*
 * Destination, commit: runs the loaded, paused guest. Fills *ret_resume_ns
 * with QEMU's RESUME time (CLOCK_REALTIME, 0 if unseen). On failure the
 * destination QEMU is quit, so that it can never run the guest later.
 */
int commit_run_destination(struct qmp *q, uint64_t *ret_resume_ns, char *err, size_t errlen);
/* Destination, abort: quits the destination QEMU (it never ran the guest). */
void commit_discard_destination(struct qmp *q);

/* Has l's deadline passed, or a signal come? */
bool commit_expired(const struct commit_link *l);
/* Sleeps ms, but not past l's deadline or a signal. */
void commit_nap(const struct commit_link *l, unsigned ms);
/*
 * One fresh connection to addr: TCP, TLS, our HELLO and the peer's
 * (*ret_peer). 0 with *ret_conn, or -errno with err saying why.
 */
int proxy_dial(struct wire_tls *tls, const char *addr, const struct wire_hello_args *hello,
	       struct wire_conn **ret_conn, struct wire_hello *ret_peer, char *err, size_t errlen);
/*
 * Sender: one fresh connection to l->addr: TCP, TLS, our HELLO (role
 * sender, caps, the migration id l->id) and the receiver's (*ret_peer).
 * 0 with *ret_conn, or -errno with err saying why (-ECONNREFUSED: the
 * receiver answered HELLO with an ERROR, e.g. a refusal).
 */
int commit_dial(const struct commit_link *l, uint64_t caps, struct wire_conn **ret_conn,
		struct wire_hello *ret_peer, char *err, size_t errlen);
/*
 * Receiver: is the peer that authenticated (c) and said HELLO (peer) the
 * sender of migration l->id, offering one of caps, with the credential
 * the migration began with (l->credential, if set)? false: why says what
 * it is told, built from waits ("is waiting for its decision here") and
 * by ("its decision is taken from").
 */
bool commit_peer_wanted(const struct commit_link *l, const struct wire_conn *c,
			const struct wire_hello *peer, uint64_t caps, const char *waits,
			const char *by, char *why, size_t len);
/* Receiver: listens on l->addr again, retrying while the old socket holds the port. */
int commit_listen_again(const struct commit_link *l, int *ret_fd);
/*
 * Sender: delivers decision (WIRE_DECIDE_*) to the receiver over fresh
 * connections, with back-off, until it answers OUTCOME or the deadline
 * passes. Returns the OUTCOME code (> 0; text gets its text), -ETIMEDOUT,
 * -EINTR, or -EACCES when the receiver refuses our credentials.
 */
int commit_deliver(const struct commit_link *l, int decision, char *text, size_t textlen);

/*
 * Receiver: listens again on l->addr and waits for the sender of this
 * migration to deliver its decision. Returns the decision (> 0) with
 * *ret_conn open to answer OUTCOME on, -ETIMEDOUT or -EINTR.
 */
int commit_await(const struct commit_link *l, struct wire_conn **ret_conn);

/* Receiver: answers OUTCOME on c and waits (bounded) for the sender to close. */
int commit_answer(struct wire_conn *c, int outcome, const char *text);

/*
 * The source's STOP time (CLOCK_REALTIME ns) a COMMIT's text carries
 * ("<migration id> stop_ns=N"), or 0: for the receiver's downtime.
 */
uint64_t commit_stop_ns_of(const struct wire_str *text);

#endif
