"""The straightforward BPE trainer: re-count every pair after every merge.

Kept as the baseline that benchmarks and the chapter-01 notebook compare `BPETokenizer.train` with.
It shares the pre-tokenization and the tie rule, and learns exactly the same merges.
"""

from collections import Counter

import regex

from .bpe import GPT2_PATTERN, merge


def naive_train_merges(text: str, vocab_size: int, pattern: str = GPT2_PATTERN) -> list[tuple[int, int]]:
    """Re-count every pair after every merge. Same merges as BPETokenizer.train (ties: smallest pair)."""
    word_counts = Counter(regex.findall(pattern, text))
    words = [list(w.encode("utf-8")) for w in word_counts]
    freqs = list(word_counts.values())
    vocab = {i: bytes([i]) for i in range(256)}
    by_bytes = {b: i for i, b in vocab.items()}
    merges = []
    while len(vocab) < vocab_size:
        counts = Counter()
        for ids, f in zip(words, freqs):
            for pair in zip(ids, ids[1:]):
                counts[pair] += f
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merged = vocab[pair[0]] + vocab[pair[1]]
        new_id = by_bytes.setdefault(merged, len(vocab))
        vocab[new_id] = merged
        words = [merge(ids, pair, new_id) for ids in words]
        merges.append(pair)
    return merges
