/*
 * Deterministic page content for the test guest (memverify, pagecache) and
 * for host-made disk images. Pure functions, no allocation, no libc state:
 * the same code runs in the static guest binary, in memverify-host and in
 * the unit tests.
 *
 * A page is PAT_PAGE_SIZE bytes and is identified by its index in a buffer
 * (or on a disk) and a generation number (0 when first written, bumped each
 * time the page is rewritten). Its content is derived from:
 *   - the effective seed (pat_seed_mem() / pat_seed_disk()),
 *   - the page's content key: normally its index, but a share of pages
 *     (dup_pct) take the key of an earlier page, so identical content
 *     repeats inside one buffer, and a share (zero_pct) are all zero while
 *     their generation is 0,
 *   - the generation.
 * Within a page, the first random_pct percent (rounded down to 8 bytes) is
 * pseudo-random and incompressible; the rest repeats a 64-byte motif derived
 * from the key and generation (compresses very well, never all zero).
 */
#ifndef TSB_PATTERN_H
#define TSB_PATTERN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAT_PAGE_SIZE 4096u
#define PAT_MOTIF_WORDS 8u
/* Content key of an all-zero page (see pat_page_key()). */
#define PAT_KEY_ZERO UINT64_MAX

struct pat_params {
	uint64_t seed;		/* effective seed, from pat_seed_*() */
	/*
	 * Partly shared memory (VMs booted from one image): shared_pct of the
	 * content keys (0..100, picked by key) take their content from
	 * seed_shared instead, and the duplicate and zero structure comes from
	 * seed_shared, so VMs with one seed_shared and their own seed hold
	 * that share of identical pages at identical offsets. 0: seed alone.
	 */
	uint64_t seed_shared;
	unsigned shared_pct;
	unsigned random_pct;	/* 0..100: random share of each page */
	unsigned dup_pct;	/* 0..100: share of pages duplicating another */
	unsigned zero_pct;	/* 0..100: share of all-zero pages (gen 0) */
};

/* A 64-bit mixing function (splitmix64 finalizer); bijective. */
uint64_t pat_mix64(uint64_t x);

/*
 * Effective seed for guest memory. shared=false mixes in vmid so every VM
 * holds different content; shared=true ignores vmid, so VMs with the same
 * seed hold identical pages at identical offsets.
 */
uint64_t pat_seed_mem(uint64_t seed, uint64_t vmid, bool shared);

/* Effective seed for a disk image; differs from any memory seed. */
uint64_t pat_seed_disk(uint64_t seed);

/*
 * Returns 0 when the percentages (shared_pct too) are within 0..100 and dup_pct + zero_pct
 * is at most 100, -EINVAL otherwise.
 */
int pat_params_check(const struct pat_params *p);

/*
 * Content key of page @index at generation 0: PAT_KEY_ZERO for a zero page,
 * otherwise the index of the first page holding that content (== index for
 * a page that duplicates nothing). Page 0 is never a duplicate nor zero.
 * Runs in O(log index) expected time.
 */
uint64_t pat_page_key(const struct pat_params *p, uint64_t index);

/*
 * Writes the expected content of page @index at generation @gen into
 * @page (PAT_PAGE_SIZE bytes, 8-byte aligned).
 */
void pat_fill_page(const struct pat_params *p, uint64_t index, uint32_t gen,
		   void *page);

/*
 * Compares @page (PAT_PAGE_SIZE bytes, 8-byte aligned) with the expected
 * content of page @index at generation @gen. Returns -1 when it matches,
 * else the offset in the page of the first differing byte; when
 * @ret_expected/@ret_got are not NULL they receive the expected and found
 * 8-byte words around that offset (little-endian load of the aligned word).
 */
long pat_check_page(const struct pat_params *p, uint64_t index, uint32_t gen,
		    const void *page, uint64_t *ret_expected,
		    uint64_t *ret_got);

#endif
