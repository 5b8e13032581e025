/* Client side of the agent's control socket: one request, one reply line. */
#include "net/net.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

int mob_ctl_call(const char *path, json_t *req, unsigned timeout_ms, json_t **ret_reply,
		 char *err, size_t errlen)
{
	struct sockaddr_un sun;
	char buf[65536];
	size_t len = 0;
	json_t *rep = NULL;
	char *s = json_dumps(req, JSON_COMPACT);
	int fd = -1, r = -EIO;

	json_decref(req);
	*ret_reply = NULL;
	if (!s)
		return -ENOMEM;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "agent socket path too long: %s", path);
		r = -ENAMETOOLONG;
		goto out;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, strlen(path));
	if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot reach the agent at %s: %s", path, strerror(errno));
		goto out;
	}
	if (write(fd, s, strlen(s)) < 0 || write(fd, "\n", 1) != 1) {
		r = -errno;
		snprintf(err, errlen, "write to %s: %s", path, strerror(errno));
		goto out;
	}
	for (;;) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		ssize_t n;

		if (poll(&p, 1, (int)timeout_ms) <= 0) {
			snprintf(err, errlen, "no reply from the agent at %s", path);
			r = -ETIMEDOUT;
			goto out;
		}
		n = read(fd, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0) {
			snprintf(err, errlen, "the agent at %s closed the connection", path);
			r = -ECONNRESET;
			goto out;
		}
		len += (size_t)n;
		if (memchr(buf, '\n', len) || len == sizeof(buf) - 1)
			break;
	}
	buf[len] = '\0';
	rep = json_loads(buf, JSON_DISABLE_EOF_CHECK, NULL);
	if (!rep) {
		snprintf(err, errlen, "the agent at %s sent a reply that is not JSON", path);
		r = -EBADMSG;
		goto out;
	}
	if (!json_is_true(json_object_get(rep, "ok"))) {
		const char *e = json_string_value(json_object_get(rep, "error"));

		snprintf(err, errlen, "%s", e ? e : "the agent refused the request");
		r = -EREMOTEIO;
	} else {
		r = 0;
	}
	*ret_reply = rep;
out:
	if (fd >= 0)
		close(fd);
	free(s);
	return r;
}
