#!/usr/bin/env bash
# Failures during the disk mirror (docs/disk.md): the link cut, then the
# receiver killed. Each time the migration is cancelled, the mirror job is
# gone, the source VM runs on (and keeps writing) its own disk, and the
# partial target is marked "<image>.tsubame-incomplete". An offline check
# of the source image at the end finds every record the guest wrote.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss "$MEMVERIFY_HOST" qemu-img python3
check="$top/tests/integration/disk-check.py"
# The private socket directories of a killed recv stay behind: keep them in $T.
export TMPDIR=$T
require_guest_feature diskwrite "diskwrite workload"

"$TSUBAME" keygen "$T/key" >/dev/null
base=8192 blocks=1024
"$MEMVERIFY_HOST" --make-disk "$T/orig.img" --size 64M --seed 22 --random 100 >/dev/null
cp "$T/orig.img" "$T/a.img"
workload="tsb.mode=memverify,diskwrite tsb.mem=48 tsb.seed=22 tsb.disk=/dev/vda tsb.dwbase=$base tsb.dwblocks=$blocks"
start_vm src "$workload" --disk "$T/a.img,format=raw"
beat=$(wait_beat src 1 300 | awk '{print $2}')

records() { grep -a -c 'diskwrite record' "$T/src/serial.log" || true; }

# source_carries_on WHAT: running, no mirror left, verifying and writing on.
source_carries_on() {
	local st n i
	st=$("$TSUBAME" qmp --qmp "$T/src/qmp.sock" query-status)
	echo "$st" | grep -q '"running"' || fail "$1: source VM not running: $st"
	st=$("$TSUBAME" qmp --qmp "$T/src/qmp.sock" query-block-jobs)
	[ "$st" = "[]" ] || fail "$1: a block job is left on the source: $st"
	grep -q tsb-target <<<"$("$TSUBAME" qmp --qmp "$T/src/qmp.sock" query-named-block-nodes)" &&
		fail "$1: the NBD target node is left on the source"
	beat=$(wait_beat src "$beat" 60 | awk '{print $2}') || fail "$1: source stopped verifying"
	n=$(records)
	for ((i = 0; i < 300; i++)); do
		[ "$(records)" -gt "$n" ] && break
		sleep 0.2
	done
	[ "$(records)" -gt "$n" ] || fail "$1: the source guest stopped writing its disk"
	grep -aq 'diskwrite: record .* failed' "$T/src/serial.log" && fail "$1: a disk write failed"
	log "after $1: source running, beat $beat ok, still writing its disk"
}

attempt=0
send_env=()
start_pair() {
	attempt=$((attempt + 1))
	qemu-img create -q -f raw "$T/b$attempt.img" 64M
	start_dest_vm "dst$attempt" "$workload" --disk "$T/b$attempt.img,format=raw"
	recv_port=$(free_port)
	wan_port=$(free_port)
	start_wanem "$wan_port" "$recv_port" "$1" 5ms
	wanem_pid=${cleanup_pids[-1]}
	echo "$wanem_pid" >"$T/wanem.pid"
	"$TSUBAME" recv --listen "127.0.0.1:$recv_port" --qmp "$T/dst$attempt/qmp.sock" \
		--key "$T/key" --store "$T/store-b" --stall-timeout 10s 2>"$T/recv$attempt.log" &
	recv_pid=$!
	cleanup_pids+=("$recv_pid")
	wait_listen "$recv_port" 30 || fail "recv did not listen"
	env "${send_env[@]}" "$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$wan_port" \
		--key "$T/key" --store "$T/store-a" --stall-timeout 10s --commit-timeout 10s \
		--no-progress 2>"$T/send$attempt.log" &
	send_pid=$!
	cleanup_pids+=("$send_pid")
	# Until the mirror has started (64 MiB of random data take ~25 s at 20 Mbit/s).
	for ((i = 0; i < 100; i++)); do
		[ -e "$T/b$attempt.img.tsubame-incomplete" ] && break
		sleep 0.1
	done
	sleep 2
}

expect_exit() {
	local rc=0
	wait "$1" || rc=$?
	[ "$rc" -eq "$2" ] || fail "$3: exit $rc, expected $2: $(cat "$4")"
}

# 1. The link is cut in the middle of the mirror.
start_pair 20mbit
kill -USR1 "$wanem_pid"
expect_exit "$send_pid" 4 "link cut: send" "$T/send1.log"
rc=0; wait "$recv_pid" || rc=$?
[ "$rc" -ne 0 ] || fail "link cut: recv claimed success"
[ -e "$T/b1.img.tsubame-incomplete" ] || fail "link cut: the target is not marked incomplete"
log "link cut: send said: $(tail -1 "$T/send1.log")"
source_carries_on "the link was cut mid-mirror"

# 2. The receiver dies in the middle of the mirror.
start_pair 20mbit
kill -9 "$recv_pid"
expect_exit "$send_pid" 4 "receiver killed: send" "$T/send2.log"
[ -e "$T/b2.img.tsubame-incomplete" ] || fail "receiver killed: the target is not marked incomplete"
log "receiver killed: send said: $(tail -1 "$T/send2.log")"
source_carries_on "the receiver died mid-mirror"

# 3. The link is cut inside the switchover, right after the sender's DONE
# on the disk channel (the source is stopped, the mirrors are complete):
# the receiver never confirms the disks, so it never says PREPARED and no
# commit happens; the source runs again on its own disk.
send_env=(TSUBAME_FAULT_AT=disk-done-sent "TSUBAME_FAULT_CMD=kill -USR1 \$(cat $T/wanem.pid)")
start_pair 400mbit
expect_exit "$send_pid" 4 "link cut after DONE: send" "$T/send3.log"
rc=0; wait "$recv_pid" || rc=$?
[ "$rc" -ne 0 ] || fail "link cut after DONE: recv claimed success"
grep -q "disk-done-sent" "$T/send3.log" || fail "link cut after DONE: the fault point was not reached"
[ -e "$T/b3.img.tsubame-incomplete" ] || fail "link cut after DONE: the target is not marked incomplete"
log "link cut after DONE: send said: $(tail -1 "$T/send3.log")"
source_carries_on "the link was cut after the disks' DONE"

"$TSUBAME" vm stop --dir "$T/src" >/dev/null
m=$(python3 "$check" "$T/orig.img" "$T/a.img" $base $blocks) || fail "source image: $m"
log "source image consistent up to record $m"
exit 0
