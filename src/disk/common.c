/* QMP helpers shared by both sides of the disk route. */
#include "disk/disk.h"
#include "disk/internal.h"
#include "qmp/qmp.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *disk_copy_mode_name(enum disk_copy_mode m)
{
	return m == DISK_COPY_BACKGROUND ? "background" :
	       m == DISK_COPY_AUTO ? "auto" : "write-blocking";
}

int disk_private_dir(char *dir, size_t len, char *err, size_t errlen)
{
	const char *t = getenv("TMPDIR");
	int n;

	if (!t || !*t)
		t = "/tmp";
	n = snprintf(dir, len, "%s/tsb-disk.XXXXXX", t);
	if (n < 0 || (size_t)n >= len) {
		snprintf(err, errlen, "TMPDIR '%s' is too long for socket paths", t);
		dir[0] = '\0';
		return -ENAMETOOLONG;
	}
	if (!mkdtemp(dir)) {
		n = -errno;
		snprintf(err, errlen, "cannot create a private directory in %s: %s", t,
			 strerror(-n));
		dir[0] = '\0';
		return n;
	}
	return 0;
}

int disk_qmp(struct qmp *q, const char *cmd, json_t *args, json_t **ret,
	     char *err, size_t errlen)
{
	char qerr[256] = "";
	int r;

	r = qmp_execute(q, cmd, args, ret, qerr, sizeof(qerr));
	json_decref(args);
	if (r < 0 && err)
		snprintf(err, errlen, "%s: %s", cmd, qerr[0] ? qerr : strerror(-r));
	return r;
}

/* Copies a string of QEMU's answer; false (dst empty) when it does not fit. */
static bool copy_str(char *dst, size_t len, json_t *v)
{
	const char *s = json_string_value(v);

	dst[0] = '\0';
	if (s && strlen(s) >= len)
		return false;
	snprintf(dst, len, "%s", s ? s : "");
	return true;
}

int disk_query(struct qmp *q, struct disk_dev *out, unsigned max, char *err,
	       size_t errlen)
{
	json_t *res = NULL, *e;
	size_t i;
	unsigned n = 0;
	int r;

	r = disk_qmp(q, "query-block", NULL, &res, err, errlen);
	if (r < 0)
		return r;
	if (!json_is_array(res)) {
		json_decref(res);
		snprintf(err, errlen, "query-block: unexpected answer");
		return -EPROTO;
	}
	json_array_foreach(res, i, e) {
		json_t *ins = json_object_get(e, "inserted");
		json_t *img, *vsize;
		struct disk_dev *d;

		if (!json_is_object(ins) || json_is_true(json_object_get(ins, "ro")))
			continue;
		if (n == max) {
			snprintf(err, errlen, "more than %u writable disks", max);
			json_decref(res);
			return -E2BIG;
		}
		d = &out[n];
		memset(d, 0, sizeof(*d));
		if (!copy_str(d->device, sizeof(d->device), json_object_get(e, "device")) ||
		    !copy_str(d->qdev, sizeof(d->qdev), json_object_get(e, "qdev")) ||
		    !copy_str(d->node, sizeof(d->node), json_object_get(ins, "node-name"))) {
			snprintf(err, errlen, "query-block: a disk name is longer than %d bytes",
				 DISK_NAME_MAX - 1);
			json_decref(res);
			return -ENAMETOOLONG;
		}
		/* An image name too long for us: no marker (mark_incomplete). */
		(void)copy_str(d->file, sizeof(d->file), json_object_get(ins, "file"));
		(void)copy_str(d->format, sizeof(d->format), json_object_get(ins, "drv"));
		if (!d->device[0])
			snprintf(d->device, sizeof(d->device), "%s", d->node);
		img = json_object_get(ins, "image");
		vsize = json_object_get(img, "virtual-size");
		if (!json_is_integer(vsize) || json_integer_value(vsize) < 0) {
			snprintf(err, errlen, "query-block: disk '%s' has no valid virtual size",
				 d->device);
			json_decref(res);
			return -EPROTO;
		}
		d->size = (uint64_t)json_integer_value(vsize);
		if (!d->device[0] || !d->node[0] || !d->size)
			continue;
		n++;
	}
	json_decref(res);
	return (int)n;
}
