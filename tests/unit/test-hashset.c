#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "proxy/hashset.h"

static void make_hash(uint8_t h[32], unsigned i)
{
	/* Distinct hashes whose first bytes collide often (long probe chains). */
	memset(h, 0, 32);
	h[0] = i & 3;
	h[8] = i & 0xff;
	h[9] = (i >> 8) & 0xff;
	h[10] = (i >> 16) & 0xff;
	h[31] = 1;
}

static void test_add_has_grow(void **state)
{
	struct hashset s;
	uint8_t h[32];
	unsigned i;

	(void)state;
	hashset_init(&s);
	make_hash(h, 1);
	assert_false(hashset_has(&s, h));
	for (i = 0; i < 20000; i++) {
		make_hash(h, i);
		assert_int_equal(hashset_add(&s, h), 0);
		assert_int_equal(hashset_add(&s, h), 0); /* twice: counted once */
	}
	assert_int_equal(s.count, 20000);
	for (i = 0; i < 20000; i++) {
		make_hash(h, i);
		assert_true(hashset_has(&s, h));
	}
	for (i = 20000; i < 21000; i++) {
		make_hash(h, i);
		assert_false(hashset_has(&s, h));
	}
	hashset_fini(&s);
}

static void test_zero_hash(void **state)
{
	struct hashset s;
	uint8_t z[32] = { 0 };

	(void)state;
	hashset_init(&s);
	assert_false(hashset_has(&s, z));
	assert_int_equal(hashset_add(&s, z), 0);
	assert_true(hashset_has(&s, z));
	hashset_fini(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_add_has_grow),
		cmocka_unit_test(test_zero_hash),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
