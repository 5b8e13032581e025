/* Index of local disk images by block content (see diskindex.h). */
#include "store/diskindex.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/sha.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define EMPTY UINT32_MAX
/* Bytes read from an image at a time while indexing. */
#define READ_CHUNK (1u << 20)

struct entry {
	uint8_t hash[DISKINDEX_HASH_LEN];
	uint32_t file;		/* EMPTY: free slot */
	uint64_t offset;	/* in the file */
};

struct diskindex {
	struct entry *slots;
	size_t cap;		/* power of two */
	size_t count;
	int fds[DISKINDEX_MAX_FILES];
	dev_t devs[DISKINDEX_MAX_FILES];	/* which files (diskindex_has_file) */
	ino_t inos[DISKINDEX_MAX_FILES];
	size_t n_files;
	uint8_t *chunk;
};

struct diskindex *diskindex_new(void)
{
	struct diskindex *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->chunk = malloc(READ_CHUNK);
	if (!d->chunk) {
		free(d);
		return NULL;
	}
	return d;
}

void diskindex_free(struct diskindex *d)
{
	size_t i;

	if (!d)
		return;
	for (i = 0; i < d->n_files; i++)
		close(d->fds[i]);
	free(d->slots);
	free(d->chunk);
	free(d);
}

size_t diskindex_count(const struct diskindex *d)
{
	return d->count;
}

size_t diskindex_files(const struct diskindex *d)
{
	return d->n_files;
}

static size_t slot_of(const struct diskindex *d, const uint8_t *hash)
{
	uint64_t h;

	memcpy(&h, hash, sizeof(h));
	return h & (d->cap - 1);
}

static int grow(struct diskindex *d)
{
	size_t old_cap = d->cap, cap = old_cap ? old_cap * 2 : 4096, i, j;
	struct entry *old = d->slots, *n = malloc(cap * sizeof(*n));

	if (!n)
		return -ENOMEM;
	for (i = 0; i < cap; i++)
		n[i].file = EMPTY;
	d->slots = n;
	d->cap = cap;
	for (i = 0; i < old_cap; i++) {
		if (old[i].file == EMPTY)
			continue;
		for (j = slot_of(d, old[i].hash); n[j].file != EMPTY; j = (j + 1) & (cap - 1))
			;
		n[j] = old[i];
	}
	free(old);
	return 0;
}

/* Adds a block unless its content is already indexed. */
static int insert(struct diskindex *d, const uint8_t *hash, uint32_t file, uint64_t off)
{
	size_t j;
	int r;

	if ((d->count + 1) * 2 > d->cap) {
		r = grow(d);
		if (r < 0)
			return r;
	}
	for (j = slot_of(d, hash); d->slots[j].file != EMPTY; j = (j + 1) & (d->cap - 1))
		if (!memcmp(d->slots[j].hash, hash, DISKINDEX_HASH_LEN))
			return 0;
	memcpy(d->slots[j].hash, hash, DISKINDEX_HASH_LEN);
	d->slots[j].file = file;
	d->slots[j].offset = off;
	d->count++;
	return 0;
}

static bool all_zero(const uint8_t *p)
{
	static const uint8_t zero[64];
	size_t i;

	for (i = 0; i < DISKINDEX_BLOCK; i += sizeof(zero))
		if (memcmp(p + i, zero, sizeof(zero)))
			return false;
	return true;
}

/* Hashes the blocks of file range [off, off + len) (off block aligned). */
static int index_range(struct diskindex *d, uint32_t file, uint64_t off, uint64_t len)
{
	uint8_t hash[DISKINDEX_HASH_LEN];
	int fd = d->fds[file], r;

	len -= len % DISKINDEX_BLOCK;
	while (len) {
		size_t want = len < READ_CHUNK ? len : READ_CHUNK, i;
		ssize_t got = pread(fd, d->chunk, want, (off_t)off);

		if (got < 0)
			return -errno;
		got -= got % DISKINDEX_BLOCK;
		if (got == 0)
			return 0; /* the file is shorter than its map said */
		for (i = 0; i < (size_t)got; i += DISKINDEX_BLOCK) {
			/* Zero pages travel as ZERO anyway. */
			if (all_zero(d->chunk + i))
				continue;
			SHA256(d->chunk + i, DISKINDEX_BLOCK, hash);
			r = insert(d, hash, file, off + i);
			if (r < 0)
				return r;
		}
		off += got;
		len -= got;
	}
	return 0;
}

/* Runs `qemu-img map` on a qcow2 image and indexes its data clusters. */
static int index_qcow2(struct diskindex *d, uint32_t file, const char *path,
		       char *err, size_t errlen)
{
	char *argv[] = { "qemu-img", "map", "-U", "--output=json", "-f", "qcow2",
			 (char *)path, NULL };
	posix_spawn_file_actions_t fa;
	json_error_t jerr;
	json_t *map = NULL, *e;
	int pipefd[2], status, r = 0;
	size_t i;
	pid_t pid;
	FILE *f;

	if (pipe(pipefd) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[1], 1);
	posix_spawn_file_actions_addclose(&fa, pipefd[0]);
	r = posix_spawnp(&pid, "qemu-img", &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pipefd[1]);
	if (r) {
		close(pipefd[0]);
		snprintf(err, errlen, "cannot run qemu-img to map %s: %s", path, strerror(r));
		return -r;
	}
	f = fdopen(pipefd[0], "r");
	if (f) {
		map = json_loadf(f, 0, &jerr);
		fclose(f);
	} else {
		close(pipefd[0]);
	}
	waitpid(pid, &status, 0);
	if (!map || !json_is_array(map) || !WIFEXITED(status) || WEXITSTATUS(status)) {
		snprintf(err, errlen, "qemu-img map %s failed (is it a qcow2 image?)", path);
		json_decref(map);
		return -EINVAL;
	}
	json_array_foreach(map, i, e) {
		json_t *off = json_object_get(e, "offset");
		json_int_t len = json_integer_value(json_object_get(e, "length"));

		/* Data of this image itself, stored uncompressed at a known place. */
		if (!json_is_true(json_object_get(e, "data")) || !json_is_integer(off) ||
		    json_integer_value(json_object_get(e, "depth")) != 0 || len <= 0 ||
		    json_is_true(json_object_get(e, "compressed")) ||
		    json_integer_value(off) % DISKINDEX_BLOCK)
			continue;
		r = index_range(d, file, (uint64_t)json_integer_value(off), (uint64_t)len);
		if (r < 0) {
			snprintf(err, errlen, "reading %s: %s", path, strerror(-r));
			break;
		}
	}
	json_decref(map);
	return r;
}

int diskindex_add(struct diskindex *d, const char *path, const char *format,
		  char *err, size_t errlen)
{
	uint8_t magic[4] = { 0 };
	struct stat st;
	uint32_t file;
	int fd, r;

	if (d->n_files >= DISKINDEX_MAX_FILES) {
		snprintf(err, errlen, "too many disk sources (at most %d)", DISKINDEX_MAX_FILES);
		return -E2BIG;
	}
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot open disk source %s: %s", path, strerror(-r));
		return r;
	}
	if (fstat(fd, &st) < 0 || !(S_ISREG(st.st_mode) || S_ISBLK(st.st_mode))) {
		close(fd);
		snprintf(err, errlen, "disk source %s is not a file or block device", path);
		return -EINVAL;
	}
	if (!format) {
		format = "raw";
		if (pread(fd, magic, 4, 0) == 4 && !memcmp(magic, "QFI\xfb", 4))
			format = "qcow2";
	}
	file = (uint32_t)d->n_files;
	d->devs[file] = st.st_dev;
	d->inos[file] = st.st_ino;
	d->fds[d->n_files++] = fd;
	if (!strcmp(format, "raw")) {
		r = index_range(d, file, 0, S_ISREG(st.st_mode) ? (uint64_t)st.st_size
								 : UINT64_MAX);
		if (r < 0)
			snprintf(err, errlen, "reading %s: %s", path, strerror(-r));
	} else if (!strcmp(format, "qcow2")) {
		r = index_qcow2(d, file, path, err, errlen);
	} else {
		snprintf(err, errlen, "disk source %s: format '%s' is not supported "
			 "(raw or qcow2)", path, format);
		r = -EOPNOTSUPP;
	}
	return r;
}

bool diskindex_has_file(const struct diskindex *d, const char *path)
{
	struct stat st;
	size_t i;

	if (stat(path, &st) < 0)
		return false;
	for (i = 0; i < d->n_files; i++)
		if (d->devs[i] == st.st_dev && d->inos[i] == st.st_ino)
			return true;
	return false;
}

void diskindex_for_each_hash(const struct diskindex *d,
			     void (*fn)(const uint8_t hash[DISKINDEX_HASH_LEN], void *arg),
			     void *arg)
{
	size_t i;

	for (i = 0; i < d->cap; i++)
		if (d->slots[i].file != EMPTY)
			fn(d->slots[i].hash, arg);
}

bool diskindex_has(const struct diskindex *d, const uint8_t hash[DISKINDEX_HASH_LEN])
{
	size_t j;

	if (!d->count)
		return false;
	for (j = slot_of(d, hash); d->slots[j].file != EMPTY; j = (j + 1) & (d->cap - 1))
		if (!memcmp(d->slots[j].hash, hash, DISKINDEX_HASH_LEN))
			return true;
	return false;
}

int diskindex_get(struct diskindex *d, const uint8_t hash[DISKINDEX_HASH_LEN],
		  uint8_t out[DISKINDEX_BLOCK])
{
	uint8_t got[DISKINDEX_HASH_LEN];
	size_t j;

	if (!d->count)
		return -ENOENT;
	for (j = slot_of(d, hash); d->slots[j].file != EMPTY; j = (j + 1) & (d->cap - 1)) {
		const struct entry *e = &d->slots[j];

		if (memcmp(e->hash, hash, DISKINDEX_HASH_LEN))
			continue;
		if (pread(d->fds[e->file], out, DISKINDEX_BLOCK, (off_t)e->offset) !=
		    DISKINDEX_BLOCK)
			return -ENOENT;
		SHA256(out, DISKINDEX_BLOCK, got);
		return memcmp(got, hash, DISKINDEX_HASH_LEN) ? -ENOENT : 0;
	}
	return -ENOENT;
}
