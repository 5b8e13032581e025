/*
 * What the destination can rebuild without the WAN, beyond this
 * migration's own cache: the receiver's store (earlier visits of this VM,
 * other VMs of the tenant) and local disk images (guest page cache).
 * The receiver summarises it in SUMMARY; the sender keeps that view and
 * its arrival manifests to choose SAME and REF entries.
 */
#ifndef TSB_PROXY_CONTENT_H
#define TSB_PROXY_CONTENT_H

#include "proxy/proxy.h"
#include "store/diskindex.h"
#include "store/filter.h"
#include "store/store.h"
#include "wire/wire.h"

#include <stdbool.h>
#include <stdint.h>

struct qmp;
struct tsb_buf;

/* Random id for an image or migration: 32 hex chars. */
void content_new_id(char out[33]);

/*
 * Opens the tenant's part of the store named by the options. NULL dir:
 * *ret = NULL and 0. err explains a failure.
 */
int content_open_store(const struct proxy_common_options *c, const char *tenant,
		       struct store **ret, char *err, size_t errlen);

/* The tenant for a VM: the one given, else one of its own ("vm-<id>"). */
void content_tenant(const char *given, const char *vm, char out[WIRE_MAX_ID + 1]);

/*
 * Tells the local mobility agent (docs/network.md) that the VM arrives
 * here (o != NULL: its MAC, addresses and home site; bound at once, at
 * the switchover) or departed (o == NULL). Best effort: a
 * failure is logged, the migration goes on.
 */
void content_net_notify(const char *agent, const char *vm,
			const struct proxy_recv_options *o);

/* ---- receiver ---- */

/*
 * Indexes the disks of the destination VM (from QMP query-block) unless
 * told not to, and the extra sources. *ret NULL when there is nothing.
 */
int content_index_disks(struct qmp *q, const struct proxy_recv_options *o,
			struct diskindex **ret, char *err, size_t errlen);

/*
 * Adds the disk images the tenant's store remembers on this host (other
 * VMs' disks, old copies) to *disks (created if NULL), skipping files
 * already indexed and any that cannot be read (logged): blocks of a
 * clone of the same base, or of an older copy, then travel as references.
 */
void content_index_store_disks(struct store *st, struct diskindex **disks);

/* Remembers these image files in the tenant's store (best effort, logged). */
void content_note_disks(struct store *st, const char *const *paths, size_t n);

/* Appends the SUMMARY frame for vm (store and disks may be NULL). */
int content_encode_summary(struct tsb_buf *out, struct store *st, struct diskindex *disks,
			   const char *vm, uint64_t *ret_filter_bytes);

/* ---- sender ---- */

struct peer_view {
	uint64_t store_gen;
	unsigned n_images;
	char images[WIRE_MAX_IMAGES][WIRE_MAX_ID + 1];
	bool has_store, has_disk;
	struct tsb_filter store_filter, disk_filter;
};

/* Takes a SUMMARY in (copies what it keeps). 0, -EBADMSG, -ENOMEM. */
int peer_view_init(struct peer_view *v, const struct wire_summary *s);
void peer_view_fini(struct peer_view *v);

/*
 * The newest image of vm whose counterpart the peer at peer_site says it
 * still holds (its info's peer_image): an arrival image that came from
 * there, or a sync round's image sent there (docs/standby.md); *ret NULL
 * if none.
 */
int content_find_manifest(struct store *st, const char *vm, const char *peer_site,
			  const struct peer_view *v, struct store_image **ret);

/*
 * A sync round's image (docs/standby.md) has its own id as peer_image:
 * the standby keeps the round under the sender's id. Removes vm's older
 * round images shared with peer_site, all but keep_id.
 */
bool content_is_round(const struct store_image_info *info);
void content_prune_rounds(struct store *st, const char *vm, const char *peer_site,
			  const char *keep_id);

#endif
