"""bench/efficiency.py: its accounting (compute to the target, best at fixed compute, efficiency against random
search) on made-up runs with exact answers, and its arms on a real tiny study: each stops once it has spent the
compute C, and `lr: auto`'s range test is counted."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

spec = importlib.util.spec_from_file_location("efficiency", ROOT / "bench" / "efficiency.py")
efficiency = importlib.util.module_from_spec(spec)
sys.modules["efficiency"] = efficiency  # dataclasses look their module up
spec.loader.exec_module(efficiency)
Run, TaskSetup = efficiency.Run, efficiency.TaskSetup

SETUP = TaskSetup({"name": "quadratic", "options": {"dim": 10, "n": 256, "val_n": 64}}, 20, 10, 4, "loss", "minimize")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_compute_to_the_target_accumulates_steps_in_completion_order_and_counts_the_range_test() -> None:
    run = Run(trials=[(20, 0.9), (5, None), (20, 0.4), (20, 0.1)], upfront=7)
    assert efficiency.compute_to(run, 0.5, "minimize", compute=80) == 7 + 20 + 5 + 20
    assert efficiency.compute_to(run, 0.05, "minimize", compute=80) == math.inf
    assert efficiency.compute_to(run, 0.1, "minimize", compute=60) == math.inf  # the last trial ends past C
    assert efficiency.best_at(run, 60, "minimize") == 0.4 and efficiency.best_at(run, 72, "minimize") == 0.1
    assert efficiency.best_at(Run(trials=[(20, None)]), 80, "maximize") is None


def test_efficiency_is_random_searchs_median_compute_to_its_median_final_value_over_the_arms() -> None:
    random = [Run(trials=[(20, v), (20, w)]) for v, w in ((0.5, 0.3), (0.6, 0.2), (0.4, 0.4))]  # finals .3 .2 .4
    fast = [Run(trials=[(10, 0.3)]), Run(trials=[(20, 0.1)]), Run(trials=[(40, 0.9)])]
    target, rows = efficiency.summarize({"random": random, "fast": fast}, SETUP)
    assert target == 0.3  # the median best of random search at C = 80
    assert [efficiency.compute_to(r, 0.3, "minimize", 80) for r in random] == [40, 40, math.inf]
    assert rows["fast"]["ratios"] == [4.0, 2.0, 0.0] and rows["fast"]["reached"] == 2
    assert rows["random"]["ratios"] == [1.0, 1.0, 0.0]
    results = {"quadratic": (target, rows)}
    assert efficiency.overall(results, "fast") == (2.0, 3)
    # head to head, not reached counts as C = 80: random/fast = 40/10, 40/20, 80/80
    assert efficiency.head_to_head(results, "fast", "random") == 2.0


def test_tuner_arms_stop_at_the_compute_and_lr_auto_counts_its_range_test(tmp_path: Path) -> None:
    arms = efficiency.arm_table({})
    (tmp_path / "random").mkdir(), (tmp_path / "auto").mkdir()
    plain = arms["random"](SETUP, 0, tmp_path / "random")
    steps = [s for s, _ in plain.trials]
    assert sum(steps) >= SETUP.compute > sum(steps[:-1]) and plain.upfront == 0
    auto = arms["lr-auto"](SETUP, 0, tmp_path / "auto")
    sweeps = len(efficiency.OPTIMIZERS)  # one sweep of 10 to 100 steps each (fewer when it diverges)
    assert 10 * sweeps <= auto.upfront <= 100 * sweeps and auto.upfront > SETUP.compute
    assert len(auto.trials) == 1  # the range test alone spent C: the study stops after its first trial


def test_stopping_at_the_target_keeps_each_runs_compute_to_it_so_quick_prints_the_full_last_line(
    tmp_path: Path,
) -> None:
    """--quick stops naive and defaults at the target random search sets; arms are seeded and deterministic, so each
    stopped run is the start of the full run and its compute to the target is the full run's."""
    setups = {"quadratic": TaskSetup(SETUP.task, 20, 10, 6, "loss", "minimize")}
    seeds, arms = [0, 1, 2], ["random", "naive", "defaults"]
    full = efficiency.run_all(arms, {}, setups, seeds, jobs=1, stop_at_target=False)["quadratic"]
    quick = efficiency.run_all(arms, {}, setups, seeds, jobs=1, stop_at_target=True)["quadratic"]
    setup = setups["quadratic"]
    target = efficiency.target_of(full["random"], setup)
    assert [r.trials for r in quick["random"]] == [r.trials for r in full["random"]] and target == efficiency.target_of(
        quick["random"], setup
    )
    for arm in ("naive", "defaults"):
        for ran, stopped in zip(full[arm], quick[arm]):
            assert stopped.stopped_at == target and ran.trials[: len(stopped.trials)] == stopped.trials
            assert efficiency.compute_to(stopped, target, "minimize", setup.compute) == efficiency.compute_to(
                ran, target, "minimize", setup.compute
            )
    assert sum(len(r.trials) for r in quick["defaults"]) < sum(len(r.trials) for r in full["defaults"])
    assert (
        efficiency.summarize(quick, setup)[1]["defaults"]["ratios"]
        == efficiency.summarize(full, setup)[1]["defaults"]["ratios"]
    )
    saved = tmp_path / "full.json"  # --random-from: random search's saved runs set the target, nothing reruns them
    saved.write_text(json.dumps({"seeds": 3, "runs": {"quadratic": full}}, default=efficiency.asdict))
    known = efficiency.saved_random(saved, setups, seeds)
    again = efficiency.run_all(["random", "defaults"], {}, setups, seeds, 1, True, known)["quadratic"]
    assert again["random"] == [known["quadratic", "random", s] for s in seeds]
    assert [r.trials for r in again["defaults"]] == [r.trials for r in quick["defaults"]]


def test_the_naive_arm_is_plain_optuna_over_fit_and_stops_at_the_compute() -> None:
    run = efficiency.run_naive(SETUP, seed=0)
    assert len(run.trials) == SETUP.trials and all(steps == SETUP.steps for steps, _ in run.trials)
    assert all(value is None or value > 0 for _, value in run.trials)


def test_the_bootstrap_interval_redraws_each_tasks_seeds_with_random_searchs_so_the_target_moves_too() -> None:
    steady = {"random": [Run(trials=[(20, 0.5), (20, 0.3)])] * 3, "defaults": [Run(trials=[(10, 0.3)])] * 3}
    assert efficiency.bootstrap_interval({"quadratic": steady}, {"quadratic": SETUP}, "defaults") == (4.0, 4.0)
    random = [Run(trials=[(20, v), (20, w)]) for v, w in ((0.5, 0.3), (0.6, 0.2), (0.4, 0.4))]
    defaults = [Run(trials=[(10, 0.3)], upfront=5), Run(trials=[(20, 0.1)]), Run(trials=[(40, 0.9)])]
    runs = {"quadratic": {"random": random, "defaults": defaults}}
    low, high = efficiency.bootstrap_interval(runs, {"quadratic": SETUP}, "defaults", rounds=200)
    # the median over these seeds is 2.0x (40/20); a redraw of three zeros (never reached) gives 0, of the first
    # seed alone 40/15: every redraw lies between
    assert 0.0 <= low < 2.0 < high <= 40 / 15
    assert efficiency.bootstrap_interval(runs, {"quadratic": SETUP}, "defaults", rounds=200) == (low, high)
    assert efficiency.bootstrap_interval(runs, {"quadratic": SETUP}, "naive") is None


def test_the_machine_line_names_the_cpu_model_since_runs_are_deterministic_only_on_one_cpu() -> None:
    shown = efficiency.cpu_model()
    cpuinfo = Path("/proc/cpuinfo")
    models = (
        [line for line in cpuinfo.read_text().splitlines() if line.startswith("model name")] if cpuinfo.exists() else []
    )
    if models:
        assert shown.startswith(models[0].split(":", 1)[1].strip())
    else:
        assert shown


def test_saved_runs_combine_into_one_table_with_the_last_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    random = [Run(trials=[(20, v), (20, w)]) for v, w in ((0.5, 0.3), (0.6, 0.2), (0.4, 0.4))]
    defaults = [Run(trials=[(10, 0.3)], upfront=5), Run(trials=[(20, 0.1)]), Run(trials=[(40, 0.9)])]
    saved = []
    for task in ("quadratic", "tabular-mlp"):
        data = {"seeds": 3, "runs": {task: {"random": random, "defaults": defaults}}}
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps(data, default=efficiency.asdict))
        saved.append(str(path))
    sys.argv = ["efficiency.py", "--combine", *saved]
    efficiency.main()
    out = capsys.readouterr().out
    # random reaches its target 0.3 at 40 steps (median); defaults at 15, 20 and never: 2.67x, 2.0x, 0 per task
    assert "| quadratic (C=" in out and "| tabular-mlp (C=" in out and "| 2.7 2.0 0.0 |" in out
    assert out.strip().splitlines()[-1] == "efficiency vs random search: 2.00x (2 tasks x 3 seeds)"
    assert "    defaults: 90% bootstrap interval of that median " in out.strip().splitlines()[-2]
    rerun = tmp_path / "rerun.json"  # a later file's arm replaces that arm: defaults at 10 steps in every seed
    rerun.write_text(json.dumps({"seeds": 3, "runs": {"quadratic": {"defaults": [{"trials": [[10, 0.1]]}] * 3}}}))
    sys.argv = ["efficiency.py", "--combine", *saved, str(rerun)]
    efficiency.main()
    out = capsys.readouterr().out
    assert "| 4.0 4.0 4.0 |" in out and "| random |" in out  # quadratic's random arm kept from the first file
    assert out.strip().splitlines()[-1] == "efficiency vs random search: 3.33x (2 tasks x 3 seeds)"


def test_saved_runs_of_several_seed_sets_pool_each_against_its_own_target(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def runs(scale: float, defaults: list[Run]) -> dict[str, list[Run]]:
        random = [Run(trials=[(20, v * scale), (20, w * scale)]) for v, w in ((0.5, 0.3), (0.6, 0.2), (0.4, 0.4))]
        return {"random": random, "defaults": defaults}

    first = runs(1.0, [Run(trials=[(10, 0.3)], upfront=5), Run(trials=[(20, 0.1)]), Run(trials=[(40, 0.9)])])
    second = runs(0.1, [Run(trials=[(5, 0.01)]), Run(trials=[(10, 0.02)]), Run(trials=[(40, 0.9)])])
    saved = []
    for first_seed, by_arm in ((0, first), (3, second)):
        path = tmp_path / f"set{first_seed}.json"
        data = {"seeds": 3, "first_seed": first_seed, "runs": dict.fromkeys(("quadratic", "tabular-mlp"), by_arm)}
        path.write_text(json.dumps(data, default=efficiency.asdict))
        saved.append(str(path))
    sys.argv = ["efficiency.py", "--combine", *saved]
    efficiency.main()
    out = capsys.readouterr().out
    # targets 0.3 and 0.03, random search's median compute to each 40 steps: per seed 2.67, 2.0, 0 and 8.0, 4.0, 0
    assert "| quadratic seeds 0-2 (C=19,200, target 0.3000) | defaults |" in out
    assert "| quadratic seeds 3-5 (C=19,200, target 0.0300) | defaults |" in out and "| 8.0 4.0 0.0 |" in out
    assert "defaults: median efficiency vs random search 2.33x over 12 task-seeds" in out
    last = "efficiency vs random search: 2.33x (2 tasks x 6 seeds, 2 seed sets, each against its own target)"
    assert out.strip().splitlines()[-1] == last


def test_every_setup_gives_the_defaults_arm_lr_auto(tmp_path: Path) -> None:
    """The defaults arm is the five-line file as a user writes it; in these setups its rule picks lr: auto."""
    from tuner.spec import parse_study
    from tuner.study.prepare import prepare

    for setup in efficiency.SETUPS.values():
        spec = efficiency.five_line_file("bench", setup, 0, tmp_path)
        assert prepare(parse_study(spec), spec_dir=str(ROOT)).space.auto_lr_by_default, setup.task
