/*
 * Pages a destination QEMU asked for on its return path (REQ_PAGES), by
 * block name and offset, with when they were asked for: the sender sends
 * them ahead of its queue (send_urgent.c), the receiver times how long
 * each took to arrive (the report's postcopy.faults). Not locked: the
 * caller's lock.
 */
#ifndef TSB_PROXY_PAGEREQ_H
#define TSB_PROXY_PAGEREQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Requests remembered at once (more: the oldest are forgotten). */
#define PAGEREQ_MAX 64

struct pagereq_set {
	struct pagereq {
		uint8_t name_len;
		char name[256];
		uint64_t offset, length;
		uint64_t t_ns;		/* when it was asked for */
		uint64_t mark;		/* the caller's (send: stream offset parsed then) */
	} r[PAGEREQ_MAX];
	unsigned n;
	uint64_t added;			/* requests seen */
};

/* Notes a request (a name of 256 bytes or more is ignored). */
void pagereq_add(struct pagereq_set *s, const char *block, uint64_t offset, uint64_t length,
		 uint64_t now_ns, uint64_t mark);
/*
 * Does the page at (name, offset) answer a request? Then it is forgotten
 * and *ret_t_ns (if not NULL) says when it was asked for.
 */
bool pagereq_take(struct pagereq_set *s, const char *name, size_t name_len, uint64_t offset,
		  uint64_t *ret_t_ns);
/* Forgets requests asked for ttl_ns or longer ago. */
void pagereq_prune(struct pagereq_set *s, uint64_t now_ns, uint64_t ttl_ns);
/* Forgets requests whose mark is below min_mark. */
void pagereq_prune_mark(struct pagereq_set *s, uint64_t min_mark);

#endif
