"""Each checker accepts the reference solution and rejects wrong ones with a message naming the input and the
mistake; a student's stub, crash or odd return value is feedback, never an error. The references and the wrong
answers live beside this file, one module per pair of chapters (answers_basics, answers_synthetic, answers_lm)."""
from __future__ import annotations

import pytest
import torch

import answers_basics
import answers_lm
import answers_synthetic
from aen_mini.book.exercises import EXERCISES, Feedback, check
from answers_basics import elastic_net_prox, sae_loss

CHAPTERS = {"basics": answers_basics, "synthetic": answers_synthetic, "lm": answers_lm}
SOLUTIONS = [(chapter, name, fn) for chapter, m in CHAPTERS.items() for name, fn in m.SOLUTIONS.items()]
MISTAKES = [(chapter, *mistake) for chapter, m in CHAPTERS.items() for mistake in m.MISTAKES]
# calibrate_l1's checker reports the calls the answer made (there is no single expected value to show)
NO_EXPECTED_VALUE = {"calibrate_l1"}


@pytest.mark.parametrize("chapter, name, solution", SOLUTIONS, ids=[f"{c}-{n}" for c, n, _ in SOLUTIONS])
def test_reference_solution_passes(chapter: str, name: str, solution) -> None:
    feedback = check(name, solution)
    assert isinstance(feedback, Feedback) and feedback.passed, feedback
    assert feedback.startswith("correct")


def test_every_registered_exercise_has_a_solution_and_a_mistake_here() -> None:
    solutions = {name for _, name, _ in SOLUTIONS}
    assert solutions >= set(EXERCISES), f"no reference solution for {sorted(set(EXERCISES) - solutions)}"
    caught = {name for _, name, *_ in MISTAKES}
    assert caught >= set(EXERCISES), f"no wrong answer tested for {sorted(set(EXERCISES) - caught)}"


@pytest.mark.parametrize("chapter, name, wrong, words", MISTAKES,
                         ids=[f"{m[0]}-{m[1]}-{i}" for i, m in enumerate(MISTAKES)])
def test_wrong_answer_is_named(chapter: str, name: str, wrong, words: list[str]) -> None:
    feedback = check(name, wrong)
    assert not feedback.passed and feedback.startswith("not yet"), feedback
    for word in words:
        assert word in feedback, f"{word!r} not in feedback:\n{feedback}"
    if name not in NO_EXPECTED_VALUE:
        assert "expected" in feedback, feedback


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_every_checker_rejects_the_student_stub_with_a_message(name: str) -> None:
    def stub(*args):
        raise NotImplementedError("Exercise 9.9: your code here")

    feedback = check(name, stub)
    assert not feedback.passed and "raised NotImplementedError: Exercise 9.9: your code here" in feedback


def test_a_crashing_or_silent_answer_is_feedback_not_an_error() -> None:
    def crashes(z, l1, l2):
        raise RuntimeError("boom")

    feedback = check("elastic_net_prox", crashes)
    assert not feedback.passed and "raised RuntimeError: boom" in feedback
    assert "returned None" in check("elastic_net_prox", lambda z, l1, l2: None)
    assert "shape (3,)" in check("elastic_net_prox", lambda z, l1, l2: z[:3])
    assert "(x_hat, h)" in check("relu_sae_forward", lambda *args: args[0])


def test_student_inputs_are_copies() -> None:
    def mutates(z, l1, l2):
        z.zero_()
        return z

    check("elastic_net_prox", mutates)
    assert check("elastic_net_prox", elastic_net_prox).passed  # the cases were not corrupted


def test_unusable_answers_raise() -> None:
    with pytest.raises(TypeError, match="pass your function"):
        check("sae_loss", 3.0)
    with pytest.raises(ValueError, match="unknown exercise"):
        check("no_such_exercise", sae_loss)


def test_feedback_displays_as_plain_text() -> None:
    feedback = Feedback("correct: fine", True)
    assert repr(feedback) == "correct: fine" and feedback.passed


def test_sae_objective_matches_the_amortisation_gap_objective() -> None:
    from aen_mini.eval.metrics import _sae_objective
    from aen_mini.sae import make_sae

    sae = make_sae("aen", 4, 6, l1_coeff=0.2, l2_coeff=0.1)
    x, h = torch.randn(3, 4), torch.rand(3, 6)
    w = sae.l1_weights()
    assert torch.allclose(answers_synthetic.sae_objective(x, h, sae.W_dec.detach(), sae.b_dec.detach(), 0.2, 0.1, w)
                          .double(), _sae_objective(sae, x, h, w).detach(), atol=1e-5)
