"""Checks for chapter 04, the GPT. Oracles: F.layer_norm, the library's GPT (proven equal to
Hugging Face's GPT2LMHeadModel) and its filters, and full (uncached) attention."""

import torch
import torch.nn.functional as F

from ..gpt import GPT, GPTConfig
from ..gpt import top_k_filter as reference_top_k
from ..gpt import top_p_filter as reference_top_p
from .core import CheckFailed, exercise, expect, expect_tensor

TINY = GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)


@exercise("layer_norm")
def layer_norm(fn):
    g = torch.Generator().manual_seed(0)
    # the last case has a tiny variance (~1e-6), where eps = 1e-5 matters: it catches eps outside the root
    for shape, spread in [((4, 8), 3.0), ((2, 5, 16), 3.0), ((3, 1, 7, 32), 3.0), ((2, 8), 1e-3)]:
        x = torch.randn(shape, generator=g) * spread + 1
        w, b = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
        got, expected = fn(x, w, b), F.layer_norm(x, (shape[-1],), w, b, eps=1e-5)
        if torch.is_tensor(got) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-4):
            mean = x.mean(-1, keepdim=True)
            unbiased = (x - mean) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5) * w + b
            eps_outside = (x - mean) / (x.var(-1, keepdim=True, unbiased=False).sqrt() + 1e-5) * w + b
            expect(not torch.allclose(got, unbiased, atol=1e-4), "layer_norm uses the unbiased variance (divide "
                   "by C - 1); LayerNorm divides by C: x.var(dim=-1, unbiased=False)")
            expect(not torch.allclose(got, eps_outside, atol=1e-4), "layer_norm adds eps outside the square root; "
                   "it belongs inside: sqrt(var + eps)")
        expect_tensor(got, expected, f"layer_norm(x of shape {shape}) (normalise over the last dimension, "
                      "biased variance, eps inside the square root)", atol=1e-4)
    return "equal to F.layer_norm"


def _model(seed=0, config=TINY):
    torch.manual_seed(seed)
    return GPT(config).eval()


@exercise("block_forward")
def block_forward(fn):
    model = _model(1)
    x = torch.randn(2, 9, TINY.n_embd, generator=torch.Generator().manual_seed(1))
    for i, block in enumerate(model.transformer.h):
        got = fn(x, block)
        expect_tensor(got, block(x), f"block_forward(x, block {i}) (pre-LN: x + attn(ln_1(x)), then + mlp(ln_2(x)); "
                                     "causal attention)", atol=1e-5)
    return "equal to the library's pre-LN block"


@exercise("gpt_forward")
def gpt_forward(fn):
    model = _model(2)
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(TINY.vocab_size, (3, 12), generator=g)
    targets = torch.randint(TINY.vocab_size, (3, 12), generator=g)
    targets[1, 6:] = -100
    expected_logits, expected_loss = model(idx, targets)
    logits, loss = fn(model, idx, targets)
    expect_tensor(logits, expected_logits, "gpt_forward logits (wte + wpe, the blocks, ln_f, lm_head)", atol=1e-5)
    expect(torch.is_tensor(loss) and loss.dim() == 0, f"the loss must be a 0-dim tensor, got {loss!r}")
    expect_tensor(loss, expected_loss, "gpt_forward loss (mean cross-entropy over positions whose target is not "
                                       "-100)", atol=1e-5)
    logits, loss = fn(model, idx)
    expect(loss is None, "without targets the loss must be None")
    return "logits and loss equal to the library's GPT"


def _filter_cases():
    g = torch.Generator().manual_seed(3)
    return [torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]]), torch.tensor([[2.0, 2.0, 1.0, 0.0]]),
            torch.randn(4, 30, generator=g) * 2, torch.tensor([[10.0, 0.0, 0.0]])]


def _kept(logits):
    return torch.isfinite(logits).int()


@exercise("top_k_filter")
def top_k_filter(fn):
    for logits in _filter_cases():
        for k in (1, 2, 3, 100):
            try:
                got = fn(logits.clone(), k)
            except NotImplementedError:
                raise
            except RuntimeError as err:
                raise CheckFailed(f"top_k_filter(logits with {logits.shape[-1]} entries, k={k}) raised {err}: "
                                  "k may exceed the vocabulary, clamp it with min(k, logits.size(-1))") from err
            expected = reference_top_k(logits, k)
            expect(torch.equal(_kept(got), _kept(expected)),
                   f"top_k_filter({logits.tolist()[0][:6]}..., k={k}) keeps {_kept(got).tolist()[0][:6]}..., "
                   f"expected {_kept(expected).tolist()[0][:6]}... (1 = kept; keep ties with the k-th largest)")
            expect_tensor(got.masked_fill(~torch.isfinite(got), 0), expected.masked_fill(~torch.isfinite(expected), 0),
                          "the kept logits must be unchanged")
    return "keeps the k largest (and ties)"


@exercise("top_p_filter")
def top_p_filter(fn):
    for logits in _filter_cases() + [torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()]:
        for p in (0.5, 0.6, 0.8, 0.81, 0.95, 1.0):
            got = fn(logits.clone(), p)
            expected = reference_top_p(logits, p)
            probs = [round(x, 3) for x in logits.softmax(-1).tolist()[0][:6]]
            expect(torch.equal(_kept(got), _kept(expected)),
                   f"top_p_filter with probabilities {probs}..., p={p}: kept {_kept(got).tolist()[0][:6]}..., "
                   f"expected {_kept(expected).tolist()[0][:6]}... (keep the most likely tokens until their sum "
                   "reaches p, including the token that crosses p)")
    return "keeps the nucleus, the crossing token included"


@exercise("attend_with_cache")
def attend_with_cache(fn):
    g = torch.Generator().manual_seed(4)
    B, nh, hs, T = 2, 3, 8, 6
    q, k, v = (torch.randn(B, nh, T, hs, generator=g) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)        # (B, nh, T, hs)
    k_cache, v_cache = k[:, :, :0], v[:, :, :0]                            # empty: (B, nh, 0, hs)
    for t in range(T):
        out, k_cache, v_cache = fn(q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1], k_cache, v_cache)
        expect(tuple(k_cache.shape) == (B, nh, t + 1, hs),
               f"after step {t} the key cache must hold {t + 1} positions, shape {(B, nh, t + 1, hs)}, "
               f"got {tuple(k_cache.shape)}: append the new key along the time dimension (dim=2)")
        expect_tensor(out, full[:, :, t:t + 1], f"the output of step {t} (the new token attends to every cached "
                                               "position and to itself)", atol=1e-5)
    return f"{T} steps equal to full causal attention"
