#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "proxy/pagecache.h"

#define PS 64

static void make_hash(uint8_t h[PAGECACHE_HASH_LEN], unsigned i)
{
	/* Distinct hashes whose first bytes collide often (probe chains). */
	memset(h, 0, PAGECACHE_HASH_LEN);
	h[0] = i & 3;
	h[8] = i & 0xff;
	h[9] = i >> 8;
}

static void make_page(uint8_t p[PS], unsigned i)
{
	memset(p, (int)(i * 7 + 1), PS);
}

static void test_put_get(void **state)
{
	struct pagecache *c = pagecache_new(16, PS);
	uint8_t h[PAGECACHE_HASH_LEN], p[PS];
	const uint8_t *got;
	unsigned i;

	assert_non_null(c);
	for (i = 0; i < 16; i++) {
		make_hash(h, i);
		make_page(p, i);
		assert_int_equal(pagecache_put(c, h, p), 0);
	}
	assert_int_equal(pagecache_count(c), 16);
	for (i = 0; i < 16; i++) {
		make_hash(h, i);
		make_page(p, i);
		got = pagecache_get(c, h);
		assert_non_null(got);
		assert_memory_equal(got, p, PS);
	}
	make_hash(h, 99);
	assert_null(pagecache_get(c, h));
	pagecache_free(c);
}

static void test_lru_eviction(void **state)
{
	struct pagecache *c = pagecache_new(4, PS);
	uint8_t h[PAGECACHE_HASH_LEN], p[PS];
	unsigned i;

	for (i = 0; i < 4; i++) {
		make_hash(h, i);
		make_page(p, i);
		assert_int_equal(pagecache_put(c, h, p), 0);
	}
	/* Touch 0: now 1 is the least recently used. */
	make_hash(h, 0);
	assert_non_null(pagecache_get(c, h));
	make_hash(h, 4);
	make_page(p, 4);
	assert_int_equal(pagecache_put(c, h, p), 0);
	make_hash(h, 1);
	assert_false(pagecache_has(c, h));
	for (i = 0; i < 5; i++) {
		make_hash(h, i);
		assert_int_equal(pagecache_has(c, h), i != 1);
	}
	assert_int_equal(pagecache_count(c), 4);
	pagecache_free(c);
}

/* Two caches fed the same sequence agree on every membership question. */
static void test_mirrored_caches_agree(void **state)
{
	struct pagecache *a = pagecache_new(32, PS), *b = pagecache_new(32, PS);
	uint8_t h[PAGECACHE_HASH_LEN], p[PS];
	unsigned i, k, x = 12345;

	for (i = 0; i < 5000; i++) {
		x = x * 1103515245 + 12345;
		k = (x >> 16) % 100;
		make_hash(h, k);
		make_page(p, k);
		if (pagecache_get(a, h)) {
			const uint8_t *q = pagecache_get(b, h);

			assert_non_null(q);
			assert_memory_equal(q, p, PS);
		} else {
			assert_false(pagecache_has(b, h));
			assert_int_equal(pagecache_put(a, h, p), 0);
			assert_int_equal(pagecache_put(b, h, p), 0);
		}
	}
	pagecache_free(a);
	pagecache_free(b);
}

/*
 * Entries put without content (the store holds it) take part in the LRU
 * exactly like the others: a cache fed content-less and a cache fed
 * content evict the same hashes. Reusing a content-less victim's slot for
 * content, and the reverse, never shows stale bytes.
 */
static void test_hash_only_entries(void **state)
{
	struct pagecache *a = pagecache_new(8, PS), *b = pagecache_new(8, PS);
	uint8_t h[PAGECACHE_HASH_LEN], p[PS];
	const uint8_t *got;
	unsigned i, k;

	assert_non_null(a);
	assert_non_null(b);
	for (i = 0; i < 40; i++) {
		k = (i * 5) % 13;
		make_hash(h, k);
		make_page(p, k);
		if (i % 3 == 0) {
			assert_int_equal(pagecache_touch(a, h), pagecache_touch(b, h));
			continue;
		}
		/* a: every third put keeps no content; b: always content. */
		assert_int_equal(pagecache_put(a, h, i % 2 ? NULL : p), 0);
		assert_int_equal(pagecache_put(b, h, p), 0);
	}
	for (k = 0; k < 13; k++) {
		make_hash(h, k);
		make_page(p, k);
		assert_int_equal(pagecache_has(a, h), pagecache_has(b, h));
		got = pagecache_peek(a, h);
		if (got)
			assert_memory_equal(got, p, PS);
	}
	/* A hash-only entry is found and touched, but gives no bytes. */
	make_hash(h, 200);
	assert_int_equal(pagecache_put(a, h, NULL), 0);
	assert_true(pagecache_touch(a, h));
	assert_null(pagecache_get(a, h));
	assert_null(pagecache_peek(a, h));
	pagecache_free(a);
	pagecache_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_put_get),
		cmocka_unit_test(test_lru_eviction),
		cmocka_unit_test(test_mirrored_caches_agree),
		cmocka_unit_test(test_hash_only_entries),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
