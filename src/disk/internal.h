/* Shared by the disk sender and receiver; not a public interface. */
#ifndef TSB_DISK_INTERNAL_H
#define TSB_DISK_INTERNAL_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qmp;
struct diskindex;
struct disk_recv;
struct nbd_client;
struct nbd_client_config;
struct wire_frame;

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
 * True when [off, off + len) lies inside a disk of size bytes. Written so
 * that nothing wraps: offsets and lengths come from the peer (PAGES) or
 * from QEMU, and off + len may not fit in 64 bits.
 */
static inline bool disk_range_ok(uint64_t off, uint64_t len, uint64_t size)
{
	return off <= size && len <= size - off;
}

/*
 * The writable disks with a medium (query-block). At most max; returns
 * the count or -errno (err says why). A disk whose virtual size is not a
 * positive integer is an error (-EPROTO); an image file name that does
 * not fit in file[] is left empty (never truncated).
 */
int disk_query(struct qmp *q, struct disk_dev *out, unsigned max, char *err,
	       size_t errlen);

/*
 * Creates a private directory $TMPDIR/tsb-disk.XXXXXX (TMPDIR default
 * /tmp) for unix sockets into dir (len bytes; short enough for socket
 * paths). 0 or -errno, err says why.
 */
int disk_private_dir(char *dir, size_t len, char *err, size_t errlen);

struct disk_send;
/* The disks a disk_send moves (at most max; valid until disk_send_finish). */
unsigned disk_send_devs(const struct disk_send *ds, const struct disk_dev **out, unsigned max);

/* Runs a QMP command built with json_pack (args taken over). */
int disk_qmp(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
	     char *err, size_t errlen);

/* ---- the receiver without QEMU or TLS: tests and tests/fuzz/fuzz-disk-recv.c ---- */

/* What the receiver's channel runs on instead of a wire_conn and QEMU's NBD socket. */
struct disk_recv_io {
	void *opaque;
	/*
	 * The sender's next frame, header checked: 1 (payload valid until the
	 * next call), 0 at a clean end, -errno.
	 */
	int (*read_frame)(void *opaque, struct wire_frame *ret);
	/* Whole frames to the sender: 0 or -errno. */
	int (*write)(void *opaque, const void *data, size_t len);
	/* A new NBD client of the export of devs[k]: 0 or -errno. */
	int (*nbd_connect)(void *opaque, unsigned k, const struct nbd_client_config *cfg,
			   struct nbd_client **ret);
	/* As with libvirt: the disks are BLOCKS' (devs unused), opened at the first write. */
	bool libvirt;
	/* As a standby: the disks are BLOCKS', image files in this directory (devs unused). */
	const char *standby_dir;
};

/*
 * Runs the receiving side of the disk channel from after HELLO (SUMMARY,
 * BLOCKS, PAGES... until DONE) on the calling thread, over io, for the
 * disks devs[0..n). Returns 0 when the channel ended with DONE, else
 * -errno. *ret (NULL only on ENOMEM) is then ended with
 * disk_recv_finish(*ret, NULL, ...), which also reports.
 */
int disk_recv_run_io(const struct disk_dev *devs, unsigned n, struct diskindex *index,
		     const struct disk_recv_io *io, struct disk_recv **ret);

#endif
