/* Bloom filter over SHA-256 hashes (see filter.h). */
#include "store/filter.h"

#include "common/reader.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define FILTER_VERSION 1
/*
 * ~0.003% false hits: each costs a NEED round trip on the WAN, inside the
 * downtime when it meets a page of the last pass (16 bits and 11 probes
 * gave 0.05%: one page in 2000 of a final pass not found in the cache).
 */
#define FILTER_BITS_PER_ENTRY 22
#define FILTER_PROBES 15

static int alloc_bits(struct tsb_filter *f, uint32_t m, uint8_t k)
{
	f->m = m;
	f->k = k;
	f->entries = 0;
	f->bits = calloc(m / 64, sizeof(uint64_t));
	return f->bits ? 0 : -ENOMEM;
}

int tsb_filter_init(struct tsb_filter *f, uint64_t n)
{
	uint64_t m = n * FILTER_BITS_PER_ENTRY;

	if (m < 64)
		m = 64;
	if (m > TSB_FILTER_MAX_BITS)
		m = TSB_FILTER_MAX_BITS;
	m = (m + 63) & ~63ull;
	return alloc_bits(f, (uint32_t)m, FILTER_PROBES);
}

void tsb_filter_fini(struct tsb_filter *f)
{
	free(f->bits);
	f->bits = NULL;
	f->m = 0;
}

/*
 * The hash is already uniform: two 64-bit words of it drive double
 * hashing (Kirsch-Mitzenmacher), probe i = h1 + i * h2.
 */
static inline uint64_t word(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

void tsb_filter_add(struct tsb_filter *f, const uint8_t hash[TSB_FILTER_HASH_LEN])
{
	uint64_t h1 = word(hash), h2 = word(hash + 8) | 1;
	uint8_t i;

	for (i = 0; i < f->k; i++) {
		uint64_t bit = (h1 + i * h2) % f->m;

		f->bits[bit / 64] |= 1ull << (bit % 64);
	}
	f->entries++;
}

bool tsb_filter_maybe(const struct tsb_filter *f, const uint8_t hash[TSB_FILTER_HASH_LEN])
{
	uint64_t h1 = word(hash), h2 = word(hash + 8) | 1;
	uint8_t i;

	if (!f->bits)
		return false;
	for (i = 0; i < f->k; i++) {
		uint64_t bit = (h1 + i * h2) % f->m;

		if (!(f->bits[bit / 64] & (1ull << (bit % 64))))
			return false;
	}
	return true;
}

size_t tsb_filter_size(const struct tsb_filter *f)
{
	return TSB_FILTER_HDR_LEN + f->m / 8;
}

void tsb_filter_write(const struct tsb_filter *f, uint8_t *out)
{
	uint32_t i;

	memcpy(out, "TSBF", 4);
	out[4] = FILTER_VERSION;
	out[5] = f->k;
	out[6] = out[7] = 0;
	tsb_put_be32(out + 8, f->m);
	out += TSB_FILTER_HDR_LEN;
	for (i = 0; i < f->m / 64; i++)
		tsb_put_be64(out + (size_t)i * 8, f->bits[i]);
}

int tsb_filter_parse(struct tsb_filter *f, const uint8_t *p, size_t len)
{
	struct tsb_reader r;
	const uint8_t *magic, *bits;
	uint8_t version, k;
	uint32_t m, i;
	int err;

	memset(f, 0, sizeof(*f));
	tsb_reader_init(&r, p, len);
	magic = tsb_get_bytes(&r, 4);
	version = tsb_get_u8(&r);
	k = tsb_get_u8(&r);
	(void)tsb_get_be16(&r);
	m = tsb_get_be32(&r);
	if (r.err || memcmp(magic, "TSBF", 4))
		return -EBADMSG;
	if (version != FILTER_VERSION)
		return -EOPNOTSUPP;
	if (k < 1 || k > 16 || m < 64 || m > TSB_FILTER_MAX_BITS || m % 64 ||
	    p[6] || p[7])
		return -EBADMSG;
	if (tsb_reader_remaining(&r) != m / 8)
		return -EBADMSG;
	bits = tsb_get_bytes(&r, m / 8);
	err = alloc_bits(f, m, k);
	if (err)
		return err;
	for (i = 0; i < m / 64; i++)
		f->bits[i] = tsb_load_be64(bits + (size_t)i * 8);
	return 0;
}
