/* Pieces both ends of the proxy use. */
#include "proxy/internal.h"

#include "common/log.h"
#include "qmp/qmp.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int proxy_write_all(int fd, const void *p, size_t n)
{
	const uint8_t *b = p;
	ssize_t w;

	while (n) {
		w = write(fd, b, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		b += w;
		n -= w;
	}
	return 0;
}

int proxy_qemu_socket(struct qmp *q, int *ret_fd, char *errbuf, size_t errlen)
{
	json_t *args;
	int sv[2], r;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	args = json_pack("{s:s}", "fdname", PROXY_FDNAME);
	r = qmp_execute_fd(q, "getfd", args, sv[1], NULL, errbuf, errlen);
	json_decref(args);
	close(sv[1]);
	if (r < 0) {
		close(sv[0]);
		return r;
	}
	*ret_fd = sv[0];
	return 0;
}

int proxy_tls_setup(const struct proxy_common_options *o, enum wire_tls_side side,
		    struct wire_tls **ret, char *msg, size_t msglen)
{
	struct wire_tls *t = wire_tls_new(side);
	struct wire_key key;
	int r;

	if (!t)
		return -ENOMEM;
	if (o->key_path) {
		r = wire_key_load(o->key_path, &key, msg, msglen);
		if (r == 0) {
			r = wire_tls_set_psk(t, &key);
			wire_key_wipe(&key);
		}
	} else if (o->cert && o->cert_key && o->ca) {
		r = wire_tls_set_certs(t, o->cert, o->cert_key, o->ca, msg, msglen);
	} else {
		snprintf(msg, msglen, "no key: give --key FILE (see 'tsubame keygen') "
			 "or --cert, --cert-key and --ca");
		r = -EINVAL;
	}
	if (r < 0) {
		wire_tls_free(t);
		return r;
	}
	*ret = t;
	return 0;
}

/*
 * Every migration running in this process (one, or a group's) has a flag
 * that SIGINT and SIGTERM set; one that starts after a signal sees it too.
 */
#define MAX_SIGNAL_FLAGS 512
static volatile int *volatile signal_flags[MAX_SIGNAL_FLAGS];
static volatile sig_atomic_t caught_signal;
static pthread_mutex_t signal_mu = PTHREAD_MUTEX_INITIALIZER;

static void on_signal(int sig)
{
	caught_signal = sig;
	for (size_t i = 0; i < MAX_SIGNAL_FLAGS; i++) {
		volatile int *f = signal_flags[i];

		if (f)
			*f = sig;
	}
}

void proxy_catch_signals(volatile int *flag)
{
	struct sigaction sa = { .sa_handler = on_signal };
	size_t i;

	pthread_mutex_lock(&signal_mu);
	for (i = 0; i < MAX_SIGNAL_FLAGS && signal_flags[i]; i++)
		;
	if (i < MAX_SIGNAL_FLAGS)
		signal_flags[i] = flag;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_unlock(&signal_mu);
	if (caught_signal)
		*flag = caught_signal;
}

void proxy_release_signals(volatile int *flag)
{
	pthread_mutex_lock(&signal_mu);
	for (size_t i = 0; i < MAX_SIGNAL_FLAGS; i++)
		if (signal_flags[i] == flag)
			signal_flags[i] = NULL;
	pthread_mutex_unlock(&signal_mu);
}

int proxy_caught_signal(void)
{
	return caught_signal;
}

enum proxy_outcome proxy_outcome_of_errno(int err)
{
	switch (err) {
	case -EACCES:
	case -ECONNREFUSED:
		return PROXY_AUTH;
	case -EOPNOTSUPP:
		return PROXY_UNSUPPORTED;
	/*
	 * A peer that stays silent past --stall-timeout is a lost link, not
	 * the whole migration's --timeout (which callers name themselves).
	 */
	case -ETIMEDOUT:
	case -ECONNRESET:
	case -EPIPE:
	case -EPROTO:
	case -EBADMSG:
	case -EHOSTUNREACH:
	case -ENETUNREACH:
		return PROXY_LINK;
	default:
		return PROXY_FAILED;
	}
}

const char *proxy_outcome_name(enum proxy_outcome o)
{
	static const char *const names[] = {
		[PROXY_OK] = "ok",
		[PROXY_FAILED] = "failed",
		[PROXY_LINK] = "link-lost",
		[PROXY_AUTH] = "auth-failed",
		[PROXY_TIMEOUT] = "timeout",
		[PROXY_INTERRUPTED] = "interrupted",
		[PROXY_UNSUPPORTED] = "unsupported",
		[PROXY_IN_DOUBT] = "in-doubt",
	};

	return o < sizeof(names) / sizeof(names[0]) ? names[o] : "?";
}

int proxy_write_report(const char *path, json_t *report)
{
	if (!path || !report)
		return 0;
	if (json_dump_file(report, path, JSON_INDENT(2)) < 0)
		return -EIO;
	return 0;
}
