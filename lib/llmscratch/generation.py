"""Text generation (chapter 04), shared by every decoder in the course (the GPT, the Llama).

A model that generates is a CausalLM: it maps token ids (B, T) to logits (B, T, vocab) through
`forward(idx, cache=...)`, makes an empty KV cache with `new_cache(batch_size, device, dtype, max_len)`,
and has `config.block_size`, its context length. generate() needs nothing else.
"""

import torch
import torch.nn as nn


class CausalLM(nn.Module):
    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_token_id: int | list[int] | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None, attention_mask: torch.Tensor | None = None,
                 num_samples: int = 1):
        """Continue idx (B, T) by up to max_new_tokens tokens. temperature 0 is greedy; top_k and
        top_p filter the distribution first. Sequences that produced an end token (eos_token_id: one
        id or several) stop growing (they are padded with the first one); generation ends when all have.
        Prompts of different lengths go in one batch left-padded, with attention_mask (B, T), 1 = a real token
        (as tokenizers return it): the padding is never attended to and each row's positions start at its
        first real token, so a row generates what it would alone. The model must take attention_mask and
        position_ids (the course Llama does). num_samples: continue each prompt that many times (rows i * n ..
        i * n + n - 1 of the result continue prompt i); the prompts are read once and their KV cache copied."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if idx.shape[1] + max_new_tokens > self.config.block_size:
            raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the context of "
                             f"{self.config.block_size} tokens: shorten the prompt or generate fewer tokens")
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        if attention_mask is not None and attention_mask.shape != idx.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must have idx's shape {tuple(idx.shape)}")
        stop = None
        if eos_token_id is not None:
            stop = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id),
                                device=idx.device)
        was_training = self.training
        self.eval()
        dtype = next(self.parameters()).dtype
        cache = None
        if use_cache:   # room for the prompt and the new tokens only, not the whole context
            cache = self.new_cache(idx.shape[0], idx.device, dtype, max_len=idx.shape[1] + max_new_tokens)
        done = torch.zeros(idx.shape[0], dtype=torch.bool, device=idx.device)
        step_input = idx
        for step in range(max_new_tokens):
            x = step_input if use_cache else idx
            if attention_mask is None:
                logits = self.next_token_logits(x, cache=cache)                                 # (B, vocab)
            else:
                positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, -x.shape[1]:]    # (B, T) per row
                logits = self.next_token_logits(x, cache=cache, attention_mask=attention_mask, position_ids=positions)
            if step == 0 and num_samples > 1:   # the prompts were read once: now one copy per sample
                idx, logits, done = (t.repeat_interleave(num_samples, 0) for t in (idx, logits, done))
                if attention_mask is not None:
                    attention_mask = attention_mask.repeat_interleave(num_samples, 0)
                if cache is not None:
                    cache.repeat_interleave(num_samples)
            next_token = sample_next(logits, temperature, top_k, top_p, generator)               # (B, 1)
            if stop is not None:
                next_token = next_token.masked_fill(done[:, None], stop[0])
                done |= torch.isin(next_token[:, 0], stop)
            idx = torch.cat((idx, next_token), dim=1)
            step_input = next_token
            if attention_mask is not None:
                attention_mask = torch.cat((attention_mask, attention_mask.new_ones(idx.shape[0], 1)), dim=1)
            if stop is not None and done.all():
                break
        self.train(was_training)
        return idx

    def next_token_logits(self, idx, **kwargs):
        """Logits (B, vocab) at the last position only: reading a prompt of T tokens then costs one vocabulary
        projection per row instead of T (for SmolLM2's 49k-token vocabulary, a fifth of a long prompt's work)."""
        if hasattr(self, "hidden_states"):
            return self.lm_head(self.hidden_states(idx, **kwargs)[:, -1])
        return self(idx, **kwargs)[0][:, -1]


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (ties at the k-th value are all kept), -inf elsewhere."""
    if k <= 0:
        raise ValueError(f"top_k must be positive, got {k}")
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities add up to
    at least p (the token that crosses p is kept), -inf elsewhere."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {p}")
    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p  # mass *before* a token already reaches p
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """One next token per row of logits (B, vocab): greedy at temperature 0, else sampled."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(dim=-1), num_samples=1, generator=generator)
