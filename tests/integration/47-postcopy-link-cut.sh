#!/usr/bin/env bash
# A link cut during postcopy (docs/postcopy.md, "A broken link"), fired by
# the protocol point itself:
#  1. after the source switched to postcopy, before the commit (the
#     destination loaded the device state, paused): the source runs the
#     guest on and verifies it; the destination never runs it. Or, when
#     QEMU 7.2's cancel of a postcopy loses its race and pauses the
#     migration instead (postcopy-paused): neither runs it, send and recv
#     exit 7 and send says so (the destination keeps its copy for a
#     postcopy recovery).
#  2. after the commit, once the guest runs at the destination, for longer
#     than --recover-timeout (a shorter break is resumed:
#     48-postcopy-recover.sh): the source never runs the guest again; both
#     ends exit 4 and say so, and that the postcopy was not resumed; the
#     destination's QEMU waits for the rest of the memory (postcopy-paused,
#     or under TCG no QMP answer while a vCPU waits for a page).
# Never two copies running.
: "${VM_MEM:=131076K}"
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

"$TSUBAME" keygen "$T/key" >/dev/null
workload="tsb.mode=memverify tsb.mem=24 tsb.seed=23 tsb.vmid=7 tsb.random=50 tsb.dup=0 tsb.dirty=8 tsb.wss=8"
common="--key $T/key --no-store --commit-timeout 6s --stall-timeout 4s --recover-timeout 3s --no-progress"
srcvm=src
start_vm src "$workload"
wait_beat src 2 120 >/dev/null || fail "the guest did not start verifying"

status_of() {
	"$TSUBAME" qmp --timeout 2 --qmp "$T/$1/qmp.sock" "$2" 2>/dev/null |
		sed -n 's/.*"status": *"\([a-z-]*\)".*/\1/p' | head -1 || true
}

# cut_case NAME POINT COMMAND DST: a postcopy migration from src to a fresh
# DST with COMMAND fired at recv's POINT; sets rs and rr (exit codes).
cut_case() {
	local name=$1 point=$2 cmd=$3 dst=$4 rport wport rpid
	start_dest_vm "$dst" "$workload"
	rport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$rport" 100mbit 10ms
	export WANEM_PID=${cleanup_pids[-1]}
	# shellcheck disable=SC2086 # word lists
	TSUBAME_FAULT_AT=$point TSUBAME_FAULT_CMD=$cmd \
	"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/$dst/qmp.sock" $common \
		--state-dir "$T/state-b" 2>"$T/$name-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$rport" 30 || fail "$name: recv did not listen: $(cat "$T/$name-recv.log")"
	rs=0 rr=0
	# shellcheck disable=SC2086
	"$TSUBAME" send --qmp "$T/$srcvm/qmp.sock" --to "127.0.0.1:$wport" $common \
		--state-dir "$T/state-a" --postcopy-after 2s --timeout 120s \
		2>"$T/$name-send.log" || rs=$?
	wait "$rpid" || rr=$?
	grep -q "fault injection at '$point'" "$T/$name-recv.log" ||
		fail "$name: the fault at $point did not fire: $(tail -3 "$T/$name-recv.log")"
	grep -q "switching to postcopy" "$T/$name-send.log" ||
		fail "$name: the migration never switched to postcopy"
	log "$name: send $rs, recv $rr"
}

# 1. Before the commit: the link is down for 2 s while the destination holds
# the device state, paused. The source takes the guest back.
cut_case before-commit dest-loaded \
	'kill -USR1 $WANEM_PID; (sleep 2; kill -USR2 $WANEM_PID) >/dev/null 2>&1 &' dst1
[ "$(status_of dst1 query-status)" = running ] && fail "before-commit: the destination runs the guest"
if [ "$rs" = 7 ]; then
	# QEMU 7.2 paused instead of cancelling: loud, and nothing discarded.
	grep -q "cannot run the guest again" "$T/before-commit-send.log" ||
		fail "before-commit: send exit 7 without saying why: $(tail -2 "$T/before-commit-send.log")"
	[ "$rr" = 7 ] || fail "before-commit: recv exit $rr, expected 7 (it keeps the copy)"
	[ "$(status_of src query-status)" = running ] && fail "before-commit: the source runs after exit 7"
	log "before-commit: QEMU paused the postcopy instead of cancelling it; neither runs, both said so"
	kill -9 "$(cat "$T/src/qemu.pid")" "$(cat "$T/dst1/qemu.pid")" 2>/dev/null || true
	srcvm=src2
	start_vm src2 "$workload"
	wait_beat src2 2 120 >/dev/null || fail "the second guest did not start verifying"
else
	[ "$rs" = 4 ] || fail "before-commit: send exit $rs, expected 4: $(tail -3 "$T/before-commit-send.log")"
	[[ " 1 4 " == *" $rr "* ]] ||
		fail "before-commit: recv exit $rr, expected 1 or 4: $(tail -3 "$T/before-commit-recv.log")"
	[ "$(status_of src query-status)" = running ] || fail "before-commit: the source does not run"
	last=$(grep -a -o 'beat [0-9]* ok' "$T/src/serial.log" | tail -1 | awk '{print $2}')
	wait_beat src "$last" 90 >/dev/null || fail "before-commit: the source stopped verifying"
	grep -aq CORRUPT "$T/src/serial.log" && fail "before-commit: the source found corrupted memory"
	kill -9 "$(cat "$T/dst1/qemu.pid")" 2>/dev/null || true
fi

# 2. After the commit: the guest runs at the destination; the link goes for good.
cut_case after-commit postcopy-running 'kill -USR1 $WANEM_PID' dst2
[ "$rs" = 4 ] || fail "after-commit: send exit $rs, expected 4: $(tail -3 "$T/after-commit-send.log")"
[ "$rr" = 4 ] || fail "after-commit: recv exit $rr, expected 4: $(tail -3 "$T/after-commit-recv.log")"
grep -q "during postcopy" "$T/after-commit-send.log" ||
	fail "after-commit: send does not say the link broke during postcopy: $(tail -2 "$T/after-commit-send.log")"
grep -q "during postcopy" "$T/after-commit-recv.log" ||
	fail "after-commit: recv does not say the link broke during postcopy: $(tail -2 "$T/after-commit-recv.log")"
for side in send recv; do
	grep -q "resum" "$T/after-commit-$side.log" ||
		fail "after-commit: $side did not try to resume: $(tail -2 "$T/after-commit-$side.log")"
	grep -q "not resumed" "$T/after-commit-$side.log" ||
		fail "after-commit: $side does not say the postcopy was not resumed: $(tail -2 "$T/after-commit-$side.log")"
done
src_st=$(status_of "$srcvm" query-status)
[ "$src_st" = running ] && fail "after-commit: the source runs the guest again (two copies)"
# The destination's QEMU waits for the rest: postcopy-paused, or (TCG) no
# answer at all while a vCPU holding its main lock waits for a page.
dst_mig=$(status_of dst2 query-migrate)
[ "$dst_mig" = postcopy-paused ] || [ -z "$dst_mig" ] ||
	fail "after-commit: the destination's migration is '$dst_mig', expected postcopy-paused"
log "after-commit: source '$src_st', destination migration '${dst_mig:-(no answer)}'"
exit 0
