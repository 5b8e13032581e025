/* Inside the group runner: one VM's run and what the views need. */
#ifndef TSB_GROUP_INTERNAL_H
#define TSB_GROUP_INTERNAL_H

#include <pthread.h>
#include <stdio.h>

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

/* One sample a second, for the picture. */
struct sample {
	uint32_t t_ms;		/* since the group started */
	uint8_t phase;
	float mbit;		/* WAN rate out since the last sample */
};

struct vm_run {
	const struct group_vm *vm;
	struct group_run *g;
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
	struct wire_pacer *pacer;
	uint64_t start_ns;
	/* The views' (main thread). */
	unsigned tty_lines;	/* lines drawn last time */
	uint64_t last_view_ns, last_wan;
	float total_mbit;
};

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
