/*
 * Postcopy faults overtake the background push (sender.h, "send_urgent.c").
 *
 * When the destination's guest touches a page it lacks, its QEMU asks for
 * it on the return path (REQ_PAGES); the source QEMU sends that page next.
 * Without help it would then wait behind every batch already queued here
 * for the WAN. So the return thread notes each request, the parse thread
 * reads past the window while one waits (URGENT_CREDIT), and a requested
 * page travels in a PAGES frame of its own, queued ahead of the batches.
 *
 * Why this and not QEMU's postcopy-preempt channel: that channel needs a
 * second connection QEMU opens itself (not with the fd: URI tsubame hands
 * QEMU) and would be one more TLS connection to carry and recover; here
 * the page simply changes places within the one stream.
 *
 * Where it may go: the receiver writes pages into its QEMU's stream in the
 * order they arrive, and a page record is only valid where another could
 * be, i.e. right after a page record (inside a RAM section). So a page
 * overtakes the queued jobs only up to the first point that follows a
 * page: the front when the job last taken by the WAN thread ended after
 * a page, else right after the first queued job that does. Frames that
 * carry no stream (e.g. DECISION) do not change the point.
 *
 * Its encoding: no reference into the mirrored cache (the content may
 * still be in a batch it overtakes); a reference into the receiver's store
 * or disks is fine.
 */
#include "proxy/sender.h"

#include "common/log.h"
#include "common/util.h"
#include "qstream/qstream.h"

#include <errno.h>
#include <string.h>

static int on_rp_msg(void *opaque, const struct qs_rp_msg *m)
{
	struct sender *s = opaque;

	if ((m->type != QS_RP_REQ_PAGES && m->type != QS_RP_REQ_PAGES_ID) || !m->block)
		return 0;
	pthread_mutex_lock(&s->lock);
	pagereq_add(&s->urgent, m->block, m->offset, m->length, tsb_now_ns(), s->parsed);
	/* The parse thread may wait for credit: it may read on now. */
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

void urgent_note_return(struct sender *s, const uint8_t *p, size_t n)
{
	static const struct qs_rp_handlers h = { .msg = on_rp_msg };

	if (s->rp_broken)
		return;
	if (!s->rp) {
		s->rp = qs_rp_parser_new(&h, s);
		if (!s->rp)
			return;
	}
	/* Only a hint: bytes it cannot parse still reach QEMU. */
	if (qs_rp_parser_feed(s->rp, p, n) < 0) {
		log_debug("send: return path not understood (%s): no urgent pages from here",
			  qs_rp_parser_error(s->rp));
		s->rp_broken = true;
	}
}

void urgent_prune(struct sender *s)
{
	/*
	 * QEMU sends a requested page next, behind at most what its buffer and
	 * the socket hold: one not met within URGENT_CREDIT was sent before
	 * (it crossed the request), and no longer extends the window.
	 */
	if (s->parsed > URGENT_CREDIT)
		pagereq_prune_mark(&s->urgent, s->parsed - URGENT_CREDIT);
	pagereq_prune(&s->urgent, tsb_now_ns(), URGENT_TTL_NS);
}

bool urgent_wanted(struct sender *s, const struct qs_page *pg)
{
	bool hit;

	if (!s->urgent.n)
		return false;
	pthread_mutex_lock(&s->lock);
	urgent_prune(s);
	hit = pagereq_take(&s->urgent, pg->block->name, pg->block->name_len, pg->offset, NULL);
	pthread_mutex_unlock(&s->lock);
	return hit;
}

struct job *urgent_insert_after(struct job *head, struct job *tail, bool wire_after_page)
{
	struct job *q;

	if (wire_after_page)
		return NULL;
	for (q = head; q; q = q->next)
		if (q->kind != JOB_FRAME && q->ends_after_page)
			return q;
	/* None: only the end, which follows the page just parsed. */
	return tail;
}

/* Queues j as far forward as a page may go (above). Under s->lock. */
static void queue_ahead(struct sender *s, struct job *j)
{
	struct job *prev = urgent_insert_after(s->queue_head, s->queue_tail, s->wire_after_page);

	if (!prev) {
		j->next = s->queue_head;
		s->queue_head = j;
	} else {
		j->next = prev->next;
		prev->next = j;
	}
	if (!j->next)
		s->queue_tail = j;
	pthread_cond_broadcast(&s->cond);
}

int urgent_send_page(struct sender *s, const struct qs_page *pg, uint16_t qflags)
{
	struct job *j = s->cur;
	int r;

	/* What came before keeps its place, behind this page. */
	if (j && j->kind == JOB_PAGES && s->run.count && (r = encode_run_emit(s)) < 0)
		return r;
	if (j && ((j->kind == JOB_PAGES && j->pb.count) || (j->kind != JOB_PAGES && j->buf.len))) {
		s->cur = NULL;
		j->ends_after_page = s->parse_after_page;
		sender_queue_push(s, j, false);
		j = NULL;
	}
	if (!j)
		j = sender_job_get(s);
	if (!j)
		return -ECANCELED;
	j->kind = JOB_PAGES;
	s->cur = j;
	s->urgent_encoding = true;
	r = encode_page(s, pg, qflags);
	if (r == 0 && s->run.count)
		r = encode_run_emit(s);
	s->urgent_encoding = false;
	s->cur = NULL;
	j->ends_after_page = true;
	s->parse_after_page = true;
	if (r < 0) {
		sender_queue_push(s, j, false);
		return r;
	}
	s->urgent_pages++;
	j->urgent = true;
	sender_job_account(s, j);
	pthread_mutex_lock(&s->lock);
	queue_ahead(s, j);
	pthread_mutex_unlock(&s->lock);
	return 0;
}

void urgent_free(struct sender *s)
{
	qs_rp_parser_free(s->rp);
	s->rp = NULL;
}
