/*
 * Content helpers shared by both ends of the wire: SHA-256 of pages,
 * bounded zstd, and page deltas.
 */
#ifndef TSB_WIRE_CODEC_H
#define TSB_WIRE_CODEC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/buf.h"

#define WIRE_SHA256_LEN 32

/*
 * SHA-256 of len bytes into out. Thread-safe; uses a per-thread digest
 * context (freed when the thread exits). Returns 0, or -ENOMEM / -EIO
 * when OpenSSL fails (then out is untouched).
 */
int wire_sha256(const void *data, size_t len, uint8_t out[WIRE_SHA256_LEN]);

/*
 * One compression and one decompression context, each created when first
 * used (so compress and decompress may also fail with -ENOMEM). Not
 * thread-safe: use one per thread. level: zstd level (1..19; negative =
 * fast modes). Returns NULL on ENOMEM. Free with wire_zstd_free()
 * (accepts NULL).
 */
struct wire_zstd *wire_zstd_new(int level);
void wire_zstd_free(struct wire_zstd *z);

/*
 * Appends one zstd frame (with its content size) of src to out. Returns
 * the number of bytes appended, or -ENOMEM / -EIO (zstd failure).
 */
ssize_t wire_zstd_compress(struct wire_zstd *z, const void *src, size_t len,
			   struct tsb_buf *out);

/*
 * Reads the content size that the single zstd frame in src declares.
 * -EBADMSG when src is not exactly one frame or the size is missing,
 * -EMSGSIZE when it is over cap.
 */
int wire_zstd_frame_size(const void *src, size_t len, size_t cap,
			 size_t *ret_size);

/*
 * Decompresses the single zstd frame in src into dst, which holds cap
 * bytes. The frame must declare its content size, that size must be
 * <= cap (-EMSGSIZE otherwise: nothing is decompressed, so a bomb costs
 * nothing) and the frame must produce exactly that many bytes (-EBADMSG);
 * -ENOMEM when the context cannot be created. Sets *ret_len to the
 * decompressed length.
 */
int wire_zstd_decompress(struct wire_zstd *z, const void *src, size_t len,
			 void *dst, size_t cap, size_t *ret_len);

/*
 * Page deltas (WIRE_ENC_DELTA): the delta of page against base (both
 * size bytes) is a zstd frame of page XOR base. wire_delta_encode()
 * appends it to out and returns its length (or -ENOMEM, -EIO);
 * wire_delta_apply() writes base XOR decompressed delta into dst (size
 * bytes), -EBADMSG if the delta does not decompress to exactly size bytes.
 * dst must not overlap base.
 */
ssize_t wire_delta_encode(struct wire_zstd *z, const uint8_t *base,
			  const uint8_t *page, size_t size, struct tsb_buf *out);
int wire_delta_apply(struct wire_zstd *z, const uint8_t *base,
		     const void *delta, size_t delta_len, uint8_t *dst,
		     size_t size);

#endif
