/*
 * tsubame vm start|stop|status|beat: run QEMU guests in the background and
 * look at them. State lives in the run directory (see src/vm/vm.h).
 */
#include "cli/cli.h"
#include "common/log.h"
#include "common/util.h"
#include "qmp/qmp.h"
#include "vm/vm.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define VM_MAX_DISKS 16
#define VM_MAX_EXTRA 64

static void vm_usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame vm start --dir RUNDIR --mem SIZE [OPTIONS]\n"
"       tsubame vm stop --dir RUNDIR [--timeout SEC]\n"
"       tsubame vm status --dir RUNDIR\n"
"       tsubame vm beat (--dir RUNDIR | --serial FILE) [--wait-after N] [--timeout SEC]\n"
"\n"
"Starts, stops and inspects QEMU guests running in the background. Each VM\n"
"has a run directory holding qmp.sock (QMP), qemu.pid, serial.log (the\n"
"guest's console) and qemu.log (QEMU's command line and messages).\n"
"\n"
"start: starts QEMU, waits until QMP answers, prints 'pid N', 'qmp PATH'\n"
"and 'serial PATH' lines, and exits leaving QEMU running.\n"
"  --dir RUNDIR          run directory (created if missing)\n"
"  --name NAME           VM name (-name)\n"
"  --mem SIZE            guest RAM as QEMU's -m takes it, e.g. 524292K (under\n"
"                        TCG avoid multiples of 256 KiB: QEMU 7.2 loses guest\n"
"                        writes during migration with them)\n"
"  --cpus N              vCPUs (default 1)\n"
"  --kernel FILE         kernel to boot directly\n"
"  --initrd FILE         initramfs (needs --kernel)\n"
"  --append STR          kernel command line (needs --kernel)\n"
"  --disk FILE[,format=raw|qcow2][,id=ID]\n"
"                        virtio-blk disk (repeatable; default format raw, id\n"
"                        disk0, disk1, ...)\n"
"  --tap IFNAME          virtio-net NIC on an existing tap device\n"
"  --mac MAC             the NIC's MAC address\n"
"  --user-net HOSTFWD    virtio-net NIC on QEMU's user network with this\n"
"                        hostfwd rule, e.g. tcp:127.0.0.1:2222-:22 ('' for none)\n"
"  --incoming            wait for an incoming migration (-incoming defer)\n"
"  --paused              start with the guest paused (-S)\n"
"  --machine TYPE        machine type (default " VM_DEFAULT_MACHINE "; use the\n"
"                        same on both sides of a migration)\n"
"  --accel tcg|kvm       accelerator (default tcg)\n"
"  --qemu PATH           QEMU binary (default " VM_DEFAULT_QEMU ")\n"
"  --extra ARG           one more QEMU argument (repeatable)\n"
"  --timeout SEC         how long to wait for QMP (default 30)\n"
"\n"
"stop: asks QEMU to quit over QMP, then SIGTERM and SIGKILL after --timeout\n"
"seconds each (default 10). Not running is not an error.\n"
"\n"
"status: prints pid, qmp socket, QEMU's run state and the last heartbeat;\n"
"exit 0 if QEMU runs and answers QMP, 1 otherwise.\n"
"\n"
"beat: prints the last heartbeat line 'beat N ok|CORRUPT' of the guest's\n"
"serial log. Exit 0 if there is one and no CORRUPT was ever seen, else 1.\n"
"  --wait-after N        first wait until a beat with counter > N appears\n"
"  --timeout SEC         how long to wait (default 60); exit 1 on timeout\n"
"\n"
"Common: -v/--verbose more logging, -h/--help this text.\n"
"Exit: 0 success, 1 failure (reason on stderr), 2 usage error.\n");
}

#define usage_error(...) cli_usage_error("vm", __VA_ARGS__)

/* Reports a getopt failure ('?' or ':'); always returns TSB_EXIT_USAGE. */
static int bad_option(char **argv, int c)
{
	const char *arg = argv[optind - 1];

	if (c == ':')
		return usage_error("option '%s' needs a value", arg);
	return usage_error("unknown option '%s'", arg);
}

static int parse_seconds(const char *s, int *ret_ms)
{
	uint64_t v;

	if (tsb_parse_u64(s, 0, 86400, &v) < 0)
		return -EINVAL;
	*ret_ms = (int)(v * 1000);
	return 0;
}

/* Makes dir if missing and turns it into an absolute path. */
static int abs_dir(const char *dir, bool create, char *buf)
{
	if (create && mkdir(dir, 0755) < 0 && errno != EEXIST)
		return -errno;
	if (!realpath(dir, buf))
		return -errno;
	return 0;
}

/* "FILE[,format=raw|qcow2][,id=ID]" -> disk; the string is modified. */
static int parse_disk(char *s, struct vm_disk *d)
{
	char *opt, *comma;

	memset(d, 0, sizeof(*d));
	d->format = VM_DISK_RAW;
	comma = strchr(s, ',');
	if (comma)
		*comma = '\0';
	d->file = s;
	if (!*s)
		return -EINVAL;
	while (comma) {
		opt = comma + 1;
		comma = strchr(opt, ',');
		if (comma)
			*comma = '\0';
		if (!strcmp(opt, "format=raw"))
			d->format = VM_DISK_RAW;
		else if (!strcmp(opt, "format=qcow2"))
			d->format = VM_DISK_QCOW2;
		else if (!strncmp(opt, "id=", 3) && opt[3])
			d->id = opt + 3;
		else
			return -EINVAL;
	}
	return 0;
}

/* QEMU's -m: bare numbers are MiB; K, M, G, T suffixes. 0 if unknown. */
static uint64_t qemu_mem_bytes(const char *s)
{
	size_t n = strlen(s);
	char num[32];
	uint64_t v, mul;

	if (!n || n >= sizeof(num))
		return 0;
	memcpy(num, s, n + 1);
	switch (num[n - 1]) {
	case 'k': case 'K': mul = 1ull << 10; num[n - 1] = '\0'; break;
	case 'm': case 'M': mul = 1ull << 20; num[n - 1] = '\0'; break;
	case 'g': case 'G': mul = 1ull << 30; num[n - 1] = '\0'; break;
	case 't': case 'T': mul = 1ull << 40; num[n - 1] = '\0'; break;
	default: mul = 1ull << 20; break;
	}
	if (tsb_parse_u64(num, 1, UINT64_MAX >> 41, &v) < 0)
		return 0;
	return v * mul;
}

enum {
	OPT_NAME = 256, OPT_DIR, OPT_MEM, OPT_CPUS, OPT_KERNEL, OPT_INITRD,
	OPT_APPEND, OPT_DISK, OPT_TAP, OPT_MAC, OPT_USER_NET, OPT_INCOMING,
	OPT_PAUSED, OPT_MACHINE, OPT_ACCEL, OPT_QEMU, OPT_EXTRA, OPT_TIMEOUT,
	OPT_WAIT_AFTER, OPT_SERIAL,
};

/* What 'vm start' parses into: the config and the arrays it points into. */
struct start_args {
	struct vm_config c;
	struct vm_disk disks[VM_MAX_DISKS];
	const char *extra[VM_MAX_EXTRA];
	int timeout_ms;
};

/*
 * One option of 'vm start' besides -v and -h. 0, TSB_EXIT_USAGE, or -1 for
 * what getopt could not take ('?' or ':').
 */
static int start_opt(int o, struct start_args *a)
{
	struct vm_config *c = &a->c;
	uint64_t v;

	switch (o) {
	case OPT_NAME: c->name = optarg; break;
	case OPT_DIR: c->dir = optarg; break;
	case OPT_MEM: c->mem = optarg; break;
	case OPT_CPUS:
		if (tsb_parse_u64(optarg, 1, 64, &v) < 0)
			return usage_error("--cpus '%s' is not 1..64",
					   optarg);
		c->cpus = (unsigned int)v;
		break;
	case OPT_KERNEL: c->kernel = optarg; break;
	case OPT_INITRD: c->initrd = optarg; break;
	case OPT_APPEND: c->append = optarg; break;
	case OPT_DISK:
		if (c->n_disks == VM_MAX_DISKS)
			return usage_error("more than %d disks", VM_MAX_DISKS);
		if (parse_disk(optarg, &a->disks[c->n_disks]) < 0)
			return usage_error("bad --disk '%s' (FILE[,format=raw|qcow2][,id=ID])",
					   optarg);
		c->n_disks++;
		break;
	case OPT_TAP:
		if (c->net == VM_NET_USER)
			return usage_error("%s: --tap and --user-net exclude each other",
					   "network");
		c->net = VM_NET_TAP;
		c->tap_ifname = optarg;
		break;
	case OPT_MAC: c->mac = optarg; break;
	case OPT_USER_NET:
		if (c->net == VM_NET_TAP)
			return usage_error("%s: --tap and --user-net exclude each other",
					   "network");
		c->net = VM_NET_USER;
		c->user_hostfwd = optarg;
		break;
	case OPT_INCOMING: c->incoming = true; break;
	case OPT_PAUSED: c->paused = true; break;
	case OPT_MACHINE: c->machine = optarg; break;
	case OPT_ACCEL:
		if (strcmp(optarg, "tcg") && strcmp(optarg, "kvm"))
			return usage_error("--accel '%s' is not tcg or kvm",
					   optarg);
		c->accel = optarg;
		break;
	case OPT_QEMU: c->qemu = optarg; break;
	case OPT_EXTRA:
		if (c->n_extra == VM_MAX_EXTRA)
			return usage_error("more than %d --extra", VM_MAX_EXTRA);
		a->extra[c->n_extra++] = optarg;
		break;
	case OPT_TIMEOUT:
		if (parse_seconds(optarg, &a->timeout_ms) < 0)
			return usage_error("bad --timeout '%s' (seconds)",
					   optarg);
		break;
	default:
		return -1;
	}
	return 0;
}

/* Checks the options of 'vm start' together. 0 or TSB_EXIT_USAGE. */
static int start_check(const struct vm_config *c)
{
	uint64_t mem;

	if (!c->dir)
		return usage_error("%s: --dir is required", "start");
	if (!c->mem)
		return usage_error("%s: --mem is required", "start");
	mem = qemu_mem_bytes(c->mem);
	if (!mem)
		return usage_error("bad --mem '%s' (e.g. 524292K)", c->mem);
	if ((c->initrd || c->append) && !c->kernel)
		return usage_error("%s: --initrd and --append need --kernel",
				   "start");
	if (c->mac && c->net == VM_NET_NONE)
		return usage_error("%s: --mac needs --tap or --user-net", "start");
	if (strchr(c->dir, ','))
		return usage_error("--dir '%s' must not contain a comma", c->dir);
	if ((!c->accel || !strcmp(c->accel, "tcg")) && mem % (256 << 10) == 0)
		log_warn("guest RAM %s is a multiple of 256 KiB: QEMU 7.2 under TCG loses guest writes during migration with such sizes (use e.g. 524292K)",
			 c->mem);
	return 0;
}

/* Starts QEMU in the run directory and prints where it is. An exit code. */
static int start_and_print(struct vm_config *c, int timeout_ms)
{
	char dir[PATH_MAX], path[PATH_MAX], err[512];
	pid_t pid;
	int r;

	r = abs_dir(c->dir, true, dir);
	if (r < 0) {
		fprintf(stderr, "tsubame vm: run directory '%s': %s\n", c->dir,
			strerror(-r));
		return TSB_EXIT_FAILED;
	}
	c->dir = dir;
	r = vm_start(c, timeout_ms, &pid, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, "tsubame vm: start failed: %s\n", err);
		if (r == -ECHILD || r == -ETIMEDOUT)
			fprintf(stderr, "tsubame vm: see %s/" VM_QEMU_LOG "\n",
				dir);
		return TSB_EXIT_FAILED;
	}
	printf("pid %d\n", (int)pid);
	(void)vm_path(dir, VM_QMP_SOCK, path, sizeof(path));
	printf("qmp %s\n", path);
	(void)vm_path(dir, VM_SERIAL_LOG, path, sizeof(path));
	printf("serial %s\n", path);
	return TSB_EXIT_OK;
}

static int vm_cmd_start(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, OPT_NAME },
		{ "dir", required_argument, NULL, OPT_DIR },
		{ "mem", required_argument, NULL, OPT_MEM },
		{ "cpus", required_argument, NULL, OPT_CPUS },
		{ "kernel", required_argument, NULL, OPT_KERNEL },
		{ "initrd", required_argument, NULL, OPT_INITRD },
		{ "append", required_argument, NULL, OPT_APPEND },
		{ "disk", required_argument, NULL, OPT_DISK },
		{ "tap", required_argument, NULL, OPT_TAP },
		{ "mac", required_argument, NULL, OPT_MAC },
		{ "user-net", required_argument, NULL, OPT_USER_NET },
		{ "incoming", no_argument, NULL, OPT_INCOMING },
		{ "paused", no_argument, NULL, OPT_PAUSED },
		{ "machine", required_argument, NULL, OPT_MACHINE },
		{ "accel", required_argument, NULL, OPT_ACCEL },
		{ "qemu", required_argument, NULL, OPT_QEMU },
		{ "extra", required_argument, NULL, OPT_EXTRA },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct start_args a = { .timeout_ms = 30000 };
	int o, r;

	a.c.extra = a.extra;
	a.c.disks = a.disks;
	opterr = 0;
	while ((o = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (o) {
		case 'v': tsb_log_set_level(TSB_LOG_DEBUG); break;
		case 'h': vm_usage(stdout); return TSB_EXIT_OK;
		default:
			r = start_opt(o, &a);
			if (r < 0)
				return bad_option(argv, o);
			if (r)
				return r;
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	r = start_check(&a.c);
	if (r)
		return r;
	return start_and_print(&a.c, a.timeout_ms);
}

/* Parses --dir [--timeout] [-v] for stop and status. */
static int parse_dir_opts(int argc, char **argv, const char **ret_dir,
			  int *timeout_ms, bool allow_timeout)
{
	static const struct option opts[] = {
		{ "dir", required_argument, NULL, OPT_DIR },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int o;

	opterr = 0;
	while ((o = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (o) {
		case OPT_DIR: *ret_dir = optarg; break;
		case OPT_TIMEOUT:
			if (!allow_timeout)
				return usage_error("%s takes no --timeout",
						   argv[0]);
			if (parse_seconds(optarg, timeout_ms) < 0)
				return usage_error("bad --timeout '%s' (seconds)",
						   optarg);
			break;
		case 'v': tsb_log_set_level(TSB_LOG_DEBUG); break;
		case 'h': vm_usage(stdout); return -1;
		default: return bad_option(argv, o);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!*ret_dir)
		return usage_error("%s: --dir is required", argv[0]);
	return 0;
}

static int vm_cmd_stop(int argc, char **argv)
{
	const char *dir = NULL;
	int timeout_ms = 10000;
	int r;

	r = parse_dir_opts(argc, argv, &dir, &timeout_ms, true);
	if (r)
		return r < 0 ? TSB_EXIT_OK : r;
	r = vm_stop(dir, timeout_ms);
	if (r == -ESRCH) {
		printf("not running\n");
		return TSB_EXIT_OK;
	}
	if (r < 0) {
		fprintf(stderr, "tsubame vm: stop in '%s' failed: %s\n", dir,
			r == -EPERM ? "the pid in qemu.pid is not this VM's QEMU"
				    : strerror(-r));
		return TSB_EXIT_FAILED;
	}
	printf("stopped\n");
	return TSB_EXIT_OK;
}

static void print_beat(const struct vm_beats *st)
{
	printf("beat %llu %s\n", (unsigned long long)st->last,
	       st->last_ok ? "ok" : "CORRUPT");
}

static int vm_cmd_status(int argc, char **argv)
{
	char path[PATH_MAX], err[256];
	const char *dir = NULL;
	struct vm_beats st;
	struct qmp *q = NULL;
	json_t *res = NULL;
	const char *state = NULL;
	int timeout_ms = 0;
	bool ok = false;
	pid_t pid;
	int r;

	r = parse_dir_opts(argc, argv, &dir, &timeout_ms, false);
	if (r)
		return r < 0 ? TSB_EXIT_OK : r;
	r = vm_read_pid(dir, &pid);
	if (r == 0)
		printf("pid %d\n", (int)pid);
	else
		printf("pid none\n");
	if (vm_path(dir, VM_QMP_SOCK, path, sizeof(path)) < 0) {
		fprintf(stderr, "tsubame vm: run directory path too long\n");
		return TSB_EXIT_FAILED;
	}
	printf("qmp %s\n", path);
	if (r == 0 && qmp_open(path, 2000, &q) == 0) {
		qmp_set_timeout(q, 5000);
		r = qmp_execute(q, "query-status", NULL, &res, err, sizeof(err));
		if (r == 0 && json_unpack(res, "{s:s}", "status", &state) == 0) {
			printf("status %s\n", state);
			ok = true;
		} else {
			printf("status unknown\n");
			if (r < 0)
				fprintf(stderr, "tsubame vm: query-status: %s\n",
					err);
		}
		json_decref(res);
		qmp_close(q);
	} else {
		printf("status %s\n", r == 0 ? "unreachable" : "not-running");
	}
	memset(&st, 0, sizeof(st));
	if (vm_path(dir, VM_SERIAL_LOG, path, sizeof(path)) == 0 &&
	    vm_scan_beats(path, &st) == 0 && st.have)
		print_beat(&st);
	else
		printf("beat none\n");
	if (st.n_corrupt)
		printf("corrupt %llu first %llu\n",
		       (unsigned long long)st.n_corrupt,
		       (unsigned long long)st.first_corrupt);
	return ok ? TSB_EXIT_OK : TSB_EXIT_FAILED;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { .tv_sec = ms / 1000,
			       .tv_nsec = (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

static int vm_cmd_beat(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "dir", required_argument, NULL, OPT_DIR },
		{ "serial", required_argument, NULL, OPT_SERIAL },
		{ "wait-after", required_argument, NULL, OPT_WAIT_AFTER },
		{ "timeout", required_argument, NULL, OPT_TIMEOUT },
		{ "verbose", no_argument, NULL, 'v' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *dir = NULL, *serial = NULL;
	char path[PATH_MAX];
	bool wait = false;
	uint64_t after = 0, deadline;
	int timeout_ms = 60000;
	struct vm_beats st;
	pid_t pid;
	int o, r;

	opterr = 0;
	while ((o = getopt_long(argc, argv, ":vh", opts, NULL)) != -1) {
		switch (o) {
		case OPT_DIR: dir = optarg; break;
		case OPT_SERIAL: serial = optarg; break;
		case OPT_WAIT_AFTER:
			if (tsb_parse_u64(optarg, 0, UINT64_MAX, &after) < 0)
				return usage_error("bad --wait-after '%s' (a beat counter)",
						   optarg);
			wait = true;
			break;
		case OPT_TIMEOUT:
			if (parse_seconds(optarg, &timeout_ms) < 0)
				return usage_error("bad --timeout '%s' (seconds)",
						   optarg);
			break;
		case 'v': tsb_log_set_level(TSB_LOG_DEBUG); break;
		case 'h': vm_usage(stdout); return TSB_EXIT_OK;
		default: return bad_option(argv, o);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument '%s'", argv[optind]);
	if (!dir == !serial)
		return usage_error("%s: give one of --dir and --serial", "beat");
	if (!serial) {
		if (vm_path(dir, VM_SERIAL_LOG, path, sizeof(path)) < 0) {
			fprintf(stderr, "tsubame vm: run directory path too long\n");
			return TSB_EXIT_FAILED;
		}
		serial = path;
	}

	memset(&st, 0, sizeof(st));
	deadline = tsb_now_ns() + (uint64_t)timeout_ms * 1000000ull;
	for (;;) {
		r = vm_scan_beats(serial, &st);
		if (r < 0 && !(wait && r == -ENOENT)) {
			fprintf(stderr, "tsubame vm: cannot read '%s': %s\n",
				serial, strerror(-r));
			return TSB_EXIT_FAILED;
		}
		if (st.n_corrupt) {
			if (st.have)
				print_beat(&st);
			fprintf(stderr, "tsubame vm: guest reported CORRUPT (first at beat %llu, %llu CORRUPT lines)\n",
				(unsigned long long)st.first_corrupt,
				(unsigned long long)st.n_corrupt);
			return TSB_EXIT_FAILED;
		}
		if (!wait || (st.have && st.last > after))
			break;
		if (dir && vm_read_pid(dir, &pid) < 0) {
			/* QEMU is gone: one last look, then give up */
			r = vm_scan_beats(serial, &st);
			if (r == 0 && !st.n_corrupt && st.have && st.last > after)
				break;
			fprintf(stderr, "tsubame vm: QEMU in '%s' is not running and no beat after %llu appeared\n",
				dir, (unsigned long long)after);
			return TSB_EXIT_FAILED;
		}
		if (tsb_now_ns() >= deadline) {
			fprintf(stderr, "tsubame vm: no beat after %llu within %d s (last: %s)\n",
				(unsigned long long)after, timeout_ms / 1000,
				st.have ? st.last_line : "none");
			return TSB_EXIT_FAILED;
		}
		sleep_ms(100);
	}
	if (!st.have) {
		fprintf(stderr, "tsubame vm: no beat yet in '%s'\n", serial);
		return TSB_EXIT_FAILED;
	}
	print_beat(&st);
	return TSB_EXIT_OK;
}

int cmd_vm(int argc, char **argv)
{
	const char *sub;

	if (argc < 2) {
		fprintf(stderr, "tsubame vm: missing subcommand (start, stop, status, beat); try 'tsubame vm --help'\n");
		return TSB_EXIT_USAGE;
	}
	sub = argv[1];
	if (!strcmp(sub, "--help") || !strcmp(sub, "-h") || !strcmp(sub, "help")) {
		vm_usage(stdout);
		return TSB_EXIT_OK;
	}
	if (!strcmp(sub, "start"))
		return vm_cmd_start(argc - 1, argv + 1);
	if (!strcmp(sub, "stop"))
		return vm_cmd_stop(argc - 1, argv + 1);
	if (!strcmp(sub, "status"))
		return vm_cmd_status(argc - 1, argv + 1);
	if (!strcmp(sub, "beat"))
		return vm_cmd_beat(argc - 1, argv + 1);
	return usage_error("unknown subcommand '%s'", sub);
}
