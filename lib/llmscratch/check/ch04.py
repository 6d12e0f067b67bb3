"""Checks for chapter 04, the GPT. Oracles: F.layer_norm, the library's GPT (proven equal to
Hugging Face's GPT2LMHeadModel) and its filters, and full (uncached) attention."""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..gpt import GPT, Block, GPTConfig
from ..gpt import top_k_filter as reference_top_k
from ..gpt import top_p_filter as reference_top_p
from .core import (CheckFailed, close, differs, exercise, expect, expect_tensor, explain_runtime_error, randomise,
                   seeded)

TINY = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)


def _broadcast_error(err):
    return "must match the size of tensor" in str(err) or "broadcast" in str(err)


# ---- layer_norm -----------------------------------------------------------------------------------
def _layer_norm_mistakes(x, w, b):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
    return {"layer_norm uses the unbiased variance (divide by C - 1); LayerNorm divides by C: "
            "x.var(dim=-1, unbiased=False)": (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5) * w + b,
            "layer_norm adds eps outside the square root; it belongs inside: sqrt(var + eps)":
                (x - mean) / (var.sqrt() + 1e-5) * w + b,
            "layer_norm normalises over every element of x at once: LayerNorm normalises each vector over its "
            "last dimension, x.mean(dim=-1, keepdim=True)":
                (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-5) * w + b,
            "layer_norm leaves out the weight and bias: after normalising, scale by weight (gamma) and shift by "
            "bias (beta)": (x - mean) / torch.sqrt(var + 1e-5)}


@exercise("layer_norm")
def layer_norm(fn):
    g = torch.Generator().manual_seed(0)
    # the last case has a tiny variance (~1e-6), where eps = 1e-5 matters: it catches eps outside the root
    for shape, spread in [((4, 8), 3.0), ((2, 5, 16), 3.0), ((3, 1, 7, 32), 3.0), ((2, 8), 1e-3)]:
        x = torch.randn(shape, generator=g) * spread + 1
        w, b = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
        try:
            got = fn(x, w, b)
        except RuntimeError as err:
            if not _broadcast_error(err):
                raise
            raise CheckFailed(f"layer_norm(x of shape {shape}) raised RuntimeError: {str(err).rstrip('.')}. The mean "
                              f"and variance of each vector must keep their dimension, shape {shape[:-1] + (1,)}, to "
                              "broadcast against x: x.mean(dim=-1, keepdim=True)") from err
        expected = F.layer_norm(x, (shape[-1],), w, b, eps=1e-5)
        if differs(got, expected, atol=1e-4):
            for mistake, wrong in _layer_norm_mistakes(x, w, b).items():
                expect(not close(got, wrong), mistake)
        expect_tensor(got, expected, f"layer_norm(x of shape {shape}) (normalise over the last dimension, "
                      "biased variance, eps inside the square root)", atol=1e-4)
    return "equal to F.layer_norm"


# ---- block_forward and gpt_forward ----------------------------------------------------------------
def _model(seed, config=TINY):
    """A GPT whose every parameter is random (LayerNorm weights and biases, all Linear biases and the
    embeddings too), so that an answer that leaves one out, or uses one in place of another, shows."""
    with seeded(seed):
        model = GPT(config).eval()
    return randomise(model, seed)


def _plain_norm(h):
    return F.layer_norm(h, h.shape[-1:])


@torch.no_grad()
def _block_mistakes(block, x):
    ln_1, ln_2, mlp = block.ln_1, block.ln_2, block.mlp
    attn = lambda h, causal=True: block.attn(h, is_causal=causal)  # the library's attention, in eval mode

    def pre_ln(norm_1=ln_1, norm_2=ln_2, causal=True):
        h = x + attn(norm_1(x), causal)
        return h + mlp(norm_2(h))

    post = ln_1(x + attn(x))
    normed = ln_1(x)
    normed = ln_2(normed + attn(normed))
    return {"the attention is not causal: a token must not see later ones, use is_causal=True (or a causal mask)":
                pre_ln(causal=False),
            "the MLP's input was normalised with ln_1 (ln_1 used twice): the MLP branch reads ln_2(x)":
                pre_ln(norm_2=ln_1),
            "the LayerNorms ran without their weight and bias (gamma and beta): call the block's modules, "
            "block.ln_1(x) and block.ln_2(x)": pre_ln(_plain_norm, _plain_norm),
            "the MLP read the block's input: it reads the stream after the attention was added, "
            "x = x + attn(ln_1(x)), then x + mlp(ln_2(x))": x + attn(ln_1(x)) + mlp(ln_2(x)),
            "the residual connections are missing: add each branch to the stream, x = x + attn(ln_1(x)), "
            "then x = x + mlp(ln_2(x))": mlp(ln_2(attn(ln_1(x)))),
            "the residual stream was normalised (x = ln_1(x) replaced it): keep x as it is and add the branch "
            "to it, x = x + attn(ln_1(x))": normed + mlp(normed),
            "this is post-LN (normalise after adding each branch); GPT-2's block is pre-LN: x + attn(ln_1(x)), "
            "then + mlp(ln_2(x)), and the stream itself is never normalised": ln_2(post + mlp(post))}


@exercise("block_forward", answers=(Block.forward,))
def block_forward(fn):
    model = _model(1)
    x = torch.randn(2, 9, TINY.n_embd, generator=torch.Generator().manual_seed(1))
    for i, block in enumerate(model.transformer.h):
        got = fn(x, block)
        with torch.no_grad():
            expected = block(x)
        if differs(got, expected, atol=1e-5):
            for mistake, wrong in _block_mistakes(block, x).items():
                expect(not close(got, wrong), f"block_forward(x, block {i}): {mistake}")
        expect_tensor(got, expected, f"block_forward(x, block {i}) (pre-LN: x + attn(ln_1(x)), then + mlp(ln_2(x)); "
                                     "causal attention)", atol=1e-5)
    return "equal to the library's pre-LN block"


@torch.no_grad()
def _logits_mistakes(model, idx):
    t = model.transformer

    def run(x, final_norm=t.ln_f):
        for block in t.h:
            x = block(x)
        return model.lm_head(final_norm(x))

    tokens, positions = t.wte(idx), t.wpe.weight[:idx.shape[1]]
    return {"the position embeddings are missing: add wpe's vectors for positions 0..T-1 to the token embeddings":
                run(tokens),
            "ln_f was not applied: the last block's output goes through the final LayerNorm before lm_head":
                run(tokens + positions, lambda h: h),
            "ln_f's weight and bias are missing (a LayerNorm without gamma and beta): use the model's own "
            "model.transformer.ln_f(x)": run(tokens + positions, _plain_norm)}


def _loss_mistakes(logits, targets):
    V = logits.shape[-1]
    padding_counted = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1).clamp(min=0))
    return {"the loss counts the positions whose target is -100 (padding): leave them out, "
            "F.cross_entropy(..., ignore_index=-100)": padding_counted,
            "the targets are already shifted (targets[:, t] is the token that follows idx[:, t]): do not shift "
            "logits and targets again": F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1)),
            "the loss is summed over the positions: take the mean (F.cross_entropy's default)":
                F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), reduction="sum")}


@exercise("gpt_forward", answers=(GPT.forward,))
def gpt_forward(fn):
    model = _model(2)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(TINY.vocab_size, (3, 12), generator=g)
    targets = torch.randint(TINY.vocab_size, (3, 12), generator=g)
    targets[1, 6:] = -100
    with torch.no_grad():
        expected_logits, expected_loss = model(idx, targets)
    logits, loss = fn(model, idx)
    if torch.is_tensor(logits) and logits.shape[-1] == TINY.n_embd:
        raise CheckFailed(f"the logits have shape {tuple(logits.shape)}, the model's width: apply model.lm_head "
                          f"to get one logit per vocabulary entry, shape {tuple(expected_logits.shape)}")
    if differs(logits, expected_logits, atol=1e-5):
        for mistake, wrong in _logits_mistakes(model, idx).items():
            expect(not close(logits, wrong), f"gpt_forward logits: {mistake}")
    expect_tensor(logits, expected_logits, "gpt_forward logits (wte + wpe, the blocks, ln_f, lm_head)", atol=1e-5)
    expect(loss is None, f"without targets the loss must be None, got {loss!r}")
    try:
        logits, loss = fn(model, idx, targets)
    except (RuntimeError, ValueError) as err:
        if "target" not in str(err).lower():
            raise
        raise CheckFailed(f"gpt_forward(model, idx of shape {tuple(idx.shape)}, targets) raised {type(err).__name__}: "
                          f"{str(err).rstrip('.')}. F.cross_entropy takes logits (N, vocab) and targets (N,): "
                          "flatten both, logits.view(-1, logits.size(-1)) and targets.view(-1)") from err
    expect(torch.is_tensor(loss) and loss.dim() == 0, f"the loss must be a 0-dim tensor, got {loss!r}")
    for mistake, wrong in _loss_mistakes(expected_logits, targets).items():
        expect(not close(loss, wrong, atol=1e-5), f"gpt_forward loss: {mistake}")
    expect_tensor(loss, expected_loss, "gpt_forward loss (mean cross-entropy over positions whose target is not "
                                       "-100)", atol=1e-5)
    return "logits and loss equal to the library's GPT"


# ---- top_k_filter and top_p_filter ----------------------------------------------------------------
def _filter_cases():
    g = torch.Generator().manual_seed(3)
    return [torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]]), torch.tensor([[2.0, 2.0, 1.0, 0.0]]),
            torch.randn(4, 30, generator=g) * 2, torch.tensor([[10.0, 0.0, 0.0]]), torch.randn(5, 5, generator=g) * 2]


def _kept(logits):
    return torch.isfinite(logits).int()


def _first_difference(logits, got, expected, show):
    """The first row whose kept entries differ: its index, what it held (`show` of the row) and both masks."""
    r = int((_kept(got) != _kept(expected)).any(-1).nonzero()[0])
    return (f"row {r} of {logits.shape[0]}, {show(logits[r])}: kept {_kept(got)[r].tolist()}, "
            f"expected {_kept(expected)[r].tolist()} (1 = kept)")


def _rounded(values, digits=2):
    return [round(x, digits) for x in values.tolist()]


def _top_k_error(logits, k, err, worked):
    what = f"top_k_filter(logits of shape {tuple(logits.shape)}, k={k}) raised RuntimeError: {str(err).rstrip('.')}"
    if k > logits.shape[-1] and ("out of range" in str(err) or worked):
        return f"{what}. k may exceed the vocabulary: clamp it with min(k, logits.size(-1))"
    if _broadcast_error(err):
        return (f"{what}. A shape mismatch: compare each row with its own k-th largest value, kept as a column of "
                "shape (rows, 1): torch.topk(...).values[..., -1:] or keepdim=True")
    return what


def _top_k_mistakes(logits, k):
    values = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values
    mistakes = {"the k-th largest logit itself was dropped: drop only the logits below it (logits < kth)":
                    logits.masked_fill(logits <= values[..., -1:], float("-inf"))}
    if logits.shape[0] == logits.shape[-1]:  # (rows,) broadcasts against square logits: along the wrong axis
        mistakes["each row was compared with the k-th largest value of another row: keep it as a column, shape "
                 "(rows, 1), with values[..., -1:] or keepdim=True"] = logits.masked_fill(logits < values[..., -1],
                                                                                          float("-inf"))
    return mistakes


@exercise("top_k_filter", answers=(reference_top_k,))
def top_k_filter(fn):
    for logits in _filter_cases():
        worked = False
        for k in (1, 2, 3, 100):
            try:
                got = fn(logits.clone(), k)
            except NotImplementedError:
                raise
            except RuntimeError as err:
                raise CheckFailed(_top_k_error(logits, k, err, worked)) from err
            worked = True
            expected = reference_top_k(logits, k)
            what = f"top_k_filter(logits of shape {tuple(logits.shape)}, k={k})"
            expect(isinstance(got, torch.Tensor) and got.shape == logits.shape,
                   f"{what} must return a tensor of the logits' shape, got {getattr(got, 'shape', type(got))}")
            fill = got[(got != logits) & ~torch.isneginf(got)].unique()
            if len(fill) == 1:
                raise CheckFailed(f"{what}: the dropped logits must become float('-inf') (probability 0 after "
                                  f"softmax), got {fill.item():.4g}")
            if not torch.equal(_kept(got), _kept(expected)):
                for mistake, wrong in _top_k_mistakes(logits, k).items():
                    expect(not torch.equal(_kept(got), _kept(wrong)), f"{what}: {mistake}")
                shown = lambda row: f"logits {_rounded(row)}"
                raise CheckFailed(f"{what}: {_first_difference(logits, got, expected, shown)}; keep the k largest "
                                  "of each row and the ties with the k-th largest")
            expect_tensor(got.masked_fill(~torch.isfinite(got), 0), expected.masked_fill(~torch.isfinite(expected), 0),
                          "the kept logits must be unchanged")
    return "keeps the k largest (and ties)"


def _top_p_mistakes(logits, p):
    probs = logits.softmax(-1)
    sorted_probs, order = torch.sort(probs, descending=True, dim=-1)
    sorted_logits = logits.gather(-1, order)

    unsorted = probs.cumsum(-1) - probs >= p                         # each: the mass before a token reaches p
    in_sorted_order = sorted_probs.cumsum(-1) - sorted_probs >= p
    on_logits = sorted_logits.cumsum(-1) - sorted_logits >= p
    return {"the probabilities were summed in vocabulary order: sort them first, most likely first "
            "(torch.sort(..., descending=True)), and sum along that order": unsorted,
            "the mask was returned in sorted order: scatter it back to vocabulary order, "
            "drop_sorted.scatter(-1, order, drop_sorted)": in_sorted_order,
            "the cumulative sum ran over the logits: turn them into probabilities with softmax first":
                on_logits.scatter(-1, order, on_logits)}


@exercise("top_p_filter", answers=(reference_top_p,))
def top_p_filter(fn):
    for logits in _filter_cases() + [torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()]:
        for p in (0.5, 0.6, 0.8, 0.81, 0.95, 1.0):
            got = fn(logits.clone(), p)
            expected = reference_top_p(logits, p)
            what = f"top_p_filter(logits of shape {tuple(logits.shape)}, p={p})"
            expect(isinstance(got, torch.Tensor) and got.shape == logits.shape,
                   f"{what} must return a tensor of the logits' shape, got {getattr(got, 'shape', type(got))}")
            if not torch.equal(_kept(got), _kept(expected)):
                for mistake, drop in _top_p_mistakes(logits, p).items():
                    expect(not torch.equal(_kept(got).bool(), ~drop), f"{what}: {mistake}")
                shown = lambda row: f"probabilities {_rounded(row.softmax(-1), 3)}"
                raise CheckFailed(f"{what}: {_first_difference(logits, got, expected, shown)}; keep the most likely "
                                  "tokens until their sum reaches p, including the token that crosses p")
    return "keeps the nucleus, the crossing token included"


# ---- attend_with_cache ----------------------------------------------------------------------------
def _cache_step(fn, q, k, v, k_cache, v_cache, t):
    with explain_runtime_error("Sizes of tensors must match", lambda error: f"step {t} (a cache of {t} positions) "
                               f"raised RuntimeError: {error.rstrip('.')}. The caches are (B, nh, time, hs): append "
                               "the new key and value along the time dimension, torch.cat((k_cache, k_new), dim=2)"):
        return fn(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], k_cache, v_cache)


@exercise("attend_with_cache")
def attend_with_cache(fn):
    g = torch.Generator().manual_seed(4)
    B, nh, hs, T = 2, 3, 8, 6
    q, k, v = (torch.randn(B, nh, T, hs, generator=g) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # (B, nh, T, hs)
    # From a cache of 2 positions (where the usual mistakes give different outputs), then from an empty one.
    for start in (2, 0):
        k_cache, v_cache = k[:, :, :start], v[:, :, :start]               # (B, nh, start, hs)
        for t in range(start, T):
            what = f"step {t} (a cache of {t} positions)"
            q_t = q[:, :, t:t + 1]
            out, k_cache, v_cache = _cache_step(fn, q, k, v, k_cache, v_cache, t)
            for name, cache, truth in (("key", k_cache, k), ("value", v_cache, v)):
                expect(tuple(cache.shape) == (B, nh, t + 1, hs),
                       f"after {what} the {name} cache must hold {t + 1} positions, shape {(B, nh, t + 1, hs)}, "
                       f"got {tuple(cache.shape)}: append the new {name} along the time dimension (dim=2)")
                expect(torch.allclose(cache, truth[:, :, :t + 1]),
                       f"after {what} the {name} cache must hold the {name}s of positions 0..{t} in time order"
                       + (", but the new one came first" if torch.equal(cache[:, :, 0], truth[:, :, t]) else "")
                       + f": append the new {name} after the cached ones, torch.cat((cache, new), dim=2)")
            if t > 1 and close(out, F.scaled_dot_product_attention(q_t, k_cache, v_cache, is_causal=True), atol=1e-5):
                raise CheckFailed(f"the output of {what} attends to position 0 only: with one query, is_causal=True "
                                  "masks every key but the first (PyTorch aligns the causal mask top-left). The new "
                                  "token may see every cached key: leave is_causal out")
            if t > 1 and close(out, F.scaled_dot_product_attention(q_t, k[:, :, :t], v[:, :, :t]), atol=1e-5):
                raise CheckFailed(f"the output of {what}: the new token did not attend to itself: append its key and "
                                  "value to the caches first, then attend over all of them")
            expect_tensor(out, full[:, :, t:t + 1], f"the output of {what} (the new token attends to every cached "
                                                   "position and to itself)", atol=1e-5)
    return f"{T} steps equal to full causal attention, from an empty cache and from a filled one"
