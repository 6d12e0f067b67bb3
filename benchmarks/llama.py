"""Generation speed of the course Llama against Hugging Face's LlamaForCausalLM, on the same SmolLM2-135M
weights: greedy, KV cache on, batch 1, 128 new tokens after a chat prompt.

    python -m benchmarks.llama                  # CPU, fp32
    python -m benchmarks.llama --device cuda    # fp32 and bf16

Each side runs `repeats` times after a warm-up; the best run counts (the least disturbed by other work).
Both must produce the same tokens, which is checked and printed.
"""

import argparse
import time

import torch
from transformers import LlamaForCausalLM

from llmscratch.chat import apply_chat_template
from llmscratch.llama import load_smollm2, smollm2_dir

PROMPT = [{"role": "user", "content": "Write a short story about a robot who learns to paint."}]


def timed(fn, device, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return out, best


def run(device: str, new_tokens: int = 128, repeats: int = 3):
    ours, tokenizer = load_smollm2(device)
    hf = LlamaForCausalLM.from_pretrained(smollm2_dir()).to(device).eval()
    ids = torch.tensor([tokenizer.encode(apply_chat_template(PROMPT, add_generation_prompt=True))], device=device)
    mask = torch.ones_like(ids)   # pad = eos = <|im_end|> in SmolLM2: without a mask HF would hide the prompt's
    print(f"greedy generation of {new_tokens} tokens after a {ids.shape[1]}-token prompt, batch 1, KV cache, {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(f"{'dtype':>8} | {'course tok/s':>12} | {'HF tok/s':>8} | {'course / HF':>11} | same tokens")
    dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
    for dtype in dtypes:
        ours.to(dtype)
        hf.to(dtype)
        course_fn = lambda: ours.generate(ids, new_tokens, temperature=0)
        hf_fn = lambda: hf.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id)
        course_fn(), hf_fn()   # warm-up
        a, t_ours = timed(course_fn, device, repeats)
        b, t_hf = timed(hf_fn, device, repeats)
        print(f"{str(dtype).split('.')[-1]:>8} | {new_tokens / t_ours:12.1f} | {new_tokens / t_hf:8.1f} | "
              f"{t_hf / t_ours:10.2f}x | {torch.equal(a, b)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    run(args.device, args.new_tokens)
