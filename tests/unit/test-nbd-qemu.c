/*
 * NBD against real QEMU tools (each test skips when its tool is missing):
 *  - our client against qemu-nbd serving a raw and a qcow2 image:
 *    pipelined writes, read back, write zeroes, trim, flush, block status;
 *  - our server (file-backed, writes completed asynchronously by a worker
 *    thread the way a proxy would) driven by qemu-io, qemu-img and
 *    qemu-nbd --list;
 *  - a real source QEMU (-machine none, a raw image as node drive0)
 *    running blockdev-mirror into our server: the job gets ready, a write
 *    lands during the mirror, block-job-cancel completes it and the target
 *    file equals the source. What QEMU sent is printed (docs/nbd.md).
 * Every process started is waited for or killed by pid.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/log.h"
#include "nbd/nbd.h"
#include "qmp/qmp.h"
#include "scratch.h"


static pid_t qemu_pid = -1;

static int setup(void **state)
{
	return scratch_make("tsb-nbd");
}

static int teardown(void **state)
{
	if (qemu_pid > 0) {
		kill(qemu_pid, SIGKILL);
		(void)waitpid(qemu_pid, NULL, 0);
		qemu_pid = -1;
	}
	scratch_remove();
	return 0;
}

static void fill_pattern(uint8_t *p, size_t len, uint64_t offset, uint8_t seed)
{
	size_t i;

	for (i = 0; i < len; i++)
		p[i] = (uint8_t)((offset + i) * 131 + seed + ((offset + i) >> 12));
}

/* ---- a file export, writes completed by a worker thread ---- */

struct fexp {
	int fd;
	uint64_t size;
	struct nbd_server *srv;
	pthread_t worker;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct nbd_io *queue[256];
	unsigned int head, tail;
	bool quit;
	uint64_t outstanding[256];	/* seqs of writes not completed */
	unsigned int n_out;
	unsigned int flush_violations;	/* flush called with writes pending */
	unsigned int n_flush;
};

static int f_size(void *user, uint64_t *ret)
{
	*ret = ((struct fexp *)user)->size;
	return 0;
}

static int f_read(void *user, struct nbd_io *io)
{
	struct fexp *f = user;
	ssize_t n = pread(f->fd, io->data, io->length, (off_t)io->offset);

	return n == (ssize_t)io->length ? 0 : -EIO;
}

static int zero_range(struct fexp *f, struct nbd_io *io)
{
	int mode = io->flags & NBD_CMD_FLAG_NO_HOLE ?
		   FALLOC_FL_ZERO_RANGE :
		   FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE;
	static const uint8_t z[65536];
	uint64_t off = io->offset, left = io->length;

	if (fallocate(f->fd, mode, (off_t)io->offset, io->length) == 0)
		return 0;
	if (io->flags & NBD_CMD_FLAG_FAST_ZERO)
		return -ENOTSUP;
	while (left) {
		size_t n = left < sizeof(z) ? left : sizeof(z);

		if (pwrite(f->fd, z, n, (off_t)off) != (ssize_t)n)
			return -EIO;
		off += n;
		left -= n;
	}
	return 0;
}

static int apply(struct fexp *f, struct nbd_io *io)
{
	switch (io->type) {
	case NBD_CMD_WRITE:
		return pwrite(f->fd, io->data, io->length, (off_t)io->offset) ==
		       (ssize_t)io->length ? 0 : -EIO;
	case NBD_CMD_WRITE_ZEROES:
		return zero_range(f, io);
	case NBD_CMD_TRIM:
		return fallocate(f->fd, FALLOC_FL_PUNCH_HOLE |
				 FALLOC_FL_KEEP_SIZE, (off_t)io->offset,
				 io->length) ? -errno : 0;
	case NBD_CMD_FLUSH:
		return fdatasync(f->fd) ? -errno : 0;
	}
	return -EINVAL;
}

static void *worker(void *arg)
{
	struct fexp *f = arg;

	pthread_mutex_lock(&f->lock);
	for (;;) {
		struct nbd_io *io;
		int r;

		while (f->head == f->tail && !f->quit)
			pthread_cond_wait(&f->cond, &f->lock);
		if (f->head == f->tail)
			break;
		io = f->queue[f->head++ % 256];
		pthread_mutex_unlock(&f->lock);
		r = apply(f, io);
		pthread_mutex_lock(&f->lock);
		for (unsigned int i = 0; i < f->n_out; i++)
			if (f->outstanding[i] == io->seq)
				f->outstanding[i] = f->outstanding[--f->n_out];
		pthread_mutex_unlock(&f->lock);
		nbd_server_complete(f->srv, io, r);
		pthread_mutex_lock(&f->lock);
	}
	pthread_mutex_unlock(&f->lock);
	return NULL;
}

static int f_queue(void *user, struct nbd_io *io)
{
	struct fexp *f = user;

	pthread_mutex_lock(&f->lock);
	if (io->type == NBD_CMD_FLUSH) {
		/* Every write that arrived before the flush is completed. */
		f->n_flush++;
		for (unsigned int i = 0; i < f->n_out; i++)
			if (f->outstanding[i] < io->seq)
				f->flush_violations++;
	} else {
		f->outstanding[f->n_out++] = io->seq;
	}
	f->queue[f->tail++ % 256] = io;	/* max_inflight 64 < 256 */
	pthread_cond_signal(&f->cond);
	pthread_mutex_unlock(&f->lock);
	return NBD_IO_ASYNC;
}

static const struct nbd_export_ops fexp_ops = {
	.size = f_size,
	.read = f_read,
	.write = f_queue,
	.write_zeroes = f_queue,
	.trim = f_queue,
	.flush = f_queue,
};

struct served {
	struct fexp f;
	struct nbd_server *srv;
	pthread_t thread;
	int rc;
	char sock[128];
};

static void *serve_thread(void *arg)
{
	struct served *s = arg;

	s->rc = nbd_server_serve(s->srv);
	return NULL;
}

/* Starts our server on <scratch>/name.sock for a file of size bytes. */
static void serve_file(struct served *s, const char *file, uint64_t size,
		       const char *export)
{
	struct nbd_server_config cfg = { .export_name = export };

	memset(s, 0, sizeof(*s));
	s->f.fd = open(file, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	assert_true(s->f.fd >= 0);
	assert_int_equal(ftruncate(s->f.fd, (off_t)size), 0);
	s->f.size = size;
	pthread_mutex_init(&s->f.lock, NULL);
	pthread_cond_init(&s->f.cond, NULL);
	s->srv = nbd_server_new(&cfg, &fexp_ops, &s->f);
	assert_non_null(s->srv);
	s->f.srv = s->srv;
	scratch_path(s->sock, sizeof(s->sock), "srv.sock");
	assert_int_equal(nbd_server_listen_unix(s->srv, s->sock), 0);
	assert_int_equal(pthread_create(&s->f.worker, NULL, worker, &s->f), 0);
	assert_int_equal(pthread_create(&s->thread, NULL, serve_thread, s), 0);
}

/* Waits for the connection to end; returns serve's result. */
static int serve_join(struct served *s)
{
	pthread_join(s->thread, NULL);
	pthread_mutex_lock(&s->f.lock);
	s->f.quit = true;
	pthread_cond_signal(&s->f.cond);
	pthread_mutex_unlock(&s->f.lock);
	pthread_join(s->f.worker, NULL);
	if (s->rc)
		print_message("server: %s\n", nbd_server_error(s->srv));
	return s->rc;
}

static void served_fini(struct served *s)
{
	nbd_server_free(s->srv);
	close(s->f.fd);
	pthread_mutex_destroy(&s->f.lock);
	pthread_cond_destroy(&s->f.cond);
}

static void print_stats(const char *who, struct nbd_server *srv)
{
	struct nbd_server_stats st;
	unsigned int i;

	nbd_server_get_stats(srv, &st);
	print_message("%s: client flags 0x%x, options", who,
		      st.client_flags_seen);
	for (i = 1; i < 32; i++)
		if (st.options_seen & (1U << i))
			print_message(" %s", nbd_opt_name(i));
	print_message("; structured %d, base:allocation %d\n", st.structured,
		      st.meta_base_allocation);
	print_message("%s: commands", who);
	for (i = 0; i < 8; i++)
		if (st.n_cmd[i])
			print_message(" %s=%llu", nbd_cmd_name((uint16_t)i),
				      (unsigned long long)st.n_cmd[i]);
	print_message("; written %llu (max %u), zeroed %llu (max %u), read %llu\n",
		      (unsigned long long)st.bytes_written, st.max_write_len,
		      (unsigned long long)st.bytes_zeroed, st.max_zero_len,
		      (unsigned long long)st.bytes_read);
}

/* ---- (a) our client against qemu-nbd ---- */

static pid_t read_pid(const char *pidfile)
{
	FILE *fp = fopen(pidfile, "r");
	int pid = -1;

	if (!fp)
		return -1;
	if (fscanf(fp, "%d", &pid) != 1)
		pid = -1;
	fclose(fp);
	return pid;
}

static void kill_pid(pid_t pid)
{
	int i;

	if (pid <= 0)
		return;
	for (i = 0; i < 50 && kill(pid, 0) == 0; i++)
		usleep(100 * 1000); /* qemu-nbd exits after its client */
	if (kill(pid, 0) == 0)
		kill(pid, SIGKILL);
}

static void client_vs_qemu_nbd(const char *fmt)
{
	enum { SIZE = 16 << 20, CHUNK = 256 << 10, N = SIZE / CHUNK / 2 };
	struct nbd_client_config cfg = {
		.export_name = "disk0", .structured = true,
		.base_allocation = true, .max_inflight = 8,
	};
	char img[128], sock[128], pidf[128], err[256];
	struct nbd_client *cl;
	struct nbd_completion c;
	struct nbd_extent ext[64];
	uint8_t *wbuf, *rbuf;
	uint32_t n_ext, i;
	uint64_t total;
	pid_t pid;
	int r, done;

	if (!have_tool("qemu-nbd") || !have_tool("qemu-img"))
		skip();
	scratch_path(img, sizeof(img), "img");
	scratch_path(sock, sizeof(sock), "qemu-nbd.sock");
	scratch_path(pidf, sizeof(pidf), "qemu-nbd.pid");
	assert_int_equal(run_cmd("qemu-img create -q -f %s %s %d", fmt, img, SIZE), 0);
	assert_int_equal(run_cmd("qemu-nbd --fork --pid-file=%s -k %s -x disk0 -f %s %s",
			     pidf, sock, fmt, img), 0);
	pid = read_pid(pidf);

	r = nbd_client_connect_unix(sock, &cfg, &cl, err, sizeof(err));
	if (r)
		print_message("connect: %s\n", err);
	assert_int_equal(r, 0);
	assert_int_equal(nbd_client_info(cl)->size, SIZE);
	assert_true(nbd_client_structured(cl));
	assert_true(nbd_client_has_base_allocation(cl));
	assert_true(nbd_client_info(cl)->has_block_size);

	/* Pipelined writes of every other chunk, completions in any order. */
	wbuf = malloc(SIZE);
	rbuf = malloc(SIZE);
	assert_non_null(wbuf);
	assert_non_null(rbuf);
	fill_pattern(wbuf, SIZE, 0, 7);
	for (i = 0; i < N; i++) {
		uint64_t off = (uint64_t)i * 2 * CHUNK;

		assert_int_equal(nbd_client_submit(cl, NBD_CMD_WRITE, 0, off,
						   CHUNK, wbuf + off, NULL,
						   NULL, 0, NULL), 0);
	}
	done = 0;
	while (nbd_client_wait(cl, &c) == 0) {
		assert_int_equal(c.err, 0);
		done++;
	}
	assert_int_equal(done, N);
	assert_int_equal(nbd_client_flush(cl), 0);

	/* Pipelined reads of the whole disk. */
	memset(rbuf, 0xee, SIZE);
	for (i = 0; i < SIZE / CHUNK; i++)
		assert_int_equal(nbd_client_submit(cl, NBD_CMD_READ, 0,
						   (uint64_t)i * CHUNK, CHUNK,
						   NULL, rbuf + i * CHUNK,
						   NULL, 0, NULL), 0);
	while (nbd_client_wait(cl, &c) == 0)
		assert_int_equal(c.err, 0);
	for (i = 0; i < SIZE / CHUNK; i++) {
		uint8_t *p = rbuf + i * CHUNK;

		if (i % 2 == 0)
			assert_memory_equal(p, wbuf + i * CHUNK, CHUNK);
		else
			assert_true(p[0] == 0 && !memcmp(p, p + 1, CHUNK - 1));
	}

	/* Block status: allocated data first, a hole (or zeroes) after. */
	r = nbd_client_block_status(cl, 0, 2 * CHUNK, 0, ext, 64, &n_ext);
	assert_int_equal(r, 0);
	assert_true(n_ext >= 2);
	assert_true(ext[0].length >= CHUNK / 2);
	assert_int_equal(ext[0].flags & NBD_STATE_HOLE, 0);
	for (i = 0, total = 0; i < n_ext; i++)
		total += ext[i].length;
	assert_true(total <= 2 * CHUNK);
	print_message("%s: block status of [0, 512K): %u extents, first %u flags %u, then flags %u\n",
		      fmt, n_ext, ext[0].length, ext[0].flags, ext[1].flags);
	r = nbd_client_block_status(cl, 0, SIZE, NBD_CMD_FLAG_REQ_ONE, ext, 64,
				    &n_ext);
	assert_int_equal(r, 0);
	assert_int_equal(n_ext, 1);

	/* Write zeroes (with NO_HOLE, then punching), trim, read back. */
	assert_int_equal(nbd_client_write_zeroes(cl, 0, CHUNK, 0), 0);
	assert_int_equal(nbd_client_write_zeroes(cl, 4 * CHUNK, CHUNK,
						 NBD_CMD_FLAG_NO_HOLE), 0);
	if (nbd_client_info(cl)->tflags & NBD_FLAG_SEND_TRIM)
		assert_int_equal(nbd_client_trim(cl, 8 * CHUNK, CHUNK), 0);
	assert_int_equal(nbd_client_flush(cl), 0);
	assert_int_equal(nbd_client_pread(cl, rbuf, CHUNK, 0), 0);
	assert_true(rbuf[0] == 0 && !memcmp(rbuf, rbuf + 1, CHUNK - 1));
	assert_int_equal(nbd_client_pread(cl, rbuf, CHUNK, 4 * CHUNK), 0);
	assert_true(rbuf[0] == 0 && !memcmp(rbuf, rbuf + 1, CHUNK - 1));
	r = nbd_client_block_status(cl, 0, CHUNK, 0, ext, 64, &n_ext);
	assert_int_equal(r, 0);
	assert_true(ext[0].flags & NBD_STATE_ZERO);

	/* Errors come back as errors, the connection stays usable. */
	assert_int_equal(nbd_client_pread(cl, rbuf, 4096, SIZE), -EINVAL);
	assert_int_equal(nbd_client_pread(cl, rbuf, 4096, SIZE - 4096), 0);

	nbd_client_close(cl);
	kill_pid(pid);

	/* What the image holds, checked offline: chunk 2 is still there. */
	{
		char out[128];

		scratch_path(out, sizeof(out), "img.raw");
		assert_int_equal(run_cmd("qemu-img convert -f %s -O raw %s %s",
				     fmt, img, out), 0);
		int fd = open(out, O_RDONLY | O_CLOEXEC);

		assert_true(fd >= 0);
		assert_int_equal(pread(fd, rbuf, CHUNK, 2 * CHUNK), CHUNK);
		assert_memory_equal(rbuf, wbuf + 2 * CHUNK, CHUNK);
		close(fd);
	}
	free(wbuf);
	free(rbuf);
}

static void test_client_qemu_nbd_raw(void **state)
{
	client_vs_qemu_nbd("raw");
}

static void test_client_qemu_nbd_qcow2(void **state)
{
	client_vs_qemu_nbd("qcow2");
}

/* ---- (b) our server driven by qemu-io, qemu-img, qemu-nbd --list ---- */

static void test_server_qemu_io(void **state)
{
	enum { SIZE = 8 << 20 };
	struct served s;
	char file[128], uri[256], chk[128];
	uint8_t *buf;
	int fd, i;

	if (!have_tool("qemu-io") || !have_tool("qemu-img"))
		skip();
	scratch_path(file, sizeof(file), "target.raw");
	serve_file(&s, file, SIZE, "exp");
	snprintf(uri, sizeof(uri), "nbd+unix:///exp?socket=%s", s.sock);
	assert_int_equal(run_cmd("qemu-io -f raw "
			     "-c 'write -P 0xab 0 1M' "
			     "-c 'write -P 0xcd 1M 3M' "
			     "-c 'write -z 2M 512k' "
			     "-c 'aio_write -P 0x5a 6M 64k' "
			     "-c 'aio_write -P 0x5b 7M 64k' "
			     "-c 'aio_flush' "
			     "-c 'flush' "
			     "-c 'read -P 0xab 0 1M' "
			     "-c 'read -P 0 2M 512k' "
			     "-c 'read -P 0x5b 7M 64k' "
			     "'%s' >/dev/null", uri), 0);
	assert_int_equal(serve_join(&s), 0);
	print_stats("qemu-io", s.srv);
	assert_int_equal(s.f.flush_violations, 0);
	assert_true(s.f.n_flush >= 1);

	buf = malloc(SIZE);
	fd = open(file, O_RDONLY | O_CLOEXEC);
	assert_int_equal(pread(fd, buf, SIZE, 0), SIZE);
	close(fd);
	for (i = 0; i < SIZE; i++) {
		uint8_t want = 0;

		if (i < (1 << 20))
			want = 0xab;
		else if (i >= (2 << 20) && i < (2 << 20) + (512 << 10))
			want = 0;
		else if (i < (4 << 20))
			want = 0xcd;
		else if (i >= (6 << 20) && i < (6 << 20) + (64 << 10))
			want = 0x5a;
		else if (i >= (7 << 20) && i < (7 << 20) + (64 << 10))
			want = 0x5b;
		if (buf[i] != want)
			fail_msg("byte %d is 0x%02x, want 0x%02x", i, buf[i], want);
	}
	served_fini(&s);

	/* qemu-img reads the export through our server (structured reads). */
	serve_file(&s, file, SIZE, "exp");
	scratch_path(chk, sizeof(chk), "copy.raw");
	assert_int_equal(run_cmd("qemu-img convert -f raw -O raw '%s' %s", uri,
			     chk), 0);
	assert_int_equal(serve_join(&s), 0);
	print_stats("qemu-img convert", s.srv);
	served_fini(&s);
	assert_int_equal(run_cmd("cmp -s %s %s", file, chk), 0);

	/* qemu-nbd --list: LIST, then INFO for each export. */
	if (have_tool("qemu-nbd")) {
		serve_file(&s, file, SIZE, "exp");
		char lst[128];

		scratch_path(lst, sizeof(lst), "list.txt");
		assert_int_equal(run_cmd("qemu-nbd --list -k %s > %s", s.sock, lst),
				 0);
		assert_int_equal(run_cmd("grep -q \"export: 'exp'\" %s", lst), 0);
		assert_int_equal(run_cmd("grep -q 'base:allocation' %s", lst), 0);
		assert_int_equal(run_cmd("grep -q 'max block: 33554432' %s", lst), 0);
		(void)serve_join(&s); /* qemu-nbd --list aborts: result 0 */
		print_stats("qemu-nbd --list", s.srv);
		served_fini(&s);
	}
	free(buf);
}

/* ---- (c) blockdev-mirror from a real QEMU into our server ---- */

static int qmp_cmd(struct qmp *q, const char *cmd, json_t *args)
{
	char err[512] = "";
	int r = qmp_execute(q, cmd, args, NULL, err, sizeof(err));

	if (r)
		print_message("%s: %d %s\n", cmd, r, err);
	json_decref(args);
	return r;
}

static void mirror(bool cancel)
{
	enum { SIZE = 32 << 20 };
	char src[128], tgt[128], qsock[128], arg_blk[512];
	struct served s;
	struct qmp *q = NULL;
	struct qmp_event ev;
	int st;

	if (!have_tool("qemu-system-x86_64") || !have_tool("qemu-io") || !have_tool("qemu-img"))
		skip();
	scratch_path(src, sizeof(src), "src.raw");
	scratch_path(tgt, sizeof(tgt), "tgt.raw");
	scratch_path(qsock, sizeof(qsock), "qmp.sock");
	assert_int_equal(run_cmd("qemu-img create -q -f raw %s %d", src, SIZE), 0);
	assert_int_equal(run_cmd("qemu-io -f raw -c 'write -P 0x11 0 3M' "
			     "-c 'write -P 0x22 10M 1M' -c 'write -P 0x33 31M 1M' "
			     "%s >/dev/null", src), 0);
	/* The target starts as garbage where the source is zero. */
	{
		int fd = open(tgt, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
		static uint8_t junk[1 << 20];

		memset(junk, 0x99, sizeof(junk));
		assert_true(fd >= 0);
		assert_int_equal(pwrite(fd, junk, sizeof(junk), 20 << 20),
				 sizeof(junk));
		close(fd);
	}
	serve_file(&s, tgt, SIZE, "drive0");

	snprintf(arg_blk, sizeof(arg_blk),
		 "driver=raw,node-name=drive0,file.driver=file,file.filename=%s",
		 src);
	{
		char log[128];

		scratch_path(log, sizeof(log), "qemu.log");
		qemu_pid = spawn_bare_qemu("-blockdev", arg_blk, qsock, log);
		assert_true(qemu_pid > 0);
	}

	assert_int_equal(qmp_open(qsock, 20000, &q), 0);
	assert_int_equal(qmp_cmd(q, "blockdev-add",
		json_pack("{s:s, s:s, s:{s:s, s:s}, s:s}",
			  "driver", "nbd", "node-name", "tgt",
			  "server", "type", "unix", "path", s.sock,
			  "export", "drive0")), 0);
	assert_int_equal(qmp_cmd(q, "blockdev-mirror",
		json_pack("{s:s, s:s, s:s, s:s}", "job-id", "m0",
			  "device", "drive0", "target", "tgt",
			  "sync", "full")), 0);
	assert_int_equal(qmp_wait_event(q, "BLOCK_JOB_READY", 30000, &ev), 0);
	qmp_event_fini(&ev);

	/* A guest-like write while the mirror is ready: mirrored too. */
	assert_int_equal(qmp_cmd(q, "human-monitor-command",
		json_pack("{s:s}", "command-line",
			  "qemu-io drive0 \"write -P 0x44 5M 128k\"")), 0);

	assert_int_equal(qmp_cmd(q, cancel ? "block-job-cancel" :
				 "block-job-complete",
				 json_pack("{s:s}", "device", "m0")), 0);
	assert_int_equal(qmp_wait_event(q, "BLOCK_JOB_COMPLETED", 30000, &ev),
			 0);
	{
		json_t *err = json_object_get(ev.data, "error");

		if (err)
			fail_msg("mirror failed: %s", json_string_value(err));
	}
	qmp_event_fini(&ev);
	if (cancel)
		assert_int_equal(qmp_cmd(q, "blockdev-del",
			json_pack("{s:s}", "node-name", "tgt")), 0);
	(void)qmp_cmd(q, "quit", NULL);
	qmp_close(q);
	assert_int_equal(waitpid(qemu_pid, &st, 0), qemu_pid);
	qemu_pid = -1;

	assert_int_equal(serve_join(&s), 0);
	print_stats(cancel ? "mirror (cancel)" : "mirror (complete)", s.srv);
	assert_int_equal(s.f.flush_violations, 0);
	served_fini(&s);
	assert_int_equal(run_cmd("cmp %s %s", src, tgt), 0);
}

static void test_mirror_cancel(void **state)
{
	mirror(true);
}

static void test_mirror_complete(void **state)
{
	mirror(false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_client_qemu_nbd_raw, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_client_qemu_nbd_qcow2,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_server_qemu_io, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mirror_cancel, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_mirror_complete, setup,
						teardown),
	};

	signal(SIGPIPE, SIG_IGN);
	if (getenv("TSB_NBD_TRACE"))
		tsb_log_set_level(TSB_LOG_DEBUG);
	if (getenv("TSB_TEST_FILTER"))
		cmocka_set_test_filter(getenv("TSB_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
