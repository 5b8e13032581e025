/*
 * The migration proxy: `send` next to the source QEMU and `recv` next to
 * the destination QEMU carry one live migration over the WAN (data flow in
 * docs/ARCHITECTURE.md, messages in docs/protocol.md).
 */
#ifndef TSB_PROXY_H
#define TSB_PROXY_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

/* Why a migration ended; the CLI maps these to exit codes. */
enum proxy_outcome {
	PROXY_OK = 0,		/* destination runs, source completed */
	PROXY_FAILED,		/* QEMU or local failure; source keeps running */
	PROXY_LINK,		/* link lost or peer died; source keeps running */
	PROXY_AUTH,		/* peer refused or not authenticated */
	PROXY_TIMEOUT,		/* did not finish in time; cancelled */
	PROXY_INTERRUPTED,	/* SIGINT/SIGTERM; cancelled */
	PROXY_UNSUPPORTED,	/* stream construct or capability not supported */
	PROXY_IN_DOUBT,		/* switchover not settled: paused here, record kept */
};

/* Defaults of --state-dir and --commit-timeout. */
#define PROXY_STATE_DIR_DEFAULT "/var/lib/tsubame/migrations"
#define PROXY_COMMIT_TIMEOUT_DEFAULT_MS (3 * 60 * 1000)
/* Default of --recover-timeout: how long a broken postcopy is retried. */
#define PROXY_RECOVER_TIMEOUT_DEFAULT_MS (5 * 60 * 1000)

struct proxy_common_options {
	const char *qmp_path;		/* local QEMU's QMP socket */
	const char *key_path;		/* PSK file (NULL: certificates) */
	const char *cert, *cert_key, *ca; /* certificate mode */
	const char *report_path;	/* JSON report, or NULL */
	uint64_t cache_bytes;		/* content cache per side */
	uint64_t timeout_ms;		/* whole migration; 0: none */
	uint64_t stall_ms;		/* no progress on the link; 0: none */
	bool progress;			/* progress line on stderr */
	const char *store_dir;		/* content store; NULL: none */
	uint64_t store_cap;		/* 0: the store's default */
	const char *tenant;		/* NULL: one tenant per VM */
	const char *net_agent;		/* mobility agent's control socket, or NULL */
	const char *state_dir;		/* durable migration records (switchover) */
	uint64_t commit_timeout_ms;	/* how long to settle an undecided switchover */
	uint64_t recover_timeout_ms;	/* how long to resume a broken postcopy; 0: never */
};

/* What a sender tells a caller that shows many migrations (group) at each tick. */
struct proxy_tick {
	const char *status;		/* QEMU's migration status ("active", ...) */
	unsigned pass;			/* QEMU's dirty-sync-count */
	uint64_t ram_total, ram_remaining; /* QEMU's figures (bytes) */
	uint64_t wan_out;		/* bytes this migration put on the link so far */
};

struct wire_pacer;

/* When send switches QEMU to postcopy (besides --postcopy-after). */
enum proxy_mode {
	PROXY_MODE_PRECOPY,	/* never */
	PROXY_MODE_AUTO,	/* when precopy does not converge (migctl_options) */
	PROXY_MODE_POSTCOPY,	/* after the first pass */
};

struct proxy_send_options {
	struct proxy_common_options c;
	const char *to;			/* HOST:PORT of recv */
	const char *caps;		/* extra QEMU capabilities, comma separated */
	uint64_t max_bandwidth;		/* QEMU max-bandwidth; 0 default */
	uint64_t downtime_limit_ms;	/* 0: QEMU's default */
	uint64_t postcopy_after_ms;	/* 0: no switch by the clock */
	enum proxy_mode mode;
	int zstd_level;			/* 0: adaptive */
	unsigned connections;		/* lanes of the stream, 1..WIRE_MAX_LANES */
	uint64_t max_window;		/* stream bytes in flight at most; 0: PROXY_WINDOW_MAX */
	const char *vm_id;		/* NULL: QEMU's -name, else its UUID */
	bool floor;			/* report the compressed size of what had to travel */
	/* Every connection's writes take turns at this WAN budget (wire/pacer.h); NULL: none. */
	struct wire_pacer *pacer;
	/*
	 * Group: what the group's migrations of lower rank sent (as data) is
	 * sent as a LIVE reference when the receiver shares its store with
	 * theirs (proxy/liveshare.h); what this one sends is added under
	 * live_rank. NULL: none.
	 */
	struct live_share *live;
	unsigned live_rank;
	/*
	 * Group: called once the source VM stopped for its switchover, before
	 * QEMU goes on with it; returns when the group's VMs may go on together
	 * (a bounded wait). NULL: none.
	 */
	void (*switch_gate)(void *opaque);
	void *switch_gate_opaque;
	/* Called about once a second while QEMU migrates (from another thread). */
	void (*on_tick)(void *opaque, const struct proxy_tick *t);
	void *tick_opaque;
	/* Local disks (docs/disk.md): moved unless no_disks; only these if any. */
	const char *disks[8];
	unsigned n_disks;
	bool no_disks;
	/*
	 * Commit only once the destination said PREPARED (the older order): a
	 * round trip more in the downtime. By default the commit goes as the
	 * source completes (WIRE_CAP_EARLY).
	 */
	bool commit_late;
	/* The mirrors' copy mode (enum disk_copy_mode; 0: auto). */
	int disk_copy_mode;
	/*
	 * libvirt drives the source QEMU (docs/libvirt.md): no QMP; the
	 * source QEMU connects to qemu_listen (HOST:PORT) as libvirt's
	 * migration URI tells it, and the switchover is libvirt's. Needs
	 * vm_id; no disks, no postcopy. libvirt_ready is called once the
	 * port listens; libvirt_verdict says how libvirt's migration ended
	 * (-1 not yet, 0 failed: the source keeps the guest, 1 the domain
	 * runs at the destination).
	 */
	const char *qemu_listen;
	/*
	 * libvirt's NBD mirror of the local disks (docs/libvirt.md): our NBD
	 * server for it listens on nbd_listen; each disk's export name (what
	 * libvirt's mirror asks for), image file and size. None: memory only.
	 */
	const char *nbd_listen;
	const char *libvirt_disk_names[8], *libvirt_disk_files[8];
	uint64_t libvirt_disk_sizes[8];
	unsigned n_libvirt_disks;
	void (*libvirt_ready)(void *opaque);
	int (*libvirt_verdict)(void *opaque);
	/* Asks libvirt to cancel its job (virDomainAbortJob): we failed first. */
	void (*libvirt_abort)(void *opaque);
	void *libvirt_opaque;
	/*
	 * A sync round to a standby (docs/standby.md): a precopy into the
	 * standby's store that we end once QEMU's first pass is through (or
	 * after round_max_ms), QEMU's migration cancelled, the source never
	 * stopped for good; the report's "sync" says how stale the standby is.
	 * Memory only (no disks), precopy only.
	 */
	bool standby_round;
	uint64_t round_max_ms;		/* 0: PROXY_ROUND_MAX_DEFAULT_MS */
};

/* Default of a sync round's longest run (proxy_send_options.round_max_ms). */
#define PROXY_ROUND_MAX_DEFAULT_MS (10 * 60 * 1000)

#define PROXY_MAX_DISK_SOURCES 16

struct proxy_recv_options {
	struct proxy_common_options c;
	const char *listen;		/* HOST:PORT */
	const char *disk_sources[PROXY_MAX_DISK_SOURCES]; /* images to rebuild pages from */
	unsigned n_disk_sources;
	bool no_vm_disks;		/* do not index the destination VM's own disks */
	/*
	 * Group: this receiver's store handle is shared with the group's other
	 * receivers in this process, so LIVE references (WIRE_CAP_LIVE) may
	 * wait there for content another migration brings.
	 */
	bool live;
	/* The VM expected (a sender of another VM is refused); NULL: any. */
	const char *vm_id;
	/* The VM's network identity for the mobility agent (with c.net_agent). */
	const char *net_mac, *net_home;
	const char *net_ips[8];
	unsigned n_net_ips;
	/*
	 * libvirt drives the destination QEMU (docs/libvirt.md): no QMP; the
	 * rebuilt stream goes to qemu_connect (HOST:PORT), where the QEMU that
	 * libvirt prepared listens, and libvirt runs the guest.
	 */
	const char *qemu_connect;
	/* libvirt: where that QEMU exports the disks libvirt's mirror fills. */
	const char *nbd_connect;
	/*
	 * A standby (docs/standby.md): no QEMU here; one sync round of a
	 * sender's VM is kept in the store (needs c.store_dir) and ends at
	 * the sender's DONE. standby_max_ram bounds the RAM a sender may
	 * declare (0: PROXY_STANDBY_MAX_RAM).
	 */
	bool standby;
	uint64_t standby_max_ram;
};

#define PROXY_STANDBY_MAX_RAM (1ull << 40)

/* Runs the source side; fills *ret_report (owned ref, may be NULL on early errors). */
enum proxy_outcome proxy_send(const struct proxy_send_options *o, json_t **ret_report);

/*
 * Tells the receiver at o->to that the migration of o->vm_id will not
 * come (CANCEL, with why): it fails at once instead of waiting for its
 * --timeout. 0, or -errno with err.
 */
int proxy_send_withdraw(const struct proxy_send_options *o, const char *why, char *err,
			size_t errlen);
/* Runs the destination side, for one incoming migration. */
enum proxy_outcome proxy_recv(const struct proxy_recv_options *o, json_t **ret_report);

struct proxy_resolve_options {
	const char *state_dir;
	const char *id;			/* the migration id, as the message named it */
	const char *qmp_path;		/* overrides the record's QMP socket */
	int decision;			/* recv side: WIRE_DECIDE_*, 0 if not given */
};

/*
 * Settles an in-doubt migration from the records this host keeps
 * (docs/protocol.md, "Resolving"). Prints what it did and what to run on
 * the other side. 0 done, 2 usage (e.g. recv side without a decision),
 * 1 failed.
 */
int proxy_resolve(const struct proxy_resolve_options *o);
/* Prints the records of unsettled migrations in dir; returns how many. */
int proxy_resolve_list(const char *state_dir);

/*
 * SIGINT and SIGTERM set *flag (and every other migration's of this
 * process) from now on; one caught earlier is set at once.
 */
void proxy_catch_signals(volatile int *flag);
/* What flag belongs to has ended: signals no longer reach it. */
void proxy_release_signals(volatile int *flag);
/* The SIGINT/SIGTERM caught since a migration of this process began, or 0. */
int proxy_caught_signal(void);

/* Writes a report to path as indented JSON. 0 or -EIO. */
int proxy_write_report(const char *path, json_t *report);

/* Name of an outcome for reports ("ok", "link-lost", ...). */
const char *proxy_outcome_name(enum proxy_outcome o);

#endif
