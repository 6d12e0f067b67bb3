"""Fitting a training run to the hardware: the autocast dtype a GPU trains in, the loss scaling that fp16 needs,
the card's peak FLOP/s for the MFU, and whether a run fits in its memory.

Which 16-bit format, from the CUDA compute capability (not torch.cuda.is_bf16_supported(), which also answers True
where bf16 is only emulated, as on Colab's free Tesla T4):

    capability >= 8.0 (A100, RTX 30xx/40xx, L4, H100)   bf16 autocast: fp32's range, nothing to scale
    capability <  8.0 (T4 7.5, V100 7.0)                 fp16 autocast + GradScaler: small gradients would underflow
    no CUDA (CPU, MPS)                                   fp32
"""

import contextlib
from dataclasses import dataclass

import torch

BF16_FROM = (8, 0)   # Ampere: the first tensor cores with bf16

# Dense 16-bit tensor-core peaks in FLOP/s, from the vendors' data sheets (without sparsity): bf16, or fp16 on the
# cards without bf16 (V100, T4). Matched by substring of the device name, in this order (L40S before L40 before L4).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
                   "RTX 4090": 165e12, "A10": 125e12, "V100": 125e12, "T4": 65e12}


def autocast_dtype(device, capability: tuple[int, int] | None = None) -> torch.dtype | None:
    """The dtype to autocast training to on `device`: bf16, fp16 or None (fp32). `capability` overrides the
    device's own (major, minor), to ask about a card that is not here."""
    device = torch.device(device)
    if device.type != "cuda":
        return None   # CPU autocast exists, but on most CPUs bf16 matrix products are no faster than fp32
    major, minor = capability or torch.cuda.get_device_capability(device)
    return torch.bfloat16 if (major, minor) >= BF16_FROM else torch.float16


def grad_scaler(dtype: torch.dtype | None, device) -> "torch.amp.GradScaler | None":
    """A GradScaler for fp16 training (5 exponent bits: gradients below 6e-8 become 0 unless the loss is scaled
    up first); None for bf16 and fp32, whose range is fp32's."""
    if dtype != torch.float16:
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def dtype_name(dtype: torch.dtype | None) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")


def peak_flops(device) -> float | None:
    """The card's dense 16-bit peak, None on a CPU or a card not in PEAK_BF16_FLOPS."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


# ---- memory ---------------------------------------------------------------------------------------------
@dataclass
class MemoryEstimate:
    """Bytes of one training step at its peak: what stays (weights, gradients, AdamW's two moments) and what
    the forward pass keeps for the backward pass (activations)."""
    weights: int
    gradients: int
    optimizer: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations

    def __str__(self) -> str:
        gib = lambda b: f"{b / 2**30:.2f}"
        return (f"{gib(self.total)} GiB = weights {gib(self.weights)} + gradients {gib(self.gradients)} + "
                f"AdamW {gib(self.optimizer)} + activations {gib(self.activations)}")


def estimate_training_memory(model: torch.nn.Module, loss_at, batch_size: int, seq_len: int,
                             autocast: torch.dtype | None = None, probe_len: int = 16) -> MemoryEstimate:
    """The peak memory of a training step with AdamW at batch_size x seq_len, estimated on any device (a CPU
    will do) from the model itself at full width and depth.

    Weights, gradients and AdamW's moments are counted from the parameters (gradients for the trainable ones
    only). Activations are measured: `loss_at(T)` runs a forward pass of one row of T tokens and returns its
    loss, and the tensors it saves for the backward pass at T = probe_len, 2 and 4 times that fix
    a + (b T + c T^2) per row: a is what a step saves once (autocast's 16-bit copies of the weights), b the
    per-token part, c > 0 where attention scores are stored. Under `autocast` the probes autocast too (on a
    CPU, bf16 stands in for either 16-bit format: the same sizes)."""
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    weights = sum(p.numel() * p.element_size() for p in params)
    gradients = sum(p.numel() * p.element_size() for p in trainable)
    optimizer = 2 * gradients   # exp_avg and exp_avg_sq, each the size of its parameter
    device = params[0].device
    probe_dtype = torch.bfloat16 if autocast is not None and device.type == "cpu" else autocast
    param_storages = {p.untyped_storage().data_ptr() for p in params}

    def measure(T):
        seen, total = set(param_storages), 0

        def pack(t):
            nonlocal total
            if t.untyped_storage().data_ptr() not in seen:   # saved twice (or a parameter): counted once
                seen.add(t.untyped_storage().data_ptr())
                total += t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(device.type, dtype=probe_dtype, enabled=probe_dtype is not None):
                loss = loss_at(T)
        del loss
        return total

    t = probe_len
    m1, m2, m4 = measure(t), measure(2 * t), measure(4 * t)
    c = max(0.0, ((m4 - m2) - 2 * (m2 - m1)) / (6 * t * t))
    b = (m2 - m1) / t - 3 * c * t
    a = max(0.0, m1 - b * t - c * t * t)
    activations = a + batch_size * (b * seq_len + c * seq_len ** 2)
    return MemoryEstimate(weights, gradients, optimizer, int(activations))


def fits(estimate: MemoryEstimate, memory_bytes: int, reserve: int = 2**30, headroom: float = 0.9) -> bool:
    """Whether a run of `estimate` fits in a card of `memory_bytes`: CUDA's context and allocator take about
    `reserve`, and fragmentation and transient buffers (a logits gradient, the optimizer's temporaries) the
    rest of `headroom`."""
    return estimate.total <= headroom * (memory_bytes - reserve)


M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3   # mallopt's parameters (malloc.h)


@contextlib.contextmanager
def freed_memory_kept():
    """On Linux (glibc), keep memory that PyTorch frees for its next allocations instead of handing it back to the
    system, inside the block. A training step whose shapes change every time (RL: new completion lengths each step)
    otherwise asks the kernel for fresh pages every step, and filling them with zeros (page faults) took longer than
    the forward pass itself on a 2-core CPU: measured 6-16 s against 3.3 s for the same step once memory is kept.
    Costs resident memory up to the largest step's, until the block ends: then glibc's defaults come back and the
    kept memory is returned (a process that went on keeping it grew by every model it loaded later). Yields whether
    it applied (False elsewhere: nothing to do)."""
    libc = _glibc()
    if libc is None:
        yield False
        return
    ok = libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)   # big tensors from the heap, not fresh mmaps
    ok &= libc.mallopt(M_TRIM_THRESHOLD, 1 << 32)  # and the heap never trimmed back
    ok &= libc.mallopt(M_TOP_PAD, 1 << 28)
    try:
        yield bool(ok)
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)   # glibc's defaults
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TOP_PAD, 0)
        libc.malloc_trim(0)


def _glibc():
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim   # glibc's, not musl's
        return libc
    except (OSError, AttributeError):   # musl (Alpine) or no glibc
        return None
