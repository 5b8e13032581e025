/*
 * How each page of QEMU's stream travels (the parse thread's choice): a
 * ZERO marker, unchanged since the receiver's older image (SAME, SAMERUN),
 * content the receiver holds (REF: the mirrored cache, the disk channel,
 * its store or disks), or the bytes (DATA); every page is also recorded in
 * the departure image. docs/ARCHITECTURE.md, "The sender".
 */
#include "proxy/sender.h"
#include "proxy/liveshare.h"

#include "disk/disk.h"
#include "store/filter.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/*
 * Puts the pending run of unchanged pages into the PAGES job: one SAME
 * entry for a single page, else a SAMERUN with the digest of the hashes.
 */
int encode_run_emit(struct sender *s)
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
				sender_queue_push(s, s->cur, false);
				s->cur = NULL;
			}
			if (!s->cur)
				s->cur = sender_job_get(s);
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
		r = encode_run_emit(s);
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
void encode_image_setup(struct sender *s, const struct qs_event *ev)
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
	/* A sync round: the standby keeps its image of it under the same id. */
	if (s->o->standby_round)
		snprintf(info.peer_image, sizeof(info.peer_image), "%s", s->image_id);
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
	REF_LIVE,		/* on its way to the receiver's store: a sibling sent it */
};

/*
 * The source stopped for the last pass of a precopy (our hook at
 * pre-switchover, or migctl's STOP). Not in postcopy: there the push of
 * what is left is not in the downtime, and its references save the most.
 */
static bool in_last_pass(const struct sender *s)
{
	return !s->in_postcopy && !s->postcopy_listen &&
	       (__atomic_load_n(&s->source_stopped, __ATOMIC_ACQUIRE) ||
		(s->stop_ns && __atomic_load_n(s->stop_ns, __ATOMIC_ACQUIRE)));
}

/* Where the receiver probably holds a page's content, by a filter or a sibling. */
static enum ref_source guess_ref(struct sender *s, const struct qs_page *pg,
				 const uint8_t *hash, bool kept)
{
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
	/*
	 * Sent by a sibling of the group moving to the same store now (kept
	 * in our store, so that a NEED can be served should it not arrive).
	 */
	if (s->live_ok && kept && !s->urgent_encoding &&
	    live_share_has(s->o->live, s->o->live_rank, s->peer_site, hash))
		return REF_LIVE;
	return REF_NONE;
}

/*
 * The encoding choice for a page that is not in the receiver's older image
 * of this VM. Touches the mirrored cache: call once per page, in stream order.
 */
static enum ref_source choose_ref(struct sender *s, const struct qs_page *pg,
				  const uint8_t *hash, bool kept)
{
	enum ref_source src;
	bool hit;

	/*
	 * Both caches see the same gets and puts in the same order, so a hit
	 * here means the receiver holds the content too. Not for a requested
	 * page: it overtakes batches that may hold the content (send_urgent.c).
	 */
	pthread_mutex_lock(&s->cache_lock);
	hit = !s->urgent_encoding && pagecache_touch(s->cache, hash);
	pthread_mutex_unlock(&s->cache_lock);
	if (hit)
		return REF_CACHE;
	/*
	 * A guess that is wrong (a filter's false hit, a disk block still on
	 * its way, a sibling's page late) makes the receiver wait a round
	 * trip, or for the sibling: inside the downtime in the last pass,
	 * where the page itself is cheaper.
	 */
	src = guess_ref(s, pg, hash, kept);
	if (src != REF_NONE && in_last_pass(s)) {
		s->pages_unguessed++;
		return REF_NONE;
	}
	return src;
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
	case REF_LIVE:
		s->cur->n_group++;
		s->pages_group++;
		s->pages_live++;
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

int encode_page(struct sender *s, const struct qs_page *pg, uint16_t qflags)
{
	uint16_t block = pg->block->index;
	uint8_t hash[WIRE_HASH_LEN];
	enum ref_source src;
	bool kept;
	int r;

	/* A pending run of unchanged pages goes before anything that is not one. */
	if (pg->kind != QS_PAGE_NORMAL) {
		r = s->run.count ? encode_run_emit(s) : 0;
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
		r = encode_run_emit(s);
		if (r < 0)
			return r;
	}
	src = choose_ref(s, pg, hash, kept);
	if (src != REF_NONE) {
		r = wire_pages_add_ref(&s->cur->pb, block, qflags, pg->offset,
				       src == REF_LIVE ? WIRE_ENC_LIVE : WIRE_ENC_REF, hash);
		if (r == 0)
			count_ref(s, src);
		return r;
	}
	r = wire_pages_add_data(&s->cur->pb, block, qflags, pg->offset, pg->data);
	if (r < 0)
		return r;
	s->cur->n_data++;
	s->pages_data++;
	if (s->live_ok)
		live_share_add(s->o->live, s->o->live_rank, s->peer_site, hash);
	pthread_mutex_lock(&s->cache_lock);
	/* Content the store keeps is not copied twice: NEED reads the store. */
	r = pagecache_put(s->cache, hash, kept ? NULL : pg->data);
	pthread_mutex_unlock(&s->cache_lock);
	return r;
}
