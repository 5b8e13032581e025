#!/usr/bin/env bash
# tsubame as the transport of libvirt's own live migration: the route of
# relay-route.sh with tsubame in place of its two relays. A self-verifying
# guest defined at site a moves to site b with
#
#   b: tsubame recv --qemu-connect 127.0.0.1:PORT --listen 10.77.0.2:WAN ...
#   a: tsubame migrate DOMAIN --dest-uri qemu+tcp://site-b/system
#          --to 10.77.0.2:WAN --qemu-port PORT ... --persistent --undefinesource
#
# tsubame migrate asks site a's libvirtd for a p2p live migration whose
# stream goes to tcp://127.0.0.1:PORT (a tsubame sender there) and whose
# destination QEMU listens on 127.0.0.1:PORT at b (where tsubame recv dials
# it); libvirt keeps its job, Finish/Confirm and the definitions. Then the
# guest goes back b -> a the same way, roles swapped: site a's store kept
# the guest's image, so the return trip must reuse it and send much less.
#
# Checks, each trip: both tsubame commands exit 0; the guest runs, is
# defined (--persistent) and verifies its memory at the destination only
# (gone from the source: --undefinesource); both JSON reports exist and
# carried bytes. The return trip's send report shows pages reused from the
# image left at a and far fewer WAN bytes than the first trip.
#
# Exit 0 pass, 1 fail, 77 if this machine cannot run it. Needs root; not
# part of make check.
#
#   tests/libvirt/tsubame-migrate.sh   BUILD=DIR (default build/) or
#                                      TSUBAME=BINARY; GUEST_DIR=...
set -euo pipefail

# shellcheck source=tests/libvirt/sites.sh
. "$(dirname "$0")/sites.sh"

: "${BUILD:=$lv_top/build}"
: "${TSUBAME:=$BUILD/src/cli/tsubame}"

name=tsbmig
workload="tsb.mode=memverify tsb.mem=96 tsb.seed=11 tsb.vmid=4 tsb.random=50 tsb.dup=10 tsb.dirty=2 tsb.wss=16"
port=49310	# the destination QEMU's, on its site's loopback, and the sender's there
wan_port=49311	# tsubame recv, on the sites' link
recv_pidfile=	# the running tsubame recv's pid (its own, not a shell's)
recv_job=	# the background job that runs it, for its exit status

fail() { lv_log "FAIL: $*"; exit 1; }
skip() { lv_log "SKIP: $*"; exit 77; }
trap 'exit 130' INT TERM

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# The sites' trap runs this after sites_down (which already ends whatever
# runs in the sites' network namespaces): a tsubame recv still alive by then
# is ended by its pid.
cleanup() {
	local rc=$? pid
	if [ -n "$recv_pidfile" ] && pid=$(cat "$recv_pidfile" 2>/dev/null) &&
		[ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid" 2>/dev/null || true
	fi
	exit "$rc"
}
trap cleanup EXIT

preflight() {
	local c
	[ "$(id -u)" -eq 0 ] || skip "needs root (namespaces, libvirtd)"
	for c in virsh libvirtd virtlogd qemu-system-x86_64 nsenter unshare ip ss python3 timeout; do
		command -v "$c" >/dev/null 2>&1 || skip "needs $c (scripts/install-deps)"
	done
	if [ ! -f "$GUEST_DIR/vmlinuz" ] || [ ! -f "$GUEST_DIR/initrd.img" ]; then
		skip "no guest image in $GUEST_DIR (run scripts/build-guest)"
	fi
	[ -x "$TSUBAME" ] || skip "no tsubame binary at $TSUBAME (build it, or BUILD=DIR)"
	"$TSUBAME" migrate --help >/dev/null 2>&1 ||
		skip "$TSUBAME has no 'migrate' command"
	"$TSUBAME" recv --help 2>/dev/null | grep -q -- --qemu-connect ||
		skip "$TSUBAME recv has no --qemu-connect"
}

# check_ram SITE: QEMU at SITE has the size we asked for, not libvirt's MiB.
check_ram() {
	local kib
	kib=$(lv_ram_kib "$1" "$name")
	[ "$kib" = "$LV_MEM_KIB" ] ||
		fail "guest RAM at site $1 is ${kib:-?} KiB, not $LV_MEM_KIB KiB"
}

# tail_logs TAG: the end of a trip's tsubame logs, for a failure message.
tail_logs() {
	local f
	for f in "$LV_T/$1-recv.log" "$LV_T/$1-send.log"; do
		[ -f "$f" ] && { echo "--- $f (last 40 lines)"; tail -40 "$f"; }
	done
	return 0
}

# start_recv TO TAG: tsubame recv in site TO's namespace, in the background,
# waiting for the sender on TO's link address and dialing, once it came,
# the destination QEMU libvirt starts listening on TO's 127.0.0.1:$port.
start_recv() {
	local to=$1 tag=$2 i
	recv_pidfile=$LV_T/$tag-recv.pid
	# shellcheck disable=SC2016 # the inner shell expands its own $$ and $@
	site_exec "$to" sh -c 'echo $$ >"$0"; exec "$@"' "$recv_pidfile" \
		"$TSUBAME" recv --qemu-connect "127.0.0.1:$port" \
		--listen "$(site_addr "$to"):$wan_port" --key "$LV_T/key" \
		--store "$LV_T/store-$to" --state-dir "$LV_T/state-$to" \
		--report "$LV_T/$tag-recv.json" --timeout 300s -v \
		>"$LV_T/$tag-recv.log" 2>&1 &
	recv_job=$!
	for ((i = 0; i < 300; i++)); do
		if [ -n "$(site_exec "$to" ss -Hltn "sport = :$wan_port" 2>/dev/null)" ]; then
			return 0
		fi
		kill -0 "$recv_job" 2>/dev/null || break
		sleep 0.1
	done
	tail_logs "$tag" >&"$lv_stderr"
	fail "$tag: tsubame recv does not listen on $(site_addr "$to"):$wan_port"
}

# wait_recv TAG: tsubame recv exits (60 s at most after the sender ended),
# with 0.
wait_recv() {
	local tag=$1 rc=0 i
	for ((i = 0; i < 600; i++)); do
		kill -0 "$recv_job" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$recv_job" 2>/dev/null; then
		tail_logs "$tag" >&"$lv_stderr"
		fail "$tag: tsubame recv still runs 60 s after the sender ended"
	fi
	wait "$recv_job" || rc=$?
	recv_job=
	if [ "$rc" -ne 0 ]; then
		tail_logs "$tag" >&"$lv_stderr"
		fail "$tag: tsubame recv exited $rc"
	fi
}

# trip FROM TO TAG: the guest moves live from FROM to TO through tsubame.
trip() {
	local from=$1 to=$2 tag=$3 t0 rc=0
	start_recv "$to" "$tag"
	t0=$(now)
	# A hung migration must not hang the test: SIGINT first (tsubame
	# cancels and exits 130), SIGKILL 20 s later.
	site_exec "$from" timeout -s INT -k 20 400 \
		"$TSUBAME" migrate "$name" --connect "$(site_uri "$from")" \
		--dest-uri "$(site_tcp_uri "$to")" --to "$(site_addr "$to"):$wan_port" \
		--qemu-port "$port" --key "$LV_T/key" --store "$LV_T/store-$from" \
		--report "$LV_T/$tag-send.json" --timeout 300s --persistent --undefinesource -v \
		>"$LV_T/$tag-send.log" 2>&1 || rc=$?
	if [ "$rc" -ne 0 ]; then
		tail_logs "$tag" >&"$lv_stderr"
		fail "$tag: tsubame migrate $from -> $to exited $rc"
	fi
	wait_recv "$tag"
	lv_log "$tag: migrated $from -> $to in $(since "$t0") s"
}

# check_moved FROM TO: the guest runs at TO only, defined there only, and
# carries on verifying beyond the last beat it printed at FROM.
check_moved() {
	local from=$1 to=$2 state info list beat
	state=$(site_virsh "$to" domstate "$name" 2>&1) || true
	[ "$state" = running ] || fail "site $to: $name is '$state', not running"
	info=$(site_virsh "$to" dominfo "$name")
	grep -Eq '^Persistent: +yes' <<<"$info" ||
		fail "site $to: $name is not persistent (--persistent)"
	list=$(site_virsh "$from" list --all --name)
	if grep -qx "$name" <<<"$list"; then
		fail "site $from still has $name (--undefinesource):" \
			"$(site_virsh "$from" domstate "$name" 2>&1)"
	fi
	check_ram "$to"
	beat=$(lv_last "$from" "$name")
	[ "$beat" -gt 0 ] || fail "no beat at site $from before the migration"
	beat=$(lv_wait_beat "$to" "$name" "$beat" 90) ||
		fail "the guest does not verify at site $to"
	lv_log "site $to: $name runs, is defined and verifies (beat $beat)"
}

# check_reports TAG: both reports of a trip are JSON, said ok, and moved
# bytes over the WAN; prints the sender's WAN bytes.
check_reports() {
	python3 - "$LV_T/$1-send.json" "$LV_T/$1-recv.json" <<'PY' ||
import json, sys
s = json.load(open(sys.argv[1]))
r = json.load(open(sys.argv[2]))
for rep, side in ((s, "send"), (r, "recv")):
    assert rep.get("side") == side, (side, rep.get("side"))
    assert rep.get("outcome") == "ok", (side, rep.get("outcome"), rep.get("error"))
    # QEMU's whole stream (some 170 MB here) went through tsubame.
    assert rep["qemu_stream_bytes"] > 64 << 20, (side, rep["qemu_stream_bytes"])
assert s["wan"]["bytes_sent"] > 0, s["wan"]
assert r["wan"]["bytes_received"] > 0, r["wan"]
print("QEMU stream %d bytes at the source, %d at the destination; WAN %d bytes sent, %d received" % (
    s["qemu_stream_bytes"], r["qemu_stream_bytes"], s["wan"]["bytes_sent"],
    r["wan"]["bytes_received"]), file=sys.stderr)
print(s["wan"]["bytes_sent"])
PY
		fail "$1: the reports do not hold up: $(tail_logs "$1")"
}

preflight
sites_up
"$TSUBAME" keygen "$LV_T/key" >/dev/null || fail "tsubame keygen failed"
mkdir -p "$LV_T"/store-{a,b} "$LV_T"/state-{a,b}

lv_guest_start a "$name" "$workload"
lv_wait_beat a "$name" 2 120 >/dev/null || fail "the guest does not verify at site a"
check_ram a

trip a b out
check_moved a b
out_bytes=$(check_reports out) || exit 1

# The guest keeps dirtying its working set at b for a while.
sleep 4
trip b a back
check_moved b a
back_bytes=$(check_reports back) || exit 1

lv_log "WAN bytes: a -> b $out_bytes, b -> a $back_bytes"
python3 - "$LV_T/out-send.json" "$LV_T/back-send.json" "$LV_T/back-recv.json" <<'PY' ||
import json, sys
l1, l2, r2 = (json.load(open(f)) for f in sys.argv[1:4])
b1, b2 = l1["wan"]["bytes_sent"], l2["wan"]["bytes_sent"]
print("return trip: %.1f MB vs %.1f MB out (%.1f%%); pages %s; rebuilt at a %s; store %s" % (
    b2 / 1e6, b1 / 1e6, 100.0 * b2 / b1, l2["pages"], r2.get("rebuilt_from"),
    l2.get("store")), file=sys.stderr)
assert l2.get("store", {}).get("reused_image"), "no earlier image of the guest found at a"
assert l2["pages"]["reused"] > 0, l2["pages"]
assert b2 < b1 * 0.5, (b1, b2)
PY
	fail "the return trip did not reuse the image left at site a"
sites_down
lv_log PASS
