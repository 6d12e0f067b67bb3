"""Sentence-embedding speed: the course BERT, Hugging Face's BertModel and sentence-transformers, all with the
same all-MiniLM-L6-v2 weights, on 2,000 real dialogue turns (English and Chinese) in batches of 64 (padded to the longest).

    python -m benchmarks.bert                  # CPU
    python -m benchmarks.bert --device cuda

Two tables. "model": the same padded batches (in the same order) through each model and mean pooling,
tokenization left out, so only the models differ. "end to end": text in, unit vectors out, each with its own
tokenizer, the sentences sorted by length first (less padding; sentence-transformers does this itself).
Each figure is the best of --repeats runs, the engines alternating; the embeddings are checked to agree.
"""

import argparse
import random
import time

import torch
import torch.nn.functional as F

from llmscratch.bert import load_minilm, mean_pool, minilm_dir, sentence_embeddings
from llmscratch.data import chatterbot_dialogues
from llmscratch.env import configure_threads, machine_busy


def real_sentences(tokenizer, n: int = 2000, max_tokens: int = 128) -> list[str]:
    turns = list(dict.fromkeys(t for language in ("english", "chinese")
                               for d in chatterbot_dialogues(language) for t in d.turns))
    turns = [t for t in turns if len(tokenizer(t)["input_ids"]) <= max_tokens]
    if len(turns) < n:
        raise SystemExit(f"only {len(turns)} distinct turns of at most {max_tokens} tokens: ask for fewer")
    return random.Random(0).sample(turns, n)


def best_time(fn, device: str, repeats: int) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), out


def run(device: str, batch_size: int = 64, repeats: int = 3):
    import transformers
    from sentence_transformers import SentenceTransformer

    threads = configure_threads() if device == "cpu" else None
    ours, tokenizer = load_minilm(device)
    hf = transformers.BertModel.from_pretrained(str(minilm_dir())).to(device).eval()
    hf_tokenizer = transformers.BertTokenizerFast.from_pretrained(str(minilm_dir()))
    sbert = SentenceTransformer(str(minilm_dir()), device=device)
    sentences = real_sentences(tokenizer)
    batches = [hf_tokenizer(sentences[i:i + batch_size], padding=True, return_tensors="pt").to(device)
               for i in range(0, len(sentences), batch_size)]
    real = sum(b["attention_mask"].sum().item() for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    print(f"{len(sentences)} sentences, batch {batch_size}, {real:,} real tokens padded to {padded:,}; fp32 on {device}"
          + (f" ({threads} threads)" if threads else "") + f"; HF attention: {hf.config._attn_implementation}")
    if device == "cpu" and machine_busy():
        print("warning: other processes keep the CPUs busy: the figures are unreliable")

    @torch.no_grad()
    def model_only(forward):
        return torch.cat([F.normalize(mean_pool(forward(b), b["attention_mask"]), dim=1) for b in batches])

    engines = {
        "course BertModel": lambda: model_only(lambda b: ours(b["input_ids"], b["attention_mask"], b["token_type_ids"])),
        "HF BertModel": lambda: model_only(lambda b: hf(**b).last_hidden_state),
    }

    @torch.no_grad()
    def hf_end_to_end():  # sorted by length like the other two, then back to the given order
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = []
        for i in range(0, len(sentences), batch_size):
            b = hf_tokenizer([sentences[j] for j in order[i:i + batch_size]], padding=True,
                             return_tensors="pt").to(device)
            out.append(F.normalize(mean_pool(hf(**b).last_hidden_state, b["attention_mask"]), dim=1))
        result = torch.empty_like(torch.cat(out))
        result[torch.tensor(order, device=result.device)] = torch.cat(out)
        return result

    end_to_end = {
        "course (WordPiece + BertModel)": lambda: sentence_embeddings(ours, tokenizer, sentences, batch_size),
        "HF (BertTokenizerFast + BertModel)": hf_end_to_end,
        "sentence-transformers": lambda: sbert.encode(sentences, batch_size=batch_size, convert_to_tensor=True),
    }
    for title, table in (("model", engines), ("end to end", end_to_end)):
        for fn in table.values():
            fn()  # warm-up
        results = {name: None for name in table}
        for _ in range(repeats):  # alternate the engines: a slow moment of the machine hits all of them
            for name, fn in table.items():
                seconds, out = best_time(fn, device, 1)
                if results[name] is None or seconds < results[name][0]:
                    results[name] = (seconds, out.to("cpu"))
        reference_name = next(iter(table))
        reference = results[reference_name][1]
        print(f"\n{title} (ratio: speed over the first row's):\n{'engine':>36} | {'sentences/s':>11} | {'ratio':>6} | max |diff|")
        for name, (seconds, out) in results.items():
            speed = len(sentences) / seconds
            ratio = results[reference_name][0] / seconds
            print(f"{name:>36} | {speed:11.0f} | {ratio:5.2f}x | {(out - reference).abs().max().item():.1e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    run(args.device, repeats=args.repeats)
