"""Chapter 05 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import math

import numpy as np
import torch

from llmscratch import check
from llmscratch.train import evaluate, get_batch, lr_at
from llmscratch.train import train_step as library_train_step


def get_batch_with(high_offset=0, shift=1, dtype=np.int64, use_generator=True, one_start=False, numpy=False):
    """get_batch with one thing changed: the bound of the starts, the shift of y, the dtype, the RNG, the type."""
    def fn(tokens, batch_size, block_size, generator=None):
        g = generator if use_generator else None
        starts = torch.randint(len(tokens) - block_size + high_offset, (1 if one_start else batch_size,), generator=g)
        starts = starts.expand(batch_size) if one_start else starts
        if numpy:
            return (np.stack([tokens[s:s + block_size].astype(dtype) for s in starts.tolist()]),
                    np.stack([tokens[s + shift:s + shift + block_size].astype(dtype) for s in starts.tolist()]))
        x = torch.stack([torch.from_numpy(tokens[s:s + block_size].astype(dtype)) for s in starts.tolist()])
        y = torch.stack([torch.from_numpy(tokens[s + shift:s + shift + block_size].astype(dtype)) for s in starts.tolist()])
        return x, y
    return fn


def lr_with(warmup_from_zero=False, cosine_from_zero=False, ignore_min=False, no_clamp=False, linear=False,
            warmup_through=False):
    def fn(step, max_lr, warmup_steps, total_steps, min_lr=0.0):
        if step < warmup_steps or warmup_through and step == warmup_steps:
            return max_lr * (step if warmup_from_zero else step + 1) / warmup_steps
        if step >= total_steps and not no_clamp:
            return min_lr
        low = 0.0 if ignore_min else min_lr
        start = 0 if cosine_from_zero else warmup_steps
        progress = (step - start) / (total_steps - start)
        if linear:
            return max_lr - (max_lr - low) * progress
        return low + 0.5 * (max_lr - low) * (1 + math.cos(math.pi * progress))
    return fn


def train_step_with(divide=True, zero_grad="start", clip="once", norm_after_clip=False, sum_loss=False, item=True,
                    train_mode=True, always_clip=False):
    """A training step with one thing changed: no 1/k, where zero_grad goes, how clipping is done."""
    def fn(model, optimizer, micro_batches, grad_clip=1.0):
        if train_mode:
            model.train()
        if always_clip:
            grad_clip = grad_clip or 1e-3
        if zero_grad == "start":
            optimizer.zero_grad(set_to_none=True)
        losses = []
        for x, y in micro_batches:
            if zero_grad == "loop":
                optimizer.zero_grad(set_to_none=True)
            _, loss = model(x, y)
            (loss / len(micro_batches) if divide else loss).backward()
            if clip == "each" and grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            losses.append(loss.item() if item else loss)
        if zero_grad in ("before_step", "before_step_to_zero"):  # erases what backward() accumulated
            optimizer.zero_grad(set_to_none=zero_grad == "before_step")
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip and clip == "once" else float("inf"))
        if norm_after_clip and grad_clip:
            norm = min(norm.item(), grad_clip)
        optimizer.step()
        if zero_grad == "after_step":  # nanoGPT's order: correct too
            optimizer.zero_grad(set_to_none=True)
        if clip == "after_step" and grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        total = sum(losses)
        return {"loss": total if sum_loss else total / len(losses), "grad_norm": float(norm) if item else norm}
    return fn


def evaluate_with(eval_mode=True, no_grad=True, restore=True, mean_of_perplexities=False, first_only=False,
                  sum_losses=False):
    def fn(model, batches):
        was_training = model.training
        model.train(not eval_mode)
        with torch.set_grad_enabled(not no_grad):
            losses = [model(x, y)[1].item() for x, y in (batches[:1] if first_only else batches)]
        if restore == "always train":
            model.train()
        elif restore:
            model.train(was_training)
        loss = sum(losses) / (1 if sum_losses else len(losses))
        ppl = sum(math.exp(v) for v in losses) / len(losses) if mean_of_perplexities else math.exp(loss)
        return {"loss": loss, "perplexity": ppl}
    return fn


CORRECT = [(check.ch05.get_batch, get_batch), (check.ch05.lr_at, lr_at), (check.ch05.train_step, train_step_with()),
           (check.ch05.train_step, library_train_step),
           (check.ch05.train_step, train_step_with(zero_grad="after_step")),
           (check.ch05.evaluate, evaluate), (check.ch05.evaluate, evaluate_with())]

MISTAKES = [
    (check.ch05.get_batch, get_batch_with(shift=0), "y equals x"),
    (check.ch05.get_batch, get_batch_with(high_offset=-1), "excludes high"),
    (check.ch05.get_batch, get_batch_with(high_offset=1), "block_size \\+ 1 tokens"),
    (check.ch05.get_batch, get_batch_with(dtype=np.uint16), "int64"),
    (check.ch05.get_batch, get_batch_with(dtype=np.int32), "int64"),
    (check.ch05.get_batch, get_batch_with(use_generator=False), "generator=generator"),
    (check.ch05.get_batch, get_batch_with(one_start=True), "different windows"),
    (check.ch05.get_batch, get_batch_with(numpy=True), "torch.from_numpy"),
    (check.ch05.lr_at, lr_with(warmup_from_zero=True), "step 0 is 0"),
    (check.ch05.lr_at, lr_with(cosine_from_zero=True), "end of the warmup"),
    (check.ch05.lr_at, lr_with(ignore_min=True), "decays to 0"),
    (check.ch05.lr_at, lr_with(no_clamp=True), "stay at min_lr"),
    (check.ch05.lr_at, lr_with(linear=True), "LinearLR then CosineAnnealingLR"),
    (check.ch05.lr_at, lr_with(warmup_through=True), "above max_lr"),
    (check.ch05.train_step, train_step_with(divide=False), "times too large"),
    (check.ch05.train_step, train_step_with(zero_grad="none"), "previous step"),
    (check.ch05.train_step, train_step_with(zero_grad="loop"), "zero_grad once"),
    (check.ch05.train_step, train_step_with(zero_grad="before_step"), "zero_grad\\(\\) ran after backward\\(\\)"),
    (check.ch05.train_step, train_step_with(zero_grad="before_step_to_zero"), "zero_grad\\(\\) ran after backward\\(\\)"),
    (check.ch05.train_step, train_step_with(clip="each"), "once, after all micro-batches"),
    (check.ch05.train_step, train_step_with(clip="after_step"), "before optimizer.step"),
    (check.ch05.train_step, train_step_with(train_mode=False), "model.train"),
    (check.ch05.train_step, train_step_with(always_clip=True), "nothing needed clipping"),
    (check.ch05.train_step, train_step_with(norm_after_clip=True), "before clipping"),
    (check.ch05.train_step, train_step_with(sum_loss=True), "mean of the micro-batch losses"),
    (check.ch05.train_step, train_step_with(item=False), "holds the autograd graph"),
    (check.ch05.evaluate, lambda model, batches: {k: torch.tensor(v) for k, v in evaluate(model, batches).items()},
     "plain float"),
    (check.ch05.evaluate, evaluate_with(eval_mode=False), "model.eval"),
    (check.ch05.evaluate, evaluate_with(no_grad=False), "no_grad"),
    (check.ch05.evaluate, evaluate_with(restore=False), "put it back"),
    (check.ch05.evaluate, evaluate_with(restore="always train"), "put it back"),
    (check.ch05.evaluate, evaluate_with(sum_losses=True), "sum of the batch losses"),
    (check.ch05.evaluate, evaluate_with(mean_of_perplexities=True), "exp\\(mean loss\\)"),
    (check.ch05.evaluate, evaluate_with(first_only=True), "times for"),
]
