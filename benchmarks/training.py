"""Training throughput: the course GPT against Hugging Face's GPT2LMHeadModel, same config, same weights,
same batch, same optimizer (AdamW with decay groups), same training step, in the same run.

    python -m benchmarks.training                              # CPU: the cpu preset and a wider model, fp32
    python -m benchmarks.training --device cuda --compile      # a GPU: the gpu presets, bf16 autocast, MFU
    python -m benchmarks.training --accumulation               # 2 CPU processes (DDP, gloo), 4 micro-batches

--accumulation compares the library's train_step (all-reduce once per step under no_sync, one host sync)
with the same step written naively (all-reduce and two host syncs after every micro-batch), alternating.

The two models take turns step by step (so a busy machine slows both alike); the figure is the median step
time after warm-up steps. HF's model starts from the course model's weights (GPT.to_hf), and the first
losses are compared, so both really compute the same thing.
"""

import argparse
import os
import socket
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from llmscratch.gpt import GPT, GPTConfig
from llmscratch.hardware import autocast_dtype, dtype_name, grad_scaler
from llmscratch.pretrain import PRESETS, flops_per_token, peak_flops
from llmscratch.train import configure_optimizer, train_step


def preset_config(name: str) -> tuple[GPTConfig, int]:
    p = PRESETS[name]
    return GPTConfig(vocab_size=p["vocab_size"], block_size=p["block_size"], n_layer=p["n_layer"], n_head=p["n_head"],
                     n_embd=p["n_embd"]), p["batch_size"]


CASES = {  # name: (config, batch size)
    "cpu": {"cpu preset": preset_config("cpu"),
            "wider (6 x 384, T 256)": (GPTConfig(vocab_size=2048, block_size=256, n_layer=6, n_head=6, n_embd=384), 8)},
    "cuda": {"gpu preset": preset_config("gpu"), "gpt2-small preset": preset_config("gpt2-small")},
}


class HFForTraining(nn.Module):
    """GPT2LMHeadModel behind the course's (x, y) -> (logits, loss) interface: the same loss on the same positions."""

    def __init__(self, hf):
        super().__init__()
        self.hf = hf

    def forward(self, x, y):
        logits = self.hf(input_ids=x).logits                                    # (B, T, vocab)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))


def run(device: str, steps: int, warmup: int, compile_models: bool):
    dtype = autocast_dtype(device)
    print(f"training steps on {device}, {dtype_name(dtype)}{', torch.compile' if compile_models else ''}; "
          f"median of {steps} steps after {warmup} warm-up steps, the two models alternating")
    print(f"{'case':>24} | {'params':>7} | {'course tok/s':>12} | {'HF tok/s':>10} | {'course / HF':>11} | "
          f"{'first losses (course, HF)':>25}" + (" | course MFU" if device == "cuda" else ""))
    for name, (config, batch) in CASES[device].items():
        torch.manual_seed(0)
        ours = GPT(config).to(device)
        hf = HFForTraining(ours.to_hf()).to(device).train()  # a copy of the same weights
        g = torch.Generator().manual_seed(0)
        batches = [(torch.randint(config.vocab_size, (batch, config.block_size), generator=g).to(device),
                    torch.randint(config.vocab_size, (batch, config.block_size), generator=g).to(device))
                   for _ in range(4)]
        models = {"course": ours, "HF": hf}
        optimizers = {k: configure_optimizer(m, lr=1e-4) for k, m in models.items()}
        scalers = {k: grad_scaler(dtype, device) for k in models}   # fp16 (a T4, a V100) only
        runners = {k: torch.compile(m) if compile_models else m for k, m in models.items()}
        times, first = {k: [] for k in models}, {}
        for i in range(warmup + steps):
            for k in models:
                if device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                stats = train_step(runners[k], optimizers[k], [batches[i % len(batches)]], autocast_dtype=dtype,
                                   scaler=scalers[k])
                if device == "cuda":
                    torch.cuda.synchronize()
                if i == 0:
                    first[k] = stats["loss"]
                elif i >= warmup:
                    times[k].append(time.perf_counter() - t0)
        tokens = batch * config.block_size
        tps = {k: tokens / statistics.median(v) for k, v in times.items()}
        n_params = ours.parameter_counts()["total"]
        row = (f"{name:>24} | {n_params / 1e6:6.1f}M | {tps['course']:12,.0f} | {tps['HF']:10,.0f} | "
               f"{tps['course'] / tps['HF']:10.2f}x | {first['course']:12.5f}, {first['HF']:.5f}")
        peak = peak_flops(torch.device(device))
        if peak:
            row += f" | {flops_per_token(config, n_params) * tps['course'] / peak:.1%}"
        print(row)
    print(f"HF attention implementation: {hf.hf.config._attn_implementation}; the course GPT calls "
          "F.scaled_dot_product_attention")


def naive_accumulation_step(model, optimizer, micro_batches, grad_clip=1.0):
    """The baseline: every backward() all-reduces under DDP, and the loss is read (and checked) on the host
    after every micro-batch."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for x, y in micro_batches:
        _, loss = model(x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError("the loss is not finite")
        (loss / len(micro_batches)).backward()
        total += loss.item()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return {"loss": total / len(micro_batches), "grad_norm": norm.item()}


def _accumulation_worker(rank, world, port, steps, results):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # one core per process
    dist.init_process_group("gloo", rank=rank, world_size=world)
    config, batch = preset_config("cpu")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(GPT(config))
    optimizer = configure_optimizer(model, lr=1e-4)
    all_reduces = []

    def counting_hook(state, bucket):
        all_reduces.append(1)
        return dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future().then(lambda f: f.value()[0])
    model.register_comm_hook(None, counting_hook)
    g = torch.Generator().manual_seed(rank)
    micro = [(torch.randint(config.vocab_size, (batch // 4, config.block_size), generator=g),
              torch.randint(config.vocab_size, (batch // 4, config.block_size), generator=g)) for _ in range(4)]
    steps_by_name = {"library train_step": train_step, "naive": naive_accumulation_step}
    times = {k: [] for k in steps_by_name}
    reduces = {}
    for i in range(steps + 2):
        for name, step in steps_by_name.items():
            all_reduces.clear()
            dist.barrier()
            t0 = time.perf_counter()
            step(model, optimizer, micro)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
            reduces[name] = len(all_reduces)
    if rank == 0:
        results.put({k: (statistics.median(v), reduces[k]) for k, v in times.items()})
    dist.destroy_process_group()


def run_accumulation(steps: int):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_accumulation_worker, args=(r, 2, port, steps, results)) for r in range(2)]
    for p in procs:
        p.start()
    figures = results.get(timeout=600)
    for p in procs:
        p.join()
    print(f"DDP, 2 CPU processes (gloo), cpu preset, 4 micro-batches per step; median of {steps} steps, alternating")
    print(f"{'step':>20} | {'ms / step':>9} | {'all-reduces / step':>18}")
    for name, (seconds, reduces) in figures.items():
        print(f"{name:>20} | {seconds * 1e3:9.1f} | {reduces:18d}")
    base = figures["naive"][0]
    print(f"library / naive time: {figures['library train_step'][0] / base:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=None, help="measured steps per model (default: 20 CPU, 50 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (default: 3 CPU, 10 GPU)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--accumulation", action="store_true", help="DDP with accumulation: no_sync against naive")
    args = parser.parse_args()
    gpu = args.device == "cuda"
    if args.accumulation:
        raise SystemExit(run_accumulation(args.steps or 20))
    run(args.device, args.steps or (50 if gpu else 20), args.warmup or (10 if gpu else 3), args.compile)
