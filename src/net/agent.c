/*
 * net: the mobility agent. One epoll loop owns an AF_PACKET socket on the
 * site segment, a UDP socket for VXLAN and binding messages, and a unix
 * control socket. Frames move in batches (recvmmsg/sendmmsg); the
 * binding table is a small array scanned linearly (MOB_BINDINGS_MAX).
 * See docs/network.md.
 */
#include "net/net.h"
#include "common/log.h"
#include "common/reader.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define MOB_BINDINGS_MAX 256
#define CONNS_MAX 16
#define BATCH 64
#define SLOT (VNET_HLEN + 65536)	/* vnet header + (GSO) frame, or datagram */
#define SEGS 128		/* software-segmented frames in flight */
#define VNET_HLEN ((int)sizeof(struct virtio_net_hdr))
#define BU_TRIES_MAX 10
#define RTO_MAX_MS 2000
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull

enum tag { TAG_PKT = 1, TAG_UDP, TAG_LISTEN, TAG_SIG, TAG_CONN = 100 };

enum bstate {
	B_FREE,
	B_HOME_IDLE,	/* home agent: VM at home; last seq remembered */
	B_HOME_AWAY,	/* home agent: VM away, forwarding to current */
	B_VISIT,	/* VM runs here; its home is elsewhere */
	B_EXPECT,	/* VM about to arrive: register on its first frame */
};

static const char *const state_names[] = {
	"free", "home", "away", "visiting", "expected",
};

struct binding {
	enum bstate state;
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

struct conn {
	int fd;
	size_t len;
	char buf[MOB_CTL_LINE_MAX + 1];
};

struct batch {
	struct mmsghdr msg[BATCH];
	struct iovec iov[BATCH][2];
	struct sockaddr_storage name[BATCH];
	uint8_t hdr[BATCH][MOB_VXLAN_HLEN];
	unsigned n;
};

struct counters {
	uint64_t seg_rx, seg_tx, tun_rx, tun_tx, arp_replies, na_replies;
	uint64_t direct, drop_bad, drop_gso, drop_unknown_peer, drop_vni;
	uint64_t gso_frames;
	uint64_t drop_unbound, drop_tx;
	uint64_t bu_tx, bu_rx, ba_tx, ba_rx, bu_forged, bu_stale, bu_refused;
};

struct agent {
	const struct mob_agent_config *cfg;
	int ep, pfd, ufd, lfd, sfd;
	int ifindex;
	uint8_t ifmac[6];
	int family;
	struct binding b[MOB_BINDINGS_MAX];
	struct conn conns[CONNS_MAX];
	uint8_t rbuf[BATCH][SLOT];
	struct mmsghdr rmsg[BATCH];
	struct iovec riov[BATCH];
	struct sockaddr_storage rname[BATCH];
	struct batch seg_out, tun_out;
	uint8_t gen[BATCH][128];	/* generated frames (ARP, NA) */
	unsigned n_gen;
	uint8_t seg[SEGS][MOB_FRAME_MAX];	/* segments of GSO frames */
	unsigned n_seg;
	struct counters c;
	bool stop;
};

static const uint8_t zero_vnet[VNET_HLEN];
static const uint8_t bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

/* Log the first few of a kind, then every 1000th (untrusted senders). */
static bool ratelimit(uint64_t count)
{
	return count <= 10 || count % 1000 == 0;
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf,
			    size_t len)
{
	char host[INET6_ADDRSTRLEN], serv[8];

	if (getnameinfo((const struct sockaddr *)ss, sizeof(*ss), host,
			sizeof(host), serv, sizeof(serv),
			NI_NUMERICHOST | NI_NUMERICSERV))
		snprintf(buf, len, "?");
	else
		snprintf(buf, len, "%s:%s", host, serv);
	return buf;
}

/* ---- binding table ---- */

static struct binding *find_vm(struct agent *a, const char *vm)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state != B_FREE && !strcmp(a->b[i].vm, vm))
			return &a->b[i];
	return NULL;
}

static struct binding *find_mac(struct agent *a, const uint8_t mac[6],
				enum bstate st)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state == st && !memcmp(a->b[i].mac, mac, 6))
			return &a->b[i];
	return NULL;
}

static struct binding *find_away_addr(struct agent *a, int family,
				      const void *addr)
{
	unsigned i, j;

	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		struct binding *b = &a->b[i];

		if (b->state != B_HOME_AWAY)
			continue;
		for (j = 0; j < b->n_addrs; j++) {
			if (b->addrs[j].family != family)
				continue;
			if (family == AF_INET &&
			    !memcmp(&b->addrs[j].v4, addr, 4))
				return b;
			if (family == AF_INET6 &&
			    !memcmp(&b->addrs[j].v6, addr, 16))
				return b;
		}
	}
	return NULL;
}

static struct binding *alloc_binding(struct agent *a, const char *vm)
{
	struct binding *b = find_vm(a, vm);
	unsigned i;

	if (b)
		return b;
	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		if (a->b[i].state == B_FREE) {
			b = &a->b[i];
			memset(b, 0, sizeof(*b));
			snprintf(b->vm, sizeof(b->vm), "%s", vm);
			b->waiter = -1;
			b->peer = -1;
			return b;
		}
	}
	return NULL;
}

static int peer_by_name(struct agent *a, const char *name)
{
	unsigned i;

	for (i = 0; i < a->cfg->n_peers; i++)
		if (!strcmp(a->cfg->peers[i].name, name))
			return (int)i;
	return -1;
}

static bool same_ip(const struct sockaddr_storage *x,
		    const struct sockaddr_storage *y)
{
	const struct sockaddr_in *a4 = (const void *)x, *b4 = (const void *)y;
	const struct sockaddr_in6 *a6 = (const void *)x, *b6 = (const void *)y;

	if (x->ss_family == AF_INET && y->ss_family == AF_INET)
		return a4->sin_addr.s_addr == b4->sin_addr.s_addr;
	if (x->ss_family == AF_INET6 && y->ss_family == AF_INET6)
		return !memcmp(&a6->sin6_addr, &b6->sin6_addr, 16);
	/* v4-mapped source on a dual-stack socket */
	if (x->ss_family == AF_INET6 && y->ss_family == AF_INET &&
	    IN6_IS_ADDR_V4MAPPED(&a6->sin6_addr))
		return !memcmp(a6->sin6_addr.s6_addr + 12, &b4->sin_addr, 4);
	if (y->ss_family == AF_INET6 && x->ss_family == AF_INET)
		return same_ip(y, x);
	return false;
}

static int peer_by_addr(struct agent *a, const struct sockaddr_storage *ss)
{
	unsigned i;

	for (i = 0; i < a->cfg->n_peers; i++)
		if (same_ip(ss, &a->cfg->peers[i].addr))
			return (int)i;
	return -1;
}

/* ---- output batches ---- */

static void flush(struct agent *a, struct batch *q, int fd, uint64_t *sent)
{
	unsigned done = 0;

	while (done < q->n) {
		int n = sendmmsg(fd, q->msg + done, q->n - done, MSG_DONTWAIT);

		if (n <= 0) {
			if (n < 0 && errno == EINTR)
				continue;
			/* EAGAIN or a dead route: drop the rest of the batch */
			a->c.drop_tx += q->n - done;
			break;
		}
		done += (unsigned)n;
		*sent += (uint64_t)n;
	}
	q->n = 0;
}

/* Sends what is queued. Buffers of gen[] and seg[] stay allocated until
 * reset_pools(): a frame being built when a queue fills must survive. */
static void flush_all(struct agent *a)
{
	if (a->seg_out.n)
		flush(a, &a->seg_out, a->pfd, &a->c.seg_tx);
	if (a->tun_out.n)
		flush(a, &a->tun_out, a->ufd, &a->c.tun_tx);
}

/* After flush_all() with nothing half-built: the pools are free again. */
static void reset_pools(struct agent *a)
{
	a->n_gen = 0;
	a->n_seg = 0;
}

/* Queues a frame for the segment; it must stay valid until flush_all(). */
static void to_segment(struct agent *a, const uint8_t *frame, size_t len)
{
	struct batch *q = &a->seg_out;
	unsigned i;

	if (q->n == BATCH)
		flush_all(a);
	i = q->n++;
	q->iov[i][0].iov_base = (void *)zero_vnet;
	q->iov[i][0].iov_len = VNET_HLEN;
	q->iov[i][1].iov_base = (void *)frame;
	q->iov[i][1].iov_len = len;
	memset(&q->msg[i], 0, sizeof(q->msg[i]));
	q->msg[i].msg_hdr.msg_iov = q->iov[i];
	q->msg[i].msg_hdr.msg_iovlen = 2;
}

/* Queues a frame for the tunnel to peer p; same lifetime rule. */
static void to_tunnel(struct agent *a, int p, const uint8_t *frame, size_t len)
{
	struct batch *q = &a->tun_out;
	const struct mob_peer *peer = &a->cfg->peers[p];
	unsigned i;

	if (q->n == BATCH)
		flush_all(a);
	i = q->n++;
	mob_vxlan_put(q->hdr[i], a->cfg->vni);
	q->iov[i][0].iov_base = q->hdr[i];
	q->iov[i][0].iov_len = MOB_VXLAN_HLEN;
	q->iov[i][1].iov_base = (void *)frame;
	q->iov[i][1].iov_len = len;
	memcpy(&q->name[i], &peer->addr, peer->addrlen);
	memset(&q->msg[i], 0, sizeof(q->msg[i]));
	q->msg[i].msg_hdr.msg_name = &q->name[i];
	q->msg[i].msg_hdr.msg_namelen = peer->addrlen;
	q->msg[i].msg_hdr.msg_iov = q->iov[i];
	q->msg[i].msg_hdr.msg_iovlen = 2;
}

/* A buffer for a generated frame; must be queued before the next call. */
static uint8_t *gen_slot(struct agent *a)
{
	if (a->n_gen == BATCH) {
		flush_all(a);
		a->n_gen = 0;
	}
	return a->gen[a->n_gen++];
}

/* A buffer for one segment; same rule. */
static uint8_t *seg_slot(struct agent *a)
{
	if (a->n_seg == SEGS) {
		flush_all(a);
		a->n_seg = 0;
	}
	return a->seg[a->n_seg++];
}

/* Gratuitous ARP and unsolicited NA for b on the segment, sent with the
 * VM's MAC as source so the bridge learns the VM behind this agent. */
static void announce(struct agent *a, struct binding *b)
{
	static const struct in6_addr all_nodes = {
		{ { 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 } } };
	static const uint8_t all_nodes_mac[6] = { 0x33, 0x33, 0, 0, 0, 1 };
	unsigned i;
	int n;

	for (i = 0; i < b->n_addrs; i++) {
		uint8_t *f = gen_slot(a);

		if (b->addrs[i].family == AF_INET) {
			n = mob_build_arp(f, 128, 1, bcast_mac, b->mac, b->mac,
					  b->addrs[i].v4, bcast_mac,
					  b->addrs[i].v4);
		} else {
			n = mob_build_na(f, 128, all_nodes_mac, b->mac,
					 &b->addrs[i].v6, &all_nodes,
					 &b->addrs[i].v6, false);
		}
		if (n > 0)
			to_segment(a, f, (size_t)n);
	}
	flush_all(a);
	reset_pools(a);
}

/* ---- frames from the site segment ---- */

static void start_registration(struct agent *a, struct binding *b,
			       bool resync_ok);

/* An expected VM sent its first frame here (QEMU announces the guest right
 * after the switchover): it is visiting now; register with its home. */
static void arrived(struct agent *a, struct binding *b)
{
	b->state = B_VISIT;
	log_notice("vm '%s' seen on %s: registering with home '%s' (seq %u)",
		   b->vm, a->cfg->dev, b->home, b->seq);
	start_registration(a, b, b->resync_ok);
}

/* The away VM sent a frame on the home segment: it is back. Consume a
 * sequence number so that refreshes from the old site are stale. */
static void back_home(struct agent *a, struct binding *b)
{
	log_notice("vm '%s' is back home from site '%s': binding removed",
		   b->vm, b->current);
	b->seq++;
	b->state = B_HOME_IDLE;
	b->peer = -1;
	b->return_expected = false;
	b->current[0] = '\0';
}

static bool direct_match(struct agent *a, struct in_addr dst,
			 const uint8_t **ret_mac)
{
	unsigned i;

	for (i = 0; i < a->cfg->n_direct; i++) {
		const struct mob_direct *d = &a->cfg->direct[i];

		if ((ntohl(dst.s_addr) & d->mask) == ntohl(d->net.s_addr)) {
			*ret_mac = d->mac;
			return true;
		}
	}
	return false;
}

static void segment_frame(struct agent *a, uint8_t *frame, size_t len)
{
	struct mob_frame_info f;
	struct binding *b;
	const uint8_t *nh;

	if (mob_frame_parse(frame, len, &f)) {
		a->c.drop_bad++;
		return;
	}
	/* From a VM visiting here: reverse-tunnel home, or deliver locally. */
	b = find_mac(a, f.src, B_VISIT);
	if (!b && (b = find_mac(a, f.src, B_EXPECT)))
		arrived(a, b);
	if (!b && (b = find_mac(a, f.src, B_HOME_AWAY)) && b->return_expected) {
		back_home(a, b);
		return;
	}
	if (b && b->state != B_VISIT)
		b = NULL;
	if (b) {
		if (f.kind == MOB_FK_IPV4 && !mob_mac_is_multicast(f.dst) &&
		    direct_match(a, f.ip4_dst, &nh)) {
			/* Our own MAC as source: the bridge must keep
			 * learning the VM behind its tap, not behind us. */
			memcpy(frame, nh, 6);
			memcpy(frame + 6, a->ifmac, 6);
			to_segment(a, frame, len);
			a->c.direct++;
			return;
		}
		b->frames_out++;
		to_tunnel(a, b->peer, frame, len);
		return;
	}
	/* To a VM that is away from home: forward to its current site. */
	if (!mob_mac_is_multicast(f.dst)) {
		b = find_mac(a, f.dst, B_HOME_AWAY);
		if (b) {
			b->frames_out++;
			to_tunnel(a, b->peer, frame, len);
		}
		return;
	}
	/* Neighbour resolution for an away VM: answer on its behalf. */
	if (f.kind == MOB_FK_ARP_REQUEST) {
		b = find_away_addr(a, AF_INET, &f.arp_tpa);
		if (b) {
			uint8_t *g = gen_slot(a);
			int n = mob_build_arp(g, 128, 2, f.src, b->mac, b->mac,
					      f.arp_tpa, f.arp_sha, f.arp_spa);
			if (n > 0) {
				to_segment(a, g, (size_t)n);
				a->c.arp_replies++;
			}
		}
	} else if (f.kind == MOB_FK_NS) {
		b = find_away_addr(a, AF_INET6, &f.ns_target);
		if (b) {
			static const struct in6_addr all_nodes = {
				{ { 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 } } };
			static const uint8_t all_mac[6] = { 0x33, 0x33, 0, 0, 0, 1 };
			bool dad = IN6_IS_ADDR_UNSPECIFIED(&f.ip6_src);
			uint8_t *g = gen_slot(a);
			int n = mob_build_na(g, 128, dad ? all_mac : f.src,
					     b->mac, &f.ns_target,
					     dad ? &all_nodes : &f.ip6_src,
					     &f.ns_target, !dad);
			if (n > 0) {
				to_segment(a, g, (size_t)n);
				a->c.na_replies++;
			}
		}
	}
}

/* A TCP super-frame (offloaded segmentation): cut it into MTU-sized
 * segments with full checksums and handle each. */
static void gso_frame(struct agent *a, const struct virtio_net_hdr *vh,
		      const uint8_t *frame, size_t len)
{
	struct mob_gso g;
	unsigned i;
	int nseg, n;

	nseg = vh->gso_type == VIRTIO_NET_HDR_GSO_NONE ? -EMSGSIZE :
		mob_gso_prepare(frame, len, vh->gso_size, &g);
	if (nseg < 0) {
		a->c.drop_gso++;
		if (nseg == -EMSGSIZE && ratelimit(a->c.drop_gso))
			log_warn("dropping a %zu-byte frame on %s with segment size %u: segments under %d bytes or more than %d per frame are refused",
				 len, a->cfg->dev, vh->gso_size, MOB_GSO_MSS_MIN,
				 MOB_GSO_SEGS_MAX);
		else if (ratelimit(a->c.drop_gso))
			log_warn("dropping an oversized frame on %s that cannot be segmented (%s): disable segmentation offloads towards it (see docs/network.md)",
				 a->cfg->dev, strerror(-nseg));
		return;
	}
	a->c.gso_frames++;
	for (i = 0; i < (unsigned)nseg; i++) {
		uint8_t *seg = seg_slot(a);

		n = mob_gso_segment(frame, &g, i, seg, MOB_FRAME_MAX);
		if (n < 0) {
			a->c.drop_bad++;
			return;
		}
		segment_frame(a, seg, (size_t)n);
	}
}

static void on_packet(struct agent *a)
{
	unsigned i;
	int n;

	for (;;) {
		for (i = 0; i < BATCH; i++) {
			a->riov[i].iov_base = a->rbuf[i];
			a->riov[i].iov_len = SLOT;
			memset(&a->rmsg[i].msg_hdr, 0, sizeof(a->rmsg[i].msg_hdr));
			a->rmsg[i].msg_hdr.msg_iov = &a->riov[i];
			a->rmsg[i].msg_hdr.msg_iovlen = 1;
		}
		n = recvmmsg(a->pfd, a->rmsg, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		for (i = 0; i < (unsigned)n; i++) {
			uint8_t *p = a->rbuf[i];
			size_t len = a->rmsg[i].msg_len;
			struct virtio_net_hdr vh;

			a->c.seg_rx++;
			if ((a->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) ||
			    len < (size_t)VNET_HLEN + MOB_ETH_HLEN) {
				a->c.drop_bad++;
				continue;
			}
			memcpy(&vh, p, sizeof(vh));
			if (len - VNET_HLEN > MOB_FRAME_MAX) {
				gso_frame(a, &vh, p + VNET_HLEN, len - VNET_HLEN);
				continue;
			}
			if ((vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
			    mob_csum_complete(p + VNET_HLEN, len - VNET_HLEN,
					      vh.csum_start, vh.csum_offset)) {
				a->c.drop_bad++;
				continue;
			}
			segment_frame(a, p + VNET_HLEN, len - VNET_HLEN);
		}
		flush_all(a);
		reset_pools(a);
		if (n < BATCH)
			break;
	}
}

/* ---- binding messages ---- */

static void send_bmsg(struct agent *a, const struct mob_bmsg *m, int peer,
		      const struct sockaddr_storage *to, socklen_t tolen)
{
	uint8_t buf[MOB_BMSG_MAX];
	int n = mob_bmsg_encode(m, a->cfg->key, buf, sizeof(buf));

	if (n < 0) {
		log_error_errno(n, "cannot encode a binding message for vm '%s'",
				m->vm);
		return;
	}
	if (peer >= 0) {
		to = &a->cfg->peers[peer].addr;
		tolen = a->cfg->peers[peer].addrlen;
	}
	if (sendto(a->ufd, buf, (size_t)n, MSG_DONTWAIT,
		   (const struct sockaddr *)to, tolen) < 0)
		log_debug("binding message to peer lost: %s",
			  strerror(errno));
}

static void send_bu(struct agent *a, struct binding *b)
{
	struct mob_bmsg m;

	memset(&m, 0, sizeof(m));
	m.type = MOB_BU;
	m.seq = b->seq;
	m.lifetime = b->lifetime;
	m.nonce = b->nonce;
	snprintf(m.sender, sizeof(m.sender), "%s", a->cfg->site);
	snprintf(m.vm, sizeof(m.vm), "%s", b->vm);
	snprintf(m.home, sizeof(m.home), "%s", b->home);
	snprintf(m.current, sizeof(m.current), "%s", a->cfg->site);
	memcpy(m.mac, b->mac, 6);
	m.n_addrs = b->n_addrs;
	memcpy(m.addrs, b->addrs, sizeof(m.addrs));
	send_bmsg(a, &m, b->peer, NULL, 0);
	a->c.bu_tx++;
	b->next_tx_ns = tsb_now_ns() + b->rto_ns;
}

static void start_registration(struct agent *a, struct binding *b,
			       bool resync_ok)
{
	uint64_t now = tsb_now_ns();

	if (RAND_bytes((unsigned char *)&b->nonce, sizeof(b->nonce)) != 1)
		b->nonce = now ^ ((uint64_t)getpid() << 32);
	b->acked = false;
	b->failed = false;
	b->resync_ok = resync_ok;
	b->tries = 1;
	b->rto_ns = (uint64_t)a->cfg->retrans_ms * NS_PER_MS;
	b->first_tx_ns = now;
	send_bu(a, b);
}

static void ctl_reply(struct agent *a, int ci, json_t *obj);

static void answer_waiter(struct agent *a, struct binding *b, bool ok,
			  const char *why)
{
	json_t *r;

	if (b->waiter < 0)
		return;
	r = json_pack("{s:b, s:s, s:s, s:I, s:I}", "ok", ok, "vm", b->vm,
		      ok ? "state" : "error", why, "seq", (json_int_t)b->seq,
		      "ack_ms", (json_int_t)(b->ack_ns > b->first_tx_ns ?
			(b->ack_ns - b->first_tx_ns) / NS_PER_MS : 0));
	ctl_reply(a, b->waiter, r);
	b->waiter = -1;
}

static void send_ba(struct agent *a, const struct mob_bmsg *bu, uint8_t status,
		    uint32_t seq, const struct sockaddr_storage *to)
{
	struct mob_bmsg m;

	memset(&m, 0, sizeof(m));
	m.type = MOB_BA;
	m.status = status;
	m.seq = seq;
	m.lifetime = status == MOB_BA_ACCEPTED ? bu->lifetime : 0;
	m.nonce = bu->nonce;
	snprintf(m.sender, sizeof(m.sender), "%s", a->cfg->site);
	snprintf(m.vm, sizeof(m.vm), "%s", bu->vm);
	snprintf(m.home, sizeof(m.home), "%s", bu->home);
	snprintf(m.current, sizeof(m.current), "%s", bu->current);
	memcpy(m.mac, bu->mac, 6);
	send_bmsg(a, &m, -1, to, to->ss_family == AF_INET ?
		  sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
	a->c.ba_tx++;
}

/* Home agent: a binding update from the VM's current site. */
static void on_bu(struct agent *a, const struct mob_bmsg *m, int peer,
		  const struct sockaddr_storage *from)
{
	char who[80];
	struct binding *b;
	bool moved;

	addr_str(from, who, sizeof(who));
	if (strcmp(m->home, a->cfg->site)) {
		a->c.bu_refused++;
		log_warn("binding update for vm '%s' from %s names home '%s', not this site: refused",
			 m->vm, who, m->home);
		send_ba(a, m, MOB_BA_NOT_HOME_AGENT, 0, from);
		return;
	}
	if (strcmp(m->current, m->sender)) {
		a->c.bu_refused++;
		log_warn("site '%s' (%s) tried to register vm '%s' at another site '%s': refused",
			 m->sender, who, m->vm, m->current);
		return;
	}
	b = find_vm(a, m->vm);
	if (b && b->state == B_VISIT) {
		a->c.bu_refused++;
		log_warn("binding update for vm '%s' from %s, but it runs here: refused",
			 m->vm, who);
		send_ba(a, m, MOB_BA_REASON_UNSPEC, 0, from);
		return;
	}
	if (b && m->seq <= b->seq) {
		/* A retransmission of the BU we accepted last: ack again. */
		if (m->seq == b->seq && m->nonce == b->nonce &&
		    b->state == B_HOME_AWAY && !strcmp(b->current, m->sender)) {
			send_ba(a, m, MOB_BA_ACCEPTED, b->seq, from);
			return;
		}
		a->c.bu_stale++;
		if (ratelimit(a->c.bu_stale))
			log_warn("stale binding update for vm '%s' from site '%s' (%s): seq %u, last accepted %u: refused",
				 m->vm, m->sender, who, m->seq, b->seq);
		send_ba(a, m, MOB_BA_SEQ_OUT_OF_WINDOW, b->seq, from);
		return;
	}
	if (!b)
		b = alloc_binding(a, m->vm);
	if (!b) {
		a->c.bu_refused++;
		log_error("binding table full (%d): update for vm '%s' refused",
			  MOB_BINDINGS_MAX, m->vm);
		send_ba(a, m, MOB_BA_REASON_UNSPEC, 0, from);
		return;
	}
	b->seq = m->seq;
	b->nonce = m->nonce;
	if (m->lifetime == 0) {
		log_notice("vm '%s' deregistered by site '%s' (seq %u): delivering at home",
			   m->vm, m->sender, m->seq);
		b->state = B_HOME_IDLE;
		b->peer = -1;
		send_ba(a, m, MOB_BA_ACCEPTED, m->seq, from);
		return;
	}
	moved = b->state != B_HOME_AWAY || strcmp(b->current, m->sender) ||
		memcmp(b->mac, m->mac, 6);
	b->state = B_HOME_AWAY;
	b->manual = false;
	snprintf(b->home, sizeof(b->home), "%s", a->cfg->site);
	snprintf(b->current, sizeof(b->current), "%s", m->sender);
	memcpy(b->mac, m->mac, 6);
	b->n_addrs = m->n_addrs;
	memcpy(b->addrs, m->addrs, sizeof(b->addrs));
	b->peer = peer;
	b->lifetime = m->lifetime;
	b->expires_ns = tsb_now_ns() + (uint64_t)m->lifetime * NS_PER_S;
	send_ba(a, m, MOB_BA_ACCEPTED, m->seq, from);
	if (moved) {
		log_notice("vm '%s' is away at site '%s' (seq %u, lifetime %u s): proxying and tunnelling",
			   m->vm, m->sender, m->seq, m->lifetime);
		announce(a, b);
	}
}

/* Visited site: the home agent's acknowledgement. */
static void on_ba(struct agent *a, const struct mob_bmsg *m, int peer)
{
	struct binding *b = find_vm(a, m->vm);

	if (!b || b->state != B_VISIT || b->peer != peer ||
	    b->nonce != m->nonce || b->acked) {
		log_debug("unexpected binding ack for vm '%s': ignored",
			  m->vm);
		return;
	}
	if (m->status == MOB_BA_ACCEPTED) {
		uint32_t life = m->lifetime ? m->lifetime : b->lifetime;

		b->acked = true;
		b->ack_ns = tsb_now_ns();
		b->refresh_ns = b->ack_ns + (uint64_t)life * NS_PER_S / 2;
		log_notice("home site '%s' accepted vm '%s' here (seq %u, %llu ms)",
			   b->home, b->vm, b->seq,
			   (unsigned long long)((b->ack_ns - b->first_tx_ns) / NS_PER_MS));
		answer_waiter(a, b, true, "registered");
		return;
	}
	if (m->status == MOB_BA_SEQ_OUT_OF_WINDOW && b->resync_ok) {
		/* First registration after a move: adopt the home's counter
		 * (RFC 6275 11.7.3), once. */
		log_info("vm '%s': home has seq %u, resending with %u",
			 b->vm, m->seq, m->seq + 1);
		b->seq = m->seq + 1;
		start_registration(a, b, false);
		return;
	}
	if (m->status == MOB_BA_SEQ_OUT_OF_WINDOW) {
		/* A later registration from elsewhere won: the VM moved on. */
		log_notice("home site '%s' has a newer binding for vm '%s' (seq %u > %u): dropping it here",
			   b->home, b->vm, m->seq, b->seq);
		answer_waiter(a, b, false, "home has a newer binding");
		b->state = B_FREE;
		return;
	}
	b->failed = true;
	b->acked = true;
	log_error("home site '%s' refused vm '%s' (status %u)", b->home,
		  b->vm, m->status);
	answer_waiter(a, b, false, "home agent refused the binding");
}

static void on_bmsg(struct agent *a, const uint8_t *p, size_t len,
		    const struct sockaddr_storage *from)
{
	char who[80];
	struct mob_bmsg m;
	int peer, err;

	err = mob_bmsg_decode(p, len, a->cfg->key, &m);
	if (err == -EACCES) {
		a->c.bu_forged++;
		if (ratelimit(a->c.bu_forged))
			log_warn("forged binding message from %s (HMAC does not verify under the site key): refused",
				 addr_str(from, who, sizeof(who)));
		return;
	}
	if (err) {
		a->c.drop_bad++;
		if (ratelimit(a->c.drop_bad))
			log_warn("malformed binding message from %s: %s",
				 addr_str(from, who, sizeof(who)),
				 strerror(-err));
		return;
	}
	peer = peer_by_name(a, m.sender);
	if (peer < 0 || !same_ip(from, &a->cfg->peers[peer].addr)) {
		a->c.bu_refused++;
		if (ratelimit(a->c.bu_refused))
			log_warn("binding message claims site '%s' but comes from %s: refused",
				 m.sender, addr_str(from, who, sizeof(who)));
		return;
	}
	if (m.type == MOB_BU) {
		a->c.bu_rx++;
		on_bu(a, &m, peer, from);
	} else {
		a->c.ba_rx++;
		on_ba(a, &m, peer);
	}
}

/* ---- datagrams: VXLAN and binding messages ---- */

static void tunnel_frame(struct agent *a, int peer, const uint8_t *frame,
			 size_t len)
{
	struct mob_frame_info f;
	struct binding *b;
	unsigned i;

	if (mob_frame_parse(frame, len, &f)) {
		a->c.drop_bad++;
		return;
	}
	/* Reverse tunnel: the away VM's traffic arriving home. */
	b = find_mac(a, f.src, B_HOME_AWAY);
	if (b && b->peer == peer) {
		b->frames_in++;
		to_segment(a, frame, len);
		return;
	}
	/* Forward tunnel: traffic for a VM visiting here. */
	if (!mob_mac_is_multicast(f.dst)) {
		b = find_mac(a, f.dst, B_VISIT);
		if (b && b->peer == peer) {
			b->frames_in++;
			to_segment(a, frame, len);
			return;
		}
	} else {
		for (i = 0; i < MOB_BINDINGS_MAX; i++) {
			if (a->b[i].state == B_VISIT && a->b[i].peer == peer) {
				to_segment(a, frame, len);
				return;
			}
		}
	}
	a->c.drop_unbound++;
}

static void on_udp(struct agent *a)
{
	unsigned i;
	int n;

	for (;;) {
		for (i = 0; i < BATCH; i++) {
			a->riov[i].iov_base = a->rbuf[i];
			a->riov[i].iov_len = SLOT;
			memset(&a->rmsg[i].msg_hdr, 0, sizeof(a->rmsg[i].msg_hdr));
			a->rmsg[i].msg_hdr.msg_iov = &a->riov[i];
			a->rmsg[i].msg_hdr.msg_iovlen = 1;
			a->rmsg[i].msg_hdr.msg_name = &a->rname[i];
			a->rmsg[i].msg_hdr.msg_namelen = sizeof(a->rname[i]);
		}
		n = recvmmsg(a->ufd, a->rmsg, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		for (i = 0; i < (unsigned)n; i++) {
			const uint8_t *p = a->rbuf[i];
			size_t len = a->rmsg[i].msg_len, off;
			uint32_t vni;
			int peer;

			if (a->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC) {
				a->c.drop_bad++;
				continue;
			}
			if (mob_bmsg_is(p, len)) {
				on_bmsg(a, p, len, &a->rname[i]);
				continue;
			}
			a->c.tun_rx++;
			peer = peer_by_addr(a, &a->rname[i]);
			if (peer < 0) {
				a->c.drop_unknown_peer++;
				continue;
			}
			if (mob_vxlan_parse(p, len, &vni, &off)) {
				a->c.drop_bad++;
				continue;
			}
			if (vni != a->cfg->vni) {
				a->c.drop_vni++;
				continue;
			}
			tunnel_frame(a, peer, p + off, len - off);
		}
		flush_all(a);
		reset_pools(a);
		if (n < BATCH)
			break;
	}
}

/* ---- control socket ---- */

static void ctl_close(struct agent *a, int ci)
{
	unsigned i;

	if (a->conns[ci].fd < 0)
		return;
	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].waiter == ci)
			a->b[i].waiter = -1;
	close(a->conns[ci].fd);
	a->conns[ci].fd = -1;
}

/* Sends obj (taken) as one line; replies are small, the socket blocks
 * briefly at worst. */
static void ctl_reply(struct agent *a, int ci, json_t *obj)
{
	char *s;
	size_t n, off = 0;

	if (!obj)
		return;
	s = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (!s)
		return;
	n = strlen(s);
	s[n] = '\n';	/* json_dumps leaves room: replace NUL, send n+1 */
	while (off < n + 1) {
		ssize_t w = send(a->conns[ci].fd, s + off, n + 1 - off,
				 MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
	free(s);
}

static json_t *ctl_error(const char *fmt, ...)
	__attribute__((format(printf, 1, 2)));

static json_t *ctl_error(const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	return json_pack("{s:b, s:s}", "ok", 0, "error", msg);
}

static json_t *binding_json(struct agent *a, const struct binding *b)
{
	char mac[18], ip[INET6_ADDRSTRLEN];
	json_t *addrs = json_array();
	uint64_t now = tsb_now_ns();
	unsigned i;

	mob_format_mac(b->mac, mac);
	for (i = 0; i < b->n_addrs; i++) {
		inet_ntop(b->addrs[i].family, &b->addrs[i].v6, ip, sizeof(ip));
		json_array_append_new(addrs, json_string(ip));
	}
	return json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:I, s:I, s:b, s:b, s:I, s:I}",
		"vm", b->vm, "state", state_names[b->state], "mac", mac,
		"addrs", addrs, "home", b->home, "current", b->current,
		"seq", (json_int_t)b->seq,
		"expires_in", (json_int_t)(b->expires_ns > now ?
			(b->expires_ns - now) / NS_PER_S : 0),
		"registered", b->state == B_VISIT ? b->acked && !b->failed :
			b->state == B_HOME_AWAY,
		"manual", b->manual,
		"frames_out", (json_int_t)b->frames_out,
		"frames_in", (json_int_t)b->frames_in);
}

static json_t *status_json(struct agent *a)
{
	json_t *list = json_array(), *c;
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state != B_FREE)
			json_array_append_new(list, binding_json(a, &a->b[i]));
	c = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
		"seg_rx", (json_int_t)a->c.seg_rx,
		"seg_tx", (json_int_t)a->c.seg_tx,
		"tun_rx", (json_int_t)a->c.tun_rx,
		"tun_tx", (json_int_t)a->c.tun_tx,
		"arp_replies", (json_int_t)a->c.arp_replies,
		"na_replies", (json_int_t)a->c.na_replies,
		"direct", (json_int_t)a->c.direct,
		"drop_bad", (json_int_t)a->c.drop_bad,
		"drop_oversized", (json_int_t)a->c.drop_gso,
		"drop_unknown_peer", (json_int_t)a->c.drop_unknown_peer,
		"drop_unbound", (json_int_t)a->c.drop_unbound);
	json_object_set_new(c, "drop_vni", json_integer((json_int_t)a->c.drop_vni));
	json_object_set_new(c, "gso_frames", json_integer((json_int_t)a->c.gso_frames));
	json_object_set_new(c, "drop_tx", json_integer((json_int_t)a->c.drop_tx));
	json_object_set_new(c, "bu_tx", json_integer((json_int_t)a->c.bu_tx));
	json_object_set_new(c, "bu_rx", json_integer((json_int_t)a->c.bu_rx));
	json_object_set_new(c, "ba_tx", json_integer((json_int_t)a->c.ba_tx));
	json_object_set_new(c, "ba_rx", json_integer((json_int_t)a->c.ba_rx));
	json_object_set_new(c, "bu_forged", json_integer((json_int_t)a->c.bu_forged));
	json_object_set_new(c, "bu_stale", json_integer((json_int_t)a->c.bu_stale));
	json_object_set_new(c, "bu_refused", json_integer((json_int_t)a->c.bu_refused));
	return json_pack("{s:b, s:s, s:o, s:o}", "ok", 1, "site", a->cfg->site,
			 "bindings", list, "counters", c);
}

static void set_addrs(struct binding *b, const struct mob_ctl_req *q)
{
	memcpy(b->mac, q->mac, 6);
	b->n_addrs = q->n_addrs;
	memcpy(b->addrs, q->addrs, sizeof(b->addrs));
}

static json_t *ctl_arrive(struct agent *a, int ci, const struct mob_ctl_req *q,
			  bool *deferred)
{
	struct binding *b = find_vm(a, q->vm);
	int peer;

	if (!strcmp(q->home, a->cfg->site)) {
		/* Back home: deliver directly again. */
		if (b && b->state == B_HOME_AWAY && q->when_seen) {
			b->return_expected = true;
			return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", q->vm,
					 "state", "return-expected");
		}
		if (b && b->state == B_HOME_AWAY)
			back_home(a, b);
		if (!b)
			b = alloc_binding(a, q->vm);
		if (!b)
			return ctl_error("binding table full");
		b->state = B_HOME_IDLE;
		b->peer = -1;
		b->current[0] = '\0';
		snprintf(b->home, sizeof(b->home), "%s", a->cfg->site);
		set_addrs(b, q);
		return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", q->vm,
				 "state", "home");
	}
	peer = peer_by_name(a, q->home);
	if (peer < 0)
		return ctl_error("home site '%s' is not a configured peer",
				 q->home);
	if (b && b->state != B_VISIT && b->state != B_EXPECT) {
		/* This site was the VM's home before; now it is a visitor
		 * here (a config change): start afresh. */
		b->state = B_FREE;
		b = NULL;
	}
	if (!b)
		b = alloc_binding(a, q->vm);
	if (!b)
		return ctl_error("binding table full");
	b->state = B_VISIT;
	b->manual = false;
	snprintf(b->home, sizeof(b->home), "%s", q->home);
	snprintf(b->current, sizeof(b->current), "%s", a->cfg->site);
	set_addrs(b, q);
	b->peer = peer;
	b->lifetime = q->lifetime ? q->lifetime : a->cfg->lifetime;
	b->seq = q->seq ? q->seq : b->seq + 1;
	b->frames_in = b->frames_out = 0;
	if (b->waiter >= 0)
		answer_waiter(a, b, false, "superseded by a new arrival");
	if (q->when_seen) {
		b->state = B_EXPECT;
		b->resync_ok = !q->seq;
		log_notice("vm '%s' expected (home '%s'): registering on its first frame",
			   b->vm, b->home);
		return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", b->vm,
				 "state", "expected");
	}
	log_notice("vm '%s' arrived (home '%s'): registering with seq %u",
		   b->vm, b->home, b->seq);
	start_registration(a, b, !q->seq);
	if (q->wait_ms) {
		b->waiter = ci;
		b->wait_deadline_ns = tsb_now_ns() + q->wait_ms * NS_PER_MS;
		*deferred = true;
		return NULL;
	}
	return json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "vm", b->vm,
			 "state", "registering", "seq", (json_int_t)b->seq);
}

static json_t *ctl_bind(struct agent *a, const struct mob_ctl_req *q)
{
	struct binding *b;
	bool home = !strcmp(q->home, a->cfg->site);
	bool here = !strcmp(q->current, a->cfg->site);
	int peer;

	if (home == here)
		return ctl_error("this agent is site '%s': a binding names it as either home or current",
				 a->cfg->site);
	peer = peer_by_name(a, home ? q->current : q->home);
	if (peer < 0)
		return ctl_error("site '%s' is not a configured peer",
				 home ? q->current : q->home);
	b = alloc_binding(a, q->vm);
	if (!b)
		return ctl_error("binding table full");
	b->state = home ? B_HOME_AWAY : B_VISIT;
	b->manual = true;
	b->acked = true;
	b->failed = false;
	snprintf(b->home, sizeof(b->home), "%s", q->home);
	snprintf(b->current, sizeof(b->current), "%s", q->current);
	set_addrs(b, q);
	b->peer = peer;
	b->lifetime = q->lifetime;
	b->expires_ns = q->lifetime && home ?
		tsb_now_ns() + q->lifetime * NS_PER_S : 0;
	b->refresh_ns = 0;
	log_notice("vm '%s' bound by hand: home '%s', current '%s'",
		   b->vm, b->home, b->current);
	if (home)
		announce(a, b);
	return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", b->vm, "state",
			 state_names[b->state]);
}

static void ctl_line(struct agent *a, int ci, const char *line, size_t len)
{
	struct mob_ctl_req q;
	struct binding *b;
	bool deferred = false;
	json_t *r = NULL;
	char err[160];

	if (mob_ctl_parse(line, len, &q, err, sizeof(err))) {
		ctl_reply(a, ci, ctl_error("%s", err));
		return;
	}
	switch (q.op) {
	case MOB_CTL_ARRIVE:
		r = ctl_arrive(a, ci, &q, &deferred);
		break;
	case MOB_CTL_DEPART:
		b = find_vm(a, q.vm);
		if (b && (b->state == B_VISIT || b->state == B_EXPECT)) {
			log_notice("vm '%s' departed: visitor binding dropped",
				   b->vm);
			answer_waiter(a, b, false, "departed");
			b->state = B_FREE;
		}
		r = json_pack("{s:b, s:s}", "ok", 1, "vm", q.vm);
		break;
	case MOB_CTL_BIND:
		r = ctl_bind(a, &q);
		break;
	case MOB_CTL_UNBIND:
		b = find_vm(a, q.vm);
		if (!b) {
			r = ctl_error("no binding for vm '%s'", q.vm);
			break;
		}
		log_notice("vm '%s' unbound by hand", b->vm);
		answer_waiter(a, b, false, "unbound");
		b->state = b->state == B_VISIT || b->state == B_EXPECT ?
			B_FREE : B_HOME_IDLE;
		r = json_pack("{s:b, s:s}", "ok", 1, "vm", q.vm);
		break;
	case MOB_CTL_STATUS:
		r = status_json(a);
		break;
	}
	if (!deferred)
		ctl_reply(a, ci, r);
}

static void on_conn(struct agent *a, int ci)
{
	struct conn *c = &a->conns[ci];
	ssize_t n;
	char *nl;

	n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len,
		 MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		ctl_close(a, ci);
		return;
	}
	c->len += (size_t)n;
	while (c->fd >= 0 && (nl = memchr(c->buf, '\n', c->len))) {
		size_t ll = (size_t)(nl - c->buf);

		ctl_line(a, ci, c->buf, ll);
		if (c->fd < 0)
			return;
		memmove(c->buf, nl + 1, c->len - ll - 1);
		c->len -= ll + 1;
	}
	if (c->len == sizeof(c->buf) - 1) {
		ctl_reply(a, ci, ctl_error("request line longer than %d bytes",
					   MOB_CTL_LINE_MAX));
		ctl_close(a, ci);
	}
}

static void on_listen(struct agent *a)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int fd, i;

	fd = accept4(a->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	for (i = 0; i < CONNS_MAX; i++)
		if (a->conns[i].fd < 0)
			break;
	if (i == CONNS_MAX) {
		log_warn("too many control connections (%d): closing a new one",
			 CONNS_MAX);
		close(fd);
		return;
	}
	a->conns[i].fd = fd;
	a->conns[i].len = 0;
	ev.data.u64 = TAG_CONN + (unsigned)i;
	if (epoll_ctl(a->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		ctl_close(a, i);
}

/* ---- timers ---- */

static uint64_t timers(struct agent *a)
{
	uint64_t now = tsb_now_ns(), next = now + NS_PER_S;
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		struct binding *b = &a->b[i];

		if (b->state == B_HOME_AWAY && b->expires_ns) {
			if (now >= b->expires_ns) {
				log_notice("binding for vm '%s' at site '%s' expired: delivering at home",
					   b->vm, b->current);
				b->state = B_HOME_IDLE;
				b->peer = -1;
				continue;
			}
			if (b->expires_ns < next)
				next = b->expires_ns;
		}
		if (b->state != B_VISIT || b->manual)
			continue;
		if (b->waiter >= 0 && now >= b->wait_deadline_ns)
			answer_waiter(a, b, false, "no acknowledgement from the home agent in time");
		else if (b->waiter >= 0 && b->wait_deadline_ns < next)
			next = b->wait_deadline_ns;
		if (!b->acked && now >= b->next_tx_ns) {
			if (b->tries >= BU_TRIES_MAX) {
				log_error("home site '%s' did not acknowledge vm '%s' after %u tries; retrying at refresh time",
					  b->home, b->vm, b->tries);
				b->acked = true;
				b->failed = true;
				b->refresh_ns = now + (uint64_t)b->lifetime * NS_PER_S / 2;
				answer_waiter(a, b, false, "no acknowledgement from the home agent");
			} else {
				b->tries++;
				b->rto_ns *= 2;
				if (b->rto_ns > RTO_MAX_MS * NS_PER_MS)
					b->rto_ns = RTO_MAX_MS * NS_PER_MS;
				send_bu(a, b);
			}
		}
		if (b->acked && now >= b->refresh_ns) {
			b->seq++;
			start_registration(a, b, b->failed);
		}
		if (!b->acked && b->next_tx_ns < next)
			next = b->next_tx_ns;
		if (b->acked && b->refresh_ns < next)
			next = b->refresh_ns;
	}
	return next > now ? next - now : 0;
}

/* ---- setup ---- */

static int open_packet(struct agent *a)
{
	struct packet_mreq mr;
	struct sockaddr_ll sll;
	struct ifreq ifr;
	int one = 1, fd, bufsz = 4 << 20;

	a->ifindex = (int)if_nametoindex(a->cfg->dev);
	if (!a->ifindex)
		return log_error_errno(-errno, "no interface '%s'",
				       a->cfg->dev);
	fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    htons(ETH_P_ALL));
	if (fd < 0)
		return log_error_errno(-errno, "cannot open a packet socket (needs CAP_NET_RAW)");
	a->pfd = fd;
	if (setsockopt(fd, SOL_PACKET, PACKET_VNET_HDR, &one, sizeof(one)) < 0)
		return log_error_errno(-errno, "PACKET_VNET_HDR");
	if (setsockopt(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, &one,
		       sizeof(one)) < 0)
		return log_error_errno(-errno, "PACKET_IGNORE_OUTGOING (Linux >= 4.20)");
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_protocol = htons(ETH_P_ALL);
	sll.sll_ifindex = a->ifindex;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
		return log_error_errno(-errno, "cannot bind to '%s'",
				       a->cfg->dev);
	memset(&mr, 0, sizeof(mr));
	mr.mr_ifindex = a->ifindex;
	mr.mr_type = PACKET_MR_PROMISC;
	if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr,
		       sizeof(mr)) < 0)
		return log_error_errno(-errno, "promiscuous mode on '%s'",
				       a->cfg->dev);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", a->cfg->dev);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0)
		memcpy(a->ifmac, ifr.ifr_hwaddr.sa_data, 6);
	return 0;
}

static int open_udp(struct agent *a)
{
	struct addrinfo hints, *ai = NULL;
	char host[256], port[16];
	int fd, err, off = 0, dont = IP_PMTUDISC_DONT, bufsz = 4 << 20;

	if (tsb_split_hostport(a->cfg->listen, host, sizeof(host), port,
			       sizeof(port)))
		return log_error_errno(-EINVAL, "--listen '%s' is not HOST:PORT",
				       a->cfg->listen);
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
	err = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (err)
		return log_error_errno(-EINVAL, "--listen '%s': %s",
				       a->cfg->listen, gai_strerror(err));
	fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err = -errno;
		freeaddrinfo(ai);
		return log_error_errno(err, "UDP socket");
	}
	a->ufd = fd;
	a->family = ai->ai_family;
	if (ai->ai_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
	else
		(void)setsockopt(fd, IPPROTO_IP, IP_MTU_DISCOVER, &dont,
				 sizeof(dont));
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsz, sizeof(bufsz));
	if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		err = -errno;
		freeaddrinfo(ai);
		return log_error_errno(err, "cannot bind UDP %s",
				       a->cfg->listen);
	}
	freeaddrinfo(ai);
	return 0;
}

static int open_control(struct agent *a)
{
	struct sockaddr_un sun;
	struct stat st;
	int fd;

	if (strlen(a->cfg->control) >= sizeof(sun.sun_path))
		return log_error_errno(-ENAMETOOLONG, "control path too long");
	if (lstat(a->cfg->control, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return log_error_errno(-EEXIST, "'%s' exists and is not a socket",
					       a->cfg->control);
		unlink(a->cfg->control);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return log_error_errno(-errno, "unix socket");
	a->lfd = fd;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, a->cfg->control, strlen(a->cfg->control));
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0)
		return log_error_errno(-errno, "cannot bind '%s'",
				       a->cfg->control);
	(void)chmod(a->cfg->control, 0600);
	if (listen(fd, 8) < 0)
		return log_error_errno(-errno, "listen on '%s'",
				       a->cfg->control);
	return 0;
}

static int watch(struct agent *a, int fd, uint64_t tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag };

	if (epoll_ctl(a->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	return 0;
}

int mob_agent_run(const struct mob_agent_config *cfg)
{
	struct epoll_event evs[16];
	struct agent *a;
	sigset_t mask;
	int err, i;

	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->cfg = cfg;
	a->ep = a->pfd = a->ufd = a->lfd = a->sfd = -1;
	for (i = 0; i < CONNS_MAX; i++)
		a->conns[i].fd = -1;
	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		a->b[i].waiter = -1;

	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	a->sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	a->ep = epoll_create1(EPOLL_CLOEXEC);
	if (a->sfd < 0 || a->ep < 0) {
		err = log_error_errno(-errno, "epoll/signalfd");
		goto out;
	}
	if ((err = open_packet(a)) || (err = open_udp(a)) ||
	    (err = open_control(a)))
		goto out;
	if ((err = watch(a, a->pfd, TAG_PKT)) ||
	    (err = watch(a, a->ufd, TAG_UDP)) ||
	    (err = watch(a, a->lfd, TAG_LISTEN)) ||
	    (err = watch(a, a->sfd, TAG_SIG))) {
		log_error_errno(err, "epoll_ctl");
		goto out;
	}
	log_notice("site '%s' on %s, tunnel %s vni %u, %u peers, control %s",
		   cfg->site, cfg->dev, cfg->listen, cfg->vni, cfg->n_peers,
		   cfg->control);
	while (!a->stop) {
		uint64_t wait_ns = timers(a);
		int n = epoll_wait(a->ep, evs, 16,
				   (int)((wait_ns + NS_PER_MS - 1) / NS_PER_MS));

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = log_error_errno(-errno, "epoll_wait");
			goto out;
		}
		for (i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;

			if (tag == TAG_PKT)
				on_packet(a);
			else if (tag == TAG_UDP)
				on_udp(a);
			else if (tag == TAG_LISTEN)
				on_listen(a);
			else if (tag == TAG_SIG)
				a->stop = true;
			else if (tag >= TAG_CONN && tag < TAG_CONN + CONNS_MAX)
				on_conn(a, (int)(tag - TAG_CONN));
		}
	}
	log_notice("stopping: %llu frames tunnelled out, %llu in, %llu forged and %llu stale updates refused",
		   (unsigned long long)a->c.tun_tx,
		   (unsigned long long)a->c.tun_rx,
		   (unsigned long long)a->c.bu_forged,
		   (unsigned long long)a->c.bu_stale);
	err = 0;
out:
	for (i = 0; i < CONNS_MAX; i++)
		ctl_close(a, i);
	if (a->lfd >= 0) {
		close(a->lfd);
		unlink(cfg->control);
	}
	if (a->pfd >= 0)
		close(a->pfd);
	if (a->ufd >= 0)
		close(a->ufd);
	if (a->sfd >= 0)
		close(a->sfd);
	if (a->ep >= 0)
		close(a->ep);
	OPENSSL_cleanse(a, sizeof(*a));
	free(a);
	return err;
}
