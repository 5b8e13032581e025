/*
 * Fuzz target: the mobility agent's state machine (src/net/agent.c), not
 * only its decoders. The input is a program of operations on one agent of
 * site A with peers B and C (a key per pair): control requests, raw
 * datagrams, binding updates and acknowledgements signed with a chosen key
 * and sent from a chosen address, VXLAN frames, frames from the segment
 * (with virtio-net headers, also built TCP super-frames), time, restarts
 * from the saved state (up to RESTARTS_MAX per input), failing state
 * writes. After every operation the harness checks:
 *
 * - the binding table is consistent (states, peers, names, counts);
 * - an input that is not authentic for the site it names (raw bytes, a
 *   reflected message, the wrong pair's key, the wrong address) changes no
 *   binding;
 * - a home binding's sequence number never goes back, also across
 *   restarts, and a restart restores what was accepted;
 * - every frame sent fits MOB_FRAME_MAX, and one frame from the segment
 *   causes at most MOB_GSO_SEGS_MAX frames out.
 *
 * Seeds: tests/fuzz/corpus/net-agent (tests/fuzz/make-seeds-net.py writes
 * them; the operation format is there too).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/reader.h"
#include "net/agent.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

enum op {
	OP_CTL,		/* u8 ci, u16 len, bytes: one control line */
	OP_RAW,		/* u8 from, u16 len, bytes: a datagram */
	OP_BU,		/* u8 sender, u8 key, u8 from, u8 vm, u8 mac, u8 home,
			 * u8 current, u32 seq, u32 lifetime, u8 nonce, u8 naddrs */
	OP_BA,		/* u8 sender, u8 key, u8 from, u8 vm, u8 status,
			 * u32 seq, u32 lifetime, u8 echo_nonce */
	OP_VXLAN,	/* u8 from, u32 vni, u16 len, bytes: an inner frame */
	OP_PACKET,	/* u8 flags, u8 gso_type, u16 gso_size, u16 csum_start,
			 * u16 csum_offset, u16 len, bytes: from the segment */
	OP_SUPER,	/* u8 gso_type, u16 gso_size, u16 payload, u8 src, u8 dst,
			 * u8 v6: a TCP super-frame built here */
	OP_TIME,	/* u32 ms: the clock moves, timers run */
	OP_RESTART,	/* the agent stops and starts from its saved state */
	OP_SAVEFAIL,	/* u8: state writes fail from now (odd) or not */
	OP_REFLECT,	/* u8 from: the agent's last binding message, back */
	OP_WALL,	/* u32 s: the wall clock moves (while "down") */
	OP_COUNT,
};

#define RESTARTS_MAX 8	/* per input; see OP_RESTART below */

static const uint8_t keys[2][MOB_KEY_LEN] = {
	"key of the pair of sites A and B",
	"key of the pair of sites A and C",
};
static const char *const site_names[] = { "A", "B", "C", "D" };
static const char *const vm_names[] = { "vm0", "vm1", "vm2", "vm3" };
static const uint8_t ifmac[6] = { 0x52, 0x54, 0, 0x61, 0, 0xee };
static const uint8_t ba_status[4] = { 0, 135, 128, 131 };

struct h {
	struct mob_agent_config cfg;
	struct mob_io io;
	struct mob_agent *a;
	struct sockaddr_storage from[3];	/* B, C, an outsider */
	uint64_t now, wall;
	unsigned out_frames;
	uint8_t last_bmsg[MOB_BMSG_MAX];
	size_t last_bmsg_len;
	char *saved;
	size_t saved_len;
	bool save_fail;
	bool stale;	/* a write failed since the last one that worked */
	/* shadow of the home bindings' sequence numbers */
	bool known[MOB_BINDINGS_MAX];
	char known_vm[MOB_BINDINGS_MAX][MOB_ID_MAX + 1];
	uint32_t known_seq[MOB_BINDINGS_MAX];
};

static uint64_t h_now(void *ctx) { return ((struct h *)ctx)->now; }
static uint64_t h_wall(void *ctx) { return ((struct h *)ctx)->wall; }

static int h_send(void *ctx, struct mmsghdr *msgs, unsigned n)
{
	static uint8_t sink[MOB_FRAME_MAX];
	struct h *h = ctx;
	unsigned i;

	for (i = 0; i < n; i++) {
		if (msgs[i].msg_hdr.msg_iovlen != 2 ||
		    msgs[i].msg_hdr.msg_iov[1].iov_len > MOB_FRAME_MAX ||
		    msgs[i].msg_hdr.msg_iov[1].iov_len < MOB_ETH_HLEN)
			__builtin_trap();
		/* Read every byte: the buffers must still be alive. A copy
		 * does it at once (ASan checks the whole source range of a
		 * memcpy) where a loop checked each byte, for up to
		 * MOB_GSO_SEGS_MAX frames per super-frame. */
		memcpy(sink, msgs[i].msg_hdr.msg_iov[1].iov_base,
		       msgs[i].msg_hdr.msg_iov[1].iov_len);
		/* (as if sink were read: the copy must not be optimized out) */
		__asm__ volatile("" : : "r"(sink) : "memory");
	}
	h->out_frames += n;
	return (int)n;
}

static void h_send_bmsg(void *ctx, const uint8_t *buf, size_t len,
			const struct sockaddr_storage *to, socklen_t tolen)
{
	struct h *h = ctx;

	(void)to;
	if (len > MOB_BMSG_MAX || tolen > sizeof(*to))
		__builtin_trap();
	memcpy(h->last_bmsg, buf, len);
	h->last_bmsg_len = len;
}

static void h_ctl_reply(void *ctx, int ci, const char *line, size_t len)
{
	(void)ctx;
	if (ci < 0 || ci >= MOB_CONNS_MAX || !len || line[len - 1] != '\n')
		__builtin_trap();
}

static int h_save(void *ctx, const char *text, size_t len)
{
	struct h *h = ctx;
	char *copy;

	if (h->save_fail) {
		h->stale = true;
		return -ENOSPC;
	}
	copy = malloc(len ? len : 1);
	if (!copy)
		abort();
	memcpy(copy, text, len);
	free(h->saved);
	h->saved = copy;
	h->saved_len = len;
	h->stale = false;
	return 0;
}

static void set_addr(struct sockaddr_storage *ss, const char *ip, int port)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	inet_pton(AF_INET, ip, &sin->sin_addr);
}

static void setup(struct h *h)
{
	memset(h, 0, sizeof(*h));
	h->cfg.site = "A";
	h->cfg.dev = "ag";
	h->cfg.state_dir = "/fuzz";
	h->cfg.vni = 1;
	h->cfg.lifetime = 60;
	h->cfg.retrans_ms = 100;
	h->cfg.n_peers = 2;
	strcpy(h->cfg.peers[0].name, "B");
	set_addr(&h->cfg.peers[0].addr, "192.0.2.2", 4789);
	h->cfg.peers[0].addrlen = sizeof(struct sockaddr_in);
	memcpy(h->cfg.peers[0].key, keys[0], MOB_KEY_LEN);
	strcpy(h->cfg.peers[1].name, "C");
	set_addr(&h->cfg.peers[1].addr, "192.0.2.3", 4789);
	h->cfg.peers[1].addrlen = sizeof(struct sockaddr_in);
	memcpy(h->cfg.peers[1].key, keys[1], MOB_KEY_LEN);
	h->cfg.n_direct = 1;
	h->cfg.direct[0].net.s_addr = htonl(0x0a3d0200);	/* 10.61.2.0/24 */
	h->cfg.direct[0].mask = 0xffffff00u;
	memcpy(h->cfg.direct[0].mac, "\x52\x54\x00\x61\x00\xbb", 6);
	set_addr(&h->from[0], "192.0.2.2", 4789);
	set_addr(&h->from[1], "192.0.2.3", 4789);
	set_addr(&h->from[2], "198.51.100.9", 4789);
	h->now = 1000ull * 1000000000ull;
	h->wall = 1800000000ull * 1000000000ull;
	h->io = (struct mob_io){ .ctx = h, .now = h_now, .wall = h_wall,
		.send_segment = h_send, .send_tunnel = h_send,
		.send_bmsg = h_send_bmsg, .ctl_reply = h_ctl_reply,
		.save = h_save };
	h->a = mob_agent_new(&h->cfg, &h->io, ifmac);
	if (!h->a)
		abort();
	/* The host's own address: probing for its port, and frames handed to it (to_host). */
	{
		struct in_addr local;

		local.s_addr = htonl(0x0a3d0101);	/* 10.61.1.1 */
		mob_agent_set_local(h->a, &local, 1);
	}
}

static bool home_side(const struct mob_binding *b)
{
	return b->state == MOB_B_HOME_IDLE || b->state == MOB_B_HOME_AWAY;
}

/*
 * Entries after the last one in use are free, and a free entry has
 * nothing to check: one scan for that end, and the checks stop there.
 * The scan runs before and after most operations, so it goes without
 * coverage callbacks and ASan checks (it only reads the states of the
 * agent's own table, which lives as long as the agent): with them, three
 * scans of the 256 entries cost more than most operations.
 */
#if defined(__clang__)
__attribute__((no_sanitize("address", "coverage")))
#endif
static unsigned table_end(const struct h *h)
{
	unsigned i = MOB_BINDINGS_MAX;

	while (i && h->a->b[i - 1].state == MOB_B_FREE)
		i--;
	return i;
}

/* What of a binding an unauthenticated input must not change. */
struct snap {
	enum mob_bstate state;
	char vm[MOB_ID_MAX + 1], current[MOB_SITE_MAX + 1];
	uint32_t seq;
	uint64_t nonce, expires_ns;
	uint8_t mac[6];
	int peer;
	bool acked;
};

/* Fills s[0..n) and returns n: the entries after the last binding in use
 * are free (and left alone, for speed). */
static unsigned snapshot(struct h *h, struct snap *s)
{
	unsigned i, n = table_end(h);

	for (i = 0; i < n; i++) {
		const struct mob_binding *b = &h->a->b[i];

		memset(&s[i], 0, sizeof(s[i]));
		s[i].state = b->state;
		if (b->state == MOB_B_FREE)
			continue;
		memcpy(s[i].vm, b->vm, sizeof(s[i].vm));
		memcpy(s[i].current, b->current, sizeof(s[i].current));
		s[i].seq = b->seq;
		s[i].nonce = b->nonce;
		s[i].expires_ns = b->expires_ns;
		memcpy(s[i].mac, b->mac, 6);
		s[i].peer = b->peer;
		s[i].acked = b->acked;
	}
	return n;
}

static void check_table(struct h *h)
{
	unsigned i, j, n = table_end(h);

	for (i = 0; i < n; i++) {
		const struct mob_binding *b = &h->a->b[i];

		if (b->state > MOB_B_EXPECT)
			__builtin_trap();
		if (b->state == MOB_B_FREE)
			continue;
		if (!mob_name_ok(b->vm, MOB_ID_MAX) || b->n_addrs > MOB_ADDRS_MAX)
			__builtin_trap();
		for (j = 0; j < i; j++)
			if (h->a->b[j].state != MOB_B_FREE &&
			    !strcmp(h->a->b[j].vm, b->vm))
				__builtin_trap();	/* one binding per VM */
		if (b->state == MOB_B_HOME_AWAY || b->state == MOB_B_VISIT ||
		    b->state == MOB_B_EXPECT) {
			if (b->peer < 0 || (unsigned)b->peer >= h->cfg.n_peers)
				__builtin_trap();
		}
		if (b->state == MOB_B_HOME_AWAY) {
			if (strcmp(b->current, h->cfg.peers[b->peer].name))
				__builtin_trap();
			if (!b->manual && (mob_mac_is_multicast(b->mac) ||
					   !memcmp(b->mac, "\0\0\0\0\0\0", 6)))
				__builtin_trap();
			if (!b->manual && b->lifetime > 86400)
				__builtin_trap();
		}
		if (home_side(b) && strcmp(b->home, "A"))
			__builtin_trap();
		if ((b->state == MOB_B_VISIT || b->state == MOB_B_EXPECT) &&
		    !strcmp(b->home, "A"))
			__builtin_trap();
	}
	/* Home sequence numbers never go back (modulo 2^32). */
	memset(h->known + n, 0, (MOB_BINDINGS_MAX - n) * sizeof(h->known[0]));
	for (i = 0; i < n; i++) {
		const struct mob_binding *b = &h->a->b[i];

		if (!home_side(b)) {
			h->known[i] = false;
			continue;
		}
		if (h->known[i] && !strcmp(h->known_vm[i], b->vm) &&
		    (int32_t)(b->seq - h->known_seq[i]) < 0)
			__builtin_trap();
		h->known[i] = true;
		memcpy(h->known_vm[i], b->vm, sizeof(h->known_vm[i]));
		h->known_seq[i] = b->seq;
	}
}

static void unchanged(struct h *h, const struct snap *before, unsigned nb)
{
	static struct snap after[MOB_BINDINGS_MAX];
	static const struct snap none;
	unsigned i, na = snapshot(h, after);

	for (i = 0; i < nb || i < na; i++)
		if (memcmp(i < nb ? &before[i] : &none,
			   i < na ? &after[i] : &none, sizeof(none)))
			__builtin_trap();
}

/* Restart: the new agent must load what the old one saved, and have the
 * same home bindings (away ones may have expired meanwhile), unless the
 * last write failed and the file is older than the table. */
static void restart(struct h *h)
{
	static struct snap before[MOB_BINDINGS_MAX];
	char err[256];
	unsigned i, j, nb, n;

	nb = snapshot(h, before);
	mob_agent_free(h->a);
	h->a = mob_agent_new(&h->cfg, &h->io, ifmac);
	if (!h->a)
		abort();
	if (h->saved && mob_agent_load(h->a, h->saved, h->saved_len, err,
				       sizeof(err)))
		__builtin_trap();	/* its own state must load */
	mob_agent_flush(h->a);
	n = table_end(h);
	/* Every home binding the file held is back with its seq. */
	for (i = 0; i < n; i++) {
		const struct mob_binding *b = &h->a->b[i];

		if (b->state == MOB_B_FREE)
			continue;
		if (!home_side(b))
			__builtin_trap();
		for (j = 0; j < nb; j++)
			if (before[j].state != MOB_B_FREE &&
			    !strcmp(before[j].vm, b->vm))
				break;
		if (j == nb && !h->stale)
			__builtin_trap();
		if (j < nb && !h->stale &&
		    (before[j].state == MOB_B_HOME_IDLE ||
		     before[j].state == MOB_B_HOME_AWAY) &&
		    b->seq != before[j].seq)
			__builtin_trap();
		if (b->state == MOB_B_HOME_AWAY && j < nb &&
		    !h->stale && strcmp(b->current, before[j].current))
			__builtin_trap();
	}
	/* The shadow sequence numbers follow the VMs into their new slots. */
	memset(h->known, 0, sizeof(h->known));
	for (i = 0; i < n && !h->stale; i++) {
		if (!home_side(&h->a->b[i]))
			continue;
		for (j = 0; j < nb; j++)
			if ((before[j].state == MOB_B_HOME_IDLE ||
			     before[j].state == MOB_B_HOME_AWAY) &&
			    !strcmp(before[j].vm, h->a->b[i].vm))
				break;
		if (j == nb)
			continue;
		h->known[i] = true;
		memcpy(h->known_vm[i], before[j].vm, sizeof(h->known_vm[i]));
		h->known_seq[i] = before[j].seq;
	}
}

static const struct mob_binding *find(struct h *h, const char *vm)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (h->a->b[i].state != MOB_B_FREE && !strcmp(h->a->b[i].vm, vm))
			return &h->a->b[i];
	return NULL;
}

static void vm_mac(unsigned idx, uint8_t mac[6])
{
	static const uint8_t base[6] = { 0x52, 0x54, 0, 0x61, 0, 0x10 };

	memcpy(mac, base, 6);
	if (idx < 4)
		mac[5] = (uint8_t)(0x10 + idx);
	else if (idx == 4)
		mac[0] = 0x01;		/* multicast */
	else if (idx == 5)
		memset(mac, 0, 6);
	else
		memset(mac, 0xff, 6);
}

/* A TCP super-frame: Ethernet, IPv4 or IPv6, TCP, payload bytes. */
static size_t build_super(uint8_t *p, size_t cap, unsigned payload,
			  unsigned src, unsigned dst, bool v6)
{
	size_t l3 = v6 ? 40 : 20, hlen = 14 + l3 + 20;
	uint8_t *ip = p + 14, *tcp = p + 14 + l3;

	if (hlen + payload > cap)
		payload = (unsigned)(cap - hlen);
	memset(p, 0, hlen);
	vm_mac(dst, p);
	vm_mac(src, p + 6);
	if (v6) {
		p[12] = 0x86;
		p[13] = 0xdd;
		ip[0] = 0x60;
		ip[6] = 6;
		ip[7] = 64;
	} else {
		p[12] = 0x08;
		ip[0] = 0x45;
		ip[8] = 64;
		ip[9] = 6;
		ip[16] = 10; ip[17] = 61; ip[18] = 2; ip[19] = 5;
	}
	tcp[12] = 0x50;
	tcp[13] = 0x18;
	memset(p + hlen, 0xab, payload);
	return hlen + payload;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t buf[MOB_VNET_HLEN + 65536];
	static struct snap before[MOB_BINDINGS_MAX];
	struct tsb_reader r;
	struct h *h = calloc(1, sizeof(*h));
	unsigned ops = 0, nb, restarts = 0;

	if (!h)
		return 0;
	tsb_log_set_level(TSB_LOG_ERROR);
	setup(h);
	tsb_reader_init(&r, data, size);
	while (tsb_reader_remaining(&r) && ops++ < 256) {
		uint8_t op = tsb_get_u8(&r) % OP_COUNT;
		const uint8_t *p;
		uint16_t len;

		switch (op) {
		case OP_CTL: {
			uint8_t ci = tsb_get_u8(&r);

			len = tsb_get_be16(&r) % (MOB_CTL_LINE_MAX + 64);
			if (len > tsb_reader_remaining(&r))
				len = (uint16_t)tsb_reader_remaining(&r);
			p = tsb_get_bytes(&r, len);
			if (!p)
				break;
			mob_agent_ctl_line(h->a, ci % 4, (const char *)p, len);
			mob_agent_flush(h->a);
			break;
		}
		case OP_RAW: {
			uint8_t from = tsb_get_u8(&r) % 3;
			bool trunc;

			len = tsb_get_be16(&r);
			trunc = len & 0x8000;
			len &= 0x7fff;
			if (len > tsb_reader_remaining(&r))
				len = (uint16_t)tsb_reader_remaining(&r);
			p = tsb_get_bytes(&r, len);
			if (!p)
				break;
			memcpy(buf, p, len);	/* an exact copy for ASan */
			nb = snapshot(h, before);
			mob_agent_datagram(h->a, buf, len, trunc, &h->from[from]);
			mob_agent_flush(h->a);
			unchanged(h, before, nb);
			break;
		}
		case OP_BU: {
			uint8_t sender = tsb_get_u8(&r) % 4, key = tsb_get_u8(&r) % 2;
			uint8_t from = tsb_get_u8(&r) % 3, vm = tsb_get_u8(&r) % 4;
			uint8_t mac = tsb_get_u8(&r) % 7, home = tsb_get_u8(&r) % 4;
			uint8_t cur = tsb_get_u8(&r), nonce, na;
			uint32_t seq = tsb_get_be32(&r), life = tsb_get_be32(&r);
			const struct mob_binding *b;
			struct mob_bmsg m;
			bool authentic;
			int n;
			unsigned i;

			nonce = tsb_get_u8(&r);
			na = tsb_get_u8(&r) % (MOB_ADDRS_MAX + 1);
			if (r.err)
				break;
			memset(&m, 0, sizeof(m));
			m.type = MOB_BU;
			/* seq: absolute, or relative to the home's last */
			b = find(h, vm_names[vm]);
			m.seq = (nonce & 0x80) && b ? b->seq + (seq & 0xff) - 8 : seq;
			m.lifetime = (nonce & 0x40) ? life % 200 : life;
			m.nonce = (nonce & 0x20) && b ? b->nonce : nonce;
			strcpy(m.sender, site_names[sender]);
			strcpy(m.vm, vm_names[vm]);
			strcpy(m.home, site_names[home]);
			strcpy(m.current, cur & 0x80 ? site_names[cur % 4] :
			       site_names[sender]);
			vm_mac(mac, m.mac);
			m.n_addrs = na;
			for (i = 0; i < na; i++) {
				m.addrs[i].family = i & 1 ? AF_INET6 : AF_INET;
				m.addrs[i].v6.s6_addr[0] = 10;
				m.addrs[i].v6.s6_addr[3] = (uint8_t)(vm * 8 + i);
			}
			n = mob_bmsg_encode(&m, keys[key], buf, MOB_BMSG_MAX);
			if (n < 0)
				break;
			authentic = sender >= 1 && sender <= 2 &&
				key == sender - 1 && from == sender - 1;
			nb = snapshot(h, before);
			mob_agent_datagram(h->a, buf, (size_t)n, false, &h->from[from]);
			mob_agent_flush(h->a);
			if (!authentic)
				unchanged(h, before, nb);
			break;
		}
		case OP_BA: {
			uint8_t sender = tsb_get_u8(&r) % 4, key = tsb_get_u8(&r) % 2;
			uint8_t from = tsb_get_u8(&r) % 3, vm = tsb_get_u8(&r) % 4;
			uint8_t status = tsb_get_u8(&r), echo;
			uint32_t seq = tsb_get_be32(&r), life = tsb_get_be32(&r);
			const struct mob_binding *b;
			struct mob_bmsg m;
			bool authentic;
			int n;

			echo = tsb_get_u8(&r);
			if (r.err)
				break;
			b = find(h, vm_names[vm]);
			memset(&m, 0, sizeof(m));
			m.type = MOB_BA;
			m.status = status < 4 ? ba_status[status] : status;
			m.seq = (echo & 0x80) && b ? b->seq + (seq & 0xf) : seq;
			m.lifetime = life % 1000;
			m.nonce = (echo & 1) && b ? b->nonce : echo;
			strcpy(m.sender, site_names[sender]);
			strcpy(m.vm, vm_names[vm]);
			strcpy(m.home, site_names[sender]);
			strcpy(m.current, "A");
			vm_mac(vm, m.mac);
			n = mob_bmsg_encode(&m, keys[key], buf, MOB_BMSG_MAX);
			if (n < 0)
				break;
			authentic = sender >= 1 && sender <= 2 &&
				key == sender - 1 && from == sender - 1;
			nb = snapshot(h, before);
			mob_agent_datagram(h->a, buf, (size_t)n, false, &h->from[from]);
			mob_agent_flush(h->a);
			if (!authentic)
				unchanged(h, before, nb);
			break;
		}
		case OP_VXLAN: {
			uint8_t from = tsb_get_u8(&r) % 3;
			uint32_t vni = tsb_get_be32(&r);

			len = tsb_get_be16(&r) % 2048;
			if (len > tsb_reader_remaining(&r))
				len = (uint16_t)tsb_reader_remaining(&r);
			p = tsb_get_bytes(&r, len);
			if (!p)
				break;
			mob_vxlan_put(buf, vni & 0x100 ? vni : 1);
			memcpy(buf + MOB_VXLAN_HLEN, p, len);
			nb = snapshot(h, before);
			mob_agent_datagram(h->a, buf, MOB_VXLAN_HLEN + len, false,
					   &h->from[from]);
			mob_agent_flush(h->a);
			unchanged(h, before, nb);
			break;
		}
		case OP_PACKET:
		case OP_SUPER: {
			struct virtio_net_hdr vh;
			unsigned out0 = h->out_frames;
			size_t n;

			memset(&vh, 0, sizeof(vh));
			if (op == OP_PACKET) {
				vh.flags = tsb_get_u8(&r);
				vh.gso_type = tsb_get_u8(&r);
				vh.gso_size = tsb_get_be16(&r);
				vh.csum_start = tsb_get_be16(&r);
				vh.csum_offset = tsb_get_be16(&r);
				len = tsb_get_be16(&r);
				if (len > tsb_reader_remaining(&r))
					len = (uint16_t)tsb_reader_remaining(&r);
				p = tsb_get_bytes(&r, len);
				if (!p)
					break;
				memcpy(buf + MOB_VNET_HLEN, p, len);
				n = len;
			} else {
				uint8_t src, dst, v6;
				uint16_t payload;

				vh.gso_type = tsb_get_u8(&r);
				vh.gso_size = tsb_get_be16(&r);
				payload = tsb_get_be16(&r);
				src = tsb_get_u8(&r) % 7;
				dst = tsb_get_u8(&r) % 7;
				v6 = tsb_get_u8(&r) & 1;
				if (r.err)
					break;
				n = build_super(buf + MOB_VNET_HLEN,
						sizeof(buf) - MOB_VNET_HLEN, payload,
						src, dst, v6);
			}
			memcpy(buf, &vh, sizeof(vh));
			mob_agent_packet(h->a, buf, MOB_VNET_HLEN + n, false);
			mob_agent_flush(h->a);
			/* one frame in: at most a frame's segments out, plus
			 * announcements of a binding it ended or started */
			if (h->out_frames - out0 > MOB_GSO_SEGS_MAX + MOB_ADDRS_MAX)
				__builtin_trap();
			break;
		}
		case OP_TIME: {
			uint32_t ms = tsb_get_be32(&r);

			if (r.err)
				break;
			h->now += (uint64_t)(ms % 200000000u) * 1000000ull;
			h->wall += (uint64_t)(ms % 200000000u) * 1000000ull;
			(void)mob_agent_timers(h->a);
			mob_agent_flush(h->a);
			break;
		}
		case OP_RESTART:
			/* Past RESTARTS_MAX a restart is a no-op: it has no
			 * operand, so mutations make long runs of them, and a
			 * ninth restart checks nothing the eighth did not
			 * (each frees the agent, makes one and loads the same
			 * file); they were half the operations and most of
			 * the time. */
			if (restarts++ < RESTARTS_MAX)
				restart(h);
			break;
		case OP_SAVEFAIL:
			h->save_fail = tsb_get_u8(&r) & 1;
			break;
		case OP_REFLECT: {
			uint8_t from = tsb_get_u8(&r) % 3;

			if (r.err || !h->last_bmsg_len)
				break;
			memcpy(buf, h->last_bmsg, h->last_bmsg_len);
			nb = snapshot(h, before);
			mob_agent_datagram(h->a, buf, h->last_bmsg_len, false,
					   &h->from[from]);
			mob_agent_flush(h->a);
			unchanged(h, before, nb);
			break;
		}
		case OP_WALL: {
			uint32_t s = tsb_get_be32(&r);

			if (r.err)
				break;
			h->wall += (uint64_t)(s % 1000000u) * 1000000000ull;
			break;
		}
		}
		check_table(h);
	}
	mob_agent_free(h->a);
	free(h->saved);
	free(h);
	return 0;
}
