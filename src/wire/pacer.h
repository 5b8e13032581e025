/*
 * A WAN budget shared by connections: every write on a connection that
 * has a pacer waits for its turn at the budget's rate, so that several
 * migrations (a group) together stay within one rate and share it. Turns
 * are handed out in order of asking, in chunks of at most
 * WIRE_PACER_CHUNK bytes, so concurrent writers get about equal shares,
 * and whatever one leaves unused the others take.
 */
#ifndef TSB_WIRE_PACER_H
#define TSB_WIRE_PACER_H

#include <stddef.h>
#include <stdint.h>

#define WIRE_PACER_CHUNK (64u << 10)
/* Idle time that may be caught up in one burst. */
#define WIRE_PACER_BURST_NS 10000000ull

struct wire_pacer;

/* rate in bytes per second (> 0). NULL on ENOMEM. */
struct wire_pacer *wire_pacer_new(uint64_t rate);
void wire_pacer_free(struct wire_pacer *p);
uint64_t wire_pacer_rate(struct wire_pacer *p);
/* A new rate (> 0) from now on: a group moves its budget between hosts. */
void wire_pacer_set_rate(struct wire_pacer *p, uint64_t rate);
/*
 * Books n bytes at time now_ns (CLOCK_MONOTONIC): returns when they may
 * be written (now_ns or later). No sleeping: the clock is the caller's.
 */
uint64_t wire_pacer_book(struct wire_pacer *p, size_t n, uint64_t now_ns);
/* Books n bytes now and sleeps until their turn. */
void wire_pacer_take(struct wire_pacer *p, size_t n);
/* Bytes booked so far, and the time writers spent waiting (ns). */
void wire_pacer_stats(struct wire_pacer *p, uint64_t *bytes, uint64_t *wait_ns);

#endif
