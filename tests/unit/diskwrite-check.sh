#!/usr/bin/env bash
# memverify --diskwrite and tests/integration/disk-check.py agree on the
# record format: records written on the host (ring wrapped twice, batches
# that do not divide the ring) check out, the newest record is found, the
# ring is incompressible, and a lost write or a torn block is caught.
# usage: diskwrite-check.sh MEMVERIFY_HOST
set -euo pipefail
mv=$1
check="$(cd "$(dirname "$0")/../integration" && pwd)/disk-check.py"
command -v python3 >/dev/null || { echo "SKIP: needs python3"; exit 77; }
t=$(mktemp -d "${TMPDIR:-/tmp}/tsb-dwcheck.XXXXXX")
trap 'rm -rf "$t"' EXIT

"$mv" --make-disk "$t/orig.img" --size 8M --seed 3 >/dev/null
cp "$t/orig.img" "$t/a.img"
"$mv" --diskwrite "$t/a.img" --dw-base 256 --dw-blocks 1000 --dw-batch 16 \
	--dw-records 2345 >/dev/null
top=$(python3 "$check" "$t/orig.img" "$t/a.img" 256 1000)
[ "$top" = 2344 ] || { echo "FAIL: newest record $top, expected 2344"; exit 1; }
python3 - "$t/a.img" <<'PY'
import sys, zlib
ring = open(sys.argv[1], "rb").read()[256 * 4096:1256 * 4096]
assert len(zlib.compress(ring, 6)) > len(ring) * 0.99, "the records compress"
PY
# A lost write: ring block 330 back to the record it held before.
python3 - "$t/a.img" "$check" <<'PY'
import importlib.util, sys
spec = importlib.util.spec_from_file_location("dc", sys.argv[2])
dc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dc)
b = bytearray(dc.payload(1330))
h = b"tsb-disk-record %010d\n" % 1330
b[:len(h)] = h
with open(sys.argv[1][:-5] + "b.img", "wb") as f:
    f.write(open(sys.argv[1], "rb").read())
    f.seek((256 + 330) * 4096)
    f.write(b)
PY
if out=$(python3 "$check" "$t/orig.img" "$t/b.img" 256 1000); then
	echo "FAIL: a lost write was not found ($out)"; exit 1
fi
# A torn block.
cp "$t/a.img" "$t/c.img"
printf X | dd of="$t/c.img" bs=1 seek=$(((256 + 5) * 4096 + 100)) conv=notrunc 2>/dev/null
if out=$(python3 "$check" "$t/orig.img" "$t/c.img" 256 1000); then
	echo "FAIL: a torn block was not found ($out)"; exit 1
fi
echo "ok: newest record $top; lost write and torn block found"
