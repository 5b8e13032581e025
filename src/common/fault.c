/* Test-only fault injection (fault.h). */
#include "common/fault.h"
#include "common/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static pthread_mutex_t fault_lock = PTHREAD_MUTEX_INITIALIZER;
static char fired[512];	/* ",point,point," of points already fired */

/* Is point one of the comma-separated names in list? */
static bool listed(const char *list, const char *point)
{
	size_t n = strlen(point);
	const char *p = list;

	while ((p = strstr(p, point))) {
		if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == '\0'))
			return true;
		p += n;
	}
	return false;
}

static int run_command(const char *cmd)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	return WIFEXITED(status) ? WEXITSTATUS(status) : -EINTR;
}

void tsb_fault_point(const char *point)
{
	const char *at = getenv("TSUBAME_FAULT_AT");
	const char *cmd = getenv("TSUBAME_FAULT_CMD");
	size_t len;

	if (!at || !cmd || !listed(at, point))
		return;
	pthread_mutex_lock(&fault_lock);
	if (listed(fired, point)) {
		pthread_mutex_unlock(&fault_lock);
		return;
	}
	len = strlen(fired);
	if (len + strlen(point) + 2 < sizeof(fired))
		snprintf(fired + len, sizeof(fired) - len, "%s%s,", len ? "" : ",", point);
	pthread_mutex_unlock(&fault_lock);
	log_notice("fault injection at '%s': running %s", point, cmd);
	log_notice("fault injection at '%s': command exited %d", point, run_command(cmd));
}
