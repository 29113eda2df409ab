#!/usr/bin/env bash
# train.precision = fp32 vs bf16 on this machine's CPU, graft next to its PyTorch peer
# (bench/llama_peer.py: the same Llama shape and batch, autocast bf16 with float32 masters), one
# rank with all cores (and two ranks summing gradients in fp32 vs bf16): tokens/s, medians of REPEATS runs, each over the steps after the first third
# (start-up left out). Prints one JSON object with the medians and the ratios bf16/fp32 (per
# program) and graft/peer (per precision). usage: bench/precision.sh [graft] (needs
# runs/demo/stories.h5 from launcher/demo.sh; REPEATS=3 STEPS=12; SHAPE as below).
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
PYTHON=${PYTHON:-/usr/bin/python3}
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-12}
DATA=${DATA:-runs/demo/stories.h5}
DIM=${DIM:-256} LAYERS=${LAYERS:-4} HEADS=${HEADS:-8} HIDDEN=${HIDDEN:-688} SEQ=${SEQ:-256} MICRO=${MICRO:-4}
[[ -f $DATA ]] || { echo "bench: $DATA missing; run launcher/demo.sh first" >&2; exit 2; }
THREADS=$(nproc)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
later_rate() {  # metrics.jsonl -> tokens/s over the steps after the first third
  "$PYTHON" - "$1" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l and '"tokens"' in l]
k = len(rows) // 3
print((rows[-1]['tokens'] - rows[k]['tokens']) / (rows[-1]['elapsed_s'] - rows[k]['elapsed_s']))
EOF
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
graft() {  # precision [ranks [extra]] -> median tokens/s
  local i np=${2:-1}
  for ((i = 0; i < REPEATS; i++)); do
    rm -rf "$tmp/run"
    mpirun -np "$np" --oversubscribe --bind-to none "$GRAFT" train --run.dir="$tmp/run" --data.path="$DATA" --model.dim="$DIM" --model.n_layers="$LAYERS" \
      --model.n_heads="$HEADS" --model.n_kv_heads="$HEADS" --model.hidden_dim="$HIDDEN" --model.max_seq_len="$SEQ" \
      --model.tied=false --train.seq_len="$SEQ" --train.micro_batch="$MICRO" --train.batch_size=$((2 * MICRO)) \
      --train.steps="$STEPS" --train.threads=$((THREADS / np > 0 ? THREADS / np : 1)) --eval.every=0 --checkpoint.every=0 \
      --train.tensorboard=false --train.precision="$1" ${3:-} >/dev/null
    later_rate "$tmp/run/metrics.jsonl"
  done | median
}
peer() {  # precision -> median tokens/s
  local i vocab
  vocab=$("$PYTHON" -c "import h5py,sys; print(int(h5py.File(sys.argv[1],'r').attrs['vocab_size']))" "$DATA" 2>/dev/null || echo 260)
  for ((i = 0; i < REPEATS; i++)); do
    "$PYTHON" bench/llama_peer.py --dim "$DIM" --layers "$LAYERS" --heads "$HEADS" --kv-heads "$HEADS" --hidden "$HIDDEN" \
      --vocab "$vocab" --seq-len "$SEQ" --micro-batch "$MICRO" --accumulation 2 --steps $((STEPS * 2 / 3)) \
      --warmup $((STEPS / 3)) --device cpu --precision "$1" | grep -o '"tokens_per_s": [0-9.]*' | cut -d' ' -f2
  done | median
}
g32=$(graft fp32); g16=$(graft bf16); p32=$(peer fp32); p16=$(peer bf16)
# Two ranks, bf16 products: gradients summed in float32 vs in bfloat16 (dist.reduce_dtype).
r32=$(graft bf16 2 --dist.reduce_dtype=fp32); r16=$(graft bf16 2 --dist.reduce_dtype=bf16)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
printf '{"bench": "precision", "shape": "dim %s, %s layers, %s heads, ffn %s, seq %s, micro %s x 2", "threads": %s, "repeats": %s, "graft_fp32": %.0f, "graft_bf16": %.0f, "peer_fp32": %.0f, "peer_bf16": %.0f, "graft_bf16_over_fp32": %s, "peer_bf16_over_fp32": %s, "graft_over_peer_fp32": %s, "graft_over_peer_bf16": %s, "np2_reduce_fp32": %.0f, "np2_reduce_bf16": %.0f, "np2_reduce_bf16_over_fp32": %s}\n' \
  "$DIM" "$LAYERS" "$HEADS" "$HIDDEN" "$SEQ" "$MICRO" "$THREADS" "$REPEATS" "$g32" "$g16" "$p32" "$p16" \
  "$(ratio "$g16" "$g32")" "$(ratio "$p16" "$p32")" "$(ratio "$g32" "$p32")" "$(ratio "$g16" "$p16")" \
  "$r32" "$r16" "$(ratio "$r16" "$r32")"
