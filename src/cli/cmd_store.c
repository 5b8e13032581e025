/* tsubame store stats|gc|verify: look after a persistent content store. */
#include "cli/cli.h"
#include "common/util.h"
#include "store/store.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* verify exits 1 when it repaired something, so failure needs its own code. */
#define STORE_EXIT_VERIFY_FAILED 3

static void store_usage(FILE *f)
{
	fprintf(f,
"Usage: tsubame store stats  [--store DIR] [--json]\n"
"       tsubame store gc     [--store DIR] [--cap SIZE] [--json]\n"
"       tsubame store verify [--store DIR] [--json]\n"
"\n"
"Looks after the persistent content store that 'tsubame send' and\n"
"'tsubame recv' use with --store (4 KiB pages keyed by SHA-256, and per-VM\n"
"image maps, one sub-store per tenant).\n"
"\n"
"  stats    pages, bytes, generation and images of every tenant\n"
"  gc       drops least recently used images (of any tenant) until the\n"
"           pages fit in --cap, then reclaims pages no image names\n"
"  verify   reads and checks every page and image; damaged pages are\n"
"           dropped and damaged images removed\n"
"\n"
"  --store DIR   the store directory (default %s)\n"
"  --cap SIZE    gc: size cap for the pages of all tenants, with K, M or G\n"
"                (default %llu G)\n"
"  --json        print the report as JSON instead of text\n"
"  -h, --help    this text\n"
"\n"
"Tenants locked by a running migration are waited for %d s, then skipped\n"
"and listed in the report.\n"
"\n"
"Exit: stats and gc: 0 success, 1 failure, 2 usage.\n"
"      verify: 0 clean, 1 damage found and repaired, 2 usage, 3 failure or\n"
"      tenants skipped.\n",
		STORE_DEFAULT_DIR, STORE_DEFAULT_CAP >> 30, 5);
}

#define usage_error(...) cli_usage_error("store", __VA_ARGS__)

enum {
	OPT_STORE = 256,
	OPT_CAP,
	OPT_JSON,
};

static const char *mib(uint64_t bytes, char *buf, size_t len)
{
	snprintf(buf, len, "%.1f MiB", (double)bytes / (1 << 20));
	return buf;
}

static const char *when(json_int_t ms, char *buf, size_t len)
{
	time_t t = ms / 1000;
	struct tm tm;

	if (!ms || !gmtime_r(&t, &tm) || !strftime(buf, len, "%Y-%m-%d %H:%M:%S UTC", &tm))
		snprintf(buf, len, "-");
	return buf;
}

static json_int_t geti(json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static const char *gets(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : "";
}

static void print_image(json_t *im, const char *indent)
{
	char t[64];

	printf("%simage %s  vm %s  %s  %lld pages (%lld known)  used %s",
	       indent, gets(im, "id"), gets(im, "vm"), gets(im, "role"),
	       (long long)geti(im, "pages"), (long long)geti(im, "known_pages"),
	       when(geti(im, "used_ms"), t, sizeof(t)));
	if (*gets(im, "peer_site"))
		printf("  peer %s/%s gen %lld", gets(im, "peer_site"),
		       *gets(im, "peer_image") ? gets(im, "peer_image") : "-",
		       (long long)geti(im, "peer_generation"));
	printf("\n");
}

static void print_stats(json_t *o)
{
	char a[32], b[32];
	size_t i, j;
	json_t *t;

	printf("store %s (site %s)\n", gets(o, "dir"),
	       *gets(o, "site_id") ? gets(o, "site_id") : "-");
	printf("  total: %lld pages (%s), pack files %s\n",
	       (long long)geti(o, "pages"), mib(geti(o, "page_bytes"), a, sizeof(a)),
	       mib(geti(o, "pack_bytes"), b, sizeof(b)));
	json_array_foreach(json_object_get(o, "tenants"), i, t) {
		json_t *im, *lk = json_object_get(t, "locked_by");

		if (json_object_get(t, "error")) {
			printf("  tenant %s: %s\n", gets(t, "tenant"), gets(t, "error"));
			continue;
		}
		printf("  tenant %s: generation %lld, %lld pages (%s), pack files %s",
		       gets(t, "tenant"), (long long)geti(t, "generation"),
		       (long long)geti(t, "pages"), mib(geti(t, "page_bytes"), a, sizeof(a)),
		       mib(geti(t, "pack_bytes"), b, sizeof(b)));
		if (geti(t, "damaged_pages"))
			printf(", %lld damaged pages seen", (long long)geti(t, "damaged_pages"));
		if (json_is_integer(lk))
			printf(", in use by pid %lld", (long long)json_integer_value(lk));
		else if (lk)
			printf(", in use");
		printf("\n");
		json_array_foreach(json_object_get(t, "images"), j, im)
			print_image(im, "    ");
	}
}

static void print_skipped(json_t *o)
{
	size_t i;
	json_t *s;

	json_array_foreach(json_object_get(o, "skipped"), i, s)
		printf("  skipped tenant %s: %s\n", gets(s, "tenant"), gets(s, "reason"));
}

static void print_gc(json_t *o)
{
	json_t *before = json_object_get(o, "before"), *after = json_object_get(o, "after");
	char a[32], b[32], c[32];
	size_t i;
	json_t *e;

	printf("gc of %s, cap %s: evicted %zu images, reclaimed %lld pages\n",
	       gets(o, "dir"), mib(geti(o, "cap_bytes"), a, sizeof(a)),
	       json_array_size(json_object_get(o, "evicted")),
	       (long long)geti(o, "reclaimed_pages"));
	printf("  before: %lld pages, pack files %s; after: %lld pages, pack files %s\n",
	       (long long)geti(before, "pages"), mib(geti(before, "pack_bytes"), b, sizeof(b)),
	       (long long)geti(after, "pages"), mib(geti(after, "pack_bytes"), c, sizeof(c)));
	json_array_foreach(json_object_get(o, "evicted"), i, e) {
		printf("  evicted tenant %s ", gets(e, "tenant"));
		print_image(e, "");
	}
	print_skipped(o);
}

static void print_verify(json_t *o)
{
	size_t i, j;
	json_t *t, *x;

	printf("verify of %s\n", gets(o, "dir"));
	json_array_foreach(json_object_get(o, "tenants"), i, t) {
		printf("  tenant %s: %lld pages ok", gets(t, "tenant"),
		       (long long)geti(t, "pages_ok"));
		if (geti(t, "damaged_records"))
			printf(", %lld damaged records", (long long)geti(t, "damaged_records"));
		if (geti(t, "damaged_pages_dropped"))
			printf(", %lld damaged pages dropped",
			       (long long)geti(t, "damaged_pages_dropped"));
		if (geti(t, "duplicate_records"))
			printf(", %lld duplicate records reclaimed",
			       (long long)geti(t, "duplicate_records"));
		if (geti(t, "torn_bytes_cut"))
			printf(", torn tail of %lld bytes cut", (long long)geti(t, "torn_bytes_cut"));
		if (json_is_true(json_object_get(t, "index_rebuilt")))
			printf(", index rebuilt");
		printf("\n");
		json_array_foreach(json_object_get(t, "damaged_images_removed"), j, x)
			printf("    damaged image %s removed\n", json_string_value(x));
		json_array_foreach(json_object_get(t, "images"), j, x)
			if (geti(x, "missing_pages"))
				printf("    image %s: %lld pages no longer in the store\n",
				       gets(x, "id"), (long long)geti(x, "missing_pages"));
	}
	print_skipped(o);
	printf("%s\n", json_is_true(json_object_get(o, "damage_found")) ?
		       "damage found and repaired" : "clean");
}

int cmd_store(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "store", required_argument, NULL, OPT_STORE },
		{ "cap", required_argument, NULL, OPT_CAP },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *dir = STORE_DEFAULT_DIR, *verb;
	uint64_t cap = STORE_DEFAULT_CAP;
	bool json = false, cap_set = false;
	char err[512] = "";
	json_t *rep = NULL;
	int c, r;

	optind = 1;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (c) {
		case OPT_STORE:
			dir = optarg;
			break;
		case OPT_CAP:
			if (tsb_parse_size(optarg, &cap) || cap == 0)
				return usage_error("bad --cap '%s'", optarg);
			cap_set = true;
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'h':
			store_usage(stdout);
			return TSB_EXIT_OK;
		default:
			return usage_error("unknown option");
		}
	}
	if (optind != argc - 1)
		return usage_error(optind == argc ? "missing stats, gc or verify" :
						    "too many arguments");
	verb = argv[optind];
	if (!*dir)
		return usage_error("empty --store");
	if (cap_set && strcmp(verb, "gc"))
		return usage_error("--cap is for gc");

	if (!strcmp(verb, "stats")) {
		r = store_stats(dir, &rep, err, sizeof(err));
	} else if (!strcmp(verb, "gc")) {
		r = store_gc(dir, cap, &rep, err, sizeof(err));
	} else if (!strcmp(verb, "verify")) {
		r = store_verify(dir, &rep, err, sizeof(err));
	} else {
		return usage_error("unknown verb '%s'", verb);
	}
	if (r < 0) {
		fprintf(stderr, "tsubame store %s: %s\n", verb,
			*err ? err : strerror(-r));
		return !strcmp(verb, "verify") ? STORE_EXIT_VERIFY_FAILED :
						 TSB_EXIT_FAILED;
	}
	if (json) {
		json_dumpf(rep, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
		printf("\n");
	} else if (!strcmp(verb, "stats")) {
		print_stats(rep);
	} else if (!strcmp(verb, "gc")) {
		print_gc(rep);
	} else {
		print_verify(rep);
	}
	if (json_array_size(json_object_get(rep, "skipped"))) {
		fprintf(stderr, "tsubame store %s: %zu tenant(s) in use were skipped\n",
			verb, json_array_size(json_object_get(rep, "skipped")));
		json_decref(rep);
		return !strcmp(verb, "verify") ? STORE_EXIT_VERIFY_FAILED :
						 TSB_EXIT_OK;
	}
	json_decref(rep);
	if (!strcmp(verb, "verify"))
		return r == 1 ? 1 : TSB_EXIT_OK;
	return TSB_EXIT_OK;
}
