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
#include "cli/migrate_targets.h"
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

/* Disks to move with the domain (libvirt's NBD mirror through tsubame). */
#define MIGRATE_MAX_DISKS 8

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
	       MIGRATE_QEMU_PORT_DEFAULT);
}

struct migrate_args {
	const char *domain, *dest_uri, *connect_uri;
	const char *disks[MIGRATE_MAX_DISKS];
	unsigned n_disks;
	/* What libvirt says of them: export name, image file (owned). */
	char *exports[MIGRATE_MAX_DISKS], *files[MIGRATE_MAX_DISKS];
	unsigned qemu_port;
	unsigned long flags;
	uint64_t downtime_ms;
	bool no_store;
	struct proxy_send_options so;
};

static const char *libvirt_error(void)
{
	const char *m = virGetLastErrorMessage();

	return m ? m : "unknown libvirt error";
}

/* The sender's thread and what it says to the libvirt side. */
struct relay {
	struct proxy_send_options *so;
	struct migrate_args *args;
	virDomainPtr dom;
	pthread_t th;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready, ended;
	/* libvirt's migration call (libvirt_thread) */
	pthread_t libvirt_th;
	bool migrate_returned;		/* under lock, with migrate_rc */
	int migrate_rc;
	bool libvirt_hung;		/* it never returned: leave its connection alone */
	atomic_int verdict;		/* -1 libvirt still runs, 0 failed, 1 succeeded */
	enum proxy_outcome outcome;
	json_t *report;
	/* libvirt's events: its event loop's thread and what the job said. */
	pthread_t events_th;
	bool events_started;
	atomic_bool events_stop;
	json_t *job;			/* the completed job's statistics, or NULL */
	atomic_bool job_done;		/* job is set (by the event loop's thread) */
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

/* libvirt's event loop (its events come through it); ends with events_stop. */
static void *events_thread(void *arg)
{
	struct relay *rl = arg;

	while (!rl->events_stop)
		if (virEventRunDefaultImpl() < 0)
			break;
	return NULL;
}

static void wake_events(int timer, void *opaque)
{
	(void)opaque;
	virEventRemoveTimeout(timer);
}

static void on_iteration(virConnectPtr c, virDomainPtr d, int iteration, void *opaque)
{
	(void)c;
	(void)d;
	(void)opaque;
	log_info("libvirt: memory pass %d", iteration);
}

/* The job's figures (virDomainGetJobStats' names) for the report. */
static void on_job_completed(virConnectPtr c, virDomainPtr d, virTypedParameterPtr params,
			     int n, void *opaque)
{
	static const char *const keys[] = {
		VIR_DOMAIN_JOB_TIME_ELAPSED, VIR_DOMAIN_JOB_DOWNTIME, VIR_DOMAIN_JOB_DATA_TOTAL,
		VIR_DOMAIN_JOB_MEMORY_TOTAL, VIR_DOMAIN_JOB_DISK_TOTAL,
		VIR_DOMAIN_JOB_MEMORY_ITERATION,
	};
	struct relay *rl = opaque;
	unsigned long long v;
	json_t *job = json_object();
	size_t i;

	(void)c;
	(void)d;
	for (i = 0; job && i < sizeof(keys) / sizeof(keys[0]); i++)
		if (virTypedParamsGetULLong(params, n, keys[i], &v) == 1)
			json_object_set_new(job, keys[i], json_integer((json_int_t)v));
	if (rl->job_done) {
		json_decref(job);
		return;
	}
	rl->job = job;
	rl->job_done = true;
}

/* Subscribes to the domain's migration events; a failure only costs the figures. */
static void events_start(virConnectPtr conn, virDomainPtr dom, struct relay *rl)
{
	if (virConnectDomainEventRegisterAny(conn, dom, VIR_DOMAIN_EVENT_ID_JOB_COMPLETED,
			VIR_DOMAIN_EVENT_CALLBACK(on_job_completed), rl, NULL) < 0 ||
	    virConnectDomainEventRegisterAny(conn, dom, VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION,
			VIR_DOMAIN_EVENT_CALLBACK(on_iteration), rl, NULL) < 0 ||
	    pthread_create(&rl->events_th, NULL, events_thread, rl)) {
		log_warn("no libvirt events: %s", libvirt_error());
		return;
	}
	rl->events_started = true;
}

static void events_end(struct relay *rl)
{
	if (!rl->events_started)
		return;
	/* The source's job-completed event comes with libvirt's Confirm: let it in. */
	for (int i = 0; i < 200 && rl->verdict == 1 && !rl->job_done; i++)
		usleep(10000);
	rl->events_stop = true;
	(void)virEventAddTimeout(0, wake_events, NULL, NULL);
	pthread_join(rl->events_th, NULL);
}

/* The sender failed first: libvirt cancels its job, the source runs on. */
static void relay_abort(void *opaque)
{
	struct relay *rl = opaque;

	if (virDomainAbortJob(rl->dom) < 0)
		log_warn("libvirt did not cancel its migration job: %s", libvirt_error());
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
		if (v == 65535)
			return cli_usage_error("migrate", "--qemu-port %s: PORT + 1 must be a port",
					       optarg);
		a->qemu_port = (unsigned)v;
		break;
	case OPT_DISK:
		if (a->n_disks == MIGRATE_MAX_DISKS)
			return cli_usage_error("migrate", "at most %d --disk", MIGRATE_MAX_DISKS);
		a->disks[a->n_disks++] = optarg;
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

static void ignore_libvirt_errors(void *opaque, virErrorPtr err)
{
	(void)opaque;
	(void)err; /* printed by us, once, where it matters */
}

/*
 * The value of attr='...' in the first tag named tag (e.g. "<alias ")
 * between p and end, as a new string; NULL if none. libvirt writes its
 * XML with single-quoted attributes.
 */
static char *xml_attr(const char *p, const char *end, const char *tag, const char *attr)
{
	size_t tl = strlen(tag), al = strlen(attr);
	const char *t, *v, *q, *gt;

	for (t = p; t && t + tl < end; t++) {
		if (memcmp(t, tag, tl))
			continue;
		gt = memchr(t, '>', (size_t)(end - t));
		if (!gt)
			return NULL;
		for (v = t + tl; v + al + 2 < gt; v++) {
			if (memcmp(v, attr, al) || v[al] != '=' || v[al + 1] != '\'' ||
			    (v[-1] != ' ' && v[-1] != '\t' && v[-1] != '\n'))
				continue;
			q = memchr(v + al + 2, '\'', (size_t)(gt - (v + al + 2)));
			return q ? strndup(v + al + 2, (size_t)(q - (v + al + 2))) : NULL;
		}
		return NULL;
	}
	return NULL;
}

/*
 * For each --disk: libvirt's NBD export name for it ("drive-" and the
 * disk's alias, what libvirt's mirror asks for), its image file and size,
 * from the running domain's XML (libvirt's own output through its API)
 * and virDomainGetBlockInfo(). 0, or -1 with err.
 */
static int find_disks(virDomainPtr dom, struct migrate_args *a, char *err, size_t errlen)
{
	char *xml = virDomainGetXMLDesc(dom, 0), *p, *end;
	virDomainBlockInfo info;
	unsigned i;
	int r = -1;

	if (!xml) {
		snprintf(err, errlen, "cannot read the domain's XML: %s", libvirt_error());
		return -1;
	}
	for (i = 0; i < a->n_disks; i++) {
		char *dev = NULL;

		for (p = strstr(xml, "<disk "); p; p = strstr(end, "<disk ")) {
			end = strstr(p, "</disk>");
			if (!end)
				break;
			free(dev);
			dev = xml_attr(p, end, "<target ", "dev");
			if (dev && !strcmp(dev, a->disks[i]))
				break;
		}
		free(dev);
		if (!p || !end) {
			snprintf(err, errlen, "--disk %s: the domain has no such disk", a->disks[i]);
			goto out;
		}
		char *alias = xml_attr(p, end, "<alias ", "name");

		a->files[i] = xml_attr(p, end, "<source ", "file");
		if (!alias || !a->files[i] || asprintf(&a->exports[i], "drive-%s", alias) < 0) {
			snprintf(err, errlen, "--disk %s: not a file-backed disk of a running domain",
				 a->disks[i]);
			a->exports[i] = NULL;
			free(alias);
			goto out;
		}
		free(alias);
		if (virDomainGetBlockInfo(dom, a->disks[i], &info, 0) < 0) {
			snprintf(err, errlen, "--disk %s: %s", a->disks[i], libvirt_error());
			goto out;
		}
		a->so.libvirt_disk_names[i] = a->exports[i];
		a->so.libvirt_disk_files[i] = a->files[i];
		a->so.libvirt_disk_sizes[i] = info.capacity;
		a->so.n_libvirt_disks = i + 1;
	}
	r = 0;
out:
	free(xml);
	return r;
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
	for (unsigned i = 0; i < a->n_disks; i++)
		if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_MIGRATE_DISKS,
					    a->disks[i]) < 0)
			goto out;
	if (a->n_disks) {
		snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%u", a->qemu_port + 1);
		if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_DISKS_URI,
					    uri) < 0)
			goto out;
	}
	if (a->downtime_ms) {
		/* libvirt takes the maximum downtime as a domain setting, before the job. */
		if (virDomainMigrateSetMaxDowntime(dom, a->downtime_ms, 0) < 0)
			goto out;
	}
	r = virDomainMigrateToURI3(dom, a->dest_uri, params, n, (unsigned)a->flags |
				   (a->n_disks ? VIR_MIGRATE_NON_SHARED_DISK : 0));
out:
	if (r < 0)
		snprintf(err, errlen, "%s", libvirt_error());
	virTypedParamsFree(params, n);
	return r;
}

/* libvirt's migration call, in a thread of its own: it may never return. */
static void *libvirt_thread(void *arg)
{
	struct relay *rl = arg;
	char err[1024] = "";
	int r = libvirt_migrate(rl->dom, rl->args, err, sizeof(err));

	if (r < 0)
		log_error("libvirt's migration failed: %s", err);
	pthread_mutex_lock(&rl->lock);
	rl->migrate_rc = r;
	rl->verdict = r == 0;
	rl->migrate_returned = true;
	pthread_cond_broadcast(&rl->cond);
	pthread_mutex_unlock(&rl->lock);
	return NULL;
}

/*
 * Runs the sender, then libvirt's migration once the sender listens. The
 * sender ends after libvirt's verdict, or gives up on a job that outlived
 * its cancel (send_libvirt.c); then libvirt's call still blocks, and
 * rl->libvirt_hung tells the caller not to wait for it or touch the
 * connection it uses.
 */
static int run(virDomainPtr dom, struct migrate_args *a, struct relay *rl)
{
	struct timespec until;
	bool started = false;
	int r = -1;

	rl->so = &a->so;
	rl->dom = dom;
	rl->args = a;
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
		started = pthread_create(&rl->libvirt_th, NULL, libvirt_thread, rl) == 0;
		if (!started) {
			log_error("cannot start libvirt's migration: no thread");
			rl->verdict = 0;
		}
	}
	pthread_join(rl->th, NULL);
	if (started) {
		/* The verdict came, or the sender gave up on it: a moment more, then no more. */
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_sec += 5;
		pthread_mutex_lock(&rl->lock);
		while (!rl->migrate_returned &&
		       pthread_cond_timedwait(&rl->cond, &rl->lock, &until) == 0)
			;
		rl->libvirt_hung = !rl->migrate_returned;
		r = rl->migrate_rc;
		pthread_mutex_unlock(&rl->lock);
		if (rl->libvirt_hung) {
			log_error("libvirt's migration call has not returned; tsubame exits "
				  "without it");
			return -1;
		}
		pthread_join(rl->libvirt_th, NULL);
	}
	pthread_mutex_destroy(&rl->lock);
	pthread_cond_destroy(&rl->cond);
	return r;
}

int cmd_migrate(int argc, char **argv)
{
	struct migrate_args a = { 0 };
	struct relay rl = { 0 };
	struct migrate_targets targets = { 0 };
	char uuid[VIR_UUID_STRING_BUFLEN], listen[32], nbd_listen[32], err[1024];
	virConnectPtr conn = NULL;
	virDomainPtr dom = NULL;
	int r, ex = TSB_EXIT_FAILED;

	r = parse(argc, argv, &a);
	if (r)
		return r < 0 ? TSB_EXIT_OK : r;
	virSetErrorFunc(NULL, ignore_libvirt_errors);
	if (virEventRegisterDefaultImpl() < 0)
		log_warn("no libvirt event loop: %s", libvirt_error());
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
	if (find_disks(dom, &a, err, sizeof(err)) < 0) {
		log_error("%s", err);
		goto out;
	}
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", a.qemu_port);
	snprintf(nbd_listen, sizeof(nbd_listen), "127.0.0.1:%u", a.qemu_port + 1);
	a.so.qemu_listen = listen;
	a.so.nbd_listen = nbd_listen;
	a.so.vm_id = uuid;
	a.so.no_disks = !a.n_disks;
	a.so.mode = PROXY_MODE_PRECOPY;
	a.so.connections = 1;
	a.so.libvirt_ready = relay_ready;
	a.so.libvirt_verdict = relay_verdict;
	a.so.libvirt_abort = relay_abort;
	a.so.libvirt_opaque = &rl;
	migrate_targets_prepare(&targets, a.dest_uri, a.files, a.n_disks);
	events_start(conn, dom, &rl);
	r = run(dom, &a, &rl);
	if (!rl.libvirt_hung) {
		events_end(&rl);
		migrate_targets_release(&targets);
	}
	if (rl.report && rl.job_done)
		json_object_set(rl.report, "libvirt_job", rl.job);
	if (rl.job_done && json_object_get(rl.job, VIR_DOMAIN_JOB_DOWNTIME))
		log_info("libvirt: downtime %lld ms, %lld ms in all", (long long)json_integer_value(
			json_object_get(rl.job, VIR_DOMAIN_JOB_DOWNTIME)), (long long)json_integer_value(
			json_object_get(rl.job, VIR_DOMAIN_JOB_TIME_ELAPSED)));
	if (rl.report && a.so.c.report_path && proxy_write_report(a.so.c.report_path, rl.report) < 0)
		log_error("cannot write the report to %s", a.so.c.report_path);
	if (r == 0) {
		log_notice("domain %s runs at %s%s", a.domain, a.dest_uri,
			   rl.outcome == PROXY_OK ? "" : " (tsubame's side reported a problem "
			   "after libvirt's success: see above)");
		ex = TSB_EXIT_OK;
	} else if (rl.outcome == PROXY_INTERRUPTED) {
		ex = 130;
	} else if (rl.outcome == PROXY_TIMEOUT) {
		ex = 3;
	}
out:
	for (unsigned i = 0; i < MIGRATE_MAX_DISKS; i++) {
		free(a.exports[i]);
		free(a.files[i]);
	}
	json_decref(rl.report);
	if (rl.libvirt_hung)
		return ex; /* its call still uses conn and dom: exit without them */
	json_decref(rl.job);
	if (dom)
		virDomainFree(dom);
	virConnectClose(conn);
	return ex;
}
