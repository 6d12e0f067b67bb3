"""Pretrain a GPT from the command line, on a laptop CPU or on GPUs:

    python -m llmscratch.pretrain --preset cpu                              # minutes on a CPU
    python -m llmscratch.pretrain --preset gpu --compile                    # one GPU, bf16
    torchrun --nproc_per_node 8 -m llmscratch.pretrain --preset gpt2-small  # several GPUs (DDP, NCCL)
    python -m llmscratch.pretrain --preset cpu --resume                     # continue from out/ckpt

Data: the Python language reference, tokenized once with the course's byte-level BPE and stored as
memory-mapped token files in the output folder, in a subfolder named after the tokenizer and the text
(another preset's vocabulary gets its own). The presets are chapter 05's.
"""

import argparse
import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist

from .data import python_reference_text, train_val_split
from .gpt import GPT, GPTConfig
from .tokenizers import BPETokenizer
from .train import (configure_optimizer, evaluate, get_batch, load_checkpoint, load_tokens, lr_at,
                    save_checkpoint, save_tokens, train_step)

PRESETS = {
    # name: model, tokenizer and optimisation settings. Chapter 05 uses quick (CI and autograding), cpu and gpu.
    "tiny": dict(vocab_size=512, n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, accum=1, steps=20,
                 warmup=5, lr=3e-3, dropout=0.0, eval_every=10, eval_batches=2),           # tests: seconds
    "quick": dict(vocab_size=512, n_layer=2, n_head=4, n_embd=128, block_size=128, batch_size=16, accum=1,
                  steps=150, warmup=15, lr=3e-3, dropout=0.0, eval_every=50, eval_batches=10),  # validates notebooks
    "cpu": dict(vocab_size=512, n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, accum=1,
                steps=800, warmup=50, lr=2e-3, dropout=0.0, eval_every=100, eval_batches=10),   # ~2 min on 2 cores
    "gpu": dict(vocab_size=2048, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, accum=1,
                steps=3000, warmup=100, lr=1e-3, dropout=0.2, eval_every=250, eval_batches=20),  # minutes on a GPU
    "gpt2-small": dict(vocab_size=8192, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, accum=4,
                       steps=3000, warmup=200, lr=6e-4, dropout=0.0, eval_every=250, eval_batches=20),  # MFU runs
}

# Dense bf16 tensor-core peaks in FLOP/s, from the vendors' data sheets (without sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "RTX 4090": 165e12, "A10": 125e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def flops_per_token(config: GPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6 per parameter (forward + backward) plus attention's 12·L·C·T."""
    return 6 * n_params + 12 * config.n_layer * config.n_embd * config.block_size


SAMPLE_PROMPT = "The \"for\" statement"


def sample(model, tokenizer, prompt: str, device, new_tokens: int = 40) -> str:
    """A short continuation of `prompt` (temperature 0.8, top-k 50, fixed seed): the same every eval."""
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)
    new_tokens = min(new_tokens, model.config.block_size - idx.shape[1])
    out = model.generate(idx, new_tokens, temperature=0.8, top_k=50, generator=torch.Generator(device).manual_seed(0))
    return tokenizer.decode(out[0].tolist())


def plot_log(log_file: Path, png: Path, title: str) -> None:
    """Training and validation loss of every step in log.jsonl (a resumed run included) as a PNG."""
    import matplotlib
    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    from .plots import loss_curve

    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    evals = [s for s in log if "val_loss" in s]
    ax = loss_curve({"training loss": ([s["step"] + 1 for s in log], [s["loss"] for s in log]),
                     "validation loss": ([s["step"] + 1 for s in evals], [s["val_loss"] for s in evals])},
                    title=title)
    ax.figure.savefig(png, bbox_inches="tight")
    plt.close(ax.figure)


def token_files(out: Path, text: str, vocab_size: int, special_tokens=("<|endoftext|>",),
                val_fraction: float = 0.1) -> Path:
    """Tokenize `text` once and store train.bin, val.bin and tokenizer.json in a folder of `out` named
    after what they depend on (vocabulary size, special tokens, the text itself), so that a run with
    another tokenizer or text never reads these ids. Returns that folder."""
    key = hashlib.sha256(json.dumps([vocab_size, list(special_tokens), val_fraction]).encode() + text.encode())
    folder = out / f"tokens-v{vocab_size}-{key.hexdigest()[:12]}"
    if not (folder / "tokenizer.json").exists():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        tokenizer = BPETokenizer.train(text, vocab_size, special_tokens=list(special_tokens))
        train_ids, val_ids = train_val_split(tokenizer.encode(text), val_fraction)
        save_tokens(train_ids, partial / "train.bin")
        save_tokens(val_ids, partial / "val.bin")
        tokenizer.save(partial / "tokenizer.json")
        partial.rename(folder)  # complete or absent: an interrupted run tokenizes again
    return folder


class JsonLog:
    """log.jsonl, one record per line, written as it happens (a crash loses nothing logged). A new run
    starts a new log; a resumed one keeps the records before the step it resumes at."""

    def __init__(self, path: Path, resume_step: int = 0):
        self.path = path
        kept = []
        if resume_step and path.exists():
            kept = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < resume_step]
        path.write_text("".join(line + "\n" for line in kept))
        self.file = path.open("a", buffering=1)  # line-buffered: each record reaches the file at once

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self.file.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--out", type=Path, default=Path("out"), help="folder for tokens, checkpoints and plots")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt")
    parser.add_argument("--stop-after", type=int, help="checkpoint and stop after this step, as if interrupted "
                        "(the schedule still follows --steps)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=1337)
    args = parser.parse_args(argv)
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps

    ddp = "RANK" in os.environ
    if ddp:  # launched by torchrun: one process per device
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        device = torch.device(f"cuda:{int(os.environ['LOCAL_RANK'])}" if torch.cuda.is_available() else "cpu")
    else:
        rank, world = 0, 1
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    master = rank == 0
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = None
    if master:  # tokenize once; the others wait, then read the same files
        data_dir = token_files(args.out, python_reference_text(), p["vocab_size"])
    if ddp:
        shared = [data_dir]
        dist.broadcast_object_list(shared, src=0)
        data_dir = shared[0]
    tokenizer = BPETokenizer.load(data_dir / "tokenizer.json")
    train_data, val_data = load_tokens(data_dir / "train.bin"), load_tokens(data_dir / "val.bin")

    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=p["block_size"], n_layer=p["n_layer"],
                       n_head=p["n_head"], n_embd=p["n_embd"], dropout=p["dropout"])
    torch.manual_seed(args.seed)
    model = GPT(config).to(device)
    optimizer = configure_optimizer(model, lr=p["lr"])
    generator = torch.Generator().manual_seed(args.seed + rank)  # each process draws its own windows
    torch.manual_seed(args.seed + 1 + rank)  # dropout: each process its own stream (a resume restores it)
    start = load_checkpoint(args.out / "ckpt", model, optimizer, generator) if args.resume else 0
    n_params = model.parameter_counts()["total"]
    eval_generator = torch.Generator().manual_seed(0)  # the same validation windows every time
    val_batches = [get_batch(val_data, p["batch_size"], config.block_size, eval_generator, device)
                   for _ in range(p["eval_batches"])]
    train_model = torch.compile(model) if args.compile else model
    if ddp:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)

    tokens_per_step = p["batch_size"] * p["accum"] * config.block_size * world
    peak = peak_flops(device)
    log = bar = None
    if master:
        from tqdm.auto import tqdm
        log = JsonLog(args.out / "log.jsonl", resume_step=start)
        (args.out / "config.json").write_text(json.dumps({"preset": args.preset, **asdict(config)}, indent=1))
        bar = tqdm(total=p["steps"] - start, desc=f"pretraining ({args.preset}, {n_params / 1e6:.1f}M parameters)")
    stop = min(p["steps"], args.stop_after or p["steps"])
    for step in range(start, stop):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p["lr"], p["warmup"], p["steps"], min_lr=p["lr"] / 10)
        micro = [get_batch(train_data, p["batch_size"], config.block_size, generator, device) for _ in range(p["accum"])]
        stats = train_step(train_model, optimizer, micro, grad_clip=1.0,
                           autocast_dtype=torch.bfloat16 if use_bf16 else None)
        if device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for the step before reading the clock
        dt = time.perf_counter() - t0
        stats.update(step=step, tokens_per_s=tokens_per_step / dt)
        if peak:
            stats["mfu"] = flops_per_token(config, n_params) * tokens_per_step / dt / (peak * world)
        if (step + 1) % p["eval_every"] == 0 or step + 1 == stop:
            if master:
                stats.update({f"val_{k}": v for k, v in evaluate(model, val_batches).items()})
                stats["sample"] = sample(model, tokenizer, SAMPLE_PROMPT, device)
                bar.write(f"step {step + 1}: validation loss {stats['val_loss']:.3f} | {stats['sample']!r}")
            save_checkpoint(args.out / "ckpt", model, optimizer, step + 1, generator)  # every process: its RNG
        if master:
            log.write(stats)
            bar.update(1)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", tok_s=f"{stats['tokens_per_s']:.0f}",
                            **({"mfu": f"{stats['mfu']:.1%}"} if "mfu" in stats else {}))
    if master:
        bar.close()
        log.close()
        records = [json.loads(line) for line in (args.out / "log.jsonl").read_text().splitlines()]
        final = [s for s in records if "val_loss" in s]
        if final:
            print(f"step {final[-1]['step'] + 1}: validation loss {final[-1]['val_loss']:.3f} "
                  f"(perplexity {final[-1]['val_perplexity']:.1f}), {records[-1]['tokens_per_s']:.0f} tokens/s")
        plot_log(args.out / "log.jsonl", args.out / "loss.png", title=f"pretraining, preset {args.preset}")
        print(f"loss curves: {args.out / 'loss.png'}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
