/*
 * Looking after a store directory: LRU eviction (also used by commit),
 * and the stats, gc and verify verbs behind 'tsubame store'.
 */
#include "store/internal.h"
#include "common/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>


static const char *role_name(int role)
{
	return role == STORE_IMAGE_DEPARTURE ? "departure" :
	       role == STORE_IMAGE_ARRIVAL ? "arrival" : "unknown";
}

static json_t *info_json(const struct store_image_info *i)
{
	return json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:I, s:I}",
			 "id", i->id, "vm", i->vm, "role", role_name(i->role),
			 "peer_site", i->peer_site, "peer_image", i->peer_image,
			 "peer_generation", (json_int_t)i->peer_generation,
			 "created_ms", (json_int_t)i->created_ms,
			 "used_ms", (json_int_t)i->used_ms,
			 "pages", (json_int_t)i->pages,
			 "known_pages", (json_int_t)i->known_pages);
}

/* ---- eviction ---- */

struct ref_ctx {
	struct store *s;
	uint32_t *refs;
	int delta;
	uint64_t *live;		/* decremented when a page loses its last ref */
};

static void ref_fn(const uint8_t *hash, void *arg)
{
	struct ref_ctx *c = arg;
	struct store_ent *e = store_index_find(&c->s->idx, hash);
	size_t k;

	if (!e)
		return;
	k = e - c->s->idx.e;
	if (c->delta > 0) {
		if (c->refs[k] < UINT32_MAX)
			c->refs[k]++;
	} else if (c->refs[k] > 0) {
		c->refs[k]--;
		if (!c->refs[k] && !(e->rec & ENT_SESSION))
			(*c->live)--;
	}
}

struct cand {
	size_t h;		/* handle index */
	struct store_image_info info;
};

static int cmp_cand_lru(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	if (x->info.used_ms != y->info.used_ms)
		return x->info.used_ms < y->info.used_ms ? -1 : 1;
	return strcmp(x->info.id, y->info.id);
}

/* What one eviction works on: a reference count per index slot of every
 * handle, the images that may go, and the live pages of all handles. */
struct evict {
	struct store **hs;
	size_t n;
	uint32_t **refs;	/* refs[i][slot] for hs[i] */
	struct cand *cands;
	size_t n_cands;
	uint64_t live;
};

static int add_cand(struct evict *ev, size_t h,
		    const struct store_image_info *info)
{
	struct cand *nc = reallocarray(ev->cands, ev->n_cands + 1,
				       sizeof(*ev->cands));

	if (!nc)
		return -ENOMEM;
	ev->cands = nc;
	ev->cands[ev->n_cands].h = h;
	ev->cands[ev->n_cands].info = *info;
	ev->n_cands++;
	return 0;
}

/* Counts what every image of hs[i] references; its images (but pin) become
 * candidates; adds its live pages. */
static int count_refs(struct evict *ev, size_t i, const char *pin)
{
	struct store *s = ev->hs[i];
	struct store_image_info *v = NULL;
	size_t nv = 0, k;
	int r = 0;

	ev->refs[i] = calloc(s->idx.cap, sizeof(**ev->refs));
	if (!ev->refs[i] || (r = store_image_list(s, NULL, &v, &nv))) {
		r = ev->refs[i] ? r : -ENOMEM;
		free(v);
		return r;
	}
	for (k = 0; k < nv; k++) {
		struct ref_ctx c = { s, ev->refs[i], 1, &ev->live };
		struct store_image *im;

		/* A damaged image names nothing but may still go. */
		if (store_image_load(s, v[k].id, &im) == 0) {
			store_image_for_each_hash(im, ref_fn, &c);
			store_image_free(im);
		}
		if (i == 0 && pin && !strcmp(pin, v[k].id))
			continue;
		if ((r = add_cand(ev, i, &v[k]))) {
			free(v);
			return r;
		}
	}
	free(v);
	for (k = 0; k < s->idx.cap; k++)
		if (s->idx.e[k].pack &&
		    (ev->refs[i][k] || (s->idx.e[k].rec & ENT_SESSION)))
			ev->live++;
	return 0;
}

/* Drops least recently used images until the live pages fit; each one
 * dropped goes to evicted (may be NULL). */
static void drop_lru(struct evict *ev, uint64_t cap_bytes, uint64_t other_pages,
		     json_t *evicted)
{
	size_t k;

	if (ev->n_cands)
		qsort(ev->cands, ev->n_cands, sizeof(*ev->cands), cmp_cand_lru);
	for (k = 0; k < ev->n_cands &&
		    (ev->live + other_pages) * STORE_PAGE_SIZE > cap_bytes; k++) {
		const struct cand *cd = &ev->cands[k];
		struct store *s = ev->hs[cd->h];
		struct ref_ctx c = { s, ev->refs[cd->h], -1, &ev->live };
		struct store_image *im;

		if (store_image_load(s, cd->info.id, &im) == 0) {
			store_image_for_each_hash(im, ref_fn, &c);
			store_image_free(im);
		}
		if (store_image_remove(s, cd->info.id))
			continue;
		log_debug("store %s/%s: evicted image %s", s->dir, s->tenant,
			  cd->info.id);
		if (evicted) {
			json_t *j = info_json(&cd->info);

			json_object_set_new(j, "tenant", json_string(s->tenant));
			json_array_append_new(evicted, j);
		}
	}
}

/* Compacts every handle, keeping what the remaining images name (and the
 * sessions' pages). */
static int compact_kept(struct evict *ev, uint64_t *reclaimed, char *err,
			size_t errlen)
{
	size_t i, k;
	int r;

	for (i = 0; i < ev->n; i++) {
		struct store *s = ev->hs[i];
		uint64_t dropped = 0;

		for (k = 0; k < s->idx.cap; k++)
			if (s->idx.e[k].pack && ev->refs[i][k])
				s->idx.e[k].rec |= ENT_LIVE;
		r = store_compact_locked(s, false, &dropped);
		if (r) {
			store_errf(err, errlen, "store %s: cannot compact tenant %s: %s",
			     s->dir, s->tenant, strerror(-r));
			return r;
		}
		*reclaimed += dropped;
	}
	return 0;
}

int store_evict(struct store **hs, size_t n, uint64_t cap_bytes,
		uint64_t other_pages, const char *pin, json_t *report,
		char *err, size_t errlen)
{
	struct evict ev = { .hs = hs, .n = n };
	uint64_t reclaimed = 0;
	json_t *evicted = json_array();
	size_t i, k;
	int r = 0;

	ev.refs = calloc(n ? n : 1, sizeof(*ev.refs));
	if (!ev.refs || !evicted) {
		free(ev.refs);
		json_decref(evicted);
		store_errf(err, errlen, "store: out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < n; i++)
		pthread_mutex_lock(&hs[i]->mu);
	/* Count references of every image to every page. */
	for (i = 0; i < n && !r; i++)
		r = count_refs(&ev, i, pin);
	if (r) {
		store_errf(err, errlen, "store %s: cannot read images: %s", hs[0]->dir,
		     strerror(-r));
		goto out;
	}
	drop_lru(&ev, cap_bytes, other_pages, evicted);
	if ((r = compact_kept(&ev, &reclaimed, err, errlen)))
		goto out;
	if (report) {
		json_object_set(report, "evicted", evicted);
		json_object_set_new(report, "reclaimed_pages",
				    json_integer((json_int_t)reclaimed));
	}
out:
	for (i = 0; i < n; i++) {
		for (k = 0; k < hs[i]->idx.cap; k++)
			hs[i]->idx.e[k].rec &= ~ENT_LIVE;
		pthread_mutex_unlock(&hs[i]->mu);
		free(ev.refs[i]);
	}
	free(ev.refs);
	free(ev.cands);
	json_decref(evicted);
	return r;
}

/* ---- tenants of a directory ---- */

struct tenants {
	char (*names)[STORE_MAX_ID + 1];
	size_t n;
};

static int cmp_name(const void *a, const void *b)
{
	return strcmp(a, b);
}

static int list_tenants(const char *dir, struct tenants *t, char *err,
			size_t errlen)
{
	char path[PATH_MAX];
	struct dirent *d;
	struct stat st;
	DIR *dh;

	memset(t, 0, sizeof(*t));
	if (stat(dir, &st)) {
		int r = -errno;

		store_errf(err, errlen, "store %s: %s", dir, strerror(-r));
		return r;
	}
	snprintf(path, sizeof(path), "%s/tenants", dir);
	dh = opendir(path);
	if (!dh) {
		int r = -errno;

		if (r == -ENOENT)
			return 0;	/* an empty store */
		store_errf(err, errlen, "store %s: %s", path, strerror(-r));
		return r;
	}
	while ((d = readdir(dh))) {
		void *nn;

		if (!store_id_valid(d->d_name) || d->d_type == DT_REG)
			continue;
		nn = reallocarray(t->names, t->n + 1, sizeof(*t->names));
		if (!nn) {
			closedir(dh);
			free(t->names);
			store_errf(err, errlen, "store: out of memory");
			return -ENOMEM;
		}
		t->names = nn;
		memcpy(t->names[t->n], d->d_name, strlen(d->d_name) + 1);
		t->n++;
	}
	closedir(dh);
	if (t->n)
		qsort(t->names, t->n, sizeof(*t->names), cmp_name);
	return 0;
}

static uint64_t pack_bytes(const struct store *s)
{
	uint64_t b = 0;
	size_t i;

	for (i = 0; i < s->n_packs; i++)
		b += s->packs[i].len;
	return b + (uint64_t)s->wbuf_n * STORE_REC_SIZE;
}

/* The pid holding a tenant's lock, 0 if none, without waiting. */
static long lock_holder(const char *dir, const char *tenant)
{
	char path[PATH_MAX], buf[32];
	long pid = 0;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "%s/tenants/%s/lock", dir, tenant);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
		(void)flock(fd, LOCK_UN);
	} else {
		n = pread(fd, buf, sizeof(buf) - 1, 0);
		buf[n > 0 ? n : 0] = 0;
		pid = strtol(buf, NULL, 10);
		if (pid <= 0)
			pid = -1;
	}
	close(fd);
	return pid;
}

static json_t *tenant_json(struct store *s, long holder)
{
	struct store_image_info *v = NULL;
	json_t *t, *imgs = json_array();
	size_t nv = 0, k;

	t = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I}",
		      "tenant", s->tenant,
		      "generation", (json_int_t)s->gen,
		      "pages", (json_int_t)s->idx.n,
		      "page_bytes", (json_int_t)(s->idx.n * STORE_PAGE_SIZE),
		      "pack_bytes", (json_int_t)pack_bytes(s),
		      "packs", (json_int_t)s->n_packs,
		      "damaged_pages", (json_int_t)s->damaged);
	if (!t || !imgs) {
		json_decref(t);
		json_decref(imgs);
		return NULL;
	}
	if (holder > 0)
		json_object_set_new(t, "locked_by", json_integer(holder));
	else if (holder < 0)
		json_object_set_new(t, "locked_by", json_string("unknown"));
	if (!store_image_list(s, NULL, &v, &nv))
		for (k = 0; k < nv; k++)
			json_array_append_new(imgs, info_json(&v[k]));
	free(v);
	json_object_set_new(t, "images", imgs);
	return t;
}

int store_stats(const char *dir, json_t **ret, char *err, size_t errlen)
{
	struct tenants t;
	json_t *o, *arr;
	uint64_t pages = 0, bytes = 0;
	char site[40] = "";
	uint8_t *p = NULL;
	size_t i, n = 0;
	int r;

	if ((r = list_tenants(dir, &t, err, errlen)))
		return r;
	{
		char path[PATH_MAX];

		snprintf(path, sizeof(path), "%s/site-id", dir);
		if (!store_read_file(path, 64, &p, &n) && n >= 32) {
			memcpy(site, p, 32);
			site[32] = 0;
		}
		free(p);
	}
	o = json_pack("{s:s, s:s}", "dir", dir, "site_id", site);
	arr = json_array();
	if (!o || !arr) {
		r = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < t.n; i++) {
		struct store_options so = { .dir = dir, .tenant = t.names[i] };
		long holder = lock_holder(dir, t.names[i]);
		char e2[256];
		struct store *s;
		json_t *tj;

		r = store_open_internal(&so, true, &s, e2, sizeof(e2));
		if (r) {
			json_array_append_new(arr, json_pack("{s:s, s:s}", "tenant",
							     t.names[i], "error", e2));
			continue;
		}
		pages += s->idx.n;
		bytes += pack_bytes(s);
		tj = tenant_json(s, holder);
		if (tj)
			json_array_append_new(arr, tj);
		store_close(s);
	}
	json_object_set_new(o, "tenants", arr);
	arr = NULL;
	json_object_set_new(o, "pages", json_integer((json_int_t)pages));
	json_object_set_new(o, "page_bytes",
			    json_integer((json_int_t)(pages * STORE_PAGE_SIZE)));
	json_object_set_new(o, "pack_bytes", json_integer((json_int_t)bytes));
	free(t.names);
	*ret = o;
	return 0;
fail:
	json_decref(o);
	json_decref(arr);
	free(t.names);
	store_errf(err, errlen, "store: out of memory");
	return r;
}

/* Opens every tenant for maintenance; the locked ones go to 'skipped'. */
static int open_all(const char *dir, struct tenants *t, struct store ***ret,
		    size_t *ret_n, json_t *skipped, char *err, size_t errlen)
{
	struct store **hs;
	size_t i, n = 0;

	hs = calloc(t->n ? t->n : 1, sizeof(*hs));
	if (!hs) {
		store_errf(err, errlen, "store: out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < t->n; i++) {
		struct store_options so = {
			.dir = dir,
			.tenant = t->names[i],
			.lock_timeout_ms = STORE_LOCK_TIMEOUT_MAINT_MS,
		};
		char e2[256];

		if (store_open(&so, &hs[n], e2, sizeof(e2))) {
			json_array_append_new(skipped, json_pack("{s:s, s:s}",
				"tenant", t->names[i], "reason", e2));
			continue;
		}
		n++;
	}
	*ret = hs;
	*ret_n = n;
	return 0;
}

static void close_all(struct store **hs, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		store_close(hs[i]);
	free(hs);
}

static json_t *usage_json(struct store **hs, size_t n, uint64_t others)
{
	uint64_t pages = 0, bytes = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		pages += hs[i]->idx.n;
		bytes += pack_bytes(hs[i]);
	}
	return json_pack("{s:I, s:I, s:I}", "pages", (json_int_t)pages,
			 "pack_bytes", (json_int_t)bytes,
			 "skipped_tenants_pages", (json_int_t)others);
}

int store_gc(const char *dir, uint64_t cap_bytes, json_t **ret, char *err,
	     size_t errlen)
{
	struct store **hs = NULL;
	struct tenants t;
	json_t *o = NULL, *skipped = json_array();
	uint64_t others = 0;
	size_t n = 0, i, j;
	int r;

	if (!cap_bytes)
		cap_bytes = STORE_DEFAULT_CAP;
	if (!skipped) {
		store_errf(err, errlen, "store: out of memory");
		return -ENOMEM;
	}
	if ((r = list_tenants(dir, &t, err, errlen)))
		goto out;
	if ((r = open_all(dir, &t, &hs, &n, skipped, err, errlen)))
		goto out;
	/* Tenants we could not lock still count against the cap. */
	for (i = 0; i < t.n; i++) {
		bool open = false;

		for (j = 0; j < n; j++)
			open |= !strcmp(hs[j]->tenant, t.names[i]);
		if (!open) {
			char pp[PATH_MAX];
			struct dirent *f;
			DIR *ph;

			snprintf(pp, sizeof(pp), "%s/tenants/%s/packs", dir,
				 t.names[i]);
			ph = opendir(pp);
			while (ph && (f = readdir(ph))) {
				struct stat st;

				if (strlen(f->d_name) == 13 &&
				    !strcmp(f->d_name + 8, ".pack") &&
				    !fstatat(dirfd(ph), f->d_name, &st, 0))
					others += (uint64_t)st.st_size / STORE_REC_SIZE;
			}
			if (ph)
				closedir(ph);
		}
	}
	o = json_pack("{s:s, s:I}", "dir", dir, "cap_bytes", (json_int_t)cap_bytes);
	if (!o) {
		r = -ENOMEM;
		store_errf(err, errlen, "store: out of memory");
		goto out;
	}
	json_object_set_new(o, "before", usage_json(hs, n, others));
	if (n && (r = store_evict(hs, n, cap_bytes, others, NULL, o, err, errlen)))
		goto out;
	if (!n) {
		json_object_set_new(o, "evicted", json_array());
		json_object_set_new(o, "reclaimed_pages", json_integer(0));
	}
	json_object_set_new(o, "after", usage_json(hs, n, others));
	{
		json_t *gens = json_object();

		for (i = 0; i < n; i++)
			json_object_set_new(gens, hs[i]->tenant,
					    json_integer((json_int_t)hs[i]->gen));
		json_object_set_new(o, "generations", gens);
	}
	json_object_set(o, "skipped", skipped);
	*ret = o;
	o = NULL;
out:
	json_decref(o);
	json_decref(skipped);
	close_all(hs, n);
	free(t.names);
	return r;
}

/* ---- verify ---- */

struct miss_ctx {
	struct store *s;
	uint64_t missing;
};

static void miss_fn(const uint8_t *hash, void *arg)
{
	struct miss_ctx *c = arg;

	if (!store_has(c->s, hash))
		c->missing++;
}

/* What verify found in one tenant. */
struct verify_counts {
	uint64_t good;			/* intact records the index points at */
	uint64_t dup;			/* intact records it does not */
	uint64_t bad_records;		/* bad magic or hash */
	uint64_t dropped_entries;	/* index entries without an intact record */
	uint64_t bad_images;		/* damaged image files removed */
	uint64_t missing;		/* pages images name that are not here */
};

/* Checks magic and hash of every record of p; marks the index entry of
 * each intact record it points at (ENT_LIVE). */
static int verify_pack(struct store *s, struct store_pack *p, uint8_t *buf,
		       size_t bufsize, struct verify_counts *vc)
{
	uint8_t md[SHA256_DIGEST_LENGTH];
	uint64_t off = 0;
	size_t k;

	while (off + STORE_REC_SIZE <= p->len) {
		uint64_t want = p->len - off;
		ssize_t got;

		if (want > bufsize)
			want = bufsize;
		got = pread(p->fd, buf, want, off);
		if (got < 0)
			return -errno;
		got -= got % STORE_REC_SIZE;
		if (!got)
			break;
		for (k = 0; k < (size_t)got; k += STORE_REC_SIZE) {
			uint32_t rec = (off + k) / STORE_REC_SIZE;
			struct store_ent *e;

			if (memcmp(buf + k, STORE_REC_MAGIC, 4)) {
				vc->bad_records++;
				continue;
			}
			SHA256(buf + k + STORE_REC_HDR, STORE_PAGE_SIZE, md);
			if (memcmp(md, buf + k + 4, STORE_HASH_LEN)) {
				vc->bad_records++;
				continue;
			}
			e = store_index_find(&s->idx, md);
			if (e && e->pack == p->num &&
			    (e->rec & ENT_REC_MASK) == rec) {
				e->rec |= ENT_LIVE;
				vc->good++;
			} else {
				vc->dup++;
			}
		}
		off += got;
	}
	return 0;
}

/* Removes the index entries verify_pack did not mark (their record is not
 * intact) and clears the marks. Returns how many were removed. */
static uint64_t drop_unmarked(struct store *s)
{
	uint64_t dropped = 0;
	size_t k;

	for (k = 0; k < s->idx.cap; k++) {
		struct store_ent *e = &s->idx.e[k];

		if (!e->pack)
			continue;
		if (e->rec & ENT_LIVE) {
			e->rec &= ~ENT_LIVE;
			continue;
		}
		/* Remove, then look at this slot again (backward shift). */
		store_index_remove(&s->idx, e);
		dropped++;
		k--;
	}
	return dropped;
}

/* Checks every record against the index and repairs what it found:
 * damaged entries dropped (and counted in the state file), packs with
 * damaged or duplicate records compacted. Under s->mu. */
static int verify_records_locked(struct store *s, struct verify_counts *vc)
{
	uint64_t dropped = 0, longest = 0;
	size_t i, bufsize;
	uint8_t *buf;
	int r;

	if ((r = store_flush_locked(s)))
		return r;
	/* The read buffer, once the lengths are final: no longer than the
	 * longest pack. */
	for (i = 0; i < s->n_packs; i++)
		if (s->packs[i].len > longest)
			longest = s->packs[i].len;
	bufsize = store_read_bufsize(longest);
	buf = malloc(bufsize);
	if (!buf)
		return -ENOMEM;
	for (i = 0; i < s->n_packs && !r; i++)
		r = verify_pack(s, &s->packs[i], buf, bufsize, vc);
	free(buf);
	if (r)
		return r;
	vc->dropped_entries = drop_unmarked(s);
	if (vc->dropped_entries) {
		s->damaged += vc->dropped_entries;
		s->index_dirty = true;
		(void)store_save_state_locked(s);
	}
	/* Rewrite packs holding damaged or duplicate records. */
	if (vc->bad_records || vc->dup || vc->dropped_entries || s->bad_slots)
		return store_compact_locked(s, true, &dropped);
	if (s->index_dirty)
		(void)store_checkpoint_locked(s);
	return 0;
}

/* Images: damaged files are removed (their ids go to removed); the others
 * go to imgs with the number of pages they name that are not here. */
static void verify_images(struct store *s, json_t *imgs, json_t *removed,
			  struct verify_counts *vc)
{
	char dir[PATH_MAX];
	struct dirent *d;
	DIR *dh;

	snprintf(dir, sizeof(dir), "%s/images", s->tdir);
	dh = opendir(dir);
	while (dh && (d = readdir(dh))) {
		size_t l = strlen(d->d_name);
		char id[STORE_MAX_ID + 1];
		struct miss_ctx mc = { s, 0 };
		struct store_image *im;
		int e;

		if (l < 5 || l - 4 > STORE_MAX_ID ||
		    strcmp(d->d_name + l - 4, ".img"))
			continue;
		memcpy(id, d->d_name, l - 4);
		id[l - 4] = 0;
		e = store_id_valid(id) ? store_image_load(s, id, &im) : -EBADMSG;
		if (e == -EBADMSG || e == -EOPNOTSUPP) {
			(void)unlinkat(dirfd(dh), d->d_name, 0);
			json_array_append_new(removed, json_string(id));
			vc->bad_images++;
			continue;
		}
		if (e)
			continue;
		store_image_for_each_hash(im, miss_fn, &mc);
		vc->missing += mc.missing;
		json_array_append_new(imgs, json_pack("{s:s, s:I}", "id", id,
			"missing_pages", (json_int_t)mc.missing));
		store_image_free(im);
	}
	if (dh) {
		if (vc->bad_images)
			(void)fsync(dirfd(dh));
		closedir(dh);
	}
}

static void verify_report(json_t *tj, const struct store *s,
			  const struct verify_counts *vc, json_t *imgs,
			  json_t *removed)
{
	json_object_set_new(tj, "pages_ok", json_integer((json_int_t)vc->good));
	json_object_set_new(tj, "damaged_records",
			    json_integer((json_int_t)vc->bad_records));
	json_object_set_new(tj, "damaged_pages_dropped",
			    json_integer((json_int_t)vc->dropped_entries));
	json_object_set_new(tj, "duplicate_records", json_integer((json_int_t)vc->dup));
	json_object_set_new(tj, "torn_bytes_cut", json_integer((json_int_t)s->torn_bytes));
	json_object_set_new(tj, "index_rebuilt", json_boolean(s->ckpt_rebuilt));
	json_object_set_new(tj, "damaged_images_removed", removed);
	json_object_set_new(tj, "images", imgs);
	json_object_set_new(tj, "missing_pages", json_integer((json_int_t)vc->missing));
	json_object_set_new(tj, "generation", json_integer((json_int_t)s->gen));
}

static int verify_tenant(struct store *s, json_t *tj, bool *ret_damage)
{
	struct verify_counts vc = { 0 };
	json_t *imgs = json_array(), *removed = json_array();
	int r;

	if (!imgs || !removed) {
		json_decref(imgs);
		json_decref(removed);
		return -ENOMEM;
	}
	pthread_mutex_lock(&s->mu);
	r = verify_records_locked(s, &vc);
	pthread_mutex_unlock(&s->mu);
	if (r) {
		json_decref(imgs);
		json_decref(removed);
		return r;
	}
	verify_images(s, imgs, removed, &vc);
	*ret_damage = vc.bad_records || vc.dropped_entries || vc.bad_images ||
		      s->torn_bytes || s->ckpt_rebuilt || s->bad_slots;
	verify_report(tj, s, &vc, imgs, removed);
	return 0;
}

int store_verify(const char *dir, json_t **ret, char *err, size_t errlen)
{
	struct store **hs = NULL;
	struct tenants t;
	json_t *o = NULL, *arr = NULL, *skipped = json_array();
	bool any = false;
	size_t n = 0, i;
	int r;

	if (!skipped) {
		store_errf(err, errlen, "store: out of memory");
		return -ENOMEM;
	}
	if ((r = list_tenants(dir, &t, err, errlen)))
		goto out;
	if ((r = open_all(dir, &t, &hs, &n, skipped, err, errlen)))
		goto out;
	o = json_pack("{s:s}", "dir", dir);
	arr = json_array();
	if (!o || !arr) {
		r = -ENOMEM;
		store_errf(err, errlen, "store: out of memory");
		goto out;
	}
	for (i = 0; i < n; i++) {
		json_t *tj = json_pack("{s:s}", "tenant", hs[i]->tenant);
		bool dmg = false;

		if (!tj) {
			r = -ENOMEM;
			store_errf(err, errlen, "store: out of memory");
			goto out;
		}
		r = verify_tenant(hs[i], tj, &dmg);
		if (r) {
			json_decref(tj);
			store_errf(err, errlen, "store %s: cannot verify tenant %s: %s",
			     dir, hs[i]->tenant, strerror(-r));
			goto out;
		}
		json_object_set_new(tj, "damage_found", json_boolean(dmg));
		json_array_append_new(arr, tj);
		any |= dmg;
	}
	json_object_set_new(o, "tenants", arr);
	arr = NULL;
	json_object_set(o, "skipped", skipped);
	json_object_set_new(o, "damage_found", json_boolean(any));
	*ret = o;
	o = NULL;
	r = any ? 1 : 0;
out:
	json_decref(o);
	json_decref(arr);
	json_decref(skipped);
	close_all(hs, n);
	free(t.names);
	return r;
}
