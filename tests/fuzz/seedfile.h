/* Shared by the seed writers (make-seeds-*.c): fail loudly, write one seed. */
#ifndef TSB_FUZZ_SEEDFILE_H
#define TSB_FUZZ_SEEDFILE_H

#include <stddef.h>

/* Exits with a message naming prog and what when r < 0. */
void seed_check(const char *prog, int r, const char *what);
/* Writes len bytes of data to dir/name, or exits with a message. */
void seed_write(const char *prog, const char *dir, const char *name, const void *data,
		size_t len);

#endif
