#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz/meson.build with clang in a
# separate build directory and runs each one for a bounded time.
#
#   tests/fuzz/run-fuzzers.sh [--build DIR] [--only NAME] [--runs N]
#                             [--fork J] [--jobs J] SECONDS
#
# Each target runs SECONDS; with --runs, until it has executed N inputs
# (SECONDS is then the cap), e.g. the long run of HACKING.md:
# --runs 10000000 7200. --fork J: one run of J worker processes (libFuzzer's
# fork mode), N counts the inputs of all of them. Each target's executions
# and time are printed. --jobs J: targets run J at a time (default: the
# number of cores, at most 2).
# A long run allows 60 s per input instead of 10: after millions of inputs
# on a loaded host, ASan returning freed memory to the OS has stalled one
# input for over 10 s (the input itself replays in 0.3 s).
# Seeds come from tests/fuzz/corpus/<target>/ (read only); inputs libFuzzer
# finds go to DIR/fuzz-corpus/<target>/, crashes to DIR/fuzz-artifacts/.
# Exit status: 0 all targets ran clean, 1 a target crashed or failed,
# 2 usage error, 77 clang/libFuzzer not available (skip).
set -euo pipefail

usage() {
	sed -n '2,15s/^# \{0,1\}//p' "$0"
}

src=$(cd "$(dirname "$0")/../.." && pwd)
build=$src/build-fuzz
only=
secs=
runs_wanted=0
fork=0
jobs=$(nproc 2>/dev/null || echo 1)
[ "$jobs" -le 2 ] || jobs=2
while [ $# -gt 0 ]; do
	case $1 in
	-h|--help) usage; exit 0 ;;
	--build) build=$2; shift 2 ;;
	--only) only=$2; shift 2 ;;
	--runs) runs_wanted=$2; shift 2 ;;
	--fork) fork=$2; shift 2 ;;
	--jobs) jobs=$2; shift 2 ;;
	-*) echo "run-fuzzers: unknown option $1 (try --help)" >&2; exit 2 ;;
	*) secs=$1; shift ;;
	esac
done
if ! [[ $runs_wanted =~ ^[0-9]+$ ]]; then
	echo "run-fuzzers: --runs N: N must be a number (try --help)" >&2
	exit 2
fi
if ! [[ $jobs =~ ^[0-9]+$ ]] || [ "$jobs" -eq 0 ]; then
	echo "run-fuzzers: --jobs J: J must be a positive number (try --help)" >&2
	exit 2
fi
if ! [[ $fork =~ ^[0-9]+$ ]]; then
	echo "run-fuzzers: --fork J: J must be a number (try --help)" >&2
	exit 2
fi
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
	echo "run-fuzzers: SECONDS must be a positive integer (try --help)" >&2
	exit 2
fi
if ! command -v clang >/dev/null; then
	echo "run-fuzzers: SKIP: clang not found (Debian: clang, installed by scripts/install-deps)" >&2
	exit 77
fi

# step LOG CMD...: runs a build step with its output in LOG; if it fails,
# shows the output (from the first FAILED: line on, for ninja) and exits 1.
step() {
	local log=$1 rc=0
	shift
	"$@" >"$log" 2>&1 || rc=$?
	[ $rc -eq 0 ] && return 0
	echo "run-fuzzers: '$*' failed (exit $rc); its output (all of it in $log):" >&2
	if grep -q '^FAILED: ' "$log"; then
		sed -n '/^FAILED: /,$p' "$log" | head -n 200 >&2
	else
		tail -n 200 "$log" >&2
	fi
	exit 1
}

# The libFuzzer and sanitizer runtimes are a package of their own, which
# clang only recommends: without them nothing can be linked. Probe with a
# one-line target so that their absence says so instead of failing the
# build of every target.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
echo 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; return (int)n * 0; }' \
	>"$probe/probe.c"
if ! clang -fsanitize=fuzzer,address,undefined -o "$probe/probe" "$probe/probe.c" \
	>"$probe/log" 2>&1; then
	sed 's/^/  /' "$probe/log" | head -n 20 >&2
	if grep -q 'libclang_rt' "$probe/log"; then
		echo "run-fuzzers: SKIP: clang's fuzzer and sanitizer runtimes are missing" \
			"(Debian: libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev," \
			"installed by scripts/install-deps)" >&2
		exit 77
	fi
	echo "run-fuzzers: clang cannot link a one-line libFuzzer target (see above)" >&2
	exit 1
fi

mkdir -p "$build"
if [ ! -f "$build/build.ninja" ]; then
	# (what a failed setup left behind would stop the next one)
	rm -rf "$build/meson-private" "$build/meson-info" "$build/meson-logs"
	CC=clang step "$build/setup.log" meson setup "$build" "$src" -Dfuzzing=true \
		-Dbuildtype=debugoptimized
fi
step "$build/ninja.log" ninja -C "$build" fuzzers

mkdir -p "$build/fuzz-artifacts"
fork_arg=()
[ "$fork" -eq 0 ] || fork_arg=(-fork="$fork")

# run_one NAME EXE: one target's bounded run; its output in its own log,
# one line on stderr; exit status 0 clean, 1 not.
run_one() {
	local name=$1 exe=$2 target corpus seeds runs t0=$SECONDS
	target=${name#fuzz-}
	corpus=$build/fuzz-corpus/$target
	seeds=$src/tests/fuzz/corpus/$target
	mkdir -p "$corpus"
	[ -d "$seeds" ] || seeds=
	if [ "$runs_wanted" -gt 0 ]; then
		echo "run-fuzzers: $name for $runs_wanted runs (at most ${secs}s)" >&2
	else
		echo "run-fuzzers: $name for ${secs}s" >&2
	fi
	if "$exe" -max_total_time="$secs" -runs="$([ "$runs_wanted" -gt 0 ] && echo "$runs_wanted" || echo -1)" \
		-timeout="$([ "$runs_wanted" -gt 0 ] && echo 60 || echo 10)" -rss_limit_mb=2048 \
		-artifact_prefix="$build/fuzz-artifacts/$name-" \
		-print_final_stats=1 "${fork_arg[@]}" "$corpus" ${seeds:+"$seeds"} \
		>"$build/fuzz-artifacts/$name.log" 2>&1; then
		runs=$(sed -n 's/^stat::number_of_executed_units: *//p' \
			"$build/fuzz-artifacts/$name.log")
		# (fork mode: the parent's last "#N" status line counts all workers)
		[ -n "$runs" ] || runs=$(sed -n 's/^#\([0-9]*\):.*/\1/p' \
			"$build/fuzz-artifacts/$name.log" | tail -1)
		echo "run-fuzzers: $name ok (${runs:-?} runs in $((SECONDS - t0))s)" >&2
		return 0
	fi
	echo "run-fuzzers: $name FAILED, see $build/fuzz-artifacts/$name.log" >&2
	tail -n 30 "$build/fuzz-artifacts/$name.log" >&2
	return 1
}

# Targets run --jobs at a time (each is one process; fork mode is one
# parent of its workers): the bounded run of make check takes half as long
# on two cores.
failed=0
ran=0
running=0
for exe in "$build"/tests/fuzz/fuzz-*-libfuzzer; do
	[ -x "$exe" ] || continue
	name=$(basename "$exe" -libfuzzer)
	if [ -n "$only" ] && [ "$only" != "$name" ] && [ "$only" != "${name#fuzz-}" ]; then
		continue
	fi
	if [ "$running" -ge "$jobs" ]; then
		wait -n || failed=1
		running=$((running - 1))
	fi
	run_one "$name" "$exe" &
	running=$((running + 1))
	ran=$((ran + 1))
done
while [ "$running" -gt 0 ]; do
	wait -n || failed=1
	running=$((running - 1))
done
if [ "$ran" -eq 0 ]; then
	echo "run-fuzzers: no libFuzzer targets built${only:+ matching $only}" >&2
	exit 1
fi
exit $failed
