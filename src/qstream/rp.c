/*
 * Return-path parser (destination -> source): be16 type, be16 len, data;
 * RECV_BITMAP is followed by be64 size, size bytes, be64 end mark outside
 * its length. QEMU: migration/migration.c (source_return_path_thread,
 * migrate_send_rp_*), migration/ram.c (ram_dirty_bitmap_reload).
 */
#include "qstream/qstream.h"
#include "qstream/internal.h"

#include "common/reader.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QS_RP_BITMAP_END 0x0123456789abcdefull
#define QS_RP_HOLD_CAP (4 + QS_RP_MSG_MAX + 8)

enum rp_st {
	RP_HDR,			/* be16 type, be16 len, data */
	RP_BM_SIZE,		/* be64 size */
	RP_BM_DATA,		/* streaming the bitmap */
	RP_BM_END,		/* be64 end mark */
	RP_END,			/* after SHUT */
};

struct qs_rp_parser {
	struct qs_tok t;
	struct qs_rp_handlers h;
	void *opaque;
	enum rp_st st;
	int err;
	char errmsg[256];
	bool have_req_block;
	char req_block[QS_IDSTR_MAX + 1];	/* of the last REQ_PAGES_ID */
	/* RECV_BITMAP in progress. */
	uint64_t bm_off;
	uint64_t bm_size;
	uint64_t remain;
	uint16_t bm_len;
	uint8_t bm_data[1 + QS_IDSTR_MAX];
	char bm_block[QS_IDSTR_MAX + 1];
};

const char *qs_rp_type_name(unsigned type)
{
	static const char *const names[] = {
		[QS_RP_SHUT] = "SHUT",
		[QS_RP_PONG] = "PONG",
		[QS_RP_REQ_PAGES_ID] = "REQ_PAGES_ID",
		[QS_RP_REQ_PAGES] = "REQ_PAGES",
		[QS_RP_RECV_BITMAP] = "RECV_BITMAP",
		[QS_RP_RESUME_ACK] = "RESUME_ACK",
		[QS_RP_SWITCHOVER_ACK] = "SWITCHOVER_ACK",
	};

	return qs_name_of(names, sizeof(names) / sizeof(names[0]), type);
}

static int rp_fail(struct qs_rp_parser *p, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int rp_fail(struct qs_rp_parser *p, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err = qs_verror(&p->err, p->errmsg, sizeof(p->errmsg), err, "return-path",
			p->t.off, fmt, ap);
	va_end(ap);
	return err;
}

static int rp_handler_failed(struct qs_rp_parser *p, const char *what, int r)
{
	if (r >= 0)
		r = -EIO;
	return rp_fail(p, r, "%s handler failed: %s", what, strerror(-r));
}

static int rp_emit(struct qs_rp_parser *p, const uint8_t *v, size_t n)
{
	int r = qs_tok_emit(&p->t, v, n);

	return r < 0 ? rp_handler_failed(p, "raw", r) : 0;
}

static int rp_msg(struct qs_rp_parser *p, const struct qs_rp_msg *m)
{
	int r = qs_tok_flush(&p->t);

	if (r < 0)
		return rp_handler_failed(p, "raw", r);
	if (!p->h.msg)
		return 0;
	r = p->h.msg(p->opaque, m);
	return r < 0 ? rp_handler_failed(p, "msg", r) : 0;
}

#define RP_NEED(p, n)						\
	do {							\
		if ((p)->t.need < (size_t)(n)) {		\
			(p)->t.need = (n);			\
			return 0;				\
		}						\
	} while (0)

static int rp_check_len(struct qs_rp_parser *p, uint16_t type, uint16_t len,
			uint16_t want)
{
	if (len == want)
		return 0;
	return rp_fail(p, -EBADMSG,
		       "return-path %s with length %u (expected %u)",
		       qs_rp_type_name(type), len, want);
}

static int rp_step_hdr(struct qs_rp_parser *p, const uint8_t *v)
{
	struct qs_rp_msg m = { .stream_offset = p->t.off };
	char name[QS_IDSTR_MAX + 1];
	const uint8_t *d;
	uint16_t type, len;
	int r = 0;

	RP_NEED(p, 4);
	type = tsb_load_be16(v);
	len = tsb_load_be16(v + 2);
	switch (type) {
	case QS_RP_SHUT:
	case QS_RP_PONG:
	case QS_RP_RESUME_ACK:
		r = rp_check_len(p, type, len, 4);
		break;
	case QS_RP_REQ_PAGES:
		r = rp_check_len(p, type, len, 12);
		break;
	case QS_RP_SWITCHOVER_ACK:
		r = rp_check_len(p, type, len, 0);
		break;
	case QS_RP_REQ_PAGES_ID:
	case QS_RP_RECV_BITMAP:
		if (len > QS_RP_MSG_MAX)
			r = rp_fail(p, -EMSGSIZE,
				    "return-path %s of %u bytes exceeds the limit %u",
				    qs_rp_type_name(type), len, QS_RP_MSG_MAX);
		break;
	default:
		return rp_fail(p, -EOPNOTSUPP,
			       "unknown return-path message type %u", type);
	}
	if (r)
		return r;
	RP_NEED(p, 4 + len);
	d = v + 4;
	m.type = type;
	m.len = len;
	m.data = d;

	switch (type) {
	case QS_RP_SHUT:
	case QS_RP_PONG:
	case QS_RP_RESUME_ACK:
		m.value = tsb_load_be32(d);
		break;
	case QS_RP_REQ_PAGES_ID:
		/* be64 offset, be32 length, idstr */
		if (len < 14 || d[12] == 0 || len != 13 + d[12])
			return rp_fail(p, -EBADMSG,
				       "malformed return-path REQ_PAGES_ID of %u bytes",
				       len);
		memcpy(p->req_block, d + 13, d[12]);
		p->req_block[d[12]] = '\0';
		p->have_req_block = true;
		/* fall through */
	case QS_RP_REQ_PAGES:
		if (!p->have_req_block)
			return rp_fail(p, -EBADMSG,
				       "return-path REQ_PAGES without a previous REQ_PAGES_ID");
		m.offset = tsb_load_be64(d);
		m.length = tsb_load_be32(d + 8);
		m.block = p->req_block;
		break;
	case QS_RP_RECV_BITMAP:
		if (len < 2 || d[0] != len - 1)
			return rp_fail(p, -EBADMSG,
				       "malformed return-path RECV_BITMAP of %u bytes",
				       len);
		memcpy(name, d + 1, d[0]);
		name[d[0]] = '\0';
		memcpy(p->bm_block, name, sizeof(name));
		memcpy(p->bm_data, d, len);
		p->bm_len = len;
		p->bm_off = p->t.off;
		if (rp_emit(p, v, 4 + len))
			return p->err;
		p->st = RP_BM_SIZE;
		p->t.need = 8;
		return 0;
	}
	if (rp_emit(p, v, 4 + len) || rp_msg(p, &m))
		return p->err;
	p->st = type == QS_RP_SHUT ? RP_END : RP_HDR;
	p->t.need = type == QS_RP_SHUT ? 1 : 4;
	return 0;
}

static int rp_step(struct qs_rp_parser *p, const uint8_t *v)
{
	uint64_t x;

	switch (p->st) {
	case RP_HDR:
		return rp_step_hdr(p, v);
	case RP_BM_SIZE:
		x = tsb_load_be64(v);
		if (x > QS_RP_BITMAP_MAX)
			return rp_fail(p, -EMSGSIZE,
				       "RECV_BITMAP bitmap of %llu bytes exceeds the limit %u",
				       (unsigned long long)x, QS_RP_BITMAP_MAX);
		if (x % 8)
			return rp_fail(p, -EBADMSG,
				       "RECV_BITMAP bitmap size %llu is not a multiple of 8",
				       (unsigned long long)x);
		p->bm_size = p->remain = x;
		if (rp_emit(p, v, 8))
			return p->err;
		p->st = RP_BM_DATA;
		p->t.need = 0;
		return 0;
	case RP_BM_END: {
		struct qs_rp_msg m = {
			.type = QS_RP_RECV_BITMAP,
			.len = p->bm_len,
			.data = p->bm_data,
			.stream_offset = p->bm_off,
			.block = p->bm_block,
			.bitmap_size = p->bm_size,
		};

		x = tsb_load_be64(v);
		if (x != QS_RP_BITMAP_END)
			return rp_fail(p, -EBADMSG,
				       "RECV_BITMAP end mark 0x%016llx (expected 0x%016llx)",
				       (unsigned long long)x, QS_RP_BITMAP_END);
		if (rp_emit(p, v, 8) || rp_msg(p, &m))
			return p->err;
		p->st = RP_HDR;
		p->t.need = 4;
		return 0;
	}
	case RP_END:
		return rp_fail(p, -EBADMSG, "return-path data after SHUT");
	default:
		return rp_fail(p, -EBADMSG, "internal error: state %d", p->st);
	}
}

int qs_rp_parser_feed(struct qs_rp_parser *p, const void *buf, size_t len)
{
	const uint8_t *v, *b;
	size_t n;
	int r;

	if (p->err)
		return p->err;
	qs_tok_input(&p->t, buf, len);
	for (;;) {
		if (p->st == RP_BM_DATA) {
			r = qs_tok_stream(&p->t, p->remain, &b, &n);
			if (r < 0) {
				rp_handler_failed(p, "raw", r);
				break;
			}
			p->remain -= n;
			if (p->remain) {
				break; /* input exhausted */
			}
			p->st = RP_BM_END;
			p->t.need = 8;
			continue;
		}
		v = qs_tok_view(&p->t);
		if (!v)
			break;
		if (rp_step(p, v))
			break;
	}
	if (!p->err || p->err == -EBADMSG || p->err == -EOPNOTSUPP ||
	    p->err == -EMSGSIZE) {
		r = qs_tok_flush(&p->t);
		if (r < 0)
			rp_handler_failed(p, "raw", r);
	}
	p->t.avail = 0;
	return p->err;
}

int qs_rp_parser_finish(struct qs_rp_parser *p)
{
	if (p->err)
		return p->err;
	if ((p->st == RP_HDR && p->t.hold_len == 0) || p->st == RP_END)
		return 0;
	return rp_fail(p, -ENODATA, "return path truncated inside a message");
}

bool qs_rp_parser_between(const struct qs_rp_parser *p)
{
	return !p->err && p->st == RP_HDR && p->t.hold_len == 0;
}

const char *qs_rp_parser_error(const struct qs_rp_parser *p)
{
	return p->err ? p->errmsg : "";
}

struct qs_rp_parser *qs_rp_parser_new(const struct qs_rp_handlers *h,
				      void *opaque)
{
	struct qs_rp_parser *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	if (h)
		p->h = *h;
	p->opaque = opaque;
	if (qs_tok_init(&p->t, QS_RP_HOLD_CAP, p->h.raw, opaque)) {
		free(p);
		return NULL;
	}
	p->st = RP_HDR;
	p->t.need = 4;
	return p;
}

void qs_rp_parser_free(struct qs_rp_parser *p)
{
	if (!p)
		return;
	qs_tok_fini(&p->t);
	free(p);
}

int qs_rp_encode(uint8_t *buf, size_t cap, uint16_t type, const void *data,
		 uint16_t len)
{
	if (len > QS_RP_MSG_MAX || cap < 4u + len)
		return -EMSGSIZE;
	tsb_put_be16(buf, type);
	tsb_put_be16(buf + 2, len);
	if (len)
		memcpy(buf + 4, data, len);
	return 4 + len;
}
