"""Checks for chapter 02, embeddings and positions. Oracles: the formula of "Attention Is All You
Need" (via the library, tested against it) and transformers' Llama rotary embedding (via the
library's RoPE, tested equal to it)."""

import torch

from ..positions import RoPE, sinusoidal_positions
from ..positions import apply_rope as reference_apply_rope
from .core import exercise, expect_tensor


@exercise("sinusoidal")
def sinusoidal(fn):
    cases = [(1, 2), (10, 8), (64, 32), (200, 128)]
    for T, d in cases:
        expect_tensor(fn(T, d), sinusoidal_positions(T, d), f"sinusoidal({T}, {d}) (sin at even columns, "
                      "cos at odd ones, frequency 1 / 10000^(2i/d))", atol=1e-5)
    return f"{len(cases)} sizes"


@exercise("apply_rope")
def apply_rope(fn):
    g = torch.Generator().manual_seed(0)
    for B, nh, T, hs in [(1, 1, 4, 2), (2, 3, 10, 8), (1, 2, 50, 64)]:
        rope = RoPE(hs, max_positions=T)
        x = torch.randn(B, nh, T, hs, generator=g)
        expect_tensor(fn(x, rope.cos, rope.sin), reference_apply_rope(x, rope.cos, rope.sin),
                      f"apply_rope(x of shape {(B, nh, T, hs)}) (pair dimension i with i + hs/2: rotate half)",
                      atol=1e-5)
    return "equal to the Llama convention"
