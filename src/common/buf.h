/*
 * Growable byte buffer for encoders. Appends that fail to allocate set a
 * sticky b->err (-ENOMEM) and do nothing more, so a run of appends ends
 * with one check, like struct tsb_reader. Integers are big-endian.
 */
#ifndef TSB_BUF_H
#define TSB_BUF_H

#include <stddef.h>
#include <stdint.h>

struct tsb_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	int err; /* 0 or -ENOMEM after a failed allocation */
};

/* Initializes an empty buffer (no allocation). */
void tsb_buf_init(struct tsb_buf *b);
/* Frees the memory; the buffer is empty and usable again. Accepts NULL. */
void tsb_buf_fini(struct tsb_buf *b);
/* Drops the content (len = 0) and the sticky error; keeps the memory. */
void tsb_buf_reset(struct tsb_buf *b);
/* Makes room for at least n more bytes. 0 or -ENOMEM (sticky). */
int tsb_buf_reserve(struct tsb_buf *b, size_t n);
/*
 * Appends n bytes and returns a pointer to them for the caller to fill,
 * or NULL on -ENOMEM (sticky). The pointer is valid until the next call
 * that may grow the buffer.
 */
void *tsb_buf_extend(struct tsb_buf *b, size_t n);
/* Appends n bytes from p. 0 or -ENOMEM (sticky). */
int tsb_buf_append(struct tsb_buf *b, const void *p, size_t n);
int tsb_buf_put_u8(struct tsb_buf *b, uint8_t v);
int tsb_buf_put_be16(struct tsb_buf *b, uint16_t v);
int tsb_buf_put_be32(struct tsb_buf *b, uint32_t v);
int tsb_buf_put_be64(struct tsb_buf *b, uint64_t v);

#endif
