/*
 * Live sharing between the migrations of one group moving at once
 * (docs/group.md, "Live sharing"): which contents each has sent as data to
 * a destination, so that another one sends a LIVE reference instead of
 * the same bytes. A migration references only what migrations of a lower
 * rank sent, so the receivers that wait for such content never wait in a
 * circle. Thread-safe.
 */
#ifndef TSB_PROXY_LIVESHARE_H
#define TSB_PROXY_LIVESHARE_H

#include <stdbool.h>
#include <stdint.h>

/* How many contents it remembers in all (32 bytes each, and slack). */
#define LIVE_SHARE_MAX_HASHES (4u << 20)

struct live_share;

struct live_share *live_share_new(void);
void live_share_free(struct live_share *ls);
/* The migration of this rank sent this content as data to dest. */
void live_share_add(struct live_share *ls, unsigned rank, const char *dest,
		    const uint8_t hash[32]);
/* True if one of lower rank, moving to the same dest, sent it. */
bool live_share_has(struct live_share *ls, unsigned rank, const char *dest,
		    const uint8_t hash[32]);
/* The migration of this rank failed: what it sent is not promised any more. */
void live_share_drop(struct live_share *ls, unsigned rank);

#endif
