/*
 * tsubame net: the mobility agent (docs/network.md) and its clients.
 *
 *   tsubame net agent  ...   run the agent of one site
 *   tsubame net notify ...   migration hook: a VM arrived at / departed
 *   tsubame net bind   ...   install a binding by hand
 *   tsubame net unbind ...   remove one
 *   tsubame net status ...   print the agent's bindings and counters
 *   tsubame net update ...   send one binding update and print the ack
 */
#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "net/net.h"
#include "wire/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void mob_usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame net COMMAND [OPTIONS]\n"
"\n"
"Keeps migrated VMs reachable at their home addresses (docs/network.md).\n"
"\n"
"  tsubame net agent --site NAME --dev IFNAME --control SOCKET\n"
"                    [--peer NAME=HOST:PORT [--peer-key NAME=FILE]]...\n"
"                    [--key FILE] [--state-dir DIR] [--listen HOST:PORT]\n"
"                    [--vni N] [--lifetime SECONDS] [--retrans MS]\n"
"                    [--direct A.B.C.D/LEN=MAC]... [-v]\n"
"      Runs the agent of one site: AF_PACKET on IFNAME (a port of the site\n"
"      segment), VXLAN and binding messages on UDP --listen (default\n"
"      0.0.0.0:%d), JSON-lines control on the unix SOCKET. Each --peer\n"
"      names another site's agent; --peer-key gives the key this site\n"
"      shares with that one only (a 'tsubame keygen' file); --key is the\n"
"      key for peers without their own (one key for every pair lets any\n"
"      site speak for any other). --state-dir keeps the accepted bindings\n"
"      and sequence numbers across restarts, so that old binding updates\n"
"      cannot be replayed then. --direct delivers a visiting VM's IPv4\n"
"      traffic to the prefix through the local next hop MAC instead of\n"
"      reverse-tunnelling it home. Defaults: vni 1, lifetime 60 s, first\n"
"      retransmission after 100 ms (doubling, up to 2 s, 10 tries).\n"
"\n"
"  tsubame net notify --agent SOCKET --event arrive|depart --vm ID\n"
"                     [--mac MAC --home SITE [--ip ADDR]...] [--wait MS]\n"
"                     [--when-seen]\n"
"      Migration hook, called at switchover by 'send' (depart) and 'recv'\n"
"      (arrive, as the destination is started). arrive needs --mac and\n"
"      --home; at a site other than home it registers the VM with its home\n"
"      agent at once; --wait MS waits for the home agent's acknowledgement\n"
"      (exit 1 if none came in time). --when-seen is for a hook that can\n"
"      only run well before the switchover: the agent then acts on the VM's\n"
"      first frame on its segment (QEMU's announcement, some 50 ms after\n"
"      the guest resumes), which adds that wait to the outage.\n"
"\n"
"  tsubame net bind --agent SOCKET --vm ID --mac MAC --home SITE\n"
"                   --current SITE [--ip ADDR]... [--lifetime SECONDS]\n"
"      Installs a binding by hand, without binding messages (the agent must\n"
"      be the home or the current site). Lifetime 0 (default): no expiry.\n"
"\n"
"  tsubame net unbind --agent SOCKET --vm ID\n"
"  tsubame net status --agent SOCKET\n"
"\n"
"  tsubame net update --to HOST:PORT --key FILE --from SITE --vm ID\n"
"                     --mac MAC --home SITE --seq N [--ip ADDR]...\n"
"                     [--lifetime SECONDS] [--timeout MS] [--save FILE]\n"
"                     [--replay FILE]\n"
"      Sends one binding update (as site --from, with the key of the pair\n"
"      --from/--home) and prints the reply: 'accepted', 'refused <status>\n"
"      seq <n>' or 'no reply'. --save FILE keeps the bytes sent; --replay\n"
"      FILE sends those bytes again instead of a new update (the other\n"
"      options only say where to and how to read the answer). For\n"
"      operators and tests; exit 0 only when accepted.\n"
"\n"
"Exit: 0 success, 1 failure (reason on stderr), 2 usage.\n",
		MOB_VXLAN_PORT);
}

#define usage_error(...) cli_usage_error("net", __VA_ARGS__)

enum {
	OPT_SITE = 256, OPT_DEV, OPT_KEY, OPT_CONTROL, OPT_LISTEN, OPT_PEER,
	OPT_VNI, OPT_LIFETIME, OPT_RETRANS, OPT_DIRECT, OPT_AGENT, OPT_EVENT,
	OPT_VM, OPT_MAC, OPT_HOME, OPT_CURRENT, OPT_IP, OPT_WAIT, OPT_TO,
	OPT_FROM, OPT_SEQ, OPT_TIMEOUT, OPT_WHEN_SEEN, OPT_PEER_KEY,
	OPT_STATE_DIR, OPT_SAVE, OPT_REPLAY,
};

struct opts {
	const char *site, *dev, *key, *control, *listen, *agent, *event;
	const char *vm, *mac, *home, *current, *to, *from;
	const char *state_dir, *save, *replay;
	const char *ips[MOB_ADDRS_MAX];
	unsigned n_ips;
	const char *peers[MOB_PEERS_MAX];
	unsigned n_peers;
	const char *peer_keys[MOB_PEERS_MAX];
	unsigned n_peer_keys;
	const char *direct[MOB_DIRECT_MAX];
	unsigned n_direct;
	uint64_t vni, lifetime, retrans, wait, seq, timeout;
	bool has_lifetime, has_seq, when_seen;
	int verbose;
};

static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option opts[] = {
		{ "site", required_argument, NULL, OPT_SITE },
		{ "dev", required_argument, NULL, OPT_DEV },
		{ "key", required_argument, NULL, OPT_KEY },
		{ "control", required_argument, NULL, OPT_CONTROL },
		{ "listen", required_argument, NULL, OPT_LISTEN },
		{ "peer", required_argument, NULL, OPT_PEER },
		{ "vni", required_argument, NULL, OPT_VNI },
		{ "lifetime", required_argument, NULL, OPT_LIFETIME },
		{ "retrans", required_argument, NULL, OPT_RETRANS },
		{ "direct", required_argument, NULL, OPT_DIRECT },
		{ "agent", required_argument, NULL, OPT_AGENT },
		{ "event", required_argument, NULL, OPT_EVENT },
		{ "vm", required_argument, NULL, OPT_VM },
		{ "mac", required_argument, NULL, OPT_MAC },
		{ "home", required_argument, NULL, OPT_HOME },
		{ "current", required_argument, NULL, OPT_CURRENT },
		{ "ip", required_argument, NULL, OPT_IP },
		{ "wait", required_argument, NULL, OPT_WAIT },
		{ "to", required_argument, NULL, OPT_TO },
		{ "from", required_argument, NULL, OPT_FROM },
		{ "seq", required_argument, NULL, OPT_SEQ },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "when-seen", no_argument, NULL, OPT_WHEN_SEEN },
		{ "peer-key", required_argument, NULL, OPT_PEER_KEY },
		{ "state-dir", required_argument, NULL, OPT_STATE_DIR },
		{ "save", required_argument, NULL, OPT_SAVE },
		{ "replay", required_argument, NULL, OPT_REPLAY },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	memset(o, 0, sizeof(*o));
	o->vni = 1;
	o->lifetime = 60;
	o->retrans = 100;
	o->timeout = 2000;
	o->listen = "0.0.0.0:4789";
	optind = 1;
	while ((c = getopt_long(argc, argv, "vh", opts, NULL)) != -1) {
		switch (c) {
		case OPT_SITE: o->site = optarg; break;
		case OPT_DEV: o->dev = optarg; break;
		case OPT_KEY: o->key = optarg; break;
		case OPT_CONTROL: o->control = optarg; break;
		case OPT_LISTEN: o->listen = optarg; break;
		case OPT_AGENT: o->agent = optarg; break;
		case OPT_EVENT: o->event = optarg; break;
		case OPT_VM: o->vm = optarg; break;
		case OPT_MAC: o->mac = optarg; break;
		case OPT_HOME: o->home = optarg; break;
		case OPT_CURRENT: o->current = optarg; break;
		case OPT_TO: o->to = optarg; break;
		case OPT_FROM: o->from = optarg; break;
		case OPT_STATE_DIR: o->state_dir = optarg; break;
		case OPT_SAVE: o->save = optarg; break;
		case OPT_REPLAY: o->replay = optarg; break;
		case OPT_PEER_KEY:
			if (o->n_peer_keys == MOB_PEERS_MAX)
				return usage_error("at most %d --peer-key", MOB_PEERS_MAX);
			o->peer_keys[o->n_peer_keys++] = optarg;
			break;
		case OPT_PEER:
			if (o->n_peers == MOB_PEERS_MAX)
				return usage_error("at most %d --peer", MOB_PEERS_MAX);
			o->peers[o->n_peers++] = optarg;
			break;
		case OPT_IP:
			if (o->n_ips == MOB_ADDRS_MAX)
				return usage_error("at most %d --ip", MOB_ADDRS_MAX);
			o->ips[o->n_ips++] = optarg;
			break;
		case OPT_DIRECT:
			if (o->n_direct == MOB_DIRECT_MAX)
				return usage_error("at most %d --direct", MOB_DIRECT_MAX);
			o->direct[o->n_direct++] = optarg;
			break;
		case OPT_VNI:
			if (tsb_parse_u64(optarg, 0, 0xffffff, &o->vni))
				return usage_error("--vni: 0..16777215");
			break;
		case OPT_LIFETIME:
			if (tsb_parse_u64(optarg, 0, 86400, &o->lifetime))
				return usage_error("--lifetime: 0..86400 seconds");
			o->has_lifetime = true;
			break;
		case OPT_RETRANS:
			if (tsb_parse_u64(optarg, 1, 10000, &o->retrans))
				return usage_error("--retrans: 1..10000 ms");
			break;
		case OPT_WAIT:
			if (tsb_parse_u64(optarg, 0, 60000, &o->wait))
				return usage_error("--wait: 0..60000 ms");
			break;
		case OPT_TIMEOUT:
			if (tsb_parse_u64(optarg, 1, 60000, &o->timeout))
				return usage_error("--timeout: 1..60000 ms");
			break;
		case OPT_SEQ:
			if (tsb_parse_u64(optarg, 0, UINT32_MAX, &o->seq))
				return usage_error("--seq: 0..4294967295");
			o->has_seq = true;
			break;
		case OPT_WHEN_SEEN: o->when_seen = true; break;
		case 'v': o->verbose++; break;
		case 'h':
			mob_usage(stdout);
			return -1;
		default:
			return usage_error("unknown option");
		}
	}
	if (optind != argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	return 0;
}

static int resolve(const char *hostport, struct sockaddr_storage *ss,
		   socklen_t *len)
{
	struct addrinfo hints, *ai;
	char host[256], port[16];

	if (tsb_split_hostport(hostport, host, sizeof(host), port, sizeof(port)))
		return -EINVAL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
	if (getaddrinfo(host, port, &hints, &ai))
		return -EINVAL;
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*len = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

/*
 * A key file of a site pair: the first key signs and verifies; during a
 * rollover the second verifies too (as for send/recv, wire/tls.h).
 */
static int load_key(const char *path, struct mob_peer *p)
{
	char msg[WIRE_ERRMSG_MAX];
	struct wire_key k;

	if (wire_key_load(path, &k, msg, sizeof(msg))) {
		fprintf(stderr, "tsubame net: %s\n", msg);
		return -1;
	}
	if (k.tenants[0] || k.alt_tenants[0])
		log_warn("key file %s: tenants= has no meaning for the mobility agent (its keys "
			 "are per site pair): ignored", path);
	memcpy(p->key, k.secret, MOB_KEY_LEN);
	p->has_alt = k.has_alt;
	if (k.has_alt)
		memcpy(p->alt_key, k.alt_secret, MOB_KEY_LEN);
	wire_key_wipe(&k);
	return 0;
}

/* The keys of cfg's peers: --peer-key NAME=FILE, else --key. */
static int load_peer_keys(const struct opts *o, struct mob_agent_config *cfg)
{
	bool have[MOB_PEERS_MAX] = { false };
	struct mob_peer fallback;
	unsigned i, j;
	int rc = 0;

	for (i = 0; i < o->n_peer_keys; i++) {
		const char *eq = strchr(o->peer_keys[i], '=');
		size_t n = eq ? (size_t)(eq - o->peer_keys[i]) : 0;

		for (j = 0; j < cfg->n_peers; j++)
			if (n && strlen(cfg->peers[j].name) == n &&
			    !memcmp(cfg->peers[j].name, o->peer_keys[i], n))
				break;
		if (!eq || !eq[1] || j == cfg->n_peers)
			return usage_error("--peer-key '%s' is not NAME=FILE for a --peer NAME",
					   o->peer_keys[i]);
		if (have[j])
			return usage_error("two --peer-key for site '%s'", cfg->peers[j].name);
		if (load_key(eq + 1, &cfg->peers[j]))
			return TSB_EXIT_FAILED;
		have[j] = true;
	}
	for (j = 0; j < cfg->n_peers; j++)
		if (!have[j] && !o->key)
			return usage_error("site '%s' has no key: give it --peer-key %s=FILE, or --key FILE",
					   cfg->peers[j].name, cfg->peers[j].name);
	if (!o->key)
		return 0;
	if (load_key(o->key, &fallback))
		return TSB_EXIT_FAILED;
	for (j = 0; j < cfg->n_peers; j++) {
		if (have[j])
			continue;
		memcpy(cfg->peers[j].key, fallback.key, MOB_KEY_LEN);
		cfg->peers[j].has_alt = fallback.has_alt;
		memcpy(cfg->peers[j].alt_key, fallback.alt_key, MOB_KEY_LEN);
		rc++;
	}
	OPENSSL_cleanse(&fallback, sizeof(fallback));
	if (rc > 1)
		log_notice("%d peers share the key of --key: each of them can speak for the others (give each its own with --peer-key)",
			   rc);
	return 0;
}

static void wipe_keys(struct mob_agent_config *cfg)
{
	unsigned i;

	for (i = 0; i < MOB_PEERS_MAX; i++) {
		OPENSSL_cleanse(cfg->peers[i].key, MOB_KEY_LEN);
		OPENSSL_cleanse(cfg->peers[i].alt_key, MOB_KEY_LEN);
	}
}

static int run_agent(struct opts *o)
{
	struct mob_agent_config cfg;
	unsigned i, j;
	int err;

	if (!o->site || !o->dev || !o->control)
		return usage_error("agent needs --site, --dev and --control");
	if (!mob_name_ok(o->site, MOB_SITE_MAX))
		return usage_error("--site: 1..%d of [A-Za-z0-9._-]", MOB_SITE_MAX);
	memset(&cfg, 0, sizeof(cfg));
	cfg.site = o->site;
	cfg.dev = o->dev;
	cfg.listen = o->listen;
	cfg.control = o->control;
	cfg.state_dir = o->state_dir;
	cfg.vni = (uint32_t)o->vni;
	cfg.lifetime = o->lifetime ? (uint32_t)o->lifetime : 60;
	cfg.retrans_ms = (uint32_t)o->retrans;
	for (i = 0; i < o->n_peers; i++) {
		struct mob_peer *p = &cfg.peers[i];
		const char *eq = strchr(o->peers[i], '=');
		size_t n = eq ? (size_t)(eq - o->peers[i]) : 0;

		if (!eq || !n || n > MOB_SITE_MAX)
			return usage_error("--peer '%s' is not NAME=HOST:PORT", o->peers[i]);
		memcpy(p->name, o->peers[i], n);
		p->name[n] = '\0';
		if (!mob_name_ok(p->name, MOB_SITE_MAX) ||
		    resolve(eq + 1, &p->addr, &p->addrlen))
			return usage_error("--peer '%s' is not NAME=HOST:PORT (numeric address)",
					   o->peers[i]);
		if (!strcmp(p->name, o->site))
			return usage_error("--peer '%s' names this site", o->peers[i]);
		for (j = 0; j < i; j++)
			if (!strcmp(cfg.peers[j].name, p->name))
				return usage_error("two --peer named '%s'", p->name);
	}
	cfg.n_peers = o->n_peers;
	for (i = 0; i < o->n_direct; i++) {
		struct mob_direct *d = &cfg.direct[i];
		char net[64];
		const char *eq = strchr(o->direct[i], '='), *sl;
		uint64_t len;

		sl = strchr(o->direct[i], '/');
		if (!eq || !sl || sl > eq || (size_t)(sl - o->direct[i]) >= sizeof(net))
			return usage_error("--direct '%s' is not A.B.C.D/LEN=MAC", o->direct[i]);
		memcpy(net, o->direct[i], (size_t)(sl - o->direct[i]));
		net[sl - o->direct[i]] = '\0';
		{
			char lenbuf[8];
			size_t ln = (size_t)(eq - sl - 1);

			if (ln == 0 || ln >= sizeof(lenbuf))
				return usage_error("--direct '%s': bad prefix length", o->direct[i]);
			memcpy(lenbuf, sl + 1, ln);
			lenbuf[ln] = '\0';
			if (tsb_parse_u64(lenbuf, 0, 32, &len))
				return usage_error("--direct '%s': bad prefix length", o->direct[i]);
		}
		if (inet_pton(AF_INET, net, &d->net) != 1 ||
		    mob_parse_mac(eq + 1, d->mac))
			return usage_error("--direct '%s' is not A.B.C.D/LEN=MAC", o->direct[i]);
		d->mask = len ? ~0u << (32 - len) : 0;
		d->net.s_addr = htonl(ntohl(d->net.s_addr) & d->mask);
	}
	cfg.n_direct = o->n_direct;
	if (o->verbose)
		tsb_log_set_level(o->verbose > 1 ? TSB_LOG_DEBUG : TSB_LOG_INFO);
	if ((err = load_peer_keys(o, &cfg))) {
		wipe_keys(&cfg);
		return err;
	}
	err = mob_agent_run(&cfg);
	wipe_keys(&cfg);
	return err ? TSB_EXIT_FAILED : TSB_EXIT_OK;
}

/* Sends one request line to the agent; prints the reply line to stdout. */
static int ctl_call(const char *path, json_t *req, unsigned timeout_ms)
{
	json_t *rep = NULL;
	char err[512];
	int r = mob_ctl_call(path, req, timeout_ms, &rep, err, sizeof(err));

	if (rep) {
		char *s = json_dumps(rep, JSON_COMPACT);

		if (s)
			printf("%s\n", s);
		free(s);
		json_decref(rep);
	}
	if (r < 0)
		fprintf(stderr, "tsubame net: %s\n", err);
	return r < 0 ? TSB_EXIT_FAILED : TSB_EXIT_OK;
}

static json_t *ips_json(const struct opts *o)
{
	json_t *a = json_array();
	unsigned i;

	for (i = 0; i < o->n_ips; i++)
		json_array_append_new(a, json_string(o->ips[i]));
	return a;
}

static int check_ips(const struct opts *o)
{
	struct mob_addr na;
	unsigned i;

	for (i = 0; i < o->n_ips; i++)
		if (mob_parse_addr(o->ips[i], &na))
			return usage_error("--ip '%s' is not an IPv4 or IPv6 address", o->ips[i]);
	return 0;
}

/* --replay FILE: the bytes of a binding update sent before (--save). */
static int read_update(const char *path, const uint8_t key[MOB_KEY_LEN],
		       uint8_t *buf, struct mob_bmsg *m)
{
	FILE *f = fopen(path, "rb");
	size_t n;
	int err;

	if (!f) {
		fprintf(stderr, "tsubame net: cannot read %s: %s\n", path, strerror(errno));
		return -1;
	}
	n = fread(buf, 1, MOB_BMSG_MAX, f);
	fclose(f);
	err = mob_bmsg_decode(buf, n, key, m);
	if (err || m->type != MOB_BU) {
		fprintf(stderr, "tsubame net: %s is not a binding update under that key\n", path);
		return -1;
	}
	return (int)n;
}

static int save_update(const char *path, const uint8_t *buf, size_t n)
{
	FILE *f = fopen(path, "wb");

	if (!f || fwrite(buf, 1, n, f) != n || fclose(f)) {
		fprintf(stderr, "tsubame net: cannot write %s\n", path);
		return -1;
	}
	return 0;
}

static int run_update(struct opts *o)
{
	struct sockaddr_storage to, from;
	socklen_t tolen, fromlen = sizeof(from);
	uint8_t buf[MOB_BMSG_MAX];
	struct mob_peer kp;	/* only its key: an update signs with the first */
	struct mob_bmsg m, r;
	struct pollfd p;
	unsigned i;
	int fd = -1, n, rc = TSB_EXIT_FAILED;

	if (o->replay) {
		if (!o->to || !o->key)
			return usage_error("update --replay needs --to and --key");
		if (resolve(o->to, &to, &tolen))
			return usage_error("bad --to");
		if (load_key(o->key, &kp))
			return TSB_EXIT_FAILED;
		n = read_update(o->replay, kp.key, buf, &m);
		if (n < 0)
			goto out;
		goto send;
	}
	if (!o->to || !o->key || !o->from || !o->vm || !o->mac || !o->home ||
	    !o->has_seq)
		return usage_error("update needs --to, --key, --from, --vm, --mac, --home and --seq");
	memset(&m, 0, sizeof(m));
	if (!mob_name_ok(o->from, MOB_SITE_MAX) || !mob_name_ok(o->home, MOB_SITE_MAX) ||
	    !mob_name_ok(o->vm, MOB_ID_MAX) || mob_parse_mac(o->mac, m.mac) ||
	    resolve(o->to, &to, &tolen))
		return usage_error("bad --from, --home, --vm, --mac or --to");
	for (i = 0; i < o->n_ips; i++)
		if (mob_parse_addr(o->ips[i], &m.addrs[i]))
			return usage_error("--ip '%s' is not an address", o->ips[i]);
	m.n_addrs = o->n_ips;
	m.type = MOB_BU;
	m.seq = (uint32_t)o->seq;
	m.lifetime = (uint32_t)o->lifetime;
	if (RAND_bytes((unsigned char *)&m.nonce, sizeof(m.nonce)) != 1)
		return TSB_EXIT_FAILED;
	snprintf(m.sender, sizeof(m.sender), "%s", o->from);
	snprintf(m.current, sizeof(m.current), "%s", o->current ? o->current : o->from);
	snprintf(m.vm, sizeof(m.vm), "%s", o->vm);
	snprintf(m.home, sizeof(m.home), "%s", o->home);
	if (load_key(o->key, &kp))
		return TSB_EXIT_FAILED;
	n = mob_bmsg_encode(&m, kp.key, buf, sizeof(buf));
	if (n > 0 && o->save && save_update(o->save, buf, (size_t)n))
		goto out;
send:
	fd = socket(to.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (n < 0 || fd < 0 || sendto(fd, buf, (size_t)n, 0,
				      (struct sockaddr *)&to, tolen) < 0) {
		fprintf(stderr, "tsubame net: cannot send the update: %s\n",
			strerror(n < 0 ? -n : errno));
		goto out;
	}
	p.fd = fd;
	p.events = POLLIN;
	for (;;) {
		ssize_t got;

		if (poll(&p, 1, (int)o->timeout) <= 0) {
			printf("no reply\n");
			goto out;
		}
		got = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&from, &fromlen);
		if (got < 0)
			goto out;
		if (mob_bmsg_decode(buf, (size_t)got, kp.key, &r) || r.type != MOB_BA ||
		    r.nonce != m.nonce)
			continue;	/* not an authentic answer to us */
		break;
	}
	if (r.status == MOB_BA_ACCEPTED) {
		printf("accepted seq %u lifetime %u\n", r.seq, r.lifetime);
		rc = TSB_EXIT_OK;
	} else {
		printf("refused %u seq %u\n", r.status, r.seq);
	}
out:
	OPENSSL_cleanse(&kp, sizeof(kp));
	if (fd >= 0)
		close(fd);
	return rc;
}

int cmd_net(int argc, char **argv)
{
	const char *sub;
	struct opts o;
	int err;

	if (argc < 2)
		return usage_error("missing command (agent, notify, bind, unbind, status, update)");
	sub = argv[1];
	if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
		mob_usage(stdout);
		return TSB_EXIT_OK;
	}
	err = parse_opts(argc - 1, argv + 1, &o);
	if (err < 0)
		return TSB_EXIT_OK;	/* --help */
	if (err)
		return err;
	if (!strcmp(sub, "agent"))
		return run_agent(&o);
	if (!strcmp(sub, "update"))
		return run_update(&o);
	if (strcmp(sub, "notify") && strcmp(sub, "bind") &&
	    strcmp(sub, "unbind") && strcmp(sub, "status"))
		return usage_error("unknown command '%s'", sub);
	if (!o.agent)
		return usage_error("%s needs --agent SOCKET", sub);
	if ((err = check_ips(&o)))
		return err;
	if (o.mac) {
		uint8_t mac[6];

		if (mob_parse_mac(o.mac, mac))
			return usage_error("--mac '%s' is not xx:xx:xx:xx:xx:xx", o.mac);
	}
	if ((o.vm && !mob_name_ok(o.vm, MOB_ID_MAX)) ||
	    (o.home && !mob_name_ok(o.home, MOB_SITE_MAX)) ||
	    (o.current && !mob_name_ok(o.current, MOB_SITE_MAX)))
		return usage_error("--vm (1..%d), --home and --current (1..%d) take [A-Za-z0-9._-]",
				   MOB_ID_MAX, MOB_SITE_MAX);
	if (!strcmp(sub, "status"))
		return ctl_call(o.agent, json_pack("{s:s}", "op", "status"), 5000);
	if (!o.vm)
		return usage_error("%s needs --vm ID", sub);
	if (!strcmp(sub, "unbind"))
		return ctl_call(o.agent, json_pack("{s:s, s:s}", "op", "unbind",
						   "vm", o.vm), 5000);
	if (!strcmp(sub, "bind")) {
		if (!o.mac || !o.home || !o.current)
			return usage_error("bind needs --mac, --home and --current");
		return ctl_call(o.agent, json_pack("{s:s, s:s, s:s, s:o, s:s, s:s, s:I}",
			"op", "bind", "vm", o.vm, "mac", o.mac, "addrs", ips_json(&o),
			"home", o.home, "current", o.current,
			"lifetime", (json_int_t)(o.has_lifetime ? o.lifetime : 0)), 5000);
	}
	/* notify */
	if (!o.event || (strcmp(o.event, "arrive") && strcmp(o.event, "depart")))
		return usage_error("notify needs --event arrive or --event depart");
	if (!strcmp(o.event, "depart"))
		return ctl_call(o.agent, json_pack("{s:s, s:s}", "op", "depart",
						   "vm", o.vm), 5000);
	if (!o.mac || !o.home)
		return usage_error("notify --event arrive needs --mac and --home");
	return ctl_call(o.agent, json_pack("{s:s, s:s, s:s, s:o, s:s, s:I, s:I, s:b}",
		"op", "arrive", "vm", o.vm, "mac", o.mac, "addrs", ips_json(&o),
		"home", o.home,
		"lifetime", (json_int_t)(o.has_lifetime ? o.lifetime : 0),
		"wait_ms", (json_int_t)(o.when_seen ? 0 : o.wait),
		"when_seen", o.when_seen), (unsigned)o.wait + 5000);
}
