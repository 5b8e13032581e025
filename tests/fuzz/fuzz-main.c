/*
 * Replay driver for fuzz targets built without libFuzzer: runs every file
 * named on the command line, or every regular file of a directory named
 * there (in name order), through LLVMFuzzerTestOneInput once. Used by the
 * 'fuzz' test suite so corpora run under the normal compiler and under
 * ASan/UBSan. Exit 0 when all inputs ran (a crash is the failure).
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT (64u << 20)

static int run_file(const char *path)
{
	struct stat st;
	uint8_t *buf;
	FILE *f;
	int r = 0;

	f = fopen(path, "rb");
	if (!f || fstat(fileno(f), &st) || st.st_size > FUZZ_MAX_INPUT) {
		fprintf(stderr, "fuzz-main: cannot read %s\n", path);
		if (f)
			fclose(f);
		return -EIO;
	}
	/* An exact-size heap copy, so ASan sees reads past the end. */
	buf = malloc(st.st_size ? st.st_size : 1);
	if (!buf || fread(buf, 1, st.st_size, f) != (size_t)st.st_size) {
		fprintf(stderr, "fuzz-main: cannot read %s\n", path);
		r = -EIO;
	} else {
		LLVMFuzzerTestOneInput(buf, st.st_size);
	}
	free(buf);
	fclose(f);
	return r;
}

static int only_files(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

int main(int argc, char **argv)
{
	unsigned ran = 0;
	int failed = 0;

	if (argc < 2) {
		fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
		return 2;
	}
	for (int i = 1; i < argc; i++) {
		struct dirent **names;
		struct stat st;
		int n;

		if (stat(argv[i], &st)) {
			fprintf(stderr, "fuzz-main: %s: %s\n", argv[i],
				strerror(errno));
			failed = 1;
			continue;
		}
		if (!S_ISDIR(st.st_mode)) {
			failed |= run_file(argv[i]) != 0;
			ran++;
			continue;
		}
		n = scandir(argv[i], &names, only_files, alphasort);
		if (n < 0) {
			fprintf(stderr, "fuzz-main: %s: %s\n", argv[i],
				strerror(errno));
			failed = 1;
			continue;
		}
		for (int j = 0; j < n; j++) {
			char path[4096];

			snprintf(path, sizeof(path), "%s/%s", argv[i],
				 names[j]->d_name);
			if (!stat(path, &st) && S_ISREG(st.st_mode)) {
				failed |= run_file(path) != 0;
				ran++;
			}
			free(names[j]);
		}
		free(names);
	}
	printf("fuzz-main: %u inputs\n", ran);
	return failed;
}
