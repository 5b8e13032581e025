/*
 * One domain's move (domain.h): the sender runs in a thread of its own;
 * once it listens on the loopback, libvirt's migration call starts in
 * another (it may never return), and the sender ends on libvirt's verdict.
 * The source QEMU streams into the sender at 127.0.0.1:PORT, the
 * destination QEMU listens on its host's 127.0.0.1:PORT, where
 * 'tsubame recv --qemu-connect' delivers the rebuilt stream.
 */
#include "domain/domain.h"
#include "domain/targets.h"

#include "common/log.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *libvirt_error(void)
{
	const char *m = virGetLastErrorMessage();

	return m ? m : "unknown libvirt error";
}

/* ---- libvirt's event loop: one for the process, whatever moves ---- */

static pthread_once_t events_once = PTHREAD_ONCE_INIT;
static bool events_running;

static void ignore_libvirt_errors(void *opaque, virErrorPtr err)
{
	(void)opaque;
	(void)err; /* printed by us, once, where it matters */
}

static void *events_thread(void *arg)
{
	(void)arg;
	for (;;)
		if (virEventRunDefaultImpl() < 0)
			break;
	return NULL;
}

/* Before the first connection: libvirt's events come through this loop. */
static void events_init(void)
{
	pthread_t th;

	virSetErrorFunc(NULL, ignore_libvirt_errors);
	if (virEventRegisterDefaultImpl() < 0) {
		log_warn("no libvirt event loop: %s", libvirt_error());
		return;
	}
	if (pthread_create(&th, NULL, events_thread, NULL)) {
		log_warn("no libvirt event loop: no thread");
		return;
	}
	pthread_detach(th);
	events_running = true;
}

/* ---- the sender's thread and what it says to the libvirt side ---- */

struct relay {
	struct domain_move *m;
	virDomainPtr dom;
	char *exports[DOMAIN_MAX_DISKS], *files[DOMAIN_MAX_DISKS];	/* owned */
	pthread_t th;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ready, ended;
	/* libvirt's migration call (libvirt_thread) */
	pthread_t libvirt_th;
	bool migrate_returned;		/* under lock, with migrate_rc */
	int migrate_rc;
	char migrate_err[512];
	atomic_int verdict;		/* -1 libvirt still runs, 0 failed, 1 succeeded */
	enum proxy_outcome outcome;
	json_t *report;
	/* The domain's events: callback ids and what the job said. */
	int ev_completed, ev_iteration;
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

/* The sender failed first: libvirt cancels its job, the source runs on. */
static void relay_abort(void *opaque)
{
	struct relay *rl = opaque;

	if (virDomainAbortJob(rl->dom) < 0)
		log_warn("libvirt did not cancel its migration job: %s", libvirt_error());
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
	json_t *job;
	size_t i;

	(void)c;
	(void)d;
	if (rl->job_done)
		return;
	job = json_object();
	for (i = 0; job && i < sizeof(keys) / sizeof(keys[0]); i++)
		if (virTypedParamsGetULLong(params, n, keys[i], &v) == 1)
			json_object_set_new(job, keys[i], json_integer((json_int_t)v));
	rl->job = job;
	rl->job_done = true;
}

/* Subscribes to the domain's migration events; a failure only costs the figures. */
static void events_start(virConnectPtr conn, struct relay *rl)
{
	rl->ev_completed = rl->ev_iteration = -1;
	pthread_once(&events_once, events_init);
	if (!events_running)
		return;
	rl->ev_completed = virConnectDomainEventRegisterAny(conn, rl->dom,
		VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, VIR_DOMAIN_EVENT_CALLBACK(on_job_completed),
		rl, NULL);
	rl->ev_iteration = virConnectDomainEventRegisterAny(conn, rl->dom,
		VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, VIR_DOMAIN_EVENT_CALLBACK(on_iteration),
		rl, NULL);
	if (rl->ev_completed < 0 || rl->ev_iteration < 0)
		log_warn("no libvirt events: %s", libvirt_error());
}

static void events_end(virConnectPtr conn, struct relay *rl)
{
	/* The source's job-completed event comes with libvirt's Confirm: let it in. */
	for (int i = 0; i < 200 && rl->ev_completed >= 0 && rl->verdict == 1 && !rl->job_done; i++)
		usleep(10000);
	if (rl->ev_completed >= 0)
		(void)virConnectDomainEventDeregisterAny(conn, rl->ev_completed);
	if (rl->ev_iteration >= 0)
		(void)virConnectDomainEventDeregisterAny(conn, rl->ev_iteration);
}

static void *relay_thread(void *arg)
{
	struct relay *rl = arg;

	rl->outcome = proxy_send(&rl->m->so, &rl->report);
	pthread_mutex_lock(&rl->lock);
	rl->ended = true;
	pthread_cond_broadcast(&rl->cond);
	pthread_mutex_unlock(&rl->lock);
	return NULL;
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
 * For each disk to move: libvirt's NBD export name for it ("drive-" and
 * the disk's alias, what libvirt's mirror asks for), its image file and
 * size, from the running domain's XML (libvirt's own output through its
 * API) and virDomainGetBlockInfo(). 0, or -1 with err.
 */
static int find_disks(struct relay *rl, char *err, size_t errlen)
{
	struct domain_move *m = rl->m;
	char *xml = virDomainGetXMLDesc(rl->dom, 0), *p, *end;
	virDomainBlockInfo info;
	unsigned i;
	int r = -1;

	if (!xml) {
		snprintf(err, errlen, "cannot read the domain's XML: %s", libvirt_error());
		return -1;
	}
	for (i = 0; i < m->n_disks; i++) {
		char *dev = NULL, *alias;

		for (p = strstr(xml, "<disk "); p; p = strstr(end, "<disk ")) {
			end = strstr(p, "</disk>");
			if (!end)
				break;
			free(dev);
			dev = xml_attr(p, end, "<target ", "dev");
			if (dev && !strcmp(dev, m->disks[i]))
				break;
		}
		free(dev);
		if (!p || !end) {
			snprintf(err, errlen, "disk %s: the domain has no such disk", m->disks[i]);
			goto out;
		}
		alias = xml_attr(p, end, "<alias ", "name");
		rl->files[i] = xml_attr(p, end, "<source ", "file");
		if (!alias || !rl->files[i] || asprintf(&rl->exports[i], "drive-%s", alias) < 0) {
			snprintf(err, errlen, "disk %s: not a file-backed disk of a running domain",
				 m->disks[i]);
			rl->exports[i] = NULL;
			free(alias);
			goto out;
		}
		free(alias);
		if (virDomainGetBlockInfo(rl->dom, m->disks[i], &info, 0) < 0) {
			snprintf(err, errlen, "disk %s: %s", m->disks[i], libvirt_error());
			goto out;
		}
		m->so.libvirt_disk_names[i] = rl->exports[i];
		m->so.libvirt_disk_files[i] = rl->files[i];
		m->so.libvirt_disk_sizes[i] = info.capacity;
		m->so.n_libvirt_disks = i + 1;
	}
	r = 0;
out:
	free(xml);
	return r;
}

/* libvirt's live p2p migration to dest_uri with QEMU's stream through our loopback. */
static int libvirt_migrate(struct relay *rl, char *err, size_t errlen)
{
	const struct domain_move *m = rl->m;
	virTypedParameterPtr params = NULL;
	int n = 0, max = 0, r = -1;
	unsigned long flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER;
	char uri[64];

	snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%u", m->qemu_port);
	if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_URI, uri) < 0 ||
	    virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_LISTEN_ADDRESS,
				    "127.0.0.1") < 0)
		goto out;
	for (unsigned i = 0; i < m->n_disks; i++)
		if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_MIGRATE_DISKS,
					    m->disks[i]) < 0)
			goto out;
	if (m->n_disks) {
		snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%u", m->qemu_port + 1);
		if (virTypedParamsAddString(&params, &n, &max, VIR_MIGRATE_PARAM_DISKS_URI,
					    uri) < 0)
			goto out;
		flags |= VIR_MIGRATE_NON_SHARED_DISK;
	}
	if (m->persistent)
		flags |= VIR_MIGRATE_PERSIST_DEST;
	if (m->undefine_source)
		flags |= VIR_MIGRATE_UNDEFINE_SOURCE;
	/* libvirt takes the maximum downtime as a domain setting, before the job. */
	if (m->downtime_ms && virDomainMigrateSetMaxDowntime(rl->dom, m->downtime_ms, 0) < 0)
		goto out;
	r = virDomainMigrateToURI3(rl->dom, m->dest_uri, params, n, (unsigned)flags);
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
	char err[512] = "";
	int r = libvirt_migrate(rl, err, sizeof(err));

	if (r < 0)
		log_error("libvirt's migration failed: %s", err);
	pthread_mutex_lock(&rl->lock);
	rl->migrate_rc = r;
	snprintf(rl->migrate_err, sizeof(rl->migrate_err), "%s", err);
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
 * *hung tells the caller not to wait for it or touch its connection.
 */
static int run(struct relay *rl, bool *hung)
{
	struct timespec until;
	bool started = false;
	int r = -1;

	if (pthread_create(&rl->th, NULL, relay_thread, rl)) {
		log_error("cannot start the sender");
		return -1;
	}
	pthread_mutex_lock(&rl->lock);
	while (!rl->ready && !rl->ended)
		pthread_cond_wait(&rl->cond, &rl->lock);
	pthread_mutex_unlock(&rl->lock);
	if (rl->ready) {
		log_info("libvirt migrates %s to %s, its stream through 127.0.0.1:%u",
			 rl->m->domain, rl->m->dest_uri, rl->m->qemu_port);
		started = pthread_create(&rl->libvirt_th, NULL, libvirt_thread, rl) == 0;
		if (!started) {
			log_error("cannot start libvirt's migration: no thread");
			rl->verdict = 0;
		}
	}
	pthread_join(rl->th, NULL);
	if (!started)
		return -1;
	/* The verdict came, or the sender gave up on it: a moment more, then no more. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 5;
	pthread_mutex_lock(&rl->lock);
	while (!rl->migrate_returned &&
	       pthread_cond_timedwait(&rl->cond, &rl->lock, &until) == 0)
		;
	*hung = !rl->migrate_returned;
	r = rl->migrate_rc;
	pthread_mutex_unlock(&rl->lock);
	if (*hung) {
		log_error("libvirt's migration call has not returned; tsubame goes on without it");
		pthread_detach(rl->libvirt_th);
		return -1;
	}
	pthread_join(rl->libvirt_th, NULL);
	return r;
}

/* The domain by name or UUID on conn, or NULL. */
static virDomainPtr lookup(virConnectPtr conn, const char *domain)
{
	virDomainPtr dom = virDomainLookupByName(conn, domain);

	return dom ? dom : virDomainLookupByUUIDString(conn, domain);
}

int domain_move_run(struct domain_move *m, enum proxy_outcome *oc, json_t **ret_report,
		    bool *hung, char *why, size_t whylen)
{
	struct relay *rl = calloc(1, sizeof(*rl));
	struct domain_targets targets = { 0 };
	char uuid[VIR_UUID_STRING_BUFLEN], listen[32], nbd_listen[32];
	virConnectPtr conn = NULL;
	bool ran = false;
	int r = -1;

	*oc = PROXY_FAILED;
	*ret_report = NULL;
	*hung = false;
	why[0] = '\0';
	if (!rl) {
		snprintf(why, whylen, "out of memory");
		return -1;
	}
	rl->m = m;
	rl->verdict = -1;
	pthread_mutex_init(&rl->lock, NULL);
	pthread_cond_init(&rl->cond, NULL);
	pthread_once(&events_once, events_init);
	conn = virConnectOpen(m->connect_uri);
	if (!conn) {
		snprintf(why, whylen, "cannot connect to libvirt%s%s: %s",
			 m->connect_uri ? " at " : "", m->connect_uri ? m->connect_uri : "",
			 libvirt_error());
		goto out;
	}
	rl->dom = lookup(conn, m->domain);
	if (!rl->dom) {
		snprintf(why, whylen, "no domain '%s' here", m->domain);
		goto out;
	}
	if (virDomainIsActive(rl->dom) != 1 || virDomainGetUUIDString(rl->dom, uuid) < 0) {
		snprintf(why, whylen, "domain '%s' is not running", m->domain);
		goto out;
	}
	if (find_disks(rl, why, whylen) < 0)
		goto out;
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", m->qemu_port);
	snprintf(nbd_listen, sizeof(nbd_listen), "127.0.0.1:%u", m->qemu_port + 1);
	m->so.qemu_listen = listen;
	m->so.nbd_listen = nbd_listen;
	if (!m->so.vm_id)
		m->so.vm_id = uuid;	/* the same on every site; a group names its own */
	m->so.no_disks = !m->n_disks;
	m->so.mode = PROXY_MODE_PRECOPY;
	m->so.connections = 1;
	m->so.libvirt_ready = relay_ready;
	m->so.libvirt_verdict = relay_verdict;
	m->so.libvirt_abort = relay_abort;
	m->so.libvirt_opaque = rl;
	domain_targets_prepare(&targets, m->dest_uri, rl->files, m->n_disks);
	events_start(conn, rl);
	ran = true;
	r = run(rl, hung);
	*oc = rl->outcome;
	if (*hung)
		goto hung;	/* its call still uses conn and dom: leave them */
	events_end(conn, rl);
	domain_targets_release(&targets);
	if (rl->report && rl->job_done)
		json_object_set(rl->report, "libvirt_job", rl->job);
	if (rl->job_done && json_object_get(rl->job, VIR_DOMAIN_JOB_DOWNTIME))
		log_info("libvirt: downtime %lld ms, %lld ms in all", (long long)json_integer_value(
			json_object_get(rl->job, VIR_DOMAIN_JOB_DOWNTIME)), (long long)json_integer_value(
			json_object_get(rl->job, VIR_DOMAIN_JOB_TIME_ELAPSED)));
	if (r < 0) {
		const char *e = json_string_value(json_object_get(rl->report, "error"));

		snprintf(why, whylen, "%s", rl->migrate_err[0] ? rl->migrate_err : e ? e :
			 "tsubame's side failed before libvirt's migration began");
	}
out:
	if (!ran)
		log_error("%s", why);
	*ret_report = rl->report;
	rl->report = NULL;
	json_decref(rl->job);
	for (unsigned i = 0; i < DOMAIN_MAX_DISKS; i++) {
		free(rl->exports[i]);
		free(rl->files[i]);
	}
	m->so.libvirt_opaque = NULL;
	if (rl->dom)
		virDomainFree(rl->dom);
	if (conn)
		virConnectClose(conn);
	pthread_mutex_destroy(&rl->lock);
	pthread_cond_destroy(&rl->cond);
	free(rl);
	return r < 0 ? -1 : 0;
hung:
	/* The relay, its connection and the sender's options stay with the call. */
	*ret_report = json_deep_copy(rl->report);
	snprintf(why, whylen, "libvirt's migration call has not returned");
	return -1;
}

int domain_runs_at(const char *domain, const char *uri, char *why, size_t whylen)
{
	virConnectPtr conn;
	virDomainPtr dom;
	int active;

	pthread_once(&events_once, events_init);
	conn = virConnectOpen(uri);
	if (!conn) {
		snprintf(why, whylen, "cannot connect to libvirt%s%s: %s", uri ? " at " : "",
			 uri ? uri : "", libvirt_error());
		return -1;
	}
	dom = lookup(conn, domain);
	active = dom ? virDomainIsActive(dom) : 0;
	if (dom)
		virDomainFree(dom);
	virConnectClose(conn);
	if (active < 0)
		snprintf(why, whylen, "libvirt%s%s cannot tell whether '%s' runs: %s",
			 uri ? " at " : "", uri ? uri : "", domain, libvirt_error());
	return active < 0 ? -1 : active;
}

int domain_where(const char *domain, const char *connect_uri, const char *dest_uri,
		 char *why, size_t whylen)
{
	int here = domain_runs_at(domain, connect_uri, why, whylen), there;

	if (here != 0)
		return here;	/* runs here, or we cannot tell */
	there = domain_runs_at(domain, dest_uri, why, whylen);
	if (there == 1) {
		snprintf(why, whylen, "moved earlier: the domain runs at %s", dest_uri);
		return 0;
	}
	snprintf(why, whylen, "domain '%s' is not running here%s", domain,
		 there < 0 ? ", and its destination's libvirt cannot be asked" :
			     " nor at its destination");
	return -1;
}
