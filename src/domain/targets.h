/*
 * Lets libvirt create a moving domain's missing target images at the
 * destination (docs/libvirt.md, "Targets").
 */
#ifndef TSUBAME_DOMAIN_TARGETS_H
#define TSUBAME_DOMAIN_TARGETS_H

#include <libvirt/libvirt.h>

/* Storage pools made for one migration, with the connection they live on. */
struct domain_targets {
	virConnectPtr conn;
	virStoragePoolPtr pools[8];
	unsigned n_pools;
};

/*
 * For each image file of files[0..n): makes sure a storage pool holds its
 * directory at dest_uri, so that libvirt creates the image there when it
 * is missing (in the disk's format, with the source's size). Where no pool
 * does, starts a transient one for the migration. Problems only warn:
 * an image that exists needs no pool, and libvirt names a missing one.
 */
void domain_targets_prepare(struct domain_targets *t, const char *dest_uri,
			     char *const *files, unsigned n);

/* Ends the transient pools (the images in them stay) and the connection. */
void domain_targets_release(struct domain_targets *t);

#endif
