"""The study: the only home of Optuna and SQLAlchemy.

``prepare`` checks a study file; ``run_study`` / ``optimize`` (``runner.py``) run trials through the one trial life
cycle (``lifecycle.py``); ``records.py`` reads results back; ``storage/`` is where studies live. Also: the search
space (``search.py``), sampler and pruner tables (``tables.py``), pruning in memory (``pruning.py``), warm start,
``lr: auto`` and workers that join a study (``worker.py``).
"""

from tuner.study.prepare import Prepared, prepare
from tuner.study.records import TrialRecord, best_recipe, best_record, records, summarize
from tuner.study.runner import RunOptions, optimize, run_study

__all__ = [
    "Prepared",
    "RunOptions",
    "TrialRecord",
    "best_recipe",
    "best_record",
    "optimize",
    "prepare",
    "records",
    "run_study",
    "summarize",
]
