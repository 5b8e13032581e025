/* TCP helpers for the WAN transport. */
#include "wire/tls.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/util.h"

static int gai_errno(int rc)
{
	switch (rc) {
	case EAI_SYSTEM:
		return -errno;
	case EAI_MEMORY:
		return -ENOMEM;
	case EAI_NONAME:
	case EAI_NODATA:
		return -ENOENT;
	case EAI_AGAIN:
		return -EAGAIN;
	default:
		return -EINVAL;
	}
}

int wire_tcp_listen(const char *host, const char *port, int backlog,
		    int *ret_fd)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
		.ai_flags = AI_PASSIVE,
	};
	struct addrinfo *res, *ai;
	int fd = -1, err = -EADDRNOTAVAIL, rc, one = 1;

	if (host && !host[0])
		host = NULL;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc)
		return gai_errno(rc);
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				 sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, backlog) == 0)
			break;
		err = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return err;
	*ret_fd = fd;
	return 0;
}

int wire_tcp_local_port(int fd, uint16_t *ret_port)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -errno;
	if (ss.ss_family == AF_INET)
		*ret_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
	else if (ss.ss_family == AF_INET6)
		*ret_port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	else
		return -EAFNOSUPPORT;
	return 0;
}

int wire_tcp_accept(int lfd, int *ret_fd)
{
	int fd;

	do
		fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	while (fd < 0 && errno == EINTR);
	if (fd < 0)
		return -errno;
	*ret_fd = fd;
	return 0;
}

/* Connects fd to addr within timeout_ms (<= 0: blocking connect). */
static int connect_timeout(int fd, const struct sockaddr *addr,
			   socklen_t len, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	socklen_t sl = sizeof(int);
	int err, soerr = 0, r;

	if (timeout_ms <= 0)
		return connect(fd, addr, len) < 0 ? -errno : 0;
	err = tsb_set_nonblock(fd, true);
	if (err)
		return err;
	if (connect(fd, addr, len) == 0)
		return tsb_set_nonblock(fd, false);
	if (errno != EINPROGRESS)
		return -errno;
	do
		r = poll(&pfd, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r == 0)
		return -ETIMEDOUT;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
		return -errno;
	if (soerr)
		return -soerr;
	return tsb_set_nonblock(fd, false);
}

int wire_tcp_connect(const char *host, const char *port, int timeout_ms,
		     int *ret_fd, char *msg, size_t msglen)
{
	struct addrinfo hints = {
		.ai_family = AF_UNSPEC,
		.ai_socktype = SOCK_STREAM,
	};
	struct addrinfo *res, *ai;
	int fd = -1, err = -EADDRNOTAVAIL, rc;

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		if (msg && msglen)
			snprintf(msg, msglen, "cannot resolve %s port %s: %s",
				 host, port, gai_strerror(rc));
		return gai_errno(rc);
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			err = -errno;
			continue;
		}
		err = connect_timeout(fd, ai->ai_addr, ai->ai_addrlen,
				      timeout_ms);
		if (!err)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		if (msg && msglen)
			snprintf(msg, msglen, "cannot connect to %s port %s: %s",
				 host, port, strerror(-err));
		return err;
	}
	*ret_fd = fd;
	return 0;
}

int wire_tcp_tune(int fd, int bufsize)
{
	int one = 1;

	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		return -errno;
	if (bufsize > 0) {
		if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize,
			       sizeof(bufsize)) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize,
			       sizeof(bufsize)) < 0)
			return -errno;
	}
	return 0;
}
