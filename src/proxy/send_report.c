/* What the sender reports: the progress line, --report, the compression floor. */
#include "proxy/sender.h"

#include "common/fault.h"
#include "common/util.h"
#include "store/store.h"
#include "wire/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * The floor: the zstd-compressed size (level 3, 1 MiB chunks) of the
 * distinct contents of the final image that had to travel as data (the
 * destination could rebuild nothing of them). Our mirrored cache holds
 * exactly the pages sent as data in this migration.
 */
int64_t report_floor(struct sender *s, uint64_t *ret_pages)
{
	struct wire_zstd *z = wire_zstd_new(3);
	struct tsb_buf chunk, out;
	uint8_t (*seen)[WIRE_HASH_LEN] = NULL;
	size_t cap = 1, nb, b, slot;
	uint64_t total = 0, i, pages = 0;
	int64_t floor_bytes = 0;
	const uint8_t *hash, *page;
	uint8_t buf[WIRE_PAGE_SIZE];

	if (!z)
		return -1;
	nb = store_image_block_count(s->departure.image);
	for (b = 0; b < nb; b++)
		total += s->image_pages[b];
	while (cap < total * 2 + 2)
		cap *= 2;
	seen = calloc(cap, WIRE_HASH_LEN);
	tsb_buf_init(&chunk);
	tsb_buf_init(&out);
	if (!seen) {
		floor_bytes = -1;
		goto out;
	}
	for (b = 0; b < nb; b++) {
		for (i = 0; i < s->image_pages[b]; i++) {
			uint64_t key;

			if (store_image_page(s->departure.image, b, i, &hash) != STORE_PAGE_HASH)
				continue;
			if (!pagecache_has(s->cache, hash))
				continue;
			page = pagecache_peek(s->cache, hash);
			if (!page && store_get(s->store, hash, buf) == 0)
				page = buf;
			if (!page)
				continue;
			memcpy(&key, hash, sizeof(key));
			/* Open addressing; an all-zero slot is free (no real hash is zero). */
			for (slot = key & (cap - 1); seen[slot][0] | seen[slot][1] | seen[slot][31];
			     slot = (slot + 1) & (cap - 1))
				if (!memcmp(seen[slot], hash, WIRE_HASH_LEN))
					break;
			if (!memcmp(seen[slot], hash, WIRE_HASH_LEN))
				continue;
			memcpy(seen[slot], hash, WIRE_HASH_LEN);
			pages++;
			tsb_buf_append(&chunk, page, WIRE_PAGE_SIZE);
			if (chunk.len >= (1u << 20)) {
				tsb_buf_reset(&out);
				floor_bytes += wire_zstd_compress(z, chunk.data, chunk.len, &out) > 0 ?
					       (int64_t)out.len : (int64_t)chunk.len;
				tsb_buf_reset(&chunk);
			}
		}
	}
	if (chunk.len) {
		tsb_buf_reset(&out);
		floor_bytes += wire_zstd_compress(z, chunk.data, chunk.len, &out) > 0 ?
			       (int64_t)out.len : (int64_t)chunk.len;
	}
out:
	*ret_pages = pages;
	free(seen);
	tsb_buf_fini(&chunk);
	tsb_buf_fini(&out);
	wire_zstd_free(z);
	return floor_bytes;
}

void report_progress_tick(void *opaque, json_t *stats)
{
	struct progress_ctx *p = opaque;
	json_t *ram = json_object_get(stats, "ram");
	double secs = (tsb_now_ns() - p->start_ns) / 1e9;
	struct wire_conn_stats ws;
	json_int_t pass, remaining, total;
	double pct, rate;

	if (!strcmp(json_string_value(json_object_get(stats, "status")) ?: "", "postcopy-active"))
		tsb_fault_point("postcopy");
	if (!ram || (!p->tty && !p->s->o->on_tick))
		return;
	sender_link_stats(p->s, &ws);
	pass = json_integer_value(json_object_get(ram, "dirty-sync-count"));
	remaining = json_integer_value(json_object_get(ram, "remaining"));
	total = json_integer_value(json_object_get(ram, "total"));
	if (p->s->o->on_tick) {
		struct proxy_tick t = {
			.status = json_string_value(json_object_get(stats, "status")) ?: "",
			.pass = pass > 0 ? (unsigned)pass : 0,
			.ram_total = total > 0 ? (uint64_t)total : 0,
			.ram_remaining = remaining > 0 ? (uint64_t)remaining : 0,
			.wan_out = ws.net_out,
		};

		p->s->o->on_tick(p->s->o->tick_opaque, &t);
	}
	if (!p->tty)
		return;
	pct = total ? 100.0 * (double)(total - remaining) / (double)total : 0;
	rate = secs > 0 ? ws.net_out * 8 / secs / 1e6 : 0;
	fprintf(stderr, "\rsend: pass %lld  %5.1f%%  WAN %.1f MB at %.1f Mbit/s  "
		"remaining %.1f MB   ", (long long)pass, pct, ws.net_out / 1e6, rate,
		remaining / 1e6);
}

json_t *report_make(struct sender *s, const struct migctl_result *res, uint64_t start_ns,
		    uint64_t end_ns)
{
	struct wire_conn_stats ws = { 0 };
	json_t *r = json_object(), *stats = res->src_stats, *ram;
	double secs = (end_ns - start_ns) / 1e9;
	uint64_t resume_ns = 0;
	const char *p;

	if (s->conn)
		sender_link_stats(s, &ws);
	json_object_set_new(r, "side", json_string("send"));
	json_object_set_new(r, "outcome", json_string(proxy_outcome_name(s->outcome)));
	/* libvirt's migration can succeed after ours failed (send_libvirt.c). */
	if (s->error[0])
		json_object_set_new(r, s->outcome == PROXY_OK ? "warning" : "error",
				    json_string(s->error));
	json_object_set_new(r, "total_time_ms", json_integer((end_ns - start_ns) / 1000000));
	if (s->migrate_ns && s->qemu_done_ns)
		/* Where the time went: before QEMU starts, QEMU, the receiver's word. */
		json_object_set_new(r, "phases_ms", json_pack("{s:I, s:I, s:I}",
			"setup", (json_int_t)((s->migrate_ns - start_ns) / 1000000),
			"qemu", (json_int_t)((s->qemu_done_ns - s->migrate_ns) / 1000000),
			"confirm", (json_int_t)((end_ns - s->qemu_done_ns) / 1000000)));
	/* Where the pipeline stalled: which stage waited for which. */
	json_object_set_new(r, "waits_ms", json_pack("{s:I, s:I, s:I, s:I}",
		"credits", (json_int_t)(s->credit_wait_ns / 1000000),
		"free_job", (json_int_t)(s->job_wait_ns / 1000000),
		"wan_idle", (json_int_t)(s->wan_idle_ns / 1000000),
		"push_held", (json_int_t)(s->push_held_ns / 1000000)));
	p = strstr(s->peer_done_text, "resume_ns=");
	if (p)
		resume_ns = strtoull(p + 10, NULL, 10);
	/* Guest-visible downtime: source STOP to destination RESUME (host clocks). */
	if (res->stop_ns && resume_ns > res->stop_ns)
		json_object_set_new(r, "downtime_ms",
				    json_integer((resume_ns - res->stop_ns) / 1000000));
	if (stats) {
		json_object_set(r, "qemu_downtime_ms", json_object_get(stats, "downtime")
			? json_object_get(stats, "downtime") : json_null());
		json_object_set(r, "qemu_total_time_ms", json_object_get(stats, "total-time")
			? json_object_get(stats, "total-time") : json_null());
		ram = json_object_get(stats, "ram");
		if (ram)
			json_object_set(r, "passes", json_object_get(ram, "dirty-sync-count"));
	}
	json_object_set_new(r, "qemu_stream_bytes", json_integer(s->stream_bytes));
	json_object_set_new(r, "postcopy", res->postcopy ? json_pack("{s:b, s:I, s:s}",
		"switched", 1, "at_ms", (json_int_t)res->postcopy_at_ms, "reason",
		res->postcopy_reason) : json_pack("{s:b}", "switched", 0));
	if (res->postcopy) {
		/* Page requests of the destination, and how many pages went ahead. */
		json_object_set_new(json_object_get(r, "postcopy"), "page_requests",
				    json_integer((json_int_t)s->urgent.added));
		json_object_set_new(json_object_get(r, "postcopy"), "urgent_pages",
				    json_integer((json_int_t)s->urgent_pages));
	}
	if (s->recoveries)
		json_object_set_new(json_object_get(r, "postcopy"), "resumed",
				    resume_report(s->recoveries, &s->resumed));
	json_object_set_new(r, "wan", json_pack(
		"{s:I, s:I, s:I, s:I, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I},"
		" s:I, s:I}",
		"bytes_sent", (json_int_t)ws.net_out,
		"bytes_received", (json_int_t)ws.net_in,
		"tls_overhead", (json_int_t)(ws.net_out - ws.app_out),
		"app_bytes_sent", (json_int_t)ws.app_out,
		"by_category",
		"header", (json_int_t)s->wan.headers,
		"zero", (json_int_t)s->wan.zero,
		"literal", (json_int_t)s->wan.literal,
		"compressed", (json_int_t)s->wan.compressed,
		"reference", (json_int_t)s->wan.reference,
		"reused", (json_int_t)s->wan.reused,
		"group", (json_int_t)s->wan.group,
		"disk", (json_int_t)s->wan.disk,
		"stream", (json_int_t)s->wan.stream,
		"raw", (json_int_t)s->wan.raw_entries,
		"control", (json_int_t)s->wan.control,
		"literal_uncompressed", (json_int_t)s->wan.literal_in,
		"stream_uncompressed", (json_int_t)s->wan.stream_in));
	json_object_set_new(json_object_get(r, "wan"), "connections",
			    json_integer(s->n_lanes > 1 ? s->n_lanes : 1));
	/* The credit window at the end and its cap (stream bytes, §4b). */
	json_object_set_new(json_object_get(r, "wan"), "window_bytes", json_integer(s->window));
	json_object_set_new(json_object_get(r, "wan"), "window_max_bytes",
			    json_integer(s->window_max));
	json_object_set_new(r, "pages", json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
		"zero", (json_int_t)s->pages_zero, "data", (json_int_t)s->pages_data,
		"reference", (json_int_t)s->pages_ref, "raw", (json_int_t)s->pages_raw,
		"reused", (json_int_t)s->pages_same, "group", (json_int_t)s->pages_group,
		"disk", (json_int_t)s->pages_disk,
		"need_served", (json_int_t)s->need_served));
	/* Of "group": sent by another VM of the group moving at the same time. */
	json_object_set_new(json_object_get(r, "pages"), "group_live",
			    json_integer((json_int_t)s->pages_live));
	/* Of "data": a filter named them, but the source had stopped (send_encode.c). */
	json_object_set_new(json_object_get(r, "pages"), "data_not_guessed",
			    json_integer((json_int_t)s->pages_unguessed));
	/* Where each page came from at the destination, and what that cost. */
	json_object_set_new(r, "by_source", json_pack(
		"{s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I}, s:{s:I, s:I}}",
		"reused_from_old_image", "pages", (json_int_t)s->pages_same,
		"bytes", (json_int_t)s->wan.reused,
		"shared_from_group", "pages", (json_int_t)s->pages_group,
		"bytes", (json_int_t)s->wan.group,
		"rebuilt_from_disk", "pages", (json_int_t)s->pages_disk,
		"bytes", (json_int_t)s->wan.disk,
		"repeated_in_migration", "pages", (json_int_t)s->pages_ref,
		"bytes", (json_int_t)s->wan.reference,
		"sent", "pages", (json_int_t)s->pages_data,
		"bytes", (json_int_t)(s->wan.literal + s->wan.compressed)));
	if (s->store) {
		json_t *st = json_pack("{s:s, s:s, s:s, s:s, s:b}",
			"site", store_site_id(s->store), "tenant", s->tenant, "vm", s->vm,
			"image", s->image_id, "peer_summary", s->use_peer);

		if (s->manifest)
			json_object_set_new(st, "reused_image", json_string(
				store_image_get_info(s->manifest)->peer_image));
		json_object_set_new(r, "store", st);
	}
	json_object_set_new(r, "zstd_batches", json_pack("{s:I, s:I, s:I}",
		"none", (json_int_t)s->level_uses[0], "level1", (json_int_t)s->level_uses[1],
		"level3", (json_int_t)s->level_uses[2]));
	json_object_set_new(r, "effective_mbit_s",
			    json_real(secs > 0 ? s->stream_bytes * 8 / secs / 1e6 : 0));
	json_object_set_new(r, "wan_mbit_s",
			    json_real(secs > 0 ? ws.net_out * 8 / secs / 1e6 : 0));
	return r;
}
