/* Small durable-file helpers: the store's files and migration records. */
#ifndef TSB_FILE_H
#define TSB_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Writes all n bytes at off (pwrite, EINTR retried); 0 or -errno. */
int tsb_pwrite_all(int fd, const void *p, size_t n, off_t off);
/* fsyncs a directory, so that names created or renamed in it last. */
int tsb_fsync_dir(const char *path);
/*
 * Replaces dir/name with data, crash-safely: dir/name.tmp (mode 0600),
 * fsync, mtime set when mtime_ms > 0, rename, fsync of dir. 0 or -errno.
 */
int tsb_write_atomic(const char *dir, const char *name, const void *data, size_t len,
		     int64_t mtime_ms);
/* Creates path and its missing parents (mode 0700); 0 or -errno. */
int tsb_mkdir_p(const char *path);

#endif
