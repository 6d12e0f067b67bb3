"""The grading round trip, for real: nbgrader's generate_assignment, autograde and generate_feedback (its API, in the
test's process) on a throw-away course per chapter.

Three submissions per chapter: the solution (full marks; one of its answers also writes to stderr, as students'
code does: a debug print, a logging warning, a progress bar), the untouched student notebook (zero, without
crashing; its ungraded code cells other than the setup are emptied, see `untouched`) and a student who made one
typical mistake, broke two more exercises and then deleted one test cell and emptied another (partial marks: the
mistake is caught, and the original tests still run and catch both broken answers). In chapters 02 and 03 the
mistake and the tampering together would break every exercise, so there they are two separate submissions. Every
submission runs the notebook as autograding does (cells tagged skip-when-grading skipped), 3-12 s of CPU each;
then every chapter's feedback is written and searched for hidden-test code. tests/test_instructor.py runs the
`nbgrader` commands themselves, as the README gives them.
"""

import html.parser
import re
import shutil
import time
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook

from llmscratch.llama import smollm2_dir
from tools.release import ROOT

SOLUTION_BLOCK = re.compile(r"^[ \t]*### (BEGIN|END) SOLUTION[ \t]*\n", re.MULTILINE)
HIDDEN = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.DOTALL)

# Per chapter: the grade_id of a solution cell, what a typical wrong answer puts in it, and the
# test cells it must fail. Then the tampering case: two answers broken and their tests removed.
CASES = {
    "00_language_models": {
        "mistake": ("softmax", "def softmax(x, dim=-1):\n    e = x.exp()  # no max subtracted: overflows\n"
                               "    return e / e.sum(dim=dim, keepdim=True)\n", {"test_softmax"}),
        "tamper": {
            "broken": {"counts_to_probs": "def counts_to_probs(counts, smoothing=1.0):\n    return counts.float()\n",
                       "cross_entropy": "def cross_entropy(logits, targets):\n    return logits.sum() * 0\n"},
            "deleted": "test_counts_to_probs",
            "emptied": "test_cross_entropy",
        },
    },
    "01_tokenizers": {
        # Merges applied by frequency in the text instead of by learned rank.
        "mistake": ("encode", "def encode(text, merges):\n    ids = []\n"
                              "    for piece in regex.findall(GPT2_PATTERN, text):\n"
                              "        tokens = list(piece.encode('utf-8'))\n"
                              "        while True:\n"
                              "            counts = pair_counts(tokens)\n"
                              "            known = [p for p in counts if p in merges]\n"
                              "            if not known:\n"
                              "                break\n"
                              "            pair = max(known, key=lambda p: counts[p])\n"
                              "            tokens = merge(tokens, pair, merges[pair])\n"
                              "        ids.extend(tokens)\n"
                              "    return ids\n", {"test_encode"}),
        "tamper": {
            "broken": {"decode": "def decode(ids, vocab):\n    return ''.join(vocab[i].decode('utf-8') for i in ids)\n",
                       "greedy_longest_match": "def greedy_longest_match(word, vocab):\n    return [word]\n"},
            "deleted": "test_decode",
            "emptied": "test_greedy_longest_match",
        },
    },
    "02_embeddings_and_positions": {
        # sin and cos swapped between even and odd columns.
        "mistake": ("sinusoidal", "def sinusoidal(T, d):\n    t = torch.arange(T, dtype=torch.float32)[:, None]\n"
                                  "    freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float32) / d)\n"
                                  "    pe = torch.zeros(T, d)\n    pe[:, 0::2] = torch.cos(t * freq)\n"
                                  "    pe[:, 1::2] = torch.sin(t * freq)\n    return pe\n", {"test_sinusoidal"}),
        "tamper": {
            "broken": {"sinusoidal": "def sinusoidal(T, d):\n    return torch.zeros(T, d)\n",
                       "apply_rope": "def apply_rope(x, cos, sin):\n    return x\n"},
            "deleted": "test_sinusoidal",
            "emptied": "test_apply_rope",
        },
    },
    "03_attention": {
        # The mask applied after the softmax.
        "mistake": ("attention", "def attention(q, k, v, mask=None):\n"
                                 "    w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)\n"
                                 "    if mask is not None:\n"
                                 "        w = w * mask if mask.dtype == torch.bool else w * mask.exp()\n"
                                 "    return w @ v\n", {"test_attention", "test_mha_forward"}),  # mha uses it
        "tamper": {
            "broken": {"causal_mask": "def causal_mask(T):\n    return torch.ones(T, T, dtype=torch.bool)\n",
                       "padding_mask": "def padding_mask(attention_mask):\n    return attention_mask.bool()\n"},
            "deleted": "test_causal_mask",
            "emptied": "test_padding_mask",
        },
    },
    "04_gpt": {
        # Top-p that drops the token crossing the threshold.
        "mistake": ("top_p_filter", "def top_p_filter(logits, p):\n"
                                    "    sorted_logits, order = torch.sort(logits, descending=True, dim=-1)\n"
                                    "    drop = sorted_logits.softmax(-1).cumsum(-1) > p\n"
                                    "    return logits.masked_fill(drop.scatter(-1, order, drop), float('-inf'))\n",
                    {"test_top_p_filter"}),
        "tamper": {
            "broken": {"layer_norm": "def layer_norm(x, weight, bias, eps=1e-5):\n    return x\n",
                       "attend_with_cache": "def attend_with_cache(q, k_new, v_new, k_cache, v_cache):\n"
                                            "    return v_new, k_cache, v_cache\n"},
            "deleted": "test_layer_norm",
            "emptied": "test_attend_with_cache",
        },
    },
    "05_pretraining": {
        # Warmup that starts at 0: step 0 learns nothing.
        "mistake": ("lr_at", "def lr_at(step, max_lr, warmup_steps, total_steps, min_lr=0.0):\n"
                             "    if step < warmup_steps:\n        return max_lr * step / warmup_steps\n"
                             "    if step >= total_steps:\n        return min_lr\n"
                             "    progress = (step - warmup_steps) / (total_steps - warmup_steps)\n"
                             "    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))\n",
                    {"test_lr_at"}),
        "tamper": {
            "broken": {"get_batch": "def get_batch(tokens, batch_size, block_size, generator=None):\n"
                                    "    x = torch.zeros(batch_size, block_size, dtype=torch.long)\n    return x, x\n",
                       "evaluate": "def evaluate(model, batches):\n    return {'loss': 0.0, 'perplexity': 1.0}\n"},
            "deleted": "test_get_batch",
            "emptied": "test_evaluate",
        },
    },
    "06_bert": {
        # Mean pooling that averages the padding in.
        "mistake": ("mean_pool", "def mean_pool(hidden, attention_mask):\n    return hidden.mean(dim=1)\n",
                    {"test_mean_pool"}),
        "tamper": {
            "broken": {"mask_tokens": "def mask_tokens(ids, special_mask, mask_id, vocab_size, special_ids, p=0.15,"
                                      " generator=None):\n    return ids.clone(), ids.clone()\n",
                       "mlm_loss": "def mlm_loss(logits, labels):\n    return logits.mean() * 0\n"},
            "deleted": "test_mask_tokens",
            "emptied": "test_mlm_loss",
        },
    },
    "07_classification": {
        # Mean pooling that averages the padding in, in the classification head.
        "mistake": ("classification_head",
                    "def classification_head(hidden, attention_mask, classifier, dropout, labels=None):\n"
                    "    logits = classifier(dropout(hidden.mean(dim=1)))\n"
                    "    return logits, F.cross_entropy(logits, labels) if labels is not None else None\n",
                    {"test_classification_head"}),
        "tamper": {
            "broken": {"predict_batched": "def predict_batched(model, rows, batch_size=64, pad_id=0):\n"
                                          "    return [0] * len(rows)\n",
                       "fine_tune_step": "def fine_tune_step(model, optimizer, batch, labels, lr, grad_clip=1.0):\n"
                                         "    return 0.0\n"},
            "deleted": "test_predict_batched",
            "emptied": "test_fine_tune_step",
        },
    },
    "08_llama": {
        # Key/value heads tiled with repeat instead of repeated in place: query heads read the wrong keys.
        "mistake": ("grouped_query_attention",
                    "def grouped_query_attention(x, attn, rope):\n"
                    "    B, T, _ = x.shape\n"
                    "    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size\n"
                    "    q = rope(attn.q_proj(x).view(B, T, nh, hs).transpose(1, 2))\n"
                    "    k = rope(attn.k_proj(x).view(B, T, nkv, hs).transpose(1, 2)).repeat(1, nh // nkv, 1, 1)\n"
                    "    v = attn.v_proj(x).view(B, T, nkv, hs).transpose(1, 2).repeat(1, nh // nkv, 1, 1)\n"
                    "    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
                    "    return attn.o_proj(y.transpose(1, 2).reshape(B, T, nh * hs))\n",
                    {"test_grouped_query_attention"}),
        "tamper": {
            "broken": {"rms_norm": "def rms_norm(x, weight, eps=1e-5):\n    return F.layer_norm(x, x.shape[-1:]) * weight\n",
                       "chat_template": "def chat_template(messages, add_generation_prompt=False):\n"
                                        "    return ''.join(m['content'] for m in messages)\n"},
            "deleted": "test_rms_norm",
            "emptied": "test_chat_template",
        },
    },
    "09_instruction_tuning": {
        # The end of each reply left out of the targets: the tuned model would never stop.
        "mistake": ("assistant_labels", "def assistant_labels(ids, header, end_id):\n"
                                        "    labels, inside = [IGNORE_INDEX] * len(ids), False\n"
                                        "    for i, t in enumerate(ids):\n"
                                        "        if ids[i - len(header) + 1:i + 1] == header:\n"
                                        "            inside = True\n"
                                        "        elif t == end_id:\n"
                                        "            inside = False\n"
                                        "        elif inside:\n"
                                        "            labels[i] = t\n"
                                        "    return labels\n", {"test_assistant_labels"}),
        "tamper": {
            "broken": {"lora_linear": "class LoRALinear(nn.Module):\n"
                                      "    def __init__(self, base_layer, r=8, alpha=16.0):\n"
                                      "        super().__init__()\n        self.base_layer = base_layer\n"
                                      "        self.scaling = r / alpha\n"
                                      "        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False)\n"
                                      "        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False)\n\n"
                                      "    def forward(self, x):\n"
                                      "        return self.base_layer(x) + self.scaling * self.lora_B(self.lora_A(x))\n",
                       "rouge_l": "def rouge_l(candidate, reference):\n"
                                  "    c, r = set(candidate.lower().split()), set(reference.lower().split())\n"
                                  "    p, q = len(c & r) / max(len(c), 1), len(c & r) / max(len(r), 1)\n"
                                  "    return {'precision': p, 'recall': q, 'f1': 2 * p * q / (p + q) if p + q else 0.0}\n"},
            "deleted": "test_lora_linear",
            "emptied": "test_rouge_l",
        },
    },
    "10_preference_tuning": {
        # The batch mean taken inside the log-sigmoid: one loss for the batch, not the mean of the pairs' losses.
        "mistake": ("dpo_loss", "def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta):\n"
                                "    chosen = policy_chosen - ref_chosen.detach()\n"
                                "    rejected = policy_rejected - ref_rejected.detach()\n"
                                "    loss = -F.logsigmoid(beta * (chosen - rejected).mean())\n"
                                "    return loss, beta * chosen.detach(), beta * rejected.detach()\n", {"test_dpo_loss"}),
        "tamper": {
            "broken": {"bradley_terry_loss": "def bradley_terry_loss(chosen_rewards, rejected_rewards):\n"
                                             "    return -F.logsigmoid(rejected_rewards - chosen_rewards).mean()\n",
                       "sequence_logprob": "def sequence_logprob(logits, labels):\n"
                                           "    logp = logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]\n"
                                           "    return (logp * (labels != IGNORE_INDEX)).sum(-1)\n"},
            "deleted": "test_bradley_terry_loss",
            "emptied": "test_sequence_logprob",
        },
    },
    "11_reinforcement_learning": {
        # Advantages normalised over the whole batch instead of within each prompt's group.
        "mistake": ("group_advantages", "def group_advantages(rewards, group_size, scale=True):\n"
                                        "    adv = rewards - rewards.mean()\n"
                                        "    return adv / (rewards.std() + 1e-4) if scale else adv\n",
                    {"test_group_advantages"}),
        "tamper": {
            "broken": {"k3_kl": "def k3_kl(logps, ref_logps):\n"
                                "    d = logps - ref_logps\n"
                                "    return torch.exp(d) - d - 1\n",
                       "grpo_loss": "def grpo_loss(logps, old_logps, advantages, mask, epsilon=0.2):\n"
                                    "    ratio = torch.exp(logps - old_logps)\n"
                                    "    A = advantages[:, None]\n"
                                    "    return (-torch.min(ratio * A, ratio.clamp(1 - epsilon, 1 + epsilon) * A)).mean()\n"},
            "deleted": "test_k3_kl",
            "emptied": "test_grpo_loss",
        },
    },
}


# Each chapter is graded where pytest runs its tests (`make test`: one pytest-xdist worker per CPU, each chapter one
# work unit, tests/conftest.py), its kernels on one torch thread: two kernels on two threads each would fight over
# the cores (5-30x slower).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "LLMSCRATCH_THREADS": "1"}
# Chapters whose mistake and tampering are graded apart: with both in one notebook, nothing would be left to pass.
SEPARATE = {"02_embeddings_and_positions", "03_attention"}


def nbgrader_api(course: Path):
    """nbgrader's own API on the throw-away course, in this process: the same apps the `nbgrader` command runs,
    without a new Python (1.7 s of imports) for each of them."""
    from nbgrader.apps import NbGraderAPI
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(course)).load_config()
    config.CourseDirectory.root = str(course)
    return NbGraderAPI(config=config)


def succeeded(result: dict, what: str) -> None:
    assert result["success"], f"nbgrader {what} failed:\n{result.get('log', '')}\n{result.get('error', '')}"


def grade_id(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def with_answers(student_nb, answers):
    nb = nbformat.from_dict(student_nb)
    for cell in nb.cells:
        if grade_id(cell) in answers:
            cell.source = answers[grade_id(cell)]
    return nb


def untouched(student_nb):
    """The student notebook as released, with its ungraded code cells (the trainings, plots and demos between the
    exercises, which the solution submission and nbval run anyway) emptied: what this case tests is that unimplemented
    exercises score zero and that their errors do not stop grading, and the ungraded cells cost most of the time
    (30 s of 40 in chapter 09). The setup cell stays, so a test that passes without an implementation still shows."""
    nb = nbformat.from_dict(student_nb)
    for cell in nb.cells:
        if cell.cell_type == "code" and "nbgrader" not in cell.metadata:
            cell.source = "pass"
    return nb


def function_name(answer):
    return re.search(r"^def (\w+)", answer, re.MULTILINE).group(1)


def noisy(answer):
    """A correct answer that also writes to stderr each time it runs: a debug print, a logging warning and a
    progress bar, as students' code does (and a print to stdout: grading drops stderr, this shows that it ran)."""
    name = function_name(answer)
    return answer + (f"\n\n_{name}_quiet = {name}\n\n\ndef {name}(*args, **kwargs):\n"
                     "    import logging, sys\n    from tqdm import tqdm\n"
                     f"    print('debug: {name} called')\n"   # the trace the test looks for
                     f"    print('debug: {name} called', file=sys.stderr)\n"
                     f"    logging.warning('{name}: just a warning')\n"
                     "    for _ in tqdm(range(2)):\n        pass\n"
                     f"    return _{name}_quiet(*args, **kwargs)\n")


def text_of(html_file: Path) -> str:
    """What a reader of the page sees: the text without its tags (code is split into highlighted spans)."""
    parser = html.parser.HTMLParser()
    parts = []
    parser.handle_data = parts.append
    parser.feed(html_file.read_text(encoding="utf-8"))
    return "".join(parts)


def hidden_code(solution: Path, released: Path) -> list[str]:
    """Every line of hidden-test code worth searching for: long enough to be unique, not a message string (a
    failed test's message is meant to be shown), and not also in the student's notebook (`with torch.no_grad():`)."""
    visible = {line.strip() for cell in nbformat.read(released, as_version=4).cells for line in cell.source.splitlines()}
    lines = []
    for cell in nbformat.read(solution, as_version=4).cells:
        for block in HIDDEN.findall(cell.source):
            lines += [s for s in (line.strip() for line in block.splitlines())
                      if len(s) >= 16 and s not in visible and not re.match(r"""^\(?f?["']""", s)]
    return lines


def leaks(html_file: Path, hidden: list[str]) -> list[str]:
    text = text_of(html_file)
    return [line for line in hidden if line in text]


def grade_chapter(chapter, course):
    """Generate the assignment, submit three or four notebooks and autograde them in one run; returns the gradebook's
    path and the wall time."""
    start = time.perf_counter()
    shutil.copy(ROOT / "nbgrader_config.py", course)
    shutil.copytree(ROOT / "tools", course / "tools", ignore=shutil.ignore_patterns("__pycache__"))  # the preprocessors
    shutil.copytree(ROOT / "solutions" / chapter, course / "solutions" / chapter)
    api = nbgrader_api(course)
    succeeded(api.generate_assignment(chapter, force=True), "generate_assignment")

    source = nbformat.read(course / "solutions" / chapter / f"{chapter}.ipynb", as_version=4)
    student = nbformat.read(course / "notebooks" / chapter / f"{chapter}.ipynb", as_version=4)
    solution_answers = {grade_id(c): SOLUTION_BLOCK.sub("", c.source) for c in source.cells
                        if c.metadata.get("nbgrader", {}).get("solution")}
    case = CASES[chapter]
    wrong_id, wrong_source, _ = case["mistake"]
    tamper = case["tamper"]
    with_mistake = {**solution_answers, wrong_id: wrong_source}
    # The tampering goes on top of the mistake, except where the chapter grades the two apart.
    base = solution_answers if chapter in SEPARATE else with_mistake
    tampered = with_answers(student, {**base, **tamper["broken"], tamper["emptied"]: "pass\n"})
    tampered.cells = [c for c in tampered.cells if grade_id(c) != tamper["deleted"]]
    # The solution's answer to the mistaken exercise also writes to stderr: that costs no marks (nbgrader_config).
    noisy_solution = {**solution_answers, wrong_id: noisy(solution_answers[wrong_id])}
    submissions = {"solution": with_answers(student, noisy_solution), "untouched": untouched(student),
                   "tampered": tampered}
    if chapter in SEPARATE:
        submissions["mistake"] = with_answers(student, with_mistake)
    for name, nb in submissions.items():
        folder = course / "grading" / "submitted" / name / chapter
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{chapter}.ipynb")
    with pytest.MonkeyPatch.context() as env:
        for name, value in ONE_THREAD.items():
            env.setenv(name, value)   # for the kernels
        for name in submissions:
            succeeded(api.autograde(chapter, name, force=True, create=True), f"autograde of {name}")
    succeeded(api.generate_feedback(chapter, force=True), "generate_feedback")
    return course / "grading" / "gradebook.db", time.perf_counter() - start


@pytest.fixture(scope="module", params=sorted(CASES))
def graded(request, tmp_path_factory):
    """One chapter, graded: (chapter, scores, max score, gradebook). The chapter's tests run one after another in one
    process (pytest orders them by this fixture's parameter; tests/conftest.py keeps them in one work unit)."""
    chapter = request.param
    if chapter in {"08_llama", "09_instruction_tuning", "10_preference_tuning", "11_reinforcement_learning"}:
        smollm2_dir()   # convert SmolLM2 here, once, before every submission's kernel needs it
    path, seconds = grade_chapter(chapter, tmp_path_factory.mktemp(f"course-{chapter}"))
    gradebook = Gradebook(f"sqlite:///{path}")
    names = ("solution", "untouched", "tampered") + (("mistake",) if chapter in SEPARATE else ())
    scores = {name: gradebook.find_submission(chapter, name).score for name in names}
    max_score = gradebook.find_assignment(chapter).max_score
    print(f"\n{chapter}: graded in {seconds:.0f} s; scores out of {max_score}: {scores}")  # shown with `pytest -s`
    yield chapter, scores, max_score, gradebook
    gradebook.close()


def failed_tests(gradebook, chapter, student):
    notebook = gradebook.find_submission_notebook(chapter, chapter, student)
    return {g.name for g in notebook.grades if g.max_score > 0 and g.score < g.max_score}


def test_feedback_shows_no_hidden_test(graded):
    """Every student's feedback, searched for every line of hidden-test code (messages excepted): none is there,
    although the tampered and mistaken submissions fail hidden tests (tools/grading.py; tests/test_instructor.py
    shows that the search finds hidden code where it is)."""
    chapter, gradebook = graded[0], graded[3]
    course = Path(gradebook.engine.url.database).parents[1]
    hidden = hidden_code(course / "solutions" / chapter / f"{chapter}.ipynb",
                         course / "notebooks" / chapter / f"{chapter}.ipynb")
    feedback = sorted((course / "grading" / "feedback").glob(f"*/{chapter}/{chapter}.html"))
    assert hidden and len(feedback) >= 3
    for f in feedback:
        assert not leaks(f, hidden), f"{f.parts[-3]}'s feedback shows hidden-test code: {leaks(f, hidden)[:3]}"


def test_solution_gets_full_marks_though_one_answer_writes_to_stderr(graded):
    chapter, scores, max_score, gradebook = graded
    assert max_score > 0
    assert scores["solution"] == max_score, f"failed: {failed_tests(gradebook, chapter, 'solution')}"
    course = Path(gradebook.engine.url.database).parents[1]
    graded_nb = nbformat.read(course / "grading" / "autograded" / "solution" / chapter / f"{chapter}.ipynb", 4)
    stdout = "".join(o.get("text", "") for c in graded_nb.cells if c.cell_type == "code" for o in c.outputs
                     if o.get("name") == "stdout")
    assert f"debug: {function_name(CASES[chapter]['mistake'][1])} called" in stdout, "the noisy answer never ran"


def test_untouched_notebook_gets_zero_without_crashing(graded):
    _, scores, _, _ = graded
    assert scores["untouched"] == 0


def mistaken(chapter):
    """The submission holding the typical mistake."""
    return "mistake" if chapter in SEPARATE else "tampered"


def test_typical_mistake_gets_partial_marks(graded):
    chapter, scores, max_score, gradebook = graded
    _, _, should_fail = CASES[chapter]["mistake"]
    failed = failed_tests(gradebook, chapter, mistaken(chapter))
    if chapter not in SEPARATE:
        tamper = CASES[chapter]["tamper"]
        failed -= {tamper["deleted"], tamper["emptied"]}
    assert failed == should_fail
    assert 0 < scores[mistaken(chapter)] < max_score


def test_deleted_and_edited_tests_are_restored(graded):
    chapter, scores, max_score, gradebook = graded
    tamper = CASES[chapter]["tamper"]
    _, _, should_fail = CASES[chapter]["mistake"]
    expected = {tamper["deleted"], tamper["emptied"]} | (set() if chapter in SEPARATE else should_fail)
    assert failed_tests(gradebook, chapter, "tampered") == expected
    assert scores["tampered"] < max_score
