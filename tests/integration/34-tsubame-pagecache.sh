#!/usr/bin/env bash
# Page-cache restore: the guest has read its whole disk into its page
# cache; the destination holds a copy of the disk, so those pages are
# rebuilt from the local disk instead of crossing the WAN.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST"

"$MEMVERIFY_HOST" --make-disk "$T/disk-a.img" --size 64M --seed 14 >/dev/null
cp "$T/disk-a.img" "$T/disk-b.img"
workload="tsb.mode=pagecache tsb.disk=/dev/vda tsb.seed=14"
start_vm a "$workload" --disk "$T/disk-a.img,format=raw"
wait_beat a 2 300 >/dev/null
start_dest_vm b "$workload" --disk "$T/disk-b.img,format=raw"
tsubame_migrate a b pc "--store $T/store-a --vm-id pc" "--store $T/store-b"
verify_after a b

python3 - "$T" <<'PY' || fail "page-cache pages were not rebuilt from the disk"
import json, sys
t = sys.argv[1]
s = json.load(open(t + "/pc-send.json")); r = json.load(open(t + "/pc-recv.json"))
disk_pages = 64 * 256
print("pages %s; rebuilt at B %s; disk index %s; %.1f MB on the WAN for a %.1f MB stream" % (
    s["pages"], r["rebuilt_from"], r.get("disk_index"), s["wan"]["bytes_sent"] / 1e6,
    s["qemu_stream_bytes"] / 1e6), file=sys.stderr)
assert r["disk_index"]["blocks"] > disk_pages * 0.8, r.get("disk_index")  # distinct, non-zero
assert r["rebuilt_from"]["disk"] > r["disk_index"]["blocks"] * 0.8, r["rebuilt_from"]
assert s["pages"]["disk"] > disk_pages * 0.8, s["pages"]
PY
exit 0
