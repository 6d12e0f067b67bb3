"""Positional information (chapter 02): sinusoidal, learned and rotary (RoPE).

Attention by itself is blind to order: permute the tokens and each one sees the same set of others.
These are the three standard ways to tell a transformer where each token is.
"""

import torch
import torch.nn as nn


def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The encoding of "Attention Is All You Need": PE[t, 2i] = sin(t / base^(2i/d)),
    PE[t, 2i+1] = cos(t / base^(2i/d)). Shape (T, d); d must be even."""
    if d % 2:
        raise ValueError(f"the width d must be even (sin and cos come in pairs), got {d}")
    t = torch.arange(T, dtype=torch.float32)[:, None]                          # (T, 1)
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)       # (d/2,)
    angles = t * inv_freq                                                       # (T, d/2)
    pe = torch.empty(T, d)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe


class LearnedPositions(nn.Module):
    """One trainable vector per position, as GPT-2 (`wpe`) and BERT do. Positions past
    `max_positions` do not exist: asking for them is an error, never a silent wrap-around."""

    def __init__(self, max_positions: int, d: int):
        super().__init__()
        self.max_positions = max_positions
        self.weight = nn.Parameter(torch.randn(max_positions, d) * 0.02)

    def forward(self, T: int, offset: int = 0) -> torch.Tensor:
        if not isinstance(T, int):
            raise TypeError(f"call it with the sequence length T (an int), e.g. wpe(T) for positions 0 .. T-1; got "
                            f"{type(T).__name__} (unlike nn.Embedding, it takes no tensor of positions)")
        if offset + T > self.max_positions:
            raise ValueError(f"positions {offset}..{offset + T - 1} asked for, but only {self.max_positions} "
                             "were learned: shorten the sequence or train with a longer context")
        return self.weight[offset:offset + T]                                   # (T, d)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by position: dimension i is paired with i + hs/2 (the "rotate half"
    layout of Llama in Hugging Face), and each pair is turned by angle position * theta_i.
    cos and sin: (T, hs), broadcast over batch and heads."""
    return x * cos + rotate_half(x) * sin


class RoPE(nn.Module):
    """Rotary position embedding with a precomputed cos/sin cache for up to `max_positions`."""

    def __init__(self, head_size: int, max_positions: int, base: float = 10000.0):
        super().__init__()
        if head_size % 2:
            raise ValueError(f"RoPE rotates pairs of dimensions: head_size must be even, got {head_size}")
        inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)  # (hs/2,)
        angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq          # (P, hs/2)
        angles = torch.cat((angles, angles), dim=-1)                                           # (P, hs)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.max_positions = max_positions

    def forward(self, x: torch.Tensor, offset: int = 0, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, nh, T, hs) for positions offset .. offset + T - 1, or for the positions (B, T) given
        (packed sequences: each example restarts at 0)."""
        T = x.shape[-2]
        last = offset + T - 1 if positions is None else int(positions.max())
        if last >= self.max_positions:
            raise ValueError(f"sequence reaches position {last}, but the RoPE cache holds "
                             f"{self.max_positions} positions: build RoPE with a larger max_positions")
        if positions is not None:
            cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]        # (B, 1, T, hs)
            return apply_rope(x, cos.to(x.dtype), sin.to(x.dtype))
        cos = self.cos[offset:offset + T].to(x.dtype)
        sin = self.sin[offset:offset + T].to(x.dtype)
        return apply_rope(x, cos, sin)
