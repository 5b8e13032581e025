#!/usr/bin/env bash
# tsubame migrate when a tsubame process dies, on the sites and with the
# guest of tsubame-migrate.sh (tests/libvirt/tsubame-lib.sh). Each fault
# is triggered by the step it names (TSUBAME_FAULT_AT, src/common/fault.h:
# the process runs 'kill -9 $PPID', itself, the first time it gets there),
# not by a timer:
#
#   a. a -> b, tsubame recv killed at its first PAGES frame ("precopy"):
#      tsubame migrate exits non-zero with libvirt's or tsubame's reason;
#      the guest runs on at a, still defined there, and verifies (no
#      CORRUPT on its console); b neither runs nor defines it (libvirt's
#      Prepare made a transient domain there, gone with its failed Finish;
#      --persistent defines it only on success). Then a fresh recv: a -> b
#      succeeds and the guest verifies at b.
#   b. b -> a, tsubame migrate itself (the sender, in-process) killed at the
#      first RAM page it parsed ("precopy"): the operator's case of a sender
#      host's process dying mid-stream. Nothing tells libvirt but the source
#      QEMU's broken socket: its job must fail on its own and keep the guest
#      at b (running, defined, verifying; nothing at a); tsubame recv at a
#      ends non-zero. Then a fresh pair: b -> a succeeds.
#   c. a -> b, tsubame recv killed once the destination QEMU loaded the whole
#      guest ("dest-loaded", before PREPARED): libvirt's Finish/Confirm
#      decide. Exactly one copy runs, at a or at b (never both, never none),
#      defined there only, and verifies; tsubame migrate exits 0 iff it runs
#      at b. Which site won is reported, not asserted.
#
# Each case prints one line with its outcome. Exit 0 pass, 1 fail, 77 if
# this machine cannot run it (needs root and libvirt). make check runs it
# against the sanitizer build (meson test libvirt-tsubame-migrate-faults,
# suite integration); by hand:
#
#   tests/libvirt/tsubame-migrate-faults.sh   BUILD=DIR (default build/) or
#                                             TSUBAME=BINARY; GUEST_DIR=...
set -euo pipefail

# shellcheck source=tests/libvirt/tsubame-lib.sh
. "$(dirname "$0")/tsubame-lib.sh"

# A migration here takes seconds (ASan build, loaded machine: < 15 s): a
# hung one ends at tsubame's --timeout, or at the test's guard.
mig_timeout=120s
mig_guard=180

# shellcheck disable=SC2016 # $PPID is the fault command's: the tsubame process
kill_self='TSUBAME_FAULT_CMD=kill -9 $PPID'

# fired TAG SIDE POINT: the log of TAG's SIDE (send or recv) says the fault
# ran at POINT; the process died there, so "command exited" never follows.
fired() {
	grep -q "fault injection at '$3': running" "$LV_T/$1-$2.log" ||
		fail "$1: no fault injection at '$3' in the $2 log: $(tail_logs "$1")"
}

# reason TAG SIDE: the error lines in the log of TAG's SIDE (send or recv)
# and the last line, on one line.
reason() {
	{ grep -Ei 'error|fail|problem' "$LV_T/$1-$2.log" || tail -1 "$LV_T/$1-$2.log"; } |
		tr -s ' \n' ' ' | cut -c1-400
}

# where: the site(s) where the guest runs ("a", "b", "a b" or "").
where() {
	local s out=
	for s in a b; do
		if grep -qx "$name" <<<"$(site_virsh "$s" list --name)"; then
			out="${out:+$out }$s"
		fi
	done
	echo "$out"
}

preflight
sites_up
tsb_setup

# --- a. recv killed mid-stream, a -> b ---------------------------------
t0=$(now)
start_recv b fault-a TSUBAME_FAULT_AT=precopy "$kill_self"
run_migrate a b fault-a
recv_end fault-a 60
fired fault-a recv precopy
[ "$recv_rc" -eq 137 ] || fail "fault-a: tsubame recv exited $recv_rc, not killed (137)"
[ "$mig_rc" -ne 0 ] || fail "fault-a: tsubame migrate exited 0 though its receiver died mid-stream"
[ "$mig_rc" -eq 1 ] || fail "fault-a: tsubame migrate exited $mig_rc, not 1: $(tail_logs fault-a)"
why=$(reason fault-a send)
[ -n "$why" ] || fail "fault-a: tsubame migrate exited $mig_rc without saying why: $(tail_logs fault-a)"
lv_jobs_idle 60
beat=$(check_stayed a b)
rc=$mig_rc
t1=$(now)
trip a b retry-a
check_moved a b
lv_log "case a (recv killed mid-stream, a -> b): migrate exited $rc after" \
	"$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s ($why);" \
	"the guest stayed at a and verified (beat $beat), nothing at b;" \
	"a fresh recv then moved it a -> b in $(since "$t1") s, verifying there"

# --- b. tsubame migrate killed mid-stream, b -> a ------------------------
t0=$(now)
start_recv a fault-b
run_migrate b a fault-b TSUBAME_FAULT_AT=precopy "$kill_self"
fired fault-b send precopy
[ "$mig_rc" -eq 137 ] || fail "fault-b: tsubame migrate exited $mig_rc, not killed (137)"
recv_end fault-b 90
[ "$recv_rc" -ne 0 ] || fail "fault-b: tsubame recv exited 0 though its sender died mid-stream"
why=$(reason fault-b recv)
lv_jobs_idle 60
beat=$(check_stayed b a)
rc=$recv_rc
t1=$(now)
trip b a retry-b
check_moved b a
lv_log "case b (tsubame migrate killed mid-stream, b -> a): recv exited $rc ($why);" \
	"libvirt's job failed on its own, settled after" \
	"$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s: the guest stayed" \
	"at b and verified (beat $beat), nothing at a; a fresh pair then moved it" \
	"b -> a in $(since "$t1") s, verifying there"

# --- c. recv killed once the destination loaded the guest, a -> b -------
t0=$(now)
start_recv b fault-c TSUBAME_FAULT_AT=dest-loaded "$kill_self"
run_migrate a b fault-c
recv_end fault-c 60
fired fault-c recv dest-loaded
[ "$recv_rc" -eq 137 ] || fail "fault-c: tsubame recv exited $recv_rc, not killed (137)"
lv_jobs_idle 60
at=$(where)
case $at in
a)
	[ "$mig_rc" -ne 0 ] ||
		fail "fault-c: tsubame migrate exited 0 but the guest runs at a, not b"
	beat=$(check_stayed a b)
	;;
b)
	[ "$mig_rc" -eq 0 ] ||
		fail "fault-c: the guest runs at b but tsubame migrate exited $mig_rc: $(tail_logs fault-c)"
	check_moved a b
	beat=$(lv_last b "$name")
	;;
'')
	fail "fault-c: the guest runs nowhere (a: $(site_virsh a domstate "$name" 2>&1)," \
		"b: $(site_virsh b domstate "$name" 2>&1)); migrate exited $mig_rc"
	;;
*)
	fail "fault-c: the guest runs at both sites; migrate exited $mig_rc"
	;;
esac
lv_log "case c (recv killed once the destination loaded the guest, a -> b):" \
	"libvirt kept the guest at $at only (verifies, beat $beat); migrate exited $mig_rc" \
	"after $(since "$t0") s ($(reason fault-c send))"

tsb_done
