#!/usr/bin/env bash
# Builds the fuzz targets of fuzz/ (libFuzzer, stable toolchain, no cargo-fuzz needed) and
# runs them. See FUZZING.md.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]   fuzz each target for SECONDS (default 60),
#                                           one after the other (FUZZ_JOBS=2: two at a time)
#   scripts/fuzz.sh --check [TARGET...]     build, run each target over its committed
#                                           seed corpus once (FUZZ_CHECK_SECONDS=N:
#                                           then fuzz it N seconds)
#   scripts/fuzz.sh --build                 build only
#   scripts/fuzz.sh --list                  list the targets
#
# Each run prints, per target: the result, executions, executions per second, coverage
# (libFuzzer `cov`: edges, and `ft`: features) and the corpus size. The corpus a run
# grows is kept under fuzz/work/<target>/ (not committed); the seeds in
# fuzz/corpus/<target>/ are read, never written. A crash, timeout or memory blow-up is
# saved under fuzz/artifacts/<target>/ and fails the script.
#
# Environment: FUZZ_JOBS (parallel runs, default 1), FUZZ_TIMEOUT (seconds one input may
# take before it counts as a hang, default 10), FUZZ_RSS_MB (memory limit, default 2048),
# FUZZ_ARGS (more libFuzzer flags), CARGO_TARGET_DIR (default fuzz/target), FUZZ_NO_BUILD=1
# with FUZZ_BIN_DIR=DIR (run binaries built before, e.g. copied away while a rebuild runs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
FUZZ=$ROOT/fuzz

mode=run
seconds=60
case "${1:-}" in
  --check) mode=check; shift ;;
  --build) mode=build; shift ;;
  --list) mode=list; shift ;;
  ''|-*) ;;
  *) if [[ "$1" =~ ^[0-9]+$ ]]; then seconds=$1; shift; fi ;;
esac

all_targets() { sed -n 's/^name = "\([a-z0-9_]*\)"$/\1/p' "$FUZZ/Cargo.toml" | grep -v '^mcp-security-fuzz$' || true; }
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(all_targets); fi
if [ "$mode" = list ]; then printf '%s\n' "${targets[@]}"; exit 0; fi

host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$FUZZ/target}
bin_dir=${FUZZ_BIN_DIR:-$CARGO_TARGET_DIR/$host/release}

build() {
  # The instrumentation cargo-fuzz applies with `--sanitizer none`, on a stable rustc:
  # SanitizerCoverage (inline 8-bit counters, PC table, comparison tracing) for
  # libFuzzer, debug assertions and overflow checks on. `--target` keeps build scripts
  # and proc macros uninstrumented.
  local flags="--cfg fuzzing -Cpasses=sancov-module"
  flags+=" -Cllvm-args=-sanitizer-coverage-level=4"
  flags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
  flags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
  flags+=" -Cllvm-args=-sanitizer-coverage-trace-compares"
  flags+=" -Cdebug-assertions -Coverflow-checks"
  local bins=()
  for t in "${targets[@]}"; do bins+=(--bin "$t"); done
  echo "==> building fuzz targets: ${targets[*]}"
  local start=$SECONDS
  RUSTFLAGS="$flags ${RUSTFLAGS:-}" cargo build --manifest-path "$FUZZ/Cargo.toml" \
    --release --target "$host" --keep-going "${bins[@]}"
  echo "built in $((SECONDS - start)) s"
}

# Runs one target; prints one summary line; returns non-zero on a finding.
run_one() {
  local t=$1 secs=$2 phase=$3
  local work=$FUZZ/work/$t
  local log=$work/$phase.log
  mkdir -p "$work/corpus" "$FUZZ/artifacts/$t" "$FUZZ/corpus/$t"
  local dict=()
  [ -f "$FUZZ/dict/$t.dict" ] && dict=(-dict="$FUZZ/dict/$t.dict")
  local status=0
  # shellcheck disable=SC2086
  "$bin_dir/$t" "$work/corpus" "$FUZZ/corpus/$t" "${dict[@]}" \
    -max_total_time="$secs" ${runs:+-runs=$runs} -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -artifact_prefix="$FUZZ/artifacts/$t/" -print_final_stats=1 ${FUZZ_ARGS:-} \
    >"$log" 2>&1 || status=$?
  local execs cov ft corp rate
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  ft=$(grep -Eo 'ft: [0-9]+' "$log" | tail -1 | awk '{print $2}')
  corp=$(grep -Eo 'corp: [0-9]+/[0-9A-Za-z]+' "$log" | tail -1 | awk '{print $2}')
  local result=ok
  if [ "$status" != 0 ]; then
    result="FAILED (exit $status; see $log and fuzz/artifacts/$t/)"
    grep -E '^(==[0-9]+== ERROR|thread .* panicked|.*SUMMARY)' "$log" | head -3 || true
  fi
  printf '%-18s %-7s %6ss  execs %-10s exec/s %-7s cov %-6s ft %-7s corpus %s  %s\n' \
    "$t" "$phase" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result"
  return "$status"
}

[ "${FUZZ_NO_BUILD:-0}" = 1 ] || build
[ "$mode" = build ] && exit 0

failed=0
if [ "$mode" = check ]; then
  # The seeds once (-runs=0); FUZZ_CHECK_SECONDS=N fuzzes N seconds more.
  runs=0
  [ "${FUZZ_CHECK_SECONDS:-0}" != 0 ] && runs=
  echo "==> each target over its seed corpus$([ -z "$runs" ] && echo " and ${FUZZ_CHECK_SECONDS} s of fuzzing")"
  for t in "${targets[@]}"; do
    # Fresh working corpus: the check tells whether the committed seeds pass.
    rm -rf "$FUZZ/work/$t/corpus"
    run_one "$t" "${FUZZ_CHECK_SECONDS:-1}" check || failed=1
  done
else
  echo "==> fuzzing each target for $seconds s (${FUZZ_JOBS:-1} at a time), $(date -u '+%F %T') UTC, $(nproc) cores"
  pids=()
  for t in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "${FUZZ_JOBS:-1}" ]; do sleep 1; done
    run_one "$t" "$seconds" run &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || failed=1; done
fi
exit $failed
