#!/usr/bin/env bash
# graft vs PyTorch DDP (bench/ddp_peer.py, gloo) on the same model, batch, data, thread count and
# starting weights; plus overlap on/off and weak scaling. Prints one JSON object (medians of
# REPEATS alternating runs; steps/s measured after the first SKIP steps).
#   steps/s            graft and peer at np=1 (2 threads) and np=2 (1 thread per rank)
#   loss_curve         max relative difference of graft's and the peer's per-step losses; above
#                      1e-4 the two did not train the same thing, and no ratio is reported (exit 1)
#   overlap            graft np=2 with dist.overlap=true vs false
#   weak_scaling       graft tokens/s at np=2 / (2 x np=1), same per-rank batch, 1 thread per rank
# usage: bench/ddp_compare.sh [graft]   (uses runs/demo from launcher/demo.sh, running it if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
source bench/ddp_common.sh

declare -A g p d
for np in 1 2; do
  threads=$((np == 1 ? 2 : 1))
  : > "$tmp/g$np"; : > "$tmp/p$np"
  for ((i = 0; i < REPEATS; i++)); do
    graft_run "$np" "$threads" 16 8 >> "$tmp/g$np"
    peer_run "$np" "$threads" >> "$tmp/p$np"
  done
  g[$np]=$(median < "$tmp/g$np"); p[$np]=$(median < "$tmp/p$np"); d[$np]=$(curve_diff)
done
: > "$tmp/on"; : > "$tmp/off"; : > "$tmp/w1"; : > "$tmp/w2"
for ((i = 0; i < REPEATS; i++)); do
  graft_run 2 1 16 8 --dist.overlap=true >> "$tmp/on"
  graft_run 2 1 16 8 --dist.overlap=false >> "$tmp/off"
  graft_run 1 1 8 8 >> "$tmp/w1"
  graft_run 2 1 16 8 >> "$tmp/w2"
done
$PY - "${g[1]}" "${g[2]}" "${p[1]}" "${p[2]}" "${d[1]}" "${d[2]}" "$(median < "$tmp/on")" "$(median < "$tmp/off")" \
  "$(median < "$tmp/w1")" "$(median < "$tmp/w2")" "$REPEATS" "$STEPS" "$SKIP" <<'PYEOF'
import json, sys
g1, g2, p1, p2, d1, d2, on, off, w1, w2 = map(float, sys.argv[1:11])
repeats, steps, skip = map(int, sys.argv[11:14])
if max(d1, d2) > 1e-4:  # a speed ratio between runs that trained different things means nothing
    print(json.dumps({"bench": "ddp_compare", "error": "graft's and the peer's loss curves differ by more than 1e-4 "
                      "relative; no ratio reported", "loss_curve_max_rel_diff": {"np1": d1, "np2": d2}}))
    sys.exit(1)
print(json.dumps({
    "bench": "ddp_compare", "model": "demo_finetune (dim 96, 3 layers, seq 128, global batch 16)",
    "repeats": repeats, "steps": steps, "timed_after_step": skip, "statistic": "median",
    "graft_steps_per_s": {"np1": g1, "np2": g2}, "ddp_steps_per_s": {"np1": p1, "np2": p2},
    "graft_over_ddp": {"np1": g1 / p1, "np2": g2 / p2},
    "loss_curve_max_rel_diff": {"np1": d1, "np2": d2},
    "overlap_steps_per_s": {"on": on, "off": off, "on_over_off": on / off},
    "weak_scaling": {"np1_steps_per_s_batch8": w1, "np2_steps_per_s_batch16": w2, "efficiency": w2 / w1},
}))
PYEOF
