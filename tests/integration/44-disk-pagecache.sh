#!/usr/bin/env bash
# Page-cache restore from a disk moved in the same migration (docs/disk.md):
# the guest holds its whole disk in its page cache; the destination's disk
# starts empty, receives the disk over the disk channel first, and the
# memory pages equal to its blocks are then rebuilt from it instead of
# crossing the WAN a second time.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST" qemu-img python3

"$MEMVERIFY_HOST" --make-disk "$T/disk-a.img" --size 64M --seed 15 >/dev/null
qemu-img create -q -f raw "$T/disk-b.img" 64M
workload="tsb.mode=pagecache tsb.disk=/dev/vda tsb.seed=15"
start_vm a "$workload" --disk "$T/disk-a.img,format=raw"
wait_beat a 2 300 >/dev/null
start_dest_vm b "$workload" --disk "$T/disk-b.img,format=raw"
tsubame_migrate a b pc "--store $T/store-a --vm-id pc" "--store $T/store-b"
verify_after a b
cmp "$T/disk-a.img" "$T/disk-b.img" || fail "the disks differ (the guest only reads them)"

python3 - "$T" <<'PY' || fail "page-cache pages were not rebuilt from the migrated disk"
import json, sys
t = sys.argv[1]
s = json.load(open(t + "/pc-send.json")); r = json.load(open(t + "/pc-recv.json"))
disk_pages = 64 * 256
print("pages %s; rebuilt at B %s; restored from the migrated disk %s; %.1f MB on the "
      "disk channel, %.1f MB for memory" % (
    s["pages"], r["rebuilt_from"], r["disks"]["pages_restored"],
    s["disks"]["channel_net_out"] / 1e6, s["wan"]["bytes_sent"] / 1e6), file=sys.stderr)
assert r["disks"]["pages_restored"] > disk_pages * 0.7, r["disks"]
assert s["pages"]["disk"] > disk_pages * 0.7, s["pages"]
PY
exit 0
