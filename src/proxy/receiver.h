/*
 * The receiver's state and what its files share (recv.c: setup, threads
 * and the end; recv_rebuild.c: QEMU's stream rebuilt from the sender's
 * frames; recv_switchover.c: PREPARED, the decision, the outcome;
 * recv_report.c: the report). Not used outside them.
 */
#ifndef TSB_PROXY_RECEIVER_H
#define TSB_PROXY_RECEIVER_H

#include "proxy/imagerec.h"
#include "proxy/internal.h"
#include "proxy/pagereq.h"
#include "proxy/record.h"
#include "proxy/resume.h"

#include "common/buf.h"
#include "qstream/qstream.h"
#include "wire/lanes.h"
#include "wire/need.h"
#include "wire/wire.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qmp;
struct wire_tls;

/* Frames from the fuzzer's input instead of a sender (proxy_recv_fuzz()). */
struct fuzz_input {
	const uint8_t *p;
	size_t len, off;
};

/*
 * Where rebuilt pages come from (content.h) and the buffers of one batch.
 * Set up by the main thread; the WAN thread's only, once it runs.
 */
struct rebuild {
	struct pagecache *cache;	/* mirrors the sender's content cache */
	struct pagecache *fetched;	/* pages that came in HASHDATA (not mirrored) */
	struct store *store;
	struct diskindex *disks;
	struct disk_recv *disk;		/* the disk channel (docs/disk.md), or NULL */
	uint8_t page_buf[WIRE_PAGE_SIZE];
	uint8_t missing[WIRE_MAX_BATCH_PAGES][WIRE_HASH_LEN];
	uint8_t data_hash[WIRE_MAX_BATCH_PAGES][WIRE_HASH_LEN];
	/* The image of ours that SAME and SAMERUN entries refer to (BASE). */
	struct store_image *base;
	int base_block[WIRE_MAX_BLOCKS];
	uint8_t run_hashes[WIRE_MAX_SAMERUN][WIRE_HASH_LEN];
	uint8_t *run_buf;		/* WIRE_MAX_SAMERUN pages */
};

struct receiver {
	const struct proxy_recv_options *o;
	struct wire_conn *conn;		/* NULL when fuzzing: frames come from fuzz */
	/* More lanes of the stream (recv_lanes.c): lanes[i] is lane i + 1. */
	struct wire_conn *lanes[WIRE_MAX_LANES - 1];
	unsigned n_lanes;		/* 0 or 1: the main connection only */
	struct wire_lanes *lane_reader;	/* reads all lanes when n_lanes > 1 */
	struct fuzz_input *fuzz;
	pthread_mutex_t send_lock;	/* one writer at a time on conn */
	int qfd;
	pthread_t th_wan, th_ret;	/* recv.c's threads, while threads */
	bool threads;

	/* WAN thread only. */
	struct qs_writer *writer;
	/* The RAM blocks the sender declared: blocks[i] is allocated when
	 * block i is first declared (then block_known[i]) and kept until
	 * receiver_free(); the writer may hold on to it. */
	struct qs_block *blocks[WIRE_MAX_BLOCKS];
	bool block_known[WIRE_MAX_BLOCKS];
	struct wire_zstd *z;
	struct tsb_buf scratch, copy;
	struct wire_backlog backlog;	/* frames read while a NEED waited (wire/need.h) */
	uint64_t ram_limit;		/* RAM the stream may describe (destination's) */
	char why[160];			/* what a peer-size check refused */
	const uint8_t (*fetching)[WIRE_HASH_LEN]; /* what fetch_missing() waits for */
	size_t n_fetching;
	uint64_t written, acked_sent;

	atomic_int failed;
	enum proxy_outcome outcome;
	char error[512];
	atomic_bool sender_closed;	/* clean end of the connection */
	atomic_bool prepared;		/* PREPARED sent: only the decision counts now */
	atomic_bool link_lost;		/* the connection ended while prepared */
	atomic_int decision;		/* WIRE_DECIDE_* from the main connection */
	bool early_ok;			/* WIRE_CAP_EARLY agreed: COMMIT may precede PREPARED */
	bool live_ok;			/* WIRE_CAP_LIVE agreed: LIVE entries may wait */
	bool live_gave_up;		/* one LIVE wait timed out: NEED the rest at once */
	atomic_bool round_done;		/* standby: the sender's DONE ended the round */
	atomic_bool wan_ended;		/* the WAN thread is through */
	uint64_t live_waited, live_ms;	/* LIVE pages found by waiting; time waited */
	atomic_bool error_sent;		/* ERROR told the sender why we failed */
	uint64_t source_stop_ns;	/* the source's STOP time the COMMIT carried, or 0 */
	/* Where the time went (report): the sender in, the guest loaded, postcopy. */
	uint64_t accepted_ns, loaded_ns, postcopy_ns, running_ns;	/* tsb_now_ns() */
	/* Loaded in postcopy: the guest may run before the rest of its memory came. */
	bool in_postcopy;
	atomic_bool ack_often;		/* postcopy: PROXY_ACK_EVERY_PC (the sender's window is short) */
	bool ran_in_postcopy;		/* QEMU still postcopy-active once the guest ran */
	/*
	 * Postcopy faults: pages QEMU asked for (return thread) and how long
	 * each took to reach it (WAN thread), under faults_lock.
	 */
	pthread_mutex_t faults_lock;
	struct pagereq_set faults;
	float *fault_ms;		/* up to FAULT_SAMPLES, allocated at the first */
	size_t n_fault_ms;
	unsigned recoveries;		/* connections that resumed a broken postcopy */
	struct resume_counts resumed;	/* what they carried */
	bool recovered;			/* a broken postcopy resumed and completed */
	uint64_t completed_ns;		/* the destination's migration completed */
	bool first_pages;
	unsigned refused;		/* connections refused before the sender came */
	struct mig_record rec;		/* durable record of the switchover */
	int lock_fd;
	atomic_bool rp_shut;		/* QEMU's SHUT went to the sender */
	atomic_bool qemu_closed;	/* QEMU closed its end of the stream's socket */
	atomic_bool rp_done;		/* the return thread ended (closed, or failed) */
	bool shut_parsed;		/* return thread: SHUT seen in the bytes */

	struct rebuild rb;
	struct image_rec arrival;	/* the arrival image being recorded */
	char vm[WIRE_MAX_ID + 1], tenant[WIRE_MAX_ID + 1], image_id[33];
	char peer_site[WIRE_MAX_ID + 1], peer_image[WIRE_MAX_ID + 1];
	char credential[160];	/* the sender's key id or certificate (wire_conn_peer()) */
	uint64_t peer_gen, summary_bytes;

	/* Statistics. */
	uint64_t pages_zero, pages_data, pages_ref, pages_raw, needs, stream_bytes;
	uint64_t from_cache, from_fetched, from_store, from_disk;
};

/*
 * The migration fails (the first call only says why): QEMU's stream is
 * cut so that it never runs a half-loaded guest. (recv.c)
 */
/* Fault samples kept for the report's percentiles. */
#define FAULT_SAMPLES 65536

/* WAN thread: pg is written to QEMU; times it if QEMU had asked for it. */
void recv_fault_served(struct receiver *rc, const struct qs_page *pg);
/* The report's postcopy.faults: count and percentiles of the service time. */
json_t *recv_faults_report(struct receiver *rc);
/* Ends the WAN and return-path threads (QEMU's stream cut); idempotent. */
void recv_stop_threads(struct receiver *rc);
void recv_fail(struct receiver *rc, enum proxy_outcome oc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* Writes a frame on the main connection, one writer at a time; 0 or -errno. (recv.c) */
int recv_send_locked(struct receiver *rc, const struct tsb_buf *frame);

/* qs_writer output: into the destination QEMU, with credits back. (recv_rebuild.c) */
int recv_to_qemu(void *opaque, const uint8_t *p, size_t n);
/* The WAN thread: handles the sender's frames until the connection ends or fails. */
void recv_process_frames(struct receiver *rc);

/* Waits until the destination QEMU has loaded the guest, paused. (recv_switchover.c) */
void recv_wait_loaded(struct receiver *rc, struct qmp *q, volatile int *sig);
/* PREPARED, the sender's decision, the guest run or discarded, the outcome told. */
void recv_settle(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
		 volatile int *sig, uint64_t *ret_resume_ns);
/*
 * Loading failed where the sender may have committed early (WIRE_CAP_EARLY):
 * QEMU is quit, then the sender hears OUTCOME DISCARDED, on the main
 * connection or when it reconnects, so that its source runs again.
 */
void recv_discard_loading(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
			  volatile int *sig);
/* After a failure: reads the main connection only for a DECISION or its end. */
void recv_drain_for_decision(struct receiver *rc);

/* How long a libvirt destination may take to listen for the stream (no --timeout). */
#define RECV_LIBVIRT_QEMU_WAIT_MS (120 * 1000)

/*
 * How long a LIVE reference waits for another migration of the group to
 * bring its content (its data is at most that migration's window behind).
 */
#define RECV_LIVE_WAIT_MS 10000
/*
 * libvirt (--qemu-connect): waits until the destination QEMU has taken the
 * whole stream and closed its socket (it loaded the guest or failed).
 */
void recv_wait_loaded_libvirt(struct receiver *rc, volatile int *sig);
/*
 * libvirt: PREPARED, then the sender's word on how libvirt's migration
 * ended (libvirt runs or discards the guest itself); the outcome told.
 */
void recv_settle_libvirt(struct receiver *rc, volatile int *sig);

/*
 * LANE 0 of n on the main connection, then the other lanes of this
 * migration from the listening socket, and a reader for them all.
 * (recv_lanes.c) 0, or -1 after recv_fail().
 */
int recv_take_lanes(struct receiver *rc, struct wire_tls *tls, int lfd, volatile int *sig);
/* Stops the lane reader (main must be aborted first) and frees the lanes. */
void recv_lanes_free(struct receiver *rc);

/* The JSON report of a run (`tsubame recv --report`). (recv_report.c) */
json_t *recv_make_report(struct receiver *rc, uint64_t start_ns, uint64_t resume_ns);

#endif
