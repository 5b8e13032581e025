#!/usr/bin/env bash
# Standby sync (docs/standby.md): 'tsubame sync' keeps a standby's store
# close to a running, self-verifying guest; the guest never stops for good
# and never runs at the standby. Then:
#  1. two rounds: the second sends only what changed (the guest rewrites a
#     small working set), as references to the first round for the rest;
#  2. an evacuation (a plain send to a recv on the standby's store) sends
#     little more than what the last round said the standby lacked, and
#     the guest verifies at the destination;
#  3. a link cut in the middle of a round (at the standby's first pages):
#     that round fails, the source runs on, and the next round is kept.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss python3

"$TSUBAME" keygen "$T/key" >/dev/null
# 96 MiB, half of it random; the guest rewrites an 8 MiB working set.
workload="tsb.mode=memverify tsb.mem=96 tsb.seed=31 tsb.vmid=5 tsb.random=50 tsb.dup=0 tsb.dirty=2 tsb.wss=8"
start_vm src "$workload"
wait_beat src 2 120 >/dev/null || fail "the guest did not start verifying"

# standby ROUNDS TAG: a standby on store-b behind a fresh WAN link; sets $wport.
standby() {
	local sport
	sport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$sport" 200mbit 10ms
	export WANEM_PID=${cleanup_pids[-1]}
	"$TSUBAME" recv --standby --listen "127.0.0.1:$sport" --key "$T/key" --store "$T/store-b" \
		--state-dir "$T/state-b" --rounds "$1" --report "$T/$2-standby.json" \
		2>"$T/$2-standby.log" &
	standby_pid=$!
	cleanup_pids+=("$standby_pid")
	wait_listen "$sport" 30 || fail "$2: the standby did not listen: $(cat "$T/$2-standby.log")"
}

# A standby refuses a plain send (it runs no VM), and a plain recv a sync.
standby 1 refused
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" --no-store \
	--timeout 60s --no-progress 2>"$T/refused-send.log" &&
	fail "a plain send to a standby succeeded"
grep -q "this is a standby" "$T/refused-send.log" ||
	fail "the refused send does not say why: $(tail -3 "$T/refused-send.log")"
"$TSUBAME" qmp --timeout 2 --qmp "$T/src/qmp.sock" query-status | grep -q '"running"' ||
	fail "the source does not run after the refused send"
kill "$standby_pid" 2>/dev/null; wait "$standby_pid" 2>/dev/null || true

# 1. Two rounds.
standby 2 sync
"$TSUBAME" sync --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" --store "$T/store-a" \
	--state-dir "$T/state-a" --rounds 2 --interval 1s --json --report "$T/sync.json" \
	>"$T/sync.jsonl" 2>"$T/sync.log" || fail "sync failed: $(tail -5 "$T/sync.log")"
wait "$standby_pid" || fail "the standby failed: $(tail -5 "$T/sync-standby.log")"
# Rounds never switch over: neither side keeps a migration record (or its lock).
leftover=$(find "$T/state-a" "$T/state-b" -type f 2>/dev/null)
[ -z "$leftover" ] || fail "records left after the rounds: $leftover"
python3 - "$T/sync.jsonl" <<'PY' || fail "the rounds are not as expected: $(cat "$T/sync.jsonl")"
import json, sys
rounds = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "round"]
assert [r["ok"] for r in rounds] == [True, True], rounds
a, b = rounds[0]["wan_bytes"], rounds[1]["wan_bytes"]
print("sync: round 1 %.1f MB, round 2 %.1f MB on the WAN; the standby lacked %.1f MB" % (
    a / 1e6, b / 1e6, rounds[1]["stale_bytes"] / 1e6), file=sys.stderr)
# The second round sends what changed (at most the 8 MiB working set and
# the kernel's own writes), not the 48 MiB of random content again.
assert a > 30e6 and b < a / 2, (a, b)
PY
# The source ran on through the rounds: its beats go on.
wait_beat src "$(grep -a -o 'beat [0-9]* ok' "$T/src/serial.log" | tail -1 | awk '{print $2}')" 60 \
	>/dev/null || fail "the source stopped verifying after the rounds"
grep -aq CORRUPT "$T/src/serial.log" && fail "the source found corrupted memory"

# 2. Evacuation: a plain send to a recv on the standby's store.
start_dest_vm dst "$workload"
tsubame_migrate src dst evac "--store $T/store-a" "--store $T/store-b"
verify_after src dst
python3 - "$T/evac-send.json" "$T/sync.json" <<'PY' || fail "the evacuation sent too much"
import json, sys
s = json.load(open(sys.argv[1])); sync = json.load(open(sys.argv[2]))
p = s["pages"]
data = p["data"] * 4096
print("evacuation: %.1f MB on the WAN, %d pages as data, %d reused from the last round; "
      "the round had said %.1f MB lacked (+ %.1f MB/s dirtied)" % (
      s["wan"]["bytes_sent"] / 1e6, p["data"], p["reused"], sync["sync"]["stale_bytes"] / 1e6,
      sync["sync"]["dirty_bytes_per_s"] / 1e6), file=sys.stderr)
# What changed since the round: within the working set and what the kernel wrote.
assert p["reused"] > 10000, p
assert data < 16 << 20, p
PY

# 3. A link cut in a round: that round fails, the source runs on, the next is kept.
start_vm src2 "$workload"
wait_beat src2 2 120 >/dev/null || fail "the second guest did not start verifying"
sport=$(free_port)
wport=$(free_port)
start_wanem "$wport" "$sport" 200mbit 10ms
export WANEM_PID=${cleanup_pids[-1]}
TSUBAME_FAULT_AT=precopy \
TSUBAME_FAULT_CMD='kill -USR1 $WANEM_PID; (sleep 3; kill -USR2 $WANEM_PID) >/dev/null 2>&1 &' \
"$TSUBAME" recv --standby --listen "127.0.0.1:$sport" --key "$T/key" --store "$T/store-c" \
	--rounds 1 2>"$T/cut-standby.log" &
standby_pid=$!
cleanup_pids+=("$standby_pid")
wait_listen "$sport" 30 || fail "cut: the standby did not listen"
"$TSUBAME" sync --qmp "$T/src2/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" \
	--store "$T/store-a2" --rounds 1 --interval 1s --json >"$T/cut.jsonl" 2>"$T/cut-sync.log" ||
	fail "sync did not carry on after the cut: $(tail -5 "$T/cut-sync.log")"
wait "$standby_pid" || fail "the standby failed after the cut: $(tail -5 "$T/cut-standby.log")"
grep -q "fault injection at 'precopy'" "$T/cut-standby.log" || fail "the cut did not happen"
python3 - "$T/cut.jsonl" <<'PY' || fail "not one failed and one kept round: $(cat "$T/cut.jsonl")"
import json, sys
rounds = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "round"]
assert [r["ok"] for r in rounds] == [False, True], rounds
PY
wait_beat src2 "$(grep -a -o 'beat [0-9]* ok' "$T/src2/serial.log" | tail -1 | awk '{print $2}')" 60 \
	>/dev/null || fail "the second guest stopped verifying"
grep -aq CORRUPT "$T/src2/serial.log" && fail "the second guest found corrupted memory"
log "a cut round failed, the next was kept; the guest verifies on"

# 4. The link cut right after the round's DONE went out: the standby may or
# may not have kept that round; the sync counts it failed and the next one
# is kept.
sport=$(free_port)
wport=$(free_port)
start_wanem "$wport" "$sport" 200mbit 10ms
export WANEM_PID=${cleanup_pids[-1]}
"$TSUBAME" recv --standby --listen "127.0.0.1:$sport" --key "$T/key" --store "$T/store-c" \
	2>"$T/done-standby.log" &
standby_pid=$!
cleanup_pids+=("$standby_pid")
wait_listen "$sport" 30 || fail "done: the standby did not listen"
TSUBAME_FAULT_AT=round-done-sent \
TSUBAME_FAULT_CMD='kill -USR1 $WANEM_PID; (sleep 3; kill -USR2 $WANEM_PID) >/dev/null 2>&1 &' \
"$TSUBAME" sync --qmp "$T/src2/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" \
	--store "$T/store-a2" --rounds 1 --interval 1s --json >"$T/done.jsonl" 2>"$T/done-sync.log" ||
	fail "sync did not carry on after the cut at DONE: $(tail -5 "$T/done-sync.log")"
grep -q "fault injection at 'round-done-sent'" "$T/done-sync.log" || fail "the cut at DONE did not happen"
python3 - "$T/done.jsonl" <<'PY' || fail "not one failed and one kept round: $(cat "$T/done.jsonl")"
import json, sys
rounds = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "round"]
assert [r["ok"] for r in rounds] == [False, True], rounds
PY
kill "$standby_pid" 2>/dev/null; wait "$standby_pid" 2>/dev/null || true
wait_beat src2 "$(grep -a -o 'beat [0-9]* ok' "$T/src2/serial.log" | tail -1 | awk '{print $2}')" 60 \
	>/dev/null || fail "the second guest stopped verifying after the cut at DONE"
grep -aq CORRUPT "$T/src2/serial.log" && fail "the second guest found corrupted memory"
log "a round cut after its DONE counted failed, the next was kept"

# 5. Two VMs of one tenant (half their pages shared) in one sync process,
# one standby, one cap: the second VM's first round refers to what the
# first one brought.
shared="tsb.mode=memverify tsb.mem=64 tsb.seed=41 tsb.content=shared:50 tsb.random=50 tsb.dup=0"
start_vm p1 "$shared tsb.vmid=11"
start_vm p2 "$shared tsb.vmid=12"
wait_beat p1 2 120 >/dev/null || fail "p1 did not start verifying"
wait_beat p2 2 120 >/dev/null || fail "p2 did not start verifying"
sport=$(free_port)
wport=$(free_port)
start_wanem "$wport" "$sport" 200mbit 10ms
"$TSUBAME" recv --standby --listen "127.0.0.1:$sport" --key "$T/key" --store "$T/store-p" \
	--rounds 2 2>"$T/plan-standby.log" &
standby_pid=$!
cleanup_pids+=("$standby_pid")
wait_listen "$sport" 30 || fail "plan: the standby did not listen"
cat >"$T/plan.json" <<JSON
{"tenant": "t51", "bandwidth": "100mbit",
 "vms": [{"name": "p1", "qmp": "$T/p1/qmp.sock", "to": "127.0.0.1:$wport"},
         {"name": "p2", "qmp": "$T/p2/qmp.sock", "to": "127.0.0.1:$wport"}]}
JSON
"$TSUBAME" sync --plan "$T/plan.json" --key "$T/key" --store "$T/store-pa" --rounds 1 \
	--json >"$T/plan.jsonl" 2>"$T/plan-sync.log" || fail "sync --plan failed: $(tail -5 "$T/plan-sync.log")"
wait "$standby_pid" || fail "plan: the standby failed: $(tail -5 "$T/plan-standby.log")"
python3 - "$T/plan.jsonl" <<'PY' || fail "the plan's rounds are not as expected: $(cat "$T/plan.jsonl")"
import json, sys
rounds = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "round"]
assert [(r["vm"], r["ok"]) for r in rounds] == [("p1", True), ("p2", True)], rounds
a, b = rounds[0]["wan_bytes"], rounds[1]["wan_bytes"]
print("plan: p1's round %.1f MB, p2's %.1f MB on the WAN" % (a / 1e6, b / 1e6), file=sys.stderr)
# Half of p2's pages are p1's: they go as references (32 bytes, not 4 KiB).
assert b < a * 0.8, (a, b)
PY
for vm in p1 p2; do
	wait_beat $vm "$(grep -a -o 'beat [0-9]* ok' "$T/$vm/serial.log" | tail -1 | awk '{print $2}')" 60 \
		>/dev/null || fail "$vm stopped verifying"
	grep -aq CORRUPT "$T/$vm/serial.log" && fail "$vm found corrupted memory"
done
exit 0
