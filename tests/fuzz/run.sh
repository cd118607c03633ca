#!/usr/bin/env bash
# Runs fuzz targets for a while each, two at a time (README "Fuzzing"):
#   tests/fuzz/run.sh [seconds per target, default 240] [target ...]   (default: every target)
# Needs the fuzzer build: CC=clang CXX=clang++ cmake -S . -B build-fuzz -G Ninja
#   -DCMAKE_BUILD_TYPE=Debug -DLEDGER_BUILD_FUZZERS=ON -DLEDGER_BUILD_TESTS=OFF && cmake --build build-fuzz
# New inputs go to $FUZZ_WORK/<target>/corpus (default build-fuzz/fuzz-work), crashes and the
# libFuzzer log to $FUZZ_WORK/<target>/; the checked-in corpus (tests/fuzz/corpus/<target>) is
# only read. Copy an input that found a bug there by hand, with its regression test.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-240}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  for f in tests/fuzz/corpus/*/; do targets+=("$(basename "$f")"); done
fi
work=${FUZZ_WORK:-$PWD/build-fuzz/fuzz-work}
run_one() {
  local t=$1 dict=()
  for d in tests/fuzz/$t.dict tests/fuzz/json.dict; do
    if [ -f "$d" ]; then dict=(-dict="$PWD/$d"); break; fi
  done
  mkdir -p "$work/$t/corpus"
  (cd "$work/$t" && "$OLDPWD/build-fuzz/bin/fuzz_$t" "${dict[@]}" -max_total_time="$seconds" \
     -rss_limit_mb=2048 -malloc_limit_mb=512 -jobs=1 -print_final_stats=1 \
     -artifact_prefix="$work/$t/" corpus "$OLDPWD/tests/fuzz/corpus/$t" >/dev/null 2>&1 || true)
  echo "$t: $(grep -E 'stat::number_of_executed_units|stat::average_exec_per_sec' "$work/$t/fuzz-0.log" |
    awk '{printf "%s ", $0}') $(grep -E '^#[0-9]+' "$work/$t/fuzz-0.log" | tail -1)"
  ls "$work/$t" | grep -E '^(crash|leak|timeout|oom|slow-unit)-' || true
}
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run_one "${targets[i]}" &
  if ((i + 1 < ${#targets[@]})); then run_one "${targets[i + 1]}" & fi
  wait
done
