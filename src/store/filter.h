/*
 * A Bloom filter over SHA-256 content hashes: the compact summary a
 * receiver sends of the content it can serve. A hit may be false (one
 * round trip is the price); a miss is exact.
 *
 * Serialized form (big-endian): magic "TSBF", u8 version = 1, u8 k
 * (probes, 1..16), be16 reserved = 0, be32 m (bits, a multiple of 64,
 * 64..TSB_FILTER_MAX_BITS), then m/8 bytes of bits.
 */
#ifndef TSB_FILTER_H
#define TSB_FILTER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TSB_FILTER_HASH_LEN 32
/* 4 MiB of bits: about 1.5 million entries at 0.003% false hits. */
#define TSB_FILTER_MAX_BITS (32u << 20)
#define TSB_FILTER_HDR_LEN 12

struct tsb_filter {
	uint32_t m;		/* bits */
	uint8_t k;		/* probes */
	uint64_t *bits;
	uint64_t entries;	/* added (with repeats) */
};

/*
 * Sizes a filter for about n entries at ~0.003% false hits (22 bits
 * each, 15 probes), capped at TSB_FILTER_MAX_BITS. 0 or -ENOMEM.
 */
int tsb_filter_init(struct tsb_filter *f, uint64_t n);
void tsb_filter_fini(struct tsb_filter *f);
void tsb_filter_add(struct tsb_filter *f, const uint8_t hash[TSB_FILTER_HASH_LEN]);
bool tsb_filter_maybe(const struct tsb_filter *f, const uint8_t hash[TSB_FILTER_HASH_LEN]);

/* Serialized size. */
size_t tsb_filter_size(const struct tsb_filter *f);
/* Writes tsb_filter_size() bytes to out. */
void tsb_filter_write(const struct tsb_filter *f, uint8_t *out);
/*
 * Parses untrusted bytes (exactly one filter, no trailing bytes) into a
 * new filter. 0, -EBADMSG (malformed), -EOPNOTSUPP (other version) or
 * -ENOMEM.
 */
int tsb_filter_parse(struct tsb_filter *f, const uint8_t *p, size_t len);

#endif
