/* Receiving a stream spread over several connections (lanes.h). */
#include "wire/lanes.h"

#include "common/thread.h"
#include "wire/need.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct lane {
	struct wire_lanes *l;
	unsigned index;
	struct wire_conn *conn;
	pthread_t th;
	bool started;
	struct wire_backlog ordered;	/* read ahead, in order */
	bool ended;			/* the reader stopped */
	int end;			/* then: 0 clean end, -errno */
};

struct wire_lanes {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	wire_lane_ordered_fn is_ordered;
	uint64_t max_bytes, bytes;
	struct wire_backlog control;	/* the main connection's other frames */
	unsigned n, turn;
	int failed_lane;
	struct lane lanes[WIRE_MAX_LANES];
};

static void *reader(void *arg)
{
	struct lane *ln = arg;
	struct wire_lanes *l = ln->l;
	struct wire_frame f;
	int r;

	for (;;) {
		r = wire_conn_read_frame(ln->conn, &f);
		if (r <= 0)
			break;
		pthread_mutex_lock(&l->lock);
		if (!l->is_ordered(f.type) && ln->index != 0)
			r = -EBADMSG;
		else if (f.len > l->max_bytes - l->bytes)
			r = -EOVERFLOW;
		else
			r = wire_backlog_keep(l->is_ordered(f.type) ? &ln->ordered : &l->control, &f);
		if (r == 0)
			l->bytes += f.len;
		pthread_cond_broadcast(&l->cond);
		pthread_mutex_unlock(&l->lock);
		if (r < 0)
			break;
	}
	pthread_mutex_lock(&l->lock);
	ln->ended = true;
	ln->end = r;
	pthread_cond_broadcast(&l->cond);
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

struct wire_lanes *wire_lanes_start(struct wire_conn *main, struct wire_conn *const *others,
				    unsigned n, wire_lane_ordered_fn ordered, uint64_t max_bytes)
{
	struct wire_lanes *l;
	unsigned i;

	if (n < 1 || n > WIRE_MAX_LANES)
		return NULL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	l->is_ordered = ordered;
	l->max_bytes = max_bytes;
	l->n = n;
	l->failed_lane = -1;
	wire_backlog_init(&l->control);
	for (i = 0; i < n; i++) {
		l->lanes[i].l = l;
		l->lanes[i].index = i;
		l->lanes[i].conn = i ? others[i - 1] : main;
		wire_backlog_init(&l->lanes[i].ordered);
	}
	for (i = 0; i < n; i++) {
		if (tsb_thread_create(&l->lanes[i].th, reader, &l->lanes[i])) {
			wire_lanes_stop(l);
			return NULL;
		}
		l->lanes[i].started = true;
	}
	return l;
}

/* A frame taken from b (under the lock): accounted and handed out. */
static int hand_out(struct wire_lanes *l, struct wire_backlog *b, struct wire_frame *f)
{
	if (wire_backlog_take(b, f) != 1)
		return 0;
	l->bytes -= f->len;
	return 1;
}

int wire_lanes_next(struct wire_lanes *l, struct wire_frame *f)
{
	struct lane *main = &l->lanes[0];
	unsigned i;
	int r = 0;

	pthread_mutex_lock(&l->lock);
	for (;;) {
		if (hand_out(l, &l->control, f)) {
			r = 1;
			break;
		}
		if (hand_out(l, &l->lanes[l->turn].ordered, f)) {
			l->turn = (l->turn + 1) % l->n;
			r = 1;
			break;
		}
		/* A failure anywhere ends the stream; a clean end only on main. */
		for (i = 0; i < l->n; i++)
			if (l->lanes[i].ended && l->lanes[i].end < 0)
				break;
		if (i < l->n) {
			l->failed_lane = (int)i;
			r = l->lanes[i].end;
			break;
		}
		if (main->ended && !main->ordered.head) {
			r = 0;
			break;
		}
		pthread_cond_wait(&l->cond, &l->lock);
	}
	pthread_mutex_unlock(&l->lock);
	return r;
}

int wire_lanes_failed_lane(const struct wire_lanes *l)
{
	return l->failed_lane;
}

void wire_lanes_get_stats(const struct wire_lanes *l, struct wire_conn_stats *ret)
{
	struct wire_conn_stats s;
	unsigned i;

	memset(ret, 0, sizeof(*ret));
	for (i = 1; i < l->n; i++) {
		wire_conn_get_stats(l->lanes[i].conn, &s);
		ret->app_in += s.app_in;
		ret->app_out += s.app_out;
		ret->net_in += s.net_in;
		ret->net_out += s.net_out;
	}
}

void wire_lanes_stop(struct wire_lanes *l)
{
	unsigned i;

	if (!l)
		return;
	for (i = 1; i < l->n; i++)
		if (l->lanes[i].started)
			wire_conn_abort(l->lanes[i].conn);
	for (i = 0; i < l->n; i++) {
		if (l->lanes[i].started)
			pthread_join(l->lanes[i].th, NULL);
		wire_backlog_fini(&l->lanes[i].ordered);
	}
	wire_backlog_fini(&l->control);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->lock);
	free(l);
}
