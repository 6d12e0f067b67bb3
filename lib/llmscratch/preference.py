"""Preference tuning (chapter 10): a Bradley-Terry reward model and Direct Preference Optimization (DPO).

A preference pair is one prompt x with two replies, the one people (or a checker) preferred, y_w ("chosen"),
and the other, y_l ("rejected"). Bradley-Terry says P(y_w > y_l | x) = sigmoid(r(x, y_w) - r(x, y_l)) for some
reward r; a reward model learns r from pairs. DPO skips it: the policy pi that maximises
E[r] - beta * KL(pi || pi_ref) satisfies r(x, y) = beta * log(pi(y|x) / pi_ref(y|x)) + (a term of x alone), so

    loss = -log sigmoid(beta * [(log pi(y_w|x) - log pi_ref(y_w|x)) - (log pi(y_l|x) - log pi_ref(y_l|x))])

trains the policy directly on the pairs. log pi(y|x) is the reply's sequence log-probability: the sum over the
reply's tokens and its <|im_end|> (chapter 09's label mask), the prompt given. The reference pi_ref is the
policy with its LoRA adapters switched off: no second copy of the model.

The pairs (`python -m llmscratch.preference --preset cpu`): chapter 09's target task, naming the topic of a
chatterbot question in one word. Chosen: the right topic. Rejected: SmolLM2-135M-Instruct's own reply to the
question (a sentence, the format it fails), or one of several wrong topics drawn from the model's own distribution
over the thirteen (the right format, the wrong content). Both properties can be checked by a program, so the effect
of DPO on generations is measured, not only on log-probs. Pairs are split by question: no held-out prompt is ever
trained on. The run adds the chosen replies' SFT loss to DPO's (sft_weight; RPO): without it, DPO lowers the
chosen replies' likelihood with the rejected ones' and the tuned model stops ending its replies.
"""

import argparse
import contextlib
import json
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import sft
from .lora import adapters_disabled, lora_layers
from .sft import IGNORE_INDEX, TOPICS

LOSS_TYPES = ("sigmoid", "ipo", "robust")


# ---- the pairs ------------------------------------------------------------------------------------
@dataclass
class Pair:
    question: str
    topic: str           # the right answer
    chosen: str
    rejected: str
    kind: str            # "reply": rejected is the model's own reply; "topic": a wrong topic it finds likely

    @property
    def prompt(self) -> list[dict]:
        return sft.topic_messages(self.question)


def normalise(reply: str) -> str:
    return reply.strip().strip(".!").strip().lower()


@torch.no_grad()
def greedy_replies(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int = 16,
                   batch_size: int = 32) -> list[str]:
    """The model's greedy assistant turn for each prompt, like sft.reply but batched: prompts of equal token
    length go through generate() together, which needs no padding (the tests compare with sft.reply)."""
    device = next(model.parameters()).device
    _, end = sft.template_ids(tokenizer)
    ids = [sft.prompt_ids(tokenizer, m) for m in prompts]
    by_length = {}
    for i, row in enumerate(ids):
        by_length.setdefault(len(row), []).append(i)
    out = [None] * len(prompts)
    for length, rows in by_length.items():
        for k in range(0, len(rows), batch_size):
            chunk = rows[k:k + batch_size]
            idx = torch.tensor([ids[i] for i in chunk], device=device)                   # (b, length)
            new = model.generate(idx, max_new_tokens, temperature=0, eos_token_id=end)[:, length:].tolist()
            for i, tokens in zip(chunk, new):
                tokens = tokens[:tokens.index(end)] if end in tokens else tokens
                out[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return out


def reply_ids(tokenizer, question: str, reply: str) -> list[int]:
    """The token ids a reply is scored on (chapter 09's labels): its tokens and <|im_end|>."""
    example = sft.encode_chat(sft.topic_messages(question, reply), tokenizer)
    return [t for t in example["labels"] if t != IGNORE_INDEX]


@torch.no_grad()
def topic_logprobs(model, tokenizer, questions: list[tuple[str, str]], batch_size: int = 16) -> torch.Tensor:
    """(N, len(TOPICS)): log pi(topic | question) of each topic word as the whole reply, scored as pair_logprobs
    scores a reply (its tokens and <|im_end|>): the model's own distribution over the thirteen answers. Each
    prompt goes through the model once; its KV cache is shared by the thirteen candidates."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    K = len(TOPICS)
    candidates = [reply_ids(tokenizer, questions[0][0], t) for t in TOPICS] if questions else []
    L = max(map(len, candidates), default=0)
    cand = torch.tensor([c + [c[-1]] * (L - len(c)) for c in candidates], device=device)           # (K, L)
    scored = torch.arange(L, device=device) < torch.tensor([len(c) for c in candidates], device=device)[:, None]
    prompts = [sft.prompt_ids(tokenizer, sft.topic_messages(q)) for q, _ in questions]
    by_length, out = {}, torch.zeros(len(questions), K)
    for i, row in enumerate(prompts):
        by_length.setdefault(len(row), []).append(i)
    for length, rows in by_length.items():
        for k in range(0, len(rows), batch_size):
            chunk = rows[k:k + batch_size]
            b = len(chunk)
            cache = model.new_cache(b, device, max_len=length + L)
            last = model(torch.tensor([prompts[i] for i in chunk], device=device), cache=cache)[0][:, -1]  # (b, V)
            cache.repeat_interleave(K)                                                   # (b K) rows
            x = cand.repeat(b, 1)                                                        # (b K, L)
            logits = model(x, cache=cache)[0]                                            # (b K, L, V)
            # token 0 of a candidate is predicted by the prompt's last position, token j by candidate token j - 1
            logits = torch.cat([last.repeat_interleave(K, 0)[:, None], logits[:, :-1]], 1)
            lp = logits.float().log_softmax(-1).gather(-1, x[..., None])[..., 0]        # (b K, L)
            out[chunk] = (lp * scored.repeat(b, 1)).sum(-1).view(b, K).cpu()
    model.train(was_training)
    return out


# Chosen and rejected topic words appear in one of these spellings, the same one within a pair: a reward that
# keys on case or a final period cannot separate them (the format check accepts all four).
def _capital(topic: str) -> str:
    return "AI" if topic == "ai" else topic.capitalize()


SPELLINGS = (str, _capital, lambda t: t + ".", lambda t: _capital(t) + ".")


def build_pairs(model, tokenizer, questions: list[tuple[str, str]], max_new_tokens: int = 16,
                wrong_per_question: int = 3, seed: int = 0) -> list[Pair]:
    """Per question: the model's own greedy reply as rejected (when it is not already the topic), and
    wrong_per_question wrong topics drawn without replacement from the model's own distribution over the wrong
    ones (topic_logprobs): its likely mistakes, not one favourite. The chosen reply is the topic, spelled as the
    rejected topic it faces."""
    replies = greedy_replies(model, tokenizer, [sft.topic_messages(q) for q, _ in questions], max_new_tokens)
    logps = topic_logprobs(model, tokenizer, questions)                                  # (N, 13)
    g, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    pairs = []
    for (q, topic), r, lp in zip(questions, replies, logps):
        if normalise(r) != topic and r:   # a right (or empty) reply is no "rejected" example
            pairs.append(Pair(q, topic, rng.choice(SPELLINGS)(topic), r, "reply"))
        wrong = lp.clone()
        wrong[TOPICS.index(topic)] = -float("inf")
        for j in torch.multinomial(wrong.softmax(-1), min(wrong_per_question, len(TOPICS) - 1), generator=g).tolist():
            spell = rng.choice(SPELLINGS)
            pairs.append(Pair(q, topic, spell(topic), spell(TOPICS[j]), "topic"))
    return pairs


def encode_pair(pair: Pair, tokenizer, max_len: int | None = None) -> tuple[dict, dict]:
    """(chosen, rejected) as chapter 09's examples: the same prompt, labels on the reply and its end only."""
    return tuple(sft.encode_chat(pair.prompt + [{"role": "assistant", "content": reply}], tokenizer, max_len)
                 for reply in (pair.chosen, pair.rejected))


def collate_pairs(encoded: list[tuple[dict, dict]], pad_id: int) -> dict:
    """One batch of 2B rows for one forward pass: the B chosen replies, then the B rejected ones."""
    return sft.collate([c for c, _ in encoded] + [r for _, r in encoded], pad_id)


# ---- sequence log-probabilities -------------------------------------------------------------------
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under logits (..., vocab), in float32; 0 where the target is IGNORE_INDEX."""
    flat = logits.reshape(-1, logits.size(-1)).float()
    return -F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none").view(targets.shape)


def sequence_logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, average: bool = False) -> torch.Tensor:
    """log pi(reply | prompt) per row: logits (B, T, vocab) of the whole sequence, labels (B, T) chapter 09's
    (IGNORE_INDEX outside the replies). The logits at t predict the label at t + 1. average: per target token."""
    y = labels[:, 1:]                                                                    # (B, T-1)
    lp = token_logprobs(logits[:, :-1], y).sum(-1)                                       # (B,)
    return lp / (y != IGNORE_INDEX).sum(-1).clamp(min=1) if average else lp


def sequence_logprobs(model, batch: dict, average: bool = False) -> torch.Tensor:
    """sequence_logprobs_from_logits(model(input_ids), labels), computed without the vocabulary projection of
    the prompt's positions when the model can (the course Llama's hidden_states): a reply is a few tokens of a
    long sequence, and lm_head over 49,152 words at every position is a third of a training step."""
    device = next(model.parameters()).device
    x, y = sft.shifted({k: v.to(device) for k, v in batch.items()})
    if not hasattr(model, "hidden_states"):
        return sequence_logprobs_from_logits(model(x)[0], batch["labels"].to(device), average)
    targets = y != IGNORE_INDEX                                                          # (B, T-1)
    hidden = model.hidden_states(x)                                                      # (B, T-1, C)
    lp = torch.zeros(y.shape, device=device)
    lp[targets] = token_logprobs(model.lm_head(hidden[targets]), y[targets])             # only (K, vocab)
    lp = lp.sum(-1)                                                                      # (B,)
    return lp / targets.sum(-1).clamp(min=1) if average else lp


@torch.no_grad()
def pair_logprobs(model, tokenizer, pairs: list[Pair], batch_size: int = 16, max_len: int | None = None,
                  reference: bool = False, average: bool = False) -> torch.Tensor:
    """(N, 2): log pi(chosen), log pi(rejected) of each pair; reference=True: with the adapters switched off."""
    was_training = model.training
    model.eval()
    out = []
    with adapters_disabled(model) if reference else contextlib.nullcontext():
        for k in range(0, len(pairs), batch_size):
            chunk = [encode_pair(p, tokenizer, max_len) for p in pairs[k:k + batch_size]]
            lp = sequence_logprobs(model, collate_pairs(chunk, tokenizer.pad_token_id), average)   # (2b,)
            out.append(torch.stack(lp.float().cpu().chunk(2), dim=1))                    # (b, 2)
    model.train(was_training)
    return torch.cat(out)


# ---- losses -----------------------------------------------------------------------------------------
def bradley_terry_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """-log P(chosen > rejected) = -log sigmoid(r_w - r_l), the mean over pairs (logsigmoid: no overflow)."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float = 0.1,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0) -> dict:
    """The DPO loss of a batch of pairs from sequence log-probs (B,) each, with its implicit rewards.

    h = (log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) - log pi_ref(y_l)), the log-ratio margin:
      sigmoid (DPO):                       -log sigmoid(beta h)
      sigmoid, label_smoothing eps (cDPO): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h): each label
                                           is wrong with probability eps, so the loss stops pushing at a margin
      robust, label_smoothing eps (rDPO):  [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps):
                                           unbiased for the clean loss when labels flip with probability eps
      ipo (IPO):                           (h - 1 / (2 beta))^2: a target margin instead of "ever larger"; give it
                                           per-token log-probs (average=True), as its authors and TRL do
    The rewards beta (log pi - log pi_ref) are for reading, detached; the reference is a constant."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}: it is the weight of the KL penalty")
    ref_chosen, ref_rejected = ref_chosen.detach(), ref_rejected.detach()
    chosen_ratio = policy_chosen - ref_chosen                                            # (B,)
    rejected_ratio = policy_rejected - ref_rejected                                      # (B,)
    h = chosen_ratio - rejected_ratio                                                    # (B,)
    if not 0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing is the probability that a label is wrong: use 0 <= eps < 0.5, "
                         f"got {label_smoothing}")
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  + label_smoothing * F.logsigmoid(-beta * h)) / (1 - 2 * label_smoothing)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    return {"loss": losses.mean(), "losses": losses,
            "chosen_rewards": beta * chosen_ratio.detach(), "rejected_rewards": beta * rejected_ratio.detach()}


def reward_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> float:
    """How often the chosen reply gets the higher reward; a tie counts one half (it is a coin toss), so the
    untrained policy (every reward 0) scores 50%. TRL counts ties as wrong and would print 0% there."""
    wins = (chosen_rewards > rejected_rewards).float() + 0.5 * (chosen_rewards == rejected_rewards).float()
    return wins.mean().item()


def pair_metrics(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float, loss_type: str = "sigmoid",
                 label_smoothing: float = 0.0) -> dict:
    """What every DPO run prints, from (N, 2) log-probs of the policy and the reference."""
    out = dpo_loss(logps[:, 0], logps[:, 1], ref_logps[:, 0], ref_logps[:, 1], beta, loss_type, label_smoothing)
    return metrics_of(out, logps)


def metrics_of(out: dict, logps: torch.Tensor) -> dict:
    """pair_metrics from dpo_loss's output and the policy's (N, 2) log-probs."""
    c, r = out["chosen_rewards"], out["rejected_rewards"]
    return {"loss": out["loss"].item(), "accuracy": reward_accuracy(c, r), "chosen_reward": c.mean().item(),
            "rejected_reward": r.mean().item(), "margin": (c - r).mean().item(),
            "chosen_logp": logps[:, 0].mean().item(), "rejected_logp": logps[:, 1].mean().item()}


def chosen_nll(policy_chosen: torch.Tensor, chosen_tokens: torch.Tensor) -> torch.Tensor:
    """The SFT loss of the chosen replies, -log pi per token over the batch's chosen tokens, from their sequence
    log-probs (B,) and token counts (B,). Added to DPO with a weight (RPO, Pang et al. 2024; TRL's loss_type
    ["sigmoid", "sft"]), it keeps the chosen replies likely: DPO alone only asks that they beat the rejected ones,
    and can lower both."""
    return -policy_chosen.sum() / chosen_tokens.sum().clamp(min=1)


class DPOObjective(nn.Module):
    """The policy and its DPO loss as one module, so that chapter 05's train_step trains it unchanged:
    forward(input_ids, ref_logps, labels) -> (None, loss). `last` holds the batch's metrics. sft_weight > 0 adds
    chosen_nll with that weight."""

    def __init__(self, policy, beta: float = 0.1, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
                 sft_weight: float = 0.0):
        super().__init__()
        self.policy, self.beta, self.loss_type, self.label_smoothing = policy, beta, loss_type, label_smoothing
        self.sft_weight = sft_weight
        self.last = {}

    def forward(self, input_ids, ref_logps, labels):
        batch = {"input_ids": input_ids, "labels": labels}
        lp = sequence_logprobs(self.policy, batch, average=self.loss_type == "ipo").float()        # (2B,)
        chosen, rejected = lp.chunk(2)                                                             # (B,) each
        out = dpo_loss(chosen, rejected, ref_logps[:, 0], ref_logps[:, 1], self.beta, self.loss_type,
                       self.label_smoothing)
        self.last = metrics_of(out, torch.stack([chosen, rejected], 1).detach())
        loss = out["loss"]
        if self.sft_weight:
            chosen_tokens = (labels[:, 1:] != IGNORE_INDEX).sum(-1).chunk(2)[0]                    # (B,)
            summed = chosen * chosen_tokens if self.loss_type == "ipo" else chosen                # (B,) sums
            nll = chosen_nll(summed, chosen_tokens)
            self.last["chosen_nll"] = nll.item()
            loss = loss + self.sft_weight * nll
        return None, loss


# ---- the DPO run --------------------------------------------------------------------------------
# quick: CI and autograding. cpu: the notebook on a 2-core laptop. gpu: every pair, longer.
# train_per_topic: at most this many training questions per topic (the corpus has 40 about coding, 1 about humor:
# unbalanced, the tuned model learns the corpus's favourite topics). wrong_per_question: topic pairs per question.
# sft_weight: the weight of chosen_nll beside the DPO loss (0: plain DPO).
# pairs_per_step pairs are 2x as many sequences in each forward pass. beta: the main run's; betas: the ablation's,
# each run ablation_steps steps of ablation_pairs pairs.
PRESETS = {
    "quick": dict(train_questions=6, train_per_topic=1, eval_questions=4, wrong_per_question=1, max_new_tokens=8,
                  sft_weight=1.0, steps=2, pairs_per_step=2, lr=1e-3,
                  warmup=1, beta=0.1, betas=(0.1,), ablation_steps=1, ablation_pairs=2, rank=8, alpha=16,
                  rm_steps=2, rm_batch=4, rm_lr=1e-4, rm_max_length=48, forget_blocks=2, shown=2),
    "cpu": dict(train_questions=64, train_per_topic=5, eval_questions=32, wrong_per_question=3, max_new_tokens=16,
                sft_weight=1.0, steps=16, pairs_per_step=8, lr=1e-3,
                warmup=2, beta=0.1, betas=(0.01, 0.1, 1.0), ablation_steps=6, ablation_pairs=4, rank=8, alpha=16,
                rm_steps=40, rm_batch=16, rm_lr=1e-4, rm_max_length=48, forget_blocks=8, shown=6),
    "gpu": dict(train_questions=None, train_per_topic=20, eval_questions=None, wrong_per_question=6, max_new_tokens=32,
                sft_weight=1.0, steps=300, pairs_per_step=32, lr=5e-4,
                warmup=20, beta=0.1, betas=(0.01, 0.03, 0.1, 0.3, 1.0), ablation_steps=100, ablation_pairs=32,
                rank=16, alpha=32, rm_steps=400, rm_batch=64, rm_lr=5e-5, rm_max_length=64, forget_blocks=32,
                shown=8),
}


def train_dpo(model, tokenizer, pairs: list[Pair], p: dict, beta: float | None = None, steps: int | None = None,
              loss_type: str = "sigmoid", label_smoothing: float = 0.0, on_step=None, seed: int = 0,
              reference: torch.Tensor | None = None):
    """DPO on a LoRA-wrapped policy, in place, with chapter 05's train_step (clipping, warmup then cosine decay).
    The reference log-probs (N, 2) are computed once, adapters off, before the first step, unless given (they
    do not change: several runs on the same pairs can share them; per token for IPO). Returns the log."""
    from .hardware import autocast_dtype, grad_scaler
    from .train import configure_optimizer, lr_at, train_step

    if not lora_layers(model):
        raise ValueError("train_dpo tunes LoRA adapters and uses the model without them as the reference: "
                         "call apply_lora(model, ...) first")
    if not pairs:
        raise ValueError("no preference pairs to train on")
    beta = p["beta"] if beta is None else beta
    steps = p["steps"] if steps is None else steps
    if reference is None:
        reference = pair_logprobs(model, tokenizer, pairs, reference=True,               # (N, 2), a constant
                                  average=loss_type == "ipo")
    elif reference.shape != (len(pairs), 2):
        raise ValueError(f"reference must hold (chosen, rejected) log-probs for each of the {len(pairs)} pairs, "
                         f"shape ({len(pairs)}, 2); got {tuple(reference.shape)}")
    objective = DPOObjective(model, beta, loss_type, label_smoothing, p.get("sft_weight", 0.0))
    optimizer = configure_optimizer(model, lr=p["lr"], weight_decay=0.0)
    device = next(model.parameters()).device
    dtype = autocast_dtype(device)
    scaler = grad_scaler(dtype, device)
    order, rng, cursor, log = list(range(len(pairs))), random.Random(seed), len(pairs), []
    B = min(p["pairs_per_step"], len(pairs))
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p["lr"], p["warmup"], steps, min_lr=p["lr"] / 10)
        if cursor + B > len(order):
            rng.shuffle(order)
            cursor = 0
        chunk, cursor = order[cursor:cursor + B], cursor + B
        batch = collate_pairs([encode_pair(pairs[i], tokenizer) for i in chunk], tokenizer.pad_token_id)
        x = {"input_ids": batch["input_ids"].to(device), "ref_logps": reference[chunk].to(device)}
        t0 = time.perf_counter()
        stats = train_step(objective, optimizer, [(x, batch["labels"].to(device))], grad_clip=1.0,
                           autocast_dtype=dtype, scaler=scaler)
        stats.update(objective.last, step=step, seconds=time.perf_counter() - t0)
        log.append(stats)
        if on_step:
            on_step(stats)
    return log


def evaluate_pairs(model, tokenizer, pairs: list[Pair], beta: float, reference: torch.Tensor | None = None,
                   logps: torch.Tensor | None = None) -> dict:
    """The DPO metrics on pairs (held-out ones: never trained on), overall and per kind of rejected reply; the
    implicit reward of summed log-probs, whatever loss trained the policy. reference, logps: (N, 2) log-probs of
    the reference and the policy, when already computed."""
    reference = pair_logprobs(model, tokenizer, pairs, reference=True) if reference is None else reference
    logps = pair_logprobs(model, tokenizer, pairs) if logps is None else logps
    out = pair_metrics(logps, reference, beta)
    for kind in ("reply", "topic"):
        rows = torch.tensor([p.kind == kind for p in pairs])
        if rows.any():
            out[f"accuracy_{kind}"] = pair_metrics(logps[rows], reference[rows], beta)["accuracy"]
    return {**out, "pairs": len(pairs)}


def score_generations(model, tokenizer, questions: list[tuple[str, str]], max_new_tokens: int = 8) -> dict:
    """The checkable properties of greedy replies: one topic word (the format), and the right one."""
    replies = greedy_replies(model, tokenizer, [sft.topic_messages(q) for q, _ in questions], max_new_tokens)
    fmt = [normalise(r) in TOPICS for r in replies]
    right = [normalise(r) == t for r, (_, t) in zip(replies, questions)]
    top, share = most_common_share(normalise(r) for r in replies)
    return {"format": sum(fmt) / len(fmt), "correct": sum(right) / len(right), "prompts": len(replies),
            "top_reply": top, "top_reply_share": share, "replies": replies}


def choice_accuracy(model, tokenizer, questions: list[tuple[str, str]]) -> float:
    """How often the right topic is the likeliest of the thirteen as a whole reply (topic_logprobs): what the
    model knows when asked to choose, whatever it would write."""
    right = topic_logprobs(model, tokenizer, questions).argmax(-1)
    return sum(TOPICS[i] == t for i, (_, t) in zip(right.tolist(), questions)) / len(questions)


def most_common_share(items) -> tuple[str, float]:
    """(the most common item, its share of all items): how far replies (or rejected topics) collapse onto one."""
    counts = Counter(items)
    if not counts:
        return None, 0.0
    top, n = counts.most_common(1)[0]
    return top, n / sum(counts.values())


def unseen_rejections(train_pairs: list[Pair], held_pairs: list[Pair]) -> list[bool]:
    """For each held-out pair: is it a topic pair whose (right topic, rejected topic) never occurs among the
    training pairs? A reward model that ranks those right has learned which topic fits, not which words lose."""
    seen = {(p.topic, normalise(p.rejected)) for p in train_pairs if p.kind == "topic"}
    return [p.kind == "topic" and (p.topic, normalise(p.rejected)) not in seen for p in held_pairs]


@torch.no_grad()
def text_kl(model, tokenizer, text: str, block: int = 128, blocks: int = 8) -> float:
    """KL(pi || pi_ref) per token on plain text, the reference being the model with its adapters off: how far
    tuning moved the whole next-token distribution, where the pairs never looked."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode(text, add_special_tokens=False)[:blocks * block]
    rows = torch.tensor(ids[:len(ids) // block * block], device=device).view(-1, block)  # (n, block)
    logp = model(rows)[0].float().log_softmax(-1)
    with adapters_disabled(model):
        ref = model(rows)[0].float().log_softmax(-1)
    model.train(was_training)
    return (logp.exp() * (logp - ref)).sum(-1).mean().item()


# ---- the reward model ---------------------------------------------------------------------------
def reward_rows(tokenizer, pairs: list[Pair], max_length: int) -> list[list[int]]:
    """[CLS] question [SEP] reply [SEP] (chapter 06's WordPiece tokenizer, a pair of texts, the longer one cut
    first) for the chosen replies, then the rejected ones: 2N rows."""
    def row(question, reply):
        return tokenizer(question, reply, truncation=True, max_length=max_length)["input_ids"]
    return [row(p.question, p.chosen) for p in pairs] + [row(p.question, p.rejected) for p in pairs]


class BradleyTerry(nn.Module):
    """A reward model (chapter 07's classifier with one output: the reward) and its pairwise loss, for
    train_step: the batch holds the chosen rows, then the rejected ones."""

    def __init__(self, reward_model):
        super().__init__()
        self.reward_model = reward_model

    def rewards(self, input_ids, attention_mask=None):
        return self.reward_model(input_ids, attention_mask)[0][:, 0]                    # (2B,)

    def forward(self, input_ids, attention_mask=None, labels=None):
        r = self.rewards(input_ids, attention_mask)
        chosen, rejected = r.chunk(2)
        return r, bradley_terry_loss(chosen, rejected)


def reward_model_from(encoder) -> BradleyTerry:
    from .classify import BertForSequenceClassification
    return BradleyTerry(BertForSequenceClassification.from_encoder(encoder, labels=("reward",), pooling="mean"))


def train_reward_model(model: BradleyTerry, tokenizer, pairs: list[Pair], p: dict, on_step=None, seed: int = 0):
    from .classify import pad_batch
    from .train import configure_optimizer, lr_at, train_step

    optimizer = configure_optimizer(model, lr=p["rm_lr"], weight_decay=0.01)
    device = next(model.parameters()).device
    rng, log = random.Random(seed), []
    B = min(p["rm_batch"], len(pairs))
    for step in range(p["rm_steps"]):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p["rm_lr"], max(1, p["rm_steps"] // 10), p["rm_steps"])
        chunk = rng.sample(pairs, B)
        batch = pad_batch(reward_rows(tokenizer, chunk, p["rm_max_length"]), tokenizer.pad_id, device)
        stats = train_step(model, optimizer, [(batch, None)], grad_clip=1.0)
        stats["step"] = step
        log.append(stats)
        if on_step:
            on_step(stats)
    return log


@torch.no_grad()
def reward_scores(model: BradleyTerry, tokenizer, pairs: list[Pair], max_length: int, batch_size: int = 64):
    """(chosen rewards, rejected rewards), each (N,)."""
    from .classify import pad_batch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for k in range(0, len(pairs), batch_size):
        batch = pad_batch(reward_rows(tokenizer, pairs[k:k + batch_size], max_length), tokenizer.pad_id, device)
        out.append(torch.stack(model.rewards(**batch).float().cpu().chunk(2), 1))      # (b, 2)
    model.train(was_training)
    r = torch.cat(out)
    return r[:, 0], r[:, 1]


# ---- the command line ---------------------------------------------------------------------------
def question_splits(p: dict, seed: int = 0):
    """(train, held-out) (question, topic) lists: chapter 09's split by conversation, so that no held-out
    question, in any wording, was trained on in chapter 09 or here."""
    splits = sft.conversation_splits(seed)
    train = sft.topic_questions(splits.train, p.get("train_per_topic", sft.PER_TOPIC))[:p["train_questions"]]
    held_out = sft.topic_questions(splits.test)[:p["eval_questions"]]
    return train, held_out


def main(argv=None):
    from tqdm.auto import tqdm

    from .llama import load_smollm2
    from .lora import apply_lora, save_adapter

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("out-dpo"), help="folder for the adapter and results.json")
    parser.add_argument("--beta", type=float, help="override the preset's beta")
    parser.add_argument("--loss", choices=LOSS_TYPES, default="sigmoid")
    parser.add_argument("--label-smoothing", type=float, default=0.0,
                        help="eps: cDPO with --loss sigmoid, rDPO with --loss robust")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--sft-weight", type=float, help="override the preset's weight of the SFT term (0: plain DPO)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    p = dict(PRESETS[args.preset])
    p.update({k: v for k, v in (("beta", args.beta), ("steps", args.steps)) if v})
    if args.sft_weight is not None:
        p["sft_weight"] = args.sft_weight
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    model, tokenizer = load_smollm2(device)
    train_q, held_q = question_splits(p, args.seed)
    t0 = time.perf_counter()
    train_pairs = build_pairs(model, tokenizer, train_q, p["max_new_tokens"], p["wrong_per_question"], args.seed)
    held_pairs = build_pairs(model, tokenizer, held_q, p["max_new_tokens"], p["wrong_per_question"], args.seed + 1)
    print(f"{len(train_pairs)} training pairs from {len(train_q)} questions, {len(held_pairs)} held-out pairs from "
          f"{len(held_q)} questions ({time.perf_counter() - t0:.0f} s to generate)")
    rejected = {name: most_common_share(normalise(x.rejected) for x in pairs if x.kind == "topic")
                for name, pairs in (("train", train_pairs), ("held_out", held_pairs))}
    print(f"most common rejected topic: {rejected}")
    apply_lora(model, sft.LORA_TARGETS, p["rank"], p["alpha"])
    held_ref = pair_logprobs(model, tokenizer, held_pairs, reference=True)
    # step 0: LoRA's B = 0, so the policy's log-probs are the reference's
    before = {**evaluate_pairs(model, tokenizer, held_pairs, p["beta"], held_ref, logps=held_ref),
              **{k: v for k, v in score_generations(model, tokenizer, held_q).items() if k != "replies"},
              "choice_accuracy": choice_accuracy(model, tokenizer, held_q),
              "forgetting_loss": sft.text_loss(model, tokenizer, sft.forgetting_text(), blocks=p["forget_blocks"])}
    print(f"before: {json.dumps(before)}")
    bar = tqdm(total=p["steps"], desc=f"DPO ({args.loss}, beta {p['beta']}, {args.preset})")

    def on_step(s):
        bar.update(1)
        bar.set_postfix(loss=f"{s['loss']:.3f}", acc=f"{s['accuracy']:.2f}", margin=f"{s['margin']:.2f}")

    log = train_dpo(model, tokenizer, train_pairs, p, loss_type=args.loss, label_smoothing=args.label_smoothing,
                    on_step=on_step, seed=args.seed)
    bar.close()
    generations = score_generations(model, tokenizer, held_q)
    after = {**evaluate_pairs(model, tokenizer, held_pairs, p["beta"], held_ref),
             **{k: v for k, v in generations.items() if k != "replies"},
             "choice_accuracy": choice_accuracy(model, tokenizer, held_q),
             "forgetting_loss": sft.text_loss(model, tokenizer, sft.forgetting_text(), blocks=p["forget_blocks"]),
             "kl_general_text": text_kl(model, tokenizer, sft.forgetting_text(), blocks=p["forget_blocks"])}
    print(f"after:  {json.dumps(after)}")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"adapter (peft format): {save_adapter(model, args.out / 'adapter', 'HuggingFaceTB/SmolLM2-135M-Instruct')}")
    results = {"preset": args.preset, "loss_type": args.loss, "label_smoothing": args.label_smoothing, **p,
               "train_pairs": len(train_pairs), "most_common_rejected_topic": rejected, "before": before,
               "after": after,
               "replies_after": Counter(normalise(r) for r in generations["replies"]).most_common(), "log": log,
               "examples": [{"question": q, "topic": t, "reply": r}
                            for (q, t), r in list(zip(held_q, generations["replies"]))[:p["shown"]]],
               "seconds_per_step": sum(s["seconds"] for s in log) / len(log), **sft.peak_memory(device)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"results: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
