/*
 * Unit tests of src/store: pages, persistence, tenants, images, damage,
 * torn tails, power loss, checkpoint loss, eviction, gc, verify, locking.
 * Every test works in its own mkdtemp directory and removes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "store/store.h"

#define REC_SIZE (4 + 32 + 4096)

static int rm_fn(const char *path, const struct stat *st, int flag,
		 struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	char *dir = strdup("/tmp/test-store-XXXXXX");

	if (!dir || !mkdtemp(dir))
		return -1;
	*state = dir;
	return 0;
}

static int teardown(void **state)
{
	char *dir = *state;

	nftw(dir, rm_fn, 16, FTW_DEPTH | FTW_PHYS);
	free(dir);
	return 0;
}

/* Page number i of a deterministic family, and its hash. */
static void make_page(uint32_t seed, uint32_t i, uint8_t page[4096],
		      uint8_t hash[32])
{
	uint32_t x = seed * 2654435761u ^ (i + 1) * 40503u;

	for (size_t k = 0; k < 4096; k += 4) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		memcpy(page + k, &x, 4);
	}
	SHA256(page, 4096, hash);
}

static struct store *open_store(const char *dir, const char *tenant,
				uint64_t cap)
{
	struct store_options o = {
		.dir = dir, .tenant = tenant, .cap_bytes = cap,
		.lock_timeout_ms = 2000,
	};
	struct store *s = NULL;
	char err[256];
	int r = store_open(&o, &s, err, sizeof(err));

	if (r)
		fail_msg("store_open: %s (%d)", err, r);
	return s;
}

static void put_pages(struct store *s, uint32_t seed, uint32_t n)
{
	uint8_t page[4096], hash[32];

	for (uint32_t i = 0; i < n; i++) {
		make_page(seed, i, page, hash);
		assert_int_equal(store_put(s, hash, page), 0);
	}
}

static void check_pages(struct store *s, uint32_t seed, uint32_t n)
{
	uint8_t page[4096], hash[32], out[4096];

	for (uint32_t i = 0; i < n; i++) {
		make_page(seed, i, page, hash);
		assert_true(store_has(s, hash));
		assert_int_equal(store_get(s, hash, out), 0);
		assert_memory_equal(out, page, 4096);
	}
}

static void pack_file(const char *dir, const char *tenant, uint32_t num,
		      char *buf, size_t len)
{
	snprintf(buf, len, "%s/tenants/%s/packs/%08" PRIu32 ".pack", dir, tenant,
		 num);
}

static void flip_byte(const char *path, off_t off)
{
	int fd = open(path, O_RDWR);
	uint8_t b;

	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, off), 1);
	b ^= 0x5a;
	assert_int_equal(pwrite(fd, &b, 1, off), 1);
	close(fd);
}

static off_t file_size(const char *path)
{
	struct stat st;

	assert_int_equal(stat(path, &st), 0);
	return st.st_size;
}

/* Every page the store claims is either served intact or not at all. */
static void hash_check_fn(const uint8_t hash[32], void *arg)
{
	(void)hash;
	(*(size_t *)arg)++;
}

struct collect {
	uint8_t (*hs)[32];
	size_t i;
};

static void collect_fn(const uint8_t hash[32], void *arg)
{
	struct collect *c = arg;

	memcpy(c->hs[c->i++], hash, 32);
}

static void check_never_wrong(struct store *s)
{
	struct collect c = { NULL, 0 };
	uint8_t out[4096], md[32];
	size_t n = 0;

	store_for_each_hash(s, hash_check_fn, &n);
	c.hs = calloc(n + 1, 32);
	assert_non_null(c.hs);
	assert_int_equal(store_for_each_hash(s, collect_fn, &c), n);
	for (size_t i = 0; i < n; i++) {
		int r = store_get(s, c.hs[i], out);

		assert_true(r == 0 || r == -ENOENT);
		if (r == 0) {
			SHA256(out, 4096, md);
			assert_memory_equal(md, c.hs[i], 32);
		}
	}
	free(c.hs);
}

/* ---- tests ---- */

static void test_roundtrip(void **state)
{
	const char *dir = *state;
	uint8_t page[4096], hash[32], out[4096];
	struct store *s = open_store(dir, "t1", 0);
	size_t n = 0;

	assert_int_equal(strlen(store_site_id(s)), 32);
	assert_string_equal(store_tenant(s), "t1");
	assert_int_equal(store_generation(s), 1);
	/* More than one write buffer and a few gets from the buffer. */
	put_pages(s, 1, 600);
	check_pages(s, 1, 600);
	put_pages(s, 1, 600);	/* again: deduplicated */
	assert_int_equal(store_page_count(s), 600);
	assert_int_equal(store_for_each_hash(s, hash_check_fn, &n), 600);
	assert_int_equal(n, 600);
	make_page(2, 0, page, hash);
	assert_false(store_has(s, hash));
	assert_int_equal(store_get(s, hash, out), -ENOENT);
	assert_int_equal(store_sync(s), 0);
	check_pages(s, 1, 600);
	store_close(s);
}

static void test_bad_args(void **state)
{
	const char *dir = *state;
	struct store_options o = { .dir = dir, .tenant = "a/b" };
	struct store *s = NULL;
	char err[256];

	assert_int_equal(store_open(&o, &s, err, sizeof(err)), -EINVAL);
	o.tenant = "..";
	assert_int_equal(store_open(&o, &s, err, sizeof(err)), -EINVAL);
	o.tenant = "has space";
	assert_int_equal(store_open(&o, &s, err, sizeof(err)), -EINVAL);
	o.tenant = "";
	assert_int_equal(store_open(&o, &s, err, sizeof(err)), -EINVAL);
	assert_null(s);
}

static void test_reopen(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t1", 0);
	char site[33];

	snprintf(site, sizeof(site), "%s", store_site_id(s));
	put_pages(s, 3, 300);
	store_close(s);
	s = open_store(dir, "t1", 0);
	assert_string_equal(store_site_id(s), site);
	assert_int_equal(store_page_count(s), 300);
	check_pages(s, 3, 300);
	put_pages(s, 4, 10);
	store_close(s);
	s = open_store(dir, "t2", 0);	/* same site, other tenant */
	assert_string_equal(store_site_id(s), site);
	store_close(s);
	s = open_store(dir, "t1", 0);
	check_pages(s, 3, 300);
	check_pages(s, 4, 10);
	store_close(s);
}

/* Collects store_disk_list()'s paths into a JSON array. */
static void collect_path(const char *path, void *arg)
{
	json_array_append_new(arg, json_string(path));
}

static json_t *disk_list(struct store *s)
{
	json_t *a = json_array();
	int n = store_disk_list(s, collect_path, a);

	assert_int_equal(n, (int)json_array_size(a));
	return a;
}

/*
 * Disk images: remembered per tenant across reopen, newest last, a path
 * noted again moves to the end, the oldest go beyond the cap; a damaged
 * list is replaced at the next note, never trusted.
 */
static void test_disk_images(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t1", 0);
	char path[64], err[256], file[600];
	json_t *a;
	FILE *f;

	assert_int_equal(store_disk_note(s, "/img/a.raw", err, sizeof(err)), 0);
	assert_int_equal(store_disk_note(s, "/img/b.qcow2", err, sizeof(err)), 0);
	assert_int_equal(store_disk_note(s, "/img/a.raw", err, sizeof(err)), 0);
	assert_int_equal(store_disk_note(s, "relative.raw", err, sizeof(err)), -EINVAL);
	assert_int_equal(store_disk_note(s, "/img/bad\nname", err, sizeof(err)), -EINVAL);
	store_close(s);
	s = open_store(dir, "t1", 0);
	a = disk_list(s);
	assert_int_equal(json_array_size(a), 2);
	assert_string_equal(json_string_value(json_array_get(a, 0)), "/img/b.qcow2");
	assert_string_equal(json_string_value(json_array_get(a, 1)), "/img/a.raw");
	json_decref(a);
	store_close(s);

	/* Another tenant sees none of them. */
	s = open_store(dir, "t2", 0);
	a = disk_list(s);
	assert_int_equal(json_array_size(a), 0);
	json_decref(a);
	for (int i = 0; i < STORE_MAX_DISKS + 5; i++) {
		snprintf(path, sizeof(path), "/img/%d.raw", i);
		assert_int_equal(store_disk_note(s, path, err, sizeof(err)), 0);
	}
	a = disk_list(s);
	assert_int_equal(json_array_size(a), STORE_MAX_DISKS);
	assert_string_equal(json_string_value(json_array_get(a, 0)), "/img/5.raw");
	json_decref(a);
	store_close(s);

	/* Damaged: unreadable as a list, then replaced by the next note. */
	snprintf(file, sizeof(file), "%s/tenants/t1/disks.json", dir);
	f = fopen(file, "w");
	assert_non_null(f);
	fputs("{\"images\": [\"/img/a.raw\", 7, \"x\"", f);
	fclose(f);
	s = open_store(dir, "t1", 0);
	assert_int_equal(store_disk_list(s, collect_path, NULL), -EBADMSG);
	assert_int_equal(store_disk_note(s, "/img/c.raw", err, sizeof(err)), 0);
	a = disk_list(s);
	assert_int_equal(json_array_size(a), 1);
	json_decref(a);
	store_close(s);
	/* Bad entries of a well-formed list are skipped, the others kept. */
	const char *text = "{\"images\": [\"/ok\", 7, \"rel\", \"/a\\u0001b\"]}";

	a = json_array();
	assert_int_equal(store_disks_parse(text, strlen(text), collect_path, a), 1);
	json_decref(a);
}

static void test_tenant_isolation(void **state)
{
	const char *dir = *state;
	uint8_t page[4096], hash[32], out[4096];
	struct store *a = open_store(dir, "a", 0);
	struct store *b = open_store(dir, "b", 0);

	make_page(5, 0, page, hash);
	assert_int_equal(store_put(a, hash, page), 0);
	assert_true(store_has(a, hash));
	assert_false(store_has(b, hash));
	assert_int_equal(store_get(b, hash, out), -ENOENT);
	assert_int_equal(store_page_count(b), 0);
	store_close(a);
	store_close(b);
	b = open_store(dir, "b", 0);
	assert_false(store_has(b, hash));
	store_close(b);
}

static struct store_image *make_image(const char *id, const char *vm,
				      uint32_t seed, uint32_t n)
{
	struct store_image_info info = { .role = STORE_IMAGE_DEPARTURE };
	struct store_image_block blocks[2] = {
		{ "pc.ram", (uint64_t)n * 4096 },
		{ "vga.vram", 4096 * 2 + 100 },	/* not a page multiple */
	};
	struct store_image *im;
	uint8_t page[4096], hash[32];

	snprintf(info.id, sizeof(info.id), "%s", id);
	snprintf(info.vm, sizeof(info.vm), "%s", vm);
	snprintf(info.peer_site, sizeof(info.peer_site), "0123456789abcdef");
	snprintf(info.peer_image, sizeof(info.peer_image), "peer-%s", id);
	info.peer_generation = 42;
	im = store_image_new(&info, blocks, 2);
	assert_non_null(im);
	for (uint32_t i = 0; i < n; i++) {
		make_page(seed, i, page, hash);
		assert_int_equal(store_image_set(im, 0, i, STORE_PAGE_HASH, hash), 0);
	}
	assert_int_equal(store_image_set(im, 1, 0, STORE_PAGE_ZERO, NULL), 0);
	assert_int_equal(store_image_set(im, 1, 3, STORE_PAGE_ZERO, NULL), -ERANGE);
	assert_int_equal(store_image_set(im, 2, 0, STORE_PAGE_ZERO, NULL), -ERANGE);
	return im;
}

static void commit(struct store *s, struct store_image *im)
{
	char err[256];
	int r = store_image_commit(s, im, err, sizeof(err));

	if (r)
		fail_msg("commit: %s (%d)", err, r);
}

static void test_images(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t", 0);
	struct store_image *im, *ld;
	struct store_image_info *v;
	const uint8_t *h;
	uint8_t page[4096], hash[32];
	size_t n;

	put_pages(s, 7, 20);
	im = make_image("img1", "vm1", 7, 20);
	assert_int_equal(store_image_block_count(im), 2);
	assert_int_equal(store_image_block_find(im, "vga.vram", 8), 1);
	assert_int_equal(store_image_block_find(im, "vga", 3), -1);
	assert_int_equal(store_image_get_info(im)->pages, 23);
	assert_int_equal(store_image_get_info(im)->known_pages, 21);
	commit(s, im);
	assert_true(store_image_get_info(im)->created_ms > 0);

	assert_int_equal(store_image_load(s, "img1", &ld), 0);
	assert_string_equal(store_image_get_info(ld)->vm, "vm1");
	assert_string_equal(store_image_get_info(ld)->peer_image, "peer-img1");
	assert_int_equal(store_image_get_info(ld)->peer_generation, 42);
	assert_int_equal(store_image_get_info(ld)->role, STORE_IMAGE_DEPARTURE);
	assert_int_equal(store_image_get_info(ld)->pages, 23);
	assert_int_equal(store_image_get_info(ld)->known_pages, 21);
	for (uint32_t i = 0; i < 20; i++) {
		make_page(7, i, page, hash);
		assert_int_equal(store_image_page(ld, 0, i, &h), STORE_PAGE_HASH);
		assert_memory_equal(h, hash, 32);
	}
	assert_int_equal(store_image_page(ld, 1, 0, &h), STORE_PAGE_ZERO);
	assert_null(h);
	assert_int_equal(store_image_page(ld, 1, 1, &h), STORE_PAGE_UNKNOWN);
	assert_int_equal(store_image_page(ld, 1, 99, &h), STORE_PAGE_UNKNOWN);
	store_image_free(ld);
	store_image_free(im);

	im = make_image("img2", "vm2", 7, 5);
	commit(s, im);
	store_image_free(im);
	im = make_image("img3", "vm1", 7, 5);
	commit(s, im);
	store_image_free(im);

	assert_int_equal(store_image_list(s, NULL, &v, &n), 0);
	assert_int_equal(n, 3);
	assert_string_equal(v[0].id, "img3");
	assert_string_equal(v[2].id, "img1");
	free(v);
	assert_int_equal(store_image_list(s, "vm1", &v, &n), 0);
	assert_int_equal(n, 2);
	free(v);
	assert_int_equal(store_image_touch(s, "img1"), 0);
	assert_int_equal(store_image_list(s, NULL, &v, &n), 0);
	assert_string_equal(v[2].id, "img1");	/* still the oldest */
	assert_true(v[2].used_ms > v[0].used_ms);
	assert_true(v[2].used_ms > v[1].used_ms);
	free(v);
	assert_int_equal(store_image_touch(s, "nope"), -ENOENT);
	assert_int_equal(store_image_remove(s, "img2"), 0);
	assert_int_equal(store_image_load(s, "img2", &ld), -ENOENT);
	assert_int_equal(store_image_remove(s, "img2"), -ENOENT);
	store_close(s);

	/* Survives a reopen; a damaged image file is refused. */
	s = open_store(dir, "t", 0);
	assert_int_equal(store_image_list(s, NULL, &v, &n), 0);
	assert_int_equal(n, 2);
	free(v);
	{
		char path[512];

		snprintf(path, sizeof(path), "%s/tenants/t/images/img3.img", dir);
		flip_byte(path, file_size(path) - 40);
	}
	assert_int_equal(store_image_load(s, "img3", &ld), -EBADMSG);
	assert_int_equal(store_image_load(s, "img1", &ld), 0);
	store_image_free(ld);
	store_close(s);
}

static void test_image_new_bad(void **state)
{
	struct store_image_info info = { .role = STORE_IMAGE_ARRIVAL };
	struct store_image_block b[2] = { { "a", 4096 }, { "a", 4096 } };

	(void)state;
	snprintf(info.id, sizeof(info.id), "x");
	snprintf(info.vm, sizeof(info.vm), "v");
	assert_null(store_image_new(&info, b, 2));	/* duplicate name */
	b[1].name = "";
	assert_null(store_image_new(&info, b, 2));
	info.role = 7;
	assert_null(store_image_new(&info, b, 1));
	info.role = STORE_IMAGE_ARRIVAL;
	snprintf(info.id, sizeof(info.id), "a/b");
	assert_null(store_image_new(&info, b, 1));
}

static void test_damaged_page(void **state)
{
	const char *dir = *state;
	uint8_t page[4096], hash[32], out[4096];
	struct store *s = open_store(dir, "t", 0);
	char path[512], err[256];
	json_t *rep = NULL;

	put_pages(s, 9, 10);
	store_close(s);
	pack_file(dir, "t", 1, path, sizeof(path));
	flip_byte(path, 3 * REC_SIZE + 36 + 1000);	/* page 3's content */

	s = open_store(dir, "t", 0);
	make_page(9, 3, page, hash);
	assert_true(store_has(s, hash));
	assert_int_equal(store_get(s, hash, out), -ENOENT);
	assert_false(store_has(s, hash));	/* forgotten */
	for (uint32_t i = 0; i < 10; i++)
		if (i != 3) {
			make_page(9, i, page, hash);
			assert_int_equal(store_get(s, hash, out), 0);
		}
	store_close(s);

	/* The checkpoint of close forgot it; damage it again for verify. */
	flip_byte(path, 5 * REC_SIZE + 36 + 7);
	assert_int_equal(store_verify(dir, &rep, err, sizeof(err)), 1);
	assert_true(json_is_true(json_object_get(rep, "damage_found")));
	json_decref(rep);
	assert_int_equal(store_verify(dir, &rep, err, sizeof(err)), 0);
	json_decref(rep);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 8);
	check_never_wrong(s);
	make_page(9, 5, page, hash);
	assert_false(store_has(s, hash));
	/* Putting it again heals it. */
	assert_int_equal(store_put(s, hash, page), 0);
	assert_int_equal(store_get(s, hash, out), 0);
	store_close(s);
	assert_int_equal(store_stats(dir, &rep, err, sizeof(err)), 0);
	{
		json_t *t = json_array_get(json_object_get(rep, "tenants"), 0);

		assert_int_equal(json_integer_value(json_object_get(t, "damaged_pages")), 2);
		assert_int_equal(json_integer_value(json_object_get(t, "pages")), 9);
	}
	json_decref(rep);
}

/* A child puts and syncs, puts more, then dies without closing. */
static pid_t child_store_work(const char *dir, uint32_t seed, uint32_t synced,
			      uint32_t unsynced, bool with_image, bool kill9)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		struct store_options o = { .dir = dir, .tenant = "t",
					   .lock_timeout_ms = 2000 };
		uint8_t page[4096], hash[32];
		struct store *s;
		char err[256];

		if (store_open(&o, &s, err, sizeof(err)))
			_exit(10);
		for (uint32_t i = 0; i < synced; i++) {
			make_page(seed, i, page, hash);
			if (store_put(s, hash, page))
				_exit(11);
		}
		if (with_image) {
			struct store_image_info info = { .role = STORE_IMAGE_ARRIVAL };
			struct store_image_block b = { "pc.ram", (uint64_t)synced * 4096 };
			struct store_image *im;

			snprintf(info.id, sizeof(info.id), "committed");
			snprintf(info.vm, sizeof(info.vm), "vm");
			im = store_image_new(&info, &b, 1);
			for (uint32_t i = 0; im && i < synced; i++) {
				make_page(seed, i, page, hash);
				store_image_set(im, 0, i, STORE_PAGE_HASH, hash);
			}
			if (!im || store_image_commit(s, im, err, sizeof(err)))
				_exit(12);
		} else if (store_sync(s)) {
			_exit(13);
		}
		for (uint32_t i = 0; i < unsynced; i++) {
			make_page(seed + 1, i, page, hash);
			if (store_put(s, hash, page))
				_exit(14);
		}
		if (kill9)
			raise(SIGKILL);
		_exit(0);
	}
	return pid;
}

static void wait_child(pid_t pid, bool killed)
{
	int st;

	assert_int_equal(waitpid(pid, &st, 0), pid);
	if (killed) {
		assert_true(WIFSIGNALED(st));
		assert_int_equal(WTERMSIG(st), SIGKILL);
	} else {
		assert_true(WIFEXITED(st));
		assert_int_equal(WEXITSTATUS(st), 0);
	}
}

static void test_torn_tail(void **state)
{
	const char *dir = *state;
	struct store *s;
	char path[512];

	/* Checkpoint covers 5; 300 more synced by a child that dies. */
	s = open_store(dir, "t", 0);
	put_pages(s, 11, 5);
	store_close(s);
	wait_child(child_store_work(dir, 12, 300, 0, false, false), false);
	pack_file(dir, "t", 1, path, sizeof(path));
	assert_int_equal(file_size(path), 305 * REC_SIZE);
	/* Cut mid-record: 200 whole records of the child remain. */
	assert_int_equal(truncate(path, 205 * REC_SIZE + 1000), 0);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 205);
	check_pages(s, 11, 5);
	check_pages(s, 12, 200);
	check_never_wrong(s);
	assert_int_equal(file_size(path), 205 * REC_SIZE);
	put_pages(s, 13, 3);	/* appends after the cut */
	store_close(s);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 208);
	check_pages(s, 13, 3);
	store_close(s);

	/* Cut below what the checkpoint covers: rebuilt from the pack. */
	assert_int_equal(truncate(path, 100 * REC_SIZE + 7), 0);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 100);
	check_never_wrong(s);
	store_close(s);
}

static void test_power_loss(void **state)
{
	const char *dir = *state;
	uint8_t junk[8192];
	struct store_image *im;
	struct store *s;
	char path[512];
	off_t committed;
	int fd;

	/* 400 pages and an image committed, then 700 unsynced (some of them
	 * written, some only buffered), then kill -9. */
	wait_child(child_store_work(dir, 21, 400, 700, true, true), true);
	pack_file(dir, "t", 1, path, sizeof(path));
	committed = 400 * REC_SIZE;
	assert_true(file_size(path) > committed);
	/* Power loss: the unsynced part is partly lost, partly garbage. */
	assert_int_equal(truncate(path, committed + 300 * REC_SIZE + 99), 0);
	memset(junk, 0xa5, sizeof(junk));
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, junk, sizeof(junk), committed + 50 * REC_SIZE + 17),
			 sizeof(junk));
	assert_int_equal(pwrite(fd, junk, 100, committed + 200 * REC_SIZE + 40), 100);
	close(fd);
	/* A half-written image file from the crash. */
	snprintf(path, sizeof(path), "%s/tenants/t/images/other.img.tmp", dir);
	fd = open(path, O_WRONLY | O_CREAT, 0600);
	assert_int_equal(write(fd, junk, 100), 100);
	close(fd);

	s = open_store(dir, "t", 0);
	assert_int_equal(store_image_load(s, "committed", &im), 0);
	for (uint32_t i = 0; i < 400; i++) {
		uint8_t page[4096], hash[32], out[4096];
		const uint8_t *h;

		make_page(21, i, page, hash);
		assert_int_equal(store_image_page(im, 0, i, &h), STORE_PAGE_HASH);
		assert_memory_equal(h, hash, 32);
		assert_int_equal(store_get(s, h, out), 0);
		assert_memory_equal(out, page, 4096);
	}
	store_image_free(im);
	check_never_wrong(s);
	{
		struct store_image_info *v;
		size_t n;

		assert_int_equal(store_image_list(s, NULL, &v, &n), 0);
		assert_int_equal(n, 1);
		free(v);
	}
	assert_int_equal(access(path, F_OK), -1);	/* the .tmp is gone */
	store_close(s);
	/* Verify finds nothing left to repair after a second pass. */
	{
		json_t *rep;
		char err[256];

		assert_true(store_verify(dir, &rep, err, sizeof(err)) >= 0);
		json_decref(rep);
		assert_int_equal(store_verify(dir, &rep, err, sizeof(err)), 0);
		json_decref(rep);
	}
}

static void test_checkpoint_damaged(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t", 0);
	char path[512];

	put_pages(s, 31, 50);
	store_close(s);
	snprintf(path, sizeof(path), "%s/tenants/t/index", dir);
	flip_byte(path, 100);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 50);
	check_pages(s, 31, 50);
	store_close(s);
	/* Gone entirely: the same. */
	assert_int_equal(unlink(path), 0);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 50);
	store_close(s);
	/* Truncated to nothing. */
	assert_int_equal(truncate(path, 0), 0);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 50);
	store_close(s);
}

static void test_eviction(void **state)
{
	const char *dir = *state;
	uint8_t page[4096], hash[32], out[4096];
	struct store_image *im;
	struct store *s = open_store(dir, "t", 40 * 4096);
	uint64_t gen = store_generation(s);

	put_pages(s, 41, 16);
	im = make_image("i1", "vm", 41, 16);
	commit(s, im);
	store_image_free(im);
	put_pages(s, 42, 16);
	im = make_image("i2", "vm", 42, 16);
	commit(s, im);
	store_image_free(im);
	assert_int_equal(store_generation(s), gen);
	assert_int_equal(store_image_touch(s, "i1"), 0);
	put_pages(s, 43, 16);
	im = make_image("i3", "vm", 43, 16);
	commit(s, im);	/* 48 pages > 40: i2, least recently used, goes */
	store_image_free(im);

	assert_true(store_generation(s) > gen);
	assert_int_equal(store_image_load(s, "i2", &im), -ENOENT);
	assert_int_equal(store_image_load(s, "i1", &im), 0);
	store_image_free(im);
	assert_int_equal(store_image_load(s, "i3", &im), 0);
	store_image_free(im);
	assert_int_equal(store_page_count(s), 32);
	make_page(42, 0, page, hash);
	assert_false(store_has(s, hash));
	check_pages(s, 41, 16);
	check_pages(s, 43, 16);
	/* Pages put since open and named by no image stay while open. */
	put_pages(s, 44, 30);
	im = make_image("i4", "vm", 41, 1);
	commit(s, im);
	store_image_free(im);
	check_pages(s, 44, 30);
	store_close(s);

	/* After reopen: consistent, and the generation persisted. */
	s = open_store(dir, "t", 40 * 4096);
	assert_true(store_generation(s) > gen);
	check_never_wrong(s);
	make_page(41, 0, page, hash);
	assert_int_equal(store_get(s, hash, out), 0);
	store_close(s);
}

static void test_gc(void **state)
{
	const char *dir = *state;
	struct store_image *im;
	char err[256];
	json_t *rep;
	struct store *a = open_store(dir, "a", 0);
	struct store *b = open_store(dir, "b", 0);
	struct store *c = open_store(dir, "c", 0);

	put_pages(a, 51, 10);
	im = make_image("old", "vm", 51, 10);
	commit(a, im);
	store_image_free(im);
	put_pages(b, 52, 10);
	im = make_image("new", "vm", 52, 10);
	commit(b, im);
	store_image_free(im);
	put_pages(c, 53, 10);	/* garbage once closed: no image */
	store_close(a);
	store_close(b);
	store_close(c);

	/* Big cap: only the garbage goes. */
	assert_int_equal(store_gc(dir, 1ull << 30, &rep, err, sizeof(err)), 0);
	assert_int_equal(json_integer_value(json_object_get(rep, "reclaimed_pages")), 10);
	assert_int_equal(json_array_size(json_object_get(rep, "evicted")), 0);
	json_decref(rep);
	/* Cap of 15 pages: the older image (tenant a) goes. */
	assert_int_equal(store_gc(dir, 15 * 4096, &rep, err, sizeof(err)), 0);
	assert_int_equal(json_array_size(json_object_get(rep, "evicted")), 1);
	assert_string_equal(json_string_value(json_object_get(
		json_array_get(json_object_get(rep, "evicted"), 0), "tenant")), "a");
	json_decref(rep);
	a = open_store(dir, "a", 0);
	assert_int_equal(store_page_count(a), 0);
	store_close(a);
	b = open_store(dir, "b", 0);
	check_pages(b, 52, 10);
	store_close(b);
	assert_int_equal(store_stats(dir, &rep, err, sizeof(err)), 0);
	assert_int_equal(json_integer_value(json_object_get(rep, "pages")), 10);
	json_decref(rep);
}

static void test_lock(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t", 0);
	pid_t pid;
	int st, pfd[2];
	char msg[256] = "";

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct store_options o = { .dir = dir, .tenant = "t",
					   .lock_timeout_ms = 100 };
		struct store *s2;
		char err[256] = "";
		int r = store_open(&o, &s2, err, sizeof(err));

		(void)!write(pfd[1], err, strlen(err) + 1);
		_exit(r == -EBUSY ? 0 : 1);
	}
	close(pfd[1]);
	assert_true(read(pfd[0], msg, sizeof(msg) - 1) > 0);
	close(pfd[0]);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	{
		char want[64];

		snprintf(want, sizeof(want), "locked by pid %d", (int)getpid());
		assert_non_null(strstr(msg, want));
	}
	/* Another tenant is not blocked. */
	{
		struct store *o = open_store(dir, "u", 0);

		store_close(o);
	}
	store_close(s);
	s = open_store(dir, "t", 0);	/* released */
	store_close(s);
}

static void test_compaction_crash_leftovers(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t", 0);
	char p1[512], p9[512];
	int in, out;
	ssize_t n;
	char buf[65536];

	put_pages(s, 61, 20);
	store_close(s);
	/* A pack not in the checkpoint, numbered above: scanned (duplicates). */
	pack_file(dir, "t", 1, p1, sizeof(p1));
	pack_file(dir, "t", 9, p9, sizeof(p9));
	in = open(p1, O_RDONLY);
	out = open(p9, O_WRONLY | O_CREAT, 0600);
	while ((n = read(in, buf, sizeof(buf))) > 0)
		assert_int_equal(write(out, buf, n), n);
	close(in);
	close(out);
	s = open_store(dir, "t", 0);
	assert_int_equal(store_page_count(s), 20);
	check_pages(s, 61, 20);
	store_close(s);
	{
		json_t *rep;
		char err[256];

		/* Duplicates are reclaimed by verify; nothing is damaged. */
		assert_int_equal(store_verify(dir, &rep, err, sizeof(err)), 0);
		json_decref(rep);
	}
	s = open_store(dir, "t", 0);
	check_pages(s, 61, 20);
	store_close(s);
}

/*
 * kill -9 at arbitrary moments: a child commits image after image (with a
 * small cap, so eviction and compaction run too) and is killed right after
 * it reports a commit, i.e. somewhere in the next put, sync, image write
 * or compaction. Every image left must load and all its pages must be
 * served intact; nothing wrong is ever served.
 */
static void test_kill9_loop(void **state)
{
	const char *dir = *state;

	for (int round = 0; round < 6; round++) {
		struct store_image_info *v;
		struct store *s;
		int pfd[2], st;
		size_t n;
		pid_t pid;
		char c;

		assert_int_equal(pipe(pfd), 0);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			struct store_options o = { .dir = dir, .tenant = "k",
						   .cap_bytes = 300 * 4096,
						   .lock_timeout_ms = 5000 };
			uint8_t page[4096], hash[32];
			char err[256];

			close(pfd[0]);
			if (store_open(&o, &s, err, sizeof(err)))
				_exit(10);
			for (uint32_t k = 0;; k++) {
				uint32_t seed = 1000 + round * 1000 + k;
				struct store_image_info info = {
					.role = STORE_IMAGE_DEPARTURE };
				struct store_image_block b = { "ram", 60 * 4096 };
				struct store_image *im;

				snprintf(info.id, sizeof(info.id), "r%d-%u", round, k);
				snprintf(info.vm, sizeof(info.vm), "vm%u", k % 3);
				im = store_image_new(&info, &b, 1);
				if (!im)
					_exit(11);
				for (uint32_t i = 0; i < 60; i++) {
					/* Half shared with the previous image. */
					uint32_t sd = i < 30 ? seed - 1 : seed;

					make_page(sd, i, page, hash);
					if (store_put(s, hash, page) ||
					    store_image_set(im, 0, i, STORE_PAGE_HASH, hash))
						_exit(12);
				}
				if (store_image_commit(s, im, err, sizeof(err)))
					_exit(13);
				store_image_free(im);
				if (write(pfd[1], "c", 1) != 1)
					_exit(14);
			}
		}
		close(pfd[1]);
		/* Let it commit a few, then kill it wherever it is. */
		for (int i = 0; i < 3 + round; i++)
			assert_int_equal(read(pfd[0], &c, 1), 1);
		kill(pid, SIGKILL);
		assert_int_equal(waitpid(pid, &st, 0), pid);
		close(pfd[0]);
		assert_true(WIFSIGNALED(st));

		s = open_store(dir, "k", 300 * 4096);
		assert_int_equal(store_image_list(s, NULL, &v, &n), 0);
		assert_true(n >= 1);
		for (size_t i = 0; i < n; i++) {
			struct store_image *im;
			uint8_t out[4096], md[32];

			assert_int_equal(store_image_load(s, v[i].id, &im), 0);
			for (uint32_t p = 0; p < 60; p++) {
				const uint8_t *h;

				assert_int_equal(store_image_page(im, 0, p, &h),
						 STORE_PAGE_HASH);
				assert_int_equal(store_get(s, h, out), 0);
				SHA256(out, 4096, md);
				assert_memory_equal(md, h, 32);
			}
			store_image_free(im);
		}
		free(v);
		check_never_wrong(s);
		store_close(s);
	}
}

struct thr {
	struct store *s;
	uint32_t seed;
	int failures;
};

static void *thr_main(void *arg)
{
	struct thr *t = arg;
	uint8_t page[4096], hash[32], out[4096];

	for (uint32_t i = 0; i < 800; i++) {
		make_page(t->seed, i, page, hash);
		if (store_put(t->s, hash, page))
			t->failures++;
		/* Read back one of ours and one of the other thread's. */
		make_page(t->seed, i / 2, page, hash);
		if (store_get(t->s, hash, out) || memcmp(out, page, 4096))
			t->failures++;
		make_page(t->seed ^ 1, i / 3, page, hash);
		if (store_has(t->s, hash) &&
		    (store_get(t->s, hash, out) || memcmp(out, page, 4096)))
			t->failures++;
		if (i % 300 == 0 && store_sync(t->s))
			t->failures++;
	}
	return NULL;
}

static void test_threads(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t", 0);
	struct thr t[2] = { { s, 70, 0 }, { s, 71, 0 } };
	pthread_t th[2];

	for (int i = 0; i < 2; i++)
		assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
	for (int i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	assert_int_equal(t[0].failures, 0);
	assert_int_equal(t[1].failures, 0);
	assert_int_equal(store_page_count(s), 1600);
	store_close(s);
	s = open_store(dir, "t", 0);
	check_pages(s, 70, 800);
	check_pages(s, 71, 800);
	store_close(s);
}

/* Two opens of one tenant in one process share the handle and its lock. */
static void test_shared_open(void **state)
{
	const char *dir = *state;
	struct store *a = open_store(dir, "t", 0), *b = open_store(dir, "t", 0);
	struct store *c = open_store(dir, "u", 0);

	assert_ptr_equal(a, b);
	assert_ptr_not_equal(a, c);
	put_pages(a, 80, 10);
	check_pages(b, 80, 10);
	store_close(a);
	/* b still holds the lock and sees every page. */
	check_pages(b, 80, 10);
	assert_int_equal(store_page_count(b), 10);
	store_close(b);
	store_close(c);
	a = open_store(dir, "t", 0);
	check_pages(a, 80, 10);
	store_close(a);
}

struct putter {
	struct store *s;
	uint32_t seed;
};

static void *put_later(void *arg)
{
	struct putter *p = arg;

	usleep(50000);
	put_pages(p->s, p->seed, 1);
	return NULL;
}

/* store_wait_has: what another thread puts ends the wait; a deadline ends it too. */
static void test_wait_has(void **state)
{
	const char *dir = *state;
	struct store *s = open_store(dir, "t", 0);
	struct putter p = { s, 90 };
	uint8_t page[4096], hash[32];
	pthread_t th;

	put_pages(s, 91, 1);
	make_page(91, 0, page, hash);
	/* Held already: true, whatever the deadline. */
	assert_true(store_wait_has(s, hash, 0));
	/* Nobody puts it: false once the deadline passed. */
	make_page(92, 0, page, hash);
	assert_false(store_wait_has(s, hash, tsb_now_ns() + 20000000));
	/* Another thread puts it while we wait. */
	make_page(90, 0, page, hash);
	assert_int_equal(pthread_create(&th, NULL, put_later, &p), 0);
	assert_true(store_wait_has(s, hash, tsb_now_ns() + 30000000000ull));
	pthread_join(th, NULL);
	store_close(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tenant_isolation, setup, teardown),
		cmocka_unit_test_setup_teardown(test_images, setup, teardown),
		cmocka_unit_test_setup_teardown(test_image_new_bad, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_page, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
		cmocka_unit_test_setup_teardown(test_power_loss, setup, teardown),
		cmocka_unit_test_setup_teardown(test_checkpoint_damaged, setup, teardown),
		cmocka_unit_test_setup_teardown(test_eviction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gc, setup, teardown),
		cmocka_unit_test_setup_teardown(test_disk_images, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
		cmocka_unit_test_setup_teardown(test_threads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shared_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wait_has, setup, teardown),
		cmocka_unit_test_setup_teardown(test_kill9_loop, setup, teardown),
		cmocka_unit_test_setup_teardown(test_compaction_crash_leftovers,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
