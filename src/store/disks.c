/*
 * Disk images of the tenant's VMs on this host (store.h, "disk images").
 * The list is tdir/disks.json, {"images": ["/abs/path", ...]}, oldest
 * first; the store keeps the paths, never a copy of the content.
 */
#include "store/internal.h"

#include "common/file.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define DISKS_FILE "disks.json"
/* A list of STORE_MAX_DISKS longest paths fits with room to spare. */
#define DISKS_FILE_MAX ((size_t)STORE_MAX_DISKS * (STORE_DISK_PATH_MAX + 8) + 64)

/* An absolute path of printable characters, not too long. */
static bool path_ok(const char *p, size_t len)
{
	size_t i;

	if (len < 2 || len >= STORE_DISK_PATH_MAX || p[0] != '/')
		return false;
	for (i = 0; i < len; i++)
		if ((unsigned char)p[i] < 0x20 || p[i] == 0x7f)
			return false;
	return true;
}

int store_disks_parse(const char *text, size_t len,
		      void (*fn)(const char *path, void *arg), void *arg)
{
	json_t *j, *list, *v;
	size_t i;
	int n = 0;

	if (len > DISKS_FILE_MAX)
		return -EBADMSG;
	j = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
	list = json_object_get(j, "images");
	if (!json_is_object(j) || !json_is_array(list) ||
	    json_array_size(list) > STORE_MAX_DISKS) {
		json_decref(j);
		return -EBADMSG;
	}
	/* A bad entry is skipped; the others still serve. */
	json_array_foreach(list, i, v) {
		if (!json_is_string(v) || !path_ok(json_string_value(v), json_string_length(v)) ||
		    strlen(json_string_value(v)) != json_string_length(v))
			continue;
		fn(json_string_value(v), arg);
		n++;
	}
	json_decref(j);
	return n;
}

/* Reads the list file; *ret NULL when there is none. 0 or -errno. */
static int read_list(struct store *s, char **ret, size_t *ret_len)
{
	char path[4200];
	struct stat st;
	ssize_t got;
	char *text;
	int fd, r;

	*ret = NULL;
	*ret_len = 0;
	if (snprintf(path, sizeof(path), "%s/" DISKS_FILE, s->tdir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || (size_t)st.st_size > DISKS_FILE_MAX) {
		close(fd);
		return -EBADMSG;
	}
	text = malloc((size_t)st.st_size + 1);
	if (!text) {
		close(fd);
		return -ENOMEM;
	}
	got = pread(fd, text, (size_t)st.st_size, 0);
	r = got < 0 ? -errno : 0;
	close(fd);
	if (r < 0) {
		free(text);
		return r;
	}
	*ret = text;
	*ret_len = (size_t)got;
	return 0;
}

int store_disk_list(struct store *s, void (*fn)(const char *path, void *arg), void *arg)
{
	char *text;
	size_t len;
	int r;

	pthread_mutex_lock(&s->mu);
	r = read_list(s, &text, &len);
	pthread_mutex_unlock(&s->mu);
	if (r < 0 || !text)
		return r;
	r = store_disks_parse(text, len, fn, arg);
	free(text);
	return r;
}

static void append_path(const char *path, void *arg)
{
	json_array_append_new(arg, json_string(path));
}

int store_disk_note(struct store *s, const char *path, char *err, size_t errlen)
{
	json_t *list, *doc = NULL;
	char *text = NULL, *out = NULL;
	size_t len, i;
	int r;

	if (s->readonly || !path || !path_ok(path, strlen(path))) {
		snprintf(err, errlen, "not an absolute image path: %s", path ? path : "(none)");
		return -EINVAL;
	}
	list = json_array();
	if (!list)
		return -ENOMEM;
	pthread_mutex_lock(&s->mu);
	r = read_list(s, &text, &len);
	/* A damaged list is replaced: it only ever saves bytes on the WAN. */
	if (r == 0 && text && store_disks_parse(text, len, append_path, list) < 0)
		json_array_clear(list);
	r = r == -EBADMSG ? 0 : r;
	/* The path moves to the end (newest); the oldest beyond the cap go. */
	for (i = 0; i < json_array_size(list);) {
		if (!strcmp(json_string_value(json_array_get(list, i)), path))
			json_array_remove(list, i);
		else
			i++;
	}
	json_array_append_new(list, json_string(path));
	while (json_array_size(list) > STORE_MAX_DISKS)
		json_array_remove(list, 0);
	if (r == 0)
		doc = json_pack("{s:O}", "images", list);
	out = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
	if (r == 0 && !out)
		r = -ENOMEM;
	if (r == 0)
		r = tsb_write_atomic(s->tdir, DISKS_FILE, out, strlen(out), 0);
	pthread_mutex_unlock(&s->mu);
	if (r < 0)
		snprintf(err, errlen, "store %s: remembering disk image %s: %s", s->dir, path,
			 strerror(-r));
	free(out);
	free(text);
	json_decref(doc);
	json_decref(list);
	return r;
}
