"""Counting n-gram baselines on token ids (chapter 00), reused by later chapters as the bar to beat.

Every model in the course is compared with these: a transformer that cannot beat a bigram table
on the same tokens has learned nothing about context.
"""

import math

import torch


def bigram_counts(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """counts[a, b] = how often token b follows token a in `ids`. Shape (V, V), int64."""
    ids = _check_ids(ids, vocab_size, min_len=2)
    pair_index = ids[:-1] * vocab_size + ids[1:]  # one integer per (prev, next) pair
    return torch.bincount(pair_index, minlength=vocab_size * vocab_size).view(vocab_size, vocab_size)


def counts_to_probs(counts: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """Row-normalise counts into P(next | prev), adding `smoothing` to every count first.

    Add-one (Laplace) smoothing keeps pairs never seen in training at a small non-zero
    probability, so the log-likelihood of new text is never log(0) = -inf.
    """
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    smoothed = counts.double() + smoothing
    row_sums = smoothed.sum(dim=-1, keepdim=True)
    if (row_sums == 0).any():
        raise ValueError("a row of counts is all zero and smoothing is 0: use smoothing > 0")
    return smoothed / row_sums


def bigram_nll(probs: torch.Tensor, ids: torch.Tensor) -> float:
    """Mean negative log-likelihood (nats per token) of ids[1:] given ids[:-1] under a bigram table."""
    ids = _check_ids(ids, probs.shape[0], min_len=2)
    return -torch.log(probs[ids[:-1], ids[1:]]).mean().item()


def unigram_nll(train_ids: torch.Tensor, eval_ids: torch.Tensor, vocab_size: int,
                smoothing: float = 1.0) -> float:
    """Mean NLL of eval_ids under add-`smoothing` token frequencies of train_ids (no context at all)."""
    train_ids = _check_ids(train_ids, vocab_size, min_len=1)
    eval_ids = _check_ids(eval_ids, vocab_size, min_len=1)
    counts = torch.bincount(train_ids, minlength=vocab_size).double() + smoothing
    return -torch.log(counts[eval_ids] / counts.sum()).mean().item()


class BigramLM(torch.nn.Module):
    """A bigram table as a language model with the course's contract, forward(idx) -> (logits, None): the logits at
    each position are log P(next | this token), so an evaluation that scores transformers scores it too."""

    def __init__(self, probs: torch.Tensor):
        super().__init__()
        self.register_buffer("log_probs", probs.float().log())                      # (V, V)

    def forward(self, idx, targets=None):
        return self.log_probs[idx], None                                             # (B, T, V)


def perplexity(nll: float) -> float:
    """exp(mean NLL): the number of equally likely choices the model is as unsure as."""
    return math.exp(nll)


def _check_ids(ids, vocab_size: int, min_len: int) -> torch.Tensor:
    ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.dtype.is_floating_point:
        raise ValueError(f"ids must be a 1-D tensor of integer token ids, got shape {tuple(ids.shape)} "
                         f"and dtype {ids.dtype}")
    if len(ids) < min_len:
        raise ValueError(f"need at least {min_len} token ids, got {len(ids)}: is the text empty?")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise ValueError(f"token ids must lie in [0, {vocab_size}), found {ids.min().item()}..{ids.max().item()}")
    return ids.long()
