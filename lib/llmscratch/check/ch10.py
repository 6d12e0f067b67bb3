"""Checks for chapter 10, preference tuning. Oracles: the library's sequence log-probs (proven equal to Hugging Face's
LlamaForCausalLM), its DPO loss (proven equal to TRL's DPOTrainer) and PyTorch's logsigmoid."""

import torch
import torch.nn.functional as F

from .. import preference as pref
from ..sft import IGNORE_INDEX
from .core import (CheckFailed, call_on_originals, close, exercise, expect, expect_gradients, expect_no_gradient,
                   expect_tensor)


def _labelled_batch(seed, B=5, T=12, V=23):
    """Random logits (B, T, V) and chapter 09 labels: IGNORE_INDEX on each row's prompt (and padding), the reply's
    token ids after it. Row lengths and reply starts differ."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    labels = torch.full((B, T), IGNORE_INDEX)
    for b in range(B):
        start = int(torch.randint(2, T - 3, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        labels[b, start:end] = torch.randint(V, (end - start,), generator=g)
    return logits, labels


# ---- the sequence log-probability -------------------------------------------------------------------------
@exercise("sequence_logprob", answers=(pref.sequence_logprobs_from_logits, pref.sequence_logprobs,
                                       pref.token_logprobs))
def sequence_logprob(fn):
    for seed in range(4):
        logits, labels = _labelled_batch(seed)
        got = fn(logits.clone(), labels.clone())
        expected = pref.sequence_logprobs_from_logits(logits, labels)
        expect(torch.is_tensor(got) and got.shape == expected.shape,
               f"expected one log-probability per row, a tensor of shape {tuple(expected.shape)}; got "
               f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__} (a sum over the batch as "
               "well? DPO needs each reply's own number)")
        if close(got, pref.sequence_logprobs_from_logits(torch.cat([logits[:, 1:], logits[:, :1]], 1), labels)) \
                or close(got, _unshifted(logits, labels)):
            raise CheckFailed("the logits and the labels are not shifted: the logits at position t predict the "
                              "token at t + 1, so pair logits[:, :-1] with labels[:, 1:] (the off-by-one)")
        expect(not close(got, _shifted_backwards(logits, labels)),
               "the shift goes the wrong way: logits[:, 1:] with labels[:, :-1] scores each token with the logits "
               "of the position after it. The logits at t predict the token at t + 1: logits[:, :-1], labels[:, 1:]")
        expect(not close(got, _softmax_over_time(logits, labels)),
               "log_softmax ran over the wrong dimension: normalise over the vocabulary, the last one (dim=-1)")
        expect(not close(got, pref.sequence_logprobs_from_logits(logits, labels, average=True)),
               "that is the mean log-prob per reply token; the sequence log-probability is their sum, log p(y|x) = "
               "sum over the reply's tokens (the mean-per-token variant is a different, length-normalised score)")
        expect(not close(got, _summed_probs(logits, labels)),
               "probabilities were summed; a sequence's log-probability is the sum of the tokens' log-probs "
               "(log_softmax, not softmax)")
        # logits at positions whose next label is ignored (the prompt, padding) must not matter
        moved = logits.clone()
        ignored = labels[:, 1:] == IGNORE_INDEX
        moved[:, :-1][ignored] += torch.randn(int(ignored.sum()), logits.size(-1)) * 3
        again = fn(moved, labels.clone())
        expect(torch.is_tensor(again) and torch.allclose(again, got, atol=1e-4),
               "the result changes with the logits of the prompt's positions: log-probs were summed over the "
               "prompt tokens too. Only positions whose label is not IGNORE_INDEX (the reply and its end) count")
        expect_tensor(got, expected, "log p(reply | prompt) per row", atol=1e-4)
    logits, labels = _labelled_batch(7)
    leaf, oracle_leaf = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    expect_gradients(fn(leaf, labels.clone()), pref.sequence_logprobs_from_logits(oracle_leaf, labels),
                     {"logits": (leaf, oracle_leaf)}, weights=torch.linspace(-1, 2, len(labels)))
    call_on_originals(fn, {"logits": logits, "labels": labels})
    logits = logits * 25                                   # confident logits: the labels' log-probs reach -100s
    got = fn(logits.clone(), labels.clone())
    expect(torch.is_tensor(got) and bool(torch.isfinite(got).all()),
           f"extreme values: with confident logits (some labels' log-probs near -150) the result holds inf or NaN: "
           f"{got}. softmax underflows to 0 and log(0) = -inf, or exp() overflows: use log_softmax (or cross_entropy), "
           "which stays exact")
    expect_tensor(got, pref.sequence_logprobs_from_logits(logits, labels),
                  "extreme values: log p(reply | prompt) with confident logits", atol=1e-2, rtol=1e-4)
    return "4 batches of 5 rows, replies of different lengths and places; gradients, inputs, log-probs near -150"


# The typical mistakes' results: per-position scores (B, T', V) picked at the labels (B, T') and summed over them.
def _picked_sum(scores, labels):
    picked = scores.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (labels != IGNORE_INDEX)).sum(-1)


def _unshifted(logits, labels):
    return _picked_sum(logits.log_softmax(-1), labels)


def _shifted_backwards(logits, labels):
    return _picked_sum(logits[:, 1:].log_softmax(-1), labels[:, :-1])


def _softmax_over_time(logits, labels):
    return _picked_sum(logits.log_softmax(1)[:, :-1], labels[:, 1:])


def _summed_probs(logits, labels):
    return _picked_sum(logits[:, :-1].softmax(-1), labels[:, 1:])


# ---- Bradley-Terry --------------------------------------------------------------------------------------
@exercise("bradley_terry_loss", answers=(pref.bradley_terry_loss,))
def bradley_terry_loss(fn):
    g = torch.Generator().manual_seed(3)
    for scale in (0.5, 3.0):
        chosen, rejected = torch.randn(16, generator=g) * scale, torch.randn(16, generator=g) * scale
        got = fn(chosen.clone(), rejected.clone())
        expected = pref.bradley_terry_loss(chosen, rejected)
        expect(torch.is_tensor(got) and got.dim() == 0,
               f"expected the loss as a scalar tensor (the mean over pairs), got "
               f"{tuple(got.shape) if torch.is_tensor(got) else type(got).__name__}")
        expect(not close(got, pref.bradley_terry_loss(rejected, chosen)),
               "chosen and rejected are swapped: the loss is -log sigmoid(r_chosen - r_rejected), small when the "
               "chosen reply has the higher reward")
        expect(not close(got, -F.logsigmoid((chosen - rejected).mean())),
               "the mean over the batch was taken before the log-sigmoid: average the per-pair losses "
               "-log sigmoid(r_w - r_l), not the reward differences")
        expect(not close(got, (1 - torch.sigmoid(chosen - rejected)).mean()),
               "that is 1 - sigmoid(difference); the Bradley-Terry loss is the negative LOG-likelihood, "
               "-log sigmoid(r_w - r_l)")
        expect(not close(got, -F.logsigmoid(chosen - rejected).sum()),
               "the per-pair losses were summed; take their mean, so that the loss does not grow with the batch")
        expect_tensor(got, expected, "the Bradley-Terry loss", atol=1e-5)
    chosen, rejected = torch.randn(16, generator=g), torch.randn(16, generator=g)
    leaves = [t.clone().requires_grad_() for t in (chosen, rejected)]
    oracle = [t.clone().requires_grad_() for t in (chosen, rejected)]
    expect_gradients(fn(*leaves), pref.bradley_terry_loss(*oracle),
                     {"chosen_rewards": (leaves[0], oracle[0]), "rejected_rewards": (leaves[1], oracle[1])})
    call_on_originals(fn, {"chosen_rewards": chosen, "rejected_rewards": rejected})
    tie = fn(chosen.clone(), chosen.clone())
    expect(torch.is_tensor(tie) and abs(tie.item() - 0.6931472) < 1e-5,
           f"edge: with every pair tied the loss must be ln 2 = 0.6931 (sigmoid(0) = 1/2), got {tie}")
    big = fn(torch.tensor([0.0, 150.0]), torch.tensor([150.0, 0.0]))
    expect(torch.is_tensor(big) and torch.isfinite(big) and abs(big.item() - 75.0) < 1e-3,
           f"extreme values: with reward differences of +-150 the loss must be 75.0, got {big}: log(sigmoid(x)) "
           "underflows to log(0) = -inf for large negative x. Use F.logsigmoid, which stays exact")
    return "two reward scales, gradients on both sides, inputs, ties, differences of +-150"


# ---- DPO -----------------------------------------------------------------------------------------------
def _logps(seed, B=8):
    g = torch.Generator().manual_seed(seed)
    ref = -torch.rand(2, B, generator=g) * 30 - 5
    policy = ref + torch.randn(2, B, generator=g) * 3
    return policy[0], policy[1], ref[0], ref[1]


@exercise("dpo_loss", answers=(pref.dpo_loss,))
def dpo_loss(fn):
    for seed, beta in ((0, 0.1), (1, 0.5), (2, 0.05)):
        pc, pr, rc, rr = _logps(seed)
        leaves = [t.clone().requires_grad_() for t in (pc, pr, rc, rr)]
        got = fn(*leaves, beta)
        expect(isinstance(got, tuple) and len(got) == 3,
               f"dpo_loss must return (loss, chosen_rewards, rejected_rewards), got {type(got).__name__}")
        loss, chosen_rewards, rejected_rewards = got
        expected = pref.dpo_loss(pc, pr, rc, rr, beta)
        expect(torch.is_tensor(loss) and loss.dim() == 0, "the loss must be a scalar tensor: the mean over pairs")

        def wrong(**kw):
            return pref.dpo_loss(**{"policy_chosen": pc, "policy_rejected": pr, "ref_chosen": rc,
                                    "ref_rejected": rr, "beta": beta, **kw})["loss"]
        expect(not close(loss, wrong(policy_chosen=pr, policy_rejected=pc, ref_chosen=rr, ref_rejected=rc)),
               "chosen and rejected are swapped, or the log-ratios are inverted (they are log pi - log pi_ref, "
               "the policy first): this loss teaches the model to prefer the rejected replies")
        expect(not close(loss, wrong(beta=1.0)),
               "beta is missing: the margin of log-ratios is scaled by beta inside the log-sigmoid")
        expect(not close(loss, wrong(beta=1 / beta)),
               "beta is inverted (divided by instead of multiplied): it is -log sigmoid(beta * margin)")
        h = (pc - rc) - (pr - rr)
        expect(not close(loss, -F.logsigmoid(beta * h.mean())),
               "the mean over the batch was taken before the log-sigmoid: average the per-pair losses instead")
        expect(not close(loss, -F.logsigmoid(beta * ((pc + rc) - (pr + rr))).mean()),
               "the reference log-probs were added; the implicit reward is beta * (log pi - log pi_ref)")
        expect(not close(loss, -F.logsigmoid(beta * (pc - pr)).mean()),
               "the reference is missing: DPO compares each log-prob with the reference model's")
        expect(not close(loss, -F.logsigmoid(beta * h).sum()),
               "the per-pair losses were summed; take their mean, so that the loss does not grow with the batch")
        expect(not close(loss, -beta * F.logsigmoid(h).mean()),
               "beta multiplies the log-sigmoid instead of the margin inside it: -log sigmoid(beta * h)")
        expect_tensor(loss, expected["loss"], "the DPO loss", atol=1e-5)
        for name, got_r, exp_r in (("chosen", chosen_rewards, expected["chosen_rewards"]),
                                   ("rejected", rejected_rewards, expected["rejected_rewards"])):
            expect(torch.is_tensor(got_r), f"{name}_rewards must be a tensor of shape {tuple(exp_r.shape)}")
            expect(not close(got_r, exp_r / beta), f"{name}_rewards lack beta: the implicit reward is "
                                                   "beta * (log pi - log pi_ref)")
            expect_tensor(got_r.detach(), exp_r, f"{name}_rewards, beta * (log pi - log pi_ref)", atol=1e-5)
        expect_no_gradient(chosen_rewards, "chosen_rewards")
        expect_no_gradient(rejected_rewards, "rejected_rewards")
        loss.backward()
        expect(leaves[2].grad is None and leaves[3].grad is None,
               "gradient: gradients reach the reference log-probs: the reference is a constant, .detach() them "
               "(else the reference model would be trained too, or its graph kept in memory)")
        leaves = [t.clone().requires_grad_() for t in (pc, pr, rc, rr)]
        oracle = [t.clone().requires_grad_() if i < 2 else t.clone() for i, t in enumerate((pc, pr, rc, rr))]
        names = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
        expect_gradients(fn(*leaves, beta)[0], pref.dpo_loss(*oracle, beta)["loss"],
                         {n: (mine, theirs) for n, mine, theirs in zip(names, leaves, oracle)})
        call_on_originals(fn, dict(zip(names, (pc, pr, rc, rr))), beta=beta)
    g = torch.Generator().manual_seed(9)                    # long replies: log-probs near -100 to -150, and
    rc, rr = -100 - 50 * torch.rand(2, 8, generator=g)      # margins of +-200 (beta * margin up to +-100)
    pc, pr = rc + torch.randn(8, generator=g), rr + torch.randn(8, generator=g)
    pc[:4], pr[:4] = pc[:4] + 100 * torch.tensor([1.0, -1, 1, -1]), pr[:4] - 100 * torch.tensor([1.0, -1, 1, -1])
    got = fn(pc.clone(), pr.clone(), rc.clone(), rr.clone(), 0.5)[0]
    expect(torch.is_tensor(got) and bool(torch.isfinite(got)),
           f"extreme values: with log-probs near -100 and beta * margin near -100 the loss is {got}: log(sigmoid(x)) "
           "underflows to log(0) for large negative x, and exp(log-prob) to 0 (a ratio of probabilities is then 0/0). "
           "Keep everything in log space: differences of log-probs, and F.logsigmoid")
    expect_tensor(got, pref.dpo_loss(pc, pr, rc, rr, 0.5)["loss"], "extreme values: the DPO loss", atol=1e-3,
                  rtol=1e-4)
    pc, pr, _, _ = _logps(5)
    start, c0, r0 = fn(pc.clone(), pr.clone(), pc.clone(), pr.clone(), 0.1)
    expect(abs(start.item() - 0.6931472) < 1e-5 and c0.abs().max() == 0 and r0.abs().max() == 0,
           f"with the policy equal to the reference the loss must be ln 2 = 0.6931 and every reward 0; got "
           f"{start.item():.4f}")
    return "three beta values, gradients, inputs, log-probs near -150 with large margins, and ln 2 at step 0"


# ---- reward accuracy -------------------------------------------------------------------------------------
@exercise("reward_accuracy", answers=(pref.reward_accuracy,))
def reward_accuracy(fn):
    c = torch.tensor([1.0, 0.5, -2.0, 3.0, 0.0, 0.0, 2.0, -1.0])
    r = torch.tensor([0.0, 1.5, -3.0, 1.0, 0.0, 0.0, 2.0, 1.0])   # 3 right, 2 wrong, 3 ties
    got = fn(c.clone(), r.clone())
    if torch.is_tensor(got):
        expect(got.numel() == 1, f"expected one number (a fraction of the pairs), got shape {tuple(got.shape)}")
        got = got.item()
    expect(isinstance(got, (float, int)), f"expected a float, got {type(got).__name__}")
    expect(abs(got - 3) > 1e-6 and abs(got - 6) > 1e-6, f"got {got}: a count of pairs; return the fraction")
    expect(abs(got - 0.375) > 1e-6, "ties are counted as wrong (TRL's convention): then an untrained policy, "
                                    "all rewards 0, scores 0%. Count a tie one half, so that chance is 50%")
    expect(abs(got - 0.75) > 1e-6, "ties are counted as right (>=): count a tie one half, a coin toss")
    expect(abs(got - 0.4375) > 1e-6, "chosen and rejected are swapped: count the pairs where the chosen reward is higher")
    expect(abs(got - pref.reward_accuracy(c, r)) < 1e-6, f"expected {pref.reward_accuracy(c, r)}, got {got}")
    call_on_originals(fn, {"chosen_rewards": c, "rejected_rewards": r})
    near = float(fn(torch.full((4,), 1000.0) + torch.tensor([1e-3, -1e-3, 1e-3, 0.0]), torch.full((4,), 1000.0)))
    expect(abs(near - 0.625) < 1e-6,
           f"edge: rewards 1000.001, 999.999, 1000.001 and 1000 against 1000 are 2 wins, 1 loss and 1 tie, accuracy "
           f"0.625; got {near}. Only an exact tie counts one half: torch.isclose (or a tolerance) turns near-ties of "
           "a reward model's scores into ties")
    zero = fn(torch.zeros(6), torch.zeros(6))
    expect(abs(float(zero) - 0.5) < 1e-6, f"edge: all rewards equal (step 0) must give 0.5, got {float(zero)}")
    return "3 right, 2 wrong, 3 ties; inputs; near-ties; all ties"
