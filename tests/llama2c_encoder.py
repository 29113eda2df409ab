"""run.c's encoder, written out independently from the llama2.c tokenizer format
(../shared/data/llama2c/FORMAT.md): a dummy-prefix space, one piece per UTF-8 code point (or its
bytes + 3 when the vocabulary lacks it), then merging the adjacent pair whose concatenation has the
highest score (the first such pair on a tie) until none is in the vocabulary.

As a module: encoder(path, vocab_size) -> encode(text) -> ids (tests/e2e/hf_reference.py).
As a script: llama2c_encoder.py TEXTS TOKENIZER VOCAB_SIZE prints the ids of each text of TEXTS
(NUL-separated UTF-8), one line per text (tests/unit/tokenizer_test.cc)."""
import struct
import sys


def encoder(path, vocab_size):
    pieces, scores = [], []
    with open(path, "rb") as f:
        f.read(4)  # max_token_length
        for _ in range(vocab_size):
            score, n = struct.unpack("<fi", f.read(8))
            scores.append(score)
            pieces.append(f.read(n))
    lookup = {p: i for i, p in enumerate(pieces)}
    assert len(lookup) == len(pieces), "duplicate pieces"

    def encode(text):
        if not text:
            return []
        ids = [lookup[b" "]]
        for ch in text:
            b = ch.encode("utf-8")
            ids.extend([lookup[b]] if b in lookup else [x + 3 for x in b])
        while True:
            best, at = None, -1
            for i in range(len(ids) - 1):
                j = lookup.get(pieces[ids[i]] + pieces[ids[i + 1]])
                if j is not None and (best is None or scores[j] > scores[best]):
                    best, at = j, i
            if best is None:
                return ids
            ids[at:at + 2] = [best]
    return encode


if __name__ == "__main__":
    encode = encoder(sys.argv[2], int(sys.argv[3]))
    for text in open(sys.argv[1], "rb").read().decode("utf-8").split("\0"):
        print(" ".join(map(str, encode(text))))
