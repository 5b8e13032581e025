/*
 * Writer: the inverse of the parser. RAM records are laid out exactly as
 * QEMU's save_page_header() + payload (migration/ram.c); everything else
 * is the caller's raw bytes.
 */
#include "qstream/qstream.h"

#include "common/reader.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Stream mode: bytes are batched up to this size before out(). */
#define QS_WRITER_BATCH (256u << 10)

struct qs_writer {
	qs_out_fn out;
	void *opaque;
	uint8_t *buf;
	size_t len;
	size_t cap;
	uint32_t page_size;
	int err;
	uint64_t total;
	bool have_last;
	uint8_t last_len;
	char last_name[QS_IDSTR_MAX + 1];
};

struct qs_writer *qs_writer_new(uint32_t page_size, qs_out_fn out,
				void *opaque)
{
	struct qs_writer *w;

	if (page_size < QS_PAGE_SIZE_MIN || page_size > QS_PAGE_SIZE_MAX ||
	    (page_size & (page_size - 1))) {
		errno = EINVAL;
		return NULL;
	}
	w = calloc(1, sizeof(*w));
	if (!w)
		return NULL;
	w->out = out;
	w->opaque = opaque;
	w->page_size = page_size;
	/* buf grows on demand (reserve()): with out, to QS_WRITER_BATCH */
	return w;
}

void qs_writer_free(struct qs_writer *w)
{
	if (!w)
		return;
	free(w->buf);
	free(w);
}

int qs_writer_flush(struct qs_writer *w)
{
	int r;

	if (w->err || !w->out || !w->len)
		return w->err;
	r = w->out(w->opaque, w->buf, w->len);
	w->len = 0;
	if (r < 0)
		w->err = r;
	return w->err;
}

/* Makes room for n more bytes in buf. */
static int reserve(struct qs_writer *w, size_t n)
{
	size_t cap;
	uint8_t *nb;

	if (w->cap - w->len >= n)
		return 0;
	if (w->out && n > QS_WRITER_BATCH - w->len) {
		/* Out in batches of at most QS_WRITER_BATCH bytes (callers
		 * never reserve more than that). */
		if (qs_writer_flush(w))
			return w->err;
		if (w->cap >= n)
			return 0;
	}
	cap = w->cap ? w->cap : 64 << 10;
	while (cap - w->len < n) {
		if (cap > SIZE_MAX / 2)
			return w->err = -ENOMEM;
		cap *= 2;
	}
	if (w->out && cap > QS_WRITER_BATCH && n <= QS_WRITER_BATCH - w->len)
		cap = QS_WRITER_BATCH;
	nb = realloc(w->buf, cap);
	if (!nb)
		return w->err = -ENOMEM;
	w->buf = nb;
	w->cap = cap;
	return 0;
}

int qs_writer_raw(struct qs_writer *w, const void *p, size_t n)
{
	int r;

	if (w->err)
		return w->err;
	if (w->out && n >= QS_WRITER_BATCH / 2) {
		/* Large pieces go out directly, without a copy. */
		if (qs_writer_flush(w))
			return w->err;
		r = w->out(w->opaque, p, n);
		if (r < 0)
			return w->err = r;
		w->total += n;
		return 0;
	}
	if (reserve(w, n))
		return w->err;
	if (n)
		memcpy(w->buf + w->len, p, n);
	w->len += n;
	w->total += n;
	return 0;
}

int qs_writer_page(struct qs_writer *w, const struct qs_page *pg)
{
	const struct qs_block *b = pg->block;
	uint32_t flags;
	size_t need, payload;
	uint8_t *q;
	bool cont;

	if (w->err)
		return w->err;
	if (!b || b->name_len == 0 || (pg->offset & (w->page_size - 1)))
		return -EINVAL;
	switch (pg->kind) {
	case QS_PAGE_ZERO:
		flags = QS_RAM_ZERO;
		payload = 1;
		break;
	case QS_PAGE_NORMAL:
		if (pg->len != w->page_size || !pg->data)
			return -EINVAL;
		flags = QS_RAM_PAGE;
		payload = pg->len;
		break;
	case QS_PAGE_XBZRLE:
		if (pg->len > w->page_size || (pg->len && !pg->data))
			return -EINVAL;
		flags = QS_RAM_XBZRLE;
		payload = 3 + pg->len;
		break;
	default:
		return -EINVAL;
	}
	cont = pg->cont && w->have_last && w->last_len == b->name_len &&
	       !memcmp(w->last_name, b->name, b->name_len);
	if (cont)
		flags |= QS_RAM_CONTINUE;
	need = 8 + (cont ? 0 : 1 + b->name_len) + payload;
	if (reserve(w, need))
		return w->err;

	q = w->buf + w->len;
	tsb_put_be64(q, pg->offset | flags);
	q += 8;
	if (!cont) {
		*q++ = b->name_len;
		memcpy(q, b->name, b->name_len);
		q += b->name_len;
		w->have_last = true;
		w->last_len = b->name_len;
		memcpy(w->last_name, b->name, b->name_len);
	}
	switch (pg->kind) {
	case QS_PAGE_ZERO:
		*q++ = pg->fill;
		break;
	case QS_PAGE_NORMAL:
		memcpy(q, pg->data, pg->len);
		q += pg->len;
		break;
	default:
		*q++ = 1; /* ENCODING_FLAG_XBZRLE */
		tsb_put_be16(q, (uint16_t)pg->len);
		q += 2;
		if (pg->len)
			memcpy(q, pg->data, pg->len);
		q += pg->len;
		break;
	}
	w->len += need;
	w->total += need;
	return 0;
}

void qs_writer_forget_block(struct qs_writer *w)
{
	w->have_last = false;
}

const uint8_t *qs_writer_buffer(const struct qs_writer *w, size_t *ret_len)
{
	*ret_len = w->out ? 0 : w->len;
	return w->out ? NULL : w->buf;
}

void qs_writer_buffer_reset(struct qs_writer *w)
{
	if (!w->out)
		w->len = 0;
}

uint64_t qs_writer_offset(const struct qs_writer *w)
{
	return w->total;
}
