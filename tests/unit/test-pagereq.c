/*
 * Postcopy page requests (proxy/pagereq.h) and where a requested page may
 * overtake the sender's queue (urgent_insert_after, send_urgent.c).
 */
#include "proxy/pagereq.h"
#include "proxy/sender.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

static void test_take_matches_block_and_range(void **state)
{
	struct pagereq_set s = { 0 };
	uint64_t t = 0;

	(void)state;
	pagereq_add(&s, "pc.ram", 0x10000, 4096, 100, 7);
	pagereq_add(&s, "vga.vram", 0x10000, 4096, 200, 9);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.added, 2);
	/* Same offset, other block; other offset, same block: no. */
	assert_false(pagereq_take(&s, "pc.rom", 6, 0x10000, &t));
	assert_false(pagereq_take(&s, "pc.ram", 6, 0x11000, &t));
	assert_false(pagereq_take(&s, "pc.ra", 5, 0x10000, &t));
	assert_true(pagereq_take(&s, "vga.vram", 8, 0x10000, &t));
	assert_int_equal(t, 200);
	/* Taken once: forgotten. */
	assert_false(pagereq_take(&s, "vga.vram", 8, 0x10000, &t));
	assert_int_equal(s.n, 1);
	/* A request of a larger host page is met by any page inside it. */
	pagereq_add(&s, "huge", 0x200000, 0x200000, 300, 0);
	assert_true(pagereq_take(&s, "huge", 4, 0x3ff000, &t));
	assert_int_equal(t, 300);
}

static void test_full_set_forgets_oldest_and_prune(void **state)
{
	struct pagereq_set s = { 0 };
	char name[300];
	unsigned i;

	(void)state;
	for (i = 0; i < PAGEREQ_MAX + 3; i++)
		pagereq_add(&s, "pc.ram", (uint64_t)i * 4096, 4096, i, i * 10);
	assert_int_equal(s.n, PAGEREQ_MAX);
	assert_false(pagereq_take(&s, "pc.ram", 6, 0, NULL));
	assert_true(pagereq_take(&s, "pc.ram", 6, 3 * 4096, NULL));
	/* Names that do not fit are ignored, not cut. */
	memset(name, 'a', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	pagereq_add(&s, name, 0, 4096, 0, 0);
	assert_int_equal(s.n, PAGEREQ_MAX - 1);
	/* Asked at 4..66; at 70 with a ttl of 10, those of 61..66 stay. */
	pagereq_prune(&s, 70, 10);
	for (i = 0; i < s.n; i++)
		assert_true(s.r[i].t_ns > 60);
	assert_int_equal(s.n, 6);
	/* Marks 610..660: below 640 go. */
	pagereq_prune_mark(&s, 640);
	assert_int_equal(s.n, 3);
	assert_int_equal(s.r[0].mark, 640);
}

static struct job *jobs(struct job *j, const char *kinds, unsigned n)
{
	unsigned i;

	/* kinds: 'p' pages ending after a page, 'r' stream run, 'f' frame. */
	for (i = 0; i < n; i++) {
		memset(&j[i], 0, sizeof(j[i]));
		j[i].kind = kinds[i] == 'f' ? JOB_FRAME : kinds[i] == 'r' ? JOB_RUN : JOB_PAGES;
		j[i].ends_after_page = kinds[i] == 'p';
		j[i].next = i + 1 < n ? &j[i + 1] : NULL;
	}
	return n ? j : NULL;
}

static void test_insert_point(void **state)
{
	struct job j[5];

	(void)state;
	/* The wire stopped after a page: the front. */
	jobs(j, "rpr", 3);
	assert_null(urgent_insert_after(j, &j[2], true));
	/* The wire stopped after stream bytes: after the first job ending in a page. */
	assert_ptr_equal(urgent_insert_after(j, &j[2], false), &j[1]);
	/* A frame (DECISION) decides nothing. */
	jobs(j, "frpfp", 5);
	assert_ptr_equal(urgent_insert_after(j, &j[4], false), &j[2]);
	/* No job ends after a page: the end of the queue. */
	jobs(j, "rfr", 3);
	assert_ptr_equal(urgent_insert_after(j, &j[2], false), &j[2]);
	/* Empty queue: after what the wire took, else (NULL tail) the front. */
	assert_null(urgent_insert_after(NULL, NULL, true));
	assert_null(urgent_insert_after(NULL, NULL, false));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_take_matches_block_and_range),
		cmocka_unit_test(test_full_set_forgets_oldest_and_prune),
		cmocka_unit_test(test_insert_point),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
