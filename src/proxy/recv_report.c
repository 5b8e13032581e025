/* The receiver's JSON report: outcome, times, bytes, pages and their sources. */
#include "proxy/receiver.h"

#include "common/util.h"
#include "store/diskindex.h"
#include "store/store.h"
#include "wire/tls.h"

#include <stdlib.h>

json_t *recv_make_report(struct receiver *rc, uint64_t start_ns, uint64_t resume_ns)
{
	struct wire_conn_stats ws = { 0 };
	json_t *r = json_object();

	if (rc->conn)
		wire_conn_get_stats(rc->conn, &ws);
	if (rc->lane_reader) {
		struct wire_conn_stats l;

		wire_lanes_get_stats(rc->lane_reader, &l);
		ws.net_in += l.net_in;
		ws.net_out += l.net_out;
	}
	json_object_set_new(r, "side", json_string("recv"));
	json_object_set_new(r, "outcome", json_string(proxy_outcome_name(
		rc->failed ? rc->outcome : PROXY_OK)));
	if (rc->error[0])
		json_object_set_new(r, "error", json_string(rc->error));
	json_object_set_new(r, "total_time_ms", json_integer((tsb_now_ns() - start_ns) / 1000000));
	if (resume_ns)
		json_object_set_new(r, "resume_time_ns", json_integer(resume_ns));
	/* Guest-visible downtime: the source's STOP (in the COMMIT) to our RESUME. */
	json_object_set_new(r, "downtime_ms", rc->source_stop_ns && resume_ns > rc->source_stop_ns ?
			    json_integer((json_int_t)((resume_ns - rc->source_stop_ns) / 1000000)) :
			    json_null());
	if (rc->accepted_ns && rc->loaded_ns)
		/* Waiting for the sender, the stream until loaded, the switchover. */
		json_object_set_new(r, "phases_ms", json_pack("{s:I, s:I, s:I}",
			"wait", (json_int_t)((rc->accepted_ns - start_ns) / 1000000),
			"stream", (json_int_t)((rc->loaded_ns - rc->accepted_ns) / 1000000),
			"switchover", (json_int_t)(((rc->running_ns ? rc->running_ns :
						     tsb_now_ns()) - rc->loaded_ns) / 1000000)));
	json_object_set_new(r, "postcopy", rc->postcopy_ns && rc->accepted_ns ?
		json_pack("{s:b, s:I}", "switched", 1, "at_ms",
			  (json_int_t)((rc->postcopy_ns - rc->accepted_ns) / 1000000)) :
		json_pack("{s:b}", "switched", 0));
	if (rc->ran_in_postcopy)
		/* The guest ran here while memory still came: for how long. */
		json_object_set_new(json_object_get(r, "postcopy"), "ran_before_complete_ms",
			json_integer((json_int_t)(((rc->completed_ns ? rc->completed_ns :
						    tsb_now_ns()) - rc->running_ns) / 1000000)));
	if (rc->postcopy_ns)
		json_object_set_new(json_object_get(r, "postcopy"), "faults", recv_faults_report(rc));
	if (rc->recoveries)
		json_object_set_new(json_object_get(r, "postcopy"), "resumed",
				    resume_report(rc->recoveries, &rc->resumed));
	json_object_set_new(r, "qemu_stream_bytes", json_integer(rc->written));
	json_object_set_new(r, "refused_connections", json_integer(rc->refused));
	json_object_set_new(r, "wan", json_pack("{s:I, s:I}",
		"bytes_received", (json_int_t)ws.net_in, "bytes_sent", (json_int_t)ws.net_out));
	json_object_set_new(json_object_get(r, "wan"), "connections",
			    json_integer(rc->n_lanes > 1 ? rc->n_lanes : 1));
	json_object_set_new(r, "pages", json_pack("{s:I, s:I, s:I, s:I, s:I}",
		"zero", (json_int_t)rc->pages_zero, "data", (json_int_t)rc->pages_data,
		"reference", (json_int_t)rc->pages_ref, "raw", (json_int_t)rc->pages_raw,
		"need_asked", (json_int_t)rc->needs));
	json_object_set_new(r, "rebuilt_from", json_pack("{s:I, s:I, s:I, s:I}",
		"cache", (json_int_t)rc->from_cache, "fetched", (json_int_t)rc->from_fetched,
		"store", (json_int_t)rc->from_store, "disk", (json_int_t)rc->from_disk));
	/* LIVE references: found by waiting for another migration of the group. */
	json_object_set_new(r, "group_live", json_pack("{s:I, s:I}",
		"waited_for", (json_int_t)rc->live_waited, "wait_ms", (json_int_t)rc->live_ms));
	if (rc->rb.disks)
		json_object_set_new(r, "disk_index", json_pack("{s:I, s:I}",
			"files", (json_int_t)diskindex_files(rc->rb.disks),
			"blocks", (json_int_t)diskindex_count(rc->rb.disks)));
	if (rc->rb.store)
		json_object_set_new(r, "store", json_pack("{s:s, s:s, s:s, s:s, s:s, s:I}",
			"site", store_site_id(rc->rb.store), "tenant", rc->tenant, "vm", rc->vm,
			"image", rc->image_id, "from_site", rc->peer_site,
			"summary_filter_bytes", (json_int_t)rc->summary_bytes));
	return r;
}

void recv_fault_served(struct receiver *rc, const struct qs_page *pg)
{
	uint64_t asked, now;

	if (!rc->faults.n)
		return;	/* no request waits (read without the lock: only a hint) */
	now = tsb_now_ns();
	pthread_mutex_lock(&rc->faults_lock);
	if (pagereq_take(&rc->faults, pg->block->name, pg->block->name_len, pg->offset, &asked)) {
		if (!rc->fault_ms)
			rc->fault_ms = malloc(FAULT_SAMPLES * sizeof(*rc->fault_ms));
		if (rc->fault_ms && rc->n_fault_ms < FAULT_SAMPLES)
			rc->fault_ms[rc->n_fault_ms++] = (float)((now - asked) / 1e6);
	}
	pthread_mutex_unlock(&rc->faults_lock);
}

static int cmp_float(const void *a, const void *b)
{
	float x = *(const float *)a, y = *(const float *)b;

	return x < y ? -1 : x > y;
}

json_t *recv_faults_report(struct receiver *rc)
{
	size_t n;
	json_t *j;

	pthread_mutex_lock(&rc->faults_lock);
	n = rc->n_fault_ms;
	j = json_pack("{s:I, s:I}", "requests", (json_int_t)rc->faults.added,
		      "served", (json_int_t)n);
	if (n) {
		/* Time from QEMU's request to the page going into QEMU, ms. */
		qsort(rc->fault_ms, n, sizeof(*rc->fault_ms), cmp_float);
		json_object_set_new(j, "p50_ms", json_real(rc->fault_ms[n / 2]));
		json_object_set_new(j, "p99_ms", json_real(rc->fault_ms[(n * 99) / 100]));
		json_object_set_new(j, "max_ms", json_real(rc->fault_ms[n - 1]));
	}
	pthread_mutex_unlock(&rc->faults_lock);
	return j;
}
