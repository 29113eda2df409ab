#!/usr/bin/env bash
# Runs every benchmark and prints one JSON object per line (about 5 minutes on 2 cores):
#   allreduce        Communicator vs raw MPI_Allreduce bus bandwidth, 1-256 MiB, np=2, memcpy as the limit
#   ddp_compare      graft vs PyTorch DDP steps/s (np=1, np=2), loss curves, overlap on/off, weak scaling
#   train_throughput the demo fine-tune's tokens/s at np=1 and np=2
#   step_speed       graft vs the DDP peer on the stories260K fine-tune and a GEMM-bound Llama, np=2 and 4,
#                    with graft's step by phase (about 8 more minutes)
# usage: bench/run_all.sh [build-dir]   (builds nothing; run launcher/quickstart.sh build first)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=$(realpath "${1:-build}")
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
[[ -f runs/demo/stories.h5 ]] || bash launcher/demo.sh "$BUILD/launcher/graft" >&2
mpirun -np 2 --bind-to none "$BUILD/bench/allreduce_bench" --min-mb 1 --max-mb 256 --repeats 7
REPEATS=${REPEATS:-3} bash bench/ddp_compare.sh "$BUILD/launcher/graft"
REPEATS=${REPEATS:-3} bash bench/train_throughput.sh "$BUILD/launcher/graft"
REPEATS=${REPEATS:-3} bash bench/step_speed.sh "$BUILD/launcher/graft" | python3 -c "import json, sys; print(json.dumps(json.load(sys.stdin)))"
