#!/usr/bin/env bash
# Whole-VM migration with a local disk (docs/disk.md): the guest writes
# records with known content to its disk, one by one and fsynced, during
# the whole migration; memory is verified by memverify. Afterwards the
# guest carries on at the destination, and an offline check of both
# images finds every record the guest wrote (none lost at the switchover).
# DISK_FORMAT=qcow2 runs the same with qcow2 images (41-disk-qcow2.sh).
# DISK_RETURN=1: the destination already holds an older copy of the disk
# (10% of its blocks changed since): only about those may cross
# (42-disk-return.sh). About 5% of the blocks are zero in both copies
# (single blocks and 256 KiB runs): the destination writes none of them.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST" qemu-img python3
fmt=${DISK_FORMAT:-raw}
require_guest_feature diskwrite "diskwrite workload"

base=8192 blocks=1024 ret=${DISK_RETURN:-0}
"$MEMVERIFY_HOST" --make-disk "$T/orig.img" --size 64M --seed 21 >/dev/null
if [ "$ret" = 1 ]; then
	# Zero blocks (outside the guest's record ring), in both copies.
	python3 - "$T/orig.img" $base $blocks <<'PY'
import os, random, sys
path, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(7)
total = os.path.getsize(path) // 4096
cand = [b for b in range(total) if not base <= b < base + n]
zero = set(rnd.sample(cand, 400))
for r in rnd.sample(range(0, total // 64), 8):
    zero.update(b for b in range(r * 64, r * 64 + 64) if not base <= b < base + n)
with open(path, "r+b") as f:
    for b in sorted(zero):
        f.seek(b * 4096)
        f.write(bytes(4096))
PY
	# The destination's copy is older: since then 10% of the blocks
	# (outside the guest's record ring) changed at the source.
	qemu-img convert -f raw -O "$fmt" "$T/orig.img" "$T/b.img"
	python3 - "$T/orig.img" $base $blocks <<'PY'
import os, random, sys
path, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(5)
total = os.path.getsize(path) // 4096
cand = [b for b in range(total) if not base <= b < base + n]
with open(path, "r+b") as f:
    for b in rnd.sample(cand, total // 10):
        f.seek(b * 4096)
        f.write(rnd.randbytes(4096))
    # The blocks zero in both copies (outside the ring): no write needed.
    z = 0
    for b in cand:
        f.seek(b * 4096)
        z += not any(f.read(4096))
open(path + ".zero", "w").write("%d\n" % z)
PY
	qemu-img convert -f raw -O "$fmt" "$T/orig.img" "$T/a.img"
else
	qemu-img convert -f raw -O "$fmt" "$T/orig.img" "$T/a.img"
	qemu-img create -q -f "$fmt" "$T/b.img" 64M
fi
workload="tsb.mode=memverify,diskwrite tsb.mem=48 tsb.seed=21 tsb.disk=/dev/vda tsb.dwbase=$base tsb.dwblocks=$blocks"
start_vm a "$workload" --disk "$T/a.img,format=$fmt"
wait_beat a 1 300 >/dev/null
grep -aq 'diskwrite record' "$T/a/serial.log" || sleep 5
start_dest_vm b "$workload" --disk "$T/b.img,format=$fmt"
tsubame_migrate a b d "--store $T/store-a --vm-id d ${DISK_TEST_ARGS:-}" "--store $T/store-b ${DISK_TEST_ARGS:-}"
verify_after a b
# The guest keeps writing at the destination.
disk_carries_on b

"$TSUBAME" vm stop --dir "$T/a" >/dev/null
"$TSUBAME" vm stop --dir "$T/b" >/dev/null
to_raw() {
	if [ "$fmt" = raw ]; then echo "$1"; else
		qemu-img convert -f "$fmt" -O raw "$1" "$1.raw" && echo "$1.raw"
	fi
}
disk_records_kept "$(to_raw "$T/a.img")" "$(to_raw "$T/b.img")"

python3 - "$T" "$ret" "$fmt" <<'PY' || fail "disk report"
import json, sys
t, ret, fmt = sys.argv[1], sys.argv[2] == "1", sys.argv[3]

s = json.load(open(t + "/d-send.json")); r = json.load(open(t + "/d-recv.json"))
sd = s["disks"]["disks"][0]; rd = r["disks"]["disks"][0]
print("disk: %s; ready after %d ms; blocks %s; %.1f MB on the disk channel" % (
    sd["device"], sd["ready_ms"], sd["blocks"], s["disks"]["channel_net_out"] / 1e6), file=sys.stderr)
print("destination: %s" % {k: v for k, v in rd.items() if k not in ("device", "file")},
      file=sys.stderr)
assert rd["complete"], rd
# A raw image that the destination QEMU holds writable (we are root) is
# read and written in the file itself; any other through QEMU's export.
assert rd["checked_in_file"] == rd["written_in_file"] == (fmt == "raw"), (fmt, rd)
total = sd["size"] // 4096
assert sd["blocks"]["data"] + sd["blocks"]["ref"] + sd["blocks"]["zero"] >= total, sd
if ret:
    # 10% changed (+ the guest's own records): about that much crosses.
    assert sd["blocks"]["ref"] >= total * 0.8, sd
    # (data blocks also count re-copies of the guest's records, which
    # compress to almost nothing: bytes are what matters)
    assert s["disks"]["channel_net_out"] <= sd["size"] * 0.2, s["disks"]
    print("return: %.1f%% of the disk size on the disk channel" % (
        100.0 * s["disks"]["channel_net_out"] / sd["size"]), file=sys.stderr)
    # Blocks zero at both ends are not written again (issue 18).
    zero = int(open(t + "/orig.img.zero").read()) * 4096
    print("return: %d bytes zero at both ends; %d found in place, %d zeroed, %d writes" % (
        zero, rd.get("bytes_zero_in_place", 0), rd["bytes_zeroed"], rd["writes"]),
        file=sys.stderr)
    assert rd["bytes_zero_in_place"] >= zero * 0.9, (zero, rd)
    assert rd["bytes_zeroed"] <= zero * 0.1, (zero, rd)
PY
exit 0
