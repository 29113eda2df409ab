#!/usr/bin/env python3
"""The PyTorch peer of graft's bf16 training throughput (issue 13, bench/gpu_check.sh).

The same Llama-style model graft trains (RMSNorm, rotary embeddings, grouped-query attention,
SwiGLU, untied output), the same batch shape and the same precision policy as train.precision =
bf16: float32 master weights and AdamW state, matrix products and attention in bfloat16 (autocast),
the loss in float32; fused AdamW where this PyTorch has it. Random token ids of the same shape: the
throughput does not depend on the text. Timed after warm-up, with the device synchronised, median of
the timed steps.

usage: llama_peer.py --dim 768 --layers 14 --heads 12 --kv-heads 12 --hidden 2048 --vocab 260
                     --seq-len 1024 --micro-batch 8 --accumulation 2 --steps 12 --warmup 3
                     [--device cuda] [--compile] [--precision bf16|fp32]
prints one JSON line: tokens_per_s, parameters, step_seconds (median), compiled, device, torch.
"""
import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


class Block(torch.nn.Module):
    def __init__(self, dim, heads, kv_heads, hidden):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.attention_norm = torch.nn.Parameter(torch.ones(dim))
        self.ffn_norm = torch.nn.Parameter(torch.ones(dim))
        self.wqkv = torch.nn.Linear(dim, dim + 2 * kv_heads * self.head_dim, bias=False)
        self.wo = torch.nn.Linear(dim, dim, bias=False)
        self.w13 = torch.nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = torch.nn.Linear(hidden, dim, bias=False)

    @staticmethod
    def norm(x, w):  # float32, as graft's
        x = x.float()
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.wqkv(self.norm(x, self.attention_norm)).split(
            [self.heads * self.head_dim, self.kv_heads * self.head_dim, self.kv_heads * self.head_dim], -1)
        q = q.view(B, T, self.heads, self.head_dim)
        k = k.view(B, T, self.kv_heads, self.head_dim)
        v = v.view(B, T, self.kv_heads, self.head_dim)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.kv_heads != self.heads:
            k = k.repeat_interleave(self.heads // self.kv_heads, 2)
            v = v.repeat_interleave(self.heads // self.kv_heads, 2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # PyTorch 1.x
            s = (q @ k.transpose(-1, -2)).float() / self.head_dim ** 0.5
            s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1), float("-inf"))
            y = s.softmax(-1).to(v.dtype) @ v
        x = x + self.wo(y.transpose(1, 2).reshape(B, T, -1))
        gate, up = self.w13(self.norm(x, self.ffn_norm)).chunk(2, -1)
        return x + self.w2(F.silu(gate) * up)


def rotate(x, cos, sin):  # interleaved pairs, as graft's (llama2.c)
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), -1).flatten(-2).to(x.dtype)


class Llama(torch.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed = torch.nn.Embedding(a.vocab, a.dim)
        self.layers = torch.nn.ModuleList(Block(a.dim, a.heads, a.kv_heads, a.hidden) for _ in range(a.layers))
        self.norm = torch.nn.Parameter(torch.ones(a.dim))
        self.output = torch.nn.Linear(a.dim, a.vocab, bias=False)
        half = a.dim // a.heads // 2
        freq = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / (a.dim // a.heads))
        angle = torch.outer(torch.arange(a.seq_len, dtype=torch.float64), freq).float()
        self.register_buffer("cos", angle.cos(), persistent=False)
        self.register_buffer("sin", angle.sin(), persistent=False)

    def forward(self, ids, targets):
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, self.cos[: ids.shape[1]], self.sin[: ids.shape[1]])
        logits = self.output(Block.norm(x, self.norm))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name, default in [("dim", 768), ("layers", 14), ("heads", 12), ("kv-heads", 12), ("hidden", 2048),
                          ("vocab", 260), ("seq-len", 1024), ("micro-batch", 8), ("accumulation", 2),
                          ("steps", 12), ("warmup", 3)]:
        p.add_argument("--" + name, type=int, default=default)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--compile", action="store_true", help="torch.compile the model (PyTorch 2.x)")
    a = p.parse_args()
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = Llama(a).to(device)
    parameters = sum(t.numel() for t in model.parameters())
    step_model = model
    if a.compile:
        if not hasattr(torch, "compile"):
            print(json.dumps({"error": "torch.compile needs PyTorch 2.x", "torch": torch.__version__}))
            return 2
        step_model = torch.compile(model)
    fused = {"fused": True} if device.type == "cuda" and "fused" in torch.optim.AdamW.__init__.__code__.co_varnames else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, **fused)
    ids = torch.randint(a.vocab, (a.micro_batch, a.seq_len + 1), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16")

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = []
    for step in range(a.warmup + a.steps):
        sync()
        t0 = time.perf_counter()
        for _ in range(a.accumulation):
            with autocast:
                loss = step_model(ids[:, :-1], ids[:, 1:]) / a.accumulation
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        if step >= a.warmup:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({"tokens_per_s": a.micro_batch * a.accumulation * a.seq_len / median, "parameters": parameters,
                      "step_seconds": median, "compiled": a.compile, "fused_adamw": bool(fused),
                      "device": str(device), "precision": a.precision, "torch": torch.__version__,
                      "final_loss": float(loss) * a.accumulation}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
