#!/usr/bin/env bash
# Does transfer pay? Every flavour at the same compute budget (steps x batch) on two real tasks,
# each next to the same architecture trained from random initialisation with that budget:
#   banking77 intents, 10 examples per intent (few-shot), accuracy on a stratified held-out split;
#   stories260K (TinyStories) -> Tiny Shakespeare, validation loss (nats per token).
# Prints one JSON object per row and then a table: flavour, trainable parameters, memory the frozen
# weights hold, peak memory per rank (max RSS), throughput (tokens/s; examples/s for banking77),
# validation metric. usage: bench/transfer.sh [graft]
# Environment: NP (2), STEPS_CLS (150), STEPS_LM (150), ZERO_SHOT_EXAMPLES (200).
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
DATA=$(realpath ../shared/data)
NP=${NP:-2}
STEPS_CLS=${STEPS_CLS:-150}
STEPS_LM=${STEPS_LM:-150}
ZERO_SHOT_EXAMPLES=${ZERO_SHOT_EXAMPLES:-200}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
BASE=$DATA/llama2c/stories260K.bin
TOK=$DATA/llama2c/tok512.bin

"$GRAFT" prepare --tokenizer "$TOK" --input "$DATA/datasets/banking77/train.csv" --label-field category \
  --val-fraction 0.1 --max-per-label 10 --out "$tmp/b77.h5" >/dev/null
"$GRAFT" prepare --tokenizer "$TOK" --input "$DATA/datasets/tinyshakespeare/input.txt" --val-fraction 0.05 \
  --out "$tmp/shakespeare.h5" >/dev/null

rows="$tmp/rows.jsonl"
# run NAME TASK BASE|random TRANSFER-SETTINGS...: trains under mpirun, appends a JSON row
# (LR=... before it overrides the task's peak learning rate: prompt tuning wants a large one).
run() {
  local name=$1 task=$2 init=$3
  shift 3
  local dir="$tmp/$name" data steps model=() extra=()
  if [[ $task == banking77 ]]; then
    data=$tmp/b77.h5 steps=$STEPS_CLS
    extra=(--train.batch_size=32 --train.micro_batch=16 --train.seq_len=256 --train.lr="${LR:-1e-2}" --train.min_lr=1e-3)
  else
    data=$tmp/shakespeare.h5 steps=$STEPS_LM
    extra=(--train.batch_size=16 --train.micro_batch=8 --train.seq_len=128 --train.lr="${LR:-3e-3}" --train.min_lr=3e-4)
  fi
  if [[ $init == random ]]; then  # stories260K's shape, random weights
    model=(--model.dim=64 --model.hidden_dim=172 --model.n_layers=5 --model.n_heads=8 --model.n_kv_heads=4 --model.max_seq_len=512)
  else
    model=(--model.path="$BASE")
  fi
  /usr/bin/time -f '%M' -o "$dir.rss" mpirun -np "$NP" --oversubscribe --bind-to none "$GRAFT" train --run.dir="$dir" \
    --data.path="$data" --train.steps="$steps" --train.warmup=10 --train.weight_decay=0 --train.threads=1 \
    --train.log_every=1000 --eval.every=0 --checkpoint.every=0 "${model[@]}" "${extra[@]}" "$@" >"$dir.log" 2>&1
  local trainable metric
  trainable=$(grep -o 'transfer: .*' "$dir.log" | grep -o '[0-9]* of [0-9]* parameters' | cut -d' ' -f1)
  if [[ $task == banking77 ]]; then
    metric=$(tail -1 "$dir/metrics.jsonl" | grep -o '"val_accuracy": [0-9.e-]*' | cut -d' ' -f2)
  else
    metric=$(tail -1 "$dir/metrics.jsonl" | grep -o '"val_loss": [0-9.e-]*' | cut -d' ' -f2)
  fi
  # Classification counts one document per sample (seq_len tokens nominal): report examples/s.
  local tps per_sample=1
  tps=$(tail -1 "$dir/metrics.jsonl" | grep -o '"tokens_per_s": [0-9.]*' | cut -d' ' -f2)
  [[ $task == banking77 ]] && per_sample=256 || per_sample=1
  printf '{"task": "%s", "flavour": "%s", "init": "%s", "steps": %s, "trainable": %s, "frozen_mb": %s, "peak_rss_mb": %.1f, "throughput": %.1f, "unit": "%s", "metric": %s}\n' \
    "$task" "$name" "$init" "$steps" "$trainable" "$(grep -o 'frozen weights hold [0-9.]* MB' "$dir.log" | cut -d' ' -f4)" \
    "$(awk '{print $1 / 1024}' "$dir.rss")" "$(awk -v t="$tps" -v s="$per_sample" 'BEGIN {print t / s}')" \
    "$([[ $task == banking77 ]] && echo examples/s || echo tokens/s)" "$metric" | tee -a "$rows"
}

run b77_full banking77 pretrained
run b77_full_random banking77 random
run b77_lora banking77 pretrained --transfer.mode=lora --transfer.lora_rank=8 --transfer.lora_targets=wq,wk,wv,wo
run b77_qlora_nf4 banking77 pretrained --transfer.mode=lora --transfer.lora_rank=8 --transfer.lora_targets=wq,wk,wv,wo --transfer.quantize=nf4
run b77_feature banking77 pretrained --transfer.mode=feature --transfer.cache_features=true
LR=0.1 run b77_prompt banking77 pretrained --transfer.mode=prompt --transfer.prompt_tokens=16
run lm_full shakespeare pretrained
run lm_full_random shakespeare random
run lm_lora shakespeare pretrained --transfer.mode=lora --transfer.lora_rank=8 --transfer.lora_targets=wq,wk,wv,wo,w1,w2,w3
LR=0.1 run lm_prompt shakespeare pretrained --transfer.mode=prompt --transfer.prompt_tokens=16
run lm_qlora_nf4 shakespeare pretrained --transfer.mode=lora --transfer.lora_rank=8 --transfer.lora_targets=wq,wk,wv,wo,w1,w2,w3 --transfer.quantize=nf4

# The pretrained model with no training at all (its validation loss before lm_full's first step).
printf '{"task": "shakespeare", "flavour": "lm_no_training", "init": "pretrained", "steps": 0, "trainable": 0, "frozen_mb": null, "peak_rss_mb": null, "throughput": null, "unit": "", "metric": %s}\n' \
  "$(grep -o 'val loss before training: [0-9.]*' "$tmp/lm_full.log" | cut -d' ' -f5)" | tee -a "$rows"

# Prompt-based transfer with no training: the pretrained model scores each intent's name.
zs=$("$GRAFT" eval --model "$BASE" --tokenizer "$TOK" --data "$tmp/b77.h5" --zero-shot ' Topic: {label}.' \
  --max-examples "$ZERO_SHOT_EXAMPLES")
printf '{"task": "banking77", "flavour": "zero_shot", "init": "pretrained", "steps": 0, "trainable": 0, "frozen_mb": null, "peak_rss_mb": null, "throughput": null, "unit": "", "metric": %s}\n' \
  "$(echo "$zs" | grep -o '"accuracy": [0-9.]*' | cut -d' ' -f2)" | tee -a "$rows"

/usr/bin/python3 - "$rows" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print("\n| task | flavour | init | trainable params | frozen weights (MB) | peak RSS/rank (MB) | throughput | metric |")
print("|---|---|---|---|---|---|---|---|")
for r in rows:
    metric = ("accuracy %.3f" if r["task"] == "banking77" else "val loss %.3f") % r["metric"]
    rss = "-" if r["peak_rss_mb"] is None else "%.0f" % r["peak_rss_mb"]
    frozen = "-" if r["frozen_mb"] is None else "%.3f" % r["frozen_mb"]
    tput = "-" if r["throughput"] is None else "%.0f %s" % (r["throughput"], r["unit"])
    print(f"| {r['task']} | {r['flavour']} | {r['init']} | {r['trainable']:,} | {frozen} | {rss} | {tput} | {metric} |")
PY
