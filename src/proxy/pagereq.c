/* Pages a destination QEMU asked for (pagereq.h). */
#include "proxy/pagereq.h"

#include <string.h>

void pagereq_add(struct pagereq_set *s, const char *block, uint64_t offset, uint64_t length,
		 uint64_t now_ns, uint64_t mark)
{
	size_t len = strlen(block);
	struct pagereq *q;

	if (len >= sizeof(q->name))
		return;
	if (s->n == PAGEREQ_MAX) {
		memmove(&s->r[0], &s->r[1], (PAGEREQ_MAX - 1) * sizeof(s->r[0]));
		s->n--;
	}
	q = &s->r[s->n++];
	q->name_len = (uint8_t)len;
	memcpy(q->name, block, len + 1);
	q->offset = offset;
	q->length = length ? length : 1;
	q->t_ns = now_ns;
	q->mark = mark;
	s->added++;
}

bool pagereq_take(struct pagereq_set *s, const char *name, size_t name_len, uint64_t offset,
		  uint64_t *ret_t_ns)
{
	unsigned i;

	for (i = 0; i < s->n; i++) {
		const struct pagereq *q = &s->r[i];

		if (q->name_len != name_len || memcmp(q->name, name, name_len) ||
		    offset < q->offset || offset - q->offset >= q->length)
			continue;
		if (ret_t_ns)
			*ret_t_ns = q->t_ns;
		/* A request is one host page: one page settles it. */
		memmove(&s->r[i], &s->r[i + 1], (s->n - i - 1) * sizeof(s->r[0]));
		s->n--;
		return true;
	}
	return false;
}

void pagereq_prune(struct pagereq_set *s, uint64_t now_ns, uint64_t ttl_ns)
{
	unsigned i, n = 0;

	for (i = 0; i < s->n; i++)
		if (now_ns - s->r[i].t_ns < ttl_ns)
			s->r[n++] = s->r[i];
	s->n = n;
}

void pagereq_prune_mark(struct pagereq_set *s, uint64_t min_mark)
{
	unsigned i, n = 0;

	for (i = 0; i < s->n; i++)
		if (s->r[i].mark >= min_mark)
			s->r[n++] = s->r[i];
	s->n = n;
}
