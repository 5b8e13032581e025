/*
 * Index of local disk images as content a receiver can serve without
 * copying it anywhere: every 4 KiB block that holds data is hashed
 * (SHA-256) and remembered by where it lies in its file. A guest page
 * identical to such a block (the guest's page cache) is rebuilt by reading
 * the block back and checking its hash.
 *
 * raw images are read directly; for qcow2 the data clusters are located
 * with `qemu-img map` (depth 0, uncompressed clusters only; pass a backing
 * file as its own source to index it too).
 * Not thread-safe.
 */
#ifndef TSB_DISKINDEX_H
#define TSB_DISKINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DISKINDEX_BLOCK 4096
#define DISKINDEX_HASH_LEN 32
#define DISKINDEX_MAX_FILES 64

struct diskindex;

struct diskindex *diskindex_new(void);
void diskindex_free(struct diskindex *d);

/*
 * Indexes one image; format is "raw", "qcow2" or NULL to probe (qcow2
 * magic, else raw). The file stays open read-only for diskindex_get.
 * 0 or -errno; err explains ("…: not a raw or qcow2 image", …).
 */
int diskindex_add(struct diskindex *d, const char *path, const char *format,
		  char *err, size_t errlen);

/* True if this file (same device and inode, any name) was added. */
bool diskindex_has_file(const struct diskindex *d, const char *path);

/* Distinct blocks indexed. */
size_t diskindex_count(const struct diskindex *d);
size_t diskindex_files(const struct diskindex *d);

/* Calls fn with the hash of every indexed block. */
void diskindex_for_each_hash(const struct diskindex *d,
			     void (*fn)(const uint8_t hash[DISKINDEX_HASH_LEN], void *arg),
			     void *arg);

/* True if a block with this hash was indexed (not re-read). */
bool diskindex_has(const struct diskindex *d, const uint8_t hash[DISKINDEX_HASH_LEN]);

/*
 * Copies the block with this content hash into out, after reading it
 * back and checking it (the file may have changed since). 0 or -ENOENT.
 */
int diskindex_get(struct diskindex *d, const uint8_t hash[DISKINDEX_HASH_LEN],
		  uint8_t out[DISKINDEX_BLOCK]);

#endif
