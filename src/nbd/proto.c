/*
 * NBD codec: decoders of every message either side receives, checked
 * field by field with struct tsb_reader, and encoders into struct tsb_buf.
 */
#include "nbd/nbd.h"

#include <errno.h>
#include <string.h>

#include "common/reader.h"

ssize_t nbd_decode_greeting(const void *p, size_t len, uint16_t *ret_flags)
{
	struct tsb_reader r;
	uint64_t magic, opt;
	uint16_t flags;

	if (len < NBD_GREETING_LEN)
		return 0;
	tsb_reader_init(&r, p, len);
	magic = tsb_get_be64(&r);
	opt = tsb_get_be64(&r);
	flags = tsb_get_be16(&r);
	if (r.err || magic != NBD_MAGIC || opt != NBD_IHAVEOPT)
		return -EBADMSG;
	*ret_flags = flags;
	return NBD_GREETING_LEN;
}

ssize_t nbd_decode_client_flags(const void *p, size_t len, uint32_t *ret_flags)
{
	struct tsb_reader r;

	if (len < 4)
		return 0;
	tsb_reader_init(&r, p, len);
	*ret_flags = tsb_get_be32(&r);
	return 4;
}

ssize_t nbd_decode_option(const void *p, size_t len, struct nbd_option *ret)
{
	struct tsb_reader r;
	uint64_t magic;
	uint32_t opt, dlen;

	if (len < NBD_OPTION_HDR_LEN)
		return 0;
	tsb_reader_init(&r, p, len);
	magic = tsb_get_be64(&r);
	opt = tsb_get_be32(&r);
	dlen = tsb_get_be32(&r);
	if (r.err || magic != NBD_IHAVEOPT)
		return -EBADMSG;
	if (dlen > NBD_MAX_OPTION_DATA)
		return -EMSGSIZE;
	if (tsb_reader_remaining(&r) < dlen)
		return 0;
	ret->option = opt;
	ret->len = dlen;
	ret->data = tsb_get_bytes(&r, dlen);
	return NBD_OPTION_HDR_LEN + (ssize_t)dlen;
}

ssize_t nbd_decode_option_reply(const void *p, size_t len,
				struct nbd_option_reply *ret)
{
	struct tsb_reader r;
	uint64_t magic;
	uint32_t opt, type, dlen;

	if (len < NBD_OPTION_REPLY_HDR_LEN)
		return 0;
	tsb_reader_init(&r, p, len);
	magic = tsb_get_be64(&r);
	opt = tsb_get_be32(&r);
	type = tsb_get_be32(&r);
	dlen = tsb_get_be32(&r);
	if (r.err || magic != NBD_REP_MAGIC)
		return -EBADMSG;
	if (dlen > NBD_MAX_OPTION_DATA)
		return -EMSGSIZE;
	if (tsb_reader_remaining(&r) < dlen)
		return 0;
	ret->option = opt;
	ret->type = type;
	ret->len = dlen;
	ret->data = tsb_get_bytes(&r, dlen);
	return NBD_OPTION_REPLY_HDR_LEN + (ssize_t)dlen;
}

ssize_t nbd_decode_export_name_reply(const void *p, size_t len,
				     bool no_zeroes,
				     struct nbd_export_info *ret)
{
	size_t need = NBD_EXPORT_NAME_REPLY_LEN + (no_zeroes ? 0 : 124);
	struct tsb_reader r;

	if (len < need)
		return 0;
	tsb_reader_init(&r, p, len);
	memset(ret, 0, sizeof(*ret));
	ret->size = tsb_get_be64(&r);
	ret->tflags = tsb_get_be16(&r);
	ret->has_export = true;
	if (!(ret->tflags & NBD_FLAG_HAS_FLAGS))
		return -EBADMSG;
	return (ssize_t)need;
}

ssize_t nbd_decode_request(const void *p, size_t len, struct nbd_request *ret)
{
	struct tsb_reader r;
	uint32_t magic;

	if (len < NBD_REQUEST_LEN)
		return 0;
	tsb_reader_init(&r, p, len);
	magic = tsb_get_be32(&r);
	if (magic != NBD_REQUEST_MAGIC)
		return -EBADMSG;
	ret->flags = tsb_get_be16(&r);
	ret->type = tsb_get_be16(&r);
	ret->cookie = tsb_get_be64(&r);
	ret->offset = tsb_get_be64(&r);
	ret->length = tsb_get_be32(&r);
	return r.err ? -EBADMSG : NBD_REQUEST_LEN;
}

ssize_t nbd_decode_reply(const void *p, size_t len, struct nbd_reply *ret)
{
	struct tsb_reader r;
	uint32_t magic;

	if (len < 4)
		return 0;
	tsb_reader_init(&r, p, len);
	magic = tsb_get_be32(&r);
	if (magic == NBD_SIMPLE_REPLY_MAGIC) {
		if (len < NBD_SIMPLE_REPLY_LEN)
			return 0;
		memset(ret, 0, sizeof(*ret));
		ret->error = tsb_get_be32(&r);
		ret->cookie = tsb_get_be64(&r);
		return r.err ? -EBADMSG : NBD_SIMPLE_REPLY_LEN;
	}
	if (magic == NBD_STRUCTURED_REPLY_MAGIC) {
		uint16_t flags, type;
		uint64_t cookie;
		uint32_t plen;

		if (len < NBD_CHUNK_HDR_LEN)
			return 0;
		flags = tsb_get_be16(&r);
		type = tsb_get_be16(&r);
		cookie = tsb_get_be64(&r);
		plen = tsb_get_be32(&r);
		if (r.err)
			return -EBADMSG;
		if (plen > NBD_MAX_CHUNK)
			return -EMSGSIZE;
		if (tsb_reader_remaining(&r) < plen)
			return 0;
		ret->structured = true;
		ret->error = 0;
		ret->flags = flags;
		ret->type = type;
		ret->cookie = cookie;
		ret->len = plen;
		ret->payload = tsb_get_bytes(&r, plen);
		return NBD_CHUNK_HDR_LEN + (ssize_t)plen;
	}
	return -EBADMSG;
}

int nbd_parse_go(const struct nbd_option *opt, struct nbd_go_request *ret)
{
	struct tsb_reader r;
	struct nbd_go_request g;

	tsb_reader_init(&r, opt->data, opt->len);
	g.name_len = tsb_get_be32(&r);
	if (r.err)
		return -EBADMSG;
	if (g.name_len > NBD_MAX_STRING)
		return -EMSGSIZE;
	g.name = (const char *)tsb_get_bytes(&r, g.name_len);
	g.n_info = tsb_get_be16(&r);
	if (r.err)
		return -EBADMSG;
	if (g.n_info > NBD_MAX_INFO_REQUESTS)
		return -EMSGSIZE;
	g.info = tsb_get_bytes(&r, (size_t)g.n_info * 2);
	if (r.err || tsb_reader_remaining(&r) != 0)
		return -EBADMSG;
	if (g.name_len && memchr(g.name, 0, g.name_len))
		return -EBADMSG;
	*ret = g;
	return 0;
}

int nbd_parse_meta(const struct nbd_option *opt, struct nbd_meta_request *ret)
{
	struct tsb_reader r, q;
	struct nbd_meta_request m;
	uint32_t i;

	tsb_reader_init(&r, opt->data, opt->len);
	m.name_len = tsb_get_be32(&r);
	if (r.err)
		return -EBADMSG;
	if (m.name_len > NBD_MAX_STRING)
		return -EMSGSIZE;
	m.name = (const char *)tsb_get_bytes(&r, m.name_len);
	m.n_queries = tsb_get_be32(&r);
	if (r.err)
		return -EBADMSG;
	if (m.n_queries > NBD_MAX_META_QUERIES)
		return -EMSGSIZE;
	m.queries_len = tsb_reader_remaining(&r);
	m.queries = tsb_get_bytes(&r, m.queries_len);
	if (r.err)
		return -EBADMSG;
	/* Check the whole list now, so that iterating cannot fail. */
	tsb_reader_init(&q, m.queries, m.queries_len);
	for (i = 0; i < m.n_queries; i++) {
		uint32_t l = tsb_get_be32(&q);

		if (q.err)
			return -EBADMSG;
		if (l > NBD_MAX_STRING)
			return -EMSGSIZE;
		tsb_skip(&q, l);
	}
	if (q.err || tsb_reader_remaining(&q) != 0)
		return -EBADMSG;
	*ret = m;
	return 0;
}

int nbd_meta_next(struct nbd_meta_request *m, const char **ret_query,
		  uint32_t *ret_len)
{
	struct tsb_reader r;
	uint32_t l;

	if (!m->n_queries)
		return 0;
	tsb_reader_init(&r, m->queries, m->queries_len);
	l = tsb_get_be32(&r);
	*ret_query = (const char *)tsb_get_bytes(&r, l);
	if (r.err)
		return 0;
	*ret_len = l;
	m->queries += r.pos;
	m->queries_len -= r.pos;
	m->n_queries--;
	return 1;
}

int nbd_parse_chunk(const struct nbd_reply *rep, struct nbd_chunk *ret)
{
	struct tsb_reader r;
	struct nbd_chunk c;

	memset(&c, 0, sizeof(c));
	tsb_reader_init(&r, rep->payload, rep->len);
	switch (rep->type) {
	case NBD_REPLY_TYPE_NONE:
		if (rep->len != 0 || !(rep->flags & NBD_REPLY_FLAG_DONE))
			return -EBADMSG;
		break;
	case NBD_REPLY_TYPE_OFFSET_DATA:
		c.offset = tsb_get_be64(&r);
		c.len = (uint32_t)tsb_reader_remaining(&r);
		c.data = tsb_get_bytes(&r, c.len);
		if (r.err || c.len == 0)
			return -EBADMSG;
		break;
	case NBD_REPLY_TYPE_OFFSET_HOLE:
		c.offset = tsb_get_be64(&r);
		c.len = tsb_get_be32(&r);
		if (r.err || c.len == 0 || tsb_reader_remaining(&r))
			return -EBADMSG;
		break;
	case NBD_REPLY_TYPE_BLOCK_STATUS:
		c.context_id = tsb_get_be32(&r);
		if (r.err || tsb_reader_remaining(&r) == 0 ||
		    tsb_reader_remaining(&r) % 8)
			return -EBADMSG;
		c.n_extents = (uint32_t)(tsb_reader_remaining(&r) / 8);
		c.extents = tsb_get_bytes(&r, (size_t)c.n_extents * 8);
		break;
	case NBD_REPLY_TYPE_ERROR:
	case NBD_REPLY_TYPE_ERROR_OFFSET:
		c.error = tsb_get_be32(&r);
		c.msg_len = tsb_get_be16(&r);
		c.msg = (const char *)tsb_get_bytes(&r, c.msg_len);
		if (rep->type == NBD_REPLY_TYPE_ERROR_OFFSET)
			c.offset = tsb_get_be64(&r);
		if (r.err || tsb_reader_remaining(&r) || c.error == 0)
			return -EBADMSG;
		break;
	default:
		return -EOPNOTSUPP;
	}
	if (r.err)
		return -EBADMSG;
	*ret = c;
	return 0;
}

int nbd_parse_info(const struct nbd_option_reply *rep,
		   struct nbd_export_info *info)
{
	struct tsb_reader r;
	uint16_t type;

	if (rep->type != NBD_REP_INFO)
		return -EPROTO;
	tsb_reader_init(&r, rep->data, rep->len);
	type = tsb_get_be16(&r);
	if (r.err)
		return -EBADMSG;
	switch (type) {
	case NBD_INFO_EXPORT: {
		uint64_t size = tsb_get_be64(&r);
		uint16_t tflags = tsb_get_be16(&r);

		if (r.err || tsb_reader_remaining(&r))
			return -EBADMSG;
		info->size = size;
		info->tflags = tflags;
		info->has_export = true;
		break;
	}
	case NBD_INFO_BLOCK_SIZE: {
		uint32_t mn = tsb_get_be32(&r);
		uint32_t pref = tsb_get_be32(&r);
		uint32_t mx = tsb_get_be32(&r);

		if (r.err || tsb_reader_remaining(&r))
			return -EBADMSG;
		/* Powers of two, min <= pref, min <= max (spec). */
		if (!mn || (mn & (mn - 1)) || !pref || (pref & (pref - 1)) ||
		    mn > pref || mx < mn)
			return -EBADMSG;
		info->min_block = mn;
		info->pref_block = pref;
		info->max_block = mx;
		info->has_block_size = true;
		break;
	}
	default:
		break; /* NAME, DESCRIPTION, future types: not needed */
	}
	return 0;
}

int nbd_parse_rep_server(const struct nbd_option_reply *rep,
			 const char **ret_name, uint32_t *ret_len)
{
	struct tsb_reader r;
	uint32_t l;
	const uint8_t *name;

	tsb_reader_init(&r, rep->data, rep->len);
	l = tsb_get_be32(&r);
	if (r.err)
		return -EBADMSG;
	if (l > NBD_MAX_STRING)
		return -EMSGSIZE;
	name = tsb_get_bytes(&r, l);
	if (r.err)
		return -EBADMSG;
	*ret_name = (const char *)name;
	*ret_len = l;
	return 0;
}

int nbd_parse_rep_meta(const struct nbd_option_reply *rep, uint32_t *ret_id,
		       const char **ret_name, uint32_t *ret_len)
{
	struct tsb_reader r;
	uint32_t id;

	tsb_reader_init(&r, rep->data, rep->len);
	id = tsb_get_be32(&r);
	if (r.err)
		return -EBADMSG;
	if (tsb_reader_remaining(&r) > NBD_MAX_STRING)
		return -EMSGSIZE;
	*ret_id = id;
	*ret_len = (uint32_t)tsb_reader_remaining(&r);
	*ret_name = (const char *)(rep->data + 4);
	return 0;
}

/* Flags each command accepts (before checking what was advertised). */
static uint16_t cmd_flags_allowed(uint16_t type)
{
	switch (type) {
	case NBD_CMD_READ:
		return NBD_CMD_FLAG_DF;
	case NBD_CMD_WRITE:
	case NBD_CMD_TRIM:
		return NBD_CMD_FLAG_FUA;
	case NBD_CMD_WRITE_ZEROES:
		return NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
		       NBD_CMD_FLAG_FAST_ZERO;
	case NBD_CMD_BLOCK_STATUS:
		return NBD_CMD_FLAG_REQ_ONE;
	default:
		return 0;
	}
}

uint32_t nbd_validate_request(const struct nbd_request *req,
			      const struct nbd_conn_params *p,
			      const char **ret_why)
{
	uint16_t t = p->tflags;
	uint64_t end;
	bool writes = false;

	*ret_why = NULL;
	switch (req->type) {
	case NBD_CMD_READ:
	case NBD_CMD_DISC:
		break;
	case NBD_CMD_WRITE:
		writes = true;
		break;
	case NBD_CMD_FLUSH:
		if (!(t & NBD_FLAG_SEND_FLUSH))
			goto unadvertised;
		break;
	case NBD_CMD_TRIM:
		writes = true;
		if (!(t & NBD_FLAG_SEND_TRIM))
			goto unadvertised;
		break;
	case NBD_CMD_CACHE:
		if (!(t & NBD_FLAG_SEND_CACHE))
			goto unadvertised;
		break;
	case NBD_CMD_WRITE_ZEROES:
		writes = true;
		if (!(t & NBD_FLAG_SEND_WRITE_ZEROES))
			goto unadvertised;
		break;
	case NBD_CMD_BLOCK_STATUS:
		if (!p->meta_base_allocation) {
			*ret_why = "BLOCK_STATUS without a selected metadata context";
			return NBD_EINVAL;
		}
		break;
	default:
		*ret_why = "unknown command";
		return NBD_EINVAL;
	}
	if (req->flags & ~cmd_flags_allowed(req->type)) {
		*ret_why = "flag not allowed for this command";
		return NBD_EINVAL;
	}
	if ((req->flags & NBD_CMD_FLAG_FUA) && !(t & NBD_FLAG_SEND_FUA)) {
		*ret_why = "FUA not advertised";
		return NBD_EINVAL;
	}
	if ((req->flags & NBD_CMD_FLAG_DF) && !(t & NBD_FLAG_SEND_DF)) {
		*ret_why = "DF not advertised";
		return NBD_EINVAL;
	}
	if ((req->flags & NBD_CMD_FLAG_FAST_ZERO) &&
	    !(t & NBD_FLAG_SEND_FAST_ZERO)) {
		*ret_why = "FAST_ZERO not advertised";
		return NBD_EINVAL;
	}
	if (req->type == NBD_CMD_DISC)
		return 0;
	if (req->type == NBD_CMD_FLUSH) {
		if (req->offset || req->length) {
			*ret_why = "FLUSH with an offset or a length";
			return NBD_EINVAL;
		}
		return 0;
	}
	if (writes && (t & NBD_FLAG_READ_ONLY)) {
		*ret_why = "write to a read-only export";
		return NBD_EPERM;
	}
	if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
	    req->length > p->max_payload) {
		*ret_why = "length over the maximum block size";
		return req->type == NBD_CMD_READ ? NBD_EOVERFLOW : NBD_EINVAL;
	}
	if (req->length == 0) {
		*ret_why = "zero length";
		return NBD_EINVAL;
	}
	if (__builtin_add_overflow(req->offset, (uint64_t)req->length, &end) ||
	    end > p->size) {
		*ret_why = "range beyond the end of the export";
		return writes ? NBD_ENOSPC : NBD_EINVAL;
	}
	return 0;

unadvertised:
	*ret_why = "command not advertised";
	return NBD_EINVAL;
}

uint32_t nbd_errno_to_wire(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case 0:
		return 0;
	case EPERM:
	case EROFS:
		return NBD_EPERM;
	case EIO:
		return NBD_EIO;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EFBIG:
	case EDQUOT:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

int nbd_wire_to_errno(uint32_t err)
{
	switch (err) {
	case 0:
		return 0;
	case NBD_EPERM:
		return -EPERM;
	case NBD_EIO:
		return -EIO;
	case NBD_ENOMEM:
		return -ENOMEM;
	case NBD_ENOSPC:
		return -ENOSPC;
	case NBD_EOVERFLOW:
		return -EOVERFLOW;
	case NBD_ENOTSUP:
		return -ENOTSUP;
	case NBD_ESHUTDOWN:
		return -ESHUTDOWN;
	case NBD_EINVAL:
	default:
		return -EINVAL;
	}
}

const char *nbd_cmd_name(uint16_t type)
{
	static const char *const names[] = {
		"READ", "WRITE", "DISC", "FLUSH", "TRIM", "CACHE",
		"WRITE_ZEROES", "BLOCK_STATUS",
	};

	return type < 8 ? names[type] : "unknown";
}

const char *nbd_opt_name(uint32_t opt)
{
	static const char *const names[] = {
		"?", "EXPORT_NAME", "ABORT", "LIST", "PEEK_EXPORT", "STARTTLS",
		"INFO", "GO", "STRUCTURED_REPLY", "LIST_META_CONTEXT",
		"SET_META_CONTEXT", "EXTENDED_HEADERS",
	};

	return opt >= 1 && opt < 12 ? names[opt] : "unknown";
}

const char *nbd_rep_name(uint32_t type)
{
	switch (type) {
	case NBD_REP_ACK: return "ACK";
	case NBD_REP_SERVER: return "SERVER";
	case NBD_REP_INFO: return "INFO";
	case NBD_REP_META_CONTEXT: return "META_CONTEXT";
	case NBD_REP_ERR_UNSUP: return "ERR_UNSUP";
	case NBD_REP_ERR_POLICY: return "ERR_POLICY";
	case NBD_REP_ERR_INVALID: return "ERR_INVALID";
	case NBD_REP_ERR_PLATFORM: return "ERR_PLATFORM";
	case NBD_REP_ERR_TLS_REQD: return "ERR_TLS_REQD";
	case NBD_REP_ERR_UNKNOWN: return "ERR_UNKNOWN";
	case NBD_REP_ERR_SHUTDOWN: return "ERR_SHUTDOWN";
	case NBD_REP_ERR_BLOCK_SIZE_REQD: return "ERR_BLOCK_SIZE_REQD";
	case NBD_REP_ERR_TOO_BIG: return "ERR_TOO_BIG";
	default: return "unknown";
	}
}

/* ---- encoders ---- */

void nbd_put_greeting(struct tsb_buf *b, uint16_t flags)
{
	tsb_buf_put_be64(b, NBD_MAGIC);
	tsb_buf_put_be64(b, NBD_IHAVEOPT);
	tsb_buf_put_be16(b, flags);
}

void nbd_put_client_flags(struct tsb_buf *b, uint32_t flags)
{
	tsb_buf_put_be32(b, flags);
}

void nbd_put_option(struct tsb_buf *b, uint32_t opt, const void *data,
		    uint32_t len)
{
	tsb_buf_put_be64(b, NBD_IHAVEOPT);
	tsb_buf_put_be32(b, opt);
	tsb_buf_put_be32(b, len);
	if (len)
		tsb_buf_append(b, data, len);
}

void nbd_put_option_reply(struct tsb_buf *b, uint32_t opt, uint32_t type,
			  const void *data, uint32_t len)
{
	tsb_buf_put_be64(b, NBD_REP_MAGIC);
	tsb_buf_put_be32(b, opt);
	tsb_buf_put_be32(b, type);
	tsb_buf_put_be32(b, len);
	if (len)
		tsb_buf_append(b, data, len);
}

void nbd_put_go_data(struct tsb_buf *b, const char *name,
		     const uint16_t *info, uint16_t n_info)
{
	size_t l = strlen(name);
	uint16_t i;

	tsb_buf_put_be32(b, (uint32_t)l);
	tsb_buf_append(b, name, l);
	tsb_buf_put_be16(b, n_info);
	for (i = 0; i < n_info; i++)
		tsb_buf_put_be16(b, info[i]);
}

void nbd_put_meta_data(struct tsb_buf *b, const char *name,
		       const char *const *queries, uint32_t n)
{
	size_t l = strlen(name);
	uint32_t i;

	tsb_buf_put_be32(b, (uint32_t)l);
	tsb_buf_append(b, name, l);
	tsb_buf_put_be32(b, n);
	for (i = 0; i < n; i++) {
		l = strlen(queries[i]);
		tsb_buf_put_be32(b, (uint32_t)l);
		tsb_buf_append(b, queries[i], l);
	}
}

void nbd_put_info_export(struct tsb_buf *b, uint32_t opt, uint64_t size,
			 uint16_t tflags)
{
	tsb_buf_put_be64(b, NBD_REP_MAGIC);
	tsb_buf_put_be32(b, opt);
	tsb_buf_put_be32(b, NBD_REP_INFO);
	tsb_buf_put_be32(b, 12);
	tsb_buf_put_be16(b, NBD_INFO_EXPORT);
	tsb_buf_put_be64(b, size);
	tsb_buf_put_be16(b, tflags);
}

void nbd_put_info_block_size(struct tsb_buf *b, uint32_t opt, uint32_t min,
			     uint32_t pref, uint32_t max)
{
	tsb_buf_put_be64(b, NBD_REP_MAGIC);
	tsb_buf_put_be32(b, opt);
	tsb_buf_put_be32(b, NBD_REP_INFO);
	tsb_buf_put_be32(b, 14);
	tsb_buf_put_be16(b, NBD_INFO_BLOCK_SIZE);
	tsb_buf_put_be32(b, min);
	tsb_buf_put_be32(b, pref);
	tsb_buf_put_be32(b, max);
}

void nbd_put_export_name_reply(struct tsb_buf *b, uint64_t size,
			       uint16_t tflags, bool no_zeroes)
{
	uint8_t *z;

	tsb_buf_put_be64(b, size);
	tsb_buf_put_be16(b, tflags);
	if (!no_zeroes) {
		z = tsb_buf_extend(b, 124);
		if (z)
			memset(z, 0, 124);
	}
}

void nbd_put_request(struct tsb_buf *b, const struct nbd_request *req)
{
	tsb_buf_put_be32(b, NBD_REQUEST_MAGIC);
	tsb_buf_put_be16(b, req->flags);
	tsb_buf_put_be16(b, req->type);
	tsb_buf_put_be64(b, req->cookie);
	tsb_buf_put_be64(b, req->offset);
	tsb_buf_put_be32(b, req->length);
}

void nbd_put_simple_reply(struct tsb_buf *b, uint32_t error, uint64_t cookie)
{
	tsb_buf_put_be32(b, NBD_SIMPLE_REPLY_MAGIC);
	tsb_buf_put_be32(b, error);
	tsb_buf_put_be64(b, cookie);
}

void nbd_put_chunk_header(struct tsb_buf *b, uint16_t flags, uint16_t type,
			  uint64_t cookie, uint32_t len)
{
	tsb_buf_put_be32(b, NBD_STRUCTURED_REPLY_MAGIC);
	tsb_buf_put_be16(b, flags);
	tsb_buf_put_be16(b, type);
	tsb_buf_put_be64(b, cookie);
	tsb_buf_put_be32(b, len);
}

void nbd_put_chunk_data_header(struct tsb_buf *b, uint16_t flags,
			       uint64_t cookie, uint64_t offset, uint32_t len)
{
	nbd_put_chunk_header(b, flags, NBD_REPLY_TYPE_OFFSET_DATA, cookie,
			     len + 8);
	tsb_buf_put_be64(b, offset);
}

void nbd_put_chunk_hole(struct tsb_buf *b, uint16_t flags, uint64_t cookie,
			uint64_t offset, uint32_t len)
{
	nbd_put_chunk_header(b, flags, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12);
	tsb_buf_put_be64(b, offset);
	tsb_buf_put_be32(b, len);
}

void nbd_put_chunk_error(struct tsb_buf *b, uint16_t flags, uint64_t cookie,
			 uint32_t error, const char *msg)
{
	size_t l = msg ? strnlen(msg, NBD_MAX_STRING) : 0;

	nbd_put_chunk_header(b, flags, NBD_REPLY_TYPE_ERROR, cookie,
			     (uint32_t)(6 + l));
	tsb_buf_put_be32(b, error);
	tsb_buf_put_be16(b, (uint16_t)l);
	if (l)
		tsb_buf_append(b, msg, l);
}

void nbd_put_chunk_block_status(struct tsb_buf *b, uint16_t flags,
				uint64_t cookie, uint32_t context_id,
				const struct nbd_extent *ext, uint32_t n)
{
	uint32_t i;

	nbd_put_chunk_header(b, flags, NBD_REPLY_TYPE_BLOCK_STATUS, cookie,
			     4 + 8 * n);
	tsb_buf_put_be32(b, context_id);
	for (i = 0; i < n; i++) {
		tsb_buf_put_be32(b, ext[i].length);
		tsb_buf_put_be32(b, ext[i].flags);
	}
}
