"""Checks for chapter 06, BERT. Oracles: the library's BertLayer and CrossAttention (proven equal to
Hugging Face's BertModel and nn.MultiheadAttention), F.cross_entropy, and binomial statistics for
the random masking."""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..attention import CrossAttention, causal_mask, padding_mask
from ..bert import BertConfig, BertLayer
from .. import bert
from .core import (CheckFailed, close, differs, exercise, expect, expect_tensor, explain_runtime_error, oracle_forbidden,
                   randomise, seeded)

TINY = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=32, dropout=0.0)


def _randomised(module, seed):
    return randomise(module, seed).eval()


def _padded_batch(g, B, T, C):
    x = torch.randn(B, T, C, generator=g)
    lengths = [T] + [int(n) for n in torch.randint(2, T, (B - 1,), generator=g)]
    attention_mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
    return x, attention_mask


# ---- encoder_layer ----------------------------------------------------------------------------------
@torch.no_grad()
def _layer_mistakes(layer, x, attention_mask):
    T = x.shape[1]
    keys = padding_mask(attention_mask)                               # (B, 1, 1, T)
    queries = attention_mask.bool()[:, None, :, None]                 # (B, 1, T, 1)
    attn = lambda h, mask: layer.attention(h, mask)
    ffn = lambda h: layer.output(F.gelu(layer.intermediate(h)))

    def post_ln(mask=keys, act=F.gelu):
        h = layer.attention_norm(x + attn(x, mask))
        return layer.output_norm(h + layer.output(act(layer.intermediate(h))))

    pre = x + attn(layer.attention_norm(x), keys)
    return {
        "the encoder used a causal mask: BERT is bidirectional, every token sees every real token, before and "
        "after it; only padding keys are blocked": post_ln(keys & causal_mask(T)),
        "the padding mask blocks queries instead of keys: its shape must be (B, 1, 1, T), so that it masks the "
        "columns (keys) of the (T, T) scores, attention_mask.bool()[:, None, None, :]": post_ln(queries),
        "the padding mask was not used: padding keys got attention weight; pass "
        "mask = attention_mask.bool()[:, None, None, :] to the attention": post_ln(None),
        "this is pre-LN (normalise each branch's input, as chapter 04's GPT); BERT is post-LN: add the branch to "
        "the stream, then normalise the sum, x = attention_norm(x + attention(x, mask))":
            pre + layer.output(F.gelu(layer.intermediate(layer.output_norm(pre)))),
        "the residual connections are missing: add each branch to its input before normalising, "
        "attention_norm(x + attention(x, mask))": layer.output_norm(ffn(layer.attention_norm(attn(x, keys)))),
        "the mask is a float tensor, and a float mask is ADDED to the scores (0 or +1 here), so nothing is hidden: "
        "pass a boolean mask, attention_mask.bool()[:, None, None, :]": post_ln(keys.float()),
        "the GELU is the tanh approximation (GPT-2's); BERT uses the exact one, F.gelu(h)":
            post_ln(act=lambda h: F.gelu(h, approximate="tanh")),
        "the feed-forward branch read the layer's input x: it reads the output of the attention sub-layer":
            layer.output_norm(layer.attention_norm(x + attn(x, keys)) + ffn(x)),
    }


NO_LAYER_CALL = ("build the layer from its parts (layer.attention, layer.attention_norm, layer.intermediate, "
                 "layer.output, layer.output_norm): calling layer(...) itself is the oracle")


@exercise("encoder_layer")
def encoder_layer(fn):
    g = torch.Generator().manual_seed(6)
    n = 0
    for seed, (B, T) in enumerate([(3, 7), (2, 12), (4, 5)]):
        with seeded(seed):
            layer = _randomised(BertLayer(TINY), seed)
        x, attention_mask = _padded_batch(g, B, T, TINY.hidden_size)
        with torch.no_grad():
            expected = layer(x, padding_mask(attention_mask))
        with oracle_forbidden(BertLayer, NO_LAYER_CALL), explain_runtime_error(
                "dtype", lambda error: f"the attention rejected the mask ({error[:120]}): attention_mask is int64 "
                "(1 = real token); turn it into a boolean mask of the keys, attention_mask.bool()[:, None, None, :]"):
            got = fn(x, attention_mask, layer)
        what = f"encoder_layer(x {tuple(x.shape)}, attention_mask {tuple(attention_mask.shape)}, layer)"
        if differs(got, expected, atol=1e-5):
            for mistake, wrong in _layer_mistakes(layer, x, attention_mask).items():
                expect(not close(got, wrong), f"{what}: {mistake}")
        expect_tensor(got, expected, f"{what} (post-LN: x = attention_norm(x + attention(x, mask)); then "
                      "output_norm(x + output(gelu(intermediate(x)))); mask on the keys)", atol=1e-5)
        n += 1
    return f"{n} padded batches equal to the library's post-LN BertLayer"


# ---- mask_tokens ------------------------------------------------------------------------------------
def _mlm_ids(g, B, T, vocab_size, n_special):
    """Rows of [CLS] ordinary ids [SEP] [PAD]...: ids 0..n_special-1 are special, 0 is [PAD], 2 [CLS], 3 [SEP]."""
    ids = torch.randint(n_special, vocab_size, (B, T), generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    for row, n in enumerate(lengths.tolist()):
        ids[row, 0], ids[row, n - 1] = 2, 3
        ids[row, n:] = 0
    return ids


def _call_mask_tokens(fn, ids, special_mask, mask_id, vocab_size, special_ids, p, seed):
    args = (ids.clone(), special_mask.clone(), mask_id, vocab_size, special_ids)
    out = fn(*args, p=p, generator=torch.Generator().manual_seed(seed))
    expect(isinstance(out, tuple) and len(out) == 2, f"mask_tokens must return (inputs, labels), got {type(out).__name__}")
    inputs, labels = out
    for name, t in (("inputs", inputs), ("labels", labels)):
        expect(torch.is_tensor(t) and t.shape == ids.shape,
               f"{name} must be a tensor of the ids' shape {tuple(ids.shape)}, got "
               f"{tuple(t.shape) if torch.is_tensor(t) else type(t).__name__}")
        expect(not t.is_floating_point(), f"{name} must hold integer token ids, got dtype {t.dtype}")
    return inputs, labels


def _within(share, expected, n, what, sigmas=5.0):
    sd = math.sqrt(expected * (1 - expected) / max(n, 1))
    expect(abs(share - expected) <= sigmas * sd + 1e-9,
           f"{what}: expected {expected:.1%} (± {sigmas * sd:.1%} over {n} tokens), got {share:.1%}")


@exercise("mask_tokens", answers=(bert.mask_tokens, bert.mlm_batch))
def mask_tokens(fn):
    g = torch.Generator().manual_seed(7)
    mask_id, n_special = 4, 5                              # [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4
    special_ids = list(range(n_special))
    for vocab_size, p in [(1000, 0.15), (1000, 0.4), (12, 0.15)]:  # 12: a random draw from all ids is often special
        ids = _mlm_ids(g, 64, 256, vocab_size, n_special)
        special_mask = ids < n_special
        what = f"mask_tokens(p={p}, vocabulary of {vocab_size})"
        inputs, labels = _call_mask_tokens(fn, ids, special_mask, mask_id, vocab_size, special_ids, p, seed=1)
        selected = labels != -100
        expect(selected.float().mean().item() < min(0.95, p + 0.2),
               f"{what}: {selected.float().mean().item():.0%} of the positions have a label: set the label to -100 "
               "wherever a token was not selected, so that the loss reads only the selected ones")
        expect(not (selected & special_mask).any(),
               f"{what}: special tokens or padding were selected ([CLS], [SEP], [PAD] are True in special_mask): "
               "select only where special_mask is False")
        expect(torch.equal(inputs[special_mask], ids[special_mask]), f"{what}: special tokens or padding were changed")
        expect(torch.equal(labels[selected], ids[selected]),
               f"{what}: at a selected position the label is the ORIGINAL token (what the model must predict)")
        unselected = ~selected & ~special_mask
        expect(torch.equal(inputs[unselected], ids[unselected]),
               f"{what}: {int((inputs[unselected] != ids[unselected]).sum())} tokens that were not selected (label "
               "-100) were changed: the 80/10/10 rule applies to the selected tokens only; the others stay as they are")
        expect(bool((labels[~selected] == -100).all()), f"{what}: unselected positions must have label -100")
        n_ordinary = int((~special_mask).sum())
        _within(selected.sum().item() / n_ordinary, p, n_ordinary, f"{what}: share of ordinary tokens selected")
        n_sel = int(selected.sum())
        chosen = inputs[selected]
        replaced = chosen[(chosen != mask_id) & (chosen != ids[selected])]
        expect(not torch.isin(replaced, torch.tensor(special_ids)).any(),
               f"{what}: a random replacement was a special token ({sorted(set(replaced[torch.isin(replaced, torch.tensor(special_ids))].tolist()))}): "
               f"draw replacements from the ordinary ids only, those not in special_ids")
        share_random = 0.1 * (1 - 1 / (vocab_size - n_special))   # a random draw can hit the original token
        _within((chosen == mask_id).float().mean().item(), 0.8, n_sel, f"{what}: share of selected tokens that became [MASK]")
        _within(len(replaced) / n_sel, share_random, n_sel, f"{what}: share of selected tokens replaced by a random token")
        again, again_labels = _call_mask_tokens(fn, ids, special_mask, mask_id, vocab_size, special_ids, p, seed=1)
        torch.rand(7)  # move the global random stream on (fork_rng restores it): the masks must depend on `generator` only
        third, _ = _call_mask_tokens(fn, ids, special_mask, mask_id, vocab_size, special_ids, p, seed=1)
        expect(torch.equal(inputs, again) and torch.equal(labels, again_labels) and torch.equal(inputs, third),
               f"{what}: the same generator seed gave different masks: draw every random number from `generator` "
               "(torch.rand(..., generator=generator), torch.randint(..., generator=generator))")
        other, _ = _call_mask_tokens(fn, ids, special_mask, mask_id, vocab_size, special_ids, p, seed=2)
        expect(not torch.equal(inputs, other), f"{what}: two different seeds gave the same masks")
    return "15% selected, 80/10/10, specials untouched, reproducible from the generator"


# ---- mlm_loss -----------------------------------------------------------------------------------------
def _mlm_loss_mistakes(logits, labels):
    V = logits.shape[-1]
    flat_logits, flat = logits.reshape(-1, V), labels.reshape(-1)
    selected = flat != -100
    nll = -flat_logits.log_softmax(-1).gather(1, flat.clamp(min=0)[:, None])[:, 0]
    return {"the loss is averaged over ALL positions (divided by B*T): average over the masked positions only "
            "(label != -100)": (nll * selected).sum() / flat.numel(),
            "the positions labelled -100 are in the loss (as if their label were 0): leave them out":
                nll.mean(),
            "the loss is summed over the masked positions: take their mean": nll[selected].sum(),
            "the log-softmax runs over the wrong dimension: normalise over the vocabulary (dim=-1)":
                -(logits.log_softmax(1).reshape(-1, V).gather(1, flat.clamp(min=0)[:, None])[:, 0])[selected].mean(),
            "the sign is wrong: the loss is the NEGATIVE log-probability of the right token":
                -nll[selected].mean()}


def _forbid(name):
    def forbidden(*args, **kwargs):
        raise CheckFailed(f"write the loss with log_softmax, gather and the mask: {name} is the oracle it is checked against")
    return forbidden


@exercise("mlm_loss", answers=(bert.mlm_loss,))
def mlm_loss(fn):
    g = torch.Generator().manual_seed(8)
    for B, T, V, p in [(2, 6, 11, 0.3), (4, 16, 50, 0.15), (1, 9, 7, 0.5)]:
        logits = torch.randn(B, T, V, generator=g) * 2
        labels = torch.randint(V, (B, T), generator=g)
        labels[torch.rand(B, T, generator=g) >= p] = -100
        labels[0, 0] = 3                                        # at least one masked position
        expected = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
        originals = F.cross_entropy, F.nll_loss
        F.cross_entropy, F.nll_loss = _forbid("F.cross_entropy"), _forbid("F.nll_loss")
        try:
            got = fn(logits, labels)
        finally:
            F.cross_entropy, F.nll_loss = originals
        what = f"mlm_loss(logits {(B, T, V)}, labels with {int((labels != -100).sum())} masked of {B * T})"
        expect(torch.is_tensor(got) and got.dim() == 0, f"{what}: expected a 0-dim tensor, got {got!r}")
        if differs(got, expected, atol=1e-5):
            for mistake, wrong in _mlm_loss_mistakes(logits, labels).items():
                expect(not close(got, wrong, atol=1e-5), f"{what}: {mistake}")
        expect_tensor(got, expected, f"{what} (mean cross-entropy over the positions whose label is not -100)", atol=1e-5)
    return "equal to F.cross_entropy with ignore_index=-100"


# ---- mean_pool ----------------------------------------------------------------------------------------
@exercise("mean_pool", answers=(bert.mean_pool,))
def mean_pool(fn):
    g = torch.Generator().manual_seed(9)
    for B, T, C in [(3, 7, 8), (2, 12, 16), (1, 4, 5)]:
        hidden, attention_mask = _padded_batch(g, B, T, C)
        hidden = hidden + 10 * (1 - attention_mask[..., None])            # padding holds large garbage
        m = attention_mask[..., None].float()
        expected = (hidden * m).sum(1) / m.sum(1)
        what = f"mean_pool(hidden {(B, T, C)}, attention_mask with lengths {attention_mask.sum(1).tolist()})"
        with explain_runtime_error("must match", lambda error: f"{what} raised RuntimeError: {error}. The sum over "
                                   "time is (B, C) and attention_mask.sum(1) is (B,): keep the time axis as a 1 to "
                                   "divide row by row, attention_mask.sum(1, keepdim=True)"):
            got = fn(hidden, attention_mask)
        if differs(got, expected, atol=1e-5):
            mistakes = {"padding was averaged in: sum the hidden states of real tokens only (multiply by the mask) "
                        "and divide by their number, attention_mask.sum(1, keepdim=True)": hidden.mean(1),
                        "the sum of the real tokens was divided by T (padding counted): divide by the number of "
                        "real tokens, attention_mask.sum(1, keepdim=True)": (hidden * m).sum(1) / T,
                        "the real tokens are summed, not averaged: divide by their number": (hidden * m).sum(1)}
            for mistake, wrong in mistakes.items():
                expect(not close(got, wrong, atol=1e-5), f"{what}: {mistake}")
        expect_tensor(got, expected, f"{what} (the mean over real tokens, one vector per row)", atol=1e-5)
    return "the mean over real tokens, padding ignored"


# ---- cross_attention ----------------------------------------------------------------------------------
@torch.no_grad()
def _cross_mistakes(ca, x, memory, memory_mask):
    B, T_q, C = x.shape
    nh, hs = ca.n_head, ca.head_size
    heads = lambda t: t.view(B, t.shape[1], nh, hs).transpose(1, 2)
    q = heads(ca.c_q(x))
    k, v = (heads(t) for t in ca.c_kv(memory).split(C, dim=-1))
    merge = lambda y: ca.c_proj(y.transpose(1, 2).reshape(B, T_q, C))
    keys = padding_mask(memory_mask)
    out = {"the memory's padding mask was not used: padding positions of the encoder output got attention "
           "weight; mask the keys, memory_mask.bool()[:, None, None, :]": merge(F.scaled_dot_product_attention(q, k, v)),
           "the scores are not scaled by 1/sqrt(head size)": merge(
               (q @ k.transpose(-2, -1)).masked_fill(~keys, float("-inf")).softmax(-1) @ v)}
    k_swapped, v_swapped = (heads(t) for t in ca.c_kv(memory).split(C, dim=-1)[::-1])
    out["the heads were merged without the transpose back: y is (B, nh, T_q, hs); y.transpose(1, 2) to "
        "(B, T_q, nh, hs) first, then reshape(B, T_q, C)"] = ca.c_proj(
            F.scaled_dot_product_attention(q, k, v, keys).reshape(B, T_q, C))
    out["keys and values are swapped: c_kv(memory) splits into keys first, then values"] = merge(
        F.scaled_dot_product_attention(q, k_swapped, v_swapped, keys))
    if memory.shape[1] >= T_q:
        causal = torch.ones(T_q, memory.shape[1], dtype=torch.bool).tril()
        out["a causal mask was applied: cross-attention lets every decoder position read the whole source "
            "(only its padding is masked)"] = merge(F.scaled_dot_product_attention(q, k, v, keys & causal))
    return out


@exercise("cross_attention", answers=(CrossAttention.forward,))
def cross_attention(fn):
    g = torch.Generator().manual_seed(10)
    n = 0
    for seed, (B, T_q, T_k, C, nh) in enumerate([(2, 5, 9, 16, 4), (3, 7, 7, 32, 2), (1, 4, 6, 8, 1), (2, 9, 4, 24, 3)]):
        with seeded(seed):
            ca = _randomised(CrossAttention(C, nh), seed)
        x = torch.randn(B, T_q, C, generator=g)
        memory, memory_mask = _padded_batch(g, B, T_k, C)
        with torch.no_grad():
            expected = ca(x, memory, memory_mask)
        what = f"cross_attention(x {(B, T_q, C)}, memory {(B, T_k, C)}, memory_mask, n_head={nh})"
        try:
            got = fn(x, memory, memory_mask, ca.c_q, ca.c_kv, ca.c_proj, nh)
        except RuntimeError as err:
            if T_q == T_k or "size" not in str(err):
                raise
            raise CheckFailed(f"{what} raised RuntimeError: {str(err).rstrip('.')}. With {T_q} decoder positions and "
                              f"{T_k} encoder positions: queries come from x (c_q), keys and values from memory "
                              "(c_kv), and the mask (B, 1, 1, T_k) covers the keys") from err
        if differs(got, expected, atol=1e-5):
            for mistake, wrong in _cross_mistakes(ca, x, memory, memory_mask).items():
                expect(not close(got, wrong, atol=1e-5), f"{what}: {mistake}")
        expect_tensor(got, expected, f"{what} (queries from x, keys and values from memory, padding keys masked, "
                      "heads split and merged as in chapter 03)", atol=1e-5)
        n += 1
    return f"{n} cases equal to the library's CrossAttention"
