/*
 * The disk route end to end in one process, with real QEMUs (-machine
 * none, a -drive each; skipped without QEMU): disk_send_start() mirrors
 * the source QEMU's disk through our NBD server and the disk channel
 * (TLS over loopback) into disk_recv_start()'s NBD client of the
 * destination QEMU's export; writes made while the mirror is ready
 * follow; disk_send_switchover() completes it. The images must be equal.
 *  - first copy: the destination image is empty;
 *  - return: the destination holds an older copy (10% changed since):
 *    unchanged blocks travel as references, found in place;
 *  - clone: the destination image is empty but the receiver indexes a
 *    base image the disk was cloned from (recv --disk-source): the
 *    blocks still from the base travel as references, read from it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/log.h"
#include "disk/disk.h"
#include "qmp/qmp.h"
#include "scratch.h"
#include "store/diskindex.h"
#include "wire/tls.h"

#define SIZE (16 << 20)

static pid_t pids[2] = { -1, -1 };

static int setup(void **state)
{
	(void)state;
	return scratch_make("test-disk");
}

static int teardown(void **state)
{
	(void)state;
	for (int i = 0; i < 2; i++) {
		if (pids[i] > 0) {
			kill(pids[i], SIGKILL);
			waitpid(pids[i], NULL, 0);
			pids[i] = -1;
		}
	}
	scratch_remove();
	return 0;
}

/* Starts QEMU with image as drive "disk0"; returns its QMP connection. */
static struct qmp *start_qemu(int slot, const char *image)
{
	char drive[512], qsock[128], log[128], name[32];
	struct qmp *q = NULL;

	snprintf(name, sizeof(name), "qmp%d.sock", slot);
	scratch_path(qsock, sizeof(qsock), name);
	snprintf(name, sizeof(name), "qemu%d.log", slot);
	scratch_path(log, sizeof(log), name);
	snprintf(drive, sizeof(drive), "file=%s,format=raw,if=none,id=disk0", image);
	pids[slot] = spawn_bare_qemu("-drive", drive, qsock, log);
	assert_true(pids[slot] > 0);
	assert_int_equal(qmp_open(qsock, 20000, &q), 0);
	return q;
}

static void stop_qemu(int slot, struct qmp *q)
{
	(void)qmp_execute(q, "quit", NULL, NULL, NULL, 0);
	qmp_close(q);
	waitpid(pids[slot], NULL, 0);
	pids[slot] = -1;
}

static void hmp(struct qmp *q, const char *line)
{
	json_t *args = json_pack("{s:s}", "command-line", line);
	json_t *res = NULL;

	assert_int_equal(qmp_execute(q, "human-monitor-command", args, &res, NULL, 0), 0);
	json_decref(args);
	json_decref(res);
}

static json_int_t report_int(json_t *report, const char *key)
{
	json_t *d = json_array_get(json_object_get(json_object_get(report, "disks"), "disks"), 0);

	return json_integer_value(json_object_get(json_object_get(d, "blocks"), key));
}

enum mode { FIRST, RETURN, CLONE };

static void migrate_disk(enum mode mode)
{
	bool older_copy = mode != FIRST;
	char src[128], dst[128], base[128], key[128], marker[160], err[512] = "";
	struct wire_tls *tc, *ts;
	struct wire_key k;
	struct diskindex *idx = NULL;
	struct disk_recv *dr = NULL;
	struct disk_send *ds = NULL;
	struct qmp *qs, *qd;
	json_t *srep = json_object(), *rrep = json_object();
	uint16_t port;
	char portstr[16];
	int lfd;

	if (!have_tool("qemu-system-x86_64") || !have_tool("qemu-img") || !have_tool("qemu-io"))
		skip();
	scratch_path(src, sizeof(src), "src.raw");
	scratch_path(dst, sizeof(dst), "dst.raw");
	scratch_path(key, sizeof(key), "key");
	scratch_path(base, sizeof(base), "base.raw");
	/* Random content everywhere but a zero hole (8..12 MiB). */
	assert_int_equal(run_cmd("head -c %d /dev/urandom > %s && "
			     "qemu-io -f raw -c 'write -z 8M 4M' %s >/dev/null",
			     SIZE, src, src), 0);
	if (older_copy) {
		/* The destination's copy (or base); then 10% of the source changes. */
		assert_int_equal(run_cmd("cp %s %s", src, mode == RETURN ? dst : base), 0);
		if (mode == CLONE)
			assert_int_equal(run_cmd("qemu-img create -q -f raw %s %d", dst, SIZE), 0);
		assert_int_equal(run_cmd("qemu-io -f raw -c 'write -P 0x5a 1M 1M' "
				     "-c 'write -P 0x6b 13M 640k' %s >/dev/null", src), 0);
	} else {
		assert_int_equal(run_cmd("qemu-img create -q -f raw %s %d", dst, SIZE), 0);
	}
	assert_int_equal(wire_keygen(key, "test", NULL, err, sizeof(err)), 0);
	assert_int_equal(wire_key_load(key, &k, err, sizeof(err)), 0);
	tc = wire_tls_new(WIRE_TLS_CLIENT);
	ts = wire_tls_new(WIRE_TLS_SERVER);
	assert_non_null(tc);
	assert_non_null(ts);
	assert_int_equal(wire_tls_set_psk(tc, &k), 0);
	assert_int_equal(wire_tls_set_psk(ts, &k), 0);
	wire_key_wipe(&k);
	assert_int_equal(wire_tcp_listen("127.0.0.1", "0", 4, &lfd), 0);
	assert_int_equal(wire_tcp_local_port(lfd, &port), 0);
	snprintf(portstr, sizeof(portstr), "%u", port);

	if (older_copy) {
		idx = diskindex_new();
		assert_non_null(idx);
		assert_int_equal(diskindex_add(idx, mode == RETURN ? dst : base, "raw", err,
					       sizeof(err)), 0);
	}
	qs = start_qemu(0, src);
	qd = start_qemu(1, dst);

	struct disk_recv_options ro = { .tls = ts, .listen_fd = lfd, .index = idx };
	assert_int_equal(disk_recv_start(qd, &ro, &dr, err, sizeof(err)), 0);
	struct disk_send_options so = { .host = "127.0.0.1", .port = portstr, .tls = tc,
					.ready_timeout_ms = 60000 };
	if (disk_send_start(qs, &so, &ds, err, sizeof(err)) < 0)
		fail_msg("disk_send_start: %s", err);
	assert_non_null(ds);
	snprintf(marker, sizeof(marker), "%s.tsubame-incomplete", dst);
	assert_int_equal(access(marker, F_OK), 0);

	/* Writes while the mirrors are ready, as a guest would. */
	hmp(qs, "qemu-io disk0 \"write -P 0x77 3M 192k\"");
	hmp(qs, "qemu-io disk0 \"write -z 14M 64k\"");
	hmp(qs, "qemu-io disk0 \"write -P 0x78 9M 4k\"");

	if (disk_send_switchover(ds, qs, err, sizeof(err)) < 0)
		fail_msg("switchover: %s", err);
	/* As send does before its commit: the receiver has applied and flushed all. */
	if (disk_send_confirmed(ds, 60000, err, sizeof(err)) < 0)
		fail_msg("confirmation: %s", err);
	disk_send_finish(ds, qs, srep);
	assert_int_equal(disk_recv_finish(dr, qd, true, rrep, err, sizeof(err)), 0);
	assert_int_not_equal(access(marker, F_OK), 0);
	stop_qemu(0, qs);
	stop_qemu(1, qd);
	assert_int_equal(run_cmd("cmp %s %s", src, dst), 0);

	json_int_t ref = report_int(srep, "ref"), data = report_int(srep, "data");
	print_message("%s: sender blocks data %lld ref %lld zero %lld; receiver fetched %lld, "
		      "already in place %lld\n",
		      mode == RETURN ? "return" : mode == CLONE ? "clone" : "first", (long long)data, (long long)ref,
		      (long long)report_int(srep, "zero"), (long long)report_int(rrep, "fetched"),
		      (long long)report_int(rrep, "same"));
	if (older_copy) {
		/* 12 MiB of data of which 1.6 MiB changed (+ the late writes). */
		assert_true(ref >= (SIZE / 4096 - 1024) * 8 / 10);
		assert_true(data <= (SIZE / 4096) * 2 / 10);
		/* Unchanged blocks are found in place, not rewritten. */
		if (mode == RETURN)
			assert_true(report_int(rrep, "same") >= ref * 8 / 10);
		else
			assert_int_equal(report_int(rrep, "same"), 0);
	} else {
		assert_int_equal(ref, 0);
		assert_true(data >= (SIZE / 4096 - 1024));
		assert_true(report_int(srep, "zero") > 0);	/* the 4 MiB hole */
	}
	json_decref(srep);
	json_decref(rrep);
	diskindex_free(idx);
	wire_tls_free(tc);
	wire_tls_free(ts);
}

static void test_first_copy(void **state)
{
	(void)state;
	migrate_disk(FIRST);
}

static void test_return(void **state)
{
	(void)state;
	migrate_disk(RETURN);
}

static void test_clone(void **state)
{
	(void)state;
	migrate_disk(CLONE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_first_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_return, setup, teardown),
		cmocka_unit_test_setup_teardown(test_clone, setup, teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	if (getenv("TSB_DISK_TRACE"))
		tsb_log_set_level(TSB_LOG_DEBUG);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
