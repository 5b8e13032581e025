#!/usr/bin/env bash
# The order a group's VMs start in (docs/group.md, "The seed first"):
# three VMs, the plan's first with memory of its own (another seed), the
# other two sharing theirs; v1 and v3 talk to each other (one "affinity").
# 'group send --dry-run' samples their memory (QMP pmemsave, pages chosen
# by content) and puts one of the two sharing VMs first, the affinity's
# VMs after it one after the other; '--order plan' keeps the plan's first
# and pulls v3 up behind v1. Nothing moves: the sources still run
# afterwards.
. "$(dirname "$0")/lib.sh"
require_guest
requires python3

"$TSUBAME" keygen "$T/key" >/dev/null
workload() {
	echo "tsb.mode=memverify tsb.mem=64 tsb.seed=$1 tsb.vmid=$2 tsb.content=shared tsb.random=50 tsb.dup=10"
}
start_vm v1 "$(workload 77 1)"
start_vm v2 "$(workload 21 2)"
start_vm v3 "$(workload 21 3)"
for vm in v1 v2 v3; do wait_beat "$vm" 1 180 >/dev/null; done
{
	printf '{"tenant": "red", "vms": ['
	sep=""
	for vm in v1 v2 v3; do
		aff=""
		[ "$vm" = v2 ] || aff=', "affinity": "db"'
		printf '%s{"name": "%s", "qmp": "%s", "to": "127.0.0.1:9"%s}' "$sep" "$vm" \
			"$T/$vm/qmp.sock" "$aff"
		sep=", "
	done
	printf ']}\n'
} >"$T/plan.json"

order=$("$TSUBAME" group send --plan "$T/plan.json" --key "$T/key" --dry-run -v 2>"$T/order.log") ||
	fail "group send --dry-run failed: $(tail -5 "$T/order.log")"
log "by content: $order ($(grep -c 'order:' "$T/order.log") lines of reasons)"
grep 'order:' "$T/order.log" >&2 || true
case $order in
"v2 v1 v3" | "v3 v1 v2") ;;
*) fail "the seed should be v2 or v3 (they share their memory), then v1 and its affinity: got '$order'" ;;
esac
order=$("$TSUBAME" group send --plan "$T/plan.json" --key "$T/key" --dry-run --order plan 2>/dev/null) ||
	fail "group send --dry-run --order plan failed"
[ "$order" = "v1 v3 v2" ] ||
	fail "--order plan: v1 first, then v3 (its affinity), then v2: got '$order'"
for vm in v1 v2 v3; do
	"$TSUBAME" qmp --qmp "$T/$vm/qmp.sock" query-status | grep -q '"running"' ||
		fail "$vm no longer runs after a dry run"
done
exit 0
