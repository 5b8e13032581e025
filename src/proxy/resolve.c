/*
 * tsubame resolve: settles a migration left in doubt, from the records
 * this host keeps (docs/protocol.md, "Resolving"). The source's record is
 * the decision: "commit" means the destination runs the guest; anything
 * else means the source does. The destination cannot decide alone, so its
 * side needs the word the source's side printed.
 */
#include "proxy/commit.h"
#include "proxy/record.h"

#include "common/log.h"
#include "qmp/qmp.h"
#include "wire/wire.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int open_qmp(const struct proxy_resolve_options *o, const struct mig_record *r,
		    struct qmp **q)
{
	const char *path = o->qmp_path ? o->qmp_path : r->qmp;
	int e = qmp_open(path, 10000, q);

	if (e < 0)
		fprintf(stderr, "tsubame resolve: cannot reach the %s QEMU at %s: %s (give "
			"--qmp if it moved)\n", strcmp(r->side, "send") ? "destination" : "source",
			path, strerror(-e));
	return e;
}

static int resolve_send(const struct proxy_resolve_options *o, const struct mig_record *r)
{
	struct qmp *q = NULL;
	bool completed = false;
	char err[512];

	if (!strcmp(r->state, "commit")) {
		printf("migration %s: the source committed the switchover. The source VM stays "
		       "paused and must never run again.\n"
		       "On the destination host run:  tsubame resolve %s --commit\n", r->id, r->id);
		record_drop(o->state_dir, r);
		return 0;
	}
	/*
	 * Committed as the source completed: the destination runs the guest
	 * if it loaded it, which only that host can tell. Its word comes back
	 * here as --commit (it runs there) or --abort (it holds nothing).
	 */
	if (!strcmp(r->state, "commit-early") && o->decision != WIRE_DECIDE_ABORT) {
		if (o->decision == WIRE_DECIDE_COMMIT) {
			printf("migration %s: the destination runs the guest; the source VM stays "
			       "paused and must never run again.\n", r->id);
			record_drop(o->state_dir, r);
			return 0;
		}
		printf("migration %s: the source committed the switchover as it completed: the "
		       "destination runs the guest if it loaded it. The source VM stays paused.\n"
		       "On the destination host run:  tsubame resolve %s --commit\n"
		       "If it says that it holds no such guest, run here:  tsubame resolve %s "
		       "--abort\n", r->id, r->id, r->id);
		return 0;
	}
	if (open_qmp(o, r, &q) < 0)
		return 1;
	if (commit_resume_source(q, r->resume, false, &completed, err, sizeof(err)) < 0) {
		fprintf(stderr, "tsubame resolve: the source VM could not be resumed: %s\n", err);
		qmp_close(q);
		return 1;
	}
	qmp_close(q);
	printf("migration %s: not committed; the source VM %s.\n"
	       "On the destination host run:  tsubame resolve %s --abort\n", r->id,
	       r->resume ? "runs again" : "is left as it was (it was not running)", r->id);
	record_drop(o->state_dir, r);
	return 0;
}

static int resolve_recv(const struct proxy_resolve_options *o, const struct mig_record *r)
{
	struct qmp *q = NULL;
	uint64_t resume_ns;
	bool running;
	char err[512];
	int d = o->decision;

	/* A commit already received is final: run it, whatever the flag says. */
	if (!strcmp(r->state, "commit")) {
		if (d == WIRE_DECIDE_ABORT) {
			fprintf(stderr, "tsubame resolve: migration %s: this destination already "
				"received the source's commit; refusing --abort\n", r->id);
			return 1;
		}
		d = WIRE_DECIDE_COMMIT;
	}
	if (!d) {
		fprintf(stderr, "tsubame resolve: migration %s: the destination holds the guest "
			"paused and cannot decide alone.\nRun 'tsubame resolve %s' on the source "
			"host first; then here: --commit or --abort, as it says.\n", r->id, r->id);
		return 2;
	}
	if (open_qmp(o, r, &q) < 0) {
		/* No QEMU, no guest: nothing can run here any more. */
		fprintf(stderr, "migration %s: the destination holds no guest of it any more (its "
			"QEMU is gone). If the source's resolve asked for this host's word, run "
			"'tsubame resolve %s --abort' there.\n", r->id, r->id);
		record_drop(o->state_dir, r);
		return 1;
	}
	if (d == WIRE_DECIDE_COMMIT && commit_vm_running(q, &running) == 0 && running) {
		/* Kept because the sender may not have heard that it runs here. */
		printf("migration %s: the destination runs the guest (since the switchover).\n",
		       r->id);
	} else if (d == WIRE_DECIDE_COMMIT) {
		if (commit_run_destination(q, &resume_ns, err, sizeof(err)) < 0) {
			fprintf(stderr, "tsubame resolve: the destination could not run the guest: "
				"%s\n", err);
			qmp_close(q);
			record_drop(o->state_dir, r);
			return 1;
		}
		printf("migration %s: the destination runs the guest.\n", r->id);
	} else {
		commit_discard_destination(q);
		printf("migration %s: the destination discarded its paused copy.\n", r->id);
	}
	qmp_close(q);
	record_drop(o->state_dir, r);
	return 0;
}

int proxy_resolve(const struct proxy_resolve_options *o)
{
	static const char *const sides[] = { "send", "recv" };
	struct mig_record r;
	char path[600], err[512];
	int found = 0, rc = 0, lock, e;

	for (size_t i = 0; i < 2; i++) {
		record_path(o->state_dir, o->id, sides[i], path, sizeof(path));
		if (access(path, F_OK) < 0)
			continue;
		found++;
		lock = record_lock(o->state_dir, o->id, sides[i]);
		if (lock < 0) {
			fprintf(stderr, "tsubame resolve: migration %s: %s\n", o->id, lock == -EBUSY
				? "tsubame is still working on it (it holds the record's lock)"
				: strerror(-lock));
			rc = 1;
			continue;
		}
		e = record_load(path, &r, err, sizeof(err));
		if (e < 0) {
			fprintf(stderr, "tsubame resolve: %s\n", err);
			rc = 1;
		} else {
			e = i == 0 ? resolve_send(o, &r) : resolve_recv(o, &r);
			rc = rc ? rc : e;
		}
		close(lock);
	}
	if (!found) {
		fprintf(stderr, "tsubame resolve: no record of migration %s in %s: nothing is "
			"in doubt here\n", o->id, o->state_dir);
		if (o->decision == WIRE_DECIDE_COMMIT)
			fprintf(stderr, "If this is its destination host, it holds no such guest: "
				"the guest never loaded here. Run 'tsubame resolve %s --abort' on "
				"the source host.\n", o->id);
		return 1;
	}
	return rc;
}

int proxy_resolve_list(const char *state_dir)
{
	struct mig_record r;
	struct dirent *de;
	char path[600], err[512];
	int n = 0;
	DIR *d = opendir(state_dir);

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		size_t len = strlen(de->d_name);

		if (len < 6 || strcmp(de->d_name + len - 5, ".json"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", state_dir, de->d_name);
		if (record_load(path, &r, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s\n", err);
			continue;
		}
		printf("%s  %s  %-9s vm=%s peer=%s qmp=%s\n", r.id, r.side, r.state,
		       r.vm[0] ? r.vm : "-", r.peer, r.qmp);
		n++;
	}
	closedir(d);
	return n;
}
