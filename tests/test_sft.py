"""Chapter 09: LoRA against Hugging Face's peft (forward, merge, adapters in peft's format both ways), the SFT
loss mask on hand-built conversations in SmolLM2's template, packing against examples run alone, greedy exact
match against real generation, and BLEU / ROUGE-L against sacrebleu and rouge-score on chatterbot replies."""

import json
import random

import pytest
import sacrebleu
import torch
from peft import LoraConfig, PeftModel, get_peft_model, inject_adapter_in_model
from rouge_score import rouge_scorer, tokenizers
from transformers import LlamaConfig as HFLlamaConfig
from transformers import LlamaForCausalLM

from llmscratch import sft
from llmscratch.data import chatterbot_dialogues
from llmscratch.llama import Llama, load_smollm2
from llmscratch.lora import (LoRALinear, apply_lora, load_adapter, lora_layers, merge_lora, save_adapter,
                             trainable_parameters)
from llmscratch.metrics import bleu, rouge_l, sentence_bleu
from llmscratch.train import configure_optimizer


def random_hf(seed, n_head=4, n_kv_head=2, width=48):
    torch.manual_seed(seed)
    hc = HFLlamaConfig(vocab_size=97, hidden_size=width, intermediate_size=80, num_hidden_layers=2,
                       num_attention_heads=n_head, num_key_value_heads=n_kv_head, max_position_embeddings=64,
                       rms_norm_eps=1e-6, tie_word_embeddings=True)
    hf = LlamaForCausalLM(hc).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return hf


def randomize_b(model, seed=0):
    """A trained adapter: B away from its zero start, so that the update matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1)


# Targets, rank and alpha: attention only, MLP only, everything.
LORA_CASES = [(("q_proj", "v_proj"), 4, 8.0), (("gate_proj", "down_proj"), 2, 16.0),
              (("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 8, 4.0)]


def peft_twin(hf, ours, targets, r, alpha):
    """peft's LoRA on the HF model, with the course adapter's A and B copied in."""
    pm = get_peft_model(hf, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets), lora_dropout=0.0))
    with torch.no_grad():
        for name, layer in lora_layers(ours).items():
            theirs = pm.base_model.model.get_submodule(name)
            theirs.lora_A["default"].weight.copy_(layer.lora_A.weight)
            theirs.lora_B["default"].weight.copy_(layer.lora_B.weight)
    return pm.eval()


@pytest.mark.parametrize("targets,r,alpha", LORA_CASES)
def test_lora_forward_and_merge_equal_peft(targets, r, alpha):
    for seed in range(2):
        hf = random_hf(seed)
        ours = apply_lora(Llama.from_hf(hf), targets, r, alpha).eval()
        randomize_b(ours, seed)
        pm = peft_twin(hf, ours, targets, r, alpha)
        assert len(lora_layers(ours)) == 2 * len(targets)
        for _ in range(3):
            x = torch.randint(97, (2, torch.randint(2, 30, ()).item()))
            with torch.no_grad():
                expected = pm(x).logits
                torch.testing.assert_close(ours(x)[0], expected, atol=1e-5, rtol=0)
                for layer in lora_layers(ours).values():
                    layer.merge()
                torch.testing.assert_close(ours(x)[0], expected, atol=1e-5, rtol=0)   # merged: same logits
                for layer in lora_layers(ours).values():
                    layer.unmerge()
        base = Llama.from_hf(random_hf(seed))
        for name, layer in lora_layers(ours).items():   # unmerge gives the base weight back
            torch.testing.assert_close(layer.base_layer.weight, base.get_submodule(name).weight, atol=1e-6, rtol=0)
        merged = merge_lora(ours)   # plain Linear layers again, exported to HF = peft's merge_and_unload
        assert not lora_layers(merged)
        x = torch.randint(97, (2, 17))
        with torch.no_grad():
            torch.testing.assert_close(merged.to_hf()(x).logits, pm.merge_and_unload()(x).logits, atol=1e-5, rtol=0)


def test_lora_on_smollm2_layers_equals_peft():
    model, _ = load_smollm2()
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.7.self_attn.k_proj", "model.layers.29.mlp.down_proj"):
        linear = model.get_submodule(name)
        ours = LoRALinear(linear, r=8, alpha=16)
        torch.nn.init.normal_(ours.lora_B.weight, std=0.02)
        holder = torch.nn.Module()
        holder.proj = torch.nn.Linear(linear.in_features, linear.out_features, bias=False)
        holder.proj.weight.data.copy_(linear.weight)
        holder = inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=["proj"]), holder)
        holder.proj.lora_A["default"].weight.data.copy_(ours.lora_A.weight)
        holder.proj.lora_B["default"].weight.data.copy_(ours.lora_B.weight)
        x = torch.randn(3, 11, linear.in_features)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), holder.proj(x), atol=1e-5, rtol=0)
            assert (ours(x) - linear(x)).abs().max() > 1e-3   # the adapter does change the layer


def test_lora_starts_as_the_base_model_and_trains_only_a_and_b():
    hf = random_hf(3)
    base = Llama.from_hf(hf)
    x = torch.randint(97, (2, 20))
    with torch.no_grad():
        expected = base(x)[0]
    model = apply_lora(Llama.from_hf(hf), ("q_proj", "v_proj", "down_proj"), r=4, alpha=8)
    with torch.no_grad():
        assert torch.equal(model(x)[0], expected)   # B = 0: exactly the pretrained model at step 0
    lora = {n for n, p in model.named_parameters() if "lora_" in n}
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora
    trainable, total = trainable_parameters(model)
    # per layer, r (in + out) for each target: q_proj 48 -> 48, v_proj 48 -> 24 (2 kv heads), down_proj 80 -> 48
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if n in lora) == 2 * 4 * (96 + 72 + 128)
    assert total == trainable + sum(p.numel() for p in base.parameters())
    optimizer = configure_optimizer(model, lr=1e-3)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for n, p in model.named_parameters() if n in lora}
    model(x, torch.randint(97, x.shape))[1].backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in lora), name
    # B = 0 makes A's first gradient zero and B's not: learning starts through B
    assert all(l.lora_B.weight.grad.abs().sum() > 0 for l in lora_layers(model).values())
    assert all(l.lora_A.weight.grad.abs().sum() == 0 for l in lora_layers(model).values())


def test_course_adapter_loads_in_peft_and_peft_adapter_loads_in_the_course(tmp_path):
    hf = random_hf(5)
    ours = apply_lora(Llama.from_hf(hf), ("q_proj", "k_proj", "v_proj", "up_proj"), r=4, alpha=8).eval()
    randomize_b(ours, 5)
    with torch.no_grad():
        for layer in lora_layers(ours).values():
            layer.lora_A.weight.mul_(3)
    save_adapter(ours, tmp_path / "course")
    config = json.loads((tmp_path / "course" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    loaded = PeftModel.from_pretrained(random_hf(5), tmp_path / "course").eval()
    x = torch.randint(97, (3, 25))
    with torch.no_grad():
        expected = ours(x)[0]
        torch.testing.assert_close(loaded(x).logits, expected, atol=1e-5, rtol=0)
        # and back: peft's own save_pretrained, read by the course's load_adapter
        loaded.save_pretrained(tmp_path / "peft")
        again = load_adapter(Llama.from_hf(random_hf(5)), tmp_path / "peft").eval()
        torch.testing.assert_close(again(x)[0], expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapter(Llama.from_hf(random_hf(5, width=64)), tmp_path / "course")   # same names, other shapes
    (tmp_path / "course" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt"):
        load_adapter(Llama.from_hf(random_hf(5)), tmp_path / "course")
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(Llama.from_hf(random_hf(5)), ("c_attn",))


# ---- the loss mask --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    return load_smollm2()[1]


CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": "6, of course."}],
    [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！很高兴见到你。"},
     {"role": "user", "content": "assistant"}, {"role": "assistant", "content": "user\nsystem"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_labels_are_exactly_the_replies_and_their_end(messages, tokenizer):
    e = sft.encode_chat(messages, tokenizer)
    ids, labels = e["input_ids"], e["labels"]
    assert ids == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)  # HF's own template
    targets = [t for t in labels if t != sft.IGNORE_INDEX]
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert tokenizer.decode(targets) == "".join(r + "<|im_end|>" for r in replies)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert sum(t == end for t in targets) == len(replies)   # every reply's end is learned, nothing else's
    # the targets are contiguous runs, each one right after an assistant header
    header, _ = sft.template_ids(tokenizer)
    starts = [t for t in range(len(ids)) if labels[t] != sft.IGNORE_INDEX and (t == 0 or labels[t - 1] == sft.IGNORE_INDEX)]
    assert len(starts) == len(replies) and all(ids[s - len(header):s] == header for s in starts)


def test_padding_with_eos_keeps_each_reply_end(tokenizer):
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.pad_token_id == end   # SmolLM2's case: pad = eos
    examples = [sft.encode_chat(m, tokenizer) for m in CONVERSATIONS]
    batch = sft.collate(examples, tokenizer.pad_token_id)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["attention_mask"][b].sum() == n
        assert batch["labels"][b, :n].tolist() == e["labels"]
        assert (batch["labels"][b, n:] == sft.IGNORE_INDEX).all()
        assert (batch["labels"][b] == end).sum() == sum(m["role"] == "assistant" for m in CONVERSATIONS[b])
    # The trap: masking by value (labels[input_ids == pad_id] = ignore) would hide every real end too.
    naive = batch["input_ids"].clone().masked_fill(batch["input_ids"] == tokenizer.pad_token_id, sft.IGNORE_INDEX)
    assert (naive == end).sum() == 0 < (batch["labels"] == end).sum()


def test_truncated_example_has_no_target_outside_its_reply(tokenizer):
    messages = CONVERSATIONS[1]
    full = sft.encode_chat(messages, tokenizer)
    for max_len in range(5, len(full["input_ids"]) + 2):
        e = sft.encode_chat(messages, tokenizer, max_len=max_len)
        assert len(e["input_ids"]) == min(max_len, len(full["input_ids"]))
        assert e["truncated"] == (max_len < len(full["input_ids"]))
        assert e["labels"] == full["labels"][:max_len]   # a prefix of the full mask: never a new target


def test_packed_rows_give_each_example_its_own_logits(tokenizer):
    model = Llama.from_hf(random_hf(7, width=48)).eval()
    rng = random.Random(0)
    examples = [{"input_ids": [rng.randrange(97) for _ in range(rng.randrange(3, 20))]} for _ in range(9)]
    for e in examples:
        e["labels"] = e["input_ids"][:]
    packed = sft.pack(examples, 40, pad_id=0)
    assert packed["input_ids"].shape[1] == 40 and packed["input_ids"].shape[0] < len(examples)
    with torch.no_grad():
        logits = model(packed["input_ids"], segment_ids=packed["segment_ids"], position_ids=packed["position_ids"])[0]
    seen = 0
    for b in range(packed["input_ids"].shape[0]):
        for s in range(int(packed["segment_ids"][b].max()) + 1):
            where = packed["segment_ids"][b] == s
            alone = torch.tensor([examples[seen]["input_ids"]])
            assert torch.equal(packed["input_ids"][b, where], alone[0])
            with torch.no_grad():
                torch.testing.assert_close(logits[b, where], model(alone)[0][0], atol=1e-5, rtol=0)
            assert packed["labels"][b, where][0] == sft.IGNORE_INDEX   # the first token has no prediction
            seen += 1
    assert seen == len(examples)
    with pytest.raises(ValueError, match="does not fit a row"):
        sft.pack(examples, 10, pad_id=0)


def test_greedy_exact_match_agrees_with_generation(tokenizer):
    model, _ = load_smollm2()
    splits = sft.conversation_splits()
    questions = sft.topic_questions(splits.test)[:4]
    short = ["Say only the word yes.", "What is 2+2? Answer with the number only.", "Name one primary colour.",
             "Reply with one word: what is frozen water?"]
    prompts = [sft.topic_messages(q) for q, _ in questions] + [[{"role": "user", "content": q}] for q in short]
    replies = [sft.reply(model, tokenizer, p, max_new_tokens=40) for p in prompts]
    # the model's own greedy replies match exactly when it stopped within 40 tokens, and only then
    own = sft.greedy_exact_match(model, tokenizer, prompts, replies)
    stopped = [len(tokenizer.encode(r)) < 39 for r in replies]
    assert own == stopped and sum(stopped) >= 3, (replies, own)
    # a reply one token short of the model's (it would go on) or with a token changed does not match
    cut = [tokenizer.decode(tokenizer.encode(r)[:-1]) for r in replies]
    assert not any(o for o, r in zip(sft.greedy_exact_match(model, tokenizer, prompts, cut), replies) if len(r) > 1)
    assert not any(sft.greedy_exact_match(model, tokenizer, prompts[:4], [t for _, t in questions]))  # it fails the task


def test_splits_are_by_conversation():
    splits = sft.conversation_splits()
    parts = [{d.turns for d in getattr(splits, s)} for s in ("train", "val", "test")]
    assert all(not (a & b) for i, a in enumerate(parts) for b in parts[i + 1:])
    train_q = {q.lower() for q, _ in sft.topic_questions(splits.train)}
    test_q = {q.lower() for q, _ in sft.topic_questions(splits.test)}
    assert len(test_q) >= 40 and not (train_q & test_q)
    assert sft.conversation_splits().test == splits.test   # fixed


# ---- BLEU and ROUGE-L ---------------------------------------------------------------------------
def reply_pairs(language, n, seed):
    """(hypothesis, reference): unrelated replies, and shuffled or shortened copies of a reference."""
    dialogues = [d for d in chatterbot_dialogues(language) if len(d.turns) >= 2]
    rng = random.Random(seed)
    pairs = [(rng.choice(rng.choice(dialogues).turns), rng.choice(rng.choice(dialogues).turns)) for _ in range(n)]
    for d in rng.sample(dialogues, n):
        ref = d.turns[1]
        words = ref.split() if language == "english" else list(ref)
        rng.shuffle(words)
        cut = words[:max(1, len(words) - rng.randrange(3))]
        pairs.append((" ".join(cut) if language == "english" else "".join(cut), ref))
    return pairs


class CharTokenizer(tokenizers.Tokenizer):
    def tokenize(self, text):
        return [c for c in text if not c.isspace()]


@pytest.mark.parametrize("language,bleu_tok,rouge_tok", [("english", "13a", "words"), ("chinese", "char", "char")])
def test_bleu_and_rouge_l_equal_sacrebleu_and_rouge_score(language, bleu_tok, rouge_tok):
    pairs = reply_pairs(language, 250, seed=1)
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=CharTokenizer() if rouge_tok == "char" else None)
    for hyp, ref in pairs:
        assert sentence_bleu(hyp, ref, bleu_tok) == pytest.approx(
            sacrebleu.sentence_bleu(hyp, [ref], tokenize=bleu_tok).score, abs=1e-9)
        theirs, ours = scorer.score(ref, hyp)["rougeL"], rouge_l(hyp, ref, rouge_tok)   # rouge-score: target first
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx(
            (theirs.precision, theirs.recall, theirs.fmeasure), abs=1e-12)
    hyps, refs = [h for h, _ in pairs], [r for _, r in pairs]
    assert bleu(hyps, refs, bleu_tok) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs], tokenize=bleu_tok).score,
                                                       abs=1e-9)
    # two references per hypothesis: counts clipped by the best reference, the closest reference length
    refs2 = [r for _, r in reply_pairs(language, 250, seed=2)]
    assert bleu(hyps, [[a, b] for a, b in zip(refs, refs2)], bleu_tok) == pytest.approx(
        sacrebleu.corpus_bleu(hyps, [refs, refs2], tokenize=bleu_tok).score, abs=1e-9)


def test_text_metrics_edge_cases():
    assert sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert sentence_bleu("", "a reference") == 0.0 == sacrebleu.sentence_bleu("", ["a reference"]).score
    assert rouge_l("", "a reference")["f1"] == 0.0
    assert rouge_l("Paris is the capital.", "The capital is Paris.")["f1"] == pytest.approx(0.5)  # order matters
    with pytest.raises(ValueError, match="one entry per hypothesis"):
        bleu(["a"], ["a", "b"])


def test_command_line_tunes_and_writes_a_peft_adapter(tmp_path, tokenizer):
    results = sft.main(["--preset", "quick", "--method", "lora", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["trainable"] == results["trainable"] < 0.05 * saved["total"]
    assert set(saved["before"]) == set(saved["after"]) == {"success", "questions", "val_loss", "forgetting_loss"}
    assert saved["memory"]["optimizer"] == 2 * 4 * saved["trainable"]   # AdamW: two fp32 numbers per trainable weight
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(sft.LORA_TARGETS) and config["r"] == sft.PRESETS["quick"]["rank"]
