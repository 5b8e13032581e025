/* NEED and HASHDATA, both sides, for every channel (need.h). */
#include "wire/need.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct wire_kept {
	struct wire_kept *next;
	uint8_t type, flags;
	struct tsb_buf payload;
};

static void kept_free(struct wire_kept *k)
{
	if (!k)
		return;
	tsb_buf_fini(&k->payload);
	free(k);
}

void wire_backlog_init(struct wire_backlog *b)
{
	memset(b, 0, sizeof(*b));
	b->tail = &b->head;
}

int wire_backlog_keep(struct wire_backlog *b, const struct wire_frame *f)
{
	struct wire_kept *k = calloc(1, sizeof(*k));

	if (!k)
		return -ENOMEM;
	k->type = f->type;
	k->flags = f->flags;
	tsb_buf_init(&k->payload);
	if (tsb_buf_append(&k->payload, f->payload, f->len) < 0) {
		kept_free(k);
		return -ENOMEM;
	}
	*b->tail = k;
	b->tail = &k->next;
	b->bytes += f->len;
	b->frames++;
	return 0;
}

int wire_backlog_take(struct wire_backlog *b, struct wire_frame *f)
{
	struct wire_kept *k = b->head;

	kept_free(b->taken);
	b->taken = NULL;
	if (!k)
		return 0;
	b->head = k->next;
	if (!b->head)
		b->tail = &b->head;
	b->bytes -= k->payload.len;
	b->frames--;
	b->taken = k;
	memset(f, 0, sizeof(*f));
	f->type = k->type;
	f->flags = k->flags;
	f->len = (uint32_t)k->payload.len;
	f->payload = k->payload.data;
	return 1;
}

void wire_backlog_fini(struct wire_backlog *b)
{
	struct wire_kept *k;

	kept_free(b->taken);
	while ((k = b->head)) {
		b->head = k->next;
		kept_free(k);
	}
	wire_backlog_init(b);
}

int wire_fetch(const struct wire_fetch_io *io, struct wire_backlog *bl,
	       const uint8_t (*hashes)[WIRE_HASH_LEN], size_t n)
{
	struct wire_frame f;
	struct wire_msg m;
	struct tsb_buf b;
	int r;

	tsb_buf_init(&b);
	r = wire_encode_need(&b, hashes, n);
	if (r == 0)
		r = io->send(io->opaque, &b);
	tsb_buf_fini(&b);
	while (r == 0) {
		r = io->read(io->opaque, &f);
		if (r == 0)
			return -ECONNRESET;
		if (r < 0)
			return r;
		if (f.type != WIRE_MSG_HASHDATA) {
			r = io->may_keep(io->opaque, &f, bl);
			if (r == 0)
				r = wire_backlog_keep(bl, &f);
			continue;
		}
		r = wire_frame_decode(&f, &m);
		if (r == 0)
			r = io->answer(io->opaque, &m.u.hashdata);
		if (r == 1)
			return 0;
	}
	return r;
}

int wire_need_answer(const struct wire_need *need, uint32_t obj_size, wire_need_lookup_fn lookup,
		     void *opaque, struct wire_zstd *z, struct tsb_buf *frame)
{
	uint8_t (*hashes)[WIRE_HASH_LEN];
	uint8_t *data;
	size_t i;
	int r = 0;

	/* + 1: a NEED of nothing still gets its (empty) answer. */
	hashes = malloc((size_t)need->count * WIRE_HASH_LEN + 1);
	data = malloc((size_t)need->count * obj_size + 1);
	if (!hashes || !data)
		r = -ENOMEM;
	for (i = 0; r == 0 && i < need->count; i++) {
		memcpy(hashes[i], need->hashes + i * WIRE_HASH_LEN, WIRE_HASH_LEN);
		r = lookup(opaque, hashes[i], data + i * obj_size);
	}
	if (r == 0)
		r = wire_encode_hashdata(frame, obj_size, (const uint8_t (*)[WIRE_HASH_LEN])hashes,
					 data, need->count, z);
	free(hashes);
	free(data);
	return r;
}
