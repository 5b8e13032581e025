#!/usr/bin/env bash
# tsubame-wanem: checks the emulated link's rate and delay against its spec
# (rate within 5%, added RTT within 3 ms of 2 x one-way delay), the byte
# counts in its stats file, half-close, sharing between connections, the
# SIGUSR1/SIGUSR2 link cut and the SIGRTMIN/SIGRTMIN+1 blackhole.
#
# Usage: 10-wanem.sh [TSUBAME_WANEM TSUBAME_NETPROBE]
# (or WANEM=... NETPROBE=... in the environment). Exit 77 = skipped.
set -euo pipefail

WANEM=${1:-${WANEM:-}}
PROBE=${2:-${NETPROBE:-}}
RATE_TOL=0.05		# relative
RTT_TOL_US=3000

if [ -z "$WANEM" ] || [ -z "$PROBE" ] || [ ! -x "$WANEM" ] || [ ! -x "$PROBE" ]; then
	echo "SKIP: tsubame-wanem or tsubame-netprobe not given or not built"
	exit 77
fi
for tool in awk grep sed timeout mktemp head tr seq date; do
	if ! command -v "$tool" >/dev/null; then
		echo "SKIP: $tool missing"
		exit 77
	fi
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/wanem-test.XXXXXX")
pids=()

cleanup() {
	local p
	for p in "${pids[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${pids[@]}"; do
		wait "$p" 2>/dev/null || true
	done
	rm -rf "$tmp"
}
trap cleanup EXIT

fails=0
passes=0
ok() { echo "ok: $*"; passes=$((passes + 1)); }
bad() { echo "FAIL: $*"; fails=$((fails + 1)); }
die() { echo "FAIL: $*"; for f in "$tmp"/*.log; do [ -f "$f" ] && sed "s|^|  $(basename "$f"): |" "$f"; done; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls until COMMAND succeeds.
wait_for() {
	local what=$1 secs=$2 i
	shift 2
	for ((i = 0; i < secs * 20; i++)); do
		if "$@"; then
			return 0
		fi
		sleep 0.05
	done
	die "timed out waiting for $what"
}

# json_num FILE KEY: first (top-level) numeric value of KEY.
json_num() {
	grep -o "\"$2\":[0-9]*" "$1" | head -n 1 | cut -d: -f2
}
json_str() {
	grep -o "\"$2\":\"[^\"]*\"" "$1" | head -n 1 | cut -d: -f2- | tr -d '"'
}
# kv LINE KEY: value of KEY=VALUE in a probe's output line.
kv() {
	local v
	v=$(printf '%s\n' "$1" | tr ' ' '\n' | sed -n "s/^$2=//p" | head -n 1)
	[ -n "$v" ] || die "no $2 in probe output: $1"
	printf '%s\n' "$v"
}
# within VALUE TARGET TOLERANCE: |VALUE - TARGET| <= TOLERANCE
within() {
	awk -v v="$1" -v t="$2" -v tol="$3" 'BEGIN { d = v - t; if (d < 0) d = -d; exit !(d <= tol) }'
}

probe() { timeout 60 "$PROBE" "$@"; }

stats=$tmp/stats.json
relay_stats_active_zero() { [ "$(json_num "$stats" active)" = 0 ]; }

# ---- command line ----
grep -q -- '--rate-down' <<<"$("$WANEM" --help)" || die "--help does not list --rate-down"
ok "--help"
set +e
"$WANEM" --listen 127.0.0.1:0 --connect 127.0.0.1:1 --rate fast 2>"$tmp/usage.err"
rc=$?
set -e
if [ $rc -eq 2 ] && grep -q "invalid rate 'fast'.*try" "$tmp/usage.err"; then
	ok "bad rate: exit 2 with a reason"
else
	bad "bad rate: exit $rc, $(cat "$tmp/usage.err")"
fi
set +e
"$WANEM" --listen 127.0.0.1:0 2>"$tmp/usage.err"
rc=$?
set -e
[ $rc -eq 2 ] && grep -q "missing --connect" "$tmp/usage.err" &&
	ok "missing --connect: exit 2" || bad "missing --connect: exit $rc"

# ---- servers ----
"$PROBE" server --listen 127.0.0.1:0 --port-file "$tmp/probe.port" 2>"$tmp/probe.log" &
pids+=($!)
wait_for "probe server" 10 test -s "$tmp/probe.port"
sport=$(cat "$tmp/probe.port")
direct=127.0.0.1:$sport

set +e
"$WANEM" --listen "127.0.0.1:$sport" --connect "$direct" 2>"$tmp/listen.err"
rc=$?
set -e
[ $rc -eq 1 ] && grep -q "cannot listen on 127.0.0.1:$sport" "$tmp/listen.err" &&
	ok "port in use: exit 1, 'cannot listen'" || bad "port in use: exit $rc, $(cat "$tmp/listen.err")"

# Up: 100 Mbit/s, down: 40 Mbit/s, 25 ms one-way each.
RATE_UP=12500000
RATE_DOWN=5000000
DELAY_MS=25
"$WANEM" --listen 127.0.0.1:0 --connect "$direct" --rate 100mbit \
	--rate-down 40mbit --delay ${DELAY_MS}ms --stats "$stats" \
	--pidfile "$tmp/wanem.pid" -v 2>"$tmp/wanem.log" &
wpid=$!
pids+=($wpid)
wait_for "relay stats" 10 test -s "$stats"
wait_for "relay pidfile" 10 test -s "$tmp/wanem.pid"
[ "$(cat "$tmp/wanem.pid")" = "$wpid" ] || bad "pidfile holds $(cat "$tmp/wanem.pid"), not $wpid"
relay=127.0.0.1:$(json_num "$stats" listen_port)
[ "$(json_num "$stats" rate_up)" = $RATE_UP ] && [ "$(json_num "$stats" rate_down)" = $RATE_DOWN ] ||
	bad "stats rates: $(cat "$stats")"

sent_up=0
sent_down=0
nconns=0
count_probe() {	# adds a relayed probe's wire bytes to the expected totals
	sent_up=$((sent_up + $(kv "$1" wire_sent)))
	sent_down=$((sent_down + $(kv "$1" wire_received)))
	nconns=$((nconns + 1))
}

# ---- RTT: median of 40 pings, direct and through the relay ----
out=$(probe ping --connect "$direct" --count 40) || die "direct ping failed"
rtt_direct=$(kv "$out" median_us)
out=$(probe ping --connect "$relay" --count 40) || die "relayed ping failed"
count_probe "$out"
rtt_relay=$(kv "$out" median_us)
added=$(awk -v a="$rtt_relay" -v b="$rtt_direct" 'BEGIN { printf "%.1f", a - b }')
echo "rtt: direct ${rtt_direct} us, relayed ${rtt_relay} us, added ${added} us (want $((2 * DELAY_MS * 1000)) +- $RTT_TOL_US)"
within "$added" $((2 * DELAY_MS * 1000)) $RTT_TOL_US &&
	ok "added RTT ${added} us" || bad "added RTT ${added} us"

# ---- rate up: 3 s, measured by the receiving sink after 0.25 s ----
out=$(probe send --connect "$relay" --seconds 3) || die "send through relay failed"
count_probe "$out"
rate=$(kv "$out" rate)
echo "up: $(kv "$out" received) bytes, rate $rate B/s (want $RATE_UP), sender saw $(kv "$out" sender_rate) B/s"
[ "$(kv "$out" received)" = "$(kv "$out" sent)" ] || bad "sink received $(kv "$out" received) of $(kv "$out" sent)"
within "$rate" $RATE_UP "$(awk -v r=$RATE_UP -v t=$RATE_TOL 'BEGIN { print r * t }')" &&
	ok "up rate $rate B/s" || bad "up rate $rate B/s, want $RATE_UP +-5%"

# ---- rate down ----
out=$(probe recv --connect "$relay" --seconds 3) || die "recv through relay failed"
count_probe "$out"
rate=$(kv "$out" rate)
echo "down: $(kv "$out" received) bytes, rate $rate B/s (want $RATE_DOWN)"
within "$rate" $RATE_DOWN "$(awk -v r=$RATE_DOWN -v t=$RATE_TOL 'BEGIN { print r * t }')" &&
	ok "down rate $rate B/s" || bad "down rate $rate B/s, want $RATE_DOWN +-5%"

# ---- two connections share the up link ----
probe send --connect "$relay" --seconds 3 >"$tmp/a.out" 2>"$tmp/a.log" &
pa=$!
pids+=($pa)
probe send --connect "$relay" --seconds 3 >"$tmp/b.out" 2>"$tmp/b.log" &
pb=$!
pids+=($pb)
wait "$pa" || die "parallel send A failed"
wait "$pb" || die "parallel send B failed"
ra=$(kv "$(cat "$tmp/a.out")" rate)
rb=$(kv "$(cat "$tmp/b.out")" rate)
count_probe "$(cat "$tmp/a.out")"
count_probe "$(cat "$tmp/b.out")"
# Together they keep the link busy from the first byte either sink got to
# the last one, so the aggregate is total bytes over that span.
sum=$(awk -v a="$(cat "$tmp/a.out")" -v b="$(cat "$tmp/b.out")" '
	function get(line, key,   n, i, f, kv) {
		n = split(line, f, " ")
		for (i = 1; i <= n; i++) {
			split(f[i], kv, "=")
			if (kv[1] == key)
				return kv[2]
		}
		return 0
	}
	BEGIN {
		first = get(a, "first_ns"); if (get(b, "first_ns") < first) first = get(b, "first_ns")
		last = get(a, "last_ns"); if (get(b, "last_ns") > last) last = get(b, "last_ns")
		printf "%.1f", (get(a, "received") + get(b, "received")) * 1e9 / (last - first)
	}')
echo "shared: $ra and $rb B/s each, $sum B/s together (want $RATE_UP)"
within "$sum" $RATE_UP "$(awk -v r=$RATE_UP -v t=$RATE_TOL 'BEGIN { print r * t }')" &&
	ok "two connections share the link: $sum B/s" || bad "shared rate $sum B/s"
awk -v a="$ra" -v b="$rb" 'BEGIN { exit !(a > 0.3 * (a + b) && b > 0.3 * (a + b)) }' &&
	ok "fair share" || bad "unfair share: $ra vs $rb"

# ---- stats byte counts ----
wait_for "relay to close all connections" 10 relay_stats_active_zero
got_up=$(json_num "$stats" bytes_up)
got_down=$(json_num "$stats" bytes_down)
got_conns=$(json_num "$stats" connections)
echo "stats: up $got_up (probes sent $sent_up), down $got_down (probes got $sent_down), $got_conns connections"
[ "$got_up" = "$sent_up" ] && ok "stats bytes_up" || bad "stats bytes_up $got_up, probes sent $sent_up"
[ "$got_down" = "$sent_down" ] && ok "stats bytes_down" || bad "stats bytes_down $got_down, probes got $sent_down"
[ "$got_conns" = "$nconns" ] && ok "stats connections" || bad "stats connections $got_conns, want $nconns"

# ---- link cut ----
resets0=$(json_num "$stats" resets)
probe ping --connect "$relay" --count 600 --interval 10 >"$tmp/cut.out" 2>"$tmp/cut.err" &
pping=$!
pids+=($pping)
relay_stats_active_one() { [ "$(json_num "$stats" active)" = 1 ]; }
wait_for "the long ping's connection" 10 relay_stats_active_one
kill -USR1 "$wpid"
set +e
wait "$pping"
rc=$?
set -e
if [ $rc -ne 0 ] && grep -q "connection reset" "$tmp/cut.err"; then
	ok "SIGUSR1 resets a live connection"
else
	bad "live ping after SIGUSR1: exit $rc, $(cat "$tmp/cut.err")"
fi
relay_cut() { [ "$(json_str "$stats" link)" = cut ]; }
wait_for "stats to show the cut" 10 relay_cut
[ "$(json_num "$stats" resets)" -gt "$resets0" ] || bad "resets not counted"
if probe ping --connect "$relay" --count 1 >/dev/null 2>"$tmp/refused.err"; then
	bad "a new connection got through a cut link"
else
	ok "cut link refuses new connections"
fi
kill -USR2 "$wpid"
relay_up() { [ "$(json_str "$stats" link)" = up ]; }
wait_for "stats to show the link up" 10 relay_up
probe ping --connect "$relay" --count 3 >/dev/null && ok "SIGUSR2 restores the link" ||
	bad "ping after SIGUSR2 failed"
grep -q "SIGUSR1: link cut" "$tmp/wanem.log" && grep -q "SIGUSR2: link restored" "$tmp/wanem.log" &&
	ok "cut and restore logged" || bad "cut/restore not logged"

# ---- blackhole: SIGRTMIN silences the link, SIGRTMIN+1 resumes it ----
# An echo connection held open by this shell (bash's /dev/tcp): bytes sent
# just before and during the blackhole must not come back while it lasts,
# nothing is reset, and after SIGRTMIN+1 they all come back in order on the
# same connection. A connection opened meanwhile waits in the listen
# backlog and works afterwards. The relay must not spin while blackholed.
relay_state() { [ "$(json_str "$stats" link)" = "$1" ]; }
# cpu_ticks PID: user + system CPU time in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }
# echo_read FD TIMEOUT N: reads N lines from FD into echo_got (joined by
# spaces); returns read's status (> 128: timed out, 1: closed or reset).
echo_got=
echo_read() {
	local fd=$1 t=$2 n=$3 line i
	echo_got=
	for ((i = 0; i < n; i++)); do
		IFS= read -r -t "$t" -u "$fd" line || return $?
		echo_got+="${echo_got:+ }$line"
	done
}
rport=$(json_num "$stats" listen_port)
conns0=$(json_num "$stats" connections)
resets0=$(json_num "$stats" resets)
exec 3<>"/dev/tcp/127.0.0.1/$rport" || die "cannot open a connection to the relay with /dev/tcp"
printf 'ECHO\nwarm-1\nwarm-2\n' >&3
rc=0
echo_read 3 5 2 || rc=$?
[ $rc -eq 0 ] && [ "$echo_got" = "warm-1 warm-2" ] || die "echo through the relay: rc $rc, got '$echo_got'"
big=$(head -c 150000 /dev/zero | tr '\0' 'b')
want=
for i in $(seq 1 20); do printf 'pre-%d\n' "$i"; want+="${want:+ }pre-$i"; done >&3
# The pre- lines are on the up link (25 ms) or not yet read: the echo of
# none of them can be back before the blackhole starts.
kill -s RTMIN "$wpid"
wait_for "stats to show the blackhole" 10 relay_state blackhole
cpu0=$(cpu_ticks "$wpid")
t0=$(date +%s%N)
for i in $(seq 1 20); do printf 'during-%d\n' "$i"; want+=" during-$i"; done >&3
printf '%s\n' "$big" >&3
want+=" $big"
for i in $(seq 21 40); do printf 'during-%d\n' "$i"; want+=" during-$i"; done >&3
exec 4<>"/dev/tcp/127.0.0.1/$rport" || die "a new connection during the blackhole failed"
printf 'ECHO\nnew-1\n' >&4
rc=0
echo_read 3 1 1 || rc=$?
if [ $rc -gt 128 ]; then
	ok "blackholed: nothing comes back for 1 s, the connection stays open"
elif [ $rc -eq 0 ]; then
	bad "blackholed: '${echo_got:0:40}' came back"
else
	bad "blackholed: the connection was closed or reset (read status $rc)"
fi
rc=0
echo_read 4 0.2 1 || rc=$?
[ $rc -gt 128 ] && ok "blackholed: a new connection is held, not refused" ||
	bad "blackholed: new connection read status $rc, got '${echo_got:0:40}'"
[ "$(json_num "$stats" resets)" = "$resets0" ] && [ "$(json_num "$stats" active)" = 1 ] &&
	[ "$(json_num "$stats" connections)" = $((conns0 + 1)) ] &&
	ok "blackholed: no reset, the new connection waits in the backlog" ||
	bad "blackholed stats: $(cat "$stats")"
cpu1=$(cpu_ticks "$wpid")
held_ms=$((($(date +%s%N) - t0) / 1000000))
echo "blackhole: relay used $((cpu1 - cpu0)) CPU ticks in $held_ms ms"
[ $((cpu1 - cpu0)) -le 10 ] && ok "blackholed relay does not spin" ||
	bad "blackholed relay used $((cpu1 - cpu0)) CPU ticks in $held_ms ms"
kill -s RTMIN+1 "$wpid"
wait_for "stats to show the link up after the blackhole" 10 relay_state up
rc=0
echo_read 3 10 61 || rc=$?
if [ $rc -eq 0 ] && [ "$echo_got" = "$want" ]; then
	ok "SIGRTMIN+1: every byte sent before and during the blackhole arrives, in order"
else
	bad "after SIGRTMIN+1: read status $rc, got $(printf '%s' "$echo_got" | wc -c) of $(printf '%s' "$want" | wc -c) bytes"
fi
printf 'after-1\n' >&3
rc=0
echo_read 3 5 1 || rc=$?
[ $rc -eq 0 ] && [ "$echo_got" = after-1 ] && ok "the same connection goes on after the blackhole" ||
	bad "echo after the blackhole: status $rc, got '$echo_got'"
rc=0
echo_read 4 5 1 || rc=$?
[ $rc -eq 0 ] && [ "$echo_got" = new-1 ] && ok "the connection held in the backlog flows" ||
	bad "held connection after the blackhole: status $rc, got '$echo_got'"
exec 3>&- 4>&-
[ "$(json_num "$stats" resets)" = "$resets0" ] || bad "resets during the blackhole test: $(cat "$stats")"
wait_for "relay to close the echo connections" 10 relay_stats_active_zero

# A bulk transfer blackholed for 1 s in its middle: no byte reaches the
# server meanwhile (bytes_up is the same in the stats written at the start
# and at the end of the blackhole), then the sink gets every byte.
probe send --connect "$relay" --seconds 3 >"$tmp/bh.out" 2>"$tmp/bh.log" &
psend=$!
pids+=($psend)
wait_for "the transfer's connection" 10 relay_stats_active_one
sleep 0.7
kill -s RTMIN "$wpid"
wait_for "stats to show the blackhole" 10 relay_state blackhole
up0=$(json_num "$stats" bytes_up)
sleep 1
kill -s RTMIN+1 "$wpid"
wait_for "stats to show the link up after the blackhole" 10 relay_state up
up1=$(json_num "$stats" bytes_up)
set +e
wait "$psend"
rc=$?
set -e
out=$(cat "$tmp/bh.out")
echo "blackholed transfer: bytes_up $up0 at the start of the blackhole, $up1 at its end; $out"
[ "$up0" = "$up1" ] && ok "blackholed transfer: nothing delivered for 1 s" ||
	bad "blackholed transfer: $((up1 - up0)) bytes delivered during the blackhole"
if [ $rc -eq 0 ] && [ "$(kv "$out" received)" = "$(kv "$out" sent)" ]; then
	ok "blackholed transfer: the sink got all $(kv "$out" sent) bytes on one connection"
else
	bad "blackholed transfer: exit $rc, $out $(cat "$tmp/bh.log")"
fi
[ "$(json_num "$stats" resets)" = "$resets0" ] || bad "the blackholed transfer was reset"

# SIGUSR2 also ends a blackhole; both are logged.
kill -s RTMIN "$wpid"
wait_for "stats to show the blackhole" 10 relay_state blackhole
kill -USR2 "$wpid"
wait_for "stats to show the link up" 10 relay_state up
probe ping --connect "$relay" --count 3 >/dev/null && ok "SIGUSR2 ends a blackhole too" ||
	bad "ping after SIGRTMIN, SIGUSR2 failed"
grep -q "SIGRTMIN: link blackholed" "$tmp/wanem.log" &&
	grep -q "SIGRTMIN+1: link flows again" "$tmp/wanem.log" &&
	ok "blackhole and its end logged" || bad "blackhole not logged"

# ---- relay to a closed port: the client is reset, the relay says why ----
"$WANEM" --listen 127.0.0.1:0 --connect 127.0.0.1:1 --stats "$tmp/dead.json" 2>"$tmp/dead.log" &
dpid=$!
pids+=($dpid)
wait_for "second relay" 10 test -s "$tmp/dead.json"
if probe ping --connect "127.0.0.1:$(json_num "$tmp/dead.json" listen_port)" --count 1 >/dev/null 2>&1; then
	bad "ping through a relay to a closed port succeeded"
fi
grep -q "cannot connect to 127.0.0.1:1" "$tmp/dead.log" &&
	ok "unreachable server: 'cannot connect' logged" || bad "no 'cannot connect' in $(cat "$tmp/dead.log")"
kill "$dpid"
wait "$dpid" || true

# ---- SIGTERM: stats written, pidfile removed, exit 0 ----
kill -TERM "$wpid"
set +e
wait "$wpid"
rc=$?
set -e
[ $rc -eq 0 ] && ok "SIGTERM: exit 0" || bad "SIGTERM: exit $rc"
[ ! -e "$tmp/wanem.pid" ] && ok "pidfile removed" || bad "pidfile left behind"
[ "$(json_num "$stats" active)" = 0 ] || bad "final stats: $(cat "$stats")"

if grep -q "runtime error\|AddressSanitizer\|LeakSanitizer" "$tmp"/*.log; then
	bad "sanitizer reports in the logs"
fi

echo "$passes passed, $fails failed"
if [ $fails -ne 0 ]; then
	sed 's/^/  wanem.log: /' "$tmp/wanem.log" | tail -n 40
	exit 1
fi
exit 0
