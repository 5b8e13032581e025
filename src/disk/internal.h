/* Shared by the disk sender and receiver; not a public interface. */
#ifndef TSB_DISK_INTERNAL_H
#define TSB_DISK_INTERNAL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

struct qmp;

#define DISK_NAME_MAX 128
#define DISK_EXPORT_NAME_PREFIX "tsb-"

/* A block device of a QEMU as query-block describes it. */
struct disk_dev {
	char device[DISK_NAME_MAX];	/* BlockBackend name ("disk0"), or the node name */
	char node[DISK_NAME_MAX];	/* top node name */
	char qdev[DISK_NAME_MAX];
	char file[4096];		/* image file */
	char format[16];
	uint64_t size;			/* virtual size */
};

/*
 * The writable disks with a medium (query-block). At most max; returns
 * the count or -errno (err says why).
 */
int disk_query(struct qmp *q, struct disk_dev *out, unsigned max, char *err,
	       size_t errlen);

/*
 * Creates a private directory $TMPDIR/tsb-disk.XXXXXX (TMPDIR default
 * /tmp) for unix sockets into dir (len bytes; short enough for socket
 * paths). 0 or -errno, err says why.
 */
int disk_private_dir(char *dir, size_t len, char *err, size_t errlen);

/* Runs a QMP command built with json_pack (args taken over). */
int disk_qmp(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
	     char *err, size_t errlen);

#endif
