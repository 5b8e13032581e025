/* tsubame send / tsubame recv: one live migration through the WAN proxy. */
#include "cli/cli.h"
#include "cli/send_recv.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "group/group.h"
#include "proxy/proxy.h"
#include "store/store.h"
#include "wire/pacer.h"
#include "wire/wire.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Exit codes beyond the shared ones (documented in --help and README). */
int cli_proxy_exit_code(enum proxy_outcome oc)
{
	switch (oc) {
	case PROXY_OK:
		return TSB_EXIT_OK;
	case PROXY_TIMEOUT:
		return 3;
	case PROXY_LINK:
		return 4;
	case PROXY_AUTH:
		return 5;
	case PROXY_UNSUPPORTED:
		return 6;
	case PROXY_IN_DOUBT:
		return 7;
	case PROXY_INTERRUPTED:
		return 130;
	default:
		return TSB_EXIT_FAILED;
	}
}

#define EXIT_CODES_HELP \
	"Exit status:\n" \
	"  0    the destination VM runs and the source QEMU completed\n" \
	"  1    failed (QEMU refused, stream error, ...): the reason is printed\n" \
	"  2    usage error\n" \
	"  3    did not finish within --timeout: cancelled\n" \
	"  4    link lost or the peer died\n" \
	"  5    authentication failed (wrong key or certificate)\n" \
	"  6    the migration stream uses something tsubame does not carry\n" \
	"  7    in doubt: the switchover could not be settled within --commit-timeout;\n" \
	"       the guest is paused on this side and a record is kept: run\n" \
	"       'tsubame resolve' as the message says\n" \
	"  130  interrupted (SIGINT/SIGTERM): cancelled\n" \
	"The destination runs the guest only after the source committed the\n" \
	"switchover; until then the source runs it (or resumes it on any failure).\n" \
	"Never both; where a lost message leaves it undecided, both stay paused\n" \
	"(exit 7) until 'tsubame resolve' settles it (docs/protocol.md).\n"

#define COMMON_HELP \
	"  --qmp SOCKET           the local QEMU's QMP socket (required)\n" \
	"  --key FILE             shared key made by 'tsubame keygen' (mode 0600)\n" \
	"  --cert FILE --cert-key FILE --ca FILE\n" \
	"                         certificates instead of a shared key\n" \
	"  --report FILE          write a JSON report\n" \
	"  --timeout DUR          give up after this long (e.g. 10m; default none)\n" \
	"  --stall-timeout DUR    give up when the link makes no progress (default 60s)\n" \
	"  --cache SIZE           content cache, same on both ends (default 1G)\n" \
	"  --store DIR            this host's content store (default " STORE_DEFAULT_DIR ")\n" \
	"  --no-store             keep nothing and reuse nothing between migrations\n" \
	"  --store-cap SIZE       size cap of the store (default 8G; LRU images go first)\n" \
	"  --tenant NAME          share content with VMs of this tenant only\n" \
	"                         (default: every VM is its own tenant)\n" \
	"  --net-agent SOCKET     tell this host's mobility agent ('tsubame net agent')\n" \
	"                         that the VM arrives (recv) or left (send)\n" \
	"  --commit-timeout DUR   how long to keep trying to settle a switchover whose\n" \
	"                         messages were lost (default 3m; then exit 7)\n" \
	"  --recover-timeout DUR  how long to keep trying to resume a postcopy whose\n" \
	"                         link broke (default 5m; 0: never; then exit 4)\n" \
	"  --state-dir DIR        records of unsettled switchovers (default\n" \
	"                         " PROXY_STATE_DIR_DEFAULT ")\n" \
	"  -v, --verbose          more log output\n" \
	"  -h, --help             show this help\n"

enum {
	OPT_QMP = 256, OPT_KEY, OPT_CERT, OPT_CERT_KEY, OPT_CA, OPT_REPORT, OPT_TIMEOUT,
	OPT_STALL, OPT_CACHE, OPT_TO, OPT_LISTEN, OPT_CAPS, OPT_MAX_BW, OPT_DOWNTIME,
	OPT_POSTCOPY_AFTER, OPT_MODE, OPT_ZSTD, OPT_PROGRESS, OPT_NO_PROGRESS,
	OPT_STORE, OPT_NO_STORE, OPT_STORE_CAP, OPT_TENANT, OPT_VM_ID, OPT_DISK_SOURCE,
	OPT_NO_VM_DISKS, OPT_FLOOR, OPT_NET_AGENT, OPT_NET_MAC, OPT_NET_IP, OPT_NET_HOME,
	OPT_DISK, OPT_NO_DISKS, OPT_COMMIT_TIMEOUT, OPT_STATE_DIR, OPT_CONNECTIONS,
	OPT_MAX_WINDOW, OPT_DISK_COPY_MODE, OPT_QEMU_CONNECT, OPT_NBD_CONNECT,
	OPT_RECOVER_TIMEOUT, OPT_BANDWIDTH, OPT_PLAN, OPT_CONCURRENCY, OPT_JSON, OPT_TIMELINE,
	OPT_NO_SEED, OPT_AGENT, OPT_HOST, OPT_SSH, OPT_REMOTE_TSUBAME, OPT_SWITCH_WINDOW,
	OPT_PERSISTENT, OPT_UNDEFINE_SOURCE, OPT_ORDER, OPT_DRY_RUN, OPT_COMMIT_EARLY,
	OPT_COMMIT_LATE, OPT_STANDBY, OPT_INTERVAL, OPT_ROUNDS, OPT_NICE,
};

static const struct option options[] = {
	{ "qmp", required_argument, NULL, OPT_QMP },
	{ "key", required_argument, NULL, OPT_KEY },
	{ "cert", required_argument, NULL, OPT_CERT },
	{ "cert-key", required_argument, NULL, OPT_CERT_KEY },
	{ "ca", required_argument, NULL, OPT_CA },
	{ "report", required_argument, NULL, OPT_REPORT },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "stall-timeout", required_argument, NULL, OPT_STALL },
	{ "cache", required_argument, NULL, OPT_CACHE },
	{ "to", required_argument, NULL, OPT_TO },
	{ "listen", required_argument, NULL, OPT_LISTEN },
	{ "caps", required_argument, NULL, OPT_CAPS },
	{ "max-bandwidth", required_argument, NULL, OPT_MAX_BW },
	{ "downtime-limit", required_argument, NULL, OPT_DOWNTIME },
	{ "postcopy-after", required_argument, NULL, OPT_POSTCOPY_AFTER },
	{ "mode", required_argument, NULL, OPT_MODE },
	{ "zstd-level", required_argument, NULL, OPT_ZSTD },
	{ "progress", no_argument, NULL, OPT_PROGRESS },
	{ "no-progress", no_argument, NULL, OPT_NO_PROGRESS },
	{ "store", required_argument, NULL, OPT_STORE },
	{ "no-store", no_argument, NULL, OPT_NO_STORE },
	{ "store-cap", required_argument, NULL, OPT_STORE_CAP },
	{ "tenant", required_argument, NULL, OPT_TENANT },
	{ "vm-id", required_argument, NULL, OPT_VM_ID },
	{ "disk-source", required_argument, NULL, OPT_DISK_SOURCE },
	{ "no-vm-disks", no_argument, NULL, OPT_NO_VM_DISKS },
	{ "floor", no_argument, NULL, OPT_FLOOR },
	{ "net-agent", required_argument, NULL, OPT_NET_AGENT },
	{ "net-mac", required_argument, NULL, OPT_NET_MAC },
	{ "net-ip", required_argument, NULL, OPT_NET_IP },
	{ "net-home", required_argument, NULL, OPT_NET_HOME },
	{ "disk", required_argument, NULL, OPT_DISK },
	{ "no-disks", no_argument, NULL, OPT_NO_DISKS },
	{ "commit-early", no_argument, NULL, OPT_COMMIT_EARLY },
	{ "commit-late", no_argument, NULL, OPT_COMMIT_LATE },
	{ "disk-copy-mode", required_argument, NULL, OPT_DISK_COPY_MODE },
	{ "commit-timeout", required_argument, NULL, OPT_COMMIT_TIMEOUT },
	{ "state-dir", required_argument, NULL, OPT_STATE_DIR },
	{ "recover-timeout", required_argument, NULL, OPT_RECOVER_TIMEOUT },
	{ "connections", required_argument, NULL, OPT_CONNECTIONS },
	{ "max-window", required_argument, NULL, OPT_MAX_WINDOW },
	{ "qemu-connect", required_argument, NULL, OPT_QEMU_CONNECT },
	{ "nbd-connect", required_argument, NULL, OPT_NBD_CONNECT },
	{ "bandwidth", required_argument, NULL, OPT_BANDWIDTH },
	{ "plan", required_argument, NULL, OPT_PLAN },
	{ "concurrency", required_argument, NULL, OPT_CONCURRENCY },
	{ "json", no_argument, NULL, OPT_JSON },
	{ "timeline", required_argument, NULL, OPT_TIMELINE },
	{ "no-seed", no_argument, NULL, OPT_NO_SEED },
	{ "switchover-window", required_argument, NULL, OPT_SWITCH_WINDOW },
	{ "agent", no_argument, NULL, OPT_AGENT },
	{ "persistent", no_argument, NULL, OPT_PERSISTENT },
	{ "order", required_argument, NULL, OPT_ORDER },
	{ "dry-run", no_argument, NULL, OPT_DRY_RUN },
	{ "undefinesource", no_argument, NULL, OPT_UNDEFINE_SOURCE },
	{ "host", required_argument, NULL, OPT_HOST },
	{ "ssh", required_argument, NULL, OPT_SSH },
	{ "remote-tsubame", required_argument, NULL, OPT_REMOTE_TSUBAME },
	{ "standby", no_argument, NULL, OPT_STANDBY },
	{ "interval", required_argument, NULL, OPT_INTERVAL },
	{ "nice", required_argument, NULL, OPT_NICE },
	{ "rounds", required_argument, NULL, OPT_ROUNDS },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{}
};

/* The long name of option c (the table's order is not the enum's). */
static const char *opt_name(int c)
{
	for (const struct option *o = options; o->name; o++)
		if (o->val == c)
			return o->name;
	return "?";
}

struct parsed {
	struct proxy_common_options c;
	const char *to, *listen, *caps, *vm_id, *qemu_connect, *nbd_connect;
	uint64_t max_bw, downtime, postcopy_after;
	enum proxy_mode mode;
	int zstd_level;
	unsigned connections;
	uint64_t max_window;
	bool help, no_store, no_vm_disks, floor, no_disks, commit_late;
	int disk_copy_mode;		/* enum disk_copy_mode */
	bool disk_copy_mode_set;
	const char *disks[8];
	unsigned n_disks;
	const char *disk_sources[PROXY_MAX_DISK_SOURCES];
	unsigned n_disk_sources;
	const char *net_mac, *net_home, *net_ips[8];
	unsigned n_net_ips;
	/* 'tsubame group send|recv': the per-VM options come from the plan. */
	bool group;
	struct cli_sr_extra x;
};

/* What an option handler returns for an option that is not in its group. */
#define OPT_OTHER (-1)

/* Options both commands take. 0, a usage error's exit code or OPT_OTHER. */
static int parse_common_opt(const char *cmd, int c, struct parsed *p)
{
	uint64_t v;

	switch (c) {
	case OPT_QMP: p->c.qmp_path = optarg; break;
	case OPT_KEY: p->c.key_path = optarg; break;
	case OPT_CERT: p->c.cert = optarg; break;
	case OPT_CERT_KEY: p->c.cert_key = optarg; break;
	case OPT_CA: p->c.ca = optarg; break;
	case OPT_REPORT: p->c.report_path = optarg; break;
	case OPT_TIMEOUT:
		if (tsb_parse_duration(optarg, &v) < 0)
			return cli_usage_error(cmd, "bad --timeout '%s'", optarg);
		p->c.timeout_ms = v / 1000000;
		break;
	case OPT_STALL:
		if (tsb_parse_duration(optarg, &v) < 0)
			return cli_usage_error(cmd, "bad --stall-timeout '%s'", optarg);
		p->c.stall_ms = v / 1000000;
		break;
	case OPT_CACHE:
		if (tsb_parse_size(optarg, &p->c.cache_bytes) < 0 ||
		    p->c.cache_bytes < (1u << 20))
			return cli_usage_error(cmd, "bad --cache '%s' (at least 1M)", optarg);
		break;
	case OPT_STORE: p->c.store_dir = optarg; break;
	case OPT_STATE_DIR: p->c.state_dir = optarg; break;
	case OPT_COMMIT_TIMEOUT:
		if (tsb_parse_duration(optarg, &v) < 0 || v < 1000000000ull)
			return cli_usage_error(cmd, "bad --commit-timeout '%s' (at least 1s)",
					   optarg);
		p->c.commit_timeout_ms = v / 1000000;
		break;
	case OPT_RECOVER_TIMEOUT:
		if (tsb_parse_duration(optarg, &v) < 0)
			return cli_usage_error(cmd, "bad --recover-timeout '%s'", optarg);
		p->c.recover_timeout_ms = v / 1000000;
		break;
	case OPT_NO_STORE: p->no_store = true; break;
	case OPT_STORE_CAP:
		if (tsb_parse_size(optarg, &p->c.store_cap) < 0 ||
		    p->c.store_cap < (1u << 20))
			return cli_usage_error(cmd, "bad --store-cap '%s' (at least 1M)",
					   optarg);
		break;
	case OPT_TENANT:
		if (!cli_id_ok(optarg))
			return cli_usage_error(cmd, "bad --tenant '%s' (1-%d printable "
					   "characters, no spaces or '/')", optarg,
					   STORE_MAX_ID);
		p->c.tenant = optarg;
		break;
	case OPT_VM_ID:
		if (!cli_id_ok(optarg))
			return cli_usage_error(cmd, "bad --vm-id '%s' (1-%d printable "
					   "characters, no spaces or '/')", optarg,
					   STORE_MAX_ID);
		p->vm_id = optarg;
		break;
	case OPT_NET_AGENT: p->c.net_agent = optarg; break;
	case OPT_PROGRESS: p->c.progress = true; break;
	case OPT_NO_PROGRESS: p->c.progress = false; break;
	case 'v':
		tsb_log_set_level(tsb_log_get_level() < TSB_LOG_INFO ? TSB_LOG_INFO
								   : TSB_LOG_DEBUG);
		break;
	default:
		return OPT_OTHER;
	}
	return 0;
}

/* Options of 'tsubame send' only. 0, a usage error's exit code or OPT_OTHER. */
static int parse_send_opt(const char *cmd, bool send, int c, struct parsed *p)
{
	uint64_t v;

	switch (c) {
	case OPT_FLOOR:
		if (!send)
			return cli_usage_error(cmd, "option --floor is for 'tsubame send'");
		p->floor = true;
		return 0;
	case OPT_COMMIT_EARLY:
	case OPT_COMMIT_LATE:
		if (!send)
			return cli_usage_error(cmd, "options --commit-early and "
					       "--commit-late are for 'tsubame send'");
		p->commit_late = c == OPT_COMMIT_LATE;
		return 0;
	case OPT_DISK_COPY_MODE:
		if (!send)
			return cli_usage_error(cmd, "option --disk-copy-mode is for 'tsubame send'");
		if (!strcmp(optarg, "auto"))
			p->disk_copy_mode = DISK_COPY_AUTO;
		else if (!strcmp(optarg, "background"))
			p->disk_copy_mode = DISK_COPY_BACKGROUND;
		else if (!strcmp(optarg, "write-blocking"))
			p->disk_copy_mode = DISK_COPY_WRITE_BLOCKING;
		else
			return cli_usage_error(cmd, "bad --disk-copy-mode '%s' (auto, background or "
					       "write-blocking)", optarg);
		p->disk_copy_mode_set = true;
		return 0;
	case OPT_DISK:
	case OPT_NO_DISKS:
		if (!send)
			return cli_usage_error(cmd, "option --%s is for 'tsubame send'",
					   opt_name(c));
		if (c == OPT_NO_DISKS)
			p->no_disks = true;
		else if (p->n_disks == 8)
			return cli_usage_error(cmd, "at most 8 --disk");
		else
			p->disks[p->n_disks++] = optarg;
		return 0;
	case OPT_TO:
	case OPT_CAPS:
	case OPT_MAX_BW:
	case OPT_DOWNTIME:
	case OPT_POSTCOPY_AFTER:
	case OPT_MODE:
	case OPT_ZSTD:
	case OPT_CONNECTIONS:
	case OPT_MAX_WINDOW:
		break;
	default:
		return OPT_OTHER;
	}
	if (!send)
		return cli_usage_error(cmd, "option --%s is for 'tsubame send'",
				   opt_name(c));
	if (c == OPT_TO)
		p->to = optarg;
	else if (c == OPT_CAPS)
		p->caps = optarg;
	else if (c == OPT_MAX_BW && tsb_parse_rate(optarg, &p->max_bw) < 0)
		return cli_usage_error(cmd, "bad --max-bandwidth '%s'", optarg);
	else if (c == OPT_DOWNTIME &&
		 tsb_parse_u64(optarg, 1, 2000000, &p->downtime) < 0)
		return cli_usage_error(cmd, "bad --downtime-limit '%s'", optarg);
	else if (c == OPT_POSTCOPY_AFTER) {
		if (tsb_parse_duration(optarg, &v) < 0 || v < 1000000)
			return cli_usage_error(cmd, "bad --postcopy-after '%s'", optarg);
		p->postcopy_after = v / 1000000;
	} else if (c == OPT_MODE) {
		if (!strcmp(optarg, "precopy"))
			p->mode = PROXY_MODE_PRECOPY;
		else if (!strcmp(optarg, "auto"))
			p->mode = PROXY_MODE_AUTO;
		else if (!strcmp(optarg, "postcopy"))
			p->mode = PROXY_MODE_POSTCOPY;
		else
			return cli_usage_error(cmd, "bad --mode '%s' (auto, precopy or postcopy)",
					       optarg);
	} else if (c == OPT_ZSTD) {
		if (tsb_parse_u64(optarg, 0, 19, &v) < 0)
			return cli_usage_error(cmd, "bad --zstd-level '%s' (0 = off, 1-19)",
					   optarg);
		p->zstd_level = v ? (int)v : -1;
	} else if (c == OPT_CONNECTIONS) {
		if (tsb_parse_u64(optarg, 1, WIRE_MAX_LANES, &v) < 0)
			return cli_usage_error(cmd, "bad --connections '%s' (1-%d)", optarg,
					       WIRE_MAX_LANES);
		p->connections = (unsigned)v;
	} else if (c == OPT_MAX_WINDOW) {
		if (tsb_parse_size(optarg, &v) < 0 || v < (4u << 20) || v > (256u << 20))
			return cli_usage_error(cmd, "bad --max-window '%s' (4M to 256M)", optarg);
		p->max_window = v;
	}
	return 0;
}

/* Options of 'tsubame recv' only. 0, a usage error's exit code or OPT_OTHER. */
static int parse_recv_opt(const char *cmd, bool send, int c, struct parsed *p)
{
	switch (c) {
	case OPT_NET_MAC:
	case OPT_NET_IP:
	case OPT_NET_HOME:
		if (send)
			return cli_usage_error(cmd, "option --%s is for 'tsubame recv'",
					   opt_name(c));
		if (c == OPT_NET_MAC)
			p->net_mac = optarg;
		else if (c == OPT_NET_HOME)
			p->net_home = optarg;
		else if (p->n_net_ips == TSB_ARRAY_SIZE(p->net_ips))
			return cli_usage_error(cmd, "at most %zu --net-ip",
					   TSB_ARRAY_SIZE(p->net_ips));
		else
			p->net_ips[p->n_net_ips++] = optarg;
		return 0;
	case OPT_DISK_SOURCE:
	case OPT_NO_VM_DISKS:
		if (send)
			return cli_usage_error(cmd, "option --%s is for 'tsubame recv'",
					   opt_name(c));
		if (c == OPT_NO_VM_DISKS)
			p->no_vm_disks = true;
		else if (p->n_disk_sources == PROXY_MAX_DISK_SOURCES)
			return cli_usage_error(cmd, "at most %d --disk-source",
					   PROXY_MAX_DISK_SOURCES);
		else
			p->disk_sources[p->n_disk_sources++] = optarg;
		return 0;
	case OPT_LISTEN:
	case OPT_QEMU_CONNECT:
	case OPT_NBD_CONNECT:
		if (send)
			return cli_usage_error(cmd, "option --%s is for 'tsubame recv'",
					   opt_name(c));
		*(c == OPT_LISTEN ? &p->listen : c == OPT_QEMU_CONNECT ? &p->qemu_connect :
		  &p->nbd_connect) = optarg;
		return 0;
	default:
		return OPT_OTHER;
	}
}

/* Options of 'tsubame group' (and --bandwidth of send). 0, an exit code or OPT_OTHER. */
static int parse_group_opt(const char *cmd, bool send, int c, struct parsed *p)
{
	uint64_t v;

	switch (c) {
	case OPT_BANDWIDTH:
		if (!send)
			return cli_usage_error(cmd, "option --bandwidth is for the sending side");
		if (tsb_parse_rate(optarg, &p->x.bandwidth) < 0 || !p->x.bandwidth)
			return cli_usage_error(cmd, "bad --bandwidth '%s' (e.g. 100mbit)", optarg);
		return 0;
	case OPT_PLAN:
	case OPT_CONCURRENCY:
	case OPT_JSON:
	case OPT_TIMELINE:
	case OPT_NO_SEED:
	case OPT_AGENT:
	case OPT_HOST:
	case OPT_SSH:
	case OPT_REMOTE_TSUBAME:
	case OPT_SWITCH_WINDOW:
	case OPT_PERSISTENT:
	case OPT_UNDEFINE_SOURCE:
	case OPT_ORDER:
	case OPT_DRY_RUN:
		break;
	default:
		return OPT_OTHER;
	}
	if (p->x.sync && (c == OPT_JSON || c == OPT_PLAN)) {
		if (c == OPT_JSON)
			p->x.json = true;
		else
			p->x.plan = optarg;
		return 0;
	}
	if (!p->group)
		return cli_usage_error(cmd, "option --%s is for 'tsubame group'", opt_name(c));
	if (c == OPT_PLAN)
		p->x.plan = optarg;
	else if (c == OPT_JSON)
		p->x.json = true;
	else if (c == OPT_HOST)
		p->x.host = optarg;
	else if (!send)
		return cli_usage_error(cmd, "option --%s is for 'tsubame group send'", opt_name(c));
	else if (c == OPT_TIMELINE)
		p->x.timeline = optarg;
	else if (c == OPT_NO_SEED)
		p->x.no_seed = true;
	else if (c == OPT_AGENT)
		p->x.agent = true;
	else if (c == OPT_SSH)
		p->x.ssh = optarg;
	else if (c == OPT_REMOTE_TSUBAME)
		p->x.remote_tsubame = optarg;
	else if (c == OPT_PERSISTENT)
		p->x.persistent = true;
	else if (c == OPT_UNDEFINE_SOURCE)
		p->x.undefine_source = true;
	else if (c == OPT_DRY_RUN)
		p->x.dry_run = true;
	else if (c == OPT_ORDER) {
		if (strcmp(optarg, "content") && strcmp(optarg, "plan"))
			return cli_usage_error(cmd, "bad --order '%s' (content or plan)", optarg);
		p->x.plan_order = !strcmp(optarg, "plan");
	}
	else if (c == OPT_SWITCH_WINDOW) {
		if (tsb_parse_duration(optarg, &v) < 0 || !v || v > 600000000000ull)
			return cli_usage_error(cmd, "bad --switchover-window '%s' (e.g. 2s; "
					       "at most 10m)", optarg);
		p->x.switch_window_ns = v;
	} else if (tsb_parse_u64(optarg, 1, GROUP_MAX_CONCURRENCY, &v) < 0)
		return cli_usage_error(cmd, "bad --concurrency '%s' (1-%d)", optarg,
				       GROUP_MAX_CONCURRENCY);
	else
		p->x.concurrency = (unsigned)v;
	return 0;
}

/* Options of 'tsubame sync' and 'tsubame recv --standby'. 0, an exit code or OPT_OTHER. */
static int parse_sync_opt(const char *cmd, bool send, int c, struct parsed *p)
{
	uint64_t v;

	switch (c) {
	case OPT_STANDBY:
		if (send || p->group)
			return cli_usage_error(cmd, "option --standby is for 'tsubame recv'");
		p->x.standby = true;
		return 0;
	case OPT_INTERVAL:
		if (!p->x.sync)
			return cli_usage_error(cmd, "option --interval is for 'tsubame sync'");
		if (tsb_parse_duration(optarg, &v) < 0 || v > 86400000000000ull)
			return cli_usage_error(cmd, "bad --interval '%s' (e.g. 30s; at most 1d)",
					       optarg);
		p->x.interval_ns = v;
		return 0;
	case OPT_NICE:
		if (!p->x.sync)
			return cli_usage_error(cmd, "option --nice is for 'tsubame sync'");
		if (tsb_parse_u64(optarg, 0, 19, &v) < 0)
			return cli_usage_error(cmd, "bad --nice '%s' (0-19)", optarg);
		p->x.nice = (int)v;
		return 0;
	case OPT_ROUNDS:
		if (!p->x.sync && (send || p->group))
			return cli_usage_error(cmd, "option --rounds is for 'tsubame sync' and "
					       "'tsubame recv --standby'");
		if (tsb_parse_u64(optarg, 1, 1000000, &v) < 0)
			return cli_usage_error(cmd, "bad --rounds '%s' (1-1000000)", optarg);
		p->x.rounds = (unsigned)v;
		return 0;
	default:
		return OPT_OTHER;
	}
}

/* A sync keeps a standby's store up to date: precopy rounds of memory and disks. */
static int check_sync(const char *cmd, struct parsed *p)
{
	if (p->mode != PROXY_MODE_PRECOPY || p->postcopy_after)
		return cli_usage_error(cmd, "a sync round is a precopy: no --mode, no "
				       "--postcopy-after");
	if (p->disk_copy_mode_set)
		return cli_usage_error(cmd, "a sync round's mirrors copy behind the guest "
				       "(background): no --disk-copy-mode");
	if (p->commit_late || p->c.net_agent)
		return cli_usage_error(cmd, "a sync round never switches over: no --commit-*, "
				       "no --net-agent");
	if (p->no_store)
		return cli_usage_error(cmd, "a sync keeps its rounds' images in the store: "
				       "--no-store would send every round in full");
	return 0;
}

/* 'tsubame sync --plan': each VM's QEMU, standby and id come from the plan. */
static int check_sync_plan(const char *cmd, struct parsed *p)
{
	if (p->c.qmp_path || p->to || p->vm_id)
		return cli_usage_error(cmd, "--qmp, --to and --vm-id come from the plan for each VM");
	if (p->n_disks)
		return cli_usage_error(cmd, "--disk names one VM's devices: with --plan, every "
				       "writable disk of each VM is synced (or none: --no-disks)");
	return 0;
}

/* A standby runs no VM: no QEMU options; its store is what it is for. */
static int check_standby(const char *cmd, struct parsed *p)
{
	if (p->c.qmp_path || p->qemu_connect || p->nbd_connect)
		return cli_usage_error(cmd, "a standby runs no VM: no --qmp, --qemu-connect or "
				       "--nbd-connect");
	if (p->c.net_agent || p->net_mac || p->net_home || p->n_net_ips)
		return cli_usage_error(cmd, "a standby runs no VM: no --net-*");
	if (p->no_store)
		return cli_usage_error(cmd, "a standby keeps the rounds in its store: no --no-store");
	if (!p->listen)
		return cli_usage_error(cmd, "--listen HOST:PORT is required");
	p->no_vm_disks = true;
	return 0;
}

/* A group's plan names each VM's QEMU, address and id: not the command line. */
static int check_group(const char *cmd, struct parsed *p)
{
	if (!p->x.plan && !p->x.agent)
		return cli_usage_error(cmd, "--plan FILE is required");
	if (p->x.agent && p->x.plan)
		return cli_usage_error(cmd, "--agent reads its plan on stdin: no --plan");
	if (p->c.qmp_path || p->to || p->listen || p->vm_id)
		return cli_usage_error(cmd, "--qmp, --to, --listen and --vm-id come from the plan "
				       "for each VM");
	if (p->qemu_connect || p->nbd_connect)
		return cli_usage_error(cmd, "--qemu-connect and --nbd-connect are not for groups "
				       "(a libvirt domain's \"qemu_port\" in the plan says where)");
	if (p->c.net_agent || p->net_mac || p->net_home || p->n_net_ips)
		return cli_usage_error(cmd, "--net-agent and --net-* are not for groups yet: "
				       "each VM's network identity is its own");
	if (p->n_disks)
		return cli_usage_error(cmd, "--disk names one VM's devices: not for groups "
				       "(every writable disk of each VM moves, or --no-disks)");
	return 0;
}

/* One VM's send or recv: its QEMU and address come from the command line. */
static int check_one_vm(const char *cmd, bool send, struct parsed *p)
{
	if (!p->c.qmp_path && !p->qemu_connect)
		return cli_usage_error(cmd, "--qmp is required%s", send ? "" :
				       " (or --qemu-connect for a libvirt destination)");
	if (p->c.qmp_path && p->qemu_connect)
		return cli_usage_error(cmd, "--qmp and --qemu-connect exclude each other");
	if (p->nbd_connect && !p->qemu_connect)
		return cli_usage_error(cmd, "--nbd-connect goes with --qemu-connect");
	if (send && !p->to)
		return cli_usage_error(cmd, "--to HOST:PORT is required");
	if (!send && !p->listen)
		return cli_usage_error(cmd, "--listen HOST:PORT is required");
	if (!send && p->x.rounds && !p->x.standby)
		return cli_usage_error(cmd, "--rounds goes with --standby");
	if (!send && p->c.net_agent && (!p->net_mac || !p->net_home || !p->n_net_ips ||
					!p->vm_id))
		return cli_usage_error(cmd, "--net-agent needs --vm-id, --net-mac, --net-home "
				   "and at least one --net-ip (the agent is told what this "
				   "receiver was told, never the sender's word alone)");
	if (!send && !p->c.net_agent && (p->net_mac || p->net_home || p->n_net_ips))
		return cli_usage_error(cmd, "--net-mac, --net-ip and --net-home need --net-agent");
	return 0;
}

/* Checks the options together once all are parsed; settles the store. */
static int check_parsed(const char *cmd, bool send, struct parsed *p)
{
	int r = p->group ? check_group(cmd, p) :
		p->x.standby ? check_standby(cmd, p) :
		p->x.sync && p->x.plan ? check_sync_plan(cmd, p) : check_one_vm(cmd, send, p);

	if (r == 0 && p->x.sync)
		r = check_sync(cmd, p);
	if (r)
		return r;
	if (p->no_disks && p->n_disks)
		return cli_usage_error(cmd, "--disk and --no-disks exclude each other");
	if (p->no_disks && p->disk_copy_mode_set)
		return cli_usage_error(cmd, "--disk-copy-mode and --no-disks exclude each other");
	if (!p->c.key_path && !(p->c.cert && p->c.cert_key && p->c.ca))
		return cli_usage_error(cmd, "--key FILE (or --cert, --cert-key and --ca) is required");
	if (p->no_store && p->c.store_dir)
		return cli_usage_error(cmd, "--store and --no-store exclude each other");
	if (!p->no_store && !p->c.store_dir)
		p->c.store_dir = STORE_DEFAULT_DIR;
	if (p->no_store)
		p->c.store_dir = NULL;
	return 0;
}

/* Parses both commands' options; 'send' decides which ones are allowed. */
static int parse(const char *cmd, bool send, int argc, char **argv, struct parsed *p)
{
	int c, r;

	p->c.stall_ms = 60000;
	p->c.commit_timeout_ms = PROXY_COMMIT_TIMEOUT_DEFAULT_MS;
	p->c.recover_timeout_ms = PROXY_RECOVER_TIMEOUT_DEFAULT_MS;
	p->c.state_dir = PROXY_STATE_DIR_DEFAULT;
	p->c.progress = isatty(STDERR_FILENO);
	while ((c = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
		if (c == 'h') {
			p->help = p->x.help = true;
			return 0;
		}
		r = parse_common_opt(cmd, c, p);
		if (r == OPT_OTHER)
			r = parse_group_opt(cmd, send, c, p);
		if (r == OPT_OTHER)
			r = parse_send_opt(cmd, send, c, p);
		if (r == OPT_OTHER)
			r = parse_recv_opt(cmd, send, c, p);
		if (r == OPT_OTHER)
			r = parse_sync_opt(cmd, send, c, p);
		if (r == OPT_OTHER) {
			fprintf(stderr, "Try 'tsubame %s --help'.\n", cmd);
			return TSB_EXIT_USAGE;
		}
		if (r)
			return r;
	}
	if (optind < argc)
		return cli_usage_error(cmd, "unexpected argument '%s'", argv[optind]);
	return check_parsed(cmd, send, p);
}

static int finish(enum proxy_outcome oc, json_t *report, const char *path)
{
	if (report && path && proxy_write_report(path, report) < 0) {
		log_error("cannot write the report to %s", path);
		if (oc == PROXY_OK)
			oc = PROXY_FAILED;
	}
	json_decref(report);
	return cli_proxy_exit_code(oc);
}

static void send_options_from(const struct parsed *p, struct proxy_send_options *o)
{
	o->c = p->c;
	o->to = p->to;
	for (unsigned i = 0; i < p->n_disks; i++)
		o->disks[o->n_disks++] = p->disks[i];
	o->no_disks = p->no_disks;
	o->disk_copy_mode = p->disk_copy_mode;
	o->caps = p->caps;
	o->max_bandwidth = p->max_bw;
	o->downtime_limit_ms = p->downtime;
	o->postcopy_after_ms = p->postcopy_after;
	o->mode = p->mode;
	o->zstd_level = p->zstd_level;
	o->connections = p->connections ? p->connections : 1;
	o->max_window = p->max_window;
	o->vm_id = p->vm_id;
	o->floor = p->floor;
	o->commit_late = p->commit_late;
}

static void recv_options_from(const struct parsed *p, struct proxy_recv_options *o)
{
	o->c = p->c;
	o->listen = p->listen;
	memcpy(o->disk_sources, p->disk_sources, sizeof(o->disk_sources));
	o->n_disk_sources = p->n_disk_sources;
	o->no_vm_disks = p->no_vm_disks;
	o->vm_id = p->vm_id;
	o->net_mac = p->net_mac;
	o->net_home = p->net_home;
	memcpy(o->net_ips, p->net_ips, sizeof(o->net_ips));
	o->n_net_ips = p->n_net_ips;
	o->qemu_connect = p->qemu_connect;
}

int cli_group_parse_send(int argc, char **argv, struct proxy_send_options *o,
			 struct cli_sr_extra *x)
{
	struct parsed p = { .mode = PROXY_MODE_AUTO, .group = true };
	int r = parse("group send", true, argc, argv, &p);

	*x = p.x;
	if (!r && !p.help)
		send_options_from(&p, o);
	return r;
}

int cli_group_parse_recv(int argc, char **argv, struct proxy_recv_options *o,
			 struct cli_sr_extra *x)
{
	struct parsed p = { .group = true };
	int r = parse("group recv", false, argc, argv, &p);

	*x = p.x;
	if (!r && !p.help)
		recv_options_from(&p, o);
	return r;
}

int cli_sync_parse(int argc, char **argv, struct proxy_send_options *o, struct cli_sr_extra *x)
{
	struct parsed p = { .mode = PROXY_MODE_PRECOPY, .x.sync = true, .x.nice = -1 };
	int r = parse("sync", true, argc, argv, &p);

	*x = p.x;
	if (!r && !p.help)
		send_options_from(&p, o);
	return r;
}

int cmd_send(int argc, char **argv)
{
	struct proxy_send_options o = { 0 };
	struct parsed p = { .mode = PROXY_MODE_AUTO };
	json_t *report = NULL;
	enum proxy_outcome oc;
	int r;

	r = parse("send", true, argc, argv, &p);
	if (r)
		return r;
	if (p.help) {
		printf("Usage: tsubame send --qmp SOCKET --to HOST:PORT --key FILE [OPTIONS]\n"
		       "\n"
		       "Migrates the running VM of the local QEMU to 'tsubame recv' at HOST:PORT,\n"
		       "over TLS 1.3, sending only what the destination cannot rebuild: zero\n"
		       "pages as markers, repeated content as references, the rest compressed.\n"
		       "\n"
		       "Options:\n"
		       "  --to HOST:PORT         where 'tsubame recv' listens (required)\n"
		       COMMON_HELP
		       "  --caps LIST            extra QEMU capabilities, e.g. auto-converge\n"
		       "  --mode MODE            auto (default): precopy, then postcopy by itself\n"
		       "                         once passes stop shrinking what is dirty, or\n"
		       "                         shrink it too slowly (the report says when and\n"
		       "                         why); precopy: QEMU's precopy only, cancelled\n"
		       "                         at --timeout if it never converges; postcopy:\n"
		       "                         switch as soon as QEMU migrates\n"
		       "  --postcopy-after DUR   switch to postcopy after this long\n"
		       "  --max-bandwidth RATE   QEMU's max-bandwidth (e.g. 1gbit)\n"
		       "  --bandwidth RATE       cap on what this migration puts on the WAN,\n"
		       "                         e.g. 50mbit (QEMU's max-bandwidth counts its own\n"
		       "                         stream, before tsubame leaves out what it can)\n"
		       "  --downtime-limit MS    QEMU's downtime-limit\n"
		       "  --zstd-level N         fixed zstd level (0 = none); default adapts\n"
		       "  --connections N        spread the stream over N TLS connections (1-16,\n"
		       "                         default 1): for long paths on which one TCP\n"
		       "                         connection cannot fill the link (loss)\n"
		       "  --max-window SIZE      at most this much of QEMU's stream in flight\n"
		       "                         (default and most 256M, at least 4M): the\n"
		       "                         window follows the path's bandwidth-delay\n"
		       "                         product up to it; the receiver may hold as much\n"
		       "                         in memory\n"
		       "  --vm-id ID             the VM's id in stores (default: QEMU's -name,\n"
		       "                         else its UUID)\n"
		       "  --floor                report the floor: the zstd size of the final\n"
		       "                         pages that had to travel (costs CPU at the end)\n"
		       "  --progress, --no-progress  progress line on stderr (default: on a TTY)\n"
		       "  --commit-early         (default) commit the switchover as the source\n"
		       "                         completes, not once the destination said it\n"
		       "                         loaded the guest: one round trip less in the\n"
		       "                         downtime; a link lost right then leaves the\n"
		       "                         source in doubt until resolve asks the\n"
		       "                         destination (docs/protocol.md, \"Committing early\")\n"
		       "  --commit-late          commit only after the destination said it\n"
		       "                         loaded the guest (PREPARED): a round trip more\n"
		       "                         in the downtime; a link lost at the stream's end\n"
		       "                         then resumes the source\n"
		       "  --disk DEVICE          move this local disk with the VM (repeatable;\n"
		       "                         default: every writable disk; docs/disk.md)\n"
		       "  --no-disks             move memory only (shared storage)\n"
		       "  --disk-copy-mode MODE  how the disk mirrors copy the guest's writes:\n"
		       "                         auto (default): background, then write-blocking\n"
		       "                         for a disk whose mirror stops converging;\n"
		       "                         write-blocking: each write reaches the link before\n"
		       "                         the guest sees it done, so a guest writing faster\n"
		       "                         than the link is slowed to it and the mirrors\n"
		       "                         converge; background: the guest never waits, but\n"
		       "                         one that outwrites the link keeps the mirrors from\n"
		       "                         converging (then --timeout applies)\n"
		       "\n" EXIT_CODES_HELP);
		return TSB_EXIT_OK;
	}
	send_options_from(&p, &o);
	if (p.x.bandwidth && !(o.pacer = wire_pacer_new(p.x.bandwidth))) {
		log_error("out of memory");
		return TSB_EXIT_FAILED;
	}
	oc = proxy_send(&o, &report);
	wire_pacer_free(o.pacer);
	if (oc == PROXY_OK)
		log_notice("migration completed");
	return finish(oc, report, p.c.report_path);
}

/* libvirt's disks: the port after the stream's, on the same host. */
static int nbd_default(const char *qemu_connect, char *out, size_t len)
{
	char host[256], port[32];
	uint64_t v;

	if (tsb_split_hostport(qemu_connect, host, sizeof(host), port, sizeof(port)) < 0 ||
	    tsb_parse_u64(port, 1, 65534, &v) < 0)
		return -1;
	snprintf(out, len, strchr(host, ':') ? "[%s]:%llu" : "%s:%llu", host,
		 (unsigned long long)v + 1);
	return 0;
}

int cmd_recv(int argc, char **argv)
{
	char nbd[300] = "";
	struct proxy_recv_options o = { 0 };
	struct parsed p = { 0 };
	json_t *report = NULL;
	enum proxy_outcome oc;
	int r;

	r = parse("recv", false, argc, argv, &p);
	if (r)
		return r;
	if (p.help) {
		printf("Usage: tsubame recv --listen HOST:PORT --qmp SOCKET --key FILE [OPTIONS]\n"
		       "       tsubame recv --listen HOST:PORT --qemu-connect HOST:PORT --key FILE ...\n"
		       "\n"
		       "Receives one live migration from 'tsubame send' and feeds it to the local\n"
		       "QEMU, which must have been started with -incoming defer. With\n"
		       "--qemu-connect it receives one from 'tsubame migrate' for a libvirt\n"
		       "destination instead: libvirt starts the QEMU, which listens there\n"
		       "(docs/libvirt.md).\n"
		       "\n"
		       "Options:\n"
		       "  --listen HOST:PORT     where to accept the sender (required)\n"
		       "  --qemu-connect HOST:PORT\n"
		       "                         libvirt: where the destination QEMU listens for\n"
		       "                         the stream (127.0.0.1 and 'tsubame migrate\n"
		       "                         --qemu-port'); instead of --qmp\n"
		       "  --nbd-connect HOST:PORT\n"
		       "                         libvirt: where that QEMU exports the disks\n"
		       "                         libvirt's mirror fills (default: the port after\n"
		       "                         --qemu-connect's)\n"
		       COMMON_HELP
		       "  --disk-source FILE     also rebuild pages from this disk image (raw or\n"
		       "                         qcow2; repeatable); the VM's own disks are used\n"
		       "  --no-vm-disks          do not index the destination VM's own disks\n"
		       "  --vm-id ID             take only this VM (a sender of another is\n"
		       "                         refused); required with --net-agent\n"
		       "  --net-mac MAC --net-ip ADDR --net-home SITE\n"
		       "                         with --net-agent: the VM's MAC, addresses\n"
		       "                         (repeatable) and home site, so that it stays\n"
		       "                         reachable at them here (docs/network.md)\n"
		       "  --standby              be a standby for 'tsubame sync': no QEMU, no\n"
		       "                         --qmp; keep each round of memory in the store, and\n"
		       "                         of the disks in image files there, so that an\n"
		       "                         evacuation to this site later sends only what\n"
		       "                         changed since (docs/standby.md); takes rounds one\n"
		       "                         after another until interrupted\n"
		       "  --rounds N             with --standby: stop after N kept rounds\n"
		       "\n"
		       "Pages the destination can rebuild travel as references: from this VM's\n"
		       "image left here on an earlier visit, from other VMs of the same tenant in\n"
		       "the store, or from blocks of local disk images (the guest's page cache).\n"
		       "\n" EXIT_CODES_HELP);
		return TSB_EXIT_OK;
	}
	recv_options_from(&p, &o);
	if (p.x.standby)
		return cli_standby_run(&o, &p.x);
	if (o.qemu_connect)
		o.no_vm_disks = true; /* libvirt's QEMU is not ours to ask */
	if (o.qemu_connect && !p.nbd_connect && nbd_default(o.qemu_connect, nbd, sizeof(nbd)) < 0)
		return cli_usage_error("recv", "bad --qemu-connect '%s' (HOST:PORT, PORT < 65535)",
				       o.qemu_connect);
	o.nbd_connect = p.nbd_connect ? p.nbd_connect : nbd[0] ? nbd : NULL;
	oc = proxy_recv(&o, &report);
	if (oc == PROXY_OK)
		log_notice("migration received; the VM runs here");
	return finish(oc, report, p.c.report_path);
}
