#!/usr/bin/env bash
# Resume verification: how long a resume takes to check the checkpoint it picks against its
# manifest, every rank reading its share of the rows (Note [verification shared by the ranks] in
# src/train/checkpointing.cc), against one process reading every tensor whole (what resume did
# before, rank 0 alone; `graft status` still does it that way: its time with verification minus
# its time without, one checkpoint here). A random-init
# Llama of ~29M parameters (dim 768, 4 layers, vocab 512: a checkpoint of ~340 MB with the AdamW
# moments) trains one step at np 1 and checkpoints; then REPEATS times each (median): `graft
# status RUN --json` (serial) and a resume at NP ranks (the log line "resume: ... verified (...,
# T s)"), and the same resume at one rank. All read a page-cache-hot file. Prints one JSON object.
#   usage: bench/verify_resume.sh [graft]     (REPEATS=3 NP=4)
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
REPEATS=${REPEATS:-3}
NP=${NP:-4}
DATA_DIR=$(realpath ../shared/data)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$GRAFT" prepare --tokenizer "$DATA_DIR/llama2c/tok512.bin" --input "$DATA_DIR/datasets/tinystories_sample/tinystories_sample.txt" \
  --out "$tmp/stories.h5" --val-fraction 0.05 >/dev/null
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
train() {  # np steps -> output
  mpirun -np "$1" --oversubscribe --bind-to none "$GRAFT" train --run.dir="$tmp/run" --data.path="$tmp/stories.h5" \
    --model.dim=768 --model.hidden_dim=2048 --model.n_layers=4 --model.n_heads=12 --model.n_kv_heads=12 \
    --model.max_seq_len=16 --train.seq_len=16 --train.batch_size=4 --train.micro_batch=1 --train.steps="$2" \
    --train.threads=1 --eval.every=0 --eval.batches=1 --checkpoint.every=1 --checkpoint.keep_last=0 2>&1
}
train 1 1 >/dev/null
checkpoint=$(ls "$tmp"/run/checkpoints/step-*.h5)
bytes=$(stat -c %s "$checkpoint")
# Serial: graft status with verification minus graft status without (the process's start-up).
timed() { local t0; t0=$(date +%s.%N); "$@" >/dev/null; awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f\n", b - a}'; }
serial_s=$(for ((i = 0; i < REPEATS; i++)); do
  with=$(timed "$GRAFT" status "$tmp/run" --json)
  without=$(timed "$GRAFT" status "$tmp/run" --json --no-verify)
  awk -v a="$with" -v b="$without" 'BEGIN {printf "%.3f\n", a - b}'
done | median)
# The resume at NP ranks and at one: steps = 1 again, so it verifies, reads and ends without
# training. One rank reading every row the same way tells what sharing the rows gains, apart from
# how each rank reads them.
resume_s() {  # np -> median seconds of the verification, from the log line
  for ((i = 0; i < REPEATS; i++)); do
    train "$1" 1 | grep -o 'resume: .* verified ([0-9]* tensors, each rank its rows, [0-9.]* s)' | grep -o '[0-9.]* s)' | tr -d ' s)'
  done | median
}
parallel_s=$(resume_s "$NP")
one_rank_s=$(resume_s 1)
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
printf '{"bench": "verify_resume", "checkpoint_bytes": %s, "np": %s, "repeats": %s, "serial_whole_tensors_s": %s, "one_rank_its_rows_s": %s, "shared_by_ranks_s": %s, "shared_over_serial": %s, "shared_over_one_rank": %s}\n' \
  "$bytes" "$NP" "$REPEATS" "$serial_s" "$one_rank_s" "$parallel_s" "$(ratio "$parallel_s" "$serial_s")" "$(ratio "$parallel_s" "$one_rank_s")"
