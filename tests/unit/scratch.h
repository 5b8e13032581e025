/*
 * Helpers for unit tests that drive real tools (qemu-img, qemu-nbd, QEMU):
 * a scratch directory per test, shell commands, and a check that a tool is
 * installed.
 */
#ifndef TSB_TEST_SCRATCH_H
#define TSB_TEST_SCRATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Makes a fresh directory /tmp/<prefix>.XXXXXX; 0 or -1. */
int scratch_make(const char *prefix);
/* Removes the scratch directory and everything in it. */
void scratch_remove(void);
/* buf = "<scratch>/<name>". */
void scratch_path(char *buf, size_t n, const char *name);

/*
 * Starts a QEMU with no machine and no guest, just a block device
 * (opt "-drive" or "-blockdev" with its value) and QMP on qmp_sock,
 * output to log. Its pid, or -1.
 */
pid_t spawn_bare_qemu(const char *opt, const char *value, const char *qmp_sock,
		      const char *log);

/* True if the tool is on PATH. */
bool have_tool(const char *tool);
/* Runs a shell command; its exit status (printed when not 0), -1 if killed. */
int run_cmd(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
