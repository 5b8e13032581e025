/*
 * qstream internals: the resumable tokenizer shared by the stream and the
 * return-path parsers.
 *
 * A parser state asks for `need` bytes. tok_view() returns them as one
 * contiguous view: straight from the caller's input when it holds them
 * all (zero copy), else from the staging buffer `hold`, filled across
 * feeds. A step either consumes bytes of the view (tok_consume) or raises
 * `need` and returns, to be called again with a longer view. Raw bytes that
 * are contiguous in the input are coalesced into one run and handed to the
 * raw callback before any other callback (tok_flush).
 */
#ifndef TSB_QSTREAM_INTERNAL_H
#define TSB_QSTREAM_INTERNAL_H

#include <stdbool.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct qs_tok {
	uint8_t *hold;		/* staging buffer of hold_cap bytes */
	size_t hold_cap;
	size_t hold_len;
	size_t need;		/* bytes the current state needs */
	const uint8_t *in;	/* unconsumed input of the current feed */
	size_t avail;
	const uint8_t *run;	/* raw bytes not yet handed to raw() */
	size_t run_len;
	uint64_t off;		/* stream offset of the first unconsumed byte */
	int (*raw)(void *opaque, const uint8_t *p, size_t n);
	void *opaque;
};

int qs_tok_init(struct qs_tok *t, size_t hold_cap,
		int (*raw)(void *, const uint8_t *, size_t), void *opaque);
void qs_tok_fini(struct qs_tok *t);

/* Sets the input of one feed. */
static inline void qs_tok_input(struct qs_tok *t, const void *buf, size_t len)
{
	t->in = buf;
	t->avail = len;
}

/*
 * A view of t->need bytes, or NULL when the input ran out (what there was
 * is staged). t->need must be <= hold_cap.
 */
static inline const uint8_t *qs_tok_view(struct qs_tok *t)
{
	size_t n;

	if (t->hold_len == 0 && t->avail >= t->need)
		return t->in;
	n = t->need - t->hold_len;
	if (n > t->avail)
		n = t->avail;
	/* Bytes staged are copied out of the input: they leave `in`. */
	__builtin_memcpy(t->hold + t->hold_len, t->in, n);
	t->hold_len += n;
	t->in += n;
	t->avail -= n;
	return t->hold_len == t->need ? t->hold : NULL;
}

/* True if view v (from qs_tok_view) is the staging buffer. */
static inline bool qs_tok_is_held(const struct qs_tok *t, const uint8_t *v)
{
	return v == t->hold && t->hold_len > 0;
}

/* Consumes the first n bytes of view v (n <= t->need). */
static inline void qs_tok_consume(struct qs_tok *t, const uint8_t *v, size_t n)
{
	if (qs_tok_is_held(t, v)) {
		t->hold_len -= n;
		if (t->hold_len)
			__builtin_memmove(t->hold, t->hold + n, t->hold_len);
	} else {
		t->in += n;
		t->avail -= n;
	}
	t->off += n;
}

/* Hands the pending raw run to raw(). 0 or the callback's error. */
int qs_tok_flush(struct qs_tok *t);

/*
 * Passes the first n bytes of view v to raw (coalesced when they are in
 * the input) and consumes them. 0 or the callback's error.
 */
int qs_tok_emit(struct qs_tok *t, const uint8_t *v, size_t n);

/*
 * Streaming states: takes up to max input bytes as raw (hold must be
 * empty), stores them in ret_p, ret_n and consumes them. 0 or error.
 */
int qs_tok_stream(struct qs_tok *t, uint64_t max, const uint8_t **ret_p,
		  size_t *ret_n);

/* names[i] of a table indexed by code, "unknown" outside it or in a hole. */
const char *qs_name_of(const char *const *names, size_t n_names, unsigned i);

/*
 * Sticky error of a parser: keeps the first one (*err, msg + " at <where>
 * offset <off>") and returns it; later calls only return the first.
 */
int qs_verror(int *err, char *msg, size_t msg_len, int e, const char *where,
	      uint64_t off, const char *fmt, va_list ap);

#endif
