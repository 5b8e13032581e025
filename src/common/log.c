#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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

static void log_line(enum tsb_log_level level, const char *fmt, va_list ap,
		     const char *suffix)
{
	char line[2048];
	int n;

	n = snprintf(line, sizeof(line), "%s: %s%s%s%s", current_prefix,
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
