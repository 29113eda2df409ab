#!/usr/bin/env bash
# What ZeRO-3 buys on one machine: a random-init Llama (dim 2048, hidden 5632, 16 heads, vocab 512,
# LAYERS deep) trains at np 4 under dist.shard = parameters within a memory limit of LIMIT_GB
# (default 24: a 24 GB machine), and cannot under dist.shard = none. The limit is enforced, not
# assumed: every run is a child of a memory cgroup of its own (cgroup v1 or v2; root), so the
# kernel kills a run that passes it without touching the rest of the machine. LAYERS defaults to
# the deepest model whose ZeRO-3 expectation (docs/sharding.md: 16 bytes per parameter / 4 ranks,
# one whole block gathered and one packed, 0.25 GiB of runtime per rank) fits in 90% of the
# limit; it also runs LAYERS + 4 under parameters, which should not fit. The limit must fit in the
# machine's available memory with 400 MB to spare, and swap is capped with it. Each run: 2 steps of one
# 64-token sequence per rank, 1 thread per rank. Prints one JSON object: per run, whether it
# trained, its peak resident set per rank (graft's own figure), the expectation graft printed,
# and how it ended.
#   usage: bench/zero3_fits.sh [graft]     (LIMIT_GB=24 LAYERS=auto NP=4)
set -euo pipefail
cd "$(dirname "$0")/.."
GRAFT=$(realpath "${1:-build/launcher/graft}")
LIMIT_GB=${LIMIT_GB:-24}
NP=${NP:-4}
DIM=2048 HIDDEN=5632 VOCAB=512
DATA_DIR=$(realpath ../shared/data)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
export OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo OMPI_MCA_btl=self,vader,tcp
limit_bytes=$(awk -v g="$LIMIT_GB" 'BEGIN {printf "%.0f", g * 1e9}')
# The limit must leave room for the rest of the machine, or the kernel's machine-wide OOM killer
# (not the cgroup's) would pick a victim, maybe not ours.
available_bytes=$(awk '/^MemAvailable:/ {printf "%.0f", $2 * 1024}' /proc/meminfo)
if ((limit_bytes > available_bytes - 400000000)); then
  echo "zero3_fits: LIMIT_GB=$LIMIT_GB needs $((limit_bytes / 1000000)) MB and 400 MB to spare; this machine has $((available_bytes / 1000000)) MB available: set a smaller LIMIT_GB" >&2
  exit 1
fi
swap_bytes=$(awk '/^SwapTotal:/ {printf "%.0f", $2 * 1024}' /proc/meminfo)
# A memory cgroup of our own, below the one this shell is in (v2: memory.max; v1:
# memory.limit_in_bytes), swap capped too, so that a run over the limit is killed, not swapped.
tmp=$(mktemp -d)
group=
cleanup() {
  if [[ -n $group && -d $group ]]; then
    [[ -f $group/cgroup.kill ]] && echo 1 > "$group/cgroup.kill" 2>/dev/null
    xargs -r kill -9 < "$group/cgroup.procs" 2>/dev/null || true
    for _ in 1 2 3 4 5; do rmdir "$group" 2>/dev/null && break; sleep 1; done  # its last processes may still be leaving
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
  parent=/sys/fs/cgroup$(awk -F: '$1 == "0" {print $3}' /proc/self/cgroup)
  group=$parent/graft-zero3-fits-$$
  mkdir "$group"
  if [[ ! -f $group/memory.max ]]; then
    echo "zero3_fits: $parent does not hand the memory controller to its children (cgroup v2: +memory in its cgroup.subtree_control)" >&2
    exit 1
  fi
  echo "$limit_bytes" > "$group/memory.max"
  if ! echo 0 > "$group/memory.swap.max" 2>/dev/null && ((swap_bytes > 0)); then
    echo "zero3_fits: this machine swaps and the cgroup's swap cannot be capped: a run over the limit would swap instead of stopping" >&2
    exit 1
  fi
  events=$group/memory.events.local
  [[ -f $events ]] || events=$group/memory.events
else
  parent=/sys/fs/cgroup/memory$(awk -F: '$2 == "memory" {print $3}' /proc/self/cgroup)
  group=$parent/graft-zero3-fits-$$
  mkdir "$group"
  echo "$limit_bytes" > "$group/memory.limit_in_bytes"
  if [[ -f $group/memory.memsw.limit_in_bytes ]]; then
    echo "$limit_bytes" > "$group/memory.memsw.limit_in_bytes"
  elif ((swap_bytes > 0)); then
    echo "zero3_fits: this machine swaps and the cgroup's swap cannot be capped: a run over the limit would swap instead of stopping" >&2
    exit 1
  fi
  events=$group/memory.oom_control
fi
"$GRAFT" prepare --tokenizer "$DATA_DIR/llama2c/tok512.bin" --input "$DATA_DIR/datasets/tinystories_sample/tinystories_sample.txt" \
  --out "$tmp/stories.h5" --val-fraction 0.05 >/dev/null
params_of() { awk -v l="$1" -v d=$DIM -v h=$HIDDEN -v v=$VOCAB 'BEGIN {printf "%.0f", l * (4 * d * d + 3 * d * h + 2 * d) + 2 * v * d + d}'; }
if [[ ${LAYERS:-auto} == auto ]]; then
  LAYERS=1
  for ((l = 2; l <= 200; l++)); do
    p=$(params_of "$l")
    need=$(awk -v p="$p" -v n="$NP" -v d=$DIM -v h=$HIDDEN 'BEGIN {block = 4 * d * d + 3 * d * h; printf "%.0f", n * (16 * p / n + 2 * 4 * block + 0.25 * 2^30)}')
    ((need <= limit_bytes * 9 / 10)) || break
    LAYERS=$l
  done
fi
oom_kills() { awk '$1 == "oom_kill" {print $2; exit}' "$events" 2>/dev/null || true; }  # this cgroup's own kills
run() {  # mode layers -> one JSON object
  local mode=$1 layers=$2 out rc kills_before
  kills_before=$(oom_kills)
  rm -rf "$tmp/run"
  set +e
  out=$(bash -c "echo \$\$ > '$group/cgroup.procs' && exec mpirun -np $NP --oversubscribe --bind-to none '$GRAFT' train \
    --run.dir='$tmp/run' --data.path='$tmp/stories.h5' --model.dim=$DIM --model.hidden_dim=$HIDDEN --model.n_layers=$layers \
    --model.n_heads=16 --model.n_kv_heads=16 --model.max_seq_len=64 --train.seq_len=64 \
    --train.batch_size=$NP --train.micro_batch=1 --train.steps=2 --train.threads=1 --eval.every=0 --eval.batches=1 \
    --checkpoint.every=0 --checkpoint.keep_last=1 --dist.shard=$mode" 2>&1)
  rc=$?
  set -e
  local rss expected ended trained=false
  rss=$(grep -o 'peak resident set [0-9.]* MiB per rank (largest)' <<<"$out" | grep -o '[0-9.]*' | head -1 || true)
  expected=$(grep -o 'memory: expected peak about [0-9]* MiB per rank' <<<"$out" | grep -o '[0-9]*' | head -1 || true)
  if ((rc == 0)) && grep -q 'step 2/2' <<<"$out"; then
    trained=true ended=completed
  elif [[ "$(oom_kills)" != "$kills_before" ]]; then
    ended="killed by the kernel at the limit"
  else
    ended="exit $rc: $(grep -m1 -i 'error' <<<"$out" | tr -d '"\\\t' | cut -c1-160 || true)"
  fi
  echo "shard: $mode, $layers layers ($(params_of "$layers") parameters): $ended, peak ${rss:-?} MiB per rank" >&2
  printf '{"shard": "%s", "layers": %s, "parameters": %s, "trained": %s, "peak_rss_mib_per_rank": %s, "expected_mib_per_rank": %s, "ended": "%s"}' \
    "$mode" "$layers" "$(params_of "$layers")" "$trained" "${rss:-null}" "${expected:-null}" "$ended"
}
fits=$(run parameters "$LAYERS")
deeper=$(run parameters $((LAYERS + 4)))
none=$(run none "$LAYERS")
printf '{"bench": "zero3_fits", "limit_gb": %s, "np": %s, "model": {"dim": %s, "hidden_dim": %s, "vocab": %s}, "runs": [%s, %s, %s]}\n' \
  "$LIMIT_GB" "$NP" "$DIM" "$HIDDEN" "$VOCAB" "$fits" "$deeper" "$none"
