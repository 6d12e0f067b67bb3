import os
import random

import numpy as np
import pytest
import torch

from llmscratch import env
from llmscratch.env import (available_cpus, busy_cpus, choose_preset, configure_threads, get_device, is_quick_run,
                            machine_busy, seed_everything)


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


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "off", ""])
def test_ci_false_is_not_ci(clean_env, value):
    clean_env.setenv("CI", value)
    assert not is_quick_run() and choose_preset("cpu", presets=("quick", "cpu")) == "cpu"


@pytest.fixture
def eight_cpus(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    return monkeypatch


@pytest.mark.parametrize("cpu_max, expected", [("max 100000", 8), ("200000 100000", 2), ("150000 100000", 2),
                                               ("50000 100000", 1), ("1600000 100000", 8), ("garbage", 8)])
def test_available_cpus_follows_a_cgroup_v2_quota(eight_cpus, tmp_path, cpu_max, expected):
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    assert available_cpus(tmp_path) == expected


@pytest.mark.parametrize("quota, expected", [("-1", 8), ("300000", 3), ("10000", 1)])
def test_available_cpus_follows_a_cgroup_v1_quota(eight_cpus, tmp_path, quota, expected):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(quota + "\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(tmp_path) == expected


def test_available_cpus_without_a_quota_is_the_affinity_mask_or_the_cpu_count(eight_cpus, tmp_path):
    assert available_cpus(tmp_path / "no-cgroup") == 8
    eight_cpus.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert available_cpus(tmp_path / "no-cgroup") == 1
    eight_cpus.delattr(os, "sched_getaffinity", raising=False)  # macOS and Windows have no affinity mask
    eight_cpus.setattr(os, "cpu_count", lambda: 4)
    assert available_cpus(tmp_path / "no-cgroup") == 4
    assert 1 <= available_cpus() <= os.cpu_count()  # the real machine


@pytest.fixture
def threads(monkeypatch):
    """torch.set_num_threads recorded instead of called, so the test process keeps its thread count."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(env, "available_cpus", lambda: 3)
    monkeypatch.setattr(env, "busy_cpus", lambda: 0.0)
    for name in ("LLMSCRATCH_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch, calls


def test_configure_threads_uses_the_available_cpus(threads):
    _, calls = threads
    assert configure_threads() == 3 and calls == [3]


def test_configure_threads_leaves_the_cpus_other_processes_keep_busy(threads):
    monkeypatch, calls = threads
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(env, "busy_cpus", lambda: 2.2)   # two of four cores taken: one thread on the third
    assert configure_threads() == 2
    monkeypatch.setattr(env, "busy_cpus", lambda: 3.9)   # all taken: still one thread
    assert configure_threads() == 1
    monkeypatch.setattr(env, "busy_cpus", lambda: None)  # no counters (macOS, Windows): the available CPUs
    assert configure_threads() == 3
    assert calls == [2, 1, 3]


def test_busy_cpus_reads_the_kernel_counters(tmp_path, monkeypatch):
    stat = tmp_path / "stat"
    # user nice system idle iowait irq softirq steal: 100 jiffies pass, 25 of them idle
    samples = iter(["cpu  100 0 0 100 0 0 0 0\ncpu0 ...", "cpu  170 0 5 125 0 0 0 0\ncpu0 ..."])
    monkeypatch.setattr(env.time, "sleep", lambda s: stat.write_text(next(samples)))
    stat.write_text(next(samples))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert busy_cpus(stat=stat) == pytest.approx(1.5)       # 75% of 2 CPUs
    assert busy_cpus(stat=tmp_path / "missing") is None
    monkeypatch.undo()
    real = busy_cpus(interval=0.05)
    assert real is None or 0.0 <= real <= os.cpu_count()


def test_configure_threads_respects_omp_num_threads(threads):
    monkeypatch, calls = threads
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert configure_threads() == torch.get_num_threads() and calls == []


def test_configure_threads_override_and_variable_win(threads):
    monkeypatch, calls = threads
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    monkeypatch.setenv("LLMSCRATCH_THREADS", "2")
    assert configure_threads() == 2
    assert configure_threads(override=4) == 4
    assert calls == [2, 4]


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_configure_threads_refuses_a_bad_variable(threads, value):
    monkeypatch, calls = threads
    monkeypatch.setenv("LLMSCRATCH_THREADS", value)
    with pytest.raises(ValueError, match=f"LLMSCRATCH_THREADS={value!r} is not a positive whole number"):
        configure_threads()
    with pytest.raises(ValueError, match="override=0 is not a positive whole number"):
        configure_threads(override=0)
    assert calls == []


def test_configure_threads_really_sets_torch():
    original = torch.get_num_threads()
    try:
        assert configure_threads(override=1) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(original)


def test_machine_busy_from_other_processes_or_the_load_average(monkeypatch):
    monkeypatch.setattr(env, "busy_cpus", lambda: 1.2)
    assert machine_busy() and not machine_busy(threshold=1.5)
    monkeypatch.setattr(env, "busy_cpus", lambda: 0.1)
    assert not machine_busy()
    monkeypatch.setattr(env, "busy_cpus", lambda: None)  # no CPU counters: the load average
    monkeypatch.setattr(env, "available_cpus", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.9, 0.5, 0.5), raising=False)
    assert machine_busy()
    monkeypatch.setattr(os, "getloadavg", lambda: (1.8, 4.0, 4.0), raising=False)
    assert not machine_busy()
    monkeypatch.delattr(os, "getloadavg", raising=False)  # Windows has no load average
    assert not machine_busy()
