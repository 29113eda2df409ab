#!/usr/bin/env bash
# graft quick start: installs what is missing (Debian packages, idempotent), builds, then
#   launcher/quickstart.sh demo   runs the fine-tuning demo under mpirun -np 2 (default)
#   launcher/quickstart.sh test   runs the whole test suite (ctest)
#   launcher/quickstart.sh build  only installs and builds
# Environment: BUILD_DIR (default build), JOBS (default: cores), GRAFT_SKIP_APT=1 to skip apt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
JOBS=${JOBS:-$(nproc)}
what=${1:-demo}

PACKAGES=(build-essential cmake git pkg-config ccache libtorch-dev libopenblas0-openmp
          libopenmpi-dev openmpi-bin libhdf5-openmpi-dev hdf5-tools libboost-program-options-dev
          libgtest-dev zlib1g-dev python3-torch python3-h5py iproute2 procps
          slurmctld slurmd slurm-client slurm-wlm-basic-plugins munge
          libsentencepiece-dev sentencepiece python3-regex python3-numpy clang libclang-rt-dev)

install_packages() {
  [[ ${GRAFT_SKIP_APT:-0} == 1 ]] && return
  local missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return
  echo "quickstart: installing ${missing[*]}"
  local sudo=""
  [[ $(id -u) != 0 ]] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

build() {
  # ccache must accept the precompiled header (see docs/building.md).
  export CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
  cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
  cmake --build "$BUILD_DIR" -j "$JOBS"
}

install_packages
build
case "$what" in
  build) ;;
  demo) exec bash "$ROOT/launcher/demo.sh" "$BUILD_DIR/launcher/graft" ;;
  test) cd "$BUILD_DIR" && exec ctest --output-on-failure --timeout 900 ;;
  *) echo "usage: $0 [demo|test|build]" >&2; exit 2 ;;
esac
