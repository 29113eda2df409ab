#!/usr/bin/env bash
# graft vs PyTorch 2.x on the CPU, eager and torch.compile (inductor), on the model, data, batch,
# thread count and starting weights of bench/ddp_compare.sh (bench/ddp_peer.py, DDP over gloo at
# one rank, as graft runs its reducer): one rank, 2 threads. Prints one JSON object: medians of
# REPEATS alternating runs, steps/s after the first SKIP steps (torch.compile compiles during the
# first steps: its compile time is printed apart, from its first run).
# Needs PyTorch >= 2 in /usr/bin/python3 (Debian 13's python3-torch 2.6; .ci/debian13.sh bench runs
# it there) and, for inductor's C++ kernels, g++, python3-setuptools and python3-dev.
# usage: bench/torch2_compare.sh [graft]   (uses runs/demo from launcher/demo.sh, running it if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
STEPS=${STEPS:-40}
SKIP=${SKIP:-10}
source bench/ddp_common.sh
version=$($PY -c 'import torch; print(torch.__version__)')
[[ ${version%%.*} -ge 2 ]] || { echo "bench: torch.compile needs PyTorch 2; $PY has $version" >&2; exit 2; }

: > "$tmp/g"; : > "$tmp/e"; : > "$tmp/c"
for ((i = 0; i < REPEATS; i++)); do
  graft_run 1 2 16 8 >> "$tmp/g"
  peer_run 1 2 >> "$tmp/e"; d_eager=$(curve_diff)
  first=$SECONDS
  peer_run 1 2 --compile >> "$tmp/c"; d_compiled=$(curve_diff)
  ((i == 0)) && compile_run_s=$((SECONDS - first))
done
$PY - "$(median < "$tmp/g")" "$(median < "$tmp/e")" "$(median < "$tmp/c")" "$d_eager" "$d_compiled" \
  "$compile_run_s" "$REPEATS" "$STEPS" "$SKIP" "$version" <<'PYEOF'
import json, sys
g, e, c, de, dc = map(float, sys.argv[1:6])
run_s, repeats, steps, skip = map(int, sys.argv[6:10])
out = {"bench": "torch2_compare", "torch": sys.argv[10], "ranks": 1, "threads": 2,
       "model": "demo_finetune (dim 96, 3 layers, seq 128, global batch 16, micro 8)",
       "repeats": repeats, "steps": steps, "timed_after_step": skip, "statistic": "median",
       "steps_per_s": {"graft": g, "torch_eager": e, "torch_compile": c},
       "graft_over_eager": g / e, "graft_over_compile": g / c, "compile_over_eager": c / e,
       "first_compiled_run_s": run_s,
       "loss_curve_max_rel_diff": {"eager": de, "compile": dc}}
if max(de, dc) > 1e-4:  # runs that trained different things are not compared
    out = {"bench": "torch2_compare", "error": "graft's and the peer's loss curves differ by more than 1e-4 "
           "relative; no ratio reported", "loss_curve_max_rel_diff": out["loss_curve_max_rel_diff"]}
    print(json.dumps(out)); sys.exit(1)
print(json.dumps(out))
PYEOF
