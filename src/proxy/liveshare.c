/* Live sharing between a group's migrations (liveshare.h). */
#include "proxy/liveshare.h"
#include "proxy/hashset.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define LIVE_SHARE_MAX_RANKS 256

struct live_rank {
	bool used, dropped;
	char dest[256];
	struct hashset sent;
};

struct live_share {
	pthread_mutex_t mu;
	size_t total;
	struct live_rank ranks[LIVE_SHARE_MAX_RANKS];
};

struct live_share *live_share_new(void)
{
	struct live_share *ls = calloc(1, sizeof(*ls));

	if (!ls)
		return NULL;
	pthread_mutex_init(&ls->mu, NULL);
	for (unsigned i = 0; i < LIVE_SHARE_MAX_RANKS; i++)
		hashset_init(&ls->ranks[i].sent);
	return ls;
}

void live_share_free(struct live_share *ls)
{
	if (!ls)
		return;
	for (unsigned i = 0; i < LIVE_SHARE_MAX_RANKS; i++)
		hashset_fini(&ls->ranks[i].sent);
	pthread_mutex_destroy(&ls->mu);
	free(ls);
}

void live_share_add(struct live_share *ls, unsigned rank, const char *dest,
		    const uint8_t hash[32])
{
	struct live_rank *r;

	if (!ls || rank >= LIVE_SHARE_MAX_RANKS || !dest)
		return;
	r = &ls->ranks[rank];
	pthread_mutex_lock(&ls->mu);
	if (!r->used) {
		r->used = true;
		strncpy(r->dest, dest, sizeof(r->dest) - 1);
	}
	/* Full, or out of memory: it only costs bytes on the WAN. */
	if (!r->dropped && ls->total < LIVE_SHARE_MAX_HASHES && !hashset_has(&r->sent, hash) &&
	    hashset_add(&r->sent, hash) == 0)
		ls->total++;
	pthread_mutex_unlock(&ls->mu);
}

bool live_share_has(struct live_share *ls, unsigned rank, const char *dest,
		    const uint8_t hash[32])
{
	bool found = false;

	if (!ls || !dest)
		return false;
	pthread_mutex_lock(&ls->mu);
	for (unsigned i = 0; i < rank && i < LIVE_SHARE_MAX_RANKS && !found; i++) {
		const struct live_rank *r = &ls->ranks[i];

		found = r->used && !r->dropped && !strcmp(r->dest, dest) &&
			hashset_has(&r->sent, hash);
	}
	pthread_mutex_unlock(&ls->mu);
	return found;
}

void live_share_drop(struct live_share *ls, unsigned rank)
{
	if (!ls || rank >= LIVE_SHARE_MAX_RANKS)
		return;
	pthread_mutex_lock(&ls->mu);
	ls->ranks[rank].dropped = true;
	ls->total -= ls->ranks[rank].sent.count;
	hashset_fini(&ls->ranks[rank].sent);
	hashset_init(&ls->ranks[rank].sent);
	pthread_mutex_unlock(&ls->mu);
}
