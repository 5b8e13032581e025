/* Inside the group runner: one VM's run and what the views need. */
#ifndef TSB_GROUP_INTERNAL_H
#define TSB_GROUP_INTERNAL_H

#include <pthread.h>
#include <stdio.h>
#include <sys/types.h>

#include "group/group.h"

/* Where a VM is, as the views show it. */
enum vm_phase {
	PHASE_WAITING,		/* not started yet */
	PHASE_SETUP,		/* connecting, disks mirroring: QEMU not migrating yet */
	PHASE_PRECOPY,
	PHASE_POSTCOPY,
	PHASE_SWITCHOVER,	/* QEMU stopped the guest for the last part */
	PHASE_MOVED,
	PHASE_SKIPPED,		/* moved by an earlier run (its source is done) */
	PHASE_FAILED,		/* its source keeps the guest */
	PHASE_COUNT,
};

const char *group_phase_name(enum vm_phase ph);

/*
 * The order a group's VMs start in (order.c): order[k] is the plan's index
 * of the k-th. The plan's, unless sampling the local VMs' memory shows
 * that another holds clearly more of the others' content than its first:
 * then that one goes first. Returns the first's index.
 */
size_t group_order_by_content(const struct group_plan *plan, size_t *order);
/* Then VMs of one "affinity" one after the other, the seed's first (order.c). */
void group_order_by_affinity(const struct group_plan *plan, size_t *order);

/* One sample a second, for the picture. */
struct sample {
	uint32_t t_ms;		/* since the group started */
	uint8_t phase;
	float mbit;		/* WAN rate out since the last sample */
};

struct group_run;

/* An agent on another host, over ssh (remote.c). */
struct remote {
	struct group_run *g;
	char host[GROUP_MAX_STRING + 1];
	pid_t pid;
	FILE *in;		/* commands to it */
	int out;		/* its events */
	pthread_t reader;
	bool reader_started;
	bool gone;		/* under g->mu: its events ended */
	uint64_t bandwidth;	/* the share last sent */
};

struct vm_run {
	const struct group_vm *vm;
	struct group_run *g;
	struct remote *remote;	/* NULL: it moves from this host */
	bool end_told;		/* agent mode: its end went to the coordinator */
	struct proxy_send_options o;
	char tag[STORE_MAX_ID + 8];
	pthread_t th;
	bool thread;		/* th was started */
	/* Under g->mu. */
	enum vm_phase phase;
	enum proxy_outcome oc;
	char why[256];		/* skipped or failed: why */
	struct proxy_tick tick;	/* the last one; tick.status points to status */
	char status[32];
	uint64_t wan_out;	/* bytes on the link so far */
	uint64_t start_ns, end_ns;
	uint64_t gate_in_ns, gate_out_ns;	/* the switchover gate (send.c); 0: none */
	json_t *report;
	/* The views' own (main thread). */
	enum vm_phase last_phase;	/* the last moving phase sampled */
	uint64_t shown_wan;
	float mbit;
	struct sample *samples;
	size_t n_samples, cap_samples;
};

struct group_run {
	const struct group_plan *plan;
	const struct group_send_options *o;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct vm_run *v;
	size_t n;
	unsigned running;
	volatile int sig;	/* SIGINT/SIGTERM (proxy_catch_signals) */
	struct wire_pacer *pacer;
	/* What each VM sent, for the others moving at once (proxy/liveshare.h). */
	struct live_share *live;
	/* The switchover gate (send.c, under mu): who waits, since when, which round. */
	unsigned gate_waiting;
	uint64_t gate_first_ns, gate_round;
	struct remote *remotes;
	size_t n_remotes;
	uint64_t start_ns;
	/* The views' (main thread). */
	unsigned tty_lines;	/* lines drawn last time */
	uint64_t last_view_ns, last_wan;
	float total_mbit;
};

/* send.c, under g->mu: a VM's progress (from its sender, or its agent). */
void group_vm_tick(struct vm_run *r, const struct proxy_tick *t);

/* ---- remote.c ---- */

/* Starts host's agent over ssh and gives it its VMs (those with r->remote == rm). 0 or -errno. */
int group_remote_start(struct group_run *g, struct remote *rm, const char *host);
/* Tells the agent to start a VM; false if it is gone. */
bool group_remote_start_vm(struct remote *rm, const char *name);
/* The agent's share of the budget (sent when it changed). */
void group_remote_set_bandwidth(struct remote *rm, uint64_t rate);
/* Ends our side (EOF to the agent) and waits for it. */
void group_remote_finish(struct remote *rm);

/* ---- event.c: what an agent on another host tells its coordinator ---- */

/* A line is at most this long (a VM's end carries its report). */
#define GROUP_EVENT_MAX (1u << 20)

enum group_event_type {
	GROUP_EVENT_TICK = 1,	/* a VM's progress */
	GROUP_EVENT_END,	/* a VM's end, with its report */
};

struct group_event {
	enum group_event_type type;
	char name[STORE_MAX_ID + 1];
	/* tick */
	char status[32];
	unsigned pass;
	uint64_t ram_total, ram_remaining, wan_out;
	/* end */
	enum vm_phase phase;	/* PHASE_MOVED, PHASE_SKIPPED or PHASE_FAILED */
	char outcome[32];
	char why[256];
	json_t *report;		/* owned reference, or NULL */
};

/* Parses one line (untrusted: fuzz-group-event). 0, -EBADMSG or -EMSGSIZE. */
int group_event_parse(const char *line, size_t len, struct group_event *ev);
/* The tick line of a VM (the agent's side). */
json_t *group_event_tick(const char *name, const struct proxy_tick *t);

/* A coordinator's command to its agent. */
struct group_command {
	char start[STORE_MAX_ID + 1];	/* a VM to start, or "" */
	uint64_t bandwidth;		/* a new share of the budget (bytes/s), or 0 */
};
#define GROUP_COMMAND_MAX 4096
/* Parses one command line (untrusted: fuzz-group-event). 0 or -EBADMSG. */
int group_command_parse(const char *line, size_t len, struct group_command *c);

/*
 * status.c: QEMU's run state at qmp_path ("running", "postmigrate", ...)
 * into status. 0, or -1 with why naming whose QEMU (what) did not answer.
 */
int group_qemu_status(const char *qmp_path, const char *what, char *status, size_t len,
		      char *why, size_t whylen);

/* ---- view.c: what the operator sees ---- */

/* Samples every VM (under g->mu) and draws the TTY lines and JSON events. */
void group_view_tick(struct group_run *g, bool final);
/* A JSON event line on stdout: {"event": name, "t_ms": ..., ...fields}. */
void group_view_event(struct group_run *g, const char *name, json_t *fields);
/* The human table at the end. */
void group_view_table(struct group_run *g, FILE *f);
/* The SVG timeline. 0 or -errno. */
int group_view_svg(struct group_run *g, const char *path);

#endif
