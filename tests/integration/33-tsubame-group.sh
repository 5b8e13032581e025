#!/usr/bin/env bash
# Group deduplication: three VMs of one tenant with the same content move
# one after another to site B; the second and third send a fraction of the
# first (their pages are in B's store already). A fourth VM with the same
# content but another tenant is sent in full: pages never cross tenants.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

workload() {
	echo "tsb.mode=memverify tsb.mem=64 tsb.seed=13 tsb.vmid=$1 tsb.content=shared tsb.random=50 tsb.dup=10"
}
move() { # NAME TENANT
	start_vm "$1" "$(workload "${1#g}")"
	wait_beat "$1" 2 120 >/dev/null
	start_dest_vm "$1-b" "$(workload "${1#g}")"
	tsubame_migrate "$1" "$1-b" "$1" "--store $T/store-a --tenant $2" \
		"--store $T/store-b --tenant $2"
	verify_after "$1" "$1-b"
	kill -9 "$(cat "$T/$1/qemu.pid")" "$(cat "$T/$1-b/qemu.pid")"
}
move g1 red
move g2 red
move g3 red
move g4 blue

# A receiver serving another tenant refuses the VM (nothing is shared).
start_vm g5 "$(workload 5)"
start_dest_vm g5-b "$(workload 5)"
wait_beat g5 1 120 >/dev/null
rport=$(free_port)
"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/g5-b/qmp.sock" --key "$T/key" \
	--store "$T/store-b" --tenant blue 2>"$T/g5-recv.log" &
rpid=$!
cleanup_pids+=("$rpid")
wait_listen "$rport" 60 || fail "recv did not listen"
if "$TSUBAME" send --qmp "$T/g5/qmp.sock" --to "127.0.0.1:$rport" --key "$T/key" \
	--store "$T/store-a" --tenant red --no-progress 2>"$T/g5-send.log"; then
	fail "a VM of tenant red went to a receiver of tenant blue"
fi
grep -q 'tenant' "$T/g5-send.log" || fail "no tenant message: $(cat "$T/g5-send.log")"
wait_beat g5 "$(grep -a -o 'beat [0-9]* ok' "$T/g5/serial.log" | tail -1 | awk '{print $2}')" 30 \
	>/dev/null || fail "the refused VM stopped verifying at the source"

python3 - "$T" <<'PY' || fail "group deduplication not as expected"
import json, sys
t = sys.argv[1]
s = {n: json.load(open("%s/%s-send.json" % (t, n))) for n in ("g1", "g2", "g3", "g4")}
b = {n: r["wan"]["bytes_sent"] for n, r in s.items()}
for n in ("g1", "g2", "g3", "g4"):
    print("%s: %.1f MB on the WAN, pages %s" % (n, b[n] / 1e6, s[n]["pages"]), file=sys.stderr)
for n in ("g2", "g3"):
    assert b[n] < 0.4 * b["g1"], (n, b)
    assert s[n]["pages"]["group"] > s["g1"]["pages"]["data"] // 2, (n, s[n]["pages"])
# Another tenant: nothing from the red VMs is offered or used.
assert s["g4"]["pages"]["group"] == 0, s["g4"]["pages"]
assert b["g4"] > 0.8 * b["g1"], b
PY
exit 0
