/*
 * Drives one migration through QMP on both QEMUs: capabilities and
 * parameters, migrate-incoming / migrate, the optional switch to postcopy,
 * cancel on timeout, and the measurements a report needs (guest-visible
 * downtime from the source's STOP event to the destination's RESUME event,
 * and QEMU's own statistics). Used by `tsubame migrate-native` and by the
 * tsubame send/recv path.
 */
#ifndef TSB_MIGCTL_H
#define TSB_MIGCTL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qmp;

#define MIGCTL_MAX_CAPS 16

struct migctl_options {
	/* Capabilities to enable on both sides ("events" is always on). */
	const char *caps[MIGCTL_MAX_CAPS];
	unsigned int n_caps;
	unsigned int multifd_channels;	/* 0: QEMU's default */
	const char *multifd_compression; /* NULL: QEMU's default */
	uint64_t xbzrle_cache_size;	/* 0: QEMU's default */
	uint64_t max_bandwidth;		/* bytes/s, 0: QEMU's default */
	uint64_t downtime_limit_ms;	/* 0: QEMU's default */
	uint64_t postcopy_after_ms;	/* 0: never switch to postcopy by the clock */
	/*
	 * Switch to postcopy by itself when precopy does not converge, or
	 * converges too slowly: at the end of the first pass by QEMU's sample
	 * of the dirty rate (two thirds of the rate the stream moves, unless
	 * little is left), at the end of the second pass and later ones,
	 * when the guest dirties memory at nine tenths of the rate the stream
	 * moves or faster, when a pass left no less dirty memory than the one
	 * before, or two thirds of it or more while that is over four times
	 * what the downtime limit lets the last pass carry. Needs
	 * "postcopy-ram" in caps.
	 */
	bool postcopy_auto;
	/*
	 * Optional: the rate the stream moves end to end lately (bytes/s, 0:
	 * not known yet), e.g. a relay's measured delivery. postcopy_auto
	 * judges by it where it is below QEMU's own rate, which counts the
	 * bursts into a relay's buffers and the first pass's cheap pages.
	 */
	uint64_t (*stream_rate)(void *opaque);
	void *stream_rate_opaque;
	uint64_t timeout_ms;		/* cancel after this long; 0: never */
	/*
	 * Optional: called after every poll of the source's statistics
	 * (query-migrate result, borrowed), e.g. for a progress line.
	 */
	void (*tick)(void *opaque, json_t *stats);
	void *tick_opaque;
	/*
	 * Optional: when *abort_flag becomes non-zero (set from another
	 * thread or a signal handler), the migration is cancelled and
	 * migctl_run returns -ECANCELED.
	 */
	volatile int *abort_flag;
	/*
	 * Optional: called once when the source reaches pre-switchover
	 * (needs "pause-before-switchover" in caps; the source VM is
	 * stopped). 0: migctl continues (migrate-continue); -errno: the
	 * migration is cancelled, err says why.
	 */
	int (*pre_switchover)(void *opaque, struct qmp *src, char *err, size_t errlen);
	void *pre_switchover_opaque;
	/*
	 * Optional: once *no_return is true the destination may run the
	 * guest (a commit during postcopy), so the migration is never
	 * cancelled: QEMU would run the source again. An abort flag or a
	 * timeout is then ignored, and a stream that breaks (QEMU's
	 * postcopy-paused) ends the run with -EPIPE, both QEMUs paused.
	 */
	const bool *no_return;
};

struct migctl_result {
	char status[32];	 /* completed, failed, cancelled, timeout */
	char error[256];	 /* QEMU's error-desc or ours */
	/*
	 * migrate command to destination RESUME (postcopy: to the source's
	 * completion; not completed: to the end, cancel included)
	 */
	uint64_t wall_ms;
	int64_t downtime_ms;	 /* source STOP to destination RESUME; -1 unknown */
	bool postcopy;		 /* switched to postcopy */
	uint64_t postcopy_at_ms; /* when, since migrate */
	char postcopy_reason[160]; /* why ("" if not switched) */
	uint64_t stop_ns;	 /* source STOP event (CLOCK_REALTIME), 0 if none (set
				  * as soon as seen: a tick may read it) */
	uint64_t resume_ns;	 /* destination RESUME event, 0 if none */
	json_t *src_stats;	 /* last query-migrate of the source (owned) */
	uint64_t started_ns, started_wall_ns; /* the migrate command (monotonic, wall) */
	bool started;		 /* QEMU accepted the migrate command */
};

/* Parses "a,b,c" into opts->caps (pointers into a copy kept by the caller). */
int migctl_parse_caps(char *list, struct migctl_options *opts);

/*
 * Prepares the destination (capabilities, parameters) and starts listening
 * on listen_uri with migrate-incoming. errbuf receives QEMU's message.
 */
int migctl_prepare_destination(struct qmp *dst, const struct migctl_options *opts,
			       const char *listen_uri, char *errbuf, size_t errlen);

/* Sets capabilities and parameters on the source. */
int migctl_prepare_source(struct qmp *src, const struct migctl_options *opts,
			  char *errbuf, size_t errlen);

/*
 * Starts `migrate uri` on the source and watches both sides until the
 * destination resumes, the migration fails, or the timeout cancels it.
 * dst may be NULL (then downtime and RESUME are not observed). Fills *res
 * (free with migctl_result_fini). Returns 0 when the migration completed,
 * -ECANCELED/-ETIMEDOUT/-EIO otherwise, -EPIPE when a postcopy stream
 * broke after *no_return (res says why).
 */
int migctl_run(struct qmp *src, struct qmp *dst, const struct migctl_options *opts,
	       const char *uri, struct migctl_result *res);

/*
 * migctl_run in two steps, for a caller with work to do while QEMU sets its
 * migration up: migctl_start tells QEMU to migrate (0, or -EIO with *res
 * filled); migctl_follow then watches it as migctl_run does.
 */
int migctl_start(struct qmp *src, const char *uri, struct migctl_result *res);
int migctl_follow(struct qmp *src, struct qmp *dst, const struct migctl_options *opts,
		  struct migctl_result *res);

void migctl_result_fini(struct migctl_result *res);

/*
 * Ends the source's outgoing migration so that QEMU runs the guest again,
 * given its status ("" if unknown): migrate_cancel, except while QEMU may
 * be completing a precopy ("active", "device"). There QEMU 7.2 hands its
 * disks over (bdrv_inactivate_all) and a cancel that comes just before
 * lets it resume the guest with them still inactive: the next disk write
 * kills QEMU. So there the migration's channel is yanked (QMP yank): the
 * migration fails, and QEMU takes its disks back itself.
 */
void migctl_stop_source(struct qmp *src, const char *status);

/* The result as a new JSON object (caller owns the reference). */
json_t *migctl_result_to_json(const struct migctl_result *res);

#endif
