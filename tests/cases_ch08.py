"""Chapter 08 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import torch
import torch.nn.functional as F

from llmscratch import check
from llmscratch.chat import SMOLLM2_SYSTEM


# ---- correct answers (the notebook's solutions) -----------------------------------------------------
def rms_norm(x, weight, eps=1e-5):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def swiglu(x, gate_proj, up_proj, down_proj):
    return down_proj(F.silu(gate_proj(x)) * up_proj(x))


def grouped_query_attention(x, attn, rope):
    B, T, _ = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size
    q = attn.q_proj(x).view(B, T, nh, hs).transpose(1, 2)
    k = attn.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, nkv, hs).transpose(1, 2)
    q, k = rope(q), rope(k)
    k, v = k.repeat_interleave(nh // nkv, dim=1), v.repeat_interleave(nh // nkv, dim=1)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, nh * hs))


def _rotated_heads(x, attn, rope):
    """q (B, nh, T, hs) and k, v (B, nkv, T, hs), q and k turned by RoPE: what every variant below starts from."""
    B, T, _ = x.shape
    split = lambda t, heads: t.view(B, T, heads, attn.head_size).transpose(1, 2)
    q, k = rope(split(attn.q_proj(x), attn.n_head)), rope(split(attn.k_proj(x), attn.n_kv_head))
    return q, k, split(attn.v_proj(x), attn.n_kv_head)


def _merged(y, attn):
    B, _, T, _ = y.shape
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, attn.n_head * attn.head_size))


def gqa_with_enable_gqa(x, attn, rope):
    """Another correct way: let SDPA share the heads itself (torch >= 2.5)."""
    q, k, v = _rotated_heads(x, attn, rope)
    return _merged(F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True), attn)


def chat_template(messages, add_generation_prompt=False):
    text = ""
    if messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{SMOLLM2_SYSTEM}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


# ---- typical mistakes -------------------------------------------------------------------------------
def rms_subtracts_mean(x, weight, eps=1e-5):
    return rms_norm(x - x.mean(-1, keepdim=True), weight, eps)


def rms_eps_outside(x, weight, eps=1e-5):
    return weight * x / (x.pow(2).mean(-1, keepdim=True).sqrt() + eps)


def rms_no_fp32(x, weight, eps=1e-5):
    return (weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).float()


def gqa_tiled(x, attn, rope):
    q, k, v = _rotated_heads(x, attn, rope)
    rep = attn.n_head // attn.n_kv_head
    k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)
    return _merged(F.scaled_dot_product_attention(q, k, v, is_causal=True), attn)


def gqa_no_rope(x, attn, rope):
    return grouped_query_attention(x, attn, lambda t: t)


def gqa_not_causal(x, attn, rope):
    q, k, v = _rotated_heads(x, attn, rope)
    rep = attn.n_head // attn.n_kv_head
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    return _merged(F.scaled_dot_product_attention(q, k, v), attn)


def template_no_prompt(messages, add_generation_prompt=False):
    return chat_template(messages, add_generation_prompt=False)


def template_no_default_system(messages, add_generation_prompt=False):
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


c = check.ch08
CORRECT = [(c.rms_norm, rms_norm), (c.swiglu, swiglu), (c.grouped_query_attention, grouped_query_attention),
           (c.grouped_query_attention, gqa_with_enable_gqa), (c.chat_template, chat_template)]

MISTAKES = [
    (c.rms_norm, rms_subtracts_mean, "the mean was subtracted first: that is LayerNorm"),
    (c.rms_norm, rms_eps_outside, "eps was added outside the square root"),
    (c.rms_norm, lambda x, w, eps=1e-5: rms_norm(x, torch.ones_like(w), eps), "weight .*was not applied"),
    (c.rms_norm, lambda x, w, eps=1e-5: w * x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) + eps), "SUM of squares"),
    (c.rms_norm, lambda x, w, eps=1e-5: F.rms_norm(x, x.shape[-1:], w, eps), "torch's own rms_norm is this check's"),
    (c.rms_norm, rms_no_fp32, "a bf16 input must give a bf16 output"),
    (c.swiglu, lambda x, g, u, d: d(F.silu(u(x)) * g(x)), "the gate and up projections are swapped"),
    (c.swiglu, lambda x, g, u, d: d(F.gelu(g(x)) * u(x)), "that is GELU"),
    (c.swiglu, lambda x, g, u, d: d(torch.sigmoid(g(x)) * u(x)), "plain sigmoid"),
    (c.swiglu, lambda x, g, u, d: d(F.silu(g(x) * u(x))), "silu was applied to the product"),
    (c.grouped_query_attention, gqa_tiled, r"tiled with \.repeat"),
    (c.grouped_query_attention, gqa_no_rope, "RoPE was not applied"),
    (c.grouped_query_attention, gqa_not_causal, "not causal"),
    (c.grouped_query_attention, lambda x, attn, rope: attn(x, rope=rope), "calling attn\\(...\\) itself is the oracle"),
    (c.chat_template, template_no_prompt, "the generation prompt is missing"),
    (c.chat_template, template_no_default_system, "default one first"),
    (c.chat_template, lambda m, add_generation_prompt=False: chat_template(m, add_generation_prompt).replace(
        "<|im_end|>\n", "<|im_end|>"), "the newline after <|im_end|>"),
]

MISTAKES += [
    (c.rms_norm, lambda x, w, eps=1e-5: w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps),
     "overflow fp16"),
    (c.rms_norm, lambda x, w, eps=1e-5: __import__("llmscratch.llama").llama.RMSNorm.forward(
        type("N", (), {"eps": eps, "weight": w})(), x), "the library's RMSNorm is this exercise's answer"),
    (c.swiglu, lambda x, g, u, d: __import__("llmscratch.llama").llama.SwiGLU.forward(
        type("M", (), {"gate_proj": g, "up_proj": u, "down_proj": d})(), x), "the library's SwiGLU"),
    (c.grouped_query_attention, lambda x, attn, rope: F.scaled_dot_product_attention(
        *_rotated_heads(x, attn, rope), is_causal=True), "repeat each key/value head"),
    (c.chat_template, lambda m, add_generation_prompt=False: __import__("llmscratch.chat").chat.apply_chat_template(
        m, add_generation_prompt), "the library's apply_chat_template is this exercise's answer"),
    (c.chat_template, lambda m, add_generation_prompt=False: chat_template(
        [{**x, "content": x["content"].strip()} for x in m], add_generation_prompt), "stripped of spaces"),
    (c.chat_template, lambda m, add_generation_prompt=False: chat_template(m, add_generation_prompt)
     if not any(x["role"] == "system" for x in m) else template_no_default_system(m, add_generation_prompt),
     "only the FIRST message counts"),
    (c.chat_template, lambda m, add_generation_prompt=False: (m.insert(0, {"role": "system", "content": SMOLLM2_SYSTEM})
     if m[0]["role"] != "system" else None) or template_no_default_system(m, add_generation_prompt),
     "changed the list of messages"),
    (c.chat_template, lambda m, add_generation_prompt=False: chat_template(m, False) + (
        "<|im_start|>assistant" if add_generation_prompt else ""), "ends almost with the generation prompt"),
]
