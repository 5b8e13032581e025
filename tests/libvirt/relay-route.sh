#!/usr/bin/env bash
# The route a tsubame transport for libvirt will take, proved with plain
# relays: libvirt's own live p2p migration of a self-verifying guest from
# site a to site b, with QEMU's stream sent to an endpoint on site a's
# loopback (--migrateuri tcp://127.0.0.1:PORT) and the destination QEMU
# listening on site b's loopback (--listen-address 127.0.0.1, same PORT),
# so that nothing but the two endpoints crosses between the sites: a
# relay at a takes the source QEMU's connection and dials the relay at b,
# which dials the destination QEMU. libvirt keeps its job control and its
# Finish/Confirm handshake. Each relay counts the bytes it moved; the guest
# must run and verify at b only, and the stream must have passed through
# both relays. Exit 0 if all of that held, 77 if this machine cannot run
# it. Needs root; not part of make check (it tests libvirt, not tsubame).
#
#   tests/libvirt/relay-route.sh     GUEST_DIR=... to use another guest build
set -euo pipefail

# shellcheck source=tests/libvirt/sites.sh
. "$(dirname "$0")/sites.sh"

name=relay
workload="tsb.mode=memverify tsb.mem=96 tsb.seed=9 tsb.vmid=3 tsb.random=50 tsb.dup=10 tsb.dirty=2 tsb.wss=16"
port=49300	# the destination QEMU's, on b's loopback, and the source's endpoint on a's
wan_port=49301	# the relay at b, on the sites' link

fail() { lv_log "FAIL: $*"; exit 1; }
skip() { lv_log "SKIP: $*"; exit 77; }
trap 'exit 130' INT TERM

preflight() {
	local c
	[ "$(id -u)" -eq 0 ] || skip "needs root (namespaces, libvirtd)"
	for c in virsh libvirtd virtlogd qemu-system-x86_64 nsenter unshare ip python3; do
		command -v "$c" >/dev/null 2>&1 || skip "needs $c (scripts/install-deps)"
	done
	if [ ! -f "$GUEST_DIR/vmlinuz" ] || [ ! -f "$GUEST_DIR/initrd.img" ]; then
		skip "no guest image in $GUEST_DIR (run scripts/build-guest)"
	fi
}

# relay SITE LISTEN_ADDR LISTEN_PORT TO_ADDR TO_PORT COUNTS: a one-connection
# TCP relay in SITE's namespace (both directions), its byte counts "in out"
# written to COUNTS as they change. Runs in the background.
relay() {
	site_exec "$1" python3 - "$2" "$3" "$4" "$5" "$6" <<'PY' &
import socket, sys, threading
lh, lp, th, tp, counts = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
ls = socket.create_server((lh, lp))
a, _ = ls.accept()
b = socket.create_connection((th, tp))
n = [0, 0]
def pump(src, dst, i):
    while True:
        d = src.recv(1 << 16)
        if not d:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            return
        n[i] += len(d)
        dst.sendall(d)
        with open(counts, "w") as f:
            f.write("%d %d\n" % (n[0], n[1]))
ts = [threading.Thread(target=pump, args=(a, b, 0)), threading.Thread(target=pump, args=(b, a, 1))]
for t in ts:
    t.start()
for t in ts:
    t.join()
PY
}

preflight
sites_up
lv_guest_start a "$name" "$workload"
lv_wait_beat a "$name" 2 120 >/dev/null || fail "the guest does not verify at site a"
beat=$(lv_last a "$name")

relay b "$(site_addr b)" "$wan_port" 127.0.0.1 "$port" "$LV_T/relay-b"
relay a 127.0.0.1 "$port" "$(site_addr b)" "$wan_port" "$LV_T/relay-a"
sleep 1	# both relays listening (nothing to wait on: python3 - has no readiness signal)

site_virsh a migrate --live --p2p --persistent --undefinesource "$name" \
	"$(site_tcp_uri b)" "tcp://127.0.0.1:$port" --listen-address 127.0.0.1 \
	>"$LV_T/migrate.log" 2>&1 ||
	fail "migration through the relays failed: $(cat "$LV_T/migrate.log")"

state=$(site_virsh b domstate "$name" 2>&1) || true
[ "$state" = running ] || fail "site b: $name is '$state', not running"
list=$(site_virsh a list --all --name)
! grep -qx "$name" <<<"$list" || fail "site a still has $name"
read -r a_in a_out <"$LV_T/relay-a" || fail "the relay at a moved nothing"
read -r b_in b_out <"$LV_T/relay-b" || fail "the relay at b moved nothing"
[ "$a_in" -gt $((64 << 20)) ] || fail "only $a_in bytes passed the relay at a"
[ "$a_in" = "$b_in" ] || fail "relay a took $a_in bytes, relay b gave $b_in"
[ "$a_out" = "$b_out" ] || fail "the return path: relay b took $b_out bytes, relay a gave $a_out"
lv_wait_beat b "$name" "$beat" 60 >/dev/null || fail "the guest does not verify at site b"
lv_log "migrated a -> b through both relays: $a_in bytes to the destination," \
	"$a_out back (the return path)"
sites_down
lv_log PASS
