/* Shared by the proxy's files (send.c, recv.c, commit.c); not by other components. */
#ifndef TSB_PROXY_INTERNAL_H
#define TSB_PROXY_INTERNAL_H

#include "proxy/proxy.h"
#include "wire/tls.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct qmp;

/* fd name under which our end of the migration socket is handed to QEMU. */
#define PROXY_FDNAME "tsubame-mig"
/* Pages per PAGES batch: big enough for zstd to find context. */
#define PROXY_BATCH_PAGES 256
/*
 * In postcopy: a batch goes onto the link whole, ahead of the next fault
 * (8 pages are 2.6 ms at 100 Mbit/s; 16 cost S5's median fault ~3 ms).
 */
#define PROXY_BATCH_PAGES_PC 8
/* A STREAM run is sent once it holds this much. */
#define PROXY_RUN_MAX (1u << 20)
/* The receiver acknowledges stream bytes written to its QEMU this often. */
#define PROXY_ACK_EVERY (512u << 10)
/* Credit window (stream bytes in flight between the two QEMUs). */
#define PROXY_WINDOW_MIN (4ull << 20)
#define PROXY_WINDOW_MAX (256ull << 20)
/* Frames a receiver keeps aside while it waits for HASHDATA (peer-controlled). */
#define PROXY_BACKLOG_MAX (PROXY_WINDOW_MAX + (16ull << 20))
/* Device RAM (video memory, ROMs) a stream may add to the guest's memory. */
#define PROXY_DEVICE_RAM_MAX (1ull << 30)
/* The window holds this much time of the measured end-to-end rate. */
#define PROXY_WINDOW_MS 150
/* The first window: stream bytes/s of a link assumed for the HELLO's round trip, and its cap. */
#define PROXY_START_RATE (80ull * 1000 * 1000)
#define PROXY_START_MAX (32ull << 20)
/*
 * QEMU's max-bandwidth unless --max-bandwidth: no limit of its own. Our
 * credit window already holds QEMU back to what the path takes, and
 * QEMU's default (128 MiB/s in 7.2) would cap a return trip or an
 * evacuation, whose stream mostly stays local (SAME), and a fast link.
 */
#define PROXY_QEMU_MAX_BANDWIDTH (8ull << 30)
/*
 * In postcopy every byte in flight delays the guest's page faults, which
 * wait behind it: the window is then the path's delay at the best rate
 * measured since the switch (the bandwidth-delay product: the push keeps
 * the link busy with no queue to speak of ahead of a requested page; 5 ms
 * more cost S5's median fault ~8 ms and gained no push rate), at least
 * PROXY_WINDOW_PC_MIN, PROXY_WINDOW_PC_START until that rate is known;
 * the receiver then acknowledges every PROXY_ACK_EVERY_PC, so that the
 * window moves in small steps.
 */
#define PROXY_WINDOW_PC_MIN (256ull << 10)
#define PROXY_WINDOW_PC_START (1ull << 20)	/* until the first rate in postcopy */
#define PROXY_ACK_EVERY_PC (32u << 10)
/* Default content cache per side (must be the same on both ends). */
#define PROXY_CACHE_DEFAULT (1ull << 30)
/* Read chunk from QEMU. */
#define PROXY_READ_CHUNK (256u << 10)

/* Writes all n bytes to a blocking fd; 0 or -errno. */
int proxy_write_all(int fd, const void *p, size_t n);

/*
 * Makes a socketpair, hands one end to QEMU with getfd under
 * PROXY_FDNAME and returns the other. errbuf gets QEMU's message.
 */
int proxy_qemu_socket(struct qmp *q, int *ret_fd, char *errbuf, size_t errlen);

/*
 * Sets up TLS from the options: a PSK from key_path or certificates.
 * msg receives the reason on failure.
 */
int proxy_tls_setup(const struct proxy_common_options *o, enum wire_tls_side side,
		    struct wire_tls **ret, char *msg, size_t msglen);

/* Installs SIGINT/SIGTERM handlers that set *flag (and ignore SIGPIPE). */


/*
 * Fuzzing only: feeds frames (wire header + payload each) to a receiver
 * with no peer, no store and /dev/null for QEMU (recv.c).
 */
int proxy_recv_fuzz(const uint8_t *data, size_t len);

/*
 * Fuzzing only: feeds frames (wire header + payload each) to the sender's
 * return thread, its handling of the receiver's messages, with no peer, no
 * QEMU (the return path goes to /dev/null) and no store (send.c). Aborts
 * when a handler breaks a promise (e.g. a NEED answered for content this
 * migration never handled). The sender has handled contents 0 to
 * PROXY_FUZZ_SEEN - 1 of proxy_fuzz_content(): it still holds 2 to 9 in
 * its cache, 0 and 1 were evicted and 10 was left to a store that is not
 * there, so a NEED for those fails. Content 11 is in its cache but not of
 * this migration (as what a store holds for other VMs): never served.
 * 0 when the sender took every message, -EBADMSG when it failed.
 */
#define PROXY_FUZZ_CONTENTS 12
#define PROXY_FUZZ_SEEN 11
int proxy_send_fuzz(const uint8_t *data, size_t len);

/* Content i of the fuzzing sender: 4096 bytes. */
static inline void proxy_fuzz_content(unsigned i, uint8_t page[4096])
{
	for (unsigned k = 0; k < 4096; k++)
		page[k] = (uint8_t)(i * 37 + k * 11 + (k >> 9));
}

/* Maps a wire/TLS error to an outcome. */
enum proxy_outcome proxy_outcome_of_errno(int err);

#endif
