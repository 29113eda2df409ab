"""Independent reference for Hugging Face models in graft: reads config.json and the safetensors
file(s) with the standard library and NumPy, and runs the forward pass in transformers' own layout
(GPT-2 Conv1D weights [in, out]; Llama's rotate-half rotary embedding), in PyTorch.
usage: hf_reference.py logits FOLDER "ids" GRAFT_LOGITS.csv   -> prints <loss> <max |logit diff|>
       hf_reference.py tensors FOLDER                         -> prints <tensor count> <parameter count>
       hf_reference.py shard FOLDER OUT                       -> writes OUT as a 2-shard copy of FOLDER
       hf_reference.py random OUT TYPE DTYPE                  -> a tiny random llama/mistral/qwen2 folder
                                                                 stored as F32, F16 or BF16
       hf_reference.py peft FOLDER ADAPTER "ids" GRAFT_LOGITS.csv -> as logits, with a PEFT LoRA adapter
                                                                 folder merged the way PEFT defines it
       hf_reference.py classify FOLDER DATA.h5 SPLIT          -> <accuracy> <mean loss> <documents> of a
            sequence classifier folder on a labelled graft dataset
       hf_reference.py masked FOLDER DATA.h5 SPLIT SEQ_LEN    -> <mean loss> <targets>: next-token loss over
            the split's windows (tokens i*T .. i*T+T), counting only targets whose loss_mask is 1
            (docs/data-format.md), token-weighted
       hf_reference.py documents FOLDER DATA.h5 SPLIT SEQ_LEN [OUT.jsonl] -> <mean loss> <targets>: the same
            over each document run alone, cut to SEQ_LEN + 1 tokens (data.packing = documents); OUT gets
            one line per document, {"document", "tokens", "loss"}"""
import json
import os
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import llama2c_encoder  # noqa: E402 (tests/llama2c_encoder.py)

DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


def read_safetensors(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        buf = raw[8 + n + begin:8 + n + end]
        if info["dtype"] == "BF16":  # widen: bf16 is the top half of a float32
            arr = (np.frombuffer(buf, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(buf, dtype=DTYPES[info["dtype"]]).astype(np.float32)
        out[name] = torch.from_numpy(arr.copy()).reshape(info["shape"])
    return out


def read_folder(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return read_safetensors(os.path.join(folder, "model.safetensors"))
    tensors = {}
    for shard in sorted(set(json.load(open(index))["weight_map"].values())):
        tensors.update(read_safetensors(os.path.join(folder, shard)))
    return tensors


def strip(tensors, prefix):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in tensors.items()}


def gpt2(cfg, w, ids, head=None):
    w = strip(w, "transformer.")
    T, d, H = len(ids), cfg["n_embd"], cfg["n_head"]
    x = w["wte.weight"][torch.tensor(ids)] + w["wpe.weight"][:T]
    mask = torch.full((T, T), float("-inf")).triu(1)
    ln = lambda x, p: torch.nn.functional.layer_norm(x, (d,), w[p + ".weight"], w[p + ".bias"], cfg["layer_norm_epsilon"])
    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        qkv = ln(x, p + "ln_1") @ w[p + "attn.c_attn.weight"] + w[p + "attn.c_attn.bias"]
        q, k, v = (t.view(T, H, d // H).transpose(0, 1) for t in qkv.split(d, dim=-1))
        att = torch.softmax(q @ k.transpose(1, 2) / (d // H) ** 0.5 + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(T, d) @ w[p + "attn.c_proj.weight"] + w[p + "attn.c_proj.bias"]
        h = ln(x, p + "ln_2") @ w[p + "mlp.c_fc.weight"] + w[p + "mlp.c_fc.bias"]
        h = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h ** 3)))  # gelu_new
        x = x + h @ w[p + "mlp.c_proj.weight"] + w[p + "mlp.c_proj.bias"]
    x = ln(x, "ln_f")
    return x @ (head if head is not None else w.get("lm_head.weight", w["wte.weight"])).T


def llama(cfg, w, ids, head=None):
    w = strip(w, "model.")
    T, d, H = len(ids), cfg["hidden_size"], cfg["num_attention_heads"]
    KV, D = cfg.get("num_key_value_heads", H), d // H
    eps, theta = cfg.get("rms_norm_eps", 1e-6), cfg.get("rope_theta", 10000.0)
    rms = lambda x, p: x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w[p]
    inv = 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    cos, sin = torch.cat([ang, ang], -1).cos().float(), torch.cat([ang, ang], -1).sin().float()

    def rope(t):  # t [H, T, D]; rotate_half pairs i with i + D/2, as transformers does
        half = torch.cat([-t[..., D // 2:], t[..., :D // 2]], -1)
        return t * cos + half * sin

    mask = torch.full((T, T), float("-inf")).triu(1)
    window = cfg.get("sliding_window") if cfg.get("model_type") == "mistral" else None
    if window:
        mask = mask + torch.full((T, T), float("-inf")).tril(-window)
    x = w["embed_tokens.weight"][torch.tensor(ids)]
    for l in range(cfg["num_hidden_layers"]):
        p = f"layers.{l}."
        h = rms(x, p + "input_layernorm.weight")
        proj = lambda n: h @ w[p + f"self_attn.{n}_proj.weight"].T + (w[p + f"self_attn.{n}_proj.bias"] if p + f"self_attn.{n}_proj.bias" in w else 0)
        q = rope(proj("q").view(T, H, D).transpose(0, 1))
        k = rope(proj("k").view(T, KV, D).transpose(0, 1)).repeat_interleave(H // KV, 0)
        v = proj("v").view(T, KV, D).transpose(0, 1).repeat_interleave(H // KV, 0)
        att = torch.softmax(q @ k.transpose(1, 2) / D ** 0.5 + mask, -1) @ v
        x = x + att.transpose(0, 1).reshape(T, d) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, p + "post_attention_layernorm.weight")
        x = x + (torch.nn.functional.silu(h @ w[p + "mlp.gate_proj.weight"].T) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, "norm.weight")
    return x @ (head if head is not None else w.get("lm_head.weight", w["embed_tokens.weight"])).T


def write_safetensors(path, tensors, dtype):
    hdr, data = {}, b""
    for name, t in tensors.items():
        a = t.numpy().astype(np.float32)
        if dtype == "BF16":  # round to nearest even, as torch does
            u = a.view(np.uint32).astype(np.uint64)
            buf = (((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)).tobytes()
        else:
            buf = a.astype(np.float16 if dtype == "F16" else np.float32).tobytes()
        hdr[name] = dict(dtype=dtype, shape=list(a.shape), data_offsets=[len(data), len(data) + len(buf)])
        data += buf
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    open(path, "wb").write(struct.pack("<Q", len(h)) + h + data)


def write_random(out, model_type, dtype):
    torch.manual_seed(7)
    d, hidden, layers, H, KV, vocab = 32, 48, 2, 4, 2, 97
    cfg = dict(model_type=model_type, hidden_size=d, intermediate_size=hidden, num_hidden_layers=layers,
               num_attention_heads=H, num_key_value_heads=KV, vocab_size=vocab, max_position_embeddings=64,
               rms_norm_eps=1e-6, rope_theta=500.0, tie_word_embeddings=False, hidden_act="silu")
    if model_type == "mistral":
        cfg["sliding_window"] = 4
    w = {"model.embed_tokens.weight": torch.randn(vocab, d), "model.norm.weight": 1 + 0.1 * torch.randn(d),
         "lm_head.weight": torch.randn(vocab, d) * 0.2}
    for l in range(layers):
        p = f"model.layers.{l}."
        for n, rows in (("q", d), ("k", KV * d // H), ("v", KV * d // H)):
            w[p + f"self_attn.{n}_proj.weight"] = torch.randn(rows, d) * 0.3
            if model_type == "qwen2":
                w[p + f"self_attn.{n}_proj.bias"] = torch.randn(rows) * 0.3
        w[p + "self_attn.o_proj.weight"] = torch.randn(d, d) * 0.2
        w[p + "mlp.gate_proj.weight"] = torch.randn(hidden, d) * 0.2
        w[p + "mlp.up_proj.weight"] = torch.randn(hidden, d) * 0.2
        w[p + "mlp.down_proj.weight"] = torch.randn(d, hidden) * 0.2
        w[p + "input_layernorm.weight"] = 1 + 0.1 * torch.randn(d)
        w[p + "post_attention_layernorm.weight"] = 1 + 0.1 * torch.randn(d)
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), w, dtype)
    open(os.path.join(out, "config.json"), "w").write(json.dumps(cfg, indent=2))


def write_scaled(folder, out, factor):
    """The model in `folder` with every matrix multiplied by `factor` (norms and biases kept), as F32:
    tiny-random-gpt2's weights (std 0.02) give logits near 0.1, where an absolute tolerance cannot
    tell two GELU variants apart; scaled, logits are O(1-10)."""
    w = {k: (v * factor if v.dim() == 2 else v) for k, v in read_folder(folder).items()}
    os.makedirs(out, exist_ok=True)
    write_safetensors(os.path.join(out, "model.safetensors"), w, "F32")
    open(os.path.join(out, "config.json"), "w").write(open(os.path.join(folder, "config.json")).read())


def compare_logits(cfg, tensors, ids_text, graft_csv):
    """Prints <mean next-token loss> <max |graft's logit - ours|> <max |our logit|>."""
    ids = [int(t) for t in ids_text.split()]
    forward = gpt2 if cfg["model_type"] == "gpt2" else llama
    with torch.no_grad():
        logits = forward(cfg, tensors, ids[:-1])
    loss = torch.nn.functional.cross_entropy(logits.double(), torch.tensor(ids[1:])).item()
    ours = torch.from_numpy(np.loadtxt(graft_csv, delimiter=",", dtype=np.float32).reshape(len(ids) - 1, -1))
    print(f"{loss:.9f} {(ours - logits).abs().max().item():.9g} {logits.abs().max().item():.9g}")


def main():
    mode, folder = sys.argv[1], sys.argv[2]
    if mode == "random":
        return write_random(folder, sys.argv[3], sys.argv[4])
    if mode == "scaled":
        return write_scaled(folder, sys.argv[3], float(sys.argv[4]))
    cfg = json.load(open(os.path.join(folder, "config.json")))
    tensors = read_folder(folder)
    if mode == "tensors":
        print(len(tensors), sum(t.numel() for t in tensors.values()))
    elif mode == "logits":
        compare_logits(cfg, tensors, sys.argv[3], sys.argv[4])
    elif mode == "peft":
        # PEFT's LoRA: W + lora_alpha / r * B @ A on each target module (HF names and layout;
        # transposed for Conv1D weights [in, out] when fan_in_fan_out), with r and lora_alpha
        # overridden per module by rank_pattern / alpha_pattern (first key the name ends with).
        import re
        adapter = sys.argv[3]
        acfg = json.load(open(os.path.join(adapter, "adapter_config.json")))

        def pattern(key, module, default):
            for k, v in (acfg.get(key) or {}).items():
                if re.match(rf"(.*\.)?{k}$", module):
                    return v
            return default

        lora = read_safetensors(os.path.join(adapter, "adapter_model.safetensors"))
        merged = 0
        for name, a in lora.items():
            if name.endswith(".lora_A.weight"):
                module = name[len("base_model.model."):-len(".lora_A.weight")]
                b = lora[name[:-len("lora_A.weight")] + "lora_B.weight"]
                r = pattern("rank_pattern", module, acfg["r"])
                assert a.shape[0] == r and b.shape[1] == r, f"{module}: rank {r} vs {tuple(a.shape)}, {tuple(b.shape)}"
                delta = pattern("alpha_pattern", module, acfg["lora_alpha"]) / r * (b @ a)
                if acfg.get("fan_in_fan_out"):
                    delta = delta.T
                tensors[module + ".weight"] = tensors[module + ".weight"] + delta
                merged += 1
        assert merged and merged * 2 == len(lora), "unexpected tensors in the adapter"
        compare_logits(cfg, tensors, sys.argv[4], sys.argv[5])
    elif mode == "random":
        write_random(folder, sys.argv[3], sys.argv[4])
    elif mode == "classify":
        # transformers' *ForSequenceClassification: score on the last token of each document (cut
        # to max_position_embeddings / n_positions), labels compared by name through id2label.
        import h5py
        f = h5py.File(sys.argv[3], "r")
        split = sys.argv[4]
        tokens, offsets, labels = f[split + "/tokens"][:], f[split + "/doc_offsets"][:], f[split + "/labels"][:]
        names = json.loads(f.attrs["label_names"])
        id2label = {int(k): v for k, v in cfg["id2label"].items()}
        assert sorted(id2label) == list(range(len(names))) and set(id2label.values()) == set(names), "label sets differ"
        by_name = {v: k for k, v in id2label.items()}
        context = cfg.get("max_position_embeddings", cfg.get("n_positions"))
        forward = gpt2 if cfg["model_type"] == "gpt2" else llama
        loss, correct = 0.0, 0
        with torch.no_grad():
            for d in range(len(offsets) - 1):
                ids = tokens[offsets[d]:offsets[d + 1]][:context].tolist()
                logits = forward(cfg, tensors, ids, head=tensors["score.weight"])[-1].double()
                target = by_name[names[labels[d]]]
                loss += torch.nn.functional.cross_entropy(logits[None], torch.tensor([target])).item()
                correct += int(logits.argmax().item() == target)
        n = len(offsets) - 1
        print(f"{correct / n:.6f} {loss / n:.9f} {n}")
    elif mode == "zeroshot":
        # Prompt-based classification without training, scored here from scratch: each label's
        # verbalisation (TEMPLATE with {label}, underscores as spaces) continues the document; the
        # label with the highest total log-probability wins. Checks graft's predictions file
        # (example, predicted, score) and prints: <predictions agreeing> <examples> <max |score diff| / |score|>.
        import h5py
        f = h5py.File(sys.argv[3], "r")
        split, tokenizer, template, predictions = sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
        tokens, offsets, labels = f[split + "/tokens"][:], f[split + "/doc_offsets"][:], f[split + "/labels"][:]
        names = json.loads(f.attrs["label_names"])
        encode = llama2c_encoder.encoder(tokenizer, cfg["vocab_size"])
        verbal = [encode(template.replace("{label}", n.replace("_", " "))) for n in names]
        agree, worst, rows = 0, 0.0, [json.loads(l) for l in open(predictions)]
        with torch.no_grad():
            for row in rows:
                d = row["example"]
                stem = tokens[offsets[d]:offsets[d + 1]].tolist()
                scores = []
                for v in verbal:
                    logp = torch.log_softmax(llama(cfg, tensors, stem + v).double(), -1)
                    scores.append(sum(logp[len(stem) - 1 + k, t].item() for k, t in enumerate(v)))
                best = max(range(len(names)), key=lambda l: scores[l])
                agree += int(names[best] == row["predicted"])
                worst = max(worst, abs(scores[best] - row["score"]) / abs(scores[best]))
        print(f"{agree} {len(rows)} {worst:.3g}")
    elif mode == "masked":
        import h5py
        f = h5py.File(sys.argv[3], "r")
        split, T = sys.argv[4], int(sys.argv[5])
        tokens = f[split + "/tokens"][:].astype(np.int64)
        mask = f[split + "/loss_mask"][:] if split + "/loss_mask" in f else np.ones(len(tokens), np.uint8)
        forward = gpt2 if cfg["model_type"] == "gpt2" else llama
        total, counted = 0.0, 0
        with torch.no_grad():
            for i in range((len(tokens) - 1) // T):
                window = tokens[i * T:i * T + T + 1]
                logits = forward(cfg, tensors, window[:-1].tolist()).double()
                keep = torch.from_numpy(mask[i * T + 1:i * T + T + 1].astype(bool))
                ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(window[1:]), reduction="none")
                total += ce[keep].sum().item()
                counted += int(keep.sum())
        print(f"{total / counted:.9f} {counted}")
    elif mode == "documents":
        import h5py
        f = h5py.File(sys.argv[3], "r")
        split, T = sys.argv[4], int(sys.argv[5])
        tokens = f[split + "/tokens"][:].astype(np.int64)
        offsets = f[split + "/doc_offsets"][:]
        mask = f[split + "/loss_mask"][:] if split + "/loss_mask" in f else np.ones(len(tokens), np.uint8)
        forward = gpt2 if cfg["model_type"] == "gpt2" else llama
        total, counted, lines = 0.0, 0, []
        with torch.no_grad():
            for d in range(len(offsets) - 1):
                begin = offsets[d]
                end = min(offsets[d + 1], begin + T + 1)
                doc, keep = tokens[begin:end], torch.from_numpy(mask[begin + 1:end].astype(bool))
                loss, n = 0.0, int(keep.sum())
                if len(doc) > 1 and n > 0:
                    logits = forward(cfg, tensors, doc[:-1].tolist()).double()
                    ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(doc[1:]), reduction="none")
                    loss = ce[keep].sum().item()
                total, counted = total + loss, counted + n
                lines.append({"document": d, "tokens": n, "loss": loss / n if n else None})
        if len(sys.argv) > 6:
            with open(sys.argv[6], "w") as out:
                out.writelines(json.dumps(line) + "\n" for line in lines)
        print(f"{total / counted:.9f} {counted}")
    elif mode == "shard":  # rewrite as two shards + index, raw bytes untouched
        out = sys.argv[3]
        os.makedirs(out, exist_ok=True)
        raw = open(os.path.join(folder, "model.safetensors"), "rb").read()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        names = sorted(k for k in header if k != "__metadata__")
        weight_map = {}
        for s, part in enumerate([names[:len(names) // 2], names[len(names) // 2:]]):
            shard = f"model-{s + 1:05d}-of-00002.safetensors"
            hdr, data = {}, b""
            for name in part:
                b, e = header[name]["data_offsets"]
                hdr[name] = dict(dtype=header[name]["dtype"], shape=header[name]["shape"], data_offsets=[len(data), len(data) + e - b])
                data += raw[8 + n + b:8 + n + e]
                weight_map[name] = shard
            h = json.dumps(hdr).encode()
            h += b" " * (-len(h) % 8)
            open(os.path.join(out, shard), "wb").write(struct.pack("<Q", len(h)) + h + data)
        json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out, "model.safetensors.index.json"), "w"))
        open(os.path.join(out, "config.json"), "w").write(json.dumps(cfg))


if __name__ == "__main__":
    main()
