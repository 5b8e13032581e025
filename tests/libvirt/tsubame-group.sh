#!/usr/bin/env bash
# libvirt domains in a group plan: two self-verifying guests defined at
# site a move to site b in one operation,
#
#   b: tsubame group recv --plan plan.json ...
#   a: tsubame group send --plan plan.json --concurrency 2 --persistent
#          --undefinesource ...
#
# each VM of the plan a libvirt "domain" with its "dest_uri" and its own
# "qemu_port": libvirt's own p2p live migration, its stream through the
# group's senders and receivers (as tsubame migrate does for one domain),
# the first alone (it seeds b's store), within one WAN budget.
#
# Checks: both commands exit 0; both guests run, are defined and verify at
# b only; the group's report says both moved, its byte totals are the sums
# of the VMs' reports, each VM's report has libvirt's job figures, and the
# second VM's pages partly came from the first's (b's store). Then the same
# plan again: both count as moved earlier (they run at their destination),
# the receivers are told so and end at once, exit 0 on both sides.
#
# Exit 0 pass, 1 fail, 77 if this machine cannot run it (needs root and
# libvirt). make check runs it against the sanitizer build (meson test
# libvirt-tsubame-group, suite integration); by hand:
#
#   tests/libvirt/tsubame-group.sh   BUILD=DIR (default build/) or
#                                    TSUBAME=BINARY; GUEST_DIR=...
set -euo pipefail

TSB_LV_DISK=0
# shellcheck source=tests/libvirt/tsubame-lib.sh
. "$(dirname "$0")/tsubame-lib.sh"

names=(tsbgrp1 tsbgrp2)
# One image's worth of shared content (same seed), each its own half (vmid).
workloads=(
	"tsb.mode=memverify tsb.mem=64 tsb.seed=31 tsb.vmid=1 tsb.random=50 tsb.dup=10 tsb.dirty=1 tsb.wss=8"
	"tsb.mode=memverify tsb.mem=64 tsb.seed=31 tsb.vmid=2 tsb.random=50 tsb.dup=10 tsb.dirty=1 tsb.wss=8"
)

# group_cmd SITE VERB TAG ARGS...: tsubame group VERB at SITE, its output in
# $LV_T/TAG-VERB.log, its report in $LV_T/TAG-VERB.json.
group_cmd() {
	local s=$1 verb=$2 tag=$3
	shift 3
	site_exec "$s" env "${tsb_env[@]}" timeout -s INT -k 20 400 \
		"$TSUBAME" group "$verb" --plan "$LV_T/plan.json" --key "$LV_T/key" \
		--store "$LV_T/store-$s" --state-dir "$LV_T/state-$s" \
		--report "$LV_T/$tag-$verb.json" --timeout 300s --no-progress -v "$@" \
		>"$LV_T/$tag-$verb.log" 2>&1
}

# group_trip TAG: group recv at b in the background, group send at a; both
# must exit 0.
group_trip() {
	local tag=$1 rjob rc=0 i
	group_cmd b recv "$tag" &
	rjob=$!
	for ((i = 0; i < 300; i++)); do
		[ -n "$(site_exec b ss -Hltn "sport = :49321" 2>/dev/null)" ] &&
			[ -n "$(site_exec b ss -Hltn "sport = :49322" 2>/dev/null)" ] && break
		kill -0 "$rjob" 2>/dev/null || break
		sleep 0.1
	done
	group_cmd a send "$tag" --concurrency 2 --bandwidth 400mbit \
		--persistent --undefinesource || rc=$?
	if [ "$rc" -ne 0 ]; then
		tail -30 "$LV_T/$tag-send.log" >&"$lv_stderr"
		fail "$tag: tsubame group send exited $rc"
	fi
	rc=0
	for ((i = 0; i < 600; i++)); do
		kill -0 "$rjob" 2>/dev/null || break
		sleep 0.1
	done
	kill -0 "$rjob" 2>/dev/null && fail "$tag: group recv still runs 60 s after the sender"
	wait "$rjob" || rc=$?
	if [ "$rc" -ne 0 ]; then
		tail -30 "$LV_T/$tag-recv.log" >&"$lv_stderr"
		fail "$tag: tsubame group recv exited $rc"
	fi
}

preflight
sites_up
tsb keygen "$LV_T/key" >/dev/null || fail "tsubame keygen failed"
mkdir -p "$LV_T"/store-{a,b} "$LV_T"/state-{a,b}
for i in 0 1; do
	lv_guest_start a "${names[$i]}" "${workloads[$i]}"
done
for n in "${names[@]}"; do
	lv_wait_beat a "$n" 2 120 >/dev/null || fail "$n does not verify at site a"
done

cat >"$LV_T/plan.json" <<EOF
{"tenant": "grp", "vms": [
 {"name": "g1", "domain": "${names[0]}", "connect": "$(site_uri a)",
  "dest_uri": "$(site_tcp_uri b)", "to": "$(site_addr b):49321",
  "listen": "$(site_addr b):49321", "qemu_port": 49330, "dest_connect": "$(site_uri b)"},
 {"name": "g2", "domain": "${names[1]}", "connect": "$(site_uri a)",
  "dest_uri": "$(site_tcp_uri b)", "to": "$(site_addr b):49322",
  "listen": "$(site_addr b):49322", "qemu_port": 49332, "dest_connect": "$(site_uri b)"}]}
EOF

beats=()
for n in "${names[@]}"; do
	beats+=("$(lv_last a "$n")")
done
t0=$(now)
group_trip out
lv_log "out: two domains moved a -> b in $(since "$t0") s"
for i in 0 1; do
	n=${names[$i]}
	state=$(site_virsh b domstate "$n" 2>&1) || true
	[ "$state" = running ] || fail "site b: $n is '$state', not running"
	grep -Eq '^Persistent: +yes' <<<"$(site_virsh b dominfo "$n")" ||
		fail "site b: $n is not persistent (--persistent)"
	grep -qx "$n" <<<"$(site_virsh a list --all --name)" &&
		fail "site a still has $n (--undefinesource)"
	lv_check_ram b "$n" || fail "the guest's RAM at site b is not as asked"
	beat=$(lv_wait_beat b "$n" "${beats[$i]}" 90) || fail "$n does not verify at site b"
	lv_log "site b: $n runs, is defined and verifies (beat $beat)"
done

python3 - "$LV_T/out-send.json" "$LV_T/out-recv.json" <<'PY' ||
import json, sys
s = json.load(open(sys.argv[1]))
r = json.load(open(sys.argv[2]))
assert s["outcome"] == "ok" and s["totals"]["moved"] == 2, s["totals"]
assert r["outcome"] == "ok" and r["totals"]["arrived"] == 2, r["totals"]
vms = {v["name"]: v for v in s["vms"]}
sent = sum(v["report"]["wan"]["bytes_sent"] for v in s["vms"])
got = sum(v["report"]["wan"]["bytes_received"] for v in s["vms"])
assert s["totals"]["wan_bytes_sent"] == sent, (s["totals"], sent)
assert s["totals"]["wan_bytes_received"] == got, (s["totals"], got)
for name, v in vms.items():
    rep = v["report"]
    assert v["outcome"] == "ok", v
    assert "downtime" in rep.get("libvirt_job", {}), (name, rep.get("libvirt_job"))
    assert rep["qemu_stream_bytes"] > 32 << 20, (name, rep["qemu_stream_bytes"])
# The seed went first; the second found much of its content in b's store.
g1, g2 = vms["g1"], vms["g2"]
assert g1["end_ms"] <= g2["start_ms"] + 1000, (g1, g2)
assert g2["report"]["pages"]["group"] > 1000, g2["report"]["pages"]
print("WAN: g1 %.1f MB, g2 %.1f MB (%d pages from the group's store); libvirt downtime %d / %d ms" % (
    g1["report"]["wan"]["bytes_sent"] / 1e6, g2["report"]["wan"]["bytes_sent"] / 1e6,
    g2["report"]["pages"]["group"], g1["report"]["libvirt_job"]["downtime"],
    g2["report"]["libvirt_job"]["downtime"]), file=sys.stderr)
PY
	fail "the group's reports do not hold up"

# The same plan again: nothing left to move.
t0=$(now)
group_trip again
python3 - "$LV_T/again-send.json" "$LV_T/again-recv.json" <<'PY' ||
import json, sys
s = json.load(open(sys.argv[1]))
r = json.load(open(sys.argv[2]))
assert s["totals"]["moved_earlier"] == 2 and s["totals"]["moved"] == 0, s["totals"]
assert r["totals"]["failed"] == 0, r["totals"]
PY
	fail "the same plan again did not find both moved earlier"
lv_log "again: both moved earlier, said in $(since "$t0") s"
for n in "${names[@]}"; do
	[ "$(site_virsh b domstate "$n" 2>&1)" = running ] || fail "site b: $n no longer runs"
done
tsb_done
