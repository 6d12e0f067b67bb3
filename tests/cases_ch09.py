"""Chapter 09 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import re

import torch
import torch.nn as nn

from llmscratch import check
from llmscratch.lora import LoRALinear as LibraryLoRA
from llmscratch.sft import collate

IGNORE_INDEX = -100


# ---- correct answers (the notebook's solutions) -----------------------------------------------------
def assistant_labels(ids, header, end_id):
    labels = [IGNORE_INDEX] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i:i + len(header)] == header:
            j = i + len(header)
            while j < len(ids) and ids[j] != end_id:
                labels[j] = ids[j]
                j += 1
            if j < len(ids):
                labels[j] = ids[j]
            i = j + 1
        else:
            i += 1
    return labels


def assistant_labels_by_role(ids, header, end_id):
    """Another correct way: track the role of the current turn token by token."""
    labels, in_reply, i = [], False, 0
    while i < len(ids):
        if not in_reply and ids[i:i + len(header)] == header:
            labels += [IGNORE_INDEX] * len(header)
            in_reply, i = True, i + len(header)
            continue
        labels.append(ids[i] if in_reply else IGNORE_INDEX)
        in_reply = in_reply and ids[i] != end_id
        i += 1
    return labels


class LoRALinear(nn.Module):
    def __init__(self, base_layer, r=8, alpha=16.0):
        super().__init__()
        self.base_layer = base_layer.requires_grad_(False)
        self.scaling = alpha / r
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, x):
        return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x))


def merged_weight(layer):
    return layer.base_layer.weight + layer.scaling * layer.lora_B.weight @ layer.lora_A.weight


def make_optimizer(model, lr):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)


def _pad(examples, pad_id):
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), T), pad_id)
    labels = torch.full((len(examples), T), IGNORE_INDEX)
    for b, e in enumerate(examples):
        ids[b, :len(e["input_ids"])] = torch.tensor(e["input_ids"])
        labels[b, :len(e["labels"])] = torch.tensor(e["labels"])
    return ids, labels


def sft_step(model, optimizer, examples, pad_id):
    ids, labels = _pad(examples, pad_id)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(ids[:, :-1], labels[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return loss.item()


def _words(text):
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def rouge_l(candidate, reference, words=_words):
    c, r = words(candidate), words(reference)
    table = [[0] * (len(r) + 1) for _ in range(len(c) + 1)]
    for i, x in enumerate(c, 1):
        for j, y in enumerate(r, 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x == y else max(table[i - 1][j], table[i][j - 1])
    lcs = table[-1][-1]
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, rec = lcs / len(c), lcs / len(r)
    return {"precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec)}


# ---- typical mistakes -----------------------------------------------------------------------------------
def labels_everything(ids, header, end_id):
    return list(ids)


def labels_without_end(ids, header, end_id):
    return [t if t != end_id else IGNORE_INDEX for t in assistant_labels(ids, header, end_id)]


def labels_with_header(ids, header, end_id):
    labels = assistant_labels(ids, header, end_id)
    for i in range(len(ids)):
        if ids[i:i + len(header)] == header:
            labels[i:i + len(header)] = header
    return labels


def labels_zero_ignore(ids, header, end_id):
    return [0 if t == IGNORE_INDEX else t for t in assistant_labels(ids, header, end_id)]


def labels_first_reply_only(ids, header, end_id):
    labels = assistant_labels(ids, header, end_id)
    end = labels.index(end_id) if end_id in labels else len(labels)
    return labels[:end + 1] + [IGNORE_INDEX] * (len(labels) - end - 1)


def lora_factory(b_random=False, scale="alpha/r", frozen=True, a_zero=False):
    class Wrong(LoRALinear):
        def __init__(self, base_layer, r=8, alpha=16.0):
            super().__init__(base_layer, r, alpha)
            self.scaling = {"alpha/r": alpha / r, "r/alpha": r / alpha, "none": 1.0}[scale]
            if b_random:
                nn.init.normal_(self.lora_B.weight, std=0.1)
            if a_zero:
                nn.init.zeros_(self.lora_A.weight)
            if not frozen:
                base_layer.requires_grad_(True)
    return Wrong


class LoRASubclass(LibraryLoRA):
    pass


def merged_without_scale(layer):
    return layer.base_layer.weight + layer.lora_B.weight @ layer.lora_A.weight


def merged_in_place(layer):
    with torch.no_grad():
        layer.base_layer.weight += layer.scaling * layer.lora_B.weight @ layer.lora_A.weight
    return layer.base_layer.weight


def merged_wrong_order(layer):
    return layer.base_layer.weight + layer.scaling * layer.lora_A.weight @ layer.lora_B.weight


def optimizer_with_everything(model, lr):
    return torch.optim.AdamW(model.parameters(), lr=lr)


def optimizer_without_lora(model, lr):
    return torch.optim.AdamW([p for n, p in model.named_parameters() if "lora_" not in n], lr=lr)


def _update(model, optimizer, x, y, zero_grad=True, clip=True):
    """The rest of a step, with the mistakes below switching one part off."""
    if zero_grad:
        optimizer.zero_grad()
    _, loss = model(x, y)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    optimizer.step()
    return loss.item()


def step_pad_by_value(model, optimizer, examples, pad_id):
    ids, labels = _pad(examples, pad_id)
    labels = labels.masked_fill(ids == pad_id, IGNORE_INDEX)   # also hides every real <|im_end|>
    return _update(model, optimizer, ids[:, :-1], labels[:, 1:])


def step_unshifted(model, optimizer, examples, pad_id):
    ids, labels = _pad(examples, pad_id)
    return _update(model, optimizer, ids, labels)


def step_on_prompts(model, optimizer, examples, pad_id):
    ids, _ = _pad(examples, pad_id)
    lengths = torch.tensor([len(e["input_ids"]) for e in examples])
    targets = ids.masked_fill(torch.arange(ids.shape[1]) >= lengths[:, None], IGNORE_INDEX)   # every real token
    return _update(model, optimizer, ids[:, :-1], targets[:, 1:])


def step_without_zero_grad(model, optimizer, examples, pad_id):
    ids, labels = _pad(examples, pad_id)
    return _update(model, optimizer, ids[:, :-1], labels[:, 1:], zero_grad=False)


def step_without_clipping(model, optimizer, examples, pad_id):
    ids, labels = _pad(examples, pad_id)
    return _update(model, optimizer, ids[:, :-1], labels[:, 1:], clip=False)


def step_loss_from_tuple(model, optimizer, examples, pad_id):
    ids, labels = _pad(examples, pad_id)
    optimizer.zero_grad()
    loss = model(ids[:, :-1], labels[:, 1:])   # (logits, loss): .backward() fails
    loss.backward()
    return loss.item()


def optimizer_adam(model, lr):
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


def optimizer_default_lr(model, lr):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])


def step_with_library(model, optimizer, examples, pad_id):
    from llmscratch.sft import shifted
    from llmscratch.train import train_step
    return train_step(model, optimizer, [shifted(collate(examples, pad_id))])["loss"]


def rouge_1(candidate, reference):
    c, r = _words(candidate), _words(reference)
    match = sum(min(c.count(w), r.count(w)) for w in set(c))
    if not match:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, rec = match / len(c), match / len(r)
    return {"precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec)}


def rouge_swapped(candidate, reference):
    out = rouge_l(candidate, reference)
    return {"precision": out["recall"], "recall": out["precision"], "f1": out["f1"]}


def rouge_raw_words(candidate, reference):
    return rouge_l(candidate, reference, words=str.split)


def rouge_without_zero_guard(candidate, reference):
    c, r = _words(candidate), _words(reference)
    lcs = rouge_l(candidate, reference)["precision"] * len(c) if c else 0
    p, rec = lcs / len(c), lcs / len(r)
    return {"precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec)}


def rouge_word_regex(candidate, reference):
    return rouge_l(candidate, reference, words=lambda text: re.findall(r"\w+", text.lower()))


def rouge_from_library(candidate, reference):
    from llmscratch.metrics import rouge_l as library
    return library(candidate, reference)


CORRECT = [
    (check.ch09.assistant_labels, assistant_labels),
    (check.ch09.assistant_labels, assistant_labels_by_role),
    (check.ch09.lora_linear, LoRALinear),
    (check.ch09.merged_weight, merged_weight),
    (check.ch09.make_optimizer, make_optimizer),
    (check.ch09.sft_step, sft_step),
    (check.ch09.rouge_l, rouge_l),
]

MISTAKES = [
    (check.ch09.assistant_labels, labels_everything, "every token is a target"),
    (check.ch09.assistant_labels, labels_without_end, "never learns to stop"),
    (check.ch09.assistant_labels, labels_with_header, "header"),
    (check.ch09.assistant_labels, labels_zero_ignore, "IGNORE_INDEX = -100"),
    (check.ch09.assistant_labels, labels_first_reply_only, "only the first reply"),
    (check.ch09.lora_linear, lora_factory(b_random=True), "B must start at zero"),
    (check.ch09.lora_linear, lora_factory(scale="r/alpha"), "r / alpha"),
    (check.ch09.lora_linear, lora_factory(scale="none"), "not scaled"),
    (check.ch09.lora_linear, lora_factory(frozen=False), "still trainable"),
    (check.ch09.lora_linear, lora_factory(a_zero=True), "A is all zeros"),
    (check.ch09.lora_linear, LoRASubclass, "library's LoRALinear"),
    (check.ch09.merged_weight, merged_without_scale, "forgot the scale"),
    (check.ch09.merged_weight, merged_in_place, "changed the layer's weight"),
    (check.ch09.merged_weight, merged_wrong_order, "B @ A"),
    (check.ch09.make_optimizer, optimizer_with_everything, "frozen weights too"),
    (check.ch09.make_optimizer, optimizer_without_lora, "missing LoRA"),
    (check.ch09.sft_step, step_pad_by_value, "masked by value"),
    (check.ch09.sft_step, step_unshifted, "not shifted"),
    (check.ch09.sft_step, step_on_prompts, "prompts included"),
    (check.ch09.sft_step, step_without_zero_grad, "zero_grad"),
    (check.ch09.sft_step, step_with_library, "library's collate"),
    (check.ch09.sft_step, step_without_clipping, "not clipped"),
    (check.ch09.sft_step, step_loss_from_tuple, "returns \\(logits, loss\\)"),
    (check.ch09.make_optimizer, optimizer_adam, "expected AdamW"),
    (check.ch09.make_optimizer, optimizer_default_lr, "learning rate"),
    (check.ch09.rouge_l, rouge_without_zero_guard, "divided by zero"),
    (check.ch09.rouge_l, rouge_word_regex, "not normalised"),
    (check.ch09.rouge_l, rouge_1, "ROUGE-1"),
    (check.ch09.rouge_l, rouge_swapped, "swapped"),
    (check.ch09.rouge_l, rouge_raw_words, "not normalised"),
    (check.ch09.rouge_l, rouge_from_library, "library's rouge_l"),
]
