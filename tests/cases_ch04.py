"""Chapter 04 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import math

import torch
import torch.nn.functional as F

from llmscratch import check
from llmscratch.gpt import top_k_filter, top_p_filter


def layer_norm(x, w, b, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def block_forward(x, block):
    return block(x)


def gpt_forward(model, idx, targets=None):
    return model(idx, targets)


def attend_with_cache(q, k, v, k_cache, v_cache):
    k_cache, v_cache = torch.cat((k_cache, k), 2), torch.cat((v_cache, v), 2)
    return F.scaled_dot_product_attention(q, k_cache, v_cache), k_cache, v_cache


def attend(block, h, causal=True):
    B, T, C = h.shape
    nh = block.attn.n_head
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in block.attn.c_attn(h).split(C, dim=-1))
    return block.attn.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(B, T, C))


def plain_layer_norm(h):
    return F.layer_norm(h, h.shape[-1:])


def block_ln_1_twice(x, block):
    x = x + attend(block, block.ln_1(x))
    return x + block.mlp(block.ln_1(x))


def block_without_gamma_beta(x, block):
    x = x + attend(block, plain_layer_norm(x))
    return x + block.mlp(plain_layer_norm(x))


def block_parallel(x, block):  # GPT-J's layout: both branches read the block's input
    return x + attend(block, block.ln_1(x)) + block.mlp(block.ln_2(x))


def block_without_residual(x, block):
    x = attend(block, block.ln_1(x))
    return block.mlp(block.ln_2(x))


def block_normalising_the_stream(x, block):
    x = block.ln_1(x)
    x = x + attend(block, x)
    x = block.ln_2(x)
    return x + block.mlp(x)


def post_ln_block(x, block):
    x = block.ln_1(x + attend(block, x))
    return block.ln_2(x + block.mlp(x))


def block_without_causal_mask(x, block):
    B, T, C = x.shape
    nh = block.attn.n_head
    q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=-1)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    x = x + block.attn.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))
    return x + block.mlp(block.ln_2(x))


def block_forward_by_hand(x, block):  # attention written out, as a student who skips SDPA would
    B, T, C = x.shape
    nh = block.attn.n_head
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in block.attn.c_attn(block.ln_1(x)).split(C, dim=-1))
    blocked = ~torch.ones(T, T, dtype=torch.bool).tril()
    w = (q @ k.transpose(-2, -1) / math.sqrt(C // nh)).masked_fill(blocked, float("-inf"))
    x = x + block.attn.c_proj((w.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C))
    return x + block.mlp(block.ln_2(x))


def gpt_loss_on_padding(model, idx, targets=None):
    logits, _ = model(idx)
    if targets is None:
        return logits, None
    return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten().clamp(min=0))


def gpt_with(positions="arange", final_norm="ln_f", head=True, loss="flat"):
    """gpt_forward with one thing changed: the positions, the final LayerNorm, the head, the loss."""
    def fn(model, idx, targets=None):
        t = model.transformer
        x = t.wte(idx)
        if positions == "arange":
            x = x + t.wpe.weight[:idx.shape[1]]
        for block in t.h:
            x = block(x)
        x = {"ln_f": t.ln_f, "plain": plain_layer_norm, "none": lambda h: h}[final_norm](x)
        logits = model.lm_head(x) if head else x
        if targets is None:
            return logits, None
        if loss == "unflattened":
            return logits, F.cross_entropy(logits, targets)
        if loss == "shifted again":
            return logits, F.cross_entropy(logits[:, :-1].flatten(0, 1), targets[:, 1:].flatten())
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return fn


def top_k_without_ties(logits, k):
    kept = torch.full_like(logits, float("-inf"))
    values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return kept.scatter(-1, indices, values)


def top_k_with(keepdim=True, strict=True, fill=float("-inf"), rows=None):
    def fn(logits, k):
        values = torch.topk(logits, min(k, logits.size(-1)), dim=-1).values
        kth = values[..., -1:] if keepdim else values[..., -1]
        drop = logits < kth if strict else logits <= kth
        if rows is not None:  # filters only the first rows
            drop[rows:] = False
        return logits.masked_fill(drop, fill)
    return fn


def top_k_keepdim_missing_on_square_logits(logits, k):  # where (rows,) broadcasts, it compares across rows
    try:
        return top_k_with(keepdim=False)(logits, k)
    except RuntimeError:
        return top_k_filter(logits, k)


def top_p_with(sort=True, scatter=True, softmax=True):
    def fn(logits, p):
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        if not sort:
            sorted_logits, order = logits, torch.arange(logits.shape[-1]).expand_as(logits)
        probs = sorted_logits.softmax(-1) if softmax else sorted_logits
        drop_sorted = probs.cumsum(-1) - probs >= p
        drop = drop_sorted.scatter(-1, order, drop_sorted) if scatter else drop_sorted
        return logits.masked_fill(drop, float("-inf"))
    return fn


def top_p_dropping_the_crossing_token(logits, p):
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) > p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def attend_without_own_token(q, k, v, k_cache, v_cache):
    out = F.scaled_dot_product_attention(q, k_cache, v_cache) if k_cache.shape[2] else v
    return out, torch.cat((k_cache, k), 2), torch.cat((v_cache, v), 2)


def attend_with(order="append", dim=2, is_causal=False):
    def fn(q, k, v, k_cache, v_cache):
        pair = lambda cache, new: (cache, new) if order == "append" else (new, cache)
        k_cache, v_cache = torch.cat(pair(k_cache, k), dim), torch.cat(pair(v_cache, v), dim)
        return F.scaled_dot_product_attention(q, k_cache, v_cache, is_causal=is_causal), k_cache, v_cache
    return fn


CORRECT = [(check.ch04.layer_norm, layer_norm), (check.ch04.block_forward, block_forward),
           (check.ch04.block_forward, block_forward_by_hand),
           (check.ch04.gpt_forward, gpt_forward), (check.ch04.gpt_forward, gpt_with()),
           (check.ch04.top_k_filter, top_k_filter),
           (check.ch04.top_p_filter, top_p_filter), (check.ch04.attend_with_cache, attend_with_cache)]

MISTAKES = [
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b,
     "unbiased variance"),
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False).sqrt() + eps) * w + b,
     "outside the square root"),
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + eps) * w + b,
     "every element"),
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1)) / torch.sqrt(x.var(-1, unbiased=False) + eps) * w + b,
     "keepdim=True"),
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: F.layer_norm(x, x.shape[-1:], eps=eps), "weight and bias"),
    (check.ch04.top_k_filter, lambda logits, k: top_k_filter(logits, k) if k <= logits.shape[-1] else logits.topk(k), "clamp it"),
    (check.ch04.block_forward, post_ln_block, "post-LN"),
    (check.ch04.block_forward, block_without_causal_mask, "not causal"),
    (check.ch04.block_forward, block_ln_1_twice, "ln_1 used twice"),
    (check.ch04.block_forward, block_without_gamma_beta, "weight and bias"),
    (check.ch04.block_forward, block_parallel, "after the attention was added"),
    (check.ch04.block_forward, block_without_residual, "residual connections are missing"),
    (check.ch04.block_forward, block_normalising_the_stream, "residual stream was normalised"),
    (check.ch04.gpt_forward, gpt_loss_on_padding, "-100"),
    (check.ch04.gpt_forward, gpt_with(positions="none"), "position embeddings"),
    (check.ch04.gpt_forward, gpt_with(final_norm="none"), "ln_f was not applied"),
    (check.ch04.gpt_forward, gpt_with(final_norm="plain"), "ln_f's weight and bias"),
    (check.ch04.gpt_forward, gpt_with(head=False), "lm_head"),
    (check.ch04.gpt_forward, gpt_with(loss="unflattened"), "flatten"),
    (check.ch04.gpt_forward, gpt_with(loss="shifted again"), "already shifted"),
    (check.ch04.top_k_filter, top_k_without_ties, "ties"),
    (check.ch04.top_k_filter, top_k_with(keepdim=False), "(?s)^(?!.*clamp).*keepdim=True"),
    (check.ch04.top_k_filter, top_k_keepdim_missing_on_square_logits, "another row.*keepdim=True"),
    (check.ch04.top_k_filter, top_k_with(strict=False), "k-th largest logit itself"),
    (check.ch04.top_k_filter, top_k_with(fill=0.0), "must become float\\('-inf'\\)"),
    (check.ch04.top_k_filter, top_k_with(fill=-1e9), "must become float\\('-inf'\\)"),
    (check.ch04.top_k_filter, top_k_with(rows=1), "row 1 "),
    (check.ch04.top_p_filter, top_p_dropping_the_crossing_token, "crosses p"),
    (check.ch04.top_p_filter, top_p_with(sort=False), "sort them first"),
    (check.ch04.top_p_filter, top_p_with(scatter=False), "vocabulary order"),
    (check.ch04.top_p_filter, top_p_with(softmax=False), "softmax"),
    (check.ch04.attend_with_cache, attend_without_own_token, "did not attend to itself"),
    (check.ch04.attend_with_cache, attend_with(order="prepend"), "append the new key after the cached ones"),
    (check.ch04.attend_with_cache, attend_with(is_causal=True), "is_causal"),
    (check.ch04.attend_with_cache, attend_with(dim=-1), "dim=2"),
]
