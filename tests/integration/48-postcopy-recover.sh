#!/usr/bin/env bash
# A link that breaks during postcopy, after the commit, is recovered
# (docs/postcopy.md, "A broken link"): both QEMUs pause, send reconnects,
# QEMU's own recovery (migrate-recover, migrate with resume) runs over the
# new connection, and the guest carries on at the destination with nothing
# lost. Faults fired by the protocol points themselves:
#  1. the link goes down for 3 s once the guest runs at the destination
#     (recv's postcopy-running): one resumed connection completes it;
#  2. the same, and the link goes down again the moment the first resumed
#     connection has carried 1 MiB of stream, past QEMU's recovery handshake
#     (postcopy-resume-streaming):
#     a second resumed connection completes it.
# Each time: both ends exit 0, the reports say how many connections the
# resume took, the source never runs the guest again, the destination's
# guest verifies its memory. (A break that outlasts --recover-timeout:
# 47-postcopy-link-cut.sh.)
: "${VM_MEM:=131076K}"
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss python3

"$TSUBAME" keygen "$T/key" >/dev/null
workload="tsb.mode=memverify tsb.mem=24 tsb.seed=29 tsb.vmid=8 tsb.random=50 tsb.dup=0 tsb.dirty=8 tsb.wss=8"
common="--key $T/key --no-store --commit-timeout 20s --stall-timeout 4s --recover-timeout 90s --no-progress"

status_of() {
	"$TSUBAME" qmp --timeout 2 --qmp "$T/$1/qmp.sock" "$2" 2>/dev/null |
		sed -n 's/.*"status": *"\([a-z-]*\)".*/\1/p' | head -1 || true
}

# recover_case NAME SRC DST POINTS: a postcopy migration from SRC to a
# fresh DST; at each of recv's POINTS the link goes down for 3 s.
recover_case() {
	local name=$1 src=$2 dst=$3 points=$4 rport wport rpid connections
	start_dest_vm "$dst" "$workload"
	rport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$rport" 50mbit 10ms
	export WANEM_PID=${cleanup_pids[-1]}
	# shellcheck disable=SC2086 # word lists
	TSUBAME_FAULT_AT=$points \
	TSUBAME_FAULT_CMD='kill -USR1 $WANEM_PID; (sleep 3; kill -USR2 $WANEM_PID) >/dev/null 2>&1 &' \
	"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/$dst/qmp.sock" $common \
		--state-dir "$T/state-b" --report "$T/$name-recv.json" 2>"$T/$name-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$rport" 30 || fail "$name: recv did not listen: $(cat "$T/$name-recv.log")"
	# shellcheck disable=SC2086
	"$TSUBAME" send --qmp "$T/$src/qmp.sock" --to "127.0.0.1:$wport" $common \
		--state-dir "$T/state-a" --mode postcopy --timeout 300s \
		--report "$T/$name-send.json" 2>"$T/$name-send.log" ||
		fail "$name: send failed: $(tail -5 "$T/$name-send.log")"
	wait "$rpid" || fail "$name: recv failed: $(tail -5 "$T/$name-recv.log")"
	for p in ${points//,/ }; do
		grep -q "fault injection at '$p'" "$T/$name-recv.log" ||
			fail "$name: the fault at $p did not fire: $(tail -3 "$T/$name-recv.log")"
	done
	grep -q "resumed after the link broke" "$T/$name-send.log" ||
		fail "$name: send does not say the postcopy resumed: $(tail -3 "$T/$name-send.log")"
	connections=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["postcopy"]["resumed"]["connections"])' \
		"$T/$name-send.json")
	log "$name: resumed over $connections connection(s)"
	[ "$connections" -ge "$(tr ',' '\n' <<<"$points" | wc -l)" ] ||
		fail "$name: $connections resumed connection(s) for $points"
	python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); sys.exit(0 if r["postcopy"]["resumed"]["connections"] >= 1 else 1)' \
		"$T/$name-recv.json" || fail "$name: recv's report has no resumed connections"
	[ "$(status_of "$src" query-status)" = running ] && fail "$name: the source runs the guest again"
	[ "$(status_of "$dst" query-migrate)" = completed ] ||
		fail "$name: the destination's migration is not completed"
	verify_after "$src" "$dst"
}

start_vm a "$workload"
wait_beat a 2 120 >/dev/null || fail "the guest did not start verifying"
recover_case once a b postcopy-running
recover_case twice b c postcopy-running,postcopy-resume-streaming
exit 0
