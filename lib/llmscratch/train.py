"""Pretraining building blocks (chapter 05): token data on disk, batches, AdamW with decay groups,
warmup + cosine schedule, a training step with accumulation and clipping, evaluation, and
checkpoints that resume exactly.

Checkpoint layout (a folder): model.safetensors (weights), state.pt (optimizer state, step, and the
RNG states of every process: CPU, CUDA and batch generator; loaded with weights_only=True), meta.json
(config and format version). A checkpoint is written beside the old one and swapped in whole, so a
crash during a save leaves the previous checkpoint intact.
"""

import contextlib
import json
import math
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

CHECKPOINT_VERSION = 2


# ---- data -----------------------------------------------------------------------------------------
def save_tokens(ids, path) -> Path:
    """Store token ids once as a flat array on disk (uint16 when the vocabulary fits, else uint32)."""
    ids = np.asarray(ids)
    if ids.size == 0:
        raise ValueError("no token ids to save: is the corpus empty?")
    dtype = np.uint16 if ids.max() < 2**16 else np.uint32
    path = Path(path)
    ids.astype(dtype).tofile(path)
    path.with_suffix(path.suffix + ".dtype").write_text(np.dtype(dtype).name)
    return path


def load_tokens(path) -> np.memmap:
    """Memory-map token ids saved by save_tokens: nothing is read until a batch needs it."""
    path = Path(path)
    dtype_file = path.with_suffix(path.suffix + ".dtype")
    if not path.exists() or not dtype_file.exists():
        raise FileNotFoundError(f"no token file at {path} (with its .dtype beside it): run save_tokens first")
    return np.memmap(path, dtype=np.dtype(dtype_file.read_text().strip()), mode="r")


def get_batch(tokens, batch_size: int, block_size: int, generator: torch.Generator | None = None, device="cpu"):
    """Random windows: x (B, T) and the same windows shifted by one, y (B, T)."""
    if len(tokens) <= block_size:
        raise ValueError(f"{len(tokens)} tokens cannot fill a window of {block_size} + 1: use more text or a "
                         "smaller block_size")
    starts = torch.randint(len(tokens) - block_size, (batch_size,), generator=generator).tolist()
    x = torch.stack([torch.from_numpy(np.asarray(tokens[s:s + block_size], dtype=np.int64)) for s in starts])
    y = torch.stack([torch.from_numpy(np.asarray(tokens[s + 1:s + 1 + block_size], dtype=np.int64)) for s in starts])
    return x.to(device), y.to(device)


# ---- optimisation ---------------------------------------------------------------------------------
def configure_optimizer(model, lr: float, weight_decay: float = 0.1, betas=(0.9, 0.95)):
    """AdamW where matrices (weights of Linear and Embedding) decay and vectors (biases, LayerNorm
    scales) do not: decaying a gain or a bias towards zero only hurts."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def lr_at(step: int, max_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
          decay: str = "cosine") -> float:
    """Linear warmup from 0 to max_lr over warmup_steps, then decay to min_lr at total_steps: cosine
    (pretraining, chapter 05) or linear (BERT's fine-tuning recipe, chapter 07)."""
    if decay not in ("cosine", "linear"):
        raise ValueError(f"decay must be 'cosine' or 'linear', got {decay!r}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1 - progress
    return min_lr + (max_lr - min_lr) * shape


def model_loss(model, x, y):
    """The loss of one (x, y) batch: model(x, y), or model(**x, labels=y) when x is a dict of inputs (a
    tokenizer's input_ids and attention_mask, chapter 07's classifier)."""
    return model(**x, labels=y)[1] if isinstance(x, dict) else model(x, y)[1]


def train_step(model, optimizer, micro_batches, grad_clip: float | None = 1.0, autocast_dtype=None,
               scaler: "torch.amp.GradScaler | None" = None) -> dict:
    """One optimizer step over several micro-batches (gradient accumulation): the gradient equals
    that of one batch made of all of them. Returns the mean loss and the gradient norm before clipping.
    A NaN or inf loss is an error, never a silent step.

    autocast_dtype: bf16 or fp16 mixed precision (llmscratch.hardware.autocast_dtype chooses). fp16 needs a
    `scaler` (hardware.grad_scaler): the loss is scaled up before backward, the gradients are unscaled before
    clipping, and a step whose gradients overflowed is skipped ("skipped": True) while the scale shrinks."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    device_type = next(model.parameters()).device.type
    total = torch.zeros((), device=next(model.parameters()).device)
    for i, (x, y) in enumerate(micro_batches):
        # DDP all-reduces the gradients in every backward(); only the last micro-batch's is needed
        last = i == len(micro_batches) - 1
        sync = model.no_sync() if isinstance(model, DistributedDataParallel) and not last else contextlib.nullcontext()
        with sync:
            with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = model_loss(model, x, y)
            scaled = loss / len(micro_batches)
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        total += loss.detach()  # stays on the device: reading it every micro-batch would stall a GPU
    trainable = [p for p in model.parameters() if p.requires_grad]  # a frozen encoder has no gradient
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip (and report) the true gradients, not the scaled ones
    norm = torch.nn.utils.clip_grad_norm_(trainable, grad_clip if grad_clip else float("inf"))
    loss, norm = torch.stack([total / len(micro_batches), norm.float()]).tolist()  # one host sync per step
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss}: lower the learning rate, check the data, "
                                 "or resume from the last checkpoint")
    if scaler is None:
        optimizer.step()
        return {"loss": loss, "grad_norm": norm}
    scale = scaler.get_scale()
    scaler.step(optimizer)  # skipped when a gradient is inf or NaN (the scale was too large)
    scaler.update()         # halves the scale after an overflow, doubles it after growth_interval good steps
    return {"loss": loss, "grad_norm": norm, "skipped": not math.isfinite(norm), "loss_scale": scale}


@torch.no_grad()
def evaluate(model, batches) -> dict:
    """Mean loss over a fixed list of (x, y) batches, and its perplexity."""
    was_training = model.training
    model.eval()
    losses = [model_loss(model, x, y).item() for x, y in batches]
    model.train(was_training)
    loss = sum(losses) / len(losses)
    return {"loss": loss, "perplexity": math.exp(loss)}


# ---- checkpoints ----------------------------------------------------------------------------------
def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def _rng_states(generator: torch.Generator | None) -> dict:
    """Everything random that the next step depends on, in this process."""
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state() if generator is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # dropout on a GPU draws from these
    return state


def save_checkpoint(folder, model, optimizer, step: int, generator: torch.Generator | None = None,
                    scaler=None) -> Path:
    """Save model, optimizer, step, RNG states (and the fp16 loss scale, with a GradScaler). Under DDP every process must call it (each sends
    its own RNG states); process 0 writes."""
    from safetensors.torch import save_model

    folder = Path(folder)
    rank, world = _rank_world()
    rng = [_rng_states(generator)]
    if world > 1:
        rng = [None] * world
        dist.all_gather_object(rng, _rng_states(generator))
    if rank == 0:
        partial, old = folder.with_name(folder.name + ".partial"), folder.with_name(folder.name + ".old")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_model(model, partial / "model.safetensors")  # handles the tied wte / lm_head weights
        torch.save({"optimizer": optimizer.state_dict(), "step": step, "rng": rng,
                    "scaler": scaler.state_dict() if scaler is not None else None}, partial / "state.pt")
        meta = {"version": CHECKPOINT_VERSION, "step": step, "world_size": world,
                "config": asdict(model.config) if hasattr(model, "config") else None}
        (partial / "meta.json").write_text(json.dumps(meta, indent=1))
        if folder.exists():  # swap: only complete checkpoints ever carry the name `folder`
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        partial.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    if world > 1:
        dist.barrier()
    return folder


def load_checkpoint(folder, model, optimizer, generator: torch.Generator | None = None, scaler=None) -> int:
    """Restore model, optimizer and RNG states saved by save_checkpoint; returns the step to resume at.
    Loads on any device (a GPU checkpoint on a CPU machine too). Under DDP each process takes its own RNG."""
    from safetensors import SafetensorError
    from safetensors.torch import load_model

    folder = Path(folder)
    old = folder.with_name(folder.name + ".old")
    if not folder.exists() and old.exists():
        folder = old  # a save was interrupted between its two renames: the previous checkpoint is complete
    missing = [f for f in ("model.safetensors", "state.pt", "meta.json") if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} is not a complete checkpoint: missing {', '.join(missing)}")
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint format {meta.get('version')} in {folder}; this code reads {CHECKPOINT_VERSION}")
    if hasattr(model, "config") and meta.get("config") not in (None, asdict(model.config)):
        raise ValueError(f"the checkpoint in {folder} was saved from a different model config:\n"
                         f"  saved: {meta['config']}\n  model: {asdict(model.config)}")
    rank, world = _rank_world()
    if meta["world_size"] != world:
        raise ValueError(f"the checkpoint in {folder} was saved by {meta['world_size']} processes and this run has "
                         f"{world}: each process resumes its own random stream, so resume with "
                         f"{meta['world_size']} processes (or start a new run from its weights)")
    device = next(model.parameters()).device
    try:
        load_model(model, folder / "model.safetensors", device=str(device))
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError) as err:  # truncated or corrupt files
        raise ValueError(f"the checkpoint in {folder} is corrupt or incomplete ({err}); use an earlier one") from err
    optimizer.load_state_dict(state["optimizer"])  # moves the state to the parameters' device
    rng = state["rng"][rank]
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(rng["cuda"])
    if generator is not None and rng["generator"] is not None:
        generator.set_state(rng["generator"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state["step"]
