/* tsubame qmp: send one QMP command to a QEMU and print the reply. */
#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "qmp/qmp.h"
#include "vm/vm.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void qmp_usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame qmp (--qmp SOCKET | --dir RUNDIR) [OPTIONS] COMMAND ['{JSON ARGS}']\n"
"       tsubame qmp (--qmp SOCKET | --dir RUNDIR) --events SEC [COMMAND ['{JSON ARGS}']]\n"
"\n"
"Connects to a QEMU's QMP socket, runs COMMAND with the given arguments (a\n"
"JSON object) and prints its \"return\" value as one line of JSON.\n"
"\n"
"  --qmp SOCKET     QMP unix socket\n"
"  --dir RUNDIR     run directory of 'tsubame vm start' (uses RUNDIR/qmp.sock)\n"
"  --events SEC     afterwards print the events that arrive for SEC seconds\n"
"                   (also those that came during the command), one JSON line\n"
"                   each: {\"event\": NAME, \"data\": {...}, \"time_ns\": N}\n"
"  --timeout SEC    how long to wait for the socket and the reply (default 30)\n"
"  --pretty         indent the JSON output\n"
"  -v, --verbose    more logging\n"
"  -h, --help       this text\n"
"\n"
"Example: tsubame qmp --dir /tmp/vm1 migrate-set-parameters '{\"max-bandwidth\": 0}'\n"
"Exit: 0 success, 1 failure or QMP error (QEMU's message on stderr), 2 usage.\n");
}

#define usage_error(...) cli_usage_error("qmp", __VA_ARGS__)

enum {
	OPT_QMP = 256, OPT_DIR, OPT_EVENTS, OPT_TIMEOUT, OPT_PRETTY,
};

static void print_json(json_t *j, size_t flags)
{
	char *s = json_dumps(j, flags | JSON_ENCODE_ANY);

	if (s) {
		printf("%s\n", s);
		free(s);
	}
	fflush(stdout);
}

static void print_event(struct qmp_event *ev, size_t flags)
{
	json_t *j = json_pack("{s:s, s:O, s:I}", "event", ev->name, "data",
			      ev->data, "time_ns", (json_int_t)ev->time_ns);

	if (j)
		print_json(j, flags);
	json_decref(j);
}

/* What the command line asks for. */
struct qmp_args {
	const char *sock, *dir, *command;
	json_t *args;		/* owned */
	size_t flags;
	bool events;
	uint64_t events_ms;
	int timeout_ms;
	char path[PATH_MAX];	/* RUNDIR/qmp.sock with --dir */
};

/* The options. 0, or the exit code with *done set. */
static int parse_opts(int argc, char **argv, struct qmp_args *a, bool *done)
{
	static const struct option opts[] = {
		{ "qmp", required_argument, NULL, OPT_QMP },
		{ "dir", required_argument, NULL, OPT_DIR },
		{ "events", required_argument, NULL, OPT_EVENTS },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "pretty", no_argument, NULL, OPT_PRETTY },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	uint64_t v;
	int o;

	*done = true;
	opterr = 0;
	while ((o = getopt_long(argc, argv, "+:vh", opts, NULL)) != -1) {
		switch (o) {
		case OPT_QMP: a->sock = optarg; break;
		case OPT_DIR: a->dir = optarg; break;
		case OPT_EVENTS:
			if (tsb_parse_u64(optarg, 0, 86400, &v) < 0)
				return usage_error("bad --events '%s' (seconds)",
						   optarg);
			a->events = true;
			a->events_ms = v * 1000;
			break;
		case OPT_TIMEOUT:
			if (tsb_parse_u64(optarg, 1, 86400, &v) < 0)
				return usage_error("bad --timeout '%s' (seconds)",
						   optarg);
			a->timeout_ms = (int)(v * 1000);
			break;
		case OPT_PRETTY: a->flags = JSON_INDENT(2); break;
		case 'v': tsb_log_set_level(TSB_LOG_DEBUG); break;
		case 'h': qmp_usage(stdout); return TSB_EXIT_OK;
		case ':':
			return usage_error("option '%s' needs a value",
					   argv[optind - 1]);
		default:
			return usage_error("unknown option '%s'",
					   argv[optind - 1]);
		}
	}
	*done = false;
	return 0;
}

/* COMMAND, its JSON arguments and the socket. 0 or TSB_EXIT_USAGE. */
static int parse_operands(int argc, char **argv, struct qmp_args *a)
{
	if (!a->sock == !a->dir)
		return usage_error("give one of --qmp and --dir");
	if (optind < argc)
		a->command = argv[optind++];
	if (optind < argc) {
		json_error_t jerr;
		const char *text = argv[optind++];

		a->args = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
		if (!a->args || !json_is_object(a->args)) {
			bool parsed = a->args != NULL;

			json_decref(a->args);
			a->args = NULL;
			return usage_error("arguments '%s' are not a JSON object%s%s",
					   text, parsed ? "" : ": ",
					   parsed ? "" : jerr.text);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!a->command && !a->events)
		return usage_error("missing COMMAND");
	if (a->dir) {
		if (vm_path(a->dir, VM_QMP_SOCK, a->path, sizeof(a->path)) < 0)
			return usage_error("--dir '%s' too long", a->dir);
		a->sock = a->path;
	}
	return 0;
}

/* Prints the events that arrive for events_ms. 0 or -errno (reported). */
static int print_events(struct qmp *q, uint64_t events_ms, size_t flags)
{
	uint64_t deadline = tsb_now_ns() + events_ms * 1000000ull;
	int r;

	for (;;) {
		struct qmp_event ev;
		uint64_t now = tsb_now_ns();
		int left = now >= deadline ? 0 :
			   (int)((deadline - now) / 1000000ull);

		r = qmp_next_event(q, left, &ev);
		if (r == -ETIMEDOUT)
			return 0;
		if (r < 0) {
			fprintf(stderr, "tsubame qmp: events: %s\n",
				r == -ECONNRESET ? "QEMU closed the connection"
						 : strerror(-r));
			return r;
		}
		print_event(&ev, flags);
		qmp_event_fini(&ev);
	}
}

int cmd_qmp(int argc, char **argv)
{
	struct qmp_args a = { .flags = JSON_COMPACT, .timeout_ms = 30000 };
	char err[1024];
	json_t *res = NULL;
	struct qmp *q = NULL;
	bool done;
	int r, ret = TSB_EXIT_FAILED;

	r = parse_opts(argc, argv, &a, &done);
	if (done)
		return r;
	r = parse_operands(argc, argv, &a);
	if (r) {
		json_decref(a.args);
		return r;
	}

	r = qmp_open(a.sock, a.timeout_ms, &q);
	if (r < 0) {
		fprintf(stderr, "tsubame qmp: cannot connect to '%s': %s\n",
			a.sock, strerror(-r));
		goto out;
	}
	qmp_set_timeout(q, a.timeout_ms);
	if (a.command) {
		r = qmp_execute(q, a.command, a.args, &res, err, sizeof(err));
		if (r < 0) {
			fprintf(stderr, "tsubame qmp: %s: %s\n", a.command, err);
			goto out;
		}
		print_json(res, a.flags);
	}
	if (a.events && print_events(q, a.events_ms, a.flags) < 0)
		goto out;
	ret = TSB_EXIT_OK;
out:
	json_decref(res);
	json_decref(a.args);
	qmp_close(q);
	return ret;
}
