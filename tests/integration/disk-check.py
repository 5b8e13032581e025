#!/usr/bin/env python3
"""Offline check of a disk written by the guest's diskwrite workload.

usage: disk-check.py ORIG IMAGE BASE BLOCKS

ORIG is the image as it was before the guest started (raw), IMAGE the one
to check (raw; convert qcow2 first). Outside the record ring [BASE,
BASE+BLOCKS) (4 KiB blocks) IMAGE must equal ORIG. Inside, the guest wrote
record i to block BASE + i % BLOCKS, each fsynced before the next (the
shell writer), or in batches of consecutive records, each batch one
O_DIRECT write fsynced before the next (memverify --diskwrite), so with
M the highest record found, block k must hold the newest record i <= M with
i % BLOCKS == k (or the original block if no such record was written yet).
Prints M; exits 1 with the first difference otherwise.

A record block is the line "tsb-disk-record <i, 10 digits>\n" followed by
zeroes (shell writer) or by bytes 27.. of pool XOR key(i) (memverify
--diskwrite; see run_diskwrite() in guest/memverify.c).
"""
import re
import sys

BS = 4096
REC = re.compile(rb"^tsb-disk-record (\d{10})\n")
M64 = (1 << 64) - 1


def splitmix64(x):
    x = (x + 0x9E3779B97F4A7C15) & M64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return x, z ^ (z >> 31)


def make_pool():
    x, words = 0x7473622D6469736B, []
    for _ in range(BS // 8):
        x, w = splitmix64(x)
        words.append(w)
    return int.from_bytes(b"".join(w.to_bytes(8, "little") for w in words), "little")


POOL = make_pool()


def payload(i):
    """The memverify --diskwrite block of record i (header not yet in)."""
    key = splitmix64(i)[1].to_bytes(8, "little") * (BS // 8)
    return (POOL ^ int.from_bytes(key, "little")).to_bytes(BS, "little")


def record(block):
    m = REC.match(block)
    if not m:
        return None
    i, rest = int(m.group(1)), block[m.end():]
    if any(rest) and rest != payload(i)[m.end():]:
        return None
    return i


def main():
    orig_path, path, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    orig = open(orig_path, "rb").read()
    img = open(path, "rb").read()
    if len(orig) != len(img):
        sys.exit("size %d, expected %d" % (len(img), len(orig)))
    lo, hi = base * BS, (base + n) * BS
    for off in range(0, len(img), 1 << 20):
        end = min(off + (1 << 20), len(img))
        a, b = orig[off:end], img[off:end]
        if a == b:
            continue
        for o in range(off, end, BS):
            if (o < lo or o >= hi) and orig[o:o + BS] != img[o:o + BS]:
                sys.exit("block %d (outside the ring) differs from the original" % (o // BS))
    recs = []
    for k in range(n):
        blk = img[lo + k * BS:lo + (k + 1) * BS]
        recs.append(record(blk))
        if recs[-1] is None and blk != orig[lo + k * BS:lo + (k + 1) * BS]:
            sys.exit("ring block %d holds neither a record nor its original content" % k)
    found = [r for r in recs if r is not None]
    if not found:
        print(-1)
        return
    top = max(found)
    for k in range(n):
        want = top - ((top - k) % n) if top >= k else None
        if recs[k] != want:
            sys.exit("ring block %d holds record %s, expected %s (newest record %d): "
                     "a write was lost" % (k, recs[k], want, top))
    print(top)


if __name__ == "__main__":
    main()
