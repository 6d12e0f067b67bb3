"""Seed, device and preset: the three choices every notebook's setup cell makes."""

import os
import random

import numpy as np
import torch

# Environment variables that mean "validate quickly": CI runs and nbgrader autograding.
QUICK_RUN_VARS = ("CI", "NBGRADER_EXECUTION")
PRESET_VAR = "LLMSCRATCH_PRESET"  # lets a student force a preset, e.g. LLMSCRATCH_PRESET=cpu


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
    """True under CI or nbgrader autograding, where notebooks must use their smallest preset."""
    return any(os.environ.get(name) for name in QUICK_RUN_VARS)


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
