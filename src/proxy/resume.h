/*
 * Postcopy recovery (docs/postcopy.md, "A broken link"). When the link
 * breaks after a committed postcopy switch, both QEMUs pause
 * (postcopy-paused): the source holds the memory not sent yet, the
 * destination runs the guest. The sender dials the receiver again (with
 * back-off, until its deadline); over the new connection QEMU's own
 * recovery runs (migrate-recover on the destination, migrate with resume
 * on the source), and the connection carries QEMU's stream and return
 * path verbatim (STREAM and RETURN frames), no longer page by page: the
 * resumed stream starts in the middle of QEMU's, where the page encoders'
 * mirrored state was lost with the link.
 */
#ifndef TSB_PROXY_RESUME_H
#define TSB_PROXY_RESUME_H

#include "proxy/commit.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct qmp;
struct wire_conn;

/* What one resumed leg carried (application bytes before TLS). */
struct resume_counts {
	uint64_t stream_in;	/* QEMU stream bytes relayed */
	uint64_t return_in;	/* return-path bytes relayed */
	uint64_t wan_out;	/* frame bytes written */
};

/*
 * Sender: connects to the receiver until it takes a RESUME of migration
 * l->id (back-off 0.25-5 s). 0 with *ret_conn, -ETIMEDOUT, -EINTR,
 * -EACCES (our credentials refused) or -ENOENT (the receiver no longer
 * waits for this migration).
 */
int resume_dial(const struct commit_link *l, struct wire_conn **ret_conn);
/*
 * Receiver: listens again on l->addr for the sender of this migration
 * (same credential) coming to resume it, or to learn the outcome of its
 * commit first (*ret_resolve: answer with resume_answer_resolver()). 0
 * with *ret_conn, -ETIMEDOUT, -EINTR or -errno.
 */
int resume_await(const struct commit_link *l, struct wire_conn **ret_conn, bool *ret_resolve);
/* Receiver: reads the resolver's DECISION and answers OUTCOME RUNNING. */
int resume_answer_resolver(struct wire_conn *c);
/*
 * Source: waits (until deadline_ns) for QEMU to have paused its broken
 * postcopy (postcopy-paused). 0 paused, 1 completed after all (nothing
 * to resume), -ETIMEDOUT, -EINTR, -EIO (another state; err says it), or
 * -EDEADLK: stuck in postcopy-recover (a break during QEMU 7.2's
 * recovery handshake, which it cannot retry).
 */
int resume_source_paused(struct qmp *q, uint64_t deadline_ns, volatile int *sig,
			 char *err, size_t errlen);
/*
 * Source: a new socket for QEMU (getfd) and `migrate` with resume; *ret_fd
 * is our end.
 */
int resume_source(struct qmp *q, int *ret_fd, char *err, size_t errlen);
/*
 * Destination: `migrate-recover` out of band (QEMU's main loop may be
 * blocked on a missing page) on a unix socket in dir, retried until QEMU
 * has noticed the broken stream (postcopy-paused) or the deadline, then
 * connects to it: *ret_fd is our end.
 */
int resume_destination(struct qmp *q, const char *dir, uint64_t deadline_ns,
		       volatile int *sig, int *ret_fd, char *err, size_t errlen);
/*
 * Relays QEMU's socket qfd and c until the resumed stream ends. Sender
 * (self WIRE_ROLE_SENDER): qfd's bytes go out as STREAM, RETURN comes
 * back into qfd; when QEMU closes qfd (it completed), DONE, and the
 * receiver's OUTCOME is awaited (*ret_outcome). Receiver: STREAM into
 * qfd, qfd's bytes out as RETURN, until DONE (the caller then checks its
 * QEMU and answers OUTCOME with commit_answer()). Keepalives every second
 * (PING, answered PONG); stall_ms without a frame from the peer is a
 * broken link. 0 when the stream ended, or -errno with err saying why
 * (qfd is then shut down, so that QEMU pauses again).
 */
int resume_relay(struct wire_conn *c, int qfd, enum wire_role self, int stall_ms,
		 volatile int *sig, int *ret_outcome, struct resume_counts *counts,
		 char *err, size_t errlen);

/*
 * Fuzzing (tests/fuzz/fuzz-resume.c): the messages of a resumed
 * connection, as frames on the wire after one byte (bit 0: we are the
 * sender, bit 1: our QEMU closed), handled as resume_relay() does, into
 * /dev/null. 0 when all was taken, else why not.
 */
int resume_relay_fuzz(const uint8_t *data, size_t len);
/* The report's postcopy.resumed: connections tried and what they carried. */
json_t *resume_report(unsigned connections, const struct resume_counts *counts);

#endif
