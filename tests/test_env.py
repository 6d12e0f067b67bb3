import random

import numpy as np
import pytest
import torch

from llmscratch.env import choose_preset, get_device, seed_everything


def test_seed_everything_repeats_python_numpy_and_torch():
    draws = []
    for _ in range(2):
        seed_everything(123)
        draws.append((random.random(), np.random.rand(), torch.rand(3).tolist()))
    assert draws[0] == draws[1]
    seed_everything(124)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) != draws[0]


def test_get_device_prefers_an_available_accelerator():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert get_device().type == expected
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_get_device_refuses_a_missing_gpu():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        get_device("cuda")


@pytest.fixture
def clean_env(monkeypatch):
    for name in ("CI", "NBGRADER_EXECUTION", "LLMSCRATCH_PRESET"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_preset_follows_the_device(clean_env):
    assert choose_preset("cpu") == "cpu"
    assert choose_preset("cuda") == "gpu"
    assert choose_preset("mps") == "cpu"
    assert choose_preset("cuda", presets=("tiny", "cpu")) == "cpu"
    assert choose_preset("cpu", presets=("quick", "cpu", "gpu")) == "cpu"  # "quick" is for CI only
    assert choose_preset("cuda", presets=("tiny", "small")) == "tiny"


def test_preset_override_and_variable(clean_env):
    assert choose_preset("cpu", override="gpu") == "gpu"
    clean_env.setenv("LLMSCRATCH_PRESET", "gpu")
    assert choose_preset("cpu") == "gpu"
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        choose_preset("cpu", override="huge")


@pytest.mark.parametrize("variable", ["CI", "NBGRADER_EXECUTION"])
def test_quick_runs_always_take_the_smallest_preset(clean_env, variable):
    clean_env.setenv(variable, "autograde")
    clean_env.setenv("LLMSCRATCH_PRESET", "gpu")
    assert choose_preset("cuda", override="gpu") == "cpu"
    assert choose_preset("cuda", presets={"tiny": {}, "cpu": {}, "gpu": {}}) == "tiny"
