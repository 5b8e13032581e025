/*
 * VM control: argv building and heartbeat parsing (pure), then one real
 * start/stop of a guestless QEMU (-machine none), skipped without QEMU.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <ftw.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "qmp/qmp.h"
#include "vm/vm.h"

static size_t argv_len(char **argv)
{
	size_t n = 0;

	while (argv[n])
		n++;
	return n;
}

/* Index of the first element equal to s, or -1. */
static long argv_find(char **argv, const char *s)
{
	size_t i;

	for (i = 0; argv[i]; i++)
		if (!strcmp(argv[i], s))
			return (long)i;
	return -1;
}

static void test_argv_full(void **state)
{
	static const struct vm_disk disks[] = {
		{ .file = "/img/root.qcow2", .format = VM_DISK_QCOW2, .id = "root" },
		{ .file = "/img/a,b.raw", .format = VM_DISK_RAW },
	};
	static const char *const extra[] = { "-rtc", "base=utc" };
	static const char *const want[] = {
		"/usr/bin/qemu-system-x86_64",
		"-name", "vm1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-machine", "pc-q35-7.2", "-accel", "kvm",
		"-m", "524292K", "-smp", "2",
		"-kernel", "/g/vmlinuz", "-initrd", "/g/initrd.img",
		"-append", "console=ttyS0 quiet",
		"-serial", "file:/run/vm1/serial.log",
		"-qmp", "unix:/run/vm1/qmp.sock,server=on,wait=off",
		"-pidfile", "/run/vm1/qemu.pid",
		"-drive", "file=/img/root.qcow2,format=qcow2,if=none,id=root",
		"-device", "virtio-blk-pci,drive=root,id=root-dev",
		"-drive", "file=/img/a,,b.raw,format=raw,if=none,id=disk1",
		"-device", "virtio-blk-pci,drive=disk1,id=disk1-dev",
		"-netdev", "tap,id=net0,ifname=tsbtap0,script=no,downscript=no",
		"-device", "virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:12:34:56",
		"-incoming", "defer",
		"-S",
		"-rtc", "base=utc",
	};
	struct vm_config c = {
		.name = "vm1",
		.dir = "/run/vm1",
		.qemu = "/usr/bin/qemu-system-x86_64",
		.machine = "pc-q35-7.2",
		.accel = "kvm",
		.mem = "524292K",
		.cpus = 2,
		.kernel = "/g/vmlinuz",
		.initrd = "/g/initrd.img",
		.append = "console=ttyS0 quiet",
		.disks = disks,
		.n_disks = 2,
		.net = VM_NET_TAP,
		.tap_ifname = "tsbtap0",
		.mac = "52:54:00:12:34:56",
		.incoming = true,
		.paused = true,
		.extra = extra,
		.n_extra = 2,
	};
	char **argv = NULL;
	size_t i;

	assert_int_equal(vm_build_argv(&c, &argv), 0);
	assert_int_equal(argv_len(argv), sizeof(want) / sizeof(want[0]));
	for (i = 0; i < sizeof(want) / sizeof(want[0]); i++)
		assert_string_equal(argv[i], want[i]);
	vm_argv_free(argv);
}

static void test_argv_defaults(void **state)
{
	struct vm_config c = { .dir = "rd", .mem = "262148K" };
	char **argv = NULL;
	long i;

	assert_int_equal(vm_build_argv(&c, &argv), 0);
	assert_string_equal(argv[0], VM_DEFAULT_QEMU);
	i = argv_find(argv, "-machine");
	assert_true(i > 0);
	assert_string_equal(argv[i + 1], "pc-i440fx-7.2");
	i = argv_find(argv, "-accel");
	assert_string_equal(argv[i + 1], "tcg");
	i = argv_find(argv, "-smp");
	assert_string_equal(argv[i + 1], "1");
	assert_true(argv_find(argv, "-kernel") < 0);
	assert_true(argv_find(argv, "-netdev") < 0);
	assert_true(argv_find(argv, "-incoming") < 0);
	assert_true(argv_find(argv, "-S") < 0);
	assert_true(argv_find(argv, "-name") < 0);
	assert_true(argv_find(argv, "file:rd/serial.log") > 0);
	assert_true(argv_find(argv, "unix:rd/qmp.sock,server=on,wait=off") > 0);
	assert_true(argv_find(argv, "rd/qemu.pid") > 0);
	vm_argv_free(argv);

	/* user networking, with and without hostfwd */
	c.net = VM_NET_USER;
	c.user_hostfwd = "tcp:127.0.0.1:2222-:22";
	assert_int_equal(vm_build_argv(&c, &argv), 0);
	assert_true(argv_find(argv, "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22") > 0);
	assert_true(argv_find(argv, "virtio-net-pci,netdev=net0,id=nic0") > 0);
	vm_argv_free(argv);
	c.user_hostfwd = "";
	assert_int_equal(vm_build_argv(&c, &argv), 0);
	assert_true(argv_find(argv, "user,id=net0") > 0);
	vm_argv_free(argv);
}

static void test_argv_invalid(void **state)
{
	struct vm_config ok = { .dir = "rd", .mem = "262148K" };
	struct vm_config c;
	char **argv = (char **)0x1;

	c = ok;
	c.dir = NULL;
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.mem = NULL;
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.dir = "a,b";
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.initrd = "x";
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.append = "x";
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.accel = "hvf";
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.net = VM_NET_TAP;
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	c = ok;
	c.n_disks = 1;
	assert_int_equal(vm_build_argv(&c, &argv), -EINVAL);
	/* out parameter untouched on failure */
	assert_true(argv == (char **)0x1);
}

static void test_parse_beat_line(void **state)
{
	struct {
		const char *line;
		bool match;
		uint64_t n;
		bool ok;
	} cases[] = {
		{ "beat 5 ok", true, 5, true },
		{ "beat 7 CORRUPT page 0x1000", true, 7, false },
		{ "[    1.234] beat 9 ok", true, 9, true },
		{ "tsb: beat 18446744073709551615 ok", true, UINT64_MAX, true },
		{ "beat 0 ok\r", true, 0, true },
		{ "heartbeat 5 ok", false, 0, false },
		{ "beat 5 okay", false, 0, false },
		{ "beat 5 corrupt", false, 0, false },
		{ "beat x ok", false, 0, false },
		{ "beat 5", false, 0, false },
		{ "beat 5 ", false, 0, false },
		{ "beat  5 ok", false, 0, false },
		{ "beat 18446744073709551616 ok", false, 0, false },
		{ "", false, 0, false },
		{ "beat 1 maybe, beat 2 ok", true, 2, true },
	};
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		uint64_t n = 12345;
		bool ok = true;
		bool m = vm_parse_beat_line(cases[i].line, strlen(cases[i].line),
					    &n, &ok);

		if (m != cases[i].match)
			fail_msg("line '%s': match %d", cases[i].line, m);
		if (m) {
			assert_true(n == cases[i].n);
			assert_int_equal(ok, cases[i].ok);
		}
	}
}

static char tmpdir[64];

static int make_tmpdir(void **state)
{
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/tsb-test-vm.XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	return 0;
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

static void append_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static void test_scan_beats(void **state)
{
	char path[PATH_MAX];
	struct vm_beats st;
	uint64_t n;
	bool ok;
	char *big;

	snprintf(path, sizeof(path), "%s/serial.log", tmpdir);
	assert_int_equal(vm_last_beat(path, &n, &ok), -ENOENT);
	append_file(path, "Linux version 6.1\r\nbooting\r\n");
	assert_int_equal(vm_last_beat(path, &n, &ok), -ENODATA);

	append_file(path, "beat 1 ok\r\nbeat 2 ok\r\nbeat 3 o");
	memset(&st, 0, sizeof(st));
	assert_int_equal(vm_scan_beats(path, &st), 0);
	assert_true(st.have);
	assert_true(st.last == 2 && st.last_ok);
	assert_true(st.n_beats == 2);
	assert_string_equal(st.last_line, "beat 2 ok");

	/* the unfinished line is completed, read incrementally */
	append_file(path, "k\r\n[ 3.1] beat 4 CORRUPT at 0x2000\r\nbeat 5 ok\r\n");
	assert_int_equal(vm_scan_beats(path, &st), 0);
	assert_true(st.last == 5 && st.last_ok);
	assert_true(st.n_beats == 5);
	assert_true(st.n_corrupt == 1 && st.first_corrupt == 4);
	assert_int_equal(vm_last_beat(path, &n, &ok), 0);
	assert_true(n == 5 && ok);

	/* an overlong line is ignored, even if it ends like a beat */
	big = malloc(VM_BEAT_MAX_LINE * 2 + 16);
	assert_non_null(big);
	memset(big, 'x', VM_BEAT_MAX_LINE * 2);
	strcpy(big + VM_BEAT_MAX_LINE * 2, " beat 9 ok\n");
	append_file(path, big);
	free(big);
	append_file(path, "beat 6 CORRUPT\n");
	assert_int_equal(vm_scan_beats(path, &st), 0);
	assert_true(st.last == 6 && !st.last_ok);
	assert_true(st.n_corrupt == 2 && st.first_corrupt == 4);

	/* a new, shorter file (a new QEMU) starts over */
	assert_int_equal(truncate(path, 0), 0);
	append_file(path, "beat 1 ok\n");
	assert_int_equal(vm_scan_beats(path, &st), 0);
	assert_true(st.last == 1 && st.last_ok && st.n_corrupt == 0);
	assert_true(st.n_beats == 1);
}

/* ---- real QEMU ---------------------------------------------------------- */

static bool have_qemu(void)
{
	return system("command -v " VM_DEFAULT_QEMU " >/dev/null 2>&1") == 0;
}

static void test_start_stop(void **state)
{
	char dir[PATH_MAX], path[PATH_MAX], err[512];
	struct vm_config c = {
		.name = "unit",
		.machine = "none",
		.mem = "262148K",
		.paused = true,
	};
	struct qmp *q;
	json_t *res = NULL;
	pid_t pid = 0, pid2;
	int r;

	if (!have_qemu())
		skip();
	snprintf(dir, sizeof(dir), "%s/vm", tmpdir);
	c.dir = dir;
	r = vm_start(&c, 20000, &pid, err, sizeof(err));
	if (r < 0)
		fail_msg("vm_start: %s (%s)", strerror(-r), err);
	assert_true(pid > 0);
	assert_true(vm_pid_alive(pid));
	assert_int_equal(vm_read_pid(dir, &pid2), 0);
	assert_int_equal(pid2, pid);

	/* it answers QMP, and the log starts with our command line */
	assert_int_equal(vm_path(dir, VM_QMP_SOCK, path, sizeof(path)), 0);
	r = qmp_open(path, 5000, &q);
	if (r < 0) {
		kill(pid, SIGKILL);
		fail_msg("qmp_open: %s", strerror(-r));
	}
	assert_int_equal(qmp_execute(q, "query-status", NULL, &res, NULL, 0), 0);
	assert_string_equal(json_string_value(json_object_get(res, "status")),
			    "prelaunch");
	json_decref(res);
	qmp_close(q);

	/* a second VM in the same directory is refused */
	pid2 = 0;
	assert_int_equal(vm_start(&c, 5000, &pid2, err, sizeof(err)), -EBUSY);
	assert_int_equal(pid2, 0);
	assert_non_null(strstr(err, "already runs"));

	r = vm_stop(dir, 5000);
	if (r < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("vm_stop: %s", strerror(-r));
	}
	assert_false(vm_pid_alive(pid));
	assert_int_equal(vm_read_pid(dir, &pid2), -ENOENT);
	assert_int_equal(vm_stop(dir, 1000), -ESRCH);
}

static void test_start_failures(void **state)
{
	char dir[PATH_MAX], err[512];
	struct vm_config c = {
		.machine = "no-such-machine",
		.mem = "262148K",
	};
	pid_t pid = 0;

	if (!have_qemu())
		skip();
	snprintf(dir, sizeof(dir), "%s/bad", tmpdir);
	c.dir = dir;
	err[0] = '\0';
	assert_int_equal(vm_start(&c, 20000, &pid, err, sizeof(err)), -ECHILD);
	assert_int_equal(pid, 0);
	/* QEMU's own complaint is passed on */
	if (!strstr(err, "unsupported machine type"))
		fail_msg("error text: '%s'", err);

	c.machine = "none";
	c.qemu = "/nonexistent/qemu-system-x86_64";
	assert_int_equal(vm_start(&c, 2000, &pid, err, sizeof(err)), -ENOENT);
	assert_int_equal(pid, 0);
}

static void test_stop_killed_by_signal(void **state)
{
	char dir[PATH_MAX], err[512];
	struct vm_config c = {
		.machine = "none",
		.mem = "262148K",
	};
	pid_t pid = 0;
	int r;

	if (!have_qemu())
		skip();
	/* SIGTERM path: no QMP socket path given */
	snprintf(dir, sizeof(dir), "%s/sig", tmpdir);
	c.dir = dir;
	r = vm_start(&c, 20000, &pid, err, sizeof(err));
	if (r < 0)
		fail_msg("vm_start: %s (%s)", strerror(-r), err);
	r = vm_stop_pid(pid, NULL, 5000);
	if (r < 0) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("vm_stop_pid: %s", strerror(-r));
	}
	assert_false(vm_pid_alive(pid));
	assert_int_equal(vm_stop_pid(pid, NULL, 100), -ESRCH);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_argv_full),
		cmocka_unit_test(test_argv_defaults),
		cmocka_unit_test(test_argv_invalid),
		cmocka_unit_test(test_parse_beat_line),
		cmocka_unit_test(test_scan_beats),
		cmocka_unit_test(test_start_stop),
		cmocka_unit_test(test_start_failures),
		cmocka_unit_test(test_stop_killed_by_signal),
	};

	return cmocka_run_group_tests(tests, make_tmpdir, remove_tmpdir);
}
