"""Attention (chapter 03): scaled dot-product attention from scratch, masks, multi-head attention;
cross-attention for encoder-decoder models (chapter 06).

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
    empty = None
    if mask is not None:
        _check_mask(mask, scores.shape)
        allowed = mask if mask.dtype == torch.bool else ~torch.isneginf(mask)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        # A row with no allowed key is all -inf: its softmax is NaN, and so is its gradient, which
        # masking the output afterwards does not undo. Give such rows finite scores, zero weights later.
        empty = ~allowed.any(dim=-1, keepdim=True)
        scores = scores.masked_fill(empty, 0.0)
    weights = torch.softmax(scores, dim=-1)
    if empty is not None:
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


def causal_mask(T: int, device=None, offset: int = 0) -> torch.Tensor:
    """(T, offset + T) boolean, True on and below the diagonal: the query at position offset + t sees
    keys 0 .. offset + t. offset > 0 when earlier positions sit in a KV cache."""
    return torch.ones(T, offset + T, dtype=torch.bool, device=device).tril(diagonal=offset)


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


def attend(q, k, v, mask=None, is_causal: bool = False, start: int = 0, dropout_p: float = 0.0,
           use_sdpa: bool = True):
    """Attention of queries q (B, nh, T, hs) at positions start .. start + T - 1 over keys and values
    (B, nh, start + T, hs): causal if asked, and within `mask`. With use_sdpa, PyTorch's fused kernel
    (the same maths as scaled_dot_product_attention above)."""
    T = q.shape[-2]
    if is_causal and mask is None and start == 0 and use_sdpa:
        # is_causal lets PyTorch pick its fastest kernel (flash attention on GPUs)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
    if is_causal and not (T == 1 and mask is None):  # one new query after the cache may see every key
        mask = combine_masks(causal_mask(T, q.device, offset=start), mask)
    fn = F.scaled_dot_product_attention if use_sdpa else scaled_dot_product_attention
    return fn(q, k, v, mask, dropout_p=dropout_p)                              # (B, nh, T, hs)


class KVCache:
    """Keys and values of every layer for the positions seen so far, so that each new token costs one
    position of work instead of re-running the whole prefix. Preallocated: (B, nh, max_len, hs) per
    layer (nh is the number of key/value heads, which may be fewer than the query heads)."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_size: int,
                 device=None, dtype=torch.float32):
        shape = (batch_size, n_head, max_len, head_size)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.length = 0  # positions filled so far; the model advances it once all layers have appended

    def append(self, layer: int, k, v):
        """Store k, v (B, nh, T, hs) after the cached positions; return all keys and values so far."""
        start, T = self.length, k.shape[2]
        if start + T > self.k[layer].shape[2]:
            raise ValueError(f"the KV cache holds {self.k[layer].shape[2]} positions; {start + T} asked for")
        self.k[layer][:, :, start:start + T] = k
        self.v[layer][:, :, start:start + T] = v
        return self.k[layer][:, :, :start + T], self.v[layer][:, :, :start + T]    # (B, nh, start + T, hs)

    def repeat_interleave(self, n: int):
        """Each row n times in a row (row b becomes rows b * n .. b * n + n - 1): samples of one prompt share
        the prompt's keys and values, computed once."""
        self.k = [k.repeat_interleave(n, 0) for k in self.k]
        self.v = [v.repeat_interleave(n, 0) for v in self.v]

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection (`c_attn`) and an output projection
    (`c_proj`), named as in GPT-2. `use_sdpa` switches to PyTorch's fused kernel (same maths).
    With a KVCache, x holds only the new positions and attends to the cached ones as well."""

    def __init__(self, d_model: int, n_head: int, bias: bool = True, dropout: float = 0.0, use_sdpa: bool = True):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}: each head gets "
                             "d_model / n_head dimensions")
        self.n_head, self.head_size = n_head, d_model // n_head
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout                       # on the attention weights
        self.resid_dropout = nn.Dropout(dropout)     # on the output, before it joins the residual stream
        self.use_sdpa = use_sdpa

    def forward(self, x: torch.Tensor, mask=None, is_causal: bool = False, cache: KVCache | None = None,
                layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape                                                      # (B, T, C)
        q, k, v = self.c_attn(x).split(C, dim=-1)                             # 3 x (B, T, C)
        # Split the width into heads: (B, T, C) -> (B, T, nh, hs) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, self.head_size).transpose(1, 2) for t in (q, k, v))
        start = 0
        if cache is not None:
            start = cache.length
            k, v = cache.append(layer, k, v)                                  # (B, nh, start + T, hs)
        y = attend(q, k, v, mask, is_causal, start, self.dropout if self.training else 0.0, self.use_sdpa)
        y = y.transpose(1, 2).contiguous().view(B, T, C)                      # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class CrossAttention(nn.Module):
    """The encoder-decoder link of the original Transformer: queries from the decoder's stream x
    (B, T_q, C), keys and values from the encoder's output `memory` (B, T_k, C). No causal mask: every
    decoder position may read the whole source, except its padding (memory_mask, 1 = real token)."""

    def __init__(self, d_model: int, n_head: int, bias: bool = True, dropout: float = 0.0, use_sdpa: bool = True):
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
        self.n_head, self.head_size = n_head, d_model // n_head
        self.c_q = nn.Linear(d_model, d_model, bias=bias)         # queries, from the decoder
        self.c_kv = nn.Linear(d_model, 2 * d_model, bias=bias)    # keys and values, from the encoder
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)
        self.use_sdpa = use_sdpa

    def forward(self, x: torch.Tensor, memory: torch.Tensor, memory_mask=None) -> torch.Tensor:
        B, T_q, C = x.shape
        T_k = memory.shape[1]
        if memory.shape[0] != B or memory.shape[2] != C:
            raise ValueError(f"memory of shape {tuple(memory.shape)} does not fit x {tuple(x.shape)}: "
                             "it needs the same batch size and width")
        q = self.c_q(x).view(B, T_q, self.n_head, self.head_size).transpose(1, 2)               # (B, nh, T_q, hs)
        k, v = (t.view(B, T_k, self.n_head, self.head_size).transpose(1, 2)
                for t in self.c_kv(memory).split(C, dim=-1))                                   # (B, nh, T_k, hs)
        mask = padding_mask(memory_mask) if memory_mask is not None else None                   # (B, 1, 1, T_k)
        attend = F.scaled_dot_product_attention if self.use_sdpa else scaled_dot_product_attention
        y = attend(q, k, v, mask, dropout_p=self.dropout if self.training else 0.0)             # (B, nh, T_q, hs)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T_q, C)))


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """(B, n_kv, T, hs) -> (B, n_kv * n_rep, T, hs): key/value head j serves the n_rep consecutive query
    heads j * n_rep .. (j + 1) * n_rep - 1, so each head is repeated in place (repeat_interleave), not
    the whole stack tiled (repeat), which would pair query heads with the wrong keys."""
    if n_rep == 1:
        return x
    B, n_kv, T, hs = x.shape
    return x[:, :, None].expand(B, n_kv, n_rep, T, hs).reshape(B, n_kv * n_rep, T, hs)   # a view until reshape


class GroupedQueryAttention(nn.Module):
    """Grouped-query attention (GQA, 分组查询注意力), as in Llama: n_head query heads, but only n_kv_head
    key/value heads, each shared by n_head / n_kv_head query heads. The KV cache stores the n_kv_head
    heads only, which is the point: n_kv_head = n_head is multi-head attention, 1 is multi-query.
    Separate q/k/v/o projections without biases, named as in Hugging Face's Llama; RoPE turns q and k."""

    def __init__(self, d_model: int, n_head: int, n_kv_head: int, head_size: int | None = None,
                 bias: bool = False, dropout: float = 0.0, use_sdpa: bool = True):
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head={n_head} is not a multiple of n_kv_head={n_kv_head}: every key/value head "
                             "must serve the same number of query heads")
        self.n_head, self.n_kv_head = n_head, n_kv_head
        self.head_size = head_size or d_model // n_head
        self.q_proj = nn.Linear(d_model, n_head * self.head_size, bias=bias)
        self.k_proj = nn.Linear(d_model, n_kv_head * self.head_size, bias=bias)
        self.v_proj = nn.Linear(d_model, n_kv_head * self.head_size, bias=bias)
        self.o_proj = nn.Linear(n_head * self.head_size, d_model, bias=bias)
        self.dropout, self.use_sdpa = dropout, use_sdpa

    def forward(self, x: torch.Tensor, rope=None, mask=None, cache: KVCache | None = None,
                layer: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape                                                                 # (B, T, C)
        hs = self.head_size
        q = self.q_proj(x).view(B, T, self.n_head, hs).transpose(1, 2)                   # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)                # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_head, hs).transpose(1, 2)                # (B, nkv, T, hs)
        start = cache.length if cache is not None else 0
        if rope is not None:   # positions start .. start + T - 1: keys are cached already rotated
            q, k = rope(q, offset=start, positions=positions), rope(k, offset=start, positions=positions)
        if cache is not None:
            k, v = cache.append(layer, k, v)                                              # (B, nkv, S, hs)
        n_rep = self.n_head // self.n_kv_head
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)                                   # (B, nh, S, hs)
        y = attend(q, k, v, mask, True, start, self.dropout if self.training else 0.0, self.use_sdpa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * hs))            # (B, T, C)
