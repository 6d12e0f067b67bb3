"""GPT (chapter 04): a decoder-only transformer with GPT-2's architecture and module names, so that
weights convert to and from Hugging Face's GPT2LMHeadModel with a readable mapping.

    token ids (B, T) -> wte + wpe -> n_layer x [x + attn(ln_1(x)); x + mlp(ln_2(x))] -> ln_f -> lm_head
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache, MultiHeadAttention
from .generation import CausalLM, sample_next, top_k_filter, top_p_filter  # noqa: F401 (chapter 04 imports them here)
from .positions import LearnedPositions


@dataclass
class GPTConfig:
    vocab_size: int = 50257   # GPT-2's BPE vocabulary; the course's own BPE is usually much smaller
    block_size: int = 1024    # context length: the most positions the model has embeddings for
    n_layer: int = 12         # transformer blocks
    n_head: int = 12          # attention heads per block
    n_embd: int = 768         # width of the residual stream (C)
    dropout: float = 0.0      # on attention weights and residual branches; 0 for pretraining at scale
    bias: bool = True         # biases in Linear layers and LayerNorms, as GPT-2
    layer_norm_epsilon: float = 1e-5


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")  # GPT-2's "gelu_new"
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LN: normalise the input of each branch, add the branch to the residual stream untouched.
    The attention is chapter 03's MultiHeadAttention, used causally."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = MultiHeadAttention(config.n_embd, config.n_head, bias=config.bias, dropout=config.dropout)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), is_causal=True, cache=cache, layer=layer)
        return x + self.mlp(self.ln_2(x))


class GPT(CausalLM):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),   # token embeddings
            wpe=LearnedPositions(config.block_size, config.n_embd),  # chapter 02's learned positions
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config) for _ in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.Embedding, LearnedPositions)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, ignore_index: int = -100, cache: KVCache | None = None):
        """Logits (B, T, vocab) for token ids idx (B, T); with targets (B, T), also the mean
        cross-entropy over the positions whose target is not `ignore_index` (padding)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context of {self.config.block_size} "
                             "(block_size): crop the input to the last block_size tokens, or use a longer context")
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(T, offset=start))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.transformer.ln_f(x))                                       # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=ignore_index)
        return logits, loss

    def parameter_counts(self) -> dict:
        """Parameters per part (the tied lm_head counted once, with the token embeddings)."""
        t = self.transformer
        count = lambda m: sum(p.numel() for p in m.parameters())
        parts = {"token embeddings (wte, tied with lm_head)": count(t.wte), "position embeddings (wpe)": count(t.wpe),
                 "attention (all blocks)": sum(count(b.attn) for b in t.h),
                 "MLP (all blocks)": sum(count(b.mlp) for b in t.h),
                 "LayerNorms": sum(count(b.ln_1) + count(b.ln_2) for b in t.h) + count(t.ln_f)}
        parts["total"] = sum(parts.values())
        return parts

    # ---- conversion to and from Hugging Face GPT-2 ---------------------------------------------
    # HF's GPT-2 stores c_attn, c_proj and c_fc as Conv1D, whose weight is the transpose of Linear's.
    _TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf(cls, hf_model) -> "GPT":
        hc = hf_model.config
        config = GPTConfig(vocab_size=hc.vocab_size, block_size=hc.n_positions, n_layer=hc.n_layer, n_head=hc.n_head,
                           n_embd=hc.n_embd, dropout=0.0, bias=True, layer_norm_epsilon=hc.layer_norm_epsilon)
        model = cls(config)
        hf_state = hf_model.state_dict()
        with torch.no_grad():
            for name, p in model.state_dict().items():
                if name == "lm_head.weight":
                    continue  # tied to wte
                w = hf_state[name]
                p.copy_(w.t() if name.endswith(cls._TRANSPOSED) else w)
        return model

    def to_hf(self):
        from transformers import GPT2Config, GPT2LMHeadModel

        c = self.config
        if not c.bias:
            raise ValueError("Hugging Face's GPT-2 has biases everywhere: convert a model built with bias=True")
        hf_config = GPT2Config(vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer,
                               n_head=c.n_head, layer_norm_epsilon=c.layer_norm_epsilon, activation_function="gelu_new",
                               resid_pdrop=c.dropout, embd_pdrop=c.dropout, attn_pdrop=c.dropout, tie_word_embeddings=True,
                               bos_token_id=None, eos_token_id=None)  # GPT-2's 50256 means nothing in another vocabulary
        hf = GPT2LMHeadModel(hf_config)
        ours = self.state_dict()
        with torch.no_grad():
            for name, p in hf.state_dict().items():
                if name == "lm_head.weight" or name not in ours:
                    continue  # tied; HF's attention-mask buffers have no counterpart
                p.copy_(ours[name].t() if name.endswith(self._TRANSPOSED) else ours[name])
        return hf.eval()

    # ---- generation (generate() comes from CausalLM) -------------------------------------------
    def new_cache(self, batch_size: int, device=None, dtype=torch.float32, max_len: int | None = None) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, max_len or c.block_size, c.n_embd // c.n_head, device, dtype)
