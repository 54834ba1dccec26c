"""`tuner lock` / `tuner regress`: real training on digits-mlp with a tiny hidden layer, real Optuna study on SQLite."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from tests.helpers import ROOT, write_study
from tuner.ci.lock import build_lock
from tuner.ci.lockfile import LockBudget, dump_lock, read_lock, write_atomically
from tuner.ci.rule import judge
from tuner.ci.runner import SeedResult, derive_seeds, regress, verdict_for
from tuner.recipe import Recipe
from tuner.spec import TaskRef

EPOCH = 23  # optimizer steps per epoch of digits-mlp: 1437 training images / batch 64
DECAY = [[0, 1.0], [EPOCH, 0.3], [2 * EPOCH, 0.09], [3 * EPOCH, 0.027]]  # x0.3 per epoch
SHIFTED = [[0, 0.3], [EPOCH, 0.09], [2 * EPOCH, 0.027], [3 * EPOCH, 0.0081]]  # the same, one epoch early
GOOD = Recipe(
    optimizer="adam",
    lr=3e-2,
    optimizer_params={"beta1": 0.9, "beta2": 0.999},
    schedule="piecewise",
    schedule_params={"points": DECAY, "interpolation": "constant"},
    batch_size=64,
)
TASK = TaskRef(name="digits-mlp", options={"hidden": [16]})


@pytest.fixture(scope="module")
def good_lock(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """GOOD locked over 4 seeds at 4 epochs (accuracy ~0.945 ± 0.006 here)."""
    path = tmp_path_factory.mktemp("locks") / "good.lock.yaml"
    lock = build_lock(
        "good",
        TASK,
        [GOOD],
        LockBudget(epochs=4),
        metric="accuracy",
        direction="maximize",
        lock_path=path,
        seeds=4,
        device="cpu",
    )
    write_atomically(path, dump_lock(lock))
    return path


def _edited(source: Path, target: Path, **recipe_changes) -> Path:
    data = yaml.safe_load(source.read_text())
    data["recipes"][0]["recipe"].update(recipe_changes)
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def _junit_cases(path: Path) -> list[ET.Element]:
    return ET.parse(path).getroot().findall("./testsuite/testcase")


def test_lock_a_tuned_study_and_regress_it_unchanged(workdir: Path, cli) -> None:
    study = write_study(
        workdir, task={"name": "digits-mlp", "options": {"hidden": [16]}}, budget={"epochs": 2, "n_trials": 4}
    )
    assert cli("run", study, "--tracking-uri", "none").exit_code == 0
    result = cli("lock", "tiny", "--top-k", "2", "--seeds", "3")
    assert result.exit_code == 0, result.output
    path = workdir / "studies" / "tiny.lock.yaml"
    data = yaml.safe_load(path.read_text())
    assert list(data) == [
        "lock_version",
        "study",
        "created",
        "task",
        "metric",
        "direction",
        "budget",
        "deterministic",
        "device",
        "rule",
        "environment",
        "recipes",
    ]
    assert data["task"] == {"name": "digits-mlp", "options": {"hidden": [16]}}
    assert (data["metric"], data["direction"], data["budget"]["epochs"], data["deterministic"]) == (
        "accuracy",
        "maximize",
        2,
        True,
    )
    assert {"tuner", "torch", "optuna", "platform", "device"} <= set(data["environment"])
    best = yaml.safe_load(cli("best", "tiny").stdout)
    first, second = data["recipes"]
    assert first["trial"] == best["trial"] and first["recipe"] == best["recipe"] and second["recipe"] != first["recipe"]
    assert first["seeds"] == derive_seeds(0, 3) and len(first["values"]) == 3
    assert first["tolerance"] == max(data["rule"]["floor"], data["rule"]["min_effect"] * first["std"])

    result = cli("regress", path, "--junit", workdir / "out.xml", "--summary", workdir / "out.md")
    assert result.exit_code == 0, result.output
    assert "PASS" in result.stdout and "REGRESSED" not in result.stdout
    cases = _junit_cases(workdir / "out.xml")
    assert [c.get("name") for c in cases] == [f"{path}#1", f"{path}#2"] and not any(
        c.find("failure") is not None for c in cases
    )
    assert "all locked recipes pass" in (workdir / "out.md").read_text()


def test_lock_trial_n_locks_that_trials_recipe(workdir: Path, cli) -> None:
    study = write_study(
        workdir, task={"name": "digits-mlp", "options": {"hidden": [16]}}, budget={"epochs": 1, "n_trials": 3}
    )
    assert cli("run", study, "--tracking-uri", "none").exit_code == 0
    best = yaml.safe_load(cli("best", "tiny").stdout)["trial"]
    number = next(n for n in range(3) if n != best)
    chosen = yaml.safe_load(cli("best", "tiny", "--trial", str(number)).stdout)
    path = workdir / "trial.lock.yaml"
    result = cli("lock", "tiny", "--trial", str(number), "--seeds", "2", "-o", path)
    assert result.exit_code == 0, result.output
    (entry,) = read_lock(path).recipes
    assert (entry.trial, entry.recipe, entry.study_value) == (number, chosen["recipe"], chosen["value"])

    for args, message in [
        (["--trial", "1", "--top-k", "2"], "--trial 1 locks one trial's recipe; it cannot be combined with --top-k 2"),
        (["--trial", "7"], "study 'tiny' has no trial 7 (trials 0..2)"),
    ]:
        result = cli("lock", "tiny", *args, "-o", workdir / "refused.lock.yaml")
        assert result.exit_code == 2 and message in result.stderr
        assert not (workdir / "refused.lock.yaml").exists()


def test_same_seed_same_machine_is_bit_identical(good_lock: Path) -> None:
    (case,) = regress([good_lock])
    locked = read_lock(good_lock).recipes[0]
    assert [r.value for r in case.new] == locked.values  # exact float equality, read back from YAML
    assert case.verdict.passed and case.verdict.worse == 0.0


def test_unchanged_recipe_on_fresh_seeds_passes(good_lock: Path, cli) -> None:
    result = cli("regress", good_lock, "--seeds", "7")  # 4 locked + 3 fresh seeds: paired over the 4, fresh reported
    assert result.exit_code == 0, result.output
    assert "over the 4 locked seeds re-run; 3 fresh seeds beyond the lock: mean 0.9" in result.stdout
    assert "Welch" not in result.stdout and "+0 " in result.stdout  # the compared seeds are bit-identical


def _shifted(source: Path, target: Path, tolerances: float) -> Path:
    """The lock with every locked value ``tolerances`` tolerances better (mean recomputed, std unchanged): re-running
    the unchanged recipe is then exactly that much worse than the lock, on every seed."""
    data = yaml.safe_load(source.read_text())
    entry = data["recipes"][0]
    entry["values"] = [value + tolerances * entry["tolerance"] for value in entry["values"]]
    entry["mean"] = statistics.fmean(entry["values"])
    entry["std"] = statistics.stdev(entry["values"])
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


@pytest.mark.parametrize(
    "change, seeds, scope",
    [
        ("3 tolerances", "2", "over the 2 locked seeds re-run"),  # fewer seeds than locked (Welch passed it)
        ("3 tolerances", "7", "over the 4 locked seeds re-run; 3 fresh seeds beyond the lock"),  # more
        ("lr halved", "2", "over the 2 locked seeds re-run"),  # a real change, -0.026 (2.6 tolerances) here
    ],
)
def test_a_drop_of_3_tolerances_regresses_with_fewer_or_more_seeds_than_locked(
    good_lock: Path, tmp_path: Path, cli, change: str, seeds: str, scope: str
) -> None:
    """The issue's case: `--seeds` below the locked count ran Welch's test of 2 new values against all 4 locked ones
    and passed a drop of 3 tolerances (p=0.08); above it mixed re-run and fresh seeds. Now the test is paired over
    the locked seeds that were re-run, and the fresh ones are only reported."""
    if change == "3 tolerances":
        lock = _shifted(good_lock, tmp_path / "better.lock.yaml", 3.0)
    else:
        lock = _edited(good_lock, tmp_path / "halved.lock.yaml", lr=GOOD.lr / 2)
    result = cli("regress", lock, "--seeds", seeds)
    assert result.exit_code == 1, result.output
    assert "0 passed, 1 regressed" in result.stdout and scope in result.stdout


def test_no_locked_seed_rerun_is_welch_and_says_so(good_lock: Path) -> None:
    lock = read_lock(good_lock)
    entry = lock.recipes[0]
    fresh = [SeedResult(seed, value - 0.05, "completed", "", 0.0) for seed, value in zip(range(4), entry.values)]
    verdict = verdict_for(lock, entry, fresh)
    assert verdict.test == "Welch t" and not verdict.passed
    assert "no locked seed was re-run: Welch's test" in verdict.reason
    paired = verdict_for(
        lock, entry, [SeedResult(s, v, "completed", "", 0.0) for s, v in zip(entry.seeds, entry.values)]
    )
    assert paired.test == "threshold" and paired.passed and paired.worse == 0.0


REGRESSIONS = {  # measured on 8-10 seeds here: GOOD 0.945; these 0.687, 0.895, 0.874
    "lr ten times smaller": {"lr": GOOD.lr / 10},
    "beta2 changed 0.999 -> 0.3": {"optimizer_params": {"beta1": 0.9, "beta2": 0.3}},
    # the classic off-by-one: the scheduler stepped before the first epoch, so every epoch gets the next one's LR
    "schedule shifted by one epoch": {"schedule_params": {"points": SHIFTED, "interpolation": "constant"}},
}


@pytest.mark.parametrize("change", list(REGRESSIONS), ids=list(REGRESSIONS))
def test_injected_regression_fails_with_a_table(good_lock: Path, tmp_path: Path, cli, change: str) -> None:
    broken = _edited(good_lock, tmp_path / "broken.lock.yaml", **REGRESSIONS[change])
    result = cli("regress", good_lock, broken, "--junit", tmp_path / "out.xml", "--summary", tmp_path / "out.md")
    assert result.exit_code == 1, result.output
    assert "1 passed, 1 regressed" in result.stdout
    assert "REGRESSED" in result.stdout and "locked mean ± std" in result.stdout
    good_case, broken_case = _junit_cases(tmp_path / "out.xml")
    assert good_case.find("failure") is None
    assert broken_case.find("failure").get("message").startswith("REGRESSED: worse by")
    assert "❌ REGRESSED" in (tmp_path / "out.md").read_text()


def test_a_diverging_recipe_is_a_regression(good_lock: Path, tmp_path: Path) -> None:
    broken = _edited(good_lock, tmp_path / "broken.lock.yaml", optimizer_params={"beta1": 0.9, "beta2": 0.1})
    (case,) = regress([broken])
    assert not case.verdict.passed and case.verdict.test == "diverged" and "diverged at step" in case.verdict.reason


def test_parallel_jobs_give_the_same_values(good_lock: Path) -> None:
    (serial,) = regress([good_lock])
    (parallel,) = regress([good_lock], jobs=2)
    assert [r.value for r in parallel.new] == [r.value for r in serial.new]


def test_user_task_path_is_stored_relative_to_the_lock(workdir: Path) -> None:
    tasks = workdir / "models"
    tasks.mkdir()
    shutil.copy(ROOT / "tests" / "fixtures" / "user_task.py", tasks / "user_task.py")
    path = workdir / "locks" / "blobs.lock.yaml"
    recipe = Recipe(optimizer="sgd", lr=0.1, batch_size=32)
    lock = build_lock(
        "blobs",
        TaskRef(name="user_task.py:make_task", options={"hidden": 8}),
        [recipe],
        LockBudget(epochs=2),
        metric="accuracy",
        direction="maximize",
        lock_path=path,
        spec_dir=str(tasks),
        seeds=2,
        device="cpu",
    )
    write_atomically(path, dump_lock(lock))
    assert read_lock(path).task.name == "../models/user_task.py:make_task"
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    import os

    os.chdir(elsewhere)
    (case,) = regress([Path("..") / "locks" / "blobs.lock.yaml"])
    assert case.verdict.passed and [r.value for r in case.new] == lock.recipes[0].values


def _lock_text(good_lock: Path, **changes) -> str:
    data = yaml.safe_load(good_lock.read_text())
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return yaml.safe_dump(data, sort_keys=False)


BAD_LOCKS = {
    "missing file": (None, "lock file not found"),
    "not yaml": ("recipes: [\n", "invalid YAML"),
    "not a mapping": ("- 1\n- 2\n", "must be a mapping"),
    "incompatible version": ({"lock_version": 99}, "lock_version: this tuner"),
    "no recipes": ({"recipes": None}, "recipes: Field required"),
    "unknown key": ({"colour": "red"}, "colour: unknown key"),
    "unknown task": ({"task__name": "mnist-resnet"}, "unknown task 'mnist-resnet'"),
    "unknown optimizer": ({"recipes__0__recipe__optimizer": "adamm"}, "recipes.0.recipe: unknown optimizer 'adamm'"),
    "bad lr": ({"recipes__0__recipe__lr": -1.0}, "recipes.0.recipe: lr must be > 0, got lr=-1.0"),
    "unknown metric": ({"metric": "f1"}, "metric: unknown metric 'f1'"),
    "seeds and values differ": ({"recipes__0__seeds": [1, 2]}, "values and seeds must have the same length"),
    "repeated seed": ({"recipes__0__seeds": [1, 2, 2, 3]}, "recipes.0.seeds: seeds must be distinct"),
    "mean not of values": ({"recipes__0__mean": 0.5}, "recipes.0.mean: 0.5 is not the mean of values"),
    "std not of values": ({"recipes__0__std": 0.5}, "recipes.0.std: 0.5 is not the sample standard deviation"),
    "nan value": ({"recipes__0__values": [0.9, math.nan, 0.9, 0.9]}, "recipes.0.values.1: Input should be a finite"),
    "nan mean": ({"recipes__0__mean": math.nan}, "recipes.0.mean: Input should be a finite number (got nan)"),
    "inf std": ({"recipes__0__std": math.inf}, "recipes.0.std: Input should be a finite number (got inf)"),
    "inf tolerance": ({"recipes__0__tolerance": math.inf}, "recipes.0.tolerance: Input should be a finite number"),
    "nan tolerance": ({"recipes__0__tolerance": math.nan}, "recipes.0.tolerance: Input should be a finite number"),
}


@pytest.mark.parametrize("case", list(BAD_LOCKS), ids=list(BAD_LOCKS))
def test_bad_lock_exits_2_naming_file_and_field(good_lock: Path, tmp_path: Path, cli, case: str) -> None:
    content, message = BAD_LOCKS[case]
    path = tmp_path / "bad.lock.yaml"
    if content is not None:
        path.write_text(content if isinstance(content, str) else _lock_text(good_lock, **content))
    result = cli("regress", good_lock, path, "--junit", tmp_path / "out.xml", "--summary", tmp_path / "out.md")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out.xml").exists() and not (tmp_path / "out.md").exists()


def test_lock_of_unknown_study_exits_2_and_writes_nothing(workdir: Path, cli) -> None:
    assert (
        cli("run", write_study(workdir, budget={"epochs": 1, "n_trials": 1}), "--tracking-uri", "none").exit_code == 0
    )
    result = cli("lock", "nope", "-o", workdir / "nope.lock.yaml")
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr
    assert not (workdir / "nope.lock.yaml").exists()


def test_committed_smoke_lock_is_valid() -> None:
    lock = read_lock(ROOT / "studies" / "smoke.lock.yaml")
    assert lock.study == "smoke" and lock.deterministic and lock.recipes[0].tolerance > 0


# -- the pass rule on pinned numbers ----------------------------------------------------------------------------


def test_rule_paired_identical_values_pass_by_threshold() -> None:
    verdict = judge([0.9, 0.8, 0.85], [0.9, 0.8, 0.85], "maximize", tolerance=0.01, paired=True)
    assert verdict.passed and verdict.test == "threshold" and verdict.worse == 0.0


def test_rule_constant_shift_fails_only_beyond_tolerance() -> None:
    locked = [0.9, 0.8, 0.85]
    assert not judge(locked, [v - 0.02 for v in locked], "maximize", tolerance=0.01, paired=True).passed
    assert judge(locked, [v - 0.005 for v in locked], "maximize", tolerance=0.01, paired=True).passed
    assert judge(locked, [v + 0.05 for v in locked], "maximize", tolerance=0.01, paired=True).passed  # better is fine
    assert judge(locked, [v - 0.02 for v in locked], "maximize", tolerance=0.01, paired=True).test == "threshold"


def test_rule_direction_minimize() -> None:
    locked = [1.0, 1.2, 1.1, 1.05]
    assert not judge(locked, [v + 0.3 for v in locked], "minimize", tolerance=0.05).passed  # higher loss = worse
    assert judge(locked, [v - 0.3 for v in locked], "minimize", tolerance=0.05).passed


def test_rule_noisy_small_drop_is_not_significant() -> None:
    # worse by 0.02 on average, beyond the 0.01 tolerance, but the per-seed differences disagree: not significant
    verdict = judge([0.90, 0.90, 0.90], [0.85, 0.92, 0.87], "maximize", tolerance=0.01, paired=True)
    assert verdict.test == "paired t" and verdict.worse == pytest.approx(0.02) and verdict.passed
    from scipy import stats

    assert verdict.p_value == pytest.approx(stats.ttest_1samp([0.05, -0.02, 0.03], 0.01, alternative="greater").pvalue)


def test_rule_single_seed_is_a_threshold() -> None:
    assert not judge([0.9], [0.85], "maximize", tolerance=0.01).passed
    assert judge([0.9], [0.895], "maximize", tolerance=0.01).passed
