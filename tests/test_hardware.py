"""Precision and memory for the GPUs students have: the autocast dtype from the compute capability (Colab's T4 has
no native bf16), fp16 loss scaling that skips overflowing steps and trains, and the memory estimate that every
gpu preset must fit into 16 GB with (tests/test_gpucheck.py builds and runs each preset)."""

import math
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from llmscratch import hardware
from llmscratch.gpt import GPT, GPTConfig
from llmscratch.train import configure_optimizer, load_checkpoint, save_checkpoint, train_step

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16),    # T4 (Colab's free tier)
                                               ((7, 0), torch.float16),    # V100
                                               ((8, 0), torch.bfloat16),   # A100
                                               ((8, 9), torch.bfloat16),   # L4, RTX 4090
                                               ((9, 0), torch.bfloat16)])  # H100
def test_autocast_dtype_follows_the_compute_capability(monkeypatch, capability, dtype):
    # A T4 answers True here (emulated bf16 counts): the choice must not ask it.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert hardware.autocast_dtype("cuda") is dtype
    assert hardware.autocast_dtype("cuda", capability) is dtype
    scaler = hardware.grad_scaler(dtype, "cpu")
    assert (scaler is not None) == (dtype is torch.float16)


def test_no_gpu_trains_in_fp32():
    assert hardware.autocast_dtype("cpu") is None and hardware.grad_scaler(None, "cpu") is None
    assert hardware.dtype_name(None) == "fp32" and hardware.peak_flops("cpu") is None


def test_every_training_path_asks_the_one_place():
    """No chapter decides bf16 by itself with is_bf16_supported(), which a T4 answers True."""
    sources = [p for p in (ROOT / "lib").rglob("*.py") if p.name != "hardware.py"] + \
        [p for folder in ("solutions", "notebooks") for p in (ROOT / folder).rglob("*.ipynb")] + \
        list((ROOT / "benchmarks").rglob("*.py"))
    offenders = [str(p.relative_to(ROOT)) for p in sources if "is_bf16_supported()" in p.read_text(encoding="utf-8")]
    assert not offenders, f"decide the autocast dtype with llmscratch.hardware.autocast_dtype: {offenders}"


def test_peak_flops_are_looked_up_by_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA L40S")
    assert hardware.peak_flops("cuda") == 362e12            # not the L40's or the L4's
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert hardware.peak_flops("cuda") == 65e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert hardware.peak_flops("cuda") is None


# ---- fp16 with loss scaling --------------------------------------------------------------------------------
class Scaled(nn.Module):
    """loss = mean((w * x - y)^2): a gradient of x's size, so a huge x overflows the scaled gradient."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(4))

    def forward(self, x, y):
        return None, ((self.w * x - y) ** 2).mean()


def test_the_scaler_skips_an_overflowing_step_and_grows_after_good_ones():
    model = Scaled()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, growth_interval=3)
    x, y = torch.ones(4), torch.zeros(4)
    huge = torch.full((4,), 1e18)   # the loss, 1e36, is finite in fp32; scaled by 2^16 it is not
    before = model.w.detach().clone()
    stats = train_step(model, optimizer, [(huge, torch.zeros(4))], grad_clip=None, scaler=scaler)
    assert stats["skipped"] and torch.equal(model.w, before), "an inf gradient must not move the weights"
    assert scaler.get_scale() == 2.0 ** 15, "after an overflow the scale halves"
    for _ in range(3):
        stats = train_step(model, optimizer, [(x, y)], grad_clip=None, scaler=scaler)
        assert not stats["skipped"]
    assert scaler.get_scale() == 2.0 ** 16, "after growth_interval good steps the scale doubles"
    assert not torch.equal(model.w, before)
    # The reported norm is the true one, not the scaled one: d/dw mean((w - 0)^2) = 2 w / 4 per element.
    plain = Scaled()
    with torch.no_grad():
        plain.w.copy_(model.w)
    reference = train_step(plain, torch.optim.SGD(plain.parameters(), lr=0.1), [(x, y)], grad_clip=None)
    stats = train_step(model, optimizer, [(x, y)], grad_clip=None, scaler=scaler)
    assert math.isclose(stats["grad_norm"], reference["grad_norm"], rel_tol=1e-6)


def test_fp16_autocast_with_a_scaler_trains_a_gpt_on_the_cpu():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    model = GPT(config)
    optimizer = configure_optimizer(model, lr=3e-3)
    scaler = hardware.grad_scaler(torch.float16, "cpu")
    x = torch.randint(64, (4, 16), generator=torch.Generator().manual_seed(1))
    batch = [(x, torch.roll(x, -1, dims=1))]
    losses = [train_step(model, optimizer, batch, autocast_dtype=torch.float16, scaler=scaler)["loss"]
              for _ in range(40)]
    assert losses[-1] < 0.5 * losses[0], f"fp16 + loss scaling did not learn one batch: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_a_checkpoint_keeps_the_loss_scale(tmp_path):
    model = Scaled()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    train_step(model, optimizer, [(torch.full((4,), 1e18), torch.zeros(4))], grad_clip=None, scaler=scaler)
    save_checkpoint(tmp_path / "ckpt", model, optimizer, 1, scaler=scaler)
    restored = torch.amp.GradScaler("cpu")
    assert load_checkpoint(tmp_path / "ckpt", Scaled(), torch.optim.SGD(Scaled().parameters(), lr=0.1),
                           scaler=restored) == 1
    assert restored.get_scale() == 2.0 ** 9


# ---- the memory estimate -----------------------------------------------------------------------------------
def saved_bytes(model, B, T, autocast=None):
    """The direct measurement the estimate extrapolates: bytes saved for backward at batch B, length T."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen, total = set(params), 0

    def pack(t):
        nonlocal total
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            total += t.untyped_storage().nbytes()
        return t
    x = torch.randint(model.config.vocab_size, (B, T + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            model(x[:, :-1], x[:, 1:])
    return total


@pytest.mark.parametrize("use_sdpa, autocast", [(True, None), (False, None), (True, torch.bfloat16)])
def test_the_activation_estimate_extrapolates_what_is_measured(use_sdpa, autocast):
    """Probes at T = 8, 16 and 32 predict batch 3 at T = 96 within 5%: with fused attention (memory linear in T),
    with the attention weights stored (quadratic in T), and under autocast (16-bit weight copies saved once)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=128, n_layer=2, n_head=2, n_embd=64))
    for block in model.transformer.h:
        block.attn.use_sdpa = use_sdpa
    loss_at = lambda T: model(*(lambda x: (x[:, :-1], x[:, 1:]))(torch.randint(256, (1, T + 1))))[1]
    estimate = hardware.estimate_training_memory(model, loss_at, batch_size=3, seq_len=96, autocast=autocast,
                                                 probe_len=8)
    measured = saved_bytes(model, 3, 96, autocast)
    assert abs(estimate.activations - measured) < 0.05 * measured, (estimate.activations, measured)
    n = sum(p.numel() for p in model.parameters())
    assert (estimate.weights, estimate.gradients, estimate.optimizer) == (4 * n, 4 * n, 8 * n)


def test_fits_leaves_room_for_the_cuda_context():
    gib = 2**30
    assert hardware.fits(hardware.MemoryEstimate(2 * gib, 2 * gib, 4 * gib, 4 * gib), 16 * gib)
    assert not hardware.fits(hardware.MemoryEstimate(2 * gib, 2 * gib, 4 * gib, 6 * gib), 16 * gib)



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings: Linux only")
def test_freed_memory_is_kept_inside_the_block_and_returned_after_it():
    """train_grpo keeps freed memory for its next steps on a CPU, and only while it runs: a process that went on
    keeping it grew with every model it loaded later (two test workers ran out of 24 GiB that way)."""
    def rss():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    mib = 2**20
    with hardware.freed_memory_kept() as applied:
        assert applied
        x = torch.ones(256 * mib // 4)   # 256 MiB, from the heap now, not from a fresh mapping
        full = rss()
        del x
        kept = rss()
        assert kept > full - 32 * mib, "freed inside the block: kept for the next step"
    assert rss() < kept - 200 * mib, "after the block: handed back"
