/*
 * QMP client: one connection to a QEMU control socket. Commands are
 * synchronous (send, then read until the matching reply); asynchronous
 * events that arrive meanwhile are queued with QEMU's timestamp and can be
 * taken with qmp_next_event()/qmp_wait_event().
 *
 * Not thread-safe: one struct qmp is used by one thread at a time.
 * Bounded: a message longer than QMP_MAX_MESSAGE bytes is skipped and the
 * call that met it fails with -EMSGSIZE; at most QMP_MAX_QUEUED_EVENTS
 * events are kept (the oldest are dropped). Messages are parsed with
 * JSON_REJECT_DUPLICATES.
 */
#ifndef TSB_QMP_H
#define TSB_QMP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest QMP message accepted from QEMU, bytes. */
#define QMP_MAX_MESSAGE (16u << 20)
/* Events kept while nobody takes them. */
#define QMP_MAX_QUEUED_EVENTS 4096

struct qmp;

struct qmp_event {
	char *name;	   /* "STOP", "RESUME", "MIGRATION", ... (owned) */
	json_t *data;	   /* event data, or an empty object (owned ref) */
	uint64_t time_ns;  /* QEMU's timestamp (CLOCK_REALTIME), ns */
};

/*
 * Connects to the unix socket at path, waiting up to timeout_ms for it to
 * appear (and to accept), reads the greeting and negotiates capabilities.
 * Returns 0 and *ret_qmp (free with qmp_close), or -errno: -ETIMEDOUT,
 * -ENAMETOOLONG (path over sun_path), -EPROTO (not a QMP greeting or
 * negotiation refused), -ECONNRESET, -ECONNREFUSED (the socket file is
 * there but has refused connections for a second: its QEMU is gone).
 */
int qmp_open(const char *path, int timeout_ms, struct qmp **ret_qmp);
/* Closes the socket and frees queued events. Accepts NULL. */
void qmp_close(struct qmp *q);

/*
 * Runs a command. args may be NULL and is not taken over. On success returns
 * 0 and, if ret_result is non-NULL, a new reference to the "return" value.
 * On a QMP error returns -EREMOTEIO and copies QEMU's description into
 * errbuf (if non-NULL). Other failures: -errno (-ETIMEDOUT after timeout_ms),
 * -ECONNRESET (QEMU closed the socket; later calls fail the same way),
 * -EMSGSIZE or -EBADMSG (an oversized or malformed message arrived while
 * waiting: it may have been the reply), -EINVAL (args not an object); errbuf
 * then says which. Events read meanwhile are queued.
 */
int qmp_execute(struct qmp *q, const char *command, json_t *args,
		json_t **ret_result, char *errbuf, size_t errlen);
/*
 * Like qmp_execute, passing fd to QEMU as SCM_RIGHTS with the command (for
 * getfd, add-fd). fd stays the caller's: QEMU gets its own copy.
 */
int qmp_execute_fd(struct qmp *q, const char *command, json_t *args, int fd,
		   json_t **ret_result, char *errbuf, size_t errlen);

/*
 * Like qmp_execute, out of band ("exec-oob"): QEMU runs it at once, even
 * while its main loop is blocked; only commands QEMU marks allow-oob
 * (migrate-recover, migrate-pause). -EOPNOTSUPP when the monitor did not
 * offer it (qmp_open negotiates it when offered).
 */
int qmp_execute_oob(struct qmp *q, const char *command, json_t *args,
		    json_t **ret_result, char *errbuf, size_t errlen);
/* Default timeout for qmp_execute, ms (initially 30000; -1: forever). */
void qmp_set_timeout(struct qmp *q, int timeout_ms);

/*
 * Takes the oldest queued event; reads from the socket for up to timeout_ms
 * if none is queued (0: do not wait, -1: forever). Returns 0 and fills *ev
 * (free with qmp_event_fini), -ETIMEDOUT, or -errno (-ECONNRESET when QEMU
 * closed the socket).
 */
int qmp_next_event(struct qmp *q, int timeout_ms, struct qmp_event *ev);
/*
 * Waits for the named event. Events taken before it (queued ones first)
 * are dropped, not re-queued. Same returns as qmp_next_event.
 */
int qmp_wait_event(struct qmp *q, const char *name, int timeout_ms,
		   struct qmp_event *ev);
/* Frees what ev holds (not ev itself) and zeroes it. Accepts NULL. */
void qmp_event_fini(struct qmp_event *ev);

/*
 * The socket fd, for polling (readable: an event or reply may be waiting).
 * Events may also already be queued: check qmp_pending_events() first.
 */
int qmp_fd(const struct qmp *q);
/* Number of events queued and not yet taken. */
size_t qmp_pending_events(const struct qmp *q);

#endif
