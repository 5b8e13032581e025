#!/usr/bin/env bash
# A group whose VMs are on two hosts of the source site (docs/group.md):
# this host and one in its own network namespace, reached over ssh (an
# sshd in that namespace). 'tsubame group send' here moves its VM itself
# and the other host's through 'tsubame group send --agent' started over
# ssh, within one budget:
#  a) v1 here (the seed), v2 and v3 on the other host: all three verified
#     at the destination, their reports (the agent's) equal to what their
#     links carried, the agent's VMs shared the seed's pages;
#  b) a plan naming a host ssh cannot reach: that VM fails with the reason,
#     its source runs on, the VM here moves;
#  c) the ssh to the other host is cut as its VM moves (fault point
#     group-agent-moving): the agent, its coordinator gone, cancels; that
#     VM's source runs on, the coordinator says it lost the agent.
. "$(dirname "$0")/lib.sh"
require_guest
requires "$WANEM" ss python3 ip ssh ssh-keygen /usr/sbin/sshd
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"

ns=tsbgh$$
net=$((RANDOM % 200 + 20))
here=10.79.$net.1 there=10.79.$net.2
ip netns add "$ns" || skip "cannot create a network namespace"
cleanup_ns() { ip netns pids "$ns" 2>/dev/null | xargs -r kill -9; ip netns del "$ns" 2>/dev/null || true; ip link del "tgh$$" 2>/dev/null || true; }
cleanup_hooks+=(cleanup_ns)
ip link add "tgh$$" type veth peer name eth0 netns "$ns"
ip addr add "$here/24" dev "tgh$$"
ip link set "tgh$$" up
ip -n "$ns" addr add "$there/24" dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set lo up

# sshd in the other host, root by key only.
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$T/hostkey"
ssh-keygen -q -t ed25519 -N '' -f "$T/id"
cp "$T/id.pub" "$T/authorized_keys"
cat >"$T/sshd_config" <<CFG
ListenAddress $there
HostKey $T/hostkey
PidFile $T/sshd.pid
AuthorizedKeysFile $T/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
CFG
ip netns exec "$ns" /usr/sbin/sshd -f "$T/sshd_config" -D -e 2>"$T/sshd.log" &
cleanup_pids+=($!)
cat >"$T/ssh_config" <<CFG
Host *
  User root
  IdentityFile $T/id
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
  ConnectTimeout 5
CFG
for _ in $(seq 50); do ssh -F "$T/ssh_config" "$there" true 2>/dev/null && break; sleep 0.2; done
ssh -F "$T/ssh_config" "$there" true || fail "no ssh to the other host: $(cat "$T/sshd.log")"

"$TSUBAME" keygen "$T/key" >/dev/null
workload() {
	echo "tsb.mode=memverify tsb.mem=48 tsb.seed=23 tsb.vmid=$1 tsb.content=shared tsb.random=50 tsb.dup=10"
}

# vm NAME ID [HOST]: the VM (in the other host's namespace if HOST), its
# incoming twin here, a WAN link; its plan entry goes into $entries.
entries=
vm() {
	local name=$1 id=$2 host=${3:-} rport wport
	if [ -n "$host" ]; then
		mkdir -p "$T/$name"
		cleanup_vms+=("$T/$name")
		ip netns exec "$ns" "$TSUBAME" vm start --name "$name" --dir "$T/$name" --mem "$VM_MEM" \
			--kernel "$GUEST_DIR/vmlinuz" --initrd "$GUEST_DIR/initrd.img" \
			--append "console=ttyS0 panic=-1 quiet $(workload "$id")" >/dev/null
	else
		start_vm "$name" "$(workload "$id")"
	fi
	start_dest_vm "$name-b" "$(workload "$id")"
	rport=$(free_port)
	wport=$(free_port)
	"$WANEM" --listen "$here:$wport" --connect "127.0.0.1:$rport" --rate 400mbit --delay 5ms \
		--stats "$T/wanem-$name.json" 2>/dev/null &
	cleanup_pids+=($!)
	echo "$rport" >"$T/$name.rport"
	entries+=${entries:+,}$(printf '{"name": "%s", "qmp": "%s", "to": "%s:%s", "dest_qmp": "%s", "listen": "127.0.0.1:%s"%s}' \
		"$name" "$T/$name/qmp.sock" "$here" "$wport" "$T/$name-b/qmp.sock" "$rport" \
		"${host:+, \"host\": \"$host\"}")
}

# plan FILE: writes the entries made so far as a plan of tenant red.
plan() {
	printf '{"tenant": "red", "vms": [%s]}\n' "$entries" >"$1"
	entries=
}

# group TAG PLAN "VMS": both sides; exit codes in $T/TAG.rc-send and -recv.
group() {
	local tag=$1 plan=$2 vms=$3 rpid src=0 rrc=0 v
	"$TSUBAME" group recv --plan "$plan" --key "$T/key" --store "$T/store-b" \
		--report "$T/$tag-recv.json" --timeout "${RECV_TIMEOUT:-240s}" 2>"$T/$tag-recv.log" &
	rpid=$!
	cleanup_pids+=("$rpid")
	for v in $vms; do
		wait_listen "$(cat "$T/$v.rport")" 60 || fail "$tag: $v's receiver did not listen"
	done
	TSUBAME_FAULT_AT=${SEND_FAULT_AT:-} TSUBAME_FAULT_CMD=${SEND_FAULT_CMD:-} \
		"$TSUBAME" group send --plan "$plan" --key "$T/key" --store "$T/store-a" \
		--ssh "ssh -F $T/ssh_config" --remote-tsubame "$TSUBAME" --bandwidth "${BANDWIDTH:-200mbit}" \
		--concurrency 2 --report "$T/$tag-send.json" --timeout 300s --no-progress \
		>"$T/$tag-send.out" 2>"$T/$tag-send.log" || src=$?
	wait "$rpid" || rrc=$?
	echo "$src" >"$T/$tag.rc-send"
	echo "$rrc" >"$T/$tag.rc-recv"
	log "$tag: group send exit $src, group recv exit $rrc"
}

# --- a) one VM here, two on the other host ---
vm v1 1
vm v2 2 "$there"
vm v3 3 "$there"
plan "$T/plan-a.json"
for v in v1 v2 v3; do wait_beat "$v" 1 180 >/dev/null; done
group a "$T/plan-a.json" "v1 v2 v3"
[ "$(cat "$T/a.rc-send")" = 0 ] || fail "group send failed: $(tail -20 "$T/a-send.log")"
[ "$(cat "$T/a.rc-recv")" = 0 ] || fail "group recv failed: $(tail -20 "$T/a-recv.log")"
for v in v1 v2 v3; do verify_after "$v" "$v-b"; done
python3 - "$T" <<'PY' || fail "group a: report not as expected"
import json, sys
t = sys.argv[1]
rep = json.load(open(t + "/a-send.json"))
vms = {v["name"]: v for v in rep["vms"]}
assert rep["totals"]["moved"] == 3 and rep["totals"]["failed"] == 0, rep["totals"]
for n in ("v1", "v2", "v3"):
    up = json.load(open("%s/wanem-%s.json" % (t, n)))["bytes_up"]
    sent = vms[n]["report"]["wan"]["bytes_sent"]
    print("%s: %.1f MB on its link, %.1f MB in the report, group pages %d" % (
        n, up / 1e6, sent / 1e6, vms[n]["report"]["pages"]["group"]), file=sys.stderr)
    assert up == sent, (n, up, sent)
for n in ("v2", "v3"):
    assert vms[n]["report"]["pages"]["group"] > 0, vms[n]["report"]["pages"]
PY
grep -q 'v2: migration completed' "$T/a-send.log" || fail "no word from the agent's v2: $(cat "$T/a-send.log")"
for v in v1 v2 v3; do kill -9 "$(cat "$T/$v/qemu.pid")" "$(cat "$T/$v-b/qemu.pid")"; done

# --- b) a host ssh cannot reach ---
vm w1 4
vm w2 5 "root@10.79.$net.99"
plan "$T/plan-b.json"
# w2 runs here, but the plan says it is on a host nobody answers for.
wait_beat w1 1 180 >/dev/null
wait_beat w2 1 180 >/dev/null
# w2's receiver waits for a sender that never comes: it gives up at --timeout.
RECV_TIMEOUT=40s group b "$T/plan-b.json" "w1 w2"
[ "$(cat "$T/b.rc-send")" = 1 ] || fail "group send: exit $(cat "$T/b.rc-send"), not 1"
verify_after w1 w1-b
last=$(grep -a -o 'beat [0-9]* ok' "$T/w2/serial.log" | tail -1 | awk '{print $2}')
wait_beat w2 "$last" 60 >/dev/null || fail "w2's source did not run on"
python3 - "$T" <<'PY' || fail "group b: report not as expected"
import json, sys
rep = json.load(open(sys.argv[1] + "/b-send.json"))
vms = {v["name"]: v for v in rep["vms"]}
assert vms["w1"]["phase"] == "moved", vms["w1"]
assert vms["w2"]["phase"] == "failed" and "agent" in vms["w2"]["why"], vms["w2"]
PY
for v in w1 w2; do kill -9 "$(cat "$T/$v/qemu.pid")" "$(cat "$T/$v-b/qemu.pid")" 2>/dev/null || true; done

# --- c) the ssh to the other host cut while its VM moves ---
vm x1 6 "$there"
plan "$T/plan-c.json"
wait_beat x1 1 180 >/dev/null
# Slow (20 Mbit/s: ~10 s) so that the cut comes while it moves.
BANDWIDTH=20mbit SEND_FAULT_AT=group-agent-moving SEND_FAULT_CMD="pkill -KILL -f '^ssh -F $T/ssh_config'" \
	RECV_TIMEOUT=60s group c "$T/plan-c.json" "x1"
[ "$(cat "$T/c.rc-send")" = 1 ] || fail "group send: exit $(cat "$T/c.rc-send"), not 1"
grep -q "fault injection at 'group-agent-moving'" "$T/c-send.log" || fail "the fault did not fire"
last=$(grep -a -o 'beat [0-9]* ok' "$T/x1/serial.log" | tail -1 | awk '{print $2}')
wait_beat x1 "$last" 60 >/dev/null || fail "x1's source did not run on"
"$TSUBAME" vm status --dir "$T/x1" | grep -q running || fail "x1 does not run at its source"
"$TSUBAME" vm status --dir "$T/x1-b" 2>/dev/null | grep -q 'running' &&
	fail "x1 runs at the destination too"
python3 - "$T" <<'PY' || fail "group c: report not as expected"
import json, sys
rep = json.load(open(sys.argv[1] + "/c-send.json"))
v = rep["vms"][0]
assert v["phase"] == "failed" and "lost the agent" in v["why"], v
PY
exit 0
