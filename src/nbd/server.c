/*
 * NBD server: one connection at a time, one export, fixed newstyle.
 *
 * The connection runs on the thread calling nbd_server_serve(): a poll
 * loop over the (non-blocking) socket and an eventfd that other threads
 * poke when they complete an io or ask the server to stop. Requests are
 * decoded from an input buffer as they arrive, validated as a whole, and
 * handed to the export in arrival order; replies go to an output buffer.
 * Backpressure: no new request is read while max_inflight requests are
 * pending or the output buffer holds more than OUT_HIGH bytes.
 */
#include "nbd/nbd.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/log.h"
#include "common/reader.h"

/* recv() asks for read_chunk bytes: READ_CHUNK_MIN at first (each
 * connection), doubled (up to READ_CHUNK) each time a recv() fills it. */
#define READ_CHUNK	(256U << 10)
#define READ_CHUNK_MIN	(16U << 10)
#define OUT_HIGH	(64U << 20)
#define MAX_OPTIONS	256
#define META_ID_BASE_ALLOCATION 1

struct srv_io {
	struct nbd_io io;	/* first: nbd_io * <-> srv_io * */
	uint64_t seq;
	bool held;		/* a FLUSH waiting for earlier writes */
	int err;
	struct srv_io *prev, *next;	/* pending list, in arrival order */
	struct srv_io *done_next;	/* completion queue */
};

struct nbd_server {
	char *export_name;
	int (*select)(void *opaque, struct nbd_server *srv, const char *name, uint32_t len,
		      void **ret_user, uint64_t *ret_size);
	void *select_opaque;
	char *description;
	bool read_only;
	uint32_t max_payload;
	unsigned int max_inflight;
	const struct nbd_export_ops *ops;
	void *user;

	int lfd;
	int port;
	int evfd;

	pthread_mutex_t lock;
	struct srv_io *done_head, *done_tail;	/* under lock */
	bool stop;				/* under lock */

	/* The current connection. */
	int fd;
	struct tsb_buf in, out;
	size_t in_pos, out_pos;
	size_t read_chunk;
	bool eof;
	struct nbd_conn_params params;
	bool no_zeroes;
	char *meta_export;	/* export the selected context belongs to */
	uint64_t seq;
	struct srv_io *head, *tail;
	unsigned int n_pending;
	bool disc;

	struct nbd_server_stats stats;
	char errmsg[256];
};

static int fail(struct nbd_server *srv, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct nbd_server *srv, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(srv->errmsg, sizeof(srv->errmsg), fmt, ap);
	va_end(ap);
	return err;
}

struct nbd_server *nbd_server_new(const struct nbd_server_config *cfg,
				  const struct nbd_export_ops *ops, void *user)
{
	struct nbd_server *srv = calloc(1, sizeof(*srv));

	if (!srv)
		return NULL;
	srv->lfd = srv->fd = -1;
	srv->export_name = strdup(cfg->export_name ? cfg->export_name : "");
	srv->description = cfg->description ? strdup(cfg->description) : NULL;
	srv->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!srv->export_name || (cfg->description && !srv->description) ||
	    srv->evfd < 0) {
		nbd_server_free(srv);
		return NULL;
	}
	srv->read_only = cfg->read_only;
	srv->max_payload = cfg->max_payload && cfg->max_payload < NBD_MAX_PAYLOAD ?
			   cfg->max_payload : NBD_MAX_PAYLOAD;
	srv->max_inflight = cfg->max_inflight ? cfg->max_inflight : 64;
	srv->ops = ops;
	srv->user = user;
	srv->select = cfg->select;
	srv->select_opaque = cfg->select_opaque;
	pthread_mutex_init(&srv->lock, NULL);
	tsb_buf_init(&srv->in);
	tsb_buf_init(&srv->out);
	return srv;
}

void nbd_server_free(struct nbd_server *srv)
{
	if (!srv)
		return;
	if (srv->lfd >= 0)
		close(srv->lfd);
	if (srv->evfd >= 0)
		close(srv->evfd);
	pthread_mutex_destroy(&srv->lock);
	tsb_buf_fini(&srv->in);
	tsb_buf_fini(&srv->out);
	free(srv->meta_export);
	free(srv->export_name);
	free(srv->description);
	free(srv);
}

int nbd_server_listen_unix(struct nbd_server *srv, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return fail(srv, -ENAMETOOLONG, "socket path too long: %s", path);
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	(void)unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
	    listen(fd, 4) < 0) {
		int err = -errno;

		close(fd);
		return fail(srv, err, "cannot listen on %s: %s", path,
			    strerror(-err));
	}
	if (srv->lfd >= 0)
		close(srv->lfd);
	srv->lfd = fd;
	return 0;
}

int nbd_server_listen_tcp(struct nbd_server *srv, const char *host,
			  const char *port)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_PASSIVE,
	};
	struct addrinfo *ai, *a;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd = -1, err = -EADDRNOTAVAIL, one = 1, r;

	r = getaddrinfo(host, port, &hints, &ai);
	if (r)
		return fail(srv, -EADDRNOTAVAIL, "cannot resolve %s:%s: %s",
			    host ? host : "*", port, gai_strerror(r));
	for (a = ai; a; a = a->ai_next) {
		fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC,
			    a->ai_protocol);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				 sizeof(one));
		if (bind(fd, a->ai_addr, a->ai_addrlen) == 0 &&
		    listen(fd, 4) == 0)
			break;
		err = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(ai);
	if (fd < 0)
		return fail(srv, err, "cannot listen on %s:%s: %s",
			    host ? host : "*", port, strerror(-err));
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			srv->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			srv->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	if (srv->lfd >= 0)
		close(srv->lfd);
	srv->lfd = fd;
	return 0;
}

int nbd_server_port(const struct nbd_server *srv)
{
	return srv->port;
}

const char *nbd_server_error(const struct nbd_server *srv)
{
	return srv->errmsg;
}

void nbd_server_get_stats(struct nbd_server *srv, struct nbd_server_stats *ret)
{
	*ret = srv->stats;
}

static void wake(struct nbd_server *srv)
{
	uint64_t one = 1;

	(void)!write(srv->evfd, &one, sizeof(one));
}

void nbd_server_stop(struct nbd_server *srv)
{
	pthread_mutex_lock(&srv->lock);
	srv->stop = true;
	pthread_mutex_unlock(&srv->lock);
	wake(srv);
}

static bool stopping(struct nbd_server *srv)
{
	bool s;

	pthread_mutex_lock(&srv->lock);
	s = srv->stop;
	pthread_mutex_unlock(&srv->lock);
	return s;
}

void nbd_server_complete(struct nbd_server *srv, struct nbd_io *io, int err)
{
	struct srv_io *s = (struct srv_io *)io;

	s->err = err > 0 ? -EIO : err;
	s->done_next = NULL;
	pthread_mutex_lock(&srv->lock);
	if (srv->done_tail)
		srv->done_tail->done_next = s;
	else
		srv->done_head = s;
	srv->done_tail = s;
	pthread_mutex_unlock(&srv->lock);
	wake(srv);
}

/* ---- socket I/O ---- */

/* Writes what the output buffer holds without blocking. 0 or -errno. */
static int write_some(struct nbd_server *srv)
{
	while (srv->out_pos < srv->out.len) {
		ssize_t n = send(srv->fd, srv->out.data + srv->out_pos,
				 srv->out.len - srv->out_pos, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return fail(srv, -errno, "send: %s", strerror(errno));
		}
		srv->out_pos += (size_t)n;
	}
	tsb_buf_reset(&srv->out);
	srv->out_pos = 0;
	return 0;
}

/* Reads what is available (at most read_chunk). 0 or -errno; sets eof. */
static int read_some(struct nbd_server *srv)
{
	ssize_t n;

	if (srv->in_pos == srv->in.len) {
		tsb_buf_reset(&srv->in);
		srv->in_pos = 0;
	} else if (srv->in_pos > (1U << 20)) {
		memmove(srv->in.data, srv->in.data + srv->in_pos,
			srv->in.len - srv->in_pos);
		srv->in.len -= srv->in_pos;
		srv->in_pos = 0;
	}
	if (tsb_buf_reserve(&srv->in, srv->read_chunk))
		return fail(srv, -ENOMEM, "out of memory");
	n = recv(srv->fd, srv->in.data + srv->in.len, srv->read_chunk, 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return fail(srv, -errno, "recv: %s", strerror(errno));
	}
	if (n == 0)
		srv->eof = true;
	srv->in.len += (size_t)n;
	if ((size_t)n == srv->read_chunk && srv->read_chunk < READ_CHUNK)
		srv->read_chunk *= 2;
	return 0;
}

/*
 * Waits until the socket is readable (want_in), writable (output pending)
 * or the eventfd fires, and does the I/O. 0 or -errno (-ECANCELED on stop).
 */
static int pump(struct nbd_server *srv, bool want_in)
{
	struct pollfd p[2] = {
		{ .fd = srv->fd },
		{ .fd = srv->evfd, .events = POLLIN },
	};
	uint64_t v;
	int r;

	if (want_in && !srv->eof)
		p[0].events |= POLLIN;
	if (srv->out_pos < srv->out.len)
		p[0].events |= POLLOUT;
	if (poll(p, 2, -1) < 0)
		return errno == EINTR ? 0 : -errno;
	if (p[1].revents)
		(void)!read(srv->evfd, &v, sizeof(v));
	if (stopping(srv))
		return fail(srv, -ECANCELED, "server stopped");
	if (p[0].revents & (POLLOUT | POLLERR | POLLHUP)) {
		r = write_some(srv);
		if (r)
			return r;
	}
	if (p[0].revents & (POLLIN | POLLERR | POLLHUP) && want_in)
		return read_some(srv);
	return 0;
}

static int flush_out(struct nbd_server *srv)
{
	int r;

	if (srv->out.err)
		return fail(srv, -ENOMEM, "out of memory");
	r = write_some(srv);
	while (!r && srv->out_pos < srv->out.len)
		r = pump(srv, false);
	return r;
}

/* ---- handshake ---- */

static uint16_t tflags(const struct nbd_server *srv)
{
	const struct nbd_export_ops *o = srv->ops;
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_CACHE;

	if (srv->read_only)
		f |= NBD_FLAG_READ_ONLY;
	if (o->flush)
		f |= NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA;
	if (o->trim && !srv->read_only)
		f |= NBD_FLAG_SEND_TRIM;
	if (o->write_zeroes && !srv->read_only)
		f |= NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
	if (srv->params.structured)
		f |= NBD_FLAG_SEND_DF;
	return f;
}

/* Is this the export (or, with select, one of them: then it is the one now)? */
static bool name_is(struct nbd_server *srv, const char *name, uint32_t len)
{
	void *user;
	uint64_t size;
	char *copy;

	if (!srv->select)
		return strlen(srv->export_name) == len &&
		       memcmp(srv->export_name, name, len) == 0;
	if (srv->select(srv->select_opaque, srv, name, len, &user, &size) < 0)
		return false;
	copy = strndup(name, len);
	if (!copy)
		return false;
	free(srv->export_name);
	srv->export_name = copy;
	srv->user = user;
	srv->params.size = size;
	return true;
}

static void reply_err(struct nbd_server *srv, uint32_t opt, uint32_t type,
		      const char *msg)
{
	nbd_put_option_reply(&srv->out, opt, type, msg, (uint32_t)strlen(msg));
}

static void send_info(struct nbd_server *srv, uint32_t opt,
		      const struct nbd_go_request *g)
{
	uint16_t i;
	size_t l;

	nbd_put_info_export(&srv->out, opt, srv->params.size, tflags(srv));
	for (i = 0; i < g->n_info; i++) {
		uint16_t t = tsb_load_be16(g->info + 2 * i);

		if (t == NBD_INFO_NAME) {
			l = strlen(srv->export_name);
			tsb_buf_put_be64(&srv->out, NBD_REP_MAGIC);
			tsb_buf_put_be32(&srv->out, opt);
			tsb_buf_put_be32(&srv->out, NBD_REP_INFO);
			tsb_buf_put_be32(&srv->out, (uint32_t)(2 + l));
			tsb_buf_put_be16(&srv->out, NBD_INFO_NAME);
			tsb_buf_append(&srv->out, srv->export_name, l);
		} else if (t == NBD_INFO_DESCRIPTION && srv->description) {
			l = strnlen(srv->description, NBD_MAX_STRING);
			tsb_buf_put_be64(&srv->out, NBD_REP_MAGIC);
			tsb_buf_put_be32(&srv->out, opt);
			tsb_buf_put_be32(&srv->out, NBD_REP_INFO);
			tsb_buf_put_be32(&srv->out, (uint32_t)(2 + l));
			tsb_buf_put_be16(&srv->out, NBD_INFO_DESCRIPTION);
			tsb_buf_append(&srv->out, srv->description, l);
		}
	}
	/* Always sent: QEMU then splits its requests at max_payload. */
	nbd_put_info_block_size(&srv->out, opt, 1, 4096, srv->max_payload);
	nbd_put_option_reply(&srv->out, opt, NBD_REP_ACK, NULL, 0);
}

static void do_meta(struct nbd_server *srv, const struct nbd_option *o)
{
	struct nbd_meta_request m;
	const char *q;
	uint32_t ql;
	bool set = o->option == NBD_OPT_SET_META_CONTEXT;
	bool sel = false;
	int r;

	if (!srv->params.structured) {
		reply_err(srv, o->option, NBD_REP_ERR_INVALID,
			  "structured replies not negotiated");
		return;
	}
	r = nbd_parse_meta(o, &m);
	if (r) {
		reply_err(srv, o->option, r == -EMSGSIZE ? NBD_REP_ERR_TOO_BIG :
			  NBD_REP_ERR_INVALID, "malformed meta context request");
		return;
	}
	if (!name_is(srv, m.name, m.name_len)) {
		reply_err(srv, o->option, NBD_REP_ERR_UNKNOWN,
			  "unknown export");
		return;
	}
	if (!set && m.n_queries == 0)
		sel = true;
	while (nbd_meta_next(&m, &q, &ql)) {
		if ((ql == strlen(NBD_META_BASE_ALLOCATION) &&
		     !memcmp(q, NBD_META_BASE_ALLOCATION, ql)) ||
		    (!set && ql == 5 && !memcmp(q, "base:", 5)))
			sel = true;
	}
	if (sel) {
		uint8_t d[4 + sizeof(NBD_META_BASE_ALLOCATION)];
		size_t l = strlen(NBD_META_BASE_ALLOCATION);

		tsb_put_be32(d, set ? META_ID_BASE_ALLOCATION : 0);
		memcpy(d + 4, NBD_META_BASE_ALLOCATION, l);
		nbd_put_option_reply(&srv->out, o->option,
				     NBD_REP_META_CONTEXT, d,
				     (uint32_t)(4 + l));
	}
	if (set) {
		srv->params.meta_base_allocation = sel;
		free(srv->meta_export);
		srv->meta_export = strndup(m.name, m.name_len);
	}
	nbd_put_option_reply(&srv->out, o->option, NBD_REP_ACK, NULL, 0);
}

/* An option handler's result for "go on haggling" (besides 1, 0 and -errno). */
#define NEGOTIATE_MORE 2

/* Sends the greeting and takes the client's flags. 0 or -errno. */
static int greet(struct nbd_server *srv)
{
	uint32_t cflags;
	ssize_t n;
	int r;

	nbd_put_greeting(&srv->out, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	r = flush_out(srv);
	if (r)
		return r;
	while ((n = nbd_decode_client_flags(srv->in.data + srv->in_pos,
					    srv->in.len - srv->in_pos,
					    &cflags)) == 0) {
		if (srv->eof)
			return fail(srv, -ECONNRESET,
				    "client closed during the handshake");
		r = pump(srv, true);
		if (r)
			return r;
	}
	srv->in_pos += (size_t)n;
	srv->stats.client_flags_seen = (uint16_t)cflags;
	if (cflags & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES))
		return fail(srv, -EBADMSG, "unknown client flags 0x%x", cflags);
	srv->no_zeroes = cflags & NBD_FLAG_C_NO_ZEROES;
	return 0;
}

/*
 * Reads the next option (its data stays in the input buffer) and counts
 * it against MAX_OPTIONS. 0 or -errno.
 */
static int next_option(struct nbd_server *srv, int *n_opts, struct nbd_option *o)
{
	ssize_t n;
	int r;

	for (;;) {
		n = nbd_decode_option(srv->in.data + srv->in_pos,
				      srv->in.len - srv->in_pos, o);
		if (n < 0)
			return fail(srv, (int)n, n == -EMSGSIZE ?
				    "option data over %u bytes" :
				    "bad option magic", NBD_MAX_OPTION_DATA);
		if (n > 0)
			break;
		if (srv->eof)
			return fail(srv, -ECONNRESET,
				    "client closed during option haggling");
		r = pump(srv, true);
		if (r)
			return r;
	}
	srv->in_pos += (size_t)n;
	if (++*n_opts > MAX_OPTIONS)
		return fail(srv, -EMSGSIZE, "more than %d options",
			    MAX_OPTIONS);
	if (o->option < 32)
		srv->stats.options_seen |= 1U << o->option;
	log_debug("nbd-server: option %s (%u), %u bytes",
		  nbd_opt_name(o->option), o->option, o->len);
	return 0;
}

/* EXPORT_NAME: the old way into transmission. 1 or -errno. */
static int opt_export_name(struct nbd_server *srv, const struct nbd_option *o)
{
	int r;

	if (!name_is(srv, (const char *)o->data, o->len))
		return fail(srv, -ENOENT,
			    "client asked for an unknown export");
	nbd_put_export_name_reply(&srv->out, srv->params.size,
				  tflags(srv), srv->no_zeroes);
	srv->params.tflags = tflags(srv);
	r = flush_out(srv);
	return r ? r : 1;
}

static void opt_list(struct nbd_server *srv, const struct nbd_option *o)
{
	size_t l = strlen(srv->export_name);

	if (o->len) {
		reply_err(srv, o->option, NBD_REP_ERR_INVALID,
			  "LIST takes no data");
		return;
	}
	tsb_buf_put_be64(&srv->out, NBD_REP_MAGIC);
	tsb_buf_put_be32(&srv->out, o->option);
	tsb_buf_put_be32(&srv->out, NBD_REP_SERVER);
	tsb_buf_put_be32(&srv->out, (uint32_t)(4 + l));
	tsb_buf_put_be32(&srv->out, (uint32_t)l);
	tsb_buf_append(&srv->out, srv->export_name, l);
	nbd_put_option_reply(&srv->out, o->option, NBD_REP_ACK, NULL, 0);
}

/* INFO or GO. 1 (GO: transmission), NEGOTIATE_MORE or -errno. */
static int opt_info_go(struct nbd_server *srv, const struct nbd_option *o)
{
	struct nbd_go_request g;
	int r;

	r = nbd_parse_go(o, &g);
	if (r) {
		reply_err(srv, o->option, r == -EMSGSIZE ?
			  NBD_REP_ERR_TOO_BIG :
			  NBD_REP_ERR_INVALID,
			  "malformed INFO/GO request");
		return NEGOTIATE_MORE;
	}
	if (!name_is(srv, g.name, g.name_len)) {
		reply_err(srv, o->option, NBD_REP_ERR_UNKNOWN,
			  "unknown export");
		return NEGOTIATE_MORE;
	}
	send_info(srv, o->option, &g);
	if (o->option == NBD_OPT_GO) {
		srv->params.tflags = tflags(srv);
		r = flush_out(srv);
		return r ? r : 1;
	}
	return NEGOTIATE_MORE;
}

static void opt_structured_reply(struct nbd_server *srv, const struct nbd_option *o)
{
	if (o->len || srv->params.structured) {
		reply_err(srv, o->option, NBD_REP_ERR_INVALID,
			  o->len ? "STRUCTURED_REPLY takes no data" :
			  "structured replies already negotiated");
		return;
	}
	srv->params.structured = true;
	nbd_put_option_reply(&srv->out, o->option, NBD_REP_ACK, NULL, 0);
}

/*
 * Answers one option: 1 when transmission starts, 0 when the client
 * aborted, NEGOTIATE_MORE for the next option, or -errno.
 */
static int handle_option(struct nbd_server *srv, const struct nbd_option *o)
{
	switch (o->option) {
	case NBD_OPT_EXPORT_NAME:
		return opt_export_name(srv, o);
	case NBD_OPT_ABORT:
		nbd_put_option_reply(&srv->out, o->option, NBD_REP_ACK,
				     NULL, 0);
		(void)flush_out(srv);
		return 0;
	case NBD_OPT_LIST:
		opt_list(srv, o);
		break;
	case NBD_OPT_STARTTLS:
		reply_err(srv, o->option, NBD_REP_ERR_POLICY,
			  "TLS is not offered on this socket");
		break;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return opt_info_go(srv, o);
	case NBD_OPT_STRUCTURED_REPLY:
		opt_structured_reply(srv, o);
		break;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		do_meta(srv, o);
		break;
	default:
		reply_err(srv, o->option, NBD_REP_ERR_UNSUP,
			  "option not supported");
		break;
	}
	return NEGOTIATE_MORE;
}

/*
 * Option haggling. Returns 1 when transmission starts, 0 when the client
 * aborted, or -errno.
 */
static int negotiate(struct nbd_server *srv)
{
	int r, n_opts = 0;

	r = greet(srv);
	if (r)
		return r;
	for (;;) {
		struct nbd_option o;

		r = next_option(srv, &n_opts, &o);
		if (r)
			return r;
		r = handle_option(srv, &o);
		if (r != NEGOTIATE_MORE)
			return r;
		r = flush_out(srv);
		if (r)
			return r;
	}
}

/* ---- transmission ---- */

static bool is_write(uint16_t type)
{
	return type == NBD_CMD_WRITE || type == NBD_CMD_WRITE_ZEROES ||
	       type == NBD_CMD_TRIM;
}

static void send_error_reply(struct nbd_server *srv, uint16_t type,
			     uint64_t cookie, uint32_t error, const char *why)
{
	if (srv->params.structured && (type == NBD_CMD_READ ||
				       type == NBD_CMD_BLOCK_STATUS))
		nbd_put_chunk_error(&srv->out, NBD_REPLY_FLAG_DONE, cookie,
				    error, why);
	else
		nbd_put_simple_reply(&srv->out, error, cookie);
}

static void send_reply(struct nbd_server *srv, struct srv_io *s)
{
	struct nbd_io *io = &s->io;

	log_debug("nbd-server: reply %s cookie %llu: %d",
		  nbd_cmd_name(io->type), (unsigned long long)io->cookie,
		  s->err);
	if (s->err) {
		send_error_reply(srv, io->type, io->cookie,
				 nbd_errno_to_wire(s->err), strerror(-s->err));
		return;
	}
	if (io->type != NBD_CMD_READ) {
		nbd_put_simple_reply(&srv->out, 0, io->cookie);
		return;
	}
	if (srv->params.structured)
		nbd_put_chunk_data_header(&srv->out, NBD_REPLY_FLAG_DONE,
					  io->cookie, io->offset, io->length);
	else
		nbd_put_simple_reply(&srv->out, 0, io->cookie);
	tsb_buf_append(&srv->out, io->data, io->length);
}

static void enqueue_done(struct nbd_server *srv, struct srv_io *s, int err)
{
	nbd_server_complete(srv, &s->io, err);
}

static void dispatch(struct nbd_server *srv, struct srv_io *s)
{
	const struct nbd_export_ops *o = srv->ops;
	int (*fn)(void *, struct nbd_io *) = NULL;
	int r;

	s->held = false;
	switch (s->io.type) {
	case NBD_CMD_READ: fn = o->read; break;
	case NBD_CMD_WRITE: fn = o->write; break;
	case NBD_CMD_WRITE_ZEROES: fn = o->write_zeroes; break;
	case NBD_CMD_TRIM: fn = o->trim; break;
	case NBD_CMD_FLUSH: fn = o->flush; break;
	}
	r = fn ? fn(srv->user, &s->io) : -EINVAL;
	if (r == NBD_IO_ASYNC)
		return;
	enqueue_done(srv, s, r > 0 ? -EIO : r);
}

/* A held flush may go once no write that arrived before it is pending. */
static void release_flushes(struct nbd_server *srv)
{
	struct srv_io *s;
	bool earlier_write = false;

	for (s = srv->head; s; s = s->next) {
		if (s->held && !earlier_write)
			dispatch(srv, s);
		else if (is_write(s->io.type))
			earlier_write = true;
	}
}

static void unlink_io(struct nbd_server *srv, struct srv_io *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else
		srv->head = s->next;
	if (s->next)
		s->next->prev = s->prev;
	else
		srv->tail = s->prev;
	srv->n_pending--;
}

/* Sends the replies of completed ios; frees them. */
static void process_completions(struct nbd_server *srv)
{
	for (;;) {
		struct srv_io *s;

		pthread_mutex_lock(&srv->lock);
		s = srv->done_head;
		if (s) {
			srv->done_head = s->done_next;
			if (!srv->done_head)
				srv->done_tail = NULL;
		}
		pthread_mutex_unlock(&srv->lock);
		if (!s)
			return;
		if (srv->fd >= 0)
			send_reply(srv, s);
		unlink_io(srv, s);
		free(s->io.data);
		free(s);
		release_flushes(srv);
	}
}

static void count(struct nbd_server *srv, const struct nbd_request *req)
{
	struct nbd_server_stats *st = &srv->stats;

	st->n_cmd[req->type & 7]++;
	if (req->type == NBD_CMD_WRITE) {
		st->bytes_written += req->length;
		if (req->length > st->max_write_len)
			st->max_write_len = req->length;
	} else if (req->type == NBD_CMD_WRITE_ZEROES) {
		st->bytes_zeroed += req->length;
		if (req->length > st->max_zero_len)
			st->max_zero_len = req->length;
	} else if (req->type == NBD_CMD_READ) {
		st->bytes_read += req->length;
	}
}

/* Answers BLOCK_STATUS: the export has no allocation map, all is data. */
static void block_status(struct nbd_server *srv, const struct nbd_request *req)
{
	struct nbd_extent e;
	uint64_t left = srv->params.size - req->offset;

	e.length = left < req->length ? (uint32_t)left : req->length;
	e.flags = 0;
	nbd_put_chunk_block_status(&srv->out, NBD_REPLY_FLAG_DONE, req->cookie,
				   META_ID_BASE_ALLOCATION, &e, 1);
}

/*
 * Takes the next request from the input buffer when it is complete.
 * Returns 1 when one was handled, 0 when more bytes are needed, -errno
 * on a fatal protocol error.
 */
static int next_request(struct nbd_server *srv)
{
	const uint8_t *p = srv->in.data + srv->in_pos;
	size_t avail = srv->in.len - srv->in_pos;
	struct nbd_request req;
	struct srv_io *s;
	const char *why;
	uint32_t err;
	ssize_t n;

	n = nbd_decode_request(p, avail, &req);
	if (n < 0)
		return fail(srv, (int)n, "bad request magic");
	if (n == 0)
		return 0;
	if (req.type == NBD_CMD_WRITE) {
		if (req.length > srv->params.max_payload)
			return fail(srv, -EMSGSIZE,
				    "WRITE of %u bytes over the %u byte limit",
				    req.length, srv->params.max_payload);
		if (avail < NBD_REQUEST_LEN + (size_t)req.length)
			return 0;
	}
	srv->in_pos += NBD_REQUEST_LEN;
	p += NBD_REQUEST_LEN;
	if (req.type == NBD_CMD_WRITE)
		srv->in_pos += req.length;
	if (req.type < 8)
		count(srv, &req);

	log_debug("nbd-server: %s cookie %llu flags 0x%x offset %llu length %u",
		  nbd_cmd_name(req.type), (unsigned long long)req.cookie,
		  req.flags, (unsigned long long)req.offset, req.length);
	err = nbd_validate_request(&req, &srv->params, &why);
	if (err) {
		log_debug("nbd-server: refused: %s", why);
		send_error_reply(srv, req.type, req.cookie, err, why);
		return 1;
	}
	switch (req.type) {
	case NBD_CMD_DISC:
		srv->disc = true;
		return 1;
	case NBD_CMD_CACHE:
		nbd_put_simple_reply(&srv->out, 0, req.cookie);
		return 1;
	case NBD_CMD_BLOCK_STATUS:
		block_status(srv, &req);
		return 1;
	}

	s = calloc(1, sizeof(*s));
	if (!s)
		return fail(srv, -ENOMEM, "out of memory");
	s->io.cookie = req.cookie;
	s->io.type = req.type;
	s->io.flags = req.flags;
	s->io.offset = req.offset;
	s->io.length = req.length;
	if (req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE) {
		s->io.data = malloc(req.length);
		if (!s->io.data) {
			free(s);
			return fail(srv, -ENOMEM, "out of memory");
		}
		if (req.type == NBD_CMD_WRITE)
			memcpy(s->io.data, p, req.length);
	}
	s->seq = srv->seq++;
	s->io.seq = s->seq;
	s->prev = srv->tail;
	if (srv->tail)
		srv->tail->next = s;
	else
		srv->head = s;
	srv->tail = s;
	srv->n_pending++;

	if (req.type == NBD_CMD_FLUSH) {
		struct srv_io *e;

		for (e = srv->head; e != s; e = e->next)
			if (is_write(e->io.type))
				break;
		if (e != s) {
			s->held = true;
			return 1;
		}
	}
	dispatch(srv, s);
	return 1;
}

static bool can_take(const struct nbd_server *srv)
{
	return !srv->disc && srv->n_pending < srv->max_inflight &&
	       srv->out.len - srv->out_pos < OUT_HIGH;
}

static int transmission(struct nbd_server *srv)
{
	int r = 0;

	for (;;) {
		process_completions(srv);
		if (srv->out.err)
			return fail(srv, -ENOMEM, "out of memory");
		while (can_take(srv)) {
			r = next_request(srv);
			if (r < 0)
				return r;
			if (r == 0)
				break;
			process_completions(srv);
		}
		if (srv->disc && !srv->n_pending)
			return flush_out(srv);
		if (srv->eof && srv->in_pos == srv->in.len && !srv->n_pending) {
			(void)flush_out(srv);
			return fail(srv, -ECONNRESET,
				    "client closed without NBD_CMD_DISC");
		}
		if (srv->eof && can_take(srv) && srv->in_pos < srv->in.len &&
		    !srv->n_pending)
			return fail(srv, -ECONNRESET,
				    "client closed in the middle of a request");
		r = pump(srv, can_take(srv));
		if (r)
			return r;
	}
}

/* Waits until every io handed to the export has completed. */
static void drain(struct nbd_server *srv)
{
	struct srv_io *s, *next;

	/* Held flushes never reached the export: drop them. */
	for (s = srv->head; s; s = next) {
		next = s->next;
		if (s->held) {
			unlink_io(srv, s);
			free(s);
		}
	}
	while (srv->n_pending) {
		struct pollfd p = { .fd = srv->evfd, .events = POLLIN };
		uint64_t v;

		process_completions(srv);
		if (!srv->n_pending)
			break;
		if (poll(&p, 1, -1) > 0)
			(void)!read(srv->evfd, &v, sizeof(v));
	}
}

int nbd_server_serve_fd(struct nbd_server *srv, int fd)
{
	uint64_t size = 0;
	int r, fl;

	srv->fd = fd;
	srv->eof = false;
	srv->disc = false;
	srv->in_pos = srv->out_pos = 0;
	tsb_buf_reset(&srv->in);
	tsb_buf_reset(&srv->out);
	memset(&srv->params, 0, sizeof(srv->params));
	memset(&srv->stats, 0, sizeof(srv->stats));
	srv->errmsg[0] = 0;
	free(srv->meta_export);
	srv->meta_export = NULL;

	/* Buffers exist from the start: decoders never see a NULL base. */
	srv->read_chunk = READ_CHUNK_MIN;
	if (tsb_buf_reserve(&srv->in, srv->read_chunk) ||
	    tsb_buf_reserve(&srv->out, 4096)) {
		r = fail(srv, -ENOMEM, "out of memory");
		goto out;
	}
	fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) {
		r = fail(srv, -errno, "fcntl: %s", strerror(errno));
		goto out;
	}
	/* With select, the export (and its size) is the one the client names. */
	r = srv->select ? 0 : srv->ops->size(srv->user, &size);
	if (r < 0) {
		r = fail(srv, r, "export size: %s", strerror(-r));
		goto out;
	}
	srv->params.size = size;
	srv->params.max_payload = srv->max_payload;
	r = negotiate(srv);
	if (r <= 0)
		goto out;
	srv->stats.structured = srv->params.structured;
	/* A context selected for another export name does not apply. */
	if (srv->params.meta_base_allocation &&
	    (!srv->meta_export || strcmp(srv->meta_export, srv->export_name)))
		srv->params.meta_base_allocation = false;
	srv->stats.meta_base_allocation = srv->params.meta_base_allocation;
	r = transmission(srv);
out:
	drain(srv);
	close(fd);
	srv->fd = -1;
	return r;
}

int nbd_server_serve(struct nbd_server *srv)
{
	struct pollfd p[2] = {
		{ .fd = srv->lfd, .events = POLLIN },
		{ .fd = srv->evfd, .events = POLLIN },
	};
	int fd;

	if (srv->lfd < 0)
		return fail(srv, -EBADF, "not listening");
	for (;;) {
		uint64_t v;

		if (stopping(srv))
			return fail(srv, -ECANCELED, "server stopped");
		if (poll(p, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (p[1].revents)
			(void)!read(srv->evfd, &v, sizeof(v));
		if (!(p[0].revents & POLLIN))
			continue;
		fd = accept4(srv->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			break;
		if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
			return fail(srv, -errno, "accept: %s", strerror(errno));
	}
	return nbd_server_serve_fd(srv, fd);
}
