"""Checks for chapter 02, embeddings and positions. Oracles: the formula of "Attention Is All You
Need" (via the library, tested against it) and transformers' Llama rotary embedding (via the
library's RoPE, tested equal to it)."""

import torch

from ..positions import RoPE, sinusoidal_positions
from ..positions import apply_rope as reference_apply_rope
from .core import exercise, expect, expect_tensor


def _exact_sinusoidal(T, d):
    """The formula in float64: angles reach ~T radians, where float32 rounding alone is ~1e-5."""
    t = torch.arange(T, dtype=torch.float64)[:, None]
    angles = t / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)   # sin, cos, sin, cos, ...


@exercise("sinusoidal", answers=(sinusoidal_positions,))
def sinusoidal(fn):
    cases = [(1, 2), (10, 8), (64, 32), (200, 128)]
    for T, d in cases:
        got = fn(T, d)
        expect_tensor(got, _exact_sinusoidal(T, d), f"sinusoidal({T}, {d}) (column 2i: sin(t / 10000^(2i/d)), "
                      "column 2i+1: cos of the same angle; sin and cos alternate)", atol=1e-4)
        expect(got.dtype == torch.float32, f"sinusoidal must return float32 (the dtype of model weights), "
                                           f"got {got.dtype}")
    return f"{len(cases)} sizes"


@exercise("apply_rope", answers=(reference_apply_rope, RoPE.forward))
def apply_rope(fn):
    g = torch.Generator().manual_seed(0)
    for B, nh, T, hs in [(1, 1, 4, 2), (2, 3, 10, 8), (1, 2, 50, 64)]:
        rope = RoPE(hs, max_positions=T)
        x = torch.randn(B, nh, T, hs, generator=g)
        expect_tensor(fn(x, rope.cos, rope.sin), reference_apply_rope(x, rope.cos, rope.sin),
                      f"apply_rope(x of shape {(B, nh, T, hs)}): expected x * cos + rotate_half(x) * sin, with "
                      "rotate_half(x1, x2) = (-x2, x1) on the two halves of the last dimension (the minus goes "
                      "on the second half, which moves to the front)", atol=1e-5)
    return "equal to the Llama convention"
