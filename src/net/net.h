/*
 * net: the mobility agent that keeps a migrated VM reachable at its home
 * addresses (docs/network.md). Frame, VXLAN and binding-message codecs,
 * the control protocol, and the agent's event loop.
 *
 * Every decoder here takes untrusted bytes, checks lengths before reading
 * (common/reader.h) and returns -EBADMSG on malformed input.
 */
#ifndef TSB_NET_H
#define TSB_NET_H

#include <jansson.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MOB_VXLAN_PORT 4789
#define MOB_VXLAN_HLEN 8
#define MOB_ETH_HLEN 14
#define MOB_FRAME_MAX 1522	/* Ethernet frame without FCS, one VLAN tag */
#define MOB_ID_MAX 64		/* VM identifier */
#define MOB_SITE_MAX 32		/* site name */
#define MOB_ADDRS_MAX 8		/* addresses per VM */
#define MOB_KEY_LEN 32		/* HMAC-SHA256 key */
#define MOB_HMAC_LEN 32
#define MOB_BMSG_MAX 512	/* largest binding message */
#define MOB_CTL_LINE_MAX 4096	/* largest control request line */

/* ---- Ethernet, ARP, IPv6 neighbour discovery ---- */

enum mob_frame_kind {
	MOB_FK_OTHER,
	MOB_FK_ARP_REQUEST,
	MOB_FK_ARP_REPLY,
	MOB_FK_IPV4,
	MOB_FK_NS,		/* ICMPv6 neighbour solicitation */
	MOB_FK_IPV6,		/* any other IPv6 */
};

/* What the agent needs to know about one frame; views into nothing. */
struct mob_frame_info {
	uint8_t dst[6], src[6];
	uint16_t ethertype;
	enum mob_frame_kind kind;
	/* ARP (kind ARP_*): sender/target hardware and protocol addresses */
	uint8_t arp_sha[6], arp_tha[6];
	struct in_addr arp_spa, arp_tpa;
	/* IPv4 */
	struct in_addr ip4_src, ip4_dst;
	/* IPv6; ns_target for MOB_FK_NS; ns_sllao is the source link-layer
	 * option when has_sllao */
	struct in6_addr ip6_src, ip6_dst, ns_target;
	uint8_t ns_sllao[6];
	bool has_sllao;
};

/*
 * Parses an Ethernet frame of len bytes. 0, or -EBADMSG when the frame or
 * a recognised payload (ARP, IPv4, IPv6 NS) is truncated or inconsistent.
 * *ret is written only on success.
 */
int mob_frame_parse(const uint8_t *frame, size_t len,
		    struct mob_frame_info *ret);

static inline bool mob_mac_is_multicast(const uint8_t mac[6])
{
	return mac[0] & 1;
}

/* True for ff:ff:ff:ff:ff:ff. */
bool mob_mac_is_broadcast(const uint8_t mac[6]);

/*
 * Builds an ARP frame (Ethernet header + 28-byte ARP) into buf (cap bytes,
 * at least 42). op is 1 (request) or 2 (reply). Returns the length or
 * -ENOSPC.
 */
int mob_build_arp(uint8_t *buf, size_t cap, uint16_t op,
		  const uint8_t eth_dst[6], const uint8_t eth_src[6],
		  const uint8_t sha[6], struct in_addr spa,
		  const uint8_t tha[6], struct in_addr tpa);

/*
 * Builds an ICMPv6 neighbour advertisement for target, from eth_src/ip_src
 * to eth_dst/ip_dst, with flags (bit 30 = solicited, bit 29 = override) and
 * a target link-layer address option carrying eth_src. Checksummed.
 * Returns the length or -ENOSPC (needs 86 bytes).
 */
int mob_build_na(uint8_t *buf, size_t cap, const uint8_t eth_dst[6],
		 const uint8_t eth_src[6], const struct in6_addr *ip_src,
		 const struct in6_addr *ip_dst, const struct in6_addr *target,
		 bool solicited);

/*
 * Completes a partial checksum (virtio-net NEEDS_CSUM): sums frame bytes
 * from start to the end, folds, and stores the complement at start+off.
 * -EBADMSG when start/off do not fit inside len.
 */
int mob_csum_complete(uint8_t *frame, size_t len, uint16_t start,
		      uint16_t off);

/*
 * Software segmentation of a TCP super-frame (GSO/TSO: what a guest or a
 * veth hands over before the NIC would cut it). mob_gso_prepare() checks
 * the Ethernet/IPv4-or-IPv6/TCP headers of frame (len bytes) and the
 * segment size; on success it fills *ret and returns the number of
 * segments (1..MOB_GSO_SEGS_MAX), else -EBADMSG (malformed), -EOPNOTSUPP
 * (not TCP over IPv4/IPv6 without extension headers) or -EMSGSIZE (segment
 * size below MOB_GSO_MSS_MIN, or more than MOB_GSO_SEGS_MAX segments: the
 * segment size comes from the guest, and a tiny one would turn one frame
 * into tens of thousands). mob_gso_segment() writes segment idx (complete,
 * checksummed) into out (cap bytes) and returns its length or -ENOSPC.
 * Neither keeps a pointer to frame.
 */
#define MOB_GSO_MSS_MIN 536	/* RFC 1122's default MSS: every host takes it */
#define MOB_GSO_SEGS_MAX 128	/* 64 KiB at MOB_GSO_MSS_MIN is 123 */
struct mob_gso {
	size_t l3, l4, hlen;	/* offsets of IP and TCP, header length */
	size_t payload, mss;
	bool v6;
	unsigned nseg;
};

int mob_gso_prepare(const uint8_t *frame, size_t len, uint16_t mss,
		    struct mob_gso *ret);
int mob_gso_segment(const uint8_t *frame, const struct mob_gso *g,
		    unsigned idx, uint8_t *out, size_t cap);

/* ---- VXLAN (RFC 7348) ---- */

/* Writes the 8-byte VXLAN header (I flag, 24-bit vni). */
void mob_vxlan_put(uint8_t hdr[MOB_VXLAN_HLEN], uint32_t vni);
/*
 * Decodes a VXLAN datagram: checks the I flag and the minimal inner frame
 * length. On success *ret_vni, *ret_off (offset of the inner frame) are
 * written. -EBADMSG otherwise.
 */
int mob_vxlan_parse(const uint8_t *pkt, size_t len, uint32_t *ret_vni,
		    size_t *ret_off);

/* ---- Binding messages (UDP, beside VXLAN on the same port) ---- */

#define MOB_BMSG_MAGIC "TSBN"
#define MOB_BMSG_VERSION 1

enum mob_bmsg_type {
	MOB_BU = 1,	/* binding update: current site -> home agent */
	MOB_BA = 2,	/* binding acknowledgement: home -> current */
};

/* Binding acknowledgement status, numbered as in Mobile IPv6 (RFC 6275). */
enum mob_ba_status {
	MOB_BA_ACCEPTED = 0,
	MOB_BA_REASON_UNSPEC = 128,
	MOB_BA_NOT_HOME_AGENT = 131,	/* we are not this VM's home */
	MOB_BA_SEQ_OUT_OF_WINDOW = 135,	/* seq carries the last accepted */
};

struct mob_addr {
	int family;			/* AF_INET or AF_INET6 */
	union {
		struct in_addr v4;
		struct in6_addr v6;
	};
};

/* A decoded binding message. Strings are NUL-terminated copies. */
struct mob_bmsg {
	enum mob_bmsg_type type;
	uint8_t status;			/* BA */
	uint32_t seq;
	uint32_t lifetime;		/* seconds; 0 = deregistration */
	uint64_t nonce;			/* echoed by the BA */
	char sender[MOB_SITE_MAX + 1];	/* site that sent the message */
	char vm[MOB_ID_MAX + 1];
	char home[MOB_SITE_MAX + 1];
	char current[MOB_SITE_MAX + 1];	/* care-of site (BU) */
	uint8_t mac[6];
	unsigned n_addrs;
	struct mob_addr addrs[MOB_ADDRS_MAX];
};

/*
 * Encodes m and appends HMAC-SHA256(key, message) into buf (cap bytes).
 * Returns the length, -EINVAL for out-of-range fields or -ENOSPC.
 */
int mob_bmsg_encode(const struct mob_bmsg *m, const uint8_t key[MOB_KEY_LEN],
		    uint8_t *buf, size_t cap);
/* True when pkt starts like a binding message (magic). */
bool mob_bmsg_is(const uint8_t *pkt, size_t len);
/*
 * Decodes and authenticates a binding message. -EBADMSG malformed,
 * -EOPNOTSUPP unknown version or type, -EACCES HMAC mismatch (forged or
 * another key). key NULL skips authentication (fuzzing, inspection).
 * *ret is written only on success.
 */
int mob_bmsg_decode(const uint8_t *pkt, size_t len,
		    const uint8_t key[MOB_KEY_LEN], struct mob_bmsg *ret);
/*
 * Checks the HMAC of a binding message that mob_bmsg_decode() (key NULL)
 * accepted: 0, -EACCES when it does not verify under key, -EBADMSG when
 * too short.
 */
int mob_bmsg_verify(const uint8_t *pkt, size_t len,
		    const uint8_t key[MOB_KEY_LEN]);

/* ---- Text helpers ---- */

int mob_parse_mac(const char *s, uint8_t ret[6]);
void mob_format_mac(const uint8_t mac[6], char out[18]);
/* Parses an IPv4 or IPv6 address (no prefix). */
int mob_parse_addr(const char *s, struct mob_addr *ret);
/* Checks a site name or VM id: 1..max of [A-Za-z0-9._-]. */
bool mob_name_ok(const char *s, size_t max);

/* ---- Control protocol (JSON lines on a unix socket) ---- */

enum mob_ctl_op {
	MOB_CTL_ARRIVE,		/* VM now runs at this site */
	MOB_CTL_DEPART,		/* VM left this site */
	MOB_CTL_BIND,		/* install a binding by hand */
	MOB_CTL_UNBIND,		/* remove a binding */
	MOB_CTL_STATUS,		/* list bindings and counters */
};

struct mob_ctl_req {
	enum mob_ctl_op op;
	char vm[MOB_ID_MAX + 1];
	uint8_t mac[6];
	bool has_mac;
	unsigned n_addrs;
	struct mob_addr addrs[MOB_ADDRS_MAX];
	char home[MOB_SITE_MAX + 1];
	char current[MOB_SITE_MAX + 1];
	uint32_t lifetime;		/* 0 = agent default */
	uint32_t seq;			/* 0 = agent chooses */
	uint32_t wait_ms;		/* arrive: wait for the BA (0 = don't) */
	bool when_seen;			/* arrive: act on the VM's first frame */
};

/*
 * Parses one request line (len bytes, no newline needed). 0, -EMSGSIZE
 * over MOB_CTL_LINE_MAX, -EBADMSG with a reason in err (errlen bytes).
 */
int mob_ctl_parse(const char *line, size_t len, struct mob_ctl_req *ret,
		  char *err, size_t errlen);

/* ---- The agent ---- */

#define MOB_PEERS_MAX 16
#define MOB_DIRECT_MAX 8

struct mob_peer {
	char name[MOB_SITE_MAX + 1];
	struct sockaddr_storage addr;	/* agent's VXLAN/binding address */
	socklen_t addrlen;
	uint8_t key[MOB_KEY_LEN];	/* key of this site pair: signs, verifies */
	/* Key rollover: the second line of the key file, which verifies too. */
	bool has_alt;
	uint8_t alt_key[MOB_KEY_LEN];
};

/* Site-local delivery: IPv4 prefix reached through next-hop MAC. */
struct mob_direct {
	struct in_addr net;
	uint32_t mask;			/* host order */
	uint8_t mac[6];
};

struct mob_agent_config {
	const char *site;		/* this site's name */
	const char *dev;		/* interface on the site segment */
	const char *listen;		/* UDP host:port (VXLAN + bindings) */
	const char *control;		/* unix socket path */
	const char *state_dir;		/* NULL: nothing kept across restarts */
	uint32_t vni;
	uint32_t lifetime;		/* default binding lifetime, s */
	uint32_t retrans_ms;		/* first BU retransmission */
	unsigned n_peers;
	struct mob_peer peers[MOB_PEERS_MAX];
	unsigned n_direct;
	struct mob_direct direct[MOB_DIRECT_MAX];
};

/*
 * Runs the agent until SIGINT/SIGTERM. Returns 0 after a clean stop or a
 * negative errno on a setup failure (logged). cfg is borrowed.
 */
int mob_agent_run(const struct mob_agent_config *cfg);

/*
 * Sends one request (reference stolen) to an agent's control socket and
 * reads its reply line into *ret_reply (owned; set also when the agent
 * said ok:false). 0 when the agent said ok, -EREMOTEIO when it refused,
 * other -errno when it could not be asked; err explains.
 */
int mob_ctl_call(const char *path, json_t *req, unsigned timeout_ms, json_t **ret_reply,
		 char *err, size_t errlen);

#endif
