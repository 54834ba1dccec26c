"""LR range test: the suggestion rule on known curves (spike, noise, no decrease), a real sweep, `tuner lr-find`,
`lr: auto`."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import optuna
import pytest

from tests.helpers import mlflow_runs, write_study
from tuner.train.lr_range import SweepConfig, diverged, find_lrs, suggest, sweeps_of

LRS = SweepConfig(lr_start=1e-6, lr_end=10.0, steps=100).lrs()


def _valley(lr: float) -> float:
    """A typical range-test curve: flat at 2.3, falls around lr 1e-2, lowest near 0.1, explodes past 0.3."""
    x = math.log10(lr)
    return 2.3 - 2.0 / (1 + math.exp(-4 * (x + 2))) + (0.0 if lr < 0.3 else 30 * (lr - 0.3))


CLEAN = [_valley(lr) for lr in LRS]


def test_clean_curve_suggests_the_valley_entrance() -> None:
    result = suggest(LRS, CLEAN)
    assert 3e-3 < result.lr < 5e-2
    assert result.low == pytest.approx(result.lr / 10)
    assert result.lr < result.high <= 0.3
    assert result.note == "valley entrance of the smoothed loss"


def test_an_early_spike_does_not_move_the_suggestion() -> None:
    spiked = [50.0, 80.0, 40.0] + CLEAN[3:]
    assert suggest(LRS, spiked).lr == pytest.approx(suggest(LRS, CLEAN).lr, rel=0.25)


def _flat_valley(lr: float) -> float:
    """A noisy task's sweep: falls around lr 1e-2, then a long flat bottom up to lr 0.5, rising past it."""
    x = math.log10(lr)
    return 4.0 - 3.0 / (1 + math.exp(-6 * (x + 2))) + (0.0 if lr < 0.5 else 4 * (lr - 0.5))


def test_the_range_reaches_the_far_end_of_a_flat_noisy_valley() -> None:
    """The lowest smoothed loss of a flat bottom is where the noise put it (here a dip at lr 0.02-0.05); the range's
    high is the highest LR still in the valley's band (the noisy quadratic's momentum sweep: min at 0.028, best full
    runs at 0.36-0.42), not max(that minimum, 3x the suggestion): 0.073 here."""
    rng = random.Random(0)
    noisy = [_flat_valley(lr) + rng.gauss(0, 0.05) - (0.3 if 0.02 < lr < 0.05 else 0.0) for lr in LRS]
    result = suggest(LRS, noisy)
    assert 0.02 < result.lr_min_loss < 0.05 and result.lr < 0.03  # the minimum sits early in the valley
    assert 0.3 < result.high < 0.8  # ... the range goes on to where the loss leaves the valley (0.5 + noise)
    assert result.low == pytest.approx(result.lr / 10)


@pytest.mark.parametrize("seed", range(5))
def test_noise_moves_the_suggestion_by_less_than_2x(seed: int) -> None:
    rng = random.Random(seed)
    noisy = [loss + rng.gauss(0, 0.08) for loss in CLEAN]
    ratio = suggest(LRS, noisy).lr / suggest(LRS, CLEAN).lr
    assert 0.5 < ratio < 2.0


@pytest.mark.parametrize(
    "losses, note",
    [
        ([2.0 + 0.1 * i for i in range(40)], "barely fell"),  # rises from the start: LR range too high
        ([2.3] * 100, "barely fell"),  # flat: the model does not respond
        ([float("nan")] * 5, "not finite at the first step"),  # diverged at once
        ([2.3, float("inf")], "barely fell"),  # one finite point
    ],
)
def test_never_empty(losses: list[float], note: str) -> None:
    result = suggest(LRS, losses)
    assert math.isfinite(result.lr) and result.lr > 0
    assert result.low < result.lr < result.high
    assert note in result.note


def test_a_sweep_that_diverged_never_proposes_an_lr_at_or_above_where_it_diverged() -> None:
    """The issue's case: adagrad's range reached 0.314 while its sweep diverged at 0.278, so `lr: auto` searched LRs
    known to diverge. Here the valley's range reaches its lowest loss (lr 0.2) and the sweep stopped at 0.17."""
    stop = next(i for i, lr in enumerate(LRS) if lr >= 0.15)
    free = suggest(LRS, CLEAN)
    assert free.high > LRS[stop]  # without the divergence, the range would reach past it
    capped = suggest(LRS[: stop + 1], CLEAN[: stop + 1], diverged_at=LRS[stop])
    assert capped.high == LRS[stop - 1] < LRS[stop]  # the last LR before divergence
    assert capped.low <= capped.lr <= capped.high and capped.lr == free.lr
    assert "below lr 0.17" in capped.note and "where the sweep diverged" in capped.note
    # the entrance itself beyond the cap: the suggestion comes down to it, the low stays below
    early = suggest(LRS, CLEAN, diverged_at=free.lr)
    assert early.lr == early.high < free.lr and early.low <= early.lr
    # a non-finite loss is a divergence at its LR, even when the caller does not say so
    nan_at = next(i for i, lr in enumerate(LRS) if lr >= 2 * free.lr)  # 3 x the entrance lies past it
    blown = suggest(LRS, [*CLEAN[:nan_at], float("nan")])
    assert blown.high == LRS[nan_at - 1] and blown.low <= blown.lr <= blown.high
    assert "where the sweep diverged" in blown.note
    # diverged at the very first LR: the suggestion is a tenth of it, the whole range below it
    first = suggest(LRS, [float("inf")], diverged_at=LRS[0])
    assert first.high < LRS[0] and first.lr == pytest.approx(LRS[0] / 10)


def test_a_real_sweep_that_diverges_caps_its_range_below_the_divergence() -> None:
    """sgd on digits up to lr 100, stopped as soon as the loss is 1.3x its low: the valley's 3 x entrance (4.1)
    lies past the divergence (3.5) -- capped, the suggestion and range stay below it, and `summary()` (what
    `lr: auto` searches) too."""
    from tuner.tasks import load_task
    from tuner.train.lr_range import range_test

    task = load_task("digits-mlp", {"hidden": [32]})
    config = SweepConfig(steps=100, lr_end=100.0, divergence_factor=1.3)
    finding = range_test(task, "sgd", batch_size=64, config=config, device="cpu")
    assert finding.stopped.startswith("diverged at lr")
    diverged_at = finding.lrs[-1]
    row = finding.summary()
    assert row["low"] <= row["lr"] <= row["high"] < diverged_at
    assert row["high"] == finding.lrs[-2] and "where the sweep diverged" in row["note"]
    assert row["steps"] == len(finding.losses) < config.steps and row["seconds"] > 0  # what the study's compute counts


def test_divergence_waits_for_min_steps_and_ignores_single_spikes() -> None:
    assert not diverged([2.3, 90.0, 2.2, 2.2, 2.1, 2.1], min_steps=10, factor=4)  # early spike
    assert not diverged([2.0] * 20 + [50.0, 2.0], min_steps=10, factor=4)  # one spike: median ignores it
    assert diverged([2.0] * 20 + [50.0] * 3, min_steps=10, factor=4)
    assert diverged([2.0, float("nan")], min_steps=10, factor=4)


def test_real_sweep_on_digits_orders_sgd_above_adam() -> None:
    from tuner.recipe import Recipe
    from tuner.tasks import load_task
    from tuner.train import TrainBudget, fit

    task = load_task("digits-mlp", {"hidden": [32]})
    findings = find_lrs(task, ["adam", "sgd"], batch_size=64, config=SweepConfig(steps=80), device="cpu")
    adam, sgd = findings["adam"].suggestion, findings["sgd"].suggestion
    assert findings["adam"].stopped.startswith("diverged")  # the sweep reaches LRs where Adam blows up
    assert 1e-3 < adam.lr < 0.1 and 0.03 < sgd.lr < 3.0 and sgd.lr > 3 * adam.lr
    budget = TrainBudget(epochs=3)
    at_suggestion = fit(task, Recipe("adam", adam.lr, batch_size=64), budget, device="cpu").best.metrics["accuracy"]
    too_low = fit(task, Recipe("adam", adam.low / 10, batch_size=64), budget, device="cpu").best.metrics["accuracy"]
    assert at_suggestion > 0.9 and at_suggestion > too_low + 0.05


def test_adamw_shares_adams_sweep_which_it_repeats_step_for_step() -> None:
    from tuner.tasks import load_task

    task = load_task("digits-mlp", {"hidden": [32]})
    config = SweepConfig(steps=40)
    shared = find_lrs(task, ["adamw", "sgd", "adam"], batch_size=64, config=config, device="cpu")
    alone = find_lrs(task, ["adamw"], batch_size=64, config=config, device="cpu")["adamw"]  # no adam: its own sweep
    assert list(shared) == ["adamw", "sgd", "adam"]
    assert shared["adamw"].losses == alone.losses == shared["adam"].losses  # the same update at weight decay 0
    assert shared["adamw"].suggestion == alone.suggestion and shared["adamw"].optimizer == "adamw"
    assert shared["adamw"].summary()["steps"] == 0 and shared["adam"].summary()["steps"] == len(alone.losses)
    assert "adam's sweep" in shared["adamw"].stopped and alone.summary()["steps"] == len(alone.losses)
    assert sweeps_of(("adamw", "sgd", "adam")) == 2 and sweeps_of(("adamw",)) == 1  # what lr: auto's rule counts


def test_cli_lr_find_prints_json_and_plot(workdir: Path, cli) -> None:
    path = write_study(workdir)
    result = cli("lr-find", path, "--optimizer", "sgd", "--steps", "40", "--plot", "lr.png", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["optimizer"] == "sgd" and row["low"] < row["lr"] < row["high"] and row["batch_size"] == 64
    assert (workdir / "lr.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--plot", "lr.txt"], "--plot: lr.txt"),
        (["--optimizer", "nope"], "unknown optimizer 'nope'"),
        (["--lr-start", "1", "--lr-end", "0.1"], "lr_start=1.0, lr_end=0.1"),
    ],
)
def test_cli_lr_find_bad_input_exits_2(workdir: Path, cli, args: list[str], message: str) -> None:
    result = cli("lr-find", write_study(workdir), *args)
    assert result.exit_code == 2 and message in result.stderr
    assert not (workdir / "lr.txt").exists()


def test_lr_auto_sets_recorded_ranges_and_resume_keeps_them(workdir: Path, cli) -> None:
    path = write_study(
        workdir,
        budget={"epochs": 1, "n_trials": 3},
        space={"optimizers": {"adam": {"lr": "auto"}, "sgd": {}}, "schedules": ["constant"], "batch_size": 64},
    )
    result = cli("run", path)
    assert result.exit_code == 0, result.output
    assert "lr: auto  adam" in result.stdout and "lr: auto  sgd" not in result.stdout
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    ranges = study.user_attrs["lr_auto"]
    assert set(ranges) == {"adam"} and ranges["adam"]["low"] < ranges["adam"]["lr"] < ranges["adam"]["high"]
    for trial in study.trials:
        if "adam.lr" in trial.distributions:
            dist = trial.distributions["adam.lr"]
            assert (dist.low, dist.high) == pytest.approx((ranges["adam"]["low"], ranges["adam"]["high"]))
        else:
            assert trial.distributions["sgd.lr"].low == 1e-3  # the catalog's range: sgd is not auto
    (parent,) = [
        r for r in mlflow_runs(f"sqlite:///{workdir / 'mlflow.db'}", "tiny") if r.data.tags.get("tuner.role") == "study"
    ]
    assert float(parent.data.params["lr_auto.adam.low"]) == pytest.approx(ranges["adam"]["low"])
    assert "adam=[" in parent.data.tags["tuner.lr_auto"]

    result = cli("run", path, "--n-trials", "4")  # resume: the recorded range is reused, no second range test
    assert result.exit_code == 0, result.output
    assert "lr: auto" not in result.stdout
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{workdir / 'tuner.db'}")
    assert study.user_attrs["lr_auto"] == ranges and len(study.trials) == 4


def test_top_level_lr_auto_covers_every_optimizer_and_bad_value_exits_2(workdir: Path, cli) -> None:
    from tuner.study.prepare import prepare

    space = {"optimizers": ["adam", "sgd"], "schedules": ["constant"], "lr": "auto"}
    assert prepare(write_study(workdir, space=space)).space.auto_lr == ("adam", "sgd")
    result = cli("run", write_study(workdir, space={**space, "lr": "fast"}))
    assert result.exit_code == 2 and "space.lr" in result.stderr and "'fast'" in result.stderr
    assert not (workdir / "tuner.db").exists()


# -- own training: the probe sweep's rule --------------------------------------------------------------------------

PROBE_LRS = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def test_probes_suggest_the_best_probe_and_a_range_around_it() -> None:
    from tuner.train.lr_range import suggest_probes

    found = suggest_probes(PROBE_LRS, [0.2, 0.5, 0.9, 0.3, 0.1], "maximize")
    assert (found.lr, found.low, found.high) == pytest.approx((0.1, 0.01, 1.0))  # up to the next probe: finite
    assert found.note == "best of 5 probes"
    # minimize: the lowest value wins; a neighbour within 10% of the spread widens the range to it
    found = suggest_probes(PROBE_LRS, [2.0, 0.52, 0.5, 1.5, 2.1], "minimize")
    assert (found.lr, found.low, found.high) == pytest.approx((0.1, 1e-2, 1.0))
    found = suggest_probes(PROBE_LRS, [0.54, 1.9, 0.5, 0.52, 0.55], "minimize")
    assert (found.lr, found.low, found.high) == pytest.approx((0.1, 0.01, 10.0))  # in band up to 10; 1e-3 is not next
    assert "the highest LR probed" in suggest_probes(PROBE_LRS, [0.1, 0.2, 0.3, 0.4, 0.5], "maximize").note


def test_probes_never_propose_an_lr_at_or_above_a_diverged_probe() -> None:
    """Dense probes: 3 x the best (0.3) lies past the next probe (0.2), which diverged -- the range stops below it."""
    from tuner.train.lr_range import suggest_probes

    lrs = [0.025, 0.05, 0.1, 0.2, 0.4]
    capped = suggest_probes(lrs, [0.5, 0.7, 0.9, math.nan, math.nan], "maximize")
    assert capped.lr == 0.1 and capped.high == 0.1 < 0.2 and capped.low == pytest.approx(0.01)
    assert "below lr 0.2 where the sweep diverged" in capped.note
    free = suggest_probes(lrs, [0.5, 0.7, 0.9, 0.2, 0.1], "maximize")  # worse but not diverged: not capped
    assert free.high == pytest.approx(0.3)
    # the cap is the last probe below the diverged one (as in the sweep), even where 3 x the best lies below that
    assert suggest_probes(lrs, [0.5, 0.7, 0.9, 0.2, math.nan], "maximize").high == 0.2
    # a diverged probe below the best does not cap the range above it
    assert suggest_probes(lrs, [math.nan, 0.7, 0.9, 0.2, 0.1], "maximize").high == pytest.approx(0.3)
    # every probe diverged: a tenth of the lowest, the whole range below it
    none = suggest_probes(lrs, [math.nan] * 5, "maximize")
    assert none.lr == pytest.approx(0.0025) and none.high < lrs[0] and "every probe diverged" in none.note


def test_a_probe_whose_loss_blew_up_counts_as_diverged() -> None:
    """One epoch at too high an LR often ends with a finite, useless loss (digits + sgd at lr 100: 57 against 1.9):
    above ``factor`` x the lowest loss of the probes at lower LRs, it counts as diverged -- as in the sweep."""
    from tuner.train.lr_range import _probe_values

    ended = [
        {"loss": 2.2, "accuracy": 0.3},
        {"loss": 1.9, "accuracy": 0.6},
        {"loss": 2.4, "accuracy": 0.1},
        {"loss": 57.0, "accuracy": 0.1},
        {"accuracy": float("inf")},
        None,
    ]
    values = _probe_values(ended, "accuracy", factor=4.0)
    assert values[:3] == [0.3, 0.6, 0.1] and all(math.isnan(v) for v in values[3:])
    assert _probe_values([{"accuracy": 0.5}], "accuracy", 4.0) == [0.5]  # no loss reported: nothing to compare
