"""The report's statistics: the Wilson score interval of an accuracy, the unbiased pass@k estimator (Chen et al.
2021, "Evaluating Large Language Models Trained on Code"), and the majority vote over a problem's samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

Z_95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson_interval(successes: float, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: unlike the normal approximation it stays inside [0, 1] and
    is sound near 0% and 100% and for small samples. `successes` may be fractional (a mean over samples)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    z2 = z * z
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return (max(0.0, centre - half), min(1.0, centre + half))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The probability that at least one of k samples drawn without replacement from n, c of them correct,
    is correct: 1 - C(n-c, k) / C(n, k), as a product so large n does not overflow."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def majority_vote(predictions: Sequence[str | None], same: Callable[[str, str], bool] = str.__eq__) -> str | None:
    """The answer most samples give (None counts for nothing), answers grouped by `same` (a grader's
    equivalence: 0.5 and \\frac{1}{2} are one vote); ties go to the answer given first."""
    groups: list[list[str]] = []
    for prediction in predictions:
        if prediction is None:
            continue
        for group in groups:
            if same(group[0], prediction):
                group.append(prediction)
                break
        else:
            groups.append([prediction])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max keeps the first of equal lengths
