#!/usr/bin/env bash
# Disk images remembered by the store (docs/disk.md, "Disk images in the
# store"): two VMs of one tenant, each a clone of the same base image,
# arrive one after the other at a host with an empty target each. The
# second one's blocks still from the base travel as references, rebuilt
# from the first VM's disk there, with no --disk-source: the store
# remembered that image. A VM of another tenant gets no such help.
# QEMUs with firmware only (no guest OS): the disks are what is tested.
. "$(dirname "$0")/lib.sh"
requires qemu-img qemu-system-x86_64 python3 cmp

"$TSUBAME" keygen "$T/key" >/dev/null
size=$((32 << 20))
head -c "$size" /dev/urandom >"$T/base.img"
# clone N: the base with its own 5% of the blocks rewritten.
make_clone() {
	cp "$T/base.img" "$T/$1.img"
	python3 - "$T/$1.img" "$2" <<'PY'
import os, random, sys
rnd = random.Random(int(sys.argv[2]))
n = os.path.getsize(sys.argv[1]) // 4096
with open(sys.argv[1], "r+b") as f:
    for b in sorted(rnd.sample(range(n), n // 20)):
        f.seek(b * 4096)
        f.write(rnd.randbytes(4096))
PY
}

vm_start() { # NAME IMAGE [--incoming]
	"$TSUBAME" vm start --name "$1" --dir "$T/vm-$1" --mem 65540K \
		--disk "$2,format=raw" "${@:3}" >/dev/null || fail "cannot start VM $1"
	cleanup_vms+=("$T/vm-$1")
}

# migrate NAME TENANT: clone NAME to an empty target at site B.
migrate() {
	local port rc=0
	make_clone "$1" "$3"
	qemu-img create -q -f raw "$T/b-$1.img" "$size"
	vm_start "$1" "$T/$1.img"
	vm_start "b-$1" "$T/b-$1.img" --incoming
	port=$(free_port)
	"$TSUBAME" recv --listen "127.0.0.1:$port" --qmp "$T/vm-b-$1/qmp.sock" --key "$T/key" \
		--store "$T/store-b" --state-dir "$T/state-b" --report "$T/recv-$1.json" \
		2>"$T/recv-$1.log" &
	local rpid=$!
	cleanup_pids+=("$rpid")
	wait_listen "$port" 30 || fail "recv did not listen: $(cat "$T/recv-$1.log")"
	"$TSUBAME" send --qmp "$T/vm-$1/qmp.sock" --to "127.0.0.1:$port" --key "$T/key" \
		--tenant "$2" --store "$T/store-a" --state-dir "$T/state-a" \
		--report "$T/send-$1.json" --no-progress 2>"$T/send-$1.log" ||
		fail "send $1 failed: $(cat "$T/send-$1.log")"
	wait "$rpid" || rc=$?
	[ "$rc" -eq 0 ] || fail "recv $1 failed: $(cat "$T/recv-$1.log")"
	"$TSUBAME" vm stop --dir "$T/vm-$1" >/dev/null
	"$TSUBAME" vm stop --dir "$T/vm-b-$1" >/dev/null
	cmp -s "$T/$1.img" "$T/b-$1.img" || fail "$1: the target differs from the source"
}

# blocks SEND_REPORT KIND: that count of the disk's 4 KiB blocks.
blocks() {
	python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disks"]["disks"][0]["blocks"][sys.argv[2]])' "$1" "$2"
}

migrate one acme 1
ref1=$(blocks "$T/send-one.json" ref)
log "first clone of tenant acme: $(blocks "$T/send-one.json" data) data blocks, $ref1 references"
grep -q "b-one.img" "$T/store-b/tenants/acme/disks.json" ||
	fail "the store does not remember the arrived disk: $(cat "$T/store-b/tenants/acme/disks.json" 2>&1)"

migrate two acme 2
ref2=$(blocks "$T/send-two.json" ref) data2=$(blocks "$T/send-two.json" data)
log "second clone of tenant acme: $data2 data blocks, $ref2 references"
files=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["disk_index"]["files"])' "$T/recv-two.json")
# (its own target is empty: nothing to index there)
[ "$files" -ge 1 ] || fail "recv did not index the image the store remembers"
# 8192 blocks, 5% rewritten in each clone: ~90% of them equal the first clone's.
[ "$ref2" -ge 6500 ] || fail "only $ref2 of 8192 blocks travelled as references"
[ "$data2" -le 1700 ] || fail "$data2 blocks travelled as data"

migrate three other 3
ref3=$(blocks "$T/send-three.json" ref)
log "a clone of tenant other: $ref3 references"
[ "$ref3" -le 50 ] || fail "tenant other was given $ref3 references to tenant acme's disks"
exit 0
