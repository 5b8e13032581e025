#!/usr/bin/env bash
# A self-verifying guest that dirties memory migrates through tsubame
# send/recv over the WAN emulator; the destination keeps printing
# "beat N ok" with N growing, and both reports account for the bytes.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

"$TSUBAME" keygen "$T/key" >/dev/null
workload="tsb.mode=memverify tsb.mem=96 tsb.seed=11 tsb.vmid=2 tsb.random=50 tsb.dup=10 tsb.dirty=4 tsb.wss=16"
start_vm src "$workload"
before=$(wait_beat src 2 120 | awk '{print $2}')
log "source verifying, beat $before"
start_dest_vm dst "$workload"

recv_port=$(free_port)
wan_port=$(free_port)
start_wanem "$wan_port" "$recv_port" 400mbit 5ms
"$TSUBAME" recv --listen "127.0.0.1:$recv_port" --qmp "$T/dst/qmp.sock" --key "$T/key" --store "$T/store-b" \
	--report "$T/recv.json" 2>"$T/recv.log" &
recv_pid=$!
cleanup_pids+=("$recv_pid")
wait_listen "$recv_port" 30 || fail "recv did not listen: $(cat "$T/recv.log")"

"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" --key "$T/key" --store "$T/store-a" \
	--report "$T/send.json" --timeout 300s 2>"$T/send.log" ||
	fail "send failed: $(cat "$T/send.log")"
wait "$recv_pid" || fail "recv failed: $(cat "$T/recv.log")"

last_src=$(grep -a -o 'beat [0-9]* ok' "$T/src/serial.log" | tail -1 | awk '{print $2}')
after=$(wait_beat dst "$last_src" 60 | awk '{print $2}')
log "destination verifying, beat $after (source stopped at $last_src)"
grep -aq CORRUPT "$T/dst/serial.log" && fail "destination found corrupted memory"
[ "$after" -gt "$last_src" ] || fail "destination beat did not advance"

python3 - "$T/send.json" "$T/recv.json" <<'PY' || fail "reports inconsistent"
import json, sys
s = json.load(open(sys.argv[1])); r = json.load(open(sys.argv[2]))
assert s["outcome"] == "ok" and r["outcome"] == "ok", (s.get("error"), r.get("error"))
# Every page the sender classified arrived as the same kind.
for k in ("zero", "data", "reference"):
    assert s["pages"][k] == r["pages"][k], (k, s["pages"], r["pages"])
assert s["pages"]["data"] > 0 and s["pages"]["zero"] > 0
# The destination QEMU got exactly the stream the source QEMU wrote.
assert s["qemu_stream_bytes"] == r["qemu_stream_bytes"], (s["qemu_stream_bytes"], r["qemu_stream_bytes"])
# Both ends report the same guest-visible downtime (source STOP to destination RESUME).
assert s.get("downtime_ms") is not None and r.get("downtime_ms") == s["downtime_ms"], (
    s.get("downtime_ms"), r.get("downtime_ms"))
# Both ends say where the time went, and neither switched to postcopy.
for rep, keys in ((s, ("setup", "qemu", "confirm")), (r, ("wait", "stream", "switchover"))):
    assert all(isinstance(rep["phases_ms"].get(k), int) for k in keys), rep.get("phases_ms")
    assert rep["postcopy"] == {"switched": False}, rep.get("postcopy")
cat = s["wan"]["by_category"]
print("send: %.1f MB stream -> %.1f MB on the WAN; pages %s" % (
    s["qemu_stream_bytes"] / 1e6, s["wan"]["bytes_sent"] / 1e6, s["pages"]), file=sys.stderr)
PY
exit 0
