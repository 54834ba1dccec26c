"""The pass rule of ``tuner regress``: a one-sided t-test with the locked tolerance as its margin.

Let ``worse`` be how much the new mean is worse than the locked mean, in metric units (locked − new for a metric
to maximize, new − locked for one to minimize). Each locked recipe carries a ``tolerance``, fixed when it is locked::

    tolerance = max(floor, min_effect * locked_std)

``floor`` is an absolute floor in metric units (default: 1% of the locked mean's magnitude) below which a change
never fails, whatever the seeds say; ``min_effect`` (default 0.5) is the minimum effect size, in units of the
locked seed-to-seed standard deviation. The check is a one-sided t-test with that tolerance as its margin::

    H0: true worse <= tolerance        H1: true worse > tolerance        REGRESSED when p < alpha (default 0.05)

* The test is **paired** (``scipy.stats.ttest_1samp`` of the per-seed differences against the tolerance) over the
  seeds both sides have: same seed, same initialisation and data order, so the seed noise cancels. ``tuner regress``
  runs the locked seeds, the first S of them (``--seeds S`` fewer) or all of them and fresh ones (``--seeds S``
  more); the fresh ones are reported, not tested (``tuner.ci.runner.compare``).
* Only when no locked seed was re-run is it **Welch's** t-test (``scipy.stats.ttest_ind(equal_var=False)``) of the
  new values against the locked ones.
* When both sides have zero spread (a bit-identical rerun) or a side has a single seed, no test is possible and
  the rule is the plain threshold ``worse > tolerance``.
* A run that diverges, or ends without an evaluation, is a regression by itself.

Since the test's margin is at least the floor, an unchanged recipe on fresh seeds fails far less often than
``alpha`` (measured: ``bench/regress_rates.py``), and a rerun on the same CPU with the same seeds is bit-identical
(``deterministic: true``), so ``worse`` is exactly 0. On another device or platform the per-seed differences are
float noise; the paired test over the seeds, with the tolerance as margin, absorbs them (see README).

scipy is imported inside the test.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_ALPHA = 0.05
DEFAULT_MIN_EFFECT = 0.5
DEFAULT_FLOOR_FRACTION = 0.01  # the default floor: this fraction of |locked mean|
MIN_FLOOR = 1e-9
TEST_NAME = (
    "one-sided t-test: REGRESSED when p(worse > tolerance) < alpha; paired over the locked seeds re-run, "
    "Welch when none is"
)


def tolerance_for(std: float, floor: float, min_effect: float) -> float:
    """``max(floor, min_effect * std)``: the margin of the pass rule."""
    return max(floor, min_effect * std)


def default_floor(mean: float) -> float:
    """1% of the locked mean's magnitude, to two significant digits (never 0)."""
    return max(float(f"{DEFAULT_FLOOR_FRACTION * abs(mean):.2g}"), MIN_FLOOR)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass(frozen=True)
class Verdict:
    """The outcome of the pass rule for one locked recipe."""

    passed: bool
    worse: float  # how much the new mean is worse than the locked mean (metric units; negative = better)
    tolerance: float
    p_value: float
    test: str  # "paired t", "Welch t", "threshold", "diverged"
    reason: str


def judge(
    locked: Sequence[float],
    new: Sequence[float],
    direction: str,
    tolerance: float,
    alpha: float = DEFAULT_ALPHA,
    paired: bool = False,
) -> Verdict:
    """Apply the pass rule (module docstring) to locked and new per-seed values."""
    sign = 1.0 if direction == "maximize" else -1.0
    good_locked, good_new = [sign * v for v in locked], [sign * v for v in new]
    worse = statistics.fmean(good_locked) - statistics.fmean(good_new)
    test, p_value = _one_sided_p(good_locked, good_new, tolerance, paired)
    passed = not p_value < alpha
    relation = "within" if worse <= tolerance else "beyond"
    reason = (
        f"worse by {worse:.4g} ({relation} tolerance {tolerance:.4g}); {test} p={p_value:.3g} "
        f"{'>=' if passed else '<'} alpha={alpha:g}"
    )
    return Verdict(passed, worse, tolerance, p_value, test, reason)


def _one_sided_p(good_locked: list[float], good_new: list[float], tolerance: float, paired: bool) -> tuple[str, float]:
    """p-value of H0 'true worse <= tolerance' against H1 'true worse > tolerance'."""
    from scipy import stats

    if paired and len(good_locked) == len(good_new) and len(good_new) > 1:
        diffs = [a - b for a, b in zip(good_locked, good_new)]
        if _spread(diffs) <= 1e-12 * max(1.0, *(abs(d) for d in diffs)):  # constant: no test (and no t-statistic)
            return "threshold", _threshold_p(diffs[0], tolerance)
        return "paired t", float(stats.ttest_1samp(diffs, tolerance, alternative="greater").pvalue)
    worse = statistics.fmean(good_locked) - statistics.fmean(good_new)
    if min(len(good_locked), len(good_new)) < 2 or (_spread(good_locked) == 0 and _spread(good_new) == 0):
        return "threshold", _threshold_p(worse, tolerance)
    shifted = [value + tolerance for value in good_new]
    return "Welch t", float(stats.ttest_ind(good_locked, shifted, equal_var=False, alternative="greater").pvalue)


def _threshold_p(worse: float, tolerance: float) -> float:
    return 0.0 if worse > tolerance else 1.0


def _spread(values: list[float]) -> float:
    return max(values) - min(values)
