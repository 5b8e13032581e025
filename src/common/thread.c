#include "common/thread.h"

#include <errno.h>
#include <stdlib.h>

#include "common/log.h"

struct start {
	void *(*fn)(void *);
	void *arg;
	const char *tag;
};

static void *trampoline(void *opaque)
{
	struct start st = *(struct start *)opaque;

	free(opaque);
	tsb_log_set_thread_tag(st.tag);
	return st.fn(st.arg);
}

int tsb_thread_create(pthread_t *th, void *(*fn)(void *), void *arg)
{
	struct start *st = malloc(sizeof(*st));
	int r;

	if (!st)
		return ENOMEM;
	st->fn = fn;
	st->arg = arg;
	st->tag = tsb_log_thread_tag();
	r = pthread_create(th, NULL, trampoline, st);
	if (r)
		free(st);
	return r;
}
