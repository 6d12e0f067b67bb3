"""Chapter 07 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import numpy as np
import torch
import torch.nn.functional as F

from llmscratch import check
from llmscratch.classify import pad_batch


# ---- correct answers (the notebook's solutions) -----------------------------------------------------
def precision_recall_f1(y_true, y_pred, average="binary", pos_label=1):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)

    def scores(c):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        return p, r, (2 * p * r / (p + r) if p + r else 0.0)

    if average == "binary":
        return scores(pos_label)
    per_class = [scores(c) for c in np.unique(np.concatenate([y_true, y_pred]))]
    return tuple(float(np.mean([s[i] for s in per_class])) for i in range(3))


def classification_head(hidden, attention_mask, classifier, dropout, labels=None):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)                     # (B, T, 1)
    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)                # (B, C)
    logits = classifier(dropout(pooled))                                   # (B, K)
    loss = F.cross_entropy(logits, labels) if labels is not None else None
    return logits, loss


def fine_tune_step(model, optimizer, batch, labels, lr, grad_clip=1.0):
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    optimizer.zero_grad(set_to_none=True)
    _, loss = model(**batch, labels=labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def predict_batched(model, rows, batch_size=64, pad_id=0):
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            logits, _ = model(**pad_batch(rows[i:i + batch_size], pad_id))
            out += logits.argmax(dim=-1).tolist()
    model.train(was_training)
    return out


def compute_metrics(eval_pred):
    logits, labels = eval_pred
    preds = np.argmax(logits, axis=-1)
    p, r, f1 = precision_recall_f1(labels, preds, "binary", 1)
    return {"accuracy": float(np.mean(preds == labels)), "precision": p, "recall": r, "f1": f1,
            "macro_f1": precision_recall_f1(labels, preds, "macro")[2]}


# ---- typical mistakes -------------------------------------------------------------------------------
def prf_ignores_pos_label(y_true, y_pred, average="binary", pos_label=1):
    return precision_recall_f1(y_true, y_pred, average, 1 - pos_label if average == "binary" else pos_label)


def prf_micro(y_true, y_pred, average="binary", pos_label=1):
    if average == "binary":
        return precision_recall_f1(y_true, y_pred, average, pos_label)
    a = float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
    return a, a, a


def prf_f1_of_means(y_true, y_pred, average="binary", pos_label=1):
    p, r, f1 = precision_recall_f1(y_true, y_pred, average, pos_label)
    return (p, r, 2 * p * r / (p + r) if p + r else 0.0) if average == "macro" else (p, r, f1)


def prf_divides_by_zero(y_true, y_pred, average="binary", pos_label=1):
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = int(np.sum((y_pred == pos_label) & (y_true == pos_label)))
    p = tp / int(np.sum(y_pred == pos_label))
    r = tp / int(np.sum(y_true == pos_label))
    return p, r, 2 * p * r / (p + r)


def prf_nan(y_true, y_pred, average="binary", pos_label=1):
    with np.errstate(all="ignore"):
        y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
        tp = np.sum((y_pred == pos_label) & (y_true == pos_label))
        p = np.float64(tp) / np.sum(y_pred == pos_label)
        r = np.float64(tp) / np.sum(y_true == pos_label)
        return p, r, 2 * p * r / (p + r)


def prf_swapped(y_true, y_pred, average="binary", pos_label=1):
    p, r, f1 = precision_recall_f1(y_true, y_pred, average, pos_label)
    return r, p, f1


def prf_macro_over_true(y_true, y_pred, average="binary", pos_label=1):
    if average == "binary":
        return precision_recall_f1(y_true, y_pred, average, pos_label)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    per_class = [precision_recall_f1(y_true, y_pred, "binary", c) for c in np.unique(y_true)]
    return tuple(float(np.mean([s[i] for s in per_class])) for i in range(3))


def prf_without_asarray(y_true, y_pred, average="binary", pos_label=1):
    if isinstance(y_true, list):  # what the arithmetic on lists amounts to: y_pred == c is one False
        return 0.0, 0.0, 0.0
    return precision_recall_f1(y_true, y_pred, average, pos_label)


def prf_macro_is_class_one(y_true, y_pred, average="binary", pos_label=1):
    return precision_recall_f1(y_true, y_pred, "binary", 1 if average == "macro" else pos_label)


def prf_macro_over_both_classes(y_true, y_pred, average="binary", pos_label=1):
    if average == "binary":
        return precision_recall_f1(y_true, y_pred, average, pos_label)
    per_class = [precision_recall_f1(y_true, y_pred, "binary", c) for c in (0, 1)]
    return tuple(float(np.mean([s[i] for s in per_class])) for i in range(3))


def head_summed_loss(hidden, attention_mask, classifier, dropout, labels=None):
    logits, _ = classification_head(hidden, attention_mask, classifier, dropout)
    return logits, (F.cross_entropy(logits, labels, reduction="sum") if labels is not None else None)


def step_zero_grad_after_backward(model, optimizer, batch, labels, lr, grad_clip=1.0):
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()
    _, loss = model(**batch, labels=labels)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.zero_grad()                                   # "tidy up before the step": erases the gradients
    optimizer.step()
    return loss.item()


def head_divides_by_T(hidden, attention_mask, classifier, dropout, labels=None):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    logits = classifier(dropout((hidden * m).mean(dim=1)))
    return logits, F.cross_entropy(logits, labels) if labels is not None else None


def head_without_keepdim(hidden, attention_mask, classifier, dropout, labels=None):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    logits = classifier(dropout((hidden * m).sum(1) / attention_mask.sum(1)))
    return logits, F.cross_entropy(logits, labels) if labels is not None else None


def head_dropout_after(hidden, attention_mask, classifier, dropout, labels=None):
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    logits = dropout(classifier((hidden * m).sum(1) / m.sum(1)))
    return logits, F.cross_entropy(logits, labels) if labels is not None else None


def head_with_padding(hidden, attention_mask, classifier, dropout, labels=None):
    return classification_head(hidden, torch.ones_like(attention_mask), classifier, dropout, labels)


def head_cls(hidden, attention_mask, classifier, dropout, labels=None):
    logits = classifier(dropout(hidden[:, 0]))
    return logits, F.cross_entropy(logits, labels) if labels is not None else None


def head_softmax_loss(hidden, attention_mask, classifier, dropout, labels=None):
    logits, _ = classification_head(hidden, attention_mask, classifier, dropout, None)
    return logits, F.cross_entropy(logits.softmax(-1), labels) if labels is not None else None


def head_returns_probs(hidden, attention_mask, classifier, dropout, labels=None):
    logits, loss = classification_head(hidden, attention_mask, classifier, dropout, labels)
    return logits.softmax(-1), loss


def head_without_dropout(hidden, attention_mask, classifier, dropout, labels=None):
    return classification_head(hidden, attention_mask, classifier, lambda x: x, labels)


def head_without_clamp(hidden, attention_mask, classifier, dropout, labels=None):   # 0 / 0 on a row of padding only
    m = attention_mask.unsqueeze(-1).to(hidden.dtype)
    logits = classifier(dropout((hidden * m).sum(1) / m.sum(1)))
    return logits, F.cross_entropy(logits, labels) if labels is not None else None


def _step_variant(model, optimizer, batch, labels, lr, grad_clip, groups=None, zero_grad=True,
                  clip=torch.nn.utils.clip_grad_norm_):
    """fine_tune_step with one piece changed (by a mistake): the groups given the lr, zeroing, the clipping."""
    for group in optimizer.param_groups if groups is None else groups(optimizer):
        group["lr"] = lr
    model.train()
    if zero_grad:
        optimizer.zero_grad()
    _, loss = model(**batch, labels=labels)
    loss.backward()
    clip(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def step_without_zero_grad(model, optimizer, batch, labels, lr, grad_clip=1.0):
    return _step_variant(model, optimizer, batch, labels, lr, grad_clip, zero_grad=False)


def step_without_clipping(model, optimizer, batch, labels, lr, grad_clip=1.0):
    return fine_tune_step(model, optimizer, batch, labels, lr, float("inf"))


def step_clips_after(model, optimizer, batch, labels, lr, grad_clip=1.0):
    loss = fine_tune_step(model, optimizer, batch, labels, lr, float("inf"))
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    return loss


def step_clip_value(model, optimizer, batch, labels, lr, grad_clip=1.0):
    return _step_variant(model, optimizer, batch, labels, lr, grad_clip, clip=torch.nn.utils.clip_grad_value_)


def step_first_group_only(model, optimizer, batch, labels, lr, grad_clip=1.0):
    # the no-decay group keeps its old lr
    return _step_variant(model, optimizer, batch, labels, lr, grad_clip, groups=lambda opt: opt.param_groups[:1])


def step_in_eval_mode(model, optimizer, batch, labels, lr, grad_clip=1.0):
    loss = fine_tune_step(model, optimizer, batch, labels, lr, grad_clip)
    model.eval()
    return loss


def step_without_mask(model, optimizer, batch, labels, lr, grad_clip=1.0):
    return fine_tune_step(model, optimizer, {"input_ids": batch["input_ids"]}, labels, lr, grad_clip)


def step_keeps_lr(model, optimizer, batch, labels, lr, grad_clip=1.0):
    return fine_tune_step(model, optimizer, batch, labels, optimizer.param_groups[0]["lr"], grad_clip)


def step_returns_tensor(model, optimizer, batch, labels, lr, grad_clip=1.0):
    return torch.tensor(fine_tune_step(model, optimizer, batch, labels, lr, grad_clip))


def predict_in_train_mode(model, rows, batch_size=64, pad_id=0):
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            out += model(**pad_batch(rows[i:i + batch_size], pad_id))[0].argmax(-1).tolist()
    return out


def predict_with_grad(model, rows, batch_size=64, pad_id=0):
    was_training = model.training
    model.eval()
    out = [int(i) for b in range(0, len(rows), batch_size)
           for i in model(**pad_batch(rows[b:b + batch_size], pad_id))[0].argmax(-1)]
    model.train(was_training)
    return out


def _predict_variant(model, rows, batch_size, pad_id, call, to_labels):
    """predict_batched with the model call or the logits-to-labels step replaced (by a mistake)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            out += to_labels(call(model, pad_batch(rows[i:i + batch_size], pad_id)))
    model.train(was_training)
    return out


def predict_without_mask(model, rows, batch_size=64, pad_id=0):
    return _predict_variant(model, rows, batch_size, pad_id, call=lambda m, batch: m(batch["input_ids"])[0],
                            to_labels=lambda logits: logits.argmax(-1).tolist())


def predict_argmax_wrong_axis(model, rows, batch_size=64, pad_id=0):
    # argmax over the batch: one index per class, repeated to fill the batch
    return _predict_variant(model, rows, batch_size, pad_id, call=lambda m, batch: m(**batch)[0],
                            to_labels=lambda logits: logits.argmax(dim=0).tolist() * (len(logits) // 2)
                            + [0] * (len(logits) % 2))


def predict_leaves_eval(model, rows, batch_size=64, pad_id=0):
    out = predict_batched(model, rows, batch_size, pad_id)
    model.eval()
    return out


def predict_always_trains(model, rows, batch_size=64, pad_id=0):
    out = predict_batched(model, rows, batch_size, pad_id)
    model.train()
    return out


def predict_drops_last_batch(model, rows, batch_size=64, pad_id=0):
    return predict_batched(model, rows[:len(rows) // batch_size * batch_size], batch_size, pad_id)


def metrics_argmax_axis0(eval_pred):
    logits, labels = eval_pred
    preds = np.argmax(logits, axis=0)                    # over the examples: 2 numbers, not one per example
    p, r, f1 = precision_recall_f1(labels, preds, "binary", 1)
    return {"accuracy": float(np.mean(preds == labels)), "precision": p, "recall": r, "f1": f1,
            "macro_f1": precision_recall_f1(labels, preds, "macro")[2]}


def metrics_macro_precision_recall(eval_pred):   # macro where class 1's were meant
    logits, labels = eval_pred
    p, r, _ = precision_recall_f1(labels, np.argmax(logits, -1), "macro")
    return {**compute_metrics(eval_pred), "precision": p, "recall": r}


def metrics_class0(eval_pred):
    logits, labels = eval_pred
    scores = compute_metrics(eval_pred)
    p, r, f1 = precision_recall_f1(labels, np.argmax(logits, -1), "binary", 0)
    return {**scores, "precision": p, "recall": r, "f1": f1}


c = check.ch07
CORRECT = [(c.precision_recall_f1, precision_recall_f1), (c.classification_head, classification_head),
           (c.fine_tune_step, fine_tune_step), (c.predict_batched, predict_batched),
           (c.compute_metrics, compute_metrics)]

MISTAKES = [
    (c.precision_recall_f1, prf_ignores_pos_label, "scores of the other class"),
    (c.precision_recall_f1, prf_micro, "micro averaging"),
    (c.precision_recall_f1, prf_f1_of_means, "F1 of the mean precision and recall"),
    (c.precision_recall_f1, prf_divides_by_zero, "divided by zero"),
    (c.precision_recall_f1, prf_nan, "not finite"),
    (c.precision_recall_f1, prf_swapped, "precision and recall swapped"),
    (c.classification_head, head_with_padding, "padding was averaged in"),
    (c.classification_head, head_cls, "first \\(\\[CLS\\]\\) state"),
    (c.classification_head, head_softmax_loss, "cross-entropy of probabilities"),
    (c.classification_head, head_returns_probs, "returned probabilities"),
    (c.classification_head, head_without_dropout, "apply the dropout once"),
    (c.classification_head, head_without_clamp, "clamp the count"),
    (c.fine_tune_step, step_without_zero_grad, "optimizer.zero_grad\\(\\) first"),
    (c.fine_tune_step, step_without_clipping, "not clipped"),
    (c.fine_tune_step, step_in_eval_mode, "training mode"),
    (c.fine_tune_step, step_without_mask, "attention_mask"),
    (c.fine_tune_step, step_keeps_lr, "learning rate of every parameter group"),
    (c.fine_tune_step, step_returns_tensor, "Python float"),
    (c.predict_batched, predict_in_train_mode, "model.eval\\(\\)"),
    (c.predict_batched, predict_with_grad, "torch.no_grad"),
    (c.predict_batched, predict_without_mask, "attention_mask"),
    (c.predict_batched, predict_argmax_wrong_axis, "rows .* got labels|argmax"),
    (c.predict_batched, predict_drops_last_batch, "the last batch may be short"),
    (c.predict_batched, predict_leaves_eval, "give the model back"),
    (c.predict_batched, predict_always_trains, "came back training"),
    (c.predict_batched, lambda model, rows, batch_size=64, pad_id=0: torch.tensor(
        predict_batched(model, rows, batch_size, pad_id)), "got a tensor"),
    (c.compute_metrics, metrics_argmax_axis0, "axis=-1"),
    (c.compute_metrics, metrics_class0, "score of class 0"),
    (c.compute_metrics, lambda ep: {**compute_metrics(ep), "f1": compute_metrics(ep)["macro_f1"]},
     "that is the macro F1"),
    (c.compute_metrics, metrics_macro_precision_recall, "macro precision"),
    (c.compute_metrics, lambda ep: {**compute_metrics(ep), "macro_f1": compute_metrics(ep)["f1"]},
     "that is the F1 of class 1"),
    (c.precision_recall_f1, prf_macro_over_true, "classes of y_true only"),
    (c.precision_recall_f1, prf_without_asarray, "np.asarray"),
    (c.precision_recall_f1, prf_macro_is_class_one, "scores of class 1 alone"),
    (c.precision_recall_f1, prf_macro_over_both_classes, "only one occurs"),
    (c.classification_head, head_divides_by_T, "divided by T"),
    (c.classification_head, head_summed_loss, "reduction='sum'"),
    (c.fine_tune_step, step_zero_grad_after_backward, "no parameter changed"),
    (c.classification_head, head_without_keepdim, "keepdim=True"),
    (c.classification_head, head_dropout_after, "to the pooled vector, before the classifier"),
    (c.fine_tune_step, step_clips_after, "clipping after it changes nothing"),
    (c.fine_tune_step, step_clip_value, "clip_grad_value_"),
    (c.fine_tune_step, step_first_group_only, "only the first parameter group"),
]
