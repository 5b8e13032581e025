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

# fuzz-net-agent: programs of operations on an agent of site A with peers B
# and C (tests/fuzz/fuzz-net-agent.c). Operations, integers big-endian:
#   0 ctl     ci len16 bytes            6 super   gso_type gso16 payload16 src dst v6
#   1 raw     from len16(|0x8000 trunc) bytes
#   2 bu      sender key from vm mac home cur seq32 life32 nonce naddrs
#   3 ba      sender key from vm status seq32 life32 echo
#   4 vxlan   from vni32 len16 bytes    7 time    ms32
#   5 packet  flags gso_type gso16 cstart16 coff16 len16 bytes
#   8 restart   9 savefail b   10 reflect from   11 wall s32
# sender: 0 A 1 B 2 C 3 D; key: 0 A-B 1 A-C; from: 0 B 1 C 2 outsider;
# vm i: "vm<i>", MAC 52:54:00:61:00:1<i>; bu nonce byte: 0x80 seq relative
# to the home's (+low byte of seq - 8), 0x40 lifetime % 200, 0x20 echo the
# binding's nonce; ba status 0..3: 0, 135, 128, 131, else as is; ba echo
# byte: 1 echo the nonce, 0x80 seq relative.
def op_ctl(line, ci=0):
    return bytes([0, ci]) + struct.pack("!H", len(line)) + line
def op_raw(frm, data, trunc=False):
    return bytes([1, frm]) + struct.pack("!H", len(data) | (0x8000 if trunc else 0)) + data
def op_bu(sender, key, frm, vm, seq, life=60, nonce=1, mac=None, home=0, cur=0, naddrs=2):
    return bytes([2, sender, key, frm, vm, vm if mac is None else mac, home, cur]) + \
        struct.pack("!II", seq, life) + bytes([nonce, naddrs])
def op_ba(sender, key, frm, vm, status=0, seq=0, life=60, echo=1):
    return bytes([3, sender, key, frm, vm, status]) + struct.pack("!II", seq, life) + bytes([echo])
def op_vxlan(frm, vni, inner):
    return bytes([4, frm]) + struct.pack("!IH", vni, len(inner)) + inner
def op_packet(frame, flags=0, gso_type=0, gso=0, cstart=0, coff=0):
    return bytes([5, flags, gso_type]) + struct.pack("!HHHH", gso, cstart, coff, len(frame)) + frame
def op_super(gso_type, gso, payload, src, dst, v6=0):
    return bytes([6, gso_type]) + struct.pack("!HH", gso, payload) + bytes([src, dst, v6])
def op_time(ms):
    return bytes([7]) + struct.pack("!I", ms)
RESTART = bytes([8])
def op_savefail(on):
    return bytes([9, 1 if on else 0])
def op_reflect(frm):
    return bytes([10, frm])
def op_wall(s):
    return bytes([11]) + struct.pack("!I", s)

def vmmac(i):
    return bytes.fromhex("5254006100") + bytes([0x10 + i])
def ctl_json(**kw):
    import json
    return json.dumps(kw, separators=(",", ":")).encode()
def arp_for(ip4):
    return bc + gw_mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + \
        gw_mac + bytes([10, 0, 0, 99]) + b"\0" * 6 + ip4
def ns_for(tgt):
    body = bytes([135, 0, 0, 0, 0, 0, 0, 0]) + tgt + bytes([1, 1]) + gw_mac
    hdr = bytes([0x60, 0, 0, 0]) + struct.pack("!H", len(body)) + bytes([58, 255]) + src6 + \
        bytes.fromhex("ff0200000000000000000001ff000000")
    return bytes.fromhex("3333ff000000") + gw_mac + b"\x86\xdd" + hdr + body
def udp4(dst_mac, src_mac, dst_ip):
    ip = bytes([0x45, 0, 0, 28, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 99]) + dst_ip
    return dst_mac + src_mac + b"\x08\x00" + ip + bytes(8)

SA, SB, SC, SD = 0, 1, 2, 3
KAB, KAC = 0, 1
FB, FC, FX = 0, 1, 2
arrive_home = lambda vm, **kw: op_ctl(ctl_json(op="arrive", vm="vm%d" % vm,
    mac="52:54:00:61:00:1%d" % vm, addrs=["10.0.0.%d" % (vm * 8)], home="A", **kw))
w("net-agent", "home-replay-restart",
  op_bu(SB, KAB, FB, 1, 5, nonce=5) + op_bu(SB, KAB, FB, 1, 6, nonce=6) + RESTART +
  op_bu(SB, KAB, FB, 1, 5, nonce=5) + op_bu(SB, KAB, FB, 1, 6, nonce=6) +
  arrive_home(1) + RESTART + op_bu(SB, KAB, FB, 1, 6, nonce=6) +
  op_bu(SB, KAB, FB, 1, 8, nonce=8) + op_time(70000) + op_bu(SB, KAB, FB, 1, 9, nonce=9) +
  op_wall(100) + RESTART + op_bu(SB, KAB, FB, 1, 0, life=0, nonce=0x80 | 9) + RESTART)
w("net-agent", "visitor-registration",
  op_ctl(ctl_json(op="arrive", vm="vm2", mac="52:54:00:61:00:12", addrs=["10.0.0.16"],
                  home="B", wait_ms=2000), ci=1) +
  op_time(100) + op_time(200) + op_ba(SB, KAB, FB, 2) + op_time(31000) +
  op_ba(SB, KAB, FB, 2, status=1, echo=0x81) + op_ba(SB, KAB, FB, 2, status=1, seq=40, echo=1) +
  op_time(31000) + op_ba(SB, KAB, FB, 2, status=1, echo=1) +
  op_ctl(ctl_json(op="arrive", vm="vm3", mac="52:54:00:61:00:13", addrs=["10.0.0.24"],
                  home="C", when_seen=True)) +
  op_packet(udp4(gw_mac, vmmac(3), bytes([10, 61, 2, 5]))) +
  op_packet(udp4(gw_mac, vmmac(3), bytes([10, 9, 9, 9]))) +
  op_ba(SC, KAC, FC, 3, status=2) + op_time(5000) + op_time(60000) +
  op_vxlan(FC, 1, udp4(vmmac(3), gw_mac, bytes([10, 0, 0, 24]))) +
  op_vxlan(FC, 1, arp_for(bytes([10, 0, 0, 24]))) +
  op_ctl(ctl_json(op="depart", vm="vm2")) + op_ctl(ctl_json(op="status")))
w("net-agent", "gso-super-frames",
  op_ctl(ctl_json(op="bind", vm="vm1", mac="52:54:00:61:00:11", addrs=["10.0.0.8"],
                  home="B", current="A")) +
  op_super(1, 1, 60000, 1, 0) + op_super(1, 535, 60000, 1, 0) +
  op_super(1, 1448, 60000, 1, 0) + op_super(4, 1220, 30000, 1, 0, v6=1) +
  op_super(1, 536, 65000, 1, 0) + op_super(0x81, 1448, 3000, 1, 0) +
  op_super(3, 1448, 3000, 1, 0) + op_super(0, 0, 3000, 1, 0) +
  op_packet(ipv4_frame, flags=1, cstart=34, coff=16) +
  op_packet(ipv4_frame, flags=1, cstart=60, coff=0xfff0))
w("net-agent", "pair-keys",
  op_bu(SC, KAB, FC, 1, 10) + op_bu(SB, KAC, FB, 1, 10) + op_bu(SB, KAC, FC, 1, 10) +
  op_bu(SA, KAB, FB, 1, 10) + op_bu(SD, KAB, FX, 1, 10) +
  op_bu(SC, KAC, FC, 1, 10) + op_bu(SB, KAB, FB, 1, 11) +
  op_bu(SB, KAB, FB, 2, 1, home=SB) + op_bu(SB, KAB, FB, 2, 1, cur=0x80 | SC) +
  op_bu(SB, KAB, FB, 2, 1, mac=4) + op_bu(SB, KAB, FB, 2, 1, mac=1) +
  op_bu(SB, KAB, FB, 2, 0xffffffff, life=0xffffffff))
w("net-agent", "garbage-and-reflection",
  op_raw(FX, b"\x00" + bytes(range(200))) + op_raw(FB, b"TSBN" + bytes(60)) +
  op_raw(FB, bmsg(1, 0, 7, 60, [])) + op_raw(FC, b"", trunc=True) +
  op_vxlan(FB, 7, udp4(vmmac(1), gw_mac, bytes([10, 0, 0, 8]))) +
  op_vxlan(FX, 1, arp_req) + op_vxlan(FB, 1, b"\x01\x02") +
  op_ctl(ctl_json(op="arrive", vm="vm0", mac="52:54:00:61:00:10", addrs=["10.0.0.0"],
                  home="B")) + op_reflect(FB) + op_reflect(FX) +
  op_bu(SB, KAB, FB, 1, 3) + op_reflect(FB) + op_reflect(FC))
w("net-agent", "state-write-fails",
  op_savefail(True) + op_bu(SB, KAB, FB, 1, 3) +
  op_ctl(ctl_json(op="bind", vm="vm1", mac="52:54:00:61:00:11", addrs=[], home="A",
                  current="B")) + arrive_home(1) + RESTART + op_savefail(False) +
  op_bu(SB, KAB, FB, 1, 4) + op_savefail(True) + arrive_home(1, when_seen=True) +
  op_packet(udp4(gw_mac, vmmac(1), bytes([10, 0, 0, 1]))) + RESTART +
  op_savefail(False) + op_bu(SB, KAB, FB, 1, 4) + RESTART)
w("net-agent", "home-proxy-and-tunnel",
  op_bu(SB, KAB, FB, 1, 1, naddrs=2) + op_bu(SC, KAC, FC, 2, 1, naddrs=1) +
  op_packet(arp_for(bytes([10, 0, 0, 8]))) +
  op_packet(ns_for(bytes([10, 0, 0, 9]) + bytes(12))) +
  op_packet(udp4(vmmac(1), gw_mac, bytes([10, 0, 0, 8]))) +
  op_vxlan(FB, 1, udp4(gw_mac, vmmac(1), bytes([10, 0, 0, 1]))) +
  op_vxlan(FC, 1, udp4(gw_mac, vmmac(1), bytes([10, 0, 0, 1]))) +
  op_ctl(ctl_json(op="unbind", vm="vm2")) + op_ctl(ctl_json(op="status")) +
  arrive_home(1, when_seen=True) +
  op_packet(udp4(gw_mac, vmmac(1), bytes([10, 0, 0, 1]))) +
  op_bu(SB, KAB, FB, 1, 2) + op_time(61000) + op_time(1000) + RESTART)
