#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

int tsb_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *ret)
{
	unsigned long long v;
	char *end;

	if (!s || !*s || *s == '-' || *s == '+' || *s == ' ')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno == ERANGE)
		return -ERANGE;
	if (end == s || *end)
		return -EINVAL;
	if (v < min || v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

/* Parses a non-negative decimal with optional fraction and returns the rest. */
static int parse_number_prefix(const char *s, double *ret, const char **rest)
{
	char *end;
	double v;

	if (!s || !*s || !((*s >= '0' && *s <= '9') || *s == '.'))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || !isfinite(v) || v < 0)
		return -EINVAL;
	*ret = v;
	*rest = end;
	return 0;
}

int tsb_parse_size(const char *s, uint64_t *ret)
{
	const char *rest;
	double v, mult = 1;
	int r;

	r = parse_number_prefix(s, &v, &rest);
	if (r < 0)
		return r;
	if (!strcasecmp(rest, "") || !strcasecmp(rest, "b"))
		mult = 1;
	else if (!strcasecmp(rest, "k") || !strcasecmp(rest, "kib") || !strcasecmp(rest, "kb"))
		mult = 1024.0;
	else if (!strcasecmp(rest, "m") || !strcasecmp(rest, "mib") || !strcasecmp(rest, "mb"))
		mult = 1024.0 * 1024;
	else if (!strcasecmp(rest, "g") || !strcasecmp(rest, "gib") || !strcasecmp(rest, "gb"))
		mult = 1024.0 * 1024 * 1024;
	else
		return -EINVAL;
	v *= mult;
	if (v > (double)UINT64_MAX / 2)
		return -ERANGE;
	*ret = (uint64_t)v;
	return 0;
}

int tsb_parse_rate(const char *s, uint64_t *ret_bytes_per_sec)
{
	static const struct {
		const char *suffix;
		double mult;
	} units[] = {
		{ "", 1 }, { "bps", 1.0 / 8 }, { "kbit", 1e3 / 8 }, { "mbit", 1e6 / 8 },
		{ "gbit", 1e9 / 8 }, { "b", 1 }, { "kb", 1e3 }, { "mb", 1e6 },
		{ "gb", 1e9 }, { "kib", 1024.0 }, { "mib", 1024.0 * 1024 },
		{ "gib", 1024.0 * 1024 * 1024 },
	};
	const char *rest;
	double v;
	size_t i;
	int r;

	r = parse_number_prefix(s, &v, &rest);
	if (r < 0)
		return r;
	for (i = 0; i < TSB_ARRAY_SIZE(units); i++) {
		if (!strcasecmp(rest, units[i].suffix)) {
			v *= units[i].mult;
			if (v > 1e15)
				return -ERANGE;
			*ret_bytes_per_sec = (uint64_t)(v + 0.5);
			return 0;
		}
	}
	return -EINVAL;
}

int tsb_parse_duration(const char *s, uint64_t *ret_ns)
{
	const char *rest;
	double v;
	int r;

	r = parse_number_prefix(s, &v, &rest);
	if (r < 0)
		return r;
	if (!*rest || !strcmp(rest, "ms"))
		v *= 1e6;
	else if (!strcmp(rest, "s"))
		v *= 1e9;
	else if (!strcmp(rest, "us"))
		v *= 1e3;
	else if (!strcmp(rest, "ns"))
		v *= 1;
	else
		return -EINVAL;
	if (v > 1e15)
		return -ERANGE;
	*ret_ns = (uint64_t)v;
	return 0;
}

uint64_t tsb_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

uint64_t tsb_wall_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

int tsb_set_nonblock(int fd, bool on)
{
	int flags = fcntl(fd, F_GETFL);

	if (flags < 0)
		return -errno;
	flags = on ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
	if (fcntl(fd, F_SETFL, flags) < 0)
		return -errno;
	return 0;
}

int tsb_split_hostport(const char *s, char *host, size_t host_len,
		       char *port, size_t port_len)
{
	const char *colon, *hstart = s, *hend;

	if (!s)
		return -EINVAL;
	if (*s == '[') {
		hstart = s + 1;
		hend = strchr(hstart, ']');
		if (!hend || hend[1] != ':')
			return -EINVAL;
		colon = hend + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hend = colon;
	}
	if ((size_t)(hend - hstart) >= host_len || strlen(colon + 1) >= port_len ||
	    !colon[1])
		return -EINVAL;
	memcpy(host, hstart, hend - hstart);
	host[hend - hstart] = '\0';
	strcpy(port, colon + 1);
	return 0;
}
