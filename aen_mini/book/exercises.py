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

Adding an exercise: write ``@exercise("name")`` above a function ``check_name(fn) -> Feedback`` that
returns ``_run_cases(...)`` or a `Feedback` of its own; `EXERCISES` and `check` pick it up.

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

import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from aen_mini.eval.metrics import _sae_objective, amortisation_gap, dead_fraction, explained_variance
from aen_mini.sae import make_sae
from aen_mini.sae.adaptive import AdaptiveL1Weights
from aen_mini.eval.solve import lipschitz_bound, solve_for_sae, solve_sparse_codes

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


# --- chapter 1 ---------------------------------------------------------------------------------------------
def _sae_params(seed: int, d_in: int, d_sae: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    g = _gen(seed)
    W_dec = torch.nn.functional.normalize(torch.randn(d_in, d_sae, generator=g), dim=0)
    W_enc = torch.randn(d_sae, d_in, generator=g) / d_in**0.5
    return W_enc, 0.3 * torch.randn(d_sae, generator=g), W_dec, torch.randn(d_in, generator=g)


def _reference_sae(W_enc: Tensor, b_enc: Tensor, W_dec: Tensor, b_dec: Tensor, l1_coeff: float = 0.0):
    sae = make_sae("relu_l1", W_dec.shape[0], W_dec.shape[1], l1_coeff=l1_coeff)
    with torch.no_grad():
        for name, value in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (W_enc, b_enc, W_dec, b_dec)):
            getattr(sae, name).copy_(value)
    return sae


@exercise("relu_sae_forward")
def check_relu_sae_forward(fn: Callable[..., Any]) -> Feedback:
    """fn(x, W_enc (d_sae, d_in), b_enc, W_dec (d_in, d_sae), b_dec) -> (x_hat, h): the ReLU SAE's forward."""
    cases = []
    for seed, (batch, d_in, d_sae) in enumerate([(4, 3, 5), (6, 4, 8), (1, 2, 7)]):
        params = _sae_params(seed, d_in, d_sae)
        x = torch.randn(batch, d_in, generator=_gen(100 + seed))
        with torch.no_grad():
            x_hat, h = _reference_sae(*params)(x)
        cases.append((f"test input {seed} (x of shape {tuple(x.shape)}, d_sae={d_sae})", (x, *params), (x_hat, h)))

    def compare(got: Any, expected: tuple[Tensor, Tensor]) -> str | None:
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            return "your function must return the pair (x_hat, h)"
        return _mismatch("h", got[1], expected[1]) or _mismatch("x_hat", got[0], expected[0])

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, W_enc, b_enc, W_dec, b_dec = args
        h = _as_float64(got[1])
        if h is not None and (h < 0).any():
            return "h has negative entries: the codes pass through a ReLU."
        if _matches(got[1], torch.relu(x @ W_enc.T + b_enc)):
            return "subtract the decoder bias from x before encoding: W_enc (x - b_dec) + b_enc."
        if h is not None and h.shape == (x.shape[0], W_dec.shape[1]) and _matches(got[0], h @ W_dec.T.double()):
            return "the reconstruction adds the decoder bias back: x_hat = W_dec h + b_dec."
        return None

    return _run_cases(fn, cases, compare, hint)


@exercise("sae_loss")
def check_sae_loss(fn: Callable[..., Any]) -> Feedback:
    """fn(x, x_hat, h, l1_coeff) -> scalar: mean_b ||x - x_hat||^2 + l1_coeff * mean_b sum_j |h_j|."""
    cases = []
    for seed, (batch, d_in, d_sae, l1_coeff) in enumerate([(5, 3, 6, 0.1), (8, 4, 4, 0.0), (3, 2, 9, 2.5)]):
        params = _sae_params(10 + seed, d_in, d_sae)
        sae = _reference_sae(*params, l1_coeff=l1_coeff)
        x = torch.randn(batch, d_in, generator=_gen(200 + seed))
        with torch.no_grad():
            x_hat, h = sae(x)
            loss = sae.loss(x)["loss"].double()
        cases.append((f"test input {seed} (batch of {batch}, d_in={d_in}, l1_coeff={l1_coeff})",
                      (x, x_hat, h, l1_coeff), loss))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, x_hat, h, l1_coeff = args
        sq, l1 = (x - x_hat).double().pow(2), h.double().abs()
        batch, d_in = x.shape
        known = {
            "the loss is a mean over the batch, not a sum.": sq.sum() + l1_coeff * l1.sum(),
            "sum the squared error over features (then average over the batch), as the SAE loss does.":
                sq.mean() + l1_coeff * l1.sum(-1).mean(),
            "the squared error is not square-rooted: it is ||x - x_hat||^2, not ||x - x_hat||.":
                sq.sum(-1).sqrt().mean() + l1_coeff * l1.sum(-1).mean(),
            "the l1 term sums |h_j| over latents before averaging over the batch.":
                sq.sum(-1).mean() + l1_coeff * l1.mean(),
        }
        return next((message for message, value in known.items() if _matches(got, value)), None)

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the loss", got, exp), hint)


@exercise("explained_variance")
def check_explained_variance(fn: Callable[..., Any]) -> Feedback:
    """fn(x (B, d), x_hat (B, d)) -> float: 1 - sum ||x - x_hat||^2 / sum ||x - mean_b(x)||^2 over the batch."""
    cases = []
    for seed, (batch, d_in, offset, noise) in enumerate([(6, 3, 2.0, 0.3), (10, 5, -1.0, 1.0), (4, 2, 5.0, 2.0)]):
        g = _gen(250 + seed)
        x = torch.randn(batch, d_in, generator=g) + offset  # an offset: centring matters
        x_hat = x + noise * torch.randn(batch, d_in, generator=g)
        cases.append((f"test input {seed} (x of shape {tuple(x.shape)}, mean {offset})", (x, x_hat),
                      torch.tensor(explained_variance(x, x_hat), dtype=torch.float64)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, x_hat = (a.double() for a in args)
        err, centred = (x - x_hat).pow(2), (x - x.mean(dim=0)).pow(2)
        known = {
            "centre x on its batch mean before summing: the baseline is predicting mean(x), not 0.":
                1 - err.sum() / x.pow(2).sum(),
            "that is the unexplained share; EV is 1 minus it.": err.sum() / centred.sum(),
            "sum the errors over the whole batch first, then divide once (a mean of per-row ratios is another "
            "number).": (1 - err.sum(1) / centred.sum(1)).mean(),
            "take the mean over the batch (dim=0), one mean per feature, not the mean of each row.":
                1 - err.sum() / (x - x.mean(dim=1, keepdim=True)).pow(2).sum(),
        }
        return next((message for message, value in known.items() if _matches(got, value)), None)

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the explained variance", got, exp), hint)


# --- chapter 2 ---------------------------------------------------------------------------------------------
@exercise("elastic_net_prox")
def check_elastic_net_prox(fn: Callable[..., Any]) -> Feedback:
    """fn(z, l1, l2) -> h, elementwise argmin_{h >= 0} 1/2 (h - z)^2 + l1 h + l2 h^2 (the solver's convention)."""
    z = torch.tensor([-2.0, -0.3, 0.0, 0.05, 0.4, 1.0, 3.0], dtype=torch.float64)
    cases = []
    for l1, l2 in [(0.5, 0.0), (0.5, 0.25), (0.0, 1.0), (1.5, 0.1)]:
        # The exact solver on an orthonormal dictionary (D = I) separates into exactly this scalar problem.
        exact = solve_sparse_codes(z[None], torch.eye(len(z), dtype=torch.float64), l1, l2, tol=1e-12).h[0]
        cases.append((f"z={_fmt(z)}, l1={l1}, l2={l2}", (z, l1, l2), exact))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        z, l1, l2 = args
        h = _as_float64(got)
        if h is not None and (h < 0).any():
            return "the codes are nonnegative (the SAE's ReLU): negative z must map to 0."
        if _matches(got, (z - l1).clamp_min(0) / (1 + l2)):
            return "the derivative of l2 h^2 is 2 l2 h, so the denominator is 1 + 2 l2."
        if _matches(got, (z - l1).clamp_min(0)):
            return "you applied the soft threshold but not the l2 shrinkage that follows it."
        if _matches(got, (z / (1 + 2 * l2) - l1).clamp_min(0)):
            return "threshold first, then shrink: max(z - l1, 0) / (1 + 2 l2)."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("h", got, exp), hint)


@exercise("lipschitz_bound")
def check_lipschitz_bound(fn: Callable[..., Any]) -> Feedback:
    """fn(D (n, m), l2) -> float: ||D||_2 / (lambda_min(DᵀD) + 2 l2), inf when the denominator is 0."""
    g = _gen(300)
    square = torch.randn(3, 3, generator=g, dtype=torch.float64) + 2 * torch.eye(3, dtype=torch.float64)
    wide = torch.nn.functional.normalize(torch.randn(2, 5, generator=g, dtype=torch.float64), dim=0)
    tall = torch.randn(5, 2, generator=g, dtype=torch.float64)
    cases = [
        (f"an overcomplete D of shape {tuple(D.shape)} with l2={l2}" if D.shape[1] > D.shape[0]
         else f"a D of shape {tuple(D.shape)} with full column rank and l2={l2}",
         (D, l2), torch.tensor(lipschitz_bound(D, l2), dtype=torch.float64))
        for D, l2 in [(wide, 0.1), (square, 0.0), (tall, 0.3), (wide, 1.0), (wide, 0.0)]
    ]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        D, l2 = args
        s = torch.linalg.svdvals(D)
        lam_min = s.min() ** 2 if D.shape[1] <= D.shape[0] else torch.tensor(0.0, dtype=torch.float64)
        if _matches(got, s.max() / (lam_min + l2)):
            return "the ridge term l2 ||h||^2 adds 2 l2 (not l2) to the curvature."
        if _matches(got, s.max() ** 2 / (lam_min + 2 * l2)):
            return "the numerator is the spectral norm ||D||_2 (the largest singular value), not its square."
        if D.shape[1] > D.shape[0] and _matches(got, s.max() / (s.min() ** 2 + 2 * l2)):
            return "with more atoms than dimensions DᵀD is singular: lambda_min(DᵀD) = 0, not s_min(D)^2."
        if l2 == 0 and D.shape[1] > D.shape[0]:
            return "with l2 = 0 and an overcomplete D the curvature is 0 and the bound is infinite (math.inf)."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the bound", got, exp), hint)


@exercise("adaptive_weights")
def check_adaptive_weights(fn: Callable[..., Any]) -> Feedback:
    """fn(a (m,), gamma, ref_pct) -> w (m,): clip((ref / max(a_j, 1e-5))^gamma, 0.01, 10), ref = mean of the
    top ceil(ref_pct * m) entries of a (the AEN-SAE rule after warm-up)."""
    usages = [
        torch.tensor([1.0, 0.5, 0.25, 0.1, 0.05]),
        torch.tensor([2.0, 0.0, 0.3, 1e-7, 0.9, 0.6, 0.02, 1.1]),
        torch.tensor([0.2, 0.2, 0.2, 0.2]),
    ]
    cases = []
    # (usages[1], 1.0, 0.3): ceil(0.3 * 8) = 3 top entries, where max(1, int(0.3 * 8)) would take 2.
    for a, gamma, ref_pct in [(usages[0], 1.0, 0.2), (usages[1], 0.5, 0.25), (usages[1], 2.0, 0.1), (usages[2], 1.5, 0.5),
                              (usages[1], 1.0, 0.3)]:
        rule = AdaptiveL1Weights(len(a), gamma, ema_beta=0.9, ref_pct=ref_pct, warmup_start=0, warmup_steps=0)
        rule.ema.copy_(a)
        cases.append((f"a={_fmt(a)}, gamma={gamma}, ref_pct={ref_pct}", (a, gamma, ref_pct),
                      rule.weights().double()))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        a, gamma, ref_pct = args
        ref = a.topk(max(1, math.ceil(ref_pct * len(a)))).values.mean()
        if _matches(got, (a.clamp_min(1e-5) / ref).pow(gamma).clamp(0.01, 10.0)):
            return "the ratio is ref / a_j: rarely active latents (small a_j) get the larger weight."
        if _matches(got, (ref / a.clamp_min(1e-5)).pow(gamma)):
            return "clip the weights to [0.01, 10]."
        if _matches(got, (a.max() / a.clamp_min(1e-5)).pow(gamma).clamp(0.01, 10.0)):
            return "ref is the mean of the top ceil(ref_pct * m) entries of a, not the maximum."
        floor_ref = a.topk(max(1, int(ref_pct * len(a)))).values.mean()
        if _matches(got, (floor_ref / a.clamp_min(1e-5)).pow(gamma).clamp(0.01, 10.0)):
            return "round the number of reference entries up: ceil(ref_pct * m), not int(ref_pct * m)."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("w", got, exp), hint)


def _trained_like_sae(variant: str, seed: int, d_in: int, d_sae: int, **coeffs: float):
    """A small SAE with random (untied) weights: its encoder is far from the exact codes, as early in training."""
    sae = make_sae(variant, d_in, d_sae, seed=seed, **coeffs)
    W_enc, b_enc, W_dec, b_dec = _sae_params(seed, d_in, d_sae)
    with torch.no_grad():
        for name, value in zip(("W_enc", "b_enc", "W_dec", "b_dec"), (W_enc, b_enc, W_dec, b_dec)):
            getattr(sae, name).copy_(value)
    return sae


@exercise("amortisation_gap")
def check_amortisation_gap(fn: Callable[..., Any]) -> Feedback:
    """fn(sae, x) -> float: mean_b [L(x, encoder codes) - L(x, exact codes)] with the SAE's own per-sample
    objective L(x, h) = ||x - decode(h)||^2 + l1 sum_j |h_j| + l2 sum_j h_j^2 (no adaptive weights here)."""
    cases = []
    for seed, (variant, d_in, d_sae, coeffs) in enumerate([
        ("relu_l1", 4, 6, {"l1_coeff": 0.5}),
        ("elastic_net", 3, 8, {"l1_coeff": 0.3, "l2_coeff": 0.4}),
        ("elastic_net", 5, 5, {"l1_coeff": 1.0, "l2_coeff": 0.1}),
    ]):
        sae = _trained_like_sae(variant, 500 + seed, d_in, d_sae, **coeffs)
        x = 2 * torch.randn(16, d_in, generator=_gen(600 + seed))
        expected = torch.tensor(amortisation_gap(sae, x, tol=1e-10)["gap"], dtype=torch.float64)
        cases.append((f"test input {seed} ({variant}, {coeffs}, x of shape {tuple(x.shape)})", (sae, x), expected))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        sae, x = args
        l2 = float(getattr(sae, "l2_coeff", 0.0))
        with torch.no_grad():
            h_enc, h_star = sae.encode(x).double(), solve_for_sae(sae, x, tol=1e-10).h.double()

            def objective(h: Tensor, l1: float, l2: float) -> Tensor:
                return ((x - sae.decode(h.float())).double().pow(2).sum(1) + l1 * h.abs().sum(1)
                        + l2 * h.pow(2).sum(1))

            l1 = float(sae.l1_coeff)
            gap = objective(h_enc, l1, l2) - objective(h_star, l1, l2)
            known = {
                "the solver minimises half the SAE loss (1/2 ||x - D h||^2 + l1/2 ...): evaluate the SAE's own "
                "objective, not the solver's, or the gap comes out halved.": gap.mean() / 2,
                "the gap is L(encoder codes) - L(exact codes), which is >= 0: you subtracted the other way.":
                    -gap.mean(),
                "include the ridge term l2 sum_j h_j^2 of the elastic net in the objective.":
                    (objective(h_enc, l1, 0.0) - objective(h_star, l1, 0.0)).mean(),
                "compare objectives, not codes: the gap is a difference of losses.":
                    (h_enc - h_star).norm() / h_star.norm(),
            }
        if l2 == 0:
            known.pop("include the ridge term l2 sum_j h_j^2 of the elastic net in the objective.")
        return next((message for message, value in known.items() if _matches(got, value)), None)

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the gap", got, exp), hint)


# --- chapter 3 ---------------------------------------------------------------------------------------------
@exercise("dead_fraction")
def check_dead_fraction(fn: Callable[..., Any]) -> Feedback:
    """fn(h (B, m)) -> float in [0, 1]: the share of latents that are zero on every row of the batch."""
    g = _gen(400)
    sparse = torch.relu(torch.randn(6, 10, generator=g) - 1.0)
    sparse[:, [2, 5, 7]] = 0.0
    cases = [(f"codes of shape {tuple(h.shape)}", (h,), torch.tensor(dead_fraction(h), dtype=torch.float64))
             for h in (sparse, torch.zeros(3, 4), torch.eye(4)[:2], torch.relu(torch.randn(50, 8, generator=g)))]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        (h,) = args
        silent = (h == 0).all(dim=0).double()
        if _matches(got, silent.sum()):
            return "return the fraction of latents (divide by m), not their number."
        if _matches(got, 100 * silent.mean()):
            return "return a fraction in [0, 1], not a percentage."
        if _matches(got, (h == 0).any(dim=0).double().mean()):
            return "a latent is dead when it is zero on every row, not on some row: use .all(dim=0)."
        if _matches(got, (h == 0).double().mean()):
            return "count latents (columns), not entries: a latent is dead when its whole column is zero."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the dead fraction", got, exp), hint)


CALIBRATION_TRIALS = 8  # the budget of training runs a calibration may spend in exercise calibrate_l1


def _power_law(c: float, slope: float, floor: float = 0.0) -> Callable[[float], float]:
    """A stand-in for "train with l1, return the held-out L0": L0 = c * l1^-slope (+ a floor)."""
    return lambda l1: floor + c * l1 ** -slope


@exercise("calibrate_l1")
def check_calibrate_l1(fn: Callable[..., Any]) -> Feedback:
    """fn(measure_l0, target, l1_start, trials) -> l1 with |measure_l0(l1) / target - 1| <= 0.1, calling
    measure_l0 at most ``trials`` times (each call is a training run)."""
    _require_callable(fn)
    cases = [("L0 = 40 l1^-1, target 16, start 0.1", _power_law(40, 1.0), 16.0, 0.1),
             ("L0 = 40 l1^-1, target 16, start 100", _power_law(40, 1.0), 16.0, 100.0),
             ("L0 = 3 l1^-2.5, target 4, start 1", _power_law(3, 2.5), 4.0, 1.0),
             ("L0 = 1 + 200 l1^-0.7, target 16, start 0.01", _power_law(200, 0.7, 1.0), 16.0, 0.01)]
    for description, law, target, start in cases:
        calls: list[float] = []

        def measure(l1: float, law=law, calls=calls) -> float:
            if not (isinstance(l1, (int, float)) and math.isfinite(l1) and l1 > 0):
                raise ValueError(f"measure_l0 was called with l1={l1!r}; l1 must be a number > 0")
            calls.append(float(l1))
            return law(float(l1))

        got, error = _call(fn, (measure, target, start, CALIBRATION_TRIALS))
        if error is None and got is None:
            error = "your function returned None (missing `return`?)"
        if error is None and not isinstance(got, (int, float)):
            error = f"your function returned a {type(got).__name__}, not the l1 value"
        if error is not None:
            return Feedback(f"not yet: for {description}: {error}.", False)
        hint = None
        if len(calls) > CALIBRATION_TRIALS:
            problem = f"measure_l0 was called {len(calls)} times, the budget is {CALIBRATION_TRIALS} runs"
            hint = "each call is a training run: stop as soon as a trial is within 10 % of the target."
        elif not (math.isfinite(got) and got > 0 and abs(law(got) / target - 1) <= 0.1):
            l0 = law(got) if math.isfinite(got) and got > 0 else float("nan")
            problem = f"you returned l1 = {got:.4g} with L0 = {l0:.4g}, not within 10 % of {target:g}"
            if calls and len(calls) > 1 and all(b > a for a, b in zip(calls, calls[1:])) and law(calls[0]) < target:
                hint = "L0 falls as l1 grows: when L0 is below the target, make l1 smaller."
            elif calls and all(abs(math.log(b / a)) < 0.2 for a, b in zip(calls, calls[1:])) and len(calls) > 2:
                hint = "small additive steps take too many runs: multiply l1 by a factor until the target is bracketed, then bisect on log l1."
            else:
                hint = "return the l1 of the trial closest to the target (not the last one tried)."
        else:
            continue
        return Feedback(f"not yet: for {description}: {problem}." + (f"\nHint: {hint}" if hint else ""), False)
    return Feedback(f"correct: your calibration reaches the target within {CALIBRATION_TRIALS} runs on all "
                    f"{len(cases)} L0(l1) curves.", True)


@exercise("dead_window")
def check_dead_window(fn: Callable[..., Any]) -> Feedback:
    """fn(density, risk) -> int: the smallest N with (1 - density)^N <= risk (a latent that fires independently on a
    fraction ``density`` of samples looks dead on N samples with probability (1 - density)^N)."""
    cases = []
    for density, risk in [(1e-4, 0.01), (1e-3, 0.05), (0.5, 0.25), (0.5, 0.2), (1e-6, 0.5), (0.2, 1e-6)]:
        n = math.ceil(math.log(risk) / math.log1p(-density))
        while n > 1 and (1 - density) ** (n - 1) <= risk:  # exact at the boundary (0.5^2 = 0.25)
            n -= 1
        cases.append((f"density={density:g}, risk={risk:g}", (density, risk), torch.tensor(float(n), dtype=torch.float64)))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        density, risk = args
        exact = math.log(risk) / math.log1p(-density)
        if _matches(got, torch.tensor(float(math.floor(exact)), dtype=torch.float64)):
            return "round up: with N rounded down the probability of looking dead is still above the risk."
        if _matches(got, torch.tensor(float(math.ceil(-math.log(risk) / density)), dtype=torch.float64)):
            return "log(1 - p) is only about -p for small p: use math.log1p(-density)."
        if _matches(got, torch.tensor(float(math.ceil(risk / density)), dtype=torch.float64)):
            return "the chance of N silent samples is (1 - p)^N: solve (1 - p)^N <= risk for N with logarithms."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("N", got, exp), hint)


# --- chapter 4 ---------------------------------------------------------------------------------------------
@exercise("warmup_ramp")
def check_warmup_ramp(fn: Callable[..., Any]) -> Feedback:
    """fn(step, warmup_start, warmup_steps) -> float: r = clip((step - start) / steps, 0, 1); with
    warmup_steps = 0, r jumps from 0 to 1 at warmup_start."""
    cases = []
    for step, start, steps in [(0, 10, 20), (10, 10, 20), (15, 10, 20), (30, 10, 20), (45, 10, 20), (4, 5, 0),
                               (5, 5, 0), (7, 0, 3)]:
        rule = AdaptiveL1Weights(4, 1.0, ema_beta=0.9, ref_pct=0.25, warmup_start=start, warmup_steps=steps)
        rule.step.fill_(step)
        cases.append((f"step={step}, warmup_start={start}, warmup_steps={steps}", (step, start, steps),
                      rule.ramp().double()))

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        step, start, steps = args
        if steps == 0:
            return "with warmup_steps = 0 the ramp is a step: 0 before warmup_start, 1 from it on."
        if _matches(got, torch.tensor((step - start) / steps, dtype=torch.float64)):
            return "clip the ramp to [0, 1]: it is 0 before the warm-up and stays 1 after it."
        if _matches(got, torch.tensor(min(max(step / (start + steps), 0.0), 1.0), dtype=torch.float64)):
            return "the ramp starts at warmup_start: r = (step - warmup_start) / warmup_steps."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("r", got, exp), hint)


def _reference_n_clipped(ema: Tensor, ref_pct: float, w_max: float) -> Tensor:
    rule = AdaptiveL1Weights(len(ema), 1.0, ema_beta=0.9, ref_pct=ref_pct, warmup_start=0, warmup_steps=0, w_max=w_max)
    rule.ema.copy_(ema)
    return (rule.weights() >= w_max * (1 - 1e-9)).sum().double()


@exercise("weights_at_clip")
def check_weights_at_clip(fn: Callable[..., Any]) -> Feedback:
    """fn(ema, ref_pct, w_max) -> int: how many latents have ref / max(a_j, 1e-5) >= w_max (gamma = 1), with ref the
    mean of the top ceil(ref_pct * m) entries of ema."""
    g = _gen(410)
    usage = torch.rand(200, generator=g) * 0.02 + 0.01
    grown = usage.clone()
    grown[:3] = torch.tensor([0.3, 0.25, 0.2])  # a few latents absorb extra atoms: the reference jumps
    cases = [(f"ema of {len(e)} latents, ref_pct={p}, w_max={w}", (e, p, w), _reference_n_clipped(e, p, w))
             for e, p, w in [(usage, 0.01, 10.0), (grown, 0.01, 10.0), (grown, 0.05, 10.0),
                             (torch.tensor([1.0, 0.5, 0.3, 0.1, 0.09, 0.05, 0.0, 0.02]), 0.3, 7.0),
                             (torch.tensor([0.4, 0.4, 0.4, 0.04, 0.039, 0.0]), 0.5, 10.0)]]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        ema, pct, w_max = args
        n_floor = max(1, int(pct * len(ema)))
        ref_floor = ema.topk(n_floor).values.mean()
        if _matches(got, ((ref_floor / ema.clamp_min(1e-5)) >= w_max).sum().double()):
            return "the reference set has ceil(ref_pct * m) latents (at least 1), not int(ref_pct * m)."
        if _matches(got, ((ema.max() / ema.clamp_min(1e-5)) >= w_max).sum().double()):
            return "ref is the mean of the top ceil(ref_pct * m) entries, not the maximum."
        if _matches(got, ((ema.topk(math.ceil(pct * len(ema))).values.mean() / ema.clamp_min(1e-5)) > w_max).sum().double()):
            return "a weight is at the clip when ref / a_j >= w_max (clip(w) == w_max), including equality."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the count", got, exp), hint)


def _objective_case(seed: int, weighted: bool) -> tuple[str, tuple[Any, ...], Tensor]:
    g = _gen(seed)
    d_in, d_sae, batch = 5, 8, 4
    sae = make_sae("aen" if weighted else "elastic_net", d_in, d_sae, l1_coeff=0.3, l2_coeff=0.05, seed=seed)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    x = torch.randn(batch, d_in, generator=g)
    h = torch.relu(torch.randn(batch, d_sae, generator=g))
    w = 1 + 3 * torch.rand(d_sae, generator=g) if weighted else torch.ones(d_sae)
    expected = _sae_objective(sae, x, h, w if weighted else None)
    args = (x, h, sae.W_dec.detach().clone(), sae.b_dec.detach().clone(), 0.3, 0.05, w)
    return (f"a batch of {batch} with {'uneven' if weighted else 'unit'} weights w", args, expected)


@exercise("sae_objective")
def check_sae_objective(fn: Callable[..., Any]) -> Feedback:
    """fn(x, h, W_dec, b_dec, l1, l2, w) -> (B,): ||x - (W_dec h + b_dec)||^2 + l1 sum_j w_j |h_j| + l2 sum_j h_j^2 per
    sample (the objective metrics.amortisation_gap compares encoder codes and exact codes with)."""
    cases = [_objective_case(420, False), _objective_case(421, True), _objective_case(422, True)]

    def hint(args: tuple[Any, ...], got: Any) -> str | None:
        x, h, W_dec, b_dec, l1, l2, w = args
        err = (x - h @ W_dec.T - b_dec).double().pow(2)
        pen = l1 * (h * w).double().sum(1) + l2 * h.double().pow(2).sum(1)
        if _matches(got, err.sum(1) + l1 * h.double().sum(1) + l2 * h.double().pow(2).sum(1)):
            return "the l1 term is weighted: l1 * sum_j w_j |h_j|."
        if _matches(got, err.mean(1) + pen):
            return "sum the squared error over features (the SAE's loss scale), do not average it."
        if _matches(got, (x - h @ W_dec.T).double().pow(2).sum(1) + pen):
            return "the reconstruction includes the decoder bias: x_hat = W_dec h + b_dec."
        if _matches(got, (err.sum(1) + pen).mean()):
            return "return one objective per sample (shape (B,)), not the batch mean."
        return None

    return _run_cases(fn, cases, lambda got, exp: _mismatch("the objective", got, exp), hint)


# The language-model chapters' checkers live in their own module and register here (imported last: they use the
# machinery above).
from aen_mini.book import exercises_lm as _exercises_lm  # noqa: E402,F401
