/* Shared by the seed writers (seedfile.h). */
#include "seedfile.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void seed_check(const char *prog, int r, const char *what)
{
	if (r < 0) {
		fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(-r));
		exit(1);
	}
}

void seed_write(const char *prog, const char *dir, const char *name, const void *data,
		size_t len)
{
	char path[4096];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f || fwrite(data, 1, len, f) != len || fclose(f)) {
		fprintf(stderr, "%s: cannot write %s\n", prog, path);
		exit(1);
	}
}
