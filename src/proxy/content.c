/* What the destination can rebuild locally (see content.h). */
#include "proxy/content.h"

#include "common/buf.h"
#include "net/net.h"
#include "common/log.h"
#include "qmp/qmp.h"

#include <errno.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void content_new_id(char out[33])
{
	unsigned char raw[16];
	int i;

	if (RAND_bytes(raw, sizeof(raw)) != 1)
		memset(raw, 0, sizeof(raw));
	for (i = 0; i < 16; i++)
		snprintf(out + 2 * i, 3, "%02x", raw[i]);
}

int content_open_store(const struct proxy_common_options *c, const char *tenant,
		       struct store **ret, char *err, size_t errlen)
{
	struct store_options so = {
		.dir = c->store_dir, .tenant = tenant, .cap_bytes = c->store_cap,
		.lock_timeout_ms = 30000,
	};

	*ret = NULL;
	if (!c->store_dir)
		return 0;
	return store_open(&so, ret, err, errlen);
}

void content_tenant(const char *given, const char *vm, char out[WIRE_MAX_ID + 1])
{
	if (given)
		snprintf(out, WIRE_MAX_ID + 1, "%s", given);
	else
		snprintf(out, WIRE_MAX_ID + 1, "vm-%s", vm);
}

void content_net_notify(const char *agent, const char *vm,
			const struct proxy_recv_options *o)
{
	json_t *req, *reply = NULL, *ips;
	char err[256];
	unsigned i;

	if (!agent)
		return;
	if (!vm || !*vm) {
		log_warn("not telling the mobility agent: the VM has no id (give --vm-id to send)");
		return;
	}
	if (o) {
		ips = json_array();
		for (i = 0; i < o->n_net_ips; i++)
			json_array_append_new(ips, json_string(o->net_ips[i]));
		req = json_pack("{s:s, s:s, s:s, s:o, s:s, s:b}", "op", "arrive", "vm", vm,
				"mac", o->net_mac, "addrs", ips, "home", o->net_home,
				"when_seen", 0);
	} else {
		req = json_pack("{s:s, s:s}", "op", "depart", "vm", vm);
	}
	if (mob_ctl_call(agent, req, 5000, &reply, err, sizeof(err)) < 0)
		log_warn("mobility agent: %s: %s", o ? "arrival" : "departure", err);
	else
		log_info("mobility agent told: %s of %s", o ? "arrival" : "departure", vm);
	json_decref(reply);
}

/* ---- receiver ---- */

/* Adds every image query-block reports for the VM (its own disks). */
static int index_vm_disks(struct qmp *q, struct diskindex *d, char *err, size_t errlen)
{
	json_t *ret = NULL, *dev;
	size_t i;
	int r;

	r = qmp_execute(q, "query-block", NULL, &ret, err, errlen);
	if (r < 0)
		return r;
	json_array_foreach(ret, i, dev) {
		json_t *image = json_object_get(json_object_get(dev, "inserted"), "image");
		const char *file = json_string_value(json_object_get(image, "filename"));
		const char *fmt = json_string_value(json_object_get(image, "format"));

		if (!file || !fmt || (strcmp(fmt, "raw") && strcmp(fmt, "qcow2")))
			continue;
		r = diskindex_add(d, file, fmt, err, errlen);
		if (r < 0) {
			/* A disk we cannot read only costs bytes on the WAN. */
			log_warn("not rebuilding pages from the VM's disk: %s", err);
			r = 0;
		}
	}
	json_decref(ret);
	return 0;
}

int content_index_disks(struct qmp *q, const struct proxy_recv_options *o,
			struct diskindex **ret, char *err, size_t errlen)
{
	struct diskindex *d = diskindex_new();
	unsigned i;
	int r = 0;

	*ret = NULL;
	if (!d)
		return -ENOMEM;
	if (!o->no_vm_disks)
		r = index_vm_disks(q, d, err, errlen);
	for (i = 0; r == 0 && i < o->n_disk_sources; i++)
		r = diskindex_add(d, o->disk_sources[i], NULL, err, errlen);
	if (r < 0 || !diskindex_count(d)) {
		diskindex_free(d);
		return r;
	}
	log_info("indexed %zu blocks of %zu disk image(s)", diskindex_count(d),
		 diskindex_files(d));
	*ret = d;
	return 0;
}

struct store_disks_add {
	struct diskindex *d;
	unsigned added;
};

static void add_store_disk(const char *path, void *arg)
{
	struct store_disks_add *a = arg;
	char err[512];

	if (diskindex_has_file(a->d, path))
		return;
	if (diskindex_add(a->d, path, NULL, err, sizeof(err)) < 0)
		log_info("not rebuilding from a disk image the store remembers: %s", err);
	else
		a->added++;
}

void content_index_store_disks(struct store *st, struct diskindex **disks)
{
	struct store_disks_add a = { .d = *disks };
	int r;

	if (!st)
		return;
	if (!a.d && !(a.d = diskindex_new()))
		return;
	r = store_disk_list(st, add_store_disk, &a);
	if (r < 0)
		log_warn("the store's list of disk images is unreadable: %s", strerror(-r));
	if (a.added)
		log_info("indexed %u disk image(s) the store remembers for tenant %s "
			 "(%zu blocks in all)", a.added, store_tenant(st), diskindex_count(a.d));
	if (!*disks && !diskindex_count(a.d)) {
		diskindex_free(a.d);
		return;
	}
	*disks = a.d;
}

void content_note_disks(struct store *st, const char *const *paths, size_t n)
{
	char err[512];
	size_t i;

	for (i = 0; st && i < n; i++)
		if (store_disk_note(st, paths[i], err, sizeof(err)) < 0)
			log_warn("%s", err);
}

static void add_to_filter(const uint8_t hash[32], void *arg)
{
	tsb_filter_add(arg, hash);
}

/*
 * Serializes into buf a filter of the n hashes each() enumerates, and
 * lists it in the summary as content of that source.
 */
static int add_filter(struct wire_summary *s, uint8_t source, struct tsb_buf *buf, size_t n,
		      void (*each)(void *src, void (*fn)(const uint8_t *, void *), void *arg),
		      void *src)
{
	struct tsb_filter f;
	int r = tsb_filter_init(&f, n);

	if (r < 0)
		return r;
	each(src, (void (*)(const uint8_t *, void *))add_to_filter, &f);
	r = tsb_buf_reserve(buf, tsb_filter_size(&f));
	if (r == 0) {
		tsb_filter_write(&f, buf->data);
		buf->len = tsb_filter_size(&f);
		s->filters[s->n_filters].source = source;
		s->filters[s->n_filters].data = buf->data;
		s->filters[s->n_filters].len = buf->len;
		s->n_filters++;
	}
	tsb_filter_fini(&f);
	return r;
}

static void each_store(void *src, void (*fn)(const uint8_t *, void *), void *arg)
{
	store_for_each_hash(src, (void (*)(const uint8_t *, void *))fn, arg);
}

static void each_disk(void *src, void (*fn)(const uint8_t *, void *), void *arg)
{
	diskindex_for_each_hash(src, (void (*)(const uint8_t *, void *))fn, arg);
}

int content_encode_summary(struct tsb_buf *out, struct store *st, struct diskindex *disks,
			   const char *vm, uint64_t *ret_filter_bytes)
{
	struct wire_summary s = { 0 };
	struct store_image_info *infos = NULL;
	struct tsb_buf fs, fd;
	size_t n_infos = 0, i;
	int r = 0;

	tsb_buf_init(&fs);
	tsb_buf_init(&fd);
	if (st) {
		s.store_gen = store_generation(st);
		if (vm && store_image_list(st, vm, &infos, &n_infos) == 0) {
			for (i = 0; i < n_infos && s.n_images < WIRE_MAX_IMAGES; i++) {
				s.images[s.n_images].p = infos[i].id;
				s.images[s.n_images].len = strlen(infos[i].id);
				s.n_images++;
			}
		}
		if (store_page_count(st))
			r = add_filter(&s, WIRE_SRC_STORE, &fs, store_page_count(st), each_store, st);
	}
	if (r == 0 && disks)
		r = add_filter(&s, WIRE_SRC_DISK, &fd, diskindex_count(disks), each_disk, disks);
	if (r == 0)
		r = wire_encode_summary(out, &s);
	if (ret_filter_bytes)
		*ret_filter_bytes = fs.len + fd.len;
	free(infos);
	tsb_buf_fini(&fs);
	tsb_buf_fini(&fd);
	return r;
}

bool content_is_round(const struct store_image_info *info)
{
	return info->peer_image[0] && !strcmp(info->peer_image, info->id);
}

void content_prune_rounds(struct store *st, const char *vm, const char *peer_site,
			  const char *keep_id)
{
	struct store_image_info *infos = NULL;
	size_t n = 0, i;

	if (!st || store_image_list(st, vm, &infos, &n) < 0)
		return;
	for (i = 0; i < n; i++)
		if (content_is_round(&infos[i]) && !strcmp(infos[i].peer_site, peer_site) &&
		    strcmp(infos[i].id, keep_id) && store_image_remove(st, infos[i].id) < 0)
			log_warn("store: cannot remove the older round %s", infos[i].id);
	free(infos);
}

/* ---- sender ---- */

int peer_view_init(struct peer_view *v, const struct wire_summary *s)
{
	unsigned i;
	int r;

	memset(v, 0, sizeof(*v));
	v->store_gen = s->store_gen;
	for (i = 0; i < s->n_images; i++) {
		memcpy(v->images[i], s->images[i].p, s->images[i].len);
		v->images[i][s->images[i].len] = '\0';
	}
	v->n_images = s->n_images;
	for (i = 0; i < s->n_filters; i++) {
		struct tsb_filter *f;
		bool *has;

		if (s->filters[i].source == WIRE_SRC_STORE) {
			f = &v->store_filter;
			has = &v->has_store;
		} else if (s->filters[i].source == WIRE_SRC_DISK) {
			f = &v->disk_filter;
			has = &v->has_disk;
		} else {
			continue; /* a source we do not know: not used */
		}
		if (*has)
			tsb_filter_fini(f);
		r = tsb_filter_parse(f, s->filters[i].data, s->filters[i].len);
		if (r < 0) {
			peer_view_fini(v);
			return r == -ENOMEM ? r : -EBADMSG;
		}
		*has = true;
	}
	return 0;
}

void peer_view_fini(struct peer_view *v)
{
	if (v->has_store)
		tsb_filter_fini(&v->store_filter);
	if (v->has_disk)
		tsb_filter_fini(&v->disk_filter);
	v->has_store = v->has_disk = false;
}

static bool view_holds(const struct peer_view *v, const char *id)
{
	unsigned i;

	for (i = 0; i < v->n_images; i++)
		if (!strcmp(v->images[i], id))
			return true;
	return false;
}

int content_find_manifest(struct store *st, const char *vm, const char *peer_site,
			  const struct peer_view *v, struct store_image **ret)
{
	struct store_image_info *infos = NULL;
	size_t n = 0, i;
	int r;

	*ret = NULL;
	if (!st)
		return 0;
	r = store_image_list(st, vm, &infos, &n);
	if (r < 0)
		return r;
	for (i = 0; i < n; i++) {
		if ((infos[i].role != STORE_IMAGE_ARRIVAL && !content_is_round(&infos[i])) ||
		    strcmp(infos[i].peer_site, peer_site) || !view_holds(v, infos[i].peer_image))
			continue;
		r = store_image_load(st, infos[i].id, ret);
		if (r == 0)
			break;
		log_warn("arrival image %s is unreadable: %s", infos[i].id, strerror(-r));
	}
	free(infos);
	return 0;
}
