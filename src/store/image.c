/*
 * Image maps: one VM's memory at one moment as page states and hashes,
 * their file format (docs/store.md) and the image verbs of a store.
 */
#include "store/internal.h"

#include "common/buf.h"
#include "common/file.h"
#include "common/reader.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Hashes are allocated in chunks of this many pages, on first use. */
#define HCHUNK 1024u

struct img_block {
	char *name;
	size_t name_len;
	uint64_t length;
	uint64_t npages;
	uint8_t *state;		/* npages bytes */
	uint8_t **chunks;	/* ceil(npages / HCHUNK) pointers */
};

struct store_image {
	struct store_image_info info;
	size_t n_blocks;
	struct img_block *b;
};

static uint64_t pages_of(uint64_t length)
{
	return length / STORE_PAGE_SIZE + (length % STORE_PAGE_SIZE != 0);
}

void store_image_free(struct store_image *im)
{
	size_t i;
	uint64_t c;

	if (!im)
		return;
	for (i = 0; i < im->n_blocks; i++) {
		struct img_block *b = &im->b[i];

		if (b->chunks)
			for (c = 0; c < (b->npages + HCHUNK - 1) / HCHUNK; c++)
				free(b->chunks[c]);
		free(b->chunks);
		free(b->state);
		free(b->name);
	}
	free(im->b);
	free(im);
}

static int block_init(struct img_block *b, const char *name, size_t name_len,
		      uint64_t length)
{
	b->name = strndup(name, name_len);
	b->name_len = name_len;
	b->length = length;
	b->npages = pages_of(length);
	b->state = calloc(b->npages ? b->npages : 1, 1);
	b->chunks = calloc((b->npages + HCHUNK - 1) / HCHUNK + 1,
			   sizeof(*b->chunks));
	if (!b->name || !b->state || !b->chunks)
		return -ENOMEM;
	return 0;
}

static bool block_name_valid(const char *name, size_t len)
{
	return name && len >= 1 && len <= 255 && !memchr(name, 0, len);
}

static bool role_valid(int role)
{
	return role == STORE_IMAGE_DEPARTURE || role == STORE_IMAGE_ARRIVAL;
}

static bool info_valid(const struct store_image_info *info)
{
	return store_id_valid(info->id) && store_id_valid(info->vm) &&
	       role_valid(info->role) &&
	       (!info->peer_site[0] || store_id_valid(info->peer_site)) &&
	       (!info->peer_image[0] || store_id_valid(info->peer_image));
}

struct store_image *store_image_new(const struct store_image_info *info,
				    const struct store_image_block *blocks,
				    size_t n_blocks)
{
	struct store_image *im;
	size_t i, j;

	if (!info || n_blocks > STORE_IMAGE_MAX_BLOCKS || (n_blocks && !blocks))
		return NULL;
	im = calloc(1, sizeof(*im));
	if (!im)
		return NULL;
	/* Copy the caller's fields through bounded copies (they may not be
	 * NUL-terminated within the array if the caller misbehaves). */
	snprintf(im->info.id, sizeof(im->info.id), "%.*s", STORE_MAX_ID, info->id);
	snprintf(im->info.vm, sizeof(im->info.vm), "%.*s", STORE_MAX_ID, info->vm);
	snprintf(im->info.peer_site, sizeof(im->info.peer_site), "%.*s",
		 STORE_MAX_ID, info->peer_site);
	snprintf(im->info.peer_image, sizeof(im->info.peer_image), "%.*s",
		 STORE_MAX_ID, info->peer_image);
	im->info.role = info->role;
	im->info.peer_generation = info->peer_generation;
	if (!info_valid(&im->info))
		goto fail;
	im->b = calloc(n_blocks ? n_blocks : 1, sizeof(*im->b));
	if (!im->b)
		goto fail;
	for (i = 0; i < n_blocks; i++) {
		size_t nl = blocks[i].name ? strnlen(blocks[i].name, 256) : 0;

		if (!block_name_valid(blocks[i].name, nl) ||
		    blocks[i].length > STORE_IMAGE_MAX_BLOCK_LEN)
			goto fail;
		for (j = 0; j < i; j++)
			if (im->b[j].name_len == nl &&
			    !memcmp(im->b[j].name, blocks[i].name, nl))
				goto fail;
		im->n_blocks = i + 1;
		if (block_init(&im->b[i], blocks[i].name, nl, blocks[i].length))
			goto fail;
		im->info.pages += im->b[i].npages;
	}
	return im;
fail:
	store_image_free(im);
	return NULL;
}

const struct store_image_info *store_image_get_info(const struct store_image *im)
{
	return &im->info;
}

size_t store_image_block_count(const struct store_image *im)
{
	return im->n_blocks;
}

int store_image_block_find(const struct store_image *im, const char *name,
			   size_t name_len)
{
	size_t i;

	for (i = 0; i < im->n_blocks; i++)
		if (im->b[i].name_len == name_len &&
		    !memcmp(im->b[i].name, name, name_len))
			return (int)i;
	return -1;
}

int store_image_set(struct store_image *im, size_t block, uint64_t page_index,
		    enum store_page_state state, const uint8_t *hash)
{
	struct img_block *b;
	uint8_t old;

	if (block >= im->n_blocks)
		return -ERANGE;
	b = &im->b[block];
	if (page_index >= b->npages)
		return -ERANGE;
	if (state != STORE_PAGE_UNKNOWN && state != STORE_PAGE_ZERO &&
	    state != STORE_PAGE_HASH)
		return -EINVAL;
	if (state == STORE_PAGE_HASH) {
		uint8_t **c = &b->chunks[page_index / HCHUNK];

		if (!hash)
			return -EINVAL;
		if (!*c) {
			*c = malloc((size_t)HCHUNK * STORE_HASH_LEN);
			if (!*c)
				return -ENOMEM;
		}
		memcpy(*c + (page_index % HCHUNK) * STORE_HASH_LEN, hash,
		       STORE_HASH_LEN);
	}
	old = b->state[page_index];
	if (old == STORE_PAGE_UNKNOWN && state != STORE_PAGE_UNKNOWN)
		im->info.known_pages++;
	else if (old != STORE_PAGE_UNKNOWN && state == STORE_PAGE_UNKNOWN)
		im->info.known_pages--;
	b->state[page_index] = state;
	return 0;
}

enum store_page_state store_image_page(const struct store_image *im, size_t block,
				       uint64_t page_index, const uint8_t **hash)
{
	const struct img_block *b;
	uint8_t st;

	if (hash)
		*hash = NULL;
	if (block >= im->n_blocks || page_index >= im->b[block].npages)
		return STORE_PAGE_UNKNOWN;
	b = &im->b[block];
	st = b->state[page_index];
	if (st == STORE_PAGE_HASH && hash)
		*hash = b->chunks[page_index / HCHUNK] +
			(page_index % HCHUNK) * STORE_HASH_LEN;
	return st;
}

void store_image_set_times(struct store_image *im, int64_t created_ms,
			   int64_t used_ms)
{
	im->info.created_ms = created_ms;
	im->info.used_ms = used_ms;
}

void store_image_for_each_hash(const struct store_image *im,
			       void (*fn)(const uint8_t *hash, void *arg),
			       void *arg)
{
	size_t i;
	uint64_t k;

	for (i = 0; i < im->n_blocks; i++) {
		const struct img_block *b = &im->b[i];

		for (k = 0; k < b->npages; k++)
			if (b->state[k] == STORE_PAGE_HASH)
				fn(b->chunks[k / HCHUNK] +
				   (k % HCHUNK) * STORE_HASH_LEN, arg);
	}
}

/* ---- file format ---- */

static void put_str(struct tsb_buf *b, const char *s)
{
	size_t n = strlen(s);

	tsb_buf_put_u8(b, n);
	tsb_buf_append(b, s, n);
}

int store_image_encode(const struct store_image *im, struct tsb_buf *b)
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	size_t i, start = b->len;
	uint64_t k;

	tsb_buf_append(b, STORE_IMAGE_MAGIC, 4);
	tsb_buf_put_be32(b, STORE_IMAGE_VERSION);
	tsb_buf_put_u8(b, im->info.role);
	put_str(b, im->info.id);
	put_str(b, im->info.vm);
	put_str(b, im->info.peer_site);
	put_str(b, im->info.peer_image);
	tsb_buf_put_be64(b, im->info.peer_generation);
	tsb_buf_put_be64(b, (uint64_t)im->info.created_ms);
	tsb_buf_put_be64(b, im->info.pages);
	tsb_buf_put_be64(b, im->info.known_pages);
	tsb_buf_put_be32(b, im->n_blocks);
	for (i = 0; i < im->n_blocks; i++) {
		tsb_buf_put_be16(b, im->b[i].name_len);
		tsb_buf_append(b, im->b[i].name, im->b[i].name_len);
		tsb_buf_put_be64(b, im->b[i].length);
	}
	for (i = 0; i < im->n_blocks; i++) {
		const struct img_block *bl = &im->b[i];

		for (k = 0; k < bl->npages; k++) {
			tsb_buf_put_u8(b, bl->state[k]);
			if (bl->state[k] == STORE_PAGE_HASH)
				tsb_buf_append(b, bl->chunks[k / HCHUNK] +
					       (k % HCHUNK) * STORE_HASH_LEN,
					       STORE_HASH_LEN);
		}
	}
	if (b->err)
		return b->err;
	SHA256(b->data + start, b->len - start, md);
	tsb_buf_append(b, md, sizeof(md));
	return b->err;
}

static int get_str(struct tsb_reader *r, char out[STORE_MAX_ID + 1], bool empty_ok)
{
	uint8_t n = tsb_get_u8(r);
	const uint8_t *p;

	if (r->err || n > STORE_MAX_ID)
		return -EBADMSG;
	p = tsb_get_bytes(r, n);
	if (!p)
		return -EBADMSG;
	memcpy(out, p, n);
	out[n] = 0;
	if (n == 0 ? !empty_ok : !store_id_valid(out))
		return -EBADMSG;
	return 0;
}

static int decode_header(struct tsb_reader *r, struct store_image_info *info,
			 uint32_t *ret_n_blocks)
{
	const uint8_t *m = tsb_get_bytes(r, 4);

	memset(info, 0, sizeof(*info));
	if (!m || memcmp(m, STORE_IMAGE_MAGIC, 4))
		return -EBADMSG;
	if (tsb_get_be32(r) != STORE_IMAGE_VERSION)
		return r->err ? -EBADMSG : -EOPNOTSUPP;
	info->role = tsb_get_u8(r);
	if (r->err || !role_valid(info->role))
		return -EBADMSG;
	if (get_str(r, info->id, false) || get_str(r, info->vm, false) ||
	    get_str(r, info->peer_site, true) || get_str(r, info->peer_image, true))
		return -EBADMSG;
	info->peer_generation = tsb_get_be64(r);
	info->created_ms = (int64_t)tsb_get_be64(r);
	info->used_ms = info->created_ms;
	info->pages = tsb_get_be64(r);
	info->known_pages = tsb_get_be64(r);
	*ret_n_blocks = tsb_get_be32(r);
	if (r->err || *ret_n_blocks > STORE_IMAGE_MAX_BLOCKS ||
	    info->known_pages > info->pages)
		return -EBADMSG;
	return 0;
}

int store_image_decode_info(const uint8_t *p, size_t len,
			    struct store_image_info *info)
{
	struct tsb_reader r;
	uint32_t nb;

	tsb_reader_init(&r, p, len);
	return decode_header(&r, info, &nb);
}

int store_image_decode(const uint8_t *p, size_t len, struct store_image **ret)
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	struct store_image_info info;
	struct store_image *im = NULL;
	struct tsb_reader r;
	uint64_t pages = 0, known = 0, k;
	uint32_t nb, i;
	int e = -EBADMSG;

	if (len < STORE_HASH_LEN)
		return -EBADMSG;
	SHA256(p, len - STORE_HASH_LEN, md);
	if (memcmp(md, p + len - STORE_HASH_LEN, STORE_HASH_LEN))
		return -EBADMSG;
	tsb_reader_init(&r, p, len - STORE_HASH_LEN);
	if ((e = decode_header(&r, &info, &nb)))
		return e;
	e = -EBADMSG;
	im = calloc(1, sizeof(*im));
	if (!im)
		return -ENOMEM;
	im->info = info;
	im->info.pages = im->info.known_pages = 0;
	im->b = calloc(nb ? nb : 1, sizeof(*im->b));
	if (!im->b) {
		e = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < nb; i++) {
		uint16_t nl = tsb_get_be16(&r);
		const uint8_t *name = tsb_get_bytes(&r, nl);
		uint64_t length = tsb_get_be64(&r);
		uint32_t j;

		if (r.err || !block_name_valid((const char *)name, nl) ||
		    length > STORE_IMAGE_MAX_BLOCK_LEN)
			goto fail;
		/* Every page takes at least one byte of the file. */
		pages += pages_of(length);
		if (pages > tsb_reader_remaining(&r))
			goto fail;
		for (j = 0; j < i; j++)
			if (im->b[j].name_len == nl &&
			    !memcmp(im->b[j].name, name, nl))
				goto fail;
		im->n_blocks = i + 1;
		if (block_init(&im->b[i], (const char *)name, nl, length)) {
			e = -ENOMEM;
			goto fail;
		}
	}
	for (i = 0; i < nb; i++) {
		struct img_block *b = &im->b[i];

		for (k = 0; k < b->npages; k++) {
			uint8_t st = tsb_get_u8(&r);
			const uint8_t *h = NULL;

			if (r.err || st > STORE_PAGE_HASH)
				goto fail;
			if (st == STORE_PAGE_HASH && !(h = tsb_get_bytes(&r, STORE_HASH_LEN)))
				goto fail;
			/* (e stays an error: a later goto fail must never return 0) */
			if (st != STORE_PAGE_UNKNOWN) {
				int se = store_image_set(im, i, k, st, h);

				if (se) {
					e = se == -ENOMEM ? -ENOMEM : -EBADMSG;
					goto fail;
				}
			}
			known += st != STORE_PAGE_UNKNOWN;
		}
		im->info.pages += b->npages;
	}
	e = -EBADMSG;
	if (tsb_reader_remaining(&r) || im->info.pages != info.pages ||
	    known != info.known_pages)
		goto fail;
	*ret = im;
	return 0;
fail:
	store_image_free(im);
	return e;
}

/* ---- image verbs of a store ---- */

static int image_path(const struct store *s, const char *id, char *buf,
		      size_t len)
{
	if (!store_id_valid(id))
		return -EINVAL;
	if (snprintf(buf, len, "%s/images/%s.img", s->tdir, id) >= (int)len)
		return -ENAMETOOLONG;
	return 0;
}

static int64_t mtime_ms(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000 + st->st_mtim.tv_nsec / 1000000;
}

int64_t store_next_used_ms(struct store *s)
{
	int64_t now = store_now_ms();

	pthread_mutex_lock(&s->mu);
	if (!s->last_used_ms) {
		struct store_image_info *v = NULL;
		size_t n = 0;

		pthread_mutex_unlock(&s->mu);
		if (!store_image_list(s, NULL, &v, &n))
			for (size_t i = 0; i < n; i++)
				if (v[i].used_ms >= now)
					now = v[i].used_ms + 1;
		free(v);
		pthread_mutex_lock(&s->mu);
	}
	if (now <= s->last_used_ms)
		now = s->last_used_ms + 1;
	s->last_used_ms = now;
	pthread_mutex_unlock(&s->mu);
	return now;
}

static void unpin_fn(const uint8_t *hash, void *arg)
{
	struct store *s = arg;
	struct store_ent *e = store_index_find(&s->idx, hash);

	if (e)
		e->rec &= ~ENT_SESSION;
}

int store_image_commit(struct store *s, struct store_image *im, char *err,
		       size_t errlen)
{
	char dir[PATH_MAX], name[STORE_MAX_ID + 8];
	struct tsb_buf b;
	int64_t now;
	int r;

	if (s->readonly)
		return -EROFS;
	if (!info_valid(&im->info)) {
		snprintf(err, errlen, "store: image has a bad id or role");
		return -EINVAL;
	}
	pthread_mutex_lock(&s->mu);
	r = store_sync_locked(s);
	pthread_mutex_unlock(&s->mu);
	if (r) {
		snprintf(err, errlen, "store %s: cannot sync pages: %s", s->dir,
			 strerror(-r));
		return r;
	}
	now = store_next_used_ms(s);
	im->info.created_ms = now;
	im->info.used_ms = now;
	tsb_buf_init(&b);
	r = store_image_encode(im, &b);
	snprintf(dir, sizeof(dir), "%s/images", s->tdir);
	snprintf(name, sizeof(name), "%s.img", im->info.id);
	if (!r)
		r = tsb_write_atomic(dir, name, b.data, b.len, now);
	tsb_buf_fini(&b);
	if (r) {
		snprintf(err, errlen, "store %s: cannot write image %s: %s", s->dir,
			 im->info.id, strerror(-r));
		return r;
	}
	/* Its pages are now held by the image, no longer by the session. */
	pthread_mutex_lock(&s->mu);
	store_image_for_each_hash(im, unpin_fn, s);
	if (s->uncovered >= STORE_CKPT_EVERY)
		(void)store_checkpoint_locked(s);
	pthread_mutex_unlock(&s->mu);

	/* Above the cap? Pages counted: ours plus the other tenants'. */
	{
		uint64_t others = store_other_tenants_pages(s->dir, s->tenant);
		uint64_t ours = store_page_count(s);
		struct store *hs[1] = { s };

		if ((ours + others) * STORE_PAGE_SIZE > s->cap) {
			r = store_evict(hs, 1, s->cap, others, im->info.id, NULL,
					err, errlen);
			if (r)
				return r;
		}
	}
	return 0;
}

/* Newest (committed last) first; then most recently used. */
static int cmp_info_newest(const void *a, const void *b)
{
	const struct store_image_info *x = a, *y = b;

	if (x->created_ms != y->created_ms)
		return x->created_ms > y->created_ms ? -1 : 1;
	if (x->used_ms != y->used_ms)
		return x->used_ms > y->used_ms ? -1 : 1;
	return strcmp(x->id, y->id);
}

int store_image_list(struct store *s, const char *vm,
		     struct store_image_info **ret, size_t *n)
{
	struct store_image_info *v = NULL, *nv;
	char dir[PATH_MAX];
	size_t cnt = 0;
	struct dirent *d;
	DIR *dh;
	int r = 0;

	snprintf(dir, sizeof(dir), "%s/images", s->tdir);
	dh = opendir(dir);
	if (!dh) {
		if (errno != ENOENT)
			return -errno;
		*ret = NULL;
		*n = 0;
		return 0;
	}
	while ((d = readdir(dh))) {
		struct store_image_info info;
		uint8_t hdr[512];
		size_t l = strlen(d->d_name);
		struct stat st;
		ssize_t got;
		int fd;

		if (l < 5 || strcmp(d->d_name + l - 4, ".img"))
			continue;
		fd = openat(dirfd(dh), d->d_name, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			continue;
		got = fstat(fd, &st) ? -1 : pread(fd, hdr, sizeof(hdr), 0);
		close(fd);
		if (got <= 0 || store_image_decode_info(hdr, got, &info))
			continue;
		/* The file name must match the id inside. */
		if (l - 4 != strlen(info.id) || memcmp(d->d_name, info.id, l - 4))
			continue;
		if (vm && strcmp(vm, info.vm))
			continue;
		info.used_ms = mtime_ms(&st);
		nv = reallocarray(v, cnt + 1, sizeof(*v));
		if (!nv) {
			r = -ENOMEM;
			break;
		}
		v = nv;
		v[cnt++] = info;
	}
	closedir(dh);
	if (r) {
		free(v);
		return r;
	}
	if (cnt)
		qsort(v, cnt, sizeof(*v), cmp_info_newest);
	*ret = v;
	*n = cnt;
	return 0;
}

int store_image_load(struct store *s, const char *id, struct store_image **ret)
{
	char path[PATH_MAX];
	struct store_image *im;
	struct stat st;
	uint8_t *p = NULL;
	size_t len = 0;
	int r;

	if ((r = image_path(s, id, path, sizeof(path))))
		return r == -EINVAL ? -ENOENT : r;
	if (stat(path, &st))
		return -errno;
	r = store_read_file(path, STORE_IMAGE_MAX_FILE, &p, &len);
	if (r)
		return r == -EFBIG ? -EBADMSG : r;
	r = store_image_decode(p, len, &im);
	free(p);
	if (r)
		return r;
	if (strcmp(im->info.id, id)) {
		store_image_free(im);
		return -EBADMSG;
	}
	im->info.used_ms = mtime_ms(&st);
	*ret = im;
	return 0;
}

int store_image_touch(struct store *s, const char *id)
{
	char path[PATH_MAX];
	struct timespec ts[2];
	int64_t now;
	int r;

	if (s->readonly)
		return -EROFS;
	if ((r = image_path(s, id, path, sizeof(path))))
		return r == -EINVAL ? -ENOENT : r;
	if (access(path, F_OK))
		return -errno;
	now = store_next_used_ms(s);
	ts[0].tv_sec = ts[1].tv_sec = now / 1000;
	ts[0].tv_nsec = ts[1].tv_nsec = (now % 1000) * 1000000;
	if (utimensat(AT_FDCWD, path, ts, 0))
		return -errno;
	return 0;
}

int store_image_remove(struct store *s, const char *id)
{
	char path[PATH_MAX];
	int r;

	if (s->readonly)
		return -EROFS;
	if ((r = image_path(s, id, path, sizeof(path))))
		return r == -EINVAL ? -ENOENT : r;
	if (unlink(path))
		return -errno;
	snprintf(path, sizeof(path), "%s/images", s->tdir);
	return tsb_fsync_dir(path);
}
