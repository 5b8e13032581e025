#include "migctl/migctl.h"

#include "common/log.h"
#include "common/util.h"
#include "qmp/qmp.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>

/* How often the source's statistics are polled while a migration runs. */
#define MIGCTL_POLL_MS 250
/* postcopy_auto: a new sample of the guest's dirty rate this often. */
#define MIGCTL_DIRTY_SAMPLE_EVERY_MS 4000
/* How long the destination may take to resume after the source completed. */
#define MIGCTL_RESUME_WAIT_MS 60000
/* Ticks while a postcopy switch waits for the caller's commit. */
#define MIGCTL_COMMIT_POLL_MS 5
/* How long a cancel may take before we give up waiting for it. */
#define MIGCTL_CANCEL_WAIT_MS 30000

int migctl_parse_caps(char *list, struct migctl_options *opts)
{
	char *save = NULL, *tok;

	for (tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (!*tok)
			continue;
		if (opts->n_caps >= MIGCTL_MAX_CAPS)
			return -E2BIG;
		opts->caps[opts->n_caps++] = tok;
	}
	return 0;
}

static int set_capabilities(struct qmp *q, const struct migctl_options *opts,
			    char *errbuf, size_t errlen)
{
	json_t *list = json_array(), *args;
	unsigned int i;
	int r;

	json_array_append_new(list, json_pack("{s:s, s:b}", "capability", "events",
					      "state", 1));
	for (i = 0; i < opts->n_caps; i++)
		json_array_append_new(list, json_pack("{s:s, s:b}", "capability",
						      opts->caps[i], "state", 1));
	args = json_pack("{s:o}", "capabilities", list);
	r = qmp_execute(q, "migrate-set-capabilities", args, NULL, errbuf, errlen);
	json_decref(args);
	return r;
}

static int set_parameters(struct qmp *q, const struct migctl_options *opts,
			  bool source, char *errbuf, size_t errlen)
{
	json_t *args = json_object();
	int r = 0;

	if (opts->multifd_channels)
		json_object_set_new(args, "multifd-channels",
				    json_integer(opts->multifd_channels));
	if (opts->multifd_compression)
		json_object_set_new(args, "multifd-compression",
				    json_string(opts->multifd_compression));
	if (source && opts->xbzrle_cache_size)
		json_object_set_new(args, "xbzrle-cache-size",
				    json_integer(opts->xbzrle_cache_size));
	if (source && opts->max_bandwidth)
		json_object_set_new(args, "max-bandwidth",
				    json_integer(opts->max_bandwidth));
	if (source && opts->downtime_limit_ms)
		json_object_set_new(args, "downtime-limit",
				    json_integer(opts->downtime_limit_ms));
	if (json_object_size(args))
		r = qmp_execute(q, "migrate-set-parameters", args, NULL, errbuf, errlen);
	json_decref(args);
	return r;
}

int migctl_prepare_destination(struct qmp *dst, const struct migctl_options *opts,
			       const char *listen_uri, char *errbuf, size_t errlen)
{
	json_t *args;
	int r;

	r = set_capabilities(dst, opts, errbuf, errlen);
	if (r < 0)
		return r;
	r = set_parameters(dst, opts, false, errbuf, errlen);
	if (r < 0)
		return r;
	args = json_pack("{s:s}", "uri", listen_uri);
	r = qmp_execute(dst, "migrate-incoming", args, NULL, errbuf, errlen);
	json_decref(args);
	return r;
}

int migctl_prepare_source(struct qmp *src, const struct migctl_options *opts,
			  char *errbuf, size_t errlen)
{
	int r = set_capabilities(src, opts, errbuf, errlen);

	if (r < 0)
		return r;
	return set_parameters(src, opts, true, errbuf, errlen);
}

/* Watch state shared by the helpers of migctl_run. */
struct watch {
	uint64_t stop_ns;   /* source STOP event time, 0 if not seen */
	uint64_t resume_ns; /* destination RESUME event time */
	bool dst_failed;
	bool src_changed;   /* the source announced a new migration state */
};

static void drain_events(struct qmp *q, bool is_source, struct watch *w)
{
	struct qmp_event ev;

	while (qmp_next_event(q, 0, &ev) == 0) {
		if (is_source && !strcmp(ev.name, "STOP") && !w->stop_ns)
			w->stop_ns = ev.time_ns;
		else if (!is_source && !strcmp(ev.name, "RESUME") && !w->resume_ns)
			w->resume_ns = ev.time_ns;
		else if (is_source && !strcmp(ev.name, "MIGRATION"))
			w->src_changed = true;
		else if (!is_source && !strcmp(ev.name, "MIGRATION")) {
			const char *st = json_string_value(json_object_get(ev.data, "status"));

			if (st && !strcmp(st, "failed"))
				w->dst_failed = true;
		}
		log_debug("%s event %s", is_source ? "source" : "destination", ev.name);
		qmp_event_fini(&ev);
	}
}

/* Waits until one of the QMP sockets is readable or timeout_ms passes. */
static void wait_readable(struct qmp *src, struct qmp *dst, int timeout_ms)
{
	struct pollfd pfd[2] = {
		{ .fd = qmp_fd(src), .events = POLLIN },
		{ .fd = dst ? qmp_fd(dst) : -1, .events = POLLIN },
	};

	(void)poll(pfd, 2, timeout_ms);
}

static const char *query_status(struct qmp *src, json_t **stats)
{
	json_t *ret = NULL;
	int r;

	r = qmp_execute(src, "query-migrate", NULL, &ret, NULL, 0);
	if (r < 0)
		return NULL;
	/*
	 * A cancelled or failed migration reports no counters any more: keep
	 * the last ones seen, so a report still says what was sent.
	 */
	if (*stats && !json_object_get(ret, "ram")) {
		static const char *const keep[] = { "ram", "xbzrle-cache",
			"cpu-throttle-percentage", "total-time" };

		for (size_t i = 0; i < sizeof(keep) / sizeof(keep[0]); i++)
			if (json_object_get(*stats, keep[i]) && !json_object_get(ret, keep[i]))
				json_object_set(ret, keep[i], json_object_get(*stats, keep[i]));
	}
	json_decref(*stats);
	*stats = ret;
	return json_string_value(json_object_get(ret, "status"));
}

void migctl_stop_source(struct qmp *src, const char *status)
{
	json_t *args;

	if (status && (!strcmp(status, "active") || !strcmp(status, "device"))) {
		args = json_pack("{s:[{s:s}]}", "instances", "type", "migration");
		if (args && qmp_execute(src, "yank", args, NULL, NULL, 0) == 0) {
			json_decref(args);
			return;
		}
		json_decref(args);
	}
	(void)qmp_execute(src, "migrate_cancel", NULL, NULL, NULL, 0);
}

static void cancel_and_wait(struct qmp *src, struct migctl_result *res,
			    struct watch *w)
{
	uint64_t start = tsb_now_ns();
	const char *st = query_status(src, &res->src_stats);
	/* migctl_stop_source yanks an active migration, cancels any other */
	bool cancelled = st && strcmp(st, "active") && strcmp(st, "device");

	migctl_stop_source(src, st);
	while ((tsb_now_ns() - start) / 1000000 < MIGCTL_CANCEL_WAIT_MS) {
		st = query_status(src, &res->src_stats);
		if (st && (!strcmp(st, "cancelled") || !strcmp(st, "failed") ||
			   !strcmp(st, "completed") || !strcmp(st, "postcopy-paused")))
			return;
		/*
		 * Yanked while it went on to pre-switchover: QEMU's migration
		 * thread waits there for migrate-continue or a cancel, whatever
		 * became of its channel (the source stays paused meanwhile).
		 */
		if (st && !strcmp(st, "pre-switchover") && !cancelled) {
			(void)qmp_execute(src, "migrate_cancel", NULL, NULL, NULL, 0);
			cancelled = true;
		}
		wait_readable(src, NULL, MIGCTL_POLL_MS);
		drain_events(src, true, w);
	}
}

/* One migctl_run: what its steps share. */
struct run {
	struct qmp *src, *dst;
	const struct migctl_options *opts;
	struct migctl_result *res;
	struct watch w;
	uint64_t start, start_wall;	/* monotonic and wall clock at migrate */
	uint64_t last_poll, completed_at, now_ms;	/* ms since start */
	const char *st;			/* the source's last status */
	bool switched;			/* pre-switchover handled */
	/* postcopy_auto: the dirty memory left when each of the last passes ended. */
	int64_t sync_count;
	uint64_t left_prev, left_last;
	/*
	 * postcopy_auto: the guest's dirty rate sampled by QEMU
	 * (calc-dirty-rate) while the first pass runs, bytes/s; 0 unknown.
	 */
	double dirty_sampled;
	uint64_t dirty_asked_ms, dirty_next_ms;	/* asked then; ask again from then on */
	bool dirty_pending, dirty_off;		/* a sample runs; QEMU offers none */
};

/* The source's events; its STOP time at once, for a caller's thread (proxy's encoder). */
static void drain_source_events(struct run *m)
{
	drain_events(m->src, true, &m->w);
	__atomic_store_n(&m->res->stop_ns, m->w.stop_ns, __ATOMIC_RELEASE);
}

/* May the destination run the guest already (never cancel then)? */
static bool committed(const struct run *m)
{
	return m->opts->no_return && *m->opts->no_return;
}

/* Ends a run that did not complete: the time it took, then err. */
static int run_end(struct run *m, int err)
{
	m->res->wall_ms = (tsb_now_ns() - m->start) / 1000000;
	return err;
}

/* Polls the source's status when due. 0 or -EIO. */
static int run_poll(struct run *m)
{
	struct migctl_result *res = m->res;

	/* Ask at once when QEMU says its state changed (completed, pre-switchover). */
	if (m->now_ms - m->last_poll >= MIGCTL_POLL_MS || !m->st || m->w.src_changed) {
		m->last_poll = m->now_ms;
		m->w.src_changed = false;
		m->st = query_status(m->src, &res->src_stats);
		if (!m->st) {
			snprintf(res->status, sizeof(res->status), "failed");
			snprintf(res->error, sizeof(res->error),
				 "source QEMU stopped answering");
			return run_end(m, -EIO);
		}
	}
	return 0;
}

/* Ends the run if either side failed or the source was cancelled. 0 or -EIO. */
static int run_check_failed(struct run *m)
{
	struct migctl_result *res = m->res;
	const char *st = m->st, *desc;

	if (!strcmp(st, "postcopy-paused")) {
		/* The stream broke in postcopy: QEMU waits for a recovery. */
		snprintf(res->status, sizeof(res->status), "postcopy-paused");
		snprintf(res->error, sizeof(res->error), "the migration stream broke during "
			 "postcopy (QEMU: postcopy-paused)");
		/* Not committed: the caller tries to take the guest back (a cancel). */
		return run_end(m, committed(m) ? -EPIPE : -EIO);
	}
	if (strcmp(st, "failed") && strcmp(st, "cancelled") && !m->w.dst_failed)
		return 0;
	desc = json_string_value(json_object_get(res->src_stats, "error-desc"));
	snprintf(res->status, sizeof(res->status), "%s",
		 m->w.dst_failed ? "failed" : st);
	snprintf(res->error, sizeof(res->error), "%s",
		 desc ? desc : m->w.dst_failed ? "destination failed" : st);
	if (m->w.dst_failed && strcmp(st, "failed"))
		cancel_and_wait(m->src, res, &m->w);
	return run_end(m, -EIO);
}

/*
 * At pre-switchover (once): the caller's hook, then migrate-continue.
 * 0 to go on, 1 to start the next round at once, or -EIO.
 */
static int run_pre_switchover(struct run *m)
{
	const struct migctl_options *opts = m->opts;
	struct migctl_result *res = m->res;
	json_t *args;
	int r;

	if (!opts->pre_switchover || m->switched || strcmp(m->st, "pre-switchover"))
		return 0;
	/* The source is stopped: finish what must precede the switch. */
	m->switched = true;
	drain_source_events(m);	/* its STOP came with the status we just read */
	r = opts->pre_switchover(opts->pre_switchover_opaque, m->src, res->error,
				 sizeof(res->error));
	if (r == 0) {
		args = json_pack("{s:s}", "state", "pre-switchover");
		r = qmp_execute(m->src, "migrate-continue", args, NULL, res->error,
				sizeof(res->error));
		json_decref(args);
	}
	if (r < 0) {
		cancel_and_wait(m->src, res, &m->w);
		snprintf(res->status, sizeof(res->status), "failed");
		return run_end(m, -EIO);
	}
	m->st = query_status(m->src, &res->src_stats);
	return m->st ? 0 : 1;
}

/*
 * Once the source completed: 1 when the destination resumed (or there is
 * none to watch), -EIO when it did not in time, else 0.
 */
static int run_check_completed(struct run *m)
{
	struct migctl_result *res = m->res;

	if (strcmp(m->st, "completed"))
		return 0;
	if (!m->completed_at)
		m->completed_at = m->now_ms;
	/* A STOP read while we waited for the status would be missed otherwise. */
	drain_source_events(m);
	if (!m->dst || m->w.resume_ns)
		return 1;
	if (m->now_ms - m->completed_at > MIGCTL_RESUME_WAIT_MS) {
		snprintf(res->status, sizeof(res->status), "failed");
		snprintf(res->error, sizeof(res->error),
			 "source completed but the destination did not resume");
		return run_end(m, -EIO);
	}
	return 0;
}

/*
 * postcopy_auto: is precopy failing to converge, or converging so slowly
 * that it would send several times what postcopy would? Judged at the end
 * of each pass (QEMU's dirty-sync-count): from the first pass's end by the
 * sampled dirty rate, from two whole passes on also by QEMU's figures.
 * Writes why.
 */
/* The downtime QEMU aims at, in seconds (its default: 300 ms). */
static double downtime_s(const struct migctl_options *opts)
{
	return (opts->downtime_limit_ms ? (double)opts->downtime_limit_ms : 300.0) / 1000.0;
}

/*
 * postcopy_auto: QEMU's own dirty-rate sampling (calc-dirty-rate,
 * page-sampling mode: hashes of sampled pages, 1 s apart), asked for once
 * the migration runs and again every few seconds. The rate QEMU derives
 * at the end of a pass is spread over the whole pass and so, for a guest
 * that rewrites a working set, no more than the set's size per pass: the
 * first pass cannot tell. The sample can.
 */
static void sample_dirty_rate(struct run *m)
{
	json_t *args, *ret = NULL;
	char err[256] = "";
	const char *st;

	if (m->dirty_off)
		return;
	if (!m->dirty_pending) {
		if (m->now_ms < m->dirty_next_ms)
			return;
		args = json_pack("{s:i, s:i}", "calc-time", 1, "sample-pages", 4096);
		if (qmp_execute(m->src, "calc-dirty-rate", args, NULL, err, sizeof(err)) == 0) {
			m->dirty_pending = true;
			m->dirty_asked_ms = m->now_ms;
		} else {
			log_debug("calc-dirty-rate: %s: judging by passes only", err);
			m->dirty_off = true;	/* not offered here: judge by passes only */
		}
		json_decref(args);
		return;
	}
	if (m->now_ms < m->dirty_asked_ms + 1100 ||
	    qmp_execute(m->src, "query-dirty-rate", NULL, &ret, NULL, 0) < 0)
		return;
	st = json_string_value(json_object_get(ret, "status"));
	if (!st || strcmp(st, "measuring")) {
		if (st && !strcmp(st, "measured")) {	/* QEMU's MB/s are MiB/s */
			m->dirty_sampled = json_number_value(json_object_get(ret, "dirty-rate")) *
					   1048576.0;
			log_debug("the guest dirties %.1f MB/s (QEMU's sample)",
				  m->dirty_sampled / 1e6);
		}
		m->dirty_pending = false;
		m->dirty_next_ms = m->now_ms + MIGCTL_DIRTY_SAMPLE_EVERY_MS;
	}
	json_decref(ret);
}

static bool precopy_stuck(struct run *m, char *why, size_t len)
{
	json_t *ram = json_object_get(m->res->src_stats, "ram");
	int64_t n = json_integer_value(json_object_get(ram, "dirty-sync-count"));
	uint64_t left = (uint64_t)json_integer_value(json_object_get(ram, "remaining"));
	double mbps = json_number_value(json_object_get(ram, "mbps"));
	double dirty = (double)json_integer_value(json_object_get(ram, "dirty-pages-rate")) *
		       (double)json_integer_value(json_object_get(ram, "page-size"));
	double moved = mbps * 1e6 / 8;
	uint64_t relayed = m->opts->stream_rate ?
			   m->opts->stream_rate(m->opts->stream_rate_opaque) : 0;
	bool sampled = false;

	if (!ram || n <= m->sync_count)
		return false;
	if (relayed && (double)relayed < moved)
		moved = (double)relayed;
	m->sync_count = n;
	m->left_prev = m->left_last;
	m->left_last = left;
	/* From the first pass's end: the sample; from the second's: QEMU's rate too. */
	if (n < 2 || (n < 3 && !m->dirty_sampled))
		return false;
	if (n < 3 || m->dirty_sampled > dirty) {
		dirty = m->dirty_sampled;
		sampled = true;
	}
	log_debug("auto: pass %lld left %.1f MB; the guest dirties %.1f MB/s%s, the stream "
		  "moves %.1f MB/s (QEMU: %.1f)", (long long)n - 1, left / 1e6, dirty / 1e6,
		  sampled ? " (sampled)" : "", moved / 1e6, mbps / 8);
	/*
	 * At the first pass's end only the sample speaks, and it reads low
	 * (S5: 14.7 of 21 MB/s): two thirds, the ratio from which the pass
	 * rule below calls precopy too slow, unless little is left.
	 */
	if (moved > 0 && (dirty >= 0.9 * moved ||
			  (n < 3 && sampled && dirty >= moved / 3 * 2 &&
			   (double)left > 4 * moved * downtime_s(m->opts)))) {
		snprintf(why, len, "the guest dirties %.1f MB/s%s and the stream moves %.1f MB/s",
			 dirty / 1e6, sampled ? " (sampled)" : "", moved / 1e6);
		return true;
	}
	if (n < 3)
		return false;
	/*
	 * A pass that leaves r of what the pass before left: precopy sends
	 * about left / (1 - r) more before it converges (if it does), postcopy
	 * about left once. From r = 2/3 on, that is three times as much,
	 * unless what is left is near what the downtime limit lets the last
	 * pass carry (then a pass or two finish it).
	 */
	if (m->left_prev && left >= m->left_prev) {
		snprintf(why, len, "pass %lld left %.1f MB dirty, no less than the pass before "
			 "(%.1f MB)", (long long)n - 1, left / 1e6, m->left_prev / 1e6);
		return true;
	}
	if (m->left_prev && left >= m->left_prev / 3 * 2 &&
	    (double)left > 4 * moved * downtime_s(m->opts)) {
		snprintf(why, len, "pass %lld left %.1f MB dirty, the pass before %.1f MB: "
			 "precopy would send %.1f times that before converging",
			 (long long)n - 1, left / 1e6, m->left_prev / 1e6,
			 (double)m->left_prev / (double)(m->left_prev - left));
		return true;
	}
	return false;
}

/* Switches to postcopy (once): when --postcopy-after has passed, or precopy is stuck. */
static void run_maybe_postcopy(struct run *m)
{
	const struct migctl_options *opts = m->opts;
	struct migctl_result *res = m->res;
	char why[160] = "";
	int r;

	if (res->postcopy || strcmp(m->st, "active"))
		return;
	if (opts->postcopy_auto)
		sample_dirty_rate(m);
	if (opts->postcopy_after_ms && m->now_ms >= opts->postcopy_after_ms)
		snprintf(why, sizeof(why), "%llu ms of precopy (--postcopy-after)",
			 (unsigned long long)opts->postcopy_after_ms);
	else if (!opts->postcopy_auto || !precopy_stuck(m, why, sizeof(why)))
		return;
	r = qmp_execute(m->src, "migrate-start-postcopy", NULL, NULL,
			res->error, sizeof(res->error));
	if (r < 0) {
		log_warn("migrate-start-postcopy: %s", res->error);
	} else {
		res->postcopy = true;
		res->postcopy_at_ms = m->now_ms;
		snprintf(res->postcopy_reason, sizeof(res->postcopy_reason), "%s", why);
		log_notice("switching to postcopy after %llu ms: %s",
			   (unsigned long long)m->now_ms, why);
	}
	res->error[0] = '\0';
}

/* Cancels when the caller's abort flag is set. 0 or -ECANCELED. */
static int run_check_abort(struct run *m)
{
	const struct migctl_options *opts = m->opts;
	struct migctl_result *res = m->res;

	if (opts->abort_flag && *opts->abort_flag &&
	    strcmp(m->st, "completed") && !committed(m)) {
		/* A paused postcopy is not cancelled: QEMU 7.2 would hang in it. */
		if (strcmp(m->st, "postcopy-paused"))
			cancel_and_wait(m->src, res, &m->w);
		res->stop_ns = m->w.stop_ns;
		snprintf(res->status, sizeof(res->status), "cancelled");
		return run_end(m, -ECANCELED);
	}
	return 0;
}

/* Cancels a precopy migration that outlived the timeout. 0 or -ETIMEDOUT. */
static int run_check_timeout(struct run *m)
{
	const struct migctl_options *opts = m->opts;
	struct migctl_result *res = m->res;

	if (opts->timeout_ms && m->now_ms >= opts->timeout_ms && !committed(m) &&
	    strcmp(m->st, "completed") && strncmp(m->st, "postcopy", 8)) {
		cancel_and_wait(m->src, res, &m->w);
		snprintf(res->status, sizeof(res->status), "timeout");
		snprintf(res->error, sizeof(res->error),
			 "did not converge within %llu ms; cancelled",
			 (unsigned long long)opts->timeout_ms);
		return run_end(m, -ETIMEDOUT);
	}
	return 0;
}

/*
 * One round of watching: events, status, and what they call for.
 * 1 when the migration completed, 0 to go on, or -errno.
 */
static int run_step(struct run *m)
{
	int r;

	/*
	 * Between the switch to postcopy and the caller's commit the tick
	 * decides when the destination may run: call it often then.
	 */
	wait_readable(m->src, m->dst, m->opts->no_return && !committed(m) && m->res->postcopy ?
		      MIGCTL_COMMIT_POLL_MS : MIGCTL_POLL_MS / 2);
	drain_source_events(m);
	if (m->dst)
		drain_events(m->dst, false, &m->w);
	m->now_ms = (tsb_now_ns() - m->start) / 1000000;

	r = run_poll(m);
	if (!r)
		r = run_check_failed(m);
	if (r)
		return r;
	r = run_pre_switchover(m);
	if (r)
		return r < 0 ? r : 0;
	r = run_check_completed(m);
	if (r)
		return r;
	m->res->stop_ns = m->w.stop_ns;
	if (m->opts->tick && m->res->src_stats)
		m->opts->tick(m->opts->tick_opaque, m->res->src_stats);
	r = run_check_abort(m);
	if (r)
		return r;
	run_maybe_postcopy(m);
	return run_check_timeout(m);
}

/* The measurements of a completed migration. */
static void run_completed(struct run *m)
{
	struct migctl_result *res = m->res;
	const struct watch *w = &m->w;

	snprintf(res->status, sizeof(res->status), "completed");
	res->stop_ns = w->stop_ns;
	res->resume_ns = w->resume_ns;
	/* Event timestamps are exact; our polling may notice them late. */
	if (w->resume_ns > m->start_wall)
		res->wall_ms = (w->resume_ns - m->start_wall) / 1000000;
	else
		res->wall_ms = (tsb_now_ns() - m->start) / 1000000;
	/*
	 * Postcopy: the destination resumes at the switchover and pulls the
	 * rest afterwards; the migration ends when the source completes.
	 */
	if (res->postcopy && m->completed_at > res->wall_ms)
		res->wall_ms = m->completed_at;
	if (w->stop_ns && w->resume_ns && w->resume_ns >= w->stop_ns)
		res->downtime_ms = (int64_t)((w->resume_ns - w->stop_ns) / 1000000);
}

int migctl_start(struct qmp *src, const char *uri, struct migctl_result *res)
{
	json_t *args;
	int r;

	memset(res, 0, sizeof(*res));
	res->downtime_ms = -1;
	res->started_ns = tsb_now_ns();
	res->started_wall_ns = tsb_wall_ns();
	args = json_pack("{s:s}", "uri", uri);
	r = qmp_execute(src, "migrate", args, NULL, res->error, sizeof(res->error));
	json_decref(args);
	if (r < 0) {
		snprintf(res->status, sizeof(res->status), "failed");
		res->wall_ms = (tsb_now_ns() - res->started_ns) / 1000000;
		return -EIO;
	}
	res->started = true;
	return 0;
}

int migctl_follow(struct qmp *src, struct qmp *dst, const struct migctl_options *opts,
		  struct migctl_result *res)
{
	struct run m = { .src = src, .dst = dst, .opts = opts, .res = res,
			 .start = res->started_ns, .start_wall = res->started_wall_ns };
	int r;

	do
		r = run_step(&m);
	while (r == 0);
	if (r < 0)
		return r;
	run_completed(&m);
	return 0;
}

int migctl_run(struct qmp *src, struct qmp *dst, const struct migctl_options *opts,
	       const char *uri, struct migctl_result *res)
{
	int r = migctl_start(src, uri, res);

	return r < 0 ? r : migctl_follow(src, dst, opts, res);
}

void migctl_result_fini(struct migctl_result *res)
{
	json_decref(res->src_stats);
	res->src_stats = NULL;
}

json_t *migctl_result_to_json(const struct migctl_result *res)
{
	json_t *o = json_object(), *ram;
	json_t *stats = res->src_stats;

	json_object_set_new(o, "status", json_string(res->status));
	if (res->error[0])
		json_object_set_new(o, "error", json_string(res->error));
	json_object_set_new(o, "wall_ms", json_integer(res->wall_ms));
	json_object_set_new(o, "downtime_ms", json_integer(res->downtime_ms));
	json_object_set_new(o, "postcopy", json_boolean(res->postcopy));
	if (res->postcopy)
		json_object_set_new(o, "postcopy_at_ms", json_integer((json_int_t)res->postcopy_at_ms));
	if (stats) {
		json_object_set(o, "qemu_total_time_ms", json_object_get(stats, "total-time")
			? json_object_get(stats, "total-time") : json_null());
		json_object_set(o, "qemu_downtime_ms", json_object_get(stats, "downtime")
			? json_object_get(stats, "downtime") : json_null());
		ram = json_object_get(stats, "ram");
		if (ram)
			json_object_set(o, "qemu_ram", ram);
		if (json_object_get(stats, "xbzrle-cache"))
			json_object_set(o, "qemu_xbzrle", json_object_get(stats, "xbzrle-cache"));
		if (json_object_get(stats, "cpu-throttle-percentage"))
			json_object_set(o, "cpu_throttle_percentage",
					json_object_get(stats, "cpu-throttle-percentage"));
	}
	return o;
}
