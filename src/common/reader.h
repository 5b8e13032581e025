/*
 * Bounded reader over an untrusted byte buffer. Every getter checks what
 * remains before it touches memory; the first failure is sticky, so a run
 * of reads ends with one check of r->err. Integers are big-endian.
 */
#ifndef TSB_READER_H
#define TSB_READER_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

struct tsb_reader {
	const uint8_t *data;
	size_t len;
	size_t pos;
	int err; /* 0 or -EBADMSG after a read past the end */
};

void tsb_reader_init(struct tsb_reader *r, const void *data, size_t len);
size_t tsb_reader_remaining(const struct tsb_reader *r);

uint8_t tsb_get_u8(struct tsb_reader *r);
uint16_t tsb_get_be16(struct tsb_reader *r);
uint32_t tsb_get_be32(struct tsb_reader *r);
uint64_t tsb_get_be64(struct tsb_reader *r);
/* Returns a view of n bytes inside the buffer, or NULL (and sets err). */
const uint8_t *tsb_get_bytes(struct tsb_reader *r, size_t n);
void tsb_skip(struct tsb_reader *r, size_t n);

/* Big-endian stores into a caller-sized buffer. */
void tsb_put_be16(uint8_t *p, uint16_t v);
void tsb_put_be32(uint8_t *p, uint32_t v);
void tsb_put_be64(uint8_t *p, uint64_t v);
uint16_t tsb_load_be16(const uint8_t *p);
uint32_t tsb_load_be32(const uint8_t *p);
uint64_t tsb_load_be64(const uint8_t *p);

#endif
