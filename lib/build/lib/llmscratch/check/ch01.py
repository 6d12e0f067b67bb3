"""Checks for chapter 01, tokenizers. Oracles: collections.Counter, and the library's tokenizers,
which the test suite proves equal to Hugging Face `tokenizers` and `BertTokenizerFast`."""

import random
from collections import Counter

from ..data import python_reference_text
from ..tokenizers import BPETokenizer
from ..tokenizers.bpe import merge as reference_merge
from ..tokenizers.wordpiece import wordpiece as reference_wordpiece
from .core import exercise, expect

SAMPLES = ["hello world", "aaabdaaabac", "a a a a", "", "x", "naïve café 中文 🙂 12345\n\n  end"]


def _random_lists(seed, n=30):
    rng = random.Random(seed)
    return [[rng.choice([1, 2, 3]) for _ in range(rng.randint(0, 25))] for _ in range(n)]


@exercise("pair_counts")
def pair_counts(fn):
    for ids in _random_lists(0) + [[5, 5, 5, 5], [7]]:
        got = fn(list(ids))
        expected = Counter(zip(ids, ids[1:]))
        expect(dict(got) == dict(expected), f"pair_counts({ids}): expected {dict(expected)}, got {dict(got)}")
    return "counts every adjacent pair, overlaps included"


@exercise("merge")
def merge(fn):
    cases = [([1, 1, 1], (1, 1)), ([1, 2, 3, 1, 2], (1, 2)), ([3, 3], (1, 2))]
    cases += [(ids, (1, 2)) for ids in _random_lists(1)] + [(ids, (3, 3)) for ids in _random_lists(2)]
    for ids, pair in cases:
        got = fn(list(ids), pair, 99)
        expected = reference_merge(ids, pair, 99)
        expect(list(got) == expected, f"merge({ids}, {pair}, 99): expected {expected}, got {list(got)} "
                                      "(replace non-overlapping occurrences, left to right)")
    return f"{len(cases)} sequences"


def _training_texts():
    text = python_reference_text()
    return [("aaabdaaabac", 260), ("the cat sat on the mat, the end", 270), (text[:6000], 320)]


@exercise("train_bpe")
def train_bpe(fn):
    for text, vocab_size in _training_texts():
        expected = list(BPETokenizer.train(text, vocab_size).merges.items())
        got = list(dict(fn(text, vocab_size)).items())
        first_bad = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
        if first_bad is not None:
            expect(False, f"on {text[:30]!r}... merge number {first_bad} should be {expected[first_bad]} "
                          f"(pair -> new id), got {got[first_bad]}")
        expect(len(got) == len(expected), f"on {text[:30]!r}... with vocab_size={vocab_size}: expected "
                                          f"{len(expected)} merges, got {len(got)}")
    return "same merges, same order as the library"


@exercise("encode")
def encode(fn):
    trained = BPETokenizer.train(python_reference_text()[:20000], 400)
    merges = dict(trained.merges)
    for text in SAMPLES + ["The  quick\tbrown fox's tokens... 3.14", python_reference_text()[30000:31000]]:
        got = fn(text, dict(merges))
        expected = trained.encode(text)
        expect(list(got) == expected, f"encode({text[:40]!r}): expected {expected[:20]}..., got {list(got)[:20]}...")
    return f"{len(SAMPLES) + 2} texts"


@exercise("decode")
def decode(fn):
    trained = BPETokenizer.train(python_reference_text()[:20000], 400)
    vocab = {i: token for i, token in enumerate(trained.vocab)}
    for text in SAMPLES:
        ids = trained.encode(text)
        got = fn(ids, dict(vocab))
        expect(got == text, f"decode(encode({text!r})) returned {got!r}")
    broken = list("中".encode("utf-8"))[:2]
    got = fn(broken, dict(vocab))
    expect(got == "\ufffd", f"decode of half a character ({broken}) should give the replacement character "
                            f"'\\ufffd', got {got!r}: use bytes.decode('utf-8', errors='replace')")
    return "round trips, and half a character becomes '\\ufffd'"


@exercise("greedy_longest_match")
def greedy_longest_match(fn):
    vocab = {"un", "unaff", "##aff", "##able", "##a", "##ff", "##ab", "##le", "a", "##b", "play", "##ing"}
    cases = ["unaffable", "playing", "play", "un", "unx", "a", "ab", "xyz"]
    for word in cases:
        expected = reference_wordpiece(word, vocab)
        got = fn(word, set(vocab))
        expect(list(got) == expected, f"greedy_longest_match({word!r}): expected {expected}, got {list(got)}")
    return f"{len(cases)} words"
