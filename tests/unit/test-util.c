#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "common/util.h"

static void test_parse_u64(void **state)
{
	uint64_t v = 7;

	assert_int_equal(tsb_parse_u64("42", 0, 100, &v), 0);
	assert_true(v == 42);
	assert_int_equal(tsb_parse_u64("101", 0, 100, &v), -ERANGE);
	assert_int_equal(tsb_parse_u64("-1", 0, 100, &v), -EINVAL);
	assert_int_equal(tsb_parse_u64("4x", 0, 100, &v), -EINVAL);
	assert_int_equal(tsb_parse_u64("", 0, 100, &v), -EINVAL);
	assert_int_equal(tsb_parse_u64("99999999999999999999999", 0, UINT64_MAX, &v),
			 -ERANGE);
	assert_true(v == 42);
}

static void test_parse_size(void **state)
{
	uint64_t v;

	assert_int_equal(tsb_parse_size("512M", &v), 0);
	assert_true(v == 512ull << 20);
	assert_int_equal(tsb_parse_size("524292K", &v), 0);
	assert_true(v == 524292ull << 10);
	assert_int_equal(tsb_parse_size("4096", &v), 0);
	assert_true(v == 4096);
	assert_int_equal(tsb_parse_size("1G", &v), 0);
	assert_true(v == 1ull << 30);
	assert_int_equal(tsb_parse_size("12Q", &v), -EINVAL);
	assert_int_equal(tsb_parse_size("-1M", &v), -EINVAL);
}

static void test_parse_rate(void **state)
{
	uint64_t v;

	assert_int_equal(tsb_parse_rate("100mbit", &v), 0);
	assert_true(v == 12500000);
	assert_int_equal(tsb_parse_rate("1gbit", &v), 0);
	assert_true(v == 125000000);
	assert_int_equal(tsb_parse_rate("12.5MB", &v), 0);
	assert_true(v == 12500000);
	assert_int_equal(tsb_parse_rate("fast", &v), -EINVAL);
}

static void test_parse_duration(void **state)
{
	uint64_t v;

	assert_int_equal(tsb_parse_duration("25ms", &v), 0);
	assert_true(v == 25000000);
	assert_int_equal(tsb_parse_duration("2s", &v), 0);
	assert_true(v == 2000000000ull);
	assert_int_equal(tsb_parse_duration("10", &v), 0);
	assert_true(v == 10000000);
	assert_int_equal(tsb_parse_duration("3 days", &v), -EINVAL);
}

static void test_split_hostport(void **state)
{
	char host[64], port[16];

	assert_int_equal(tsb_split_hostport("127.0.0.1:4000", host, sizeof(host),
					    port, sizeof(port)), 0);
	assert_string_equal(host, "127.0.0.1");
	assert_string_equal(port, "4000");
	assert_int_equal(tsb_split_hostport("[::1]:99", host, sizeof(host), port,
					    sizeof(port)), 0);
	assert_string_equal(host, "::1");
	assert_string_equal(port, "99");
	assert_int_equal(tsb_split_hostport("nohost", host, sizeof(host), port,
					    sizeof(port)), -EINVAL);
	assert_int_equal(tsb_split_hostport("h:", host, sizeof(host), port,
					    sizeof(port)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_u64),
		cmocka_unit_test(test_parse_size),
		cmocka_unit_test(test_parse_rate),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_split_hostport),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
