/*
 * Missing target images at a libvirt destination. libvirt's migration
 * with its NBD mirror creates a missing target (the disk's format, the
 * source's capacity) only in a storage pool that holds the image's
 * directory; without one it fails, and the user had to create every image
 * by hand with the right size. A transient directory pool, defined for
 * the migration only, gives libvirt that pool without changing the
 * destination's configuration.
 */
#include "domain/targets.h"
#include "common/log.h"

#include <libvirt/virterror.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static unsigned pools_made;

static const char *last_error(void)
{
	const char *m = virGetLastErrorMessage();

	return m ? m : "unknown libvirt error";
}

/* The directory of path into dir; false for a path without one. */
static bool dir_of(const char *path, char *dir, size_t len)
{
	const char *slash = strrchr(path, '/');

	if (!slash || (size_t)(slash - path) >= len)
		return false;
	if (slash == path)
		slash++; /* "/x.img": the root */
	memcpy(dir, path, (size_t)(slash - path));
	dir[slash - path] = '\0';
	return true;
}

/* XML text may not hold these; a directory that has them gets no pool. */
static bool xml_safe(const char *s)
{
	return !strpbrk(s, "<>&'\"");
}

static void prepare_dir(struct domain_targets *t, const char *dir)
{
	virStoragePoolPtr pool;
	char xml[4352];

	pool = virStoragePoolLookupByTargetPath(t->conn, dir);
	if (pool) {
		if (virStoragePoolIsActive(pool) != 1)
			log_warn("the destination's storage pool for %s is not active: libvirt "
				 "cannot create a missing image there (virsh pool-start %s)", dir,
				 virStoragePoolGetName(pool) ? virStoragePoolGetName(pool) : "POOL");
		virStoragePoolFree(pool);
		return;
	}
	if (t->n_pools == sizeof(t->pools) / sizeof(t->pools[0]) || !xml_safe(dir))
		return;
	/* Unique in this process too: a group moves several domains at once. */
	snprintf(xml, sizeof(xml),
		 "<pool type='dir'><name>tsubame-%ld-%u</name>"
		 "<target><path>%s</path></target></pool>", (long)getpid(),
		 __atomic_fetch_add(&pools_made, 1, __ATOMIC_RELAXED), dir);
	pool = virStoragePoolCreateXML(t->conn, xml, 0);
	if (!pool) {
		log_warn("no storage pool for %s at the destination, and none could be made "
			 "there (%s): a target image missing there will not be created",
			 dir, last_error());
		return;
	}
	log_info("transient storage pool for %s at the destination, for this migration: "
		 "libvirt creates a missing target image there", dir);
	t->pools[t->n_pools++] = pool;
}

void domain_targets_prepare(struct domain_targets *t, const char *dest_uri,
			     char *const *files, unsigned n)
{
	char dir[4096];

	if (!n)
		return;
	t->conn = virConnectOpen(dest_uri);
	if (!t->conn) {
		log_warn("cannot reach libvirt at %s to look for its storage pools (%s): target "
			 "images must exist there", dest_uri, last_error());
		return;
	}
	for (unsigned i = 0; i < n; i++)
		if (files[i] && dir_of(files[i], dir, sizeof(dir)))
			prepare_dir(t, dir);
}

void domain_targets_release(struct domain_targets *t)
{
	for (unsigned i = 0; i < t->n_pools; i++) {
		if (virStoragePoolDestroy(t->pools[i]) < 0)
			log_warn("could not end a transient storage pool at the destination: %s",
				 last_error());
		virStoragePoolFree(t->pools[i]);
	}
	t->n_pools = 0;
	if (t->conn)
		virConnectClose(t->conn);
	t->conn = NULL;
}
