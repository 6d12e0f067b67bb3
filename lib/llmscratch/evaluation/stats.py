"""When to believe a score: its standard error, intervals, and whether two models differ on the same items.

A benchmark of n items measures accuracy with a standard error of about sqrt(p (1 - p) / n): 0.05 at n = 100,
0.016 at n = 1,000. Two models scored on the *same* items are compared item by item (a paired test), which is far
more sensitive than comparing two intervals: most items are answered alike by both and carry no information.
"""

import math

import torch


def mean_stderr(scores) -> float:
    """The standard error of a mean as the harness reports it: the sample standard deviation (n - 1) over sqrt(n)."""
    x = torch.as_tensor(scores, dtype=torch.float64)
    if x.numel() < 2:
        raise ValueError(f"a standard error needs at least 2 scores, got {x.numel()}")
    return (x.std(unbiased=True) / math.sqrt(x.numel())).item()


def bootstrap_interval(scores, level: float = 0.95, resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean: resample the items with replacement, take the mean each
    time, and read the middle `level` of those means."""
    x = torch.as_tensor(scores, dtype=torch.float64)
    if x.numel() == 0:
        raise ValueError("no scores: an interval needs at least one item")
    g = torch.Generator().manual_seed(seed)
    means = x[torch.randint(0, x.numel(), (resamples, x.numel()), generator=g)].mean(1)      # (resamples,)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return lo.item(), hi.item()


def paired_bootstrap(a, b, resamples: int = 10_000, seed: int = 0) -> dict:
    """Model A against model B on the same items (scores a[i], b[i]): the mean difference, its 95% bootstrap
    interval, and the share of resamples in which A does not beat B (a one-sided p-value for "A is better")."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.shape != b.shape or a.ndim != 1 or a.numel() == 0:
        raise ValueError(f"a paired test needs one score per item from each model, the same items: got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    d = a - b
    g = torch.Generator().manual_seed(seed)
    means = d[torch.randint(0, d.numel(), (resamples, d.numel()), generator=g)].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    return {"difference": d.mean().item(), "interval": (lo.item(), hi.item()),
            "p_value": (means <= 0).float().mean().item()}


def mcnemar(a, b) -> dict:
    """McNemar's exact test for two models' right/wrong answers on the same items: only the items on which they
    disagree count; under "no difference" each of those is a fair coin. Returns both counts and the two-sided p."""
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise ValueError(f"one answer per item from each model: got {len(a)} and {len(b)}")
    only_a = sum(x and not y for x, y in zip(a, b))
    only_b = sum(y and not x for x, y in zip(a, b))
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p_value": min(1.0, 2 * tail)}


def centred(accuracy: float, chance: float) -> float:
    """(accuracy - chance) / (1 - chance): 0 at chance, 1 when perfect, as nanochat's CORE metric centres each task,
    so that tasks of 2 and of 4 choices can be averaged."""
    if not 0 <= chance < 1:
        raise ValueError(f"chance must be in [0, 1), got {chance}")
    return (accuracy - chance) / (1 - chance)

