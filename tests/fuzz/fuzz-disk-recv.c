/*
 * Fuzz target for the receiving state machine of the disk channel
 * (src/disk/recv.c: SUMMARY, BLOCKS, PAGES with ZERO/DATA/REF, the
 * in-place check, NEED and the frames queued behind it, HASHDATA, PING
 * flushes, DONE), not only its decoders.
 *
 * The input is the byte stream a sender writes after HELLO: frames (an
 * 8-byte header, then the payload), as many as fit; a truncated last
 * frame is a lost connection. disk_recv_run_io() applies them to two
 * disks in memory behind our NBD server (tests/unit/memdisk.c):
 * "disk0" (1 MiB) and "disk1" (68 KiB + 512 bytes, not a multiple of a
 * block). Everything the receiver writes back must be well-formed
 * messages of a receiver, and the disks' sizes never change.
 * Seeds: tests/fuzz/corpus/disk-recv/ (make-seeds-disk.c).
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/log.h"
#include "disk/disk.h"
#include "disk/internal.h"
#include "nbd/nbd.h"
#include "wire/wire.h"
#include "../unit/memdisk.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define DISK0_SIZE (1u << 20)
#define DISK1_SIZE (68u * 1024 + 512)

struct feed {
	const uint8_t *p;
	size_t len, pos;
	struct memdisk *md[2];
	size_t written;
};

static int read_frame(void *opaque, struct wire_frame *f)
{
	struct feed *fd = opaque;
	int r;

	if (fd->pos == fd->len)
		return 0;
	if (fd->len - fd->pos < WIRE_HDR_LEN)
		return -ECONNRESET;
	r = wire_header_decode(fd->p + fd->pos, f);
	if (r < 0)
		return r;
	if (fd->len - fd->pos - WIRE_HDR_LEN < f->len)
		return -ECONNRESET;
	f->payload = fd->p + fd->pos + WIRE_HDR_LEN;
	fd->pos += WIRE_HDR_LEN + f->len;
	return 1;
}

/* What the receiver says must be whole, valid frames of a receiver. */
static int write_frames(void *opaque, const void *data, size_t len)
{
	struct feed *fd = opaque;
	const uint8_t *p = data;
	struct wire_frame f;
	struct wire_msg m;

	while (len) {
		if (len < WIRE_HDR_LEN || wire_header_decode(p, &f) < 0 ||
		    len - WIRE_HDR_LEN < f.len)
			__builtin_trap();
		f.payload = p + WIRE_HDR_LEN;
		if (wire_frame_decode(&f, &m) < 0 || !wire_msg_role_ok(f.type, WIRE_ROLE_RECEIVER))
			__builtin_trap();
		p += WIRE_HDR_LEN + f.len;
		len -= WIRE_HDR_LEN + f.len;
		fd->written++;
	}
	return 0;
}

static int nbd_connect(void *opaque, unsigned k, const struct nbd_client_config *cfg,
		       struct nbd_client **ret)
{
	struct feed *fd = opaque;

	if (k >= 2)
		__builtin_trap();
	return memdisk_connect(fd->md[k], cfg, ret);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static bool once;
	struct disk_dev devs[2] = {
		{ .device = "disk0", .node = "node0", .size = DISK0_SIZE },
		{ .device = "disk1", .node = "node1", .size = DISK1_SIZE },
	};
	struct feed fd = { .p = data, .len = size };
	struct disk_recv_io io = {
		.opaque = &fd,
		.read_frame = read_frame,
		.write = write_frames,
		.nbd_connect = nbd_connect,
	};
	struct disk_recv *dr = NULL;
	json_t *report;
	uint8_t block[4096];
	int r;

	if (!once) {
		once = true;
		signal(SIGPIPE, SIG_IGN);
		tsb_log_set_level(getenv("TSB_FUZZ_TRACE") ? TSB_LOG_DEBUG : TSB_LOG_ERROR);
	}
	fd.md[0] = memdisk_new("disk0", DISK0_SIZE, DISK0_SIZE);
	fd.md[1] = memdisk_new("disk1", DISK1_SIZE, DISK1_SIZE);
	if (!fd.md[0] || !fd.md[1])
		goto out;
	r = disk_recv_run_io(devs, 2, NULL, &io, &dr);
	if (!dr)
		goto out;
	/* SUMMARY always goes first. */
	if (!fd.written)
		__builtin_trap();
	/* Page-cache restore reads back what was written (or finds it changed). */
	if (size >= 32 && disk_recv_has(dr, data + size - 32))
		(void)disk_recv_get(dr, data + size - 32, block);
	report = json_object();
	(void)disk_recv_finish(dr, NULL, r == 0, report, NULL, 0);
	json_decref(report);
out:
	memdisk_free(fd.md[0]);
	memdisk_free(fd.md[1]);
	return 0;
}
