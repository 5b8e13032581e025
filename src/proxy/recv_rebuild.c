/*
 * The receiver's WAN thread: QEMU's stream rebuilt from the sender's
 * frames. STREAM runs go through as they are; the pages of a PAGES batch
 * come as data or by reference to content we hold (the mirrored cache,
 * pages fetched by NEED, the store, the BASE image, the disks), each
 * checked against its hash, and what is missing is asked for with NEED
 * (wire/need.h) before the batch is applied.
 */
#include "proxy/receiver.h"

#include "proxy/commit.h"

#include "proxy/pagecache.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "store/diskindex.h"
#include "store/store.h"
#include "wire/codec.h"
#include "wire/tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int send_u64(struct receiver *rc, uint8_t type, uint64_t v)
{
	struct tsb_buf b;
	int r;

	tsb_buf_init(&b);
	r = wire_encode_u64(&b, type, v);
	if (r == 0)
		r = recv_send_locked(rc, &b);
	tsb_buf_fini(&b);
	return r;
}

/* qs_writer output: into the destination QEMU, with credits back. */
int recv_to_qemu(void *opaque, const uint8_t *p, size_t n)
{
	struct receiver *rc = opaque;
	int r = proxy_write_all(rc->qfd, p, n);

	if (r < 0)
		return r;
	rc->written += n;
	if (rc->written - rc->acked_sent >= (rc->ack_often ? PROXY_ACK_EVERY_PC : PROXY_ACK_EVERY)) {
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
	bool cached = touch ? pagecache_touch(rc->rb.cache, want) :
			      pagecache_has(rc->rb.cache, want);

	/* A cached hash may have its content in the store (pagecache.h). */
	page = cached ? pagecache_peek(rc->rb.cache, want) : NULL;
	if (page && wire_sha256(page, WIRE_PAGE_SIZE, got) == 0 && !memcmp(got, want, WIRE_HASH_LEN)) {
		rc->from_cache++;
		return page;
	}
	page = pagecache_peek(rc->rb.fetched, want);
	if (page && wire_sha256(page, WIRE_PAGE_SIZE, got) == 0 && !memcmp(got, want, WIRE_HASH_LEN)) {
		rc->from_fetched++;
		return page;
	}
	/* store_get and diskindex_get verify the hash themselves. */
	if (rc->rb.store && store_get(rc->rb.store, want, rc->rb.page_buf) == 0) {
		if (cached)
			rc->from_cache++;	/* sent earlier in this migration */
		else
			rc->from_store++;
		return rc->rb.page_buf;
	}
	if (rc->rb.disks && diskindex_get(rc->rb.disks, want, rc->rb.page_buf) == 0) {
		rc->from_disk++;
		return rc->rb.page_buf;
	}
	/* Blocks the disk channel wrote in this migration (docs/disk.md). */
	if (disk_recv_get(rc->rb.disk, want, rc->rb.page_buf) == 0) {
		rc->from_disk++;
		return rc->rb.page_buf;
	}
	return NULL;
}

/* BASE: the sender will name pages of this image of ours. */
static int handle_base(struct receiver *rc, const struct wire_str *id)
{
	char name[WIRE_MAX_ID + 1];
	int r;

	snprintf(name, sizeof(name), "%.*s", (int)id->len, id->p);
	if (!rc->rb.store) {
		recv_fail(rc, PROXY_FAILED, "the sender refers to image %s, but this receiver has "
			  "no store", name);
		return -EPROTO;
	}
	store_image_free(rc->rb.base);
	rc->rb.base = NULL;
	r = store_image_load(rc->rb.store, name, &rc->rb.base);
	if (r < 0) {
		recv_fail(rc, PROXY_FAILED, "the sender refers to image %s, which this store "
			  "cannot read: %s", name, strerror(-r));
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
	int bb = rc->rb.base ? rc->rb.base_block[e->block] : -1;
	unsigned i;

	if (bb < 0)
		return -EPROTO;
	for (i = 0; i < e->count; i++) {
		if (store_image_page(rc->rb.base, bb, e->offset / WIRE_PAGE_SIZE + i, &h) !=
		    STORE_PAGE_HASH)
			return -EPROTO;
		memcpy(rc->rb.run_hashes[i], h, WIRE_HASH_LEN);
	}
	if (wire_sha256(rc->rb.run_hashes, (size_t)e->count * WIRE_HASH_LEN, digest) < 0)
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
			total += rc->blocks[i]->used_length;
	if (rc->ram_limit && total > rc->ram_limit) {
		snprintf(rc->why, sizeof(rc->why), "the sender's RAM blocks exceed what the "
			 "destination VM has (%llu MiB with device memory)",
			 (unsigned long long)(rc->ram_limit >> 20));
		return -EMSGSIZE;
	}
	image_setup(rc, b);
	wire_blocks_iter_init(b, &it);
	while (wire_blocks_next(&it, &wb)) {
		rc->rb.base_block[wb.index] = rc->rb.base ?
			store_image_block_find(rc->rb.base, wb.name.p, wb.name.len) : -1;
		struct qs_block *qb;

		if (wb.name.len > QS_IDSTR_MAX)
			return -EMSGSIZE;
		if (!rc->blocks[wb.index]) {
			rc->blocks[wb.index] = malloc(sizeof(*qb));
			if (!rc->blocks[wb.index])
				return -ENOMEM;
		}
		qb = rc->blocks[wb.index];
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
			r = pagecache_put(rc->rb.fetched, got, data + (size_t)i * WIRE_PAGE_SIZE);
	}
	tsb_buf_fini(&scratch);
	return r;
}

static bool all_fetched(struct receiver *rc, const uint8_t (*hashes)[WIRE_HASH_LEN],
			size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!pagecache_has(rc->rb.fetched, hashes[i]))
			return false;
	return true;
}

/* The next frame from the sender (or from the fuzzer's input): 1, 0 at the end, -errno. */
static int next_frame(struct receiver *rc, struct wire_frame *f)
{
	struct fuzz_input *in = rc->fuzz;
	int r;

	if (!in)
		return rc->lane_reader ? wire_lanes_next(rc->lane_reader, f)
				       : wire_conn_read_frame(rc->conn, f);
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

/* A HASHDATA while fetching: kept (checked) in rc->rb.fetched; 1 once all asked for came. */
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
	return recv_send_locked(opaque, frame);
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
	return pagecache_has(rc->rb.cache, hash) || pagecache_has(rc->rb.fetched, hash) ||
	       (rc->rb.store && store_has(rc->rb.store, hash)) ||
	       (rc->rb.disks && diskindex_has(rc->rb.disks, hash)) ||
	       disk_recv_has(rc->rb.disk, hash);
}

/*
 * A LIVE reference that we cannot resolve yet: another migration of the
 * sender's group is bringing the content to our shared store. Waits for
 * it (bounded); once one wait times out (that migration failed, or its
 * receiver does not keep pages), the rest are fetched with NEED at once.
 */
static bool await_live(struct receiver *rc, const uint8_t *hash)
{
	uint64_t t0 = tsb_now_ns();
	bool got;

	if (!rc->live_ok || rc->live_gave_up || !rc->rb.store)
		return false;
	got = store_wait_has(rc->rb.store, hash, t0 + (uint64_t)RECV_LIVE_WAIT_MS * 1000000);
	rc->live_ms += (tsb_now_ns() - t0) / 1000000;
	if (got) {
		rc->live_waited++;
		return true;
	}
	rc->live_gave_up = true;
	log_warn("content another migration of the group was bringing did not arrive within "
		 "%u ms: asking the sender for such pages from now on", RECV_LIVE_WAIT_MS);
	return false;
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
 * rc->rb.data_hash, by data index) and lists in rc->rb.missing every referenced
 * page we will not hold (the sender's filter of our content can be
 * wrong), to be asked for in one round trip. Returns how many.
 */
static ssize_t prefetch(struct receiver *rc, const struct wire_pages *p, const uint8_t *literal)
{
	uint8_t (*missing)[WIRE_HASH_LEN] = rc->rb.missing;
	uint16_t set[BATCH_SET] = { 0 };
	struct wire_page_iter it;
	struct wire_page_entry e;
	size_t n = 0;
	int r;

	wire_pages_iter_init(p, &it);
	while (wire_pages_next(&it, &e)) {
		if (e.enc == WIRE_ENC_DATA) {
			r = wire_sha256(literal + (size_t)e.data_index * WIRE_PAGE_SIZE, WIRE_PAGE_SIZE,
					rc->rb.data_hash[e.data_index]);
			if (r < 0)
				return r;
			batch_set_add(set, rc->rb.data_hash, (uint16_t)e.data_index);
		} else if ((e.enc == WIRE_ENC_REF || e.enc == WIRE_ENC_SAME ||
			    e.enc == WIRE_ENC_LIVE) &&
			   n < WIRE_MAX_BATCH_PAGES && !can_resolve(rc, e.hash) &&
			   !batch_set_has(set, rc->rb.data_hash, e.hash) &&
			   !(e.enc == WIRE_ENC_LIVE && await_live(rc, e.hash))) {
			memcpy(missing[n++], e.hash, WIRE_HASH_LEN);
		} else if (e.enc == WIRE_ENC_SAMERUN && samerun_hashes(rc, &e) == 0) {
			unsigned i;

			for (i = 0; i < e.count && n < WIRE_MAX_BATCH_PAGES; i++)
				if (!can_resolve(rc, rc->rb.run_hashes[i]))
					memcpy(missing[n++], rc->rb.run_hashes[i], WIRE_HASH_LEN);
		}
	}
	return (ssize_t)n;
}

/* What applying one page entry came to. */
enum {
	ENTRY_APPLIED = 1,	/* written to QEMU's stream (and recorded) */
	ENTRY_FETCH = 2,	/* rc->rb.missing lists pages to fetch first; nothing written */
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
	if (!rc->rb.run_buf)
		rc->rb.run_buf = malloc((size_t)WIRE_MAX_SAMERUN * WIRE_PAGE_SIZE);
	if (!rc->rb.run_buf)
		return -ENOMEM;
	*n_missing = 0;
	for (i = 0; i < e->count; i++) {
		page = resolve(rc, rc->rb.run_hashes[i], false);
		if (page)
			memcpy(rc->rb.run_buf + i * WIRE_PAGE_SIZE, page, WIRE_PAGE_SIZE);
		else
			memcpy(rc->rb.missing[(*n_missing)++], rc->rb.run_hashes[i], WIRE_HASH_LEN);
	}
	if (*n_missing)
		return ENTRY_FETCH;
	for (i = 0; i < e->count; i++) {
		pg->kind = QS_PAGE_NORMAL;
		pg->offset = e->offset + i * WIRE_PAGE_SIZE;
		pg->cont = i ? true : (e->qflags & QS_RAM_CONTINUE);
		pg->data = rc->rb.run_buf + i * WIRE_PAGE_SIZE;
		pg->len = WIRE_PAGE_SIZE;
		record_page(rc, pg, STORE_PAGE_HASH, rc->rb.run_hashes[i]);
		r = qs_writer_page(rc->writer, pg);
		if (r < 0)
			return r;
		recv_fault_served(rc, pg);
	}
	rc->pages_ref += e->count;
	return ENTRY_APPLIED;
}

/* One page entry of a batch (literal: the batch's DATA pages). */
static int apply_entry(struct receiver *rc, const struct wire_page_entry *e,
		       const uint8_t *literal, size_t *n_missing)
{
	struct qs_page pg = {
		.block = rc->blocks[e->block], .offset = e->offset,
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
		kept = record_page(rc, &pg, STORE_PAGE_HASH, rc->rb.data_hash[e->data_index]);
		r = pagecache_put(rc->rb.cache, rc->rb.data_hash[e->data_index],
				  kept ? NULL : pg.data);
		if (r < 0)
			return r;
		rc->pages_data++;
		break;
	case WIRE_ENC_REF:
	case WIRE_ENC_SAME:
	case WIRE_ENC_LIVE:
		/* A reference never decides correctness: resolve() checks the bytes. */
		page = resolve(rc, e->hash, e->enc != WIRE_ENC_SAME);
		if (!page) {
			memcpy(rc->rb.missing[0], e->hash, WIRE_HASH_LEN);
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
	if (r < 0)
		return r;
	recv_fault_served(rc, &pg);
	return ENTRY_APPLIED;
}

/*
 * Applies the entries of a batch from *done on, counting them in *done;
 * 0 when all are applied, ENTRY_FETCH when one needs pages fetched first
 * (*n_missing of them in rc->rb.missing), or -errno.
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
	const uint8_t (*missing)[WIRE_HASH_LEN] = (const uint8_t (*)[WIRE_HASH_LEN])rc->rb.missing;
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
		recv_fail(rc, PROXY_FAILED, "the sender %s: %.*s",
			  m.type == WIRE_MSG_CANCEL ? "cancelled" : "reported an error",
			  (int)m.u.status.text.len, m.u.status.text.p);
		return -ECANCELED;
	case WIRE_MSG_PING:
		return send_u64(rc, WIRE_MSG_PONG, m.u.ping);
	case WIRE_MSG_DONE:
		/* A standby's round ends here: all before it is applied (and NEEDs answered). */
		if (rc->o->standby && m.u.status.code == WIRE_CODE_OK)
			rc->round_done = true;
		return 0;
	case WIRE_MSG_DECISION:
		if (rc->o->standby)
			return -EPROTO; /* a sync round is never switched over */
		if (m.u.status.code == WIRE_DECIDE_ABORT && !rc->prepared) {
			recv_fail(rc, PROXY_FAILED, "the sender aborted the migration");
			return -ECANCELED;
		}
		if (m.u.status.code != WIRE_DECIDE_COMMIT && m.u.status.code != WIRE_DECIDE_ABORT)
			return -EPROTO;
		/* Before PREPARED only as agreed: the guest runs here if it loads. */
		if (!rc->prepared && !rc->early_ok)
			return -EPROTO;
		/* Before the decision is seen: the fault lands ahead of what it starts. */
		if (m.u.status.code == WIRE_DECIDE_COMMIT)
			tsb_fault_point("decision-received");
		rc->source_stop_ns = commit_stop_ns_of(&m.u.status.text);
		rc->decision = (int)m.u.status.code;
		if (!rc->prepared)
			log_info("the sender committed the switchover: the guest runs here once "
				 "it is loaded");
		return 0;
	default:
		return 0;
	}
}

/* The connection ended: before PREPARED the migration fails, after it we wait. */
static void link_ended(struct receiver *rc, enum proxy_outcome oc, const char *what)
{
	rc->link_lost = true;
	if (rc->prepared)
		return;
	/*
	 * Committed early: QEMU loads what came. If that was all of the
	 * stream it completes and the guest runs; if not, the end of its
	 * input fails the load and the guest is discarded.
	 */
	if (rc->decision == WIRE_DECIDE_COMMIT) {
		log_warn("%s; the sender committed: the guest runs here if what came loads",
			 what);
		if (rc->qfd >= 0)
			shutdown(rc->qfd, SHUT_WR);
		return;
	}
	recv_fail(rc, oc, "%s", what);
}

void recv_drain_for_decision(struct receiver *rc)
{
	struct wire_frame f;
	struct wire_msg m;
	int r;

	while ((r = next_frame(rc, &f)) > 0) {
		if (f.type != WIRE_MSG_DECISION || wire_frame_decode(&f, &m) < 0)
			continue;
		if (m.u.status.code == WIRE_DECIDE_COMMIT || m.u.status.code == WIRE_DECIDE_ABORT)
			rc->decision = (int)m.u.status.code;
	}
	if (r == 0)
		rc->sender_closed = true;
	rc->link_lost = true;
}

/* Handles the sender's frames until the connection ends or fails. */
void recv_process_frames(struct receiver *rc)
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
			if (rc->round_done)
				goto out;
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
		if (rc->round_done)
			break;
	}
	goto out;
bad:
	if (rc->prepared) {
		rc->link_lost = true;
		return;
	}
	if (!rc->failed && rc->why[0])
		recv_fail(rc, PROXY_FAILED, "refused: %s", rc->why);
	if (!rc->failed)
		recv_fail(rc, r == -EOPNOTSUPP ? PROXY_UNSUPPORTED : r == -EPIPE ||
			  r == -ECONNRESET ? PROXY_FAILED : proxy_outcome_of_errno(r),
			  "rebuilding the stream for QEMU: %s%s", strerror(-r),
			  r == -EPIPE || r == -ECONNRESET ? " (the destination QEMU closed it)" :
			  "");
out:
	/*
	 * Failed while loading, with a sender that may commit early: its
	 * DECISION may be on the way; recv_discard_loading() answers it.
	 */
	if (rc->failed && rc->early_ok && !rc->prepared && !rc->link_lost && !rc->fuzz)
		recv_drain_for_decision(rc);
}
