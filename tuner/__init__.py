"""tuner: tune optimizers and learning-rate schedules."""

__version__ = "0.1.0"
