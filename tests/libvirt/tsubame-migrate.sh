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
# carried bytes. The guest's two local disks move with it (tsubame migrate
# --disk vda --disk vdb: libvirt's NBD mirror through tsubame's disk
# channel, both exports on one port; the targets are created at b by
# libvirt in the transient storage pool tsubame migrate starts there, gone
# after the trip): vda holds what the guest wrote, vdb is as it
# was, checked after each trip. The return trip's send report shows
# pages reused from the image left at a and far fewer WAN bytes than the
# first trip, and its disk channel finds most blocks already in place.
#
# Exit 0 pass, 1 fail, 77 if this machine cannot run it (needs root and
# libvirt). make check runs it against the sanitizer build (meson test
# libvirt-tsubame-migrate, suite integration); by hand:
#
#   tests/libvirt/tsubame-migrate.sh   BUILD=DIR (default build/) or
#                                      TSUBAME=BINARY; GUEST_DIR=...
set -euo pipefail

# shellcheck source=tests/libvirt/tsubame-lib.sh
. "$(dirname "$0")/tsubame-lib.sh"

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
tsb_setup

trip a b out
check_moved a b
rec=$(check_disk b)
out_bytes=$(check_reports out) || exit 1
if [ "$TSB_LV_DISK" = 1 ]; then
	# b's targets were missing and b has no pool: tsubame's transient one
	# let libvirt create them, and it ended with the trip.
	grep -q "transient storage pool for" "$LV_T/out-send.log" ||
		fail "no transient storage pool was made at b: $(tail -5 "$LV_T/out-send.log")"
	pools=$(site_virsh b pool-list --all --name | grep -c . || true)
	[ "$pools" -eq 0 ] || fail "b still has storage pools after the trip: $(site_virsh b pool-list --all)"
fi

# The guest keeps dirtying its working set at b for a while.
sleep 4
trip b a back
check_moved b a
rec2=$(check_disk a)
back_bytes=$(check_reports back) || exit 1
if [ "$TSB_LV_DISK" = 1 ]; then
	[ "$rec2" -gt "$rec" ] || fail "the guest wrote no disk record at b ($rec, then $rec2)"
	lv_log "the disk verified at b (record $rec) and back at a (record $rec2)"
fi

lv_log "WAN bytes: a -> b $out_bytes, b -> a $back_bytes"
python3 - "$LV_T/out-send.json" "$LV_T/back-send.json" "$LV_T/back-recv.json" <<'PY' ||
import json, sys
l1, l2, r2 = (json.load(open(f)) for f in sys.argv[1:4])
b1, b2 = l1["wan"]["bytes_sent"], l2["wan"]["bytes_sent"]
print("return trip: %.1f MB vs %.1f MB out (%.1f%%); pages %s; rebuilt at a %s; store %s" % (
    b2 / 1e6, b1 / 1e6, 100.0 * b2 / b1, l2["pages"], r2.get("rebuilt_from"),
    l2.get("store")), file=sys.stderr)
# libvirt's own figures of each job (its job-completed event).
for rep in (l1, l2):
    assert "downtime" in rep.get("libvirt_job", {}), rep.get("libvirt_job")
print("libvirt: downtime %d ms out, %d ms back; %d ms and %d ms in all" % (
    l1["libvirt_job"]["downtime"], l2["libvirt_job"]["downtime"],
    l1["libvirt_job"]["time_elapsed"], l2["libvirt_job"]["time_elapsed"]), file=sys.stderr)
assert l2.get("store", {}).get("reused_image"), "no earlier image of the guest found at a"
assert l2["pages"]["reused"] > 0, l2["pages"]
assert b2 < b1 * 0.5, (b1, b2)
# The disk: the first trip filled a target libvirt created at b; the way
# back found nearly all of it still in place at a.
if "disks" in l1:
    d1, d2 = l1["disks"], l2["disks"]
    c1, c2 = d1["channel_net_bytes"], d2["channel_net_bytes"]
    assert len(d1["disks"]) == 2 and len(r2["disks"]["disks"]) == 2, d1
    in_place = sum(d["blocks"]["same"] for d in r2["disks"]["disks"])
    print("disk channel: %.1f MB out, %.1f MB back (%d blocks already in place at a)" % (
        c1 / 1e6, c2 / 1e6, in_place), file=sys.stderr)
    assert all(d["complete"] for d in r2["disks"]["disks"]), r2["disks"]
    assert in_place > 0 and c2 < c1 * 0.25, (c1, c2, in_place)
PY
	fail "the return trip did not reuse the image left at site a"
tsb_done
