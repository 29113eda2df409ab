#!/usr/bin/env python3
"""PyTorch DistributedDataParallel peer of graft's training loop, for throughput comparison.

What it measures
  Optimizer steps per second (and tokens per second) of plain PyTorch training the same model on
  the same samples, in the same order, with the same step as `graft train`:
    * model: Llama-style decoder as src/model/transformer.cc (RMSNorm eps 1e-5, interleaved-pair RoPE,
      grouped-query attention, SwiGLU feed-forward, tied classifier), float32 on the CPU;
    * data: a `graft prepare` HDF5 file (/train/tokens int32); sample i is the window of
      seq_len + 1 tokens starting at i * seq_len; samples are drawn by a bit-exact port of graft's
      GlobalSampler (src/data/sampler.cc), so global batch b holds the same sequences at any
      world size and rank r's micro-step m reads [(m * world + r) * micro, ... + micro);
    * step (src/train/trainer.cc): gradient accumulation over batch / (micro * world) micro-steps
      of cross_entropy / accumulation (DDP's no_sync() on all but the last), DDP's gradient
      average, global-norm clipping, AdamW (betas 0.9/0.95, eps 1e-8, weight decay on matrices
      only) at the learning rate of graft's schedule (linear warm-up, cosine to min_lr).
  Initial weights are NOT graft's (torch.manual_seed(seed) + normal(0, 0.02), residual outputs
  scaled by 1/sqrt(2 n_layers), norms at 1): loss curves match graft's in shape, not digit for
  digit. Between world sizes of this script they do match (to float rounding) for the same
  global batch, which is a check of the sampler and the averaging.

  OMP_WAIT_POLICY defaults to passive (set before torch is imported), as bench/train_throughput.sh
  sets it for graft; with spinning OpenMP workers a busy or oversubscribed host can be 10x slower.
  Timing: rank 0's wall clock over the steps after the first --warmup-steps-excluded ones (the
  ranks pass a barrier before the clock starts). steps_per_s = timed steps / seconds;
  tokens_per_s = steps_per_s * batch_size * seq_len. Note that graft's own metrics.jsonl
  tokens_per_s counts from before step 1 (pass --warmup-steps-excluded 0 for that convention).

How to run (Debian's python3 with torch and h5py; gloo backend, loopback only)
  one process (no process group, no DDP wrapper; accumulation 2 with the defaults, as graft at
  np=1 with configs/demo_finetune.ini):
    python3 bench/ddp_peer.py --data runs/demo/stories.h5
  two ranks under Open MPI (rank, size and local size come from OMPI_COMM_WORLD_*):
    OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo \\
      mpirun -np 2 --bind-to none /usr/bin/python3 bench/ddp_peer.py --data runs/demo/stories.h5
  (as root, also OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1). --ddp forces a gloo
  group and the DDP wrapper at world size 1 too. Defaults are configs/demo_finetune.ini's shape.

Output: rank 0 prints one JSON line on stdout:
  {"bench": "ddp_peer", "world_size", "threads", "steps", "steps_per_s", "tokens_per_s",
   "losses": [global mean training loss of each step], plus "timed_steps", "accumulation",
   "micro_batch", "batch_size", "seq_len", "ddp", "compiled", "torch"}
Progress and errors go to stderr.
"""
import argparse
import json
import math
import os
import sys
import time

# As bench/train_throughput.sh does for graft: idle OpenMP threads sleep instead of spinning
# (must be set before libgomp starts; an OMP_WAIT_POLICY already in the environment wins).
os.environ.setdefault("OMP_WAIT_POLICY", "passive")
# PyTorch >= 2.4 starts its TCPStore on libuv by default, which Debian 13's torch 2.6 is built
# without ("use_libuv was requested but PyTorch was build without libuv support"); the classic
# store works on every version (1.13 ignores the variable).
os.environ.setdefault("USE_LIBUV", "0")

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

MASK64 = (1 << 64) - 1


def log(msg):
    print(f"ddp_peer: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Data: graft's token dataset and GlobalSampler.


def mix64(x):
    """splitmix64 finaliser, as graft::mix64 (uint64 arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


class GlobalSampler:
    """Port of graft::GlobalSampler: global batch b is slice k of epoch e's permutation."""

    def __init__(self, num_samples, global_batch, seed):
        if global_batch <= 0:
            raise ValueError("global batch size must be positive")
        if num_samples < global_batch:
            raise ValueError(f"the dataset has {num_samples} samples, fewer than one global batch of "
                             f"{global_batch}; use more data, a smaller batch or a shorter seq_len")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed & MASK64
        self._epoch = -1
        self._perm = None

    def batches_per_epoch(self):
        return self.num_samples // self.global_batch

    def permutation(self, epoch):
        if epoch != self._epoch:
            perm = list(range(self.num_samples))
            state = mix64(self.seed ^ mix64((epoch + 1) & MASK64))
            for i in range(self.num_samples - 1, 0, -1):  # Fisher-Yates
                state = mix64(state)
                j = state % (i + 1)
                perm[i], perm[j] = perm[j], perm[i]
            self._perm = np.asarray(perm, dtype=np.int64)
            self._epoch = epoch
        return self._perm

    def micro_batch(self, batch, micro_step, rank, world, micro):
        bpe = self.batches_per_epoch()
        perm = self.permutation(batch // bpe)
        offset = (batch % bpe) * self.global_batch + (micro_step * world + rank) * micro
        if offset + micro > (batch % bpe + 1) * self.global_batch:
            raise RuntimeError(f"micro-batch outside its global batch (micro_step {micro_step}, rank {rank})")
        return perm[offset:offset + micro]


class TokenDataset:
    """One split of a graft-tokens HDF5 file, held in memory as int64."""

    def __init__(self, path, split, seq_len):
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            if isinstance(fmt, bytes):
                fmt = fmt.decode()
            if fmt != "graft-tokens":
                raise ValueError(f"{path}: not a graft token dataset (make one with `graft prepare`)")
            if int(f.attrs.get("version", -1)) != 1:
                raise ValueError(f"{path}: dataset format version {f.attrs.get('version')} is not supported")
            self.vocab_size = int(f.attrs["vocab_size"])
            name = f"/{split}/tokens"
            if name not in f:
                raise ValueError(f"{path}: has no '{split}' split")
            tokens = f[name][...]
        if tokens.ndim != 1 or tokens.dtype != np.int32:
            raise ValueError(f"{path}:{name}: expected a 1-D int32 dataset")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ValueError(f"{path}:{name}: tokens outside the vocabulary of {self.vocab_size}")
        self.tokens = tokens.astype(np.int64)
        self.seq_len = seq_len
        self._window = np.arange(seq_len + 1, dtype=np.int64)

    def num_samples(self):
        n = self.tokens.size
        return 0 if n <= self.seq_len else (n - 1) // self.seq_len

    def gather(self, indices):
        """[len(indices), seq_len + 1] int64 tensor of the samples' windows."""
        starts = np.asarray(indices, dtype=np.int64) * self.seq_len
        return torch.from_numpy(self.tokens[starts[:, None] + self._window[None, :]])


# ---------------------------------------------------------------------------------------------
# Model: src/model/transformer.cc, batched.


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate(x, cos, sin):
    """Interleaved-pair rotary embedding: (a, b) -> (a cos - b sin, a sin + b cos) on pairs
    (2i, 2i+1). x [B, T, H, D]; cos/sin [T, D/2]."""
    B, T, H, D = x.shape
    pairs = x.reshape(B, T, H, D // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]  # [T, 1, D/2]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).reshape(B, T, H, D)


class Attention(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        kv_dim = n_kv_heads * self.head_dim
        self.wq = nn.Linear(dim, dim, bias=False)
        self.wk = nn.Linear(dim, kv_dim, bias=False)
        self.wv = nn.Linear(dim, kv_dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = rotate(self.wq(x).view(B, T, self.n_heads, self.head_dim), cos, sin)
        k = rotate(self.wk(x).view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        group = self.n_heads // self.n_kv_heads
        if group > 1:  # query head h reads kv head h // group
            k = k.repeat_interleave(group, dim=2)
            v = v.repeat_interleave(group, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D]
        scores = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        scores = scores.masked_fill(mask, float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.wo(out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden_dim):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, dim, hidden_dim, n_heads, n_kv_heads):
        super().__init__()
        self.attention_norm = RMSNorm(dim)
        self.attention = Attention(dim, n_heads, n_kv_heads)
        self.ffn_norm = RMSNorm(dim)
        self.feed_forward = FeedForward(dim, hidden_dim)

    def forward(self, x, cos, sin, mask):
        h = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    def __init__(self, vocab_size, dim, hidden_dim, n_layers, n_heads, n_kv_heads, seq_len, rope_theta=10000.0):
        super().__init__()
        if dim % n_heads or (dim // n_heads) % 2 or n_heads % n_kv_heads:
            raise ValueError("need dim % n_heads == 0, an even head size and n_heads % n_kv_heads == 0")
        self.n_layers = n_layers
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(Block(dim, hidden_dim, n_heads, n_kv_heads) for _ in range(n_layers))
        self.norm = RMSNorm(dim)
        # Constant tables, kept as plain attributes (not buffers: nothing for DDP to broadcast).
        # As llama.cc: frequencies theta^(-2i/D) in float64, cast to float32, angles in float32.
        head_dim = dim // n_heads
        i = torch.arange(head_dim // 2, dtype=torch.float64)
        freq = torch.pow(torch.tensor(rope_theta, dtype=torch.float64), -2.0 * i / head_dim).float()
        angle = torch.outer(torch.arange(seq_len, dtype=torch.float32), freq)
        self.rope_cos, self.rope_sin = torch.cos(angle), torch.sin(angle)
        self.causal = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)

    def initialise(self, seed):
        torch.manual_seed(seed)
        out_std = 0.02 / math.sqrt(2.0 * self.n_layers)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if "norm" in name:
                    p.fill_(1.0)
                else:
                    residual_out = name.endswith("wo.weight") or name.endswith("w2.weight")
                    p.normal_(0.0, out_std if residual_out else 0.02)

    def forward(self, ids, targets):
        """Mean next-token cross-entropy of ids [B, T] against targets [B, T]."""
        T = ids.shape[1]
        cos, sin, mask = self.rope_cos[:T], self.rope_sin[:T], self.causal[:T, :T]
        x = self.tok_embeddings(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        logits = F.linear(self.norm(x), self.tok_embeddings.weight)  # tied classifier
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


# ---------------------------------------------------------------------------------------------
# Training.


def schedule(step, lr, min_lr, warmup, total):
    """graft::Schedule::at (1-based step)."""
    if warmup > 0 and step <= warmup:
        return lr * step / warmup
    if total <= warmup:
        return lr
    progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def env_int(*names, default):
    for name in names:
        if os.environ.get(name):
            return int(os.environ[name])
    return default


def default_threads(local_size):
    try:
        cores = len(os.sched_getaffinity(0))  # as graft's defaultThreads (sched_getaffinity)
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_size))


def parse_args():
    p = argparse.ArgumentParser(description="PyTorch DDP peer of graft's training loop (prints one JSON line)")
    p.add_argument("--data", required=True, help="graft-tokens HDF5 file (graft prepare)")
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--hidden-dim", type=int, default=256)
    p.add_argument("--n-layers", type=int, default=3)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--n-kv-heads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16, help="global batch, in sequences")
    p.add_argument("--micro-batch", type=int, default=8, help="per rank, per forward/backward")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5, help="learning-rate warm-up steps")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0, help="global-norm clip; 0 = off")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="0 = cores / ranks on this host")
    p.add_argument("--warmup-steps-excluded", type=int, default=5, help="first steps left out of the timing")
    p.add_argument("--port", type=int, default=29533, help="TCP port on 127.0.0.1 for the gloo rendezvous")
    p.add_argument("--init", default="", help="start from the /model tensors of a graft checkpoint (.h5)")
    p.add_argument("--ddp", action="store_true", help="use a gloo group and DDP even at world size 1")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (PyTorch >= 2; the inductor backend compiles C++ with g++ "
                        "during the first steps, which --warmup-steps-excluded leaves out of the timing)")
    return p.parse_args()


def main():
    a = parse_args()
    rank = env_int("OMPI_COMM_WORLD_RANK", "RANK", default=0)
    world = env_int("OMPI_COMM_WORLD_SIZE", "WORLD_SIZE", default=1)
    local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", "LOCAL_WORLD_SIZE", default=world)

    def fail(msg):
        if rank == 0:
            log(msg)
        sys.exit(2)

    if a.steps <= 0 or a.micro_batch <= 0 or a.seq_len <= 0:
        fail("--steps, --micro-batch and --seq-len must be positive")
    if a.batch_size <= 0 or a.batch_size % (a.micro_batch * world):
        fail(f"--batch-size {a.batch_size} is not a positive multiple of micro_batch x ranks = "
             f"{a.micro_batch} x {world}")
    if not 0 <= a.warmup_steps_excluded < a.steps:
        fail("--warmup-steps-excluded must be in [0, --steps)")
    accumulation = a.batch_size // (a.micro_batch * world)
    threads = a.threads if a.threads > 0 else default_threads(local_size)
    torch.set_num_threads(threads)

    use_ddp = world > 1 or a.ddp
    if use_ddp:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a.port}", rank=rank, world_size=world)

    data = TokenDataset(a.data, "train", a.seq_len)
    sampler = GlobalSampler(data.num_samples(), a.batch_size, a.seed)
    model = Llama(data.vocab_size, a.dim, a.hidden_dim, a.n_layers, a.n_heads, a.n_kv_heads, a.seq_len)
    model.initialise(a.seed)
    if a.init:  # same starting weights as graft's --model.path=<checkpoint>, so the loss curves compare
        with h5py.File(a.init, "r") as f, torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(torch.from_numpy(f["model"][name][()]))
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    # DDP broadcasts rank 0's parameters at construction; the model has no buffers to keep in sync.
    net = nn.parallel.DistributedDataParallel(model, broadcast_buffers=False) if use_ddp else model
    if a.compile:
        if not hasattr(torch, "compile"):
            fail(f"--compile needs PyTorch 2 or later; this is {torch.__version__}")
        net = torch.compile(net)
    if rank == 0:
        n_params = sum(p.numel() for p in model.parameters())
        log(f"{n_params} parameters, {data.num_samples()} training sequences, world {world}, "
            f"{threads} thread(s) each, micro {a.micro_batch}, accumulation {accumulation}, ddp {use_ddp}")

    losses = []
    t0 = None
    for step in range(1, a.steps + 1):
        if step == a.warmup_steps_excluded + 1:
            if use_ddp:
                dist.barrier()
            t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for m in range(accumulation):
            batch = data.gather(sampler.micro_batch(step - 1, m, rank, world, a.micro_batch))
            inputs, targets = batch[:, :-1], batch[:, 1:]
            if use_ddp and m < accumulation - 1:
                with net.no_sync():
                    loss = net(inputs, targets) / accumulation
                    loss.backward()
            else:
                loss = net(inputs, targets) / accumulation
                loss.backward()
            loss_sum += loss.item()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        lr = schedule(step, a.lr, a.min_lr, a.warmup, a.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        losses.append(loss_sum)
        if rank == 0 and (step % 10 == 0 or step == a.steps):
            log(f"step {step}/{a.steps} | local loss {loss_sum:.4f} | lr {lr:.2e}")
    elapsed = time.perf_counter() - t0

    all_losses = torch.tensor(losses, dtype=torch.float64)
    if use_ddp:
        dist.all_reduce(all_losses)  # sum over ranks
    all_losses /= world
    timed = a.steps - a.warmup_steps_excluded
    steps_per_s = timed / elapsed
    if rank == 0:
        print(json.dumps({"bench": "ddp_peer", "world_size": world, "threads": threads, "steps": a.steps,
                          "steps_per_s": steps_per_s, "tokens_per_s": steps_per_s * a.batch_size * a.seq_len,
                          "losses": all_losses.tolist(), "timed_steps": timed, "accumulation": accumulation,
                          "micro_batch": a.micro_batch, "batch_size": a.batch_size, "seq_len": a.seq_len,
                          "ddp": use_ddp, "compiled": a.compile, "torch": torch.__version__}), flush=True)
    if use_ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
