"""Fine-tuning BERT for text classification (chapter 07): a classification head on the course BERT, padded
batches with attention masks, a fine-tuning loop built on chapter 05's train_step, batched prediction, and
export to Hugging Face's BertForSequenceClassification.

    input_ids, attention_mask (B, T) -> BertModel -> hidden (B, T, C)
        -> pooled (B, C): the [CLS] pooler tanh(W h_[CLS] + b) (BERT's, and Hugging Face's), or the mean
           of the real tokens' states (mean_pool: padding left out)
        -> dropout -> linear -> logits (B, num_labels) -> cross-entropy with the labels

The loop is BERT's recipe: AdamW (no decay on biases and LayerNorms), linear warmup then linear decay,
gradient clipping, an evaluation every `eval_every` steps that keeps the weights of the best validation
macro F1, and early stopping when it has not improved for `patience` evaluations.
"""

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bert import (BertConfig, BertForMaskedLM, BertModel, config_from_hf, copy_into_hf, hf_config, hf_tensor,
                   mean_pool)
from .hardware import autocast_dtype, grad_scaler
from .metrics import classification_scores
from .train import configure_optimizer, lr_at, train_step

POOLINGS = ("cls", "mean")


PRESETS = {
    # Chapter 07's runs, smallest first. train / val / test: how many examples of each split (None: all);
    # steps, batch_size, lr, eval_every: every fine-tuning run; curve: the training sizes of the learning curve
    # (its last point is the full run), curve_steps: the steps of each smaller run; minilm_*: the MiniLM run.
    # lr: on the cpu preset's validation split, both the random init and the chapter-06 BERT did best with the
    # largest rate tried (1e-4 to 2e-3, 150 steps): this model is small and the run short. The gpu one is a guess.
    # cls_lr: the runs that classify from the [CLS] pooler (the course loop and Trainer). Its tanh layer starts
    # untrained (chapter 06 pretrained no pooler); at 2e-3 the cpu run sat at the majority class at step 50 on 2 of
    # 3 seeds at one thread (1 of 3 at two) and its result changed with the thread count; at 5e-4 no seed did, and
    # 1 and 2 threads agree.
    "quick": dict(train=160, val=64, test=128, max_length=64, steps=8, batch_size=16, lr=2e-3, cls_lr=5e-4,
                  eval_every=4, curve=(40, 80), curve_steps=4, minilm_steps=2, minilm_batch_size=8),  # CI
    "cpu": dict(train=2000, val=500, test=1000, max_length=64, steps=150, batch_size=32, lr=2e-3, cls_lr=5e-4,
                eval_every=50, curve=(100, 400), curve_steps=60, minilm_steps=30, minilm_batch_size=16),
    "gpu": dict(train=None, val=None, test=None, max_length=64, steps=3000, batch_size=32, lr=1e-3, cls_lr=5e-4,
                eval_every=250, curve=(100, 400, 2000), curve_steps=600, minilm_steps=1500,
                minilm_batch_size=32),  # all the data
}


class BertForSequenceClassification(nn.Module):
    def __init__(self, config: BertConfig, labels=("negative", "positive"), pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        self.config = BertConfig(**{**asdict(config), "add_pooling_layer": pooling == "cls"})
        self.labels = list(labels)            # class names, in the order of the logits
        self.pooling = pooling
        self.bert = BertModel(self.config)
        self.dropout = nn.Dropout(self.config.dropout)
        self.classifier = nn.Linear(self.config.hidden_size, len(self.labels))
        nn.init.normal_(self.classifier.weight, std=0.02)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None):
        """Logits (B, num_labels), and with labels (B,) the mean cross-entropy: the same (logits, loss) as
        the other course models, so chapter 05's train_step and evaluate train it unchanged."""
        hidden = self.bert(input_ids, attention_mask, token_type_ids)            # (B, T, C)
        if self.pooling == "cls":
            pooled = self.bert.pooler(hidden)                                    # (B, C)
        else:
            mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
            pooled = mean_pool(hidden, mask)                                     # (B, C)
        logits = self.classifier(self.dropout(pooled))                           # (B, num_labels)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits, torch.as_tensor(labels, device=logits.device))  # takes logits, not probs
        return logits, loss

    @classmethod
    def from_encoder(cls, encoder, labels=("negative", "positive"), pooling: str = "cls",
                     dropout: float | None = 0.1) -> "BertForSequenceClassification":
        """A classifier starting from a pretrained encoder (a BertModel, or the .bert of a BertForMaskedLM):
        its weights copied, the head (and a [CLS] pooler the encoder lacks) freshly initialised."""
        if isinstance(encoder, BertForMaskedLM):
            encoder = encoder.bert
        config = encoder.config if dropout is None else BertConfig(**{**asdict(encoder.config), "dropout": dropout})
        model = cls(config, labels, pooling)
        missing = [k for k in model.bert.load_state_dict(encoder.state_dict(), strict=False).missing_keys
                   if not k.startswith("pooler.")]
        if missing:
            raise ValueError(f"the encoder lacks {missing[:3]}: is it a BertModel?")
        return model.to(next(encoder.parameters()).device)

    def freeze_encoder(self, frozen: bool = True) -> "BertForSequenceClassification":
        """A linear probe: only the head (and the [CLS] pooler, which the MLM never trained) learns."""
        for name, p in self.bert.named_parameters():
            p.requires_grad = not frozen or name.startswith("pooler.")
        return self

    # ---- Hugging Face --------------------------------------------------------------------------------
    def to_hf(self):
        """transformers' BertForSequenceClassification with these weights and readable labels (id2label)."""
        from transformers import BertForSequenceClassification as HFClassifier

        if self.pooling != "cls":
            raise ValueError("Hugging Face's BertForSequenceClassification classifies from the [CLS] pooler: "
                             "only a model built with pooling='cls' converts")
        hc = hf_config(self.config)
        hc.num_labels = len(self.labels)
        hc.id2label = dict(enumerate(self.labels))
        hc.label2id = {name: i for i, name in enumerate(self.labels)}
        hf = HFClassifier(hc)
        copy_into_hf({f"bert.{k}": v for k, v in self.bert.state_dict().items()}, hf)
        with torch.no_grad():
            hf.classifier.weight.copy_(self.classifier.weight)
            hf.classifier.bias.copy_(self.classifier.bias)
        return hf.eval()

    @classmethod
    def from_hf(cls, hf) -> "BertForSequenceClassification":
        labels = [hf.config.id2label[i] for i in range(hf.config.num_labels)]
        model = cls(config_from_hf(hf.config), labels, pooling="cls")
        state = hf.state_dict()
        with torch.no_grad():
            for name, p in model.state_dict().items():
                is_head = name.startswith("classifier.")       # the head has Hugging Face's names already
                p.copy_(state[name] if is_head else hf_tensor(state, name[len("bert."):], "bert."))
        return model.eval()


def save_pretrained(model: BertForSequenceClassification, tokenizer, folder) -> Path:
    """The model as Hugging Face's BertForSequenceClassification (safetensors) and the course WordPiece
    vocabulary as a BertTokenizerFast, in one folder: transformers.pipeline("text-classification", folder)
    loads both."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.to_hf().save_pretrained(folder, safe_serialization=True)
    tokenizer.save(folder / "vocab.txt")
    hf_tokenizer = BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=tokenizer.lowercase,
                                     model_max_length=model.config.max_position_embeddings)
    hf_tokenizer.save_pretrained(folder)
    return folder


# ---- data: token ids, padded batches ----------------------------------------------------------------
def encode_texts(tokenizer, texts, max_length: int) -> list[list[int]]:
    """[CLS] text [SEP] ids of each text, cut to max_length tokens (truncation is asked for here, on
    purpose: reviews are longer than a small model's context; count_truncated says how many were cut)."""
    return tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]


def count_truncated(tokenizer, texts, max_length: int) -> int:
    return sum(len(tokenizer.encode(t)) + 2 > max_length for t in texts)


def pad_batch(rows, pad_id: int = 0, device="cpu") -> dict:
    """Token-id lists of different lengths -> input_ids and attention_mask (B, T), T the longest row."""
    if not rows:
        raise ValueError("an empty batch: give at least one example")
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r)
        attention_mask[i, :len(r)] = 1
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}


def shuffled_batches(rows, labels, batch_size: int, generator: torch.Generator, pad_id: int = 0, device="cpu"):
    """Endless (inputs, labels) training batches: each epoch a new random order cut into full batches (the
    few examples left over are in the next epoch's batches, in another order)."""
    if len(rows) != len(labels) or not rows:
        raise ValueError(f"got {len(rows)} examples and {len(labels)} labels: give the same number, at least one")
    batch_size = min(batch_size, len(rows))
    while True:
        order = torch.randperm(len(rows), generator=generator).tolist()
        for b in range(len(order) // batch_size):
            chunk = order[b * batch_size:(b + 1) * batch_size]
            yield (pad_batch([rows[j] for j in chunk], pad_id, device),
                   torch.tensor([labels[j] for j in chunk], device=device))


@torch.no_grad()
def predict_proba(model, rows, batch_size: int = 128, pad_id: int = 0) -> torch.Tensor:
    """Class probabilities (N, num_labels) for token-id rows, in their order: the model in eval mode (no
    dropout) and no autograd; rows batched by length so that little padding is computed."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    probs = torch.empty(len(rows), len(model.labels))
    for i in range(0, len(rows), batch_size):
        chunk = order[i:i + batch_size]
        logits, _ = model(**pad_batch([rows[j] for j in chunk], pad_id, device))
        probs[chunk] = logits.float().softmax(dim=-1).cpu()                     # over the classes, not the batch
    model.train(was_training)
    return probs


def predict(model, rows, batch_size: int = 128, pad_id: int = 0) -> list[int]:
    return predict_proba(model, rows, batch_size, pad_id).argmax(dim=-1).tolist()


# ---- fine-tuning ------------------------------------------------------------------------------------------
@dataclass
class FineTuneConfig:
    steps: int = 300               # optimizer steps at most (early stopping may end sooner)
    batch_size: int = 32
    lr: float = 1e-4               # BERT's paper used 2e-5 to 5e-5 for its large models; small ones take more
    warmup_fraction: float = 0.1   # of the steps, linear from 0; then linear decay to 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_every: int = 50           # steps between validation evaluations
    patience: int | None = 4       # stop after this many evaluations without a better validation macro F1
    seed: int = 0                  # the order of the training batches


@dataclass
class FineTuneResult:
    history: list = field(default_factory=list)   # one dict per step: step, loss, lr, and at evaluations val_*
    best_step: int = 0
    best: dict = field(default_factory=dict)      # validation scores of the kept weights
    stopped_early: bool = False
    seconds: float = 0.0


def fine_tune(model, train_rows, train_labels, val_rows, val_labels, config: FineTuneConfig = FineTuneConfig(),
              pad_id: int = 0, progress=None) -> FineTuneResult:
    """Train `model` (a BertForSequenceClassification, frozen encoder or not) and leave it with the weights
    of its best validation macro F1. `progress`, if given, is called with each step's record."""
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(config.seed)
    batches = shuffled_batches(train_rows, train_labels, config.batch_size, generator, pad_id, device)
    optimizer = configure_optimizer(model, config.lr, config.weight_decay, betas=(0.9, 0.999))
    warmup = math.ceil(config.warmup_fraction * config.steps)
    dtype = autocast_dtype(device)         # fp32 on a CPU; bf16 or fp16 (scaled) on a GPU
    scaler = grad_scaler(dtype, device)
    result, best_state, since_best = FineTuneResult(), None, 0
    start = time.perf_counter()
    for step in range(config.steps):
        lr = lr_at(step, config.lr, warmup, config.steps, decay="linear")
        for group in optimizer.param_groups:
            group["lr"] = lr
        record = {"step": step + 1, "lr": lr,
                  **train_step(model, optimizer, [next(batches)], config.grad_clip, dtype, scaler)}
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            scores = classification_scores(val_labels, predict(model, val_rows, pad_id=pad_id))
            record.update({f"val_{k}": v for k, v in scores.items()})
            if best_state is None or scores["macro_f1"] > result.best["macro_f1"]:
                result.best, result.best_step, since_best = scores, step + 1, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                since_best += 1
        result.history.append(record)
        if progress is not None:
            progress(record)
        if config.patience is not None and since_best >= config.patience:
            result.stopped_early = True
            break
    model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
