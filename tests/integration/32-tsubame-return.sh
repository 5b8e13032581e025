#!/usr/bin/env bash
# Return migration: a guest moves A -> B, changes part of its memory at B,
# and goes back B -> A. Site A kept the VM's image in its store, so the
# second leg sends about what changed; the rest is rebuilt at A.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

workload="tsb.mode=memverify tsb.mem=96 tsb.seed=12 tsb.vmid=3 tsb.random=50 tsb.dup=10 tsb.dirty=2 tsb.wss=8"
start_vm a "$workload"
wait_beat a 2 120 >/dev/null
start_dest_vm b "$workload"
tsubame_migrate a b leg1 "--store $T/store-a --vm-id vm-r" "--store $T/store-b"
verify_after a b
kill -9 "$(cat "$T/a/qemu.pid")"

# The guest keeps dirtying its 8 MiB working set at B for a few seconds.
sleep 4
start_dest_vm a2 "$workload"
tsubame_migrate b a2 leg2 "--store $T/store-b --vm-id vm-r" "--store $T/store-a"
verify_after b a2

python3 - "$T" <<'PY' || fail "the second leg did not reuse the image left at A"
import json, sys
t = sys.argv[1]
l1 = json.load(open(t + "/leg1-send.json")); l2 = json.load(open(t + "/leg2-send.json"))
r2 = json.load(open(t + "/leg2-recv.json"))
b1, b2 = l1["wan"]["bytes_sent"], l2["wan"]["bytes_sent"]
print("leg 1: %.1f MB, leg 2: %.1f MB (%.1f%%); leg 2 pages %s, bytes %s; rebuilt at A %s" % (
    b1 / 1e6, b2 / 1e6, 100.0 * b2 / b1, l2["pages"], l2["wan"]["by_category"],
    r2["rebuilt_from"]), file=sys.stderr)
assert l2["store"].get("reused_image"), "no earlier image of the VM was found at A"
assert l2["pages"]["reused"] > l1["pages"]["data"] // 2, l2["pages"]
assert r2["rebuilt_from"]["store"] >= l2["pages"]["reused"], r2["rebuilt_from"]
assert b2 < b1 * 0.35, (b1, b2)
PY
exit 0
