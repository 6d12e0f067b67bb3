"""Offline corpora that ship with installed packages, and a train/validation split.

Nothing here touches the network: the Python language reference comes with CPython itself and
the dialogues with the `chatterbot-corpus` package (see "Data and models" in README.md).
"""

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
