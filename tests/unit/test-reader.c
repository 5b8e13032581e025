#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <string.h>

#include "common/reader.h"

static void test_reads_big_endian(void **state)
{
	static const uint8_t buf[] = { 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07,
				       0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e,
				       0x0f };
	struct tsb_reader r;

	tsb_reader_init(&r, buf, sizeof(buf));
	assert_int_equal(tsb_get_u8(&r), 0x01);
	assert_int_equal(tsb_get_be16(&r), 0x0203);
	assert_int_equal(tsb_get_be32(&r), 0x04050607);
	assert_true(tsb_get_be64(&r) == 0x08090a0b0c0d0e0full);
	assert_int_equal(r.err, 0);
	assert_int_equal(tsb_reader_remaining(&r), 0);
}

static void test_read_past_end_is_sticky(void **state)
{
	static const uint8_t buf[] = { 0xaa, 0xbb, 0xcc };
	struct tsb_reader r;

	tsb_reader_init(&r, buf, sizeof(buf));
	assert_int_equal(tsb_get_be32(&r), 0);
	assert_int_equal(r.err, -EBADMSG);
	/* Once failed, even a read that would fit fails. */
	assert_int_equal(tsb_get_u8(&r), 0);
	assert_null(tsb_get_bytes(&r, 1));
	assert_int_equal(tsb_reader_remaining(&r), 0);
}

static void test_huge_length_does_not_wrap(void **state)
{
	static const uint8_t buf[8];
	struct tsb_reader r;

	tsb_reader_init(&r, buf, sizeof(buf));
	tsb_skip(&r, 4);
	assert_null(tsb_get_bytes(&r, SIZE_MAX - 2));
	assert_int_equal(r.err, -EBADMSG);
}

static void test_put_load_round_trip(void **state)
{
	uint8_t b[8];

	tsb_put_be16(b, 0xbeef);
	assert_int_equal(tsb_load_be16(b), 0xbeef);
	tsb_put_be32(b, 0xdeadbeef);
	assert_int_equal(tsb_load_be32(b), 0xdeadbeef);
	tsb_put_be64(b, 0x0123456789abcdefull);
	assert_true(tsb_load_be64(b) == 0x0123456789abcdefull);
	assert_int_equal(b[0], 0x01);
	assert_int_equal(b[7], 0xef);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reads_big_endian),
		cmocka_unit_test(test_read_past_end_is_sticky),
		cmocka_unit_test(test_huge_length_does_not_wrap),
		cmocka_unit_test(test_put_load_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
