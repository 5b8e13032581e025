/*
 * Deterministic page content generator, see pattern.h.
 *
 * Speed matters: the guest runs under TCG, where every host instruction we
 * save counts. The random part uses xorshift64* (one multiply per word), the
 * repetitive part a 64-byte motif computed once per page.
 */
#include <errno.h>
#include <string.h>

#include "pattern.h"

#define PAT_WORDS (PAT_PAGE_SIZE / 8u)

#define SALT_CLASS	0x243f6a8885a308d3ull
#define SALT_TARGET	0x13198a2e03707344ull
#define SALT_DISK	0xa4093822299f31d0ull
#define SALT_VMID	0x082efa98ec4e6c89ull
#define SALT_GEN	0x9e3779b97f4a7c15ull
#define SALT_MOTIF	0x452821e638d01377ull
#define SALT_SHARE	0xbe5466cf34e90c6cull

enum pat_class {
	PAT_NORMAL,
	PAT_DUP,
	PAT_ZERO,
};

uint64_t pat_mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

uint64_t pat_seed_mem(uint64_t seed, uint64_t vmid, bool shared)
{
	if (shared)
		return pat_mix64(seed);
	return pat_mix64(seed ^ pat_mix64(vmid ^ SALT_VMID));
}

uint64_t pat_seed_disk(uint64_t seed)
{
	return pat_mix64(seed ^ SALT_DISK);
}

int pat_params_check(const struct pat_params *p)
{
	if (p->random_pct > 100 || p->dup_pct > 100 || p->zero_pct > 100 ||
	    p->shared_pct > 100)
		return -EINVAL;
	if (p->dup_pct + p->zero_pct > 100)
		return -EINVAL;
	return 0;
}

/* The seed of the page layout (duplicates, zero pages): the group's when shared. */
static uint64_t layout_seed(const struct pat_params *p)
{
	return p->shared_pct ? p->seed_shared : p->seed;
}

static uint64_t page_hash(const struct pat_params *p, uint64_t index,
			  uint64_t salt)
{
	return pat_mix64(layout_seed(p) ^ pat_mix64(index ^ salt));
}

/* The seed of the content with this key: the group's for a shared key. */
static uint64_t content_seed(const struct pat_params *p, uint64_t key)
{
	if (p->shared_pct &&
	    pat_mix64(p->seed_shared ^ pat_mix64(key ^ SALT_SHARE)) % 100u < p->shared_pct)
		return p->seed_shared;
	return p->seed;
}

static enum pat_class page_class(const struct pat_params *p, uint64_t index)
{
	unsigned v;

	if (index == 0 || (p->dup_pct == 0 && p->zero_pct == 0))
		return PAT_NORMAL;
	v = (unsigned)(page_hash(p, index, SALT_CLASS) % 100u);
	if (v < p->dup_pct)
		return PAT_DUP;
	if (v < p->dup_pct + p->zero_pct)
		return PAT_ZERO;
	return PAT_NORMAL;
}

uint64_t pat_page_key(const struct pat_params *p, uint64_t index)
{
	enum pat_class c = page_class(p, index);

	if (c == PAT_ZERO)
		return PAT_KEY_ZERO;
	/*
	 * A duplicate takes the content of a random earlier page; when that
	 * one is itself a duplicate or a zero page, keep walking down. Each
	 * step lands on a uniformly chosen smaller index, so the walk ends
	 * after O(log index) steps even when every page is a duplicate (page
	 * 0 is always normal).
	 */
	while (c != PAT_NORMAL) {
		index = page_hash(p, index, SALT_TARGET) % index;
		c = page_class(p, index);
	}
	return index;
}

struct pat_gen {
	uint64_t state;		/* xorshift64* state, never 0 */
	uint64_t motif[PAT_MOTIF_WORDS];
	unsigned random_words;
	bool zero;
};

static void gen_init(struct pat_gen *g, const struct pat_params *p,
		     uint64_t index, uint32_t gen)
{
	uint64_t key = pat_page_key(p, index);
	uint64_t s;
	unsigned i;

	g->zero = false;
	if (key == PAT_KEY_ZERO) {
		if (gen == 0) {
			g->zero = true;
			return;
		}
		/* A rewritten zero page gets ordinary content. */
		key = index;
	}
	s = pat_mix64(pat_mix64(content_seed(p, key) ^ key) + (uint64_t)gen * SALT_GEN);
	g->state = s ? s : SALT_GEN;
	for (i = 0; i < PAT_MOTIF_WORDS; i++)
		g->motif[i] = pat_mix64(s ^ (SALT_MOTIF * (i + 1))) |
			      0x0101010101010101ull;
	g->random_words = (PAT_PAGE_SIZE * p->random_pct / 100u) / 8u;
}

static inline uint64_t gen_next(struct pat_gen *g)
{
	uint64_t x = g->state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	g->state = x;
	return x * 0x2545f4914f6cdd1dull;
}

void pat_fill_page(const struct pat_params *p, uint64_t index, uint32_t gen,
		   void *page)
{
	uint64_t *w = page;
	struct pat_gen g;
	unsigned i;

	gen_init(&g, p, index, gen);
	if (g.zero) {
		memset(page, 0, PAT_PAGE_SIZE);
		return;
	}
	for (i = 0; i < g.random_words; i++)
		w[i] = gen_next(&g);
	for (; i < PAT_WORDS; i++)
		w[i] = g.motif[i % PAT_MOTIF_WORDS];
}

static long first_diff(const uint64_t *w, unsigned i, uint64_t expected,
		       uint64_t *ret_expected, uint64_t *ret_got)
{
	const unsigned char *got = (const unsigned char *)&w[i];
	const unsigned char *exp = (const unsigned char *)&expected;
	unsigned b;

	if (ret_expected)
		*ret_expected = expected;
	if (ret_got)
		*ret_got = w[i];
	for (b = 0; b < 8 && got[b] == exp[b]; b++)
		;
	return (long)i * 8 + b;
}

long pat_check_page(const struct pat_params *p, uint64_t index, uint32_t gen,
		    const void *page, uint64_t *ret_expected,
		    uint64_t *ret_got)
{
	const uint64_t *w = page;
	struct pat_gen g;
	unsigned i;

	gen_init(&g, p, index, gen);
	if (g.zero) {
		for (i = 0; i < PAT_WORDS; i++)
			if (w[i])
				return first_diff(w, i, 0, ret_expected,
						  ret_got);
		return -1;
	}
	for (i = 0; i < g.random_words; i++) {
		uint64_t e = gen_next(&g);

		if (w[i] != e)
			return first_diff(w, i, e, ret_expected, ret_got);
	}
	for (; i < PAT_WORDS; i++) {
		uint64_t e = g.motif[i % PAT_MOTIF_WORDS];

		if (w[i] != e)
			return first_diff(w, i, e, ret_expected, ret_got);
	}
	return -1;
}
