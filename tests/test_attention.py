"""Attention against PyTorch: F.scaled_dot_product_attention and nn.MultiheadAttention."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from llmscratch.attention import (KVCache, MultiHeadAttention, causal_mask, combine_masks, padding_mask,
                                  scaled_dot_product_attention)

SHAPES = [(1, 1, 1, 4), (2, 3, 5, 8), (4, 2, 17, 16), (2, 4, 64, 32)]  # (B, nh, T, hs)


def qkv(shape, seed, dtype=torch.float32, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_(requires_grad) for _ in range(3)]


def random_bool_mask(shape, seed, keep_first=True):
    B, nh, T, _ = shape
    mask = torch.rand(B, 1, T, T, generator=torch.Generator().manual_seed(seed)) > 0.4
    if keep_first:
        mask[..., 0] = True  # every query may attend to something
    return mask


def masks_for(shape, seed):
    T = shape[2]
    boolean = random_bool_mask(shape, seed)
    additive = torch.zeros(boolean.shape).masked_fill(~boolean, float("-inf"))
    bias = torch.randn(shape[0], shape[1], T, T, generator=torch.Generator().manual_seed(seed + 1))
    return {"none": None, "causal": causal_mask(T), "bool": boolean, "float -inf": additive, "float bias": bias}


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["none", "causal", "bool", "float -inf", "float bias"])
def test_equals_sdpa_with_gradients(shape, kind):
    mask = masks_for(shape, seed=shape[2])[kind]
    ours_in = qkv(shape, seed=1, requires_grad=True)
    ref_in = [t.detach().clone().requires_grad_() for t in ours_in]
    out = scaled_dot_product_attention(*ours_in, mask=mask)
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=mask)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    for a, b in zip(ours_in, ref_in):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("shape", SHAPES[1:])
def test_bf16_within_loose_tolerance(shape):
    q, k, v = qkv(shape, seed=2, dtype=torch.bfloat16)
    mask = causal_mask(shape[2])
    ours = scaled_dot_product_attention(q, k, v, mask=mask).float()
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    assert (ours - exact).abs().max().item() < 5e-2


@pytest.mark.parametrize("kind", ["bool", "float -inf"])
def test_fully_masked_rows_give_zeros_and_no_nan(kind):
    shape = (2, 2, 6, 8)
    q, k, v = qkv(shape, seed=3, requires_grad=True)
    ref_in = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    mask = random_bool_mask(shape, seed=4)
    mask[0, :, 2] = False  # query 2 of sequence 0 may attend to nothing
    if kind == "float -inf":
        mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    assert not out.isnan().any() and torch.equal(out[0, :, 2], torch.zeros_like(out[0, :, 2]))
    ref = F.scaled_dot_product_attention(*ref_in, attn_mask=mask)
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    for ours, theirs in zip((q, k, v), ref_in):
        assert not ours.grad.isnan().any()
        assert torch.allclose(ours.grad, theirs.grad, atol=1e-5)
    assert torch.equal(q.grad[0, :, 2], torch.zeros_like(q.grad[0, :, 2]))


def test_masks():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    am = torch.tensor([[1, 1, 0], [1, 0, 0]])
    pad = padding_mask(am)
    assert pad.shape == (2, 1, 1, 3) and pad[1, 0, 0].tolist() == [True, False, False]
    both = combine_masks(causal_mask(3), pad)
    assert both.shape == (2, 1, 3, 3) and both[0, 0].tolist() == [[True, False, False], [True, True, False], [True, True, False]]
    assert combine_masks(None, pad) is pad
    # with 2 cached positions, query t (at position 2 + t) sees keys 0 .. 2 + t
    assert causal_mask(2, offset=2).tolist() == [[True, True, True, False], [True, True, True, True]]
    with pytest.raises(ValueError, match="batch, time"):
        padding_mask(am[0])


def test_shape_errors_are_clear():
    q, k, v = qkv((1, 1, 4, 8), seed=5)
    with pytest.raises(ValueError, match="same last dimension"):
        scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="does not broadcast"):
        scaled_dot_product_attention(q, k, v, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="not divisible by n_head=5"):
        MultiHeadAttention(32, 5)


def copy_into_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    d = ours.c_proj.in_features
    ref = nn.MultiheadAttention(d, ours.n_head, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.c_attn.weight)   # (3C, C): rows are q, then k, then v
        ref.in_proj_bias.copy_(ours.c_attn.bias)
        ref.out_proj.weight.copy_(ours.c_proj.weight)
        ref.out_proj.bias.copy_(ours.c_proj.bias)
    return ref


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("B, T, C, nh", [(1, 5, 16, 2), (3, 12, 64, 8), (2, 33, 48, 4)])
def test_multi_head_attention_equals_torch(use_sdpa, B, T, C, nh):
    torch.manual_seed(T)
    ours = MultiHeadAttention(C, nh, use_sdpa=use_sdpa).eval()
    ref = copy_into_torch_mha(ours).eval()
    x = torch.randn(B, T, C)
    lengths = torch.randint(1, T + 1, (B,))
    lengths[0] = T
    attention_mask = (torch.arange(T)[None] < lengths[:, None]).long()      # (B, T) 1 = real token
    # no mask
    assert torch.allclose(ours(x), ref(x, x, x, need_weights=False)[0], atol=1e-5)
    # causal: torch's attn_mask is True where attending is NOT allowed
    causal_ref = ref(x, x, x, attn_mask=~causal_mask(T), need_weights=False)[0]
    assert torch.allclose(ours(x, is_causal=True), causal_ref, atol=1e-5)
    # padding: torch's key_padding_mask is True for the keys to ignore
    pad_ref = ref(x, x, x, key_padding_mask=attention_mask == 0, need_weights=False)[0]
    assert torch.allclose(ours(x, mask=padding_mask(attention_mask)), pad_ref, atol=1e-5)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_kv_cache_equals_full_causal_attention(use_sdpa):
    """Feeding a sequence in pieces through the cache gives what one causal pass gives."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4, use_sdpa=use_sdpa).eval()
    x = torch.randn(2, 11, 32)
    full = mha(x, is_causal=True)
    cache = KVCache(n_layer=1, batch_size=2, n_head=4, max_len=16, head_size=8)
    pieces = []
    for a, b in [(0, 4), (4, 5), (5, 9), (9, 11)]:   # a prompt, then one token, then several
        pieces.append(mha(x[:, a:b], is_causal=True, cache=cache))
        cache.length = b
    assert torch.allclose(torch.cat(pieces, dim=1), full, atol=1e-5)
    with pytest.raises(ValueError, match="holds 16 positions"):
        mha(torch.randn(2, 6, 32), is_causal=True, cache=cache)
