"""Checks for chapter 01, tokenizers. Oracles: collections.Counter, and the library's tokenizers,
which the test suite proves equal to Hugging Face `tokenizers` and `BertTokenizerFast`."""

import random
from collections import Counter

from ..data import python_reference_text
from ..tokenizers import BPETokenizer
from ..tokenizers.bpe import merge as reference_merge
from ..tokenizers.wordpiece import wordpiece as reference_wordpiece
from ..tokenizers import bpe, naive_bpe
from .core import CheckFailed, exercise, expect

SAMPLES = ["hello world", "aaabdaaabac", "a a a a", "", "x", "naïve café 中文 🙂 12345\n\n  end"]


def _random_lists(seed, n=30):
    rng = random.Random(seed)
    return [[rng.choice([1, 2, 3]) for _ in range(rng.randint(0, 25))] for _ in range(n)]


@exercise("pair_counts")
def pair_counts(fn):
    for ids in [[1, 1, 1], [1, 2, 1, 2], [5, 5, 5, 5], [7], []] + _random_lists(0):
        got = fn(list(ids))
        expect(isinstance(got, dict), f"pair_counts({ids}) must return a dict (or Counter) of pair -> count, "
                                      f"got {type(got).__name__}")
        expected = Counter(zip(ids, ids[1:]))
        if dict(got) != dict(expected):
            wrong = {p: (expected.get(p, 0), got.get(p, 0)) for p in set(expected) | set(got)
                     if expected.get(p, 0) != got.get(p, 0)}
            details = ", ".join(f"{p}: expected {e}, got {g}" for p, (e, g) in sorted(wrong.items()))
            expect(False, f"pair_counts({ids}): {details} (count every adjacent pair, overlapping ones too)")
    return "counts every adjacent pair, overlaps included"


@exercise("merge", answers=(reference_merge,))
def merge(fn):
    cases = [([1, 1, 1], (1, 1)), ([1, 2, 3, 1, 2], (1, 2)), ([3, 3], (1, 2))]
    cases += [(ids, (1, 2)) for ids in _random_lists(1)] + [(ids, (3, 3)) for ids in _random_lists(2)]
    for ids, pair in cases:
        given = list(ids)
        got = fn(given, pair, 99)
        expected = reference_merge(ids, pair, 99)
        expect(list(got) == expected, f"merge({ids}, {pair}, 99): expected {expected}, got {list(got)} "
                                      "(replace non-overlapping occurrences, left to right)")
        expect(given == ids, f"merge changed its input list {ids} into {given}: build and return a new list")
    return f"{len(cases)} sequences"


def _training_texts():
    text = python_reference_text()
    return [("aaabdaaabac", 260), ("the cat sat on the mat, the end", 270), ("aaaa", 300), (text[:6000], 320)]


def _spell(merges):
    """Merges {(a, b): id} as readable byte strings: {(b'h', b'e'): 256} -> ["b'h' + b'e' -> 256"]."""
    vocab = {i: bytes([i]) for i in range(256)}
    out = []
    for (a, b), new_id in merges:
        left, right = vocab.get(a, b"?"), vocab.get(b, b"?")
        vocab[new_id] = left + right
        out.append(f"{left!r} + {right!r} -> {new_id}")
    return out


@exercise("train_bpe", answers=(BPETokenizer.train, naive_bpe.naive_train_merges))
def train_bpe(fn):
    for text, vocab_size in _training_texts():
        expected = list(BPETokenizer.train(text, vocab_size).merges.items())
        try:
            got = list(dict(fn(text, vocab_size)).items())
        except (ValueError, KeyError, IndexError) as err:
            raise CheckFailed(f"train_bpe({text[:30]!r}, {vocab_size}) raised {err!r}"
                              + (": once every pre-token is a single token there is no pair left; stop early"
                                 if text == "aaaa" else "")) from err
        first_bad = next((i for i, (g, e) in enumerate(zip(got, expected)) if g != e), None)
        if first_bad is not None:
            expect(False, f"train_bpe({text[:30]!r}..., {vocab_size}): merge {first_bad + 1} should be "
                          f"{_spell(expected)[first_bad]}, got {_spell(got)[first_bad]}. Did you split the text "
                          "with GPT2_PATTERN, count pairs over all pre-tokens, and break ties by the smallest pair?")
        expect(len(got) == len(expected), f"train_bpe({text[:30]!r}..., {vocab_size}): expected {len(expected)} "
                                          f"merges, got {len(got)} (stop early when no pair is left)")
    return "same merges, same order as the library"


@exercise("encode", answers=(BPETokenizer.encode, BPETokenizer._encode_ordinary, BPETokenizer._encode_piece, bpe.PretrainedBPE.encode))
def encode(fn):
    trained = BPETokenizer.train(python_reference_text()[:20000], 400)
    merges = dict(trained.merges)
    for text in SAMPLES + ["The  quick\tbrown fox's tokens... 3.14", python_reference_text()[30000:31000]]:
        got = list(fn(text, dict(merges)))
        expected = trained.encode(text)
        if got != expected:
            i = next((j for j, (g, e) in enumerate(zip(got, expected)) if g != e), min(len(got), len(expected)))
            show = lambda ids: [trained.vocab[t].decode("utf-8", errors="replace") if t < len(trained.vocab) else t
                                for t in ids[max(0, i - 3):i + 4]]
            expect(False, f"encode of a {len(text)}-character text differs at token {i} of {len(expected)}: "
                          f"expected tokens {show(expected)}, got {show(got)} (from position {max(0, i - 3)}). "
                          "Split with GPT2_PATTERN, then inside each pre-token merge the pair with the lowest "
                          "rank (learned first), again and again")
    return f"{len(SAMPLES) + 2} texts"


@exercise("decode", answers=(BPETokenizer.decode, bpe.PretrainedBPE.decode))
def decode(fn):
    trained = BPETokenizer.train(python_reference_text()[:20000], 400)
    vocab = {i: token for i, token in enumerate(trained.vocab)}
    for text in SAMPLES:
        ids = trained.encode(text)
        try:
            got = fn(ids, dict(vocab))
        except UnicodeDecodeError as err:
            raise CheckFailed(f"decode raised {err!r}: a token can hold part of a character. Join the bytes "
                              "of all tokens first, then decode once with errors='replace'") from None
        expect(got == text, f"decode(encode({text!r})) returned {got!r}, expected the text back. Join the bytes "
                            "of all tokens first, then decode once (a character can span two tokens)")
    broken = list("中".encode("utf-8"))[:2]
    try:
        got = fn(broken, dict(vocab))
    except UnicodeDecodeError:
        raise CheckFailed("decode of half a character raised UnicodeDecodeError: use "
                          "bytes.decode('utf-8', errors='replace')") from None
    expect(got == "\ufffd", f"decode of half a character ({broken}) should give the replacement character "
                            f"'\\ufffd', got {got!r}: use bytes.decode('utf-8', errors='replace')")
    return "round trips, and half a character becomes '\\ufffd'"


@exercise("greedy_longest_match", answers=(reference_wordpiece,))
def greedy_longest_match(fn):
    vocab = {"un", "unaff", "##aff", "##able", "##a", "##ff", "##ab", "##le", "a", "##b", "play", "##ing"}
    cases = ["playing", "play", "unaffable", "un", "unx", "a", "ab", "xyz"]
    for word in cases:
        expected = reference_wordpiece(word, vocab)
        got = fn(word, set(vocab))
        expect(list(got) == expected, f"greedy_longest_match({word!r}, vocab={sorted(vocab)}): expected "
                                      f"{expected}, got {list(got)}. Take the longest match first; pieces after "
                                      "the first are looked up with '##' in front; one unmatched spot makes the "
                                      "whole word ['[UNK]']")
    return f"{len(cases)} words"
