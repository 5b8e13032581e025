#!/usr/bin/env bash
# Groups as one operation ('tsubame group send|recv', docs/group.md):
#  a) four VMs of one tenant in one command under one WAN budget: all
#     verified at the destination; the report's byte counts equal what the
#     links carried; the seed's pages spare the others; events and timeline;
#  b) a group of two where one VM's destination QEMU dies as its stream
#     starts (fault point): the other moves, that source runs on;
#  c) the same plan again: the moved VM counts as moved earlier, the other
#     moves now;
#  d) three VMs of shared content moving at once (no seed first) into an
#     empty store: the later ones send what the first one sends as LIVE
#     references, and every guest verifies;
#  e) two VMs with --switchover-window: the first source to stop waits,
#     paused, until the other stopped too; then both go on;
#  f) a VM whose source QEMU is gone: group send tells its receiver that it
#     will not come, and group recv ends at once (not at its --timeout).
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss python3

"$TSUBAME" keygen "$T/key" >/dev/null
workload() {
	echo "tsb.mode=memverify tsb.mem=48 tsb.seed=21 tsb.vmid=$1 tsb.content=shared tsb.random=50 tsb.dup=10"
}

# plan FILE VM...: boots each VM and its incoming twin, a WAN link per VM,
# and writes the plan (tenant red).
plan() {
	local file=$1 vm rport wport sep=""
	shift
	printf '{"tenant": "red", %s"vms": [\n' "${PLAN_EXTRA:-}" >"$file"
	for vm in "$@"; do
		start_vm "$vm" "$(workload "${vm:1}")"
		start_dest_vm "$vm-b" "$(workload "${vm:1}")"
		rport=$(free_port)
		wport=$(free_port)
		start_wanem "$wport" "$rport" 400mbit 5ms
		echo "$wport" >"$T/$vm.wanport"
		echo "$rport" >"$T/$vm.rport"
		printf '%s {"name": "%s", "qmp": "%s", "to": "127.0.0.1:%s", "dest_qmp": "%s", "listen": "127.0.0.1:%s"}\n' \
			"$sep" "$vm" "$T/$vm/qmp.sock" "$wport" "$T/$vm-b/qmp.sock" "$rport" >>"$file"
		sep=","
	done
	printf ']}\n' >>"$file"
	for vm in "$@"; do wait_beat "$vm" 1 180 >/dev/null; done
}

# group TAG PLAN "VMS" [SEND OPTIONS...]: group recv and group send of PLAN,
# once the receivers of VMS listen; exit codes in $T/TAG.rc-recv and
# $T/TAG.rc-send.
group() {
	local tag=$1 plan=$2 vms=$3 rpid src=0 rrc=0 vm
	shift 3
	# shellcheck disable=SC2086
	"$TSUBAME" group recv --plan "$plan" --key "$T/key" --store "$T/${STORES:-store}-b" \
		--report "$T/$tag-recv.json" ${RECV_ARGS:-} 2>"$T/$tag-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	for vm in $vms; do
		wait_listen "$(cat "$T/$vm.rport")" 60 ||
			fail "$tag: $vm's receiver did not listen: $(cat "$T/$tag-recv.log")"
	done
	TSUBAME_FAULT_AT=${SEND_FAULT_AT:-} TSUBAME_FAULT_CMD=${SEND_FAULT_CMD:-} \
		"$TSUBAME" group send --plan "$plan" --key "$T/key" --store "$T/${STORES:-store}-a" \
		--report "$T/$tag-send.json" --timeout 300s --no-progress "$@" \
		>"$T/$tag-send.out" 2>"$T/$tag-send.log" || src=$?
	wait "$rpid" || rrc=$?
	echo "$src" >"$T/$tag.rc-send"
	echo "$rrc" >"$T/$tag.rc-recv"
	log "$tag: group send exit $src, group recv exit $rrc"
}

# --- a) four VMs, one budget ---
plan "$T/plan-a.json" v1 v2 v3 v4
group a "$T/plan-a.json" "v1 v2 v3 v4" --bandwidth 200mbit --concurrency 2 --json --timeline "$T/a.svg"
[ "$(cat "$T/a.rc-send")" = 0 ] || fail "group send failed: $(tail -20 "$T/a-send.log")"
[ "$(cat "$T/a.rc-recv")" = 0 ] || fail "group recv failed: $(tail -20 "$T/a-recv.log")"
for vm in v1 v2 v3 v4; do verify_after "$vm" "$vm-b"; done
python3 - "$T" <<'PY' || fail "group a: report, events or timeline not as expected"
import json, sys, xml.etree.ElementTree as ET
t = sys.argv[1]
rep = json.load(open(t + "/a-send.json"))
tot = rep["totals"]
assert rep["outcome"] == "ok" and tot["moved"] == 4 and tot["failed"] == 0, tot
vms = {v["name"]: v for v in rep["vms"]}
# What each link carried, counted by its emulator, is what the reports say.
link = 0
for n in ("v1", "v2", "v3", "v4"):
    port = open("%s/%s.wanport" % (t, n)).read().strip()
    w = json.load(open("%s/wanem-%s.json" % (t, port)))
    up = w["bytes_up"]
    sent = vms[n]["report"]["wan"]["bytes_sent"]
    print("%s: %.1f MB on its link, %.1f MB in the report, group pages %d" % (
        n, up / 1e6, sent / 1e6, vms[n]["report"]["pages"]["group"]), file=sys.stderr)
    assert up == sent, (n, up, sent)
    link += up
assert tot["wan_bytes_sent"] == link, (tot, link)
# The seed went first and alone; the others found its pages at B.
assert vms["v1"]["end_ms"] <= min(vms[n]["start_ms"] for n in ("v2", "v3", "v4")) + 1000, vms
for n in ("v2", "v3", "v4"):
    assert vms[n]["report"]["pages"]["group"] > 0, (n, vms[n]["report"]["pages"])
# The budget saw every byte the VMs wrote.
assert rep["budget"]["bytes_per_s"] == 25000000, rep["budget"]
# JSON lines: progress events, then the report.
ev = [json.loads(l) for l in open(t + "/a-send.out") if l.strip()]
assert any(e["event"] == "progress" for e in ev), ev[:3]
assert ev[-1]["event"] == "report" and ev[-1]["report"]["totals"]["moved"] == 4
svg = ET.parse(t + "/a.svg").getroot()
assert svg.tag.endswith("svg") and len(list(svg.iter())) > 20
recv = json.load(open(t + "/a-recv.json"))
assert recv["totals"]["arrived"] == 4, recv["totals"]
PY
for vm in v1 v2 v3 v4; do
	kill -9 "$(cat "$T/$vm/qemu.pid")" "$(cat "$T/$vm-b/qemu.pid")"
done

# --- b) one destination dies at the first page of its stream ---
plan "$T/plan-b.json" w1 w2
SEND_FAULT_AT=precopy SEND_FAULT_CMD="kill -9 \$(cat $T/w1-b/qemu.pid)" \
	group b "$T/plan-b.json" "w1 w2" --concurrency 2
[ "$(cat "$T/b.rc-send")" = 1 ] || fail "group send: exit $(cat "$T/b.rc-send"), not 1"
[ "$(cat "$T/b.rc-recv")" = 1 ] || fail "group recv: exit $(cat "$T/b.rc-recv"), not 1"
verify_after w2 w2-b
last=$(grep -a -o 'beat [0-9]* ok' "$T/w1/serial.log" | tail -1 | awk '{print $2}')
wait_beat w1 "$last" 60 >/dev/null || fail "w1's source did not run on"
"$TSUBAME" vm status --dir "$T/w1" | grep -q 'running' || fail "w1 is not running at its source"
python3 - "$T" <<'PY' || fail "group b: report not as expected"
import json, sys
rep = json.load(open(sys.argv[1] + "/b-send.json"))
vms = {v["name"]: v for v in rep["vms"]}
assert rep["outcome"] == "partial" and rep["totals"]["failed"] == 1, rep["totals"]
assert vms["w1"]["phase"] == "failed" and vms["w1"]["why"], vms["w1"]
assert vms["w2"]["phase"] == "moved", vms["w2"]
PY
grep -q 'w1' "$T/b-send.out" || fail "the table does not name w1"

# --- c) the same plan again: w2 moved earlier, w1 moves now ---
kill -9 "$(cat "$T/w1-b/qemu.pid")" 2>/dev/null || true
start_dest_vm w1-b "$(workload 1)"
group c "$T/plan-b.json" "w1"
[ "$(cat "$T/c.rc-send")" = 0 ] || fail "rerun: group send failed: $(tail -20 "$T/c-send.log")"
[ "$(cat "$T/c.rc-recv")" = 0 ] || fail "rerun: group recv failed: $(tail -20 "$T/c-recv.log")"
verify_after w1 w1-b
python3 - "$T" <<'PY' || fail "group c: report not as expected"
import json, sys
t = sys.argv[1]
rep = json.load(open(t + "/c-send.json"))
vms = {v["name"]: v for v in rep["vms"]}
assert vms["w2"]["phase"] == "moved-earlier", vms["w2"]
assert vms["w1"]["phase"] == "moved", vms["w1"]
assert rep["totals"] == dict(rep["totals"], moved=1, moved_earlier=1, failed=0), rep["totals"]
recv = json.load(open(t + "/c-recv.json"))
assert recv["totals"]["arrived"] == 1 and recv["totals"]["arrived_earlier"] == 1, recv["totals"]
PY

# --- d) live sharing: all at once into an empty store ---
PLAN_EXTRA='"seed_first": false, ' plan "$T/plan-d.json" x5 x6 x7
STORES=live group d "$T/plan-d.json" "x5 x6 x7" --bandwidth 200mbit --concurrency 3
[ "$(cat "$T/d.rc-send")" = 0 ] || fail "live: group send failed: $(tail -20 "$T/d-send.log")"
[ "$(cat "$T/d.rc-recv")" = 0 ] || fail "live: group recv failed: $(tail -20 "$T/d-recv.log")"
for vm in x5 x6 x7; do verify_after "$vm" "$vm-b"; done
python3 - "$T" <<'PY' || fail "group d: no live sharing: $(grep -h 'LIVE\|group' "$T/d-send.log" | tail -5)"
import json, sys
t = sys.argv[1]
rep = json.load(open(t + "/d-send.json"))
vms = {v["name"]: v for v in rep["vms"]}
recv = {v["name"]: v for v in json.load(open(t + "/d-recv.json"))["vms"]}
live = 0
for n in ("x5", "x6", "x7"):
    p = vms[n]["report"]["pages"]
    port = open("%s/%s.wanport" % (t, n)).read().strip()
    up = json.load(open("%s/wanem-%s.json" % (t, port)))["bytes_up"]
    assert up == vms[n]["report"]["wan"]["bytes_sent"], (n, up)
    w = recv[n]["report"].get("group_live", {})
    print("%s: %.1f MB on its link, live pages %d (the receiver waited for %d, %d ms)" % (
        n, up / 1e6, p["group_live"], w.get("waited_for", -1), w.get("wait_ms", -1)),
        file=sys.stderr)
    if n == "x5":
        assert p["group_live"] == 0, p	# the first references no one
    live += p["group_live"]
assert live > 0, "no LIVE reference"
PY

# --- e) a switchover window: both sources stop, then both go on ---
plan "$T/plan-e.json" y1 y2
STORES=gate group e "$T/plan-e.json" "y1 y2" --concurrency 2 --no-seed --switchover-window 60s
[ "$(cat "$T/e.rc-send")" = 0 ] || fail "window: group send failed: $(tail -20 "$T/e-send.log")"
[ "$(cat "$T/e.rc-recv")" = 0 ] || fail "window: group recv failed: $(tail -20 "$T/e-recv.log")"
for vm in y1 y2; do verify_after "$vm" "$vm-b"; done
python3 - "$T" <<'PY' || fail "group e: the switchover gate did not hold"
import json, sys
rep = json.load(open(sys.argv[1] + "/e-send.json"))
v = [x for x in rep["vms"] if x["name"] in ("y1", "y2")]
came = [x["switchover_at_ms"] - x["gate_wait_ms"] for x in v]
went = [x["switchover_at_ms"] for x in v]
print("gate: stopped at %s ms, went on at %s ms" % (came, went), file=sys.stderr)
# Neither went on before both had stopped (1 ms of rounding).
assert max(came) <= min(went) + 1, (came, went)
PY

# --- f) a source gone before it started: its receiver hears so ---
plan "$T/plan-f.json" z1
kill -9 "$(cat "$T/z1/qemu.pid")"
t0=$SECONDS
STORES=gone RECV_ARGS="--timeout 300s" group f "$T/plan-f.json" "z1"
[ "$(cat "$T/f.rc-send")" = 1 ] || fail "gone: group send: exit $(cat "$T/f.rc-send"), not 1"
[ "$(cat "$T/f.rc-recv")" = 1 ] || fail "gone: group recv: exit $(cat "$T/f.rc-recv"), not 1"
grep -q "told its receiver that it will not come" "$T/f-send.log" ||
	fail "gone: the receiver was not told: $(tail -5 "$T/f-send.log")"
python3 - "$T" <<'PY' || fail "group f: the receiver's report does not say why"
import json, sys
rep = json.load(open(sys.argv[1] + "/f-recv.json"))
v = rep["vms"][0]
print("gone: recv says %s: %s" % (v["outcome"], v.get("why", "")), file=sys.stderr)
assert v["outcome"] != "ok" and "cancelled" in v.get("why", ""), v
PY
log "gone: group recv ended after $((SECONDS - t0)) s (its --timeout: 300 s)"
exit 0
