# Helpers for the network tests (60-69); source after lib.sh.
: "${NETNS_SITES:=$top/scripts/netns-sites}"
CORR="$top/tests/integration/net-correspondent.py"

# require_netns [LINK_TYPE...]: skip unless root with network namespaces
# and the kernel's veth and bridge devices (and each LINK_TYPE, e.g. vxlan).
require_netns() {
	local probe="tsbprobe$$" t err
	requires ip python3 "$TSUBAME"
	[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces"
	err=$(ip netns add "$probe" 2>&1) || skip "cannot create network namespaces here: $err"
	for t in veth bridge "$@"; do
		case $t in
		veth) err=$(ip -n "$probe" link add p0 type veth peer name p1 2>&1) ;;
		vxlan) err=$(ip -n "$probe" link add p2 type vxlan id 1 dstport 4789 2>&1) ;;
		*) err=$(ip -n "$probe" link add "p$t" type "$t" 2>&1) ;;
		esac || { ip netns del "$probe"; skip "this kernel cannot make $t devices: $err"; }
	done
	ip netns del "$probe"
}

# require_tap: skip unless TAP devices can be made (/dev/net/tun).
require_tap() {
	local probe="tsbtap$$" err
	[ -c /dev/net/tun ] || skip "needs /dev/net/tun for the guests' TAP devices"
	err=$(ip tuntap add "$probe" mode tap 2>&1) || skip "cannot make TAP devices here: $err"
	ip link del "$probe"
}

# A short random prefix for this test's namespaces and interfaces.
net_prefix() { printf 'n%04d' $((RANDOM % 10000)); }

# start_agent NS LOG ARGS...: runs 'tsubame net agent' in namespace NS and
# waits for its control socket (the --control argument must be in ARGS).
start_agent() {
	local ns=$1 logf=$2 sock= a prev= i
	shift 2
	for a in "$@"; do
		[ "$prev" = --control ] && sock=$a
		prev=$a
	done
	ip netns exec "$ns" "$TSUBAME" net agent "$@" 2>"$logf" &
	cleanup_pids+=($!)
	for ((i = 0; i < 50; i++)); do
		[ -S "$sock" ] && return 0
		sleep 0.1
	done
	cat "$logf" >&2
	fail "agent in $ns did not start"
}

# counter SOCK NAME: prints one counter of an agent.
counter() {
	"$TSUBAME" net status --agent "$1" |
		python3 -c "import json,sys; print(json.load(sys.stdin)['counters']['$2'])"
}
