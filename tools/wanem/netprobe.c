/*
 * tsubame-netprobe: measures throughput and round-trip time of a TCP path,
 * used to check tsubame-wanem's emulated links.
 *
 *   server --listen HOST:PORT    sink, source and echo server
 *   send   --connect HOST:PORT   client to server throughput, measured by
 *                                the server as bytes arrive
 *   recv   --connect HOST:PORT   server to client throughput, measured here
 *   ping   --connect HOST:PORT   RTT of small ping-pong messages
 *
 * Each client prints one line of key=value pairs on stdout; first_ns and
 * last_ns are CLOCK_MONOTONIC times of the first and last byte received,
 * comparable between processes on one host. A connection
 * starts with one text line naming what it wants: "SINK <warmup_ms>",
 * "SOURCE <ms>" or "ECHO".
 */
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (64 * 1024)
#define HEADER_MAX 64
#define PING_SIZE_MAX (64 * 1024)
#define PING_COUNT_MAX 1000000
#define IO_TIMEOUT_S 30

struct meter {
	uint64_t warm_ns;
	uint64_t bytes, bytes_snap;
	uint64_t t_first, t_snap, t_last;
	bool snapped;
};

static void meter_add(struct meter *m, uint64_t n, uint64_t now)
{
	if (!m->bytes)
		m->t_first = now;
	m->bytes += n;
	m->t_last = now;
	if (!m->snapped && now >= m->t_first + m->warm_ns) {
		m->snapped = true;
		m->t_snap = now;
		m->bytes_snap = m->bytes;
	}
}

/* Bytes/s between the end of the warm-up and the last byte; 0 if unknown. */
static double meter_rate(const struct meter *m)
{
	if (!m->snapped || m->t_last <= m->t_snap)
		return 0;
	return (double)(m->bytes - m->bytes_snap) * 1e9 /
	       (double)(m->t_last - m->t_snap);
}

static double meter_span(const struct meter *m)
{
	return m->snapped ? (m->t_last - m->t_snap) / 1e9 : 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= n;
	}
	return 0;
}

/* Reads exactly len bytes; -ECONNRESET on early EOF. */
static int read_all(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= n;
	}
	return 0;
}

/* Reads one '\n'-terminated line of at most len - 1 bytes, without the '\n'. */
static int read_line(int fd, char *line, size_t len, uint64_t *count)
{
	size_t i = 0;

	for (;;) {
		char ch;
		ssize_t n = read(fd, &ch, 1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		(*count)++;
		if (ch == '\n')
			break;
		if (i + 1 >= len)
			return -EMSGSIZE;
		line[i++] = ch;
	}
	line[i] = '\0';
	return 0;
}

static void set_timeouts(int fd)
{
	struct timeval tv = { .tv_sec = IO_TIMEOUT_S };

	(void)setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

static int resolve(const char *spec, bool passive, struct addrinfo **ret)
{
	char host[256], port[32];
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM };
	int r;

	if (tsb_split_hostport(spec, host, sizeof(host), port, sizeof(port)) < 0) {
		fprintf(stderr, "tsubame-netprobe: invalid address '%s' (want HOST:PORT); try --help\n",
			spec);
		return -EINVAL;
	}
	if (passive)
		hints.ai_flags = AI_PASSIVE;
	r = getaddrinfo(host[0] ? host : NULL, port, &hints, ret);
	if (r) {
		fprintf(stderr, "tsubame-netprobe: cannot resolve '%s': %s\n",
			spec, gai_strerror(r));
		return -EHOSTUNREACH;
	}
	return 0;
}

static int dial(const char *spec)
{
	struct addrinfo *ai;
	int fd, one = 1;

	if (resolve(spec, false, &ai) < 0)
		return -1;
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		fprintf(stderr, "tsubame-netprobe: cannot connect to %s: %s\n",
			spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return -1;
	}
	freeaddrinfo(ai);
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	set_timeouts(fd);
	return fd;
}

/* ---- server ---- */

static void serve_sink(int fd, uint64_t warm_ms)
{
	static __thread unsigned char buf[BUF_SIZE];
	struct meter m = { .warm_ns = warm_ms * 1000000ull };
	char reply[256];
	ssize_t n;

	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		meter_add(&m, n, tsb_now_ns());
	}
	if (n < 0)
		return;
	snprintf(reply, sizeof(reply),
		 "received=%llu rate=%.1f span=%.3f first_ns=%llu last_ns=%llu\n",
		 (unsigned long long)m.bytes, meter_rate(&m), meter_span(&m),
		 (unsigned long long)m.t_first, (unsigned long long)m.t_last);
	(void)write_all(fd, reply, strlen(reply));
}

static void serve_source(int fd, uint64_t ms)
{
	static __thread unsigned char buf[BUF_SIZE];
	uint64_t end = tsb_now_ns() + ms * 1000000ull;

	memset(buf, 'd', sizeof(buf));
	while (tsb_now_ns() < end)
		if (write_all(fd, buf, sizeof(buf)) < 0)
			return;
	(void)shutdown(fd, SHUT_WR);
	/* Wait for the client's end so it sees every byte before a close. */
	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

static void serve_echo(int fd)
{
	static __thread unsigned char buf[BUF_SIZE];
	ssize_t n;

	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return;
		if (write_all(fd, buf, n) < 0)
			return;
	}
}

static void *serve_conn(void *arg)
{
	int fd = (int)(intptr_t)arg;
	char line[HEADER_MAX];
	uint64_t count = 0, v;

	set_timeouts(fd);
	if (read_line(fd, line, sizeof(line), &count) < 0)
		goto out;
	if (!strncmp(line, "SINK ", 5) &&
	    !tsb_parse_u64(line + 5, 0, 3600000, &v))
		serve_sink(fd, v);
	else if (!strncmp(line, "SOURCE ", 7) &&
		 !tsb_parse_u64(line + 7, 0, 3600000, &v))
		serve_source(fd, v);
	else if (!strcmp(line, "ECHO"))
		serve_echo(fd);
	else
		fprintf(stderr, "tsubame-netprobe: bad request line\n");
out:
	close(fd);
	return NULL;
}

static int write_port_file(const char *path, int port)
{
	char tmp[4096];
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	if (!f)
		return -errno;
	fprintf(f, "%d\n", port);
	if (fclose(f) != 0 || rename(tmp, path) < 0)
		return -errno;
	return 0;
}

static int cmd_server(const char *listen_spec, const char *port_file)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	struct addrinfo *ai;
	char port[16];
	int lfd, one = 1;

	if (resolve(listen_spec, true, &ai) < 0)
		return 2;
	lfd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (lfd < 0) {
		freeaddrinfo(ai);
		return 1;
	}
	(void)setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(lfd, 64) < 0) {
		fprintf(stderr, "tsubame-netprobe: cannot listen on %s: %s\n",
			listen_spec, strerror(errno));
		freeaddrinfo(ai);
		close(lfd);
		return 1;
	}
	freeaddrinfo(ai);
	if (getsockname(lfd, (struct sockaddr *)&ss, &len) < 0 ||
	    getnameinfo((struct sockaddr *)&ss, len, NULL, 0, port,
			sizeof(port), NI_NUMERICSERV)) {
		close(lfd);
		return 1;
	}
	if (port_file && write_port_file(port_file, atoi(port)) < 0) {
		fprintf(stderr, "tsubame-netprobe: cannot write %s\n", port_file);
		close(lfd);
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	for (;;) {
		pthread_attr_t attr;
		pthread_t th;
		int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			fprintf(stderr, "tsubame-netprobe: accept: %s\n",
				strerror(errno));
			sleep(1);
			continue;
		}
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		pthread_attr_init(&attr);
		pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &attr, serve_conn, (void *)(intptr_t)fd))
			close(fd);
		pthread_attr_destroy(&attr);
	}
}

/* ---- clients ---- */

static int fail(const char *what, int err)
{
	fprintf(stderr, "tsubame-netprobe: %s: %s\n", what,
		err == -ECONNRESET ? "connection reset or closed" :
		strerror(-err));
	return 1;
}

static int cmd_send(const char *spec, double seconds, double warmup)
{
	static unsigned char buf[BUF_SIZE];
	uint64_t sent = 0, wire_sent, wire_recv = 0, t0, t_end, t_reply, dur;
	char hdr[HEADER_MAX], reply[256];
	int fd, r;

	fd = dial(spec);
	if (fd < 0)
		return 1;
	memset(buf, 's', sizeof(buf));
	snprintf(hdr, sizeof(hdr), "SINK %llu\n",
		 (unsigned long long)(warmup * 1000));
	r = write_all(fd, hdr, strlen(hdr));
	if (r < 0)
		return fail("send", r);
	wire_sent = strlen(hdr);
	dur = (uint64_t)(seconds * 1e9);
	t0 = tsb_now_ns();
	do {
		r = write_all(fd, buf, sizeof(buf));
		if (r < 0)
			return fail("send", r);
		sent += sizeof(buf);
		t_end = tsb_now_ns();
	} while (t_end - t0 < dur);
	if (shutdown(fd, SHUT_WR) < 0)
		return fail("shutdown", -errno);
	r = read_line(fd, reply, sizeof(reply), &wire_recv);
	if (r < 0)
		return fail("reading the sink's report", r);
	t_reply = tsb_now_ns();
	close(fd);
	wire_sent += sent;
	printf("mode=send sent=%llu wire_sent=%llu wire_received=%llu "
	       "write_seconds=%.3f sender_rate=%.1f total_seconds=%.3f %s\n",
	       (unsigned long long)sent, (unsigned long long)wire_sent,
	       (unsigned long long)wire_recv, (t_end - t0) / 1e9,
	       sent * 1e9 / (double)(t_end - t0), (t_reply - t0) / 1e9, reply);
	return 0;
}

static int cmd_recv(const char *spec, double seconds, double warmup)
{
	static unsigned char buf[BUF_SIZE];
	struct meter m = { .warm_ns = (uint64_t)(warmup * 1e9) };
	char hdr[HEADER_MAX];
	ssize_t n;
	int fd, r;

	fd = dial(spec);
	if (fd < 0)
		return 1;
	snprintf(hdr, sizeof(hdr), "SOURCE %llu\n",
		 (unsigned long long)(seconds * 1000));
	r = write_all(fd, hdr, strlen(hdr));
	if (r < 0)
		return fail("send", r);
	for (;;) {
		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail("recv", -errno);
		if (n == 0)
			break;
		meter_add(&m, n, tsb_now_ns());
	}
	close(fd);
	printf("mode=recv wire_sent=%zu wire_received=%llu received=%llu "
	       "rate=%.1f span=%.3f\n", strlen(hdr),
	       (unsigned long long)m.bytes, (unsigned long long)m.bytes,
	       meter_rate(&m), meter_span(&m));
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static int cmd_ping(const char *spec, uint64_t count, uint64_t size,
		    uint64_t interval_ms)
{
	unsigned char *out, *in;
	uint64_t *rtt, i, wire_sent, wire_recv = 0;
	const char *hdr = "ECHO\n";
	int fd, r, ret = 1;

	out = malloc(size);
	in = malloc(size);
	rtt = calloc(count, sizeof(*rtt));
	if (!out || !in || !rtt) {
		fprintf(stderr, "tsubame-netprobe: out of memory\n");
		goto out_free;
	}
	fd = dial(spec);
	if (fd < 0)
		goto out_free;
	r = write_all(fd, hdr, strlen(hdr));
	if (r < 0) {
		fail("ping", r);
		goto out_close;
	}
	wire_sent = strlen(hdr);
	for (i = 0; i < count; i++) {
		uint64_t t0;

		memset(out, (int)(i & 0xff), size);
		t0 = tsb_now_ns();
		r = write_all(fd, out, size);
		if (r < 0) {
			fail("ping write", r);
			goto out_close;
		}
		r = read_all(fd, in, size);
		if (r < 0) {
			fail("ping read", r);
			goto out_close;
		}
		rtt[i] = tsb_now_ns() - t0;
		wire_sent += size;
		wire_recv += size;
		if (memcmp(in, out, size)) {
			fprintf(stderr, "tsubame-netprobe: ping %llu: echo differs\n",
				(unsigned long long)i);
			goto out_close;
		}
		if (interval_ms) {
			struct timespec ts = {
				.tv_sec = interval_ms / 1000,
				.tv_nsec = (interval_ms % 1000) * 1000000,
			};

			nanosleep(&ts, NULL);
		}
	}
	shutdown(fd, SHUT_WR);
	qsort(rtt, count, sizeof(*rtt), cmp_u64);
	printf("mode=ping count=%llu wire_sent=%llu wire_received=%llu "
	       "min_us=%.1f median_us=%.1f p90_us=%.1f max_us=%.1f\n",
	       (unsigned long long)count, (unsigned long long)wire_sent,
	       (unsigned long long)wire_recv, rtt[0] / 1e3,
	       rtt[count / 2] / 1e3, rtt[count * 9 / 10] / 1e3,
	       rtt[count - 1] / 1e3);
	ret = 0;
out_close:
	close(fd);
out_free:
	free(out);
	free(in);
	free(rtt);
	return ret;
}

static void usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame-netprobe MODE [OPTIONS]\n"
"\n"
"Measures a TCP path (used to check tsubame-wanem). Modes:\n"
"  server --listen HOST:PORT [--port-file FILE]\n"
"         sink/source/echo server; port 0 picks one, written to FILE\n"
"  send   --connect HOST:PORT [--seconds S] [--warmup S]\n"
"         send for S seconds (default 3); the server measures the rate\n"
"         after the first S of warm-up (default 0.25)\n"
"  recv   --connect HOST:PORT [--seconds S] [--warmup S]\n"
"         the server sends for S seconds; measured here\n"
"  ping   --connect HOST:PORT [--count N] [--size BYTES] [--interval MS]\n"
"         N ping-pongs of BYTES (default 20 of 64 bytes)\n"
"\n"
"Clients print one line of key=value pairs (rates in bytes/s).\n"
"Exit status: 0 ok, 1 failed, 2 usage error.\n");
}

static int usage_error(const char *msg, const char *arg)
{
	fprintf(stderr, "tsubame-netprobe: %s '%s'; try 'tsubame-netprobe --help'\n",
		msg, arg);
	return 2;
}

static int parse_seconds(const char *s, double *ret)
{
	uint64_t ns;

	if (tsb_parse_duration(s, &ns) < 0 || ns > 3600ull * 1000000000)
		return -EINVAL;
	/* A bare number means seconds here. */
	if (strspn(s, "0123456789.") == strlen(s))
		*ret = ns / 1e6;
	else
		*ret = ns / 1e9;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "connect", required_argument, NULL, 'c' },
		{ "port-file", required_argument, NULL, 'P' },
		{ "seconds", required_argument, NULL, 't' },
		{ "warmup", required_argument, NULL, 'w' },
		{ "count", required_argument, NULL, 'n' },
		{ "size", required_argument, NULL, 's' },
		{ "interval", required_argument, NULL, 'i' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *mode, *listen_spec = NULL, *connect_spec = NULL;
	const char *port_file = NULL;
	double seconds = 3, warmup = 0.25;
	uint64_t count = 20, size = 64, interval = 0;
	int opt;

	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	mode = argv[1];
	optind = 2;
	while ((opt = getopt_long(argc, argv, "l:c:t:n:h", opts, NULL)) != -1) {
		switch (opt) {
		case 'l':
			listen_spec = optarg;
			break;
		case 'c':
			connect_spec = optarg;
			break;
		case 'P':
			port_file = optarg;
			break;
		case 't':
			if (parse_seconds(optarg, &seconds) < 0 || seconds <= 0)
				return usage_error("invalid --seconds", optarg);
			break;
		case 'w':
			if (parse_seconds(optarg, &warmup) < 0)
				return usage_error("invalid --warmup", optarg);
			break;
		case 'n':
			if (tsb_parse_u64(optarg, 1, PING_COUNT_MAX, &count) < 0)
				return usage_error("invalid --count", optarg);
			break;
		case 's':
			if (tsb_parse_u64(optarg, 1, PING_SIZE_MAX, &size) < 0)
				return usage_error("invalid --size", optarg);
			break;
		case 'i':
			if (tsb_parse_u64(optarg, 0, 60000, &interval) < 0)
				return usage_error("invalid --interval", optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			fprintf(stderr, "try 'tsubame-netprobe --help'\n");
			return 2;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument", argv[optind]);
	if (!strcmp(mode, "server")) {
		if (!listen_spec)
			return usage_error("server needs --listen", "");
		return cmd_server(listen_spec, port_file);
	}
	if (strcmp(mode, "send") && strcmp(mode, "recv") && strcmp(mode, "ping"))
		return usage_error("unknown mode", mode);
	if (!connect_spec)
		return usage_error("missing --connect for", mode);
	signal(SIGPIPE, SIG_IGN);
	if (!strcmp(mode, "send"))
		return cmd_send(connect_spec, seconds, warmup);
	if (!strcmp(mode, "recv"))
		return cmd_recv(connect_spec, seconds, warmup);
	return cmd_ping(connect_spec, count, size, interval);
}
