# Helpers for the network tests (60-69); source after lib.sh.
: "${NETNS_SITES:=$top/scripts/netns-sites}"
CORR="$top/tests/integration/net-correspondent.py"

# require_netns: skip unless root with network namespaces and veth.
require_netns() {
	requires ip python3 "$TSUBAME"
	[ "$(id -u)" -eq 0 ] || skip "needs root for network namespaces"
	local probe="tsbprobe$$"
	ip netns add "$probe" 2>/dev/null || skip "cannot create network namespaces here"
	ip netns del "$probe"
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
