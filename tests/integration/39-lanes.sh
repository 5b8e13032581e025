#!/usr/bin/env bash
# The stream over several connections (send --connections, wire/lanes.h):
# 1. a self-verifying guest migrates over three lanes through the WAN
#    emulator (its window capped by --max-window), while a stranger claiming to be a lane of another migration
#    is refused (it connects when the receiver has accepted the sender's
#    main connection: fault point "handshake"); both reports count the
#    bytes of all lanes;
# 2. the link is cut once pages flow (fault point "precopy" on the
#    receiver): the migration fails and the source keeps running.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" "$HOSTILE_SENDER" ss

"$TSUBAME" keygen "$T/key" >/dev/null
workload="tsb.mode=memverify tsb.mem=64 tsb.seed=17 tsb.vmid=2 tsb.random=50 tsb.dup=10 tsb.dirty=4 tsb.wss=16"
start_vm src "$workload"
wait_beat src 2 120 >/dev/null
start_dest_vm dst "$workload"

# 1. Three lanes, and a stranger.
rport=$(free_port)
wport=$(free_port)
start_wanem "$wport" "$rport" 200mbit 10ms
# The stranger's TCP connection waits in the listen backlog until the
# receiver accepts lanes; the command returns once it is there.
stranger="$HOSTILE_SENDER -t 127.0.0.1:$rport -k $T/key -s stranger-lane \
-m 00112233445566778899aabbccddeeff >$T/stranger.out 2>&1; echo \$? >$T/stranger.rc"
arrived="[ \$(ss -Htn state established '( dport = :$rport )' | wc -l) -ge 2 ]"
TSUBAME_FAULT_AT=handshake \
TSUBAME_FAULT_CMD="($stranger) & for i in \$(seq 200); do $arrived && break; sleep 0.05; done" \
	"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/dst/qmp.sock" --key "$T/key" \
	--no-store --report "$T/recv1.json" 2>"$T/recv1.log" &
recv_pid=$!
cleanup_pids+=("$recv_pid")
wait_listen "$rport" 60 || fail "recv did not listen: $(cat "$T/recv1.log")"
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" --no-store \
	--connections 3 --max-window 16M --report "$T/send1.json" --timeout 300s --no-progress \
	2>"$T/send1.log" || fail "send over three lanes failed: $(cat "$T/send1.log")"
wait "$recv_pid" || fail "recv failed: $(cat "$T/recv1.log")"
verify_after src dst
for i in $(seq 100); do [ -s "$T/stranger.rc" ] && break; sleep 0.1; done
[ "$(cat "$T/stranger.rc" 2>/dev/null)" = 0 ] ||
	fail "the stranger lane was not refused: $(cat "$T/stranger.out")"
log "stranger: $(cat "$T/stranger.out")"
python3 - "$T/send1.json" "$T/recv1.json" "$T/wanem-$wport.json" <<'PY' || fail "reports inconsistent"
import json, sys
s, r, w = (json.load(open(p)) for p in sys.argv[1:4])
assert s["outcome"] == "ok" and r["outcome"] == "ok", (s.get("error"), r.get("error"))
assert s["wan"]["connections"] == 3 and r["wan"]["connections"] == 3, (s["wan"], r["wan"])
assert s["wan"]["window_max_bytes"] == 16 << 20, s["wan"]
assert 4 << 20 <= s["wan"]["window_bytes"] <= 16 << 20, s["wan"]
assert s["qemu_stream_bytes"] == r["qemu_stream_bytes"]
for k in ("zero", "data", "reference"):
    assert s["pages"][k] == r["pages"][k], (k, s["pages"], r["pages"])
# What the emulator carried is what the lanes say they sent and received.
assert s["wan"]["bytes_sent"] == w["bytes_up"] == r["wan"]["bytes_received"], (
    s["wan"]["bytes_sent"], w["bytes_up"], r["wan"]["bytes_received"])
assert w["connections"] == 3, w
assert r["refused_connections"] >= 1, r["refused_connections"]
print("three lanes: %.1f MB on the WAN, %d refused" % (w["bytes_up"] / 1e6,
      r["refused_connections"]), file=sys.stderr)
PY

# 2. The link is cut once pages flow: the guest stays at the source (dst now).
start_dest_vm dst2 "$workload"
rport=$(free_port)
wport=$(free_port)
start_wanem "$wport" "$rport" 100mbit 10ms
wanem_pid=${cleanup_pids[-1]}
TSUBAME_FAULT_AT=precopy TSUBAME_FAULT_CMD="kill -USR1 $wanem_pid" \
	"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/dst2/qmp.sock" --key "$T/key" \
	--no-store --stall-timeout 10s 2>"$T/recv2.log" &
recv_pid=$!
cleanup_pids+=("$recv_pid")
wait_listen "$rport" 60 || fail "recv did not listen: $(cat "$T/recv2.log")"
rc=0
"$TSUBAME" send --qmp "$T/dst/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" --no-store \
	--connections 3 --stall-timeout 10s --no-progress 2>"$T/send2.log" || rc=$?
[ "$rc" -eq 4 ] || fail "link cut: send exit $rc, expected 4: $(cat "$T/send2.log")"
rc=0; wait "$recv_pid" || rc=$?
[ "$rc" -ne 0 ] || fail "link cut: recv claimed success"
st=$("$TSUBAME" qmp --qmp "$T/dst/qmp.sock" query-status)
echo "$st" | grep -q '"running"' || fail "the source is not running after the cut: $st"
last=$(grep -a -o 'beat [0-9]* ok' "$T/dst/serial.log" | tail -1 | awk '{print $2}')
wait_beat dst "$last" 60 >/dev/null || fail "the source stopped verifying after the cut"
log "link cut over three lanes: send $(tail -1 "$T/send2.log")"
exit 0
