#!/usr/bin/env bash
# Binding updates between two real agents (sites A and B of
# scripts/netns-sites): a registration is acknowledged; forged (wrong key),
# spoofed (wrong source), stale (old sequence number) and misdirected
# updates are refused and logged, and leave the binding alone; a VM back
# home drops its binding and makes the old site's updates stale.
. "$(dirname "$0")/lib.sh"
. "$(dirname "$0")/net-lib.sh"
require_netns
P=$(net_prefix)
trap 'rc=$?; set +e; "$NETNS_SITES" down "$P"; (exit $rc); cleanup' EXIT
"$NETNS_SITES" up "$P"

"$TSUBAME" keygen --id sites "$T/site.key" >/dev/null
"$TSUBAME" keygen --id other "$T/other.key" >/dev/null
sa=$T/a.sock sb=$T/b.sock
start_agent "$P-a" "$T/a.log" --site A --dev ag --listen 10.61.101.2:4789 \
	--key "$T/site.key" --control "$sa" --peer B=10.61.102.2:4789
start_agent "$P-b" "$T/b.log" --site B --dev ag --listen 10.61.102.2:4789 \
	--key "$T/site.key" --control "$sb" --peer A=10.61.101.2:4789

vm=(--vm vm1 --mac 52:54:00:61:00:10 --ip 10.61.1.10 --home A)
binding() {	# binding SOCK FIELD: prints a field of vm1's binding
	"$TSUBAME" net status --agent "$1" | python3 -c "
import json, sys
b = [b for b in json.load(sys.stdin)['bindings'] if b['vm'] == 'vm1']
print(b[0]['$2'] if b else 'none')"
}
update() {	# update NS ARGS...: one hand-made binding update to agent A
	local ns=$1
	shift
	ip netns exec "$P-$ns" "$TSUBAME" net update --to 10.61.101.2:4789 \
		--vm vm1 --mac 52:54:00:61:00:10 --ip 10.61.1.10 --timeout 1000 "$@" || true
}

# 1. The VM arrives at B: B registers it with A and gets the ack.
"$TSUBAME" net notify --agent "$sb" --event arrive "${vm[@]}" --wait 5000 >"$T/reply" ||
	fail "registration not acknowledged: $(cat "$T/reply") $(cat "$T/b.log")"
grep -q '"state":"registered"' "$T/reply" || fail "unexpected reply $(cat "$T/reply")"
[ "$(binding "$sa" state)" = away ] || fail "A has no away binding"
[ "$(binding "$sa" current)" = B ] || fail "A does not point at B"
seq=$(binding "$sa" seq)
log "registered at B with seq $seq"

# 2. Forged: right source, wrong key. No answer, counted, logged.
out=$(update b --key "$T/other.key" --from B --home A --seq 1000)
[ "$out" = "no reply" ] || fail "forged update got '$out'"
[ "$(counter "$sa" bu_forged)" -ge 1 ] || fail "forged update not counted"
grep -q "forged binding message from 10.61.102.2" "$T/a.log" || fail "forged update not logged"
[ "$(binding "$sa" seq)" = "$seq" ] || fail "forged update changed the binding"

# 3. Spoofed: right key, claims site B, comes from the correspondent node.
out=$(update cn --key "$T/site.key" --from B --home A --seq 1000)
[ "$out" = "no reply" ] || fail "spoofed update got '$out'"
grep -q "claims site 'B' but comes from 10.61.103.2" "$T/a.log" || fail "spoofed update not logged"
[ "$(binding "$sa" seq)" = "$seq" ] || fail "spoofed update changed the binding"

# 4. Stale: a replayed (old) sequence number is refused with status 135.
out=$(update b --key "$T/site.key" --from B --home A --seq "$seq")
case "$out" in "refused 135 seq $seq") ;; *) fail "stale update got '$out'" ;; esac
[ "$(counter "$sa" bu_stale)" -ge 1 ] || fail "stale update not counted"
grep -q "stale binding update for vm 'vm1' from site 'B'" "$T/a.log" || fail "stale update not logged"

# 5. Misdirected: A is not the home of a VM whose home is B.
out=$(update b --key "$T/site.key" --from B --home B --seq 5000)
[ "$out" = "refused 131 seq 0" ] || fail "misdirected update got '$out'"

# 6. A newer, authentic update is accepted.
out=$(update b --key "$T/site.key" --from B --home A --seq $((seq + 1)))
[ "$out" = "accepted seq $((seq + 1)) lifetime 60" ] || fail "authentic update got '$out'"

# 7. Back home: the binding goes, and B's next sequence number is stale.
"$TSUBAME" net notify --agent "$sa" --event arrive "${vm[@]}" >/dev/null
[ "$(binding "$sa" state)" = home ] || fail "binding not removed on return home"
out=$(update b --key "$T/site.key" --from B --home A --seq $((seq + 2)))
case "$out" in "refused 135 "*) ;; *) fail "update after return home got '$out'" ;; esac
"$TSUBAME" net notify --agent "$sb" --event depart --vm vm1 >/dev/null
[ "$(binding "$sb" state)" = none ] || fail "B kept its visitor binding after depart"
log "forged, spoofed, stale and misdirected updates refused; return home OK"
exit 0
