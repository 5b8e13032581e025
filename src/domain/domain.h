/*
 * Moving a running libvirt domain: libvirt's own peer-to-peer live
 * migration, its QEMU stream (and its disks' NBD mirror) carried by a
 * tsubame sender on this host's loopback (docs/libvirt.md). libvirt keeps
 * its job control, its Finish/Confirm handshake and its definitions.
 * Used by `tsubame migrate` (one domain) and `tsubame group send` (the
 * domains of a plan, several at once: each on its own --qemu-port).
 */
#ifndef TSUBAME_DOMAIN_H
#define TSUBAME_DOMAIN_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/proxy.h"

#define DOMAIN_MAX_DISKS 8
/* The loopback port of both QEMUs' migration socket, by default (disks: + 1). */
#define DOMAIN_QEMU_PORT_DEFAULT 49290

struct domain_move {
	const char *domain;		/* name or UUID, running here */
	const char *dest_uri;		/* the destination's libvirt, as our libvirtd reaches it */
	const char *connect_uri;	/* the local libvirt; NULL: libvirt's default */
	const char *disks[DOMAIN_MAX_DISKS];	/* targets (vda) moved along by NBD mirror */
	unsigned n_disks;
	unsigned qemu_port;		/* both QEMUs' loopback port; the mirror's is + 1 */
	bool persistent;		/* define it at the destination */
	bool undefine_source;		/* undefine it here afterwards */
	uint64_t downtime_ms;		/* libvirt's maximum downtime; 0: libvirt's */
	/*
	 * The sender's options (to, key, store, report, on_tick, pacer, ...);
	 * what concerns QEMU's side (qemu_listen, disks, mode) is set by
	 * domain_move_run, and vm_id (the VM's id in the stores) when NULL:
	 * the domain's UUID.
	 */
	struct proxy_send_options so;
};

/*
 * Moves the domain. 0: it runs at the destination; -1: it did not move
 * and runs here (why says so, when known). *oc: how tsubame's side ended;
 * *ret_report: the sender's report with libvirt's job figures
 * ("libvirt_job"), or NULL. A libvirt call that never returned is left
 * running (its connection is not closed): *hung says so.
 */
int domain_move_run(struct domain_move *m, enum proxy_outcome *oc, json_t **ret_report,
		    bool *hung, char *why, size_t whylen);

/* 1: the domain runs at uri (NULL: libvirt's default); 0: it does not; -1: cannot tell (why). */
int domain_runs_at(const char *domain, const char *uri, char *why, size_t whylen);

/*
 * Where the domain runs: 1 here (active at connect_uri), 0 at dest_uri
 * (an earlier run moved it), -1 neither, or it cannot be told (why).
 */
int domain_where(const char *domain, const char *connect_uri, const char *dest_uri,
		 char *why, size_t whylen);

#endif
