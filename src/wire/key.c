/*
 * Shared key files: "tsubame-psk-v1 <key-id> <64 hex digits>
 * [tenants=T1,T2]\n", mode 0600, owned by the user that runs tsubame; a
 * second such line (another key id) is a key a server accepts too, for a
 * key rollover (tls.h says how).
 */
#include "wire/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#define KEY_FILE_MAX 4096

static int fail(char *msg, size_t msglen, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int fail(char *msg, size_t msglen, int err, const char *fmt, ...)
{
	va_list ap;

	if (msg && msglen) {
		va_start(ap, fmt);
		vsnprintf(msg, msglen, fmt, ap);
		va_end(ap);
	}
	return err;
}

void wire_key_wipe(struct wire_key *k)
{
	OPENSSL_cleanse(k, sizeof(*k));
}

static bool key_id_ok(const char *s, size_t n)
{
	size_t i;

	if (!n || n > WIRE_KEY_ID_MAX)
		return false;
	for (i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return false;
	return true;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Splits the next space-separated field of line[0..len). */
static const char *next_field(const char **p, const char *end, size_t *ret_len)
{
	const char *s;

	while (*p < end && (**p == ' ' || **p == '\t'))
		(*p)++;
	s = *p;
	while (*p < end && **p != ' ' && **p != '\t')
		(*p)++;
	*ret_len = *p - s;
	return *ret_len ? s : NULL;
}

static bool tenant_char_ok(char c)
{
	return (unsigned char)c >= 0x21 && (unsigned char)c <= 0x7e && c != ',';
}

bool wire_tenants_valid(const char *list, size_t len)
{
	size_t i, name = 0;

	if (len > WIRE_TENANTS_MAX)
		return false;
	for (i = 0; i < len; i++) {
		if (list[i] == ',') {
			if (!name)
				return false;
			name = 0;
		} else if (!tenant_char_ok(list[i]) || ++name > WIRE_MAX_ID) {
			return false;
		}
	}
	return len == 0 || name > 0;
}

bool wire_tenants_allow(const char *list, const char *tenant, size_t len)
{
	const char *p = list, *comma;
	size_t n;

	if (!*list)
		return true;
	if (!len)
		return false;
	for (;;) {
		comma = strchr(p, ',');
		n = comma ? (size_t)(comma - p) : strlen(p);
		if (n == len && !memcmp(p, tenant, len))
			return true;
		if (!comma)
			return false;
		p = comma + 1;
	}
}

#define TENANTS_FIELD "tenants="

/*
 * One key line p..line_end: "tsubame-psk-v1 <key-id> <64 hex digits>
 * [tenants=T1,T2]".
 */
static int parse_line(const char *p, const char *line_end, char *id, uint8_t *secret,
		      char *tenants)
{
	const char *f;
	size_t n, i;
	int hi, lo;

	f = next_field(&p, line_end, &n);
	if (!f || n != strlen(WIRE_KEY_MAGIC) || memcmp(f, WIRE_KEY_MAGIC, n))
		return -EBADMSG;
	f = next_field(&p, line_end, &n);
	if (!f || !key_id_ok(f, n))
		return -EBADMSG;
	memcpy(id, f, n);
	id[n] = '\0';
	f = next_field(&p, line_end, &n);
	if (!f || n != 2 * WIRE_KEY_LEN)
		return -EBADMSG;
	for (i = 0; i < WIRE_KEY_LEN; i++) {
		hi = hexval(f[2 * i]);
		lo = hexval(f[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EBADMSG;
		secret[i] = (uint8_t)(hi << 4 | lo);
	}
	tenants[0] = '\0';
	f = next_field(&p, line_end, &n);
	if (f) {
		/* A key bound to tenants: a misspelt field must not widen it. */
		if (n <= strlen(TENANTS_FIELD) || memcmp(f, TENANTS_FIELD, strlen(TENANTS_FIELD)))
			return -EBADMSG;
		f += strlen(TENANTS_FIELD);
		n -= strlen(TENANTS_FIELD);
		if (!wire_tenants_valid(f, n))
			return -EBADMSG;
		memcpy(tenants, f, n);
		tenants[n] = '\0';
	}
	if (next_field(&p, line_end, &n))
		return -EBADMSG;
	return 0;
}

int wire_key_parse(const char *buf, size_t len, struct wire_key *k)
{
	const char *p = buf, *end = buf + len, *nl, *line_end;
	unsigned keys = 0;
	int err;

	k->has_alt = false;
	for (;;) {
		/* Skip blank lines and '#' comments. */
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' ||
				   *p == '\r'))
			p++;
		if (p >= end)
			break;
		nl = memchr(p, '\n', end - p);
		line_end = nl ? nl : end;
		if (*p != '#') {
			/* The key, then at most one more (rollover). */
			if (keys == 2)
				return -EBADMSG;
			if (line_end > p && line_end[-1] == '\r')
				line_end--;
			err = keys ? parse_line(p, line_end, k->alt_id, k->alt_secret,
						k->alt_tenants) :
				     parse_line(p, line_end, k->id, k->secret, k->tenants);
			if (err)
				return err;
			keys++;
		}
		p = nl ? nl + 1 : end;
	}
	if (!keys)
		return -EBADMSG;
	if (keys == 2) {
		/* The id is what tells a server which key a client uses. */
		if (!strcmp(k->id, k->alt_id))
			return -EBADMSG;
		k->has_alt = true;
	}
	return 0;
}

int wire_secret_file_read(const char *path, const char *what, char *buf,
			  size_t cap, size_t *ret_len, char *msg, size_t msglen)
{
	struct stat st;
	size_t len = 0;
	ssize_t n;
	uid_t uid = geteuid();
	int fd, err;

	/* No link to follow; no FIFO or device to block on. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0 && errno == ELOOP)
		return fail(msg, msglen, -ELOOP,
			    "%s %s is a symbolic link; refusing to follow it: give the file itself",
			    what, path);
	if (fd < 0)
		return fail(msg, msglen, -errno, "cannot open %s %s: %s", what,
			    path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		err = -errno;
		close(fd);
		return fail(msg, msglen, err, "cannot stat %s %s: %s", what,
			    path, strerror(-err));
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return fail(msg, msglen, -EINVAL, "%s %s is not a regular file",
			    what, path);
	}
	if (st.st_uid != uid) {
		close(fd);
		return fail(msg, msglen, -EPERM,
			    "%s %s belongs to uid %u, not to uid %u that runs tsubame; refusing to use it: run 'chown %u %s'",
			    what, path, (unsigned int)st.st_uid,
			    (unsigned int)uid, (unsigned int)uid, path);
	}
	if (st.st_mode & 077) {
		close(fd);
		return fail(msg, msglen, -EPERM,
			    "%s %s is accessible by group or others (mode %04o); refusing to use it: run 'chmod 600 %s'",
			    what, path, (unsigned int)(st.st_mode & 07777), path);
	}
	if (fcntl(fd, F_SETFL, O_RDONLY) < 0) {
		err = -errno;
		close(fd);
		return fail(msg, msglen, err, "cannot read %s %s: %s", what,
			    path, strerror(-err));
	}
	while (len < cap) {
		n = read(fd, buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			err = -errno;
			close(fd);
			return fail(msg, msglen, err, "cannot read %s %s: %s",
				    what, path, strerror(-err));
		}
		if (!n)
			break;
		len += n;
	}
	/* One byte more says whether the file is larger. */
	if (len == cap) {
		char extra;

		do
			n = read(fd, &extra, 1);
		while (n < 0 && errno == EINTR);
		if (n > 0) {
			close(fd);
			return fail(msg, msglen, -EFBIG, "%s %s is too large", what,
				    path);
		}
	}
	close(fd);
	*ret_len = len;
	return 0;
}

int wire_key_load(const char *path, struct wire_key *ret, char *msg,
		  size_t msglen)
{
	char buf[KEY_FILE_MAX];
	struct wire_key k = { 0 };
	size_t len = 0;
	int err;

	err = wire_secret_file_read(path, "key file", buf, sizeof(buf), &len,
				    msg, msglen);
	if (err == -EFBIG) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return fail(msg, msglen, -EBADMSG,
			    "key file %s is too large to be a tsubame key", path);
	}
	if (err) {
		OPENSSL_cleanse(buf, sizeof(buf));
		return err;
	}
	err = wire_key_parse(buf, len, &k);
	OPENSSL_cleanse(buf, sizeof(buf));
	if (err) {
		wire_key_wipe(&k);
		return fail(msg, msglen, err,
			    "key file %s is malformed: expected a line '%s <key-id> <64 hex digits> [tenants=T1,T2]', and at most a second one with another key id (make one with 'tsubame keygen')",
			    path, WIRE_KEY_MAGIC);
	}
	*ret = k;
	wire_key_wipe(&k);
	return 0;
}

static int write_all(int fd, const char *p, size_t len)
{
	ssize_t n;

	while (len) {
		n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= n;
	}
	return 0;
}

int wire_keygen(const char *path, const char *key_id, const char *tenants, char *msg,
		size_t msglen)
{
	static const char hex[] = "0123456789abcdef";
	struct wire_key k = { 0 };
	uint8_t rnd[4];
	char line[WIRE_KEY_ID_MAX + 2 * WIRE_KEY_LEN + WIRE_TENANTS_MAX + 64];
	size_t i, n;
	int fd, err;

	if (tenants && (!*tenants || !wire_tenants_valid(tenants, strlen(tenants))))
		return fail(msg, msglen, -EINVAL,
			    "tenants must be a comma-separated list of names of 1 to %d printable characters without spaces or commas (%d characters in all at most)",
			    WIRE_MAX_ID, WIRE_TENANTS_MAX);
	if (key_id) {
		if (!key_id_ok(key_id, strlen(key_id)))
			return fail(msg, msglen, -EINVAL,
				    "key id must be 1 to %d printable characters without spaces",
				    WIRE_KEY_ID_MAX);
		snprintf(k.id, sizeof(k.id), "%s", key_id);
	} else {
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			return fail(msg, msglen, -EIO,
				    "cannot get random bytes from OpenSSL");
		snprintf(k.id, sizeof(k.id), "tsb-%02x%02x%02x%02x", rnd[0],
			 rnd[1], rnd[2], rnd[3]);
	}
	if (RAND_priv_bytes(k.secret, sizeof(k.secret)) != 1)
		return fail(msg, msglen, -EIO,
			    "cannot get random bytes from OpenSSL");
	n = (size_t)snprintf(line, sizeof(line), "%s %s ", WIRE_KEY_MAGIC, k.id);
	for (i = 0; i < WIRE_KEY_LEN; i++) {
		line[n++] = hex[k.secret[i] >> 4];
		line[n++] = hex[k.secret[i] & 15];
	}
	if (tenants && *tenants)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " %s%s", TENANTS_FIELD, tenants);
	line[n++] = '\n';
	wire_key_wipe(&k);

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
		  0600);
	if (fd < 0) {
		err = -errno;
		OPENSSL_cleanse(line, sizeof(line));
		if (err == -EEXIST)
			return fail(msg, msglen, err,
				    "%s already exists; refusing to overwrite a key",
				    path);
		return fail(msg, msglen, err, "cannot create key file %s: %s",
			    path, strerror(-err));
	}
	/* The umask can only make it stricter; make sure it is exactly 0600. */
	err = fchmod(fd, 0600) < 0 ? -errno : 0;
	if (!err)
		err = write_all(fd, line, n);
	if (!err && fsync(fd) < 0)
		err = -errno;
	OPENSSL_cleanse(line, sizeof(line));
	if (close(fd) < 0 && !err)
		err = -errno;
	if (err) {
		(void)unlink(path);
		return fail(msg, msglen, err, "cannot write key file %s: %s",
			    path, strerror(-err));
	}
	return 0;
}
