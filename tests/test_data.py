import pydoc_data.topics
import pytest

from llmscratch.data import chatterbot_dialogues, dialogue_languages, python_reference_text, train_val_split


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
