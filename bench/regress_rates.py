"""False-alarm and detection rates of `tuner regress`'s pass rule, side by side with two simpler rules.

Real training (digits-mlp, hidden 16, 4 epochs, Adam + an x0.3-per-epoch decay: the recipe of tests/test_regress.py).
Every seed of a pool is trained once per recipe; each simulated CI run then takes disjoint seeds from the pool:

* a lock: the unchanged recipe on ``--seeds`` seeds (its tolerance as `tuner lock` computes it);
* "unchanged, fresh seeds": the unchanged recipe on ``--seeds`` other seeds (Welch's test): a pass is correct;
* "regressed, fresh seeds" / "regressed, locked seeds": a smaller LR (x0.7, x0.5) on other seeds (Welch) or on the
  lock's own seeds (paired, what `tuner regress` does by default): a failure is correct.

The unchanged recipe on the locked seeds is bit-identical on one machine (asserted here), so it always passes.
Rules compared: ``tuner`` (one-sided t-test with margin max(floor, 0.5 std), alpha 0.05), ``t-test, no margin``
(one-sided t-test of new < locked at alpha 0.05) and ``mean drop`` (fail whenever the new mean is lower).

    .venv/bin/python bench/regress_rates.py --runs 40 --seeds 5
"""

from __future__ import annotations

import argparse
import statistics
import time

from tuner.ci.rule import DEFAULT_MIN_EFFECT, default_floor, judge, mean_std, tolerance_for
from tuner.ci.runner import FitJob, derive_seeds, fit_job
from tuner.recipe import Recipe

EPOCH = 23
DECAY = [[0, 1.0], [EPOCH, 0.3], [2 * EPOCH, 0.09], [3 * EPOCH, 0.027]]
GOOD = Recipe(
    optimizer="adam",
    lr=3e-2,
    optimizer_params={"beta1": 0.9, "beta2": 0.999},
    schedule="piecewise",
    schedule_params={"points": DECAY, "interpolation": "constant"},
    batch_size=64,
)
REGRESSIONS = {"lr x0.7": 0.7, "lr x0.5": 0.5}


def train(recipe: Recipe, seeds: list[int]) -> list[float]:
    jobs = [
        FitJob(
            "digits-mlp",
            {"hidden": [16]},
            ".",
            recipe.to_dict(),
            {"epochs": 4},
            "accuracy",
            "maximize",
            "cpu",
            seed,
            True,
        )
        for seed in seeds
    ]
    return [fit_job(job).value for job in jobs]


def rules(locked: list[float], new: list[float], paired: bool) -> dict[str, bool]:
    """Did each rule PASS the new values?"""
    mean, std = mean_std(locked)
    tolerance = tolerance_for(std, default_floor(mean), DEFAULT_MIN_EFFECT)
    return {
        "tuner": judge(locked, new, "maximize", tolerance, paired=paired).passed,
        "t-test, no margin": judge(locked, new, "maximize", 0.0, paired=paired).passed,
        "mean drop": statistics.fmean(new) >= mean,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="simulated CI runs")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per lock and per run")
    args = parser.parse_args()
    n = args.seeds
    pool = derive_seeds(12345, 2 * n * args.runs)
    started = time.perf_counter()
    good = train(GOOD, pool)
    assert train(GOOD, pool[:n]) == good[:n], "same seed, same machine must give bit-identical values"
    bad = {
        name: train(Recipe.from_dict({**GOOD.to_dict(), "lr": GOOD.lr * factor}), pool)
        for name, factor in REGRESSIONS.items()
    }
    seconds = time.perf_counter() - started
    scenarios: dict[str, list[dict[str, bool]]] = {}
    for run in range(args.runs):
        lock_slice, fresh_slice = slice(2 * n * run, 2 * n * run + n), slice(2 * n * run + n, 2 * n * (run + 1))
        locked = good[lock_slice]
        scenarios.setdefault("unchanged, fresh seeds (pass wanted)", []).append(rules(locked, good[fresh_slice], False))
        for name, values in bad.items():
            scenarios.setdefault(f"{name}, fresh seeds (fail wanted)", []).append(
                rules(locked, values[fresh_slice], False)
            )
            scenarios.setdefault(f"{name}, locked seeds (fail wanted)", []).append(
                rules(locked, values[lock_slice], True)
            )
    print(f"{args.runs} runs x {n} seeds; {len(pool) * (1 + len(REGRESSIONS)) + n} fits in {seconds:.0f} s")
    print(
        f"unchanged accuracy {statistics.fmean(good):.4f} ± {statistics.stdev(good):.4f}; "
        + "; ".join(f"{name} {statistics.fmean(v):.4f} ± {statistics.stdev(v):.4f}" for name, v in bad.items())
    )
    names = list(next(iter(scenarios.values()))[0])
    print(f"{'scenario':42s}" + "".join(f"{name:>20s}" for name in names) + "   (share of runs that PASS)")
    for scenario, outcomes in scenarios.items():
        shares = [sum(o[name] for o in outcomes) / len(outcomes) for name in names]
        print(f"{scenario:42s}" + "".join(f"{share:>20.0%}" for share in shares))


if __name__ == "__main__":
    main()
