#!/usr/bin/env bash
# Switchover faults (docs/protocol.md, "Switchover"): the link is cut or
# blackholed, tsubame or a QEMU is killed, recv is interrupted, the
# destination's store is full -- each at an exact protocol point, fired by
# the point itself (TSUBAME_FAULT_AT / TSUBAME_FAULT_CMD). After every case
# exactly one copy of the guest runs and verifies all its memory, or both
# are paused (exit 7) and 'tsubame resolve' brings exactly one back. The
# guest moves back and forth between two "sites" (stores and records of A
# and B); each case gets a fresh incoming QEMU.
: "${VM_MEM:=131076K}"
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss

"$TSUBAME" keygen "$T/key" >/dev/null
workload="tsb.mode=memverify tsb.mem=48 tsb.seed=9 tsb.vmid=6 tsb.random=100 tsb.dup=0"
# Only what a case needs: a short commit timeout keeps in-doubt cases short.
common_args="--key $T/key --commit-timeout 6s --stall-timeout 4s --no-progress ${TSB_VERBOSE:+-v -v}"
cur=a site=A n=0
start_vm a "$workload"
wait_beat a 1 120 >/dev/null || fail "the guest did not start verifying"

other() { [ "$1" = A ] && echo B || echo A; }
status_of() {
	"$TSUBAME" qmp --timeout 2 --qmp "$T/$1/qmp.sock" query-status 2>/dev/null |
		sed -n 's/.*"status": *"\([a-z-]*\)".*/\1/p' || true
}
running() { [ "$(status_of "$1")" = running ]; }
kill_vm() { kill -9 "$(cat "$T/$1/qemu.pid" 2>/dev/null)" 2>/dev/null || true; }

# resolve_site SRC_SITE DST_SITE: settles every record left, the source's
# side first, then the destination's with the word the source's printed.
resolve_site() {
	local f id out flag
	for f in "$T/state-$1"/*.send.json; do
		[ -e "$f" ] || continue
		id=$(basename "$f" .send.json)
		out=$("$TSUBAME" resolve --state-dir "$T/state-$1" "$id") ||
			fail "$case_name: resolve on the source failed: $out"
		log "$case_name: source resolve: $(echo "$out" | head -1)"
		flag=$(echo "$out" | grep -o -e '--commit' -e '--abort' | head -1)
		dest_out="no record here"
		if [ -e "$T/state-$2/$id.recv.json" ]; then
			# It fails (exit 1) only saying that it holds no guest.
			dest_out=$("$TSUBAME" resolve --state-dir "$T/state-$2" "$id" "$flag" 2>&1) ||
				[[ "$dest_out" == *"holds no guest"* ]] ||
				fail "$case_name: resolve on the destination failed: $dest_out"
			log "$case_name: destination resolve: $dest_out"
		fi
		# Committed early: the source waits for the destination's word.
		if [ -e "$f" ]; then
			flag=--abort
			[[ "$dest_out" == *"runs the guest"* ]] && flag=--commit
			out=$("$TSUBAME" resolve --state-dir "$T/state-$1" "$id" "$flag") ||
				fail "$case_name: resolve $flag on the source failed: $out"
			log "$case_name: source resolve $flag: $(echo "$out" | head -1)"
			[ -e "$f" ] && fail "$case_name: the source's record is still there"
		fi
	done
	for f in "$T/state-$2"/*.recv.json; do
		[ -e "$f" ] && fail "$case_name: a destination record is left without a source record: $f"
	done
	return 0
}

# settle_kept DST_SITE: a destination that ran the guest keeps its record
# while its sender may not have heard (the sender may well have, and left
# nothing); its own resolve says the guest runs there.
settle_kept() {
	local f id out
	for f in "$T/state-$1"/*.recv.json; do
		[ -e "$f" ] || continue
		id=$(basename "$f" .recv.json)
		[ -e "$T/state-$site/$id.send.json" ] && continue	# resolve_site's
		grep -q '"state": *"commit"' "$f" ||
			fail "$case_name: a destination record is left without a source record: $f"
		out=$("$TSUBAME" resolve --state-dir "$T/state-$1" "$id" 2>&1) ||
			fail "$case_name: resolve of a kept destination record failed: $out"
		[[ "$out" == *"runs the guest"* ]] ||
			fail "$case_name: a kept destination record, but: $out"
		log "$case_name: destination record kept after the run: $out"
	done
}

# case_run NAME SIDE POINT COMMAND SEND_CODES RECV_CODES [DELAY] [EXTRA_RECV_ARGS]
# One migration from the current VM to a fresh one, with COMMAND armed at
# POINT in send or recv (SIDE; "none": no fault). *_CODES: the exit codes
# allowed, e.g. "0" or "4 7". COMMAND may use $WANEM_PID, $SRC_QEMU, $DST_QEMU,
# and $PPID (the tsubame process that reached the point).
case_run() {
	local name=$1 side=$2 point=$3 cmd=$4 scodes=$5 rcodes=$6 delay=${7:-5ms}
	local rargs=${8:-} i dst dsite rport wport rpid spid rs=0 rr=0 a b winner loser last
	# ONLY="name ...": run just these cases (debugging).
	[ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
	case_name=$name
	n=$((n + 1))
	dst=v$n dsite=$(other "$site")
	start_dest_vm "$dst" "$workload"
	rport=$(free_port)
	wport=$(free_port)
	start_wanem "$wport" "$rport" 400mbit "$delay"
	export WANEM_PID=${cleanup_pids[-1]} RECV_PORT=$rport RECV_STATE=$T/state-$dsite \
		RECV_LOG=$T/$name-recv.log
	export SRC_QEMU=$(cat "$T/$cur/qemu.pid") DST_QEMU=$(cat "$T/$dst/qemu.pid")
	local fault=(env TSUBAME_FAULT_AT="$point" TSUBAME_FAULT_CMD="$cmd")
	local rfault=(env) sfault=(env)
	[ "$side" = recv ] && rfault=("${fault[@]}")
	[ "$side" = send ] && sfault=("${fault[@]}")
	# shellcheck disable=SC2086
	"${rfault[@]}" "$TSUBAME" recv --listen "127.0.0.1:$rport" --qmp "$T/$dst/qmp.sock" \
		--store "$T/store-$dsite" --state-dir "$T/state-$dsite" $common_args $rargs \
		2>"$T/$name-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$rport" 30 || fail "$name: recv did not listen: $(cat "$T/$name-recv.log")"
	# shellcheck disable=SC2086
	"${sfault[@]}" "$TSUBAME" send --qmp "$T/$cur/qmp.sock" --to "127.0.0.1:$wport" \
		--vm-id guest --store "$T/store-$site" --state-dir "$T/state-$site" \
		--timeout 120s $common_args $send_args 2>"$T/$name-send.log" &
	spid=$!
	cleanup_pids+=("$spid")
	wait "$spid" || rs=$?
	# A receiver whose sender never got through keeps waiting for one: that
	# is by design, so it is interrupted once the settling time is over
	# (short when the case expects exactly that: 130 allowed, the sender's fault).
	local settle=200
	[[ " $rcodes " == *" 130 "* ]] && [ "$side" = send ] && settle=30
	for ((i = 0; i < settle; i++)); do
		kill -0 "$rpid" 2>/dev/null || break
		sleep 0.1
	done
	kill -INT "$rpid" 2>/dev/null || true
	wait "$rpid" || rr=$?
	kill "$WANEM_PID" 2>/dev/null || true
	[[ " $scodes " == *" $rs "* ]] ||
		fail "$name: send exit $rs, expected one of: $scodes ($(tail -3 "$T/$name-send.log"))"
	[[ " $rcodes " == *" $rr "* ]] ||
		fail "$name: recv exit $rr, expected one of: $rcodes ($(tail -3 "$T/$name-recv.log"))"
	grep -q "fault injection at '$point'" "$T/$name-$side.log" 2>/dev/null ||
		[ "$side" = none ] || fail "$name: the fault at $point did not fire"
	# Never two copies: check before resolving, then settle what is left.
	a=$(status_of "$cur") b=$(status_of "$dst")
	[ "$a" = running ] && [ "$b" = running ] && fail "$name: both copies run"
	[ "$b" = running ] && settle_kept "$dsite"
	if [ "$rs" = 7 ] || [ "$rr" = 7 ] || ls "$T/state-$site"/*.send.json >/dev/null 2>&1; then
		[ "$a" = running ] || [ "$b" = running ] || log "$name: in doubt, both paused ($a, $b)"
		resolve_site "$site" "$dsite"
	fi
	if running "$cur" && ! running "$dst"; then
		winner=$cur loser=$dst
	elif running "$dst" && ! running "$cur"; then
		winner=$dst loser=$cur
	else
		fail "$name: after resolving, source '$(status_of "$cur")', destination '$(status_of "$dst")'"
	fi
	last=$(grep -a -o 'beat [0-9]* ok' "$T/$winner/serial.log" "$T/$loser/serial.log" |
		awk '{print $2}' | sort -n | tail -1)
	wait_beat "$winner" "${last:-0}" 90 >/dev/null || fail "$name: $winner stopped verifying"
	grep -aq CORRUPT "$T/$winner/serial.log" && fail "$name: $winner found corrupted memory"
	log "$name: send $rs, recv $rr; $([ "$winner" = "$dst" ] && echo destination ||
		echo source) runs and verifies"
	kill_vm "$loser"
	if [ "$winner" = "$dst" ]; then
		cur=$dst site=$dsite
	fi
}

cut='kill -USR1 $WANEM_PID'
cut_2s='kill -USR1 $WANEM_PID; (sleep 2; kill -USR2 $WANEM_PID) >/dev/null 2>&1 &'
hole_3s='kill -s RTMIN $WANEM_PID; (sleep 3; kill -s RTMIN+1 $WANEM_PID) >/dev/null 2>&1 &'

# Before the source stops: the migration fails, the source runs on.
send_args=
case_run hs-cut send handshake "$cut" "4" "1 4 130"
case_run precopy-cut recv precopy "$cut" "4" "1 4"
case_run stopped-cut send source-stopped "$cut" "4" "1 4"
# The cases from here to the forged decision commit after PREPARED (the
# older order, --commit-late); those committing early (the default) come after them.
send_args=--commit-late
# The source completed; unless PREPARED came first: abort, the destination
# hears it once the link is back.
case_run completed-cut send source-completed "$cut_2s" "0 4" "0 1 4"
case_run loaded-cut recv dest-loaded "$cut_2s" "4" "1 4"
# PREPARED may or may not have crossed: either outcome, exactly one.
case_run prepared-cut recv prepared-sent "$cut_2s" "0 1 4" "0 1 4"
# The commit is decided: the destination runs, over a new connection.
case_run commit-cut send commit-sent "$cut_2s" "0" "0"
case_run received-cut recv commit-received "$cut_2s" "0" "0"
case_run outcome-cut recv outcome-sent "$cut_2s" "0" "0"
# The link stays down: both in doubt, resolve settles it. (50 ms each way,
# so that the cut lands while the DECISION is still on the link; should
# the fault command take longer, the destination runs and the sender may
# still hear its outcome: exactly one copy all the same.)
case_run commit-down send commit-sent "$cut" "0 7" "0 7" 50ms
case_run loaded-down recv dest-loaded "$cut" "4" "7"
# Silent link, then flowing again.
if kill -l RTMIN >/dev/null 2>&1 && grep -q RTMIN <<<"$("$WANEM" --help 2>&1)"; then
	case_run commit-hole send commit-sent "$hole_3s" "0" "0"
	case_run prepared-hole recv prepared-sent "$hole_3s" "0 1 4" "0 1 4"
else
	log "the WAN emulator has no blackhole: those cases skipped"
fi
# Processes killed at the point.
case_run send-killed-completed send source-completed 'kill -9 $PPID' "137" "1 4 7"
case_run send-killed-commit send commit-sent 'kill -9 $PPID' "137" "0 7"
case_run recv-killed-prepared recv prepared-sent 'kill -9 $PPID' "1 4 7" "137"
case_run recv-killed-running recv dest-running 'kill -9 $PPID' "7" "137"
case_run dst-qemu-killed-loaded recv dest-loaded 'kill -9 $DST_QEMU' "1" "1"
case_run dst-qemu-killed-commit recv commit-received 'kill -9 $DST_QEMU' "1" "1"
case_run src-qemu-killed-completed send source-completed 'kill -9 $SRC_QEMU' "0" "0"
# Ctrl-C on recv: before PREPARED it cancels; after, it leaves it in doubt.
case_run recv-int-precopy recv precopy 'kill -INT $PPID' "1 4" "130"
case_run recv-int-prepared recv prepared-sent 'kill -INT $PPID' "0 4 7" "0 7"
# A long path (400 ms RTT): messages stay in flight while the fault lands.
case_run long-loaded-cut recv dest-loaded "$cut_2s" "4" "1 4" 200ms
case_run long-prepared-cut recv prepared-sent "$cut_2s" "0 1 4" "0 1 4" 200ms
case_run long-commit-cut send commit-sent "$cut_2s" "0" "0" 200ms
# Committed early (the default): the DECISION follows the stream, and
# the destination runs the guest if it loads it, else says DISCARDED.
send_args=
# The link breaks as the source completes: committed or not, one copy.
case_run early-completed-cut send source-completed "$cut_2s" "0 1 4 7" "0 1 4"
# The DECISION arrives (before the load or after PREPARED: a race) and the
# link breaks: the destination runs the guest, or, not loaded, discards it
# and tells the sender, who comes back for the outcome.
case_run early-decision-cut recv decision-received "$cut_2s" "0 1 4" "0 1 4"
# The destination QEMU dies with the decision in: DISCARDED, source runs.
case_run early-dst-qemu-killed recv decision-received 'kill -9 $DST_QEMU' "1 4" "1 4"
# It dies as the source completes: its receiver's ERROR crosses our DECISION.
case_run early-dst-qemu-killed-completed send source-completed 'kill -9 $DST_QEMU' "1 4" "1 4"
# The receiver dies as the decision comes: the sender is in doubt. Before
# the load the destination has no record (nothing there): the source runs
# again; after it, its 'prepared' record: the destination runs.
case_run early-recv-killed recv decision-received 'kill -9 $PPID' "1 4 7" "137"
# The link stays down once the guest is loaded: it runs there, the sender
# is in doubt until resolve asks the destination.
case_run early-loaded-down recv dest-loaded "$cut" "0 4 7" "0 7"
# The DECISION is queued behind the stream's end when the link goes down
# for good: the destination may or may not have all of it.
case_run early-commit-down send commit-sent "$cut" "0 7" "0 1 4 7" 50ms
# The forged decision needs a destination waiting for it: the older order.
send_args=--commit-late

# While the destination is in doubt, another key holder forges the commit
# decision of this migration: refused (a decision counts only from the
# credential the migration began with); the link comes back after it and
# the real sender settles the switchover.
if [ -n "${HOSTILE_SENDER:-}" ]; then
	"$TSUBAME" keygen --id intruder "$T/intruder-key" >/dev/null
	(umask 077 && cat "$T/key" "$T/intruder-key" >"$T/recv-keys")
	# This migration's id, from the receiver's own log line once it waits
	# for the decision (records in the state directory may be other cases').
	cat >"$T/record-of.py" <<'PY'
import re, sys, time
for attempt in range(100):
    try:
        m = re.search(r"decision on \S+ \(migration ([0-9a-f]+)\)", open(sys.argv[1]).read())
    except OSError:
        m = None
    if m:
        print(m.group(1))
        sys.exit(0)
    time.sleep(0.1)
sys.exit("no migration id in " + sys.argv[1])
PY
	export HOSTILE_SENDER INTRUDER_KEY=$T/intruder-key FORGE_LOG=$T/forge.log RECORD_OF=$T/record-of.py
	forge='kill -USR1 $WANEM_PID; (id=$(python3 "$RECORD_OF" "$RECV_LOG");
		"$HOSTILE_SENDER" -t "127.0.0.1:$RECV_PORT" -k "$INTRUDER_KEY" -s forged-decision \
		-m "$id" >"$FORGE_LOG" 2>&1; echo "exit $?" >>"$FORGE_LOG";
		kill -USR2 $WANEM_PID) >/dev/null 2>&1 &'
	case_run forged-decision recv prepared-sent "$forge" "0 1 4" "0 1 4" 5ms "--key $T/recv-keys"
	send_args=
	if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" forged-decision "* ]]; then
		grep -q "^exit 0" "$FORGE_LOG" || fail "forged decision: $(cat "$FORGE_LOG")"
		log "forged decision: $(head -1 "$FORGE_LOG")"
	fi
else
	log "HOSTILE_SENDER not set: the forged-decision case skipped"
fi

# The destination's store is full: it only saves bytes, the move goes on.
mkdir -p "$T/full"
if mount -t tmpfs -o size=256k tsb-full "$T/full" 2>/dev/null; then
	unmount_full() { umount -l "$T/full" 2>/dev/null; }
	cleanup_hooks+=(unmount_full)
	case_run store-full none none true "0" "0" 5ms "--store $T/full/store"
else
	log "cannot mount a small tmpfs: the full-store case skipped"
fi
exit 0
