/*
 * Writes the seed corpus of fuzz-disk-recv: frame streams a sender could
 * write on the disk channel after HELLO, built with the real encoders.
 *
 *   ninja -C build tests/fuzz/make-seeds-disk
 *   build/tests/fuzz/make-seeds-disk tests/fuzz/corpus/disk-recv
 *
 * The disks are fuzz-disk-recv.c's: disk0 (1 MiB) and disk1 (68 KiB +
 * 512 bytes). Besides ordinary streams (a copy, REFs answered by
 * HASHDATA with frames queued meanwhile, flushes, DONE, CANCEL) there are
 * hostile ones: offsets whose end wraps 2^64, more frames than a window
 * behind a NEED, wrong answers, wrong disk lists, truncated frames.
 */
#include "seedfile.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "wire/codec.h"
#include "wire/wire.h"

#define BLOCK 4096u
#define DISK0_SIZE (1u << 20)
#define DISK1_SIZE (68u * 1024 + 512)
#define TOP(ps) (UINT64_MAX - (ps) + 1)

static const char *dir;
static struct tsb_buf out;
static struct wire_zstd *z;

static void check(int r, const char *what)
{
	seed_check("make-seeds-disk", r, what);
}

static void save(const char *name, size_t len)
{
	check(out.err, name);
	seed_write("make-seeds-disk", dir, name, out.data, len);
	tsb_buf_reset(&out);
}

static void block_of(uint8_t *p, unsigned seed)
{
	for (unsigned i = 0; i < BLOCK; i++)
		p[i] = (uint8_t)(seed * 37 + i * 11 + (i >> 9));
}

static void hash_of(unsigned seed, uint8_t h[WIRE_HASH_LEN])
{
	uint8_t b[BLOCK];

	block_of(b, seed);
	check(wire_sha256(b, BLOCK, h), "sha256");
}

/* BLOCKS for both disks (sizes as given), then PING 0. */
static void start(uint64_t size0, const char *name1)
{
	struct wire_block b[2] = {
		{ .index = 0, .name = { "disk0", 5 }, .used_length = size0 },
		{ .index = 1, .name = { name1, strlen(name1) }, .used_length = DISK1_SIZE },
	};

	check(wire_encode_blocks(&out, b, 2), "blocks");
	check(wire_encode_u64(&out, WIRE_MSG_PING, 0), "ping");
}

static void ping(uint64_t v)
{
	check(wire_encode_u64(&out, WIRE_MSG_PING, v), "ping");
}

static void status(uint8_t type, const char *text)
{
	check(wire_encode_status(&out, type, type == WIRE_MSG_ERROR ? WIRE_CODE_INTERNAL : 0,
				 text), "status");
}

/* A builder of page size ps; entries added by the caller; pages_end() encodes. */
static struct wire_pages_builder pb;

static void pages(uint32_t ps)
{
	wire_pages_builder_fini(&pb);
	check(wire_pages_builder_init(&pb, ps), "builder");
}

static void data(uint16_t disk, uint64_t off, unsigned seed)
{
	uint8_t b[WIRE_MAX_PAGE_SIZE];

	for (uint32_t i = 0; i < pb.page_size; i += BLOCK)
		block_of(b + i, seed + i / BLOCK);
	check(wire_pages_add_data(&pb, disk, 0, off, b), "data");
}

static void ref(uint16_t disk, uint64_t off, unsigned seed, uint8_t enc)
{
	uint8_t h[WIRE_HASH_LEN];

	hash_of(seed, h);
	check(wire_pages_add_ref(&pb, disk, 0, off, enc, h), "ref");
}

static void pages_end(bool compress)
{
	check(wire_pages_encode(&pb, &out, compress ? z : NULL), "pages");
	wire_pages_builder_reset(&pb);
}

/* HASHDATA for the blocks of these seeds (count of them). */
static void hashdata(const unsigned *seeds, size_t count, bool compress)
{
	uint8_t (*h)[WIRE_HASH_LEN] = calloc(count, WIRE_HASH_LEN);
	uint8_t *d = malloc(count * BLOCK);

	if (!h || !d)
		check(-ENOMEM, "hashdata");
	for (size_t i = 0; i < count; i++) {
		block_of(d + i * BLOCK, seeds[i]);
		hash_of(seeds[i], h[i]);
	}
	check(wire_encode_hashdata(&out, BLOCK, (const uint8_t (*)[WIRE_HASH_LEN])h, d, count,
				   compress ? z : NULL), "hashdata");
	free(h);
	free(d);
}

int main(int argc, char **argv)
{
	static const uint8_t zero[BLOCK];
	uint8_t zh[WIRE_HASH_LEN];

	if (argc != 2) {
		fprintf(stderr, "usage: make-seeds-disk DIR\n");
		return 2;
	}
	dir = argv[1];
	tsb_buf_init(&out);
	z = wire_zstd_new(3);
	if (!z)
		check(-ENOMEM, "zstd");
	check(wire_sha256(zero, BLOCK, zh), "sha256");

	/* A first copy of both disks: every kind of write, flushes, DONE. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	data(0, 0, 1);
	data(0, BLOCK, 2);
	check(wire_pages_add_zero(&pb, 1, 0, 2 * BLOCK, 0), "zero");
	check(wire_pages_add_zero(&pb, 0, 0, 3 * BLOCK, 0x11), "zero");
	data(1, 65536, 3);
	pages_end(true);
	pages(65536);
	check(wire_pages_add_zero(&pb, 0, 0, 65536, 0), "zero");
	check(wire_pages_add_zero(&pb, 0, 0, 2 * 65536, 0), "zero");
	pages_end(false);
	pages(512);
	data(1, DISK1_SIZE - 512, 4);
	data(0, DISK0_SIZE - 512, 5);
	pages_end(false);
	ping(1);
	ping((1ull << 48) | 1);
	ping((1ull << 63) | 7);
	status(WIRE_MSG_DONE, "disks complete");
	save("copy", out.len);

	/* The same, cut in the middle of its last frame: a lost connection. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	data(0, 0, 1);
	pages_end(false);
	save("truncated", out.len - 100);

	/* REFs: one in place (zeroes), others NEEDed, frames queued meanwhile. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	check(wire_pages_add_ref(&pb, 0, 0, 5 * BLOCK, WIRE_ENC_REF, zh), "ref");
	ref(0, 6 * BLOCK, 10, WIRE_ENC_REF);
	ref(0, 7 * BLOCK, 11, WIRE_ENC_SAME);
	data(0, 8 * BLOCK, 12);
	pages_end(false);
	pages(BLOCK);
	ref(1, 0, 13, WIRE_ENC_REF);
	pages_end(false);
	ping(2);
	ping((1ull << 63) | 1);
	hashdata((const unsigned[]){ 10, 11 }, 2, true);
	hashdata((const unsigned[]){ 13 }, 1, false);
	status(WIRE_MSG_DONE, "disks complete");
	save("ref-need", out.len);

	/* HASHDATA whose content does not match its hash. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	ref(0, 0, 20, WIRE_ENC_REF);
	pages_end(false);
	{
		uint8_t h[1][WIRE_HASH_LEN], d[BLOCK];

		hash_of(20, h[0]);
		block_of(d, 21);
		check(wire_encode_hashdata(&out, BLOCK, (const uint8_t (*)[WIRE_HASH_LEN])h, d,
					   1, NULL), "hashdata");
	}
	save("ref-wrong-answer", out.len);

	/* An answer with another count. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	ref(0, 0, 22, WIRE_ENC_REF);
	pages_end(false);
	hashdata((const unsigned[]){ 22, 23 }, 2, false);
	save("ref-wrong-count", out.len);

	/* Offsets whose end wraps past 2^64. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	ref(0, 0, 30, WIRE_ENC_REF);
	ref(0, TOP(BLOCK), 31, WIRE_ENC_REF);
	pages_end(false);
	hashdata((const unsigned[]){ 30, 31 }, 2, false);
	save("wrap-ref", out.len);
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	data(0, TOP(BLOCK), 32);
	pages_end(false);
	save("wrap-data", out.len);
	start(DISK0_SIZE, "disk1");
	pages(65536);
	check(wire_pages_add_zero(&pb, 1, 0, TOP(65536), 0), "zero");
	pages_end(false);
	save("wrap-zero", out.len);
	/* Just past the end of disk1 (not a multiple of a block). */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	data(1, 16 * BLOCK, 33);
	pages_end(false);
	save("past-end", out.len);

	/* More frames behind a NEED than a sender's window holds. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	ref(0, 0, 40, WIRE_ENC_REF);
	pages_end(false);
	for (unsigned i = 0; i < 20; i++) {
		pages(BLOCK);
		data(0, (uint64_t)(i + 1) * BLOCK, 41 + i);
		pages_end(false);
	}
	hashdata((const unsigned[]){ 40 }, 1, false);
	save("need-flood", out.len);

	/* Wrong disk lists; writes and flushes for disks not listed. */
	start(DISK0_SIZE + BLOCK, "disk1");
	save("blocks-wrong-size", out.len);
	start(DISK0_SIZE, "disk9");
	save("blocks-unknown-disk", out.len);
	pages(BLOCK);
	data(0, 0, 50);
	pages_end(false);
	save("pages-first", out.len);
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	data(5, 0, 51);
	pages_end(false);
	ping((5ull << 48) | 1);
	save("unknown-index", out.len);
	start(DISK0_SIZE, "disk1");
	ping((1ull << 48) | 9);
	start(DISK0_SIZE, "disk1");
	save("blocks-twice", out.len);

	/* The sender gives up. */
	start(DISK0_SIZE, "disk1");
	pages(BLOCK);
	data(0, 0, 60);
	pages_end(false);
	status(WIRE_MSG_CANCEL, "disk transfer stopped");
	save("cancel", out.len);

	wire_pages_builder_fini(&pb);
	wire_zstd_free(z);
	tsb_buf_fini(&out);
	return 0;
}
