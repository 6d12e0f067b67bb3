"""Byte-level BPE against its oracle: Hugging Face `tokenizers` given the same merges."""

import pytest

from llmscratch.data import chatterbot_dialogues, dialogue_languages, python_reference_text
from llmscratch.tokenizers import BPETokenizer
from llmscratch.tokenizers.bpe import merge
from llmscratch.tokenizers.naive_bpe import naive_train_merges

EDGE_CASES = [
    "", " ", "   ", "\n", "\n\n\n", "  \n \n\t\t x", "a  b   c    d", "trailing spaces   ",
    "emoji 🙂👍🏽 and a family 👨‍👩‍👧 emoji", "combining: e\u0301 a\u0300 n\u0303, precomposed: é à ñ",
    "digits 0 12 345 6789 3.14159 1e-9 2026-11-23", "mixed 中文和English混合, 汉字 and ümlauts",
    "我们在学习 tokenization。标点符号：“引号”！", "tabs\tand\r\nwindows line ends\r\n",
    "contractions: it's we'll they've I'm you'd don't", "<|endoftext|> is plain text here",
    "def f(x):\n    return x ** 2  # comment\n", "\x00\x01 control characters \x7f", "\ufeffBOM",
]


@pytest.fixture(scope="module")
def corpus():
    return python_reference_text()


@pytest.fixture(scope="module")
def dialogues():
    return {lang: "\n".join(t for d in chatterbot_dialogues(lang) for t in d.turns) for lang in dialogue_languages()}


@pytest.fixture(scope="module", params=[300, 1024, 4096])
def trained(request, corpus):
    """A tokenizer and its HF twin. Plain `encode` never produces special tokens, so the twin is
    told to treat them as text too (`encode_special_tokens`); tests that want them switch it off."""
    tok = BPETokenizer.train(corpus, request.param, special_tokens=["<|endoftext|>"])
    hf = tok.to_hf()
    hf.encode_special_tokens = True
    return tok, hf


def test_vocab_size_is_reached(trained):
    tok, hf = trained
    assert tok.vocab_size == hf.get_vocab_size() and tok.vocab_size in (300, 1024, 4096)


def test_encoding_equals_hf_on_the_python_reference(trained, corpus):
    tok, hf = trained
    ids = tok.encode(corpus)
    assert ids == hf.encode(corpus).ids
    assert tok.decode(ids) == corpus


def test_encoding_equals_hf_in_every_dialogue_language(trained, dialogues):
    tok, hf = trained
    for lang, text in dialogues.items():
        ids = tok.encode(text)
        assert ids == hf.encode(text).ids, f"differs from HF on the {lang} dialogues"
        assert tok.decode(ids) == text


@pytest.mark.parametrize("text", EDGE_CASES)
def test_encoding_equals_hf_on_edge_cases(trained, text):
    tok, hf = trained
    ids = tok.encode(text)
    assert ids == hf.encode(text).ids
    assert tok.decode(ids) == text


def test_special_tokens_only_when_allowed(trained):
    tok, hf = trained
    eot = tok.special_tokens["<|endoftext|>"]
    text = "first document<|endoftext|>second"
    plain = tok.encode(text)
    assert eot not in plain and tok.decode(plain) == text  # not produced from plain text
    allowed = tok.encode(text, allowed_special="all")
    assert allowed.count(eot) == 1 and allowed == tok.encode(text, allowed_special={"<|endoftext|>"})
    assert plain == hf.encode(text).ids
    hf.encode_special_tokens = False
    try:
        assert allowed == hf.encode(text).ids  # HF's default: always match added special tokens
    finally:
        hf.encode_special_tokens = True
    assert tok.decode(allowed) == text
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode(text, allowed_special={"<|im_start|>"})


def test_merges_never_cross_pre_token_boundaries(corpus):
    tok = BPETokenizer.train(corpus, 2048)
    for token in tok.vocab[256:]:
        text = token.decode("utf-8", errors="ignore")
        if text and len(tok._split.findall(text)) > 1:
            pytest.fail(f"token {token!r} spans several pre-tokens: {tok._split.findall(text)}")


@pytest.mark.parametrize("size", [260, 400, 700])
def test_incremental_training_learns_the_naive_merges(corpus, size):
    text = corpus[:60_000]
    assert list(BPETokenizer.train(text, size).merges) == naive_train_merges(text, size)


def test_ties_go_to_the_smallest_pair():
    # Pre-tokens "cd", "\n", "ab", ...: "ab" and "cd" both occur twice; (97, 98) < (99, 100).
    tok = BPETokenizer.train("cd\nab\ncd\nab", 257)
    assert list(tok.merges) == [(ord("a"), ord("b"))]


def test_training_stops_when_nothing_is_left_to_merge():
    tok = BPETokenizer.train("aaaa", 1000)
    assert tok.decode(tok.encode("aaaa")) == "aaaa" and len(tok.encode("aaaa")) == 1
    assert tok.vocab_size == 258  # a+a, then aa+aa


def test_decode_never_raises_on_broken_utf8(trained):
    tok, _ = trained
    half = list("é".encode("utf-8"))[:1]
    assert tok.decode(half) == "\ufffd"
    assert tok.decode(list("中".encode("utf-8"))) == "中"  # three byte tokens, one character
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_merge_handles_overlaps_left_to_right():
    assert merge([1, 1, 1], (1, 1), 9) == [9, 1]
    assert merge([1, 1, 1, 1], (1, 1), 9) == [9, 9]
    assert merge([1, 2, 1, 2, 3], (1, 2), 9) == [9, 9, 3]
    assert merge([], (1, 2), 9) == []


def test_save_and_load_round_trip(trained, tmp_path, corpus):
    tok, _ = trained
    tok.save(tmp_path / "bpe.json")
    loaded = BPETokenizer.load(tmp_path / "bpe.json")
    assert loaded.merges == tok.merges and loaded.special_tokens == tok.special_tokens
    assert loaded.encode(corpus[:5000]) == tok.encode(corpus[:5000])


def test_corrupt_file_is_a_clear_error(tmp_path):
    (tmp_path / "bad.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "other.json").write_text('{"format": "something else"}', encoding="utf-8")
    for name in ("bad.json", "other.json"):
        with pytest.raises(ValueError, match="not a valid saved BPETokenizer"):
            BPETokenizer.load(tmp_path / name)


@pytest.mark.parametrize("args, error, message", [
    (("", 300), ValueError, "training text is empty"),
    ((b"bytes", 300), TypeError, "as a str"),
    (("text", 255), ValueError, "at least 256"),
    (("text", 256, ["<|endoftext|>"]), ValueError, "at least 257"),
])
def test_bad_training_input(args, error, message):
    with pytest.raises(error, match=message):
        BPETokenizer.train(*args)


def test_encode_rejects_non_strings(trained):
    tok, _ = trained
    with pytest.raises(TypeError, match="expects a str"):
        tok.encode(["a", "list"])
