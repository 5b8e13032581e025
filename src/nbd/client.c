/*
 * NBD client: negotiation, then pipelined requests. One thread uses a
 * client at a time. The socket is non-blocking; every wait polls for
 * both directions so that sending a large request never stops the
 * client from reading replies (no deadlock with a server that blocks on
 * its own replies).
 */
#include "nbd/nbd.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/reader.h"

/* recv() asks for read_chunk bytes: READ_CHUNK_MIN at first, doubled
 * (up to READ_CHUNK) each time a recv() fills it. */
#define READ_CHUNK (256U << 10)
#define READ_CHUNK_MIN (16U << 10)

struct cl_req {
	bool used, done;
	uint64_t cookie;
	uint16_t type;
	uint64_t offset;
	uint32_t length;
	void *rbuf;
	struct nbd_extent *ext;
	uint32_t max_ext, n_ext;
	int err;
	uint64_t done_seq;
};

struct nbd_client {
	int fd;
	struct tsb_buf in, out;
	size_t in_pos, out_pos;
	size_t read_chunk;
	bool eof;
	int dead;		/* sticky fatal error */
	struct nbd_export_info info;
	bool structured, base_alloc;
	uint32_t meta_id;
	unsigned int max_inflight;
	struct cl_req *slots;
	unsigned int n_slots, n_inflight;
	uint64_t next_cookie, done_seq;
	/* The simple READ reply whose data is still arriving, and how much
	 * of it is in place: read_some() receives that data straight into
	 * the request's buffer, so that in never has to hold a whole read
	 * (up to NBD_MAX_PAYLOAD; growing in to that size cost a realloc
	 * and a copy per doubling, and a second copy out of it). */
	struct cl_req *rd_q;
	uint32_t rd_got;
	char errmsg[256];
};

static int fail(struct nbd_client *cl, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct nbd_client *cl, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cl->errmsg, sizeof(cl->errmsg), fmt, ap);
	va_end(ap);
	if (!cl->dead)
		cl->dead = err;
	return err;
}

static int write_some(struct nbd_client *cl)
{
	while (cl->out_pos < cl->out.len) {
		ssize_t n = send(cl->fd, cl->out.data + cl->out_pos,
				 cl->out.len - cl->out_pos, MSG_NOSIGNAL);

		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return 0;
			return fail(cl, -errno, "send: %s", strerror(errno));
		}
		cl->out_pos += (size_t)n;
	}
	tsb_buf_reset(&cl->out);
	cl->out_pos = 0;
	return 0;
}

/* What a recv() returned: 0 (also when it would block) or -errno. */
static int recv_result(struct nbd_client *cl, ssize_t n)
{
	if (n < 0) {
		if (errno == EAGAIN || errno == EINTR)
			return 0;
		return fail(cl, -errno, "recv: %s", strerror(errno));
	}
	if (n == 0) {
		cl->eof = true;
		return fail(cl, -ECONNRESET, "server closed the connection");
	}
	return 0;
}

static void finish(struct nbd_client *cl, struct cl_req *q);

static int read_some(struct nbd_client *cl)
{
	ssize_t n;

	if (cl->rd_q && cl->in_pos == cl->in.len) {
		/* no more than that reply's data: what follows is the next
		 * reply, for in */
		struct cl_req *q = cl->rd_q;

		n = recv(cl->fd, (uint8_t *)q->rbuf + cl->rd_got,
			 q->length - cl->rd_got, 0);
		if (n <= 0)
			return recv_result(cl, n);
		cl->rd_got += (uint32_t)n;
		if (cl->rd_got == q->length) {
			cl->rd_q = NULL;
			finish(cl, q);
		}
		return 0;
	}
	if (cl->in_pos == cl->in.len) {
		tsb_buf_reset(&cl->in);
		cl->in_pos = 0;
	} else if (cl->in_pos > (1U << 20)) {
		memmove(cl->in.data, cl->in.data + cl->in_pos,
			cl->in.len - cl->in_pos);
		cl->in.len -= cl->in_pos;
		cl->in_pos = 0;
	}
	if (tsb_buf_reserve(&cl->in, cl->read_chunk))
		return fail(cl, -ENOMEM, "out of memory");
	n = recv(cl->fd, cl->in.data + cl->in.len, cl->read_chunk, 0);
	if (n <= 0)
		return recv_result(cl, n);
	cl->in.len += (size_t)n;
	if ((size_t)n == cl->read_chunk && cl->read_chunk < READ_CHUNK)
		cl->read_chunk *= 2;
	return 0;
}

/* One poll round: sends pending output, reads what arrived. */
static int pump(struct nbd_client *cl)
{
	struct pollfd p = { .fd = cl->fd, .events = POLLIN };
	int r;

	if (cl->dead)
		return cl->dead;
	if (cl->out.err)
		return fail(cl, -ENOMEM, "out of memory");
	if (cl->out_pos < cl->out.len)
		p.events |= POLLOUT;
	if (poll(&p, 1, -1) < 0)
		return errno == EINTR ? 0 : fail(cl, -errno, "poll: %s",
						 strerror(errno));
	if (p.revents & (POLLOUT | POLLERR)) {
		r = write_some(cl);
		if (r)
			return r;
	}
	if (p.revents & (POLLIN | POLLHUP | POLLERR))
		return read_some(cl);
	return 0;
}

static int flush_out(struct nbd_client *cl)
{
	int r = write_some(cl);

	while (!r && cl->out_pos < cl->out.len)
		r = pump(cl);
	return r;
}

/* ---- negotiation ---- */

/*
 * Reads the next option reply for opt. The views in *rep live until the
 * next call. Returns 0 or -errno.
 */
static int next_option_reply(struct nbd_client *cl, uint32_t opt,
			     struct nbd_option_reply *rep)
{
	ssize_t n;
	int r;

	for (;;) {
		n = nbd_decode_option_reply(cl->in.data + cl->in_pos,
					    cl->in.len - cl->in_pos, rep);
		if (n < 0)
			return fail(cl, (int)n, n == -EMSGSIZE ?
				    "option reply over the size limit" :
				    "bad option reply magic");
		if (n > 0)
			break;
		r = pump(cl);
		if (r)
			return r;
	}
	cl->in_pos += (size_t)n;
	if (rep->option != opt)
		return fail(cl, -EPROTO,
			    "option reply for %s while waiting for %s",
			    nbd_opt_name(rep->option), nbd_opt_name(opt));
	return 0;
}

static int opt_error(struct nbd_client *cl, const struct nbd_option_reply *rep,
		     int err)
{
	int l = rep->len > 200 ? 200 : (int)rep->len;

	return fail(cl, err, "server refused %s: %s%s%.*s",
		    nbd_opt_name(rep->option), nbd_rep_name(rep->type),
		    l ? ": " : "", l, (const char *)rep->data);
}

static int do_structured(struct nbd_client *cl)
{
	struct nbd_option_reply rep;
	int r;

	nbd_put_option(&cl->out, NBD_OPT_STRUCTURED_REPLY, NULL, 0);
	r = flush_out(cl);
	if (!r)
		r = next_option_reply(cl, NBD_OPT_STRUCTURED_REPLY, &rep);
	if (r)
		return r;
	if (rep.type == NBD_REP_ACK)
		cl->structured = true;
	else if (!(rep.type & NBD_REP_FLAG_ERROR))
		return fail(cl, -EPROTO, "unexpected %s to STRUCTURED_REPLY",
			    nbd_rep_name(rep.type));
	return 0;
}

static int do_meta(struct nbd_client *cl, const char *name)
{
	static const char *const q[] = { NBD_META_BASE_ALLOCATION };
	struct nbd_option_reply rep;
	struct tsb_buf d;
	int r;

	tsb_buf_init(&d);
	nbd_put_meta_data(&d, name, q, 1);
	if (d.err) {
		tsb_buf_fini(&d);
		return fail(cl, -ENOMEM, "out of memory");
	}
	nbd_put_option(&cl->out, NBD_OPT_SET_META_CONTEXT, d.data,
		       (uint32_t)d.len);
	tsb_buf_fini(&d);
	r = flush_out(cl);
	while (!r) {
		const char *n;
		uint32_t id, l;

		r = next_option_reply(cl, NBD_OPT_SET_META_CONTEXT, &rep);
		if (r)
			return r;
		if (rep.type == NBD_REP_ACK)
			return 0;
		if (rep.type & NBD_REP_FLAG_ERROR)
			return 0; /* no block status then */
		if (rep.type != NBD_REP_META_CONTEXT)
			return fail(cl, -EPROTO, "unexpected %s to SET_META_CONTEXT",
				    nbd_rep_name(rep.type));
		r = nbd_parse_rep_meta(&rep, &id, &n, &l);
		if (r)
			return fail(cl, r, "malformed META_CONTEXT reply");
		if (l == strlen(NBD_META_BASE_ALLOCATION) &&
		    !memcmp(n, NBD_META_BASE_ALLOCATION, l)) {
			cl->base_alloc = true;
			cl->meta_id = id;
		}
	}
	return r;
}

/* 1 if the server does not know GO (use EXPORT_NAME), 0 done, -errno. */
static int do_go(struct nbd_client *cl, const char *name)
{
	static const uint16_t info[] = { NBD_INFO_BLOCK_SIZE };
	struct nbd_option_reply rep;
	struct tsb_buf d;
	int r;

	tsb_buf_init(&d);
	nbd_put_go_data(&d, name, info, 1);
	if (d.err) {
		tsb_buf_fini(&d);
		return fail(cl, -ENOMEM, "out of memory");
	}
	nbd_put_option(&cl->out, NBD_OPT_GO, d.data, (uint32_t)d.len);
	tsb_buf_fini(&d);
	r = flush_out(cl);
	while (!r) {
		r = next_option_reply(cl, NBD_OPT_GO, &rep);
		if (r)
			return r;
		if (rep.type == NBD_REP_ACK)
			break;
		if (rep.type == NBD_REP_ERR_UNSUP)
			return 1;
		if (rep.type == NBD_REP_ERR_UNKNOWN)
			return opt_error(cl, &rep, -ENOENT);
		if (rep.type & NBD_REP_FLAG_ERROR)
			return opt_error(cl, &rep, -EPROTO);
		if (rep.type != NBD_REP_INFO)
			return fail(cl, -EPROTO, "unexpected %s to GO",
				    nbd_rep_name(rep.type));
		r = nbd_parse_info(&rep, &cl->info);
		if (r)
			return fail(cl, r, "malformed INFO reply");
	}
	if (!r && !cl->info.has_export)
		return fail(cl, -EPROTO, "GO acknowledged without export info");
	return r;
}

static int do_export_name(struct nbd_client *cl, const char *name,
			  bool no_zeroes)
{
	ssize_t n;
	int r;

	nbd_put_option(&cl->out, NBD_OPT_EXPORT_NAME, name,
		       (uint32_t)strlen(name));
	r = flush_out(cl);
	while (!r) {
		n = nbd_decode_export_name_reply(cl->in.data + cl->in_pos,
						 cl->in.len - cl->in_pos,
						 no_zeroes, &cl->info);
		if (n < 0)
			return fail(cl, (int)n, "malformed EXPORT_NAME reply");
		if (n > 0) {
			cl->in_pos += (size_t)n;
			return 0;
		}
		r = pump(cl);
	}
	if (cl->eof)
		return fail(cl, -ENOENT, "server closed: unknown export?");
	return r;
}

static int negotiate(struct nbd_client *cl, const struct nbd_client_config *cfg)
{
	const char *name = cfg->export_name ? cfg->export_name : "";
	uint16_t sflags;
	uint32_t cflags;
	ssize_t n;
	int r = 0;

	if (strlen(name) > NBD_MAX_STRING)
		return fail(cl, -EINVAL, "export name too long");
	while ((n = nbd_decode_greeting(cl->in.data + cl->in_pos,
					cl->in.len - cl->in_pos, &sflags)) == 0) {
		r = pump(cl);
		if (r)
			return r;
	}
	if (n < 0)
		return fail(cl, -EBADMSG, "not an NBD newstyle server");
	cl->in_pos += (size_t)n;
	if (!(sflags & NBD_FLAG_FIXED_NEWSTYLE))
		return fail(cl, -EOPNOTSUPP, "server lacks fixed newstyle");
	cflags = NBD_FLAG_C_FIXED_NEWSTYLE;
	if (sflags & NBD_FLAG_NO_ZEROES)
		cflags |= NBD_FLAG_C_NO_ZEROES;
	nbd_put_client_flags(&cl->out, cflags);

	if (cfg->structured)
		r = do_structured(cl);
	if (!r && cl->structured && cfg->base_allocation)
		r = do_meta(cl, name);
	if (!r)
		r = do_go(cl, name);
	if (r == 1) {
		cl->base_alloc = false;
		cl->structured = false;
		r = do_export_name(cl, name, cflags & NBD_FLAG_C_NO_ZEROES);
	}
	return r;
}

static void client_free(struct nbd_client *cl)
{
	if (cl->fd >= 0)
		close(cl->fd);
	tsb_buf_fini(&cl->in);
	tsb_buf_fini(&cl->out);
	free(cl->slots);
	free(cl);
}

int nbd_client_connect_fd(int fd, const struct nbd_client_config *cfg,
			  struct nbd_client **ret, char *errbuf, size_t errlen)
{
	struct nbd_client *cl = calloc(1, sizeof(*cl));
	int fl, r;

	if (!cl) {
		close(fd);
		return -ENOMEM;
	}
	cl->fd = fd;
	tsb_buf_init(&cl->in);
	tsb_buf_init(&cl->out);
	cl->max_inflight = cfg->max_inflight ? cfg->max_inflight : 16;
	cl->next_cookie = 1;
	cl->read_chunk = READ_CHUNK_MIN;
	fl = fcntl(fd, F_GETFL);
	if (tsb_buf_reserve(&cl->in, cl->read_chunk) ||
	    tsb_buf_reserve(&cl->out, 4096))
		r = fail(cl, -ENOMEM, "out of memory");
	else if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
		r = fail(cl, -errno, "fcntl: %s", strerror(errno));
	else
		r = negotiate(cl, cfg);
	if (r) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "%s", cl->errmsg);
		client_free(cl);
		return r;
	}
	*ret = cl;
	return 0;
}

int nbd_client_connect_unix(const char *path,
			    const struct nbd_client_config *cfg,
			    struct nbd_client **ret, char *errbuf,
			    size_t errlen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd, err;

	if (strlen(path) >= sizeof(sa.sun_path)) {
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "socket path too long");
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		err = -errno;
		if (errbuf && errlen)
			snprintf(errbuf, errlen, "cannot connect to %s: %s",
				 path, strerror(-err));
		close(fd);
		return err;
	}
	return nbd_client_connect_fd(fd, cfg, ret, errbuf, errlen);
}

void nbd_client_close(struct nbd_client *cl)
{
	struct nbd_request req = { .type = NBD_CMD_DISC };

	if (!cl)
		return;
	if (!cl->dead) {
		nbd_put_request(&cl->out, &req);
		(void)flush_out(cl);
		(void)shutdown(cl->fd, SHUT_WR);
	}
	client_free(cl);
}

const struct nbd_export_info *nbd_client_info(const struct nbd_client *cl)
{
	return &cl->info;
}

bool nbd_client_structured(const struct nbd_client *cl)
{
	return cl->structured;
}

bool nbd_client_has_base_allocation(const struct nbd_client *cl)
{
	return cl->base_alloc;
}

unsigned int nbd_client_inflight(const struct nbd_client *cl)
{
	return cl->n_inflight;
}

const char *nbd_client_error(const struct nbd_client *cl)
{
	return cl->errmsg;
}

/* ---- replies ---- */

static struct cl_req *find(struct nbd_client *cl, uint64_t cookie)
{
	unsigned int i;

	for (i = 0; i < cl->n_slots; i++)
		if (cl->slots[i].used && !cl->slots[i].done &&
		    cl->slots[i].cookie == cookie)
			return &cl->slots[i];
	return NULL;
}

static void finish(struct nbd_client *cl, struct cl_req *q)
{
	q->done = true;
	q->done_seq = cl->done_seq++;
	cl->n_inflight--;
}

static int on_chunk(struct nbd_client *cl, struct cl_req *q,
		    const struct nbd_reply *rep)
{
	struct nbd_chunk c;
	uint64_t rel;
	uint32_t i;
	int r;

	r = nbd_parse_chunk(rep, &c);
	if (r == -EOPNOTSUPP) {
		/* Unknown error types are errors; others are fatal. */
		if (rep->type & 0x8000) {
			q->err = q->err ? q->err : -EIO;
			return 0;
		}
		return fail(cl, -EPROTO, "unknown reply chunk type %u",
			    rep->type);
	}
	if (r)
		return fail(cl, r, "malformed reply chunk type %u", rep->type);
	switch (rep->type) {
	case NBD_REPLY_TYPE_NONE:
		return 0;
	case NBD_REPLY_TYPE_OFFSET_DATA:
	case NBD_REPLY_TYPE_OFFSET_HOLE:
		if (q->type != NBD_CMD_READ)
			return fail(cl, -EPROTO, "data chunk for %s",
				    nbd_cmd_name(q->type));
		if (c.offset < q->offset ||
		    c.offset - q->offset > q->length ||
		    c.len > q->length - (c.offset - q->offset))
			return fail(cl, -EPROTO,
				    "data chunk outside the requested range");
		rel = c.offset - q->offset;
		if (rep->type == NBD_REPLY_TYPE_OFFSET_DATA)
			memcpy((uint8_t *)q->rbuf + rel, c.data, c.len);
		else
			memset((uint8_t *)q->rbuf + rel, 0, c.len);
		return 0;
	case NBD_REPLY_TYPE_BLOCK_STATUS:
		if (q->type != NBD_CMD_BLOCK_STATUS)
			return fail(cl, -EPROTO, "block status chunk for %s",
				    nbd_cmd_name(q->type));
		if (c.context_id != cl->meta_id)
			return 0; /* a context we did not ask for */
		for (i = 0; i < c.n_extents && q->n_ext < q->max_ext; i++) {
			q->ext[q->n_ext].length = tsb_load_be32(c.extents + 8 * i);
			q->ext[q->n_ext].flags = tsb_load_be32(c.extents + 8 * i + 4);
			q->n_ext++;
		}
		return 0;
	default: /* ERROR, ERROR_OFFSET */
		if (!q->err)
			q->err = nbd_wire_to_errno(c.error);
		return 0;
	}
}

/* Handles every complete reply in the input buffer. 0 or -errno. */
static int process_replies(struct nbd_client *cl)
{
	for (;;) {
		const uint8_t *p = cl->in.data + cl->in_pos;
		size_t avail = cl->in.len - cl->in_pos;
		struct nbd_reply rep;
		struct cl_req *q;
		ssize_t n;
		int r;

		if (cl->rd_q) {
			/* the data that came in with the reply's header */
			size_t k = cl->rd_q->length - cl->rd_got;

			q = cl->rd_q;
			if (k > avail)
				k = avail;
			if (k)
				memcpy((uint8_t *)q->rbuf + cl->rd_got, p, k);
			cl->in_pos += k;
			cl->rd_got += (uint32_t)k;
			if (cl->rd_got < q->length)
				return 0;	/* read_some() takes the rest */
			cl->rd_q = NULL;
			finish(cl, q);
			continue;
		}
		n = nbd_decode_reply(p, avail, &rep);
		if (n < 0)
			return fail(cl, (int)n, n == -EMSGSIZE ?
				    "reply chunk over the size limit" :
				    "bad reply magic");
		if (n == 0)
			return 0;
		q = find(cl, rep.cookie);
		if (!q)
			return fail(cl, -EPROTO, "reply for unknown cookie %llu",
				    (unsigned long long)rep.cookie);
		if (!rep.structured) {
			if (q->type == NBD_CMD_READ && rep.error == 0) {
				/* the data follows: see rd_q */
				q->err = 0;
				cl->in_pos += (size_t)n;
				cl->rd_q = q;
				cl->rd_got = 0;
				continue;
			}
			if (q->type == NBD_CMD_BLOCK_STATUS && rep.error == 0)
				return fail(cl, -EPROTO,
					    "simple reply to BLOCK_STATUS");
			q->err = nbd_wire_to_errno(rep.error);
			cl->in_pos += (size_t)n;
			finish(cl, q);
			continue;
		}
		if (!cl->structured)
			return fail(cl, -EPROTO,
				    "structured reply not negotiated");
		cl->in_pos += (size_t)n;
		r = on_chunk(cl, q, &rep);
		if (r)
			return r;
		if (rep.flags & NBD_REPLY_FLAG_DONE)
			finish(cl, q);
	}
}

static int pump_replies(struct nbd_client *cl)
{
	int r = pump(cl);

	return r ? r : process_replies(cl);
}

int nbd_client_submit(struct nbd_client *cl, uint16_t type, uint16_t flags,
		      uint64_t offset, uint32_t length, const void *wdata,
		      void *rbuf, struct nbd_extent *ext, uint32_t max_ext,
		      uint64_t *ret_cookie)
{
	struct nbd_request req;
	struct cl_req *q = NULL;
	unsigned int i;
	int r;

	if (cl->dead)
		return cl->dead;
	if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) &&
	    length > NBD_MAX_PAYLOAD)
		return -EMSGSIZE;
	if (type == NBD_CMD_DISC)
		return -EINVAL; /* nbd_client_close() sends it */
	while (cl->n_inflight >= cl->max_inflight) {
		r = pump_replies(cl);
		if (r)
			return r;
	}
	for (i = 0; i < cl->n_slots; i++)
		if (!cl->slots[i].used) {
			q = &cl->slots[i];
			break;
		}
	if (!q) {
		unsigned int n = cl->n_slots ? cl->n_slots * 2 : 16;
		struct cl_req *s = reallocarray(cl->slots, n, sizeof(*s));

		if (!s)
			return -ENOMEM;
		memset(s + cl->n_slots, 0, (n - cl->n_slots) * sizeof(*s));
		q = &s[cl->n_slots];
		cl->slots = s;
		cl->n_slots = n;
	}
	memset(q, 0, sizeof(*q));
	q->used = true;
	q->cookie = cl->next_cookie++;
	q->type = type;
	q->offset = offset;
	q->length = length;
	q->rbuf = rbuf;
	q->ext = ext;
	q->max_ext = ext ? max_ext : 0;
	cl->n_inflight++;

	req.flags = flags;
	req.type = type;
	req.cookie = q->cookie;
	req.offset = offset;
	req.length = length;
	nbd_put_request(&cl->out, &req);
	if (type == NBD_CMD_WRITE)
		tsb_buf_append(&cl->out, wdata, length);
	if (ret_cookie)
		*ret_cookie = q->cookie;
	r = write_some(cl);
	while (!r && cl->out_pos < cl->out.len)
		r = pump_replies(cl);
	if (!r)
		r = process_replies(cl);
	return r;
}

static void take(struct cl_req *q, struct nbd_completion *ret)
{
	ret->cookie = q->cookie;
	ret->type = q->type;
	ret->err = q->err;
	ret->n_extents = q->n_ext;
	q->used = false;
}

int nbd_client_wait(struct nbd_client *cl, struct nbd_completion *ret)
{
	int r = 0;

	for (;;) {
		struct cl_req *best = NULL;
		unsigned int i;

		for (i = 0; i < cl->n_slots; i++) {
			struct cl_req *q = &cl->slots[i];

			if (q->used && q->done &&
			    (!best || q->done_seq < best->done_seq))
				best = q;
		}
		/* Replies that arrived before a failure are still reported. */
		if (best) {
			take(best, ret);
			return 0;
		}
		if (r)
			return r;
		if (!cl->n_inflight)
			return -ENOENT;
		r = pump_replies(cl);
	}
}

/* Submits and waits for this one request; other completions stay queued. */
static int sync_req(struct nbd_client *cl, uint16_t type, uint16_t flags,
		    uint64_t offset, uint32_t length, const void *wdata,
		    void *rbuf, struct nbd_extent *ext, uint32_t max_ext,
		    uint32_t *ret_n)
{
	struct nbd_completion c;
	uint64_t cookie;
	unsigned int i;
	int r;

	r = nbd_client_submit(cl, type, flags, offset, length, wdata, rbuf,
			      ext, max_ext, &cookie);
	if (r)
		return r;
	for (;;) {
		for (i = 0; i < cl->n_slots; i++) {
			struct cl_req *q = &cl->slots[i];

			if (q->used && q->done && q->cookie == cookie) {
				take(q, &c);
				if (ret_n)
					*ret_n = c.n_extents;
				return c.err;
			}
		}
		r = pump_replies(cl);
		if (r)
			return r;
	}
}

int nbd_client_pread(struct nbd_client *cl, void *buf, uint32_t len,
		     uint64_t offset)
{
	return sync_req(cl, NBD_CMD_READ, 0, offset, len, NULL, buf, NULL, 0,
			NULL);
}

int nbd_client_pwrite(struct nbd_client *cl, const void *buf, uint32_t len,
		      uint64_t offset, uint16_t flags)
{
	return sync_req(cl, NBD_CMD_WRITE, flags, offset, len, buf, NULL, NULL,
			0, NULL);
}

int nbd_client_write_zeroes(struct nbd_client *cl, uint64_t offset,
			    uint32_t len, uint16_t flags)
{
	return sync_req(cl, NBD_CMD_WRITE_ZEROES, flags, offset, len, NULL,
			NULL, NULL, 0, NULL);
}

int nbd_client_trim(struct nbd_client *cl, uint64_t offset, uint32_t len)
{
	return sync_req(cl, NBD_CMD_TRIM, 0, offset, len, NULL, NULL, NULL, 0,
			NULL);
}

int nbd_client_flush(struct nbd_client *cl)
{
	return sync_req(cl, NBD_CMD_FLUSH, 0, 0, 0, NULL, NULL, NULL, 0, NULL);
}

int nbd_client_block_status(struct nbd_client *cl, uint64_t offset,
			    uint32_t len, uint16_t flags,
			    struct nbd_extent *ext, uint32_t max_ext,
			    uint32_t *ret_n)
{
	if (!cl->base_alloc)
		return -EOPNOTSUPP;
	return sync_req(cl, NBD_CMD_BLOCK_STATUS, flags, offset, len, NULL,
			NULL, ext, max_ext, ret_n);
}
