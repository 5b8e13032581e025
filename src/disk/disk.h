/*
 * Local disks in a live migration (docs/disk.md). tsubame sits in the
 * middle of QEMU's own storage route (a mirror job into an NBD export of
 * the destination QEMU): `send` serves the source QEMU's mirror jobs with
 * its own NBD servers and carries the writes over a second wire
 * connection (the disk channel); `recv` applies them through an NBD
 * client of the destination QEMU's export.
 *
 * On the disk channel (HELLO with WIRE_CAP_DISK, same TLS as the main
 * connection) existing messages are reused:
 *   BLOCKS     disk index -> device name and size (sender, first)
 *   SUMMARY    the receiver's disk-block filter (receiver, after HELLO)
 *   PAGES      writes; block = disk index, offset = byte offset in the
 *              disk; page size 512, 4096 or 65536; ZERO / DATA / REF
 *   NEED/HASHDATA  REFs the receiver could not rebuild
 *   PING/PONG  flush: token = disk << 48 | n; PONG once every earlier
 *              write is applied and the destination flushed the disk;
 *              keepalive: token has DISK_TOKEN_KEEPALIVE, PONG only
 *   ACK        frames applied (the sender's window: DISK_WINDOW*)
 *   DONE       end: the sender's after the last write, the receiver's
 *              once everything is applied and flushed
 *   ERROR/CANCEL  failure
 */
#ifndef TSB_DISK_H
#define TSB_DISK_H

#include "wire/wire.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

struct qmp;
struct wire_tls;
struct diskindex;

#define DISK_MAX 8
/*
 * The sender's window: PAGES frames sent that the receiver has not applied
 * yet, at most DISK_WINDOW frames, DISK_WINDOW_BYTES bytes (one larger
 * frame alone) and DISK_WINDOW_REFS REF entries (the sender keeps the
 * content of its last DISK_WINDOW_REFS REFs to answer NEEDs). Frames
 * of a return migration are mostly REFs and small (1 MiB of disk with 10%
 * changed: ~116 KB), so a window of 16 frames held less than the bytes a
 * 100 Mbit/s, 50 ms path keeps in flight plus the receiver's work.
 */
#define DISK_WINDOW 64
/*
 * A guest's flush waits behind everything in the window (write-blocking
 * mirrors: its writes wait for the bulk copy's), so the bytes stay about
 * what 16 frames of a fresh disk's compressible data were.
 */
#define DISK_WINDOW_BYTES (8u << 20)
#define DISK_WINDOW_REFS (32u * DISK_BATCH)
/* PING tokens with this bit are keepalives (PONG only, no flush). */
#define DISK_TOKEN_KEEPALIVE (1ull << 63)
#define DISK_KEEPALIVE_MS 3000
/* Entries per PAGES frame on the disk channel. */
#define DISK_BATCH 256

/* ---- source side ---- */

/*
 * How the source QEMU's mirror copies the guest's writes (QEMU's
 * MirrorCopyMode). Write-blocking (active mirroring) copies each guest
 * write to the target before the guest sees it complete: the disk
 * channel's window then paces the guest's writes to the link, and the
 * mirror converges whatever the guest writes. Background copies dirty
 * areas behind the guest: the guest never waits, but a guest that
 * writes faster than the link keeps the mirror from ever being ready.
 * Auto starts in background and restarts a mirror that stops converging
 * in write-blocking (its blocks already at the target cross as REFs).
 */
enum disk_copy_mode {
	DISK_COPY_AUTO,			/* the default */
	DISK_COPY_WRITE_BLOCKING,
	DISK_COPY_BACKGROUND,
};

/*
 * The mirror's buf-size in write-blocking mode: the bulk copy's data in
 * flight to our NBD server. A guest write waits behind it, each request
 * for a window slot (at 20 Mbit/s: writes of up to 14 s with QEMU's
 * default of 10 MiB, 1.3 s with this).
 */
#define DISK_MIRROR_BUF_ACTIVE (1u << 20)

/* The name of a copy mode ("auto", "write-blocking", "background": QEMU's for the last two). */
const char *disk_copy_mode_name(enum disk_copy_mode m);

struct disk_send_options {
	const char *host, *port;	/* the receiver (same as the main connection) */
	struct wire_tls *tls;		/* client context (borrowed) */
	const char *migration;		/* id naming the main connection, or NULL */
	const char *only[DISK_MAX];	/* --disk DEVICE...; none: every writable disk */
	unsigned n_only;
	uint64_t stall_ms;		/* wire timeout; 0: none */
	uint64_t ready_timeout_ms;	/* mirror convergence; 0: none */
	enum disk_copy_mode copy_mode;	/* of every mirror job */
	volatile int *abort_flag;	/* non-zero: give up (signal) */
	/* Called about every 5 s while the mirrors converge (main link keepalive). */
	void (*keepalive)(void *opaque);
	void *keepalive_opaque;
	/*
	 * Complete the mirror's flushes (and FUA writes) only once the
	 * receiver has flushed (always with nbd_listen: libvirt trusts its
	 * mirror's completion alone). Otherwise they are passed on and
	 * complete at once: the receiver's DONE before the commit covers
	 * them, and the flush of the source's stop (QEMU's vm_stop flushes
	 * every disk) costs no WAN round trip inside the downtime.
	 */
	bool flush_waits;
	/*
	 * libvirt drives the source QEMU's mirror (docs/libvirt.md): instead
	 * of asking QMP, these are the disks (each's device is the NBD export
	 * name libvirt's mirror asks for, with its size and image file), and
	 * one NBD server listens on nbd_listen (HOST:PORT) for the mirror.
	 * No jobs of ours; one disk (libvirt uses one port for all exports).
	 */
	const char *nbd_listen;
	const char *given_names[DISK_MAX], *given_files[DISK_MAX];
	uint64_t given_sizes[DISK_MAX];
	unsigned n_given;
};

struct disk_send;

/* How many disks disk_send_start would move (o->only applied), or -errno. */
int disk_send_count(struct qmp *q, const struct disk_send_options *o, char *err,
		    size_t errlen);

/*
 * Finds the disks of the source VM (query-block: inserted, writable;
 * or the ones named), connects the disk channel, starts one NBD server
 * and one mirror job per disk and waits until every job is ready.
 * *ret is NULL (and 0 returned) when the VM has no disk to move.
 * On failure everything started is undone (the source keeps its disks)
 * and err says why. Free with disk_send_finish().
 */
int disk_send_start(struct qmp *q, const struct disk_send_options *o,
		    struct disk_send **ret, char *err, size_t errlen);

/*
 * At pre-switchover (the source VM is stopped): completes every mirror
 * without pivot (block-job-cancel on a ready job; its flushes complete
 * here, without a WAN round trip), removes the NBD nodes and sends DONE.
 * It does not wait for the receiver: the switchover goes on at once and
 * the receiver says PREPARED only once every write is applied and flushed
 * at the destination. 0 or -errno (err says why): then the migration must
 * be cancelled.
 */
int disk_send_switchover(struct disk_send *ds, struct qmp *q, char *err,
			 size_t errlen);

/*
 * libvirt (nbd_listen): its migration succeeded, so its mirror completed
 * (its last flush, which waits for the receiver, came back): sends DONE.
 * 0 or -errno (err says why).
 */
int disk_send_libvirt_done(struct disk_send *ds, char *err, size_t errlen);

/*
 * Before committing the switchover: waits (at most timeout_ms) for the
 * receiver's DONE on the disk channel, its word that every write is
 * applied and flushed at the destination. 0 (also for ds NULL), -EIO
 * when the channel failed, -ETIMEDOUT; err says why. Without it, no
 * commit: the source takes the guest back.
 */
int disk_send_confirmed(struct disk_send *ds, uint64_t timeout_ms, char *err, size_t errlen);

/*
 * The image files of the disks moved (at most max, paths valid until
 * disk_send_finish): after a migration they stay here as the VM's old
 * copies, which the store remembers (store_disk_note).
 */
size_t disk_send_images(struct disk_send *ds, const char **out, size_t max);

/*
 * True if a block with this content was sent to the destination's disks
 * (a Bloom filter: rarely a false hit). Memory pages with such content
 * can travel as references: the receiver rebuilds them from the disk
 * (disk_recv_get). Any thread; ds may be NULL.
 */
bool disk_send_has(struct disk_send *ds, const uint8_t hash[32]);

/*
 * The migration failed: the disk transfer fails too, at once (libvirt's
 * mirrors get an error for every request from now on, and no new
 * connection). Any thread; does not block; disk_send_finish() still
 * frees. Accepts NULL.
 */
void disk_send_abort(struct disk_send *ds, const char *why);

/* True once the disk channel or a mirror failed (err says why). */
bool disk_send_failed(struct disk_send *ds, char *err, size_t errlen);

/*
 * Stops everything (cancelling jobs still running: the source keeps
 * its own disks), adds a "disks" report to report (may be NULL) and
 * frees. Accepts NULL.
 */
void disk_send_finish(struct disk_send *ds, struct qmp *q, json_t *report);

/*
 * ---- a standby's staleness (standby.c; docs/standby.md, "Disks") ----
 *
 * A dirty bitmap named DISK_STALE_PREFIX + round id on each disk a sync
 * round moved counts the guest's writes since that round's copy: what
 * the standby lacks of the disks once the round is kept.
 */
#define DISK_STALE_PREFIX "tsb-standby-"

/* At a round's end, before its mirrors complete: the round's bitmap on every disk moved. */
int disk_stale_begin(struct disk_send *ds, struct qmp *q, const char *round, char *err,
		     size_t errlen);
/*
 * After the round: kept, every other such bitmap goes (this one says what
 * the standby lacks now); not kept, this one goes (the older one still
 * counts since the last kept round). Errors are only logged.
 */
void disk_stale_settle(struct disk_send *ds, struct qmp *q, const char *round, bool kept);
/*
 * Bytes of the source's disks written since the standby's last kept round
 * (per disk its largest such bitmap, at the bitmap's granularity): 0 when
 * none; -errno on a QMP failure.
 */
int64_t disk_stale_bytes(struct qmp *q);

/* ---- destination side ---- */

struct disk_recv_options {
	struct wire_tls *tls;		/* server context (borrowed) */
	/*
	 * libvirt (docs/libvirt.md): no QMP; the destination QEMU that
	 * libvirt prepared exports the disks on nbd_connect (HOST:PORT) under
	 * the names the sender's disk list gives. NULL: QMP exports.
	 */
	const char *nbd_connect;
	/*
	 * A standby (docs/standby.md): no QEMU; each disk of the sender's
	 * list is the raw image <standby_dir>/<device>.raw, created or
	 * resized to the disk's size and written in place. NULL: QMP exports.
	 */
	const char *standby_dir;
	int listen_fd;			/* taken over: the disk channel arrives here */
	struct diskindex *index;	/* blocks to rebuild REFs from (borrowed; read only) */
	uint64_t stall_ms;		/* wire timeout; 0: none */
	/* Only the sender of this migration, with the credential it came with. */
	const char *migration;		/* its id */
	const char *credential;		/* wire_conn_peer() of its main connection */
};

struct disk_recv;

/* How long a libvirt destination may take to export its disks (nbd_connect). */
#define DISK_LIBVIRT_WAIT_MS (120 * 1000)

/*
 * Exports every writable disk of the destination QEMU over NBD on a
 * private unix socket (nbd-server-start + block-export-add) and starts
 * the thread that accepts the disk channel and applies what comes.
 * Every target written to is marked "<image>.tsubame-incomplete" until
 * disk_recv_finish() says the migration succeeded.
 */
int disk_recv_start(struct qmp *q, const struct disk_recv_options *o,
		    struct disk_recv **ret, char *err, size_t errlen);

/*
 * Ends the disk side. ok: the migration succeeded; returns 0 when the
 * disk channel had ended cleanly too (markers removed), else -EIO and
 * the markers stay. Stops the exports, adds a "disks" report to report
 * (may be NULL), frees. Accepts NULL (returns 0).
 */
int disk_recv_finish(struct disk_recv *dr, struct qmp *q, bool ok,
		     json_t *report, char *err, size_t errlen);

/*
 * Page-cache restore: a block with this content written to a target disk
 * during this migration. _has is a lookup; _get reads the block back from
 * the destination QEMU and checks its hash (0, or -ENOENT when it is not
 * there any more). Any thread; dr may be NULL.
 */
bool disk_recv_has(struct disk_recv *dr, const uint8_t hash[32]);
int disk_recv_get(struct disk_recv *dr, const uint8_t hash[32], uint8_t out[WIRE_PAGE_SIZE]);

/*
 * The target image files that received a whole disk (the channel ended
 * with DONE; at most max, valid until disk_recv_finish): the arrived VM's
 * disks, which the store remembers (store_disk_note).
 */
size_t disk_recv_images(struct disk_recv *dr, const char **out, size_t max);

/*
 * Stops waiting for a disk channel that has not come yet and frees the
 * listening port (the switchover may need it for the sender's decision).
 */
void disk_recv_stop_listening(struct disk_recv *dr);

/* True once the disk channel failed. */
bool disk_recv_failed(struct disk_recv *dr);

/*
 * Before the receiver says PREPARED: waits until the disk channel, if one
 * came, ended with DONE (every write applied and flushed at the
 * destination). The sender no longer waits for that DONE inside the
 * downtime; our PREPARED carries the guarantee instead. 0 (also when no
 * channel came), -EIO when the disk transfer failed, -EINTR on a signal
 * (*sig non-zero), -ETIMEDOUT after timeout_ms (0: none); err says why.
 */
int disk_recv_wait_done(struct disk_recv *dr, uint64_t timeout_ms, volatile int *sig,
			char *err, size_t errlen);

#endif
