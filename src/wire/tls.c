/*
 * TLS 1.3 connections: PSK or certificate authentication, a socket BIO
 * that never raises SIGPIPE and counts bytes, one mutex serializing
 * OpenSSL calls so that one reader and one writer thread can share a
 * connection, and error mapping into clear sentences.
 */
#include "wire/tls.h"
#include "wire/pacer.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/util.h"

/* Plaintext per SSL_write call: bounds how long the reader waits for the lock. */
#define WRITE_CHUNK (256u << 10)
/* OpenSSL's receive buffer: several TLS records per recv(). */
#define READ_BUFFER (128u << 10)
/* Rekey (TLS 1.3 KeyUpdate) after this many bytes: far below AES-GCM limits. */
#define KEY_UPDATE_BYTES (64ull << 30)
/* TLS record content type of a handshake record: what a TLS client sends first. */
#define TLS_RECORD_HANDSHAKE 0x16
/* Largest private key file (PEM) we read. */
#define PRIVATE_KEY_MAX (64u << 10)

struct wire_tls {
	SSL_CTX *ctx;
	enum wire_tls_side side;
	bool configured;
	bool psk;
	struct wire_key key;
	struct wire_pacer *pacer;  /* set before any write on its connections */
};

struct wire_conn {
	struct wire_tls *tls;
	SSL *ssl;
	int fd;
	int timeout_ms;

	pthread_mutex_t lock;      /* every SSL call, and the fields below */
	int dead;                  /* first fatal error, sticky */
	bool closed;               /* we sent close_notify */
	bool peer_closed;          /* the peer sent close_notify */
	bool handshake_done;
	bool bio_eof;
	int bio_errno;
	bool identity_unknown;     /* server: the client's key id is not ours */
	char bad_identity[WIRE_KEY_ID_MAX + 1];
	const char *psk_id;        /* server: which of our key ids the client used */
	const char *psk_tenants;   /* server: that key's tenants= ("" = any) */
	bool peer_bound;           /* the peer's credential names its tenants */
	char peer_tenants[WIRE_TENANTS_MAX + 1]; /* those tenants, comma-separated */
	uint64_t since_rekey;
	char errmsg[WIRE_ERRMSG_MAX];
	char peer[160];

	bool aborted;              /* atomic */
	uint64_t app_in, app_out, net_in, net_out; /* atomic */

	struct tsb_buf rbuf;       /* reader thread only */
};

/* ---- socket BIO ---- */

static BIO_METHOD *sock_method;
static pthread_once_t sock_method_once = PTHREAD_ONCE_INIT;

static int sbio_write(BIO *b, const char *data, int len)
{
	struct wire_conn *c = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	do
		n = send(c->fd, data, (size_t)len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		c->bio_errno = errno;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			BIO_set_retry_write(b);
		return -1;
	}
	__atomic_add_fetch(&c->net_out, (uint64_t)n, __ATOMIC_RELAXED);
	return (int)n;
}

static int sbio_read(BIO *b, char *buf, int len)
{
	struct wire_conn *c = BIO_get_data(b);
	ssize_t n;

	BIO_clear_retry_flags(b);
	do
		n = recv(c->fd, buf, (size_t)len, 0);
	while (n < 0 && errno == EINTR);
	if (n < 0) {
		c->bio_errno = errno;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			BIO_set_retry_read(b);
		return -1;
	}
	if (n == 0) {
		c->bio_eof = true;
		c->bio_errno = 0;
		return 0;
	}
	__atomic_add_fetch(&c->net_in, (uint64_t)n, __ATOMIC_RELAXED);
	return (int)n;
}

static long sbio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
	struct wire_conn *c = BIO_get_data(b);

	switch (cmd) {
	case BIO_CTRL_FLUSH:
		return 1;
	case BIO_CTRL_EOF:
		return c && c->bio_eof;
	default:
		return 0;
	}
}

static int sbio_create(BIO *b)
{
	BIO_set_init(b, 1);
	return 1;
}

static void sock_method_init(void)
{
	BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
				     "tsubame socket");

	if (!m)
		return;
	if (!BIO_meth_set_write(m, sbio_write) ||
	    !BIO_meth_set_read(m, sbio_read) ||
	    !BIO_meth_set_ctrl(m, sbio_ctrl) ||
	    !BIO_meth_set_create(m, sbio_create)) {
		BIO_meth_free(m);
		return;
	}
	sock_method = m;
}

/* ---- errors ---- */

static void vset_error(struct wire_conn *c, const char *fmt, va_list ap)
	__attribute__((format(printf, 2, 0)));

static void vset_error(struct wire_conn *c, const char *fmt, va_list ap)
{
	if (!c->errmsg[0])
		vsnprintf(c->errmsg, sizeof(c->errmsg), fmt, ap);
}

/* Records the first fatal error; caller holds c->lock. Returns c->dead. */
static int fail_locked(struct wire_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail_locked(struct wire_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	if (!c->dead) {
		c->dead = err;
		va_start(ap, fmt);
		vset_error(c, fmt, ap);
		va_end(ap);
	}
	return c->dead;
}

static int fail(struct wire_conn *c, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int fail(struct wire_conn *c, int err, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&c->lock);
	if (!c->dead) {
		c->dead = err;
		va_start(ap, fmt);
		vset_error(c, fmt, ap);
		va_end(ap);
	}
	err = c->dead;
	pthread_mutex_unlock(&c->lock);
	return err;
}

static bool is_aborted(struct wire_conn *c)
{
	return __atomic_load_n(&c->aborted, __ATOMIC_ACQUIRE);
}

/* Writes the reason of OpenSSL's last error into buf. */
static void ssl_reason(unsigned long e, char *buf, size_t len)
{
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	if (r)
		snprintf(buf, len, "%s", r);
	else if (e)
		ERR_error_string_n(e, buf, len);
	else
		snprintf(buf, len, "unknown error");
}

/*
 * Maps a failed SSL call to an errno and a sentence; caller holds the
 * lock. what: "TLS handshake failed", "TLS read failed", ...
 */
static int map_ssl_error_locked(struct wire_conn *c, int ssl_err,
				const char *what)
{
	unsigned long e = ERR_peek_last_error();
	int reason = ERR_GET_LIB(e) == ERR_LIB_SSL ? ERR_GET_REASON(e) : 0;
	char why[160];
	long vr;

	if (is_aborted(c))
		return fail_locked(c, -ECANCELED, "%s: connection aborted locally",
				   what);
	if (ssl_err == SSL_ERROR_ZERO_RETURN)
		return fail_locked(c, -ECONNRESET, "%s: peer closed the connection",
				   what);
	if (ssl_err == SSL_ERROR_SYSCALL && !e) {
		if (!c->bio_errno || c->bio_eof)
			return fail_locked(c, -ECONNRESET,
					   "%s: peer closed the connection without a TLS close_notify",
					   what);
		return fail_locked(c, -c->bio_errno, "%s: %s", what,
				   strerror(c->bio_errno));
	}
	if (c->identity_unknown && c->tls->key.has_alt)
		return fail_locked(c, -EACCES,
				   "%s: the peer uses key id '%s' but ours are '%s' and '%s' (the two sides have different key files)",
				   what, c->bad_identity, c->tls->key.id,
				   c->tls->key.alt_id);
	if (c->identity_unknown)
		return fail_locked(c, -EACCES,
				   "%s: the peer uses key id '%s' but ours is '%s' (the two sides have different key files)",
				   what, c->bad_identity, c->tls->key.id);
	ssl_reason(e, why, sizeof(why));
	switch (reason) {
	case SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC:
	case SSL_R_DECRYPTION_FAILED:
		if (!c->handshake_done && c->tls->psk)
			return fail_locked(c, -EACCES,
					   "%s: peer does not share our key (bad PSK?)",
					   what);
		return fail_locked(c, -EBADMSG,
				   "%s: a TLS record failed its integrity check (bad record MAC): data was altered in transit; connection dropped",
				   what);
	case SSL_R_SSLV3_ALERT_BAD_RECORD_MAC:
		if (!c->handshake_done && c->tls->psk)
			return fail_locked(c, -EACCES,
					   "%s: peer rejected our key (bad PSK?)",
					   what);
		return fail_locked(c, -EBADMSG,
				   "%s: the peer saw a TLS record fail its integrity check (data altered in transit)",
				   what);
	case SSL_R_SSLV3_ALERT_ILLEGAL_PARAMETER:
		/* What OpenSSL answers to a PSK binder that does not verify. */
		if (!c->handshake_done && c->tls->psk)
			return fail_locked(c, -EACCES,
					   "%s: peer rejected our handshake (illegal parameter): most likely it does not share our key (bad PSK?)",
					   what);
		break;
	case SSL_R_BINDER_DOES_NOT_VERIFY:
	case SSL_R_TLSV1_ALERT_DECRYPT_ERROR:
		if (c->tls->psk)
			return fail_locked(c, -EACCES,
					   "%s: peer does not share our key (bad PSK?)",
					   what);
		break;
	case SSL_R_NO_SHARED_CIPHER:
	case SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE:
	case SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM:
	case SSL_R_MISSING_PSK_KEX_MODES_EXTENSION:
		if (c->tls->psk)
			return fail_locked(c, -EACCES,
					   "%s: peer does not share our key or key id (%s)",
					   what, why);
		return fail_locked(c, -EACCES, "%s: %s", what, why);
	case SSL_R_CERTIFICATE_VERIFY_FAILED:
		vr = SSL_get_verify_result(c->ssl);
		return fail_locked(c, -EACCES,
				   "%s: the peer's certificate is not trusted: %s",
				   what, X509_verify_cert_error_string(vr));
	case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
		return fail_locked(c, -EACCES,
				   "%s: a certificate is required on both sides (%s)",
				   what, why);
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
		return fail_locked(c, -EACCES,
				   "%s: the peer rejected our certificate (%s)",
				   what, why);
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_HTTP_REQUEST:
	case SSL_R_HTTPS_PROXY_REQUEST:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
	case SSL_R_UNKNOWN_PROTOCOL:
	case SSL_R_RECORD_LENGTH_MISMATCH:
		if (!c->handshake_done)
			return fail_locked(c, -EPROTO,
					   "%s: the peer is not speaking TLS (%s)",
					   what, why);
		return fail_locked(c, -EBADMSG,
				   "%s: corrupted TLS record (%s); connection dropped",
				   what, why);
	case SSL_R_UNSUPPORTED_PROTOCOL:
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
		return fail_locked(c, -EPROTO,
				   "%s: the peer does not support TLS 1.3 (%s)",
				   what, why);
	case SSL_R_UNEXPECTED_EOF_WHILE_READING:
		return fail_locked(c, -ECONNRESET,
				   "%s: peer closed the connection without a TLS close_notify",
				   what);
	default:
		break;
	}
	return fail_locked(c, c->handshake_done ? -EPROTO : -EACCES,
			   "%s: %s", what, why);
}

/* ---- waiting ---- */

static int64_t deadline_after(int timeout_ms)
{
	if (timeout_ms <= 0)
		return -1;
	return (int64_t)(tsb_now_ns() / 1000000) + timeout_ms;
}

/*
 * Waits until fd is ready for events or the deadline (ms on the
 * monotonic clock, -1: none). 0, -ETIMEDOUT, -ECANCELED or -errno.
 */
static int wait_fd(struct wire_conn *c, short events, int64_t deadline)
{
	struct pollfd pfd = { .fd = c->fd, .events = events };
	int64_t now;
	int r, t;

	for (;;) {
		if (is_aborted(c))
			return -ECANCELED;
		t = -1;
		if (deadline >= 0) {
			now = (int64_t)(tsb_now_ns() / 1000000);
			if (now >= deadline)
				return -ETIMEDOUT;
			t = (int)(deadline - now);
		}
		r = poll(&pfd, 1, t);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r > 0)
			return is_aborted(c) ? -ECANCELED : 0;
	}
}

static int wait_failed(struct wire_conn *c, int err, const char *what,
		       int timeout_ms)
{
	if (err == -ETIMEDOUT)
		return fail(c, err, "%s: no answer from the peer within %d ms",
			    what, timeout_ms);
	if (err == -ECANCELED)
		return fail(c, err, "%s: connection aborted locally", what);
	return fail(c, err, "%s: poll: %s", what, strerror(-err));
}

/* Events to wait for after SSL_ERROR_WANT_*, or 0 when it is not a retry. */
static short want_events(int ssl_err)
{
	if (ssl_err == SSL_ERROR_WANT_READ)
		return POLLIN;
	if (ssl_err == SSL_ERROR_WANT_WRITE)
		return POLLOUT;
	return 0;
}

/* ---- context ---- */

static bool is_sha256(const EVP_MD *md)
{
	return EVP_MD_get_type(md) == NID_sha256;
}

static SSL_SESSION *psk_session(SSL *ssl, const uint8_t secret[WIRE_KEY_LEN])
{
	static const unsigned char aes128gcm_sha256[] = { 0x13, 0x01 };
	const SSL_CIPHER *cipher = SSL_CIPHER_find(ssl, aes128gcm_sha256);
	SSL_SESSION *s;

	if (!cipher)
		return NULL;
	s = SSL_SESSION_new();
	if (!s)
		return NULL;
	if (!SSL_SESSION_set1_master_key(s, secret, WIRE_KEY_LEN) ||
	    !SSL_SESSION_set_cipher(s, cipher) ||
	    !SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION)) {
		SSL_SESSION_free(s);
		return NULL;
	}
	return s;
}

static int client_psk_cb(SSL *ssl, const EVP_MD *md, const unsigned char **id,
			 size_t *idlen, SSL_SESSION **sess)
{
	struct wire_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	SSL_SESSION *s;

	*sess = NULL;
	*id = NULL;
	*idlen = 0;
	/* After a HelloRetryRequest: only a SHA-256 suite fits our PSK. */
	if (md && !is_sha256(md))
		return 1;
	/* A client always uses the first key of its file. */
	s = psk_session(ssl, t->key.secret);
	if (!s)
		return 0;
	*sess = s;
	*id = (const unsigned char *)t->key.id;
	*idlen = strlen(t->key.id);
	return 1;
}

static void copy_printable(char *dst, size_t cap, const unsigned char *src,
			   size_t len)
{
	size_t i, n = len < cap - 1 ? len : cap - 1;

	for (i = 0; i < n; i++)
		dst[i] = (src[i] >= 0x21 && src[i] <= 0x7e) ? (char)src[i] : '?';
	dst[n] = '\0';
}

static int server_psk_cb(SSL *ssl, const unsigned char *id, size_t idlen,
			 SSL_SESSION **sess)
{
	struct wire_tls *t = SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl));
	struct wire_conn *c = SSL_get_app_data(ssl);
	const uint8_t *secret = NULL;
	const char *ours = NULL;

	*sess = NULL;
	/* Our key, or during a rollover the other key of our file. */
	if (idlen == strlen(t->key.id) && !memcmp(id, t->key.id, idlen)) {
		ours = t->key.id;
		secret = t->key.secret;
	} else if (t->key.has_alt && idlen == strlen(t->key.alt_id) &&
		   !memcmp(id, t->key.alt_id, idlen)) {
		ours = t->key.alt_id;
		secret = t->key.alt_secret;
	}
	if (!ours) {
		/* Not ours: no PSK, and the handshake fails (no certificate). */
		if (c) {
			c->identity_unknown = true;
			copy_printable(c->bad_identity, sizeof(c->bad_identity),
				       id, idlen);
		}
		return 1;
	}
	if (c) {
		c->psk_id = ours;
		c->psk_tenants = ours == t->key.id ? t->key.tenants : t->key.alt_tenants;
	}
	*sess = psk_session(ssl, secret);
	return *sess ? 1 : 0;
}

struct wire_tls *wire_tls_new(enum wire_tls_side side)
{
	struct wire_tls *t = calloc(1, sizeof(*t));

	if (!t)
		return NULL;
	t->side = side;
	t->ctx = SSL_CTX_new(side == WIRE_TLS_SERVER ? TLS_server_method() :
						       TLS_client_method());
	if (!t->ctx)
		goto fail;
	if (!SSL_CTX_set_min_proto_version(t->ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_max_proto_version(t->ctx, TLS1_3_VERSION) ||
	    !SSL_CTX_set_ciphersuites(t->ctx,
				      "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256"))
		goto fail;
	SSL_CTX_set_options(t->ctx, SSL_OP_NO_TICKET |
				    SSL_OP_CIPHER_SERVER_PREFERENCE |
				    SSL_OP_NO_RENEGOTIATION);
	(void)SSL_CTX_set_num_tickets(t->ctx, 0);
	SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_mode(t->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
				 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	SSL_CTX_set_verify(t->ctx, SSL_VERIFY_NONE, NULL);
	/* With read-ahead: several records per recv(). */
	SSL_CTX_set_default_read_buffer_len(t->ctx, READ_BUFFER);
	SSL_CTX_set_app_data(t->ctx, t);
	return t;
fail:
	wire_tls_free(t);
	return NULL;
}

void wire_tls_free(struct wire_tls *t)
{
	if (!t)
		return;
	SSL_CTX_free(t->ctx);
	wire_key_wipe(&t->key);
	free(t);
}

int wire_tls_set_psk(struct wire_tls *t, const struct wire_key *key)
{
	if (t->configured || !key->id[0] || (key->has_alt && !key->alt_id[0]))
		return -EINVAL;
	t->key = *key;
	if (t->side == WIRE_TLS_CLIENT)
		SSL_CTX_set_psk_use_session_callback(t->ctx, client_psk_cb);
	else
		SSL_CTX_set_psk_find_session_callback(t->ctx, server_psk_cb);
	t->psk = true;
	t->configured = true;
	return 0;
}

static int cert_fail(char *msg, size_t msglen, const char *what,
		     const char *file)
{
	char why[160];

	ssl_reason(ERR_peek_last_error(), why, sizeof(why));
	ERR_clear_error();
	if (msg && msglen)
		snprintf(msg, msglen, "cannot load %s %s: %s", what, file, why);
	return -EINVAL;
}

/*
 * The private key (PEM), read with the checks of a key file: ours, not a
 * link, mode 0600 or stricter. OpenSSL then parses it from memory.
 */
static int use_private_key(struct wire_tls *t, const char *key_file, char *msg,
			   size_t msglen)
{
	char *buf = malloc(PRIVATE_KEY_MAX);
	size_t len = 0;
	EVP_PKEY *pk = NULL;
	BIO *bio;
	int err;

	if (!buf)
		return -ENOMEM;
	err = wire_secret_file_read(key_file, "private key", buf, PRIVATE_KEY_MAX,
				    &len, msg, msglen);
	if (err == 0) {
		bio = BIO_new_mem_buf(buf, (int)len);
		if (bio)
			pk = PEM_read_bio_PrivateKey(bio, NULL,
						     SSL_CTX_get_default_passwd_cb(t->ctx),
						     SSL_CTX_get_default_passwd_cb_userdata(t->ctx));
		BIO_free(bio);
		if (!pk || SSL_CTX_use_PrivateKey(t->ctx, pk) != 1)
			err = cert_fail(msg, msglen, "private key", key_file);
		EVP_PKEY_free(pk);
	}
	OPENSSL_cleanse(buf, PRIVATE_KEY_MAX);
	free(buf);
	return err;
}

int wire_tls_set_certs(struct wire_tls *t, const char *cert_file,
		       const char *key_file, const char *ca_file, char *msg,
		       size_t msglen)
{
	int err;

	if (t->configured) {
		if (msg && msglen)
			snprintf(msg, msglen,
				 "use either a shared key or certificates, not both");
		return -EINVAL;
	}
	ERR_clear_error();
	if (SSL_CTX_use_certificate_chain_file(t->ctx, cert_file) != 1)
		return cert_fail(msg, msglen, "certificate", cert_file);
	err = use_private_key(t, key_file, msg, msglen);
	if (err)
		return err;
	if (SSL_CTX_check_private_key(t->ctx) != 1)
		return cert_fail(msg, msglen, "private key (does not match the certificate)",
				 key_file);
	if (SSL_CTX_load_verify_locations(t->ctx, ca_file, NULL) != 1)
		return cert_fail(msg, msglen, "CA file", ca_file);
	SSL_CTX_set_verify(t->ctx,
			   SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
			   NULL);
	t->configured = true;
	return 0;
}

/* ---- connections ---- */

struct wire_conn *wire_conn_new_take(struct wire_tls *t, int fd)
{
	struct wire_conn *c;
	BIO *bio;

	(void)pthread_once(&sock_method_once, sock_method_init);
	c = calloc(1, sizeof(*c));
	if (!c || !sock_method || !t->configured)
		goto fail;
	c->tls = t;
	c->fd = fd;
	pthread_mutex_init(&c->lock, NULL);
	tsb_buf_init(&c->rbuf);
	if (tsb_set_nonblock(fd, true) < 0)
		goto fail_conn;
	c->ssl = SSL_new(t->ctx);
	if (!c->ssl)
		goto fail_conn;
	SSL_set_app_data(c->ssl, c);
	bio = BIO_new(sock_method);
	if (!bio)
		goto fail_conn;
	BIO_set_data(bio, c);
	SSL_set_bio(c->ssl, bio, bio);
	SSL_set_read_ahead(c->ssl, 1);
	if (t->side == WIRE_TLS_SERVER)
		SSL_set_accept_state(c->ssl);
	else
		SSL_set_connect_state(c->ssl);
	return c;
fail_conn:
	wire_conn_free(c);
	return NULL;
fail:
	free(c);
	close(fd);
	return NULL;
}

void wire_conn_free(struct wire_conn *c)
{
	if (!c)
		return;
	SSL_free(c->ssl);
	if (c->fd >= 0)
		close(c->fd);
	tsb_buf_fini(&c->rbuf);
	pthread_mutex_destroy(&c->lock);
	free(c);
}

void wire_tls_set_pacer(struct wire_tls *t, struct wire_pacer *pacer)
{
	t->pacer = pacer;
}

void wire_conn_set_timeout(struct wire_conn *c, int timeout_ms)
{
	c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

int wire_conn_set_peer_name(struct wire_conn *c, const char *name)
{
	if (c->tls->psk || c->tls->side != WIRE_TLS_CLIENT)
		return -EINVAL;
	return SSL_set1_host(c->ssl, name) == 1 ? 0 : -ENOMEM;
}

const char *wire_conn_errmsg(const struct wire_conn *c)
{
	return c->errmsg;
}

const char *wire_conn_peer(const struct wire_conn *c)
{
	return c->peer;
}

const char *wire_conn_peer_tenants(const struct wire_conn *c)
{
	if (!c->peer_bound)
		return "";
	return c->peer_tenants[0] ? c->peer_tenants : "(none usable)";
}

bool wire_conn_peer_may_act_for(const struct wire_conn *c, const char *tenant, size_t len)
{
	if (!c->handshake_done)
		return false;
	if (!c->peer_bound)
		return true;
	/* Bound, even if no name was usable: an empty list allows nothing here. */
	return c->peer_tenants[0] && wire_tenants_allow(c->peer_tenants, tenant, len);
}

void wire_conn_get_stats(const struct wire_conn *c, struct wire_conn_stats *ret)
{
	ret->app_in = __atomic_load_n(&c->app_in, __ATOMIC_RELAXED);
	ret->app_out = __atomic_load_n(&c->app_out, __ATOMIC_RELAXED);
	ret->net_in = __atomic_load_n(&c->net_in, __ATOMIC_RELAXED);
	ret->net_out = __atomic_load_n(&c->net_out, __ATOMIC_RELAXED);
}

void wire_conn_abort(struct wire_conn *c)
{
	__atomic_store_n(&c->aborted, true, __ATOMIC_RELEASE);
	(void)shutdown(c->fd, SHUT_RDWR);
}

/*
 * Server: before any TLS, look at the first byte. A TLS client starts
 * with a handshake record; anything else is a plaintext client or
 * another protocol, which OpenSSL would only call "wrong version number".
 */
static int check_first_byte(struct wire_conn *c, int64_t deadline,
			    int timeout_ms)
{
	unsigned char b;
	ssize_t n;
	int err;

	for (;;) {
		n = recv(c->fd, &b, 1, MSG_PEEK);
		if (n == 1)
			break;
		if (n == 0)
			return fail(c, -ECONNRESET,
				    "TLS handshake failed: the peer closed the connection before saying anything");
		err = -errno;
		if (err == -EINTR)
			continue;
		if (err != -EAGAIN && err != -EWOULDBLOCK)
			return fail(c, err, "TLS handshake failed: %s",
				    strerror(-err));
		err = wait_fd(c, POLLIN, deadline);
		if (err)
			return wait_failed(c, err, "TLS handshake failed",
					   timeout_ms);
	}
	if (b != TLS_RECORD_HANDSHAKE)
		return fail(c, -EPROTO,
			    "TLS handshake failed: the peer is not speaking TLS (its first byte is 0x%02x%s%c%s; a plaintext client or another protocol?); connection refused",
			    b, b >= 0x20 && b < 0x7f ? " '" : "",
			    b >= 0x20 && b < 0x7f ? b : ' ',
			    b >= 0x20 && b < 0x7f ? "'" : "");
	return 0;
}

/*
 * The tenants a certificate may act for: its URI subjectAltNames
 * WIRE_CERT_TENANT_PREFIX<tenant>. Names that are not valid tenant names,
 * or do not fit, are left out (the certificate may then do less, never more).
 */
static void cert_tenants_locked(struct wire_conn *c, X509 *cert)
{
	const size_t plen = strlen(WIRE_CERT_TENANT_PREFIX);
	GENERAL_NAMES *names = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	size_t used = 0, len;
	const char *uri;
	int i;

	for (i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(names, i);

		if (g->type != GEN_URI)
			continue;
		uri = (const char *)ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
		len = (size_t)ASN1_STRING_length(g->d.uniformResourceIdentifier);
		if (len < plen || strncmp(uri, WIRE_CERT_TENANT_PREFIX, plen))
			continue;
		c->peer_bound = true;
		uri += plen;
		len -= plen;
		if (!len || memchr(uri, ',', len) || !wire_tenants_valid(uri, len) ||
		    used + !!used + len > WIRE_TENANTS_MAX)
			continue;
		if (used)
			c->peer_tenants[used++] = ',';
		memcpy(c->peer_tenants + used, uri, len);
		used += len;
		c->peer_tenants[used] = '\0';
	}
	GENERAL_NAMES_free(names);
}

static void describe_peer_locked(struct wire_conn *c)
{
	X509 *cert;

	c->peer_bound = false;
	c->peer_tenants[0] = '\0';
	if (c->tls->psk) {
		snprintf(c->peer, sizeof(c->peer), "key %s",
			 c->psk_id ? c->psk_id : c->tls->key.id);
		if (c->psk_tenants && c->psk_tenants[0]) {
			c->peer_bound = true;
			snprintf(c->peer_tenants, sizeof(c->peer_tenants), "%s", c->psk_tenants);
		}
		return;
	}
	cert = SSL_get1_peer_certificate(c->ssl);
	if (!cert) {
		snprintf(c->peer, sizeof(c->peer), "?");
		return;
	}
	X509_NAME_oneline(X509_get_subject_name(cert), c->peer,
			  sizeof(c->peer));
	cert_tenants_locked(c, cert);
	X509_free(cert);
}

int wire_conn_handshake(struct wire_conn *c, int timeout_ms)
{
	static const char what[] = "TLS handshake failed";
	int64_t deadline = deadline_after(timeout_ms);
	int r, e, err;
	short ev;

	if (c->tls->side == WIRE_TLS_SERVER) {
		err = check_first_byte(c, deadline, timeout_ms);
		if (err)
			return err;
	}
	for (;;) {
		pthread_mutex_lock(&c->lock);
		if (c->dead) {
			err = c->dead;
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		ERR_clear_error();
		r = SSL_do_handshake(c->ssl);
		if (r == 1) {
			c->handshake_done = true;
			/* A PSK handshake that did not use the PSK is no authentication. */
			if (c->tls->psk && !SSL_session_reused(c->ssl)) {
				err = fail_locked(c, -EACCES,
						  "%s: the peer did not authenticate with our key",
						  what);
				pthread_mutex_unlock(&c->lock);
				return err;
			}
			describe_peer_locked(c);
			pthread_mutex_unlock(&c->lock);
			return 0;
		}
		e = SSL_get_error(c->ssl, r);
		ev = want_events(e);
		if (!ev) {
			err = map_ssl_error_locked(c, e, what);
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		pthread_mutex_unlock(&c->lock);
		err = wait_fd(c, ev, deadline);
		if (err)
			return wait_failed(c, err, what, timeout_ms);
	}
}

int wire_conn_write(struct wire_conn *c, const void *data, size_t len)
{
	static const char what[] = "sending to the peer failed";
	const uint8_t *p = data;
	size_t off = 0, chunk, n, paced = 0;
	int e, err;
	short ev;

	while (off < len) {
		chunk = len - off < WRITE_CHUNK ? len - off : WRITE_CHUNK;
		if (c->tls->pacer) {
			/* Our turn at the shared budget, for what is not yet paid for. */
			if (chunk > WIRE_PACER_CHUNK)
				chunk = WIRE_PACER_CHUNK;
			if (paced < chunk) {
				wire_pacer_take(c->tls->pacer, chunk - paced);
				paced = chunk;
			}
		}
		pthread_mutex_lock(&c->lock);
		if (c->dead || c->closed) {
			err = c->dead ? c->dead : -EPIPE;
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		ERR_clear_error();
		if (SSL_write_ex(c->ssl, p + off, chunk, &n)) {
			off += n;
			paced = paced > n ? paced - n : 0;
			__atomic_add_fetch(&c->app_out, n, __ATOMIC_RELAXED);
			c->since_rekey += n;
			if (c->since_rekey >= KEY_UPDATE_BYTES) {
				c->since_rekey = 0;
				(void)SSL_key_update(c->ssl,
						     SSL_KEY_UPDATE_NOT_REQUESTED);
			}
			pthread_mutex_unlock(&c->lock);
			continue;
		}
		e = SSL_get_error(c->ssl, 0);
		ev = want_events(e);
		if (!ev) {
			err = map_ssl_error_locked(c, e, what);
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		pthread_mutex_unlock(&c->lock);
		err = wait_fd(c, ev, deadline_after(c->timeout_ms));
		if (err)
			return wait_failed(c, err, what, c->timeout_ms);
	}
	return 0;
}

/*
 * Reads exactly n bytes. 1 when done; 0 when the peer closed cleanly
 * before the first byte and at_boundary; -errno.
 */
static int read_exact(struct wire_conn *c, void *buf, size_t n,
		      bool at_boundary)
{
	static const char what[] = "receiving from the peer failed";
	uint8_t *p = buf;
	size_t got = 0, r;
	int e, err;
	short ev;

	while (got < n) {
		pthread_mutex_lock(&c->lock);
		if (c->dead) {
			err = c->dead;
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		if (c->peer_closed) {
			pthread_mutex_unlock(&c->lock);
			goto closed;
		}
		ERR_clear_error();
		if (SSL_read_ex(c->ssl, p + got, n - got, &r)) {
			got += r;
			__atomic_add_fetch(&c->app_in, r, __ATOMIC_RELAXED);
			pthread_mutex_unlock(&c->lock);
			continue;
		}
		e = SSL_get_error(c->ssl, 0);
		if (e == SSL_ERROR_ZERO_RETURN) {
			c->peer_closed = true;
			pthread_mutex_unlock(&c->lock);
			goto closed;
		}
		ev = want_events(e);
		if (!ev) {
			err = map_ssl_error_locked(c, e, what);
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		pthread_mutex_unlock(&c->lock);
		err = wait_fd(c, ev, deadline_after(c->timeout_ms));
		if (err)
			return wait_failed(c, err, what, c->timeout_ms);
	}
	return 1;
closed:
	if (!got && at_boundary)
		return 0;
	return fail(c, -ECONNRESET,
		    "%s: the peer closed the connection in the middle of a message",
		    what);
}

int wire_conn_read_frame(struct wire_conn *c, struct wire_frame *ret)
{
	static const uint8_t empty[1];
	uint8_t hdr[WIRE_HDR_LEN];
	struct wire_frame f;
	int r;

	r = read_exact(c, hdr, sizeof(hdr), true);
	if (r <= 0)
		return r;
	r = wire_header_decode(hdr, &f);
	if (r == -EMSGSIZE)
		return fail(c, r,
			    "the peer announced a %u-byte %s message; the limit is %u bytes",
			    tsb_load_be32(hdr + 4), wire_msg_name(hdr[0]),
			    WIRE_MAX_PAYLOAD);
	if (r < 0)
		return fail(c, r,
			    "the peer sent a message we do not know (type %u, flags 0x%02x, reserved 0x%04x): a newer protocol version?",
			    hdr[0], hdr[1], tsb_load_be16(hdr + 2));
	tsb_buf_reset(&c->rbuf);
	if (tsb_buf_reserve(&c->rbuf, f.len) < 0)
		return fail(c, -ENOMEM, "out of memory for a %u-byte message",
			    f.len);
	if (f.len) {
		r = read_exact(c, c->rbuf.data, f.len, false);
		if (r < 0)
			return r;
	}
	c->rbuf.len = f.len;
	f.payload = f.len ? c->rbuf.data : empty;
	*ret = f;
	return 1;
}

static const char *role_name(enum wire_role role)
{
	return role == WIRE_ROLE_SENDER ? "sender" : "receiver";
}

int wire_conn_read_msg(struct wire_conn *c, enum wire_role peer_role,
		       struct wire_msg *ret)
{
	struct wire_frame f;
	struct wire_msg m;
	int r;

	r = wire_conn_read_frame(c, &f);
	if (r <= 0)
		return r;
	if (!wire_msg_role_ok(f.type, peer_role))
		return fail(c, -EPROTO,
			    "the peer (a %s) sent a %s message, which it may not send",
			    role_name(peer_role), wire_msg_name(f.type));
	r = wire_frame_decode(&f, &m);
	if (r < 0)
		return fail(c, r, "the peer sent a malformed %s message (%s)",
			    wire_msg_name(f.type), strerror(-r));
	*ret = m;
	return 1;
}

int wire_conn_send_status(struct wire_conn *c, uint8_t type, uint32_t code,
			  const char *text)
{
	struct tsb_buf b;
	int err;

	tsb_buf_init(&b);
	err = wire_encode_status(&b, type, code, text);
	if (!err)
		err = wire_conn_write(c, b.data, b.len);
	tsb_buf_fini(&b);
	return err;
}

int wire_conn_send_lane(struct wire_conn *c, unsigned index, unsigned count)
{
	struct tsb_buf b;
	int err;

	tsb_buf_init(&b);
	err = wire_encode_lane(&b, index, count);
	if (!err)
		err = wire_conn_write(c, b.data, b.len);
	tsb_buf_fini(&b);
	return err;
}

/* Copies a peer string for a message, replacing anything unprintable. */
static void quote(char *dst, size_t cap, const char *p, size_t len)
{
	size_t i, n = len < cap - 1 ? len : cap - 1;

	for (i = 0; i < n; i++)
		dst[i] = ((unsigned char)p[i] >= 0x20 &&
			  (unsigned char)p[i] < 0x7f) ? p[i] : '?';
	dst[n] = '\0';
}

int wire_conn_hello(struct wire_conn *c, const struct wire_hello_args *ours,
		    struct wire_hello *ret_peer)
{
	char text[200], reply[160];
	struct tsb_buf b;
	struct wire_frame f;
	struct wire_msg m;
	uint16_t version;
	int r;

	tsb_buf_init(&b);
	r = wire_encode_hello(&b, ours);
	if (!r)
		r = wire_conn_write(c, b.data, b.len);
	tsb_buf_fini(&b);
	if (r == -EINVAL)
		return fail(c, r, "invalid local HELLO (ids must be printable without spaces, at most %d characters)",
			    WIRE_MAX_ID);
	if (r < 0)
		return r;
	r = wire_conn_read_frame(c, &f);
	if (r == 0)
		return fail(c, -ECONNRESET,
			    "the peer closed the connection before its HELLO");
	if (r < 0)
		return r;
	if (f.type == WIRE_MSG_ERROR &&
	    wire_frame_decode(&f, &m) == 0) {
		quote(text, sizeof(text), m.u.status.text.p,
		      m.u.status.text.len);
		return fail(c, -ECONNREFUSED, "the peer refused us: \"%s\"",
			    text);
	}
	if (f.type != WIRE_MSG_HELLO)
		return fail(c, -EPROTO,
			    "the peer sent %s where HELLO was expected",
			    wire_msg_name(f.type));
	r = wire_frame_decode(&f, &m);
	if (r == -EOPNOTSUPP &&
	    wire_hello_peek_version(f.payload, f.len, &version) == 0 &&
	    version != WIRE_VERSION) {
		snprintf(reply, sizeof(reply),
			 "tsubame protocol version %u is not supported; this side speaks version %u",
			 version, WIRE_VERSION);
		(void)wire_conn_send_status(c, WIRE_MSG_ERROR,
					    WIRE_CODE_VERSION, reply);
		return fail(c, -EOPNOTSUPP,
			    "the peer speaks tsubame protocol version %u; we speak version %u",
			    version, WIRE_VERSION);
	}
	if (r < 0) {
		(void)wire_conn_send_status(c, WIRE_MSG_ERROR,
					    WIRE_CODE_PROTOCOL,
					    "malformed HELLO");
		return fail(c, r, "the peer sent a malformed HELLO (%s)",
			    strerror(-r));
	}
	if (m.u.hello.role == ours->role) {
		(void)wire_conn_send_status(c, WIRE_MSG_ERROR,
					    WIRE_CODE_PROTOCOL,
					    "both sides have the same role");
		return fail(c, -EPROTO, "the peer is also a %s",
			    role_name(ours->role));
	}
	*ret_peer = m.u.hello;
	return 0;
}

int wire_conn_close(struct wire_conn *c)
{
	static const char what[] = "closing the connection failed";
	int r, e, err;
	short ev;

	for (;;) {
		pthread_mutex_lock(&c->lock);
		if (c->dead || c->closed) {
			err = c->dead;
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		ERR_clear_error();
		r = SSL_shutdown(c->ssl);
		if (r >= 0) {
			/* 0: our close_notify is out; we do not wait for theirs. */
			c->closed = true;
			pthread_mutex_unlock(&c->lock);
			return 0;
		}
		e = SSL_get_error(c->ssl, r);
		ev = want_events(e);
		if (!ev) {
			err = map_ssl_error_locked(c, e, what);
			pthread_mutex_unlock(&c->lock);
			return err;
		}
		pthread_mutex_unlock(&c->lock);
		err = wait_fd(c, ev, deadline_after(c->timeout_ms));
		if (err)
			return wait_failed(c, err, what, c->timeout_ms);
	}
}
