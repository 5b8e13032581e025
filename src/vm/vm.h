/*
 * VM control: start a QEMU guest in the background, stop it, and read the
 * heartbeat its test guest prints on the serial console.
 *
 * Every VM has a run directory holding (names relative to it):
 *   qmp.sock    QMP socket (-qmp unix:...,server=on,wait=off)
 *   qemu.pid    QEMU's pid, written by QEMU (-pidfile), removed at its exit
 *   serial.log  the guest's serial console (-serial file:...)
 *   qemu.log    first line "+ <argv>", then QEMU's stdout and stderr
 * QEMU runs in its own session (setsid), not daemonized: the pid that
 * vm_start() returns is QEMU's own, and it is the one in qemu.pid.
 */
#ifndef TSB_VM_H
#define TSB_VM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define VM_QMP_SOCK "qmp.sock"
#define VM_PIDFILE "qemu.pid"
#define VM_SERIAL_LOG "serial.log"
#define VM_QEMU_LOG "qemu.log"

#define VM_DEFAULT_QEMU "qemu-system-x86_64"
/* Same on source and destination; what QEMU 7.2 calls "pc". */
#define VM_DEFAULT_MACHINE "pc-i440fx-7.2"
#define VM_DEFAULT_ACCEL "tcg"

enum vm_net_kind {
	VM_NET_NONE,	/* no NIC */
	VM_NET_TAP,	/* -netdev tap,ifname=...,script=no,downscript=no */
	VM_NET_USER,	/* -netdev user[,hostfwd=...] (tests) */
};

enum vm_disk_format {
	VM_DISK_RAW,
	VM_DISK_QCOW2,
};

struct vm_disk {
	const char *file;
	enum vm_disk_format format;
	const char *id;		/* drive id; NULL: "disk<index>" */
};

/*
 * What to start. All strings are borrowed: they must outlive the call that
 * takes the config. A zeroed struct plus dir and mem is a valid config;
 * NULL/0 fields take the defaults in brackets.
 */
struct vm_config {
	const char *name;	/* -name [none] */
	const char *dir;	/* run directory, created if missing (required) */
	const char *qemu;	/* binary, searched in PATH [VM_DEFAULT_QEMU] */
	const char *machine;	/* [VM_DEFAULT_MACHINE]; "none" for no guest */
	const char *accel;	/* "tcg" or "kvm" [VM_DEFAULT_ACCEL] */
	const char *mem;	/* -m, e.g. "524292K" (required) */
	unsigned int cpus;	/* -smp [1] */
	const char *kernel;	/* -kernel [none: firmware boot] */
	const char *initrd;	/* -initrd, needs kernel */
	const char *append;	/* -append, needs kernel */
	const struct vm_disk *disks;	/* virtio-blk-pci each */
	size_t n_disks;
	enum vm_net_kind net;	/* one virtio-net-pci NIC, id "net0" */
	const char *tap_ifname;	/* VM_NET_TAP: existing tap device */
	const char *mac;	/* NIC MAC [QEMU's default] */
	const char *user_hostfwd; /* VM_NET_USER: hostfwd rule(s), verbatim */
	bool incoming;		/* -incoming defer */
	bool paused;		/* -S */
	const char *const *extra; /* appended to argv as they are */
	size_t n_extra;
};

/*
 * Builds QEMU's argv for c (pure: touches nothing). Returns 0 and a
 * NULL-terminated array owned by the caller (free with vm_argv_free), or
 * -EINVAL (bad config: missing dir/mem, initrd/append without kernel, tap
 * without ifname, a comma in dir, unknown accel) or -ENOMEM.
 */
int vm_build_argv(const struct vm_config *c, char ***ret_argv);
/* Frees an argv from vm_build_argv. Accepts NULL. */
void vm_argv_free(char **argv);

/* Writes "<dir>/<file>" into buf; -ENAMETOOLONG if it does not fit. */
int vm_path(const char *dir, const char *file, char *buf, size_t len);

/*
 * Starts QEMU for c in the background (own session, stdin /dev/null,
 * stdout/stderr to <dir>/qemu.log) and waits up to timeout_ms until its
 * QMP socket answers query-status. Returns 0 and QEMU's pid; the caller may
 * exit and leave QEMU running, or stop it with vm_stop(). On failure QEMU
 * has been killed and reaped, -errno is returned and errbuf (if non-NULL)
 * says why, e.g. QEMU's last error line: -EBUSY (a QEMU already runs in
 * dir), -ECHILD (QEMU exited during startup), -ETIMEDOUT, -ENOENT (no such
 * binary), -EINVAL (bad config).
 */
int vm_start(const struct vm_config *c, int timeout_ms, pid_t *ret_pid,
	     char *errbuf, size_t errlen);

/*
 * Reads <dir>/qemu.pid. Returns 0 and the pid if that process is alive,
 * -ENOENT without a pidfile, -ESRCH if the process is gone, -EBADMSG if
 * the file does not hold a pid.
 */
int vm_read_pid(const char *dir, pid_t *ret_pid);

/*
 * True if pid names a live (not zombie) process. Reaps pid if it is an
 * exited child of ours.
 */
bool vm_pid_alive(pid_t pid);

/*
 * Stops the QEMU of run directory dir: QMP "quit", then SIGTERM once
 * timeout_ms has passed, then SIGKILL after as long again. Returns 0 once
 * it is gone, -ESRCH if it was not running, -ETIMEDOUT if even SIGKILL did
 * not end it, -EPERM if the pid in qemu.pid is not a QEMU of this dir.
 */
int vm_stop(const char *dir, int timeout_ms);

/*
 * Stops QEMU process pid: QMP quit over qmp_path (may be NULL), SIGTERM,
 * SIGKILL as vm_stop. For callers that know the pid (tests).
 */
int vm_stop_pid(pid_t pid, const char *qmp_path, int timeout_ms);

/*
 * Heartbeat lines: the test guest prints "beat <n> ok" or "beat <n>
 * CORRUPT" (n decimal, text may follow after a space, "beat" may follow
 * other text on the line). Only complete ('\n'-terminated) lines count;
 * lines over VM_BEAT_MAX_LINE bytes are ignored.
 */
#define VM_BEAT_MAX_LINE 512

struct vm_beats {
	/* results */
	bool have;		/* at least one beat line seen */
	uint64_t last;		/* counter of the last beat line */
	bool last_ok;		/* its status */
	char last_line[VM_BEAT_MAX_LINE]; /* that line, without "\r\n" */
	uint64_t n_beats;	/* beat lines seen */
	uint64_t n_corrupt;	/* CORRUPT lines seen */
	uint64_t first_corrupt;	/* counter of the first CORRUPT line */
	/* resume state: where the next scan starts */
	uint64_t offset;
};

/*
 * Scans serial_path from st->offset on, updating st; start with a zeroed
 * st and pass it again to read only what was appended since. If the file
 * shrank (a new QEMU), st is reset and the scan starts over. Returns 0,
 * -ENOENT or -errno.
 */
int vm_scan_beats(const char *serial_path, struct vm_beats *st);

/*
 * The last beat in serial_path: 0 with its counter and status, -ENODATA if
 * there is none yet, -ENOENT or -errno.
 */
int vm_last_beat(const char *serial_path, uint64_t *ret_n, bool *ret_ok);

/*
 * Parses one line (without its newline). Returns true and the counter and
 * status if it holds a beat.
 */
bool vm_parse_beat_line(const char *line, size_t len, uint64_t *ret_n,
			bool *ret_ok);

#endif
