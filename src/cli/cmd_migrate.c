/*
 * tsubame migrate: moves a running libvirt domain to another site with
 * libvirt's own peer-to-peer live migration, its QEMU stream carried by
 * tsubame (docs/libvirt.md; the move itself: src/domain).
 */
#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "domain/domain.h"
#include "proxy/proxy.h"
#include "store/store.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
	OPT_DEST_URI = 256, OPT_TO, OPT_CONNECT, OPT_QEMU_PORT, OPT_PERSISTENT,
	OPT_UNDEFINE_SOURCE, OPT_KEY, OPT_CERT, OPT_CERT_KEY, OPT_CA, OPT_REPORT, OPT_TIMEOUT,
	OPT_STALL, OPT_STORE, OPT_NO_STORE, OPT_STORE_CAP, OPT_TENANT, OPT_DOWNTIME, OPT_DISK,
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
	{ "disk", required_argument, NULL, OPT_DISK },
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
	       "                         (default %d; must be free on both hosts); the\n"
	       "                         disks' NBD mirror uses PORT + 1\n"
	       "  --disk TARGET          move this local disk (e.g. vda) with the domain,\n"
	       "                         by libvirt's NBD mirror through tsubame\n"
	       "                         (repeatable); without it the disks must be shared\n"
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
	       "The destination needs the disk's image file (same path, same size) or a\n"
	       "libvirt storage pool holding its directory, where libvirt creates it.\n"
	       "\n"
	       "Exit status: 0 the domain runs at the destination; 1 failed, the domain\n"
	       "runs at the source (libvirt's or tsubame's reason is printed); 2 usage error;\n"
	       "3 not done within --timeout (cancelled); 130 interrupted (cancelled). When\n"
	       "tsubame's side fails first, libvirt's job is aborted and the source runs on.\n",
	       DOMAIN_QEMU_PORT_DEFAULT);
}

struct migrate_args {
	struct domain_move m;
	bool no_store;
};

static int parse_opt(int c, struct migrate_args *a)
{
	struct proxy_common_options *co = &a->m.so.c;
	uint64_t v;

	switch (c) {
	case OPT_DEST_URI: a->m.dest_uri = optarg; break;
	case OPT_TO: a->m.so.to = optarg; break;
	case OPT_CONNECT: a->m.connect_uri = optarg; break;
	case OPT_QEMU_PORT:
		if (tsb_parse_u64(optarg, 1, 65535, &v) < 0)
			return cli_usage_error("migrate", "bad --qemu-port '%s'", optarg);
		if (v == 65535)
			return cli_usage_error("migrate", "--qemu-port %s: PORT + 1 must be a port",
					       optarg);
		a->m.qemu_port = (unsigned)v;
		break;
	case OPT_DISK:
		if (a->m.n_disks == DOMAIN_MAX_DISKS)
			return cli_usage_error("migrate", "at most %d --disk", DOMAIN_MAX_DISKS);
		a->m.disks[a->m.n_disks++] = optarg;
		break;
	case OPT_PERSISTENT: a->m.persistent = true; break;
	case OPT_UNDEFINE_SOURCE: a->m.undefine_source = true; break;
	case OPT_DOWNTIME:
		if (tsb_parse_u64(optarg, 1, 2000000, &a->m.downtime_ms) < 0)
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
	case OPT_TENANT:
		if (!cli_id_ok(optarg))
			return cli_usage_error("migrate", "bad --tenant '%s' (1-%d printable "
					       "characters, no spaces or '/')", optarg, STORE_MAX_ID);
		co->tenant = optarg;
		break;
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
	struct proxy_common_options *co = &a->m.so.c;
	int c, r;

	a->m.qemu_port = DOMAIN_QEMU_PORT_DEFAULT;
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
	a->m.domain = argv[optind];
	if (!a->m.dest_uri || !a->m.so.to)
		return cli_usage_error("migrate", "--dest-uri URI and --to HOST:PORT are required");
	if (!co->key_path && !(co->cert && co->cert_key && co->ca))
		return cli_usage_error("migrate", "--key FILE (or --cert, --cert-key and --ca) "
				       "is required");
	if (a->no_store && co->store_dir)
		return cli_usage_error("migrate", "--store and --no-store exclude each other");
	co->store_dir = a->no_store ? NULL : co->store_dir ? co->store_dir : STORE_DEFAULT_DIR;
	return 0;
}

int cmd_migrate(int argc, char **argv)
{
	struct migrate_args a = { 0 };
	enum proxy_outcome oc;
	json_t *report = NULL;
	char why[1024];
	bool hung;
	int r;

	r = parse(argc, argv, &a);
	if (r)
		return r < 0 ? TSB_EXIT_OK : r;
	r = domain_move_run(&a.m, &oc, &report, &hung, why, sizeof(why));
	if (report && a.m.so.c.report_path && proxy_write_report(a.m.so.c.report_path, report) < 0)
		log_error("cannot write the report to %s", a.m.so.c.report_path);
	json_decref(report);
	if (r == 0) {
		log_notice("domain %s runs at %s%s", a.m.domain, a.m.dest_uri,
			   oc == PROXY_OK ? "" : " (tsubame's side reported a problem "
			   "after libvirt's success: see above)");
		return TSB_EXIT_OK;
	}
	(void)why;	/* said where it happened */
	if (oc == PROXY_INTERRUPTED)
		return 130;
	if (oc == PROXY_TIMEOUT)
		return 3;
	return TSB_EXIT_FAILED;
}
