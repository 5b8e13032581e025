/*
 * QMP client. One connection, not thread-safe: a struct qmp must be used by
 * one thread at a time.
 *
 * QEMU writes one JSON object per line ("\r\n" terminated). Lines are
 * gathered in a growable buffer capped at QMP_MAX_MESSAGE; a longer line is
 * skipped up to its newline and reported as -EMSGSIZE, so the stream stays
 * in sync. Replies are matched to commands by an integer "id" we attach to
 * every command; events that arrive meanwhile are queued (at most
 * QMP_MAX_QUEUED_EVENTS, oldest dropped first). QEMU's pretty-printing
 * (-mon ...,pretty=on) spreads a message over lines and is not supported.
 */
#include "qmp/qmp.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* A socket refusing connections this long has no QEMU behind it. */
#define QMP_REFUSED_GIVE_UP_NS 1000000000ull

#define QMP_READ_CHUNK 65536
#define QMP_DEFAULT_TIMEOUT_MS 30000

struct qmp_evnode {
	struct qmp_event ev;
	struct qmp_evnode *next;
};

struct qmp {
	int fd;
	int timeout_ms;
	int64_t next_id;
	/* receive buffer: buf[0..len) holds bytes not yet consumed */
	char *buf;
	size_t len;
	size_t cap;
	size_t scanned;	  /* bytes of buf already searched for '\n' */
	bool skipping;	  /* discarding an oversized line up to its '\n' */
	int dead;	  /* sticky error once the connection is unusable */
	bool oob;	  /* out-of-band execution negotiated (qmp_execute_oob) */
	/* event FIFO */
	struct qmp_evnode *ev_head;
	struct qmp_evnode *ev_tail;
	size_t ev_count;
};

/* Deadline helpers: timeout_ms < 0 means forever. */
static uint64_t deadline_from(int timeout_ms)
{
	if (timeout_ms < 0)
		return UINT64_MAX;
	return tsb_now_ns() + (uint64_t)timeout_ms * 1000000ull;
}

static int ms_left(uint64_t deadline)
{
	uint64_t now;
	uint64_t left;

	if (deadline == UINT64_MAX)
		return -1;
	now = tsb_now_ns();
	if (now >= deadline)
		return 0;
	left = (deadline - now + 999999) / 1000000;
	return left > INT32_MAX ? INT32_MAX : (int)left;
}

static void copy_err(char *errbuf, size_t errlen, const char *msg)
{
	if (errbuf && errlen)
		snprintf(errbuf, errlen, "%s", msg);
}

/* ---- event queue ------------------------------------------------------ */

void qmp_event_fini(struct qmp_event *ev)
{
	if (!ev)
		return;
	free(ev->name);
	json_decref(ev->data);
	ev->name = NULL;
	ev->data = NULL;
	ev->time_ns = 0;
}

static void ev_push(struct qmp *q, struct qmp_evnode *n)
{
	n->next = NULL;
	if (q->ev_tail)
		q->ev_tail->next = n;
	else
		q->ev_head = n;
	q->ev_tail = n;
	q->ev_count++;
}

static struct qmp_evnode *ev_pop(struct qmp *q)
{
	struct qmp_evnode *n = q->ev_head;

	if (!n)
		return NULL;
	q->ev_head = n->next;
	if (!q->ev_head)
		q->ev_tail = NULL;
	q->ev_count--;
	return n;
}

/*
 * Turns an event message into a queue node. The message has already been
 * checked to carry a string "event" member.
 */
static int ev_from_json(json_t *msg, struct qmp_evnode **ret_node)
{
	struct qmp_evnode *n;
	const char *name = NULL;
	json_t *data = NULL;
	json_t *ts = NULL;
	json_int_t sec, usec;
	json_error_t jerr;

	if (json_unpack_ex(msg, &jerr, 0, "{s:s, s?o, s?o}", "event", &name,
			   "data", &data, "timestamp", &ts) < 0)
		return -EBADMSG;
	n = calloc(1, sizeof(*n));
	if (!n)
		return -ENOMEM;
	n->ev.name = strdup(name);
	if (!n->ev.name) {
		free(n);
		return -ENOMEM;
	}
	if (data && json_is_object(data))
		n->ev.data = json_incref(data);
	else
		n->ev.data = json_object();
	if (!n->ev.data) {
		qmp_event_fini(&n->ev);
		free(n);
		return -ENOMEM;
	}
	/* QEMU sends {"seconds": -1, "microseconds": -1} if the clock failed. */
	if (ts && json_unpack_ex(ts, &jerr, 0, "{s:I, s:I}", "seconds", &sec,
				 "microseconds", &usec) == 0 &&
	    sec >= 0 && usec >= 0 && usec < 1000000 &&
	    (uint64_t)sec < UINT64_MAX / 1000000000ull - 1)
		n->ev.time_ns = (uint64_t)sec * 1000000000ull +
				(uint64_t)usec * 1000ull;
	else
		n->ev.time_ns = tsb_wall_ns();
	*ret_node = n;
	return 0;
}

static int queue_event(struct qmp *q, json_t *msg)
{
	struct qmp_evnode *n;
	int r;

	r = ev_from_json(msg, &n);
	if (r < 0)
		return r;
	if (q->ev_count >= QMP_MAX_QUEUED_EVENTS) {
		struct qmp_evnode *old = ev_pop(q);

		log_debug("qmp: event queue full, dropping %s", old->ev.name);
		qmp_event_fini(&old->ev);
		free(old);
	}
	ev_push(q, n);
	return 0;
}

/* ---- reading ---------------------------------------------------------- */

/* Waits until fd is readable (or writable); 0, -ETIMEDOUT or -errno. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = events };
	int r;

	for (;;) {
		r = poll(&pfd, 1, ms_left(deadline));
		if (r > 0)
			return 0;
		if (r == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/*
 * Looks for a complete line in the buffer. Returns 1 and the line (without
 * its newline, not NUL-terminated) in *ret_line and *ret_len, 0 if none yet,
 * -EMSGSIZE once when an oversized line has been skipped.
 */
static int take_line(struct qmp *q, const char **ret_line, size_t *ret_len,
		     size_t *ret_consumed)
{
	char *nl;

	nl = q->len > q->scanned ?
		memchr(q->buf + q->scanned, '\n', q->len - q->scanned) : NULL;
	if (!nl) {
		q->scanned = q->len;
		if (q->skipping) {
			/* drop what we have; keep skipping */
			q->len = 0;
			q->scanned = 0;
		} else if (q->len > QMP_MAX_MESSAGE) {
			q->skipping = true;
			q->len = 0;
			q->scanned = 0;
		}
		return 0;
	}
	*ret_line = q->buf;
	*ret_len = (size_t)(nl - q->buf);
	*ret_consumed = *ret_len + 1;
	if (q->skipping) {
		q->skipping = false;
		return -EMSGSIZE;
	}
	if (*ret_len > QMP_MAX_MESSAGE)
		return -EMSGSIZE;
	return 1;
}

static void consume(struct qmp *q, size_t n)
{
	memmove(q->buf, q->buf + n, q->len - n);
	q->len -= n;
	q->scanned = 0;
	/* give back the memory of a large message once it is gone */
	if (q->len == 0 && q->cap > 4 * QMP_READ_CHUNK) {
		free(q->buf);
		q->buf = NULL;
		q->cap = 0;
	}
}

/* Reads more bytes into the buffer; 0, -EAGAIN, -ECONNRESET or -errno. */
static int fill(struct qmp *q)
{
	ssize_t n;

	if (q->cap - q->len < QMP_READ_CHUNK) {
		size_t ncap = q->cap ? q->cap * 2 : 2 * QMP_READ_CHUNK;
		char *nbuf;

		/* never more than one max message plus one chunk */
		if (ncap > QMP_MAX_MESSAGE + 2 * QMP_READ_CHUNK)
			ncap = QMP_MAX_MESSAGE + 2 * QMP_READ_CHUNK;
		if (ncap <= q->cap)
			return -EMSGSIZE; /* cannot happen: take_line skips */
		nbuf = realloc(q->buf, ncap);
		if (!nbuf)
			return -ENOMEM;
		q->buf = nbuf;
		q->cap = ncap;
	}
	for (;;) {
		n = recv(q->fd, q->buf + q->len, q->cap - q->len, 0);
		if (n > 0) {
			q->len += (size_t)n;
			return 0;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return -EAGAIN;
		if (errno == EPIPE)
			return -ECONNRESET;
		return -errno;
	}
}

/*
 * Reads the next JSON object from QEMU. Returns 0 and a new reference in
 * *ret_msg, -ETIMEDOUT, -EMSGSIZE (an oversized line was skipped),
 * -EBADMSG (a line that is not a JSON object), -ECONNRESET or -errno.
 */
static int read_message(struct qmp *q, uint64_t deadline, json_t **ret_msg)
{
	const char *line;
	size_t len, consumed;
	json_error_t jerr;
	json_t *msg;
	int r;

	if (q->dead)
		return q->dead;
	for (;;) {
		r = take_line(q, &line, &len, &consumed);
		if (r < 0) {
			consume(q, consumed);
			log_debug("qmp: skipped a message over %u bytes",
				  (unsigned)QMP_MAX_MESSAGE);
			return r;
		}
		if (r > 0) {
			/* skip blank lines ("\r" only) */
			size_t i;

			for (i = 0; i < len; i++)
				if (line[i] != ' ' && line[i] != '\t' &&
				    line[i] != '\r')
					break;
			if (i == len) {
				consume(q, consumed);
				continue;
			}
			msg = json_loadb(line, len, JSON_REJECT_DUPLICATES,
					 &jerr);
			consume(q, consumed);
			if (!msg) {
				log_debug("qmp: bad JSON from QEMU: %s", jerr.text);
				return -EBADMSG;
			}
			if (!json_is_object(msg)) {
				json_decref(msg);
				log_debug("qmp: message is not a JSON object");
				return -EBADMSG;
			}
			*ret_msg = msg;
			return 0;
		}
		r = fill(q);
		if (r == 0)
			continue;
		if (r == -ENOMEM)
			return r;
		if (r != -EAGAIN) {
			if (r != -ECONNRESET)
				log_debug("qmp: recv failed: %s", strerror(-r));
			q->dead = r;
			return r;
		}
		r = wait_fd(q->fd, POLLIN, deadline);
		if (r < 0)
			return r;
	}
}

/* ---- writing ---------------------------------------------------------- */

static int send_all(struct qmp *q, const char *data, size_t len, int fd,
		    uint64_t deadline)
{
	size_t off = 0;
	ssize_t n;
	int r;

	while (off < len) {
		if (fd >= 0) {
			/* the fd travels with the first byte(s) of the command */
			char cbuf[CMSG_SPACE(sizeof(int))];
			struct iovec iov = {
				.iov_base = (void *)(data + off),
				.iov_len = len - off,
			};
			struct msghdr mh = {
				.msg_iov = &iov,
				.msg_iovlen = 1,
				.msg_control = cbuf,
				.msg_controllen = sizeof(cbuf),
			};
			struct cmsghdr *c;

			memset(cbuf, 0, sizeof(cbuf));
			c = CMSG_FIRSTHDR(&mh);
			c->cmsg_level = SOL_SOCKET;
			c->cmsg_type = SCM_RIGHTS;
			c->cmsg_len = CMSG_LEN(sizeof(int));
			memcpy(CMSG_DATA(c), &fd, sizeof(int));
			n = sendmsg(q->fd, &mh, MSG_NOSIGNAL);
			if (n > 0)
				fd = -1;
		} else {
			n = send(q->fd, data + off, len - off, MSG_NOSIGNAL);
		}
		if (n > 0) {
			off += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			r = wait_fd(q->fd, POLLOUT, deadline);
			if (r < 0)
				return r;
			continue;
		}
		if (n < 0 && errno != EPIPE && errno != ECONNRESET)
			return -errno;
		q->dead = -ECONNRESET;
		return -ECONNRESET;
	}
	return 0;
}

/* ---- commands --------------------------------------------------------- */

/*
 * Is msg the reply to command id? A reply carries "return" or "error". An
 * error without "id" is QEMU's answer to input it could not parse, which
 * can only be the command in flight.
 */
static bool is_reply_to(json_t *msg, int64_t id)
{
	json_t *jid = json_object_get(msg, "id");
	bool has_ret = json_object_get(msg, "return") != NULL;
	bool has_err = json_object_get(msg, "error") != NULL;

	if (!has_ret && !has_err)
		return false;
	if (!jid)
		return has_err;
	return json_is_integer(jid) && json_integer_value(jid) == id;
}

static int handle_reply(json_t *msg, json_t **ret_result, char *errbuf,
			size_t errlen)
{
	json_t *err = json_object_get(msg, "error");
	json_t *ret;

	if (err) {
		const char *cls = NULL, *desc = NULL;
		json_error_t jerr;

		if (json_unpack_ex(err, &jerr, 0, "{s?s, s?s}", "class", &cls,
				   "desc", &desc) < 0 || (!cls && !desc)) {
			copy_err(errbuf, errlen, "malformed QMP error reply");
			return -EBADMSG;
		}
		copy_err(errbuf, errlen, desc ? desc : cls);
		return -EREMOTEIO;
	}
	ret = json_object_get(msg, "return");
	if (ret_result)
		*ret_result = json_incref(ret);
	return 0;
}

static int execute(struct qmp *q, const char *verb, const char *command, json_t *args,
		   int fd, json_t **ret_result, char *errbuf, size_t errlen)
{
	uint64_t deadline = deadline_from(q->timeout_ms);
	json_t *req = NULL, *msg = NULL;
	char *text = NULL;
	size_t tlen;
	int64_t id;
	int r;

	if (!command || !*command || (args && !json_is_object(args))) {
		copy_err(errbuf, errlen, "invalid command or arguments");
		return -EINVAL;
	}
	if (q->dead) {
		copy_err(errbuf, errlen, "QMP connection closed");
		return q->dead;
	}
	id = ++q->next_id;
	req = json_pack("{s:s, s:I}", verb, command, "id",
			(json_int_t)id);
	if (!req)
		return -ENOMEM;
	if (args && json_object_set(req, "arguments", args) < 0) {
		r = -ENOMEM;
		goto out;
	}
	text = json_dumps(req, JSON_COMPACT);
	if (!text) {
		r = -ENOMEM;
		goto out;
	}
	tlen = strlen(text);
	{
		char *t = realloc(text, tlen + 2);

		if (!t) {
			r = -ENOMEM;
			goto out;
		}
		text = t;
		text[tlen++] = '\n';
		text[tlen] = '\0';
	}
	r = send_all(q, text, tlen, fd, deadline);
	if (r < 0)
		goto fail;
	for (;;) {
		/*
		 * A malformed line may have been our reply: fail now rather
		 * than wait for a timeout.
		 */
		r = read_message(q, deadline, &msg);
		if (r < 0)
			goto fail;
		if (json_object_get(msg, "event")) {
			r = queue_event(q, msg);
			json_decref(msg);
			msg = NULL;
			if (r == -ENOMEM)
				goto out;
			continue;
		}
		if (is_reply_to(msg, id))
			break;
		log_debug("qmp: dropping unmatched message");
		json_decref(msg);
		msg = NULL;
	}
	r = handle_reply(msg, ret_result, errbuf, errlen);
	goto out;
fail:
	if (r == -ETIMEDOUT)
		copy_err(errbuf, errlen, "timed out waiting for QEMU's reply");
	else if (r == -ECONNRESET)
		copy_err(errbuf, errlen, "QEMU closed the QMP connection");
	else if (r == -EMSGSIZE)
		copy_err(errbuf, errlen, "QMP message over the size limit");
	else if (r == -EBADMSG)
		copy_err(errbuf, errlen, "malformed QMP message");
	else
		copy_err(errbuf, errlen, strerror(-r));
out:
	json_decref(msg);
	json_decref(req);
	free(text);
	return r;
}

int qmp_execute(struct qmp *q, const char *command, json_t *args,
		json_t **ret_result, char *errbuf, size_t errlen)
{
	return execute(q, "execute", command, args, -1, ret_result, errbuf, errlen);
}

int qmp_execute_oob(struct qmp *q, const char *command, json_t *args,
		    json_t **ret_result, char *errbuf, size_t errlen)
{
	if (!q->oob) {
		copy_err(errbuf, errlen, "this QMP monitor does not offer out-of-band execution");
		return -EOPNOTSUPP;
	}
	return execute(q, "exec-oob", command, args, -1, ret_result, errbuf, errlen);
}

int qmp_execute_fd(struct qmp *q, const char *command, json_t *args, int fd,
		   json_t **ret_result, char *errbuf, size_t errlen)
{
	if (fd < 0) {
		copy_err(errbuf, errlen, "no file descriptor to pass");
		return -EBADF;
	}
	return execute(q, "execute", command, args, fd, ret_result, errbuf, errlen);
}

void qmp_set_timeout(struct qmp *q, int timeout_ms)
{
	q->timeout_ms = timeout_ms;
}

/* ---- events ----------------------------------------------------------- */

/*
 * Reads messages until one event is queued or the deadline passes. Replies
 * that nobody waits for (late replies to timed-out commands) are dropped.
 */
static int read_event(struct qmp *q, uint64_t deadline)
{
	json_t *msg;
	int r;

	for (;;) {
		r = read_message(q, deadline, &msg);
		if (r == -EBADMSG || r == -EMSGSIZE)
			continue;
		if (r < 0)
			return r;
		if (json_object_get(msg, "event")) {
			r = queue_event(q, msg);
			json_decref(msg);
			if (r == -EBADMSG)
				continue;
			return r;
		}
		log_debug("qmp: dropping reply outside a command");
		json_decref(msg);
	}
}

static void take_event(struct qmp *q, struct qmp_event *ev)
{
	struct qmp_evnode *n = ev_pop(q);

	*ev = n->ev;
	free(n);
}

int qmp_next_event(struct qmp *q, int timeout_ms, struct qmp_event *ev)
{
	uint64_t deadline = deadline_from(timeout_ms);
	int r;

	if (!q->ev_head) {
		r = read_event(q, deadline);
		if (r < 0)
			return r;
	}
	take_event(q, ev);
	return 0;
}

int qmp_wait_event(struct qmp *q, const char *name, int timeout_ms,
		   struct qmp_event *ev)
{
	uint64_t deadline = deadline_from(timeout_ms);
	struct qmp_event cur;
	int r;

	for (;;) {
		if (!q->ev_head) {
			r = read_event(q, deadline);
			if (r < 0)
				return r;
		}
		take_event(q, &cur);
		if (!strcmp(cur.name, name)) {
			*ev = cur;
			return 0;
		}
		log_debug("qmp: skipping event %s while waiting for %s",
			  cur.name, name);
		qmp_event_fini(&cur);
	}
}

/* ---- connection ------------------------------------------------------- */

int qmp_fd(const struct qmp *q)
{
	return q->fd;
}

size_t qmp_pending_events(const struct qmp *q)
{
	return q->ev_count;
}

void qmp_close(struct qmp *q)
{
	struct qmp_evnode *n;

	if (!q)
		return;
	while ((n = ev_pop(q))) {
		qmp_event_fini(&n->ev);
		free(n);
	}
	if (q->fd >= 0)
		close(q->fd);
	free(q->buf);
	free(q);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {
		.tv_sec = ms / 1000,
		.tv_nsec = (ms % 1000) * 1000000L,
	};

	nanosleep(&ts, NULL);
}

static int connect_once(const struct sockaddr_un *sa, int *ret_fd)
{
	int fd, r;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	/* unix stream connect completes at once or fails; no EINPROGRESS */
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) < 0) {
		r = -errno;
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

/*
 * Reads the greeting; -EPROTO if the first message is not {"QMP": ...}.
 * Notes whether QEMU offers out-of-band execution (q->oob).
 */
static int read_greeting(struct qmp *q, uint64_t deadline)
{
	json_t *msg = NULL, *caps, *v;
	size_t i;
	int r;

	r = read_message(q, deadline, &msg);
	if (r < 0)
		return r;
	if (!json_is_object(json_object_get(msg, "QMP")))
		r = -EPROTO;
	caps = json_object_get(json_object_get(msg, "QMP"), "capabilities");
	json_array_foreach(caps, i, v)
		if (json_is_string(v) && !strcmp(json_string_value(v), "oob"))
			q->oob = true;
	json_decref(msg);
	return r;
}

int qmp_open(const char *path, int timeout_ms, struct qmp **ret_qmp)
{
	uint64_t deadline = deadline_from(timeout_ms);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct qmp *q;
	char errbuf[256];
	int saved_timeout;
	json_t *oob_args;
	int fd = -1, r, left;
	long delay_ms = 5;
	uint64_t refused_since = 0;

	if (!path || !*path)
		return -EINVAL;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);

	for (;;) {
		r = connect_once(&sa, &fd);
		if (r == 0)
			break;
		/* the socket is not there yet, or not listening yet */
		if (r != -ENOENT && r != -ECONNREFUSED && r != -EAGAIN)
			return r;
		/*
		 * A socket file nobody listens on for a second is one a QEMU
		 * left behind when it exited: say so rather than wait it out.
		 */
		if (r != -ECONNREFUSED)
			refused_since = 0;
		else if (!refused_since)
			refused_since = tsb_now_ns();
		else if (tsb_now_ns() - refused_since >= QMP_REFUSED_GIVE_UP_NS)
			return -ECONNREFUSED;
		left = ms_left(deadline);
		if (left == 0)
			return -ETIMEDOUT;
		sleep_ms(left > 0 && left < delay_ms ? left : delay_ms);
		if (delay_ms < 100)
			delay_ms *= 2;
	}

	q = calloc(1, sizeof(*q));
	if (!q) {
		close(fd);
		return -ENOMEM;
	}
	q->fd = fd;
	q->timeout_ms = QMP_DEFAULT_TIMEOUT_MS;

	r = read_greeting(q, deadline);
	if (r < 0)
		goto fail;
	/* negotiation shares the caller's deadline */
	saved_timeout = q->timeout_ms;
	q->timeout_ms = ms_left(deadline);
	if (q->timeout_ms == 0)
		q->timeout_ms = 1;
	/*
	 * Out-of-band execution when offered: a few commands (migrate-recover
	 * among them) then run even while QEMU's main loop is blocked, e.g.
	 * on a page that a broken postcopy has not brought yet.
	 */
	oob_args = q->oob ? json_pack("{s:[s]}", "enable", "oob") : NULL;
	r = qmp_execute(q, "qmp_capabilities", oob_args, NULL, errbuf,
			sizeof(errbuf));
	json_decref(oob_args);
	q->timeout_ms = saved_timeout;
	if (r < 0) {
		log_debug("qmp: qmp_capabilities failed: %s", errbuf);
		if (r == -EREMOTEIO)
			r = -EPROTO;
		goto fail;
	}
	*ret_qmp = q;
	return 0;
fail:
	qmp_close(q);
	return r;
}
