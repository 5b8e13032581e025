/*
 * Accepting a peer on a WAN-facing port without letting strangers stop
 * us: handshakes run concurrently (a cap, a short timeout), and a failed,
 * slow, garbage or unwanted connection is logged, counted and closed while
 * we go on waiting for the one we want (docs/security.md).
 */
#ifndef TSB_PROXY_ACCEPT_H
#define TSB_PROXY_ACCEPT_H

#include "wire/wire.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct wire_conn;
struct wire_tls;

/* Concurrent handshakes at most; a new connection evicts the oldest. */
#define ACCEPT_MAX_PENDING 16
/* Time a connection has for its TLS handshake and HELLO. */
#define ACCEPT_HANDSHAKE_MS 5000

/*
 * Decides whether a peer that authenticated and said HELLO is the one we
 * wait for. false: why says what the peer is told (ERROR REFUSED) and logged.
 */
typedef bool (*accept_want_fn)(const struct wire_hello *peer, void *opaque, char *why,
			       size_t whylen);

struct accept_options {
	struct wire_tls *tls;
	int lfd;			/* listening socket (stays the caller's) */
	const struct wire_hello_args *hello;	/* our HELLO */
	accept_want_fn want;
	void *opaque;
	volatile int *sig;		/* stop when it holds a signal number (> 1) */
	uint64_t deadline_ns;		/* CLOCK_MONOTONIC; 0: none */
};

/*
 * Accepts until a peer authenticates, exchanges HELLO and is wanted.
 * Returns 0 with *ret_conn (the peer's HELLO in *ret_peer, its strings
 * valid until the next read on the connection), -EINTR, -ETIMEDOUT or
 * -errno. *ret_refused counts the connections refused meanwhile.
 */
int accept_peer(const struct accept_options *o, struct wire_conn **ret_conn,
		struct wire_hello *ret_peer, unsigned *ret_refused);

#endif
