/*
 * A disk in memory behind our NBD server, standing in for the
 * destination QEMU's export in tests and fuzz targets of the disk
 * channel: each connection is served by its own thread and server.
 */
#ifndef TSB_TEST_MEMDISK_H
#define TSB_TEST_MEMDISK_H

#include <stddef.h>
#include <stdint.h>

struct memdisk;
struct nbd_client;
struct nbd_client_config;

/* A zeroed disk of size bytes exported as name (export_size: what NBD says it holds). */
struct memdisk *memdisk_new(const char *name, uint64_t size, uint64_t export_size);
/* Stops serving (clients should be closed first) and frees. Accepts NULL. */
void memdisk_free(struct memdisk *m);
/* The disk's bytes (size of them); read them when no client writes. */
uint8_t *memdisk_data(struct memdisk *m);
/* Flushes served so far. */
unsigned memdisk_flushes(struct memdisk *m);
/* A client connected through a socketpair; 0 or -errno. */
int memdisk_connect(struct memdisk *m, const struct nbd_client_config *cfg,
		    struct nbd_client **ret);
/* Serves every connection to a unix socket at path (until freed); 0 or -errno. */
int memdisk_listen(struct memdisk *m, const char *path);

#endif
