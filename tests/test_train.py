"""Pretraining blocks: exact resume, schedule, clipping, accumulation, checkpoints, DDP on CPU."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from llmscratch.gpt import GPT, GPTConfig
from llmscratch.pretrain import token_files
from llmscratch.train import (configure_optimizer, get_batch, load_checkpoint, load_tokens, lr_at, save_checkpoint,
                              save_tokens, train_step)

CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)


def tokens():
    return np.random.default_rng(0).integers(0, CONFIG.vocab_size, 5000)


def fresh(seed=0):
    torch.manual_seed(seed)
    model = GPT(CONFIG)
    return model, configure_optimizer(model, lr=1e-3)


def run(model, optimizer, data, steps, start, generator, total=20):
    losses = []
    for step in range(start, start + steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, 1e-3, warmup_steps=5, total_steps=total)
        micro = [get_batch(data, 4, CONFIG.block_size, generator) for _ in range(2)]
        losses.append(train_step(model, optimizer, micro)["loss"])
    return losses


def test_resume_reproduces_the_uninterrupted_losses(tmp_path):
    data = tokens()
    model, opt = fresh()
    straight = run(model, opt, data, 20, 0, torch.Generator().manual_seed(1))

    model, opt = fresh()
    g = torch.Generator().manual_seed(1)
    first = run(model, opt, data, 10, 0, g)
    save_checkpoint(tmp_path / "ckpt", model, opt, step=10, generator=g)
    model, opt = fresh(seed=123)                       # a different start: everything must come from the checkpoint
    g = torch.Generator().manual_seed(999)
    step = load_checkpoint(tmp_path / "ckpt", model, opt, generator=g)
    assert step == 10
    assert first + run(model, opt, data, 10, step, g) == straight


def test_schedule_boundaries():
    assert lr_at(0, 1.0, warmup_steps=10, total_steps=100) == pytest.approx(0.1)
    assert lr_at(9, 1.0, 10, 100) == pytest.approx(1.0)
    assert lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)          # the cosine starts at the top
    assert lr_at(55, 1.0, 10, 100, min_lr=0.1) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(100, 1.0, 10, 100, min_lr=0.1) == pytest.approx(0.1)
    assert lr_at(500, 1.0, 10, 100, min_lr=0.1) == pytest.approx(0.1)


def test_clipping_bounds_the_gradient_norm():
    model, opt = fresh()
    x, y = get_batch(tokens(), 4, CONFIG.block_size, torch.Generator().manual_seed(2))
    for g in opt.param_groups:
        g["lr"] = 0.0  # measure, don't move
    stats = train_step(model, opt, [(x, y)], grad_clip=1e-3)
    clipped = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.grad is not None))
    assert stats["grad_norm"] > 1e-3 and clipped.item() == pytest.approx(1e-3, rel=1e-3)


def test_accumulation_equals_one_large_batch():
    data = tokens()
    x, y = get_batch(data, 8, CONFIG.block_size, torch.Generator().manual_seed(3))
    model_a, opt_a = fresh()
    model_b, opt_b = fresh()
    train_step(model_a, opt_a, [(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)], grad_clip=None)
    train_step(model_b, opt_b, [(x, y)], grad_clip=None)
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_token_files_round_trip(tmp_path):
    ids = tokens()
    loaded = load_tokens(save_tokens(ids, tmp_path / "train.bin"))
    assert loaded.dtype == np.uint16 and np.array_equal(loaded, ids)
    big = np.array([0, 70_000])
    assert load_tokens(save_tokens(big, tmp_path / "big.bin")).dtype == np.uint32
    with pytest.raises(ValueError, match="corpus empty"):
        save_tokens([], tmp_path / "empty.bin")
    with pytest.raises(FileNotFoundError, match="run save_tokens first"):
        load_tokens(tmp_path / "missing.bin")
    with pytest.raises(ValueError, match="cannot fill a window"):
        get_batch(ids[:10], 2, 16)


def test_bad_checkpoints_are_clear_errors(tmp_path):
    model, opt = fresh()
    save_checkpoint(tmp_path / "ok", model, opt, step=3)
    other = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(ValueError, match="different model config"):
        load_checkpoint(tmp_path / "ok", other, configure_optimizer(other, 1e-3))
    weights = tmp_path / "ok" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        load_checkpoint(tmp_path / "ok", model, opt)
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        load_checkpoint(tmp_path / "nothing", model, opt)
    save_checkpoint(tmp_path / "ok", model, opt, step=3)
    meta = json.loads((tmp_path / "ok" / "meta.json").read_text())
    (tmp_path / "ok" / "meta.json").write_text(json.dumps({**meta, "world_size": 2}))
    with pytest.raises(ValueError, match="saved by 2 processes and this run has 1"):
        load_checkpoint(tmp_path / "ok", model, opt)


def test_an_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model, opt = fresh()
    save_checkpoint(tmp_path / "ckpt", model, opt, step=10)
    saved = {n: p.detach().clone() for n, p in model.named_parameters()}
    run(model, opt, tokens(), 2, 10, torch.Generator().manual_seed(0))       # the weights move on

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing state.pt")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", model, opt, step=12)
    monkeypatch.undo()
    restored, restored_opt = fresh(seed=5)
    assert load_checkpoint(tmp_path / "ckpt", restored, restored_opt) == 10
    for n, p in restored.named_parameters():  # step 10's weights with step 10's step, not a mixture
        assert torch.equal(p, saved[n]), n
    # the next save succeeds and replaces it
    save_checkpoint(tmp_path / "ckpt", model, opt, step=12)
    assert load_checkpoint(tmp_path / "ckpt", restored, restored_opt) == 12
    assert sorted(f.name for f in tmp_path.iterdir()) == ["ckpt"]


def test_a_checkpoint_saved_on_a_gpu_loads_on_a_cpu(tmp_path, monkeypatch):
    """Every tensor in state.pt is tagged with the device it was saved from; without map_location a CPU-only
    machine refuses 'cuda:0'. Tag them as a GPU run would."""
    model, opt = fresh()
    run(model, opt, tokens(), 2, 0, torch.Generator().manual_seed(0))        # the optimizer has state
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    save_checkpoint(tmp_path / "ckpt", model, opt, step=2)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="CUDA"):  # the files really say cuda:0
        torch.load(tmp_path / "ckpt" / "state.pt", weights_only=True)
    restored, restored_opt = fresh(seed=5)
    assert load_checkpoint(tmp_path / "ckpt", restored, restored_opt) == 2
    assert restored_opt.state_dict()["state"][0]["exp_avg"].device.type == "cpu"


def test_nan_loss_stops_training():
    model, opt = fresh()
    x, y = get_batch(tokens(), 2, CONFIG.block_size, torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.transformer.wte.weight[0, 0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="loss became nan"):
        train_step(model, opt, [(x, y), (x, y)])
    assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(before, model.parameters()))  # no step


def test_one_host_sync_per_step_whatever_the_accumulation(monkeypatch):
    """Reading a GPU tensor on the host (.item(), bool(), .tolist()) waits for the GPU: once per step, not per
    micro-batch."""
    data = tokens()
    counts = []
    for k in (1, 4):
        model, opt = fresh()
        micro = [get_batch(data, 2, CONFIG.block_size, torch.Generator().manual_seed(i)) for i in range(k)]
        syncs = []
        for name in ("item", "tolist", "__bool__"):
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: syncs.append(_n) or _o(self, *a))
        train_step(model, opt, micro)
        monkeypatch.undo()
        counts.append(len(syncs))
    # (AdamW reads its CPU step counters too, once per parameter: those cost nothing)
    assert counts[0] == counts[1], f"host reads per step with 1 and 4 micro-batches: {counts}"


def _ddp_worker(rank, world, port, x, y, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(GPT(CONFIG))
    all_reduces = []

    def counting_hook(state, bucket):  # DDP's own all-reduce, counted
        all_reduces.append(1)
        return dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future().then(lambda f: f.value()[0])
    model.register_comm_hook(None, counting_hook)
    half = x.shape[0] // world
    mine = x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half]
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # measure the gradients, don't move
    train_step(model, opt, [mine], grad_clip=None)
    per_step = len(all_reduces)                        # one all-reduce per gradient bucket
    all_reduces.clear()
    micro = [(mine[0][i:i + 1], mine[1][i:i + 1]) for i in range(half)]  # accumulation: one sequence each
    train_step(model, opt, micro, grad_clip=None)      # DDP averages the gradients of the two halves
    if rank == 0:
        out.put(({n: p.grad.numpy().copy() for n, p in model.module.named_parameters()}, len(all_reduces), per_step))
    dist.barrier()
    dist.destroy_process_group()


def test_two_process_ddp_with_accumulation_gives_the_single_process_gradients():
    x, y = get_batch(tokens(), 8, CONFIG.block_size, torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    single = GPT(CONFIG)
    single(x, y)[1].backward()
    with socket.socket() as s:  # a free port on 127.0.0.1 for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, x, y, out)) for r in range(2)]
    for p in procs:
        p.start()
    grads, all_reduces, per_step = out.get(timeout=120)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for n, p in single.named_parameters():
        assert torch.allclose(torch.from_numpy(grads[n]), p.grad, atol=1e-6), n
    # 4 micro-batches per process, but gradients cross the wire once per step (no_sync on the first 3)
    assert all_reduces == per_step, f"{all_reduces} all-reduces in a step of 4 micro-batches, {per_step} in one of 1"


def cli(out, *extra, processes=1, tokens_from=None):
    """python -m llmscratch.pretrain --preset tiny, or under torchrun with several processes (gloo on CPU)."""
    if tokens_from is not None and not out.exists():  # reuse the tokenized text: tokenizing is the slow part
        out.mkdir(parents=True)
        for folder in tokens_from.glob("tokens-*"):
            shutil.copytree(folder, out / folder.name)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = (launcher if processes > 1 else [sys.executable]) + ["-m", "llmscratch.pretrain", "--preset", "tiny",
                                                                   "--out", str(out), *extra]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("processes", [1, 2])
def test_command_line_pretraining_resumes_exactly(tmp_path, processes):
    """python -m llmscratch.pretrain: 20 steps straight equal 10 steps, a stop, and a resume. With 2 processes
    each resumes its own stream of windows: were they to share one, the averaged gradients would differ."""
    straight = cli(tmp_path / "a", processes=processes)
    cli(tmp_path / "b", "--stop-after", "10", processes=processes, tokens_from=tmp_path / "a")
    with (tmp_path / "b" / "log.jsonl").open("a") as log:  # a crash after the checkpoint: steps 10, 11 logged
        log.write("".join(json.dumps({"step": s, "loss": 0.0}) + "\n" for s in (10, 11)))
    resumed = cli(tmp_path / "b", "--resume", processes=processes)
    assert [s["step"] for s in resumed] == list(range(20))
    assert [s["loss"] for s in resumed] == [s["loss"] for s in straight]
    assert resumed[-1]["val_loss"] < math.log(512)  # it learned something: below a uniform guess
    evals = [s for s in resumed if "val_loss" in s]
    assert [s["step"] + 1 for s in evals] == [10, 20] and all(s["sample"].startswith('The "for"') for s in evals)
    assert (tmp_path / "b" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the whole run's curves
    if processes == 1:  # a new run in the same folder starts a new log
        assert [s["step"] for s in cli(tmp_path / "b", "--steps", "5")] == list(range(5))


def test_token_files_are_keyed_by_tokenizer_and_text(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 40
    small = token_files(tmp_path, text, vocab_size=270)
    large = token_files(tmp_path, text, vocab_size=290)
    other = token_files(tmp_path, text + "A different text.", vocab_size=270)
    assert len({small, large, other}) == 3
    stamp = (small / "train.bin").stat().st_mtime_ns
    assert token_files(tmp_path, text, vocab_size=270) == small and (small / "train.bin").stat().st_mtime_ns == stamp
    assert json.loads((small / "tokenizer.json").read_text()) != json.loads((large / "tokenizer.json").read_text())


# ---- the BERT's pretraining: masked windows, and the same command line --------------------------------
def test_mlm_batch_wraps_random_windows_and_masks_only_ordinary_tokens():
    from llmscratch.bert import IGNORE_INDEX, mlm_batch

    cls_id, sep_id, mask_id, specials = 2, 3, 4, (0, 1, 2, 3, 4)
    data = np.random.default_rng(0).integers(5, 300, 20_000).astype(np.uint16)
    data[::37] = sep_id                                               # the [SEP] that ends each line
    g = torch.Generator().manual_seed(0)
    inputs, labels = mlm_batch(data, 64, 32, cls_id, sep_id, mask_id, 300, specials, g)
    assert inputs.shape == labels.shape == (64, 32) and inputs.dtype == labels.dtype == torch.long
    assert (inputs[:, 0] == cls_id).all() and (inputs[:, -1] == sep_id).all()
    selected = labels != IGNORE_INDEX
    originals = torch.where(selected, labels, inputs)                 # undo the masking
    assert not torch.isin(originals[selected], torch.tensor(specials)).any()
    flat = data.astype(np.int64).tobytes()
    for row in originals[:, 1:-1]:                                    # each window is a piece of the data
        assert row.numpy().astype(np.int64).tobytes() in flat
    assert 0.11 < selected.sum().item() / (inputs.shape[0] * 30 - (originals[:, 1:-1] == sep_id).sum().item()) < 0.19
    again = mlm_batch(data, 64, 32, cls_id, sep_id, mask_id, 300, specials, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    with pytest.raises(ValueError, match="leaves no room"):
        mlm_batch(data, 4, 2, cls_id, sep_id, mask_id, 300, specials, g)
    with pytest.raises(ValueError, match="cannot fill a window"):
        mlm_batch(data[:10], 4, 32, cls_id, sep_id, mask_id, 300, specials, g)


def test_mlm_accuracy_and_the_unigram_baseline():
    from llmscratch.bert import IGNORE_INDEX, mlm_accuracy
    from llmscratch.pretrain import unigram_accuracy

    class Oracle(torch.nn.Module):  # knows the answer at the first two masked positions of each row
        def forward(self, inputs):
            logits = torch.zeros(*inputs.shape, 10)
            logits[..., 7] = 1.0
            logits[:, :2, 3] = 2.0
            return logits, None

    inputs = torch.tensor([[9, 3, 9, 1], [9, 9, 9, 7]])                # 9 = [MASK]; the others were kept or replaced
    labels = torch.tensor([[3, 3, 7, IGNORE_INDEX], [3, 5, 7, 7]])   # 7 selected targets; 3 of the 7 are 3s
    assert mlm_accuracy(Oracle(), [(inputs, labels)]) == pytest.approx(6 / 7)  # row 1 pos 1 is a 5
    assert unigram_accuracy([(inputs, labels)]) == pytest.approx(3 / 7)  # always "3" (or "7"): 3 of 7
    # at the [MASK]ed positions only (5 of the 7): the kept "3" and the last "7" are left out
    assert mlm_accuracy(Oracle(), [(inputs, labels)], mask_id=9) == pytest.approx(4 / 5)
    assert unigram_accuracy([(inputs, labels)], mask_id=9) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="no position is masked"):
        mlm_accuracy(Oracle(), [(inputs, torch.full((2, 4), IGNORE_INDEX))])


def test_command_line_bert_pretraining_resumes_exactly(tmp_path):
    """--model bert: the People's Daily, a WordPiece vocabulary, masked batches; 20 steps straight equal
    10, a stop and a resume, and every evaluation reports the masked-token accuracy and fills in a sentence."""
    straight = cli(tmp_path / "a", "--model", "bert", processes=1)
    assert (tmp_path / "a" / "ckpt" / "model.safetensors").exists()
    cli(tmp_path / "b", "--model", "bert", "--stop-after", "10", processes=1, tokens_from=tmp_path / "a")
    resumed = cli(tmp_path / "b", "--model", "bert", "--resume", processes=1)
    assert [s["loss"] for s in resumed] == [s["loss"] for s in straight]
    evals = [s for s in resumed if "val_loss" in s]
    assert [s["step"] + 1 for s in evals] == [10, 20]
    assert all(0 <= s["val_accuracy"] <= 1 and 0 < s["val_unigram_accuracy"] < 1 for s in evals)
    assert all(s["fill_mask"].startswith("中华人民[") and s["fill_mask"].count("[") == 2 for s in evals)
    vocab = next((tmp_path / "a").glob("tokens-*")) / "vocab.txt"
    assert vocab.read_text(encoding="utf-8").split("\n")[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["preset"] == "tiny" and config["hidden_size"] == 64
    result = subprocess.run([sys.executable, "-m", "llmscratch.pretrain", "--model", "bert", "--preset", "gpt2-small"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--model bert has no preset 'gpt2-small'" in result.stderr


def test_export_saves_a_bert_that_loads_with_the_same_predictions(tmp_path):
    from llmscratch.bert import BertConfig, BertForMaskedLM, load_mlm

    cli(tmp_path / "run", "--model", "bert", "--export", str(tmp_path / "export"), processes=1)
    model, tokenizer = load_mlm(tmp_path / "export")
    info = json.loads((tmp_path / "export" / "info.json").read_text())
    assert info["step"] == 20 and info["preset"] == "tiny" and 0 <= info["val_accuracy"] <= 1
    assert "--model bert --preset tiny" in info["command"]
    assert model.cls.decoder.weight is model.bert.embeddings.word_embeddings.weight  # still tied
    trained = BertForMaskedLM(BertConfig(**json.loads((tmp_path / "export" / "config.json").read_text())))
    load_checkpoint(tmp_path / "run" / "ckpt", trained, configure_optimizer(trained, lr=1e-3))
    ids = torch.tensor([[tokenizer.cls_id] + tokenizer.encode("中华人民共和国成立以来，我国经济发展很快。") + [tokenizer.sep_id]])
    with torch.no_grad():
        ours, theirs = model(ids)[0], trained.eval()(ids)[0]
    assert (ours - theirs).abs().max() < 2e-2 * theirs.abs().max()  # fp16 storage: ~3 significant digits
    assert torch.equal(ours.argmax(-1), theirs.argmax(-1))
    size = (tmp_path / "export" / "model.safetensors").stat().st_size
    assert size < 0.6 * sum(p.numel() for p in trained.parameters()) * 4  # half of fp32, the tied matrix once
    # a finished run exports again without training
    again = tmp_path / "again"
    cli(tmp_path / "run", "--model", "bert", "--resume", "--export", str(again), processes=1)
    assert (again / "model.safetensors").read_bytes() == (tmp_path / "export" / "model.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError, match="holds no saved BERT.*--export"):
        load_mlm(tmp_path / "nothing")
    (again / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or incomplete"):
        load_mlm(again)


def test_the_shipped_chinese_bert_reads_its_context(tmp_path):
    """lib/llmscratch/weights/bert-zh, made by `pretrain --model bert --preset long --export`: its vocabulary is the
    one that command trains on the People's Daily, and at the [MASK]ed positions of held-out windows it beats the
    unigram baseline by far, in loss and in accuracy."""
    from llmscratch.bert import CHINESE_BERT, load_mlm, mlm_accuracy, mlm_batch
    from llmscratch.data import peoples_daily_text
    from llmscratch.pretrain import BERT_PRESETS, unigram_accuracy, wordpiece_token_files
    from llmscratch.train import evaluate

    model, tok = load_mlm()
    info = json.loads((CHINESE_BERT / "info.json").read_text(encoding="utf-8"))
    assert info["preset"] == "long" and info["step"] == BERT_PRESETS["long"]["steps"]
    data = wordpiece_token_files(tmp_path, peoples_daily_text(), BERT_PRESETS["long"]["vocab_size"])
    assert (data / "vocab.txt").read_bytes() == (CHINESE_BERT / "vocab.txt").read_bytes()
    val, train = load_tokens(data / "val.bin"), load_tokens(data / "train.bin")
    mask_id = tok.special_tokens["[MASK]"]
    batches = []
    for i in range(8):
        x, y = mlm_batch(val, 32, 64, tok.cls_id, tok.sep_id, mask_id, tok.vocab_size,
                         sorted(tok.special_tokens.values()), torch.Generator().manual_seed(500 + i))
        batches.append((x, y.masked_fill(x != mask_id, -100)))
    counts = torch.bincount(torch.from_numpy(np.asarray(train, dtype=np.int64)), minlength=tok.vocab_size).double()
    counts[sorted(tok.special_tokens.values())] = 0
    log_p = ((counts + 1) / (counts + 1).sum()).log()
    unigram_loss = -log_p[torch.cat([y[y != -100] for _, y in batches])].mean().item()
    accuracy, baseline = mlm_accuracy(model, batches), unigram_accuracy(batches)
    assert evaluate(model, batches)["loss"] < unigram_loss - 1.0, "less than 1 nat from the context"
    assert accuracy > 3 * baseline and accuracy > 0.15, (accuracy, baseline)
