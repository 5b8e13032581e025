/*
 * qstream: incremental, bounded parser and writer for QEMU's migration
 * stream (QEMU 7.2 layout, unchanged through 10.0 for what we accept), and
 * a parser for its return path. Format facts and limits: README.md here
 * and docs qemu-migration.md.
 *
 * The parser splits a stream into
 *   - raw bytes: everything that must reach the destination unchanged
 *     (header, configuration, commands incl. PACKAGED blobs, section
 *     headers, the RAM setup list, EOS records, footers, device state, EOF,
 *     vmdesc), delivered in order and possibly in several pieces;
 *   - page records of the "ram" section (ZERO / PAGE / XBZRLE);
 *   - events (configuration, commands, section boundaries, device state),
 *     which carry no bytes of their own: every byte is in raw or a page.
 * Feeding raw bytes and pages, in the order received, to a qs_writer
 * reproduces the stream byte for byte.
 */
#ifndef TSB_QSTREAM_H
#define TSB_QSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits: anything larger fails with -EMSGSIZE. */
#define QS_MAX_BLOCKS 1024		/* RAM blocks in the setup list */
#define QS_IDSTR_MAX 255		/* u8-length strings */
#define QS_MACHINE_NAME_MAX 256		/* configuration machine type */
#define QS_MAX_CAPS 64			/* configuration capability list */
#define QS_PACKAGED_MAX (256u << 20)	/* PACKAGED blob (QEMU: 4 GiB) */
#define QS_VMDESC_MAX (64u << 20)	/* VMDESCRIPTION after a top-level EOF */
#define QS_PAGE_SIZE_MIN 1024u		/* target page size range accepted */
#define QS_PAGE_SIZE_MAX 65536u
#define QS_RP_MSG_MAX 512		/* return-path message data (QEMU's) */
#define QS_RP_BITMAP_MAX (256u << 20)	/* RECV_BITMAP bitmap bytes */

/* Top-level element types (savevm.c). */
#define QS_VM_EOF 0x00
#define QS_VM_SECTION_START 0x01
#define QS_VM_SECTION_PART 0x02
#define QS_VM_SECTION_END 0x03
#define QS_VM_SECTION_FULL 0x04
#define QS_VM_SUBSECTION 0x05
#define QS_VM_VMDESCRIPTION 0x06
#define QS_VM_CONFIGURATION 0x07
#define QS_VM_COMMAND 0x08
#define QS_VM_SECTION_FOOTER 0x7e

/* RAM record flags (ram.c), in the low bits of the be64 record header. */
#define QS_RAM_FULL 0x001
#define QS_RAM_ZERO 0x002
#define QS_RAM_MEM_SIZE 0x004
#define QS_RAM_PAGE 0x008
#define QS_RAM_EOS 0x010
#define QS_RAM_CONTINUE 0x020
#define QS_RAM_XBZRLE 0x040
#define QS_RAM_HOOK 0x080
#define QS_RAM_COMPRESS_PAGE 0x100
#define QS_RAM_MULTIFD_FLUSH 0x200

/* COMMAND sub-commands (savevm.c, enum qemu_vm_cmd). */
enum qs_cmd {
	QS_CMD_OPEN_RETURN_PATH = 1,
	QS_CMD_PING = 2,
	QS_CMD_POSTCOPY_ADVISE = 3,
	QS_CMD_POSTCOPY_LISTEN = 4,
	QS_CMD_POSTCOPY_RUN = 5,
	QS_CMD_POSTCOPY_RAM_DISCARD = 6,
	QS_CMD_PACKAGED = 7,
	QS_CMD_ENABLE_COLO = 8,
	QS_CMD_POSTCOPY_RESUME = 9,
	QS_CMD_RECV_BITMAP = 10,
	QS_CMD_SWITCHOVER_START = 11,
};

/* Return-path message types (migration.c, enum mig_rp_message_type). */
enum qs_rp_type {
	QS_RP_SHUT = 1,
	QS_RP_PONG = 2,
	QS_RP_REQ_PAGES_ID = 3,
	QS_RP_REQ_PAGES = 4,
	QS_RP_RECV_BITMAP = 5,
	QS_RP_RESUME_ACK = 6,
	QS_RP_SWITCHOVER_ACK = 7,
};

/* Name of a command / return-path type ("PING"), or "unknown". */
const char *qs_cmd_name(unsigned cmd);
const char *qs_rp_type_name(unsigned type);

/* One RAMBlock of the setup list (ram START section). */
struct qs_block {
	unsigned index;		/* position in the setup list, from 0 */
	uint8_t name_len;
	char name[QS_IDSTR_MAX + 1]; /* NUL-terminated */
	uint64_t used_length;
	uint64_t page_size;	/* hugepage postcopy field; 0 when absent */
	uint64_t mr_addr;	/* x-ignore-shared GPA; valid if has_mr_addr */
	bool has_mr_addr;
};

enum qs_page_kind {
	QS_PAGE_ZERO,		/* fill byte (always 0 from QEMU) */
	QS_PAGE_NORMAL,		/* page_size bytes */
	QS_PAGE_XBZRLE,		/* XBZRLE delta against the previous copy */
};

/*
 * One RAM record. Pointers are valid only during the callback (they point
 * into the caller's input or the parser's staging buffer).
 */
struct qs_page {
	const struct qs_block *block;	/* only name/name_len used by the writer */
	uint64_t offset;		/* byte offset inside the block */
	enum qs_page_kind kind;
	/*
	 * Parser: the record had the CONTINUE flag (no idstr). Writer: CONTINUE
	 * may be used if the writer's last block is the same; false forces an
	 * idstr (always accepted by the destination).
	 */
	bool cont;
	uint8_t fill;			/* QS_PAGE_ZERO */
	const uint8_t *data;		/* NORMAL: page_size bytes; XBZRLE: len bytes */
	size_t len;			/* 1 for ZERO, page_size, or XBZRLE length */
	uint64_t stream_offset;		/* parser: offset of the record header */
};

enum qs_event_type {
	QS_EV_CONFIG,		/* header and configuration parsed */
	QS_EV_COMMAND,		/* a COMMAND (after its bytes went to raw) */
	QS_EV_RAM_SETUP,	/* RAM block list parsed (inside the START) */
	QS_EV_SECTION_BEGIN,	/* ram START/PART/END header passed to raw */
	QS_EV_SECTION_END,	/* its footer passed to raw */
	QS_EV_PACKAGED_END,	/* last byte of a PACKAGED blob passed to raw */
	QS_EV_DEVICE_STATE,	/* first FULL section: raw to the end from here */
	QS_EV_EOF,		/* top-level EOF (postcopy end of stream) */
};

enum qs_section_type {
	QS_SEC_START = QS_VM_SECTION_START,
	QS_SEC_PART = QS_VM_SECTION_PART,
	QS_SEC_END = QS_VM_SECTION_END,
};

/*
 * Events carry no stream bytes: they are delivered after the raw bytes of
 * the construct (QS_EV_DEVICE_STATE: before the FULL section's first byte).
 * Pointers are valid only during the callback.
 */
struct qs_event {
	enum qs_event_type type;
	uint64_t stream_offset;	/* first byte of the construct */
	union {
		struct {
			const char *machine;	/* "" without configuration */
			uint32_t page_size;	/* so far; see ram_setup */
			bool has_config;
			bool ignore_shared;	/* x-ignore-shared */
			bool has_uuid;
		} config;
		struct {
			uint16_t cmd;		/* enum qs_cmd */
			uint16_t len;
			const uint8_t *data;	/* len bytes */
			/*
			 * Reported from inside a PACKAGED blob (only LISTEN at
			 * its start and RUN at its end, when the blob ends):
			 * the blob itself is not parsed.
			 */
			bool in_package;
			uint32_t packaged_len;	/* QS_CMD_PACKAGED: blob size */
		} command;
		struct {
			const struct qs_block *blocks;
			unsigned n_blocks;
			uint64_t total;		/* sum of used lengths */
			uint32_t page_size;	/* target page size (final:
						 * ADVISE may have set it) */
		} ram_setup;
		struct {
			enum qs_section_type type;
			uint32_t section_id;
		} section;
		struct {
			const char *idstr;	/* of the first FULL section */
			uint32_t section_id;
		} device;
	};
};

/*
 * Callbacks; any may be NULL. Return 0 to go on, or a negative errno that
 * stops the parser (qs_parser_feed() returns it; the parser stays failed).
 */
struct qs_handlers {
	int (*raw)(void *opaque, const uint8_t *p, size_t n);
	int (*page)(void *opaque, const struct qs_page *pg);
	int (*event)(void *opaque, const struct qs_event *ev);
};

struct qs_parser;

/*
 * New parser for a main channel starting at the stream header. The
 * handlers struct is copied. Free with qs_parser_free(). NULL on ENOMEM.
 * Memory is bounded: ~70 KiB plus the block list.
 */
struct qs_parser *qs_parser_new(const struct qs_handlers *h, void *opaque);

/*
 * New parser for a postcopy recovery connection of the same migration: no
 * header, starts at the top-level element loop, with prev's configuration,
 * page size, ram section id and block list, and no "last block" (the
 * source resets its CONTINUE memory). prev must have seen the RAM setup;
 * NULL (errno EINVAL) otherwise or on ENOMEM. prev is not modified.
 */
struct qs_parser *qs_parser_new_resume(const struct qs_parser *prev,
				       const struct qs_handlers *h,
				       void *opaque);

/* Frees p (NULL is fine). */
void qs_parser_free(struct qs_parser *p);

/*
 * Feeds the next len bytes of the stream (any split is fine). Calls the
 * handlers for everything that is complete; an incomplete element is kept
 * (at most ~70 KiB) until more bytes arrive. Returns 0, or a negative errno,
 * sticky: -EBADMSG malformed, -EOPNOTSUPP construct not supported,
 * -EMSGSIZE over a limit, -ENOMEM, or a handler's error. See
 * qs_parser_error() for the reason.
 */
int qs_parser_feed(struct qs_parser *p, const void *buf, size_t len);

/*
 * Declares the end of the input. Returns 0 if the stream ended where the
 * destination would accept it as complete (after a top-level EOF and
 * optional vmdesc; or, in device-state mode, after a vmdesc whose length
 * matches, or right after "footer + EOF" for streams without vmdesc: a
 * heuristic, device state is not parsed). Otherwise -ENODATA (truncated)
 * or the sticky error. No callbacks are made.
 */
int qs_parser_finish(struct qs_parser *p);

/* Human-readable reason of the last error, "" if none. Owned by p. */
const char *qs_parser_error(const struct qs_parser *p);

/*
 * Bytes consumed so far: passed on as raw or pages, staged bytes of an
 * incomplete element excluded. After a parse error this is where the bad
 * element starts (the bytes before it were passed on); after a handler
 * error, raw bytes of the failed feed may be counted but not delivered.
 */
uint64_t qs_parser_offset(const struct qs_parser *p);

/* Target page size in use (4096 unless the stream says otherwise). */
uint32_t qs_parser_page_size(const struct qs_parser *p);

/* Block list from the RAM setup (NULL/0 before it). Owned by p. */
const struct qs_block *qs_parser_blocks(const struct qs_parser *p,
					unsigned *ret_n);

/* True once the first top-level FULL section was seen (raw to the end). */
bool qs_parser_in_device_state(const struct qs_parser *p);

/*
 * Writer: re-creates a stream from raw bytes and pages. Output goes to
 * out (called with every byte exactly once, in order, in pieces of any
 * size; it must take all n bytes or return a negative errno) or, if out is
 * NULL, into a growing buffer read with qs_writer_buffer().
 */
typedef int (*qs_out_fn)(void *opaque, const uint8_t *p, size_t n);

struct qs_writer;

/*
 * page_size: target page size of the stream (qs_parser_page_size() of the
 * source). NULL on ENOMEM or an invalid page size (errno EINVAL).
 */
struct qs_writer *qs_writer_new(uint32_t page_size, qs_out_fn out,
				void *opaque);
/* Frees w (NULL is fine) without flushing. */
void qs_writer_free(struct qs_writer *w);

/* Appends bytes verbatim. 0 or the output's negative errno (sticky). */
int qs_writer_raw(struct qs_writer *w, const void *p, size_t n);

/*
 * Appends one RAM record laid out as QEMU does: be64 (offset | flags),
 * the block idstr unless CONTINUE is used, then the payload. CONTINUE is
 * used iff pg->cont and the writer's last named block is pg->block (by
 * name). -EINVAL for an invalid page (offset not page aligned, wrong
 * length, empty name), else 0 or the output's error (sticky).
 */
int qs_writer_page(struct qs_writer *w, const struct qs_page *pg);

/*
 * Forgets the last block, so the next page names its block. Call where
 * the destination resets its own memory (a new connection).
 */
void qs_writer_forget_block(struct qs_writer *w);

/* Hands buffered bytes to out (no-op in buffer mode). 0 or error. */
int qs_writer_flush(struct qs_writer *w);

/* Buffer mode: the bytes written so far (owned by w). */
const uint8_t *qs_writer_buffer(const struct qs_writer *w, size_t *ret_len);
/* Buffer mode: empties the buffer (the block memory is kept). */
void qs_writer_buffer_reset(struct qs_writer *w);

/* Total bytes written (buffered or handed to out). */
uint64_t qs_writer_offset(const struct qs_writer *w);

/*
 * Return-path parser (destination -> source on the same connection):
 * be16 type, be16 len, len bytes; RECV_BITMAP is followed by be64 size,
 * size bytes of bitmap and be64 0x0123456789abcdef outside its length.
 */
struct qs_rp_msg {
	uint16_t type;			/* enum qs_rp_type */
	uint16_t len;
	const uint8_t *data;		/* len bytes (message data) */
	uint64_t stream_offset;
	uint32_t value;			/* SHUT, PONG, RESUME_ACK */
	uint64_t offset;		/* REQ_PAGES(_ID): offset in block */
	uint32_t length;		/* REQ_PAGES(_ID): bytes requested */
	const char *block;		/* REQ_PAGES(_ID), RECV_BITMAP: block
					 * (REQ_PAGES: of the last _ID) */
	uint64_t bitmap_size;		/* RECV_BITMAP: bitmap bytes (already
					 * passed to raw) */
};

struct qs_rp_handlers {
	/* Every byte, in order (NULL if not needed). */
	int (*raw)(void *opaque, const uint8_t *p, size_t n);
	/* After the message's bytes went to raw. */
	int (*msg)(void *opaque, const struct qs_rp_msg *m);
};

struct qs_rp_parser;

/* NULL on ENOMEM. Free with qs_rp_parser_free(). */
struct qs_rp_parser *qs_rp_parser_new(const struct qs_rp_handlers *h,
				      void *opaque);
void qs_rp_parser_free(struct qs_rp_parser *p);
/* As qs_parser_feed(): 0 or sticky -EBADMSG/-EOPNOTSUPP/-EMSGSIZE/handler. */
int qs_rp_parser_feed(struct qs_rp_parser *p, const void *buf, size_t len);
/* 0 if the input ended between messages, else -ENODATA or the error. */
int qs_rp_parser_finish(struct qs_rp_parser *p);
const char *qs_rp_parser_error(const struct qs_rp_parser *p);
/* True between two messages (nothing held of a message begun), before SHUT. */
bool qs_rp_parser_between(const struct qs_rp_parser *p);

/*
 * The end of a precopy stream (tail.c): the raw bytes from the device
 * state on, fed as they come; qs_tail_feed() is true when they end exactly
 * with QEMU_VM_EOF, QEMU_VM_VMDESCRIPTION, be32 length and that much of
 * the devices' JSON: QEMU wrote all of its stream and now waits for the
 * destination's SHUT. Never true for a machine that suppresses the
 * description, or one longer than QS_TAIL_KEEP.
 */
#define QS_TAIL_KEEP (8u << 20)
struct qs_tail {
	uint8_t *buf;
	size_t len, cap;
	bool failed;
};
void qs_tail_init(struct qs_tail *t);
void qs_tail_fini(struct qs_tail *t);
bool qs_tail_feed(struct qs_tail *t, const void *p, size_t n);

/*
 * Encodes one return-path message (type, len, data) into buf. Returns the
 * size (4 + len) or -EMSGSIZE if it does not fit cap or len > QS_RP_MSG_MAX.
 */
int qs_rp_encode(uint8_t *buf, size_t cap, uint16_t type, const void *data,
		 uint16_t len);

#endif
