#!/usr/bin/env bash
# graft quick start: installs what is missing (Debian packages, idempotent), builds, then
#   launcher/quickstart.sh demo   runs the fine-tuning demo under mpirun -np 2 (default)
#   launcher/quickstart.sh test   runs the whole test suite (ctest)
#   launcher/quickstart.sh build  only installs and builds
# It prints one line per phase; apt's, cmake's and the compiler's full output go to
# BUILD_DIR/quickstart.log, whose last lines are printed when a phase fails.
# Environment: BUILD_DIR (default build), JOBS (default: cores), GRAFT_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
JOBS=${JOBS:-$(nproc)}
what=${1:-demo}
case "$what" in
  build | demo | test) ;;
  *) echo "usage: $0 [demo|test|build]" >&2; exit 2 ;;
esac
mkdir -p "$BUILD_DIR"
LOG=$BUILD_DIR/quickstart.log
: >"$LOG"

say() { echo "quickstart: $*"; }
fail() {
  echo "quickstart: $1 failed; the last lines of $LOG:" >&2
  tail -n 30 "$LOG" >&2
  exit 1
}

PACKAGES=(build-essential cmake git pkg-config ccache libtorch-dev libopenblas0-openmp
          libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools libboost-program-options-dev libcairo2-dev fonts-dejavu-core
          libgtest-dev zlib1g-dev python3-torch python3-h5py iproute2 procps
          slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge
          libsentencepiece-dev sentencepiece python3-regex python3-numpy clang libclang-rt-dev)

# The two toolchains graft is tested on (docs/building.md): Debian 12 (LibTorch 1.13, Open MPI 4.1,
# HDF5 1.10, GCC 12) and Debian 13 (LibTorch 2.6, Open MPI 5, HDF5 1.14, GCC 14). The package
# names above are the same on both.
release() {
  local id="" version="" codename=""
  if [[ -r /etc/os-release ]]; then
    id=$(. /etc/os-release && echo "${ID:-}") version=$(. /etc/os-release && echo "${VERSION_ID:-}")
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  fi
  case "$id:$version" in
    debian:12 | debian:13) say "found Debian $version ($codename): a supported release" ;;
    debian:*) say "found Debian ${version:-testing/unstable} (${codename:-unknown}): not one of the tested releases (12, 13); trying the same packages" ;;
    *) say "found ${id:-an unknown system} ${version}: graft's quick start is made for Debian 12 and 13; trying anyway" ;;
  esac
}

install_packages() {
  [[ ${GRAFT_SKIP_APT:-0} == 1 ]] && return
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return
  say "installing ${#missing[@]} Debian package(s): ${missing[*]}"
  local sudo=""
  [[ $(id -u) != 0 ]] && sudo=sudo
  $sudo apt-get update >>"$LOG" 2>&1 || fail "apt-get update"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1 ||
    fail "installing the packages"
}

# Copies the build's output into the log and prints its progress every 10%.
progress() {
  local last=-1 line
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$LOG"
    if [[ $line =~ ^\[\ *([0-9]+)%\] ]] && ((BASH_REMATCH[1] / 10 != last)); then
      last=$((BASH_REMATCH[1] / 10))
      say "building ${BASH_REMATCH[1]}%"
    fi
  done
}

build() {
  # ccache must accept the precompiled header (see docs/building.md).
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  say "configuring (cmake, log: $LOG)"
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >>"$LOG" 2>&1 || fail "configuring"
  say "building with $JOBS job(s)"
  local status
  set +e
  cmake --build "$BUILD_DIR" -j "$JOBS" 2>&1 | progress
  status=${PIPESTATUS[0]}
  set -e
  ((status == 0)) || fail "building"
  say "built $BUILD_DIR/launcher/graft"
}

release
install_packages
build
case "$what" in
  build) ;;
  demo) say "running the demo"; exec bash "$ROOT/launcher/demo.sh" "$BUILD_DIR/launcher/graft" ;;
  test) say "running the test suite (ctest)"; cd "$BUILD_DIR" && exec ctest --output-on-failure --timeout 900 ;;
esac
