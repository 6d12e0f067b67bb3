"""Seed, device, preset and CPU threads: the choices every notebook's setup cell makes."""

import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

# Environment variables that mean "validate quickly": CI runs and nbgrader autograding.
QUICK_RUN_VARS = ("CI", "NBGRADER_EXECUTION")
PRESET_VAR = "LLMSCRATCH_PRESET"  # lets a student force a preset, e.g. LLMSCRATCH_PRESET=cpu
THREADS_VAR = "LLMSCRATCH_THREADS"  # lets a student force torch's CPU thread count, e.g. LLMSCRATCH_THREADS=1


def seed_everything(seed: int = 1337) -> None:
    """Seed Python, NumPy and torch (all devices) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_device(prefer: str | None = None) -> torch.device:
    """cuda > mps > cpu, or the device named by `prefer` (an error if it is not available)."""
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' was asked for but no CUDA GPU is visible; use 'cpu'")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise RuntimeError("device 'mps' was asked for but MPS is not available; use 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def is_quick_run() -> bool:
    """True under CI or nbgrader autograding, where notebooks must use their smallest preset.
    CI=false (or 0, no, off, empty) means not CI."""
    return any(os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")
               for name in QUICK_RUN_VARS)


def choose_preset(device: torch.device | str, presets=("cpu", "gpu"), override: str | None = None) -> str:
    """Pick a preset name. `presets` is ordered smallest first.

    Order of precedence: CI / autograding (always the smallest), then `override`, then the
    LLMSCRATCH_PRESET variable, then the device: a GPU gets "gpu", anything else "cpu", where that
    preset exists; otherwise the smallest. A chapter may have a preset smaller than "cpu" (e.g.
    "quick") that only validates the notebook under CI and autograding.
    """
    presets = tuple(presets)
    if not presets:
        raise ValueError("presets is empty: give the preset names, smallest first")
    if is_quick_run():
        return presets[0]
    choice = override or os.environ.get(PRESET_VAR)
    if choice:
        if choice not in presets:
            raise ValueError(f"unknown preset {choice!r}: choose one of {', '.join(presets)}")
        return choice
    if torch.device(device).type == "cuda" and "gpu" in presets:
        return "gpu"
    return "cpu" if "cpu" in presets else presets[0]


def available_cpus(cgroup: Path | str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask (the CPU count where there is none), capped by the
    CPU quota of its cgroup (containers, CI runners) when one is set. At least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(cgroup))
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))  # 1.5 CPUs of time: two threads can use it
    return max(1, cpus)


def cgroup_cpu_quota(cgroup: Path) -> float | None:
    """CPUs' worth of time the cgroup allows (1.5 = one and a half CPUs), None for no limit or no cgroup."""
    try:
        if (cgroup / "cpu.max").exists():  # cgroup v2: "quota period", or "max period" for no limit
            quota, period = (cgroup / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())  # cgroup v1: -1 for no limit
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError, ZeroDivisionError):
        return None


def configure_threads(override: int | None = None) -> int:
    """Set torch's CPU thread count and return it: `override`, else $LLMSCRATCH_THREADS, else
    $OMP_NUM_THREADS when the user set it (torch already follows it), else available_cpus() less the
    CPUs that other processes keep busy at this moment.

    torch's default, one thread per core of the machine, collapses when other processes share the
    cores: one training step took 820 ms with 2 threads and 146 ms with 1 on two busy cores.
    """
    threads = override
    if threads is None and os.environ.get(THREADS_VAR):
        value = os.environ[THREADS_VAR]
        if not value.isdecimal() or int(value) < 1:
            raise ValueError(f"{THREADS_VAR}={value!r} is not a positive whole number: set it to e.g. 1, or unset it")
        threads = int(value)
    if threads is None:
        if os.environ.get("OMP_NUM_THREADS"):
            return torch.get_num_threads()  # the user's choice, which torch already follows
        busy = busy_cpus()  # CPUs other processes keep busy right now: leave them to them
        threads = max(1, min(available_cpus(), round((os.cpu_count() or 1) - busy))) if busy else available_cpus()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"override={threads!r} is not a positive whole number: pass e.g. 1, or None")
    torch.set_num_threads(threads)
    return threads


def busy_cpus(interval: float = 0.2, stat: Path | str = "/proc/stat") -> float | None:
    """How many of the machine's CPUs were busy over the next `interval` seconds (this process waits,
    so the work is someone else's), from the kernel's CPU time counters. None where there are none."""
    def read():
        fields = [int(v) for v in Path(stat).read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle
    try:
        total0, idle0 = read()
        time.sleep(interval)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return 0.0
    return (1 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def machine_busy(threshold: float = 0.5) -> bool:
    """True when other processes keep more than `threshold` CPUs busy (or, without CPU counters, the
    1-minute load average exceeds available_cpus()): CPU timings taken now are not reliable."""
    busy = busy_cpus()
    if busy is not None:
        return busy > threshold
    return hasattr(os, "getloadavg") and os.getloadavg()[0] > available_cpus()
