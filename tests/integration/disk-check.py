#!/usr/bin/env python3
"""Offline check of a disk written by the guest's diskwrite workload.

usage: disk-check.py ORIG IMAGE BASE BLOCKS

ORIG is the image as it was before the guest started (raw), IMAGE the one
to check (raw; convert qcow2 first). Outside the record ring [BASE,
BASE+BLOCKS) (4 KiB blocks) IMAGE must equal ORIG. Inside, the guest wrote
record i to block BASE + i % BLOCKS, each fsynced before the next, so with
M the highest record found, block k must hold the newest record i <= M with
i % BLOCKS == k (or the original block if no such record was written yet).
Prints M; exits 1 with the first difference otherwise.
"""
import re
import sys

BS = 4096
REC = re.compile(rb"^tsb-disk-record (\d{10})\n")


def record(block):
    m = REC.match(block)
    if not m or any(block[m.end():]):
        return None
    return int(m.group(1))


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
