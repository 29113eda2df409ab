#!/usr/bin/env bash
# ctest entry e2e_suites_registered: every test suite compiled into the e2e binary has a ctest
# entry of its own (tests/CMakeLists.txt runs the e2e binary once per suite, by --gtest_filter). A
# suite added to a source file but not to that list would never run while the suite stays green;
# this fails naming it.
#   check_suites.sh E2E_TESTS_BINARY REGISTERED_SUITE...
set -uo pipefail
binary=$1
shift
registered=" $* "
listed=$("$binary" --gtest_list_tests | grep -v '^ ' | sed 's/\.$//' | sort -u)
if [[ -z $listed ]]; then
  echo "e2e_suites_registered: $binary lists no test suite"
  exit 1
fi
missing=()
for suite in $listed; do
  [[ $registered == *" $suite "* ]] || missing+=("$suite")
done
if ((${#missing[@]})); then
  echo "e2e_suites_registered: suites with no ctest entry (add them to GRAFT_E2E_SUITES in tests/CMakeLists.txt): ${missing[*]}"
  exit 1
fi
echo "e2e_suites_registered: all $(wc -w <<<"$listed") suites of $(basename "$binary") have a ctest entry: $(tr '\n' ' ' <<<"$listed")"
