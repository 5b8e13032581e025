/* Postcopy recovery over a fresh connection (resume.h). */
#include "proxy/resume.h"

#include "proxy/internal.h"

#include "common/buf.h"
#include "common/fault.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "qmp/qmp.h"
#include "wire/accept.h"
#include "wire/codec.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* QEMU bytes read per STREAM or RETURN frame. */
#define RELAY_CHUNK (256u << 10)
/* The sender's keepalive when QEMU sends nothing, ms. */
#define RELAY_KEEPALIVE_MS 1000
#define RESUME_SOCK "resume.sock"
/* A source QEMU in postcopy-recover this long after a break is stuck. */
#define RESUME_STUCK_NS (15 * 1000000000ull)
/* Stream bytes into the destination after which a resumed leg is past
 * QEMU's handshake (bitmaps, RESUME_ACK) and streams pages: a fault point. */
#define RESUME_STREAMING_BYTES (1u << 20)

/* ---- the connection ---- */

int resume_dial(const struct commit_link *l, struct wire_conn **ret_conn)
{
	unsigned backoff = 250, attempts = 0;
	struct wire_hello peer;
	char msg[256];
	int r;

	while (!commit_expired(l)) {
		attempts++;
		r = commit_dial(l, WIRE_CAP_COMMIT | WIRE_CAP_RESUME | WIRE_CAP_ZSTD, ret_conn,
				&peer, msg, sizeof(msg));
		if (r == 0 && !(peer.caps & WIRE_CAP_RESUME)) {
			wire_conn_free(*ret_conn);
			snprintf(msg, sizeof(msg), "the receiver does not resume migrations");
			r = -EOPNOTSUPP;
		}
		if (r == 0) {
			log_notice("resume: the receiver took the migration back on attempt %u",
				   attempts);
			return 0;
		}
		log_info("resume: %s", msg);
		if (r == -EACCES || r == -EOPNOTSUPP || r == -EINVAL)
			return r;
		commit_nap(l, backoff);
		backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
	}
	return l->sig && *l->sig > 1 ? -EINTR : -ETIMEDOUT;
}

/* Only the sender of this migration, coming to resume it or to ask how it ended. */
static bool want_resumer(const struct wire_conn *c, const struct wire_hello *peer,
			 void *opaque, char *why, size_t len)
{
	return commit_peer_wanted(opaque, c, peer, WIRE_CAP_RESUME | WIRE_CAP_RESOLVE,
				  "waits here to resume its postcopy", "it resumes with",
				  why, len);
}

int resume_await(const struct commit_link *l, struct wire_conn **ret_conn, bool *ret_resolve)
{
	struct wire_hello_args hello = {
		.role = WIRE_ROLE_RECEIVER, .caps = WIRE_CAP_COMMIT | WIRE_CAP_RESUME |
		WIRE_CAP_ZSTD, .site = "destination",
	};
	struct wire_accept_options ao = {
		.tls = l->tls, .hello = &hello, .want = want_resumer, .opaque = (void *)l,
		.what = "resume", .sig = l->sig, .deadline_ns = l->deadline_ns,
	};
	struct wire_hello peer;
	int lfd, r;

	/* The old listening socket may still hold the port for a moment. */
	r = commit_listen_again(l, &lfd);
	if (r < 0)
		return r;
	ao.lfd = lfd;
	log_notice("waiting on %s for the sender to resume migration %s", l->addr, l->id);
	r = wire_accept_peer(&ao, ret_conn, &peer, NULL);
	close(lfd);
	*ret_resolve = r == 0 && !(peer.caps & WIRE_CAP_RESUME);
	return r;
}

int resume_answer_resolver(struct wire_conn *c)
{
	struct wire_msg m;
	int r;

	wire_conn_set_timeout(c, 10000);
	r = wire_conn_read_msg(c, WIRE_ROLE_SENDER, &m);
	if (r > 0 && m.type != WIRE_MSG_DECISION)
		r = -EPROTO;
	if (r == 0)
		r = -ECONNRESET;
	if (r < 0)
		return r;
	return commit_answer(c, WIRE_OUTCOME_RUNNING, "destination running, waiting to resume");
}

/* ---- the QEMUs ---- */

static int migration_status(struct qmp *q, char *st, size_t len, char *err, size_t errlen)
{
	json_t *ret = NULL;
	const char *v;
	int r;

	r = qmp_execute(q, "query-migrate", NULL, &ret, err, errlen);
	if (r < 0)
		return r;
	v = json_string_value(json_object_get(ret, "status"));
	snprintf(st, len, "%s", v ? v : "none");
	json_decref(ret);
	return 0;
}

int resume_source_paused(struct qmp *q, uint64_t deadline_ns, volatile int *sig,
			 char *err, size_t errlen)
{
	struct commit_link l = { .deadline_ns = deadline_ns, .sig = sig };
	uint64_t recover_since = 0;
	char st[32];
	int r;

	for (;;) {
		r = migration_status(q, st, sizeof(st), err, errlen);
		if (r < 0)
			return r;
		if (!strcmp(st, "postcopy-paused"))
			return 0;
		if (!strcmp(st, "completed"))
			return 1;
		/*
		 * QEMU 7.2 waits for ever for the destination's bitmaps when
		 * the link breaks during a recovery's handshake.
		 */
		if (strcmp(st, "postcopy-recover"))
			recover_since = 0;
		else if (!recover_since)
			recover_since = tsb_now_ns();
		else if (tsb_now_ns() - recover_since > RESUME_STUCK_NS) {
			snprintf(err, errlen, "the source QEMU stays in postcopy-recover: the link "
				 "broke during QEMU's recovery handshake, which QEMU 7.2 cannot "
				 "retry (docs/postcopy.md)");
			return -EDEADLK;
		}
		/* Still noticing the break, or an earlier try still failing. */
		if (strcmp(st, "postcopy-active") && strcmp(st, "postcopy-recover")) {
			snprintf(err, errlen, "the source QEMU's migration is %s, not paused", st);
			return -EIO;
		}
		if (commit_expired(&l))
			return sig && *sig > 1 ? -EINTR : -ETIMEDOUT;
		commit_nap(&l, 100);
	}
}

int resume_source(struct qmp *q, int *ret_fd, char *err, size_t errlen)
{
	json_t *args;
	int fd, r;

	r = proxy_qemu_socket(q, &fd, err, errlen);
	if (r < 0)
		return r;
	args = json_pack("{s:s, s:b}", "uri", "fd:" PROXY_FDNAME, "resume", 1);
	r = qmp_execute(q, "migrate", args, NULL, err, errlen);
	json_decref(args);
	if (r < 0) {
		close(fd);
		return r;
	}
	*ret_fd = fd;
	return 0;
}

static int connect_unix(const char *path, int *ret_fd)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	memcpy(sa.sun_path, path, strlen(path) + 1);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;

		close(fd);
		return -e;
	}
	*ret_fd = fd;
	return 0;
}

int resume_destination(struct qmp *q, const char *dir, uint64_t deadline_ns,
		       volatile int *sig, int *ret_fd, char *err, size_t errlen)
{
	struct commit_link l = { .deadline_ns = deadline_ns, .sig = sig };
	char path[256], uri[280];
	json_t *args;
	int r;

	if ((size_t)snprintf(path, sizeof(path), "%s/" RESUME_SOCK, dir) >= sizeof(path))
		return -ENAMETOOLONG;
	snprintf(uri, sizeof(uri), "unix:%s", path);
	/*
	 * QEMU takes migrate-recover only once it has seen its stream break
	 * (postcopy-paused); a listener left by an earlier try still listens.
	 * (QEMU unlinks the socket's path before it binds it.)
	 */
	for (;;) {
		args = json_pack("{s:s}", "uri", uri);
		r = qmp_execute_oob(q, "migrate-recover", args, NULL, err, errlen);
		json_decref(args);
		if (r == 0 || (r == -EREMOTEIO && strstr(err, "already")))
			break;
		if (r != -EREMOTEIO || commit_expired(&l))
			return r;
		commit_nap(&l, 200);
	}
	for (;;) {
		r = connect_unix(path, ret_fd);
		if (r == 0)
			return 0;
		if ((r != -ENOENT && r != -ECONNREFUSED) || commit_expired(&l)) {
			snprintf(err, errlen, "cannot reach the destination QEMU's recovery socket "
				 "%s: %s", path, strerror(-r));
			return r;
		}
		commit_nap(&l, 50);
	}
}

/* ---- the relay ---- */

struct relay {
	struct wire_conn *c;
	int qfd;
	enum wire_role self;
	pthread_mutex_t wlock;	/* the two directions both write frames */
	atomic_bool stop;
	atomic_bool qemu_eof;	/* QEMU closed its end */
	atomic_int up_err;	/* -errno of the QEMU-to-WAN direction */
	uint64_t streamed;	/* stream bytes into the destination, this leg */
	struct resume_counts *counts;
};

static int relay_write(struct relay *r, const struct tsb_buf *b)
{
	int e;

	if (!r->c)
		return 0; /* fuzzing: nobody to tell */
	pthread_mutex_lock(&r->wlock);
	e = wire_conn_write(r->c, b->data, b->len);
	pthread_mutex_unlock(&r->wlock);
	if (e == 0)
		r->counts->wan_out += b->len;
	return e;
}

/* QEMU -> WAN: STREAM from the source, RETURN from the destination. */
static void *relay_up(void *arg)
{
	struct relay *r = arg;
	uint8_t type = r->self == WIRE_ROLE_SENDER ? WIRE_MSG_STREAM : WIRE_MSG_RETURN;
	struct wire_zstd *z = wire_zstd_new(1);
	uint8_t *buf = malloc(RELAY_CHUNK);
	struct tsb_buf b;
	int e = 0;

	tsb_buf_init(&b);
	if (!z || !buf)
		e = -ENOMEM;
	while (!e && !r->stop) {
		struct pollfd pfd = { .fd = r->qfd, .events = POLLIN };
		ssize_t n;
		int pr = poll(&pfd, 1, r->self == WIRE_ROLE_SENDER ? RELAY_KEEPALIVE_MS : 200);

		if (pr < 0 && errno != EINTR)
			e = -errno;
		if (pr <= 0) {
			/* The receiver's reader hears the sender at least this often. */
			if (pr == 0 && r->self == WIRE_ROLE_SENDER) {
				tsb_buf_reset(&b);
				e = wire_encode_u64(&b, WIRE_MSG_PING, 0);
				if (!e)
					e = relay_write(r, &b);
			}
			continue;
		}
		n = read(r->qfd, buf, RELAY_CHUNK);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n < 0) {
			e = -errno;
			break;
		}
		if (n == 0) {
			r->qemu_eof = true;
			/* The source completed: tell the receiver the stream ended. */
			if (r->self == WIRE_ROLE_SENDER) {
				tsb_buf_reset(&b);
				e = wire_encode_status(&b, WIRE_MSG_DONE, WIRE_CODE_OK, "resumed");
				if (!e)
					e = relay_write(r, &b);
			}
			break;
		}
		if (r->self == WIRE_ROLE_SENDER)
			r->counts->stream_in += (uint64_t)n;
		else
			r->counts->return_in += (uint64_t)n;
		tsb_buf_reset(&b);
		e = wire_encode_run(&b, type, buf, (size_t)n, z);
		if (!e)
			e = relay_write(r, &b);
	}
	r->up_err = e;
	if (e && !r->stop)
		wire_conn_abort(r->c); /* the reader stops too */
	tsb_buf_fini(&b);
	free(buf);
	wire_zstd_free(z);
	return NULL;
}

/* One message from the peer; 1 when the relay is done, 0 to go on. */
static int relay_msg(struct relay *r, const struct wire_msg *m, struct wire_zstd *z,
		     struct tsb_buf *scratch, int *ret_outcome, char *err, size_t errlen)
{
	const uint8_t *data;
	struct tsb_buf b;
	int e;

	switch (m->type) {
	case WIRE_MSG_STREAM:
	case WIRE_MSG_RETURN:
		e = wire_run_unpack(&m->u.run, z, scratch, &data);
		if (e == 0)
			e = proxy_write_all(r->qfd, data, m->u.run.raw_len);
		if (e < 0)
			snprintf(err, errlen, "%s: %s", e == -EBADMSG ? "a bad frame from the peer" :
				 "writing to QEMU", strerror(-e));
		if (e == 0 && m->type == WIRE_MSG_RETURN) {
			r->counts->return_in += m->u.run.raw_len;
		} else if (e == 0) {
			r->streamed += m->u.run.raw_len;
			r->counts->stream_in += m->u.run.raw_len;
			if (r->streamed >= RESUME_STREAMING_BYTES)
				tsb_fault_point("postcopy-resume-streaming");
		}
		return e;
	case WIRE_MSG_PING:
		tsb_buf_init(&b);
		e = wire_encode_u64(&b, WIRE_MSG_PONG, m->u.ping);
		if (!e)
			e = relay_write(r, &b);
		tsb_buf_fini(&b);
		return e;
	case WIRE_MSG_PONG:
		return 0;
	case WIRE_MSG_DONE:
		return r->self == WIRE_ROLE_RECEIVER ? 1 : -EPROTO;
	case WIRE_MSG_OUTCOME:
		if (r->self != WIRE_ROLE_SENDER || !r->qemu_eof)
			break;
		*ret_outcome = (int)m->u.status.code;
		return 1;
	case WIRE_MSG_ERROR:
		snprintf(err, errlen, "the peer: %.*s", (int)m->u.status.text.len,
			 m->u.status.text.p);
		return -ECONNABORTED;
	default:
		break;
	}
	snprintf(err, errlen, "unexpected %s while resuming", wire_msg_name(m->type));
	return -EPROTO;
}

int resume_relay(struct wire_conn *c, int qfd, enum wire_role self, int stall_ms,
		 volatile int *sig, int *ret_outcome, struct resume_counts *counts,
		 char *err, size_t errlen)
{
	struct relay r = { .c = c, .qfd = qfd, .self = self, .counts = counts };
	enum wire_role peer = self == WIRE_ROLE_SENDER ? WIRE_ROLE_RECEIVER : WIRE_ROLE_SENDER;
	struct wire_zstd *z = wire_zstd_new(1);
	struct tsb_buf scratch;
	pthread_t th;
	int e = 0;

	err[0] = '\0';
	if (!z)
		return -ENOMEM;
	tsb_buf_init(&scratch);
	pthread_mutex_init(&r.wlock, NULL);
	wire_conn_set_timeout(c, stall_ms > 0 ? stall_ms : 60000);
	if (tsb_thread_create(&th, relay_up, &r)) {
		e = -EAGAIN;
		goto out;
	}
	while (e == 0) {
		struct wire_msg m;

		if (sig && *sig > 1) {
			e = -EINTR;
			snprintf(err, errlen, "interrupted by signal %d", *sig);
			break;
		}
		e = wire_conn_read_msg(c, peer, &m);
		if (e == 0)
			e = -ECONNRESET; /* a close before the end is a break */
		if (e < 0) {
			if (r.up_err)
				e = r.up_err;
			snprintf(err, errlen, "%s", r.up_err ? strerror(-r.up_err) :
				 wire_conn_errmsg(c)[0] ? wire_conn_errmsg(c) : strerror(-e));
			break;
		}
		e = relay_msg(&r, &m, z, &scratch, ret_outcome, err, errlen);
	}
	r.stop = true;
	if (e < 0) {
		/* QEMU pauses again and waits for the next try. */
		shutdown(qfd, SHUT_RDWR);
		wire_conn_abort(c);
	}
	pthread_join(th, NULL);
out:
	pthread_mutex_destroy(&r.wlock);
	tsb_buf_fini(&scratch);
	wire_zstd_free(z);
	return e < 0 ? e : 0;
}

int resume_relay_fuzz(const uint8_t *data, size_t len)
{
	struct resume_counts counts = { 0 };
	struct relay r = { .counts = &counts };
	struct wire_zstd *z;
	struct tsb_buf scratch;
	enum wire_role peer;
	size_t off = 1;
	char err[256];
	int outcome = 0, e = 0;

	if (len < 1)
		return 0;
	/* First byte: which end we play, and whether our QEMU already closed. */
	r.self = data[0] & 1 ? WIRE_ROLE_SENDER : WIRE_ROLE_RECEIVER;
	r.qemu_eof = data[0] & 2;
	peer = r.self == WIRE_ROLE_SENDER ? WIRE_ROLE_RECEIVER : WIRE_ROLE_SENDER;
	r.qfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	z = wire_zstd_new(1);
	tsb_buf_init(&scratch);
	pthread_mutex_init(&r.wlock, NULL);
	while (e == 0 && r.qfd >= 0 && z && len - off >= WIRE_HDR_LEN) {
		struct wire_frame f;
		struct wire_msg m;

		e = wire_header_decode(data + off, &f);
		off += WIRE_HDR_LEN;
		if (e == 0 && f.len > len - off)
			e = -EBADMSG;
		if (e == 0)
			e = wire_msg_decode(f.type, f.flags, data + off, f.len, &m);
		if (e == 0 && !wire_msg_role_ok(f.type, peer))
			e = -EPROTO;
		off += f.len;
		if (e == 0)
			e = relay_msg(&r, &m, z, &scratch, &outcome, err, sizeof(err));
	}
	pthread_mutex_destroy(&r.wlock);
	tsb_buf_fini(&scratch);
	wire_zstd_free(z);
	if (r.qfd >= 0)
		close(r.qfd);
	return e < 0 ? e : 0;
}

json_t *resume_report(unsigned connections, const struct resume_counts *counts)
{
	return json_pack("{s:I, s:I, s:I, s:I}", "connections", (json_int_t)connections,
			 "stream_bytes", (json_int_t)counts->stream_in,
			 "return_bytes", (json_int_t)counts->return_in,
			 "wan_bytes", (json_int_t)counts->wan_out);
}
