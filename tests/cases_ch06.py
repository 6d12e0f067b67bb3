"""Chapter 06 answers for the self-check tests (test_checks.py): correct ones and typical mistakes."""

import torch
import torch.nn.functional as F

from llmscratch import check


# ---- correct answers (the notebook's solutions) -----------------------------------------------------
def encoder_layer(x, attention_mask, layer):
    mask = attention_mask.bool()[:, None, None, :]                      # (B, 1, 1, T): keys
    x = layer.attention_norm(x + layer.attention(x, mask))
    return layer.output_norm(x + layer.output(F.gelu(layer.intermediate(x))))


def mask_tokens(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    selected = (torch.rand(ids.shape, generator=generator) < p) & ~special_mask
    labels = ids.masked_fill(~selected, -100)
    action = torch.rand(ids.shape, generator=generator)
    ordinary = torch.tensor([i for i in range(vocab_size) if i not in set(special_ids)])
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator)]
    inputs = ids.masked_fill(selected & (action < 0.8), mask_id)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, labels


def mlm_loss(logits, labels):
    V = logits.shape[-1]
    flat = labels.reshape(-1)
    selected = flat != -100
    log_probs = logits.reshape(-1, V)[selected].log_softmax(dim=-1)
    return -log_probs.gather(1, flat[selected][:, None]).mean()


def mean_pool(hidden, attention_mask):
    m = attention_mask[..., None].to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def cross_attention(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    B, T_q, C = x.shape
    T_k, hs = memory.shape[1], C // n_head
    q = c_q(x).view(B, T_q, n_head, hs).transpose(1, 2)
    k, v = (t.view(B, T_k, n_head, hs).transpose(1, 2) for t in c_kv(memory).split(C, dim=-1))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=memory_mask.bool()[:, None, None, :])
    return c_proj(y.transpose(1, 2).reshape(B, T_q, C))


def mask_tokens_by_index(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    """Another correct way: choose among the selected ones with separate draws."""
    selected = torch.bernoulli(torch.full(ids.shape, p), generator=generator).bool() & ~special_mask
    to_mask = selected & torch.bernoulli(torch.full(ids.shape, 0.8), generator=generator).bool()
    to_random = selected & ~to_mask & torch.bernoulli(torch.full(ids.shape, 0.5), generator=generator).bool()
    n_special = len(special_ids)  # special ids are 0 .. n_special-1 here, as in the course's Chinese vocabulary
    random_ids = torch.randint(n_special, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(to_random, random_ids, ids.masked_fill(to_mask, mask_id))
    return inputs, ids.masked_fill(~selected, -100)


# ---- typical mistakes -------------------------------------------------------------------------------
def layer_causal(x, attention_mask, layer):
    T = x.shape[1]
    mask = attention_mask.bool()[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril()
    x = layer.attention_norm(x + layer.attention(x, mask))
    return layer.output_norm(x + layer.output(F.gelu(layer.intermediate(x))))


def layer_query_mask(x, attention_mask, layer):
    x = layer.attention_norm(x + layer.attention(x, attention_mask.bool()[:, None, :, None]))
    return layer.output_norm(x + layer.output(F.gelu(layer.intermediate(x))))


def layer_pre_ln(x, attention_mask, layer):
    x = x + layer.attention(layer.attention_norm(x), attention_mask.bool()[:, None, None, :])
    return x + layer.output(F.gelu(layer.intermediate(layer.output_norm(x))))


def layer_float_mask(x, attention_mask, layer):
    x = layer.attention_norm(x + layer.attention(x, attention_mask.float()[:, None, None, :]))
    return layer.output_norm(x + layer.output(F.gelu(layer.intermediate(x))))


def layer_int_mask(x, attention_mask, layer):
    x = layer.attention_norm(x + layer.attention(x, attention_mask[:, None, None, :]))
    return layer.output_norm(x + layer.output(F.gelu(layer.intermediate(x))))


def layer_tanh_gelu(x, attention_mask, layer):
    x = layer.attention_norm(x + layer.attention(x, attention_mask.bool()[:, None, None, :]))
    return layer.output_norm(x + layer.output(F.gelu(layer.intermediate(x), approximate="tanh")))


def layer_calls_the_oracle(x, attention_mask, layer):
    return layer(x, attention_mask.bool()[:, None, None, :])


def masks_specials_too(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    return mask_tokens(ids, torch.zeros_like(special_mask), mask_id, vocab_size, special_ids, p, generator)


def replaces_every_token(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    """80/10/10 drawn for every ordinary token, not only for the selected ones."""
    selected = (torch.rand(ids.shape, generator=generator) < p) & ~special_mask
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(len(special_ids), vocab_size, ids.shape, generator=generator)
    inputs = ids.masked_fill(~special_mask & (action < 0.8), mask_id)
    inputs = torch.where(~special_mask & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, ids.masked_fill(~selected, -100)


def random_can_be_special(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    selected = (torch.rand(ids.shape, generator=generator) < p) & ~special_mask
    action = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, ids.shape, generator=generator)
    inputs = ids.masked_fill(selected & (action < 0.8), mask_id)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    return inputs, ids.masked_fill(~selected, -100)


def uses_global_rng(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    return mask_tokens(ids, special_mask, mask_id, vocab_size, special_ids, p, None)


def labels_everywhere(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    inputs, _ = mask_tokens(ids, special_mask, mask_id, vocab_size, special_ids, p, generator)
    return inputs, ids.clone()


def always_15_percent(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15, generator=None):
    return mask_tokens(ids, special_mask, mask_id, vocab_size, special_ids, 0.15, generator)


def loss_over_all_positions(logits, labels):
    V = logits.shape[-1]
    flat = labels.reshape(-1)
    nll = -logits.reshape(-1, V).log_softmax(-1).gather(1, flat.clamp(min=0)[:, None])[:, 0]
    return (nll * (flat != -100)).sum() / flat.numel()


def loss_with_padding_as_zero(logits, labels):
    V = logits.shape[-1]
    return -logits.reshape(-1, V).log_softmax(-1).gather(1, labels.reshape(-1).clamp(min=0)[:, None]).mean()


def loss_calls_the_oracle(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def cross_without_mask(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    return cross_attention(x, memory, torch.ones_like(memory_mask), c_q, c_kv, c_proj, n_head)


def mean_pool_without_keepdim(hidden, attention_mask):
    return (hidden * attention_mask[..., None]).sum(1) / attention_mask.sum(1)


def cross_merge_without_transpose(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    B, T_q, C = x.shape
    T_k, hs = memory.shape[1], C // n_head
    q = c_q(x).view(B, T_q, n_head, hs).transpose(1, 2)
    k, v = (t.view(B, T_k, n_head, hs).transpose(1, 2) for t in c_kv(memory).split(C, dim=-1))
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=memory_mask.bool()[:, None, None, :])
    return c_proj(y.reshape(B, T_q, C))


def _cross_variant(x, memory, c_q, c_kv, c_proj, n_head, mask, swap_kv=False):
    """Cross-attention with a given (wrong) mask, or keys and values swapped."""
    B, T_q, C = x.shape
    T_k, hs = memory.shape[1], C // n_head
    q = c_q(x).view(B, T_q, n_head, hs).transpose(1, 2)
    k, v = (t.view(B, T_k, n_head, hs).transpose(1, 2) for t in c_kv(memory).split(C, dim=-1))
    if swap_kv:
        k, v = v, k
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return c_proj(y.transpose(1, 2).reshape(B, T_q, C))


def cross_swapped_kv(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    return _cross_variant(x, memory, c_q, c_kv, c_proj, n_head, memory_mask.bool()[:, None, None, :], swap_kv=True)


def cross_causal(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    causal = torch.ones(x.shape[1], memory.shape[1], dtype=torch.bool).tril()
    return _cross_variant(x, memory, c_q, c_kv, c_proj, n_head, memory_mask.bool()[:, None, None, :] & causal)


def cross_query_mask(x, memory, memory_mask, c_q, c_kv, c_proj, n_head):
    return _cross_variant(x, memory, c_q, c_kv, c_proj, n_head, memory_mask.bool()[:, None, :, None])


c = check.ch06
CORRECT = [(c.encoder_layer, encoder_layer), (c.mask_tokens, mask_tokens), (c.mask_tokens, mask_tokens_by_index),
           (c.mlm_loss, mlm_loss), (c.mean_pool, mean_pool), (c.cross_attention, cross_attention)]

MISTAKES = [
    (c.encoder_layer, layer_causal, "causal mask"),
    (c.encoder_layer, layer_query_mask, "blocks queries instead of keys"),
    (c.encoder_layer, layer_pre_ln, "this is pre-LN"),
    (c.encoder_layer, layer_tanh_gelu, "tanh approximation"),
    (c.encoder_layer, layer_float_mask, "a float mask is ADDED"),
    (c.encoder_layer, layer_int_mask, "attention rejected the mask.*boolean mask"),
    (c.encoder_layer, lambda x, am, layer: encoder_layer(x, torch.ones_like(am), layer), "padding mask was not used"),
    (c.encoder_layer, layer_calls_the_oracle, "build the layer from its parts"),
    (c.mask_tokens, masks_specials_too, "special tokens or padding were selected"),
    (c.mask_tokens, replaces_every_token, "applies to the selected tokens only"),
    (c.mask_tokens, random_can_be_special, "random replacement was a special token"),
    (c.mask_tokens, uses_global_rng, "draw every random number from `generator`"),
    (c.mask_tokens, labels_everywhere, "positions have a label"),
    (c.mask_tokens, always_15_percent, "share of ordinary tokens selected"),
    (c.mlm_loss, loss_over_all_positions, "averaged over ALL positions"),
    (c.mlm_loss, loss_with_padding_as_zero, "labelled -100 are in the loss"),
    (c.mlm_loss, lambda logits, labels: -mlm_loss(logits, labels), "sign is wrong"),
    (c.mlm_loss, loss_calls_the_oracle, "F.cross_entropy is the oracle"),
    (c.mean_pool, lambda hidden, am: hidden.mean(1), "padding was averaged in"),
    (c.mean_pool, lambda hidden, am: (hidden * am[..., None]).sum(1) / hidden.shape[1], "divided by T"),
    (c.mean_pool, mean_pool_without_keepdim, "keepdim=True"),
    (c.cross_attention, cross_without_mask, "padding mask was not used"),
    (c.cross_attention, cross_swapped_kv, "swapped"),
    (c.cross_attention, cross_merge_without_transpose, "merged without the transpose back"),
    (c.cross_attention, cross_causal, "causal mask"),
    (c.cross_attention, cross_query_mask, "the mask \\(B, 1, 1, T_k\\) covers the keys"),
]
