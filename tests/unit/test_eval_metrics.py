"""The report's statistics: pass@k against brute-force enumeration of every k-subset, the Wilson interval
against published values, and the majority vote's grouping and ties."""

from __future__ import annotations

import itertools

import pytest

from qwq.eval.metrics import majority_vote, pass_at_k, wilson_interval


@pytest.mark.parametrize("n", range(1, 8))
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        samples = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            subsets = list(itertools.combinations(samples, k))
            expected = sum(any(s) for s in subsets) / len(subsets)
            assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_stays_finite_for_many_samples():
    assert pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert pass_at_k(1000, 0, 500) == 0.0
    assert 0.999 < pass_at_k(1000, 10, 500) <= 1.0


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 4), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_refuses_impossible_counts(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


@pytest.mark.parametrize(
    ("successes", "trials", "low", "high"),
    [
        # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
    ],
)
def test_wilson_interval_matches_published_values(successes, trials, low, high):
    got_low, got_high = wilson_interval(successes, trials)
    assert got_low == pytest.approx(low, abs=1e-4)
    assert got_high == pytest.approx(high, abs=1e-4)


def test_wilson_interval_of_no_trials_is_everything():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_majority_vote_groups_equivalent_answers_and_ignores_none():
    assert majority_vote(["3", None, "4", "4", None, None]) == "4"
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    same = lambda a, b: a.replace(" ", "") == b.replace(" ", "")  # noqa: E731
    assert majority_vote(["1/2", "7", "1 / 2", "7", "1/ 2"], same) == "1/2"


def test_majority_vote_tie_goes_to_the_first_answer():
    assert majority_vote(["B", "A", "A", "B"]) == "B"
