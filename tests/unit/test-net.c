/* Unit tests of the mobility agent's codecs (src/net). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>

#include "net/net.h"

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
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
