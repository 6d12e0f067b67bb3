"""Chapter 10 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import torch
import torch.nn.functional as F

from llmscratch import check

IGNORE_INDEX = -100


# ---- correct answers (the notebook's solutions) -----------------------------------------------------
def sequence_logprob(logits, labels):
    logits, labels = logits[:, :-1], labels[:, 1:]                  # the logits at t predict the token at t + 1
    mask = labels != IGNORE_INDEX
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)   # (B, T-1)
    return (logp * mask).sum(-1)


def sequence_logprob_cross_entropy(logits, labels):
    """Another correct way: cross_entropy skips IGNORE_INDEX itself."""
    B, T, V = logits.shape
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), reduction="none")
    return -nll.view(B, T - 1).sum(-1)


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen = policy_chosen - ref_chosen.detach()
    rejected = policy_rejected - ref_rejected.detach()
    loss = -F.logsigmoid(beta * (chosen - rejected)).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


def reward_accuracy(chosen_rewards, rejected_rewards):
    wins = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return wins.mean().item()


# ---- typical mistakes -----------------------------------------------------------------------------------
def logprob_unshifted(logits, labels):
    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (labels != IGNORE_INDEX)).sum(-1)


def logprob_with_prompt(logits, labels):
    y = labels[:, 1:].clamp(min=0)                                   # no mask: the prompt's positions count too
    return logits[:, :-1].log_softmax(-1).gather(-1, y.unsqueeze(-1)).squeeze(-1).sum(-1)


def logprob_shifted_backwards(logits, labels):
    y = labels[:, :-1]
    logp = logits[:, 1:].log_softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (y != IGNORE_INDEX)).sum(-1)


def logprob_softmax_over_time(logits, labels):
    y = labels[:, 1:]
    logp = logits.log_softmax(1)[:, :-1].gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (y != IGNORE_INDEX)).sum(-1)


def logprob_mean(logits, labels):
    mask = labels[:, 1:] != IGNORE_INDEX
    return sequence_logprob(logits, labels) / mask.sum(-1)


def logprob_batch_sum(logits, labels):
    return sequence_logprob(logits, labels).sum()


def logprob_of_probs(logits, labels):
    y = labels[:, 1:]
    p = logits[:, :-1].softmax(-1).gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (p * (y != IGNORE_INDEX)).sum(-1)


def bt_swapped(chosen_rewards, rejected_rewards):
    return -F.logsigmoid(rejected_rewards - chosen_rewards).mean()


def bt_mean_first(chosen_rewards, rejected_rewards):
    return -F.logsigmoid((chosen_rewards - rejected_rewards).mean())


def bt_log_of_sigmoid(chosen_rewards, rejected_rewards):
    return -torch.log(torch.sigmoid(chosen_rewards - rejected_rewards)).mean()


def bt_no_log(chosen_rewards, rejected_rewards):
    return (1 - torch.sigmoid(chosen_rewards - rejected_rewards)).mean()


def bt_sum(chosen_rewards, rejected_rewards):
    return -F.logsigmoid(chosen_rewards - rejected_rewards).sum()


def dpo_factory(swap=False, beta_mode="times", detach=True, mean_first=False, no_ref=False):
    def wrong(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
        if swap:
            policy_chosen, policy_rejected = policy_rejected, policy_chosen
            ref_chosen, ref_rejected = ref_rejected, ref_chosen
        if detach:
            ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
        b = {"times": beta, "missing": 1.0, "inverted": 1 / beta}[beta_mode]
        chosen = policy_chosen - (0 if no_ref else ref_chosen)
        rejected = policy_rejected - (0 if no_ref else ref_rejected)
        h = chosen - rejected
        loss = -F.logsigmoid(b * h.mean()) if mean_first else -F.logsigmoid(b * h).mean()
        return loss, beta * chosen.detach(), beta * rejected.detach()
    return wrong


def dpo_inverted_ratio(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen, rejected = ref_chosen.detach() - policy_chosen, ref_rejected.detach() - policy_rejected
    return -F.logsigmoid(beta * (chosen - rejected)).mean(), beta * chosen.detach(), beta * rejected.detach()


def dpo_summed(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen, rejected = policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()
    return -F.logsigmoid(beta * (chosen - rejected)).sum(), beta * chosen.detach(), beta * rejected.detach()


def dpo_beta_outside(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen, rejected = policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()
    return -beta * F.logsigmoid(chosen - rejected).mean(), beta * chosen.detach(), beta * rejected.detach()


def dpo_rewards_without_beta(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    loss, chosen, rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta)
    return loss, chosen / beta, rejected / beta


def accuracy_ties_wrong(chosen_rewards, rejected_rewards):
    return (chosen_rewards > rejected_rewards).float().mean().item()


def accuracy_ties_right(chosen_rewards, rejected_rewards):
    return (chosen_rewards >= rejected_rewards).float().mean().item()


def accuracy_swapped(chosen_rewards, rejected_rewards):
    return reward_accuracy(rejected_rewards, chosen_rewards)


def accuracy_count(chosen_rewards, rejected_rewards):
    return (chosen_rewards > rejected_rewards).sum().item()


CORRECT = [
    (check.ch10.sequence_logprob, sequence_logprob),
    (check.ch10.sequence_logprob, sequence_logprob_cross_entropy),
    (check.ch10.bradley_terry_loss, bradley_terry_loss),
    (check.ch10.dpo_loss, dpo_loss),
    (check.ch10.reward_accuracy, reward_accuracy),
]

MISTAKES = [
    (check.ch10.sequence_logprob, logprob_unshifted, "not shifted"),
    (check.ch10.sequence_logprob, logprob_with_prompt, "prompt tokens"),
    (check.ch10.sequence_logprob, logprob_mean, "mean log-prob per reply token"),
    (check.ch10.sequence_logprob, logprob_shifted_backwards, "the shift goes the wrong way"),
    (check.ch10.sequence_logprob, logprob_softmax_over_time, "wrong dimension"),
    (check.ch10.sequence_logprob, logprob_batch_sum, "one log-probability per row"),
    (check.ch10.sequence_logprob, logprob_of_probs, "probabilities were summed"),
    (check.ch10.bradley_terry_loss, bt_swapped, "swapped"),
    (check.ch10.bradley_terry_loss, bt_mean_first, "before the log-sigmoid"),
    (check.ch10.bradley_terry_loss, bt_log_of_sigmoid, "F.logsigmoid"),
    (check.ch10.bradley_terry_loss, bt_no_log, "LOG-likelihood"),
    (check.ch10.bradley_terry_loss, bt_sum, "summed"),
    (check.ch10.dpo_loss, dpo_factory(swap=True), "swapped"),
    (check.ch10.dpo_loss, dpo_factory(beta_mode="missing"), "beta is missing"),
    (check.ch10.dpo_loss, dpo_factory(beta_mode="inverted"), "beta is inverted"),
    (check.ch10.dpo_loss, dpo_factory(detach=False), "detach"),
    (check.ch10.dpo_loss, dpo_factory(mean_first=True), "before the log-sigmoid"),
    (check.ch10.dpo_loss, dpo_factory(no_ref=True), "reference is missing"),
    (check.ch10.dpo_loss, dpo_rewards_without_beta, "lack beta"),
    (check.ch10.dpo_loss, dpo_inverted_ratio, "log-ratios are inverted"),
    (check.ch10.dpo_loss, dpo_summed, "summed"),
    (check.ch10.dpo_loss, dpo_beta_outside, "beta multiplies the log-sigmoid"),
    (check.ch10.reward_accuracy, accuracy_ties_wrong, "counted as wrong"),
    (check.ch10.reward_accuracy, accuracy_ties_right, "counted as right"),
    (check.ch10.reward_accuracy, accuracy_swapped, "swapped"),
    (check.ch10.reward_accuracy, accuracy_count, "a count"),
]


# ---- the four probes: gradients, the caller's inputs, extreme values, the domain's edges ------------------------
# Realistic answers that got every value right on ordinary inputs: each must lose marks, and say which probe.
def logprob_no_grad(logits, labels):
    with torch.no_grad():                                            # "it is only a score"
        return sequence_logprob(logits, labels)


def logprob_through_item(logits, labels):
    return torch.tensor([sequence_logprob(logits[b:b + 1], labels[b:b + 1]).item() for b in range(len(logits))])


def logprob_fills_labels_in_place(logits, labels):
    mask = labels[:, 1:] != IGNORE_INDEX
    labels[labels == IGNORE_INDEX] = 0                              # gather needs valid ids: overwrites the caller's
    logp = logits[:, :-1].log_softmax(-1).gather(-1, labels[:, 1:].unsqueeze(-1)).squeeze(-1)
    return (logp * mask).sum(-1)


def logprob_log_of_softmax(logits, labels):
    y = labels[:, 1:]
    logp = logits[:, :-1].softmax(-1).log().gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (y != IGNORE_INDEX)).sum(-1)


def logprob_naive_logsumexp(logits, labels):
    z = logits[:, :-1]
    logp = z - torch.log(torch.exp(z).sum(-1, keepdim=True))
    y = labels[:, 1:]
    return (logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1) * (y != IGNORE_INDEX)).sum(-1)


def bt_rejected_detached(chosen_rewards, rejected_rewards):
    return -F.logsigmoid(chosen_rewards - rejected_rewards.detach()).mean()


def bt_in_place(chosen_rewards, rejected_rewards):
    chosen_rewards -= rejected_rewards                              # saves a tensor, changes the caller's
    return -F.logsigmoid(chosen_rewards).mean()


def dpo_rejected_detached(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    return dpo_loss(policy_chosen, policy_rejected.detach(), ref_chosen, ref_rejected, beta)


def dpo_rewards_keep_the_graph(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen, rejected = policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()
    return -F.logsigmoid(beta * (chosen - rejected)).mean(), beta * chosen, beta * rejected


def dpo_log_of_sigmoid(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen, rejected = policy_chosen - ref_chosen.detach(), policy_rejected - ref_rejected.detach()
    loss = -torch.log(torch.sigmoid(beta * (chosen - rejected))).mean()
    return loss, beta * chosen.detach(), beta * rejected.detach()


def dpo_ratio_of_probabilities(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen = torch.log(torch.exp(policy_chosen) / torch.exp(ref_chosen.detach()))
    rejected = torch.log(torch.exp(policy_rejected) / torch.exp(ref_rejected.detach()))
    return -F.logsigmoid(beta * (chosen - rejected)).mean(), beta * chosen.detach(), beta * rejected.detach()


def dpo_margin_in_place(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen, rejected = beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()
    ref_chosen -= ref_rejected                                     # the reference margin, in the caller's tensor
    return -F.logsigmoid(beta * ((policy_chosen - policy_rejected) - ref_chosen)).mean(), chosen, rejected


def accuracy_in_place(chosen_rewards, rejected_rewards):
    chosen_rewards -= rejected_rewards
    return ((chosen_rewards > 0).float() + 0.5 * (chosen_rewards == 0).float()).mean().item()


def accuracy_isclose_ties(chosen_rewards, rejected_rewards):
    tie = torch.isclose(chosen_rewards, rejected_rewards)
    return ((chosen_rewards > rejected_rewards) & ~tie).float().add(0.5 * tie.float()).mean().item()


# Correct answers written differently: none may lose marks to the probes.
def bradley_terry_softplus(chosen_rewards, rejected_rewards):
    return F.softplus(rejected_rewards - chosen_rewards).mean()


def dpo_loss_softplus(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):
    chosen = (policy_chosen - ref_chosen).detach()
    rejected = (policy_rejected - ref_rejected).detach()
    margin = (policy_chosen - policy_rejected) - (ref_chosen - ref_rejected).detach()
    return F.softplus(-beta * margin).mean(), beta * chosen, beta * rejected


def reward_accuracy_tensor(chosen_rewards, rejected_rewards):
    return torch.where(chosen_rewards == rejected_rewards, 0.5, (chosen_rewards > rejected_rewards).float()).mean()


CORRECT += [
    (check.ch10.bradley_terry_loss, bradley_terry_softplus),
    (check.ch10.dpo_loss, dpo_loss_softplus),
    (check.ch10.reward_accuracy, reward_accuracy_tensor),
]

PROBED = [
    (check.ch10.sequence_logprob, logprob_no_grad, "gradient"),
    (check.ch10.sequence_logprob, logprob_through_item, "gradient"),
    (check.ch10.sequence_logprob, logprob_fills_labels_in_place, "in place"),
    (check.ch10.sequence_logprob, logprob_log_of_softmax, "extreme"),
    (check.ch10.sequence_logprob, logprob_naive_logsumexp, "extreme"),
    (check.ch10.bradley_terry_loss, bt_rejected_detached, "gradient"),
    (check.ch10.bradley_terry_loss, bt_in_place, "in place"),
    (check.ch10.dpo_loss, dpo_rejected_detached, "gradient"),
    (check.ch10.dpo_loss, dpo_rewards_keep_the_graph, "gradient"),
    (check.ch10.dpo_loss, dpo_log_of_sigmoid, "extreme"),
    (check.ch10.dpo_loss, dpo_ratio_of_probabilities, "extreme"),
    (check.ch10.dpo_loss, dpo_margin_in_place, "in place"),
    (check.ch10.reward_accuracy, accuracy_in_place, "in place"),
    (check.ch10.reward_accuracy, accuracy_isclose_ties, "edge"),
]
MISTAKES += PROBED
