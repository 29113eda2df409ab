#!/usr/bin/env python3
"""Independent reader of a run's TensorBoard event files, checked against its metrics.jsonl.

Written from the format's description, sharing nothing with graft's writer: TFRecord framing
(uint64 length, masked CRC-32C of the length, data, masked CRC-32C of the data; CRC-32C computed
bit by bit here) and the protobuf wire format of tensorflow.Event / Summary / TensorProto.

usage: check_tensorboard.py RUN_DIR [--classify]
Exits 0 and prints a summary line when every metrics.jsonl step has exactly one scalar event with
the same values (float32), no other step has one, every record's CRCs hold, and the resolved
config is there as text; otherwise prints what differs and exits 1.
"""
import glob
import json
import math
import os
import struct
import sys


def crc32c(data):
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def masked(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def records(path):
    blob = open(path, "rb").read()
    at = 0
    while at < len(blob):
        if len(blob) - at < 12:
            raise ValueError(f"{path}: {len(blob) - at} stray bytes at {at}")
        header = blob[at:at + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", blob[at + 8:at + 12])
        if header_crc != masked(header):
            raise ValueError(f"{path}: length CRC mismatch at {at}")
        data = blob[at + 12:at + 12 + length]
        if len(data) != length or len(blob) < at + 16 + length:
            raise ValueError(f"{path}: record at {at} cut short")
        (data_crc,) = struct.unpack("<I", blob[at + 12 + length:at + 16 + length])
        if data_crc != masked(data):
            raise ValueError(f"{path}: data CRC mismatch at {at}")
        yield data
        at += 16 + length


def varint(buf, at):
    value = shift = 0
    while True:
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(buf):
    """(field number, wire type, value) of one message; value: int, bytes, or raw fixed bytes."""
    at = 0
    while at < len(buf):
        key, at = varint(buf, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(buf, at)
        elif wire == 1:
            value, at = buf[at:at + 8], at + 8
        elif wire == 5:
            value, at = buf[at:at + 4], at + 4
        elif wire == 2:
            length, at = varint(buf, at)
            value, at = buf[at:at + length], at + length
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


def decode_event(data):
    event = {"step": 0, "values": []}
    for number, _, value in fields(data):
        if number == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif number == 2:
            event["step"] = value
        elif number == 3:
            event["file_version"] = value.decode()
        elif number == 5:
            for n, _, v in fields(value):
                if n != 1:
                    continue
                entry = {}
                for vn, _, vv in fields(v):
                    if vn == 1:
                        entry["tag"] = vv.decode()
                    elif vn == 2:
                        entry["simple_value"] = struct.unpack("<f", vv)[0]
                    elif vn == 8:
                        for tn, _, tv in fields(vv):
                            if tn == 1:
                                entry["dtype"] = tv
                            elif tn == 8:
                                entry.setdefault("strings", []).append(tv.decode())
                    elif vn == 9:
                        for mn, _, mv in fields(vv):
                            if mn == 1:
                                for pn, _, pv in fields(mv):
                                    if pn == 1:
                                        entry["plugin"] = pv.decode()
                event["values"].append(entry)
    return event


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def main():
    run_dir = sys.argv[1]
    classify = "--classify" in sys.argv
    files = sorted(glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*")))
    problems = []
    if not files:
        print("no event files in", os.path.join(run_dir, "tensorboard"))
        return 1
    scalars, texts = {}, []
    for path in files:
        try:
            events = [decode_event(r) for r in records(path)]
        except ValueError as e:
            problems.append(str(e))
            continue
        if not events or events[0].get("file_version") != "brain.Event:2":
            problems.append(f"{path}: does not start with the brain.Event:2 version event")
        for e in events[1:]:
            for v in e["values"]:
                if "simple_value" in v:
                    key = (e["step"], v["tag"])
                    if key in scalars:
                        problems.append(f"step {e['step']} {v['tag']} appears twice")
                    scalars[key] = (v["simple_value"], e["wall_time"])
                elif v.get("plugin") == "text" and v.get("dtype") == 7:
                    texts.append((e["step"], v["tag"], "".join(v.get("strings", []))))
                else:
                    problems.append(f"step {e['step']}: unexpected value {v}")
    lines = [json.loads(l) for l in open(os.path.join(run_dir, "metrics.jsonl")) if l.strip()]
    expected = {}
    for m in lines:
        s = m["step"]
        want = {"train/loss": (m["loss"], 0), "train/lr": (m["lr"], 0), "train/grad_norm": (m["grad_norm"], 0),
                "train/tokens_per_s": (m["tokens_per_s"], 0.05), "train/skipped_steps": (m["skipped_total"], 0)}
        if m.get("val_loss") is not None:
            want["val/loss"] = (m["val_loss"], 0)
            if classify:
                want["val/accuracy"] = (m["val_accuracy"], 1e-6)  # printed with 6 digits
        for tag, (value, slack) in want.items():
            expected[(s, tag)] = True
            got = scalars.get((s, tag))
            if got is None:
                problems.append(f"step {s}: no {tag} event")
                continue
            if value is None:  # JSON null: not finite
                if math.isfinite(got[0]):
                    problems.append(f"step {s} {tag}: {got[0]} where metrics.jsonl has null")
                continue
            # metrics.jsonl prints 17 (loss), 9 (lr, grad_norm, val_loss) or 6 digits (accuracy):
            # float32 of either side agrees to float32's own rounding.
            if abs(got[0] - f32(value)) > slack + 1.2e-7 * abs(value):
                problems.append(f"step {s} {tag}: event {got[0]!r}, metrics.jsonl {value!r}")
            if "time" in m and abs(got[1] - m["time"]) > 2e-3:
                problems.append(f"step {s} {tag}: wall time {got[1]} vs metrics.jsonl time {m['time']}")
    for key in sorted(set(scalars) - set(expected)):
        problems.append(f"step {key[0]} {key[1]}: event without a metrics.jsonl line")
    if not any(tag == "config" and "[train]" in text for _, tag, text in texts):
        problems.append("no config text event holding [train]")
    if problems:
        print("\n".join(problems[:20]))
        return 1
    print(f"tensorboard: {len(files)} file(s), {len(lines)} steps, {len(scalars)} scalars match metrics.jsonl, "
          f"{len(texts)} config text(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
