/* Small durable-file helpers (file.h). */
#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int tsb_pwrite_all(int fd, const void *p, size_t n, off_t off)
{
	const uint8_t *b = p;

	while (n) {
		ssize_t w = pwrite(fd, b, n, off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		b += w;
		n -= w;
		off += w;
	}
	return 0;
}

int tsb_fsync_dir(const char *path)
{
	int fd, r = 0;

	fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fsync(fd))
		r = -errno;
	close(fd);
	return r;
}

int tsb_write_atomic(const char *dir, const char *name, const void *data, size_t len,
		     int64_t mtime_ms)
{
	char tmp[PATH_MAX], dst[PATH_MAX];
	int fd, r;

	if (snprintf(tmp, sizeof(tmp), "%s/%s.tmp", dir, name) >= (int)sizeof(tmp) ||
	    snprintf(dst, sizeof(dst), "%s/%s", dir, name) >= (int)sizeof(dst))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	r = tsb_pwrite_all(fd, data, len, 0);
	if (!r && mtime_ms > 0) {
		struct timespec ts[2];

		ts[0].tv_sec = ts[1].tv_sec = mtime_ms / 1000;
		ts[0].tv_nsec = ts[1].tv_nsec = (mtime_ms % 1000) * 1000000;
		if (futimens(fd, ts))
			r = -errno;
	}
	if (!r && fsync(fd))
		r = -errno;
	if (close(fd) && !r)
		r = -errno;
	if (!r && rename(tmp, dst))
		r = -errno;
	if (r) {
		(void)unlink(tmp);
		return r;
	}
	return tsb_fsync_dir(dir);
}

static int mkdir_one(const char *path)
{
	if (mkdir(path, 0700) && errno != EEXIST)
		return -errno;
	return 0;
}

int tsb_mkdir_p(const char *path)
{
	char buf[PATH_MAX];
	size_t i, n = strlen(path);
	int r;

	if (n == 0 || n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (i = 1; i < n; i++) {
		if (buf[i] != '/')
			continue;
		buf[i] = 0;
		r = mkdir_one(buf);
		buf[i] = '/';
		if (r)
			return r;
	}
	return mkdir_one(buf);
}
