/* Frame headers, message names and roles, and the resumable frame decoder. */
#include "wire/wire.h"
#include "wire/internal.h"

#include <errno.h>
#include <string.h>

struct msg_info {
	const char *name;
	uint8_t flags;   /* flags allowed */
	uint8_t roles;   /* bit (1 << role): who may send it */
};

#define SND (1u << WIRE_ROLE_SENDER)
#define RCV (1u << WIRE_ROLE_RECEIVER)

static const struct msg_info msg_info[WIRE_MSG_MAX + 1] = {
	[WIRE_MSG_HELLO] = { "HELLO", 0, SND | RCV },
	[WIRE_MSG_BLOCKS] = { "BLOCKS", 0, SND },
	[WIRE_MSG_STREAM] = { "STREAM", WIRE_F_ZSTD, SND },
	[WIRE_MSG_PAGES] = { "PAGES", WIRE_F_ZSTD, SND },
	[WIRE_MSG_NEED] = { "NEED", 0, RCV },
	[WIRE_MSG_HASHDATA] = { "HASHDATA", WIRE_F_ZSTD, SND },
	[WIRE_MSG_RETURN] = { "RETURN", WIRE_F_ZSTD, RCV },
	[WIRE_MSG_SWITCHOVER] = { "SWITCHOVER", 0, SND },
	[WIRE_MSG_DONE] = { "DONE", 0, SND | RCV },
	[WIRE_MSG_CANCEL] = { "CANCEL", 0, SND | RCV },
	[WIRE_MSG_ERROR] = { "ERROR", 0, SND | RCV },
	[WIRE_MSG_PROGRESS] = { "PROGRESS", 0, SND | RCV },
	[WIRE_MSG_ACK] = { "ACK", 0, SND | RCV },
	[WIRE_MSG_PING] = { "PING", 0, SND | RCV },
	[WIRE_MSG_PONG] = { "PONG", 0, SND | RCV },
	[WIRE_MSG_SUMMARY] = { "SUMMARY", 0, RCV },
	[WIRE_MSG_BASE] = { "BASE", 0, SND },
	[WIRE_MSG_PREPARED] = { "PREPARED", 0, RCV },
	[WIRE_MSG_DECISION] = { "DECISION", 0, SND },
	[WIRE_MSG_OUTCOME] = { "OUTCOME", 0, RCV },
	[WIRE_MSG_LANE] = { "LANE", 0, SND | RCV },
};

static const struct msg_info *info_of(uint8_t type)
{
	if (type == 0 || type > WIRE_MSG_MAX)
		return NULL;
	return &msg_info[type];
}

const char *wire_msg_name(uint8_t type)
{
	const struct msg_info *mi = info_of(type);

	return mi ? mi->name : "?";
}

bool wire_msg_role_ok(uint8_t type, enum wire_role from)
{
	const struct msg_info *mi = info_of(type);

	if (!mi || (from != WIRE_ROLE_SENDER && from != WIRE_ROLE_RECEIVER))
		return false;
	return mi->roles & (1u << from);
}

int wire_check_type_flags(uint8_t type, uint8_t flags)
{
	const struct msg_info *mi = info_of(type);

	if (!mi || (flags & ~mi->flags))
		return -EOPNOTSUPP;
	return 0;
}

int wire_header_decode(const uint8_t hdr[WIRE_HDR_LEN], struct wire_frame *ret)
{
	uint32_t len = tsb_load_be32(hdr + 4);
	int r;

	r = wire_check_type_flags(hdr[0], hdr[1]);
	if (r < 0)
		return r;
	/* Reserved for a later version: refuse rather than ignore. */
	if (tsb_load_be16(hdr + 2) != 0)
		return -EOPNOTSUPP;
	if (len > WIRE_MAX_PAYLOAD)
		return -EMSGSIZE;
	ret->type = hdr[0];
	ret->flags = hdr[1];
	ret->len = len;
	ret->payload = NULL;
	return 0;
}

void wire_decoder_init(struct wire_decoder *d)
{
	memset(d, 0, sizeof(*d));
	tsb_buf_init(&d->payload);
}

void wire_decoder_fini(struct wire_decoder *d)
{
	if (!d)
		return;
	tsb_buf_fini(&d->payload);
	wire_decoder_init(d);
}

bool wire_decoder_idle(const struct wire_decoder *d)
{
	return d->hdr_got == 0;
}

int wire_decoder_feed(struct wire_decoder *d, const uint8_t *data, size_t len,
		      size_t *ret_used, struct wire_frame *ret_frame)
{
	size_t used = 0, n;
	int r;

	if (d->err)
		return d->err;
	if (!len) {
		*ret_used = 0;
		return 0;
	}
	if (d->hdr_got < WIRE_HDR_LEN) {
		n = WIRE_HDR_LEN - d->hdr_got;
		if (n > len)
			n = len;
		memcpy(d->hdr + d->hdr_got, data, n);
		d->hdr_got += n;
		used += n;
		if (d->hdr_got < WIRE_HDR_LEN) {
			*ret_used = used;
			return 0;
		}
		r = wire_header_decode(d->hdr, &d->cur);
		if (r < 0)
			return d->err = r;
		d->got = 0;
		tsb_buf_reset(&d->payload);
		/* Whole payload already in data: hand out a view, no copy. */
		if (len - used >= d->cur.len) {
			*ret_frame = d->cur;
			ret_frame->payload = data + used;
			*ret_used = used + d->cur.len;
			d->hdr_got = 0;
			return 1;
		}
		if (tsb_buf_reserve(&d->payload, d->cur.len) < 0)
			return d->err = -ENOMEM;
	}
	n = d->cur.len - d->got;
	if (n > len - used)
		n = len - used;
	memcpy(d->payload.data + d->got, data + used, n);
	d->got += n;
	used += n;
	*ret_used = used;
	if (d->got < d->cur.len)
		return 0;
	d->payload.len = d->got;
	*ret_frame = d->cur;
	ret_frame->payload = d->payload.data;
	d->hdr_got = 0;
	return 1;
}
