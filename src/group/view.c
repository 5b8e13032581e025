/*
 * What the operator sees of a group (internal.h): a line per VM and the
 * group's total on a TTY, JSON events for orchestration, a table at the
 * end and an SVG timeline (each VM's phases, the WAN rate, the budget).
 */
#include "group/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"

static const char *const phase_names[PHASE_COUNT] = {
	[PHASE_WAITING] = "waiting",
	[PHASE_SETUP] = "setup",
	[PHASE_PRECOPY] = "precopy",
	[PHASE_POSTCOPY] = "postcopy",
	[PHASE_SWITCHOVER] = "switchover",
	[PHASE_MOVED] = "moved",
	[PHASE_SKIPPED] = "moved-earlier",
	[PHASE_FAILED] = "failed",
};

/* Fill colours of the phases in the picture. */
static const char *const phase_colors[PHASE_COUNT] = {
	[PHASE_WAITING] = "#eeeeee",
	[PHASE_SETUP] = "#b0b0b0",
	[PHASE_PRECOPY] = "#4a7fc1",
	[PHASE_POSTCOPY] = "#e08a2c",
	[PHASE_SWITCHOVER] = "#8e44ad",
	[PHASE_MOVED] = "#5aa05a",
	[PHASE_SKIPPED] = "#a8d5a8",
	[PHASE_FAILED] = "#c0392b",
};

const char *group_phase_name(enum vm_phase ph)
{
	return ph < PHASE_COUNT ? phase_names[ph] : "?";
}

/* Bytes the VM has put on the link: its report once it ended. */
static uint64_t wan_now(const struct vm_run *r)
{
	json_t *v = json_object_get(json_object_get(r->report, "wan"), "bytes_sent");

	return v ? (uint64_t)json_integer_value(v) : r->wan_out;
}

static double pct_of(const struct vm_run *r)
{
	if (r->phase == PHASE_MOVED || r->phase == PHASE_SKIPPED)
		return 100;
	if (!r->tick.ram_total)
		return 0;
	return 100.0 * (double)(r->tick.ram_total - r->tick.ram_remaining) /
	       (double)r->tick.ram_total;
}

static void push_sample(struct vm_run *r, uint32_t t_ms)
{
	if (r->n_samples == r->cap_samples) {
		size_t cap = r->cap_samples ? 2 * r->cap_samples : 64;
		struct sample *s = realloc(r->samples, cap * sizeof(*s));

		if (!s)
			return;	/* the picture loses a sample, nothing else */
		r->samples = s;
		r->cap_samples = cap;
	}
	r->samples[r->n_samples++] = (struct sample){ t_ms, (uint8_t)r->phase, r->mbit };
}

/*
 * Seconds until the group is done, from the bytes still to go (QEMU's
 * remaining RAM of the moving VMs, the whole RAM of the waiting ones, at
 * the WAN bytes per RAM byte seen so far) at the group's current rate; -1
 * while nothing is known.
 */
static double eta_s(const struct group_run *g)
{
	double ram_done = 0, ram_left = 0, wan = 0, mean_total = 0;
	size_t known = 0, waiting = 0;

	for (size_t i = 0; i < g->n; i++) {
		const struct vm_run *r = &g->v[i];

		if (r->tick.ram_total) {
			mean_total += (double)r->tick.ram_total;
			known++;
		}
		if (r->phase == PHASE_WAITING)
			waiting++;
		if (r->phase >= PHASE_SETUP && r->phase <= PHASE_SWITCHOVER)
			ram_left += (double)r->tick.ram_remaining;
		if (r->tick.ram_total && r->phase != PHASE_FAILED) {
			ram_done += (double)(r->tick.ram_total - r->tick.ram_remaining);
			wan += (double)r->tick.wan_out;
		}
	}
	if (!known || ram_done <= 0 || g->total_mbit <= 0)
		return -1;
	ram_left += waiting * mean_total / (double)known;
	return ram_left * (wan / ram_done) * 8 / 1e6 / g->total_mbit;
}

static void fmt_eta(double s, char *buf, size_t len)
{
	if (s < 0)
		snprintf(buf, len, "?");
	else if (s < 60)
		snprintf(buf, len, "%.0fs", s);
	else
		snprintf(buf, len, "%ldm%02lds", (long)s / 60, (long)s % 60);
}

static void draw_tty(struct group_run *g, double eta)
{
	size_t moved = 0, failed = 0, moving = 0;
	uint64_t wan = 0;
	char e[32];

	if (g->tty_lines)
		fprintf(stderr, "\033[%uA", g->tty_lines);
	for (size_t i = 0; i < g->n; i++) {
		const struct vm_run *r = &g->v[i];

		moved += r->phase == PHASE_MOVED || r->phase == PHASE_SKIPPED;
		failed += r->phase == PHASE_FAILED;
		moving += r->phase >= PHASE_SETUP && r->phase <= PHASE_SWITCHOVER;
		wan += wan_now(r);
		fprintf(stderr, "\033[2K  %-20.20s %-13s %5.1f%%  pass %-3u WAN %8.1f MB %7.1f Mbit/s\n",
			r->vm->name, group_phase_name(r->phase), pct_of(r), r->tick.pass,
			(double)wan_now(r) / 1e6, r->phase <= PHASE_SWITCHOVER ? r->mbit : 0.0);
	}
	fmt_eta(eta, e, sizeof(e));
	fprintf(stderr, "\033[2Kgroup: %zu of %zu moved, %zu moving, %zu failed  WAN %.1f MB at "
		"%.1f Mbit/s  ETA %s\n", moved, g->n, moving, failed, (double)wan / 1e6,
		g->total_mbit, e);
	g->tty_lines = (unsigned)g->n + 1;
}

/*
 * A VM that ended since the last sample: its last bytes went out before
 * it ended, so they are its rate up to then (a sample at its end), and
 * from there it is 0.
 */
static void sample_end(struct group_run *g, struct vm_run *r, uint64_t w)
{
	uint64_t from = g->last_view_ns > r->start_ns ? g->last_view_ns : r->start_ns;
	enum vm_phase ph = r->phase;

	r->mbit = r->end_ns > from && w >= r->shown_wan ?
		  (float)((double)(w - r->shown_wan) * 8 / ((double)(r->end_ns - from) / 1e9) / 1e6) : 0;
	r->phase = r->last_phase;
	push_sample(r, (uint32_t)((r->end_ns - g->start_ns) / 1000000));
	r->phase = ph;
	r->shown_wan = w;
	r->mbit = 0;
}

void group_view_tick(struct group_run *g, bool final)
{
	uint64_t now = tsb_now_ns(), wan = 0;
	double dt = g->last_view_ns ? (double)(now - g->last_view_ns) / 1e9 : 0;
	json_t *vms = NULL;
	double eta;

	if (g->o->json)
		vms = json_array();
	pthread_mutex_lock(&g->mu);
	for (size_t i = 0; i < g->n; i++) {
		struct vm_run *r = &g->v[i];
		uint64_t w = wan_now(r);

		/* It started since: it waited until then (the picture's rows). */
		if (r->start_ns > g->last_view_ns && r->n_samples) {
			enum vm_phase ph = r->phase;

			r->phase = PHASE_WAITING;
			push_sample(r, (uint32_t)((r->start_ns - g->start_ns) / 1000000));
			r->phase = ph;
		}
		if (r->end_ns && r->end_ns > g->last_view_ns && r->phase != PHASE_SKIPPED)
			sample_end(g, r, w);
		r->mbit = dt > 0 && w >= r->shown_wan ? (float)((w - r->shown_wan) * 8 / dt / 1e6) : 0;
		r->shown_wan = w;
		wan += w;
		if (r->phase <= PHASE_SWITCHOVER)
			r->last_phase = r->phase;
		push_sample(r, (uint32_t)((now - g->start_ns) / 1000000));
		if (vms)
			json_array_append_new(vms, json_pack("{s:s, s:s, s:f, s:I, s:f, s:i}",
				"name", r->vm->name, "phase", group_phase_name(r->phase),
				"percent", pct_of(r), "wan_bytes", (json_int_t)w,
				"mbit_s", (double)r->mbit, "pass", (int)r->tick.pass));
	}
	g->total_mbit = dt > 0 && wan >= g->last_wan ? (float)((wan - g->last_wan) * 8 / dt / 1e6)
						     : 0;
	g->last_wan = wan;
	g->last_view_ns = now;
	eta = eta_s(g);
	if (g->o->tty && (!final || g->tty_lines))
		draw_tty(g, final ? 0 : eta);
	pthread_mutex_unlock(&g->mu);
	if (vms)
		group_view_event(g, "progress", json_pack("{s:o, s:I, s:f, s:f}", "vms", vms,
			"wan_bytes", (json_int_t)wan, "mbit_s", (double)g->total_mbit,
			"eta_s", eta));
}

void group_view_event(struct group_run *g, const char *name, json_t *fields)
{
	json_t *ev;

	if (!g->o->json || !fields) {
		json_decref(fields);
		return;
	}
	ev = json_pack("{s:s, s:I}", "event", name,
		       "t_ms", (json_int_t)((tsb_now_ns() - g->start_ns) / 1000000));
	json_object_update(ev, fields);
	json_decref(fields);
	json_dumpf(ev, stdout, JSON_COMPACT);
	fputc('\n', stdout);
	fflush(stdout);
	json_decref(ev);
}

void group_view_table(struct group_run *g, FILE *f)
{
	fprintf(f, "%-20s %-13s %-12s %8s %10s %11s\n", "VM", "phase", "outcome", "time s",
		"WAN MB", "downtime ms");
	for (size_t i = 0; i < g->n; i++) {
		const struct vm_run *r = &g->v[i];
		json_t *dt = json_object_get(r->report, "downtime_ms");
		char down[24] = "-";

		if (json_is_integer(dt))
			snprintf(down, sizeof(down), "%lld", (long long)json_integer_value(dt));
		fprintf(f, "%-20.20s %-13s %-12s %8.1f %10.1f %11s\n", r->vm->name,
			group_phase_name(r->phase),
			r->phase == PHASE_SKIPPED ? "-" : proxy_outcome_name(r->oc),
			r->start_ns ? (double)(r->end_ns - r->start_ns) / 1e9 : 0.0,
			(double)wan_now(r) / 1e6, down);
		if (r->phase == PHASE_FAILED && r->why[0])
			fprintf(f, "  %s: %s\n", r->vm->name, r->why);
	}
}

/* ---- the SVG timeline ---- */

#define SVG_W 960
#define SVG_LEFT 150		/* VM names */
#define SVG_RIGHT 20
#define SVG_ROW 18
#define SVG_TOP 40
#define SVG_CHART 220		/* height of the WAN rate chart */

/* The VMs' colours in the rate chart: pastel, apart from the phases'. */
static const char *const vm_colors[] = {
	"#66c2a5", "#fc8d62", "#8da0cb", "#e78ac3", "#a6d854", "#ffd92f",
	"#e5c494", "#b3b3b3", "#80b1d3", "#bc80bd",
};
#define VM_COLOR(i) vm_colors[(i) % (sizeof(vm_colors) / sizeof(vm_colors[0]))]

static void xml_text(FILE *f, const char *s)
{
	for (; *s; s++)
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: fputc(*s, f);
		}
}

/* Points along the chart's time axis (one every 4 px). */
#define SVG_STEPS ((SVG_W - SVG_LEFT - SVG_RIGHT) / 4)

/*
 * The stacked rates at the chart's points: row i is the sum of the rates
 * of the VMs before i, row n their total ((n + 1) x (SVG_STEPS + 1)). A
 * VM's rate at a point is that of its first sample at or after it (the
 * sample covers the time since the one before). NULL on ENOMEM.
 */
static double *stack_rates(const struct group_run *g, double tmax)
{
	size_t w = SVG_STEPS + 1;
	double *cum = calloc((g->n + 1) * w, sizeof(*cum));

	if (!cum)
		return NULL;
	for (size_t i = 0; i < g->n; i++) {
		const struct vm_run *r = &g->v[i];
		size_t k = 0;

		for (size_t s = 0; s < w; s++) {
			double t = (double)s / SVG_STEPS * tmax;

			while (k < r->n_samples && r->samples[k].t_ms < t)
				k++;
			cum[(i + 1) * w + s] = cum[i * w + s] +
					       (k < r->n_samples ? r->samples[k].mbit : 0);
		}
	}
	return cum;
}

static void svg_rows(struct group_run *g, FILE *f, double tmax, double plot_w)
{
	for (size_t i = 0; i < g->n; i++) {
		const struct vm_run *r = &g->v[i];
		double y = SVG_TOP + (double)i * SVG_ROW, x0 = 0;

		fprintf(f, "<text x='%d' y='%.1f' font-size='12' text-anchor='end'>", SVG_LEFT - 22,
			y + 13);
		xml_text(f, r->vm->name);
		/* The swatch ties the row to the VM's area in the chart. */
		fprintf(f, "</text>\n<rect x='%d' y='%.1f' width='10' height='10' fill='%s'/>\n",
			SVG_LEFT - 16, y + 4, VM_COLOR(i));
		for (size_t k = 0; k < r->n_samples; k++) {
			double x1 = r->samples[k].t_ms / tmax * plot_w;

			if (r->samples[k].phase != PHASE_WAITING && x1 > x0)
				fprintf(f, "<rect x='%.1f' y='%.1f' width='%.1f' height='%d' "
					"fill='%s'/>\n", SVG_LEFT + x0, y + 2, x1 - x0, SVG_ROW - 4,
					phase_colors[r->samples[k].phase]);
			x0 = x1;
		}
	}
}

static void svg_chart(const struct group_run *g, FILE *f, const double *cum, double plot_w,
		      double y0, double rmax)
{
	size_t w = SVG_STEPS + 1;

	/* Stacked areas: each VM's rate on top of the ones before. */
	for (size_t i = 0; i < g->n; i++) {
		fprintf(f, "<polygon fill='%s' stroke='white' stroke-width='0.5' points='",
			VM_COLOR(i));
		for (size_t s = 0; s < w; s++)
			fprintf(f, "%.1f,%.1f ", SVG_LEFT + (double)s / SVG_STEPS * plot_w,
				y0 + SVG_CHART - cum[(i + 1) * w + s] / rmax * SVG_CHART);
		for (size_t s = w; s-- > 0;)
			fprintf(f, "%.1f,%.1f ", SVG_LEFT + (double)s / SVG_STEPS * plot_w,
				y0 + SVG_CHART - cum[i * w + s] / rmax * SVG_CHART);
		fprintf(f, "'/>\n");
	}
}

int group_view_svg(struct group_run *g, const char *path)
{
	double tmax = 1, rmax = 1, budget, plot_w = SVG_W - SVG_LEFT - SVG_RIGHT, y0;
	double *cum;
	int h, e = 0;
	FILE *f;

	for (size_t i = 0; i < g->n; i++)
		if (g->v[i].n_samples && g->v[i].samples[g->v[i].n_samples - 1].t_ms > tmax)
			tmax = g->v[i].samples[g->v[i].n_samples - 1].t_ms;
	cum = stack_rates(g, tmax);
	if (!cum)
		return -ENOMEM;
	/* The highest total rate sets the chart's scale. */
	for (size_t s = 0; s <= SVG_STEPS; s++)
		if (cum[g->n * (SVG_STEPS + 1) + s] > rmax)
			rmax = cum[g->n * (SVG_STEPS + 1) + s];
	/* The group's budget (a host's pacer may hold only its share). */
	budget = (double)g->o->bandwidth * 8 / 1e6;
	if (budget * 1.1 > rmax)
		rmax = budget * 1.1;
	y0 = SVG_TOP + (double)g->n * SVG_ROW + 40;
	h = (int)y0 + SVG_CHART + 70;
	f = fopen(path, "w");
	if (!f) {
		e = -errno;
		free(cum);
		return e;
	}
	fprintf(f, "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' "
		"font-family='sans-serif'>\n<rect width='100%%' height='100%%' fill='white'/>\n",
		SVG_W, h);
	fprintf(f, "<text x='%d' y='22' font-size='15' font-weight='bold'>tsubame group: %zu VMs, "
		"%.1f s, %.1f MB on the WAN</text>\n", SVG_LEFT, g->n, tmax / 1000,
		(double)g->last_wan / 1e6);
	svg_rows(g, f, tmax, plot_w);
	svg_chart(g, f, cum, plot_w, y0, rmax);
	free(cum);
	/* Axes: time below, Mbit/s left of the chart, the budget dashed. */
	fprintf(f, "<line x1='%d' y1='%.1f' x2='%.1f' y2='%.1f' stroke='black'/>\n", SVG_LEFT,
		y0 + SVG_CHART, SVG_LEFT + plot_w, y0 + SVG_CHART);
	fprintf(f, "<line x1='%d' y1='%.1f' x2='%d' y2='%.1f' stroke='black'/>\n", SVG_LEFT, y0,
		SVG_LEFT, y0 + SVG_CHART);
	for (int k = 0; k <= 10; k++) {
		double x = SVG_LEFT + plot_w * k / 10;

		fprintf(f, "<text x='%.1f' y='%.1f' font-size='11' text-anchor='middle'>%.*f s</text>\n",
			x, y0 + SVG_CHART + 16, tmax < 20000 ? 1 : 0, tmax / 1000 * k / 10);
	}
	for (int k = 0; k <= 4; k++)
		fprintf(f, "<text x='%d' y='%.1f' font-size='11' text-anchor='end'>%.0f</text>\n",
			SVG_LEFT - 6, y0 + SVG_CHART - SVG_CHART * k / 4.0 + 4, rmax * k / 4);
	fprintf(f, "<text x='%d' y='%.1f' font-size='12' text-anchor='end'>WAN Mbit/s</text>\n",
		SVG_LEFT - 6, y0 - 8);
	if (budget > 0)
		fprintf(f, "<line x1='%d' y1='%.1f' x2='%.1f' y2='%.1f' stroke='black' "
			"stroke-dasharray='6,4'/>\n<text x='%.1f' y='%.1f' font-size='11' "
			"text-anchor='end'>budget %.0f Mbit/s</text>\n", SVG_LEFT,
			y0 + SVG_CHART - budget / rmax * SVG_CHART, SVG_LEFT + plot_w,
			y0 + SVG_CHART - budget / rmax * SVG_CHART, SVG_LEFT + plot_w,
			y0 + SVG_CHART - budget / rmax * SVG_CHART - 4, budget);
	/* Legend of the phases. */
	for (int p = PHASE_SETUP, x = SVG_LEFT; p < PHASE_COUNT; p++, x += 105) {
		fprintf(f, "<rect x='%d' y='%d' width='12' height='12' fill='%s'/>"
			"<text x='%d' y='%d' font-size='11'>%s</text>\n", x, h - 24, phase_colors[p],
			x + 16, h - 14, phase_names[p]);
	}
	fprintf(f, "</svg>\n");
	if (ferror(f))
		e = -EIO;
	if (fclose(f) && !e)
		e = -errno;
	return e;
}
