/*
 * tsubame's WAN protocol, version 1: frames and message codecs.
 * The byte layout of every message is in docs/protocol.md.
 *
 * A frame is an 8-byte header (u8 type, u8 flags, be16 reserved = 0,
 * be32 payload length <= WIRE_MAX_PAYLOAD) followed by the payload.
 * Encoders append whole frames (header included) to a struct tsb_buf.
 * Decoders take one payload and fill a struct whose pointers are const
 * views into that payload: they live only as long as the payload buffer.
 * Every decoder checks every length before reading and returns
 *   -EBADMSG     malformed or truncated payload,
 *   -EMSGSIZE    a length or count over one of the caps below,
 *   -EOPNOTSUPP  unknown message type, flag, encoding or protocol version.
 * Out parameters are written only on success.
 */
#ifndef TSB_WIRE_H
#define TSB_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/buf.h"
#include "common/reader.h"

/* Compression contexts, see wire/codec.h. */
struct wire_zstd;

#define WIRE_VERSION 1
#define WIRE_MAGIC "TSBW"

#define WIRE_HDR_LEN 8
/* Largest payload of any frame. */
#define WIRE_MAX_PAYLOAD (8u << 20)
/* Largest decompressed STREAM or RETURN run. */
#define WIRE_MAX_RUN (8u << 20)
/* Pages per PAGES batch and hashes per NEED or HASHDATA. */
#define WIRE_MAX_BATCH_PAGES 1024
/* Literal (DATA) bytes per PAGES batch or HASHDATA, decompressed. */
#define WIRE_MAX_BATCH_BYTES (4u << 20)
#define WIRE_MIN_PAGE_SIZE 512
#define WIRE_MAX_PAGE_SIZE 65536
/*
 * The page size both channels carry today: QEMU's target page on x86 for
 * RAM, the disk channel's block. The format allows others (above).
 */
#define WIRE_PAGE_SIZE 4096
/* Site, migration, VM and tenant ids. */
#define WIRE_MAX_ID 64
/* Content filter summary in HELLO. */
#define WIRE_MAX_FILTER (4u << 20)
/* Pages in one SAMERUN entry. */
#define WIRE_MAX_SAMERUN 1024
/* Image ids and content filters in SUMMARY. */
#define WIRE_MAX_IMAGES 16
#define WIRE_MAX_FILTERS 4
/* Text in DONE, CANCEL and ERROR. */
#define WIRE_MAX_TEXT 1024
/* RAM blocks per BLOCKS message; block indices are < this. */
#define WIRE_MAX_BLOCKS 1024
/* Bytes of a RAW (QEMU payload passthrough) or DELTA page entry. */
#define WIRE_MAX_ENTRY_BYTES (WIRE_MAX_PAGE_SIZE + 16)
#define WIRE_HASH_LEN 32

enum wire_msg_type {
	WIRE_MSG_HELLO = 1,
	WIRE_MSG_BLOCKS = 2,
	WIRE_MSG_STREAM = 3,
	WIRE_MSG_PAGES = 4,
	WIRE_MSG_NEED = 5,
	WIRE_MSG_HASHDATA = 6,
	WIRE_MSG_RETURN = 7,
	WIRE_MSG_SWITCHOVER = 8,
	WIRE_MSG_DONE = 9,
	WIRE_MSG_CANCEL = 10,
	WIRE_MSG_ERROR = 11,
	WIRE_MSG_PROGRESS = 12,
	WIRE_MSG_ACK = 13,
	WIRE_MSG_PING = 14,
	WIRE_MSG_PONG = 15,
	WIRE_MSG_SUMMARY = 16,
	WIRE_MSG_BASE = 17,
	/* Switchover by commit (docs/protocol.md §4); status layout. */
	WIRE_MSG_PREPARED = 18,	/* receiver: loaded, paused, waits for the decision */
	WIRE_MSG_DECISION = 19,	/* sender: WIRE_DECIDE_COMMIT or WIRE_DECIDE_ABORT */
	WIRE_MSG_OUTCOME = 20,	/* receiver: WIRE_OUTCOME_RUNNING or _DISCARDED */
	WIRE_MSG_LANE = 21,	/* sender: this connection is lane index of count;
				 * receiver: LANE 0 echoed, the other lanes may come */
	WIRE_MSG_MAX = WIRE_MSG_LANE,
};

/* Frame flags. */
enum {
	/* The payload's bulk part is one zstd frame (STREAM, PAGES, HASHDATA, RETURN). */
	WIRE_F_ZSTD = 0x01,
};

enum wire_role {
	WIRE_ROLE_SENDER = 1,
	WIRE_ROLE_RECEIVER = 2,
};

/* HELLO capability bits. Unknown bits are ignored: the effective set is the AND. */
enum {
	WIRE_CAP_ZSTD = 1u << 0,     /* WIRE_F_ZSTD may be used */
	WIRE_CAP_REF = 1u << 1,      /* REF/SAME page entries, NEED/HASHDATA */
	WIRE_CAP_DELTA = 1u << 2,    /* DELTA page entries */
	WIRE_CAP_XBZRLE = 1u << 3,   /* RAW entries carrying QEMU XBZRLE records */
	WIRE_CAP_POSTCOPY = 1u << 4, /* postcopy with a relayed return path */
	WIRE_CAP_ACK = 1u << 5,      /* ACK credit flow control */
	WIRE_CAP_STORE = 1u << 6,    /* the receiver sends SUMMARY after HELLO */
	WIRE_CAP_DISK = 1u << 7,     /* main connection: a disk channel follows;
				      * else: this is the disk channel (docs/disk.md) */
	WIRE_CAP_COMMIT = 1u << 8,   /* switchover by commit: PREPARED/DECISION/OUTCOME */
	WIRE_CAP_RESOLVE = 1u << 9,  /* sender: this connection only carries the
				      * DECISION of the migration named in HELLO */
	WIRE_CAP_LANES = 1u << 10,   /* receiver: takes the stream over several
				      * connections; sender: LANE follows HELLO */
	WIRE_CAP_LIBVIRT = 1u << 11, /* libvirt drives both QEMUs: the stream only
				      * is ours, the switchover is libvirt's */
	WIRE_CAP_RESUME = 1u << 12,  /* sender: this connection resumes the broken
				      * postcopy of the migration named in HELLO */
	WIRE_CAP_EARLY = 1u << 13,   /* DECISION COMMIT may come right behind the
				      * stream, before PREPARED: the receiver runs
				      * the guest if it loads it (docs/protocol.md) */
	WIRE_CAP_LIVE = 1u << 14,    /* LIVE page entries: the receiver shares its
				      * store with the receivers of the sender's
				      * group (docs/group.md, "Live sharing") */
	WIRE_CAP_STANDBY = 1u << 15, /* a sync round to a standby's store, which
				      * runs no VM: never switched over; DONE
				      * ends it (docs/standby.md) */
};

/* Connections (lanes) one migration's stream may be spread over. */
#define WIRE_MAX_LANES 16

/* Codes of DECISION and OUTCOME. */
enum {
	WIRE_DECIDE_COMMIT = 1,
	WIRE_DECIDE_ABORT = 2,
	WIRE_OUTCOME_RUNNING = 1,	/* the destination runs the guest */
	WIRE_OUTCOME_DISCARDED = 2,	/* the destination never ran it and never will */
	WIRE_OUTCOME_UNKNOWN = 3,	/* resolve: this receiver knows no such migration */
};

/* Page entry encodings in PAGES. */
enum wire_page_enc {
	WIRE_ENC_ZERO = 0,  /* every byte equals fill */
	WIRE_ENC_DATA = 1,  /* next page of the batch's literal area */
	WIRE_ENC_REF = 2,   /* content with this SHA-256, from the receiver's store */
	WIRE_ENC_SAME = 3,  /* as REF, hint: the receiver's previous image of this VM, same address */
	WIRE_ENC_DELTA = 4, /* base (by hash) XOR zstd-decompressed delta; result hash given */
	WIRE_ENC_RAW = 5,   /* QEMU record payload passed through verbatim (e.g. XBZRLE) */
	/*
	 * count consecutive pages from offset, each as in the BASE image;
	 * hash = SHA-256 of their hashes in the image, concatenated (STORE)
	 */
	WIRE_ENC_SAMERUN = 6,
	/*
	 * as REF; the content is on its way to the receiver's store on
	 * another migration of the sender's group: worth waiting for a
	 * while before asking for it with NEED (WIRE_CAP_LIVE)
	 */
	WIRE_ENC_LIVE = 7,
	WIRE_ENC_MAX = WIRE_ENC_LIVE,
};

/* Codes in ERROR and DONE. Peers may send codes unknown to us. */
enum wire_code {
	WIRE_CODE_OK = 0,
	WIRE_CODE_PROTOCOL = 1,    /* malformed or unexpected message */
	WIRE_CODE_VERSION = 2,     /* protocol version not supported */
	WIRE_CODE_REFUSED = 3,     /* peer identity, tenant or migration refused */
	WIRE_CODE_UNSUPPORTED = 4, /* stream construct or capability not supported */
	WIRE_CODE_NOT_FOUND = 5,   /* NEEDed hash unknown to the sender */
	WIRE_CODE_QEMU = 6,        /* the local QEMU failed */
	WIRE_CODE_INTERNAL = 7,    /* local failure (memory, disk, ...) */
	WIRE_CODE_CANCELLED = 8,
};

/* ---- Frame header ---- */

struct wire_frame {
	uint8_t type;
	uint8_t flags;
	uint32_t len;
	const uint8_t *payload; /* view; len bytes */
};

/*
 * Checks an 8-byte header: known type, flags allowed for the type,
 * reserved 0, length <= WIRE_MAX_PAYLOAD. Fills ret (payload NULL).
 */
int wire_header_decode(const uint8_t hdr[WIRE_HDR_LEN], struct wire_frame *ret);

/* Name of a message type for logs ("PAGES"), "?" if unknown. */
const char *wire_msg_name(uint8_t type);
/* True when a peer in role 'from' may send this message type. */
bool wire_msg_role_ok(uint8_t type, enum wire_role from);

/*
 * Resumable frame decoder over a byte stream fed in arbitrary chunks.
 * It validates headers and collects payloads in its own buffer (at most
 * WIRE_MAX_PAYLOAD). Payloads are not decoded: use wire_msg_decode().
 */
struct wire_decoder {
	uint8_t hdr[WIRE_HDR_LEN];
	size_t hdr_got;
	struct wire_frame cur;
	struct tsb_buf payload;
	size_t got;
	int err;  /* sticky */
};

void wire_decoder_init(struct wire_decoder *d);
void wire_decoder_fini(struct wire_decoder *d);
/*
 * Consumes bytes from data[0..len) up to the end of the next frame and
 * sets *ret_used to the number consumed. Returns 1 and fills ret_frame
 * when a frame is complete (its payload view points into data or into
 * the decoder and lives until the next feed), 0 when all len bytes were
 * consumed without completing a frame, or a negative errno from
 * wire_header_decode() or -ENOMEM (sticky: the stream is unusable).
 */
int wire_decoder_feed(struct wire_decoder *d, const uint8_t *data, size_t len,
		      size_t *ret_used, struct wire_frame *ret_frame);
/* True when no partial frame is buffered (a clean place for EOF). */
bool wire_decoder_idle(const struct wire_decoder *d);

/* ---- Messages ---- */

/* Strings are views, not NUL-terminated. */
struct wire_str {
	const char *p;
	size_t len;
};

struct wire_hello {
	uint16_t version;
	uint8_t role;           /* enum wire_role */
	uint64_t caps;          /* WIRE_CAP_* offered */
	struct wire_str site;   /* 1..WIRE_MAX_ID printable, no spaces */
	struct wire_str migration; /* 0..WIRE_MAX_ID */
	struct wire_str vm;     /* 0..WIRE_MAX_ID */
	struct wire_str tenant; /* 0..WIRE_MAX_ID */
	uint64_t store_gen;     /* the sender's store generation; 0 from a receiver */
	uint16_t filter_kind;   /* 0 = none; else opaque to the wire layer */
	const uint8_t *filter;  /* filter_len bytes; <= WIRE_MAX_FILTER */
	uint32_t filter_len;
};

struct wire_block {
	uint16_t index;         /* < WIRE_MAX_BLOCKS */
	struct wire_str name;   /* QEMU RAMBlock idstr, 1..255 bytes */
	uint64_t used_length;
};

/* BLOCKS: view; iterate with wire_blocks_get(). */
struct wire_blocks {
	uint16_t count;
	const uint8_t *entries;
	size_t entries_len;
};

/* STREAM and RETURN: one run of verbatim bytes, maybe zstd-compressed. */
struct wire_run {
	bool zstd;
	const uint8_t *data;   /* as carried */
	size_t len;
	size_t raw_len;        /* decompressed length (== len if !zstd) */
};

struct wire_page_entry {
	uint16_t block;
	uint16_t qflags;        /* QEMU record flags of the original record */
	uint64_t offset;        /* byte offset inside the block, page aligned */
	uint8_t enc;            /* enum wire_page_enc */
	uint8_t fill;           /* ZERO */
	const uint8_t *hash;    /* REF, SAME, DELTA (hash of the result) */
	const uint8_t *base;    /* DELTA: hash of the base page */
	const uint8_t *bytes;   /* RAW payload, DELTA zstd frame */
	uint32_t bytes_len;
	uint32_t data_index;    /* DATA: page index in the literal area */
	uint16_t count;         /* pages the entry stands for (SAMERUN: 2..WIRE_MAX_SAMERUN) */
};

/* PAGES: view; iterate with wire_pages_iter_*. */
struct wire_pages {
	uint32_t page_size;
	uint16_t count;
	uint16_t n_data;        /* DATA entries == pages in the literal area */
	const uint8_t *entries;
	size_t entries_len;
	bool zstd;              /* literal area is one zstd frame */
	const uint8_t *literal; /* as carried */
	size_t literal_len;
};

struct wire_page_iter {
	struct tsb_reader r;
	uint32_t page_size;
	uint16_t left;
	uint32_t data_index;
};

/* NEED: hashes the receiver could not resolve. */
struct wire_need {
	uint16_t count;
	const uint8_t *hashes;  /* count * 32 bytes */
};

/* HASHDATA: contents for hashes (answers NEED). */
struct wire_hashdata {
	uint32_t obj_size;      /* bytes per object (a page size) */
	uint16_t count;
	const uint8_t *hashes;  /* count * 32 bytes */
	bool zstd;
	const uint8_t *literal; /* count * obj_size bytes once unpacked */
	size_t literal_len;
};

/* DONE, CANCEL, ERROR. */
struct wire_status {
	uint32_t code;          /* enum wire_code; 0 for CANCEL */
	struct wire_str text;   /* printable, <= WIRE_MAX_TEXT */
};

struct wire_progress {
	uint64_t stream_bytes;  /* QEMU stream bytes handled so far */
	uint64_t pages;         /* RAM pages handled so far */
	uint64_t wan_bytes;     /* bytes sent over the WAN so far */
	uint64_t remaining;     /* QEMU's estimate of bytes still to send, or 0 */
};

/* Where content a SUMMARY filter describes lives at the receiver. */
enum wire_source {
	WIRE_SRC_STORE = 1,	/* the receiver's store (this tenant) */
	WIRE_SRC_DISK = 2,	/* blocks of local disk images */
};

/* SUMMARY: what the receiver can rebuild locally. */
struct wire_summary {
	uint64_t store_gen;
	uint8_t n_images;	/* images of this VM the receiver holds */
	struct wire_str images[WIRE_MAX_IMAGES];
	uint8_t n_filters;
	struct {
		uint8_t source;	/* enum wire_source; others are ignored */
		const uint8_t *data; /* opaque to the wire layer */
		uint32_t len;	/* 1..WIRE_MAX_FILTER */
	} filters[WIRE_MAX_FILTERS];
};

/* LANE: index 0 on the main connection, 1..count-1 on the others. */
struct wire_lane {
	uint16_t index;
	uint16_t count;		/* 2..WIRE_MAX_LANES */
};

struct wire_msg {
	uint8_t type;
	uint8_t flags;
	union {
		struct wire_hello hello;
		struct wire_blocks blocks;
		struct wire_run run;        /* STREAM, RETURN */
		struct wire_pages pages;
		struct wire_need need;
		struct wire_hashdata hashdata;
		struct wire_status status;  /* DONE, CANCEL, ERROR, PREPARED, DECISION, OUTCOME */
		struct wire_progress progress;
		uint64_t ack;               /* ACK: bytes consumed */
		uint64_t ping;              /* PING, PONG: token */
		struct wire_summary summary;
		struct wire_str base;       /* BASE: id of the receiver's image */
		struct wire_lane lane;
	} u;
};

/*
 * Validates and decodes one payload of the given type and flags (the
 * header must already have passed wire_header_decode(), but this function
 * checks type and flags again). Bounded: reads only payload[0..len),
 * allocates nothing. ret holds views into payload.
 */
int wire_msg_decode(uint8_t type, uint8_t flags, const uint8_t *payload,
		    size_t len, struct wire_msg *ret);
/* Same, for a frame from wire_decoder_feed() or wire_conn_read_frame(). */
int wire_frame_decode(const struct wire_frame *f, struct wire_msg *ret);

/* Reads the version of a HELLO payload (to explain a refusal). */
int wire_hello_peek_version(const uint8_t *payload, size_t len, uint16_t *ret);

/*
 * Iterators over the entries of a BLOCKS or PAGES message that
 * wire_msg_decode() accepted (it validated every entry).
 */
struct wire_blocks_iter {
	struct tsb_reader r;
	uint16_t left;
};
void wire_blocks_iter_init(const struct wire_blocks *b, struct wire_blocks_iter *it);
/* Returns true and fills ret for the next entry, false at the end. */
bool wire_blocks_next(struct wire_blocks_iter *it, struct wire_block *ret);

void wire_pages_iter_init(const struct wire_pages *p, struct wire_page_iter *it);
/* Returns true and fills ret for the next entry, in order; false at the end. */
bool wire_pages_next(struct wire_page_iter *it, struct wire_page_entry *ret);

/* ---- Encoders: each appends one whole frame to out. 0, -EMSGSIZE, -EINVAL or -ENOMEM. ---- */

/* All string fields must be NUL-terminated C strings (NULL = empty). */
struct wire_hello_args {
	enum wire_role role;
	uint64_t caps;
	const char *site;
	const char *migration;
	const char *vm;
	const char *tenant;
	uint64_t store_gen;
	uint16_t filter_kind;
	const uint8_t *filter;
	uint32_t filter_len;
};

int wire_encode_hello(struct tsb_buf *out, const struct wire_hello_args *a);
/* blocks[i].name must be set as a view (p, len). */
int wire_encode_blocks(struct tsb_buf *out, const struct wire_block *blocks,
		       size_t count);
/*
 * STREAM (or RETURN with type = WIRE_MSG_RETURN) carrying len bytes
 * (1..WIRE_MAX_RUN). When z is not NULL the run is zstd-compressed, and
 * sent raw anyway if that does not make it smaller.
 */
int wire_encode_run(struct tsb_buf *out, uint8_t type, const void *data,
		    size_t len, struct wire_zstd *z);
/* BASE: the receiver's image (id) that SAME and SAMERUN entries refer to. */
int wire_encode_base(struct tsb_buf *out, const char *image_id);
/* LANE index of count (index < count, 2 <= count <= WIRE_MAX_LANES). */
int wire_encode_lane(struct tsb_buf *out, unsigned index, unsigned count);
/* SUMMARY from s (views must stay valid for the call). */
int wire_encode_summary(struct tsb_buf *out, const struct wire_summary *s);
int wire_encode_need(struct tsb_buf *out, const uint8_t (*hashes)[WIRE_HASH_LEN],
		     size_t count);
/*
 * HASHDATA for count objects of obj_size bytes each: hashes[i] and the
 * object at data + i * obj_size. z as in wire_encode_run().
 */
int wire_encode_hashdata(struct tsb_buf *out, uint32_t obj_size,
			 const uint8_t (*hashes)[WIRE_HASH_LEN],
			 const uint8_t *data, size_t count, struct wire_zstd *z);
/* DONE, CANCEL or ERROR with its code; text may be NULL. */
int wire_encode_status(struct tsb_buf *out, uint8_t type, uint32_t code,
		       const char *text);
int wire_encode_progress(struct tsb_buf *out, const struct wire_progress *p);
/* SWITCHOVER (empty payload). */
int wire_encode_empty(struct tsb_buf *out, uint8_t type);
/* ACK, PING or PONG: one be64. */
int wire_encode_u64(struct tsb_buf *out, uint8_t type, uint64_t v);

/*
 * Builder of one PAGES batch. Add entries in stream order; an add that
 * would exceed a cap (WIRE_MAX_BATCH_PAGES entries, WIRE_MAX_BATCH_BYTES
 * of literal pages, WIRE_MAX_PAYLOAD) returns -ENOBUFS and adds nothing:
 * encode, reset and add again. Other errors: -EINVAL (bad argument),
 * -ENOMEM.
 */
struct wire_pages_builder {
	uint32_t page_size;
	uint16_t count;
	uint16_t n_data;
	struct tsb_buf entries;
	struct tsb_buf literal;
};

/* page_size: power of two in [WIRE_MIN_PAGE_SIZE, WIRE_MAX_PAGE_SIZE]. */
int wire_pages_builder_init(struct wire_pages_builder *pb, uint32_t page_size);
void wire_pages_builder_fini(struct wire_pages_builder *pb);
void wire_pages_builder_reset(struct wire_pages_builder *pb);
int wire_pages_add_zero(struct wire_pages_builder *pb, uint16_t block,
			uint16_t qflags, uint64_t offset, uint8_t fill);
/* Copies page_size bytes from page. */
int wire_pages_add_data(struct wire_pages_builder *pb, uint16_t block,
			uint16_t qflags, uint64_t offset, const void *page);
/* enc is WIRE_ENC_REF, WIRE_ENC_SAME or WIRE_ENC_LIVE. */
int wire_pages_add_ref(struct wire_pages_builder *pb, uint16_t block,
		       uint16_t qflags, uint64_t offset, uint8_t enc,
		       const uint8_t hash[WIRE_HASH_LEN]);
/* count (2..WIRE_MAX_SAMERUN) pages from offset; digest over their hashes. */
int wire_pages_add_samerun(struct wire_pages_builder *pb, uint16_t block,
			   uint16_t qflags, uint64_t offset, uint16_t count,
			   const uint8_t digest[WIRE_HASH_LEN]);
/* delta: a frame from wire_delta_encode(). */
int wire_pages_add_delta(struct wire_pages_builder *pb, uint16_t block,
			 uint16_t qflags, uint64_t offset,
			 const uint8_t base[WIRE_HASH_LEN],
			 const uint8_t hash[WIRE_HASH_LEN],
			 const void *delta, size_t len);
/* len 1..WIRE_MAX_ENTRY_BYTES bytes of QEMU record payload. */
int wire_pages_add_raw(struct wire_pages_builder *pb, uint16_t block,
		       uint16_t qflags, uint64_t offset, const void *raw,
		       size_t len);
/* Payload bytes of the batch if encoded raw now. */
size_t wire_pages_builder_size(const struct wire_pages_builder *pb);
/*
 * Appends the PAGES frame (count must be > 0, else -EINVAL). The literal
 * area is zstd-compressed when z is not NULL and that makes it smaller.
 * The builder keeps its content: reset it for the next batch.
 */
int wire_pages_encode(struct wire_pages_builder *pb, struct tsb_buf *out,
		      struct wire_zstd *z);

/*
 * Unpacks the literal area of a decoded PAGES (n_data * page_size bytes)
 * or HASHDATA (count * obj_size bytes). When it travelled raw, *ret_data
 * points into the payload; otherwise it is decompressed into scratch
 * (reset first) with z. -EBADMSG when the zstd frame is bad or its size
 * is not exactly the expected one.
 */
int wire_pages_unpack(const struct wire_pages *p, struct wire_zstd *z,
		      struct tsb_buf *scratch, const uint8_t **ret_data);
int wire_hashdata_unpack(const struct wire_hashdata *h, struct wire_zstd *z,
			 struct tsb_buf *scratch, const uint8_t **ret_data);
/* Same for STREAM/RETURN runs (raw_len bytes). */
int wire_run_unpack(const struct wire_run *run, struct wire_zstd *z,
		    struct tsb_buf *scratch, const uint8_t **ret_data);

#endif
