"""Chapter 01 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

from collections import Counter

import regex

from llmscratch import check
from llmscratch.tokenizers import BPETokenizer
from llmscratch.tokenizers.bpe import GPT2_PATTERN, merge
from llmscratch.tokenizers.wordpiece import wordpiece


def train_bpe(text, vocab_size):
    return dict(BPETokenizer.train(text, vocab_size).merges)


def encode(text, merges):
    return BPETokenizer(list(merges)).encode(text)


def decode(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


def encode_by_frequency(text, merges):
    ids = []
    for piece in regex.findall(GPT2_PATTERN, text):
        tokens = list(piece.encode("utf-8"))
        while known := [p for p in zip(tokens, tokens[1:]) if p in merges]:
            pair = Counter(known).most_common(1)[0][0]
            tokens = merge(tokens, pair, merges[pair])
        ids.extend(tokens)
    return ids


def train_without_regex(text, vocab_size):
    ids, merges = list(text.encode("utf-8")), {}
    for new_id in range(256, vocab_size):
        counts = Counter(zip(ids, ids[1:]))
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        ids = merge(ids, best, new_id)
        merges[best] = new_id
    return merges


def shortest_match(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        for end in range(start + 1, len(word) + 1):
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
        else:
            return ["[UNK]"]
        pieces.append(piece)
        start = end
    return pieces


def merge_in_place(ids, pair, new_id):
    result = merge(ids, pair, new_id)
    ids[:] = result
    return ids


def train_without_early_stop(text, vocab_size):
    words = [list(w.encode("utf-8")) for w in regex.findall(GPT2_PATTERN, text)]
    merges = {}
    for new_id in range(256, vocab_size):
        counts = Counter(p for w in words for p in zip(w, w[1:]))
        best = min(counts, key=lambda p: (-counts[p], p))  # fails once nothing is left
        words = [merge(w, best, new_id) for w in words]
        merges[best] = new_id
    return merges


CORRECT_BY_NAME = {
    "pair_counts": lambda ids: Counter(zip(ids, ids[1:])),
    "merge": merge,
    "train_bpe": train_bpe,
    "encode": encode,
    "decode": decode,
    "greedy_longest_match": wordpiece,
}

MISTAKES_BY_NAME = [
    ("pair_counts", lambda ids: Counter(zip(ids[::2], ids[1::2])), "expected"),  # misses overlapping pairs
    ("merge", lambda ids, pair, new: [new if (a, b) == pair else a for a, b in zip(ids, ids[1:] + [None])], "expected"),
    ("merge", merge_in_place, "changed its input"),
    ("train_bpe", train_without_early_stop, "merges|min"),
    ("train_bpe", train_without_regex, "GPT2_PATTERN"),
    ("encode", encode_by_frequency, "expected"),
    ("encode", lambda text, merges: list(text.encode("utf-8")), "expected"),
    ("decode", lambda ids, vocab: "".join(vocab[i].decode("utf-8", errors="replace") for i in ids), "Join the bytes"),
    ("decode", lambda ids, vocab: b"".join(vocab[i] for i in ids).decode("utf-8"), "errors='replace'"),
    ("pair_counts", lambda ids: list(zip(ids, ids[1:])), "must return a dict"),
    ("greedy_longest_match", shortest_match, "expected"),
    ("greedy_longest_match", lambda word, vocab: [word], "expected"),
]

CORRECT = [(getattr(check.ch01, name), answer) for name, answer in CORRECT_BY_NAME.items()]
MISTAKES = [(getattr(check.ch01, name), wrong, message) for name, wrong, message in MISTAKES_BY_NAME]
