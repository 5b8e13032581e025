/* VM control: QEMU argv, spawn, stop, heartbeat scanning. See vm.h. */
#include "vm/vm.h"
#include "qmp/qmp.h"
#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- argv --------------------------------------------------------------- */

struct argv_builder {
	char **v;
	size_t n;
	size_t cap;
	int err;
};

static void add_owned(struct argv_builder *b, char *s)
{
	if (b->err) {
		free(s);
		return;
	}
	if (!s) {
		b->err = -ENOMEM;
		return;
	}
	if (b->n + 2 > b->cap) {
		size_t ncap = b->cap ? b->cap * 2 : 32;
		char **nv = reallocarray(b->v, ncap, sizeof(*nv));

		if (!nv) {
			free(s);
			b->err = -ENOMEM;
			return;
		}
		b->v = nv;
		b->cap = ncap;
	}
	b->v[b->n++] = s;
	b->v[b->n] = NULL;
}

static void add(struct argv_builder *b, const char *s)
{
	add_owned(b, strdup(s));
}

static void addf(struct argv_builder *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

static void addf(struct argv_builder *b, const char *fmt, ...)
{
	va_list ap;
	char *s;

	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	add_owned(b, s);
}

/* QEMU option values: a literal comma is written ",,". Caller frees. */
static char *opt_escape(const char *s)
{
	size_t n = 0, i, j;
	char *r;

	for (i = 0; s[i]; i++)
		n += s[i] == ',' ? 2 : 1;
	r = malloc(n + 1);
	if (!r)
		return NULL;
	for (i = 0, j = 0; s[i]; i++) {
		r[j++] = s[i];
		if (s[i] == ',')
			r[j++] = ',';
	}
	r[j] = '\0';
	return r;
}

void vm_argv_free(char **argv)
{
	size_t i;

	if (!argv)
		return;
	for (i = 0; argv[i]; i++)
		free(argv[i]);
	free(argv);
}

int vm_path(const char *dir, const char *file, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", dir, file);

	if (n < 0 || (size_t)n >= len)
		return -ENAMETOOLONG;
	return 0;
}

static bool has_comma(const char *s)
{
	return s && strchr(s, ',');
}

static int check_config(const struct vm_config *c)
{
	const char *accel = c->accel ? c->accel : VM_DEFAULT_ACCEL;
	size_t i;

	if (!c->dir || !*c->dir || !c->mem || !*c->mem)
		return -EINVAL;
	/* dir goes into -serial file: and -qmp unix: where commas split */
	if (has_comma(c->dir) || has_comma(c->mem) || has_comma(c->machine))
		return -EINVAL;
	if ((c->initrd || c->append) && !c->kernel)
		return -EINVAL;
	if (strcmp(accel, "tcg") && strcmp(accel, "kvm"))
		return -EINVAL;
	if (c->net == VM_NET_TAP &&
	    (!c->tap_ifname || !*c->tap_ifname || has_comma(c->tap_ifname)))
		return -EINVAL;
	if (c->net != VM_NET_NONE && c->net != VM_NET_TAP &&
	    c->net != VM_NET_USER)
		return -EINVAL;
	if (has_comma(c->mac))
		return -EINVAL;
	if (c->n_disks && !c->disks)
		return -EINVAL;
	for (i = 0; i < c->n_disks; i++) {
		if (!c->disks[i].file || !*c->disks[i].file)
			return -EINVAL;
		if (c->disks[i].format != VM_DISK_RAW &&
		    c->disks[i].format != VM_DISK_QCOW2)
			return -EINVAL;
		if (c->disks[i].id && (!*c->disks[i].id ||
				       has_comma(c->disks[i].id)))
			return -EINVAL;
	}
	if (c->n_extra && !c->extra)
		return -EINVAL;
	return 0;
}

int vm_build_argv(const struct vm_config *c, char ***ret_argv)
{
	struct argv_builder b = { 0 };
	size_t i;
	int r;

	r = check_config(c);
	if (r < 0)
		return r;

	add(&b, c->qemu ? c->qemu : VM_DEFAULT_QEMU);
	if (c->name) {
		add(&b, "-name");
		add_owned(&b, opt_escape(c->name));
	}
	add(&b, "-nodefaults");
	add(&b, "-no-user-config");
	add(&b, "-display");
	add(&b, "none");
	add(&b, "-machine");
	add(&b, c->machine ? c->machine : VM_DEFAULT_MACHINE);
	add(&b, "-accel");
	add(&b, c->accel ? c->accel : VM_DEFAULT_ACCEL);
	add(&b, "-m");
	add(&b, c->mem);
	add(&b, "-smp");
	addf(&b, "%u", c->cpus ? c->cpus : 1);
	if (c->kernel) {
		add(&b, "-kernel");
		add(&b, c->kernel);
	}
	if (c->initrd) {
		add(&b, "-initrd");
		add(&b, c->initrd);
	}
	if (c->append) {
		add(&b, "-append");
		add(&b, c->append);
	}
	add(&b, "-serial");
	addf(&b, "file:%s/" VM_SERIAL_LOG, c->dir);
	add(&b, "-qmp");
	addf(&b, "unix:%s/" VM_QMP_SOCK ",server=on,wait=off", c->dir);
	add(&b, "-pidfile");
	addf(&b, "%s/" VM_PIDFILE, c->dir);

	for (i = 0; i < c->n_disks; i++) {
		const struct vm_disk *d = &c->disks[i];
		char idbuf[32];
		const char *id = d->id;
		char *file;

		if (!id) {
			snprintf(idbuf, sizeof(idbuf), "disk%zu", i);
			id = idbuf;
		}
		file = opt_escape(d->file);
		if (!file) {
			b.err = -ENOMEM;
			break;
		}
		add(&b, "-drive");
		addf(&b, "file=%s,format=%s,if=none,id=%s", file,
		     d->format == VM_DISK_QCOW2 ? "qcow2" : "raw", id);
		free(file);
		add(&b, "-device");
		addf(&b, "virtio-blk-pci,drive=%s,id=%s-dev", id, id);
	}

	if (c->net == VM_NET_TAP) {
		add(&b, "-netdev");
		addf(&b, "tap,id=net0,ifname=%s,script=no,downscript=no",
		     c->tap_ifname);
	} else if (c->net == VM_NET_USER) {
		add(&b, "-netdev");
		if (c->user_hostfwd && *c->user_hostfwd)
			addf(&b, "user,id=net0,hostfwd=%s", c->user_hostfwd);
		else
			add(&b, "user,id=net0");
	}
	if (c->net != VM_NET_NONE) {
		add(&b, "-device");
		if (c->mac)
			addf(&b, "virtio-net-pci,netdev=net0,id=nic0,mac=%s",
			     c->mac);
		else
			add(&b, "virtio-net-pci,netdev=net0,id=nic0");
	}

	if (c->incoming) {
		add(&b, "-incoming");
		add(&b, "defer");
	}
	if (c->paused)
		add(&b, "-S");
	for (i = 0; i < c->n_extra; i++) {
		if (!c->extra[i]) {
			b.err = b.err ? b.err : -EINVAL;
			break;
		}
		add(&b, c->extra[i]);
	}

	if (b.err) {
		vm_argv_free(b.v);
		return b.err;
	}
	*ret_argv = b.v;
	return 0;
}

/* ---- processes ---------------------------------------------------------- */

static void sleep_ms(long ms)
{
	struct timespec ts = {
		.tv_sec = ms / 1000,
		.tv_nsec = (ms % 1000) * 1000000L,
	};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Reads up to len-1 bytes of a small file, NUL-terminated; bytes or -errno. */
static ssize_t read_small(const char *path, char *buf, size_t len)
{
	ssize_t n, total = 0;
	int fd, r;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while ((size_t)total < len - 1) {
		n = read(fd, buf + total, len - 1 - (size_t)total);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			close(fd);
			return r;
		}
		if (n == 0)
			break;
		total += n;
	}
	close(fd);
	buf[total] = '\0';
	return total;
}

bool vm_pid_alive(pid_t pid)
{
	char path[64], buf[512];
	const char *p;
	pid_t w;
	int status;
	ssize_t n;

	if (pid <= 0)
		return false;
	w = waitpid(pid, &status, WNOHANG);
	if (w == pid)
		return false;
	if (w == 0)
		return true; /* our child, still running */
	if (kill(pid, 0) < 0 && errno == ESRCH)
		return false;
	/*
	 * Not our child. A zombie still answers kill(pid, 0); its parent
	 * (often init) reaps it later. ('Z' may also show while the other
	 * threads of an exiting process finish: gone for our purposes.)
	 */
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	n = read_small(path, buf, sizeof(buf));
	if (n == -ENOENT)
		return false;
	if (n > 0) {
		p = strrchr(buf, ')');
		if (p && p[1] == ' ' && (p[2] == 'Z' || p[2] == 'X'))
			return false;
	}
	return true;
}

/*
 * Is pid a QEMU started for this pidfile? One of its arguments names the
 * same file (compared by inode; relative names are taken from its cwd).
 * Unknown (no /proc) counts as yes.
 */
static bool pid_is_our_qemu(pid_t pid, const char *pidfile)
{
	char path[PATH_MAX + 64];
	struct stat want, got;
	char *buf;
	size_t cap = 64 * 1024, i, alen;
	ssize_t n;
	bool found = false;

	if (stat(pidfile, &want) < 0)
		return true;
	snprintf(path, sizeof(path), "/proc/%d/cmdline", (int)pid);
	buf = malloc(cap);
	if (!buf)
		return true;
	n = read_small(path, buf, cap);
	if (n <= 0) {
		free(buf);
		return n == -ENOENT ? false : true;
	}
	for (i = 0; i < (size_t)n && !found; i += alen + 1) {
		const char *a = buf + i;

		alen = strlen(a);
		if (alen < strlen(VM_PIDFILE) ||
		    strcmp(a + alen - strlen(VM_PIDFILE), VM_PIDFILE))
			continue;
		if (a[0] == '/')
			snprintf(path, sizeof(path), "%s", a);
		else
			snprintf(path, sizeof(path), "/proc/%d/cwd/%s",
				 (int)pid, a);
		if (stat(path, &got) == 0 && got.st_dev == want.st_dev &&
		    got.st_ino == want.st_ino)
			found = true;
	}
	free(buf);
	return found;
}

int vm_read_pid(const char *dir, pid_t *ret_pid)
{
	char path[PATH_MAX], buf[32];
	uint64_t v;
	ssize_t n;
	int r;

	r = vm_path(dir, VM_PIDFILE, path, sizeof(path));
	if (r < 0)
		return r;
	n = read_small(path, buf, sizeof(buf));
	if (n < 0)
		return (int)n;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	if (tsb_parse_u64(buf, 1, INT_MAX, &v) < 0)
		return -EBADMSG;
	if (!vm_pid_alive((pid_t)v))
		return -ESRCH;
	*ret_pid = (pid_t)v;
	return 0;
}

/* Waits up to timeout_ms for pid to die; true if it did. */
static bool wait_gone(pid_t pid, int timeout_ms)
{
	uint64_t deadline = tsb_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	long delay = 5;

	for (;;) {
		if (!vm_pid_alive(pid))
			return true;
		if (tsb_now_ns() >= deadline)
			return false;
		sleep_ms(delay);
		if (delay < 100)
			delay *= 2;
	}
}

int vm_stop_pid(pid_t pid, const char *qmp_path, int timeout_ms)
{
	struct qmp *q = NULL;
	int r;

	if (timeout_ms < 0)
		timeout_ms = 0;
	if (!vm_pid_alive(pid))
		return -ESRCH;
	if (qmp_path && qmp_open(qmp_path, timeout_ms < 2000 ? timeout_ms : 2000,
				 &q) == 0) {
		qmp_set_timeout(q, timeout_ms < 2000 ? timeout_ms : 2000);
		r = qmp_execute(q, "quit", NULL, NULL, NULL, 0);
		log_debug("vm: quit: %s", r == 0 ? "ok" : strerror(-r));
		qmp_close(q);
		if (wait_gone(pid, timeout_ms))
			return 0;
	}
	log_debug("vm: sending SIGTERM to %d", (int)pid);
	if (kill(pid, SIGTERM) < 0 && errno == ESRCH)
		return wait_gone(pid, 0) ? 0 : -ESRCH;
	if (wait_gone(pid, timeout_ms))
		return 0;
	log_debug("vm: sending SIGKILL to %d", (int)pid);
	(void)kill(pid, SIGKILL);
	if (wait_gone(pid, timeout_ms > 1000 ? timeout_ms : 1000))
		return 0;
	return -ETIMEDOUT;
}

int vm_stop(const char *dir, int timeout_ms)
{
	char pidfile[PATH_MAX], qmp_path[PATH_MAX];
	pid_t pid;
	int r;

	r = vm_path(dir, VM_PIDFILE, pidfile, sizeof(pidfile));
	if (r == 0)
		r = vm_path(dir, VM_QMP_SOCK, qmp_path, sizeof(qmp_path));
	if (r < 0)
		return r;
	r = vm_read_pid(dir, &pid);
	if (r == -ENOENT || r == -ESRCH)
		return -ESRCH;
	if (r < 0)
		return r;
	if (!pid_is_our_qemu(pid, pidfile))
		return -EPERM;
	r = vm_stop_pid(pid, qmp_path, timeout_ms);
	if (r == 0)
		(void)unlink(pidfile); /* QEMU removes it, unless killed */
	return r;
}

/*
 * QEMU's messages from its log into errbuf: the last 4 KiB, without our
 * "+ argv" line, lines joined with "; ". Leaves errbuf alone if QEMU said
 * nothing.
 */
static void log_messages(const char *path, char *errbuf, size_t errlen)
{
	char buf[4096];
	size_t out = 0;
	char *line, *save = NULL;
	ssize_t n;
	off_t size;
	int fd;

	if (!errbuf || !errlen)
		return;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	size = lseek(fd, 0, SEEK_END);
	if (size > (off_t)sizeof(buf) - 1)
		(void)lseek(fd, size - (off_t)(sizeof(buf) - 1), SEEK_SET);
	else
		(void)lseek(fd, 0, SEEK_SET);
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	for (line = strtok_r(buf, "\r\n", &save); line;
	     line = strtok_r(NULL, "\r\n", &save)) {
		int w;

		if (line == buf && line[0] == '+')
			continue; /* our command line */
		w = snprintf(errbuf + out, errlen - out, "%s%s",
			     out ? "; " : "", line);
		if (w < 0 || (size_t)w >= errlen - out)
			break;
		out += (size_t)w;
	}
}

static void seterr(char *errbuf, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void seterr(char *errbuf, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!errbuf || !errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(errbuf, errlen, fmt, ap);
	va_end(ap);
}

/* Writes "+ argv...\n" to fd, for the log. */
static void write_cmdline(int fd, char **argv)
{
	FILE *f;
	size_t i;

	f = fdopen(dup(fd), "w");
	if (!f)
		return;
	fputs("+", f);
	for (i = 0; argv[i]; i++) {
		if (strpbrk(argv[i], " \t\"'\\$") || !*argv[i]) {
			const char *p;

			fputs(" '", f);
			for (p = argv[i]; *p; p++) {
				if (*p == '\'')
					fputs("'\\''", f);
				else
					fputc(*p, f);
			}
			fputc('\'', f);
		} else {
			fprintf(f, " %s", argv[i]);
		}
	}
	fputc('\n', f);
	fclose(f);
}

static int spawn(char **argv, int logfd, pid_t *ret_pid)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, deflt;
	pid_t pid;
	int r;

	r = posix_spawn_file_actions_init(&fa);
	if (r)
		return -r;
	r = posix_spawnattr_init(&attr);
	if (r) {
		posix_spawn_file_actions_destroy(&fa);
		return -r;
	}
	sigemptyset(&none);
	sigemptyset(&deflt);
	sigaddset(&deflt, SIGPIPE);
	sigaddset(&deflt, SIGINT);
	sigaddset(&deflt, SIGTERM);
	sigaddset(&deflt, SIGHUP);
	sigaddset(&deflt, SIGQUIT);
	sigaddset(&deflt, SIGCHLD);
	r = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (!r)
		r = posix_spawn_file_actions_adddup2(&fa, logfd, 1);
	if (!r)
		r = posix_spawn_file_actions_adddup2(&fa, logfd, 2);
	if (!r)
		r = posix_spawnattr_setsigmask(&attr, &none);
	if (!r)
		r = posix_spawnattr_setsigdefault(&attr, &deflt);
	if (!r)
		r = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID |
					     POSIX_SPAWN_SETSIGMASK |
					     POSIX_SPAWN_SETSIGDEF);
	if (!r)
		r = posix_spawnp(&pid, argv[0], &fa, &attr, argv, environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	if (r)
		return -r;
	*ret_pid = pid;
	return 0;
}

/* Kills and reaps a child that failed to come up. */
static void kill_child(pid_t pid)
{
	(void)kill(pid, SIGKILL);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
		;
}

int vm_start(const struct vm_config *c, int timeout_ms, pid_t *ret_pid,
	     char *errbuf, size_t errlen)
{
	char qmp_path[PATH_MAX], pidfile[PATH_MAX], logpath[PATH_MAX];
	uint64_t deadline;
	char **argv = NULL;
	struct qmp *q = NULL;
	pid_t pid = -1, old;
	int logfd = -1, r;

	r = vm_build_argv(c, &argv);
	if (r < 0) {
		seterr(errbuf, errlen, r == -EINVAL ? "invalid VM configuration"
						    : "out of memory");
		return r;
	}
	if (vm_path(c->dir, VM_QMP_SOCK, qmp_path, sizeof(qmp_path)) < 0 ||
	    vm_path(c->dir, VM_PIDFILE, pidfile, sizeof(pidfile)) < 0 ||
	    vm_path(c->dir, VM_QEMU_LOG, logpath, sizeof(logpath)) < 0) {
		seterr(errbuf, errlen, "run directory path too long");
		r = -ENAMETOOLONG;
		goto out;
	}
	if (strlen(qmp_path) >= 108) {
		seterr(errbuf, errlen, "QMP socket path '%s' over 107 bytes",
		       qmp_path);
		r = -ENAMETOOLONG;
		goto out;
	}
	if (mkdir(c->dir, 0755) < 0 && errno != EEXIST) {
		r = -errno;
		seterr(errbuf, errlen, "cannot create '%s': %s", c->dir,
		       strerror(-r));
		goto out;
	}
	if (vm_read_pid(c->dir, &old) == 0) {
		seterr(errbuf, errlen, "a QEMU (pid %d) already runs in '%s'",
		       (int)old, c->dir);
		r = -EBUSY;
		goto out;
	}
	/* leftovers of a QEMU that was killed */
	(void)unlink(qmp_path);
	(void)unlink(pidfile);

	logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (logfd < 0) {
		r = -errno;
		seterr(errbuf, errlen, "cannot create '%s': %s", logpath,
		       strerror(-r));
		goto out;
	}
	write_cmdline(logfd, argv);
	r = spawn(argv, logfd, &pid);
	if (r < 0) {
		seterr(errbuf, errlen, "cannot run '%s': %s", argv[0],
		       strerror(-r));
		goto out;
	}
	log_debug("vm: started %s as pid %d", argv[0], (int)pid);

	deadline = tsb_now_ns() + (uint64_t)(timeout_ms < 0 ? 0 : timeout_ms) *
				  1000000ull;
	for (;;) {
		int status;
		pid_t w = waitpid(pid, &status, WNOHANG);

		if (w == pid) {
			pid = -1;
			seterr(errbuf, errlen, "QEMU exited during startup");
			log_messages(logpath, errbuf, errlen);
			r = -ECHILD;
			goto out;
		}
		r = qmp_open(qmp_path, 100, &q);
		if (r == 0)
			break;
		if (r != -ETIMEDOUT && r != -ECONNRESET) {
			seterr(errbuf, errlen, "QMP at '%s': %s", qmp_path,
			       strerror(-r));
			goto kill;
		}
		if (tsb_now_ns() >= deadline) {
			seterr(errbuf, errlen,
			       "QMP at '%s' did not answer in %d ms", qmp_path,
			       timeout_ms);
			r = -ETIMEDOUT;
			goto kill;
		}
	}
	{
		json_t *st = NULL;
		char qerr[256];
		int left = (int)((deadline > tsb_now_ns() ?
				  deadline - tsb_now_ns() : 0) / 1000000ull);

		qmp_set_timeout(q, left > 1000 ? left : 1000);
		r = qmp_execute(q, "query-status", NULL, &st, qerr,
				sizeof(qerr));
		json_decref(st);
		qmp_close(q);
		if (r < 0) {
			seterr(errbuf, errlen, "query-status: %s", qerr);
			goto kill;
		}
	}
	*ret_pid = pid;
	r = 0;
	goto out;
kill:
	kill_child(pid);
out:
	if (logfd >= 0)
		close(logfd);
	vm_argv_free(argv);
	return r;
}

/* ---- heartbeat ---------------------------------------------------------- */

static bool is_word_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	       (ch >= '0' && ch <= '9') || ch == '_';
}

static bool is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

/* Does token tok start at p (within end) and end at a word boundary? */
static bool token_at(const char *p, const char *end, const char *tok)
{
	size_t n = strlen(tok);

	if ((size_t)(end - p) < n || memcmp(p, tok, n))
		return false;
	return p + n == end || !is_word_char(p[n]);
}

bool vm_parse_beat_line(const char *line, size_t len, uint64_t *ret_n,
			bool *ret_ok)
{
	const char *end = line + len;
	const char *p;

	for (p = line; p + 5 <= end; p++) {
		const char *q;
		uint64_t n = 0;
		size_t digits = 0;
		bool ok;

		if (memcmp(p, "beat ", 5) || (p > line && is_word_char(p[-1])))
			continue;
		q = p + 5;
		while (q < end && is_digit(*q) && digits < 20) {
			uint64_t d = (uint64_t)(*q - '0');

			if (n > (UINT64_MAX - d) / 10)
				break;
			n = n * 10 + d;
			q++;
			digits++;
		}
		if (!digits || q >= end || *q != ' ')
			continue;
		while (q < end && *q == ' ')
			q++;
		if (token_at(q, end, "ok"))
			ok = true;
		else if (token_at(q, end, "CORRUPT"))
			ok = false;
		else
			continue;
		*ret_n = n;
		*ret_ok = ok;
		return true;
	}
	return false;
}

static void beat_line(struct vm_beats *st, const char *line, size_t len)
{
	uint64_t n;
	bool ok;

	while (len && line[len - 1] == '\r')
		len--;
	if (!vm_parse_beat_line(line, len, &n, &ok))
		return;
	if (!ok && !st->n_corrupt)
		st->first_corrupt = n;
	if (!ok)
		st->n_corrupt++;
	st->n_beats++;
	st->have = true;
	st->last = n;
	st->last_ok = ok;
	memcpy(st->last_line, line, len);
	st->last_line[len] = '\0';
}

int vm_scan_beats(const char *serial_path, struct vm_beats *st)
{
	char buf[65536];
	char line[VM_BEAT_MAX_LINE];
	size_t llen = 0;
	bool overlong = false;
	uint64_t pos, line_start;
	struct stat sb;
	ssize_t n;
	int fd, r = 0;

	fd = open(serial_path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &sb) < 0) {
		r = -errno;
		goto out;
	}
	if ((uint64_t)sb.st_size < st->offset)
		memset(st, 0, sizeof(*st));
	if (lseek(fd, (off_t)st->offset, SEEK_SET) < 0) {
		r = -errno;
		goto out;
	}
	pos = line_start = st->offset;
	for (;;) {
		ssize_t i;

		n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = -errno;
			goto out;
		}
		if (n == 0)
			break;
		for (i = 0; i < n; i++) {
			char ch = buf[i];

			pos++;
			if (ch == '\n') {
				if (!overlong)
					beat_line(st, line, llen);
				llen = 0;
				overlong = false;
				line_start = pos;
				continue;
			}
			if (llen < sizeof(line) - 1)
				line[llen++] = ch;
			else
				overlong = true;
		}
	}
	/* an unfinished last line is read again next time */
	st->offset = line_start;
out:
	close(fd);
	return r;
}

int vm_last_beat(const char *serial_path, uint64_t *ret_n, bool *ret_ok)
{
	struct vm_beats st;
	int r;

	memset(&st, 0, sizeof(st));
	r = vm_scan_beats(serial_path, &st);
	if (r < 0)
		return r;
	if (!st.have)
		return -ENODATA;
	*ret_n = st.last;
	*ret_ok = st.last_ok;
	return 0;
}
