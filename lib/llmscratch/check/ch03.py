"""Checks for chapter 03, attention. Oracles: F.scaled_dot_product_attention and the library's
MultiHeadAttention (tested equal to nn.MultiheadAttention)."""

import torch
import torch.nn.functional as F

from ..attention import MultiHeadAttention
from .core import exercise, expect, expect_tensor


def _masks(B, T, g):
    allowed = torch.rand(B, 1, T, T, generator=g) > 0.5
    allowed[..., 0] = True                                   # every query may attend to something
    return [None, torch.ones(T, T, dtype=torch.bool).tril(), allowed,
            torch.zeros(B, 1, T, T).masked_fill(~allowed, float("-inf"))]


@exercise("attention")
def attention(fn):
    g = torch.Generator().manual_seed(0)
    n = 0
    for B, nh, T, hs in [(1, 1, 3, 4), (2, 4, 7, 16), (3, 2, 12, 32)]:
        q, k, v = (torch.randn(B, nh, T, hs, generator=g) for _ in range(3))
        for mask in _masks(B, T, g):
            kind = "no mask" if mask is None else f"{mask.dtype} mask of shape {tuple(mask.shape)}"
            expect_tensor(fn(q, k, v, mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask),
                          f"attention(q, k, v of shape {(B, nh, T, hs)}, {kind})", atol=1e-5)
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
            expect_tensor(got, reference(x, mask=mask), f"mha_forward(x of shape {(B, T, C)}, {nh} heads, "
                          f"{'causal mask' if mask is not None else 'no mask'})", atol=1e-5)
    return "equal to the library's MultiHeadAttention"
