#!/usr/bin/env bash
# Postcopy through tsubame: a self-verifying guest that dirties memory and
# probes a cold area is switched to postcopy after 2 s of precopy
# (--postcopy-after); the switchover is committed at the switch, so the
# destination runs the guest while the rest of its memory arrives (its
# QEMU's migration still postcopy-active once the guest runs there); it
# verifies all its memory, its probe reads every cold page intact, and the
# reports say postcopy ran. The probe lines after the switchover are what
# a fault costs the guest.
: "${VM_MEM:=131076K}"
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss python3

"$TSUBAME" keygen "$T/key" >/dev/null
workload="tsb.mode=memverify tsb.mem=24 tsb.seed=21 tsb.vmid=4 tsb.random=50 tsb.dup=0 tsb.dirty=8 tsb.wss=8 tsb.probe=16 tsb.probe_rate=400"
start_vm src "$workload"
wait_beat src 2 120 >/dev/null || fail "the guest did not start verifying"
grep -aq "^probe [0-9]* ok" "$T/src/serial.log" || fail "the probe does not report"
start_dest_vm dst "$workload"

recv_port=$(free_port)
wan_port=$(free_port)
start_wanem "$wan_port" "$recv_port" 100mbit 10ms
"$TSUBAME" recv --listen "127.0.0.1:$recv_port" --qmp "$T/dst/qmp.sock" --key "$T/key" \
	--no-store --state-dir "$T/state-b" --report "$T/recv.json" 2>"$T/recv.log" &
recv_pid=$!
cleanup_pids+=("$recv_pid")
wait_listen "$recv_port" 30 || fail "recv did not listen: $(cat "$T/recv.log")"

# The "postcopy" fault point (a no-op command here) shows that QEMU entered postcopy.
TSUBAME_FAULT_AT=postcopy TSUBAME_FAULT_CMD=true \
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" --key "$T/key" \
	--no-store --state-dir "$T/state-a" --postcopy-after 2s --downtime-limit 1 \
	--report "$T/send.json" --timeout 300s --no-progress 2>"$T/send.log" ||
	fail "send failed: $(cat "$T/send.log")"
wait "$recv_pid" || fail "recv failed: $(cat "$T/recv.log")"

last_src=$(grep -a -o 'beat [0-9]* ok' "$T/src/serial.log" | tail -1 | awk '{print $2}')
after=$(wait_beat dst "$last_src" 90 | awk '{print $2}')
log "destination verifying, beat $after (source stopped at $last_src)"
# A whole verify sweep and a whole probe cycle (16 MiB at 400 pages/s) after the move.
wait_for_line() { # VM PATTERN SECONDS
	local i
	for ((i = 0; i < $3 * 10; i++)); do
		grep -aq "$2" "$T/$1/serial.log" && return 0
		sleep 0.1
	done
	return 1
}
n_probe=$(grep -a -c "^probe " "$T/dst/serial.log" || true)
wait_for_line dst "^probe $((n_probe + 12)) " 120 || fail "the destination's probe stopped"
grep -aq CORRUPT "$T/dst/serial.log" && fail "destination found corrupted memory (or probe pages)"

python3 - "$T/send.json" "$T/recv.json" <<'PY' || fail "the guest did not run during postcopy: $(grep -i postcopy "$T/recv.log")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["outcome"] == "ok", s.get("error")
r = json.load(open(sys.argv[2]))
assert r["outcome"] == "ok", r.get("error")
# Committed at the switch: the guest ran here while its QEMU was still
# postcopy-active (the field is there only then).
assert r["postcopy"]["ran_before_complete_ms"] >= 0, r["postcopy"]
# Requested pages go ahead of the queue (send_urgent.c): never more than
# were asked for.
pc = s["postcopy"]
assert 0 <= pc["urgent_pages"] <= pc["page_requests"], pc
# The receiver times each page its QEMU asked for, request to arrival.
f = r["postcopy"]["faults"]
assert 0 <= f["served"] <= f["requests"], f
assert f["served"] == 0 or 0 <= f["p50_ms"] <= f["p99_ms"] <= f["max_ms"], f
print("send: total %d ms, downtime %s ms, passes %s; ran %d ms before postcopy completed; "
      "%d page requests, %d pages sent ahead of the queue; served p50 %s ms, p99 %s ms" % (
    s["total_time_ms"], r.get("downtime_ms"), s.get("passes"),
    r["postcopy"]["ran_before_complete_ms"], pc["page_requests"], pc["urgent_pages"],
    f.get("p50_ms"), f.get("p99_ms")))
PY
grep -q "fault injection at 'postcopy'" "$T/send.log" ||
	fail "QEMU never reported postcopy-active: $(tail -3 "$T/send.log")"
grep -a "^probe " "$T/dst/serial.log" | tail -3 | while read -r l; do log "dst $l"; done

# 2. --mode auto, back over a link slower than the guest dirties memory:
# precopy cannot converge, send switches to postcopy by itself and says why.
kill "$(cat "$T/src/qemu.pid")" 2>/dev/null || true
start_dest_vm back "$workload"
recv_port=$(free_port)
wan_port=$(free_port)
start_wanem "$wan_port" "$recv_port" 20mbit 10ms
"$TSUBAME" recv --listen "127.0.0.1:$recv_port" --qmp "$T/back/qmp.sock" --key "$T/key" \
	--no-store --state-dir "$T/state-a" --report "$T/recv2.json" 2>"$T/recv2.log" &
recv_pid=$!
cleanup_pids+=("$recv_pid")
wait_listen "$recv_port" 30 || fail "recv did not listen: $(cat "$T/recv2.log")"
"$TSUBAME" send --qmp "$T/dst/qmp.sock" --to "127.0.0.1:$wan_port" --key "$T/key" \
	--no-store --state-dir "$T/state-b" --mode auto --downtime-limit 50 \
	--report "$T/send2.json" --timeout 300s --no-progress 2>"$T/send2.log" ||
	fail "send --mode auto failed: $(cat "$T/send2.log")"
wait "$recv_pid" || fail "recv failed: $(cat "$T/recv2.log")"
last_src=$(grep -a -o 'beat [0-9]* ok' "$T/dst/serial.log" | tail -1 | awk '{print $2}')
after=$(wait_beat back "$last_src" 90 | awk '{print $2}')
grep -aq CORRUPT "$T/back/serial.log" && fail "back: corrupted memory (or probe pages)"
python3 - "$T/send2.json" "$T/recv2.json" <<'PY' || fail "auto mode did not switch to postcopy: $(grep -i postcopy "$T/send2.log")"
import json, sys
s = json.load(open(sys.argv[1]))
assert s["outcome"] == "ok", s.get("error")
p = s["postcopy"]
assert p["switched"] and p["reason"], p
# The destination saw the switch too.
r = json.load(open(sys.argv[2]))
assert r["postcopy"]["switched"] and r["postcopy"]["at_ms"] >= 0, r.get("postcopy")
print("auto: postcopy after %d ms (%s); total %d ms, passes %s" % (
    p["at_ms"], p["reason"], s["total_time_ms"], s.get("passes")))
PY
log "back verifying, beat $after"
exit 0
