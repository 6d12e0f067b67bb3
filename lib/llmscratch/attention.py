"""Attention (chapter 03): scaled dot-product attention from scratch, masks, multi-head attention.

Mask convention (PyTorch's): a boolean mask is True where a query MAY attend to a key; a float
mask is added to the scores (0 to keep, -inf to block). Masks broadcast to (B, nh, T_q, T_k).

Fully masked rows: a query that may attend to nothing (a padding query, say) gets an output of
zeros and zero gradient, never NaN, which would poison the loss. A plain softmax over a row of
-inf gives NaN; PyTorch's `F.scaled_dot_product_attention` returns zeros there since 2.5, and so
does this implementation.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def scaled_dot_product_attention(q, k, v, mask=None, dropout_p: float = 0.0, scale: float | None = None):
    """softmax(q kᵀ / sqrt(d_k) + mask) v for q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v)."""
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"shape mismatch: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                         "q and k need the same last dimension, k and v the same length")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale                       # (..., T_q, T_k)
    blocked = None
    if mask is not None:
        _check_mask(mask, scores.shape)
        if mask.dtype == torch.bool:
            blocked = ~mask
            scores = scores.masked_fill(blocked, float("-inf"))
        else:
            scores = scores + mask
            blocked = torch.isneginf(mask)
    weights = torch.softmax(scores, dim=-1)
    if blocked is not None:  # rows with no allowed key are all NaN after softmax: make them zeros
        empty = blocked.all(dim=-1, keepdim=True)
        weights = weights.masked_fill(empty, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v                                                # (..., T_q, d_v)


def _check_mask(mask, scores_shape):
    try:
        torch.broadcast_shapes(mask.shape, scores_shape)
    except RuntimeError:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to the attention scores "
                         f"{tuple(scores_shape)} (batch, heads, queries, keys)") from None


def causal_mask(T: int, device=None) -> torch.Tensor:
    """(T, T) boolean, True on and below the diagonal: token t sees tokens 0..t."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def padding_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """From a tokenizer's attention_mask (B, T) of 1 = real token, 0 = padding, a boolean mask
    (B, 1, 1, T): every query may attend to the real keys of its own sequence."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (batch, time), got shape {tuple(attention_mask.shape)}")
    return attention_mask.bool()[:, None, None, :]


def combine_masks(*masks) -> torch.Tensor:
    """A key is allowed only where every boolean mask allows it (e.g. causal AND padding)."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (`c_attn`) and an output projection
    (`c_proj`), named as in GPT-2. `use_sdpa` switches to PyTorch's fused kernel (same maths)."""

    def __init__(self, d_model: int, n_heads: int, bias: bool = True, dropout: float = 0.0, use_sdpa: bool = True):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}: each head gets "
                             "d_model / n_heads dimensions")
        self.n_heads, self.head_size = n_heads, d_model // n_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.use_sdpa = use_sdpa

    def forward(self, x: torch.Tensor, mask=None, is_causal: bool = False) -> torch.Tensor:
        B, T, C = x.shape                                                      # (B, T, C)
        q, k, v = self.c_attn(x).split(C, dim=-1)                             # 3 x (B, T, C)
        # Split the width into heads: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_heads, self.head_size).transpose(1, 2) for t in (q, k, v))
        if is_causal:
            mask = combine_masks(causal_mask(T, x.device), mask)
        dropout_p = self.dropout if self.training else 0.0
        attend = F.scaled_dot_product_attention if self.use_sdpa else scaled_dot_product_attention
        y = attend(q, k, v, mask, dropout_p=dropout_p)                         # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                      # (B, nh, T, hs) -> (B, T, C)
        return self.c_proj(y)
