#!/usr/bin/env bash
# The agent against the kernel's own VXLAN device (an implementation we did
# not write): TCP through the tunnel with the agent as the VM's current
# site (reverse tunnel) and then as its home (proxy ARP + forward tunnel).
#
#   ns K: vxlan0 (id 42, 10.62.0.1, remote 10.62.9.2) over "u" 10.62.9.1
#   ns G: agent on "ag" (a port of bridge br0), UDP 10.62.9.2:4789
#   ns H: a host on br0, 10.62.0.2
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/net-lib.sh"
require_netns vxlan
P=$(net_prefix)
K=$P-k G=$P-g H=$P-h
netns_cleanup() {
	local ns
	for ns in "$K" "$G" "$H"; do ip netns del "$ns" 2>/dev/null || true; done
}
trap 'rc=$?; set +e; netns_cleanup; (exit $rc); cleanup' EXIT

for ns in "$K" "$G" "$H"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add "${P}u1" type veth peer name "${P}u2"
ip link set "${P}u1" netns "$K"; ip -n "$K" link set "${P}u1" name u
ip link set "${P}u2" netns "$G"; ip -n "$G" link set "${P}u2" name u
ip -n "$K" addr add 10.62.9.1/24 dev u; ip -n "$K" link set u up
ip -n "$G" addr add 10.62.9.2/24 dev u; ip -n "$G" link set u up
ip -n "$K" link add vxlan0 address 02:00:00:00:62:01 type vxlan id 42 \
	dstport 4789 local 10.62.9.1 remote 10.62.9.2
ip -n "$K" addr add 10.62.0.1/24 dev vxlan0
ip -n "$K" addr add fd62::1/64 dev vxlan0 nodad
ip -n "$K" link set vxlan0 mtu 1450 up
# The kernel leaves inner checksums to the NIC; veth has none to do it.
ip netns exec "$K" python3 "$CORR" txcsum-off vxlan0
ip -n "$G" link add br0 type bridge forward_delay 0 stp_state 0
ip -n "$G" link set br0 up
ip -n "$G" link add ag type veth peer name agp
# No offload settings on the agent's port: it segments TSO frames itself.
ip -n "$G" link set agp master br0 up
ip -n "$G" link set ag up
ip link add "${P}h1" type veth peer name "${P}h2"
ip link set "${P}h1" netns "$H"; ip -n "$H" link set "${P}h1" name eth0
ip link set "${P}h2" netns "$G"; ip -n "$G" link set "${P}h2" master br0 up
ip -n "$H" link set eth0 address 02:00:00:00:62:02 mtu 1450 up
ip -n "$H" addr add 10.62.0.2/24 dev eth0
ip -n "$H" addr add fd62::2/64 dev eth0 nodad

"$TSUBAME" keygen --id site "$T/site.key" >/dev/null
sock=$T/agent.sock
start_agent "$G" "$T/agent.log" --site G --dev ag --listen 10.62.9.2:4789 \
	--key "$T/site.key" --control "$sock" --peer K=10.62.9.1:4789 --vni 42

ip netns exec "$K" python3 "$CORR" echo-server 10.62.0.1 7 &
cleanup_pids+=($!)
ip netns exec "$K" python3 "$CORR" echo-server fd62::1 7 &
cleanup_pids+=($!)
ip netns exec "$H" python3 "$CORR" echo-server 10.62.0.2 7 &
cleanup_pids+=($!)
sleep 0.5

# 1. H is a VM visiting site G, home K: its frames go home through the
#    kernel's VXLAN and come back to it from there.
"$TSUBAME" net bind --agent "$sock" --vm h --mac 02:00:00:00:62:02 \
	--ip 10.62.0.2 --home K --current G >/dev/null
ip netns exec "$H" python3 "$CORR" check 10.62.0.1 7 300000 ||
	{ "$TSUBAME" net status --agent "$sock" >&2; cat "$T/agent.log" >&2; ip -n "$K" -s link show vxlan0 >&2; ip -n "$H" neigh >&2; fail "TCP from the visiting host to the kernel VXLAN peer failed"; }
tx=$(counter "$sock" tun_tx); rx=$(counter "$sock" tun_rx)
log "visiting: $tx frames tunnelled out, $rx in"
[ "$tx" -gt 100 ] && [ "$rx" -gt 100 ] || fail "too few tunnelled frames ($tx out, $rx in)"
log "visiting: $(counter "$sock" gso_frames) TSO frames segmented by the agent"
"$TSUBAME" net unbind --agent "$sock" --vm h >/dev/null

# 2. vxlan0's owner is a VM whose home is G, now at K: the agent answers
#    ARP for 10.62.0.1 and tunnels H's frames to the kernel.
"$TSUBAME" net bind --agent "$sock" --vm k --mac 02:00:00:00:62:01 \
	--ip 10.62.0.1 --ip fd62::1 --home G --current K >/dev/null
ip -n "$K" neigh flush dev vxlan0
ip netns exec "$K" python3 "$CORR" check 10.62.0.2 7 300000 ||
	fail "TCP from the kernel VXLAN side to the home segment failed"
ip -n "$H" neigh flush dev eth0
ip netns exec "$H" python3 "$CORR" check 10.62.0.1 7 100000 ||
	fail "TCP from the home segment to the away host failed"
arp=$(counter "$sock" arp_replies)
log "home: answered $arp ARP requests on behalf of the away host"
[ "$arp" -ge 1 ] || fail "the agent answered no ARP request for the away host"
mac=$(ip -n "$H" neigh show 10.62.0.1 | sed -n 's/.*lladdr \([0-9a-f:]*\).*/\1/p')
[ "$mac" = 02:00:00:00:62:01 ] || fail "host resolved 10.62.0.1 to '$mac'"
# IPv6: the agent answers H's neighbour solicitation for fd62::1.
ip -n "$H" -6 neigh flush dev eth0
ip netns exec "$H" python3 "$CORR" check fd62::1 7 100000 ||
	fail "TCP over IPv6 from the home segment to the away host failed"
na=$(counter "$sock" na_replies)
log "home: answered $na neighbour solicitations on behalf of the away host"
[ "$na" -ge 1 ] || fail "the agent answered no neighbour solicitation"
grep -q "forged\|malformed" "$T/agent.log" && fail "unexpected refusals: $(cat "$T/agent.log")"
log "kernel VXLAN interop OK"
exit 0
