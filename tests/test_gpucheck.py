"""The GPU half, checked on a CPU: `make gpu-check`'s code runs every chapter's gpu preset at full width and depth
(batch 1, short sequences, two steps), and every gpu preset fits a 16 GB card (Colab's free T4) by the memory
estimate of llmscratch.hardware (weights, gradients, AdamW's moments, and activations measured from the model)."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llmscratch import gpucheck, hardware
from llmscratch.bert import BertConfig, BertForMaskedLM
from llmscratch.classify import PRESETS as CLASSIFY_PRESETS, BertForSequenceClassification
from llmscratch.gpt import GPT, GPTConfig
from llmscratch.llama import PRESETS as LLAMA_PRESETS, Llama, LlamaConfig, load_smollm2
from llmscratch.lora import apply_lora
from llmscratch.pretrain import BERT_PRESETS, PRESETS
from llmscratch.sft import LORA_TARGETS, PRESETS as SFT_PRESETS
from llmscratch.train import configure_optimizer, train_step

ROOT = Path(__file__).resolve().parents[1]
T4_BYTES = 16 * 10**9      # "16 GB": 14.9 GiB, of which CUDA's context takes some
T4 = (7, 5)                # fp16 autocast there


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """make gpu-check's command on a CPU, in its own process: its nine models' memory goes back to the system when it
    ends (a test worker that ran it in-process kept several GiB of it for the rest of the suite)."""
    folder = tmp_path_factory.mktemp("gpu-check")
    result = subprocess.run([sys.executable, "-m", "llmscratch.gpucheck", "--device", "cpu", "--budget", "tiny",
                             "--out", str(folder / "check.json"), "--work", str(folder / "work")],
                            capture_output=True, text=True)
    assert (folder / "check.json").exists(), result.stderr[-3000:]
    return result.returncode, json.loads((folder / "check.json").read_text())


def test_gpu_check_runs_every_chapter_on_a_cpu(report):
    status, data = report
    rows = {r["model"]: r for r in data["rows"]}
    assert status == 0, [r["error"] for r in rows.values() if r["error"]]
    assert {r["chapter"] for r in rows.values()} == {"05", "06", "07", "08", "09", "10", "11"}
    for r in rows.values():
        assert r["error"] is None and r["throughput"] > 0 and r["dtype"] == "fp32", r
        assert r["mfu"] is None and r["peak_memory_gib"] is None   # no peak known, nothing measured on a CPU
    trained = [r for r in rows.values() if "generation" not in r["model"]]
    assert len(trained) == 8 and all(r["estimated_memory_gib"] > 0 for r in trained)
    assert {r["unit"] for r in trained if r["chapter"] in ("10", "11")} == {"pairs", "rollouts"}
    assert 0 <= rows["SmolLM2 + LoRA r16, GRPO (gpu preset)"]["quality"]["accuracy_after"] <= 1


def test_gpu_check_builds_the_presets_at_full_size(report):
    """The tiny budget shrinks batches and steps, never the models: the parameter counts are the presets'."""
    _, data = report
    params = {r["model"]: r["params"] for r in data["rows"]}
    assert params["GPT (gpt2-small preset)"] == GPT(gpt_config(PRESETS["gpt2-small"], 32)).parameter_counts()["total"]
    assert params["SmolLM2 + LoRA r16, SFT (gpu preset)"] > 134_000_000
    assert len(data["rows"]) == len(gpucheck.checks(gpucheck.BUDGETS["tiny"], torch.device("cpu"), ROOT))


def test_the_table_says_which_card_and_when_the_peak_is_unknown(monkeypatch):
    assert "no GPU" in gpucheck.device_line(torch.device("cpu"))
    row = gpucheck.Row("05", "GPT", 10**6, "bf16", 1234.0, mfu=0.41, peak_memory_gib=1.5, estimated_memory_gib=1.7,
                       quality={"val_loss": 2.5})
    failed = gpucheck.Row("06", "BERT", error="RuntimeError: out of memory")
    text = gpucheck.table([row, failed])
    assert "41.0%" in text and "1,234 tokens" in text and "val_loss 2.500" in text and "out of memory" in text


# ---- every gpu preset: one step at full width and depth, and the memory of its real batch ---------------------
def gpt_config(p, T=None):
    return GPTConfig(vocab_size=p["vocab_size"], block_size=T or p["block_size"], n_layer=p["n_layer"],
                     n_head=p["n_head"], n_embd=p["n_embd"])


def notebook_presets(chapter):
    """The PRESETS dict of a chapter whose presets live in its notebook's setup cell, read without running it (from
    the student notebook, which the student edition has too)."""
    nb = json.loads((ROOT / "notebooks" / chapter / f"{chapter}.ipynb").read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "PRESETS = {" in source:
            start = source.index("PRESETS = {")
            node = ast.parse(source[start:].split("\npreset =")[0]).body[0]
            return eval(compile(ast.Expression(node.value), chapter, "eval"), {"dict": dict})
    raise AssertionError(f"no PRESETS in {chapter}'s setup cell")


def lm_loss_at(model, vocab_size):
    def loss_at(T):
        x = torch.randint(vocab_size, (1, T + 1))
        return model(x[:, :-1], x[:, 1:])[1]
    return loss_at


def llama_rung(p):
    C, H = p["n_embd"], p["n_head"]
    return Llama(LlamaConfig(vocab_size=p["vocab_size"], block_size=p["block_size"], n_layer=p["n_layer"], n_head=H,
                             n_kv_head=H, n_embd=C, intermediate_size=8 * C // 3 // 8 * 8, rope_base=10000.0))


def bert_mlm(p):
    return BertForMaskedLM(BertConfig(vocab_size=p["vocab_size"], hidden_size=p["hidden_size"],
                                      num_hidden_layers=p["num_hidden_layers"],
                                      num_attention_heads=p["num_attention_heads"],
                                      intermediate_size=p["intermediate_size"],
                                      max_position_embeddings=p["block_size"], add_pooling_layer=False))


def smollm2(method):
    model, _ = load_smollm2()
    if method == "lora":
        apply_lora(model, LORA_TARGETS, SFT_PRESETS["gpu"]["rank"], SFT_PRESETS["gpu"]["alpha"])
    return model


# name: (build the model, its vocabulary, micro-batch size, sequence length)
GPU_PRESETS = {
    "04 GPT": lambda: (GPT(gpt_config(notebook_presets("04_gpt")["gpu"])), notebook_presets("04_gpt")["gpu"]),
    "05 GPT": lambda: (GPT(gpt_config(PRESETS["gpu"])), PRESETS["gpu"]),
    "05 GPT-2 small": lambda: (GPT(gpt_config(PRESETS["gpt2-small"])), PRESETS["gpt2-small"]),
    "08 GPT-2 rung": lambda: (GPT(gpt_config(LLAMA_PRESETS["gpu"])), LLAMA_PRESETS["gpu"]),
    "08 Llama rung": lambda: (llama_rung(LLAMA_PRESETS["gpu"]), LLAMA_PRESETS["gpu"]),
    "09 SmolLM2 LoRA": lambda: (smollm2("lora"), dict(SFT_PRESETS["gpu"], vocab_size=49152,
                                                       block_size=SFT_PRESETS["gpu"]["max_len"])),
    "09 SmolLM2 full": lambda: (smollm2("full"), dict(SFT_PRESETS["gpu"], vocab_size=49152,
                                                       block_size=SFT_PRESETS["gpu"]["max_len"])),
}


@pytest.mark.parametrize("name", sorted(GPU_PRESETS))
def test_every_decoder_gpu_preset_trains_a_step_and_fits_16_gb(name):
    torch.manual_seed(0)
    model, p = GPU_PRESETS[name]()
    vocab = p["vocab_size"]
    # One real step at full width and depth (batch 1, 16 tokens): a typo in a preset fails here, not on a GPU.
    x = torch.randint(vocab, (1, 17))
    stats = train_step(model, configure_optimizer(model, lr=1e-4), [(x[:, :-1], x[:, 1:])])
    assert torch.isfinite(torch.tensor(stats["loss"]))
    estimate = hardware.estimate_training_memory(model, lm_loss_at(model, vocab), p["batch_size"], p["block_size"],
                                                 hardware.autocast_dtype("cuda", T4))
    assert hardware.fits(estimate, T4_BYTES), f"{name} at batch {p['batch_size']} x {p['block_size']}: {estimate}"
    print(f"\n{name}: {estimate}")   # shown with `pytest -s`


@pytest.mark.parametrize("name", ["06 BERT", "07 classification"])
def test_every_encoder_gpu_preset_trains_a_step_and_fits_16_gb(name):
    torch.manual_seed(0)
    p = BERT_PRESETS["gpu"]
    if name == "06 BERT":
        model, batch, T = bert_mlm(p), p["batch_size"], p["block_size"]
        forward = lambda ids: model(ids, ids)[1]
    else:   # chapter 07 fine-tunes the shipped chapter-06 BERT; the gpu preset's batch and length
        from llmscratch.bert import load_mlm
        model = BertForSequenceClassification.from_encoder(load_mlm()[0], pooling="mean")
        batch, T = CLASSIFY_PRESETS["gpu"]["batch_size"], CLASSIFY_PRESETS["gpu"]["max_length"]
        forward = lambda ids: model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    labels=torch.zeros(len(ids), dtype=torch.long))[1]
    vocab = model.config.vocab_size
    optimizer = configure_optimizer(model, lr=1e-4)
    ids = torch.randint(5, vocab, (1, 16))
    optimizer.zero_grad()
    loss = forward(ids)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    estimate = hardware.estimate_training_memory(model, lambda t: forward(torch.randint(5, vocab, (1, t))), batch, T,
                                                 hardware.autocast_dtype("cuda", T4))
    assert hardware.fits(estimate, T4_BYTES), f"{name} at batch {batch} x {T}: {estimate}"


@pytest.mark.parametrize("chapter", ["10 DPO", "11 GRPO"])
def test_the_preference_and_rl_gpu_presets_fit_16_gb(chapter):
    """Chapters 10 and 11 tune SmolLM2's LoRA adapters on batches the tiny check shrinks (make gpu-check runs their
    step at full size there): the memory estimate at the gpu preset's real shape, the largest step it can take."""
    from llmscratch import preference, rl
    model, tokenizer = load_smollm2()
    if chapter == "10 DPO":
        p = preference.PRESETS["gpu"]
        rows, T = gpucheck.dpo_step_shape(p, tokenizer, sum(preference.question_splits(p), []))
    else:
        p = rl.PRESETS["gpu"]
        rows, T = gpucheck.grpo_step_shape(p, tokenizer, sum(rl.problem_sets(p["train_problems"], 0), []))
    apply_lora(model, LORA_TARGETS, p["rank"], p["alpha"])
    estimate = hardware.estimate_training_memory(model, lm_loss_at(model, model.config.vocab_size), rows, T,
                                                 hardware.autocast_dtype("cuda", T4))
    assert hardware.fits(estimate, T4_BYTES), f"{chapter} at {rows} rows x {T} tokens: {estimate}"
    print(f"\n{chapter}, {rows} rows x {T} tokens: {estimate}")   # shown with `pytest -s`


def test_notebook_presets_are_read_as_the_notebook_defines_them():
    presets = notebook_presets("04_gpt")
    assert list(presets) == ["quick", "cpu", "gpu"] and presets["gpu"]["n_embd"] == 384
