"""Checks for chapter 00, "What is a language model". Oracles: torch.bincount, torch.softmax,
torch.nn.functional.cross_entropy, and the law of large numbers for sampling."""

import torch
import torch.nn.functional as F

from .. import bigram
from .core import CheckFailed, exercise, expect, expect_tensor


def _random_ids(generator, vocab_size, length):
    return torch.randint(vocab_size, (length,), generator=generator)


@exercise("bigram_counts", answers=(bigram.bigram_counts,))
def bigram_counts(fn):
    g = torch.Generator().manual_seed(0)
    cases = [(torch.tensor([0, 1, 1, 1, 2, 0]), 3)]  # a hand-made case with a run of repeats
    cases += [(_random_ids(g, v, n), v) for v, n in [(2, 10), (5, 200), (27, 2000)]]
    for ids, vocab_size in cases:
        expected = torch.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size ** 2)
        got = fn(ids, vocab_size)
        expect_tensor(got, expected.view(vocab_size, vocab_size).to(got.dtype if torch.is_tensor(got) else torch.long),
                      f"bigram_counts(ids of length {len(ids)}, vocab_size={vocab_size}) "
                      "(row = previous token, column = next token)", atol=0, rtol=0)
    return f"{len(cases)} sequences"


@exercise("counts_to_probs", answers=(bigram.counts_to_probs,))
def counts_to_probs(fn):
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(0, 5, (6, 6), generator=g)
    counts[2] = 0  # a token never seen as "previous": smoothing alone must fill its row
    for smoothing in (1.0, 0.5):
        smoothed = counts.double() + smoothing
        expected = smoothed / smoothed.sum(dim=1, keepdim=True)
        got = fn(counts, smoothing=smoothing)
        expect(not (torch.is_tensor(got) and got.isnan().any()),
               f"counts_to_probs(counts, smoothing={smoothing}) has NaN in a row whose counts are all 0: "
               "add `smoothing` to every count before dividing")
        expect_tensor(got, expected, f"counts_to_probs(counts, smoothing={smoothing}) (each row must sum to 1)")
    return "rows sum to 1, smoothing applied"


@exercise("softmax")
def softmax(fn):
    g = torch.Generator().manual_seed(2)
    cases = [(torch.randn(5, generator=g), -1), (torch.randn(3, 7, generator=g) * 4, -1),
             (torch.randn(4, 3, 5, generator=g), 1),
             (torch.tensor([1000.0, 1001.0, 1002.0]), -1),     # exp() overflows without the max trick
             (torch.tensor([[-1000.0, -1001.0], [-5.0, 5.0]]), -1)]
    for x, dim in cases:
        expect_tensor(fn(x, dim=dim), torch.softmax(x, dim=dim),
                      f"softmax(x of shape {tuple(x.shape)}, dim={dim})")
    return f"{len(cases)} tensors, any dim"


@exercise("cross_entropy")
def cross_entropy(fn):
    g = torch.Generator().manual_seed(3)
    for shape, vocab, spread in [((8,), 5, 3), ((2, 6), 11, 3), ((4,), 3, 1000)]:  # 1000: huge logits
        logits = (torch.randn(*shape, vocab, generator=g) * spread).requires_grad_()
        targets = torch.randint(vocab, shape, generator=g)
        expected = F.cross_entropy(logits.reshape(-1, vocab), targets.reshape(-1))
        got = fn(logits, targets)
        what = f"cross_entropy(logits {tuple(logits.shape)}, targets {tuple(targets.shape)})"
        expect(torch.is_tensor(got) and got.requires_grad,
               f"{what} must return a tensor that gradients flow through (no .item(), no float()), "
               f"got {type(got).__name__}")
        expect(torch.isfinite(got).all(), f"{what} with logits up to {spread}x gave {got}: "
                                          "take the log-softmax with the log-sum-exp trick, not log(softmax)")
        expect_tensor(got, expected, f"{what} (the mean over every position)", atol=1e-5)
    return "matches F.cross_entropy, large logits included"


@exercise("sample")
def sample(fn):
    # From token 0 the next token is 1 or 2 (probabilities 0.25 / 0.75); 1 and 2 always go back to 0.
    probs = torch.tensor([[0.0, 0.25, 0.75], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    g = torch.Generator().manual_seed(4)
    out = fn(probs, start=0, length=4001, generator=g)
    expect(len(out) == 4001, f"expected 4001 sampled ids (start not included), got {len(out)}")
    ids = [0] + [int(i) for i in out]
    for a, b in zip(ids, ids[1:]):
        if probs[a, b] == 0:
            raise CheckFailed(f"sampled {a} -> {b}, a transition of probability 0: sample each next token "
                              "from probs[previous] (the row of the previous token, not a column)")
    after_zero = [b for a, b in zip(ids, ids[1:]) if a == 0]
    share = sum(b == 2 for b in after_zero) / len(after_zero)
    # 2000 draws of p=0.75: the standard deviation of the share is ~0.01, so 0.05 is a 5-sigma bound.
    expect(abs(share - 0.75) < 0.05,
           f"after token 0, token 2 should be drawn 75% of the time, got {share:.1%}: draw in proportion "
           "to probs[previous] with torch.multinomial (not the argmax, and pass generator= on)")
    return f"{len(out)} draws, frequencies as expected"
