"""Training: torch only, no Optuna or MLflow (filled in by the redesign)."""
