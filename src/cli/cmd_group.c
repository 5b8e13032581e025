/* tsubame group send|recv: many VMs as one operation (docs/group.md). */
#include "cli/cli.h"
#include "cli/send_recv.h"
#include "common/log.h"
#include "group/group.h"

#include <stdio.h>
#include <stdlib.h>
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
		"The sending side reads each VM's name, qmp and to (and host, if the VM is\n"
		"on another host of the site; affinity: VMs with the same one talk to each\n"
		"other and start one after the other); the receiving side its name, dest_qmp and\n"
		"listen (and dest_host). tenant, bandwidth and concurrency are optional;\n"
		"the options below win over them. A libvirt domain instead of a QEMU:\n"
		"  {\"name\": \"db1\", \"domain\": \"db1\", \"dest_uri\": \"qemu+ssh://b/system\",\n"
		"   \"to\": \"site-b:7002\", \"listen\": \"0.0.0.0:7002\", \"disks\": [\"vda\"]}\n"
		"moved by libvirt's own migration, its stream through tsubame (as 'tsubame\n"
		"migrate'); optional \"connect\" (the local libvirt) and \"qemu_port\" (both\n"
		"QEMUs' loopback port, + 1 for the disks; default 49290 + 2 x its place).\n"
		"\n"
		"Options:\n"
		"  --plan FILE            the plan (required)\n"
		"  --bandwidth RATE       send: the WAN budget of the whole group, e.g.\n"
		"                         100mbit, shared by the moving VMs (default: none)\n"
		"  --concurrency N        send: VMs moving at once (1-%d, default %d)\n"
		"  --no-seed              send: start up to N at once from the beginning\n"
		"  --order content|plan   send: which VM seeds: by default the plan's first,\n"
		"                         unless samples of the VMs' memory show that another\n"
		"                         holds clearly more of the others' (content); plan:\n"
		"                         the plan's order, no sampling\n"
		"  --dry-run              send: print the order the VMs would start in, and\n"
		"                         move nothing\n"
		"  --switchover-window DUR\n"
		"                         send: the VMs moving at once switch over\n"
		"                         together: each stopped source waits (paused)\n"
		"                         until the others' have stopped too, for up to\n"
		"                         DUR (e.g. 2s), then all go on (VMs of this host)\n"
		"  --timeline FILE        send: an SVG picture of the run (each VM's phases,\n"
		"                         its WAN rate, the budget)\n"
		"  --host NAME            this host's name in the plan: send moves the VMs\n"
		"                         whose \"host\" it is (or that have none) from here;\n"
		"                         recv receives those whose \"dest_host\" it is\n"
		"  --ssh CMD              send: how to reach the other source hosts a plan\n"
		"                         names (\"host\"; words split at spaces; default\n"
		"                         'ssh -o BatchMode=yes'): each runs 'tsubame group\n"
		"                         send --agent' there, within the same budget\n"
		"  --remote-tsubame PATH  send: tsubame on those hosts (default: tsubame)\n"
		"  --persistent           send: define libvirt domains at the destination\n"
		"  --undefinesource       send: and undefine them here afterwards\n"
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

/* The coordinator's own options, which its agents on other hosts do not take. */
static const char *const coordinator_only[] = {
	"plan=", "report=", "timeline=", "bandwidth=", "concurrency=", "host=", "ssh=",
	"remote-tsubame=", "json", "no-seed", "progress", "no-progress", "agent", "order=",
	"dry-run", NULL,
};

/*
 * What an agent on another host runs: tsubame group send --agent and the
 * options every VM shares (argv without the coordinator's own). NULL on ENOMEM.
 */
static const char **agent_argv(int argc, char **argv, const char *tsubame)
{
	const char **out = calloc((size_t)argc + 6, sizeof(*out));
	size_t n = 0;

	if (!out)
		return NULL;
	out[n++] = tsubame ? tsubame : "tsubame";
	out[n++] = "group";
	out[n++] = "send";
	out[n++] = "--agent";
	out[n++] = "--no-progress";
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *const *k;
		size_t l;

		if (strncmp(a, "--", 2)) {
			out[n++] = a;
			continue;
		}
		for (k = coordinator_only; *k; k++) {
			l = strlen(*k);
			if ((*k)[l - 1] == '=' ? !strncmp(a + 2, *k, l - 1) &&
						  (a[l + 1] == '=' || a[l + 1] == 0)
					       : !strcmp(a + 2, *k))
				break;
		}
		if (!*k)
			out[n++] = a;
		else if ((*k)[l - 1] == '=' && !strchr(a, '=') && i + 1 < argc)
			i++;	/* its value */
	}
	out[n] = NULL;
	return out;
}

/* Words of --ssh (split at spaces, no quoting). NULL on ENOMEM. */
static char **split_words(const char *cmd, char **store)
{
	char **w = calloc(strlen(cmd) / 2 + 2, sizeof(*w));
	size_t n = 0;
	char *save = NULL, *t;

	*store = strdup(cmd);
	if (!w || !*store) {
		free(w);
		return NULL;
	}
	for (t = strtok_r(*store, " ", &save); t; t = strtok_r(NULL, " ", &save))
		w[n++] = t;
	w[n] = NULL;
	return w;
}

/* An agent's plan: the first line of stdin (read bytewise: the rest are commands). */
static int read_agent_plan(struct group_plan *plan)
{
	static char line[GROUP_PLAN_MAX_BYTES + 1];
	size_t len = 0;
	char err[512];

	while (len < GROUP_PLAN_MAX_BYTES) {
		ssize_t n = read(STDIN_FILENO, line + len, 1);

		if (n <= 0 || line[len] == '\n')
			break;
		len++;
	}
	if (group_plan_parse(line, len, plan, err, sizeof(err)) < 0 ||
	    group_plan_check(plan, true, err, sizeof(err)) < 0) {
		fprintf(stderr, "tsubame group send --agent: the plan on stdin: %s\n", err);
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
	char **ssh_argv = NULL, *ssh_store = NULL;
	const char **remote_argv = NULL;
	int r, left;

	r = cli_group_parse_send(argc, argv, &o, &x);
	if (r || x.help) {
		if (x.help)
			usage(stdout);
		return r;
	}
	r = x.agent ? read_agent_plan(&plan) : load_plan("group send", x.plan, true, &plan);
	if (r)
		return r;
	if (!o.c.tenant && plan.tenant[0])
		o.c.tenant = plan.tenant;
	go.switch_window_ns = x.switch_window_ns;	/* agents: a gate of their own */
	go.persistent = x.persistent;
	go.plan_order = x.plan_order;
	go.dry_run = x.dry_run;
	go.undefine_source = x.undefine_source;
	if (x.agent) {
		go.agent = true;
		left = group_send(&plan, &go, &report);
		json_decref(report);
		group_plan_free(&plan);
		return left < 0 ? TSB_EXIT_FAILED : TSB_EXIT_OK;
	}
	/* This host's VMs move from here; the others through their hosts' agents. */
	for (size_t i = 0; x.host && i < plan.n_vms; i++)
		if (plan.vms[i].host && !strcmp(plan.vms[i].host, x.host)) {
			free(plan.vms[i].host);
			plan.vms[i].host = NULL;
		}
	ssh_argv = split_words(x.ssh ? x.ssh : "ssh -o BatchMode=yes", &ssh_store);
	remote_argv = agent_argv(argc, argv, x.remote_tsubame);
	go.ssh_argv = (const char *const *)ssh_argv;
	go.remote_argv = remote_argv;
	go.bandwidth = x.bandwidth ? x.bandwidth : plan.bandwidth;
	go.concurrency = x.concurrency ? x.concurrency : plan.concurrency ? plan.concurrency :
			 GROUP_DEFAULT_CONCURRENCY;
	go.seed_first = !x.no_seed && plan.seed_first != 0;
	go.tty = o.c.progress && !x.json;
	/* The lines say how each VM went: other lines would break them (-v: all). */
	if (go.tty && tsb_log_get_level() == TSB_LOG_NOTICE)
		tsb_log_set_level(TSB_LOG_WARN);
	go.json = x.json;
	go.timeline_path = x.timeline;
	left = group_send(&plan, &go, &report);
	r = finish(report, o.c.report_path, left, plan.n_vms, "move");
	group_plan_free(&plan);
	free(ssh_argv);
	free(ssh_store);
	free(remote_argv);
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
	if (x.host && !group_plan_only_host(&plan, false, x.host)) {
		fprintf(stderr, "tsubame group recv: no VM of the plan has \"dest_host\": \"%s\"\n",
			x.host);
		group_plan_free(&plan);
		return TSB_EXIT_USAGE;
	}
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
