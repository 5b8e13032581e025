#include "qstream/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

int qs_tok_init(struct qs_tok *t, size_t hold_cap,
		int (*raw)(void *, const uint8_t *, size_t), void *opaque)
{
	*t = (struct qs_tok){ .raw = raw, .opaque = opaque };
	t->hold = malloc(hold_cap);
	if (!t->hold)
		return -ENOMEM;
	t->hold_cap = hold_cap;
	return 0;
}

void qs_tok_fini(struct qs_tok *t)
{
	free(t->hold);
	t->hold = NULL;
}

int qs_tok_flush(struct qs_tok *t)
{
	const uint8_t *p = t->run;
	size_t n = t->run_len;

	if (!n)
		return 0;
	t->run_len = 0;
	return t->raw ? t->raw(t->opaque, p, n) : 0;
}

int qs_tok_emit(struct qs_tok *t, const uint8_t *v, size_t n)
{
	int r;

	if (qs_tok_is_held(t, v)) {
		r = qs_tok_flush(t);
		if (!r && t->raw && n)
			r = t->raw(t->opaque, v, n);
	} else if (t->run_len && t->run + t->run_len == v) {
		t->run_len += n;
		r = 0;
	} else {
		r = qs_tok_flush(t);
		t->run = v;
		t->run_len = n;
	}
	qs_tok_consume(t, v, n);
	return r;
}

int qs_tok_stream(struct qs_tok *t, uint64_t max, const uint8_t **ret_p,
		  size_t *ret_n)
{
	size_t n = t->avail;
	const uint8_t *p = t->in;

	if (n > max)
		n = max;
	*ret_p = p;
	*ret_n = n;
	if (!n)
		return 0;
	return qs_tok_emit(t, p, n);
}

const char *qs_name_of(const char *const *names, size_t n_names, unsigned i)
{
	return i < n_names && names[i] ? names[i] : "unknown";
}

int qs_verror(int *err, char *msg, size_t msg_len, int e, const char *where,
	      uint64_t off, const char *fmt, va_list ap)
{
	int n;

	if (*err)
		return *err;
	n = vsnprintf(msg, msg_len, fmt, ap);
	if (n >= 0 && (size_t)n < msg_len)
		snprintf(msg + n, msg_len - n, " at %s offset %llu", where,
			 (unsigned long long)off);
	*err = e;
	return e;
}
