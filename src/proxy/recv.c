/*
 * The destination side: accepts the sender's connection, hands QEMU one
 * end of a socketpair for `migrate-incoming fd:`, starts the WAN thread
 * that rebuilds QEMU's stream (recv_rebuild.c) and the return thread that
 * carries QEMU's return path back, lets the main thread settle the
 * switchover (recv_switchover.c, docs/protocol.md "Switchover") and ends:
 * the arrival image kept or not, the report (recv_report.c). Also the
 * fuzzing entry point of the receiver's frame handling.
 */
#include "proxy/receiver.h"

#include "proxy/content.h"
#include "proxy/pagecache.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "disk/disk.h"
#include "qmp/qmp.h"
#include "store/store.h"
#include "wire/accept.h"
#include "wire/codec.h"
#include "wire/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Pages fetched by NEED kept at once (beyond the mirrored cache). */
#define FETCHED_PAGES 4096

void recv_fail(struct receiver *rc, enum proxy_outcome oc, const char *fmt, ...)
{
	va_list ap;
	int expected = 0;

	if (!atomic_compare_exchange_strong(&rc->failed, &expected, 1))
		return;
	rc->outcome = oc;
	va_start(ap, fmt);
	vsnprintf(rc->error, sizeof(rc->error), fmt, ap);
	va_end(ap);
	/*
	 * The destination QEMU sees its stream end early, fails the incoming
	 * migration and never runs a half-loaded guest.
	 */
	if (rc->qfd >= 0)
		shutdown(rc->qfd, SHUT_RDWR);
}

int recv_send_locked(struct receiver *rc, const struct tsb_buf *frame)
{
	if (!rc->conn)
		return 0; /* fuzzing: nobody to tell */
	int r;

	pthread_mutex_lock(&rc->send_lock);
	r = wire_conn_write(rc->conn, frame->data, frame->len);
	pthread_mutex_unlock(&rc->send_lock);
	return r;
}

static void *wan_thread(void *arg)
{
	struct receiver *rc = arg;

	recv_process_frames(rc);
	rc->wan_ended = true;
	return NULL;
}

static int on_rp_msg(void *opaque, const struct qs_rp_msg *m)
{
	struct receiver *rc = opaque;

	if (m->type == QS_RP_SHUT)
		rc->shut_parsed = true;
	if ((m->type == QS_RP_REQ_PAGES || m->type == QS_RP_REQ_PAGES_ID) && m->block) {
		pthread_mutex_lock(&rc->faults_lock);
		pagereq_add(&rc->faults, m->block, m->offset, m->length, tsb_now_ns(), 0);
		pthread_mutex_unlock(&rc->faults_lock);
	}
	return 0;
}

/*
 * QEMU's return path -> RETURN frames, unbatched (postcopy faults wait on
 * them). The bytes are also parsed, to know when QEMU's SHUT has gone out.
 */
static void *return_thread(void *arg)
{
	static const struct qs_rp_handlers h = { .msg = on_rp_msg };
	struct receiver *rc = arg;
	struct qs_rp_parser *rp = qs_rp_parser_new(&h, rc);
	bool parsing = rp != NULL;
	uint8_t buf[16384];
	struct tsb_buf b;
	ssize_t n;
	int r;

	tsb_buf_init(&b);
	for (;;) {
		n = read(rc->qfd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		/* Only a hint for our shutdown order: relay even what we cannot parse. */
		if (parsing && qs_rp_parser_feed(rp, buf, n) < 0)
			parsing = false;
		tsb_buf_reset(&b);
		r = wire_encode_run(&b, WIRE_MSG_RETURN, buf, n, NULL);
		if (r == 0)
			r = recv_send_locked(rc, &b);
		if (r < 0) {
			/* Committed early, a lost link is the frame thread's to judge. */
			if (!rc->prepared && rc->decision != WIRE_DECIDE_COMMIT)
				recv_fail(rc, proxy_outcome_of_errno(r),
					  "sending QEMU's return path: %s", strerror(-r));
			break;
		}
		if (rc->shut_parsed)
			rc->rp_shut = true;
	}
	tsb_buf_fini(&b);
	qs_rp_parser_free(rp);
	if (n == 0)
		rc->qemu_closed = true;
	rc->rp_shut = true;
	rc->rp_done = true;
	return NULL;
}

/* How much RAM a stream for the destination VM may describe (BLOCKS cap). */
static uint64_t ram_limit_of(struct qmp *q)
{
	json_t *m = NULL;
	uint64_t base = 0, plugged = 0;

	if (qmp_execute(q, "query-memory-size-summary", NULL, &m, NULL, 0) == 0) {
		base = (uint64_t)json_integer_value(json_object_get(m, "base-memory"));
		plugged = (uint64_t)json_integer_value(json_object_get(m, "plugged-memory"));
	}
	json_decref(m);
	if (!base || base > (1ull << 50) || plugged > (1ull << 50))
		return 0; /* unknown: the destination QEMU checks the stream itself */
	return base + plugged + PROXY_DEVICE_RAM_MAX;
}

static int setup_destination(struct qmp *q, bool postcopy, char *err, size_t errlen)
{
	json_t *st = NULL, *args;
	const char *status;
	int r;

	r = qmp_execute(q, "query-status", NULL, &st, err, errlen);
	if (r < 0)
		return r;
	status = json_string_value(json_object_get(st, "status"));
	if (!status || strcmp(status, "inmigrate")) {
		snprintf(err, errlen, "the destination QEMU is '%s'; start it with "
			 "-incoming defer", status ? status : "?");
		json_decref(st);
		return -EPROTO;
	}
	json_decref(st);
	/*
	 * 'stop' while incoming turns QEMU's autostart off: the guest stays
	 * paused after loading until the sender's commit (docs/protocol.md).
	 */
	r = qmp_execute(q, "stop", NULL, NULL, err, errlen);
	if (r < 0)
		return r;
	args = json_pack("{s:[{s:s, s:b}, {s:s, s:b}]}", "capabilities",
			 "capability", "events", "state", 1,
			 "capability", "postcopy-ram", "state", postcopy);
	r = qmp_execute(q, "migrate-set-capabilities", args, NULL, err, errlen);
	json_decref(args);
	return r;
}

/*
 * Who is arriving: the VM, its tenant and the sender's image of it. Opens
 * the tenant's part of our store.
 */
static int take_sender_identity(struct receiver *rc, const struct wire_hello *peer,
				char *err, size_t errlen)
{
	const struct proxy_recv_options *o = rc->o;
	int r;

	snprintf(rc->vm, sizeof(rc->vm), "%.*s", (int)peer->vm.len, peer->vm.p);
	snprintf(rc->peer_site, sizeof(rc->peer_site), "%.*s", (int)peer->site.len,
		 peer->site.p);
	snprintf(rc->peer_image, sizeof(rc->peer_image), "%.*s", (int)peer->migration.len,
		 peer->migration.p);
	rc->peer_gen = peer->store_gen;
	if (peer->tenant.len)
		snprintf(rc->tenant, sizeof(rc->tenant), "%.*s", (int)peer->tenant.len,
			 peer->tenant.p);
	/* Another tenant than ours, or than the credential's, was refused by want_sender(). */
	if (!o->c.store_dir || !rc->vm[0])
		return 0; /* a sender without a store: nothing to record under */
	if (!rc->tenant[0])
		content_tenant(o->c.tenant, rc->vm, rc->tenant);
	/* A standby keeps the round under the sender's id: its image of the round has it too. */
	if (o->standby && store_id_valid(rc->peer_image) &&
	    strlen(rc->peer_image) < sizeof(rc->image_id))
		memcpy(rc->image_id, rc->peer_image, strlen(rc->peer_image) + 1);
	else
		content_new_id(rc->image_id);
	r = content_open_store(&o->c, rc->tenant, &rc->rb.store, err, errlen);
	rc->arrival.store = rc->rb.store;
	return r;
}

/*
 * May this credential migrate the VM of this HELLO? A key or certificate
 * bound to tenants (wire/tls.h) acts only for them; the tenant is the
 * sender's, or else ours, or else the VM's own (content_tenant()).
 */
static bool credential_allows(const struct wire_conn *c, const struct wire_hello *peer,
			      const char *our_tenant, char *why, size_t len)
{
	char vm[WIRE_MAX_ID + 1], tenant[WIRE_MAX_ID + 1];

	if (peer->tenant.len) {
		snprintf(tenant, sizeof(tenant), "%.*s", (int)peer->tenant.len, peer->tenant.p);
	} else {
		snprintf(vm, sizeof(vm), "%.*s", (int)peer->vm.len, peer->vm.p);
		content_tenant(our_tenant, vm, tenant);
	}
	if (wire_conn_peer_may_act_for(c, tenant, strlen(tenant)))
		return true;
	snprintf(why, len, "%s may act for tenant(s) %s only; the sender migrates a VM of "
		 "tenant '%s'", wire_conn_peer(c), wire_conn_peer_tenants(c), tenant);
	return false;
}

/* Is this authenticated peer a sender we take? (wire/accept.h) */
static bool want_sender(const struct wire_conn *c, const struct wire_hello *peer, void *opaque,
			char *why, size_t len)
{
	struct receiver *rc = opaque;
	const char *tenant = rc->o->c.tenant;

	if (peer->caps & WIRE_CAP_RESOLVE) {
		snprintf(why, len, "no migration %.*s waits for its decision here",
			 (int)peer->migration.len, peer->migration.p);
		return false;
	}
	if (!(peer->caps & WIRE_CAP_LIBVIRT) != !rc->o->qemu_connect) {
		snprintf(why, len, "%s", rc->o->qemu_connect ?
			 "this receiver serves a libvirt migration ('tsubame migrate'); the "
			 "sender drives its QEMU itself ('tsubame send')" :
			 "the sender carries a libvirt migration ('tsubame migrate'); this "
			 "receiver drives its QEMU itself (start it with --qemu-connect)");
		return false;
	}
	if (!(peer->caps & WIRE_CAP_STANDBY) != !rc->o->standby) {
		snprintf(why, len, "%s", rc->o->standby ?
			 "this is a standby ('tsubame recv --standby'): it keeps sync rounds "
			 "('tsubame sync') in its store and runs no VM; evacuate to a "
			 "'tsubame recv' with a destination QEMU" :
			 "the sender runs a sync round ('tsubame sync'): it goes to a standby "
			 "('tsubame recv --standby'), not to a receiver that runs the VM");
		return false;
	}
	if (rc->o->standby && (peer->caps & WIRE_CAP_POSTCOPY)) {
		snprintf(why, len, "a standby takes memory by precopy only: no postcopy");
		return false;
	}
	if (rc->o->standby && !peer->vm.len) {
		snprintf(why, len, "a standby keeps rounds per VM: the sender names none");
		return false;
	}
	if (!(peer->caps & WIRE_CAP_COMMIT) || !peer->migration.len) {
		snprintf(why, len, "the sender does not commit its switchover (an older "
			 "tsubame?): refused, so that the guest can never run on both sides");
		return false;
	}
	if (rc->o->vm_id && (peer->vm.len != strlen(rc->o->vm_id) ||
			     memcmp(peer->vm.p, rc->o->vm_id, peer->vm.len))) {
		snprintf(why, len, "this receiver waits for VM '%s'; the sender migrates VM "
			 "'%.*s'", rc->o->vm_id, (int)peer->vm.len, peer->vm.p);
		return false;
	}
	if (tenant && peer->tenant.len && (peer->tenant.len != strlen(tenant) ||
					   memcmp(peer->tenant.p, tenant, peer->tenant.len))) {
		/* Content never crosses tenants: refuse rather than guess. */
		snprintf(why, len, "tenant mismatch: the sender migrates a VM of tenant '%.*s', "
			 "this receiver serves tenant '%s'", (int)peer->tenant.len,
			 peer->tenant.p, tenant);
		return false;
	}
	return credential_allows(c, peer, tenant, why, len);
}

/* Names the migration and takes its lock; the record is written at PREPARED. */
static int record_begin(struct receiver *rc, const struct wire_hello *peer, char *err,
			size_t errlen)
{
	const struct proxy_recv_options *o = rc->o;
	struct mig_record *m = &rc->rec;

	snprintf(m->id, sizeof(m->id), "%.*s", (int)peer->migration.len, peer->migration.p);
	snprintf(m->side, sizeof(m->side), "recv");
	snprintf(m->peer, sizeof(m->peer), "%s", o->listen);
	snprintf(m->qmp, sizeof(m->qmp), "%s", o->c.qmp_path);
	snprintf(m->vm, sizeof(m->vm), "%s", rc->vm);
	if (strchr(m->id, '/') || m->id[0] == '.') {
		snprintf(err, errlen, "bad migration id '%s'", m->id);
		return -EINVAL;
	}
	rc->lock_fd = record_lock(o->c.state_dir, m->id, "recv");
	if (rc->lock_fd < 0) {
		snprintf(err, errlen, "cannot lock the record of migration %s in %s: %s",
			 m->id, o->c.state_dir, rc->lock_fd == -EBUSY ? "another process holds it"
			 : strerror(-rc->lock_fd));
		return rc->lock_fd;
	}
	return 0;
}

/* Frees what the receiver owns (not its connection, QEMU or TLS). */
static void receiver_free(struct receiver *rc)
{
	wire_backlog_fini(&rc->backlog);
	qs_writer_free(rc->writer);
	if (rc->qfd >= 0)
		close(rc->qfd);
	pagecache_free(rc->rb.cache);
	pagecache_free(rc->rb.fetched);
	image_rec_fini(&rc->arrival);
	store_image_free(rc->rb.base);
	free(rc->rb.run_buf);
	for (unsigned i = 0; i < WIRE_MAX_BLOCKS; i++)
		free(rc->blocks[i]);
	if (rc->rb.store)
		store_close(rc->rb.store);
	diskindex_free(rc->rb.disks);
	wire_zstd_free(rc->z);
	tsb_buf_fini(&rc->scratch);
	tsb_buf_fini(&rc->copy);
	if (rc->lock_fd >= 0)
		close(rc->lock_fd);
	pthread_mutex_destroy(&rc->send_lock);
	pthread_mutex_destroy(&rc->faults_lock);
	free(rc->fault_ms);
	free(rc);
}

/* A receiver with its content caches; NULL when out of memory. */
static struct receiver *receiver_new(const struct proxy_recv_options *o, uint64_t cache_pages,
				     uint64_t fetched_pages)
{
	struct receiver *rc = calloc(1, sizeof(*rc));

	if (!rc)
		return NULL;
	rc->o = o;
	rc->qfd = -1;
	rc->lock_fd = -1;
	image_rec_init(&rc->arrival, NULL); /* its store comes with the sender's identity */
	wire_backlog_init(&rc->backlog);
	pthread_mutex_init(&rc->send_lock, NULL);
	pthread_mutex_init(&rc->faults_lock, NULL);
	tsb_buf_init(&rc->scratch);
	tsb_buf_init(&rc->copy);
	rc->rb.cache = pagecache_new(cache_pages, WIRE_PAGE_SIZE);
	rc->rb.fetched = pagecache_new(fetched_pages, WIRE_PAGE_SIZE);
	rc->z = wire_zstd_new(1);
	if (!rc->rb.cache || !rc->rb.fetched || !rc->z) {
		receiver_free(rc);
		return NULL;
	}
	return rc;
}

/* What one run of proxy_recv() holds besides the receiver itself. */
struct recv_run {
	const struct proxy_recv_options *o;
	struct wire_tls *tls;
	struct qmp *q;
	int lfd;
	struct wire_hello peer;		/* the sender's HELLO (strings valid until next read) */
	bool incoming;			/* QEMU was told migrate-incoming */
	volatile int sig;
	char site[33];			/* our store's site id, or "" */
	uint64_t start_ns, resume_ns;
};

/* Everything checked before anyone may connect: TLS, QEMU, disks, the port. */
static int prepare(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;
	char host[256], port[32], err[512] = "";
	int r;

	if (tsb_split_hostport(o->listen, host, sizeof(host), port, sizeof(port)) < 0) {
		recv_fail(rc, PROXY_FAILED, "bad --listen '%s': expected HOST:PORT", o->listen);
		return -1;
	}
	r = proxy_tls_setup(&o->c, WIRE_TLS_SERVER, &run->tls, err, sizeof(err));
	if (r < 0) {
		recv_fail(rc, PROXY_AUTH, "%s", err);
		return -1;
	}
	/* Check QEMU before we accept anyone (libvirt's comes later: it prepares it). */
	r = o->qemu_connect || o->standby ? 0 : qmp_open(o->c.qmp_path, 10000, &run->q);
	if (r < 0) {
		recv_fail(rc, PROXY_FAILED, "cannot reach the destination QEMU at %s: %s",
			  o->c.qmp_path, strerror(-r));
		return -1;
	}
	rc->ram_limit = run->q ? ram_limit_of(run->q) : 0;
	if (o->standby)
		rc->ram_limit = o->standby_max_ram ? o->standby_max_ram : PROXY_STANDBY_MAX_RAM;
	/* Disk images to rebuild guest page-cache pages from: indexed up front. */
	r = content_index_disks(run->q, o, &rc->rb.disks, err, sizeof(err));
	if (r < 0) {
		recv_fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	if (o->c.store_dir && store_dir_site_id(o->c.store_dir, run->site, err, sizeof(err)) < 0) {
		recv_fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	r = wire_tcp_listen(host, port, 128, &run->lfd);
	if (r < 0) {
		recv_fail(rc, PROXY_FAILED, "cannot listen on %s: %s", o->listen, strerror(-r));
		return -1;
	}
	return 0;
}

/* Waits for the sender we want (strangers are refused meanwhile) and names the migration. */
static int accept_sender(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_RECEIVER,
		.caps = WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK | WIRE_CAP_POSTCOPY |
			WIRE_CAP_STORE | WIRE_CAP_COMMIT | WIRE_CAP_LANES |
			(o->qemu_connect || o->standby ? 0 : WIRE_CAP_EARLY) |
			(o->live && o->c.store_dir ? WIRE_CAP_LIVE : 0) |
			(o->standby ? WIRE_CAP_STANDBY : 0),
		.site = o->c.store_dir ? run->site : "destination",
	};
	/* A stray, slow or refused client does not end us (wire/accept.h). */
	struct wire_accept_options ao = {
		.tls = run->tls, .lfd = run->lfd, .hello = &hello, .want = want_sender,
		.opaque = rc, .sig = &run->sig,
		.deadline_ns = o->c.timeout_ms ? run->start_ns + o->c.timeout_ms * 1000000 : 0,
	};
	char err[512] = "";
	int r;

	log_info("waiting for the sender on %s", o->listen);
	r = wire_accept_peer(&ao, &rc->conn, &run->peer, &rc->refused);
	if (r == -EINTR) {
		recv_fail(rc, PROXY_INTERRUPTED, "interrupted while waiting for the sender");
		return -1;
	}
	if (r == -ETIMEDOUT) {
		recv_fail(rc, PROXY_TIMEOUT, "no sender came within the timeout");
		return -1;
	}
	if (r < 0) {
		recv_fail(rc, PROXY_FAILED, "accepting the sender: %s", strerror(-r));
		return -1;
	}
	tsb_fault_point("handshake");
	rc->early_ok = (hello.caps & run->peer.caps & WIRE_CAP_EARLY) != 0;
	rc->live_ok = (hello.caps & run->peer.caps & WIRE_CAP_LIVE) != 0;
	/* Its disk channel and its decision must come with the same credential. */
	snprintf(rc->credential, sizeof(rc->credential), "%s", wire_conn_peer(rc->conn));
	r = take_sender_identity(rc, &run->peer, err, sizeof(err));
	if (r < 0) {
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_REFUSED, err);
		recv_fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	r = record_begin(rc, &run->peer, err, sizeof(err));
	if (r < 0) {
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_INTERNAL, err);
		recv_fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	return 0;
}

/* The summary of what we hold, and the disk channel (on the same port). */
static int open_channels(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;
	uint64_t caps = run->peer.caps; /* run->peer's strings end with the next read */
	char err[512] = "";
	int r;

	/* The tenant is known now: its disk images on this host can serve too. */
	content_index_store_disks(rc->rb.store, &rc->rb.disks);
	if (caps & WIRE_CAP_STORE) {
		struct tsb_buf b;

		tsb_buf_init(&b);
		r = content_encode_summary(&b, rc->rb.store, rc->rb.disks, rc->vm,
					   &rc->summary_bytes);
		if (r == 0)
			r = wire_conn_write(rc->conn, b.data, b.len);
		tsb_buf_fini(&b);
		if (r < 0) {
			recv_fail(rc, proxy_outcome_of_errno(r), "sending the summary: %s",
				  strerror(-r));
			return -1;
		}
	}
	/* Its other connections come first, then its disk channel, to the same port. */
	if ((caps & WIRE_CAP_LANES) && recv_take_lanes(rc, run->tls, run->lfd, &run->sig) < 0)
		return -1;
	if (caps & WIRE_CAP_DISK) {
		struct disk_recv_options dro = {
			.tls = run->tls, .listen_fd = run->lfd, .index = rc->rb.disks,
			.stall_ms = o->c.stall_ms, .migration = rc->rec.id,
			.credential = rc->credential,
			.nbd_connect = o->qemu_connect ? o->nbd_connect : NULL,
		};
		char standby_dir[3000];

		/* A standby keeps the VM's disks as images of its own, in the tenant's store. */
		if (o->standby) {
			r = rc->rb.store ? store_standby_dir(rc->rb.store, rc->vm, standby_dir,
							     sizeof(standby_dir), err, sizeof(err))
					 : -EINVAL;
			if (r < 0) {
				if (!rc->rb.store)
					snprintf(err, sizeof(err), "a standby keeps disks in its store");
				wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_INTERNAL, err);
				recv_fail(rc, PROXY_FAILED, "disks: %s", err);
				return -1;
			}
			dro.standby_dir = standby_dir;
		}
		run->lfd = -1;
		r = disk_recv_start(run->q, &dro, &rc->rb.disk, err, sizeof(err));
		if (r < 0) {
			wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, err);
			recv_fail(rc, PROXY_FAILED, "disks: %s", err);
			return -1;
		}
	}
	if (run->lfd >= 0) {
		close(run->lfd);
		run->lfd = -1;
	}
	if (o->c.stall_ms)
		wire_conn_set_timeout(rc->conn, o->c.stall_ms);
	return 0;
}

static int start_threads(struct receiver *rc, struct recv_run *run);

/*
 * libvirt's destination QEMU listens on --qemu-connect once libvirt has
 * prepared it, which is after the sender came (its QEMU starts only then):
 * dial until it answers, the sender gives up, or the time is out.
 */
static int connect_libvirt_qemu(struct receiver *rc, struct recv_run *run, char *err,
				size_t errlen)
{
	const struct proxy_recv_options *o = run->o;
	uint64_t t0 = tsb_now_ns();
	uint64_t limit = (o->c.timeout_ms ? o->c.timeout_ms : RECV_LIBVIRT_QEMU_WAIT_MS) * 1000000;
	char host[256], port[32], why[256] = "";
	int r;

	if (tsb_split_hostport(o->qemu_connect, host, sizeof(host), port, sizeof(port)) < 0) {
		snprintf(err, errlen, "bad --qemu-connect '%s': expected HOST:PORT",
			 o->qemu_connect);
		return -EINVAL;
	}
	for (;;) {
		r = wire_tcp_connect(host, port, 1000, &rc->qfd, why, sizeof(why));
		if (r == 0) {
			log_info("connected to the destination QEMU at %s", o->qemu_connect);
			return 0;
		}
		if (run->sig)
			return -EINTR;
		if (tsb_now_ns() - t0 > limit) {
			snprintf(err, errlen, "no QEMU listened on %s within %llu s (%s)",
				 o->qemu_connect, (unsigned long long)(limit / 1000000000), why);
			return -ETIMEDOUT;
		}
		usleep(100000);
	}
}

/* QEMU takes the rebuilt stream; the WAN and return-path threads start. */
static int start_incoming(struct receiver *rc, struct recv_run *run)
{
	char err[512] = "";
	json_t *args;
	int r;

	if (run->o->standby) {
		/* No QEMU: the rebuilt stream has nowhere to go; the store keeps the pages. */
		rc->qfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
		if (rc->qfd < 0) {
			recv_fail(rc, PROXY_FAILED, "/dev/null: %s", strerror(errno));
			return -1;
		}
		return start_threads(rc, run);
	}
	if (run->o->qemu_connect) {
		r = connect_libvirt_qemu(rc, run, err, sizeof(err));
		if (r < 0) {
			wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, err);
			recv_fail(rc, r == -EINTR ? PROXY_INTERRUPTED : PROXY_FAILED,
				  "destination QEMU: %s", err);
			return -1;
		}
		return start_threads(rc, run);
	}
	r = setup_destination(run->q, run->peer.caps & WIRE_CAP_POSTCOPY, err, sizeof(err));
	if (r == 0)
		r = proxy_qemu_socket(run->q, &rc->qfd, err, sizeof(err));
	if (r == 0) {
		args = json_pack("{s:s}", "uri", "fd:" PROXY_FDNAME);
		r = qmp_execute(run->q, "migrate-incoming", args, NULL, err, sizeof(err));
		json_decref(args);
		run->incoming = r == 0;
	}
	if (r < 0) {
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, err);
		recv_fail(rc, PROXY_FAILED, "destination QEMU: %s", err);
		return -1;
	}
	return start_threads(rc, run);
}

/* The WAN and return-path threads, writing into and reading from QEMU's socket. */
static int start_threads(struct receiver *rc, struct recv_run *run)
{
	rc->writer = qs_writer_new(WIRE_PAGE_SIZE, recv_to_qemu, rc);
	if (!rc->writer) {
		recv_fail(rc, PROXY_FAILED, "out of memory");
		return -1;
	}
	if (tsb_thread_create(&rc->th_wan, wan_thread, rc)) {
		recv_fail(rc, PROXY_FAILED, "cannot start threads");
		return -1;
	}
	/* A standby has no QEMU and so no return path. */
	if (!run->o->standby && tsb_thread_create(&rc->th_ret, return_thread, rc)) {
		recv_fail(rc, PROXY_FAILED, "cannot start threads");
		shutdown(rc->qfd, SHUT_RDWR);
		wire_conn_abort(rc->conn);
		pthread_join(rc->th_wan, NULL);
		return -1;
	}
	rc->threads = true;
	return 0;
}

void recv_stop_threads(struct receiver *rc)
{
	if (!rc->threads)
		return;
	wire_conn_abort(rc->conn);
	shutdown(rc->qfd, SHUT_RDWR);
	pthread_join(rc->th_wan, NULL);
	if (!rc->o->standby)
		pthread_join(rc->th_ret, NULL);
	rc->threads = false;
}

/* Stops the threads, keeps or discards what arrived, reports. */
static enum proxy_outcome finish(struct receiver *rc, struct recv_run *run,
				 json_t **ret_report)
{
	enum proxy_outcome oc;
	char err[512] = "";

	if (rc->failed && rc->conn && rc->outcome != PROXY_LINK && !rc->prepared &&
	    !rc->error_sent && !rc->decision) {
		pthread_mutex_lock(&rc->send_lock);
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, rc->error);
		pthread_mutex_unlock(&rc->send_lock);
	}
	recv_stop_threads(rc);
	if (rc->failed && run->q && run->incoming && rc->outcome != PROXY_IN_DOUBT &&
	    !rc->running_ns) {
		/* Make sure nothing half-loaded ever runs here. */
		(void)qmp_execute(run->q, "quit", NULL, NULL, NULL, 0);
	}
	oc = rc->failed ? rc->outcome : PROXY_OK;
	/* The arrival manifest (what came, from where): for the way back. */
	if (oc == PROXY_OK && !rc->o->standby)
		image_rec_commit(&rc->arrival, "arrival");
	if (oc == PROXY_OK && rc->rb.store) {
		/* The arrived disks: what the tenant's next VMs here may share. */
		const char *images[DISK_MAX];

		content_note_disks(rc->rb.store, images,
				   disk_recv_images(rc->rb.disk, images, DISK_MAX));
	}
	if (ret_report)
		*ret_report = recv_make_report(rc, run->start_ns, run->resume_ns);
	/* Disks: exports stopped; targets stay marked unless all went well. */
	if (disk_recv_finish(rc->rb.disk, run->q, oc == PROXY_OK || oc == PROXY_IN_DOUBT,
			     ret_report ? *ret_report : NULL, err, sizeof(err)) < 0 &&
	    oc == PROXY_OK) {
		recv_fail(rc, PROXY_FAILED, "disks: %s", err);
		oc = PROXY_FAILED;
	}
	if (rc->failed)
		log_error("%s", rc->error);
	/* Nothing recorded (a failure before PREPARED, a standby's round): nothing stays. */
	if (rc->lock_fd >= 0)
		record_release(rc->o->c.state_dir, &rc->rec);
	if (run->lfd >= 0)
		close(run->lfd);
	qmp_close(run->q);
	recv_lanes_free(rc);
	wire_conn_free(rc->conn);
	wire_tls_free(run->tls);
	return oc;
}

/* Until the guest runs here, or it failed and was discarded. */
static void receive_vm(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;

	/* Watch the destination QEMU until it has loaded the guest, paused. */
	if (o->qemu_connect)
		recv_wait_loaded_libvirt(rc, &run->sig);
	else
		recv_wait_loaded(rc, run->q, &run->sig);
	rc->loaded_ns = rc->failed ? 0 : tsb_now_ns();
	if (!rc->failed)
		log_info("the destination QEMU has loaded the guest (paused)");
	if (rc->failed && rc->early_ok)
		recv_discard_loading(rc, run->q, run->tls, &run->sig);
	else if (!rc->failed && o->qemu_connect)
		recv_settle_libvirt(rc, &run->sig);
	else if (!rc->failed)
		recv_settle(rc, run->q, run->tls, &run->sig, &run->resume_ns);
}

/*
 * A standby's round (docs/standby.md): the WAN thread applies what comes
 * (every page into the store) until the sender's DONE; then the round's
 * image is kept, the older rounds' images of this VM dropped, and DONE
 * tells the sender, which keeps its own image of the round only then.
 */
static void recv_standby_round(struct receiver *rc, volatile int *sig)
{
	char err[256];
	int r;

	while (!rc->wan_ended && !*sig)
		usleep(10000);
	if (*sig && !rc->wan_ended)
		recv_fail(rc, PROXY_INTERRUPTED, "interrupted during the sync round");
	if (rc->failed)
		return;
	if (!rc->round_done) {
		recv_fail(rc, PROXY_LINK, "the sender ended the sync round without DONE");
		return;
	}
	/* The sender's DONE comes after its disks' DONE was answered: all applied by now. */
	if (disk_recv_wait_done(rc->rb.disk, 1000, sig, err, sizeof(err)) < 0) {
		recv_fail(rc, PROXY_FAILED, "the round's disks: %s", err);
		return;
	}
	if (image_rec_commit(&rc->arrival, "standby")) {
		content_prune_rounds(rc->rb.store, rc->vm, rc->peer_site, rc->image_id);
		snprintf(err, sizeof(err), "round %s kept", rc->image_id);
	} else {
		snprintf(err, sizeof(err), "round %s: its pages kept, its image not", rc->image_id);
	}
	pthread_mutex_lock(&rc->send_lock);
	r = wire_conn_send_status(rc->conn, WIRE_MSG_DONE, WIRE_CODE_OK, err);
	pthread_mutex_unlock(&rc->send_lock);
	if (r < 0)
		log_warn("the sender may not hear that the round was kept: %s; its next "
			 "round sends it again", strerror(-r));
	rc->loaded_ns = tsb_now_ns();
}

enum proxy_outcome proxy_recv(const struct proxy_recv_options *o, json_t **ret_report)
{
	struct recv_run run = { .o = o, .lfd = -1 };
	struct receiver *rc;
	enum proxy_outcome oc;
	uint64_t cache_pages;

	cache_pages = (o->c.cache_bytes ? o->c.cache_bytes : PROXY_CACHE_DEFAULT) / WIRE_PAGE_SIZE;
	rc = receiver_new(o, cache_pages, FETCHED_PAGES);
	if (!rc) {
		log_error("out of memory");
		return PROXY_FAILED;
	}
	proxy_catch_signals(&run.sig);
	run.start_ns = tsb_now_ns();
	if (prepare(rc, &run) == 0 && accept_sender(rc, &run) == 0 &&
	    (rc->accepted_ns = tsb_now_ns()) && open_channels(rc, &run) == 0 &&
	    start_incoming(rc, &run) == 0) {
		if (o->standby)
			recv_standby_round(rc, &run.sig);
		else
			receive_vm(rc, &run);
	}
	oc = finish(rc, &run, ret_report);
	proxy_release_signals(&run.sig);
	receiver_free(rc);
	return oc;
}

/*
 * Fuzzing (tests/fuzz/fuzz-recv.c): the receiver's frame handling, with
 * frames (header and payload, as on the wire) from data instead of a
 * sender, no store, and the rebuilt stream going to /dev/null. 0 when all
 * was taken, else the receiver refused.
 */
static int recv_fuzz_one(const struct proxy_recv_options *o, const uint8_t *data, size_t len)
{
	struct fuzz_input in = { .p = data, .len = len };
	struct receiver *rc = receiver_new(o, 64, 64);
	int failed;

	if (!rc)
		return -ENOMEM;
	rc->fuzz = &in;
	rc->early_ok = !o->standby;	/* an early DECISION is parsed too */
	rc->ram_limit = 1ull << 30;
	rc->qfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	rc->writer = qs_writer_new(WIRE_PAGE_SIZE, recv_to_qemu, rc);
	if (rc->qfd >= 0 && rc->writer)
		recv_process_frames(rc);
	failed = rc->failed;
	receiver_free(rc);
	return failed ? -EBADMSG : 0;
}

/* Each input goes to a receiver and to a standby (which ends at DONE, refuses DECISION). */
int proxy_recv_fuzz(const uint8_t *data, size_t len)
{
	static const struct proxy_recv_options plain, standby = { .standby = true };
	int r = recv_fuzz_one(&plain, data, len);

	(void)recv_fuzz_one(&standby, data, len);
	return r;
}
