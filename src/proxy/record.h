/*
 * The durable record of a migration whose switchover is not settled yet
 * (docs/protocol.md, "Switchover"): which migration, which side, the state
 * reached and the peer. Written before every step that another side may
 * act on, removed once both sides agree on the outcome; `tsubame resolve`
 * reads what is left after a failure.
 */
#ifndef TSB_PROXY_RECORD_H
#define TSB_PROXY_RECORD_H

#include <stdbool.h>
#include <stddef.h>

#define RECORD_ID_MAX 64

struct mig_record {
	char id[RECORD_ID_MAX + 1];
	char side[8];		/* "send" or "recv" */
	char state[16];		/* send: started, commit, commit-early, abort; recv: prepared, commit */
	char peer[256];		/* send: the receiver's HOST:PORT; recv: its --listen */
	char qmp[256];		/* the local QEMU's QMP socket */
	char vm[RECORD_ID_MAX + 1];
	bool resume;		/* send: the source VM ran when the migration began */
};

/* <dir>/<id>.<side>.json into out. */
void record_path(const char *dir, const char *id, const char *side, char *out, size_t n);
/* Writes the record atomically and durably (tmp, fsync, rename, fsync dir). */
int record_save(const char *dir, const struct mig_record *r, char *err, size_t errlen);
/* Largest record file read back. */
#define RECORD_MAX_BYTES 8192

/* Parses a record's bytes (untrusted: from disk); -EBADMSG with err. */
int record_parse(const char *text, size_t len, struct mig_record *r, char *err,
		 size_t errlen);
/* Reads a record file; -ENOENT, -EBADMSG, -EMSGSIZE (err says what is wrong). */
int record_load(const char *path, struct mig_record *r, char *err, size_t errlen);
/* Removes the record (and its lock file). */
void record_drop(const char *dir, const struct mig_record *r);
/*
 * At the end of a run that holds r's lock: removes the lock file if no
 * record was saved (nothing for resolve to find), so that failed runs
 * leave nothing behind; a saved record keeps its lock file.
 */
void record_release(const char *dir, const struct mig_record *r);
/*
 * Takes the exclusive lock of a migration's side: held by send/recv while
 * they run and by `tsubame resolve`, so that only one acts on it. Returns
 * the fd to keep, -EBUSY when another process holds it, or -errno.
 */
int record_lock(const char *dir, const char *id, const char *side);

#endif
