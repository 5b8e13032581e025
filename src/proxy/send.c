/*
 * The source side: QEMU writes its migration stream into a socketpair; the
 * parse thread splits it into verbatim runs and pages, hashes pages and
 * batches them; the WAN thread compresses and writes frames; the return
 * thread reads the receiver's messages (QEMU's return path, credits,
 * NEED). The main thread drives QEMU over QMP.
 */
#include "proxy/commit.h"
#include "proxy/resume.h"
#include "proxy/sender.h"
#include "proxy/liveshare.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/thread.h"
#include "common/util.h"
#include "disk/disk.h"
#include "migctl/migctl.h"
#include "qmp/qmp.h"
#include "qstream/qstream.h"
#include "wire/codec.h"
#include "wire/need.h"
#include "wire/tls.h"
#include "wire/wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Is QEMU told it may switch to postcopy (--mode, --postcopy-after)? */
static bool may_postcopy(const struct proxy_send_options *o)
{
	return !o->qemu_listen && !o->standby_round &&
	       (o->postcopy_after_ms || o->mode != PROXY_MODE_PRECOPY);
}

/*
 * libvirt's source QEMU (no QMP to cancel it) may be blocked writing into
 * a socket we no longer read, maybe holding its big lock (then even
 * libvirt's cancel waits): a reset ends its write at once. The socket is
 * replaced by /dev/null under the same number, so that our threads still
 * using the number meet an end of file, never another file.
 */
static void reset_qemu_socket(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	int null = open("/dev/null", O_RDWR | O_CLOEXEC);

	(void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (null < 0 || dup2(null, fd) < 0)
		shutdown(fd, SHUT_RDWR);
	if (null >= 0)
		close(null);
}

void sender_fail(struct sender *s, enum proxy_outcome oc, const char *fmt, ...)
{
	va_list ap;
	int expected = 0;

	if (!atomic_compare_exchange_strong(&s->failed, &expected, 1))
		return;
	va_start(ap, fmt);
	pthread_mutex_lock(&s->lock);
	s->outcome = oc;
	vsnprintf(s->error, sizeof(s->error), fmt, ap);
	s->queue_closed = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	va_end(ap);
	s->abort_flag = 1;
	/* The group's others stop counting on what we sent arriving. */
	live_share_drop(s->o->live, s->o->live_rank);
	/*
	 * QEMU sees its socket fail and keeps the guest running at the source.
	 * Not in postcopy before a commit: QEMU would pause (postcopy-paused),
	 * and QEMU 7.2 cannot run the source from there. migctl cancels it
	 * instead (abort_flag), which resumes the source.
	 */
	if (s->o->qemu_listen)
		disk_send_abort(s->disks, "the migration failed");
	if (s->qfd >= 0 && s->o->qemu_listen)
		reset_qemu_socket(s->qfd);
	else if (s->qfd >= 0 && (!may_postcopy(s->o) || s->decided_commit))
		shutdown(s->qfd, SHUT_RDWR);
	if (s->conn)
		wire_conn_abort(s->conn);
	sender_lanes_end(s, false);
}

/* ---- job queue ---- */

struct job *sender_job_get(struct sender *s)
{
	struct job *j;

	pthread_mutex_lock(&s->lock);
	if (!s->free_jobs && !s->failed) {
		uint64_t t0 = tsb_now_ns();

		while (!s->free_jobs && !s->failed)
			pthread_cond_wait(&s->cond, &s->lock);
		s->job_wait_ns += tsb_now_ns() - t0;
	}
	j = s->free_jobs;
	if (j)
		s->free_jobs = j->next;
	pthread_mutex_unlock(&s->lock);
	if (!j)
		return NULL;
	wire_pages_builder_reset(&j->pb);
	tsb_buf_reset(&j->buf);
	j->n_zero = j->n_data = j->n_ref = j->n_raw = 0;
	j->n_same = j->n_group = j->n_disk = 0;
	j->same_bytes = 0;
	j->urgent = false;
	j->main_only = false;
	j->stream_bytes = 0;
	j->next = NULL;
	return j;
}

static void job_put(struct sender *s, struct job *j)
{
	pthread_mutex_lock(&s->lock);
	j->next = s->free_jobs;
	s->free_jobs = j;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/*
 * The stream bytes a job of the parse thread carries: what was parsed
 * since the last one was queued (jobs are queued in parse order, even
 * when one then goes ahead).
 */
void sender_job_account(struct sender *s, struct job *j)
{
	uint64_t off;

	j->stream_bytes = 0;
	if (j->kind == JOB_FRAME || !s->parser)
		return; /* frames come from any thread and carry no stream */
	off = qs_parser_offset(s->parser);
	if (off > s->queued_stream) {
		j->stream_bytes = off - s->queued_stream;
		s->queued_stream = off;
	}
}

void sender_queue_push(struct sender *s, struct job *j, bool front)
{
	sender_job_account(s, j);
	pthread_mutex_lock(&s->lock);
	j->next = NULL;
	if (front) {
		j->next = s->queue_head;
		s->queue_head = j;
		if (!s->queue_tail)
			s->queue_tail = j;
	} else if (s->queue_tail) {
		s->queue_tail->next = j;
		s->queue_tail = j;
	} else {
		s->queue_head = s->queue_tail = j;
	}
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

/* Sends the job being filled, if it holds anything. */
static int flush_cur(struct sender *s)
{
	struct job *j;

	if (s->run.count && encode_run_emit(s) < 0)
		return -ENOMEM;
	j = s->cur;
	if (!j)
		return 0;
	if ((j->kind == JOB_PAGES && !j->pb.count) || (j->kind == JOB_RUN && !j->buf.len))
		return 0;
	s->cur = NULL;
	j->ends_after_page = s->parse_after_page;
	sender_queue_push(s, j, false);
	return 0;
}

/* Makes s->cur a job of this kind, flushing one of another kind. */
static int want_job(struct sender *s, enum job_kind kind)
{
	if (s->cur && s->cur->kind == kind)
		return 0;
	flush_cur(s);
	if (!s->cur) {
		s->cur = sender_job_get(s);
		if (!s->cur)
			return -ECANCELED;
	}
	s->cur->kind = kind;
	return 0;
}

/* Queues a ready frame (from an encoder) ahead of or behind the data. */
static int send_frame(struct sender *s, const struct tsb_buf *frame, bool urgent)
{
	struct job *j = sender_job_get(s);

	if (!j)
		return -ECANCELED;
	j->kind = JOB_FRAME;
	if (tsb_buf_append(&j->buf, frame->data, frame->len) < 0) {
		job_put(s, j);
		return -ENOMEM;
	}
	sender_queue_push(s, j, urgent);
	return 0;
}

/* ---- parse thread: QEMU stream -> jobs ---- */

/*
 * QEMU wrote the whole precopy stream (qs_tail) and now waits for the
 * destination's SHUT on the return path before it completes: a round
 * trip inside the downtime that the early commit makes needless (the
 * receiver runs the guest only once it loaded it, else answers
 * DISCARDED and the source is resumed). So QEMU gets its SHUT from us
 * now; the receiver's QEMU's SHUT is not passed on. Not before the
 * stream's end: QEMU's return-path thread closes the shared channel on
 * SHUT. Only at a message boundary of the return path, else QEMU waits
 * for the real one.
 */
static void complete_without_waiting(struct sender *s)
{
	uint8_t msg[8], ok[4] = { 0 };
	int n = qs_rp_encode(msg, sizeof(msg), QS_RP_SHUT, ok, sizeof(ok));

	pthread_mutex_lock(&s->rp_lock);
	if (n > 0 && !s->rp_broken && (!s->rp || qs_rp_parser_between(s->rp)) &&
	    proxy_write_all(s->qfd, msg, (size_t)n) == 0) {
		s->rp_cut = true;
		log_debug("send: QEMU completes without waiting for the destination's SHUT");
	}
	pthread_mutex_unlock(&s->rp_lock);
}

static int on_raw(void *opaque, const uint8_t *p, size_t n)
{
	struct sender *s = opaque;
	int r = s->run.count ? encode_run_emit(s) : 0;

	if (r == 0)
		r = want_job(s, JOB_RUN);

	if (r < 0)
		return r;
	if (tsb_buf_append(&s->cur->buf, p, n) < 0)
		return -ENOMEM;
	s->parse_after_page = false;
	s->stream_bytes += n;
	if (s->tail_armed && qs_tail_feed(&s->tail, p, n)) {
		s->tail_armed = false;
		flush_cur(s);	/* the stream's last bytes go out now */
		complete_without_waiting(s);
		return 0;
	}
	if (s->cur->buf.len >= PROXY_RUN_MAX)
		flush_cur(s);
	return 0;
}

static int on_page(void *opaque, const struct qs_page *pg)
{
	struct sender *s = opaque;
	uint16_t qflags;
	int r;

	if (!s->first_page) {
		s->first_page = true;
		tsb_fault_point("precopy");
	}
	r = want_job(s, JOB_PAGES);
	if (r < 0)
		return r;
	if (pg->block->index >= WIRE_MAX_BLOCKS)
		return -EMSGSIZE;
	qflags = pg->kind == QS_PAGE_ZERO ? QS_RAM_ZERO :
		 pg->kind == QS_PAGE_XBZRLE ? QS_RAM_XBZRLE : QS_RAM_PAGE;
	if (pg->cont)
		qflags |= QS_RAM_CONTINUE;
	s->stream_bytes += 8 + (pg->cont ? 0 : 1 + pg->block->name_len) + pg->len;
	/* A page the destination's guest waits for goes ahead of the queue. */
	if (urgent_wanted(s, pg))
		return urgent_send_page(s, pg, qflags);
	r = encode_page(s, pg, qflags);
	s->parse_after_page = true;
	if (r == -ENOBUFS || (r == 0 && s->cur->pb.count >= (s->in_postcopy ?
			PROXY_BATCH_PAGES_PC : PROXY_BATCH_PAGES))) {
		flush_cur(s);
		if (r == -ENOBUFS) {
			r = want_job(s, JOB_PAGES);
			if (r == 0)
				r = encode_page(s, pg, qflags);
		}
	}
	return r;
}



static int on_event(void *opaque, const struct qs_event *ev)
{
	struct sender *s = opaque;
	struct wire_block blocks[QS_MAX_BLOCKS];
	struct tsb_buf frame;
	unsigned i;
	int r;

	switch (ev->type) {
	case QS_EV_RAM_SETUP:
		if (ev->ram_setup.n_blocks > WIRE_MAX_BLOCKS)
			return -EMSGSIZE;
		encode_image_setup(s, ev);
		for (i = 0; i < ev->ram_setup.n_blocks; i++) {
			blocks[i].index = ev->ram_setup.blocks[i].index;
			blocks[i].name.p = ev->ram_setup.blocks[i].name;
			blocks[i].name.len = ev->ram_setup.blocks[i].name_len;
			blocks[i].used_length = ev->ram_setup.blocks[i].used_length;
		}
		/* The receiver must know the names before the first page. */
		flush_cur(s);
		tsb_buf_init(&frame);
		r = wire_encode_blocks(&frame, blocks, ev->ram_setup.n_blocks);
		if (r == 0)
			r = send_frame(s, &frame, false);
		tsb_buf_fini(&frame);
		return r;
	case QS_EV_SECTION_BEGIN:
		s->sections++;
		return 0;
	case QS_EV_DEVICE_STATE:
		if (!s->switchover_ns) {
			s->switchover_ns = tsb_now_ns();
			tsb_fault_point("source-stopped");
			/* With an early commit, QEMU need not wait for SHUT. */
			s->tail_armed = s->early_ok && !s->postcopy_listen && !s->o->qemu_listen;
		}
		return 0;
	case QS_EV_COMMAND:
		if (ev->command.cmd == QS_CMD_POSTCOPY_LISTEN)
			s->postcopy_listen = true;
		if (ev->command.cmd == QS_CMD_POSTCOPY_RUN && !s->switchover_ns)
			s->switchover_ns = tsb_now_ns();
		return 0;
	default:
		return 0;
	}
}

/*
 * More of QEMU's stream than the window is unacknowledged (under s->lock).
 * Written without acked + window: an ACK is the receiver's word and may be
 * near 2^64, which must not wrap into "no credit ever".
 */
static bool out_of_credit(const struct sender *s, uint64_t parsed)
{
	return parsed > s->acked &&
	       parsed - s->acked > s->window + (s->urgent.n ? URGENT_CREDIT : 0);
}

/* Blocks while the destination is more than a window behind. */
static void wait_for_credit(struct sender *s)
{
	uint64_t parsed = qs_parser_offset(s->parser);

	uint64_t t0 = 0;

	pthread_mutex_lock(&s->lock);
	if (parsed >= s->delay_last_off + DELAY_SAMPLE_EVERY) {
		unsigned i = (s->delay_head + s->delay_count) % DELAY_SAMPLES;

		if (s->delay_count == DELAY_SAMPLES) { /* full: drop the oldest */
			s->delay_head = (s->delay_head + 1) % DELAY_SAMPLES;
			s->delay_count--;
		}
		s->delay_ring[i].off = parsed;
		s->delay_ring[i].t = tsb_now_ns();
		s->delay_count++;
		s->delay_last_off = parsed;
	}
	for (;;) {
		/* A request that went unmet no longer extends the window. */
		s->parsed = parsed;
		urgent_prune(s);
		if (s->failed || !out_of_credit(s, parsed))
			break;
		if (!t0)
			t0 = tsb_now_ns();
		s->credit_blocked = true;
		pthread_cond_wait(&s->cond, &s->lock);
	}
	s->credit_blocked = false;
	if (t0)
		s->credit_wait_ns += tsb_now_ns() - t0;
	pthread_mutex_unlock(&s->lock);
}

static bool more_input_ready(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };

	return poll(&p, 1, 0) > 0;
}

static void *parse_thread(void *arg)
{
	struct sender *s = arg;
	bool blocked;
	ssize_t n;
	int r;

	for (;;) {
		/*
		 * Out of credit: what we hold must go out first (a batch of
		 * SAMERUNs can stand for more stream than the whole window).
		 */
		pthread_mutex_lock(&s->lock);
		blocked = out_of_credit(s, qs_parser_offset(s->parser));
		pthread_mutex_unlock(&s->lock);
		if (blocked)
			flush_cur(s);
		wait_for_credit(s);
		if (s->failed)
			break;
		n = read(s->qfd, s->readbuf, PROXY_READ_CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0 && s->round.end) {
			/* We ended the sync round: what was parsed is the round's. */
			flush_cur(s);
			s->stream_done = true;
			break;
		}
		if (n < 0) {
			sender_fail(s, PROXY_FAILED, "reading the migration stream from QEMU: %s",
			     strerror(errno));
			break;
		}
		if (n == 0) {
			r = qs_parser_finish(s->parser);
			if (r < 0) {
				/* A signal cancelled QEMU's migration: that is why it ended. */
				sender_fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_FAILED,
				     "QEMU closed the migration stream %s: %s",
				     r == -ENODATA ? "before its end" : "after an error",
				     qs_parser_error(s->parser));
				break;
			}
			flush_cur(s);
			s->stream_done = true;
			break;
		}
		r = qs_parser_feed(s->parser, s->readbuf, n);
		if (r < 0) {
			if (!s->failed)
				sender_fail(s, r == -EOPNOTSUPP ? PROXY_UNSUPPORTED : PROXY_FAILED,
				     "cannot carry this migration stream: %s",
				     qs_parser_error(s->parser));
			break;
		}
		/* Nothing more waiting: send what we have rather than sit on it. */
		if (!more_input_ready(s->qfd))
			flush_cur(s);
	}
	if (s->cur) {
		job_put(s, s->cur);
		s->cur = NULL;
	}
	/*
	 * Failed: QEMU may still be writing its stream, and in its completion
	 * it writes with its big lock held, which its monitor waits for: our
	 * yank, cancel and cont would time out while nobody reads (test 43's
	 * link cut after the disks' DONE stalled the source for minutes). Read
	 * no more: its writes fail at once, as after a yank. The return path
	 * (our writes into the same socket) stays.
	 */
	if (s->failed)
		(void)shutdown(s->qfd, SHUT_RD);
	pthread_mutex_lock(&s->lock);
	/*
	 * Completed on our SHUT, QEMU's stream ended before the receiver
	 * rebuilt it: it may still ask for content (NEED), and the DECISION
	 * follows the stream. The queue stays open until the outcome is
	 * known (stop_threads()).
	 */
	if ((!s->rp_cut && !s->round.end) || s->failed)
		s->queue_closed = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

/* ---- WAN thread: jobs -> frames ---- */

/* Exponentially weighted moving average, weight 1/8 for the new sample. */
static double ewma(double avg, double sample)
{
	return avg ? avg + (sample - avg) / 8 : sample;
}

/*
 * Picks the zstd level that moves input bytes fastest: the link drains one
 * batch while the next is compressed, so level L moves
 * min(compress_speed[L], link_speed / ratio[L]) bytes per second. On a
 * slow link the ratio decides and we compress hard; on a fast one (or
 * loopback) we compress less or not at all, so tsubame is not slower than
 * sending raw. Levels not in use keep their last estimates.
 */
static void adapt_level(struct sender *s, int used, size_t in, size_t out, size_t wire,
			uint64_t compress_ns)
{
	double best = 0;
	uint64_t now = tsb_now_ns(), dt, wait, idle, blocked, wrote;
	int l;

	if (s->o->zstd_level)
		return;
	s->wire_out += wire;
	dt = now - s->rate_t0_ns;
	if (dt >= 250000000ull) {
		/*
		 * When the parse thread waited for credits most of the interval,
		 * the way to the receiver is the limit: what went out is what
		 * the link carries. Otherwise the link had room to spare.
		 */
		pthread_mutex_lock(&s->lock);
		wait = s->credit_wait_ns - s->rate_wait0;
		s->rate_wait0 = s->credit_wait_ns;
		idle = s->wan_idle_ns - s->rate_idle0;
		s->rate_idle0 = s->wan_idle_ns;
		blocked = s->job_wait_ns - s->rate_jobwait0;
		s->rate_jobwait0 = s->job_wait_ns;
		pthread_mutex_unlock(&s->lock);
		wrote = s->write_ns - s->rate_write0;
		s->rate_write0 = s->write_ns;
		double rate = (double)(s->wire_out - s->rate_wire0) * 1e9 / dt;

		if (s->rate_t0_ns && rate > s->max_rate_seen)
			s->max_rate_seen = rate;
		/*
		 * The link holds us back through the credits or, when the
		 * window is larger than the socket buffers (long paths),
		 * through writes that wait for room.
		 */
		if (s->rate_t0_ns && (wait > dt / 2 || wrote > dt / 2))
			s->link_speed = ewma(s->link_speed, rate);
		else if (s->rate_t0_ns && blocked > dt / 10 && wait < dt / 20 &&
			 wrote < dt / 10 && s->link_speed < 4 * s->max_rate_seen)
			/*
			 * QEMU's stream waited for us, not for the link: compression
			 * is the bottleneck and the link has room (a fast LAN or
			 * loopback). Find out quickly, in a second, not ten.
			 */
			s->link_speed *= 2;
		else if (s->rate_t0_ns && idle < dt / 4 && wrote < dt / 4 &&
			 s->link_speed < 4 * s->max_rate_seen)
			/*
			 * The link had room and we were busy compressing: it may
			 * be faster than we think, probe upwards. Not when we
			 * waited for QEMU (phases of references send little and
			 * would make any link look fast), nor far beyond what
			 * ever went out.
			 */
			s->link_speed *= 1.25;
		s->rate_t0_ns = now;
		s->rate_wire0 = s->wire_out;
	}
	/* Small batches say more about fixed costs than about the level. */
	if (used > 0 && compress_ns && in >= LEVEL_SAMPLE_MIN) {
		s->compress_speed[used] = ewma(s->compress_speed[used],
					       (double)in * 1e9 / compress_ns);
		s->ratio[used] = ewma(s->ratio[used], (double)out / in);
	}
	double speed[N_LEVELS];

	for (l = 0; l < N_LEVELS; l++) {
		speed[l] = s->link_speed / (l == 0 ? 1.0 : s->ratio[l]);
		if (l > 0 && s->compress_speed[l] < speed[l])
			speed[l] = s->compress_speed[l];
		if (speed[l] > best)
			best = speed[l];
	}
	/* WAN bytes are the scarce thing: the hardest level within 10% of the best. */
	for (l = N_LEVELS - 1; l >= 0; l--) {
		if (speed[l] >= 0.9 * best) {
			s->level = l;
			break;
		}
	}
}

static void account_pages(struct sender *s, const struct job *j, size_t frame_len,
			  bool zstd, size_t raw_entry_bytes)
{
	size_t entries = j->pb.entries.len;
	size_t literal = frame_len - WIRE_HDR_LEN - 8 - entries;
	uint64_t zero = (uint64_t)j->n_zero * 14;
	uint64_t ref = (uint64_t)(j->n_ref + j->n_group + j->n_disk) * 45 + j->same_bytes;

	s->wan.zero += zero;
	s->wan.reference += (uint64_t)j->n_ref * 45;
	s->wan.reused += j->same_bytes;
	s->wan.group += (uint64_t)j->n_group * 45;
	s->wan.disk += (uint64_t)j->n_disk * 45;
	s->wan.raw_entries += raw_entry_bytes;
	s->wan.headers += WIRE_HDR_LEN + 8 + (entries - zero - ref - raw_entry_bytes);
	if (zstd)
		s->wan.compressed += literal;
	else
		s->wan.literal += literal;
	s->wan.literal_in += (uint64_t)j->n_data * WIRE_PAGE_SIZE;
}

/*
 * In postcopy a page the guest waits for must not queue behind the push:
 * once a window of stream is in flight, the push waits (requested pages,
 * frames and anything after a failure never do). Under s->lock.
 */
static bool push_held(const struct sender *s, const struct job *j)
{
	return s->in_postcopy && !j->urgent && j->kind != JOB_FRAME && !s->failed &&
	       s->sent_stream > s->acked && s->sent_stream - s->acked >= s->window;
}

/* The next job to send, waiting for one; NULL at the end. Under s->lock. */
static struct job *take_job(struct sender *s)
{
	struct job *j;

	for (;;) {
		uint64_t t0 = tsb_now_ns();

		j = s->queue_head;
		if ((j && !push_held(s, j)) || (!j && s->queue_closed))
			break;
		pthread_cond_wait(&s->cond, &s->lock);
		*(j ? &s->push_held_ns : &s->wan_idle_ns) += tsb_now_ns() - t0;
	}
	if (!j)
		return NULL;
	s->queue_head = j->next;
	if (!s->queue_head)
		s->queue_tail = NULL;
	if (j->kind != JOB_FRAME)
		s->wire_after_page = j->ends_after_page;
	s->sent_stream += j->stream_bytes;
	return j;
}

static void *wan_thread(void *arg)
{
	struct sender *s = arg;
	struct wire_zstd *z[N_LEVELS] = { NULL };
	struct wire_conn *lane;
	struct tsb_buf out;
	struct job *j;
	uint64_t t0, t1;
	int lvl;
	int i, r;

	tsb_buf_init(&out);
	for (i = 1; i < N_LEVELS; i++) {
		z[i] = wire_zstd_new(zstd_levels[i]);
		if (!z[i]) {
			sender_fail(s, PROXY_FAILED, "out of memory");
			goto out;
		}
	}
	if (s->o->zstd_level) {
		/* A fixed level: use slot 2 with that level (negative: none). */
		wire_zstd_free(z[2]);
		z[2] = s->o->zstd_level > 0 ? wire_zstd_new(s->o->zstd_level) : NULL;
		s->level = s->o->zstd_level > 0 ? 2 : 0;
	}

	for (;;) {
		pthread_mutex_lock(&s->lock);
		j = take_job(s);
		pthread_mutex_unlock(&s->lock);
		if (!j || s->failed)
			break;

		tsb_buf_reset(&out);
		t0 = tsb_now_ns();
		lvl = s->level;
		/*
		 * Now and then a big batch goes one level harder, so that the
		 * estimate of a level not in use does not go stale (one bad
		 * sample must not turn compression off for good).
		 */
		if (j->kind == JOB_PAGES && j->pb.literal.len >= LEVEL_SAMPLE_MIN &&
		    lvl + 1 < N_LEVELS && z[lvl + 1] && ++s->since_probe >= 32) {
			lvl++;
			s->since_probe = 0;
		}
		switch (j->kind) {
		case JOB_PAGES:
			r = wire_pages_encode(&j->pb, &out, z[lvl]);
			break;
		case JOB_RUN:
			r = wire_encode_run(&out, WIRE_MSG_STREAM, j->buf.data, j->buf.len,
					    z[s->level]);
			break;
		default:
			r = tsb_buf_append(&out, j->buf.data, j->buf.len);
			break;
		}
		if (r < 0) {
			sender_fail(s, PROXY_FAILED, "encoding a frame: %s", strerror(-r));
			job_put(s, j);
			break;
		}
		t1 = tsb_now_ns();
		lane = j->main_only ? s->conn : sender_lane_next(s);
		r = wire_conn_write(lane, out.data, out.len);
		s->write_ns += tsb_now_ns() - t1; /* WAN thread only, like adapt_level */
		if (r < 0) {
			sender_fail(s, proxy_outcome_of_errno(r), "sending to the receiver: %s",
			     wire_conn_errmsg(lane)[0] ? wire_conn_errmsg(lane) : strerror(-r));
			job_put(s, j);
			break;
		}
		s->level_uses[lvl]++;
		if (j->kind == JOB_PAGES) {
			size_t raw_bytes = wire_pages_builder_size(&j->pb);
			bool zstd = out.len > WIRE_HDR_LEN && (out.data[1] & WIRE_F_ZSTD);
			size_t raw_entry = 0;

			(void)raw_bytes;
			if (j->n_raw)
				raw_entry = j->pb.entries.len - (size_t)j->n_zero * 14 -
					    (size_t)(j->n_ref + j->n_group + j->n_disk) * 45 -
					    j->same_bytes - (size_t)j->n_data * 13;
			account_pages(s, j, out.len, zstd, raw_entry);
			/* Only the literal area is compressed: judge levels by it. */
			adapt_level(s, lvl, j->pb.literal.len,
				    out.len - WIRE_HDR_LEN - 8 - j->pb.entries.len, out.len,
				    t1 - t0);
		} else if (j->kind == JOB_RUN) {
			s->wan.stream += out.len;
			s->wan.stream_in += j->buf.len;
		} else {
			s->wan.control += out.len;
		}
		job_put(s, j);
	}
out:
	for (i = 0; i < N_LEVELS; i++)
		wire_zstd_free(z[i]);
	tsb_buf_fini(&out);
	/* The ordered stream is over: the other lanes end here, main goes on. */
	if (!s->failed)
		sender_lanes_end(s, true);
	s->wan_done = true;
	return NULL;
}

/* ---- return thread: receiver -> us ---- */

/*
 * Matches an ACK with the delay samples it covers (under s->lock); returns
 * the newest sample's delay, 0 if the ACK covered none.
 */
static uint64_t sample_delay(struct sender *s, uint64_t acked, uint64_t now)
{
	uint64_t t = 0;

	while (s->delay_count && s->delay_ring[s->delay_head].off <= acked) {
		t = s->delay_ring[s->delay_head].t;
		s->delay_head = (s->delay_head + 1) % DELAY_SAMPLES;
		s->delay_count--;
	}
	if (t && (!s->delay_min_cur || now - t < s->delay_min_cur))
		s->delay_min_cur = now - t;
	if (now - s->delay_min_t0 >= DELAY_MIN_PERIOD_NS) {
		/* A new period: the path may have changed. */
		s->delay_min = s->delay_min_cur;
		s->delay_min_cur = 0;
		s->delay_min_t0 = now;
	}
	return t ? now - t : 0;
}

/* The path's delay: the lowest seen in this period or the last one. */
static uint64_t path_delay(const struct sender *s)
{
	if (!s->delay_min || (s->delay_min_cur && s->delay_min_cur < s->delay_min))
		return s->delay_min_cur;
	return s->delay_min;
}

/*
 * Slow start (under s->lock): grows the window by what this ACK covers
 * while the window held the stream back since the last ACK. A round ends
 * when the ACKs cover what was parsed when it began; slow start ends when
 * a round delivered less than 1.25 times the round before (the path, not
 * the window, is the limit now) or the delay doubled (a queue builds).
 * Returns whether slow start goes on.
 */
static uint64_t window_for(const struct sender *s, uint64_t rate);

static bool slow_start_step(struct sender *s, uint64_t acked, uint64_t newly_acked,
			    uint64_t delay, uint64_t now)
{
	uint64_t base = path_delay(s), rate;
	bool limited = s->credit_blocked || s->credit_wait_ns != s->ss_wait0;

	s->ss_wait0 = s->credit_wait_ns;
	if (!s->slow_start)
		return false;
	if (!s->round_t0 || s->round_end <= s->round_acked0) {
		/* A round begins once there is stream in flight beyond this ACK. */
		s->round_t0 = now;
		s->round_acked0 = acked;
		s->round_end = s->delay_last_off;
	} else if (acked >= s->round_end && now > s->round_t0) {
		rate = (acked - s->round_acked0) * 1000000000ull / (now - s->round_t0);
		if (s->round_rate && rate < s->round_rate + s->round_rate / 4)
			goto done;
		s->round_rate = rate;
		s->round_t0 = now;
		s->round_acked0 = acked;
		s->round_end = s->delay_last_off;
	}
	if ((delay && base && delay > 2 * base) || s->window >= s->window_max)
		goto done;
	/* Written so that an ACK near 2^64 (the peer's word) cannot wrap. */
	if (limited)
		s->window = newly_acked > s->window_max - s->window ? s->window_max
								    : s->window + newly_acked;
	return true;
done:
	s->slow_start = false;
	/*
	 * The path is the limit now: no more than the last round's rate
	 * needs, at once (a large first window would otherwise stay until
	 * the first steady measurement, as queue).
	 */
	if (s->round_rate && !s->in_postcopy && window_for(s, s->round_rate) < s->window)
		s->window = window_for(s, s->round_rate);
	/* The steady window is measured afresh from here. */
	s->ack_rate_t0_ns = 0;
	return false;
}

/*
 * The window for an end-to-end rate (bytes/s): ~150 ms of it, or on a
 * long path twice its bandwidth-delay product and 50 ms: while the window
 * is what limits the rate, rate x delay is the window itself, so it
 * doubles until the link is the limit; then up to a round trip queues (in
 * the socket buffers, where it keeps the link busy while ACKs are on their
 * way; with 1.25 x the delay S1 at 200 Mbit/s 200 ms waited for credits
 * 7 s of 10). In postcopy, the path's delay.
 */
static uint64_t window_for(const struct sender *s, uint64_t rate)
{
	uint64_t delay_ms = path_delay(s) / 1000000, w_ms = 2 * delay_ms + 50, w;

	if (s->in_postcopy) {
		/*
		 * Faults wait behind what is in flight: what the path holds at
		 * the best rate seen lately, which update_window() has just set
		 * (the rate this window gives would only ever keep it where it
		 * is).
		 */
		w = s->rate_best * delay_ms / 1000;
		if (w < PROXY_WINDOW_PC_MIN)
			w = PROXY_WINDOW_PC_MIN;
	} else {
		w = rate * (w_ms > PROXY_WINDOW_MS ? w_ms : PROXY_WINDOW_MS) / 1000;
		if (w < PROXY_WINDOW_MIN)
			w = PROXY_WINDOW_MIN;
	}
	return w > s->window_max ? s->window_max : w;
}

/* The lowest of the last rates measured: a burst of cheap pages does not lift it. */
static uint64_t rate_low(const struct sender *s)
{
	uint64_t lo = UINT64_MAX;

	for (unsigned i = 0; i < RATE_HIST && i < s->rate_hist_n; i++)
		if (s->rate_hist[i] < lo)
			lo = s->rate_hist[i];
	return lo == UINT64_MAX ? 0 : lo;
}

static void update_window(struct sender *s, uint64_t prev_acked, uint64_t acked)
{
	uint64_t now = tsb_now_ns(), rate, delay;

	delay = sample_delay(s, acked, now);
	if (s->in_postcopy) {
		s->slow_start = false; /* the link is the limit now: keep the queue short */
		if (!s->window_postcopy) {
			/*
			 * At once, not half a second of faults behind the precopy
			 * window; the rates are measured afresh (they count stream
			 * bytes, and precopy's compressed and deduplicated better).
			 */
			s->window_postcopy = true;
			s->rate_best = 0;
			s->pc_rate_from = s->sent_stream;
			if (s->window > PROXY_WINDOW_PC_START)
				s->window = PROXY_WINDOW_PC_START;
		}
		/* What precopy had in flight comes back in a burst: not a rate. */
		if (acked < s->pc_rate_from) {
			s->ack_rate_t0_ns = 0;
			return;
		}
	}
	if (slow_start_step(s, acked, acked - prev_acked, delay, now))
		return;
	if (!s->ack_rate_t0_ns) {
		s->ack_rate_t0_ns = now;
		s->ack_rate_b0 = acked;
		return;
	}
	if (now - s->ack_rate_t0_ns < 500000000ull)
		return;
	/* Bytes per second delivered end to end, over the last half second or more. */
	rate = (acked - s->ack_rate_b0) * 1000000000ull / (now - s->ack_rate_t0_ns);
	s->rate_hist[s->rate_hist_n++ % RATE_HIST] = rate;
	s->rate_recent = rate_low(s);
	if (rate >= s->rate_best || now - s->rate_best_ns > RATE_BEST_NS) {
		s->rate_best = rate;
		s->rate_best_ns = now;
	}
	s->window = window_for(s, rate);
	log_debug("window: rate %.1f MB/s, delay %.1f ms (path %.1f), window %.0f KiB%s",
		  rate / 1e6, delay / 1e6, path_delay(s) / 1e6, s->window / 1024.0,
		  s->in_postcopy ? " (postcopy)" : "");
	s->ack_rate_t0_ns = now;
	s->ack_rate_b0 = acked;
}

/*
 * One page a NEED asks for: only content this migration handled (the store
 * is not an oracle), from the cache or else our store.
 */
static int need_lookup(void *opaque, const uint8_t *hash, uint8_t *out)
{
	struct sender *s = opaque;
	const uint8_t *page;

	pthread_mutex_lock(&s->cache_lock);
	if (!hashset_has(&s->seen, hash)) {
		pthread_mutex_unlock(&s->cache_lock);
		log_warn("the receiver asked for content this migration never referred to: "
			 "refused");
		return -ENOENT;
	}
	/* Peek: a NEED must not change the mirrored cache's order. */
	page = pagecache_peek(s->cache, hash);
	if (page)
		memcpy(out, page, WIRE_PAGE_SIZE);
	pthread_mutex_unlock(&s->cache_lock);
	/* The store without holding up the parse thread. */
	if (!page && (!s->store || store_get(s->store, hash, out) < 0))
		return -ENOENT;
	return 0;
}

static int serve_need(struct sender *s, const struct wire_need *need)
{
	struct tsb_buf frame;
	int r;

	tsb_buf_init(&frame);
	r = wire_need_answer(need, WIRE_PAGE_SIZE, need_lookup, s, NULL, &frame);
	if (r == 0)
		r = send_frame(s, &frame, true);
	tsb_buf_fini(&frame);
	if (r == 0)
		s->need_served += need->count;
	return r;
}

/* Fuzzing: frames come from a buffer (proxy_send_fuzz). */
struct fuzz_input {
	const uint8_t *p;
	size_t len, off;
	uint8_t *payload;	/* the frame's payload in a buffer of its own size */
	/* The sender before the message, for the checks. */
	uint64_t acked;
	bool prepared, peer_failed;
};

/* The receiver's next message (or the fuzzer's): 1, 0 at the end, -errno. */
static int next_msg(struct sender *s, struct wire_msg *m)
{
	struct fuzz_input *in = s->fuzz;
	struct wire_frame f;
	int r;

	if (!in)
		return wire_conn_read_msg(s->conn, WIRE_ROLE_RECEIVER, m);
	if (in->len - in->off < WIRE_HDR_LEN)
		return 0;
	r = wire_header_decode(in->p + in->off, &f);
	if (r < 0)
		return r;
	in->off += WIRE_HDR_LEN;
	if (f.len > in->len - in->off)
		return -EBADMSG;
	/* As wire_conn_read_frame() does: reading past it is a finding. */
	free(in->payload);
	in->payload = malloc(f.len ? f.len : 1);
	if (!in->payload)
		return -ENOMEM;
	memcpy(in->payload, in->p + in->off, f.len);
	f.payload = in->payload;
	in->off += f.len;
	if (!wire_msg_role_ok(f.type, WIRE_ROLE_RECEIVER))
		return -EPROTO;
	r = wire_frame_decode(&f, m);
	return r < 0 ? r : 1;
}

static void fuzz_after_msg(struct sender *s, const struct wire_msg *m);

static bool committed_early(struct sender *s)
{
	bool c;

	pthread_mutex_lock(&s->lock);
	c = s->early_commit;
	pthread_mutex_unlock(&s->lock);
	return c;
}

/*
 * The receiver said it failed: true, and it is marked as holding nothing,
 * unless our early commit went first (commit_early() decides under the
 * same lock): then its OUTCOME tells.
 */
static bool peer_gave_up(struct sender *s)
{
	bool committed;

	pthread_mutex_lock(&s->lock);
	committed = s->early_commit;
	if (!committed)
		s->peer_failed = true;
	pthread_mutex_unlock(&s->lock);
	return !committed;
}

/* Reads and handles the receiver's messages until the end or a failure. */
static void return_loop(struct sender *s, struct wire_zstd *z)
{
	struct tsb_buf scratch;
	const uint8_t *data;
	struct wire_msg m;
	int r;

	tsb_buf_init(&scratch);
	while (!s->failed) {
		r = next_msg(s, &m);
		if (r <= 0 && (s->prepared || committed_early(s))) {
			s->link_lost = true;
			break;
		}
		if (r <= 0) {
			if (!s->peer_done)
				sender_fail(s, r == 0 ? PROXY_LINK : proxy_outcome_of_errno(r),
				     "%s", r == 0 ? "the receiver closed the connection" :
				     s->conn && wire_conn_errmsg(s->conn)[0] ?
				     wire_conn_errmsg(s->conn) : strerror(-r));
			break;
		}
		switch (m.type) {
		case WIRE_MSG_RETURN:
			r = wire_run_unpack(&m.u.run, z, &scratch, &data);
			pthread_mutex_lock(&s->rp_lock);
			if (r == 0 && !s->rp_cut) {
				urgent_note_return(s, data, m.u.run.raw_len);
				r = proxy_write_all(s->qfd, data, m.u.run.raw_len);
			}
			pthread_mutex_unlock(&s->rp_lock);
			if (r < 0)
				sender_fail(s, PROXY_FAILED, "passing the return path to QEMU: %s",
				     strerror(-r));
			break;
		case WIRE_MSG_ACK:
			pthread_mutex_lock(&s->lock);
			if (m.u.ack > s->acked) {
				uint64_t prev = s->acked;

				s->acked = m.u.ack;
				update_window(s, prev, m.u.ack);
			}
			pthread_cond_broadcast(&s->cond);
			pthread_mutex_unlock(&s->lock);
			break;
		case WIRE_MSG_NEED:
			r = serve_need(s, &m.u.need);
			if (r < 0) {
				if (s->conn)
					wire_conn_send_status(s->conn, WIRE_MSG_ERROR,
							      WIRE_CODE_NOT_FOUND,
							      "content asked for is not held");
				sender_fail(s, PROXY_FAILED, "cannot serve the receiver's NEED: %s",
				     strerror(-r));
			}
			break;
		case WIRE_MSG_DONE:
			if (m.u.status.code == WIRE_CODE_OK) {
				snprintf(s->peer_done_text, sizeof(s->peer_done_text), "%.*s",
					 (int)m.u.status.text.len, m.u.status.text.p);
				s->peer_done = true;
			} else {
				s->peer_failed = !s->prepared;
				sender_fail(s, PROXY_FAILED, "the receiver failed: %.*s",
				     (int)m.u.status.text.len, m.u.status.text.p);
			}
			break;
		case WIRE_MSG_PREPARED:
			s->prepared = true;
			break;
		case WIRE_MSG_OUTCOME:
			snprintf(s->peer_done_text, sizeof(s->peer_done_text), "%.*s",
				 (int)m.u.status.text.len, m.u.status.text.p);
			s->peer_outcome = (int)m.u.status.code;
			break;
		case WIRE_MSG_ERROR:
		case WIRE_MSG_CANCEL:
			if (s->prepared) {
				/* Holding the guest, it can only wait: settle by reconnecting. */
				log_warn("the receiver: %.*s", (int)m.u.status.text.len,
					 m.u.status.text.p);
				s->link_lost = true;
				break;
			}
			if (!peer_gave_up(s)) {
				/* It failed as our early commit went out: its OUTCOME follows. */
				log_warn("the receiver: %.*s", (int)m.u.status.text.len,
					 m.u.status.text.p);
				break;
			}
			sender_fail(s, m.u.status.code == WIRE_CODE_UNSUPPORTED ? PROXY_UNSUPPORTED
									  : PROXY_FAILED,
			     "the receiver %s: %.*s",
			     m.type == WIRE_MSG_ERROR ? "reported an error" : "cancelled",
			     (int)m.u.status.text.len, m.u.status.text.p);
			break;
		default:
			break;
		}
		if (s->fuzz)
			fuzz_after_msg(s, &m);
	}
	tsb_buf_fini(&scratch);
}

static void *return_thread(void *arg)
{
	struct sender *s = arg;
	struct wire_zstd *z = wire_zstd_new(1);

	if (z)
		return_loop(s, z);
	wire_zstd_free(z);
	return NULL;
}

/* ---- main thread ---- */

/* Capabilities that change the stream format in ways we do not carry. */
static const char *const caps_off[] = {
	"xbzrle", "compress", "multifd", "postcopy-preempt", "x-colo",
	"dirty-bitmaps", "block", "x-ignore-shared",
};

static int setup_source(struct sender *s, struct qmp *q, struct migctl_options *mo,
			char *err, size_t errlen)
{
	json_t *list = json_array(), *args, *st = NULL;
	const char *status;
	unsigned i;
	int r;

	r = qmp_execute(q, "query-status", NULL, &st, err, errlen);
	if (r < 0)
		goto out;
	status = json_string_value(json_object_get(st, "status"));
	if (!status || (strcmp(status, "running") && strcmp(status, "paused"))) {
		snprintf(err, errlen, "the source VM is '%s', not running",
			 status ? status : "?");
		r = -EPROTO;
		goto out;
	}
	for (i = 0; i < TSB_ARRAY_SIZE(caps_off); i++) {
		bool wanted = false;
		unsigned k;

		for (k = 0; k < mo->n_caps; k++)
			wanted |= !strcmp(mo->caps[k], caps_off[i]);
		if (wanted) {
			snprintf(err, errlen, "capability %s changes the stream in a way "
				 "tsubame does not carry", caps_off[i]);
			r = -EOPNOTSUPP;
			goto out;
		}
		json_array_append_new(list, json_pack("{s:s, s:b}", "capability",
						      caps_off[i], "state", 0));
	}
	/* The source must hear of a failure at the destination. */
	json_array_append_new(list, json_pack("{s:s, s:b}", "capability", "return-path",
					      "state", 1));
	/* Off unless wanted (below): QEMU keeps it from an earlier migration. */
	json_array_append_new(list, json_pack("{s:s, s:b}", "capability",
					      "pause-before-switchover", "state", 0));
	args = json_pack("{s:o}", "capabilities", list);
	list = NULL;
	/* Unknown capabilities (older QEMUs) are reported, not fatal, one by one. */
	r = qmp_execute(q, "migrate-set-capabilities", args, NULL, err, errlen);
	json_decref(args);
	if (r < 0) {
		/* Retry with only those this QEMU knows: return-path is the one that matters. */
		args = json_pack("{s:[{s:s, s:b}]}", "capabilities", "capability",
				 "return-path", "state", 1);
		r = qmp_execute(q, "migrate-set-capabilities", args, NULL, err, errlen);
		json_decref(args);
		if (r < 0)
			goto out;
	}
	r = migctl_prepare_source(q, mo, err, errlen);
out:
	json_decref(list);
	json_decref(st);
	return r;
}

/*
 * QEMU keeps its migration settings from one migration to the next: ours
 * (max-bandwidth, a sync round's short downtime-limit and its pause before
 * the switchover) must not become the next migration's, an evacuation's
 * after a round above all. A migration that leaves the source running
 * notes them first and puts them back at its end (finish()).
 */
static json_t *source_settings(struct qmp *q)
{
	json_t *p = NULL, *caps = NULL, *saved;
	bool pause = false;
	size_t i;

	if (qmp_execute(q, "query-migrate-parameters", NULL, &p, NULL, 0) < 0)
		return NULL;
	if (qmp_execute(q, "query-migrate-capabilities", NULL, &caps, NULL, 0) == 0)
		for (i = 0; i < json_array_size(caps); i++)
			if (!strcmp(json_string_value(json_object_get(json_array_get(caps, i),
					"capability")) ?: "", "pause-before-switchover"))
				pause = json_is_true(json_object_get(json_array_get(caps, i), "state"));
	saved = json_pack("{s:{s:O?, s:O?}, s:[{s:s, s:b}]}", "parameters",
			  "downtime-limit", json_object_get(p, "downtime-limit"),
			  "max-bandwidth", json_object_get(p, "max-bandwidth"),
			  "capabilities", "capability", "pause-before-switchover", "state", pause);
	json_decref(p);
	json_decref(caps);
	return saved;
}

static void restore_source_settings(struct qmp *q, json_t *saved)
{
	json_t *caps;
	char err[256];

	if (!q || !saved)
		return;
	if (qmp_execute(q, "migrate-set-parameters", json_object_get(saved, "parameters"), NULL,
			err, sizeof(err)) < 0)
		log_warn("QEMU's migration parameters could not be put back: %s (downtime-limit "
			 "and max-bandwidth may be this migration's)", err);
	/* Refused while a migration is still on (one left in doubt): that one needs it. */
	caps = json_pack("{s:O}", "capabilities", json_object_get(saved, "capabilities"));
	if (caps && qmp_execute(q, "migrate-set-capabilities", caps, NULL, err, sizeof(err)) < 0)
		log_debug("QEMU's pause-before-switchover not put back: %s", err);
	json_decref(caps);
}

/* The VM's id in stores: --vm-id, else QEMU's -name, else its UUID. */
static int vm_identity(struct qmp *q, const char *given, char out[WIRE_MAX_ID + 1],
		       char *err, size_t errlen)
{
	json_t *ret = NULL;
	const char *v = given;
	size_t i, n;
	int r = 0;

	if (!v && qmp_execute(q, "query-name", NULL, &ret, NULL, 0) == 0)
		v = json_string_value(json_object_get(ret, "name"));
	if (!v || !*v) {
		json_decref(ret);
		ret = NULL;
		if (qmp_execute(q, "query-uuid", NULL, &ret, NULL, 0) == 0)
			v = json_string_value(json_object_get(ret, "UUID"));
		if (v && !strcmp(v, "00000000-0000-0000-0000-000000000000"))
			v = NULL;
	}
	if (!v || !*v) {
		snprintf(err, errlen, "the VM has neither a name nor a UUID: give --vm-id");
		r = -EINVAL;
		goto out;
	}
	n = strlen(v);
	for (i = 0; i < n; i++)
		if (v[i] < 0x21 || v[i] > 0x7e || v[i] == '/')
			break;
	if (n > WIRE_MAX_ID || i < n) {
		snprintf(err, errlen, "VM id '%s' is not usable (1-%d printable characters, "
			 "no spaces or '/'): give --vm-id", v, WIRE_MAX_ID);
		r = -EINVAL;
		goto out;
	}
	memcpy(out, v, n + 1);
out:
	json_decref(ret);
	return r;
}

/*
 * Reads the receiver's SUMMARY and finds what it still holds of this VM.
 * err explains a failure (the receiver's own words if it refused us).
 */
static int take_summary(struct sender *s, char *err, size_t errlen)
{
	struct wire_msg m;
	int r;

	r = wire_conn_read_msg(s->conn, WIRE_ROLE_RECEIVER, &m);
	if (r == 0)
		r = -ECONNRESET;
	if (r < 0) {
		snprintf(err, errlen, "reading the receiver's summary: %s",
			 wire_conn_errmsg(s->conn)[0] ? wire_conn_errmsg(s->conn) : strerror(-r));
		return r;
	}
	if (m.type == WIRE_MSG_ERROR || m.type == WIRE_MSG_CANCEL) {
		snprintf(err, errlen, "the receiver refused the migration: %.*s",
			 (int)m.u.status.text.len, m.u.status.text.p);
		return -ECONNREFUSED;
	}
	if (m.type != WIRE_MSG_SUMMARY) {
		snprintf(err, errlen, "the receiver sent %s where its summary was due",
			 wire_msg_name(m.type));
		return -EPROTO;
	}
	s->summary_bytes = m.u.summary.n_filters ? WIRE_HDR_LEN : 0;
	r = peer_view_init(&s->peer, &m.u.summary);
	if (r < 0) {
		snprintf(err, errlen, "the receiver's summary is malformed");
		return r;
	}
	s->use_peer = true;
	r = content_find_manifest(s->store, s->vm, s->peer_site, &s->peer, &s->manifest);
	if (r < 0)
		log_warn("store: cannot look for an earlier image of %s: %s", s->vm,
			 strerror(-r));
	if (s->manifest) {
		struct tsb_buf b;

		log_info("the receiver still holds image %s of %s: unchanged pages stay there",
			 store_image_get_info(s->manifest)->peer_image, s->vm);
		/* SAME and SAMERUN entries name pages of that image. */
		tsb_buf_init(&b);
		r = wire_encode_base(&b, store_image_get_info(s->manifest)->peer_image);
		if (r == 0)
			r = wire_conn_write(s->conn, b.data, b.len);
		tsb_buf_fini(&b);
		if (r < 0) {
			snprintf(err, errlen, "sending BASE: %s", strerror(-r));
			return r;
		}
	}
	return 0;
}

/* ---- switchover (docs/protocol.md) ---- */

/* Names the migration, takes its lock and records that it began. */
static int record_begin(struct sender *s, struct qmp *q)
{
	const struct proxy_send_options *o = s->o;
	struct mig_record *m = &s->rec;
	char err[512];
	int r;

	snprintf(m->id, sizeof(m->id), "%s", s->image_id);
	snprintf(m->side, sizeof(m->side), "send");
	snprintf(m->state, sizeof(m->state), "started");
	snprintf(m->peer, sizeof(m->peer), "%s", o->to);
	snprintf(m->qmp, sizeof(m->qmp), "%s", o->c.qmp_path);
	snprintf(m->vm, sizeof(m->vm), "%s", s->vm);
	r = commit_vm_running(q, &m->resume);
	if (r < 0) {
		sender_fail(s, PROXY_FAILED, "the source QEMU does not answer: %s", strerror(-r));
		return r;
	}
	s->lock_fd = record_lock(o->c.state_dir, m->id, "send");
	if (s->lock_fd < 0) {
		sender_fail(s, PROXY_FAILED, "cannot lock the record of migration %s in %s: %s", m->id,
		     o->c.state_dir, strerror(-s->lock_fd));
		return s->lock_fd;
	}
	r = record_save(o->c.state_dir, m, err, sizeof(err));
	if (r < 0)
		sender_fail(s, PROXY_FAILED, "%s", err);
	return r;
}

static struct commit_link link_of(struct sender *s, struct wire_tls *tls)
{
	return (struct commit_link){
		.c = &s->o->c, .tls = tls, .addr = s->o->to, .id = s->rec.id,
		.decision_text = s->decision_text[0] ? s->decision_text : NULL,
		.sig = &s->abort_flag,
		.deadline_ns = tsb_now_ns() + s->o->c.commit_timeout_ms * 1000000,
	};
}

/*
 * Sends DECISION on the migration's connection; false if it is gone. The
 * stream is over, so the WAN thread ends: then this thread is the writer.
 */
bool decide_on_main(struct sender *s, int decision)
{
	uint64_t t0 = tsb_now_ns();

	while (!s->wan_done && tsb_now_ns() - t0 < 10000000000ull)
		usleep(2000);
	if (s->link_lost || s->failed || !s->wan_done)
		return false;
	return wire_conn_send_status(s->conn, WIRE_MSG_DECISION, (uint32_t)decision,
				     s->decision_text[0] ? s->decision_text : s->rec.id) == 0;
}

/* Waits (bounded) for the receiver's OUTCOME on the migration's connection. */
int outcome_on_main(struct sender *s)
{
	uint64_t t0 = tsb_now_ns(), limit = 10000000000ull;

	if (s->o->c.stall_ms && s->o->c.stall_ms * 1000000 < limit)
		limit = s->o->c.stall_ms * 1000000;
	while (!s->peer_outcome && !s->link_lost && !s->failed && tsb_now_ns() - t0 < limit)
		usleep(5000);
	return s->peer_outcome;
}

/* How long a switchover step may wait for the receiver (--stall-timeout). */
static uint64_t stall_limit_ms(const struct sender *s)
{
	return s->o->c.stall_ms ? s->o->c.stall_ms : 60000;
}

/*
 * Decides to commit once the receiver holds the guest (PREPARED, its
 * disks confirmed) and the record says so; the DECISION's text carries
 * the source's STOP time (stop_ns, 0 if unknown) for the receiver's
 * downtime. 0, or -1 with the sender failed (the caller aborts and the
 * source runs again).
 */
static int decide_commit(struct sender *s, uint64_t stop_ns)
{
	char err[512];

	if (stop_ns)
		snprintf(s->decision_text, sizeof(s->decision_text), "%s stop_ns=%llu",
			 s->rec.id, (unsigned long long)stop_ns);
	/* A receiver says PREPARED after its disks' DONE; both are needed to commit. */
	if (disk_send_confirmed(s->disks, stall_limit_ms(s), err, sizeof(err)) < 0) {
		sender_fail(s, PROXY_LINK, "disks: %s: not committing", err);
		return -1;
	}
	snprintf(s->rec.state, sizeof(s->rec.state), "commit");
	if (record_save(s->o->c.state_dir, &s->rec, err, sizeof(err)) < 0) {
		sender_fail(s, PROXY_FAILED, "%s: not committing", err);
		return -1;
	}
	s->decided_commit = true;
	return 0;
}

/*
 * DECISION behind the last of the stream, by the WAN thread (still
 * running), on the main connection (a control frame: never on a lane).
 */
static int queue_decision(struct sender *s, int decision, bool urgent)
{
	struct job *j = sender_job_get(s);
	int r;

	if (!j)
		return -ECANCELED;
	j->kind = JOB_FRAME;
	j->main_only = true;
	r = wire_encode_status(&j->buf, WIRE_MSG_DECISION, (uint32_t)decision,
			       s->decision_text[0] ? s->decision_text : s->rec.id);
	if (r < 0) {
		job_put(s, j);
		return r;
	}
	sender_queue_push(s, j, urgent);
	return 0;
}

/*
 * Commits as the source completes, without waiting for PREPARED (both
 * offered WIRE_CAP_EARLY): the receiver runs the guest if it loads it,
 * else answers OUTCOME DISCARDED and the source runs again; saves the
 * round trip of PREPARED and DECISION from the downtime. Not once the
 * receiver said it failed (peer_gave_up()). 0, or -1 with the sender
 * failed.
 */
static int commit_early(struct sender *s, uint64_t stop_ns)
{
	char err[512];
	bool ok;

	if (stop_ns)
		snprintf(s->decision_text, sizeof(s->decision_text), "%s stop_ns=%llu",
			 s->rec.id, (unsigned long long)stop_ns);
	/* What the receiver cannot know: our disks' mirrors must have ended well. */
	if (disk_send_failed(s->disks, err, sizeof(err))) {
		sender_fail(s, PROXY_FAILED, "disks: %s: not committing", err);
		return -1;
	}
	pthread_mutex_lock(&s->lock);
	ok = !s->failed && !s->peer_failed && s->abort_flag <= 1;
	s->early_commit = ok;
	pthread_mutex_unlock(&s->lock);
	if (!ok) {
		if (!s->failed)
			sender_fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_FAILED,
				    "%s", s->abort_flag > 1 ? "interrupted before the switchover "
				    "was committed" : "the receiver failed");
		return -1;
	}
	snprintf(s->rec.state, sizeof(s->rec.state), "commit-early");
	if (record_save(s->o->c.state_dir, &s->rec, err, sizeof(err)) < 0) {
		pthread_mutex_lock(&s->lock);
		s->early_commit = false;
		pthread_mutex_unlock(&s->lock);
		sender_fail(s, PROXY_FAILED, "%s: not committing", err);
		return -1;
	}
	s->decided_commit = true;
	return 0;
}

/*
 * After a commit: learns the receiver's outcome, on the migration's
 * connection (sent_on_main: the DECISION went there) or over fresh ones.
 */
static void learn_outcome(struct sender *s, struct wire_tls *tls, bool sent_on_main)
{
	const struct proxy_send_options *o = s->o;
	struct commit_link l;
	int outcome;

	outcome = s->peer_outcome;
	if (!outcome && sent_on_main)
		outcome = outcome_on_main(s);
	if (!outcome) {
		log_warn("no answer to the commit on the migration's connection: reconnecting "
			 "to %s (for up to %llu s)", o->to,
			 (unsigned long long)(o->c.commit_timeout_ms / 1000));
		l = link_of(s, tls);
		outcome = commit_deliver(&l, WIRE_DECIDE_COMMIT, s->peer_done_text,
					 sizeof(s->peer_done_text));
	}
	if (outcome == WIRE_OUTCOME_RUNNING) {
		s->peer_outcome = outcome;
		record_drop(o->c.state_dir, &s->rec);
		return;
	}
	if (outcome == WIRE_OUTCOME_DISCARDED) {
		/* It never ran there and never will: the source takes the guest back. */
		if (s->peer_outcome)
			(void)wire_conn_close(s->conn); /* tells the receiver we heard it */
		s->decided_commit = false;
		s->peer_outcome = outcome;
		sender_fail(s, PROXY_FAILED, "the destination could not run the guest (%s); the source "
		     "runs it again", s->peer_done_text);
		return;
	}
	if (s->early_commit) {
		sender_fail(s, PROXY_IN_DOUBT, "in doubt: the switchover was committed as the "
			    "source completed, and the receiver's answer did not arrive%s: the "
			    "destination runs the guest if it loaded it. The source stays paused. "
			    "On the destination host run 'tsubame resolve %s --commit' (--state-dir "
			    "%s there); if it says it holds no such guest, run 'tsubame resolve %s "
			    "--abort' here", outcome == -EINTR ? " (interrupted)" :
			    " within --commit-timeout", s->rec.id, o->c.state_dir, s->rec.id);
		return;
	}
	sender_fail(s, PROXY_IN_DOUBT, "in doubt: the switchover was committed but the receiver's "
	     "answer did not arrive%s; the source stays paused and never runs again by "
	     "itself. On the destination host run 'tsubame resolve %s --commit' "
	     "(--state-dir %s there)", outcome == -EINTR ? " (interrupted)" :
	     " within --commit-timeout", s->rec.id, o->c.state_dir);
}

/*
 * The source completed (it is paused, and QEMU will not resume it by
 * itself). Commit when the receiver said PREPARED: record the decision,
 * send it, and learn the outcome, over fresh connections if need be.
 * Without PREPARED, fail: the caller aborts and the source runs again.
 * A postcopy migration committed at its switch only learns the outcome.
 */
static void settle(struct sender *s, struct wire_tls *tls, uint64_t stop_ns)
{
	uint64_t t0 = tsb_now_ns(), acked = s->acked, limit = stall_limit_ms(s) * 1000000;
	bool sent;

	tsb_fault_point("source-completed");
	if (s->decided_commit) {
		learn_outcome(s, tls, true);
		return;
	}
	if (s->early_ok) {
		if (commit_early(s, stop_ns) < 0)
			return;
		log_info("switchover committed (migration %s): the destination runs the guest "
			 "once it has loaded it", s->rec.id);
		sent = s->rp_cut ? queue_decision(s, WIRE_DECIDE_COMMIT, false) == 0
				 : decide_on_main(s, WIRE_DECIDE_COMMIT);
		tsb_fault_point("commit-sent");
		learn_outcome(s, tls, sent);
		return;
	}
	/* The destination loads the last bytes in flight; give up only on a stall. */
	while (!s->prepared && !s->failed && s->abort_flag <= 1 && tsb_now_ns() - t0 < limit) {
		if (s->acked != acked) {
			acked = s->acked;
			t0 = tsb_now_ns();
		}
		usleep(5000);
	}
	if (!s->prepared || s->abort_flag > 1) {
		if (!s->failed)
			sender_fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_FAILED, "%s",
			     s->abort_flag > 1 ? "interrupted before the switchover was committed"
					   : "the receiver did not say that it holds the guest");
		return;
	}
	if (decide_commit(s, stop_ns) < 0)
		return;
	log_info("switchover committed (migration %s)", s->rec.id);
	sent = decide_on_main(s, WIRE_DECIDE_COMMIT);
	tsb_fault_point("commit-sent");
	learn_outcome(s, tls, sent);
}

/*
 * Postcopy (migctl's tick): the guest's device state reached the
 * destination, which holds it paused (PREPARED) while the rest of its
 * memory follows. Commit now, not when the source completes: the
 * destination runs the guest while its pages arrive, which is what
 * postcopy is for. The DECISION overtakes the queued pages. From here
 * the source never runs again (migctl no longer cancels).
 */
static void commit_in_postcopy(struct sender *s, json_t *stats, const struct migctl_result *res)
{
	const char *st = json_string_value(json_object_get(stats, "status"));
	int r;

	/*
	 * QEMU is postcopy-active from the switch on (it says so before the
	 * device state goes out); the status polled may be older than that.
	 */
	if (s->failed || !(res->postcopy || (st && !strcmp(st, "postcopy-active"))))
		return;
	/*
	 * The stream needs the link to go on: a lost one ends the migration
	 * (before the commit the source runs on, after it both QEMUs pause).
	 */
	if (s->link_lost) {
		sender_fail(s, PROXY_LINK, "the link to the receiver broke during postcopy");
		return;
	}
	if (s->decided_commit || !s->prepared || s->abort_flag > 1)
		return;
	if (decide_commit(s, res->stop_ns) < 0)
		return;
	log_info("switchover committed in postcopy (migration %s): the destination runs the "
		 "guest while the rest of its memory follows", s->rec.id);
	r = queue_decision(s, WIRE_DECIDE_COMMIT, true);
	/* Not sent: the link is failing; the outcome is learnt after migctl. */
	if (r < 0)
		log_warn("the commit could not be queued: %s", strerror(-r));
	tsb_fault_point("postcopy-commit-sent");
}

/* Replaces the error of a failed sender: what matters now is where the guest is. */
static void sender_refail(struct sender *s, enum proxy_outcome oc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void sender_refail(struct sender *s, enum proxy_outcome oc, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&s->lock);
	s->failed = 1;
	s->outcome = oc;
	va_start(ap, fmt);
	vsnprintf(s->error, sizeof(s->error), fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&s->lock);
}

/*
 * Aborting in postcopy, before the commit, QEMU paused its migration
 * instead of cancelling it (commit_resume_source): the source cannot run
 * the guest, the destination holds its device state, paused, and only
 * both together hold all of it. The receiver must not discard its copy,
 * so no ABORT: the record says commit, and a postcopy recovery (by hand,
 * for now) finishes the migration.
 */
static void postcopy_stuck(struct sender *s, const char *why)
{
	char err[512];

	snprintf(s->rec.state, sizeof(s->rec.state), "commit");
	if (record_save(s->o->c.state_dir, &s->rec, err, sizeof(err)) < 0)
		log_warn("%s", err);
	s->decided_commit = true;
	sender_refail(s, PROXY_IN_DOUBT, "the migration failed in postcopy before the commit, "
		      "and the source cannot run the guest again: %.200s. The destination holds "
		      "its device state, paused; keep both QEMUs and finish with QEMU's postcopy "
		      "recovery, then run 'tsubame resolve %s --commit' on the destination host "
		      "(docs/postcopy.md, \"A broken link\")", why, s->rec.id);
}

/*
 * No commit: the source runs the guest again. When QEMU had completed,
 * the receiver may hold the guest paused: tell it to discard it.
 */
static void abort_switchover(struct sender *s, struct qmp *q, struct wire_tls *tls)
{
	const struct proxy_send_options *o = s->o;
	struct commit_link l;
	bool completed = false;
	char err[512], text[128];
	int r;

	if (!s->migrate_ns)
		return; /* QEMU was never told to migrate */
	r = commit_resume_source(q, s->rec.resume, s->in_postcopy, &completed, err, sizeof(err));
	if (r == -EAGAIN) {
		postcopy_stuck(s, err);
		return;
	}
	if (r < 0)
		log_error("the source VM could not be resumed: %s; run 'tsubame resolve %s' "
			  "here", err, s->rec.id);
	snprintf(s->rec.state, sizeof(s->rec.state), "abort");
	/*
	 * Only a receiver that may have said PREPARED needs to hear it: one
	 * that may have the whole stream, i.e. once the source stopped (QEMU
	 * may fail and resume after its last byte, e.g. on the return path).
	 */
	if (s->peer_outcome == WIRE_OUTCOME_DISCARDED || s->peer_failed ||
	    (!completed && !s->prepared && !s->switchover_ns)) {
		if (r == 0)
			record_drop(o->c.state_dir, &s->rec);
		return;
	}
	(void)record_save(o->c.state_dir, &s->rec, err, sizeof(err));
	if (decide_on_main(s, WIRE_DECIDE_ABORT) && outcome_on_main(s) > 0) {
		record_drop(o->c.state_dir, &s->rec);
		return;
	}
	l = link_of(s, tls);
	r = commit_deliver(&l, WIRE_DECIDE_ABORT, text, sizeof(text));
	if (r > 0 || r == -ENOENT) {
		record_drop(o->c.state_dir, &s->rec);
		return;
	}
	log_warn("the destination may hold a paused copy of the guest: run 'tsubame resolve "
		 "%s --abort' on the destination host", s->rec.id);
}

/* ---- disks (docs/disk.md) ---- */

/* Keeps the idle main connection alive while the disk mirrors converge. */
static void disk_keepalive(void *opaque)
{
	struct sender *s = opaque;
	struct tsb_buf b;

	tsb_buf_init(&b);
	if (wire_encode_u64(&b, WIRE_MSG_PING, 0) == 0)
		(void)wire_conn_write(s->conn, b.data, b.len);
	tsb_buf_fini(&b);
}

/*
 * At pre-switchover (the source VM stopped): the group's switchover gate
 * first (o->switch_gate: the group's VMs go on together), then the disks'
 * last step.
 */
static int pre_switchover(void *opaque, struct qmp *q, char *err, size_t errlen)
{
	struct sender *s = opaque;

	__atomic_store_n(&s->source_stopped, true, __ATOMIC_RELEASE);
	if (s->o->standby_round)
		return round_pre_switchover(s, err, errlen);
	if (s->o->switch_gate)
		s->o->switch_gate(s->o->switch_gate_opaque);
	tsb_fault_point("pre-switchover");
	return disk_send_switchover(s->disks, q, err, errlen);
}

static int disks_start(struct sender *s, struct qmp *q, struct wire_tls *tls,
		       const char *host, const char *port, struct migctl_options *mo)
{
	const struct proxy_send_options *o = s->o;
	struct disk_send_options dso = {
		.host = host, .port = port, .tls = tls,
		.migration = s->image_id[0] ? s->image_id : NULL,
		.stall_ms = o->c.stall_ms, .ready_timeout_ms = o->c.timeout_ms,
		.copy_mode = (enum disk_copy_mode)o->disk_copy_mode,
		.abort_flag = &s->abort_flag,
		.keepalive = disk_keepalive, .keepalive_opaque = s,
	};
	char err[512];
	unsigned i;
	int r;

	for (i = 0; i < o->n_disks && i < DISK_MAX; i++)
		dso.only[dso.n_only++] = o->disks[i];
	/*
	 * A sync round's mirrors copy behind the guest (background): its disk
	 * writes never wait for the link. One that cannot catch up with them
	 * ends the round at its limit, as memory's does.
	 */
	if (o->standby_round) {
		dso.copy_mode = DISK_COPY_BACKGROUND;
		dso.ready_timeout_ms = o->round_max_ms ? o->round_max_ms
						       : PROXY_ROUND_MAX_DEFAULT_MS;
	}
	dso.nbd_listen = o->qemu_listen ? o->nbd_listen : NULL;
	for (i = 0; i < o->n_libvirt_disks && i < DISK_MAX; i++) {
		dso.given_names[i] = o->libvirt_disk_names[i];
		dso.given_files[i] = o->libvirt_disk_files[i];
		dso.given_sizes[i] = o->libvirt_disk_sizes[i];
		dso.n_given++;
	}
	r = disk_send_start(q, &dso, &s->disks, err, sizeof(err));
	if (r < 0) {
		sender_fail(s, r == -ECONNRESET || r == -ECONNREFUSED ? PROXY_LINK :
		     r == -ECANCELED ? PROXY_INTERRUPTED : r == -ETIMEDOUT ? PROXY_TIMEOUT :
		     PROXY_FAILED, "disks: %s", err);
		return r;
	}
	return 0;
}

/* QEMU pauses before its switchover for our hook: disks, or a group's gate. */
static int want_pre_switchover(struct sender *s, struct migctl_options *mo)
{
	if (s->o->qemu_listen || (!s->disks && !s->o->switch_gate && !s->o->standby_round))
		return 0;
	if (mo->n_caps >= MIGCTL_MAX_CAPS) {
		sender_fail(s, PROXY_FAILED, "too many capabilities");
		return -E2BIG;
	}
	mo->caps[mo->n_caps++] = "pause-before-switchover";
	mo->pre_switchover = pre_switchover;
	mo->pre_switchover_opaque = s;
	return 0;
}

/* ---- end of disks ---- */

/* A sender with no link, no QEMU and no cache yet. */
static void sender_init(struct sender *s, const struct proxy_send_options *o)
{
	int i;

	memset(s, 0, sizeof(*s));
	s->o = o;
	s->qfd = -1;
	s->lock_fd = -1;
	s->window = PROXY_WINDOW_MIN;
	s->window_max = o->max_window ? o->max_window : PROXY_WINDOW_MAX;
	s->slow_start = true;
	s->level = 1;
	/* Starting guesses for half-compressible memory; measured from then on. */
	s->link_speed = 12.5e6;
	s->compress_speed[1] = 400e6;
	s->ratio[1] = 0.55;
	s->compress_speed[2] = 150e6;
	s->ratio[2] = 0.5;
	pthread_mutex_init(&s->lock, NULL);
	pthread_mutex_init(&s->cache_lock, NULL);
	pthread_mutex_init(&s->rp_lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	for (i = 0; i < N_JOBS; i++) {
		wire_pages_builder_init(&s->jobs[i].pb, WIRE_PAGE_SIZE);
		tsb_buf_init(&s->jobs[i].buf);
		s->jobs[i].next = s->free_jobs;
		s->free_jobs = &s->jobs[i];
	}
	hashset_init(&s->seen);
}

/* Frees what the sender holds (not its connection, parser or QEMU). */
static void sender_fini(struct sender *s)
{
	int i;

	if (s->qfd >= 0)
		close(s->qfd);
	pagecache_free(s->cache);
	hashset_fini(&s->seen);
	urgent_free(s);
	image_rec_fini(&s->departure);
	store_image_free(s->manifest);
	peer_view_fini(&s->peer);
	if (s->store)
		store_close(s->store);
	for (i = 0; i < N_JOBS; i++) {
		wire_pages_builder_fini(&s->jobs[i].pb);
		tsb_buf_fini(&s->jobs[i].buf);
	}
	if (s->lock_fd >= 0)
		close(s->lock_fd);
	free(s->readbuf);
	pthread_mutex_destroy(&s->lock);
	pthread_mutex_destroy(&s->cache_lock);
	pthread_mutex_destroy(&s->rp_lock);
	qs_tail_fini(&s->tail);
	pthread_cond_destroy(&s->cond);
}

/* What one run of proxy_send() holds besides the sender itself. */
struct send_run {
	const struct proxy_send_options *o;
	struct wire_tls *tls;
	struct qmp *q;
	char host[256], port[32];
	struct migctl_options mo;
	struct migctl_result res;
	struct progress_ctx pc;
	pthread_t th_parse, th_wan, th_ret;
	bool threads;			/* all three started */
	char *caps_copy;		/* --caps, split by migctl_parse_caps() */
	json_t *settings;		/* QEMU's migration settings before ours */
	uint64_t start_ns;
	bool early;			/* QEMU told to migrate before the link's handshake */
};

/* Only reads from QEMU here: who the VM is, to name it and find its images. */
static int identify_vm(struct sender *s, struct send_run *run)
{
	const struct proxy_send_options *o = run->o;
	char err[512] = "";
	int r;

	/* libvirt drives its QEMU: the VM's id is the domain's (vm_identity() needs no QMP). */
	r = o->qemu_listen ? 0 : qmp_open(o->c.qmp_path, 10000, &run->q);
	if (r < 0) {
		sender_fail(s, PROXY_FAILED, "cannot reach the source QEMU at %s: %s",
		     o->c.qmp_path, strerror(-r));
		return -1;
	}
	if (o->qemu_listen && !o->vm_id) {
		sender_fail(s, PROXY_FAILED, "a libvirt migration needs the domain's id");
		return -1;
	}
	r = vm_identity(run->q, o->vm_id, s->vm, err, sizeof(err));
	if (r < 0 && o->c.store_dir) {
		/* The store only saves bytes: go on without it. */
		log_warn("%s; this migration neither keeps nor reuses an image", err);
	} else if (r == 0 && o->c.store_dir) {
		content_tenant(o->c.tenant, s->vm, s->tenant);
		r = content_open_store(&o->c, s->tenant, &s->store, err, sizeof(err));
		s->departure.store = s->store;
		if (r < 0) {
			sender_fail(s, PROXY_FAILED, "%s", err);
			return -1;
		}
	}
	content_new_id(s->image_id); /* the migration's id, store or not */
	return 0;
}

/* Our HELLO: the migration, the VM, its tenant, and our store if we have one. */
static void hello_of(struct sender *s, struct wire_hello_args *hello)
{
	const struct proxy_send_options *o = s->o;

	hello->role = WIRE_ROLE_SENDER;
	hello->migration = s->image_id;
	hello->caps = WIRE_CAP_COMMIT | WIRE_CAP_ZSTD | WIRE_CAP_REF | WIRE_CAP_ACK |
		      (may_postcopy(o) ? WIRE_CAP_POSTCOPY : 0) |
		      (o->no_disks || (o->qemu_listen && !o->n_libvirt_disks) ?
		       0 : WIRE_CAP_DISK) |
		      (o->qemu_listen ? WIRE_CAP_LIBVIRT :
		       o->commit_late ? 0 : WIRE_CAP_EARLY) |
		      (o->connections > 1 ? WIRE_CAP_LANES : 0) |
		      (o->live ? WIRE_CAP_LIVE : 0) |
		      (o->standby_round ? WIRE_CAP_STANDBY : 0);
	hello->site = "source";
	hello->vm = s->vm[0] ? s->vm : NULL;
	hello->tenant = o->c.tenant; /* the receiver checks our credential against it */
	if (s->store) {
		hello->caps |= WIRE_CAP_STORE;
		hello->site = store_site_id(s->store);
		hello->vm = s->vm;
		hello->tenant = s->tenant;
		hello->store_gen = store_generation(s->store);
	}
}

/* LANE 0 of n on the main connection: the other lanes follow its summary. */
static int send_lane_zero(struct sender *s, unsigned n)
{
	int r = wire_conn_send_lane(s->conn, 0, n);

	if (r < 0)
		sender_fail(s, proxy_outcome_of_errno(r), "sending LANE: %s",
			    wire_conn_errmsg(s->conn)[0] ? wire_conn_errmsg(s->conn) : strerror(-r));
	return r < 0 ? -1 : 0;
}

/*
 * The first window, from the HELLO's round trip: on a long path 4 MiB of
 * stream fill a small part of what it holds, and slow start takes a round
 * trip per doubling. What a link of PROXY_START_RATE holds over that round
 * trip, within [PROXY_WINDOW_MIN, PROXY_START_MAX] (slow start sizes it
 * to the path's measured rate as it ends).
 */
static void start_window(struct sender *s, uint64_t hello_ns)
{
	uint64_t w = hello_ns / 1000000 * PROXY_START_RATE / 1000;

	if (w < PROXY_WINDOW_MIN)
		w = PROXY_WINDOW_MIN;
	if (w > PROXY_START_MAX)
		w = PROXY_START_MAX;
	if (w > s->window_max)
		w = s->window_max;
	s->window = w;
}

/* The link: TCP, TLS, HELLO, the receiver's summary; lanes if asked. */
static int connect_receiver(struct sender *s, struct send_run *run)
{
	const struct proxy_send_options *o = run->o;
	struct wire_hello_args hello = { 0 };
	struct wire_hello peer;
	char err[512] = "";
	uint64_t t_hello;
	unsigned lanes;
	int fd = -1, r;

	if (tsb_split_hostport(o->to, run->host, sizeof(run->host), run->port,
			       sizeof(run->port)) < 0) {
		sender_fail(s, PROXY_FAILED, "bad --to '%s': expected HOST:PORT", o->to);
		return -1;
	}
	r = proxy_tls_setup(&o->c, WIRE_TLS_CLIENT, &run->tls, err, sizeof(err));
	if (r < 0) {
		sender_fail(s, PROXY_AUTH, "%s", err);
		return -1;
	}
	wire_tls_set_pacer(run->tls, o->pacer);
	log_debug("link: connecting to %s", o->to);
	r = wire_tcp_connect(run->host, run->port, 10000, &fd, err, sizeof(err));
	if (r < 0) {
		sender_fail(s, PROXY_LINK, "%s", err);
		return -1;
	}
	log_debug("link: TCP connected");
	wire_tcp_tune(fd, 0);
	s->conn = wire_conn_new_take(run->tls, fd);
	if (!s->conn) {
		sender_fail(s, PROXY_FAILED, "out of memory");
		return -1;
	}
	r = wire_conn_handshake(s->conn, 15000);
	if (r < 0) {
		sender_fail(s, proxy_outcome_of_errno(r), "%s", wire_conn_errmsg(s->conn));
		return -1;
	}
	tsb_fault_point("handshake");
	log_debug("link: TLS established");
	hello_of(s, &hello);
	t_hello = tsb_now_ns();
	r = wire_conn_hello(s->conn, &hello, &peer);
	if (r < 0) {
		sender_fail(s, proxy_outcome_of_errno(r), "%s", wire_conn_errmsg(s->conn));
		return -1;
	}
	start_window(s, tsb_now_ns() - t_hello);
	log_debug("link: HELLO answered in %llu ms; first window %llu KiB",
		  (unsigned long long)((tsb_now_ns() - t_hello) / 1000000),
		  (unsigned long long)(s->window >> 10));
	snprintf(s->peer_site, sizeof(s->peer_site), "%.*s", (int)peer.site.len, peer.site.p);
	if (o->standby_round && !(peer.caps & WIRE_CAP_STANDBY)) {
		sender_fail(s, PROXY_FAILED, "%s is not a standby ('tsubame recv --standby'): a "
			    "sync round goes to one", o->to);
		return -1;
	}
	s->early_ok = (hello.caps & peer.caps & WIRE_CAP_EARLY) != 0;
	s->live_ok = (hello.caps & peer.caps & WIRE_CAP_LIVE) && s->store;
	lanes = o->connections > 1 && (peer.caps & WIRE_CAP_LANES) ? o->connections : 1;
	if (o->connections > 1 && lanes == 1)
		log_warn("the receiver takes the stream on one connection only; "
			 "--connections %u is ignored", o->connections);
	if (lanes > 1 && send_lane_zero(s, lanes) < 0)
		return -1;
	if (s->store && (peer.caps & WIRE_CAP_STORE)) {
		r = take_summary(s, err, sizeof(err));
		if (r < 0) {
			sender_fail(s, r == -ECONNREFUSED || r == -EPROTO || r == -EBADMSG ?
			     PROXY_FAILED : proxy_outcome_of_errno(r), "%s", err);
			return -1;
		}
	}
	log_debug("link: ready (the receiver's summary taken)");
	if (o->c.stall_ms)
		wire_conn_set_timeout(s->conn, o->c.stall_ms);
	if (lanes > 1) {
		r = sender_lanes_open(s, run->tls, run->host, run->port, lanes, &hello, err,
				      sizeof(err));
		if (r < 0) {
			sender_fail(s, proxy_outcome_of_errno(r), "%s", err);
			return -1;
		}
	}
	return 0;
}

/* For migctl's auto mode: how fast the stream reached the receiver lately (at least). */
static uint64_t stream_rate(void *opaque)
{
	const struct sender *s = opaque;

	return s->rate_recent;
}

/* QEMU's migration options, the disks' jobs, the socket QEMU streams into. */
static int prepare_source(struct sender *s, struct send_run *run)
{
	static const struct qs_handlers handlers = {
		.raw = on_raw, .page = on_page, .event = on_event,
	};
	const struct proxy_send_options *o = run->o;
	struct migctl_options *mo = &run->mo;
	char err[512] = "";
	int r;

	if (o->qemu_listen) {
		/* libvirt's mirror writes into our NBD server; its QEMU streams to us. */
		if (o->n_libvirt_disks &&
		    disks_start(s, NULL, run->tls, run->host, run->port, mo) < 0)
			return -1;
		/* libvirt set QEMU's capabilities and tells it to connect to us. */
		if (sender_libvirt_accept(s, &s->qfd, err, sizeof(err)) < 0) {
			sender_fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_FAILED, "%s",
				    err);
			return -1;
		}
		goto parser;
	}
	if (o->caps) {
		run->caps_copy = strdup(o->caps);
		if (!run->caps_copy || migctl_parse_caps(run->caps_copy, mo) < 0) {
			sender_fail(s, PROXY_FAILED, "too many capabilities in '%s'", o->caps);
			return -1;
		}
	}
	if (may_postcopy(o)) {
		if (mo->n_caps < MIGCTL_MAX_CAPS)
			mo->caps[mo->n_caps++] = "postcopy-ram";
		mo->postcopy_after_ms = o->postcopy_after_ms;
		mo->postcopy_auto = o->mode == PROXY_MODE_AUTO;
		mo->stream_rate = stream_rate;
		mo->stream_rate_opaque = s;
		/* postcopy: right after the first pass began (QEMU needs one). */
		if (o->mode == PROXY_MODE_POSTCOPY && !mo->postcopy_after_ms)
			mo->postcopy_after_ms = 1;
	}
	mo->max_bandwidth = o->max_bandwidth ? o->max_bandwidth : PROXY_QEMU_MAX_BANDWIDTH;
	mo->downtime_limit_ms = o->downtime_limit_ms;
	mo->timeout_ms = o->c.timeout_ms;
	mo->abort_flag = &s->abort_flag;
	if (!o->no_disks && !run->early &&
	    disks_start(s, run->q, run->tls, run->host, run->port, mo) < 0)
		return -1;
	/* A round runs passes until we end it; QEMU should not try to stop for a switchover. */
	if (o->standby_round && !mo->downtime_limit_ms)
		mo->downtime_limit_ms = 1;
	run->settings = source_settings(run->q);
	if (want_pre_switchover(s, mo) < 0)
		return -1;
	log_debug("source: setting QEMU's migration up");
	r = setup_source(s, run->q, mo, err, sizeof(err));
	if (r < 0) {
		sender_fail(s, r == -EOPNOTSUPP ? PROXY_UNSUPPORTED : PROXY_FAILED,
		     "source QEMU: %s", err);
		return -1;
	}
	log_debug("source: QEMU's migration is set up");
	r = proxy_qemu_socket(run->q, &s->qfd, err, sizeof(err));
	if (r < 0) {
		sender_fail(s, PROXY_FAILED, "cannot hand a socket to the source QEMU: %s", err);
		return -1;
	}
parser:
	s->parser = qs_parser_new(&handlers, s);
	if (!s->parser) {
		sender_fail(s, PROXY_FAILED, "out of memory");
		return -1;
	}
	return 0;
}

static int start_threads(struct sender *s, struct send_run *run)
{
	if (tsb_thread_create(&run->th_wan, wan_thread, s) ||
	    tsb_thread_create(&run->th_ret, return_thread, s)) {
		sender_fail(s, PROXY_FAILED, "cannot start threads");
		return -1;
	}
	if (tsb_thread_create(&run->th_parse, parse_thread, s)) {
		sender_fail(s, PROXY_FAILED, "cannot start threads");
		pthread_join(run->th_wan, NULL);
		pthread_join(run->th_ret, NULL);
		return -1;
	}
	run->threads = true;
	return 0;
}

/* migctl's tick: the progress line; in postcopy, the commit. */
static void migrate_tick(void *opaque, json_t *stats)
{
	struct send_run *run = opaque;

	if (run->res.postcopy)
		run->pc.s->in_postcopy = true;
	report_progress_tick(&run->pc, stats);
	round_tick(run->pc.s, stats, run->pc.s->migrate_ns);
	commit_in_postcopy(run->pc.s, stats, &run->res);
}

/*
 * The stream broke after a commit in postcopy: the destination runs the
 * guest (or will, once it hears the commit) and part of its memory is
 * only here. The source must never run again; both QEMUs wait paused
 * (postcopy-paused) for a recovery. Learn the outcome, then say so.
 */
static void postcopy_broken(struct sender *s, struct send_run *run)
{
	char why[512];

	snprintf(why, sizeof(why), "%s", s->failed ? s->error : run->res.error);
	learn_outcome(s, run->tls, false);
	if (!s->decided_commit)
		return; /* discarded there: the source runs it again (finish()) */
	sender_refail(s, PROXY_LINK, "the link broke during postcopy (%.150s), after the "
		 "switchover was committed: the destination %s the guest and the source holds "
		 "memory it has not sent yet; both QEMUs wait paused (postcopy-paused) and the "
		 "source never runs it again (docs/postcopy.md, \"A broken link\")%s", why,
		 s->peer_outcome == WIRE_OUTCOME_RUNNING ? "runs" : "may run",
		 s->peer_outcome == WIRE_OUTCOME_RUNNING ? "" :
		 "; 'tsubame resolve' on the destination host says whether it runs there");
}

static void stop_threads(struct sender *s, struct send_run *run);

/*
 * The link broke after a postcopy commit: both QEMUs paused. Resume over
 * a new connection (resume.h), again after every break, until
 * --recover-timeout. On success the migration ends as if the link had
 * held; the departure image is not kept (the resumed stream's pages
 * were not recorded). Else the failure postcopy_broken() wrote stands.
 */
static void postcopy_recover(struct sender *s, struct send_run *run)
{
	const struct proxy_send_options *o = s->o;
	struct commit_link l = link_of(s, run->tls);
	struct wire_conn *c = NULL;
	char err[512], why[512];
	int qfd, outcome, r = -ETIMEDOUT;

	stop_threads(s, run);
	shutdown(s->qfd, SHUT_RDWR);	/* QEMU pauses, if it has not yet */
	s->departure.failed = true;
	snprintf(why, sizeof(why), "%s", s->error);
	l.deadline_ns = tsb_now_ns() + o->c.recover_timeout_ms * 1000000;
	log_warn("the link broke during postcopy; resuming the migration over a new "
		 "connection (for up to %llu s)", (unsigned long long)(o->c.recover_timeout_ms / 1000));
	while (tsb_now_ns() < l.deadline_ns && s->abort_flag <= 1) {
		r = resume_source_paused(run->q, l.deadline_ns, &s->abort_flag, err, sizeof(err));
		if (r == 1)
			break;	/* QEMU completed after all: nothing left to send */
		if (r == 0)
			r = resume_dial(&l, &c);
		if (r < 0)
			break;
		tsb_fault_point("postcopy-resume-connected");
		r = resume_source(run->q, &qfd, err, sizeof(err));
		if (r == 0) {
			outcome = 0;
			r = resume_relay(c, qfd, WIRE_ROLE_SENDER, (int)stall_limit_ms(s),
					 &s->abort_flag,
					 &outcome, &s->resumed, err, sizeof(err));
			close(qfd);
			if (r == 0 && outcome != WIRE_OUTCOME_RUNNING)
				r = -EPROTO;
		}
		if (r == 0)
			(void)wire_conn_close(c);
		wire_conn_free(c);
		c = NULL;
		s->recoveries++;
		if (r == 0)
			break;
		log_warn("resuming the postcopy: %s; trying again", err[0] ? err : strerror(-r));
	}
	if (r < 0) {
		sender_refail(s, PROXY_LINK, "%s; not resumed (%s)", why,
			      r == -ETIMEDOUT ? "--recover-timeout passed" : err[0] ? err :
			      strerror(-r));
		return;
	}
	log_notice("the postcopy resumed after the link broke and completed (%u connection(s))",
		   s->recoveries);
	s->failed = 0;
	s->outcome = PROXY_OK;
	s->peer_outcome = WIRE_OUTCOME_RUNNING;
	snprintf(run->res.status, sizeof(run->res.status), "completed");
	run->res.error[0] = '\0';
	record_drop(o->c.state_dir, &s->rec);
}

/* The record first (what to undo after a crash), then QEMU's migrate command. */
static int tell_qemu(struct sender *s, struct send_run *run)
{
	if (record_begin(s, run->q) < 0)
		return -1;
	s->migrate_ns = tsb_now_ns();
	s->stop_ns = &run->res.stop_ns;
	log_debug("source: QEMU migrates");
	if (migctl_start(run->q, "fd:" PROXY_FDNAME, &run->res) < 0) {
		sender_fail(s, PROXY_FAILED, "source QEMU: migrate: %s", run->res.error);
		return -1;
	}
	return 0;
}

/*
 * QEMU needs ~0.4 s from its migrate command until it streams (its setup,
 * its first dirty bitmap), and the link's handshake takes two round trips
 * and more: on a long path both are worth overlapping. So when nothing
 * else must be ready first (disks' mirrors, libvirt's own start), QEMU is
 * told before the link is up. It streams into a socket nobody reads yet
 * and stalls there after a few KB; the stream is parsed only once the
 * receiver is known good. Should the link fail, finish() ends QEMU's
 * migration as after any failure before the switchover (abort_switchover):
 * the guest never stopped and runs on.
 */
static int start_source_early(struct sender *s, struct send_run *run)
{
	const struct proxy_send_options *o = run->o;
	struct disk_send_options all = { 0 };
	char err[256];

	/* Disks named or found: their mirrors go first. Nor a sync round: nothing waits for it. */
	if (o->qemu_listen || o->standby_round ||
	    (!o->no_disks && (o->n_disks || disk_send_count(run->q, &all, err, sizeof(err)))))
		return 0;
	run->early = true;
	if (prepare_source(s, run) < 0 || tell_qemu(s, run) < 0)
		return -1;
	return 0;
}

/*
 * The end of a sync round (send_round.c): we ended QEMU's migration and
 * the source runs on. What was parsed goes out, DONE behind it; the
 * standby's DONE says it kept the round, and only then do we keep ours
 * (finish()). Any failure here is a failed round: the source runs.
 */
static void round_end(struct sender *s, struct send_run *run)
{
	uint64_t t0, acked, limit = stall_limit_ms(s) * 1000000;
	bool completed = false;
	char err[512];
	struct job *j;

	if (commit_resume_source(run->q, s->rec.resume, false, &completed, err, sizeof(err)) < 0) {
		sender_fail(s, PROXY_FAILED, "the source VM did not run again after the round: "
			    "%s; run 'tsubame resolve %s' here", err, s->rec.id);
		return;
	}
	if (!s->failed && !s->round.end)
		sender_fail(s, PROXY_FAILED, "source QEMU: migration %s%s%s", run->res.status,
			    run->res.error[0] ? ": " : "", run->res.error);
	if (s->failed)
		return;
	record_drop(s->o->c.state_dir, &s->rec);
	/*
	 * The disks first: their mirrors complete without pivot (a copy as of
	 * now at the standby; the guest runs on), and the standby's disk DONE
	 * says all is applied and flushed before the memory's DONE goes.
	 */
	if (s->disks && disk_stale_begin(s->disks, run->q, s->image_id, err, sizeof(err)) < 0)
		log_warn("disks: no dirty bitmap to tell what the standby lacks: %s", err);
	if (s->disks && (disk_send_switchover(s->disks, run->q, err, sizeof(err)) < 0 ||
			 disk_send_confirmed(s->disks, limit / 1000000, err, sizeof(err)) < 0)) {
		sender_fail(s, PROXY_LINK, "the round's disks: %s", err);
		return;
	}
	for (t0 = tsb_now_ns(); !s->stream_done && !s->failed && tsb_now_ns() - t0 < limit;)
		usleep(2000);
	j = s->stream_done && !s->failed ? sender_job_get(s) : NULL;
	if (!j || wire_encode_status(&j->buf, WIRE_MSG_DONE, WIRE_CODE_OK, "sync round") < 0) {
		if (j)
			job_put(s, j);
		sender_fail(s, PROXY_FAILED, "the round's stream did not end");
		return;
	}
	j->kind = JOB_FRAME;
	j->main_only = true;
	sender_queue_push(s, j, false);
	tsb_fault_point("round-done-sent");
	/* The standby applies all before DONE (NEEDs answered meanwhile); a stall only ends it. */
	for (t0 = tsb_now_ns(), acked = s->acked;
	     !s->peer_done && !s->failed && s->abort_flag <= 1 && tsb_now_ns() - t0 < limit;) {
		if (s->acked != acked) {
			acked = s->acked;
			t0 = tsb_now_ns();
		}
		usleep(5000);
	}
	if (!s->peer_done && !s->failed)
		sender_fail(s, s->abort_flag > 1 ? PROXY_INTERRUPTED : PROXY_LINK,
			    "the standby did not confirm the round");
	if (s->peer_done)
		log_info("sync: the standby says: %s", s->peer_done_text);
}

static void finish_round(struct sender *s, struct send_run *run)
{
	round_end(s, run);
	/* What the standby lacks of the disks from now: since this round, or the last kept one. */
	disk_stale_settle(s->disks, run->q, s->image_id, s->peer_done && !s->failed);
}

/* QEMU migrates through us; then the switchover is committed or undone. */
static void migrate(struct sender *s, struct send_run *run)
{
	int r;

	run->pc.s = s;
	run->pc.start_ns = run->start_ns;
	run->pc.tty = run->o->c.progress;
	run->mo.tick = migrate_tick;
	run->mo.tick_opaque = run;
	run->mo.no_return = &s->decided_commit;
	if (!run->early && tell_qemu(s, run) < 0)
		return;
	/* The report's setup phase ends here, where the stream begins to flow. */
	s->migrate_ns = tsb_now_ns();
	/* --postcopy-after counts from there too: QEMU must have streamed first. */
	if (run->early && run->mo.postcopy_after_ms)
		run->mo.postcopy_after_ms += (s->migrate_ns - run->res.started_ns) / 1000000;
	r = migctl_follow(run->q, NULL, &run->mo, &run->res);
	s->qemu_done_ns = tsb_now_ns();
	if (run->pc.tty)
		fputc('\n', stderr);
	if (s->o->standby_round) {
		finish_round(s, run);
		return;
	}
	if (r < 0 && s->decided_commit) {
		postcopy_broken(s, run);
		if (s->decided_commit && s->o->c.recover_timeout_ms && s->abort_flag <= 1)
			postcopy_recover(s, run);
		return;
	}
	if (r < 0) {
		if (s->abort_flag > 1 && !s->failed)
			sender_fail(s, PROXY_INTERRUPTED, "interrupted by signal %d; migration cancelled",
			     s->abort_flag);
		else if (r == -ETIMEDOUT)
			sender_fail(s, PROXY_TIMEOUT, "%s", run->res.error);
		else
			sender_fail(s, PROXY_FAILED, "source QEMU: migration %s%s%s", run->res.status,
			     run->res.error[0] ? ": " : "", run->res.error);
		return;
	}
	/* The source completed: commit if the destination holds the guest. */
	settle(s, run->tls, run->res.stop_ns);
	/* QEMU is done with the socket; make sure the parse thread sees its end. */
	if (!s->failed)
		shutdown(s->qfd, SHUT_RDWR);
}

/* Ends the threads: drained after a clean end, cut after a failure. */
static void stop_threads(struct sender *s, struct send_run *run)
{
	if (!run->threads)
		return;
	if (!s->failed && (s->peer_outcome == WIRE_OUTCOME_RUNNING || s->peer_done)) {
		/* Clean end (a sync round: the standby kept it): let the WAN thread drain, then close. */
		pthread_mutex_lock(&s->lock);
		s->queue_closed = true;
		pthread_cond_broadcast(&s->cond);
		pthread_mutex_unlock(&s->lock);
	} else if (!s->failed) {
		sender_fail(s, PROXY_FAILED, "stopped");
	}
	pthread_join(run->th_parse, NULL);
	pthread_join(run->th_wan, NULL);
	if (!s->failed || s->peer_outcome || s->peer_done)
		wire_conn_close(s->conn);
	wire_conn_abort(s->conn);
	pthread_join(run->th_ret, NULL);
	run->threads = false;
}

/* The report, with the store's commit time and the floor when asked. */
static json_t *report_of(struct sender *s, struct send_run *run, enum proxy_outcome oc,
			 uint64_t end_ns, uint64_t commit_ms)
{
	json_t *report = report_make(s, &run->res, run->start_ns, end_ns);
	json_t *sync = round_report(s);

	if (sync)
		json_object_set_new(report, "sync", sync);
	if (s->store)
		json_object_set_new(json_object_get(report, "store"), "commit_ms",
				    json_integer((json_int_t)commit_ms));
	if (oc == PROXY_OK && run->o->floor && s->departure.image) {
		uint64_t fp = 0;
		int64_t fb = report_floor(s, &fp);

		if (fb >= 0)
			json_object_set_new(report, "floor", json_pack("{s:I, s:I}",
				"bytes", (json_int_t)fb, "pages", (json_int_t)fp));
	}
	return report;
}

static enum proxy_outcome finish(struct sender *s, struct send_run *run, json_t **ret_report)
{
	uint64_t end_ns, commit_ms = 0;
	enum proxy_outcome oc;

	stop_threads(s, run);
	/*
	 * Committed early, the link may break while the stream's end is still
	 * on its way; if the destination says the guest runs there all the
	 * same, the migration succeeded.
	 */
	if (s->failed && s->decided_commit && !s->in_postcopy &&
	    s->peer_outcome == WIRE_OUTCOME_RUNNING) {
		log_warn("after the commit: %s; the destination runs the guest all the same",
			 s->error);
		s->outcome = PROXY_OK;
		s->error[0] = '\0';
		s->failed = 0;
	}
	if (s->failed && run->q && !s->decided_commit)
		abort_switchover(s, run->q, run->tls);
	restore_source_settings(run->q, run->settings);
	json_decref(run->settings);
	oc = s->failed ? s->outcome : PROXY_OK;
	if (s->failed && s->outcome == PROXY_OK && !s->libvirt_ok)
		oc = s->outcome = PROXY_FAILED;
	end_ns = tsb_now_ns();
	if (oc == PROXY_OK && !run->o->standby_round)
		content_net_notify(run->o->c.net_agent, s->vm, NULL);
	if (oc == PROXY_OK && s->departure.image && !s->departure.failed) {
		/* This host keeps the VM's last image for when it comes back (or a round's). */
		if (image_rec_commit(&s->departure, "departure") && run->o->standby_round)
			content_prune_rounds(s->store, s->vm, s->peer_site, s->image_id);
		commit_ms = (tsb_now_ns() - end_ns) / 1000000;
	}
	if (oc == PROXY_OK && s->store && !run->o->standby_round) {
		/* The disks stay here as the VM's old copies: for its return, its kin. */
		const char *images[DISK_MAX];

		content_note_disks(s->store, images, disk_send_images(s->disks, images, DISK_MAX));
	}
	if (ret_report)
		*ret_report = report_of(s, run, oc, end_ns, commit_ms);
	/* Disks: jobs still running are cancelled; the source keeps its disks. */
	disk_send_finish(s->disks, run->q, ret_report ? *ret_report : NULL);
	if (s->failed && oc != PROXY_OK)
		log_error("%s", s->error);
	migctl_result_fini(&run->res);
	qs_parser_free(s->parser);
	s->parser = NULL;
	qmp_close(run->q);
	sender_lanes_free(s);
	wire_conn_free(s->conn); /* before their TLS context */
	s->conn = NULL;
	wire_tls_free(run->tls);
	free(run->caps_copy);
	return oc;
}

enum proxy_outcome proxy_send(const struct proxy_send_options *o, json_t **ret_report)
{
	struct send_run run = { .o = o, .start_ns = tsb_now_ns() };
	enum proxy_outcome oc;
	struct sender *s;
	uint64_t cache_pages;

	s = malloc(sizeof(*s));
	if (!s)
		return PROXY_FAILED;
	sender_init(s, o);
	proxy_catch_signals(&s->abort_flag);
	cache_pages = (o->c.cache_bytes ? o->c.cache_bytes : PROXY_CACHE_DEFAULT) / WIRE_PAGE_SIZE;
	s->cache = pagecache_new(cache_pages, WIRE_PAGE_SIZE);
	s->readbuf = malloc(PROXY_READ_CHUNK);
	if (!s->cache || !s->readbuf)
		sender_fail(s, PROXY_FAILED, "out of memory");
	else if (identify_vm(s, &run) == 0 && start_source_early(s, &run) == 0 &&
		 connect_receiver(s, &run) == 0 && (run.early || prepare_source(s, &run) == 0) &&
		 start_threads(s, &run) == 0) {
		if (o->qemu_listen)
			sender_libvirt_settle(s, run.start_ns);
		else
			migrate(s, &run);
	}
	oc = finish(s, &run, ret_report);
	proxy_release_signals(&s->abort_flag);
	sender_fini(s);
	free(s);
	return oc;
}

/* ---- fuzzing (tests/fuzz/fuzz-send.c) ---- */

static uint8_t fuzz_pages[PROXY_FUZZ_CONTENTS][WIRE_PAGE_SIZE];
static uint8_t fuzz_hashes[PROXY_FUZZ_CONTENTS][WIRE_HASH_LEN];

#define FUZZ_CHECK(s, cond) do { \
	if (!(cond)) \
		fuzz_broken((s), #cond, __LINE__); \
} while (0)

static void fuzz_broken(const struct sender *s, const char *what, int line)
{
	fprintf(stderr, "proxy_send_fuzz: send.c:%d: broken: %s (sender: %s)\n", line, what,
		s->failed ? s->error : "no failure");
	abort();
}

/* Which fuzz content has this hash, or -1. */
static int fuzz_content_of(const uint8_t *hash)
{
	for (int k = 0; k < PROXY_FUZZ_CONTENTS; k++)
		if (fuzz_hashes[k][0] == hash[0] && !memcmp(fuzz_hashes[k], hash, WIRE_HASH_LEN))
			return k;
	return -1;
}

/* Content the sender can serve: handled by this migration, still in its cache. */
static bool fuzz_servable(int k)
{
	return k >= 2 && k < PROXY_FUZZ_SEEN && k != 10;
}

/* Checks the HASHDATA frame a NEED queued: the NEED's hashes, in order, with their content. */
static void fuzz_check_answer(struct sender *s, const struct wire_need *need,
			      const struct tsb_buf *frame)
{
	struct wire_frame f;
	struct wire_msg m;
	struct tsb_buf scratch;
	const uint8_t *data;

	FUZZ_CHECK(s, frame->len >= WIRE_HDR_LEN);
	FUZZ_CHECK(s, wire_header_decode(frame->data, &f) == 0);
	FUZZ_CHECK(s, f.len == frame->len - WIRE_HDR_LEN);
	f.payload = frame->data + WIRE_HDR_LEN;
	FUZZ_CHECK(s, wire_frame_decode(&f, &m) == 0);
	FUZZ_CHECK(s, m.type == WIRE_MSG_HASHDATA);
	FUZZ_CHECK(s, m.u.hashdata.count == need->count && m.u.hashdata.obj_size == WIRE_PAGE_SIZE);
	FUZZ_CHECK(s, !memcmp(m.u.hashdata.hashes, need->hashes,
			      (size_t)need->count * WIRE_HASH_LEN));
	tsb_buf_init(&scratch);
	FUZZ_CHECK(s, wire_hashdata_unpack(&m.u.hashdata, NULL, &scratch, &data) == 0);
	for (unsigned i = 0; i < need->count; i++) {
		int k = fuzz_content_of(need->hashes + (size_t)i * WIRE_HASH_LEN);

		/* Only what this migration handled, never content 11. */
		FUZZ_CHECK(s, k >= 0 && k < PROXY_FUZZ_SEEN);
		FUZZ_CHECK(s, !memcmp(data + (size_t)i * WIRE_PAGE_SIZE, fuzz_pages[k], WIRE_PAGE_SIZE));
	}
	tsb_buf_fini(&scratch);
}

/*
 * After each message the return thread handled: what it queued for the
 * WAN thread (taken off here, as the WAN thread would) and what it
 * changed must be what the handlers promise.
 */
static void fuzz_after_msg(struct sender *s, const struct wire_msg *m)
{
	struct fuzz_input *in = s->fuzz;
	unsigned queued = 0, free_jobs = 0, i;
	bool servable = true;
	struct job *j;

	if (m->type == WIRE_MSG_NEED) {
		for (i = 0; i < m->u.need.count; i++) {
			int k = fuzz_content_of(m->u.need.hashes + (size_t)i * WIRE_HASH_LEN);

			servable &= fuzz_servable(k);
		}
	}
	pthread_mutex_lock(&s->lock);
	while ((j = s->queue_head)) {
		s->queue_head = j->next;
		if (!s->queue_head)
			s->queue_tail = NULL;
		pthread_mutex_unlock(&s->lock);
		queued++;
		/* Only a NEED makes the return thread send anything: its HASHDATA. */
		FUZZ_CHECK(s, m->type == WIRE_MSG_NEED && j->kind == JOB_FRAME);
		fuzz_check_answer(s, &m->u.need, &j->buf);
		job_put(s, j);
		pthread_mutex_lock(&s->lock);
	}
	for (j = s->free_jobs; j; j = j->next)
		free_jobs++;
	pthread_mutex_unlock(&s->lock);
	FUZZ_CHECK(s, free_jobs == N_JOBS);

	if (m->type == WIRE_MSG_NEED) {
		/* Answered in full, or refused and the migration fails. */
		FUZZ_CHECK(s, queued == (servable ? 1u : 0u));
		FUZZ_CHECK(s, servable == !s->failed);
	}
	/* Credits only grow, and the window stays within its bounds. */
	FUZZ_CHECK(s, s->acked >= in->acked);
	if (m->type == WIRE_MSG_ACK)
		FUZZ_CHECK(s, s->acked == (m->u.ack > in->acked ? m->u.ack : in->acked));
	FUZZ_CHECK(s, s->window >= PROXY_WINDOW_MIN && s->window <= s->window_max &&
		      s->window_max <= PROXY_WINDOW_MAX);
	/*
	 * A receiver that said PREPARED may hold the guest paused: nothing it
	 * says afterwards (ERROR, CANCEL, DONE failed) makes the sender take
	 * it for one that holds nothing and skip telling it to discard.
	 */
	if (in->prepared) {
		FUZZ_CHECK(s, s->prepared);
		FUZZ_CHECK(s, s->peer_failed == in->peer_failed);
		if (m->type == WIRE_MSG_ERROR || m->type == WIRE_MSG_CANCEL)
			FUZZ_CHECK(s, s->link_lost && !s->failed);
	} else if (m->type == WIRE_MSG_ERROR || m->type == WIRE_MSG_CANCEL ||
		   (m->type == WIRE_MSG_DONE && m->u.status.code != WIRE_CODE_OK)) {
		FUZZ_CHECK(s, s->failed && s->peer_failed);
	}
	if (m->type == WIRE_MSG_DONE && m->u.status.code == WIRE_CODE_OK)
		FUZZ_CHECK(s, s->peer_done);
	if (m->type == WIRE_MSG_PREPARED)
		FUZZ_CHECK(s, s->prepared);
	if (s->failed)
		FUZZ_CHECK(s, s->outcome != PROXY_OK && s->error[0]);
	in->acked = s->acked;
	in->prepared = s->prepared;
	in->peer_failed = s->peer_failed;
}

/*
 * What every input starts from, built once: the contents the sender
 * handled and its cache, which the return thread only reads (hashset_has,
 * pagecache_peek; fuzz_return() checks they stay as they were), and the
 * sender's memory and zstd context, reused so that an input costs no
 * fresh pages.
 */
static struct hashset fuzz_seen;
static struct pagecache *fuzz_cache;
static struct wire_zstd *fuzz_z;
static struct sender fuzz_sender;

static int fuzz_setup(void)
{
	int k, r = 0;

	for (k = 0; k < PROXY_FUZZ_CONTENTS; k++) {
		proxy_fuzz_content(k, fuzz_pages[k]);
		r = wire_sha256(fuzz_pages[k], WIRE_PAGE_SIZE, fuzz_hashes[k]);
		if (r < 0)
			return r;
	}
	/* Ten pages, as DATA pages went in; 0 and 1 fell out. */
	fuzz_cache = pagecache_new(10, WIRE_PAGE_SIZE);
	fuzz_z = wire_zstd_new(1);
	if (!fuzz_cache || !fuzz_z)
		return -ENOMEM;
	for (k = 0; k < PROXY_FUZZ_CONTENTS && r == 0; k++) {
		if (k < PROXY_FUZZ_SEEN)
			r = hashset_add(&fuzz_seen, fuzz_hashes[k]);
		if (r == 0)
			r = pagecache_put(fuzz_cache, fuzz_hashes[k],
					  k == 10 ? NULL : fuzz_pages[k]);
	}
	return r;
}

/* Takes the shared set and cache back from s, checking they are unchanged. */
static void fuzz_return(struct sender *s)
{
	FUZZ_CHECK(s, s->seen.slots == fuzz_seen.slots && s->seen.cap == fuzz_seen.cap &&
		      s->seen.count == fuzz_seen.count);
	FUZZ_CHECK(s, s->cache == fuzz_cache && pagecache_count(s->cache) == 10);
	hashset_init(&s->seen);
	s->cache = NULL;
}

/*
 * The sender as the return thread sees it mid-migration (internal.h
 * describes its contents), then the return thread's loop on the frames.
 */
int proxy_send_fuzz(const uint8_t *data, size_t len)
{
	static const struct proxy_send_options o;
	static int ready;
	struct fuzz_input in = { .p = data, .len = len };
	struct sender *s = &fuzz_sender;
	uint64_t now = tsb_now_ns();
	int k, failed;

	if (!ready)
		ready = fuzz_setup() < 0 ? -1 : 1;
	if (ready < 0)
		return -ENOMEM;
	sender_init(s, &o);
	s->qfd = open("/dev/null", O_WRONLY | O_CLOEXEC);
	if (s->qfd < 0) {
		sender_fini(s);
		return -EIO;
	}
	s->fuzz = &in;
	s->seen = fuzz_seen;
	s->cache = fuzz_cache;
	/*
	 * A second into the migration, 4 MiB parsed with a delay sample every
	 * 256 KiB: an ACK recomputes the window.
	 */
	s->ack_rate_t0_ns = now - 1000000000ull;
	s->delay_min_t0 = now;
	for (k = 0; k < 16; k++) {
		s->delay_ring[k].off = (uint64_t)(k + 1) * DELAY_SAMPLE_EVERY;
		s->delay_ring[k].t = now - 1000000000ull + (uint64_t)k * 50000000ull;
	}
	s->delay_count = 16;
	s->delay_last_off = 16 * DELAY_SAMPLE_EVERY;
	return_loop(s, fuzz_z);
	/* It never ends silently: failed, a link to settle, or the receiver done. */
	FUZZ_CHECK(s, s->failed || s->link_lost || s->peer_done);
	fuzz_return(s);
	failed = s->failed;
	free(in.payload);
	sender_fini(s);
	return failed ? -EBADMSG : 0;
}
