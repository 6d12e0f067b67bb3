"""Chapter 11: the GRPO loss, its KL and gradients against TRL's own GRPOTrainer code, group advantages against
TRL's formula, left-padded batched generation against one prompt at a time and against Hugging Face's generate,
completion log-probs against a plain forward, pass@k against brute-force enumeration, the rewards on tricky
replies, the Wilson interval against scipy, and the command line."""

import copy
import itertools
import json
import math
import re
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from scipy.stats import binomtest
from transformers import LlamaForCausalLM
from trl import GRPOTrainer
from trl.trainer.utils import nanstd

from llmscratch import rl, sft
from llmscratch.llama import Llama, load_smollm2
from llmscratch.lora import apply_lora, load_adapter, lora_layers
from test_sft import random_hf


# ---- the loss against TRL ---------------------------------------------------------------------------
def random_rollout(seed, N=8, L=11):
    """Per-token log-probs of the policy, the sampling policy and the reference (N, L), a completion mask whose
    rows end at different lengths (one row is a single token), and advantages (N,)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, L + 1, (N,), generator=g)
    lengths[0] = 1
    mask = (torch.arange(L)[None] < lengths[:, None]).long()
    old = -torch.rand(N, L, generator=g) * 3
    logps = old + torch.randn(N, L, generator=g) * 0.3      # a few inner updates away: some ratios leave the band
    ref = old + torch.randn(N, L, generator=g) * 0.2
    advantages = torch.randn(N, generator=g)
    return logps, old, ref, mask, advantages


def trl_grpo_loss(logps, old, ref, mask, advantages, loss_type, beta, eps_low, eps_high, max_length):
    """TRL 1.16's GRPOTrainer._compute_loss with a stand-in for the model's forward that returns these log-probs:
    its own code clips, adds the KL, aggregates and logs; only the Trainer's plumbing is faked."""
    N, L = mask.shape
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **kw: (logps, torch.zeros_like(logps), None),
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        loss_type=loss_type, beta=beta, epsilon_low=eps_low, epsilon_high=eps_high, use_vllm=False,
        args=SimpleNamespace(delta=None, use_bias_correction_kl=False, steps_per_generation=1),
        _entropy_bonus_enabled=False, aux_loss_enabled=False, max_completion_length=max_length,
        current_gradient_accumulation_steps=1, model=SimpleNamespace(training=True),
        accelerator=SimpleNamespace(num_processes=1, reduce=lambda x, reduction: x, gather=lambda x: x,
                                    gather_for_metrics=lambda x: x),
        _metrics=defaultdict(lambda: defaultdict(list)))
    inputs = {"prompt_ids": torch.zeros(N, 3, dtype=torch.long), "prompt_mask": torch.ones(N, 3, dtype=torch.long),
              "completion_ids": torch.zeros(N, L, dtype=torch.long), "completion_mask": mask,
              "advantages": advantages, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": mask.sum()}
    loss = GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
@pytest.mark.parametrize("beta,eps_high", [(0.0, None), (0.04, None), (0.1, 0.28)])
def test_grpo_loss_kl_and_gradients_equal_trl(aggregation, beta, eps_high):
    for seed in range(5):
        logps, old, ref, mask, adv = random_rollout(seed)
        ours_in, theirs_in = logps.clone().requires_grad_(), logps.clone().requires_grad_()
        high = 0.2 if eps_high is None else eps_high
        theirs, metrics = trl_grpo_loss(theirs_in, old, ref, mask, adv, aggregation, beta, 0.2, high, 11)
        out = rl.grpo_loss(ours_in, old, adv, mask, ref if beta else None, beta, 0.2, eps_high, aggregation, 11)
        torch.testing.assert_close(out["loss"], theirs, atol=1e-6, rtol=1e-6)
        theirs.backward()
        out["loss"].backward()
        torch.testing.assert_close(ours_in.grad, theirs_in.grad, atol=1e-7, rtol=1e-6)
        assert ours_in.grad[mask == 0].abs().max() == 0   # padding after the end token gets no gradient
        assert out["clip_fraction"] == pytest.approx(metrics["clip_ratio/region_mean"], abs=1e-6)
        assert 0 < out["clip_fraction"] < 1              # the test exercises the clip on both sides
        if beta:
            assert out["kl"] == pytest.approx(metrics["kl"], abs=1e-6)


def test_on_policy_grpo_is_reinforce_with_a_group_baseline():
    """With old = the policy itself (one inner update) the ratio is 1 and nothing is clipped: the gradient of each
    token's log-prob is -A / (its row's length) / N (GRPO's aggregation), and the loss is -mean(A)."""
    logps, _, _, mask, adv = random_rollout(3)
    x = logps.clone().requires_grad_()
    out = rl.grpo_loss(x, x.detach(), adv, mask)
    out["loss"].backward()
    expected = -adv[:, None] / mask.sum(-1, keepdim=True) / mask.shape[0] * mask
    torch.testing.assert_close(x.grad, expected)
    assert out["loss"].item() == pytest.approx(-adv.mean().item(), abs=1e-6) and out["clip_fraction"] == 0


@pytest.mark.parametrize("aggregation", rl.AGGREGATIONS)
def test_scoring_only_informative_rows_gives_the_whole_batchs_gradient(aggregation):
    """train_grpo skips rows of advantage 0 when there is no KL term: batch_share scales their loss back."""
    logps, old, _, mask, adv = random_rollout(4, N=12)
    adv[::3] = 0
    full_in, sub_in = logps.clone().requires_grad_(), logps.clone().requires_grad_()
    full = rl.grpo_loss(full_in, old, adv, mask, aggregation=aggregation, max_length=11)["loss"]
    rows = (adv != 0).nonzero()[:, 0]
    part = rl.grpo_loss(sub_in[rows], old[rows], adv[rows], mask[rows], aggregation=aggregation, max_length=11)["loss"]
    part = part * rl.batch_share(aggregation, mask[rows], mask)
    torch.testing.assert_close(part, full)
    full.backward()
    part.backward()
    torch.testing.assert_close(sub_in.grad, full_in.grad)


def test_grpo_loss_refuses_what_it_cannot_compute():
    logps, old, ref, mask, adv = random_rollout(0)
    with pytest.raises(ValueError, match="aggregation"):
        rl.grpo_loss(logps, old, adv, mask, aggregation="mean")
    with pytest.raises(ValueError, match="ref_logps"):
        rl.grpo_loss(logps, old, adv, mask, beta=0.1)
    with pytest.raises(ValueError, match="max_length"):
        rl.grpo_loss(logps, old, adv, mask, aggregation="dr_grpo")


def test_k3_is_a_nonnegative_unbiased_kl_estimate():
    torch.manual_seed(0)
    p_logits, q_logits = torch.randn(50), torch.randn(50)
    logp, logq = p_logits.log_softmax(-1), q_logits.log_softmax(-1)
    exact = (logp.exp() * (logp - logq)).sum()                                    # KL(p || q)
    y = torch.multinomial(logp.exp(), 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    k3 = rl.k3_kl(logp[y], logq[y])
    assert k3.min() >= 0
    assert k3.mean().item() == pytest.approx(exact.item(), rel=0.03)
    assert rl.k3_kl(logp, logp).abs().max() == 0


# ---- advantages -------------------------------------------------------------------------------------
def test_group_advantages_equal_trls_formula():
    g = torch.Generator().manual_seed(0)
    for G in (2, 4, 8):
        rewards = torch.randint(0, 3, (5 * G,), generator=g).float() * 0.5
        rewards[:G] = 1.0                                                           # one group all alike
        grouped = rewards.view(-1, G)
        std = nanstd(grouped, dim=1).repeat_interleave(G)                           # TRL's own std
        mean = grouped.mean(1).repeat_interleave(G)
        adv, zero = rl.group_advantages(rewards, G)
        torch.testing.assert_close(adv, (rewards - mean) / (std + 1e-4))
        unscaled, _ = rl.group_advantages(rewards, G, scale=False)
        torch.testing.assert_close(unscaled, rewards - mean)
        assert torch.equal(zero, torch.isclose(std, torch.zeros_like(std)))
        assert zero[:G].all() and adv[:G].abs().max() == 0
        for k in range(5):   # per group, not over the batch: each group's advantages sum to 0
            assert adv[k * G:(k + 1) * G].sum().abs() < 1e-4


def test_group_advantages_refuse_a_ragged_batch():
    with pytest.raises(ValueError, match="groups of 4"):
        rl.group_advantages(torch.ones(6), 4)


# ---- pass@k -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_brute_force_enumeration(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert rl.pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)
            assert rl.pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)


def test_pass_at_k_on_large_n_and_bad_arguments():
    assert rl.pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100), rel=1e-9)
    assert rl.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    for n, c, k in ((4, 5, 1), (4, 1, 0), (4, 1, 5)):
        with pytest.raises(ValueError):
            rl.pass_at_k(n, c, k)


def test_wilson_interval_equals_scipy():
    for n in (1, 10, 200):
        for k in sorted({0, 1, n // 3, n}):
            lo, hi = binomtest(k, n).proportion_ci(0.95, method="wilson")
            assert rl.confidence_interval(k, n) == pytest.approx((lo, hi), abs=1e-3)


# ---- rewards on hand-written replies --------------------------------------------------------------------
@pytest.mark.parametrize("reply,answer,expected_answer,formatted", [
    ("Answer: 12", 12, 12, False),                              # right, but no working before the answer line
    ("7 + 5 = 12.\nAnswer: 12.", 12, 12, True),                 # a trailing period
    ("First 3, then 4, so 7 in all.\nAnswer: 7", 7, 7, True),   # several numbers: the one after Answer:
    ("Answer: 5\nWait, no. Answer: 6", 6, 6, False),            # the last Answer wins; the last line is not "Answer: N"
    ("There are 8 apples left.", 8, 8, False),                  # right, but not in format
    ("Answer: twelve", 12, None, False),                        # a number in words is no answer
    ("I don't know.", 3, None, False),                          # no number at all
    ("The total is 1,000.\nAnswer: 1,000", 1000, 1000, False),  # the thousands comma is read, not formatted
    ("Answer: 2.5", 2, None, False),                            # a decimal is never a whole-number answer
    ("answer : 9", 9, 9, False),                                # extraction is lenient, the format is not
    ("2 - 6 = -4\n\nAnswer: -4", -4, -4, True),
    ("", 0, None, False),
])
def test_rewards_on_tricky_replies(reply, answer, expected_answer, formatted):
    assert rl.extract_answer(reply) == expected_answer
    assert rl.follows_format(reply) is formatted
    correct = float(expected_answer == answer)
    assert rl.correctness_reward(reply, answer) == correct
    assert rl.reward(reply, answer) == correct + rl.FORMAT_REWARD * formatted


def test_evaluation_problems_share_no_operands_with_training_and_the_transfer_kind_is_never_trained():
    """Held out in numbers, not only in wording: no (kind, operands) of the evaluation set occurs in training, for
    any training seed; the transfer kind is never trained on, and its operands are the bare sums' held-out ones."""
    by_kind = {"sum": lambda a, b: a + b, "left": lambda a, b: a - b, "times": lambda a, b: a * b,
               "more": lambda a, b: a + b}
    transfer = rl.transfer_set(120)
    for seed in (0, 1, 2):
        train, held = rl.problem_sets(3000, 240, train_seed=seed)
        trained = {(p.kind, p.operands) for p in train}
        assert len({(p.kind, p.operands) for p in held}) == len(held) == 240
        assert not trained & {(p.kind, p.operands) for p in held}
        assert {p.kind for p in train} == set(rl.TRAINED) and rl.TRANSFER not in rl.TRAINED
        assert not {("sum", p.operands) for p in transfer} & trained
        for p in train + held + transfer:   # the stated answer is the question's, computed here independently
            numbers = tuple(int(x) for x in re.findall(r"\d+", p.question))
            assert numbers == p.operands and p.answer == by_kind[p.kind](*numbers) and p.answer >= 0
    assert {p.kind for p in transfer} == {rl.TRANSFER} and len({p.operands for p in transfer}) == 120
    assert [p.question for p in rl.problem_sets(300, 240)[1]] == [p.question for p in held]   # seeded
    with pytest.raises(ValueError, match="evaluation operand tuples"):
        rl.problem_sets(10, 10_000)


def test_completion_mask_keeps_the_end_token_and_nothing_after():
    c = torch.tensor([[5, 6, 2, 2, 2], [5, 2, 7, 2, 9], [5, 6, 7, 8, 9]])
    assert rl.completion_mask(c, 2).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


# ---- batched generation and log-probs -----------------------------------------------------------------------
def test_left_padded_generation_equals_hugging_face_and_one_row_at_a_time():
    """A random Hugging Face Llama and the course's copy of it: greedy continuations of prompts of different
    lengths, left-padded in one batch, equal HF's generate with the same mask and each prompt alone."""
    for seed in range(3):
        hf = random_hf(seed)
        ours = Llama.from_hf(hf).eval()
        g = torch.Generator().manual_seed(seed)
        rows = [torch.randint(3, 97, (int(n),), generator=g).tolist() for n in torch.randint(1, 12, (5,), generator=g)]
        ids, mask = rl.left_pad(rows, 0)
        out = ours.generate(ids, 10, temperature=0, attention_mask=mask)[:, ids.shape[1]:]
        theirs = hf.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(out, theirs[:, ids.shape[1]:])
        for b, row in enumerate(rows):
            alone = ours.generate(torch.tensor([row]), 10, temperature=0)[0, len(row):]
            assert torch.equal(out[b], alone)


def test_num_samples_reads_each_prompt_once_and_samples_as_repeated_prompts_do():
    """generate(..., num_samples=n) prefills each prompt once and copies its KV cache: greedy and sampled tokens
    (the same generator) equal those of the prompts repeated n times (float64: no rounding differences)."""
    for seed in range(2):
        ours = Llama.from_hf(random_hf(seed)).double().eval()
        g = torch.Generator().manual_seed(seed)
        rows = [torch.randint(3, 97, (int(n),), generator=g).tolist() for n in torch.randint(1, 12, (3,), generator=g)]
        ids, mask = rl.left_pad(rows, 0)
        for temperature in (0, 1.0):
            kw = dict(temperature=temperature, eos_token_id=2)
            shared = ours.generate(ids, 9, attention_mask=mask, num_samples=4,
                                   generator=torch.Generator().manual_seed(5), **kw)
            repeated = ours.generate(ids.repeat_interleave(4, 0), 9, attention_mask=mask.repeat_interleave(4, 0),
                                     generator=torch.Generator().manual_seed(5), **kw)
            assert torch.equal(shared, repeated)
            if temperature:
                assert len({tuple(r.tolist()) for r in shared}) > 3                     # really sampled
    with pytest.raises(ValueError, match="num_samples"):
        ours.generate(ids, 2, num_samples=0)


def test_attention_mask_of_the_wrong_shape_is_refused():
    model = Llama.from_hf(random_hf(0)).eval()
    ids = torch.randint(97, (2, 5))
    with pytest.raises(ValueError, match="idx's shape"):
        model.generate(ids, 2, attention_mask=torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="cached ones included"):
        model(ids, attention_mask=torch.ones(2, 6, dtype=torch.long))


def test_completion_logprobs_equal_hugging_face_and_a_plain_forward():
    hf = random_hf(1)
    ours = Llama.from_hf(hf).eval()
    g = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (3, 9, 5, 1)]
    ids, mask = rl.left_pad(rows, 0)
    completions = torch.randint(3, 97, (4, 7), generator=g)
    completions[1, 2] = completions[2, 6] = 2                                        # rows 1 and 2 end early
    r = rl.Rollouts(ids, mask, completions, rl.completion_mask(completions, 2), [""] * 4, 2)
    with torch.no_grad():
        lp, entropy = rl.completion_logprobs(ours, r, entropy=True)
        torch.testing.assert_close(rl.completion_logprobs(hf, r), lp, atol=1e-5, rtol=0)
        for b, row in enumerate(rows):
            n = int(r.completion_mask[b].sum())
            seq = torch.tensor([row + completions[b, :n].tolist()])
            logp = ours(seq)[0][0, len(row) - 1:-1].log_softmax(-1)                      # (n, vocab)
            torch.testing.assert_close(lp[b, :n], logp.gather(-1, seq[0, len(row):, None])[:, 0], atol=1e-5, rtol=0)
            torch.testing.assert_close(entropy[b, :n], -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=0)
            assert (lp[b, n:] == 0).all()


@pytest.fixture(scope="module")
def smollm2():
    return load_smollm2()


def test_smollm2_batched_sampling_equals_one_prompt_at_a_time(smollm2):
    model, tokenizer = smollm2
    _, held = rl.problem_sets(0, 12)
    r = rl.sample(model, tokenizer, [p.messages for p in held], 1, 24, temperature=0)
    assert len({int(m.sum()) for m in r.prompt_mask}) > 1                            # really of different lengths
    assert r.texts == [sft.reply(model, tokenizer, p.messages, 24) for p in held]
    with torch.no_grad():
        lp = rl.completion_logprobs(model, r)
    for b in range(0, 12, 3):
        prompt = r.prompt_ids[b][r.prompt_mask[b].bool()]
        n = int(r.completion_mask[b].sum())
        seq = torch.cat([prompt, r.completion_ids[b, :n]])[None]
        with torch.no_grad():
            logp = model(seq)[0][0, len(prompt) - 1:-1].log_softmax(-1)
        torch.testing.assert_close(lp[b, :n], logp.gather(-1, seq[0, len(prompt):, None])[:, 0], atol=1e-4, rtol=0)


# ---- the run and the command line -----------------------------------------------------------------------------
def test_train_grpo_needs_lora_and_a_group(smollm2):
    model, tokenizer = smollm2
    train, _ = rl.problem_sets(4, 0)
    with pytest.raises(ValueError, match="apply_lora"):
        rl.train_grpo(model, tokenizer, train, rl.PRESETS["quick"])


def test_micro_batches_make_the_update_of_the_whole_batch(monkeypatch, smollm2):
    """An update in micro-batches of one rollout (gradients added up) has the gradients of the whole batch at once
    (each inner update's, recorded by plain SGD without clipping: AdamW would hide a wrong scale) and reports the
    same loss and KL. DAPO's loss, normalised by the batch's tokens, with a KL term: every micro-batch has its own
    share of the tokens, and rows of advantage 0 are scored too."""
    import llmscratch.train
    grads = []

    class Recorder(torch.optim.SGD):
        def step(self):
            grads[-1].append([q.grad.clone() for g in self.param_groups for q in g["params"]])
            super().step()

    monkeypatch.setattr(llmscratch.train, "configure_optimizer", lambda model, lr, weight_decay: Recorder(
        [q for q in model.parameters() if q.requires_grad], lr=lr))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: None)
    train, _ = rl.problem_sets(8, 0)
    p = dict(rl.PRESETS["quick"], steps=1, temperature=1.0, aggregation="dapo", beta=0.04, inner_updates=2)
    logs = []
    for micro_batch in (None, 1):
        model, tokenizer = copy.deepcopy(smollm2[0]), smollm2[1]
        torch.manual_seed(0)   # the same initial adapters
        apply_lora(model, sft.LORA_TARGETS, p["rank"], p["alpha"])
        for layer in lora_layers(model).values():
            torch.nn.init.normal_(layer.lora_B.weight, std=0.01)   # B = 0 would leave the KL at 0
        grads.append([])
        # a reward that splits most groups (the parity of the reply's length), whatever the model gets right
        logs.append(rl.train_grpo(model, tokenizer, train, p, micro_batch=micro_batch,
                                  reward_fn=lambda reply, answer: float(len(reply) % 2))[0])
    assert logs[0]["zero_variance"] < 1, "every group scored alike: no update to compare"
    whole, micro = grads
    assert len(whole) == len(micro) == 2 and any(g.abs().max() > 0 for g in whole[0])
    for w, m in zip(whole, micro):   # each inner update
        for gw, gm in zip(w, m):
            torch.testing.assert_close(gm, gw, atol=1e-4 * gw.abs().max().item(), rtol=1e-3)   # float sums' order
    for key in ("loss", "kl", "clip_fraction", "entropy"):
        assert logs[1][key] == pytest.approx(logs[0][key], rel=1e-4, abs=1e-6), key   # the loss is near 0


def test_command_line_writes_a_peft_adapter_and_results(tmp_path):
    results = rl.main(["--preset", "quick", "--out", str(tmp_path), "--beta", "0.04"])
    saved = json.loads((tmp_path / "results.json").read_text())
    p = rl.PRESETS["quick"]
    assert saved["after"] == json.loads(json.dumps(results["after"]))   # what was printed is what was saved
    assert saved["before"]["problems"] == p["eval_problems"]
    assert saved["transfer_before"]["problems"] == saved["transfer_after"]["problems"] == p["transfer_problems"]
    for r in (saved["before"], saved["after"], saved["transfer_after"]):
        # extract_answer reads the answer line, else the last number: it is right whenever the line is
        assert r["answer_line"] <= r["accuracy"] and set(r["by_kind"]) <= {*rl.TRAINED, rl.TRANSFER}
    assert len(saved["log"]) == p["steps"] and saved["beta"] == 0.04
    for s in saved["log"]:
        assert {"reward", "accuracy", "format", "zero_variance", "length", "kl", "clip_fraction", "entropy",
                "seconds_generation", "seconds_update"} <= set(s)
        assert 0 <= s["zero_variance"] <= 1
        # the KL is measured on the rows that were scored; a step of only zero-variance groups scores none
        assert (s["kl"] is None) == (s["zero_variance"] == 1 and saved["beta"] == 0) and (s["kl"] is None or s["kl"] >= 0)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == sorted(sft.LORA_TARGETS) and config["r"] == p["rank"]
    model, tokenizer = load_smollm2()
    load_adapter(model, tmp_path / "adapter")   # the saved adapter reproduces the evaluation that was printed
    _, eval_set = rl.problem_sets(p["train_problems"], p["eval_problems"])
    again = rl.evaluate(model, tokenizer, eval_set, p["max_new_tokens"])
    assert [e["after"] for e in saved["examples"]] == again["replies"][:p["shown"]]
    assert again["accuracy"] == saved["after"]["accuracy"] and again["format"] == saved["after"]["format"]


def test_answer_line_examples_keep_right_replies_and_write_the_line_under_them(monkeypatch, smollm2):
    """The long preset's second stage: right replies (by their last number) kept, the verifier's answer line
    written under those without one, a reply already in the format kept as it is, wrong ones dropped."""
    model, tokenizer = smollm2
    problems = [rl.Problem("What is 2 + 3?", 5, "sum", (2, 3)), rl.Problem("What is 4 x 2?", 8, "times", (4, 2))]
    texts = ["2 + 3 = 5", "2 + 3 = 6", "Adding them:\nAnswer: 5", "4 x 2 = 8.", "I do not know", "4 x 2 = 9"]

    def fake_sample(model, tokenizer, prompts, group_size, *args, **kwargs):
        assert group_size == 3 and len(prompts) == 2
        return SimpleNamespace(texts=texts, group_size=group_size)

    monkeypatch.setattr(rl, "sample", fake_sample)
    p = {**rl.PRESETS["quick"], "format_samples": 3}
    examples = rl.answer_line_examples(model, tokenizer, problems, p)
    replies = [tokenizer.decode([t for t in e["labels"] if t != sft.IGNORE_INDEX], skip_special_tokens=True)
               for e in examples]
    assert replies == ["2 + 3 = 5\nAnswer: 5", "Adding them:\nAnswer: 5", "4 x 2 = 8.\nAnswer: 8"]
    assert all(rl.follows_format(r) for r in replies)
