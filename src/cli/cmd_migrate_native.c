/* tsubame migrate-native: QEMU's own migration, driven and measured. */
#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "migctl/migctl.h"
#include "qmp/qmp.h"

#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: tsubame migrate-native --src-qmp SOCKET --dst-qmp SOCKET --uri URI [OPTIONS]\n"
		"\n"
		"Runs QEMU's native live migration from the source QEMU to the destination\n"
		"QEMU (started with -incoming defer) and measures it. The destination\n"
		"listens on --listen-uri (default: --uri); the source connects to --uri,\n"
		"which may point at a WAN emulator in front of the destination.\n"
		"\n"
		"Options:\n"
		"  --src-qmp SOCKET          source QEMU's QMP socket\n"
		"  --dst-qmp SOCKET          destination QEMU's QMP socket\n"
		"  --uri URI                 where the source sends, e.g. tcp:127.0.0.1:6000\n"
		"  --listen-uri URI          where the destination listens (default: --uri)\n"
		"  --caps LIST               extra capabilities, comma separated, e.g.\n"
		"                            xbzrle,auto-converge,postcopy-ram,multifd\n"
		"  --multifd-channels N      multifd channels (with cap multifd)\n"
		"  --multifd-compression C   none, zlib or zstd (with cap multifd)\n"
		"  --xbzrle-cache SIZE       xbzrle cache size, e.g. 64M\n"
		"  --max-bandwidth RATE      QEMU's max-bandwidth, e.g. 1gbit\n"
		"  --downtime-limit MS       QEMU's downtime-limit in ms\n"
		"  --postcopy-after DUR      switch to postcopy after this long, e.g. 5s\n"
		"  --complete-block-jobs     QEMU's own storage route (libvirt's): the\n"
		"                            source's block jobs (mirrors into the\n"
		"                            destination's NBD export, started by the\n"
		"                            caller) are cancelled at pre-switchover, which\n"
		"                            completes them without pivot, before the\n"
		"                            destination runs\n"
		"  --timeout DUR             cancel if not done by then (default 600s)\n"
		"  --report FILE             write the result as JSON to FILE\n"
		"  --progress, --no-progress a progress line on stderr (default: on a TTY)\n"
		"  -v, --verbose             more log output\n"
		"  -h, --help                show this help\n"
		"\n"
		"Prints the result as JSON on stdout. Exit status: 0 completed,\n"
		"1 failed or cancelled (the source keeps running), 2 usage error,\n"
		"3 timed out and cancelled (the source keeps running).\n");
}

enum {
	OPT_SRC_QMP = 256,
	OPT_DST_QMP,
	OPT_URI,
	OPT_LISTEN_URI,
	OPT_CAPS,
	OPT_MULTIFD_CHANNELS,
	OPT_MULTIFD_COMPRESSION,
	OPT_XBZRLE_CACHE,
	OPT_MAX_BANDWIDTH,
	OPT_DOWNTIME_LIMIT,
	OPT_POSTCOPY_AFTER,
	OPT_TIMEOUT,
	OPT_REPORT,
	OPT_PROGRESS,
	OPT_NO_PROGRESS,
	OPT_COMPLETE_BLOCK_JOBS,
};

static const struct option options[] = {
	{ "src-qmp", required_argument, NULL, OPT_SRC_QMP },
	{ "dst-qmp", required_argument, NULL, OPT_DST_QMP },
	{ "uri", required_argument, NULL, OPT_URI },
	{ "listen-uri", required_argument, NULL, OPT_LISTEN_URI },
	{ "caps", required_argument, NULL, OPT_CAPS },
	{ "multifd-channels", required_argument, NULL, OPT_MULTIFD_CHANNELS },
	{ "multifd-compression", required_argument, NULL, OPT_MULTIFD_COMPRESSION },
	{ "xbzrle-cache", required_argument, NULL, OPT_XBZRLE_CACHE },
	{ "max-bandwidth", required_argument, NULL, OPT_MAX_BANDWIDTH },
	{ "downtime-limit", required_argument, NULL, OPT_DOWNTIME_LIMIT },
	{ "postcopy-after", required_argument, NULL, OPT_POSTCOPY_AFTER },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "report", required_argument, NULL, OPT_REPORT },
	{ "progress", no_argument, NULL, OPT_PROGRESS },
	{ "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
	{ "complete-block-jobs", no_argument, NULL, OPT_COMPLETE_BLOCK_JOBS },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{}
};

#define usage_error(...) cli_usage_error("migrate-native", __VA_ARGS__)

struct progress {
	uint64_t start_ns;
	bool shown;
};

/* migctl tick: one carriage-return line from the source's statistics. */
static void progress_tick(void *opaque, json_t *stats)
{
	struct progress *p = opaque;
	json_t *ram = json_object_get(stats, "ram");
	const char *st = json_string_value(json_object_get(stats, "status"));
	json_int_t pass, remaining, total, sent;
	double secs = (tsb_now_ns() - p->start_ns) / 1e9;

	if (!ram)
		return;
	pass = json_integer_value(json_object_get(ram, "dirty-sync-count"));
	remaining = json_integer_value(json_object_get(ram, "remaining"));
	total = json_integer_value(json_object_get(ram, "total"));
	sent = json_integer_value(json_object_get(ram, "transferred"));
	fprintf(stderr, "\rmigrate-native: %5.1f s  %-9s pass %lld  sent %.1f MB  "
		"%.1f Mbit/s  remaining %.1f of %.1f MB   ", secs, st ? st : "?",
		(long long)pass, sent / 1e6, secs > 0 ? sent * 8 / secs / 1e6 : 0.0,
		remaining / 1e6, total / 1e6);
	p->shown = true;
}

/* The source's block jobs (none: -errno < 0 only on a QMP failure). */
static int count_block_jobs(struct qmp *src, json_t **ret, char *err, size_t errlen)
{
	int r = qmp_execute(src, "query-block-jobs", NULL, ret, err, errlen);

	return r < 0 ? r : (int)json_array_size(*ret);
}

/*
 * --complete-block-jobs, at pre-switchover (the source is stopped): a
 * ready mirror cancelled completes without pivot once its target is
 * flushed, so the destination holds every disk write before it runs.
 */
static int complete_block_jobs(void *opaque, struct qmp *src, char *err, size_t errlen)
{
	uint64_t t0 = tsb_now_ns();
	json_t *jobs = NULL, *job;
	size_t i;
	int r;

	(void)opaque;
	r = count_block_jobs(src, &jobs, err, errlen);
	json_array_foreach(jobs, i, job) {
		const char *dev = json_string_value(json_object_get(job, "device"));

		if (r >= 0 && dev)
			r = qmp_execute(src, "block-job-cancel", json_pack("{s:s}", "device", dev),
					NULL, err, errlen);
	}
	json_decref(jobs);
	while (r > 0) {
		if (tsb_now_ns() - t0 > 60000000000ull) {
			snprintf(err, errlen, "the block jobs did not complete within 60 s");
			return -ETIMEDOUT;
		}
		usleep(5000);
		jobs = NULL;
		r = count_block_jobs(src, &jobs, err, errlen);
		json_decref(jobs);
	}
	return r < 0 ? r : 0;
}

/* What the command line asked for, besides the migctl options. */
struct native_args {
	const char *src_path, *dst_path, *uri, *listen_uri, *report;
	char *caps_copy;	/* opts.caps point into it */
	bool show_progress;
	bool help;
};

/* One option into *a or *opts. 0 or the exit code to return. */
static int parse_opt(int c, struct native_args *a, struct migctl_options *opts)
{
	uint64_t v;

	switch (c) {
	case OPT_SRC_QMP:
		a->src_path = optarg;
		break;
	case OPT_DST_QMP:
		a->dst_path = optarg;
		break;
	case OPT_URI:
		a->uri = optarg;
		break;
	case OPT_LISTEN_URI:
		a->listen_uri = optarg;
		break;
	case OPT_CAPS:
		free(a->caps_copy);
		a->caps_copy = strdup(optarg);
		opts->n_caps = 0;
		if (!a->caps_copy || migctl_parse_caps(a->caps_copy, opts) < 0)
			return usage_error("too many capabilities in '%s'", optarg);
		break;
	case OPT_MULTIFD_CHANNELS:
		if (tsb_parse_u64(optarg, 1, 255, &v) < 0)
			return usage_error("bad --multifd-channels '%s'", optarg);
		opts->multifd_channels = v;
		break;
	case OPT_MULTIFD_COMPRESSION:
		opts->multifd_compression = optarg;
		break;
	case OPT_XBZRLE_CACHE:
		if (tsb_parse_size(optarg, &opts->xbzrle_cache_size) < 0)
			return usage_error("bad --xbzrle-cache '%s'", optarg);
		break;
	case OPT_MAX_BANDWIDTH:
		if (tsb_parse_rate(optarg, &opts->max_bandwidth) < 0)
			return usage_error("bad --max-bandwidth '%s'", optarg);
		break;
	case OPT_DOWNTIME_LIMIT:
		if (tsb_parse_u64(optarg, 1, 2000000, &opts->downtime_limit_ms) < 0)
			return usage_error("bad --downtime-limit '%s'", optarg);
		break;
	case OPT_POSTCOPY_AFTER:
		if (tsb_parse_duration(optarg, &v) < 0)
			return usage_error("bad --postcopy-after '%s'", optarg);
		opts->postcopy_after_ms = v / 1000000;
		break;
	case OPT_TIMEOUT:
		if (tsb_parse_duration(optarg, &v) < 0)
			return usage_error("bad --timeout '%s'", optarg);
		opts->timeout_ms = v / 1000000;
		break;
	case OPT_REPORT:
		a->report = optarg;
		break;
	case OPT_PROGRESS:
		a->show_progress = true;
		break;
	case OPT_NO_PROGRESS:
		a->show_progress = false;
		break;
	case OPT_COMPLETE_BLOCK_JOBS:
		opts->pre_switchover = complete_block_jobs;
		break;
	case 'v':
		tsb_log_set_level(TSB_LOG_DEBUG);
		break;
	case 'h':
		a->help = true;
		break;
	default:
		fprintf(stderr, "Try 'tsubame migrate-native --help'.\n");
		return TSB_EXIT_USAGE;
	}
	return 0;
}

/* The command line into *a and *opts. 0 (see a->help) or the exit code. */
static int parse_args(int argc, char **argv, struct native_args *a,
		      struct migctl_options *opts)
{
	int c, r;

	while ((c = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
		r = parse_opt(c, a, opts);
		if (r || a->help)
			return r;
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!a->src_path || !a->dst_path || !a->uri)
		return usage_error("%s", "--src-qmp, --dst-qmp and --uri are required");
	if (!a->listen_uri)
		a->listen_uri = a->uri;
	if (opts->pre_switchover) {
		if (opts->n_caps >= MIGCTL_MAX_CAPS)
			return usage_error("%s", "too many capabilities");
		opts->caps[opts->n_caps++] = "pause-before-switchover";
	}
	return 0;
}

/* Connects to both QEMUs and sets them up. 0 or -errno (logged). */
static int connect_and_prepare(const struct native_args *a,
			       const struct migctl_options *opts,
			       struct qmp **src, struct qmp **dst)
{
	char err[512] = "";
	int r;

	r = qmp_open(a->src_path, 10000, src);
	if (r < 0) {
		log_error_errno(r, "cannot connect to the source QMP socket %s", a->src_path);
		return r;
	}
	r = qmp_open(a->dst_path, 10000, dst);
	if (r < 0) {
		log_error_errno(r, "cannot connect to the destination QMP socket %s",
				a->dst_path);
		return r;
	}
	r = migctl_prepare_destination(*dst, opts, a->listen_uri, err, sizeof(err));
	if (r < 0) {
		log_error("destination refused the setup: %s", err[0] ? err : strerror(-r));
		return r;
	}
	r = migctl_prepare_source(*src, opts, err, sizeof(err));
	if (r < 0) {
		log_error("source refused the setup: %s", err[0] ? err : strerror(-r));
		return r;
	}
	return 0;
}

/*
 * Prints the result of migctl_run (r) as JSON and writes the report.
 * Returns the exit code; *out receives the JSON (the caller frees it).
 */
static int emit_result(const struct native_args *a, int r,
		       const struct migctl_result *res, json_t **out)
{
	int rc = TSB_EXIT_FAILED;

	*out = migctl_result_to_json(res);
	json_object_set_new(*out, "mode", json_string("native"));
	if (r == 0)
		rc = TSB_EXIT_OK;
	else if (r == -ETIMEDOUT)
		rc = 3;
	if (r < 0)
		log_error("migration %s: %s", res->status, res->error);

	if (a->report && json_dump_file(*out, a->report, JSON_INDENT(2)) < 0) {
		log_error("cannot write the report to %s", a->report);
		rc = TSB_EXIT_FAILED;
	}
	json_dumpf(*out, stdout, JSON_INDENT(2));
	fputc('\n', stdout);
	return rc;
}

int cmd_migrate_native(int argc, char **argv)
{
	struct native_args a = { .show_progress = isatty(STDERR_FILENO) };
	struct migctl_options opts = { .timeout_ms = 600000 };
	struct migctl_result res = { 0 };
	struct qmp *src = NULL, *dst = NULL;
	json_t *out = NULL;
	struct progress prog = { 0 };
	int r, rc;

	rc = parse_args(argc, argv, &a, &opts);
	if (rc || a.help) {
		if (a.help)
			usage(stdout);
		free(a.caps_copy);
		return rc;
	}
	rc = TSB_EXIT_FAILED;
	if (connect_and_prepare(&a, &opts, &src, &dst) < 0)
		goto out;
	if (a.show_progress) {
		prog.start_ns = tsb_now_ns();
		opts.tick = progress_tick;
		opts.tick_opaque = &prog;
	}
	r = migctl_run(src, dst, &opts, a.uri, &res);
	if (prog.shown)
		fputc('\n', stderr);
	rc = emit_result(&a, r, &res, &out);
out:
	json_decref(out);
	migctl_result_fini(&res);
	qmp_close(src);
	qmp_close(dst);
	free(a.caps_copy);
	return rc;
}
