#!/bin/bash
# Issue 13's GPU check: one script that, on a GPU machine with no network, sets up the carried
# dependencies, builds graft for CUDA with ninja, and writes OUT/summary.json (and a log per step) of
#   unit      the unit tests
#   gpu       the gpu tests: CUDA vs CPU forward, backward and AdamW (fp32, TF32 off), the NCCL
#             communicator and gradient reducer at one rank
#   curves    a stories260K fine-tune, 20 steps, train.device = cpu vs cuda: the loss curves (also
#             under ZeRO-3, and at two ranks through NCCL, replicated and ZeRO-3, with the compute
#             stream or the host waiting for collectives)
#   bf16      bf16 full fine-tuning of a ~100M Llama at seq_len 1024: graft's tokens/s and MFU next to
#             the PyTorch peer (bench/llama_peer.py) on the same model shape and batch, eager and
#             torch.compile
#   hf        graft's Hugging Face export (of the CUDA fine-tune) and PEFT export (of a LoRA run)
#             loaded by transformers and peft: their loss on fixed ids against graft eval's
# Each step has a time limit, and all of them together BUDGET seconds (default 540): a step that would
# start past it is recorded as skipped, so the summary is always written within the device tool's 600 s.
#
# Here (a Debian machine with network), once:   bash bench/device/fetch-devdeps.sh
#                                                bash bench/gpu_check.sh --prepare   (.gpudata/)
# There (the device tool):  run(command="bash bench/gpu_check.sh $OUT", carry=[".devdeps", ".gpudata"])
# Dry run on a CPU machine (the same steps, cpu everywhere, the existing build/):
#                           GPU_CHECK_CPU=1 bash bench/gpu_check.sh /tmp/gpu_check
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  mkdir -p .gpudata
  grep -qx '/.gpudata/' .git/info/exclude || echo '/.gpudata/' >> .git/info/exclude
  cp ../shared/data/llama2c/stories260K.bin .gpudata/
  mkdir -p .gpudata/data && cp -r ../shared/data/. .gpudata/data/  # the unit tests' data (5 MiB)
  [ -f runs/demo/stories.h5 ] || bash launcher/demo.sh
  cp runs/demo/stories.h5 .gpudata/
  ls -la .gpudata
  exit 0
fi
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR | --prepare}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
W=$(mktemp -d)
START=$(date +%s)
BUDGET=${BUDGET:-540}  # seconds for all steps; the device tool stops a command at 600
: > "$OUT/steps.tsv"

# step NAME SECONDS COMMAND...: runs it with a time limit, its output in OUT/NAME.log, and records
# name, exit code and seconds in OUT/steps.tsv.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s) left=$((BUDGET - ($(date +%s) - START)))
  if [ "$left" -le 10 ]; then  # past the budget: the summary still gets written
    printf '%s\tskipped\t0\n' "$name" >> "$OUT/steps.tsv"
    echo "[$(($(date +%s) - START)) s] $name: skipped (BUDGET=$BUDGET s spent)"
    return 124
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  timeout "$limit" bash -c "$*" > "$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >> "$OUT/steps.tsv"
  echo "[$(($(date +%s) - START)) s] $name: exit $rc"
  return $rc
}

if [ -n "${GPU_CHECK_CPU:-}" ]; then
  DEV=cpu B=build PY=/usr/bin/python3
  source /tmp/mpienv.sh 2>/dev/null || true
else
  DEV=cuda B=build-cuda
  source bench/device/device-env.sh
  PY=$(command -v python3)
  SITE=$($PY -c 'import site;print(site.getsitepackages()[0])')
  # LibTorch's CMake enables the CUDA language: name nvcc in case PATH lacks it.
  NVCC=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  step configure 120 "cmake -G Ninja -B $B -DGRAFT_WITH_CUDA=ON -DGRAFT_WITH_NCCL=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    ${NVCC:+-DCMAKE_CUDA_COMPILER=$NVCC} \
    -DCMAKE_PREFIX_PATH='$($PY -c 'import torch;print(torch.utils.cmake_prefix_path)');$GRAFT_DEPS_PREFIX' \
    $GRAFT_DEPS_CMAKE -DGRAFT_PYTHON=$PY -DGRAFT_SHARED_DATA=$PWD/.gpudata/data -DNCCL_INCLUDE_DIR=$SITE/nvidia/nccl/include \
    -DNCCL_LIBRARY=$SITE/nvidia/nccl/lib/libnccl.so.2" || tail -20 "$OUT/configure.log"
  # -k 0: a compile error does not hide the others (one run on the device shows them all).
  [ -f $B/build.ninja ] && { step build 330 "ninja -C $B -j16 -k 0 graft unit_tests gpu_tests" || tail -30 "$OUT/build.log"; }
fi
$PY -c "import json,torch; print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda,
  'gpu': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))" > "$OUT/env.json" 2>&1
G=$B/launcher/graft

step unit 60 "$B/tests/unit_tests --gtest_output=json:$OUT/unit.json"
step gpu 90 "$B/tests/gpu_tests --gtest_output=json:$OUT/gpu.json"

# The steps run in the order of what matters most, in case the budget runs out: the device
# curve and the bf16 throughput next to PyTorch eager first, then the CPU curve and NCCL.
# Loss curves, CPU vs CUDA: stories260K fine-tuned on the demo's stories, 20 steps, fp32.
FT="train --config configs/finetune_stories260k.ini --model.path=.gpudata/stories260K.bin --data.path=.gpudata/stories.h5 \
  --train.steps=20 --train.log_every=5 --eval.every=0 --checkpoint.every=20 --train.tensorboard=false"
step curve_dev 60 "$G $FT --run.dir=$W/dev --train.device=$DEV"

# bf16 full fine-tuning of a ~100M Llama (14 layers, dim 768, 12 heads, SwiGLU 2048) at seq_len 1024,
# random init (the throughput does not depend on the weights), against the PyTorch peer.
SHAPE="--dim 768 --layers 14 --heads 12 --kv-heads 12 --hidden 2048 --seq-len 1024 --micro-batch 8 --accumulation 2"
GRAFT_STEPS=15 PEER_STEPS=10
if [ -n "${GPU_CHECK_CPU:-}" ]; then  # a dry run: the shape of the steps, not their size
  SHAPE="--dim 64 --layers 2 --heads 4 --kv-heads 4 --hidden 128 --seq-len 128 --micro-batch 2 --accumulation 2"
  GRAFT_STEPS=4 PEER_STEPS=2
fi
read -r DIM LAYERS HEADS HIDDEN SEQ MICRO ACC < <(echo "$SHAPE" | awk '{print $2, $4, $6, $10, $12, $14, $16}')
step bf16_graft 150 "$G train --run.dir=$W/bf16 --data.path=.gpudata/stories.h5 --model.dim=$DIM --model.n_layers=$LAYERS \
  --model.n_heads=$HEADS --model.n_kv_heads=$HEADS --model.hidden_dim=$HIDDEN --model.max_seq_len=$SEQ --model.tied=false \
  --train.seq_len=$SEQ --train.micro_batch=$MICRO --train.batch_size=$((MICRO * ACC)) --train.steps=$GRAFT_STEPS \
  --train.warmup=2 --train.lr=1e-4 --eval.every=0 --checkpoint.every=0 --train.tensorboard=false \
  --train.precision=bf16 --train.device=$DEV --train.log_every=1"
VOCAB=$($PY -c "import h5py,sys; f=h5py.File('.gpudata/stories.h5','r'); print(int(f.attrs.get('vocab_size', 260)))" 2>/dev/null || echo 260)
step bf16_peer_eager 120 "$PY bench/llama_peer.py $SHAPE --vocab $VOCAB --device $DEV --steps $PEER_STEPS"

# The CPU curve the device curves are compared with.
step curve_cpu 120 "$G $FT --run.dir=$W/cpu --train.device=cpu"
# The same on the device under ZeRO-3 (each unit gathered around its use; one rank), and at two
# ranks on the one GPU through NCCL: NCCL refuses two ranks on one GPU unless each believes it is
# on a host of its own (NCCL_HOSTID), talking over loopback sockets (correctness, not speed).
step curve_zero3 60 "$G $FT --run.dir=$W/zero3 --train.device=$DEV --dist.shard=parameters"
BACKEND=nccl
[ -n "${GPU_CHECK_CPU:-}" ] && BACKEND=mpi
step curve_np2 90 "mpirun -np 2 --oversubscribe -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1 -x NCCL_SOCKET_IFNAME=lo \
  bash -c 'NCCL_HOSTID=graft\$OMPI_COMM_WORLD_RANK exec \"\$@\"' rank $G $FT --run.dir=$W/np2 --train.device=$DEV \
  --dist.backend=$BACKEND --train.threads=4"
# ZeRO-3 at two ranks through NCCL: the gathers, releases and refills of every unit, waited on by
# the compute stream (Note [completion on the device]), where ordering mistakes would show.
step curve_np2_zero3 90 "mpirun -np 2 --oversubscribe -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1 -x NCCL_SOCKET_IFNAME=lo \
  bash -c 'NCCL_HOSTID=graft\$OMPI_COMM_WORLD_RANK exec \"\$@\"' rank $G $FT --run.dir=$W/np2_zero3 --train.device=$DEV \
  --dist.backend=$BACKEND --train.threads=4 --dist.shard=parameters"

step bf16_peer_compile 150 "$PY bench/llama_peer.py $SHAPE --vocab $VOCAB --device $DEV --steps $PEER_STEPS --compile"

# Hugging Face and PEFT exports read by transformers and peft (where that machine has them).
IDS="1 403 407 261 378 429 271 260 301 285 266 1 403"
LORA="train --config configs/finetune_stories260k.ini --model.path=.gpudata/stories260K.bin --data.path=.gpudata/stories.h5 \
  --train.steps=5 --eval.every=0 --checkpoint.every=5 --train.tensorboard=false --transfer.mode=lora --train.device=$DEV"
step hf 120 "set -e
  CK=\$(ls $W/dev/checkpoints/step-*.h5 | tail -1)
  $G export --model \$CK --format hf --out $W/hf
  $G eval --model \$CK --ids '$IDS' > $W/graft_eval.json
  $G export --model .gpudata/stories260K.bin --format hf --out $W/base
  $G $LORA --run.dir=$W/lora
  LK=\$(ls $W/lora/checkpoints/step-*.h5 | tail -1)
  $G export --model \$LK --format peft --out $W/peft
  $G eval --model \$LK --ids '$IDS' > $W/graft_lora.json
  $PY - <<EOF
import json, torch
ids = torch.tensor([[int(t) for t in '$IDS'.split()]])
def loss(model):
    with torch.no_grad():
        return float(model(ids, labels=ids).loss)
from transformers import AutoModelForCausalLM
full = AutoModelForCausalLM.from_pretrained('$W/hf', torch_dtype=torch.float32)
out = {'hf_loss': loss(full), 'graft_loss': json.load(open('$W/graft_eval.json'))['loss']}
try:
    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained('$W/base', torch_dtype=torch.float32)
    out['peft_loss'] = loss(PeftModel.from_pretrained(base, '$W/peft'))
    out['graft_lora_loss'] = json.load(open('$W/graft_lora.json'))['loss']
except ImportError as e:
    out['peft'] = 'not installed: ' + str(e)
print(json.dumps(out))
EOF"

# Last, as the least needed: the two-rank curve again with the host waiting for each NCCL
# collective (GRAFT_NCCL_WAIT=host) instead of the compute stream (Note [completion on the device]):
# the same losses, bit for bit, or the stream ordering is wrong.
step curve_np2_host 90 "mpirun -np 2 --oversubscribe -x GRAFT_NCCL_WAIT=host -x NCCL_P2P_DISABLE=1 -x NCCL_SHM_DISABLE=1 \
  -x NCCL_SOCKET_IFNAME=lo bash -c 'NCCL_HOSTID=graft\$OMPI_COMM_WORLD_RANK exec \"\$@\"' rank $G $FT --run.dir=$W/np2_host \
  --train.device=$DEV --dist.backend=$BACKEND --train.threads=4"

# The summary.
LAYERS=$LAYERS SEQ=$SEQ DIM=$DIM $PY - "$OUT" "$W" <<'EOF'
import json, os, re, statistics, sys
out, w = sys.argv[1], sys.argv[2]
def read_json_line(path):
    try:
        lines = [l for l in open(path) if l.startswith('{')]
        return json.loads(lines[-1]) if lines else None
    except OSError:
        return None
def losses(run):
    try:
        return [json.loads(l)['loss'] for l in open(os.path.join(run, 'metrics.jsonl')) if '"loss"' in l and '"step"' in l]
    except OSError:
        return []
def gtest(name):
    try:
        j = json.load(open(os.path.join(out, name + '.json')))
    except OSError:
        return None
    tests = [t for s in j['testsuites'] for t in s['testsuite']]
    return {'tests': len(tests), 'failed': sum(1 for t in tests if t.get('failures')),
            'skipped': sum(1 for t in tests if t.get('result') == 'SKIPPED')}
s = {'env': read_json_line(os.path.join(out, 'env.json')),
     'steps': [dict(zip(('step', 'exit', 'seconds'), l.split('\t'))) for l in open(os.path.join(out, 'steps.tsv')).read().split('\n') if l],
     'unit': gtest('unit'), 'gpu': gtest('gpu')}
def apart(a, b):
    return max((abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b)), default=None) if len(a) == len(b) and a else None
cpu = losses(os.path.join(w, 'cpu'))
s['curves'] = {'cpu': cpu}
for name in ('dev', 'zero3', 'np2', 'np2_zero3', 'np2_host'):
    got = losses(os.path.join(w, name))
    s['curves'][name] = got
    s['curves'][name + '_max_relative_difference_to_cpu'] = apart(cpu, got)
s['curves']['np2_stream_wait_equals_host_wait'] = bool(s['curves']['np2']) and s['curves']['np2'] == s['curves']['np2_host']
bf = [json.loads(l) for l in open(os.path.join(w, 'bf16', 'metrics.jsonl'))] if os.path.exists(os.path.join(w, 'bf16', 'metrics.jsonl')) else []
steps = [r for r in bf if 'step' in r and 'tokens_per_s' in r]
eager, compiled = read_json_line(os.path.join(out, 'bf16_peer_eager.log')), read_json_line(os.path.join(out, 'bf16_peer_compile.log'))
g = {}
if steps and eager and 'parameters' in eager:
    # tokens/s over the later steps (the cumulative rate after step 3 is diluted by start-up less)
    t = [r['elapsed_s'] for r in steps]
    tok = [r['tokens'] for r in steps]
    later = len(t) // 3
    g['tokens_per_s'] = (tok[-1] - tok[later]) / max(t[-1] - t[later], 1e-9)
    P = eager['parameters']
    L, T, D = (int(os.environ[k]) for k in ('LAYERS', 'SEQ', 'DIM'))
    # 6 per parameter per token (forward and backward) plus causal attention's q k^T and p v:
    # 12 L T D per token for full attention, half of it causal.
    flops_per_token = 6 * P + 6 * L * T * D
    g['parameters_peer'] = P
    g['flops_per_token'] = flops_per_token
    # The H200's dense bf16 peak by its data sheet (989 TFLOP/s), and what PyTorch reaches on an
    # 8192^3 bf16 matmul there (790 TFLOP/s, ../shared/device/README.md).
    g['mfu'] = g['tokens_per_s'] * flops_per_token / 989e12
    g['mfu_of_measured_matmul_peak'] = g['tokens_per_s'] * flops_per_token / 790e12
    g['vs_peer_eager'] = g['tokens_per_s'] / eager['tokens_per_s']
    if compiled and 'tokens_per_s' in compiled:
        g['vs_peer_compile'] = g['tokens_per_s'] / compiled['tokens_per_s']
s['bf16'] = {'graft': g, 'peer_eager': eager, 'peer_compile': compiled}
s['hf'] = read_json_line(os.path.join(out, 'hf.log'))
json.dump(s, open(os.path.join(out, 'summary.json'), 'w'), indent=1)
print(json.dumps(s)[:3000])
EOF
echo "total $(($(date +%s) - START)) s"
rm -rf "$W"
