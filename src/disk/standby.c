/*
 * What a standby lacks of a VM's disks (docs/standby.md, "Disks"): dirty
 * bitmaps in the source QEMU, one per sync round, named after the round.
 * A round's bitmap is added before its mirrors complete, so it counts
 * every write the standby's copy may miss (a few from the last drain,
 * counted twice, are on the safe side). It replaces the older ones once
 * the standby kept the round; a failed round's bitmap goes instead, and
 * the older one keeps counting since the last kept round. Should sync
 * die between the two, both remain and the larger one is read.
 */
#include "disk/disk.h"
#include "disk/internal.h"

#include "common/log.h"
#include "qmp/qmp.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

/* 4 KiB granularity (a bitmap of 8 MiB at most) up to this size; QEMU's default above. */
#define STALE_FINE_MAX (256ull << 30)

static void bitmap_name(char *out, size_t len, const char *round)
{
	snprintf(out, len, "%s%s", DISK_STALE_PREFIX, round);
}

int disk_stale_begin(struct disk_send *ds, struct qmp *q, const char *round, char *err,
		     size_t errlen)
{
	const struct disk_dev *devs[DISK_MAX];
	unsigned n = disk_send_devs(ds, devs, DISK_MAX), i;
	char name[128];
	json_t *args;
	int r;

	bitmap_name(name, sizeof(name), round);
	for (i = 0; i < n; i++) {
		args = json_pack("{s:s, s:s}", "node", devs[i]->node, "name", name);
		if (args && devs[i]->size <= STALE_FINE_MAX)
			json_object_set_new(args, "granularity", json_integer(4096));
		r = disk_qmp(q, "block-dirty-bitmap-add", args, NULL, err, errlen);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Calls fn for each of our bitmaps on the disks (node, name, count); the call's result. */
static int each_bitmap(struct qmp *q, void (*fn)(struct qmp *q, const char *node,
						 const char *name, uint64_t count, void *arg),
		       void *arg)
{
	json_t *res = NULL, *e, *b;
	char err[256];
	size_t i, j;
	int r = disk_qmp(q, "query-block", NULL, &res, err, sizeof(err));

	if (r < 0)
		return r;
	json_array_foreach(res, i, e) {
		json_t *ins = json_object_get(e, "inserted");
		const char *node = json_string_value(json_object_get(ins, "node-name"));

		json_array_foreach(json_object_get(ins, "dirty-bitmaps"), j, b) {
			const char *name = json_string_value(json_object_get(b, "name"));
			json_int_t count = json_integer_value(json_object_get(b, "count"));

			if (node && name && !strncmp(name, DISK_STALE_PREFIX,
						    strlen(DISK_STALE_PREFIX)))
				fn(q, node, name, count > 0 ? (uint64_t)count : 0, arg);
		}
	}
	json_decref(res);
	return 0;
}

struct settle {
	const char *keep;	/* the bitmap to keep; NULL: remove only drop */
	const char *drop;
};

static void settle_one(struct qmp *q, const char *node, const char *name, uint64_t count,
		       void *arg)
{
	const struct settle *st = arg;
	char err[256];

	(void)count;
	if (st->keep ? !strcmp(name, st->keep) : strcmp(name, st->drop))
		return;
	if (disk_qmp(q, "block-dirty-bitmap-remove",
		     json_pack("{s:s, s:s}", "node", node, "name", name), NULL, err, sizeof(err)) < 0)
		log_warn("disks: cannot remove the dirty bitmap %s of %s: %s", name, node, err);
}

void disk_stale_settle(struct disk_send *ds, struct qmp *q, const char *round, bool kept)
{
	char name[128];
	struct settle st;

	if (!ds)
		return;
	bitmap_name(name, sizeof(name), round);
	st.keep = kept ? name : NULL;
	st.drop = name;
	if (each_bitmap(q, settle_one, &st) < 0)
		log_warn("disks: cannot list the dirty bitmaps of the standby's rounds");
}

struct largest {
	char node[DISK_MAX][DISK_NAME_MAX];
	uint64_t count[DISK_MAX];
	unsigned n;
};

static void add_largest(struct qmp *q, const char *node, const char *name, uint64_t count,
			void *arg)
{
	struct largest *l = arg;
	unsigned i;

	(void)q;
	(void)name;
	for (i = 0; i < l->n; i++)
		if (!strcmp(l->node[i], node))
			break;
	if (i == l->n) {
		if (l->n == DISK_MAX || strlen(node) >= DISK_NAME_MAX)
			return;
		snprintf(l->node[i], DISK_NAME_MAX, "%s", node);
		l->count[l->n++] = 0;
	}
	if (count > l->count[i])
		l->count[i] = count;
}

int64_t disk_stale_bytes(struct qmp *q)
{
	struct largest l = { .n = 0 };
	int64_t sum = 0;
	int r = each_bitmap(q, add_largest, &l);

	if (r < 0)
		return r;
	for (unsigned i = 0; i < l.n; i++)
		sum += (int64_t)l.count[i];
	return sum;
}
