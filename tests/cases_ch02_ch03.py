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


def mha_split_without_transpose(x, c_attn, c_proj, n_heads, mask=None):  # merged correctly
    B, T, C = x.shape
    q, k, v = (t.reshape(B, n_heads, T, C // n_heads) for t in c_attn(x).split(C, dim=-1))
    return c_proj(lib.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).reshape(B, T, C))


def mha_merge_without_transpose(x, c_attn, c_proj, n_heads, mask=None):
    B, T, C = x.shape
    q, k, v = (t.view(B, T, n_heads, C // n_heads).transpose(1, 2) for t in c_attn(x).split(C, dim=-1))
    return c_proj(lib.scaled_dot_product_attention(q, k, v, mask).reshape(B, T, C))


def mha_view_after_transpose(x, c_attn, c_proj, n_heads, mask=None):
    B, T, C = x.shape
    q, k, v = (t.view(B, T, n_heads, C // n_heads).transpose(1, 2) for t in c_attn(x).split(C, dim=-1))
    return c_proj(lib.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).view(B, T, C))


def mha_view_split(x, c_attn, c_proj, n_heads, mask=None):
    B, T, C = x.shape
    q, k, v = (t.view(B, n_heads, T, C // n_heads) for t in c_attn(x).split(C, dim=-1))
    return c_proj(lib.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).reshape(B, T, C))


def mha_ignoring_mask(x, c_attn, c_proj, n_heads, mask=None):
    return mha_forward(x, c_attn, c_proj, n_heads)


def mha_without_c_proj(x, c_attn, c_proj, n_heads, mask=None):
    return mha_forward(x, c_attn, torch.nn.Identity(), n_heads, mask)


def plain_attention(q, k, v, blocked=None, add=None):
    """softmax(q kᵀ / sqrt(d_k)) v with a plain softmax (NaN in rows where every key is blocked)."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s if blocked is None else s.masked_fill(blocked, float("-inf"))
    s = s if add is None else s + add
    return torch.softmax(s, dim=-1) @ v


def attention_float_mask_as_bool(q, k, v, mask=None):  # 0 -> False -> blocked, -inf -> True -> kept
    return plain_attention(q, k, v, None if mask is None else ~mask.bool())


def attention_mask_equal_zero(q, k, v, mask=None):  # right for a bool mask, inverted for a float one
    return plain_attention(q, k, v, None if mask is None else mask == 0)


def attention_bool_mask_only(q, k, v, mask=None):  # ~ on a float mask raises
    return plain_attention(q, k, v, None if mask is None else ~mask)


def attention_mask_inverted_everywhere(q, k, v, mask=None):
    if mask is None:
        return plain_attention(q, k, v)
    return plain_attention(q, k, v, mask if mask.dtype == torch.bool else ~torch.isneginf(mask))


def attention_bool_mask_added(q, k, v, mask=None):  # adds 1 where allowed, 0 where blocked: masks nothing
    return plain_attention(q, k, v, add=mask)


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
    (check.ch03.attention, attention_float_mask_as_bool, "float mask .*used as a bool mask"),
    (check.ch03.attention, attention_mask_equal_zero, "float mask .*used as a bool mask"),
    (check.ch03.attention, attention_bool_mask_only, "float mask.*add it to the scores"),
    (check.ch03.attention, attention_mask_inverted_everywhere, "inverted"),
    (check.ch03.attention, attention_bool_mask_added, "bool mask was added to the scores"),
    (check.ch03.causal_mask, lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "transposed.*tril"),
    (check.ch03.causal_mask, lambda T: ~torch.ones(T, T, dtype=torch.bool).tril(), "inverted"),
    (check.ch03.causal_mask, lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "itself"),
    (check.ch03.causal_mask, lambda T: torch.ones(T, T).tril(), "bool tensor"),
    (check.ch03.padding_mask, lambda am: am.bool(), "shape"),
    (check.ch03.padding_mask, lambda am: ~am.bool()[:, None, None, :], "inverted"),
    (check.ch03.padding_mask, lambda am: am.bool()[:, None, :, None], "queries.*keys"),
    (check.ch03.mha_forward, mha_view_without_transpose, "split with"),
    (check.ch03.mha_forward, mha_split_without_transpose, "split with"),
    (check.ch03.mha_forward, mha_merge_without_transpose, "merged without"),
    (check.ch03.mha_forward, mha_view_after_transpose, "contiguous"),
    (check.ch03.mha_forward, mha_view_split, "view as \\(B, T, nh, hs\\) first"),
    (check.ch03.mha_forward, mha_ignoring_mask, "mask was not"),
    (check.ch03.mha_forward, mha_without_c_proj, "c_proj"),
]
