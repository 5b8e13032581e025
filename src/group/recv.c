/*
 * The receiving side of a group (group.h): a receiver per VM, each on
 * the plan's "listen" address and taking only its own VM (vm_id), as
 * threads of this process that share the store's handle of their tenant.
 */
#include "group/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "domain/domain.h"

struct recv_vm {
	const struct group_vm *vm;
	const struct group_recv_options *go;
	struct proxy_recv_options o;
	pthread_t th;
	bool thread;
	enum proxy_outcome oc;
	bool earlier;		/* arrived in an earlier run */
	char why[256];
	json_t *report;
	uint64_t start_ns, end_ns;
	pthread_mutex_t *out_mu;
	char qemu_connect[32], nbd_connect[32];	/* a libvirt domain's QEMU */
};

/*
 * 1: its destination QEMU waits for the migration; 0: it runs the guest
 * already (an earlier run moved it); -1: neither (why says so).
 */
static int dest_state(const char *qmp_path, char *why, size_t whylen)
{
	char status[64];

	if (group_qemu_status(qmp_path, "destination", status, sizeof(status), why, whylen) < 0)
		return -1;
	if (!strcmp(status, "inmigrate"))
		return 1;
	if (!strcmp(status, "running")) {
		snprintf(why, whylen, "arrived earlier: its destination QEMU runs the guest");
		return 0;
	}
	snprintf(why, whylen, "its destination QEMU is %s, not waiting for a migration", status);
	return -1;
}

/*
 * A libvirt domain: libvirt starts its QEMU here when its migration
 * begins. 1: it does not run here yet; 0: it runs (an earlier run moved
 * it); -1: this host's libvirt cannot be asked (why).
 */
static int domain_state(const struct group_vm *vm, char *why, size_t whylen)
{
	int st = domain_runs_at(vm->domain, vm->dest_connect, why, whylen);

	if (st == 1)
		snprintf(why, whylen, "arrived earlier: the domain runs here");
	return st < 0 ? -1 : !st;
}

static void *recv_thread(void *arg)
{
	struct recv_vm *r = arg;
	int st;

	tsb_log_set_thread_tag(r->vm->name);
	st = r->vm->domain ? domain_state(r->vm, r->why, sizeof(r->why))
			   : dest_state(r->vm->dest_qmp, r->why, sizeof(r->why));
	r->oc = PROXY_FAILED;
	if (st > 0) {
		log_info("listening on %s", r->vm->listen);
		r->oc = proxy_recv(&r->o, &r->report);
		if (r->oc != PROXY_OK && r->report)
			snprintf(r->why, sizeof(r->why), "%s",
				 json_string_value(json_object_get(r->report, "error")) ?: "");
		if (r->oc == PROXY_OK)
			log_notice("migration completed");
		else
			log_error("not received (%s)%s%s", proxy_outcome_name(r->oc),
				  r->why[0] ? ": " : "", r->why);
	} else if (st == 0) {
		r->oc = PROXY_OK;
		r->earlier = true;
		log_notice("%s", r->why);
	} else {
		log_error("not received: %s", r->why);
	}
	r->end_ns = tsb_now_ns();
	if (r->go->json) {
		json_t *ev = json_pack("{s:s, s:s, s:s}", "event", "vm-end", "name", r->vm->name,
				       "outcome", r->earlier ? "arrived-earlier" :
						  proxy_outcome_name(r->oc));

		pthread_mutex_lock(r->out_mu);
		json_dumpf(ev, stdout, JSON_COMPACT);
		fputc('\n', stdout);
		fflush(stdout);
		pthread_mutex_unlock(r->out_mu);
		json_decref(ev);
	}
	return NULL;
}

static json_t *recv_report(struct recv_vm *v, size_t n, uint64_t start_ns)
{
	json_t *rep = json_object(), *vms = json_array();
	size_t arrived = 0, earlier = 0, failed = 0;

	for (size_t i = 0; i < n; i++) {
		json_t *o = json_pack("{s:s, s:s, s:I}", "name", v[i].vm->name, "outcome",
				      v[i].earlier ? "arrived-earlier" :
				      proxy_outcome_name(v[i].oc), "end_ms",
				      (json_int_t)((v[i].end_ns - start_ns) / 1000000));

		if (v[i].why[0])
			json_object_set_new(o, "why", json_string(v[i].why));
		if (v[i].report)
			json_object_set(o, "report", v[i].report);
		json_array_append_new(vms, o);
		earlier += v[i].earlier;
		arrived += v[i].oc == PROXY_OK && !v[i].earlier;
		failed += v[i].oc != PROXY_OK;
	}
	json_object_set_new(rep, "side", json_string("group-recv"));
	json_object_set_new(rep, "outcome", json_string(failed == 0 ? "ok" : failed == n ?
							"failed" : "partial"));
	json_object_set_new(rep, "total_time_ms",
			    json_integer((json_int_t)((tsb_now_ns() - start_ns) / 1000000)));
	json_object_set_new(rep, "totals", json_pack("{s:I, s:I, s:I, s:I}", "vms", (json_int_t)n,
		"arrived", (json_int_t)arrived, "arrived_earlier", (json_int_t)earlier,
		"failed", (json_int_t)failed));
	json_object_set_new(rep, "vms", vms);
	return rep;
}

int group_recv(const struct group_plan *plan, const struct group_recv_options *o,
	       json_t **ret_report)
{
	pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
	struct recv_vm *v = calloc(plan->n_vms, sizeof(*v));
	uint64_t start_ns = tsb_now_ns();
	size_t left = 0;

	*ret_report = NULL;
	if (!v)
		return -ENOMEM;
	for (size_t i = 0; i < plan->n_vms; i++) {
		struct recv_vm *r = &v[i];
		int e;

		r->vm = &plan->vms[i];
		r->go = o;
		r->out_mu = &out_mu;
		r->o = *o->base;
		r->o.c.qmp_path = r->vm->dest_qmp;
		if (r->vm->domain) {
			/* libvirt's QEMU listens on our loopback: the stream there, its disks after. */
			snprintf(r->qemu_connect, sizeof(r->qemu_connect), "127.0.0.1:%u",
				 r->vm->qemu_port);
			snprintf(r->nbd_connect, sizeof(r->nbd_connect), "127.0.0.1:%u",
				 r->vm->qemu_port + 1);
			r->o.c.qmp_path = NULL;
			r->o.qemu_connect = r->qemu_connect;
			r->o.nbd_connect = r->nbd_connect;
			r->o.no_vm_disks = true;	/* libvirt's QEMU is not ours to ask */
		}
		r->o.listen = r->vm->listen;
		r->o.vm_id = r->vm->name;
		r->o.live = true;	/* one store handle for all: proxy/liveshare.h */
		r->o.c.report_path = NULL;
		r->o.c.progress = false;
		r->start_ns = tsb_now_ns();
		e = tsb_thread_create(&r->th, recv_thread, r);
		if (e) {
			r->oc = PROXY_FAILED;
			r->end_ns = r->start_ns;
			snprintf(r->why, sizeof(r->why), "cannot start a thread: %s", strerror(e));
		}
		r->thread = !e;
	}
	for (size_t i = 0; i < plan->n_vms; i++)
		if (v[i].thread)
			pthread_join(v[i].th, NULL);
	*ret_report = recv_report(v, plan->n_vms, start_ns);
	for (size_t i = 0; i < plan->n_vms; i++) {
		left += v[i].oc != PROXY_OK;
		json_decref(v[i].report);
	}
	free(v);
	return (int)left;
}
