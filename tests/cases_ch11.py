"""Chapter 11 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import math
import re

import torch

from llmscratch import check
from llmscratch.rl import FORMAT_REWARD, follows_format


# ---- correct answers (the notebook's solutions) -----------------------------------------------------
def extract_answer(reply):
    found = re.findall(r"answer\s*:\s*(-?\d[\d,]*(?:\.\d+)?)", reply, flags=re.IGNORECASE)
    if not found:
        found = [n.rstrip(".") for n in re.findall(r"-?\d[\d,]*(?:\.\d+)?", reply)]
    if not found:
        return None
    try:
        return int(found[-1].replace(",", ""))
    except ValueError:
        return None


def extract_answer_by_hand(reply):
    """Another correct way, without regular expressions for the "Answer:" part."""
    lower = reply.lower()
    if "answer" in lower:
        tail = lower[lower.rindex("answer") + len("answer"):].lstrip()
        if tail.startswith(":"):
            digits = re.match(r"\s*(-?\d[\d,]*)(\.\d)?", tail[1:])
            if digits:
                return None if digits.group(2) else int(digits.group(1).replace(",", ""))
            if not re.search(r"\d", tail):
                return None
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", reply)
    if not numbers or "." in numbers[-1].rstrip("."):
        return None
    return int(numbers[-1].rstrip(".").replace(",", ""))


def reward(reply, answer):
    return float(extract_answer(reply) == answer) + FORMAT_REWARD * follows_format(reply)


def group_advantages(rewards, group_size, scale=True):
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        adv = adv / (r.std(1, keepdim=True) + 1e-4)
    return adv.reshape(-1)


def k3_kl(logps, ref_logps):
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def grpo_loss(logps, old_logps, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logps - old_logps)
    A = advantages[:, None]
    per_token = -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    mask = mask.float()
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def pass_at_k(n, c, k):
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_product(n, c, k):
    if not 1 <= k <= n:
        raise ValueError("k must be between 1 and n")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1 - k / i for i in range(n - c + 1, n + 1))


# ---- typical mistakes -----------------------------------------------------------------------------------
def extract_first_number(reply):
    numbers = re.findall(r"-?\d+", reply)
    return int(numbers[0]) if numbers else None


def extract_words_as_zero(reply):
    found = extract_answer(reply)
    return 0 if found is None else found


def extract_first_answer(reply):
    found = re.findall(r"answer\s*:\s*(-?\d[\d,]*(?:\.\d+)?)", reply, flags=re.IGNORECASE)
    return int(found[0].replace(",", "")) if found else extract_answer(reply)


def reward_no_format(reply, answer):
    return float(extract_answer(reply) == answer)


def reward_format_only(reply, answer):
    return FORMAT_REWARD * follows_format(reply)


def advantages_over_batch(rewards, group_size, scale=True):
    adv = rewards - rewards.mean()
    return adv / (rewards.std() + 1e-4) if scale else adv


def advantages_divide_by_zero(rewards, group_size, scale=True):
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    return (adv / r.std(1, keepdim=True) if scale else adv).reshape(-1)


def advantages_no_std(rewards, group_size, scale=True):
    return group_advantages(rewards, group_size, scale=False)


def advantages_biased_std(rewards, group_size, scale=True):
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    return (adv / (r.std(1, keepdim=True, unbiased=False) + 1e-4) if scale else adv).reshape(-1)


def kl_wrong_sign(logps, ref_logps):
    return k3_kl(ref_logps, logps)


def kl_k1(logps, ref_logps):
    return logps - ref_logps


def grpo_ratio_swapped(logps, old_logps, advantages, mask, epsilon=0.2):
    return grpo_loss(old_logps, logps, advantages, mask, epsilon)


def grpo_no_min(logps, old_logps, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logps - old_logps).clamp(1 - epsilon, 1 + epsilon)
    per_token = -ratio * advantages[:, None]
    mask = mask.float()
    return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()


def grpo_counts_padding(logps, old_logps, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logps - old_logps)
    A = advantages[:, None]
    return (-torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)).mean()


def grpo_token_mean(logps, old_logps, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logps - old_logps)
    A = advantages[:, None]
    per_token = -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    return (per_token * mask).sum() / mask.sum()


def grpo_plus_sign(logps, old_logps, advantages, mask, epsilon=0.2):
    return -grpo_loss(logps, old_logps, advantages, mask, epsilon)


def pass_with_replacement(n, c, k):
    return 1 - (1 - c / n) ** k


def pass_k_times(n, c, k):
    return min(1.0, k * c / n)


CORRECT = [
    (check.ch11.extract_answer, extract_answer),
    (check.ch11.extract_answer, extract_answer_by_hand),
    (check.ch11.reward, reward),
    (check.ch11.group_advantages, group_advantages),
    (check.ch11.k3_kl, k3_kl),
    (check.ch11.grpo_loss, grpo_loss),
    (check.ch11.pass_at_k, pass_at_k),
    (check.ch11.pass_at_k, pass_at_k_product),
]

MISTAKES = [
    (check.ch11.extract_answer, extract_first_number, "not the first number"),
    (check.ch11.extract_answer, extract_words_as_zero, "only digits make an answer"),
    (check.ch11.extract_answer, extract_first_answer, "the last one counts"),
    (check.ch11.reward, reward_no_format, "format reward is missing"),
    (check.ch11.reward, reward_format_only, "only the format"),
    (check.ch11.group_advantages, advantages_over_batch, "whole batch"),
    (check.ch11.group_advantages, advantages_divide_by_zero, "std 0"),
    (check.ch11.group_advantages, advantages_no_std, "only subtracted the mean"),
    (check.ch11.group_advantages, advantages_biased_std, "biased"),
    (check.ch11.k3_kl, kl_wrong_sign, "sign of the log-ratio is flipped"),
    (check.ch11.k3_kl, kl_k1, "k1"),
    (check.ch11.grpo_loss, grpo_ratio_swapped, "upside down"),
    (check.ch11.grpo_loss, grpo_no_min, "not compared with the unclipped"),
    (check.ch11.grpo_loss, grpo_counts_padding, "padding"),
    (check.ch11.grpo_loss, grpo_token_mean, "DAPO"),
    (check.ch11.grpo_loss, grpo_plus_sign, "sign is flipped"),
    (check.ch11.pass_at_k, pass_with_replacement, "with replacement"),
    (check.ch11.pass_at_k, pass_k_times, "k times pass@1"),
]


# ---- the four probes: gradients, the caller's inputs, extreme values, the domain's edges ------------------------
# Realistic answers that got every value right on ordinary inputs: each must lose marks, and say which probe.
def extract_last_number(reply):
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", reply)           # "Answer:" ignored: the last number anywhere
    if not numbers:
        return None
    try:
        return int(numbers[-1].rstrip(".").replace(",", ""))
    except ValueError:
        return None


def advantages_in_place(rewards, group_size, scale=True):
    r = rewards.view(-1, group_size)                                # a view: -= writes into the caller's rewards
    r -= r.mean(1, keepdim=True)
    if scale:
        r /= r.std(1, keepdim=True) + 1e-4
    return r.reshape(-1)


def advantages_zero_branch(rewards, group_size, scale=True):
    r = rewards.view(-1, group_size)
    adv = r - r.mean(1, keepdim=True)
    if scale:
        std = r.std(1, keepdim=True)
        adv = torch.where(std > 0, adv / std.clamp(min=1e-12), torch.zeros_like(adv))   # eps only where std is 0
    return adv.reshape(-1)


def kl_policy_detached(logps, ref_logps):
    d = ref_logps - logps.detach()                                  # "the KL is a penalty, not something to learn"
    return torch.exp(d) - d - 1


def kl_ratio_of_probabilities(logps, ref_logps):
    ratio = torch.exp(ref_logps) / torch.exp(logps)
    return ratio - torch.log(ratio) - 1


def grpo_ratio_of_probabilities(logps, old_logps, advantages, mask, epsilon=0.2):
    ratio = torch.exp(logps) / torch.exp(old_logps)
    A = advantages[:, None]
    per_token = -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    m = mask.float()
    return ((per_token * m).sum(-1) / m.sum(-1)).mean()


def grpo_advantages_in_place(logps, old_logps, advantages, mask, epsilon=0.2):
    A = advantages.unsqueeze_(-1)                                   # in place: the caller's advantages become (N, 1)
    ratio = torch.exp(logps - old_logps)
    per_token = -torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)
    m = mask.float()
    return ((per_token * m).sum(-1) / m.sum(-1)).mean()


def pass_at_k_no_domain(n, c, k):                                   # k > n: "1.0 when fewer than k are wrong"
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1 - k / i for i in range(n - c + 1, n + 1))


# Correct answers written differently: none may lose marks to the probes.
def k3_kl_expm1(logps, ref_logps):
    d = ref_logps - logps
    return torch.expm1(d) - d


def group_advantages_loop(rewards, group_size, scale=True):
    out = []
    for group in rewards.split(group_size):
        adv = group - group.mean()
        out.append(adv / (group.std() + 1e-4) if scale else adv)
    return torch.cat(out)


def pass_at_k_exact(n, c, k):
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


CORRECT += [
    (check.ch11.k3_kl, k3_kl_expm1),
    (check.ch11.group_advantages, group_advantages_loop),
    (check.ch11.pass_at_k, pass_at_k_exact),
]

PROBED = [
    (check.ch11.extract_answer, extract_last_number, "edge"),
    (check.ch11.group_advantages, advantages_in_place, "in place"),
    (check.ch11.group_advantages, advantages_zero_branch, "edge"),
    (check.ch11.k3_kl, kl_policy_detached, "gradient"),
    (check.ch11.k3_kl, kl_ratio_of_probabilities, "extreme"),
    (check.ch11.grpo_loss, grpo_ratio_of_probabilities, "extreme"),
    (check.ch11.grpo_loss, grpo_advantages_in_place, "in place"),
    (check.ch11.pass_at_k, pass_at_k_no_domain, "edge"),
]
MISTAKES += PROBED
