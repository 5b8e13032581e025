/*
 * The sending side of a group (group.h): every VM's sender runs as a
 * thread of this process, at most o->concurrency at once, all writing
 * through one WAN budget (wire/pacer.h) and sharing the store's handle of
 * their tenant (store_open). The main thread starts VMs as others end and
 * draws the progress (view.c).
 */
#include "group/internal.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "domain/domain.h"
#include "proxy/liveshare.h"
#include "proxy/proxy.h"
#include "wire/pacer.h"

/* How often the views are redrawn. */
#define VIEW_EVERY_NS 1000000000ull

static enum vm_phase phase_of_status(const char *st)
{
	if (!strncmp(st, "postcopy", 8))
		return PHASE_POSTCOPY;
	if (!strcmp(st, "device") || !strcmp(st, "pre-switchover") || !strcmp(st, "completed"))
		return PHASE_SWITCHOVER;
	return PHASE_PRECOPY;
}

void group_vm_tick(struct vm_run *r, const struct proxy_tick *t)
{
	snprintf(r->status, sizeof(r->status), "%s", t->status ? t->status : "");
	r->tick = *t;
	r->tick.status = r->status;
	r->wan_out = t->wan_out;
	r->phase = phase_of_status(r->status);
}

static void on_tick(void *opaque, const struct proxy_tick *t)
{
	struct vm_run *r = opaque;

	pthread_mutex_lock(&r->g->mu);
	group_vm_tick(r, t);
	pthread_mutex_unlock(&r->g->mu);
}

/*
 * Is the source there to be moved? 1: its guest runs (or is paused) here;
 * 0: its QEMU completed a migration already (an earlier run moved it);
 * -1: no (why says so).
 */
static int source_state(const char *qmp_path, char *why, size_t whylen)
{
	char status[64];

	if (group_qemu_status(qmp_path, "source", status, sizeof(status), why, whylen) < 0)
		return -1;
	if (!strcmp(status, "postmigrate")) {
		snprintf(why, whylen, "moved earlier: its source QEMU has completed a migration");
		return 0;
	}
	if (!strcmp(status, "inmigrate")) {
		snprintf(why, whylen, "its \"qmp\" is a QEMU waiting for an incoming migration");
		return -1;
	}
	return 1;
}

/* VMs of this process whose migration runs now (under g->mu). */
static unsigned moving_here(const struct group_run *g)
{
	unsigned n = 0;

	for (size_t i = 0; i < g->n; i++)
		n += !g->v[i].remote && g->v[i].phase >= PHASE_SETUP &&
		     g->v[i].phase <= PHASE_SWITCHOVER;
	return n;
}

/*
 * The switchover gate (--switchover-window): a source that stopped for its
 * switchover waits here, paused, until every VM moving from this process
 * has stopped too, or the window since the first one stopped has passed;
 * then they all go on. A VM that fails or ends meanwhile counts no more.
 */
static void switch_gate(void *opaque)
{
	struct vm_run *r = opaque;
	struct group_run *g = r->g;
	uint64_t round, now = tsb_now_ns();
	struct timespec until;

	pthread_mutex_lock(&g->mu);
	r->gate_in_ns = now;
	round = g->gate_round;
	if (!g->gate_waiting++)
		g->gate_first_ns = now;
	while (round == g->gate_round) {
		now = tsb_now_ns();
		if (g->gate_waiting >= moving_here(g) ||
		    now - g->gate_first_ns >= g->o->switch_window_ns || g->sig) {
			g->gate_round++;
			g->gate_waiting = 0;
			pthread_cond_broadcast(&g->cv);
			break;
		}
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_nsec += 5000000;	/* notice a VM that failed meanwhile */
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&g->cv, &g->mu, &until);
	}
	r->gate_out_ns = tsb_now_ns();
	pthread_mutex_unlock(&g->mu);
	log_info("switchover gate: went on after %llu ms",
		 (unsigned long long)((r->gate_out_ns - r->gate_in_ns) / 1000000));
}

/* Its receiver would wait for it until its --timeout: say that it will not come. */
static void withdraw(struct vm_run *r, const char *why)
{
	char err[256];

	if (proxy_send_withdraw(&r->o, why, err, sizeof(err)) < 0)
		log_debug("could not tell its receiver that it will not come: %s", err);
	else
		log_notice("told its receiver that it will not come");
}

/*
 * A libvirt domain's move (src/domain): libvirt's own migration, its
 * stream through a sender of ours like any other VM's. PROXY_OK only
 * when libvirt says the domain runs at the destination.
 */
static enum proxy_outcome move_domain(struct vm_run *r, json_t **report, char *why,
				      size_t whylen)
{
	const struct group_vm *vm = r->vm;
	struct domain_move *m = calloc(1, sizeof(*m));
	enum proxy_outcome oc;
	bool hung = false;
	int rc;

	if (!m) {
		snprintf(why, whylen, "out of memory");
		return PROXY_FAILED;
	}
	m->domain = vm->domain;
	m->dest_uri = vm->dest_uri;
	m->connect_uri = vm->connect;
	for (unsigned k = 0; k < vm->n_disks && k < DOMAIN_MAX_DISKS; k++)
		m->disks[m->n_disks++] = vm->disks[k];
	m->qemu_port = vm->qemu_port;
	m->persistent = r->g->o->persistent;
	m->undefine_source = r->g->o->undefine_source;
	m->downtime_ms = r->o.downtime_limit_ms;
	m->so = r->o;
	log_info("libvirt migrates domain %s to %s, its stream through 127.0.0.1:%u",
		 vm->domain, vm->dest_uri, vm->qemu_port);
	rc = domain_move_run(m, &oc, report, &hung, why, whylen);
	if (rc == 0)
		oc = PROXY_OK;
	else if (oc == PROXY_OK)
		oc = PROXY_FAILED;	/* tsubame's side was fine, libvirt's was not */
	/* A libvirt call that never returned still holds m. */
	if (!hung)
		free(m);
	return oc;
}

static void *vm_thread(void *arg)
{
	struct vm_run *r = arg;
	struct group_run *g = r->g;
	enum proxy_outcome oc = PROXY_FAILED;
	enum vm_phase ph;
	json_t *report = NULL;
	char why[256] = "";
	int st;

	tsb_log_set_thread_tag(r->tag);
	st = r->vm->domain ? domain_where(r->vm->domain, r->vm->connect, r->vm->dest_uri, why,
					  sizeof(why))
			   : source_state(r->vm->qmp, why, sizeof(why));
	if (st > 0 && r->vm->domain) {
		oc = move_domain(r, &report, why, sizeof(why));
		if (oc == PROXY_OK)
			log_notice("migration completed");
		else
			log_error("not moved (%s)%s%s", proxy_outcome_name(oc), why[0] ? ": " : "",
				  why);
	} else if (st > 0) {
		log_info("migrating to %s", r->vm->to);
		oc = proxy_send(&r->o, &report);
		if (oc != PROXY_OK && report)
			snprintf(why, sizeof(why), "%s",
				 json_string_value(json_object_get(report, "error")) ?: "");
		if (oc == PROXY_OK)
			log_notice("migration completed");
		else
			log_error("not moved (%s)%s%s", proxy_outcome_name(oc), why[0] ? ": " : "",
				  why);
	} else if (st == 0) {
		oc = PROXY_OK;
		log_notice("%s", why);
		withdraw(r, why);
	} else {
		log_error("not moved: %s", why);
		withdraw(r, why);
	}
	ph = st == 0 ? PHASE_SKIPPED : oc == PROXY_OK ? PHASE_MOVED : PHASE_FAILED;
	pthread_mutex_lock(&g->mu);
	r->phase = ph;
	r->oc = oc;
	snprintf(r->why, sizeof(r->why), "%s", why);
	r->report = report;
	r->end_ns = tsb_now_ns();
	g->running--;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

/* Under g->mu. */
static int start_vm(struct group_run *g, struct vm_run *r)
{
	int e;

	r->phase = PHASE_SETUP;
	r->start_ns = tsb_now_ns();
	g->running++;
	if (r->remote) {
		if (!r->remote->gone && group_remote_start_vm(r->remote, r->vm->name))
			return 0;
		g->running--;
		r->phase = PHASE_FAILED;
		r->oc = PROXY_LINK;
		r->end_ns = r->start_ns;
		snprintf(r->why, sizeof(r->why), "its host's agent (%.200s) is gone",
			 r->remote->host);
		return -EPIPE;
	}
	r->o.pacer = g->pacer;	/* an agent's pacer comes with its first share */
	e = tsb_thread_create(&r->th, vm_thread, r);
	if (e) {
		g->running--;
		r->phase = PHASE_FAILED;
		r->oc = PROXY_FAILED;
		r->end_ns = r->start_ns;
		snprintf(r->why, sizeof(r->why), "cannot start a thread: %s", strerror(e));
		return -e;
	}
	r->thread = true;
	return 0;
}

static bool finished(const struct vm_run *r)
{
	return r->phase >= PHASE_MOVED;
}

/* Under g->mu: starts what may start now; true when every VM has finished. */
static bool start_more(struct group_run *g, size_t *next)
{
	unsigned limit = g->o->concurrency ? g->o->concurrency : 1;
	size_t done = 0;

	/* The seed goes alone: the others find its pages in the destination's store. */
	if (g->o->seed_first && g->n > 1 && !finished(&g->v[0]))
		limit = 1;
	while (*next < g->n && g->running < limit && !proxy_caught_signal())
		(void)start_vm(g, &g->v[(*next)++]);
	for (size_t i = 0; i < g->n; i++)
		done += finished(&g->v[i]);
	/* Interrupted: agents whose coordinator is gone cancel their VMs. */
	for (size_t h = 0; proxy_caught_signal() && h < g->n_remotes; h++)
		if (g->remotes[h].in) {
			fclose(g->remotes[h].in);
			g->remotes[h].in = NULL;
		}
	if (proxy_caught_signal())
		for (size_t i = *next; i < g->n; i++, done++)
			if (!finished(&g->v[i])) {
				g->v[i].phase = PHASE_FAILED;
				g->v[i].oc = PROXY_INTERRUPTED;
				snprintf(g->v[i].why, sizeof(g->v[i].why),
					 "not started: interrupted");
			}
	return done == g->n || (proxy_caught_signal() && g->running == 0);
}

/*
 * Under g->mu: the budget follows the moving VMs: each host (this one, each
 * agent's) gets the share of the VMs moving there, so that what one host
 * does not use the others get.
 */
static void share_budget(struct group_run *g)
{
	size_t moving = 0, here = 0;

	if (!g->pacer || !g->n_remotes)
		return;
	for (size_t i = 0; i < g->n; i++) {
		const struct vm_run *r = &g->v[i];

		if (r->phase >= PHASE_SETUP && r->phase <= PHASE_SWITCHOVER) {
			moving++;
			here += !r->remote;
		}
	}
	for (size_t h = 0; h < g->n_remotes; h++) {
		struct remote *rm = &g->remotes[h];
		size_t there = 0;

		for (size_t i = 0; i < g->n; i++)
			there += g->v[i].remote == rm && g->v[i].phase >= PHASE_SETUP &&
				 g->v[i].phase <= PHASE_SWITCHOVER;
		group_remote_set_bandwidth(rm, moving && there ? g->o->bandwidth * there / moving
							       : g->o->bandwidth);
	}
	wire_pacer_set_rate(g->pacer, moving && here ? g->o->bandwidth * here / moving
						     : g->o->bandwidth);
}

static void run_all(struct group_run *g)
{
	uint64_t next_view = 0, now;
	size_t next = 0;
	struct timespec ts;

	pthread_mutex_lock(&g->mu);
	while (!start_more(g, &next)) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += 200000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&g->cv, &g->mu, &ts);
		now = tsb_now_ns();
		share_budget(g);
		if (now >= next_view) {
			pthread_mutex_unlock(&g->mu);
			group_view_tick(g, false);
			pthread_mutex_lock(&g->mu);
			next_view = now + VIEW_EVERY_NS;
		}
	}
	pthread_mutex_unlock(&g->mu);
	for (size_t h = 0; h < g->n_remotes; h++)
		group_remote_finish(&g->remotes[h]);
	for (size_t i = 0; i < g->n; i++)
		if (g->v[i].thread)
			pthread_join(g->v[i].th, NULL);
	/* Interrupted: those that never started do not come either. */
	for (size_t i = 0; i < g->n; i++)
		if (!g->v[i].thread && !g->v[i].remote && g->v[i].phase == PHASE_WAITING) {
			tsb_log_set_thread_tag(g->v[i].tag);
			withdraw(&g->v[i], "the group was interrupted before this VM started");
			tsb_log_set_thread_tag(NULL);
		}
	group_view_tick(g, true);
}

/* ---- agent mode: a coordinator on another host starts our VMs ---- */

static void agent_print(json_t *ev)
{
	if (!ev)
		return;
	json_dumpf(ev, stdout, JSON_COMPACT);
	fputc('\n', stdout);
	fflush(stdout);
	json_decref(ev);
}

static void agent_command(struct group_run *g, const char *line, size_t len)
{
	struct group_command c;

	if (group_command_parse(line, len, &c) < 0) {
		log_warn("a command from the coordinator that is not one");
		return;
	}
	pthread_mutex_lock(&g->mu);
	if (c.bandwidth) {
		if (!g->pacer)
			g->pacer = wire_pacer_new(c.bandwidth);
		else
			wire_pacer_set_rate(g->pacer, c.bandwidth);
	}
	for (size_t i = 0; c.start[0] && i < g->n; i++)
		if (!strcmp(g->v[i].vm->name, c.start) && g->v[i].phase == PHASE_WAITING)
			(void)start_vm(g, &g->v[i]);
	pthread_mutex_unlock(&g->mu);
}

/* Reads what stdin has (up to a line's worth); false at its end. */
static bool agent_read(struct group_run *g, char *buf, size_t *len)
{
	struct pollfd pfd = { .fd = STDIN_FILENO, .events = POLLIN };
	ssize_t n;
	char *nl;

	if (poll(&pfd, 1, 200) <= 0)
		return true;
	n = read(STDIN_FILENO, buf + *len, GROUP_COMMAND_MAX - *len);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN;
	if (n == 0)
		return false;
	*len += (size_t)n;
	while ((nl = memchr(buf, '\n', *len))) {
		size_t l = (size_t)(nl - buf);

		agent_command(g, buf, l);
		memmove(buf, nl + 1, *len - l - 1);
		*len -= l + 1;
	}
	if (*len == GROUP_COMMAND_MAX) {
		log_warn("a command line from the coordinator is too long: dropped");
		*len = 0;
	}
	return true;
}

/*
 * Runs the VMs the coordinator starts, tells it how they go, and ends
 * when its commands end and nothing moves; if they end while VMs move,
 * the coordinator is gone: they are cancelled (their sources keep them).
 */
static void run_agent(struct group_run *g)
{
	char buf[GROUP_COMMAND_MAX];
	uint64_t next_tick = 0;
	bool open = true, done = false;
	size_t len = 0;

	while (!done) {
		json_t *ends = json_array(), *ticks = json_array(), *ev;
		size_t k;
		uint64_t now;

		if (open && !(open = agent_read(g, buf, &len))) {
			pthread_mutex_lock(&g->mu);
			if (g->running) {
				log_error("the coordinator is gone: cancelling what moves");
				raise(SIGTERM);
			}
			pthread_mutex_unlock(&g->mu);
		} else if (!open) {
			struct timespec ts = { 0, 200000000 };

			nanosleep(&ts, NULL);
		}
		now = tsb_now_ns();
		pthread_mutex_lock(&g->mu);
		for (size_t i = 0; i < g->n; i++) {
			struct vm_run *r = &g->v[i];

			if (finished(r) && r->phase != PHASE_WAITING && !r->end_told) {
				r->end_told = true;
				ev = json_pack("{s:s, s:s, s:s, s:s, s:s}", "event", "vm-end",
					       "name", r->vm->name, "phase", group_phase_name(r->phase),
					       "outcome", proxy_outcome_name(r->oc), "why", r->why);
				if (r->report)
					json_object_set(ev, "report", r->report);
				json_array_append_new(ends, ev);
			} else if (now >= next_tick && r->phase >= PHASE_SETUP &&
				   r->phase <= PHASE_SWITCHOVER && r->tick.status) {
				json_array_append_new(ticks, group_event_tick(r->vm->name, &r->tick));
			}
		}
		done = !open && g->running == 0;
		pthread_mutex_unlock(&g->mu);
		if (now >= next_tick)
			next_tick = now + VIEW_EVERY_NS;
		json_array_foreach(ticks, k, ev)
			agent_print(json_incref(ev));
		json_array_foreach(ends, k, ev)
			agent_print(json_incref(ev));
		json_decref(ticks);
		json_decref(ends);
	}
	for (size_t i = 0; i < g->n; i++)
		if (g->v[i].thread)
			pthread_join(g->v[i].th, NULL);
}

static json_t *vm_report(const struct group_run *g, const struct vm_run *r)
{
	json_t *o = json_pack("{s:s, s:s, s:s}", "name", r->vm->name,
			      "phase", group_phase_name(r->phase),
			      "outcome", r->phase == PHASE_SKIPPED ? "moved-earlier" :
					 proxy_outcome_name(r->oc));

	if (r->why[0])
		json_object_set_new(o, "why", json_string(r->why));
	if (r->start_ns) {
		json_object_set_new(o, "start_ms",
				    json_integer((json_int_t)((r->start_ns - g->start_ns) / 1000000)));
		json_object_set_new(o, "end_ms",
				    json_integer((json_int_t)((r->end_ns - g->start_ns) / 1000000)));
	}
	if (r->gate_out_ns) {
		/* The switchover gate: when this VM went on, and how long it waited. */
		json_object_set_new(o, "switchover_at_ms", json_integer((json_int_t)(
			(r->gate_out_ns - g->start_ns) / 1000000)));
		json_object_set_new(o, "gate_wait_ms", json_integer((json_int_t)(
			(r->gate_out_ns - r->gate_in_ns) / 1000000)));
	}
	if (r->report)
		json_object_set(o, "report", r->report);
	return o;
}

/* Bytes sent or received by one VM's migration (its report), 0 if none. */
static json_int_t wan_field(const struct vm_run *r, const char *key)
{
	return json_integer_value(json_object_get(json_object_get(r->report, "wan"), key));
}

static json_t *group_report(struct group_run *g)
{
	json_int_t sent = 0, received = 0;
	size_t moved = 0, earlier = 0, failed = 0;
	json_t *rep = json_object(), *vms = json_array();

	for (size_t i = 0; i < g->n; i++) {
		struct vm_run *r = &g->v[i];

		moved += r->phase == PHASE_MOVED;
		earlier += r->phase == PHASE_SKIPPED;
		failed += r->phase == PHASE_FAILED;
		sent += wan_field(r, "bytes_sent");
		received += wan_field(r, "bytes_received");
		json_array_append_new(vms, vm_report(g, r));
	}
	json_object_set_new(rep, "side", json_string("group-send"));
	json_object_set_new(rep, "outcome", json_string(failed == 0 ? "ok" :
					failed == g->n ? "failed" : "partial"));
	if (g->plan->tenant[0] || g->o->base->c.tenant)
		json_object_set_new(rep, "tenant", json_string(g->o->base->c.tenant ?
							       g->o->base->c.tenant :
							       g->plan->tenant));
	json_object_set_new(rep, "total_time_ms",
			    json_integer((json_int_t)((tsb_now_ns() - g->start_ns) / 1000000)));
	json_object_set_new(rep, "concurrency", json_integer(g->o->concurrency));
	json_object_set_new(rep, "seed_first", json_boolean(g->o->seed_first));
	json_object_set_new(rep, "totals", json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}",
		"vms", (json_int_t)g->n, "moved", (json_int_t)moved,
		"moved_earlier", (json_int_t)earlier, "failed", (json_int_t)failed,
		"wan_bytes_sent", sent, "wan_bytes_received", received));
	if (g->pacer) {
		uint64_t bytes, wait;

		wire_pacer_stats(g->pacer, &bytes, &wait);
		json_object_set_new(rep, "budget", json_pack("{s:I, s:I, s:I}",
			"bytes_per_s", (json_int_t)g->o->bandwidth,
			"bytes_paced", (json_int_t)bytes, "wait_ms", (json_int_t)(wait / 1000000)));
	}
	json_object_set_new(rep, "vms", vms);
	return rep;
}

/* An agent for each other host the plan names; its VMs fail if it cannot start. */
static int setup_remotes(struct group_run *g)
{
	g->remotes = calloc(g->n, sizeof(*g->remotes));
	if (!g->remotes)
		return -ENOMEM;
	for (size_t i = 0; i < g->n; i++) {
		struct vm_run *r = &g->v[i];
		size_t h;

		if (!r->vm->host)
			continue;
		for (h = 0; h < g->n_remotes && strcmp(g->remotes[h].host, r->vm->host); h++)
			;
		if (h == g->n_remotes) {
			g->remotes[h].out = -1;
			snprintf(g->remotes[h].host, sizeof(g->remotes[h].host), "%s", r->vm->host);
			g->n_remotes++;
		}
		r->remote = &g->remotes[h];
	}
	for (size_t h = 0; h < g->n_remotes; h++) {
		int e;

		if (!g->o->ssh_argv || !g->o->remote_argv)
			e = -EINVAL;
		else
			e = group_remote_start(g, &g->remotes[h], g->remotes[h].host);
		if (e < 0) {
			log_error("%s: cannot start its agent over ssh: %s", g->remotes[h].host,
				  strerror(-e));
			g->remotes[h].gone = true;
		} else if (g->pacer) {
			/* Paced from its first VM on; share_budget() then moves it. */
			group_remote_set_bandwidth(&g->remotes[h], g->o->bandwidth);
		}
	}
	return 0;
}

int group_send(const struct group_plan *plan, const struct group_send_options *o,
	       json_t **ret_report)
{
	struct group_run g = { .plan = plan, .o = o, .n = plan->n_vms };
	pthread_condattr_t ca;
	size_t left = 0, *order;

	*ret_report = NULL;
	g.v = calloc(g.n, sizeof(*g.v));
	if (!g.v)
		return -ENOMEM;
	if ((o->bandwidth && !(g.pacer = wire_pacer_new(o->bandwidth))) ||
	    !(g.live = live_share_new())) {
		wire_pacer_free(g.pacer);
		free(g.v);
		return -ENOMEM;
	}
	order = calloc(g.n, sizeof(*order));
	if (!order) {
		wire_pacer_free(g.pacer);
		live_share_free(g.live);
		free(g.v);
		return -ENOMEM;
	}
	for (size_t i = 0; i < g.n; i++)
		order[i] = i;
	/* The seed is the VM whose memory holds the most of the others'. */
	if (!o->agent && !o->plan_order && o->seed_first)
		(void)group_order_by_content(plan, order);
	/* VMs that talk to each other close together. */
	if (!o->agent)
		group_order_by_affinity(plan, order);
	if (o->dry_run) {
		for (size_t i = 0; i < g.n; i++)
			printf("%s%s", i ? " " : "", plan->vms[order[i]].name);
		printf("\n");
		free(order);
		wire_pacer_free(g.pacer);
		live_share_free(g.live);
		free(g.v);
		return 0;
	}
	pthread_mutex_init(&g.mu, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g.cv, &ca);
	pthread_condattr_destroy(&ca);
	for (size_t i = 0; i < g.n; i++) {
		struct vm_run *r = &g.v[i];

		r->vm = &plan->vms[order[i]];
		r->g = &g;
		r->o = *o->base;
		r->o.c.qmp_path = r->vm->qmp;
		r->o.to = r->vm->to;
		r->o.vm_id = r->vm->name;
		r->o.c.report_path = NULL;
		r->o.c.progress = false;
		r->o.pacer = g.pacer;
		r->o.live = g.live;
		r->o.live_rank = (unsigned)i;
		if (o->switch_window_ns) {
			r->o.switch_gate = switch_gate;
			r->o.switch_gate_opaque = r;
		}
		r->o.on_tick = on_tick;
		r->o.tick_opaque = r;
		snprintf(r->tag, sizeof(r->tag), "%s", r->vm->name);
	}
	free(order);
	if (!o->agent && setup_remotes(&g) < 0) {
		free(g.v);
		wire_pacer_free(g.pacer);
		live_share_free(g.live);
		return -ENOMEM;
	}
	proxy_catch_signals(&g.sig);
	g.start_ns = tsb_now_ns();
	if (o->agent) {
		run_agent(&g);
		proxy_release_signals(&g.sig);
		for (size_t i = 0; i < g.n; i++)
			json_decref(g.v[i].report);
		wire_pacer_free(g.pacer);
		live_share_free(g.live);
		free(g.v);
		return 0;
	}
	run_all(&g);
	proxy_release_signals(&g.sig);
	*ret_report = group_report(&g);
	if (o->timeline_path && group_view_svg(&g, o->timeline_path) < 0)
		log_error("cannot write the timeline %s", o->timeline_path);
	group_view_event(&g, "report", json_pack("{s:O}", "report", *ret_report));
	if (!o->json)
		group_view_table(&g, stdout);
	for (size_t i = 0; i < g.n; i++) {
		left += g.v[i].phase == PHASE_FAILED;
		json_decref(g.v[i].report);
		free(g.v[i].samples);
	}
	pthread_cond_destroy(&g.cv);
	pthread_mutex_destroy(&g.mu);
	wire_pacer_free(g.pacer);
	live_share_free(g.live);
	free(g.remotes);
	free(g.v);
	return (int)left;
}
