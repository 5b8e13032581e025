/* tsubame group send|recv: many VMs as one operation (docs/group.md). */
#include "cli/cli.h"
#include "cli/send_recv.h"
#include "common/log.h"
#include "group/group.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: tsubame group send --plan FILE --key FILE [OPTIONS]\n"
		"       tsubame group recv --plan FILE --key FILE [OPTIONS]\n"
		"\n"
		"Moves the VMs a plan names as one operation. 'group recv' at the\n"
		"destination host receives them (a receiver per VM, each on its \"listen\"\n"
		"address); 'group send' at the source host moves them: the first alone\n"
		"(it seeds the destination's store for the others), then up to\n"
		"--concurrency at once, all within one WAN --bandwidth. Each VM switches\n"
		"over on its own. A VM that fails does not stop the others and its source\n"
		"keeps running; running the same plan again moves what is left (a VM whose\n"
		"source QEMU has completed a migration counts as moved earlier).\n"
		"\n"
		"The plan (JSON; docs/group.md):\n"
		"  {\"tenant\": \"acme\", \"bandwidth\": \"100mbit\", \"concurrency\": 4,\n"
		"   \"vms\": [{\"name\": \"web1\", \"qmp\": \"/run/web1/qmp.sock\",\n"
		"             \"to\": \"site-b:7001\", \"dest_qmp\": \"/run/web1-in/qmp.sock\",\n"
		"             \"listen\": \"0.0.0.0:7001\"}, ...]}\n"
		"The sending side reads each VM's name, qmp and to; the receiving side its\n"
		"name, dest_qmp and listen. tenant, bandwidth and concurrency are optional;\n"
		"the options below win over them.\n"
		"\n"
		"Options:\n"
		"  --plan FILE            the plan (required)\n"
		"  --bandwidth RATE       send: the WAN budget of the whole group, e.g.\n"
		"                         100mbit, shared by the moving VMs (default: none)\n"
		"  --concurrency N        send: VMs moving at once (1-%d, default %d)\n"
		"  --no-seed              send: start up to N at once from the beginning\n"
		"  --timeline FILE        send: an SVG picture of the run (each VM's phases,\n"
		"                         its WAN rate, the budget)\n"
		"  --json                 progress and results as JSON lines on stdout\n"
		"  --report FILE          the group's JSON report (every VM's inside)\n"
		"  --no-progress          no per-VM lines on stderr (default: on a TTY)\n"
		"Every option of 'tsubame send' (or 'recv') applies to each VM except --qmp,\n"
		"--to, --listen and --vm-id (from the plan), --disk and the --net-* options.\n"
		"\n"
		"Exit status: 0 every VM is at the destination (some perhaps from an\n"
		"earlier run), 1 some are not (the table says which and why; their sources\n"
		"run them), 2 usage error.\n",
		GROUP_MAX_CONCURRENCY, GROUP_DEFAULT_CONCURRENCY);
}

static int load_plan(const char *cmd, const char *path, bool send, struct group_plan *plan)
{
	char err[512];

	if (group_plan_load(path, plan, err, sizeof(err)) < 0 ||
	    group_plan_check(plan, send, err, sizeof(err)) < 0) {
		fprintf(stderr, "tsubame %s: %s\n", cmd, err);
		if (plan->vms)
			group_plan_free(plan);
		return TSB_EXIT_USAGE;
	}
	return 0;
}

static int finish(json_t *report, const char *path, int left, size_t n, const char *what)
{
	int code = left == 0 ? TSB_EXIT_OK : TSB_EXIT_FAILED;

	if (report && path && proxy_write_report(path, report) < 0) {
		log_error("cannot write the report to %s", path);
		code = TSB_EXIT_FAILED;
	}
	json_decref(report);
	if (left < 0) {
		log_error("the group could not start: %s", strerror(-left));
		return TSB_EXIT_FAILED;
	}
	if (left > 0)
		log_error("%d of %zu VMs did not %s", left, n, what);
	return code;
}

static int group_send_cmd(int argc, char **argv)
{
	struct proxy_send_options o = { 0 };
	struct group_send_options go = { .base = &o };
	struct group_plan plan = { 0 };
	struct cli_sr_extra x;
	json_t *report = NULL;
	int r, left;

	r = cli_group_parse_send(argc, argv, &o, &x);
	if (r || x.help) {
		if (x.help)
			usage(stdout);
		return r;
	}
	r = load_plan("group send", x.plan, true, &plan);
	if (r)
		return r;
	if (!o.c.tenant && plan.tenant[0])
		o.c.tenant = plan.tenant;
	go.bandwidth = x.bandwidth ? x.bandwidth : plan.bandwidth;
	go.concurrency = x.concurrency ? x.concurrency : plan.concurrency ? plan.concurrency :
			 GROUP_DEFAULT_CONCURRENCY;
	go.seed_first = !x.no_seed && plan.seed_first != 0;
	go.tty = o.c.progress && !x.json;
	go.json = x.json;
	go.timeline_path = x.timeline;
	left = group_send(&plan, &go, &report);
	r = finish(report, o.c.report_path, left, plan.n_vms, "move");
	group_plan_free(&plan);
	return r;
}

static int group_recv_cmd(int argc, char **argv)
{
	struct proxy_recv_options o = { 0 };
	struct group_recv_options go = { .base = &o };
	struct group_plan plan = { 0 };
	struct cli_sr_extra x;
	json_t *report = NULL;
	int r, left;

	r = cli_group_parse_recv(argc, argv, &o, &x);
	if (r || x.help) {
		if (x.help)
			usage(stdout);
		return r;
	}
	r = load_plan("group recv", x.plan, false, &plan);
	if (r)
		return r;
	if (!o.c.tenant && plan.tenant[0])
		o.c.tenant = plan.tenant;
	go.json = x.json;
	left = group_recv(&plan, &go, &report);
	r = finish(report, o.c.report_path, left, plan.n_vms, "arrive");
	group_plan_free(&plan);
	return r;
}

int cmd_group(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? TSB_EXIT_USAGE : TSB_EXIT_OK;
	}
	if (!strcmp(argv[1], "send"))
		return group_send_cmd(argc - 1, argv + 1);
	if (!strcmp(argv[1], "recv"))
		return group_recv_cmd(argc - 1, argv + 1);
	return cli_usage_error("group", "unknown verb '%s' (send or recv)", argv[1]);
}
