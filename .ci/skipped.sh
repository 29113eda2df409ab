#!/usr/bin/env bash
# Lists what a ctest run skipped: whole entries ctest reported as skipped (from its console log),
# and every skipped gtest test with its reason, including those inside entries that passed (the
# `graft-test: skipped NAME: REASON` lines of tests/test_verdict.cc, from ctest's LastTest.log,
# which keeps the output of passed entries too).
#   .ci/skipped.sh CONSOLE_LOG LAST_TEST_LOG
console=$1 last=$2
entries=$(grep -E 'Test +#[0-9]+: .*(\*\*\*Skipped|Not Run)' "$console" 2>/dev/null | sed -E 's/^ *[0-9]+\/[0-9]+ Test +#[0-9]+: ([^ ]+).*/\1/' | sort -u)
tests=$(grep -hE '^graft-test: skipped ' "$last" 2>/dev/null | sed 's/^graft-test: skipped //' | sort -u)
echo "CI: entries ctest reported as skipped: $( [[ -n $entries ]] && echo "$entries" | wc -l || echo 0 )"
[[ -n $entries ]] && echo "$entries" | sed 's/^/  /'
echo "CI: tests skipped (inside any entry), with their reasons: $( [[ -n $tests ]] && echo "$tests" | wc -l || echo 0 )"
[[ -n $tests ]] && echo "$tests" | sed 's/^/  /'
[[ -f $last ]] || echo "CI: (no $last: ctest did not run)"
exit 0
