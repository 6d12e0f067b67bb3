"""The machinery shared by every chapter's checks."""

import contextlib
import functools
import sys

import torch
import torch.nn as nn


class CheckFailed(AssertionError):
    """A self-check found a difference; the message says what was expected and what came back."""


def exercise(title: str, answers=()):
    """Turn a check function into a self-check that prints ok or raises a readable CheckFailed.

    `answers` names the library's own versions of this exercise (functions or methods): the student's function
    must be neither one of them nor call one, so that an import from llmscratch cannot stand in for the exercise.
    The graded test cells run the same check."""
    def decorate(check_fn):
        @functools.wraps(check_fn)
        def run(fn, *args, **kwargs):
            try:
                with torch.random.fork_rng(devices=[]):  # the notebook's random stream goes on as if no check ran
                    summary = check_fn(refusing(fn, answers), *args, **kwargs)
            except NotImplementedError:
                raise CheckFailed(f"{title}: not implemented yet. Replace `raise NotImplementedError()` "
                                  "with your code and run the cell again.") from None
            except CheckFailed as failure:
                raise CheckFailed(f"{title}: {failure}") from None
            except RuntimeError as err:
                if "in-place operation" not in str(err):
                    raise
                raise CheckFailed(f"{title}: in place: {str(err).splitlines()[0]} An in-place operation (`x -= y`, "
                                  "`x[...] = v`, `x.add_()`) on an input: it changes the caller's tensor, and "
                                  "autograd cannot differentiate through it. Write `x = x - y`") from None
            print(f"ok: {title}" + (f" ({summary})" if summary else ""))
        return run
    return decorate


def delegation_message(answer) -> str:
    return (f"your code calls the library's {answer.__module__}.{answer.__qualname__}, which is this exercise's "
            "answer. Write it yourself: the exercise is the code, so an answer that hands the work to the library "
            "scores nothing (later chapters import it from the library once you have built it)")


def refusing(fn, answers):
    """`fn`, failing with CheckFailed whenever a call of it runs one of `answers` (see `run_refusing`)."""
    if not answers or isinstance(fn, type) or not callable(fn):
        return fn
    oracles = {answer: delegation_message(answer) for answer in answers}

    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        return run_refusing(fn, args, oracles, kwargs)
    return guarded


@contextlib.contextmanager
def seeded(seed: int):
    """Seed the global RNG (for code that takes no generator, such as a model's init) inside this block only."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def close(got, wrong, atol: float = 1e-4) -> bool:
    """`got` is a tensor of `wrong`'s shape and values: the answer made this typical mistake."""
    same_shape = torch.is_tensor(got) and got.shape == wrong.shape
    return same_shape and torch.allclose(got.detach(), wrong, rtol=1e-4, atol=atol)


def differs(got, expected, atol: float) -> bool:
    """A tensor of the right shape with the wrong values: worth comparing with the usual mistakes."""
    same_shape = torch.is_tensor(got) and got.shape == expected.shape
    return same_shape and not torch.allclose(got.detach(), expected, atol=atol)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def expect_tensor(got, expected: torch.Tensor, what: str, atol: float = 1e-6, rtol: float = 1e-5) -> None:
    """`got` must be a tensor of `expected`'s shape and values (within tolerance), with no NaN."""
    expect(isinstance(got, torch.Tensor), f"{what}: expected a torch.Tensor, got {type(got).__name__}")
    expect(tuple(got.shape) == tuple(expected.shape),
           f"{what}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}")
    got64, expected64 = got.detach().double(), expected.detach().double()
    expect(not torch.isnan(got64).any() or torch.isnan(expected64).any(),
           f"{what}: the result contains NaN (expected none): a division 0/0, or exp() overflowing to inf?")
    if not torch.allclose(got64, expected64, atol=atol, rtol=rtol, equal_nan=True):
        diff = (got64 - expected64).abs().nan_to_num(float("inf"))
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape))
        raise CheckFailed(f"{what}: values differ by up to {diff.max().item():.3g} (tolerance "
                          f"atol={atol}, rtol={rtol}); at index {where} expected "
                          f"{expected64[where].item():.6g}, got {got64[where].item():.6g}")


def randomise(module, seed: int):
    """Every parameter of `module` random (LayerNorm gains near 1, biases and embeddings too), so that an
    answer that leaves one out, or uses one in place of another, shows. Returns the module."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                gain = 1.0 if isinstance(sub, nn.LayerNorm) and name == "weight" else 0.0
                p.copy_(gain + 0.3 * torch.randn(p.shape, generator=g))
    return module


@contextlib.contextmanager
def explain_runtime_error(marker: str, advice):
    """Turn a RuntimeError whose text contains `marker` (a typical mistake's crash) into CheckFailed with
    advice(first line of the error); any other error passes unchanged."""
    try:
        yield
    except RuntimeError as err:
        if marker not in str(err):
            raise
        raise CheckFailed(advice(str(err).split("\n")[0])) from err


@contextlib.contextmanager
def oracle_forbidden(owner, message: str, name: str = "forward"):
    """While the student's function runs, calling owner.<name> (the check's oracle: a module class's forward,
    or a function such as torch.rms_norm) raises CheckFailed(message) instead of quietly giving the answer."""
    def forbidden(*args, **kwargs):
        raise CheckFailed(message)
    original = getattr(owner, name)
    setattr(owner, name, forbidden)
    try:
        yield
    finally:
        setattr(owner, name, original)


def run_refusing(fn, args, oracles: dict, kwargs=None):
    """fn(*args, **kwargs), failing with oracles[f] if it calls one of the Python functions in `oracles` (the
    library's answer to this exercise), directly or through a helper: the point is to write it, not import it."""
    codes = {getattr(f, "__code__", None): message for f, message in oracles.items()}
    called = []

    def watch(frame, event, arg):
        if event == "call" and frame.f_code in codes and not called:
            called.append(codes[frame.f_code])
        if previous is not None:   # a check inside a check: the outer one keeps watching
            previous(frame, event, arg)
    previous = sys.getprofile()
    sys.setprofile(watch)
    try:
        result = fn(*args, **(kwargs or {}))
    finally:
        sys.setprofile(previous)
    if called:
        raise CheckFailed(called[0])
    return result


# ---- the four probes every graded function gets: gradients, the caller's inputs, extreme values, edges ------------
# Their messages start with the probe's name ("gradient:", "in place:", "extreme values:", "edge:"), so a student
# knows which kind of mistake was found.
def call_on_originals(fn, args: dict, **kwargs):
    """fn(*args.values(), **kwargs) on the caller's own tensors, not copies; fails if any of them came back changed
    (values or shape). `args` names the positional arguments, for the message. Returns the result."""
    before = {name: v.detach().clone() for name, v in args.items() if torch.is_tensor(v)}
    result = fn(*args.values(), **kwargs)
    for name, old in before.items():
        now = args[name].detach()
        if now.shape != old.shape or not torch.equal(now.nan_to_num(), old.nan_to_num()):
            raise CheckFailed(f"in place: your function changed its argument `{name}`, the caller's tensor (an "
                              "in-place operation such as `x -= y`, `x[...] = v`, `x.add_()` or `x.unsqueeze_()`, "
                              "or one on a view of it). The caller still needs it: write `x = x - y`, or work on "
                              "`x.clone()`")
    return result


def expect_gradients(got, expected, pairs: dict, weights=None):
    """The gradient of `got` w.r.t. each input equals the oracle's `expected`. pairs: name -> (the leaf given to the
    student's function, the one given to the oracle). An oracle leaf that does not require grad marks a constant
    (a reference model's log-probs): the answer's gradient there must be None or zero. `weights` (got's shape)
    mixes a tensor result into one number, so that every element's gradient counts."""
    wanted = [n for n, (_, o) in pairs.items() if o.requires_grad]
    if not (torch.is_tensor(got) and got.requires_grad):
        raise CheckFailed("gradient: the result carries no gradient, so training through it would change nothing. "
                          f"It must be differentiable with respect to {', '.join(f'`{n}`' for n in wanted)}: was it "
                          "computed under torch.no_grad(), or through .detach(), .item(), .tolist() or "
                          "torch.tensor(...) of numbers?")
    weights = torch.ones_like(expected) if weights is None else weights
    mine = torch.autograd.grad((got * weights).sum(), [leaf for leaf, _ in pairs.values()], allow_unused=True)
    oracle = dict(zip(wanted, torch.autograd.grad((expected * weights).sum(), [pairs[n][1] for n in wanted])))
    for name, g in zip(pairs, mine):
        if name not in oracle:
            expect(g is None or g.abs().max() == 0,
                   f"gradient: a gradient reaches `{name}`, which is a constant here: .detach() it")
            continue
        expect(g is not None and g.abs().max() > 0,
               f"gradient: no gradient reaches `{name}`: part of the computation was cut from the graph (a "
               ".detach(), torch.no_grad(), .item() or .tolist() on the way)")
        expect_tensor(g, oracle[name], f"gradient: d(result)/d `{name}`", atol=1e-5, rtol=1e-4)


def expect_no_gradient(value, what: str):
    """A metric or a logged figure carries no autograd graph (it would keep every activation alive)."""
    expect(not (torch.is_tensor(value) and value.requires_grad),
           f"gradient: {what} is a figure to report, yet it carries the autograd graph (requires_grad=True): "
           ".detach() it, or the whole graph stays in memory with it")
