/*
 * net: the mobility agent's event loop. One epoll loop owns an AF_PACKET
 * socket on the site segment, a UDP socket for VXLAN and binding messages,
 * a unix control socket and the state directory; frames move in batches
 * (recvmmsg/sendmmsg) through the state machine of agent.c.
 * See docs/network.md.
 */
#include "net/agent.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#ifndef PACKET_IGNORE_OUTGOING
#define PACKET_IGNORE_OUTGOING 23
#endif

#define NS_PER_MS 1000000ull
#define STATE_FILE "bindings.json"
#define STATE_TMP "bindings.json.tmp"
#define STATE_LOCK "lock"

enum tag { TAG_PKT = 1, TAG_UDP, TAG_LISTEN, TAG_SIG, TAG_CONN = 100 };

struct conn {
	int fd;
	size_t len;
	char buf[MOB_CTL_LINE_MAX + 1];
};

struct run {
	const struct mob_agent_config *cfg;
	struct mob_agent *agent;
	int ep, pfd, ufd, lfd, sfd, dirfd, lockfd;
	int ifindex;
	uint8_t ifmac[6];
	struct conn conns[MOB_CONNS_MAX];
	uint8_t rbuf[MOB_BATCH][MOB_SLOT];
	struct mmsghdr rmsg[MOB_BATCH];
	struct iovec riov[MOB_BATCH];
	struct sockaddr_storage rname[MOB_BATCH];
	bool stop;
};

/* ---- log lines with the time ---- */

/*
 * Every line the agent logs starts with the wall-clock time (UTC, ms) of
 * the event it handles: the prefix is rewritten when the loop wakes up.
 */
static char log_prefix[64];

static void log_stamp(void)
{
	struct timespec ts;
	struct tm tm;
	size_t n;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(log_prefix, sizeof(log_prefix), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(log_prefix + n, sizeof(log_prefix) - n, ".%03ldZ net",
		 ts.tv_nsec / 1000000);
	tsb_log_set_prefix(log_prefix);
}

/* ---- io for the state machine ---- */

static uint64_t io_now(void *ctx)
{
	(void)ctx;
	return tsb_now_ns();
}

static uint64_t io_wall(void *ctx)
{
	(void)ctx;
	return tsb_wall_ns();
}

static int send_batch(int fd, struct mmsghdr *msgs, unsigned n)
{
	int r;

	do
		r = sendmmsg(fd, msgs, n, MSG_DONTWAIT);
	while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : r;
}

static int io_send_segment(void *ctx, struct mmsghdr *msgs, unsigned n)
{
	return send_batch(((struct run *)ctx)->pfd, msgs, n);
}

static int io_send_tunnel(void *ctx, struct mmsghdr *msgs, unsigned n)
{
	return send_batch(((struct run *)ctx)->ufd, msgs, n);
}

static void io_send_bmsg(void *ctx, const uint8_t *buf, size_t len,
			 const struct sockaddr_storage *to, socklen_t tolen)
{
	struct run *r = ctx;

	if (sendto(r->ufd, buf, len, MSG_DONTWAIT,
		   (const struct sockaddr *)to, tolen) < 0)
		log_debug("binding message to peer lost: %s", strerror(errno));
}

/* Replies are small; the socket is non-blocking, a client that does not
 * read loses its reply rather than stalling the agent. */
static void io_ctl_reply(void *ctx, int ci, const char *line, size_t len)
{
	struct run *r = ctx;
	size_t off = 0;

	if (ci < 0 || ci >= MOB_CONNS_MAX || r->conns[ci].fd < 0)
		return;
	while (off < len) {
		ssize_t w = send(r->conns[ci].fd, line + off, len - off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			break;
		off += (size_t)w;
	}
}

/* Temporary file, fsync, rename over the old one, fsync the directory:
 * the file is the old state or the new one, never a mix. */
static int io_save(void *ctx, const char *text, size_t len)
{
	struct run *r = ctx;
	size_t off = 0;
	int fd, err = 0;

	fd = openat(r->dirfd, STATE_TMP, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		    0600);
	if (fd < 0)
		return -errno;
	while (off < len) {
		ssize_t w = write(fd, text + off, len - off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			err = w < 0 ? -errno : -EIO;
			break;
		}
		off += (size_t)w;
	}
	if (!err && fsync(fd))
		err = -errno;
	if (close(fd) && !err)
		err = -errno;
	if (!err && renameat(r->dirfd, STATE_TMP, r->dirfd, STATE_FILE))
		err = -errno;
	if (!err && fsync(r->dirfd))
		err = -errno;
	if (err)
		(void)unlinkat(r->dirfd, STATE_TMP, 0);
	return err;
}

/* ---- the state directory ---- */

static int open_state(struct run *r)
{
	const char *dir = r->cfg->state_dir;
	struct stat st;
	char *text = NULL, msg[256];
	ssize_t n;
	size_t len = 0;
	int fd, err;

	if (mkdir(dir, 0700) && errno != EEXIST)
		return log_error_errno(-errno, "cannot create the state directory %s", dir);
	r->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (r->dirfd < 0)
		return log_error_errno(-errno, "cannot open the state directory %s", dir);
	r->lockfd = openat(r->dirfd, STATE_LOCK, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (r->lockfd < 0)
		return log_error_errno(-errno, "cannot open %s/%s", dir, STATE_LOCK);
	if (flock(r->lockfd, LOCK_EX | LOCK_NB))
		return log_error_errno(-errno, "another agent uses the state directory %s", dir);
	fd = openat(r->dirfd, STATE_FILE, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0 && errno == ENOENT) {
		log_notice("no state in %s yet: starting afresh", dir);
		return 0;
	}
	if (fd < 0)
		return log_error_errno(-errno, "cannot read %s/%s", dir, STATE_FILE);
	if (fstat(fd, &st) || !S_ISREG(st.st_mode) || st.st_size > MOB_STATE_MAX) {
		close(fd);
		return log_error_errno(-EFBIG, "%s/%s is not a regular file of at most %u bytes",
				       dir, STATE_FILE, MOB_STATE_MAX);
	}
	text = malloc((size_t)st.st_size + 1);
	if (!text) {
		close(fd);
		return -ENOMEM;
	}
	while (len < (size_t)st.st_size &&
	       (n = read(fd, text + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)n;
	close(fd);
	err = mob_agent_load(r->agent, text, len, msg, sizeof(msg));
	free(text);
	if (err)
		return log_error_errno(err, "%s/%s: %s; the agent does not start without the sequence numbers it accepted (move the file away to start afresh, which lets old binding updates replay)",
				       dir, STATE_FILE, msg);
	log_notice("state loaded from %s/%s", dir, STATE_FILE);
	return 0;
}

/* ---- input ---- */

static void prepare_rx(struct run *r, bool names)
{
	unsigned i;

	for (i = 0; i < MOB_BATCH; i++) {
		r->riov[i].iov_base = r->rbuf[i];
		r->riov[i].iov_len = MOB_SLOT;
		memset(&r->rmsg[i].msg_hdr, 0, sizeof(r->rmsg[i].msg_hdr));
		r->rmsg[i].msg_hdr.msg_iov = &r->riov[i];
		r->rmsg[i].msg_hdr.msg_iovlen = 1;
		if (names) {
			r->rmsg[i].msg_hdr.msg_name = &r->rname[i];
			r->rmsg[i].msg_hdr.msg_namelen = sizeof(r->rname[i]);
		}
	}
}

static void on_packet(struct run *r)
{
	unsigned i;
	int n;

	for (;;) {
		prepare_rx(r, false);
		n = recvmmsg(r->pfd, r->rmsg, MOB_BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		for (i = 0; i < (unsigned)n; i++)
			mob_agent_packet(r->agent, r->rbuf[i], r->rmsg[i].msg_len,
					 r->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC);
		mob_agent_flush(r->agent);
		if (n < MOB_BATCH)
			break;
	}
}

static void on_udp(struct run *r)
{
	unsigned i;
	int n;

	for (;;) {
		prepare_rx(r, true);
		n = recvmmsg(r->ufd, r->rmsg, MOB_BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			break;
		for (i = 0; i < (unsigned)n; i++)
			mob_agent_datagram(r->agent, r->rbuf[i], r->rmsg[i].msg_len,
					   r->rmsg[i].msg_hdr.msg_flags & MSG_TRUNC,
					   &r->rname[i]);
		mob_agent_flush(r->agent);
		if (n < MOB_BATCH)
			break;
	}
}

static void ctl_close(struct run *r, int ci)
{
	if (r->conns[ci].fd < 0)
		return;
	if (r->agent)
		mob_agent_ctl_closed(r->agent, ci);
	close(r->conns[ci].fd);
	r->conns[ci].fd = -1;
}

static void on_conn(struct run *r, int ci)
{
	struct conn *c = &r->conns[ci];
	static const char too_long[] =
		"{\"ok\":false,\"error\":\"request line too long\"}\n";
	ssize_t n;
	char *nl;

	n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len,
		 MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		ctl_close(r, ci);
		return;
	}
	c->len += (size_t)n;
	while (c->fd >= 0 && (nl = memchr(c->buf, '\n', c->len))) {
		size_t ll = (size_t)(nl - c->buf);

		mob_agent_ctl_line(r->agent, ci, c->buf, ll);
		mob_agent_flush(r->agent);
		if (c->fd < 0)
			return;
		memmove(c->buf, nl + 1, c->len - ll - 1);
		c->len -= ll + 1;
	}
	if (c->len == sizeof(c->buf) - 1) {
		io_ctl_reply(r, ci, too_long, sizeof(too_long) - 1);
		ctl_close(r, ci);
	}
}

static void on_listen(struct run *r)
{
	struct epoll_event ev = { .events = EPOLLIN };
	int fd, i;

	fd = accept4(r->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	for (i = 0; i < MOB_CONNS_MAX; i++)
		if (r->conns[i].fd < 0)
			break;
	if (i == MOB_CONNS_MAX) {
		log_warn("too many control connections (%d): closing a new one",
			 MOB_CONNS_MAX);
		close(fd);
		return;
	}
	r->conns[i].fd = fd;
	r->conns[i].len = 0;
	ev.data.u64 = TAG_CONN + (unsigned)i;
	if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		ctl_close(r, i);
}

/* ---- setup ---- */

static int open_packet(struct run *r)
{
	struct packet_mreq mr;
	struct sockaddr_ll sll;
	struct ifreq ifr;
	int one = 1, fd, bufsz = 4 << 20;

	r->ifindex = (int)if_nametoindex(r->cfg->dev);
	if (!r->ifindex)
		return log_error_errno(-errno, "no interface '%s'",
				       r->cfg->dev);
	fd = socket(AF_PACKET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    htons(ETH_P_ALL));
	if (fd < 0)
		return log_error_errno(-errno, "cannot open a packet socket (needs CAP_NET_RAW)");
	r->pfd = fd;
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
	sll.sll_ifindex = r->ifindex;
	if (bind(fd, (struct sockaddr *)&sll, sizeof(sll)) < 0)
		return log_error_errno(-errno, "cannot bind to '%s'",
				       r->cfg->dev);
	memset(&mr, 0, sizeof(mr));
	mr.mr_ifindex = r->ifindex;
	mr.mr_type = PACKET_MR_PROMISC;
	if (setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr,
		       sizeof(mr)) < 0)
		return log_error_errno(-errno, "promiscuous mode on '%s'",
				       r->cfg->dev);
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", r->cfg->dev);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) == 0)
		memcpy(r->ifmac, ifr.ifr_hwaddr.sa_data, 6);
	return 0;
}

static int open_udp(struct run *r)
{
	struct addrinfo hints, *ai = NULL;
	char host[256], port[16];
	int fd, err, off = 0, dont = IP_PMTUDISC_DONT, bufsz = 4 << 20;

	if (tsb_split_hostport(r->cfg->listen, host, sizeof(host), port,
			       sizeof(port)))
		return log_error_errno(-EINVAL, "--listen '%s' is not HOST:PORT",
				       r->cfg->listen);
	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_DGRAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
	err = getaddrinfo(host[0] ? host : NULL, port, &hints, &ai);
	if (err)
		return log_error_errno(-EINVAL, "--listen '%s': %s",
				       r->cfg->listen, gai_strerror(err));
	fd = socket(ai->ai_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		err = -errno;
		freeaddrinfo(ai);
		return log_error_errno(err, "UDP socket");
	}
	r->ufd = fd;
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
				       r->cfg->listen);
	}
	freeaddrinfo(ai);
	return 0;
}

static int open_control(struct run *r)
{
	struct sockaddr_un sun;
	struct stat st;
	mode_t old;
	int fd, err;

	if (strlen(r->cfg->control) >= sizeof(sun.sun_path))
		return log_error_errno(-ENAMETOOLONG, "control path too long");
	if (lstat(r->cfg->control, &st) == 0) {
		if (!S_ISSOCK(st.st_mode))
			return log_error_errno(-EEXIST, "'%s' exists and is not a socket",
					       r->cfg->control);
		unlink(r->cfg->control);
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return log_error_errno(-errno, "unix socket");
	r->lfd = fd;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, r->cfg->control, strlen(r->cfg->control));
	/* Owner only from the start: no moment where others may connect. */
	old = umask(0077);
	err = bind(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0 ? -errno : 0;
	umask(old);
	if (err)
		return log_error_errno(err, "cannot bind '%s'",
				       r->cfg->control);
	if (listen(fd, 8) < 0)
		return log_error_errno(-errno, "listen on '%s'",
				       r->cfg->control);
	return 0;
}

/* The host's IPv4 addresses (not loopback): the agent looks for the
 * host's own port on the segment that answers for them. */
static void find_local(struct run *r)
{
	struct in_addr addrs[MOB_LOCAL_MAX];
	struct ifaddrs *ifa, *i;
	unsigned n = 0;

	if (getifaddrs(&ifa)) {
		log_warn("cannot list this host's addresses (%s): frames from away VMs to %s's own MAC will be dropped",
			 strerror(errno), r->cfg->dev);
		return;
	}
	for (i = ifa; i && n < MOB_LOCAL_MAX; i = i->ifa_next) {
		const struct sockaddr_in *sin = (const void *)i->ifa_addr;

		if (!sin || sin->sin_family != AF_INET ||
		    (ntohl(sin->sin_addr.s_addr) >> 24) == 127)
			continue;
		addrs[n++] = sin->sin_addr;
	}
	freeifaddrs(ifa);
	mob_agent_set_local(r->agent, addrs, n);
}

static int watch(struct run *r, int fd, uint64_t tag)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = tag };

	if (epoll_ctl(r->ep, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	return 0;
}

int mob_agent_run(const struct mob_agent_config *cfg)
{
	struct epoll_event evs[16];
	struct mob_io io = {
		.now = io_now, .wall = io_wall,
		.send_segment = io_send_segment, .send_tunnel = io_send_tunnel,
		.send_bmsg = io_send_bmsg, .ctl_reply = io_ctl_reply,
	};
	struct run *r;
	sigset_t mask;
	int err, i;

	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	log_stamp();
	r->cfg = cfg;
	r->ep = r->pfd = r->ufd = r->lfd = r->sfd = r->dirfd = r->lockfd = -1;
	for (i = 0; i < MOB_CONNS_MAX; i++)
		r->conns[i].fd = -1;

	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	r->sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	r->ep = epoll_create1(EPOLL_CLOEXEC);
	if (r->sfd < 0 || r->ep < 0) {
		err = log_error_errno(-errno, "epoll/signalfd");
		goto out;
	}
	if ((err = open_packet(r)) || (err = open_udp(r)))
		goto out;
	io.ctx = r;
	if (cfg->state_dir)
		io.save = io_save;
	r->agent = mob_agent_new(cfg, &io, r->ifmac);
	if (!r->agent) {
		err = -ENOMEM;
		goto out;
	}
	if (cfg->state_dir && (err = open_state(r)))
		goto out;
	find_local(r);
	if (!cfg->state_dir)
		log_warn("no --state-dir: the sequence numbers of accepted binding updates are not kept, so after a restart old updates can be replayed (docs/network.md, Security)");
	mob_agent_flush(r->agent);
	if ((err = open_control(r)))
		goto out;
	if ((err = watch(r, r->pfd, TAG_PKT)) ||
	    (err = watch(r, r->ufd, TAG_UDP)) ||
	    (err = watch(r, r->lfd, TAG_LISTEN)) ||
	    (err = watch(r, r->sfd, TAG_SIG))) {
		log_error_errno(err, "epoll_ctl");
		goto out;
	}
	log_notice("site '%s' on %s, tunnel %s vni %u, %u peers, control %s%s%s",
		   cfg->site, cfg->dev, cfg->listen, cfg->vni, cfg->n_peers,
		   cfg->control, cfg->state_dir ? ", state in " : "",
		   cfg->state_dir ? cfg->state_dir : "");
	while (!r->stop) {
		uint64_t wait_ns = mob_agent_timers(r->agent);
		int n;

		mob_agent_flush(r->agent);
		n = epoll_wait(r->ep, evs, 16,
			       (int)((wait_ns + NS_PER_MS - 1) / NS_PER_MS));
		log_stamp();
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = log_error_errno(-errno, "epoll_wait");
			goto out;
		}
		for (i = 0; i < n; i++) {
			uint64_t tag = evs[i].data.u64;

			if (tag == TAG_PKT)
				on_packet(r);
			else if (tag == TAG_UDP)
				on_udp(r);
			else if (tag == TAG_LISTEN)
				on_listen(r);
			else if (tag == TAG_SIG)
				r->stop = true;
			else if (tag >= TAG_CONN && tag < TAG_CONN + MOB_CONNS_MAX)
				on_conn(r, (int)(tag - TAG_CONN));
		}
	}
	mob_agent_log_summary(r->agent);
	err = 0;
out:
	log_stamp();
	for (i = 0; i < MOB_CONNS_MAX; i++)
		ctl_close(r, i);
	if (r->lfd >= 0) {
		close(r->lfd);
		unlink(cfg->control);
	}
	if (r->pfd >= 0)
		close(r->pfd);
	if (r->ufd >= 0)
		close(r->ufd);
	if (r->sfd >= 0)
		close(r->sfd);
	if (r->ep >= 0)
		close(r->ep);
	if (r->lockfd >= 0)
		close(r->lockfd);
	if (r->dirfd >= 0)
		close(r->dirfd);
	if (r->agent) {
		OPENSSL_cleanse(r->agent, sizeof(*r->agent));
		mob_agent_free(r->agent);
	}
	free(r);
	return err;
}
