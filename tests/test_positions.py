"""Positional encodings: sinusoidal by formula, RoPE against transformers' Llama rotary functions."""

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from llmscratch.positions import LearnedPositions, RoPE, apply_rope, sinusoidal_positions


def test_sinusoidal_matches_the_formula():
    T, d = 50, 16
    pe = sinusoidal_positions(T, d)
    for t in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = t / 10000 ** (2 * i / d)
            assert pe[t, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[t, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    with pytest.raises(ValueError, match="must be even"):
        sinusoidal_positions(4, 7)


def test_sinusoidal_dot_product_depends_on_distance_only():
    pe = sinusoidal_positions(200, 64)
    for offset in (1, 5, 20):
        dots = (pe[:-offset] * pe[offset:]).sum(-1)
        assert torch.allclose(dots, dots[0].expand_as(dots), atol=1e-3)


def test_learned_positions_refuse_unlearned_positions():
    pos = LearnedPositions(8, 4)
    assert pos(8).shape == (8, 4) and torch.equal(pos(3, offset=5), pos.weight[5:8])
    with pytest.raises(ValueError, match="only 8 were learned"):
        pos(9)


@pytest.mark.parametrize("head_size, base, T", [(8, 10000.0, 16), (64, 10000.0, 128), (32, 500000.0, 40)])
def test_rope_equals_llama(head_size, base, T):
    config = LlamaConfig(hidden_size=head_size * 4, num_attention_heads=4, head_dim=head_size,
                         max_position_embeddings=256, rope_theta=base)
    llama_rope = LlamaRotaryEmbedding(config)
    g = torch.Generator().manual_seed(head_size)
    q, k = torch.randn(2, 2, 4, T, head_size, generator=g)                # (B, nh, T, hs) each
    position_ids = torch.arange(T)[None].expand(2, T)
    cos, sin = llama_rope(q, position_ids)                                 # (B, T, hs)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    rope = RoPE(head_size, max_positions=256, base=base)
    assert torch.allclose(rope.cos[:T], cos[0], atol=1e-6) and torch.allclose(rope.sin[:T], sin[0], atol=1e-6)
    assert torch.allclose(rope(q), q_hf, atol=1e-5)
    assert torch.allclose(rope(k), k_hf, atol=1e-5)
    # an offset (as in cached generation) means positions offset .. offset + T - 1
    late_ids = torch.arange(10, 10 + T)[None].expand(2, T)
    cos, sin = llama_rope(q, late_ids)
    assert torch.allclose(rope(q, offset=10), apply_rotary_pos_emb(q, k, cos, sin)[0], atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_rope_scores_depend_only_on_relative_position(seed):
    g = torch.Generator().manual_seed(seed)
    hs = 32
    rope = RoPE(hs, max_positions=512)
    q, k = torch.randn(2, hs, generator=g)
    def score(m, n):
        qm = apply_rope(q[None, None, None], rope.cos[m:m + 1], rope.sin[m:m + 1])
        kn = apply_rope(k[None, None, None], rope.cos[n:n + 1], rope.sin[n:n + 1])
        return (qm * kn).sum().item()
    for m, n, shift in [(5, 2, 100), (0, 0, 300), (40, 77, 13), (3, 200, 250)]:
        assert score(m, n) == pytest.approx(score(m + shift, n + shift), abs=1e-3)


def test_rope_preserves_norms_and_checks_its_inputs():
    rope = RoPE(16, max_positions=32)
    x = torch.randn(1, 2, 32, 16)
    assert torch.allclose(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    with pytest.raises(ValueError, match="holds 32 positions"):
        rope(torch.randn(1, 1, 33, 16))
    with pytest.raises(ValueError, match="must be even"):
        RoPE(15, 8)
