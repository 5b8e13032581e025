/*
 * tsubame migrate: moves a running libvirt domain to another site with
 * libvirt's own peer-to-peer live migration, its QEMU stream carried by
 * tsubame (docs/libvirt.md). libvirt keeps its job control, its
 * Finish/Confirm handshake and its definitions; the source QEMU streams
 * into a tsubame sender on this host's loopback and the destination QEMU
 * listens on its host's loopback, where 'tsubame recv --qemu-connect'
 * delivers the rebuilt stream.
 */
#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "proxy/proxy.h"
#include "store/store.h"

#include <getopt.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The loopback port of both QEMUs' migration socket (libvirt's URI), by default. */
#define MIGRATE_QEMU_PORT_DEFAULT 49290

enum {
	OPT_DEST_URI = 256, OPT_TO, OPT_CONNECT, OPT_QEMU_PORT, OPT_PERSISTENT,
	OPT_UNDEFINE_SOURCE, OPT_KEY, OPT_CERT, OPT_CERT_KEY, OPT_CA, OPT_REPORT, OPT_TIMEOUT,
	OPT_STALL, OPT_STORE, OPT_NO_STORE, OPT_STORE_CAP, OPT_TENANT, OPT_DOWNTIME,
};

static const struct option options[] = {
	{ "dest-uri", required_argument, NULL, OPT_DEST_URI },
	{ "to", required_argument, NULL, OPT_TO },
	{ "connect", required_argument, NULL, OPT_CONNECT },
	{ "qemu-port", required_argument, NULL, OPT_QEMU_PORT },
	{ "persistent", no_argument, NULL, OPT_PERSISTENT },
	{ "undefinesource", no_argument, NULL, OPT_UNDEFINE_SOURCE },
	{ "key", required_argument, NULL, OPT_KEY },
	{ "cert", required_argument, NULL, OPT_CERT },
	{ "cert-key", required_argument, NULL, OPT_CERT_KEY },
	{ "ca", required_argument, NULL, OPT_CA },
	{ "report", required_argument, NULL, OPT_REPORT },
	{ "timeout", required_argument, NULL, OPT_TIMEOUT },
	{ "stall-timeout", required_argument, NULL, OPT_STALL },
	{ "store", required_argument, NULL, OPT_STORE },
	{ "no-store", no_argument, NULL, OPT_NO_STORE },
	{ "store-cap", required_argument, NULL, OPT_STORE_CAP },
	{ "tenant", required_argument, NULL, OPT_TENANT },
	{ "downtime-limit", required_argument, NULL, OPT_DOWNTIME },
	{ "verbose", no_argument, NULL, 'v' },
	{ "help", no_argument, NULL, 'h' },
	{}
};

static void usage(void)
{
	printf("Usage: tsubame migrate DOMAIN --dest-uri URI --to HOST:PORT --key FILE [OPTIONS]\n"
	       "\n"
	       "Moves the running libvirt domain DOMAIN (name or UUID) to another site with\n"
	       "libvirt's live peer-to-peer migration, its memory carried by tsubame: only what\n"
	       "the destination cannot rebuild crosses the WAN (store reuse, compression).\n"
	       "libvirt runs the switchover: the domain runs at the destination, or stays\n"
	       "at the source, never both. 'virsh domjobinfo DOMAIN' shows the job meanwhile.\n"
	       "At the destination, 'tsubame recv --qemu-connect 127.0.0.1:PORT' must wait\n"
	       "(PORT as --qemu-port). docs/libvirt.md.\n"
	       "\n"
	       "Options:\n"
	       "  --dest-uri URI         the destination's libvirt, as the source's libvirtd\n"
	       "                         reaches it (e.g. qemu+ssh://host-b/system; required)\n"
	       "  --to HOST:PORT         where 'tsubame recv' listens at the destination\n"
	       "                         (required)\n"
	       "  --connect URI          the local libvirt (default: libvirt's default URI)\n"
	       "  --qemu-port PORT       loopback port of both QEMUs' migration socket\n"
	       "                         (default %d; must be free on both hosts)\n"
	       "  --persistent           define the domain at the destination (virsh migrate\n"
	       "                         --persistent)\n"
	       "  --undefinesource       undefine it at the source afterwards\n"
	       "  --downtime-limit MS    libvirt's maximum downtime for the switchover\n"
	       "  --key FILE             shared key made by 'tsubame keygen' (mode 0600)\n"
	       "  --cert FILE --cert-key FILE --ca FILE\n"
	       "                         certificates instead of a shared key\n"
	       "  --report FILE          write the sender's JSON report\n"
	       "  --timeout DUR          give up after this long (default none)\n"
	       "  --stall-timeout DUR    give up when the link makes no progress (default 60s)\n"
	       "  --store DIR            this host's content store (default " STORE_DEFAULT_DIR ")\n"
	       "  --no-store             keep nothing and reuse nothing between migrations\n"
	       "  --store-cap SIZE       size cap of the store (default 8G)\n"
	       "  --tenant NAME          share content with VMs of this tenant only\n"
	       "  -v, --verbose          more log output\n"
	       "  -h, --help             show this help\n"
	       "\n"
	       "The VM's id in the stores is the domain's UUID, the same on every site.\n"
	       "Disks must be on shared storage for now (no local disks are moved).\n"
	       "\n"
	       "Exit status: 0 the domain runs at the destination; 1 failed, the domain\n"
	       "runs at the source (libvirt's or tsubame's reason is printed); 2 usage error;\n"
	       "130 interrupted (the migration was cancelled).\n", MIGRATE_QEMU_PORT_DEFAULT);
}

struct migrate_args {
	const char *domain, *dest_uri, *connect_uri;
	unsigned qemu_port;
	unsigned long flags;
	uint64_t downtime_ms;
	bool no_store;
	struct proxy_send_options so;
};

/* The sender's thread and what it says to the libvirt side. */
struct relay {
	struct proxy_send_options *so;
	pthread_t th;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready, ended;
	atomic_int verdict;		/* -1 libvirt still runs, 0 failed, 1 succeeded */
	enum proxy_outcome outcome;
	json_t *report;
};

static void relay_ready(void *opaque)
{
	struct relay *rl = opaque;

	pthread_mutex_lock(&rl->lock);
	rl->ready = true;
	pthread_cond_broadcast(&rl->cond);
	pthread_mutex_unlock(&rl->lock);
}

static int relay_verdict(void *opaque)
{
	struct relay *rl = opaque;

	return rl->verdict;
}

static void *relay_thread(void *arg)
{
	struct relay *rl = arg;

	rl->outcome = proxy_send(rl->so, &rl->report);
	pthread_mutex_lock(&rl->lock);
	rl->ended = true;
	pthread_cond_broadcast(&rl->cond);
	pthread_mutex_unlock(&rl->lock);
	return NULL;
}

static int parse_opt(int c, struct migrate_args *a)
{
	struct proxy_common_options *co = &a->so.c;
	uint64_t v;

	switch (c) {
	case OPT_DEST_URI: a->dest_uri = optarg; break;
	case OPT_TO: a->so.to = optarg; break;
	case OPT_CONNECT: a->connect_uri = optarg; break;
	case OPT_QEMU_PORT:
		if (tsb_parse_u64(optarg, 1, 65535, &v) < 0)
			return cli_usage_error("migrate", "bad --qemu-port '%s'", optarg);
		a->qemu_port = (unsigned)v;
		break;
	case OPT_PERSISTENT: a->flags |= VIR_MIGRATE_PERSIST_DEST; break;
	case OPT_UNDEFINE_SOURCE: a->flags |= VIR_MIGRATE_UNDEFINE_SOURCE; break;
	case OPT_DOWNTIME:
		if (tsb_parse_u64(optarg, 1, 2000000, &a->downtime_ms) < 0)
			return cli_usage_error("migrate", "bad --downtime-limit '%s'", optarg);
		break;
	case OPT_KEY: co->key_path = optarg; break;
	case OPT_CERT: co->cert = optarg; break;
	case OPT_CERT_KEY: co->cert_key = optarg; break;
	case OPT_CA: co->ca = optarg; break;
	case OPT_REPORT: co->report_path = optarg; break;
	case OPT_TIMEOUT:
	case OPT_STALL:
		if (tsb_parse_duration(optarg, &v) < 0)
			return cli_usage_error("migrate", "bad --%s '%s'",
					       options[c - OPT_DEST_URI].name, optarg);
		*(c == OPT_TIMEOUT ? &co->timeout_ms : &co->stall_ms) = v / 1000000;
		break;
	case OPT_STORE: co->store_dir = optarg; break;
	case OPT_NO_STORE: a->no_store = true; break;
	case OPT_STORE_CAP:
		if (tsb_parse_size(optarg, &co->store_cap) < 0 || co->store_cap < (1u << 20))
			return cli_usage_error("migrate", "bad --store-cap '%s' (at least 1M)", optarg);
		break;
	case OPT_TENANT: co->tenant = optarg; break;
	case 'v':
		tsb_log_set_level(tsb_log_get_level() < TSB_LOG_INFO ? TSB_LOG_INFO
								   : TSB_LOG_DEBUG);
		break;
	default:
		fprintf(stderr, "Try 'tsubame migrate --help'.\n");
		return TSB_EXIT_USAGE;
	}
	return 0;
}

/* 0, -1 after --help, or a usage error's exit code. */
static int parse(int argc, char **argv, struct migrate_args *a)
{
	struct proxy_common_options *co = &a->so.c;
	int c, r;

	a->qemu_port = MIGRATE_QEMU_PORT_DEFAULT;
	a->flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER;
	co->stall_ms = 60000;
	co->commit_timeout_ms = PROXY_COMMIT_TIMEOUT_DEFAULT_MS;
	co->state_dir = PROXY_STATE_DIR_DEFAULT;
	while ((c = getopt_long(argc, argv, "vh", options, NULL)) != -1) {
		if (c == 'h') {
			usage();
			return -1;
		}
		r = parse_opt(c, a);
		if (r)
			return r;
	}
	if (optind + 1 != argc)
		return cli_usage_error("migrate", optind < argc ? "one DOMAIN only" :
				       "which DOMAIN?");
	a->domain = argv[optind];
	if (!a->dest_uri || !a->so.to)
		return cli_usage_error("migrate", "--dest-uri URI and --to HOST:PORT are required");
	if (!co->key_path && !(co->cert && co->cert_key && co->ca))
		return cli_usage_error("migrate", "--key FILE (or --cert, --cert-key and --ca) "
				       "is required");
	if (a->no_store && co->store_dir)
		return cli_usage_error("migrate", "--store and --no-store exclude each other");
	co->store_dir = a->no_store ? NULL : co->store_dir ? co->store_dir : STORE_DEFAULT_DIR;
	return 0;
}

static const char *libvirt_error(void)
{
	const char *m = virGetLastErrorMessage();

	return m ? m : "unknown libvirt error";
}

static void ignore_libvirt_errors(void *opaque, virErrorPtr err)
{
	(void)opaque;
	(void)err; /* printed by us, once, where it matters */
}

/* libvirt's live p2p migration to dest_uri with QEMU's stream through our loopback. */
static int libvirt_migrate(virDomainPtr dom, const struct migrate_args *a, char *err,
			   size_t errlen)
{
	virTypedParameterPtr params = NULL;
	int n = 0, max = 0, r = -1;
	char uri[64];

	snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%u", a->qemu_port);
	if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_URI, uri) < 0 ||
	    virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_LISTEN_ADDRESS,
				    "127.0.0.1") < 0)
		goto out;
	if (a->downtime_ms) {
		/* libvirt takes the maximum downtime as a domain setting, before the job. */
		if (virDomainMigrateSetMaxDowntime(dom, a->downtime_ms, 0) < 0)
			goto out;
	}
	r = virDomainMigrateToURI3(dom, a->dest_uri, params, n, (unsigned)a->flags);
out:
	if (r < 0)
		snprintf(err, errlen, "%s", libvirt_error());
	virTypedParamsFree(params, n);
	return r;
}

/* Runs the sender, then libvirt's migration once the sender listens. */
static int run(virDomainPtr dom, struct migrate_args *a, struct relay *rl)
{
	char err[1024] = "";
	int r = -1;

	rl->so = &a->so;
	rl->verdict = -1;
	pthread_mutex_init(&rl->lock, NULL);
	pthread_cond_init(&rl->cond, NULL);
	if (pthread_create(&rl->th, NULL, relay_thread, rl)) {
		log_error("cannot start the sender");
		return -1;
	}
	pthread_mutex_lock(&rl->lock);
	while (!rl->ready && !rl->ended)
		pthread_cond_wait(&rl->cond, &rl->lock);
	pthread_mutex_unlock(&rl->lock);
	if (rl->ready) {
		log_info("libvirt migrates %s to %s, its stream through 127.0.0.1:%u", a->domain,
			 a->dest_uri, a->qemu_port);
		r = libvirt_migrate(dom, a, err, sizeof(err));
		rl->verdict = r == 0;
		if (r < 0)
			log_error("libvirt's migration failed: %s", err);
	}
	pthread_join(rl->th, NULL);
	pthread_mutex_destroy(&rl->lock);
	pthread_cond_destroy(&rl->cond);
	return r;
}

int cmd_migrate(int argc, char **argv)
{
	struct migrate_args a = { 0 };
	struct relay rl = { 0 };
	char uuid[VIR_UUID_STRING_BUFLEN], listen[32];
	virConnectPtr conn = NULL;
	virDomainPtr dom = NULL;
	int r, ex = TSB_EXIT_FAILED;

	r = parse(argc, argv, &a);
	if (r)
		return r < 0 ? TSB_EXIT_OK : r;
	virSetErrorFunc(NULL, ignore_libvirt_errors);
	conn = virConnectOpen(a.connect_uri);
	if (!conn) {
		log_error("cannot connect to libvirt%s%s: %s", a.connect_uri ? " at " : "",
			  a.connect_uri ? a.connect_uri : "", libvirt_error());
		return TSB_EXIT_FAILED;
	}
	dom = virDomainLookupByName(conn, a.domain);
	if (!dom)
		dom = virDomainLookupByUUIDString(conn, a.domain);
	if (!dom) {
		log_error("no domain '%s' here", a.domain);
		goto out;
	}
	if (virDomainIsActive(dom) != 1 || virDomainGetUUIDString(dom, uuid) < 0) {
		log_error("domain '%s' is not running", a.domain);
		goto out;
	}
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", a.qemu_port);
	a.so.qemu_listen = listen;
	a.so.vm_id = uuid;
	a.so.no_disks = true;
	a.so.mode = PROXY_MODE_PRECOPY;
	a.so.connections = 1;
	a.so.libvirt_ready = relay_ready;
	a.so.libvirt_verdict = relay_verdict;
	a.so.libvirt_opaque = &rl;
	r = run(dom, &a, &rl);
	if (rl.report && a.so.c.report_path && proxy_write_report(a.so.c.report_path, rl.report) < 0)
		log_error("cannot write the report to %s", a.so.c.report_path);
	if (r == 0) {
		log_notice("domain %s runs at %s%s", a.domain, a.dest_uri,
			   rl.outcome == PROXY_OK ? "" : " (tsubame's side reported a problem "
			   "after libvirt's success: see above)");
		ex = TSB_EXIT_OK;
	} else if (rl.outcome == PROXY_INTERRUPTED) {
		ex = 130;
	}
out:
	json_decref(rl.report);
	if (dom)
		virDomainFree(dom);
	virConnectClose(conn);
	return ex;
}
