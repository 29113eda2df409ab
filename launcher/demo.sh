#!/usr/bin/env bash
# The quick-start demo: transfer learning in three runs, self-contained (Debian's own text + a
# generated corpus; no downloads, nothing from ../shared).
#   1. pretrain a small Llama-style model (byte tokenizer) on licence texts every Debian system
#      carries in /usr/share/common-licenses (eight that Debian 12 and 13 carry alike);
#   2. fine-tune it on a different task: short generated children's stories, with little data;
#   3. train the same architecture on the same stories from random initialisation, same budget.
# Prints the validation loss of (2) next to the pretrained base's and next to (3), and draws the
# loss curves of (2) and (3) on one chart ($RUN/curves.svg).
# usage: launcher/demo.sh [path/to/graft]   (RANKS=2 by default; RUN=runs/demo)
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
RANKS=${RANKS:-2}
RUN=${RUN:-runs/demo}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
export OMP_WAIT_POLICY=passive
MPIRUN=(mpirun -np "$RANKS" --oversubscribe --bind-to none)

rm -rf "$RUN" && mkdir -p "$RUN"
start=$(date +%s)

echo "== data"
# Pretraining text: paragraphs of the licences (blank lines separate documents). The texts that
# Debian 12 and 13 carry alike (13 adds and revises others), so that the demo ends with the same
# losses on both releases (.ci/run compares them).
LICENSES=(Apache-2.0 BSD CC0-1.0 GFDL-1.3 GPL-3 LGPL-3 MPL-1.1 MPL-2.0)
for l in "${LICENSES[@]}"; do
  [[ -f /usr/share/common-licenses/$l ]] || { echo "demo: /usr/share/common-licenses/$l is missing (Debian's base-files has it)" >&2; exit 1; }
done
(cd /usr/share/common-licenses && cat "${LICENSES[@]}") > "$RUN/licenses.txt"
# Transfer task: generated stories, one per document.
awk -v n=600 'BEGIN {
  srand(7);
  split("Tom Lily Max Mia Ben Sue Sam Anna", who, " ");
  split("cat dog bird frog bunny duck", pet, " ");
  split("park garden forest beach river yard", place, " ");
  split("happy sad tired excited scared proud", mood, " ");
  split("ball kite box hat cake flower", thing, " ");
  split("red big small blue shiny soft", adj, " ");
  for (i = 0; i < n; i++) {
    a = who[int(rand()*8)+1]; b = who[int(rand()*8)+1]; p = pet[int(rand()*6)+1];
    l = place[int(rand()*6)+1]; m = mood[int(rand()*6)+1]; t = thing[int(rand()*6)+1]; d = adj[int(rand()*6)+1];
    printf "Once upon a time, %s had a little %s. One day they went to the %s. ", a, p, l;
    printf "In the %s, %s found a %s %s. %s was very %s. ", l, a, d, t, a, m;
    printf "%s said, \"Look, %s! A %s %s!\" The %s liked the %s too. ", a, b, d, t, p, t;
    printf "They played with the %s until the sun went down, and %s was %s.\n\n", t, a, m;
  }
}' > "$RUN/stories.txt"
"$GRAFT" prepare --tokenizer bytes --input "$RUN/licenses.txt" --out "$RUN/licenses.h5" --val-fraction 0.05
"$GRAFT" prepare --tokenizer bytes --input "$RUN/stories.txt" --out "$RUN/stories.h5" --val-fraction 0.2

echo "== 1/3 pretrain on the licences ($RANKS ranks)"
"${MPIRUN[@]}" "$GRAFT" train --config configs/demo_pretrain.ini --run.dir="$RUN/pretrain" --data.path="$RUN/licenses.h5"
base=$(ls "$RUN"/pretrain/checkpoints/step-*.h5 | tail -1)

echo "== 2/3 fine-tune the pretrained model on the stories"
"${MPIRUN[@]}" "$GRAFT" train --config configs/demo_finetune.ini --run.dir="$RUN/pretrained" \
  --data.path="$RUN/stories.h5" --model.path="$base" | tee "$RUN/finetune.log"

echo "== 3/3 same budget from random initialisation"
"${MPIRUN[@]}" "$GRAFT" train --config configs/demo_finetune.ini --run.dir="$RUN/random-init" \
  --data.path="$RUN/stories.h5" | tee "$RUN/random-init.log"

val() { grep -o '"val_loss": [0-9.]*' "$1" | tail -1 | cut -d' ' -f2; }
first_val() { grep -o 'val loss before training: [0-9.]*' "$1" | head -1 | awk '{print $NF}'; }
echo
echo "== result (validation loss on held-out stories, nats per byte; lower is better)"
printf '  %-44s %s\n' "pretrained base, before fine-tuning" "$(first_val "$RUN/finetune.log")"
printf '  %-44s %s\n' "pretrained base + fine-tune" "$(val "$RUN/pretrained/metrics.jsonl")"
printf '  %-44s %s\n' "random init + same fine-tune budget" "$(val "$RUN/random-init/metrics.jsonl")"
"$GRAFT" plot "$RUN/pretrained" "$RUN/random-init" --out "$RUN/curves.svg" \
  --title "fine-tuning on the stories: pretrained base vs random initialisation" >/dev/null
echo "  plot of both runs' loss curves: $RUN/curves.svg"
echo "  demo time: $(( $(date +%s) - start )) s; runs, metrics.jsonl and checkpoints under $RUN/"
echo "  watch: $GRAFT status $RUN/pretrained;  tensorboard --logdir $RUN   (event files in each run's tensorboard/)"
echo "  try: $GRAFT generate --model $(ls "$RUN"/pretrained/checkpoints/step-*.h5 | tail -1) --tokenizer bytes --prompt 'Once upon a time' --temperature 0 --steps 120"
