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

/* A libvirt disk target: vda, sdb, hdc1 ([a-z0-9], 1-32). */
static bool disk_target_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > 32)
		return false;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9')))
			return false;
	return true;
}

/* The libvirt keys of a VM: domain, dest_uri, connect, dest_connect, qemu_port, disks. */
static int parse_libvirt(json_t *v, const char *where, struct group_vm *vm, char *err,
			 size_t errlen)
{
	json_t *port = json_object_get(v, "qemu_port"), *disks = json_object_get(v, "disks");
	int r;

	if ((r = get_string(v, "domain", where, &vm->domain, err, errlen)) ||
	    (r = get_string(v, "dest_uri", where, &vm->dest_uri, err, errlen)) ||
	    (r = get_string(v, "connect", where, &vm->connect, err, errlen)) ||
	    (r = get_string(v, "dest_connect", where, &vm->dest_connect, err, errlen)))
		return r;
	if (!vm->domain && (vm->dest_uri || vm->connect || vm->dest_connect || port || disks))
		return plan_err(err, errlen, "%s: \"dest_uri\", \"connect\", \"dest_connect\", "
				"\"qemu_port\" and \"disks\" belong to a libvirt \"domain\"",
				where);
	if (vm->domain && vm->qmp)
		return plan_err(err, errlen, "%s: a VM is a \"domain\" of libvirt or a QEMU at "
				"\"qmp\", not both", where);
	if (port) {
		/* Its disks use the port after it: both must be ports. */
		if (!json_is_integer(port) || json_integer_value(port) < 1 ||
		    json_integer_value(port) > 65534)
			return plan_err(err, errlen, "%s: bad \"qemu_port\" (1-65534)", where);
		vm->qemu_port = (unsigned)json_integer_value(port);
	}
	if (!disks)
		return 0;
	if (!json_is_array(disks) || json_array_size(disks) > GROUP_MAX_DISKS)
		return plan_err(err, errlen, "%s: \"disks\" is an array of at most %d disk "
				"targets (e.g. \"vda\")", where, GROUP_MAX_DISKS);
	for (size_t k = 0; k < json_array_size(disks); k++) {
		const char *d = json_string_value(json_array_get(disks, k));

		if (!d || !disk_target_ok(d))
			return plan_err(err, errlen, "%s: disks[%zu] is not a disk target such as "
					"\"vda\"", where, k);
		for (size_t j = 0; j < vm->n_disks; j++)
			if (!strcmp(vm->disks[j], d))
				return plan_err(err, errlen, "%s: disk %s is named twice", where, d);
		vm->disks[vm->n_disks] = strdup(d);
		if (!vm->disks[vm->n_disks])
			return -ENOMEM;
		vm->n_disks++;
	}
	return 0;
}

static int parse_vm(json_t *v, size_t i, struct group_vm *vm, char *err, size_t errlen)
{
	static const char *const known[] = { "name", "qmp", "to", "dest_qmp", "listen", "host",
					     "dest_host", "affinity", "domain", "dest_uri", "connect", "dest_connect",
					     "qemu_port", "disks", NULL };
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
	    (r = get_string(v, "dest_host", where, &vm->dest_host, err, errlen)) ||
	    (r = get_string(v, "affinity", where, &vm->affinity, err, errlen)))
		return r;
	/* A host is handed to ssh: never an option, never a word break. */
	if ((vm->host && !host_ok(vm->host)) || (vm->dest_host && !host_ok(vm->dest_host)))
		return plan_err(err, errlen, "%s: a host is [user@]name: no spaces, not "
				"starting with '-'", where);
	r = parse_libvirt(v, where, vm, err, errlen);
	if (r == 0 && vm->domain && !vm->qemu_port)
		vm->qemu_port = GROUP_QEMU_PORT_BASE + 2 * (unsigned)i;
	return r;
}

/* Two libvirt VMs whose QEMUs' ports (the stream's and the disks' after it) meet. */
static int ports_apart(const struct group_plan *p, size_t i, char *err, size_t errlen)
{
	const struct group_vm *a = &p->vms[i];

	for (size_t j = 0; a->domain && j < i; j++) {
		const struct group_vm *b = &p->vms[j];

		if (b->domain && (a->qemu_port > b->qemu_port ? a->qemu_port - b->qemu_port :
				  b->qemu_port - a->qemu_port) < 2)
			return plan_err(err, errlen, "VMs %s and %s: their \"qemu_port\" values "
					"%u and %u must be 2 apart (each uses the port after it "
					"too)", b->name, a->name, b->qemu_port, a->qemu_port);
	}
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
		if ((r = ports_apart(p, i, err, errlen)))
			return r;
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

static void vm_free(struct group_vm *vm)
{
	free(vm->qmp);
	free(vm->to);
	free(vm->dest_qmp);
	free(vm->listen);
	free(vm->host);
	free(vm->dest_host);
	free(vm->affinity);
	free(vm->domain);
	free(vm->dest_uri);
	free(vm->connect);
	free(vm->dest_connect);
	for (unsigned k = 0; k < vm->n_disks; k++)
		free(vm->disks[k]);
}

void group_plan_free(struct group_plan *p)
{
	for (size_t i = 0; i < p->n_vms; i++)
		vm_free(&p->vms[i]);
	free(p->vms);
	p->vms = NULL;
	p->n_vms = 0;
}

int group_plan_check(const struct group_plan *p, bool send, char *err, size_t errlen)
{
	for (size_t i = 0; i < p->n_vms; i++) {
		const struct group_vm *vm = &p->vms[i];

		if (send && ((!vm->qmp && !vm->domain) || !vm->to))
			return plan_err(err, errlen, "VM %s: the sending side needs \"qmp\" (or a "
					"libvirt \"domain\") and \"to\"", vm->name);
		if (send && vm->domain && !vm->dest_uri)
			return plan_err(err, errlen, "VM %s: a libvirt \"domain\" needs its "
					"\"dest_uri\"", vm->name);
		if (!send && ((!vm->dest_qmp && !vm->domain) || !vm->listen))
			return plan_err(err, errlen, "VM %s: the receiving side needs \"dest_qmp\" "
					"(or a libvirt \"domain\") and \"listen\"", vm->name);
		for (size_t j = 0; j < i; j++) {
			if (send && vm->qmp && p->vms[j].qmp && !strcmp(p->vms[j].qmp, vm->qmp))
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
		vm_free(vm);
	}
	p->n_vms = n;
	return n;
}

json_t *group_vm_json(const struct group_vm *vm)
{
	json_t *o = json_pack("{s:s, s:s}", "name", vm->name, "to", vm->to);

	if (!o)
		return NULL;
	if (vm->qmp)
		json_object_set_new(o, "qmp", json_string(vm->qmp));
	if (vm->host)
		json_object_set_new(o, "host", json_string(vm->host));
	if (!vm->domain)
		return o;
	json_object_set_new(o, "domain", json_string(vm->domain));
	if (vm->dest_uri)
		json_object_set_new(o, "dest_uri", json_string(vm->dest_uri));
	if (vm->connect)
		json_object_set_new(o, "connect", json_string(vm->connect));
	json_object_set_new(o, "qemu_port", json_integer(vm->qemu_port));
	if (vm->n_disks) {
		json_t *d = json_array();

		for (unsigned k = 0; k < vm->n_disks; k++)
			json_array_append_new(d, json_string(vm->disks[k]));
		json_object_set_new(o, "disks", d);
	}
	return o;
}
