"""``lr: auto`` in a study: the LR range test runs once per study and sets each such optimizer's LR search range.

A study that brings its own training (``train:`` / ``command:``) runs a probe sweep of short runs of its own code
instead (``tuner.train.lr_range.probe_sweep``); the ranges are recorded the same way. Probes are not trials.

The ranges are recorded on the study (user attr ``lr_auto``, which every worker and every resume reads) and on the
MLflow parent run (params ``lr_auto.<optimizer>.lr|low|high|batch_size``, tag ``tuner.lr_auto``). A new study's first
trials try each such optimizer at a multiple of its suggested LR (``enqueue_suggested_lrs``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Optional

import optuna

from tuner.space import Choice, Fixed, Float, Int
from tuner.spec import StudySpec
from tuner.study.checks import StudyPlan
from tuner.study.grid import is_grid
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.search import SearchSpace, resolve_space
from tuner.tracking import Tracker
from tuner.train.lr_range import SweepConfig, describe, find_lrs, sweeps_of

if TYPE_CHECKING:  # prepare builds the space with `lr_auto_by_default`, so it imports this module
    from tuner.study.prepare import Prepared

RANGE_TEST_MAX_SHARE = 0.2
"""An unset ``space.lr`` means ``auto`` when the range tests cost at most this share of the study's planned training
(``n_trials`` x the shortest run). ``bench/efficiency.py`` (docs/benchmarks.md, "Efficiency"): with the range tests at
1/6 of the compute ``lr: auto`` reached random search's result sooner than the catalog ranges (1.97x against 1.70x);
at 2/3 of it (the old quick suite's 10-trial studies) it was 4 times worse (0.34x against 1.35x)."""


def lr_auto_by_default(spec: StudySpec, space: SearchSpace, plan: StudyPlan, batch_size: Optional[int]) -> bool:
    """Whether a study that leaves ``space.lr`` unset gets ``lr: auto``: a built-in task (``plan`` knows its runs'
    length), not a grid or PBT (they own the LR's values), and range tests cheap against the study's training."""
    if spec.space.lr is not None or plan.shortest is None or is_grid(spec.sampler) or spec.strategy == "pbt":
        return False
    tested = resolve_space(spec.space, batch_size, lr_auto_default=True).auto_lr
    return bool(tested) and range_test_share(tested, spec, plan) <= RANGE_TEST_MAX_SHARE


def range_test_share(optimizers: tuple[str, ...], spec: StudySpec, plan: StudyPlan) -> float:
    """The range tests' steps for ``optimizers`` over the study's planned training steps."""
    assert plan.shortest is not None
    return sweeps_of(optimizers) * SweepConfig().steps / (spec.budget.n_trials * plan.shortest.steps)


def default_note(prepared: Prepared) -> str:
    """Why this study has ``lr: auto`` though its file does not say so ('' when it does not, or says so)."""
    if not prepared.space.auto_lr_by_default:
        return ""
    share = range_test_share(prepared.space.auto_lr, prepared.spec, prepared.plan)
    sweeps = sweeps_of(prepared.space.auto_lr)
    return (
        f"lr: auto by default: the range tests ({sweeps} x {SweepConfig().steps} steps) cost "
        f"{share:.0%} of the study's planned training, at most {RANGE_TEST_MAX_SHARE:.0%}; space.lr: catalog "
        "searches the catalog's LR ranges instead"
    )


def apply_auto_lr(
    study: optuna.Study, prepared: Prepared, tracker: Tracker, say: Callable[[str], None] = print
) -> Prepared:
    """Run the range test for the ``lr: auto`` optimizers that have no range recorded on the study yet, record the
    ranges (study and MLflow), print them, and return ``prepared`` searching those ranges."""
    recorded = study.user_attrs.get(StudyKeys.LR_AUTO, {})
    missing = [name for name in prepared.space.auto_lr if name not in recorded]
    if missing and prepared.space.auto_lr_by_default and not recorded and study.trials:
        say("lr: the catalog's ranges, as this study began with them (set space.lr: auto for a range test)")
        return replace(prepared, space=resolve_space(prepared.spec.space, _task_batch_size(prepared)))
    if missing:
        if prepared.space.auto_lr_by_default:
            say(default_note(prepared))
        batch_size = sweep_batch_size(prepared.space)
        findings = find_lrs(
            prepared.trains, missing, batch_size=batch_size, seed=prepared.spec.seed, device=prepared.device
        )
        found = {**recorded, **{name: finding.summary() for name, finding in findings.items()}}
        study.set_user_attr(StudyKeys.LR_AUTO, found)
        params = {
            f"lr_auto.{name}.{key}": found[name][key] for name in missing for key in ("lr", "low", "high", "batch_size")
        }
        ranges = ", ".join(f"{n}=[{r['low']:.3g}, {r['high']:.3g}]" for n, r in found.items())
        tracker.log_to_study(study.user_attrs.get(StudyKeys.PARENT_RUN), params=params, tags={"tuner.lr_auto": ranges})
        for name in missing:
            say(f"lr: auto  {describe(found[name])}")
    return with_lr_ranges(prepared, study.user_attrs)


FIRST_TRIAL_LR_FACTOR = 3.0
"""A new study's first trials try each ``lr: auto`` optimizer at this multiple of its range test's suggestion (kept
within the range). The suggestion is the valley's entrance, measured at a constant LR; a full run with a decaying
schedule does best higher in the valley. ``bench/efficiency.py`` (docs/benchmarks.md, "First trials at 3x the range
test's suggestion ..."): 4.90x random search's efficiency and 2.16x naive Optuna's over 60 task-seeds, against 4.60x
and 1.79x without these trials; factors 1 and 1.73 gave 4.38x and 4.08x."""
FIRST_TRIAL_SCHEDULE = "cosine"  # the first trials' schedule when the space offers it (else its first schedule)


def enqueue_suggested_lrs(
    study: optuna.Study, prepared: Prepared, say: Callable[[str], None] = print
) -> list[dict[str, Any]]:
    """A new study's first trials: one per ``lr: auto`` optimizer, at ``FIRST_TRIAL_LR_FACTOR`` x its range test's
    suggested LR with the ``FIRST_TRIAL_SCHEDULE`` (and the range test's batch size where the space offers it); the
    sampler draws the rest of each recipe. Only for a built-in task's range tests (own training's probe sweeps suggest
    their best probe, not a valley's entrance: unmeasured), and nothing on a study that has trials already (a resume,
    or the trials a warm start enqueued), a grid or PBT.
    Returns the enqueued parameter dicts; each trial carries the user attr ``lr_suggested`` (its optimizer)."""
    if study.trials or prepared.task is None or is_grid(prepared.spec.sampler) or prepared.spec.strategy == "pbt":
        return []
    found = study.user_attrs.get(StudyKeys.LR_AUTO, {})
    space = prepared.space
    schedule = FIRST_TRIAL_SCHEDULE if FIRST_TRIAL_SCHEDULE in space.schedules else next(iter(space.schedules))
    enqueued = []
    for name in (name for name in space.auto_lr if name in found):
        row = found[name]
        lr = min(max(FIRST_TRIAL_LR_FACTOR * row["lr"], row["low"]), row["high"])
        params = {f"{name}.lr": lr, **_choice("optimizer", name, list(space.optimizers))}
        params.update(_choice("schedule", schedule, list(space.schedules)))
        dim = space.shared["batch_size"]
        if isinstance(dim, Choice):
            params.update(_choice("batch_size", row.get("batch_size"), list(dim.options)))
        study.enqueue_trial(params, user_attrs={TrialKeys.LR_SUGGESTED: name})
        enqueued.append(params)
        say(
            f"lr: auto  first trial: {name} at lr {lr:.3g} ({FIRST_TRIAL_LR_FACTOR:g} x the suggested "
            f"{row['lr']:.3g}, within [{row['low']:.3g}, {row['high']:.3g}]), {schedule}"
        )
    return enqueued


def _choice(param: str, value: Any, options: list[Any]) -> dict[str, Any]:
    """``{param: value}`` when the space draws ``param`` from ``options`` (more than one) and ``value`` is one."""
    return {param: value} if len(options) > 1 and value in options else {}


RANGE_TEST_WAIT_S = 600.0
"""How long a worker that joins a study before its range tests are recorded waits for them (``tuner run`` runs them
before the first trial; a probe sweep of a command can take minutes)."""


def wait_for_lr_ranges(
    study: optuna.Study,
    prepared: Prepared,
    say: Callable[[str], None] = print,
    timeout: float = RANGE_TEST_WAIT_S,
    poll: float = 2.0,
) -> Prepared:
    """``prepared`` with the study's recorded LR ranges; a worker that joined a new study (no trial yet) while
    ``tuner run`` is still running its range tests waits for them, up to ``timeout`` seconds, instead of searching
    the catalog's ranges."""
    deadline = time.monotonic() + timeout
    said = False
    while _ranges_missing(study, prepared) and not study.trials:
        if time.monotonic() >= deadline:
            say(f"lr: auto: no LR ranges recorded after {timeout:g} s; searching the catalog's ranges")
            break
        if not said:
            say("lr: auto: waiting for the LR range tests that `tuner run` runs before the first trial")
            said = True
        time.sleep(poll)
    return with_lr_ranges(prepared, study.user_attrs)


def _ranges_missing(study: optuna.Study, prepared: Prepared) -> bool:
    recorded = study.user_attrs.get(StudyKeys.LR_AUTO, {})
    return any(name not in recorded for name in prepared.space.auto_lr)


def with_lr_ranges(prepared: Prepared, user_attrs: Mapping[str, Any]) -> Prepared:
    """``prepared`` with the LR ranges recorded on the study in its search space; unchanged without them."""
    found = user_attrs.get(StudyKeys.LR_AUTO)
    if not prepared.space.auto_lr or not found:
        return prepared
    ranges = {name: (row["low"], row["high"]) for name, row in found.items()}
    by_default = prepared.space.auto_lr_by_default
    return replace(prepared, space=resolve_space(prepared.spec.space, _task_batch_size(prepared), ranges, by_default))


def _task_batch_size(prepared: Prepared) -> Optional[int]:
    return prepared.task.default_batch_size if prepared.task is not None else None


def sweep_batch_size(space: SearchSpace) -> Optional[int]:
    """The batch size a study's range test uses: the fixed one, or the middle (lower-middle) of the choices."""
    dim = space.shared["batch_size"]
    if isinstance(dim, Fixed):
        return dim.value
    if isinstance(dim, Choice):
        options = sorted(o for o in dim.options if o is not None)
        return options[(len(options) - 1) // 2] if options else None
    if isinstance(dim, (Int, Float)):
        return int(round(math.sqrt(dim.low * dim.high)))
    return None
