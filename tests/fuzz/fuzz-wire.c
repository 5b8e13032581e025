/*
 * Fuzz target for the WAN protocol decoders (src/wire/frame.c, msg.c).
 *
 * Input byte 0 picks the mode:
 *   bit 7 set:   byte 1 = message type, byte 2 = frame flags, the rest is
 *                one payload for wire_msg_decode() (reaches every
 *                validator directly);
 *   bit 7 clear: the rest is a byte stream of frames fed to the
 *                resumable decoder in chunks of (byte 0 & 0x7f) + 1 bytes,
 *                each complete frame then decoded.
 * Every accepted message is then used the way a receiver would: lists
 * iterated, literal areas and runs unpacked, deltas applied.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common/buf.h"
#include "wire/codec.h"
#include "wire/wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct wire_zstd *zs;
static struct tsb_buf scratch;

static void use_pages(const struct wire_pages *p)
{
	static uint8_t base[WIRE_MAX_PAGE_SIZE], out[WIRE_MAX_PAGE_SIZE];
	struct wire_page_iter it;
	struct wire_page_entry e;
	const uint8_t *lit;
	unsigned int n = 0, n_data = 0;
	volatile uint8_t sink = 0;

	wire_pages_iter_init(p, &it);
	while (wire_pages_next(&it, &e)) {
		n++;
		if (e.enc == WIRE_ENC_DATA)
			n_data++;
		if (e.enc == WIRE_ENC_DELTA)
			(void)wire_delta_apply(zs, base, e.bytes, e.bytes_len,
					       out, p->page_size);
	}
	/* The decoder validated the entries: the iterator must agree. */
	if (n != p->count || n_data != p->n_data)
		__builtin_trap();
	if (wire_pages_unpack(p, zs, &scratch, &lit) == 0 && p->n_data)
		sink ^= lit[(size_t)p->n_data * p->page_size - 1];
	(void)sink;
}

static void use_msg(const struct wire_msg *m)
{
	struct wire_blocks_iter bi;
	struct wire_block b;
	const uint8_t *out;
	unsigned int n = 0;

	switch (m->type) {
	case WIRE_MSG_BLOCKS:
		wire_blocks_iter_init(&m->u.blocks, &bi);
		while (wire_blocks_next(&bi, &b))
			n++;
		if (n != m->u.blocks.count)
			__builtin_trap();
		break;
	case WIRE_MSG_PAGES:
		use_pages(&m->u.pages);
		break;
	case WIRE_MSG_HASHDATA:
		(void)wire_hashdata_unpack(&m->u.hashdata, zs, &scratch, &out);
		break;
	case WIRE_MSG_STREAM:
	case WIRE_MSG_RETURN:
		(void)wire_run_unpack(&m->u.run, zs, &scratch, &out);
		break;
	default:
		break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct wire_decoder d;
	struct wire_frame f;
	struct wire_msg m;
	size_t pos, chunk, n, used;
	int r;

	if (!zs) {
		zs = wire_zstd_new(1);
		tsb_buf_init(&scratch);
		if (!zs)
			return 0;
	}
	if (size < 1)
		return 0;
	if (data[0] & 0x80) {
		if (size < 3)
			return 0;
		if (wire_msg_decode(data[1], data[2], data + 3, size - 3, &m) == 0)
			use_msg(&m);
		return 0;
	}
	chunk = (size_t)(data[0] & 0x7f) + 1;
	wire_decoder_init(&d);
	for (pos = 1; pos < size;) {
		n = size - pos < chunk ? size - pos : chunk;
		r = wire_decoder_feed(&d, data + pos, n, &used, &f);
		if (r < 0)
			break;
		pos += used;
		if (r == 1 && wire_frame_decode(&f, &m) == 0)
			use_msg(&m);
	}
	wire_decoder_fini(&d);
	return 0;
}
