/*
 * Fuzz target for the return-path parser (src/qstream/rp.c).
 *
 * Input: 4 control bytes (as in fuzz-qstream.c: byte 0 picks the feed
 * sizes, bytes 1..3 seed them), then the destination -> source bytes.
 * Checked: the raw callback sees exactly the bytes consumed, in order, and
 * every message view can be read in full.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qstream/qstream.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct ctx {
	const uint8_t *in;
	size_t seen;
	unsigned sum;
};

static int on_raw(void *opaque, const uint8_t *p, size_t n)
{
	struct ctx *c = opaque;

	if (!n || memcmp(p, c->in + c->seen, n))
		abort();
	c->seen += n;
	return 0;
}

static int on_msg(void *opaque, const struct qs_rp_msg *m)
{
	struct ctx *c = opaque;

	for (size_t i = 0; i < m->len; i++)
		c->sum += m->data[i];
	if (m->block)
		c->sum += strlen(m->block);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct qs_rp_handlers h = { .raw = on_raw, .msg = on_msg };
	struct ctx c = { 0 };
	struct qs_rp_parser *p;
	uint32_t seed;
	size_t off = 0, n;
	unsigned mode;
	int r = 0;

	if (size < 4)
		return 0;
	mode = data[0] & 3;
	seed = ((uint32_t)data[1] << 16 | (uint32_t)data[2] << 8 | data[3]) | 1;
	data += 4;
	size -= 4;
	c.in = data;
	p = qs_rp_parser_new(&h, &c);
	if (!p)
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
		r = qs_rp_parser_feed(p, data + off, n);
		off += n;
	}
	if (!r)
		r = qs_rp_parser_finish(p);
	if (r && !qs_rp_parser_error(p)[0])
		abort();
	qs_rp_parser_free(p);
	return 0;
}
