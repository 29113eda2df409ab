"""Independent reference for `graft eval`: a Llama forward pass written directly from llama2.c's
format description (../shared/data/llama2c/FORMAT.md), reading the .bin with NumPy, in PyTorch.
usage: llama2c_reference.py MODEL.bin "1 403 ..." [LOGITS.csv]
prints: <mean next-token cross-entropy> <max |logit - graft's logit|>"""
import struct
import sys

import numpy as np
import torch


def load(path):
    raw = open(path, "rb").read()
    dim, hidden, layers, heads, kv_heads, vocab, seq_len = struct.unpack("7i", raw[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    w = np.frombuffer(raw, dtype=np.float32, offset=28)
    head = dim // heads
    at = 0

    def take(*shape):
        nonlocal at
        n = int(np.prod(shape))
        out = torch.from_numpy(w[at:at + n].copy()).reshape(shape)
        at += n
        return out

    p = dict(emb=take(vocab, dim), rms_att=take(layers, dim), wq=take(layers, dim, dim),
             wk=take(layers, kv_heads * head, dim), wv=take(layers, kv_heads * head, dim),
             wo=take(layers, dim, dim), rms_ffn=take(layers, dim), w1=take(layers, hidden, dim),
             w2=take(layers, dim, hidden), w3=take(layers, hidden, dim), rms_final=take(dim))
    at += seq_len * head  # legacy rope tables
    p["cls"] = p["emb"] if shared else take(vocab, dim)
    return p, dict(dim=dim, layers=layers, heads=heads, kv_heads=kv_heads, head=head)


def rmsnorm(x, w):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def forward(p, c, ids):
    T = len(ids)
    x = p["emb"][torch.tensor(ids)]
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    i = torch.arange(0, c["head"], 2, dtype=torch.float64)[None, :]
    ang = pos * (10000.0 ** (-i / c["head"]))
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()

    def rope(v):  # v [T, H, D], interleaved pairs
        a, b = v[..., 0::2], v[..., 1::2]
        out = torch.empty_like(v)
        out[..., 0::2] = a * cos[:, None, :] - b * sin[:, None, :]
        out[..., 1::2] = a * sin[:, None, :] + b * cos[:, None, :]
        return out

    group = c["heads"] // c["kv_heads"]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for l in range(c["layers"]):
        h = rmsnorm(x, p["rms_att"][l])
        q = rope((h @ p["wq"][l].T).view(T, c["heads"], c["head"]))
        k = rope((h @ p["wk"][l].T).view(T, c["kv_heads"], c["head"]))
        v = (h @ p["wv"][l].T).view(T, c["kv_heads"], c["head"])
        out = torch.empty(T, c["heads"], c["head"])
        for hh in range(c["heads"]):
            kv = hh // group
            att = (q[:, hh] @ k[:, kv].T) / c["head"] ** 0.5 + mask
            out[:, hh] = torch.softmax(att, -1) @ v[:, kv]
        x = x + out.reshape(T, -1) @ p["wo"][l].T
        h = rmsnorm(x, p["rms_ffn"][l])
        x = x + (torch.nn.functional.silu(h @ p["w1"][l].T) * (h @ p["w3"][l].T)) @ p["w2"][l].T
    return rmsnorm(x, p["rms_final"]) @ p["cls"].T


def main():
    params, cfg = load(sys.argv[1])
    ids = [int(t) for t in sys.argv[2].split()]
    logits = forward(params, cfg, ids[:-1])
    loss = torch.nn.functional.cross_entropy(logits.double(), torch.tensor(ids[1:])).item()
    diff = 0.0
    if len(sys.argv) > 3:
        ours = torch.from_numpy(np.loadtxt(sys.argv[3], delimiter=",", dtype=np.float32).reshape(len(ids) - 1, -1))
        diff = (ours - logits).abs().max().item()
    print(f"{loss:.9f} {diff:.9g}")


if __name__ == "__main__":
    main()
