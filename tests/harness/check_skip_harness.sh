#!/usr/bin/env bash
# The skip harness (ctest entry skip_harness): registers the skip_shapes binary in its shapes with
# the suite's own graft_gtest_entry (tests/harness/CMakeLists.txt), runs each shape under ctest,
# and checks ctest's verdict and exit code:
#   all_skip       -> Skipped, ctest exits 0
#   skip_and_fail  -> Failed,  ctest exits non-zero (a skip must never hide a failure)
#   skip_and_pass  -> Passed,  ctest exits 0, and the output names the skipped test with its reason
#   none_selected  -> Failed   (a filter that matches nothing is a suite that dropped out)
# and, given MPIEXEC and the multi-rank binary (mpi/mpi_main.cc), the same four under mpirun -np 2.
#   check_skip_harness.sh HARNESS_SOURCE_DIR SKIP_SHAPES_BINARY WORK_DIR [MPIEXEC MPI_SKIP_SHAPES_BINARY]
set -uo pipefail
src=$(realpath "$1") shapes=$(realpath "$2") work=$(realpath -m "$3")
mpi_args=()
if (($# >= 5)); then mpi_args=(-DMPIEXEC="$4" -DMPI_SKIP_SHAPES="$(realpath "$5")"); fi
rm -rf "$work"
mkdir -p "$work"
if ! cmake -S "$src" -B "$work" -DSKIP_SHAPES="$shapes" "${mpi_args[@]}" >"$work/configure.log" 2>&1; then
  echo "skip_harness: configuring the harness project failed:"; cat "$work/configure.log"; exit 1
fi
failures=0
check() {  # check SHAPE VERDICT WANT_ZERO_EXIT [PATTERN_IN_OUTPUT]
  local shape=$1 verdict=$2 want_zero=$3 pattern=${4:-} out rc
  out=$(cd "$work" && ctest -R "^${shape}\$" --output-on-failure 2>&1)
  rc=$?
  local line
  line=$(grep -E "Test +#[0-9]+: ${shape} " <<<"$out")
  local ok=1
  case "$verdict" in
    Skipped) grep -qE '\*\*\*Skipped|Not Run' <<<"$line" || ok=0 ;;
    Failed)  grep -qE '\*\*\*Failed' <<<"$line" || ok=0 ;;
    Passed)  grep -qE ' Passed ' <<<"$line" || ok=0 ;;
  esac
  if [[ $want_zero == yes ]]; then ((rc == 0)) || ok=0; else ((rc != 0)) || ok=0; fi
  if [[ -n $pattern ]] && ! grep -q -- "$pattern" "$work/Testing/Temporary/LastTest.log"; then ok=0; fi
  if ((ok)); then
    echo "skip_harness: ${shape}: ${verdict}, ctest exit ${rc}: as expected"
  else
    echo "skip_harness: ${shape}: expected ${verdict} (ctest exit $([[ $want_zero == yes ]] && echo 0 || echo non-zero)${pattern:+, output naming '$pattern'}), got: ${line:-no verdict line}, ctest exit ${rc}"
    echo "$out" | sed 's/^/    /'
    failures=$((failures + 1))
  fi
}
check all_skip Skipped yes "graft-test: skipped Shape.SkipsToo: a second planted skip"
check skip_and_fail Failed no
check skip_and_pass Passed yes "graft-test: skipped Shape.Skips: the harness's planted skip"
check none_selected Failed no
if ((${#mpi_args[@]})); then
  check mpi_all_skip Skipped yes "graft-test: skipped Shape.SkipsToo: a second planted skip"
  check mpi_skip_and_fail Failed no
  check mpi_skip_and_pass Passed yes "graft-test: skipped Shape.Skips: the harness's planted skip"
  check mpi_none_selected Failed no
fi
if ((failures)); then
  echo "skip_harness: ${failures} shape(s) reported wrongly"
  exit 1
fi
echo "skip_harness: every shape reported as it should"
