/*
 * Main-channel parser: header, configuration, commands, the "ram"
 * section's records; device state is passed through opaque. Layout facts:
 * README.md; QEMU sources migration/savevm.c, migration/ram.c,
 * migration/vmstate.c.
 */
#include "qstream/qstream.h"
#include "qstream/internal.h"

#include "common/log.h"
#include "common/reader.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QS_MAGIC 0x5145564du /* "QEVM" */
#define QS_VERSION 3u
#define QS_RAM_VERSION 4u
#define QS_RAM_KNOWN_FLAGS 0x3ffu
#define QS_DEFAULT_PAGE_SIZE 4096u

/* Largest token: a record with idstr and an XBZRLE header + delta, or a
 * command with 65535 bytes of data. */
#define QS_HOLD_CAP (8 + 1 + QS_IDSTR_MAX + 3 + QS_PAGE_SIZE_MAX + 64)

enum st {
	ST_MAGIC,		/* be32 magic, be32 version */
	ST_CONFIG_PEEK,		/* 0x07 or the first top-level element */
	ST_CONFIG,		/* 0x07 be32 n, machine name */
	ST_CFG_PEEK,		/* 0x05 subsection or end of configuration */
	ST_CFG_SUB,		/* 0x05 idstr be32 version */
	ST_CFG_PAGE_BITS,
	ST_CFG_CAPS,		/* be32 count */
	ST_CFG_CAP,		/* idstr */
	ST_CFG_UUID,
	ST_TOP,			/* top-level element */
	ST_RAM,			/* record header (+ idstr + payload) */
	ST_BLOCK,		/* MEM_SIZE list entry */
	ST_FOOTER,
	ST_PACKAGED,		/* streaming the blob */
	ST_DEVICE,		/* streaming device state to the end */
	ST_AFTER_EOF,
	ST_VMDESC,		/* streaming the vmdesc after a top-level EOF */
	ST_END,
};

static const char *const st_names[] = {
	[ST_MAGIC] = "the stream header",
	[ST_CONFIG_PEEK] = "the stream header",
	[ST_CONFIG] = "the configuration",
	[ST_CFG_PEEK] = "the configuration",
	[ST_CFG_SUB] = "a configuration subsection",
	[ST_CFG_PAGE_BITS] = "a configuration subsection",
	[ST_CFG_CAPS] = "a configuration subsection",
	[ST_CFG_CAP] = "a configuration subsection",
	[ST_CFG_UUID] = "a configuration subsection",
	[ST_TOP] = "a top-level element",
	[ST_RAM] = "a RAM record",
	[ST_BLOCK] = "the RAM block list",
	[ST_FOOTER] = "a section footer",
	[ST_PACKAGED] = "a PACKAGED blob",
	[ST_DEVICE] = "device state",
	[ST_AFTER_EOF] = "the VM description header",
	[ST_VMDESC] = "the VM description",
	[ST_END] = "the end of the stream",
};

struct qs_parser {
	struct qs_tok t;
	struct qs_handlers h;
	void *opaque;
	enum st st;
	int err;
	char errmsg[320];

	/* Configuration. */
	uint32_t page_size;
	bool page_from_config;
	bool has_config;
	bool ignore_shared;
	bool has_uuid;
	uint32_t caps_left;
	char machine[QS_MACHINE_NAME_MAX + 1];

	/* Postcopy advise. */
	bool advised;
	uint64_t advise_summary;
	uint64_t advise_tps;

	/* The ram section. */
	bool ram_started;
	bool ram_ended;
	bool setup_seen;
	uint32_t ram_id;
	enum qs_section_type sec;
	uint64_t sec_off;
	uint64_t setup_total;
	uint64_t setup_left;
	uint64_t setup_off;
	struct qs_block *blocks;
	unsigned n_blocks;
	unsigned cap_blocks;
	int last_block;		/* index of the last named block, -1 none */

	/* Streaming states. */
	uint64_t remain;
	uint64_t pkg_off;
	uint32_t pkg_len;
	uint32_t pkg_seen;
	uint8_t pkg_head[5];
	uint8_t pkg_tail[5];

	/* Device state: completeness heuristic (see qs_parser_finish()). */
	bool in_device;
	uint64_t dev_bytes;
	uint8_t dev_win[6];	/* last 6 bytes seen */
	bool have_vmdesc_end;
	uint64_t vmdesc_end;
};

static const char *ram_flag_name(uint32_t flag)
{
	switch (flag) {
	case QS_RAM_FULL: return "FULL";
	case QS_RAM_ZERO: return "ZERO";
	case QS_RAM_MEM_SIZE: return "MEM_SIZE";
	case QS_RAM_PAGE: return "PAGE";
	case QS_RAM_EOS: return "EOS";
	case QS_RAM_CONTINUE: return "CONTINUE";
	case QS_RAM_XBZRLE: return "XBZRLE";
	case QS_RAM_HOOK: return "HOOK";
	case QS_RAM_COMPRESS_PAGE: return "COMPRESS_PAGE";
	case QS_RAM_MULTIFD_FLUSH: return "MULTIFD_FLUSH";
	}
	return "unknown";
}

const char *qs_cmd_name(unsigned cmd)
{
	static const char *const names[] = {
		[QS_CMD_OPEN_RETURN_PATH] = "OPEN_RETURN_PATH",
		[QS_CMD_PING] = "PING",
		[QS_CMD_POSTCOPY_ADVISE] = "POSTCOPY_ADVISE",
		[QS_CMD_POSTCOPY_LISTEN] = "POSTCOPY_LISTEN",
		[QS_CMD_POSTCOPY_RUN] = "POSTCOPY_RUN",
		[QS_CMD_POSTCOPY_RAM_DISCARD] = "POSTCOPY_RAM_DISCARD",
		[QS_CMD_PACKAGED] = "PACKAGED",
		[QS_CMD_ENABLE_COLO] = "ENABLE_COLO",
		[QS_CMD_POSTCOPY_RESUME] = "POSTCOPY_RESUME",
		[QS_CMD_RECV_BITMAP] = "RECV_BITMAP",
		[QS_CMD_SWITCHOVER_START] = "SWITCHOVER_START",
	};

	return qs_name_of(names, sizeof(names) / sizeof(names[0]), cmd);
}

static int fail(struct qs_parser *p, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Records the first error with its stream offset; returns err. */
static int fail(struct qs_parser *p, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	err = qs_verror(&p->err, p->errmsg, sizeof(p->errmsg), err, "stream", p->t.off,
			fmt, ap);
	va_end(ap);
	return err;
}

static int handler_failed(struct qs_parser *p, const char *what, int r)
{
	if (r >= 0)
		r = -EIO;
	return fail(p, r, "%s handler failed: %s", what, strerror(-r));
}

/* Copies a u8-length string into a NUL-terminated buffer of 256 bytes. */
static void copy_idstr(char *dst, const uint8_t *src, uint8_t n)
{
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int emit(struct qs_parser *p, const uint8_t *v, size_t n)
{
	int r = qs_tok_emit(&p->t, v, n);

	return r < 0 ? handler_failed(p, "raw", r) : 0;
}

static int event(struct qs_parser *p, struct qs_event *ev)
{
	int r = qs_tok_flush(&p->t);

	if (r < 0)
		return handler_failed(p, "raw", r);
	if (!p->h.event)
		return 0;
	r = p->h.event(p->opaque, ev);
	return r < 0 ? handler_failed(p, "event", r) : 0;
}

static void set_state(struct qs_parser *p, enum st st, size_t need)
{
	p->st = st;
	p->t.need = need;
}

/* Raises the view to n bytes: the step returns and runs again. */
#define NEED(p, n)						\
	do {							\
		if ((p)->t.need < (size_t)(n)) {		\
			(p)->t.need = (n);			\
			return 0;				\
		}						\
	} while (0)

static int config_done(struct qs_parser *p)
{
	struct qs_event ev = {
		.type = QS_EV_CONFIG,
		.stream_offset = 0,
		.config = {
			.machine = p->machine,
			.page_size = p->page_size,
			.has_config = p->has_config,
			.ignore_shared = p->ignore_shared,
			.has_uuid = p->has_uuid,
		},
	};

	set_state(p, ST_TOP, 1);
	return event(p, &ev);
}

static int step_magic(struct qs_parser *p, const uint8_t *v)
{
	uint32_t magic = tsb_load_be32(v), version = tsb_load_be32(v + 4);

	if (magic != QS_MAGIC)
		return fail(p, -EBADMSG,
			    "not a QEMU migration stream (magic 0x%08x, expected 0x%08x \"QEVM\")",
			    magic, QS_MAGIC);
	if (version != QS_VERSION)
		return fail(p, -EOPNOTSUPP,
			    "unsupported migration stream version %u (%s; only 3 is supported)",
			    version, version == 2 ? "obsolete" : "unknown");
	if (emit(p, v, 8))
		return p->err;
	set_state(p, ST_CONFIG_PEEK, 1);
	return 0;
}

static int step_config(struct qs_parser *p, const uint8_t *v)
{
	uint32_t n;

	NEED(p, 5);
	n = tsb_load_be32(v + 1);
	if (n > QS_MACHINE_NAME_MAX)
		return fail(p, -EMSGSIZE,
			    "configuration machine name of %u bytes exceeds the limit %u",
			    n, QS_MACHINE_NAME_MAX);
	NEED(p, 5 + n);
	memcpy(p->machine, v + 5, n);
	p->machine[n] = '\0';
	p->has_config = true;
	if (emit(p, v, 5 + n))
		return p->err;
	set_state(p, ST_CFG_PEEK, 1);
	return 0;
}

static int step_cfg_sub(struct qs_parser *p, const uint8_t *v)
{
	char name[QS_IDSTR_MAX + 1];
	uint32_t version;
	uint8_t n;
	enum st next;
	size_t need;

	NEED(p, 2);
	n = v[1];
	NEED(p, 2 + n + 4);
	copy_idstr(name, v + 2, n);
	version = tsb_load_be32(v + 2 + n);
	if (!strcmp(name, "configuration/target-page-bits")) {
		next = ST_CFG_PAGE_BITS;
		need = 4;
	} else if (!strcmp(name, "configuration/capabilities")) {
		next = ST_CFG_CAPS;
		need = 4;
	} else if (!strcmp(name, "configuration/uuid")) {
		next = ST_CFG_UUID;
		need = 16;
	} else {
		return fail(p, -EOPNOTSUPP,
			    "unsupported configuration subsection \"%s\"", name);
	}
	if (version != 1)
		return fail(p, -EOPNOTSUPP,
			    "unsupported version %u of configuration subsection \"%s\"",
			    version, name);
	if (emit(p, v, 2 + n + 4))
		return p->err;
	set_state(p, next, need);
	return 0;
}

static int step_cfg_body(struct qs_parser *p, const uint8_t *v)
{
	char name[QS_IDSTR_MAX + 1];
	uint32_t x;
	size_t len = p->t.need;

	switch (p->st) {
	case ST_CFG_PAGE_BITS:
		x = tsb_load_be32(v);
		if (x < 10 || x > 16)
			return fail(p, -EOPNOTSUPP,
				    "unsupported target page bits %u", x);
		p->page_size = 1u << x;
		p->page_from_config = true;
		break;
	case ST_CFG_CAPS:
		x = tsb_load_be32(v);
		if (x > QS_MAX_CAPS)
			return fail(p, -EMSGSIZE,
				    "configuration lists %u capabilities, limit %u",
				    x, QS_MAX_CAPS);
		p->caps_left = x;
		break;
	case ST_CFG_CAP:
		NEED(p, 1);
		NEED(p, 1 + v[0]);
		len = 1 + v[0];
		copy_idstr(name, v + 1, v[0]);
		if (strcmp(name, "x-ignore-shared"))
			return fail(p, -EOPNOTSUPP,
				    "unsupported validated capability \"%s\" in the configuration",
				    name);
		p->ignore_shared = true;
		p->caps_left--;
		break;
	case ST_CFG_UUID:
		p->has_uuid = true;
		break;
	default:
		return fail(p, -EBADMSG, "internal error: configuration state %d",
			    p->st);
	}
	if (emit(p, v, len))
		return p->err;
	if ((p->st == ST_CFG_CAPS || p->st == ST_CFG_CAP) && p->caps_left)
		set_state(p, ST_CFG_CAP, 1);
	else
		set_state(p, ST_CFG_PEEK, 1);
	return 0;
}

static int check_cmd_len(struct qs_parser *p, uint16_t cmd, uint16_t len,
			 uint16_t want)
{
	if (len == want)
		return 0;
	return fail(p, -EBADMSG, "command %s with length %u (expected %u)",
		    qs_cmd_name(cmd), len, want);
}

static int step_command(struct qs_parser *p, const uint8_t *v)
{
	struct qs_event ev = { .type = QS_EV_COMMAND, .stream_offset = p->t.off };
	const uint8_t *d;
	uint16_t cmd, len;
	uint32_t plen = 0;

	NEED(p, 5);
	cmd = tsb_load_be16(v + 1);
	len = tsb_load_be16(v + 3);
	switch (cmd) {
	case QS_CMD_OPEN_RETURN_PATH:
	case QS_CMD_POSTCOPY_LISTEN:
	case QS_CMD_POSTCOPY_RUN:
	case QS_CMD_POSTCOPY_RESUME:
	case QS_CMD_SWITCHOVER_START:
		if (check_cmd_len(p, cmd, len, 0))
			return p->err;
		break;
	case QS_CMD_PING:
	case QS_CMD_PACKAGED:
		if (check_cmd_len(p, cmd, len, 4))
			return p->err;
		break;
	case QS_CMD_POSTCOPY_ADVISE:
		if (len != 0 && len != 16)
			return fail(p, -EBADMSG,
				    "command POSTCOPY_ADVISE with length %u (expected 0 or 16)",
				    len);
		break;
	case QS_CMD_POSTCOPY_RAM_DISCARD:
	case QS_CMD_RECV_BITMAP:
		break;
	case QS_CMD_ENABLE_COLO:
		return fail(p, -EOPNOTSUPP,
			    "unsupported command ENABLE_COLO (x-colo)");
	default:
		return fail(p, -EOPNOTSUPP, "unknown command %u", cmd);
	}
	NEED(p, 5 + len);
	d = v + 5;

	switch (cmd) {
	case QS_CMD_POSTCOPY_ADVISE:
		if (len == 16) {
			uint64_t tps = tsb_load_be64(d + 8);

			if (tps < QS_PAGE_SIZE_MIN || tps > QS_PAGE_SIZE_MAX ||
			    (tps & (tps - 1)))
				return fail(p, -EOPNOTSUPP,
					    "POSTCOPY_ADVISE with target page size %llu",
					    (unsigned long long)tps);
			if ((p->page_from_config || p->ram_started) &&
			    tps != p->page_size)
				return fail(p, -EBADMSG,
					    "POSTCOPY_ADVISE target page size %llu differs from %u",
					    (unsigned long long)tps, p->page_size);
			p->page_size = (uint32_t)tps;
			p->advise_summary = tsb_load_be64(d);
			p->advise_tps = tps;
			p->advised = true;
		}
		break;
	case QS_CMD_POSTCOPY_RAM_DISCARD: {
		/* u8 version 0, idstr, u8 0, (be64 start, be64 length)* */
		uint8_t n;

		if (len < 3)
			return fail(p, -EBADMSG,
				    "POSTCOPY_RAM_DISCARD too short (%u bytes)", len);
		if (d[0] != 0)
			return fail(p, -EOPNOTSUPP,
				    "POSTCOPY_RAM_DISCARD version %u", d[0]);
		n = d[1];
		if (n == 0 || 3u + n > len || d[2 + n] != 0 ||
		    (len - 3u - n) % 16)
			return fail(p, -EBADMSG,
				    "malformed POSTCOPY_RAM_DISCARD of %u bytes", len);
		break;
	}
	case QS_CMD_RECV_BITMAP:
		if (len < 2 || d[0] != len - 1)
			return fail(p, -EBADMSG, "malformed RECV_BITMAP command");
		break;
	case QS_CMD_PACKAGED:
		plen = tsb_load_be32(d);
		if (plen > QS_PACKAGED_MAX)
			return fail(p, -EMSGSIZE,
				    "PACKAGED blob of %u bytes exceeds the limit %u",
				    plen, QS_PACKAGED_MAX);
		break;
	}

	ev.command.cmd = cmd;
	ev.command.len = len;
	ev.command.packaged_len = plen;
	/*
	 * The whole view is consumed, so the data stays where it is (caller's
	 * input, or the staging buffer, which is refilled only by the next
	 * view) while the event runs.
	 */
	ev.command.data = d;
	if (emit(p, v, 5 + len) || event(p, &ev))
		return p->err;
	if (cmd == QS_CMD_PACKAGED) {
		p->remain = plen;
		p->pkg_len = plen;
		p->pkg_seen = 0;
		p->pkg_off = p->t.off;
		set_state(p, ST_PACKAGED, 0);
	} else {
		set_state(p, ST_TOP, 1);
	}
	return 0;
}

static void dev_scan(struct qs_parser *p, const uint8_t *b, size_t n);

static int step_section_start_full(struct qs_parser *p, const uint8_t *v)
{
	char idstr[QS_IDSTR_MAX + 1];
	uint32_t id, instance, version;
	uint8_t type = v[0], n;

	NEED(p, 6);
	id = tsb_load_be32(v + 1);
	n = v[5];
	NEED(p, 6 + n + 8);
	copy_idstr(idstr, v + 6, n);
	instance = tsb_load_be32(v + 6 + n);
	version = tsb_load_be32(v + 6 + n + 4);

	if (type == QS_VM_SECTION_FULL) {
		struct qs_event ev = {
			.type = QS_EV_DEVICE_STATE,
			.stream_offset = p->t.off,
			.device = { .idstr = idstr, .section_id = id },
		};

		if (!p->ram_ended)
			return fail(p, -EOPNOTSUPP,
				    "FULL section \"%s\" (id %u) before the end of RAM (setup-phase device state, e.g. an early_setup vmstate, is not supported)",
				    idstr, id);
		p->in_device = true;
		if (event(p, &ev) || emit(p, v, 6 + n + 8))
			return p->err;
		dev_scan(p, v, 6 + n + 8);
		set_state(p, ST_DEVICE, 0);
		return 0;
	}

	if (strcmp(idstr, "ram"))
		return fail(p, -EOPNOTSUPP,
			    "unsupported iterable section \"%s\" (id %u)", idstr, id);
	if (p->ram_started)
		return fail(p, -EBADMSG, "second START of section \"ram\"");
	if (version != QS_RAM_VERSION)
		return fail(p, -EOPNOTSUPP,
			    "unsupported \"ram\" section version %u (expected %u)",
			    version, QS_RAM_VERSION);
	if (instance != 0)
		return fail(p, -EOPNOTSUPP,
			    "unsupported \"ram\" section instance %u", instance);
	p->ram_started = true;
	p->ram_id = id;
	p->sec = QS_SEC_START;
	p->sec_off = p->t.off;
	if (emit(p, v, 6 + n + 8))
		return p->err;
	{
		struct qs_event ev = {
			.type = QS_EV_SECTION_BEGIN,
			.stream_offset = p->sec_off,
			.section = { .type = QS_SEC_START, .section_id = id },
		};

		if (event(p, &ev))
			return p->err;
	}
	set_state(p, ST_RAM, 8);
	return 0;
}

static int step_section_part_end(struct qs_parser *p, const uint8_t *v)
{
	struct qs_event ev = { .type = QS_EV_SECTION_BEGIN };
	uint8_t type = v[0];
	uint32_t id;

	NEED(p, 5);
	id = tsb_load_be32(v + 1);
	if (!p->ram_started || id != p->ram_id)
		return fail(p, -EBADMSG, "section %s for unknown section id %u",
			    type == QS_VM_SECTION_PART ? "PART" : "END", id);
	if (p->ram_ended)
		return fail(p, -EBADMSG, "section %s of \"ram\" after its END",
			    type == QS_VM_SECTION_PART ? "PART" : "END");
	if (type == QS_VM_SECTION_END)
		p->ram_ended = true;
	p->sec = type;
	p->sec_off = p->t.off;
	if (emit(p, v, 5))
		return p->err;
	ev.stream_offset = p->sec_off;
	ev.section.type = type;
	ev.section.section_id = id;
	if (event(p, &ev))
		return p->err;
	set_state(p, ST_RAM, 8);
	return 0;
}

static int step_top(struct qs_parser *p, const uint8_t *v)
{
	switch (v[0]) {
	case QS_VM_EOF: {
		struct qs_event ev = { .type = QS_EV_EOF,
				       .stream_offset = p->t.off };

		if (emit(p, v, 1) || event(p, &ev))
			return p->err;
		set_state(p, ST_AFTER_EOF, 1);
		return 0;
	}
	case QS_VM_SECTION_START:
	case QS_VM_SECTION_FULL:
		return step_section_start_full(p, v);
	case QS_VM_SECTION_PART:
	case QS_VM_SECTION_END:
		return step_section_part_end(p, v);
	case QS_VM_COMMAND:
		return step_command(p, v);
	case QS_VM_SUBSECTION:
	case QS_VM_VMDESCRIPTION:
	case QS_VM_CONFIGURATION:
	case QS_VM_SECTION_FOOTER:
		return fail(p, -EBADMSG,
			    "unexpected element type 0x%02x at top level", v[0]);
	}
	return fail(p, -EOPNOTSUPP, "unknown top-level element type 0x%02x",
		    v[0]);
}

static const struct qs_block *find_block(struct qs_parser *p,
					 const uint8_t *name, uint8_t n)
{
	const struct qs_block *b;
	unsigned i;

	if (p->last_block >= 0) {
		b = &p->blocks[p->last_block];
		if (b->name_len == n && !memcmp(b->name, name, n))
			return b;
	}
	for (i = 0; i < p->n_blocks; i++) {
		b = &p->blocks[i];
		if (b->name_len == n && !memcmp(b->name, name, n))
			return b;
	}
	return NULL;
}

static int ram_setup_done(struct qs_parser *p)
{
	struct qs_event ev = {
		.type = QS_EV_RAM_SETUP,
		.stream_offset = p->setup_off,
		.ram_setup = {
			.blocks = p->blocks,
			.n_blocks = p->n_blocks,
			.total = p->setup_total,
			.page_size = p->page_size,
		},
	};

	p->setup_seen = true;
	set_state(p, ST_RAM, 8);
	return event(p, &ev);
}

static int step_block(struct qs_parser *p, const uint8_t *v)
{
	struct qs_block *b;
	uint64_t used, words[2];
	unsigned k, min, max;
	size_t base;
	uint8_t n;
	bool last;

	NEED(p, 1);
	n = v[0];
	if (n == 0)
		return fail(p, -EBADMSG, "empty RAM block name in the setup list");
	base = 1 + n + 8;
	NEED(p, base);
	used = tsb_load_be64(v + 1 + n);
	if (used > p->setup_left)
		return fail(p, -EBADMSG,
			    "RAM block \"%.*s\" of 0x%llx bytes exceeds the remaining setup total 0x%llx",
			    n, (const char *)v + 1, (unsigned long long)used,
			    (unsigned long long)p->setup_left);
	if (find_block(p, v + 1, n))
		return fail(p, -EBADMSG, "RAM block \"%.*s\" listed twice", n,
			    (const char *)v + 1);
	if (p->n_blocks == QS_MAX_BLOCKS)
		return fail(p, -EMSGSIZE, "more than %u RAM blocks",
			    QS_MAX_BLOCKS);
	last = used == p->setup_left;

	/*
	 * Extra be64 words: page_size (postcopy, only for blocks whose page
	 * size differs from the host's: not predictable, see README) then
	 * mr_addr (x-ignore-shared). An extra word starts with a 0 byte; what
	 * follows an entry is an idstr (non-zero length) or, after the last
	 * one, the EOS (or MULTIFD_FLUSH) record header.
	 */
	min = p->ignore_shared ? 1 : 0;
	max = min + (p->advised && p->advise_summary != p->advise_tps ? 1 : 0);
	for (k = min; k < max; k++) {
		size_t at = base + 8 * k;

		if (last) {
			uint64_t w;

			NEED(p, at + 8);
			w = tsb_load_be64(v + at);
			if (w == QS_RAM_EOS || w == QS_RAM_MULTIFD_FLUSH)
				break;
		} else {
			NEED(p, at + 1);
			if (v[at] != 0)
				break;
		}
	}
	NEED(p, base + 8 * k);
	words[0] = k > 0 ? tsb_load_be64(v + base) : 0;
	words[1] = k > 1 ? tsb_load_be64(v + base + 8) : 0;

	if (p->n_blocks == p->cap_blocks) {
		unsigned cap = p->cap_blocks ? p->cap_blocks * 2 : 16;
		struct qs_block *nb;

		if (cap > QS_MAX_BLOCKS)
			cap = QS_MAX_BLOCKS;
		nb = reallocarray(p->blocks, cap, sizeof(*nb));
		if (!nb)
			return fail(p, -ENOMEM, "out of memory for the block list");
		p->blocks = nb;
		p->cap_blocks = cap;
	}
	b = &p->blocks[p->n_blocks];
	*b = (struct qs_block){ .index = p->n_blocks, .name_len = n,
				.used_length = used };
	copy_idstr(b->name, v + 1, n);
	if (k > min) {
		b->page_size = words[0];
		if (p->ignore_shared) {
			b->mr_addr = words[1];
			b->has_mr_addr = true;
		}
	} else if (p->ignore_shared) {
		b->mr_addr = words[0];
		b->has_mr_addr = true;
	}
	p->n_blocks++;
	p->setup_left -= used;
	if (emit(p, v, base + 8 * k))
		return p->err;
	if (!p->setup_left)
		return ram_setup_done(p);
	set_state(p, ST_BLOCK, 1);
	return 0;
}

/* Refuses RAM flags tsubame does not carry. 0 or -EOPNOTSUPP. */
static int check_ram_flags(struct qs_parser *p, uint32_t flags)
{
	uint32_t bad = flags & (~QS_RAM_KNOWN_FLAGS | QS_RAM_FULL | QS_RAM_HOOK |
				QS_RAM_COMPRESS_PAGE | QS_RAM_MULTIFD_FLUSH);

	if (bad) {
		uint32_t f = bad & -bad;

		return fail(p, -EOPNOTSUPP, "unsupported RAM flag 0x%x (%s)", f,
			    ram_flag_name(f));
	}
	return 0;
}

/* An EOS or MEM_SIZE record: the 8-byte header v, flags and address. */
static int step_ram_control(struct qs_parser *p, const uint8_t *v, uint32_t flags,
			    uint64_t addr)
{
	uint32_t base = flags & ~QS_RAM_CONTINUE;

	if (flags & QS_RAM_CONTINUE)
		return fail(p, -EBADMSG,
			    "CONTINUE flag on a %s record", ram_flag_name(base));
	if (base == QS_RAM_EOS) {
		if (emit(p, v, 8))
			return p->err;
		set_state(p, ST_FOOTER, 1);
		return 0;
	}
	if (p->sec != QS_SEC_START || p->setup_seen || p->n_blocks)
		return fail(p, -EBADMSG,
			    "MEM_SIZE record outside the ram setup");
	p->setup_total = p->setup_left = addr;
	p->setup_off = p->t.off;
	if (emit(p, v, 8))
		return p->err;
	if (!addr)
		return ram_setup_done(p);
	set_state(p, ST_BLOCK, 1);
	return 0;
}

/*
 * The block a page record v belongs to (the previous one with CONTINUE,
 * else the idstr after the header) and the length of the record before
 * its payload. *pre stays 0 while the view must grow (NEED). 0 or error.
 */
static int record_block(struct qs_parser *p, const uint8_t *v, bool cont,
			const struct qs_block **ret_b, size_t *pre)
{
	const struct qs_block *b;
	uint8_t n;

	if (!p->setup_seen)
		return fail(p, -EBADMSG, "page record before the RAM block list");
	if (cont) {
		if (p->last_block < 0)
			return fail(p, -EBADMSG,
				    "CONTINUE record without a previous block");
		*ret_b = &p->blocks[p->last_block];
		*pre = 8;
		return 0;
	}
	NEED(p, 9);
	n = v[8];
	NEED(p, 9 + n);
	b = find_block(p, v + 9, n);
	if (!b)
		return fail(p, -EBADMSG,
			    "page of unknown RAM block \"%.*s\"", n,
			    (const char *)v + 9);
	*ret_b = b;
	*pre = 9 + n;
	return 0;
}

/*
 * The payload of a page record v that starts after pre bytes, into pg's
 * fill, data and len; the record's length into *total, which stays 0
 * while the view must grow (NEED). 0 or error.
 */
static int record_payload(struct qs_parser *p, const uint8_t *v, size_t pre,
			  struct qs_page *pg, size_t *total)
{
	uint16_t xlen;

	switch (pg->kind) {
	case QS_PAGE_ZERO:
		NEED(p, pre + 1);
		pg->fill = v[pre];
		pg->data = v + pre;
		pg->len = 1;
		*total = pre + 1;
		return 0;
	case QS_PAGE_NORMAL:
		NEED(p, pre + p->page_size);
		pg->fill = 0;
		pg->data = v + pre;
		pg->len = p->page_size;
		*total = pre + p->page_size;
		return 0;
	default:
		break;
	}
	NEED(p, pre + 3);
	if (v[pre] != 1)
		return fail(p, -EBADMSG, "unknown XBZRLE encoding 0x%02x",
			    v[pre]);
	xlen = tsb_load_be16(v + pre + 1);
	if (xlen > p->page_size)
		return fail(p, -EBADMSG,
			    "XBZRLE delta of %u bytes exceeds the page size %u",
			    xlen, p->page_size);
	NEED(p, pre + 3 + xlen);
	pg->fill = 0;
	pg->data = v + pre + 3;
	pg->len = xlen;
	*total = pre + 3 + xlen;
	return 0;
}

/* Hands a whole page record (v, total bytes) to the page handler and consumes it. */
static int deliver_page(struct qs_parser *p, const uint8_t *v, struct qs_page *pg,
			size_t total)
{
	int r;

	pg->stream_offset = p->t.off;
	p->last_block = pg->block->index;
	r = qs_tok_flush(&p->t);
	if (r < 0)
		return handler_failed(p, "raw", r);
	if (p->h.page) {
		r = p->h.page(p->opaque, pg);
		if (r < 0)
			return handler_failed(p, "page", r);
	}
	qs_tok_consume(&p->t, v, total);
	p->t.need = 8;
	return 0;
}

static int step_record(struct qs_parser *p, const uint8_t *v)
{
	const struct qs_block *b = NULL;
	struct qs_page pg;
	uint64_t hdr = tsb_load_be64(v), addr;
	uint32_t flags;
	size_t pre = 0, total = 0;
	int r;

	flags = hdr & (p->page_size - 1);
	addr = hdr & ~(uint64_t)(p->page_size - 1);
	r = check_ram_flags(p, flags);
	if (r)
		return r;

	switch (flags & ~QS_RAM_CONTINUE) {
	case QS_RAM_ZERO:
		pg.kind = QS_PAGE_ZERO;
		break;
	case QS_RAM_PAGE:
		pg.kind = QS_PAGE_NORMAL;
		break;
	case QS_RAM_XBZRLE:
		pg.kind = QS_PAGE_XBZRLE;
		break;
	case QS_RAM_EOS:
	case QS_RAM_MEM_SIZE:
		return step_ram_control(p, v, flags, addr);
	default:
		return fail(p, -EBADMSG, "invalid RAM flag combination 0x%x",
			    flags);
	}

	pg.cont = flags & QS_RAM_CONTINUE;
	r = record_block(p, v, pg.cont, &b, &pre);
	if (r || !pre)
		return r;
	if (addr >= b->used_length)
		return fail(p, -EBADMSG,
			    "page offset 0x%llx beyond RAM block \"%s\" (0x%llx bytes)",
			    (unsigned long long)addr, b->name,
			    (unsigned long long)b->used_length);
	r = record_payload(p, v, pre, &pg, &total);
	if (r || !total)
		return r;
	pg.block = b;
	pg.offset = addr;
	return deliver_page(p, v, &pg, total);
}

static int step_footer(struct qs_parser *p, const uint8_t *v)
{
	struct qs_event ev = { .type = QS_EV_SECTION_END };
	uint32_t id;

	if (v[0] != QS_VM_SECTION_FOOTER) {
		if (v[0] <= QS_VM_COMMAND)
			return fail(p, -EOPNOTSUPP,
				    "missing section footer (streams without footers, machine types before 2.4, are not supported)");
		return fail(p, -EBADMSG,
			    "expected section footer 0x7e, got 0x%02x", v[0]);
	}
	NEED(p, 5);
	id = tsb_load_be32(v + 1);
	if (id != p->ram_id)
		return fail(p, -EBADMSG,
			    "section footer for id %u inside section %u", id,
			    p->ram_id);
	if (emit(p, v, 5))
		return p->err;
	ev.stream_offset = p->sec_off;
	ev.section.type = p->sec;
	ev.section.section_id = p->ram_id;
	if (event(p, &ev))
		return p->err;
	set_state(p, ST_TOP, 1);
	return 0;
}

static int step_after_eof(struct qs_parser *p, const uint8_t *v)
{
	uint32_t len;

	if (v[0] != QS_VM_VMDESCRIPTION)
		return fail(p, -EBADMSG, "unexpected byte 0x%02x after EOF",
			    v[0]);
	NEED(p, 5);
	len = tsb_load_be32(v + 1);
	if (len > QS_VMDESC_MAX)
		return fail(p, -EMSGSIZE,
			    "VM description of %u bytes exceeds the limit %u", len,
			    QS_VMDESC_MAX);
	if (emit(p, v, 5))
		return p->err;
	p->remain = len;
	set_state(p, ST_VMDESC, 0);
	return 0;
}

/* Remembers what the completeness check of device state needs. */
static void dev_scan(struct qs_parser *p, const uint8_t *b, size_t n)
{
	uint64_t base = p->t.off - n; /* b was just consumed */
	const uint8_t *q = b;
	size_t i;

	while ((q = memchr(q, '{', n - (q - b)))) {
		uint8_t prev[6];

		i = q - b;
		if (p->dev_bytes + i >= 6) {
			/* The 6 bytes before b[i]: tail of dev_win, then b. */
			size_t from_win = i >= 6 ? 0 : 6 - i;

			memcpy(prev, p->dev_win + 6 - from_win, from_win);
			memcpy(prev + from_win, b + i - (6 - from_win),
			       6 - from_win);
			if (prev[0] == QS_VM_EOF &&
			    prev[1] == QS_VM_VMDESCRIPTION) {
				p->have_vmdesc_end = true;
				p->vmdesc_end = base + i + tsb_load_be32(prev + 2);
			}
		}
		q++;
		if ((size_t)(q - b) >= n)
			break;
	}
	if (n >= 6) {
		memcpy(p->dev_win, b + n - 6, 6);
	} else {
		memmove(p->dev_win, p->dev_win + n, 6 - n);
		memcpy(p->dev_win + 6 - n, b, n);
	}
	p->dev_bytes += n;
}

static int stream_step(struct qs_parser *p)
{
	const uint8_t *b;
	size_t n;
	int r;

	if (p->st == ST_DEVICE) {
		r = qs_tok_stream(&p->t, UINT64_MAX, &b, &n);
		if (r < 0)
			return handler_failed(p, "raw", r);
		dev_scan(p, b, n);
		return 0;
	}

	r = qs_tok_stream(&p->t, p->remain, &b, &n);
	if (r < 0)
		return handler_failed(p, "raw", r);
	p->remain -= n;
	if (p->st == ST_VMDESC) {
		if (!p->remain)
			set_state(p, ST_END, 1);
		return 0;
	}

	/* ST_PACKAGED: keep the first and last 5 bytes of the blob. */
	if (p->pkg_seen < 5) {
		size_t k = 5 - p->pkg_seen < n ? 5 - p->pkg_seen : n;

		memcpy(p->pkg_head + p->pkg_seen, b, k);
	}
	if (n >= 5) {
		memcpy(p->pkg_tail, b + n - 5, 5);
	} else if (n) {
		memmove(p->pkg_tail, p->pkg_tail + n, 5 - n);
		memcpy(p->pkg_tail + 5 - n, b, n);
	}
	p->pkg_seen += n;
	if (!p->remain) {
		static const uint8_t listen[5] = { QS_VM_COMMAND, 0,
			QS_CMD_POSTCOPY_LISTEN, 0, 0 };
		static const uint8_t run[5] = { QS_VM_COMMAND, 0,
			QS_CMD_POSTCOPY_RUN, 0, 0 };
		struct qs_event ev = { .type = QS_EV_COMMAND };

		ev.command.in_package = true;
		if (p->pkg_len >= 5 && !memcmp(p->pkg_head, listen, 5)) {
			ev.stream_offset = p->pkg_off;
			ev.command.cmd = QS_CMD_POSTCOPY_LISTEN;
			if (event(p, &ev))
				return p->err;
		}
		if (p->pkg_len >= 10 && !memcmp(p->pkg_tail, run, 5)) {
			ev.stream_offset = p->pkg_off + p->pkg_len - 5;
			ev.command.cmd = QS_CMD_POSTCOPY_RUN;
			if (event(p, &ev))
				return p->err;
		}
		ev = (struct qs_event){ .type = QS_EV_PACKAGED_END,
					.stream_offset = p->pkg_off };
		ev.command.packaged_len = p->pkg_len;
		if (event(p, &ev))
			return p->err;
		set_state(p, ST_TOP, 1);
	}
	return 0;
}

static int step(struct qs_parser *p, const uint8_t *v)
{
	switch (p->st) {
	case ST_MAGIC:
		return step_magic(p, v);
	case ST_CONFIG_PEEK:
		if (v[0] == QS_VM_CONFIGURATION) {
			p->st = ST_CONFIG;
			return 0;
		}
		return config_done(p);
	case ST_CONFIG:
		return step_config(p, v);
	case ST_CFG_PEEK:
		if (v[0] == QS_VM_SUBSECTION) {
			p->st = ST_CFG_SUB;
			return 0;
		}
		return config_done(p);
	case ST_CFG_SUB:
		return step_cfg_sub(p, v);
	case ST_CFG_PAGE_BITS:
	case ST_CFG_CAPS:
	case ST_CFG_CAP:
	case ST_CFG_UUID:
		return step_cfg_body(p, v);
	case ST_TOP:
		return step_top(p, v);
	case ST_RAM:
		return step_record(p, v);
	case ST_BLOCK:
		return step_block(p, v);
	case ST_FOOTER:
		return step_footer(p, v);
	case ST_AFTER_EOF:
		return step_after_eof(p, v);
	case ST_END:
		return fail(p, -EBADMSG, "data after the end of the stream");
	default:
		return fail(p, -EBADMSG, "internal error: state %d", p->st);
	}
}

static bool is_streaming(enum st st)
{
	return st == ST_PACKAGED || st == ST_DEVICE || st == ST_VMDESC;
}

int qs_parser_feed(struct qs_parser *p, const void *buf, size_t len)
{
	const uint8_t *v;
	int r;

	if (p->err)
		return p->err;
	qs_tok_input(&p->t, buf, len);
	for (;;) {
		if (is_streaming(p->st)) {
			if (stream_step(p))
				break;
			/* Loop once more to finish a blob that just ended. */
			if (!p->t.avail && is_streaming(p->st))
				break;
			continue;
		}
		if (p->t.need > p->t.hold_cap) {
			fail(p, -EMSGSIZE, "internal error: token of %zu bytes",
			     p->t.need);
			break;
		}
		v = qs_tok_view(&p->t);
		if (!v)
			break;
		if (step(p, v))
			break;
	}
	/* Bytes before a malformed element are good: pass them on. */
	if (!p->err || p->err == -EBADMSG || p->err == -EOPNOTSUPP ||
	    p->err == -EMSGSIZE) {
		r = qs_tok_flush(&p->t);
		if (r < 0)
			handler_failed(p, "raw", r);
	}
	p->t.avail = 0;
	return p->err;
}

int qs_parser_finish(struct qs_parser *p)
{
	bool ok = false;

	if (p->err)
		return p->err;
	switch (p->st) {
	case ST_AFTER_EOF:
		ok = p->t.hold_len == 0;
		break;
	case ST_END:
		ok = true;
		break;
	case ST_DEVICE:
		/* A vmdesc that ends exactly here, or "footer id EOF". */
		if (p->have_vmdesc_end && p->vmdesc_end == p->t.off &&
		    p->dev_win[5] == '}')
			ok = true;
		else if (p->dev_bytes >= 6 &&
			 p->dev_win[0] == QS_VM_SECTION_FOOTER &&
			 p->dev_win[1] == 0 && p->dev_win[2] == 0 &&
			 p->dev_win[5] == QS_VM_EOF)
			ok = true;
		if (!ok)
			return fail(p, -ENODATA,
				    "stream ended inside device state (no complete VM description or EOF)");
		break;
	default:
		break;
	}
	if (ok)
		return 0;
	if (p->st == ST_TOP && !p->t.hold_len)
		return fail(p, -ENODATA,
			    "stream ended between elements, before its EOF");
	return fail(p, -ENODATA, "stream truncated in %s (%zu bytes of it received)",
		    st_names[p->st], p->t.hold_len);
}

const char *qs_parser_error(const struct qs_parser *p)
{
	return p->err ? p->errmsg : "";
}

uint64_t qs_parser_offset(const struct qs_parser *p)
{
	return p->t.off;
}

uint32_t qs_parser_page_size(const struct qs_parser *p)
{
	return p->page_size;
}

const struct qs_block *qs_parser_blocks(const struct qs_parser *p,
					unsigned *ret_n)
{
	*ret_n = p->setup_seen ? p->n_blocks : 0;
	return p->setup_seen ? p->blocks : NULL;
}

bool qs_parser_in_device_state(const struct qs_parser *p)
{
	return p->in_device;
}

static struct qs_parser *parser_alloc(const struct qs_handlers *h,
				      void *opaque)
{
	struct qs_parser *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	if (h)
		p->h = *h;
	p->opaque = opaque;
	if (qs_tok_init(&p->t, QS_HOLD_CAP, p->h.raw, opaque)) {
		free(p);
		return NULL;
	}
	p->page_size = QS_DEFAULT_PAGE_SIZE;
	p->last_block = -1;
	return p;
}

struct qs_parser *qs_parser_new(const struct qs_handlers *h, void *opaque)
{
	struct qs_parser *p = parser_alloc(h, opaque);

	if (p)
		set_state(p, ST_MAGIC, 8);
	return p;
}

struct qs_parser *qs_parser_new_resume(const struct qs_parser *prev,
				       const struct qs_handlers *h,
				       void *opaque)
{
	struct qs_parser *p;

	if (!prev->setup_seen || prev->ram_ended) {
		errno = EINVAL;
		return NULL;
	}
	p = parser_alloc(h, opaque);
	if (!p)
		return NULL;
	if (prev->n_blocks) {
		p->blocks = reallocarray(NULL, prev->n_blocks, sizeof(*p->blocks));
		if (!p->blocks) {
			qs_parser_free(p);
			return NULL;
		}
		memcpy(p->blocks, prev->blocks,
		       prev->n_blocks * sizeof(*p->blocks));
	}
	p->n_blocks = p->cap_blocks = prev->n_blocks;
	p->page_size = prev->page_size;
	p->page_from_config = prev->page_from_config;
	p->has_config = prev->has_config;
	p->ignore_shared = prev->ignore_shared;
	p->has_uuid = prev->has_uuid;
	memcpy(p->machine, prev->machine, sizeof(p->machine));
	p->advised = prev->advised;
	p->advise_summary = prev->advise_summary;
	p->advise_tps = prev->advise_tps;
	p->ram_started = true;
	p->setup_seen = true;
	p->setup_total = prev->setup_total;
	p->ram_id = prev->ram_id;
	set_state(p, ST_TOP, 1);
	return p;
}

void qs_parser_free(struct qs_parser *p)
{
	if (!p)
		return;
	qs_tok_fini(&p->t);
	free(p->blocks);
	free(p);
}
