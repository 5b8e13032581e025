/*
 * Wire codecs: round trips of every message, truncation at every byte,
 * caps, unknown types/flags/encodings/versions, zstd bombs, the
 * resumable frame decoder, the PAGES builder, SHA-256 and deltas.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "wire/codec.h"
#include "wire/need.h"
#include "wire/wire.h"

static struct wire_zstd *zs;

static int setup(void **state)
{
	zs = wire_zstd_new(3);
	return zs ? 0 : -1;
}

static int teardown(void **state)
{
	wire_zstd_free(zs);
	return 0;
}

/* Decodes the single frame in b (header checked too) into m. */
static int decode_buf(const struct tsb_buf *b, struct wire_msg *m)
{
	struct wire_frame f;
	int r;

	assert_true(b->len >= WIRE_HDR_LEN);
	r = wire_header_decode(b->data, &f);
	if (r)
		return r;
	assert_int_equal(f.len, b->len - WIRE_HDR_LEN);
	return wire_msg_decode(f.type, f.flags, b->data + WIRE_HDR_LEN, f.len,
			       m);
}

/* Every proper prefix of the payload is malformed. */
static void assert_truncations_fail(const struct tsb_buf *b)
{
	struct wire_msg m;
	size_t k, len = b->len - WIRE_HDR_LEN;

	for (k = 0; k < len; k++)
		assert_int_equal(wire_msg_decode(b->data[0], b->data[1],
						 b->data + WIRE_HDR_LEN, k, &m),
				 -EBADMSG);
}

/* A trailing byte is malformed too. */
static void assert_trailing_fails(const struct tsb_buf *b)
{
	struct tsb_buf c;
	struct wire_msg m;

	tsb_buf_init(&c);
	tsb_buf_append(&c, b->data, b->len);
	tsb_buf_put_u8(&c, 0);
	assert_int_equal(wire_msg_decode(c.data[0], c.data[1],
					 c.data + WIRE_HDR_LEN,
					 c.len - WIRE_HDR_LEN, &m),
			 -EBADMSG);
	tsb_buf_fini(&c);
}

static bool str_is(struct wire_str s, const char *want)
{
	return s.len == strlen(want) && !memcmp(s.p, want, s.len);
}

/* ---- tsb_buf ---- */

static void test_buf(void **state)
{
	struct tsb_buf b;
	size_t i;

	tsb_buf_init(&b);
	for (i = 0; i < 10000; i++)
		assert_int_equal(tsb_buf_put_u8(&b, (uint8_t)i), 0);
	assert_int_equal(b.len, 10000);
	assert_int_equal(b.data[9999], (uint8_t)9999);
	tsb_buf_put_be16(&b, 0x0102);
	tsb_buf_put_be32(&b, 0x03040506);
	tsb_buf_put_be64(&b, 0x0708090a0b0c0d0eull);
	assert_int_equal(b.err, 0);
	assert_int_equal(tsb_load_be16(b.data + 10000), 0x0102);
	assert_int_equal(tsb_load_be32(b.data + 10002), 0x03040506);
	assert_true(tsb_load_be64(b.data + 10006) == 0x0708090a0b0c0d0eull);
	/* Impossible sizes fail cleanly and stick. */
	assert_int_equal(tsb_buf_reserve(&b, SIZE_MAX - 8), -ENOMEM);
	assert_int_equal(tsb_buf_put_u8(&b, 1), -ENOMEM);
	assert_int_equal(b.len, 10014);
	tsb_buf_reset(&b);
	assert_int_equal(b.len, 0);
	assert_int_equal(tsb_buf_append(&b, "x", 1), 0);
	tsb_buf_fini(&b);
	tsb_buf_fini(&b);
	tsb_buf_fini(NULL);
}

/* ---- header ---- */

static void test_header(void **state)
{
	uint8_t h[WIRE_HDR_LEN] = { WIRE_MSG_PING, 0, 0, 0, 0, 0, 0, 8 };
	struct wire_frame f;
	struct wire_msg m;

	assert_int_equal(wire_header_decode(h, &f), 0);
	assert_int_equal(f.type, WIRE_MSG_PING);
	assert_int_equal(f.len, 8);
	/* Unknown types. */
	h[0] = 0;
	assert_int_equal(wire_header_decode(h, &f), -EOPNOTSUPP);
	h[0] = WIRE_MSG_MAX + 1;
	assert_int_equal(wire_header_decode(h, &f), -EOPNOTSUPP);
	h[0] = 0xff;
	assert_int_equal(wire_header_decode(h, &f), -EOPNOTSUPP);
	assert_int_equal(wire_msg_decode(0xff, 0, h, 8, &m), -EOPNOTSUPP);
	assert_int_equal(wire_msg_decode(0, 0, h, 8, &m), -EOPNOTSUPP);
	/* Flags not defined for the type. */
	h[0] = WIRE_MSG_PING;
	h[1] = WIRE_F_ZSTD;
	assert_int_equal(wire_header_decode(h, &f), -EOPNOTSUPP);
	h[0] = WIRE_MSG_STREAM;
	assert_int_equal(wire_header_decode(h, &f), 0);
	h[1] = 0x80;
	assert_int_equal(wire_header_decode(h, &f), -EOPNOTSUPP);
	/* Reserved bits. */
	h[1] = 0;
	h[3] = 1;
	assert_int_equal(wire_header_decode(h, &f), -EOPNOTSUPP);
	h[3] = 0;
	/* Lengths. */
	tsb_put_be32(h + 4, WIRE_MAX_PAYLOAD);
	assert_int_equal(wire_header_decode(h, &f), 0);
	tsb_put_be32(h + 4, WIRE_MAX_PAYLOAD + 1);
	assert_int_equal(wire_header_decode(h, &f), -EMSGSIZE);
	tsb_put_be32(h + 4, 0xffffffff);
	assert_int_equal(wire_header_decode(h, &f), -EMSGSIZE);
	assert_string_equal(wire_msg_name(WIRE_MSG_PAGES), "PAGES");
	assert_string_equal(wire_msg_name(200), "?");
}

static void test_roles(void **state)
{
	assert_true(wire_msg_role_ok(WIRE_MSG_PAGES, WIRE_ROLE_SENDER));
	assert_false(wire_msg_role_ok(WIRE_MSG_PAGES, WIRE_ROLE_RECEIVER));
	assert_true(wire_msg_role_ok(WIRE_MSG_NEED, WIRE_ROLE_RECEIVER));
	assert_false(wire_msg_role_ok(WIRE_MSG_NEED, WIRE_ROLE_SENDER));
	assert_true(wire_msg_role_ok(WIRE_MSG_RETURN, WIRE_ROLE_RECEIVER));
	assert_false(wire_msg_role_ok(WIRE_MSG_RETURN, WIRE_ROLE_SENDER));
	assert_true(wire_msg_role_ok(WIRE_MSG_HELLO, WIRE_ROLE_SENDER));
	assert_true(wire_msg_role_ok(WIRE_MSG_ACK, WIRE_ROLE_RECEIVER));
	assert_false(wire_msg_role_ok(99, WIRE_ROLE_SENDER));
	assert_false(wire_msg_role_ok(WIRE_MSG_ACK, 0));
}

/* ---- HELLO ---- */

static const uint8_t filter_bytes[] = { 0xde, 0xad, 0xbe, 0xef, 0x00, 0x01 };

static void encode_test_hello(struct tsb_buf *b)
{
	struct wire_hello_args a = {
		.role = WIRE_ROLE_RECEIVER,
		.caps = WIRE_CAP_ZSTD | WIRE_CAP_REF | (1ull << 63),
		.site = "osaka-dc2",
		.migration = "mig-0001",
		.vm = "vm-web-7",
		.tenant = "acme",
		.store_gen = 0x1122334455667788ull,
		.filter_kind = 3,
		.filter = filter_bytes,
		.filter_len = sizeof(filter_bytes),
	};

	assert_int_equal(wire_encode_hello(b, &a), 0);
}

static void test_hello_round_trip(void **state)
{
	struct tsb_buf b;
	struct wire_msg m;
	struct wire_hello *h = &m.u.hello;
	uint16_t v;

	tsb_buf_init(&b);
	encode_test_hello(&b);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.type, WIRE_MSG_HELLO);
	assert_int_equal(h->version, WIRE_VERSION);
	assert_int_equal(h->role, WIRE_ROLE_RECEIVER);
	assert_true(h->caps == (WIRE_CAP_ZSTD | WIRE_CAP_REF | (1ull << 63)));
	assert_true(str_is(h->site, "osaka-dc2"));
	assert_true(str_is(h->migration, "mig-0001"));
	assert_true(str_is(h->vm, "vm-web-7"));
	assert_true(str_is(h->tenant, "acme"));
	assert_true(h->store_gen == 0x1122334455667788ull);
	assert_int_equal(h->filter_kind, 3);
	assert_int_equal(h->filter_len, sizeof(filter_bytes));
	assert_memory_equal(h->filter, filter_bytes, sizeof(filter_bytes));
	assert_int_equal(wire_hello_peek_version(b.data + WIRE_HDR_LEN,
						 b.len - WIRE_HDR_LEN, &v), 0);
	assert_int_equal(v, 1);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	tsb_buf_fini(&b);
}

static void test_hello_refusals(void **state)
{
	struct wire_hello_args a = { .role = WIRE_ROLE_SENDER, .site = "s" };
	char long_id[WIRE_MAX_ID + 2];
	struct tsb_buf b;
	struct wire_msg m;
	uint8_t *p;

	tsb_buf_init(&b);
	/* Minimal HELLO: empty optional fields. */
	assert_int_equal(wire_encode_hello(&b, &a), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.hello.migration.len, 0);
	p = b.data + WIRE_HDR_LEN;

	/* Another version: refused before looking at the rest. */
	p[5] = 2;
	assert_int_equal(decode_buf(&b, &m), -EOPNOTSUPP);
	b.len = WIRE_HDR_LEN + 6;
	tsb_put_be32(b.data + 4, 6);
	assert_int_equal(decode_buf(&b, &m), -EOPNOTSUPP);
	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_hello(&b, &a), 0);
	p = b.data + WIRE_HDR_LEN;
	/* Bad magic, role, reserved byte. */
	p[0] = 'X';
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	p[0] = 'T';
	p[6] = 3;
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	p[6] = WIRE_ROLE_SENDER;
	p[7] = 1;
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	p[7] = 0;
	/* Site must be a non-empty printable id. */
	p[17] = ' ';
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	p[17] = 's';
	p[16] = 0;
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	p[16] = WIRE_MAX_ID + 1;
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);

	/* Encoder refuses what a decoder would. */
	memset(long_id, 'x', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	tsb_buf_reset(&b);
	a.vm = long_id;
	assert_int_equal(wire_encode_hello(&b, &a), -EINVAL);
	assert_int_equal(b.len, 0);
	a.vm = "has space";
	assert_int_equal(wire_encode_hello(&b, &a), -EINVAL);
	a.vm = NULL;
	a.site = "";
	assert_int_equal(wire_encode_hello(&b, &a), -EINVAL);
	a.site = "s";
	a.filter_len = WIRE_MAX_FILTER + 1;
	a.filter_kind = 1;
	a.filter = filter_bytes;
	assert_int_equal(wire_encode_hello(&b, &a), -EINVAL);
	assert_int_equal(b.len, 0);
	tsb_buf_fini(&b);
}

static void test_hello_filter_cap(void **state)
{
	struct tsb_buf b;
	struct wire_msg m;
	uint8_t *filter = calloc(1, WIRE_MAX_FILTER);
	size_t at;

	assert_non_null(filter);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_hello(&b, &(struct wire_hello_args){
		.role = WIRE_ROLE_RECEIVER, .site = "s", .filter_kind = 1,
		.filter = filter, .filter_len = WIRE_MAX_FILTER }), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.hello.filter_len, WIRE_MAX_FILTER);
	/* Announce one byte more than the cap. */
	at = WIRE_HDR_LEN + 16 + 2 + 3 + 8 + 2;
	tsb_put_be32(b.data + at, WIRE_MAX_FILTER + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	/* A filter with kind 0 is malformed. */
	tsb_put_be32(b.data + at, WIRE_MAX_FILTER);
	tsb_put_be16(b.data + at - 2, 0);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_buf_fini(&b);
	free(filter);
}

/* ---- BLOCKS ---- */

static void test_blocks_round_trip(void **state)
{
	struct wire_block in[3] = {
		{ .index = 0, .name = { "pc.ram", 6 }, .used_length = 512ull << 20 },
		{ .index = 5, .name = { "/rom@etc/acpi/tables", 20 }, .used_length = 131072 },
		{ .index = 1023, .name = { "0000:00:02.0/vga.vram", 21 }, .used_length = 16 << 20 },
	};
	struct wire_blocks_iter it;
	struct wire_block out;
	struct tsb_buf b;
	struct wire_msg m;
	size_t i = 0;

	tsb_buf_init(&b);
	assert_int_equal(wire_encode_blocks(&b, in, 3), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.blocks.count, 3);
	wire_blocks_iter_init(&m.u.blocks, &it);
	while (wire_blocks_next(&it, &out)) {
		assert_int_equal(out.index, in[i].index);
		assert_int_equal(out.name.len, in[i].name.len);
		assert_memory_equal(out.name.p, in[i].name.p, out.name.len);
		assert_true(out.used_length == in[i].used_length);
		i++;
	}
	assert_int_equal(i, 3);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);

	/* Duplicate index, index over the cap, empty name. */
	in[1].index = 0;
	assert_int_equal(wire_encode_blocks(&b, in, 3), -EINVAL);
	b.data[WIRE_HDR_LEN + 2 + 2 + 1 + 6 + 8 + 1] = 0; /* 2nd index := 0 */
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	in[1].index = 5;
	b.data[WIRE_HDR_LEN + 2 + 2 + 1 + 6 + 8 + 1] = 5;
	tsb_put_be16(b.data + WIRE_HDR_LEN + 2, WIRE_MAX_BLOCKS);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 2, 0);
	b.data[WIRE_HDR_LEN + 4] = 0;
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(b.data + WIRE_HDR_LEN, WIRE_MAX_BLOCKS + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	tsb_put_be16(b.data + WIRE_HDR_LEN, 0);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_buf_fini(&b);
}

/* ---- STREAM / RETURN ---- */

static void test_runs(void **state)
{
	static const char text[] = "QEVM\0\0\0\3 some device state bytes";
	uint8_t *big = calloc(1, 1 << 20);
	struct tsb_buf b, scratch;
	const uint8_t *out;
	struct wire_msg m;
	size_t i;

	assert_non_null(big);
	for (i = 0; i < (1 << 20); i++)
		big[i] = (uint8_t)(i / 4096);
	tsb_buf_init(&b);
	tsb_buf_init(&scratch);

	/* Raw. */
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_STREAM, text,
					 sizeof(text), NULL), 0);
	assert_int_equal(b.data[1], 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_false(m.u.run.zstd);
	assert_int_equal(m.u.run.raw_len, sizeof(text));
	assert_int_equal(wire_run_unpack(&m.u.run, NULL, &scratch, &out), 0);
	assert_memory_equal(out, text, sizeof(text));

	/* Compressible: zstd, flag set. */
	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_RETURN, big, 1 << 20, zs),
			 0);
	assert_int_equal(b.data[0], WIRE_MSG_RETURN);
	assert_int_equal(b.data[1], WIRE_F_ZSTD);
	assert_true(b.len < 1 << 16);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_true(m.u.run.zstd);
	assert_int_equal(m.u.run.raw_len, 1 << 20);
	assert_int_equal(wire_run_unpack(&m.u.run, zs, &scratch, &out), 0);
	assert_memory_equal(out, big, 1 << 20);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);

	/* Incompressible input goes raw even when asked to compress. */
	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_STREAM, "ab", 2, zs), 0);
	assert_int_equal(b.data[1], 0);

	/* Empty and oversized runs. */
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_STREAM, text, 0, NULL),
			 -EINVAL);
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_PAGES, text, 1, NULL),
			 -EINVAL);
	assert_int_equal(wire_encode_run(&b, WIRE_MSG_STREAM, big,
					 WIRE_MAX_RUN + 1, NULL), -EINVAL);
	assert_int_equal(wire_msg_decode(WIRE_MSG_STREAM, 0, big, 0, &m),
			 -EBADMSG);
	assert_int_equal(wire_msg_decode(WIRE_MSG_STREAM, 0, big,
					 WIRE_MAX_PAYLOAD + 1, &m), -EMSGSIZE);
	/* zstd flag on bytes that are not a zstd frame. */
	assert_int_equal(wire_msg_decode(WIRE_MSG_STREAM, WIRE_F_ZSTD,
					 (const uint8_t *)text, sizeof(text), &m),
			 -EBADMSG);
	tsb_buf_fini(&b);
	tsb_buf_fini(&scratch);
	free(big);
}

static void test_zstd_bomb(void **state)
{
	size_t big_len = 64u << 20;
	uint8_t *zeros = calloc(1, big_len);
	struct tsb_buf frame, b;
	struct wire_msg m;
	uint8_t small[16];
	size_t got;
	ssize_t n;

	assert_non_null(zeros);
	tsb_buf_init(&frame);
	tsb_buf_init(&b);
	/* 64 MiB of zeros compress to a few KiB. */
	n = wire_zstd_compress(zs, zeros, big_len, &frame);
	assert_true(n > 0 && n < 8192);

	/* As a STREAM run: refused from the frame header, nothing decompressed. */
	assert_int_equal(wire_msg_decode(WIRE_MSG_STREAM, WIRE_F_ZSTD,
					 frame.data, frame.len, &m), -EMSGSIZE);
	/* Directly: the cap is the caller's. */
	assert_int_equal(wire_zstd_decompress(zs, frame.data, frame.len, small,
					      sizeof(small), &got), -EMSGSIZE);

	/* As the literal area of a 1-page PAGES batch: wrong size, refused. */
	tsb_buf_put_be32(&b, 4096);
	tsb_buf_put_be16(&b, 1);
	tsb_buf_put_be16(&b, 1);
	tsb_buf_put_be16(&b, 0);
	tsb_buf_put_be16(&b, 0x28);
	tsb_buf_put_be64(&b, 0);
	tsb_buf_put_u8(&b, WIRE_ENC_DATA);
	tsb_buf_append(&b, frame.data, frame.len);
	assert_int_equal(wire_msg_decode(WIRE_MSG_PAGES, WIRE_F_ZSTD, b.data,
					 b.len, &m), -EBADMSG);

	/* As a DELTA entry: must decompress to exactly one page. */
	tsb_buf_reset(&b);
	tsb_buf_put_be32(&b, 4096);
	tsb_buf_put_be16(&b, 1);
	tsb_buf_put_be16(&b, 0);
	tsb_buf_put_be16(&b, 0);
	tsb_buf_put_be16(&b, 0x28);
	tsb_buf_put_be64(&b, 0);
	tsb_buf_put_u8(&b, WIRE_ENC_DELTA);
	memset(tsb_buf_extend(&b, 64), 0, 64);
	tsb_buf_put_be32(&b, (uint32_t)frame.len);
	tsb_buf_append(&b, frame.data, frame.len);
	assert_int_equal(wire_msg_decode(WIRE_MSG_PAGES, 0, b.data, b.len, &m),
			 -EBADMSG);

	/* Two frames back to back, or trailing garbage: not one frame. */
	tsb_buf_reset(&b);
	assert_true(wire_zstd_compress(zs, "abc", 3, &b) > 0);
	assert_true(wire_zstd_compress(zs, "def", 3, &b) > 0);
	assert_int_equal(wire_msg_decode(WIRE_MSG_STREAM, WIRE_F_ZSTD, b.data,
					 b.len, &m), -EBADMSG);

	tsb_buf_fini(&frame);
	tsb_buf_fini(&b);
	free(zeros);
}

/* ---- PAGES ---- */

#define PS 4096

static void fill_page(uint8_t *p, unsigned int seed)
{
	size_t i;

	for (i = 0; i < PS; i++)
		p[i] = (uint8_t)(seed * 7 + i / 64);
}

static void build_test_batch(struct wire_pages_builder *pb, uint8_t *hash,
			     uint8_t *delta_buf, size_t *delta_len)
{
	uint8_t page[PS], base[PS];
	struct tsb_buf d;

	fill_page(page, 1);
	assert_int_equal(wire_pages_add_zero(pb, 0, 0x22, 0, 0), 0);
	assert_int_equal(wire_pages_add_data(pb, 0, 0x28, PS, page), 0);
	assert_int_equal(wire_sha256(page, PS, hash), 0);
	assert_int_equal(wire_pages_add_ref(pb, 0, 0x28, 2 * PS, WIRE_ENC_REF,
					    hash), 0);
	assert_int_equal(wire_pages_add_ref(pb, 3, 0x08, 7 * PS, WIRE_ENC_SAME,
					    hash), 0);
	fill_page(page, 2);
	assert_int_equal(wire_pages_add_data(pb, 3, 0x28, 8 * PS, page), 0);
	assert_int_equal(wire_pages_add_raw(pb, 3, 0x60, 9 * PS,
					    "\x01\x00\x03xyz", 6), 0);
	/* A delta: base = page 2, new = page 2 with a few bytes changed. */
	memcpy(base, page, PS);
	page[100] ^= 0xff;
	page[4000] = 7;
	tsb_buf_init(&d);
	assert_true(wire_delta_encode(zs, base, page, PS, &d) > 0);
	memcpy(delta_buf, d.data, d.len);
	*delta_len = d.len;
	assert_int_equal(wire_pages_add_delta(pb, 3, 0x28, 10 * PS, hash, hash,
					      d.data, d.len), 0);
	tsb_buf_fini(&d);
	/* Later copy of an earlier page: order is kept. */
	assert_int_equal(wire_pages_add_zero(pb, 0, 0x22, PS, 0x5a), 0);
}

static void check_test_batch(const struct wire_msg *m, const uint8_t *hash,
			     const uint8_t *delta, size_t delta_len)
{
	const struct wire_pages *p = &m->u.pages;
	struct wire_page_iter it;
	struct wire_page_entry e;
	struct tsb_buf scratch;
	const uint8_t *lit;
	uint8_t page[PS];

	assert_int_equal(m->type, WIRE_MSG_PAGES);
	assert_int_equal(p->page_size, PS);
	assert_int_equal(p->count, 8);
	assert_int_equal(p->n_data, 2);
	tsb_buf_init(&scratch);
	assert_int_equal(wire_pages_unpack(p, zs, &scratch, &lit), 0);
	wire_pages_iter_init(p, &it);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_ZERO);
	assert_int_equal(e.qflags, 0x22);
	assert_int_equal(e.fill, 0);
	assert_true(e.offset == 0);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_DATA);
	assert_int_equal(e.data_index, 0);
	fill_page(page, 1);
	assert_memory_equal(lit + (size_t)e.data_index * PS, page, PS);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_REF);
	assert_memory_equal(e.hash, hash, WIRE_HASH_LEN);
	assert_true(e.offset == 2 * PS);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_SAME);
	assert_int_equal(e.block, 3);
	assert_int_equal(e.qflags, 0x08);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_DATA);
	assert_int_equal(e.data_index, 1);
	fill_page(page, 2);
	assert_memory_equal(lit + PS, page, PS);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_RAW);
	assert_int_equal(e.bytes_len, 6);
	assert_memory_equal(e.bytes, "\x01\x00\x03xyz", 6);

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_DELTA);
	assert_int_equal(e.bytes_len, delta_len);
	assert_memory_equal(e.bytes, delta, delta_len);
	{
		uint8_t base[PS], out[PS];

		fill_page(base, 2);
		assert_int_equal(wire_delta_apply(zs, base, e.bytes,
						  e.bytes_len, out, PS), 0);
		base[100] ^= 0xff;
		base[4000] = 7;
		assert_memory_equal(out, base, PS);
	}

	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_ZERO);
	assert_int_equal(e.fill, 0x5a);
	assert_true(e.offset == PS);
	assert_false(wire_pages_next(&it, &e));
	tsb_buf_fini(&scratch);
}

static void test_pages_round_trip(void **state)
{
	struct wire_pages_builder pb;
	uint8_t hash[WIRE_HASH_LEN], delta[PS + 64];
	size_t delta_len;
	struct tsb_buf b;
	struct wire_msg m;

	assert_int_equal(wire_pages_builder_init(&pb, PS), 0);
	build_test_batch(&pb, hash, delta, &delta_len);
	tsb_buf_init(&b);

	/* Literal area raw. */
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), 0);
	assert_int_equal(b.data[1], 0);
	assert_int_equal(b.len - WIRE_HDR_LEN, wire_pages_builder_size(&pb));
	assert_int_equal(decode_buf(&b, &m), 0);
	check_test_batch(&m, hash, delta, delta_len);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);

	/* Literal area zstd. */
	tsb_buf_reset(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, zs), 0);
	assert_int_equal(b.data[1], WIRE_F_ZSTD);
	assert_true(b.len < wire_pages_builder_size(&pb));
	assert_int_equal(decode_buf(&b, &m), 0);
	check_test_batch(&m, hash, delta, delta_len);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);

	/* Empty builder cannot be encoded; reset empties it. */
	wire_pages_builder_reset(&pb);
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), -EINVAL);
	wire_pages_builder_fini(&pb);
	tsb_buf_fini(&b);
}

/* A LIVE entry (a sibling migration's content) travels as a REF does. */
static void test_live_entry(void **state)
{
	struct wire_pages_builder pb;
	struct wire_page_iter it;
	struct wire_page_entry e;
	uint8_t hash[WIRE_HASH_LEN];
	struct tsb_buf b;
	struct wire_msg m;

	(void)state;
	memset(hash, 0x5a, sizeof(hash));
	assert_int_equal(wire_pages_builder_init(&pb, PS), 0);
	assert_int_equal(wire_pages_add_ref(&pb, 2, 0x28, 4 * PS, WIRE_ENC_LIVE, hash), 0);
	tsb_buf_init(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	wire_pages_iter_init(&m.u.pages, &it);
	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_LIVE);
	assert_int_equal(e.block, 2);
	assert_true(e.offset == 4 * PS);
	assert_memory_equal(e.hash, hash, WIRE_HASH_LEN);
	assert_false(wire_pages_next(&it, &e));
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	wire_pages_builder_fini(&pb);
	tsb_buf_fini(&b);
}

static void test_samerun_and_base(void **state)
{
	struct wire_pages_builder pb;
	struct wire_page_iter it;
	struct wire_page_entry e;
	uint8_t digest[WIRE_HASH_LEN];
	struct tsb_buf b;
	struct wire_msg m;

	memset(digest, 0x3c, sizeof(digest));
	assert_int_equal(wire_pages_builder_init(&pb, PS), 0);
	assert_int_equal(wire_pages_add_samerun(&pb, 3, 0x28, 5 * PS, 700, digest), 0);
	assert_int_equal(wire_pages_add_samerun(&pb, 3, 0x28, 0, 1, digest), -EINVAL);
	assert_int_equal(wire_pages_add_samerun(&pb, 3, 0x28, 0, WIRE_MAX_SAMERUN + 1,
						digest), -EINVAL);
	tsb_buf_init(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	wire_pages_iter_init(&m.u.pages, &it);
	assert_true(wire_pages_next(&it, &e));
	assert_int_equal(e.enc, WIRE_ENC_SAMERUN);
	assert_int_equal(e.block, 3);
	assert_int_equal(e.offset, 5 * PS);
	assert_int_equal(e.count, 700);
	assert_memory_equal(e.hash, digest, WIRE_HASH_LEN);
	assert_false(wire_pages_next(&it, &e));
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	/* A run of one page, or of more than the cap, is refused. */
	tsb_put_be16(b.data + WIRE_HDR_LEN + 8 + 13, 1);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 8 + 13, WIRE_MAX_SAMERUN + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);

	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_base(&b, "0123abcd"), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.type, WIRE_MSG_BASE);
	assert_int_equal(m.u.base.len, 8);
	assert_memory_equal(m.u.base.p, "0123abcd", 8);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	assert_true(wire_msg_role_ok(WIRE_MSG_BASE, WIRE_ROLE_SENDER));
	assert_false(wire_msg_role_ok(WIRE_MSG_BASE, WIRE_ROLE_RECEIVER));
	assert_int_equal(wire_encode_base(&b, ""), -EINVAL);
	assert_int_equal(wire_encode_base(&b, "has space"), -EINVAL);

	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_lane(&b, 2, 3), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.type, WIRE_MSG_LANE);
	assert_int_equal(m.u.lane.index, 2);
	assert_int_equal(m.u.lane.count, 3);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	assert_true(wire_msg_role_ok(WIRE_MSG_LANE, WIRE_ROLE_SENDER));
	assert_true(wire_msg_role_ok(WIRE_MSG_LANE, WIRE_ROLE_RECEIVER));
	/* An index past the count, one lane, or more than the cap: refused. */
	tsb_put_be16(b.data + WIRE_HDR_LEN, 3);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(b.data + WIRE_HDR_LEN, 0);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 2, 1);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 2, WIRE_MAX_LANES + 1);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	assert_int_equal(wire_encode_lane(&b, 3, 3), -EINVAL);
	assert_int_equal(wire_encode_lane(&b, 0, 1), -EINVAL);
	assert_int_equal(wire_encode_lane(&b, 0, WIRE_MAX_LANES + 1), -EINVAL);
	wire_pages_builder_fini(&pb);
	tsb_buf_fini(&b);
}

static void test_pages_refusals(void **state)
{
	struct wire_pages_builder pb;
	uint8_t hash[WIRE_HASH_LEN] = { 0 };
	struct tsb_buf b;
	struct wire_msg m;
	uint8_t *entry;

	assert_int_equal(wire_pages_builder_init(&pb, 3000), -EINVAL);
	assert_int_equal(wire_pages_builder_init(&pb, 256), -EINVAL);
	assert_int_equal(wire_pages_builder_init(&pb, 1u << 17), -EINVAL);
	assert_int_equal(wire_pages_builder_init(&pb, PS), 0);
	/* Bad arguments. */
	assert_int_equal(wire_pages_add_zero(&pb, WIRE_MAX_BLOCKS, 0, 0, 0),
			 -EINVAL);
	assert_int_equal(wire_pages_add_zero(&pb, 0, PS, 0, 0), -EINVAL);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0, 100, 0), -EINVAL);
	assert_int_equal(wire_pages_add_ref(&pb, 0, 0, 0, WIRE_ENC_DATA, hash),
			 -EINVAL);
	assert_int_equal(wire_pages_add_raw(&pb, 0, 0, 0, "", 0), -EINVAL);
	assert_int_equal(wire_pages_add_delta(&pb, 0, 0, 0, hash, hash, "xx", 2),
			 -EINVAL);
	assert_int_equal(pb.count, 0);

	assert_int_equal(wire_pages_add_ref(&pb, 0, 0x28, 0, WIRE_ENC_REF, hash),
			 0);
	tsb_buf_init(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	entry = b.data + WIRE_HDR_LEN + 8;

	/* Unknown encoding. */
	entry[12] = WIRE_ENC_MAX + 1;
	assert_int_equal(decode_buf(&b, &m), -EOPNOTSUPP);
	entry[12] = WIRE_ENC_REF;
	/* Unaligned offset, flags spilling into the offset, block over the cap. */
	entry[11] = 1;
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	entry[11] = 0;
	tsb_put_be16(entry + 2, PS);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(entry + 2, 0x28);
	tsb_put_be16(entry, WIRE_MAX_BLOCKS);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	tsb_put_be16(entry, 0);
	/* Header fields: page size, count, n_data. */
	tsb_put_be32(b.data + WIRE_HDR_LEN, 4095);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be32(b.data + WIRE_HDR_LEN, PS);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, WIRE_MAX_BATCH_PAGES + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, 0);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, 1);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 6, 1); /* claims one DATA page */
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 6, 2);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	/* 65 literal pages of 64 KiB are over WIRE_MAX_BATCH_BYTES. */
	tsb_put_be32(b.data + WIRE_HDR_LEN, WIRE_MAX_PAGE_SIZE);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, 65);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 6, 65);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);

	/* RAW entry length over the cap. */
	tsb_buf_reset(&b);
	tsb_buf_put_be32(&b, PS);
	tsb_buf_put_be16(&b, 1);
	tsb_buf_put_be16(&b, 0);
	tsb_buf_put_be16(&b, 0);
	tsb_buf_put_be16(&b, 0x60);
	tsb_buf_put_be64(&b, 0);
	tsb_buf_put_u8(&b, WIRE_ENC_RAW);
	tsb_buf_put_be32(&b, WIRE_MAX_ENTRY_BYTES + 1);
	assert_int_equal(wire_msg_decode(WIRE_MSG_PAGES, 0, b.data, b.len, &m),
			 -EMSGSIZE);
	tsb_put_be32(b.data + b.len - 4, 0);
	assert_int_equal(wire_msg_decode(WIRE_MSG_PAGES, 0, b.data, b.len, &m),
			 -EBADMSG);
	wire_pages_builder_fini(&pb);
	tsb_buf_fini(&b);
}

static void test_pages_builder_caps(void **state)
{
	struct wire_pages_builder pb;
	static uint8_t page[WIRE_MAX_PAGE_SIZE];
	static uint8_t raw[WIRE_MAX_ENTRY_BYTES];
	struct tsb_buf b;
	struct wire_msg m;
	unsigned int i;

	/* 1024 entries per batch. */
	assert_int_equal(wire_pages_builder_init(&pb, PS), 0);
	for (i = 0; i < WIRE_MAX_BATCH_PAGES; i++)
		assert_int_equal(wire_pages_add_data(&pb, 0, 0x28,
						     (uint64_t)i * PS, page), 0);
	assert_int_equal(wire_pages_add_zero(&pb, 0, 0x22, 0, 0), -ENOBUFS);
	assert_int_equal(pb.count, WIRE_MAX_BATCH_PAGES);
	tsb_buf_init(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, zs), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.pages.n_data, WIRE_MAX_BATCH_PAGES);
	assert_true(b.len < 64 * 1024); /* all-zero literal compresses */
	tsb_buf_reset(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	wire_pages_builder_fini(&pb);

	/* 4 MiB of literal pages per batch. */
	assert_int_equal(wire_pages_builder_init(&pb, WIRE_MAX_PAGE_SIZE), 0);
	for (i = 0; i < WIRE_MAX_BATCH_BYTES / WIRE_MAX_PAGE_SIZE; i++)
		assert_int_equal(wire_pages_add_data(&pb, 0, 0,
				(uint64_t)i * WIRE_MAX_PAGE_SIZE, page), 0);
	assert_int_equal(wire_pages_add_data(&pb, 0, 0, 0, page), -ENOBUFS);
	/* Room for other entries until the payload cap. */
	for (i = 0; i < 200; i++) {
		int r = wire_pages_add_raw(&pb, 1, 0x60, 0, raw, sizeof(raw));

		if (r == -ENOBUFS)
			break;
		assert_int_equal(r, 0);
	}
	assert_true(i < 200);
	assert_true(wire_pages_builder_size(&pb) <= WIRE_MAX_PAYLOAD);
	tsb_buf_reset(&b);
	assert_int_equal(wire_pages_encode(&pb, &b, NULL), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	wire_pages_builder_fini(&pb);
	tsb_buf_fini(&b);
}

/* ---- NEED / HASHDATA ---- */

static void test_need_hashdata(void **state)
{
	uint8_t hashes[3][WIRE_HASH_LEN];
	uint8_t data[3 * PS];
	struct tsb_buf b, scratch;
	const uint8_t *lit;
	struct wire_msg m;
	int i;

	for (i = 0; i < 3; i++) {
		fill_page(data + i * PS, (unsigned int)i + 10);
		assert_int_equal(wire_sha256(data + i * PS, PS, hashes[i]), 0);
	}
	tsb_buf_init(&b);
	tsb_buf_init(&scratch);
	assert_int_equal(wire_encode_need(&b, (const uint8_t (*)[32])hashes, 3),
			 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.need.count, 3);
	assert_memory_equal(m.u.need.hashes, hashes, sizeof(hashes));
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	tsb_put_be16(b.data + WIRE_HDR_LEN, WIRE_MAX_BATCH_PAGES + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	tsb_put_be16(b.data + WIRE_HDR_LEN, 0);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	assert_int_equal(wire_encode_need(&b, (const uint8_t (*)[32])hashes, 0),
			 -EINVAL);

	for (i = 0; i < 2; i++) {
		tsb_buf_reset(&b);
		assert_int_equal(wire_encode_hashdata(&b, PS,
				(const uint8_t (*)[32])hashes, data, 3,
				i ? zs : NULL), 0);
		assert_int_equal(b.data[1], i ? WIRE_F_ZSTD : 0);
		assert_int_equal(decode_buf(&b, &m), 0);
		assert_int_equal(m.u.hashdata.count, 3);
		assert_int_equal(m.u.hashdata.obj_size, PS);
		assert_memory_equal(m.u.hashdata.hashes, hashes, sizeof(hashes));
		assert_int_equal(wire_hashdata_unpack(&m.u.hashdata, zs,
						      &scratch, &lit), 0);
		assert_memory_equal(lit, data, sizeof(data));
		assert_truncations_fail(&b);
		assert_trailing_fails(&b);
	}
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, WIRE_MAX_BATCH_PAGES + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, 3);
	tsb_put_be32(b.data + WIRE_HDR_LEN, 1000);
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	tsb_buf_fini(&b);
	tsb_buf_fini(&scratch);
}

/* ---- control messages ---- */

static void test_summary(void **state)
{
	struct wire_summary in = { 0 };
	uint8_t f1[20], f2[3];
	struct tsb_buf b;
	struct wire_msg m;

	memset(f1, 0xa5, sizeof(f1));
	memset(f2, 0x5a, sizeof(f2));
	in.store_gen = 42;
	in.n_images = 2;
	in.images[0].p = "img-1";
	in.images[0].len = 5;
	in.images[1].p = "x";
	in.images[1].len = 1;
	in.n_filters = 2;
	in.filters[0].source = WIRE_SRC_STORE;
	in.filters[0].data = f1;
	in.filters[0].len = sizeof(f1);
	in.filters[1].source = WIRE_SRC_DISK;
	in.filters[1].data = f2;
	in.filters[1].len = sizeof(f2);
	tsb_buf_init(&b);
	assert_int_equal(wire_encode_summary(&b, &in), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.type, WIRE_MSG_SUMMARY);
	assert_int_equal(m.u.summary.store_gen, 42);
	assert_int_equal(m.u.summary.n_images, 2);
	assert_memory_equal(m.u.summary.images[0].p, "img-1", 5);
	assert_int_equal(m.u.summary.n_filters, 2);
	assert_int_equal(m.u.summary.filters[1].source, WIRE_SRC_DISK);
	assert_int_equal(m.u.summary.filters[0].len, sizeof(f1));
	assert_memory_equal(m.u.summary.filters[0].data, f1, sizeof(f1));
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);
	/* Only a receiver sends it. */
	assert_false(wire_msg_role_ok(WIRE_MSG_SUMMARY, WIRE_ROLE_SENDER));
	assert_true(wire_msg_role_ok(WIRE_MSG_SUMMARY, WIRE_ROLE_RECEIVER));
	/* Too many images; an empty id; a space in an id. */
	b.data[WIRE_HDR_LEN + 8] = WIRE_MAX_IMAGES + 1;
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	b.data[WIRE_HDR_LEN + 8] = 2;
	b.data[WIRE_HDR_LEN + 9 + 1] = ' ';
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	in.images[1].len = 0;
	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_summary(&b, &in), -EINVAL);
	in.n_images = 0;
	in.n_filters = 0;
	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_summary(&b, &in), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	tsb_buf_fini(&b);
}

static void test_control_messages(void **state)
{
	static const uint8_t types[] = { WIRE_MSG_DONE, WIRE_MSG_CANCEL,
					 WIRE_MSG_ERROR, WIRE_MSG_PREPARED,
					 WIRE_MSG_DECISION, WIRE_MSG_OUTCOME };
	struct wire_progress pr = { 1, 2, 3, 4 };
	char text[WIRE_MAX_TEXT + 10];
	struct tsb_buf b;
	struct wire_msg m;
	size_t i;

	tsb_buf_init(&b);
	for (i = 0; i < TSB_ARRAY_SIZE(types); i++) {
		tsb_buf_reset(&b);
		assert_int_equal(wire_encode_status(&b, types[i], 42,
						    "disk full on héron"), 0);
		assert_int_equal(decode_buf(&b, &m), 0);
		assert_int_equal(m.type, types[i]);
		assert_int_equal(m.u.status.code, 42);
		assert_true(str_is(m.u.status.text, "disk full on héron"));
		assert_truncations_fail(&b);
		assert_trailing_fails(&b);
	}
	/* Control characters refused both ways. */
	assert_int_equal(wire_encode_status(&b, WIRE_MSG_ERROR, 1, "a\nb"),
			 -EINVAL);
	b.data[WIRE_HDR_LEN + 6] = '\n';
	assert_int_equal(decode_buf(&b, &m), -EBADMSG);
	/* Long local text is clipped; a long peer text is refused. */
	memset(text, 'x', sizeof(text) - 1);
	text[sizeof(text) - 1] = '\0';
	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_status(&b, WIRE_MSG_CANCEL, 0, text), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.status.text.len, WIRE_MAX_TEXT);
	tsb_put_be16(b.data + WIRE_HDR_LEN + 4, WIRE_MAX_TEXT + 1);
	assert_int_equal(decode_buf(&b, &m), -EMSGSIZE);
	assert_int_equal(wire_encode_status(&b, WIRE_MSG_PING, 0, NULL),
			 -EINVAL);

	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_status(&b, WIRE_MSG_DONE, 0, NULL), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.u.status.text.len, 0);

	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_progress(&b, &pr), 0);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_true(m.u.progress.stream_bytes == 1 && m.u.progress.pages == 2 &&
		    m.u.progress.wan_bytes == 3 && m.u.progress.remaining == 4);
	assert_truncations_fail(&b);
	assert_trailing_fails(&b);

	tsb_buf_reset(&b);
	assert_int_equal(wire_encode_empty(&b, WIRE_MSG_SWITCHOVER), 0);
	assert_int_equal(b.len, WIRE_HDR_LEN);
	assert_int_equal(decode_buf(&b, &m), 0);
	assert_int_equal(m.type, WIRE_MSG_SWITCHOVER);
	assert_trailing_fails(&b);
	assert_int_equal(wire_encode_empty(&b, WIRE_MSG_DONE), -EINVAL);

	for (i = WIRE_MSG_ACK; i <= WIRE_MSG_PONG; i++) {
		tsb_buf_reset(&b);
		assert_int_equal(wire_encode_u64(&b, (uint8_t)i,
						 0xfedcba9876543210ull), 0);
		assert_int_equal(decode_buf(&b, &m), 0);
		assert_true(m.u.ack == 0xfedcba9876543210ull);
		assert_truncations_fail(&b);
		assert_trailing_fails(&b);
	}
	assert_int_equal(wire_encode_u64(&b, WIRE_MSG_HELLO, 1), -EINVAL);
	tsb_buf_fini(&b);
}

/* ---- resumable decoder ---- */

static void encode_all(struct tsb_buf *b, size_t *ret_count)
{
	struct wire_pages_builder pb;
	uint8_t hash[WIRE_HASH_LEN], delta[PS + 64];
	struct wire_block blk = { 0, { "pc.ram", 6 }, 1 << 20 };
	uint8_t big[20000];
	size_t dl, n = 0;

	memset(big, 'q', sizeof(big));
	encode_test_hello(b);
	n++;
	assert_int_equal(wire_encode_blocks(b, &blk, 1), 0);
	n++;
	assert_int_equal(wire_encode_run(b, WIRE_MSG_STREAM, "abc", 3, NULL), 0);
	n++;
	assert_int_equal(wire_encode_run(b, WIRE_MSG_STREAM, big, sizeof(big),
					 zs), 0);
	n++;
	assert_int_equal(wire_pages_builder_init(&pb, PS), 0);
	build_test_batch(&pb, hash, delta, &dl);
	assert_int_equal(wire_pages_encode(&pb, b, zs), 0);
	n++;
	assert_int_equal(wire_pages_encode(&pb, b, NULL), 0);
	n++;
	wire_pages_builder_fini(&pb);
	assert_int_equal(wire_encode_empty(b, WIRE_MSG_SWITCHOVER), 0);
	n++;
	assert_int_equal(wire_encode_u64(b, WIRE_MSG_ACK, 77), 0);
	n++;
	assert_int_equal(wire_encode_status(b, WIRE_MSG_DONE, 0, "ok"), 0);
	n++;
	*ret_count = n;
}

static void run_decoder(const struct tsb_buf *b, size_t count, size_t chunk)
{
	struct wire_decoder d;
	struct wire_frame f;
	struct wire_msg m;
	size_t pos = 0, used, got = 0, n;
	int r;

	wire_decoder_init(&d);
	while (pos < b->len) {
		n = b->len - pos < chunk ? b->len - pos : chunk;
		r = wire_decoder_feed(&d, b->data + pos, n, &used, &f);
		assert_true(r >= 0);
		assert_true(used <= n);
		pos += used;
		if (r == 1) {
			assert_int_equal(wire_frame_decode(&f, &m), 0);
			got++;
		} else {
			assert_int_equal(used, n);
		}
	}
	assert_int_equal(got, count);
	assert_true(wire_decoder_idle(&d));
	wire_decoder_fini(&d);
}

static void test_decoder_chunks(void **state)
{
	static const size_t chunks[] = { 1, 2, 3, 7, 8, 9, 100, 4096, 1 << 20 };
	struct tsb_buf b;
	size_t count, i;

	tsb_buf_init(&b);
	encode_all(&b, &count);
	for (i = 0; i < TSB_ARRAY_SIZE(chunks); i++)
		run_decoder(&b, count, chunks[i]);
	tsb_buf_fini(&b);
}

static void test_decoder_errors_sticky(void **state)
{
	static const uint8_t bad[] = { 0x7f, 0, 0, 0, 0, 0, 0, 0 };
	uint8_t big[WIRE_HDR_LEN] = { WIRE_MSG_STREAM, 0, 0, 0 };
	struct wire_decoder d;
	struct wire_frame f;
	size_t used;

	wire_decoder_init(&d);
	assert_int_equal(wire_decoder_feed(&d, bad, 4, &used, &f), 0);
	assert_false(wire_decoder_idle(&d));
	assert_int_equal(wire_decoder_feed(&d, bad + 4, 4, &used, &f),
			 -EOPNOTSUPP);
	assert_int_equal(wire_decoder_feed(&d, bad, 8, &used, &f),
			 -EOPNOTSUPP);
	wire_decoder_fini(&d);

	/* A huge length is refused at the header: nothing is allocated. */
	tsb_put_be32(big + 4, 0xffffff00);
	wire_decoder_init(&d);
	assert_int_equal(wire_decoder_feed(&d, big, sizeof(big), &used, &f),
			 -EMSGSIZE);
	wire_decoder_fini(&d);
}

/* ---- SHA-256, zstd helpers ---- */

static void test_sha256(void **state)
{
	static const uint8_t abc[32] = {
		0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40,
		0xde, 0x5d, 0xae, 0x22, 0x23, 0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17,
		0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad,
	};
	uint8_t out[32], page[PS];
	uint64_t t0, t1;
	int i;

	assert_int_equal(wire_sha256("abc", 3, out), 0);
	assert_memory_equal(out, abc, 32);
	memset(page, 0x11, sizeof(page));
	t0 = tsb_now_ns();
	for (i = 0; i < 20000; i++)
		assert_int_equal(wire_sha256(page, PS, out), 0);
	t1 = tsb_now_ns();
	printf("# sha256: %.0f MiB/s on 4 KiB pages\n",
	       20000.0 * PS / (1 << 20) / ((double)(t1 - t0) / 1e9));
}

static void test_zstd_helpers(void **state)
{
	struct tsb_buf b;
	uint8_t out[100];
	size_t got, size;

	tsb_buf_init(&b);
	assert_true(wire_zstd_compress(zs, "hello hello hello", 17, &b) > 0);
	assert_int_equal(wire_zstd_frame_size(b.data, b.len, 100, &size), 0);
	assert_int_equal(size, 17);
	assert_int_equal(wire_zstd_frame_size(b.data, b.len, 16, &size),
			 -EMSGSIZE);
	assert_int_equal(wire_zstd_decompress(zs, b.data, b.len, out,
					      sizeof(out), &got), 0);
	assert_int_equal(got, 17);
	assert_memory_equal(out, "hello hello hello", 17);
	/* Corrupt the frame: detected, not trusted. */
	b.data[b.len - 1] ^= 0xff;
	assert_int_equal(wire_zstd_decompress(zs, b.data, b.len, out,
					      sizeof(out), &got), -EBADMSG);
	assert_int_equal(wire_zstd_frame_size(b.data, b.len - 1, 100, &size),
			 -EBADMSG);
	assert_int_equal(wire_zstd_frame_size("junk", 4, 100, &size), -EBADMSG);
	tsb_buf_fini(&b);
}

/* ---- NEED and HASHDATA (wire/need.h) ---- */

/* A peer scripted as a list of frames; what we send is kept. */
struct script {
	struct tsb_buf in;	/* encoded frames to read */
	size_t off;
	struct tsb_buf sent;
	unsigned kept_refused_after;	/* may_keep refuses the frame after this many */
	unsigned kept;
	const uint8_t (*want)[WIRE_HASH_LEN];
	size_t n_want, answers;
};

static int script_send(void *opaque, const struct tsb_buf *frame)
{
	struct script *sc = opaque;

	return tsb_buf_append(&sc->sent, frame->data, frame->len);
}

static int script_read(void *opaque, struct wire_frame *f)
{
	struct script *sc = opaque;
	int r;

	if (sc->off == sc->in.len)
		return 0;
	r = wire_header_decode(sc->in.data + sc->off, f);
	if (r < 0)
		return r;
	f->payload = sc->in.data + sc->off + WIRE_HDR_LEN;
	sc->off += WIRE_HDR_LEN + f->len;
	return 1;
}

static int script_may_keep(void *opaque, const struct wire_frame *f,
			   const struct wire_backlog *bl)
{
	struct script *sc = opaque;

	(void)f;
	assert_int_equal(bl->frames, sc->kept);
	if (sc->kept == sc->kept_refused_after)
		return -EMSGSIZE;
	sc->kept++;
	return 0;
}

static int script_answer(void *opaque, const struct wire_hashdata *h)
{
	struct script *sc = opaque;

	sc->answers++;
	assert_int_equal(h->count, sc->n_want);
	assert_memory_equal(h->hashes, sc->want, sc->n_want * WIRE_HASH_LEN);
	return 1;
}

static int lookup_pattern(void *opaque, const uint8_t *hash, uint8_t *out)
{
	(void)opaque;
	if (hash[0] == 0xee)
		return -ENOENT;
	memset(out, hash[0], 4096);
	return 0;
}

static void test_need_fetch_and_answer(void **state)
{
	uint8_t hashes[2][WIRE_HASH_LEN] = { { 1 }, { 2 } };
	struct wire_need need = { .count = 2, .hashes = hashes[0] };
	struct wire_backlog bl;
	struct wire_frame f;
	struct wire_msg m;
	struct script sc = { .want = (const uint8_t (*)[WIRE_HASH_LEN])hashes, .n_want = 2,
			     .kept_refused_after = 100 };
	const struct wire_fetch_io io = {
		.opaque = &sc, .send = script_send, .read = script_read,
		.may_keep = script_may_keep, .answer = script_answer,
	};
	struct tsb_buf answer;
	int r;

	(void)state;
	wire_backlog_init(&bl);
	tsb_buf_init(&sc.in);
	tsb_buf_init(&sc.sent);
	tsb_buf_init(&answer);
	/* The answering side: each object by lookup, in order; a miss refuses all. */
	assert_int_equal(wire_need_answer(&need, 4096, lookup_pattern, NULL, NULL, &answer), 0);
	hashes[1][0] = 0xee;
	tsb_buf_reset(&sc.in);
	assert_int_equal(wire_need_answer(&need, 4096, lookup_pattern, NULL, NULL, &sc.in),
			 -ENOENT);
	hashes[1][0] = 2;
	/* The asking side: two frames arrive before the answer, and one after. */
	assert_int_equal(wire_encode_u64(&sc.in, WIRE_MSG_PING, 7), 0);
	assert_int_equal(wire_encode_u64(&sc.in, WIRE_MSG_PING, 8), 0);
	assert_int_equal(tsb_buf_append(&sc.in, answer.data, answer.len), 0);
	assert_int_equal(wire_encode_u64(&sc.in, WIRE_MSG_PING, 9), 0);
	r = wire_fetch(&io, &bl, (const uint8_t (*)[WIRE_HASH_LEN])hashes, 2);
	assert_int_equal(r, 0);
	assert_int_equal(sc.answers, 1);
	/* What went out is one NEED for both. */
	assert_int_equal(wire_header_decode(sc.sent.data, &f), 0);
	f.payload = sc.sent.data + WIRE_HDR_LEN;
	assert_int_equal(wire_frame_decode(&f, &m), 0);
	assert_int_equal(m.type, WIRE_MSG_NEED);
	assert_int_equal(m.u.need.count, 2);
	/* The kept frames come back in order; the one after the answer is still unread. */
	assert_int_equal(bl.frames, 2);
	assert_int_equal(wire_backlog_take(&bl, &f), 1);
	assert_int_equal(wire_frame_decode(&f, &m), 0);
	assert_int_equal(m.u.ping, 7);
	assert_int_equal(wire_backlog_take(&bl, &f), 1);
	assert_int_equal(wire_frame_decode(&f, &m), 0);
	assert_int_equal(m.u.ping, 8);
	assert_int_equal(wire_backlog_take(&bl, &f), 0);
	assert_int_equal(bl.bytes, 0);
	assert_true(sc.off < sc.in.len);

	/* A frame the caller will not keep ends the fetch with its error. */
	sc.off = 0;
	sc.kept = 0;
	sc.kept_refused_after = 1;
	r = wire_fetch(&io, &bl, (const uint8_t (*)[WIRE_HASH_LEN])hashes, 2);
	assert_int_equal(r, -EMSGSIZE);
	/* The peer closes before answering. */
	tsb_buf_reset(&sc.in);
	assert_int_equal(wire_encode_u64(&sc.in, WIRE_MSG_PING, 1), 0);
	sc.off = 0;
	sc.kept = 0;
	sc.kept_refused_after = 100;
	wire_backlog_fini(&bl);
	r = wire_fetch(&io, &bl, (const uint8_t (*)[WIRE_HASH_LEN])hashes, 2);
	assert_int_equal(r, -ECONNRESET);
	wire_backlog_fini(&bl);
	tsb_buf_fini(&sc.in);
	tsb_buf_fini(&sc.sent);
	tsb_buf_fini(&answer);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_buf),
		cmocka_unit_test(test_need_fetch_and_answer),
		cmocka_unit_test(test_header),
		cmocka_unit_test(test_roles),
		cmocka_unit_test(test_hello_round_trip),
		cmocka_unit_test(test_hello_refusals),
		cmocka_unit_test(test_hello_filter_cap),
		cmocka_unit_test(test_blocks_round_trip),
		cmocka_unit_test(test_runs),
		cmocka_unit_test(test_zstd_bomb),
		cmocka_unit_test(test_pages_round_trip),
		cmocka_unit_test(test_pages_refusals),
		cmocka_unit_test(test_samerun_and_base),
		cmocka_unit_test(test_live_entry),
		cmocka_unit_test(test_pages_builder_caps),
		cmocka_unit_test(test_need_hashdata),
		cmocka_unit_test(test_summary),
		cmocka_unit_test(test_control_messages),
		cmocka_unit_test(test_decoder_chunks),
		cmocka_unit_test(test_decoder_errors_sticky),
		cmocka_unit_test(test_sha256),
		cmocka_unit_test(test_zstd_helpers),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
