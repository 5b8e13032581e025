/* Disk index against real raw and qcow2 images (qcow2 made with qemu-img). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "store/diskindex.h"

#define BLOCKS 64

static char dir[] = "/tmp/tsb-diskindex-XXXXXX";

static void block_of(unsigned i, uint8_t b[DISKINDEX_BLOCK])
{
	unsigned j;

	for (j = 0; j < DISKINDEX_BLOCK; j++)
		b[j] = (uint8_t)(i * 31 + j * 7 + (j >> 8));
}

/* A raw image: block i holds block_of(i), except every 8th block is zero. */
static void make_raw(const char *path)
{
	uint8_t b[DISKINDEX_BLOCK];
	FILE *f = fopen(path, "wb");
	unsigned i;

	assert_non_null(f);
	for (i = 0; i < BLOCKS; i++) {
		if (i % 8 == 0)
			memset(b, 0, sizeof(b));
		else
			block_of(i, b);
		assert_int_equal(fwrite(b, 1, sizeof(b), f), sizeof(b));
	}
	fclose(f);
}

static int setup(void **state)
{
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void check_all(struct diskindex *d, bool present)
{
	uint8_t b[DISKINDEX_BLOCK], got[DISKINDEX_BLOCK], h[DISKINDEX_HASH_LEN];
	unsigned i;

	for (i = 0; i < BLOCKS; i++) {
		if (i % 8 == 0)
			continue;
		block_of(i, b);
		SHA256(b, sizeof(b), h);
		if (present) {
			assert_int_equal(diskindex_get(d, h, got), 0);
			assert_memory_equal(got, b, sizeof(b));
		} else {
			assert_int_equal(diskindex_get(d, h, got), -ENOENT);
		}
	}
}

static void test_raw(void **state)
{
	struct diskindex *d = diskindex_new();
	uint8_t zero[DISKINDEX_BLOCK] = { 0 }, h[DISKINDEX_HASH_LEN], got[DISKINDEX_BLOCK];
	char path[256], err[256];
	int fd;

	snprintf(path, sizeof(path), "%s/a.raw", dir);
	make_raw(path);
	assert_int_equal(diskindex_add(d, path, NULL, err, sizeof(err)), 0);
	/* Zero blocks are not indexed: they travel as zero pages. */
	assert_int_equal(diskindex_count(d), BLOCKS - BLOCKS / 8);
	check_all(d, true);
	SHA256(zero, sizeof(zero), h);
	assert_int_equal(diskindex_get(d, h, got), -ENOENT);

	/* The file changed after indexing: the hash check refuses the block. */
	fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "x", 1, 0), 1);
	assert_int_equal(pwrite(fd, "x", 1, DISKINDEX_BLOCK * 9 + 5), 1);
	close(fd);
	block_of(9, got);
	SHA256(got, sizeof(got), h);
	assert_int_equal(diskindex_get(d, h, got), -ENOENT);
	diskindex_free(d);
}

static void test_qcow2(void **state)
{
	struct diskindex *d = diskindex_new();
	char raw[256], q[256], cmd[1024], err[256];

	snprintf(raw, sizeof(raw), "%s/b.raw", dir);
	snprintf(q, sizeof(q), "%s/b.qcow2", dir);
	make_raw(raw);
	snprintf(cmd, sizeof(cmd), "qemu-img convert -f raw -O qcow2 %s %s", raw, q);
	if (system(cmd) != 0)
		skip();
	unlink(raw);
	assert_int_equal(diskindex_add(d, q, NULL, err, sizeof(err)), 0);
	assert_int_equal(diskindex_count(d), BLOCKS - BLOCKS / 8);
	check_all(d, true);
	diskindex_free(d);
}

static void test_errors(void **state)
{
	struct diskindex *d = diskindex_new();
	char path[256], err[256];

	assert_int_equal(diskindex_add(d, "/nonexistent/x.img", NULL, err, sizeof(err)),
			 -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/x.img"));
	snprintf(path, sizeof(path), "%s/c.raw", dir);
	make_raw(path);
	assert_int_equal(diskindex_add(d, path, "vmdk", err, sizeof(err)), -EOPNOTSUPP);
	assert_non_null(strstr(err, "vmdk"));
	/* A raw file is not a qcow2. */
	assert_int_equal(diskindex_add(d, path, "qcow2", err, sizeof(err)), -EINVAL);
	assert_int_equal(diskindex_add(d, dir, NULL, err, sizeof(err)), -EINVAL);
	diskindex_free(d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_raw),
		cmocka_unit_test(test_qcow2),
		cmocka_unit_test(test_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
