"""Answers that hand the exercise to the course library instead of writing it: each one would pass its check
(tests/test_checks.py shows that with the refusal switched off), and the check refuses it."""

import numpy as np

from llmscratch import bert, bigram, check, train
from llmscratch import preference, rl
from llmscratch import attention as attention_module
from llmscratch.attention import CrossAttention, MultiHeadAttention
from llmscratch.classify import predict
from llmscratch.generation import top_k_filter, top_p_filter
from llmscratch.metrics import classification_scores, precision_recall_f1
from llmscratch.positions import apply_rope, sinusoidal_positions
from llmscratch.tokenizers import BPETokenizer
from llmscratch.tokenizers.bpe import merge
from llmscratch.tokenizers.wordpiece import wordpiece


def _bpe_train(text, vocab_size):
    return BPETokenizer.train(text, vocab_size).merges


def _bpe_encode(text, merges):
    return BPETokenizer(sorted(merges, key=merges.get)).encode(text)   # merges in learned order


def _mha(x, c_attn, c_proj, n_heads, mask=None):
    mha = MultiHeadAttention(x.shape[-1], n_heads)
    mha.c_attn, mha.c_proj = c_attn, c_proj
    return mha(x, mask=mask)


def _cross(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    ca = CrossAttention(x.shape[-1], n_head)
    ca.c_q, ca.c_kv, ca.c_proj = c_q, c_kv, c_proj
    return ca(x, memory, memory_mask)


def _compute_metrics(eval_pred):
    logits, labels = eval_pred
    return classification_scores(labels, np.argmax(logits, axis=-1))


def _group_advantages(rewards, group_size, scale=True):
    return rl.group_advantages(rewards, group_size, scale)[0]


def _grpo_loss(logps, old_logps, advantages, mask, epsilon=0.2):
    return rl.grpo_loss(logps, old_logps, advantages, mask, epsilon=epsilon)["loss"]


def _dpo_loss(pc, pr, rc, rr, beta):
    out = preference.dpo_loss(pc, pr, rc, rr, beta)
    return out["loss"], out["chosen_rewards"], out["rejected_rewards"]


# (check, the delegating answer, the library function the refusal names)
DELEGATED = [
    (check.ch00.bigram_counts, bigram.bigram_counts, "bigram_counts"),
    (check.ch00.counts_to_probs, lambda counts, smoothing=1.0: bigram.counts_to_probs(counts, smoothing), "counts_to_probs"),
    (check.ch01.merge, merge, "merge"),
    (check.ch01.train_bpe, _bpe_train, "BPETokenizer.train"),
    (check.ch01.encode, _bpe_encode, "BPETokenizer.encode"),
    (check.ch01.greedy_longest_match, lambda word, vocab: wordpiece(word, vocab), "wordpiece"),
    (check.ch02.sinusoidal, sinusoidal_positions, "sinusoidal_positions"),
    (check.ch02.apply_rope, apply_rope, "apply_rope"),
    (check.ch03.attention, attention_module.scaled_dot_product_attention, "scaled_dot_product_attention"),
    (check.ch03.causal_mask, lambda T: attention_module.causal_mask(T), "causal_mask"),
    (check.ch03.padding_mask, attention_module.padding_mask, "padding_mask"),
    (check.ch03.mha_forward, _mha, "MultiHeadAttention.forward"),
    (check.ch04.block_forward, lambda x, block: block(x), "Block.forward"),
    (check.ch04.gpt_forward, lambda model, idx, targets=None: model(idx, targets), "GPT.forward"),
    (check.ch04.top_k_filter, top_k_filter, "top_k_filter"),
    (check.ch04.top_p_filter, top_p_filter, "top_p_filter"),
    (check.ch05.get_batch, train.get_batch, "get_batch"),
    (check.ch05.lr_at, train.lr_at, "lr_at"),
    (check.ch05.train_step, train.train_step, "train_step"),
    (check.ch05.evaluate, train.evaluate, "evaluate"),
    (check.ch06.mask_tokens, bert.mask_tokens, "mask_tokens"),
    # ch06.mlm_loss: the library's mlm_loss is refused before it returns, for calling F.cross_entropy (cases_ch06).
    (check.ch06.mean_pool, bert.mean_pool, "mean_pool"),
    (check.ch06.cross_attention, _cross, "CrossAttention.forward"),
    (check.ch07.precision_recall_f1, precision_recall_f1, "precision_recall_f1"),
    (check.ch07.predict_batched, lambda model, rows, batch_size=64, pad_id=0: predict(model, rows, batch_size, pad_id),
     "predict"),
    (check.ch07.compute_metrics, _compute_metrics, "classification_scores"),
    (check.ch10.sequence_logprob, preference.sequence_logprobs_from_logits, "sequence_logprobs_from_logits"),
    (check.ch10.bradley_terry_loss, preference.bradley_terry_loss, "bradley_terry_loss"),
    (check.ch10.dpo_loss, _dpo_loss, "dpo_loss"),
    (check.ch10.reward_accuracy, preference.reward_accuracy, "reward_accuracy"),
    (check.ch11.extract_answer, rl.extract_answer, "extract_answer"),
    (check.ch11.reward, rl.reward, "reward"),
    (check.ch11.group_advantages, _group_advantages, "group_advantages"),
    (check.ch11.k3_kl, rl.k3_kl, "k3_kl"),
    (check.ch11.grpo_loss, _grpo_loss, "grpo_loss"),
    (check.ch11.pass_at_k, rl.pass_at_k, "pass_at_k"),
]
