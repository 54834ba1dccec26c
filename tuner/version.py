"""tuner's version (lock files and MLflow record it)."""

__version__ = "0.1.0"
