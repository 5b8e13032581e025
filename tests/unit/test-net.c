/* Unit tests of the mobility agent (src/net): its codecs, and its state
 * machine driven through a mock struct mob_io. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "common/log.h"
#include "net/agent.h"
#include "net/net.h"

#include <stdio.h>
#include <stdlib.h>

static const uint8_t key[MOB_KEY_LEN] = { 1, 2, 3, 4, 5, 6, 7, 8 };
static const uint8_t vm_mac[6] = { 0x52, 0x54, 0, 0x61, 0, 0x10 };
static const uint8_t gw_mac[6] = { 0x52, 0x54, 0, 0x61, 0, 0xaa };

static void sample_bu(struct mob_bmsg *m)
{
	memset(m, 0, sizeof(*m));
	m->type = MOB_BU;
	m->seq = 42;
	m->lifetime = 60;
	m->nonce = 0x0102030405060708ull;
	strcpy(m->sender, "B");
	strcpy(m->vm, "vm1");
	strcpy(m->home, "A");
	strcpy(m->current, "B");
	memcpy(m->mac, vm_mac, 6);
	m->n_addrs = 2;
	assert_int_equal(mob_parse_addr("10.61.1.10", &m->addrs[0]), 0);
	assert_int_equal(mob_parse_addr("fd61:1::a", &m->addrs[1]), 0);
}

static void test_bmsg_round_trip(void **state)
{
	uint8_t buf[MOB_BMSG_MAX];
	struct mob_bmsg m, d;
	int n;

	sample_bu(&m);
	n = mob_bmsg_encode(&m, key, buf, sizeof(buf));
	assert_true(n > 0);
	assert_true(mob_bmsg_is(buf, (size_t)n));
	assert_int_equal(mob_bmsg_decode(buf, (size_t)n, key, &d), 0);
	assert_int_equal(d.type, MOB_BU);
	assert_int_equal(d.seq, 42);
	assert_int_equal(d.lifetime, 60);
	assert_true(d.nonce == m.nonce);
	assert_string_equal(d.vm, "vm1");
	assert_string_equal(d.home, "A");
	assert_string_equal(d.current, "B");
	assert_memory_equal(d.mac, vm_mac, 6);
	assert_int_equal(d.n_addrs, 2);
	assert_int_equal(d.addrs[0].family, AF_INET);
	assert_int_equal(d.addrs[1].family, AF_INET6);
	assert_memory_equal(&d.addrs[1].v6, &m.addrs[1].v6, 16);
}

static void test_bmsg_forged_and_malformed(void **state)
{
	uint8_t buf[MOB_BMSG_MAX], other[MOB_KEY_LEN] = { 9 };
	struct mob_bmsg m, d;
	int n, i;

	sample_bu(&m);
	n = mob_bmsg_encode(&m, key, buf, sizeof(buf));
	/* another key */
	assert_int_equal(mob_bmsg_decode(buf, (size_t)n, other, &d), -EACCES);
	/* any flipped bit in the body or the MAC */
	for (i = 8; i < n; i += 7) {
		buf[i] ^= 0x10;
		assert_true(mob_bmsg_decode(buf, (size_t)n, key, &d) < 0);
		buf[i] ^= 0x10;
	}
	/* every truncation */
	for (i = 0; i < n; i++)
		assert_true(mob_bmsg_decode(buf, (size_t)i, key, &d) < 0);
	/* unknown version */
	buf[4] = 2;
	assert_int_equal(mob_bmsg_decode(buf, (size_t)n, key, &d), -EOPNOTSUPP);
	/* oversized fields refuse to encode */
	sample_bu(&m);
	m.n_addrs = MOB_ADDRS_MAX + 1;
	assert_int_equal(mob_bmsg_encode(&m, key, buf, sizeof(buf)), -EINVAL);
	sample_bu(&m);
	assert_int_equal(mob_bmsg_encode(&m, key, buf, 40), -ENOSPC);
}

static void test_arp_build_parse(void **state)
{
	static const uint8_t bc[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
	struct mob_frame_info f;
	struct in_addr spa, tpa;
	uint8_t buf[64];
	int n;

	inet_pton(AF_INET, "10.61.1.1", &spa);
	inet_pton(AF_INET, "10.61.1.10", &tpa);
	n = mob_build_arp(buf, sizeof(buf), 1, bc, gw_mac, gw_mac, spa, bc, tpa);
	assert_int_equal(n, 42);
	assert_int_equal(mob_frame_parse(buf, (size_t)n, &f), 0);
	assert_int_equal(f.kind, MOB_FK_ARP_REQUEST);
	assert_true(mob_mac_is_broadcast(f.dst));
	assert_memory_equal(f.arp_sha, gw_mac, 6);
	assert_true(f.arp_tpa.s_addr == tpa.s_addr);
	assert_int_equal(mob_frame_parse(buf, 30, &f), -EBADMSG);
	assert_int_equal(mob_build_arp(buf, 41, 1, bc, gw_mac, gw_mac, spa, bc, tpa),
			 -ENOSPC);
}

/* Ones-complement sum over an IPv6 ICMPv6 packet incl. pseudo header. */
static uint16_t icmp6_check(const uint8_t *ip)
{
	uint32_t acc = 0;
	size_t len = (size_t)(ip[4] << 8 | ip[5]), i;

	for (i = 8; i < 40; i += 2)
		acc += (uint32_t)(ip[i] << 8 | ip[i + 1]);
	acc += (uint32_t)len + 58;
	for (i = 0; i < len; i += 2)
		acc += (uint32_t)(ip[40 + i] << 8 | (i + 1 < len ? ip[41 + i] : 0));
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	return (uint16_t)acc;
}

static void test_na_and_ns(void **state)
{
	struct in6_addr src, dst, tgt;
	struct mob_frame_info f;
	uint8_t buf[128], ns[86];
	int n;

	inet_pton(AF_INET6, "fd61:1::a", &tgt);
	inet_pton(AF_INET6, "fd61:1::1", &dst);
	src = tgt;
	n = mob_build_na(buf, sizeof(buf), gw_mac, vm_mac, &src, &dst, &tgt, true);
	assert_int_equal(n, 86);
	assert_int_equal(icmp6_check(buf + 14), 0xffff);
	assert_int_equal(buf[54], 136);
	assert_int_equal(buf[58] & 0x60, 0x60);	/* solicited, override */
	assert_memory_equal(buf + 54 + 26, vm_mac, 6);
	/* Turn it into an NS with a source link-layer option and parse it. */
	memcpy(ns, buf, sizeof(ns));
	ns[54] = 135;
	ns[54 + 24] = 1;
	assert_int_equal(mob_frame_parse(ns, sizeof(ns), &f), 0);
	assert_int_equal(f.kind, MOB_FK_NS);
	assert_memory_equal(&f.ns_target, &tgt, 16);
	assert_true(f.has_sllao);
	/* option length 0 is malformed */
	ns[54 + 25] = 0;
	assert_int_equal(mob_frame_parse(ns, sizeof(ns), &f), -EBADMSG);
	/* hop limit other than 255: not an NS */
	ns[54 + 25] = 1;
	ns[14 + 7] = 64;
	assert_int_equal(mob_frame_parse(ns, sizeof(ns), &f), 0);
	assert_int_equal(f.kind, MOB_FK_IPV6);
}

static void test_csum_complete(void **state)
{
	/* IPv4 + UDP with the pseudo-header sum in the checksum field, as
	 * a virtio-net NEEDS_CSUM frame carries it. */
	uint8_t f[14 + 20 + 8 + 4] = { 0 };
	uint8_t *ip = f + 14, *udp = ip + 20;
	uint32_t acc;

	f[12] = 0x08;
	ip[0] = 0x45;
	ip[9] = 17;
	ip[12] = 10; ip[13] = 0; ip[14] = 0; ip[15] = 1;
	ip[16] = 10; ip[17] = 0; ip[18] = 0; ip[19] = 2;
	udp[1] = 53; udp[3] = 53; udp[5] = 12;
	memcpy(udp + 8, "abcd", 4);
	acc = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 12;
	udp[6] = (uint8_t)(acc >> 8);
	udp[7] = (uint8_t)acc;
	assert_int_equal(mob_csum_complete(f, sizeof(f), 34, 6), 0);
	/* verify: pseudo header + UDP segment sums to 0xffff */
	acc = 0x0a00 + 0x0001 + 0x0a00 + 0x0002 + 17 + 12;
	for (int i = 0; i < 12; i += 2)
		acc += (uint32_t)(udp[i] << 8 | udp[i + 1]);
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	assert_int_equal(acc, 0xffff);
	assert_int_equal(mob_csum_complete(f, sizeof(f), 44, 6), -EBADMSG);
	assert_int_equal(mob_csum_complete(f, sizeof(f), 100, 0), -EBADMSG);
}

/* Verifies an IPv4 TCP segment's header and TCP checksums. */
static void check_tcp4(const uint8_t *f, size_t len)
{
	const uint8_t *ip = f + 14, *tcp = ip + 20;
	size_t l4 = len - 34, i;
	uint32_t acc = 0;

	for (i = 0; i < 20; i += 2)
		acc += (uint32_t)(ip[i] << 8 | ip[i + 1]);
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	assert_int_equal(acc, 0xffff);
	acc = 0;
	for (i = 12; i < 20; i += 2)
		acc += (uint32_t)(ip[i] << 8 | ip[i + 1]);
	acc += (uint32_t)l4 + 6;
	for (i = 0; i < l4; i += 2)
		acc += (uint32_t)(tcp[i] << 8 | (i + 1 < l4 ? tcp[i + 1] : 0));
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	assert_int_equal(acc, 0xffff);
}

static void test_gso_segment(void **state)
{
	static uint8_t f[14 + 20 + 20 + 2500], out[MOB_FRAME_MAX];
	struct mob_gso g;
	uint8_t *ip = f + 14, *tcp = ip + 20;
	size_t i;
	int n, len;

	memset(f, 0, sizeof(f));
	f[12] = 0x08;
	ip[0] = 0x45;
	ip[4] = 0x12; ip[5] = 0x34;	/* id */
	ip[8] = 64;
	ip[9] = 6;
	ip[12] = 10; ip[15] = 1; ip[16] = 10; ip[19] = 2;
	tcp[0] = 0x9c; tcp[1] = 0x40; tcp[3] = 80;
	tcp[4] = 0; tcp[5] = 0; tcp[6] = 0x10; tcp[7] = 0;	/* seq 4096 */
	tcp[12] = 0x50;
	tcp[13] = 0x18 | 0x01 | 0x80;	/* ACK PSH FIN CWR */
	for (i = 0; i < 2500; i++)
		f[54 + i] = (uint8_t)i;
	n = mob_gso_prepare(f, sizeof(f), 1000, &g);
	assert_int_equal(n, 3);
	assert_int_equal(g.hlen, 54);
	for (i = 0; i < 3; i++) {
		len = mob_gso_segment(f, &g, (unsigned)i, out, sizeof(out));
		assert_int_equal(len, 54 + (i < 2 ? 1000 : 500));
		check_tcp4(out, (size_t)len);
		assert_int_equal(out[16] << 8 | out[17], 40 + (i < 2 ? 1000 : 500));
		assert_int_equal(out[18] << 8 | out[19], 0x1234 + i);
		assert_int_equal(out[38] << 24 | out[39] << 16 | out[40] << 8 | out[41],
				 4096 + 1000 * i);
		assert_int_equal(out[47] & 0x09, i == 2 ? 0x09 : 0);	/* PSH FIN */
		assert_int_equal(out[47] & 0x80, i == 0 ? 0x80 : 0);	/* CWR */
		assert_int_equal(out[54], (uint8_t)(1000 * i));
	}
	assert_int_equal(mob_gso_segment(f, &g, 1, out, 100), -ENOSPC);
	assert_int_equal(mob_gso_prepare(f, sizeof(f), 0, &g), -EBADMSG);
	assert_int_equal(mob_gso_prepare(f, 40, 1000, &g), -EBADMSG);
	ip[9] = 17;
	assert_int_equal(mob_gso_prepare(f, sizeof(f), 1000, &g), -EOPNOTSUPP);
}

/* The segment size comes from the guest's virtio-net header: a tiny one
 * must not make the agent cut one 64 KiB frame into 65,000 segments. */
static void test_gso_caps(void **state)
{
	static uint8_t f[14 + 20 + 20 + 65000], out[MOB_FRAME_MAX];
	uint8_t *ip = f + 14, *tcp = ip + 20;
	struct mob_gso g;
	unsigned i;
	int n, len;

	memset(f, 0, sizeof(f));
	f[12] = 0x08;
	ip[0] = 0x45;
	ip[8] = 64;
	ip[9] = 6;
	tcp[12] = 0x50;
	tcp[13] = 0x10;
	assert_int_equal(mob_gso_prepare(f, sizeof(f), 1, &g), -EMSGSIZE);
	assert_int_equal(mob_gso_prepare(f, sizeof(f), 64, &g), -EMSGSIZE);
	assert_int_equal(mob_gso_prepare(f, sizeof(f), MOB_GSO_MSS_MIN - 1, &g),
			 -EMSGSIZE);
	/* A small frame is refused with a small segment size too: the
	 * minimum does not depend on the frame's length. */
	assert_int_equal(mob_gso_prepare(f, 54 + 100, 10, &g), -EMSGSIZE);
	n = mob_gso_prepare(f, sizeof(f), MOB_GSO_MSS_MIN, &g);
	assert_int_equal(n, (65000 + MOB_GSO_MSS_MIN - 1) / MOB_GSO_MSS_MIN);
	assert_true(n <= MOB_GSO_SEGS_MAX);
	for (i = 0; i < (unsigned)n; i++) {
		len = mob_gso_segment(f, &g, i, out, sizeof(out));
		assert_true(len > 54 && len <= 54 + MOB_GSO_MSS_MIN);
		check_tcp4(out, (size_t)len);
	}
	assert_int_equal(mob_gso_segment(f, &g, (unsigned)n, out, sizeof(out)),
			 -EINVAL);
	/* 1448 (a 1500-byte MTU) is the common case */
	assert_int_equal(mob_gso_prepare(f, sizeof(f), 1448, &g),
			 (65000 + 1447) / 1448);
}

static void test_vxlan(void **state)
{
	uint8_t pkt[8 + 60] = { 0 };
	uint32_t vni;
	size_t off;

	mob_vxlan_put(pkt, 0x123456);
	assert_int_equal(pkt[0], 0x08);
	assert_int_equal(mob_vxlan_parse(pkt, sizeof(pkt), &vni, &off), 0);
	assert_int_equal(vni, 0x123456);
	assert_int_equal(off, 8);
	assert_int_equal(mob_vxlan_parse(pkt, 8 + 13, &vni, &off), -EBADMSG);
	pkt[0] = 0;
	assert_int_equal(mob_vxlan_parse(pkt, sizeof(pkt), &vni, &off), -EBADMSG);
}

static void test_ctl_parse(void **state)
{
	static const char arrive[] =
		"{\"op\":\"arrive\",\"vm\":\"vm1\",\"mac\":\"52:54:00:61:00:10\","
		"\"addrs\":[\"10.61.1.10\",\"fd61:1::a\"],\"home\":\"A\",\"wait_ms\":100}";
	struct mob_ctl_req q;
	char err[160], big[MOB_CTL_LINE_MAX + 2];

	assert_int_equal(mob_ctl_parse(arrive, strlen(arrive), &q, err, sizeof(err)), 0);
	assert_int_equal(q.op, MOB_CTL_ARRIVE);
	assert_int_equal(q.n_addrs, 2);
	assert_int_equal(q.wait_ms, 100);
	assert_memory_equal(q.mac, vm_mac, 6);
#define BAD(s) assert_int_equal(mob_ctl_parse(s, strlen(s), &q, err, sizeof(err)), -EBADMSG)
	BAD("{\"op\":\"arrive\",\"vm\":\"vm1\",\"home\":\"A\"}");	/* no mac */
	BAD("{\"op\":\"fly\"}");
	BAD("{\"op\":\"status\",\"op\":\"status\"}");
	BAD("{\"op\":\"depart\",\"vm\":\"a b\"}");
	BAD("{\"op\":\"bind\",\"vm\":\"v\",\"mac\":\"52:54:00:61:00:10\",\"home\":\"A\"}");
	BAD("{\"op\":\"depart\",\"vm\":\"v\",\"lifetime\":-1}");
	BAD("not json");
	memset(big, ' ', sizeof(big));
	assert_int_equal(mob_ctl_parse(big, sizeof(big), &q, err, sizeof(err)), -EMSGSIZE);
}

static void test_text(void **state)
{
	uint8_t mac[6];
	char s[18];
	struct mob_addr a;

	assert_int_equal(mob_parse_mac("52:54:00:61:00:10", mac), 0);
	mob_format_mac(mac, s);
	assert_string_equal(s, "52:54:00:61:00:10");
	assert_int_equal(mob_parse_mac("52:54:00:61:00", mac), -EINVAL);
	assert_int_equal(mob_parse_mac("52:54:00:61:00:10:", mac), -EINVAL);
	assert_int_equal(mob_parse_addr("10.0.0.300", &a), -EINVAL);
	assert_true(mob_name_ok("site-A.1", MOB_SITE_MAX));
	assert_false(mob_name_ok("", MOB_SITE_MAX));
	assert_false(mob_name_ok("a/b", MOB_SITE_MAX));
}

/* ---- the agent's state machine, through a mock io ---- */

struct mock {
	uint64_t now, wall;
	unsigned seg_frames, tun_frames, n_bmsg;
	uint8_t bmsg[MOB_BMSG_MAX];
	size_t bmsg_len;
	struct sockaddr_storage bmsg_to;
	char reply[8192];
	size_t reply_len;
	char *saved;
	size_t saved_len;
	int save_err;
	unsigned saves;
	/* the last frame sent on the segment and through the tunnel */
	uint8_t seg_last[MOB_FRAME_MAX], tun_last[MOB_FRAME_MAX];
	size_t seg_last_len, tun_last_len;
	struct sockaddr_storage tun_to;
};

static uint64_t m_now(void *ctx) { return ((struct mock *)ctx)->now; }
static uint64_t m_wall(void *ctx) { return ((struct mock *)ctx)->wall; }

static int m_send_seg(void *ctx, struct mmsghdr *msgs, unsigned n)
{
	unsigned i;
	struct mock *m = ctx;

	for (i = 0; i < n; i++) {
		assert_true(msgs[i].msg_hdr.msg_iov[1].iov_len <= MOB_FRAME_MAX);
		m->seg_last_len = msgs[i].msg_hdr.msg_iov[1].iov_len;
		memcpy(m->seg_last, msgs[i].msg_hdr.msg_iov[1].iov_base,
		       m->seg_last_len);
	}
	m->seg_frames += n;
	return (int)n;
}

static int m_send_tun(void *ctx, struct mmsghdr *msgs, unsigned n)
{
	unsigned i;
	struct mock *m = ctx;

	for (i = 0; i < n; i++) {
		assert_true(msgs[i].msg_hdr.msg_iov[1].iov_len <= MOB_FRAME_MAX);
		m->tun_last_len = msgs[i].msg_hdr.msg_iov[1].iov_len;
		memcpy(m->tun_last, msgs[i].msg_hdr.msg_iov[1].iov_base,
		       m->tun_last_len);
		memcpy(&m->tun_to, msgs[i].msg_hdr.msg_name,
		       msgs[i].msg_hdr.msg_namelen);
	}
	m->tun_frames += n;
	return (int)n;
}

static void m_send_bmsg(void *ctx, const uint8_t *buf, size_t len,
			const struct sockaddr_storage *to, socklen_t tolen)
{
	struct mock *m = ctx;

	assert_true(len <= sizeof(m->bmsg));
	memcpy(m->bmsg, buf, len);
	m->bmsg_len = len;
	memcpy(&m->bmsg_to, to, tolen);
	m->n_bmsg++;
}

static void m_ctl_reply(void *ctx, int ci, const char *line, size_t len)
{
	struct mock *m = ctx;

	assert_true(len < sizeof(m->reply));
	memcpy(m->reply, line, len);
	m->reply[len] = '\0';
	m->reply_len = len;
}

static int m_save(void *ctx, const char *text, size_t len)
{
	struct mock *m = ctx;

	if (m->save_err)
		return m->save_err;
	free(m->saved);
	m->saved = malloc(len);
	assert_non_null(m->saved);
	memcpy(m->saved, text, len);
	m->saved_len = len;
	m->saves++;
	return 0;
}

static const uint8_t key_ab[MOB_KEY_LEN] = "key of the pair of sites A and B";
static const uint8_t key_ac[MOB_KEY_LEN] = "key of the pair of sites A and C";
static const uint8_t ifmac[6] = { 0x52, 0x54, 0, 0x61, 0, 0xee };

struct fixture {
	struct mob_agent_config cfg;
	struct mock m;
	struct mob_io io;
	struct mob_agent *a;
	struct sockaddr_storage from_b, from_c, from_x;
};

static void set_addr(struct sockaddr_storage *ss, const char *ip, int port)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;

	memset(ss, 0, sizeof(*ss));
	sin->sin_family = AF_INET;
	sin->sin_port = htons((uint16_t)port);
	assert_int_equal(inet_pton(AF_INET, ip, &sin->sin_addr), 1);
}

/* Agent of site A with peers B and C (a key per pair); persistent when
 * asked. */
static struct fixture *fixture_new(bool persistent)
{
	struct fixture *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	tsb_log_set_level(TSB_LOG_ERROR);
	f->cfg.site = "A";
	f->cfg.dev = "ag";
	f->cfg.state_dir = persistent ? "/mock" : NULL;
	f->cfg.vni = 1;
	f->cfg.lifetime = 60;
	f->cfg.retrans_ms = 100;
	f->cfg.n_peers = 2;
	strcpy(f->cfg.peers[0].name, "B");
	set_addr(&f->cfg.peers[0].addr, "192.0.2.2", 4789);
	f->cfg.peers[0].addrlen = sizeof(struct sockaddr_in);
	memcpy(f->cfg.peers[0].key, key_ab, MOB_KEY_LEN);
	strcpy(f->cfg.peers[1].name, "C");
	set_addr(&f->cfg.peers[1].addr, "192.0.2.3", 4789);
	f->cfg.peers[1].addrlen = sizeof(struct sockaddr_in);
	memcpy(f->cfg.peers[1].key, key_ac, MOB_KEY_LEN);
	set_addr(&f->from_b, "192.0.2.2", 40000);
	set_addr(&f->from_c, "192.0.2.3", 40000);
	set_addr(&f->from_x, "198.51.100.9", 40000);
	f->m.now = 1000 * 1000000000ull;
	f->m.wall = 1800000000ull * 1000000000ull;
	f->io = (struct mob_io){ .ctx = &f->m, .now = m_now, .wall = m_wall,
		.send_segment = m_send_seg, .send_tunnel = m_send_tun,
		.send_bmsg = m_send_bmsg, .ctl_reply = m_ctl_reply,
		.save = persistent ? m_save : NULL };
	f->a = mob_agent_new(&f->cfg, &f->io, ifmac);
	assert_non_null(f->a);
	return f;
}

/* Stops the agent and starts a new one from what it saved. */
static int fixture_restart(struct fixture *f)
{
	char err[256];
	int r = 0;

	mob_agent_free(f->a);
	f->a = mob_agent_new(&f->cfg, &f->io, ifmac);
	assert_non_null(f->a);
	if (f->m.saved)
		r = mob_agent_load(f->a, f->m.saved, f->m.saved_len, err,
				   sizeof(err));
	mob_agent_flush(f->a);
	return r;
}

static void fixture_free(struct fixture *f)
{
	mob_agent_free(f->a);
	free(f->m.saved);
	free(f);
}

static int encode_bu(uint8_t *buf, const char *sender, uint32_t seq,
		     uint32_t lifetime, uint64_t nonce, const uint8_t *k)
{
	struct mob_bmsg m;

	sample_bu(&m);
	strcpy(m.sender, sender);
	strcpy(m.current, sender);
	m.seq = seq;
	m.lifetime = lifetime;
	m.nonce = nonce;
	return mob_bmsg_encode(&m, k, buf, MOB_BMSG_MAX);
}

/* Feeds one datagram; returns the status of the BA it caused, -1 none. */
static int feed(struct fixture *f, const uint8_t *p, size_t len,
		const struct sockaddr_storage *from, const uint8_t *k,
		uint32_t *ret_seq)
{
	unsigned before = f->m.n_bmsg;
	struct mob_bmsg ba;

	mob_agent_datagram(f->a, p, len, false, from);
	mob_agent_flush(f->a);
	if (f->m.n_bmsg == before)
		return -1;
	assert_int_equal(mob_bmsg_decode(f->m.bmsg, f->m.bmsg_len, k, &ba), 0);
	assert_int_equal(ba.type, MOB_BA);
	if (ret_seq)
		*ret_seq = ba.seq;
	return ba.status;
}

static int bu(struct fixture *f, const char *sender, uint32_t seq,
	      uint32_t lifetime, const struct sockaddr_storage *from,
	      const uint8_t *k, const uint8_t *answer_key, uint32_t *ret_seq)
{
	uint8_t buf[MOB_BMSG_MAX];
	int n = encode_bu(buf, sender, seq, lifetime, 0x5eed0000u + seq, k);

	assert_true(n > 0);
	return feed(f, buf, (size_t)n, from, answer_key, ret_seq);
}

static const struct mob_binding *vm1(struct fixture *f)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (f->a->b[i].state != MOB_B_FREE && !strcmp(f->a->b[i].vm, "vm1"))
			return &f->a->b[i];
	return NULL;
}

static void ctl(struct fixture *f, const char *line)
{
	f->m.reply_len = 0;
	mob_agent_ctl_line(f->a, 0, line, strlen(line));
	mob_agent_flush(f->a);
}

/* Part of the hostile-input audit: a 64 KiB frame from a guest with a
 * one-byte segment size makes nothing; a sane one makes 45 segments. */
static void test_agent_gso_bound(void **state)
{
	static uint8_t pkt[MOB_VNET_HLEN + 14 + 20 + 20 + 65000];
	struct fixture *f = fixture_new(false);
	struct virtio_net_hdr vh;
	uint8_t *fr = pkt + MOB_VNET_HLEN, *ip = fr + 14;

	ctl(f, "{\"op\":\"bind\",\"vm\":\"vm1\",\"mac\":\"52:54:00:61:00:10\","
	    "\"addrs\":[\"10.61.1.10\"],\"home\":\"B\",\"current\":\"A\"}");
	assert_non_null(strstr(f->m.reply, "\"ok\":true"));
	memcpy(fr, gw_mac, 6);
	memcpy(fr + 6, vm_mac, 6);
	fr[12] = 0x08;
	ip[0] = 0x45;
	ip[8] = 64;
	ip[9] = 6;
	ip[20 + 12] = 0x50;
	memset(&vh, 0, sizeof(vh));
	vh.gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
	vh.gso_size = 1;
	memcpy(pkt, &vh, sizeof(vh));
	mob_agent_packet(f->a, pkt, sizeof(pkt), false);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.tun_frames, 0);
	assert_int_equal(f->a->c.drop_gso, 1);
	vh.gso_size = 1448;
	memcpy(pkt, &vh, sizeof(vh));
	mob_agent_packet(f->a, pkt, sizeof(pkt), false);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.tun_frames, (65000 + 1447) / 1448);
	fixture_free(f);
}

/* Garbage, forged, spoofed and flooding input: every datagram is counted,
 * at most MOB_LOG_BURST of each kind are logged a minute, and the agent
 * still serves an authentic update afterwards. */
static void test_agent_flood(void **state)
{
	struct fixture *f = fixture_new(false);
	uint8_t buf[MOB_BMSG_MAX + 64], junk[300];
	unsigned i, kinds = 6, per = 2000;
	uint64_t suppressed;
	int n;

	for (i = 0; i < per; i++) {
		unsigned j;

		for (j = 0; j < sizeof(junk); j++)
			junk[j] = (uint8_t)(i * 31 + j * 7);
		junk[0] = 0;	/* not VXLAN's I flag, not TSBN */
		/* 1. garbage from an address that is no peer */
		mob_agent_datagram(f->a, junk, sizeof(junk), false, &f->from_x);
		/* 2. garbage from a peer */
		mob_agent_datagram(f->a, junk, sizeof(junk), false, &f->from_b);
		/* 3. TSBN and garbage */
		memcpy(junk, "TSBN", 4);
		mob_agent_datagram(f->a, junk, 100, false, &f->from_b);
		/* 4. forged: B's address and name, C's key */
		n = encode_bu(buf, "B", 100 + i, 60, i, key_ac);
		mob_agent_datagram(f->a, buf, (size_t)n, false, &f->from_b);
		/* 5. spoofed: B's key and name, another address */
		n = encode_bu(buf, "B", 100 + i, 60, i, key_ab);
		mob_agent_datagram(f->a, buf, (size_t)n, false, &f->from_x);
		/* 6. VXLAN from B with another VNI */
		memset(buf, 0, 64);
		mob_vxlan_put(buf, 7);
		mob_agent_datagram(f->a, buf, 64, false, &f->from_b);
		mob_agent_flush(f->a);
	}
	assert_int_equal(f->a->c.drop_unknown_peer, per);
	assert_int_equal(f->a->c.drop_bad, per);
	assert_int_equal(f->a->c.bmsg_bad, per);
	assert_int_equal(f->a->c.bu_forged, per);
	assert_int_equal(f->a->c.bu_refused, per);
	assert_int_equal(f->a->c.drop_vni, per);
	assert_int_equal(f->m.n_bmsg, 0);	/* nothing answered */
	suppressed = f->a->c.log_suppressed;
	assert_int_equal(suppressed, kinds * (per - MOB_LOG_BURST));
	/* A minute later each kind may be logged again, ten times. */
	f->m.now += MOB_LOG_WINDOW_NS;
	(void)mob_agent_timers(f->a);
	for (i = 0; i < MOB_LOG_BURST; i++)
		mob_agent_datagram(f->a, junk, sizeof(junk), false, &f->from_x);
	assert_int_equal(f->a->c.log_suppressed, suppressed);
	mob_agent_datagram(f->a, junk, sizeof(junk), false, &f->from_x);
	assert_int_equal(f->a->c.log_suppressed, suppressed + 1);
	/* An authentic update is still served. */
	assert_int_equal(bu(f, "B", 1, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(vm1(f)->state, MOB_B_HOME_AWAY);
	fixture_free(f);
}

/* A binding update captured on the wire cannot be replayed after the
 * home agent restarts: the state file keeps what it accepted. */
static void test_agent_replay_after_restart(void **state)
{
	struct fixture *f = fixture_new(true);
	uint8_t bu5[MOB_BMSG_MAX], bu6[MOB_BMSG_MAX];
	int n5 = encode_bu(bu5, "B", 5, 60, 0x55, key_ab);
	int n6 = encode_bu(bu6, "B", 6, 60, 0x66, key_ab);
	uint32_t seq;

	assert_int_equal(feed(f, bu5, (size_t)n5, &f->from_b, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(feed(f, bu6, (size_t)n6, &f->from_b, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(f->m.saves, 2);
	assert_int_equal(fixture_restart(f), 0);
	/* restored: still away at B with seq 6 */
	assert_int_equal(vm1(f)->state, MOB_B_HOME_AWAY);
	assert_int_equal(vm1(f)->seq, 6);
	assert_string_equal(vm1(f)->current, "B");
	assert_true(f->m.seg_frames >= 1);	/* announced again */
	/* the older one is stale */
	assert_int_equal(feed(f, bu5, (size_t)n5, &f->from_b, key_ab, &seq),
			 MOB_BA_SEQ_OUT_OF_WINDOW);
	assert_int_equal(seq, 6);
	/* the last one is a retransmission: acknowledged, nothing changes */
	assert_int_equal(feed(f, bu6, (size_t)n6, &f->from_b, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	/* back home consumes seq 7; after a restart seq 6 cannot take the
	 * VM's traffic away again */
	ctl(f, "{\"op\":\"arrive\",\"vm\":\"vm1\",\"mac\":\"52:54:00:61:00:10\","
	    "\"addrs\":[\"10.61.1.10\"],\"home\":\"A\"}");
	assert_int_equal(vm1(f)->state, MOB_B_HOME_IDLE);
	assert_int_equal(fixture_restart(f), 0);
	assert_int_equal(vm1(f)->state, MOB_B_HOME_IDLE);
	assert_int_equal(vm1(f)->seq, 7);
	assert_int_equal(feed(f, bu6, (size_t)n6, &f->from_b, key_ab, &seq),
			 MOB_BA_SEQ_OUT_OF_WINDOW);
	assert_int_equal(seq, 7);
	assert_int_equal(vm1(f)->state, MOB_B_HOME_IDLE);
	/* a binding whose lifetime ran out while the agent was down is not
	 * restored, and its update not replayable */
	assert_int_equal(bu(f, "B", 8, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	f->m.wall += 61 * 1000000000ull;
	assert_int_equal(fixture_restart(f), 0);
	assert_int_equal(vm1(f)->state, MOB_B_HOME_IDLE);
	assert_int_equal(vm1(f)->seq, 8);
	/* what cannot be written is not acted on */
	f->m.save_err = -ENOSPC;
	assert_int_equal(bu(f, "B", 9, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_REASON_UNSPEC);
	assert_int_equal(vm1(f)->state, MOB_B_HOME_IDLE);
	assert_int_equal(vm1(f)->seq, 8);
	assert_int_equal(f->a->c.state_errors, 1);
	fixture_free(f);

	/* Without a state file, a restarted agent takes the replay: the
	 * case the state file is for. */
	f = fixture_new(false);
	assert_int_equal(feed(f, bu6, (size_t)n6, &f->from_b, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(fixture_restart(f), 0);
	assert_int_equal(feed(f, bu5, (size_t)n5, &f->from_b, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	fixture_free(f);
}

static void test_agent_state_file(void **state)
{
	struct fixture *f = fixture_new(true);
	char err[256];
#define LOAD(s) mob_agent_load(f->a, s, strlen(s), err, sizeof(err))

	assert_int_equal(LOAD("not json"), -EBADMSG);
	assert_int_equal(LOAD("{\"version\":1,\"site\":\"B\",\"vms\":[]}"), -EBADMSG);
	assert_non_null(strstr(err, "site 'B'"));
	assert_int_equal(LOAD("{\"version\":2,\"site\":\"A\",\"vms\":[]}"), -EBADMSG);
	assert_int_equal(LOAD("{\"version\":1,\"site\":\"A\",\"vms\":[{\"vm\":\"v\"}]}"),
			 -EBADMSG);
	assert_int_equal(LOAD("{\"version\":1,\"site\":\"A\",\"vms\":[{\"vm\":\"v\","
			      "\"state\":\"home\",\"seq\":-1,\"nonce\":\"0000000000000000\","
			      "\"mac\":\"52:54:00:61:00:10\",\"addrs\":[]}]}"), -EBADMSG);
	assert_int_equal(LOAD("{\"version\":1,\"site\":\"A\",\"vms\":[{\"vm\":\"v\","
			      "\"state\":\"away\",\"seq\":1,\"nonce\":\"0000000000000000\","
			      "\"mac\":\"52:54:00:61:00:10\",\"addrs\":[]}]}"), -EBADMSG);
	/* nothing half-loaded stays behind */
	assert_int_equal(f->a->b[0].state, MOB_B_FREE);
	/* an away binding at a site that is no peer any more: home */
	assert_int_equal(LOAD("{\"version\":1,\"site\":\"A\",\"vms\":[{\"vm\":\"vm1\","
			      "\"state\":\"away\",\"seq\":3,\"nonce\":\"00000000000000ff\","
			      "\"mac\":\"52:54:00:61:00:10\",\"addrs\":[\"10.61.1.10\"],"
			      "\"current\":\"Z\",\"lifetime\":60,\"expires\":1900000000}]}"), 0);
	assert_int_equal(vm1(f)->state, MOB_B_HOME_IDLE);
	assert_int_equal(vm1(f)->seq, 3);
	fixture_free(f);
#undef LOAD
}

/* A key per site pair: the key A shares with C cannot speak for B, nor
 * the reverse; each speaks for its own site. */
static void test_agent_pair_keys(void **state)
{
	struct fixture *f = fixture_new(false);

	/* C's address, claims C, B's key: forged */
	assert_int_equal(bu(f, "C", 10, 60, &f->from_c, key_ab, key_ac, NULL), -1);
	assert_int_equal(f->a->c.bu_forged, 1);
	/* B's address, claims B, C's key: forged */
	assert_int_equal(bu(f, "B", 10, 60, &f->from_b, key_ac, key_ab, NULL), -1);
	assert_int_equal(f->a->c.bu_forged, 2);
	/* C's address, claims B, C's key: wrong address */
	assert_int_equal(bu(f, "B", 10, 60, &f->from_c, key_ac, key_ab, NULL), -1);
	assert_int_equal(f->a->c.bu_refused, 1);
	assert_null(vm1(f));
	/* each with its own key: accepted, answered under that key */
	assert_int_equal(bu(f, "B", 10, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_string_equal(vm1(f)->current, "B");
	assert_int_equal(bu(f, "C", 11, 60, &f->from_c, key_ac, key_ac, NULL),
			 MOB_BA_ACCEPTED);
	assert_string_equal(vm1(f)->current, "C");
	fixture_free(f);
}

/* A key rollover on one pair: while B's agent holds old and new, B's
 * updates verify under either; C's key still cannot speak for B. */
static void test_agent_pair_key_rollover(void **state)
{
	struct fixture *f = fixture_new(false);
	uint8_t key_new[MOB_KEY_LEN];

	memset(key_new, 0x5a, sizeof(key_new));
	f->cfg.peers[0].has_alt = true;
	memcpy(f->cfg.peers[0].alt_key, key_new, MOB_KEY_LEN);
	/* the new key (B already switched): accepted; answered under the first */
	assert_int_equal(bu(f, "B", 10, 60, &f->from_b, key_new, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	/* the old key (B not yet switched): accepted */
	assert_int_equal(bu(f, "B", 11, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	/* C's key for B: still forged */
	assert_int_equal(bu(f, "B", 12, 60, &f->from_b, key_ac, key_ab, NULL), -1);
	assert_int_equal(f->a->c.bu_forged, 1);
	/* B's new key is not C's */
	assert_int_equal(bu(f, "C", 13, 60, &f->from_c, key_new, key_ac, NULL), -1);
	assert_int_equal(f->a->c.bu_forged, 2);
	fixture_free(f);
}

/* What an authenticated peer may ask is bounded too. */
static void test_agent_bu_limits(void **state)
{
	struct fixture *f = fixture_new(false);
	uint8_t buf[MOB_BMSG_MAX];
	struct mob_bmsg m, ba;
	uint32_t seq;
	int n;

	/* the lifetime granted is at most a day, and the BA says so */
	assert_int_equal(bu(f, "B", 1, UINT32_MAX, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(mob_bmsg_decode(f->m.bmsg, f->m.bmsg_len, key_ab, &ba), 0);
	assert_int_equal(ba.lifetime, 86400);
	assert_int_equal(vm1(f)->lifetime, 86400);
	/* sequence numbers compare modulo 2^32 (RFC 1982): the highest one
	 * does not lock the VM out, the one after it is newer; a jump of
	 * 2^31 or more is older */
	assert_int_equal(bu(f, "B", 0x80000001u, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_SEQ_OUT_OF_WINDOW);
	assert_int_equal(bu(f, "B", 0x80000000u, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(bu(f, "B", UINT32_MAX, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(bu(f, "B", 0, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	assert_int_equal(bu(f, "B", UINT32_MAX, 60, &f->from_b, key_ab, key_ab, &seq),
			 MOB_BA_SEQ_OUT_OF_WINDOW);
	assert_int_equal(seq, 0);
	/* a multicast MAC, or another VM's MAC, is refused */
	sample_bu(&m);
	m.seq = 5;
	m.mac[0] = 0x01;
	n = mob_bmsg_encode(&m, key_ab, buf, sizeof(buf));
	assert_int_equal(feed(f, buf, (size_t)n, &f->from_b, key_ab, NULL),
			 MOB_BA_REASON_UNSPEC);
	sample_bu(&m);
	strcpy(m.vm, "vm2");
	n = mob_bmsg_encode(&m, key_ab, buf, sizeof(buf));
	assert_int_equal(feed(f, buf, (size_t)n, &f->from_b, key_ab, NULL),
			 MOB_BA_REASON_UNSPEC);
	assert_int_equal(vm1(f)->seq, 0);
	/* a site registers only itself */
	sample_bu(&m);
	m.seq = 6;
	strcpy(m.current, "C");
	n = mob_bmsg_encode(&m, key_ab, buf, sizeof(buf));
	assert_int_equal(feed(f, buf, (size_t)n, &f->from_b, key_ab, NULL), -1);
	assert_string_equal(vm1(f)->current, "B");
	fixture_free(f);
}

/* A VXLAN datagram from peer `from` carrying an IPv4 frame dst <- src. */
static size_t tunnelled(uint8_t *buf, const uint8_t dst[6], const uint8_t src[6])
{
	uint8_t *fr = buf + MOB_VXLAN_HLEN, *ip = fr + 14;

	memset(buf, 0, 8 + 14 + 28);
	mob_vxlan_put(buf, 1);
	memcpy(fr, dst, 6);
	memcpy(fr + 6, src, 6);
	fr[12] = 0x08;
	ip[0] = 0x45;
	ip[3] = 28;
	ip[8] = 64;
	ip[9] = 17;
	inet_pton(AF_INET, "10.61.1.10", ip + 12);
	inet_pton(AF_INET, "10.61.103.2", ip + 16);
	return 8 + 14 + 28;
}

/* One frame from the segment (no offload). */
static void from_segment(struct fixture *f, const uint8_t *frame, size_t len)
{
	static uint8_t pkt[MOB_VNET_HLEN + MOB_FRAME_MAX];

	memset(pkt, 0, MOB_VNET_HLEN);
	memcpy(pkt + MOB_VNET_HLEN, frame, len);
	mob_agent_packet(f->a, pkt, MOB_VNET_HLEN + len, false);
	mob_agent_flush(f->a);
}

/*
 * Issue 19: a VM that resolved its gateway at home may hold the agent's
 * own MAC for it (the host's kernel answers ARP for its addresses on the
 * agent's interface too). Away, its frames to that MAC come home through
 * the tunnel; the home bridge would drop them (the MAC is behind the
 * agent's port). The agent probes for the host's own port on the segment
 * and hands them there.
 */
static void test_agent_to_host(void **state)
{
	static const uint8_t host_mac[6] = { 0x52, 0x54, 0, 0x61, 0, 0x01 };
	static const uint8_t other[6] = { 0x52, 0x54, 0, 0x61, 0, 0x77 };
	struct fixture *f = fixture_new(false);
	struct mob_frame_info fi;
	struct in_addr local[2], zero = { 0 }, gw, stranger;
	uint8_t dg[128], arp[64];
	size_t n;
	int k;

	inet_pton(AF_INET, "10.61.1.1", &local[0]);
	inet_pton(AF_INET, "10.61.101.2", &local[1]);
	inet_pton(AF_INET, "10.61.1.1", &gw);
	inet_pton(AF_INET, "10.61.1.99", &stranger);
	mob_agent_set_local(f->a, local, 2);
	/* the probes: who has 10.61.1.1 / 10.61.101.2, from 0.0.0.0 */
	(void)mob_agent_timers(f->a);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 2);
	assert_int_equal(mob_frame_parse(f->m.seg_last, f->m.seg_last_len, &fi), 0);
	assert_int_equal(fi.kind, MOB_FK_ARP_REQUEST);
	assert_memory_equal(fi.src, ifmac, 6);
	assert_true(fi.arp_spa.s_addr == 0);
	assert_true(fi.arp_tpa.s_addr == local[1].s_addr);
	/* the next probe comes after a second, not before */
	f->m.seg_frames = 0;
	assert_true(mob_agent_timers(f->a) <= 1000000000ull);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 0);

	assert_int_equal(bu(f, "B", 1, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	f->m.seg_frames = 0;
	/* Not known yet: dropped and counted, and asked again. */
	n = tunnelled(dg, ifmac, vm_mac);
	mob_agent_datagram(f->a, dg, n, false, &f->from_b);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 0);
	assert_int_equal(f->a->c.drop_to_agent, 1);
	/* ARP answers that do not teach it: another address, the agent's
	 * own MAC, a sender MAC that is not the frame's */
	k = mob_build_arp(arp, sizeof(arp), 2, ifmac, other, other, stranger, ifmac, zero);
	from_segment(f, arp, (size_t)k);
	k = mob_build_arp(arp, sizeof(arp), 2, ifmac, other, host_mac, gw, ifmac, zero);
	from_segment(f, arp, (size_t)k);
	assert_false(f->a->host_mac_known);
	/* The host's port answers the probe. */
	k = mob_build_arp(arp, sizeof(arp), 2, ifmac, host_mac, host_mac, gw, ifmac, zero);
	from_segment(f, arp, (size_t)k);
	assert_true(f->a->host_mac_known);
	f->m.seg_frames = 0;
	mob_agent_datagram(f->a, dg, n, false, &f->from_b);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 1);
	assert_int_equal(f->a->c.to_host, 1);
	assert_int_equal(f->m.seg_last_len, n - 8);
	assert_memory_equal(f->m.seg_last, host_mac, 6);
	assert_memory_equal(f->m.seg_last + 6, dg + 8 + 6, n - 8 - 6);
	/* Frames to other MACs of the home segment go out unchanged. */
	n = tunnelled(dg, gw_mac, vm_mac);
	mob_agent_datagram(f->a, dg, n, false, &f->from_b);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 2);
	assert_memory_equal(f->m.seg_last, gw_mac, 6);
	/* Only from the VM's current site. */
	n = tunnelled(dg, ifmac, vm_mac);
	mob_agent_datagram(f->a, dg, n, false, &f->from_c);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 2);
	/* Probes go on, once a minute, to notice a new port. */
	f->m.seg_frames = 0;
	f->m.now += 61ull * 1000000000ull;
	(void)mob_agent_timers(f->a);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 2);
	fixture_free(f);
}

/* A frame from one away VM to another away VM at another site: the home
 * bridge has both MACs behind the agent; the agent sends it on. */
static void test_agent_hairpin(void **state)
{
	static const uint8_t vm2_mac[6] = { 0x52, 0x54, 0, 0x61, 0, 0x20 };
	struct fixture *f = fixture_new(false);
	const struct sockaddr_in *to = (const void *)&f->m.tun_to;
	uint8_t buf[MOB_BMSG_MAX], dg[128];
	struct mob_bmsg m;
	size_t n;
	int k;

	assert_int_equal(bu(f, "B", 1, 60, &f->from_b, key_ab, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	sample_bu(&m);
	strcpy(m.vm, "vm2");
	strcpy(m.sender, "C");
	strcpy(m.current, "C");
	memcpy(m.mac, vm2_mac, 6);
	m.n_addrs = 1;
	assert_int_equal(mob_parse_addr("10.61.1.20", &m.addrs[0]), 0);
	k = mob_bmsg_encode(&m, key_ac, buf, sizeof(buf));
	assert_int_equal(feed(f, buf, (size_t)k, &f->from_c, key_ac, NULL),
			 MOB_BA_ACCEPTED);
	f->m.seg_frames = f->m.tun_frames = 0;
	n = tunnelled(dg, vm2_mac, vm_mac);
	mob_agent_datagram(f->a, dg, n, false, &f->from_b);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames, 0);
	assert_int_equal(f->m.tun_frames, 1);
	assert_int_equal(f->a->c.hairpin, 1);
	assert_int_equal(ntohl(to->sin_addr.s_addr), 0xc0000203);	/* C */
	assert_memory_equal(f->m.tun_last, dg + 8, n - 8);
	/* Both at B: B delivers it there; nothing comes back. */
	m.seq++;
	strcpy(m.sender, "B");
	strcpy(m.current, "B");
	k = mob_bmsg_encode(&m, key_ab, buf, sizeof(buf));
	assert_int_equal(feed(f, buf, (size_t)k, &f->from_b, key_ab, NULL),
			 MOB_BA_ACCEPTED);
	f->m.seg_frames = f->m.tun_frames = 0;
	mob_agent_datagram(f->a, dg, n, false, &f->from_b);
	mob_agent_flush(f->a);
	assert_int_equal(f->m.seg_frames + f->m.tun_frames, 0);
	fixture_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_bmsg_round_trip),
		cmocka_unit_test(test_bmsg_forged_and_malformed),
		cmocka_unit_test(test_arp_build_parse),
		cmocka_unit_test(test_na_and_ns),
		cmocka_unit_test(test_csum_complete),
		cmocka_unit_test(test_gso_segment),
		cmocka_unit_test(test_gso_caps),
		cmocka_unit_test(test_vxlan),
		cmocka_unit_test(test_ctl_parse),
		cmocka_unit_test(test_text),
		cmocka_unit_test(test_agent_gso_bound),
		cmocka_unit_test(test_agent_flood),
		cmocka_unit_test(test_agent_replay_after_restart),
		cmocka_unit_test(test_agent_state_file),
		cmocka_unit_test(test_agent_pair_keys),
		cmocka_unit_test(test_agent_pair_key_rollover),
		cmocka_unit_test(test_agent_bu_limits),
		cmocka_unit_test(test_agent_to_host),
		cmocka_unit_test(test_agent_hairpin),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
