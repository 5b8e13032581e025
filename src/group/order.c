/*
 * Which VM of a group goes first (group.h): the seed fills the
 * destination's store for the others, so it should be the VM whose memory
 * holds the most of theirs. Measured, not guessed: each local VM's memory
 * is read through QMP pmemsave (QEMU copies guest-physical memory to a
 * file while the guest runs), up to SCAN_MAX of it (a bounded cost: 8
 * VMs, 4 GiB read), and the pages whose hash starts with a zero byte are
 * kept: a sample chosen by content, so the same content is sampled in
 * every VM wherever it lies. Each VM
 * scores the others' sampled pages that its own sample holds too. The
 * plan's order stays unless another VM scores clearly more than its first.
 */
#include "group/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "qmp/qmp.h"
#include "wire/codec.h"

#define PAGE 4096ull
/* Read in chunks of this much; at most SCAN_MAX of each VM, from 1 MiB (past BIOS and VGA). */
#define CHUNK (2ull << 20)
#define SCAN_LOW (1ull << 20)
#define SCAN_MAX (512ull << 20)
/* Below 4 GiB the PCI hole may start at 3 GiB. */
#define SCAN_HIGH (3ull << 30)
/* Another VM goes first only with this much more (and some at all). */
#define REORDER_FACTOR 1.25
#define REORDER_MIN_PAGES 16

struct mem_sample {
	uint64_t *h;		/* the sampled pages' hashes (8 bytes), sorted */
	size_t n, cap;
	bool ok;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* The guest's RAM in bytes (query-memory-size-summary), 0 if unknown. */
static uint64_t ram_of(struct qmp *q)
{
	char err[256];
	json_t *res = NULL;
	uint64_t ram = 0;

	if (qmp_execute(q, "query-memory-size-summary", NULL, &res, err, sizeof(err)) == 0)
		ram = (uint64_t)json_integer_value(json_object_get(res, "base-memory"));
	json_decref(res);
	return ram;
}

/* Samples one VM's memory through a file in dir. 0, or -1 (why logged). */
static int sample_vm(const struct group_vm *vm, const char *dir, struct mem_sample *s)
{
	static const uint8_t zero[PAGE];
	uint8_t *buf = malloc(CHUNK), hash[WIRE_SHA256_LEN];
	char path[4200], err[256];
	uint64_t ram, end;
	struct qmp *q = NULL;
	int r = -1;

	snprintf(path, sizeof(path), "%s/%s.mem", dir, vm->name);
	if (!buf || qmp_open(vm->qmp, 5000, &q) < 0)
		goto out;
	ram = ram_of(q);
	end = ram < SCAN_HIGH ? ram : SCAN_HIGH;
	if (end > SCAN_LOW + SCAN_MAX)
		end = SCAN_LOW + SCAN_MAX;
	for (uint64_t a = SCAN_LOW; a + CHUNK <= end; a += CHUNK) {
		json_t *args = json_pack("{s:I, s:I, s:s}", "val", (json_int_t)a,
					 "size", (json_int_t)CHUNK, "filename", path);
		size_t got = 0;
		FILE *f;

		if (qmp_execute(q, "pmemsave", args, NULL, err, sizeof(err)) < 0) {
			json_decref(args);
			log_info("order: %s: pmemsave: %s", vm->name, err);
			goto out;
		}
		json_decref(args);
		f = fopen(path, "rb");
		if (f) {
			got = fread(buf, 1, CHUNK, f);
			fclose(f);
		}
		for (size_t p = 0; p + PAGE <= got; p += PAGE) {
			if (!memcmp(buf + p, zero, PAGE) || wire_sha256(buf + p, PAGE, hash) < 0 ||
			    hash[0])
				continue;
			if (s->n == s->cap) {
				size_t cap = s->cap ? 2 * s->cap : 1024;
				uint64_t *h = realloc(s->h, cap * sizeof(*h));

				if (!h)
					goto out;
				s->h = h;
				s->cap = cap;
			}
			memcpy(&s->h[s->n++], hash + 1, sizeof(uint64_t));
		}
	}
	qsort(s->h, s->n, sizeof(*s->h), cmp_u64);
	s->ok = true;
	r = 0;
out:
	unlink(path);
	if (q)
		qmp_close(q);
	free(buf);
	return r;
}

/* Sampled pages of b whose content a's sample holds too. */
static size_t common(const struct mem_sample *a, const struct mem_sample *b)
{
	size_t i = 0, j = 0, n = 0;

	while (i < a->n && j < b->n) {
		if (a->h[i] < b->h[j]) {
			i++;
		} else if (a->h[i] > b->h[j]) {
			j++;
		} else {
			uint64_t v = b->h[j];

			for (; j < b->n && b->h[j] == v; j++)
				n++;
		}
	}
	return n;
}

/*
 * After the seed (order[0]), VMs of one affinity one after the other, the
 * seed's first, then each affinity where its first VM stands in the order;
 * VMs without one keep their place among those groups.
 */
void group_order_by_affinity(const struct group_plan *plan, size_t *order)
{
	size_t n = plan->n_vms, k = 1, *out = calloc(n, sizeof(*out));
	bool *taken = calloc(n, sizeof(*taken));
	const char *aff;

	if (!out || !taken || n < 3)
		goto out;
	out[0] = order[0];
	taken[0] = true;
	for (size_t i = 0; i < n; i++) {
		/* Position i of the order: the seed's affinity first, then as they come. */
		aff = i == 0 ? plan->vms[order[0]].affinity : NULL;
		if (i > 0) {
			if (taken[i])
				continue;
			out[k++] = order[i];
			taken[i] = true;
			aff = plan->vms[order[i]].affinity;
		}
		for (size_t j = i + 1; aff && j < n; j++) {
			const char *a = plan->vms[order[j]].affinity;

			if (!taken[j] && a && !strcmp(a, aff)) {
				out[k++] = order[j];
				taken[j] = true;
			}
		}
	}
	memcpy(order, out, n * sizeof(*out));
out:
	free(out);
	free(taken);
}

size_t group_order_by_content(const struct group_plan *plan, size_t *order)
{
	struct mem_sample *s = calloc(plan->n_vms, sizeof(*s));
	const char *tmp = getenv("TMPDIR");
	char dir[4096];
	size_t best = 0, *score = calloc(plan->n_vms, sizeof(*score)), sampled = 0;

	for (size_t i = 0; i < plan->n_vms; i++)
		order[i] = i;
	snprintf(dir, sizeof(dir), "%s/tsb-order.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!s || !score || plan->n_vms < 2 || !mkdtemp(dir))
		goto out;
	for (size_t i = 0; i < plan->n_vms; i++) {
		const struct group_vm *vm = &plan->vms[i];

		/* Local QEMUs only: a libvirt domain's or another host's memory is not ours to read. */
		if (!vm->host && vm->qmp && sample_vm(vm, dir, &s[i]) == 0)
			sampled++;
	}
	rmdir(dir);
	if (sampled < 2 || !s[0].ok)
		goto out;
	for (size_t i = 0; i < plan->n_vms; i++)
		for (size_t j = 0; s[i].ok && j < plan->n_vms; j++)
			if (j != i && s[j].ok)
				score[i] += common(&s[i], &s[j]);
	for (size_t i = 1; i < plan->n_vms; i++)
		if (score[i] > score[best])
			best = i;
	for (size_t i = 0; i < plan->n_vms; i++)
		log_info("order: %s: %zu sampled pages, %zu of the others' found in them",
			 plan->vms[i].name, s[i].n, score[i]);
	if (best == 0 || score[best] < REORDER_MIN_PAGES ||
	    (double)score[best] < REORDER_FACTOR * (double)score[0]) {
		best = 0;
		goto out;
	}
	log_notice("order: %s goes first: its memory holds the most of the others' (%zu sampled "
		   "pages against %zu for %s, the plan's first)", plan->vms[best].name,
		   score[best], score[0], plan->vms[0].name);
	order[0] = best;
	for (size_t i = 0, k = 1; i < plan->n_vms; i++)
		if (i != best)
			order[k++] = i;
out:
	for (size_t i = 0; s && i < plan->n_vms; i++)
		free(s[i].h);
	free(s);
	free(score);
	return best;
}
