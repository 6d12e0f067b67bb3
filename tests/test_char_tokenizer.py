import pytest

from llmscratch.tokenizers import CharTokenizer


def test_round_trip_and_errors():
    tok = CharTokenizer.from_text("hello, 世界")
    assert tok.vocab_size == 8 and tok.decode(tok.encode("世界, hello")) == "世界, hello"
    with pytest.raises(ValueError, match="'z' is not in the vocabulary"):
        tok.encode("z")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([8])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="non-empty string"):
        CharTokenizer.from_text("")
