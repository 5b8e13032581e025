#include "common/reader.h"

#include <errno.h>

void tsb_reader_init(struct tsb_reader *r, const void *data, size_t len)
{
	r->data = data;
	r->len = len;
	r->pos = 0;
	r->err = 0;
}

size_t tsb_reader_remaining(const struct tsb_reader *r)
{
	return r->err ? 0 : r->len - r->pos;
}

const uint8_t *tsb_get_bytes(struct tsb_reader *r, size_t n)
{
	const uint8_t *p;

	if (r->err || n > r->len - r->pos) {
		r->err = -EBADMSG;
		return NULL;
	}
	p = r->data + r->pos;
	r->pos += n;
	return p;
}

void tsb_skip(struct tsb_reader *r, size_t n)
{
	(void)tsb_get_bytes(r, n);
}

uint8_t tsb_get_u8(struct tsb_reader *r)
{
	const uint8_t *p = tsb_get_bytes(r, 1);

	return p ? p[0] : 0;
}

uint16_t tsb_get_be16(struct tsb_reader *r)
{
	const uint8_t *p = tsb_get_bytes(r, 2);

	return p ? tsb_load_be16(p) : 0;
}

uint32_t tsb_get_be32(struct tsb_reader *r)
{
	const uint8_t *p = tsb_get_bytes(r, 4);

	return p ? tsb_load_be32(p) : 0;
}

uint64_t tsb_get_be64(struct tsb_reader *r)
{
	const uint8_t *p = tsb_get_bytes(r, 8);

	return p ? tsb_load_be64(p) : 0;
}

void tsb_put_be16(uint8_t *p, uint16_t v)
{
	p[0] = v >> 8;
	p[1] = v;
}

void tsb_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24;
	p[1] = v >> 16;
	p[2] = v >> 8;
	p[3] = v;
}

void tsb_put_be64(uint8_t *p, uint64_t v)
{
	tsb_put_be32(p, v >> 32);
	tsb_put_be32(p + 4, (uint32_t)v);
}

uint16_t tsb_load_be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

uint32_t tsb_load_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	       (uint32_t)p[2] << 8 | p[3];
}

uint64_t tsb_load_be64(const uint8_t *p)
{
	return (uint64_t)tsb_load_be32(p) << 32 | tsb_load_be32(p + 4);
}
