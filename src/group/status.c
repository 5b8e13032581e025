/* Where a VM's QEMU is, for a group's reruns (internal.h). */
#include "group/internal.h"

#include <stdio.h>
#include <string.h>

#include "qmp/qmp.h"

int group_qemu_status(const char *qmp_path, const char *what, char *status, size_t len,
		      char *why, size_t whylen)
{
	char err[256] = "";
	json_t *st = NULL;
	struct qmp *q;
	int r;

	r = qmp_open(qmp_path, 5000, &q);
	if (r < 0) {
		snprintf(why, whylen, "its %s QEMU (%s) does not answer: %s", what, qmp_path,
			 strerror(-r));
		return -1;
	}
	r = qmp_execute(q, "query-status", NULL, &st, err, sizeof(err));
	qmp_close(q);
	if (r < 0) {
		snprintf(why, whylen, "query-status at its %s: %s", what, err[0] ? err :
			 strerror(-r));
		return -1;
	}
	snprintf(status, len, "%s", json_string_value(json_object_get(st, "status")) ?: "");
	json_decref(st);
	return 0;
}
