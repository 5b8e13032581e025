/*
 * net: codecs for Ethernet/ARP/ND frames, VXLAN headers and binding
 * messages. Every decoder reads through a bounded tsb_reader.
 */
#include "net/net.h"
#include "common/reader.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

#define ETH_P_IPV4 0x0800
#define ETH_P_ARP_ 0x0806
#define ETH_P_IPV6_ 0x86dd
#define ETH_P_VLAN 0x8100

static const uint8_t bcast[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

static int parse_arp(struct tsb_reader *r, struct mob_frame_info *f)
{
	const uint8_t *p;
	uint16_t htype, ptype, op;
	uint8_t hlen, plen;

	htype = tsb_get_be16(r);
	ptype = tsb_get_be16(r);
	hlen = tsb_get_u8(r);
	plen = tsb_get_u8(r);
	op = tsb_get_be16(r);
	if (r->err)
		return -EBADMSG;
	if (htype != 1 || ptype != ETH_P_IPV4 || hlen != 6 || plen != 4) {
		f->kind = MOB_FK_OTHER;
		return 0;
	}
	p = tsb_get_bytes(r, 20);
	if (!p)
		return -EBADMSG;
	memcpy(f->arp_sha, p, 6);
	memcpy(&f->arp_spa, p + 6, 4);
	memcpy(f->arp_tha, p + 10, 6);
	memcpy(&f->arp_tpa, p + 16, 4);
	if (op == 1)
		f->kind = MOB_FK_ARP_REQUEST;
	else if (op == 2)
		f->kind = MOB_FK_ARP_REPLY;
	else
		f->kind = MOB_FK_OTHER;
	return 0;
}

static int parse_ipv4(struct tsb_reader *r, struct mob_frame_info *f)
{
	const uint8_t *p = tsb_get_bytes(r, 20);
	unsigned ihl;

	if (!p)
		return -EBADMSG;
	ihl = (p[0] & 0x0f) * 4u;
	if ((p[0] >> 4) != 4 || ihl < 20)
		return -EBADMSG;
	if (ihl > 20)
		tsb_skip(r, ihl - 20);
	if (r->err)
		return -EBADMSG;
	memcpy(&f->ip4_src, p + 12, 4);
	memcpy(&f->ip4_dst, p + 16, 4);
	f->kind = MOB_FK_IPV4;
	return 0;
}

static int parse_ipv6(struct tsb_reader *r, struct mob_frame_info *f)
{
	const uint8_t *p = tsb_get_bytes(r, 40);
	const uint8_t *ns;
	uint16_t plen;

	if (!p)
		return -EBADMSG;
	if ((p[0] >> 4) != 6)
		return -EBADMSG;
	plen = tsb_load_be16(p + 4);
	memcpy(&f->ip6_src, p + 8, 16);
	memcpy(&f->ip6_dst, p + 24, 16);
	f->kind = MOB_FK_IPV6;
	/* Neighbour solicitation: ICMPv6 right after the header, type 135,
	 * hop limit 255 (RFC 4861 7.1.1). Extension headers: not an NS. */
	if (p[6] != 58 || p[7] != 255 || plen < 24 ||
	    plen > tsb_reader_remaining(r))
		return 0;
	ns = tsb_get_bytes(r, 24);
	if (!ns || ns[0] != 135 || ns[1] != 0)
		return r->err ? -EBADMSG : 0;
	memcpy(&f->ns_target, ns + 8, 16);
	f->kind = MOB_FK_NS;
	plen -= 24;
	while (plen >= 8) {
		const uint8_t *opt = tsb_get_bytes(r, 2);
		size_t olen;

		if (!opt || opt[1] == 0)
			return -EBADMSG;
		olen = opt[1] * 8u;
		if (olen > plen)
			return -EBADMSG;
		p = tsb_get_bytes(r, olen - 2);
		if (!p)
			return -EBADMSG;
		if (opt[0] == 1 && olen == 8) {
			memcpy(f->ns_sllao, p, 6);
			f->has_sllao = true;
		}
		plen -= olen;
	}
	return 0;
}

int mob_frame_parse(const uint8_t *frame, size_t len,
		    struct mob_frame_info *ret)
{
	struct mob_frame_info f;
	struct tsb_reader r;
	const uint8_t *p;
	int err = 0;

	memset(&f, 0, sizeof(f));
	tsb_reader_init(&r, frame, len);
	p = tsb_get_bytes(&r, 12);
	f.ethertype = tsb_get_be16(&r);
	if (r.err)
		return -EBADMSG;
	memcpy(f.dst, p, 6);
	memcpy(f.src, p + 6, 6);
	f.kind = MOB_FK_OTHER;
	switch (f.ethertype) {
	case ETH_P_ARP_:
		err = parse_arp(&r, &f);
		break;
	case ETH_P_IPV4:
		err = parse_ipv4(&r, &f);
		break;
	case ETH_P_IPV6_:
		err = parse_ipv6(&r, &f);
		break;
	default:
		break;
	}
	if (err)
		return err;
	*ret = f;
	return 0;
}

int mob_build_arp(uint8_t *buf, size_t cap, uint16_t op,
		  const uint8_t eth_dst[6], const uint8_t eth_src[6],
		  const uint8_t sha[6], struct in_addr spa,
		  const uint8_t tha[6], struct in_addr tpa)
{
	if (cap < 42)
		return -ENOSPC;
	memcpy(buf, eth_dst, 6);
	memcpy(buf + 6, eth_src, 6);
	tsb_put_be16(buf + 12, ETH_P_ARP_);
	tsb_put_be16(buf + 14, 1);
	tsb_put_be16(buf + 16, ETH_P_IPV4);
	buf[18] = 6;
	buf[19] = 4;
	tsb_put_be16(buf + 20, op);
	memcpy(buf + 22, sha, 6);
	memcpy(buf + 28, &spa, 4);
	memcpy(buf + 32, tha, 6);
	memcpy(buf + 38, &tpa, 4);
	return 42;
}

static uint32_t sum16(const uint8_t *p, size_t n, uint32_t acc)
{
	while (n > 1) {
		acc += (uint32_t)p[0] << 8 | p[1];
		p += 2;
		n -= 2;
	}
	if (n)
		acc += (uint32_t)p[0] << 8;
	return acc;
}

static uint16_t fold(uint32_t acc)
{
	while (acc >> 16)
		acc = (acc & 0xffff) + (acc >> 16);
	return (uint16_t)acc;
}

int mob_build_na(uint8_t *buf, size_t cap, const uint8_t eth_dst[6],
		 const uint8_t eth_src[6], const struct in6_addr *ip_src,
		 const struct in6_addr *ip_dst, const struct in6_addr *target,
		 bool solicited)
{
	const size_t icmp_len = 32;	/* NA 24 + TLLA option 8 */
	uint8_t *ip = buf + 14, *icmp = buf + 54;
	uint32_t acc;

	if (cap < 14 + 40 + icmp_len)
		return -ENOSPC;
	memcpy(buf, eth_dst, 6);
	memcpy(buf + 6, eth_src, 6);
	tsb_put_be16(buf + 12, ETH_P_IPV6_);
	memset(ip, 0, 40);
	ip[0] = 0x60;
	tsb_put_be16(ip + 4, icmp_len);
	ip[6] = 58;
	ip[7] = 255;
	memcpy(ip + 8, ip_src, 16);
	memcpy(ip + 24, ip_dst, 16);
	memset(icmp, 0, icmp_len);
	icmp[0] = 136;
	icmp[4] = (solicited ? 0x40 : 0) | 0x20;	/* S, O */
	memcpy(icmp + 8, target, 16);
	icmp[24] = 2;	/* target link-layer address */
	icmp[25] = 1;
	memcpy(icmp + 26, eth_src, 6);
	/* pseudo header: src, dst, length, next header */
	acc = sum16(ip + 8, 32, 0);
	acc += icmp_len;
	acc += 58;
	acc = sum16(icmp, icmp_len, acc);
	tsb_put_be16(icmp + 2, (uint16_t)~fold(acc));
	return (int)(14 + 40 + icmp_len);
}

int mob_csum_complete(uint8_t *frame, size_t len, uint16_t start,
		      uint16_t off)
{
	uint32_t acc;

	if (start >= len || (size_t)off + 2 > len - start)
		return -EBADMSG;
	/* The stack left the pseudo-header sum in the field: include it. */
	acc = sum16(frame + start, len - start, 0);
	tsb_put_be16(frame + start + off, (uint16_t)~fold(acc));
	return 0;
}

int mob_gso_prepare(const uint8_t *frame, size_t len, uint16_t mss,
		    struct mob_gso *ret)
{
	struct mob_gso g;
	struct tsb_reader r;
	const uint8_t *ip, *tcp;
	uint16_t et;
	size_t l3len;

	memset(&g, 0, sizeof(g));
	tsb_reader_init(&r, frame, len);
	tsb_skip(&r, 12);
	et = tsb_get_be16(&r);
	if (r.err)
		return -EBADMSG;
	g.l3 = MOB_ETH_HLEN;
	if (et == ETH_P_IPV4) {
		ip = tsb_get_bytes(&r, 20);
		if (!ip)
			return -EBADMSG;
		l3len = (ip[0] & 0x0f) * 4u;
		if ((ip[0] >> 4) != 4 || l3len < 20)
			return -EBADMSG;
		if (ip[9] != 6)
			return -EOPNOTSUPP;
		tsb_skip(&r, l3len - 20);
	} else if (et == ETH_P_IPV6_) {
		ip = tsb_get_bytes(&r, 40);
		if (!ip)
			return -EBADMSG;
		if (ip[6] != 6)
			return -EOPNOTSUPP;
		l3len = 40;
		g.v6 = true;
	} else {
		return -EOPNOTSUPP;
	}
	g.l4 = g.l3 + l3len;
	tcp = tsb_get_bytes(&r, 20);
	if (!tcp || (tcp[12] >> 4) < 5)
		return -EBADMSG;
	tsb_skip(&r, (tcp[12] >> 4) * 4u - 20);
	if (r.err)
		return -EBADMSG;
	g.hlen = r.pos;
	g.payload = len - g.hlen;
	if (!mss || g.hlen + mss > MOB_FRAME_MAX)
		return -EBADMSG;
	if (mss < MOB_GSO_MSS_MIN ||
	    g.payload > (size_t)MOB_GSO_SEGS_MAX * mss)
		return -EMSGSIZE;
	g.mss = mss;
	g.nseg = g.payload ? (unsigned)((g.payload + mss - 1) / mss) : 1;
	*ret = g;
	return (int)g.nseg;
}

int mob_gso_segment(const uint8_t *frame, const struct mob_gso *g,
		    unsigned idx, uint8_t *out, size_t cap)
{
	size_t off = (size_t)idx * g->mss, n, l4len;
	uint8_t *ip = out + g->l3, *tcp = out + g->l4;
	bool last = idx + 1 >= g->nseg;
	uint32_t acc;

	if (idx >= g->nseg)
		return -EINVAL;
	n = g->payload - off < g->mss ? g->payload - off : g->mss;
	if (g->hlen + n > cap)
		return -ENOSPC;
	memcpy(out, frame, g->hlen);
	memcpy(out + g->hlen, frame + g->hlen + off, n);
	l4len = g->hlen - g->l4 + n;
	if (g->v6) {
		tsb_put_be16(ip + 4, (uint16_t)l4len);
	} else {
		tsb_put_be16(ip + 2, (uint16_t)(g->l4 - g->l3 + l4len));
		tsb_put_be16(ip + 4, (uint16_t)(tsb_load_be16(ip + 4) + idx));
		ip[10] = ip[11] = 0;
		tsb_put_be16(ip + 10,
			     (uint16_t)~fold(sum16(ip, g->l4 - g->l3, 0)));
	}
	tsb_put_be32(tcp + 4, tsb_load_be32(tcp + 4) + (uint32_t)off);
	if (!last)
		tcp[13] &= (uint8_t)~0x09;	/* FIN, PSH: last segment only */
	if (idx)
		tcp[13] &= (uint8_t)~0x80;	/* CWR: first segment only */
	tcp[16] = tcp[17] = 0;
	if (g->v6)
		acc = sum16(ip + 8, 32, 0);
	else
		acc = sum16(ip + 12, 8, 0);
	acc += (uint32_t)l4len + 6;
	acc = sum16(tcp, l4len, acc);
	tsb_put_be16(tcp + 16, (uint16_t)~fold(acc));
	return (int)(g->hlen + n);
}

void mob_vxlan_put(uint8_t hdr[MOB_VXLAN_HLEN], uint32_t vni)
{
	hdr[0] = 0x08;
	hdr[1] = hdr[2] = hdr[3] = 0;
	tsb_put_be32(hdr + 4, (vni & 0xffffff) << 8);
}

int mob_vxlan_parse(const uint8_t *pkt, size_t len, uint32_t *ret_vni,
		    size_t *ret_off)
{
	struct tsb_reader r;
	uint8_t flags;
	uint32_t w;

	tsb_reader_init(&r, pkt, len);
	flags = tsb_get_u8(&r);
	tsb_skip(&r, 3);
	w = tsb_get_be32(&r);
	if (r.err || !(flags & 0x08))
		return -EBADMSG;
	if (tsb_reader_remaining(&r) < MOB_ETH_HLEN ||
	    tsb_reader_remaining(&r) > MOB_FRAME_MAX)
		return -EBADMSG;
	*ret_vni = w >> 8;
	*ret_off = MOB_VXLAN_HLEN;
	return 0;
}

/* ---- binding messages ---- */

static int put_str(uint8_t *buf, size_t cap, size_t *pos, const char *s,
		   size_t max)
{
	size_t n = strlen(s);

	if (n > max)
		return -EINVAL;
	if (*pos + 1 + n > cap)
		return -ENOSPC;
	buf[(*pos)++] = (uint8_t)n;
	memcpy(buf + *pos, s, n);
	*pos += n;
	return 0;
}

static int get_str(struct tsb_reader *r, char *out, size_t max, bool empty_ok)
{
	uint8_t n = tsb_get_u8(r);
	const uint8_t *p;
	size_t i;

	if (r->err || n > max || (!n && !empty_ok))
		return -EBADMSG;
	p = tsb_get_bytes(r, n);
	if (!p)
		return -EBADMSG;
	for (i = 0; i < n; i++) {
		if (!isalnum(p[i]) && p[i] != '.' && p[i] != '_' &&
		    p[i] != '-')
			return -EBADMSG;
	}
	memcpy(out, p, n);
	out[n] = '\0';
	return 0;
}

static int hmac(const uint8_t key[MOB_KEY_LEN], const uint8_t *p, size_t n,
		uint8_t out[MOB_HMAC_LEN])
{
	unsigned int olen = 0;

	if (!HMAC(EVP_sha256(), key, MOB_KEY_LEN, p, n, out, &olen) ||
	    olen != MOB_HMAC_LEN)
		return -EIO;
	return 0;
}

int mob_bmsg_encode(const struct mob_bmsg *m, const uint8_t key[MOB_KEY_LEN],
		    uint8_t *buf, size_t cap)
{
	size_t pos = 0;
	unsigned i;
	int err;

	if (m->n_addrs > MOB_ADDRS_MAX ||
	    (m->type != MOB_BU && m->type != MOB_BA))
		return -EINVAL;
	if (cap < 31)
		return -ENOSPC;
	memcpy(buf, MOB_BMSG_MAGIC, 4);
	buf[4] = MOB_BMSG_VERSION;
	buf[5] = (uint8_t)m->type;
	buf[6] = m->status;
	buf[7] = 0;
	tsb_put_be32(buf + 8, m->seq);
	tsb_put_be32(buf + 12, m->lifetime);
	tsb_put_be64(buf + 16, m->nonce);
	memcpy(buf + 24, m->mac, 6);
	buf[30] = (uint8_t)m->n_addrs;
	pos = 31;
	if ((err = put_str(buf, cap, &pos, m->sender, MOB_SITE_MAX)) ||
	    (err = put_str(buf, cap, &pos, m->vm, MOB_ID_MAX)) ||
	    (err = put_str(buf, cap, &pos, m->home, MOB_SITE_MAX)) ||
	    (err = put_str(buf, cap, &pos, m->current, MOB_SITE_MAX)))
		return err;
	for (i = 0; i < m->n_addrs; i++) {
		const struct mob_addr *a = &m->addrs[i];
		size_t n = a->family == AF_INET ? 4 : 16;

		if (a->family != AF_INET && a->family != AF_INET6)
			return -EINVAL;
		if (pos + 1 + n > cap)
			return -ENOSPC;
		buf[pos++] = a->family == AF_INET ? 4 : 6;
		memcpy(buf + pos, a->family == AF_INET ? (const void *)&a->v4 :
		       (const void *)&a->v6, n);
		pos += n;
	}
	if (pos + MOB_HMAC_LEN > cap)
		return -ENOSPC;
	err = hmac(key, buf, pos, buf + pos);
	if (err)
		return err;
	return (int)(pos + MOB_HMAC_LEN);
}

bool mob_bmsg_is(const uint8_t *pkt, size_t len)
{
	return len >= 4 && !memcmp(pkt, MOB_BMSG_MAGIC, 4);
}

int mob_bmsg_decode(const uint8_t *pkt, size_t len,
		    const uint8_t key[MOB_KEY_LEN], struct mob_bmsg *ret)
{
	struct mob_bmsg m;
	struct tsb_reader r;
	const uint8_t *p;
	uint8_t ver, flags;
	unsigned i;
	size_t body;

	if (len > MOB_BMSG_MAX || len < 31 + 4 + MOB_HMAC_LEN ||
	    !mob_bmsg_is(pkt, len))
		return -EBADMSG;
	body = len - MOB_HMAC_LEN;
	memset(&m, 0, sizeof(m));
	tsb_reader_init(&r, pkt, body);
	tsb_skip(&r, 4);
	ver = tsb_get_u8(&r);
	m.type = tsb_get_u8(&r);
	m.status = tsb_get_u8(&r);
	flags = tsb_get_u8(&r);
	if (r.err)
		return -EBADMSG;
	if (ver != MOB_BMSG_VERSION || (m.type != MOB_BU && m.type != MOB_BA) ||
	    flags)
		return -EOPNOTSUPP;
	m.seq = tsb_get_be32(&r);
	m.lifetime = tsb_get_be32(&r);
	m.nonce = tsb_get_be64(&r);
	p = tsb_get_bytes(&r, 6);
	m.n_addrs = tsb_get_u8(&r);
	if (r.err || m.n_addrs > MOB_ADDRS_MAX)
		return -EBADMSG;
	memcpy(m.mac, p, 6);
	if (get_str(&r, m.sender, MOB_SITE_MAX, false) ||
	    get_str(&r, m.vm, MOB_ID_MAX, false) ||
	    get_str(&r, m.home, MOB_SITE_MAX, true) ||
	    get_str(&r, m.current, MOB_SITE_MAX, true))
		return -EBADMSG;
	for (i = 0; i < m.n_addrs; i++) {
		uint8_t fam = tsb_get_u8(&r);

		if (fam == 4) {
			p = tsb_get_bytes(&r, 4);
			if (!p)
				return -EBADMSG;
			m.addrs[i].family = AF_INET;
			memcpy(&m.addrs[i].v4, p, 4);
		} else if (fam == 6) {
			p = tsb_get_bytes(&r, 16);
			if (!p)
				return -EBADMSG;
			m.addrs[i].family = AF_INET6;
			memcpy(&m.addrs[i].v6, p, 16);
		} else {
			return -EBADMSG;
		}
	}
	if (r.err || tsb_reader_remaining(&r))
		return -EBADMSG;
	if (key) {
		int err = mob_bmsg_verify(pkt, len, key);

		if (err)
			return err;
	}
	*ret = m;
	return 0;
}

int mob_bmsg_verify(const uint8_t *pkt, size_t len,
		    const uint8_t key[MOB_KEY_LEN])
{
	uint8_t mac[MOB_HMAC_LEN];
	size_t body;

	if (len < MOB_HMAC_LEN || len > MOB_BMSG_MAX)
		return -EBADMSG;
	body = len - MOB_HMAC_LEN;
	if (hmac(key, pkt, body, mac))
		return -EIO;
	if (CRYPTO_memcmp(mac, pkt + body, MOB_HMAC_LEN))
		return -EACCES;
	return 0;
}

/* ---- text ---- */

int mob_parse_mac(const char *s, uint8_t ret[6])
{
	unsigned v[6];
	char tail;
	int i;

	if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x%c", &v[0], &v[1], &v[2],
		   &v[3], &v[4], &v[5], &tail) != 6 || strlen(s) != 17)
		return -EINVAL;
	for (i = 0; i < 6; i++)
		ret[i] = (uint8_t)v[i];
	return 0;
}

void mob_format_mac(const uint8_t m[6], char out[18])
{
	snprintf(out, 18, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2],
		 m[3], m[4], m[5]);
}

int mob_parse_addr(const char *s, struct mob_addr *ret)
{
	struct mob_addr a;

	memset(&a, 0, sizeof(a));
	if (inet_pton(AF_INET, s, &a.v4) == 1)
		a.family = AF_INET;
	else if (inet_pton(AF_INET6, s, &a.v6) == 1)
		a.family = AF_INET6;
	else
		return -EINVAL;
	*ret = a;
	return 0;
}

bool mob_name_ok(const char *s, size_t max)
{
	size_t i, n = strlen(s);

	if (!n || n > max)
		return false;
	for (i = 0; i < n; i++) {
		if (!isalnum((unsigned char)s[i]) && s[i] != '.' &&
		    s[i] != '_' && s[i] != '-')
			return false;
	}
	return true;
}

bool mob_mac_is_broadcast(const uint8_t mac[6])
{
	return !memcmp(mac, bcast, 6);
}
