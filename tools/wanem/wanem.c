/*
 * tsubame-wanem: a userspace WAN emulator for TCP.
 *
 * Relays every connection accepted on --listen to --connect through two
 * emulated links, "up" (client to server) and "down" (server to client).
 * Each link is shared by all connections in its direction and has a rate
 * and a one-way delay:
 *
 *   departure   = max(now, link_free_at)
 *   link_free_at = departure + len / rate
 *   deliver_at  = link_free_at + delay
 *
 * Bytes read and not yet delivered ("on the link") are bounded per link;
 * when the bound is reached the relay stops reading, so senders see the
 * link's rate through TCP backpressure. Delivery times only grow within a
 * link, so each link keeps its chunks in one FIFO and a single timerfd
 * wakes the loop when the oldest chunk of either link is due.
 *
 * One thread, one epoll loop; signals arrive through a signalfd:
 * SIGTERM/SIGINT stop, SIGUSR1 cuts the link (resets every connection and
 * refuses new ones), SIGRTMIN blackholes it (nothing is read, written or
 * accepted, nothing is reset; the links' clocks stop with their chunks
 * queued), SIGUSR2 or SIGRTMIN+1 brings it up again.
 */
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
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
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#define WANEM_EXIT_OK 0
#define WANEM_EXIT_FAIL 1
#define WANEM_EXIT_USAGE 2

/* Largest read (and so the coarsest scheduling unit) per chunk. */
#define CHUNK_MAX (64 * 1024)
#define CHUNK_MIN 1024
/* Router queue added on top of the bandwidth-delay product by default. */
#define QUEUE_EXTRA (256 * 1024)
/* Default bound on a link with no rate limit. */
#define UNLIMITED_BUFFER (16ull * 1024 * 1024)
/* Delivered bytes a slow receiver may hold back before its sender pauses. */
#define PIPE_RX_CAP (256 * 1024)
/* Receive buffer of the relay's own sockets; keeps hidden buffering small. */
#define SOCK_RCVBUF (256 * 1024)
/* Reads per input socket per wake-up, so one sender cannot starve others. */
#define READS_PER_WAKE 8
#define ACCEPTS_PER_WAKE 64
#define MAX_EVENTS 64
#define DEFAULT_MAX_CONNS 1024
/* Closed connections kept in the stats file. */
#define CLOSED_KEEP 64

enum watch_kind {
	WATCH_LISTEN,
	WATCH_TIMER,
	WATCH_SIGNAL,
	WATCH_ENDPOINT,
};

struct watch {
	enum watch_kind kind;
};

enum link_state {
	LINK_UP,
	LINK_CUT,		/* SIGUSR1: connections reset, new ones refused */
	LINK_BLACKHOLE,		/* SIGRTMIN: silent, nothing moves */
};

struct conn;
struct pipe;

struct chunk {
	struct chunk *pnext;		/* pipe FIFO */
	struct chunk *lnext, *lprev;	/* link FIFO, while on the link */
	struct pipe *pipe;
	uint64_t deliver_ns;
	uint32_t len;
	uint32_t off;
	bool released;			/* off the link, may be written */
	bool fin;			/* end of stream marker, len 0 */
	unsigned char data[];
};

struct link {
	const char *name;
	uint64_t rate;			/* bytes/s, 0 = unlimited */
	uint64_t delay_ns;
	uint64_t cap;			/* bound on bytes on the link */
	size_t read_max;
	uint64_t free_at_ns;
	uint64_t free_frac;		/* remainder of len * 1e9 / rate */
	uint64_t onlink;
	uint64_t bytes;			/* delivered */
	struct chunk *head, *tail;
	struct pipe *wait_head, *wait_tail;	/* paused: link full */
	bool waking;
	bool blackhole;			/* nothing read, released or written */
};

struct pipe {
	struct conn *conn;
	struct link *link;
	struct endpoint *in, *out;
	struct chunk *head, *tail;
	uint64_t released;		/* released bytes not yet written */
	uint64_t bytes;			/* delivered */
	bool in_eof;			/* input ended, FIN queued */
	bool done;			/* FIN passed on */
	bool waiting;			/* on link->wait list */
	struct pipe *wnext, *wprev;
};

struct endpoint {
	struct watch w;
	struct conn *conn;
	int fd;
	uint32_t events;		/* registered interest, 0 = not in epoll */
};

struct conn {
	uint64_t id;
	struct endpoint client, server;
	struct pipe up, down;
	bool connecting;
	bool dead;
	struct conn *next, *prev;
};

struct closed_rec {
	uint64_t id;
	uint64_t bytes_up, bytes_down;
	bool reset;
};

struct wanem {
	int epfd;
	struct watch listen_w;
	int listen_fd;
	struct watch timer_w;
	int timer_fd;
	uint64_t timer_armed;		/* 0 = disarmed */
	bool listen_watched;		/* listen_fd in epoll */
	struct watch signal_w;
	int signal_fd;

	struct sockaddr_storage target;
	socklen_t target_len;
	char listen_str[128];
	char connect_str[128];
	int listen_port;

	struct link up, down;
	struct conn *conns;
	struct conn *dead;
	uint64_t next_id;
	uint64_t nconns_total;
	uint64_t nconns_active;
	uint64_t nresets;
	uint64_t max_conns;
	enum link_state state;
	uint64_t blackhole_ns;		/* when the blackhole began */
	bool stop;

	struct closed_rec closed[CLOSED_KEEP];
	unsigned int nclosed;

	const char *stats_path;
	const char *pidfile;
	unsigned char buf[CHUNK_MAX];
};

static void conn_fail(struct wanem *w, struct conn *c, const char *what,
		      int err);
static void conn_update(struct wanem *w, struct conn *c);

/* ---- small helpers ---- */

static void set_int_opt(int fd, int level, int name, int val)
{
	(void)setsockopt(fd, level, name, &val, sizeof(val));
}

static void close_rst(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	if (fd < 0)
		return;
	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

static int sockaddr_to_str(const struct sockaddr *sa, socklen_t len,
			   char *out, size_t out_len, int *ret_port)
{
	char host[INET6_ADDRSTRLEN + 16], port[8];
	int r;

	r = getnameinfo(sa, len, host, sizeof(host), port, sizeof(port),
			NI_NUMERICHOST | NI_NUMERICSERV);
	if (r)
		return -EINVAL;
	if (sa->sa_family == AF_INET6)
		snprintf(out, out_len, "[%s]:%s", host, port);
	else
		snprintf(out, out_len, "%s:%s", host, port);
	if (ret_port) {
		uint64_t v;

		if (tsb_parse_u64(port, 0, 65535, &v) < 0)
			return -EINVAL;
		*ret_port = (int)v;
	}
	return 0;
}

/* ---- stats ---- */

/* Rewrites the stats file (tmp + rename). Returns 0 or -errno, logged. */
static int write_stats(struct wanem *w)
{
	char tmp[4096];
	struct conn *c;
	unsigned int i, n;
	FILE *f;
	int fd;

	if (!w->stats_path)
		return 0;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", w->stats_path,
		     (int)getpid()) >= (int)sizeof(tmp)) {
		log_warn("stats path too long: %s", w->stats_path);
		return -ENAMETOOLONG;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return tsb_log_errno(TSB_LOG_WARN, -errno, "cannot write %s", tmp);
	f = fdopen(fd, "w");
	if (!f) {
		close(fd);
		unlink(tmp);
		return -ENOMEM;
	}
	fprintf(f, "{\"pid\":%d,\"listen\":\"%s\",\"listen_port\":%d,"
		   "\"connect\":\"%s\",\"link\":\"%s\",",
		(int)getpid(), w->listen_str, w->listen_port, w->connect_str,
		w->state == LINK_CUT ? "cut" :
		w->state == LINK_BLACKHOLE ? "blackhole" : "up");
	fprintf(f, "\"connections\":%" PRIu64 ",\"active\":%" PRIu64
		   ",\"resets\":%" PRIu64 ",",
		w->nconns_total, w->nconns_active, w->nresets);
	fprintf(f, "\"bytes_up\":%" PRIu64 ",\"bytes_down\":%" PRIu64 ","
		   "\"rate_up\":%" PRIu64 ",\"rate_down\":%" PRIu64 ","
		   "\"delay_up_ns\":%" PRIu64 ",\"delay_down_ns\":%" PRIu64 ","
		   "\"buffer_up\":%" PRIu64 ",\"buffer_down\":%" PRIu64 ",",
		w->up.bytes, w->down.bytes, w->up.rate, w->down.rate,
		w->up.delay_ns, w->down.delay_ns, w->up.cap, w->down.cap);
	fprintf(f, "\"conns\":[");
	n = 0;
	/* Closed ones, oldest first, then the open ones. */
	for (i = 0; i < CLOSED_KEEP && i < w->nclosed; i++) {
		unsigned int k = w->nclosed > CLOSED_KEEP ?
			(w->nclosed + i) % CLOSED_KEEP : i;
		const struct closed_rec *r = &w->closed[k];

		fprintf(f, "%s{\"id\":%" PRIu64 ",\"state\":\"%s\","
			   "\"bytes_up\":%" PRIu64 ",\"bytes_down\":%" PRIu64 "}",
			n++ ? "," : "", r->id, r->reset ? "reset" : "closed",
			r->bytes_up, r->bytes_down);
	}
	for (c = w->conns; c; c = c->next)
		fprintf(f, "%s{\"id\":%" PRIu64 ",\"state\":\"open\","
			   "\"bytes_up\":%" PRIu64 ",\"bytes_down\":%" PRIu64 "}",
			n++ ? "," : "", c->id, c->up.bytes, c->down.bytes);
	fprintf(f, "]}\n");
	if (fclose(f) != 0) {
		int r = -errno;

		unlink(tmp);
		return tsb_log_errno(TSB_LOG_WARN, r, "cannot write %s", tmp);
	}
	if (rename(tmp, w->stats_path) < 0) {
		int r = -errno;

		unlink(tmp);
		return tsb_log_errno(TSB_LOG_WARN, r, "cannot rename %s to %s",
				     tmp, w->stats_path);
	}
	return 0;
}

/* ---- epoll interest ---- */

static void ep_set(struct wanem *w, struct endpoint *ep, uint32_t events)
{
	struct epoll_event ev = { .events = events, .data.ptr = &ep->w };
	int op;

	if (ep->fd < 0 || ep->events == events)
		return;
	/*
	 * An fd with no interest leaves epoll entirely: epoll reports
	 * EPOLLHUP whatever the mask, which would spin the loop while the
	 * link is full. Errors then show up on the next read or write.
	 */
	if (!events)
		op = EPOLL_CTL_DEL;
	else if (!ep->events)
		op = EPOLL_CTL_ADD;
	else
		op = EPOLL_CTL_MOD;
	if (epoll_ctl(w->epfd, op, ep->fd, &ev) < 0) {
		tsb_log_errno(TSB_LOG_WARN, -errno, "epoll_ctl(fd %d)", ep->fd);
		return;
	}
	ep->events = events;
}

/* ---- links ---- */

static void link_wait_add(struct link *l, struct pipe *p)
{
	if (p->waiting)
		return;
	p->waiting = true;
	p->wnext = NULL;
	p->wprev = l->wait_tail;
	if (l->wait_tail)
		l->wait_tail->wnext = p;
	else
		l->wait_head = p;
	l->wait_tail = p;
}

static void link_wait_del(struct link *l, struct pipe *p)
{
	if (!p->waiting)
		return;
	if (p->wprev)
		p->wprev->wnext = p->wnext;
	else
		l->wait_head = p->wnext;
	if (p->wnext)
		p->wnext->wprev = p->wprev;
	else
		l->wait_tail = p->wprev;
	p->waiting = false;
	p->wnext = p->wprev = NULL;
}

static bool link_is_full(const struct link *l)
{
	return l->onlink >= l->cap;
}

/* Puts a chunk on the link and on its pipe, computing its delivery time. */
static void link_send(struct link *l, struct pipe *p, struct chunk *ch,
		      uint64_t now)
{
	uint64_t t = l->free_at_ns > now ? l->free_at_ns : now;

	if (l->rate && ch->len) {
		uint64_t num = (uint64_t)ch->len * 1000000000ull + l->free_frac;

		t += num / l->rate;
		l->free_frac = num % l->rate;
	}
	l->free_at_ns = t;
	ch->deliver_ns = t + l->delay_ns;
	ch->pipe = p;

	ch->lnext = NULL;
	ch->lprev = l->tail;
	if (l->tail)
		l->tail->lnext = ch;
	else
		l->head = ch;
	l->tail = ch;
	l->onlink += ch->len;

	ch->pnext = NULL;
	if (p->tail)
		p->tail->pnext = ch;
	else
		p->head = ch;
	p->tail = ch;
}

static void link_unlink(struct link *l, struct chunk *ch)
{
	if (ch->lprev)
		ch->lprev->lnext = ch->lnext;
	else
		l->head = ch->lnext;
	if (ch->lnext)
		ch->lnext->lprev = ch->lprev;
	else
		l->tail = ch->lprev;
	ch->lnext = ch->lprev = NULL;
	l->onlink -= ch->len;
}

/* ---- pipes ---- */

static bool pipe_can_read(const struct pipe *p)
{
	const struct conn *c = p->conn;

	if (c->dead || p->in_eof || p->done || p->link->blackhole)
		return false;
	/* The server's bytes cannot be read before it is connected. */
	if (p->in == &c->server && c->connecting)
		return false;
	return p->released < PIPE_RX_CAP;
}

static bool pipe_wants_write(const struct pipe *p)
{
	const struct conn *c = p->conn;

	if (c->dead || p->link->blackhole || !p->head || !p->head->released)
		return false;
	return !(p->out == &c->server && c->connecting);
}

static void pipe_free_chunks(struct pipe *p)
{
	struct chunk *ch, *next;

	for (ch = p->head; ch; ch = next) {
		next = ch->pnext;
		if (!ch->released)
			link_unlink(p->link, ch);
		free(ch);
	}
	p->head = p->tail = NULL;
	p->released = 0;
	link_wait_del(p->link, p);
}

/*
 * Writes released chunks to the output. Returns 0, or -errno when the
 * connection failed (the caller resets it).
 */
static int pipe_flush(struct pipe *p)
{
	struct conn *c = p->conn;
	struct chunk *ch;
	ssize_t n;

	while (pipe_wants_write(p)) {
		ch = p->head;
		if (ch->fin) {
			if (shutdown(p->out->fd, SHUT_WR) < 0 && errno != ENOTCONN)
				return -errno;
			p->done = true;
			p->head = ch->pnext;
			if (!p->head)
				p->tail = NULL;
			free(ch);
			log_debug("conn %" PRIu64 ": %s FIN passed on", c->id,
				  p->link->name);
			continue;
		}
		n = write(p->out->fd, ch->data + ch->off, ch->len - ch->off);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -errno;
		}
		ch->off += n;
		p->bytes += n;
		p->link->bytes += n;
		if (ch->off < ch->len)
			return 0;
		p->released -= ch->len;
		p->head = ch->pnext;
		if (!p->head)
			p->tail = NULL;
		free(ch);
	}
	return 0;
}

static int pipe_queue_fin(struct pipe *p, uint64_t now)
{
	struct chunk *ch = calloc(1, sizeof(*ch));

	if (!ch)
		return -ENOMEM;
	ch->fin = true;
	p->in_eof = true;
	link_send(p->link, p, ch, now);
	log_debug("conn %" PRIu64 ": %s FIN read", p->conn->id, p->link->name);
	return 0;
}

/*
 * Reads what the link accepts from the pipe's input. Returns 0, or -errno
 * when the connection failed.
 */
static int pipe_read(struct wanem *w, struct pipe *p, int max_reads)
{
	struct link *l = p->link;
	struct chunk *ch;
	int i;

	for (i = 0; i < max_reads; i++) {
		ssize_t n;

		if (!pipe_can_read(p))
			return 0;
		if (link_is_full(l)) {
			link_wait_add(l, p);
			return 0;
		}
		n = read(p->in->fd, w->buf, l->read_max);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return -errno;
		}
		if (n == 0)
			return pipe_queue_fin(p, tsb_now_ns());
		ch = malloc(sizeof(*ch) + n);
		if (!ch)
			return -ENOMEM;
		memset(ch, 0, sizeof(*ch));
		ch->len = n;
		memcpy(ch->data, w->buf, n);
		link_send(l, p, ch, tsb_now_ns());
	}
	return 1;
}

/*
 * Gives the room that just opened on a link to the pipes that paused on
 * it, one chunk each in turn (round robin), so that a bulk sender cannot
 * starve the others. A pipe that still has data goes back to the tail.
 */
static void link_wake(struct wanem *w, struct link *l)
{
	/* Paused pipes keep their turn until the blackhole ends. */
	if (l->waking || l->blackhole)
		return;
	l->waking = true;
	while (l->wait_head && !link_is_full(l)) {
		struct pipe *p = l->wait_head;
		struct conn *c = p->conn;
		int r;

		link_wait_del(l, p);
		r = pipe_read(w, p, 1);
		if (r < 0) {
			conn_fail(w, c, p == &c->up ? "read from client" :
				  "read from server", r);
			continue;
		}
		if (r > 0 && pipe_can_read(p))
			link_wait_add(l, p);
		conn_update(w, c);
	}
	l->waking = false;
}

/* ---- connections ---- */

static void conn_record_closed(struct wanem *w, struct conn *c, bool reset)
{
	struct closed_rec *r = &w->closed[w->nclosed % CLOSED_KEEP];

	r->id = c->id;
	r->bytes_up = c->up.bytes;
	r->bytes_down = c->down.bytes;
	r->reset = reset;
	w->nclosed++;
}

/* Unlinks the connection and queues it for freeing after this wake-up. */
static void conn_kill(struct wanem *w, struct conn *c, bool reset)
{
	if (c->dead)
		return;
	c->dead = true;
	ep_set(w, &c->client, 0);
	ep_set(w, &c->server, 0);
	if (reset) {
		close_rst(c->client.fd);
		close_rst(c->server.fd);
	} else {
		close(c->client.fd);
		close(c->server.fd);
	}
	c->client.fd = c->server.fd = -1;
	pipe_free_chunks(&c->up);
	pipe_free_chunks(&c->down);

	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->next = w->dead;
	c->prev = NULL;
	w->dead = c;

	w->nconns_active--;
	if (reset)
		w->nresets++;
	conn_record_closed(w, c, reset);
	/* Chunks left the links: paused senders may go on. */
	link_wake(w, &w->up);
	link_wake(w, &w->down);
	if (!w->stop)
		(void)write_stats(w);
}

static void conn_reset(struct wanem *w, struct conn *c, const char *why)
{
	if (c->dead)
		return;
	log_info("conn %" PRIu64 ": reset (%s), %" PRIu64 " bytes up, %"
		 PRIu64 " down", c->id, why, c->up.bytes, c->down.bytes);
	conn_kill(w, c, true);
}

static void conn_fail(struct wanem *w, struct conn *c, const char *what,
		      int err)
{
	char why[160];

	snprintf(why, sizeof(why), "%s: %s", what, strerror(-err));
	conn_reset(w, c, why);
}

/*
 * Whether to watch the pipe's input: a pipe paused on a full link waits on
 * the link's list instead and is served from link_wake().
 */
static bool pipe_wants_read(struct pipe *p)
{
	if (!pipe_can_read(p) || p->waiting)
		return false;
	if (link_is_full(p->link)) {
		link_wait_add(p->link, p);
		return false;
	}
	return true;
}

/* Recomputes epoll interest and closes the pair once both FINs passed. */
static void conn_update(struct wanem *w, struct conn *c)
{
	uint32_t ev_client = 0, ev_server = 0;

	if (c->dead)
		return;
	if (c->up.done && c->down.done) {
		log_info("conn %" PRIu64 ": closed, %" PRIu64 " bytes up, %"
			 PRIu64 " down", c->id, c->up.bytes, c->down.bytes);
		conn_kill(w, c, false);
		return;
	}
	/*
	 * A blackholed link watches nothing, not even errors or a connect in
	 * progress: a peer's RST or FIN is found when the link flows again,
	 * as on a path that drops packets.
	 */
	if (w->state == LINK_BLACKHOLE) {
		ep_set(w, &c->client, 0);
		ep_set(w, &c->server, 0);
		return;
	}
	if (pipe_wants_read(&c->up))
		ev_client |= EPOLLIN;
	if (pipe_wants_read(&c->down))
		ev_server |= EPOLLIN;
	if (pipe_wants_write(&c->down))
		ev_client |= EPOLLOUT;
	if (pipe_wants_write(&c->up) || c->connecting)
		ev_server |= EPOLLOUT;
	ep_set(w, &c->client, ev_client);
	ep_set(w, &c->server, ev_server);
}

static void conn_flush(struct wanem *w, struct conn *c, struct pipe *p)
{
	int r;

	if (c->dead)
		return;
	r = pipe_flush(p);
	if (r < 0) {
		conn_fail(w, c, p == &c->up ? "write to server" :
			  "write to client", r);
		return;
	}
	conn_update(w, c);
}

static void conn_connected(struct wanem *w, struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->server.fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err) {
		log_warn("conn %" PRIu64 ": cannot connect to %s: %s", c->id,
			 w->connect_str, strerror(err));
		conn_reset(w, c, "connect failed");
		return;
	}
	c->connecting = false;
	log_debug("conn %" PRIu64 ": connected to %s", c->id, w->connect_str);
	conn_flush(w, c, &c->up);
}

static void endpoint_event(struct wanem *w, struct endpoint *ep,
			   uint32_t events)
{
	struct conn *c = ep->conn;
	bool is_client = ep == &c->client;
	struct pipe *in = is_client ? &c->up : &c->down;
	struct pipe *out = is_client ? &c->down : &c->up;
	int r;

	/* Events of this wake-up that came before a SIGRTMIN in it. */
	if (c->dead || w->state == LINK_BLACKHOLE)
		return;
	if (!is_client && c->connecting) {
		if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
			conn_connected(w, c);
		return;
	}
	if (events & EPOLLERR) {
		int err = 0;
		socklen_t len = sizeof(err);

		(void)getsockopt(ep->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		conn_fail(w, c, is_client ? "client" : "server",
			  -(err ? err : ECONNRESET));
		return;
	}
	if (events & (EPOLLIN | EPOLLHUP) && pipe_can_read(in)) {
		r = pipe_read(w, in, READS_PER_WAKE);
		if (r < 0) {
			conn_fail(w, c, is_client ? "read from client" :
				  "read from server", r);
			return;
		}
	}
	/* After a hang-up, writing tells whether the peer still listens. */
	if (events & (EPOLLOUT | EPOLLHUP))
		conn_flush(w, c, out);
	else
		conn_update(w, c);
}

static int conn_new(struct wanem *w, int cfd)
{
	struct conn *c;
	int sfd, r;

	if (w->nconns_active >= w->max_conns) {
		log_warn("too many connections (%" PRIu64 "), refusing one",
			 w->max_conns);
		close_rst(cfd);
		return 0;
	}
	sfd = socket(w->target.ss_family,
		     SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (sfd < 0) {
		r = -errno;
		close_rst(cfd);
		return log_error_errno(r, "cannot create socket");
	}
	set_int_opt(sfd, SOL_SOCKET, SO_RCVBUF, SOCK_RCVBUF);
	set_int_opt(sfd, IPPROTO_TCP, TCP_NODELAY, 1);
	set_int_opt(cfd, IPPROTO_TCP, TCP_NODELAY, 1);

	c = calloc(1, sizeof(*c));
	if (!c) {
		close_rst(cfd);
		close(sfd);
		return -ENOMEM;
	}
	c->id = ++w->next_id;
	c->client = (struct endpoint){ .w.kind = WATCH_ENDPOINT, .conn = c,
				       .fd = cfd };
	c->server = (struct endpoint){ .w.kind = WATCH_ENDPOINT, .conn = c,
				       .fd = sfd };
	c->up = (struct pipe){ .conn = c, .link = &w->up, .in = &c->client,
			       .out = &c->server };
	c->down = (struct pipe){ .conn = c, .link = &w->down,
				 .in = &c->server, .out = &c->client };
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	w->nconns_total++;
	w->nconns_active++;

	if (connect(sfd, (struct sockaddr *)&w->target, w->target_len) < 0) {
		if (errno != EINPROGRESS) {
			r = -errno;
			log_warn("conn %" PRIu64 ": cannot connect to %s: %s",
				 c->id, w->connect_str, strerror(-r));
			conn_reset(w, c, "connect failed");
			return 0;
		}
		c->connecting = true;
	}
	conn_update(w, c);
	(void)write_stats(w);
	return 0;
}

static void listen_event(struct wanem *w)
{
	struct sockaddr_storage ss;
	char peer[128];
	int i, fd;

	/* Blackholed: new connections wait in the listen backlog. */
	if (w->state == LINK_BLACKHOLE)
		return;
	for (i = 0; i < ACCEPTS_PER_WAKE; i++) {
		socklen_t len = sizeof(ss);

		fd = accept4(w->listen_fd, (struct sockaddr *)&ss, &len,
			     SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno == EAGAIN || errno == EINTR ||
			    errno == ECONNABORTED)
				return;
			tsb_log_errno(TSB_LOG_WARN, -errno, "accept");
			return;
		}
		if (sockaddr_to_str((struct sockaddr *)&ss, len, peer,
				    sizeof(peer), NULL) < 0)
			snprintf(peer, sizeof(peer), "?");
		if (w->state == LINK_CUT) {
			log_notice("link cut: refusing connection from %s", peer);
			close_rst(fd);
			continue;
		}
		log_info("conn %" PRIu64 ": accepted from %s", w->next_id + 1,
			 peer);
		if (conn_new(w, fd) < 0)
			return;
	}
}

/*
 * The listening socket leaves epoll while the link is blackholed, so that
 * new connections wait in the kernel's listen backlog.
 */
static void listen_watch(struct wanem *w, bool on)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &w->listen_w };

	if (w->listen_watched == on)
		return;
	if (epoll_ctl(w->epfd, on ? EPOLL_CTL_ADD : EPOLL_CTL_DEL,
		      w->listen_fd, &ev) < 0) {
		tsb_log_errno(TSB_LOG_WARN, -errno, "epoll_ctl(listen fd)");
		return;
	}
	w->listen_watched = on;
}

/*
 * Restarts a link's clock after a blackhole of d ns that began at since:
 * every chunk on it keeps the time it had left, and the link stays busy
 * for as long as it had still to be.
 */
static void link_thaw(struct link *l, uint64_t since, uint64_t d)
{
	struct chunk *ch;

	l->blackhole = false;
	for (ch = l->head; ch; ch = ch->lnext)
		ch->deliver_ns += d;
	if (l->free_at_ns > since)
		l->free_at_ns += d;
}

/* Ends a blackhole; returns the number of connections that resume. */
static unsigned int blackhole_end(struct wanem *w)
{
	uint64_t now = tsb_now_ns();
	struct conn *c, *next;
	unsigned int n = 0;

	link_thaw(&w->up, w->blackhole_ns, now - w->blackhole_ns);
	link_thaw(&w->down, w->blackhole_ns, now - w->blackhole_ns);
	w->state = LINK_UP;
	listen_watch(w, true);
	/*
	 * Watch the sockets again. No pair has both FINs passed (it would
	 * have closed then), so this closes none; run() releases what is due.
	 */
	for (c = w->conns; c; c = next) {
		next = c->next;
		conn_update(w, c);
		n++;
	}
	return n;
}

static void cut_link(struct wanem *w)
{
	enum link_state was = w->state;
	unsigned int n = 0;

	if (was == LINK_CUT) {
		log_notice("SIGUSR1: link already cut");
		return;
	}
	/* Queued chunks go with their connections. */
	if (was == LINK_BLACKHOLE)
		(void)blackhole_end(w);
	w->state = LINK_CUT;
	while (w->conns) {
		conn_reset(w, w->conns, "link cut");
		n++;
	}
	log_notice("SIGUSR1: link cut, %u connection(s) reset, refusing new ones%s",
		   n, was == LINK_BLACKHOLE ? " (was blackholed)" : "");
	(void)write_stats(w);
}

static void blackhole_link(struct wanem *w)
{
	enum link_state was = w->state;
	struct conn *c, *next;
	unsigned int n = 0;

	if (was == LINK_BLACKHOLE) {
		log_notice("SIGRTMIN: link already blackholed");
		return;
	}
	w->state = LINK_BLACKHOLE;
	w->blackhole_ns = tsb_now_ns();
	w->up.blackhole = w->down.blackhole = true;
	listen_watch(w, false);
	for (c = w->conns; c; c = next) {
		next = c->next;
		conn_update(w, c);	/* watches nothing, closes nothing */
		n++;
	}
	log_notice("SIGRTMIN: link blackholed%s, %u connection(s) stalled with %"
		   PRIu64 " bytes up and %" PRIu64 " down on the link, new ones "
		   "wait in the listen backlog", was == LINK_CUT ? " (was cut)" : "",
		   n, w->up.onlink, w->down.onlink);
	(void)write_stats(w);
}

/* SIGUSR2 or SIGRTMIN+1: the link is up again, whichever way it was down. */
static void restore_link(struct wanem *w, const char *sig)
{
	enum link_state was = w->state;
	uint64_t since = w->blackhole_ns;
	unsigned int n;

	if (was == LINK_UP) {
		log_notice("%s: link already up", sig);
		return;
	}
	if (was == LINK_CUT) {
		w->state = LINK_UP;
		log_notice("%s: link restored", sig);
	} else {
		n = blackhole_end(w);
		log_notice("%s: link flows again after %.3f s blackholed, %u "
			   "connection(s) resume with %" PRIu64 " bytes up and %"
			   PRIu64 " down on the link", sig,
			   (tsb_now_ns() - since) / 1e9, n, w->up.onlink,
			   w->down.onlink);
	}
	(void)write_stats(w);
}

static void signal_event(struct wanem *w)
{
	struct signalfd_siginfo si;

	while (read(w->signal_fd, &si, sizeof(si)) == sizeof(si)) {
		int sig = (int)si.ssi_signo;

		/* SIGRTMIN is not a constant with glibc: no case label. */
		if (sig == SIGRTMIN) {
			blackhole_link(w);
			continue;
		}
		if (sig == SIGRTMIN + 1) {
			restore_link(w, "SIGRTMIN+1");
			continue;
		}
		switch (sig) {
		case SIGTERM:
		case SIGINT:
			log_notice("%s: stopping", strsignal(sig));
			w->stop = true;
			break;
		case SIGUSR1:
			cut_link(w);
			break;
		case SIGUSR2:
			restore_link(w, "SIGUSR2");
			break;
		default:
			break;
		}
	}
}

/* Releases every chunk whose delivery time has come and writes it out. */
static void link_release(struct wanem *w, struct link *l, uint64_t now)
{
	bool was_full = link_is_full(l);

	if (l->blackhole)
		return;
	while (l->head && l->head->deliver_ns <= now) {
		struct chunk *ch = l->head;
		struct pipe *p = ch->pipe;

		link_unlink(l, ch);
		ch->released = true;
		p->released += ch->len;
		/* May reset the connection, which edits this list. */
		conn_flush(w, p->conn, p);
	}
	if (was_full || l->wait_head)
		link_wake(w, l);
}

static void arm_timer(struct wanem *w)
{
	struct itimerspec its = { 0 };
	uint64_t next = 0;

	/* Blackholed, the links' clocks stop: the timer stays disarmed. */
	if (w->up.head && !w->up.blackhole)
		next = w->up.head->deliver_ns;
	if (w->down.head && !w->down.blackhole &&
	    (!next || w->down.head->deliver_ns < next))
		next = w->down.head->deliver_ns;
	if (next == w->timer_armed)
		return;
	if (next) {
		/* 0 would disarm; a due time of 0 cannot happen on a booted box. */
		its.it_value.tv_sec = next / 1000000000ull;
		its.it_value.tv_nsec = next % 1000000000ull;
	}
	if (timerfd_settime(w->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) < 0) {
		tsb_log_errno(TSB_LOG_WARN, -errno, "timerfd_settime");
		return;
	}
	w->timer_armed = next;
}

static void free_dead(struct wanem *w)
{
	while (w->dead) {
		struct conn *c = w->dead;

		w->dead = c->next;
		free(c);
	}
}

static int run(struct wanem *w)
{
	struct epoll_event evs[MAX_EVENTS];
	int i, n;

	while (!w->stop) {
		arm_timer(w);
		n = epoll_wait(w->epfd, evs, MAX_EVENTS, -1);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return log_error_errno(-errno, "epoll_wait");
		}
		for (i = 0; i < n; i++) {
			struct watch *wt = evs[i].data.ptr;

			switch (wt->kind) {
			case WATCH_LISTEN:
				listen_event(w);
				break;
			case WATCH_TIMER: {
				uint64_t ticks;

				(void)!read(w->timer_fd, &ticks, sizeof(ticks));
				w->timer_armed = 0;
				break;
			}
			case WATCH_SIGNAL:
				signal_event(w);
				break;
			case WATCH_ENDPOINT:
				endpoint_event(w,
					       (struct endpoint *)wt,
					       evs[i].events);
				break;
			}
		}
		link_release(w, &w->up, tsb_now_ns());
		link_release(w, &w->down, tsb_now_ns());
		free_dead(w);
	}
	return 0;
}

/* ---- setup ---- */

static int resolve(const char *what, const char *spec, bool passive,
		   struct sockaddr_storage *ret, socklen_t *ret_len)
{
	char host[256], port[32];
	struct addrinfo hints = { 0 }, *res;
	int r;

	if (tsb_split_hostport(spec, host, sizeof(host), port, sizeof(port)) < 0)
		return -EINVAL;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = passive ? AI_PASSIVE : 0;
	if (!host[0] || !strcmp(host, "*"))
		hints.ai_flags |= AI_PASSIVE;
	r = getaddrinfo(host[0] && strcmp(host, "*") ? host : NULL, port,
			&hints, &res);
	if (r) {
		log_error("cannot resolve %s address '%s': %s", what, spec,
			  gai_strerror(r));
		return -EHOSTUNREACH;
	}
	memcpy(ret, res->ai_addr, res->ai_addrlen);
	*ret_len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int open_listener(struct wanem *w, const char *spec)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, r;

	r = resolve("listen", spec, true, &ss, &len);
	if (r < 0)
		return r;
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return log_error_errno(-errno, "cannot create socket");
	set_int_opt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	/* Inherited by accepted sockets; set before listen for window scale. */
	set_int_opt(fd, SOL_SOCKET, SO_RCVBUF, SOCK_RCVBUF);
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0) {
		r = -errno;
		close(fd);
		return log_error_errno(r, "cannot listen on %s", spec);
	}
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0 ||
	    sockaddr_to_str((struct sockaddr *)&ss, len, w->listen_str,
			    sizeof(w->listen_str), &w->listen_port) < 0)
		snprintf(w->listen_str, sizeof(w->listen_str), "%s", spec);
	w->listen_fd = fd;
	return 0;
}

static int write_pidfile(const char *path)
{
	char tmp[4096];
	FILE *f;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	fprintf(f, "%d\n", (int)getpid());
	if (fclose(f) != 0 || rename(tmp, path) < 0) {
		int r = -errno;

		unlink(tmp);
		return r;
	}
	return 0;
}

static void link_setup(struct link *l, const char *name, uint64_t rate,
		       uint64_t delay_ns, uint64_t buffer)
{
	l->name = name;
	l->rate = rate;
	l->delay_ns = delay_ns;
	if (buffer) {
		l->cap = buffer;
	} else if (rate) {
		unsigned __int128 bdp = (unsigned __int128)rate * delay_ns /
					1000000000u;

		l->cap = (bdp > UINT64_MAX / 2 ? UINT64_MAX / 2 : (uint64_t)bdp) +
			 QUEUE_EXTRA;
	} else {
		l->cap = UNLIMITED_BUFFER;
	}
	/* About 1 ms of the link per chunk, between 1 KiB and 64 KiB. */
	if (!rate || rate / 1000 >= CHUNK_MAX)
		l->read_max = CHUNK_MAX;
	else if (rate / 1000 <= CHUNK_MIN)
		l->read_max = CHUNK_MIN;
	else
		l->read_max = rate / 1000;
}

static void format_rate(uint64_t rate, char *out, size_t len)
{
	if (!rate)
		snprintf(out, len, "unlimited");
	else
		snprintf(out, len, "%.3f Mbit/s", rate * 8 / 1e6);
}

static void usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame-wanem --listen HOST:PORT --connect HOST:PORT [OPTIONS]\n"
"\n"
"Relays TCP connections from --listen to --connect through an emulated WAN\n"
"link with a rate and a one-way delay per direction. \"up\" is client to\n"
"server, \"down\" server to client. All connections share the link.\n"
"\n"
"Options:\n"
"  -l, --listen HOST:PORT   address to accept connections on (port 0: any)\n"
"  -c, --connect HOST:PORT  address each connection is relayed to\n"
"  -r, --rate RATE          link rate both ways, e.g. 100mbit, 12.5MB (bytes/s);\n"
"                           0 or absent: unlimited\n"
"      --rate-up RATE       rate client to server (wins over --rate)\n"
"      --rate-down RATE     rate server to client (wins over --rate)\n"
"  -d, --delay DUR          one-way delay both ways, e.g. 25ms (RTT adds 2x)\n"
"      --delay-up DUR       one-way delay client to server (wins over --delay)\n"
"      --delay-down DUR     one-way delay server to client (wins over --delay)\n"
"  -b, --buffer BYTES       bound on bytes on each link (default: rate x delay\n"
"                           + 256K; 16M without a rate); the relay stops\n"
"                           reading when it is reached\n"
"      --max-conns N        connections at once (default %d)\n"
"  -s, --stats FILE         write byte counts as JSON to FILE (atomically) at\n"
"                           start, on every connection open/close, link cut,\n"
"                           blackhole or restore, and at exit\n"
"  -p, --pidfile FILE       write the process id to FILE\n"
"  -v, --verbose            log each connection (twice: debug)\n"
"  -q, --quiet              log errors and warnings only\n"
"  -h, --help               show this help\n"
"      --version            show the version\n"
"\n"
"Signals:\n"
"  SIGTERM, SIGINT   write stats and exit 0\n"
"  SIGUSR1           cut the link: reset all connections, refuse new ones\n"
"  SIGRTMIN          blackhole the link: nothing is read, delivered or\n"
"                    written either way and nothing is reset; bytes on the\n"
"                    link stay queued, new connections wait in the listen\n"
"                    backlog (kill -s RTMIN PID)\n"
"  SIGRTMIN+1        end a blackhole: queued bytes are delivered, in order,\n"
"                    on the same connections (kill -s RTMIN+1 PID)\n"
"  SIGUSR2           restore the link (SIGUSR2 and SIGRTMIN+1 both bring it\n"
"                    up, from a cut or a blackhole)\n"
"\n"
"Exit status: 0 stopped by a signal, 1 failure, 2 usage error.\n",
		DEFAULT_MAX_CONNS);
}

enum {
	OPT_RATE_UP = 256,
	OPT_RATE_DOWN,
	OPT_DELAY_UP,
	OPT_DELAY_DOWN,
	OPT_MAX_CONNS,
	OPT_VERSION,
};

static const struct option long_opts[] = {
	{ "listen", required_argument, NULL, 'l' },
	{ "connect", required_argument, NULL, 'c' },
	{ "rate", required_argument, NULL, 'r' },
	{ "rate-up", required_argument, NULL, OPT_RATE_UP },
	{ "rate-down", required_argument, NULL, OPT_RATE_DOWN },
	{ "delay", required_argument, NULL, 'd' },
	{ "delay-up", required_argument, NULL, OPT_DELAY_UP },
	{ "delay-down", required_argument, NULL, OPT_DELAY_DOWN },
	{ "buffer", required_argument, NULL, 'b' },
	{ "max-conns", required_argument, NULL, OPT_MAX_CONNS },
	{ "stats", required_argument, NULL, 's' },
	{ "pidfile", required_argument, NULL, 'p' },
	{ "verbose", no_argument, NULL, 'v' },
	{ "quiet", no_argument, NULL, 'q' },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, OPT_VERSION },
	{ NULL, 0, NULL, 0 },
};

static int __attribute__((format(printf, 1, 2))) usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tsubame-wanem: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "; try 'tsubame-wanem --help'\n");
	return WANEM_EXIT_USAGE;
}

static int setup_fds(struct wanem *w)
{
	struct epoll_event ev = { .events = EPOLLIN };
	sigset_t mask;

	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (w->epfd < 0)
		return log_error_errno(-errno, "epoll_create1");
	w->timer_fd = timerfd_create(CLOCK_MONOTONIC,
				     TFD_NONBLOCK | TFD_CLOEXEC);
	if (w->timer_fd < 0)
		return log_error_errno(-errno, "timerfd_create");
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGRTMIN);
	sigaddset(&mask, SIGRTMIN + 1);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		return log_error_errno(-errno, "sigprocmask");
	w->signal_fd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (w->signal_fd < 0)
		return log_error_errno(-errno, "signalfd");
	signal(SIGPIPE, SIG_IGN);

	w->listen_w.kind = WATCH_LISTEN;
	w->timer_w.kind = WATCH_TIMER;
	w->signal_w.kind = WATCH_SIGNAL;
	ev.data.ptr = &w->listen_w;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &ev) < 0)
		return log_error_errno(-errno, "epoll_ctl");
	w->listen_watched = true;
	ev.data.ptr = &w->timer_w;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->timer_fd, &ev) < 0)
		return log_error_errno(-errno, "epoll_ctl");
	ev.data.ptr = &w->signal_w;
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->signal_fd, &ev) < 0)
		return log_error_errno(-errno, "epoll_ctl");
	return 0;
}

int main(int argc, char **argv)
{
	static struct wanem wanem;
	struct wanem *w = &wanem;
	const char *listen_spec = NULL, *connect_spec = NULL;
	/* Per-direction options win over --rate/--delay, whatever the order. */
	uint64_t rate = 0, rate_up = UINT64_MAX, rate_down = UINT64_MAX;
	uint64_t delay = 0, delay_up = UINT64_MAX, delay_down = UINT64_MAX;
	uint64_t buffer = 0, v;
	char r1[32], r2[32];
	int verbose = 0, opt, r;

	tsb_log_set_prefix("wanem");
	w->max_conns = DEFAULT_MAX_CONNS;
	w->listen_fd = w->timer_fd = w->signal_fd = w->epfd = -1;

	while ((opt = getopt_long(argc, argv, "l:c:r:d:b:s:p:vqh", long_opts,
				  NULL)) != -1) {
		switch (opt) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'c':
			connect_spec = optarg;
			break;
		case 'r':
		case OPT_RATE_UP:
		case OPT_RATE_DOWN:
			if (tsb_parse_rate(optarg, &v) < 0)
				return usage_error("invalid rate '%s' (e.g. 100mbit, 12.5MB)",
						   optarg);
			if (opt == 'r')
				rate = v;
			else if (opt == OPT_RATE_UP)
				rate_up = v;
			else
				rate_down = v;
			break;
		case 'd':
		case OPT_DELAY_UP:
		case OPT_DELAY_DOWN:
			if (tsb_parse_duration(optarg, &v) < 0)
				return usage_error("invalid delay '%s' (e.g. 25ms)",
						   optarg);
			if (opt == 'd')
				delay = v;
			else if (opt == OPT_DELAY_UP)
				delay_up = v;
			else
				delay_down = v;
			break;
		case 'b':
			if (tsb_parse_size(optarg, &buffer) < 0 || !buffer)
				return usage_error("invalid buffer size '%s' (e.g. 4M)",
						   optarg);
			break;
		case OPT_MAX_CONNS:
			if (tsb_parse_u64(optarg, 1, 100000, &w->max_conns) < 0)
				return usage_error("invalid --max-conns '%s' (1-100000)",
						   optarg);
			break;
		case 's':
			w->stats_path = optarg;
			break;
		case 'p':
			w->pidfile = optarg;
			break;
		case 'v':
			verbose++;
			break;
		case 'q':
			verbose = -1;
			break;
		case 'h':
			usage(stdout);
			return WANEM_EXIT_OK;
		case OPT_VERSION:
			printf("tsubame-wanem %s\n", TSB_VERSION);
			return WANEM_EXIT_OK;
		default:
			fprintf(stderr, "try 'tsubame-wanem --help'\n");
			return WANEM_EXIT_USAGE;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!listen_spec)
		return usage_error("%s", "missing --listen HOST:PORT");
	if (!connect_spec)
		return usage_error("%s", "missing --connect HOST:PORT");
	{
		char h[256], p[32];

		if (tsb_split_hostport(listen_spec, h, sizeof(h), p, sizeof(p)) < 0)
			return usage_error("invalid --listen '%s' (want HOST:PORT)",
					   listen_spec);
		if (tsb_split_hostport(connect_spec, h, sizeof(h), p, sizeof(p)) < 0)
			return usage_error("invalid --connect '%s' (want HOST:PORT)",
					   connect_spec);
	}
	if (verbose < 0)
		tsb_log_set_level(TSB_LOG_WARN);
	else if (verbose == 1)
		tsb_log_set_level(TSB_LOG_INFO);
	else if (verbose > 1)
		tsb_log_set_level(TSB_LOG_DEBUG);

	link_setup(&w->up, "up", rate_up != UINT64_MAX ? rate_up : rate,
		   delay_up != UINT64_MAX ? delay_up : delay, buffer);
	link_setup(&w->down, "down", rate_down != UINT64_MAX ? rate_down : rate,
		   delay_down != UINT64_MAX ? delay_down : delay, buffer);

	/* Timer slack would add up to 50 us to every delivery. */
	(void)prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);

	r = resolve("connect", connect_spec, false, &w->target, &w->target_len);
	if (r < 0)
		return WANEM_EXIT_FAIL;
	/* Numeric from here on: also safe to put into the JSON stats. */
	(void)sockaddr_to_str((struct sockaddr *)&w->target, w->target_len,
			      w->connect_str, sizeof(w->connect_str), NULL);
	if (open_listener(w, listen_spec) < 0)
		return WANEM_EXIT_FAIL;
	if (setup_fds(w) < 0)
		return WANEM_EXIT_FAIL;
	/* The stats file comes first: a harness waits for it. */
	if (write_stats(w) < 0) {
		log_error("cannot write the stats file %s", w->stats_path);
		return WANEM_EXIT_FAIL;
	}
	if (w->pidfile) {
		r = write_pidfile(w->pidfile);
		if (r < 0) {
			log_error_errno(r, "cannot write pidfile %s", w->pidfile);
			return WANEM_EXIT_FAIL;
		}
	}
	format_rate(w->up.rate, r1, sizeof(r1));
	format_rate(w->down.rate, r2, sizeof(r2));
	log_notice("listening on %s, relaying to %s; up %s +%.3f ms, down %s +%.3f ms",
		   w->listen_str, w->connect_str, r1, w->up.delay_ns / 1e6, r2,
		   w->down.delay_ns / 1e6);

	r = run(w);

	while (w->conns)
		conn_kill(w, w->conns, true);
	free_dead(w);
	(void)write_stats(w);
	if (w->pidfile)
		unlink(w->pidfile);
	close(w->listen_fd);
	close(w->timer_fd);
	close(w->signal_fd);
	close(w->epfd);
	return r < 0 ? WANEM_EXIT_FAIL : WANEM_EXIT_OK;
}
