#!/usr/bin/env bash
# Strangers at a waiting receiver's port cannot stop the migration: a
# sender with the wrong key, one of another VM, one whose key is bound to
# another tenant, a plaintext client, a TLS client (openssl) without the
# key, a client that stalls after one byte, and 100 connections at once are
# refused and counted while recv keeps waiting (and a receiver for a
# libvirt destination refuses a plain sender); then the real sender (its
# key bound to its tenant) migrates the guest and it verifies at the
# destination.
: "${VM_MEM:=131076K}"
. "$(dirname "$0")/lib.sh"
require_guest
requires python3 ss

"$TSUBAME" keygen "$T/key" >/dev/null
"$TSUBAME" keygen "$T/other-key" >/dev/null
# The receiver takes a site key and a key bound to tenant acme.
"$TSUBAME" keygen --id acme-only --tenants acme "$T/acme-key" >/dev/null
(umask 077 && cat "$T/key" "$T/acme-key" >"$T/recv-keys")
workload="tsb.mode=memverify tsb.mem=48 tsb.seed=11 tsb.vmid=8 tsb.random=100 tsb.dup=0"
start_vm src "$workload"
start_dest_vm dst "$workload"
wait_beat src 1 120 >/dev/null || fail "the guest did not start verifying"

port=$(free_port)
"$TSUBAME" recv --listen "127.0.0.1:$port" --qmp "$T/dst/qmp.sock" --key "$T/recv-keys" \
	--no-store --state-dir "$T/state-b" --report "$T/recv.json" --vm-id guest 2>"$T/recv.log" &
rpid=$!
cleanup_pids+=("$rpid")
wait_listen "$port" 30 || fail "recv did not listen: $(cat "$T/recv.log")"
alive() { kill -0 "$rpid" 2>/dev/null || fail "recv gave up after $1: $(tail -3 "$T/recv.log")"; }

# 1. A real tsubame with the wrong key: it is told, recv waits on.
rc=0
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$port" --key "$T/other-key" \
	--no-store --state-dir "$T/state-a" --no-progress 2>"$T/send-wrong.log" || rc=$?
[ "$rc" -eq 5 ] || fail "wrong key: send exit $rc, expected 5 ($(cat "$T/send-wrong.log"))"
sleep 0.5
alive "a wrong key"

# 2. The right key, another VM than this receiver waits for.
rc=0
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$port" --key "$T/key" --vm-id intruder \
	--no-store --state-dir "$T/state-a" --no-progress 2>"$T/send-vm.log" || rc=$?
[ "$rc" -ne 0 ] || fail "another VM was taken"
grep -q "waits for VM 'guest'" "$T/send-vm.log" || fail "another VM: no reason: $(cat "$T/send-vm.log")"
alive "another VM"

# 2b. A key bound to tenant acme, for a VM of another tenant, or of none.
for t in beta ""; do
	rc=0
	"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$port" --key "$T/acme-key" \
		--vm-id guest ${t:+--tenant "$t"} --no-store --state-dir "$T/state-a" \
		--no-progress 2>"$T/send-tenant.log" || rc=$?
	[ "$rc" -ne 0 ] || fail "a key bound to acme migrated a VM of tenant '${t:-vm-guest}'"
	grep -q "may act for tenant(s) acme only" "$T/send-tenant.log" ||
		fail "tenant '$t': no reason: $(cat "$T/send-tenant.log")"
	alive "a key of another tenant"
done

# 2c. A receiver for a libvirt destination (--qemu-connect) refuses a
# 'tsubame send', which settles its switchover itself: the two switchover
# protocols never meet.
lport=$(free_port)
"$TSUBAME" recv --listen "127.0.0.1:$lport" --qemu-connect "127.0.0.1:$(free_port)" \
	--key "$T/key" --no-store --state-dir "$T/state-l" 2>"$T/recv-lv.log" &
lpid=$!
cleanup_pids+=("$lpid")
wait_listen "$lport" 30 || fail "recv --qemu-connect did not listen: $(cat "$T/recv-lv.log")"
rc=0
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$lport" --key "$T/key" --vm-id guest \
	--no-store --state-dir "$T/state-a" --no-progress 2>"$T/send-lv.log" || rc=$?
[ "$rc" -ne 0 ] || fail "a receiver for libvirt took a 'tsubame send'"
grep -q "serves a libvirt migration" "$T/send-lv.log" ||
	fail "libvirt receiver: no reason: $(cat "$T/send-lv.log")"
kill "$lpid" 2>/dev/null || true
alive "a sender for another kind of receiver"

# 3. Plaintext.
python3 - "$port" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
s.settimeout(10)
try:
    s.recv(100)
except Exception:
    pass
PY
alive "a plaintext client"

# 4. A TLS client without the key (as anyone could try).
if command -v openssl >/dev/null; then
	timeout 10 openssl s_client -tls1_3 -connect "127.0.0.1:$port" </dev/null >/dev/null 2>&1 || true
	alive "openssl s_client"
fi

# 5. One byte of a TLS record, then silence; and 100 connections at once,
# half of them stalled, half sending garbage. They stay open meanwhile.
python3 - "$port" "$T/flood.ready" <<'PY' &
import os, socket, sys, time
port, ready = int(sys.argv[1]), sys.argv[2]
socks = []
for i in range(101):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x16" if i % 2 == 0 else os.urandom(64))
    socks.append(s)
open(ready, "w").close()
time.sleep(20)
PY
flood=$!
cleanup_pids+=("$flood")
for ((i = 0; i < 100; i++)); do [ -e "$T/flood.ready" ] && break; sleep 0.1; done
[ -e "$T/flood.ready" ] || fail "the flood did not connect"
alive "101 connections"

# 6. The real sender still gets through, while the flood holds its sockets.
"$TSUBAME" send --qmp "$T/src/qmp.sock" --to "127.0.0.1:$port" --key "$T/acme-key" \
	--vm-id guest --tenant acme --no-store --state-dir "$T/state-a" --no-progress \
	--timeout 120s 2>"$T/send.log" ||
	fail "the real sender failed: $(cat "$T/send.log")"
wait "$rpid" || fail "recv failed: $(tail -3 "$T/recv.log")"
verify_after src dst
n=$(python3 -c "import json;print(json.load(open('$T/recv.json'))['refused_connections'])")
[ "$n" -ge 100 ] || fail "recv counted $n refused connections, expected at least 100"
grep -q "refused a connection" "$T/recv.log" || fail "no refusal was logged"
log "recv refused $n connections and took the real sender"
exit 0
