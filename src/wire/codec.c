#include "wire/codec.h"

#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <zstd.h>

/* ---- SHA-256 ---- */

static pthread_once_t sha_once = PTHREAD_ONCE_INIT;
static pthread_key_t sha_key;
static EVP_MD *sha_md;
static bool sha_ready;

static void sha_ctx_destroy(void *p)
{
	EVP_MD_CTX_free(p);
}

static void sha_init_once(void)
{
	/* Fetch once: EVP_sha256() would look the provider up on every call. */
	sha_md = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (!sha_md)
		return;
	if (pthread_key_create(&sha_key, sha_ctx_destroy)) {
		EVP_MD_free(sha_md);
		sha_md = NULL;
		return;
	}
	sha_ready = true;
}

int wire_sha256(const void *data, size_t len, uint8_t out[WIRE_SHA256_LEN])
{
	EVP_MD_CTX *ctx;
	unsigned int n;

	(void)pthread_once(&sha_once, sha_init_once);
	if (!sha_ready)
		return -EIO;
	ctx = pthread_getspecific(sha_key);
	if (!ctx) {
		ctx = EVP_MD_CTX_new();
		if (!ctx)
			return -ENOMEM;
		if (pthread_setspecific(sha_key, ctx)) {
			EVP_MD_CTX_free(ctx);
			return -ENOMEM;
		}
	}
	if (!EVP_DigestInit_ex2(ctx, sha_md, NULL) ||
	    !EVP_DigestUpdate(ctx, data, len) ||
	    !EVP_DigestFinal_ex(ctx, out, &n) || n != WIRE_SHA256_LEN)
		return -EIO;
	return 0;
}

/* ---- zstd ---- */

struct wire_zstd {
	ZSTD_CCtx *cctx;
	ZSTD_DCtx *dctx;
	int level;
};

/* The contexts are created when first used: a receiver never compresses,
 * and a zstd context is over 100 KiB (a decompression context holds a
 * 128 KiB block buffer) that most of them would allocate for nothing. */
struct wire_zstd *wire_zstd_new(int level)
{
	struct wire_zstd *z = calloc(1, sizeof(*z));

	if (!z)
		return NULL;
	z->level = level;
	return z;
}

static int zstd_cctx(struct wire_zstd *z)
{
	if (z->cctx)
		return 0;
	z->cctx = ZSTD_createCCtx();
	if (!z->cctx)
		return -ENOMEM;
	if (ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_compressionLevel,
						z->level)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx,
						ZSTD_c_contentSizeFlag, 1)) ||
	    ZSTD_isError(ZSTD_CCtx_setParameter(z->cctx, ZSTD_c_checksumFlag,
						0))) {
		ZSTD_freeCCtx(z->cctx);
		z->cctx = NULL;
		return -EIO;
	}
	return 0;
}

void wire_zstd_free(struct wire_zstd *z)
{
	if (!z)
		return;
	ZSTD_freeCCtx(z->cctx);
	ZSTD_freeDCtx(z->dctx);
	free(z);
}

ssize_t wire_zstd_compress(struct wire_zstd *z, const void *src, size_t len,
			   struct tsb_buf *out)
{
	size_t bound = ZSTD_compressBound(len), n;
	int r;

	r = zstd_cctx(z);
	if (r < 0)
		return r;
	r = tsb_buf_reserve(out, bound);
	if (r < 0)
		return r;
	n = ZSTD_compress2(z->cctx, out->data + out->len, bound, src, len);
	if (ZSTD_isError(n))
		return -EIO;
	out->len += n;
	return (ssize_t)n;
}

int wire_zstd_frame_size(const void *src, size_t len, size_t cap,
			 size_t *ret_size)
{
	unsigned long long size;
	size_t flen;

	flen = ZSTD_findFrameCompressedSize(src, len);
	if (ZSTD_isError(flen) || flen != len)
		return -EBADMSG;
	size = ZSTD_getFrameContentSize(src, len);
	if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN)
		return -EBADMSG;
	if (size > cap)
		return -EMSGSIZE;
	*ret_size = (size_t)size;
	return 0;
}

int wire_zstd_decompress(struct wire_zstd *z, const void *src, size_t len,
			 void *dst, size_t cap, size_t *ret_len)
{
	size_t want, n;
	int r;

	r = wire_zstd_frame_size(src, len, cap, &want);
	if (r < 0)
		return r;
	if (!z->dctx && !(z->dctx = ZSTD_createDCtx()))
		return -ENOMEM;
	/* dst capacity is the declared size: a frame that lies cannot overrun. */
	n = ZSTD_decompressDCtx(z->dctx, dst, want, src, len);
	if (ZSTD_isError(n) || n != want)
		return -EBADMSG;
	*ret_len = n;
	return 0;
}

/* ---- deltas ---- */

static void xor_into(uint8_t *dst, const uint8_t *a, const uint8_t *b,
		     size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		dst[i] = a[i] ^ b[i];
}

ssize_t wire_delta_encode(struct wire_zstd *z, const uint8_t *base,
			  const uint8_t *page, size_t size, struct tsb_buf *out)
{
	uint8_t *x = malloc(size ? size : 1);
	ssize_t n;

	if (!x)
		return -ENOMEM;
	xor_into(x, base, page, size);
	n = wire_zstd_compress(z, x, size, out);
	free(x);
	return n;
}

int wire_delta_apply(struct wire_zstd *z, const uint8_t *base,
		     const void *delta, size_t delta_len, uint8_t *dst,
		     size_t size)
{
	size_t got;
	int r;

	r = wire_zstd_decompress(z, delta, delta_len, dst, size, &got);
	if (r == -EMSGSIZE)
		return -EBADMSG;
	if (r < 0)
		return r;
	if (got != size)
		return -EBADMSG;
	xor_into(dst, dst, base, size);
	return 0;
}
