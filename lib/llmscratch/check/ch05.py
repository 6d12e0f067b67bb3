"""Checks for chapter 05, pretraining. Oracles: PyTorch's own schedulers (LinearLR then
CosineAnnealingLR), autograd and clip_grad_norm_ on one large batch, and F.cross_entropy."""

import math

import numpy as np
import torch

from ..gpt import GPT, GPTConfig
from .. import train
from .core import CheckFailed, exercise, expect, expect_tensor, seeded

TINY = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16)


# ---- get_batch ------------------------------------------------------------------------------------
def _draw(fn, tokens, batch_size, block_size, generator):
    try:
        return fn(tokens, batch_size, block_size, generator)
    except NotImplementedError:
        raise
    except (IndexError, RuntimeError) as err:  # a window cut short at the end of the corpus
        raise CheckFailed(f"get_batch(tokens of length {len(tokens)}, {batch_size}, {block_size}) raised "
                          f"{type(err).__name__}: {err}. A window and its targets need block_size + 1 tokens: "
                          "starts must lie in 0 .. len(tokens) - block_size - 1") from err


@exercise("get_batch", answers=(train.get_batch,))
def get_batch(fn):
    # Token i is the number i, so a window shows where it was cut from.
    tokens = np.arange(1000, dtype=np.uint16)
    B, T = 64, 16
    x, y = _draw(fn, tokens, B, T, torch.Generator().manual_seed(0))
    for name, t in (("x", x), ("y", y)):
        expect(isinstance(t, torch.Tensor), f"{name} must be a torch.Tensor, got {type(t).__name__}"
               + (": convert the numpy windows with torch.from_numpy(...)" if isinstance(t, np.ndarray) else ""))
        expect(tuple(t.shape) == (B, T), f"{name} must have shape (batch_size, block_size) = {(B, T)}, "
                                         f"got {tuple(t.shape)}")
        expect(t.dtype == torch.long, f"{name} has dtype {t.dtype}; embeddings and cross_entropy need int64 "
                                      "(torch.long): convert the numpy slice with .astype(np.int64)")
    expect(bool((x[:, 1:] - x[:, :-1] == 1).all()), "each row of x must be one contiguous window of the tokens, "
                                                  "tokens[s : s + block_size]")
    expect(not torch.equal(x, y), "y equals x: the targets are the same window shifted by one, "
                                  "tokens[s + 1 : s + 1 + block_size]")
    expect(torch.equal(y, x + 1), "y must be x shifted by one position: tokens[s + 1 : s + 1 + block_size]")
    starts = x[:, 0]
    expect(bool((starts >= 0).all() and (starts <= len(tokens) - T - 1).all()),
           f"window starts must lie in 0 .. len(tokens) - block_size - 1, got {starts.min()} .. {starts.max()}")
    expect(len(set(starts.tolist())) > B // 2, f"only {len(set(starts.tolist()))} different windows among {B}: "
                                               "draw one random start per row")

    with seeded(1):  # a different global seed each time: an answer that ignores the generator shows
        first = _draw(fn, tokens, B, T, torch.Generator().manual_seed(7))[0]
    with seeded(2):
        second = _draw(fn, tokens, B, T, torch.Generator().manual_seed(7))[0]
    expect(torch.equal(first, second), "the same seeded generator must give the same batch: draw the starts "
                                       "with torch.randint(..., generator=generator)")

    # A corpus only 3 windows long: every start 0, 1, 2 must come up, the last one included.
    short = np.arange(T + 3, dtype=np.uint16)
    g = torch.Generator().manual_seed(3)
    seen = set()
    for _ in range(50):
        seen |= set(_draw(fn, short, 8, T, g)[0][:, 0].tolist())
    expect(seen == {0, 1, 2}, f"with {len(short)} tokens and block_size {T} the starts 0, 1, 2 are all possible; "
                              f"drawn: {sorted(seen)}. torch.randint(high, ...) excludes high: use "
                              "high = len(tokens) - block_size")
    return "random windows, targets shifted by one, reproducible"


# ---- lr_at ----------------------------------------------------------------------------------------
def torch_schedule(max_lr, warmup_steps, total_steps, min_lr):
    """The oracle: PyTorch's LinearLR (warmup) followed by CosineAnnealingLR, one value per step."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=max_lr)
    sched = torch.optim.lr_scheduler
    warmup = sched.LinearLR(opt, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
    cosine = sched.CosineAnnealingLR(opt, T_max=total_steps - warmup_steps, eta_min=min_lr)
    schedule = sched.SequentialLR(opt, [warmup, cosine], milestones=[warmup_steps])
    lrs = []
    for _ in range(total_steps + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return lrs


def _diagnose_schedule(fn, max_lr, warmup, total, min_lr):
    """Name the typical mistake, where the answer matches one."""
    got = [fn(s, max_lr, warmup, total, min_lr) for s in range(total + 30)]
    close = lambda a, b: all(math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-12) for u, v in zip(a, b))
    if math.isclose(got[0], 0.0, abs_tol=1e-12):
        return ("the rate at step 0 is 0: that step is wasted. Warm up as max_lr * (step + 1) / warmup_steps, "
                "so that step warmup_steps - 1 reaches max_lr")
    above = [s for s, v in enumerate(got) if v > max_lr * (1 + 1e-6)]
    if above:
        return (f"the rate rises above max_lr at step {above[0]} ({got[above[0]]:.6g}): the warmup covers steps "
                "0 .. warmup_steps - 1 (step < warmup_steps) and reaches max_lr at its last step; the cosine "
                "starts at max_lr at step warmup_steps")
    cosine_from_zero = [max_lr * (s + 1) / warmup if s < warmup else
                        min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * min(s, total) / total))
                        for s in range(total + 30)]
    if close(got, cosine_from_zero):
        return ("the cosine starts at step 0 instead of at the end of the warmup: progress = "
                "(step - warmup_steps) / (total_steps - warmup_steps)")
    to_zero = [max_lr * (s + 1) / warmup if s < warmup else
               0.5 * max_lr * (1 + math.cos(math.pi * (min(s, total) - warmup) / (total - warmup)))
               for s in range(total + 30)]
    if close(got[:total], to_zero[:total]):
        return "the cosine decays to 0: it must end at min_lr (min_lr + 0.5 * (max_lr - min_lr) * (1 + cos(...)))"
    if any(v > min_lr * (1 + 1e-6) + 1e-12 for v in got[total:]):
        return (f"after total_steps the rate must stay at min_lr, got {got[total + 10]:.3g} at step {total + 10}: "
                "the cosine goes back up if you let it")
    return None


@exercise("lr_at", answers=(train.lr_at,))
def lr_at(fn):
    for max_lr, warmup, total, min_lr in [(1.0, 10, 100, 0.1), (3e-3, 50, 600, 3e-4), (6e-4, 1, 20, 0.0),
                                          (1e-3, 7, 13, 1e-5), (2.0, 100, 1000, 0.2)]:
        expected = torch_schedule(max_lr, warmup, total, min_lr)
        for step in list(range(total + 1)) + [total + 1, total + 50, 10 * total]:
            got = fn(step, max_lr, warmup, total, min_lr)
            want = expected[step] if step <= total else min_lr
            expect(isinstance(got, (int, float)) and not isinstance(got, bool),
                   f"lr_at must return a plain number, got {type(got).__name__}")
            if not math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12):
                hint = _diagnose_schedule(fn, max_lr, warmup, total, min_lr)
                raise CheckFailed(f"lr_at(step={step}, max_lr={max_lr}, warmup_steps={warmup}, total_steps={total}, "
                                  f"min_lr={min_lr}) = {got:.6g}, expected {want:.6g}"
                                  + (f": {hint}" if hint else " (PyTorch's LinearLR then CosineAnnealingLR)"))
    return "equal to PyTorch's LinearLR + CosineAnnealingLR, then min_lr"


# ---- train_step -----------------------------------------------------------------------------------
def _model(seed=0, config=TINY):
    with seeded(seed):
        return GPT(config)


def _batches(seed, k, size=2, config=TINY):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(config.vocab_size, (size, config.block_size), generator=g),
             torch.randint(config.vocab_size, (size, config.block_size), generator=g)) for _ in range(k)]


def _reference_step(model, optimizer, micro_batches, grad_clip):
    """One batch made of all the micro-batches: autograd and clip_grad_norm_ do the rest."""
    optimizer.zero_grad(set_to_none=True)
    x = torch.cat([b[0] for b in micro_batches])
    y = torch.cat([b[1] for b in micro_batches])
    _, loss = model(x, y)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip else float("inf"))
    optimizer.step()
    return {"loss": loss.item(), "grad_norm": norm.item()}


def _number(result, key, what, fn_name):
    expect(isinstance(result, dict) and key in result, f"{fn_name} must return a dict with '{key}', got {result!r}")
    value = result[key]
    if torch.is_tensor(value):
        graph = " that still holds the autograd graph (a list of them keeps every graph alive)" if value.requires_grad else ""
        raise CheckFailed(f"'{key}' is a tensor{graph}: return {what}.item(), a plain float")
    expect(isinstance(value, (int, float)) and not isinstance(value, bool),
           f"'{key}' must be a plain float, got {type(value).__name__}")
    return float(value)


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


@exercise("train_step", answers=(train.train_step,))
def train_step(fn):
    k = 3
    for grad_clip in (None, 1e3, 0.05):  # never clips, never clips, always clips
        ours, ref = _model(), _model()
        opt_ours = torch.optim.SGD(ours.parameters(), lr=0.5)  # plain SGD: parameters show the gradients
        opt_ref = torch.optim.SGD(ref.parameters(), lr=0.5)
        stepped = []  # the gradients each optimizer.step() used, whatever happens to .grad afterwards
        opt_ours.register_step_pre_hook(
            lambda opt, args, kwargs: stepped.append([None if p.grad is None else p.grad.clone() for p in ours.parameters()]))
        modes = []
        ours.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        accumulated = set()  # the parameters backward() gave a gradient, whatever zero_grad does to it later
        for name, p in ours.named_parameters():
            p.register_post_accumulate_grad_hook(lambda p, name=name: accumulated.add(name))
        for step in range(2):  # two steps in a row: gradients must not carry over
            ours.eval()       # as evaluate() may have left it
            micro = _batches(10 * step + 1, k)
            stepped.clear()
            modes.clear()
            accumulated.clear()
            stats = fn(ours, opt_ours, micro, grad_clip)
            expected = _reference_step(ref, opt_ref, micro, grad_clip)
            what = f"step {step + 1} with {k} micro-batches and grad_clip={grad_clip}"
            expect(modes and all(modes), f"{what}: the model ran in eval mode: call model.train() first "
                                         "(evaluate() leaves it in eval mode, where dropout is off)")
            expect(len(stepped) == 1, f"{what}: optimizer.step() was called {len(stepped)} times: once per train_step")
            loss = _number(stats, "loss", "loss", "train_step")
            if math.isclose(loss, k * expected["loss"], rel_tol=1e-4):
                raise CheckFailed(f"{what}: the loss is {loss:.4f}, {k} times the mean {expected['loss']:.4f}: "
                                  "return the mean of the micro-batch losses")
            expect(math.isclose(loss, expected["loss"], rel_tol=1e-5),
                   f"{what}: the loss is {loss:.6f}, expected the mean over the micro-batches {expected['loss']:.6f}")
            norm = _number(stats, "grad_norm", "norm", "train_step")
            if math.isclose(norm, k * expected["grad_norm"], rel_tol=1e-4):
                raise CheckFailed(f"{what}: the gradient norm is {norm:.4f}, {k} times too large: divide each "
                                  "micro-batch's loss by the number of micro-batches before backward(), so the "
                                  "gradients add up to the gradient of the mean")
            if step == 1 and not math.isclose(norm, expected["grad_norm"], rel_tol=1e-4):
                raise CheckFailed(f"{what}: the gradient norm is {norm:.4f}, expected {expected['grad_norm']:.4f}; "
                                  "the first step was right: gradients of the previous step are still there. "
                                  "Call optimizer.zero_grad() at the start of each step")
            used = stepped[0]
            names = [n for n, _ in ours.named_parameters()]
            erased = [n for n, g in zip(names, used) if n in accumulated and (g is None or not g.any())]
            if erased and len(erased) == len(accumulated):
                raise CheckFailed(f"{what}: backward() ran, but the gradients were gone (None or zero) when "
                                  "optimizer.step() ran: zero_grad() ran after backward(): it erased the gradients; "
                                  "call it at the start of the step, before the micro-batches")
            missing = [n for n, g in zip(names, used) if g is None]
            if missing:
                raise CheckFailed(f"{what}: {missing[0]} had no gradient when optimizer.step() ran: call backward() "
                                  "on each micro-batch's loss before stepping")
            got, want = _flat(used), _flat([q.grad for q in ref.parameters()])
            if not torch.allclose(got, want, atol=1e-6, rtol=1e-4):
                scale = (got @ want / (want @ want)).item()
                if torch.allclose(got, scale * want, atol=1e-6, rtol=1e-3):  # right direction, wrong length
                    if grad_clip is None or grad_clip > expected["grad_norm"]:
                        hint = (f"the gradient was scaled by {scale:.3g} although nothing needed clipping: with "
                                f"grad_clip={grad_clip} leave it as it is (clip_grad_norm_ with float('inf'))")
                    elif scale > 1:
                        hint = (f"optimizer.step() used a gradient {scale:.3g} times longer than the clipped one: "
                                "clip before optimizer.step()")
                    else:
                        hint = f"the gradient was scaled by {scale:.3g}: clip its global norm to grad_clip, once"
                else:
                    hint = ("clip the global norm (clip_grad_norm_) once, after all micro-batches, before "
                            "optimizer.step()" if grad_clip == 0.05
                            else "call zero_grad once at the start, then backward() on every micro-batch")
                raise CheckFailed(f"{what}: the gradient optimizer.step() used differs from that of one batch made "
                                  f"of all micro-batches: {hint}")
            if grad_clip is not None and math.isclose(norm, grad_clip, rel_tol=1e-4) and expected["grad_norm"] > grad_clip:
                raise CheckFailed(f"{what}: the gradient norm returned is {norm:.4f} = grad_clip: return the norm "
                                  "before clipping (what clip_grad_norm_ returns), it tells you how often you clip")
            expect(math.isclose(norm, expected["grad_norm"], rel_tol=1e-4),
                   f"{what}: the gradient norm is {norm:.6f}, expected {expected['grad_norm']:.6f} (the norm of "
                   "the gradient of the mean loss over all micro-batches, before clipping; with grad_clip=None too)")
            for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
                expect_tensor(p.detach(), q.detach(), f"{what}: {name} after the step (step once, with the "
                              "clipped gradient)", atol=1e-6, rtol=1e-4)
    return "equal to one large batch, clipped, one step"


# ---- evaluate -------------------------------------------------------------------------------------
@exercise("evaluate", answers=(train.evaluate,))
def evaluate(fn):
    config = GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.5)
    model = _model(1, config)
    batches = _batches(5, 4, size=3, config=config)
    model.eval()
    with torch.no_grad():
        losses = [model(x, y)[1].item() for x, y in batches]
    expected = sum(losses) / len(losses)

    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    try:
        for start_in_training in (True, False):
            model.train(start_in_training)
            seen.clear()
            result = fn(model, batches)
            expect(len(seen) >= len(batches), f"the model ran {len(seen)} times for {len(batches)} batches: "
                                              "evaluate every batch")
            expect(not any(training for training, _ in seen),
                   "the model ran in training mode: call model.eval() first (dropout makes the loss random)")
            expect(not any(grad for _, grad in seen),
                   "the model ran with gradients enabled: evaluate inside torch.no_grad() (no graph, less memory)")
            expect(model.training == start_in_training,
                   f"the model was in {'training' if start_in_training else 'eval'} mode before and is in "
                   f"{'training' if model.training else 'eval'} mode after: put it back as it was "
                   "(was_training = model.training ... model.train(was_training))")
            loss = _number(result, "loss", "loss", "evaluate")
            ppl = _number(result, "perplexity", "perplexity", "evaluate")
            if math.isclose(loss, losses[0], rel_tol=1e-6) and not math.isclose(loss, expected, rel_tol=1e-4):
                raise CheckFailed("the loss is that of the first batch only: average over all batches")
            if math.isclose(loss, sum(losses), rel_tol=1e-5):
                raise CheckFailed(f"the loss is {loss:.6f}, the sum of the batch losses: divide by the number of "
                                  f"batches, the mean is {expected:.6f}")
            expect(math.isclose(loss, expected, rel_tol=1e-5),
                   f"the loss is {loss:.6f}, expected the mean over the batches {expected:.6f}")
            mean_of_perplexities = sum(math.exp(v) for v in losses) / len(losses)
            if math.isclose(ppl, mean_of_perplexities, rel_tol=1e-5):
                raise CheckFailed("the perplexity is the mean of the batches' perplexities: it is exp(mean loss)")
            expect(math.isclose(ppl, math.exp(expected), rel_tol=1e-5),
                   f"the perplexity is {ppl:.4f}, expected exp(mean loss) = {math.exp(expected):.4f}")
    finally:
        hook.remove()
    return "mean loss and exp(mean loss), in eval mode, without gradients"
