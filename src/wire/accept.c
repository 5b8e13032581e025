/* Accepting a peer while strangers knock (accept.h). */
#include "wire/accept.h"

#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "wire/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct slot {
	struct acceptor *a;
	pthread_t th;
	bool used;
	atomic_bool done;
	uint64_t start_ns;
	bool evicted;		/* under a->lock */
	int fd;
	struct wire_conn *c;	/* under a->lock */
	char addr[64];		/* the peer, for the log */
};

struct acceptor {
	const struct wire_accept_options *o;
	pthread_mutex_t lock;
	struct slot slots[WIRE_ACCEPT_MAX_PENDING];
	struct wire_conn **winners;	/* want of them */
	struct wire_hello *peers;
	unsigned want, won;
	unsigned refused;
};

/* Logs the first refusals one by one, then one line in a hundred. */
static void refused(struct acceptor *a, const char *addr, const char *why)
{
	const char *what = a->o->what;
	unsigned n;

	pthread_mutex_lock(&a->lock);
	n = ++a->refused;
	pthread_mutex_unlock(&a->lock);
	if (n <= 10 || n % 100 == 0)
		log_warn("%s%srefused a connection from %s: %s (%u refused so far)",
			 what ? what : "", what ? ": " : "", addr, why, n);
}

static void peer_addr(int fd, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (getpeername(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET) {
			struct sockaddr_in *in = (struct sockaddr_in *)&ss;

			inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
			port = ntohs(in->sin_port);
		} else if (ss.ss_family == AF_INET6) {
			struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

			inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
			port = ntohs(in6->sin6_port);
		}
	}
	snprintf(buf, len, "%s:%u", host, port);
}

static void *handshake_thread(void *arg)
{
	struct slot *sl = arg;
	struct acceptor *a = sl->a;
	const struct wire_accept_options *o = a->o;
	struct wire_conn *c = wire_conn_new_take(o->tls, sl->fd);
	struct wire_hello peer;
	char why[256] = "";
	int r;

	if (!c) {
		refused(a, sl->addr, "out of memory");
		sl->done = true;
		return NULL;
	}
	pthread_mutex_lock(&a->lock);
	sl->c = c;
	r = sl->evicted ? -ECANCELED : 0;
	pthread_mutex_unlock(&a->lock);
	wire_conn_set_timeout(c, WIRE_ACCEPT_HANDSHAKE_MS);
	if (r == 0)
		r = wire_conn_handshake(c, WIRE_ACCEPT_HANDSHAKE_MS);
	if (r == 0)
		r = wire_conn_hello(c, o->hello, &peer);
	if (r == 0 && !o->want(c, &peer, o->opaque, why, sizeof(why))) {
		(void)wire_conn_send_status(c, WIRE_MSG_ERROR, WIRE_CODE_REFUSED, why);
		r = -EPERM;
	}
	pthread_mutex_lock(&a->lock);
	if (r == 0 && a->won < a->want) {
		a->winners[a->won] = c;
		if (a->peers)
			a->peers[a->won] = peer;
		a->won++;
		c = NULL;
	}
	sl->c = NULL;
	pthread_mutex_unlock(&a->lock);
	if (c) {
		if (r == -EPERM)
			refused(a, sl->addr, why);
		else if (r == -ECANCELED)
			refused(a, sl->addr,
				"too many handshakes at once: the oldest was dropped");
		else if (r < 0)
			refused(a, sl->addr,
				wire_conn_errmsg(c)[0] ? wire_conn_errmsg(c) : strerror(-r));
		wire_conn_free(c);
	}
	sl->done = true;
	return NULL;
}

/* Joins finished handshakes; with all, aborts and joins every one. */
static void reap(struct acceptor *a, bool all)
{
	for (unsigned i = 0; i < WIRE_ACCEPT_MAX_PENDING; i++) {
		struct slot *sl = &a->slots[i];

		if (!sl->used || (!all && !sl->done))
			continue;
		if (all) {
			pthread_mutex_lock(&a->lock);
			if (sl->c)
				wire_conn_abort(sl->c);
			pthread_mutex_unlock(&a->lock);
		}
		pthread_join(sl->th, NULL);
		sl->used = false;
	}
}

/*
 * A free slot; when all are taken, the oldest handshake makes room (a
 * real peer finishes in a round trip or two, so a flood of stalled
 * connections cannot keep it out).
 */
static struct slot *free_slot(struct acceptor *a)
{
	struct slot *oldest = NULL;

	for (unsigned i = 0; i < WIRE_ACCEPT_MAX_PENDING; i++) {
		struct slot *sl = &a->slots[i];

		if (!sl->used)
			return sl;
		if (!oldest || sl->start_ns < oldest->start_ns)
			oldest = sl;
	}
	pthread_mutex_lock(&a->lock);
	oldest->evicted = true;
	if (oldest->c)
		wire_conn_abort(oldest->c);
	pthread_mutex_unlock(&a->lock);
	pthread_join(oldest->th, NULL);
	oldest->used = false;
	return oldest;
}

int wire_accept_peer(const struct wire_accept_options *o, struct wire_conn **ret_conn,
		     struct wire_hello *ret_peer, unsigned *ret_refused)
{
	return wire_accept_peers(o, 1, ret_conn, ret_peer, ret_refused);
}

int wire_accept_peers(const struct wire_accept_options *o, unsigned n,
		      struct wire_conn **ret_conns, struct wire_hello *ret_peers,
		      unsigned *ret_refused)
{
	struct acceptor a = { .o = o, .winners = ret_conns, .peers = ret_peers, .want = n };
	struct pollfd p = { .fd = o->lfd, .events = POLLIN };
	struct slot *sl;
	int fd, r = 0;

	pthread_mutex_init(&a.lock, NULL);
	for (;;) {
		reap(&a, false);
		pthread_mutex_lock(&a.lock);
		if (a.won == a.want) {
			pthread_mutex_unlock(&a.lock);
			break;
		}
		pthread_mutex_unlock(&a.lock);
		if (o->sig && *o->sig > 1) {
			r = -EINTR;
			break;
		}
		if (o->deadline_ns && tsb_now_ns() >= o->deadline_ns) {
			r = -ETIMEDOUT;
			break;
		}
		if (o->stopped && o->stopped(o->opaque)) {
			r = -ECANCELED;
			break;
		}
		if (poll(&p, 1, 50) <= 0)
			continue;
		/*
		 * A peer may have won while we waited: what arrived since is for
		 * the next acceptor on this port (a sender without a store opens
		 * its disk channel at once), not a surplus peer to refuse.
		 */
		pthread_mutex_lock(&a.lock);
		if (a.won == a.want) {
			pthread_mutex_unlock(&a.lock);
			break;
		}
		pthread_mutex_unlock(&a.lock);
		r = wire_tcp_accept(o->lfd, &fd);
		if (r < 0) {
			if (r == -EMFILE || r == -ENFILE || r == -ENOBUFS || r == -ENOMEM)
				usleep(100000); /* out of fds: no busy loop */
			r = 0;
			continue;
		}
		sl = free_slot(&a);
		wire_tcp_tune(fd, 0);
		memset(sl, 0, sizeof(*sl));
		sl->a = &a;
		sl->start_ns = tsb_now_ns();
		sl->fd = fd;
		peer_addr(fd, sl->addr, sizeof(sl->addr));
		sl->used = true;
		if (tsb_thread_create(&sl->th, handshake_thread, sl)) {
			sl->used = false;
			close(fd);
			refused(&a, sl->addr, "cannot start a thread");
		}
	}
	reap(&a, true);
	if (a.won == a.want) {
		for (unsigned i = 0; i < a.won; i++)
			wire_conn_set_timeout(a.winners[i], 0); /* the caller sets its own */
		r = 0;
	} else {
		for (unsigned i = 0; i < a.won; i++) {
			wire_conn_free(a.winners[i]);
			a.winners[i] = NULL;
		}
	}
	if (ret_refused)
		*ret_refused += a.refused;
	pthread_mutex_destroy(&a.lock);
	return r;
}
