#!/usr/bin/env python3
"""Writes the seed corpora of fuzz-net-frame, fuzz-net-bmsg and fuzz-net-ctl
(tests/fuzz/corpus/net-*). Binding messages are signed with the key that
fuzz-net-bmsg.c holds. Run from the repository root."""
import hashlib, hmac, os, struct

C = "tests/fuzz/corpus"
KEY = b"tsubame-fuzz-site-key-0123456789"
vm_mac = bytes.fromhex("525400610010")
gw_mac = bytes.fromhex("5254006100aa")
bc = b"\xff" * 6

def w(d, name, data):
    os.makedirs(os.path.join(C, d), exist_ok=True)
    with open(os.path.join(C, d, name), "wb") as f:
        f.write(data)

arp_req = bc + gw_mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + \
    gw_mac + bytes([10, 61, 1, 1]) + b"\0" * 6 + bytes([10, 61, 1, 10])
ip4 = bytes([0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 61, 103, 2, 10, 61, 1, 10])
tcp = struct.pack("!HHIIBBHHH", 40000, 7000, 1, 0, 0x50, 0x02, 65535, 0, 0)
ipv4_frame = vm_mac + gw_mac + b"\x08\x00" + ip4 + tcp
src6 = bytes.fromhex("fd610001000000000000000000000001")
tgt6 = bytes.fromhex("fd61000100000000000000000000000a")
snm = bytes.fromhex("ff0200000000000000000001ff00000a")
ns = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + tgt6 + bytes([1, 1]) + gw_mac
ip6 = bytes([0x60, 0, 0, 0]) + struct.pack("!H", len(ns)) + bytes([58, 255]) + src6 + snm
ns_frame = bytes.fromhex("3333ff00000a") + gw_mac + b"\x86\xdd" + ip6 + ns
vx = bytes([8, 0, 0, 0, 0, 0, 42, 0])
w("net-frame", "arp-request", arp_req)
w("net-frame", "ipv4-tcp", ipv4_frame)
w("net-frame", "ipv6-ns", ns_frame)
w("net-frame", "vxlan-arp", vx + arp_req)
w("net-frame", "vxlan-no-i-flag", bytes(8) + arp_req)
w("net-frame", "short", b"\x08\x00\x00")
w("net-frame", "csum-offsets", struct.pack("!HH", 34, 16) + ipv4_frame)
ip4big = bytes([0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0, 10, 61, 103, 2, 10, 61, 1, 10])
w("net-frame", "gso-tcp4", struct.pack("!H", 1448) + vm_mac + gw_mac + b"\x08\x00" + ip4big + tcp + bytes(4000))

def s(x):
    return bytes([len(x)]) + x

def bmsg(typ, status, seq, life, addrs, sender=b"B", vm=b"vm1", home=b"A", cur=b"B"):
    body = b"TSBN" + bytes([1, typ, status, 0]) + struct.pack("!IIQ", seq, life, 0x1122334455667788)
    body += vm_mac + bytes([len(addrs)]) + s(sender) + s(vm) + s(home) + s(cur)
    for a in addrs:
        body += (bytes([4]) if len(a) == 4 else bytes([6])) + a
    return body + hmac.new(KEY, body, hashlib.sha256).digest()

w("net-bmsg", "bu", bmsg(1, 0, 7, 60, [bytes([10, 61, 1, 10]), tgt6]))
w("net-bmsg", "ba-accepted", bmsg(2, 0, 7, 60, []))
w("net-bmsg", "ba-135", bmsg(2, 135, 9, 0, []))
w("net-bmsg", "bu-dereg", bmsg(1, 0, 8, 0, [bytes([10, 61, 1, 10])]))
bad = bytearray(bmsg(1, 0, 7, 60, [])); bad[-1] ^= 1
w("net-bmsg", "bad-hmac", bytes(bad))
w("net-bmsg", "truncated", bmsg(1, 0, 7, 60, [])[:40])

w("net-ctl", "arrive", b'{"op":"arrive","vm":"vm1","mac":"52:54:00:61:00:10","addrs":["10.61.1.10","fd61:1::a"],"home":"A","wait_ms":3000}')
w("net-ctl", "bind", b'{"op":"bind","vm":"vm1","mac":"52:54:00:61:00:10","addrs":["10.61.1.10"],"home":"A","current":"B","lifetime":30}')
w("net-ctl", "depart", b'{"op":"depart","vm":"vm1"}')
w("net-ctl", "status", b'{"op":"status"}')
w("net-ctl", "dup-key", b'{"op":"status","op":"status"}')
w("net-ctl", "bad-types", b'{"op":"arrive","vm":1,"addrs":"x"}')
