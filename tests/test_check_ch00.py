"""The chapter-00 self-checks accept correct answers and reject the typical mistakes, saying why."""

import pytest
import torch
import torch.nn.functional as F

from llmscratch import bigram, check
from llmscratch.check import CheckFailed


def not_done(*args, **kwargs):
    raise NotImplementedError()


def correct_sample(probs, start, length, generator):
    out = []
    for _ in range(length):
        start = torch.multinomial(probs[start], 1, generator=generator).item()
        out.append(start)
    return out


CORRECT = {
    "bigram_counts": bigram.bigram_counts,
    "counts_to_probs": bigram.counts_to_probs,
    "softmax": lambda x, dim=-1: torch.softmax(x, dim=dim),
    "cross_entropy": lambda logits, targets: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             targets.reshape(-1)),
    "sample": correct_sample,
}

MISTAKES = [
    ("bigram_counts", lambda ids, v: bigram.bigram_counts(ids, v).T, "row = previous token"),
    ("bigram_counts", lambda ids, v: bigram.bigram_counts(ids[:-1], v), "differ"),
    ("counts_to_probs", lambda c, smoothing=1.0: (c + smoothing) / (c + smoothing).sum(0, keepdim=True),
     "each row must sum to 1"),
    ("softmax", lambda x, dim=-1: x.exp() / x.exp().sum(), "differ"),  # normalised over everything
    ("softmax", lambda x, dim=-1: torch.softmax(x, dim=0), "differ|shape"),
    ("softmax", lambda x, dim=-1: x.exp() / x.exp().sum(dim, keepdim=True), "NaN"),  # unstable
    ("counts_to_probs", lambda c, smoothing=1.0: c / c.sum(1, keepdim=True) + 0 * smoothing, "add `smoothing`"),
    ("cross_entropy", lambda logits, t: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                        t.reshape(-1)).item(), "must return a tensor"),
    ("cross_entropy", lambda logits, t: -torch.softmax(logits, -1).gather(-1, t[..., None]).log().mean(),
     "log-sum-exp"),
    ("cross_entropy", lambda logits, t: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                        t.reshape(-1), reduction="sum"), "the mean over every"),
    ("sample", lambda p, start, length, generator: [int(p[start].argmax())] * length, "probability 0|75%"),
    ("sample", lambda p, start, length, generator: correct_sample(p.T.contiguous(), start, length, generator),
     r"probs\[previous\]"),
    ("sample", lambda p, start, length, generator: correct_sample(p, start, length, generator)[:-1], "4001"),
]


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_correct_answers_pass(name, capsys):
    getattr(check.ch00, name)(CORRECT[name])
    assert capsys.readouterr().out.startswith(f"ok: {name}")


@pytest.mark.parametrize("name", sorted(CORRECT))
def test_unimplemented_exercises_say_so(name):
    with pytest.raises(CheckFailed, match=f"{name}: not implemented yet"):
        getattr(check.ch00, name)(not_done)


@pytest.mark.parametrize("name, wrong, message", MISTAKES)
def test_typical_mistakes_are_caught(name, wrong, message):
    with pytest.raises(CheckFailed, match=message):
        getattr(check.ch00, name)(wrong)
