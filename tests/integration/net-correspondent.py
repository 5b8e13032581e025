#!/usr/bin/env python3
"""Correspondent node for the network tests (tests/integration/6x-*.sh).

  echo-server ADDR PORT          TCP echo server (until killed)
  check ADDR PORT BYTES          connect, send BYTES of a pattern, verify echo
  hold ADDR PORT RESULT STOPFILE hold one TCP connection: every 20 ms send a
                                 numbered 64-byte record and verify the echo;
                                 ping ADDR (ICMP echo) every 20 ms; stop when
                                 STOPFILE exists; write a JSON result
  sink ADDR PORT                 accept one connection, read to EOF, print
                                 {"bytes": N, "seconds": S} (bench/net)
  blast ADDR PORT SECONDS        send as fast as possible for SECONDS
  probe ADDR COUNT INTERVAL      ICMP(v6) echo to ADDR COUNT times, one every
                                 INTERVAL s; print {"sent", "answered",
                                 "longest_gap_ms"}; exit 0 even when none
                                 was answered
  sniff IFNAME SECONDS           print what reached IFNAME in SECONDS, as
                                 JSON: the payloads of UDP datagrams and the
                                 targets of ARP requests, with their sources
  bcast ADDR PORT TEXT           one UDP datagram with TEXT to ADDR (a
                                 broadcast address), from any port
  txcsum-off IFNAME               turn off transmit checksum offload (what
                                 'ethtool -K IFNAME tx off' does): a veth or
                                 VXLAN device otherwise hands partial
                                 checksums to whoever reads the bytes
Exit 0 when every byte matched and no reset happened.
"""
import array, fcntl, json, os, select, socket, struct, sys, time

def txcsum_off(ifname):
    SIOCETHTOOL, ETHTOOL_STXCSUM = 0x8946, 0x17
    val = array.array("B", struct.pack("II", ETHTOOL_STXCSUM, 0))
    addr, _ = val.buffer_info()
    ifr = struct.pack("16sP16x", ifname.encode(), addr)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifr)
    return 0

def pattern(i, n=64):
    head = b"rec %08d " % i
    return (head + bytes((i * 7 + k) & 0xff for k in range(n - len(head))))

def echo_server(addr, port):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(8)
    conns = []
    while True:
        r, _, _ = select.select([s] + conns, [], [])
        for c in r:
            if c is s:
                conns.append(s.accept()[0]); continue
            try:
                d = c.recv(65536)
            except OSError:
                d = b""
            if not d:
                conns.remove(c); c.close(); continue
            c.sendall(d)

def connect(addr, port, patience=10.0):
    """Connects, retrying while the server is not listening yet (it was
    started in the background a moment ago, on a busy machine)."""
    end = time.time() + patience
    while True:
        try:
            return socket.create_connection((addr, port), timeout=10)
        except ConnectionRefusedError:
            if time.time() > end:
                raise
            time.sleep(0.1)


def check(addr, port, nbytes):
    s = connect(addr, port)
    data = bytes((i * 13 + 5) & 0xff for i in range(nbytes))
    s.sendall(data)
    got = b""
    while len(got) < nbytes:
        d = s.recv(65536)
        if not d:
            break
        got += d
    s.close()
    if got != data:
        print("check: echo mismatch (%d of %d bytes)" % (len(got), nbytes))
        return 1
    print("check: %d bytes echoed intact" % nbytes)
    return 0

def icmp_sum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff

def hold(addr, port, result, stopfile):
    s = socket.create_connection((addr, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    ic = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ic.setblocking(False)
    ident = os.getpid() & 0xffff
    sent = 0; rbuf = b""; verified = 0; err = None
    last_echo = time.monotonic(); max_gap = 0.0; gaps = []
    pings = 0; pongs = 0; last_pong = time.monotonic(); max_ping_gap = 0.0
    next_tx = time.monotonic(); start = next_tx
    stop_seen = None
    while True:
        now = time.monotonic()
        if stop_seen is None and os.path.exists(stopfile):
            stop_seen = now
        if stop_seen is not None and (verified == sent or now - stop_seen > 10):
            break
        if now >= next_tx:
            if stop_seen is None:
                try:
                    s.send(pattern(sent)); sent += 1
                except BlockingIOError:
                    pass
                except OSError as e:
                    err = "send: %s" % e; break
                pkt = struct.pack("!BBHHH", 8, 0, 0, ident, pings & 0xffff) + b"tsb-ping"
                pkt = pkt[:2] + struct.pack("!H", icmp_sum(pkt)) + pkt[4:]
                try:
                    ic.sendto(pkt, (addr, 0)); pings += 1
                except OSError:
                    pass
            next_tx = now + 0.02
        r, _, _ = select.select([s, ic], [], [], max(0, next_tx - time.monotonic()))
        now = time.monotonic()
        if s in r:
            try:
                d = s.recv(65536)
            except OSError as e:
                err = "recv: %s" % e; break
            if not d:
                err = "connection closed by the peer"; break
            rbuf += d
            while len(rbuf) >= 64:
                rec, rbuf = rbuf[:64], rbuf[64:]
                if rec != pattern(verified):
                    err = "record %d does not match" % verified; break
                verified += 1
                gap = now - last_echo
                if gap > max_gap:
                    max_gap = gap
                if gap > 0.2:
                    gaps.append({"at": round(last_echo - start, 3), "ms": round(gap * 1000, 1)})
                last_echo = now
            if err:
                break
        if ic in r:
            try:
                d, src = ic.recvfrom(2048)
            except OSError:
                d = b""
            ihl = (d[0] & 0xf) * 4 if d else 0
            if len(d) >= ihl + 8 and d[ihl] == 0 and struct.unpack("!H", d[ihl + 4:ihl + 6])[0] == ident:
                pongs += 1
                g = now - last_pong
                if g > max_ping_gap:
                    max_ping_gap = g
                last_pong = now
    res = {"records_sent": sent, "records_verified": verified,
           "max_echo_gap_ms": round(max_gap * 1000, 1), "gaps": gaps,
           "pings": pings, "pongs": pongs,
           "max_ping_gap_ms": round(max_ping_gap * 1000, 1),
           "error": err, "seconds": round(time.monotonic() - start, 1)}
    with open(result, "w") as f:
        json.dump(res, f, indent=1)
    s.close()
    return 0 if err is None and verified == sent and sent > 0 else 1

def sink(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port)); s.listen(1)
    c, _ = s.accept()
    n = 0; t0 = None
    while True:
        d = c.recv(1 << 20)
        if not d:
            break
        if t0 is None:
            t0 = time.monotonic()
        n += len(d)
    dt = time.monotonic() - (t0 or time.monotonic())
    print(json.dumps({"bytes": n, "seconds": round(dt, 3)}))
    return 0

def probe(addr, count, interval):
    v6 = ":" in addr
    if v6:
        ic = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    else:
        ic = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = (os.getpid() * 7) & 0xffff
    got = set(); last = start = time.monotonic(); gap = 0.0
    for i in range(count + int(1.0 / interval)):
        if i < count:
            pkt = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, ident, i) + b"tsb-probe"
            if not v6:  # the kernel sums ICMPv6 itself
                pkt = pkt[:2] + struct.pack("!H", icmp_sum(pkt)) + pkt[4:]
            try:
                ic.sendto(pkt, (addr, 0))
            except OSError:
                pass
        end = time.monotonic() + interval
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([ic], [], [], left)
            if not r:
                continue
            d = ic.recv(2048)
            if not v6:
                d = d[(d[0] & 15) * 4:]
            if len(d) >= 8 and d[0] == (129 if v6 else 0):
                rid, seq = struct.unpack("!HH", d[4:8])
                if rid == ident and seq not in got:
                    got.add(seq)
                    now = time.monotonic()
                    gap = max(gap, now - last); last = now
    gap = max(gap, (start + count * interval) - last) if len(got) < count else gap
    print(json.dumps({"sent": count, "answered": len(got),
                      "longest_gap_ms": round(gap * 1000)}))
    return 0

def sniff(ifname, secs):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((ifname, 0))
    seen = []
    end = time.monotonic() + secs
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([s], [], [], left)
        if not r:
            continue
        f, meta = s.recvfrom(65536)
        if meta[2] == socket.PACKET_OUTGOING or len(f) < 14:
            continue
        dst, src = f[:6].hex(":"), f[6:12].hex(":")
        et = struct.unpack("!H", f[12:14])[0]
        if et == 0x0806 and len(f) >= 42 and f[21] == 1:
            seen.append({"arp_who_has": socket.inet_ntoa(f[38:42]), "src": src, "dst": dst})
        elif et == 0x0800 and len(f) >= 34 and f[23] == 17:
            ip = f[14:]
            udp = ip[(ip[0] & 15) * 4:]
            seen.append({"udp": udp[8:].decode("ascii", "replace"), "src": src, "dst": dst,
                         "to": socket.inet_ntoa(ip[16:20])})
    print(json.dumps(seen))
    return 0

def bcast(addr, port, text):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    s.sendto(text.encode(), (addr, port))
    return 0

def blast(addr, port, secs):
    s = socket.create_connection((addr, port), timeout=10)
    buf = b"\xa5" * (256 * 1024)
    end = time.monotonic() + secs
    while time.monotonic() < end:
        s.sendall(buf)
    s.close()
    return 0

def main():
    a = sys.argv[1:]
    if a[:1] == ["echo-server"]:
        return echo_server(a[1], int(a[2]))
    if a[:1] == ["check"]:
        return check(a[1], int(a[2]), int(a[3]))
    if a[:1] == ["sink"]:
        return sink(a[1], int(a[2]))
    if a[:1] == ["blast"]:
        return blast(a[1], int(a[2]), float(a[3]))
    if a[:1] == ["probe"]:
        return probe(a[1], int(a[2]), float(a[3]))
    if a[:1] == ["sniff"]:
        return sniff(a[1], float(a[2]))
    if a[:1] == ["bcast"]:
        return bcast(a[1], int(a[2]), a[3])
    if a[:1] == ["txcsum-off"]:
        return txcsum_off(a[1])
    if a[:1] == ["hold"]:
        return hold(a[1], int(a[2]), a[3], a[4])
    print(__doc__); return 2

if __name__ == "__main__":
    sys.exit(main())
