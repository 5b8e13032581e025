#!/usr/bin/env bash
# Standby sync with a disk (docs/standby.md, "Disks"): a self-verifying
# guest writes records to its 64 MiB disk all along while 'tsubame sync'
# keeps a standby up to date, memory and disk. Then:
#  1. two rounds: the standby's copy of the disk is complete after the
#     first; the second sends the disk as references checked in place
#     (and the records the guest wrote since);
#  2. a round whose disk channel is cut (at the standby's first disk
#     write): it fails, the guest runs on, the next round is kept;
#  3. an evacuation to a fresh, empty target image on the standby's host:
#     the disk is rebuilt there from the standby's copy, only references
#     and the newest records cross; the guest verifies its memory and
#     writes its disk on at the destination, and both images hold every
#     record the guest wrote (disk-check.py).
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST" qemu-img python3
require_guest_feature diskwrite "diskwrite workload"

"$TSUBAME" keygen "$T/key" >/dev/null
base=8192 blocks=1024
"$MEMVERIFY_HOST" --make-disk "$T/orig.img" --size 64M --seed 52 >/dev/null
cp "$T/orig.img" "$T/a.img"
workload="tsb.mode=memverify,diskwrite tsb.mem=48 tsb.seed=52 tsb.disk=/dev/vda tsb.dwbase=$base tsb.dwblocks=$blocks"
start_vm a "$workload" --disk "$T/a.img"
wait_beat a 1 300 >/dev/null || fail "the guest did not start verifying"
for ((i = 0; i < 100; i++)); do
	grep -aq 'diskwrite record' "$T/a/serial.log" && break
	sleep 0.1
done

# standby ROUNDS TAG [env...]: a standby on store-b behind a fresh WAN link; sets $wport.
standby() {
	local sport rounds=$1 tag=$2
	shift 2
	sport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$sport" 200mbit 10ms
	export WANEM_PID=${cleanup_pids[-1]}
	env "$@" "$TSUBAME" recv --standby --listen "127.0.0.1:$sport" --key "$T/key" \
		--store "$T/store-b" --rounds "$rounds" 2>"$T/$tag-standby.log" &
	standby_pid=$!
	cleanup_pids+=("$standby_pid")
	wait_listen "$sport" 30 || fail "$tag: the standby did not listen: $(cat "$T/$tag-standby.log")"
}
# rounds_are JSONL OK... : the round events' ok fields, in order.
rounds_are() {
	python3 - "$@" <<'PY'
import json, sys
rounds = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "round"]
want = [w == "true" for w in sys.argv[2:]]
assert [r["ok"] for r in rounds] == want, rounds
for r in rounds:
    print("round %d: %s, %.1f MB on the WAN, of it %.1f MB disk" % (
        r["round"], "kept" if r["ok"] else "failed", r["wan_bytes"] / 1e6,
        r["disk_bytes"] / 1e6), file=sys.stderr)
PY
}
carries_on() {
	wait_beat a "$(grep -a -o 'beat [0-9]* ok' "$T/a/serial.log" | tail -1 | awk '{print $2}')" 60 \
		>/dev/null || fail "$1: the source stopped verifying"
	grep -aq CORRUPT "$T/a/serial.log" && fail "$1: the source found corrupted memory"
	grep -aq 'diskwrite: record .* failed' "$T/a/serial.log" && fail "$1: a disk write failed"
	return 0
}

# 1. Two rounds.
standby 2 sync
"$TSUBAME" sync --qmp "$T/a/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" --store "$T/store-a" \
	--vm-id d --rounds 2 --interval 1s --json --report "$T/sync.json" \
	>"$T/sync.jsonl" 2>"$T/sync.log" || fail "sync failed: $(tail -5 "$T/sync.log")"
wait "$standby_pid" || fail "the standby failed: $(tail -5 "$T/sync-standby.log")"
rounds_are "$T/sync.jsonl" true true || fail "the rounds: $(cat "$T/sync.jsonl")"
copy=$(find "$T/store-b" -path '*/standby/d/*.raw' | head -1)
[ -n "$copy" ] || fail "no standby copy of the disk in $T/store-b"
[ ! -e "$copy.tsubame-incomplete" ] || fail "the standby's copy is marked incomplete"
python3 - "$T/sync.jsonl" "$T/sync.json" <<'PY' || fail "round 2 sent the disk again"
import json, sys
rounds = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "round"]
a, b = rounds[0]["disk_bytes"], rounds[1]["disk_bytes"]
# Round 1: the disk's content compresses (memverify-host's disk); round 2:
# a reference per block (~45 bytes per 4 KiB) and the newest records.
assert a > 8e6, rounds
assert b < a / 4, rounds
d = json.load(open(sys.argv[2]))["disks"]["disks"][0]
assert d["blocks"]["ref"] > 0.8 * d["size"] / 4096, d
PY
carries_on "rounds"
log "two rounds kept; the standby's copy of the disk: $copy"

# 2. A cut at the standby's first disk write: that round fails, the next is kept.
standby 1 cut TSUBAME_FAULT_AT=disk-first-write \
	TSUBAME_FAULT_CMD='kill -USR1 $WANEM_PID; (sleep 3; kill -USR2 $WANEM_PID) >/dev/null 2>&1 &'
"$TSUBAME" sync --qmp "$T/a/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" --store "$T/store-a" \
	--vm-id d --rounds 1 --interval 1s --json >"$T/cut.jsonl" 2>"$T/cut.log" ||
	fail "sync did not carry on after the cut: $(tail -5 "$T/cut.log")"
wait "$standby_pid" || fail "cut: the standby failed: $(tail -5 "$T/cut-standby.log")"
grep -q "fault injection at 'disk-first-write'" "$T/cut-standby.log" || fail "the cut did not happen"
rounds_are "$T/cut.jsonl" false true || fail "cut: not a failed and a kept round: $(cat "$T/cut.jsonl")"
# Between the failed round and the next, sync said what the standby lacked
# of the disk: the records written since the last kept round (part 1's).
python3 - "$T/cut.jsonl" <<'PY' || fail "cut: no disk staleness: $(cat "$T/cut.jsonl")"
import json, sys
stale = [e for e in map(json.loads, open(sys.argv[1])) if e["event"] == "stale"]
assert stale and stale[0]["disk_stale_bytes"] > 0, stale
print("between the rounds the standby lacked %.2f MB of the disk" % (
    stale[0]["disk_stale_bytes"] / 1e6), file=sys.stderr)
PY
[ ! -e "$copy.tsubame-incomplete" ] || fail "the standby's copy is still marked incomplete"
carries_on "cut"
log "a round cut on its disk channel failed, the next was kept"

# 3. Evacuation to an empty target image at the standby's host. What the
# standby lacks of the disk right before (the round's dirty bitmap) is what
# must cross as data, at least.
qemu-img create -q -f raw "$T/b.img" 64M
start_dest_vm b "$workload" --disk "$T/b.img"
"$TSUBAME" qmp --qmp "$T/a/qmp.sock" query-block >"$T/stale.json" ||
	fail "query-block on the source failed"
tsubame_migrate a b evac "--store $T/store-a --vm-id d" "--store $T/store-b"
verify_after a b
disk_carries_on b
python3 - "$T/evac-send.json" "$T/evac-recv.json" "$T/stale.json" <<'PY' ||
import json, sys
s = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
sd = s["disks"]["disks"][0]; rd = r["disks"]["disks"][0]
bitmaps = [b for d in json.load(open(sys.argv[3])) for b in d["inserted"].get("dirty-bitmaps", [])
           if b["name"].startswith("tsb-standby-")]
assert len(bitmaps) == 1, bitmaps   # the last kept round's only
stale = bitmaps[0]["count"]
print("evacuation: %.2f MB on the disk channel for a %d MiB disk; blocks %s; written %.1f MB; "
      "the standby lacked %.2f MB of it right before" % (
    s["disks"]["channel_net_out"] / 1e6, sd["size"] >> 20, sd["blocks"], rd["bytes_written"] / 1e6,
    stale / 1e6), file=sys.stderr)
# Every block written since the round (unique records) crosses as data.
assert sd["blocks"]["data"] * 4096 >= stale * 0.9, (sd["blocks"], stale)
# What crosses is a reference per block and what the guest wrote since the last round.
assert s["disks"]["channel_net_out"] < sd["size"] * 0.05, s["disks"]
assert sd["blocks"]["ref"] > 0.8 * sd["size"] / 4096, sd
assert rd["complete"], rd
PY
	fail "the evacuation sent the disk again, or not what the standby lacked"
"$TSUBAME" vm stop --dir "$T/a" >/dev/null
"$TSUBAME" vm stop --dir "$T/b" >/dev/null
disk_records_kept "$T/a.img" "$T/b.img"
exit 0
