/*
 * Fuzz target: the store's on-disk files, which a crash, a bad disk or a
 * careless admin can leave in any state. The first byte picks what the
 * rest of the input becomes:
 *   0  an image file, decoded in memory
 *   1  the index checkpoint of a tenant that also has a small valid pack
 *   2  a pack file (with no checkpoint)
 *   3  an image file in a store, loaded, listed and verified
 *   4  the state file (generation), a NUL, then the site id
 * Cases 1-4 write a throw-away store in a temporary directory (on tmpfs,
 * /dev/shm, when there is one), open it
 * (recovery), read every page it claims (each must hash right), then run
 * the store-wide tools stats, verify and gc, in that order, except those
 * the first byte's quotient (data[0] / 5) leaves out: bit 0 stats, bit 1
 * verify, bit 2 gc. Each of them opens the store again, so running all
 * three on every input made an input four opens; leaving some out lets
 * libFuzzer try twice as many stores, each tool still on every kind of
 * file (a quotient of 0, as in the older corpus, runs all three). Nothing may crash, and no page may be
 * served with the wrong content.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "store/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char base[64];

/* The directories mkdirs() makes, by depth under base. */
static bool skeleton(int depth, const char *name)
{
	switch (depth) {
	case 0: return !strcmp(name, "tenants");
	case 1: return !strcmp(name, "t");
	case 2: return !strcmp(name, "packs") || !strcmp(name, "images");
	}
	return false;
}

/*
 * Removes what the directory open as dfd holds (and closes dfd), except
 * the skeleton's directories when skel: those stay (emptied) for the next
 * input instead of being removed and made again each time. What the store
 * made goes, directories too. d_type (tmpfs fills it in) saves a stat per
 * entry; on DT_UNKNOWN, an entry that unlink() refuses is a directory.
 */
static void empty_dir(int dfd, int depth, bool skel)
{
	DIR *d = fdopendir(dfd);
	struct dirent *e;

	if (!d) {
		close(dfd);
		return;
	}
	while ((e = readdir(d))) {
		bool keep;
		int sub;

		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (e->d_type != DT_DIR &&
		    (!unlinkat(dirfd(d), e->d_name, 0) || e->d_type != DT_UNKNOWN))
			continue;
		sub = openat(dirfd(d), e->d_name,
			     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			continue;
		keep = skel && skeleton(depth, e->d_name);
		empty_dir(sub, depth + 1, keep);
		if (!keep)
			(void)unlinkat(dirfd(d), e->d_name, AT_REMOVEDIR);
	}
	closedir(d);
}

static void wipe(bool all)
{
	int fd = open(base, O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd >= 0)
		empty_dir(fd, 0, !all);
}

static void cleanup(void)
{
	wipe(true);
	rmdir(base);
}

static void put_file(const char *rel, const void *p, size_t n)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", base, rel);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		__builtin_trap();
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w <= 0)
			__builtin_trap();
		p = (const uint8_t *)p + w;
		n -= (size_t)w;
	}
	close(fd);
}

static void mkdirs(void)
{
	char path[256];
	static const char *const sub[] = {
		"tenants", "tenants/t", "tenants/t/packs", "tenants/t/images",
	};

	for (size_t i = 0; i < sizeof(sub) / sizeof(sub[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", base, sub[i]);
		mkdir(path, 0700);
	}
}

/* A pack of three good records. */
static void put_valid_pack(void)
{
	static uint8_t rec[3 * STORE_REC_SIZE];

	for (int i = 0; i < 3; i++) {
		uint8_t *r = rec + i * STORE_REC_SIZE;

		memcpy(r, STORE_REC_MAGIC, 4);
		memset(r + STORE_REC_HDR, 'a' + i, STORE_PAGE_SIZE);
		SHA256(r + STORE_REC_HDR, STORE_PAGE_SIZE, r + 4);
	}
	put_file("tenants/t/packs/00000001.pack", rec, sizeof(rec));
}

static void check_fn(const uint8_t hash[STORE_HASH_LEN], void *arg)
{
	(void)hash;
	(void)arg;
}

enum { SKIP_STATS = 1, SKIP_VERIFY = 2, SKIP_GC = 4 };

static void exercise_store(unsigned skip)
{
	struct store_options o = { .dir = base, .tenant = "t" };
	struct store_image_info *v = NULL;
	uint8_t (*hs)[STORE_HASH_LEN] = NULL;
	struct store *s;
	char err[256];
	json_t *rep;
	size_t n, i;

	if (store_open(&o, &s, err, sizeof(err)) == 0) {
		uint8_t out[STORE_PAGE_SIZE], md[STORE_HASH_LEN];

		n = store_for_each_hash(s, check_fn, NULL);
		hs = calloc(n + 1, STORE_HASH_LEN);
		if (hs) {
			size_t k = 0;

			for (i = 0; i < s->idx.cap && k < n; i++)
				if (s->idx.e[i].pack)
					memcpy(hs[k++], s->idx.e[i].hash, STORE_HASH_LEN);
			for (i = 0; i < k; i++) {
				if (store_get(s, hs[i], out))
					continue;
				SHA256(out, STORE_PAGE_SIZE, md);
				if (memcmp(md, hs[i], STORE_HASH_LEN))
					__builtin_trap();	/* a wrong page served */
			}
		}
		free(hs);
		if (store_image_list(s, NULL, &v, &n) == 0) {
			for (i = 0; i < n; i++) {
				struct store_image *im;

				if (store_image_load(s, v[i].id, &im) == 0)
					store_image_free(im);
			}
			free(v);
		}
		store_close(s);
	}
	if (!(skip & SKIP_STATS) && store_stats(base, &rep, err, sizeof(err)) == 0)
		json_decref(rep);
	if (!(skip & SKIP_VERIFY) && store_verify(base, &rep, err, sizeof(err)) >= 0)
		json_decref(rep);
	if (!(skip & SKIP_GC) &&
	    store_gc(base, 1ull << 30, &rep, err, sizeof(err)) == 0)
		json_decref(rep);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct store_image_info info;
	struct store_image *im;

	if (size < 1)
		return 0;
	if (data[0] % 5 == 0) {
		if (store_image_decode(data + 1, size - 1, &im) == 0) {
			struct tsb_buf b;

			/* What decodes re-encodes to the same bytes. */
			tsb_buf_init(&b);
			if (store_image_encode(im, &b) == 0 &&
			    (b.len != size - 1 || memcmp(b.data, data + 1, b.len)))
				__builtin_trap();
			tsb_buf_fini(&b);
			store_image_free(im);
		}
		(void)store_image_decode_info(data + 1, size - 1, &info);
		return 0;
	}
	if (!base[0]) {
		/* tmpfs if there is one: the store fsyncs and renames on every
		 * open, which on a disk costs far more than the code under test. */
		snprintf(base, sizeof(base), "/dev/shm/fuzz-store-XXXXXX");
		if (!mkdtemp(base)) {
			snprintf(base, sizeof(base), "/tmp/fuzz-store-XXXXXX");
			if (!mkdtemp(base))
				__builtin_trap();
		}
		atexit(cleanup);
	}
	wipe(false);
	mkdirs();
	switch (data[0] % 5) {
	case 1:
		put_valid_pack();
		put_file("tenants/t/index", data + 1, size - 1);
		break;
	case 2:
		put_file("tenants/t/packs/00000001.pack", data + 1, size - 1);
		break;
	case 3:
		put_valid_pack();
		if (size > 1 && store_image_decode_info(data + 1, size - 1, &info) == 0) {
			char rel[128];

			snprintf(rel, sizeof(rel), "tenants/t/images/%s.img", info.id);
			put_file(rel, data + 1, size - 1);
		} else {
			put_file("tenants/t/images/x.img", data + 1, size - 1);
		}
		break;
	case 4: {
		const uint8_t *nul = memchr(data + 1, 0, size - 1);
		size_t half = nul ? (size_t)(nul - (data + 1)) : size - 1;

		put_valid_pack();
		put_file("tenants/t/state", data + 1, half);
		if (nul)
			put_file("site-id", nul + 1, size - 1 - half - 1);
		break;
	}
	}
	exercise_store(data[0] / 5u);
	return 0;
}
