#!/usr/bin/env bash
# Training throughput of the quick-start demo's fine-tune (dim 96, 3 layers, byte vocab, seq 128,
# global batch 16) at np=1 and np=2, REPEATS times each, and at np=1 with the dataset streamed from
# the file (data.load = stream) instead of held in memory; prints one JSON object with the medians,
# the np=2 / np=1 ratio and the stream / memory ratio. usage: bench/train_throughput.sh [graft] (needs runs/demo/stories.h5
# from launcher/demo.sh; REPEATS=3 STEPS=40).
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-40}
DATA=${DATA:-runs/demo/stories.h5}
[[ -f $DATA ]] || { echo "bench: $DATA missing; run launcher/demo.sh first" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
measure() {  # np [extra option] -> tokens/s of the last step (steady state, includes startup amortised out)
  local np=$1 extra=${2:-} i
  for ((i = 0; i < REPEATS; i++)); do
    rm -rf "$tmp/run"
    mpirun -np "$np" --oversubscribe --bind-to none "$GRAFT" train --config configs/demo_finetune.ini \
      --run.dir="$tmp/run" --data.path="$DATA" --train.steps="$STEPS" --eval.every=0 --checkpoint.every=0 $extra >/dev/null
    tail -1 "$tmp/run/metrics.jsonl" | grep -o '"tokens_per_s": [0-9.]*' | cut -d' ' -f2
  done | median
}
np1=$(measure 1)
np2=$(measure 2)
stream=$(measure 1 --data.load=stream)
printf '{"bench": "train_throughput", "model": "demo_finetune", "steps": %s, "repeats": %s, "tokens_per_s_np1": %s, "tokens_per_s_np2": %s, "np2_over_np1": %s, "tokens_per_s_np1_stream": %s, "stream_over_memory": %s}\n' \
  "$STEPS" "$REPEATS" "$np1" "$np2" "$(awk -v a="$np1" -v b="$np2" 'BEGIN {printf "%.3f", b / a}')" \
  "$stream" "$(awk -v a="$np1" -v b="$stream" 'BEGIN {printf "%.3f", b / a}')"
