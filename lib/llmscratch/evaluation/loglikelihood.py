"""Log-likelihoods of text under a course model, computed as EleutherAI's lm-evaluation-harness computes them.

Every benchmark score of the harness reduces to three requests to a model:

    loglikelihood(context, continuation)   -> (log p(continuation | context), is_greedy)
    loglikelihood_rolling(text)            -> log p(text), over windows of the model's context
    generate_until(context, stop)          -> text                       (generation.py)

The details decide whether two implementations agree to the fourth decimal:
- the boundary: "Answer:" + " Paris" is encoded whole and split after the context's tokens (a BPE merges across
  the join), and a context's trailing spaces move to the continuation first;
- an empty context is conditioned on a prefix token (BOS, or the end-of-text token when there is none);
- the logits at position t score the token at t + 1, so the input is context + continuation minus its last token;
- too long: the harness cuts the context's start with a warning. Here that is refused unless asked for.
"""

import itertools
import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


@dataclass
class LanguageModel:
    """A model as an evaluation sees it: token ids in, logits out, and the text <-> ids mapping it was trained with."""
    model: torch.nn.Module              # forward(idx (B, T)) -> (logits (B, T, vocab), ...)
    encode: Callable[[str], list[int]]  # text -> ids, no special tokens added
    prefix_token_id: int                # what an empty context is: BOS, else the end-of-text token
    max_length: int                     # the model's context (block_size)
    batch_size: int = 16

    @property
    def device(self):   # a bigram table has buffers and no parameters
        return next(itertools.chain(self.model.parameters(), self.model.buffers())).device


def from_hf_tokenizer(model, tokenizer, max_length: int | None = None, batch_size: int = 16) -> LanguageModel:
    """A course model with a Hugging Face tokenizer (SmolLM2 in the course's Llama, chapter 08)."""
    prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return LanguageModel(model, lambda text: tokenizer.encode(text, add_special_tokens=False), prefix,
                         max_length or model.config.block_size, batch_size)


def from_course_bpe(model, tokenizer, max_length: int | None = None, batch_size: int = 16) -> LanguageModel:
    """A course model with the course's byte-level BPE (chapters 01 and 05): an empty context is <|endoftext|>."""
    return LanguageModel(model, tokenizer.encode, tokenizer.special_tokens["<|endoftext|>"],
                         max_length or model.config.block_size, batch_size)


def encode_pair(lm: LanguageModel, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids), split as the harness splits them: the whole text encoded at once."""
    if not continuation:
        raise ValueError("the continuation is empty: there is nothing to score (a choice of '' has probability 1)")
    if not context:
        ids = lm.encode(continuation)
        return ([lm.prefix_token_id], ids) if ids[0] != lm.prefix_token_id else (ids[:1], ids[1:])
    spaces = len(context) - len(context.rstrip())
    if spaces:   # "Answer: " + "Paris" is scored as "Answer:" + " Paris", the way the text is tokenized
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = lm.encode(context + continuation)
    n = len(lm.encode(context))
    return whole[:n], whole[n:]


@torch.no_grad()
def loglikelihood_tokens(lm: LanguageModel, pairs: list[tuple[list[int], list[int]]],
                         truncate: bool = False) -> list[tuple[float, bool]]:
    """(sum of log p(continuation token), is every continuation token the argmax?) for (context, continuation)
    id lists. Rows of a batch are padded on the right: a causal model's earlier positions never see the padding."""
    out = [None] * len(pairs)
    rows = []
    for i, (ctx, cont) in enumerate(pairs):
        ids = ctx + cont
        if len(ids) - 1 > lm.max_length:
            if not truncate or len(cont) > lm.max_length:
                raise ValueError(f"context + continuation is {len(ids)} tokens, more than the model's "
                                 f"{lm.max_length} + 1: shorten the context (fewer few-shot examples), or pass "
                                 f"truncate=True to cut its start as lm-evaluation-harness does")
            ids = ids[-(lm.max_length + 1):]
        rows.append((i, ids[:-1], cont))
    rows.sort(key=lambda r: -len(r[1]))   # similar lengths together: less padding
    was_training = lm.model.training
    lm.model.eval()
    for k in range(0, len(rows), lm.batch_size):
        chunk = rows[k:k + lm.batch_size]
        T = len(chunk[0][1])
        x = torch.tensor([inp + [0] * (T - len(inp)) for _, inp, _ in chunk], device=lm.device)   # (B, T)
        logp = lm.model(x)[0].float().log_softmax(-1)                                        # (B, T, vocab)
        for b, (i, inp, cont) in enumerate(chunk):
            n = len(inp)
            scored = logp[b, n - len(cont):n]                                                # (len(cont), vocab)
            target = torch.tensor(cont, device=lm.device)
            out[i] = (scored.gather(-1, target[:, None]).sum().item(), bool((scored.argmax(-1) == target).all()))
    lm.model.train(was_training)
    return out


def loglikelihood(lm: LanguageModel, requests: list[tuple[str, str]], truncate: bool = False):
    """The harness's loglikelihood request for (context, continuation) strings: [(log-prob, is_greedy)]."""
    return loglikelihood_tokens(lm, [encode_pair(lm, c, x) for c, x in requests], truncate)


def rolling_windows(tokens: list[int], prefix_token: int, max_length: int):
    """Windows that score every token of a long text once, each with as much context as fits: [(input, targets)],
    the targets being the last len(targets) tokens predicted from input. The first window starts from the prefix
    token; each later one predicts the next max_length tokens (fewer at the end), with the tokens before them as its
    context, so its input is context + targets minus the last (at most max_length tokens)."""
    windows, done = [], 0
    while done < len(tokens):
        end = min(done + max_length, len(tokens))
        context = [prefix_token] + tokens[:done] if done == 0 else tokens[:done]
        window = (context + tokens[done:end])[-(max_length + 1):]                  # its last token is a target
        windows.append((window[:-1], tokens[done:end]))
        done = end
    return windows


def loglikelihood_rolling(lm: LanguageModel, texts: list[str]) -> list[float]:
    """log p(text) of whole documents, however long: the sum over rolling_windows."""
    pairs, owner = [], []
    for d, text in enumerate(texts):
        for inp, targets in rolling_windows(lm.encode(text), lm.prefix_token_id, lm.max_length):
            pairs.append((inp[:len(inp) - len(targets) + 1], targets))   # context, targets: input = their join minus 1
            owner.append(d)
    totals = [0.0] * len(texts)
    for d, (lp, _) in zip(owner, loglikelihood_tokens(lm, pairs)):
        totals[d] += lp
    return totals


def count_words(text: str) -> int:
    return len(re.split(r"\s+", text))    # the harness's rule: runs of whitespace split words


def perplexities(logprobs: list[float], texts: list[str]) -> dict:
    """Corpus-level scores from documents' log-probs: perplexity per word and per byte, and bits per byte, the one
    that compares models with different tokenizers (a byte is a byte whatever the vocabulary)."""
    total = sum(logprobs)
    words, nbytes = sum(map(count_words, texts)), sum(len(t.encode("utf-8")) for t in texts)
    return {"word_perplexity": math.exp(-total / words), "byte_perplexity": math.exp(-total / nbytes),
            "bits_per_byte": -total / nbytes / math.log(2)}


def multiple_choice(logprobs: list[float], choices: list[str], gold: int, token_counts: list[int] | None = None,
                    unconditional: list[float] | None = None) -> dict:
    """The harness's multiple-choice metrics for one item, from the log-probs of its choices as continuations:
    acc (the likeliest choice), acc_norm (per character of the choice: long choices are not penalised for their
    length), acc_bytes (per UTF-8 byte), and with token_counts acc_per_token (per token, as nanochat's CORE does),
    with the log-probs of the choices after an empty context acc_mutual_info (log p(choice | question) - log p(choice):
    a choice that is likely anyway gets no credit for it)."""
    if not 0 <= gold < len(choices) or len(logprobs) != len(choices):
        raise ValueError(f"gold must index one of the {len(choices)} choices, with one log-prob each; got gold {gold} "
                         f"and {len(logprobs)} log-probs")
    lp = torch.tensor(logprobs, dtype=torch.float64)

    def hit(scores):   # torch.argmax: the first of tied maxima, as numpy's argmax in the harness
        return float(int(torch.argmax(scores)) == gold)

    out = {"acc": hit(lp), "acc_norm": hit(lp / torch.tensor([float(len(c)) for c in choices])),
           "acc_bytes": hit(lp / torch.tensor([float(len(c.encode("utf-8"))) for c in choices]))}
    if token_counts is not None:
        out["acc_per_token"] = hit(lp / torch.tensor(token_counts, dtype=torch.float64))
    if unconditional is not None:
        out["acc_mutual_info"] = hit(lp - torch.tensor(unconditional, dtype=torch.float64))
    return out
