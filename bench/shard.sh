#!/usr/bin/env bash
# dist.shard: tokens/s and peak resident set per rank for each mode (none, optimizer = ZeRO-1,
# gradients = ZeRO-2, parameters = ZeRO-3) at np = 2 and 4, on a random-init Llama of ~32M parameters (dim 576, 8 layers)
# and on stories260K, TinyStories sample, seq 64, global batch 4 x np (accumulation 1); plus the
# checkpoint write time against dd and against write(2) from memory of the same bytes (with fsync). Medians of REPEATS runs (default 3),
# ratios from this one run; and the training time each checkpoint costs, synchronous and
# checkpoint.async; and resume's verification shared by 4 ranks against one process reading the
# checkpoint whole (bench/verify_resume.sh). Prints one JSON object.
# "parameters+recompute" is ZeRO-3 with train.recompute = true (activation checkpointing);
# "parameters+prefetch" is ZeRO-3 with dist.prefetch = true (the next unit's gather started early);
# "<mode>+per_rank" writes checkpoints as one part file per rank (checkpoint.files = per_rank).
# "<mode>+whole" accumulates micro-steps in whole gradients (dist.accumulate = whole) instead of the
# ranks' rows (the default; Note [accumulating in rows]).
# Issue 26's memory figures: a random-init Llama of 155M parameters (dim 1024, hidden 2816, 12
# layers, 16 heads, vocab 512) at np 4, micro_batch 1, accumulation 1 and 4:
#   TRAIN_ONLY=1 MODELS=llama155m NPS=4 MICRO=1 ACCUMS="1 4" STEPS=2 REPEATS=1 \
#     MODES="none gradients gradients+whole parameters parameters+whole parameters+recompute" bench/shard.sh
#   usage: bench/shard.sh [graft]     (REPEATS=3 STEPS=4 NPS="2 4" MODELS="llama32m stories260k"
#                                      MODES="none optimizer gradients parameters parameters+recompute
#                                             parameters+prefetch" MICRO=4 ACCUMS="1" TRAIN_ONLY=0)
#   Runs are keyed MODEL_NP_MODE, with _accK appended when accumulation K > 1; TRAIN_ONLY=1 prints
#   the runs and ratios only (no checkpoint timings).
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-4}
NPS=${NPS:-2 4}
MODELS=${MODELS:-llama32m stories260k}
MODES=${MODES:-none optimizer gradients parameters parameters+recompute parameters+prefetch}
MICRO=${MICRO:-4}
ACCUMS=${ACCUMS:-1}
TRAIN_ONLY=${TRAIN_ONLY:-0}
DATA_DIR=$(realpath ../shared/data)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$GRAFT" prepare --tokenizer "$DATA_DIR/llama2c/tok512.bin" --input "$DATA_DIR/datasets/tinystories_sample/tinystories_sample.txt" \
  --out "$tmp/stories.h5" --val-fraction 0.05 >/dev/null
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
declare -A MODEL=(
  [llama32m]="--model.dim=576 --model.hidden_dim=1536 --model.n_layers=8 --model.n_heads=8 --model.n_kv_heads=8 --model.max_seq_len=64"
  [llama155m]="--model.dim=1024 --model.hidden_dim=2816 --model.n_layers=12 --model.n_heads=16 --model.n_kv_heads=16 --model.max_seq_len=64"
  [stories260k]="--model.path=$DATA_DIR/llama2c/stories260K.bin")
run_once() {  # model np mode accumulation -> "tokens_per_s peak_rss_mib checkpoint_s checkpoint_bytes"
  local model=$1 np=$2 mode=$3 accum=${4:-1}
  rm -rf "$tmp/run"
  local out
  out=$(mpirun -np "$np" --oversubscribe --bind-to none "$GRAFT" train --run.dir="$tmp/run" --data.path="$tmp/stories.h5" \
    ${MODEL[$model]} --train.seq_len=64 --train.batch_size=$((MICRO * np * accum)) --train.micro_batch="$MICRO" --train.steps="$STEPS" \
    --train.threads=1 --eval.every=0 --eval.batches=1 --checkpoint.every=0 --dist.shard="${mode%%+*}" \
    --dist.accumulate=$([[ $mode == *+whole ]] && echo whole || echo rows) \
    --train.recompute=$([[ $mode == *+recompute ]] && echo true || echo false) \
    --dist.prefetch=$([[ $mode == *+prefetch ]] && echo true || echo auto) \
    --checkpoint.files=$([[ $mode == *+per_rank ]] && echo per_rank || echo one) 2>&1)
  local tps rss ckpt bytes
  tps=$(tail -1 "$tmp/run/metrics.jsonl" | grep -o '"tokens_per_s": [0-9.]*' | cut -d' ' -f2)
  rss=$(grep -o 'peak resident set [0-9.]* MiB per rank (largest)' <<<"$out" | grep -o '[0-9.]*' | head -1)
  expected=$(grep -o 'expected [0-9.]* MiB ([0-9.]*x)' <<<"$out" | grep -o '[0-9.]*' | head -1)
  echo "${expected:-null}" > "$tmp/expected"
  ckpt=$(grep -o 'checkpoint: [^ ]* ([0-9.]* s' <<<"$out" | grep -o '([0-9.]* s' | tr -d '(s ')
  bytes=$(du -cb "$tmp/run/checkpoints/"*.h5 | tail -1 | cut -f1)
  echo "$tps $rss $ckpt $bytes"
}
rows=() summary=()
big_bytes=0 big_ckpt=0  # the largest checkpoint written (the 32M model, np = 4, gradients) and its time
for model in $MODELS; do
  for np in $NPS; do
    for accum in $ACCUMS; do
      acc=$([[ $accum == 1 ]] || echo "_acc$accum")
      for mode in $MODES; do
        results=$(for ((i = 0; i < REPEATS; i++)); do run_once "$model" "$np" "$mode" "$accum"; done)
        tps=$(cut -d' ' -f1 <<<"$results" | median); rss=$(cut -d' ' -f2 <<<"$results" | median)
        ckpt=$(cut -d' ' -f3 <<<"$results" | median); bytes=$(cut -d' ' -f4 <<<"$results" | median)
        key="${model}_${np}_${mode/+/_}${acc}"
        eval "tps_${key}=$tps rss_${key}=$rss"
        if ((bytes >= big_bytes)); then big_bytes=$bytes big_ckpt=$ckpt; fi
        expected=$(cat "$tmp/expected")  # of the last repeat: the formulas give the same each time
        rows+=("{\"model\": \"$model\", \"np\": $np, \"accumulation\": $accum, \"shard\": \"$mode\", \"tokens_per_s\": $tps, \"peak_rss_mib\": $rss, \"expected_mib\": $expected, \"checkpoint_s\": $ckpt, \"checkpoint_bytes\": $bytes}")
        echo "shard: $key: $tps tokens/s, peak RSS $rss MiB per rank" >&2
      done
      for mode in $MODES; do
        [[ $mode == none || " $MODES " != *" none "* ]] && continue  # ratios need none in MODES
        t="tps_${model}_${np}_${mode/+/_}${acc}" r="rss_${model}_${np}_${mode/+/_}${acc}" t0="tps_${model}_${np}_none${acc}" r0="rss_${model}_${np}_none${acc}"
        summary+=("\"${model}_np${np}${acc}_${mode}_over_none\": {\"tokens_per_s\": $(awk -v a="${!t}" -v b="${!t0}" 'BEGIN {printf "%.3f", a / b}'), \"peak_rss\": $(awk -v a="${!r}" -v b="${!r0}" 'BEGIN {printf "%.3f", a / b}')}")
      done
    done
  done
done
if [[ $TRAIN_ONLY == 1 ]]; then
  IFS=,; printf '{"bench": "shard", "steps": %s, "repeats": %s, "micro_batch": %s, "runs": [%s], "ratios": {%s}}\n' \
    "$STEPS" "$REPEATS" "$MICRO" "${rows[*]}" "${summary[*]}"
  exit 0
fi
# Training time lost to checkpoints: the first model at the last np, dist.shard = none, a checkpoint
# after every step, synchronous and checkpoint.async, against no checkpoint but the last; the
# elapsed time at the last step's metrics line (before its checkpoint), per checkpoint, median.
read -r lost_model _ <<<"$MODELS"; lost_np=${NPS##* }
run_elapsed() {  # extra options -> elapsed_s at the last step
  rm -rf "$tmp/run"
  mpirun -np "$lost_np" --oversubscribe --bind-to none "$GRAFT" train --run.dir="$tmp/run" --data.path="$tmp/stories.h5" \
    ${MODEL[$lost_model]} --train.seq_len=64 --train.batch_size=$((4 * lost_np)) --train.micro_batch=4 --train.steps="$STEPS" \
    --train.threads=1 --eval.every=0 --eval.batches=1 "$@" >/dev/null 2>&1
  tail -1 "$tmp/run/metrics.jsonl" | grep -o '"elapsed_s": [0-9.]*' | cut -d' ' -f2
}
base_s=$(for ((i = 0; i < REPEATS; i++)); do run_elapsed --checkpoint.every=0; done | median)
sync_s=$(for ((i = 0; i < REPEATS; i++)); do run_elapsed --checkpoint.every=1 --checkpoint.async=false; done | median)
async_s=$(for ((i = 0; i < REPEATS; i++)); do run_elapsed --checkpoint.every=1 --checkpoint.async=true; done | median)
lost() { awk -v a="$1" -v b="$base_s" -v n="$((STEPS - 1))" 'BEGIN {printf "%.3f", (a - b) / n}'; }
lost_json="{\"model\": \"$lost_model\", \"np\": $lost_np, \"seconds_lost_per_checkpoint\": {\"sync\": $(lost "$sync_s"), \"async\": $(lost "$async_s")}}"
# Baselines for the largest checkpoint's bytes, each a median of REPEATS, against graft's checkpoint
# time (which also checksums, reads the checkpoint back to verify it, and prunes old ones):
#  - dd from /dev/zero into a new file with fsync (a cache-hot 1 MiB source buffer);
#  - write(2) of a buffer of that size from memory into a new file with fsync, as a checkpoint's
#    tensors are written. On this 2-core VM the second is often several times slower than the
#    first: copying from a large buffer into fresh page-cache pages is what a checkpoint pays too.
# New files each time, kept until all repeats are done, as a run keeps its last checkpoints.
dd_s=$(for ((i = 0; i < REPEATS; i++)); do
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$tmp/dd$i.bin" bs=1M count=$(((big_bytes >> 20) + 1)) conv=fsync 2>/dev/null
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f\n", b - a}'
done | median)
rm -f "$tmp"/dd*.bin
memwrite_s=$(python3 - "$tmp" "$big_bytes" "$REPEATS" <<'PY' | median
import os, sys, time
folder, size, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = memoryview(os.urandom(size))
for i in range(repeats):
    t = time.time()
    fd = os.open(f"{folder}/mem{i}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    while done < size:
        done += os.write(fd, data[done:done + (256 << 20)])
    os.fsync(fd)
    os.close(fd)
    print(f"{time.time() - t:.3f}")
PY
)
rm -f "$tmp"/mem*.bin
# Resume verification of a ~340 MB checkpoint at 4 ranks, each its rows, against one process
# reading it whole (bench/verify_resume.sh).
verify_json=$(REPEATS="$REPEATS" NP=4 bash bench/verify_resume.sh "$GRAFT")
IFS=,; printf '{"bench": "shard", "steps": %s, "repeats": %s, "runs": [%s], "ratios": {%s}, "checkpoint": {"bytes": %s, "graft_seconds": %s, "dd_seconds": %s, "graft_over_dd_throughput": %s, "write_from_memory_seconds": %s, "graft_over_write_from_memory_throughput": %s}, "training_time_lost": %s, "resume_verification": %s}\n' \
  "$STEPS" "$REPEATS" "${rows[*]}" "${summary[*]}" "$big_bytes" "$big_ckpt" "$dd_s" \
  "$(awk -v a="$dd_s" -v b="$big_ckpt" 'BEGIN {printf "%.3f", a / b}')" "$memwrite_s" \
  "$(awk -v a="$memwrite_s" -v b="$big_ckpt" 'BEGIN {printf "%.3f", a / b}')" "$lost_json" "$verify_json"
