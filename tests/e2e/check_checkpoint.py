"""Reads a graft checkpoint with h5py (not through graft) and checks the layout documented in
docs/checkpoint-format.md and every manifest line against zlib's CRC-32 of the tensor's bytes (a
sharded run's checksums are combined from its ranks' rows); then runs the independent PyTorch
forward of llama2c_reference.py on its /model weights.
usage: check_checkpoint.py CKPT.h5 STEP WORLD_SIZE "ids"   prints: loss <mean cross-entropy>"""
import os
import sys
import zlib

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama2c_reference import forward  # noqa: E402


def fail(msg):
    print("checkpoint layout: " + msg)
    sys.exit(1)


def main():
    path, step, world, ids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(t) for t in sys.argv[4].split()]
    f = h5py.File(path, "r")
    a = f.attrs
    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)
    if text(a["format"]) != "graft-checkpoint" or int(a["version"]) != 2 or int(a["complete"]) != 1:
        fail("bad root attributes %r" % dict(a))
    if int(a["step"]) != step or int(a["world_size"]) != world:
        fail("step/world_size %s/%s" % (a["step"], a["world_size"]))
    if "[train]" not in text(a["config"]):
        fail("config attribute lacks [train]")
    listed = 0
    manifest = np.asarray(f["manifest"][()], dtype=np.uint8).tobytes().decode()
    if text(a["manifest"]) != manifest:
        fail("the root attribute manifest (the copy for version-1 readers) differs from dataset /manifest")
    for line in manifest.splitlines():
        obj, crc, size = line.rsplit(" ", 2)
        data = np.ascontiguousarray(f[obj][()]).tobytes()
        if len(data) != int(size) or zlib.crc32(data) != int(crc):
            fail("manifest line %r: the tensor has %d bytes, CRC-32 %d" % (line, len(data), zlib.crc32(data)))
        listed += 1
    if listed < 3:
        fail("manifest lists %d tensors" % listed)
    # Every dataset of the file but the manifest itself is listed: one it leaves out would never be
    # verified.
    objects = {line.rsplit(" ", 2)[0] for line in manifest.splitlines()}
    datasets = []
    f.visititems(lambda name, item: datasets.append("/" + name) if isinstance(item, h5py.Dataset) else None)
    unlisted = sorted(set(datasets) - objects - {"/manifest"})
    if unlisted:
        fail("datasets the manifest does not list: %s" % unlisted)
    m = f["model"]
    L, dim, hidden = int(m.attrs["n_layers"]), int(m.attrs["dim"]), int(m.attrs["hidden_dim"])
    heads, kv, vocab = int(m.attrs["n_heads"]), int(m.attrs["n_kv_heads"]), int(m.attrs["vocab_size"])
    head = dim // heads
    expect = {"tok_embeddings.weight": (vocab, dim), "norm.weight": (dim,)}
    for l in range(L):
        p = "layers.%d." % l
        expect.update({p + "attention_norm.weight": (dim,), p + "ffn_norm.weight": (dim,),
                       p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (kv * head, dim),
                       p + "attention.wv.weight": (kv * head, dim), p + "attention.wo.weight": (dim, dim),
                       p + "feed_forward.w1.weight": (hidden, dim), p + "feed_forward.w2.weight": (dim, hidden),
                       p + "feed_forward.w3.weight": (hidden, dim)})
    if int(m.attrs["tied"]) == 0:
        expect["output.weight"] = (vocab, dim)
    if set(m.keys()) != set(expect):
        fail("model tensors %s" % sorted(set(m.keys()) ^ set(expect)))
    for name, shape in expect.items():
        if m[name].shape != shape or m[name].dtype != np.float32:
            fail("%s has %s %s" % (name, m[name].shape, m[name].dtype))
        for moment in ("exp_avg", "exp_avg_sq"):
            if f["optimizer"][moment][name].shape != shape:
                fail("optimizer %s/%s" % (moment, name))
    if int(f["optimizer"].attrs["step_count"]) != step:
        fail("optimizer step_count")
    if not np.any(f["optimizer/exp_avg_sq/tok_embeddings.weight"][()]):
        fail("second moments are all zero after training")
    if f["rng/torch_cpu"].shape[0] != world or int(f["sampler"].attrs["next_batch"]) != step:
        fail("rng/sampler state")
    t = lambda name: torch.from_numpy(m[name][()])
    p = dict(emb=t("tok_embeddings.weight"), rms_final=t("norm.weight"))
    for key, name in [("rms_att", "attention_norm"), ("wq", "attention.wq"), ("wk", "attention.wk"),
                      ("wv", "attention.wv"), ("wo", "attention.wo"), ("rms_ffn", "ffn_norm"),
                      ("w1", "feed_forward.w1"), ("w2", "feed_forward.w2"), ("w3", "feed_forward.w3")]:
        p[key] = torch.stack([t("layers.%d.%s.weight" % (l, name)) for l in range(L)])
    p["cls"] = p["emb"] if int(m.attrs["tied"]) else t("output.weight")
    logits = forward(p, dict(dim=dim, layers=L, heads=heads, kv_heads=kv, head=head), ids[:-1])
    loss = torch.nn.functional.cross_entropy(logits.double(), torch.tensor(ids[1:])).item()
    print("loss %.9f" % loss)


if __name__ == "__main__":
    main()
