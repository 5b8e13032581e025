#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>

#include "store/filter.h"

static void hash_of(unsigned i, uint8_t h[TSB_FILTER_HASH_LEN])
{
	SHA256((const uint8_t *)&i, sizeof(i), h);
}

static void test_no_false_negatives(void **state)
{
	struct tsb_filter f;
	uint8_t h[TSB_FILTER_HASH_LEN];
	unsigned i, false_hits = 0;

	assert_int_equal(tsb_filter_init(&f, 10000), 0);
	for (i = 0; i < 10000; i++) {
		hash_of(i, h);
		tsb_filter_add(&f, h);
	}
	for (i = 0; i < 10000; i++) {
		hash_of(i, h);
		assert_true(tsb_filter_maybe(&f, h));
	}
	/* Sized for ~0.003% false hits (6 of 200000); allow 0.02%. */
	for (i = 10000; i < 210000; i++) {
		hash_of(i, h);
		false_hits += tsb_filter_maybe(&f, h);
	}
	assert_true(false_hits < 40);
	tsb_filter_fini(&f);
}

static void test_round_trip(void **state)
{
	struct tsb_filter f, g;
	uint8_t h[TSB_FILTER_HASH_LEN], *buf;
	size_t n;
	unsigned i;

	assert_int_equal(tsb_filter_init(&f, 500), 0);
	for (i = 0; i < 500; i++) {
		hash_of(i, h);
		tsb_filter_add(&f, h);
	}
	n = tsb_filter_size(&f);
	buf = malloc(n);
	tsb_filter_write(&f, buf);
	assert_int_equal(tsb_filter_parse(&g, buf, n), 0);
	assert_int_equal(g.m, f.m);
	assert_int_equal(g.k, f.k);
	assert_memory_equal(g.bits, f.bits, f.m / 8);
	for (i = 0; i < 500; i++) {
		hash_of(i, h);
		assert_true(tsb_filter_maybe(&g, h));
	}
	tsb_filter_fini(&g);

	/* Every truncation and one byte too many are refused. */
	for (i = 0; i < n; i++)
		assert_int_equal(tsb_filter_parse(&g, buf, i), -EBADMSG);
	buf = realloc(buf, n + 1);
	buf[n] = 0;
	assert_int_equal(tsb_filter_parse(&g, buf, n + 1), -EBADMSG);
	/* Unknown version, bad probe count, bits not a multiple of 64. */
	buf[4] = 2;
	assert_int_equal(tsb_filter_parse(&g, buf, n), -EOPNOTSUPP);
	buf[4] = 1;
	buf[5] = 0;
	assert_int_equal(tsb_filter_parse(&g, buf, n), -EBADMSG);
	buf[5] = 7;
	buf[11] ^= 1;
	assert_int_equal(tsb_filter_parse(&g, buf, n), -EBADMSG);
	free(buf);
	tsb_filter_fini(&f);
}

static void test_capped(void **state)
{
	struct tsb_filter f;

	assert_int_equal(tsb_filter_init(&f, 1ull << 40), 0);
	assert_int_equal(f.m, TSB_FILTER_MAX_BITS);
	tsb_filter_fini(&f);
	assert_int_equal(tsb_filter_init(&f, 0), 0);
	assert_int_equal(f.m, 64);
	tsb_filter_fini(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_false_negatives),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_capped),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
