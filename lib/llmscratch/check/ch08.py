"""Checks for chapter 08, from GPT-2 to Llama. Oracles: torch.nn.functional.rms_norm, the library's SwiGLU and
GroupedQueryAttention (proven equal to Hugging Face's LlamaMLP and LlamaForCausalLM), and the library's chat
template (proven equal to SmolLM2's tokenizer.apply_chat_template)."""

import copy

import torch
import torch.nn.functional as F

from ..attention import GroupedQueryAttention
from ..chat import SMOLLM2_SYSTEM
from ..chat import apply_chat_template as reference_template
from ..llama import LlamaConfig, RMSNorm, SwiGLU
from ..positions import RoPE
from .core import (CheckFailed, close, differs, exercise, expect, expect_tensor, explain_runtime_error,
                   oracle_forbidden, randomise, run_refusing, seeded)


def _first_mistake(got, mistakes: dict, atol: float):
    for message, wrong in mistakes.items():
        expect(not close(got, wrong, atol), message)


# ---- rms_norm -----------------------------------------------------------------------------------------
def _rms_mistakes(x, weight, eps):
    ms = x.pow(2).mean(-1, keepdim=True)
    centred = x - x.mean(-1, keepdim=True)
    return {
        "the mean was subtracted first: that is LayerNorm. RMSNorm only divides by the root mean square, "
        "x / sqrt(mean(x**2) + eps)": weight * centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + eps),
        "eps was added outside the square root, x / (sqrt(mean(x**2)) + eps); it belongs inside, "
        "x / sqrt(mean(x**2) + eps), which matters for inputs with a small RMS": weight * x / (ms.sqrt() + eps),
        "the learned weight (the per-channel gain) was not applied: multiply by weight": x * torch.rsqrt(ms + eps),
        "the mean of squares ran over the wrong dimension: normalise each token's vector, over the last "
        "dimension (dim=-1, keepdim=True)": weight * x * torch.rsqrt(x.pow(2).mean(-2, keepdim=True) + eps),
        "that divides by the root of the SUM of squares; RMSNorm takes their mean, x.pow(2).mean(-1, keepdim=True)":
            weight * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps),
        "that divides by mean(x**2) itself: take its square root (torch.rsqrt(ms + eps) multiplies by 1 / sqrt)":
            weight * x / (ms + eps),
    }


NO_BUILTIN = "torch's own rms_norm is this check's oracle: write it from x.pow(2).mean(...) and torch.rsqrt"


def _without_builtin(fn, *args):
    with oracle_forbidden(F, NO_BUILTIN, "rms_norm"), oracle_forbidden(torch, NO_BUILTIN, "rms_norm"):
        return run_refusing(fn, args, {RMSNorm.forward: "the library's RMSNorm is this exercise's answer: write the "
                                       "formula yourself, from x.pow(2).mean(...) and torch.rsqrt"})


@exercise("rms_norm")
def rms_norm(fn):
    g = torch.Generator().manual_seed(8)
    cases = [((2, 5, 16), 1.0, 0.0, 1e-5), ((3, 4, 24), 3.0, 2.0, 1e-5), ((2, 6, 32), 1e-3, 0.0, 1e-5),
             ((1, 3, 8), 0.01, 0.5, 1e-2)]
    for shape, scale, shift, eps in cases:   # a mean far from 0, and inputs whose RMS is near sqrt(eps)
        x = torch.randn(shape, generator=g) * scale + shift * scale
        weight = 1.0 + 0.5 * torch.randn(shape[-1], generator=g)
        expected = F.rms_norm(x, (shape[-1],), weight, eps)
        got = _without_builtin(fn, x, weight, eps)
        if differs(got, expected, atol=1e-5):
            _first_mistake(got, _rms_mistakes(x, weight, eps), atol=1e-5)
        expect_tensor(got, expected, f"rms_norm(x of shape {shape}, RMS ~{scale:g}, eps={eps:g})", atol=1e-5)
    x = torch.randn(2, 3, 8, generator=g).to(torch.bfloat16)
    got = _without_builtin(fn, x, torch.ones(8, dtype=torch.bfloat16), 1e-5)
    expect(torch.is_tensor(got) and got.dtype == torch.bfloat16,
           f"a bf16 input must give a bf16 output (compute in fp32 inside, then .to(x.dtype)); got "
           f"{getattr(got, 'dtype', type(got).__name__)}")
    big = (400 * torch.randn(2, 3, 16, generator=g)).to(torch.float16)   # squares above 65504: inf in fp16
    got = _without_builtin(fn, big, torch.ones(16, dtype=torch.float16), 1e-5)
    expected = F.rms_norm(big.float(), (16,), None, 1e-5).half()
    expect(torch.is_tensor(got) and got.dtype == torch.float16,
           f"an fp16 input must give an fp16 output; got {getattr(got, 'dtype', type(got).__name__)}")
    expect(torch.allclose(got.float(), expected.float(), atol=2e-2),
           "an fp16 input with values around 400 came out wrong: its squares (about 160,000) overflow fp16, whose "
           "largest number is 65,504. Compute the mean of squares in fp32 (x.float()), then cast back with .to(x.dtype)")
    return f"{len(cases)} shapes and scales equal to F.rms_norm, and bf16 / fp16 inputs"


# ---- swiglu -------------------------------------------------------------------------------------------
def _swiglu_mistakes(x, mlp):
    g, u, d = mlp.gate_proj, mlp.up_proj, mlp.down_proj
    return {
        "the gate and up projections are swapped: silu goes on gate_proj(x), and up_proj(x) is what it lets "
        "through, down_proj(silu(gate_proj(x)) * up_proj(x))": d(F.silu(u(x)) * g(x)),
        "that is GELU, GPT-2's activation; SwiGLU gates with SiLU (x * sigmoid(x)), F.silu": d(F.gelu(g(x)) * u(x)),
        "that gates with a plain sigmoid (GLU); SwiGLU uses SiLU, F.silu(gate) = gate * sigmoid(gate)":
            d(torch.sigmoid(g(x)) * u(x)),
        "silu was applied to the product; it goes on the gate only, silu(gate_proj(x)) * up_proj(x)":
            d(F.silu(g(x) * u(x))),
        "the up projection is missing: SwiGLU multiplies silu(gate_proj(x)) by up_proj(x)": d(F.silu(g(x))),
        "the gate and up branches were added; they are multiplied, element by element": d(F.silu(g(x)) + u(x)),
    }


@exercise("swiglu")
def swiglu(fn):
    g = torch.Generator().manual_seed(9)
    for seed, (B, T, C, H) in enumerate([(2, 5, 16, 40), (3, 4, 24, 64)]):
        with seeded(seed):
            mlp = randomise(SwiGLU(LlamaConfig(n_embd=C, intermediate_size=H)), seed)
        x = torch.randn(B, T, C, generator=g)
        with torch.no_grad():
            got = run_refusing(fn, (x, mlp.gate_proj, mlp.up_proj, mlp.down_proj), {SwiGLU.forward: (
                "the library's SwiGLU is this exercise's answer: write down_proj(silu(gate_proj(x)) * up_proj(x)) "
                "yourself")})
            expected = mlp(x)
            if differs(got, expected, atol=1e-4):
                _first_mistake(got, _swiglu_mistakes(x, mlp), atol=1e-4)
        expect_tensor(got, expected, f"swiglu(x of shape {(B, T, C)}, hidden width {H})", atol=1e-4)
    return "equal to the library's SwiGLU"


# ---- grouped_query_attention ------------------------------------------------------------------------
def _gqa_mistakes(x, attn, rope):
    B, T, _ = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size
    rep = nh // nkv
    q = attn.q_proj(x).view(B, T, nh, hs).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)
    out = lambda y: attn.o_proj(y.transpose(1, 2).reshape(B, T, nh * hs))
    sdpa = lambda q_, k_, v_, causal=True: F.scaled_dot_product_attention(q_, k_, v_, is_causal=causal)
    qr, kr = rope(q), rope(k)
    tile = lambda t: t.repeat(1, rep, 1, 1)
    inter = lambda t: t.repeat_interleave(rep, dim=1)
    return {
        "the key/value heads were tiled with .repeat(1, n_rep, 1, 1), which gives the order 0, 1, 2, 0, 1, 2: query "
        "head h must read key/value head h // n_rep, so each head is repeated in place, 0, 0, 1, 1, 2, 2: "
        "repeat_interleave(n_rep, dim=1)": out(sdpa(qr, tile(kr), tile(v))),
        "RoPE was not applied: rotate q and k by position, rope(q) and rope(k), before the attention":
            out(sdpa(q, inter(k), inter(v))),
        "RoPE was applied to the queries only: the keys must be rotated too, so that q . k depends on the distance "
        "between the positions": out(sdpa(qr, inter(k), inter(v))),
        "RoPE was applied to the values as well: only queries and keys are rotated (v carries content, not "
        "position)": out(sdpa(qr, inter(kr), inter(rope(v)))),
        "the attention is not causal: a decoder's token may not see later tokens, pass is_causal=True":
            out(sdpa(qr, inter(kr), inter(v), causal=False)),
        "the heads were split with view(B, n_head, T, hs) directly: that cuts the (B, T, C) memory in the wrong "
        "places. View as (B, T, heads, hs), then transpose(1, 2)":
            out(F.scaled_dot_product_attention(
                rope(attn.q_proj(x).view(B, nh, T, hs)), inter(rope(attn.k_proj(x).view(B, nkv, T, hs))),
                inter(attn.v_proj(x).view(B, nkv, T, hs)), is_causal=True)),
        "the heads were merged without transposing back: y is (B, n_head, T, hs); transpose(1, 2) to (B, T, n_head, "
        "hs) before reshape(B, T, C)": attn.o_proj(sdpa(qr, inter(kr), inter(v)).reshape(B, T, nh * hs)),
        "the scores were scaled by 1 / head_size; attention scales them by 1 / sqrt(head_size), SDPA's default":
            out(F.scaled_dot_product_attention(qr, inter(kr), inter(v), is_causal=True, scale=1.0 / hs)),
    }


NO_ATTN_CALL = ("build the attention from its parts (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, rope): "
                "calling attn(...) itself is the oracle")


@exercise("grouped_query_attention")
def grouped_query_attention(fn):
    g = torch.Generator().manual_seed(10)
    n = 0
    for seed, (B, T, C, nh, nkv) in enumerate([(2, 7, 48, 6, 3), (1, 9, 48, 6, 2), (2, 5, 32, 4, 1),
                                               (2, 6, 32, 4, 4)]):
        with seeded(seed):
            attn = randomise(GroupedQueryAttention(C, nh, nkv), seed).eval()
        rope = RoPE(attn.head_size, 64, base=100.0)
        x = torch.randn(B, T, C, generator=g)
        with torch.no_grad():
            expected = attn(x, rope=rope)
            with oracle_forbidden(GroupedQueryAttention, NO_ATTN_CALL), explain_runtime_error(
                    "must match the size of tensor", lambda error: f"{error[:110]}: k and v still have n_kv_head = "
                    f"{nkv} heads while q has n_head = {nh}; repeat each key/value head n_head // n_kv_head = "
                    f"{nh // nkv} times in place, repeat_interleave({nh // nkv}, dim=1), before the attention"):
                got = fn(x, attn, rope)
            if differs(got, expected, atol=1e-4):
                _first_mistake(got, _gqa_mistakes(x, attn, rope), atol=1e-4)
        expect_tensor(got, expected, f"grouped_query_attention(x of shape {(B, T, C)}, {nh} query heads, {nkv} "
                                     "key/value heads)", atol=1e-4)
        n += 1
    return f"{n} head layouts: multi-query, grouped and multi-head"


# ---- chat_template ------------------------------------------------------------------------------------
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
    [{"role": "system", "content": "Answer in Chinese."}, {"role": "user", "content": "你好"},
     {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "今天天气怎么样？"}],
    # spaces kept as they are; a system turn later on does not replace the default one (only the first message counts)
    [{"role": "user", "content": "  two spaces, and a trailing one "}, {"role": "system", "content": "Be brief."},
     {"role": "user", "content": "ok"}],
]


def _template_hint(got: str, expected: str, messages, prompt: bool) -> str:
    gen = "<|im_start|>assistant\n"
    if prompt and not got.endswith(gen) and "<|im_start|>assistant" in got[-len(gen) - 2:]:
        return ("the text ends almost with the generation prompt; it must end with exactly '<|im_start|>assistant\\n'"
                " (the role, then one newline)")
    if prompt and not got.endswith(gen) and expected.endswith(gen):
        return ("the generation prompt is missing: with add_generation_prompt=True the text must end with "
                "'<|im_start|>assistant\\n', the cue that the model's turn starts (without it, the model has to "
                "guess what comes next)")
    if not prompt and got.endswith(gen) and not expected.endswith(gen):
        return "the generation prompt was added although add_generation_prompt=False"
    stripped = [{**m, "content": m["content"].strip()} for m in messages]
    if got == reference_template(stripped, add_generation_prompt=prompt) and stripped != messages:
        return "the contents were stripped of spaces: keep each message's content exactly as given"
    if messages[0]["role"] != "system" and SMOLLM2_SYSTEM not in got and any(m["role"] == "system" for m in messages):
        return ("the default system message was left out because the conversation has a system turn later on; "
                "only the FIRST message counts: if it is not a system message, the default one comes first")
    if messages[0]["role"] != "system" and SMOLLM2_SYSTEM not in got:
        return (f"a conversation that does not open with a system message gets SmolLM2's default one first: "
                f"'<|im_start|>system\\n{SMOLLM2_SYSTEM}<|im_end|>\\n'")
    if messages[0]["role"] == "system" and SMOLLM2_SYSTEM in got:
        return "the default system message was added although the conversation has its own system message"
    if got.replace("<|im_end|>\n", "<|im_end|>") == expected.replace("<|im_end|>\n", "<|im_end|>"):
        return "every turn ends with '<|im_end|>\\n': the newline after <|im_end|> is part of the template"
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    return f"the texts first differ at character {first}: expected {expected[first:first + 40]!r}, got " \
           f"{got[first:first + 40]!r}"


@exercise("chat_template")
def chat_template(fn):
    for messages in CONVERSATIONS:
        for prompt in (False, True):
            given = copy.deepcopy(messages)
            got = run_refusing(fn, (given,), {reference_template: (
                "the library's apply_chat_template is this exercise's answer: build the text yourself, turn by turn")},
                kwargs={"add_generation_prompt": prompt})
            expect(given == messages, "the function changed the list of messages it was given (the caller's "
                   "conversation): build a new string and leave the messages as they are")
            expected = reference_template(messages, add_generation_prompt=prompt)
            expect(isinstance(got, str), f"expected the template's text (a str), got {type(got).__name__}")
            if got != expected:
                raise CheckFailed(f"{len(messages)}-message conversation, add_generation_prompt={prompt}: "
                                  + _template_hint(got, expected, messages, prompt))
    return f"{len(CONVERSATIONS)} conversations, each with and without the generation prompt"
