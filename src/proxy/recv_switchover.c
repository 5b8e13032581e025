/*
 * The receiver's switchover (docs/protocol.md, "Switchover"): waiting for
 * the destination QEMU to load the guest, paused; PREPARED; the sender's
 * DECISION, on the main connection or a fresh one; the guest run or
 * discarded; the OUTCOME told.
 */
#include "proxy/receiver.h"

#include "proxy/commit.h"
#include "proxy/content.h"
#include "proxy/resume.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "qmp/qmp.h"
#include "wire/tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Is the destination QEMU past loading (paused, waiting for us)? */
static bool dest_paused(struct qmp *q)
{
	json_t *st = NULL;
	const char *v;
	bool paused;

	if (qmp_execute(q, "query-status", NULL, &st, NULL, 0) < 0)
		return false;
	v = json_string_value(json_object_get(st, "status"));
	paused = v && !strcmp(v, "paused");
	json_decref(st);
	return paused;
}

/* The destination's incoming migration status (query-migrate); 0 or -errno. */
static int migration_status(struct qmp *q, char *st, size_t len)
{
	json_t *ret = NULL;
	int r;

	r = qmp_execute(q, "query-migrate", NULL, &ret, NULL, 0);
	if (r == 0)
		snprintf(st, len, "%s", json_string_value(json_object_get(ret, "status")) ?: "");
	json_decref(ret);
	return r;
}

/*
 * Watches the destination QEMU until the incoming migration has loaded
 * (precopy: completed; postcopy: the guest's device state is in and QEMU
 * waits to run it). Autostart is off, so the guest stays paused.
 */
void recv_wait_loaded(struct receiver *rc, struct qmp *q, volatile int *sig)
{
	const struct proxy_recv_options *o = rc->o;
	bool loaded = false, postcopy = false;
	struct qmp_event ev;
	uint64_t t0 = tsb_now_ns();
	int r;

	while (!rc->failed && !loaded) {
		/* In postcopy nothing announces the load: ask often, it is the pause. */
		r = qmp_next_event(q, postcopy ? 10 : 200, &ev);
		if (r == 0) {
			const char *st = json_string_value(json_object_get(ev.data, "status"));

			if (!strcmp(ev.name, "RESUME"))
				recv_fail(rc, PROXY_FAILED, "the destination QEMU ran the guest "
					  "on its own (autostart could not be turned off)");
			else if (!strcmp(ev.name, "MIGRATION") && st && !strcmp(st, "failed"))
				recv_fail(rc, PROXY_FAILED, "the destination QEMU failed to load "
					  "the migration stream");
			else if (!strcmp(ev.name, "MIGRATION") && st && !strcmp(st, "completed"))
				loaded = dest_paused(q);
			else if (!strcmp(ev.name, "MIGRATION") && st &&
				 !strcmp(st, "postcopy-active") && !postcopy) {
				postcopy = true;
				rc->postcopy_ns = tsb_now_ns();
				rc->ack_often = true;
			}
			qmp_event_fini(&ev);
		} else if (r != -ETIMEDOUT) {
			recv_fail(rc, PROXY_FAILED, "the destination QEMU went away: %s",
				  strerror(-r));
		} else if (postcopy) {
			loaded = rc->in_postcopy = dest_paused(q);
		}
		if (*sig && !rc->failed)
			recv_fail(rc, PROXY_INTERRUPTED, "interrupted by signal %d", *sig);
		if (disk_recv_failed(rc->rb.disk) && !rc->failed)
			recv_fail(rc, PROXY_LINK, "the disk transfer failed");
		if (o->c.timeout_ms && (tsb_now_ns() - t0) / 1000000 > o->c.timeout_ms)
			recv_fail(rc, PROXY_TIMEOUT, "the migration did not finish in time");
	}
}

static int send_status_locked(struct receiver *rc, uint8_t type, uint32_t code,
			      const char *text)
{
	int r;

	pthread_mutex_lock(&rc->send_lock);
	r = wire_conn_send_status(rc->conn, type, code, text);
	pthread_mutex_unlock(&rc->send_lock);
	return r;
}

/*
 * Waits for the decision on the main connection; when it is lost, for the
 * sender to reconnect with it. > 0 the decision (*ret_conn: where to answer,
 * NULL for the main connection); -ETIMEDOUT/-EINTR: still in doubt; -EIO:
 * the destination QEMU died (it can never run the guest).
 */
static int await_decision(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
			  volatile int *sig, struct wire_conn **ret_conn)
{
	const struct proxy_recv_options *o = rc->o;
	struct commit_link l = {
		.c = &o->c, .tls = tls, .addr = o->listen, .id = rc->rec.id, .sig = sig,
		.credential = rc->credential, .ret_stop_ns = &rc->source_stop_ns,
	};
	struct qmp_event ev;
	int r;

	*ret_conn = NULL;
	/*
	 * The decision arrives on another thread; a short wait on QEMU's events
	 * (which tell if it dies meanwhile) keeps that from adding to the
	 * guest's downtime (200 ms here cost up to 200 ms of it).
	 */
	while (!rc->decision && !rc->link_lost && !*sig) {
		r = qmp_next_event(q, 2, &ev);
		if (r == 0)
			qmp_event_fini(&ev);
		else if (r != -ETIMEDOUT)
			return -EIO;
	}
	if (rc->decision)
		return rc->decision;
	if (*sig)
		return -EINTR;
	log_warn("the link to the sender was lost while the guest waits here, paused, "
		 "for the sender's decision");
	l.deadline_ns = tsb_now_ns() + o->c.commit_timeout_ms * 1000000;
	return commit_await(&l, ret_conn);
}

/*
 * Tells the sender the outcome, reconnection included; false if it never
 * heard. sent: OUTCOME already went on the main connection (postcopy).
 */
static bool tell_outcome(struct receiver *rc, struct wire_tls *tls, volatile int *sig,
			 struct wire_conn *c, int outcome, const char *text, bool sent)
{
	struct commit_link l = {
		.c = &rc->o->c, .tls = tls, .addr = rc->o->listen, .id = rc->rec.id, .sig = sig,
		.credential = rc->credential,
	};
	uint64_t t0 = tsb_now_ns();
	int r;

	if (c) {
		r = commit_answer(c, outcome, text);
		wire_conn_free(c);
	} else {
		r = sent ? 0 : send_status_locked(rc, WIRE_MSG_OUTCOME, (uint32_t)outcome, text);
		if (!sent)
			tsb_fault_point("outcome-sent");
		/* Known there once the sender closes after reading it. */
		while (r == 0 && !rc->sender_closed && !rc->link_lost &&
		       tsb_now_ns() - t0 < 10000000000ull)
			usleep(10000);
		r = r == 0 && rc->sender_closed ? 0 : -ECONNRESET;
	}
	if (r == 0)
		return true;
	/* The sender will come back for it: answer the same again. */
	l.deadline_ns = tsb_now_ns() + rc->o->c.commit_timeout_ms * 1000000;
	while (commit_await(&l, &c) > 0) {
		r = commit_answer(c, outcome, text);
		wire_conn_free(c);
		if (r == 0)
			return true;
	}
	return false;
}

/*
 * The guest runs here but the postcopy cannot finish: say so, whatever
 * failed first (the sender's side says the same).
 */
static void postcopy_broken(struct receiver *rc, const char *cause)
{
	char why[sizeof(rc->error)];

	snprintf(why, sizeof(why), "%s", cause);
	recv_fail(rc, PROXY_LINK, "postcopy");	/* cuts QEMU's stream: it pauses */
	snprintf(rc->error, sizeof(rc->error), "the link broke during postcopy (%.150s), after the "
		 "guest began to run here: part of its memory is still at the source; QEMU "
		 "waits paused for it (postcopy-paused) and the source never runs the guest "
		 "again (docs/postcopy.md, \"A broken link\")", why);
	rc->outcome = PROXY_LINK;
}

/* After a resumed stream's end: QEMU completes once it loaded the rest. */
static bool dest_completed(struct qmp *q, volatile int *sig)
{
	char st[32];

	for (uint64_t t0 = tsb_now_ns(); tsb_now_ns() - t0 < 30000000000ull && *sig <= 1;) {
		if (migration_status(q, st, sizeof(st)) == 0 && !strcmp(st, "completed"))
			return true;
		usleep(50000);
	}
	return false;
}

/* One resumed leg: QEMU's recovery socket relayed to c until the end. */
static int resume_leg(struct receiver *rc, struct qmp *q, struct wire_conn *c,
		      const char *dir, uint64_t deadline_ns, volatile int *sig,
		      char *err, size_t errlen)
{
	int qfd, r;

	r = resume_destination(q, dir, deadline_ns, sig, &qfd, err, errlen);
	if (r < 0)
		return r;
	tsb_fault_point("postcopy-resume-accepted");
	r = resume_relay(c, qfd, WIRE_ROLE_RECEIVER, (int)(rc->o->c.stall_ms ?
			 rc->o->c.stall_ms : 60000), sig, NULL, &rc->resumed, err, errlen);
	close(qfd);
	if (r == 0 && !dest_completed(q, sig)) {
		snprintf(err, errlen, "the resumed stream ended but QEMU did not complete");
		r = -EIO;
	}
	if (r == 0)
		r = commit_answer(c, WIRE_OUTCOME_RUNNING, "destination running, resumed");
	return r;
}

/*
 * The link broke after the guest began to run here: QEMU pauses
 * (postcopy-paused) and waits; the sender comes back to resume the
 * stream (resume.h), again after every break, until --recover-timeout.
 * True when the migration completed that way.
 */
static bool recv_recover(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
			 volatile int *sig)
{
	const struct proxy_recv_options *o = rc->o;
	struct commit_link l = {
		.c = &o->c, .tls = tls, .addr = o->listen, .id = rc->rec.id, .sig = sig,
		.credential = rc->credential,
		.deadline_ns = tsb_now_ns() + o->c.recover_timeout_ms * 1000000,
	};
	char dir[] = "/tmp/tsubame-resume-XXXXXX", err[512] = "";
	struct wire_conn *c;
	bool resolve;
	int r = -ETIMEDOUT;

	recv_stop_threads(rc);
	rc->arrival.failed = true;	/* the resumed pages are not recorded */
	if (!mkdtemp(dir)) {
		log_warn("cannot resume the postcopy: %s: %s", dir, strerror(errno));
		return false;
	}
	log_warn("%s; waiting for the sender to resume it (for up to %llu s)", rc->error,
		 (unsigned long long)(o->c.recover_timeout_ms / 1000));
	while (tsb_now_ns() < l.deadline_ns && *sig <= 1) {
		r = resume_await(&l, &c, &resolve);
		if (r < 0)
			break;
		if (resolve) {
			/* It missed our OUTCOME when the link broke: the guest runs here. */
			if (resume_answer_resolver(c) < 0)
				log_warn("resume: the sender's question about the commit went "
					 "unanswered");
			wire_conn_free(c);
			continue;
		}
		rc->recoveries++;
		r = resume_leg(rc, q, c, dir, l.deadline_ns, sig, err, sizeof(err));
		wire_conn_free(c);
		if (r == 0)
			break;
		log_warn("resuming the postcopy: %s; waiting for the sender again",
			 err[0] ? err : strerror(-r));
	}
	(void)rmdir(dir);
	if (r < 0) {
		snprintf(rc->error + strlen(rc->error), sizeof(rc->error) - strlen(rc->error),
			 "; not resumed (%s)", r == -ETIMEDOUT ? "--recover-timeout passed" :
			 err[0] ? err : strerror(-r));
		return false;
	}
	log_notice("the postcopy resumed after the link broke and completed (%u connection(s))",
		   rc->recoveries);
	rc->recovered = true;
	rc->completed_ns = tsb_now_ns();
	rc->outcome = PROXY_OK;
	rc->error[0] = '\0';
	rc->failed = 0;
	return true;
}

/*
 * Postcopy, after the commit: the guest runs here while the rest of its
 * memory arrives; the migration ends when QEMU has all of it. A stream
 * that breaks now leaves the guest running here without that memory:
 * QEMU waits (postcopy-paused), the source never runs it again.
 */
static void wait_postcopy_done(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
			       volatile int *sig)
{
	char st[32];
	struct qmp_event ev;
	uint64_t closed_ns = 0;
	int r;

	while (!rc->completed_ns && !rc->failed) {
		/* Events only wake us: the commit's own waits may have taken them. */
		r = qmp_next_event(q, 100, &ev);
		if (r == 0)
			qmp_event_fini(&ev);
		else if (r != -ETIMEDOUT)
			recv_fail(rc, PROXY_FAILED, "the destination QEMU went away: %s",
				  strerror(-r));
		if (rc->failed)
			break;
		/* The link first: QEMU may not answer while the guest waits for a page. */
		if (*sig) {
			recv_fail(rc, PROXY_INTERRUPTED, "interrupted by signal %d", *sig);
			break;
		}
		if (rc->link_lost && !rc->sender_closed) {
			recv_fail(rc, PROXY_LINK, "the link to the sender broke");
			break;
		}
		if (migration_status(q, st, sizeof(st)) < 0) {
			recv_fail(rc, PROXY_FAILED, "the destination QEMU does not answer");
			break;
		}
		if (!rc->ran_in_postcopy && !strcmp(st, "postcopy-active")) {
			rc->ran_in_postcopy = true;
			log_info("the guest runs here while the rest of its memory arrives");
		}
		if (!strcmp(st, "completed"))
			rc->completed_ns = tsb_now_ns();
		else if (!strcmp(st, "postcopy-paused") || !strcmp(st, "failed"))
			recv_fail(rc, PROXY_LINK, "QEMU: %s", st);
		/* A clean close comes after the last bytes: QEMU still reads them. */
		else if (rc->sender_closed && !closed_ns)
			closed_ns = tsb_now_ns();
		else if (closed_ns && tsb_now_ns() - closed_ns > 30000000000ull)
			recv_fail(rc, PROXY_LINK, "the sender closed before QEMU had all memory");
	}
	if (!rc->failed)
		return;
	postcopy_broken(rc, rc->error);
	if (rc->o->c.recover_timeout_ms && *sig <= 1)
		(void)recv_recover(rc, q, tls, sig);
}

/*
 * Switchover (docs/protocol.md): the guest is loaded and paused. Keep a
 * record, say PREPARED, and run or discard the guest as the sender decides.
 * Without a decision within --commit-timeout the guest stays paused, the
 * record stays, and the outcome is PROXY_IN_DOUBT.
 */
void recv_settle(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
		   volatile int *sig, uint64_t *ret_resume_ns)
{
	const struct proxy_recv_options *o = rc->o;
	struct wire_conn *c = NULL;
	char err[512], text[96];
	bool sent = false, early;
	int d, outcome;

	/*
	 * QEMU's last word on the return path (SHUT) goes out before PREPARED;
	 * in postcopy the return path serves faults until the end.
	 */
	for (uint64_t t0 = tsb_now_ns(); !rc->in_postcopy && !rc->rp_shut &&
	     tsb_now_ns() - t0 < 10000000000ull;)
		usleep(5000);
	tsb_fault_point("dest-loaded");
	log_debug("switchover: QEMU's return path said SHUT");
	disk_recv_stop_listening(rc->rb.disk);
	/*
	 * Committed early (the sender's DECISION came with the stream): the
	 * guest is ours to run once the disks are complete too; no PREPARED,
	 * no round trip inside the downtime. A link lost from here is only
	 * a lost link: the decision is known.
	 */
	early = rc->decision == WIRE_DECIDE_COMMIT;
	if (early) {
		rc->prepared = true;
		if (rc->failed) {	/* the link broke just before */
			recv_discard_loading(rc, q, tls, sig);
			return;
		}
	}
	/*
	 * The record first: its fsync overlaps the disks' last writes and
	 * flush. A record without PREPARED is what a crash right after
	 * PREPARED would leave too: the sender's decision settles it.
	 */
	snprintf(rc->rec.state, sizeof(rc->rec.state), early ? "commit" : "prepared");
	if (!early && record_save(o->c.state_dir, &rc->rec, err, sizeof(err)) < 0) {
		recv_fail(rc, PROXY_FAILED, "%s; the guest cannot be held here", err);
		return;
	}
	/* PREPARED promises the disks too: every write applied and flushed. */
	if (disk_recv_wait_done(rc->rb.disk, o->c.stall_ms ? o->c.stall_ms : 60000, sig, err,
				sizeof(err)) < 0) {
		record_drop(o->c.state_dir, &rc->rec);
		recv_fail(rc, *sig ? PROXY_INTERRUPTED : PROXY_LINK,
			  "the disks did not arrive complete (%s); the source keeps the guest", err);
		if (early)
			recv_discard_loading(rc, q, tls, sig);
		return;
	}
	tsb_fault_point("disks-done");
	log_debug("switchover: the record is kept and the disks are complete");
	if (early) {
		d = WIRE_DECIDE_COMMIT;
	} else {
		rc->prepared = true;
		if (send_status_locked(rc, WIRE_MSG_PREPARED, WIRE_CODE_OK, "loaded") < 0)
			rc->link_lost = true;
		tsb_fault_point("prepared-sent");
		d = await_decision(rc, q, tls, sig, &c);
	}
	if (d == -EIO) {
		/* The QEMU holding the guest is gone: it can never run here. */
		recv_fail(rc, PROXY_FAILED, "the destination QEMU died while the guest waited for "
			  "the switchover; the source takes it back");
		d = 0;
	} else if (d < 0) {
		rc->failed = 1;
		snprintf(rc->error, sizeof(rc->error),
			 "in doubt: the sender's decision did not arrive%s; the guest stays "
			 "paused here. Run 'tsubame resolve %s' on the source host, then "
			 "what it says here (--state-dir %s)",
			 d == -EINTR ? " (interrupted)" : " within --commit-timeout", rc->rec.id,
			 o->c.state_dir);
		rc->outcome = PROXY_IN_DOUBT;
		return;
	}
	outcome = WIRE_OUTCOME_DISCARDED;
	snprintf(text, sizeof(text), "discarded");
	if (d == WIRE_DECIDE_COMMIT) {
		snprintf(rc->rec.state, sizeof(rc->rec.state), "commit");
		if (record_save(o->c.state_dir, &rc->rec, err, sizeof(err)) < 0)
			log_warn("%s", err);
		tsb_fault_point("commit-received");
		log_debug("switchover: the commit is recorded; running the guest");
		/* The VM's addresses follow it here once it is ours to run. */
		content_net_notify(o->c.net_agent, rc->vm, o);
		if (commit_run_destination(q, ret_resume_ns, err, sizeof(err)) == 0) {
			outcome = WIRE_OUTCOME_RUNNING;
			rc->running_ns = tsb_now_ns();
			snprintf(text, sizeof(text), "destination running resume_ns=%llu",
				 (unsigned long long)*ret_resume_ns);
			tsb_fault_point("dest-running");
			log_debug("switchover: the guest runs");
		} else {
			recv_fail(rc, PROXY_FAILED, "the destination QEMU could not run the "
				  "guest: %s; the source takes it back", err);
		}
	} else {
		commit_discard_destination(q);
		recv_fail(rc, PROXY_FAILED, "the sender aborted the switchover; the destination "
			  "discarded the guest");
	}
	/*
	 * Discarded: no record, nothing here. Running: the record stays until
	 * the sender heard it, so that no record here always means no guest
	 * of this migration runs here (the source's resolve relies on it
	 * after an early commit).
	 */
	if (outcome != WIRE_OUTCOME_RUNNING)
		record_drop(o->c.state_dir, &rc->rec);
	if (outcome == WIRE_OUTCOME_RUNNING && rc->in_postcopy && !c) {
		/* The sender hears it now; the rest of the guest's memory follows. */
		sent = send_status_locked(rc, WIRE_MSG_OUTCOME, (uint32_t)outcome, text) == 0;
		tsb_fault_point("postcopy-running");
		wait_postcopy_done(rc, q, tls, sig);
		if (rc->recovered) {
			/* The sender heard OUTCOME on the resumed connection. */
			record_drop(o->c.state_dir, &rc->rec);
			return;
		}
	}
	/* The decision came over a new connection: the stream is gone. */
	if (outcome == WIRE_OUTCOME_RUNNING && rc->in_postcopy && c && !rc->failed)
		postcopy_broken(rc, "the decision came over a new connection");
	if (tell_outcome(rc, tls, sig, c, outcome, text, sent)) {
		if (outcome == WIRE_OUTCOME_RUNNING)
			record_drop(o->c.state_dir, &rc->rec);
		return;
	}
	log_warn("the sender %s that the guest %s here; if not, it reports the migration in "
		 "doubt until 'tsubame resolve %s' runs there%s",
		 sent ? "may not have heard" : "did not hear",
		 outcome == WIRE_OUTCOME_RUNNING ? "runs" : "was discarded", rc->rec.id,
		 outcome == WIRE_OUTCOME_RUNNING ? " (this host keeps its record: 'tsubame "
		 "resolve ID --commit' here finds the guest running)" : "");
}

void recv_discard_loading(struct receiver *rc, struct qmp *q, struct wire_tls *tls,
			  volatile int *sig)
{
	uint64_t t0 = tsb_now_ns(), limit = (rc->o->c.stall_ms ? rc->o->c.stall_ms : 10000) * 1000000;

	/* Nothing half-loaded may run here; OUTCOME DISCARDED only after this. */
	commit_discard_destination(q);
	/* The sender's reconnection comes to this port. */
	disk_recv_stop_listening(rc->rb.disk);
	/*
	 * Not committed yet as far as we know: tell why we failed (a sender
	 * that has not committed gives up and closes), and read on in case
	 * its early DECISION crossed our ERROR.
	 */
	if (rc->decision != WIRE_DECIDE_COMMIT && !rc->link_lost) {
		if (send_status_locked(rc, WIRE_MSG_ERROR, WIRE_CODE_QEMU, rc->error) == 0)
			rc->error_sent = true;
		while (!rc->decision && !rc->link_lost && *sig <= 1 && tsb_now_ns() - t0 < limit)
			usleep(2000);
	}
	/* A link lost before a decision came: the sender may not have committed. */
	if (rc->decision != WIRE_DECIDE_COMMIT)
		return;
	log_warn("the sender committed before the guest was loaded here; telling it the "
		 "guest was discarded, so that its source runs it again");
	if (!tell_outcome(rc, tls, sig, NULL, WIRE_OUTCOME_DISCARDED, "discarded: not loaded",
			  false))
		log_warn("the sender did not hear that the guest was discarded here: its "
			 "'tsubame resolve %s' and this host's (no record: nothing here) settle "
			 "it", rc->rec.id);
}

/* ---- libvirt drives the destination QEMU (docs/libvirt.md) ---- */

void recv_wait_loaded_libvirt(struct receiver *rc, volatile int *sig)
{
	const struct proxy_recv_options *o = rc->o;
	uint64_t t0 = tsb_now_ns();

	/* QEMU closes once it loaded the stream's end: its SHUT went out first. */
	while (!rc->failed && !rc->qemu_closed) {
		usleep(5000);
		if (*sig && !rc->failed)
			recv_fail(rc, PROXY_INTERRUPTED, "interrupted by signal %d", *sig);
		if (rc->rp_done && !rc->qemu_closed && !rc->failed)
			recv_fail(rc, PROXY_FAILED, "the destination QEMU's return path failed");
		if (o->c.timeout_ms && (tsb_now_ns() - t0) / 1000000 > o->c.timeout_ms)
			recv_fail(rc, PROXY_TIMEOUT, "the migration did not finish in time");
	}
	if (!rc->failed && !rc->shut_parsed)
		recv_fail(rc, PROXY_FAILED, "the destination QEMU closed the stream without "
			  "loading it (no SHUT on its return path)");
}

void recv_settle_libvirt(struct receiver *rc, volatile int *sig)
{
	const struct proxy_recv_options *o = rc->o;
	char err[512];
	uint64_t t0 = tsb_now_ns(), limit = o->c.commit_timeout_ms * 1000000;

	tsb_fault_point("dest-loaded");
	rc->prepared = true;
	if (send_status_locked(rc, WIRE_MSG_PREPARED, WIRE_CODE_OK, "loaded") < 0) {
		recv_fail(rc, PROXY_LINK, "the link to the sender broke once the guest was "
			  "loaded; libvirt decides whether it runs here");
		return;
	}
	/* libvirt's Finish and Confirm run meanwhile; the sender tells how they ended. */
	while (!rc->decision && !rc->link_lost && *sig <= 1 && tsb_now_ns() - t0 < limit)
		usleep(5000);
	if (!rc->decision) {
		recv_fail(rc, *sig ? PROXY_INTERRUPTED : PROXY_LINK, "the sender did not say "
			  "how libvirt's migration ended; libvirt decides whether the guest runs "
			  "here ('virsh list'), this store keeps no arrival image");
		return;
	}
	if (rc->decision != WIRE_DECIDE_COMMIT) {
		(void)send_status_locked(rc, WIRE_MSG_OUTCOME, WIRE_OUTCOME_DISCARDED, "discarded");
		recv_fail(rc, PROXY_FAILED, "libvirt's migration failed at the source's end; "
			  "libvirt keeps the guest there");
		return;
	}
	/* libvirt ran the guest after its mirror's last flush: the disks are complete. */
	if (disk_recv_wait_done(rc->rb.disk, o->c.stall_ms ? o->c.stall_ms : 60000, sig, err,
				sizeof(err)) < 0) {
		(void)send_status_locked(rc, WIRE_MSG_OUTCOME, WIRE_OUTCOME_RUNNING,
					 "destination running (libvirt)");
		recv_fail(rc, PROXY_LINK, "disks: %s; libvirt runs the guest here, this store "
			  "keeps no arrival image", err);
		return;
	}
	rc->running_ns = tsb_now_ns();
	content_net_notify(o->c.net_agent, rc->vm, o);
	(void)send_status_locked(rc, WIRE_MSG_OUTCOME, WIRE_OUTCOME_RUNNING,
				 "destination running (libvirt)");
	for (t0 = tsb_now_ns(); !rc->sender_closed && !rc->link_lost &&
	     tsb_now_ns() - t0 < 10000000000ull;)
		usleep(10000);
}
