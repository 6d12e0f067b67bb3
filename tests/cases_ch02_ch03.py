"""Chapter 02 and 03 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import math

import torch
import torch.nn.functional as F

from llmscratch import attention as lib
from llmscratch import check
from llmscratch.positions import apply_rope, sinusoidal_positions


def mha_forward(x, c_attn, c_proj, n_heads, mask=None):
    B, T, C = x.shape
    q, k, v = c_attn(x).split(C, dim=-1)
    q, k, v = (t.view(B, T, n_heads, C // n_heads).transpose(1, 2) for t in (q, k, v))
    return c_proj(lib.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).reshape(B, T, C))


def mha_view_without_transpose(x, c_attn, c_proj, n_heads, mask=None):
    B, T, C = x.shape
    q, k, v = (t.reshape(B, n_heads, T, C // n_heads) for t in c_attn(x).split(C, dim=-1))
    return c_proj(lib.scaled_dot_product_attention(q, k, v, mask).reshape(B, T, C))


def attention_without_scale(q, k, v, mask=None):
    return lib.scaled_dot_product_attention(q, k, v, mask, scale=1.0)


def attention_mask_after_softmax(q, k, v, mask=None):
    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    if mask is not None:
        w = w * mask if mask.dtype == torch.bool else w * mask.exp()
    return w @ v


def attention_softmax_over_queries(q, k, v, mask=None):
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, dim=-2).nan_to_num() @ v


def attention_inverted_mask(q, k, v, mask=None):
    if mask is not None and mask.dtype == torch.bool:
        mask = ~mask
    return lib.scaled_dot_product_attention(q, k, v, mask)


def rope_adjacent_pairs(x, cos, sin):  # the interleaved layout, not Llama's rotate-half
    rotated = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos + rotated * sin


CORRECT = [
    (check.ch02.sinusoidal, sinusoidal_positions),
    (check.ch02.apply_rope, apply_rope),
    (check.ch03.attention, lambda q, k, v, mask=None: lib.scaled_dot_product_attention(q, k, v, mask)),
    (check.ch03.causal_mask, lib.causal_mask),
    (check.ch03.padding_mask, lib.padding_mask),
    (check.ch03.mha_forward, mha_forward),
]

MISTAKES = [
    (check.ch02.sinusoidal, lambda T, d: sinusoidal_positions(T, d).roll(1, dims=1), "differ"),
    (check.ch02.sinusoidal, lambda T, d: sinusoidal_positions(T, d).double(), "float32"),
    (check.ch02.apply_rope, lambda x, cos, sin: x * cos - torch.cat(x.chunk(2, -1)[::-1], -1) * sin, "differ"),
    (check.ch02.apply_rope, rope_adjacent_pairs, "differ"),
    (check.ch03.attention, attention_without_scale, "not divided by sqrt"),
    (check.ch03.attention, attention_mask_after_softmax, "after the softmax"),
    (check.ch03.attention, attention_softmax_over_queries, "over the queries"),
    (check.ch03.attention, lambda q, k, v, mask=None: lib.scaled_dot_product_attention(q, k, v, mask, scale=v.shape[-1] ** -0.5),
     "sqrt\\(d_v\\)"),
    (check.ch03.attention, lambda q, k, v, mask=None: F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
     "write attention yourself"),
    (check.ch03.attention, attention_inverted_mask, "inverted"),
    (check.ch03.causal_mask, lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "differ"),
    (check.ch03.causal_mask, lambda T: torch.ones(T, T).tril(), "bool tensor"),
    (check.ch03.padding_mask, lambda am: am.bool(), "shape"),
    (check.ch03.padding_mask, lambda am: ~am.bool()[:, None, None, :], "differ"),
    (check.ch03.mha_forward, mha_view_without_transpose, "split with"),
]
