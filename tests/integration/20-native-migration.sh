#!/usr/bin/env bash
# A self-verifying guest migrates with QEMU's own migration over the WAN
# emulator; the destination must keep printing "beat N ok" with N growing.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

workload="tsb.mode=memverify tsb.mem=96 tsb.seed=7 tsb.vmid=1 tsb.random=50 tsb.dup=10 tsb.dirty=2 tsb.wss=16"
start_vm src "$workload"
before=$(wait_beat src 2 120 | awk '{print $2}')
log "source verifying, beat $before"

start_dest_vm dst "$workload"
dst_port=$(free_port)
wan_port=$(free_port)
start_wanem "$wan_port" "$dst_port" 400mbit 5ms

"$TSUBAME" migrate-native --src-qmp "$T/src/qmp.sock" --dst-qmp "$T/dst/qmp.sock" \
	--uri "tcp:127.0.0.1:$wan_port" --listen-uri "tcp:127.0.0.1:$dst_port" \
	--timeout 300s --report "$T/report.json" >/dev/null ||
	fail "native migration failed: $(cat "$T/report.json" 2>/dev/null)"

grep -q '"status": "completed"' "$T/report.json" || fail "report does not say completed"
last_src=$(grep -a -o 'beat [0-9]* ok' "$T/src/serial.log" | tail -1 | awk '{print $2}')
after=$(wait_beat dst "$last_src" 60 | awk '{print $2}')
log "destination verifying, beat $after (source stopped at $last_src)"
grep -aq CORRUPT "$T/dst/serial.log" && fail "destination found corrupted memory"
[ "$after" -gt "$last_src" ] || fail "destination beat did not advance"
bytes=$(sed -n 's/.*"bytes_up": *\([0-9]*\).*/\1/p' "$T/wanem-$wan_port.json")
log "bytes over the emulated WAN: ${bytes:-?}"
[ "${bytes:-0}" -gt $((96 * 1024 * 1024 / 2)) ] || fail "WAN byte count implausible: ${bytes:-none}"
exit 0
