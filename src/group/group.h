/*
 * Groups: many VMs moved as one operation (docs/group.md). A plan names
 * the VMs; group_send() runs their senders in this process, a few at a
 * time, under one WAN budget, sharing the store's handle of their tenant;
 * group_recv() runs their receivers at the destination host. A VM that
 * fails does not stop the others (its source keeps running), and running
 * the same plan again moves what is left.
 */
#ifndef TSB_GROUP_H
#define TSB_GROUP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/proxy.h"
#include "store/store.h"

#define GROUP_MAX_VMS 256
#define GROUP_MAX_CONCURRENCY 64
#define GROUP_DEFAULT_CONCURRENCY 4
/* A plan file is small; anything bigger is not one. */
#define GROUP_PLAN_MAX_BYTES (1u << 20)
/* Socket paths and HOST:PORT strings in a plan. */
#define GROUP_MAX_STRING 1024
/* A libvirt domain's disks that move with it, and the first default port. */
#define GROUP_MAX_DISKS 8
#define GROUP_QEMU_PORT_BASE 49290

struct group_vm {
	char name[STORE_MAX_ID + 1];	/* the VM's id in stores and on the wire */
	char *qmp;			/* source QEMU's QMP socket (send side) */
	char *to;			/* HOST:PORT of its receiver (send side) */
	char *dest_qmp;			/* destination QEMU's QMP socket (recv side) */
	char *listen;			/* HOST:PORT its receiver listens on (recv side) */
	char *host;			/* its source host, as ssh reaches it; NULL: here */
	char *dest_host;		/* its destination host (for group recv --host); NULL: any */
	/*
	 * VMs of one affinity talk to each other: they start one after the
	 * other (after the seed), so that they are split between the sites
	 * for as short a time as the schedule allows. NULL: none.
	 */
	char *affinity;
	/*
	 * A libvirt domain (docs/libvirt.md) instead of a QEMU of ours: its
	 * name or UUID at the source (send side, instead of qmp), the
	 * destination's libvirt as the source's reaches it, the local libvirt
	 * (NULL: libvirt's default), the loopback port of both QEMUs' stream
	 * (its disks' mirror: + 1; by default 49290 + 2 x its place in the
	 * plan), and the disks (targets such as vda) that move along.
	 */
	char *domain;
	char *dest_uri;
	char *connect;
	char *dest_connect;		/* the destination's own libvirt (recv side) */
	unsigned qemu_port;
	char *disks[GROUP_MAX_DISKS];
	unsigned n_disks;
};

struct group_plan {
	char tenant[STORE_MAX_ID + 1];	/* "": not given */
	uint64_t bandwidth;		/* bytes/s for the whole group; 0: not given */
	unsigned concurrency;		/* 0: not given */
	int seed_first;			/* -1: not given */
	struct group_vm *vms;
	size_t n_vms;
};

/*
 * Parses a plan (JSON; untrusted bytes: fuzz target fuzz-group-plan).
 * 0, or -EINVAL with err naming the problem. Free with group_plan_free.
 */
int group_plan_parse(const char *text, size_t len, struct group_plan *ret, char *err,
		     size_t errlen);
/* Reads and parses a plan file. 0 or -errno with err. */
int group_plan_load(const char *path, struct group_plan *ret, char *err, size_t errlen);
void group_plan_free(struct group_plan *p);
/*
 * Checks that the plan has what one side needs (send: qmp or domain, and
 * to; recv: dest_qmp, or a domain, and listen).
 */
int group_plan_check(const struct group_plan *p, bool send, char *err, size_t errlen);
/*
 * Keeps only the VMs whose host (send) or dest_host (recv) is host; with
 * host NULL, those with none. Returns how many are left.
 */
size_t group_plan_only_host(struct group_plan *p, bool send, const char *host);
/* The sending side's part of one VM of the plan, as the plan has it (for an agent). */
json_t *group_vm_json(const struct group_vm *vm);

struct group_send_options {
	/* Options of every VM's sender; qmp, to, vm_id, report and progress are the group's. */
	const struct proxy_send_options *base;
	/*
	 * VMs on other hosts ("host" in the plan) run under 'tsubame group send
	 * --agent' there, started over ssh (argv: ssh, its options, then the
	 * host); remote_argv is what follows the host (the remote tsubame and
	 * its options, ending in NULL). The agents take their VMs' starts and
	 * their share of the budget from us, and tell us how their VMs go.
	 */
	const char *const *ssh_argv;
	const char *const *remote_argv;
	/* Agent mode: read the plan and commands on stdin, events on stdout. */
	bool agent;
	uint64_t bandwidth;		/* bytes/s shared by the group on the WAN; 0: none */
	unsigned concurrency;		/* VMs moving at once, >= 1 */
	bool seed_first;		/* the first VM alone first: it seeds the destination's store */
	bool plan_order;		/* keep the plan's order (no sampling for the seed) */
	bool dry_run;			/* print the order (and why) and move nothing */
	/*
	 * > 0: the VMs moving at once switch over together. Each source, once
	 * stopped for its switchover, waits until every VM moving from this
	 * process has stopped too, or this long after the first stopped.
	 */
	uint64_t switch_window_ns;
	/* libvirt domains: define them at the destination, undefine them here. */
	bool persistent, undefine_source;
	bool tty;			/* a line per VM on stderr, redrawn */
	bool json;			/* progress events on stdout, one JSON object per line */
	const char *timeline_path;	/* SVG picture of the run, or NULL */
};

/*
 * Moves the plan's VMs. *ret_report: the group's report (each VM's own
 * report inside). Returns how many VMs are not at the destination now
 * (0: all moved, some perhaps earlier), or -errno when nothing could start.
 */
int group_send(const struct group_plan *plan, const struct group_send_options *o,
	       json_t **ret_report);

struct group_recv_options {
	/* Options of every VM's receiver; qmp, listen, vm_id and report are the group's. */
	const struct proxy_recv_options *base;
	bool json;			/* an event per VM on stdout */
};

/* Receives the plan's VMs; returns how many did not arrive, or -errno. */
int group_recv(const struct group_plan *plan, const struct group_recv_options *o,
	       json_t **ret_report);

#endif
