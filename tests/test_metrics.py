"""llmscratch.metrics against scikit-learn (the oracle), on many random label vectors, including the
edge cases: a class never predicted, a class that never occurs, one class only, labels other than 0/1."""

import numpy as np
import pytest
from sklearn import metrics as sk

from llmscratch.metrics import accuracy, classification_scores, confusion_matrix, precision_recall_f1


def random_cases(n_cases=300, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        n = int(rng.integers(1, 60))
        k = int(rng.integers(2, 5))
        y_true = rng.integers(0, k, n)
        y_pred = rng.integers(0, k, n)
        if i % 5 == 0:
            y_pred[:] = y_pred[0]           # a model that always says the same class
        if i % 7 == 0:
            y_true[y_true == k - 1] = 0     # a class that is predicted but never occurs
        yield y_true, y_pred, k


def binary_cases(n_cases=300, seed=1):
    for y_true, y_pred, _ in random_cases(n_cases, seed):
        yield y_true % 2, y_pred % 2


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_accuracy_and_confusion_matrix_equal_sklearn():
    for y_true, y_pred, _ in random_cases():
        assert accuracy(y_true, y_pred) == pytest.approx(sk.accuracy_score(y_true, y_pred), abs=1e-12)
        np.testing.assert_array_equal(confusion_matrix(y_true, y_pred), sk.confusion_matrix(y_true, y_pred))
        labels = [3, 1, 0]  # an explicit order, and labels outside it ignored
        np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, labels),
                                      sk.confusion_matrix(y_true, y_pred, labels=labels))


@pytest.mark.parametrize("average", ["macro", "micro"])
def test_multiclass_precision_recall_f1_equal_sklearn(average):
    for y_true, y_pred, _ in random_cases():
        expected = sk.precision_recall_fscore_support(y_true, y_pred, average=average, zero_division=0)[:3]
        assert precision_recall_f1(y_true, y_pred, average) == pytest.approx(expected, abs=1e-12)


def test_binary_precision_recall_f1_equal_sklearn_for_either_positive_class():
    for y_true, y_pred in binary_cases():
        for pos_label in (0, 1):
            expected = sk.precision_recall_fscore_support(y_true, y_pred, average="binary", pos_label=pos_label,
                                                          zero_division=0)[:3]
            assert precision_recall_f1(y_true, y_pred, "binary", pos_label) == pytest.approx(expected, abs=1e-12)


def test_micro_f1_is_accuracy_and_macro_is_the_mean_of_per_class_f1():
    for y_true, y_pred, _ in random_cases(100):
        assert precision_recall_f1(y_true, y_pred, "micro")[2] == pytest.approx(accuracy(y_true, y_pred))
        per_class = sk.f1_score(y_true, y_pred, average=None, zero_division=0)
        assert precision_recall_f1(y_true, y_pred, "macro")[2] == pytest.approx(per_class.mean())


def test_a_class_never_predicted_scores_zero_without_a_warning_or_nan():
    y_true, y_pred = [1, 1, 0, 0], [0, 0, 0, 0]
    with np.errstate(all="raise"):   # no 0/0 computed anywhere
        assert precision_recall_f1(y_true, y_pred, "binary") == (0.0, 0.0, 0.0)
        assert precision_recall_f1(y_true, y_pred, "macro") == pytest.approx((0.25, 0.5, 1 / 3))
    assert precision_recall_f1([0, 0], [0, 0], "binary") == (0.0, 0.0, 0.0)  # the positive class never occurs


def test_classification_scores_names_the_figures():
    scores = classification_scores([1, 0, 1, 1], [1, 0, 0, 1])
    assert scores == pytest.approx({"accuracy": 0.75, "precision": 1.0, "recall": 2 / 3, "f1": 0.8,
                                    "macro_f1": (0.8 + 2 / 3) / 2})


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="one prediction per example"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        precision_recall_f1([], [])
    with pytest.raises(ValueError, match="average='macro'"):
        precision_recall_f1([0, 1, 2], [0, 1, 2], "binary")
    with pytest.raises(ValueError, match="average must be"):
        precision_recall_f1([0, 1], [0, 1], "weighted")
