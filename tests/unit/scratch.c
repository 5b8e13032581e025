#include "scratch.h"

#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

extern char **environ;

static char scratch_dir[128];

int scratch_make(const char *prefix)
{
	snprintf(scratch_dir, sizeof(scratch_dir), "/tmp/%s.XXXXXX", prefix);
	return mkdtemp(scratch_dir) ? 0 : -1;
}

static int remove_one(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb, (void)flag, (void)ftw;
	return remove(p);
}

void scratch_remove(void)
{
	if (scratch_dir[0])
		nftw(scratch_dir, remove_one, 16, FTW_DEPTH | FTW_PHYS);
	scratch_dir[0] = '\0';
}

void scratch_path(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", scratch_dir, name);
}

bool have_tool(const char *tool)
{
	char cmd[256];

	snprintf(cmd, sizeof(cmd), "command -v %s >/dev/null 2>&1", tool);
	return system(cmd) == 0;
}

int run_cmd(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	int st;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	st = system(cmd);
	st = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	if (st)
		fprintf(stderr, "command failed (%d): %s\n", st, cmd);
	return st;
}

pid_t spawn_bare_qemu(const char *opt, const char *value, const char *qmp_sock,
		      const char *log)
{
	char arg_qmp[256];
	char *argv[] = {
		"qemu-system-x86_64", "-machine", "none", "-accel", "tcg", "-nodefaults",
		"-display", "none", (char *)opt, (char *)value, "-qmp", arg_qmp, NULL,
	};
	posix_spawn_file_actions_t fa;
	pid_t pid;
	int r;

	snprintf(arg_qmp, sizeof(arg_qmp), "unix:%s,server=on,wait=off", qmp_sock);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	r = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	return r ? -1 : pid;
}
