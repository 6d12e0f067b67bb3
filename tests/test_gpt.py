"""The course GPT against Hugging Face's GPT2LMHeadModel, weights copied in both directions."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from llmscratch.attention import MultiHeadAttention
from llmscratch.gpt import GPT, GPTConfig, top_k_filter, top_p_filter
from llmscratch.positions import LearnedPositions

CONFIGS = [
    GPTConfig(vocab_size=97, block_size=32, n_layer=1, n_head=1, n_embd=16),
    GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=64),
    GPTConfig(vocab_size=512, block_size=128, n_layer=3, n_head=6, n_embd=96),
]


def hf_model(config: GPTConfig, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    hf_config = GPT2Config(vocab_size=config.vocab_size, n_positions=config.block_size, n_embd=config.n_embd,
                           n_layer=config.n_layer, n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                           attn_pdrop=0.0)
    return GPT2LMHeadModel(hf_config).eval()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"L{c.n_layer}H{c.n_head}C{c.n_embd}")
def test_logits_and_loss_equal_hf_both_directions(config):
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(config.vocab_size, (3, config.block_size), generator=g)
    targets = torch.randint(config.vocab_size, (3, config.block_size), generator=g)
    targets[1, 10:] = -100  # padding positions ignored
    targets[2, :5] = -100
    hf = hf_model(config, seed=1)
    ours = GPT.from_hf(hf).eval()                        # HF -> ours
    logits, loss = ours(idx, targets)
    expected = hf(idx, labels=None)
    assert (logits - expected.logits).abs().max().item() < 1e-5
    hf_loss = torch.nn.functional.cross_entropy(expected.logits.view(-1, config.vocab_size), targets.view(-1))
    assert abs(loss.item() - hf_loss.item()) < 1e-5
    torch.manual_seed(2)
    fresh = GPT(config).eval()                           # ours -> HF
    back = fresh.to_hf()
    assert (fresh(idx)[0] - back(idx).logits).abs().max().item() < 1e-5


def test_greedy_generation_equals_hf():
    config = CONFIGS[1]
    hf = hf_model(config, seed=3)
    ours = GPT.from_hf(hf).eval()
    prompt = torch.randint(config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(4))
    expected = hf.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=0,
                           attention_mask=torch.ones_like(prompt))
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 40, temperature=0, use_cache=use_cache), expected)


@pytest.mark.parametrize("config", CONFIGS[1:], ids=["small", "medium"])
def test_cache_gives_identical_tokens_and_distributions(config):
    torch.manual_seed(5)
    model = GPT(config).eval()
    prompt = torch.randint(config.vocab_size, (2, 5))
    greedy_cached = model.generate(prompt, 50, temperature=0, use_cache=True)
    assert torch.equal(greedy_cached, model.generate(prompt, 50, temperature=0, use_cache=False))
    # step by step, the next-token distribution from the cache equals a full forward pass
    cache = model.new_cache(2)
    logits, _ = model(greedy_cached[:, :5], cache=cache)
    for t in range(5, greedy_cached.shape[1]):
        full = model(greedy_cached[:, :t])[0][:, -1]
        assert torch.allclose(logits[:, -1].softmax(-1), full.softmax(-1), atol=1e-5)
        logits, _ = model(greedy_cached[:, t:t + 1], cache=cache)
    # sampled with the same seed, cached and uncached choose the same tokens
    a = model.generate(prompt, 30, temperature=1.0, top_k=20, generator=torch.Generator().manual_seed(6))
    b = model.generate(prompt, 30, temperature=1.0, top_k=20, use_cache=False, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)


def test_eos_stops_generation():
    torch.manual_seed(7)
    model = GPT(CONFIGS[0]).eval()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    first = model.generate(prompt, 1, temperature=0)[0, -1].item()
    out = model.generate(prompt, 20, temperature=0, eos_token_id=first)
    assert out.shape[1] == 4 and out[0, -1].item() == first


def test_top_k_keeps_exactly_k_and_ties():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, False, True, False]]
    assert torch.isfinite(top_k_filter(logits, 10)).all()
    tied = torch.tensor([[2.0, 2.0, 1.0]])
    assert torch.isfinite(top_k_filter(tied, 1)).tolist() == [[True, True, False]]
    with pytest.raises(ValueError, match="positive"):
        top_k_filter(logits, 0)


def test_top_p_keeps_the_token_that_crosses_the_threshold():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    keep = lambda p: torch.isfinite(top_p_filter(logits, p)).tolist()[0]
    assert keep(0.5) == [True, False, False, False]          # 0.5 alone reaches 0.5
    assert keep(0.6) == [True, True, False, False]           # 0.5 < 0.6: the token crossing it is kept
    assert keep(0.8) == [True, True, False, False]           # 0.5 + 0.3 = 0.8 reaches it exactly
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True, True, True, True]
    dominant = torch.tensor([[10.0, 0.0, 0.0]])
    assert torch.isfinite(top_p_filter(dominant, 0.9)).tolist() == [[True, False, False]]
    shuffled = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    assert torch.isfinite(top_p_filter(shuffled, 0.6)).tolist() == [[False, True, False, True]]


def test_clear_errors_and_parameter_counts():
    config = CONFIGS[0]
    model = GPT(config)
    with pytest.raises(ValueError, match="longer than the context of 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the context"):
        model.generate(torch.zeros(1, 30, dtype=torch.long), 5)
    counts = model.parameter_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())  # tied weights counted once
    with pytest.raises(ValueError, match="not divisible"):
        GPT(GPTConfig(n_embd=10, n_head=3, n_layer=1, vocab_size=5, block_size=4))


def test_trained_model_works_in_transformers_pipeline(tmp_path):
    """Export a course GPT and a course BPE tokenizer to Hugging Face format, reload them from disk,
    and generate with transformers' text-generation pipeline: the same greedy tokens as ours."""
    from transformers import PreTrainedTokenizerFast, pipeline

    from llmscratch.data import python_reference_text
    from llmscratch.tokenizers import BPETokenizer

    bpe = BPETokenizer.train(python_reference_text()[:50_000], 300, special_tokens=["<|endoftext|>"])
    torch.manual_seed(8)
    model = GPT(GPTConfig(vocab_size=bpe.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()
    model.to_hf().save_pretrained(tmp_path / "model")
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe.to_hf(), eos_token="<|endoftext|>")
    hf_tokenizer.save_pretrained(tmp_path / "model")

    generator = pipeline("text-generation", model=str(tmp_path / "model"), device="cpu")
    prompt = "The for statement"
    out = generator(prompt, max_new_tokens=20, do_sample=False, return_full_text=False)[0]["generated_text"]
    ids = torch.tensor([bpe.encode(prompt)])
    ours = model.generate(ids, 20, temperature=0, eos_token_id=bpe.special_tokens["<|endoftext|>"])
    expected = bpe.decode(ours[0, ids.shape[1]:].tolist())
    assert len(expected) > 0 and out == expected


def test_gpt_runs_the_earlier_chapters_building_blocks():
    """What chapters 02 and 03 build is what chapter 04 runs: one implementation of each idea."""
    model = GPT(CONFIGS[1])
    assert isinstance(model.transformer.wpe, LearnedPositions)
    assert all(isinstance(block.attn, MultiHeadAttention) for block in model.transformer.h)
