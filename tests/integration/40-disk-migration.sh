#!/usr/bin/env bash
# Whole-VM migration with a local disk (docs/disk.md): the guest writes
# records with known content to its disk, one by one and fsynced, during
# the whole migration; memory is verified by memverify. Afterwards the
# guest carries on at the destination, and an offline check of both
# images finds every record the guest wrote (none lost at the switchover).
# DISK_FORMAT=qcow2 runs the same with qcow2 images (41-disk-qcow2.sh).
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST" qemu-img python3
fmt=${DISK_FORMAT:-raw}
check="$top/tests/integration/disk-check.py"
gunzip -c "$GUEST_DIR/initrd.img" | cpio -i --to-stdout init 2>/dev/null | grep -q diskwrite ||
	skip "the guest in $GUEST_DIR has no diskwrite workload (rebuild it: scripts/build-guest)"

base=8192 blocks=1024
"$MEMVERIFY_HOST" --make-disk "$T/orig.img" --size 64M --seed 21 >/dev/null
qemu-img convert -f raw -O "$fmt" "$T/orig.img" "$T/a.img"
qemu-img create -q -f "$fmt" "$T/b.img" 64M
workload="tsb.mode=memverify,diskwrite tsb.mem=48 tsb.seed=21 tsb.disk=/dev/vda tsb.dwbase=$base tsb.dwblocks=$blocks"
start_vm a "$workload" --disk "$T/a.img,format=$fmt"
wait_beat a 1 300 >/dev/null
grep -aq 'diskwrite record' "$T/a/serial.log" || sleep 5
start_dest_vm b "$workload" --disk "$T/b.img,format=$fmt"
tsubame_migrate a b d "--store $T/store-a --vm-id d ${DISK_TEST_ARGS:-}" "--store $T/store-b ${DISK_TEST_ARGS:-}"
verify_after a b
# The guest keeps writing at the destination.
for ((i = 0; i < 600; i++)); do
	grep -aq 'diskwrite record' "$T/b/serial.log" && break
	sleep 0.1
done
grep -aq 'diskwrite record' "$T/b/serial.log" || fail "the guest stopped writing its disk"
grep -aq 'diskwrite: record .* failed' "$T/b/serial.log" && fail "a disk write failed at the destination"
[ ! -e "$T/b.img.tsubame-incomplete" ] || fail "the target is still marked incomplete"

"$TSUBAME" vm stop --dir "$T/a" >/dev/null
"$TSUBAME" vm stop --dir "$T/b" >/dev/null
to_raw() {
	if [ "$fmt" = raw ]; then echo "$1"; else
		qemu-img convert -f "$fmt" -O raw "$1" "$1.raw" && echo "$1.raw"
	fi
}
ma=$(python3 "$check" "$T/orig.img" "$(to_raw "$T/a.img")" $base $blocks) ||
	fail "source image: $ma"
mb=$(python3 "$check" "$T/orig.img" "$(to_raw "$T/b.img")" $base $blocks) ||
	fail "destination image: $mb"
[ "$ma" -ge 0 ] && [ "$mb" -ge "$ma" ] ||
	fail "destination image has records up to $mb, the source had $ma"
log "records: source stopped at $ma, destination carried on to $mb; both images consistent"

python3 - "$T" <<'PY' || fail "disk report"
import json, sys
t = sys.argv[1]
s = json.load(open(t + "/d-send.json")); r = json.load(open(t + "/d-recv.json"))
sd = s["disks"]["disks"][0]; rd = r["disks"]["disks"][0]
print("disk: %s; ready after %d ms; blocks %s; %.1f MB on the disk channel" % (
    sd["device"], sd["ready_ms"], sd["blocks"], s["disks"]["channel_net_out"] / 1e6), file=sys.stderr)
assert rd["complete"], rd
assert sd["blocks"]["data"] + sd["blocks"]["ref"] >= 8192, sd  # the 32 MiB of data at least
PY
exit 0
