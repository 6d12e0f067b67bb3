"""Chapter 04 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

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


def post_ln_block(x, block):
    x = block.ln_1(x + block.attn(x))
    return block.ln_2(x + block.mlp(x))


def block_without_causal_mask(x, block):
    B, T, C = x.shape
    nh = block.attn.n_head
    q, k, v = block.attn.c_attn(block.ln_1(x)).split(C, dim=-1)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
    x = x + block.attn.c_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, C))
    return x + block.mlp(block.ln_2(x))


def gpt_loss_on_padding(model, idx, targets=None):
    logits, _ = model(idx)
    if targets is None:
        return logits, None
    return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten().clamp(min=0))


def gpt_without_positions(model, idx, targets=None):
    x = model.transformer.wte(idx)
    for block in model.transformer.h:
        x = block(x)
    logits = model.lm_head(model.transformer.ln_f(x))
    loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    return logits, loss


def top_k_without_ties(logits, k):
    kept = torch.full_like(logits, float("-inf"))
    values, indices = torch.topk(logits, min(k, logits.shape[-1]), dim=-1)
    return kept.scatter(-1, indices, values)


def top_p_dropping_the_crossing_token(logits, p):
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    drop_sorted = sorted_logits.softmax(-1).cumsum(-1) > p
    return logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))


def attend_without_own_token(q, k, v, k_cache, v_cache):
    out = F.scaled_dot_product_attention(q, k_cache, v_cache) if k_cache.shape[2] else v
    return out, torch.cat((k_cache, k), 2), torch.cat((v_cache, v), 2)


CORRECT = [(check.ch04.layer_norm, layer_norm), (check.ch04.block_forward, block_forward),
           (check.ch04.gpt_forward, gpt_forward), (check.ch04.top_k_filter, top_k_filter),
           (check.ch04.top_p_filter, top_p_filter), (check.ch04.attend_with_cache, attend_with_cache)]

MISTAKES = [
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + eps) * w + b,
     "unbiased variance"),
    (check.ch04.layer_norm, lambda x, w, b, eps=1e-5: (x - x.mean(-1, keepdim=True)) / (x.var(-1, keepdim=True, unbiased=False).sqrt() + eps) * w + b,
     "outside the square root"),
    (check.ch04.top_k_filter, lambda logits, k: top_k_filter(logits, k) if k <= logits.shape[-1] else logits.topk(k), "clamp it"),
    (check.ch04.block_forward, post_ln_block, "differ"),
    (check.ch04.block_forward, block_without_causal_mask, "differ"),
    (check.ch04.gpt_forward, gpt_loss_on_padding, "loss"),
    (check.ch04.gpt_forward, gpt_without_positions, "logits"),
    (check.ch04.top_k_filter, top_k_without_ties, "ties"),
    (check.ch04.top_p_filter, top_p_dropping_the_crossing_token, "crosses p"),
    (check.ch04.attend_with_cache, attend_without_own_token, "and to itself"),
]
