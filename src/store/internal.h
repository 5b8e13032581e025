/*
 * Private to src/store: the on-disk formats (docs/store.md) and the parts
 * of a handle that image.c and maint.c share with store.c.
 */
#ifndef TSB_STORE_INTERNAL_H
#define TSB_STORE_INTERNAL_H

#include "store/store.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct tsb_buf;

/* A pack record: magic, SHA-256 of the page, the page. */
#define STORE_REC_MAGIC "TSPG"
#define STORE_REC_HDR (4 + STORE_HASH_LEN)
#define STORE_REC_SIZE (STORE_REC_HDR + STORE_PAGE_SIZE)
/* A new pack file after this many records (~256 MiB). */
#define STORE_PACK_MAX_RECS 64965u
/* Appends are buffered this many records (~1 MiB) before a write. */
#define STORE_WBUF_RECS 253u
/* Index checkpoint written at a commit once this much is not covered. */
#define STORE_CKPT_EVERY (64ull << 20)

#define STORE_INDEX_MAGIC "TSIX"
#define STORE_INDEX_VERSION 1u
#define STORE_IMAGE_MAGIC "TSIM"
#define STORE_IMAGE_VERSION 1u
/* Caps on what a file may claim. */
#define STORE_MAX_PACKS (1u << 20)
#define STORE_IMAGE_MAX_BLOCKS 1024u
#define STORE_IMAGE_MAX_BLOCK_LEN (1ull << 44)
#define STORE_IMAGE_MAX_FILE (1ull << 34)
#define STORE_INDEX_MAX_FILE (1ull << 36)
#define STORE_LOCK_TIMEOUT_MAINT_MS 5000

/* Index entry flags, kept in the top bits of rec. */
#define ENT_SESSION (1u << 31)	/* put (or re-put) since this handle opened */
#define ENT_LIVE (1u << 30)	/* named by a kept image (during gc) */
#define ENT_REC_MASK 0x00ffffffu

struct store_ent {
	uint8_t hash[STORE_HASH_LEN];
	uint32_t pack;		/* pack number; 0: free slot */
	uint32_t rec;		/* record index in the pack | ENT_* flags */
};

struct store_index {
	struct store_ent *e;
	size_t cap;		/* power of two */
	size_t n;
	uint64_t seed;
};

struct store_pack {
	uint32_t num;
	int fd;
	uint64_t len;		/* bytes written to the file (whole records) */
	bool dirty;		/* written since the last fsync */
};

struct store {
	pthread_mutex_t mu;
	pthread_cond_t put_cond;	/* store_wait_has(): a page was put */
	unsigned put_waiters;
	char *dir;		/* the store directory */
	char *tdir;		/* dir/tenants/<tenant> */
	char tenant[STORE_MAX_ID + 1];
	char site[33];
	bool readonly;		/* maintenance snapshot: no lock, no writes */
	int lock_fd;
	/* store_open's handles are shared in the process (open_list in store.c). */
	unsigned refs;		/* 0: not shared (maintenance) */
	char *real_dir;		/* realpath of dir: what makes two opens the same */
	pid_t opener;		/* a forked child holds no lock: it opens its own */
	struct store *next_open;
	uint64_t gen;
	uint64_t damaged;	/* damaged pages found, ever (persisted) */
	uint64_t cap;

	struct store_index idx;
	struct store_pack *packs;	/* ascending numbers; last is appended to */
	size_t n_packs;
	uint8_t *wbuf;			/* records not yet written to packs[last];
					 * NULL until the first append */
	size_t wbuf_n;			/* records in wbuf */
	bool dir_dirty;			/* a pack file was created or removed */
	bool index_dirty;		/* index differs from the checkpoint */
	uint64_t uncovered;		/* bytes appended since the checkpoint */
	int64_t last_used_ms;		/* newest used_ms given out (strict LRU order) */

	/* What open found and did (for verify/stats). */
	bool ckpt_rebuilt;
	uint64_t torn_bytes;		/* cut off pack tails */
	uint64_t bad_slots;		/* records with a bad magic skipped */
};

/* ---- store.c ---- */
/* Opens a tenant; readonly: no lock, nothing created or repaired. */
int store_open_internal(const struct store_options *o, bool readonly,
			struct store **ret, char *err, size_t errlen);
int store_read_file(const char *path, uint64_t max, uint8_t **ret,
		    size_t *ret_len);
/* Size of a buffer to read the records of a file of this many bytes in:
 * whole records, at most STORE_WBUF_RECS of them, at least one. (Under
 * ASan every allocation over 128 KiB is expensive; most files are small.) */
size_t store_read_bufsize(uint64_t bytes);
int64_t store_now_ms(void);
/* Under s->mu. */
struct store_ent *store_index_find(struct store_index *x,
				   const uint8_t hash[STORE_HASH_LEN]);
/* Removes e (entries after it may move into its slot). */
void store_index_remove(struct store_index *x, struct store_ent *e);
int store_flush_locked(struct store *s);
int store_sync_locked(struct store *s);
int store_checkpoint_locked(struct store *s);
/* Rewrites packs holding records not kept; keep_all: every indexed entry is
 * kept, else those with ENT_LIVE or ENT_SESSION. Bumps the generation when
 * anything indexed was dropped. *ret_dropped: entries dropped. */
int store_compact_locked(struct store *s, bool keep_all, uint64_t *ret_dropped);
int store_bump_generation_locked(struct store *s);
int store_save_state_locked(struct store *s);
/* Parses an index checkpoint (fuzzed). 0 or -EBADMSG. */
int store_index_parse(const uint8_t *p, size_t len,
		      int (*pack_fn)(uint32_t num, uint64_t covered, void *arg),
		      int (*ent_fn)(const uint8_t *hash, uint32_t pack,
				    uint32_t rec, void *arg),
		      void *arg);
/* Pages and pack bytes of every tenant but one (for the cap). */
uint64_t store_other_tenants_pages(const char *dir, const char *skip_tenant);

/* ---- image.c ---- */
/* A used_ms for now, above every one this handle gave out. */
int64_t store_next_used_ms(struct store *s);
/* Serializes an image (trailer included) into b. */
int store_image_encode(const struct store_image *im, struct tsb_buf *b);
/* Parses a whole image file (fuzzed). -EBADMSG when malformed or damaged. */
int store_image_decode(const uint8_t *p, size_t len, struct store_image **ret);
/* Parses only the header (no checksum check) into info. */
int store_image_decode_info(const uint8_t *p, size_t len,
			    struct store_image_info *info);
void store_image_set_times(struct store_image *im, int64_t created_ms,
			   int64_t used_ms);
/* Calls fn for every HASH page. */
void store_image_for_each_hash(const struct store_image *im,
			       void (*fn)(const uint8_t *hash, void *arg),
			       void *arg);

/* ---- maint.c ---- */
/*
 * Evicts LRU images of the handles until the live pages plus other_pages
 * fit cap_bytes, then compacts. pin (may be NULL) is an image id of hs[0]
 * never evicted. report (may be NULL) gets "evicted" and "reclaimed_pages".
 * Takes each handle's mutex.
 */
int store_evict(struct store **hs, size_t n, uint64_t cap_bytes,
		uint64_t other_pages, const char *pin, json_t *report,
		char *err, size_t errlen);

/* Formats a message into err (if any): the store's sentences for callers. */
void store_errf(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
