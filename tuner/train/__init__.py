"""Training, torch only -- no Optuna, no MLflow: ``fit``, ``fit_population``, the LR range test, one ``RunProgress``,
``check_training`` (what would fail in every trial, refused up front).

Names are imported on first use (PEP 562), so ``import tuner.train.progress`` does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuner.lazy import lazy_exports

if TYPE_CHECKING:
    from tuner.train.checks import check_training
    from tuner.train.compute import resolve_device, seed_everything
    from tuner.train.data import data_on_device
    from tuner.train.lr_range import LRFinding, SweepConfig, find_lrs, range_test
    from tuner.train.population import PopulationFallbackWarning, fit_population
    from tuner.train.progress import Evaluation, FitResult, OnEval, RunProgress, TrainBudget, plan_steps
    from tuner.train.trainer import Trainer, fit
    from tuner.train.trial import Trial, TrialInfo

_EXPORTS = {
    "Trainer": "trainer",
    "fit": "trainer",
    "Trial": "trial",
    "TrialInfo": "trial",
    "check_training": "checks",
    "resolve_device": "compute",
    "seed_everything": "compute",
    "data_on_device": "data",
    "LRFinding": "lr_range",
    "SweepConfig": "lr_range",
    "find_lrs": "lr_range",
    "range_test": "lr_range",
    "PopulationFallbackWarning": "population",
    "fit_population": "population",
    "Evaluation": "progress",
    "FitResult": "progress",
    "OnEval": "progress",
    "RunProgress": "progress",
    "TrainBudget": "progress",
    "plan_steps": "progress",
}
__all__ = [
    "Evaluation",
    "FitResult",
    "LRFinding",
    "OnEval",
    "PopulationFallbackWarning",
    "RunProgress",
    "SweepConfig",
    "TrainBudget",
    "Trainer",
    "Trial",
    "TrialInfo",
    "check_training",
    "data_on_device",
    "find_lrs",
    "fit",
    "fit_population",
    "plan_steps",
    "range_test",
    "resolve_device",
    "seed_everything",
]


__getattr__, __dir__ = lazy_exports(__name__, {name: f"tuner.train.{module}" for name, module in _EXPORTS.items()})
