/*
 * QMP client against a real QEMU (-machine none: no guest, starts at once),
 * skipped when qemu-system-x86_64 is missing; plus a scripted server in a
 * thread for what QEMU never does (oversized, malformed, late replies).
 * Every QEMU is killed by pid at the end of its test.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <dirent.h>

#include "common/util.h"
#include "qmp/qmp.h"

extern char **environ;

static char tmpdir[64];
static pid_t qemu_pid = -1;

static const char *qemu_bin(void)
{
	const char *q = getenv("TSB_QEMU");

	return q && *q ? q : "qemu-system-x86_64";
}

static bool have_qemu(void)
{
	char cmd[PATH_MAX + 64];

	snprintf(cmd, sizeof(cmd), "command -v '%s' >/dev/null 2>&1",
		 qemu_bin());
	return system(cmd) == 0;
}

/* Starts a guestless QEMU with QMP at <tmpdir>/<name>.sock. */
static void start_qemu(const char *name, char *sock, size_t len)
{
	char qmparg[PATH_MAX + 64];
	char *argv[] = {
		(char *)qemu_bin(), "-machine", "none", "-nodefaults",
		"-no-user-config", "-display", "none", "-S", "-qmp", qmparg,
		NULL,
	};
	posix_spawn_file_actions_t fa;
	int r;

	snprintf(sock, len, "%s/%s.sock", tmpdir, name);
	snprintf(qmparg, sizeof(qmparg), "unix:%s,server=on,wait=off", sock);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	r = posix_spawnp(&qemu_pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		fail_msg("cannot start %s: %s", argv[0], strerror(r));
}

static int kill_qemu(void **state)
{
	if (qemu_pid > 0) {
		kill(qemu_pid, SIGKILL);
		waitpid(qemu_pid, NULL, 0);
	}
	qemu_pid = -1;
	return 0;
}

static struct qmp *open_qemu(const char *name)
{
	char sock[PATH_MAX];
	struct qmp *q = NULL;
	int r;

	start_qemu(name, sock, sizeof(sock));
	r = qmp_open(sock, 20000, &q);
	if (r < 0)
		fail_msg("qmp_open %s: %s", sock, strerror(-r));
	return q;
}

static void test_open_errors(void **state)
{
	char path[300];
	struct qmp *q = NULL;

	snprintf(path, sizeof(path), "%s/nobody-here.sock", tmpdir);
	assert_int_equal(qmp_open(path, 150, &q), -ETIMEDOUT);
	assert_null(q);
	memset(path, 'x', sizeof(path) - 1);
	path[0] = '/';
	path[sizeof(path) - 1] = '\0';
	assert_int_equal(qmp_open(path, 150, &q), -ENAMETOOLONG);
	assert_null(q);
	/* A socket file left by a QEMU that exited: refused, not waited out. */
	{
		struct sockaddr_un sa = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_STREAM, 0);

		snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/stale.sock", tmpdir);
		assert_true(fd >= 0);
		assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
		close(fd);
		assert_int_equal(qmp_open(sa.sun_path, 60000, &q), -ECONNREFUSED);
		assert_null(q);
	}
}

static void test_execute(void **state)
{
	struct qmp *q;
	json_t *res = NULL, *args;
	json_int_t major = 0;
	char err[256];

	if (!have_qemu())
		skip();
	q = open_qemu("exec");
	assert_int_equal(qmp_execute(q, "query-version", NULL, &res, err,
				     sizeof(err)), 0);
	assert_int_equal(json_unpack(res, "{s:{s:I}}", "qemu", "major", &major),
			 0);
	assert_true(major >= 2);
	json_decref(res);

	/* unknown command: QEMU's error, and the connection goes on */
	res = NULL;
	err[0] = '\0';
	assert_int_equal(qmp_execute(q, "no-such-command", NULL, &res, err,
				     sizeof(err)), -EREMOTEIO);
	assert_null(res);
	assert_non_null(strstr(err, "no-such-command"));

	/* bad arguments */
	args = json_pack("{s:i}", "bogus", 1);
	assert_int_equal(qmp_execute(q, "query-status", args, NULL, err,
				     sizeof(err)), -EREMOTEIO);
	assert_non_null(strstr(err, "bogus"));
	json_decref(args);
	/* arguments must be an object */
	args = json_integer(3);
	assert_int_equal(qmp_execute(q, "query-status", args, NULL, err,
				     sizeof(err)), -EINVAL);
	json_decref(args);

	res = NULL;
	assert_int_equal(qmp_execute(q, "query-status", NULL, &res, err,
				     sizeof(err)), 0);
	assert_string_equal(json_string_value(json_object_get(res, "status")),
			    "prelaunch");
	json_decref(res);
	/* a non-object return value (an array) */
	res = NULL;
	assert_int_equal(qmp_execute(q, "query-fdsets", NULL, &res, err,
				     sizeof(err)), 0);
	assert_true(json_is_array(res));
	json_decref(res);
	qmp_close(q);
}

static void test_events(void **state)
{
	struct qmp *q;
	struct qmp_event ev;
	uint64_t now;

	if (!have_qemu())
		skip();
	q = open_qemu("events");
	assert_int_equal(qmp_next_event(q, 0, &ev), -ETIMEDOUT);

	/* QEMU sends RESUME before cont's reply: it is queued meanwhile */
	assert_int_equal(qmp_execute(q, "cont", NULL, NULL, NULL, 0), 0);
	assert_int_equal(qmp_execute(q, "stop", NULL, NULL, NULL, 0), 0);
	assert_true(qmp_pending_events(q) == 2);
	now = tsb_wall_ns();
	assert_int_equal(qmp_next_event(q, 0, &ev), 0);
	assert_string_equal(ev.name, "RESUME");
	assert_true(json_is_object(ev.data));
	/* QEMU's timestamp, in ns of the realtime clock: seconds ago */
	assert_true(ev.time_ns <= now && ev.time_ns > now - 60000000000ull);
	qmp_event_fini(&ev);
	assert_int_equal(qmp_next_event(q, 1000, &ev), 0);
	assert_string_equal(ev.name, "STOP");
	qmp_event_fini(&ev);
	assert_int_equal(qmp_next_event(q, 50, &ev), -ETIMEDOUT);

	/* qmp_wait_event drops the events it passes */
	assert_int_equal(qmp_execute(q, "cont", NULL, NULL, NULL, 0), 0);
	assert_int_equal(qmp_execute(q, "stop", NULL, NULL, NULL, 0), 0);
	assert_int_equal(qmp_wait_event(q, "STOP", 5000, &ev), 0);
	assert_string_equal(ev.name, "STOP");
	assert_true(ev.time_ns > 0);
	qmp_event_fini(&ev);
	assert_true(qmp_pending_events(q) == 0);
	assert_int_equal(qmp_wait_event(q, "RESUME", 50, &ev), -ETIMEDOUT);

	/* quit: the reply, then SHUTDOWN, then the socket closes */
	assert_int_equal(qmp_execute(q, "quit", NULL, NULL, NULL, 0), 0);
	assert_int_equal(qmp_wait_event(q, "SHUTDOWN", 10000, &ev), 0);
	assert_true(json_is_object(ev.data));
	qmp_event_fini(&ev);
	assert_int_equal(qmp_next_event(q, 10000, &ev), -ECONNRESET);
	assert_int_equal(qmp_next_event(q, 0, &ev), -ECONNRESET);
	assert_int_equal(qmp_execute(q, "query-status", NULL, NULL, NULL, 0),
			 -ECONNRESET);
	qmp_close(q);
}

/* Does process pid hold an fd to the same pipe as our fd? */
static bool pid_holds_pipe(pid_t pid, int fd)
{
	char path[PATH_MAX], want[64], got[64];
	struct dirent *de;
	bool found = false;
	ssize_t n;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	n = readlink(path, want, sizeof(want) - 1);
	assert_true(n > 0);
	want[n] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	assert_non_null(d);
	while (!found && (de = readdir(d))) {
		snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int)pid,
			 de->d_name);
		n = readlink(path, got, sizeof(got) - 1);
		if (n <= 0)
			continue;
		got[n] = '\0';
		found = !strcmp(got, want);
	}
	closedir(d);
	return found;
}

static void test_getfd(void **state)
{
	struct qmp *q;
	json_t *args, *res = NULL;
	json_int_t set = -1, qfd = -1;
	char err[256];
	int p[2];

	if (!have_qemu())
		skip();
	q = open_qemu("getfd");
	assert_int_equal(pipe2(p, O_CLOEXEC), 0);
	assert_false(pid_holds_pipe(qemu_pid, p[1]));

	/* without an fd QEMU refuses getfd */
	args = json_pack("{s:s}", "fdname", "tsb0");
	assert_int_equal(qmp_execute(q, "getfd", args, NULL, err, sizeof(err)),
			 -EREMOTEIO);
	assert_int_equal(qmp_execute_fd(q, "getfd", args, -1, NULL, err,
					sizeof(err)), -EBADF);
	assert_int_equal(qmp_execute_fd(q, "getfd", args, p[1], NULL, err,
					sizeof(err)), 0);
	assert_true(pid_holds_pipe(qemu_pid, p[1]));
	assert_int_equal(qmp_execute(q, "closefd", args, NULL, err,
				     sizeof(err)), 0);
	assert_false(pid_holds_pipe(qemu_pid, p[1]));
	assert_int_equal(qmp_execute(q, "closefd", args, NULL, err,
				     sizeof(err)), -EREMOTEIO);
	json_decref(args);

	/* add-fd into an fd set */
	args = json_pack("{s:i}", "fdset-id", 7);
	assert_int_equal(qmp_execute_fd(q, "add-fd", args, p[0], &res, err,
					sizeof(err)), 0);
	json_decref(args);
	assert_int_equal(json_unpack(res, "{s:I, s:I}", "fdset-id", &set, "fd",
				     &qfd), 0);
	assert_true(set == 7 && qfd >= 0);
	json_decref(res);
	assert_true(pid_holds_pipe(qemu_pid, p[0]));
	args = json_pack("{s:i}", "fdset-id", 7);
	assert_int_equal(qmp_execute(q, "remove-fd", args, NULL, err,
				     sizeof(err)), 0);
	json_decref(args);
	/* our own fds are still ours */
	assert_true(fcntl(p[0], F_GETFD) >= 0 && fcntl(p[1], F_GETFD) >= 0);
	close(p[0]);
	close(p[1]);
	qmp_close(q);
}

/* ---- scripted server ---------------------------------------------------- */

struct fake {
	bool oob;	/* the greeting offers out-of-band execution */
	int lfd;
	char path[100];
	pthread_t thread;
};

static void write_all(int fd, const char *s, size_t len)
{
	while (len) {
		ssize_t n = write(fd, s, len);

		if (n <= 0)
			return;
		s += n;
		len -= (size_t)n;
	}
}

static void writef(int fd, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void writef(int fd, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	write_all(fd, buf, (size_t)n);
}

/* Reads one line from fd into buf (no buffering beyond the line). */
static bool read_line(int fd, char *buf, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		if (read(fd, buf + n, 1) != 1)
			return false;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return true;
}

/*
 * Serves one client: greeting, then per command:
 *   qmp_capabilities, ping  normal reply (ping first answers a pending slow)
 *   big    a reply over QMP_MAX_MESSAGE
 *   dup    a reply with a duplicate key
 *   slow   no reply until the next ping
 *   flood  QMP_MAX_QUEUED_EVENTS + 10 events, then the reply
 *   bye    closes the connection
 *   oob    (sent with exec-oob, only when negotiated) replies "oob"
 * With f->oob the greeting offers "oob" and qmp_capabilities must enable it.
 */
static void *fake_main(void *arg)
{
	struct fake *f = arg;
	char line[4096];
	json_int_t slow_id = -1;
	int fd;

	fd = accept(f->lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	writef(fd, "{\"QMP\": {\"version\": {}, \"capabilities\": [%s]}}\r\n",
	       f->oob ? "\"oob\"" : "");
	while (read_line(fd, line, sizeof(line))) {
		json_t *req = json_loads(line, 0, NULL);
		const char *cmd = NULL;
		json_int_t id = -1;

		bool oob_cmd = req && json_object_get(req, "exec-oob");

		if (!req || json_unpack(req, "{s:s, s:I}", oob_cmd ? "exec-oob" : "execute", &cmd,
					"id", &id) < 0) {
			json_decref(req);
			break;
		}
		if (!strcmp(cmd, "qmp_capabilities")) {
			json_t *en = json_object_get(json_object_get(req, "arguments"), "enable");
			bool asked = json_array_size(en) == 1 &&
				     !strcmp(json_string_value(json_array_get(en, 0)) ?: "", "oob");

			if (asked != f->oob)
				writef(fd, "{\"error\": {\"class\": \"GenericError\", \"desc\": "
				       "\"bad capabilities\"}, \"id\": %lld}\r\n", (long long)id);
			else
				writef(fd, "{\"return\": {}, \"id\": %lld}\r\n", (long long)id);
		} else if (oob_cmd && f->oob && !strcmp(cmd, "oob")) {
			writef(fd, "{\"return\": \"oob\", \"id\": %lld}\r\n", (long long)id);
		} else if (!strcmp(cmd, "ping")) {
			if (slow_id >= 0)
				writef(fd, "{\"return\": \"late\", \"id\": %lld}\r\n",
				       (long long)slow_id);
			slow_id = -1;
			writef(fd, "\r\n{\"return\": \"pong\", \"id\": %lld}\r\n",
			       (long long)id);
		} else if (!strcmp(cmd, "big")) {
			size_t n = QMP_MAX_MESSAGE + 100;
			char *s = malloc(n + 64);

			if (!s)
				break;
			memset(s, ' ', n);
			memcpy(s, "{\"return\": \"", 12);
			memset(s + 12, 'a', n - 40);
			snprintf(s + n - 28, 64, "\", \"id\": %lld}\r\n",
				 (long long)id);
			write_all(fd, s, strlen(s));
			free(s);
		} else if (!strcmp(cmd, "dup")) {
			writef(fd, "{\"return\": 1, \"return\": 2, \"id\": %lld}\r\n",
			       (long long)id);
		} else if (!strcmp(cmd, "slow")) {
			slow_id = id;
		} else if (!strcmp(cmd, "flood")) {
			int i;

			for (i = 0; i < QMP_MAX_QUEUED_EVENTS + 10; i++)
				writef(fd, "{\"event\": \"E%d\", \"timestamp\": {\"seconds\": 5, \"microseconds\": %d}}\r\n",
				       i, i);
			writef(fd, "{\"return\": {}, \"id\": %lld}\r\n",
			       (long long)id);
		} else {
			json_decref(req);
			break;
		}
		json_decref(req);
	}
	close(fd);
	return NULL;
}

static void fake_start(struct fake *f)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	snprintf(f->path, sizeof(f->path), "%s/fake.sock", tmpdir);
	unlink(f->path);
	f->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(f->lfd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", f->path);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 1), 0);
	assert_int_equal(pthread_create(&f->thread, NULL, fake_main, f), 0);
}

static void fake_stop(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->lfd);
	unlink(f->path);
}

/* Out-of-band execution: negotiated when offered, refused when not. */
static void test_oob(void **state)
{
	struct fake f = { .oob = true };
	struct qmp *q = NULL;
	json_t *res = NULL;
	char err[256];

	(void)state;
	fake_start(&f);
	assert_int_equal(qmp_open(f.path, 5000, &q), 0);
	assert_int_equal(qmp_execute_oob(q, "oob", NULL, &res, err, sizeof(err)), 0);
	assert_string_equal(json_string_value(res), "oob");
	json_decref(res);
	assert_int_equal(qmp_execute(q, "bye", NULL, NULL, err, sizeof(err)), -ECONNRESET);
	qmp_close(q);
	fake_stop(&f);

	f = (struct fake){ .oob = false };
	fake_start(&f);
	assert_int_equal(qmp_open(f.path, 5000, &q), 0);
	assert_int_equal(qmp_execute_oob(q, "oob", NULL, NULL, err, sizeof(err)), -EOPNOTSUPP);
	assert_int_equal(qmp_execute(q, "bye", NULL, NULL, err, sizeof(err)), -ECONNRESET);
	qmp_close(q);
	fake_stop(&f);
}

static void test_limits(void **state)
{
	struct fake f = { .oob = false };
	struct qmp *q = NULL;
	struct qmp_event ev;
	json_t *res = NULL;
	char err[256];

	fake_start(&f);
	assert_int_equal(qmp_open(f.path, 5000, &q), 0);

	/* an oversized reply fails its command; the stream stays in sync */
	assert_int_equal(qmp_execute(q, "big", NULL, &res, err, sizeof(err)),
			 -EMSGSIZE);
	assert_null(res);
	assert_int_equal(qmp_execute(q, "ping", NULL, &res, err, sizeof(err)),
			 0);
	assert_string_equal(json_string_value(res), "pong");
	json_decref(res);

	/* duplicate keys are malformed */
	assert_int_equal(qmp_execute(q, "dup", NULL, NULL, err, sizeof(err)),
			 -EBADMSG);

	/* a timed-out command's late reply is not taken for the next one */
	qmp_set_timeout(q, 100);
	assert_int_equal(qmp_execute(q, "slow", NULL, NULL, err, sizeof(err)),
			 -ETIMEDOUT);
	qmp_set_timeout(q, 5000);
	res = NULL;
	assert_int_equal(qmp_execute(q, "ping", NULL, &res, err, sizeof(err)),
			 0);
	assert_string_equal(json_string_value(res), "pong");
	json_decref(res);

	/* the event queue is bounded: the oldest go */
	assert_int_equal(qmp_execute(q, "flood", NULL, NULL, err, sizeof(err)),
			 0);
	assert_true(qmp_pending_events(q) == QMP_MAX_QUEUED_EVENTS);
	assert_int_equal(qmp_next_event(q, 0, &ev), 0);
	assert_string_equal(ev.name, "E10");
	assert_true(ev.time_ns == 5000000000ull + 10000ull);
	qmp_event_fini(&ev);

	/* the peer goes away */
	assert_int_equal(qmp_execute(q, "bye", NULL, NULL, err, sizeof(err)),
			 -ECONNRESET);
	assert_non_null(strstr(err, "closed"));
	/* queued events can still be taken */
	assert_int_equal(qmp_next_event(q, 0, &ev), 0);
	assert_string_equal(ev.name, "E11");
	qmp_event_fini(&ev);
	qmp_close(q);
	fake_stop(&f);
}

static int make_tmpdir(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tsb-test-qmp.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int rm_entry(const char *path, const struct stat *sb, int type,
		    struct FTW *ftw)
{
	return remove(path) < 0 ? -1 : 0;
}

static int remove_tmpdir(void **state)
{
	return nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test_teardown(test_execute, kill_qemu),
		cmocka_unit_test_teardown(test_events, kill_qemu),
		cmocka_unit_test_teardown(test_getfd, kill_qemu),
		cmocka_unit_test(test_limits),
		cmocka_unit_test(test_oob),
	};

	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
