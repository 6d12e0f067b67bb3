"""Evaluating language models (chapter 12): log-likelihoods as lm-evaluation-harness computes them, multiple-choice
and perplexity metrics, and the statistics that say when a difference is real."""

from . import contamination
from .loglikelihood import (LanguageModel, encode_pair, from_course_bpe, from_hf_tokenizer, loglikelihood,
                            loglikelihood_rolling, loglikelihood_tokens, multiple_choice, perplexities, rolling_windows)
from .prompts import fewshot_contexts
from .stats import bootstrap_interval, centred, mcnemar, mean_stderr, paired_bootstrap
