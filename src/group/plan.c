/* Group plans: parsing and checking (group.h, docs/group.md). */
#include "group/group.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include <fcntl.h>
#include <unistd.h>

static int plan_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int plan_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* A printable string of 1..GROUP_MAX_STRING bytes, copied; absent: NULL. */
static int get_string(json_t *obj, const char *key, const char *where, char **ret, char *err,
		      size_t errlen)
{
	json_t *v = json_object_get(obj, key);
	const char *s;
	size_t len;

	*ret = NULL;
	if (!v)
		return 0;
	if (!json_is_string(v))
		return plan_err(err, errlen, "%s: \"%s\" is not a string", where, key);
	s = json_string_value(v);
	len = json_string_length(v);
	if (!len || len > GROUP_MAX_STRING || strlen(s) != len)
		return plan_err(err, errlen, "%s: \"%s\" must be 1-%d characters", where, key,
				GROUP_MAX_STRING);
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return plan_err(err, errlen, "%s: \"%s\" has a control character", where,
					key);
	*ret = strdup(s);
	return *ret ? 0 : -ENOMEM;
}

/* A key obj has that is not in known (NULL-terminated) is an error: a typo would be lost. */
static int only_known_keys(json_t *obj, const char *const *known, const char *where,
			   char *err, size_t errlen)
{
	const char *key;
	json_t *val;

	json_object_foreach(obj, key, val) {
		const char *const *k;

		for (k = known; *k && strcmp(key, *k); k++)
			;
		if (!*k)
			return plan_err(err, errlen, "%s: unknown key \"%.64s\"", where, key);
	}
	return 0;
}

static bool host_ok(const char *h)
{
	if (h[0] == '-')
		return false;
	for (; *h; h++)
		if (*h == ' ' || *h == '\'' || *h == '"' || *h == '\\')
			return false;
	return true;
}

static int parse_vm(json_t *v, size_t i, struct group_vm *vm, char *err, size_t errlen)
{
	static const char *const known[] = { "name", "qmp", "to", "dest_qmp", "listen", "host",
					     "dest_host", NULL };
	char where[80], *name = NULL;
	int r;

	snprintf(where, sizeof(where), "vms[%zu]", i);
	if (!json_is_object(v))
		return plan_err(err, errlen, "%s is not an object", where);
	if ((r = only_known_keys(v, known, where, err, errlen)))
		return r;
	r = get_string(v, "name", where, &name, err, errlen);
	if (r)
		return r;
	if (!name || !store_id_valid(name)) {
		free(name);
		return plan_err(err, errlen, "%s: \"name\" is required: 1-%d printable "
				"characters, no spaces or '/'", where, STORE_MAX_ID);
	}
	snprintf(vm->name, sizeof(vm->name), "%s", name);
	free(name);
	snprintf(where, sizeof(where), "VM %s", vm->name);
	if ((r = get_string(v, "qmp", where, &vm->qmp, err, errlen)) ||
	    (r = get_string(v, "to", where, &vm->to, err, errlen)) ||
	    (r = get_string(v, "dest_qmp", where, &vm->dest_qmp, err, errlen)) ||
	    (r = get_string(v, "listen", where, &vm->listen, err, errlen)) ||
	    (r = get_string(v, "host", where, &vm->host, err, errlen)) ||
	    (r = get_string(v, "dest_host", where, &vm->dest_host, err, errlen)))
		return r;
	/* A host is handed to ssh: never an option, never a word break. */
	if ((vm->host && !host_ok(vm->host)) || (vm->dest_host && !host_ok(vm->dest_host)))
		return plan_err(err, errlen, "%s: a host is [user@]name: no spaces, not "
				"starting with '-'", where);
	return 0;
}

static int parse_top(json_t *root, struct group_plan *p, char *err, size_t errlen)
{
	static const char *const known[] = { "tenant", "bandwidth", "concurrency", "seed_first",
					     "vms", NULL };
	json_t *v, *vms;
	char *s;
	int r;

	if (!json_is_object(root))
		return plan_err(err, errlen, "the plan is not a JSON object");
	if ((r = only_known_keys(root, known, "the plan", err, errlen)))
		return r;
	if ((r = get_string(root, "tenant", "the plan", &s, err, errlen)))
		return r;
	if (s) {
		if (!store_id_valid(s)) {
			free(s);
			return plan_err(err, errlen, "bad \"tenant\" (1-%d printable characters, "
					"no spaces or '/')", STORE_MAX_ID);
		}
		snprintf(p->tenant, sizeof(p->tenant), "%s", s);
		free(s);
	}
	if ((r = get_string(root, "bandwidth", "the plan", &s, err, errlen)))
		return r;
	if (s) {
		r = tsb_parse_rate(s, &p->bandwidth);
		free(s);
		if (r < 0 || !p->bandwidth)
			return plan_err(err, errlen, "bad \"bandwidth\" (e.g. \"100mbit\")");
	}
	v = json_object_get(root, "concurrency");
	if (v) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 ||
		    json_integer_value(v) > GROUP_MAX_CONCURRENCY)
			return plan_err(err, errlen, "bad \"concurrency\" (1-%d)",
					GROUP_MAX_CONCURRENCY);
		p->concurrency = (unsigned)json_integer_value(v);
	}
	v = json_object_get(root, "seed_first");
	if (v) {
		if (!json_is_boolean(v))
			return plan_err(err, errlen, "\"seed_first\" is not true or false");
		p->seed_first = json_is_true(v);
	}
	vms = json_object_get(root, "vms");
	if (!json_is_array(vms) || !json_array_size(vms))
		return plan_err(err, errlen, "\"vms\" must be a non-empty array");
	if (json_array_size(vms) > GROUP_MAX_VMS)
		return plan_err(err, errlen, "more than %d VMs", GROUP_MAX_VMS);
	p->vms = calloc(json_array_size(vms), sizeof(*p->vms));
	if (!p->vms)
		return -ENOMEM;
	for (size_t i = 0; i < json_array_size(vms); i++) {
		p->n_vms = i + 1;
		r = parse_vm(json_array_get(vms, i), i, &p->vms[i], err, errlen);
		if (r)
			return r;
		for (size_t j = 0; j < i; j++)
			if (!strcmp(p->vms[j].name, p->vms[i].name))
				return plan_err(err, errlen, "VM %s is named twice",
						p->vms[i].name);
	}
	return 0;
}

int group_plan_parse(const char *text, size_t len, struct group_plan *ret, char *err,
		     size_t errlen)
{
	json_error_t je;
	json_t *root;
	int r;

	memset(ret, 0, sizeof(*ret));
	ret->seed_first = -1;
	if (len > GROUP_PLAN_MAX_BYTES)
		return plan_err(err, errlen, "the plan is larger than %u bytes",
				GROUP_PLAN_MAX_BYTES);
	root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return plan_err(err, errlen, "not JSON: %s (line %d)", je.text, je.line);
	r = parse_top(root, ret, err, errlen);
	json_decref(root);
	if (r)
		group_plan_free(ret);
	return r;
}

int group_plan_load(const char *path, struct group_plan *ret, char *err, size_t errlen)
{
	char *text = malloc(GROUP_PLAN_MAX_BYTES + 1);
	size_t len = 0;
	ssize_t n = 1;
	int fd, r;

	if (!text)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = -errno;
		snprintf(err, errlen, "cannot read the plan %s: %s", path, strerror(-r));
		free(text);
		return r;
	}
	/* One byte more than a plan may have tells a file that is too big. */
	while (len <= GROUP_PLAN_MAX_BYTES &&
	       (n = read(fd, text + len, GROUP_PLAN_MAX_BYTES + 1 - len)) > 0)
		len += (size_t)n;
	r = n < 0 ? -errno : 0;
	close(fd);
	if (r)
		snprintf(err, errlen, "cannot read the plan %s: %s", path, strerror(-r));
	else
		r = group_plan_parse(text, len, ret, err, errlen);
	free(text);
	return r;
}

void group_plan_free(struct group_plan *p)
{
	for (size_t i = 0; i < p->n_vms; i++) {
		free(p->vms[i].qmp);
		free(p->vms[i].to);
		free(p->vms[i].dest_qmp);
		free(p->vms[i].listen);
		free(p->vms[i].host);
		free(p->vms[i].dest_host);
	}
	free(p->vms);
	p->vms = NULL;
	p->n_vms = 0;
}

int group_plan_check(const struct group_plan *p, bool send, char *err, size_t errlen)
{
	for (size_t i = 0; i < p->n_vms; i++) {
		const struct group_vm *vm = &p->vms[i];

		if (send && (!vm->qmp || !vm->to))
			return plan_err(err, errlen, "VM %s: the sending side needs \"qmp\" and "
					"\"to\"", vm->name);
		if (!send && (!vm->dest_qmp || !vm->listen))
			return plan_err(err, errlen, "VM %s: the receiving side needs \"dest_qmp\" "
					"and \"listen\"", vm->name);
		for (size_t j = 0; j < i; j++) {
			if (send && !strcmp(p->vms[j].qmp, vm->qmp))
				return plan_err(err, errlen, "VMs %s and %s name the same \"qmp\"",
						p->vms[j].name, vm->name);
			if (!send && !strcmp(p->vms[j].listen, vm->listen))
				return plan_err(err, errlen, "VMs %s and %s name the same "
						"\"listen\"", p->vms[j].name, vm->name);
		}
	}
	return 0;
}

size_t group_plan_only_host(struct group_plan *p, bool send, const char *host)
{
	size_t n = 0;

	for (size_t i = 0; i < p->n_vms; i++) {
		struct group_vm *vm = &p->vms[i];
		const char *h = send ? vm->host : vm->dest_host;

		if ((!host && !h) || (host && h && !strcmp(h, host))) {
			p->vms[n++] = *vm;
			continue;
		}
		free(vm->qmp);
		free(vm->to);
		free(vm->dest_qmp);
		free(vm->listen);
		free(vm->host);
		free(vm->dest_host);
	}
	p->n_vms = n;
	return n;
}
