"""Checks for chapter 03, attention. Oracles: F.scaled_dot_product_attention and the library's
MultiHeadAttention (tested equal to nn.MultiheadAttention)."""

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..attention import MultiHeadAttention
from .. import attention as attention_module
from .core import CheckFailed, differs, exercise, expect, expect_tensor, seeded


def reference_heads(mha: MultiHeadAttention, x, mask):
    """Per-head outputs (B, nh, T, hs) of a MultiHeadAttention, before the heads are merged."""
    B, T, C = x.shape
    q, k, v = (t.view(B, T, mha.n_head, C // mha.n_head).transpose(1, 2) for t in mha.c_attn(x).split(C, dim=-1))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _masks(B, T, g):
    allowed = torch.rand(B, 1, T, T, generator=g) > 0.5
    allowed[..., 0] = True                                   # every query may attend to something
    return [None, torch.ones(T, T, dtype=torch.bool).tril(), allowed,
            torch.zeros(B, 1, T, T).masked_fill(~allowed, float("-inf"))]


def _matches(got, wrong):
    """NaN-tolerant: a plain softmax gives NaN in rows with no allowed key, where the formulas below give 0."""
    return torch.allclose(got.detach().nan_to_num(), wrong.detach().nan_to_num(), atol=1e-5)


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
    if mask is None:
        return out
    inverted = scores(raw * scale, ~bool_mask).softmax(-1).nan_to_num() @ v
    out["the mask was ignored: blocked keys got weight; mask the scores before the softmax"] = (raw * scale).softmax(-1) @ v
    out["the mask is applied after the softmax: mask the scores BEFORE it (blocked = -inf)"] = (
        (raw * scale).softmax(-1) * bool_mask) @ v
    if mask.dtype == torch.bool:
        out["the mask is inverted: True means the query MAY attend to that key"] = inverted
        out["the bool mask was added to the scores (True adds 1, False adds 0: nothing is blocked): use "
            "scores.masked_fill(~mask, float('-inf'))"] = (raw * scale + mask).softmax(-1) @ v
    else:
        out["the float mask (0 = keep, -inf = block) was used as a bool mask: mask.bool(), mask == 0 or "
            "logical_not() turn its 0s, the allowed keys, into blocked ones. Add a float mask to the scores: "
            "scores + mask"] = inverted
    return out


def _forbid_sdpa(*args, **kwargs):
    raise CheckFailed("write attention yourself: F.scaled_dot_product_attention is the oracle it is checked against")


def _call_forbidding_sdpa(fn, q, k, v, mask, what):
    original, F.scaled_dot_product_attention = F.scaled_dot_product_attention, _forbid_sdpa
    try:
        return fn(q, k, v, mask)
    except NotImplementedError:
        raise
    except (RuntimeError, TypeError) as err:
        if mask is None or mask.dtype == torch.bool:
            raise
        raise CheckFailed(f"{what} raised {type(err).__name__}: {str(err).rstrip('.')}. A float mask (0 = keep, -inf = block) is "
                          "not a bool mask: add it to the scores (scores + mask); only a bool mask goes through "
                          "masked_fill(~mask, float('-inf'))") from err
    finally:
        F.scaled_dot_product_attention = original


@exercise("attention", answers=(attention_module.scaled_dot_product_attention, attention_module.attend))
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
            got = _call_forbidding_sdpa(fn, q, k, v, mask, what)
            expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            if differs(got, expected, atol=1e-5):
                for mistake, wrong in _typical_mistakes(q, k, v, mask).items():
                    expect(not _matches(got, wrong), f"{what}: {mistake}")
            expect_tensor(got, expected, what, atol=1e-5)
            n += 1
    return f"{n} cases equal to F.scaled_dot_product_attention"


def _causal_mistakes(T):
    ones = torch.ones(T, T, dtype=torch.bool)
    return {"True above the diagonal: the mask is transposed (row = query, column = key, and query t may see "
            "keys 0..t): use tril(), not triu()": ones.triu(),
            "the mask is inverted: True means 'may attend', on and below the diagonal": ~ones.tril(),
            "the diagonal is False: a token must see itself, use tril() without an offset": ones.tril(-1)}


@exercise("causal_mask", answers=(attention_module.causal_mask,))
def causal_mask(fn):
    for T in (5, 16, 2, 1):  # a mistake shows first where it can be told from the others
        got = fn(T)
        expected = torch.ones(T, T, dtype=torch.bool).tril()
        expect(torch.is_tensor(got) and got.dtype == torch.bool,
               f"causal_mask({T}) must be a bool tensor (True = may attend), got {getattr(got, 'dtype', type(got))}")
        if got.shape == expected.shape and not torch.equal(got, expected):
            for mistake, wrong in _causal_mistakes(T).items():
                expect(not torch.equal(got, wrong), f"causal_mask({T}): {mistake}")
        expect_tensor(got, expected, f"causal_mask({T}) (row = query, column = key; True on and below the diagonal)",
                      atol=0, rtol=0)
    return "True on and below the diagonal"


@exercise("padding_mask", answers=(attention_module.padding_mask,))
def padding_mask(fn):
    attention_mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    got = fn(attention_mask)
    expected = attention_mask.bool()[:, None, None, :]
    expect(torch.is_tensor(got) and got.dtype == torch.bool, "padding_mask must return a bool tensor")
    expect(tuple(got.shape) != (3, 1, 5, 1), "padding_mask has shape (3, 1, 5, 1): that blocks the padding "
                                             "queries (rows of the scores), not the padding keys (columns): index "
                                             "with [:, None, None, :] to get (B, 1, 1, T)")
    expect(tuple(got.shape) == (3, 1, 1, 5), f"padding_mask of a (3, 5) attention_mask must have shape "
                                             f"(3, 1, 1, 5) to broadcast over heads and queries, got {tuple(got.shape)}")
    expect(not torch.equal(got, ~expected), "the mask is inverted: True marks the real tokens (attention_mask 1), "
                                            "the keys a query may attend to")
    expect_tensor(got, expected, "padding_mask (True for the real tokens, False for padding)", atol=0, rtol=0)
    return "(B, 1, 1, T), True for real tokens"


def _mha_masks(B, T):
    lengths = torch.tensor([max(1, T - 1 - 2 * b) for b in range(B)])      # sequence b ends in padding
    padding = (torch.arange(T) < lengths[:, None])[:, None, None, :]       # (B, 1, 1, T)
    return {"no mask": None, "causal mask": torch.ones(T, T, dtype=torch.bool).tril(),
            "padding mask (B, 1, 1, T)": padding}


@torch.no_grad()
def _mha_mistakes(reference, x, nh, mask):
    """(message, output) of the usual wrong answers."""
    B, T, C = x.shape
    q, k, v = (t.reshape(B, nh, T, C // nh) for t in reference.c_attn(x).split(C, dim=-1))
    mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)          # time and heads mixed up
    heads = reference_heads(reference, x, mask)                              # (B, nh, T, hs), right
    split = ("the heads were split with reshape/view(B, nh, T, hs), which mixes time and heads; view as "
             "(B, T, nh, hs) first, then transpose(1, 2)")
    mistakes = [(split, reference.c_proj(mixed.reshape(B, T, C))),
                (split, reference.c_proj(mixed.transpose(1, 2).reshape(B, T, C))),
                ("the heads were merged without transposing back; transpose(1, 2) to (B, T, nh, hs), then reshape "
                 "to (B, T, C)", reference.c_proj(heads.reshape(B, T, C))),
                ("c_proj was not applied: the merged heads go through the output projection c_proj",
                 heads.transpose(1, 2).reshape(B, T, C))]
    if mask is not None:
        mistakes.append(("the mask was not passed on to attention", reference(x)))
    return mistakes


class _LastView(TorchFunctionMode):
    """Remembers the shape of the last tensor .view() was called on."""
    shape = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.view:
            self.shape = tuple(args[0].shape)
        return func(*args, **(kwargs or {}))


def _view_failed(fn, args, what, err):
    with _LastView() as seen:
        try:
            fn(*args)
        except RuntimeError:
            pass
    if seen.shape is not None and len(seen.shape) == 3:  # (B, T, C) viewed straight as (B, nh, T, hs)
        hint = ("The heads must be split with q.view(B, T, nh, hs).transpose(1, 2): view as (B, T, nh, hs) "
                "first (a view cannot move time behind the heads)")
    else:
        hint = ("After transpose(1, 2) the heads are no longer contiguous in memory: merge them with "
                ".contiguous().view(B, T, C) or .reshape(B, T, C)")
    return CheckFailed(f"{what} raised RuntimeError: {err} {hint}")


@exercise("mha_forward", answers=(MultiHeadAttention.forward,))
def mha_forward(fn):
    g = torch.Generator().manual_seed(0)
    for B, T, C, nh in [(1, 4, 8, 2), (2, 9, 32, 4), (3, 6, 48, 8)]:
        with seeded(C):
            reference = MultiHeadAttention(C, nh, use_sdpa=False).eval()
        x = torch.randn(B, T, C, generator=g)
        for kind, mask in _mha_masks(B, T).items():
            what = f"mha_forward(x of shape {(B, T, C)}, {nh} heads, {kind})"
            args = (x, reference.c_attn, reference.c_proj, nh, mask)
            try:
                got = fn(*args)
            except RuntimeError as err:
                if "view" not in str(err):
                    raise
                raise _view_failed(fn, args, what, err) from err
            expected = reference(x, mask=mask)
            if differs(got, expected, atol=1e-5):
                for mistake, wrong in _mha_mistakes(reference, x, nh, mask):
                    expect(not _matches(got, wrong), f"{what}: {mistake}")
            expect_tensor(got, expected, what, atol=1e-5)
    return "equal to the library's MultiHeadAttention"
