/*
 * The sender when libvirt drives the migration (docs/libvirt.md): libvirt
 * tells the source QEMU to connect to us (its migration URI) and the
 * destination QEMU to listen where our receiver dials; it runs its own
 * Finish/Confirm handshake, so the guest runs on exactly one side by
 * libvirt's rules. We carry the stream and tell the receiver how libvirt's
 * migration ended, which decides only whether the stores keep the images.
 */
#include "proxy/sender.h"

#include "common/fault.h"
#include "common/log.h"
#include "common/util.h"
#include "disk/disk.h"
#include "wire/tls.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int verdict(const struct sender *s)
{
	const struct proxy_send_options *o = s->o;

	return o->libvirt_verdict ? o->libvirt_verdict(o->libvirt_opaque) : -1;
}

int sender_libvirt_accept(struct sender *s, int *ret_fd, char *err, size_t errlen)
{
	const struct proxy_send_options *o = s->o;
	struct pollfd p = { .events = POLLIN };
	char host[256], port[32];
	int lfd, r;

	if (tsb_split_hostport(o->qemu_listen, host, sizeof(host), port, sizeof(port)) < 0) {
		snprintf(err, errlen, "bad QEMU endpoint '%s': expected HOST:PORT", o->qemu_listen);
		return -1;
	}
	r = wire_tcp_listen(host, port, 1, &lfd);
	if (r < 0) {
		snprintf(err, errlen, "cannot listen for the source QEMU on %s: %s", o->qemu_listen,
			 strerror(-r));
		return -1;
	}
	if (o->libvirt_ready)
		o->libvirt_ready(o->libvirt_opaque);
	p.fd = lfd;
	/* libvirt starts the destination QEMU first; a failure there ends its job. */
	for (;;) {
		r = poll(&p, 1, 100);
		if (r > 0)
			break;
		if (s->abort_flag > 1 || s->failed) {
			snprintf(err, errlen, "%s before the source QEMU connected",
				 s->failed ? s->error : "interrupted");
			close(lfd);
			return -1;
		}
		if (verdict(s) >= 0) {
			snprintf(err, errlen, "libvirt's migration ended before the source QEMU "
				 "connected to %s", o->qemu_listen);
			close(lfd);
			return -1;
		}
	}
	r = wire_tcp_accept(lfd, ret_fd);
	close(lfd);
	if (r < 0) {
		snprintf(err, errlen, "accepting the source QEMU on %s: %s", o->qemu_listen,
			 strerror(-r));
		return -1;
	}
	log_info("the source QEMU connected to %s", o->qemu_listen);
	return 0;
}

/*
 * After asking libvirt to cancel, how long its verdict may take: libvirt
 * cancels QEMU's migration and its disk mirrors, seconds at most. A job
 * that outlives this is stuck in libvirt or QEMU; waiting longer would
 * only hang the operator's command (after a signal: less).
 */
#define LIBVIRT_CANCEL_WAIT_NS (60 * 1000000000ull)
#define LIBVIRT_CANCEL_WAIT_SIGNALLED_NS (10 * 1000000000ull)

/*
 * Waits for libvirt's verdict. When our side fails first (the link, the
 * receiver, --timeout, a signal), libvirt's job is aborted: the source
 * QEMU may wait on a socket nobody reads any more, and without QMP only
 * libvirt can cancel it (then the source runs on). A verdict that does not
 * come after that counts as a failure (0).
 */
static int await_verdict(struct sender *s, uint64_t start_ns)
{
	const struct proxy_send_options *o = s->o;
	uint64_t aborted_ns = 0, wait_ns, tick_ns = 0;
	int v;

	while ((v = verdict(s)) < 0) {
		/* No QMP here: a group's view sees the bytes that went, once a second. */
		if (o->on_tick && tsb_now_ns() - tick_ns >= 1000000000ull) {
			struct wire_conn_stats ws;
			struct proxy_tick t = { .status = "active" };

			sender_link_stats(s, &ws);
			t.wan_out = ws.net_out;
			o->on_tick(o->tick_opaque, &t);
			tick_ns = tsb_now_ns();
		}
		if (s->abort_flag > 1 && !s->failed)
			sender_fail(s, PROXY_INTERRUPTED, "interrupted by signal %d; libvirt's "
				    "migration is cancelled", s->abort_flag);
		if (o->c.timeout_ms && tsb_now_ns() - start_ns > o->c.timeout_ms * 1000000 &&
		    !s->failed)
			sender_fail(s, PROXY_TIMEOUT, "the migration did not finish within "
				    "--timeout; libvirt's migration is cancelled");
		if (s->failed && !aborted_ns && o->libvirt_abort) {
			aborted_ns = tsb_now_ns();
			log_info("asking libvirt to cancel its migration job");
			o->libvirt_abort(o->libvirt_opaque);
		}
		wait_ns = s->abort_flag > 1 ? LIBVIRT_CANCEL_WAIT_SIGNALLED_NS : LIBVIRT_CANCEL_WAIT_NS;
		if (aborted_ns && tsb_now_ns() - aborted_ns > wait_ns) {
			log_error("libvirt's migration job did not end within %llu s of its cancel: "
				  "tsubame stops waiting for it; libvirt still holds the job at the "
				  "source, where the guest ran when it was cancelled (`virsh "
				  "domjobinfo` there; libvirt 9.0 can miss the end of a disk mirror "
				  "job that failed during its cancel, which a restart of libvirtd "
				  "at the source clears while the guest runs on)",
				  (unsigned long long)(wait_ns / 1000000000ull));
			return 0;
		}
		usleep(10000);
	}
	return v;
}

void sender_libvirt_settle(struct sender *s, uint64_t start_ns)
{
	char err[512];
	int v;

	/*
	 * QEMU's stream ends after the destination loaded it (QEMU waits for
	 * the destination's SHUT on the return path before it completes);
	 * libvirt then runs the guest there (Finish) and ends the source
	 * (Confirm), or cancels and keeps it at the source.
	 */
	v = await_verdict(s, start_ns);
	tsb_fault_point("source-completed");
	if (v == 0) {
		(void)decide_on_main(s, WIRE_DECIDE_ABORT);
		if (!s->failed)
			sender_fail(s, PROXY_FAILED, "libvirt's migration failed; the source keeps "
				    "the guest");
		return;
	}
	/* libvirt's verdict is the truth: the guest left (our stream was all there). */
	s->libvirt_ok = true;
	if (s->failed) {
		log_warn("%s; libvirt's migration succeeded all the same (the destination had "
			 "loaded the whole stream): the receiver keeps no arrival image", s->error);
		s->outcome = PROXY_OK;
		return;
	}
	/* PREPARED left the receiver before the source QEMU could complete. */
	for (uint64_t t0 = tsb_now_ns(); !s->prepared && !s->failed &&
	     tsb_now_ns() - t0 < 10000000000ull;)
		usleep(5000);
	/* libvirt's mirror completed: its last flush came back from the receiver. */
	if (s->disks && (disk_send_libvirt_done(s->disks, err, sizeof(err)) < 0 ||
			 disk_send_confirmed(s->disks, 60000, err, sizeof(err)) < 0))
		log_warn("disks: %s; the destination keeps no record of them", err);
	s->decided_commit = true;
	if (!s->prepared || !decide_on_main(s, WIRE_DECIDE_COMMIT) ||
	    outcome_on_main(s) != WIRE_OUTCOME_RUNNING)
		log_warn("the receiver did not confirm the end of the migration: it keeps no "
			 "arrival image for the VM's return (libvirt's migration succeeded)");
	if (!s->peer_outcome)
		s->peer_outcome = WIRE_OUTCOME_RUNNING; /* libvirt's word: drain and close */
}
