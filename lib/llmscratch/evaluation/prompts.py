"""Few-shot prompts as lm-evaluation-harness writes them: k solved examples from a separate split, then the
question; the examples drawn by one seeded generator, item after item, so that a run is reproducible and every item
sees its own examples."""

import random


def fewshot_contexts(questions: list[str], pool: list[tuple[str, str]], k: int, seed: int = 1234,
                     target_delimiter: str = " ", fewshot_delimiter: str = "\n\n") -> list[str]:
    """The context of each question: k (question, answer) examples of the pool, each written question +
    target_delimiter + answer, joined by fewshot_delimiter, then the question. The pool must be another split than
    the questions': an example equal to the item would give its answer away."""
    if k > len(pool):
        raise ValueError(f"{k} examples asked for, the pool has {len(pool)}: use a smaller k or a larger split")
    rng = random.Random(seed)
    out = []
    for q in questions:
        shots = rng.sample(pool, k) if k else []
        out.append("".join(f"{x}{target_delimiter}{a}{fewshot_delimiter}" for x, a in shots) + q)
    return out
