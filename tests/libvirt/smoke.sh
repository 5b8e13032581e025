#!/usr/bin/env bash
# The two-site libvirt harness, proved with libvirt's own migration: a
# self-verifying guest defined at site a moves live to site b
# (virsh migrate --live --p2p --persistent --undefinesource), then back.
# After each move it must run (and be defined) only at the destination and
# go on verifying its memory there. Exit 0 only if all of that held; 77 if
# this machine cannot run it. Needs root; not part of make check (it tests
# libvirt, not tsubame).
#
#   tests/libvirt/smoke.sh        GUEST_DIR=... to use another guest build
# shellcheck source=tests/libvirt/sites.sh
. "$(dirname "$0")/sites.sh"

name=smoke
workload="tsb.mode=memverify tsb.mem=96 tsb.seed=7 tsb.vmid=1 tsb.random=50 tsb.dup=10 tsb.dirty=2 tsb.wss=16"

fail() { lv_log "FAIL: $*"; exit 1; }
skip() { lv_log "SKIP: $*"; exit 77; }
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# since T0: seconds from T0 to now, one decimal.
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

preflight() {
	local c
	[ "$(id -u)" -eq 0 ] || skip "needs root (namespaces, libvirtd)"
	for c in virsh libvirtd virtlogd qemu-system-x86_64 nsenter unshare ip; do
		command -v "$c" >/dev/null 2>&1 || skip "needs $c (scripts/install-deps)"
	done
	if [ ! -f "$GUEST_DIR/vmlinuz" ] || [ ! -f "$GUEST_DIR/initrd.img" ]; then
		skip "no guest image in $GUEST_DIR (run scripts/build-guest)"
	fi
}

# check_ram SITE: QEMU at SITE has the size we asked for, not libvirt's MiB.
check_ram() { lv_check_ram "$1" "$name" || fail "the guest's RAM at site $1 is not as asked"; }

# migrate FROM TO: libvirt's own live migration; FROM's libvirtd dials TO's
# over the veth (p2p), the client only talks to FROM.
migrate() {
	local t0 job
	t0=$(now)
	site_virsh "$1" migrate --live --p2p --persistent --undefinesource "$name" \
		"$(site_tcp_uri "$2")" >"$LV_T/migrate-$1$2.log" 2>&1 ||
		fail "migration $1 -> $2 failed: $(cat "$LV_T/migrate-$1$2.log")"
	# What the destination's libvirt saw of QEMU's migration.
	job=$(site_virsh "$2" domjobinfo --completed "$name" 2>/dev/null || true)
	lv_log "migrated $1 -> $2 in $(since "$t0") s" \
		"($(awk -F': *' '/^Data processed/ { printf "%s, ", $2 }
			/^Total downtime/ { gsub(/ +/, " ", $2); printf "downtime %s", $2 }' <<<"$job"))"
}

# check_moved FROM TO: the guest runs at TO only, defined there only, and
# carries on verifying beyond the last beat and the last full pass it
# printed at FROM.
check_moved() {
	local from=$1 to=$2 state info list beat sweep
	state=$(site_virsh "$to" domstate "$name" 2>&1) || true
	[ "$state" = running ] || fail "site $to: $name is '$state', not running"
	# Outputs first, then grep: grep -q would close the pipe early and
	# pipefail would count virsh's SIGPIPE.
	info=$(site_virsh "$to" dominfo "$name")
	grep -Eq '^Persistent: +yes' <<<"$info" ||
		fail "site $to: $name is not persistent (--persistent)"
	list=$(site_virsh "$from" list --all --name)
	if grep -qx "$name" <<<"$list"; then
		fail "site $from still has $name: $(site_virsh "$from" domstate "$name" 2>&1)"
	fi
	check_ram "$to"
	beat=$(lv_last "$from" "$name")
	sweep=$(lv_last "$from" "$name" sweep)
	[ "$beat" -gt 0 ] || fail "no beat at site $from before the migration"
	beat=$(lv_wait_beat "$to" "$name" "$beat" 60) ||
		fail "the guest does not verify at site $to"
	sweep=$(lv_wait_beat "$to" "$name" "$sweep" 60 sweep) ||
		fail "no full verify pass at site $to"
	lv_log "site $to: beat $beat ok, sweep $sweep ok (site $from stopped at" \
		"beat $(lv_last "$from" "$name"), sweep $(lv_last "$from" "$name" sweep))"
}

preflight
t_all=$(now)
sites_up
lv_log "sites up in $(since "$t_all") s ($LV_T)"

t0=$(now)
lv_guest_start a "$name" "$workload"
check_ram a
lv_wait_beat a "$name" 2 120 >/dev/null || fail "the guest does not verify at site a"
lv_log "guest verifying at site a after $(since "$t0") s," \
	"RAM $(lv_ram_kib a "$name") KiB"

migrate a b
check_moved a b
migrate b a
check_moved b a

t0=$(now)
sites_down
lv_log "sites down in $(since "$t0") s"
lv_log "PASS in $(since "$t_all") s"
exit 0
