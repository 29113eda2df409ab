#!/usr/bin/env python3
"""Writes a small, deterministic conversation set (JSONL, one {"messages": [...]} per line) from the
TinyStories sample in ../shared/data, for the instruction-tuning tests and bench/chat_sft.sh:

    make_conversations.py TINYSTORIES.txt OUT.jsonl [N]

Each passage of the sample (blocks separated by blank lines) becomes one conversation: the user
gives the passage's first words, the assistant tells its first sentence; every second one goes on
for another turn ("Go on." -> the next sentence), every third starts with a system prompt. So the
assistant turns are text of the domain stories260K was trained on, and the user and system turns
repeat: a model that learns only what it should (the assistant's turns) shows it in the
assistant-only loss. Standard library only."""
import json
import re
import sys


def sentences(passage):
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", passage) if len(s.strip()) > 1]


def main():
    source, out = sys.argv[1], sys.argv[2]
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 400
    passages = [" ".join(b.split()) for b in open(source, encoding="utf-8").read().split("\n\n")]
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        for i, passage in enumerate(passages):
            said = sentences(passage)
            if len(said) < 2 or written >= limit:
                continue
            opening = " ".join(said[0].split()[:4])
            messages = []
            if written % 3 == 0:
                messages.append({"role": "system", "content": "You tell short stories for children."})
            messages.append({"role": "user", "content": "Begin a story with: " + opening})
            messages.append({"role": "assistant", "content": said[0]})
            if written % 2 == 1:
                messages.append({"role": "user", "content": "Go on."})
                messages.append({"role": "assistant", "content": said[1]})
            f.write(json.dumps({"messages": messages}) + "\n")
            written += 1
    print(f"{out}: {written} conversations")


if __name__ == "__main__":
    main()
