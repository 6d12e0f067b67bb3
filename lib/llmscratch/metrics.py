"""Metrics. Classification (chapter 07), from the counts of a confusion matrix; generated text (chapter 09),
BLEU and ROUGE-L, at the end of this file.

Classification metrics, from the counts of a confusion matrix. Conventions are
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

import math
import re
from collections import Counter

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


# ---- generated text (chapter 09) ------------------------------------------------------------------
# Both metrics count words shared with a reference reply. They reward copying the reference's wording and
# know nothing of meaning: "Paris is the capital" and "The capital is Paris" share no 4-gram, a right answer
# in other words scores low, and a fluent wrong answer that reuses the reference's words scores high. Use them
# beside the loss and a task's own success rate, never alone.

_13A_RULES = [   # sacrebleu's "13a" tokenizer (mteval-v13a.pl, the WMT standard), rule for rule
    (re.compile(r"([\{-\~\[-\` -\&\(-\+\:-\@\/])"), r" \1 "),   # punctuation and symbols
    (re.compile(r"([^0-9])([\.,])"), r"\1 \2 "),                   # . and , unless after a digit
    (re.compile(r"([\.,])([^0-9])"), r" \1 \2"),                   # . and , unless before a digit
    (re.compile(r"([0-9])(-)"), r"\1 \2 "),                        # a dash after a digit
]


def bleu_tokenize(text: str, tokenize: str = "13a") -> list[str]:
    """Words for BLEU: "13a" splits punctuation off (English); "char" makes every character a token (Chinese,
    which has no spaces); "none" splits on whitespace only."""
    if tokenize == "char":
        return [c for c in text if not c.isspace()]
    if tokenize == "13a":
        text = text.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
        if "&" in text:
            text = text.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
        text = f" {text} "
        for pattern, repl in _13A_RULES:
            text = pattern.sub(repl, text)
    elif tokenize != "none":
        raise ValueError(f"tokenize must be '13a', 'char' or 'none', got {tokenize!r}")
    return text.split()


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: list[str], references: list, tokenize: str = "13a", max_n: int = 4,
         effective_order: bool = False) -> float:
    """Corpus BLEU (0-100), as sacrebleu computes it: n-gram precisions for n = 1..max_n, each n-gram counted
    at most as often as in the reference that has the most of it, pooled over the corpus; their geometric
    mean, times a brevity penalty exp(1 - ref_len / hyp_len) when the hypotheses are shorter. An n with no
    match gets sacrebleu's "exp" smoothing (100 / (2^k * total) for the k-th such n) instead of zeroing the
    score. references[i] is one reference or a list of references for hypotheses[i]."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references: one entry per hypothesis")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    correct, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        refs = [refs] if isinstance(refs, str) else list(refs)
        h = bleu_tokenize(hyp, tokenize)
        r = [bleu_tokenize(ref, tokenize) for ref in refs]
        hyp_len += len(h)
        ref_len += min((abs(len(x) - len(h)), len(x)) for x in r)[1]   # the closest length; ties: the shorter
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            best = Counter()
            for x in r:
                best |= _ngrams(x, n)                                     # per n-gram, the max over references
            correct[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if not any(correct):
        return 0.0
    brevity = 1.0 if hyp_len >= ref_len else (math.exp(1 - ref_len / hyp_len) if hyp_len else 0.0)
    logs, halvings = [], 1.0
    for n in range(max_n):
        if total[n] == 0:   # hypotheses shorter than n: with effective_order, stop at the orders that exist
            if effective_order:
                break
            logs.append(-9999999999.0)   # sacrebleu's floor for log(0)
            continue
        if correct[n] == 0:
            halvings *= 2
            logs.append(math.log(100.0 / (halvings * total[n])))
        else:
            logs.append(math.log(100.0 * correct[n] / total[n]))
    order = len(logs) if effective_order else max_n
    return brevity * math.exp(sum(logs) / order)


def sentence_bleu(hypothesis: str, references, tokenize: str = "13a") -> float:
    """BLEU of one reply; effective order, as sacrebleu's sentence_bleu: a two-word reply is scored on
    unigrams and bigrams instead of being zeroed for having no 4-gram."""
    return bleu([hypothesis], [references], tokenize, effective_order=True)


def rouge_tokenize(text: str, tokenize: str = "words") -> list[str]:
    """Words for ROUGE, as rouge-score's default: lower case, anything but a-z and 0-9 is a space. It drops
    every non-ASCII character, so Chinese needs "char" (one token per character, spaces dropped)."""
    if tokenize == "char":
        return [c for c in text if not c.isspace()]
    if tokenize != "words":
        raise ValueError(f"tokenize must be 'words' or 'char', got {tokenize!r}")
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence: words in the same order, gaps allowed. Dynamic programming
    over one row at a time: O(len(a) * len(b)) time, O(len(b)) memory."""
    row = [0] * (len(b) + 1)
    for x in a:
        prev_diag = 0
        for j, y in enumerate(b, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(candidate: str, reference: str, tokenize: str = "words") -> dict:
    """ROUGE-L of one reply: the LCS over the candidate's length (precision) and over the reference's
    (recall), and their harmonic mean F1 (rouge-score's fmeasure). 0 when either side has no words."""
    c, r = rouge_tokenize(candidate, tokenize), rouge_tokenize(reference, tokenize)
    lcs = lcs_length(c, r) if c and r else 0
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    p, rec = lcs / len(c), lcs / len(r)
    return {"precision": p, "recall": rec, "f1": 2 * p * rec / (p + rec)}
