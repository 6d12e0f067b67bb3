"""Generation speed with and without the KV cache: 256 new tokens after a 64-token prompt.

    python -m benchmarks.generation                 # small and medium configs, CPU
    python -m benchmarks.generation --device cuda

Greedy decoding, batch 1, random weights (speed does not depend on what the model learned); the
two runs must produce identical tokens, which is checked.
"""

import argparse
import time

import torch

from llmscratch.gpt import GPT, GPTConfig

CONFIGS = {
    "small": GPTConfig(vocab_size=2048, block_size=512, n_layer=4, n_head=4, n_embd=256),
    "medium": GPTConfig(vocab_size=8192, block_size=512, n_layer=8, n_head=8, n_embd=512),
}


def run(device: str, prompt_len: int = 64, new_tokens: int = 256):
    print(f"greedy generation of {new_tokens} tokens after a {prompt_len}-token prompt, batch 1, fp32, {device}")
    print(f"{'config':>7} | {'params':>7} | {'no cache tok/s':>14} | {'cache tok/s':>11} | {'speed-up':>8} | "
          f"{'cache MiB':>9} | same tokens")
    for name, config in CONFIGS.items():
        torch.manual_seed(0)
        model = GPT(config).to(device).eval()
        prompt = torch.randint(config.vocab_size, (1, prompt_len), device=device)
        model.generate(prompt, 8, temperature=0)  # warm-up
        results = {}
        for use_cache in (False, True):
            start = time.perf_counter()
            out = model.generate(prompt, new_tokens, temperature=0, use_cache=use_cache)
            if device == "cuda":
                torch.cuda.synchronize()
            results[use_cache] = (out, new_tokens / (time.perf_counter() - start))
        params = model.parameter_counts()["total"] / 1e6
        cache_mib = 2 * config.n_layer * config.block_size * config.n_embd * 4 / 2**20
        same = torch.equal(results[False][0], results[True][0])
        print(f"{name:>7} | {params:6.1f}M | {results[False][1]:14.1f} | {results[True][1]:11.1f} | "
              f"{results[True][1] / results[False][1]:7.1f}x | {cache_mib:9.1f} | {same}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    run(parser.parse_args().device)
