"""The names of the attributes tuner keeps on Optuna studies and trials (the one place they are spelled)."""

from __future__ import annotations


class TrialKeys:
    """User attributes of a trial."""

    RECIPE = "recipe"  # the Recipe as a dict
    SEED = "seed"  # the trial's training seed (a retry keeps it)
    WORKER = "worker"  # host:pid of the process that trains it
    RUN_ID = "mlflow_run_id"  # its MLflow child run
    REASON = "reason"  # why it ended: "completed", "pruned at step N", "diverged at step N: ...", "worker lost" ...
    DURATION = "duration_s"  # seconds of training (a population member: of the shared pass until it finished)
    TOTAL_STEPS = "total_steps"  # the run's planned optimizer steps
    STEPS_DONE = "steps_done"  # the optimizer steps it trained (fewer when pruned, diverged or stopped early)
    POPULATION = "population"  # how many members it was stacked with (1: trained alone)
    TRACKING_ERRORS = "tracking_errors"  # what could not be logged to MLflow
    WARM_START = "warm_start"  # "study#number" it was enqueued from
    LR_SUGGESTED = "lr_suggested"  # the optimizer whose range test's suggested LR it tries (a new study's first trials)
    RETRY_OF = "retry_of"  # the number of the interrupted trial it repeats
    GRID_POINT = "grid_point"  # the grid point it runs (a key of tuner.study.grid.Grid), on a grid study's trials
    RESUMED = "resumed_from"  # {"trial": N, "step": S}: it went on from trial N's checkpoint after S steps
    MODEL = "model"  # the file of its final weights (save_model), while kept
    PBT_LINEAGE = "pbt_lineage"  # strategy pbt: {exploits: [{step, parent_trial, lr...}], ancestry, exact_replay}


class StudyKeys:
    """User attributes of a study."""

    SPEC = "spec"  # the study file, as validated (a worker re-reads it)
    SPEC_DIR = "spec_dir"  # the folder the study file was in (relative task files are found there)
    PARENT_RUN = "mlflow_parent_run_id"  # the study's MLflow parent run
    METRIC = "metric"  # the metric the study optimizes
    DEFINITION = "definition"  # what defines the study (tuner.study.definition): a resume must not change it
    CHANGES = "changes"  # the definition changes resumes were allowed (--allow-change), with when
    OBJECTIVE = "objective"  # what a trial's value is: "final" (its last evaluation) or "best"
    LR_AUTO = "lr_auto"  # optimizer -> the LR range test's finding (`lr: auto`)
    GRID = "grid"  # a grid study's grid: size, points a range, LR points
