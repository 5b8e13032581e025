/*
 * WAN transport: TCP + TLS 1.3 (OpenSSL 3), mutually authenticated by a
 * shared key (external PSK) or by certificates.
 *
 * Threads: a struct wire_conn may be used by one reading thread and one
 * writing thread at the same time (and wire_conn_abort() from any
 * thread). Internally the socket is non-blocking and every OpenSSL call
 * on the connection is serialized by a mutex; threads wait in poll()
 * without holding it, so a blocked writer never stops the reader (and
 * the reverse), and two peers that both write cannot deadlock as long as
 * each also runs a reader.
 *
 * Errors are -errno; the first fatal error of a connection also leaves
 * a sentence for the user in wire_conn_errmsg() and makes every later
 * call fail with the same code:
 *   -EACCES      authentication failed (key or certificate mismatch)
 *   -EPROTO      the peer does not speak TLS 1.3 or broke the protocol
 *   -EBADMSG     a TLS record failed its integrity check (tampering),
 *                or a malformed tsubame frame
 *   -ECONNRESET  the peer closed or reset the connection
 *   -ETIMEDOUT   no progress within the connection's timeout
 *   -ECANCELED   wire_conn_abort() was called
 */
#ifndef TSB_WIRE_TLS_H
#define TSB_WIRE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "wire/wire.h"

#define WIRE_KEY_LEN 32
#define WIRE_KEY_ID_MAX 64
#define WIRE_ERRMSG_MAX 320
/* A key line of a key file: "tsubame-psk-v1 <key-id> <64 hex digits>". */
#define WIRE_KEY_MAGIC "tsubame-psk-v1"
/* The tenants a credential may act for: a comma-separated list, "" = any. */
#define WIRE_TENANTS_MAX 512
/* A certificate names each tenant it may act for in a URI subjectAltName. */
#define WIRE_CERT_TENANT_PREFIX "urn:tsubame:tenant:"

/* ---- Shared keys ---- */

/*
 * A key file holds one key line, or two for a key rollover (blank lines
 * and '#' comments anywhere):
 *
 *   tsubame-psk-v1 <key-id> <64 hex digits> [tenants=T1,T2]
 *       the key: a client uses it
 *   tsubame-psk-v1 <key-id> <64 hex digits> [tenants=T1,T2]
 *       optional: a server accepts it too (another key id)
 *
 * tenants= binds a key to the tenants its holder may migrate VMs of (a
 * server refuses any other); without it the key is a site key, good for
 * every tenant the server serves.
 *
 * Changing the key of two sites without a moment where they disagree:
 * make the new key (`tsubame keygen --id NEW`), append its line to both
 * key files (every server now takes old and new, every client still uses
 * old); then put the new line first on both (clients use new, servers
 * still take old); then remove the old line. The PSK identity tells a
 * server which of its keys the client uses, so the two ids must differ.
 */
struct wire_key {
	char id[WIRE_KEY_ID_MAX + 1]; /* PSK identity (not secret) */
	uint8_t secret[WIRE_KEY_LEN];
	char tenants[WIRE_TENANTS_MAX + 1]; /* "" = any */
	/* Key rollover: the second key line, which servers accept too. */
	bool has_alt;
	char alt_id[WIRE_KEY_ID_MAX + 1];
	uint8_t alt_secret[WIRE_KEY_LEN];
	char alt_tenants[WIRE_TENANTS_MAX + 1];
};

/*
 * Is tenant (len bytes) in a list of tenants ("" = any tenant)? A name is
 * 1..WIRE_MAX_ID printable characters without spaces or commas.
 */
bool wire_tenants_allow(const char *list, const char *tenant, size_t len);
/* Is list a valid tenants list: names as above, comma-separated, no empty one? */
bool wire_tenants_valid(const char *list, size_t len);

/*
 * Loads a key file. It must be a regular file (a symbolic link is
 * refused: -ELOOP), owned by the user we run as (root: by root) and not
 * accessible by group or others (mode 0600 or stricter): -EPERM
 * otherwise. -EBADMSG when malformed, -errno when unreadable. On failure
 * msg (msglen bytes, may be NULL) receives a sentence naming the file and
 * the fix.
 */
int wire_key_load(const char *path, struct wire_key *ret, char *msg,
		  size_t msglen);
/*
 * Parses the text of a key file (len bytes, no NUL needed): one or two
 * key lines as above (two with the same key id are malformed), blank
 * lines and '#' comments. 0 or -EBADMSG; *ret may be partly written on
 * failure (wipe it).
 */
int wire_key_parse(const char *buf, size_t len, struct wire_key *ret);
/*
 * Reads a file holding a secret (what: "key file", "private key") into
 * buf (cap bytes; a larger file is -EFBIG) with the checks of
 * wire_key_load(): a regular file, no symbolic link, ours, mode 0600 or
 * stricter. *ret_len bytes read; msg as for wire_key_load(). The caller
 * wipes buf.
 */
int wire_secret_file_read(const char *path, const char *what, char *buf,
			  size_t cap, size_t *ret_len, char *msg, size_t msglen);
/*
 * Writes a new random key to path (created with O_EXCL, mode 0600;
 * -EEXIST if it exists). key_id: 1..WIRE_KEY_ID_MAX printable characters
 * without spaces, or NULL for a random one; tenants: the tenants it may
 * act for (wire_tenants_valid()), or NULL for a site key. msg as for
 * wire_key_load().
 */
int wire_keygen(const char *path, const char *key_id, const char *tenants, char *msg,
		size_t msglen);
/* Overwrites the secret (OPENSSL_cleanse). */
void wire_key_wipe(struct wire_key *k);

/* ---- TCP helpers (fds are CLOEXEC, blocking) ---- */

/* Listens on host:port (host NULL or "" = any; port "0" = ephemeral). */
int wire_tcp_listen(const char *host, const char *port, int backlog,
		    int *ret_fd);
/* The local port of a bound socket. */
int wire_tcp_local_port(int fd, uint16_t *ret_port);
/* Accepts one connection; blocking. */
int wire_tcp_accept(int lfd, int *ret_fd);
/*
 * Connects to host:port, trying each address, within timeout_ms (<= 0:
 * the kernel's). msg as for wire_key_load().
 */
int wire_tcp_connect(const char *host, const char *port, int timeout_ms,
		     int *ret_fd, char *msg, size_t msglen);
/*
 * Sets TCP_NODELAY and, when bufsize > 0, SO_SNDBUF and SO_RCVBUF (this
 * turns off the kernel's autotuning: use it for a known large
 * bandwidth-delay product).
 */
int wire_tcp_tune(int fd, int bufsize);

/* ---- TLS context ---- */

enum wire_tls_side {
	WIRE_TLS_CLIENT,
	WIRE_TLS_SERVER,
};

/*
 * A TLS 1.3-only context for one side; configure it with exactly one of
 * wire_tls_set_psk() or wire_tls_set_certs(). Shared by any number of
 * connections, which must be freed before it. NULL on ENOMEM.
 */
struct wire_tls *wire_tls_new(enum wire_tls_side side);
void wire_tls_free(struct wire_tls *t);
/*
 * Every write on t's connections waits for its turn at this budget
 * (wire/pacer.h), which other contexts may share; NULL: none. Set it
 * before the first write; the pacer must outlive the connections.
 */
struct wire_pacer;
void wire_tls_set_pacer(struct wire_tls *t, struct wire_pacer *pacer);
/* Uses a shared key (copied; wiped on free). -EINVAL if already configured. */
int wire_tls_set_psk(struct wire_tls *t, const struct wire_key *key);
/*
 * Uses certificates: our chain (PEM) and private key, and the CA file
 * that must have signed the peer's certificate. Both sides require and
 * verify the peer's certificate. The private key file is checked as a
 * key file is (wire_secret_file_read()). msg as for wire_key_load().
 */
int wire_tls_set_certs(struct wire_tls *t, const char *cert_file,
		       const char *key_file, const char *ca_file, char *msg,
		       size_t msglen);

/* ---- Connections ---- */

struct wire_conn_stats {
	uint64_t app_in;   /* plaintext bytes read */
	uint64_t app_out;  /* plaintext bytes written */
	uint64_t net_in;   /* bytes received on the socket (TLS included) */
	uint64_t net_out;  /* bytes sent on the socket (TLS included) */
};

/*
 * A connection over a connected socket fd, which it takes over (closed
 * by wire_conn_free(), or here on failure) and makes non-blocking. NULL
 * on ENOMEM, or when t has neither a key nor certificates (a programming
 * error).
 */
struct wire_conn *wire_conn_new_take(struct wire_tls *t, int fd);
/* Closes the socket (without close_notify) and frees. Accepts NULL. */
void wire_conn_free(struct wire_conn *c);
/*
 * Limit on each wait for the peer (ms; <= 0: none, the default). Set it
 * before other threads use the connection.
 */
void wire_conn_set_timeout(struct wire_conn *c, int timeout_ms);

/* Certificate mode, client: the name the server's certificate must carry. */
int wire_conn_set_peer_name(struct wire_conn *c, const char *name);
/*
 * Runs the TLS handshake within timeout_ms (<= 0: no limit). A server
 * first checks that the peer speaks TLS at all. Errors as above.
 */
int wire_conn_handshake(struct wire_conn *c, int timeout_ms);
/*
 * The first fatal error, as a sentence; "" if none. Owned by c; set once,
 * so read it after a call on c has failed.
 */
const char *wire_conn_errmsg(const struct wire_conn *c);
/* After the handshake: the peer's key id or certificate subject. */
const char *wire_conn_peer(const struct wire_conn *c);
/*
 * Server, after the handshake: the tenants the peer's credential may act
 * for ("" = any): the tenants= of the key it used, or the certificate's
 * URI names WIRE_CERT_TENANT_PREFIX<tenant>. For messages: "(none
 * usable)" for a certificate whose tenant names are all invalid.
 */
const char *wire_conn_peer_tenants(const struct wire_conn *c);
/* Server: may the peer act for this tenant (len bytes)? */
bool wire_conn_peer_may_act_for(const struct wire_conn *c, const char *tenant, size_t len);
void wire_conn_get_stats(const struct wire_conn *c,
			 struct wire_conn_stats *ret);

/* Writes all len bytes (typically whole frames from the encoders). */
int wire_conn_write(struct wire_conn *c, const void *data, size_t len);
/*
 * Reads the next frame and checks its header. Returns 1 with ret filled
 * (payload owned by c, valid until the next read), 0 on a clean end
 * (TLS close_notify between frames), or -errno.
 */
int wire_conn_read_frame(struct wire_conn *c, struct wire_frame *ret);
/*
 * Reads and decodes the next message from a peer in role peer_role
 * (wire_msg_decode() plus wire_msg_role_ok()). 1, 0 or -errno like
 * wire_conn_read_frame(); on a bad message the errmsg names it.
 */
int wire_conn_read_msg(struct wire_conn *c, enum wire_role peer_role,
		       struct wire_msg *ret);
/*
 * Sends a DONE, CANCEL or ERROR message (best effort on a failing
 * connection).
 */
int wire_conn_send_status(struct wire_conn *c, uint8_t type, uint32_t code,
			  const char *text);
/* Sends LANE index of count (wire/lanes.h). */
int wire_conn_send_lane(struct wire_conn *c, unsigned index, unsigned count);
/*
 * Exchanges HELLO messages: sends ours, reads the peer's. Refuses a peer
 * with another protocol version (-EOPNOTSUPP, after telling it with an
 * ERROR), a peer in the same role (-EPROTO), and reports a peer's ERROR
 * (-ECONNREFUSED). ret_peer's strings live until the next read on c.
 */
int wire_conn_hello(struct wire_conn *c, const struct wire_hello_args *ours,
		    struct wire_hello *ret_peer);
/* Sends TLS close_notify (call after the last write). */
int wire_conn_close(struct wire_conn *c);
/*
 * Shuts the socket down so that blocked calls in other threads return
 * -ECANCELED. Thread-safe; the connection is unusable afterwards.
 */
void wire_conn_abort(struct wire_conn *c);

#endif
