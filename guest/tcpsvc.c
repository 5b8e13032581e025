/*
 * tcpsvc: the test guest's TCP service (see README.md).
 *
 *   port P    echo: every byte received is sent back, in order.
 *   port P+1  counter: each connection receives "counter <n>\n" every
 *             100 ms, n = 0, 1, 2, ... per connection, until it closes.
 *             Bytes sent by the client are read and ignored.
 *
 * One epoll loop, non-blocking sockets, a fixed connection table. Echo
 * applies back-pressure: while a connection's echo buffer is not flushed,
 * nothing more is read from it. A counter line is only queued when the
 * previous one went out, so a slow reader sees consecutive numbers.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 128
#define CONN_BUF 65536
#define TICK_NS 100000000L

enum kind { K_FREE, K_ECHO, K_COUNTER };

/* epoll tags: the connection index, or one of these. */
#define TAG_ECHO_LISTEN	 (MAX_CONNS + 0)
#define TAG_COUNT_LISTEN (MAX_CONNS + 1)
#define TAG_TIMER	 (MAX_CONNS + 2)

struct conn {
	int fd;
	enum kind kind;
	bool eof;		/* peer finished sending (echo) */
	size_t len, off;	/* pending output: buf[off..len) */
	uint64_t counter;
	char peer[64];
	unsigned char buf[CONN_BUF];
};

static struct conn conns[MAX_CONNS];
static int epfd = -1;
static bool verbose = true;

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* One write(2) per line so console lines from several programs stay whole. */
static void note(const char *fmt, ...)
{
	char line[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	if (write(STDOUT_FILENO, line, (size_t)n) < 0)
		return;
}

static int listen_on(uint16_t port)
{
	struct sockaddr_in6 a = {
		.sin6_family = AF_INET6,
		.sin6_port = htons(port),
		.sin6_addr = IN6ADDR_ANY_INIT,
	};
	int fd, one = 1, zero = 0;

	fd = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero,
				 sizeof(zero));
	} else {
		/* No IPv6 in this kernel: plain IPv4. */
		struct sockaddr_in a4 = {
			.sin_family = AF_INET,
			.sin_port = htons(port),
			.sin_addr.s_addr = htonl(INADDR_ANY),
		};

		fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    0);
		if (fd < 0)
			return -errno;
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				 sizeof(one));
		if (bind(fd, (struct sockaddr *)&a4, sizeof(a4)) < 0)
			goto fail;
		goto listen;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		goto fail;
listen:
	if (listen(fd, 64) < 0)
		goto fail;
	return fd;
fail:
	{
		int e = errno;

		close(fd);
		return -e;
	}
}

static int ep_set(int op, int fd, uint32_t events, uint32_t tag)
{
	struct epoll_event ev = { .events = events, .data.u32 = tag };

	return epoll_ctl(epfd, op, fd, &ev) < 0 ? -errno : 0;
}

static void conn_close(unsigned i, const char *why)
{
	struct conn *c = &conns[i];

	if (verbose)
		note("tcpsvc close %s peer=%s %s", c->kind == K_ECHO ?
		     "echo" : "counter", c->peer, why);
	(void)epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
	c->kind = K_FREE;
}

static void peer_name(int fd, char *out, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;

			if (IN6_IS_ADDR_V4MAPPED(&s->sin6_addr))
				inet_ntop(AF_INET, &s->sin6_addr.s6_addr[12],
					  host, sizeof(host));
			else
				inet_ntop(AF_INET6, &s->sin6_addr, host,
					  sizeof(host));
			port = ntohs(s->sin6_port);
		} else if (ss.ss_family == AF_INET) {
			struct sockaddr_in *s = (struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &s->sin_addr, host, sizeof(host));
			port = ntohs(s->sin_port);
		}
	}
	snprintf(out, len, "%s:%u", host, port);
}

static void do_accept(int lfd, enum kind kind)
{
	for (;;) {
		int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		unsigned i;
		int one = 1;

		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK &&
			    errno != EINTR && errno != ECONNABORTED)
				note("tcpsvc accept failed: %s",
				     strerror(errno));
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			return;
		}
		for (i = 0; i < MAX_CONNS && conns[i].kind != K_FREE; i++)
			;
		if (i == MAX_CONNS) {
			note("tcpsvc refusing connection: %d in use",
			     MAX_CONNS);
			close(fd);
			continue;
		}
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one,
				 sizeof(one));
		conns[i].fd = fd;
		conns[i].kind = kind;
		conns[i].eof = false;
		conns[i].len = conns[i].off = 0;
		conns[i].counter = 0;
		peer_name(fd, conns[i].peer, sizeof(conns[i].peer));
		if (ep_set(EPOLL_CTL_ADD, fd, EPOLLIN | EPOLLRDHUP, i) < 0) {
			close(fd);
			conns[i].kind = K_FREE;
			continue;
		}
		if (verbose)
			note("tcpsvc accept %s peer=%s",
			     kind == K_ECHO ? "echo" : "counter",
			     conns[i].peer);
	}
}

/* Sends pending output. Returns 1 when all is sent, 0 if some remains,
 * -errno on a socket error. */
static int flush(struct conn *c)
{
	while (c->off < c->len) {
		ssize_t n = send(c->fd, c->buf + c->off, c->len - c->off,
				 MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 0;
		if (n < 0)
			return -errno;
		c->off += (size_t)n;
	}
	c->off = c->len = 0;
	return 1;
}

static void echo_event(unsigned i, uint32_t ev)
{
	struct conn *c = &conns[i];
	int r;

	if (ev & EPOLLERR) {
		conn_close(i, "error");
		return;
	}
	if (c->len == 0 && !c->eof && (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
		ssize_t n = recv(c->fd, c->buf, sizeof(c->buf), 0);

		if (n < 0 && (errno == EAGAIN || errno == EINTR))
			return;
		if (n < 0) {
			conn_close(i, strerror(errno));
			return;
		}
		if (n == 0)
			c->eof = true;
		c->len = (size_t)n;
		c->off = 0;
	}
	r = flush(c);
	if (r < 0) {
		conn_close(i, strerror(-r));
		return;
	}
	if (r == 1 && c->eof) {
		conn_close(i, "eof");
		return;
	}
	/* Back-pressure: wait for POLLOUT only while output is pending. */
	(void)ep_set(EPOLL_CTL_MOD, c->fd,
		     r == 0 ? EPOLLOUT : (EPOLLIN | EPOLLRDHUP), i);
}

static void counter_event(unsigned i, uint32_t ev)
{
	struct conn *c = &conns[i];
	unsigned char junk[4096];
	int r;

	if (ev & EPOLLERR) {
		conn_close(i, "error");
		return;
	}
	if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) {
		for (;;) {
			ssize_t n = recv(c->fd, junk, sizeof(junk), 0);

			if (n > 0)
				continue;
			if (n == 0) {
				conn_close(i, "eof");
				return;
			}
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				break;
			conn_close(i, strerror(errno));
			return;
		}
	}
	if (ev & EPOLLOUT) {
		r = flush(c);
		if (r < 0) {
			conn_close(i, strerror(-r));
			return;
		}
		if (r == 1)
			(void)ep_set(EPOLL_CTL_MOD, c->fd,
				     EPOLLIN | EPOLLRDHUP, i);
	}
}

static void tick(void)
{
	unsigned i;

	for (i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		int r;

		if (c->kind != K_COUNTER || c->len)
			continue;
		c->len = (size_t)snprintf((char *)c->buf, sizeof(c->buf),
					  "counter %" PRIu64 "\n", c->counter);
		c->off = 0;
		c->counter++;
		r = flush(c);
		if (r < 0)
			conn_close(i, strerror(-r));
		else if (r == 0)
			(void)ep_set(EPOLL_CTL_MOD, c->fd,
				     EPOLLIN | EPOLLRDHUP | EPOLLOUT, i);
	}
}

/*
 * --peer: a client of another guest's echo service, run in a child
 * process. It sends a numbered 32-byte record every 100 ms on one
 * connection and checks the echo byte for byte; every 10 records it prints
 * "peer <n> ok", and "peer FAIL <why>" once if the connection breaks or an
 * echo differs (then it stops). It waits up to 5 minutes for the peer to
 * listen; after that one connection must last.
 */
static void peer_client(const char *spec)
{
	char host[64], rec[33], got[32];
	struct sockaddr_in sa = { .sin_family = AF_INET };
	struct timeval tv = { .tv_sec = 60 };
	struct timespec pause = { 0, TICK_NS };
	const char *colon = strrchr(spec, ':');
	unsigned long n = 0, tries;
	int fd = -1;

	if (!colon || (size_t)(colon - spec) >= sizeof(host)) {
		note("peer FAIL bad address '%s' (IP:PORT)", spec);
		return;
	}
	memcpy(host, spec, (size_t)(colon - spec));
	host[colon - spec] = '\0';
	sa.sin_port = htons((uint16_t)strtoul(colon + 1, NULL, 10));
	if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		note("peer FAIL bad address '%s' (IP:PORT)", spec);
		return;
	}
	for (tries = 0; tries < 3000; tries++) {
		fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		if (fd >= 0)
			close(fd);
		fd = -1;
		nanosleep(&pause, NULL);
	}
	if (fd < 0) {
		note("peer FAIL cannot connect to %s", spec);
		return;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	note("peer connected to %s", spec);
	for (;;) {
		size_t have = 0;

		snprintf(rec, sizeof(rec), "peer-record %019lu\n", n);
		if (send(fd, rec, 32, MSG_NOSIGNAL) != 32) {
			note("peer FAIL send: %s", strerror(errno));
			return;
		}
		while (have < 32) {
			ssize_t r = recv(fd, got + have, 32 - have, 0);

			if (r <= 0) {
				note("peer FAIL %s after %lu records",
				     r == 0 ? "closed" : strerror(errno), n);
				return;
			}
			have += (size_t)r;
		}
		if (memcmp(got, rec, 32)) {
			note("peer FAIL echo of record %lu differs", n);
			return;
		}
		n++;
		if (n % 10 == 0)
			note("peer %lu ok", n);
		nanosleep(&pause, NULL);
	}
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: tcpsvc [--port P] [--peer IP:PORT] [--quiet]\n"
"  --port P   echo service on P, counter service on P+1 (default 7000)\n"
"  --peer IP:PORT  also talk to another echo service: a record every\n"
"             100 ms, echo checked, 'peer <n> ok' every 10 records\n"
"  --quiet    do not log connections\n"
"  -h, --help this text\n"
"Echo (port P): sends back every byte received.\n"
"Counter (port P+1): sends 'counter <n>\\n' every 100 ms, n from 0.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "peer", required_argument, NULL, 'P' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct itimerspec its = {
		.it_interval = { 0, TICK_NS }, .it_value = { 0, TICK_NS },
	};
	unsigned long port = 7000;
	const char *peer = NULL;
	int c, efd, cfd, tfd;
	char *end;
	unsigned i;

	while ((c = getopt_long(argc, argv, "p:qhP:", opts, NULL)) != -1) {
		switch (c) {
		case 'P':
			peer = optarg;
			break;
		case 'p':
			errno = 0;
			port = strtoul(optarg, &end, 10);
			if (errno || *end || optarg[0] < '0' ||
			    optarg[0] > '9' || port == 0 || port > 65534) {
				fprintf(stderr, "tcpsvc: invalid port '%s' (1..65534)\n",
					optarg);
				return 2;
			}
			break;
		case 'q':
			verbose = false;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			fprintf(stderr, "try 'tcpsvc --help'\n");
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "tcpsvc: unexpected argument '%s'\n",
			argv[optind]);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	if (peer && fork() == 0) {
		peer_client(peer);
		_exit(0);
	}
	for (i = 0; i < MAX_CONNS; i++)
		conns[i].fd = -1;

	epfd = epoll_create1(EPOLL_CLOEXEC);
	efd = listen_on((uint16_t)port);
	cfd = listen_on((uint16_t)(port + 1));
	tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	if (epfd < 0 || efd < 0 || cfd < 0 || tfd < 0) {
		int e = epfd < 0 || tfd < 0 ? errno : efd < 0 ? -efd : -cfd;

		fprintf(stderr, "tcpsvc: cannot set up ports %lu/%lu: %s\n",
			port, port + 1, strerror(e));
		return 1;
	}
	if (timerfd_settime(tfd, 0, &its, NULL) < 0 ||
	    ep_set(EPOLL_CTL_ADD, efd, EPOLLIN, TAG_ECHO_LISTEN) < 0 ||
	    ep_set(EPOLL_CTL_ADD, cfd, EPOLLIN, TAG_COUNT_LISTEN) < 0 ||
	    ep_set(EPOLL_CTL_ADD, tfd, EPOLLIN, TAG_TIMER) < 0) {
		fprintf(stderr, "tcpsvc: setup failed: %s\n", strerror(errno));
		return 1;
	}
	note("tcpsvc listening echo=%lu counter=%lu", port, port + 1);

	for (;;) {
		struct epoll_event evs[32];
		int n = epoll_wait(epfd, evs, 32, -1);
		int k;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "tcpsvc: epoll_wait: %s\n",
				strerror(errno));
			return 1;
		}
		for (k = 0; k < n; k++) {
			uint32_t tag = evs[k].data.u32;
			uint64_t exp;

			if (tag == TAG_ECHO_LISTEN) {
				do_accept(efd, K_ECHO);
			} else if (tag == TAG_COUNT_LISTEN) {
				do_accept(cfd, K_COUNTER);
			} else if (tag == TAG_TIMER) {
				if (read(tfd, &exp, sizeof(exp)) > 0)
					tick();
			} else if (tag < MAX_CONNS &&
				   conns[tag].kind == K_ECHO) {
				echo_event(tag, evs[k].events);
			} else if (tag < MAX_CONNS &&
				   conns[tag].kind == K_COUNTER) {
				counter_event(tag, evs[k].events);
			}
		}
	}
}
