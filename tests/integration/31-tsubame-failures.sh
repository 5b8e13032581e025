#!/usr/bin/env bash
# Failures before switchover leave the source VM running and verifying:
# a wrong key (refused; recv waits on), a plaintext client, the link cut
# mid-migration, the receiver killed, and Ctrl-C on the sender. One source
# guest lives through them all; each attempt gets a fresh destination QEMU.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

"$TSUBAME" keygen "$T/key" >/dev/null
"$TSUBAME" keygen "$T/other-key" >/dev/null
workload="tsb.mode=memverify tsb.mem=128 tsb.seed=5 tsb.vmid=3 tsb.random=100 tsb.dup=0"
start_vm src "$workload"
beat=$(wait_beat src 2 120 | awk '{print $2}')

# source_still_verifies: the source QEMU runs the guest and it verifies on.
source_still_verifies() {
	local st
	st=$("$TSUBAME" qmp --qmp "$T/src/qmp.sock" query-status)
	echo "$st" | grep -q '"running"' || fail "source VM is not running after $1: $st"
	beat=$(wait_beat src "$beat" 60 | awk '{print $2}') || fail "source stopped verifying after $1"
	log "after $1: source running, beat $beat ok"
}

attempt=0
# start_pair RATE: a fresh destination, a WAN link and a receiver.
start_pair() {
	attempt=$((attempt + 1))
	start_dest_vm "dst$attempt" "$workload"
	recv_port=$(free_port)
	wan_port=$(free_port)
	start_wanem "$wan_port" "$recv_port" "$1" 5ms
	wanem_pid=${cleanup_pids[-1]}
	"$TSUBAME" recv --listen "127.0.0.1:$recv_port" --qmp "$T/dst$attempt/qmp.sock" \
		--key "$T/key" --store "$T/store-b" --state-dir "$T/state-b$attempt" \
		--stall-timeout 10s 2>"$T/recv$attempt.log" &
	recv_pid=$!
	cleanup_pids+=("$recv_pid")
	sleep 0.5
}

# expect_exit PID CODE WHAT
expect_exit() {
	local rc=0
	wait "$1" || rc=$?
	[ "$rc" -eq "$2" ] || fail "$3: exit $rc, expected $2"
}

# 1. Wrong key: refused on both sides, nothing reaches the destination QEMU.
start_pair 400mbit
rc=0
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" \
	--key "$T/other-key" --store "$T/store-a" --state-dir "$T/state-a" 2>"$T/send1.log" || rc=$?
[ "$rc" -eq 5 ] || fail "wrong key: send exit $rc, expected 5 ($(cat "$T/send1.log"))"
grep -qi "key" "$T/send1.log" || fail "wrong key: no clear message: $(cat "$T/send1.log")"
# The receiver logs the refusal and waits on for the real sender (test 36).
sleep 0.5
kill -0 "$recv_pid" || fail "wrong key: the receiver gave up"
grep -qi "refused a connection" "$T/recv1.log" || fail "wrong key: recv logged nothing"
kill -INT "$recv_pid"
expect_exit "$recv_pid" 130 "wrong key: recv interrupted"
st=$("$TSUBAME" qmp --qmp "$T/dst1/qmp.sock" query-status)
echo "$st" | grep -q '"inmigrate"' || fail "destination QEMU left its incoming state: $st"
source_still_verifies "a wrong key"

# 2. A plaintext client is refused; the receiver keeps waiting for a real sender.
start_pair 400mbit
exec 3<>"/dev/tcp/127.0.0.1/$recv_port"
printf 'hello\n' >&3
sleep 0.5
exec 3>&-
kill -0 "$recv_pid" || fail "plaintext client: the receiver gave up"
grep -qi "not speaking TLS" "$T/recv2.log" || fail "plaintext client: no message: $(cat "$T/recv2.log")"
log "plaintext client refused: $(grep -i 'TLS' "$T/recv2.log" | head -1)"
kill -INT "$recv_pid"
expect_exit "$recv_pid" 130 "recv interrupted while waiting"

# 3. The link is cut in the middle of the migration.
start_pair 40mbit
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" --key "$T/key" --store "$T/store-a" --state-dir "$T/state-a" \
	--stall-timeout 10s 2>"$T/send3.log" &
send_pid=$!
cleanup_pids+=("$send_pid")
sleep 3
kill -USR1 "$wanem_pid"
expect_exit "$send_pid" 4 "link cut: send"
rc=0; wait "$recv_pid" || rc=$?
[ "$rc" -ne 0 ] || fail "link cut: recv claimed success"
# Failed before PREPARED: the receiver keeps no record, nor its lock file.
[ -z "$(ls -A "$T/state-b3" 2>/dev/null)" ] || fail "link cut: recv left $(ls "$T/state-b3")"
source_still_verifies "the link was cut"

# 4. The receiver dies.
start_pair 40mbit
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" --key "$T/key" --store "$T/store-a" --state-dir "$T/state-a" \
	--stall-timeout 10s 2>"$T/send4.log" &
send_pid=$!
cleanup_pids+=("$send_pid")
sleep 3
kill -9 "$recv_pid"
expect_exit "$send_pid" 4 "receiver killed: send"
source_still_verifies "the receiver was killed"

# 5. Ctrl-C on the sender.
start_pair 40mbit
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" --key "$T/key" --store "$T/store-a" --state-dir "$T/state-a" \
	2>"$T/send5.log" &
send_pid=$!
cleanup_pids+=("$send_pid")
sleep 3
kill -INT "$send_pid"
expect_exit "$send_pid" 130 "Ctrl-C: send"
source_still_verifies "Ctrl-C"
# Every send failed before the switchover and resumed the source: no records.
[ -z "$(ls -A "$T/state-a" 2>/dev/null)" ] || fail "send left records: $(ls "$T/state-a")"
exit 0
