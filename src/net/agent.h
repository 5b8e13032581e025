/*
 * net: the mobility agent's state machine, without sockets (agent.c). The
 * event loop (run.c) owns the sockets and feeds it frames, datagrams,
 * control lines and time; everything it sends goes out through struct
 * mob_io. The unit test and the fuzzer (tests/fuzz/fuzz-net-agent.c) drive
 * it the same way with their own io. Internal to src/net and its tests.
 */
#ifndef TSB_NET_AGENT_H
#define TSB_NET_AGENT_H

#include "net/net.h"

#include <linux/virtio_net.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define MOB_BINDINGS_MAX 256
#define MOB_CONNS_MAX 16
#define MOB_BATCH 64
#define MOB_VNET_HLEN ((int)sizeof(struct virtio_net_hdr))
/* a vnet header and a (GSO) frame, or a datagram */
#define MOB_SLOT (MOB_VNET_HLEN + 65536)
#define MOB_STATE_MAX (1u << 20)	/* largest state file */
#define MOB_LOCAL_MAX 8		/* host IPv4 addresses probed for */

/* What the agent sends, and its clock. */
struct mob_io {
	void *ctx;
	uint64_t (*now)(void *ctx);	/* CLOCK_MONOTONIC, ns */
	uint64_t (*wall)(void *ctx);	/* CLOCK_REALTIME, ns */
	/*
	 * Sends msgs[0..n): frames for the segment (two iovecs: a virtio-net
	 * header and the frame) or for the tunnel (a VXLAN header and the
	 * frame; msg_name is the peer). Returns how many went (the rest are
	 * dropped) or -errno.
	 */
	int (*send_segment)(void *ctx, struct mmsghdr *msgs, unsigned n);
	int (*send_tunnel)(void *ctx, struct mmsghdr *msgs, unsigned n);
	/* One binding message to a peer. */
	void (*send_bmsg)(void *ctx, const uint8_t *buf, size_t len,
			  const struct sockaddr_storage *to, socklen_t tolen);
	/* One reply line (newline included) for control connection ci. */
	void (*ctl_reply)(void *ctx, int ci, const char *line, size_t len);
	/*
	 * Replaces the state file with text (len bytes), durably (written,
	 * synced, renamed, directory synced) before it returns 0; -errno
	 * otherwise. NULL: the agent keeps no state across restarts.
	 */
	int (*save)(void *ctx, const char *text, size_t len);
};

enum mob_bstate {
	MOB_B_FREE,
	MOB_B_HOME_IDLE,	/* home agent: VM at home; last seq remembered */
	MOB_B_HOME_AWAY,	/* home agent: VM away, forwarding to current */
	MOB_B_VISIT,		/* VM runs here; its home is elsewhere */
	MOB_B_EXPECT,		/* VM about to arrive: register on its first frame */
};

struct mob_binding {
	enum mob_bstate state;
	char vm[MOB_ID_MAX + 1];
	char home[MOB_SITE_MAX + 1];
	char current[MOB_SITE_MAX + 1];
	uint8_t mac[6];
	unsigned n_addrs;
	struct mob_addr addrs[MOB_ADDRS_MAX];
	uint32_t seq;		/* home: last accepted; visit: last sent */
	uint32_t lifetime;	/* s */
	uint64_t expires_ns;	/* home: 0 = never (manual) */
	int peer;		/* tunnel endpoint (peers[] index) */
	bool manual;
	bool return_expected;	/* home: drop the binding on the VM's frame */
	/* visitor registration state */
	bool acked, resync_ok, failed;
	uint64_t nonce;		/* of the outstanding BU / last accepted */
	unsigned tries;
	uint64_t next_tx_ns, rto_ns, refresh_ns, first_tx_ns, ack_ns;
	int waiter;		/* control connection waiting for the BA */
	uint64_t wait_deadline_ns;
	uint64_t frames_out, frames_in;
};

struct mob_batch {
	struct mmsghdr msg[MOB_BATCH];
	struct iovec iov[MOB_BATCH][2];
	struct sockaddr_storage name[MOB_BATCH];
	uint8_t hdr[MOB_BATCH][MOB_VXLAN_HLEN];
	unsigned n;
};

struct mob_counters {
	uint64_t seg_rx, seg_tx, tun_rx, tun_tx, arp_replies, na_replies;
	uint64_t direct, drop_bad, drop_gso, drop_unknown_peer, drop_vni;
	uint64_t gso_frames;
	uint64_t drop_unbound, drop_tx;
	/* home: frames from an away VM to this agent's own MAC, handed to
	 * the host's own port on the segment; those dropped since that port
	 * is not known (yet); frames from one away VM to another, sent on */
	uint64_t to_host, drop_to_agent, hairpin;
	uint64_t bu_tx, bu_rx, ba_tx, ba_rx, bu_forged, bu_stale, bu_refused;
	uint64_t bmsg_bad, state_errors, log_suppressed;
};

/* Kinds of refusal, each logged at most MOB_LOG_BURST times a window. */
enum mob_rl {
	MOB_RL_BAD_DGRAM,	/* truncated or malformed datagram */
	MOB_RL_BAD_BMSG,	/* malformed binding message */
	MOB_RL_FORGED,
	MOB_RL_SPOOFED,		/* unknown site, or not from its address */
	MOB_RL_STALE,
	MOB_RL_REFUSED,		/* misdirected, conflicting, table full */
	MOB_RL_UNKNOWN_PEER,	/* VXLAN from an address that is no peer */
	MOB_RL_VNI,
	MOB_RL_GSO,
	MOB_RL_BAD_FRAME,
	MOB_RL_STATE,
	MOB_RL_TO_AGENT,	/* frame to our own MAC, host port unknown */
	MOB_RL_COUNT,
};
#define MOB_LOG_BURST 10
#define MOB_LOG_WINDOW_NS (60ull * 1000000000ull)

struct mob_ratelog {
	uint64_t start_ns;
	unsigned logged;
	uint64_t suppressed;
};

struct mob_agent {
	const struct mob_agent_config *cfg;
	struct mob_io io;
	uint8_t ifmac[6];
	/* MOB_BINDINGS_MAX bindings, allocated with the agent (kept out of
	 * the struct so that neither is one large allocation) */
	struct mob_binding *b;
	struct mob_batch seg_out, tun_out;
	uint8_t gen[MOB_BATCH][128];	/* generated frames (ARP, NA) */
	unsigned n_gen;
	/* GSO segments: each buffer (MOB_FRAME_MAX bytes) is allocated when
	 * first needed and kept until mob_agent_free() */
	uint8_t *seg[MOB_GSO_SEGS_MAX];
	unsigned n_seg;
	struct mob_counters c;
	struct mob_ratelog rl[MOB_RL_COUNT];
	/*
	 * The host's own IPv4 addresses, and the MAC of the host's port on
	 * the segment that answers for them (not ifmac): where frames that
	 * an away VM sends to ifmac (the host's kernel may answer ARP on the
	 * agent's interface too) are handed on. Learned from ARP probes
	 * (timers) and from the host's own ARP traffic on the segment.
	 */
	struct in_addr local4[MOB_LOCAL_MAX];
	unsigned n_local4;
	uint8_t host_mac[6];
	bool host_mac_known;
	uint64_t probe_ns, probe_ival_ns;
};

/*
 * A new agent for cfg (borrowed) with io (copied); ifmac is the MAC of its
 * interface on the segment. NULL when out of memory. Free with
 * mob_agent_free().
 */
struct mob_agent *mob_agent_new(const struct mob_agent_config *cfg,
				const struct mob_io *io,
				const uint8_t ifmac[6]);
void mob_agent_free(struct mob_agent *a);

/*
 * Loads the state file's text (len bytes): the home site's bindings and
 * sequence numbers as the last run left them. Bindings whose lifetime
 * ran out while the agent was down are kept as "home" with their sequence
 * number. 0, or -EBADMSG with a reason in err (the agent must not start:
 * it would forget what it accepted).
 */
int mob_agent_load(struct mob_agent *a, const char *text, size_t len,
		   char *err, size_t errlen);

/*
 * Input. Frames and datagrams point into buffers that must stay valid
 * (and writable, for frames) until mob_agent_flush(), which sends what
 * they caused. pkt is a virtio-net header and the frame after it.
 */
void mob_agent_packet(struct mob_agent *a, uint8_t *pkt, size_t len,
		      bool truncated);
void mob_agent_datagram(struct mob_agent *a, const uint8_t *p, size_t len,
			bool truncated, const struct sockaddr_storage *from);
void mob_agent_flush(struct mob_agent *a);

/* One control request line of connection ci (0..MOB_CONNS_MAX-1). */
void mob_agent_ctl_line(struct mob_agent *a, int ci, const char *line,
			size_t len);
/* Connection ci closed: nobody waits there any more. */
void mob_agent_ctl_closed(struct mob_agent *a, int ci);

/* Runs what is due (retransmissions, refreshes, expiries); returns the
 * nanoseconds until the next thing is due. */
uint64_t mob_agent_timers(struct mob_agent *a);

/*
 * The agent host's own IPv4 addresses (n at most MOB_LOCAL_MAX are kept):
 * the agent probes the segment for the host's port that answers for them
 * (see struct mob_agent). Without them, frames to the agent's own MAC
 * that arrive through the tunnel are dropped and counted.
 */
void mob_agent_set_local(struct mob_agent *a, const struct in_addr *addrs,
			 unsigned n);

/* Logs the counters once, at the end. */
void mob_agent_log_summary(struct mob_agent *a);

#endif
