"""Pruning decisions in memory: members among their peers, the pruner's settings, reports written in bursts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tuner.study.pruning import Pruning
from tuner.study.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = [
    pytest.mark.filterwarnings("ignore:Heartbeat of storage"),
    pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
]


def _study(
    tmp_path: Path, name: str = "s", pruner: optuna.pruners.BasePruner | None = None, seed: int = 0
) -> optuna.Study:
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=3)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize",
        sampler=sampler,
        pruner=pruner or optuna.pruners.MedianPruner(n_startup_trials=3),
    )


def _decide(study: optuna.Study, pruning: Pruning, trials, step: int, values: list[float]) -> list[bool]:
    pruning.record(step, {t.number: v for t, v in zip(trials, values)})
    decisions = []
    for trial, value in zip(trials, values):
        decisions.append(pruning.report(trial, step, value))
    return decisions


def test_a_first_population_prunes_members_below_the_median_of_their_peers(tmp_path: Path) -> None:
    study = _study(tmp_path)
    trials = [study.ask() for _ in range(5)]
    pruning = Pruning(study, trials)
    assert pruning.in_memory
    # nothing has completed: sequentially all five would run on; among peers, those below the others' median stop
    # (0.1: the others' median is 0.55; 0.6: 0.4)
    assert _decide(study, pruning, trials, 10, [0.1, 0.5, 0.6, 0.9, 0.3]) == [True, False, False, False, True]
    # at the next step only the three left report: each has two peers, fewer than n_startup_trials (3): all go on
    assert _decide(study, pruning, trials[1:4], 20, [0.2, 0.5, 0.95]) == [False, False, False]


def test_completed_trials_join_the_peers_and_the_pruner_settings_hold(tmp_path: Path) -> None:
    study = _study(tmp_path, pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=15))
    for value in (0.7, 0.8, 0.9):  # three completed trials at step 20: median 0.8
        done = study.ask()
        done.report(value, 20)
        study.tell(done, value)
    trials = [study.ask() for _ in range(2)]
    pruning = Pruning(study, trials)
    assert _decide(study, pruning, trials, 10, [0.0, 0.0]) == [False, False]  # warm-up: step 10 < 15
    # at step 20 the pool is the three completed trials and the other member: 0.75 is below the median of
    # (0.7, 0.8, 0.9, 0.85) = 0.825; 0.85 is above the median of (0.7, 0.8, 0.9, 0.75) = 0.775
    assert _decide(study, pruning, trials, 20, [0.75, 0.85]) == [True, False]


def test_other_pruners_decide_through_the_trial_as_in_sequential_runs(tmp_path: Path) -> None:
    study = _study(tmp_path, pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=2))
    trials = [study.ask() for _ in range(4)]
    pruning = Pruning(study, trials)
    assert not pruning.in_memory
    _decide(study, pruning, trials, 1, [0.1, 0.2, 0.3, 0.4])
    for trial in trials:  # written at once: ASHA reads them from the study (and writes its rungs there)
        stored = study._storage.get_trial(trial._trial_id)
        assert stored.intermediate_values == {1: pytest.approx(0.1 * (trial.number + 1))}
        assert any(key.startswith("completed_rung_") for key in stored.system_attrs)


def test_a_sequential_trial_is_decided_as_optuna_decides_it(tmp_path: Path) -> None:
    study = _study(tmp_path)
    for number in range(4):
        done = study.ask()
        for step in (1, 2, 3):
            done.report(0.2 * number + 0.1 * step, step)
        study.tell(done, 0.2 * number + 0.3)
    for values in ([0.1, 0.9, 0.95], [0.5, 0.6, 0.2], [0.9, 0.3, 0.1]):
        trial = study.ask()
        pruning = Pruning(study, [trial])
        for step, value in enumerate(values, start=1):
            decision = pruning.report(trial, step, value)
            pruning.flush()
            assert decision == trial.should_prune(), (values, step)
        study.tell(trial, values[-1])


def test_trials_completed_by_other_workers_are_seen_after_the_refresh_interval(tmp_path: Path, monkeypatch) -> None:
    import tuner.study.pruning

    study = _study(tmp_path)
    trial = study.ask()
    pruning = Pruning(study, [trial])
    other_worker = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'study.db'}")
    for value in (0.8, 0.9, 0.95):  # completed elsewhere after this trial started
        done = other_worker.ask()
        done.report(value, 1)
        other_worker.tell(done, value)
    assert not pruning.report(trial, 1, 0.5)  # its read is fresh: nothing completed yet, as far as it knows
    monkeypatch.setattr(tuner.study.pruning, "REFRESH_SECONDS", 0.0)
    assert pruning.report(trial, 1, 0.5)  # read again: 0.5 is below the median of 0.8, 0.9, 0.95


def _stored(study: optuna.Study, trial: optuna.Trial) -> dict[int, float]:
    return study._storage.get_trial(trial._trial_id).intermediate_values


def test_reports_are_written_in_one_burst_when_flushed_or_when_they_wait_too_long(tmp_path: Path, monkeypatch) -> None:
    import tuner.study.pruning

    study = _study(tmp_path)
    trials = [study.ask() for _ in range(2)]
    pruning = Pruning(study, trials)
    for step in (1, 2, 3):
        pruning.report(trials[0], step, 0.1 * step)
    pruning.report(trials[1], 1, 0.5)
    assert _stored(study, trials[0]) == {} and _stored(study, trials[1]) == {}
    pruning.flush(trials[0])  # one trial's values: the other's wait
    assert _stored(study, trials[0]) == pytest.approx({1: 0.1, 2: 0.2, 3: 0.3}) and _stored(study, trials[1]) == {}
    monkeypatch.setattr(tuner.study.pruning, "FLUSH_SECONDS", 0.0)
    pruning.report(trials[0], 4, 0.4)  # trial 1's value has waited longer than FLUSH_SECONDS: everything is written
    assert _stored(study, trials[0])[4] == pytest.approx(0.4) and _stored(study, trials[1]) == {1: 0.5}
    study.tell(trials[1], state=optuna.trial.TrialState.PRUNED)  # Optuna takes a pruned trial's last written value
    assert study.trials[trials[1].number].value == pytest.approx(0.5)


def test_a_step_reported_twice_keeps_its_first_value_as_optuna_does(tmp_path: Path) -> None:
    study = _study(tmp_path)
    peers = [study.ask() for _ in range(4)]
    pruning = Pruning(study, peers)
    for peer, value in zip(peers[1:], (0.4, 0.5, 0.6)):
        pruning.report(peer, 1, value)
    assert not pruning.report(peers[0], 1, 0.9)
    assert not pruning.report(peers[0], 1, 0.1)  # ignored: 0.9 stands, above the peers' median
    pruning.flush()
    assert _stored(study, peers[0]) == {1: 0.9}


def test_the_default_median_rule_prunes_from_the_third_trial_at_the_first_evaluation(tmp_path: Path) -> None:
    """A study file's `pruner: median` without options: two trials run to the end, the third is compared with them
    from its first report on (bench/efficiency.py chose 2, docs/benchmarks.md)."""
    from tuner.spec import NamedOptions
    from tuner.study.tables import describe_search, make_pruner

    study = _study(tmp_path, pruner=make_pruner(NamedOptions(name="median")))
    first = study.ask()
    first.report(0.9, 10)
    assert not first.should_prune()  # nothing completed yet
    study.tell(first, 0.9)
    second = study.ask()
    second.report(0.1, 10)
    assert not second.should_prune()  # one completed trial: still a start-up trial
    study.tell(second, 0.1)
    third = study.ask()
    third.report(0.4, 10)
    assert third.should_prune()  # below the median (0.5) of the two completed trials at step 10, its first report
    assert "none pruned before 2 trials complete" in describe_search(
        NamedOptions(name="tpe"), NamedOptions(name="median")
    )


def test_the_percentile_rule_cuts_where_the_file_says_with_the_median_rules_defaults(tmp_path: Path) -> None:
    """`pruner: {name: percentile, options: {percentile: 25}}` keeps only trials in the best quarter at a step; from
    the third trial on (the median rule's start-up), and decided in memory like the median rule."""
    from tuner.spec import NamedOptions
    from tuner.study.tables import describe_search, make_pruner

    spec = NamedOptions(name="percentile", options={"percentile": 25})
    study = _study(tmp_path, pruner=make_pruner(spec))
    for value in (0.2, 0.4, 0.6, 0.8):  # four completed trials at step 10: median 0.5, best quarter from 0.65
        done = study.ask()
        done.report(value, 10)
        study.tell(done, value)
    above_median, in_best_quarter = study.ask(), study.ask()
    pruning = Pruning(study, [above_median, in_best_quarter])
    assert pruning.in_memory
    assert pruning.report(above_median, 10, 0.55)  # the median rule would let it go on
    assert not pruning.report(in_best_quarter, 10, 0.7)
    line = describe_search(NamedOptions(name="tpe"), spec)
    assert "pruner percentile (a trial goes on in the best 25%; none pruned before 2 trials complete)" in line
