"""Checks for chapter 03, attention. Oracles: F.scaled_dot_product_attention and the library's
MultiHeadAttention (tested equal to nn.MultiheadAttention)."""

import torch
import torch.nn.functional as F

from ..attention import MultiHeadAttention
from .core import CheckFailed, exercise, expect, expect_tensor


def reference_heads(mha: MultiHeadAttention, x, mask):
    """Per-head outputs (B, nh, T, hs) of a MultiHeadAttention, before the heads are merged."""
    B, T, C = x.shape
    q, k, v = (t.view(B, T, mha.n_heads, C // mha.n_heads).transpose(1, 2) for t in mha.c_attn(x).split(C, dim=-1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _masks(B, T, g):
    allowed = torch.rand(B, 1, T, T, generator=g) > 0.5
    allowed[..., 0] = True                                   # every query may attend to something
    return [None, torch.ones(T, T, dtype=torch.bool).tril(), allowed,
            torch.zeros(B, 1, T, T).masked_fill(~allowed, float("-inf"))]


def _typical_mistakes(q, k, v, mask):
    """What the usual wrong answers return, to name the mistake when a result matches one of them."""
    scale = q.shape[-1] ** -0.5
    bool_mask = mask if mask is None or mask.dtype == torch.bool else ~torch.isneginf(mask)

    def scores(s, m):
        return s if m is None else s.masked_fill(~m, float("-inf"))

    raw = q @ k.transpose(-2, -1)
    out = {
        "the scores are not divided by sqrt(d_k)": scores(raw, bool_mask).softmax(-1) @ v,
        "the scores are divided by sqrt(d_v) instead of sqrt(d_k)": scores(raw * v.shape[-1] ** -0.5, bool_mask).softmax(-1) @ v,
        "the softmax runs over the queries (dim=-2); it must run over the keys (dim=-1)":
            scores(raw * scale, bool_mask).softmax(-2).nan_to_num() @ v,
    }
    if bool_mask is not None:
        out["the mask is applied after the softmax: mask the scores BEFORE it (blocked = -inf)"] = (
            (raw * scale).softmax(-1) * bool_mask) @ v
        out["the mask is inverted: True means the query MAY attend to that key"] = (
            scores(raw * scale, ~bool_mask).softmax(-1).nan_to_num() @ v)
    return out


def _forbid_sdpa(*args, **kwargs):
    raise CheckFailed("write attention yourself: F.scaled_dot_product_attention is the oracle it is checked against")


@exercise("attention")
def attention(fn):
    g = torch.Generator().manual_seed(0)
    n = 0
    # (B, nh, T_q, T_k, d_k, d_v): queries and keys of different counts, values of another width
    for B, nh, T_q, T_k, d_k, d_v in [(1, 1, 3, 3, 4, 4), (2, 4, 7, 7, 16, 16), (3, 2, 12, 12, 32, 32),
                                      (2, 2, 5, 9, 16, 4)]:
        q = torch.randn(B, nh, T_q, d_k, generator=g)
        k = torch.randn(B, nh, T_k, d_k, generator=g)
        v = torch.randn(B, nh, T_k, d_v, generator=g)
        masks = _masks(B, T_k, g) if T_q == T_k else [None]
        for mask in masks:
            kind = "no mask" if mask is None else f"{mask.dtype} mask of shape {tuple(mask.shape)}"
            what = f"attention(q {(B, nh, T_q, d_k)}, k {(B, nh, T_k, d_k)}, v {(B, nh, T_k, d_v)}, {kind})"
            original, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _forbid_sdpa
            try:
                got = fn(q, k, v, mask)
            finally:
                F.scaled_dot_product_attention = original
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if torch.is_tensor(got) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-5):
                for mistake, wrong in _typical_mistakes(q, k, v, mask).items():
                    expect(not torch.allclose(got, wrong, atol=1e-5, equal_nan=True), f"{what}: {mistake}")
            expect_tensor(got, expected, what, atol=1e-5)
            n += 1
    return f"{n} cases equal to F.scaled_dot_product_attention"


@exercise("causal_mask")
def causal_mask(fn):
    for T in (1, 2, 5, 16):
        got = fn(T)
        expected = torch.ones(T, T, dtype=torch.bool).tril()
        expect(torch.is_tensor(got) and got.dtype == torch.bool,
               f"causal_mask({T}) must be a bool tensor (True = may attend), got {getattr(got, 'dtype', type(got))}")
        expect_tensor(got, expected, f"causal_mask({T}) (row = query, column = key; True on and below the diagonal)",
                      atol=0, rtol=0)
    return "True on and below the diagonal"


@exercise("padding_mask")
def padding_mask(fn):
    attention_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    got = fn(attention_mask)
    expected = attention_mask.bool()[:, None, None, :]
    expect(torch.is_tensor(got) and got.dtype == torch.bool, "padding_mask must return a bool tensor")
    expect(tuple(got.shape) == (3, 1, 1, 5), f"padding_mask of a (3, 5) attention_mask must have shape "
                                             f"(3, 1, 1, 5) to broadcast over heads and queries, got {tuple(got.shape)}")
    expect_tensor(got, expected, "padding_mask (True for the real tokens, False for padding)", atol=0, rtol=0)
    return "(B, 1, 1, T), True for real tokens"


@exercise("mha_forward")
def mha_forward(fn):
    torch.manual_seed(0)
    for B, T, C, nh in [(1, 4, 8, 2), (2, 9, 32, 4), (3, 6, 48, 8)]:
        reference = MultiHeadAttention(C, nh, use_sdpa=False).eval()
        x = torch.randn(B, T, C)
        for mask in (None, torch.ones(T, T, dtype=torch.bool).tril()):
            got = fn(x, reference.c_attn, reference.c_proj, nh, mask)
            what = f"mha_forward(x of shape {(B, T, C)}, {nh} heads, {'causal mask' if mask is not None else 'no mask'})"
            expected = reference(x, mask=mask)
            if torch.is_tensor(got) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-5):
                with torch.no_grad():  # the classic: heads split without moving them in front of time
                    q, k, v = (t.reshape(B, nh, T, C // nh) for t in reference.c_attn(x).split(C, dim=-1))
                    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
                    wrong_split = reference.c_proj(y.reshape(B, T, C))
                    wrong_merge = reference.c_proj(reference_heads(reference, x, mask).reshape(B, T, C))
                expect(not torch.allclose(got, wrong_split, atol=1e-5), f"{what}: the heads were split with "
                       "reshape/view(B, nh, T, hs); view as (B, T, nh, hs) first, then transpose(1, 2)")
                expect(not torch.allclose(got, wrong_merge, atol=1e-5), f"{what}: the heads were merged without "
                       "transposing back; transpose(1, 2) to (B, T, nh, hs), then reshape to (B, T, C)")
            expect_tensor(got, expected, what, atol=1e-5)
    return "equal to the library's MultiHeadAttention"
