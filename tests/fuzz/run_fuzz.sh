#!/usr/bin/env bash
# Builds every libFuzzer target of tests/fuzz/CMakeLists.txt into build-fuzz/ and runs each for
# SECONDS (default 30) on a scratch copy of its seed corpus (tests/fuzz/corpus/<name>/ is never
# written). Exits 1 when any target fails to build, crashes, leaks, hangs or fails a check (the
# others still run); the input that did it is build-fuzz/artifacts/<name>-crash-... (or -leak-,
# -timeout-), the log build-fuzz/logs/<name>.log. Replay one with
#   build-fuzz/<name>_fuzz build-fuzz/artifacts/<name>-crash-...
#
#   tests/fuzz/run_fuzz.sh [SECONDS] [TARGET...]     e.g. tests/fuzz/run_fuzz.sh 60 csv jsonl
# Environment: CXX (default clang++), JOBS (build jobs, default 2), FUZZ_BUILD_DIR (default build-fuzz/).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
seconds=${1:-30}
[[ $# -gt 0 ]] && shift
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"

cmake -S "$root/tests/fuzz" -B "$build" -DCMAKE_CXX_COMPILER="${CXX:-clang++}" | { grep 'skipped' || true; }
mkdir -p "$build/artifacts" "$build/logs"

failed=()
ran=0
work=""
trap 'rm -rf "$work"' EXIT
while read -r name max_len; do
  [[ -n "$name" ]] || continue
  if [[ $# -gt 0 && " $* " != *" $name "* ]]; then continue; fi
  ran=$((ran + 1))
  # One target at a time, so a target that does not build is reported and the others still run.
  if ! cmake --build "$build" --target "${name}_fuzz" -j "${JOBS:-2}" </dev/null >"$build/logs/$name.build.log" 2>&1; then
    echo "fuzz $name: FAILED to build (log: build-fuzz/logs/$name.build.log)"
    grep -aE 'error' "$build/logs/$name.build.log" | head -n 5 || true
    failed+=("$name")
    continue
  fi
  work=$(mktemp -d)
  if [[ -d "$root/tests/fuzz/corpus/$name" ]]; then cp -R "$root/tests/fuzz/corpus/$name/." "$work/"; fi
  dict=()
  if [[ -f "$root/tests/fuzz/dict/$name.dict" ]]; then dict=(-dict="$root/tests/fuzz/dict/$name.dict"); fi
  echo "fuzz $name: ${seconds}s, max_len $max_len, $(ls "$work" | wc -l) seeds"
  if "$build/${name}_fuzz" "$work" "${dict[@]}" -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
      -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$build/artifacts/$name-" \
      </dev/null >"$build/logs/$name.log" 2>&1; then
    echo "fuzz $name: ok ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/logs/$name.log" | grep -o '[0-9]*$') runs)"
  else
    echo "fuzz $name: FAILED (log: build-fuzz/logs/$name.log)"
    grep -aE 'ERROR|fuzz check failed|SUMMARY|Test unit written' "$build/logs/$name.log" | head -n 8 || true
    failed+=("$name")
  fi
  rm -rf "$work"
done <"$build/fuzz_targets.txt"

# A target whose sources went missing is left out of fuzz_targets.txt by CMake ("skipped"): when
# every target was asked for, each tests/fuzz/<name>_fuzz.cc must have run.
if [[ $# -eq 0 ]]; then
  for source in "$root"/tests/fuzz/*_fuzz.cc; do
    name=$(basename "$source" _fuzz.cc)
    if ! grep -q "^$name " "$build/fuzz_targets.txt"; then
      echo "fuzz $name: FAILED, not built: CMake skipped it (a source or library it needs is missing: see the 'skipped' line above) or tests/fuzz/CMakeLists.txt lacks graft_fuzz($name ...)"
      failed+=("$name")
    fi
  done
fi
if [[ $ran -eq 0 ]]; then
  echo "run_fuzz: no fuzz target ran" >&2
  exit 1
fi
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "run_fuzz: ${failed[*]} failed" >&2
  exit 1
fi
echo "run_fuzz: $ran targets, no findings"
