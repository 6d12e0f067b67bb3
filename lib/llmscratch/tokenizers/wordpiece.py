"""WordPiece as BERT does it: a "basic" tokenizer (clean, lower-case, strip accents, split punctuation
and every CJK ideograph), then greedy longest-match-first pieces from a fixed vocabulary."""

import unicodedata
from collections import Counter
from functools import lru_cache
from pathlib import Path

PREFIX = "##"  # marks a piece that continues a word: "playing" -> "play", "##ing"
# The special tokens of a trained vocabulary, ids 0 to 4: the order of Google's BERT vocabularies,
# without their [unused] slots.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def is_cjk(cp: int) -> bool:
    """CJK Unified Ideographs blocks (as BERT defines them). Japanese kana and Korean hangul are not
    included: they are written with spaces or split by WordPiece like any other letters."""
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF
            or 0x2A700 <= cp <= 0x2B73F or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF
            or 0xF900 <= cp <= 0xFAFF or 0x2F800 <= cp <= 0x2FA1F)


def is_punctuation(ch: str) -> bool:
    # All non-letter/number ASCII counts as punctuation (so "$" and "^" split words), plus Unicode P*.
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


# Hugging Face finds Cc, Cf and Co characters with the `unicode_categories` crate, whose tables stop at
# Unicode 8: it keeps the format (Cf) characters added since, so we do too (U+13439 on: Unicode 15).
NEWER_FORMAT_CHARS = frozenset(map(chr, [0x0890, 0x0891, 0x08E2, 0x110CD, *range(0x13430, 0x13440)]))


def is_control(ch: str) -> bool:
    """Characters BERT's clean-up drops: control (Cc), format (Cf) and private-use (Co) ones, as
    in Hugging Face. Unassigned code points (Cn) are kept, and tab, newline, return are whitespace."""
    if ch in "\t\n\r" or ch in NEWER_FORMAT_CHARS:
        return False
    return unicodedata.category(ch) in ("Cc", "Cf", "Co")


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """BERT's pre-tokenization: the words and punctuation marks WordPiece then cuts into pieces."""
    # Each distinct character is looked at once: dropped (NUL, replacement and control characters),
    # a space, or padded with spaces when it is an ideograph, so that every ideograph is a word of its own.
    table = {ord(ch): _replacement(ch) for ch in set(text)}
    words = []
    for word in text.translate(table).split():
        words.extend(_split_word(word, lowercase))
    return words


def _replacement(ch: str) -> str:
    cp = ord(ch)
    if cp == 0 or cp == 0xFFFD or is_control(ch):
        return ""
    if is_whitespace(ch):
        return " "
    return f" {ch} " if is_cjk(cp) else ch


@lru_cache(maxsize=1 << 16)  # words recur (in Chinese text every word is one ideograph): split each once
def _split_word(word: str, lowercase: bool) -> tuple[str, ...]:
    if lowercase:  # BERT uncased: lower-case, then strip accents (é -> e) via NFD decomposition
        word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
    words, current = [], ""
    for ch in word:
        if is_punctuation(ch):  # a punctuation mark is a word of its own
            if current:
                words.append(current)
            words.append(ch)
            current = ""
        else:
            current += ch
    if current:
        words.append(current)
    return tuple(words)


def wordpiece(word: str, vocab, unk_token: str = "[UNK]", max_chars: int = 100) -> list[str]:
    """Greedy longest-match-first: take the longest vocabulary entry that starts the word, then the
    longest "##" entry that continues it, and so on. If some part matches nothing, the whole word
    is unknown (one [UNK]), as in BERT."""
    if len(word) > max_chars:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else PREFIX + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


class WordPieceTokenizer:
    def __init__(self, tokens: list[str], lowercase: bool = True, unk_token="[UNK]", cls_token="[CLS]",
                 sep_token="[SEP]", pad_token="[PAD]", mask_token="[MASK]", max_chars_per_word: int = 100):
        self.vocab = list(tokens)                                  # id -> token, as BPETokenizer.vocab
        self.token_to_id = {t: i for i, t in enumerate(self.vocab)}
        self.lowercase = lowercase
        self.max_chars_per_word = max_chars_per_word
        for name, token in [("unk", unk_token), ("cls", cls_token), ("sep", sep_token), ("pad", pad_token)]:
            if token not in self.token_to_id:
                raise ValueError(f"the vocabulary has no {name} token {token!r}")
        self.unk_token, self.cls_token, self.sep_token, self.pad_token = unk_token, cls_token, sep_token, pad_token
        self.mask_token = mask_token
        # str -> id, as BPETokenizer.special_tokens
        self.special_tokens = {t: self.token_to_id[t] for t in (unk_token, cls_token, sep_token, pad_token, mask_token)
                               if t in self.token_to_id}
        self.cls_id, self.sep_id, self.pad_id = (self.token_to_id[t] for t in (cls_token, sep_token, pad_token))

    @classmethod
    def from_vocab(cls, path, lowercase: bool = True, **kwargs) -> "WordPieceTokenizer":
        """Read a BERT vocab.txt: one token per line, the line number is the id."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no vocabulary file at {path}: give the path of a BERT vocab.txt")
        tokens = path.read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        return cls(tokens, lowercase=lowercase, **kwargs)

    @classmethod
    def train(cls, text: str, vocab_size: int, min_frequency: int = 2, lowercase: bool = True) -> "WordPieceTokenizer":
        """A vocabulary for `text` in the way of Google's Chinese BERT: the special tokens, then every
        character seen at least min_frequency times, most frequent first, then the most frequent
        longer words whole, until `vocab_size` tokens. An ideograph is always a word of its own
        (basic_tokenize), so its character is all it needs; any other letter, digit or symbol also gets
        its "##" piece, so that a word like "１９９８" or "wto" is spelled in characters when it is not in
        the vocabulary whole. Greedy longest-match then takes whole words first and falls back to
        characters; only a character rarer than min_frequency is [UNK]. Ties are broken by the string, so
        the same text gives the same vocabulary. A text with few distinct words can stop short of vocab_size."""
        if not isinstance(text, str):
            raise TypeError(f"train expects the training text as a str, got {type(text).__name__}")
        if vocab_size <= len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size={vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens "
                             f"{', '.join(SPECIAL_TOKENS)} come first, so it must be at least {len(SPECIAL_TOKENS) + 1}")
        if min_frequency < 1:
            raise ValueError(f"min_frequency must be at least 1, got {min_frequency}")
        words = Counter(basic_tokenize(text, lowercase))
        if not words:
            raise ValueError("the training text is empty (or only spaces and control characters): "
                             "a WordPiece vocabulary is learned from text, give it some")
        chars = Counter()
        for word, n in words.items():
            for ch in word:
                chars[ch] += n

        def frequent(counts):  # most frequent first, ties by the string
            return sorted((k for k, n in counts.items() if n >= min_frequency), key=lambda k: (-counts[k], k))

        pieces = []
        for ch in frequent(chars):
            pieces.append(ch)
            if not is_cjk(ord(ch)) and not is_punctuation(ch):  # ideographs and punctuation never continue a word
                pieces.append(PREFIX + ch)
        if not pieces:
            raise ValueError(f"no character occurs {min_frequency} times in the text: lower min_frequency "
                             "or give more text")
        pieces += [word for word in frequent(words) if len(word) > 1]
        return cls(list(SPECIAL_TOKENS) + pieces[:vocab_size - len(SPECIAL_TOKENS)], lowercase=lowercase)

    def save(self, path) -> Path:
        """Write the vocabulary as BERT's vocab.txt, one token per line (the line number is the id), for
        from_vocab and Hugging Face's BertTokenizerFast. Like BERT's, the file does not record `lowercase`."""
        bad = [t for t in self.vocab if not t or t != t.strip() or any(is_whitespace(ch) or ch in "\n\r" for ch in t)]
        if bad:
            raise ValueError(f"tokens with spaces or line breaks cannot be stored one per line: {bad[:5]}")
        path = Path(path)
        path.write_text("".join(token + "\n" for token in self.vocab), encoding="utf-8")
        return path

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def tokenize(self, text: str) -> list[str]:
        if not isinstance(text, str):
            raise TypeError(f"expected a str, got {type(text).__name__}")
        return [piece for word in basic_tokenize(text, self.lowercase)
                for piece in wordpiece(word, self.token_to_id, self.unk_token, self.max_chars_per_word)]

    def encode(self, text: str) -> list[int]:
        """Ids of the pieces of `text`, without [CLS] / [SEP]."""
        return [self.token_to_id[t] for t in self.tokenize(text)]

    def __call__(self, text, text_pair=None, padding=False, truncation: bool = False,
                 max_length: int | None = None) -> dict:
        """BERT inputs for a text (or a list of texts) and an optional second text (or list):
        [CLS] A [SEP] (B [SEP]) as `input_ids`, `token_type_ids` (0 for A, 1 for B) and
        `attention_mask` (1 for real tokens, 0 for padding).

        padding: False, True / "longest" (to the longest in the batch) or "max_length".
        truncation: cut to `max_length` tokens, taking from the longer text of a pair first.
        Without truncation, a sequence longer than `max_length` is an error, never cut silently.
        """
        batched = isinstance(text, (list, tuple))
        texts = list(text) if batched else [text]
        pairs = (list(text_pair) if batched else [text_pair]) if text_pair is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(pairs)} text pairs")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if (truncation or padding == "max_length") and max_length is None:
            raise ValueError("truncation=True and padding='max_length' need max_length")

        rows = [self._encode_one(a, b, truncation, max_length) for a, b in zip(texts, pairs)]
        if padding in (True, "longest", "max_length"):
            width = max_length if padding == "max_length" else max(len(r[0]) for r in rows)
            rows = [(ids + [self.pad_id] * (width - len(ids)), types + [0] * (width - len(ids)),
                     mask + [0] * (width - len(ids))) for ids, types, mask in rows]
        out = {"input_ids": [r[0] for r in rows], "token_type_ids": [r[1] for r in rows],
               "attention_mask": [r[2] for r in rows]}
        return out if batched else {k: v[0] for k, v in out.items()}

    def _encode_one(self, a, b, truncation, max_length):
        ids_a = self.encode(a)
        ids_b = self.encode(b) if b is not None else None
        n_special = 2 if ids_b is None else 3
        total = len(ids_a) + (len(ids_b) if ids_b is not None else 0) + n_special
        if max_length is not None and total > max_length:
            if not truncation:
                raise ValueError(f"the input has {total} tokens, more than max_length={max_length}: "
                                 "pass truncation=True to cut it, or a larger max_length")
            budget = max_length - n_special
            if budget < 0:
                raise ValueError(f"max_length={max_length} leaves no room for [CLS]/[SEP]")
            if ids_b is None:
                ids_a = ids_a[:budget]
            else:
                n_a, n_b = truncated_lengths(len(ids_a), len(ids_b), budget)
                ids_a, ids_b = ids_a[:n_a], ids_b[:n_b]
        ids = [self.cls_id] + ids_a + [self.sep_id]
        types = [0] * len(ids)
        if ids_b is not None:
            ids += ids_b + [self.sep_id]
            types += [1] * (len(ids_b) + 1)
        return ids, types, [1] * len(ids)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        tokens = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary (0 to {self.vocab_size - 1})")
            if skip_special_tokens and self.vocab[i] in self.special_tokens:
                continue
            tokens.append(self.vocab[i])
        text = " ".join(tokens).replace(" " + PREFIX, "")
        # The clean-up Hugging Face's WordPiece decoder does: no space before . ? ! and ,
        for mark in ".?!,":
            text = text.replace(" " + mark, mark)
        return text


def truncated_lengths(n_a: int, n_b: int, budget: int) -> tuple[int, int]:
    """How much of a pair to keep within `budget` tokens, taking from the longer text first: the
    shorter keeps all it can up to half the budget, the longer gets the rest."""
    if n_a + n_b <= budget:
        return n_a, n_b
    short, long_ = sorted((n_a, n_b))
    keep_short = min(short, budget // 2) if short + min(long_, budget) > budget else short
    keep_long = budget - keep_short
    return (keep_short, keep_long) if n_a <= n_b else (keep_long, keep_short)
