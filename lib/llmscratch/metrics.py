"""Classification metrics (chapter 07), from the counts of a confusion matrix. Conventions are
scikit-learn's, and the tests hold these functions to its results:

- confusion_matrix[i, j] counts the examples of true class i predicted as class j;
- precision = TP / (TP + FP), recall = TP / (TP + FN), F1 = 2 P R / (P + R), for one class;
- "binary" scores the class `pos_label` only; "macro" averages the per-class scores, every class
  weighing the same however rare; "micro" pools the counts of all classes (for single-label
  classification it equals accuracy);
- a score whose denominator is zero (a class never predicted has no precision; one that never occurs
  has no recall) is 0.0, as scikit-learn's zero_division=0: the model gets no credit for a class it
  never names.
"""

import numpy as np

AVERAGES = ("binary", "macro", "micro")


def _labels(y_true, y_pred):
    y_true = np.asarray(y_true).reshape(-1)
    y_pred = np.asarray(y_pred).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}: one prediction per example")
    if y_true.size == 0:
        raise ValueError("no examples: the metrics of an empty set are undefined")
    return y_true, y_pred


def _ratio(num, den):
    """num / den, and 0.0 where den is 0."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def accuracy(y_true, y_pred) -> float:
    y_true, y_pred = _labels(y_true, y_pred)
    return float((y_true == y_pred).mean())


def confusion_matrix(y_true, y_pred, labels=None) -> np.ndarray:
    """(K, K) counts, rows the true class, columns the predicted one, in the order of `labels`
    (by default every label seen in y_true or y_pred, sorted)."""
    y_true, y_pred = _labels(y_true, y_pred)
    labels = np.unique(np.concatenate([y_true, y_pred])) if labels is None else np.asarray(labels)
    index = {label: i for i, label in enumerate(labels.tolist())}
    matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for t, p in zip(y_true.tolist(), y_pred.tolist()):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    return matrix


def precision_recall_f1(y_true, y_pred, average: str = "binary", pos_label=1, labels=None):
    """(precision, recall, F1) as floats; see the module docstring for `average` and zero denominators."""
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {', '.join(AVERAGES)}, got {average!r}")
    y_true, y_pred = _labels(y_true, y_pred)
    if labels is None:
        labels = np.unique(np.concatenate([y_true, y_pred]))
        if average == "binary" and len(labels) > 2:
            raise ValueError(f"average='binary' needs two classes, these labels have {len(labels)}: "
                             "use average='macro' (or 'micro')")
        if average == "binary" and pos_label not in labels.tolist():
            labels = np.append(labels, pos_label)  # a positive class that never occurs scores 0
    matrix = confusion_matrix(y_true, y_pred, labels)
    tp = np.diag(matrix)                                          # per class
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)    # column sums: TP + FP; row sums: TP + FN
    if average == "micro":
        tp, predicted, actual = tp.sum(), predicted.sum(), actual.sum()
    precision, recall = _ratio(tp, predicted), _ratio(tp, actual)
    f1 = _ratio(2 * precision * recall, precision + recall)
    if average == "binary":
        i = list(np.asarray(labels).tolist()).index(pos_label)
        return float(precision[i]), float(recall[i]), float(f1[i])
    # macro: the mean of the per-class scores (so macro F1 is not the F1 of the mean P and R)
    return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1))


def classification_scores(y_true, y_pred, pos_label=1) -> dict:
    """The figures chapter 07 reports for a binary task: accuracy, the positive class's precision, recall
    and F1, and macro F1 (both classes weigh the same: the selection metric of fine-tuning)."""
    p, r, f1 = precision_recall_f1(y_true, y_pred, "binary", pos_label)
    return {"accuracy": accuracy(y_true, y_pred), "precision": p, "recall": r, "f1": f1,
            "macro_f1": precision_recall_f1(y_true, y_pred, "macro")[2]}
