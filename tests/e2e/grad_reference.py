"""Independent reference for one training step's loss and gradient norm: the llama2.c forward of
llama2c_reference.py in float64 PyTorch autograd, over every window of a token dataset's train
split (window i = tokens[i*S : i*S + S + 1]). When the global batch is the whole split, graft's
first step averages exactly these windows, whatever its micro-batches, accumulation and ranks.
usage: grad_reference.py MODEL.bin DATA.h5 SEQ_LEN     prints: <mean cross-entropy> <gradient 2-norm>"""
import os
import sys

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama2c_reference import forward, load  # noqa: E402


def main():
    params, cfg = load(sys.argv[1])
    seq = int(sys.argv[3])
    tokens = np.asarray(h5py.File(sys.argv[2], "r")["train/tokens"][()], dtype=np.int64)
    windows = (len(tokens) - 1) // seq
    leaves = {}
    for key, value in params.items():  # a tied classifier is the embedding itself: one leaf
        if id(value) not in leaves:
            leaves[id(value)] = value.double().requires_grad_(True)
        params[key] = leaves[id(value)]
    torch.set_default_dtype(torch.float64)
    total = 0.0
    loss = 0
    for i in range(windows):
        ids = tokens[i * seq:i * seq + seq + 1].tolist()
        logits = forward(params, cfg, ids[:-1])
        loss = loss + torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:])) / windows
    loss.backward()
    norm = torch.sqrt(sum((leaf.grad ** 2).sum() for leaf in leaves.values())).item()
    total = loss.item()
    print(f"{total:.12g} {norm:.12g}")


if __name__ == "__main__":
    main()
