/* A WAN budget shared by connections (pacer.h). */
#include "wire/pacer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "common/util.h"

struct wire_pacer {
	pthread_mutex_t mu;
	uint64_t rate;		/* bytes per second */
	uint64_t next_ns;	/* when the budget is free again */
	uint64_t bytes, wait_ns;
};

struct wire_pacer *wire_pacer_new(uint64_t rate)
{
	struct wire_pacer *p;

	if (!rate)
		return NULL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	pthread_mutex_init(&p->mu, NULL);
	p->rate = rate;
	return p;
}

void wire_pacer_free(struct wire_pacer *p)
{
	if (!p)
		return;
	pthread_mutex_destroy(&p->mu);
	free(p);
}

uint64_t wire_pacer_rate(struct wire_pacer *p)
{
	uint64_t r;

	pthread_mutex_lock(&p->mu);
	r = p->rate;
	pthread_mutex_unlock(&p->mu);
	return r;
}

void wire_pacer_set_rate(struct wire_pacer *p, uint64_t rate)
{
	if (!rate)
		return;
	pthread_mutex_lock(&p->mu);
	p->rate = rate;
	pthread_mutex_unlock(&p->mu);
}

uint64_t wire_pacer_book(struct wire_pacer *p, size_t n, uint64_t now_ns)
{
	uint64_t start, dur;

	/* n < 2^32 and 1e9 < 2^30: the product cannot wrap. */
	if (n > UINT32_MAX)
		n = UINT32_MAX;
	pthread_mutex_lock(&p->mu);
	dur = (uint64_t)n * 1000000000ull / p->rate;
	start = p->next_ns;
	/* An idle budget lends at most a burst's worth of the time it lost. */
	if (start + WIRE_PACER_BURST_NS < now_ns)
		start = now_ns - WIRE_PACER_BURST_NS;
	p->next_ns = start + dur;
	p->bytes += n;
	pthread_mutex_unlock(&p->mu);
	return start > now_ns ? start : now_ns;
}

void wire_pacer_take(struct wire_pacer *p, size_t n)
{
	uint64_t now = tsb_now_ns(), at = wire_pacer_book(p, n, now);
	struct timespec ts;

	if (at <= now)
		return;
	ts.tv_sec = (at - now) / 1000000000ull;
	ts.tv_nsec = (at - now) % 1000000000ull;
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
	pthread_mutex_lock(&p->mu);
	p->wait_ns += at - now;
	pthread_mutex_unlock(&p->mu);
}

void wire_pacer_stats(struct wire_pacer *p, uint64_t *bytes, uint64_t *wait_ns)
{
	pthread_mutex_lock(&p->mu);
	*bytes = p->bytes;
	*wait_ns = p->wait_ns;
	pthread_mutex_unlock(&p->mu);
}
