/*
 * Message codecs, protocol version 1. Layouts: docs/protocol.md.
 * Decoders validate the whole payload before returning anything.
 */
#include "wire/wire.h"
#include "wire/codec.h"
#include "wire/internal.h"

#include <errno.h>
#include <string.h>

/* ---- shared checks ---- */

static bool is_pow2_page(uint32_t v)
{
	return v >= WIRE_MIN_PAGE_SIZE && v <= WIRE_MAX_PAGE_SIZE &&
	       !(v & (v - 1));
}

/* Ids: printable ASCII without spaces, so they can be logged and used as names. */
static bool id_ok(const uint8_t *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] < 0x21 || p[i] > 0x7e)
			return false;
	return true;
}

/* Free text: no control characters (UTF-8 beyond ASCII allowed). */
static bool text_ok(const uint8_t *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
}

/* RAMBlock idstr: printable ASCII, spaces allowed. */
static bool name_ok(const uint8_t *p, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (p[i] < 0x20 || p[i] > 0x7e)
			return false;
	return true;
}

/* u8 length + bytes; -EMSGSIZE over max, -EBADMSG if truncated or not an id. */
static int get_id(struct tsb_reader *r, size_t max, struct wire_str *ret)
{
	uint8_t n = tsb_get_u8(r);
	const uint8_t *p;

	if (r->err)
		return r->err;
	if (n > max)
		return -EMSGSIZE;
	p = tsb_get_bytes(r, n);
	if (!p)
		return r->err;
	if (!id_ok(p, n))
		return -EBADMSG;
	ret->p = (const char *)p;
	ret->len = n;
	return 0;
}

/*
 * Checks a literal area: raw it must be exactly want bytes, zstd it must
 * be one frame declaring exactly want bytes.
 */
static int check_literal(bool zstd, const uint8_t *p, size_t len, size_t want)
{
	size_t size;
	int r;

	if (!zstd)
		return len == want ? 0 : -EBADMSG;
	if (!want)
		return -EBADMSG;
	r = wire_zstd_frame_size(p, len, want, &size);
	if (r == -EMSGSIZE)
		return -EBADMSG;
	if (r < 0)
		return r;
	return size == want ? 0 : -EBADMSG;
}

/* ---- decoders ---- */

int wire_hello_peek_version(const uint8_t *payload, size_t len, uint16_t *ret)
{
	struct tsb_reader r;
	const uint8_t *magic;
	uint16_t v;

	tsb_reader_init(&r, payload, len);
	magic = tsb_get_bytes(&r, 4);
	v = tsb_get_be16(&r);
	if (r.err)
		return r.err;
	if (memcmp(magic, WIRE_MAGIC, 4))
		return -EBADMSG;
	*ret = v;
	return 0;
}

static int decode_hello(struct tsb_reader *r, struct wire_hello *h)
{
	const uint8_t *magic;
	uint8_t reserved;
	int err;

	magic = tsb_get_bytes(r, 4);
	h->version = tsb_get_be16(r);
	if (r->err)
		return r->err;
	if (memcmp(magic, WIRE_MAGIC, 4))
		return -EBADMSG;
	/* Check the version first: a later version may lay out the rest differently. */
	if (h->version != WIRE_VERSION)
		return -EOPNOTSUPP;
	h->role = tsb_get_u8(r);
	reserved = tsb_get_u8(r);
	h->caps = tsb_get_be64(r);
	if (r->err)
		return r->err;
	if (reserved)
		return -EBADMSG;
	if (h->role != WIRE_ROLE_SENDER && h->role != WIRE_ROLE_RECEIVER)
		return -EBADMSG;
	err = get_id(r, WIRE_MAX_ID, &h->site);
	if (err)
		return err;
	if (!h->site.len)
		return -EBADMSG;
	if ((err = get_id(r, WIRE_MAX_ID, &h->migration)) ||
	    (err = get_id(r, WIRE_MAX_ID, &h->vm)) ||
	    (err = get_id(r, WIRE_MAX_ID, &h->tenant)))
		return err;
	h->store_gen = tsb_get_be64(r);
	h->filter_kind = tsb_get_be16(r);
	h->filter_len = tsb_get_be32(r);
	if (r->err)
		return r->err;
	if (h->filter_len > WIRE_MAX_FILTER)
		return -EMSGSIZE;
	if (!h->filter_kind && h->filter_len)
		return -EBADMSG;
	h->filter = tsb_get_bytes(r, h->filter_len);
	return r->err;
}

static int decode_block(struct tsb_reader *r, struct wire_block *b)
{
	const uint8_t *p;
	uint8_t n;

	b->index = tsb_get_be16(r);
	n = tsb_get_u8(r);
	p = tsb_get_bytes(r, n);
	b->used_length = tsb_get_be64(r);
	if (r->err)
		return r->err;
	if (b->index >= WIRE_MAX_BLOCKS)
		return -EMSGSIZE;
	if (!n || !name_ok(p, n))
		return -EBADMSG;
	b->name.p = (const char *)p;
	b->name.len = n;
	return 0;
}

static int decode_blocks(struct tsb_reader *r, struct wire_blocks *b)
{
	uint8_t seen[WIRE_MAX_BLOCKS / 8] = { 0 };
	struct wire_block e;
	size_t start;
	uint16_t i;
	int err;

	b->count = tsb_get_be16(r);
	if (r->err)
		return r->err;
	if (!b->count)
		return -EBADMSG;
	if (b->count > WIRE_MAX_BLOCKS)
		return -EMSGSIZE;
	start = r->pos;
	for (i = 0; i < b->count; i++) {
		err = decode_block(r, &e);
		if (err)
			return err;
		if (seen[e.index / 8] & (1u << (e.index % 8)))
			return -EBADMSG;
		seen[e.index / 8] |= 1u << (e.index % 8);
	}
	b->entries = r->data + start;
	b->entries_len = r->pos - start;
	return 0;
}

static int decode_run(struct tsb_reader *r, uint8_t flags, struct wire_run *run)
{
	size_t len = tsb_reader_remaining(r);
	const uint8_t *p = tsb_get_bytes(r, len);
	int err;

	if (!len)
		return -EBADMSG;
	run->zstd = flags & WIRE_F_ZSTD;
	run->data = p;
	run->len = len;
	run->raw_len = len;
	if (!run->zstd)
		return 0;
	err = wire_zstd_frame_size(p, len, WIRE_MAX_RUN, &run->raw_len);
	if (err)
		return err;
	return run->raw_len ? 0 : -EBADMSG;
}

/*
 * One PAGES entry. Also used by the iterator on validated input, so it
 * must not depend on anything but the reader and page size.
 */
static int decode_page_entry(struct tsb_reader *r, uint32_t page_size,
			     struct wire_page_entry *e)
{
	size_t size;
	int err;

	e->block = tsb_get_be16(r);
	e->qflags = tsb_get_be16(r);
	e->offset = tsb_get_be64(r);
	e->enc = tsb_get_u8(r);
	e->fill = 0;
	e->hash = NULL;
	e->base = NULL;
	e->bytes = NULL;
	e->bytes_len = 0;
	e->count = 1;
	if (r->err)
		return r->err;
	if (e->block >= WIRE_MAX_BLOCKS)
		return -EMSGSIZE;
	/* QEMU record flags live in the low bits of a page-aligned header. */
	if (e->qflags >= page_size || (e->offset & (page_size - 1)))
		return -EBADMSG;
	switch (e->enc) {
	case WIRE_ENC_ZERO:
		e->fill = tsb_get_u8(r);
		break;
	case WIRE_ENC_DATA:
		break;
	case WIRE_ENC_REF:
	case WIRE_ENC_SAME:
	case WIRE_ENC_LIVE:
		e->hash = tsb_get_bytes(r, WIRE_HASH_LEN);
		break;
	case WIRE_ENC_SAMERUN:
		e->count = tsb_get_be16(r);
		e->hash = tsb_get_bytes(r, WIRE_HASH_LEN);
		if (r->err)
			return r->err;
		if (e->count < 2)
			return -EBADMSG;
		if (e->count > WIRE_MAX_SAMERUN)
			return -EMSGSIZE;
		if (e->offset > UINT64_MAX - (uint64_t)e->count * page_size)
			return -EBADMSG;
		break;
	case WIRE_ENC_DELTA:
	case WIRE_ENC_RAW:
		if (e->enc == WIRE_ENC_DELTA) {
			e->base = tsb_get_bytes(r, WIRE_HASH_LEN);
			e->hash = tsb_get_bytes(r, WIRE_HASH_LEN);
		}
		e->bytes_len = tsb_get_be32(r);
		if (r->err)
			return r->err;
		if (!e->bytes_len)
			return -EBADMSG;
		if (e->bytes_len > WIRE_MAX_ENTRY_BYTES)
			return -EMSGSIZE;
		e->bytes = tsb_get_bytes(r, e->bytes_len);
		if (r->err)
			return r->err;
		if (e->enc == WIRE_ENC_DELTA) {
			err = wire_zstd_frame_size(e->bytes, e->bytes_len,
						   page_size, &size);
			if (err == -EMSGSIZE || (!err && size != page_size))
				return -EBADMSG;
			if (err)
				return err;
		}
		break;
	default:
		return -EOPNOTSUPP;
	}
	return r->err;
}

static int decode_pages(struct tsb_reader *r, uint8_t flags,
			struct wire_pages *p)
{
	struct wire_page_entry e;
	uint16_t i, n_data = 0;
	size_t start, lit;
	int err;

	p->page_size = tsb_get_be32(r);
	p->count = tsb_get_be16(r);
	p->n_data = tsb_get_be16(r);
	if (r->err)
		return r->err;
	if (!is_pow2_page(p->page_size) || !p->count)
		return -EBADMSG;
	if (p->count > WIRE_MAX_BATCH_PAGES)
		return -EMSGSIZE;
	if (p->n_data > p->count)
		return -EBADMSG;
	if ((size_t)p->n_data * p->page_size > WIRE_MAX_BATCH_BYTES)
		return -EMSGSIZE;
	start = r->pos;
	for (i = 0; i < p->count; i++) {
		err = decode_page_entry(r, p->page_size, &e);
		if (err)
			return err;
		if (e.enc == WIRE_ENC_DATA)
			n_data++;
	}
	if (n_data != p->n_data)
		return -EBADMSG;
	p->entries = r->data + start;
	p->entries_len = r->pos - start;
	p->zstd = flags & WIRE_F_ZSTD;
	lit = tsb_reader_remaining(r);
	p->literal = tsb_get_bytes(r, lit);
	p->literal_len = lit;
	return check_literal(p->zstd, p->literal, lit,
			     (size_t)p->n_data * p->page_size);
}

static int decode_need(struct tsb_reader *r, struct wire_need *n)
{
	n->count = tsb_get_be16(r);
	if (r->err)
		return r->err;
	if (!n->count)
		return -EBADMSG;
	if (n->count > WIRE_MAX_BATCH_PAGES)
		return -EMSGSIZE;
	n->hashes = tsb_get_bytes(r, (size_t)n->count * WIRE_HASH_LEN);
	return r->err;
}

static int decode_hashdata(struct tsb_reader *r, uint8_t flags,
			   struct wire_hashdata *h)
{
	size_t lit;

	h->obj_size = tsb_get_be32(r);
	h->count = tsb_get_be16(r);
	if (r->err)
		return r->err;
	if (!is_pow2_page(h->obj_size) || !h->count)
		return -EBADMSG;
	if (h->count > WIRE_MAX_BATCH_PAGES ||
	    (size_t)h->count * h->obj_size > WIRE_MAX_BATCH_BYTES)
		return -EMSGSIZE;
	h->hashes = tsb_get_bytes(r, (size_t)h->count * WIRE_HASH_LEN);
	if (r->err)
		return r->err;
	h->zstd = flags & WIRE_F_ZSTD;
	lit = tsb_reader_remaining(r);
	h->literal = tsb_get_bytes(r, lit);
	h->literal_len = lit;
	return check_literal(h->zstd, h->literal, lit,
			     (size_t)h->count * h->obj_size);
}

static int decode_summary(struct tsb_reader *r, struct wire_summary *s)
{
	unsigned i;
	int err;

	s->store_gen = tsb_get_be64(r);
	s->n_images = tsb_get_u8(r);
	if (r->err)
		return r->err;
	if (s->n_images > WIRE_MAX_IMAGES)
		return -EMSGSIZE;
	for (i = 0; i < s->n_images; i++) {
		err = get_id(r, WIRE_MAX_ID, &s->images[i]);
		if (err)
			return err;
		if (!s->images[i].len)
			return -EBADMSG;
	}
	s->n_filters = tsb_get_u8(r);
	if (r->err)
		return r->err;
	if (s->n_filters > WIRE_MAX_FILTERS)
		return -EMSGSIZE;
	for (i = 0; i < s->n_filters; i++) {
		s->filters[i].source = tsb_get_u8(r);
		s->filters[i].len = tsb_get_be32(r);
		if (r->err)
			return r->err;
		if (!s->filters[i].len)
			return -EBADMSG;
		if (s->filters[i].len > WIRE_MAX_FILTER)
			return -EMSGSIZE;
		s->filters[i].data = tsb_get_bytes(r, s->filters[i].len);
		if (r->err)
			return r->err;
	}
	return 0;
}

static int decode_status(struct tsb_reader *r, struct wire_status *s)
{
	const uint8_t *p;
	uint16_t n;

	s->code = tsb_get_be32(r);
	n = tsb_get_be16(r);
	if (r->err)
		return r->err;
	if (n > WIRE_MAX_TEXT)
		return -EMSGSIZE;
	p = tsb_get_bytes(r, n);
	if (!p)
		return r->err;
	if (!text_ok(p, n))
		return -EBADMSG;
	s->text.p = (const char *)p;
	s->text.len = n;
	return 0;
}

int wire_msg_decode(uint8_t type, uint8_t flags, const uint8_t *payload,
		    size_t len, struct wire_msg *ret)
{
	struct wire_msg m;
	struct tsb_reader r;
	int err;

	err = wire_check_type_flags(type, flags);
	if (err)
		return err;
	if (len > WIRE_MAX_PAYLOAD)
		return -EMSGSIZE;
	memset(&m, 0, sizeof(m));
	m.type = type;
	m.flags = flags;
	tsb_reader_init(&r, payload, len);
	switch (type) {
	case WIRE_MSG_HELLO:
		err = decode_hello(&r, &m.u.hello);
		break;
	case WIRE_MSG_BLOCKS:
		err = decode_blocks(&r, &m.u.blocks);
		break;
	case WIRE_MSG_STREAM:
	case WIRE_MSG_RETURN:
		err = decode_run(&r, flags, &m.u.run);
		break;
	case WIRE_MSG_PAGES:
		err = decode_pages(&r, flags, &m.u.pages);
		break;
	case WIRE_MSG_NEED:
		err = decode_need(&r, &m.u.need);
		break;
	case WIRE_MSG_HASHDATA:
		err = decode_hashdata(&r, flags, &m.u.hashdata);
		break;
	case WIRE_MSG_SWITCHOVER:
		err = 0;
		break;
	case WIRE_MSG_DONE:
	case WIRE_MSG_CANCEL:
	case WIRE_MSG_ERROR:
	case WIRE_MSG_PREPARED:
	case WIRE_MSG_DECISION:
	case WIRE_MSG_OUTCOME:
		err = decode_status(&r, &m.u.status);
		break;
	case WIRE_MSG_PROGRESS:
		m.u.progress.stream_bytes = tsb_get_be64(&r);
		m.u.progress.pages = tsb_get_be64(&r);
		m.u.progress.wan_bytes = tsb_get_be64(&r);
		m.u.progress.remaining = tsb_get_be64(&r);
		err = r.err;
		break;
	case WIRE_MSG_ACK:
		m.u.ack = tsb_get_be64(&r);
		err = r.err;
		break;
	case WIRE_MSG_PING:
	case WIRE_MSG_PONG:
		m.u.ping = tsb_get_be64(&r);
		err = r.err;
		break;
	case WIRE_MSG_SUMMARY:
		err = decode_summary(&r, &m.u.summary);
		break;
	case WIRE_MSG_BASE:
		err = get_id(&r, WIRE_MAX_ID, &m.u.base);
		if (!err && !m.u.base.len)
			err = -EBADMSG;
		break;
	case WIRE_MSG_LANE:
		m.u.lane.index = tsb_get_be16(&r);
		m.u.lane.count = tsb_get_be16(&r);
		err = r.err;
		if (!err && (m.u.lane.count < 2 || m.u.lane.count > WIRE_MAX_LANES ||
			     m.u.lane.index >= m.u.lane.count))
			err = -EBADMSG;
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (err)
		return err;
	/* Every layout is exact: trailing bytes are an error. */
	if (r.err || tsb_reader_remaining(&r))
		return -EBADMSG;
	*ret = m;
	return 0;
}

int wire_frame_decode(const struct wire_frame *f, struct wire_msg *ret)
{
	return wire_msg_decode(f->type, f->flags, f->payload, f->len, ret);
}

/* ---- iterators over validated lists ---- */

void wire_blocks_iter_init(const struct wire_blocks *b,
			   struct wire_blocks_iter *it)
{
	tsb_reader_init(&it->r, b->entries, b->entries_len);
	it->left = b->count;
}

bool wire_blocks_next(struct wire_blocks_iter *it, struct wire_block *ret)
{
	struct wire_block b;

	if (!it->left || decode_block(&it->r, &b))
		return false;
	it->left--;
	*ret = b;
	return true;
}

void wire_pages_iter_init(const struct wire_pages *p, struct wire_page_iter *it)
{
	tsb_reader_init(&it->r, p->entries, p->entries_len);
	it->page_size = p->page_size;
	it->left = p->count;
	it->data_index = 0;
}

bool wire_pages_next(struct wire_page_iter *it, struct wire_page_entry *ret)
{
	struct wire_page_entry e;

	if (!it->left || !is_pow2_page(it->page_size) ||
	    decode_page_entry(&it->r, it->page_size, &e))
		return false;
	it->left--;
	e.data_index = 0;
	if (e.enc == WIRE_ENC_DATA)
		e.data_index = it->data_index++;
	*ret = e;
	return true;
}

/* ---- unpacking ---- */

static int unpack(bool zstd, const uint8_t *p, size_t len, size_t want,
		  struct wire_zstd *z, struct tsb_buf *scratch,
		  const uint8_t **ret_data)
{
	size_t got;
	int err;

	if (!zstd) {
		if (len != want)
			return -EBADMSG;
		*ret_data = p;
		return 0;
	}
	if (!z)
		return -EINVAL;
	tsb_buf_reset(scratch);
	err = tsb_buf_reserve(scratch, want);
	if (err)
		return err;
	err = wire_zstd_decompress(z, p, len, scratch->data, want, &got);
	if (err == -EMSGSIZE || (!err && got != want))
		return -EBADMSG;
	if (err)
		return err;
	scratch->len = got;
	*ret_data = scratch->data;
	return 0;
}

int wire_pages_unpack(const struct wire_pages *p, struct wire_zstd *z,
		      struct tsb_buf *scratch, const uint8_t **ret_data)
{
	return unpack(p->zstd, p->literal, p->literal_len,
		      (size_t)p->n_data * p->page_size, z, scratch, ret_data);
}

int wire_hashdata_unpack(const struct wire_hashdata *h, struct wire_zstd *z,
			 struct tsb_buf *scratch, const uint8_t **ret_data)
{
	return unpack(h->zstd, h->literal, h->literal_len,
		      (size_t)h->count * h->obj_size, z, scratch, ret_data);
}

int wire_run_unpack(const struct wire_run *run, struct wire_zstd *z,
		    struct tsb_buf *scratch, const uint8_t **ret_data)
{
	return unpack(run->zstd, run->data, run->len, run->raw_len, z, scratch,
		      ret_data);
}

/* ---- encoders ---- */

/* Appends a header with length 0; returns where the frame starts. */
static size_t frame_begin(struct tsb_buf *out, uint8_t type, uint8_t flags)
{
	size_t start = out->len;
	uint8_t *h = tsb_buf_extend(out, WIRE_HDR_LEN);

	if (h) {
		h[0] = type;
		h[1] = flags;
		h[2] = h[3] = 0;
		tsb_put_be32(h + 4, 0);
	}
	return start;
}

/* Patches the length; on any error drops the partial frame. */
static int frame_end(struct tsb_buf *out, size_t start, int err)
{
	size_t len;

	if (!err && out->err)
		err = out->err;
	if (!err) {
		len = out->len - start - WIRE_HDR_LEN;
		if (len > WIRE_MAX_PAYLOAD)
			err = -EMSGSIZE;
		else
			tsb_put_be32(out->data + start + 4, (uint32_t)len);
	}
	if (err && out->len > start)
		out->len = start;
	return err;
}

static void set_flags(struct tsb_buf *out, size_t start, uint8_t flags)
{
	if (!out->err)
		out->data[start + 1] = flags;
}

static int put_id(struct tsb_buf *out, const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n > WIRE_MAX_ID || !id_ok((const uint8_t *)s, n))
		return -EINVAL;
	tsb_buf_put_u8(out, (uint8_t)n);
	return tsb_buf_append(out, s, n);
}

int wire_encode_hello(struct tsb_buf *out, const struct wire_hello_args *a)
{
	size_t start;
	int err;

	if ((a->role != WIRE_ROLE_SENDER && a->role != WIRE_ROLE_RECEIVER) ||
	    !a->site || !a->site[0] || a->filter_len > WIRE_MAX_FILTER ||
	    (!a->filter_kind && a->filter_len) ||
	    (a->filter_len && !a->filter))
		return -EINVAL;
	start = frame_begin(out, WIRE_MSG_HELLO, 0);
	tsb_buf_append(out, WIRE_MAGIC, 4);
	tsb_buf_put_be16(out, WIRE_VERSION);
	tsb_buf_put_u8(out, a->role);
	tsb_buf_put_u8(out, 0);
	tsb_buf_put_be64(out, a->caps);
	err = put_id(out, a->site);
	if (!err)
		err = put_id(out, a->migration);
	if (!err)
		err = put_id(out, a->vm);
	if (!err)
		err = put_id(out, a->tenant);
	tsb_buf_put_be64(out, a->store_gen);
	tsb_buf_put_be16(out, a->filter_kind);
	tsb_buf_put_be32(out, a->filter_len);
	tsb_buf_append(out, a->filter, a->filter_len);
	return frame_end(out, start, err);
}

int wire_encode_blocks(struct tsb_buf *out, const struct wire_block *blocks,
		       size_t count)
{
	uint8_t seen[WIRE_MAX_BLOCKS / 8] = { 0 };
	size_t start, i;
	uint16_t idx;

	if (!count || count > WIRE_MAX_BLOCKS)
		return -EINVAL;
	for (i = 0; i < count; i++) {
		idx = blocks[i].index;
		if (idx >= WIRE_MAX_BLOCKS || !blocks[i].name.len ||
		    blocks[i].name.len > 255 ||
		    !name_ok((const uint8_t *)blocks[i].name.p,
			     blocks[i].name.len) ||
		    (seen[idx / 8] & (1u << (idx % 8))))
			return -EINVAL;
		seen[idx / 8] |= 1u << (idx % 8);
	}
	start = frame_begin(out, WIRE_MSG_BLOCKS, 0);
	tsb_buf_put_be16(out, (uint16_t)count);
	for (i = 0; i < count; i++) {
		tsb_buf_put_be16(out, blocks[i].index);
		tsb_buf_put_u8(out, (uint8_t)blocks[i].name.len);
		tsb_buf_append(out, blocks[i].name.p, blocks[i].name.len);
		tsb_buf_put_be64(out, blocks[i].used_length);
	}
	return frame_end(out, start, 0);
}

/*
 * Appends data compressed when z is set and that helps, else raw; sets
 * the frame's ZSTD flag accordingly.
 */
static int put_bulk(struct tsb_buf *out, size_t start, const void *data,
		    size_t len, struct wire_zstd *z)
{
	size_t at = out->len;
	ssize_t n;

	if (z && len) {
		n = wire_zstd_compress(z, data, len, out);
		if (n < 0)
			return (int)n;
		if ((size_t)n < len) {
			set_flags(out, start, WIRE_F_ZSTD);
			return 0;
		}
		out->len = at;
	}
	return tsb_buf_append(out, data, len);
}

int wire_encode_run(struct tsb_buf *out, uint8_t type, const void *data,
		    size_t len, struct wire_zstd *z)
{
	size_t start;
	int err;

	if ((type != WIRE_MSG_STREAM && type != WIRE_MSG_RETURN) || !len ||
	    len > WIRE_MAX_RUN)
		return -EINVAL;
	start = frame_begin(out, type, 0);
	err = put_bulk(out, start, data, len, z);
	return frame_end(out, start, err);
}

int wire_encode_base(struct tsb_buf *out, const char *image_id)
{
	size_t start, n = image_id ? strlen(image_id) : 0;

	if (!n || n > WIRE_MAX_ID || !id_ok((const uint8_t *)image_id, n))
		return -EINVAL;
	start = frame_begin(out, WIRE_MSG_BASE, 0);
	tsb_buf_put_u8(out, (uint8_t)n);
	tsb_buf_append(out, image_id, n);
	return frame_end(out, start, 0);
}

int wire_encode_lane(struct tsb_buf *out, unsigned index, unsigned count)
{
	size_t start;

	if (count < 2 || count > WIRE_MAX_LANES || index >= count)
		return -EINVAL;
	start = frame_begin(out, WIRE_MSG_LANE, 0);
	tsb_buf_put_be16(out, (uint16_t)index);
	tsb_buf_put_be16(out, (uint16_t)count);
	return frame_end(out, start, 0);
}

int wire_encode_summary(struct tsb_buf *out, const struct wire_summary *s)
{
	size_t start, total = 8 + 2, i;

	if (s->n_images > WIRE_MAX_IMAGES || s->n_filters > WIRE_MAX_FILTERS)
		return -EINVAL;
	for (i = 0; i < s->n_images; i++) {
		if (!s->images[i].len || s->images[i].len > WIRE_MAX_ID ||
		    !id_ok((const uint8_t *)s->images[i].p, s->images[i].len))
			return -EINVAL;
		total += 1 + s->images[i].len;
	}
	for (i = 0; i < s->n_filters; i++) {
		if (!s->filters[i].len || s->filters[i].len > WIRE_MAX_FILTER)
			return -EINVAL;
		total += 5 + s->filters[i].len;
	}
	if (total > WIRE_MAX_PAYLOAD)
		return -EMSGSIZE;
	start = frame_begin(out, WIRE_MSG_SUMMARY, 0);
	tsb_buf_put_be64(out, s->store_gen);
	tsb_buf_put_u8(out, s->n_images);
	for (i = 0; i < s->n_images; i++) {
		tsb_buf_put_u8(out, (uint8_t)s->images[i].len);
		tsb_buf_append(out, s->images[i].p, s->images[i].len);
	}
	tsb_buf_put_u8(out, s->n_filters);
	for (i = 0; i < s->n_filters; i++) {
		tsb_buf_put_u8(out, s->filters[i].source);
		tsb_buf_put_be32(out, s->filters[i].len);
		tsb_buf_append(out, s->filters[i].data, s->filters[i].len);
	}
	return frame_end(out, start, 0);
}

int wire_encode_need(struct tsb_buf *out, const uint8_t (*hashes)[WIRE_HASH_LEN],
		     size_t count)
{
	size_t start;

	if (!count || count > WIRE_MAX_BATCH_PAGES)
		return -EINVAL;
	start = frame_begin(out, WIRE_MSG_NEED, 0);
	tsb_buf_put_be16(out, (uint16_t)count);
	tsb_buf_append(out, hashes, count * WIRE_HASH_LEN);
	return frame_end(out, start, 0);
}

int wire_encode_hashdata(struct tsb_buf *out, uint32_t obj_size,
			 const uint8_t (*hashes)[WIRE_HASH_LEN],
			 const uint8_t *data, size_t count, struct wire_zstd *z)
{
	size_t start;
	int err;

	if (!is_pow2_page(obj_size) || !count || count > WIRE_MAX_BATCH_PAGES ||
	    count * obj_size > WIRE_MAX_BATCH_BYTES)
		return -EINVAL;
	start = frame_begin(out, WIRE_MSG_HASHDATA, 0);
	tsb_buf_put_be32(out, obj_size);
	tsb_buf_put_be16(out, (uint16_t)count);
	tsb_buf_append(out, hashes, count * WIRE_HASH_LEN);
	err = put_bulk(out, start, data, count * obj_size, z);
	return frame_end(out, start, err);
}

int wire_encode_status(struct tsb_buf *out, uint8_t type, uint32_t code,
		       const char *text)
{
	size_t n = text ? strlen(text) : 0, start;

	if (type != WIRE_MSG_DONE && type != WIRE_MSG_CANCEL &&
	    type != WIRE_MSG_ERROR && type != WIRE_MSG_PREPARED &&
	    type != WIRE_MSG_DECISION && type != WIRE_MSG_OUTCOME)
		return -EINVAL;
	/* Local text is ours: clip rather than fail, keep it printable. */
	if (n > WIRE_MAX_TEXT)
		n = WIRE_MAX_TEXT;
	if (!text_ok((const uint8_t *)text, n))
		return -EINVAL;
	start = frame_begin(out, type, 0);
	tsb_buf_put_be32(out, code);
	tsb_buf_put_be16(out, (uint16_t)n);
	tsb_buf_append(out, text, n);
	return frame_end(out, start, 0);
}

int wire_encode_progress(struct tsb_buf *out, const struct wire_progress *p)
{
	size_t start = frame_begin(out, WIRE_MSG_PROGRESS, 0);

	tsb_buf_put_be64(out, p->stream_bytes);
	tsb_buf_put_be64(out, p->pages);
	tsb_buf_put_be64(out, p->wan_bytes);
	tsb_buf_put_be64(out, p->remaining);
	return frame_end(out, start, 0);
}

int wire_encode_empty(struct tsb_buf *out, uint8_t type)
{
	if (type != WIRE_MSG_SWITCHOVER)
		return -EINVAL;
	return frame_end(out, frame_begin(out, type, 0), 0);
}

int wire_encode_u64(struct tsb_buf *out, uint8_t type, uint64_t v)
{
	size_t start;

	if (type != WIRE_MSG_ACK && type != WIRE_MSG_PING &&
	    type != WIRE_MSG_PONG)
		return -EINVAL;
	start = frame_begin(out, type, 0);
	tsb_buf_put_be64(out, v);
	return frame_end(out, start, 0);
}

/* ---- PAGES builder ---- */

#define PAGES_FIXED 8 /* be32 page_size, be16 count, be16 n_data */
#define ENTRY_FIXED 13 /* be16 block, be16 qflags, be64 offset, u8 enc */

int wire_pages_builder_init(struct wire_pages_builder *pb, uint32_t page_size)
{
	if (!is_pow2_page(page_size))
		return -EINVAL;
	memset(pb, 0, sizeof(*pb));
	pb->page_size = page_size;
	tsb_buf_init(&pb->entries);
	tsb_buf_init(&pb->literal);
	return 0;
}

void wire_pages_builder_fini(struct wire_pages_builder *pb)
{
	if (!pb)
		return;
	tsb_buf_fini(&pb->entries);
	tsb_buf_fini(&pb->literal);
	pb->count = pb->n_data = 0;
}

void wire_pages_builder_reset(struct wire_pages_builder *pb)
{
	tsb_buf_reset(&pb->entries);
	tsb_buf_reset(&pb->literal);
	pb->count = pb->n_data = 0;
}

size_t wire_pages_builder_size(const struct wire_pages_builder *pb)
{
	return PAGES_FIXED + pb->entries.len + pb->literal.len;
}

/* Checks room for one entry of extra bytes (+ one literal page if data). */
static int pages_room(struct wire_pages_builder *pb, uint16_t block,
		      uint16_t qflags, uint64_t offset, size_t extra, bool data)
{
	size_t lit = data ? pb->page_size : 0;

	if (block >= WIRE_MAX_BLOCKS || qflags >= pb->page_size ||
	    (offset & (pb->page_size - 1)))
		return -EINVAL;
	if (pb->entries.err || pb->literal.err)
		return -ENOMEM;
	if (pb->count >= WIRE_MAX_BATCH_PAGES)
		return -ENOBUFS;
	if (data && pb->literal.len + lit > WIRE_MAX_BATCH_BYTES)
		return -ENOBUFS;
	if (wire_pages_builder_size(pb) + ENTRY_FIXED + extra + lit >
	    WIRE_MAX_PAYLOAD)
		return -ENOBUFS;
	return 0;
}

static void put_entry_head(struct wire_pages_builder *pb, uint16_t block,
			   uint16_t qflags, uint64_t offset, uint8_t enc)
{
	tsb_buf_put_be16(&pb->entries, block);
	tsb_buf_put_be16(&pb->entries, qflags);
	tsb_buf_put_be64(&pb->entries, offset);
	tsb_buf_put_u8(&pb->entries, enc);
}

/* Commits or rolls back an entry after its bytes were appended. */
static int entry_done(struct wire_pages_builder *pb, size_t ent_at,
		      size_t lit_at, bool data)
{
	if (pb->entries.err || pb->literal.err) {
		int err = pb->entries.err ? pb->entries.err : pb->literal.err;

		pb->entries.len = ent_at;
		pb->literal.len = lit_at;
		pb->entries.err = pb->literal.err = 0;
		return err;
	}
	pb->count++;
	if (data)
		pb->n_data++;
	return 0;
}

int wire_pages_add_zero(struct wire_pages_builder *pb, uint16_t block,
			uint16_t qflags, uint64_t offset, uint8_t fill)
{
	size_t at = pb->entries.len;
	int err = pages_room(pb, block, qflags, offset, 1, false);

	if (err)
		return err;
	put_entry_head(pb, block, qflags, offset, WIRE_ENC_ZERO);
	tsb_buf_put_u8(&pb->entries, fill);
	return entry_done(pb, at, pb->literal.len, false);
}

int wire_pages_add_data(struct wire_pages_builder *pb, uint16_t block,
			uint16_t qflags, uint64_t offset, const void *page)
{
	size_t at = pb->entries.len, lat = pb->literal.len;
	int err = pages_room(pb, block, qflags, offset, 0, true);

	if (err)
		return err;
	put_entry_head(pb, block, qflags, offset, WIRE_ENC_DATA);
	tsb_buf_append(&pb->literal, page, pb->page_size);
	return entry_done(pb, at, lat, true);
}

int wire_pages_add_ref(struct wire_pages_builder *pb, uint16_t block,
		       uint16_t qflags, uint64_t offset, uint8_t enc,
		       const uint8_t hash[WIRE_HASH_LEN])
{
	size_t at = pb->entries.len;
	int err;

	if (enc != WIRE_ENC_REF && enc != WIRE_ENC_SAME && enc != WIRE_ENC_LIVE)
		return -EINVAL;
	err = pages_room(pb, block, qflags, offset, WIRE_HASH_LEN, false);
	if (err)
		return err;
	put_entry_head(pb, block, qflags, offset, enc);
	tsb_buf_append(&pb->entries, hash, WIRE_HASH_LEN);
	return entry_done(pb, at, pb->literal.len, false);
}

int wire_pages_add_samerun(struct wire_pages_builder *pb, uint16_t block,
			   uint16_t qflags, uint64_t offset, uint16_t count,
			   const uint8_t digest[WIRE_HASH_LEN])
{
	size_t at = pb->entries.len;
	int err;

	if (count < 2 || count > WIRE_MAX_SAMERUN)
		return -EINVAL;
	err = pages_room(pb, block, qflags, offset, 2 + WIRE_HASH_LEN, false);
	if (err)
		return err;
	put_entry_head(pb, block, qflags, offset, WIRE_ENC_SAMERUN);
	tsb_buf_put_be16(&pb->entries, count);
	tsb_buf_append(&pb->entries, digest, WIRE_HASH_LEN);
	return entry_done(pb, at, pb->literal.len, false);
}

int wire_pages_add_delta(struct wire_pages_builder *pb, uint16_t block,
			 uint16_t qflags, uint64_t offset,
			 const uint8_t base[WIRE_HASH_LEN],
			 const uint8_t hash[WIRE_HASH_LEN],
			 const void *delta, size_t len)
{
	size_t at = pb->entries.len, size;
	int err;

	if (!len || len > WIRE_MAX_ENTRY_BYTES ||
	    wire_zstd_frame_size(delta, len, pb->page_size, &size) ||
	    size != pb->page_size)
		return -EINVAL;
	err = pages_room(pb, block, qflags, offset,
			 2 * WIRE_HASH_LEN + 4 + len, false);
	if (err)
		return err;
	put_entry_head(pb, block, qflags, offset, WIRE_ENC_DELTA);
	tsb_buf_append(&pb->entries, base, WIRE_HASH_LEN);
	tsb_buf_append(&pb->entries, hash, WIRE_HASH_LEN);
	tsb_buf_put_be32(&pb->entries, (uint32_t)len);
	tsb_buf_append(&pb->entries, delta, len);
	return entry_done(pb, at, pb->literal.len, false);
}

int wire_pages_add_raw(struct wire_pages_builder *pb, uint16_t block,
		       uint16_t qflags, uint64_t offset, const void *raw,
		       size_t len)
{
	size_t at = pb->entries.len;
	int err;

	if (!len || len > WIRE_MAX_ENTRY_BYTES)
		return -EINVAL;
	err = pages_room(pb, block, qflags, offset, 4 + len, false);
	if (err)
		return err;
	put_entry_head(pb, block, qflags, offset, WIRE_ENC_RAW);
	tsb_buf_put_be32(&pb->entries, (uint32_t)len);
	tsb_buf_append(&pb->entries, raw, len);
	return entry_done(pb, at, pb->literal.len, false);
}

int wire_pages_encode(struct wire_pages_builder *pb, struct tsb_buf *out,
		      struct wire_zstd *z)
{
	size_t start;
	int err;

	if (!pb->count)
		return -EINVAL;
	start = frame_begin(out, WIRE_MSG_PAGES, 0);
	tsb_buf_put_be32(out, pb->page_size);
	tsb_buf_put_be16(out, pb->count);
	tsb_buf_put_be16(out, pb->n_data);
	tsb_buf_append(out, pb->entries.data, pb->entries.len);
	err = put_bulk(out, start, pb->literal.data, pb->literal.len, z);
	return frame_end(out, start, err);
}
