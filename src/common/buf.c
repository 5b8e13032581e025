#include "common/buf.h"
#include "common/reader.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void tsb_buf_init(struct tsb_buf *b)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->err = 0;
}

void tsb_buf_fini(struct tsb_buf *b)
{
	if (!b)
		return;
	free(b->data);
	tsb_buf_init(b);
}

void tsb_buf_reset(struct tsb_buf *b)
{
	b->len = 0;
	b->err = 0;
}

int tsb_buf_reserve(struct tsb_buf *b, size_t n)
{
	size_t want, cap;
	uint8_t *p;

	if (b->err)
		return b->err;
	if (n <= b->cap - b->len)
		return 0;
	if (__builtin_add_overflow(b->len, n, &want))
		goto nomem;
	cap = b->cap ? b->cap : 256;
	while (cap < want) {
		if (__builtin_mul_overflow(cap, 2, &cap))
			goto nomem;
	}
	p = realloc(b->data, cap);
	if (!p)
		goto nomem;
	b->data = p;
	b->cap = cap;
	return 0;
nomem:
	b->err = -ENOMEM;
	return b->err;
}

void *tsb_buf_extend(struct tsb_buf *b, size_t n)
{
	void *p;

	if (tsb_buf_reserve(b, n) < 0)
		return NULL;
	p = b->data + b->len;
	b->len += n;
	return p;
}

int tsb_buf_append(struct tsb_buf *b, const void *p, size_t n)
{
	void *dst;

	if (!n)
		return b->err;
	dst = tsb_buf_extend(b, n);
	if (!dst)
		return b->err;
	memcpy(dst, p, n);
	return 0;
}

int tsb_buf_put_u8(struct tsb_buf *b, uint8_t v)
{
	return tsb_buf_append(b, &v, 1);
}

int tsb_buf_put_be16(struct tsb_buf *b, uint16_t v)
{
	uint8_t *p = tsb_buf_extend(b, 2);

	if (!p)
		return b->err;
	tsb_put_be16(p, v);
	return 0;
}

int tsb_buf_put_be32(struct tsb_buf *b, uint32_t v)
{
	uint8_t *p = tsb_buf_extend(b, 4);

	if (!p)
		return b->err;
	tsb_put_be32(p, v);
	return 0;
}

int tsb_buf_put_be64(struct tsb_buf *b, uint64_t v)
{
	uint8_t *p = tsb_buf_extend(b, 8);

	if (!p)
		return b->err;
	tsb_put_be64(p, v);
	return 0;
}
