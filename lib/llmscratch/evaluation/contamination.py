"""Was the test in the training data? n-gram overlap between benchmark items and a training corpus.

GPT-3's paper (Brown et al. 2020, appendix C) called an item contaminated when any of its 13-grams (words, lower-cased,
punctuation stripped) occurs in the training data. Words are the unit for English; Chinese has no spaces, so its
n-grams are of characters (a shorter n: one character carries about as much as a short word).
"""

import re

WORD = re.compile(r"\w+")


def units(text: str, chinese: bool = False) -> list[str]:
    """The tokens n-grams are made of: lower-cased words without punctuation, or the characters of a Chinese text
    (whitespace and punctuation dropped)."""
    if chinese:
        return [c for c in text if c.isalnum()]
    return WORD.findall(text.lower())


def ngrams(text: str, n: int, chinese: bool = False) -> set[tuple[str, ...]]:
    """Every n-gram of the text's units; none when the text has fewer than n units."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    u = units(text, chinese)
    return {tuple(u[i:i + n]) for i in range(len(u) - n + 1)}


def corpus_ngrams(documents, n: int, chinese: bool = False) -> set[tuple[str, ...]]:
    """The n-grams of a training corpus, document by document: an n-gram never spans two documents."""
    out = set()
    for doc in documents:
        out |= ngrams(doc, n, chinese)
    return out


def overlap(items: list[str], training: set, n: int, chinese: bool = False) -> list[float]:
    """For each item, the share of its n-grams found in the training n-grams (0 for an item shorter than n units:
    it cannot be matched at this n). An item is contaminated, in GPT-3's sense, when its share is above 0."""
    out = []
    for item in items:
        grams = ngrams(item, n, chinese)
        out.append(len(grams & training) / len(grams) if grams else 0.0)
    return out
