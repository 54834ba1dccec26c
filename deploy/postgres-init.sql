-- Runs once, on the first start of the postgres volume: the Optuna database is POSTGRES_DB, MLflow gets its own.
CREATE DATABASE mlflow;
