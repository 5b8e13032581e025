#!/usr/bin/env bash
# A sender holding the key but breaking the rules (hostile-sender.c) is
# refused with a reason, and nothing it sent runs: RAM blocks larger than
# the destination VM, and a flood of frames while the receiver waits for
# the answer to its NEED (a bounded backlog, not unbounded memory).
: "${VM_MEM:=131076K}"
. "$(dirname "$0")/lib.sh"
require_guest
requires "${HOSTILE_SENDER:-}"

"$TSUBAME" keygen "$T/key" >/dev/null
n=0
# scenario NAME EXPECTED_REASON
scenario() {
	local port rpid rc=0 out
	n=$((n + 1))
	start_dest_vm "d$n" "tsb.mode=memverify tsb.mem=48"
	port=$(free_port)
	"$TSUBAME" recv --listen "127.0.0.1:$port" --qmp "$T/d$n/qmp.sock" --key "$T/key" \
		--no-store --state-dir "$T/state" 2>"$T/$1-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$port" 30 || fail "$1: recv did not listen"
	out=$("$HOSTILE_SENDER" -t "127.0.0.1:$port" -k "$T/key" -s "$1") || rc=$?
	[ "$rc" -eq 0 ] || fail "$1: the receiver took it (hostile-sender exit $rc: $out)"
	rc=0
	wait "$rpid" || rc=$?
	[ "$rc" -ne 0 ] || fail "$1: recv claimed success"
	grep -q "$2" "$T/$1-recv.log" || fail "$1: no clear reason: $(tail -2 "$T/$1-recv.log")"
	[ "$("$TSUBAME" qmp --timeout 2 --qmp "$T/d$n/qmp.sock" query-status 2>/dev/null |
		grep -c '"running"')" -eq 0 ] || fail "$1: the destination runs something"
	log "$1: $out; recv: $(grep -o "refused: .*" "$T/$1-recv.log" | head -1)"
}
scenario huge-blocks "exceed what the destination VM has"
scenario backlog-flood "while a NEED was outstanding"
exit 0
