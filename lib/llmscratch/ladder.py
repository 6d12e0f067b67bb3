"""Chapter 08's ladder: GPT-2 turned into Llama one change at a time, every rung trained with the same recipe.

    GPT-2 -> no biases -> + RMSNorm -> + SwiGLU -> + RoPE (the course Llama) -> + GQA -> + MQA

The GPT-2 rungs swap modules in chapter 04's model; from RoPE on, the rung is the course `Llama`. The notebook
and `python -m benchmarks.seeds` train the same rungs with `train_briefly`, so their figures are comparable.
"""

import time
from typing import Callable

import torch

from .gpt import GPT, GPTConfig
from .hardware import autocast_dtype, grad_scaler
from .llama import Llama, LlamaConfig, RMSNorm, SwiGLU
from .train import configure_optimizer, get_batch, lr_at, train_step


def rungs(p: dict) -> dict[str, Callable[[], torch.nn.Module]]:
    """name -> a function that builds that rung, untrained, at the preset's size (vocab, context, width, depth)."""
    V, T, C, L, H = p["vocab_size"], p["block_size"], p["n_embd"], p["n_layer"], p["n_head"]
    hidden = 8 * C // 3 // 8 * 8    # SwiGLU: three matrices of 8/3 C hold as many weights as GELU's two of 4C

    def gpt2(bias=True):
        return GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_embd=C, bias=bias))

    def with_rmsnorm(model):
        for block in model.transformer.h:
            block.ln_1, block.ln_2 = RMSNorm(C), RMSNorm(C)
        model.transformer.ln_f = RMSNorm(C)
        return model

    def with_swiglu(model):
        for block in model.transformer.h:
            block.mlp = SwiGLU(LlamaConfig(n_embd=C, intermediate_size=hidden))
        return model

    def llama(n_kv_head):
        return Llama(LlamaConfig(vocab_size=V, block_size=T, n_layer=L, n_head=H, n_kv_head=n_kv_head, n_embd=C,
                                 intermediate_size=hidden, rope_base=10000.0))

    return {
        "GPT-2": lambda: gpt2(),
        "no biases": lambda: gpt2(bias=False),
        "+ RMSNorm": lambda: with_rmsnorm(gpt2(bias=False)),
        "+ SwiGLU": lambda: with_swiglu(with_rmsnorm(gpt2(bias=False))),
        f"+ RoPE (Llama, {H} kv heads)": lambda: llama(H),
        f"+ GQA ({H // 2} kv heads)": lambda: llama(H // 2),
        "+ MQA (1 kv head)": lambda: llama(1),
    }


def train_briefly(model, p: dict, train_ids, seed: int, device="cpu") -> tuple[list[float], float]:
    """The same recipe for every rung: AdamW, warmup then cosine, clipping, chapter 05's train_step; the training
    windows drawn from `seed`. Returns (the loss of every step, seconds per step)."""
    model.to(device)
    optimizer = configure_optimizer(model, p["lr"])
    dtype = autocast_dtype(device)          # fp32 on a CPU, bf16 or fp16 on a GPU
    scaler = grad_scaler(dtype, device)
    g = torch.Generator().manual_seed(seed)
    start, losses = time.perf_counter(), []
    for step in range(p["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p["lr"], max(1, p["steps"] // 10), p["steps"], p["lr"] / 10)
        batch = get_batch(train_ids, p["batch_size"], p["block_size"], g, device)
        losses.append(train_step(model, optimizer, [batch], autocast_dtype=dtype, scaler=scaler)["loss"])
    return losses, (time.perf_counter() - start) / p["steps"]


def val_batches(val_ids, p: dict, device="cpu") -> list:
    """The fixed validation windows every rung is scored on (16 rows each, seeds 100, 101, ...)."""
    return [get_batch(val_ids, 16, p["block_size"], torch.Generator().manual_seed(100 + i), device)
            for i in range(p["eval_batches"])]
