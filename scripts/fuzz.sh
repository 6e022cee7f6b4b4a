#!/usr/bin/env bash
# Builds the libFuzzer targets (build-fuzz/, clang, ASan + UBSan) and runs each
# for a bounded time:
#   scripts/fuzz.sh [seconds-per-target] [target…]      (default 20 s, every target)
# First every saved crash in fuzz/regressions/<target>/ is run once (none may
# fail), then each target fuzzes from fuzz/corpus/<target>/ (new inputs go to
# a temporary copy, or to $FUZZ_CORPUS/<target>/ when set, to keep them) with
# its dictionary fuzz/dict/<target>.dict. A summary table gives executions and
# libFuzzer's final coverage (cov: edges, ft: features) per target. Exits
# non-zero on any crash, leak, sanitizer report or timeout; the input is kept
# in ${FUZZ_ARTIFACTS:-fuzz-artifacts}/ (see fuzz/README.md).
# LMDB-backed targets work in a temporary directory (on /dev/shm when there is
# one and TMPDIR is unset) removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
shift || true
case $secs in ''|*[!0-9]*) echo "usage: scripts/fuzz.sh [seconds-per-target] [target...]" >&2; exit 2;; esac

cc=${FUZZ_CC:-}
if [ -z "$cc" ]; then
	for c in clang clang-14; do command -v "$c" >/dev/null && { cc=$c; break; }; done
fi
[ -n "$cc" ] || { echo "fuzz.sh: no clang (scripts/install-deps.sh installs clang-14)" >&2; exit 2; }

build=build-fuzz
cmake -S . -B "$build" -G Ninja -DENABLE_FUZZING=ON -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	-DBUILD_TESTING=OFF >/dev/null
cmake --build "$build" --target fuzzers

if [ $# -gt 0 ]; then
	targets=("$@")
else
	targets=()
	for f in fuzz/fuzz_*.c; do t=$(basename "$f" .c); targets+=("$t"); done
fi

# LMDB opens and closes once per input: on tmpfs that is twice as fast
tmpbase=${TMPDIR:-/tmp}
if [ -z "${TMPDIR:-}" ] && [ -d /dev/shm ] && [ -w /dev/shm ]; then tmpbase=/dev/shm; fi
work=$(mktemp -d "$tmpbase/chat-fuzz-run.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/tmp"
artifacts=${FUZZ_ARTIFACTS:-fuzz-artifacts}
mkdir -p "$artifacts"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
summary="$(printf '%-16s %12s %8s %6s %7s %7s  %s' target executions exec/s cov ft corpus result)"
for t in "${targets[@]}"; do
	bin=$build/fuzz/$t
	[ -x "$bin" ] || { echo "fuzz.sh: no target $t" >&2; exit 2; }
	result=ok

	# 1. saved crashes must stay fixed
	regs=()
	if [ -d "fuzz/regressions/$t" ]; then
		while IFS= read -r -d '' f; do regs+=("$f"); done < <(find "fuzz/regressions/$t" -type f -print0 | sort -z)
	fi
	if [ ${#regs[@]} -gt 0 ]; then
		if ! TMPDIR="$work/tmp" "$bin" -runs=1 "${regs[@]}" >"$work/$t.reg.log" 2>&1; then
			echo "==> $t: a regression input fails again:" >&2
			tail -40 "$work/$t.reg.log" >&2
			result="REGRESSION"
			failed=1
		fi
	fi

	# 2. fuzz for a bounded time
	corpus=$work/corpus/$t
	if [ -n "${FUZZ_CORPUS:-}" ]; then corpus=$FUZZ_CORPUS/$t; fi
	mkdir -p "$corpus"
	dict=()
	[ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
	seeds=()
	[ -d "fuzz/corpus/$t" ] && seeds=("fuzz/corpus/$t")
	echo "==> $t: ${#regs[@]} regression input(s), fuzzing ${secs}s"
	set +e
	TMPDIR="$work/tmp" "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=1024 -max_len=4096 \
		-print_final_stats=1 -artifact_prefix="$artifacts/$t-" "${dict[@]}" "$corpus" "${seeds[@]}" \
		>"$work/$t.log" 2>&1
	rc=$?
	set -e
	if [ $rc -ne 0 ]; then
		echo "==> $t: FAILED (exit $rc); the input is in $artifacts/:" >&2
		grep -E "ERROR|SUMMARY|runtime error|fuzz session|fuzz_|artifact" "$work/$t.log" | head -20 >&2 || true
		tail -60 "$work/$t.log" > "$artifacts/$t.log"
		result="CRASH"
		failed=1
	fi
	# the last status line ("#N DONE cov: X ft: Y corp: …") and the final stats
	last=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -1 || true)
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/$t.log" | tail -1)
	rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$work/$t.log" | tail -1)
	cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
	ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
	corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$last")
	[ -n "$execs" ] || execs=$(sed -n 's/^#\([0-9]*\).*/\1/p' <<<"$last")
	summary+=$'\n'"$(printf '%-16s %12s %8s %6s %7s %7s  %s' "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" \
		"${corp:-?}" "$result")"
done

echo
echo "$summary"
if [ $failed -ne 0 ]; then
	echo "fuzz.sh: failures above (inputs in $artifacts/)" >&2
	exit 1
fi
rmdir "$artifacts" 2>/dev/null || true
