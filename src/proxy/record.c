/* Durable migration records (record.h), small JSON files. */
#include "proxy/record.h"

#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

void record_path(const char *dir, const char *id, const char *side, char *out, size_t n)
{
	snprintf(out, n, "%s/%s.%s.json", dir, id, side);
}

int record_save(const char *dir, const struct mig_record *r, char *err, size_t errlen)
{
	char name[RECORD_ID_MAX + 16];
	json_t *j;
	char *text;
	int e;

	e = tsb_mkdir_p(dir);
	if (e < 0) {
		snprintf(err, errlen, "cannot create %s: %s", dir, strerror(-e));
		return e;
	}
	j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:b, s:I}", "id", r->id, "side", r->side,
		      "state", r->state, "peer", r->peer, "qmp", r->qmp, "vm", r->vm,
		      "resume_source", r->resume, "pid", (json_int_t)getpid());
	text = j ? json_dumps(j, JSON_INDENT(1)) : NULL;
	json_decref(j);
	if (!text) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	snprintf(name, sizeof(name), "%s.%s.json", r->id, r->side);
	e = tsb_write_atomic(dir, name, text, strlen(text), 0);
	free(text);
	if (e < 0)
		snprintf(err, errlen, "cannot write the migration record %s/%s: %s", dir, name,
			 strerror(-e));
	return e;
}

static void copy_field(json_t *j, const char *key, char *dst, size_t cap, bool *bad)
{
	const char *v = json_string_value(json_object_get(j, key));

	if (!v || strlen(v) >= cap) {
		*bad = true;
		return;
	}
	memcpy(dst, v, strlen(v) + 1);
}

int record_parse(const char *text, size_t len, struct mig_record *r, char *err,
		 size_t errlen)
{
	json_error_t je;
	json_t *j;
	bool bad = false;

	memset(r, 0, sizeof(*r));
	j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!j || !json_is_object(j)) {
		snprintf(err, errlen, "not a migration record: %s", j ? "not an object" : je.text);
		json_decref(j);
		return -EBADMSG;
	}
	copy_field(j, "id", r->id, sizeof(r->id), &bad);
	copy_field(j, "side", r->side, sizeof(r->side), &bad);
	copy_field(j, "state", r->state, sizeof(r->state), &bad);
	copy_field(j, "peer", r->peer, sizeof(r->peer), &bad);
	copy_field(j, "qmp", r->qmp, sizeof(r->qmp), &bad);
	copy_field(j, "vm", r->vm, sizeof(r->vm), &bad);
	r->resume = json_is_true(json_object_get(j, "resume_source"));
	json_decref(j);
	if (bad || (strcmp(r->side, "send") && strcmp(r->side, "recv")) || !r->id[0] ||
	    strchr(r->id, '/')) {
		snprintf(err, errlen, "a field of the migration record is missing or malformed");
		return -EBADMSG;
	}
	return 0;
}

int record_load(const char *path, struct mig_record *r, char *err, size_t errlen)
{
	char text[RECORD_MAX_BYTES], why[256];
	ssize_t n;
	int fd, e;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		e = -errno;
		snprintf(err, errlen, "%s: %s", path, strerror(-e));
		return e;
	}
	n = read(fd, text, sizeof(text));
	e = n < 0 ? -errno : 0;
	close(fd);
	if (e < 0 || n == (ssize_t)sizeof(text)) {
		snprintf(err, errlen, "%s: %s", path, e ? strerror(-e) : "too big for a record");
		return e ? e : -EMSGSIZE;
	}
	e = record_parse(text, (size_t)n, r, why, sizeof(why));
	if (e < 0)
		snprintf(err, errlen, "%s: %s", path, why);
	return e;
}

void record_release(const char *dir, const struct mig_record *r)
{
	char path[600];

	if (!r->id[0])
		return;
	record_path(dir, r->id, r->side, path, sizeof(path));
	if (access(path, F_OK) == 0 || errno != ENOENT)
		return;
	snprintf(path, sizeof(path), "%s/%s.%s.lock", dir, r->id, r->side);
	(void)unlink(path);
}

void record_drop(const char *dir, const struct mig_record *r)
{
	char path[600];

	record_path(dir, r->id, r->side, path, sizeof(path));
	(void)unlink(path);
	snprintf(path, sizeof(path), "%s/%s.%s.lock", dir, r->id, r->side);
	(void)unlink(path);
	(void)tsb_fsync_dir(dir);
}

int record_lock(const char *dir, const char *id, const char *side)
{
	char path[600];
	int fd, e;

	e = tsb_mkdir_p(dir);
	if (e < 0)
		return e;
	snprintf(path, sizeof(path), "%s/%s.%s.lock", dir, id, side);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		e = errno == EWOULDBLOCK ? -EBUSY : -errno;
		close(fd);
		return e;
	}
	return fd;
}
