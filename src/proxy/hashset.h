/*
 * A set of SHA-256 hashes (open addressing, grows as needed): which
 * contents one migration has handled, so that a NEED is answered only for
 * those and never probes the rest of the store (docs/security.md).
 * Not thread-safe.
 */
#ifndef TSB_PROXY_HASHSET_H
#define TSB_PROXY_HASHSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct hashset {
	uint8_t (*slots)[32];
	size_t cap;		/* power of two, or 0 */
	size_t count;
	bool has_zero;		/* the all-zero hash (marks free slots) */
};

void hashset_init(struct hashset *s);
void hashset_fini(struct hashset *s);
/* 0, or -ENOMEM. */
int hashset_add(struct hashset *s, const uint8_t hash[32]);
bool hashset_has(const struct hashset *s, const uint8_t hash[32]);

#endif
