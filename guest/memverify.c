/*
 * memverify: the test guest's self-checking workload (see README.md).
 *
 * Memory mode (default): fills a buffer with deterministic pages
 * (pattern.h), then re-verifies it forever, optionally rewriting pages at a
 * given rate inside a working set. Dirtying and verifying interleave in one
 * thread, so the expected generation of every page is always known.
 *
 * Page-cache mode (--disk DEV): reads a whole block device (or file) with
 * buffered reads, so it sits in the page cache, and keeps re-reading and
 * verifying it against the generator.
 *
 * Disk writer (--diskwrite DEV): writes numbered records with
 * incompressible content to a ring of blocks of DEV, a batch at a time,
 * each batch written with O_DIRECT and fdatasync'ed before the next, at a
 * given rate; tests/integration/disk-check.py verifies the disk offline.
 *
 * Host helpers: --make-disk writes an image with the same kind of content,
 * --check-disk verifies one once.
 *
 * Console protocol (stdout, one write per line):
 *   memverify ready pages=<N> ...        once, after the fill
 *   pagecache ready bytes=<N> ...        once, after the first full read
 *   beat <n> ok | beat <n> CORRUPT <off>  every second
 *   corrupt offset=<off> page=<i> ...    detail of the first bad byte, at
 *                                        most once per beat
 *   sweep <n> ok|CORRUPT ...             after each full verify pass
 *   diskwrite record <i> rate=<MiB/s> max_ms=<ms>
 *                                        every 2 s with --diskwrite: newest
 *                                        record, rate and longest write +
 *                                        fdatasync since the last line
 *   probe <n> ok|CORRUPT count=<c> p50_us=... p99_us=... max_us=...
 *                                        every second with --probe: the
 *                                        time of first touches of cold
 *                                        pages (what a postcopy fault costs)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#include "pattern.h"

#define NS_PER_SEC 1000000000ull
#define MIB ((uint64_t)1 << 20)
/* Longest sleep when a sweep is ahead of its pace. */
#define PACE_MAX_SLEEP_NS 10000000ull
/* Pages verified between two clock checks (1 MiB). */
#define VERIFY_CHUNK_PAGES 256u
/* Read size in page-cache mode and for disk images. */
#define IO_CHUNK (1024u * 1024u)
/* Upper bounds for sizes taken from the command line. */
#define MAX_MEM_MIB ((uint64_t)1 << 20)
#define MAX_DISK_BYTES ((uint64_t)1 << 44)
/* Disk writer: records per write at most (256 KiB: one virtio request),
 * and the highest record number (10 digits). */
#define DW_MAX_BATCH 64u
#define DW_MAX_RECORD 9999999999ull
#define DW_REPORT_NS (2 * NS_PER_SEC)

struct opts {
	uint64_t mem_mib;
	uint64_t seed;
	uint64_t vmid;
	unsigned shared_pct;	/* of the content shared with VMs of the same seed */
	unsigned random_pct;
	unsigned dup_pct;
	unsigned zero_pct;
	double dirty_mibs;
	uint64_t wss_mib;	/* 0: the whole buffer */
	uint64_t sweeps;	/* stop after this many sweeps; 0: never */
	double sweep_secs;	/* pace: a sweep takes at least this long */
	const char *disk;	/* page-cache mode */
	const char *make_disk;
	const char *check_disk;
	uint64_t size;		/* --size for --make-disk */
	uint64_t probe_mib;	/* cold area touched only by the probe; 0: none */
	double probe_pps;	/* pages of it touched per second */
	uint64_t probe_ahead;	/* pages after its cursor it keeps freshly written */
	const char *diskwrite;	/* disk writer mode */
	uint64_t dw_base, dw_blocks, dw_batch, dw_records;
	double dw_rate;		/* MiB/s; 0: as fast as the disk takes them */
};

struct beat {
	uint64_t n;
	uint64_t next_ns;
	bool bad;		/* corruption seen since the last beat */
	uint64_t bad_off;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static double secs_since(uint64_t start)
{
	return (double)(now_ns() - start) / (double)NS_PER_SEC;
}

/* Prints one line with a single write(2), so lines from several programs
 * sharing the console never interleave mid-line. */
__attribute__((format(printf, 1, 2)))
static void say(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	while (n > 0) {
		ssize_t w = write(STDOUT_FILENO, buf, (size_t)n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		n -= (int)w;
	}
}

/*
 * Keeps a sweep from running faster than @sweep_ns. When @done of @total
 * units are verified ahead of schedule, sleeps a little (at most 10 ms, so
 * beats and dirtying stay smooth) and returns true: the caller should not
 * verify more yet. Under TCG an unpaced verify loop would keep a host core
 * busy all the time.
 */
static bool pace_wait(uint64_t sweep_start, uint64_t sweep_ns, uint64_t done,
		      uint64_t total)
{
	uint64_t target, now, d;
	struct timespec ts;

	if (!sweep_ns || !total)
		return false;
	target = sweep_start + (uint64_t)((unsigned __int128)sweep_ns * done /
					  total);
	now = now_ns();
	if (target <= now)
		return false;
	d = target - now;
	if (d > PACE_MAX_SLEEP_NS)
		d = PACE_MAX_SLEEP_NS;
	ts.tv_sec = 0;
	ts.tv_nsec = (long)d;
	nanosleep(&ts, NULL);
	return true;
}

static void beat_init(struct beat *b)
{
	b->n = 1;
	b->next_ns = now_ns() + NS_PER_SEC;
	b->bad = false;
	b->bad_off = 0;
}

static void beat_poll(struct beat *b)
{
	uint64_t now = now_ns();

	if (now < b->next_ns)
		return;
	if (b->bad)
		say("beat %" PRIu64 " CORRUPT %" PRIu64, b->n, b->bad_off);
	else
		say("beat %" PRIu64 " ok", b->n);
	b->n++;
	b->bad = false;
	b->next_ns += NS_PER_SEC;
	/* After a pause (stopped VM, slow sweep) do not print a burst. */
	if (b->next_ns <= now)
		b->next_ns = now + NS_PER_SEC;
}

/* Records a bad page; prints a detail line for the first one per beat. */
static void beat_corrupt(struct beat *b, uint64_t base_off, uint64_t page,
			 uint32_t gen, long off, uint64_t expected,
			 uint64_t got)
{
	if (b->bad)
		return;
	b->bad = true;
	b->bad_off = base_off + (uint64_t)off;
	say("corrupt offset=%" PRIu64 " page=%" PRIu64 " gen=%" PRIu32
	    " expected=%016" PRIx64 " got=%016" PRIx64,
	    b->bad_off, page, gen, expected, got);
}

static int parse_u64(const char *s, uint64_t max, uint64_t *ret)
{
	unsigned long long v;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno || *end)
		return -EINVAL;
	if (v > max)
		return -ERANGE;
	*ret = v;
	return 0;
}

static int parse_pct(const char *s, unsigned *ret)
{
	uint64_t v;
	int r = parse_u64(s, 100, &v);

	if (r == 0)
		*ret = (unsigned)v;
	return r;
}

/* "256M", "1G", "4096" (bytes), "64K". */
static int parse_size(const char *s, uint64_t *ret)
{
	unsigned long long v;
	uint64_t mult = 1;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': mult = 1024; end++; break;
	case 'm': case 'M': mult = MIB; end++; break;
	case 'g': case 'G': mult = 1024 * MIB; end++; break;
	default: break;
	}
	if (*end == 'i' && end[1] == 'B')
		end += 2;
	else if (*end == 'B')
		end++;
	if (*end)
		return -EINVAL;
	if (__builtin_mul_overflow(v, mult, ret))
		return -ERANGE;
	return 0;
}

static int parse_double(const char *s, double *ret)
{
	char *end;
	double v;

	if (!s || ((*s < '0' || *s > '9') && *s != '.'))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || v < 0 || v > 1e6)
		return -EINVAL;
	*ret = v;
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
"usage: memverify [options]                  fill memory, verify forever\n"
"       memverify --disk DEV [options]       keep DEV in the page cache, verify\n"
"       memverify --make-disk FILE --size SIZE [options]\n"
"       memverify --check-disk FILE [options]\n"
"       memverify --diskwrite DEV [--dw-* options]  write records to DEV\n"
"\n"
"Content options (must match between --make-disk and --disk/--check-disk):\n"
"  --seed N            content seed (default 1)\n"
"  --random PCT        random share of each page, rest repetitive (default 50)\n"
"  --dup PCT           share of pages duplicating another page (default 10)\n"
"  --zero PCT          share of all-zero pages (default 0)\n"
"Memory mode:\n"
"  --mem MIB           memory to fill (default 256)\n"
"  --vmid N            VM id, mixed into the seed in unique mode (default 0)\n"
"  --content MODE      unique (seed mixed with vmid), shared, or shared:PCT\n"
"                      (that share of the pages shared, the rest unique;\n"
"                      default unique)\n"
"  --dirty MIBS        rewrite this many MiB/s of pages (default 0)\n"
"  --wss MIB           working set that --dirty rewrites (default: all)\n"
"  --probe MIB         a further area that only the probe touches: PPS of its\n"
"                      pages a second, in turn, each read timed and verified;\n"
"                      one 'probe' line a second gives the latency percentiles\n"
"                      (a page untouched for MIB/PPS seconds: after a postcopy\n"
"                      switchover, a fault) (default 0: no probe)\n"
"  --probe-rate PPS    pages the probe touches per second (default 200)\n"
"  --probe-ahead N     the probe writes again (same content) the page N after\n"
"                      each it reads, so that the pages it reads next are\n"
"                      always freshly dirty: after a postcopy switchover\n"
"                      they are at the source, and its reads fault there\n"
"                      (reads of 1 ms or more count as faults: faults=...)\n"
"Any verifying mode:\n"
"  --sweep-secs S      pace: a full verify pass takes at least S seconds\n"
"                      (default 2; 0: as fast as possible)\n"
"  --sweeps N          exit after N full verify passes, status 1 if corrupt\n"
"                      (default 0: run forever)\n"
"Disk writer (--diskwrite DEV): record i is a 4 KiB block, the line\n"
"'tsb-disk-record <i, 10 digits>' then incompressible bytes derived from i,\n"
"written to block BASE + i %% BLOCKS; a batch of records is one O_DIRECT\n"
"write, fdatasync'ed before the next batch (tests/integration/disk-check.py):\n"
"  --dw-base N         first block of the ring (default 8192)\n"
"  --dw-blocks N       blocks in the ring (default 1024)\n"
"  --dw-batch N        records per write and fdatasync (default 16)\n"
"  --dw-rate MIBS      at most this many MiB/s (default 0: no limit)\n"
"  --dw-records N      stop after N records (default 0: never)\n"
"  -h, --help          this text\n"
"\n"
"Lines printed: 'memverify ready pages=N ...' or 'pagecache ready bytes=N ...',\n"
"then 'beat <n> ok' or 'beat <n> CORRUPT <offset>' every second and\n"
"'sweep <n> ok|CORRUPT ...' after each full pass.\n");
}

enum {
	OPT_MEM = 256, OPT_SEED, OPT_VMID, OPT_CONTENT, OPT_RANDOM, OPT_DUP,
	OPT_ZERO, OPT_DIRTY, OPT_WSS, OPT_SWEEPS, OPT_DISK, OPT_MAKE_DISK,
	OPT_CHECK_DISK, OPT_SIZE, OPT_SWEEP_SECS, OPT_PROBE, OPT_PROBE_RATE, OPT_PROBE_AHEAD,
	OPT_DISKWRITE, OPT_DW_BASE, OPT_DW_BLOCKS, OPT_DW_BATCH, OPT_DW_RATE,
	OPT_DW_RECORDS,
};

static const struct option long_opts[] = {
	{ "mem", required_argument, NULL, OPT_MEM },
	{ "seed", required_argument, NULL, OPT_SEED },
	{ "vmid", required_argument, NULL, OPT_VMID },
	{ "content", required_argument, NULL, OPT_CONTENT },
	{ "random", required_argument, NULL, OPT_RANDOM },
	{ "dup", required_argument, NULL, OPT_DUP },
	{ "zero", required_argument, NULL, OPT_ZERO },
	{ "dirty", required_argument, NULL, OPT_DIRTY },
	{ "wss", required_argument, NULL, OPT_WSS },
	{ "sweeps", required_argument, NULL, OPT_SWEEPS },
	{ "sweep-secs", required_argument, NULL, OPT_SWEEP_SECS },
	{ "disk", required_argument, NULL, OPT_DISK },
	{ "make-disk", required_argument, NULL, OPT_MAKE_DISK },
	{ "check-disk", required_argument, NULL, OPT_CHECK_DISK },
	{ "size", required_argument, NULL, OPT_SIZE },
	{ "probe", required_argument, NULL, OPT_PROBE },
	{ "probe-rate", required_argument, NULL, OPT_PROBE_RATE },
	{ "probe-ahead", required_argument, NULL, OPT_PROBE_AHEAD },
	{ "diskwrite", required_argument, NULL, OPT_DISKWRITE },
	{ "dw-base", required_argument, NULL, OPT_DW_BASE },
	{ "dw-blocks", required_argument, NULL, OPT_DW_BLOCKS },
	{ "dw-batch", required_argument, NULL, OPT_DW_BATCH },
	{ "dw-rate", required_argument, NULL, OPT_DW_RATE },
	{ "dw-records", required_argument, NULL, OPT_DW_RECORDS },
	{ "help", no_argument, NULL, 'h' },
	{ NULL, 0, NULL, 0 },
};

static const char *opt_name(int val)
{
	const struct option *o;

	for (o = long_opts; o->name; o++)
		if (o->val == val)
			return o->name;
	return "?";
}

static int parse_opts(int argc, char **argv, struct opts *o)
{
	int c;

	*o = (struct opts){
		.mem_mib = 256, .seed = 1, .random_pct = 50, .dup_pct = 10,
		.sweep_secs = 2, .probe_pps = 200,
		.dw_base = 8192, .dw_blocks = 1024, .dw_batch = 16,
	};
	while ((c = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		const char *a = optarg;
		int r = 0;

		switch (c) {
		case OPT_MEM:
			r = parse_u64(a, MAX_MEM_MIB, &o->mem_mib);
			if (r == 0 && o->mem_mib == 0)
				r = -ERANGE;
			break;
		case OPT_SEED: r = parse_u64(a, UINT64_MAX, &o->seed); break;
		case OPT_VMID: r = parse_u64(a, UINT64_MAX, &o->vmid); break;
		case OPT_CONTENT:
			if (strcmp(a, "unique") == 0)
				o->shared_pct = 0;
			else if (strcmp(a, "shared") == 0)
				o->shared_pct = 100;
			else if (strncmp(a, "shared:", 7) == 0)
				r = parse_pct(a + 7, &o->shared_pct);
			else
				r = -EINVAL;
			break;
		case OPT_RANDOM: r = parse_pct(a, &o->random_pct); break;
		case OPT_DUP: r = parse_pct(a, &o->dup_pct); break;
		case OPT_ZERO: r = parse_pct(a, &o->zero_pct); break;
		case OPT_DIRTY: r = parse_double(a, &o->dirty_mibs); break;
		case OPT_WSS: r = parse_u64(a, MAX_MEM_MIB, &o->wss_mib); break;
		case OPT_SWEEPS: r = parse_u64(a, UINT64_MAX, &o->sweeps); break;
		case OPT_SWEEP_SECS:
			r = parse_double(a, &o->sweep_secs);
			if (r == 0 && o->sweep_secs > 3600)
				r = -ERANGE;
			break;
		case OPT_DISK: o->disk = a; break;
		case OPT_MAKE_DISK: o->make_disk = a; break;
		case OPT_CHECK_DISK: o->check_disk = a; break;
		case OPT_SIZE:
			r = parse_size(a, &o->size);
			if (r == 0 && o->size > MAX_DISK_BYTES)
				r = -ERANGE;
			break;
		case OPT_PROBE: r = parse_u64(a, MAX_MEM_MIB, &o->probe_mib); break;
		case OPT_PROBE_AHEAD:
			r = parse_u64(a, MAX_MEM_MIB * (MIB / PAT_PAGE_SIZE), &o->probe_ahead);
			break;
		case OPT_PROBE_RATE:
			r = parse_double(a, &o->probe_pps);
			if (r == 0 && (o->probe_pps < 1 || o->probe_pps > 1e6))
				r = -ERANGE;
			break;
		case OPT_DISKWRITE: o->diskwrite = a; break;
		case OPT_DW_BASE:
			r = parse_u64(a, MAX_DISK_BYTES / PAT_PAGE_SIZE, &o->dw_base);
			break;
		case OPT_DW_BLOCKS:
			r = parse_u64(a, MAX_DISK_BYTES / PAT_PAGE_SIZE, &o->dw_blocks);
			if (r == 0 && o->dw_blocks == 0)
				r = -ERANGE;
			break;
		case OPT_DW_BATCH:
			r = parse_u64(a, DW_MAX_BATCH, &o->dw_batch);
			if (r == 0 && o->dw_batch == 0)
				r = -ERANGE;
			break;
		case OPT_DW_RATE: r = parse_double(a, &o->dw_rate); break;
		case OPT_DW_RECORDS: r = parse_u64(a, DW_MAX_RECORD, &o->dw_records); break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			goto bad;
		}
		if (r < 0) {
			fprintf(stderr, "memverify: invalid value '%s' for --%s: %s\n",
				a, opt_name(c), strerror(-r));
			goto bad;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "memverify: unexpected argument '%s'\n",
			argv[optind]);
		goto bad;
	}
	if (!!o->disk + !!o->make_disk + !!o->check_disk + !!o->diskwrite > 1) {
		fprintf(stderr, "memverify: --disk, --make-disk, --check-disk and --diskwrite "
			"are exclusive\n");
		goto bad;
	}
	if (o->make_disk && (o->size == 0 || o->size % PAT_PAGE_SIZE)) {
		fprintf(stderr, "memverify: --make-disk needs --size, a non-zero multiple of %u\n",
			PAT_PAGE_SIZE);
		goto bad;
	}
	if (o->dup_pct + o->zero_pct > 100) {
		fprintf(stderr, "memverify: --dup plus --zero exceeds 100\n");
		goto bad;
	}
	if (o->wss_mib > o->mem_mib) {
		fprintf(stderr, "memverify: --wss exceeds --mem\n");
		goto bad;
	}
	return 0;
bad:
	fprintf(stderr, "try 'memverify --help'\n");
	return -EINVAL;
}

static struct pat_params content_params(const struct opts *o, uint64_t seed)
{
	return (struct pat_params){
		.seed = seed,
		.random_pct = o->random_pct,
		.dup_pct = o->dup_pct,
		.zero_pct = o->zero_pct,
	};
}

/* xorshift64 for picking pages to dirty. */
static uint64_t pick_next(uint64_t *s)
{
	uint64_t x = *s;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*s = x;
	return x;
}

/*
 * The probe: an area of its own, filled once and then read one page after
 * another at a steady rate, so that each page stays untouched for a long
 * time. The first read of a page is timed (after a postcopy switchover it
 * is the fault the guest feels); the whole page is then verified.
 */
#define PROBE_MAX_SAMPLES 65536

/* A first read slower than this is a fault (a present page reads in microseconds). */
#define PROBE_FAULT_NS 1000000u

struct probe {
	unsigned char *area;
	uint64_t pages, cursor, done, base_ns, bad, ahead;
	double pps;
	struct pat_params p;
	uint32_t samples[PROBE_MAX_SAMPLES];	/* ns, this second */
	unsigned n;
	uint32_t faults[PROBE_MAX_SAMPLES];	/* the reads among them that faulted */
	unsigned nf;
	uint64_t line;
};

static int probe_init(struct probe *pr, const struct opts *o, const struct pat_params *p)
{
	uint64_t i;

	memset(pr, 0, sizeof(*pr));
	if (!o->probe_mib)
		return 0;
	pr->pages = o->probe_mib * MIB / PAT_PAGE_SIZE;
	pr->pps = o->probe_pps;
	pr->ahead = o->probe_ahead < pr->pages ? o->probe_ahead : pr->pages - 1;
	pr->p = *p;
	pr->p.seed ^= 0x9e3779b97f4a7c15ull; /* content of its own */
	pr->area = mmap(NULL, pr->pages * PAT_PAGE_SIZE, PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (pr->area == MAP_FAILED) {
		fprintf(stderr, "memverify: cannot map the probe's %" PRIu64 " MiB: %s\n",
			o->probe_mib, strerror(errno));
		return -1;
	}
	for (i = 0; i < pr->pages; i++)
		pat_fill_page(&pr->p, i, 0, pr->area + i * PAT_PAGE_SIZE);
	pr->base_ns = now_ns();
	return 0;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

/* Touches the pages owed by now. */
static void probe_step(struct probe *pr)
{
	uint64_t now, owed;
	double want;

	if (!pr->pages)
		return;
	now = now_ns();
	want = (double)(now - pr->base_ns) * pr->pps / (double)NS_PER_SEC;
	owed = want > (double)pr->done ? (uint64_t)want - pr->done : 0;
	/* After a pause, go on at the rate rather than in a burst. */
	if (owed > (uint64_t)pr->pps + 1) {
		pr->base_ns = now;
		pr->done = 0;
		owed = 1;
	}
	while (owed--) {
		unsigned char *pg = pr->area + pr->cursor * PAT_PAGE_SIZE;
		uint64_t t0 = now_ns(), exp = 0, got = 0;

		uint64_t dt;

		(void)*(volatile unsigned char *)pg;
		dt = now_ns() - t0;
		if (dt > UINT32_MAX)
			dt = UINT32_MAX;
		if (pr->n < PROBE_MAX_SAMPLES)
			pr->samples[pr->n++] = (uint32_t)dt;
		if (dt >= PROBE_FAULT_NS && pr->nf < PROBE_MAX_SAMPLES)
			pr->faults[pr->nf++] = (uint32_t)dt;
		if (pr->ahead) {
			/*
			 * Writes the page ahead again (the same byte: its content
			 * stays, but it is dirty now): the pages the probe reads
			 * next were written within the last ahead/pps seconds, so
			 * a migration has not sent them yet when it switches over
			 * to postcopy, and reading them there faults.
			 */
			volatile unsigned char *w = pr->area +
				((pr->cursor + pr->ahead) % pr->pages) * PAT_PAGE_SIZE;

			*w = *w;
		}
		if (pat_check_page(&pr->p, pr->cursor, 0, pg, &exp, &got) >= 0)
			pr->bad++;
		pr->cursor = (pr->cursor + 1) % pr->pages;
		pr->done++;
	}
}

/* One line a second: the latency of this second's first touches. */
static void probe_report(struct probe *pr)
{
	if (!pr->pages)
		return;
	pr->line++;
	if (!pr->n) {
		say("probe %" PRIu64 " %s count=0 bad=%" PRIu64, pr->line,
		    pr->bad ? "CORRUPT" : "ok", pr->bad);
		return;
	}
	qsort(pr->samples, pr->n, sizeof(pr->samples[0]), cmp_u32);
	qsort(pr->faults, pr->nf, sizeof(pr->faults[0]), cmp_u32);
	say("probe %" PRIu64 " %s count=%u p50_us=%.1f p99_us=%.1f max_us=%.1f bad=%" PRIu64
	    " faults=%u fault_p50_us=%.1f fault_p99_us=%.1f",
	    pr->line, pr->bad ? "CORRUPT" : "ok", pr->n, pr->samples[pr->n / 2] / 1e3,
	    pr->samples[(uint64_t)pr->n * 99 / 100] / 1e3, pr->samples[pr->n - 1] / 1e3,
	    pr->bad, pr->nf, pr->nf ? pr->faults[pr->nf / 2] / 1e3 : 0.0,
	    pr->nf ? pr->faults[(uint64_t)pr->nf * 99 / 100] / 1e3 : 0.0);
	pr->n = 0;
	pr->nf = 0;
}

/* Guest memory: its own content, the group's, or a share of each. */
static struct pat_params memory_params(const struct opts *o)
{
	struct pat_params p = content_params(o,
		pat_seed_mem(o->seed, o->vmid, o->shared_pct == 100));

	if (o->shared_pct && o->shared_pct < 100) {
		p.seed_shared = pat_seed_mem(o->seed, o->vmid, true);
		p.shared_pct = o->shared_pct;
	}
	return p;
}

static int run_memory(const struct opts *o)
{
	struct pat_params p = memory_params(o);
	uint64_t npages = o->mem_mib * MIB / PAT_PAGE_SIZE;
	uint64_t wss_pages = (o->wss_mib ? o->wss_mib : o->mem_mib) * MIB /
			     PAT_PAGE_SIZE;
	double dirty_pps = o->dirty_mibs * (double)MIB / PAT_PAGE_SIZE;
	uint64_t sweep_ns = (uint64_t)(o->sweep_secs * NS_PER_SEC);
	uint64_t pick = pat_mix64(p.seed ^ 0xd1b54a32d192ed03ull) | 1;
	uint64_t sweep = 1, sweep_bad = 0, sweep_first = 0, cursor = 0;
	uint64_t dirty_base_ns, dirty_done = 0, dirtied_total = 0;
	uint64_t start, sweep_start;
	uint32_t *gens;
	unsigned char *buf;
	struct beat b;
	uint64_t i, beat_n;
	bool any_bad = false;
	static struct probe pr;

	buf = mmap(NULL, npages * PAT_PAGE_SIZE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		fprintf(stderr, "memverify: cannot map %" PRIu64 " MiB: %s\n",
			o->mem_mib, strerror(errno));
		return 1;
	}
	gens = calloc(npages, sizeof(*gens));
	if (!gens) {
		fprintf(stderr, "memverify: out of memory\n");
		munmap(buf, npages * PAT_PAGE_SIZE);
		return 1;
	}

	start = now_ns();
	for (i = 0; i < npages; i++)
		pat_fill_page(&p, i, 0, buf + i * PAT_PAGE_SIZE);
	if (probe_init(&pr, o, &p) < 0)
		return 1;
	say("memverify ready pages=%" PRIu64 " mem=%" PRIu64 " seed=%" PRIu64
	    " vmid=%" PRIu64 " content=%s:%u random=%u dup=%u zero=%u dirty=%g"
	    " wss=%" PRIu64 " fill_secs=%.2f",
	    npages, o->mem_mib, o->seed, o->vmid,
	    o->shared_pct ? "shared" : "unique", o->shared_pct, o->random_pct, o->dup_pct,
	    o->zero_pct, o->dirty_mibs, wss_pages * PAT_PAGE_SIZE / MIB,
	    secs_since(start));

	beat_init(&b);
	sweep_start = dirty_base_ns = now_ns();
	for (;;) {
		if (pace_wait(sweep_start, sweep_ns, cursor, npages)) {
			/* ahead of pace: only dirty and beat */
		} else if (cursor == npages) {
			if (sweep_bad)
				say("sweep %" PRIu64 " CORRUPT pages=%" PRIu64
				    " first=%" PRIu64 " secs=%.2f dirtied=%"
				    PRIu64, sweep, sweep_bad, sweep_first,
				    secs_since(sweep_start), dirtied_total);
			else
				say("sweep %" PRIu64 " ok pages=%" PRIu64
				    " secs=%.2f dirtied=%" PRIu64, sweep,
				    npages, secs_since(sweep_start),
				    dirtied_total);
			any_bad |= sweep_bad != 0;
			if (o->sweeps && sweep >= o->sweeps)
				break;
			sweep++;
			sweep_bad = 0;
			cursor = 0;
			sweep_start = now_ns();
		} else {
			uint64_t end = cursor + VERIFY_CHUNK_PAGES;

			if (end > npages)
				end = npages;
			for (; cursor < end; cursor++) {
				uint64_t exp = 0, got = 0;
				long off = pat_check_page(&p, cursor,
						gens[cursor],
						buf + cursor * PAT_PAGE_SIZE,
						&exp, &got);

				if (off < 0)
					continue;
				if (!sweep_bad)
					sweep_first = cursor * PAT_PAGE_SIZE +
						      (uint64_t)off;
				sweep_bad++;
				beat_corrupt(&b, cursor * PAT_PAGE_SIZE,
					     cursor, gens[cursor], off, exp,
					     got);
			}
		}

		if (dirty_pps > 0) {
			uint64_t now = now_ns();
			double want = (double)(now - dirty_base_ns) *
				      dirty_pps / (double)NS_PER_SEC;
			uint64_t owed = want > (double)dirty_done ?
					(uint64_t)want - dirty_done : 0;

			/* Never catch up more than a second's worth. */
			if (owed > (uint64_t)dirty_pps + 1) {
				owed = (uint64_t)dirty_pps + 1;
				dirty_base_ns = now;
				dirty_done = 0;
			}
			while (owed--) {
				uint64_t pg = pick_next(&pick) % wss_pages;

				gens[pg]++;
				pat_fill_page(&p, pg, gens[pg],
					      buf + pg * PAT_PAGE_SIZE);
				dirty_done++;
				dirtied_total++;
			}
		}
		probe_step(&pr);
		beat_n = b.n;
		beat_poll(&b);
		if (b.n != beat_n)
			probe_report(&pr);
	}
	free(gens);
	munmap(buf, npages * PAT_PAGE_SIZE);
	return any_bad || pr.bad ? 1 : 0;
}

static ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t r = pread(fd, (char *)buf + done, len - done,
				  (off_t)(off + done));

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		done += (size_t)r;
	}
	return (ssize_t)done;
}

static int disk_size(int fd, const char *path, uint64_t *ret)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (S_ISBLK(st.st_mode)) {
		uint64_t sz;

		if (ioctl(fd, BLKGETSIZE64, &sz) < 0)
			return -errno;
		*ret = sz;
		return 0;
	}
	if (!S_ISREG(st.st_mode)) {
		fprintf(stderr, "memverify: %s is neither a block device nor a file\n",
			path);
		return -EINVAL;
	}
	*ret = (uint64_t)st.st_size;
	return 0;
}

/*
 * Verifies the pages of the disk that @buf (read at @off, @len bytes)
 * covers. Returns the number of bad pages.
 */
static uint64_t check_chunk(const struct pat_params *p, const unsigned char *buf,
			    uint64_t off, size_t len, struct beat *b,
			    uint64_t *first_bad)
{
	uint64_t bad = 0;
	size_t i;

	for (i = 0; i + PAT_PAGE_SIZE <= len; i += PAT_PAGE_SIZE) {
		uint64_t page = (off + i) / PAT_PAGE_SIZE, exp = 0, got = 0;
		long d = pat_check_page(p, page, 0, buf + i, &exp, &got);

		if (d < 0)
			continue;
		if (!bad && first_bad && *first_bad == UINT64_MAX)
			*first_bad = off + i + (uint64_t)d;
		bad++;
		if (b)
			beat_corrupt(b, off + i, page, 0, d, exp, got);
	}
	return bad;
}

/* A /proc/meminfo field in KiB, or -1 when unavailable. */
static long long meminfo_kib(const char *field)
{
	char line[128];
	size_t flen = strlen(field);
	long long v = -1;
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, field, flen) == 0 && line[flen] == ':') {
			v = strtoll(line + flen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

/* Page-cache mode (@forever) and --check-disk (one pass). */
static int run_disk(const struct opts *o, const char *path, bool forever)
{
	struct pat_params p = content_params(o, pat_seed_disk(o->seed));
	uint64_t sweep_ns = (uint64_t)(o->sweep_secs * NS_PER_SEC);
	uint64_t size = 0, npages, bytes, off, sweep = 1, sweep_bad = 0;
	uint64_t first_bad = UINT64_MAX, start;
	unsigned char *buf = NULL;
	bool any_bad = false;
	struct beat b;
	int fd, r, ret = 1;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "memverify: cannot open %s: %s\n", path,
			strerror(errno));
		return 1;
	}
	r = disk_size(fd, path, &size);
	if (r < 0) {
		fprintf(stderr, "memverify: cannot get the size of %s: %s\n",
			path, strerror(-r));
		goto out;
	}
	npages = size / PAT_PAGE_SIZE;
	bytes = npages * PAT_PAGE_SIZE;
	if (npages == 0) {
		fprintf(stderr, "memverify: %s is smaller than a page\n", path);
		goto out;
	}
	if (size != bytes)
		fprintf(stderr, "memverify: ignoring the last %" PRIu64
			" bytes of %s (not a whole page)\n", size - bytes,
			path);
	if (posix_memalign((void **)&buf, PAT_PAGE_SIZE, IO_CHUNK)) {
		fprintf(stderr, "memverify: out of memory\n");
		goto out;
	}

	beat_init(&b);
	start = now_ns();
	off = 0;
	for (;;) {
		size_t len;
		ssize_t n;

		/* Beats and pacing start once the device is in the page
		 * cache. */
		if (forever && sweep > 1) {
			beat_poll(&b);
			if (pace_wait(start, sweep_ns, off, bytes))
				continue;
		}
		if (off == bytes) {
			if (!forever)
				say("check-disk %s %s pages=%" PRIu64
				    " bad=%" PRIu64 " first=%" PRId64
				    " secs=%.2f", path,
				    sweep_bad ? "CORRUPT" : "ok", npages,
				    sweep_bad, sweep_bad ? (int64_t)first_bad : -1,
				    secs_since(start));
			else if (sweep == 1)
				say("pagecache ready bytes=%" PRIu64
				    " pages=%" PRIu64 " seed=%" PRIu64
				    " random=%u dup=%u zero=%u secs=%.2f"
				    " buffers_kib=%lld cached_kib=%lld",
				    bytes, npages, o->seed, o->random_pct,
				    o->dup_pct, o->zero_pct, secs_since(start),
				    meminfo_kib("Buffers"),
				    meminfo_kib("Cached"));
			if (forever && sweep_bad)
				say("sweep %" PRIu64 " CORRUPT pages=%" PRIu64
				    " first=%" PRIu64 " secs=%.2f", sweep,
				    sweep_bad, first_bad, secs_since(start));
			else if (forever)
				say("sweep %" PRIu64 " ok pages=%" PRIu64
				    " secs=%.2f", sweep, npages,
				    secs_since(start));
			any_bad |= sweep_bad != 0;
			if (!forever || (o->sweeps && sweep >= o->sweeps))
				break;
			sweep++;
			sweep_bad = 0;
			first_bad = UINT64_MAX;
			off = 0;
			start = now_ns();
			continue;
		}
		len = bytes - off < IO_CHUNK ? (size_t)(bytes - off) : IO_CHUNK;
		n = pread_full(fd, buf, len, off);
		if (n < 0 || (size_t)n != len) {
			fprintf(stderr, "memverify: read of %s at %" PRIu64
				" failed: %s\n", path, off,
				n < 0 ? strerror((int)-n) : "short read");
			goto out;
		}
		sweep_bad += check_chunk(&p, buf, off, len, &b, &first_bad);
		off += len;
	}
	ret = any_bad ? 1 : 0;
out:
	free(buf);
	close(fd);
	return ret;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t w = write(fd, (const char *)buf + done, len - done);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		done += (size_t)w;
	}
	return 0;
}

static int make_disk(const struct opts *o)
{
	struct pat_params p = content_params(o, pat_seed_disk(o->seed));
	uint64_t npages = o->size / PAT_PAGE_SIZE, pg = 0;
	unsigned char *buf = NULL;
	int fd, r;

	if (posix_memalign((void **)&buf, PAT_PAGE_SIZE, IO_CHUNK)) {
		fprintf(stderr, "memverify: out of memory\n");
		return 1;
	}
	fd = open(o->make_disk, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
		  0644);
	if (fd < 0) {
		fprintf(stderr, "memverify: cannot create %s: %s\n",
			o->make_disk, strerror(errno));
		free(buf);
		return 1;
	}
	while (pg < npages) {
		size_t n = 0;

		while (n < IO_CHUNK && pg < npages) {
			pat_fill_page(&p, pg++, 0, buf + n);
			n += PAT_PAGE_SIZE;
		}
		r = write_full(fd, buf, n);
		if (r < 0) {
			fprintf(stderr, "memverify: write to %s failed: %s\n",
				o->make_disk, strerror(-r));
			goto fail;
		}
	}
	if (fsync(fd) < 0 && errno != EINVAL) {
		fprintf(stderr, "memverify: fsync of %s failed: %s\n",
			o->make_disk, strerror(errno));
		goto fail;
	}
	close(fd);
	free(buf);
	return 0;
fail:
	close(fd);
	free(buf);
	return 1;
}

/*
 * Disk writer. Record i: "tsb-disk-record %010u\n" (27 bytes), then bytes
 * 27..4095 of pool XOR key(i), where pool is 512 words of splitmix64 from
 * state DW_POOL_SEED and key(i) the first splitmix64 word from state i,
 * repeated (all words little-endian). Unique per record, incompressible,
 * and cheap to recompute (disk-check.py).
 */
#define DW_POOL_SEED 0x7473622d6469736bull	/* "tsb-disk" */

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static void dw_record(const uint64_t *pool, uint64_t i, unsigned char *blk)
{
	uint64_t x = i, key = splitmix64(&x), w;
	char head[32];
	unsigned j, b;
	int n;

	for (j = 0; j < PAT_PAGE_SIZE / 8; j++) {
		w = pool[j] ^ key;
		for (b = 0; b < 8; b++)
			blk[j * 8 + b] = (unsigned char)(w >> (8 * b));
	}
	n = snprintf(head, sizeof(head), "tsb-disk-record %010llu\n", (unsigned long long)i);
	memcpy(blk, head, (size_t)n);
}

static int run_diskwrite(const struct opts *o)
{
	uint64_t pool[PAT_PAGE_SIZE / 8], x = DW_POOL_SEED, i = 0, last_i = 0;
	uint64_t start = now_ns(), next = start, last_report = start, max_ns = 0;
	size_t len = (size_t)o->dw_batch * PAT_PAGE_SIZE;
	unsigned char *buf = NULL;
	unsigned j;
	int fd;

	for (j = 0; j < PAT_PAGE_SIZE / 8; j++)
		pool[j] = splitmix64(&x);
	if (posix_memalign((void **)&buf, PAT_PAGE_SIZE, len)) {
		say("diskwrite: out of memory");
		return 1;
	}
	/* O_DIRECT: no page cache to dirty, one request per batch. Files on
	 * file systems without it (tmpfs, host tests) are written buffered. */
	fd = open(o->diskwrite, O_WRONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0 && errno == EINVAL)
		fd = open(o->diskwrite, O_WRONLY | O_CLOEXEC);
	if (fd < 0) {
		say("diskwrite: cannot open %s: %s", o->diskwrite, strerror(errno));
		free(buf);
		return 1;
	}
	say("diskwrite start base=%llu blocks=%llu batch=%llu rate=%.1f",
	    (unsigned long long)o->dw_base, (unsigned long long)o->dw_blocks,
	    (unsigned long long)o->dw_batch, o->dw_rate);
	while (!o->dw_records || i < o->dw_records) {
		uint64_t pos = i % o->dw_blocks, n = o->dw_batch, now, t0;
		ssize_t w;

		if (n > o->dw_blocks - pos)
			n = o->dw_blocks - pos;	/* a batch never wraps */
		if (o->dw_records && n > o->dw_records - i)
			n = o->dw_records - i;
		if (i + n - 1 > DW_MAX_RECORD)
			break;
		for (j = 0; j < n; j++)
			dw_record(pool, i + j, buf + (size_t)j * PAT_PAGE_SIZE);
		t0 = now_ns();
		do {
			w = pwrite(fd, buf, (size_t)n * PAT_PAGE_SIZE,
				   (off_t)((o->dw_base + pos) * PAT_PAGE_SIZE));
		} while (w < 0 && errno == EINTR);
		if (w != (ssize_t)(n * PAT_PAGE_SIZE) || fdatasync(fd) < 0) {
			say("diskwrite: record %llu failed: %s", (unsigned long long)i,
			    w < 0 || w == (ssize_t)(n * PAT_PAGE_SIZE) ? strerror(errno)
								 : "short write");
			close(fd);
			free(buf);
			return 1;
		}
		i += n;
		now = now_ns();
		if (now - t0 > max_ns)
			max_ns = now - t0;
		if (now - last_report >= DW_REPORT_NS) {
			say("diskwrite record %llu rate=%.1f max_ms=%llu", (unsigned long long)(i - 1),
			    (double)((i - last_i) * PAT_PAGE_SIZE) / (double)MIB /
			    ((double)(now - last_report) / (double)NS_PER_SEC),
			    (unsigned long long)(max_ns / 1000000));
			last_report = now;
			last_i = i;
			max_ns = 0;
		}
		if (o->dw_rate > 0) {
			/* Paced; after a stall (a throttled disk) at most 100 ms
			 * are caught up, not the whole stall. */
			if (next + NS_PER_SEC / 10 < now)
				next = now - NS_PER_SEC / 10;
			next += (uint64_t)((double)(n * PAT_PAGE_SIZE) / (o->dw_rate * (double)MIB) *
					   (double)NS_PER_SEC);
			if (next > now) {
				struct timespec ts = { .tv_sec = (time_t)((next - now) / NS_PER_SEC),
						       .tv_nsec = (long)((next - now) % NS_PER_SEC) };

				nanosleep(&ts, NULL);
			}
		}
	}
	close(fd);
	free(buf);
	say("diskwrite done records=%llu", (unsigned long long)i);
	return 0;
}

int main(int argc, char **argv)
{
	struct opts o;

	if (parse_opts(argc, argv, &o) < 0)
		return 2;
	if (o.make_disk)
		return make_disk(&o);
	if (o.check_disk)
		return run_disk(&o, o.check_disk, false);
	if (o.diskwrite)
		return run_diskwrite(&o);
	if (o.disk)
		return run_disk(&o, o.disk, true);
	return run_memory(&o);
}
