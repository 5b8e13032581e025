# Shared helpers for integration tests; source it first. Each test stands
# alone, cleans up every process it starts (by pid), and exits 77 to skip.
set -euo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
: "${TSUBAME:=$top/build/src/cli/tsubame}"
: "${WANEM:=$top/build/tools/wanem/tsubame-wanem}"
: "${GUEST_DIR:=$top/cache/guest}"
# QEMU 7.2 under TCG loses writes during migration when RAM is a multiple
# of 256 KiB (docs/ARCHITECTURE.md): test guests get 4 KiB more.
: "${VM_MEM:=262148K}"

T=$(mktemp -d "${TMPDIR:-/tmp}/tsb-test.XXXXXX")
cleanup_pids=()
cleanup_vms=()
# Functions a test adds to run first at its end (e.g. removing a namespace).
cleanup_hooks=()

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
skip() { log "SKIP: $*"; exit 77; }

# requires CMD...: skip the test when a command is missing.
requires() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || skip "needs $c"
	done
}

cleanup() {
	local rc=$? d pid i h
	for h in "${cleanup_hooks[@]}"; do
		"$h" || true
	done
	for d in "${cleanup_vms[@]}"; do
		pid=$(cat "$d/qemu.pid" 2>/dev/null || true)
		[ -n "$pid" ] && kill -9 "$pid" 2>/dev/null || true
	done
	for pid in "${cleanup_pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	# Give them 10 s to exit on SIGTERM, then SIGKILL: a hung helper must
	# not hang the test.
	for pid in "${cleanup_pids[@]}"; do
		for ((i = 0; i < 100; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			log "pid $pid ignored SIGTERM for 10 s: killing it"
			kill -9 "$pid" 2>/dev/null || true
		fi
		wait "$pid" 2>/dev/null || true
	done
	if { [ "$rc" -ne 0 ] && [ "$rc" -ne 77 ]; } || [ -n "${TSB_KEEP:-}" ]; then
		log "keeping $T for inspection"
		for d in "${cleanup_vms[@]}"; do
			[ -f "$d/serial.log" ] && { echo "--- $d/serial.log (tail)"; tail -5 "$d/serial.log"; } >&2
		done
	else
		rm -rf "$T"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_port: prints a TCP port on 127.0.0.1 that no socket uses. Taken
# below the kernel's ephemeral range (32768+), so that an outgoing
# connection cannot grab it between this check and the listen.
free_port() {
	local p
	for _ in $(seq 1 50); do
		p=$((10000 + RANDOM % 22000))
		if ! ss -Htan "sport = :$p" 2>/dev/null | grep -q .; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

# wait_listen PORT [SECONDS]: waits until something listens on TCP PORT
# (default 10 s); returns 1 on timeout. Use it after starting a server in
# the background and before anything connects to it.
wait_listen() {
	local i
	for ((i = 0; i < ${2:-10} * 10; i++)); do
		ss -Htln "sport = :$1" | grep -q . && return 0
		sleep 0.1
	done
	return 1
}

require_guest() {
	requires qemu-system-x86_64 "$TSUBAME"
	[ -f "$GUEST_DIR/vmlinuz" ] && [ -f "$GUEST_DIR/initrd.img" ] ||
		skip "no guest image in $GUEST_DIR (run scripts/build-guest)"
}

# require_guest_feature WORD WHAT: skip the test unless the guest's init (in
# $GUEST_DIR's initramfs) knows WORD (a workload or option it added later).
require_guest_feature() {
	local init
	init=$(gunzip -c "$GUEST_DIR/initrd.img" | cpio -i --to-stdout init 2>/dev/null || true)
	grep -q "$1" <<<"$init" ||
		skip "the guest in $GUEST_DIR has no $2 (rebuild it: scripts/build-guest)"
}

# start_vm NAME APPEND [tsubame vm start options...]: boots a guest whose run
# directory is $T/NAME; registers it for cleanup.
start_vm() {
	local name=$1 append=$2
	shift 2
	mkdir -p "$T/$name"
	cleanup_vms+=("$T/$name")
	"$TSUBAME" vm start --name "$name" --dir "$T/$name" --mem "$VM_MEM" \
		--kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
		--append "console=ttyS0 panic=-1 quiet $append" "$@" >/dev/null
}

# start_dest_vm NAME APPEND [options...]: the same guest, waiting for an
# incoming migration.
start_dest_vm() {
	local name=$1 append=$2
	shift 2
	start_vm "$name" "$append" --incoming "$@"
}

# wait_beat NAME AFTER TIMEOUT: waits for a "beat N ok" with N > AFTER on the
# serial console of VM NAME and prints N; fails on CORRUPT or timeout.
wait_beat() {
	"$TSUBAME" vm beat --dir "$T/$1" --wait-after "$2" --timeout "$3"
}

# start_wanem LISTEN_PORT TARGET_PORT RATE DELAY: a WAN link in front of
# 127.0.0.1:TARGET_PORT; stats go to $T/wanem-LISTEN_PORT.json.
start_wanem() {
	"$WANEM" --listen "127.0.0.1:$1" --connect "127.0.0.1:$2" \
		--rate "$3" --delay "$4" --stats "$T/wanem-$1.json" &
	cleanup_pids+=($!)
	wait_listen "$1" 5 || fail "WAN emulator did not start listening on port $1"
}

# tsubame_migrate SRC DST TAG "SEND_ARGS" "RECV_ARGS": tsubame recv beside
# VM DST, tsubame send beside VM SRC, over a fresh WAN emulator (400 Mbit/s,
# 5 ms; or $WAN_RATE, $WAN_DELAY); reports in $T/TAG-send.json and
# $T/TAG-recv.json. Fails the test unless both exit 0.
tsubame_migrate() {
	local src=$1 dst=$2 tag=$3 sargs=$4 rargs=$5 rport wport rpid
	[ -f "$T/key" ] || "$TSUBAME" keygen "$T/key" >/dev/null
	rport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$rport" "${WAN_RATE:-400mbit}" "${WAN_DELAY:-5ms}"
	# shellcheck disable=SC2086 # the argument lists are word lists
	"$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/$dst/qmp.sock" --key "$T/key" \
		--report "$T/$tag-recv.json" $rargs 2>"$T/$tag-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$rport" 60 || fail "$tag: recv did not listen: $(cat "$T/$tag-recv.log")"
	# shellcheck disable=SC2086
	"$TSUBAME" send --qmp "$T/$src/qmp.sock" --to "127.0.0.1:$wport" --key "$T/key" \
		--report "$T/$tag-send.json" --timeout 300s --no-progress $sargs \
		2>"$T/$tag-send.log" || fail "$tag: send failed: $(cat "$T/$tag-send.log")"
	wait "$rpid" || fail "$tag: recv failed: $(cat "$T/$tag-recv.log")"
}

# verify_after SRC DST: the destination carries on beyond the source's last
# beat with nothing corrupted.
verify_after() {
	local last after
	last=$(grep -a -o 'beat [0-9]* ok' "$T/$1/serial.log" | tail -1 | awk '{print $2}')
	after=$(wait_beat "$2" "${last:-0}" 90 | awk '{print $2}')
	grep -aq CORRUPT "$T/$2/serial.log" && fail "$2 found corrupted memory"
	[ -n "$after" ] && [ "$after" -gt "${last:-0}" ] || fail "$2 did not carry on verifying"
	log "$2 verifying, beat $after (the source stopped at ${last:-?})"
}

# disk_records_kept SRC_IMG DST_IMG: both raw images hold the original
# ($T/orig.img) outside the guest's record ring ($base, $blocks) and a
# consistent prefix of its records inside (disk-check.py), the destination's
# at least as far as the source's: no write lost at the switchover.
disk_records_kept() {
	local check="$top/tests/integration/disk-check.py" ma mb
	ma=$(python3 "$check" "$T/orig.img" "$1" "$base" "$blocks") || fail "source image: $ma"
	mb=$(python3 "$check" "$T/orig.img" "$2" "$base" "$blocks") || fail "destination image: $mb"
	[ "$ma" -ge 0 ] && [ "$mb" -ge "$ma" ] ||
		fail "destination image has records up to $mb, the source had $ma"
	log "records: source stopped at $ma, destination carried on to $mb; both images consistent"
}

# disk_carries_on VM: after a disk migration the guest at VM writes its disk
# on (diskwrite records, none failed) and $T/VM.img is no longer marked
# incomplete.
disk_carries_on() {
	local i
	for ((i = 0; i < 600; i++)); do
		grep -aq 'diskwrite record' "$T/$1/serial.log" && break
		sleep 0.1
	done
	grep -aq 'diskwrite record' "$T/$1/serial.log" || fail "the guest stopped writing its disk"
	grep -aq 'diskwrite: record .* failed' "$T/$1/serial.log" &&
		fail "a disk write failed at the destination"
	[ ! -e "$T/$1.img.tsubame-incomplete" ] || fail "the target is still marked incomplete"
}
