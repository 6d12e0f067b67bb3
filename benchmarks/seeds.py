"""Every training chapter's cpu-preset run on three seeds: how far its headline figure moves with the seed alone.

    python -m benchmarks.seeds                      # all chapters, seeds 0 1 2, two runs at a time (about 1.5 h)
    python -m benchmarks.seeds --only 07 08 --seeds 0 1 2 3 4

Each (chapter, seed) runs in its own process on one thread (OMP_NUM_THREADS=1: on one thread a seed gives the same
figures on any machine with the same torch; two threads can reorder sums), --jobs at a time. The seed sets the
initial weights, the order of the batches and, where the chapter draws one, its training split:

    05  python -m llmscratch.pretrain --preset cpu --seed S                  validation loss
    06  python -m llmscratch.pretrain --model bert --preset cpu --seed S     masked-token accuracy, validation loss
    07  the chapter-06 BERT fine-tuned on the reviews (mean pooling, and the [CLS] pooler at cls_lr), as the
        notebook runs it                                                     test accuracy, test macro F1
    08  the GPT-2 -> Llama ladder (llmscratch.ladder), every rung            validation loss
    09  python -m llmscratch.sft --preset cpu --method lora --seed S         success on the held-out questions
    10  python -m llmscratch.preference --preset cpu --seed S                held-out pair accuracy, correct topic
    11  python -m llmscratch.rl --preset cpu --seed S                        accuracy on unseen operands, transfer

Every figure is printed with the run's baseline beside it (the loss before training, the majority class, the model
before tuning), so a seed that collapses shows. The table is also written as JSON (--json).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

CHAPTERS = ("05", "06", "07", "08", "09", "10", "11")


# ---- one run: called in a fresh process (--run CH --seed S), prints {"figure": value, ...} as its last line -------
def _evaluations(out: Path) -> list[dict]:
    """The evaluated steps of a python -m llmscratch.pretrain run, from its log."""
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "val_loss" in r]


def run_05(seed: int, out: Path, preset: str) -> dict:
    from llmscratch import pretrain
    pretrain.main(["--preset", preset, "--seed", str(seed), "--out", str(out)])
    evals = _evaluations(out)
    return {"val loss": evals[-1]["val_loss"], "val loss at step 0": evals[0]["val_loss"]}


def run_06(seed: int, out: Path, preset: str) -> dict:
    from llmscratch import pretrain
    pretrain.main(["--model", "bert", "--preset", preset, "--seed", str(seed), "--out", str(out)])
    evals = _evaluations(out)
    return {"mask accuracy": evals[-1]["val_accuracy"], "most frequent token": evals[-1]["val_unigram_accuracy"],
            "val loss": evals[-1]["val_loss"]}


def run_07(seed: int, out: Path, preset: str) -> dict:
    import torch

    from llmscratch.bert import load_mlm
    from llmscratch.classify import PRESETS, BertForSequenceClassification, FineTuneConfig, encode_texts, fine_tune, \
        predict
    from llmscratch.data import sentiment_splits
    from llmscratch.metrics import classification_scores

    p = PRESETS[preset]
    splits = sentiment_splits(seed=0)       # the chapter's fixed split; the seed changes the model and the batches
    mlm, tokenizer = load_mlm()

    def take(part, n):
        texts, labels = zip(*part[:n])
        return encode_texts(tokenizer, list(texts), p["max_length"]), list(labels)

    train, val, (test_rows, test_y) = take(splits.train, p["train"]), take(splits.val, p["val"]), \
        take(splits.test, p["test"])
    figures = {"majority class": max(test_y.count(0), test_y.count(1)) / len(test_y)}
    for pooling, lr in (("mean", p["lr"]), ("cls", p["cls_lr"])):
        torch.manual_seed(seed)
        model = BertForSequenceClassification.from_encoder(mlm, pooling=pooling, dropout=0.1)
        config = FineTuneConfig(steps=p["steps"], batch_size=p["batch_size"], lr=lr, eval_every=p["eval_every"],
                                patience=4, seed=seed)
        fine_tune(model, *train, *val, config)
        scores = classification_scores(test_y, predict(model, test_rows))
        figures[f"{pooling}: test accuracy"] = scores["accuracy"]
        figures[f"{pooling}: test macro F1"] = scores["macro_f1"]
    return figures


def run_08(seed: int, out: Path, preset: str) -> dict:
    import torch

    from llmscratch import ladder
    from llmscratch.data import python_reference_text
    from llmscratch.llama import PRESETS
    from llmscratch.pretrain import token_files
    from llmscratch.train import evaluate, load_tokens

    p = PRESETS[preset]
    data = token_files(out, python_reference_text(), p["vocab_size"])
    train_ids, val_ids = load_tokens(data / "train.bin"), load_tokens(data / "val.bin")
    val_batches = ladder.val_batches(val_ids, p)
    figures = {}
    for name, make in ladder.rungs(p).items():
        torch.manual_seed(seed)
        model = make()
        ladder.train_briefly(model, p, train_ids, seed)
        figures[f"{name}: val loss"] = evaluate(model, val_batches)["loss"]
    return figures


def run_09(seed: int, out: Path, preset: str) -> dict:
    from llmscratch import sft
    sft.main(["--preset", preset, "--method", "lora", "--seed", str(seed), "--out", str(out)])
    r = json.loads((out / "results.json").read_text())
    return {"success after": r["after"]["success"], "success before": r["before"]["success"]}


def run_10(seed: int, out: Path, preset: str) -> dict:
    from llmscratch import preference
    preference.main(["--preset", preset, "--seed", str(seed), "--out", str(out)])
    r = json.loads((out / "results.json").read_text())
    return {"pair accuracy after": r["after"]["accuracy"], "pair accuracy before": r["before"]["accuracy"],
            "topic correct after": r["after"]["correct"], "topic correct before": r["before"]["correct"],
            "in format after": r["after"]["format"], "top reply share after": r["after"]["top_reply_share"],
            "topic choice before": r["before"]["choice_accuracy"], "topic choice after": r["after"]["choice_accuracy"]}


def run_11(seed: int, out: Path, preset: str) -> dict:
    from llmscratch import rl
    r = rl.main(["--preset", preset, "--seed", str(seed), "--out", str(out)])
    return {"accuracy after": r["after"]["accuracy"], "accuracy before": r["before"]["accuracy"],
            "last number after": r["after"]["last_number"], "format after": r["after"]["format"],
            "format before": r["before"]["format"], "transfer after": r["transfer_after"]["accuracy"],
            "transfer before": r["transfer_before"]["accuracy"]}


# ---- the driver -------------------------------------------------------------------------------------------------
def one_run(chapter: str, seed: int, preset: str, log_dir: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LLMSCRATCH_THREADS": "1",
           "TQDM_DISABLE": "1"}
    log = log_dir / f"{chapter}-seed{seed}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "benchmarks.seeds", "--run", chapter, "--seed", str(seed),
                               "--preset", preset],
                              stdout=f, stderr=subprocess.STDOUT, env=env)
    seconds = time.perf_counter() - start
    lines = log.read_text().strip().splitlines()
    if done.returncode != 0 or not lines:
        return {"chapter": chapter, "seed": seed, "seconds": seconds, "error": f"exit {done.returncode}: see {log}"}
    return {"chapter": chapter, "seed": seed, "seconds": seconds, "figures": json.loads(lines[-1])}


def table(runs: list[dict]) -> str:
    lines = [f"{'ch':2} | {'figure':36} | {'seed by seed':>26} | {'mean':>6} | {'range':>6} | {'min/run':>7}"]
    lines.append("-" * len(lines[0]))
    for chapter in sorted({r["chapter"] for r in runs}):
        mine = sorted((r for r in runs if r["chapter"] == chapter), key=lambda r: r["seed"])
        for r in mine:
            if "error" in r:
                lines.append(f"{chapter:2} | seed {r['seed']} FAILED: {r['error']}")
        good = [r for r in mine if "figures" in r]
        minutes = statistics.mean(r["seconds"] for r in good) / 60 if good else 0
        for k, name in enumerate(good[0]["figures"] if good else []):
            values = [r["figures"][name] for r in good]
            seeds = " ".join(f"{v:.3f}" for v in values)
            lines.append(f"{chapter:2} | {name[:36]:36} | {seeds:>26} | {statistics.mean(values):6.3f} | "
                         f"{max(values) - min(values):6.3f} | " + (f"{minutes:7.1f}" if k == 0 else f"{'':7}"))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=CHAPTERS, default=list(CHAPTERS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time, each on one thread (default 2: one per "
                        "core of a 2-core machine)")
    parser.add_argument("--preset", default="cpu", help="every chapter's preset (quick: check the benchmark itself "
                        "in minutes)")
    parser.add_argument("--json", type=Path, default=Path("seeds.json"), help="where to write every run's figures")
    parser.add_argument("--run", choices=CHAPTERS, help=argparse.SUPPRESS)   # one run, in the child process
    parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            figures = globals()[f"run_{args.run}"](args.seed, Path(tmp), args.preset)
        print(json.dumps(figures))
        return
    log_dir = Path(tempfile.mkdtemp(prefix="seeds-"))
    longest_first = sorted(args.only, key=("10", "11", "09", "05", "06", "08", "07").index)   # two queues end together
    jobs = [(c, s) for c in longest_first for s in args.seeds]
    print(f"{len(jobs)} runs of the {args.preset} presets, {args.jobs} at a time on one thread each; logs in {log_dir}",
          flush=True)
    runs = []
    with ThreadPoolExecutor(args.jobs) as pool:
        for r in pool.map(lambda job: one_run(*job, args.preset, log_dir), jobs):
            runs.append(r)
            state = "FAILED" if "error" in r else "done"
            print(f"  {r['chapter']} seed {r['seed']}: {state} in {r['seconds'] / 60:.1f} min", flush=True)
    args.json.write_text(json.dumps(runs, indent=1))
    print(table(runs))
    print(f"every run's figures: {args.json}")
    if any("error" in r for r in runs):
        sys.exit(1)


if __name__ == "__main__":
    main()
