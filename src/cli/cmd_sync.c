/*
 * tsubame sync: rounds of a running VM's memory into a standby's store,
 * and tsubame recv --standby, which keeps them (docs/standby.md).
 *
 * Each round is one send to the standby (proxy_send with standby_round):
 * a fresh connection, so a cut link costs one round, and the next one
 * starts when the link is back. Between rounds the standby's staleness
 * grows by what the guest dirties: said on the progress line and as JSON.
 */
#include "cli/cli.h"
#include "cli/send_recv.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "group/group.h"
#include "proxy/proxy.h"
#include "qmp/qmp.h"
#include "wire/pacer.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define SYNC_INTERVAL_DEFAULT_NS (60 * 1000000000ull)
/* After a failed round: retry sooner than the interval, but not in a loop. */
#define SYNC_RETRY_NS (5 * 1000000000ull)
/* QEMU's max-bandwidth in a round unless given: how fast it reads the guest's memory. */
#define SYNC_SCAN_RATE_DEFAULT (64ull << 20)
/*
 * sync's CPU priority unless --nice: it works in the background, beside
 * the guest it copies, and should yield the CPU to it (and to other
 * guests) when they compete. Its threads inherit it.
 */
#define SYNC_NICE_DEFAULT 10
/* How often a waiting sync says how stale the standby is. */
#define SYNC_STATUS_EVERY_NS (10 * 1000000000ull)

/* What the standby lacks of one VM: what its last kept round left, and since then. */
struct staleness {
	const char *vm;			/* its id ("" for the single VM without --vm-id) */
	const char *qmp;		/* its QEMU: what its disks lack (dirty bitmaps) */
	unsigned kept, failed;		/* rounds */
	uint64_t kept_ns;		/* when the last kept round ended; 0: none yet */
	uint64_t stale_bytes;		/* QEMU's dirty bytes not yet sent at its end */
	uint64_t dirty_rate;		/* bytes/s the guest dirtied then */
	uint64_t ram_bytes;
};

static uint64_t json_u64(json_t *o, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(o, key));

	return v > 0 ? (uint64_t)v : 0;
}

/* Bytes the standby lacks now, at most: the round's rest plus what was dirtied since. */
static uint64_t stale_now(const struct staleness *st, uint64_t now)
{
	uint64_t age = st->kept_ns ? now - st->kept_ns : 0;
	uint64_t b = st->stale_bytes + (uint64_t)(st->dirty_rate * (age / 1e9));

	return st->ram_bytes && b > st->ram_bytes ? st->ram_bytes : b;
}

/*
 * Bytes of its disks written since the standby's last kept round (the
 * rounds' dirty bitmaps in its QEMU, docs/standby.md; also those of an
 * earlier sync process); 0 without disks or a kept round.
 */
static uint64_t disk_stale_now(const struct staleness *st)
{
	struct qmp *q = NULL;
	int64_t b;

	if (!st->qmp || qmp_open(st->qmp, 2000, &q) < 0)
		return 0;
	b = disk_stale_bytes(q);
	qmp_close(q);
	return b > 0 ? (uint64_t)b : 0;
}

static void say_status(const struct staleness *st, size_t n, bool json, bool tty, uint64_t now)
{
	uint64_t lacks = 0, oldest = 0;
	unsigned kept = 0;

	for (size_t i = 0; i < n; i++) {
		double age = st[i].kept_ns ? (now - st[i].kept_ns) / 1e9 : -1;
		uint64_t disk = disk_stale_now(&st[i]);

		lacks += stale_now(&st[i], now) + disk;
		kept += st[i].kept;
		if (st[i].kept_ns && (!oldest || st[i].kept_ns < oldest))
			oldest = st[i].kept_ns;
		if (!json)
			continue;
		printf("{\"event\":\"stale\",\"vm\":\"%s\",\"rounds_kept\":%u,\"rounds_failed\":%u,"
		       "\"age_s\":%.1f,\"stale_bytes\":%llu,\"disk_stale_bytes\":%llu}\n", st[i].vm,
		       st[i].kept, st[i].failed, age, (unsigned long long)stale_now(&st[i], now),
		       (unsigned long long)disk);
	}
	if (json)
		fflush(stdout);
	if (tty && oldest)
		fprintf(stderr, "\rsync: %u round(s) kept; the oldest last round %.0f s ago; the "
			"standby lacks at most %.1f MB   ", kept, (now - oldest) / 1e9, lacks / 1e6);
}

/* One round's line and event; updates st from a kept round's report. */
static void round_done(struct staleness *st, enum proxy_outcome oc, json_t *report,
		       uint64_t round_ns, bool json)
{
	json_t *sync = json_object_get(report, "sync");
	json_t *wan = json_object_get(report, "wan");
	/* The disks' channel is a WAN connection of the round too. */
	uint64_t disk_bytes = json_u64(json_object_get(report, "disks"), "channel_net_bytes");
	uint64_t wan_bytes = json_u64(wan, "bytes_sent") + json_u64(wan, "bytes_received") +
			     disk_bytes;

	if (oc == PROXY_OK) {
		uint64_t now = tsb_now_ns(), changed = json_u64(json_object_get(report, "pages"),
								 "data") * 4096;

		st->stale_bytes = json_u64(sync, "stale_bytes");
		st->dirty_rate = json_u64(sync, "dirty_bytes_per_s");
		/*
		 * QEMU's dirty-rate figure is often 0 right after a pass; what
		 * this round had to send as data since the last one is the
		 * guest's measured rate of change.
		 */
		if (st->kept_ns && now > st->kept_ns &&
		    changed / ((now - st->kept_ns) / 1e9) > st->dirty_rate)
			st->dirty_rate = (uint64_t)(changed / ((now - st->kept_ns) / 1e9));
		st->kept++;
		st->kept_ns = now;
		st->ram_bytes = json_u64(sync, "ram_bytes");
		log_notice("sync: %s%sround %u kept: %.1f MB on the WAN in %.1f s; the standby lacks "
			   "%.1f MB (the guest dirties %.1f MB/s)", st->vm, st->vm[0] ? ": " : "",
			   st->kept, wan_bytes / 1e6, round_ns / 1e9, st->stale_bytes / 1e6,
			   st->dirty_rate / 1e6);
	} else {
		st->failed++;
		log_warn("sync: %s%sthe round failed (%s); the standby keeps the last kept round",
			 st->vm, st->vm[0] ? ": " : "",
			 json_string_value(json_object_get(report, "error")) ?: "see above");
	}
	if (!json)
		return;
	printf("{\"event\":\"round\",\"vm\":\"%s\",\"ok\":%s,\"round\":%u,\"wan_bytes\":%llu,"
	       "\"disk_bytes\":%llu,\"round_ms\":%llu,\"stale_bytes\":%llu,\"dirty_bytes_per_s\":%llu,"
	       "\"ended_by\":\"%s\"}\n", st->vm, oc == PROXY_OK ? "true" : "false",
	       st->kept + st->failed, (unsigned long long)wan_bytes,
	       (unsigned long long)disk_bytes, (unsigned long long)(round_ns / 1000000),
	       (unsigned long long)(oc == PROXY_OK ? st->stale_bytes : 0),
	       (unsigned long long)(oc == PROXY_OK ? st->dirty_rate : 0),
	       json_string_value(json_object_get(sync, "ended_by")) ?: "");
	fflush(stdout);
}

/* Sleeps until t (or a signal), saying how stale the standby is meanwhile. */
static void wait_until(uint64_t t, volatile int *sig, const struct staleness *st, size_t n,
		       const struct cli_sr_extra *x, bool tty)
{
	uint64_t next = tsb_now_ns(), now;
	bool said = false;

	while (!*sig && (now = tsb_now_ns()) < t) {
		if (now >= next) {
			say_status(st, n, x->json, tty, now);
			said = true;
			next = now + (tty ? 1000000000ull : SYNC_STATUS_EVERY_NS);
		}
		usleep(100000);
	}
	if (tty && said)
		fputc('\n', stderr);
}

/* The VMs to sync: the command line's one, or the plan's (each its QEMU, standby, id). */
struct sync_vms {
	struct group_plan plan;
	size_t n;
	struct staleness *st;
};

static int load_vms(struct proxy_send_options *o, const struct cli_sr_extra *x,
		    struct sync_vms *v)
{
	char err[512];

	memset(v, 0, sizeof(*v));
	if (x->plan && (group_plan_load(x->plan, &v->plan, err, sizeof(err)) < 0 ||
			group_plan_check(&v->plan, true, err, sizeof(err)) < 0))
		return cli_usage_error("sync", "--plan %s: %s", x->plan, err);
	v->n = x->plan ? v->plan.n_vms : 1;
	v->st = calloc(v->n ? v->n : 1, sizeof(*v->st));
	if (!v->st) {
		log_error("out of memory");
		return TSB_EXIT_FAILED;
	}
	for (size_t i = 0; i < v->n; i++) {
		v->st[i].vm = x->plan ? v->plan.vms[i].name : o->vm_id ? o->vm_id : "";
		/* (no disks synced: nothing to ask its QEMU between rounds) */
		v->st[i].qmp = o->no_disks ? NULL : x->plan ? v->plan.vms[i].qmp : o->c.qmp_path;
	}
	if (x->plan && !o->c.tenant && v->plan.tenant[0])
		o->c.tenant = v->plan.tenant;
	return 0;
}

/* Points o at VM i of the plan (the single VM needs nothing). */
static void aim(struct proxy_send_options *o, const struct sync_vms *v, size_t i)
{
	if (!v->plan.n_vms)
		return;
	o->c.qmp_path = v->plan.vms[i].qmp;
	o->to = v->plan.vms[i].to;
	o->vm_id = v->plan.vms[i].name;
}

static bool all_kept(const struct sync_vms *v, unsigned rounds)
{
	for (size_t i = 0; i < v->n; i++)
		if (v->st[i].kept < rounds)
			return false;
	return true;
}

/*
 * --nice, or by default SYNC_NICE_DEFAULT unless already nicer (a sync
 * started under nice keeps that). Linux: the calling thread's nice value,
 * which the threads made later inherit.
 */
static void set_nice(int given)
{
	int want = given >= 0 ? given : SYNC_NICE_DEFAULT, cur;

	errno = 0;
	cur = getpriority(PRIO_PROCESS, 0);
	if (given < 0 && !errno && cur >= want)
		return;
	if (setpriority(PRIO_PROCESS, 0, want) < 0)
		log_warn("sync: cannot set its CPU priority to nice %d: %s", want, strerror(errno));
}

int cli_sync_run(const struct proxy_send_options *given, const struct cli_sr_extra *x)
{
	/* Each round's options: the plan's VM in turn. */
	struct proxy_send_options round_o = *given, *o = &round_o;
	uint64_t interval = x->interval_ns ? x->interval_ns : SYNC_INTERVAL_DEFAULT_NS;
	uint64_t deadline = o->c.timeout_ms ? tsb_now_ns() + o->c.timeout_ms * 1000000 : 0;
	uint64_t bandwidth = x->bandwidth;
	volatile int sig = 0;
	bool tty = o->c.progress, any_failed;
	enum proxy_outcome oc = PROXY_OK;
	struct sync_vms v;
	int rc = load_vms(o, x, &v);

	if (rc)
		return rc;
	set_nice(x->nice);
	o->standby_round = true;
	o->c.timeout_ms = 0;	/* --timeout bounds the whole sync, not a round */
	o->c.progress = false;	/* one line per round instead */
	if (!o->max_bandwidth)
		o->max_bandwidth = SYNC_SCAN_RATE_DEFAULT;
	if (!bandwidth && x->plan)
		bandwidth = v.plan.bandwidth;
	/* One cap for all the rounds, of every VM. */
	if (bandwidth && !(o->pacer = wire_pacer_new(bandwidth))) {
		log_error("out of memory");
		rc = TSB_EXIT_FAILED;
		goto out;
	}
	proxy_catch_signals(&sig);
	/* A cycle: one round of each VM (one after another: the later ones refer to the earlier). */
	while (!sig && (!x->rounds || !all_kept(&v, x->rounds))) {
		uint64_t cycle_ns = tsb_now_ns();

		any_failed = false;
		for (size_t i = 0; i < v.n && !sig; i++) {
			uint64_t t0 = tsb_now_ns();
			json_t *report = NULL;

			if (x->rounds && v.st[i].kept >= x->rounds)
				continue;
			if (deadline && t0 >= deadline) {
				log_error("sync: --timeout reached");
				rc = 3;
				goto stop;
			}
			aim(o, &v, i);
			oc = proxy_send(o, &report);
			if (oc == PROXY_INTERRUPTED || sig) {
				json_decref(report);
				goto stop;
			}
			round_done(&v.st[i], oc, report, tsb_now_ns() - t0, x->json);
			if (report && o->c.report_path &&
			    proxy_write_report(o->c.report_path, report) < 0)
				log_warn("cannot write the report to %s", o->c.report_path);
			json_decref(report);
			any_failed |= oc != PROXY_OK;
			/* Refused for good (a wrong key, a receiver that is no standby): stop. */
			if (oc == PROXY_AUTH || oc == PROXY_UNSUPPORTED ||
			    (oc == PROXY_FAILED && !v.st[i].kept && v.st[i].failed >= 3)) {
				rc = cli_proxy_exit_code(oc);
				goto stop;
			}
		}
		if (x->rounds && all_kept(&v, x->rounds))
			break;
		wait_until(any_failed ? tsb_now_ns() + SYNC_RETRY_NS : cycle_ns + interval,
			   &sig, v.st, v.n, x, tty);
	}
stop:
	proxy_release_signals(&sig);
	wire_pacer_free(o->pacer);
	if (sig)
		rc = 130;
	else if (rc == TSB_EXIT_OK && x->rounds && !all_kept(&v, x->rounds))
		rc = cli_proxy_exit_code(oc);
out:
	free(v.st);
	if (x->plan)
		group_plan_free(&v.plan);
	return rc;
}

int cli_standby_run(const struct proxy_recv_options *given, const struct cli_sr_extra *x)
{
	struct proxy_recv_options o = *given;
	unsigned kept = 0, failed = 0;
	volatile int sig = 0;
	enum proxy_outcome oc = PROXY_OK;

	o.standby = true;
	proxy_catch_signals(&sig);
	while (!sig && (!x->rounds || kept < x->rounds)) {
		json_t *report = NULL;

		oc = proxy_recv(&o, &report);
		if (oc == PROXY_OK) {
			kept++;
			log_notice("standby: round %u kept", kept);
		} else if (oc != PROXY_INTERRUPTED) {
			failed++;
			log_warn("standby: a round failed; waiting for the next");
		}
		if (report && o.c.report_path && proxy_write_report(o.c.report_path, report) < 0)
			log_warn("cannot write the report to %s", o.c.report_path);
		json_decref(report);
		/* Our own setup failed (the port, the key): no round can come. */
		if (oc == PROXY_AUTH || (oc == PROXY_FAILED && !kept && failed >= 20))
			break;
		if (oc == PROXY_INTERRUPTED)
			break;
	}
	proxy_release_signals(&sig);
	if (sig || oc == PROXY_INTERRUPTED)
		return 130;
	return x->rounds && kept < x->rounds ? cli_proxy_exit_code(oc) : TSB_EXIT_OK;
}

int cmd_sync(int argc, char **argv)
{
	struct proxy_send_options o = { 0 };
	struct cli_sr_extra x = { 0 };
	int r = cli_sync_parse(argc, argv, &o, &x);

	if (r)
		return r;
	if (x.help) {
		printf("Usage: tsubame sync --qmp SOCKET --to HOST:PORT --key FILE [OPTIONS]\n"
		       "\n"
		       "Keeps a standby site nearly up to date with the local running VM, so\n"
		       "that evacuating it there ('tsubame send' to a 'tsubame recv' on that\n"
		       "site) sends only what changed since. Every --interval a round sends the\n"
		       "VM's memory to 'tsubame recv --standby' at HOST:PORT as a precopy that\n"
		       "is ended after QEMU's first pass: the VM keeps running here, and the\n"
		       "standby keeps the round in its store. Pages the standby holds from\n"
		       "earlier rounds travel as references, so a round costs what changed.\n"
		       "The VM's writable disks go with each round: a mirror copies them behind\n"
		       "the guest (its writes never wait) and completes, without a switchover,\n"
		       "as the round ends; blocks the standby's copy holds travel as references.\n"
		       "A failed round (a cut link) is retried; the standby keeps the last kept\n"
		       "round meanwhile (docs/standby.md).\n"
		       "\n"
		       "Options:\n"
		       "  --to HOST:PORT         where 'tsubame recv --standby' listens (required)\n"
		       "  --plan FILE            sync several VMs instead, one round of each in turn,\n"
		       "                         under one --bandwidth: a plan as for 'tsubame group'\n"
		       "                         (each VM's \"name\", \"qmp\" and \"to\"; \"tenant\",\n"
		       "                         \"bandwidth\"); the VMs of a tenant share their pages\n"
		       "                         at the standby, so a later VM's round refers to what\n"
		       "                         an earlier one brought\n"
		       "  --interval DUR         from one round's start to the next (default 60s)\n"
		       "  --rounds N             stop after N kept rounds (default: until\n"
		       "                         interrupted)\n"
		       "  --bandwidth RATE       cap on what the rounds put on the WAN (e.g. 20mbit)\n"
		       "  --nice N               sync's CPU priority, 0-19 (default %d): it yields\n"
		       "                         the CPU to the guest when they compete\n"
		       "  --max-bandwidth RATE   how fast a round reads the guest's memory (QEMU's\n"
		       "                         max-bandwidth; default 64MiB/s): the guest's CPU\n"
		       "                         and memory bandwidth a round takes\n"
		       "  --timeout DUR          stop syncing after this long (exit 3)\n"
		       "  --json                 JSON lines on stdout: one per round ('round') and\n"
		       "                         every 10 s between them ('stale': the last kept\n"
		       "                         round's age and the bytes the standby lacks of the\n"
		       "                         memory and of the disks)\n"
		       "  --report FILE          each round's JSON report (the last one stays)\n"
		       "  --vm-id ID             the VM's id in stores (default: QEMU's -name)\n"
		       "  --disk DEVICE          sync only this disk (repeatable; not with --plan)\n"
		       "  --no-disks             sync memory only\n"
		       "  --zstd-level N         fixed zstd level (0 = none); default adapts\n"
		       "  --qmp SOCKET, --key FILE, --cert/--cert-key/--ca, --store DIR,\n"
		       "  --store-cap SIZE, --tenant NAME, --cache SIZE, --stall-timeout DUR,\n"
		       "  --state-dir DIR, -v    as for 'tsubame send'\n"
		       "\n"
		       "Exit status: 0 after --rounds kept rounds; 1 a round failed and no more\n"
		       "were tried (e.g. the standby refused); 2 usage; 3 --timeout; 5 the\n"
		       "standby refused our key; 130 interrupted. A sync never stops the VM for\n"
		       "good and never runs it at the standby.\n", SYNC_NICE_DEFAULT);
		return TSB_EXIT_OK;
	}
	return cli_sync_run(&o, &x);
}
