"""Checks for chapter 11, reinforcement learning with verifiable rewards (GRPO). Oracles: the library's rewards,
advantages and loss (the loss and advantages proven equal to TRL's GRPOTrainer), and brute-force enumeration for
pass@k."""

import itertools
import math

import torch

from .. import rl
from .core import CheckFailed, call_on_originals, close, exercise, expect, expect_gradients, expect_tensor

# (reply, the number it answers): the tricky ones first
REPLIES = [
    ("7 + 5 = 12.\nAnswer: 12", 12),
    ("First 3, then 4, so 7 in all.\nAnswer: 7", 7),                 # several numbers: the one after "Answer:"
    ("Answer: 5\nNo wait. Answer: 6", 6),                            # the last "Answer:"
    ("There are 8 apples left.", 8),                                 # no "Answer:": the last number
    ("Answer: 9.", 9),                                               # a trailing period
    ("answer:  14", 14),                                             # any case, any spaces
    ("It is 1,000.\nAnswer: 1,000", 1000),                           # a thousands comma
    ("Answer: -3", -3),
    ("Answer: 12\nI checked it 3 times.", 12),                      # numbers after the answer line
    ("**Answer:** 15", 15),                                          # markdown bold: no digit after "Answer:"
    ("Answer: twelve", None),                                        # a number in words is no answer
    ("I do not know.", None),                                        # no number at all
    ("Answer: 2.5", None),                                           # a decimal is no whole number
    ("", None),
]


@exercise("extract_answer", answers=(rl.extract_answer,))
def extract_answer(fn):
    for reply, expected in REPLIES:
        got = fn(reply)
        expect(got is None or isinstance(got, int) and not isinstance(got, bool),
               f"extract_answer({reply!r}) returned {got!r} ({type(got).__name__}): return an int, or None when the "
               "reply has no whole number")
        expect(got == expected, f"extract_answer({reply!r}) should be {expected!r}, got {got!r}" + _hint(reply))
    return f"{len(REPLIES)} replies: several numbers, none, a trailing period, words, commas, decimals"


def _hint(reply: str) -> str:
    if "checked it" in reply:
        return (" (edge: numbers after the answer line; the number after the last \"Answer:\" wins over any later "
                "number, and only a reply with no \"Answer: <number>\" falls back to its last number)")
    if "**" in reply:
        return " (edge: markdown bold, \"**Answer:** 15\": no number right after the colon, so the last number counts)"
    if "Answer: 5" in reply:
        return ": with several \"Answer:\"s the last one counts (the model's final word)"
    if "\nAnswer:" in reply or reply.startswith("Answer: 9"):
        return ": take the number after the last \"Answer:\", not the first number of the reply"
    if "twelve" in reply or "2.5" in reply:
        return ": only digits make an answer (a word or a decimal is no whole number): return None"
    if "1,000" in reply:
        return ": remove the thousands commas before int()"
    return ""


@exercise("reward", answers=(rl.reward, rl.correctness_reward))
def reward(fn):
    for reply, number in REPLIES:
        for answer in (number if number is not None else 4, 99):
            got = fn(reply, answer)
            expected = rl.reward(reply, answer)
            expect(isinstance(got, (int, float)) and not isinstance(got, bool),
                   f"reward({reply!r}, {answer}) returned {type(got).__name__}: return a float")
            if abs(got - expected) > 1e-9:
                right, fmt = rl.correctness_reward(reply, answer), rl.format_reward(reply)
                if abs(got - right) < 1e-9:
                    raise CheckFailed(f"reward({reply!r}, {answer}) = {got}: the format reward is missing; it is the "
                                      f"correctness (1 or 0) plus {rl.FORMAT_REWARD} when follows_format(reply)")
                if abs(got - fmt) < 1e-9:
                    raise CheckFailed(f"reward({reply!r}, {answer}) = {got}: only the format was rewarded; add 1 "
                                      "when the extracted answer equals the right one")
                raise CheckFailed(f"reward({reply!r}, {answer}) should be {expected} (correct: {right}, format: "
                                  f"{fmt}), got {got}")
    return "correctness plus format on every reply, right and wrong answers"


# ---- advantages ------------------------------------------------------------------------------------------
@exercise("group_advantages", answers=(rl.group_advantages,))
def group_advantages(fn):
    near = torch.tensor([1.0, 1.0 + 1e-6, 0.0, 1.0, 2.0, 2.0])     # a group that barely differs, a plain one, a tie
    got = fn(near.clone(), 2, scale=True)
    near_expected, _ = rl.group_advantages(near, 2, scale=True)
    if torch.is_tensor(got) and got.shape == near.shape and bool(torch.isfinite(got).all()) and \
            torch.allclose(got[2:], near_expected[2:], atol=1e-3):      # right but for the near-tie: say why
        expect(torch.allclose(got[:2], near_expected[:2], atol=1e-3),
               f"edge: rewards 1 and 1 + 1e-6 must give advantages of about -+0.005 (a difference of 1e-6 divided by "
               f"std + eps, eps = 1e-4); got {got[:2]}. Add eps to every group's std: a branch that only helps where "
               "the std is exactly 0 lets a near-tie explode to -+0.7")
    g = torch.Generator().manual_seed(0)
    for G in (2, 4, 8):
        rewards = torch.randint(0, 3, (4 * G,), generator=g).float() * 0.5
        rewards[:G] = 1.0                                           # a group where every completion scored alike
        rewards[G:2 * G] = torch.arange(G).float()                  # one that differs
        for scale in (True, False):
            got = fn(rewards.clone(), G, scale=scale)
            expected, _ = rl.group_advantages(rewards, G, scale=scale)
            expect(torch.is_tensor(got) and got.shape == rewards.shape,
                   f"expected one advantage per completion, shape {tuple(rewards.shape)}; got "
                   f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
            expect(bool(torch.isfinite(got).all()),
                   "some advantages are NaN or inf: a group whose rewards are all equal has std 0, and dividing by it "
                   "explodes. Divide by (std + eps), eps = 1e-4: that group's advantages are then all 0")
            whole = rewards - rewards.mean()
            if scale:
                whole = whole / (rewards.std() + 1e-4)
            expect(not close(got, whole),
                   "the advantages were normalised over the whole batch: each completion is compared with its own "
                   "group, the G samples of the same prompt (rewards.view(-1, G), then mean and std over dim 1)")
            if scale:
                expect(not close(got, (rewards - rewards.view(-1, G).mean(1).repeat_interleave(G))),
                       "scale=True divides by the group's std (+ eps); you only subtracted the mean (Dr. GRPO's variant)")
                biased = rewards.view(-1, G).std(1, unbiased=False).repeat_interleave(G)
                wrong = (rewards - rewards.view(-1, G).mean(1).repeat_interleave(G)) / (biased + 1e-4)
                expect(not close(got, wrong, atol=1e-3),
                       "the std is the biased one (divided by G); use torch.std's default, divided by G - 1, as TRL does")
            else:
                expect(not close(got, expected / (rewards.view(-1, G).std(1).repeat_interleave(G) + 1e-4)),
                       "scale=False must not divide by the std: Dr. GRPO keeps the raw differences from the mean")
            expect(got[:G].abs().max() < 1e-6, "a group whose rewards are all equal must get advantage 0 for every "
                                               f"completion, got {got[:G].tolist()}")
            expect_tensor(got, expected, f"the advantages (G = {G}, scale = {scale})", atol=1e-4)
    expect_tensor(fn(near.clone(), 2, scale=True), near_expected, "edge: the advantages of a near-tie", atol=1e-3)
    call_on_originals(fn, {"rewards": torch.tensor([0.0, 1.0, 0.5, 0.5, 1.0, 0.0]), "group_size": 2}, scale=True)
    return "groups of 2, 4 and 8, one all alike, with and without the std; a near-tie; inputs"


# ---- the KL ------------------------------------------------------------------------------------------------
@exercise("k3_kl", answers=(rl.k3_kl,))
def k3_kl(fn):
    g = torch.Generator().manual_seed(1)
    logps = -torch.rand(6, 9, generator=g) * 4
    ref = logps + torch.randn(6, 9, generator=g) * 0.7
    got = fn(logps.clone(), ref.clone())
    expect(torch.is_tensor(got) and got.shape == logps.shape,
           f"expected one estimate per token, shape {tuple(logps.shape)}; got "
           f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
    d = logps - ref
    expect(not close(got, torch.exp(d) - d - 1),
           "the sign of the log-ratio is flipped: k3 estimates KL(pi || pi_ref) with d = log pi_ref - log pi, "
           "k3 = exp(d) - d - 1 (the other sign estimates KL(pi_ref || pi), weighted by the wrong samples)")
    expect(not close(got, d), "that is k1 = log pi - log pi_ref, unbiased but often negative; k3 = exp(d) - d - 1 "
                              "with d = log pi_ref - log pi is never negative")
    expect(bool((got >= -1e-6).all()), "k3 is never negative: exp(d) >= 1 + d for every d")
    expect_tensor(got, rl.k3_kl(logps, ref), "k3 = exp(ref - logp) - (ref - logp) - 1", atol=1e-5)
    leaf, oracle_leaf = logps.clone().requires_grad_(), logps.clone().requires_grad_()
    expect_gradients(fn(leaf, ref.clone()), rl.k3_kl(oracle_leaf, ref), {"logps": (leaf, oracle_leaf)},
                     weights=torch.linspace(-1, 2, logps.numel()).view(logps.shape))
    call_on_originals(fn, {"logps": logps, "ref_logps": ref})
    rare = logps - 100 - 20 * torch.rand(logps.shape, generator=g)   # rare tokens: log-probs near -100 to -125
    rare_ref = rare + torch.randn(logps.shape, generator=g) * 0.5
    got = fn(rare.clone(), rare_ref.clone())
    expect(torch.is_tensor(got) and bool(torch.isfinite(got).all()),
           "extreme values: with log-probs near -100 to -125 (rare tokens) the estimate holds inf or NaN: "
           "exp(log-prob) underflows to 0 there, so a ratio of probabilities is 0/0. Take exp of the difference "
           "of the log-probs")
    expect_tensor(got, rl.k3_kl(rare, rare_ref), "extreme values: k3 on rare tokens", atol=1e-4, rtol=1e-4)
    zero = fn(logps.clone(), logps.clone())
    expect(torch.is_tensor(zero) and zero.abs().max() < 1e-7, "with the policy equal to the reference every k3 is 0")
    return "54 tokens, gradients, inputs, log-probs near -120, and 0 when the policy is the reference"


# ---- the clipped loss ---------------------------------------------------------------------------------------
def _rollout(seed, N=8, L=10):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[0] = L
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    old = -torch.rand(N, L, generator=g) * 3
    logps = old + torch.randn(N, L, generator=g) * 0.4
    return logps, old, torch.randn(N, generator=g), mask


def _clip_variants(logps, old, adv, mask, eps):
    """The losses of the typical mistakes, each with GRPO's aggregation unless the mistake is the aggregation."""
    m = mask.float()

    def per_seq(per_token):
        return ((per_token * m).sum(-1) / m.sum(-1)).mean()

    A = adv[:, None]
    ratio = torch.exp(logps - old)
    swapped = torch.exp(old - logps)
    clip = lambda r: r.clamp(1 - eps, 1 + eps)                                                   # noqa: E731
    return {
        "swapped": per_seq(-torch.min(swapped * A, clip(swapped) * A)),
        "no_min": per_seq(-clip(ratio) * A),
        "padding": (-torch.min(ratio * A, clip(ratio) * A)).mean(-1).mean(),
        "token_mean": (-torch.min(ratio * A, clip(ratio) * A) * m).sum() / m.sum(),
        "max": per_seq(-torch.max(ratio * A, clip(ratio) * A)),
        "sign": per_seq(torch.min(ratio * A, clip(ratio) * A)),
    }


@exercise("grpo_loss", answers=(rl.grpo_loss,))
def grpo_loss(fn):
    for seed, eps in ((0, 0.2), (1, 0.1), (2, 0.3)):
        logps, old, adv, mask = _rollout(seed)
        leaf = logps.clone().requires_grad_()
        got = fn(leaf, old.clone(), adv.clone(), mask.clone(), epsilon=eps)
        expected = rl.grpo_loss(logps, old, adv, mask, epsilon=eps)["loss"]
        expect(torch.is_tensor(got) and got.dim() == 0,
               f"expected the loss as a scalar tensor, got {tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        wrong = _clip_variants(logps, old, adv, mask, eps)
        messages = {
            "swapped": "the ratio is upside down: rho = pi / pi_old = exp(logps - old_logps), the new policy over the "
                       "one that sampled",
            "no_min": "the ratio was clipped but not compared with the unclipped term: the loss is "
                      "-min(rho A, clip(rho, 1 - eps, 1 + eps) A), so that the clip only ever removes an incentive",
            "padding": "the padding after each completion's end counts in the loss: multiply by the mask and divide "
                       "each row by its own number of tokens (mask.sum(-1)), not by the padded length",
            "token_mean": "that is the mean over every token of the batch (DAPO's aggregation); GRPO averages within "
                          "each completion first, then over the completions",
            "max": "max instead of min: the surrogate takes the smaller (pessimistic) of the two terms",
            "sign": "the sign is flipped: minimising the loss must raise the probability of positive-advantage "
                    "tokens, so loss = -min(rho A, clip(rho) A)",
        }
        for name, message in messages.items():
            expect(not close(got, wrong[name], atol=1e-5), message)
        expect_tensor(got, expected, f"the GRPO loss (epsilon = {eps})", atol=1e-5)
        got.backward()
        expect(leaf.grad is not None and leaf.grad[mask == 0].abs().max() == 0,
               "padding positions receive a gradient: mask them out of the loss")
    logps, old, adv, mask = _rollout(3)
    leaf, oracle_leaf = logps.clone().requires_grad_(), logps.clone().requires_grad_()
    expect_gradients(fn(leaf, old.clone(), adv.clone(), mask.clone(), epsilon=0.2),
                     rl.grpo_loss(oracle_leaf, old, adv, mask, epsilon=0.2)["loss"], {"logps": (leaf, oracle_leaf)})
    call_on_originals(fn, {"logps": logps, "old_logps": old, "advantages": adv, "mask": mask}, epsilon=0.2)
    got = fn(logps - 110, old - 110, adv.clone(), mask.clone(), epsilon=0.2)   # rare tokens: log-probs near -110
    expect(torch.is_tensor(got) and bool(torch.isfinite(got)),
           f"extreme values: with log-probs near -110 (rare tokens) the loss is {got}: exp(log-prob) underflows to "
           "0 there, so a ratio of probabilities is 0/0. Compute rho = exp(logps - old_logps)")
    expect_tensor(got, rl.grpo_loss(logps - 110, old - 110, adv, mask, epsilon=0.2)["loss"],
                  "extreme values: the GRPO loss on rare tokens", atol=1e-4, rtol=1e-4)
    logps, _, adv, mask = _rollout(5)
    start = logps.clone().requires_grad_()
    on_policy = fn(start, logps.clone(), adv.clone(), mask.clone(), epsilon=0.2)
    expect(abs(on_policy.item() + adv.mean().item()) < 1e-5,
           "with old = the policy itself (the first update) every ratio is 1: each row's loss is -A, and the loss "
           f"-mean(A) = {-adv.mean().item():.4f}; got {on_policy.item():.4f}")
    on_policy.backward()
    reinforce = -adv[:, None] / mask.sum(-1, keepdim=True) / mask.shape[0] * mask
    expect_tensor(start.grad, reinforce.float(), "the gradient on-policy, -A / (row length) / N at each token",
                  atol=1e-6)
    return ("three clip widths, ratios on both sides of the band, rows of different lengths; gradients, inputs, "
            "log-probs near -110; the on-policy gradient")


# ---- pass@k -----------------------------------------------------------------------------------------------------
@exercise("pass_at_k", answers=(rl.pass_at_k,))
def pass_at_k(fn):
    for n in range(1, 7):
        for c in range(n + 1):
            for k in range(1, n + 1):
                samples = [True] * c + [False] * (n - c)
                subsets = list(itertools.combinations(samples, k))
                expected = sum(any(s) for s in subsets) / len(subsets)
                got = fn(n, c, k)
                expect(isinstance(got, (int, float)) or torch.is_tensor(got) and got.numel() == 1,
                       f"pass_at_k({n}, {c}, {k}) returned {type(got).__name__}: return a number")
                got = float(got)
                if abs(got - expected) > 1e-9:
                    if abs(got - (1 - (1 - c / n) ** k)) < 1e-9:
                        raise CheckFailed(f"pass_at_k({n}, {c}, {k}) = {got:.4f} is 1 - (1 - c/n)^k, sampling with "
                                          "replacement: biased. The k samples are drawn from the n without "
                                          f"replacement: 1 - C(n-c, k) / C(n, k) = {expected:.4f}")
                    if abs(got - min(1.0, k * c / n)) < 1e-9:
                        raise CheckFailed(f"pass_at_k({n}, {c}, {k}) = {got:.4f}: k times pass@1 is no probability; "
                                          f"use 1 - C(n-c, k) / C(n, k) = {expected:.4f}")
                    raise CheckFailed(f"pass_at_k({n}, {c}, {k}) should be {expected:.6f} (the fraction of the "
                                      f"C({n}, {k}) subsets with a correct sample), got {got:.6f}")
    for n, c, k in ((5, 0, 6), (5, 5, 8), (1, 1, 2)):
        try:
            got = fn(n, c, k)
        except ValueError:
            continue
        raise CheckFailed(f"edge: pass_at_k({n}, {c}, {k}) returned {got}: k = {k} samples cannot be drawn from "
                          f"n = {n} without replacement, so pass@{k} is not defined there; raise ValueError (1.0 "
                          f"for k > n would claim success with c = {c} correct samples)")
    big = float(fn(200, 13, 100))
    expect(math.isfinite(big) and abs(big - (1 - math.comb(187, 100) / math.comb(200, 100))) < 1e-9,
           f"pass_at_k(200, 13, 100) should be {1 - math.comb(187, 100) / math.comb(200, 100):.6f}, got {big}: "
           "with large n compute the ratio of binomials as a product (or with exact integers), not as two floats "
           "that overflow")
    return "every n <= 6, c, k against enumeration of the subsets; k > n; n = 200"
