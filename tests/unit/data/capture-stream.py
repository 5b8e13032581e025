#!/usr/bin/env python3
"""Capture a QEMU migration stream into a file (for tests/unit/data/).

Starts a small x86 guest (no disk, no NIC: SeaBIOS finds nothing to boot and
idles; or, with --loop-bios, a 64 KiB firmware that keeps writing 16 pages),
sets the given capabilities and parameters, migrates with `exec:cat > FILE`
and waits for completion. With --hold-ms the downtime limit starts at 1 ms
so the migration keeps iterating (several passes, so XBZRLE gets used) and
is raised after that many milliseconds.

--postcopy migrates to a real destination QEMU through a relay that records
both directions (main stream to --out, return path to --rp-out) and calls
migrate-start-postcopy after --hold-ms; background pages are then slowed
so that the destination requests pages on the return path.

The captures checked in were made with (QEMU 7.2.22, Debian 12):
  capture-stream.py --out qemu72-precopy.bin --paused
  capture-stream.py --out qemu72-ignore-shared.bin --paused \
      --cap x-ignore-shared --cap validate-uuid
  capture-stream.py --out qemu72-xbzrle.bin --loop-bios --cap xbzrle \
      --bandwidth 1048576 --hold-ms 1500
  capture-stream.py --out qemu72-postcopy.bin --rp-out qemu72-postcopy-rp.bin \
      --loop-bios --postcopy --bandwidth 1048576 --hold-ms 300
then compressed with `zstd -19` (not the 175-byte return path). Under TCG
7.2 how many passes a run makes varies; the XBZRLE capture kept is one with
32 XBZRLE records. tests/unit/test-qstream.c asserts the counts of these
exact files.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


# Real-mode code at F000:E000: es = 0x1000, bx = 0; loop { inc word
# [es:bx]; bx += 0x1000 } -- touches 16 pages at 0x10000..0x1ffff forever.
# The reset vector (F000:FFF0) jumps there. tests/unit/test-qstream.c
# builds the same image for the destination QEMU.
LOOP_CODE = bytes([0xfa, 0xb8, 0x00, 0x10, 0x8e, 0xc0, 0x31, 0xdb,
                   0x26, 0xff, 0x07, 0x81, 0xc3, 0x00, 0x10, 0xeb, 0xf7])
RESET_JMP = bytes([0xea, 0x00, 0xe0, 0x00, 0xf0])


def make_loop_bios(path):
    img = bytearray(65536)
    img[0xe000:0xe000 + len(LOOP_CODE)] = LOOP_CODE
    img[0xfff0:0xfff0 + len(RESET_JMP)] = RESET_JMP
    with open(path, "wb") as f:
        f.write(img)


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        for _ in range(100):
            try:
                self.sock.connect(path)
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError("cannot connect to QMP")
        self.f = self.sock.makefile("rw")
        self.read()  # greeting
        self.cmd("qmp_capabilities")

    def read(self):
        while True:
            line = self.f.readline()
            if not line:
                raise RuntimeError("QMP closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.f.write(json.dumps(req) + "\n")
        self.f.flush()
        rsp = self.read()
        if "error" in rsp:
            raise RuntimeError(f"{name}: {rsp['error']}")
        return rsp["return"]


def pump(src, dst, log):
    """Copies src to dst (and to log) until EOF, then half-closes dst."""
    with open(log, "wb") if log else open(os.devnull, "wb") as f:
        while True:
            try:
                b = src.recv(65536)
            except OSError:
                b = b""
            if not b:
                break
            f.write(b)
            try:
                dst.sendall(b)
            except OSError:
                break
    try:
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def relay(listen_path, dst_path, out, rp_out):
    """Accepts the source, connects the destination, records both ways."""
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(listen_path)
    ls.listen(1)

    def run():
        src, _ = ls.accept()
        dst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dst.connect(dst_path)
        t = threading.Thread(target=pump, args=(dst, src, rp_out))
        t.start()
        pump(src, dst, out)
        t.join()
        src.close()
        dst.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def qemu_argv(a, qmp_path, bios):
    argv = [a.qemu, "-machine", a.machine, "-m", a.mem, "-accel", "tcg",
            "-nodefaults", "-display", "none", "-uuid", a.uuid,
            "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    if bios:
        argv += ["-bios", bios]
    return argv


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--mem", default="16388K")
    ap.add_argument("--machine", default="pc-i440fx-7.2")
    ap.add_argument("--paused", action="store_true", help="start with -S")
    ap.add_argument("--cap", action="append", default=[])
    ap.add_argument("--bandwidth", type=int, help="max-bandwidth, bytes/s")
    ap.add_argument("--hold-ms", type=int, default=0)
    ap.add_argument("--uuid", default="6e0b6a1c-6a3e-4f0e-9d7e-3b1f2a4c5d6e")
    ap.add_argument("--postcopy", action="store_true")
    ap.add_argument("--rp-out", help="return-path capture (--postcopy)")
    ap.add_argument("--loop-bios", action="store_true",
                    help="use a 64 KiB firmware that keeps incrementing a "
                    "word in each of 16 pages (dirties RAM forever)")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="qs-capture-")
    path = lambda name: os.path.join(tmp, name)
    bios = None
    if a.loop_bios:
        bios = path("loop-bios.bin")
        make_loop_bios(bios)
    caps = list(a.cap) + (["postcopy-ram"] if a.postcopy else [])
    procs = []
    try:
        argv = qemu_argv(a, path("qmp.sock"), bios)
        if a.paused:
            argv.append("-S")
        procs.append(subprocess.Popen(argv))
        q = Qmp(path("qmp.sock"))
        if a.postcopy:
            argv = qemu_argv(a, path("qmp-dst.sock"), bios)
            argv += ["-incoming", "defer"]
            procs.append(subprocess.Popen(argv))
            qd = Qmp(path("qmp-dst.sock"))
            qd.cmd("migrate-set-capabilities", capabilities=[
                {"capability": c, "state": True} for c in caps])
            qd.cmd("migrate-incoming", uri=f"unix:{path('dst.sock')}")
            relay_thread = relay(path("src.sock"), path("dst.sock"),
                                 os.path.abspath(a.out),
                                 a.rp_out and os.path.abspath(a.rp_out))
        if caps:
            q.cmd("migrate-set-capabilities", capabilities=[
                {"capability": c, "state": True} for c in caps])
        params = {}
        if a.bandwidth:
            params["max-bandwidth"] = a.bandwidth
        if a.hold_ms or a.postcopy:
            params["downtime-limit"] = 1
        if a.postcopy:
            # Slow background pages after the switch: the destination
            # guest faults and requests pages on the return path.
            params["max-postcopy-bandwidth"] = 65536
        if params:
            q.cmd("migrate-set-parameters", **params)
        if not a.paused:
            time.sleep(0.5)  # let the firmware run and settle
        if a.postcopy:
            q.cmd("migrate", uri=f"unix:{path('src.sock')}")
        else:
            out = os.path.abspath(a.out)
            q.cmd("migrate", uri=f"exec:cat > '{out}'")
        start = time.time()
        raised = False
        while True:
            st = q.cmd("query-migrate")
            status = st.get("status")
            if status in ("completed", "failed", "cancelled"):
                break
            if not raised and status == "active" and \
                    time.time() - start > a.hold_ms / 1000:
                if a.postcopy:
                    q.cmd("migrate-start-postcopy")
                else:
                    q.cmd("migrate-set-parameters",
                          **{"downtime-limit": 5000, "max-bandwidth": 1 << 30})
                raised = True
            time.sleep(0.05)
        print(json.dumps(st, indent=1), file=sys.stderr)
        if a.postcopy:
            relay_thread.join(timeout=10)
            for _ in range(100):
                dst_status = qd.cmd("query-migrate").get("status")
                if dst_status in ("completed", "failed"):
                    break
                time.sleep(0.05)
            print(f"destination: {dst_status}", file=sys.stderr)
            if dst_status != "completed":
                status = dst_status
            qd.cmd("quit")
        q.cmd("quit")
        for p in procs:
            p.wait(timeout=10)
        return 0 if status == "completed" else 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for name in os.listdir(tmp):
            os.unlink(path(name))
        os.rmdir(tmp)


if __name__ == "__main__":
    sys.exit(main())
