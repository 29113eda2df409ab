#!/usr/bin/env bash
# Step speed of graft against the PyTorch DDP peer (bench/ddp_peer.py, gloo) on the same model,
# starting weights, samples, schedule and thread count (1 per rank), in one session, alternating
# graft and peer runs; medians of REPEATS. Prints one JSON object:
#   workloads.NAME.graft_tokens_per_s / peer_tokens_per_s / graft_over_peer   (medians)
#   workloads.NAME.loss_curve_max_rel_diff   graft's and the peer's per-step losses (more than 1e-3
#                                            apart: they did not train the same thing, exit 1; the
#                                            two sum gradients in other orders: measured up to 1.4e-4
#                                            at 4 ranks, 1e-7 on stories260K at 2; another starting
#                                            point or sampler gives 1e-2 and more)
#   workloads.NAME.graft_phase_ms            graft's step by phase (metrics.jsonl's phase_s: data,
#                                            forward, backward, communication, optimizer) and
#                                            "outside" (between steps: logging, metrics), median ms
#                                            per step over the timed steps of the median run
#   np4_over_np2                             each workload's ratio at 4 ranks over its ratio at 2
#   floor / below_floor                      with FLOOR=x: the workloads whose ratio fell below x
#                                            (exit 1 when any did; .ci/run's perf guard)
# Workloads (tokens per rank per step: micro_batch 8 x seq_len 256, one micro-step):
#   stories260k  the stories260K fine-tune (llama2.c, dim 64, 5 layers) on the TinyStories sample
#   gemm         a random-init Llama of dim 288, 6 layers (hidden 768, 6 heads), where matmuls dominate
# usage: bench/step_speed.sh [graft]
#   env: WORKLOADS="stories260k gemm" NPS="2 4" REPEATS=3 STEPS=40 SKIP=5 GEMM_STEPS=15 GEMM_SKIP=3 FLOOR=
# Exit 77 (skipped) without the peer's Python (torch, h5py) or the test data (../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
WORKLOADS=${WORKLOADS:-stories260k gemm}
NPS=${NPS:-2 4}
REPEATS=${REPEATS:-3}
FLOOR=${FLOOR:-}
PY=/usr/bin/python3
if ! $PY -c "import torch, h5py" 2>/dev/null; then
  echo "step_speed: skipped: $PY cannot import torch and h5py (the peer needs them)" >&2
  exit 77
fi
if [[ ! -f ../shared/data/llama2c/stories260K.bin ]]; then
  echo "step_speed: skipped: no ../shared/data/llama2c/stories260K.bin beside the project" >&2
  exit 77
fi
SHARED=$(realpath ../shared/data)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { echo "step_speed: $*" >&2; }

"$GRAFT" prepare --tokenizer "$SHARED/llama2c/tok512.bin" --input "$SHARED/datasets/tinystories_sample/tinystories_sample.txt" \
  --out "$tmp/data.h5" --val-fraction 0.1 >/dev/null
# The same starting weights for both: stories260K as a graft .h5; the GEMM-bound model as the
# checkpoint of one step of a random initialisation (ddp_peer.py --init reads /model).
"$GRAFT" export --model "$SHARED/llama2c/stories260K.bin" --format graft --out "$tmp/stories260k.h5" >/dev/null
[[ " $WORKLOADS " == *" gemm "* ]] && "$GRAFT" train --run.dir="$tmp/gemm_init" --data.path="$tmp/data.h5" --model.dim=288 --model.hidden_dim=768 \
  --model.n_layers=6 --model.n_heads=6 --model.n_kv_heads=6 --model.max_seq_len=256 --train.steps=1 \
  --train.batch_size=1 --train.micro_batch=1 --train.seq_len=256 --train.threads=2 --eval.every=0 --eval.batches=1 \
  --checkpoint.every=1 --train.tensorboard=false >/dev/null
GEMM_INIT=$(ls "$tmp"/gemm_init/checkpoints/step-*.h5 2>/dev/null | tail -1 || true)

# workload -> init file, shape for the peer, steps, skipped steps
declare -A INIT SHAPE STEPS_OF SKIP_OF
INIT[stories260k]=$tmp/stories260k.h5
SHAPE[stories260k]="--dim 64 --hidden-dim 172 --n-layers 5 --n-heads 8 --n-kv-heads 4"
STEPS_OF[stories260k]=${STEPS:-40}; SKIP_OF[stories260k]=${SKIP:-5}
INIT[gemm]=$GEMM_INIT
SHAPE[gemm]="--dim 288 --hidden-dim 768 --n-layers 6 --n-heads 6 --n-kv-heads 6"
STEPS_OF[gemm]=${GEMM_STEPS:-15}; SKIP_OF[gemm]=${GEMM_SKIP:-3}
MICRO=8 SEQ=256 LR=5e-4 MIN_LR=5e-5 WARMUP=5 WD=0.0 CLIP=1.0 SEED=1234

graft_run() {  # workload np -> tokens/s after SKIP steps; losses and phases in $tmp/graft_<workload>_<np>.json
  local w=$1 np=$2 out=$3
  rm -rf "$tmp/run"
  mpirun -np "$np" --oversubscribe --bind-to none "$GRAFT" train --run.dir="$tmp/run" --data.path="$tmp/data.h5" \
    --model.path="${INIT[$w]}" --model.verify=false --train.steps="${STEPS_OF[$w]}" --train.batch_size=$((MICRO * np)) \
    --train.micro_batch=$MICRO --train.seq_len=$SEQ --train.lr=$LR --train.min_lr=$MIN_LR --train.warmup=$WARMUP \
    --train.weight_decay=$WD --train.grad_clip=$CLIP --train.seed=$SEED --train.threads=1 --eval.every=0 \
    --eval.batches=1 --checkpoint.every=0 --train.log_every="${STEPS_OF[$w]}" >/dev/null
  $PY - "$tmp/run/metrics.jsonl" "${SKIP_OF[$w]}" "$out" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
skip = int(sys.argv[2])
timed = rows[skip:]
tokens = sum(r["tokens"] - p["tokens"] for p, r in zip(rows[skip - 1:], timed))
seconds = rows[-1]["elapsed_s"] - rows[skip - 1]["elapsed_s"]
phases = {k: statistics.median(r["phase_s"][k] for r in timed) * 1e3 for k in timed[0]["phase_s"]}
phases["outside"] = statistics.median(max(0.0, (r["elapsed_s"] - p["elapsed_s"]) - r["step_s"])
                                      for p, r in zip(rows[skip - 1:], timed)) * 1e3
json.dump({"losses": [r["loss"] for r in rows], "phase_ms": phases}, open(sys.argv[3], "w"))
print(tokens / seconds)
PYEOF
}

peer_run() {  # workload np out -> tokens/s; losses in out
  local w=$1 np=$2 out=$3
  # shellcheck disable=SC2086
  mpirun -np "$np" --oversubscribe --bind-to none $PY bench/ddp_peer.py --ddp --data "$tmp/data.h5" --init "${INIT[$w]}" \
    ${SHAPE[$w]} --seq-len $SEQ --batch-size $((MICRO * np)) --micro-batch $MICRO --steps "${STEPS_OF[$w]}" \
    --warmup "$WARMUP" --lr $LR --min-lr $MIN_LR --weight-decay $WD --grad-clip $CLIP --seed $SEED --threads 1 \
    --warmup-steps-excluded "${SKIP_OF[$w]}" 2>/dev/null > "$out"
  $PY -c "import json; print(json.load(open('$out'))['tokens_per_s'])"
}

for w in $WORKLOADS; do
  for np in $NPS; do
    : > "$tmp/g_${w}_$np"; : > "$tmp/p_${w}_$np"
    for ((i = 0; i < REPEATS; i++)); do
      say "$w np $np run $((i + 1))/$REPEATS"
      graft_run "$w" "$np" "$tmp/graft_${w}_${np}_$i.json" >> "$tmp/g_${w}_$np"
      peer_run "$w" "$np" "$tmp/peer_${w}_${np}_$i.json" >> "$tmp/p_${w}_$np"
    done
  done
done

$PY - "$tmp" "$WORKLOADS" "$NPS" "$REPEATS" "$FLOOR" <<'PYEOF'
import json, statistics, sys
tmp, workloads, nps, repeats, floor = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4]), sys.argv[5]
out = {"bench": "step_speed", "peer": "bench/ddp_peer.py (PyTorch DDP, gloo)", "repeats": repeats,
       "statistic": "median", "threads_per_rank": 1, "tokens_per_rank_per_step": "8 x 256", "workloads": {}}
failed = False
for w in workloads:
    for np in nps:
        g = [float(x) for x in open(f"{tmp}/g_{w}_{np}")]
        p = [float(x) for x in open(f"{tmp}/p_{w}_{np}")]
        gm, pm = statistics.median(g), statistics.median(p)
        median_run = sorted(range(repeats), key=lambda i: g[i])[repeats // 2]
        graft = json.load(open(f"{tmp}/graft_{w}_{np}_{median_run}.json"))
        peer = json.load(open(f"{tmp}/peer_{w}_{np}_0.json"))
        pairs = [(a, b) for a, b in zip(graft["losses"], peer["losses"])]
        # a loss that is not finite (null in metrics.jsonl) on either side: the runs differ
        diff = max((abs(a - b) / abs(b) if a is not None and b is not None and b != 0 else float("inf")) for a, b in pairs)
        entry = {"graft_tokens_per_s": gm, "peer_tokens_per_s": pm, "graft_over_peer": gm / pm,
                 "graft_runs": g, "peer_runs": p, "loss_curve_max_rel_diff": diff,
                 "graft_phase_ms": {k: round(v, 3) for k, v in graft["phase_ms"].items()}}
        if diff > 1e-3:  # a speed ratio between runs that trained different things means nothing
            entry["error"] = "graft's and the peer's loss curves differ by more than 1e-3 relative"
            failed = True
        out["workloads"][f"{w}_np{np}"] = entry
    if "2" in nps and "4" in nps:
        two, four = out["workloads"][f"{w}_np2"], out["workloads"][f"{w}_np4"]
        out.setdefault("np4_over_np2", {})[w] = four["graft_over_peer"] / two["graft_over_peer"]
if floor:
    out["floor"] = float(floor)
    out["below_floor"] = [k for k, v in out["workloads"].items() if v["graft_over_peer"] < float(floor)]
    failed = failed or bool(out["below_floor"])
print(json.dumps(out, indent=1))
sys.exit(1 if failed else 0)
PYEOF
