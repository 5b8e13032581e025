/*
 * qstream: parser, writer and return-path parser on real QEMU 7.2 captures
 * (tests/unit/data/, see capture-stream.py there) and on hand-built streams.
 * The last test loads rewritten captures into a real destination QEMU when
 * qemu-system-x86_64 is installed (skipped otherwise, or when
 * TSB_TEST_NO_QEMU is set).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <zstd.h>

#include "common/reader.h"
#include "qstream/qstream.h"

extern char **environ;

#define UUID "6e0b6a1c-6a3e-4f0e-9d7e-3b1f2a4c5d6e"
#define GUEST_RAM 16785408u /* -m 16388K, the size of every capture */

/* ---- small helpers ---------------------------------------------------- */

struct buf {
	uint8_t *p;
	size_t len;
	size_t cap;
};

static void buf_put(struct buf *b, const void *p, size_t n)
{
	if (b->cap - b->len < n) {
		size_t cap = b->cap ? b->cap : 256;

		while (cap - b->len < n)
			cap *= 2;
		b->p = realloc(b->p, cap);
		assert_non_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void put_u8(struct buf *b, uint8_t v)
{
	buf_put(b, &v, 1);
}

static void put_be16(struct buf *b, uint16_t v)
{
	uint8_t x[2];

	tsb_put_be16(x, v);
	buf_put(b, x, 2);
}

static void put_be32(struct buf *b, uint32_t v)
{
	uint8_t x[4];

	tsb_put_be32(x, v);
	buf_put(b, x, 4);
}

static void put_be64(struct buf *b, uint64_t v)
{
	uint8_t x[8];

	tsb_put_be64(x, v);
	buf_put(b, x, 8);
}

static void put_idstr(struct buf *b, const char *s)
{
	put_u8(b, strlen(s));
	buf_put(b, s, strlen(s));
}

static void buf_free(struct buf *b)
{
	free(b->p);
	*b = (struct buf){ 0 };
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Reads tests/unit/data/<name>, decompressing .zst files. */
static uint8_t *load_capture(const char *name, size_t *ret_len)
{
	char path[512];
	uint8_t *raw, *out;
	struct stat st;
	unsigned long long n;
	size_t r;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", QS_TEST_DATA_DIR, name);
	f = fopen(path, "rb");
	if (!f)
		fail_msg("cannot open %s", path);
	assert_int_equal(fstat(fileno(f), &st), 0);
	raw = malloc(st.st_size + 1);
	assert_non_null(raw);
	assert_int_equal(fread(raw, 1, st.st_size, f), (size_t)st.st_size);
	fclose(f);
	if (strlen(name) < 4 || strcmp(name + strlen(name) - 4, ".zst")) {
		*ret_len = st.st_size;
		return raw;
	}
	n = ZSTD_getFrameContentSize(raw, st.st_size);
	assert_true(n != ZSTD_CONTENTSIZE_ERROR && n != ZSTD_CONTENTSIZE_UNKNOWN);
	out = malloc(n + 1);
	assert_non_null(out);
	r = ZSTD_decompress(out, n, raw, st.st_size);
	assert_false(ZSTD_isError(r));
	assert_int_equal(r, n);
	free(raw);
	*ret_len = n;
	return out;
}

/* ---- a recorder: writer + transcript of pages and events -------------- */

struct rec {
	struct qs_writer *w;
	struct buf log;		/* canonical transcript */
	bool force_idstr;	/* re-write pages without CONTINUE */
	uint8_t *ram;		/* if set: content of block 0 (pc.ram) */
	size_t ram_len;
	int ram_err;
	int fail_page_at;	/* page handler fails on this page (1-based) */
	unsigned long pages[3];
	unsigned long cont;
	unsigned long commands[16];
	unsigned long in_package[16];
	unsigned long sections[4];
	unsigned long events[8];
	unsigned long raw_calls;
	unsigned n_blocks;
	char blocks[16][QS_IDSTR_MAX + 1];
	uint64_t block_mr_addr[16];
	uint64_t block_page_size[16];
	bool ignore_shared;
	bool has_uuid;
	char machine[64];
	char device_idstr[64];
	uint64_t device_off;
	uint32_t packaged_len;
	uint32_t last_ping;
};

static int rec_raw(void *opaque, const uint8_t *p, size_t n)
{
	struct rec *r = opaque;

	assert_true(n > 0);
	r->raw_calls++;
	return qs_writer_raw(r->w, p, n);
}

/* XBZRLE decoding (migration/xbzrle.c): (uleb128 zero run, uleb128 data
 * run, data)*, applied on top of the previous page content. */
static unsigned uleb128_small(const uint8_t *p, size_t avail, unsigned *ret)
{
	if (avail >= 1 && !(p[0] & 0x80)) {
		*ret = p[0];
		return 1;
	}
	if (avail < 2)
		return 0;
	*ret = (p[0] & 0x7f) | (unsigned)p[1] << 7;
	return 2;
}

static int xbzrle_apply(const uint8_t *src, size_t slen, uint8_t *dst,
			size_t dlen)
{
	size_t i = 0, d = 0;
	unsigned count, k;

	while (i < slen) {
		k = uleb128_small(src + i, slen - i, &count);
		if (!k || d + count > dlen)
			return -1;
		i += k;
		d += count;
		k = uleb128_small(src + i, slen - i, &count);
		if (!k || d + count > dlen || i + k + count > slen)
			return -1;
		i += k;
		memcpy(dst + d, src + i, count);
		d += count;
		i += count;
	}
	return 0;
}

static void rec_apply_ram(struct rec *r, const struct qs_page *pg)
{
	uint8_t *page;

	if (pg->block->index != 0 || pg->offset + 4096 > r->ram_len) {
		r->ram_err = pg->block->index != 0 ? r->ram_err : -ERANGE;
		return;
	}
	page = r->ram + pg->offset;
	switch (pg->kind) {
	case QS_PAGE_ZERO:
		memset(page, pg->fill, 4096);
		break;
	case QS_PAGE_NORMAL:
		memcpy(page, pg->data, 4096);
		break;
	case QS_PAGE_XBZRLE:
		if (xbzrle_apply(pg->data, pg->len, page, 4096))
			r->ram_err = -EBADMSG;
		break;
	}
}

/* POSTCOPY_RAM_DISCARD: u8 0, idstr, u8 0, (be64 start, be64 len)* */
static void rec_apply_discard(struct rec *r, const uint8_t *d, size_t len)
{
	size_t i = 3 + d[1];

	if (d[1] != 6 || memcmp(d + 2, "pc.ram", 6))
		return;
	for (; i + 16 <= len; i += 16) {
		uint64_t start = tsb_load_be64(d + i), n = tsb_load_be64(d + i + 8);

		if (start > r->ram_len || n > r->ram_len - start) {
			r->ram_err = -ERANGE;
			return;
		}
		memset(r->ram + start, 0, n);
	}
}

static int rec_page(void *opaque, const struct qs_page *pg)
{
	struct rec *r = opaque;
	struct qs_page copy = *pg;
	uint64_t x[6];

	/* Everything before the record was passed on already. */
	if (!r->force_idstr)
		assert_true(qs_writer_offset(r->w) == pg->stream_offset);
	if (r->fail_page_at &&
	    r->pages[0] + r->pages[1] + r->pages[2] + 1 == (unsigned)r->fail_page_at)
		return -EPIPE;
	r->pages[pg->kind]++;
	r->cont += pg->cont;
	x[0] = 'P';
	x[1] = pg->stream_offset;
	x[2] = pg->block->index | (uint64_t)pg->kind << 32 |
	       (uint64_t)pg->cont << 40 | (uint64_t)pg->fill << 48;
	x[3] = pg->offset;
	x[4] = pg->len;
	x[5] = pg->len ? pg->data[0] | (uint64_t)pg->data[pg->len - 1] << 8 : 0;
	buf_put(&r->log, x, sizeof(x));
	if (r->force_idstr)
		copy.cont = false;
	if (r->ram)
		rec_apply_ram(r, pg);
	return qs_writer_page(r->w, &copy);
}

static int rec_event(void *opaque, const struct qs_event *ev)
{
	struct rec *r = opaque;
	uint64_t x[5] = { 'E', ev->type, ev->stream_offset,
			  qs_writer_offset(r->w), 0 };
	unsigned i;

	r->events[ev->type]++;
	switch (ev->type) {
	case QS_EV_CONFIG:
		r->ignore_shared = ev->config.ignore_shared;
		r->has_uuid = ev->config.has_uuid;
		snprintf(r->machine, sizeof(r->machine), "%s", ev->config.machine);
		x[4] = ev->config.page_size;
		break;
	case QS_EV_COMMAND:
		assert_true(ev->command.cmd < 16);
		if (ev->command.in_package)
			r->in_package[ev->command.cmd]++;
		else
			r->commands[ev->command.cmd]++;
		if (ev->command.cmd == QS_CMD_PACKAGED)
			r->packaged_len = ev->command.packaged_len;
		if (ev->command.cmd == QS_CMD_PING)
			r->last_ping = tsb_load_be32(ev->command.data);
		if (ev->command.cmd == QS_CMD_POSTCOPY_RAM_DISCARD && r->ram)
			rec_apply_discard(r, ev->command.data, ev->command.len);
		x[4] = ev->command.cmd | (uint64_t)ev->command.len << 16 |
		       (uint64_t)ev->command.in_package << 32;
		break;
	case QS_EV_RAM_SETUP:
		r->n_blocks = ev->ram_setup.n_blocks;
		for (i = 0; i < ev->ram_setup.n_blocks && i < 16; i++) {
			const struct qs_block *b = &ev->ram_setup.blocks[i];

			assert_int_equal(b->index, i);
			snprintf(r->blocks[i], sizeof(r->blocks[i]), "%s", b->name);
			r->block_mr_addr[i] = b->has_mr_addr ? b->mr_addr : ~0ull;
			r->block_page_size[i] = b->page_size;
		}
		assert_int_equal(ev->ram_setup.page_size, 4096);
		x[4] = ev->ram_setup.total;
		break;
	case QS_EV_SECTION_BEGIN:
		r->sections[ev->section.type]++;
		x[4] = ev->section.type | (uint64_t)ev->section.section_id << 8;
		break;
	case QS_EV_SECTION_END:
		x[4] = ev->section.type | (uint64_t)ev->section.section_id << 8;
		break;
	case QS_EV_DEVICE_STATE:
		/* Announced before the first byte of device state. */
		if (!r->force_idstr)
			assert_true(qs_writer_offset(r->w) == ev->stream_offset);
		snprintf(r->device_idstr, sizeof(r->device_idstr), "%s",
			 ev->device.idstr);
		r->device_off = qs_writer_offset(r->w);
		break;
	default:
		break;
	}
	buf_put(&r->log, x, sizeof(x));
	return 0;
}

static const struct qs_handlers rec_handlers = {
	.raw = rec_raw,
	.page = rec_page,
	.event = rec_event,
};

static void rec_init(struct rec *r)
{
	*r = (struct rec){ 0 };
	r->w = qs_writer_new(4096, NULL, NULL);
	assert_non_null(r->w);
}

static void rec_fini(struct rec *r)
{
	qs_writer_free(r->w);
	buf_free(&r->log);
}

/* Chunking: 0 = all at once, > 0 fixed size, < 0 random with that seed. */
static int feed_chunked(struct qs_parser *p, const uint8_t *d, size_t len,
			long chunk)
{
	uint64_t seed = chunk < 0 ? (uint64_t)-chunk * 0x9e3779b97f4a7c15ull : 0;
	size_t off = 0, n;
	int r = 0;

	while (off < len && !r) {
		if (chunk == 0) {
			n = len;
		} else if (chunk > 0) {
			n = chunk;
		} else {
			uint64_t x = rng_next(&seed);

			/* Mostly small pieces, sometimes large ones. */
			n = x % 8 ? 1 + (x >> 8) % 300 : 1 + (x >> 8) % 70000;
		}
		if (n > len - off)
			n = len - off;
		r = qs_parser_feed(p, d + off, n);
		off += n;
	}
	return r;
}

/* Parses d (chunked) into r; returns feed's result, finish's in *fin. */
static int parse_into(struct rec *r, const uint8_t *d, size_t len, long chunk,
		      int *fin, char *err, size_t err_len)
{
	struct qs_parser *p = qs_parser_new(&rec_handlers, r);
	int ret;

	assert_non_null(p);
	ret = feed_chunked(p, d, len, chunk);
	if (fin)
		*fin = ret ? ret : qs_parser_finish(p);
	if (err)
		snprintf(err, err_len, "%s", qs_parser_error(p));
	qs_parser_free(p);
	return ret;
}

static const uint8_t *rec_output(struct rec *r, size_t *len)
{
	return qs_writer_buffer(r->w, len);
}

/* ---- captures --------------------------------------------------------- */

struct capture {
	const char *file;
	unsigned long zero, page, xbzrle;
	unsigned long parts;
	const char *device_idstr;	/* NULL: no device-state mode */
	bool ignore_shared, has_uuid, postcopy;
};

/* Counts checked against query-migrate's duplicate/normal/xbzrle pages
 * and the section structure seen at capture time. */
static const struct capture captures[] = {
	{ "qemu72-precopy.bin.zst", 4179, 49, 0, 1, "timer", false, false, false },
	{ "qemu72-ignore-shared.bin.zst", 4179, 49, 0, 1, "timer", true, true, false },
	{ "qemu72-xbzrle.bin.zst", 4159, 37, 32, 5, "timer", false, false, false },
	{ "qemu72-postcopy.bin.zst", 4159, 111, 0, 16, NULL, false, false, true },
};

static void check_capture(const struct capture *c)
{
	static const long chunks[] = { 1, 7, 4096, -1, -2, -3 };
	struct rec whole, other;
	const uint8_t *out;
	size_t len, out_len;
	uint8_t *d = load_capture(c->file, &len);
	char err[400];
	unsigned i;
	int fin;

	rec_init(&whole);
	assert_int_equal(parse_into(&whole, d, len, 0, &fin, err, sizeof(err)), 0);
	if (fin)
		fail_msg("%s: finish %d: %s", c->file, fin, err);
	assert_int_equal(whole.pages[QS_PAGE_ZERO], c->zero);
	assert_int_equal(whole.pages[QS_PAGE_NORMAL], c->page);
	assert_int_equal(whole.pages[QS_PAGE_XBZRLE], c->xbzrle);
	assert_int_equal(whole.sections[QS_SEC_START], 1);
	assert_int_equal(whole.sections[QS_SEC_PART], c->parts);
	assert_int_equal(whole.sections[QS_SEC_END], 1);
	assert_int_equal(whole.events[QS_EV_CONFIG], 1);
	assert_int_equal(whole.events[QS_EV_RAM_SETUP], 1);
	assert_string_equal(whole.machine, "pc-i440fx-7.2");
	assert_int_equal(whole.n_blocks, 6);
	assert_string_equal(whole.blocks[0], "pc.ram");
	assert_int_equal(whole.ignore_shared, c->ignore_shared);
	assert_int_equal(whole.has_uuid, c->has_uuid);
	for (i = 0; i < whole.n_blocks; i++) {
		assert_true(whole.block_page_size[i] == 0);
		if (!c->ignore_shared)
			assert_true(whole.block_mr_addr[i] == ~0ull);
		else if (!strcmp(whole.blocks[i], "pc.bios"))
			assert_true(whole.block_mr_addr[i] == 0xfffc0000ull);
	}
	if (c->device_idstr) {
		assert_int_equal(whole.events[QS_EV_DEVICE_STATE], 1);
		assert_string_equal(whole.device_idstr, c->device_idstr);
		assert_int_equal(whole.events[QS_EV_EOF], 0);
	} else {
		assert_int_equal(whole.events[QS_EV_DEVICE_STATE], 0);
		assert_int_equal(whole.events[QS_EV_EOF], 1);
	}
	if (c->postcopy) {
		assert_int_equal(whole.commands[QS_CMD_OPEN_RETURN_PATH], 1);
		assert_int_equal(whole.commands[QS_CMD_POSTCOPY_ADVISE], 1);
		assert_int_equal(whole.commands[QS_CMD_POSTCOPY_RAM_DISCARD], 1);
		assert_int_equal(whole.commands[QS_CMD_PING], 3);
		assert_int_equal(whole.commands[QS_CMD_PACKAGED], 1);
		assert_int_equal(whole.in_package[QS_CMD_POSTCOPY_LISTEN], 1);
		assert_int_equal(whole.in_package[QS_CMD_POSTCOPY_RUN], 1);
		assert_int_equal(whole.events[QS_EV_PACKAGED_END], 1);
		assert_int_equal(whole.packaged_len, 12876);
		assert_int_equal(whole.last_ping, 4);
	}

	/* Round trip: byte-identical. */
	out = rec_output(&whole, &out_len);
	assert_int_equal(out_len, len);
	assert_memory_equal(out, d, len);

	/* Any chunking: the same transcript and output. */
	for (i = 0; i < sizeof(chunks) / sizeof(chunks[0]); i++) {
		rec_init(&other);
		assert_int_equal(parse_into(&other, d, len, chunks[i], &fin,
					    NULL, 0), 0);
		assert_int_equal(fin, 0);
		assert_int_equal(other.log.len, whole.log.len);
		assert_memory_equal(other.log.p, whole.log.p, whole.log.len);
		out = rec_output(&other, &out_len);
		assert_int_equal(out_len, len);
		assert_memory_equal(out, d, len);
		rec_fini(&other);
	}

	/* Without CONTINUE: a different stream with the same records. */
	rec_init(&other);
	other.force_idstr = true;
	assert_int_equal(parse_into(&other, d, len, 0, &fin, NULL, 0), 0);
	out = rec_output(&other, &out_len);
	assert_true(out_len > len);
	{
		struct rec again;

		rec_init(&again);
		assert_int_equal(parse_into(&again, out, out_len, 4096, &fin,
					    NULL, 0), 0);
		assert_int_equal(fin, 0);
		assert_int_equal(again.cont, 0);
		assert_int_equal(again.pages[0], whole.pages[0]);
		assert_int_equal(again.pages[1], whole.pages[1]);
		assert_int_equal(again.pages[2], whole.pages[2]);
		rec_fini(&again);
	}
	rec_fini(&other);
	rec_fini(&whole);
	free(d);
}

static void test_capture_precopy(void **state)
{
	check_capture(&captures[0]);
}

static void test_capture_ignore_shared(void **state)
{
	check_capture(&captures[1]);
}

static void test_capture_xbzrle(void **state)
{
	check_capture(&captures[2]);
}

static void test_capture_postcopy(void **state)
{
	check_capture(&captures[3]);
}

/*
 * Truncated captures never parse as complete, except where the destination
 * would also accept the end: right after EOF (vmdesc missing) or at the
 * real end. Every byte of the first 4 KiB, then every 997th.
 */
static void check_truncation(const char *file)
{
	size_t len, n, eof_at = 0;
	uint8_t *d = load_capture(file, &len);
	struct qs_parser *p;
	int fin;

	/* Precopy: the vmdesc is 0x06 be32 L {json} at the very end. */
	for (n = 0; n + 5 < len; n++) {
		if (d[n] == 0x00 && d[n + 1] == 0x06 &&
		    n + 6 + tsb_load_be32(d + n + 2) == len) {
			eof_at = n + 1;
			break;
		}
	}
	for (n = 0; n < len; n += n < 4096 ? 1 : 997) {
		p = qs_parser_new(NULL, NULL);
		assert_non_null(p);
		assert_int_equal(qs_parser_feed(p, d, n), 0);
		fin = qs_parser_finish(p);
		if (fin == 0 && n != eof_at)
			fail_msg("%s truncated to %zu bytes parsed as complete",
				 file, n);
		if (fin) {
			assert_int_equal(fin, -ENODATA);
			assert_non_null(strstr(qs_parser_error(p), "offset"));
		}
		qs_parser_free(p);
	}
	free(d);
}

static void test_truncated_captures(void **state)
{
	check_truncation("qemu72-precopy.bin.zst");
	check_truncation("qemu72-postcopy.bin.zst");
}

/* ---- hand-built streams ----------------------------------------------- */

static void put_header(struct buf *b, const char *const *caps, bool uuid)
{
	unsigned n = 0;

	put_be32(b, 0x5145564d);
	put_be32(b, 3);
	put_u8(b, 0x07);
	put_be32(b, 13);
	buf_put(b, "pc-i440fx-7.2", 13);
	while (caps && caps[n])
		n++;
	if (n) {
		put_u8(b, 0x05);
		put_idstr(b, "configuration/capabilities");
		put_be32(b, 1);
		put_be32(b, n);
		for (n = 0; caps[n]; n++)
			put_idstr(b, caps[n]);
	}
	if (uuid) {
		put_u8(b, 0x05);
		put_idstr(b, "configuration/uuid");
		put_be32(b, 1);
		buf_put(b, "0123456789abcdef", 16);
	}
}

/* START ram (id 2): blocks "pc.ram" (64 KiB) and "pc.bios" (8 KiB). */
static void put_ram_start(struct buf *b)
{
	put_u8(b, 0x01);
	put_be32(b, 2);
	put_idstr(b, "ram");
	put_be32(b, 0);
	put_be32(b, 4);
	put_be64(b, (0x10000 + 0x2000) | 0x004);
	put_idstr(b, "pc.ram");
	put_be64(b, 0x10000);
	put_idstr(b, "pc.bios");
	put_be64(b, 0x2000);
	put_be64(b, 0x010);
	put_u8(b, 0x7e);
	put_be32(b, 2);
}

static void put_record(struct buf *b, uint64_t off, uint32_t flags,
		       const char *block)
{
	put_be64(b, off | flags);
	if (!(flags & 0x020))
		put_idstr(b, block);
}

static void put_page(struct buf *b, uint64_t off, bool cont, const char *block,
		     uint8_t fill)
{
	uint8_t page[4096];

	memset(page, fill, sizeof(page));
	put_record(b, off, 0x008 | (cont ? 0x020 : 0), block);
	buf_put(b, page, sizeof(page));
}

static void put_eos_footer(struct buf *b)
{
	put_be64(b, 0x010);
	put_u8(b, 0x7e);
	put_be32(b, 2);
}

#define SMALL_VMDESC "{\"page_size\":4096}"

/* A complete small precopy stream: every construct the parser knows. */
static void build_small_stream(struct buf *b)
{
	put_be32(b, 0x5145564d);
	put_be32(b, 3);
	put_u8(b, 0x07);
	put_be32(b, 13);
	buf_put(b, "pc-i440fx-7.2", 13);
	put_u8(b, 0x05);
	put_idstr(b, "configuration/capabilities");
	put_be32(b, 1);
	put_be32(b, 1);
	put_idstr(b, "x-ignore-shared");
	/* OPEN_RETURN_PATH, PING 1 */
	put_u8(b, 0x08);
	put_be16(b, 1);
	put_be16(b, 0);
	put_u8(b, 0x08);
	put_be16(b, 2);
	put_be16(b, 4);
	put_be32(b, 1);
	/* START with x-ignore-shared GPAs */
	put_u8(b, 0x01);
	put_be32(b, 2);
	put_idstr(b, "ram");
	put_be32(b, 0);
	put_be32(b, 4);
	put_be64(b, 0x3000 | 0x004);
	put_idstr(b, "pc.ram");
	put_be64(b, 0x2000);
	put_be64(b, 0);
	put_idstr(b, "pc.bios");
	put_be64(b, 0x1000);
	put_be64(b, 0xfffff000);
	put_eos_footer(b);
	/* PART: zero, page, continue zero, xbzrle */
	put_u8(b, 0x02);
	put_be32(b, 2);
	put_record(b, 0x0000, 0x002, "pc.ram");
	put_u8(b, 0);
	put_page(b, 0x1000, true, NULL, 0xab);
	put_record(b, 0x0000, 0x002, "pc.bios");
	put_u8(b, 0);
	put_record(b, 0x0000, 0x040 | 0x020, NULL);
	put_u8(b, 1);
	put_be16(b, 3);
	buf_put(b, "\x01\x02\x03", 3);
	put_eos_footer(b);
	/* END (just EOS), device state, EOF, vmdesc */
	put_u8(b, 0x03);
	put_be32(b, 2);
	put_eos_footer(b);
	put_u8(b, 0x04);
	put_be32(b, 0);
	put_idstr(b, "timer");
	put_be32(b, 0);
	put_be32(b, 2);
	buf_put(b, "\x00\x00\x00\x00\x00\x00\x00\x07", 8);
	put_u8(b, 0x7e);
	put_be32(b, 0);
	put_u8(b, 0x00);
	put_u8(b, 0x06);
	put_be32(b, strlen(SMALL_VMDESC));
	buf_put(b, SMALL_VMDESC, strlen(SMALL_VMDESC));
}

static void test_small_stream_round_trip(void **state)
{
	struct buf b = { 0 };
	struct rec r, o;
	const uint8_t *out;
	size_t out_len;
	int fin;

	build_small_stream(&b);
	rec_init(&r);
	assert_int_equal(parse_into(&r, b.p, b.len, 0, &fin, NULL, 0), 0);
	assert_int_equal(fin, 0);
	assert_int_equal(r.pages[QS_PAGE_ZERO], 2);
	assert_int_equal(r.pages[QS_PAGE_NORMAL], 1);
	assert_int_equal(r.pages[QS_PAGE_XBZRLE], 1);
	assert_true(r.block_mr_addr[1] == 0xfffff000);
	assert_int_equal(r.commands[QS_CMD_PING], 1);
	assert_int_equal(r.last_ping, 1);
	out = rec_output(&r, &out_len);
	assert_int_equal(out_len, b.len);
	assert_memory_equal(out, b.p, b.len);
	for (long c = 1; c < 20; c++) {
		rec_init(&o);
		assert_int_equal(parse_into(&o, b.p, b.len, c == 19 ? -7 : c,
					    &fin, NULL, 0), 0);
		assert_int_equal(fin, 0);
		assert_int_equal(o.log.len, r.log.len);
		assert_memory_equal(o.log.p, r.log.p, r.log.len);
		rec_fini(&o);
	}
	rec_fini(&r);
	buf_free(&b);
}

/* Truncation at every byte of the small stream (fed in two pieces). */
static void test_small_stream_truncation(void **state)
{
	struct buf b = { 0 };
	size_t n, eof_at;
	int fin;

	build_small_stream(&b);
	eof_at = b.len - 5 - strlen(SMALL_VMDESC);
	for (n = 0; n <= b.len; n++) {
		struct rec r;

		rec_init(&r);
		assert_int_equal(parse_into(&r, b.p, n, n > 3 ? (long)n / 3 : 0,
					    &fin, NULL, 0), 0);
		if (n == b.len || n == eof_at)
			assert_int_equal(fin, 0);
		else
			assert_int_equal(fin, -ENODATA);
		rec_fini(&r);
	}
	buf_free(&b);
}

/* Expects stream d to fail with err and a message containing what. */
static void expect_error(const struct buf *b, int err, const char *what)
{
	struct rec r;
	char msg[400];
	int fin;

	for (long chunk = 0; chunk <= 1; chunk++) {
		rec_init(&r);
		parse_into(&r, b->p, b->len, chunk, &fin, msg, sizeof(msg));
		if (fin != err || !strstr(msg, what))
			fail_msg("expected %d \"%s\", got %d \"%s\"", err, what,
				 fin, msg);
		rec_fini(&r);
	}
}

static void test_bad_header(void **state)
{
	struct buf b = { 0 };

	buf_put(&b, "QEVN\0\0\0\3", 8);
	expect_error(&b, -EBADMSG, "not a QEMU migration stream");
	b.len = 0;
	put_be32(&b, 0x5145564d);
	put_be32(&b, 2);
	expect_error(&b, -EOPNOTSUPP, "version 2 (obsolete");
	b.len = 0;
	put_be32(&b, 0x5145564d);
	put_be32(&b, 4);
	expect_error(&b, -EOPNOTSUPP, "version 4");
	b.len = 0;
	put_be32(&b, 0x5145564d);
	put_be32(&b, 3);
	put_u8(&b, 0x07);
	put_be32(&b, 100000);
	expect_error(&b, -EMSGSIZE, "machine name");
	buf_free(&b);
}

static void test_bad_configuration(void **state)
{
	static const char *const mapped[] = { "mapped-ram", NULL };
	struct buf b = { 0 };

	put_header(&b, mapped, false);
	expect_error(&b, -EOPNOTSUPP, "capability \"mapped-ram\"");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x05);
	put_idstr(&b, "configuration/whatever");
	put_be32(&b, 1);
	expect_error(&b, -EOPNOTSUPP, "subsection \"configuration/whatever\"");
	buf_free(&b);
}

static void test_commands(void **state)
{
	struct buf b = { 0 };

	put_header(&b, NULL, false);
	put_u8(&b, 0x08);
	put_be16(&b, 12);
	put_be16(&b, 0);
	expect_error(&b, -EOPNOTSUPP, "unknown command 12 at stream offset 26");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x08);
	put_be16(&b, 8);
	put_be16(&b, 0);
	expect_error(&b, -EOPNOTSUPP, "ENABLE_COLO");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x08);
	put_be16(&b, 2);
	put_be16(&b, 3);
	expect_error(&b, -EBADMSG, "PING with length 3");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x08);
	put_be16(&b, 7);
	put_be16(&b, 4);
	put_be32(&b, QS_PACKAGED_MAX + 1);
	expect_error(&b, -EMSGSIZE, "PACKAGED blob of");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x08);
	put_be16(&b, 6);
	put_be16(&b, 10);
	buf_put(&b, "\0\6pc.ram\0\1", 10);
	expect_error(&b, -EBADMSG, "malformed POSTCOPY_RAM_DISCARD");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x09);
	expect_error(&b, -EOPNOTSUPP, "unknown top-level element type 0x09");
	buf_free(&b);
}

/* A PACKAGED blob streams through raw without being parsed. */
static void test_packaged(void **state)
{
	struct buf b = { 0 }, blob = { 0 };
	const uint8_t *out;
	size_t out_len;
	struct rec r;
	int fin;

	put_u8(&blob, 0x08);
	put_be16(&blob, 4);
	put_be16(&blob, 0);
	for (int i = 0; i < 3000; i++)
		put_u8(&blob, 0xff); /* opaque: would be malformed if parsed */
	put_u8(&blob, 0x08);
	put_be16(&blob, 5);
	put_be16(&blob, 0);
	put_header(&b, NULL, false);
	put_ram_start(&b);
	put_u8(&b, 0x08);
	put_be16(&b, 7);
	put_be16(&b, 4);
	put_be32(&b, blob.len);
	buf_put(&b, blob.p, blob.len);
	put_u8(&b, 0x08); /* empty package */
	put_be16(&b, 7);
	put_be16(&b, 4);
	put_be32(&b, 0);
	put_u8(&b, 0x03);
	put_be32(&b, 2);
	put_eos_footer(&b);
	put_u8(&b, 0x00);
	for (long chunk = 0; chunk < 3; chunk++) {
		rec_init(&r);
		assert_int_equal(parse_into(&r, b.p, b.len, chunk ? chunk * 5 : 0,
					    &fin, NULL, 0), 0);
		assert_int_equal(fin, 0);
		assert_int_equal(r.commands[QS_CMD_PACKAGED], 2);
		assert_int_equal(r.in_package[QS_CMD_POSTCOPY_LISTEN], 1);
		assert_int_equal(r.in_package[QS_CMD_POSTCOPY_RUN], 1);
		assert_int_equal(r.events[QS_EV_PACKAGED_END], 2);
		assert_int_equal(r.events[QS_EV_EOF], 1);
		out = rec_output(&r, &out_len);
		assert_int_equal(out_len, b.len);
		assert_memory_equal(out, b.p, b.len);
		rec_fini(&r);
	}
	buf_free(&blob);
	buf_free(&b);
}

static void test_sections(void **state)
{
	struct buf b = { 0 };

	put_header(&b, NULL, false);
	put_u8(&b, 0x01);
	put_be32(&b, 7);
	put_idstr(&b, "dirty-bitmap");
	put_be32(&b, 0);
	put_be32(&b, 1);
	expect_error(&b, -EOPNOTSUPP, "iterable section \"dirty-bitmap\"");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x01);
	put_be32(&b, 2);
	put_idstr(&b, "ram");
	put_be32(&b, 0);
	put_be32(&b, 5);
	expect_error(&b, -EOPNOTSUPP, "\"ram\" section version 5");
	b.len = 0;
	put_header(&b, NULL, false);
	put_ram_start(&b);
	put_u8(&b, 0x04);
	put_be32(&b, 9);
	put_idstr(&b, "virtio-mem-device-early");
	put_be32(&b, 0);
	put_be32(&b, 1);
	expect_error(&b, -EOPNOTSUPP,
		     "FULL section \"virtio-mem-device-early\" (id 9) before the end of RAM");
	b.len = 0;
	put_header(&b, NULL, false);
	put_ram_start(&b);
	put_u8(&b, 0x02);
	put_be32(&b, 3);
	expect_error(&b, -EBADMSG, "unknown section id 3");
	b.len = 0;
	put_header(&b, NULL, false);
	put_ram_start(&b);
	put_u8(&b, 0x02);
	put_be32(&b, 2);
	put_be64(&b, 0x010);
	put_u8(&b, 0x7e);
	put_be32(&b, 3);
	expect_error(&b, -EBADMSG, "footer for id 3");
	b.len = 0;
	put_header(&b, NULL, false);
	put_ram_start(&b);
	put_u8(&b, 0x02);
	put_be32(&b, 2);
	put_be64(&b, 0x010);
	put_u8(&b, 0x02);
	expect_error(&b, -EOPNOTSUPP, "missing section footer");
	buf_free(&b);
}

/* A PART of ram with the given records appended by the caller. */
static void start_part(struct buf *b)
{
	b->len = 0;
	put_header(b, NULL, false);
	put_ram_start(b);
	put_u8(b, 0x02);
	put_be32(b, 2);
}

static void test_ram_records(void **state)
{
	struct buf b = { 0 };
	char what[100];
	size_t off;

	start_part(&b);
	off = b.len;
	put_record(&b, 0x1000, 0x100, "pc.ram");
	snprintf(what, sizeof(what),
		 "unsupported RAM flag 0x100 (COMPRESS_PAGE) at stream offset %zu",
		 off);
	expect_error(&b, -EOPNOTSUPP, what);
	start_part(&b);
	put_record(&b, 0x1000, 0x200, "pc.ram");
	expect_error(&b, -EOPNOTSUPP, "0x200 (MULTIFD_FLUSH)");
	start_part(&b);
	put_record(&b, 0x1000, 0x080, "pc.ram");
	expect_error(&b, -EOPNOTSUPP, "0x80 (HOOK)");
	start_part(&b);
	put_record(&b, 0x1000, 0x400, "pc.ram");
	expect_error(&b, -EOPNOTSUPP, "0x400 (unknown)");
	start_part(&b);
	put_record(&b, 0x1000, 0x001, "pc.ram");
	expect_error(&b, -EOPNOTSUPP, "0x1 (FULL)");
	start_part(&b);
	put_record(&b, 0x1000, 0x002 | 0x008, "pc.ram");
	expect_error(&b, -EBADMSG, "invalid RAM flag combination 0xa");
	start_part(&b);
	put_record(&b, 0x1000, 0x002 | 0x020, NULL);
	put_u8(&b, 0);
	expect_error(&b, -EBADMSG, "CONTINUE record without a previous block");
	start_part(&b);
	put_record(&b, 0x1000, 0x002, "pc.rom");
	put_u8(&b, 0);
	expect_error(&b, -EBADMSG, "unknown RAM block \"pc.rom\"");
	start_part(&b);
	put_record(&b, 0x2000, 0x002, "pc.bios");
	put_u8(&b, 0);
	expect_error(&b, -EBADMSG, "page offset 0x2000 beyond RAM block \"pc.bios\"");
	start_part(&b);
	put_record(&b, 0x1000, 0x040, "pc.ram");
	put_u8(&b, 1);
	put_be16(&b, 4097);
	expect_error(&b, -EBADMSG, "XBZRLE delta of 4097 bytes");
	start_part(&b);
	put_record(&b, 0x1000, 0x040, "pc.ram");
	put_u8(&b, 2);
	put_be16(&b, 1);
	expect_error(&b, -EBADMSG, "unknown XBZRLE encoding 0x02");
	start_part(&b);
	put_be64(&b, 0x1000 | 0x004);
	expect_error(&b, -EBADMSG, "MEM_SIZE record outside the ram setup");
	start_part(&b);
	put_be64(&b, 0x010 | 0x020);
	expect_error(&b, -EBADMSG, "CONTINUE flag on a EOS record");
	buf_free(&b);
}

static void test_setup_list(void **state)
{
	struct buf b = { 0 };

	put_header(&b, NULL, false);
	put_u8(&b, 0x01);
	put_be32(&b, 2);
	put_idstr(&b, "ram");
	put_be32(&b, 0);
	put_be32(&b, 4);
	put_be64(&b, 0x1000 | 0x004);
	put_idstr(&b, "a");
	put_be64(&b, 0x2000);
	expect_error(&b, -EBADMSG, "exceeds the remaining setup total");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x01);
	put_be32(&b, 2);
	put_idstr(&b, "ram");
	put_be32(&b, 0);
	put_be32(&b, 4);
	put_be64(&b, 0x2000 | 0x004);
	put_idstr(&b, "a");
	put_be64(&b, 0x1000);
	put_idstr(&b, "a");
	put_be64(&b, 0x1000);
	expect_error(&b, -EBADMSG, "listed twice");
	b.len = 0;
	put_header(&b, NULL, false);
	put_u8(&b, 0x01);
	put_be32(&b, 2);
	put_idstr(&b, "ram");
	put_be32(&b, 0);
	put_be32(&b, 4);
	put_be64(&b, (uint64_t)(QS_MAX_BLOCKS + 1) * 0x1000 | 0x004);
	for (unsigned i = 0; i <= QS_MAX_BLOCKS; i++) {
		char name[16];

		snprintf(name, sizeof(name), "b%u", i);
		put_idstr(&b, name);
		put_be64(&b, 0x1000);
	}
	expect_error(&b, -EMSGSIZE, "more than 1024 RAM blocks");
	buf_free(&b);
}

/*
 * Hugepage-backed blocks with postcopy: a page_size word after used_length
 * for blocks whose page size differs from the host's, found by the
 * zero-byte rule; with and without x-ignore-shared.
 */
static void check_hugepage_setup(bool ignore_shared)
{
	static const char *const caps[] = { "x-ignore-shared", NULL };
	struct buf b = { 0 };
	struct rec r;
	const uint8_t *out;
	size_t out_len;
	int fin;

	put_header(&b, ignore_shared ? caps : NULL, false);
	put_u8(&b, 0x08); /* ADVISE: summary 2M|4K, target page 4K */
	put_be16(&b, 3);
	put_be16(&b, 16);
	put_be64(&b, 0x201000);
	put_be64(&b, 0x1000);
	put_u8(&b, 0x01);
	put_be32(&b, 2);
	put_idstr(&b, "ram");
	put_be32(&b, 0);
	put_be32(&b, 4);
	put_be64(&b, (0x400000 + 0x1000 + 0x200000) | 0x004);
	put_idstr(&b, "pc.ram");	/* hugepage */
	put_be64(&b, 0x400000);
	put_be64(&b, 0x200000);
	if (ignore_shared)
		put_be64(&b, 0);
	put_idstr(&b, "pc.bios");	/* normal */
	put_be64(&b, 0x1000);
	if (ignore_shared)
		put_be64(&b, 0xfffff000);
	put_idstr(&b, "huge2");		/* hugepage, last */
	put_be64(&b, 0x200000);
	put_be64(&b, 0x200000);
	if (ignore_shared)
		put_be64(&b, 0x100000000ull);
	put_eos_footer(&b);
	put_u8(&b, 0x03);
	put_be32(&b, 2);
	put_record(&b, 0x1ff000, 0x008, "huge2");
	for (int i = 0; i < 4096; i++)
		put_u8(&b, i);
	put_eos_footer(&b);
	put_u8(&b, 0x00);

	rec_init(&r);
	assert_int_equal(parse_into(&r, b.p, b.len, 3, &fin, NULL, 0), 0);
	assert_int_equal(fin, 0);
	assert_int_equal(r.n_blocks, 3);
	assert_true(r.block_page_size[0] == 0x200000);
	assert_true(r.block_page_size[1] == 0);
	assert_true(r.block_page_size[2] == 0x200000);
	if (ignore_shared) {
		assert_true(r.block_mr_addr[0] == 0);
		assert_true(r.block_mr_addr[1] == 0xfffff000);
		assert_true(r.block_mr_addr[2] == 0x100000000ull);
	}
	assert_int_equal(r.pages[QS_PAGE_NORMAL], 1);
	out = rec_output(&r, &out_len);
	assert_int_equal(out_len, b.len);
	assert_memory_equal(out, b.p, b.len);
	rec_fini(&r);
	buf_free(&b);
}

static void test_hugepage_setup(void **state)
{
	check_hugepage_setup(false);
	check_hugepage_setup(true);
}

static void test_after_eof(void **state)
{
	struct buf b = { 0 };

	put_header(&b, NULL, false);
	put_ram_start(&b);
	put_u8(&b, 0x03);
	put_be32(&b, 2);
	put_eos_footer(&b);
	put_u8(&b, 0x00);
	put_u8(&b, 0x06);
	put_be32(&b, QS_VMDESC_MAX + 1);
	expect_error(&b, -EMSGSIZE, "VM description of");
	b.len -= 5;
	put_u8(&b, 0x42);
	expect_error(&b, -EBADMSG, "unexpected byte 0x42 after EOF");
	b.len -= 1;
	put_u8(&b, 0x06);
	put_be32(&b, 2);
	buf_put(&b, "{}", 2);
	put_u8(&b, 0x00);
	expect_error(&b, -EBADMSG, "data after the end of the stream");
	buf_free(&b);
}

static int fail_raw(void *opaque, const uint8_t *p, size_t n)
{
	return -ECONNRESET;
}

static void test_handler_errors(void **state)
{
	static const struct qs_handlers h = { .raw = fail_raw };
	struct buf b = { 0 };
	struct qs_parser *p;
	struct rec r;
	char msg[400];
	int fin;

	build_small_stream(&b);
	rec_init(&r);
	r.fail_page_at = 2;
	assert_int_equal(parse_into(&r, b.p, b.len, 0, &fin, msg, sizeof(msg)),
			 -EPIPE);
	assert_non_null(strstr(msg, "page handler failed"));
	assert_int_equal(r.pages[0] + r.pages[1] + r.pages[2], 1);
	rec_fini(&r);

	p = qs_parser_new(&h, NULL);
	assert_int_equal(qs_parser_feed(p, b.p, b.len), -ECONNRESET);
	/* Sticky. */
	assert_int_equal(qs_parser_feed(p, b.p, 1), -ECONNRESET);
	assert_int_equal(qs_parser_finish(p), -ECONNRESET);
	qs_parser_free(p);
	buf_free(&b);
}

/* A recovery connection continues the section loop without a header. */
static void test_resume(void **state)
{
	struct buf b = { 0 }, r2 = { 0 };
	struct qs_parser *p, *q;
	struct rec r;

	put_header(&b, NULL, false);
	put_ram_start(&b);
	p = qs_parser_new(NULL, NULL);
	assert_null(qs_parser_new_resume(p, NULL, NULL));
	assert_int_equal(qs_parser_feed(p, b.p, b.len), 0);

	put_u8(&r2, 0x08); /* POSTCOPY_RESUME */
	put_be16(&r2, 9);
	put_be16(&r2, 0);
	put_u8(&r2, 0x02);
	put_be32(&r2, 2);
	put_record(&r2, 0x1000, 0x002, "pc.ram");
	put_u8(&r2, 0);
	put_record(&r2, 0x2000, 0x002 | 0x020, NULL);
	put_u8(&r2, 0);
	put_eos_footer(&r2);
	rec_init(&r);
	q = qs_parser_new_resume(p, &rec_handlers, &r);
	assert_non_null(q);
	assert_int_equal(qs_parser_feed(q, r2.p, r2.len), 0);
	assert_int_equal(r.pages[QS_PAGE_ZERO], 2);
	assert_int_equal(r.commands[QS_CMD_POSTCOPY_RESUME], 1);
	qs_parser_free(q);
	rec_fini(&r);

	/* The CONTINUE memory does not carry over. */
	r2.len = 0;
	put_u8(&r2, 0x02);
	put_be32(&r2, 2);
	put_record(&r2, 0x2000, 0x002 | 0x020, NULL);
	put_u8(&r2, 0);
	q = qs_parser_new_resume(p, NULL, NULL);
	assert_int_equal(qs_parser_feed(q, r2.p, r2.len), -EBADMSG);
	qs_parser_free(q);
	qs_parser_free(p);
	buf_free(&r2);
	buf_free(&b);
}

/* ---- writer ------------------------------------------------------------ */

struct sink {
	struct buf b;
	unsigned calls;
	int fail_after;
};

static int sink_out(void *opaque, const uint8_t *p, size_t n)
{
	struct sink *s = opaque;

	if (s->fail_after && s->calls >= (unsigned)s->fail_after)
		return -EPIPE;
	s->calls++;
	buf_put(&s->b, p, n);
	return 0;
}

static void test_writer(void **state)
{
	struct qs_block ram = { .index = 0, .name_len = 6, .name = "pc.ram" };
	struct qs_block bios = { .index = 1, .name_len = 7, .name = "pc.bios" };
	uint8_t page[4096], big[300000];
	struct qs_page pg = { .block = &ram, .kind = QS_PAGE_ZERO, .cont = true };
	struct qs_writer *w, *ws;
	struct sink s = { 0 };
	const uint8_t *out;
	size_t len;

	memset(page, 0x5a, sizeof(page));
	memset(big, 0x77, sizeof(big));
	w = qs_writer_new(4096, NULL, NULL);
	ws = qs_writer_new(4096, sink_out, &s);
	assert_null(qs_writer_new(3000, NULL, NULL));

	for (int i = 0; i < 2; i++) {
		struct qs_writer *x = i ? ws : w;

		/* First page names its block even with cont set. */
		assert_int_equal(qs_writer_page(x, &pg), 0);
		pg.offset = 0x1000;
		assert_int_equal(qs_writer_page(x, &pg), 0);
		pg.block = &bios;
		pg.offset = 0;
		pg.kind = QS_PAGE_NORMAL;
		pg.data = page;
		pg.len = 4096;
		assert_int_equal(qs_writer_page(x, &pg), 0);
		qs_writer_forget_block(x);
		pg.kind = QS_PAGE_XBZRLE;
		pg.len = 2;
		assert_int_equal(qs_writer_page(x, &pg), 0);
		assert_int_equal(qs_writer_raw(x, big, sizeof(big)), 0);
		pg.cont = false;
		assert_int_equal(qs_writer_page(x, &pg), 0);
		pg.cont = true;
		pg.block = &ram;
		pg.kind = QS_PAGE_ZERO;
		pg.offset = 0;
	}
	out = qs_writer_buffer(w, &len);
	assert_int_equal(qs_writer_flush(ws), 0);
	assert_int_equal(s.b.len, len);
	assert_memory_equal(s.b.p, out, len);
	assert_true(qs_writer_offset(w) == len);
	/* ZERO pc.ram 0 (idstr), ZERO cont, PAGE pc.bios (idstr), XBZRLE
	 * after forget (idstr), raw, XBZRLE with cont=false (idstr). */
	assert_true(tsb_load_be64(out) == 0x002);
	assert_int_equal(out[8], 6);
	assert_true(tsb_load_be64(out + 16) == (0x1000 | 0x022));
	assert_true(tsb_load_be64(out + 25) == 0x008);
	assert_int_equal(out[33], 7);
	assert_true(tsb_load_be64(out + 41 + 4096) == 0x040);
	assert_int_equal(out[41 + 4096 + 8], 7);
	assert_int_equal(out[41 + 4096 + 16], 1);
	assert_int_equal(tsb_load_be16(out + 41 + 4096 + 17), 2);
	assert_true(tsb_load_be64(out + 41 + 4096 + 21 + sizeof(big)) == 0x040);
	/* The large raw piece bypassed the batch buffer. */
	assert_true(s.calls >= 3);

	/* Invalid pages. */
	pg.offset = 0x10;
	assert_int_equal(qs_writer_page(w, &pg), -EINVAL);
	pg.offset = 0;
	pg.kind = QS_PAGE_NORMAL;
	pg.len = 100;
	assert_int_equal(qs_writer_page(w, &pg), -EINVAL);
	pg.kind = QS_PAGE_XBZRLE;
	pg.len = 4097;
	assert_int_equal(qs_writer_page(w, &pg), -EINVAL);
	qs_writer_buffer_reset(w);
	assert_int_equal((qs_writer_buffer(w, &len), len), 0);

	/* Output errors are sticky. */
	s.fail_after = s.calls;
	assert_int_equal(qs_writer_raw(ws, big, sizeof(big)), -EPIPE);
	assert_int_equal(qs_writer_raw(ws, big, 1), -EPIPE);
	qs_writer_free(w);
	qs_writer_free(ws);
	buf_free(&s.b);
}

/* ---- return path -------------------------------------------------------- */

struct rp_rec {
	struct buf raw;
	unsigned msgs[8];
	uint64_t last_offset;
	uint32_t last_value;
	char block[64];
	uint64_t bitmap_size;
	struct buf log;
};

static int rp_raw(void *opaque, const uint8_t *p, size_t n)
{
	struct rp_rec *r = opaque;

	buf_put(&r->raw, p, n);
	return 0;
}

static int rp_msg(void *opaque, const struct qs_rp_msg *m)
{
	struct rp_rec *r = opaque;
	uint64_t x[4] = { m->type, m->stream_offset, m->value, m->offset };

	assert_true(m->type < 8);
	r->msgs[m->type]++;
	r->last_offset = m->offset;
	r->last_value = m->value;
	if (m->block)
		snprintf(r->block, sizeof(r->block), "%s", m->block);
	if (m->type == QS_RP_RECV_BITMAP)
		r->bitmap_size = m->bitmap_size;
	buf_put(&r->log, x, sizeof(x));
	return 0;
}

static int rp_parse(struct rp_rec *r, const uint8_t *d, size_t len,
		    size_t chunk, char *err, size_t err_len)
{
	static const struct qs_rp_handlers h = { .raw = rp_raw, .msg = rp_msg };
	struct qs_rp_parser *p = qs_rp_parser_new(&h, r);
	size_t off = 0, n;
	int ret = 0;

	assert_non_null(p);
	*r = (struct rp_rec){ 0 };
	while (off < len && !ret) {
		n = chunk && chunk < len - off ? chunk : len - off;
		ret = qs_rp_parser_feed(p, d + off, n);
		off += n;
	}
	if (!ret)
		ret = qs_rp_parser_finish(p);
	if (err)
		snprintf(err, err_len, "%s", qs_rp_parser_error(p));
	qs_rp_parser_free(p);
	return ret;
}

static void rp_free(struct rp_rec *r)
{
	buf_free(&r->raw);
	buf_free(&r->log);
}

/*
 * qs_tail: fed a captured precopy stream in pieces of every few sizes, it
 * says "the end" exactly once, at the last byte; never for a postcopy
 * stream (no description), a cut-off precopy stream, or one whose
 * description's length is off by one.
 */
static int tail_ends_at(const uint8_t *d, size_t len, size_t piece)
{
	struct qs_tail t;
	int at = -1, hits = 0;

	qs_tail_init(&t);
	for (size_t off = 0; off < len; off += piece) {
		size_t n = len - off < piece ? len - off : piece;

		if (qs_tail_feed(&t, d + off, n)) {
			hits++;
			at = (int)(off + n);
		}
	}
	qs_tail_fini(&t);
	return hits == 1 ? at : hits ? -2 : -1;
}

static void test_tail(void **state)
{
	static const size_t pieces[] = { 1, 7, 4096, 65536, 262144, 1u << 30 };
	size_t len, plen;
	uint8_t *d = load_capture("qemu72-precopy.bin.zst", &len);
	uint8_t *pc = load_capture("qemu72-postcopy.bin.zst", &plen);
	uint8_t *bad;

	(void)state;
	for (size_t i = 0; i < sizeof(pieces) / sizeof(pieces[0]); i++) {
		/* 1-byte feeds of a whole stream: only its end, to keep it short. */
		size_t from = pieces[i] == 1 ? len - 200000 : 0;

		assert_int_equal(tail_ends_at(d + from, len - from, pieces[i]), (int)(len - from));
		assert_int_equal(tail_ends_at(d, len - 1, pieces[i]), -1);
		assert_int_equal(tail_ends_at(pc, plen, pieces[i]), -1);
	}
	/* The length must match the JSON to the last byte. */
	bad = malloc(len);
	assert_non_null(bad);
	memcpy(bad, d, len);
	for (size_t i = len - 6; i-- > 0;) {
		if (bad[i] == 0x00 && bad[i + 1] == 0x06 && tsb_load_be32(bad + i + 2) == len - i - 6) {
			tsb_put_be32(bad + i + 2, (uint32_t)(len - i - 7));
			break;
		}
	}
	assert_int_equal(tail_ends_at(bad, len, 65536), -1);
	free(bad);
	free(pc);
	free(d);
}

static void test_rp_capture(void **state)
{
	struct rp_rec whole, r;
	size_t len;
	uint8_t *d = load_capture("qemu72-postcopy-rp.bin", &len);

	assert_int_equal(rp_parse(&whole, d, len, 0, NULL, 0), 0);
	assert_int_equal(whole.msgs[QS_RP_PONG], 4);
	assert_int_equal(whole.msgs[QS_RP_REQ_PAGES_ID], 1);
	assert_int_equal(whole.msgs[QS_RP_REQ_PAGES], 7);
	assert_int_equal(whole.msgs[QS_RP_SHUT], 1);
	assert_int_equal(whole.last_value, 0);
	assert_string_equal(whole.block, "pc.ram");
	assert_int_equal(whole.raw.len, len);
	assert_memory_equal(whole.raw.p, d, len);
	for (size_t c = 1; c < 10; c++) {
		assert_int_equal(rp_parse(&r, d, len, c, NULL, 0), 0);
		assert_int_equal(r.log.len, whole.log.len);
		assert_memory_equal(r.log.p, whole.log.p, r.log.len);
		assert_int_equal(r.raw.len, len);
		assert_memory_equal(r.raw.p, d, len);
		rp_free(&r);
	}
	/* Truncated anywhere inside a message: -ENODATA. */
	for (size_t n = 1; n < len; n++) {
		int ret = rp_parse(&r, d, n, 3, NULL, 0);

		assert_true(ret == 0 || ret == -ENODATA);
		rp_free(&r);
	}
	rp_free(&whole);
	free(d);
}

static void put_bitmap_msg(struct buf *b, uint64_t size, uint64_t mark)
{
	put_be16(b, QS_RP_RECV_BITMAP);
	put_be16(b, 7);
	put_idstr(b, "pc.ram");
	put_be64(b, size);
	for (uint64_t i = 0; i < size && i < 100000; i++)
		put_u8(b, i);
	put_be64(b, mark);
}

static void test_rp_messages(void **state)
{
	uint8_t msg[600], data[520];
	struct buf b = { 0 };
	struct rp_rec r;
	char err[300];
	int n;

	/* RECV_BITMAP: data beyond its length is not a message. */
	put_bitmap_msg(&b, 4096, 0x0123456789abcdefull);
	n = qs_rp_encode(msg, sizeof(msg), QS_RP_RESUME_ACK, "\0\0\0\1", 4);
	assert_int_equal(n, 8);
	buf_put(&b, msg, n);
	for (size_t c = 0; c < 40; c += 13) {
		assert_int_equal(rp_parse(&r, b.p, b.len, c, NULL, 0), 0);
		assert_int_equal(r.msgs[QS_RP_RECV_BITMAP], 1);
		assert_int_equal(r.msgs[QS_RP_RESUME_ACK], 1);
		assert_int_equal(r.last_value, 1);
		assert_int_equal(r.bitmap_size, 4096);
		assert_int_equal(r.raw.len, b.len);
		rp_free(&r);
	}
	b.len = 0;
	put_bitmap_msg(&b, 16, 0x0123456789abcdeeull);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "end mark"));
	rp_free(&r);
	b.len = 0;
	put_bitmap_msg(&b, (uint64_t)QS_RP_BITMAP_MAX + 8, 0);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EMSGSIZE);
	rp_free(&r);
	b.len = 0;
	put_bitmap_msg(&b, 12, 0);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EBADMSG);
	rp_free(&r);

	b.len = 0;
	put_be16(&b, 9);
	put_be16(&b, 0);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)),
			 -EOPNOTSUPP);
	assert_non_null(strstr(err, "unknown return-path message type 9"));
	rp_free(&r);
	b.len = 0;
	put_be16(&b, QS_RP_SHUT);
	put_be16(&b, 3);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "SHUT with length 3"));
	rp_free(&r);
	b.len = 0;
	put_be16(&b, QS_RP_REQ_PAGES);
	put_be16(&b, 12);
	put_be64(&b, 0);
	put_be32(&b, 4096);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "without a previous REQ_PAGES_ID"));
	rp_free(&r);
	b.len = 0;
	n = qs_rp_encode(msg, sizeof(msg), QS_RP_SHUT, "\0\0\0\1", 4);
	buf_put(&b, msg, n);
	put_u8(&b, 0);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EBADMSG);
	assert_non_null(strstr(err, "after SHUT"));
	rp_free(&r);
	b.len = 0;
	put_be16(&b, QS_RP_REQ_PAGES_ID);
	put_be16(&b, 600);
	assert_int_equal(rp_parse(&r, b.p, b.len, 0, err, sizeof(err)), -EMSGSIZE);
	rp_free(&r);
	memset(data, 0, sizeof(data));
	assert_int_equal(qs_rp_encode(msg, sizeof(msg), 3, data, 513), -EMSGSIZE);
	assert_int_equal(qs_rp_encode(msg, 10, 3, data, 13), -EMSGSIZE);
	buf_free(&b);
}

/* ---- a real destination QEMU ------------------------------------------ */

struct qemu {
	pid_t pid;
	int in;		/* its stdin (QMP) */
	int out;	/* its stdout (QMP) */
	char line[65536];
	size_t len;
};

/* Reads one QMP line that is not an event; NULL on timeout/EOF. */
static const char *qmp_read(struct qemu *q, int timeout_ms)
{
	for (;;) {
		char *nl = memchr(q->line, '\n', q->len);
		struct pollfd pfd = { .fd = q->out, .events = POLLIN };
		ssize_t n;

		if (nl) {
			static char msg[65536];
			size_t l = nl - q->line;

			memcpy(msg, q->line, l);
			msg[l] = '\0';
			memmove(q->line, nl + 1, q->len - l - 1);
			q->len -= l + 1;
			if (strstr(msg, "\"event\""))
				continue;
			return msg;
		}
		if (poll(&pfd, 1, timeout_ms) <= 0)
			return NULL;
		n = read(q->out, q->line + q->len, sizeof(q->line) - 1 - q->len);
		if (n <= 0)
			return NULL;
		q->len += n;
	}
}

static const char *qmp_cmd(struct qemu *q, const char *json)
{
	size_t n = strlen(json);

	if (write(q->in, json, n) != (ssize_t)n || write(q->in, "\n", 1) != 1)
		return NULL;
	return qmp_read(q, 10000);
}

static bool have_qemu(void)
{
	const char *path = getenv("PATH");
	char buf[4096];

	if (getenv("TSB_TEST_NO_QEMU"))
		return false;
	while (path && *path) {
		const char *end = strchrnul(path, ':');

		snprintf(buf, sizeof(buf), "%.*s/qemu-system-x86_64",
			 (int)(end - path), path);
		if (access(buf, X_OK) == 0)
			return true;
		path = *end ? end + 1 : end;
	}
	return false;
}

static void print_file(const char *path)
{
	char line[512];
	FILE *f = fopen(path, "r");

	while (f && fgets(line, sizeof(line), f))
		fprintf(stderr, "qemu: %s", line);
	if (f)
		fclose(f);
}

/* The firmware of capture-stream.py --loop-bios. */
static void write_loop_bios(const char *path)
{
	static const uint8_t code[] = { 0xfa, 0xb8, 0x00, 0x10, 0x8e, 0xc0,
		0x31, 0xdb, 0x26, 0xff, 0x07, 0x81, 0xc3, 0x00, 0x10, 0xeb, 0xf7 };
	static const uint8_t reset[] = { 0xea, 0x00, 0xe0, 0x00, 0xf0 };
	static uint8_t img[65536];
	FILE *f;

	memcpy(img + 0xe000, code, sizeof(code));
	memcpy(img + 0xfff0, reset, sizeof(reset));
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(img, 1, sizeof(img), f), sizeof(img));
	fclose(f);
}

/*
 * Loads stream file `path` into a destination QEMU (-incoming defer,
 * migrate-incoming exec:cat) and returns its final migration status.
 */
static void load_into_qemu(const char *path, const char *bios,
			   const char *caps, const char *log, const char *memsave,
			   char *status, size_t status_len)
{
	const char *argv[32];
	int in[2], out[2], n = 0, wst;
	posix_spawn_file_actions_t fa;
	struct qemu q = { 0 };
	char cmd[1024];
	const char *rsp;
	struct timespec ts = { 0, 20 * 1000 * 1000 };

	argv[n++] = "qemu-system-x86_64";
	argv[n++] = "-machine";
	argv[n++] = "pc-i440fx-7.2";
	argv[n++] = "-m";
	argv[n++] = "16388K";
	argv[n++] = "-accel";
	argv[n++] = "tcg";
	argv[n++] = "-nodefaults";
	argv[n++] = "-display";
	argv[n++] = "none";
	argv[n++] = "-S";
	argv[n++] = "-uuid";
	argv[n++] = UUID;
	argv[n++] = "-incoming";
	argv[n++] = "defer";
	argv[n++] = "-qmp";
	argv[n++] = "stdio";
	if (bios) {
		argv[n++] = "-bios";
		argv[n++] = bios;
	}
	argv[n] = NULL;

	assert_int_equal(pipe2(in, O_CLOEXEC), 0);
	assert_int_equal(pipe2(out, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addopen(&fa, 2, log, O_WRONLY | O_CREAT | O_TRUNC,
					 0600);
	assert_int_equal(posix_spawnp(&q.pid, argv[0], &fa, NULL,
				      (char *const *)argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(in[0]);
	close(out[1]);
	q.in = in[1];
	q.out = out[0];

	snprintf(status, status_len, "no answer");
	if (!qmp_read(&q, 10000) || !qmp_cmd(&q, "{\"execute\":\"qmp_capabilities\"}"))
		goto out;
	if (caps) {
		snprintf(cmd, sizeof(cmd),
			 "{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[%s]}}",
			 caps);
		rsp = qmp_cmd(&q, cmd);
		if (!rsp || !strstr(rsp, "\"return\""))
			goto out;
	}
	snprintf(cmd, sizeof(cmd),
		 "{\"execute\":\"migrate-incoming\",\"arguments\":{\"uri\":\"exec:cat %s\"}}",
		 path);
	rsp = qmp_cmd(&q, cmd);
	if (!rsp || !strstr(rsp, "\"return\""))
		goto out;
	for (int i = 0; i < 1000; i++) {
		rsp = qmp_cmd(&q, "{\"execute\":\"query-migrate\"}");
		if (!rsp)
			break;
		if (strstr(rsp, "\"completed\"") || strstr(rsp, "\"failed\"")) {
			snprintf(status, status_len, "%s",
				 strstr(rsp, "\"completed\"") ? "completed" : rsp);
			break;
		}
		nanosleep(&ts, NULL);
	}
	if (memsave && !strcmp(status, "completed")) {
		snprintf(cmd, sizeof(cmd),
			 "{\"execute\":\"pmemsave\",\"arguments\":{\"val\":0,\"size\":%u,\"filename\":\"%s\"}}",
			 GUEST_RAM, memsave);
		rsp = qmp_cmd(&q, cmd);
		if (!rsp || !strstr(rsp, "\"return\""))
			snprintf(status, status_len, "pmemsave failed");
	}
	(void)qmp_cmd(&q, "{\"execute\":\"quit\"}");
out:
	close(q.in);
	close(q.out);
	for (int i = 0; i < 500; i++) {
		if (waitpid(q.pid, &wst, WNOHANG) == q.pid)
			return;
		nanosleep(&ts, NULL);
	}
	kill(q.pid, SIGKILL);
	waitpid(q.pid, &wst, 0);
}

/*
 * The destination's guest memory (pmemsave of GPA 0..GUEST_RAM) equals
 * pc.ram as rebuilt from the stream's records, outside the legacy hole
 * 0xa0000-0xfffff where option ROMs and the BIOS alias hide RAM.
 */
static void check_guest_ram(const char *mem, const uint8_t *want,
			    const char *what)
{
	size_t len;
	char name[300];
	uint8_t *got;

	/* load_capture() reads relative to the data dir: use a full path. */
	snprintf(name, sizeof(name), "%s", mem);
	{
		FILE *f = fopen(name, "rb");
		struct stat st;

		assert_non_null(f);
		assert_int_equal(fstat(fileno(f), &st), 0);
		len = st.st_size;
		got = malloc(len);
		assert_non_null(got);
		assert_int_equal(fread(got, 1, len, f), len);
		fclose(f);
	}
	assert_int_equal(len, GUEST_RAM);
	for (size_t off = 0; off < len; off += 4096) {
		if (off >= 0xa0000 && off < 0x100000)
			continue;
		if (memcmp(got + off, want + off, 4096))
			fail_msg("%s: guest page 0x%zx differs on the destination",
				 what, off);
	}
	free(got);
}

static void test_qemu_accepts_rewritten_streams(void **state)
{
	static const struct {
		const char *file;
		bool loop_bios;
		const char *caps;
		bool explicit_idstr;
		bool corrupt;	/* control: the check can fail */
	} cases[] = {
		{ "qemu72-precopy.bin.zst", false, NULL, false, false },
		{ "qemu72-precopy.bin.zst", false, NULL, true, false },
		{ "qemu72-precopy.bin.zst", false, NULL, true, true },
		{ "qemu72-ignore-shared.bin.zst", false,
		  "{\"capability\":\"x-ignore-shared\",\"state\":true}", true,
		  false },
		{ "qemu72-xbzrle.bin.zst", true, NULL, true, false },
		{ "qemu72-postcopy.bin.zst", true,
		  "{\"capability\":\"postcopy-ram\",\"state\":true}", true,
		  false },
	};
	char dir[] = "/tmp/test-qstream-XXXXXX", path[256], bios[256], log[256];
	char mem[256];
	char status[512];

	if (!have_qemu())
		skip();
	/* QEMU exits on a failed load: its stdin pipe breaks. */
	signal(SIGPIPE, SIG_IGN);
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/stream.bin", dir);
	snprintf(bios, sizeof(bios), "%s/loop-bios.bin", dir);
	snprintf(log, sizeof(log), "%s/qemu.log", dir);
	snprintf(mem, sizeof(mem), "%s/mem.bin", dir);
	write_loop_bios(bios);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len, out_len;
		uint8_t *d = load_capture(cases[i].file, &len);
		const uint8_t *out;
		struct rec r;
		FILE *f;
		int fin;

		rec_init(&r);
		r.force_idstr = cases[i].explicit_idstr;
		r.ram = calloc(1, GUEST_RAM);
		r.ram_len = GUEST_RAM;
		assert_non_null(r.ram);
		assert_int_equal(parse_into(&r, d, len, -5, &fin, NULL, 0), 0);
		assert_int_equal(fin, 0);
		assert_int_equal(r.ram_err, 0);
		out = rec_output(&r, &out_len);
		f = fopen(path, "wb");
		assert_non_null(f);
		if (cases[i].corrupt) {
			/* Cut in the middle of the device state. */
			out_len = r.device_off + 1000;
		}
		assert_int_equal(fwrite(out, 1, out_len, f), out_len);
		fclose(f);
		load_into_qemu(path, cases[i].loop_bios ? bios : NULL,
			       cases[i].caps, log, cases[i].corrupt ? NULL : mem,
			       status, sizeof(status));
		if (cases[i].corrupt) {
			if (!strcmp(status, "completed"))
				fail_msg("a truncated stream was accepted");
		} else if (strcmp(status, "completed")) {
			print_file(log);
			fail_msg("%s (explicit idstr %d): destination status %s",
				 cases[i].file, cases[i].explicit_idstr, status);
		} else {
			check_guest_ram(mem, r.ram, cases[i].file);
			unlink(mem);
		}
		free(r.ram);
		rec_fini(&r);
		free(d);
	}
	unlink(path);
	unlink(bios);
	unlink(log);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_capture_precopy),
		cmocka_unit_test(test_capture_ignore_shared),
		cmocka_unit_test(test_capture_xbzrle),
		cmocka_unit_test(test_capture_postcopy),
		cmocka_unit_test(test_tail),
		cmocka_unit_test(test_truncated_captures),
		cmocka_unit_test(test_small_stream_round_trip),
		cmocka_unit_test(test_small_stream_truncation),
		cmocka_unit_test(test_bad_header),
		cmocka_unit_test(test_bad_configuration),
		cmocka_unit_test(test_commands),
		cmocka_unit_test(test_packaged),
		cmocka_unit_test(test_sections),
		cmocka_unit_test(test_ram_records),
		cmocka_unit_test(test_setup_list),
		cmocka_unit_test(test_hugepage_setup),
		cmocka_unit_test(test_after_eof),
		cmocka_unit_test(test_handler_errors),
		cmocka_unit_test(test_resume),
		cmocka_unit_test(test_writer),
		cmocka_unit_test(test_rp_capture),
		cmocka_unit_test(test_rp_messages),
		cmocka_unit_test(test_qemu_accepts_rewritten_streams),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
