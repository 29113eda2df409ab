#!/usr/bin/env python3
"""The layering of src/ as docs/architecture.md draws it, checked against the code.

docs/architecture.md has a "## Layers" section whose first code block lists folders, the highest
layer first, one layer per line (folders on one line are one layer). A file in folder F may include
headers of F itself and of folders on lower lines only: never of a higher layer, nor of another
folder of its own layer. Headers of collectives/ (included without a folder, "communicator.h") are
the lowest layer with util/. Every folder of src/ must be in the diagram and every folder in the
diagram must exist, so the picture cannot drift from the code.

usage: check_layers.py SOURCE_DIR     exit 0 when the code keeps to the diagram, else 1 with each
                                      offending include (file:line) printed
"""
import os
import re
import sys


def layers_from_doc(path):
    text = open(path, encoding="utf-8").read()
    section = text.split("\n## Layers", 1)
    if len(section) < 2:
        raise SystemExit(f"{path}: no '## Layers' section")
    block = re.search(r"```\n(.*?)```", section[1], re.S)
    if not block:
        raise SystemExit(f"{path}: the Layers section has no code block")
    rows = []
    for line in block.group(1).splitlines():
        names = line.split("#", 1)[0].split()
        if names:
            rows.append(names)
    rank = {}
    for i, names in enumerate(reversed(rows)):  # the last line is layer 0
        for name in names:
            rank[name.rstrip("/")] = i
    return rank


def main():
    root = sys.argv[1]
    rank = layers_from_doc(os.path.join(root, "docs", "architecture.md"))
    src = os.path.join(root, "src")
    folders = sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))
    collectives = {f for f in os.listdir(os.path.join(root, "collectives")) if f.endswith(".h")}
    problems = []
    for d in folders:
        if d not in rank:
            problems.append(f"src/{d}/ is not in the layer diagram of docs/architecture.md")
    for name in rank:
        if name != "collectives" and name not in folders:
            problems.append(f"docs/architecture.md names a layer '{name}' that is not a folder of src/")
    include = re.compile(r'^\s*#\s*include\s+"([^"]+)"')
    checked = 0
    for d in folders:
        for f in sorted(os.listdir(os.path.join(src, d))):
            if not f.endswith((".h", ".cc")):
                continue
            for n, line in enumerate(open(os.path.join(src, d, f), encoding="utf-8", errors="replace"), 1):
                m = include.match(line)
                if not m:
                    continue
                target = m.group(1)
                if "/" in target:
                    to = target.split("/", 1)[0]
                elif target in collectives:
                    to = "collectives"
                else:
                    continue  # a header beside this one
                if to == d or d not in rank:
                    continue
                checked += 1
                if to not in rank:
                    problems.append(f"src/{d}/{f}:{n}: includes \"{target}\" from outside the diagram")
                elif rank[to] >= rank[d]:
                    where = "its own layer" if rank[to] == rank[d] else "a higher layer"
                    problems.append(f"src/{d}/{f}:{n}: {d} (layer {rank[d]}) includes \"{target}\" from {where} ({to}, layer {rank[to]})")
    # Comments that name a file of the project name one that exists ("see io/hf_import.cc" rots).
    mention = re.compile(r"\b((?:[a-z_]+/)+[a-z_0-9]+\.(?:h|cc|py|sh))\b")
    for d in folders:
        for f in sorted(os.listdir(os.path.join(src, d))):
            if not f.endswith((".h", ".cc")):
                continue
            for n, line in enumerate(open(os.path.join(src, d, f), encoding="utf-8", errors="replace"), 1):
                if include.match(line) or "//" not in line:
                    continue
                for m in mention.finditer(line[line.index("//"):]):
                    ref = m.group(1)
                    if ref.split("/", 1)[0] in ("torch", "c10", "ATen", "boost", "sys", "bits"):
                        continue
                    if not any(os.path.exists(os.path.join(root, base, ref)) for base in ("", "src", "..", os.path.join("..", "shared"))):
                        problems.append(f"src/{d}/{f}:{n}: names {ref}, which does not exist")
    # collectives/ is the ground floor: it includes nothing of src/.
    for f in sorted(os.listdir(os.path.join(root, "collectives"))):
        if not f.endswith((".h", ".cc")):
            continue
        for n, line in enumerate(open(os.path.join(root, "collectives", f), encoding="utf-8", errors="replace"), 1):
            m = include.match(line)
            if m and "/" in m.group(1) and m.group(1).split("/", 1)[0] in folders:
                problems.append(f"collectives/{f}:{n}: includes \"{m.group(1)}\" of src/ (collectives is the lowest layer)")
    if problems:
        print("\n".join(problems))
        return 1
    print(f"layers: {len(folders)} folders of src/ in {len(set(rank.values()))} layers; {checked} includes of other folders checked, all point down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
