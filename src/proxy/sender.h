/*
 * The sender's state, shared by its files: send.c (the threads, QEMU, the
 * switchover), send_encode.c (how each page of QEMU's stream travels) and
 * send_report.c (what it reports). Not used outside src/proxy/send*.c.
 */
#ifndef TSB_PROXY_SENDER_H
#define TSB_PROXY_SENDER_H

#include "proxy/content.h"
#include "proxy/hashset.h"
#include "proxy/imagerec.h"
#include "proxy/pagereq.h"
#include "proxy/internal.h"
#include "proxy/pagecache.h"
#include "proxy/record.h"
#include "proxy/resume.h"

#include "migctl/migctl.h"
#include "qstream/qstream.h"
#include "wire/codec.h"
#include "wire/wire.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum job_kind {
	JOB_PAGES,	/* pb holds a batch */
	JOB_RUN,	/* buf holds verbatim stream bytes */
	JOB_FRAME,	/* buf holds a ready frame */
};

struct job {
	enum job_kind kind;
	struct wire_pages_builder pb;
	struct tsb_buf buf;
	uint32_t n_zero, n_data, n_ref, n_raw;
	uint32_t n_same, n_group, n_disk;	/* pages in REF-like entries by source */
	uint32_t same_bytes;			/* bytes of SAME and SAMERUN entries */
	/* Its last stream content is a page record (send_urgent.c). */
	bool ends_after_page;
	bool urgent;				/* a requested page: never held back */
	bool main_only;				/* a control frame: main connection only */
	uint64_t stream_bytes;			/* QEMU stream bytes it carries */
	struct job *next;
};

/* Bytes on the WAN by what they carried (application bytes, before TLS). */
struct wan_counts {
	uint64_t headers;	/* frame headers, PAGES headers, DATA entries */
	uint64_t zero;		/* ZERO entries */
	uint64_t reference;	/* REF entries: content seen earlier in this migration */
	uint64_t reused;	/* SAME entries: the receiver's older image of this VM */
	uint64_t group;		/* REF entries: the receiver's store (other VMs of the tenant) */
	uint64_t disk;		/* REF entries: blocks of the receiver's disk images */
	uint64_t literal;	/* literal areas sent uncompressed */
	uint64_t compressed;	/* literal areas sent as zstd */
	uint64_t literal_in;	/* uncompressed size of the literal areas */
	uint64_t stream;	/* STREAM runs (device state, section framing) */
	uint64_t stream_in;	/* their size before compression */
	uint64_t control;	/* BLOCKS, HASHDATA, DONE, ... */
	uint64_t raw_entries;	/* RAW (XBZRLE) entries */
};

/* How long the best end-to-end rate seen stands for the link's (postcopy's window). */
#define RATE_BEST_NS (10 * 1000000000ull)
/* Rates (one per half second or more) auto mode takes the lowest of. */
#define RATE_HIST 4
/*
 * Jobs (batches being filled, queued or sent). In postcopy the queue holds
 * what the parse thread read past the window for a requested page
 * (URGENT_CREDIT) in 16-page batches: with fewer jobs than that the parse
 * thread would wait for one, and QEMU's requested page behind it.
 */
#define N_JOBS 16
/*
 * Stream bytes read past the window while a requested page is awaited,
 * and past its request: QEMU sends it next, behind what its buffer and
 * our socket hold (well under this); one not met by then was sent before
 * (the request crossed it) and is forgotten, as after URGENT_TTL_NS.
 */
#define URGENT_CREDIT (512u << 10)
#define URGENT_TTL_NS 2000000000ull
/* Delay samples in flight, one per DELAY_SAMPLE_EVERY stream bytes. */
#define DELAY_SAMPLES 1024
#define DELAY_SAMPLE_EVERY (256u << 10)
#define DELAY_MIN_PERIOD_NS 10000000000ull
/* Literal bytes a batch needs for its compression to be a sample. */
#define LEVEL_SAMPLE_MIN (256u << 10)
#define N_LEVELS 3
static const int zstd_levels[N_LEVELS] = { 0, 1, 3 }; /* 0: uncompressed */

struct fuzz_input;

struct sender {
	const struct proxy_send_options *o;
	struct disk_send *disks;	/* local disks moved with the VM, or NULL */
	struct wire_conn *conn;		/* NULL when fuzzing: messages come from fuzz */
	/* More lanes of the stream (send_lanes.c): lanes[i] is lane i + 1. */
	struct wire_conn *lanes[WIRE_MAX_LANES - 1];
	unsigned n_lanes;		/* 1: the main connection only */
	uint64_t lane_seq;		/* ordered frames written (WAN thread) */
	struct fuzz_input *fuzz;
	int qfd;

	/* Parse thread only. */
	struct qs_parser *parser;
	struct job *cur;
	uint8_t *readbuf;

	/* Content cache, shared with the return thread (NEED). */
	pthread_mutex_t cache_lock;
	struct pagecache *cache;
	struct hashset seen;	/* every content this migration handled: NEED scope */

	/* Job queue: parse thread -> WAN thread; bounded by the job pool. */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job jobs[N_JOBS];
	struct job *free_jobs;
	struct job *queue_head, *queue_tail;
	bool queue_closed;

	/* Credits: stream bytes parsed vs written into the destination QEMU. */
	uint64_t acked;
	uint64_t window, window_max;
	uint64_t ack_rate_t0_ns, ack_rate_b0;
	uint64_t rate_best, rate_best_ns; /* the highest lately (RATE_BEST_NS), when */
	uint64_t rate_hist[RATE_HIST];	/* the last rates measured */
	unsigned rate_hist_n;
	_Atomic uint64_t rate_recent;	/* the lowest of them (migctl reads it) */
	bool window_postcopy;		/* the window was cut for postcopy */
	uint64_t pc_rate_from;		/* stream sent then: rates count from its ACK */
	/*
	 * End-to-end delay (parsed here -> written there), from (offset, time)
	 * samples matched with ACKs; its minimum over ~10 s is the path's
	 * delay without our own queueing, so the window covers the
	 * bandwidth-delay product. Under lock.
	 */
	struct { uint64_t off, t; } delay_ring[DELAY_SAMPLES];
	unsigned delay_head, delay_count;
	uint64_t delay_last_off, delay_min, delay_min_cur, delay_min_t0;
	/*
	 * Slow start: while the window is what holds the stream back, every
	 * acknowledged byte adds one to it, so it doubles each round trip
	 * instead of growing by a quarter every half second; it ends when a
	 * round trip delivers less than 1.25 times the one before (the path
	 * is full) or the delay doubles.
	 */
	bool slow_start;
	atomic_bool in_postcopy;	/* QEMU was told to switch: a short window */
	unsigned recoveries;		/* connections that resumed a broken postcopy */
	struct resume_counts resumed;	/* what they carried */
	bool credit_blocked; /* the parse thread waits for credits now */
	uint64_t ss_wait0;   /* credit_wait_ns at the previous ACK */
	uint64_t round_end, round_acked0, round_t0, round_rate;

	/* Outcome. */
	atomic_int failed;
	volatile int abort_flag;
	enum proxy_outcome outcome;
	char error[512];
	bool peer_done;		/* receiver sent DONE OK */
	char peer_done_text[WIRE_MAX_TEXT + 1];	/* OUTCOME's text (resume time) */
	/* Switchover (docs/protocol.md): the receiver's word and ours. */
	atomic_bool prepared;	/* PREPARED: the destination holds the guest, paused */
	atomic_bool link_lost;	/* the connection ended after PREPARED */
	atomic_int peer_outcome; /* WIRE_OUTCOME_* on the main connection */
	atomic_bool peer_failed; /* the receiver gave up (ERROR, CANCEL): holds nothing */
	bool decided_commit;	/* the source must never run again */
	bool early_ok;		/* WIRE_CAP_EARLY agreed: commit without waiting for PREPARED */
	bool live_ok;		/* WIRE_CAP_LIVE agreed and a store: o->live is used */
	bool early_commit;	/* (lock) committed before PREPARED: the receiver's OUTCOME
				 * decides, even after its ERROR (our DECISION crossed it) */
	atomic_bool wan_done;	/* the WAN thread ended: the main thread may write */
	bool first_page;
	struct mig_record rec;
	int lock_fd;
	bool stream_done;	/* QEMU closed after a complete stream */
	bool libvirt_ok;	/* libvirt's migration succeeded: the outcome is OK */

	/* Statistics (WAN thread writes wan, parse thread pages). */
	struct wan_counts wan;
	uint64_t pages_zero, pages_data, pages_ref, pages_raw, need_served;
	uint64_t sections, stream_bytes;
	uint64_t switchover_ns;	/* device state began (CLOCK_MONOTONIC) */
	int level;		/* index into zstd_levels */
	double link_speed;	/* bytes/s the link carries when it is the limit */
	double max_rate_seen;	/* highest bytes/s written in one sampling interval */
	uint64_t wan_idle_ns, rate_idle0; /* WAN thread time waiting for jobs */
	uint64_t write_ns, rate_write0;	/* WAN thread time in writes (socket full) */
	unsigned since_probe;	/* batches since one went a level harder */
	uint64_t credit_wait_ns; /* parse thread time spent waiting for credits */
	uint64_t job_wait_ns;	/* time spent waiting for a free job (WAN thread behind) */
	uint64_t rate_jobwait0;
	uint64_t rate_t0_ns, rate_wire0, rate_wait0; /* link sampling interval */
	uint64_t wire_out;	/* bytes written by the WAN thread */
	uint64_t migrate_ns, qemu_done_ns; /* QEMU told to migrate; QEMU completed */
	/* DECISION's text: the migration id and the source's STOP time (recv's downtime). */
	char decision_text[WIRE_MAX_ID + 40];
	double compress_speed[N_LEVELS], ratio[N_LEVELS]; /* per level (EWMA) */
	uint64_t level_uses[N_LEVELS];

	/* What the destination can rebuild beyond this migration (content.h). */
	struct store *store;		/* ours: departure image, NEED service */
	struct image_rec departure;	/* the departure image being recorded (parse thread) */
	struct store_image *manifest;	/* what the receiver still holds of this VM */
	int manifest_block[WIRE_MAX_BLOCKS]; /* our block index -> manifest block */
	uint64_t image_pages[WIRE_MAX_BLOCKS]; /* pages per image block */
	struct peer_view peer;
	bool use_peer;			/* SUMMARY received and usable */
	char vm[WIRE_MAX_ID + 1], tenant[WIRE_MAX_ID + 1], image_id[33];
	char peer_site[WIRE_MAX_ID + 1];
	uint64_t pages_same, pages_group, pages_disk;
	uint64_t pages_live;		/* of pages_group: LIVE, from a sibling moving now */
	uint64_t summary_bytes;

	/*
	 * Pages the destination asked for (postcopy faults; send_urgent.c),
	 * under lock: they go ahead of the queued data when they come by.
	 */
	struct pagereq_set urgent;
	bool wire_after_page;		/* the last job taken ended after a page record */
	bool parse_after_page;		/* parse thread: the last content was a page */
	uint64_t parsed;		/* stream bytes parsed, under lock (for urgent_prune) */
	struct qs_rp_parser *rp;	/* return thread: the requests in RETURN */
	bool rp_broken;			/* it could not be parsed: no requests known */
	/*
	 * Writes into QEMU's return path (rp_lock): the receiver's RETURN, or
	 * our own SHUT once the precopy's device state begins (rp_cut: what
	 * the receiver's QEMU says after that is not passed on).
	 */
	pthread_mutex_t rp_lock;
	bool rp_cut;
	bool postcopy_listen;		/* parse thread: QEMU began a switch to postcopy */
	bool tail_armed;		/* parse thread: watching for the stream's end */
	struct qs_tail tail;		/* (tail.c) */
	bool urgent_encoding;		/* parse thread: encoding a requested page */
	/*
	 * The source stopped for its switchover (atomic): set by our hook at
	 * pre-switchover, or read from migctl's STOP time. From then on no
	 * page goes as a reference the receiver may lack (send_encode.c).
	 */
	bool source_stopped;
	const uint64_t *stop_ns;	/* migctl's result: the STOP event's time, 0 before */
	uint64_t pages_unguessed;	/* parse thread: sent as data for that reason */
	uint64_t urgent_pages;		/* pages sent ahead of the queue */
	/*
	 * In postcopy the WAN thread holds the push back once a window is in
	 * flight, so that what the parse thread read past it for a requested
	 * page waits here, behind that page, not on the link ahead of the
	 * next one. Stream bytes queued so far (parse thread) and sent
	 * (WAN thread, under lock), as the receiver counts them in its ACKs.
	 */
	uint64_t queued_stream;
	uint64_t sent_stream;
	uint64_t push_held_ns;		/* WAN thread: time the push was held */

	/* A sync round to a standby (send_round.c; o->standby_round). */
	struct {
		atomic_bool end;	/* ending: QEMU's migration is being cancelled */
		const char *ended_by;	/* why: "first pass", "pre-switchover", "round limit" */
		/* QEMU's figures when it ended: dirty-sync-count, bytes, bytes/s. */
		uint64_t pass, ram_total, remaining, dirty_rate;
		uint64_t end_ns;
	} round;

	/* Consecutive unchanged pages waiting to go as one SAMERUN (parse thread). */
	struct {
		uint16_t count, qflags, block;
		uint64_t offset;
		uint8_t hashes[WIRE_MAX_SAMERUN][WIRE_HASH_LEN];
	} run;
};


/* ---- send.c ---- */

/* Records the first failure and makes every thread stop. */
void sender_fail(struct sender *s, enum proxy_outcome oc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A free job (waits for one; NULL once failed) and the queue to the WAN thread. */
struct job *sender_job_get(struct sender *s);
void sender_queue_push(struct sender *s, struct job *j, bool front);
/* Sets j's stream_bytes (parse thread; sender_queue_push does it). */
void sender_job_account(struct sender *s, struct job *j);

/* Sends DECISION on the migration's connection once the stream is over; false if gone. */
bool decide_on_main(struct sender *s, int decision);
/* Waits (bounded) for the receiver's OUTCOME on the migration's connection. */
int outcome_on_main(struct sender *s);

/* ---- send_libvirt.c: libvirt drives the source QEMU (docs/libvirt.md) ---- */

/*
 * Listens on --qemu-listen, says so (libvirt_ready) and takes the source
 * QEMU's connection; gives up when libvirt's migration ended first or on
 * a signal. 0 with *ret_fd, or -1 with err.
 */
int sender_libvirt_accept(struct sender *s, int *ret_fd, char *err, size_t errlen);
/*
 * The stream carried: waits for libvirt's verdict (aborting libvirt's job
 * once we failed, or at --timeout or a signal) and tells the receiver
 * (DECISION COMMIT when the domain runs there, ABORT otherwise).
 */
void sender_libvirt_settle(struct sender *s, uint64_t start_ns);

/* ---- send_urgent.c: requested pages overtake the queue ---- */

/* Return thread: notes the page requests in RETURN bytes (QEMU gets them too). */
void urgent_note_return(struct sender *s, const uint8_t *p, size_t n);
/* Forgets requests no page will meet (under s->lock). */
void urgent_prune(struct sender *s);
/* Parse thread: was this page asked for (the request is then forgotten)? */
bool urgent_wanted(struct sender *s, const struct qs_page *pg);
/*
 * Parse thread: encodes pg into a job of its own and queues it ahead of
 * every queued job it may overtake.
 */
int urgent_send_page(struct sender *s, const struct qs_page *pg, uint16_t qflags);
/*
 * Where a requested page may go in the queue head..tail: after the job
 * returned, or at the front (NULL) when the job the WAN thread took last
 * ended after a page record (wire_after_page). Frames (JOB_FRAME) carry
 * no stream and never decide it.
 */
struct job *urgent_insert_after(struct job *head, struct job *tail, bool wire_after_page);
void urgent_free(struct sender *s);

/* ---- send_encode.c: the parse thread's choice for each page ---- */

/* The RAM block table is known: starts the departure image, maps the manifest. */
void encode_image_setup(struct sender *s, const struct qs_event *ev);
/* One page of QEMU's stream into the PAGES job being filled (s->cur). */
int encode_page(struct sender *s, const struct qs_page *pg, uint16_t qflags);
/* Puts the pending run of unchanged pages into the PAGES job. */
int encode_run_emit(struct sender *s);

/* ---- send_lanes.c: the stream over several connections (wire/lanes.h) ---- */

struct wire_tls;

/*
 * Opens lanes 1..n-1 to host:port at once (each: TCP, TLS, HELLO as
 * hello with only WIRE_CAP_LANES, then LANE i of n); the main connection
 * already sent LANE 0. 0, or -errno with err set (none stays open).
 */
int sender_lanes_open(struct sender *s, struct wire_tls *tls, const char *host, const char *port,
		      unsigned n, const struct wire_hello_args *hello, char *err, size_t errlen);
/* The connection the next ordered frame goes on (WAN thread). */
struct wire_conn *sender_lane_next(struct sender *s);
/* The lanes other than main: close_notify after the last frame (clean), or abort. */
void sender_lanes_end(struct sender *s, bool clean);
void sender_lanes_free(struct sender *s);
/* Bytes over all connections of the migration. */
void sender_link_stats(const struct sender *s, struct wire_conn_stats *ret);

/* ---- send_round.c: a sync round to a standby (docs/standby.md) ---- */

/* migctl's tick: ends the round once QEMU's first pass is through or time is up. */
void round_tick(struct sender *s, json_t *stats, uint64_t since_ns);
/* The source stopped for a switchover a round never makes: end the round. */
int round_pre_switchover(struct sender *s, char *err, size_t errlen);
/* The report's "sync": what the standby lacks at the round's end. */
json_t *round_report(const struct sender *s);

/* ---- send_report.c ---- */

struct progress_ctx {
	struct sender *s;
	uint64_t start_ns;
	bool tty;
};

/* migctl's tick: the progress line, and the "postcopy" fault point. */
void report_progress_tick(void *opaque, json_t *stats);
/* The --report of a migration that ran from start_ns to end_ns. */
json_t *report_make(struct sender *s, const struct migctl_result *res, uint64_t start_ns,
		    uint64_t end_ns);
/*
 * The compression floor (--floor): zstd -3 of the distinct pages sent as
 * data. Bytes, or -1; *ret_pages: how many pages.
 */
int64_t report_floor(struct sender *s, uint64_t *ret_pages);

#endif
