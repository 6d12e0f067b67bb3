"""Chapter 00 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import torch
import torch.nn.functional as F

from llmscratch import bigram, check


def correct_sample(probs, start, length, generator):
    out = []
    for _ in range(length):
        start = torch.multinomial(probs[start], 1, generator=generator).item()
        out.append(start)
    return out


CORRECT_BY_NAME = {
    "bigram_counts": bigram.bigram_counts,
    "counts_to_probs": bigram.counts_to_probs,
    "softmax": lambda x, dim=-1: torch.softmax(x, dim=dim),
    "cross_entropy": lambda logits, targets: F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                             targets.reshape(-1)),
    "sample": correct_sample,
}

MISTAKES_BY_NAME = [
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

CORRECT = [(getattr(check.ch00, name), answer) for name, answer in CORRECT_BY_NAME.items()]
MISTAKES = [(getattr(check.ch00, name), wrong, message) for name, wrong, message in MISTAKES_BY_NAME]
