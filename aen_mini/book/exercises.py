"""Exercises with checkers: a student writes a function, a checker runs it against the package's reference.

API (one line per exercise in a notebook)::

    from aen_mini.book.exercises import check
    check("elastic_net_prox", my_prox)      # -> Feedback: "correct: ..." or what is wrong, on which input

Each checker takes the student's callable, runs it on several fixed inputs, compares with the reference
implementation in `aen_mini` (the solutions are the package's own functions) and returns a `Feedback`: a
`str` that reads "correct ..." or names the first failing input with what was returned and what was
expected, plus a hint for the usual mistakes. `Feedback.passed` is the verdict. A wrong answer, a function
that raises, or one that returns the wrong shape never raises here (this is a teaching tool); only an
unusable answer (not callable) raises TypeError, and an unknown exercise name ValueError.

Adding an exercise: in its chapters' module (exercises_basics: chapters 1-2, exercises_synthetic: 3-4,
exercises_lm: 5-6), write ``@exercise("name")`` above a function ``check_name(fn) -> Feedback`` that returns
``_run_cases(...)`` or a `Feedback` of its own; `EXERCISES` and `check` pick it up.

Exercises so far (chapter: name -> student signature):
    1: relu_sae_forward(x, W_enc, b_enc, W_dec, b_dec) -> (x_hat, h)
    1: sae_loss(x, x_hat, h, l1_coeff) -> scalar loss
    1: explained_variance(x, x_hat) -> float, 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
    2: elastic_net_prox(z, l1, l2) -> h, elementwise argmin_{h>=0} 1/2 (h - z)^2 + l1 h + l2 h^2
    2: lipschitz_bound(D, l2) -> float
    2: adaptive_weights(a, gamma, ref_pct) -> w
    2: amortisation_gap(sae, x) -> float, batch mean of the SAE objective at the encoder's codes minus at the exact codes
    3: dead_fraction(h) -> float, share of latents that never fire on a batch of codes
    3: calibrate_l1(measure_l0, target, l1_start, trials) -> l1 whose L0 is within 10 % of the target
    3: dead_window(density, risk) -> int, the fewest samples on which a latent of that firing density looks dead
       with probability <= risk
    4: warmup_ramp(step, warmup_start, warmup_steps) -> float, the AEN-SAE's reweighting ramp r(t)
    4: weights_at_clip(ema, ref_pct, w_max) -> int, how many adaptive weights ref / a_j sit at the clip
    4: sae_objective(x, h, W_dec, b_dec, l1, l2, w) -> (B,) the per-sample objective whose gap the encoder leaves
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

__all__ = ["EXERCISES", "Feedback", "check", "exercise"]


class Feedback(str):
    """A checker's message (shown as plain text in a notebook); `passed` is True when the answer is right."""

    passed: bool

    def __new__(cls, message: str, passed: bool) -> "Feedback":
        feedback = super().__new__(cls, message)
        feedback.passed = passed
        return feedback

    def __repr__(self) -> str:
        return str(self)


Checker = Callable[[Callable[..., Any]], Feedback]
EXERCISES: dict[str, Checker] = {}


def exercise(name: str) -> Callable[[Checker], Checker]:
    """Register a checker under `name` (used as a decorator)."""

    def register(checker: Checker) -> Checker:
        if name in EXERCISES:
            raise ValueError(f"exercise {name!r} is registered twice")
        EXERCISES[name] = checker
        return checker

    return register


def check(name: str, answer: Callable[..., Any]) -> Feedback:
    """Run the checker of exercise `name` on the student's function `answer`."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; choose one of {sorted(EXERCISES)}")
    return EXERCISES[name](answer)


# --- shared machinery -------------------------------------------------------------------------------------
def _as_float64(value: Any) -> Tensor | None:
    """The student's output as a float64 tensor, or None when it is not numeric."""
    try:
        if isinstance(value, Tensor):
            return value.detach().double().cpu()
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _close(got: Tensor, expected: Tensor) -> bool:
    both_inf = torch.isinf(got) & torch.isinf(expected) & (got.sign() == expected.sign())
    return bool((both_inf | torch.isclose(got, expected, rtol=1e-4, atol=1e-5)).all())


def _mismatch(what: str, got_raw: Any, expected: Tensor) -> str | None:
    """Why `got_raw` is not `expected` (shape, type or first differing entry), or None when they agree."""
    got, expected = _as_float64(got_raw), expected.detach().double()
    if got is None:
        return f"{what} is a {type(got_raw).__name__}, not numbers"
    if got.shape != expected.shape:
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
    if _close(got, expected):
        return None
    if got.ndim == 0:
        return f"{what} is {got.item():.6g}, expected {expected.item():.6g}"
    bad = (~torch.isclose(got, expected, rtol=1e-4, atol=1e-5)).nonzero()[0]
    index = tuple(bad.tolist())
    return f"{what}{list(index)} is {got[index].item():.6g}, expected {expected[index].item():.6g}"


def _call(fn: Callable[..., Any], args: Sequence[Any]) -> tuple[Any, str | None]:
    """fn(*args) on copies of the inputs (a student's in-place edit must not change the next case)."""
    copies = [a.clone() if isinstance(a, Tensor) else a for a in args]
    try:
        return fn(*copies), None
    except Exception as error:  # a student's bug is feedback, not a crash of the checker
        return None, f"your function raised {type(error).__name__}: {error}"


def _require_callable(answer: Any) -> None:
    if not callable(answer):
        raise TypeError(f"pass your function itself (e.g. check(name, my_function)), not a {type(answer).__name__}")


def _run_cases(
    fn: Callable[..., Any],
    cases: Sequence[tuple[str, tuple[Any, ...], Any]],
    compare: Callable[[Any, Any], str | None],
    hint: Callable[[tuple[Any, ...], Any], str | None] = lambda args, got: None,
) -> Feedback:
    """Run `fn` on each (description, args, expected); the first failure names its input and a hint."""
    _require_callable(fn)
    for description, args, expected in cases:
        got, error = _call(fn, args)
        if error is None and got is None:
            error = "your function returned None (missing `return`?)"
        problem = error or compare(got, expected)
        if problem is not None:
            extra = None if error else hint(args, got)
            return Feedback(f"not yet: for {description}: {problem}." + (f"\nHint: {extra}" if extra else ""), False)
    return Feedback(f"correct: your function agrees with the reference on all {len(cases)} test inputs.", True)


def _matches(got: Any, candidate: Tensor) -> bool:
    """Whether the student's output equals a known wrong answer (to name the mistake)."""
    got, candidate = _as_float64(got), candidate.detach().double()
    return got is not None and got.shape == candidate.shape and _close(got, candidate)


def _fmt(values: Tensor) -> str:
    """A short, exact-looking list for messages (float32 inputs would print as 0.10000000149011612)."""
    return "[" + ", ".join(f"{v:.6g}" for v in values.tolist()) + "]"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Each chapter pair's checkers live in their own module and register here (imported last: they use the machinery
# above).
from aen_mini.book import exercises_basics, exercises_lm, exercises_synthetic  # noqa: E402,F401
