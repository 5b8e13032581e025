/* The image a migration records of the VM it moves (imagerec.h). */
#include "proxy/imagerec.h"

#include "common/log.h"

#include <errno.h>
#include <string.h>

void image_rec_init(struct image_rec *ir, struct store *store)
{
	unsigned i;

	memset(ir, 0, sizeof(*ir));
	ir->store = store;
	for (i = 0; i < WIRE_MAX_BLOCKS; i++)
		ir->block[i] = -1;
}

void image_rec_start(struct image_rec *ir, const struct store_image_info *info,
		     const struct image_rec_block *blocks, size_t n)
{
	struct store_image_block ib[WIRE_MAX_BLOCKS] = { { 0 } };
	char names[WIRE_MAX_BLOCKS][QS_IDSTR_MAX + 1];
	size_t i;

	if (!ir->store || ir->image || n > WIRE_MAX_BLOCKS)
		return;
	for (i = 0; i < n; i++) {
		if (blocks[i].name_len > QS_IDSTR_MAX)
			return;
		memcpy(names[i], blocks[i].name, blocks[i].name_len);
		names[i][blocks[i].name_len] = '\0';
		ib[i].name = names[i];
		ib[i].length = blocks[i].length;
	}
	ir->image = store_image_new(info, ib, n);
	if (!ir->image)
		return;
	for (i = 0; i < n; i++)
		if (blocks[i].index < WIRE_MAX_BLOCKS)
			ir->block[blocks[i].index] = store_image_block_find(
				ir->image, blocks[i].name, blocks[i].name_len);
}

bool image_rec_has_block(const struct image_rec *ir, unsigned index)
{
	return ir->image && !ir->failed && index < WIRE_MAX_BLOCKS && ir->block[index] >= 0;
}

bool image_rec_page(struct image_rec *ir, const struct qs_page *pg,
		    enum store_page_state state, const uint8_t *hash)
{
	int r;

	if (!image_rec_has_block(ir, pg->block->index))
		return false;
	if (state == STORE_PAGE_HASH && pg->len == STORE_PAGE_SIZE) {
		r = store_put(ir->store, hash, pg->data);
		if (r < 0) {
			log_warn("store: cannot keep pages any more (%s); this migration goes "
				 "on without recording its image", strerror(-r));
			ir->failed = true;
			return false;
		}
	} else if (state == STORE_PAGE_HASH) {
		state = STORE_PAGE_UNKNOWN;
	}
	store_image_set(ir->image, ir->block[pg->block->index], pg->offset / STORE_PAGE_SIZE,
			state, hash);
	return state == STORE_PAGE_HASH;
}

bool image_rec_commit(struct image_rec *ir, const char *what)
{
	char err[256];

	if (!ir->image || ir->failed)
		return false;
	if (store_image_commit(ir->store, ir->image, err, sizeof(err)) < 0) {
		log_warn("store: the %s image was not kept: %s", what, err);
		return false;
	}
	return true;
}

void image_rec_fini(struct image_rec *ir)
{
	store_image_free(ir->image);
	ir->image = NULL;
}
