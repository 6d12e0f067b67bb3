"""Supervised fine-tuning on conversations (chapter 09): chats to tensors, the loss mask, and the course's SFT run.

A conversation becomes one token sequence through the chat template (chapter 08). The model is trained
to predict the next token everywhere, but the loss counts only the assistant's replies:

    <|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\nhi<|im_end|>\\n<|im_start|>assistant\\nHello!<|im_end|>\\n
    ignored ......................................................................  targets ......... ignored

The system and user turns are given, not to be learned; the template's own tokens up to the reply are
always the same; the reply's <|im_end|> IS a target, because predicting it is how the model learns to stop.
Labels follow Hugging Face's convention: labels[t] is the token at position t, or IGNORE_INDEX; the
loss shifts them by one (the logits at t predict labels[t + 1]).

The run (`python -m llmscratch.sft --preset cpu`): SmolLM2-135M-Instruct tuned on a target task it fails
out of the box, naming the topic of a chatterbot question in one word, mixed with the corpus's
conversations; LoRA (an adapter in peft's format) or full fine-tuning; the success rate on held-out
questions, the validation loss on assistant tokens and the loss on text unrelated to the task (forgetting)
before and after.
"""

import argparse
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .chat import SMOLLM2_SYSTEM, apply_chat_template
from .data import chatterbot_dialogues, python_reference_text

IGNORE_INDEX = -100   # PyTorch's cross_entropy default: these positions contribute nothing

# The target task: which of these topics a chatterbot question comes from (the corpus file it is in).
TOPICS = ("ai", "coding", "emotion", "food", "greetings", "humor", "literature", "money", "movies", "politics",
          "psychology", "science", "sports")
TOPIC_SYSTEM = ("Name the topic of the user's message in one word, one of: " + ", ".join(TOPICS) + ".")
PER_TOPIC = 40   # at most this many questions per topic: "coding" alone has 184


# ---- examples to tensors --------------------------------------------------------------------------
def template_ids(tokenizer) -> tuple[list[int], int]:
    """(the ids of the assistant header "<|im_start|>assistant\\n", the id of <|im_end|>)."""
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if len(header) < 2 or end is None or end == tokenizer.unk_token_id:
        raise ValueError("this tokenizer has no ChatML tokens (<|im_start|>, <|im_end|>): use SmolLM2's tokenizer")
    return header, end


def assistant_labels(ids: list[int], header: list[int], end_id: int, ignore_index: int = IGNORE_INDEX) -> list[int]:
    """labels[t] = ids[t] for the tokens of every assistant reply and the <|im_end|> that closes it,
    ignore_index everywhere else (system and user turns, the headers, the newline after <|im_end|>)."""
    labels = [ignore_index] * len(ids)
    i, n = 0, len(header)
    while i < len(ids):
        if ids[i:i + n] != header:
            i += 1
            continue
        j = i + n
        while j < len(ids) and ids[j] != end_id:   # the reply
            labels[j] = ids[j]
            j += 1
        if j < len(ids):                            # its end: a target, or the model never learns to stop
            labels[j] = ids[j]
        i = j + 1
    return labels


def encode_chat(messages, tokenizer, max_len: int | None = None, default_system: str | None = SMOLLM2_SYSTEM) -> dict:
    """One conversation -> {"input_ids", "labels", "truncated"} (lists). Longer than max_len: cut at the end,
    so a cut reply keeps its first tokens as targets and loses its <|im_end|>, and nothing outside a reply
    ever becomes a target."""
    ids = tokenizer.encode(apply_chat_template(messages, default_system=default_system), add_special_tokens=False)
    labels = assistant_labels(ids, *template_ids(tokenizer))
    truncated = max_len is not None and len(ids) > max_len
    if truncated:
        ids, labels = ids[:max_len], labels[:max_len]
    return {"input_ids": ids, "labels": labels, "truncated": truncated}


def collate(examples, pad_id: int, ignore_index: int = IGNORE_INDEX) -> dict:
    """Dynamic padding: pad a batch to its own longest example (on the right), not to a fixed length.
    Padding is found by position, never by value: SmolLM2's pad token IS <|im_end|>, and masking every
    <|im_end|> would hide each reply's end, the one token that teaches the model to stop."""
    if not examples:
        raise ValueError("no examples to collate")
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), ignore_index, dtype=torch.long)
    attention_mask = torch.zeros(len(examples), T, dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n] = torch.tensor(e["input_ids"])
        labels[b, :n] = torch.tensor(e["labels"])
        attention_mask[b, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention_mask}             # each (B, T)


def pack(examples, block_size: int, pad_id: int, ignore_index: int = IGNORE_INDEX) -> dict:
    """Packing: several examples per row of block_size tokens, in order, so that little compute goes to
    padding. segment_ids say which example each token belongs to (-1: padding) and position_ids restart
    at 0 in each: with both, Llama keeps attention inside each example, as if it were alone."""
    rows, row = [], []
    for e in examples:
        if len(e["input_ids"]) > block_size:
            raise ValueError(f"an example of {len(e['input_ids'])} tokens does not fit a row of {block_size}: "
                             "raise block_size or encode with max_len")
        if sum(len(x["input_ids"]) for x in row) + len(e["input_ids"]) > block_size:
            rows.append(row)
            row = []
        row.append(e)
    rows.append(row)
    out = {"input_ids": torch.full((len(rows), block_size), pad_id, dtype=torch.long),
           "labels": torch.full((len(rows), block_size), ignore_index, dtype=torch.long),
           "segment_ids": torch.full((len(rows), block_size), -1, dtype=torch.long),
           "position_ids": torch.zeros(len(rows), block_size, dtype=torch.long)}
    for b, row in enumerate(rows):
        t = 0
        for s, e in enumerate(row):
            n = len(e["input_ids"])
            out["input_ids"][b, t:t + n] = torch.tensor(e["input_ids"])
            out["labels"][b, t:t + n] = torch.tensor(e["labels"])
            out["labels"][b, t] = ignore_index   # never predicted from the previous example's last token
            out["segment_ids"][b, t:t + n] = s
            out["position_ids"][b, t:t + n] = torch.arange(n)
            t += n
    return out


def shifted(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) for the course models' forward(idx, targets): the logits at t predict the label at t + 1."""
    return batch["input_ids"][:, :-1], batch["labels"][:, 1:]


def assistant_loss(model, batch) -> torch.Tensor:
    """Mean cross-entropy over the target tokens of a collated batch (every target token weighs the same)."""
    x, y = shifted(batch)
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), y.reshape(-1), ignore_index=IGNORE_INDEX)


# ---- data -----------------------------------------------------------------------------------------
@dataclass
class Splits:
    train: list = field(default_factory=list)
    val: list = field(default_factory=list)
    test: list = field(default_factory=list)


def conversation_splits(seed: int = 0, fractions=(0.7, 0.1, 0.2)) -> Splits:
    """Every chatterbot dialogue (English and Chinese) once (the corpus repeats a few), in a fixed random
    split by conversation: no conversation is in two splits. Conversations that open with the same words
    ("Are you glad" opens several) stay together, so the target task's test questions (the first turns of
    test conversations) were never trained on in any form."""
    groups = {}
    for d in chatterbot_dialogues():
        if d.language in ("english", "chinese") and len(d.turns) >= 2:
            group = groups.setdefault((d.language, d.turns[0].lower().strip(" ?!.")), [])
            if d.turns not in {g.turns for g in group}:
                group.append(d)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    n = sum(len(g) for g in order)
    splits, bounds = Splits(), (fractions[0] * n, (fractions[0] + fractions[1]) * n)
    seen = 0
    for group in order:
        part = splits.train if seen < bounds[0] else splits.val if seen < bounds[1] else splits.test
        part.extend(group)
        seen += len(group)
    return splits


def chat_messages(dialogue, max_turns: int | None = None) -> list[dict]:
    """Turns alternate user, assistant, user, ...; a dialogue ends on an assistant turn (a last user
    turn without a reply teaches nothing)."""
    turns = dialogue.turns[:max_turns] if max_turns else dialogue.turns
    turns = turns[:len(turns) // 2 * 2]
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def topic_messages(question: str, topic: str | None = None) -> list[dict]:
    messages = [{"role": "system", "content": TOPIC_SYSTEM}, {"role": "user", "content": question}]
    return messages + ([{"role": "assistant", "content": topic}] if topic is not None else [])


def topic_questions(dialogues, per_topic: int = PER_TOPIC) -> list[tuple[str, str]]:
    """(question, topic) pairs from the English dialogues of one split, at most per_topic per topic."""
    counts, out = {}, []
    for d in dialogues:
        if d.language == "english" and d.topic in TOPICS and counts.get(d.topic, 0) < per_topic:
            counts[d.topic] = counts.get(d.topic, 0) + 1
            out.append((d.turns[0], d.topic))
    return out


# ---- evaluation -----------------------------------------------------------------------------------
@torch.no_grad()
def greedy_exact_match(model, tokenizer, prompts: list[list[dict]], answers: list[str], batch_size: int = 32) -> list[bool]:
    """Would greedy decoding reply exactly `answer` and then stop? True iff, with the prompt and the answer
    fed in, the argmax at every answer position and at its <|im_end|> is that token: each greedy step
    conditions on the previous greedy tokens, which are the answer's as long as all match. One batched
    forward pass instead of a generation loop (the tests compare both)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    examples = [encode_chat(p + [{"role": "assistant", "content": a}], tokenizer) for p, a in zip(prompts, answers)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    for i in range(0, len(examples), batch_size):
        batch = collate(examples[i:i + batch_size], pad)
        x, y = shifted(batch)
        pred = model(x.to(device))[0].argmax(-1).cpu()
        targets = y != IGNORE_INDEX
        out += ((pred == y) | ~targets).all(dim=1).tolist()
    model.train(was_training)
    return out


def prompt_ids(tokenizer, messages) -> list[int]:
    """The conversation's token ids in the chat template, ending where the assistant's reply begins."""
    text = apply_chat_template(messages, add_generation_prompt=True, default_system=SMOLLM2_SYSTEM)
    return tokenizer.encode(text, add_special_tokens=False)


@torch.no_grad()
def reply(model, tokenizer, messages, max_new_tokens: int = 32, temperature: float = 0.0, generator=None) -> str:
    """The model's next assistant turn (greedy by default), without the special tokens."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids(tokenizer, messages)], device=device)
    _, end = template_ids(tokenizer)
    out = model.generate(ids, max_new_tokens, temperature=temperature, eos_token_id=end, generator=generator)
    return tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True).strip()


@torch.no_grad()
def mean_assistant_loss(model, tokenizer, examples: list[dict], batch_size: int = 16) -> float:
    """Validation loss per assistant token, over encoded examples (each target token weighs the same)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total = count = 0.0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i:i + batch_size], tokenizer.pad_token_id).items()}
        n = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().item()
        total += assistant_loss(model, batch).item() * n
        count += n
    model.train(was_training)
    return total / count


@torch.no_grad()
def text_loss(model, tokenizer, text: str, block: int = 128, blocks: int = 8) -> float:
    """Next-token loss on plain text (no template): how much general language modelling a tuning cost."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer.encode(text, add_special_tokens=False)[:blocks * (block + 1)]
    if len(ids) < block + 1:
        raise ValueError(f"the text has {len(ids)} tokens, fewer than one block of {block + 1}")
    rows = torch.tensor([ids[i:i + block + 1] for i in range(0, len(ids) - block, block + 1)], device=device)
    loss = model(rows[:, :-1], rows[:, 1:])[1].item()
    model.train(was_training)
    return loss


def forgetting_text() -> str:
    """Held-out general text for the forgetting check: a slice of Python's language reference."""
    text = python_reference_text()
    return text[len(text) // 2:len(text) // 2 + 40000]


def training_memory(model, optimizer) -> dict:
    """Bytes held by training state after a step, measured from the tensors themselves: weights, gradients
    and optimizer state (AdamW: two numbers per trainable weight). Activations come on top and depend on
    the batch; on a GPU, torch.cuda.max_memory_allocated shows the whole peak."""
    def size(tensors):
        return sum(t.numel() * t.element_size() for t in {id(t): t for t in tensors}.values())

    params = list(model.parameters())
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim() > 0]
    return {"weights": size(params), "gradients": size(p.grad for p in params if p.grad is not None),
            "optimizer": size(state)}


# ---- the run --------------------------------------------------------------------------------------
# quick: CI and autograding. cpu: the notebook on a 2-core laptop (30 s for LoRA, 50 s for full fine-tuning).
# gpu: the full run (every training example for several epochs, all conversation turns).
PRESETS = {
    "quick": dict(steps=2, batch_size=4, accum=1, lr_lora=2e-3, lr_full=5e-5, rank=8, alpha=16, warmup=1,
                  max_len=80, max_turns=2, chat_fraction=0.25, eval_questions=8, eval_chats=2, forget_blocks=2,
                  shown=2),
    "cpu": dict(steps=12, batch_size=8, accum=1, lr_lora=3e-3, lr_full=1e-4, rank=8, alpha=16, warmup=2,
                max_len=80, max_turns=2, chat_fraction=0.25, eval_questions=64, eval_chats=24, forget_blocks=8,
                shown=4),
    "gpu": dict(steps=300, batch_size=16, accum=2, lr_lora=1e-3, lr_full=2e-5, rank=16, alpha=32, warmup=20,
                max_len=256, max_turns=None, chat_fraction=0.5, eval_questions=None, eval_chats=None,
                forget_blocks=32, shown=8),
}
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def training_examples(tokenizer, splits: Splits, p: dict, seed: int = 0) -> list[dict]:
    """The training mix: every target-task question of the train split, and chat conversations making up
    chat_fraction of the whole. Examples cut by max_len are kept (their targets stay inside the reply)."""
    topic = [encode_chat(topic_messages(q, t), tokenizer, p["max_len"]) for q, t in topic_questions(splits.train)]
    n_chat = round(len(topic) * p["chat_fraction"] / (1 - p["chat_fraction"]))
    chats = [encode_chat(chat_messages(d, p["max_turns"]), tokenizer, p["max_len"]) for d in splits.train[:n_chat]]
    examples = [e for e in topic + chats if any(l != IGNORE_INDEX for l in e["labels"])]
    random.Random(seed).shuffle(examples)
    return examples


def evaluation(model, tokenizer, splits: Splits, p: dict) -> dict:
    questions = topic_questions(splits.test)[:p["eval_questions"]]
    hits = greedy_exact_match(model, tokenizer, [topic_messages(q) for q, _ in questions], [t for _, t in questions])
    chats = [encode_chat(chat_messages(d, p["max_turns"]), tokenizer, p["max_len"]) for d in splits.val[:p["eval_chats"]]]
    return {"success": sum(hits) / len(hits), "questions": len(hits),
            "val_loss": mean_assistant_loss(model, tokenizer, chats),
            "forgetting_loss": text_loss(model, tokenizer, forgetting_text(), blocks=p["forget_blocks"])}


def fine_tune(model, tokenizer, examples, p: dict, method: str, on_step=None, seed: int = 0):
    """Train `model` in place (LoRA: only the adapters, which apply_lora made the only trainable tensors)
    with chapter 05's train_step: accumulation, clipping, warmup then cosine decay. Returns (log, optimizer)."""
    from .hardware import autocast_dtype, grad_scaler
    from .train import configure_optimizer, lr_at, train_step

    lr = p["lr_lora"] if method == "lora" else p["lr_full"]
    optimizer = configure_optimizer(model, lr=lr, weight_decay=0.0)
    device = next(model.parameters()).device
    dtype = autocast_dtype(device)         # fp32 on a CPU; bf16 or fp16 (scaled) on a GPU
    scaler = grad_scaler(dtype, device)
    examples = list(examples)   # reshuffled each epoch: the caller's list stays as it was
    order = random.Random(seed)
    log, cursor = [], 0
    for step in range(p["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, lr, p["warmup"], p["steps"], min_lr=lr / 10)
        micro = []
        for _ in range(p["accum"]):
            if cursor + p["batch_size"] > len(examples):
                order.shuffle(examples)
                cursor = 0
            batch = collate(examples[cursor:cursor + p["batch_size"]], tokenizer.pad_token_id)
            cursor += p["batch_size"]
            x, y = shifted(batch)
            micro.append((x.to(device), y.to(device)))
        t0 = time.perf_counter()
        stats = train_step(model, optimizer, micro, grad_clip=1.0, autocast_dtype=dtype, scaler=scaler)
        stats.update(step=step, seconds=time.perf_counter() - t0)
        log.append(stats)
        if on_step:
            on_step(stats)
    return log, optimizer


def peak_memory(device) -> dict:
    """The process's peak memory so far: resident set size on the CPU (weights, gradients, optimizer state and
    activations together), and what PyTorch allocated at most on a GPU."""
    out = {}
    try:
        import resource
        import sys
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["peak_rss_bytes"] = rss if sys.platform == "darwin" else rss * 1024   # Linux counts KiB
    except ImportError:   # Windows has no resource module
        pass
    if torch.device(device).type == "cuda":
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def main(argv=None):
    from .llama import load_smollm2
    from .lora import apply_lora, save_adapter, trainable_parameters
    from .train import save_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu")
    parser.add_argument("--method", choices=["lora", "full"], default="lora")
    parser.add_argument("--out", type=Path, default=Path("out-sft"), help="folder for the adapter (lora) or the "
                        "checkpoint (full), and results.json")
    parser.add_argument("--steps", type=int, help="override the preset's number of steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    p = dict(PRESETS[args.preset])
    if args.steps:
        p["steps"] = args.steps
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    model, tokenizer = load_smollm2(device)
    splits = conversation_splits(args.seed)
    examples = training_examples(tokenizer, splits, p, args.seed)
    before = evaluation(model, tokenizer, splits, p)
    print(f"before: {json.dumps(before)}")
    if args.method == "lora":
        apply_lora(model, LORA_TARGETS, p["rank"], p["alpha"])
    trainable, total = trainable_parameters(model)
    print(f"{args.method}: {trainable:,} trainable parameters of {total:,} ({trainable / total:.2%}); "
          f"{len(examples)} training examples")
    from tqdm.auto import tqdm
    bar = tqdm(total=p["steps"], desc=f"SFT ({args.method}, {args.preset})")

    def on_step(s):
        bar.update(1)
        bar.set_postfix(loss=f"{s['loss']:.3f}")

    log, optimizer = fine_tune(model, tokenizer, examples, p, args.method, on_step, args.seed)
    bar.close()
    after = evaluation(model, tokenizer, splits, p)
    print(f"after:  {json.dumps(after)}")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.method == "lora":
        print(f"adapter (peft format): {save_adapter(model, args.out / 'adapter', 'HuggingFaceTB/SmolLM2-135M-Instruct')}")
    else:
        print(f"checkpoint: {save_checkpoint(args.out / 'ckpt', model, optimizer, p['steps'])}")
    results = {"preset": args.preset, "method": args.method, "trainable": trainable, "total": total,
               "before": before, "after": after, "final_loss": log[-1]["loss"],
               "memory": training_memory(model, optimizer),
               "seconds_per_step": sum(s["seconds"] for s in log) / len(log), **peak_memory(device)}
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    peaks = ", ".join(f"{k[:-6].replace('_', ' ')} {v / 2**30:.2f} GiB" for k, v in results.items() if k.startswith("peak"))
    print(f"{peaks}; results: {args.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
