/*
 * Accepting a peer on a WAN-facing port without letting strangers stop
 * us: handshakes run concurrently (a cap, a short timeout), and a failed,
 * slow, garbage or unwanted connection is logged, counted and closed while
 * we go on waiting for the one we want (docs/security.md). Used by recv's
 * main connection, its wait for a decision, and the disk channel.
 */
#ifndef TSB_WIRE_ACCEPT_H
#define TSB_WIRE_ACCEPT_H

#include "wire/wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wire_conn;
struct wire_tls;

/* Concurrent handshakes at most; a new connection evicts the oldest. */
#define WIRE_ACCEPT_MAX_PENDING 16
/* Time a connection has for its TLS handshake and HELLO. */
#define WIRE_ACCEPT_HANDSHAKE_MS 5000

/*
 * Decides whether a peer that authenticated (c: its credential, e.g.
 * wire_conn_peer_may_act_for()) and said HELLO is the one we wait for.
 * false: why says what the peer is told (ERROR REFUSED) and logged.
 */
typedef bool (*wire_accept_want_fn)(const struct wire_conn *c, const struct wire_hello *peer,
				    void *opaque, char *why, size_t whylen);

struct wire_accept_options {
	struct wire_tls *tls;
	int lfd;			/* listening socket (stays the caller's) */
	const struct wire_hello_args *hello;	/* our HELLO */
	wire_accept_want_fn want;
	void *opaque;			/* for want and stopped */
	const char *what;		/* names the port in log lines, or NULL */
	volatile int *sig;		/* stop when it holds a signal number (> 1) */
	uint64_t deadline_ns;		/* CLOCK_MONOTONIC; 0: none */
	bool (*stopped)(void *opaque);	/* optional: stop waiting (-ECANCELED) */
};

/*
 * Accepts until a peer authenticates, exchanges HELLO and is wanted.
 * Returns 0 with *ret_conn (the peer's HELLO in *ret_peer, its strings
 * valid until the next read on the connection), -EINTR, -ETIMEDOUT,
 * -ECANCELED or -errno. *ret_refused (if not NULL) is increased by the
 * connections refused meanwhile.
 */
int wire_accept_peer(const struct wire_accept_options *o, struct wire_conn **ret_conn,
		     struct wire_hello *ret_peer, unsigned *ret_refused);
/*
 * The same for n peers that connect at once (e.g. a sender's lanes):
 * 0 with ret_conns[0..n) (and ret_peers, if not NULL), or an error as
 * above with none of them kept.
 */
int wire_accept_peers(const struct wire_accept_options *o, unsigned n,
		      struct wire_conn **ret_conns, struct wire_hello *ret_peers,
		      unsigned *ret_refused);

#endif
