/* Logging to stderr with levels; components log at debug and return errors. */
#ifndef TSB_LOG_H
#define TSB_LOG_H

#include <stdbool.h>

enum tsb_log_level {
	TSB_LOG_ERROR,
	TSB_LOG_WARN,
	TSB_LOG_NOTICE,
	TSB_LOG_INFO,
	TSB_LOG_DEBUG,
};

/* Messages above this level are dropped. Default: TSB_LOG_NOTICE. */
void tsb_log_set_level(enum tsb_log_level level);
enum tsb_log_level tsb_log_get_level(void);
/* Prefix every line with this name (e.g. "send"); the string must outlive the log. */
void tsb_log_set_prefix(const char *prefix);

/*
 * This thread's lines also name tag (e.g. a VM of a group), after the
 * prefix; NULL for none. The string must outlive the thread's logging.
 * tsb_thread_create() hands the tag on to the threads a thread starts.
 */
void tsb_log_set_thread_tag(const char *tag);
const char *tsb_log_thread_tag(void);

void tsb_log(enum tsb_log_level level, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Logs fmt plus strerror(-err) and returns err (a negative errno). */
int tsb_log_errno(enum tsb_log_level level, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_error(...) tsb_log(TSB_LOG_ERROR, __VA_ARGS__)
#define log_warn(...) tsb_log(TSB_LOG_WARN, __VA_ARGS__)
#define log_notice(...) tsb_log(TSB_LOG_NOTICE, __VA_ARGS__)
#define log_info(...) tsb_log(TSB_LOG_INFO, __VA_ARGS__)
#define log_debug(...) tsb_log(TSB_LOG_DEBUG, __VA_ARGS__)
#define log_error_errno(err, ...) tsb_log_errno(TSB_LOG_ERROR, (err), __VA_ARGS__)
#define log_debug_errno(err, ...) tsb_log_errno(TSB_LOG_DEBUG, (err), __VA_ARGS__)

#endif
