/*
 * Content cache of pages keyed by SHA-256, least recently used evicted
 * first. Both ends of a migration keep one with the same capacity and
 * apply the same sequence of inserts and lookups (every DATA page is
 * inserted, every REF is looked up), so the sender knows exactly which
 * contents the receiver still holds. The receiver still verifies every
 * page it takes from the cache against its hash.
 * Not thread-safe.
 */
#ifndef TSB_PAGECACHE_H
#define TSB_PAGECACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGECACHE_HASH_LEN 32

struct pagecache;

/*
 * A cache of up to capacity pages of page_size bytes, kept in a memory
 * file that grows as pages arrive. NULL on ENOMEM or a zero capacity.
 */
struct pagecache *pagecache_new(size_t capacity, size_t page_size);
void pagecache_free(struct pagecache *c);

/*
 * Looks a hash up; on a hit marks it most recently used and returns its
 * content (valid until the next call on this cache), else NULL. NULL too
 * for an entry put without content: the hash was still found and touched.
 */
const uint8_t *pagecache_get(struct pagecache *c,
			     const uint8_t hash[PAGECACHE_HASH_LEN]);
/* Like pagecache_get without reading the content. */
bool pagecache_touch(struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN]);
/*
 * Like pagecache_get without touching the LRU order. It still reads into
 * the cache's one page buffer: callers on several threads need a lock.
 */
const uint8_t *pagecache_peek(const struct pagecache *c,
			      const uint8_t hash[PAGECACHE_HASH_LEN]);
/* True if present, without touching the LRU order. */
bool pagecache_has(const struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN]);

/*
 * Inserts content under hash (most recently used), evicting the least
 * recently used page when full. An existing entry is only touched.
 * page may be NULL when the caller keeps the content elsewhere (the
 * store): the entry then takes part in the LRU order with no copy.
 * 0, or -EIO if the memory file cannot take it.
 */
int pagecache_put(struct pagecache *c, const uint8_t hash[PAGECACHE_HASH_LEN],
		  const void *page);

size_t pagecache_count(const struct pagecache *c);

#endif
