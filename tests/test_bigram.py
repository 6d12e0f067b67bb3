import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from llmscratch import bigram


def random_ids(seed, vocab_size, length):
    return torch.randint(vocab_size, (length,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed, vocab_size, length", [(0, 2, 2), (1, 5, 50), (2, 40, 5000)])
def test_counts_equal_a_plain_python_count(seed, vocab_size, length):
    ids = random_ids(seed, vocab_size, length)
    expected = Counter(zip(ids[:-1].tolist(), ids[1:].tolist()))
    counts = bigram.bigram_counts(ids, vocab_size)
    assert counts.shape == (vocab_size, vocab_size) and counts.sum() == length - 1
    for (a, b), n in expected.items():
        assert counts[a, b] == n


def test_probs_are_smoothed_row_distributions():
    counts = torch.tensor([[0, 3], [1, 0]])
    probs = bigram.counts_to_probs(counts, smoothing=1.0)
    assert torch.allclose(probs, torch.tensor([[0.2, 0.8], [2 / 3, 1 / 3]], dtype=torch.double))
    with pytest.raises(ValueError, match="all zero and smoothing is 0"):
        bigram.counts_to_probs(torch.tensor([[0, 0], [1, 1]]), smoothing=0.0)


@pytest.mark.parametrize("seed", range(5))
def test_bigram_nll_equals_cross_entropy_of_log_probs(seed):
    vocab_size = 7
    train, held_out = random_ids(seed, vocab_size, 500), random_ids(seed + 100, vocab_size, 300)
    probs = bigram.counts_to_probs(bigram.bigram_counts(train, vocab_size), smoothing=0.5)
    expected = F.cross_entropy(probs.log()[held_out[:-1]], held_out[1:]).item()
    assert bigram.bigram_nll(probs, held_out) == pytest.approx(expected, rel=1e-9)


def test_unigram_nll_and_perplexity():
    train = torch.tensor([0, 0, 0, 1])
    # add-one counts: [4, 2, 1] over 7
    expected = -(math.log(4 / 7) + math.log(1 / 7)) / 2
    assert bigram.unigram_nll(train, torch.tensor([0, 2]), vocab_size=3) == pytest.approx(expected)
    assert bigram.perplexity(math.log(103)) == pytest.approx(103)


@pytest.mark.parametrize("ids, message", [
    (torch.tensor([1]), "at least 2 token ids"),
    (torch.tensor([], dtype=torch.long), "is the text empty"),
    (torch.tensor([0.0, 1.0]), "integer token ids"),
    (torch.tensor([[0, 1]]), "1-D tensor"),
    (torch.tensor([0, 3]), r"must lie in \[0, 3\)"),
])
def test_bad_ids_are_clear_errors(ids, message):
    with pytest.raises(ValueError, match=message):
        bigram.bigram_counts(ids, 3)
