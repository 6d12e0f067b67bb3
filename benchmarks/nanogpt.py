"""Training throughput: the course GPT against nanoGPT's model.py, equal config, equal weights, in the same run.

    git clone https://github.com/karpathy/nanoGPT ../nanoGPT        # not part of the course: bring your own copy
    OMP_NUM_THREADS=1 python -m benchmarks.nanogpt --nanogpt ../nanoGPT/model.py

Both models get the same weights (the names match: wte, wpe, h.N.ln_1, attn.c_attn, mlp.c_fc, ...), the same
batches, the same AdamW with decay groups and the same training step (llmscratch.train.train_step). They take
turns step by step, so a busy machine slows both alike; the figure is the median step after warm-up.

The one difference in the models themselves is the MLP's activation: the course GPT uses GPT-2's tanh
approximation of GELU ("gelu_new", which GPT-2's weights need), nanoGPT the exact erf GELU, and PyTorch's CPU kernel
for the tanh form is about 3.5x slower than the erf one (1.8 ms against 0.5 ms for 1M values, one thread). So each
case is measured twice: against nanoGPT with GPT-2's GELU put into its MLPs (the equal config), and against nanoGPT
as it ships (the first losses then differ in the fifth decimal or so).
"""

import argparse
import importlib.util
import itertools
import statistics
import time
from pathlib import Path

import torch

from llmscratch.gpt import GPT, GPTConfig
from llmscratch.train import configure_optimizer, train_step

CASES = {  # name: (config, batch size); the cpu preset of chapter 05, and the width of its gpu preset
    "4 x 128, T 128": (GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=128), 16),
    "6 x 384, T 256": (GPTConfig(vocab_size=2048, block_size=256, n_layer=6, n_head=6, n_embd=384), 8),
}


def load_nanogpt(path: Path):
    if not path.is_file():
        raise SystemExit(f"error: no nanoGPT model.py at {path}: clone https://github.com/karpathy/nanoGPT and pass "
                         "--nanogpt PATH/TO/nanoGPT/model.py")
    spec = importlib.util.spec_from_file_location("nanogpt_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nanogpt_copy(module, ours: GPT, gpt2_gelu: bool):
    c = ours.config
    theirs = module.GPT(module.GPTConfig(block_size=c.block_size, vocab_size=c.vocab_size, n_layer=c.n_layer,
                                         n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=True))
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".attn.bias") for k in missing), (missing, unexpected)
    if gpt2_gelu:
        for block in theirs.transformer.h:
            block.mlp.gelu = torch.nn.GELU(approximate="tanh")
    return theirs


def run(module, steps: int, warmup: int):
    print(f"CPU training steps, {torch.get_num_threads()} thread(s), fp32; median of {steps} steps after {warmup} "
          "warm-up steps, the two models alternating")
    print(f"{'case':>16} | {'nanoGPT GELU':>12} | {'params':>7} | {'course tok/s':>12} | {'nanoGPT tok/s':>13} | "
          f"{'course / nanoGPT':>16} | first losses (course, nanoGPT)")
    for (name, (config, batch)), gpt2_gelu in itertools.product(CASES.items(), (True, False)):
        torch.manual_seed(0)
        ours = GPT(config)
        models = {"course": ours, "nanoGPT": nanogpt_copy(module, ours, gpt2_gelu)}
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randint(config.vocab_size, (batch, config.block_size), generator=g),
                    torch.randint(config.vocab_size, (batch, config.block_size), generator=g)) for _ in range(4)]
        optimizers = {k: configure_optimizer(m, lr=1e-4) for k, m in models.items()}
        times, first = {k: [] for k in models}, {}
        for i in range(warmup + steps):
            for k in (models if i % 2 == 0 else reversed(models)):   # who goes first alternates too
                t0 = time.perf_counter()
                stats = train_step(models[k], optimizers[k], [batches[i % len(batches)]])
                if i == 0:
                    first[k] = stats["loss"]
                elif i >= warmup:
                    times[k].append(time.perf_counter() - t0)
        tps = {k: batch * config.block_size / statistics.median(v) for k, v in times.items()}
        n = ours.parameter_counts()["total"]
        print(f"{name:>16} | {'tanh (GPT-2)' if gpt2_gelu else 'erf (as is)':>12} | {n / 1e6:6.2f}M | {tps['course']:12,.0f} | {tps['nanoGPT']:13,.0f} | "
              f"{tps['course'] / tps['nanoGPT']:15.3f}x | {first['course']:.5f}, {first['nanoGPT']:.5f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", type=Path, required=True, help="path to nanoGPT's model.py")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    run(load_nanogpt(args.nanogpt), args.steps, args.warmup)
