/*
 * Content by hash across the WAN, the same way on every channel (the
 * migration's and the disk channel): the side that misses content sends
 * NEED and reads on until the HASHDATA answer came, keeping the frames
 * that arrive meanwhile aside, in order; the side that referred to it
 * answers from what it holds. docs/protocol.md, NEED and HASHDATA.
 */
#ifndef TSB_WIRE_NEED_H
#define TSB_WIRE_NEED_H

#include "common/buf.h"
#include "wire/wire.h"

#include <stddef.h>
#include <stdint.h>

struct wire_zstd;

/* ---- Frames kept aside while a NEED waits ---- */

struct wire_kept;

struct wire_backlog {
	struct wire_kept *head, **tail;
	struct wire_kept *taken;	/* the last one taken: freed at the next take */
	uint64_t bytes;			/* payload bytes kept */
	unsigned frames;
};

void wire_backlog_init(struct wire_backlog *b);
/* Keeps a copy of f at the end. 0 or -ENOMEM. */
int wire_backlog_keep(struct wire_backlog *b, const struct wire_frame *f);
/*
 * Takes the oldest kept frame: 1 with *f viewing it (valid until the next
 * take, or fini), 0 when none is kept.
 */
int wire_backlog_take(struct wire_backlog *b, struct wire_frame *f);
void wire_backlog_fini(struct wire_backlog *b);

/* ---- The side that misses content ---- */

struct wire_fetch_io {
	void *opaque;
	int (*send)(void *opaque, const struct tsb_buf *frame);
	/* The next frame from the peer: 1, 0 at a clean end, -errno. */
	int (*read)(void *opaque, struct wire_frame *f);
	/*
	 * May f (not HASHDATA) wait in bl until the answer came? 0, or -errno
	 * to end the fetch (the caller keeps its own reason).
	 */
	int (*may_keep)(void *opaque, const struct wire_frame *f, const struct wire_backlog *bl);
	/* A HASHDATA came: 1 when all asked for is there, 0 to read on, -errno. */
	int (*answer)(void *opaque, const struct wire_hashdata *h);
};

/*
 * Sends NEED for the n hashes and reads until io->answer says all came;
 * other frames go to bl (io->may_keep permitting). 0, -ECONNRESET when the
 * peer closed meanwhile, or the first error.
 */
int wire_fetch(const struct wire_fetch_io *io, struct wire_backlog *bl,
	       const uint8_t (*hashes)[WIRE_HASH_LEN], size_t n);

/* ---- The side that referred to it ---- */

/* Copies the content with this hash (obj_size bytes) to out: 0, or -errno to refuse. */
typedef int (*wire_need_lookup_fn)(void *opaque, const uint8_t *hash, uint8_t *out);

/*
 * Builds in frame the HASHDATA that answers need: each object found by
 * lookup, in the NEED's order, compressed with z (NULL: not). 0, the
 * first lookup's error (nothing to send then), or -ENOMEM.
 */
int wire_need_answer(const struct wire_need *need, uint32_t obj_size, wire_need_lookup_fn lookup,
		     void *opaque, struct wire_zstd *z, struct tsb_buf *frame);

#endif
