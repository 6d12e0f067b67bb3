"""Checks for chapter 07, classification fine-tuning. Oracles: the library's metrics (proven equal to
scikit-learn's), its BertForSequenceClassification and predict (proven equal to Hugging Face's), mean
pooling and F.cross_entropy, and a reference optimizer step computed beside the student's."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bert import BertConfig, mean_pool
from ..classify import BertForSequenceClassification, pad_batch, predict, predict_proba
from ..metrics import classification_scores, precision_recall_f1 as reference_prf
from .core import CheckFailed, exercise, expect, expect_tensor, explain_runtime_error, randomise, seeded

TINY = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=24, dropout=0.0)


def _cases(seed=7, n=60):
    rng = np.random.default_rng(seed)
    for i in range(n):
        size = int(rng.integers(4, 40))
        y_true, y_pred = rng.integers(0, 2, size), rng.integers(0, 2, size)
        if i % 4 == 0:
            y_pred[:] = 0                               # a model that never predicts the positive class
        if i % 4 == 1:
            y_true[:] = 1                               # a class that only the predictions contain
        if i % 3 == 0:
            y_true, y_pred = y_true.tolist(), y_pred.tolist()   # plain lists, as anyone may pass
        yield y_true, y_pred
    yield np.zeros(5, dtype=int), np.zeros(5, dtype=int)   # one class only: macro averages over the classes present


def _triple(got, what):
    expect(isinstance(got, (tuple, list)) and len(got) == 3,
           f"{what}: return three numbers (precision, recall, f1), got {type(got).__name__} {got!r}"[:300])
    values = [float(v) for v in got]
    expect(all(np.isfinite(values)), f"{what}: got {values}, which is not finite: where a denominator is 0 "
                                     "(a class never predicted), the score is 0.0, not nan")
    return values


# ---- precision_recall_f1 --------------------------------------------------------------------------
@exercise("precision_recall_f1", answers=(reference_prf, classification_scores))
def precision_recall_f1(fn):
    n = 0
    for y_true, y_pred in _cases():
        for average, pos_label in (("binary", 1), ("binary", 0), ("macro", 1)):
            what = (f"precision_recall_f1(y_true={np.asarray(y_true).tolist()}, y_pred={np.asarray(y_pred).tolist()}, "
                    f"average={average!r}, pos_label={pos_label})")
            try:
                got = _triple(fn(y_true, y_pred, average=average, pos_label=pos_label), what)
            except ZeroDivisionError:
                raise CheckFailed(f"{what} divided by zero: a class that is never predicted has TP + FP = 0, and "
                                  "its precision is defined as 0.0 here (scikit-learn's zero_division=0)") from None
            expected = reference_prf(y_true, y_pred, average, pos_label)
            if np.allclose(got, expected, atol=1e-9):
                n += 1
                continue
            if isinstance(y_true, list):   # right on arrays, wrong on lists: `y_pred == c` compared a list once
                as_arrays = _triple(fn(np.asarray(y_true), np.asarray(y_pred), average=average, pos_label=pos_label),
                                    what)
                expect(not np.allclose(as_arrays, expected, atol=1e-9),
                       f"{what}: got {got}, expected {list(expected)}: right for numpy arrays, wrong for plain lists "
                       "(with a list, y_pred == c is one False, not an array): start with y_true, y_pred = "
                       "np.asarray(y_true), np.asarray(y_pred)")
            hints = {
                "scores of the other class: with average='binary', count pos_label as the positive class":
                    reference_prf(y_true, y_pred, "binary", 1 - pos_label) if average == "binary" else None,
                "micro averaging (pooled counts, which equal the accuracy): macro is the mean of the per-class "
                "scores": reference_prf(y_true, y_pred, "micro"),
            }
            if average == "macro":
                classes = np.unique(np.concatenate([np.asarray(y_true), np.asarray(y_pred)]))
                if len(classes) == 1:
                    hints["macro averaged over both classes 0 and 1, though only one occurs in y_true and y_pred: "
                          "average over the classes present, np.unique(np.concatenate([y_true, y_pred])), as "
                          "scikit-learn does"] = tuple(np.mean([reference_prf(y_true, y_pred, "binary", c)
                                                                for c in (0, 1)], axis=0))
                p, r, _ = expected
                only_true = np.unique(np.asarray(y_true))
                hints["macro averaged over the classes of y_true only: a class that only the predictions contain "
                      "counts too, average over np.unique(np.concatenate([y_true, y_pred]))"] = \
                    tuple(np.mean([reference_prf(y_true, y_pred, "binary", c) for c in only_true.tolist()], axis=0))
                hints["macro F1 computed as the F1 of the mean precision and recall: average the per-class F1s "
                      "instead"] = (p, r, 2 * p * r / (p + r) if p + r else 0.0)
                hints["the scores of class 1 alone: with average='macro', compute each class's precision, recall "
                      "and F1 and average them over the classes"] = reference_prf(y_true, y_pred, "binary", 1)
            hints["precision and recall swapped: precision divides by what was predicted (TP + FP), recall "
                  "by what is true (TP + FN)"] = (expected[1], expected[0], expected[2])
            for hint, wrong in hints.items():
                if wrong is not None and np.allclose(got, wrong, atol=1e-9):
                    raise CheckFailed(f"{what}: got {got}, expected {list(expected)}: {hint}")
            raise CheckFailed(f"{what}: got {got}, expected {list(expected)}")
    return f"{n} cases, both classes as positive, binary and macro, a class never predicted, one class only"


# ---- classification_head ----------------------------------------------------------------------------
class _RecordingDropout(nn.Dropout):
    def __init__(self):
        super().__init__(0.0)
        self.inputs = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return super().forward(x)


@exercise("classification_head")
def classification_head(fn):
    g = torch.Generator().manual_seed(3)
    for B, T, C, K in [(4, 7, 8, 2), (3, 10, 6, 3)]:
        hidden = torch.randn(B, T, C, generator=g)
        lengths = [T] + torch.randint(1, T, (B - 1,), generator=g).tolist()
        mask = torch.tensor([[1] * n + [0] * (T - n) for n in lengths])
        hidden = hidden.masked_fill(~mask.bool()[..., None], 50.0)   # padding states: far off, as garbage would be
        labels = torch.randint(K, (B,), generator=g)
        with seeded(0):
            classifier = nn.Linear(C, K)
        dropout = _RecordingDropout()
        what = f"classification_head on a ({B}, {T}, {C}) batch with padding, {K} classes"
        with explain_runtime_error("must match the size", lambda err: (
                f"{what}: shapes did not fit ({err}): the count of real tokens must be (B, 1) to divide the (B, C) "
                "sum (keepdim=True, or unsqueeze(-1)), and the dropout goes on the pooled (B, C) vector, before "
                "classifier")):
            got = fn(hidden, mask, classifier, dropout, labels)
        expect(isinstance(got, tuple) and len(got) == 2, f"{what}: return (logits, loss)")
        logits, loss = got
        pooled = mean_pool(hidden, mask)
        expected_logits = classifier(pooled)
        with torch.no_grad():
            if torch.is_tensor(logits) and logits.shape == expected_logits.shape:
                if torch.allclose(logits, classifier(hidden.mean(1)), atol=1e-4):
                    raise CheckFailed(f"{what}: the padding was averaged in: sum the states of the real tokens "
                                      "(attention_mask 1) and divide by their count")
                m = mask[..., None].float()
                if torch.allclose(logits, classifier((hidden * m).sum(1) / T), atol=1e-4):
                    raise CheckFailed(f"{what}: the masked sum was divided by T, the padded length: divide by the "
                                      "number of real tokens of each row, m.sum(dim=1) (shape (B, 1))")
                if torch.allclose(logits, classifier((hidden * m).sum(1)), atol=1e-4):
                    raise CheckFailed(f"{what}: these are logits of the sum of the real tokens' states: divide it by "
                                      "their number, m.sum(dim=1), to get the mean")
                if torch.allclose(logits, classifier(hidden[:, 0]), atol=1e-4):
                    raise CheckFailed(f"{what}: these are the logits of the first ([CLS]) state; this head "
                                      "mean-pools the real tokens' states")
                if torch.allclose(logits, classifier(pooled).softmax(-1), atol=1e-4):
                    raise CheckFailed(f"{what}: the head returned probabilities; return the logits (the raw "
                                      "scores): F.cross_entropy applies the softmax itself")
        expect_tensor(logits, expected_logits, f"{what}: logits", atol=1e-4)
        expect(len(dropout.inputs) == 1 and dropout.inputs[0].shape == pooled.shape
               and torch.allclose(dropout.inputs[0], pooled, atol=1e-4),
               f"{what}: apply the dropout once, to the pooled vector, before the classifier")
        expect(torch.is_tensor(loss) and loss.dim() == 0, f"{what}: with labels, the loss must be a scalar tensor")
        double_softmax = F.cross_entropy(expected_logits.softmax(-1), labels)
        if torch.allclose(loss, double_softmax, atol=1e-5):
            raise CheckFailed(f"{what}: the loss is cross-entropy of probabilities (a softmax was applied before "
                              "F.cross_entropy, which takes logits): the loss barely moves and training crawls")
        expect(not torch.allclose(loss, F.cross_entropy(expected_logits, labels, reduction="sum"), atol=1e-5),
               f"{what}: the loss is summed over the batch (reduction='sum'): take the mean, F.cross_entropy's "
               "default, so that the learning rate does not depend on the batch size")
        expect_tensor(loss, F.cross_entropy(expected_logits, labels), f"{what}: loss", atol=1e-5)
        loss.backward()
        expect(classifier.weight.grad is not None, f"{what}: no gradient reached the classifier")
        _, no_loss = fn(hidden, mask, classifier, _RecordingDropout(), None)
        expect(no_loss is None, f"{what}: without labels (labels=None) return (logits, None)")
    # A row of padding only (a batch cut to a length some rows never reach, a blank text): no real token to count.
    hidden, mask = torch.randn(2, 5, 6, generator=g), torch.tensor([[1, 1, 1, 0, 0], [0, 0, 0, 0, 0]])
    with seeded(0):
        classifier = nn.Linear(6, 2)
    logits, _ = fn(hidden, mask, classifier, _RecordingDropout(), None)
    expect(torch.isfinite(logits).all(), "classification_head on a row whose attention_mask is all 0 gave "
           f"{logits[1].tolist()}: 0 real tokens makes 0 / 0 = nan; clamp the count, m.sum(dim=1).clamp(min=1e-9)")
    expect_tensor(logits, classifier(mean_pool(hidden, mask)), "classification_head with a row of padding only: "
                  "logits (that row's pooled vector is all 0, its logits the classifier's bias)", atol=1e-4)
    return "mean pooling over real tokens, dropout, linear, cross-entropy on logits, a row of padding only"


# ---- fine_tune_step ---------------------------------------------------------------------------------
def _step(model, optimizer, batch, labels, lr, grad_clip, mistake=None):
    """The reference fine-tuning step, or the same step with one typical mistake."""
    for group in optimizer.param_groups[:1] if mistake == "first group" else optimizer.param_groups:
        group["lr"] = lr
    model.train()
    if mistake != "no zero_grad":
        optimizer.zero_grad()
    _, loss = model(**batch, labels=labels)
    loss.backward()
    if mistake == "clip by value":
        torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
    elif mistake != "no clipping":
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


STEP_MISTAKES = {
    "no zero_grad": "the gradients were not zeroed: they add up across steps, call optimizer.zero_grad() first",
    "no clipping": "the gradient was not clipped before optimizer.step() (clipping after it changes nothing: the "
                   "update is done): torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) between "
                   "backward() and step()",
    "clip by value": "each gradient entry was clipped (clip_grad_value_); the recipe clips the norm of all of them "
                     "together, clip_grad_norm_, which keeps the gradient's direction",
    "first group": "only the first parameter group got the new lr: set it in every group, for group in "
                   "optimizer.param_groups (configure_optimizer makes two: with and without weight decay)",
}


def _two_groups(model):
    """Decay and no-decay groups, as configure_optimizer makes, and an lr the step must replace. SGD, not AdamW:
    Adam divides each gradient by its own running size, so that scaling (clipping) the first gradient would not
    show in the weights; SGD's update is the gradient itself."""
    params = list(model.parameters())
    return torch.optim.SGD([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=123.0)


def _model(seed, dropout=0.0):
    config = BertConfig(**{**TINY.__dict__, "dropout": dropout})
    with seeded(seed):
        return randomise(BertForSequenceClassification(config, pooling="mean"), seed)


def _batch(g, B=6):
    lengths = torch.randint(3, 12, (B,), generator=g).tolist()
    rows = [[2] + torch.randint(5, 40, (n - 2,), generator=g).tolist() + [3] for n in lengths]
    return pad_batch(rows), torch.randint(2, (B,), generator=g)


@exercise("fine_tune_step")
def fine_tune_step(fn):
    g = torch.Generator().manual_seed(4)
    for seed, (lr, clip) in enumerate([(3e-3, 0.05), (1e-2, 1.0), (5e-2, 10.0)]):
        ours, theirs = _model(seed), _model(seed)
        variants = {name: _model(seed) for name in STEP_MISTAKES}       # each mistake, run beside the student
        optimizers = {name: _two_groups(m) for name, m in variants.items()}
        opt_ours, opt_theirs = _two_groups(ours), _two_groups(theirs)
        theirs.eval()                                                   # as predict() leaves it
        what = f"fine_tune_step(lr={lr}, grad_clip={clip})"
        for step in range(3):                                           # three steps: stale gradients would show
            batch, labels = _batch(g)
            expected = _step(ours, opt_ours, batch, labels, lr, clip)
            for name, m in variants.items():
                _step(m, optimizers[name], batch, labels, lr, clip, mistake=name)
            before = [q.detach().clone() for q in theirs.parameters()]
            got = fn(theirs, opt_theirs, batch, labels, lr, clip)
            expect(isinstance(got, float), f"{what}: return the loss as a Python float (loss.item()), "
                                           f"got {type(got).__name__}")
            expect(abs(got - expected) < 1e-5, f"{what}, step {step + 1}: returned loss {got:.6f}, expected "
                                               f"{expected:.6f}, the loss of this batch before the update: call "
                                               "model(**batch, labels=labels), so that the attention_mask is used")
            expect(theirs.training, f"{what}: the model must be in training mode (model.train()), and left in it "
                                    "(the loop calls this step after step; predict() is what restores modes)")
            diff = max((a - b).abs().max().item() for a, b in zip(ours.parameters(), theirs.parameters()))
            if diff > 1e-5:
                for name, m in variants.items():
                    if max((a - b).abs().max().item() for a, b in zip(m.parameters(), theirs.parameters())) < 1e-6:
                        raise CheckFailed(f"{what}, step {step + 1}: {STEP_MISTAKES[name]}")
                expect(all(group["lr"] == lr for group in opt_theirs.param_groups),
                       f"{what}: set the learning rate of every parameter group to lr")
                expect(any(not torch.equal(a, b) for a, b in zip(before, theirs.parameters())),
                       f"{what}, step {step + 1}: no parameter changed: optimizer.step() is missing, or zero_grad() "
                       "ran between backward() and step() and erased the gradients (zero them before backward)")
                raise CheckFailed(f"{what}, step {step + 1}: parameters differ from the reference by up to {diff:.3g}: "
                                  "one optimizer step on this batch's loss, after zero_grad() and with the gradient "
                                  "norm clipped before optimizer.step(), gives other weights")
            expect(all(group["lr"] == lr for group in opt_theirs.param_groups),
                   f"{what}: set the learning rate of every parameter group to lr")
    return "3 runs of 3 steps: learning rate of every group, train mode, zeroed gradients, clipping, masks"


# ---- predict_batched ---------------------------------------------------------------------------------
@exercise("predict_batched", answers=(predict, predict_proba))
def predict_batched(fn):
    model = _model(11, dropout=0.5)                                     # dropout this strong would show
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (module.training, torch.is_grad_enabled(), kwargs.get("attention_mask") is not None
         or len(args) > 1)), with_kwargs=True)
    g = torch.Generator().manual_seed(5)
    rows = [[2] + torch.randint(5, 40, (int(n),), generator=g).tolist() + [3]
            for n in torch.randint(1, 20, (29,), generator=g)]
    model.train()
    got = fn(model, rows, batch_size=8)
    expect(seen, "predict_batched never called the model")
    expect(all(not training for training, _, _ in seen),
           "the model ran in training mode, so dropout changed the predictions: call model.eval() first")
    expect(all(not grad for _, grad, _ in seen),
           "the model ran with autograd on: wrap prediction in torch.no_grad() (or inference_mode): it stores "
           "every activation for a backward pass that never comes")
    expect(all(masked for _, _, masked in seen), "pass the attention_mask to the model, or padding is attended to")
    expect(len(seen) == 4, f"29 rows in batches of 8 are 4 calls of the model (the last batch may be short: 5 "
                           f"rows), got {len(seen)}")
    expect(model.training, "give the model back in the mode it was in (it was training): model.train(was_training)")
    if torch.is_tensor(got):
        raise CheckFailed(f"got a tensor of shape {tuple(got.shape)}: return a list of Python ints, one per row "
                          "(.tolist() turns the argmax into one)")
    expect(isinstance(got, list), f"return a list of {len(rows)} labels, got {type(got).__name__}")
    expect(len(got) == len(rows), f"got {len(got)} labels for {len(rows)} rows: one per row, every row (the last "
                                  "batch may be short); an argmax over dim=0 gives one per class instead of one per "
                                  "row: take it over the classes, dim=-1")
    expect(all(isinstance(y, int) for y in got), "each label is a Python int (.tolist() gives them)")
    model.eval()
    with torch.no_grad():
        expected = [int(model(**pad_batch([r]))[0].argmax(-1)) for r in rows]
    expect(set(got) <= {0, 1}, f"labels must be classes 0 or 1, got {sorted(set(got))}: argmax over the classes "
                               "(dim=-1), not over the batch")
    wrong = [i for i, (a, b) in enumerate(zip(got, expected)) if a != b]
    expect(not wrong, f"rows {wrong[:5]} got labels {[got[i] for i in wrong[:5]]}, expected "
                      f"{[expected[i] for i in wrong[:5]]}: pad each batch (pad_batch), pass its attention_mask, "
                      "argmax over dim=-1, and keep the rows' order")
    model.eval()
    fn(model, rows[:5], batch_size=8)
    expect(not model.training, "the model was in eval mode and came back training: restore the mode it was in, "
                               "was_training = model.training first, model.train(was_training) at the end")
    return "eval mode, no autograd, masks, order kept, mode restored"


# ---- compute_metrics --------------------------------------------------------------------------------
@exercise("compute_metrics", answers=(reference_prf, classification_scores))
def compute_metrics(fn):
    rng = np.random.default_rng(8)
    for n in (5, 17, 64):
        logits = rng.normal(size=(n, 2)).astype(np.float32)
        labels = rng.integers(0, 2, n)
        try:
            got = fn((logits, labels))
        except (ValueError, IndexError) as err:  # predictions of the wrong shape meet the labels
            raise CheckFailed(f"compute_metrics on {n} examples failed ({type(err).__name__}: {err}): the predictions "
                              "are np.argmax(logits, axis=-1), one class per example, as many as the labels") from err
        expect(isinstance(got, dict), f"return a dict of metric names and values, got {type(got).__name__}")
        expected = classification_scores(labels, logits.argmax(-1))
        missing = sorted(set(expected) - set(got))
        expect(not missing, f"the dict lacks {missing}: return {sorted(expected)}")
        for key, value in expected.items():
            g = float(got[key])
            if abs(g - value) > 1e-6:
                by_axis0 = logits.argmax(0)
                hint = ""
                if key == "accuracy" and len(by_axis0) == 2:
                    hint = ": predictions are np.argmax(logits, axis=-1), one class per example"
                elif key == "f1" and abs(g - expected["macro_f1"]) < 1e-6:
                    hint = ": that is the macro F1; f1 is the binary F1 of class 1, the macro one goes under macro_f1"
                elif key in ("precision", "recall", "f1") and abs(
                        g - classification_scores(labels, logits.argmax(-1), pos_label=0)[key]) < 1e-6:
                    hint = ": that is the score of class 0; the positive class is 1"
                elif key in ("precision", "recall") and abs(
                        g - reference_prf(labels, logits.argmax(-1), "macro")[key == "recall"]) < 1e-6:
                    hint = (f": that is the macro {key} (the mean over both classes); precision, recall and f1 are "
                            "the positive class's (1), average='binary'; only macro_f1 is a mean over the classes")
                elif key == "macro_f1" and abs(g - expected["f1"]) < 1e-6:
                    hint = ": that is the F1 of class 1; macro_f1 is the mean of both classes' F1 (average='macro')"
                raise CheckFailed(f"compute_metrics on {n} examples: {key} = {g:.6f}, expected {value:.6f}{hint}")
    return "accuracy, precision, recall, f1 of class 1, macro_f1"
