#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static enum tsb_log_level current_level = TSB_LOG_NOTICE;
static const char *current_prefix = "tsubame";
/* Which of several migrations in one process a thread works for (group). */
static __thread const char *thread_tag;

static const char *const level_names[] = {
	[TSB_LOG_ERROR] = "error",
	[TSB_LOG_WARN] = "warning",
	[TSB_LOG_NOTICE] = "",
	[TSB_LOG_INFO] = "",
	[TSB_LOG_DEBUG] = "debug",
};

void tsb_log_set_level(enum tsb_log_level level)
{
	current_level = level;
}

enum tsb_log_level tsb_log_get_level(void)
{
	return current_level;
}

void tsb_log_set_prefix(const char *prefix)
{
	current_prefix = prefix;
}

void tsb_log_set_thread_tag(const char *tag)
{
	thread_tag = tag;
}

const char *tsb_log_thread_tag(void)
{
	return thread_tag;
}

/*
 * TSUBAME_LOG_TIME=1 starts each line with the wall clock to the
 * millisecond: the two ends' logs of one host side by side show where a
 * switchover's milliseconds go.
 */
static int stamp(char *buf, size_t len)
{
	const char *e = getenv("TSUBAME_LOG_TIME");
	struct timespec ts;
	struct tm tm;

	if (!e || !*e || !strcmp(e, "0") || clock_gettime(CLOCK_REALTIME, &ts) < 0 || !localtime_r(&ts.tv_sec, &tm))
		return 0;
	return snprintf(buf, len, "%02d:%02d:%02d.%03ld ", tm.tm_hour, tm.tm_min, tm.tm_sec,
			ts.tv_nsec / 1000000);
}

static void log_line(enum tsb_log_level level, const char *fmt, va_list ap,
		     const char *suffix)
{
	char line[2048];
	int n, t;

	t = stamp(line, sizeof(line));
	n = t + snprintf(line + t, sizeof(line) - t, "%s: %s%s%s%s", current_prefix,
		     thread_tag ? thread_tag : "", thread_tag ? ": " : "",
		     level_names[level], level_names[level][0] ? ": " : "");
	if (n < 0 || (size_t)n >= sizeof(line))
		n = 0;
	vsnprintf(line + n, sizeof(line) - n, fmt, ap);
	/* One fputs per line so concurrent threads do not interleave. */
	if (suffix)
		fprintf(stderr, "%s: %s\n", line, suffix);
	else
		fprintf(stderr, "%s\n", line);
}

void tsb_log(enum tsb_log_level level, const char *fmt, ...)
{
	va_list ap;

	if (level > current_level)
		return;
	va_start(ap, fmt);
	log_line(level, fmt, ap, NULL);
	va_end(ap);
}

int tsb_log_errno(enum tsb_log_level level, int err, const char *fmt, ...)
{
	va_list ap;

	if (level > current_level)
		return err;
	va_start(ap, fmt);
	log_line(level, fmt, ap, strerror(err < 0 ? -err : err));
	va_end(ap);
	return err;
}
