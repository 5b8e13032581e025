/*
 * The persistent content store: pack files of page records, an in-memory
 * hash index with an on-disk checkpoint, recovery at open, compaction.
 * Formats and crash-safety argument: docs/store.md.
 */
#include "store/internal.h"

#include "common/buf.h"
#include "common/file.h"
#include "common/log.h"
#include "common/reader.h"
#include "common/util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define STATE_MAGIC "tsubame-store-state 1"


void store_errf(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

bool store_id_valid(const char *id)
{
	size_t i, n;

	if (!id)
		return false;
	n = strnlen(id, STORE_MAX_ID + 1);
	if (n < 1 || n > STORE_MAX_ID)
		return false;
	if (!strcmp(id, ".") || !strcmp(id, ".."))
		return false;
	for (i = 0; i < n; i++) {
		unsigned char c = id[i];

		if (c <= ' ' || c >= 0x7f || c == '/')
			return false;
	}
	return true;
}

int64_t store_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- small file helpers ---- */

static ssize_t read_full(int fd, void *p, size_t n, off_t off)
{
	uint8_t *b = p;
	size_t got = 0;

	while (got < n) {
		ssize_t r = pread(fd, b + got, n - got, off + got);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		got += r;
	}
	return got;
}

size_t store_read_bufsize(uint64_t bytes)
{
	size_t chunk = STORE_WBUF_RECS * (size_t)STORE_REC_SIZE;

	bytes -= bytes % STORE_REC_SIZE;
	if (bytes < STORE_REC_SIZE)
		return STORE_REC_SIZE;
	return bytes < chunk ? (size_t)bytes : chunk;
}

int store_read_file(const char *path, uint64_t max, uint8_t **ret,
		    size_t *ret_len)
{
	struct stat st;
	uint8_t *p;
	ssize_t n;
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st)) {
		r = -errno;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		r = -EBADMSG;
		goto out;
	}
	if ((uint64_t)st.st_size > max) {
		r = -EFBIG;
		goto out;
	}
	p = malloc(st.st_size ? st.st_size : 1);
	if (!p) {
		r = -ENOMEM;
		goto out;
	}
	n = read_full(fd, p, st.st_size, 0);
	if (n < 0) {
		free(p);
		r = n;
		goto out;
	}
	*ret = p;
	*ret_len = n;
out:
	close(fd);
	return r;
}

static int mkdir_one(const char *path)
{
	if (mkdir(path, 0700) && errno != EEXIST)
		return -errno;
	return 0;
}


static int path_of(char *buf, size_t len, const char *a, const char *b)
{
	if (snprintf(buf, len, "%s/%s", a, b) >= (int)len)
		return -ENAMETOOLONG;
	return 0;
}

/* ---- site id ---- */

static bool hex32_valid(const uint8_t *p, size_t n)
{
	size_t i;

	if (n != 32 && !(n == 33 && p[32] == '\n'))
		return false;
	for (i = 0; i < 32; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
			return false;
	return true;
}

static int site_id_load(const char *dir, bool create, char out[33])
{
	char path[PATH_MAX], tmp[PATH_MAX], line[34];
	uint8_t rnd[16], *p = NULL;
	size_t n = 0, i;
	int r, fd;

	if ((r = path_of(path, sizeof(path), dir, "site-id")))
		return r;
	r = store_read_file(path, 64, &p, &n);
	if (!r && hex32_valid(p, n)) {
		memcpy(out, p, 32);
		out[32] = 0;
		free(p);
		return 0;
	}
	free(p);
	if (!create)
		return r ? r : -EBADMSG;
	/* Create once: write a temporary file, link() it into place (fails if
	 * another process won), or replace a damaged one. */
	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd) &&
	    RAND_bytes(rnd, sizeof(rnd)) != 1)
		return -EIO;
	for (i = 0; i < 16; i++)
		snprintf(line + 2 * i, 3, "%02x", rnd[i]);
	line[32] = '\n';
	/* Per thread: receivers of a group may create the store at once. */
	if (snprintf(tmp, sizeof(tmp), "%s/.site-id.%d.%d.tmp", dir, (int)getpid(),
		     (int)gettid()) >=
	    (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	r = tsb_pwrite_all(fd, line, 33, 0);
	if (!r && fsync(fd))
		r = -errno;
	close(fd);
	if (!r) {
		if (r == 0 && link(tmp, path)) {
			r = -errno;
			if (r == -EEXIST) {
				/* Someone else's, unless it is the damaged one. */
				p = NULL;
				if (!store_read_file(path, 64, &p, &n) &&
				    hex32_valid(p, n)) {
					memcpy(out, p, 32);
					out[32] = 0;
					free(p);
					(void)unlink(tmp);
					return 0;
				}
				free(p);
				r = rename(tmp, path) ? -errno : 0;
			}
		}
	}
	(void)unlink(tmp);
	if (r)
		return r;
	(void)tsb_fsync_dir(dir);
	memcpy(out, line, 32);
	out[32] = 0;
	return 0;
}

/* ---- lock ---- */

int store_dir_site_id(const char *dir, char out[33], char *err, size_t errlen)
{
	int r = tsb_mkdir_p(dir);

	if (r == 0)
		r = site_id_load(dir, true, out);
	if (r < 0)
		snprintf(err, errlen, "store %s: cannot read or create its site id: %s", dir,
			 strerror(-r));
	return r;
}

static int lock_take(struct store *s, int timeout_ms, char *err, size_t errlen)
{
	char path[PATH_MAX], pidbuf[32];
	int64_t deadline = store_now_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	int fd, r, n;

	if ((r = path_of(path, sizeof(path), s->tdir, "lock")))
		return r;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		r = -errno;
		store_errf(err, errlen, "store %s: cannot open %s: %s", s->dir, path,
		     strerror(-r));
		return r;
	}
	for (;;) {
		if (!flock(fd, LOCK_EX | LOCK_NB))
			break;
		r = -errno;
		if (r == -EINTR)
			continue;
		if (r != -EWOULDBLOCK || store_now_ms() >= deadline) {
			ssize_t got;

			if (r == -EWOULDBLOCK) {
				long pid = 0;

				got = read_full(fd, pidbuf, sizeof(pidbuf) - 1, 0);
				pidbuf[got > 0 ? got : 0] = 0;
				pid = strtol(pidbuf, NULL, 10);
				if (pid > 0)
					store_errf(err, errlen,
					     "store %s (tenant %s) is locked by pid %ld",
					     s->dir, s->tenant, pid);
				else
					store_errf(err, errlen,
					     "store %s (tenant %s) is locked by another process",
					     s->dir, s->tenant);
				r = -EBUSY;
			} else {
				store_errf(err, errlen, "store %s: cannot lock %s: %s",
				     s->dir, path, strerror(-r));
			}
			close(fd);
			return r;
		}
		usleep(10000);
	}
	n = snprintf(pidbuf, sizeof(pidbuf), "%d\n", (int)getpid());
	if (ftruncate(fd, 0) == 0)
		(void)tsb_pwrite_all(fd, pidbuf, n, 0);
	s->lock_fd = fd;
	return 0;
}

/* ---- state file: generation and damage counter ---- */

static int state_load(struct store *s, bool fresh)
{
	char path[PATH_MAX];
	unsigned long long g, d;
	uint8_t *p = NULL;
	char text[256];
	size_t n;
	int r;

	if ((r = path_of(path, sizeof(path), s->tdir, "state")))
		return r;
	r = store_read_file(path, sizeof(text) - 1, &p, &n);
	if (!r) {
		memcpy(text, p, n);
		text[n] = 0;
		free(p);
		if (sscanf(text, STATE_MAGIC "\ngeneration %llu\ndamaged %llu\n",
			   &g, &d) == 2 && g > 0) {
			s->gen = g;
			s->damaged = d;
			return 0;
		}
	}
	/* Missing on a new tenant: 1. Lost or damaged: a value above any
	 * counter we could have reached, so peers never see it go back. */
	s->gen = fresh && r == -ENOENT ? 1 : (uint64_t)store_now_ms();
	s->damaged = 0;
	if (s->readonly)
		return 0;
	return store_save_state_locked(s);
}

int store_save_state_locked(struct store *s)
{
	char text[256];
	int n;

	if (s->readonly)
		return -EROFS;
	n = snprintf(text, sizeof(text), STATE_MAGIC "\ngeneration %" PRIu64
		     "\ndamaged %" PRIu64 "\n", s->gen, s->damaged);
	return tsb_write_atomic(s->tdir, "state", text, n, 0);
}

int store_bump_generation_locked(struct store *s)
{
	s->gen++;
	return store_save_state_locked(s);
}

/* ---- the in-memory index: open addressing, linear probing ---- */

static unsigned ix_bits(size_t cap)
{
	return __builtin_ctzll(cap);
}

static inline size_t ix_home(const struct store_index *x, const uint8_t *h)
{
	uint64_t k;

	memcpy(&k, h, 8);
	k ^= x->seed;
	k *= 0x9e3779b97f4a7c15ull;
	return (size_t)(k >> (64 - ix_bits(x->cap)));
}

/* Large tables are mapped pre-faulted: one mmap instead of a page fault
 * per 4 KiB while the index fills (it halves the open time of a big store). */
#define IX_MMAP_MIN (1u << 20)

static void ix_free_table(struct store_ent *e, size_t cap)
{
	if (!e)
		return;
	if (cap * sizeof(*e) >= IX_MMAP_MIN)
		munmap(e, cap * sizeof(*e));
	else
		free(e);
}

static int ix_init(struct store_index *x, size_t cap)
{
	if (cap * sizeof(*x->e) >= IX_MMAP_MIN) {
		void *p = mmap(NULL, cap * sizeof(*x->e), PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

		x->e = p == MAP_FAILED ? NULL : p;
	} else {
		x->e = calloc(cap, sizeof(*x->e));
	}
	if (!x->e)
		return -ENOMEM;
	x->cap = cap;
	x->n = 0;
	return 0;
}

static void ix_clear(struct store_index *x)
{
	memset(x->e, 0, x->cap * sizeof(*x->e));
	x->n = 0;
}

struct store_ent *store_index_find(struct store_index *x,
				   const uint8_t hash[STORE_HASH_LEN])
{
	size_t m = x->cap - 1, i = ix_home(x, hash);

	for (;; i = (i + 1) & m) {
		struct store_ent *e = &x->e[i];

		if (!e->pack)
			return NULL;
		if (!memcmp(e->hash, hash, STORE_HASH_LEN))
			return e;
	}
}

static int ix_grow(struct store_index *x)
{
	struct store_index y = { .seed = x->seed };
	size_t i;

	if (x->cap > (SIZE_MAX / 2) / sizeof(*x->e))
		return -ENOMEM;
	if (ix_init(&y, x->cap * 2))
		return -ENOMEM;
	for (i = 0; i < x->cap; i++) {
		struct store_ent *e = &x->e[i];
		size_t j, m = y.cap - 1;

		if (!e->pack)
			continue;
		for (j = ix_home(&y, e->hash); y.e[j].pack; j = (j + 1) & m)
			;
		y.e[j] = *e;
		y.n++;
	}
	ix_free_table(x->e, x->cap);
	*x = y;
	return 0;
}

/* Makes room for n entries without growing (on an empty index). */
static int ix_reserve(struct store_index *x, size_t n)
{
	size_t cap = x->cap;

	if (x->n)
		return 0;
	while (cap < SIZE_MAX / 8 && n * 4 > cap * 3)
		cap *= 2;
	if (cap == x->cap)
		return 0;
	ix_free_table(x->e, x->cap);
	x->e = NULL;
	return ix_init(x, cap);
}

/* Inserts or (replace) moves an entry. */
static int ix_put(struct store_index *x, const uint8_t *hash, uint32_t pack,
		  uint32_t rec, bool replace)
{
	size_t m, i;

	if ((x->n + 1) * 4 > x->cap * 3 && ix_grow(x))
		return -ENOMEM;
	m = x->cap - 1;
	for (i = ix_home(x, hash);; i = (i + 1) & m) {
		struct store_ent *e = &x->e[i];

		if (!e->pack) {
			memcpy(e->hash, hash, STORE_HASH_LEN);
			e->pack = pack;
			e->rec = rec;
			x->n++;
			return 0;
		}
		if (!memcmp(e->hash, hash, STORE_HASH_LEN)) {
			if (replace) {
				e->pack = pack;
				e->rec = (rec & ~ENT_SESSION) |
					 (e->rec & ENT_SESSION);
			}
			return 0;
		}
	}
}

void store_index_remove(struct store_index *x, struct store_ent *e)
{
	size_t m = x->cap - 1, i = e - x->e, j = i;

	for (;;) {
		size_t k;

		j = (j + 1) & m;
		if (!x->e[j].pack)
			break;
		k = ix_home(x, x->e[j].hash);
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		x->e[i] = x->e[j];
		i = j;
	}
	memset(&x->e[i], 0, sizeof(x->e[i]));
	x->n--;
}

/* ---- packs ---- */

static struct store_pack *pack_find(struct store *s, uint32_t num)
{
	size_t lo = 0, hi = s->n_packs;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (s->packs[mid].num == num)
			return &s->packs[mid];
		if (s->packs[mid].num < num)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static int pack_path(const struct store *s, uint32_t num, char *buf, size_t len)
{
	if (snprintf(buf, len, "%s/packs/%08" PRIu32 ".pack", s->tdir, num) >=
	    (int)len)
		return -ENAMETOOLONG;
	return 0;
}

static struct store_pack *cur_pack(struct store *s)
{
	return s->n_packs ? &s->packs[s->n_packs - 1] : NULL;
}

/* Writes the append buffer to the current pack. */
int store_flush_locked(struct store *s)
{
	struct store_pack *p = cur_pack(s);
	int r;

	if (!s->wbuf_n)
		return 0;
	r = tsb_pwrite_all(p->fd, s->wbuf, s->wbuf_n * STORE_REC_SIZE, p->len);
	if (r)
		return r;
	p->len += (uint64_t)s->wbuf_n * STORE_REC_SIZE;
	p->dirty = true;
	s->wbuf_n = 0;
	return 0;
}

static int pack_create_locked(struct store *s)
{
	struct store_pack *np, *last = cur_pack(s);
	uint32_t num = last ? last->num + 1 : 1;
	char path[PATH_MAX];
	int r, fd;

	if ((r = store_flush_locked(s)))
		return r;
	if (num == 0 || num > 99999999u)
		return -ENOSPC;
	if ((r = pack_path(s, num, path, sizeof(path))))
		return r;
	np = reallocarray(s->packs, s->n_packs + 1, sizeof(*np));
	if (!np)
		return -ENOMEM;
	s->packs = np;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	np[s->n_packs].num = num;
	np[s->n_packs].fd = fd;
	np[s->n_packs].len = 0;
	np[s->n_packs].dirty = true;
	s->n_packs++;
	s->dir_dirty = true;
	return 0;
}

/* Appends one record (hdr: magic+hash, then page); returns its location. */
static int append_locked(struct store *s, const uint8_t *hash,
			 const uint8_t *page, uint32_t *ret_pack,
			 uint32_t *ret_rec)
{
	struct store_pack *p = cur_pack(s);
	uint8_t *dst;
	int r;

	if (!p || p->len / STORE_REC_SIZE + s->wbuf_n >= STORE_PACK_MAX_RECS) {
		if ((r = pack_create_locked(s)))
			return r;
		p = cur_pack(s);
	}
	if (s->wbuf_n == STORE_WBUF_RECS && (r = store_flush_locked(s)))
		return r;
	/* Allocated at the first append: most opens (recv's summary, gc,
	 * verify of a clean store) never write. */
	if (!s->wbuf &&
	    !(s->wbuf = malloc((size_t)STORE_WBUF_RECS * STORE_REC_SIZE)))
		return -ENOMEM;
	dst = s->wbuf + (size_t)s->wbuf_n * STORE_REC_SIZE;
	memcpy(dst, STORE_REC_MAGIC, 4);
	memcpy(dst + 4, hash, STORE_HASH_LEN);
	memcpy(dst + STORE_REC_HDR, page, STORE_PAGE_SIZE);
	*ret_pack = p->num;
	*ret_rec = p->len / STORE_REC_SIZE + s->wbuf_n;
	s->wbuf_n++;
	s->uncovered += STORE_REC_SIZE;
	s->index_dirty = true;
	return 0;
}

int store_sync_locked(struct store *s)
{
	char path[PATH_MAX];
	size_t i;
	int r;

	if (s->readonly)
		return 0;
	if ((r = store_flush_locked(s)))
		return r;
	for (i = 0; i < s->n_packs; i++) {
		if (!s->packs[i].dirty)
			continue;
		if (fdatasync(s->packs[i].fd))
			return -errno;
		s->packs[i].dirty = false;
	}
	if (s->dir_dirty) {
		if ((r = path_of(path, sizeof(path), s->tdir, "packs")) ||
		    (r = tsb_fsync_dir(path)))
			return r;
		s->dir_dirty = false;
	}
	return 0;
}

/* ---- index checkpoint ---- */

/*
 * "TSIX" | be32 version | be64 seed | be32 n_packs | n_packs x (be32 num, be64 covered)
 * | be64 n_entries | n x (hash[32], be32 pack, be32 rec) | sha256 of all
 * before. Packs ascending; every entry inside a listed pack's covered part.
 */
int store_index_parse(const uint8_t *p, size_t len,
		      int (*pack_fn)(uint32_t num, uint64_t covered, void *arg),
		      int (*ent_fn)(const uint8_t *hash, uint32_t pack,
				    uint32_t rec, void *arg),
		      void *arg)
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	const uint8_t *packs;
	struct tsb_reader r;
	uint32_t n_packs, i, prev = 0;
	uint64_t n_ent, k;
	int e;

	if (len < 4 + 4 + 8 + 4 + 8 + STORE_HASH_LEN)
		return -EBADMSG;
	SHA256(p, len - STORE_HASH_LEN, md);
	if (memcmp(md, p + len - STORE_HASH_LEN, STORE_HASH_LEN))
		return -EBADMSG;
	tsb_reader_init(&r, p, len - STORE_HASH_LEN);
	if (memcmp(tsb_get_bytes(&r, 4), STORE_INDEX_MAGIC, 4))
		return -EBADMSG;
	if (tsb_get_be32(&r) != STORE_INDEX_VERSION)
		return -EOPNOTSUPP;
	tsb_skip(&r, 8);	/* the table seed: see recover() */
	n_packs = tsb_get_be32(&r);
	if (r.err || n_packs > STORE_MAX_PACKS ||
	    (uint64_t)n_packs * 12 > tsb_reader_remaining(&r))
		return -EBADMSG;
	packs = tsb_get_bytes(&r, (size_t)n_packs * 12);
	for (i = 0; i < n_packs; i++) {
		uint32_t num = tsb_load_be32(packs + 12 * i);
		uint64_t cov = tsb_load_be64(packs + 12 * i + 4);

		if (num <= prev || cov % STORE_REC_SIZE ||
		    cov / STORE_REC_SIZE > STORE_PACK_MAX_RECS)
			return -EBADMSG;
		prev = num;
		if (pack_fn && (e = pack_fn(num, cov, arg)))
			return e;
	}
	n_ent = tsb_get_be64(&r);
	if (r.err || n_ent > tsb_reader_remaining(&r) / 40 ||
	    n_ent * 40 != tsb_reader_remaining(&r))
		return -EBADMSG;
	for (k = 0; k < n_ent; k++) {
		const uint8_t *h = tsb_get_bytes(&r, STORE_HASH_LEN);
		uint32_t pk = tsb_get_be32(&r), rec = tsb_get_be32(&r);
		uint32_t lo = 0, hi = n_packs;
		bool ok = false;

		if (r.err)
			return -EBADMSG;
		while (lo < hi) {
			uint32_t mid = lo + (hi - lo) / 2;
			uint32_t num = tsb_load_be32(packs + 12 * mid);

			if (num == pk) {
				uint64_t cov = tsb_load_be64(packs + 12 * mid + 4);

				ok = ((uint64_t)rec + 1) * STORE_REC_SIZE <= cov;
				break;
			}
			if (num < pk)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (!ok)
			return -EBADMSG;
		if (ent_fn && (e = ent_fn(h, pk, rec, arg)))
			return e;
	}
	return 0;
}

int store_checkpoint_locked(struct store *s)
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	struct tsb_buf b;
	size_t i;
	int r;

	if (s->readonly)
		return -EROFS;
	if ((r = store_sync_locked(s)))
		return r;
	tsb_buf_init(&b);
	if (tsb_buf_reserve(&b, 32 + s->n_packs * 12 + s->idx.n * 40 + 32)) {
		tsb_buf_fini(&b);
		return -ENOMEM;
	}
	tsb_buf_append(&b, STORE_INDEX_MAGIC, 4);
	tsb_buf_put_be32(&b, STORE_INDEX_VERSION);
	tsb_buf_put_be64(&b, s->idx.seed);
	tsb_buf_put_be32(&b, s->n_packs);
	for (i = 0; i < s->n_packs; i++) {
		tsb_buf_put_be32(&b, s->packs[i].num);
		tsb_buf_put_be64(&b, s->packs[i].len);
	}
	tsb_buf_put_be64(&b, s->idx.n);
	for (i = 0; i < s->idx.cap; i++) {
		const struct store_ent *e = &s->idx.e[i];

		if (!e->pack)
			continue;
		tsb_buf_append(&b, e->hash, STORE_HASH_LEN);
		tsb_buf_put_be32(&b, e->pack);
		tsb_buf_put_be32(&b, e->rec & ENT_REC_MASK);
	}
	SHA256(b.data, b.len, md);
	tsb_buf_append(&b, md, sizeof(md));
	r = b.err ? b.err : tsb_write_atomic(s->tdir, "index", b.data, b.len, 0);
	tsb_buf_fini(&b);
	if (!r) {
		s->index_dirty = false;
		s->uncovered = 0;
	}
	return r;
}

/* ---- open: recovery ---- */

struct pack_scan {
	uint32_t num;
	uint64_t size;		/* file size */
	uint64_t covered;	/* by the checkpoint */
	bool listed;
};

struct ckpt_ctx {
	struct store *s;
	struct pack_scan *ps;
	size_t n;
	bool bad;
};

static int ckpt_pack(uint32_t num, uint64_t covered, void *arg)
{
	struct ckpt_ctx *c = arg;
	size_t i;

	for (i = 0; i < c->n; i++) {
		if (c->ps[i].num == num) {
			if (c->ps[i].size < covered)
				return -EBADMSG;
			c->ps[i].covered = covered;
			c->ps[i].listed = true;
			return 0;
		}
	}
	return -EBADMSG;	/* a listed pack is missing */
}

static int ckpt_ent(const uint8_t *hash, uint32_t pack, uint32_t rec, void *arg)
{
	struct ckpt_ctx *c = arg;

	return ix_put(&c->s->idx, hash, pack, rec & ENT_REC_MASK, true);
}

static int cmp_scan(const void *a, const void *b)
{
	const struct pack_scan *x = a, *y = b;

	return x->num < y->num ? -1 : x->num > y->num;
}

static int list_packs(struct store *s, struct pack_scan **ret, size_t *ret_n)
{
	char path[PATH_MAX];
	struct pack_scan *ps = NULL, *np;
	size_t n = 0;
	struct dirent *d;
	DIR *dh;
	int r = 0;

	if ((r = path_of(path, sizeof(path), s->tdir, "packs")))
		return r;
	dh = opendir(path);
	if (!dh) {
		r = -errno;
		if (r == -ENOENT && s->readonly) {
			*ret = NULL;
			*ret_n = 0;
			return 0;
		}
		return r;
	}
	while ((d = readdir(dh))) {
		char full[PATH_MAX], *end;
		unsigned long v;
		struct stat st;
		size_t l = strlen(d->d_name);

		if (l > 5 && !strcmp(d->d_name + l - 4, ".tmp") && !s->readonly) {
			(void)unlinkat(dirfd(dh), d->d_name, 0);
			continue;
		}
		if (l != 13 || strcmp(d->d_name + 8, ".pack"))
			continue;
		errno = 0;
		v = strtoul(d->d_name, &end, 10);
		if (errno || end != d->d_name + 8 || v == 0 || v > 99999999u)
			continue;
		if (path_of(full, sizeof(full), path, d->d_name) ||
		    stat(full, &st) || !S_ISREG(st.st_mode))
			continue;
		np = reallocarray(ps, n + 1, sizeof(*ps));
		if (!np) {
			r = -ENOMEM;
			break;
		}
		ps = np;
		ps[n].num = v;
		ps[n].size = st.st_size;
		ps[n].covered = 0;
		ps[n].listed = false;
		n++;
	}
	closedir(dh);
	if (r) {
		free(ps);
		return r;
	}
	if (n)
		qsort(ps, n, sizeof(*ps), cmp_scan);
	*ret = ps;
	*ret_n = n;
	return 0;
}

/* Indexes records from 'from' to the end; cuts a torn or bad tail. */
static int scan_pack(struct store *s, struct store_pack *p, uint64_t from,
		     uint64_t size)
{
	size_t chunk = store_read_bufsize(size > from ? size - from : 0);
	uint64_t off = from, good_end = from;
	uint8_t *buf;
	int r = 0;

	buf = malloc(chunk);
	if (!buf)
		return -ENOMEM;
	while (off + STORE_REC_SIZE <= size) {
		uint64_t want = size - off;
		ssize_t got;
		size_t i;

		want -= want % STORE_REC_SIZE;
		if (want > chunk)
			want = chunk;
		got = read_full(p->fd, buf, want, off);
		if (got < 0) {
			r = got;
			goto out;
		}
		got -= got % STORE_REC_SIZE;
		if (got == 0)
			break;
		for (i = 0; i < (size_t)got; i += STORE_REC_SIZE) {
			uint64_t rec = (off + i) / STORE_REC_SIZE;

			if (memcmp(buf + i, STORE_REC_MAGIC, 4) ||
			    rec >= STORE_PACK_MAX_RECS) {
				s->bad_slots++;
				continue;
			}
			r = ix_put(&s->idx, buf + i + 4, p->num, rec, true);
			if (r)
				goto out;
			good_end = off + i + STORE_REC_SIZE;
		}
		off += got;
	}
	/* Slots after good_end that failed were counted as bad: uncount them,
	 * they are a torn tail, not damage. */
	s->bad_slots -= (off - good_end) / STORE_REC_SIZE;
	p->len = good_end;
	if (good_end < size) {
		s->torn_bytes += size - good_end;
		if (!s->readonly) {
			if (ftruncate(p->fd, good_end) || fsync(p->fd)) {
				r = -errno;
				goto out;
			}
		}
	}
	if (good_end > from) {
		s->uncovered += good_end - from;
		s->index_dirty = true;
	}
out:
	free(buf);
	return r;
}

static int recover(struct store *s)
{
	struct pack_scan *ps = NULL;
	struct ckpt_ctx c;
	char path[PATH_MAX];
	uint8_t *ck = NULL;
	size_t n = 0, i, ck_len = 0, kept = 0;
	uint32_t max_listed = 0;
	int r;

	if ((r = list_packs(s, &ps, &n)))
		return r;
	if ((r = path_of(path, sizeof(path), s->tdir, "index")))
		goto out;
	memset(&c, 0, sizeof(c));
	c.s = s;
	c.ps = ps;
	c.n = n;
	r = store_read_file(path, STORE_INDEX_MAX_FILE, &ck, &ck_len);
	if (r == 0 && (r = ix_reserve(&s->idx, ck_len / 40)) == 0) {
		/* Reuse the table seed the checkpoint was written with: its
		 * entries are in slot order, so inserting them walks the new
		 * table almost sequentially (fast open of a large store). */
		uint64_t seed = s->idx.seed;

		if (ck_len >= 16 && !memcmp(ck, STORE_INDEX_MAGIC, 4))
			s->idx.seed = tsb_load_be64(ck + 8);
		r = store_index_parse(ck, ck_len, ckpt_pack, ckpt_ent, &c);
		if (r)
			s->idx.seed = seed;
	}
	free(ck);
	if (r == -ENOMEM)
		goto out;
	if (r) {
		/* No checkpoint (new tenant) or a bad one: rebuild from packs. */
		if (r != -ENOENT || n)
			s->ckpt_rebuilt = true;
		ix_clear(&s->idx);
		for (i = 0; i < n; i++) {
			ps[i].covered = 0;
			ps[i].listed = false;
		}
		s->index_dirty = true;
	}
	for (i = 0; i < n; i++)
		if (ps[i].listed && ps[i].num > max_listed)
			max_listed = ps[i].num;
	s->packs = calloc(n ? n : 1, sizeof(*s->packs));
	if (!s->packs) {
		r = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		struct store_pack *p;
		char pp[PATH_MAX];

		if ((r = pack_path(s, ps[i].num, pp, sizeof(pp))))
			goto out;
		if (!ps[i].listed && ps[i].num < max_listed) {
			/* Left over from a compaction the checkpoint completed. */
			if (!s->readonly) {
				(void)unlink(pp);
				s->dir_dirty = true;
			}
			continue;
		}
		p = &s->packs[kept];
		p->num = ps[i].num;
		p->len = ps[i].covered;
		p->dirty = false;
		p->fd = open(pp, (s->readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (p->fd < 0) {
			r = -errno;
			goto out;
		}
		s->n_packs = ++kept;
		if ((r = scan_pack(s, p, ps[i].covered, ps[i].size)))
			goto out;
	}
	r = 0;
	if (!s->readonly && (s->index_dirty || s->dir_dirty))
		r = store_checkpoint_locked(s);
out:
	free(ps);
	return r;
}

/* ---- open / close ---- */

/* Temporary files of writes a crash interrupted (we hold the lock). */
static void remove_tmp_files(struct store *s)
{
	static const char *const dirs[] = { "", "/images" };
	char path[PATH_MAX];
	struct dirent *d;
	size_t i;
	DIR *dh;

	for (i = 0; i < TSB_ARRAY_SIZE(dirs); i++) {
		if (snprintf(path, sizeof(path), "%s%s", s->tdir, dirs[i]) >=
		    (int)sizeof(path))
			continue;
		dh = opendir(path);
		if (!dh)
			continue;
		while ((d = readdir(dh))) {
			size_t l = strlen(d->d_name);

			if (l > 4 && !strcmp(d->d_name + l - 4, ".tmp"))
				(void)unlinkat(dirfd(dh), d->d_name, 0);
		}
		closedir(dh);
	}
}

int store_open_internal(const struct store_options *o, bool readonly,
			struct store **ret, char *err, size_t errlen)
{
	char path[PATH_MAX];
	struct store *s;
	bool fresh;
	int r;

	if (!o || !o->dir || !*o->dir || !store_id_valid(o->tenant)) {
		store_errf(err, errlen, "store: bad directory or tenant id");
		return -EINVAL;
	}
	s = calloc(1, sizeof(*s));
	if (!s) {
		store_errf(err, errlen, "store: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_init(&s->mu, NULL);
	{
		pthread_condattr_t ca;

		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&s->put_cond, &ca);
		pthread_condattr_destroy(&ca);
	}
	s->lock_fd = -1;
	s->readonly = readonly;
	s->cap = o->cap_bytes ? o->cap_bytes : STORE_DEFAULT_CAP;
	snprintf(s->tenant, sizeof(s->tenant), "%s", o->tenant);
	s->dir = strdup(o->dir);
	if (!s->dir || asprintf(&s->tdir, "%s/tenants/%s", o->dir, o->tenant) < 0) {
		s->tdir = NULL;
		r = -ENOMEM;
		store_errf(err, errlen, "store: out of memory");
		goto fail;
	}
	if (getrandom(&s->idx.seed, sizeof(s->idx.seed), 0) != sizeof(s->idx.seed))
		s->idx.seed = (uint64_t)store_now_ms() * 0x2545f4914f6cdd1dull ^
			      (uint64_t)getpid();
	if (ix_init(&s->idx, 1024)) {
		r = -ENOMEM;
		store_errf(err, errlen, "store: out of memory");
		goto fail;
	}
	fresh = access(s->tdir, F_OK) != 0;
	if (!readonly) {
		if ((r = tsb_mkdir_p(o->dir)) ||
		    (r = path_of(path, sizeof(path), o->dir, "tenants")) ||
		    (r = mkdir_one(path)) || (r = mkdir_one(s->tdir)) ||
		    (r = path_of(path, sizeof(path), s->tdir, "packs")) ||
		    (r = mkdir_one(path)) ||
		    (r = path_of(path, sizeof(path), s->tdir, "images")) ||
		    (r = mkdir_one(path))) {
			store_errf(err, errlen, "store %s: cannot create directories: %s",
			     o->dir, strerror(-r));
			goto fail;
		}
		if (fresh && !path_of(path, sizeof(path), o->dir, "tenants"))
			(void)tsb_fsync_dir(path);
	} else if (fresh) {
		r = -ENOENT;
		store_errf(err, errlen, "store %s has no tenant %s", o->dir, o->tenant);
		goto fail;
	}
	r = site_id_load(o->dir, !readonly, s->site);
	if (r && readonly)
		snprintf(s->site, sizeof(s->site), "%s", "");
	else if (r) {
		store_errf(err, errlen, "store %s: cannot read or create site-id: %s",
		     o->dir, strerror(-r));
		goto fail;
	}
	if (!readonly) {
		if ((r = lock_take(s, o->lock_timeout_ms, err, errlen)))
			goto fail;
	}
	if (!readonly)
		remove_tmp_files(s);
	if ((r = state_load(s, fresh))) {
		store_errf(err, errlen, "store %s: cannot write the state of tenant %s: %s",
		     o->dir, o->tenant, strerror(-r));
		goto fail;
	}
	if ((r = recover(s))) {
		store_errf(err, errlen, "store %s: cannot recover tenant %s: %s",
		     o->dir, o->tenant, strerror(-r));
		goto fail;
	}
	if (s->ckpt_rebuilt || s->torn_bytes || s->bad_slots)
		log_debug("store %s/%s: recovered (index rebuilt %d, %" PRIu64
			  " torn bytes cut, %" PRIu64 " bad records)", o->dir,
			  o->tenant, s->ckpt_rebuilt, s->torn_bytes, s->bad_slots);
	*ret = s;
	return 0;
fail:
	s->readonly = true;	/* close writes nothing */
	store_close(s);
	return r;
}

/*
 * The tenants open for writing in this process. The lock is per process,
 * so several migrations of one tenant in one process (a group) share one
 * handle: a second open of the same directory and tenant takes a
 * reference instead of waiting for the lock the first one holds.
 */
static pthread_mutex_t open_mu = PTHREAD_MUTEX_INITIALIZER;
static struct store *open_list;

int store_open(const struct store_options *o, struct store **ret, char *err,
	       size_t errlen)
{
	char real[PATH_MAX];
	struct store *s;
	int r;

	pthread_mutex_lock(&open_mu);
	if (o && o->dir && o->tenant && realpath(o->dir, real))
		for (s = open_list; s; s = s->next_open)
			if (s->opener == getpid() && !strcmp(s->real_dir, real) &&
			    !strcmp(s->tenant, o->tenant)) {
				s->refs++;
				pthread_mutex_unlock(&open_mu);
				*ret = s;
				return 0;
			}
	r = store_open_internal(o, false, &s, err, errlen);
	if (r == 0) {
		s->real_dir = realpath(o->dir, NULL);
		if (!s->real_dir) {
			r = -errno;
			store_errf(err, errlen, "store %s: %s", o->dir, strerror(-r));
			store_close(s);
		} else {
			s->refs = 1;
			s->opener = getpid();
			s->next_open = open_list;
			open_list = s;
			*ret = s;
		}
	}
	pthread_mutex_unlock(&open_mu);
	return r;
}

/* Drops a reference; true when it was the last (or s was never shared). */
static bool last_reference(struct store *s)
{
	struct store **pp;
	bool last = true;

	if (!s->refs)
		return true;
	pthread_mutex_lock(&open_mu);
	if (--s->refs)
		last = false;
	else
		for (pp = &open_list; *pp; pp = &(*pp)->next_open)
			if (*pp == s) {
				*pp = s->next_open;
				break;
			}
	pthread_mutex_unlock(&open_mu);
	return last;
}

void store_close(struct store *s)
{
	size_t i;

	if (!s || !last_reference(s))
		return;
	if (!s->readonly) {
		pthread_mutex_lock(&s->mu);
		if (s->index_dirty || s->wbuf_n)
			(void)store_checkpoint_locked(s);
		pthread_mutex_unlock(&s->mu);
	}
	for (i = 0; i < s->n_packs; i++)
		close(s->packs[i].fd);
	free(s->packs);
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	ix_free_table(s->idx.e, s->idx.cap);
	free(s->wbuf);
	free(s->dir);
	free(s->tdir);
	free(s->real_dir);
	pthread_cond_destroy(&s->put_cond);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

const char *store_site_id(const struct store *s)
{
	return s->site;
}

uint64_t store_generation(const struct store *s)
{
	return s->gen;
}

const char *store_tenant(const struct store *s)
{
	return s->tenant;
}

/* ---- pages ---- */

bool store_has(struct store *s, const uint8_t hash[STORE_HASH_LEN])
{
	bool r;

	pthread_mutex_lock(&s->mu);
	r = store_index_find(&s->idx, hash) != NULL;
	pthread_mutex_unlock(&s->mu);
	return r;
}

int store_put(struct store *s, const uint8_t hash[STORE_HASH_LEN],
	      const uint8_t page[STORE_PAGE_SIZE])
{
	struct store_ent *e;
	uint32_t pack, rec;
	int r;

	if (s->readonly)
		return -EROFS;
	pthread_mutex_lock(&s->mu);
	e = store_index_find(&s->idx, hash);
	if (e) {
		e->rec |= ENT_SESSION;
		pthread_mutex_unlock(&s->mu);
		return 0;
	}
	r = append_locked(s, hash, page, &pack, &rec);
	if (!r)
		r = ix_put(&s->idx, hash, pack, rec | ENT_SESSION, false);
	if (!r && s->put_waiters)
		pthread_cond_broadcast(&s->put_cond);
	pthread_mutex_unlock(&s->mu);
	return r;
}

bool store_wait_has(struct store *s, const uint8_t hash[STORE_HASH_LEN], uint64_t deadline_ns)
{
	struct timespec until = {
		.tv_sec = (time_t)(deadline_ns / 1000000000),
		.tv_nsec = (long)(deadline_ns % 1000000000),
	};
	bool r;

	pthread_mutex_lock(&s->mu);
	s->put_waiters++;
	while (!(r = store_index_find(&s->idx, hash) != NULL) &&
	       pthread_cond_timedwait(&s->put_cond, &s->mu, &until) != ETIMEDOUT)
		;
	s->put_waiters--;
	pthread_mutex_unlock(&s->mu);
	return r;
}

int store_get(struct store *s, const uint8_t hash[STORE_HASH_LEN],
	      uint8_t out[STORE_PAGE_SIZE])
{
	uint8_t hdr[STORE_REC_HDR], md[SHA256_DIGEST_LENGTH];
	struct store_pack *p, *cur;
	struct store_ent *e;
	uint32_t pack, rec;
	bool bad = false;
	uint64_t flushed;

	pthread_mutex_lock(&s->mu);
	e = store_index_find(&s->idx, hash);
	if (!e) {
		pthread_mutex_unlock(&s->mu);
		return -ENOENT;
	}
	pack = e->pack;
	rec = e->rec & ENT_REC_MASK;
	cur = cur_pack(s);
	p = pack_find(s, pack);
	if (!p) {
		bad = true;
	} else if (p == cur && (flushed = p->len / STORE_REC_SIZE) <= rec) {
		const uint8_t *src;

		if (rec - flushed >= s->wbuf_n) {
			pthread_mutex_unlock(&s->mu);
			return -EIO;	/* cannot happen: the index is ahead */
		}
		src = s->wbuf + (size_t)(rec - flushed) * STORE_REC_SIZE;
		memcpy(hdr, src, STORE_REC_HDR);
		memcpy(out, src + STORE_REC_HDR, STORE_PAGE_SIZE);
	} else {
		struct iovec iov[2] = {
			{ .iov_base = hdr, .iov_len = sizeof(hdr) },
			{ .iov_base = out, .iov_len = STORE_PAGE_SIZE },
		};
		ssize_t n;

		do {
			n = preadv(p->fd, iov, 2, (off_t)rec * STORE_REC_SIZE);
		} while (n < 0 && errno == EINTR);
		if (n < 0) {
			int err = -errno;

			pthread_mutex_unlock(&s->mu);
			return err;
		}
		if (n != STORE_REC_SIZE)
			bad = true;
	}
	pthread_mutex_unlock(&s->mu);

	if (!bad) {
		SHA256(out, STORE_PAGE_SIZE, md);
		bad = memcmp(hdr, STORE_REC_MAGIC, 4) ||
		      memcmp(hdr + 4, hash, STORE_HASH_LEN) ||
		      memcmp(md, hash, STORE_HASH_LEN);
	}
	if (!bad)
		return 0;

	/* Damaged: forget this copy (unless it moved meanwhile). */
	pthread_mutex_lock(&s->mu);
	e = store_index_find(&s->idx, hash);
	if (e && e->pack == pack && (e->rec & ENT_REC_MASK) == rec) {
		store_index_remove(&s->idx, e);
		s->index_dirty = true;
		s->damaged++;
		if (!s->readonly)
			(void)store_save_state_locked(s);
		log_debug("store %s/%s: damaged page in pack %" PRIu32
			  " record %" PRIu32 " dropped", s->dir, s->tenant,
			  pack, rec);
	}
	pthread_mutex_unlock(&s->mu);
	memset(out, 0, STORE_PAGE_SIZE);
	return -ENOENT;
}

int store_sync(struct store *s)
{
	int r;

	pthread_mutex_lock(&s->mu);
	r = store_sync_locked(s);
	pthread_mutex_unlock(&s->mu);
	return r;
}

size_t store_for_each_hash(struct store *s,
			   void (*fn)(const uint8_t hash[STORE_HASH_LEN], void *arg),
			   void *arg)
{
	size_t i, n = 0;

	pthread_mutex_lock(&s->mu);
	for (i = 0; i < s->idx.cap; i++) {
		if (!s->idx.e[i].pack)
			continue;
		if (fn)
			fn(s->idx.e[i].hash, arg);
		n++;
	}
	pthread_mutex_unlock(&s->mu);
	return n;
}

size_t store_page_count(struct store *s)
{
	size_t n;

	pthread_mutex_lock(&s->mu);
	n = s->idx.n;
	pthread_mutex_unlock(&s->mu);
	return n;
}

/* ---- compaction ---- */

static bool ent_kept(const struct store_ent *e, bool keep_all)
{
	return keep_all || (e->rec & (ENT_LIVE | ENT_SESSION));
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static bool in_sorted(uint32_t num, const uint32_t *v, size_t n)
{
	return bsearch(&num, v, n, sizeof(*v), cmp_u32) != NULL;
}

/*
 * Which packs to rewrite (numbers into redo, unsorted): those holding a
 * record that is not kept, and empty ones other than the last (the last is
 * where appends go). Reads only.
 */
static int compact_plan(struct store *s, bool keep_all, uint32_t *redo,
			size_t *ret_n)
{
	uint32_t *live = calloc(s->n_packs ? s->n_packs : 1, sizeof(*live));
	size_t i, n = 0;

	if (!live)
		return -ENOMEM;
	for (i = 0; i < s->idx.cap; i++) {
		struct store_ent *e = &s->idx.e[i];
		struct store_pack *p;

		if (!e->pack || !ent_kept(e, keep_all))
			continue;
		p = pack_find(s, e->pack);
		if (p)
			live[p - s->packs]++;
	}
	for (i = 0; i < s->n_packs; i++)
		if (live[i] != s->packs[i].len / STORE_REC_SIZE ||
		    (!live[i] && i + 1 < s->n_packs))
			redo[n++] = s->packs[i].num;
	free(live);
	*ret_n = n;
	return 0;
}

/*
 * Removes the index entries with pack in nums (sorted), or, nums NULL,
 * those pointing at no pack at all. Returns how many.
 */
static uint64_t drop_entries_of(struct store *s, const uint32_t *nums, size_t n)
{
	uint64_t dropped = 0;
	size_t i;

	for (i = 0; i < s->idx.cap; i++) {
		struct store_ent *e = &s->idx.e[i];

		if (!e->pack)
			continue;
		if (nums ? in_sorted(e->pack, nums, n) : !pack_find(s, e->pack)) {
			store_index_remove(&s->idx, e);
			dropped++;
			i--;	/* the slot may hold a shifted entry now */
		}
	}
	return dropped;
}

/*
 * Copies the kept records of pack num to the end of the store and points
 * their entries there; entries of records not kept or with a bad magic are
 * removed (counted in *dropped). Records no entry points at are skipped.
 */
static int compact_copy_pack(struct store *s, uint32_t num, bool keep_all,
			     uint8_t *buf, size_t bufsize, uint64_t *dropped)
{
	struct store_pack *p = pack_find(s, num);
	uint64_t off = 0;

	while (p && off + STORE_REC_SIZE <= p->len) {
		uint64_t want = p->len - off;
		ssize_t got;

		if (want > bufsize)
			want = bufsize;
		got = read_full(p->fd, buf, want, off);
		if (got < 0)
			return got;
		got -= got % STORE_REC_SIZE;
		if (!got)
			break;
		for (size_t j = 0; j < (size_t)got; j += STORE_REC_SIZE) {
			uint32_t rec = (off + j) / STORE_REC_SIZE;
			uint32_t npk, nrec;
			struct store_ent *e;
			int r;

			e = store_index_find(&s->idx, buf + j + 4);
			if (!e || e->pack != num || (e->rec & ENT_REC_MASK) != rec)
				continue;
			if (!ent_kept(e, keep_all) ||
			    memcmp(buf + j, STORE_REC_MAGIC, 4)) {
				store_index_remove(&s->idx, e);
				(*dropped)++;
				continue;
			}
			r = append_locked(s, buf + j + 4, buf + j + STORE_REC_HDR,
					  &npk, &nrec);
			if (r)
				return r;
			/* append may have grown s->packs */
			p = pack_find(s, num);
			e->pack = npk;
			e->rec = nrec | (e->rec & ~ENT_REC_MASK);
		}
		off += got;
	}
	return 0;
}

/* Closes the packs in nums (sorted) and takes them out of s->packs. */
static void forget_packs(struct store *s, const uint32_t *nums, size_t n)
{
	size_t i, w = 0;

	for (i = 0; i < s->n_packs; i++) {
		if (in_sorted(s->packs[i].num, nums, n)) {
			close(s->packs[i].fd);
			continue;
		}
		s->packs[w++] = s->packs[i];
	}
	s->n_packs = w;
}

/*
 * The rewrite itself: copies, makes the copies durable, and only then
 * (after a checkpoint that no longer names them) deletes the old packs, so
 * that a crash at any point leaves either the old packs or the new ones
 * indexed (docs/store.md, "Eviction, gc, compaction").
 */
static int compact_rewrite(struct store *s, bool keep_all, uint32_t *redo,
			   size_t n_redo, uint8_t *buf, size_t bufsize,
			   uint64_t *dropped)
{
	char path[PATH_MAX];
	size_t i;
	int r;

	qsort(redo, n_redo, sizeof(*redo), cmp_u32);
	if ((r = pack_create_locked(s)))
		return r;
	for (i = 0; i < n_redo; i++)
		if ((r = compact_copy_pack(s, redo[i], keep_all, buf, bufsize,
					   dropped)))
			return r;
	/* Whatever still points into a rewritten pack was not found there. */
	*dropped += drop_entries_of(s, redo, n_redo);
	if ((r = store_sync_locked(s)))
		return r;
	if (*dropped && (r = store_bump_generation_locked(s)))
		return r;
	/* Forget the old packs, checkpoint, then delete them. */
	forget_packs(s, redo, n_redo);
	s->index_dirty = true;
	if ((r = store_checkpoint_locked(s)))
		return r;
	for (i = 0; i < n_redo; i++)
		if (!pack_path(s, redo[i], path, sizeof(path)))
			(void)unlink(path);
	if (!path_of(path, sizeof(path), s->tdir, "packs"))
		(void)tsb_fsync_dir(path);
	return 0;
}

int store_compact_locked(struct store *s, bool keep_all, uint64_t *ret_dropped)
{
	uint32_t *redo = NULL;
	uint64_t dropped = 0, longest = 0;
	size_t i, n_redo = 0, bufsize;
	uint8_t *buf = NULL;
	int r;

	if (s->readonly)
		return -EROFS;
	if ((r = store_sync_locked(s)))
		return r;
	redo = calloc(s->n_packs ? s->n_packs : 1, sizeof(*redo));
	if (!redo)
		return -ENOMEM;
	if ((r = compact_plan(s, keep_all, redo, &n_redo)))
		goto out;
	/* The read buffer, before anything changes: no longer than the
	 * longest pack to copy. */
	for (i = 0; i < n_redo; i++) {
		struct store_pack *p = pack_find(s, redo[i]);

		if (p && p->len > longest)
			longest = p->len;
	}
	bufsize = store_read_bufsize(longest);
	buf = malloc(bufsize);
	if (!buf) {
		r = -ENOMEM;
		goto out;
	}
	/* Entries pointing at no pack at all. */
	dropped = drop_entries_of(s, NULL, 0);
	if (n_redo) {
		if ((r = compact_rewrite(s, keep_all, redo, n_redo, buf, bufsize,
					 &dropped)))
			goto out;
	} else if (dropped) {
		/* Nothing to copy, but the index lost entries. */
		if ((r = store_bump_generation_locked(s)))
			goto out;
		s->index_dirty = true;
		if ((r = store_checkpoint_locked(s)))
			goto out;
	}
	for (i = 0; i < s->idx.cap; i++)
		s->idx.e[i].rec &= ~ENT_LIVE;
	if (ret_dropped)
		*ret_dropped = dropped;
out:
	free(redo);
	free(buf);
	return r;
}

/* ---- other tenants, for the cap ---- */

uint64_t store_other_tenants_pages(const char *dir, const char *skip_tenant)
{
	char path[PATH_MAX];
	struct dirent *d;
	uint64_t pages = 0;
	DIR *dh;

	if (path_of(path, sizeof(path), dir, "tenants"))
		return 0;
	dh = opendir(path);
	if (!dh)
		return 0;
	while ((d = readdir(dh))) {
		char pp[PATH_MAX];
		struct dirent *f;
		DIR *ph;

		if (!store_id_valid(d->d_name) ||
		    (skip_tenant && !strcmp(d->d_name, skip_tenant)))
			continue;
		if (snprintf(pp, sizeof(pp), "%s/%s/packs", path, d->d_name) >=
		    (int)sizeof(pp))
			continue;
		ph = opendir(pp);
		if (!ph)
			continue;
		while ((f = readdir(ph))) {
			struct stat st;
			size_t l = strlen(f->d_name);

			if (l != 13 || strcmp(f->d_name + 8, ".pack"))
				continue;
			if (!fstatat(dirfd(ph), f->d_name, &st, 0))
				pages += (uint64_t)st.st_size / STORE_REC_SIZE;
		}
		closedir(ph);
	}
	closedir(dh);
	return pages;
}

int store_standby_dir(struct store *s, const char *vm, char *out, size_t outlen, char *err,
		      size_t errlen)
{
	int n;

	if (!store_id_valid(vm)) {
		snprintf(err, errlen, "'%s' is not a VM id", vm ? vm : "");
		return -EINVAL;
	}
	n = snprintf(out, outlen, "%s/standby/%s", s->tdir, vm);
	if (n < 0 || (size_t)n >= outlen) {
		snprintf(err, errlen, "the standby directory's path is too long");
		return -ENAMETOOLONG;
	}
	return 0;
}
