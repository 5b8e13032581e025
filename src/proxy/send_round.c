/*
 * A sync round to a standby (docs/standby.md): QEMU's precopy runs into
 * the standby's store and is ended by us, never switched over.
 *
 * When: once QEMU's first pass is through (its dirty-sync-count reaches 2:
 * every page went once, what it dirtied since is what the standby lacks),
 * or after the round's limit. Should QEMU decide to complete first (a
 * guest that dirties almost nothing), pause-before-switchover stops it
 * before the switchover: the source is paused for a moment, then the
 * cancel lets it run on.
 */
#include "proxy/sender.h"

#include "common/log.h"
#include "common/util.h"

#include <errno.h>
#include <stdio.h>

static uint64_t ram_u64(json_t *ram, const char *key)
{
	json_int_t v = json_integer_value(json_object_get(ram, key));

	return v > 0 ? (uint64_t)v : 0;
}

/* Ends the round: migctl sees the flag and cancels QEMU's migration. */
static void end_round(struct sender *s, const char *why)
{
	if (s->round.end)
		return;
	s->round.ended_by = why;
	s->round.end_ns = tsb_now_ns();
	s->round.end = true;
	if (!s->abort_flag)
		s->abort_flag = 1;
	log_info("sync: ending the round (%s): %.1f MB not yet at the standby, QEMU's pass %llu",
		 why, s->round.remaining / 1e6, (unsigned long long)s->round.pass);
}

void round_tick(struct sender *s, json_t *stats, uint64_t since_ns)
{
	const struct proxy_send_options *o = s->o;
	json_t *ram = json_object_get(stats, "ram");
	uint64_t limit_ms = o->round_max_ms ? o->round_max_ms : PROXY_ROUND_MAX_DEFAULT_MS;
	uint64_t page;

	if (!o->standby_round || s->round.end || !ram)
		return;
	s->round.pass = ram_u64(ram, "dirty-sync-count");
	s->round.ram_total = ram_u64(ram, "total");
	s->round.remaining = ram_u64(ram, "remaining");
	page = ram_u64(ram, "page-size");
	s->round.dirty_rate = ram_u64(ram, "dirty-pages-rate") * (page ? page : 4096);
	if (s->round.pass >= 2)
		end_round(s, "first pass");
	else if ((tsb_now_ns() - since_ns) / 1000000 >= limit_ms)
		end_round(s, "round limit");
}

int round_pre_switchover(struct sender *s, char *err, size_t errlen)
{
	s->round.remaining = 0;	/* QEMU judged what is left small enough to stop for */
	end_round(s, "pre-switchover");
	snprintf(err, errlen, "a sync round never switches over");
	return -ECANCELED;
}

json_t *round_report(const struct sender *s)
{
	if (!s->o->standby_round)
		return NULL;
	return json_pack("{s:b, s:s?, s:I, s:I, s:I, s:I}",
			 "ended", (int)s->round.end, "ended_by", s->round.ended_by,
			 "qemu_pass", (json_int_t)s->round.pass,
			 "ram_bytes", (json_int_t)s->round.ram_total,
			 "stale_bytes", (json_int_t)s->round.remaining,
			 "dirty_bytes_per_s", (json_int_t)s->round.dirty_rate);
}
