"""BPE training and encoding speed: the library against a naive trainer and Hugging Face `tokenizers`.

    python -m benchmarks.bpe                  # vocab sizes 512, 2048, 8192 on the Python reference
    python -m benchmarks.bpe --sizes 512 --naive-up-to 512

The naive trainer shares the library's pre-tokenization and tie rule and learns the same merges; it
only differs in re-counting every pair of every distinct pre-token after each merge, which is what
the library's incremental pair counts avoid.
"""

import argparse
import time

from llmscratch.data import python_reference_text
from llmscratch.tokenizers import BPETokenizer
from llmscratch.tokenizers.naive_bpe import naive_train_merges


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def hf_train_seconds(text: str, vocab_size: int) -> float:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    return timed(hf.train_from_iterator, [text], trainer)[1]


def run(sizes, naive_up_to):
    text = python_reference_text()
    megabytes = len(text.encode("utf-8")) / 1e6
    print(f"corpus: Python language reference, {megabytes:.2f} MB, {len(text):,} characters")
    print(f"{'vocab':>6} | {'library train s':>15} | {'naive train s':>13} | {'naive/library':>13} | "
          f"{'HF train s':>10} | {'library MB/s':>12} | {'HF MB/s':>8} | same ids as HF")
    rows = []
    for size in sizes:
        tok, t_lib = timed(BPETokenizer.train, text, size)
        t_naive = None
        if size <= naive_up_to:
            naive_merges, t_naive = timed(naive_train_merges, text, size)
            assert naive_merges == list(tok.merges), "the naive trainer learned different merges"
        t_hf = hf_train_seconds(text, size)
        tok = BPETokenizer(list(tok.merges))  # a fresh tokenizer: encoding starts with an empty cache
        ids, t_enc = timed(tok.encode, text)
        hf = tok.to_hf()
        hf_ids, t_hf_enc = timed(lambda: hf.encode(text).ids)
        naive = f"{t_naive:13.2f} | {t_naive / t_lib:12.1f}x" if t_naive else f"{'-':>13} | {'-':>13}"
        print(f"{size:>6} | {t_lib:15.2f} | {naive} | {t_hf:10.2f} | {megabytes / t_enc:12.2f} | "
              f"{megabytes / t_hf_enc:8.2f} | {ids == hf_ids}")
        rows.append(dict(vocab=size, library=t_lib, naive=t_naive, hf=t_hf,
                         library_mb_s=megabytes / t_enc, hf_mb_s=megabytes / t_hf_enc, equal=ids == hf_ids))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--naive-up-to", type=int, default=8192, help="skip the naive trainer above this size")
    args = parser.parse_args()
    run(args.sizes, args.naive_up_to)
