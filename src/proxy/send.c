/*
 * The source side: QEMU writes its migration stream into a socketpair; the
 * parse thread splits it into verbatim runs and pages, hashes pages and
 * batches them; the WAN thread compresses and writes frames; the return
 * thread reads the receiver's messages (QEMU's return path, credits,
 * NEED). The main thread drives QEMU over QMP.
 */
#include "proxy/commit.h"
#include "proxy/content.h"
#include "proxy/imagerec.h"
#include "proxy/internal.h"
#include "proxy/record.h"
#include "proxy/hashset.h"
#include "proxy/pagecache.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "migctl/migctl.h"
#include "qmp/qmp.h"
#include "qstream/qstream.h"
#include "wire/codec.h"
#include "wire/need.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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

#define N_JOBS 6
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
	uint64_t window;
	uint64_t ack_rate_t0_ns, ack_rate_b0;
	/*
	 * End-to-end delay (parsed here -> written there), from (offset, time)
	 * samples matched with ACKs; its minimum over ~10 s is the path's
	 * delay without our own queueing, so the window covers the
	 * bandwidth-delay product. Under lock.
	 */
	struct { uint64_t off, t; } delay_ring[DELAY_SAMPLES];
	unsigned delay_head, delay_count;
	uint64_t delay_last_off, delay_min, delay_min_cur, delay_min_t0;

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
	atomic_bool wan_done;	/* the WAN thread ended: the main thread may write */
	bool first_page;
	struct mig_record rec;
	int lock_fd;
	bool stream_done;	/* QEMU closed after a complete stream */

	/* Statistics (WAN thread writes wan, parse thread pages). */
	struct wan_counts wan;
	uint64_t pages_zero, pages_data, pages_ref, pages_raw, need_served;
	uint64_t sections, stream_bytes;
	uint64_t switchover_ns;	/* device state began (CLOCK_MONOTONIC) */
	int level;		/* index into zstd_levels */
	double link_speed;	/* bytes/s the link carries when it is the limit */
	double max_rate_seen;	/* highest bytes/s written in one sampling interval */
	uint64_t wan_idle_ns, rate_idle0; /* WAN thread time waiting for jobs */
	unsigned since_probe;	/* batches since one went a level harder */
	uint64_t credit_wait_ns; /* parse thread time spent waiting for credits */
	uint64_t job_wait_ns;	/* time spent waiting for a free job (WAN thread behind) */
	uint64_t rate_jobwait0;
	uint64_t rate_t0_ns, rate_wire0, rate_wait0; /* link sampling interval */
	uint64_t wire_out;	/* bytes written by the WAN thread */
	uint64_t migrate_ns, qemu_done_ns; /* QEMU told to migrate; QEMU completed */
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
	uint64_t summary_bytes;

	/* Consecutive unchanged pages waiting to go as one SAMERUN (parse thread). */
	struct {
		uint16_t count, qflags, block;
		uint64_t offset;
		uint8_t hashes[WIRE_MAX_SAMERUN][WIRE_HASH_LEN];
	} run;
};

/* Records the first failure and makes every thread stop. */
static void fail(struct sender *s, enum proxy_outcome oc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fail(struct sender *s, enum proxy_outcome oc, const char *fmt, ...)
{
	va_list ap;
	int expected = 0;

	if (!atomic_compare_exchange_strong(&s->failed, &expected, 1))
		return;
	va_start(ap, fmt);
	pthread_mutex_lock(&s->lock);
	s->outcome = oc;
	vsnprintf(s->error, sizeof(s->error), fmt, ap);
	s->queue_closed = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	va_end(ap);
	s->abort_flag = 1;
	/* QEMU sees its socket fail and keeps the guest running at the source. */
	if (s->qfd >= 0)
		shutdown(s->qfd, SHUT_RDWR);
	if (s->conn)
		wire_conn_abort(s->conn);
}

/* ---- job queue ---- */

static struct job *job_get(struct sender *s)
{
	struct job *j;

	pthread_mutex_lock(&s->lock);
	if (!s->free_jobs && !s->failed) {
		uint64_t t0 = tsb_now_ns();

		while (!s->free_jobs && !s->failed)
			pthread_cond_wait(&s->cond, &s->lock);
		s->job_wait_ns += tsb_now_ns() - t0;
	}
	j = s->free_jobs;
	if (j)
		s->free_jobs = j->next;
	pthread_mutex_unlock(&s->lock);
	if (!j)
		return NULL;
	wire_pages_builder_reset(&j->pb);
	tsb_buf_reset(&j->buf);
	j->n_zero = j->n_data = j->n_ref = j->n_raw = 0;
	j->n_same = j->n_group = j->n_disk = 0;
	j->same_bytes = 0;
	j->next = NULL;
	return j;
}

static void job_put(struct sender *s, struct job *j)
{
	pthread_mutex_lock(&s->lock);
	j->next = s->free_jobs;
	s->free_jobs = j;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

static void queue_push(struct sender *s, struct job *j, bool front)
{
	pthread_mutex_lock(&s->lock);
	j->next = NULL;
	if (front) {
		j->next = s->queue_head;
		s->queue_head = j;
		if (!s->queue_tail)
			s->queue_tail = j;
	} else if (s->queue_tail) {
		s->queue_tail->next = j;
		s->queue_tail = j;
	} else {
		s->queue_head = s->queue_tail = j;
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

static int run_emit(struct sender *s);

/* Sends the job being filled, if it holds anything. */
static int flush_cur(struct sender *s)
{
	struct job *j;

	if (s->run.count && run_emit(s) < 0)
		return -ENOMEM;
	j = s->cur;
	if (!j)
		return 0;
	if ((j->kind == JOB_PAGES && !j->pb.count) || (j->kind == JOB_RUN && !j->buf.len))
		return 0;
	s->cur = NULL;
	queue_push(s, j, false);
	return 0;
}

/* Makes s->cur a job of this kind, flushing one of another kind. */
static int want_job(struct sender *s, enum job_kind kind)
{
	if (s->cur && s->cur->kind == kind)
		return 0;
	flush_cur(s);
	if (!s->cur) {
		s->cur = job_get(s);
		if (!s->cur)
			return -ECANCELED;
	}
	s->cur->kind = kind;
	return 0;
}

/* Queues a ready frame (from an encoder) ahead of or behind the data. */
static int send_frame(struct sender *s, const struct tsb_buf *frame, bool urgent)
{
	struct job *j = job_get(s);

	if (!j)
		return -ECANCELED;
	j->kind = JOB_FRAME;
	if (tsb_buf_append(&j->buf, frame->data, frame->len) < 0) {
		job_put(s, j);
		return -ENOMEM;
	}
	queue_push(s, j, urgent);
	return 0;
}

/* ---- parse thread: QEMU stream -> jobs ---- */

/*
 * Puts the pending run of unchanged pages into the PAGES job: one SAME
 * entry for a single page, else a SAMERUN with the digest of the hashes.
 */
static int run_emit(struct sender *s)
{
	uint8_t digest[WIRE_HASH_LEN];
	uint16_t n = s->run.count;
	int r = 0, tries;

	if (!n)
		return 0;
	if (n > 1 && wire_sha256(s->run.hashes, (size_t)n * WIRE_HASH_LEN, digest) < 0)
		return -EIO;
	for (tries = 0; tries < 2; tries++) {
		if (!s->cur || s->cur->kind != JOB_PAGES || r == -ENOBUFS) {
			/* Direct, not flush_cur(): that would come back here. */
			if (s->cur && (s->cur->pb.count || s->cur->buf.len)) {
				queue_push(s, s->cur, false);
				s->cur = NULL;
			}
			if (!s->cur)
				s->cur = job_get(s);
			if (!s->cur)
				return -ECANCELED;
			s->cur->kind = JOB_PAGES;
		}
		if (n == 1)
			r = wire_pages_add_ref(&s->cur->pb, s->run.block, s->run.qflags,
					       s->run.offset, WIRE_ENC_SAME, s->run.hashes[0]);
		else
			r = wire_pages_add_samerun(&s->cur->pb, s->run.block, s->run.qflags,
						   s->run.offset, n, digest);
		if (r != -ENOBUFS)
			break;
	}
	if (r < 0)
		return r;
	s->cur->n_same += n;
	s->cur->same_bytes += n == 1 ? 45 : 47;
	s->run.count = 0;
	return 0;
}

/* Adds an unchanged page to the pending run, starting a new one if it does not follow. */
static int run_add(struct sender *s, const struct qs_page *pg, uint16_t qflags,
		   const uint8_t *hash)
{
	uint16_t block = pg->block->index;
	int r;

	if (s->run.count && (s->run.block != block || !(qflags & QS_RAM_CONTINUE) ||
			     s->run.count == WIRE_MAX_SAMERUN ||
			     pg->offset != s->run.offset + (uint64_t)s->run.count * WIRE_PAGE_SIZE)) {
		r = run_emit(s);
		if (r < 0)
			return r;
	}
	if (!s->run.count) {
		s->run.block = block;
		s->run.qflags = qflags;
		s->run.offset = pg->offset;
	}
	memcpy(s->run.hashes[s->run.count++], hash, WIRE_HASH_LEN);
	s->pages_same++;
	return 0;
}

static int on_raw(void *opaque, const uint8_t *p, size_t n)
{
	struct sender *s = opaque;
	int r = s->run.count ? run_emit(s) : 0;

	if (r == 0)
		r = want_job(s, JOB_RUN);

	if (r < 0)
		return r;
	if (tsb_buf_append(&s->cur->buf, p, n) < 0)
		return -ENOMEM;
	s->stream_bytes += n;
	if (s->cur->buf.len >= PROXY_RUN_MAX)
		flush_cur(s);
	return 0;
}

/*
 * Records a page in the departure image (and its content in our store, so
 * that a NEED for a SAME or REF can always be served). True if the store
 * now holds the content.
 */
static bool record_page(struct sender *s, const struct qs_page *pg,
			enum store_page_state state, const uint8_t *hash)
{
	return image_rec_page(&s->departure, pg, state, hash);
}

static bool same_as_manifest(struct sender *s, const struct qs_page *pg, const uint8_t *hash)
{
	int mb = s->manifest_block[pg->block->index];
	const uint8_t *old;

	if (mb < 0)
		return false;
	return store_image_page(s->manifest, mb, pg->offset / STORE_PAGE_SIZE, &old) ==
		       STORE_PAGE_HASH && !memcmp(old, hash, WIRE_HASH_LEN);
}

/* The RAM block table is known: start the departure image, map the manifest. */
static void image_setup(struct sender *s, const struct qs_event *ev)
{
	struct image_rec_block blocks[QS_MAX_BLOCKS];
	struct store_image_info info = { 0 };
	unsigned i, n = ev->ram_setup.n_blocks;
	int ib;

	for (i = 0; i < WIRE_MAX_BLOCKS; i++)
		s->manifest_block[i] = -1;
	if (!s->store || s->departure.image)
		return;
	for (i = 0; i < n; i++) {
		const struct qs_block *b = &ev->ram_setup.blocks[i];

		blocks[i] = (struct image_rec_block){
			.index = b->index, .name = b->name, .name_len = b->name_len,
			.length = b->used_length,
		};
	}
	snprintf(info.id, sizeof(info.id), "%s", s->image_id);
	snprintf(info.vm, sizeof(info.vm), "%s", s->vm);
	info.role = STORE_IMAGE_DEPARTURE;
	snprintf(info.peer_site, sizeof(info.peer_site), "%s", s->peer_site);
	info.peer_generation = s->peer.store_gen;
	image_rec_start(&s->departure, &info, blocks, n);
	for (i = 0; i < n; i++) {
		const struct qs_block *b = &ev->ram_setup.blocks[i];

		if (b->index >= WIRE_MAX_BLOCKS)
			continue;
		ib = s->departure.block[b->index];
		if (ib >= 0)
			s->image_pages[ib] = (b->used_length + STORE_PAGE_SIZE - 1) / STORE_PAGE_SIZE;
		if (s->manifest)
			s->manifest_block[b->index] = store_image_block_find(s->manifest, b->name,
									     b->name_len);
	}
}

/* Where the receiver gets a page's content that this migration does not send. */
enum ref_source {
	REF_NONE,		/* nowhere: the bytes go */
	REF_CACHE,		/* the mirrored cache (it holds it as surely as we do) */
	REF_DISK_CHANNEL,	/* the destination's disk, written by our disk channel */
	REF_STORE,		/* the receiver's store, by its filter (group dedup) */
	REF_DISKS,		/* the receiver's disk images, by their filter */
};

/*
 * The encoding choice for a page that is not in the receiver's older image
 * of this VM. Touches the mirrored cache: call once per page, in stream order.
 */
static enum ref_source choose_ref(struct sender *s, const struct qs_page *pg,
				  const uint8_t *hash)
{
	bool hit;

	pthread_mutex_lock(&s->cache_lock);
	/*
	 * Both caches see the same gets and puts in the same order, so a hit
	 * here means the receiver holds the content too.
	 */
	hit = pagecache_touch(s->cache, hash);
	pthread_mutex_unlock(&s->cache_lock);
	if (hit)
		return REF_CACHE;
	/*
	 * On the destination's disk, written there by this migration's disk
	 * channel (docs/disk.md); a miss is served from our store.
	 */
	if (s->disks && image_rec_has_block(&s->departure, pg->block->index) &&
	    disk_send_has(s->disks, hash))
		return REF_DISK_CHANNEL;
	/* Held by the receiver's store or disks (a false hit costs a NEED). */
	if (s->use_peer && s->peer.has_store && tsb_filter_maybe(&s->peer.store_filter, hash))
		return REF_STORE;
	if (s->use_peer && s->peer.has_disk && tsb_filter_maybe(&s->peer.disk_filter, hash))
		return REF_DISKS;
	return REF_NONE;
}

static void count_ref(struct sender *s, enum ref_source src)
{
	switch (src) {
	case REF_CACHE:
		s->cur->n_ref++;
		s->pages_ref++;
		break;
	case REF_STORE:
		s->cur->n_group++;
		s->pages_group++;
		break;
	case REF_DISK_CHANNEL:
	case REF_DISKS:
		s->cur->n_disk++;
		s->pages_disk++;
		break;
	case REF_NONE:
		break;
	}
}

/* ZERO and XBZRLE pages: recorded as what they are, sent as they came. */
static int add_special_page(struct sender *s, const struct qs_page *pg, uint16_t qflags)
{
	struct wire_pages_builder *pb = &s->cur->pb;
	uint16_t block = pg->block->index;
	int r;

	if (pg->kind == QS_PAGE_ZERO) {
		record_page(s, pg, pg->fill ? STORE_PAGE_UNKNOWN : STORE_PAGE_ZERO, NULL);
		r = wire_pages_add_zero(pb, block, qflags, pg->offset, pg->fill);
		if (r == 0) {
			s->cur->n_zero++;
			s->pages_zero++;
		}
		return r;
	}
	record_page(s, pg, STORE_PAGE_UNKNOWN, NULL);
	r = wire_pages_add_raw(pb, block, qflags, pg->offset, pg->data, pg->len);
	if (r == 0) {
		s->cur->n_raw++;
		s->pages_raw++;
	}
	return r;
}

static int add_page(struct sender *s, const struct qs_page *pg, uint16_t qflags)
{
	uint16_t block = pg->block->index;
	uint8_t hash[WIRE_HASH_LEN];
	enum ref_source src;
	bool kept;
	int r;

	/* A pending run of unchanged pages goes before anything that is not one. */
	if (pg->kind != QS_PAGE_NORMAL) {
		r = s->run.count ? run_emit(s) : 0;
		return r < 0 ? r : add_special_page(s, pg, qflags);
	}
	r = wire_sha256(pg->data, pg->len, hash);
	if (r < 0)
		return r;
	pthread_mutex_lock(&s->cache_lock);
	r = hashset_add(&s->seen, hash);
	pthread_mutex_unlock(&s->cache_lock);
	if (r < 0)
		return r;
	kept = record_page(s, pg, STORE_PAGE_HASH, hash);
	if (s->manifest && same_as_manifest(s, pg, hash))
		/* The receiver still holds this VM's older image: address unchanged. */
		return run_add(s, pg, qflags, hash);
	if (s->run.count) {
		r = run_emit(s);
		if (r < 0)
			return r;
	}
	src = choose_ref(s, pg, hash);
	if (src != REF_NONE) {
		r = wire_pages_add_ref(&s->cur->pb, block, qflags, pg->offset, WIRE_ENC_REF, hash);
		if (r == 0)
			count_ref(s, src);
		return r;
	}
	r = wire_pages_add_data(&s->cur->pb, block, qflags, pg->offset, pg->data);
	if (r < 0)
		return r;
	s->cur->n_data++;
	s->pages_data++;
	pthread_mutex_lock(&s->cache_lock);
	/* Content the store keeps is not copied twice: NEED reads the store. */
	r = pagecache_put(s->cache, hash, kept ? NULL : pg->data);
	pthread_mutex_unlock(&s->cache_lock);
	return r;
}

static int on_page(void *opaque, const struct qs_page *pg)
{
	struct sender *s = opaque;
	uint16_t qflags;
	int r;

	if (!s->first_page) {
		s->first_page = true;
		tsb_fault_point("precopy");
	}
	r = want_job(s, JOB_PAGES);
	if (r < 0)
		return r;
	if (pg->block->index >= WIRE_MAX_BLOCKS)
		return -EMSGSIZE;
	qflags = pg->kind == QS_PAGE_ZERO ? QS_RAM_ZERO :
		 pg->kind == QS_PAGE_XBZRLE ? QS_RAM_XBZRLE : QS_RAM_PAGE;
	if (pg->cont)
		qflags |= QS_RAM_CONTINUE;
	s->stream_bytes += 8 + (pg->cont ? 0 : 1 + pg->block->name_len) + pg->len;
	r = add_page(s, pg, qflags);
	if (r == -ENOBUFS || (r == 0 && s->cur->pb.count >= PROXY_BATCH_PAGES)) {
		flush_cur(s);
		if (r == -ENOBUFS) {
			r = want_job(s, JOB_PAGES);
			if (r == 0)
				r = add_page(s, pg, qflags);
		}
	}
	return r;
}

static int on_event(void *opaque, const struct qs_event *ev)
{
	struct sender *s = opaque;
	struct wire_block blocks[QS_MAX_BLOCKS];
	struct tsb_buf frame;
	unsigned i;
	int r;

	switch (ev->type) {
	case QS_EV_RAM_SETUP:
		if (ev->ram_setup.n_blocks > WIRE_MAX_BLOCKS)
			return -EMSGSIZE;
		image_setup(s, ev);
		for (i = 0; i < ev->ram_setup.n_blocks; i++) {
			blocks[i].index = ev->ram_setup.blocks[i].index;
			blocks[i].name.p = ev->ram_setup.blocks[i].name;
			blocks[i].name.len = ev->ram_setup.blocks[i].name_len;
			blocks[i].used_length = ev->ram_setup.blocks[i].used_length;
		}
		/* The receiver must know the names before the first page. */
		flush_cur(s);
		tsb_buf_init(&frame);
		r = wire_encode_blocks(&frame, blocks, ev->ram_setup.n_blocks);
		if (r == 0)
			r = send_frame(s, &frame, false);
		tsb_buf_fini(&frame);
		return r;
	case QS_EV_SECTION_BEGIN:
		s->sections++;
		return 0;
	case QS_EV_DEVICE_STATE:
		if (!s->switchover_ns) {
			s->switchover_ns = tsb_now_ns();
			tsb_fault_point("source-stopped");
		}
		return 0;
	case QS_EV_COMMAND:
		if (ev->command.cmd == QS_CMD_POSTCOPY_RUN && !s->switchover_ns)
			s->switchover_ns = tsb_now_ns();
		return 0;
	default:
		return 0;
	}
}

/*
 * More of QEMU's stream than the window is unacknowledged (under s->lock).
 * Written without acked + window: an ACK is the receiver's word and may be
 * near 2^64, which must not wrap into "no credit ever".
 */
static bool out_of_credit(const struct sender *s, uint64_t parsed)
{
	return parsed > s->acked && parsed - s->acked > s->window;
}

/* Blocks while the destination is more than a window behind. */
static void wait_for_credit(struct sender *s)
{
	uint64_t parsed = qs_parser_offset(s->parser);

	uint64_t t0 = 0;

	pthread_mutex_lock(&s->lock);
	if (parsed >= s->delay_last_off + DELAY_SAMPLE_EVERY) {
		unsigned i = (s->delay_head + s->delay_count) % DELAY_SAMPLES;

		if (s->delay_count == DELAY_SAMPLES) { /* full: drop the oldest */
			s->delay_head = (s->delay_head + 1) % DELAY_SAMPLES;
			s->delay_count--;
		}
		s->delay_ring[i].off = parsed;
		s->delay_ring[i].t = tsb_now_ns();
		s->delay_count++;
		s->delay_last_off = parsed;
	}
	while (!s->failed && out_of_credit(s, parsed)) {
		if (!t0)
			t0 = tsb_now_ns();
		pthread_cond_wait(&s->cond, &s->lock);
	}
	if (t0)
		s->credit_wait_ns += tsb_now_ns() - t0;
	pthread_mutex_unlock(&s->lock);
}

static bool more_input_ready(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) > 0;
}

static void *parse_thread(void *arg)
{
	struct sender *s = arg;
	bool blocked;
	ssize_t n;
	int r;

	for (;;) {
		/*
		 * Out of credit: what we hold must go out first (a batch of
		 * SAMERUNs can stand for more stream than the whole window).
		 */
		pthread_mutex_lock(&s->lock);
		blocked = out_of_credit(s, qs_parser_offset(s->parser));
		pthread_mutex_unlock(&s->lock);
		if (blocked)
			flush_cur(s);
		wait_for_credit(s);
		if (s->failed)
			break;
		n = read(s->qfd, s->readbuf, PROXY_READ_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fail(s, PROXY_FAILED, "reading the migration stream from QEMU: %s",
			     strerror(errno));
			break;
		}
		if (n == 0) {
			r = qs_parser_finish(s->parser);
			if (r < 0) {
				/* A signal cancelled QEMU's migration: that is why it ended. */
				fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_FAILED,
				     "QEMU closed the migration stream %s: %s",
				     r == -ENODATA ? "before its end" : "after an error",
				     qs_parser_error(s->parser));
				break;
			}
			flush_cur(s);
			s->stream_done = true;
			break;
		}
		r = qs_parser_feed(s->parser, s->readbuf, n);
		if (r < 0) {
			if (!s->failed)
				fail(s, r == -EOPNOTSUPP ? PROXY_UNSUPPORTED : PROXY_FAILED,
				     "cannot carry this migration stream: %s",
				     qs_parser_error(s->parser));
			break;
		}
		/* Nothing more waiting: send what we have rather than sit on it. */
		if (!more_input_ready(s->qfd))
			flush_cur(s);
	}
	if (s->cur) {
		job_put(s, s->cur);
		s->cur = NULL;
	}
	pthread_mutex_lock(&s->lock);
	s->queue_closed = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- WAN thread: jobs -> frames ---- */

/* Exponentially weighted moving average, weight 1/8 for the new sample. */
static double ewma(double avg, double sample)
{
	return avg ? avg + (sample - avg) / 8 : sample;
}

/*
 * Picks the zstd level that moves input bytes fastest: the link drains one
 * batch while the next is compressed, so level L moves
 * min(compress_speed[L], link_speed / ratio[L]) bytes per second. On a
 * slow link the ratio decides and we compress hard; on a fast one (or
 * loopback) we compress less or not at all, so tsubame is not slower than
 * sending raw. Levels not in use keep their last estimates.
 */
static void adapt_level(struct sender *s, int used, size_t in, size_t out, size_t wire,
			uint64_t compress_ns)
{
	double best = 0;
	uint64_t now = tsb_now_ns(), dt, wait, idle, blocked;
	int l;

	if (s->o->zstd_level)
		return;
	s->wire_out += wire;
	dt = now - s->rate_t0_ns;
	if (dt >= 250000000ull) {
		/*
		 * When the parse thread waited for credits most of the interval,
		 * the way to the receiver is the limit: what went out is what
		 * the link carries. Otherwise the link had room to spare.
		 */
		pthread_mutex_lock(&s->lock);
		wait = s->credit_wait_ns - s->rate_wait0;
		s->rate_wait0 = s->credit_wait_ns;
		idle = s->wan_idle_ns - s->rate_idle0;
		s->rate_idle0 = s->wan_idle_ns;
		blocked = s->job_wait_ns - s->rate_jobwait0;
		s->rate_jobwait0 = s->job_wait_ns;
		pthread_mutex_unlock(&s->lock);
		double rate = (double)(s->wire_out - s->rate_wire0) * 1e9 / dt;

		if (s->rate_t0_ns && rate > s->max_rate_seen)
			s->max_rate_seen = rate;
		if (s->rate_t0_ns && wait > dt / 2)
			s->link_speed = ewma(s->link_speed, rate);
		else if (s->rate_t0_ns && blocked > dt / 10 && wait < dt / 20 &&
			 s->link_speed < 4 * s->max_rate_seen)
			/*
			 * QEMU's stream waited for us, not for the link: compression
			 * is the bottleneck and the link has room (a fast LAN or
			 * loopback). Find out quickly, in a second, not ten.
			 */
			s->link_speed *= 2;
		else if (s->rate_t0_ns && idle < dt / 4 && s->link_speed < 4 * s->max_rate_seen)
			/*
			 * The link had room and we were busy compressing: it may
			 * be faster than we think, probe upwards. Not when we
			 * waited for QEMU (phases of references send little and
			 * would make any link look fast), nor far beyond what
			 * ever went out.
			 */
			s->link_speed *= 1.25;
		s->rate_t0_ns = now;
		s->rate_wire0 = s->wire_out;
	}
	/* Small batches say more about fixed costs than about the level. */
	if (used > 0 && compress_ns && in >= LEVEL_SAMPLE_MIN) {
		s->compress_speed[used] = ewma(s->compress_speed[used],
					       (double)in * 1e9 / compress_ns);
		s->ratio[used] = ewma(s->ratio[used], (double)out / in);
	}
	double speed[N_LEVELS];

	for (l = 0; l < N_LEVELS; l++) {
		speed[l] = s->link_speed / (l == 0 ? 1.0 : s->ratio[l]);
		if (l > 0 && s->compress_speed[l] < speed[l])
			speed[l] = s->compress_speed[l];
		if (speed[l] > best)
			best = speed[l];
	}
	/* WAN bytes are the scarce thing: the hardest level within 10% of the best. */
	for (l = N_LEVELS - 1; l >= 0; l--) {
		if (speed[l] >= 0.9 * best) {
			s->level = l;
			break;
		}
	}
}

static void account_pages(struct sender *s, const struct job *j, size_t frame_len,
			  bool zstd, size_t raw_entry_bytes)
{
	size_t entries = j->pb.entries.len;
	size_t literal = frame_len - WIRE_HDR_LEN - 8 - entries;
	uint64_t zero = (uint64_t)j->n_zero * 14;
	uint64_t ref = (uint64_t)(j->n_ref + j->n_group + j->n_disk) * 45 + j->same_bytes;

	s->wan.zero += zero;
	s->wan.reference += (uint64_t)j->n_ref * 45;
	s->wan.reused += j->same_bytes;
	s->wan.group += (uint64_t)j->n_group * 45;
	s->wan.disk += (uint64_t)j->n_disk * 45;
	s->wan.raw_entries += raw_entry_bytes;
	s->wan.headers += WIRE_HDR_LEN + 8 + (entries - zero - ref - raw_entry_bytes);
	if (zstd)
		s->wan.compressed += literal;
	else
		s->wan.literal += literal;
	s->wan.literal_in += (uint64_t)j->n_data * WIRE_PAGE_SIZE;
}

static void *wan_thread(void *arg)
{
	struct sender *s = arg;
	struct wire_zstd *z[N_LEVELS] = { NULL };
	struct tsb_buf out;
	struct job *j;
	uint64_t t0, t1;
	int lvl;
	int i, r;

	tsb_buf_init(&out);
	for (i = 1; i < N_LEVELS; i++) {
		z[i] = wire_zstd_new(zstd_levels[i]);
		if (!z[i]) {
			fail(s, PROXY_FAILED, "out of memory");
			goto out;
		}
	}
	if (s->o->zstd_level) {
		/* A fixed level: use slot 2 with that level (negative: none). */
		wire_zstd_free(z[2]);
		z[2] = s->o->zstd_level > 0 ? wire_zstd_new(s->o->zstd_level) : NULL;
		s->level = s->o->zstd_level > 0 ? 2 : 0;
	}

	for (;;) {
		pthread_mutex_lock(&s->lock);
		if (!s->queue_head && !s->queue_closed) {
			uint64_t idle0 = tsb_now_ns();

			while (!s->queue_head && !s->queue_closed)
				pthread_cond_wait(&s->cond, &s->lock);
			s->wan_idle_ns += tsb_now_ns() - idle0;
		}
		j = s->queue_head;
		if (j) {
			s->queue_head = j->next;
			if (!s->queue_head)
				s->queue_tail = NULL;
		}
		pthread_mutex_unlock(&s->lock);
		if (!j || s->failed)
			break;

		tsb_buf_reset(&out);
		t0 = tsb_now_ns();
		lvl = s->level;
		/*
		 * Now and then a big batch goes one level harder, so that the
		 * estimate of a level not in use does not go stale (one bad
		 * sample must not turn compression off for good).
		 */
		if (j->kind == JOB_PAGES && j->pb.literal.len >= LEVEL_SAMPLE_MIN &&
		    lvl + 1 < N_LEVELS && z[lvl + 1] && ++s->since_probe >= 32) {
			lvl++;
			s->since_probe = 0;
		}
		switch (j->kind) {
		case JOB_PAGES:
			r = wire_pages_encode(&j->pb, &out, z[lvl]);
			break;
		case JOB_RUN:
			r = wire_encode_run(&out, WIRE_MSG_STREAM, j->buf.data, j->buf.len,
					    z[s->level]);
			break;
		default:
			r = tsb_buf_append(&out, j->buf.data, j->buf.len);
			break;
		}
		if (r < 0) {
			fail(s, PROXY_FAILED, "encoding a frame: %s", strerror(-r));
			job_put(s, j);
			break;
		}
		t1 = tsb_now_ns();
		r = wire_conn_write(s->conn, out.data, out.len);
		if (r < 0) {
			fail(s, proxy_outcome_of_errno(r), "sending to the receiver: %s",
			     wire_conn_errmsg(s->conn)[0] ? wire_conn_errmsg(s->conn)
							  : strerror(-r));
			job_put(s, j);
			break;
		}
		s->level_uses[lvl]++;
		if (j->kind == JOB_PAGES) {
			size_t raw_bytes = wire_pages_builder_size(&j->pb);
			bool zstd = out.len > WIRE_HDR_LEN && (out.data[1] & WIRE_F_ZSTD);
			size_t raw_entry = 0;

			(void)raw_bytes;
			if (j->n_raw)
				raw_entry = j->pb.entries.len - (size_t)j->n_zero * 14 -
					    (size_t)(j->n_ref + j->n_group + j->n_disk) * 45 -
					    j->same_bytes - (size_t)j->n_data * 13;
			account_pages(s, j, out.len, zstd, raw_entry);
			/* Only the literal area is compressed: judge levels by it. */
			adapt_level(s, lvl, j->pb.literal.len,
				    out.len - WIRE_HDR_LEN - 8 - j->pb.entries.len, out.len,
				    t1 - t0);
		} else if (j->kind == JOB_RUN) {
			s->wan.stream += out.len;
			s->wan.stream_in += j->buf.len;
		} else {
			s->wan.control += out.len;
		}
		job_put(s, j);
	}
out:
	for (i = 0; i < N_LEVELS; i++)
		wire_zstd_free(z[i]);
	tsb_buf_fini(&out);
	s->wan_done = true;
	return NULL;
}

/* ---- return thread: receiver -> us ---- */

/* Matches an ACK with the delay samples it covers (under s->lock). */
static void sample_delay(struct sender *s, uint64_t acked, uint64_t now)
{
	uint64_t t = 0;

	while (s->delay_count && s->delay_ring[s->delay_head].off <= acked) {
		t = s->delay_ring[s->delay_head].t;
		s->delay_head = (s->delay_head + 1) % DELAY_SAMPLES;
		s->delay_count--;
	}
	if (t && (!s->delay_min_cur || now - t < s->delay_min_cur))
		s->delay_min_cur = now - t;
	if (now - s->delay_min_t0 >= DELAY_MIN_PERIOD_NS) {
		/* A new period: the path may have changed. */
		s->delay_min = s->delay_min_cur;
		s->delay_min_cur = 0;
		s->delay_min_t0 = now;
	}
}

/* The path's delay: the lowest seen in this period or the last one. */
static uint64_t path_delay(const struct sender *s)
{
	if (!s->delay_min || (s->delay_min_cur && s->delay_min_cur < s->delay_min))
		return s->delay_min_cur;
	return s->delay_min;
}

static void update_window(struct sender *s, uint64_t acked)
{
	uint64_t now = tsb_now_ns(), rate, w, w_ms, delay_ms;

	sample_delay(s, acked, now);
	if (!s->ack_rate_t0_ns) {
		s->ack_rate_t0_ns = now;
		s->ack_rate_b0 = acked;
		return;
	}
	if (now - s->ack_rate_t0_ns < 500000000ull)
		return;
	/* Bytes per second delivered end to end, over the last half second or more. */
	rate = (acked - s->ack_rate_b0) * 1000000000ull / (now - s->ack_rate_t0_ns);
	/*
	 * ~150 ms of the rate, or on a long path its bandwidth-delay product
	 * and a quarter more: while the window is what limits the rate, rate x
	 * delay is the window itself, so the quarter makes it grow until the
	 * link is the limit; then a quarter of the delay queues, no more.
	 */
	delay_ms = path_delay(s) / 1000000;
	w_ms = delay_ms + delay_ms / 4 + 25;
	w = rate * (w_ms > PROXY_WINDOW_MS ? w_ms : PROXY_WINDOW_MS) / 1000;
	if (w < PROXY_WINDOW_MIN)
		w = PROXY_WINDOW_MIN;
	if (w > PROXY_WINDOW_MAX)
		w = PROXY_WINDOW_MAX;
	s->window = w;
	s->ack_rate_t0_ns = now;
	s->ack_rate_b0 = acked;
}

/*
 * One page a NEED asks for: only content this migration handled (the store
 * is not an oracle), from the cache or else our store.
 */
static int need_lookup(void *opaque, const uint8_t *hash, uint8_t *out)
{
	struct sender *s = opaque;
	const uint8_t *page;

	pthread_mutex_lock(&s->cache_lock);
	if (!hashset_has(&s->seen, hash)) {
		pthread_mutex_unlock(&s->cache_lock);
		log_warn("the receiver asked for content this migration never referred to: "
			 "refused");
		return -ENOENT;
	}
	/* Peek: a NEED must not change the mirrored cache's order. */
	page = pagecache_peek(s->cache, hash);
	if (page)
		memcpy(out, page, WIRE_PAGE_SIZE);
	pthread_mutex_unlock(&s->cache_lock);
	/* The store without holding up the parse thread. */
	if (!page && (!s->store || store_get(s->store, hash, out) < 0))
		return -ENOENT;
	return 0;
}

static int serve_need(struct sender *s, const struct wire_need *need)
{
	struct tsb_buf frame;
	int r;

	tsb_buf_init(&frame);
	r = wire_need_answer(need, WIRE_PAGE_SIZE, need_lookup, s, NULL, &frame);
	if (r == 0)
		r = send_frame(s, &frame, true);
	tsb_buf_fini(&frame);
	if (r == 0)
		s->need_served += need->count;
	return r;
}

/* Fuzzing: frames come from a buffer (proxy_send_fuzz). */
struct fuzz_input {
	const uint8_t *p;
	size_t len, off;
	uint8_t *payload;	/* the frame's payload in a buffer of its own size */
	/* The sender before the message, for the checks. */
	uint64_t acked;
	bool prepared, peer_failed;
};

/* The receiver's next message (or the fuzzer's): 1, 0 at the end, -errno. */
static int next_msg(struct sender *s, struct wire_msg *m)
{
	struct fuzz_input *in = s->fuzz;
	struct wire_frame f;
	int r;

	if (!in)
		return wire_conn_read_msg(s->conn, WIRE_ROLE_RECEIVER, m);
	if (in->len - in->off < WIRE_HDR_LEN)
		return 0;
	r = wire_header_decode(in->p + in->off, &f);
	if (r < 0)
		return r;
	in->off += WIRE_HDR_LEN;
	if (f.len > in->len - in->off)
		return -EBADMSG;
	/* As wire_conn_read_frame() does: reading past it is a finding. */
	free(in->payload);
	in->payload = malloc(f.len ? f.len : 1);
	if (!in->payload)
		return -ENOMEM;
	memcpy(in->payload, in->p + in->off, f.len);
	f.payload = in->payload;
	in->off += f.len;
	if (!wire_msg_role_ok(f.type, WIRE_ROLE_RECEIVER))
		return -EPROTO;
	r = wire_frame_decode(&f, m);
	return r < 0 ? r : 1;
}

static void fuzz_after_msg(struct sender *s, const struct wire_msg *m);

/* Reads and handles the receiver's messages until the end or a failure. */
static void return_loop(struct sender *s, struct wire_zstd *z)
{
	struct tsb_buf scratch;
	const uint8_t *data;
	struct wire_msg m;
	int r;

	tsb_buf_init(&scratch);
	while (!s->failed) {
		r = next_msg(s, &m);
		if (r <= 0 && s->prepared) {
			s->link_lost = true;
			break;
		}
		if (r <= 0) {
			if (!s->peer_done)
				fail(s, r == 0 ? PROXY_LINK : proxy_outcome_of_errno(r),
				     "the receiver %s", r == 0 ? "closed the connection" :
				     s->conn && wire_conn_errmsg(s->conn)[0] ?
				     wire_conn_errmsg(s->conn) : strerror(-r));
			break;
		}
		switch (m.type) {
		case WIRE_MSG_RETURN:
			r = wire_run_unpack(&m.u.run, z, &scratch, &data);
			if (r == 0)
				r = proxy_write_all(s->qfd, data, m.u.run.raw_len);
			if (r < 0)
				fail(s, PROXY_FAILED, "passing the return path to QEMU: %s",
				     strerror(-r));
			break;
		case WIRE_MSG_ACK:
			pthread_mutex_lock(&s->lock);
			if (m.u.ack > s->acked) {
				s->acked = m.u.ack;
				update_window(s, m.u.ack);
			}
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			break;
		case WIRE_MSG_NEED:
			r = serve_need(s, &m.u.need);
			if (r < 0) {
				if (s->conn)
					wire_conn_send_status(s->conn, WIRE_MSG_ERROR,
							      WIRE_CODE_NOT_FOUND,
							      "content asked for is not held");
				fail(s, PROXY_FAILED, "cannot serve the receiver's NEED: %s",
				     strerror(-r));
			}
			break;
		case WIRE_MSG_DONE:
			if (m.u.status.code == WIRE_CODE_OK) {
				snprintf(s->peer_done_text, sizeof(s->peer_done_text), "%.*s",
					 (int)m.u.status.text.len, m.u.status.text.p);
				s->peer_done = true;
			} else {
				s->peer_failed = !s->prepared;
				fail(s, PROXY_FAILED, "the receiver failed: %.*s",
				     (int)m.u.status.text.len, m.u.status.text.p);
			}
			break;
		case WIRE_MSG_PREPARED:
			s->prepared = true;
			break;
		case WIRE_MSG_OUTCOME:
			snprintf(s->peer_done_text, sizeof(s->peer_done_text), "%.*s",
				 (int)m.u.status.text.len, m.u.status.text.p);
			s->peer_outcome = (int)m.u.status.code;
			break;
		case WIRE_MSG_ERROR:
		case WIRE_MSG_CANCEL:
			if (s->prepared) {
				/* Holding the guest, it can only wait: settle by reconnecting. */
				log_warn("the receiver: %.*s", (int)m.u.status.text.len,
					 m.u.status.text.p);
				s->link_lost = true;
				break;
			}
			s->peer_failed = true;
			fail(s, m.u.status.code == WIRE_CODE_UNSUPPORTED ? PROXY_UNSUPPORTED
									  : PROXY_FAILED,
			     "the receiver %s: %.*s",
			     m.type == WIRE_MSG_ERROR ? "reported an error" : "cancelled",
			     (int)m.u.status.text.len, m.u.status.text.p);
			break;
		default:
			break;
		}
		if (s->fuzz)
			fuzz_after_msg(s, &m);
	}
	tsb_buf_fini(&scratch);
}

static void *return_thread(void *arg)
{
	struct sender *s = arg;
	struct wire_zstd *z = wire_zstd_new(1);

	if (z)
		return_loop(s, z);
	wire_zstd_free(z);
	return NULL;
}

/* ---- main thread ---- */

/* Capabilities that change the stream format in ways we do not carry. */
static const char *const caps_off[] = {
	"xbzrle", "compress", "multifd", "postcopy-preempt", "x-colo",
	"dirty-bitmaps", "block", "x-ignore-shared",
};

static int setup_source(struct sender *s, struct qmp *q, struct migctl_options *mo,
			char *err, size_t errlen)
{
	json_t *list = json_array(), *args, *st = NULL;
	const char *status;
	unsigned i;
	int r;

	r = qmp_execute(q, "query-status", NULL, &st, err, errlen);
	if (r < 0)
		goto out;
	status = json_string_value(json_object_get(st, "status"));
	if (!status || (strcmp(status, "running") && strcmp(status, "paused"))) {
		snprintf(err, errlen, "the source VM is '%s', not running",
			 status ? status : "?");
		r = -EPROTO;
		goto out;
	}
	for (i = 0; i < TSB_ARRAY_SIZE(caps_off); i++) {
		bool wanted = false;
		unsigned k;

		for (k = 0; k < mo->n_caps; k++)
			wanted |= !strcmp(mo->caps[k], caps_off[i]);
		if (wanted) {
			snprintf(err, errlen, "capability %s changes the stream in a way "
				 "tsubame does not carry", caps_off[i]);
			r = -EOPNOTSUPP;
			goto out;
		}
		json_array_append_new(list, json_pack("{s:s, s:b}", "capability",
						      caps_off[i], "state", 0));
	}
	/* The source must hear of a failure at the destination. */
	json_array_append_new(list, json_pack("{s:s, s:b}", "capability", "return-path",
					      "state", 1));
	args = json_pack("{s:o}", "capabilities", list);
	list = NULL;
	/* Unknown capabilities (older QEMUs) are reported, not fatal, one by one. */
	r = qmp_execute(q, "migrate-set-capabilities", args, NULL, err, errlen);
	json_decref(args);
	if (r < 0) {
		/* Retry with only those this QEMU knows: return-path is the one that matters. */
		args = json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability",
				 "return-path", "state", 1);
		r = qmp_execute(q, "migrate-set-capabilities", args, NULL, err, errlen);
		json_decref(args);
		if (r < 0)
			goto out;
	}
	r = migctl_prepare_source(q, mo, err, errlen);
out:
	json_decref(list);
	json_decref(st);
	return r;
}

/* The VM's id in stores: --vm-id, else QEMU's -name, else its UUID. */
static int vm_identity(struct qmp *q, const char *given, char out[WIRE_MAX_ID + 1],
		       char *err, size_t errlen)
{
	json_t *ret = NULL;
	const char *v = given;
	size_t i, n;
	int r = 0;

	if (!v && qmp_execute(q, "query-name", NULL, &ret, NULL, 0) == 0)
		v = json_string_value(json_object_get(ret, "name"));
	if (!v || !*v) {
		json_decref(ret);
		ret = NULL;
		if (qmp_execute(q, "query-uuid", NULL, &ret, NULL, 0) == 0)
			v = json_string_value(json_object_get(ret, "UUID"));
		if (v && !strcmp(v, "00000000-0000-0000-0000-000000000000"))
			v = NULL;
	}
	if (!v || !*v) {
		snprintf(err, errlen, "the VM has neither a name nor a UUID: give --vm-id");
		r = -EINVAL;
		goto out;
	}
	n = strlen(v);
	for (i = 0; i < n; i++)
		if (v[i] < 0x21 || v[i] > 0x7e || v[i] == '/')
			break;
	if (n > WIRE_MAX_ID || i < n) {
		snprintf(err, errlen, "VM id '%s' is not usable (1-%d printable characters, "
			 "no spaces or '/'): give --vm-id", v, WIRE_MAX_ID);
		r = -EINVAL;
		goto out;
	}
	memcpy(out, v, n + 1);
out:
	json_decref(ret);
	return r;
}

/*
 * Reads the receiver's SUMMARY and finds what it still holds of this VM.
 * err explains a failure (the receiver's own words if it refused us).
 */
static int take_summary(struct sender *s, char *err, size_t errlen)
{
	struct wire_msg m;
	int r;

	r = wire_conn_read_msg(s->conn, WIRE_ROLE_RECEIVER, &m);
	if (r == 0)
		r = -ECONNRESET;
	if (r < 0) {
		snprintf(err, errlen, "reading the receiver's summary: %s",
			 wire_conn_errmsg(s->conn)[0] ? wire_conn_errmsg(s->conn) : strerror(-r));
		return r;
	}
	if (m.type == WIRE_MSG_ERROR || m.type == WIRE_MSG_CANCEL) {
		snprintf(err, errlen, "the receiver refused the migration: %.*s",
			 (int)m.u.status.text.len, m.u.status.text.p);
		return -ECONNREFUSED;
	}
	if (m.type != WIRE_MSG_SUMMARY) {
		snprintf(err, errlen, "the receiver sent %s where its summary was due",
			 wire_msg_name(m.type));
		return -EPROTO;
	}
	s->summary_bytes = m.u.summary.n_filters ? WIRE_HDR_LEN : 0;
	r = peer_view_init(&s->peer, &m.u.summary);
	if (r < 0) {
		snprintf(err, errlen, "the receiver's summary is malformed");
		return r;
	}
	s->use_peer = true;
	r = content_find_manifest(s->store, s->vm, s->peer_site, &s->peer, &s->manifest);
	if (r < 0)
		log_warn("store: cannot look for an earlier image of %s: %s", s->vm,
			 strerror(-r));
	if (s->manifest) {
		struct tsb_buf b;

		log_info("the receiver still holds image %s of %s: unchanged pages stay there",
			 store_image_get_info(s->manifest)->peer_image, s->vm);
		/* SAME and SAMERUN entries name pages of that image. */
		tsb_buf_init(&b);
		r = wire_encode_base(&b, store_image_get_info(s->manifest)->peer_image);
		if (r == 0)
			r = wire_conn_write(s->conn, b.data, b.len);
		tsb_buf_fini(&b);
		if (r < 0) {
			snprintf(err, errlen, "sending BASE: %s", strerror(-r));
			return r;
		}
	}
	return 0;
}

/*
 * The floor: the zstd-compressed size (level 3, 1 MiB chunks) of the
 * distinct contents of the final image that had to travel as data (the
 * destination could rebuild nothing of them). Our mirrored cache holds
 * exactly the pages sent as data in this migration.
 */
static int64_t compute_floor(struct sender *s, uint64_t *ret_pages)
{
	struct wire_zstd *z = wire_zstd_new(3);
	struct tsb_buf chunk, out;
	uint8_t (*seen)[WIRE_HASH_LEN] = NULL;
	size_t cap = 1, nb, b, slot;
	uint64_t total = 0, i, pages = 0;
	int64_t floor_bytes = 0;
	const uint8_t *hash, *page;
	uint8_t buf[WIRE_PAGE_SIZE];

	if (!z)
		return -1;
	nb = store_image_block_count(s->departure.image);
	for (b = 0; b < nb; b++)
		total += s->image_pages[b];
	while (cap < total * 2 + 2)
		cap *= 2;
	seen = calloc(cap, WIRE_HASH_LEN);
	tsb_buf_init(&chunk);
	tsb_buf_init(&out);
	if (!seen) {
		floor_bytes = -1;
		goto out;
	}
	for (b = 0; b < nb; b++) {
		for (i = 0; i < s->image_pages[b]; i++) {
			uint64_t key;

			if (store_image_page(s->departure.image, b, i, &hash) != STORE_PAGE_HASH)
				continue;
			if (!pagecache_has(s->cache, hash))
				continue;
			page = pagecache_peek(s->cache, hash);
			if (!page && store_get(s->store, hash, buf) == 0)
				page = buf;
			if (!page)
				continue;
			memcpy(&key, hash, sizeof(key));
			/* Open addressing; an all-zero slot is free (no real hash is zero). */
			for (slot = key & (cap - 1); seen[slot][0] | seen[slot][1] | seen[slot][31];
			     slot = (slot + 1) & (cap - 1))
				if (!memcmp(seen[slot], hash, WIRE_HASH_LEN))
					break;
			if (!memcmp(seen[slot], hash, WIRE_HASH_LEN))
				continue;
			memcpy(seen[slot], hash, WIRE_HASH_LEN);
			pages++;
			tsb_buf_append(&chunk, page, WIRE_PAGE_SIZE);
			if (chunk.len >= (1u << 20)) {
				tsb_buf_reset(&out);
				floor_bytes += wire_zstd_compress(z, chunk.data, chunk.len, &out) > 0 ?
					       (int64_t)out.len : (int64_t)chunk.len;
				tsb_buf_reset(&chunk);
			}
		}
	}
	if (chunk.len) {
		tsb_buf_reset(&out);
		floor_bytes += wire_zstd_compress(z, chunk.data, chunk.len, &out) > 0 ?
			       (int64_t)out.len : (int64_t)chunk.len;
	}
out:
	*ret_pages = pages;
	free(seen);
	tsb_buf_fini(&chunk);
	tsb_buf_fini(&out);
	wire_zstd_free(z);
	return floor_bytes;
}

struct progress_ctx {
	struct sender *s;
	uint64_t start_ns;
	bool tty;
};

static void progress_tick(void *opaque, json_t *stats)
{
	struct progress_ctx *p = opaque;
	json_t *ram = json_object_get(stats, "ram");
	double secs = (tsb_now_ns() - p->start_ns) / 1e9;
	struct wire_conn_stats ws;
	json_int_t pass, remaining, total;
	double pct, rate;

	if (!strcmp(json_string_value(json_object_get(stats, "status")) ?: "", "postcopy-active"))
		tsb_fault_point("postcopy");
	if (!p->tty || !ram)
		return;
	wire_conn_get_stats(p->s->conn, &ws);
	pass = json_integer_value(json_object_get(ram, "dirty-sync-count"));
	remaining = json_integer_value(json_object_get(ram, "remaining"));
	total = json_integer_value(json_object_get(ram, "total"));
	pct = total ? 100.0 * (double)(total - remaining) / (double)total : 0;
	rate = secs > 0 ? ws.net_out * 8 / secs / 1e6 : 0;
	fprintf(stderr, "\rsend: pass %lld  %5.1f%%  WAN %.1f MB at %.1f Mbit/s  "
		"remaining %.1f MB   ", (long long)pass, pct, ws.net_out / 1e6, rate,
		remaining / 1e6);
}

static json_t *make_report(struct sender *s, const struct migctl_result *res,
			   uint64_t start_ns, uint64_t end_ns)
{
	struct wire_conn_stats ws = { 0 };
	json_t *r = json_object(), *stats = res->src_stats, *ram;
	double secs = (end_ns - start_ns) / 1e9;
	uint64_t resume_ns = 0;
	const char *p;

	if (s->conn)
		wire_conn_get_stats(s->conn, &ws);
	json_object_set_new(r, "side", json_string("send"));
	json_object_set_new(r, "outcome", json_string(proxy_outcome_name(s->outcome)));
	if (s->error[0])
		json_object_set_new(r, "error", json_string(s->error));
	json_object_set_new(r, "total_time_ms", json_integer((end_ns - start_ns) / 1000000));
	if (s->migrate_ns && s->qemu_done_ns)
		/* Where the time went: before QEMU starts, QEMU, the receiver's word. */
		json_object_set_new(r, "phases_ms", json_pack("{s:I, s:I, s:I}",
			"setup", (json_int_t)((s->migrate_ns - start_ns) / 1000000),
			"qemu", (json_int_t)((s->qemu_done_ns - s->migrate_ns) / 1000000),
			"confirm", (json_int_t)((end_ns - s->qemu_done_ns) / 1000000)));
	/* Where the pipeline stalled: which stage waited for which. */
	json_object_set_new(r, "waits_ms", json_pack("{s:I, s:I, s:I}",
		"credits", (json_int_t)(s->credit_wait_ns / 1000000),
		"free_job", (json_int_t)(s->job_wait_ns / 1000000),
		"wan_idle", (json_int_t)(s->wan_idle_ns / 1000000)));
	p = strstr(s->peer_done_text, "resume_ns=");
	if (p)
		resume_ns = strtoull(p + 10, NULL, 10);
	/* Guest-visible downtime: source STOP to destination RESUME (host clocks). */
	if (res->stop_ns && resume_ns > res->stop_ns)
		json_object_set_new(r, "downtime_ms",
				    json_integer((resume_ns - res->stop_ns) / 1000000));
	if (stats) {
		json_object_set(r, "qemu_downtime_ms", json_object_get(stats, "downtime")
			? json_object_get(stats, "downtime") : json_null());
		json_object_set(r, "qemu_total_time_ms", json_object_get(stats, "total-time")
			? json_object_get(stats, "total-time") : json_null());
		ram = json_object_get(stats, "ram");
		if (ram)
			json_object_set(r, "passes", json_object_get(ram, "dirty-sync-count"));
	}
	json_object_set_new(r, "qemu_stream_bytes", json_integer(s->stream_bytes));
	json_object_set_new(r, "wan", json_pack(
		"{s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
		" s:I, s:I}",
		"bytes_sent", (json_int_t)ws.net_out,
		"bytes_received", (json_int_t)ws.net_in,
		"tls_overhead", (json_int_t)(ws.net_out - ws.app_out),
		"app_bytes_sent", (json_int_t)ws.app_out,
		"by_category",
		"header", (json_int_t)s->wan.headers,
		"zero", (json_int_t)s->wan.zero,
		"literal", (json_int_t)s->wan.literal,
		"compressed", (json_int_t)s->wan.compressed,
		"reference", (json_int_t)s->wan.reference,
		"reused", (json_int_t)s->wan.reused,
		"group", (json_int_t)s->wan.group,
		"disk", (json_int_t)s->wan.disk,
		"stream", (json_int_t)s->wan.stream,
		"raw", (json_int_t)s->wan.raw_entries,
		"control", (json_int_t)s->wan.control,
		"literal_uncompressed", (json_int_t)s->wan.literal_in,
		"stream_uncompressed", (json_int_t)s->wan.stream_in));
	json_object_set_new(r, "pages", json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
		"zero", (json_int_t)s->pages_zero, "data", (json_int_t)s->pages_data,
		"reference", (json_int_t)s->pages_ref, "raw", (json_int_t)s->pages_raw,
		"reused", (json_int_t)s->pages_same, "group", (json_int_t)s->pages_group,
		"disk", (json_int_t)s->pages_disk,
		"need_served", (json_int_t)s->need_served));
	/* Where each page came from at the destination, and what that cost. */
	json_object_set_new(r, "by_source", json_pack(
		"{s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I}}",
		"reused_from_old_image", "pages", (json_int_t)s->pages_same,
		"bytes", (json_int_t)s->wan.reused,
		"shared_from_group", "pages", (json_int_t)s->pages_group,
		"bytes", (json_int_t)s->wan.group,
		"rebuilt_from_disk", "pages", (json_int_t)s->pages_disk,
		"bytes", (json_int_t)s->wan.disk,
		"repeated_in_migration", "pages", (json_int_t)s->pages_ref,
		"bytes", (json_int_t)s->wan.reference,
		"sent", "pages", (json_int_t)s->pages_data,
		"bytes", (json_int_t)(s->wan.literal + s->wan.compressed)));
	if (s->store) {
		json_t *st = json_pack("{s:s, s:s, s:s, s:s, s:b}",
			"site", store_site_id(s->store), "tenant", s->tenant, "vm", s->vm,
			"image", s->image_id, "peer_summary", s->use_peer);

		if (s->manifest)
			json_object_set_new(st, "reused_image", json_string(
				store_image_get_info(s->manifest)->peer_image));
		json_object_set_new(r, "store", st);
	}
	json_object_set_new(r, "zstd_batches", json_pack("{s:I, s:I, s:I}",
		"none", (json_int_t)s->level_uses[0], "level1", (json_int_t)s->level_uses[1],
		"level3", (json_int_t)s->level_uses[2]));
	json_object_set_new(r, "effective_mbit_s",
			    json_real(secs > 0 ? s->stream_bytes * 8 / secs / 1e6 : 0));
	json_object_set_new(r, "wan_mbit_s",
			    json_real(secs > 0 ? ws.net_out * 8 / secs / 1e6 : 0));
	return r;
}

/* ---- switchover (docs/protocol.md) ---- */

/* Names the migration, takes its lock and records that it began. */
static int record_begin(struct sender *s, struct qmp *q)
{
	const struct proxy_send_options *o = s->o;
	struct mig_record *m = &s->rec;
	char err[512];
	int r;

	snprintf(m->id, sizeof(m->id), "%s", s->image_id);
	snprintf(m->side, sizeof(m->side), "send");
	snprintf(m->state, sizeof(m->state), "started");
	snprintf(m->peer, sizeof(m->peer), "%s", o->to);
	snprintf(m->qmp, sizeof(m->qmp), "%s", o->c.qmp_path);
	snprintf(m->vm, sizeof(m->vm), "%s", s->vm);
	r = commit_vm_running(q, &m->resume);
	if (r < 0) {
		fail(s, PROXY_FAILED, "the source QEMU does not answer: %s", strerror(-r));
		return r;
	}
	s->lock_fd = record_lock(o->c.state_dir, m->id, "send");
	if (s->lock_fd < 0) {
		fail(s, PROXY_FAILED, "cannot lock the record of migration %s in %s: %s", m->id,
		     o->c.state_dir, strerror(-s->lock_fd));
		return s->lock_fd;
	}
	r = record_save(o->c.state_dir, m, err, sizeof(err));
	if (r < 0)
		fail(s, PROXY_FAILED, "%s", err);
	return r;
}

static struct commit_link link_of(struct sender *s, struct wire_tls *tls)
{
	return (struct commit_link){
		.c = &s->o->c, .tls = tls, .addr = s->o->to, .id = s->rec.id,
		.sig = &s->abort_flag,
		.deadline_ns = tsb_now_ns() + s->o->c.commit_timeout_ms * 1000000,
	};
}

/*
 * Sends DECISION on the migration's connection; false if it is gone. The
 * stream is over, so the WAN thread ends: then this thread is the writer.
 */
static bool decide_on_main(struct sender *s, int decision)
{
	uint64_t t0 = tsb_now_ns();

	while (!s->wan_done && tsb_now_ns() - t0 < 10000000000ull)
		usleep(2000);
	if (s->link_lost || s->failed || !s->wan_done)
		return false;
	return wire_conn_send_status(s->conn, WIRE_MSG_DECISION, (uint32_t)decision,
				     s->rec.id) == 0;
}

/* Waits (bounded) for the receiver's OUTCOME on the migration's connection. */
static int outcome_on_main(struct sender *s)
{
	uint64_t t0 = tsb_now_ns(), limit = 10000000000ull;

	if (s->o->c.stall_ms && s->o->c.stall_ms * 1000000 < limit)
		limit = s->o->c.stall_ms * 1000000;
	while (!s->peer_outcome && !s->link_lost && !s->failed && tsb_now_ns() - t0 < limit)
		usleep(5000);
	return s->peer_outcome;
}

/*
 * The source completed (it is paused, and QEMU will not resume it by
 * itself). Commit when the receiver said PREPARED: record the decision,
 * send it, and learn the outcome, over fresh connections if need be.
 * Without PREPARED, fail: the caller aborts and the source runs again.
 */
static void settle(struct sender *s, struct wire_tls *tls)
{
	const struct proxy_send_options *o = s->o;
	uint64_t t0 = tsb_now_ns(), acked = s->acked;
	uint64_t limit = (o->c.stall_ms ? o->c.stall_ms : 60000) * 1000000;
	struct commit_link l;
	char err[512];
	int outcome;

	tsb_fault_point("source-completed");
	/* The destination loads the last bytes in flight; give up only on a stall. */
	while (!s->prepared && !s->failed && s->abort_flag <= 1 && tsb_now_ns() - t0 < limit) {
		if (s->acked != acked) {
			acked = s->acked;
			t0 = tsb_now_ns();
		}
		usleep(5000);
	}
	if (!s->prepared || s->abort_flag > 1) {
		if (!s->failed)
			fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_FAILED, "%s",
			     s->abort_flag > 1 ? "interrupted before the switchover was committed"
					   : "the receiver did not say that it holds the guest");
		return;
	}
	snprintf(s->rec.state, sizeof(s->rec.state), "commit");
	if (record_save(o->c.state_dir, &s->rec, err, sizeof(err)) < 0) {
		fail(s, PROXY_FAILED, "%s: not committing", err);
		return;
	}
	s->decided_commit = true;
	log_info("switchover committed (migration %s)", s->rec.id);
	outcome = decide_on_main(s, WIRE_DECIDE_COMMIT) ? 0 : -1;
	tsb_fault_point("commit-sent");
	outcome = outcome == 0 ? outcome_on_main(s) : 0;
	if (!outcome) {
		log_warn("no answer to the commit on the migration's connection: reconnecting "
			 "to %s (for up to %llu s)", o->to,
			 (unsigned long long)(o->c.commit_timeout_ms / 1000));
		l = link_of(s, tls);
		outcome = commit_deliver(&l, WIRE_DECIDE_COMMIT, s->peer_done_text,
					 sizeof(s->peer_done_text));
	}
	if (outcome == WIRE_OUTCOME_RUNNING) {
		s->peer_outcome = outcome;
		record_drop(o->c.state_dir, &s->rec);
		return;
	}
	if (outcome == WIRE_OUTCOME_DISCARDED) {
		/* It never ran there and never will: the source takes the guest back. */
		if (s->peer_outcome)
			(void)wire_conn_close(s->conn); /* tells the receiver we heard it */
		s->decided_commit = false;
		s->peer_outcome = outcome;
		fail(s, PROXY_FAILED, "the destination could not run the guest (%s); the source "
		     "runs it again", s->peer_done_text);
		return;
	}
	fail(s, PROXY_IN_DOUBT, "in doubt: the switchover was committed but the receiver's "
	     "answer did not arrive%s; the source stays paused and never runs again by "
	     "itself. On the destination host run 'tsubame resolve %s --commit' "
	     "(--state-dir %s there)", outcome == -EINTR ? " (interrupted)" :
	     " within --commit-timeout", s->rec.id, o->c.state_dir);
}

/*
 * No commit: the source runs the guest again. When QEMU had completed,
 * the receiver may hold the guest paused: tell it to discard it.
 */
static void abort_switchover(struct sender *s, struct qmp *q, struct wire_tls *tls)
{
	const struct proxy_send_options *o = s->o;
	struct commit_link l;
	bool completed = false;
	char err[512], text[128];
	int r;

	if (!s->migrate_ns)
		return; /* QEMU was never told to migrate */
	r = commit_resume_source(q, s->rec.resume, &completed, err, sizeof(err));
	if (r < 0)
		log_error("the source VM could not be resumed: %s; run 'tsubame resolve %s' "
			  "here", err, s->rec.id);
	snprintf(s->rec.state, sizeof(s->rec.state), "abort");
	/*
	 * Only a receiver that may have said PREPARED needs to hear it: one
	 * that may have the whole stream, i.e. once the source stopped (QEMU
	 * may fail and resume after its last byte, e.g. on the return path).
	 */
	if (s->peer_outcome == WIRE_OUTCOME_DISCARDED || s->peer_failed ||
	    (!completed && !s->prepared && !s->switchover_ns)) {
		if (r == 0)
			record_drop(o->c.state_dir, &s->rec);
		return;
	}
	(void)record_save(o->c.state_dir, &s->rec, err, sizeof(err));
	if (decide_on_main(s, WIRE_DECIDE_ABORT) && outcome_on_main(s) > 0) {
		record_drop(o->c.state_dir, &s->rec);
		return;
	}
	l = link_of(s, tls);
	r = commit_deliver(&l, WIRE_DECIDE_ABORT, text, sizeof(text));
	if (r > 0 || r == -ENOENT) {
		record_drop(o->c.state_dir, &s->rec);
		return;
	}
	log_warn("the destination may hold a paused copy of the guest: run 'tsubame resolve "
		 "%s --abort' on the destination host", s->rec.id);
}

/* ---- disks (docs/disk.md) ---- */

/* Keeps the idle main connection alive while the disk mirrors converge. */
static void disk_keepalive(void *opaque)
{
	struct sender *s = opaque;
	struct tsb_buf b;

	tsb_buf_init(&b);
	if (wire_encode_u64(&b, WIRE_MSG_PING, 0) == 0)
		(void)wire_conn_write(s->conn, b.data, b.len);
	tsb_buf_fini(&b);
}

static int disk_pre_switchover(void *opaque, struct qmp *q, char *err, size_t errlen)
{
	tsb_fault_point("pre-switchover");
	return disk_send_switchover(opaque, q, err, errlen);
}

static int disks_start(struct sender *s, struct qmp *q, struct wire_tls *tls,
		       const char *host, const char *port, struct migctl_options *mo)
{
	const struct proxy_send_options *o = s->o;
	struct disk_send_options dso = {
		.host = host, .port = port, .tls = tls,
		.migration = s->image_id[0] ? s->image_id : NULL,
		.stall_ms = o->c.stall_ms, .ready_timeout_ms = o->c.timeout_ms,
		.abort_flag = &s->abort_flag,
		.keepalive = disk_keepalive, .keepalive_opaque = s,
	};
	char err[512];
	unsigned i;
	int r;

	for (i = 0; i < o->n_disks && i < DISK_MAX; i++)
		dso.only[dso.n_only++] = o->disks[i];
	r = disk_send_start(q, &dso, &s->disks, err, sizeof(err));
	if (r < 0) {
		fail(s, r == -ECONNRESET || r == -ECONNREFUSED ? PROXY_LINK :
		     r == -ECANCELED ? PROXY_INTERRUPTED : r == -ETIMEDOUT ? PROXY_TIMEOUT :
		     PROXY_FAILED, "disks: %s", err);
		return r;
	}
	if (s->disks) {
		if (mo->n_caps >= MIGCTL_MAX_CAPS) {
			fail(s, PROXY_FAILED, "too many capabilities");
			return -E2BIG;
		}
		mo->caps[mo->n_caps++] = "pause-before-switchover";
		mo->pre_switchover = disk_pre_switchover;
		mo->pre_switchover_opaque = s->disks;
	}
	return 0;
}

/* ---- end of disks ---- */

/* A sender with no link, no QEMU and no cache yet. */
static void sender_init(struct sender *s, const struct proxy_send_options *o)
{
	int i;

	memset(s, 0, sizeof(*s));
	s->o = o;
	s->qfd = -1;
	s->lock_fd = -1;
	s->window = PROXY_WINDOW_MIN;
	s->level = 1;
	/* Starting guesses for half-compressible memory; measured from then on. */
	s->link_speed = 12.5e6;
	s->compress_speed[1] = 400e6;
	s->ratio[1] = 0.55;
	s->compress_speed[2] = 150e6;
	s->ratio[2] = 0.5;
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->cache_lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	for (i = 0; i < N_JOBS; i++) {
		wire_pages_builder_init(&s->jobs[i].pb, WIRE_PAGE_SIZE);
		tsb_buf_init(&s->jobs[i].buf);
		s->jobs[i].next = s->free_jobs;
		s->free_jobs = &s->jobs[i];
	}
	hashset_init(&s->seen);
}

/* Frees what the sender holds (not its connection, parser or QEMU). */
static void sender_fini(struct sender *s)
{
	int i;

	if (s->qfd >= 0)
		close(s->qfd);
	pagecache_free(s->cache);
	hashset_fini(&s->seen);
	image_rec_fini(&s->departure);
	store_image_free(s->manifest);
	peer_view_fini(&s->peer);
	if (s->store)
		store_close(s->store);
	for (i = 0; i < N_JOBS; i++) {
		wire_pages_builder_fini(&s->jobs[i].pb);
		tsb_buf_fini(&s->jobs[i].buf);
	}
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	free(s->readbuf);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->cache_lock);
	pthread_cond_destroy(&s->cond);
}

/* What one run of proxy_send() holds besides the sender itself. */
struct send_run {
	const struct proxy_send_options *o;
	struct wire_tls *tls;
	struct qmp *q;
	char host[256], port[32];
	struct migctl_options mo;
	struct migctl_result res;
	struct progress_ctx pc;
	pthread_t th_parse, th_wan, th_ret;
	bool threads;			/* all three started */
	char *caps_copy;		/* --caps, split by migctl_parse_caps() */
	uint64_t start_ns;
};

/* Only reads from QEMU here: who the VM is, to name it and find its images. */
static int identify_vm(struct sender *s, struct send_run *run)
{
	const struct proxy_send_options *o = run->o;
	char err[512] = "";
	int r;

	r = qmp_open(o->c.qmp_path, 10000, &run->q);
	if (r < 0) {
		fail(s, PROXY_FAILED, "cannot reach the source QEMU at %s: %s",
		     o->c.qmp_path, strerror(-r));
		return -1;
	}
	r = vm_identity(run->q, o->vm_id, s->vm, err, sizeof(err));
	if (r < 0 && o->c.store_dir) {
		/* The store only saves bytes: go on without it. */
		log_warn("%s; this migration neither keeps nor reuses an image", err);
	} else if (r == 0 && o->c.store_dir) {
		content_tenant(o->c.tenant, s->vm, s->tenant);
		r = content_open_store(&o->c, s->tenant, &s->store, err, sizeof(err));
		s->departure.store = s->store;
		if (r < 0) {
			fail(s, PROXY_FAILED, "%s", err);
			return -1;
		}
		content_new_id(s->image_id);
	}
	return 0;
}

/* Our HELLO: the migration, the VM, its tenant, and our store if we have one. */
static void hello_of(struct sender *s, struct wire_hello_args *hello)
{
	const struct proxy_send_options *o = s->o;

	hello->role = WIRE_ROLE_SENDER;
	if (!s->image_id[0])
		content_new_id(s->image_id); /* the migration's id, store or not */
	hello->migration = s->image_id;
	hello->caps = WIRE_CAP_COMMIT | WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK |
		      (o->postcopy_after_ms ? WIRE_CAP_POSTCOPY : 0) |
		      (o->no_disks ? 0 : WIRE_CAP_DISK);
	hello->site = "source";
	hello->vm = s->vm[0] ? s->vm : NULL;
	hello->tenant = o->c.tenant; /* the receiver checks our credential against it */
	if (s->store) {
		hello->caps |= WIRE_CAP_STORE;
		hello->site = store_site_id(s->store);
		hello->vm = s->vm;
		hello->tenant = s->tenant;
		hello->store_gen = store_generation(s->store);
	}
}

/* Link first: nothing changes in QEMU before the receiver is known good. */
static int connect_receiver(struct sender *s, struct send_run *run)
{
	const struct proxy_send_options *o = run->o;
	struct wire_hello_args hello = { 0 };
	struct wire_hello peer;
	char err[512] = "";
	int fd = -1, r;

	if (tsb_split_hostport(o->to, run->host, sizeof(run->host), run->port,
			       sizeof(run->port)) < 0) {
		fail(s, PROXY_FAILED, "bad --to '%s': expected HOST:PORT", o->to);
		return -1;
	}
	r = proxy_tls_setup(&o->c, WIRE_TLS_CLIENT, &run->tls, err, sizeof(err));
	if (r < 0) {
		fail(s, PROXY_AUTH, "%s", err);
		return -1;
	}
	r = wire_tcp_connect(run->host, run->port, 10000, &fd, err, sizeof(err));
	if (r < 0) {
		fail(s, PROXY_LINK, "%s", err);
		return -1;
	}
	wire_tcp_tune(fd, 0);
	s->conn = wire_conn_new_take(run->tls, fd);
	if (!s->conn) {
		fail(s, PROXY_FAILED, "out of memory");
		return -1;
	}
	r = wire_conn_handshake(s->conn, 15000);
	if (r < 0) {
		fail(s, proxy_outcome_of_errno(r), "%s", wire_conn_errmsg(s->conn));
		return -1;
	}
	tsb_fault_point("handshake");
	hello_of(s, &hello);
	r = wire_conn_hello(s->conn, &hello, &peer);
	if (r < 0) {
		fail(s, proxy_outcome_of_errno(r), "%s", wire_conn_errmsg(s->conn));
		return -1;
	}
	snprintf(s->peer_site, sizeof(s->peer_site), "%.*s", (int)peer.site.len, peer.site.p);
	if (s->store && (peer.caps & WIRE_CAP_STORE)) {
		r = take_summary(s, err, sizeof(err));
		if (r < 0) {
			fail(s, r == -ECONNREFUSED || r == -EPROTO || r == -EBADMSG ?
			     PROXY_FAILED : proxy_outcome_of_errno(r), "%s", err);
			return -1;
		}
	}
	if (o->c.stall_ms)
		wire_conn_set_timeout(s->conn, o->c.stall_ms);
	return 0;
}

/* QEMU's migration options, the disks' jobs, the socket QEMU streams into. */
static int prepare_source(struct sender *s, struct send_run *run)
{
	static const struct qs_handlers handlers = {
		.raw = on_raw, .page = on_page, .event = on_event,
	};
	const struct proxy_send_options *o = run->o;
	struct migctl_options *mo = &run->mo;
	char err[512] = "";
	int r;

	if (o->caps) {
		run->caps_copy = strdup(o->caps);
		if (!run->caps_copy || migctl_parse_caps(run->caps_copy, mo) < 0) {
			fail(s, PROXY_FAILED, "too many capabilities in '%s'", o->caps);
			return -1;
		}
	}
	if (o->postcopy_after_ms) {
		if (mo->n_caps < MIGCTL_MAX_CAPS)
			mo->caps[mo->n_caps++] = "postcopy-ram";
		mo->postcopy_after_ms = o->postcopy_after_ms;
	}
	mo->max_bandwidth = o->max_bandwidth;
	mo->downtime_limit_ms = o->downtime_limit_ms;
	mo->timeout_ms = o->c.timeout_ms;
	mo->abort_flag = &s->abort_flag;
	if (!o->no_disks && disks_start(s, run->q, run->tls, run->host, run->port, mo) < 0)
		return -1;
	r = setup_source(s, run->q, mo, err, sizeof(err));
	if (r < 0) {
		fail(s, r == -EOPNOTSUPP ? PROXY_UNSUPPORTED : PROXY_FAILED,
		     "source QEMU: %s", err);
		return -1;
	}
	r = proxy_qemu_socket(run->q, &s->qfd, err, sizeof(err));
	if (r < 0) {
		fail(s, PROXY_FAILED, "cannot hand a socket to the source QEMU: %s", err);
		return -1;
	}
	s->parser = qs_parser_new(&handlers, s);
	if (!s->parser) {
		fail(s, PROXY_FAILED, "out of memory");
		return -1;
	}
	return 0;
}

static int start_threads(struct sender *s, struct send_run *run)
{
	if (pthread_create(&run->th_wan, NULL, wan_thread, s) ||
	    pthread_create(&run->th_ret, NULL, return_thread, s)) {
		fail(s, PROXY_FAILED, "cannot start threads");
		return -1;
	}
	if (pthread_create(&run->th_parse, NULL, parse_thread, s)) {
		fail(s, PROXY_FAILED, "cannot start threads");
		pthread_join(run->th_wan, NULL);
		pthread_join(run->th_ret, NULL);
		return -1;
	}
	run->threads = true;
	return 0;
}

/* QEMU migrates through us; then the switchover is committed or undone. */
static void migrate(struct sender *s, struct send_run *run)
{
	int r;

	run->pc.s = s;
	run->pc.start_ns = run->start_ns;
	run->pc.tty = run->o->c.progress;
	run->mo.tick = progress_tick;
	run->mo.tick_opaque = &run->pc;
	if (record_begin(s, run->q) < 0)
		return;
	s->migrate_ns = tsb_now_ns();
	r = migctl_run(run->q, NULL, &run->mo, "fd:" PROXY_FDNAME, &run->res);
	s->qemu_done_ns = tsb_now_ns();
	if (run->pc.tty)
		fputc('\n', stderr);
	if (r < 0) {
		if (s->abort_flag > 1 && !s->failed)
			fail(s, PROXY_INTERRUPTED, "interrupted by signal %d; migration cancelled",
			     s->abort_flag);
		else if (r == -ETIMEDOUT)
			fail(s, PROXY_TIMEOUT, "%s", run->res.error);
		else
			fail(s, PROXY_FAILED, "source QEMU: migration %s%s%s", run->res.status,
			     run->res.error[0] ? ": " : "", run->res.error);
		return;
	}
	/* The source completed: commit if the destination holds the guest. */
	settle(s, run->tls);
	/* QEMU is done with the socket; make sure the parse thread sees its end. */
	if (!s->failed)
		shutdown(s->qfd, SHUT_RDWR);
}

/* Ends the threads: drained after a clean end, cut after a failure. */
static void stop_threads(struct sender *s, struct send_run *run)
{
	if (!run->threads)
		return;
	if (!s->failed && s->peer_outcome == WIRE_OUTCOME_RUNNING) {
		/* Clean end: let the WAN thread drain, then close. */
		pthread_mutex_lock(&s->lock);
		s->queue_closed = true;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	} else if (!s->failed) {
		fail(s, PROXY_FAILED, "stopped");
	}
	pthread_join(run->th_parse, NULL);
	pthread_join(run->th_wan, NULL);
	if (!s->failed || s->peer_outcome)
		wire_conn_close(s->conn);
	wire_conn_abort(s->conn);
	pthread_join(run->th_ret, NULL);
}

/* The report, with the store's commit time and the floor when asked. */
static json_t *report_of(struct sender *s, struct send_run *run, enum proxy_outcome oc,
			 uint64_t end_ns, uint64_t commit_ms)
{
	json_t *report = make_report(s, &run->res, run->start_ns, end_ns);

	if (s->store)
		json_object_set_new(json_object_get(report, "store"), "commit_ms",
				    json_integer((json_int_t)commit_ms));
	if (oc == PROXY_OK && run->o->floor && s->departure.image) {
		uint64_t fp = 0;
		int64_t fb = compute_floor(s, &fp);

		if (fb >= 0)
			json_object_set_new(report, "floor", json_pack("{s:I, s:I}",
				"bytes", (json_int_t)fb, "pages", (json_int_t)fp));
	}
	return report;
}

static enum proxy_outcome finish(struct sender *s, struct send_run *run, json_t **ret_report)
{
	uint64_t end_ns, commit_ms = 0;
	enum proxy_outcome oc;

	stop_threads(s, run);
	if (s->failed && run->q && !s->decided_commit)
		abort_switchover(s, run->q, run->tls);
	oc = s->failed ? s->outcome : PROXY_OK;
	if (s->failed && s->outcome == PROXY_OK)
		oc = s->outcome = PROXY_FAILED;
	end_ns = tsb_now_ns();
	if (oc == PROXY_OK)
		content_net_notify(run->o->c.net_agent, s->vm, NULL);
	if (oc == PROXY_OK && s->departure.image && !s->departure.failed) {
		/* This host keeps the VM's last image for when it comes back. */
		image_rec_commit(&s->departure, "departure");
		commit_ms = (tsb_now_ns() - end_ns) / 1000000;
	}
	if (ret_report)
		*ret_report = report_of(s, run, oc, end_ns, commit_ms);
	/* Disks: jobs still running are cancelled; the source keeps its disks. */
	disk_send_finish(s->disks, run->q, ret_report ? *ret_report : NULL);
	if (s->failed)
		log_error("%s", s->error);
	migctl_result_fini(&run->res);
	qs_parser_free(s->parser);
	s->parser = NULL;
	qmp_close(run->q);
	wire_conn_free(s->conn); /* before its TLS context */
	s->conn = NULL;
	wire_tls_free(run->tls);
	free(run->caps_copy);
	return oc;
}

enum proxy_outcome proxy_send(const struct proxy_send_options *o, json_t **ret_report)
{
	struct send_run run = { .o = o, .start_ns = tsb_now_ns() };
	enum proxy_outcome oc;
	struct sender *s;
	uint64_t cache_pages;

	s = malloc(sizeof(*s));
	if (!s)
		return PROXY_FAILED;
	sender_init(s, o);
	proxy_catch_signals(&s->abort_flag);
	cache_pages = (o->c.cache_bytes ? o->c.cache_bytes : PROXY_CACHE_DEFAULT) / WIRE_PAGE_SIZE;
	s->cache = pagecache_new(cache_pages, WIRE_PAGE_SIZE);
	s->readbuf = malloc(PROXY_READ_CHUNK);
	if (!s->cache || !s->readbuf)
		fail(s, PROXY_FAILED, "out of memory");
	else if (identify_vm(s, &run) == 0 && connect_receiver(s, &run) == 0 &&
		 prepare_source(s, &run) == 0 && start_threads(s, &run) == 0)
		migrate(s, &run);
	oc = finish(s, &run, ret_report);
	sender_fini(s);
	free(s);
	return oc;
}

/* ---- fuzzing (tests/fuzz/fuzz-send.c) ---- */

static uint8_t fuzz_pages[PROXY_FUZZ_CONTENTS][WIRE_PAGE_SIZE];
static uint8_t fuzz_hashes[PROXY_FUZZ_CONTENTS][WIRE_HASH_LEN];

#define FUZZ_CHECK(s, cond) do { \
	if (!(cond)) \
		fuzz_broken((s), #cond, __LINE__); \
} while (0)

static void fuzz_broken(const struct sender *s, const char *what, int line)
{
	fprintf(stderr, "proxy_send_fuzz: send.c:%d: broken: %s (sender: %s)\n", line, what,
		s->failed ? s->error : "no failure");
	abort();
}

/* Which fuzz content has this hash, or -1. */
static int fuzz_content_of(const uint8_t *hash)
{
	for (int k = 0; k < PROXY_FUZZ_CONTENTS; k++)
		if (fuzz_hashes[k][0] == hash[0] && !memcmp(fuzz_hashes[k], hash, WIRE_HASH_LEN))
			return k;
	return -1;
}

/* Content the sender can serve: handled by this migration, still in its cache. */
static bool fuzz_servable(int k)
{
	return k >= 2 && k < PROXY_FUZZ_SEEN && k != 10;
}

/* Checks the HASHDATA frame a NEED queued: the NEED's hashes, in order, with their content. */
static void fuzz_check_answer(struct sender *s, const struct wire_need *need,
			      const struct tsb_buf *frame)
{
	struct wire_frame f;
	struct wire_msg m;
	struct tsb_buf scratch;
	const uint8_t *data;

	FUZZ_CHECK(s, frame->len >= WIRE_HDR_LEN);
	FUZZ_CHECK(s, wire_header_decode(frame->data, &f) == 0);
	FUZZ_CHECK(s, f.len == frame->len - WIRE_HDR_LEN);
	f.payload = frame->data + WIRE_HDR_LEN;
	FUZZ_CHECK(s, wire_frame_decode(&f, &m) == 0);
	FUZZ_CHECK(s, m.type == WIRE_MSG_HASHDATA);
	FUZZ_CHECK(s, m.u.hashdata.count == need->count && m.u.hashdata.obj_size == WIRE_PAGE_SIZE);
	FUZZ_CHECK(s, !memcmp(m.u.hashdata.hashes, need->hashes,
			      (size_t)need->count * WIRE_HASH_LEN));
	tsb_buf_init(&scratch);
	FUZZ_CHECK(s, wire_hashdata_unpack(&m.u.hashdata, NULL, &scratch, &data) == 0);
	for (unsigned i = 0; i < need->count; i++) {
		int k = fuzz_content_of(need->hashes + (size_t)i * WIRE_HASH_LEN);

		/* Only what this migration handled, never content 11. */
		FUZZ_CHECK(s, k >= 0 && k < PROXY_FUZZ_SEEN);
		FUZZ_CHECK(s, !memcmp(data + (size_t)i * WIRE_PAGE_SIZE, fuzz_pages[k], WIRE_PAGE_SIZE));
	}
	tsb_buf_fini(&scratch);
}

/*
 * After each message the return thread handled: what it queued for the
 * WAN thread (taken off here, as the WAN thread would) and what it
 * changed must be what the handlers promise.
 */
static void fuzz_after_msg(struct sender *s, const struct wire_msg *m)
{
	struct fuzz_input *in = s->fuzz;
	unsigned queued = 0, free_jobs = 0, i;
	bool servable = true;
	struct job *j;

	if (m->type == WIRE_MSG_NEED) {
		for (i = 0; i < m->u.need.count; i++) {
			int k = fuzz_content_of(m->u.need.hashes + (size_t)i * WIRE_HASH_LEN);

			servable &= fuzz_servable(k);
		}
	}
	pthread_mutex_lock(&s->lock);
	while ((j = s->queue_head)) {
		s->queue_head = j->next;
		if (!s->queue_head)
			s->queue_tail = NULL;
		pthread_mutex_unlock(&s->lock);
		queued++;
		/* Only a NEED makes the return thread send anything: its HASHDATA. */
		FUZZ_CHECK(s, m->type == WIRE_MSG_NEED && j->kind == JOB_FRAME);
		fuzz_check_answer(s, &m->u.need, &j->buf);
		job_put(s, j);
		pthread_mutex_lock(&s->lock);
	}
	for (j = s->free_jobs; j; j = j->next)
		free_jobs++;
	pthread_mutex_unlock(&s->lock);
	FUZZ_CHECK(s, free_jobs == N_JOBS);

	if (m->type == WIRE_MSG_NEED) {
		/* Answered in full, or refused and the migration fails. */
		FUZZ_CHECK(s, queued == (servable ? 1u : 0u));
		FUZZ_CHECK(s, servable == !s->failed);
	}
	/* Credits only grow, and the window stays within its bounds. */
	FUZZ_CHECK(s, s->acked >= in->acked);
	if (m->type == WIRE_MSG_ACK)
		FUZZ_CHECK(s, s->acked == (m->u.ack > in->acked ? m->u.ack : in->acked));
	FUZZ_CHECK(s, s->window >= PROXY_WINDOW_MIN && s->window <= PROXY_WINDOW_MAX);
	/*
	 * A receiver that said PREPARED may hold the guest paused: nothing it
	 * says afterwards (ERROR, CANCEL, DONE failed) makes the sender take
	 * it for one that holds nothing and skip telling it to discard.
	 */
	if (in->prepared) {
		FUZZ_CHECK(s, s->prepared);
		FUZZ_CHECK(s, s->peer_failed == in->peer_failed);
		if (m->type == WIRE_MSG_ERROR || m->type == WIRE_MSG_CANCEL)
			FUZZ_CHECK(s, s->link_lost && !s->failed);
	} else if (m->type == WIRE_MSG_ERROR || m->type == WIRE_MSG_CANCEL ||
		   (m->type == WIRE_MSG_DONE && m->u.status.code != WIRE_CODE_OK)) {
		FUZZ_CHECK(s, s->failed && s->peer_failed);
	}
	if (m->type == WIRE_MSG_DONE && m->u.status.code == WIRE_CODE_OK)
		FUZZ_CHECK(s, s->peer_done);
	if (m->type == WIRE_MSG_PREPARED)
		FUZZ_CHECK(s, s->prepared);
	if (s->failed)
		FUZZ_CHECK(s, s->outcome != PROXY_OK && s->error[0]);
	in->acked = s->acked;
	in->prepared = s->prepared;
	in->peer_failed = s->peer_failed;
}

/*
 * What every input starts from, built once: the contents the sender
 * handled and its cache, which the return thread only reads (hashset_has,
 * pagecache_peek; fuzz_return() checks they stay as they were), and the
 * sender's memory and zstd context, reused so that an input costs no
 * fresh pages.
 */
static struct hashset fuzz_seen;
static struct pagecache *fuzz_cache;
static struct wire_zstd *fuzz_z;
static struct sender fuzz_sender;

static int fuzz_setup(void)
{
	int k, r = 0;

	for (k = 0; k < PROXY_FUZZ_CONTENTS; k++) {
		proxy_fuzz_content(k, fuzz_pages[k]);
		r = wire_sha256(fuzz_pages[k], WIRE_PAGE_SIZE, fuzz_hashes[k]);
		if (r < 0)
			return r;
	}
	/* Ten pages, as DATA pages went in; 0 and 1 fell out. */
	fuzz_cache = pagecache_new(10, WIRE_PAGE_SIZE);
	fuzz_z = wire_zstd_new(1);
	if (!fuzz_cache || !fuzz_z)
		return -ENOMEM;
	for (k = 0; k < PROXY_FUZZ_CONTENTS && r == 0; k++) {
		if (k < PROXY_FUZZ_SEEN)
			r = hashset_add(&fuzz_seen, fuzz_hashes[k]);
		if (r == 0)
			r = pagecache_put(fuzz_cache, fuzz_hashes[k],
					  k == 10 ? NULL : fuzz_pages[k]);
	}
	return r;
}

/* Takes the shared set and cache back from s, checking they are unchanged. */
static void fuzz_return(struct sender *s)
{
	FUZZ_CHECK(s, s->seen.slots == fuzz_seen.slots && s->seen.cap == fuzz_seen.cap &&
		      s->seen.count == fuzz_seen.count);
	FUZZ_CHECK(s, s->cache == fuzz_cache && pagecache_count(s->cache) == 10);
	hashset_init(&s->seen);
	s->cache = NULL;
}

/*
 * The sender as the return thread sees it mid-migration (internal.h
 * describes its contents), then the return thread's loop on the frames.
 */
int proxy_send_fuzz(const uint8_t *data, size_t len)
{
	static const struct proxy_send_options o;
	static int ready;
	struct fuzz_input in = { .p = data, .len = len };
	struct sender *s = &fuzz_sender;
	uint64_t now = tsb_now_ns();
	int k, failed;

	if (!ready)
		ready = fuzz_setup() < 0 ? -1 : 1;
	if (ready < 0)
		return -ENOMEM;
	sender_init(s, &o);
	s->qfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (s->qfd < 0) {
		sender_fini(s);
		return -EIO;
	}
	s->fuzz = &in;
	s->seen = fuzz_seen;
	s->cache = fuzz_cache;
	/*
	 * A second into the migration, 4 MiB parsed with a delay sample every
	 * 256 KiB: an ACK recomputes the window.
	 */
	s->ack_rate_t0_ns = now - 1000000000ull;
	s->delay_min_t0 = now;
	for (k = 0; k < 16; k++) {
		s->delay_ring[k].off = (uint64_t)(k + 1) * DELAY_SAMPLE_EVERY;
		s->delay_ring[k].t = now - 1000000000ull + (uint64_t)k * 50000000ull;
	}
	s->delay_count = 16;
	s->delay_last_off = 16 * DELAY_SAMPLE_EVERY;
	return_loop(s, fuzz_z);
	/* It never ends silently: failed, a link to settle, or the receiver done. */
	FUZZ_CHECK(s, s->failed || s->link_lost || s->peer_done);
	fuzz_return(s);
	failed = s->failed;
	free(in.payload);
	sender_fini(s);
	return failed ? -EBADMSG : 0;
}
