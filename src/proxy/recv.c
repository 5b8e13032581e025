/*
 * The destination side: accepts the sender's connection, hands QEMU one
 * end of a socketpair for `migrate-incoming fd:`, and rebuilds QEMU's
 * stream from STREAM runs and PAGES batches (every page taken from the
 * content cache is checked against its hash; a miss or mismatch is asked
 * for with NEED). The return thread carries QEMU's return path back. The
 * main thread watches QEMU until the guest is loaded and paused, says
 * PREPARED, and runs or discards it as the sender's DECISION says
 * (docs/protocol.md, "Switchover").
 */
#include "proxy/commit.h"
#include "proxy/content.h"
#include "proxy/imagerec.h"
#include "proxy/internal.h"
#include "proxy/pagecache.h"
#include "proxy/record.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "qmp/qmp.h"
#include "qstream/qstream.h"
#include "wire/codec.h"
#include "wire/accept.h"
#include "wire/need.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Pages fetched by NEED kept at once (beyond the mirrored cache). */
#define FETCHED_PAGES 4096

struct fuzz_input;

struct receiver {
	const struct proxy_recv_options *o;
	struct wire_conn *conn;		/* NULL when fuzzing: frames come from fuzz */
	struct fuzz_input *fuzz;
	pthread_mutex_t send_lock;	/* one writer at a time on conn */
	int qfd;

	/* WAN thread only. */
	struct qs_writer *writer;
	struct qs_block blocks[WIRE_MAX_BLOCKS];
	bool block_known[WIRE_MAX_BLOCKS];
	struct pagecache *cache;
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
	bool first_pages;
	unsigned refused;		/* connections refused before the sender came */
	struct mig_record rec;		/* durable record of the switchover */
	int lock_fd;
	atomic_bool rp_shut;		/* QEMU's SHUT went to the sender */
	bool shut_parsed;		/* return thread: SHUT seen in the bytes */

	/* Content rebuilt locally (content.h); WAN thread only after setup. */
	struct store *store;
	struct diskindex *disks;
	struct disk_recv *disk;		/* the disk channel (docs/disk.md), or NULL */
	struct pagecache *fetched;	/* pages that came in HASHDATA (not mirrored) */
	struct image_rec arrival;	/* the arrival image being recorded */
	uint8_t page_buf[WIRE_PAGE_SIZE];
	uint8_t missing[WIRE_MAX_BATCH_PAGES][WIRE_HASH_LEN];
	uint8_t data_hash[WIRE_MAX_BATCH_PAGES][WIRE_HASH_LEN];
	/* The image of ours that SAME and SAMERUN entries refer to (BASE). */
	struct store_image *base;
	int base_block[WIRE_MAX_BLOCKS];
	uint8_t run_hashes[WIRE_MAX_SAMERUN][WIRE_HASH_LEN];
	uint8_t *run_buf;		/* WIRE_MAX_SAMERUN pages */
	char vm[WIRE_MAX_ID + 1], tenant[WIRE_MAX_ID + 1], image_id[33];
	char peer_site[WIRE_MAX_ID + 1], peer_image[WIRE_MAX_ID + 1];
	char credential[160];	/* the sender's key id or certificate (wire_conn_peer()) */
	uint64_t peer_gen, summary_bytes;

	/* Statistics. */
	uint64_t pages_zero, pages_data, pages_ref, pages_raw, needs, stream_bytes;
	uint64_t from_cache, from_fetched, from_store, from_disk;
};

static void fail(struct receiver *rc, enum proxy_outcome oc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fail(struct receiver *rc, enum proxy_outcome oc, const char *fmt, ...)
{
	va_list ap;
	int expected = 0;

	if (!atomic_compare_exchange_strong(&rc->failed, &expected, 1))
		return;
	rc->outcome = oc;
	va_start(ap, fmt);
	vsnprintf(rc->error, sizeof(rc->error), fmt, ap);
	va_end(ap);
	/*
	 * The destination QEMU sees its stream end early, fails the incoming
	 * migration and never runs a half-loaded guest.
	 */
	if (rc->qfd >= 0)
		shutdown(rc->qfd, SHUT_RDWR);
}

static int send_locked(struct receiver *rc, const struct tsb_buf *frame)
{
	if (!rc->conn)
		return 0; /* fuzzing: nobody to tell */
	int r;

	pthread_mutex_lock(&rc->send_lock);
	r = wire_conn_write(rc->conn, frame->data, frame->len);
	pthread_mutex_unlock(&rc->send_lock);
	return r;
}

static int send_u64(struct receiver *rc, uint8_t type, uint64_t v)
{
	struct tsb_buf b;
	int r;

	tsb_buf_init(&b);
	r = wire_encode_u64(&b, type, v);
	if (r == 0)
		r = send_locked(rc, &b);
	tsb_buf_fini(&b);
	return r;
}

/* qs_writer output: into the destination QEMU, with credits back. */
static int to_qemu(void *opaque, const uint8_t *p, size_t n)
{
	struct receiver *rc = opaque;
	int r = proxy_write_all(rc->qfd, p, n);

	if (r < 0)
		return r;
	rc->written += n;
	if (rc->written - rc->acked_sent >= PROXY_ACK_EVERY) {
		rc->acked_sent = rc->written;
		r = send_u64(rc, WIRE_MSG_ACK, rc->written);
	}
	return r;
}

static int flush_and_ack(struct receiver *rc)
{
	int r = qs_writer_flush(rc->writer);

	if (r == 0 && rc->written != rc->acked_sent) {
		rc->acked_sent = rc->written;
		r = send_u64(rc, WIRE_MSG_ACK, rc->written);
	}
	return r;
}

/* Starts the arrival image once the RAM blocks are known. */
static void image_setup(struct receiver *rc, const struct wire_blocks *b)
{
	struct image_rec_block blocks[WIRE_MAX_BLOCKS];
	struct store_image_info info = { 0 };
	struct wire_blocks_iter it;
	struct wire_block wb;
	size_t n = 0;

	wire_blocks_iter_init(b, &it);
	while (wire_blocks_next(&it, &wb) && n < WIRE_MAX_BLOCKS)
		blocks[n++] = (struct image_rec_block){
			.index = wb.index, .name = wb.name.p, .name_len = wb.name.len,
			.length = wb.used_length,
		};
	snprintf(info.id, sizeof(info.id), "%s", rc->image_id);
	snprintf(info.vm, sizeof(info.vm), "%s", rc->vm);
	info.role = STORE_IMAGE_ARRIVAL;
	snprintf(info.peer_site, sizeof(info.peer_site), "%s", rc->peer_site);
	snprintf(info.peer_image, sizeof(info.peer_image), "%s", rc->peer_image);
	info.peer_generation = rc->peer_gen;
	image_rec_start(&rc->arrival, &info, blocks, n);
}

/* Keeps an arrived page in the arrival image; true if the store holds its content. */
static bool record_page(struct receiver *rc, const struct qs_page *pg,
			enum store_page_state state, const uint8_t *hash)
{
	return image_rec_page(&rc->arrival, pg, state, hash);
}

/*
 * Finds content by hash, from the mirrored cache first (touched only for
 * REF, as the sender does), then pages fetched by NEED, the store and the
 * disk images. Every page is checked against its hash.
 */
static const uint8_t *resolve(struct receiver *rc, const uint8_t *want, bool touch)
{
	const uint8_t *page;
	uint8_t got[WIRE_HASH_LEN];
	bool cached = touch ? pagecache_touch(rc->cache, want) : pagecache_has(rc->cache, want);

	/* A cached hash may have its content in the store (pagecache.h). */
	page = cached ? pagecache_peek(rc->cache, want) : NULL;
	if (page && wire_sha256(page, WIRE_PAGE_SIZE, got) == 0 && !memcmp(got, want, WIRE_HASH_LEN)) {
		rc->from_cache++;
		return page;
	}
	page = pagecache_peek(rc->fetched, want);
	if (page && wire_sha256(page, WIRE_PAGE_SIZE, got) == 0 && !memcmp(got, want, WIRE_HASH_LEN)) {
		rc->from_fetched++;
		return page;
	}
	/* store_get and diskindex_get verify the hash themselves. */
	if (rc->store && store_get(rc->store, want, rc->page_buf) == 0) {
		if (cached)
			rc->from_cache++;	/* sent earlier in this migration */
		else
			rc->from_store++;
		return rc->page_buf;
	}
	if (rc->disks && diskindex_get(rc->disks, want, rc->page_buf) == 0) {
		rc->from_disk++;
		return rc->page_buf;
	}
	/* Blocks the disk channel wrote in this migration (docs/disk.md). */
	if (disk_recv_get(rc->disk, want, rc->page_buf) == 0) {
		rc->from_disk++;
		return rc->page_buf;
	}
	return NULL;
}

/* BASE: the sender will name pages of this image of ours. */
static int handle_base(struct receiver *rc, const struct wire_str *id)
{
	char name[WIRE_MAX_ID + 1];
	int r;

	snprintf(name, sizeof(name), "%.*s", (int)id->len, id->p);
	if (!rc->store) {
		fail(rc, PROXY_FAILED, "the sender refers to image %s, but this receiver has "
		     "no store", name);
		return -EPROTO;
	}
	store_image_free(rc->base);
	rc->base = NULL;
	r = store_image_load(rc->store, name, &rc->base);
	if (r < 0) {
		fail(rc, PROXY_FAILED, "the sender refers to image %s, which this store cannot "
		     "read: %s", name, strerror(-r));
		return r;
	}
	return 0;
}

/*
 * The hashes of a SAMERUN's pages from the BASE image, checked against the
 * entry's digest: a stale belief of the sender is refused here.
 */
static int samerun_hashes(struct receiver *rc, const struct wire_page_entry *e)
{
	uint8_t digest[WIRE_HASH_LEN];
	const uint8_t *h;
	int bb = rc->base ? rc->base_block[e->block] : -1;
	unsigned i;

	if (bb < 0)
		return -EPROTO;
	for (i = 0; i < e->count; i++) {
		if (store_image_page(rc->base, bb, e->offset / WIRE_PAGE_SIZE + i, &h) != STORE_PAGE_HASH)
			return -EPROTO;
		memcpy(rc->run_hashes[i], h, WIRE_HASH_LEN);
	}
	if (wire_sha256(rc->run_hashes, (size_t)e->count * WIRE_HASH_LEN, digest) < 0)
		return -EIO;
	return memcmp(digest, e->hash, WIRE_HASH_LEN) ? -EBADMSG : 0;
}

static int handle_blocks(struct receiver *rc, const struct wire_blocks *b)
{
	struct wire_blocks_iter it;
	struct wire_block wb;
	bool replaced[WIRE_MAX_BLOCKS] = { false };
	uint64_t total = 0;

	/* The sizes after this message (it may replace blocks), added up. */
	wire_blocks_iter_init(b, &it);
	while (wire_blocks_next(&it, &wb)) {
		replaced[wb.index] = true;
		total += wb.used_length > rc->ram_limit ? rc->ram_limit + 1 : wb.used_length;
	}
	for (unsigned i = 0; i < WIRE_MAX_BLOCKS; i++)
		if (rc->block_known[i] && !replaced[i])
			total += rc->blocks[i].used_length;
	if (rc->ram_limit && total > rc->ram_limit) {
		snprintf(rc->why, sizeof(rc->why), "the sender's RAM blocks exceed what the "
			 "destination VM has (%llu MiB with device memory)",
			 (unsigned long long)(rc->ram_limit >> 20));
		return -EMSGSIZE;
	}
	image_setup(rc, b);
	wire_blocks_iter_init(b, &it);
	while (wire_blocks_next(&it, &wb)) {
		rc->base_block[wb.index] = rc->base ?
			store_image_block_find(rc->base, wb.name.p, wb.name.len) : -1;
		struct qs_block *qb = &rc->blocks[wb.index];

		if (wb.name.len > QS_IDSTR_MAX)
			return -EMSGSIZE;
		memset(qb, 0, sizeof(*qb));
		qb->index = wb.index;
		qb->name_len = wb.name.len;
		memcpy(qb->name, wb.name.p, wb.name.len);
		qb->used_length = wb.used_length;
		rc->block_known[wb.index] = true;
	}
	return 0;
}

/*
 * May a frame wait aside until the HASHDATA came? An honest sender has at
 * most its credit window in flight; more is refused, not buffered.
 */
static int may_keep(void *opaque, const struct wire_frame *f, const struct wire_backlog *bl)
{
	struct receiver *rc = opaque;

	if (bl->bytes + f->len <= PROXY_BACKLOG_MAX)
		return 0;
	snprintf(rc->why, sizeof(rc->why), "the sender sent more than %llu MiB while a NEED "
		 "was outstanding", PROXY_BACKLOG_MAX >> 20);
	return -EMSGSIZE;
}

static int put_hashdata(struct receiver *rc, const struct wire_hashdata *h)
{
	struct tsb_buf scratch;
	const uint8_t *data;
	uint8_t got[WIRE_HASH_LEN];
	unsigned i;
	int r;

	if (h->obj_size != WIRE_PAGE_SIZE)
		return -EBADMSG;
	tsb_buf_init(&scratch);
	r = wire_hashdata_unpack(h, rc->z, &scratch, &data);
	for (i = 0; r == 0 && i < h->count; i++) {
		r = wire_sha256(data + (size_t)i * WIRE_PAGE_SIZE, WIRE_PAGE_SIZE, got);
		if (r == 0 && memcmp(got, h->hashes + (size_t)i * WIRE_HASH_LEN, WIRE_HASH_LEN))
			r = -EBADMSG; /* the sender's bytes do not match its own hash */
		/* Not the mirrored cache: the sender did not put it in its own. */
		if (r == 0)
			r = pagecache_put(rc->fetched, got, data + (size_t)i * WIRE_PAGE_SIZE);
	}
	tsb_buf_fini(&scratch);
	return r;
}

static bool all_fetched(struct receiver *rc, const uint8_t (*hashes)[WIRE_HASH_LEN],
			size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!pagecache_has(rc->fetched, hashes[i]))
			return false;
	return true;
}

struct fuzz_input {
	const uint8_t *p;
	size_t len, off;
};

/* The next frame from the sender (or from the fuzzer's input): 1, 0 at the end, -errno. */
static int next_frame(struct receiver *rc, struct wire_frame *f)
{
	struct fuzz_input *in = rc->fuzz;
	int r;

	if (!in)
		return wire_conn_read_frame(rc->conn, f);
	if (in->len - in->off < WIRE_HDR_LEN)
		return 0;
	r = wire_header_decode(in->p + in->off, f);
	if (r < 0)
		return r;
	in->off += WIRE_HDR_LEN;
	if (f->len > in->len - in->off)
		return -EBADMSG;
	f->payload = in->p + in->off;
	in->off += f->len;
	return 1;
}

/* A HASHDATA while fetching: kept (checked) in rc->fetched; 1 once all asked for came. */
static int take_answer(void *opaque, const struct wire_hashdata *h)
{
	struct receiver *rc = opaque;
	int r = put_hashdata(rc, h);

	if (r < 0)
		return r;
	return all_fetched(rc, rc->fetching, rc->n_fetching) ? 1 : 0;
}

static int send_frame(void *opaque, const struct tsb_buf *frame)
{
	return send_locked(opaque, frame);
}

static int read_frame(void *opaque, struct wire_frame *f)
{
	return next_frame(opaque, f);
}

/*
 * Pages we were told we hold are missing or damaged: ask for them in one
 * NEED and read on until they all arrived, keeping other frames for later.
 */
static int fetch_missing(struct receiver *rc, const uint8_t (*hashes)[WIRE_HASH_LEN],
			 size_t n)
{
	const struct wire_fetch_io io = {
		.opaque = rc, .send = send_frame, .read = read_frame, .may_keep = may_keep,
		.answer = take_answer,
	};

	rc->needs += n;
	rc->fetching = hashes;
	rc->n_fetching = n;
	return wire_fetch(&io, &rc->backlog, hashes, n);
}

/* True if resolve() will probably find the content (cheap checks only). */
static bool can_resolve(struct receiver *rc, const uint8_t *hash)
{
	return pagecache_has(rc->cache, hash) || pagecache_has(rc->fetched, hash) ||
	       (rc->store && store_has(rc->store, hash)) ||
	       (rc->disks && diskindex_has(rc->disks, hash)) ||
	       disk_recv_has(rc->disk, hash);
}

/* This batch's DATA hashes, as a small open-addressing set. */
#define BATCH_SET 2048
static void batch_set_add(uint16_t *set, uint8_t (*hashes)[WIRE_HASH_LEN], uint16_t i)
{
	uint64_t key;
	size_t j;

	memcpy(&key, hashes[i], sizeof(key));
	for (j = key % BATCH_SET; set[j]; j = (j + 1) % BATCH_SET)
		;
	set[j] = i + 1;
}

static bool batch_set_has(const uint16_t *set, uint8_t (*hashes)[WIRE_HASH_LEN],
			  const uint8_t *hash)
{
	uint64_t key;
	size_t j;

	memcpy(&key, hash, sizeof(key));
	for (j = key % BATCH_SET; set[j]; j = (j + 1) % BATCH_SET)
		if (!memcmp(hashes[set[j] - 1], hash, WIRE_HASH_LEN))
			return true;
	return false;
}

/*
 * Fetches pages in the middle of a PAGES batch: frames read meanwhile end
 * the views into f, so the batch is kept in rc->copy (once) and decoded
 * again from there into *m.
 */
static int fetch_mid_batch(struct receiver *rc, const struct wire_frame *f, bool *copied,
			   const uint8_t (*hashes)[WIRE_HASH_LEN], size_t n, struct wire_msg *m)
{
	int r;

	if (!*copied) {
		tsb_buf_reset(&rc->copy);
		if (tsb_buf_append(&rc->copy, f->payload, f->len) < 0)
			return -ENOMEM;
		*copied = true;
	}
	r = fetch_missing(rc, hashes, n);
	if (r == 0)
		r = wire_msg_decode(WIRE_MSG_PAGES, f->flags, rc->copy.data, rc->copy.len, m);
	return r;
}

/*
 * Before a PAGES batch is applied: hashes its DATA pages (into
 * rc->data_hash, by data index) and lists in rc->missing every referenced
 * page we will not hold (the sender's filter of our content can be
 * wrong), to be asked for in one round trip. Returns how many.
 */
static ssize_t prefetch(struct receiver *rc, const struct wire_pages *p, const uint8_t *literal)
{
	uint8_t (*missing)[WIRE_HASH_LEN] = rc->missing;
	uint16_t set[BATCH_SET] = { 0 };
	struct wire_page_iter it;
	struct wire_page_entry e;
	size_t n = 0;
	int r;

	wire_pages_iter_init(p, &it);
	while (wire_pages_next(&it, &e)) {
		if (e.enc == WIRE_ENC_DATA) {
			r = wire_sha256(literal + (size_t)e.data_index * WIRE_PAGE_SIZE, WIRE_PAGE_SIZE,
					rc->data_hash[e.data_index]);
			if (r < 0)
				return r;
			batch_set_add(set, rc->data_hash, (uint16_t)e.data_index);
		} else if ((e.enc == WIRE_ENC_REF || e.enc == WIRE_ENC_SAME) &&
			   n < WIRE_MAX_BATCH_PAGES && !can_resolve(rc, e.hash) &&
			   !batch_set_has(set, rc->data_hash, e.hash)) {
			memcpy(missing[n++], e.hash, WIRE_HASH_LEN);
		} else if (e.enc == WIRE_ENC_SAMERUN && samerun_hashes(rc, &e) == 0) {
			unsigned i;

			for (i = 0; i < e.count && n < WIRE_MAX_BATCH_PAGES; i++)
				if (!can_resolve(rc, rc->run_hashes[i]))
					memcpy(missing[n++], rc->run_hashes[i], WIRE_HASH_LEN);
		}
	}
	return (ssize_t)n;
}

/* What applying one page entry came to. */
enum {
	ENTRY_APPLIED = 1,	/* written to QEMU's stream (and recorded) */
	ENTRY_FETCH = 2,	/* rc->missing lists pages to fetch first; nothing written */
};

/* A SAMERUN entry: all its pages or, if some are missing, none yet. */
static int apply_samerun(struct receiver *rc, const struct wire_page_entry *e,
			 struct qs_page *pg, size_t *n_missing)
{
	const uint8_t *page;
	size_t i;
	int r;

	r = samerun_hashes(rc, e);
	if (r < 0)
		return r;
	/* Taken when first needed: most migrations have no SAMERUN. */
	if (!rc->run_buf)
		rc->run_buf = malloc((size_t)WIRE_MAX_SAMERUN * WIRE_PAGE_SIZE);
	if (!rc->run_buf)
		return -ENOMEM;
	*n_missing = 0;
	for (i = 0; i < e->count; i++) {
		page = resolve(rc, rc->run_hashes[i], false);
		if (page)
			memcpy(rc->run_buf + i * WIRE_PAGE_SIZE, page, WIRE_PAGE_SIZE);
		else
			memcpy(rc->missing[(*n_missing)++], rc->run_hashes[i], WIRE_HASH_LEN);
	}
	if (*n_missing)
		return ENTRY_FETCH;
	for (i = 0; i < e->count; i++) {
		pg->kind = QS_PAGE_NORMAL;
		pg->offset = e->offset + i * WIRE_PAGE_SIZE;
		pg->cont = i ? true : (e->qflags & QS_RAM_CONTINUE);
		pg->data = rc->run_buf + i * WIRE_PAGE_SIZE;
		pg->len = WIRE_PAGE_SIZE;
		record_page(rc, pg, STORE_PAGE_HASH, rc->run_hashes[i]);
		r = qs_writer_page(rc->writer, pg);
		if (r < 0)
			return r;
	}
	rc->pages_ref += e->count;
	return ENTRY_APPLIED;
}

/* One page entry of a batch (literal: the batch's DATA pages). */
static int apply_entry(struct receiver *rc, const struct wire_page_entry *e,
		       const uint8_t *literal, size_t *n_missing)
{
	struct qs_page pg = {
		.block = &rc->blocks[e->block], .offset = e->offset,
		.cont = e->qflags & QS_RAM_CONTINUE,
	};
	const uint8_t *page;
	bool kept;
	int r;

	switch (e->enc) {
	case WIRE_ENC_ZERO:
		pg.kind = QS_PAGE_ZERO;
		pg.fill = e->fill;
		pg.len = 1;
		record_page(rc, &pg, e->fill ? STORE_PAGE_UNKNOWN : STORE_PAGE_ZERO, NULL);
		rc->pages_zero++;
		break;
	case WIRE_ENC_DATA:
		pg.kind = QS_PAGE_NORMAL;
		pg.data = literal + (size_t)e->data_index * WIRE_PAGE_SIZE;
		pg.len = WIRE_PAGE_SIZE;
		/* Hashed by prefetch(). Content the store keeps is not copied twice. */
		kept = record_page(rc, &pg, STORE_PAGE_HASH, rc->data_hash[e->data_index]);
		r = pagecache_put(rc->cache, rc->data_hash[e->data_index], kept ? NULL : pg.data);
		if (r < 0)
			return r;
		rc->pages_data++;
		break;
	case WIRE_ENC_REF:
	case WIRE_ENC_SAME:
		/* A reference never decides correctness: resolve() checks the bytes. */
		page = resolve(rc, e->hash, e->enc == WIRE_ENC_REF);
		if (!page) {
			memcpy(rc->missing[0], e->hash, WIRE_HASH_LEN);
			*n_missing = 1;
			return ENTRY_FETCH;
		}
		pg.kind = QS_PAGE_NORMAL;
		pg.data = page;
		pg.len = WIRE_PAGE_SIZE;
		record_page(rc, &pg, STORE_PAGE_HASH, e->hash);
		rc->pages_ref++;
		break;
	case WIRE_ENC_SAMERUN:
		return apply_samerun(rc, e, &pg, n_missing);
	case WIRE_ENC_RAW:
		if (!(e->qflags & QS_RAM_XBZRLE))
			return -EOPNOTSUPP;
		pg.kind = QS_PAGE_XBZRLE;
		pg.data = e->bytes;
		pg.len = e->bytes_len;
		record_page(rc, &pg, STORE_PAGE_UNKNOWN, NULL);
		rc->pages_raw++;
		break;
	default:
		return -EOPNOTSUPP;
	}
	r = qs_writer_page(rc->writer, &pg);
	return r < 0 ? r : ENTRY_APPLIED;
}

/*
 * Applies the entries of a batch from *done on, counting them in *done;
 * 0 when all are applied, ENTRY_FETCH when one needs pages fetched first
 * (*n_missing of them in rc->missing), or -errno.
 */
static int apply_batch(struct receiver *rc, const struct wire_pages *p, const uint8_t *literal,
		       uint64_t *done, size_t *n_missing)
{
	struct wire_page_iter it;
	struct wire_page_entry e;
	uint64_t k;
	int r;

	wire_pages_iter_init(p, &it);
	for (k = 0; wire_pages_next(&it, &e); k++) {
		if (k < *done)
			continue;
		if (!rc->block_known[e.block])
			return -EPROTO;
		r = apply_entry(rc, &e, literal, n_missing);
		if (r < 0 || r == ENTRY_FETCH)
			return r;
		*done = k + 1;
	}
	return 0;
}

static int handle_pages(struct receiver *rc, const struct wire_frame *f)
{
	const uint8_t (*missing)[WIRE_HASH_LEN] = (const uint8_t (*)[WIRE_HASH_LEN])rc->missing;
	const uint8_t *literal;
	struct wire_msg m;
	uint64_t done = 0;
	bool copied = false;
	size_t n_missing;
	ssize_t n;
	int r;

	r = wire_frame_decode(f, &m);
	if (r < 0)
		return r;
	if (m.u.pages.page_size != WIRE_PAGE_SIZE)
		return -EOPNOTSUPP;
	r = wire_pages_unpack(&m.u.pages, rc->z, &rc->scratch, &literal);
	if (r < 0)
		return r;
	n = prefetch(rc, &m.u.pages, literal);
	if (n < 0)
		return (int)n;
	if (n > 0) {
		r = fetch_mid_batch(rc, f, &copied, missing, (size_t)n, &m);
		if (r < 0)
			return r;
	}
	for (;;) {
		/* Decoded again from the copy: the literal view may have died with a read. */
		if (copied) {
			r = wire_pages_unpack(&m.u.pages, rc->z, &rc->scratch, &literal);
			if (r < 0)
				return r;
		}
		r = apply_batch(rc, &m.u.pages, literal, &done, &n_missing);
		if (r != ENTRY_FETCH)
			return r;
		r = fetch_mid_batch(rc, f, &copied, missing, n_missing, &m);
		if (r < 0)
			return r;
	}
}

/* Handles one frame from the sender: 0, or -errno when it must end the migration. */
static int handle_frame(struct receiver *rc, const struct wire_frame *f)
{
	const uint8_t *data;
	struct wire_msg m;
	int r;

	if (!wire_msg_role_ok(f->type, WIRE_ROLE_SENDER))
		return -EPROTO;
	if (f->type == WIRE_MSG_PAGES)
		return handle_pages(rc, f);
	r = wire_frame_decode(f, &m);
	if (r < 0)
		return r;
	switch (m.type) {
	case WIRE_MSG_BLOCKS:
		return handle_blocks(rc, &m.u.blocks);
	case WIRE_MSG_STREAM:
		r = wire_run_unpack(&m.u.run, rc->z, &rc->scratch, &data);
		if (r == 0) {
			rc->stream_bytes += m.u.run.raw_len;
			r = qs_writer_raw(rc->writer, data, m.u.run.raw_len);
		}
		return r;
	case WIRE_MSG_HASHDATA:
		return put_hashdata(rc, &m.u.hashdata);
	case WIRE_MSG_BASE:
		return handle_base(rc, &m.u.base);
	case WIRE_MSG_CANCEL:
	case WIRE_MSG_ERROR:
		fail(rc, PROXY_FAILED, "the sender %s: %.*s",
		     m.type == WIRE_MSG_CANCEL ? "cancelled" : "reported an error",
		     (int)m.u.status.text.len, m.u.status.text.p);
		return -ECANCELED;
	case WIRE_MSG_PING:
		return send_u64(rc, WIRE_MSG_PONG, m.u.ping);
	case WIRE_MSG_DECISION:
		if (m.u.status.code == WIRE_DECIDE_ABORT && !rc->prepared) {
			fail(rc, PROXY_FAILED, "the sender aborted the migration");
			return -ECANCELED;
		}
		if (!rc->prepared || (m.u.status.code != WIRE_DECIDE_COMMIT &&
				      m.u.status.code != WIRE_DECIDE_ABORT))
			return -EPROTO;
		rc->decision = (int)m.u.status.code;
		return 0;
	default:
		return 0;
	}
}

/* The connection ended: before PREPARED the migration fails, after it we wait. */
static void link_ended(struct receiver *rc, enum proxy_outcome oc, const char *what)
{
	if (rc->prepared) {
		rc->link_lost = true;
		return;
	}
	fail(rc, oc, "%s", what);
}

/* Handles the sender's frames until the connection ends or fails. */
static void process_frames(struct receiver *rc)
{
	struct wire_frame f;
	int r;

	while (!rc->failed) {
		/* Frames set aside during a NEED go first, in order. */
		while (wire_backlog_take(&rc->backlog, &f) == 1) {
			r = handle_frame(rc, &f);
			/* What they rebuilt must reach QEMU now, not after the next read. */
			if (r == 0)
				r = flush_and_ack(rc);
			if (r < 0)
				goto bad;
		}
		r = next_frame(rc, &f);
		if (r == 0) {
			rc->sender_closed = true;
			link_ended(rc, PROXY_LINK, "the sender closed the connection before "
				   "the migration completed");
			break;
		}
		if (r < 0) {
			char what[300];

			snprintf(what, sizeof(what), "link to the sender: %s",
				 rc->conn && wire_conn_errmsg(rc->conn)[0] ?
				 wire_conn_errmsg(rc->conn) : strerror(-r));
			link_ended(rc, proxy_outcome_of_errno(r), what);
			break;
		}
		if (f.type == WIRE_MSG_PAGES && !rc->first_pages) {
			rc->first_pages = true;
			tsb_fault_point("precopy");
		}
		r = handle_frame(rc, &f);
		if (r == 0)
			r = flush_and_ack(rc);
		if (r < 0)
			goto bad;
	}
	return;
bad:
	if (rc->prepared) {
		rc->link_lost = true;
		return;
	}
	if (!rc->failed && rc->why[0])
		fail(rc, PROXY_FAILED, "refused: %s", rc->why);
	if (!rc->failed)
		fail(rc, r == -EOPNOTSUPP ? PROXY_UNSUPPORTED : r == -EPIPE ||
		     r == -ECONNRESET ? PROXY_FAILED : proxy_outcome_of_errno(r),
		     "rebuilding the stream for QEMU: %s%s", strerror(-r),
		     r == -EPIPE || r == -ECONNRESET ? " (the destination QEMU closed it)" : "");
	return;
}

static void *wan_thread(void *arg)
{
	process_frames(arg);
	return NULL;
}

static int on_rp_msg(void *opaque, const struct qs_rp_msg *m)
{
	struct receiver *rc = opaque;

	if (m->type == QS_RP_SHUT)
		rc->shut_parsed = true;
	return 0;
}

/*
 * QEMU's return path -> RETURN frames, unbatched (postcopy faults wait on
 * them). The bytes are also parsed, to know when QEMU's SHUT has gone out.
 */
static void *return_thread(void *arg)
{
	static const struct qs_rp_handlers h = { .msg = on_rp_msg };
	struct receiver *rc = arg;
	struct qs_rp_parser *rp = qs_rp_parser_new(&h, rc);
	bool parsing = rp != NULL;
	uint8_t buf[16384];
	struct tsb_buf b;
	ssize_t n;
	int r;

	tsb_buf_init(&b);
	for (;;) {
		n = read(rc->qfd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		/* Only a hint for our shutdown order: relay even what we cannot parse. */
		if (parsing && qs_rp_parser_feed(rp, buf, n) < 0)
			parsing = false;
		tsb_buf_reset(&b);
		r = wire_encode_run(&b, WIRE_MSG_RETURN, buf, n, NULL);
		if (r == 0)
			r = send_locked(rc, &b);
		if (r < 0) {
			if (!rc->prepared)
				fail(rc, proxy_outcome_of_errno(r), "sending QEMU's return path: %s",
				     strerror(-r));
			break;
		}
		if (rc->shut_parsed)
			rc->rp_shut = true;
	}
	tsb_buf_fini(&b);
	qs_rp_parser_free(rp);
	rc->rp_shut = true;
	return NULL;
}

/* How much RAM a stream for the destination VM may describe (BLOCKS cap). */
static uint64_t ram_limit_of(struct qmp *q)
{
	json_t *m = NULL;
	uint64_t base = 0, plugged = 0;

	if (qmp_execute(q, "query-memory-size-summary", NULL, &m, NULL, 0) == 0) {
		base = (uint64_t)json_integer_value(json_object_get(m, "base-memory"));
		plugged = (uint64_t)json_integer_value(json_object_get(m, "plugged-memory"));
	}
	json_decref(m);
	if (!base || base > (1ull << 50) || plugged > (1ull << 50))
		return 0; /* unknown: the destination QEMU checks the stream itself */
	return base + plugged + PROXY_DEVICE_RAM_MAX;
}

static int setup_destination(struct qmp *q, bool postcopy, char *err, size_t errlen)
{
	json_t *st = NULL, *args;
	const char *status;
	int r;

	r = qmp_execute(q, "query-status", NULL, &st, err, errlen);
	if (r < 0)
		return r;
	status = json_string_value(json_object_get(st, "status"));
	if (!status || strcmp(status, "inmigrate")) {
		snprintf(err, errlen, "the destination QEMU is '%s'; start it with "
			 "-incoming defer", status ? status : "?");
		json_decref(st);
		return -EPROTO;
	}
	json_decref(st);
	/*
	 * 'stop' while incoming turns QEMU's autostart off: the guest stays
	 * paused after loading until the sender's commit (docs/protocol.md).
	 */
	r = qmp_execute(q, "stop", NULL, NULL, err, errlen);
	if (r < 0)
		return r;
	args = json_pack("{s:[{s:s, s:b}, {s:s, s:b}]}", "capabilities",
			 "capability", "events", "state", 1,
			 "capability", "postcopy-ram", "state", postcopy);
	r = qmp_execute(q, "migrate-set-capabilities", args, NULL, err, errlen);
	json_decref(args);
	return r;
}

/*
 * Who is arriving: the VM, its tenant and the sender's image of it. Opens
 * the tenant's part of our store.
 */
static int take_sender_identity(struct receiver *rc, const struct wire_hello *peer,
				char *err, size_t errlen)
{
	const struct proxy_recv_options *o = rc->o;
	int r;

	snprintf(rc->vm, sizeof(rc->vm), "%.*s", (int)peer->vm.len, peer->vm.p);
	snprintf(rc->peer_site, sizeof(rc->peer_site), "%.*s", (int)peer->site.len,
		 peer->site.p);
	snprintf(rc->peer_image, sizeof(rc->peer_image), "%.*s", (int)peer->migration.len,
		 peer->migration.p);
	rc->peer_gen = peer->store_gen;
	if (peer->tenant.len)
		snprintf(rc->tenant, sizeof(rc->tenant), "%.*s", (int)peer->tenant.len,
			 peer->tenant.p);
	if (o->c.tenant && rc->tenant[0] && strcmp(o->c.tenant, rc->tenant)) {
		/* Content never crosses tenants: refuse rather than guess. */
		snprintf(err, errlen, "tenant mismatch: the sender migrates a VM of tenant "
			 "'%s', this receiver serves tenant '%s'", rc->tenant, o->c.tenant);
		return -EACCES;
	}
	if (!o->c.store_dir || !rc->vm[0])
		return 0; /* a sender without a store: nothing to record under */
	if (!rc->tenant[0])
		content_tenant(o->c.tenant, rc->vm, rc->tenant);
	content_new_id(rc->image_id);
	r = content_open_store(&o->c, rc->tenant, &rc->store, err, errlen);
	rc->arrival.store = rc->store;
	return r;
}

/*
 * May this credential migrate the VM of this HELLO? A key or certificate
 * bound to tenants (wire/tls.h) acts only for them; the tenant is the
 * sender's, or else ours, or else the VM's own (content_tenant()).
 */
static bool credential_allows(const struct wire_conn *c, const struct wire_hello *peer,
			      const char *our_tenant, char *why, size_t len)
{
	char vm[WIRE_MAX_ID + 1], tenant[WIRE_MAX_ID + 1];

	if (peer->tenant.len) {
		snprintf(tenant, sizeof(tenant), "%.*s", (int)peer->tenant.len, peer->tenant.p);
	} else {
		snprintf(vm, sizeof(vm), "%.*s", (int)peer->vm.len, peer->vm.p);
		content_tenant(our_tenant, vm, tenant);
	}
	if (wire_conn_peer_may_act_for(c, tenant, strlen(tenant)))
		return true;
	snprintf(why, len, "%s may act for tenant(s) %s only; the sender migrates a VM of "
		 "tenant '%s'", wire_conn_peer(c), wire_conn_peer_tenants(c), tenant);
	return false;
}

/* Is this authenticated peer a sender we take? (wire/accept.h) */
static bool want_sender(const struct wire_conn *c, const struct wire_hello *peer, void *opaque,
			char *why, size_t len)
{
	struct receiver *rc = opaque;
	const char *tenant = rc->o->c.tenant;

	if (peer->caps & WIRE_CAP_RESOLVE) {
		snprintf(why, len, "no migration %.*s waits for its decision here",
			 (int)peer->migration.len, peer->migration.p);
		return false;
	}
	if (!(peer->caps & WIRE_CAP_COMMIT) || !peer->migration.len) {
		snprintf(why, len, "the sender does not commit its switchover (an older "
			 "tsubame?): refused, so that the guest can never run on both sides");
		return false;
	}
	if (rc->o->vm_id && (peer->vm.len != strlen(rc->o->vm_id) ||
			     memcmp(peer->vm.p, rc->o->vm_id, peer->vm.len))) {
		snprintf(why, len, "this receiver waits for VM '%s'; the sender migrates VM "
			 "'%.*s'", rc->o->vm_id, (int)peer->vm.len, peer->vm.p);
		return false;
	}
	if (tenant && peer->tenant.len && (peer->tenant.len != strlen(tenant) ||
					   memcmp(peer->tenant.p, tenant, peer->tenant.len))) {
		/* Content never crosses tenants: refuse rather than guess. */
		snprintf(why, len, "tenant mismatch: the sender migrates a VM of tenant '%.*s', "
			 "this receiver serves tenant '%s'", (int)peer->tenant.len,
			 peer->tenant.p, tenant);
		return false;
	}
	return credential_allows(c, peer, tenant, why, len);
}

/* Names the migration and takes its lock; the record is written at PREPARED. */
static int record_begin(struct receiver *rc, const struct wire_hello *peer, char *err,
			size_t errlen)
{
	const struct proxy_recv_options *o = rc->o;
	struct mig_record *m = &rc->rec;

	snprintf(m->id, sizeof(m->id), "%.*s", (int)peer->migration.len, peer->migration.p);
	snprintf(m->side, sizeof(m->side), "recv");
	snprintf(m->peer, sizeof(m->peer), "%s", o->listen);
	snprintf(m->qmp, sizeof(m->qmp), "%s", o->c.qmp_path);
	snprintf(m->vm, sizeof(m->vm), "%s", rc->vm);
	if (strchr(m->id, '/') || m->id[0] == '.') {
		snprintf(err, errlen, "bad migration id '%s'", m->id);
		return -EINVAL;
	}
	rc->lock_fd = record_lock(o->c.state_dir, m->id, "recv");
	if (rc->lock_fd < 0) {
		snprintf(err, errlen, "cannot lock the record of migration %s in %s: %s",
			 m->id, o->c.state_dir, rc->lock_fd == -EBUSY ? "another process holds it"
			 : strerror(-rc->lock_fd));
		return rc->lock_fd;
	}
	return 0;
}

static json_t *make_report(struct receiver *rc, uint64_t start_ns, uint64_t resume_ns)
{
	struct wire_conn_stats ws = { 0 };
	json_t *r = json_object();

	if (rc->conn)
		wire_conn_get_stats(rc->conn, &ws);
	json_object_set_new(r, "side", json_string("recv"));
	json_object_set_new(r, "outcome", json_string(proxy_outcome_name(
		rc->failed ? rc->outcome : PROXY_OK)));
	if (rc->error[0])
		json_object_set_new(r, "error", json_string(rc->error));
	json_object_set_new(r, "total_time_ms", json_integer((tsb_now_ns() - start_ns) / 1000000));
	if (resume_ns)
		json_object_set_new(r, "resume_time_ns", json_integer(resume_ns));
	json_object_set_new(r, "qemu_stream_bytes", json_integer(rc->written));
	json_object_set_new(r, "refused_connections", json_integer(rc->refused));
	json_object_set_new(r, "wan", json_pack("{s:I, s:I}",
		"bytes_received", (json_int_t)ws.net_in, "bytes_sent", (json_int_t)ws.net_out));
	json_object_set_new(r, "pages", json_pack("{s:I, s:I, s:I, s:I, s:I}",
		"zero", (json_int_t)rc->pages_zero, "data", (json_int_t)rc->pages_data,
		"reference", (json_int_t)rc->pages_ref, "raw", (json_int_t)rc->pages_raw,
		"need_asked", (json_int_t)rc->needs));
	json_object_set_new(r, "rebuilt_from", json_pack("{s:I, s:I, s:I, s:I}",
		"cache", (json_int_t)rc->from_cache, "fetched", (json_int_t)rc->from_fetched,
		"store", (json_int_t)rc->from_store, "disk", (json_int_t)rc->from_disk));
	if (rc->disks)
		json_object_set_new(r, "disk_index", json_pack("{s:I, s:I}",
			"files", (json_int_t)diskindex_files(rc->disks),
			"blocks", (json_int_t)diskindex_count(rc->disks)));
	if (rc->store)
		json_object_set_new(r, "store", json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}",
			"site", store_site_id(rc->store), "tenant", rc->tenant, "vm", rc->vm,
			"image", rc->image_id, "from_site", rc->peer_site,
			"summary_filter_bytes", (json_int_t)rc->summary_bytes));
	return r;
}

/* Is the destination QEMU past loading (paused, waiting for us)? */
static bool dest_paused(struct qmp *q)
{
	json_t *st = NULL;
	const char *v;
	bool paused;

	if (qmp_execute(q, "query-status", NULL, &st, NULL, 0) < 0)
		return false;
	v = json_string_value(json_object_get(st, "status"));
	paused = v && !strcmp(v, "paused");
	json_decref(st);
	return paused;
}

/*
 * Watches the destination QEMU until the incoming migration has loaded
 * (precopy: completed; postcopy: the guest's device state is in and QEMU
 * waits to run it). Autostart is off, so the guest stays paused.
 */
static void wait_loaded(struct receiver *rc, struct qmp *q, volatile int *sig)
{
	const struct proxy_recv_options *o = rc->o;
	bool loaded = false, postcopy = false;
	struct qmp_event ev;
	uint64_t t0 = tsb_now_ns();
	int r;

	while (!rc->failed && !loaded) {
		r = qmp_next_event(q, 200, &ev);
		if (r == 0) {
			const char *st = json_string_value(json_object_get(ev.data, "status"));

			if (!strcmp(ev.name, "RESUME"))
				fail(rc, PROXY_FAILED, "the destination QEMU ran the guest on its "
				     "own (autostart could not be turned off)");
			else if (!strcmp(ev.name, "MIGRATION") && st && !strcmp(st, "failed"))
				fail(rc, PROXY_FAILED, "the destination QEMU failed to load "
				     "the migration stream");
			else if (!strcmp(ev.name, "MIGRATION") && st && !strcmp(st, "completed"))
				loaded = dest_paused(q);
			else if (!strcmp(ev.name, "MIGRATION") && st &&
				 !strcmp(st, "postcopy-active"))
				postcopy = true;
			qmp_event_fini(&ev);
		} else if (r != -ETIMEDOUT) {
			fail(rc, PROXY_FAILED, "the destination QEMU went away: %s", strerror(-r));
		} else if (postcopy) {
			loaded = dest_paused(q);
		}
		if (*sig && !rc->failed)
			fail(rc, PROXY_INTERRUPTED, "interrupted by signal %d", *sig);
		if (disk_recv_failed(rc->disk) && !rc->failed)
			fail(rc, PROXY_LINK, "the disk transfer failed");
		if (o->c.timeout_ms && (tsb_now_ns() - t0) / 1000000 > o->c.timeout_ms)
			fail(rc, PROXY_TIMEOUT, "the migration did not finish in time");
	}
}

static int send_status_locked(struct receiver *rc, uint8_t type, uint32_t code,
			      const char *text)
{
	int r;

	pthread_mutex_lock(&rc->send_lock);
	r = wire_conn_send_status(rc->conn, type, code, text);
	pthread_mutex_unlock(&rc->send_lock);
	return r;
}

/*
 * Waits for the decision on the main connection; when it is lost, for the
 * sender to reconnect with it. > 0 the decision (*ret_conn: where to answer,
 * NULL for the main connection); -ETIMEDOUT/-EINTR: still in doubt; -EIO:
 * the destination QEMU died (it can never run the guest).
 */
static int await_decision(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
			  volatile int *sig, struct wire_conn **ret_conn)
{
	const struct proxy_recv_options *o = rc->o;
	struct commit_link l = {
		.c = &o->c, .tls = tls, .addr = o->listen, .id = rc->rec.id, .sig = sig,
		.credential = rc->credential,
	};
	struct qmp_event ev;
	int r;

	*ret_conn = NULL;
	while (!rc->decision && !rc->link_lost && !*sig) {
		r = qmp_next_event(q, 200, &ev);
		if (r == 0)
			qmp_event_fini(&ev);
		else if (r != -ETIMEDOUT)
			return -EIO;
	}
	if (rc->decision)
		return rc->decision;
	if (*sig)
		return -EINTR;
	log_warn("the link to the sender was lost while the guest waits here, paused, "
		 "for the sender's decision");
	l.deadline_ns = tsb_now_ns() + o->c.commit_timeout_ms * 1000000;
	return commit_await(&l, ret_conn);
}

/* Tells the sender the outcome, reconnection included; false if it never heard. */
static bool tell_outcome(struct receiver *rc, struct wire_tls *tls, volatile int *sig,
			 struct wire_conn *c, int outcome, const char *text)
{
	struct commit_link l = {
		.c = &rc->o->c, .tls = tls, .addr = rc->o->listen, .id = rc->rec.id, .sig = sig,
		.credential = rc->credential,
	};
	uint64_t t0 = tsb_now_ns();
	int r;

	if (c) {
		r = commit_answer(c, outcome, text);
		wire_conn_free(c);
	} else {
		r = send_status_locked(rc, WIRE_MSG_OUTCOME, (uint32_t)outcome, text);
		tsb_fault_point("outcome-sent");
		/* Known there once the sender closes after reading it. */
		while (r == 0 && !rc->sender_closed && !rc->link_lost &&
		       tsb_now_ns() - t0 < 10000000000ull)
			usleep(10000);
		r = r == 0 && rc->sender_closed ? 0 : -ECONNRESET;
	}
	if (r == 0)
		return true;
	/* The sender will come back for it: answer the same again. */
	l.deadline_ns = tsb_now_ns() + rc->o->c.commit_timeout_ms * 1000000;
	while (commit_await(&l, &c) > 0) {
		r = commit_answer(c, outcome, text);
		wire_conn_free(c);
		if (r == 0)
			return true;
	}
	return false;
}

/*
 * Switchover (docs/protocol.md): the guest is loaded and paused. Keep a
 * record, say PREPARED, and run or discard the guest as the sender decides.
 * Without a decision within --commit-timeout the guest stays paused, the
 * record stays, and the outcome is PROXY_IN_DOUBT.
 */
static void settle(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
		   volatile int *sig, uint64_t *ret_resume_ns)
{
	const struct proxy_recv_options *o = rc->o;
	struct wire_conn *c = NULL;
	char err[512], text[96];
	int d, outcome;

	/* QEMU's last word on the return path (SHUT) goes out before PREPARED. */
	for (uint64_t t0 = tsb_now_ns(); !rc->rp_shut && tsb_now_ns() - t0 < 10000000000ull;)
		usleep(5000);
	tsb_fault_point("dest-loaded");
	disk_recv_stop_listening(rc->disk);
	snprintf(rc->rec.state, sizeof(rc->rec.state), "prepared");
	if (record_save(o->c.state_dir, &rc->rec, err, sizeof(err)) < 0) {
		fail(rc, PROXY_FAILED, "%s; the guest cannot be held here", err);
		return;
	}
	rc->prepared = true;
	if (send_status_locked(rc, WIRE_MSG_PREPARED, WIRE_CODE_OK, "loaded") < 0)
		rc->link_lost = true;
	tsb_fault_point("prepared-sent");
	d = await_decision(rc, q, tls, sig, &c);
	if (d == -EIO) {
		/* The QEMU holding the guest is gone: it can never run here. */
		fail(rc, PROXY_FAILED, "the destination QEMU died while the guest waited for "
		     "the switchover; the source takes it back");
		d = 0;
	} else if (d < 0) {
		rc->failed = 1;
		snprintf(rc->error, sizeof(rc->error),
			 "in doubt: the sender's decision did not arrive%s; the guest stays "
			 "paused here. Run 'tsubame resolve %s' on the source host, then "
			 "what it says here (--state-dir %s)",
			 d == -EINTR ? " (interrupted)" : " within --commit-timeout", rc->rec.id,
			 o->c.state_dir);
		rc->outcome = PROXY_IN_DOUBT;
		return;
	}
	outcome = WIRE_OUTCOME_DISCARDED;
	snprintf(text, sizeof(text), "discarded");
	if (d == WIRE_DECIDE_COMMIT) {
		snprintf(rc->rec.state, sizeof(rc->rec.state), "commit");
		if (record_save(o->c.state_dir, &rc->rec, err, sizeof(err)) < 0)
			log_warn("%s", err);
		tsb_fault_point("commit-received");
		/* The VM's addresses follow it here once it is ours to run. */
		content_net_notify(o->c.net_agent, rc->vm, o);
		if (commit_run_destination(q, ret_resume_ns, err, sizeof(err)) == 0) {
			outcome = WIRE_OUTCOME_RUNNING;
			snprintf(text, sizeof(text), "destination running resume_ns=%llu",
				 (unsigned long long)*ret_resume_ns);
			tsb_fault_point("dest-running");
		} else {
			fail(rc, PROXY_FAILED, "the destination QEMU could not run the guest: %s; "
			     "the source takes it back", err);
		}
	} else {
		commit_discard_destination(q);
		fail(rc, PROXY_FAILED, "the sender aborted the switchover; the destination "
		     "discarded the guest");
	}
	record_drop(o->c.state_dir, &rc->rec);
	if (!tell_outcome(rc, tls, sig, c, outcome, text))
		log_warn("the sender did not hear that the guest %s here; it reports the "
			 "migration in doubt until 'tsubame resolve %s' runs there",
			 outcome == WIRE_OUTCOME_RUNNING ? "runs" : "was discarded", rc->rec.id);
}

/* Frees what the receiver owns (not its connection, QEMU or TLS). */
static void receiver_free(struct receiver *rc)
{
	wire_backlog_fini(&rc->backlog);
	qs_writer_free(rc->writer);
	if (rc->qfd >= 0)
		close(rc->qfd);
	pagecache_free(rc->cache);
	pagecache_free(rc->fetched);
	image_rec_fini(&rc->arrival);
	store_image_free(rc->base);
	free(rc->run_buf);
	if (rc->store)
		store_close(rc->store);
	diskindex_free(rc->disks);
	wire_zstd_free(rc->z);
	tsb_buf_fini(&rc->scratch);
	tsb_buf_fini(&rc->copy);
	if (rc->lock_fd >= 0)
		close(rc->lock_fd);
	pthread_mutex_destroy(&rc->send_lock);
	free(rc);
}

/* A receiver with its content caches; NULL when out of memory. */
static struct receiver *receiver_new(const struct proxy_recv_options *o, uint64_t cache_pages,
				     uint64_t fetched_pages)
{
	struct receiver *rc = calloc(1, sizeof(*rc));

	if (!rc)
		return NULL;
	rc->o = o;
	rc->qfd = -1;
	rc->lock_fd = -1;
	image_rec_init(&rc->arrival, NULL); /* its store comes with the sender's identity */
	wire_backlog_init(&rc->backlog);
	pthread_mutex_init(&rc->send_lock, NULL);
	tsb_buf_init(&rc->scratch);
	tsb_buf_init(&rc->copy);
	rc->cache = pagecache_new(cache_pages, WIRE_PAGE_SIZE);
	rc->fetched = pagecache_new(fetched_pages, WIRE_PAGE_SIZE);
	rc->z = wire_zstd_new(1);
	if (!rc->cache || !rc->fetched || !rc->z) {
		receiver_free(rc);
		return NULL;
	}
	return rc;
}

/* What one run of proxy_recv() holds besides the receiver itself. */
struct recv_run {
	const struct proxy_recv_options *o;
	struct wire_tls *tls;
	struct qmp *q;
	int lfd;
	struct wire_hello peer;		/* the sender's HELLO (strings valid until next read) */
	pthread_t th_wan, th_ret;
	bool threads;			/* both started */
	bool incoming;			/* QEMU was told migrate-incoming */
	volatile int sig;
	char site[33];			/* our store's site id, or "" */
	uint64_t start_ns, resume_ns;
};

/* Everything checked before anyone may connect: TLS, QEMU, disks, the port. */
static int prepare(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;
	char host[256], port[32], err[512] = "";
	int r;

	if (tsb_split_hostport(o->listen, host, sizeof(host), port, sizeof(port)) < 0) {
		fail(rc, PROXY_FAILED, "bad --listen '%s': expected HOST:PORT", o->listen);
		return -1;
	}
	r = proxy_tls_setup(&o->c, WIRE_TLS_SERVER, &run->tls, err, sizeof(err));
	if (r < 0) {
		fail(rc, PROXY_AUTH, "%s", err);
		return -1;
	}
	/* Check QEMU before we accept anyone. */
	r = qmp_open(o->c.qmp_path, 10000, &run->q);
	if (r < 0) {
		fail(rc, PROXY_FAILED, "cannot reach the destination QEMU at %s: %s",
		     o->c.qmp_path, strerror(-r));
		return -1;
	}
	rc->ram_limit = ram_limit_of(run->q);
	/* Disk images to rebuild guest page-cache pages from: indexed up front. */
	r = content_index_disks(run->q, o, &rc->disks, err, sizeof(err));
	if (r < 0) {
		fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	if (o->c.store_dir && store_dir_site_id(o->c.store_dir, run->site, err, sizeof(err)) < 0) {
		fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	r = wire_tcp_listen(host, port, 128, &run->lfd);
	if (r < 0) {
		fail(rc, PROXY_FAILED, "cannot listen on %s: %s", o->listen, strerror(-r));
		return -1;
	}
	return 0;
}

/* Waits for the sender we want (strangers are refused meanwhile) and names the migration. */
static int accept_sender(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_RECEIVER,
		.caps = WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK | WIRE_CAP_POSTCOPY |
			WIRE_CAP_STORE | WIRE_CAP_COMMIT,
		.site = o->c.store_dir ? run->site : "destination",
	};
	/* A stray, slow or refused client does not end us (wire/accept.h). */
	struct wire_accept_options ao = {
		.tls = run->tls, .lfd = run->lfd, .hello = &hello, .want = want_sender,
		.opaque = rc, .sig = &run->sig,
		.deadline_ns = o->c.timeout_ms ? run->start_ns + o->c.timeout_ms * 1000000 : 0,
	};
	char err[512] = "";
	int r;

	log_info("waiting for the sender on %s", o->listen);
	r = wire_accept_peer(&ao, &rc->conn, &run->peer, &rc->refused);
	if (r == -EINTR) {
		fail(rc, PROXY_INTERRUPTED, "interrupted while waiting for the sender");
		return -1;
	}
	if (r == -ETIMEDOUT) {
		fail(rc, PROXY_TIMEOUT, "no sender came within the timeout");
		return -1;
	}
	if (r < 0) {
		fail(rc, PROXY_FAILED, "accepting the sender: %s", strerror(-r));
		return -1;
	}
	tsb_fault_point("handshake");
	/* Its disk channel and its decision must come with the same credential. */
	snprintf(rc->credential, sizeof(rc->credential), "%s", wire_conn_peer(rc->conn));
	r = take_sender_identity(rc, &run->peer, err, sizeof(err));
	if (r < 0) {
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_REFUSED, err);
		fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	r = record_begin(rc, &run->peer, err, sizeof(err));
	if (r < 0) {
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_INTERNAL, err);
		fail(rc, PROXY_FAILED, "%s", err);
		return -1;
	}
	return 0;
}

/* The summary of what we hold, and the disk channel (on the same port). */
static int open_channels(struct receiver *rc, struct recv_run *run)
{
	const struct proxy_recv_options *o = run->o;
	char err[512] = "";
	int r;

	if (run->peer.caps & WIRE_CAP_STORE) {
		struct tsb_buf b;

		tsb_buf_init(&b);
		r = content_encode_summary(&b, rc->store, rc->disks, rc->vm, &rc->summary_bytes);
		if (r == 0)
			r = wire_conn_write(rc->conn, b.data, b.len);
		tsb_buf_fini(&b);
		if (r < 0) {
			fail(rc, proxy_outcome_of_errno(r), "sending the summary: %s",
			     strerror(-r));
			return -1;
		}
	}
	/* Disks: the sender's disk channel comes to the same listening socket. */
	if (run->peer.caps & WIRE_CAP_DISK) {
		struct disk_recv_options dro = {
			.tls = run->tls, .listen_fd = run->lfd, .index = rc->disks,
			.stall_ms = o->c.stall_ms, .migration = rc->rec.id,
			.credential = rc->credential,
		};

		run->lfd = -1;
		r = disk_recv_start(run->q, &dro, &rc->disk, err, sizeof(err));
		if (r < 0) {
			wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, err);
			fail(rc, PROXY_FAILED, "disks: %s", err);
			return -1;
		}
	}
	if (run->lfd >= 0) {
		close(run->lfd);
		run->lfd = -1;
	}
	if (o->c.stall_ms)
		wire_conn_set_timeout(rc->conn, o->c.stall_ms);
	return 0;
}

/* QEMU takes the rebuilt stream; the WAN and return-path threads start. */
static int start_incoming(struct receiver *rc, struct recv_run *run)
{
	char err[512] = "";
	json_t *args;
	int r;

	r = setup_destination(run->q, run->peer.caps & WIRE_CAP_POSTCOPY, err, sizeof(err));
	if (r == 0)
		r = proxy_qemu_socket(run->q, &rc->qfd, err, sizeof(err));
	if (r == 0) {
		args = json_pack("{s:s}", "uri", "fd:" PROXY_FDNAME);
		r = qmp_execute(run->q, "migrate-incoming", args, NULL, err, sizeof(err));
		json_decref(args);
		run->incoming = r == 0;
	}
	if (r < 0) {
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, err);
		fail(rc, PROXY_FAILED, "destination QEMU: %s", err);
		return -1;
	}
	rc->writer = qs_writer_new(WIRE_PAGE_SIZE, to_qemu, rc);
	if (!rc->writer) {
		fail(rc, PROXY_FAILED, "out of memory");
		return -1;
	}
	if (pthread_create(&run->th_wan, NULL, wan_thread, rc)) {
		fail(rc, PROXY_FAILED, "cannot start threads");
		return -1;
	}
	if (pthread_create(&run->th_ret, NULL, return_thread, rc)) {
		fail(rc, PROXY_FAILED, "cannot start threads");
		shutdown(rc->qfd, SHUT_RDWR);
		wire_conn_abort(rc->conn);
		pthread_join(run->th_wan, NULL);
		return -1;
	}
	run->threads = true;
	return 0;
}

/* Stops the threads, keeps or discards what arrived, reports. */
static enum proxy_outcome finish(struct receiver *rc, struct recv_run *run,
				 json_t **ret_report)
{
	enum proxy_outcome oc;
	char err[512] = "";

	if (rc->failed && rc->conn && rc->outcome != PROXY_LINK && !rc->prepared) {
		pthread_mutex_lock(&rc->send_lock);
		wire_conn_send_status(rc->conn, WIRE_MSG_ERROR, WIRE_CODE_QEMU, rc->error);
		pthread_mutex_unlock(&rc->send_lock);
	}
	if (run->threads) {
		wire_conn_abort(rc->conn);
		shutdown(rc->qfd, SHUT_RDWR);
		pthread_join(run->th_wan, NULL);
		pthread_join(run->th_ret, NULL);
	}
	if (rc->failed && run->q && run->incoming && rc->outcome != PROXY_IN_DOUBT) {
		/* Make sure nothing half-loaded ever runs here. */
		(void)qmp_execute(run->q, "quit", NULL, NULL, NULL, 0);
	}
	oc = rc->failed ? rc->outcome : PROXY_OK;
	/* The arrival manifest (what came, from where): for the way back. */
	if (oc == PROXY_OK)
		image_rec_commit(&rc->arrival, "arrival");
	if (ret_report)
		*ret_report = make_report(rc, run->start_ns, run->resume_ns);
	/* Disks: exports stopped; targets stay marked unless all went well. */
	if (disk_recv_finish(rc->disk, run->q, oc == PROXY_OK || oc == PROXY_IN_DOUBT,
			     ret_report ? *ret_report : NULL, err, sizeof(err)) < 0 &&
	    oc == PROXY_OK) {
		fail(rc, PROXY_FAILED, "disks: %s", err);
		oc = PROXY_FAILED;
	}
	if (rc->failed)
		log_error("%s", rc->error);
	if (run->lfd >= 0)
		close(run->lfd);
	qmp_close(run->q);
	wire_conn_free(rc->conn);
	wire_tls_free(run->tls);
	return oc;
}

enum proxy_outcome proxy_recv(const struct proxy_recv_options *o, json_t **ret_report)
{
	struct recv_run run = { .o = o, .lfd = -1 };
	struct receiver *rc;
	enum proxy_outcome oc;
	uint64_t cache_pages;

	cache_pages = (o->c.cache_bytes ? o->c.cache_bytes : PROXY_CACHE_DEFAULT) / WIRE_PAGE_SIZE;
	rc = receiver_new(o, cache_pages, FETCHED_PAGES);
	if (!rc) {
		log_error("out of memory");
		return PROXY_FAILED;
	}
	proxy_catch_signals(&run.sig);
	run.start_ns = tsb_now_ns();
	if (prepare(rc, &run) == 0 && accept_sender(rc, &run) == 0 &&
	    open_channels(rc, &run) == 0 && start_incoming(rc, &run) == 0) {
		/* Watch the destination QEMU until it has loaded the guest, paused. */
		wait_loaded(rc, run.q, &run.sig);
		if (!rc->failed)
			settle(rc, run.q, run.tls, &run.sig, &run.resume_ns);
	}
	oc = finish(rc, &run, ret_report);
	receiver_free(rc);
	return oc;
}

/*
 * Fuzzing (tests/fuzz/fuzz-recv.c): the receiver's frame handling, with
 * frames (header and payload, as on the wire) from data instead of a
 * sender, no store, and the rebuilt stream going to /dev/null. 0 when all
 * was taken, else the receiver refused.
 */
int proxy_recv_fuzz(const uint8_t *data, size_t len)
{
	static const struct proxy_recv_options o;
	struct fuzz_input in = { .p = data, .len = len };
	struct receiver *rc = receiver_new(&o, 64, 64);
	int failed;

	if (!rc)
		return -ENOMEM;
	rc->fuzz = &in;
	rc->ram_limit = 1ull << 30;
	rc->qfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	rc->writer = qs_writer_new(WIRE_PAGE_SIZE, to_qemu, rc);
	if (rc->qfd >= 0 && rc->writer)
		process_frames(rc);
	failed = rc->failed;
	receiver_free(rc);
	return failed ? -EBADMSG : 0;
}
