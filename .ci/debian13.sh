#!/usr/bin/env bash
# graft on Debian 13 (trixie: LibTorch 2.6, Open MPI 5, HDF5 1.14, GCC 14), in a root that this
# script makes fresh with debootstrap from Debian's packages in every run, so that the quick
# start's package list is tested on a bare system each time (issue 28).
#   .ci/debian13.sh ci     what .ci/run runs: the README's second command unchanged (the whole
#                          suite, quickstart.sh test), then its first (the demo)
#   .ci/debian13.sh full   the README's second command alone
#   .ci/debian13.sh quick  the README's set-up, then only the test groups that exercise LibTorch
#                          and Open MPI most (QUICK_TESTS below), then the demo
#   .ci/debian13.sh demo   the README's first command unchanged: the demo
#   .ci/debian13.sh bench  the demo, then bench/torch2_compare.sh (graft vs PyTorch 2.6 eager and
#                          torch.compile on the CPU; its JSON line is printed)
# In every mode the LibTorch 2.x tests of tests/unit/torch_compat_test.cc must run and pass there
# (they skip on 1.13), and the demo's three losses go to $GRAFT_D13_DEMO_OUT when that is set.
# Needs root (debootstrap, chroot, mounts) and Debian's mirror. Kept between runs, outside the clone:
# downloaded packages and the compiler cache under GRAFT_CI_CACHE (default /var/cache/graft-ci/debian13).
# The root itself is made under a fresh directory in /var/tmp and removed at the end; its mounts
# live in a mount namespace of their own, so they end with the script even when it is killed.
set -euo pipefail
mode=${1:-ci}
case "$mode" in
  ci | full | quick | demo | bench) ;;
  *) echo "usage: $0 [ci|full|quick|demo|bench]" >&2; exit 2 ;;
esac
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "$REPO/.." && pwd)/shared
CACHE=${GRAFT_CI_CACHE:-/var/cache/graft-ci/debian13}
MIRROR=${GRAFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# The entries that exercise Debian 13's libraries most: LibTorch (unit: the model, optimizer,
# formats; Training: exact resume; Scale: deep models' checkpoints), Open MPI (the mpi groups;
# Sharding: every dist.shard mode, MPI-IO and its fallback), HDF5 (Formats, Inference, Data, Errors).
QUICK_TESTS='^(unit|layers|mpi_communicator_np2|mpi_timeout_np2|mpi_communicator_np4|mpi_timeout_np4|e2e_Inference|e2e_Formats|e2e_Data|e2e_Training|e2e_Sharding|e2e_Scale|e2e_Errors)$'

say() { echo "debian13: $*"; }
die() { echo "debian13: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "must run as root (debootstrap, chroot and mounts)"

# Again, in a mount namespace of our own: unshare execs bash in this same process, so the marker
# holds this PID (a marker inherited from another run of this script holds another).
if [[ ${GRAFT_D13_NAMESPACE:-} != "$$" ]]; then
  command -v unshare >/dev/null || die "unshare (util-linux) is missing"
  GRAFT_D13_NAMESPACE=$$ exec unshare --mount --propagation private bash "$0" "$@"
fi

start=$SECONDS
phase_start=$SECONDS
phase() { say "$1 ($((SECONDS - phase_start)) s)"; phase_start=$SECONDS; }

if ! command -v debootstrap >/dev/null; then
  say "installing debootstrap on this machine"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap >/dev/null ||
    die "cannot install debootstrap"
fi
mkdir -p "$CACHE/debootstrap" "$CACHE/apt/partial" "$CACHE/ccache"
WORK=$(mktemp -d /var/tmp/graft-debian13.XXXXXX)
ROOT=$WORK/root
LOG=$WORK/debootstrap.log
cleanup() {
  local status=$?
  # Everything mounted under the root goes first (the data of ../shared is bound there): only an
  # empty root is deleted, and one that still has a mount is left, and said.
  if mountpoint -q "$ROOT" 2>/dev/null; then umount -R "$ROOT" 2>/dev/null || true; fi
  grep " $ROOT/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done || true
  if grep -q " $ROOT/" /proc/self/mountinfo; then
    echo "debian13: $ROOT still has mounts; left in place" >&2
  else
    rm -rf --one-file-system "$WORK"
  fi
  exit "$status"
}
trap cleanup EXIT

say "making a Debian 13 root with debootstrap in $ROOT (mirror $MIRROR; packages cached in $CACHE)"
debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" trixie "$ROOT" "$MIRROR" >"$LOG" 2>&1 ||
  { tail -n 20 "$LOG" >&2; die "debootstrap failed (log above)"; }
grep -q '^VERSION_CODENAME=trixie' "$ROOT/etc/os-release" || die "the new root is not trixie: $(grep PRETTY "$ROOT/etc/os-release")"
phase "root made: $(grep PRETTY_NAME "$ROOT/etc/os-release" | cut -d= -f2)"

# The root is a mount point of its own, as / is on a machine ("ip netns exec" runs
# "mount --make-rslave /", which fails on a plain directory); everything else is mounted below it.
mount --bind "$ROOT" "$ROOT"
for m in proc sys dev; do mount --rbind "/$m" "$ROOT/$m"; done
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mkdir -p "$ROOT/var/cache/apt/archives" "$ROOT/ccache" "$ROOT/src/shared"
mount --bind "$CACHE/apt" "$ROOT/var/cache/apt/archives"
mount --bind "$CACHE/ccache" "$ROOT/ccache"
# Test data read-only: nothing in the root can change ../shared.
[[ -d $SHARED/data ]] || die "$SHARED/data is missing (the tests read ../shared/data beside the project)"
mount --bind "$SHARED" "$ROOT/src/shared"
mount -o remount,bind,ro "$ROOT/src/shared"
# The project as a fresh clone has it: tracked files and untracked ones git does not ignore.
mkdir -p "$ROOT/src/main"
(cd "$REPO" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done |
  tar --null -T - -cf -) | tar -xf - -C "$ROOT/src/main"

# A login as a new user has it: no variables from this machine, root's home, the cache's folder.
inside() {
  chroot "$ROOT" /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM=dumb CCACHE_DIR=/ccache \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin bash -c "cd /src/main && $1"
}
inside "bash launcher/quickstart.sh build" || die "the quick start's build failed on Debian 13"
phase "README set-up done: packages installed and graft built ($(inside 'g++ --version | head -1'))"
inside "dpkg-query -W -f '\${Package} \${Version}\n' libtorch-dev libopenmpi-dev libhdf5-openmpi-dev g++ cmake python3-torch" |
  sed 's/^/debian13:   /'

# The LibTorch 2.x branches of torch_compat.h: each must run here, not skip.
compat=$(inside "build/tests/unit_tests --gtest_filter='Compat.*' 2>&1") || { echo "$compat"; die "the LibTorch 2.x tests failed"; }
echo "$compat" | grep -E '^\[ +(OK|SKIPPED|FAILED) +\]' | sed 's/^/debian13:   /' || true
if echo "$compat" | grep -q 'SKIPPED' || ! echo "$compat" | grep -q 'PASSED  \] 2 tests'; then
  die "the LibTorch 2.x tests did not all run and pass on Debian 13"
fi

# The CUDA-only code (#ifdef GRAFT_WITH_CUDA, the NCCL backend) against LibTorch 2.6's headers: it
# compiles and links with this machine's CUDA toolkit (read-only in the root), as the GPU machine
# builds it against the wheel's LibTorch 2.x; it cannot run here (no CUDA LibTorch, no GPU).
if [[ $mode != demo && $mode != bench ]]; then
  if [[ -f /usr/local/cuda/include/cuda_runtime.h ]]; then
    mkdir -p "$ROOT/usr/local/cuda"
    mount --bind /usr/local/cuda "$ROOT/usr/local/cuda"
    mount -o remount,bind,ro "$ROOT/usr/local/cuda"
    inside "cmake -S . -B build-cuda -DGRAFT_WITH_CUDA=ON -DGRAFT_WITH_NCCL=ON >build-cuda.log 2>&1 &&
            cmake --build build-cuda -j \$(nproc) --target graft unit_tests >>build-cuda.log 2>&1 &&
            build-cuda/tests/unit_tests --gtest_brief=1 >>build-cuda.log 2>&1" ||
      { tail -n 30 "$ROOT/src/main/build-cuda.log" >&2; die "the CUDA build (GRAFT_WITH_CUDA, NCCL) failed against LibTorch 2.6"; }
    grep -E "NCCL backend|warning:" "$ROOT/src/main/build-cuda.log" | sed 's/^/debian13:   /' || true
    umount "$ROOT/usr/local/cuda"  # the README's build stays a CPU build, as on a new user's machine
    phase "the CUDA-only code and the NCCL backend compile against LibTorch 2.6 (graft, unit_tests; its unit tests pass on the CPU)"
  else
    say "no CUDA toolkit in /usr/local/cuda on this machine: the CUDA-only code was not compiled against LibTorch 2.6"
  fi
fi

# The tests' console goes to a log in the root; every skipped entry and test is listed with its
# reason (.ci/skipped.sh), and the entries that must run in the root are checked to have passed,
# not skipped (the gpu entry alone skips: no GPU).
tests_in_root() {  # ctest arguments for the selection
  local status=0
  inside "cd build && ctest --output-on-failure --timeout 900 $1 2>&1 | tee ctest.log; exit \${PIPESTATUS[0]}" || status=$?
  bash "$REPO/.ci/skipped.sh" "$ROOT/src/main/build/ctest.log" "$ROOT/src/main/build/Testing/Temporary/LastTest.log" |
    sed 's/^CI:/debian13:/'
  ((status == 0)) || die "tests failed on Debian 13"
  local selected passed
  selected=$(inside "cd build && ctest -N $1 -E '^gpu\$'" | grep -cE '^ +Test +#')
  passed=$(grep -cE 'Test +#[0-9]+: [A-Za-z0-9_]+ \.* +Passed' "$ROOT/src/main/build/ctest.log" || true)
  ((selected > 0 && passed == selected)) || die "$passed of the $selected test entries that must run here passed (the rest skipped)"
  # Inside the entries that passed too: only the tests that need a CUDA device may skip here.
  local unexpected
  unexpected=$(grep -hE '^graft-test: skipped ' "$ROOT/src/main/build/Testing/Temporary/LastTest.log" | grep -v 'CUDA' || true)
  [[ -z $unexpected ]] || die "tests skipped on Debian 13 that must run there: $(echo "$unexpected" | tr '\n' ';')"
  phase "the Debian 13 tests passed: $passed entries, no test skipped but those that need CUDA"
}
case "$mode" in
  # The README's second command as quickstart.sh test runs it: its set-up (again here: nothing
  # left to install or build), then ctest with the same options, its console kept.
  ci | full) inside "bash launcher/quickstart.sh build >/dev/null" || die "the quick start failed on Debian 13"
             tests_in_root "" ;;
  quick) tests_in_root "-R '$QUICK_TESTS'" ;;
  demo | bench) ;;
esac
if [[ $mode != full ]]; then
  demo=$(inside "bash launcher/quickstart.sh demo 2>&1") || { echo "$demo" | tail -n 30; die "the demo failed on Debian 13"; }
  echo "$demo" | sed -n '/^== result/,/demo time/p' | sed 's/^/debian13: /'
  phase "the demo ran"
  [[ -n ${GRAFT_D13_DEMO_OUT:-} ]] && echo "$demo" | sed -n '/^== result/,/demo time/p' >"$GRAFT_D13_DEMO_OUT"
fi
if [[ $mode == bench ]]; then
  # torch.compile's inductor builds C++ kernels: it needs setuptools and Python's headers (not
  # part of the quick start, which the bench is not).
  inside "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-setuptools python3-dev >/dev/null 2>&1" ||
    die "cannot install python3-setuptools and python3-dev for torch.compile"
  inside "bash bench/torch2_compare.sh" || die "bench/torch2_compare.sh failed on Debian 13"
  phase "bench/torch2_compare.sh ran"
fi
say "done in $((SECONDS - start)) s"
