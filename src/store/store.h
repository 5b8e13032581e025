/*
 * The persistent content store of one host: 4 KiB pages keyed by their
 * SHA-256, and per-VM image maps (guest address to hash), in one
 * directory. Content is shared only inside a tenant: each tenant is its
 * own sub-store (own pages, own images, own lock), and a handle opened for
 * one tenant never sees another's pages.
 *
 * Crash safety: pages are appended to pack files and become durable at
 * store_sync() or store_image_commit(); an image map is written only after
 * the pages it names are durable (temporary file, fsync, rename). After a
 * crash the store reopens consistent: a torn tail of a pack is cut off, and
 * a damaged page is detected by its hash and never served (store_get
 * verifies every page it returns).
 *
 * Eviction: the store has a size cap; when a commit or store_gc() finds it
 * above the cap, the least recently used images are dropped first and the
 * pages no image names any more are reclaimed. Every reclaim bumps the
 * store generation.
 *
 * Page functions are thread-safe (one mutex per handle). Image objects are
 * owned by the caller and not shared between threads.
 */
#ifndef TSB_STORE_H
#define TSB_STORE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_PAGE_SIZE 4096
#define STORE_HASH_LEN 32
/* Tenant, VM, image and site ids: 1..STORE_MAX_ID printable ASCII, no '/', no spaces. */
#define STORE_MAX_ID 64
/* Default directory and cap when the CLI is not told otherwise. */
#define STORE_DEFAULT_DIR "/var/lib/tsubame/store"
#define STORE_DEFAULT_CAP (8ull << 30)

struct store;

/* Is id a valid tenant, VM, image or site id (above)? */
bool store_id_valid(const char *id);

struct store_options {
	const char *dir;	/* created if missing */
	const char *tenant;	/* id */
	uint64_t cap_bytes;	/* 0: STORE_DEFAULT_CAP; pages of all tenants */
	int lock_timeout_ms;	/* wait this long for another process's lock */
};

/*
 * Opens (creating if needed) the tenant's part of the store at o->dir and
 * takes its lock; recovers after a crash. On failure err gets a sentence
 * naming the problem ("store /x is locked by pid 123", "…: Permission
 * denied"). 0 or -errno.
 */
int store_open(const struct store_options *o, struct store **ret, char *err,
	       size_t errlen);
/*
 * Within one process, a second open of the same directory and tenant
 * returns the same handle (a reference): concurrent migrations of one
 * tenant (a group) share it. store_close drops a reference; the last one
 * releases the lock. Appended pages not yet synced may be lost: that is fine.
 */
void store_close(struct store *s);

/*
 * Reads the identity of the store at dir, creating dir and the identity
 * if needed (DIR/site-id: 32 lowercase hex chars and a newline, written
 * once, atomically), without opening any tenant. 0 or -errno.
 */
int store_dir_site_id(const char *dir, char out[33], char *err, size_t errlen);
/* Persistent random identity of this store (the host's site id), 32 hex chars. */
const char *store_site_id(const struct store *s);
/* Bumped every time pages may have been removed (eviction, gc). */
uint64_t store_generation(const struct store *s);
const char *store_tenant(const struct store *s);

/* ---- pages (thread-safe) ---- */

bool store_has(struct store *s, const uint8_t hash[STORE_HASH_LEN]);
/*
 * Copies the page with this hash into out after checking its SHA-256.
 * -ENOENT if absent, or if the stored copy is damaged (then it is also
 * forgotten, and counted in the stats); -EIO on a read error.
 */
int store_get(struct store *s, const uint8_t hash[STORE_HASH_LEN],
	      uint8_t out[STORE_PAGE_SIZE]);
/*
 * Adds a page whose SHA-256 the caller computed (store_get re-checks it).
 * A page already present is only marked used. 0 or -errno (-ENOSPC ...).
 */
int store_put(struct store *s, const uint8_t hash[STORE_HASH_LEN],
	      const uint8_t page[STORE_PAGE_SIZE]);
/* Makes every page put so far durable (fsync). 0 or -errno. */
int store_sync(struct store *s);
/*
 * Waits until the store holds this page (another thread of this process
 * puts it through the same handle) or deadline_ns (CLOCK_MONOTONIC)
 * passes. True if it holds it.
 */
bool store_wait_has(struct store *s, const uint8_t hash[STORE_HASH_LEN], uint64_t deadline_ns);
/* Calls fn for every page hash of the tenant; returns the count. */
size_t store_for_each_hash(struct store *s,
			   void (*fn)(const uint8_t hash[STORE_HASH_LEN], void *arg),
			   void *arg);
size_t store_page_count(struct store *s);

/* ---- images: one VM's memory at one moment, as a map of hashes ---- */

enum store_image_role {
	STORE_IMAGE_DEPARTURE = 1,	/* what left this host (the sender's last image) */
	STORE_IMAGE_ARRIVAL = 2,	/* what arrived here (the arrival manifest) */
};

/* State of one page of an image. */
enum store_page_state {
	STORE_PAGE_UNKNOWN = 0,		/* never use */
	STORE_PAGE_ZERO = 1,
	STORE_PAGE_HASH = 2,
};

struct store_image_info {
	char id[STORE_MAX_ID + 1];
	char vm[STORE_MAX_ID + 1];
	enum store_image_role role;
	char peer_site[STORE_MAX_ID + 1];  /* where it went to / came from ("" if none) */
	char peer_image[STORE_MAX_ID + 1]; /* the peer's id for the same image */
	uint64_t peer_generation;	   /* the peer's store generation then */
	int64_t created_ms;		   /* unix time */
	int64_t used_ms;		   /* last use (LRU) */
	uint64_t pages;			   /* pages in the map (all blocks) */
	uint64_t known_pages;		   /* pages not UNKNOWN */
};

struct store_image;

struct store_image_block {
	const char *name;	/* QEMU RAMBlock idstr, 1..255 bytes */
	uint64_t length;	/* bytes; a multiple of STORE_PAGE_SIZE is not required */
};

/*
 * A new empty image (every page UNKNOWN) for info->vm with these blocks;
 * info's id, vm, role and peer fields are copied, the rest is filled at
 * commit. NULL on ENOMEM or bad arguments.
 */
struct store_image *store_image_new(const struct store_image_info *info,
				    const struct store_image_block *blocks,
				    size_t n_blocks);
void store_image_free(struct store_image *im);
const struct store_image_info *store_image_get_info(const struct store_image *im);
size_t store_image_block_count(const struct store_image *im);
/* Index of the block with this name, or -1. */
int store_image_block_find(const struct store_image *im, const char *name,
			   size_t name_len);
/* hash is used only for STORE_PAGE_HASH. 0, or -ERANGE outside the block. */
int store_image_set(struct store_image *im, size_t block, uint64_t page_index,
		    enum store_page_state state, const uint8_t *hash);
/* State of a page (UNKNOWN outside the block); *hash points into the image. */
enum store_page_state store_image_page(const struct store_image *im, size_t block,
				       uint64_t page_index, const uint8_t **hash);

/*
 * Makes the pages durable, then writes the image (replacing one with the
 * same id), marks it most recently used and evicts above the cap.
 * 0 or -errno; err explains.
 */
int store_image_commit(struct store *s, struct store_image *im, char *err,
		       size_t errlen);
/*
 * Infos of the tenant's images, newest first; vm NULL for all VMs.
 * *ret is malloc'd (free it). 0 or -errno.
 */
int store_image_list(struct store *s, const char *vm,
		     struct store_image_info **ret, size_t *n);
/* Loads an image by id. -ENOENT, -EBADMSG (damaged file), -errno. */
int store_image_load(struct store *s, const char *id, struct store_image **ret);
/* Marks an image most recently used. */
int store_image_touch(struct store *s, const char *id);
int store_image_remove(struct store *s, const char *id);

/*
 * ---- disk images of the tenant's VMs on this host (disks.c) ----
 *
 * The store remembers where the tenant's disk images lie on this host (a
 * departed VM's old copy, an arrived VM's disk), not their content: a
 * receiver indexes them to rebuild disk blocks and page-cache pages from
 * them (every block read is checked against its hash, so an image that
 * changed or went away only costs bytes on the WAN). At most
 * STORE_MAX_DISKS paths, the least recently noted forgotten first.
 */
#define STORE_MAX_DISKS 32
#define STORE_DISK_PATH_MAX 4096

/* Remembers an absolute image path as the newest. 0 or -errno; err says why. */
int store_disk_note(struct store *s, const char *path, char *err, size_t errlen);
/* Calls fn for every remembered path, oldest first. The count or -errno. */
int store_disk_list(struct store *s, void (*fn)(const char *path, void *arg), void *arg);
/*
 * A standby's copies of a VM's disks (docs/standby.md) live in the
 * tenant's directory: tdir/standby/<vm>/ (made by the first disk that
 * arrives). Its path in out; 0, -EINVAL (vm not an id) or -ENAMETOOLONG;
 * err says why. (store.c)
 */
int store_standby_dir(struct store *s, const char *vm, char *out, size_t outlen, char *err,
		      size_t errlen);
/*
 * The list file's text (untrusted: fuzz-store-disks): fn for each valid
 * entry (an absolute path of printable characters), bad entries skipped.
 * The count, or -EBADMSG when the text is not such a list.
 */
int store_disks_parse(const char *text, size_t len,
		      void (*fn)(const char *path, void *arg), void *arg);

/* ---- maintenance over every tenant of a directory (tsubame store ...) ---- */

/* Counts per tenant and image; *ret is an owned JSON object. */
int store_stats(const char *dir, json_t **ret, char *err, size_t errlen);
/*
 * Evicts least recently used images until the pages fit in cap_bytes and
 * reclaims pages no image names; reports what it did.
 */
int store_gc(const char *dir, uint64_t cap_bytes, json_t **ret, char *err,
	     size_t errlen);
/*
 * Reads every page and image and checks them; damaged pages are dropped.
 * *ret says what was found; returns 0 when nothing was damaged, 1 when
 * something was (and repaired), -errno on failure.
 */
int store_verify(const char *dir, json_t **ret, char *err, size_t errlen);

#endif
