"""Chapter 12: log-likelihoods, rolling perplexities, multiple-choice metrics and their standard errors against
EleutherAI's lm-evaluation-harness itself: its HFLM over Hugging Face's LlamaForCausalLM with SmolLM2's weights,
its own tokenization helpers, and simple_evaluate on a task given as local YAML + JSONL; the statistics against
scipy."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch
from lm_eval import simple_evaluate
from lm_eval.api.instance import Instance
from lm_eval.api.metrics import bits_per_byte, weighted_perplexity
from lm_eval.api.model import TemplateLM
from lm_eval.api.task import Task
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from scipy.stats import binomtest
from transformers import AutoTokenizer, LlamaForCausalLM

from llmscratch import evaluation as ev
from llmscratch import sft
from llmscratch.evaluation.harness import HarnessLM
from llmscratch.llama import load_smollm2, smollm2_dir

MAX_LENGTH = 64   # a short context for both, so that rolling documents span several windows


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    course, tokenizer = load_smollm2("cpu")
    hf_tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    hf = LlamaForCausalLM.from_pretrained(smollm2_dir(), torch_dtype=torch.float32).eval()
    harness = HFLM(pretrained=hf, tokenizer=hf_tokenizer, batch_size=8, max_length=MAX_LENGTH, device="cpu")
    lm = ev.from_hf_tokenizer(course.eval(), tokenizer, max_length=MAX_LENGTH, batch_size=8)
    return lm, harness, tokenizer


def text_requests(n=40, seed=0):
    """(context, continuation) pairs cut from real prose (Python's reference): some contexts end in a space, one
    is empty, continuations of one to a few words."""
    words = sft.forgetting_text().split()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        start = rng.randrange(len(words) - 40)
        context = " ".join(words[start:start + rng.randint(3, 30)])
        continuation = " " + " ".join(words[start + 30:start + 30 + rng.randint(1, 4)])
        if i % 5 == 1:   # the space at the end of the context, not the start of the continuation
            context, continuation = context + " ", continuation[1:]
        out.append((context, continuation))
    return out + [("", "The"), ("", " import"), ("Paris is the capital of", " France")]


def instances(kind, args):
    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def test_rolling_windows_equal_the_harness():
    for max_length in (1, 2, 3, 7, 16):
        for n in range(0, 40):
            tokens = list(range(100, 100 + n))
            theirs = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 7, max_length, 1)]
            ours = ev.rolling_windows(tokens, 7, max_length)
            assert [(inp[:len(inp) - len(t) + 1], t) for inp, t in ours] == [(list(a), list(b)) for a, b in theirs]
            assert sum(len(t) for _, t in ours) == n and all(len(inp) <= max_length for inp, _ in ours)


def test_context_and_continuation_split_as_the_harness_splits_them(models):
    lm, _, tokenizer = models
    captured = []
    fake = SimpleNamespace(backend="causal", prefix_token_id=lm.prefix_token_id,
                           tok_encode=lambda s, add_special_tokens=None: tokenizer.encode(s, add_special_tokens=False),
                           _loglikelihood_tokens=lambda reqs, **k: captured.extend(reqs) or [])
    fake._encode_pair = lambda c, x: TemplateLM._encode_pair(fake, c, x)
    requests = text_requests(60) + [("Answer:  ", "42"), ("价格", "便宜"), ("x", " y z")]
    TemplateLM.loglikelihood(fake, instances("loglikelihood", requests), disable_tqdm=True)
    assert [(c, x) for _, c, x in captured] == [ev.encode_pair(lm, c, x) for c, x in requests]
    with pytest.raises(ValueError, match="continuation is empty"):
        ev.encode_pair(lm, "context", "")


def test_loglikelihoods_and_is_greedy_equal_hflm(models):
    lm, harness, tokenizer = models
    requests = text_requests()
    # continuations the model would write itself: is_greedy must be True for them, and equal
    for context in ("The import statement", "def f(x):\n    return", "Python is a programming"):
        ids = tokenizer.encode(context, add_special_tokens=False)
        new = lm.model.generate(torch.tensor([ids]), 3, temperature=0)[0, len(ids):].tolist()
        requests.append((context, tokenizer.decode(new)))
    with pytest.raises(ValueError, match="truncate=True"):   # some contexts are longer than 64 tokens
        ev.loglikelihood(lm, requests)
    ours = ev.loglikelihood(lm, requests, truncate=True)      # their start cut, as the harness cuts it
    theirs = harness.loglikelihood(instances("loglikelihood", requests), disable_tqdm=True)
    diff = max(abs(a[0] - b[0]) for a, b in zip(ours, theirs))
    assert diff <= 1e-4, f"max |log-likelihood difference| {diff}"
    assert [a[1] for a in ours] == [b[1] for b in theirs]
    assert sum(a[1] for a in ours) >= 3 and not all(a[1] for a in ours)


def test_rolling_loglikelihoods_and_perplexities_equal_hflm(models):
    lm, harness, _ = models
    text = sft.forgetting_text()
    docs = [text[i:i + n] for i, n in ((0, 900), (5000, 1500), (9000, 60), (20000, 2))]
    ours = ev.loglikelihood_rolling(lm, docs)
    theirs = harness.loglikelihood_rolling(instances("loglikelihood_rolling", [(d,) for d in docs]), disable_tqdm=True)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-3   # sums over hundreds of tokens
    scores = ev.perplexities(ours, docs)   # the harness's own aggregations of (log-likelihood, words or bytes)
    words = [(lp, Task.count_words(d)) for lp, d in zip(theirs, docs)]
    nbytes = [(lp, Task.count_bytes(d)) for lp, d in zip(theirs, docs)]
    assert scores["word_perplexity"] == pytest.approx(weighted_perplexity(words), rel=1e-5)
    assert scores["byte_perplexity"] == pytest.approx(weighted_perplexity(nbytes), rel=1e-5)
    assert scores["bits_per_byte"] == pytest.approx(bits_per_byte(nbytes), rel=1e-5)


def write_task(folder, items, name="course_mc"):
    (folder / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (folder / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{context}}\"\n"
        "doc_to_choice: \"{{choices}}\"\ndoc_to_target: \"{{gold}}\"\ntarget_delimiter: \" \"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return name


def topic_items(n=24, seed=0):
    """Chapter 09's topic task as four choices: the right topic and three others, in a seeded order."""
    rng = random.Random(seed)
    out = []
    for q, t in sft.topic_questions(sft.conversation_splits().test)[:n]:
        choices = rng.sample([x for x in sft.TOPICS if x != t], 3) + [t]
        rng.shuffle(choices)
        out.append({"context": f"Question: {q}\nTopic:", "choices": choices, "gold": choices.index(t)})
    return out


def test_multiple_choice_accuracy_and_stderr_equal_simple_evaluate(models, tmp_path):
    lm, harness, _ = models
    items = topic_items()
    name = write_task(tmp_path, items)
    results = simple_evaluate(model=harness, tasks=[name], task_manager=TaskManager(include_path=str(tmp_path)),
                              bootstrap_iters=1, log_samples=False)["results"][name]
    rows = []
    for item in items:
        lls = [lp for lp, _ in ev.loglikelihood(lm, [(item["context"], " " + c) for c in item["choices"]])]
        rows.append(ev.multiple_choice(lls, item["choices"], item["gold"]))
    for metric in ("acc", "acc_norm"):
        scores = [r[metric] for r in rows]
        assert sum(scores) / len(scores) == pytest.approx(results[f"{metric},none"], abs=1e-9)
        assert ev.mean_stderr(scores) == pytest.approx(results[f"{metric}_stderr,none"], rel=1e-9)
    # and the harness run on the course model through the adapter gives the same numbers
    ours = simple_evaluate(model=HarnessLM(lm), tasks=[name], task_manager=TaskManager(include_path=str(tmp_path)),
                           bootstrap_iters=1, log_samples=False)["results"][name]
    for key in ("acc,none", "acc_norm,none", "acc_stderr,none"):
        assert ours[key] == pytest.approx(results[key], abs=1e-9)


def test_fewshot_contexts_equal_the_harness(models, tmp_path):
    lm, harness, _ = models
    items, pool = topic_items(12), topic_items(30, seed=1)[12:]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(x) + "\n" for x in pool))
    name = write_task(tmp_path, items, "course_fewshot")
    yaml = tmp_path / f"{name}.yaml"
    yaml.write_text(yaml.read_text().replace("    test:", f"    train: {tmp_path / 'train.jsonl'}\n    test:")
                    + "training_split: train\nfewshot_split: train\n")
    out = simple_evaluate(model=harness, tasks=[name], task_manager=TaskManager(include_path=str(tmp_path)),
                          num_fewshot=3, fewshot_random_seed=1234, bootstrap_iters=0, log_samples=True, limit=4)
    theirs = [s["arguments"][0][0] for s in out["samples"][name]]   # (context, continuation) per choice
    examples = [(x["context"], x["choices"][x["gold"]]) for x in pool]
    ours = ev.fewshot_contexts([x["context"] for x in items[:4]], examples, 3, seed=1234)
    assert theirs == ours
    with pytest.raises(ValueError, match="the pool has"):
        ev.fewshot_contexts(["q"], examples[:2], 3)


def test_generation_and_exact_match_equal_hflm(models, tmp_path):
    """generate_until: greedy, cut at the first stop string; exact_match of simple_evaluate (the reply's last
    number) on small sums, scored by the harness, for HFLM and for the course model through the adapter."""
    lm, harness, tokenizer = models
    rng = random.Random(0)
    items = [{"question": f"Question: What is {a} plus {b}?\nAnswer:", "answer": str(a + b)}
             for a, b in ((rng.randint(1, 20), rng.randint(1, 9)) for _ in range(8))]
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (tmp_path / "course_gen.yaml").write_text(
        f"task: course_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {tmp_path / 'items.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: \"{{question}}\"\ndoc_to_target: \"{{answer}}\"\n"
        "generation_kwargs:\n  until: [\"\\n\"]\n  do_sample: false\n  max_gen_toks: 10\n"
        "filter_list:\n  - name: strip\n    filter:\n      - function: regex\n"
        "        regex_pattern: \"(-?[0-9]+)\"\n        group_select: -1\n      - function: take_first\n"
        "metric_list:\n  - metric: exact_match\n")
    adapter = HarnessLM(lm, decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
                        end_token_id=tokenizer.eos_token_id)
    runs = {}
    for name, model in (("hflm", harness), ("course", adapter)):
        runs[name] = simple_evaluate(model=model, tasks=["course_gen"], bootstrap_iters=1, log_samples=True,
                                     task_manager=TaskManager(include_path=str(tmp_path)))
    texts = {k: [s["resps"][0][0] for s in r["samples"]["course_gen"]] for k, r in runs.items()}
    assert texts["course"] == texts["hflm"] and len(set(texts["hflm"])) > 3
    theirs, ours = (runs[k]["results"]["course_gen"] for k in ("hflm", "course"))
    assert ours["exact_match,strip"] == theirs["exact_match,strip"] > 0


def test_multiple_choice_metrics_on_ties_lengths_and_bad_input():
    # a tie goes to the first choice, as numpy's argmax in the harness
    assert ev.multiple_choice([-1.0, -1.0], ["a", "b"], 0)["acc"] == 1.0
    assert ev.multiple_choice([-1.0, -1.0], ["a", "b"], 1)["acc"] == 0.0
    # per character: a long right choice is not penalised for its length
    r = ev.multiple_choice([-4.0, -3.0], ["a long answer", "no"], 0, token_counts=[4, 1], unconditional=[-9.0, -1.0])
    assert (r["acc"], r["acc_norm"], r["acc_bytes"], r["acc_per_token"], r["acc_mutual_info"]) == (0, 1, 1, 1, 1)
    # log-probs near -100 and below: no inf, no NaN
    assert ev.multiple_choice([-1e4, -100.0], ["x", "y"], 1)["acc"] == 1.0
    with pytest.raises(ValueError, match="gold must index"):
        ev.multiple_choice([-1.0], ["a"], 1)


def test_statistics():
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(400, generator=g) < 0.3).double()
    assert ev.mean_stderr(x) == pytest.approx(x.std().item() / 20)
    lo, hi = ev.bootstrap_interval(x)
    assert lo < x.mean().item() < hi and hi - lo == pytest.approx(2 * 1.96 * ev.mean_stderr(x), rel=0.1)
    a = (torch.rand(300, generator=g) < 0.6).tolist()
    b = [ai if torch.rand(1, generator=g) < 0.8 else not ai for ai in a]
    m = ev.mcnemar(a, b)
    n = m["only_a"] + m["only_b"]
    assert m["p_value"] == pytest.approx(binomtest(m["only_a"], n, 0.5).pvalue, rel=1e-9)
    assert ev.mcnemar([True] * 5, [True] * 5)["p_value"] == 1.0
    same = ev.paired_bootstrap(x, x)
    assert same["difference"] == 0 and same["interval"] == (0.0, 0.0)
    better = ev.paired_bootstrap(torch.ones(50), torch.zeros(50))
    assert better["difference"] == 1 and better["p_value"] == 0
    assert ev.centred(0.25, 0.25) == 0 and ev.centred(1.0, 0.5) == 1
    with pytest.raises(ValueError, match="same items"):
        ev.paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="at least 2"):
        ev.mean_stderr([1.0])


# ---- contamination ------------------------------------------------------------------------------------------
def brute_force_share(item, documents, n, chinese=False):
    """The share of the item's n-grams that occur inside one document, by searching each document's unit string."""
    sep = "" if chinese else " "
    grams = ev.contamination.ngrams(item, n, chinese)
    docs = [f"{sep}{sep.join(ev.contamination.units(d, chinese))}{sep}" for d in documents]
    hits = sum(any(f"{sep}{sep.join(g)}{sep}" in d for d in docs) for g in grams)
    return hits / len(grams) if grams else 0.0


def test_ngram_overlap_equals_brute_force_search():
    text = sft.forgetting_text()
    paragraphs = [p for p in text.split("\n\n") if len(p.split()) > 30]
    training, unseen = paragraphs[:40], paragraphs[40:60]
    items = []
    for p in training[:10] + unseen[:10]:   # copied, half-copied, lower-cased with punctuation changed
        words = p.split()
        items += [p, " ".join(words[:len(words) // 2] + ["novel"] * 20), p.upper().replace(".", ";")]
    items += ["too short to match", ""]
    for n in (5, 13):
        table = ev.contamination.corpus_ngrams(training, n)
        got = ev.contamination.overlap(items, table, n)
        assert got == pytest.approx([brute_force_share(x, training, n) for x in items])
        assert got[0] == 1 and got[2] == 1 and 0 < got[1] < 1 and got[-1] == got[-2] == 0
        assert max(got[30:60]) < 0.2   # paragraphs never trained on
    # an n-gram across the end of one document and the start of the next is not in the corpus
    assert ev.contamination.overlap(["c d e"], ev.contamination.corpus_ngrams(["a b c d", "e f g"], 3), 3) == [0.0]
    # Chinese: n-grams of characters, punctuation and spaces ignored
    zh = ev.contamination.corpus_ngrams(["这家宾馆的服务很好，早餐也不错。"], 4, chinese=True)
    assert ev.contamination.overlap(["服务很好 早餐", "房间太小了"], zh, 4, chinese=True) == [1.0, 0.0]
    with pytest.raises(ValueError, match="at least 1"):
        ev.contamination.ngrams("a b", 0)


# ---- one scale for every course model: bits per byte ----------------------------------------------------------
def test_a_bigram_table_and_a_gpt_are_scored_by_the_same_code():
    """Chapter 00's bigram (a table) and a course GPT, each with the course's BPE, both through loglikelihood_rolling:
    the bigram's log-likelihood equals chapter 00's bigram_nll on the same ids (the prefix token first), the GPT's
    equals its own cross-entropy on a text within one window, and across windows every token is scored once."""
    from llmscratch.bigram import BigramLM, bigram_counts, bigram_nll, counts_to_probs
    from llmscratch.gpt import GPT, GPTConfig
    from llmscratch.tokenizers import BPETokenizer

    text = sft.forgetting_text()
    tokenizer = BPETokenizer.train(text[:20000], 300, special_tokens=["<|endoftext|>"])
    eot = tokenizer.special_tokens["<|endoftext|>"]
    train = torch.tensor(tokenizer.encode(text[:20000]))
    probs = counts_to_probs(bigram_counts(train, tokenizer.vocab_size))
    docs = [text[20000:21500], text[30000:30700]]
    bigram = ev.LanguageModel(BigramLM(probs), tokenizer.encode, eot, max_length=16)
    for doc, lp in zip(docs, ev.loglikelihood_rolling(bigram, docs)):
        ids = torch.tensor([eot] + tokenizer.encode(doc))
        assert lp == pytest.approx(-bigram_nll(probs, ids) * (len(ids) - 1), rel=1e-5)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    lm = ev.from_course_bpe(gpt, tokenizer)
    short = text[35000:35040]
    ids = torch.tensor([[eot] + tokenizer.encode(short)])
    assert 10 < len(ids[0]) <= 33   # one window
    with torch.no_grad():
        loss = gpt(ids[:, :-1], ids[:, 1:])[1].item()
    assert ev.loglikelihood_rolling(lm, [short])[0] == pytest.approx(-loss * (ids.shape[1] - 1), rel=1e-5)
    wide = ev.loglikelihood_rolling(ev.from_course_bpe(gpt, tokenizer, max_length=8), docs)
    assert all(math.isfinite(x) and x < 0 for x in wide)
    scores = {name: ev.perplexities(ev.loglikelihood_rolling(m, docs), docs)["bits_per_byte"]
              for name, m in (("bigram", bigram), ("untrained GPT", lm))}
    assert scores["bigram"] < scores["untrained GPT"]   # a trained table beats random weights, on one scale
