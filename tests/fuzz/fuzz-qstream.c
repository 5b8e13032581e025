/*
 * Fuzz target for the QEMU migration stream parser (src/qstream).
 *
 * Input: 4 control bytes, then the stream. Control byte 0 picks how the
 * stream is cut into feeds (so resumption at every byte boundary is
 * fuzzed): 0 all at once, 1 one byte at a time, 2 random 1..64 bytes,
 * 3 random 1..8192 bytes; bytes 1..3 seed the random sizes.
 *
 * Checked beyond memory safety: the bytes passed on (raw + pages, re-made
 * by a qs_writer) always equal the input consumed so far, which is the
 * round-trip property tsubame relies on; every view handed to a callback
 * is read in full (ASan catches a bad pointer or length). The same bytes
 * go to qs_tail (the end-of-stream recognizer).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qstream/qstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
	struct qs_writer *w;
	unsigned sum;
};

static unsigned touch(const uint8_t *p, size_t n)
{
	unsigned s = 0;

	for (size_t i = 0; i < n; i++)
		s += p[i];
	return s;
}

static int on_raw(void *opaque, const uint8_t *p, size_t n)
{
	struct ctx *c = opaque;

	if (!n)
		abort(); /* empty raw pieces are never passed */
	return qs_writer_raw(c->w, p, n);
}

static int on_page(void *opaque, const struct qs_page *pg)
{
	struct ctx *c = opaque;

	c->sum += touch(pg->data, pg->len) + pg->block->name[0];
	if (qs_writer_offset(c->w) != pg->stream_offset)
		abort();
	return qs_writer_page(c->w, pg);
}

static int on_event(void *opaque, const struct qs_event *ev)
{
	struct ctx *c = opaque;

	switch (ev->type) {
	case QS_EV_CONFIG:
		c->sum += strlen(ev->config.machine);
		break;
	case QS_EV_COMMAND:
		if (ev->command.data)
			c->sum += touch(ev->command.data, ev->command.len);
		break;
	case QS_EV_RAM_SETUP:
		for (unsigned i = 0; i < ev->ram_setup.n_blocks; i++)
			c->sum += strlen(ev->ram_setup.blocks[i].name);
		break;
	case QS_EV_DEVICE_STATE:
		c->sum += strlen(ev->device.idstr);
		if (qs_writer_offset(c->w) != ev->stream_offset)
			abort();
		break;
	default:
		break;
	}
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct qs_handlers h = {
		.raw = on_raw, .page = on_page, .event = on_event,
	};
	struct ctx c = { 0 };
	struct qs_tail tail;
	size_t tail_end = 0;
	struct qs_parser *p;
	const uint8_t *out;
	uint32_t seed;
	size_t off = 0, n, out_len;
	unsigned mode;
	int r = 0;

	if (size < 4)
		return 0;
	mode = data[0] & 3;
	seed = (uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3];
	seed |= 1;
	data += 4;
	size -= 4;

	qs_tail_init(&tail);
	c.w = qs_writer_new(4096, NULL, NULL);
	p = qs_parser_new(&h, &c);
	if (!c.w || !p)
		abort();
	while (off < size && !r) {
		seed ^= seed << 13;
		seed ^= seed >> 17;
		seed ^= seed << 5;
		switch (mode) {
		case 0: n = size; break;
		case 1: n = 1; break;
		case 2: n = 1 + seed % 64; break;
		default: n = 1 + seed % 8192; break;
		}
		if (n > size - off)
			n = size - off;
		r = qs_parser_feed(p, data + off, n);
		/* The end-of-stream recognizer sees the same bytes (tail.c). */
		if (qs_tail_feed(&tail, data + off, n))
			tail_end = off + n;
		off += n;
	}
	/* It may only say "the end" where the bytes end with a description. */
	if (tail_end && (tail_end < 19 || data[tail_end - 1] != '}'))
		abort();
	qs_tail_fini(&tail);
	if (!r)
		r = qs_parser_finish(p);
	if (r && !qs_parser_error(p)[0])
		abort(); /* every error has a message */

	/* Writer page size must follow the stream's (ADVISE may change it). */
	if (qs_parser_page_size(p) == 4096) {
		out = qs_writer_buffer(c.w, &out_len);
		if (out_len != qs_parser_offset(p) ||
		    (out_len && memcmp(out, data, out_len)))
			abort();
	}
	qs_parser_free(p);
	qs_writer_free(c.w);
	return 0;
}
