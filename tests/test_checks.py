"""Every chapter's self-checks accept correct answers, say when an exercise is not done yet, and
reject the typical mistakes with a message that says why, and refuse answers that hand the exercise to the
library. The answers live in cases_chNN.py; many of them are built on the library's own functions (a mistake is
the library's answer, transposed), so the refusal is switched off except in the test of the refusal itself.
The solution notebooks pass their checks with it on (nbval and the grading round trip)."""

import pytest
import torch

import cases_ch00
import cases_ch01
import cases_ch02_ch03
import cases_ch04
import cases_ch05
import cases_ch06
import cases_ch07
import cases_ch08
import cases_ch09
import cases_ch10
import cases_ch11
from cases_delegation import DELEGATED
from llmscratch.check import CheckFailed
from llmscratch.check import core as check_core

CORRECT = cases_ch00.CORRECT + cases_ch01.CORRECT + cases_ch02_ch03.CORRECT + cases_ch04.CORRECT + cases_ch05.CORRECT + cases_ch06.CORRECT + cases_ch07.CORRECT + cases_ch08.CORRECT + cases_ch09.CORRECT + cases_ch10.CORRECT + cases_ch11.CORRECT
MISTAKES = cases_ch00.MISTAKES + cases_ch01.MISTAKES + cases_ch02_ch03.MISTAKES + cases_ch04.MISTAKES + cases_ch05.MISTAKES + cases_ch06.MISTAKES + cases_ch07.MISTAKES + cases_ch08.MISTAKES + cases_ch09.MISTAKES + cases_ch10.MISTAKES + cases_ch11.MISTAKES


@pytest.fixture(autouse=True)
def library_answers_allowed(request, monkeypatch):
    if request.node.originalname != "test_answers_delegated_to_the_library_are_refused":
        monkeypatch.setattr(check_core, "refusing", lambda fn, answers: fn)


def name_of(run_check):
    return f"{run_check.__module__.rsplit('.', 1)[-1]}.{run_check.__name__}"


@pytest.mark.parametrize("run_check, answer", CORRECT, ids=[name_of(c) for c, _ in CORRECT])
def test_correct_answers_pass(run_check, answer, capsys):
    run_check(answer)
    assert capsys.readouterr().out.startswith(f"ok: {run_check.__name__}")


@pytest.mark.parametrize("run_check, answer", CORRECT, ids=[name_of(c) for c, _ in CORRECT])
def test_checks_leave_the_global_rng_alone(run_check, answer, capsys):
    torch.manual_seed(1234)  # a notebook's seed_everything: what follows the check must not depend on it
    before = torch.random.get_rng_state()
    run_check(answer)
    assert torch.equal(torch.random.get_rng_state(), before), "the check changed the global RNG state"


@pytest.mark.parametrize("run_check", [c for c, _ in CORRECT], ids=[name_of(c) for c, _ in CORRECT])
def test_unimplemented_exercises_say_so(run_check):
    def not_done(*args, **kwargs):
        raise NotImplementedError()
    with pytest.raises(CheckFailed, match=f"{run_check.__name__}: not implemented yet"):
        run_check(not_done)


@pytest.mark.parametrize("run_check, wrong, message", MISTAKES, ids=[name_of(c) for c, _, _ in MISTAKES])
def test_typical_mistakes_are_caught(run_check, wrong, message):
    with pytest.raises(CheckFailed, match=message):
        run_check(wrong)


@pytest.mark.parametrize("run_check, delegated, library_name", DELEGATED, ids=[name_of(c) for c, _, _ in DELEGATED])
def test_answers_delegated_to_the_library_are_refused(run_check, delegated, library_name, monkeypatch, capsys):
    with pytest.raises(CheckFailed, match=rf"calls the library's llmscratch\.[\w.]*{library_name}, which is this "
                                          "exercise's answer"):
        run_check(delegated)
    # The refusal is what fails it: without it, the library's answer passes the check.
    monkeypatch.setattr(check_core, "refusing", lambda fn, answers: fn)
    run_check(delegated)
    assert capsys.readouterr().out.startswith(f"ok: {run_check.__name__}")
