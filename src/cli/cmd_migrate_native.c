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

int cmd_migrate_native(int argc, char **argv)
{
	const char *src_path = NULL, *dst_path = NULL, *uri = NULL;
	const char *listen_uri = NULL, *report = NULL;
	struct migctl_options opts = { .timeout_ms = 600000 };
	struct migctl_result res = { 0 };
	struct qmp *src = NULL, *dst = NULL;
	char *caps_copy = NULL, err[512] = "";
	json_t *out = NULL;
	struct progress prog = { 0 };
	bool show_progress = isatty(STDERR_FILENO);
	uint64_t v;
	int c, r, rc = TSB_EXIT_FAILED;

	while ((c = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
		switch (c) {
		case OPT_SRC_QMP:
			src_path = optarg;
			break;
		case OPT_DST_QMP:
			dst_path = optarg;
			break;
		case OPT_URI:
			uri = optarg;
			break;
		case OPT_LISTEN_URI:
			listen_uri = optarg;
			break;
		case OPT_CAPS:
			free(caps_copy);
			caps_copy = strdup(optarg);
			opts.n_caps = 0;
			if (!caps_copy || migctl_parse_caps(caps_copy, &opts) < 0) {
				free(caps_copy);
				return usage_error("too many capabilities in '%s'", optarg);
			}
			break;
		case OPT_MULTIFD_CHANNELS:
			if (tsb_parse_u64(optarg, 1, 255, &v) < 0)
				return usage_error("bad --multifd-channels '%s'", optarg);
			opts.multifd_channels = v;
			break;
		case OPT_MULTIFD_COMPRESSION:
			opts.multifd_compression = optarg;
			break;
		case OPT_XBZRLE_CACHE:
			if (tsb_parse_size(optarg, &opts.xbzrle_cache_size) < 0)
				return usage_error("bad --xbzrle-cache '%s'", optarg);
			break;
		case OPT_MAX_BANDWIDTH:
			if (tsb_parse_rate(optarg, &opts.max_bandwidth) < 0)
				return usage_error("bad --max-bandwidth '%s'", optarg);
			break;
		case OPT_DOWNTIME_LIMIT:
			if (tsb_parse_u64(optarg, 1, 2000000, &opts.downtime_limit_ms) < 0)
				return usage_error("bad --downtime-limit '%s'", optarg);
			break;
		case OPT_POSTCOPY_AFTER:
			if (tsb_parse_duration(optarg, &v) < 0)
				return usage_error("bad --postcopy-after '%s'", optarg);
			opts.postcopy_after_ms = v / 1000000;
			break;
		case OPT_TIMEOUT:
			if (tsb_parse_duration(optarg, &v) < 0)
				return usage_error("bad --timeout '%s'", optarg);
			opts.timeout_ms = v / 1000000;
			break;
		case OPT_REPORT:
			report = optarg;
			break;
		case OPT_PROGRESS:
			show_progress = true;
			break;
		case OPT_NO_PROGRESS:
			show_progress = false;
			break;
		case 'v':
			tsb_log_set_level(TSB_LOG_DEBUG);
			break;
		case 'h':
			usage(stdout);
			free(caps_copy);
			return TSB_EXIT_OK;
		default:
			free(caps_copy);
			fprintf(stderr, "Try 'tsubame migrate-native --help'.\n");
			return TSB_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!src_path || !dst_path || !uri) {
		free(caps_copy);
		return usage_error("%s", "--src-qmp, --dst-qmp and --uri are required");
	}
	if (!listen_uri)
		listen_uri = uri;

	r = qmp_open(src_path, 10000, &src);
	if (r < 0) {
		log_error_errno(r, "cannot connect to the source QMP socket %s", src_path);
		goto out;
	}
	r = qmp_open(dst_path, 10000, &dst);
	if (r < 0) {
		log_error_errno(r, "cannot connect to the destination QMP socket %s", dst_path);
		goto out;
	}
	r = migctl_prepare_destination(dst, &opts, listen_uri, err, sizeof(err));
	if (r < 0) {
		log_error("destination refused the setup: %s", err[0] ? err : strerror(-r));
		goto out;
	}
	r = migctl_prepare_source(src, &opts, err, sizeof(err));
	if (r < 0) {
		log_error("source refused the setup: %s", err[0] ? err : strerror(-r));
		goto out;
	}
	if (show_progress) {
		prog.start_ns = tsb_now_ns();
		opts.tick = progress_tick;
		opts.tick_opaque = &prog;
	}
	r = migctl_run(src, dst, &opts, uri, &res);
	if (prog.shown)
		fputc('\n', stderr);
	out = migctl_result_to_json(&res);
	json_object_set_new(out, "mode", json_string("native"));
	if (r == 0)
		rc = TSB_EXIT_OK;
	else if (r == -ETIMEDOUT)
		rc = 3;
	if (r < 0)
		log_error("migration %s: %s", res.status, res.error);

	if (report && json_dump_file(out, report, JSON_INDENT(2)) < 0) {
		log_error("cannot write the report to %s", report);
		rc = TSB_EXIT_FAILED;
	}
	json_dumpf(out, stdout, JSON_INDENT(2));
	fputc('\n', stdout);
out:
	json_decref(out);
	migctl_result_fini(&res);
	qmp_close(src);
	qmp_close(dst);
	free(caps_copy);
	return rc;
}
