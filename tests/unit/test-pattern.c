/* Unit tests for the guest content generator (guest/pattern.c). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <zstd.h>

#include "pattern.h"

#define NPAGES 4096u

static uint64_t page_buf[PAT_PAGE_SIZE / 8];
static uint64_t page_buf2[PAT_PAGE_SIZE / 8];

static struct pat_params params(uint64_t seed, unsigned random_pct,
				unsigned dup_pct, unsigned zero_pct)
{
	return (struct pat_params){
		.seed = seed, .random_pct = random_pct, .dup_pct = dup_pct,
		.zero_pct = zero_pct,
	};
}

static bool all_zero(const void *p, size_t len)
{
	const unsigned char *b = p;
	size_t i;

	for (i = 0; i < len; i++)
		if (b[i])
			return false;
	return true;
}

static void test_deterministic(void **state)
{
	struct pat_params p = params(pat_seed_mem(42, 7, false), 50, 10, 0);
	uint64_t i;

	(void)state;
	for (i = 0; i < 64; i++) {
		pat_fill_page(&p, i, 3, page_buf);
		pat_fill_page(&p, i, 3, page_buf2);
		assert_memory_equal(page_buf, page_buf2, PAT_PAGE_SIZE);
		assert_int_equal(pat_check_page(&p, i, 3, page_buf, NULL, NULL),
				 -1);
	}
	/* Known-answer: content must not change between builds, or disk
	 * images made earlier would no longer verify. */
	p = params(pat_seed_disk(1), 50, 10, 0);
	assert_int_equal(pat_seed_disk(1), 0x76b6f8fe92f5837dull);
	pat_fill_page(&p, 0, 0, page_buf);
	assert_int_equal(page_buf[0], 0x116ecd2ad67f0d3bull);
	assert_int_equal(page_buf[511], 0x47959b85abad1f2full);
	pat_fill_page(&p, 12345, 2, page_buf);
	assert_int_equal(page_buf[0], 0x84b4ed80f00280f3ull);
	assert_int_equal(page_buf[300], 0xfd65734be5d7f55dull);
	assert_int_not_equal(pat_seed_disk(1), pat_seed_mem(1, 0, true));
	assert_int_not_equal(pat_seed_disk(1), pat_seed_mem(1, 0, false));
}

static void test_generation_and_index_change_content(void **state)
{
	unsigned r;

	(void)state;
	for (r = 0; r <= 100; r += 50) {
		struct pat_params p = params(pat_seed_mem(1, 0, false), r, 0, 0);

		pat_fill_page(&p, 5, 0, page_buf);
		pat_fill_page(&p, 5, 1, page_buf2);
		assert_memory_not_equal(page_buf, page_buf2, PAT_PAGE_SIZE);
		assert_true(pat_check_page(&p, 5, 1, page_buf, NULL, NULL) >=
			    0);
		pat_fill_page(&p, 6, 0, page_buf2);
		assert_memory_not_equal(page_buf, page_buf2, PAT_PAGE_SIZE);
	}
}

static void test_unique_vs_shared(void **state)
{
	uint64_t seed = 99;
	struct pat_params a = params(pat_seed_mem(seed, 1, false), 50, 0, 0);
	struct pat_params b = params(pat_seed_mem(seed, 2, false), 50, 0, 0);
	struct pat_params sa = params(pat_seed_mem(seed, 1, true), 50, 0, 0);
	struct pat_params sb = params(pat_seed_mem(seed, 2, true), 50, 0, 0);
	struct pat_params other = params(pat_seed_mem(seed + 1, 1, true), 50,
					 0, 0);
	uint64_t i;

	(void)state;
	for (i = 0; i < 32; i++) {
		pat_fill_page(&a, i, 0, page_buf);
		pat_fill_page(&b, i, 0, page_buf2);
		assert_memory_not_equal(page_buf, page_buf2, PAT_PAGE_SIZE);

		pat_fill_page(&sa, i, 0, page_buf);
		pat_fill_page(&sb, i, 0, page_buf2);
		assert_memory_equal(page_buf, page_buf2, PAT_PAGE_SIZE);

		pat_fill_page(&other, i, 0, page_buf2);
		assert_memory_not_equal(page_buf, page_buf2, PAT_PAGE_SIZE);
	}
}

/* shared_pct: that share of the pages is the group's, the rest each VM's own. */
static void test_partly_shared(void **state)
{
	struct pat_params a = params(pat_seed_mem(7, 1, false), 50, 10, 0);
	struct pat_params b = params(pat_seed_mem(7, 2, false), 50, 10, 0);
	unsigned same = 0, n = 2000;
	uint64_t i;

	(void)state;
	a.seed_shared = b.seed_shared = pat_seed_mem(7, 0, true);
	a.shared_pct = b.shared_pct = 50;
	assert_int_equal(pat_params_check(&a), 0);
	for (i = 0; i < n; i++) {
		/* The layout (duplicates) is the group's. */
		assert_int_equal(pat_page_key(&a, i), pat_page_key(&b, i));
		pat_fill_page(&a, i, 0, page_buf);
		pat_fill_page(&b, i, 0, page_buf2);
		same += !memcmp(page_buf, page_buf2, PAT_PAGE_SIZE);
		/* Each VM's pages verify against its own parameters only. */
		assert_int_equal(pat_check_page(&a, i, 0, page_buf, NULL, NULL), -1);
		if (memcmp(page_buf, page_buf2, PAT_PAGE_SIZE))
			assert_true(pat_check_page(&a, i, 0, page_buf2, NULL, NULL) >= 0);
	}
	assert_in_range(same, n * 40 / 100, n * 60 / 100);
	a.shared_pct = 101;
	assert_int_equal(pat_params_check(&a), -EINVAL);
}

static void test_dup_share(void **state)
{
	struct pat_params p = params(pat_seed_mem(5, 0, false), 30, 30, 0);
	unsigned dups = 0;
	uint64_t i;

	(void)state;
	for (i = 0; i < NPAGES; i++) {
		uint64_t key = pat_page_key(&p, i);

		assert_true(key <= i);
		if (key == i)
			continue;
		dups++;
		/* A duplicate holds exactly the content of its key page,
		 * which is an original. */
		assert_int_equal(pat_page_key(&p, key), key);
		pat_fill_page(&p, i, 0, page_buf);
		pat_fill_page(&p, key, 0, page_buf2);
		assert_memory_equal(page_buf, page_buf2, PAT_PAGE_SIZE);
	}
	/* 30 % of 4096 = 1229; allow a generous binomial margin. */
	assert_in_range(dups, 1229 - 150, 1229 + 150);

	/* No duplicates unless asked. */
	p.dup_pct = 0;
	for (i = 0; i < NPAGES; i++)
		assert_int_equal(pat_page_key(&p, i), i);

	/* Every page a duplicate: the walk ends at page 0. */
	p.dup_pct = 100;
	for (i = 0; i < NPAGES * 16; i++)
		assert_int_equal(pat_page_key(&p, i), 0);
}

static void test_zero_pages(void **state)
{
	struct pat_params p = params(pat_seed_mem(5, 0, false), 0, 0, 0);
	unsigned zeros = 0;
	uint64_t i;

	(void)state;
	/* Never an all-zero page (nor a zero word) unless asked. */
	for (i = 0; i < NPAGES; i++) {
		unsigned w;

		pat_fill_page(&p, i, 0, page_buf);
		for (w = 0; w < PAT_PAGE_SIZE / 8; w++)
			assert_int_not_equal(page_buf[w], 0);
	}
	p.random_pct = 100;
	for (i = 0; i < NPAGES; i++) {
		pat_fill_page(&p, i, 0, page_buf);
		assert_false(all_zero(page_buf, PAT_PAGE_SIZE));
	}

	p.zero_pct = 10;
	for (i = 0; i < NPAGES; i++) {
		pat_fill_page(&p, i, 0, page_buf);
		if (pat_page_key(&p, i) != PAT_KEY_ZERO) {
			assert_false(all_zero(page_buf, PAT_PAGE_SIZE));
			continue;
		}
		zeros++;
		assert_true(all_zero(page_buf, PAT_PAGE_SIZE));
		/* Rewritten, a zero page gets content. */
		pat_fill_page(&p, i, 1, page_buf);
		assert_false(all_zero(page_buf, PAT_PAGE_SIZE));
		assert_int_equal(pat_check_page(&p, i, 1, page_buf, NULL,
						NULL), -1);
	}
	assert_in_range(zeros, 410 - 100, 410 + 100);
}

static size_t compressed_size(unsigned random_pct)
{
	struct pat_params p = params(pat_seed_mem(11, 0, false), random_pct,
				     0, 0);
	size_t len = 256 * PAT_PAGE_SIZE, cap = ZSTD_compressBound(len), n;
	unsigned char *src = malloc(len), *dst = malloc(cap);
	uint64_t i;

	assert_non_null(src);
	assert_non_null(dst);
	for (i = 0; i < 256; i++)
		pat_fill_page(&p, i, 0, src + i * PAT_PAGE_SIZE);
	n = ZSTD_compress(dst, cap, src, len, 3);
	assert_false(ZSTD_isError(n));
	free(src);
	free(dst);
	return n;
}

static void test_random_share_compressibility(void **state)
{
	size_t len = 256 * PAT_PAGE_SIZE;
	size_t c0 = compressed_size(0), c50 = compressed_size(50);
	size_t c100 = compressed_size(100);

	(void)state;
	/* Repetitive pages compress very well, random ones not at all,
	 * and the random share sets the ratio in between. */
	assert_true(c0 * 20 < len);
	assert_true(c100 * 100 > len * 99);
	assert_in_range(c50, len * 45 / 100, len * 56 / 100);
	assert_true(c0 < c50 && c50 < c100);
}

static void test_check_finds_first_bad_byte(void **state)
{
	static const unsigned offs[] = { 0, 1, 7, 8, 1000, 2047, 2048, 4095 };
	struct pat_params p = params(pat_seed_mem(3, 0, false), 50, 0, 0);
	unsigned k;

	(void)state;
	for (k = 0; k < sizeof(offs) / sizeof(offs[0]); k++) {
		unsigned char *b = (unsigned char *)page_buf;
		uint64_t exp = 0, got = 0;

		pat_fill_page(&p, 9, 2, page_buf);
		b[offs[k]] ^= 0x10;
		if (offs[k] + 3 < PAT_PAGE_SIZE)
			b[offs[k] + 3] ^= 0x01;	/* a later one too */
		assert_int_equal(pat_check_page(&p, 9, 2, page_buf, &exp,
						&got), offs[k]);
		assert_int_not_equal(exp, got);
		assert_int_equal(got, page_buf[offs[k] / 8]);
	}
	/* A page from another index is caught at once. */
	pat_fill_page(&p, 10, 2, page_buf);
	assert_int_equal(pat_check_page(&p, 9, 2, page_buf, NULL, NULL), 0);
}

static void test_params_check(void **state)
{
	struct pat_params p = params(1, 50, 10, 0);

	(void)state;
	assert_int_equal(pat_params_check(&p), 0);
	p.random_pct = 101;
	assert_int_equal(pat_params_check(&p), -EINVAL);
	p = params(1, 50, 60, 50);
	assert_int_equal(pat_params_check(&p), -EINVAL);
	p = params(1, 100, 50, 50);
	assert_int_equal(pat_params_check(&p), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deterministic),
		cmocka_unit_test(test_generation_and_index_change_content),
		cmocka_unit_test(test_unique_vs_shared),
		cmocka_unit_test(test_partly_shared),
		cmocka_unit_test(test_dup_share),
		cmocka_unit_test(test_zero_pages),
		cmocka_unit_test(test_random_share_compressibility),
		cmocka_unit_test(test_check_finds_first_bad_byte),
		cmocka_unit_test(test_params_check),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
