/*
 * The image a migration records of the VM it moves (docs/store.md): each
 * page's state and hash, with the content kept in the store, so that a
 * later visit can refer to it. Both ends record one (the sender its
 * departure image, the receiver its arrival image). Recording only saves
 * bytes later: a store failure stops it with a warning, never the
 * migration.
 */
#ifndef TSB_PROXY_IMAGEREC_H
#define TSB_PROXY_IMAGEREC_H

#include "qstream/qstream.h"
#include "store/store.h"
#include "wire/wire.h"

#include <stdbool.h>
#include <stdint.h>

struct image_rec {
	struct store *store;		/* borrowed; NULL: nothing recorded */
	struct store_image *image;	/* NULL until started (or if it could not be) */
	int block[WIRE_MAX_BLOCKS];	/* stream block index -> image block, -1 none */
	bool failed;			/* a store put failed: recording stopped */
};

/* One RAM block as the stream names it. */
struct image_rec_block {
	unsigned index;			/* the stream's block index */
	const char *name;
	size_t name_len;
	uint64_t length;		/* used_length, bytes */
};

void image_rec_init(struct image_rec *ir, struct store *store);
/*
 * Starts the image once the RAM blocks are known (info: its identity);
 * does nothing without a store or if started already.
 */
void image_rec_start(struct image_rec *ir, const struct store_image_info *info,
		     const struct image_rec_block *blocks, size_t n);
/* Is anything being recorded for this stream block? */
bool image_rec_has_block(const struct image_rec *ir, unsigned index);
/*
 * Records a page (STORE_PAGE_HASH: its content goes to the store too; a
 * page of another size is recorded as UNKNOWN). True if the store now
 * holds the content.
 */
bool image_rec_page(struct image_rec *ir, const struct qs_page *pg,
		    enum store_page_state state, const uint8_t *hash);
/* Keeps the image in the store (after a successful migration); logs why not. */
bool image_rec_commit(struct image_rec *ir, const char *what);
void image_rec_fini(struct image_rec *ir);

#endif
