"""The MLflow tracker: a study's experiment and parent run, one run per trial, every trial call through one queue.

Every call about a trial's run -- its creation with the recipe as params and ``recipe.yaml``, its metrics, its end --
and the study's state are ``Call``s on one ``CallQueue`` (``calls.py``), in order, with a ``Spool`` on disk
(``spool.py``) for what waits while the server is away. Only what a caller needs the answer to now runs at once:
creating the parent run (its id is stored on the study), the report's and ``lr: auto``'s files, deleting a study.

Against a server, the MLflow client's own retries are turned off for this process (``CLIENT_ENV``, unless set): they
retried a dead server for ~2 minutes per call, while the queue keeps the calls and tries again itself. That holds for
anything else in the process that uses MLflow's client too (a ``train:`` function logging on its own).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Optional

import yaml

from tuner.recipe import Recipe
from tuner.tracking import LOST_REASON, STUDY_COUNTS, OnRunCreated, StudySummary, TrialOutcome, TrialRun
from tuner.tracking.calls import Call, CallQueue, short_error
from tuner.tracking.curve import simplify_curve
from tuner.tracking.spool import Entry, Spool

MAX_PARAM_LENGTH = 500
MAX_METRICS_PER_BATCH = 1000  # MLflow's cap for one log_batch
LR_CURVE_TOLERANCE = 0.002
SPOOL_LIMIT = 64 * 2**20
"""The most bytes one process keeps in the spool (a trial's calls take a few kB)."""

CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
"""MLflow's settings for this process unless already set: one try of at most 10 s per call; no "View run at" lines
(ending a run against a server otherwise reads the whole run back to print them)."""

RUN_KEY = "tuner.run_key"  # the run's own key: a creation sent twice finds the run it made the first time
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}
_WHAT = {
    "create_run": "create trial run",
    "log": "log trial metrics",
    "end_run": "end trial run",
    "fail_lost": "close a lost trial's run",
    "study_state": "write the study's summary",
    "resume_study": "mark the study run running",
}
_log = logging.getLogger(__name__)


class RunNeverCreated(Exception):
    """A call names a run whose creation failed or was dropped."""


class MlflowTracker:
    """Logs a study to MLflow at ``tracking_uri`` (``sqlite:///mlflow.db``, ``http://host:5000``, ``postgresql://...``).

    Args:
        tracking_uri: an MLflow tracking URI; local stores are written inline, anything else from a thread.
        spool_dir: where calls wait while the server is away (default ``default_spool_dir(tracking_uri)``).
        spool_limit: the most bytes this process keeps there.
        retry: the first and the longest pause between tries while the server is away, in seconds.
    """

    def __init__(
        self,
        tracking_uri: str,
        spool_dir: Optional[Path] = None,
        spool_limit: int = SPOOL_LIMIT,
        retry: tuple[float, float] = (0.5, 15.0),
    ) -> None:
        from mlflow.tracking import MlflowClient

        remote = not is_local(tracking_uri)
        if remote:
            for name, value in CLIENT_ENV.items():
                os.environ.setdefault(name, value)
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
        self.on_run_created: Optional[OnRunCreated] = None
        self._experiment_ids: dict[str, str] = {}
        self._run_ids: dict[str, str] = {}  # run key -> MLflow run id
        self._runs: dict[str, TrialRun] = {}  # this process's runs not created yet
        self.spool = Spool(spool_dir or default_spool_dir(tracking_uri), spool_limit)
        self._queue = CallQueue(
            self._execute,
            background=remote,
            transient=is_transient,
            describe=lambda call: _WHAT.get(call.kind, call.kind),
            spool=self.spool,
            on_idle=self._adopt,
            answers=self._answers,
            spooled_args=self._spooled_args,
            retry=retry,
        )

    def flush(self) -> bool:
        """Send what is queued: True once all is sent, False when MLflow did not answer (it stays in the spool)."""
        return self._queue.flush()

    # -- study ----------------------------------------------------------------------------------------------------

    def start_study(self, study_name: str, spec: dict[str, Any]) -> Optional[str]:
        """Create the study's experiment and parent run; returns the parent run id (None while MLflow is away: the
        study's next ``tuner run`` creates it)."""
        try:
            experiment_id = self._experiment_id(study_name)
            run = self.client.create_run(
                experiment_id, run_name=study_name, tags={"tuner.role": "study", "tuner.study": study_name}
            )
        except Exception as error:
            if not is_transient(error):
                raise
            warnings.warn(
                f"MLflow: no parent run for the study yet: {short_error(error)}", RuntimeWarning, stacklevel=2
            )
            return None
        self._try(
            "log study.yaml", self.client.log_text, run.info.run_id, yaml.safe_dump(spec, sort_keys=False), "study.yaml"
        )
        return run.info.run_id

    def end_study(self, parent_run_id: Optional[str], summary: StudySummary) -> None:
        """Put the counts and the best recipe on the parent run -- read from the study when they are sent, so the last
        writer writes the latest -- and end it (FINISHED) unless trials are still running (RUNNING: other workers
        are on it, and the last one out ends it). Then wait for what is queued (``flush``).

        Every count is written, zeros included, so no count of an earlier summary is left standing. The best recipe
        goes into tags ``tuner.best.<key>`` (flat, as the trials' params) and ``best_recipe.yaml``: MLflow refuses to
        change a param once written, and the best recipe changes as the study goes on."""
        if parent_run_id is not None:
            self._queue.submit(Call("study_state", {"parent_run_id": parent_run_id, "summary": summary}, durable=False))
        self.flush()

    def resume_study(self, parent_run_id: Optional[str]) -> None:
        """The parent run is RUNNING again (a run or a worker starts on the study)."""
        if parent_run_id is not None:
            self._queue.submit(Call("resume_study", {"parent_run_id": parent_run_id}, durable=False))

    def delete_study(self, study_name: str) -> bool:
        """Delete the study's experiment (MLflow keeps it as deleted, restorable); whether there was one."""
        experiment = self.client.get_experiment_by_name(study_name)
        if experiment is None or experiment.lifecycle_stage == "deleted":
            return False
        self.client.delete_experiment(experiment.experiment_id)
        return True

    def log_to_study(
        self,
        parent_run_id: Optional[str],
        params: Optional[dict[str, Any]] = None,
        tags: Optional[dict[str, str]] = None,
        files: tuple[str, ...] = (),
    ) -> bool:
        """Add params, tags and files (artifacts) to the study's parent run (LR ranges of ``lr: auto``, the report)
        at once; whether all of it was logged (a failure is warned)."""
        if parent_run_id is None:
            return False
        from mlflow.entities import Param, RunTag

        errors: list[str] = []
        params_list = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in (params or {}).items()]
        tags_list = [RunTag(key, str(value)) for key, value in (tags or {}).items()]
        if params_list or tags_list:
            self._try(
                "log study params",
                self.client.log_batch,
                parent_run_id,
                params=params_list,
                tags=tags_list,
                errors=errors,
            )
        for path in files:
            self._try(f"log {path}", self.client.log_artifact, parent_run_id, path, errors=errors)
        return not errors

    # -- trials ---------------------------------------------------------------------------------------------------

    def start_trial(
        self,
        parent_run_id: Optional[str],
        study_name: str,
        number: int,
        recipe: Recipe,
        tags: dict[str, str],
        link: Optional[dict[str, Any]] = None,
    ) -> TrialRun:
        """Queue the creation of the trial's child run, with the recipe as flat params and as ``recipe.yaml``; returns
        at once. ``on_run_created(run_id, link)`` is called when the run exists."""
        run = TrialRun(key=uuid.uuid4().hex)
        self._runs[run.key] = run
        all_tags = {"tuner.role": "trial", "tuner.study": study_name, "tuner.trial_number": str(number), **tags}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        args = {
            "key": run.key,
            "experiment": study_name,
            "run_name": f"trial-{number}",
            "tags": all_tags,
            "params": {key: str(value)[:MAX_PARAM_LENGTH] for key, value in recipe.flat().items()},
            "recipe_yaml": yaml.safe_dump(recipe.to_dict(), sort_keys=False),
            "link": link,
        }
        self._queue.submit(Call("create_run", args, essential=True, errors=run.errors))
        return run

    def log_metrics(self, run: TrialRun, metrics: dict[str, float], step: int) -> None:
        """Buffer an evaluation's metrics; they are queued in one batch by ``end_trial``."""
        now = _now_ms()
        run.metrics.extend((key, float(value), step, now) for key, value in metrics.items())

    def end_trial(self, run: TrialRun, outcome: TrialOutcome) -> list[str]:
        """Queue the metrics, the LR curve, the final state and reason, and the run's end. Returns the errors seen so
        far (later ones are warned)."""
        now = _now_ms()
        metrics = [list(metric) for metric in run.metrics]
        metrics += [["lr", lr, step, now] for step, lr in simplify_curve(outcome.lr_curve, LR_CURVE_TOLERANCE)]
        if outcome.value is not None:
            metrics.append(["objective", float(outcome.value), 0, now])
        calls = [
            Call("log", {"run": run.key, "metrics": metrics[start : start + MAX_METRICS_PER_BATCH]}, errors=run.errors)
            for start in range(0, len(metrics), MAX_METRICS_PER_BATCH)
        ]
        tags = {
            **outcome.tags,
            "tuner.state": outcome.state,
            "tuner.reason": outcome.reason[:5000],
            "tuner.duration_s": f"{outcome.seconds:.3f}",
        }
        status = _RUN_STATUS.get(outcome.state, "KILLED")
        calls.append(
            Call("end_run", {"run": run.key, "status": status, "tags": tags}, essential=True, errors=run.errors)
        )
        self._queue.submit(*calls)
        return list(run.errors)

    def fail_lost_trial(self, study_name: str, number: int, run_id: Optional[str], reason: str) -> None:
        """Queue closing a lost trial's run as FAILED with ``reason``: ``run_id``, or when the trial never recorded it,
        the study's RUNNING runs of trial ``number`` (found by their tags when the call is sent)."""
        tags = {"tuner.state": "FAIL", "tuner.reason": reason}
        args = {"experiment": study_name, "number": number, "run_id": run_id, "tags": tags}
        self._queue.submit(Call("fail_lost", args, essential=True))

    # -- sending ----------------------------------------------------------------------------------------------------

    def _execute(self, call: Call) -> Any:
        handlers = {
            "create_run": self._create_run,
            "log": self._log,
            "end_run": self._end_run,
            "fail_lost": self._fail_lost,
            "study_state": self._write_study_state,
            "resume_study": self._mark_running,
        }
        return handlers[call.kind](call, **call.args)

    def _create_run(self, call: Call, key, experiment, run_name, tags, params, recipe_yaml, link=None) -> str:
        from mlflow.entities import Param

        run = self._find_run(experiment, key) if call.tries > 1 else None
        if run is None:
            run = self.client.create_run(
                self._trial_experiment_id(experiment), run_name=run_name, tags={**tags, RUN_KEY: key}
            )
        run_id = run.info.run_id
        self.client.log_batch(run_id, params=[Param(name, value) for name, value in params.items()])
        _log_text(run.info.artifact_uri, self.tracking_uri, recipe_yaml, "recipe.yaml")
        self._run_ids[key] = run_id
        trial_run = self._runs.pop(key, None)
        if trial_run is not None:
            trial_run.run_id = run_id
        if link is not None and self.on_run_created is not None:
            try:
                self.on_run_created(run_id, link)
            except Exception as error:  # the run exists; only the trial's link to it is missing (tags still find it)
                warnings.warn(
                    f"could not record MLflow run id {run_id}: {short_error(error)}", RuntimeWarning, stacklevel=2
                )
        return run_id

    def _log(self, call: Call, run: str, metrics=(), run_id: Optional[str] = None) -> None:
        from mlflow.entities import Metric

        batch = [Metric(key, value, timestamp, step) for key, value, step, timestamp in metrics]
        self.client.log_batch(self._run_id(run, run_id), metrics=batch)

    def _end_run(self, call: Call, run: str, status: str, tags: dict[str, str], run_id: Optional[str] = None) -> None:
        self._close(self._run_id(run, run_id), status, tags)

    def _fail_lost(self, call: Call, experiment: str, number: int, run_id: Optional[str], tags: dict[str, str]) -> None:
        for found in [run_id] if run_id else self._open_runs(experiment, number):
            self._close(found, "FAILED", tags)

    def _close(self, run_id: str, status: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in tags.items()])
        self.client.set_terminated(run_id, status)

    def _write_study_state(self, call: Call, parent_run_id: str, summary: StudySummary) -> None:
        written = None
        for _ in range(3):  # a trial may have ended meanwhile: what is written last must be the latest read
            state = summary()
            if state == written:
                return
            self._write_summary(parent_run_id, *state)
            written = state

    def _write_summary(self, parent_run_id: str, best: Optional[dict[str, Any]], summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        counts = {**dict.fromkeys(STUDY_COUNTS, 0), **summary}
        metrics = [
            Metric(f"study.{key}", float(value), now, 0)
            for key, value in counts.items()
            if isinstance(value, (int, float))
        ]
        tags = [RunTag(f"tuner.summary.{key}", str(value)) for key, value in counts.items()]
        if best is not None:
            tags += [
                RunTag(f"tuner.best.{key}", str(value)[:MAX_PARAM_LENGTH])
                for key, value in Recipe.from_dict(best).flat().items()
            ]
        self.client.log_batch(parent_run_id, metrics=metrics, tags=tags)
        if best is not None:
            self.client.log_text(parent_run_id, yaml.safe_dump(best, sort_keys=False), "best_recipe.yaml")
        if counts["running"]:
            self.client.update_run(parent_run_id, "RUNNING")
        else:
            self.client.set_terminated(parent_run_id, "FINISHED")

    def _mark_running(self, call: Call, parent_run_id: str) -> None:
        self.client.update_run(parent_run_id, "RUNNING")

    # -- runs, experiments ---------------------------------------------------------------------------------------

    def _run_id(self, key: str, run_id: Optional[str]) -> str:
        found = run_id or self._run_ids.get(key)
        if found is None:
            raise RunNeverCreated("its run was never created")
        return found

    def _spooled_args(self, call: Call) -> dict[str, Any]:
        """A call as the spool keeps it: with its run's id when the run exists by then (another process that sends
        it would not know the key)."""
        key = call.args.get("run")
        if key in self._run_ids and not call.args.get("run_id"):
            return {**call.args, "run_id": self._run_ids[key]}
        return call.args

    def _find_run(self, experiment: str, key: str) -> Any:
        """The run a creation sent before made, if it got that far."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return None
        runs = self.client.search_runs(
            [found.experiment_id], filter_string=f"tags.`{RUN_KEY}` = '{key}'", max_results=1
        )
        return runs[0] if runs else None

    def _open_runs(self, experiment: str, number: int) -> list[str]:
        """The RUNNING runs of trial ``number`` in the study's experiment."""
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            return []
        runs = self.client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.`tuner.trial_number` = '{int(number)}' and attributes.status = 'RUNNING'",
            max_results=100,
        )
        return [run.info.run_id for run in runs if run.data.tags.get("tuner.study") == experiment]

    def _trial_experiment_id(self, name: str) -> str:
        """The study's experiment id, looked up once per process (one query less per trial)."""
        if name not in self._experiment_ids:
            self._experiment_ids[name] = self._experiment_id(name)
        return self._experiment_ids[name]

    def _experiment_id(self, name: str) -> str:
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another worker created it first
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    # -- what other processes left ---------------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Send what ended processes left in the spool; their runs that were never ended are closed FAILED (a process
        that ends a trial queues its run's end first: a run without one lost its worker)."""
        entries = self.spool.adopt()
        if entries:
            calls = _adopted_calls(entries)
            _log.warning("MLflow: sending %d call(s) that ended processes left in %s", len(calls), self.spool.directory)
            self._queue.submit(*calls, persist=True)

    def _answers(self) -> bool:
        try:
            self.client.search_experiments(max_results=1)
        except Exception:
            return False
        return True

    def _try(self, what: str, call: Any, *args: Any, errors: Optional[list[str]] = None, **kwargs: Any) -> Any:
        """One synchronous call; a failure is warned (and added to ``errors``)."""
        try:
            return call(*args, **kwargs)
        except Exception as error:  # tracking must never fail a trial
            message = f"MLflow: could not {what}: {short_error(error)}"
            warnings.warn(message, RuntimeWarning, stacklevel=2)
            if errors is not None:
                errors.append(message)
        return None


def _adopted_calls(entries: list[Entry]) -> list[Call]:
    """The calls still to send of what an ended process left, naming its runs by id where they exist, then the end
    of each run it created but never ended."""
    created = {e.args["key"]: e.result for e in entries if e.kind == "create_run" and e.done}
    ended = {e.args.get("run") for e in entries if e.kind == "end_run"}
    calls = []
    for entry in entries:
        if entry.done:
            continue
        args = dict(entry.args)
        if args.get("run") in created:
            args.setdefault("run_id", created[args["run"]])
        calls.append(Call(entry.kind, args, essential=entry.essential, tries=1))  # tried before: maybe sent
    for entry in entries:
        key = entry.args.get("key")
        if entry.kind == "create_run" and key not in ended:
            tags = {"tuner.state": "FAIL", "tuner.reason": LOST_REASON}
            args = {"run": key, "status": "FAILED", "tags": tags, "run_id": created.get(key)}
            calls.append(Call("end_run", args, essential=True))
    return calls


def is_local(tracking_uri: str) -> bool:
    """Whether the store is local (``sqlite:``, ``file:``, a directory): written inline, not from a thread."""
    scheme = tracking_uri.split("://", 1)[0].lower() if "://" in tracking_uri else ""
    return scheme in ("", "sqlite", "file")


def is_transient(error: BaseException) -> bool:
    """Whether a failed call may work later: the server or database did not answer, or answered "try again"
    (5xx, 408, 429). A request it refused (another 4xx) will not."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import ConnectionError as RequestsConnectionError
    from requests.exceptions import Timeout

    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status in (408, 429)
    if isinstance(error, (ConnectionError, TimeoutError, RequestsConnectionError, Timeout)):
        return True
    return any(cls.__name__ == "OperationalError" for cls in type(error).__mro__)  # SQLAlchemy's: locked, gone


def default_spool_dir(tracking_uri: str) -> Path:
    """``$XDG_CACHE_HOME/tuner/mlflow-spool/<hash of the URI>`` (``~/.cache`` without it): one directory per
    tracking URI, shared by the processes of this machine."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tuner" / "mlflow-spool" / hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]


def _log_text(artifact_uri: str, tracking_uri: str, text: str, name: str) -> None:
    """``MlflowClient.log_text`` for a run whose artifact URI is known: the client would first read the whole run
    back to learn it (2.9 ms against 0.8 ms per trial on SQLite). A repository that takes a stream (a local
    directory) gets the text written in place, not copied from a temporary directory (0.4 against 1.4 ms)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repository = get_artifact_repository(artifact_uri, tracking_uri=tracking_uri)
    if hasattr(repository, "log_artifact_from_stream"):
        repository.log_artifact_from_stream(io.BytesIO(text.encode()), name)
        return
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / name
        path.write_text(text)
        repository.log_artifact(str(path))


def _now_ms() -> int:
    return int(time.time() * 1000)
