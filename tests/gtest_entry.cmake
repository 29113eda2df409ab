# How a GoogleTest binary becomes a ctest entry, for tests/CMakeLists.txt and for the skip harness
# (tests/harness/), which checks ctest's verdicts on this very registration.
#
# The binaries' mains (test_main.cc, mpi/mpi_main.cc; test_verdict.h) exit 77 only when every test
# they selected skipped, so an entry reads
#   Passed   when something passed and nothing failed (skipped tests are named in its output:
#            `graft-test: skipped NAME: REASON`, collected by .ci/run),
#   Failed   when any test failed, whatever else skipped, or when the filter selected nothing,
#   Skipped  when everything skipped.
# No SKIP_REGULAR_EXPRESSION: with it, one skipped test hid a failure in the same binary.
set(GRAFT_TEST_SKIP_CODE 77)

# graft_gtest_entry(NAME COMMAND cmd... [LABELS l...] [TIMEOUT s] [ENVIRONMENT v...] [RUN_SERIAL])
function(graft_gtest_entry name)
  cmake_parse_arguments(PARSE_ARGV 1 E "RUN_SERIAL" "TIMEOUT" "COMMAND;LABELS;ENVIRONMENT")
  if(NOT E_COMMAND)
    message(FATAL_ERROR "graft_gtest_entry(${name}): COMMAND is required")
  endif()
  add_test(NAME ${name} COMMAND ${E_COMMAND})
  set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE ${GRAFT_TEST_SKIP_CODE})
  if(E_LABELS)
    set_tests_properties(${name} PROPERTIES LABELS "${E_LABELS}")
  endif()
  if(E_TIMEOUT)
    set_tests_properties(${name} PROPERTIES TIMEOUT ${E_TIMEOUT})
  endif()
  if(E_ENVIRONMENT)
    set_tests_properties(${name} PROPERTIES ENVIRONMENT "${E_ENVIRONMENT}")
  endif()
  if(E_RUN_SERIAL)
    set_tests_properties(${name} PROPERTIES RUN_SERIAL TRUE)
  endif()
endfunction()
