/* A set of SHA-256 hashes (hashset.h). */
#include "proxy/hashset.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t zero[32];

void hashset_init(struct hashset *s)
{
	memset(s, 0, sizeof(*s));
}

void hashset_fini(struct hashset *s)
{
	free(s->slots);
	hashset_init(s);
}

/* The hash is uniform already: its first bytes pick the slot. */
static size_t slot_of(const struct hashset *s, const uint8_t hash[32])
{
	uint64_t v;

	memcpy(&v, hash, sizeof(v));
	return (size_t)v & (s->cap - 1);
}

static uint8_t *find(const struct hashset *s, const uint8_t hash[32])
{
	size_t i = slot_of(s, hash);

	for (;;) {
		if (!memcmp(s->slots[i], hash, 32) || !memcmp(s->slots[i], zero, 32))
			return s->slots[i];
		i = (i + 1) & (s->cap - 1);
	}
}

static int grow(struct hashset *s)
{
	size_t cap = s->cap ? s->cap * 2 : 4096, old = s->cap;
	uint8_t (*slots)[32] = s->slots;

	s->slots = calloc(cap, 32);
	if (!s->slots) {
		s->slots = slots;
		return -ENOMEM;
	}
	s->cap = cap;
	for (size_t i = 0; i < old; i++)
		if (memcmp(slots[i], zero, 32))
			memcpy(find(s, slots[i]), slots[i], 32);
	free(slots);
	return 0;
}

int hashset_add(struct hashset *s, const uint8_t hash[32])
{
	uint8_t *slot;

	if (!memcmp(hash, zero, 32)) {
		s->has_zero = true;
		return 0;
	}
	if ((s->count + 1) * 2 > s->cap && grow(s) < 0)
		return -ENOMEM;
	slot = find(s, hash);
	if (memcmp(slot, hash, 32)) {
		memcpy(slot, hash, 32);
		s->count++;
	}
	return 0;
}

bool hashset_has(const struct hashset *s, const uint8_t hash[32])
{
	if (!memcmp(hash, zero, 32))
		return s->has_zero;
	return s->cap && !memcmp(find(s, hash), hash, 32);
}
