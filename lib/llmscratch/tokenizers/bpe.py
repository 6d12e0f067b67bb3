"""Byte-level BPE as GPT-2 does it: regex pre-tokenization, then merges learned on UTF-8 bytes.

Ids 0..255 are the raw bytes, so any text can be encoded and nothing is ever unknown. Each merge
(a, b) -> c is learned from the most frequent adjacent pair and applied in the order learned.

Tie rule (documented, deterministic): when several pairs share the highest count, the pair with the
smallest (a, b) ids wins.

Saved format (`save` / `load`): one UTF-8 JSON file
    {"format": "llmscratch-bpe", "version": 1, "pattern": <pre-tokenization regex>,
     "merges": [[a, b], ...],             # in learned order; ids, not strings
     "special_tokens": {"<|endoftext|>": id, ...}}
A merge's result id is implied: the id of an existing token with the same bytes, else the next free id.
"""

import heapq
import json
from collections import Counter
from pathlib import Path

import regex

# GPT-2's pre-tokenization: contractions, letters, numbers, other symbols, each optionally led by
# one space; runs of whitespace stay apart from the word that follows them. Merges never cross
# these boundaries, so tokens like "dog." or " the the" cannot form.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
FORMAT = "llmscratch-bpe"


class BPETokenizer:
    def __init__(self, merges=(), special_tokens=None, pattern: str = GPT2_PATTERN):
        self.pattern = pattern
        self._split = regex.compile(pattern)
        self.vocab = [bytes([b]) for b in range(256)]   # id -> bytes
        self.merges = {}                                 # (a, b) -> result id
        self.ranks = {}                                  # (a, b) -> learned order (lower merges first)
        by_bytes = {tok: i for i, tok in enumerate(self.vocab)}
        for a, b in merges:
            self._add_merge(int(a), int(b), by_bytes)
        self.special_tokens = dict(special_tokens or {})  # str -> id, ids after the merged tokens
        for token, i in self.special_tokens.items():
            if i < len(self.vocab):
                raise ValueError(f"special token {token!r} has id {i}, which a byte or merge already uses")
        self._special_by_id = {i: s for s, i in self.special_tokens.items()}
        self._cache = {}

    def _add_merge(self, a: int, b: int, by_bytes: dict) -> int:
        if (a, b) in self.merges or not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
            raise ValueError(f"merge ({a}, {b}) is a duplicate or refers to an unknown id")
        merged = self.vocab[a] + self.vocab[b]
        new_id = by_bytes.get(merged)
        if new_id is None:  # two merge paths can spell the same bytes: they share one id
            new_id = by_bytes[merged] = len(self.vocab)
            self.vocab.append(merged)
        self.ranks[(a, b)] = len(self.merges)
        self.merges[(a, b)] = new_id
        return new_id

    @property
    def vocab_size(self) -> int:
        return len(self.vocab) + len(self.special_tokens)

    # ---- training -------------------------------------------------------------------------------
    @classmethod
    def train(cls, text: str, vocab_size: int, special_tokens=(), pattern: str = GPT2_PATTERN,
              progress: bool = False) -> "BPETokenizer":
        """Learn merges on `text` until the vocabulary (256 bytes + merges + specials) has `vocab_size`
        tokens, or no adjacent pair is left to merge (a short text can run out first)."""
        if not isinstance(text, str):
            raise TypeError(f"train expects the training text as a str, got {type(text).__name__}")
        if not text:
            raise ValueError("the training text is empty: BPE learns merges from text, give it some")
        special_tokens = list(dict.fromkeys(special_tokens))
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens "
                             f"plus {len(special_tokens)} special tokens, so at least {256 + len(special_tokens)}")
        tok = cls(pattern=pattern)
        for s in special_tokens:  # special tokens are never learned from text: cut them out first
            text = text.replace(s, " ")

        # Count each distinct pre-token once: the Python reference has ~500k characters but only
        # ~20k distinct pre-tokens, and a merge changes every copy of a pre-token the same way.
        word_counts = Counter(tok._split.findall(text))
        words = [list(w.encode("utf-8")) for w in word_counts]
        freqs = list(word_counts.values())

        pair_counts = Counter()           # (a, b) -> occurrences, weighted by word frequency
        where = {}                        # (a, b) -> indices of the words that contain it
        for w, (ids, f) in enumerate(zip(words, freqs)):
            for pair in zip(ids, ids[1:]):
                pair_counts[pair] += f
                where.setdefault(pair, set()).add(w)
        heap = [(-n, pair) for pair, n in pair_counts.items()]  # max count first, then smallest pair
        heapq.heapify(heap)

        by_bytes = {t: i for i, t in enumerate(tok.vocab)}
        n_merges = vocab_size - len(special_tokens) - 256
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=n_merges, desc="BPE merges")
        while len(tok.vocab) < vocab_size - len(special_tokens) and heap:
            neg, pair = heapq.heappop(heap)
            if pair_counts.get(pair, 0) != -neg:   # a stale heap entry: its count changed since
                continue
            new_id = tok._add_merge(*pair, by_bytes)
            changed = set()
            for w in where.pop(pair):
                ids, f = words[w], freqs[w]
                for old in zip(ids, ids[1:]):      # take the word's pairs out ...
                    pair_counts[old] -= f
                    changed.add(old)
                words[w] = ids = merge(ids, pair, new_id)
                for new in zip(ids, ids[1:]):      # ... and put the merged word's pairs back
                    pair_counts[new] += f
                    where.setdefault(new, set()).add(w)
                    changed.add(new)
            for p in changed:
                n = pair_counts[p]
                if n > 0:
                    heapq.heappush(heap, (-n, p))
                else:  # the pair is gone everywhere; `where` may keep stale indices, checked lazily
                    del pair_counts[p]
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        start = len(tok.vocab)
        tok.special_tokens = {s: start + i for i, s in enumerate(special_tokens)}
        tok._special_by_id = {i: s for s, i in tok.special_tokens.items()}
        return tok

    # ---- encoding -------------------------------------------------------------------------------
    def encode(self, text: str, allowed_special=()) -> list[int]:
        """Token ids of `text`. Special tokens in the text are encoded as plain text unless allowed:
        `allowed_special="all"` or a collection of special-token strings."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ValueError(f"not special tokens of this tokenizer: {sorted(unknown)}")
        if not allowed:
            return self._encode_ordinary(text)
        # Longest first, so that a special token that contains another one wins.
        splitter = regex.compile("(" + "|".join(regex.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")")
        ids = []
        for part in splitter.split(text):
            if part in allowed:
                ids.append(self.special_tokens[part])
            elif part:
                ids.extend(self._encode_ordinary(part))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids = []
        for piece in self._split.findall(text):
            cached = self._cache.get(piece)
            if cached is None:
                cached = self._cache[piece] = self._encode_piece(piece.encode("utf-8"))
            ids.extend(cached)
        return ids

    def _encode_piece(self, data: bytes) -> list[int]:
        ids = list(data)
        while len(ids) >= 2:
            # The pair learned earliest is merged first, exactly as during training.
            pair = min(zip(ids, ids[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            ids = merge(ids, pair, self.merges[pair])
        return ids

    def decode(self, ids) -> str:
        """Text of `ids`. Bytes that are not valid UTF-8 (e.g. half a character) become U+FFFD."""
        out = bytearray()
        for i in ids:
            i = int(i)
            if 0 <= i < len(self.vocab):
                out += self.vocab[i]
            elif i in self._special_by_id:
                out += self._special_by_id[i].encode("utf-8")
            else:
                raise ValueError(f"id {i} is outside the vocabulary (0 to {self.vocab_size - 1})")
        return out.decode("utf-8", errors="replace")

    # ---- saving and converting ------------------------------------------------------------------
    def save(self, path) -> None:
        data = {"format": FORMAT, "version": 1, "pattern": self.pattern,
                "merges": [list(p) for p in self.merges], "special_tokens": self.special_tokens}
        Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            if data.get("format") != FORMAT or data.get("version") != 1:
                raise ValueError(f"not an {FORMAT} v1 file")
            return cls(data["merges"], data["special_tokens"], data["pattern"])
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"{path} is not a valid saved BPETokenizer ({err}); "
                             "save one with BPETokenizer.save") from None

    def to_hf(self):
        """The same tokenizer as a Hugging Face `tokenizers.Tokenizer` (byte-level BPE, GPT-2 style)."""
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        if self.pattern != GPT2_PATTERN:
            raise ValueError("to_hf() supports the GPT-2 pattern only (HF's ByteLevel pre-tokenizer uses it)")
        char_of = bytes_to_unicode()
        spell = lambda i: "".join(char_of[b] for b in self.vocab[i])
        vocab = {spell(i): i for i in range(len(self.vocab))}
        merges = [(spell(a), spell(b)) for a, b in self.merges]
        hf = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        hf.decoder = decoders.ByteLevel()
        for token in sorted(self.special_tokens, key=self.special_tokens.get):
            hf.add_special_tokens([AddedToken(token, special=True, normalized=False)])
        return hf


def merge(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair`, left to right, by `new_id`."""
    out, i, a, b = [], 0, pair[0], pair[1]
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (how HF writes byte-level tokens as text):
    printable Latin-1 bytes stand for themselves, the rest are shifted to code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


# Digits one by one, then GPT-2's rules on the text between them (SmolLM2, StarCoder): a digit is a piece of its
# own, ' ?\p{N}+' is gone, and a whitespace run before a digit stays whole, as it would at the end of a text.
DIGITS_PATTERN = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


class PretrainedBPE:
    """The course's BPETokenizer with a pretrained model's merges, speaking that model's token ids.

    The merges are the same idea as ours, but a Hugging Face tokenizer.json numbers tokens its own way
    (SmolLM2: 17 special tokens first, then the 256 bytes in GPT-2's printable-character order, then one id
    per merge). So encoding runs the course BPE and translates its ids; decoding translates back."""

    def __init__(self, tokenizer_json):
        data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
        model = data.get("model", {})
        if model.get("type") != "BPE" or data.get("normalizer") is not None:
            raise ValueError(f"{tokenizer_json}: not a byte-level BPE without normalizer, which this class reproduces")
        self.pattern = self._pattern_of(data.get("pre_tokenizer"))
        byte_of = {c: b for b, c in bytes_to_unicode().items()}
        spelled = lambda s: bytes(byte_of[c] for c in s)   # HF writes each byte as a printable stand-in character
        added = {t["content"]: t["id"] for t in data.get("added_tokens", [])}
        model_id = {spelled(s): i for s, i in model["vocab"].items() if i not in added.values()}
        bpe, by_bytes = BPETokenizer(pattern=self.pattern), {bytes([b]): b for b in range(256)}
        for m in model["merges"]:
            a, b = m.split(" ") if isinstance(m, str) else m
            bpe._add_merge(by_bytes[spelled(a)], by_bytes[spelled(b)], by_bytes)
        for token in added:   # the course keeps special tokens after the merges
            bpe.special_tokens[token] = bpe.vocab_size
        bpe._special_by_id = {i: s for s, i in bpe.special_tokens.items()}
        unknown = [t for t in bpe.vocab[256:] if t not in model_id]
        if unknown:
            raise ValueError(f"{len(unknown)} merged tokens (e.g. {unknown[0]!r}) are missing from the vocabulary")
        # Bytes that never occurred in the model's training text may have no token at all (SmolLM2 lacks 21
        # control bytes). Its own tokenizer then drops them without a word; encode() here refuses instead.
        self.missing_bytes = bytes(b for b in range(256) if bytes([b]) not in model_id)
        self.bpe = bpe
        self.to_model = [model_id.get(t) for t in bpe.vocab] + [added[t] for t in bpe.special_tokens]  # course -> model
        self.to_course = {m: c for c, m in enumerate(self.to_model) if m is not None}

    @staticmethod
    def _pattern_of(pre) -> str:
        steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]
        kinds = [(s or {}).get("type") for s in steps]
        byte_level = steps[-1] or {}
        if kinds[-1] != "ByteLevel" or not byte_level.get("use_regex", True) or byte_level.get("add_prefix_space"):
            raise ValueError(f"pre-tokenizer {pre} is not GPT-2's ByteLevel, which this class reproduces")
        if kinds == ["ByteLevel"]:
            return GPT2_PATTERN
        if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
            return DIGITS_PATTERN
        raise ValueError(f"pre-tokenizer {pre} is not one this class reproduces")

    @property
    def vocab_size(self) -> int:
        return len(self.to_model)

    def encode(self, text: str, allowed_special=()) -> list[int]:
        ids = [self.to_model[i] for i in self.bpe.encode(text, allowed_special)]
        if None in ids:
            b = next(b for b in text.encode("utf-8") if b in self.missing_bytes)
            raise ValueError(f"the text contains byte 0x{b:02x}, which has no token in this vocabulary (the model never "
                             "saw it): remove it first (the model's own tokenizer would drop it silently)")
        return ids

    def decode(self, ids) -> str:
        try:
            return self.bpe.decode([self.to_course[int(i)] for i in ids])
        except KeyError as err:
            raise ValueError(f"id {err.args[0]} is not in this tokenizer's vocabulary") from None
