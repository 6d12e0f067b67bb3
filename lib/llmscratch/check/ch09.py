"""Checks for chapter 09, instruction tuning and LoRA. Oracles: the library's assistant_labels and collate (tested on
SmolLM2's template), its LoRALinear (proven equal to peft's), chapter 05's train_step, and its rouge_l (proven equal
to rouge-score)."""

import copy
import random

import torch
import torch.nn as nn

from .. import metrics, sft
from ..llama import Llama, LlamaConfig
from ..lora import LoRALinear, apply_lora
from ..train import train_step
from .core import CheckFailed, close, exercise, expect, expect_tensor, explain_runtime_error, run_refusing

IGNORE = sft.IGNORE_INDEX
# A toy ChatML vocabulary: <|im_start|> = 1, <|im_end|> = 2, "\n" = 3, the role names 4 (system), 5 (user),
# 6 (assistant); words are 10 and up.
START, END, NL, ROLE = 1, 2, 3, {"system": 4, "user": 5, "assistant": 6}
HEADER = [START, ROLE["assistant"], NL]


def _toy_conversation(rng, turns, system=True, cut=None):
    ids = []
    roles = (["system"] if system else []) + [("user", "assistant")[i % 2] for i in range(turns)]
    for role in roles:
        ids += [START, ROLE[role], NL] + [rng.randrange(10, 60) for _ in range(rng.randrange(1, 6))] + [END, NL]
    return ids[:cut] if cut else ids


# ---- assistant_labels --------------------------------------------------------------------------------
def _label_mistakes(ids):
    right = sft.assistant_labels(ids, HEADER, END)
    replies = [t if t != END else IGNORE for t in right]
    headers = right[:]
    for i in range(len(ids) - 2):
        if ids[i:i + 3] == HEADER:
            headers[i:i + 3] = HEADER
    first_only, seen = right[:], False
    for i, t in enumerate(right):
        if t == END and not seen:
            seen = True
        elif seen:
            first_only[i] = IGNORE
    newline = [ids[i] if right[i - 1] == END and i > 0 else right[i] for i in range(len(ids))]
    return {
        "every token is a target: that trains the model to write the system and user turns too. Only the "
        "assistant's replies (and the <|im_end|> that closes each) are targets; the rest is IGNORE_INDEX": list(ids),
        "the <|im_end|> after each reply is not a target: then the model never learns to stop and rambles on "
        "into a new turn. Keep the end token of every assistant reply as a target": replies,
        "the assistant header (<|im_start|>assistant\\n) is a target: it is the template's, the prompt already "
        "ends with it. Targets start right after the header": headers,
        "only the first reply is a target: a conversation can have several assistant turns, label each": first_only,
        "the newline after <|im_end|> is a target: it belongs to the template, not to the reply": newline,
    }


@exercise("assistant_labels")
def assistant_labels(fn):
    rng = random.Random(9)
    cases = [_toy_conversation(rng, 2), _toy_conversation(rng, 4), _toy_conversation(rng, 3, system=False),
             _toy_conversation(rng, 6)]
    cases.append(_toy_conversation(rng, 4, cut=len(cases[1]) - 4))   # truncated in the middle of a reply
    cases.append([START, ROLE["user"], NL, 11, 12, END, NL])           # no reply at all
    cases.append([START, ROLE["user"], NL, 6, NL, 12, END, NL, START, ROLE["assistant"], NL, 13, 6, 3, END, NL])
    for ids in cases:
        given = list(ids)
        got = run_refusing(fn, (given, list(HEADER), END), {sft.assistant_labels: (
            "the library's assistant_labels is this exercise's answer: write the scan yourself")})
        expect(given == ids, "assistant_labels changed the ids it was given: build a new list of labels instead")
        if torch.is_tensor(got):
            got = got.tolist()
        expect(isinstance(got, (list, tuple)) and len(got) == len(ids),
               f"expected a list of {len(ids)} labels (one per token), got {type(got).__name__} "
               f"of length {len(got) if hasattr(got, '__len__') else '?'}")
        got = [int(t) for t in got]
        expected = sft.assistant_labels(ids, HEADER, END)
        if got != expected:
            wrong_ignore = [t for t in got if t not in ids and t != IGNORE]
            expect(not wrong_ignore, f"ignored positions must hold IGNORE_INDEX = {IGNORE} (what cross_entropy skips), "
                                     f"found {sorted(set(wrong_ignore))}")
            for message, wrong in _label_mistakes(ids).items():
                expect(got != wrong, message)
            first = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
            raise CheckFailed(f"for the ids {ids}\nexpected labels {expected}\ngot             {got}\n"
                              f"first difference at position {first} (token {ids[first]})")
    return f"{len(cases)} conversations: several replies, no system message, a cut reply, no reply"


# ---- LoRALinear ----------------------------------------------------------------------------------------
@exercise("lora_linear")
def lora_linear(cls):
    expect(not (isinstance(cls, type) and issubclass(cls, LoRALinear)),
           "this is (a subclass of) the library's LoRALinear, the exercise's answer: write the class yourself")
    g = torch.Generator().manual_seed(4)
    for in_f, out_f, r, alpha in ((16, 24, 4, 8.0), (32, 8, 2, 16.0), (12, 12, 8, 4.0)):
        base = nn.Linear(in_f, out_f, bias=True)
        with torch.no_grad():
            base.weight.copy_(torch.randn(out_f, in_f, generator=g) * 0.3)
            base.bias.copy_(torch.randn(out_f, generator=g))
        w0 = base.weight.detach().clone()
        torch.manual_seed(0)
        layer = cls(base, r=r, alpha=alpha)
        expect(isinstance(layer, nn.Module), f"LoRALinear(...) must be an nn.Module, got {type(layer).__name__}")
        for part, shape in (("lora_A", (r, in_f)), ("lora_B", (out_f, r))):
            sub = getattr(layer, part, None)
            expect(isinstance(sub, nn.Linear) and tuple(sub.weight.shape) == shape,
                   f"layer.{part} must be an nn.Linear (no bias) with weight of shape {shape} (peft's names and "
                   f"layout: A maps in -> r, B maps r -> out); got {sub!r}")
        x = torch.randn(3, 5, in_f, generator=g)
        with torch.no_grad():
            at_start = run_refusing(layer, (x,), {LoRALinear.forward: "the library's LoRALinear is the answer: "
                                                  "write forward yourself"})
        expect(torch.is_tensor(at_start) and at_start.shape == (3, 5, out_f),
               f"forward must return a tensor of shape (3, 5, {out_f}), got {getattr(at_start, 'shape', at_start)!r}")
        expect(torch.allclose(at_start, base(x), atol=1e-6),
               "at creation the layer already changes the output: B must start at zero (nn.init.zeros_), so that "
               "step 0 is exactly the pretrained model; a random B adds noise to every layer before any training")
        expect(layer.lora_A.weight.abs().sum() > 0,
               "A is all zeros: with A = 0 and B = 0 both gradients are zero and LoRA never learns. A starts random "
               "(nn.init.kaiming_uniform_, as any Linear), B at zero")
        trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
        expect(not any(p.requires_grad for p in base.parameters()),
               f"the base layer's weights are still trainable ({sorted(trainable)}): freeze them with "
               "base_layer.requires_grad_(False); LoRA trains A and B only")
        expect(trainable == {"lora_A.weight", "lora_B.weight"},
               f"the trainable parameters must be exactly lora_A.weight and lora_B.weight (Linear layers with "
               f"bias=False), got {sorted(trainable)}")
        with torch.no_grad():
            layer.lora_B.weight.copy_(torch.randn(out_f, r, generator=g))
            got = layer(x)
        a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
        low_rank = x @ a.T @ b.T
        expected = base(x) + alpha / r * low_rank
        with torch.no_grad():
            for message, wrong in {
                f"the update is scaled by r / alpha = {r / alpha:g}; LoRA scales by alpha / r = {alpha / r:g}, so "
                "that changing r keeps the update's size": base(x) + r / alpha * low_rank,
                f"the update is not scaled: multiply B(A(x)) by alpha / r = {alpha / r:g}": base(x) + low_rank,
                "the base layer's output is missing: LoRA adds its update to base_layer(x), the frozen pretrained "
                "output": alpha / r * low_rank,
            }.items():
                expect(not (close(got, wrong, atol=1e-4) and not torch.allclose(wrong, expected, atol=1e-4)), message)
        expect_tensor(got, expected, f"LoRALinear(in={in_f}, out={out_f}, r={r}, alpha={alpha}) with B random",
                      atol=1e-4, rtol=1e-4)
        expect(torch.equal(base.weight, w0), "forward changed the base weight: W stays frozen, add the update to "
                                             "the output instead")
        layer(x).sum().backward()
        expect(layer.lora_B.weight.grad is not None and layer.lora_A.weight.grad is not None,
               "A and B must receive gradients: is the update computed with torch.no_grad() or .detach()?")
    return "B = 0 at start, alpha / r scaling, only A and B trainable, 3 shapes"


# ---- merge ----------------------------------------------------------------------------------------------
@exercise("merged_weight")
def merged_weight(fn):
    g = torch.Generator().manual_seed(5)
    for in_f, out_f, r, alpha in ((16, 24, 4, 8.0), (10, 6, 2, 32.0), (8, 8, 8, 8.0)):
        base = nn.Linear(in_f, out_f, bias=False)
        layer = LoRALinear(base, r=r, alpha=alpha)
        with torch.no_grad():
            layer.lora_B.weight.copy_(torch.randn(out_f, r, generator=g))
        w0 = base.weight.detach().clone()
        advice = lambda err: f"shapes do not fit ({err}): the update is B @ A, (out, r) @ (r, in) = (out, in), W's shape"
        with explain_runtime_error("must match", advice), explain_runtime_error("cannot be multiplied", advice):
            got = run_refusing(fn, (layer,), {LoRALinear.delta_weight: "the library's delta_weight is the answer: "
                                              "compute the update yourself", LoRALinear.merge: (
                                              "the library's merge is the answer: compute the merged weight yourself")})
        expect(torch.equal(base.weight, w0), "merged_weight changed the layer's weight: return a new tensor "
                                             "(W + update) and leave the layer as it is")
        a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
        expected = w0 + alpha / r * b @ a
        if torch.is_tensor(got) and got.shape == expected.shape and not torch.allclose(got, expected, atol=1e-5):
            expect(not close(got, w0 + b @ a, 1e-5) or alpha == r,
                   f"the merge forgot the scale: W + (alpha / r) * B @ A, here alpha / r = {alpha / r:g}; without it "
                   "the merged model differs from the adapter")
            expect(not close(got, w0 + r / alpha * b @ a, 1e-5), "the scale is r / alpha; it is alpha / r")
            expect(not close(got, w0 - alpha / r * b @ a, 1e-5), "the update is added to W, not subtracted")
        expect_tensor(got, expected, f"merged_weight (in={in_f}, out={out_f}, r={r}, alpha={alpha})", atol=1e-5)
        x = torch.randn(2, in_f, generator=g)
        with torch.no_grad():
            expect_tensor(x @ got.T, layer(x), "a Linear with the merged weight vs the adapter", atol=1e-4)
    return "W + (alpha / r) B A gives the adapter's outputs, 3 shapes"


# ---- the SFT step ---------------------------------------------------------------------------------------
def _tiny_lora_model(seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Llama(LlamaConfig(vocab_size=64, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                  intermediate_size=48))
        with torch.no_grad():   # weights 5x their init: confident logits, gradient norms above 1, so clipping shows
            for p in model.parameters():
                p.mul_(5.0)
        apply_lora(model, ("q_proj", "v_proj"), r=4, alpha=8)
        for layer in model.modules():
            if isinstance(layer, LoRALinear):
                nn.init.normal_(layer.lora_B.weight, std=0.05)   # as if trained a little: every gradient non-zero
    return model


def _toy_examples(seed, n=4):
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        ids = _toy_conversation(rng, rng.choice([2, 4]))
        examples.append({"input_ids": ids, "labels": sft.assistant_labels(ids, HEADER, END)})
    return examples


def _mistaken_losses(model, examples, pad_id):
    batch = sft.collate(examples, pad_id)
    ids, labels = batch["input_ids"], batch["labels"]
    by_value = ids.masked_fill(ids == pad_id, IGNORE)
    by_value = torch.where(labels == IGNORE, IGNORE, by_value)
    with torch.no_grad():
        loss = lambda x, y: model(x, y)[1].item()
        return {
            "the loss comes out as if every <|im_end|> were padding: padding was masked by value (labels[ids == "
            "pad_id] = ignore), and with pad = eos that hides each reply's end too. Mask padding by position "
            "(the attention_mask, or each example's length), as collate does": loss(ids[:, :-1], by_value[:, 1:]),
            "the labels were not shifted: the logits at position t predict the token at t + 1, so compare "
            "logits[:, :-1] with labels[:, 1:] (or call model(x, y) with x = ids[:, :-1], y = labels[:, 1:])":
                loss(ids, labels),
            "the loss counts every token, prompts included: use the examples' labels (IGNORE_INDEX outside the "
            "replies), not the input ids": loss(ids[:, :-1], torch.where(batch["attention_mask"][:, 1:] == 1,
                                                                         ids[:, 1:], IGNORE)),
        }


@exercise("make_optimizer")
def make_optimizer(fn):
    model = _tiny_lora_model(0)
    optimizer = fn(model, 3e-4)
    expect(isinstance(optimizer, torch.optim.Optimizer), f"make_optimizer must return a torch.optim optimizer, "
                                                          f"got {type(optimizer).__name__}")
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    lora = {id(p) for n, p in model.named_parameters() if "lora_" in n}
    expect(lora <= held, "the optimizer is missing LoRA's A and B matrices: build it from the model after "
                         "apply_lora, with the parameters that require grad")
    expect(held <= lora, "the optimizer holds frozen weights too: give it only the parameters with requires_grad "
                         "(the point of LoRA: optimizer state for A and B only)")
    expect(isinstance(optimizer, torch.optim.AdamW), f"expected AdamW (torch.optim.AdamW), got {type(optimizer).__name__}")
    expect(all(group["lr"] == 3e-4 for group in optimizer.param_groups),
           f"make_optimizer(model, lr=3e-4) must use that learning rate, got {[g['lr'] for g in optimizer.param_groups]}")
    return f"AdamW over {len(held)} tensors, all of them LoRA's"


@exercise("sft_step")
def sft_step(step_fn):
    lr, pad_id = 0.5, END   # SmolLM2's case: the pad token is the end token
    model = _tiny_lora_model(0)
    # The step itself, with plain SGD so that the reference is exact: the course's collate and train_step.
    reference = copy.deepcopy(model)
    sgd = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    ref_sgd = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=lr)
    lora_names = {n for n, _ in model.named_parameters() if "lora_" in n}
    for step in range(2):
        examples = _toy_examples(step)
        mistakes = _mistaken_losses(model, examples, pad_id)
        expected_loss = train_step(reference, ref_sgd, [sft.shifted(sft.collate(examples, pad_id))], grad_clip=1.0)["loss"]
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        unclipped = copy.deepcopy(model)   # what a step without clipping would give, to name that mistake
        train_step(unclipped, torch.optim.SGD([p for p in unclipped.parameters() if p.requires_grad], lr=lr),
                   [sft.shifted(sft.collate(examples, pad_id))], grad_clip=None)
        try:
            got = run_refusing(step_fn, (model, sgd, copy.deepcopy(examples), pad_id), {
                sft.collate: "the library's collate is part of this exercise: pad the batch yourself",
                sft.shifted: "the library's shifted is part of this exercise: shift the labels yourself",
                train_step: "chapter 05's train_step does this exercise's work: write the step yourself"})
        except AttributeError as err:
            if "'tuple' object" in str(err):
                raise CheckFailed(f"{err}: the model returns (logits, loss); take the loss with "
                                  "_, loss = model(ids[:, :-1], labels[:, 1:])") from err
            raise
        expect(isinstance(got, float), f"sft_step must return the loss as a float (loss.item()), got {type(got).__name__}")
        for message, wrong in mistakes.items():
            expect(abs(got - wrong) > 1e-4 or abs(wrong - expected_loss) < 1e-4, message)
        expect(abs(got - expected_loss) < 1e-4, f"step {step + 1}: loss {got:.5f}, expected {expected_loss:.5f} "
                                                "(mean cross-entropy over the target tokens of the padded batch; padded "
                                                "positions of the labels must be IGNORE_INDEX)")
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        expect(changed, "no weight changed: call optimizer.step() after loss.backward()")
        expect(changed <= lora_names, f"frozen weights changed: {sorted(changed - lora_names)[:3]}")
        target, free = dict(reference.named_parameters()), dict(unclipped.named_parameters())
        clipping_mattered = not all(torch.allclose(target[n], free[n], atol=1e-6) for n in target)
        expect(not (clipping_mattered and all(torch.allclose(p, free[n], atol=1e-6) for n, p in model.named_parameters())),
               "the gradients were not clipped: call torch.nn.utils.clip_grad_norm_(trainable parameters, 1.0) "
               "between backward() and optimizer.step(); one bad batch can otherwise throw the adapter far off")
        for n, p in model.named_parameters():
            if not torch.allclose(p, target[n], atol=1e-5):
                raise CheckFailed(f"after step {step + 1}, {n} differs from the reference step (zero the old gradients, "
                                  "backward, clip the gradient norm to 1.0, optimizer.step())" +
                                  (": did the gradients of step 1 stay in (optimizer.zero_grad())?" if step else ""))
    return "loss on reply tokens only, pad = eos handled, gradients clipped, a LoRA-only optimizer, 2 steps"


# ---- ROUGE-L --------------------------------------------------------------------------------------------
def _rouge_mistakes(c, r):
    cw, rw = metrics.rouge_tokenize(c), metrics.rouge_tokenize(r)

    def prf(match, nc, nr):
        if not match or not nc or not nr:
            return (0.0, 0.0, 0.0)
        p, q = match / nc, match / nr
        return (p, q, 2 * p * q / (p + q))

    overlap = sum(min(cw.count(w), rw.count(w)) for w in set(cw))
    substring = max([0] + [k for i in range(len(cw)) for j in range(len(rw))
                           for k in range(1, min(len(cw) - i, len(rw) - j) + 1) if cw[i:i + k] == rw[j:j + k]])
    lcs = metrics.lcs_length(cw, rw)
    raw = lambda text: text.split()
    right = prf(lcs, len(cw), len(rw))
    return {
        "that counts shared words in any order (ROUGE-1); ROUGE-L is the longest common SUBSEQUENCE: shared words "
        "in the same order, gaps allowed": prf(overlap, len(cw), len(rw)),
        "that is the longest common substring (no gaps); ROUGE-L's subsequence may skip words in between":
            prf(substring, len(cw), len(rw)),
        "precision and recall are swapped: precision = LCS / len(candidate), recall = LCS / len(reference)":
            (right[1], right[0], right[2]),
        "f1 is the plain mean of precision and recall; it is their harmonic mean, 2 P R / (P + R)":
            (right[0], right[1], (right[0] + right[1]) / 2),
        "the words were not normalised: lower-case the text and treat everything but a-z and 0-9 as a space "
        "(rouge-score's tokenizer), so that 'Paris.' and 'paris' match":
            prf(metrics.lcs_length(raw(c), raw(r)), len(raw(c)), len(raw(r))),
    }


ROUGE_PAIRS = [("the cat sat on the mat", "the cat is on the mat"),
               ("Paris is the capital of France.", "The capital of France is Paris."),
               ("I like to read books about history", "I read history books"),
               ("yes", "Yes, I do."), ("no idea", "I have no idea at all, sorry"),
               ("a b c d e", "e d c b a"), ("", "something"), ("the the the", "the cat"),
               ("The model wrote this reply, and that one.", "this reply and that one the model wrote"),
               ("snake_case names", "snake case names"), ("中文 text", "text")]   # "_" and non-ASCII are spaces


@exercise("rouge_l")
def rouge_l(fn):
    for c, r in ROUGE_PAIRS:
        try:
            got = run_refusing(fn, (c, r), {metrics.rouge_l: "the library's rouge_l is this exercise's answer: write it "
                                            "yourself", metrics.lcs_length: "the library's lcs_length is part of the "
                                            "answer: write the dynamic programme yourself"})
        except ZeroDivisionError as err:
            raise CheckFailed(f"rouge_l({c!r}, {r!r}) divided by zero: when the LCS is 0 (or one side has no words) "
                              "return 0.0 for precision, recall and f1") from err
        expect(isinstance(got, dict) and {"precision", "recall", "f1"} <= set(got),
               f"rouge_l must return a dict with precision, recall and f1, got {got!r}")
        got_t = tuple(float(got[k]) for k in ("precision", "recall", "f1"))
        want = metrics.rouge_l(c, r)
        want_t = tuple(want[k] for k in ("precision", "recall", "f1"))
        if max(abs(a - b) for a, b in zip(got_t, want_t)) > 1e-9:
            for message, wrong in _rouge_mistakes(c, r).items():
                expect(max(abs(a - b) for a, b in zip(got_t, wrong)) > 1e-9, message)
            raise CheckFailed(f"rouge_l({c!r}, {r!r}): expected {want}, got {got}")
    return f"{len(ROUGE_PAIRS)} pairs equal to rouge-score's ROUGE-L"
