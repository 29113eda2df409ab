#!/usr/bin/env bash
# Instruction tuning of stories260K on conversations (issue 31), packed vs one document per
# sequence. The conversations come from tests/make_conversations.py (the TinyStories sample as
# user/assistant turns), rendered by the plain template, loss on the assistant turns only. For
# data.packing = documents and padded, the same model, schedule and number of epochs (so the same
# documents, in sequences of seq_len 256): tokens/s (real tokens, padding not counted) and wall
# time of the run, medians of REPEATS, and the assistant-only validation loss before and after,
# from `graft eval --data` on every validation conversation (documents isolated, as in training).
# Prints one JSON object:
#   documents / padded: sequences, steps, tokens_per_s, wall_s (medians), val_loss_after (of the median run)
#   val_loss_before                    the pretrained model, assistant turns only
#   packing_over_padded_tokens_per_s   the ratio of the medians
#   packing_over_padded_wall           padded wall time over packed (how much sooner the same epochs end)
# usage: bench/chat_sft.sh [graft]   env: REPEATS=3 EPOCHS=3 CONVERSATIONS=600 THREADS=2
# Exit 77 (skipped) without ../shared/data.
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
REPEATS=${REPEATS:-3}
EPOCHS=${EPOCHS:-3}
CONVERSATIONS=${CONVERSATIONS:-600}
THREADS=${THREADS:-2}
PY=python3
if [[ ! -f ../shared/data/llama2c/stories260K.bin ]]; then
  echo "chat_sft: skipped: no ../shared/data/llama2c/stories260K.bin beside the project" >&2
  exit 77
fi
SHARED=$(realpath ../shared/data)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { echo "chat_sft: $*" >&2; }

$PY tests/make_conversations.py "$SHARED/datasets/tinystories_sample/tinystories_sample.txt" "$tmp/c.jsonl" "$CONVERSATIONS" >&2
"$GRAFT" prepare --tokenizer "$SHARED/llama2c/tok512.bin" --input "$tmp/c.jsonl" --out "$tmp/c.h5" --chat-template plain \
  --val-fraction 0.1 >&2
loss_of() { "$GRAFT" eval --model "$1" --data "$tmp/c.h5" --seq-len 256 | $PY -c "import json, sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['loss'])"; }
before=$(loss_of "$SHARED/llama2c/stories260K.bin")

common=(--model.path="$SHARED/llama2c/stories260K.bin" --data.path="$tmp/c.h5" --train.seq_len=256 --train.batch_size=16
        --train.micro_batch=8 --train.lr=1e-3 --train.min_lr=1e-4 --train.warmup=2 --train.threads="$THREADS"
        --eval.every=0 --eval.batches=1 --train.tensorboard=false --train.log_every=1000)
for packing in documents padded; do
  sequences=$("$GRAFT" train "${common[@]}" --run.dir="$tmp/count_$packing" --data.packing=$packing --train.steps=1 \
                --checkpoint.every=0 2>&1 | sed -n 's/.*, \([0-9]*\) training sequences$/\1/p')
  steps=$(( EPOCHS * sequences / 16 ))
  echo "$sequences $steps" > "$tmp/shape_$packing"
  say "$packing: $sequences sequences, $steps steps for $EPOCHS epochs"
  for i in $(seq 1 "$REPEATS"); do
    start=$(date +%s.%N)
    "$GRAFT" train "${common[@]}" --run.dir="$tmp/${packing}_$i" --data.packing=$packing --train.steps="$steps" \
      --checkpoint.every="$steps" > "$tmp/${packing}_$i.log" 2>&1
    end=$(date +%s.%N)
    tps=$(sed -n 's/.* \([0-9.]*\) tokens\/s$/\1/p' "$tmp/${packing}_$i.log" | tail -1)
    after=$(loss_of "$(ls "$tmp/${packing}_$i"/checkpoints/step-*.h5 | tail -1)")
    echo "$tps $($PY -c "print($end - $start)") $after" >> "$tmp/runs_$packing"
    say "$packing run $i: $tps tokens/s, val loss $after"
  done
done
$PY - "$tmp" "$before" "$EPOCHS" <<'PYEOF'
import json, statistics, sys
tmp, before, epochs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
out = {"model": "stories260K", "template": "plain", "seq_len": 256, "global_batch": 16, "epochs": epochs,
       "statistic": "median", "val_loss_before": before}
for packing in ("documents", "padded"):
    sequences, steps = map(int, open(f"{tmp}/shape_{packing}").read().split())
    runs = [list(map(float, l.split())) for l in open(f"{tmp}/runs_{packing}")]
    median = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    out[packing] = {"sequences": sequences, "steps": steps, "tokens_per_s": statistics.median(r[0] for r in runs),
                    "wall_s": statistics.median(r[1] for r in runs), "val_loss_after": median[2],
                    "runs": [{"tokens_per_s": r[0], "wall_s": r[1], "val_loss_after": r[2]} for r in runs]}
out["packing_over_padded_tokens_per_s"] = out["documents"]["tokens_per_s"] / out["padded"]["tokens_per_s"]
out["packing_over_padded_wall"] = out["padded"]["wall_s"] / out["documents"]["wall_s"]
print(json.dumps(out, indent=1))
PYEOF
