#!/usr/bin/env bash
# A guest that writes its disk faster than the link carries (issue 18,
# docs/disk.md "Copy mode"): memverify --diskwrite writes incompressible
# records at $DW_RATE MiB/s (default 16) into a 16 MiB ring of a 64 MiB disk,
# over an emulated 40 Mbit/s link (5 MB/s, 10 ms each way).
#
# 1. --disk-copy-mode background with --timeout 10s: the mirror copies
#    behind the guest, which rewrites its ring faster than the link empties
#    it: the mirror is never ready, send gives up (exit 3) and the source
#    VM goes on running and writing. (DISK_CONVERGE_BACKGROUND=0 skips it.)
# 2. The default, auto: the mirror starts in background; once its first
#    pass is done and it stops converging, send restarts it in
#    write-blocking (the report says when): each guest write reaches the
#    disk channel before the guest sees it done, the channel's window paces
#    the guest to the link, the mirror converges and the migration
#    completes; the guest
#    goes on verifying memory and writing records at the destination, and
#    disk-check.py finds a consistent prefix of the records in both images,
#    the destination's at least as long as the source's (nothing lost).
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST" qemu-img python3
require_guest_feature dwrate "tsb.dwrate"

base=8192 blocks=4096 rate=${DW_RATE:-16}
export WAN_RATE=40mbit WAN_DELAY=10ms
# An empty disk: the bulk copy is zeroes, cheap; what the guest writes is
# what loads the link.
qemu-img create -q -f raw "$T/orig.img" 64M
cp --sparse=always "$T/orig.img" "$T/a.img"
workload="tsb.mode=memverify,diskwrite tsb.mem=16 tsb.seed=45 tsb.disk=/dev/vda"
workload+=" tsb.dwbase=$base tsb.dwblocks=$blocks tsb.dwrate=$rate"
start_vm a "$workload" --disk "$T/a.img,format=raw"
wait_beat a 1 300 >/dev/null
for ((i = 0; i < 100; i++)); do
	grep -aq 'diskwrite record' "$T/a/serial.log" && break
	sleep 0.1
done
grep -aq 'diskwrite record' "$T/a/serial.log" || fail "the guest does not write its disk"
"$TSUBAME" keygen "$T/key" >/dev/null

# rates LOG FROM: the guest's write rates (MiB/s) and longest writes (ms)
# reported after line FROM, as RATE/MAX_MS.
rates() {
	tail -n +"$(($2 + 1))" "$1" | grep -ao 'diskwrite record [0-9]* rate=[0-9.]* max_ms=[0-9]*' |
		sed 's/.*rate=\([0-9.]*\) max_ms=/\1\//' | tr '\n' ' '
}

if [ "${DISK_CONVERGE_BACKGROUND:-1}" = 1 ]; then
	qemu-img create -q -f raw "$T/b0.img" 64M
	start_dest_vm b0 "$workload" --disk "$T/b0.img,format=raw"
	rport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$rport" "$WAN_RATE" "$WAN_DELAY"
	"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/b0/qmp.sock" --key "$T/key" \
		--store "$T/store-b0" 2>"$T/bg-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$rport" 60 || fail "background: recv did not listen: $(cat "$T/bg-recv.log")"
	from=$(wc -l <"$T/a/serial.log")
	rc=0
	"$TSUBAME" send --qmp "$T/a/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" \
		--store "$T/store-a" --vm-id d --no-progress --timeout 10s --disk-copy-mode background \
		--report "$T/bg-send.json" 2>"$T/bg-send.log" || rc=$?
	wait "$rpid" 2>/dev/null || true
	[ "$rc" = 3 ] || fail "background: send exited $rc, expected 3 (did not converge): $(cat "$T/bg-send.log")"
	grep -q "did not converge" "$T/bg-send.log" ||
		fail "background: send gave up for another reason: $(cat "$T/bg-send.log")"
	python3 -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["outcome"] != "timeout")' \
		"$T/bg-send.json" || fail "background: the report's outcome is not timeout"
	log "background: the mirror did not converge in 10 s (guest writing at MiB/s / longest write ms: $(rates "$T/a/serial.log" "$from"))"
	# The source VM runs on: new beats, new records, nothing corrupt.
	last=$(grep -a -o 'beat [0-9]* ok' "$T/a/serial.log" | tail -1 | awk '{print $2}')
	wait_beat a "$last" 30 >/dev/null || fail "background: the source VM stopped"
	n=$(grep -ac 'diskwrite record' "$T/a/serial.log")
	for ((i = 0; i < 50; i++)); do
		[ "$(grep -ac 'diskwrite record' "$T/a/serial.log")" -gt "$n" ] && break
		sleep 0.1
	done
	[ "$(grep -ac 'diskwrite record' "$T/a/serial.log")" -gt "$n" ] ||
		fail "background: the source VM stopped writing its disk"
	grep -aq CORRUPT "$T/a/serial.log" && fail "background: the source found corrupted memory"
	grep -aq 'diskwrite: record .* failed' "$T/a/serial.log" &&
		fail "background: a disk write failed at the source"
	grep -q tsb-mirror <<<"$("$TSUBAME" qmp --qmp "$T/a/qmp.sock" query-block-jobs)" &&
		fail "background: a mirror job is left on the source"
	grep -q tsb-target <<<"$("$TSUBAME" qmp --qmp "$T/a/qmp.sock" query-named-block-nodes)" &&
		fail "background: an NBD node is left on the source"
fi

qemu-img create -q -f raw "$T/b.img" 64M
start_dest_vm b "$workload" --disk "$T/b.img,format=raw"
from=$(wc -l <"$T/a/serial.log")
tsubame_migrate a b d "--store $T/store-a --vm-id d --timeout 120s" "--store $T/store-b"
log "auto: migrated; guest writing meanwhile at MiB/s / longest write ms: $(rates "$T/a/serial.log" "$from")"
verify_after a b
disk_carries_on b

"$TSUBAME" vm stop --dir "$T/a" >/dev/null
"$TSUBAME" vm stop --dir "$T/b" >/dev/null
disk_records_kept "$T/a.img" "$T/b.img"

python3 - "$T" <<'PY' || fail "disk report"
import json, sys
t = sys.argv[1]
s = json.load(open(t + "/d-send.json")); r = json.load(open(t + "/d-recv.json"))
sd = s["disks"]["disks"][0]; rd = r["disks"]["disks"][0]
print("auto: write-blocking from %s ms, mirror ready after %d ms; %d NBD writes, "
      "%.1f MB written, blocks %s; %.1f MB on the disk channel; migration %d ms" % (
          sd.get("write_blocking_from_ms"), sd["ready_ms"], sd["nbd_writes"],
          sd["write_bytes"] / 1e6, sd["blocks"], s["disks"]["channel_net_out"] / 1e6,
          s["total_time_ms"]), file=sys.stderr)
# Background first, then write-blocking once it did not converge.
assert sd["copy_mode"] == "write-blocking", sd
assert 0 < sd["write_blocking_from_ms"] <= sd["ready_ms"], sd
assert rd["complete"], rd
PY
exit 0
