/*
 * NBD (Network Block Device), fixed-newstyle protocol: a bounded codec
 * (proto.c), a one-connection server with an asynchronous export
 * interface (server.c) and a pipelining client (client.c).
 *
 * Protocol: the NBD project's doc/proto.md. Only the compact (non
 * extended) headers are spoken: NBD_OPT_EXTENDED_HEADERS is refused, so
 * QEMU 8.2+ falls back to them. docs/nbd.md says what is supported.
 */
#ifndef TSB_NBD_H
#define TSB_NBD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "common/buf.h"

/* Magics. */
#define NBD_MAGIC		0x4e42444d41474943ULL /* "NBDMAGIC" */
#define NBD_IHAVEOPT		0x49484156454f5054ULL /* "IHAVEOPT" */
#define NBD_REP_MAGIC		0x0003e889045565a9ULL
#define NBD_REQUEST_MAGIC	0x25609513U
#define NBD_SIMPLE_REPLY_MAGIC	0x67446698U
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efU

/* Handshake flags (server, be16) and client flags (be32). */
#define NBD_FLAG_FIXED_NEWSTYLE	(1U << 0)
#define NBD_FLAG_NO_ZEROES	(1U << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1U << 0)
#define NBD_FLAG_C_NO_ZEROES	(1U << 1)

/* Options. */
#define NBD_OPT_EXPORT_NAME	1U
#define NBD_OPT_ABORT		2U
#define NBD_OPT_LIST		3U
#define NBD_OPT_STARTTLS	5U
#define NBD_OPT_INFO		6U
#define NBD_OPT_GO		7U
#define NBD_OPT_STRUCTURED_REPLY 8U
#define NBD_OPT_LIST_META_CONTEXT 9U
#define NBD_OPT_SET_META_CONTEXT 10U
#define NBD_OPT_EXTENDED_HEADERS 11U

/* Option reply types; errors have bit 31 set. */
#define NBD_REP_ACK		1U
#define NBD_REP_SERVER		2U
#define NBD_REP_INFO		3U
#define NBD_REP_META_CONTEXT	4U
#define NBD_REP_FLAG_ERROR	(1U << 31)
#define NBD_REP_ERR_UNSUP	(NBD_REP_FLAG_ERROR | 1U)
#define NBD_REP_ERR_POLICY	(NBD_REP_FLAG_ERROR | 2U)
#define NBD_REP_ERR_INVALID	(NBD_REP_FLAG_ERROR | 3U)
#define NBD_REP_ERR_PLATFORM	(NBD_REP_FLAG_ERROR | 4U)
#define NBD_REP_ERR_TLS_REQD	(NBD_REP_FLAG_ERROR | 5U)
#define NBD_REP_ERR_UNKNOWN	(NBD_REP_FLAG_ERROR | 6U)
#define NBD_REP_ERR_SHUTDOWN	(NBD_REP_FLAG_ERROR | 7U)
#define NBD_REP_ERR_BLOCK_SIZE_REQD (NBD_REP_FLAG_ERROR | 8U)
#define NBD_REP_ERR_TOO_BIG	(NBD_REP_FLAG_ERROR | 9U)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT		0U
#define NBD_INFO_NAME		1U
#define NBD_INFO_DESCRIPTION	2U
#define NBD_INFO_BLOCK_SIZE	3U

/* Transmission flags (be16). */
#define NBD_FLAG_HAS_FLAGS	(1U << 0)
#define NBD_FLAG_READ_ONLY	(1U << 1)
#define NBD_FLAG_SEND_FLUSH	(1U << 2)
#define NBD_FLAG_SEND_FUA	(1U << 3)
#define NBD_FLAG_ROTATIONAL	(1U << 4)
#define NBD_FLAG_SEND_TRIM	(1U << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1U << 6)
#define NBD_FLAG_SEND_DF	(1U << 7)
#define NBD_FLAG_CAN_MULTI_CONN	(1U << 8)
#define NBD_FLAG_SEND_RESIZE	(1U << 9)
#define NBD_FLAG_SEND_CACHE	(1U << 10)
#define NBD_FLAG_SEND_FAST_ZERO	(1U << 11)

/* Commands and command flags. */
#define NBD_CMD_READ		0U
#define NBD_CMD_WRITE		1U
#define NBD_CMD_DISC		2U
#define NBD_CMD_FLUSH		3U
#define NBD_CMD_TRIM		4U
#define NBD_CMD_CACHE		5U
#define NBD_CMD_WRITE_ZEROES	6U
#define NBD_CMD_BLOCK_STATUS	7U

#define NBD_CMD_FLAG_FUA	(1U << 0)
#define NBD_CMD_FLAG_NO_HOLE	(1U << 1)
#define NBD_CMD_FLAG_DF		(1U << 2)
#define NBD_CMD_FLAG_REQ_ONE	(1U << 3)
#define NBD_CMD_FLAG_FAST_ZERO	(1U << 4)

/* Structured reply chunk types and flags. */
#define NBD_REPLY_FLAG_DONE	(1U << 0)
#define NBD_REPLY_TYPE_NONE	0U
#define NBD_REPLY_TYPE_OFFSET_DATA 1U
#define NBD_REPLY_TYPE_OFFSET_HOLE 2U
#define NBD_REPLY_TYPE_BLOCK_STATUS 5U
#define NBD_REPLY_TYPE_ERROR	0x8001U
#define NBD_REPLY_TYPE_ERROR_OFFSET 0x8002U

/* base:allocation extent flags. */
#define NBD_STATE_HOLE		(1U << 0)
#define NBD_STATE_ZERO		(1U << 1)

/* Error values on the wire (not the host's errno numbers). */
#define NBD_EPERM		1U
#define NBD_EIO			5U
#define NBD_ENOMEM		12U
#define NBD_EINVAL		22U
#define NBD_ENOSPC		28U
#define NBD_EOVERFLOW		75U
#define NBD_ENOTSUP		95U
#define NBD_ESHUTDOWN		108U

/* Fixed sizes. */
#define NBD_GREETING_LEN	18	/* NBDMAGIC, IHAVEOPT, be16 flags */
#define NBD_OPTION_HDR_LEN	16
#define NBD_OPTION_REPLY_HDR_LEN 20
#define NBD_REQUEST_LEN		28
#define NBD_SIMPLE_REPLY_LEN	16
#define NBD_CHUNK_HDR_LEN	20
#define NBD_EXPORT_NAME_REPLY_LEN 10	/* + 124 zero bytes unless NO_ZEROES */

/* Caps (named so every allocation sized by the peer is bounded). */
#define NBD_MAX_STRING		4096		/* names, queries, messages */
#define NBD_MAX_OPTION_DATA	65536		/* option / option reply data */
#define NBD_MAX_PAYLOAD		(32U << 20)	/* READ/WRITE length, max block */
#define NBD_MAX_CHUNK		(NBD_MAX_PAYLOAD + 16U) /* chunk payload */
#define NBD_MAX_INFO_REQUESTS	64
#define NBD_MAX_META_QUERIES	64

#define NBD_META_BASE_ALLOCATION "base:allocation"

/* ---- Codec (proto.c) ------------------------------------------------ */

/*
 * Decoders read one message from the front of a buffer holding what has
 * arrived so far. They return the message's length in bytes (> 0) when
 * it is complete, 0 when more bytes are needed (nothing is written), or
 * -EBADMSG (wrong magic, malformed field) / -EMSGSIZE (a length over its
 * cap). Views (data, name...) point into the caller's buffer and live as
 * long as it does.
 */

struct nbd_option {
	uint32_t option;
	uint32_t len;
	const uint8_t *data;
};

struct nbd_option_reply {
	uint32_t option;
	uint32_t type;
	uint32_t len;
	const uint8_t *data;
};

struct nbd_request {
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint32_t length;
};

/* One simple reply (header only) or one structured chunk (with payload). */
struct nbd_reply {
	bool structured;
	uint32_t error;		/* simple: wire error value */
	uint16_t flags;		/* structured */
	uint16_t type;		/* structured */
	uint64_t cookie;
	uint32_t len;		/* structured payload length */
	const uint8_t *payload;	/* structured payload */
};

/* A structured chunk payload, checked against its type. */
struct nbd_chunk {
	uint64_t offset;	/* OFFSET_DATA, OFFSET_HOLE, ERROR_OFFSET */
	const uint8_t *data;	/* OFFSET_DATA */
	uint32_t len;		/* data bytes, or hole length */
	uint32_t error;		/* ERROR*: wire error value (never 0) */
	const char *msg;	/* ERROR*: not NUL-terminated */
	uint16_t msg_len;
	uint32_t context_id;	/* BLOCK_STATUS */
	const uint8_t *extents;	/* BLOCK_STATUS: n × (be32 len, be32 flags) */
	uint32_t n_extents;
};

/* The name and the info requests of NBD_OPT_INFO / NBD_OPT_GO. */
struct nbd_go_request {
	const char *name;	/* not NUL-terminated */
	uint32_t name_len;
	uint16_t n_info;
	const uint8_t *info;	/* n_info × be16 */
};

/* NBD_OPT_{LIST,SET}_META_CONTEXT: the export and an iterator of queries. */
struct nbd_meta_request {
	const char *name;
	uint32_t name_len;
	uint32_t n_queries;
	const uint8_t *queries;	/* n × (be32 len, bytes); checked */
	size_t queries_len;
};

/* What NBD_REP_INFO / NBD_OPT_EXPORT_NAME told about the export. */
struct nbd_export_info {
	uint64_t size;
	uint16_t tflags;
	bool has_export;	/* NBD_INFO_EXPORT seen */
	bool has_block_size;
	uint32_t min_block, pref_block, max_block;
};

ssize_t nbd_decode_greeting(const void *p, size_t len, uint16_t *ret_flags);
ssize_t nbd_decode_client_flags(const void *p, size_t len, uint32_t *ret_flags);
/* A client option; data longer than NBD_MAX_OPTION_DATA is -EMSGSIZE. */
ssize_t nbd_decode_option(const void *p, size_t len, struct nbd_option *ret);
ssize_t nbd_decode_option_reply(const void *p, size_t len,
				struct nbd_option_reply *ret);
/* The answer to NBD_OPT_EXPORT_NAME (134 bytes, 10 with no_zeroes). */
ssize_t nbd_decode_export_name_reply(const void *p, size_t len,
				     bool no_zeroes,
				     struct nbd_export_info *ret);
/* A request header (28 bytes); a WRITE's payload follows it, not included. */
ssize_t nbd_decode_request(const void *p, size_t len, struct nbd_request *ret);
/*
 * A reply: a simple reply header (16 bytes; a successful READ's data
 * follows and only the request tells its length) or a whole structured
 * chunk (header + payload of at most NBD_MAX_CHUNK bytes).
 */
ssize_t nbd_decode_reply(const void *p, size_t len, struct nbd_reply *ret);

/* Payload parsers of whole messages: 0, -EBADMSG or -EMSGSIZE. */
int nbd_parse_go(const struct nbd_option *opt, struct nbd_go_request *ret);
int nbd_parse_meta(const struct nbd_option *opt, struct nbd_meta_request *ret);
/* Iterates queries: 1 and a view, 0 at the end (the list was checked). */
int nbd_meta_next(struct nbd_meta_request *m, const char **ret_query,
		  uint32_t *ret_len);
/* Checks a chunk's payload against its type. Unknown types: -EOPNOTSUPP. */
int nbd_parse_chunk(const struct nbd_reply *r, struct nbd_chunk *ret);
/* Folds one NBD_REP_INFO into info; unknown info types are ignored. */
int nbd_parse_info(const struct nbd_option_reply *rep,
		   struct nbd_export_info *info);
/* NBD_REP_SERVER: the export name view. */
int nbd_parse_rep_server(const struct nbd_option_reply *rep,
			 const char **ret_name, uint32_t *ret_len);
/* NBD_REP_META_CONTEXT: the id and the name view. */
int nbd_parse_rep_meta(const struct nbd_option_reply *rep, uint32_t *ret_id,
		       const char **ret_name, uint32_t *ret_len);

/* What the server agreed to in negotiation, for request validation. */
struct nbd_conn_params {
	uint64_t size;
	uint16_t tflags;	/* transmission flags sent to the client */
	bool structured;
	bool meta_base_allocation; /* a context was selected */
	uint32_t max_payload;	/* <= NBD_MAX_PAYLOAD */
};

/*
 * Checks a request against the negotiated parameters (command known and
 * advertised, flags allowed for the command, range inside the export,
 * length under the cap). Returns 0 or the NBD error value to reply with
 * (NBD_EINVAL, NBD_ENOSPC, NBD_EPERM, NBD_EOVERFLOW), and sets *ret_why
 * to a static explanation.
 */
uint32_t nbd_validate_request(const struct nbd_request *req,
			      const struct nbd_conn_params *p,
			      const char **ret_why);

/* Host errno (positive or negative) <-> wire error value. */
uint32_t nbd_errno_to_wire(int err);
/* Returns a negative errno; unknown values map to -EINVAL as the spec says. */
int nbd_wire_to_errno(uint32_t err);

const char *nbd_cmd_name(uint16_t type);
const char *nbd_opt_name(uint32_t opt);
const char *nbd_rep_name(uint32_t type);

/* Encoders append to b (sticky -ENOMEM in b->err). */
void nbd_put_greeting(struct tsb_buf *b, uint16_t flags);
void nbd_put_client_flags(struct tsb_buf *b, uint32_t flags);
void nbd_put_option(struct tsb_buf *b, uint32_t opt, const void *data,
		    uint32_t len);
void nbd_put_option_reply(struct tsb_buf *b, uint32_t opt, uint32_t type,
			  const void *data, uint32_t len);
/* NBD_OPT_GO/INFO data: name and info requests. */
void nbd_put_go_data(struct tsb_buf *b, const char *name,
		     const uint16_t *info, uint16_t n_info);
/* NBD_OPT_SET/LIST_META_CONTEXT data. */
void nbd_put_meta_data(struct tsb_buf *b, const char *name,
		       const char *const *queries, uint32_t n);
void nbd_put_info_export(struct tsb_buf *b, uint32_t opt, uint64_t size,
			 uint16_t tflags);
void nbd_put_info_block_size(struct tsb_buf *b, uint32_t opt, uint32_t min,
			     uint32_t pref, uint32_t max);
void nbd_put_export_name_reply(struct tsb_buf *b, uint64_t size,
			       uint16_t tflags, bool no_zeroes);
void nbd_put_request(struct tsb_buf *b, const struct nbd_request *req);
void nbd_put_simple_reply(struct tsb_buf *b, uint32_t error, uint64_t cookie);
void nbd_put_chunk_header(struct tsb_buf *b, uint16_t flags, uint16_t type,
			  uint64_t cookie, uint32_t len);
/* OFFSET_DATA header (+ offset); the caller appends len data bytes. */
void nbd_put_chunk_data_header(struct tsb_buf *b, uint16_t flags,
			       uint64_t cookie, uint64_t offset, uint32_t len);
void nbd_put_chunk_hole(struct tsb_buf *b, uint16_t flags, uint64_t cookie,
			uint64_t offset, uint32_t len);
/* ERROR chunk; msg may be NULL, is cut at NBD_MAX_STRING. */
void nbd_put_chunk_error(struct tsb_buf *b, uint16_t flags, uint64_t cookie,
			 uint32_t error, const char *msg);
/* BLOCK_STATUS chunk with n (length, flags) extents. */
struct nbd_extent {
	uint32_t length;
	uint32_t flags;
};
void nbd_put_chunk_block_status(struct tsb_buf *b, uint16_t flags,
				uint64_t cookie, uint32_t context_id,
				const struct nbd_extent *ext, uint32_t n);

/* ---- Server (server.c) ---------------------------------------------- */

struct nbd_server;

/*
 * One request handed to the export. The server owns it; the callee may
 * keep it until it completes it. 'data' is the WRITE payload, or for a
 * READ a buffer of 'length' bytes that the callee fills.
 */
struct nbd_io {
	uint64_t cookie;
	uint16_t type;		/* NBD_CMD_* */
	uint16_t flags;		/* NBD_CMD_FLAG_* (FUA, NO_HOLE, FAST_ZERO) */
	uint64_t offset;
	uint32_t length;
	uint8_t *data;
	uint64_t seq;		/* arrival order on this connection */
	void *priv;		/* free for the export's use */
};

/* Returned by an export callback that will call nbd_server_complete(). */
#define NBD_IO_ASYNC 1

/*
 * The export. Each I/O callback returns 0 (done), a negative errno (done,
 * failed: the client gets the matching NBD error) or NBD_IO_ASYNC: the
 * callee keeps io and later calls nbd_server_complete(srv, io, err),
 * from any thread. Callbacks run on the server's thread, one at a time,
 * in the order the client sent the requests. A NULL callback means the
 * command is not offered (flags not advertised); size is required,
 * read and write too.
 *
 * Flush ordering: the server calls flush only after every write, write
 * zeroes and trim that arrived before the flush has completed, and replies
 * to the flush when flush completes. A proxy can thus complete writes as
 * soon as they are queued for forwarding, and complete the flush when the
 * far end confirmed that everything before it is applied and flushed.
 */
struct nbd_export_ops {
	int (*size)(void *user, uint64_t *ret_size);
	int (*read)(void *user, struct nbd_io *io);
	int (*write)(void *user, struct nbd_io *io);
	int (*write_zeroes)(void *user, struct nbd_io *io); /* honour NO_HOLE,
							     * FAST_ZERO (-ENOTSUP) */
	int (*trim)(void *user, struct nbd_io *io);
	int (*flush)(void *user, struct nbd_io *io);
};

struct nbd_server;

struct nbd_server_config {
	const char *export_name;	/* "" = default; copied */
	/*
	 * Several exports on one port (optional): called with each export
	 * name the client names (SET_META_CONTEXT, EXPORT_NAME, INFO, GO)
	 * instead of comparing it with export_name; 0 with *ret_user (the
	 * export callbacks' user from then on) and *ret_size, or -ENOENT.
	 */
	int (*select)(void *opaque, struct nbd_server *srv, const char *name, uint32_t len,
		      void **ret_user, uint64_t *ret_size);
	void *select_opaque;
	const char *description;	/* NULL or text for NBD_INFO_DESCRIPTION */
	bool read_only;
	uint32_t max_payload;		/* 0 = NBD_MAX_PAYLOAD */
	unsigned int max_inflight;	/* 0 = 64 requests */
};

/* Statistics, readable after (or, racily, during) nbd_server_serve(). */
struct nbd_server_stats {
	uint64_t n_cmd[8];		/* per NBD_CMD_* */
	uint64_t bytes_written, bytes_zeroed, bytes_read;
	uint32_t max_write_len, max_zero_len;
	uint32_t options_seen;		/* bit (1 << opt) for opt < 32 */
	bool structured, meta_base_allocation;
	uint16_t client_flags_seen;
};

/*
 * Creates a server for one export (ops and user are borrowed and must
 * outlive it). NULL on ENOMEM. Free with nbd_server_free().
 */
struct nbd_server *nbd_server_new(const struct nbd_server_config *cfg,
				  const struct nbd_export_ops *ops, void *user);
void nbd_server_free(struct nbd_server *srv);
/* Listens on a unix socket path (unlinked first) / TCP host:port. 0 or -errno. */
int nbd_server_listen_unix(struct nbd_server *srv, const char *path);
int nbd_server_listen_tcp(struct nbd_server *srv, const char *host,
			  const char *port);
/* The bound TCP port (after listen_tcp with port "0"), or 0. */
int nbd_server_port(const struct nbd_server *srv);
/*
 * Accepts one connection on the listening socket and serves it until the
 * client disconnects (0), the connection fails (-errno) or
 * nbd_server_stop() is called (-ECANCELED). Blocks the calling thread;
 * every callback runs on it. Waits for all async I/O before returning.
 */
int nbd_server_serve(struct nbd_server *srv);
/* Serves one already connected socket (taken over: closed on return). */
int nbd_server_serve_fd(struct nbd_server *srv, int fd);
/* Completes an io that a callback left pending. Any thread; err 0 or -errno. */
void nbd_server_complete(struct nbd_server *srv, struct nbd_io *io, int err);
/* Makes nbd_server_serve() return -ECANCELED soon. Any thread. */
void nbd_server_stop(struct nbd_server *srv);
/* Copies the counters; the last error text (static or owned by srv) or "". */
void nbd_server_get_stats(struct nbd_server *srv, struct nbd_server_stats *ret);
const char *nbd_server_error(const struct nbd_server *srv);

/* ---- Client (client.c) ---------------------------------------------- */

struct nbd_client;

struct nbd_client_config {
	const char *export_name;	/* "" = default */
	bool structured;		/* ask for structured replies */
	bool base_allocation;		/* ask for base:allocation (needs structured) */
	unsigned int max_inflight;	/* 0 = 16 requests */
};

/* A finished request, returned by nbd_client_wait(). */
struct nbd_completion {
	uint64_t cookie;
	uint16_t type;
	int err;		/* 0 or negative errno (server's error mapped) */
	uint32_t n_extents;	/* BLOCK_STATUS: extents stored */
};

/*
 * Connects to a unix socket (or takes over a connected fd: closed on
 * failure too) and negotiates: NBD_OPT_STRUCTURED_REPLY,
 * NBD_OPT_SET_META_CONTEXT base:allocation, NBD_OPT_GO with block sizes,
 * falling back to NBD_OPT_EXPORT_NAME if GO is unknown. On success
 * *ret is the client (free with nbd_client_close()). 0 or -errno; on
 * failure a one-line reason is written to errbuf (if not NULL).
 */
int nbd_client_connect_unix(const char *path,
			    const struct nbd_client_config *cfg,
			    struct nbd_client **ret, char *errbuf,
			    size_t errlen);
int nbd_client_connect_fd(int fd, const struct nbd_client_config *cfg,
			  struct nbd_client **ret, char *errbuf, size_t errlen);
/* Sends NBD_CMD_DISC when possible, closes and frees. Accepts NULL. */
void nbd_client_close(struct nbd_client *cl);

const struct nbd_export_info *nbd_client_info(const struct nbd_client *cl);
bool nbd_client_structured(const struct nbd_client *cl);
bool nbd_client_has_base_allocation(const struct nbd_client *cl);

/*
 * Pipelined requests. Each submit sends one request (blocking until it
 * is written, reading replies meanwhile) and returns its cookie; the
 * buffers must stay valid until the request completes: wdata (WRITE),
 * rbuf of length bytes (READ), ext of max_ext entries (BLOCK_STATUS;
 * extents beyond max_ext are counted out, the reply is still accepted).
 * When max_inflight requests are pending, submit first waits for a
 * reply (its completion is queued for nbd_client_wait()).
 * 0 or -errno; after a connection or protocol error every call fails.
 */
int nbd_client_submit(struct nbd_client *cl, uint16_t type, uint16_t flags,
		      uint64_t offset, uint32_t length, const void *wdata,
		      void *rbuf, struct nbd_extent *ext, uint32_t max_ext,
		      uint64_t *ret_cookie);
/* Waits for one request to finish (oldest completed first). 0 or -errno;
 * -ENOENT when nothing is in flight. */
int nbd_client_wait(struct nbd_client *cl, struct nbd_completion *ret);
unsigned int nbd_client_inflight(const struct nbd_client *cl);
/* Why the connection failed (after a -errno that was not the server's). */
const char *nbd_client_error(const struct nbd_client *cl);

/* Synchronous helpers: submit + wait for that request. 0 or -errno. */
int nbd_client_pread(struct nbd_client *cl, void *buf, uint32_t len,
		     uint64_t offset);
int nbd_client_pwrite(struct nbd_client *cl, const void *buf, uint32_t len,
		      uint64_t offset, uint16_t flags);
int nbd_client_write_zeroes(struct nbd_client *cl, uint64_t offset,
			    uint32_t len, uint16_t flags);
int nbd_client_trim(struct nbd_client *cl, uint64_t offset, uint32_t len);
int nbd_client_flush(struct nbd_client *cl);
/* base:allocation extents from offset; *ret_n set. */
int nbd_client_block_status(struct nbd_client *cl, uint64_t offset,
			    uint32_t len, uint16_t flags,
			    struct nbd_extent *ext, uint32_t max_ext,
			    uint32_t *ret_n);

#endif
