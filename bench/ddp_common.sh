# What bench/ddp_compare.sh and bench/torch2_compare.sh share (sourced from the project root):
# graft and bench/ddp_peer.py on the demo's fine-tuning data and base, from the same weights.
#   graft_run NP THREADS BATCH MICRO [graft options...]  -> steps/s; losses in $tmp/graft_losses
#   peer_run NP THREADS [ddp_peer.py options...]         -> steps/s; losses in $tmp/peer_losses
#   median < numbers;  curve_diff: max relative difference of the two loss curves
# Settings: REPEATS (3), STEPS (30), SKIP (5: steps left out of the timing); $GRAFT is set.
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-30}
SKIP=${SKIP:-5}
DATA=runs/demo/stories.h5
[[ -f $DATA ]] || bash launcher/demo.sh "$GRAFT" >/dev/null
BASE=$(ls runs/demo/pretrain/checkpoints/step-*.h5 | tail -1)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
PY=/usr/bin/python3

graft_run() {  # np threads batch micro extra... -> steps/s after SKIP steps; losses in $tmp/graft_losses
  local np=$1 threads=$2 batch=$3 micro=$4; shift 4
  rm -rf "$tmp/run"
  mpirun -np "$np" --oversubscribe --bind-to none "$GRAFT" train --config configs/demo_finetune.ini \
    --run.dir="$tmp/run" --data.path="$DATA" --model.path="$BASE" --train.steps="$STEPS" --train.threads="$threads" \
    --train.batch_size="$batch" --train.micro_batch="$micro" --eval.every=0 --eval.batches=1 \
    --checkpoint.every=0 --train.log_every="$STEPS" "$@" >/dev/null
  $PY - "$tmp/run/metrics.jsonl" "$SKIP" "$tmp/graft_losses" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
skip = int(sys.argv[2])
print((len(rows) - skip) / (rows[-1]["elapsed_s"] - rows[skip - 1]["elapsed_s"]))
json.dump([r["loss"] for r in rows], open(sys.argv[3], "w"))
PYEOF
}

peer_run() {  # np threads [peer options...] -> steps/s; losses in $tmp/peer_losses
  local np=$1 threads=$2; shift 2
  # --ddp: the peer runs DistributedDataParallel (a gloo group) at one rank too, as graft runs its reducer.
  mpirun -np "$np" --oversubscribe --bind-to none $PY bench/ddp_peer.py --ddp --data "$DATA" --init "$BASE" \
    --steps "$STEPS" --threads "$threads" --warmup-steps-excluded "$SKIP" --seed 2 "$@" 2>"$tmp/peer.err" > "$tmp/peer.json" ||
    { tail -n 20 "$tmp/peer.err" >&2; echo "bench: bench/ddp_peer.py failed" >&2; return 1; }
  $PY -c "import json,sys; d=json.load(open('$tmp/peer.json')); json.dump(d['losses'], open('$tmp/peer_losses','w')); print(d['steps_per_s'])"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
curve_diff() { $PY -c "import json; a=json.load(open('$tmp/graft_losses')); b=json.load(open('$tmp/peer_losses')); print(max(abs(x-y)/abs(y) for x,y in zip(a,b)))"; }

