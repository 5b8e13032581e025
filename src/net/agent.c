/*
 * net: the mobility agent's state machine (agent.h): the binding table,
 * frames from the site segment and the tunnel, binding messages, control
 * requests, timers and the state file. No sockets here: run.c feeds it and
 * sends what it queues (struct mob_io). See docs/network.md.
 *
 * Everything from the network or a guest is untrusted: a refusal is
 * counted, logged at most MOB_LOG_BURST times a minute per kind, and
 * changes no binding.
 */
#include "net/agent.h"
#include "common/log.h"
#include "common/reader.h"
#include "common/util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <openssl/rand.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BU_TRIES_MAX 10
#define RTO_MAX_MS 2000
#define NS_PER_MS 1000000ull
#define NS_PER_S 1000000000ull
#define LIFETIME_MAX 86400u	/* longest binding a home agent grants, s */
#define STATE_VERSION 1
#define PROBE_FIRST_NS NS_PER_S		/* host port unknown: probe after 1 s, */
#define PROBE_MAX_NS (60 * NS_PER_S)	/* doubling up to a minute; known: every minute */

static const char *const state_names[] = {
	"free", "home", "away", "visiting", "expected",
};

static const char *const rl_what[MOB_RL_COUNT] = {
	[MOB_RL_BAD_DGRAM] = "truncated or malformed datagrams",
	[MOB_RL_BAD_BMSG] = "malformed binding messages",
	[MOB_RL_FORGED] = "forged binding messages",
	[MOB_RL_SPOOFED] = "binding messages from an unknown site or a wrong address",
	[MOB_RL_STALE] = "stale binding updates",
	[MOB_RL_REFUSED] = "refused binding updates",
	[MOB_RL_UNKNOWN_PEER] = "tunnel datagrams from addresses that are no peer",
	[MOB_RL_VNI] = "tunnel datagrams with another VNI",
	[MOB_RL_GSO] = "refused offloaded frames",
	[MOB_RL_BAD_FRAME] = "malformed frames",
	[MOB_RL_STATE] = "state file errors",
	[MOB_RL_TO_AGENT] = "frames from away VMs to this agent's own MAC, dropped (the host's port on the segment is not known)",
};

static const uint8_t zero_vnet[MOB_VNET_HLEN];
static const uint8_t bcast_mac[6] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };
static const uint8_t zero_mac[6];

static uint64_t now_ns(struct mob_agent *a)
{
	return a->io.now(a->io.ctx);
}

/* a is newer than b, modulo 2^32 (RFC 1982, as RFC 6275 9.5.1 does with
 * its 16-bit numbers): no value locks a VM out for good. */
static bool seq_newer(uint32_t a, uint32_t b)
{
	return (int32_t)(a - b) > 0;
}

/* ---- rate-limited logging of refusals ---- */

static void rl_close(struct mob_agent *a, enum mob_rl k, uint64_t t)
{
	struct mob_ratelog *r = &a->rl[k];

	if (r->suppressed)
		log_warn("%llu more %s in the last %llu s, not logged (at most %d of each kind a minute are)",
			 (unsigned long long)r->suppressed, rl_what[k],
			 (unsigned long long)((t - r->start_ns) / NS_PER_S),
			 MOB_LOG_BURST);
	r->logged = 0;
	r->suppressed = 0;
}

/* True when one more refusal of kind k may be logged now. */
static bool rl(struct mob_agent *a, enum mob_rl k)
{
	struct mob_ratelog *r = &a->rl[k];
	uint64_t t = now_ns(a);

	if (r->logged && t - r->start_ns >= MOB_LOG_WINDOW_NS)
		rl_close(a, k, t);
	if (!r->logged)
		r->start_ns = t;
	if (r->logged < MOB_LOG_BURST) {
		r->logged++;
		return true;
	}
	r->suppressed++;
	a->c.log_suppressed++;
	return false;
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

static struct mob_binding *find_vm(struct mob_agent *a, const char *vm)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state != MOB_B_FREE && !strcmp(a->b[i].vm, vm))
			return &a->b[i];
	return NULL;
}

static struct mob_binding *find_mac(struct mob_agent *a, const uint8_t mac[6],
				    enum mob_bstate st)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state == st && !memcmp(a->b[i].mac, mac, 6))
			return &a->b[i];
	return NULL;
}

/* Another VM's binding that forwards or delivers frames of this MAC. */
static struct mob_binding *mac_in_use(struct mob_agent *a, const uint8_t mac[6],
				      const char *vm)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		struct mob_binding *b = &a->b[i];

		if ((b->state == MOB_B_HOME_AWAY || b->state == MOB_B_VISIT ||
		     b->state == MOB_B_EXPECT) && strcmp(b->vm, vm) &&
		    !memcmp(b->mac, mac, 6))
			return b;
	}
	return NULL;
}

static struct mob_binding *find_away_addr(struct mob_agent *a, int family,
					  const void *addr)
{
	unsigned i, j;

	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		struct mob_binding *b = &a->b[i];

		if (b->state != MOB_B_HOME_AWAY)
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

static struct mob_binding *alloc_binding(struct mob_agent *a, const char *vm)
{
	struct mob_binding *b = find_vm(a, vm);
	unsigned i;

	if (b)
		return b;
	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		if (a->b[i].state == MOB_B_FREE) {
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

static int peer_by_name(struct mob_agent *a, const char *name)
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

static int peer_by_addr(struct mob_agent *a, const struct sockaddr_storage *ss)
{
	unsigned i;

	for (i = 0; i < a->cfg->n_peers; i++)
		if (same_ip(ss, &a->cfg->peers[i].addr))
			return (int)i;
	return -1;
}

/* ---- the state file: what the home agent accepted, across restarts ---- */

static json_t *addrs_json(const struct mob_binding *b)
{
	char ip[INET6_ADDRSTRLEN];
	json_t *addrs = json_array();
	unsigned i;

	for (i = 0; i < b->n_addrs; i++) {
		inet_ntop(b->addrs[i].family, &b->addrs[i].v6, ip, sizeof(ip));
		json_array_append_new(addrs, json_string(ip));
	}
	return addrs;
}

/*
 * Writes the home-side bindings (sequence numbers, nonces, and where the
 * away ones point) through io.save. 0 without a state file. A failure is
 * counted and logged; the caller decides what it may still do.
 */
static int persist(struct mob_agent *a)
{
	uint64_t t = now_ns(a), wall = a->io.wall(a->io.ctx) / NS_PER_S;
	json_t *root, *vms;
	char *text;
	unsigned i;
	int err;

	if (!a->io.save)
		return 0;
	vms = json_array();
	if (!vms) {
		err = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		const struct mob_binding *b = &a->b[i];
		char mac[18], nonce[17];
		json_t *e;

		if (b->state != MOB_B_HOME_IDLE && b->state != MOB_B_HOME_AWAY)
			continue;
		mob_format_mac(b->mac, mac);
		snprintf(nonce, sizeof(nonce), "%016llx",
			 (unsigned long long)b->nonce);
		e = json_pack("{s:s, s:s, s:I, s:s, s:s, s:o}",
			      "vm", b->vm, "state", state_names[b->state],
			      "seq", (json_int_t)b->seq, "nonce", nonce,
			      "mac", mac, "addrs", addrs_json(b));
		if (e && b->state == MOB_B_HOME_AWAY) {
			uint64_t exp = 0;

			if (b->expires_ns)	/* round up: never early */
				exp = wall + (b->expires_ns > t ?
					(b->expires_ns - t + NS_PER_S - 1) / NS_PER_S : 0);
			json_object_set_new(e, "current", json_string(b->current));
			json_object_set_new(e, "lifetime", json_integer(b->lifetime));
			json_object_set_new(e, "expires", json_integer((json_int_t)exp));
			json_object_set_new(e, "manual", json_boolean(b->manual));
		}
		if (!e || json_array_append_new(vms, e)) {
			json_decref(vms);
			err = -ENOMEM;
			goto fail;
		}
	}
	root = json_pack("{s:i, s:s, s:I, s:o}", "version", STATE_VERSION,
			 "site", a->cfg->site, "saved", (json_int_t)wall,
			 "vms", vms);
	text = root ? json_dumps(root, JSON_INDENT(1)) : NULL;
	json_decref(root);
	if (!text) {
		err = -ENOMEM;
		goto fail;
	}
	err = a->io.save(a->io.ctx, text, strlen(text));
	free(text);
	if (!err)
		return 0;
fail:
	a->c.state_errors++;
	if (rl(a, MOB_RL_STATE))
		log_error("cannot write the state file in %s: %s",
			  a->cfg->state_dir ? a->cfg->state_dir : "?",
			  strerror(-err));
	return err;
}

static int load_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int load_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EBADMSG;
}

static void announce(struct mob_agent *a, struct mob_binding *b);

static int load_entry(struct mob_agent *a, json_t *e, uint64_t t,
		      uint64_t wall, char *err, size_t errlen)
{
	const char *vm, *state, *nonce, *mac, *current = NULL;
	json_int_t seq, lifetime = 0, expires = 0;
	json_t *addrs;
	int manual = 0;
	struct mob_binding *b;
	unsigned long long nv;
	char tail;
	size_t i;

	if (json_unpack(e, "{s:s, s:s, s:I, s:s, s:s, s:o, s?s, s?I, s?I, s?b}",
			"vm", &vm, "state", &state, "seq", &seq,
			"nonce", &nonce, "mac", &mac, "addrs", &addrs,
			"current", &current, "lifetime", &lifetime,
			"expires", &expires, "manual", &manual))
		return load_err(err, errlen, "an entry lacks a field or has one of the wrong type");
	if (!mob_name_ok(vm, MOB_ID_MAX))
		return load_err(err, errlen, "bad vm id");
	if (find_vm(a, vm))
		return load_err(err, errlen, "vm '%s' twice", vm);
	b = alloc_binding(a, vm);
	if (!b)
		return load_err(err, errlen, "more than %d vms", MOB_BINDINGS_MAX);
	if (seq < 0 || seq > UINT32_MAX || strlen(nonce) != 16 ||
	    sscanf(nonce, "%16llx%c", &nv, &tail) != 1 ||
	    mob_parse_mac(mac, b->mac) || !json_is_array(addrs) ||
	    json_array_size(addrs) > MOB_ADDRS_MAX || lifetime < 0 ||
	    lifetime > LIFETIME_MAX || expires < 0)
		return load_err(err, errlen, "vm '%s': a field is out of range", vm);
	for (i = 0; i < json_array_size(addrs); i++) {
		const char *s = json_string_value(json_array_get(addrs, i));

		if (!s || mob_parse_addr(s, &b->addrs[i]))
			return load_err(err, errlen, "vm '%s': bad address", vm);
	}
	b->n_addrs = (unsigned)json_array_size(addrs);
	b->seq = (uint32_t)seq;
	b->nonce = nv;
	snprintf(b->home, sizeof(b->home), "%s", a->cfg->site);
	b->state = MOB_B_HOME_IDLE;
	if (!strcmp(state, "home"))
		return 0;
	if (strcmp(state, "away") || !current ||
	    !mob_name_ok(current, MOB_SITE_MAX))
		return load_err(err, errlen, "vm '%s': bad state", vm);
	b->peer = peer_by_name(a, current);
	if (b->peer < 0) {
		log_notice("vm '%s' was away at site '%s', which is no peer now: delivering at home (seq %u kept)",
			   vm, current, b->seq);
		return 0;
	}
	if (expires && (uint64_t)expires <= wall) {
		log_notice("the binding of vm '%s' at site '%s' expired while the agent was down: delivering at home (seq %u kept)",
			   vm, current, b->seq);
		b->peer = -1;
		return 0;
	}
	b->state = MOB_B_HOME_AWAY;
	snprintf(b->current, sizeof(b->current), "%s", current);
	b->lifetime = (uint32_t)lifetime;
	b->manual = manual;
	b->acked = true;
	if (expires) {
		/* never longer than it was granted (the clock may have
		 * been set back) */
		uint64_t left = (uint64_t)expires - wall, max = lifetime ?
			(uint64_t)lifetime : LIFETIME_MAX;

		b->expires_ns = t + (left < max ? left : max) * NS_PER_S;
	}
	log_notice("vm '%s' is away at site '%s' (seq %u, restored): proxying and tunnelling",
		   vm, current, b->seq);
	return 0;
}

int mob_agent_load(struct mob_agent *a, const char *text, size_t len,
		   char *err, size_t errlen)
{
	uint64_t t = now_ns(a), wall = a->io.wall(a->io.ctx) / NS_PER_S;
	json_t *root, *vms;
	const char *site;
	json_int_t version;
	json_error_t jerr;
	int rc = -EBADMSG;
	size_t i;

	if (len > MOB_STATE_MAX)
		return load_err(err, errlen, "larger than %u bytes", MOB_STATE_MAX);
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return load_err(err, errlen, "not JSON (line %d: %s)", jerr.line,
				jerr.text);
	if (json_unpack(root, "{s:I, s:s, s:o}", "version", &version,
			"site", &site, "vms", &vms) || !json_is_array(vms)) {
		load_err(err, errlen, "lacks version, site or vms");
		goto out;
	}
	if (version != STATE_VERSION) {
		load_err(err, errlen, "version %lld, this agent knows %d",
			 (long long)version, STATE_VERSION);
		goto out;
	}
	if (strcmp(site, a->cfg->site)) {
		load_err(err, errlen, "it belongs to site '%.32s', this agent is site '%s'",
			 site, a->cfg->site);
		goto out;
	}
	for (i = 0; i < json_array_size(vms); i++)
		if ((rc = load_entry(a, json_array_get(vms, i), t, wall, err,
				     errlen)))
			goto out;
	rc = 0;
	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state == MOB_B_HOME_AWAY)
			announce(a, &a->b[i]);
out:
	if (rc)
		for (i = 0; i < MOB_BINDINGS_MAX; i++)
			a->b[i].state = MOB_B_FREE;
	json_decref(root);
	return rc;
}

/* ---- output batches ---- */

static void flush_q(struct mob_agent *a, struct mob_batch *q, bool seg)
{
	unsigned done = 0;

	while (done < q->n) {
		int n = seg ? a->io.send_segment(a->io.ctx, q->msg + done,
						 q->n - done) :
			a->io.send_tunnel(a->io.ctx, q->msg + done, q->n - done);

		if (n <= 0) {
			/* a full queue or a dead route: drop the rest */
			a->c.drop_tx += q->n - done;
			break;
		}
		done += (unsigned)n;
		if (seg)
			a->c.seg_tx += (uint64_t)n;
		else
			a->c.tun_tx += (uint64_t)n;
	}
	q->n = 0;
}

/* Sends what is queued. Buffers of gen[] and seg[] stay allocated until
 * mob_agent_flush(): a frame being built when a queue fills must survive. */
static void flush_all(struct mob_agent *a)
{
	if (a->seg_out.n)
		flush_q(a, &a->seg_out, true);
	if (a->tun_out.n)
		flush_q(a, &a->tun_out, false);
}

void mob_agent_flush(struct mob_agent *a)
{
	flush_all(a);
	a->n_gen = 0;
	a->n_seg = 0;
}

/* Queues a frame for the segment; it must stay valid until flush_all(). */
static void to_segment(struct mob_agent *a, const uint8_t *frame, size_t len)
{
	struct mob_batch *q = &a->seg_out;
	unsigned i;

	if (q->n == MOB_BATCH)
		flush_all(a);
	i = q->n++;
	q->iov[i][0].iov_base = (void *)zero_vnet;
	q->iov[i][0].iov_len = MOB_VNET_HLEN;
	q->iov[i][1].iov_base = (void *)frame;
	q->iov[i][1].iov_len = len;
	memset(&q->msg[i], 0, sizeof(q->msg[i]));
	q->msg[i].msg_hdr.msg_iov = q->iov[i];
	q->msg[i].msg_hdr.msg_iovlen = 2;
}

/* Queues a frame for the tunnel to peer p; same lifetime rule. */
static void to_tunnel(struct mob_agent *a, int p, const uint8_t *frame,
		      size_t len)
{
	struct mob_batch *q = &a->tun_out;
	const struct mob_peer *peer;
	unsigned i;

	if (p < 0 || (unsigned)p >= a->cfg->n_peers) {
		a->c.drop_unbound++;
		return;
	}
	peer = &a->cfg->peers[p];
	if (q->n == MOB_BATCH)
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
static uint8_t *gen_slot(struct mob_agent *a)
{
	if (a->n_gen == MOB_BATCH) {
		flush_all(a);
		a->n_gen = 0;
	}
	return a->gen[a->n_gen++];
}

/* A buffer of MOB_FRAME_MAX bytes for one segment; same rule. NULL when
 * out of memory. */
static uint8_t *seg_slot(struct mob_agent *a)
{
	if (a->n_seg == MOB_GSO_SEGS_MAX) {
		flush_all(a);
		a->n_seg = 0;
	}
	if (!a->seg[a->n_seg]) {
		a->seg[a->n_seg] = malloc(MOB_FRAME_MAX);
		if (!a->seg[a->n_seg])
			return NULL;
	}
	return a->seg[a->n_seg++];
}

/* Gratuitous ARP and unsolicited NA for b on the segment, sent with the
 * VM's MAC as source so the bridge learns the VM behind this agent. */
static void announce(struct mob_agent *a, struct mob_binding *b)
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
}

/* ---- frames from the site segment ---- */

static void start_registration(struct mob_agent *a, struct mob_binding *b,
			       bool resync_ok);

/* An expected VM sent its first frame here (QEMU announces the guest right
 * after the switchover): it is visiting now; register with its home. */
static void arrived(struct mob_agent *a, struct mob_binding *b)
{
	b->state = MOB_B_VISIT;
	log_notice("vm '%s' seen on %s: registering with home '%s' (seq %u)",
		   b->vm, a->cfg->dev, b->home, b->seq);
	start_registration(a, b, b->resync_ok);
}

/* The away VM is back on the home segment. Consume a sequence number so
 * that refreshes (and replays) from the old site are stale. Delivering
 * at home is always safe, so it goes on even if the state file cannot be
 * written (logged). */
static void back_home(struct mob_agent *a, struct mob_binding *b)
{
	log_notice("vm '%s' is back home from site '%s': binding removed",
		   b->vm, b->current);
	b->seq++;
	b->state = MOB_B_HOME_IDLE;
	b->peer = -1;
	b->return_expected = false;
	b->current[0] = '\0';
	(void)persist(a);
}

static bool direct_match(struct mob_agent *a, struct in_addr dst,
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

static bool is_local4(struct mob_agent *a, struct in_addr ip)
{
	unsigned i;

	for (i = 0; i < a->n_local4; i++)
		if (a->local4[i].s_addr == ip.s_addr)
			return true;
	return false;
}

/*
 * An ARP frame whose sender is one of this host's addresses, from a MAC
 * that is not the agent's interface: the host's own port on the segment
 * (its answer to a probe, or its own request). Frames that away VMs send
 * to the agent's MAC are handed to it (tunnel_frame).
 */
static void learn_host_port(struct mob_agent *a, const struct mob_frame_info *f)
{
	char mac[18];

	if ((f->kind != MOB_FK_ARP_REQUEST && f->kind != MOB_FK_ARP_REPLY) ||
	    !is_local4(a, f->arp_spa) || mob_mac_is_multicast(f->arp_sha) ||
	    !memcmp(f->arp_sha, zero_mac, 6) || !memcmp(f->arp_sha, a->ifmac, 6) ||
	    memcmp(f->arp_sha, f->src, 6))
		return;
	if (a->host_mac_known && !memcmp(a->host_mac, f->arp_sha, 6))
		return;
	memcpy(a->host_mac, f->arp_sha, 6);
	a->host_mac_known = true;
	a->probe_ival_ns = PROBE_MAX_NS;
	a->probe_ns = now_ns(a) + PROBE_MAX_NS;
	mob_format_mac(a->host_mac, mac);
	log_notice("this host's port on the segment is %s: frames from away VMs to %s's own MAC go there",
		   mac, a->cfg->dev);
}

/* ARP probes (sender address 0.0.0.0) for the host's own addresses: its
 * port on the segment answers (learn_host_port). */
static void probe_host_port(struct mob_agent *a)
{
	static const struct in_addr any = { 0 };
	unsigned i;

	for (i = 0; i < a->n_local4; i++) {
		uint8_t *g = gen_slot(a);
		int n = mob_build_arp(g, 128, 1, bcast_mac, a->ifmac, a->ifmac,
				      any, zero_mac, a->local4[i]);

		if (n > 0)
			to_segment(a, g, (size_t)n);
	}
}

void mob_agent_set_local(struct mob_agent *a, const struct in_addr *addrs,
			 unsigned n)
{
	if (n > MOB_LOCAL_MAX)
		n = MOB_LOCAL_MAX;
	memcpy(a->local4, addrs, n * sizeof(*addrs));
	a->n_local4 = n;
	a->host_mac_known = false;
	a->probe_ival_ns = PROBE_FIRST_NS;
	a->probe_ns = now_ns(a);	/* at the next timers() */
}

static void segment_frame(struct mob_agent *a, uint8_t *frame, size_t len)
{
	struct mob_frame_info f;
	struct mob_binding *b;
	const uint8_t *nh;

	if (mob_frame_parse(frame, len, &f)) {
		a->c.drop_bad++;
		return;
	}
	learn_host_port(a, &f);
	/* From a VM visiting here: reverse-tunnel home, or deliver locally. */
	b = find_mac(a, f.src, MOB_B_VISIT);
	if (!b && (b = find_mac(a, f.src, MOB_B_EXPECT)))
		arrived(a, b);
	if (!b && (b = find_mac(a, f.src, MOB_B_HOME_AWAY)) &&
	    b->return_expected) {
		back_home(a, b);
		return;
	}
	if (b && b->state != MOB_B_VISIT)
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
		b = find_mac(a, f.dst, MOB_B_HOME_AWAY);
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
 * segments with full checksums and handle each. The segment size comes
 * from the guest: mob_gso_prepare() bounds the segments per frame. */
static void gso_frame(struct mob_agent *a, const struct virtio_net_hdr *vh,
		      const uint8_t *frame, size_t len)
{
	struct mob_gso g;
	unsigned i;
	int nseg, n;

	nseg = vh->gso_type == VIRTIO_NET_HDR_GSO_NONE ? -EMSGSIZE :
		mob_gso_prepare(frame, len, vh->gso_size, &g);
	if (nseg < 0) {
		a->c.drop_gso++;
		if (!rl(a, MOB_RL_GSO))
			return;
		if (vh->gso_type != VIRTIO_NET_HDR_GSO_NONE && nseg == -EMSGSIZE)
			log_warn("dropping a %zu-byte frame on %s with segment size %u: segments under %d bytes or more than %d per frame are refused",
				 len, a->cfg->dev, vh->gso_size, MOB_GSO_MSS_MIN,
				 MOB_GSO_SEGS_MAX);
		else
			log_warn("dropping an oversized frame on %s that cannot be segmented (%s): disable segmentation offloads towards it (see docs/network.md)",
				 a->cfg->dev, strerror(-nseg));
		return;
	}
	a->c.gso_frames++;
	for (i = 0; i < (unsigned)nseg; i++) {
		uint8_t *seg = seg_slot(a);

		if (!seg) {
			a->c.drop_gso++;
			return;
		}
		n = mob_gso_segment(frame, &g, i, seg, MOB_FRAME_MAX);
		if (n < 0) {
			a->c.drop_bad++;
			return;
		}
		segment_frame(a, seg, (size_t)n);
	}
}

void mob_agent_packet(struct mob_agent *a, uint8_t *p, size_t len,
		      bool truncated)
{
	struct virtio_net_hdr vh;
	uint8_t *frame = p + MOB_VNET_HLEN;
	size_t flen;

	a->c.seg_rx++;
	if (truncated || len < (size_t)MOB_VNET_HLEN + MOB_ETH_HLEN) {
		a->c.drop_bad++;
		return;
	}
	memcpy(&vh, p, sizeof(vh));
	flen = len - MOB_VNET_HLEN;
	if (flen > MOB_FRAME_MAX) {
		gso_frame(a, &vh, frame, flen);
		return;
	}
	if ((vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
	    mob_csum_complete(frame, flen, vh.csum_start, vh.csum_offset)) {
		a->c.drop_bad++;
		return;
	}
	segment_frame(a, frame, flen);
}

/* ---- binding messages ---- */

static void send_bmsg(struct mob_agent *a, const struct mob_bmsg *m, int peer,
		      const struct sockaddr_storage *to)
{
	const struct mob_peer *p = &a->cfg->peers[peer];
	uint8_t buf[MOB_BMSG_MAX];
	int n = mob_bmsg_encode(m, p->key, buf, sizeof(buf));

	if (n < 0) {
		log_error_errno(n, "cannot encode a binding message for vm '%s'",
				m->vm);
		return;
	}
	if (!to)
		to = &p->addr;
	a->io.send_bmsg(a->io.ctx, buf, (size_t)n, to,
			to->ss_family == AF_INET ? sizeof(struct sockaddr_in) :
			sizeof(struct sockaddr_in6));
}

static void send_bu(struct mob_agent *a, struct mob_binding *b)
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
	send_bmsg(a, &m, b->peer, NULL);
	a->c.bu_tx++;
	b->next_tx_ns = now_ns(a) + b->rto_ns;
}

static void start_registration(struct mob_agent *a, struct mob_binding *b,
			       bool resync_ok)
{
	uint64_t now = now_ns(a);

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

static void ctl_reply(struct mob_agent *a, int ci, json_t *obj);

static void answer_waiter(struct mob_agent *a, struct mob_binding *b, bool ok,
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

static void send_ba(struct mob_agent *a, const struct mob_bmsg *bu, int peer,
		    uint8_t status, uint32_t seq, uint32_t lifetime,
		    const struct sockaddr_storage *to)
{
	struct mob_bmsg m;

	memset(&m, 0, sizeof(m));
	m.type = MOB_BA;
	m.status = status;
	m.seq = seq;
	m.lifetime = status == MOB_BA_ACCEPTED ? lifetime : 0;
	m.nonce = bu->nonce;
	snprintf(m.sender, sizeof(m.sender), "%s", a->cfg->site);
	snprintf(m.vm, sizeof(m.vm), "%s", bu->vm);
	snprintf(m.home, sizeof(m.home), "%s", bu->home);
	snprintf(m.current, sizeof(m.current), "%s", bu->current);
	memcpy(m.mac, bu->mac, 6);
	send_bmsg(a, &m, peer, to);
	a->c.ba_tx++;
}

static void refuse_bu(struct mob_agent *a, const struct mob_bmsg *m, int peer,
		      const struct sockaddr_storage *from, uint8_t status,
		      const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Counts and logs a refused BU and answers with status (0: no answer). */
static void refuse_bu(struct mob_agent *a, const struct mob_bmsg *m, int peer,
		      const struct sockaddr_storage *from, uint8_t status,
		      const char *fmt, ...)
{
	char msg[256], who[80];
	va_list ap;

	a->c.bu_refused++;
	if (rl(a, MOB_RL_REFUSED)) {
		va_start(ap, fmt);
		vsnprintf(msg, sizeof(msg), fmt, ap);
		va_end(ap);
		log_warn("binding update for vm '%s' from site '%s' (%s): %s: refused",
			 m->vm, m->sender, addr_str(from, who, sizeof(who)), msg);
	}
	if (status)
		send_ba(a, m, peer, status, 0, 0, from);
}

/* Home agent: a binding update from the VM's current site, authenticated
 * with the key of this site pair and from that site's address. */
static void on_bu(struct mob_agent *a, const struct mob_bmsg *m, int peer,
		  const struct sockaddr_storage *from)
{
	struct mob_binding *b, *other, old;
	uint32_t life;
	char who[80];
	bool moved;

	if (strcmp(m->home, a->cfg->site)) {
		refuse_bu(a, m, peer, from, MOB_BA_NOT_HOME_AGENT,
			  "it names home '%s', not this site", m->home);
		return;
	}
	if (strcmp(m->current, m->sender)) {
		refuse_bu(a, m, peer, from, 0,
			  "a site registers only itself, not '%s'", m->current);
		return;
	}
	b = find_vm(a, m->vm);
	if (b && (b->state == MOB_B_VISIT || b->state == MOB_B_EXPECT)) {
		refuse_bu(a, m, peer, from, MOB_BA_REASON_UNSPEC,
			  "the vm runs here");
		return;
	}
	if (b && !seq_newer(m->seq, b->seq)) {
		/* A retransmission of the BU we accepted last: ack again. */
		if (m->seq == b->seq && m->nonce == b->nonce &&
		    b->state == MOB_B_HOME_AWAY && !strcmp(b->current, m->sender)) {
			send_ba(a, m, peer, MOB_BA_ACCEPTED, b->seq,
				b->lifetime, from);
			return;
		}
		a->c.bu_stale++;
		if (rl(a, MOB_RL_STALE))
			log_warn("stale binding update for vm '%s' from site '%s' (%s): seq %u, last accepted %u: refused",
				 m->vm, m->sender, addr_str(from, who, sizeof(who)),
				 m->seq, b->seq);
		send_ba(a, m, peer, MOB_BA_SEQ_OUT_OF_WINDOW, b->seq, 0, from);
		return;
	}
	if (m->lifetime && (mob_mac_is_multicast(m->mac) ||
			    !memcmp(m->mac, zero_mac, 6))) {
		refuse_bu(a, m, peer, from, MOB_BA_REASON_UNSPEC,
			  "its MAC is not a unicast address");
		return;
	}
	if (m->lifetime && (other = mac_in_use(a, m->mac, m->vm))) {
		refuse_bu(a, m, peer, from, MOB_BA_REASON_UNSPEC,
			  "its MAC is vm '%s''s", other->vm);
		return;
	}
	if (!b)
		b = alloc_binding(a, m->vm);
	if (!b) {
		refuse_bu(a, m, peer, from, MOB_BA_REASON_UNSPEC,
			  "the binding table is full (%d)", MOB_BINDINGS_MAX);
		return;
	}
	old = *b;
	b->seq = m->seq;
	b->nonce = m->nonce;
	if (m->lifetime == 0) {
		log_notice("vm '%s' deregistered by site '%s' (seq %u): delivering at home",
			   m->vm, m->sender, m->seq);
		if (b->state == MOB_B_FREE)
			snprintf(b->home, sizeof(b->home), "%s", a->cfg->site);
		b->state = MOB_B_HOME_IDLE;
		b->peer = -1;
		b->current[0] = '\0';
		(void)persist(a);	/* delivering at home is always safe */
		send_ba(a, m, peer, MOB_BA_ACCEPTED, m->seq, 0, from);
		return;
	}
	life = m->lifetime < LIFETIME_MAX ? m->lifetime : LIFETIME_MAX;
	moved = b->state != MOB_B_HOME_AWAY || strcmp(b->current, m->sender) ||
		memcmp(b->mac, m->mac, 6);
	b->state = MOB_B_HOME_AWAY;
	b->manual = false;
	b->return_expected = false;
	snprintf(b->home, sizeof(b->home), "%s", a->cfg->site);
	snprintf(b->current, sizeof(b->current), "%s", m->sender);
	memcpy(b->mac, m->mac, 6);
	b->n_addrs = m->n_addrs;
	memcpy(b->addrs, m->addrs, sizeof(b->addrs));
	b->peer = peer;
	b->lifetime = life;
	b->expires_ns = now_ns(a) + (uint64_t)life * NS_PER_S;
	/* What a restarted agent would not remember must not be acted on. */
	if (persist(a)) {
		*b = old;
		send_ba(a, m, peer, MOB_BA_REASON_UNSPEC, 0, 0, from);
		return;
	}
	send_ba(a, m, peer, MOB_BA_ACCEPTED, m->seq, life, from);
	if (moved) {
		log_notice("vm '%s' is away at site '%s' (seq %u, lifetime %u s): proxying and tunnelling",
			   m->vm, m->sender, m->seq, life);
		announce(a, b);
	}
}

/* Visited site: the home agent's acknowledgement. */
static void on_ba(struct mob_agent *a, const struct mob_bmsg *m, int peer)
{
	struct mob_binding *b = find_vm(a, m->vm);

	if (!b || b->state != MOB_B_VISIT || b->peer != peer ||
	    b->nonce != m->nonce || b->acked) {
		log_debug("unexpected binding ack for vm '%s': ignored",
			  m->vm);
		return;
	}
	if (m->status == MOB_BA_ACCEPTED) {
		uint32_t life = m->lifetime && m->lifetime < b->lifetime ?
			m->lifetime : b->lifetime;

		b->acked = true;
		b->ack_ns = now_ns(a);
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
		log_notice("home site '%s' has a newer binding for vm '%s' (seq %u, ours %u): dropping it here",
			   b->home, b->vm, m->seq, b->seq);
		answer_waiter(a, b, false, "home has a newer binding");
		b->state = MOB_B_FREE;
		return;
	}
	b->failed = true;
	b->acked = true;
	log_error("home site '%s' refused vm '%s' (status %u)", b->home,
		  b->vm, m->status);
	answer_waiter(a, b, false, "home agent refused the binding");
}

/*
 * A datagram that starts like a binding message. The cheap checks come
 * first (layout, a configured site, from its address), then the HMAC under
 * the key of this site pair: one site's key cannot speak for another.
 */
static void on_bmsg(struct mob_agent *a, const uint8_t *p, size_t len,
		    const struct sockaddr_storage *from)
{
	char who[80];
	struct mob_bmsg m;
	int peer, err;

	err = mob_bmsg_decode(p, len, NULL, &m);
	if (err) {
		a->c.bmsg_bad++;
		if (rl(a, MOB_RL_BAD_BMSG))
			log_warn("malformed binding message from %s (%s): refused",
				 addr_str(from, who, sizeof(who)),
				 strerror(-err));
		return;
	}
	peer = peer_by_name(a, m.sender);
	if (peer < 0 || !same_ip(from, &a->cfg->peers[peer].addr)) {
		a->c.bu_refused++;
		if (rl(a, MOB_RL_SPOOFED))
			log_warn("binding message claims site '%s' but comes from %s: refused",
				 m.sender, addr_str(from, who, sizeof(who)));
		return;
	}
	err = mob_bmsg_verify(p, len, a->cfg->peers[peer].key);
	if (err == -EACCES && a->cfg->peers[peer].has_alt)
		err = mob_bmsg_verify(p, len, a->cfg->peers[peer].alt_key); /* mid-rollover */
	if (err) {
		a->c.bu_forged++;
		if (rl(a, MOB_RL_FORGED))
			log_warn("forged binding message from %s claiming site '%s' (HMAC does not verify under the key of sites '%s' and '%s'): refused",
				 addr_str(from, who, sizeof(who)), m.sender,
				 a->cfg->site, m.sender);
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

/*
 * A frame from away VM b to this agent's own MAC. At home it went to the
 * host's kernel through this interface (which the kernel also answers ARP
 * on, for every address of the host, unless arp_ignore says otherwise);
 * the home bridge has this MAC behind the agent's port and would drop it.
 * Hand it to the host's own port on the segment instead.
 */
static void to_host(struct mob_agent *a, struct mob_binding *b,
		    const uint8_t *frame, size_t len)
{
	uint8_t *g;

	if (!a->host_mac_known || len > MOB_FRAME_MAX) {
		a->c.drop_to_agent++;
		if (rl(a, MOB_RL_TO_AGENT))
			log_warn("vm '%s' sends to %s's own MAC (its neighbour cache holds it for an address of this host) and this host's port on the segment %s: dropped (docs/network.md, Topology)",
				 b->vm, a->cfg->dev, a->host_mac_known ?
				 "takes no frame that long" : "is not known");
		if (!a->host_mac_known)
			a->probe_ns = now_ns(a);	/* ask again now */
		return;
	}
	g = seg_slot(a);
	memcpy(g, frame, len);
	memcpy(g, a->host_mac, 6);
	a->c.to_host++;
	to_segment(a, g, len);
}

static void tunnel_frame(struct mob_agent *a, int peer, const uint8_t *frame,
			 size_t len)
{
	struct mob_frame_info f;
	struct mob_binding *b, *b2;
	unsigned i;

	if (mob_frame_parse(frame, len, &f)) {
		a->c.drop_bad++;
		return;
	}
	/* Reverse tunnel: the away VM's traffic arriving home. */
	b = find_mac(a, f.src, MOB_B_HOME_AWAY);
	if (b && b->peer == peer) {
		b->frames_in++;
		if (!memcmp(f.dst, a->ifmac, 6)) {
			to_host(a, b, frame, len);
			return;
		}
		if (!mob_mac_is_multicast(f.dst) &&
		    (b2 = find_mac(a, f.dst, MOB_B_HOME_AWAY))) {
			/* To another away VM: the home bridge has it behind
			 * this agent's port and would drop it; send it on
			 * (unless both are at the same site, which delivers
			 * it there itself). */
			if (b2->peer != peer) {
				b2->frames_out++;
				a->c.hairpin++;
				to_tunnel(a, b2->peer, frame, len);
			}
			return;
		}
		to_segment(a, frame, len);
		return;
	}
	/* Forward tunnel: traffic for a VM visiting here. */
	if (!mob_mac_is_multicast(f.dst)) {
		b = find_mac(a, f.dst, MOB_B_VISIT);
		if (b && b->peer == peer) {
			b->frames_in++;
			to_segment(a, frame, len);
			return;
		}
	} else {
		for (i = 0; i < MOB_BINDINGS_MAX; i++) {
			if (a->b[i].state == MOB_B_VISIT && a->b[i].peer == peer) {
				to_segment(a, frame, len);
				return;
			}
		}
	}
	a->c.drop_unbound++;
}

void mob_agent_datagram(struct mob_agent *a, const uint8_t *p, size_t len,
			bool truncated, const struct sockaddr_storage *from)
{
	char who[80];
	size_t off;
	uint32_t vni;
	int peer;

	if (truncated) {
		a->c.drop_bad++;
		if (rl(a, MOB_RL_BAD_DGRAM))
			log_warn("datagram from %s longer than %d bytes: dropped",
				 addr_str(from, who, sizeof(who)), MOB_SLOT);
		return;
	}
	if (mob_bmsg_is(p, len)) {
		on_bmsg(a, p, len, from);
		return;
	}
	a->c.tun_rx++;
	peer = peer_by_addr(a, from);
	if (peer < 0) {
		a->c.drop_unknown_peer++;
		if (rl(a, MOB_RL_UNKNOWN_PEER))
			log_warn("datagram from %s, which is no peer: dropped",
				 addr_str(from, who, sizeof(who)));
		return;
	}
	if (mob_vxlan_parse(p, len, &vni, &off)) {
		a->c.drop_bad++;
		if (rl(a, MOB_RL_BAD_DGRAM))
			log_warn("malformed tunnel datagram (%zu bytes) from site '%s' (%s): dropped",
				 len, a->cfg->peers[peer].name,
				 addr_str(from, who, sizeof(who)));
		return;
	}
	if (vni != a->cfg->vni) {
		a->c.drop_vni++;
		if (rl(a, MOB_RL_VNI))
			log_warn("tunnel datagram with VNI %u (ours is %u) from site '%s' (%s): dropped",
				 vni, a->cfg->vni, a->cfg->peers[peer].name,
				 addr_str(from, who, sizeof(who)));
		return;
	}
	tunnel_frame(a, peer, p + off, len - off);
}

/* ---- control requests ---- */

/* Sends obj (taken) as one line. */
static void ctl_reply(struct mob_agent *a, int ci, json_t *obj)
{
	char *s;
	size_t n;

	if (!obj)
		return;
	s = json_dumps(obj, JSON_COMPACT);
	json_decref(obj);
	if (!s)
		return;
	n = strlen(s);
	s[n] = '\n';	/* json_dumps leaves room: replace NUL, send n+1 */
	a->io.ctl_reply(a->io.ctx, ci, s, n + 1);
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

static json_t *binding_json(struct mob_agent *a, const struct mob_binding *b)
{
	char mac[18];
	uint64_t now = now_ns(a);

	mob_format_mac(b->mac, mac);
	return json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:I, s:I, s:b, s:b, s:I, s:I}",
		"vm", b->vm, "state", state_names[b->state], "mac", mac,
		"addrs", addrs_json(b), "home", b->home, "current", b->current,
		"seq", (json_int_t)b->seq,
		"expires_in", (json_int_t)(b->expires_ns > now ?
			(b->expires_ns - now) / NS_PER_S : 0),
		"registered", b->state == MOB_B_VISIT ? b->acked && !b->failed :
			b->state == MOB_B_HOME_AWAY,
		"manual", b->manual,
		"frames_out", (json_int_t)b->frames_out,
		"frames_in", (json_int_t)b->frames_in);
}

static json_t *status_json(struct mob_agent *a)
{
	static const struct {
		const char *name;
		size_t off;
	} cs[] = {
#define C(n, f) { n, offsetof(struct mob_counters, f) }
		C("seg_rx", seg_rx), C("seg_tx", seg_tx),
		C("tun_rx", tun_rx), C("tun_tx", tun_tx),
		C("arp_replies", arp_replies), C("na_replies", na_replies),
		C("direct", direct), C("drop_bad", drop_bad),
		C("drop_oversized", drop_gso),
		C("drop_unknown_peer", drop_unknown_peer),
		C("drop_unbound", drop_unbound), C("drop_vni", drop_vni),
		C("gso_frames", gso_frames), C("drop_tx", drop_tx),
		C("to_host", to_host), C("drop_to_agent", drop_to_agent),
		C("hairpin", hairpin),
		C("bu_tx", bu_tx), C("bu_rx", bu_rx),
		C("ba_tx", ba_tx), C("ba_rx", ba_rx),
		C("bu_forged", bu_forged), C("bu_stale", bu_stale),
		C("bu_refused", bu_refused), C("bmsg_bad", bmsg_bad),
		C("state_errors", state_errors),
		C("log_suppressed", log_suppressed),
#undef C
	};
	json_t *list = json_array(), *c = json_object();
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].state != MOB_B_FREE)
			json_array_append_new(list, binding_json(a, &a->b[i]));
	for (i = 0; i < TSB_ARRAY_SIZE(cs); i++) {
		uint64_t v;

		memcpy(&v, (const char *)&a->c + cs[i].off, sizeof(v));
		json_object_set_new(c, cs[i].name, json_integer((json_int_t)v));
	}
	return json_pack("{s:b, s:s, s:b, s:o, s:o}", "ok", 1,
			 "site", a->cfg->site, "persistent", a->io.save != NULL,
			 "bindings", list, "counters", c);
}

static void set_addrs(struct mob_binding *b, const struct mob_ctl_req *q)
{
	memcpy(b->mac, q->mac, 6);
	b->n_addrs = q->n_addrs;
	memcpy(b->addrs, q->addrs, sizeof(b->addrs));
}

static json_t *ctl_arrive(struct mob_agent *a, int ci,
			  const struct mob_ctl_req *q, bool *deferred)
{
	struct mob_binding *b = find_vm(a, q->vm);
	int peer;

	if (!strcmp(q->home, a->cfg->site)) {
		/* Back home: deliver directly again. */
		if (b && b->state == MOB_B_HOME_AWAY && q->when_seen) {
			b->return_expected = true;
			log_notice("vm '%s' expected back from site '%s': removing the binding on its first frame here",
				   b->vm, b->current);
			return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", q->vm,
					 "state", "return-expected");
		}
		if (b && b->state == MOB_B_HOME_AWAY)
			back_home(a, b);
		if (b && (b->state == MOB_B_VISIT || b->state == MOB_B_EXPECT)) {
			/* It visited here; now this is its home (a config
			 * change): no visitor state any more. */
			answer_waiter(a, b, false, "superseded by a new arrival");
			b->state = MOB_B_FREE;
			b = NULL;
		}
		if (!b)
			b = alloc_binding(a, q->vm);
		if (!b)
			return ctl_error("binding table full");
		b->state = MOB_B_HOME_IDLE;
		b->peer = -1;
		b->current[0] = '\0';
		snprintf(b->home, sizeof(b->home), "%s", a->cfg->site);
		set_addrs(b, q);
		(void)persist(a);
		return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", q->vm,
				 "state", "home");
	}
	peer = peer_by_name(a, q->home);
	if (peer < 0)
		return ctl_error("home site '%s' is not a configured peer",
				 q->home);
	if (b && b->state != MOB_B_VISIT && b->state != MOB_B_EXPECT) {
		/* This site was the VM's home before; now it is a visitor
		 * here (a config change): start afresh. */
		b->state = MOB_B_FREE;
		b = NULL;
		(void)persist(a);
	}
	if (!b)
		b = alloc_binding(a, q->vm);
	if (!b)
		return ctl_error("binding table full");
	b->state = MOB_B_VISIT;
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
		b->state = MOB_B_EXPECT;
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
		b->wait_deadline_ns = now_ns(a) + q->wait_ms * NS_PER_MS;
		*deferred = true;
		return NULL;
	}
	return json_pack("{s:b, s:s, s:s, s:I}", "ok", 1, "vm", b->vm,
			 "state", "registering", "seq", (json_int_t)b->seq);
}

static json_t *ctl_bind(struct mob_agent *a, const struct mob_ctl_req *q)
{
	struct mob_binding *b, old;
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
	old = *b;
	if (b->waiter >= 0)
		answer_waiter(a, b, false, "superseded by a binding by hand");
	b->state = home ? MOB_B_HOME_AWAY : MOB_B_VISIT;
	b->manual = true;
	b->acked = true;
	b->failed = false;
	b->return_expected = false;
	snprintf(b->home, sizeof(b->home), "%s", q->home);
	snprintf(b->current, sizeof(b->current), "%s", q->current);
	set_addrs(b, q);
	b->peer = peer;
	b->lifetime = q->lifetime;
	b->expires_ns = q->lifetime && home ?
		now_ns(a) + q->lifetime * NS_PER_S : 0;
	b->refresh_ns = 0;
	if ((home || old.state == MOB_B_HOME_IDLE ||
	     old.state == MOB_B_HOME_AWAY) && persist(a)) {
		*b = old;
		b->waiter = -1;
		return ctl_error("cannot write the state file: binding not made");
	}
	log_notice("vm '%s' bound by hand: home '%s', current '%s'",
		   b->vm, b->home, b->current);
	if (home)
		announce(a, b);
	return json_pack("{s:b, s:s, s:s}", "ok", 1, "vm", b->vm, "state",
			 state_names[b->state]);
}

void mob_agent_ctl_line(struct mob_agent *a, int ci, const char *line,
			size_t len)
{
	struct mob_ctl_req q;
	struct mob_binding *b;
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
		if (b && (b->state == MOB_B_VISIT || b->state == MOB_B_EXPECT)) {
			log_notice("vm '%s' departed: visitor binding dropped",
				   b->vm);
			answer_waiter(a, b, false, "departed");
			b->state = MOB_B_FREE;
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
		if (b->state == MOB_B_VISIT || b->state == MOB_B_EXPECT) {
			b->state = MOB_B_FREE;
		} else {
			b->state = MOB_B_HOME_IDLE;
			b->peer = -1;
			b->return_expected = false;
			(void)persist(a);
		}
		r = json_pack("{s:b, s:s}", "ok", 1, "vm", q.vm);
		break;
	case MOB_CTL_STATUS:
		r = status_json(a);
		break;
	}
	if (!deferred)
		ctl_reply(a, ci, r);
}

void mob_agent_ctl_closed(struct mob_agent *a, int ci)
{
	unsigned i;

	for (i = 0; i < MOB_BINDINGS_MAX; i++)
		if (a->b[i].waiter == ci)
			a->b[i].waiter = -1;
}

/* ---- timers ---- */

uint64_t mob_agent_timers(struct mob_agent *a)
{
	uint64_t now = now_ns(a), next = now + NS_PER_S;
	unsigned i;

	for (i = 0; i < MOB_RL_COUNT; i++) {
		struct mob_ratelog *r = &a->rl[i];

		if (r->logged && now - r->start_ns >= MOB_LOG_WINDOW_NS)
			rl_close(a, (enum mob_rl)i, now);
		else if (r->suppressed && r->start_ns + MOB_LOG_WINDOW_NS < next)
			next = r->start_ns + MOB_LOG_WINDOW_NS;
	}
	if (a->n_local4) {
		if (now >= a->probe_ns) {
			probe_host_port(a);
			a->probe_ns = now + a->probe_ival_ns;
			a->probe_ival_ns *= 2;
			if (a->probe_ival_ns > PROBE_MAX_NS)
				a->probe_ival_ns = PROBE_MAX_NS;
		}
		if (a->probe_ns < next)
			next = a->probe_ns;
	}
	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		struct mob_binding *b = &a->b[i];

		if (b->state == MOB_B_HOME_AWAY && b->expires_ns) {
			if (now >= b->expires_ns) {
				log_notice("binding for vm '%s' at site '%s' expired: delivering at home",
					   b->vm, b->current);
				b->state = MOB_B_HOME_IDLE;
				b->peer = -1;
				b->return_expected = false;
				continue;
			}
			if (b->expires_ns < next)
				next = b->expires_ns;
		}
		if (b->state != MOB_B_VISIT || b->manual)
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

/* ---- life ---- */

struct mob_agent *mob_agent_new(const struct mob_agent_config *cfg,
				const struct mob_io *io,
				const uint8_t ifmac[6])
{
	struct mob_agent *a = calloc(1, sizeof(*a));
	unsigned i;

	if (!a)
		return NULL;
	a->b = calloc(MOB_BINDINGS_MAX, sizeof(*a->b));
	if (!a->b) {
		free(a);
		return NULL;
	}
	a->cfg = cfg;
	a->io = *io;
	memcpy(a->ifmac, ifmac, 6);
	for (i = 0; i < MOB_BINDINGS_MAX; i++) {
		a->b[i].waiter = -1;
		a->b[i].peer = -1;
	}
	return a;
}

void mob_agent_log_summary(struct mob_agent *a)
{
	uint64_t t = now_ns(a);
	unsigned i;

	for (i = 0; i < MOB_RL_COUNT; i++)
		rl_close(a, (enum mob_rl)i, t);
	log_notice("stopping: %llu frames tunnelled out, %llu in, %llu forged, %llu spoofed or refused and %llu stale updates refused, %llu malformed binding messages",
		   (unsigned long long)a->c.tun_tx,
		   (unsigned long long)a->c.tun_rx,
		   (unsigned long long)a->c.bu_forged,
		   (unsigned long long)a->c.bu_refused,
		   (unsigned long long)a->c.bu_stale,
		   (unsigned long long)a->c.bmsg_bad);
}

void mob_agent_free(struct mob_agent *a)
{
	unsigned i;

	if (!a)
		return;
	for (i = 0; i < MOB_GSO_SEGS_MAX; i++)
		free(a->seg[i]);
	free(a->b);
	free(a);
}
