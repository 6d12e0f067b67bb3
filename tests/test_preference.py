"""Chapter 10: the DPO loss, its rewards and gradients against TRL's own DPOTrainer code, sequence log-probs
against Hugging Face's LlamaForCausalLM, the adapters-off reference against a frozen copy, the step-0 loss ln 2,
the Bradley-Terry reward model, the pairs and their split, and the command line."""

import copy
import json
import math
from collections import Counter, defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaForCausalLM
from trl import DPOTrainer

from llmscratch import preference as pref
from llmscratch import sft
from llmscratch.bert import load_minilm
from llmscratch.llama import Llama, load_smollm2, smollm2_dir
from llmscratch.lora import LoRALinear, adapters_disabled, apply_lora, lora_layers
from llmscratch.sft import IGNORE_INDEX, TOPICS
from llmscratch.train import configure_optimizer, train_step
from test_sft import randomize_b, random_hf   # chapter 09's random HF Llama (vocabulary 97) and trained LoRA B


# ---- the loss against TRL ---------------------------------------------------------------------------
def random_batch(seed, B=6, T=14):
    """Per-token log-probs (2B, T-1) of B chosen then B rejected rows, zero outside each row's reply, the
    completion mask (2B, T) of those replies (never position 0: a prompt comes first) and reference log-probs."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2 * B, T, dtype=torch.long)
    for row in range(2 * B):
        start = int(torch.randint(1, T - 2, (1,), generator=g))
        end = int(torch.randint(start + 1, T + 1, (1,), generator=g))
        mask[row, start:end] = 1
    per_token = (-torch.rand(2 * B, T - 1, generator=g) * 4) * mask[:, 1:]
    ref = per_token.sum(1) + torch.randn(2 * B, generator=g) * 2
    return per_token, mask, ref


def trl_loss(per_token, mask, ref, loss_type, beta, eps, sft_weight=None):
    """TRL 1.16's DPOTrainer._compute_loss on a stand-in model that returns these log-probs: its own code
    computes the loss, the rewards and the metrics; only the Trainer's plumbing is faked."""
    n = per_token.size(0)
    outputs = SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                              mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token).bool())
    trainer = SimpleNamespace(
        model=SimpleNamespace(training=True), accelerator=SimpleNamespace(
            device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x),
        aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
        loss_types=[loss_type] + ["sft"] * (sft_weight is not None),
        loss_weights=[1.0] + [sft_weight] * (sft_weight is not None), beta=beta, label_smoothing=eps,
        use_weighting=False,
        _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(n, mask.size(1), dtype=torch.long), "attention_mask": torch.ones_like(mask),
              "completion_mask": mask, "ref_chosen_logps": ref[:n // 2], "ref_rejected_logps": ref[n // 2:]}
    loss = DPOTrainer._compute_loss(trainer, lambda **kw: outputs, inputs, return_outputs=False)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


def ours(per_token, mask, ref, loss_type, beta, eps):
    lp = per_token.sum(1)
    if loss_type == "ipo":   # per-token log-probs, as TRL and the IPO authors use them
        count = mask[:, 1:].sum(1)
        lp, ref = lp / count, ref / count
    c, r = lp.chunk(2)
    rc, rr = ref.chunk(2)
    return pref.dpo_loss(c, r, rc, rr, beta, loss_type, eps)


CASES = [("sigmoid", beta, 0.0) for beta in (0.01, 0.1, 0.5, 2.0)] + [
    ("ipo", 0.1, 0.0), ("ipo", 1.0, 0.0), ("robust", 0.1, 0.1), ("robust", 0.5, 0.3)]


@pytest.mark.parametrize("loss_type, beta, eps", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_dpo_loss_rewards_and_gradients_equal_trl(loss_type, beta, eps, seed):
    per_token, mask, ref = random_batch(seed)
    theirs_in = per_token.clone().requires_grad_()
    theirs, metrics = trl_loss(theirs_in, mask, ref, loss_type, beta, eps)
    theirs.backward()
    ours_in = per_token.clone().requires_grad_()
    ref_in = ref.clone().requires_grad_()
    out = ours(ours_in, mask, ref_in, loss_type, beta, eps)
    out["loss"].backward()
    torch.testing.assert_close(out["loss"], theirs.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=1e-7, rtol=1e-6)
    assert ours_in.grad.abs().sum() > 0 and ref_in.grad is None   # the reference is a constant
    if loss_type != "ipo":   # TRL reports IPO's rewards from summed log-probs; ours above are per token
        c, r = out["chosen_rewards"], out["rejected_rewards"]
        assert c.mean().item() == pytest.approx(metrics["rewards/chosen"], abs=1e-6)
        assert r.mean().item() == pytest.approx(metrics["rewards/rejected"], abs=1e-6)
        assert (c - r).mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-6)
        assert pref.reward_accuracy(c, r) == pytest.approx(metrics["rewards/accuracies"])   # no ties here


@pytest.mark.parametrize("beta, eps", [(0.1, 0.1), (0.5, 0.25)])
def test_conservative_dpo_equals_trl_on_each_pair(beta, eps):
    """cDPO, label smoothing on the sigmoid loss: TRL 1.16 keeps its formula in the "aot" loss, which sorts the
    log-ratios across the batch; on a batch of one pair that sort does nothing, so pair by pair it is cDPO."""
    per_token, mask, ref = random_batch(7, B=5)
    out = ours(per_token, mask, ref, "sigmoid", beta, eps)
    B = per_token.size(0) // 2
    for i in range(B):
        rows = [i, B + i]
        theirs, _ = trl_loss(per_token[rows], mask[rows], ref[rows], "aot", beta, eps)
        assert out["losses"][i].item() == pytest.approx(theirs.item(), abs=1e-6)
    plain = ours(per_token, mask, ref, "sigmoid", beta, 0.0)["losses"]
    assert not torch.allclose(out["losses"], plain)   # the smoothing does change the loss


@pytest.mark.parametrize("weight", [0.5, 1.0])
def test_dpo_with_the_sft_term_equals_trl_sigmoid_plus_sft(weight):
    """RPO: TRL's loss_type ["sigmoid", "sft"] with loss_weights [1, w] is the DPO loss plus w times the
    chosen replies' mean negative log-likelihood per token."""
    per_token, mask, ref = random_batch(3, B=5)
    theirs_in = per_token.clone().requires_grad_()
    theirs, _ = trl_loss(theirs_in, mask, ref, "sigmoid", 0.1, 0.0, sft_weight=weight)
    theirs.backward()
    ours_in = per_token.clone().requires_grad_()
    lp = ours_in.sum(1)
    tokens = mask[:, 1:].sum(1)
    loss = ours(ours_in, mask, ref, "sigmoid", 0.1, 0.0)["loss"] + weight * pref.chosen_nll(lp[:5], tokens[:5])
    loss.backward()
    torch.testing.assert_close(loss.detach(), theirs.detach(), atol=1e-6, rtol=1e-6)
    reply = mask[:, 1:].bool()   # the log-probs of reply tokens (elsewhere they are 0 and unused)
    torch.testing.assert_close(ours_in.grad[reply], theirs_in.grad[reply], atol=1e-7, rtol=1e-6)
    assert pref.chosen_nll(lp[:5], tokens[:5]) > 0


def test_untrained_policy_gives_ln2_zero_rewards_and_half_accuracy():
    lp = torch.randn(10) * 5
    out = pref.dpo_loss(lp[:5], lp[5:], lp[:5].clone(), lp[5:].clone(), beta=0.3)
    assert out["loss"].item() == pytest.approx(math.log(2), abs=1e-7)
    assert out["chosen_rewards"].abs().max() == 0 and out["rejected_rewards"].abs().max() == 0
    assert pref.reward_accuracy(out["chosen_rewards"], out["rejected_rewards"]) == 0.5   # ties count one half


def test_bradley_terry_loss_and_accuracy():
    g = torch.Generator().manual_seed(0)
    c, r = torch.randn(50, generator=g), torch.randn(50, generator=g)
    p = 1 / (1 + torch.exp(-(c - r).double()))   # the Bradley-Terry probability, written out
    assert pref.bradley_terry_loss(c, r).item() == pytest.approx(-torch.log(p).mean().item(), rel=1e-6)
    assert pref.bradley_terry_loss(torch.tensor([1000.0]), torch.tensor([0.0])).item() == 0   # no overflow
    assert pref.bradley_terry_loss(torch.tensor([0.0]), torch.tensor([1000.0])).item() == pytest.approx(1000)
    acc = pref.reward_accuracy(c, r)
    assert acc == (c > r).float().mean().item()
    assert pref.reward_accuracy(r, c) == pytest.approx(1 - acc)


def test_bad_settings_say_what_to_use():
    x = torch.zeros(2)
    with pytest.raises(ValueError, match="beta must be positive"):
        pref.dpo_loss(x, x, x, x, beta=0)
    with pytest.raises(ValueError, match="loss_type must be one of"):
        pref.dpo_loss(x, x, x, x, loss_type="hinge")
    with pytest.raises(ValueError, match="0 <= eps < 0.5"):
        pref.dpo_loss(x, x, x, x, label_smoothing=0.5)


# ---- sequence log-probabilities -----------------------------------------------------------------------
def hf_sequence_logprobs(hf, input_ids, labels):
    """The same quantity from HF's logits, written without the course: log-softmax, gather, mask, sum."""
    with torch.no_grad():
        logits = hf(input_ids).logits.float()   # right padding: causal rows never see it
    logp = torch.log_softmax(logits[:, :-1], -1)
    y = labels[:, 1:]
    picked = logp.gather(-1, y.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * (y != IGNORE_INDEX)).sum(-1), (y != IGNORE_INDEX).sum(-1)


@pytest.mark.parametrize("seed", range(5))
def test_sequence_logprobs_equal_hf_on_random_models(seed):
    hf = random_hf(seed)
    model = Llama.from_hf(hf).eval()
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(97, (8, 30), generator=g)
    labels = torch.full_like(ids, IGNORE_INDEX)
    for row in range(8):   # a reply somewhere after the prompt; the rest ignored
        start = int(torch.randint(2, 25, (1,), generator=g))
        end = int(torch.randint(start + 1, 31, (1,), generator=g))
        labels[row, start:end] = ids[row, start:end]
    expected, count = hf_sequence_logprobs(hf, ids, labels)
    batch = {"input_ids": ids, "labels": labels}
    with torch.no_grad():
        fast = pref.sequence_logprobs(model, batch)   # lm_head only at the reply's positions
        full = pref.sequence_logprobs_from_logits(model(ids)[0], labels)
        mean = pref.sequence_logprobs(model, batch, average=True)
    torch.testing.assert_close(fast, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(full, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(mean, expected / count, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


QUESTIONS = [("What is AI?", "ai"), ("Do you like football?", "sports"), ("Tell me a joke", "humor"),
             ("什么是人工智能？", "ai"), ("Who was the first president of the USA?", "history")]


def some_pairs():
    return [pref.Pair(q, t, t, rejected, kind) for (q, t), (rejected, kind) in zip(
        QUESTIONS, [("I am not sure what you mean.", "reply"), ("history", "topic"), ("Why did the chicken?", "reply"),
                    ("science", "topic"), ("George Washington was the first president.", "reply")])]


def test_sequence_logprobs_of_pairs_equal_hf_smollm2(smollm2):
    model, tokenizer = smollm2
    hf = LlamaForCausalLM.from_pretrained(smollm2_dir()).eval()
    encoded = [pref.encode_pair(p, tokenizer) for p in some_pairs()]
    batch = pref.collate_pairs(encoded, tokenizer.pad_token_id)
    with torch.no_grad():
        lp = pref.sequence_logprobs(model, batch)
    expected, count = hf_sequence_logprobs(hf, batch["input_ids"], batch["labels"])
    torch.testing.assert_close(lp, expected, atol=2e-3, rtol=1e-4)
    # the targets are each reply and its <|im_end|>, nothing of the prompt
    _, end = sft.template_ids(tokenizer)
    for (c, r), p, n_c, n_r in zip(encoded, some_pairs(), count[:5], count[5:]):
        assert n_c == len(tokenizer.encode(p.chosen, add_special_tokens=False)) + 1
        assert n_r == len(tokenizer.encode(p.rejected, add_special_tokens=False)) + 1
        assert [t for t in c["labels"] if t != IGNORE_INDEX][-1] == end
    # in batches of 2 pairs (other padding): the same numbers, up to float32 summation order
    torch.testing.assert_close(pref.pair_logprobs(model, tokenizer, some_pairs(), batch_size=2),
                               torch.stack(lp.chunk(2), 1), atol=1e-4, rtol=1e-5)


# ---- the reference ----------------------------------------------------------------------------------
def trained_lora(seed):
    """A Llama with LoRA whose B moved away from zero (a policy after some steps), and a frozen copy of the base."""
    base = Llama.from_hf(random_hf(seed)).eval()
    frozen = copy.deepcopy(base).requires_grad_(False)
    model = apply_lora(base, sft.LORA_TARGETS, r=4, alpha=8)
    randomize_b(model, seed)
    return model, frozen


@pytest.mark.parametrize("seed", range(3))
def test_reference_with_adapters_off_equals_a_frozen_copy(seed):
    model, frozen = trained_lora(seed)
    ids = torch.randint(97, (4, 20))
    labels = ids.clone()
    labels[:, :8] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels}
    with torch.no_grad():
        policy = pref.sequence_logprobs(model, batch)
        with adapters_disabled(model):
            reference = pref.sequence_logprobs(model, batch)
            logits = model(ids)[0]
        assert torch.equal(reference, pref.sequence_logprobs(frozen, batch))
        assert torch.equal(logits, frozen(ids)[0])
        assert torch.equal(pref.sequence_logprobs(model, batch), policy)   # switched back on afterwards
    assert (policy - reference).abs().max() > 1e-3   # the adapters do matter
    assert not any(layer.disabled for layer in lora_layers(model).values())


def test_adapters_come_back_on_after_an_error_and_need_lora():
    model, _ = trained_lora(0)
    with pytest.raises(RuntimeError, match="inside"):
        with adapters_disabled(model):
            raise RuntimeError("inside")
    assert not any(layer.disabled for layer in lora_layers(model).values())
    with pytest.raises(ValueError, match="apply_lora"):
        with adapters_disabled(Llama.from_hf(random_hf(0))):
            pass
    layer = LoRALinear(torch.nn.Linear(4, 4), r=2, alpha=4)
    layer.merge()
    layer.disabled = True
    with pytest.raises(RuntimeError, match="merged"):
        layer(torch.zeros(1, 4))


def test_a_dpo_step_starts_at_ln2_and_moves_only_the_adapters():
    base = Llama.from_hf(random_hf(4)).eval()
    model = apply_lora(base, sft.LORA_TARGETS, r=4, alpha=8)
    ids = torch.randint(97, (6, 16))
    labels = ids.clone()
    labels[:, :6] = IGNORE_INDEX
    batch = {"input_ids": ids, "labels": labels}
    with torch.no_grad(), adapters_disabled(model):
        ref = torch.stack(pref.sequence_logprobs(model, batch).chunk(2), 1)   # (3, 2)
    objective = pref.DPOObjective(model, beta=0.5)
    _, loss = objective(ids, ref, labels)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)   # B = 0: the policy is the reference
    assert objective.last["accuracy"] == 0.5 and objective.last["margin"] == 0
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name
    assert all(layer.lora_B.weight.grad.abs().sum() > 0 for layer in lora_layers(model).values())
    model.zero_grad()
    optimizer = configure_optimizer(model, lr=1e-2, weight_decay=0.0)
    for _ in range(5):
        stats = train_step(objective, optimizer, [({"input_ids": ids, "ref_logps": ref}, labels)], grad_clip=1.0)
    assert stats["loss"] < 0.6 and objective.last["accuracy"] == 1.0 and objective.last["margin"] > 0


def test_train_dpo_needs_lora_and_pairs(smollm2):
    model, tokenizer = smollm2
    with pytest.raises(ValueError, match="apply_lora"):
        pref.train_dpo(model, tokenizer, some_pairs(), pref.PRESETS["quick"])
    tuned = apply_lora(copy.deepcopy(model), sft.LORA_TARGETS, r=2, alpha=4)
    with pytest.raises(ValueError, match="no preference pairs"):
        pref.train_dpo(tuned, tokenizer, [], pref.PRESETS["quick"])
    with pytest.raises(ValueError, match=r"shape \(5, 2\); got \(4, 2\)"):
        pref.train_dpo(tuned, tokenizer, some_pairs(), pref.PRESETS["quick"], reference=torch.zeros(4, 2))


def test_text_kl_is_zero_at_the_start_and_grows_with_the_adapters(smollm2):
    model, tokenizer = smollm2
    text = sft.forgetting_text()
    tuned = apply_lora(copy.deepcopy(model), ("q_proj", "v_proj"), r=2, alpha=4)
    assert pref.text_kl(tuned, tokenizer, text, block=64, blocks=2) == pytest.approx(0, abs=1e-6)
    with torch.no_grad():
        for layer in lora_layers(tuned).values():
            layer.lora_B.weight.normal_(std=0.1)
    kl = pref.text_kl(tuned, tokenizer, text, block=64, blocks=2)
    # torch's KL, from the adapted model and the untouched one (its rows of 64 tokens: the same text)
    rows = torch.tensor(tokenizer.encode(text, add_special_tokens=False)[:128]).view(2, 64)
    with torch.no_grad():
        logp, ref = tuned(rows)[0].log_softmax(-1), model(rows)[0].log_softmax(-1)
    expected = torch.nn.functional.kl_div(ref, logp, log_target=True, reduction="sum") / 128
    assert kl == pytest.approx(expected.item(), rel=1e-3) and kl > 1e-3


# ---- the pairs ------------------------------------------------------------------------------------
def test_greedy_replies_equal_one_prompt_at_a_time(smollm2):
    model, tokenizer = smollm2
    prompts = [sft.topic_messages(q) for q, _ in QUESTIONS] + [[{"role": "user", "content": "Say only yes."}]]
    batched = pref.greedy_replies(model, tokenizer, prompts, max_new_tokens=12, batch_size=3)
    assert batched == [sft.reply(model, tokenizer, p, max_new_tokens=12) for p in prompts]


def test_topic_logprobs_equal_each_reply_scored_alone(smollm2):
    model, tokenizer = smollm2
    questions = [QUESTIONS[0], ("how much do you charge", "money"), ("Do you like football?", "sports")]
    got = pref.topic_logprobs(model, tokenizer, questions, batch_size=1)   # prompts of two lengths, in two batches
    # each pair scores two topics, chosen and rejected: 7 pairs cover the thirteen (the last one twice)
    pairs = [pref.Pair(q, t, TOPICS[i], TOPICS[min(i + 1, len(TOPICS) - 1)], "topic")
             for q, t in questions for i in range(0, len(TOPICS), 2)]
    expected = pref.pair_logprobs(model, tokenizer, pairs).view(3, -1)[:, :len(TOPICS)]   # (3, 13)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    model.train()
    pref.topic_logprobs(model, tokenizer, QUESTIONS[:1])
    assert model.training
    model.eval()


def test_pairs_reject_the_models_own_mistakes_and_split_by_question(smollm2):
    model, tokenizer = smollm2
    splits = sft.conversation_splits()
    questions = sft.topic_questions(splits.test)[:4]
    pairs = pref.build_pairs(model, tokenizer, questions, max_new_tokens=8, wrong_per_question=3)
    assert {p.question for p in pairs} == {q for q, _ in questions}
    for p in pairs:
        assert pref.normalise(p.chosen) == p.topic and pref.normalise(p.rejected) != p.topic and p.rejected
        if p.kind == "topic":   # the same spelling on both sides: case and a period tell nothing
            assert pref.normalise(p.rejected) in TOPICS
            spelling = [(x[0].isupper(), x.endswith(".")) for x in (p.chosen, p.rejected)]
            assert spelling[0] == spelling[1]
    for q, _ in questions:   # three different wrong topics per question
        wrong = [pref.normalise(p.rejected) for p in pairs if p.question == q and p.kind == "topic"]
        assert len(wrong) == len(set(wrong)) == 3
    assert [p.rejected for p in pairs] == [p.rejected for p in pref.build_pairs(model, tokenizer, questions, 8, 3)]
    train, held_out = pref.question_splits({"train_questions": None, "eval_questions": None})
    assert not {q for q, _ in train} & {q for q, _ in held_out}
    assert len(held_out) >= 100 and len(train) >= 250
    balanced, _ = pref.question_splits({"train_questions": 64, "train_per_topic": 5, "eval_questions": 8})
    assert max(Counter(t for _, t in balanced).values()) == 5 and len(balanced) >= 60


def test_wrong_topics_are_drawn_from_the_models_distribution(smollm2, monkeypatch):
    """Every wrong topic the model gives no probability is never drawn; the likelier ones are drawn more."""
    model, tokenizer = smollm2
    questions = [(f"question {i}", "food") for i in range(60)]
    logps = torch.full((60, len(TOPICS)), -float("inf"))
    likely = {"ai": 0.0, "money": -1.0, "sports": -3.0}
    for t, v in likely.items():
        logps[:, TOPICS.index(t)] = v
    logps[:, TOPICS.index("food")] = 5.0   # the right topic is never a rejected one, however likely
    monkeypatch.setattr(pref, "topic_logprobs", lambda *a, **k: logps)
    monkeypatch.setattr(pref, "greedy_replies", lambda m, t, prompts, *a, **k: ["food"] * len(prompts))
    pairs = pref.build_pairs(model, tokenizer, questions, wrong_per_question=1)
    assert all(p.kind == "topic" for p in pairs)   # the reply was right: no reply pair
    counts = Counter(pref.normalise(p.rejected) for p in pairs)
    assert set(counts) <= set(likely) and counts["ai"] > counts["money"] > counts["sports"]


def test_reply_shares_and_unseen_rejections():
    assert pref.most_common_share(["AI", "ai", "food"][i].lower() for i in range(3)) == ("ai", 2 / 3)
    assert pref.most_common_share([]) == (None, 0.0)
    train = [pref.Pair("q1", "food", "food", "sports", "topic"), pref.Pair("q1", "food", "food", "I eat.", "reply")]
    held = [pref.Pair("q2", "food", "Food.", "Sports.", "topic"), pref.Pair("q2", "food", "food", "money", "topic"),
            pref.Pair("q3", "money", "money", "sports", "topic"), pref.Pair("q2", "food", "food", "Yum", "reply")]
    assert pref.unseen_rejections(train, held) == [False, True, True, False]


# ---- the reward model --------------------------------------------------------------------------------
def test_reward_model_learns_held_out_pairs_and_swapping_flips_its_accuracy():
    encoder, tokenizer = load_minilm()
    torch.manual_seed(0)
    rm = pref.reward_model_from(encoder)
    splits = sft.conversation_splits()
    train = [pref.Pair(q, t, t, f"I think this is about something other than {t}.", "reply")
             for q, t in sft.topic_questions(splits.train)[:48]]
    held = [pref.Pair(q, t, t, f"Let me tell you a long story about {q.lower()}", "reply")
            for q, t in sft.topic_questions(splits.test)[:24]]
    p = {**pref.PRESETS["quick"], "rm_steps": 25, "rm_batch": 8, "rm_lr": 1e-4}
    before = pref.reward_accuracy(*pref.reward_scores(rm, tokenizer, held, 48))
    log = pref.train_reward_model(rm, tokenizer, train, p)
    c, r = pref.reward_scores(rm, tokenizer, held, 48)
    after = pref.reward_accuracy(c, r)
    assert log[-1]["loss"] < log[0]["loss"] and after >= 0.9 > before
    swapped = [pref.Pair(x.question, x.topic, x.rejected, x.chosen, x.kind) for x in held]
    sc, sr = pref.reward_scores(rm, tokenizer, swapped, 48)
    assert pref.reward_accuracy(sc, sr) == pytest.approx(1 - after)
    torch.testing.assert_close(sc, r)   # the same replies get the same rewards, whichever side they are on


# ---- the command line ---------------------------------------------------------------------------------
def test_command_line_writes_a_peft_adapter_and_results(tmp_path):
    results = pref.main(["--preset", "quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["before"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert saved["before"]["accuracy"] == 0.5
    assert saved["after"]["loss"] == results["after"]["loss"] != saved["before"]["loss"]
    assert {"format", "correct", "prompts", "forgetting_loss", "kl_general_text"} <= set(saved["after"])
    assert len(saved["log"]) == pref.PRESETS["quick"]["steps"] and saved["seconds_per_step"] > 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(sft.LORA_TARGETS) and config["r"] == pref.PRESETS["quick"]["rank"]
