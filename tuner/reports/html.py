"""``tuner report``: one self-contained HTML page that explains a study.

Sections: the best recipe; counts of complete / pruned / failed trials with their reasons; the best value against
the compute spent (``tuner.study.economics``: steps, training seconds, wall clock); Optuna's own plots
(optimization history, parallel coordinates, parameter importances); the best value per optimizer family; the
LR curves of the top-K trials, recomputed from each recipe, its schedule and the trial's ``total_steps``; and
their learning curves (the intermediate values the pruner saw). plotly.js is embedded once, inline, so the
page works offline. The page is also logged on the study's MLflow parent run.
"""

from __future__ import annotations

import html
import os
import re
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from tuner.recipe import Recipe
from tuner.reports.plots import economics_figure
from tuner.schedules import recipe_lr_curve
from tuner.study.economics import COUNTED, Comparison, Economics, Spent, economics
from tuner.study.keys import StudyKeys, TrialKeys
from tuner.study.prepare import quiet_libraries
from tuner.study.records import reason_kind, study_metric
from tuner.study.storage import load_existing_study
from tuner.study.trust import study_tracking_uri
from tuner.tracking import make_tracker
from tuner.train.progress import LR_CURVE_POINTS

PLOT_HEIGHT = 420


def write_report(
    study_name: str, storage_url: str, output: str | Path, *, top_k: int = 5, tracking_uri: Optional[str] = None
) -> Optional[str]:
    """Write the report of ``study_name`` to ``output`` (atomically) and log it on the study's MLflow parent run.

    Returns the MLflow run id it was logged to, or None (no parent run, or tracking disabled).
    """
    quiet_libraries()
    study = load_existing_study(study_name, storage_url)
    uri = _tracking_uri(study, tracking_uri)  # a bad one fails before the page is written
    output = Path(output)
    write_page(output, render(study, top_k=top_k))
    return _log_to_mlflow(study, output, uri)


def write_page(output: str | Path, page: str) -> None:
    """Write an HTML page atomically (a temporary file in the same folder, then a rename)."""
    output = Path(output)
    handle, temporary = tempfile.mkstemp(dir=output.parent.resolve(), prefix=f".{output.name}.", suffix=".tmp")
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        stream.write(page)
    os.chmod(temporary, 0o644)
    os.replace(temporary, output)


def comparison_page(comparison: Comparison) -> str:
    """``tuner compare`` as one self-contained page: the table, and every study's best value against its compute on
    one plot."""
    import plotly.io
    from plotly.offline import get_plotlyjs

    rows = comparison.rows
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(row[c]))}</td>" for c in columns) + "</tr>" for row in rows
    )
    reach = (
        f"<p>*_to_reach: the compute each study spent until its best reached {_cell(comparison.reach_value)}, the "
        f"best value every study reached (the worst of their bests).</p>"
        if comparison.reach_value is not None
        else f"<p class='note'>{html.escape(comparison.reach_note)}</p>"
    )
    try:
        figure = economics_figure(comparison.curves, "best value against compute, every study")
    except ValueError as error:
        plot = f"<p class='note'>not available: {html.escape(str(error))}</p>"
    else:
        figure.update_layout(height=PLOT_HEIGHT)
        plot = plotly.io.to_html(figure, full_html=False, include_plotlyjs=False, div_id="plot-compare")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>tuner compare</title>\n<style>{CSS}</style>\n"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>\n</head><body>\n<h1>tuner compare</h1>\n"
        f"<table><tr>{head}</tr>{body}</table>\n{reach}\n{plot}\n{_counted_html(comparison.curves)}\n</body></html>\n"
    )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tracking_uri(study: optuna.Study, override: Optional[str]) -> Optional[str]:
    """Where the report is logged: None without a parent run, or without a study file or ``override`` to say where."""
    if StudyKeys.PARENT_RUN not in study.user_attrs:
        return None
    if override is None and StudyKeys.SPEC not in study.user_attrs:
        return None
    return study_tracking_uri(study, override)


def _log_to_mlflow(study: optuna.Study, path: Path, uri: Optional[str]) -> Optional[str]:
    parent = study.user_attrs.get(StudyKeys.PARENT_RUN)
    if parent is None or uri is None or uri.lower() == "none":
        return None
    return parent if make_tracker(uri).log_to_study(parent, files=(str(path),)) else None


# -- the page -------------------------------------------------------------------------------------------


def render(study: optuna.Study, top_k: int = 5) -> str:
    """The whole HTML page of ``study``."""
    from plotly.offline import get_plotlyjs

    trials = study.get_trials(deepcopy=False)
    top = top_trials(study, top_k)
    sections = [
        _section("Result", _result_html(study)),
        _section("Trials", _counts_html(trials)),
        _section(ECONOMICS_TITLE, _economics_html(study)),
        *[_figure_section(title, build, study, top) for title, build in FIGURES],
    ]
    title = f"tuner report: {html.escape(study.study_name)}"
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title>\n<style>{CSS}</style>\n"
        f"<script type='text/javascript'>{get_plotlyjs()}</script>\n</head><body>\n<h1>{title}</h1>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
    "pre{background:#f5f5f5;padding:8px}.note{color:#777}"
)


def _section(title: str, body: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>\n{body}\n</section>"


def _figure_section(
    title: str, build: Callable[[optuna.Study, list[FrozenTrial]], Any], study: optuna.Study, top: list[FrozenTrial]
) -> str:
    """One plot; a plot that cannot be drawn (too few trials, no variation) becomes a note saying why."""
    import plotly.io

    try:
        with warnings.catch_warnings():  # "some regimes have less than 2 trials" on small studies
            warnings.simplefilter("ignore")
            figure = build(study, top)
    except Exception as error:  # Optuna's plots refuse some studies (one trial, conditional params): say so
        return _section(title, f"<p class='note'>not available: {html.escape(str(error) or type(error).__name__)}</p>")
    figure.update_layout(height=PLOT_HEIGHT)
    div = plotly.io.to_html(figure, full_html=False, include_plotlyjs=False, div_id=_slug(title))
    return _section(title, div)


def _slug(title: str) -> str:
    return "plot-" + re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _result_html(study: optuna.Study) -> str:
    metric = study_metric(study)
    parts = [f"<p>direction: {study.direction.name.lower()}, metric: {html.escape(str(metric))}</p>"]
    try:
        best = study.best_trial
    except ValueError:
        return parts[0] + "<p>no complete trial yet</p>"
    parts.append(f"<p>best {html.escape(str(metric))} = {best.value:.6g} (trial {best.number})</p>")
    parts.append(
        f"<pre>{html.escape(yaml.safe_dump(best.user_attrs.get(TrialKeys.RECIPE, best.params), sort_keys=False))}</pre>"
    )
    auto = study.user_attrs.get(StudyKeys.LR_AUTO)
    if auto:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{r['lr']:.3g}</td><td>[{r['low']:.3g}, {r['high']:.3g}]</td></tr>"
            for n, r in auto.items()
        )
        parts.append(
            f"<p>LR ranges set by the LR range test (<code>lr: auto</code>):</p>"
            f"<table><tr><th>optimizer</th><th>suggested</th><th>searched range</th></tr>{rows}</table>"
        )
    return "\n".join(parts)


def reason_group(reason: str) -> str:
    """A reason without its numbers, so that alike reasons count together (``diverged at step N``)."""
    return reason_kind(reason)


def _counts_html(trials: list[FrozenTrial]) -> str:
    counts = Counter((t.state.name, reason_group(str(t.user_attrs.get(TrialKeys.REASON, "")))) for t in trials)
    states = Counter(t.state.name for t in trials)
    summary = ", ".join(f"{states.get(state, 0)} {state.lower()}" for state in ("COMPLETE", "PRUNED", "FAIL"))
    rows = "".join(
        f"<tr><td>{state.lower()}</td><td>{html.escape(reason)}</td><td>{n}</td></tr>"
        for (state, reason), n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    )
    header = "<tr><th>state</th><th>reason</th><th>trials</th></tr>"
    return f"<p>{len(trials)} trials: {summary}</p>\n<table>{header}{rows}</table>"


def top_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The ``k`` best complete trials, best first."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction.name == "MAXIMIZE"
    return sorted(complete, key=lambda t: -t.value if maximize else t.value)[:k]


# -- the economics: best value against compute ---------------------------------------------------------------

ECONOMICS_TITLE = "Best value against compute"


def _economics_html(study: optuna.Study) -> str:
    """The best value so far against the compute spent (plot), the compute to reach 90/99/100% of the way from the
    first complete trial's value to the best, and the totals (table), and what is counted."""
    import plotly.io

    curve = economics(study)
    if not curve.points:
        return "<p class='note'>no trial has ended yet: no compute spent, no value to show</p>"
    try:
        figure = economics_figure([curve], "best value so far against the compute spent")
    except ValueError as error:
        plot = f"<p class='note'>not available: {html.escape(str(error))}</p>"
    else:
        figure.update_layout(height=PLOT_HEIGHT, showlegend=False)
        plot = plotly.io.to_html(figure, full_html=False, include_plotlyjs=False, div_id=_slug(ECONOMICS_TITLE))
    rows = "".join(
        f"<tr><td>{fraction:.0%} of the way ({_cell(curve.first)} &rarr; {_cell(curve.best)})</td>"
        f"<td>{target:.6g}</td>{_spent_cells(point.spent)}<td>{point.trial}</td></tr>"
        for fraction, target, point in curve.milestones()
    )
    total = curve.total
    rows += f"<tr><td>all {len(curve.points)} ended trials</td><td>-</td>{_spent_cells(total)}<td>-</td></tr>"
    header = (
        "<tr><th>reached</th><th>value</th><th>optimizer steps</th><th>training seconds</th><th>wall clock (s)</th>"
        "<th>at trial</th></tr>"
    )
    return f"{plot}\n<table>{header}{rows}</table>\n{_counted_html([curve])}"


def _spent_cells(spent: Spent) -> str:
    return f"<td>{spent.steps}</td><td>{spent.seconds:.1f}</td><td>{spent.wall_s:.1f}</td>"


def _counted_html(curves: list[Economics]) -> str:
    """What the compute counts, the LR range tests included, and what some study's records could not say."""
    lines = [f"counted: {COUNTED}."]
    for curve in curves:
        prefix = f"{curve.study}: " if len(curves) > 1 else ""
        if curve.range_test.steps:
            lines.append(
                f"{prefix}the LR range test (lr: auto) spent {curve.range_test.steps} steps, "
                f"{curve.range_test.seconds:.1f} s before the first trial (included)."
            )
        lines += [f"{prefix}{note}." for note in curve.notes]
    return "".join(f"<p class='note'>{html.escape(line)}</p>" for line in lines)


# -- figures ----------------------------------------------------------------------------------------------


def _history(study: optuna.Study, top: list[FrozenTrial]) -> Any:
    return optuna.visualization.plot_optimization_history(study)


def _parallel(study: optuna.Study, top: list[FrozenTrial]) -> Any:
    return optuna.visualization.plot_parallel_coordinate(study)


MIN_IMPORTANCE_TRIALS = 5
"""Parameter importances need at least this many complete trials."""

RECIPE_FEATURES = ("optimizer", "lr", "schedule", "batch_size", "weight_decay", "warmup", "clip_norm", "clip_value")
"""What importances are computed over: the recipe's own fields, which every trial has (an optimizer's own
parameters, ``adam.beta2``, exist only in that optimizer's trials: an importance over them compares a handful)."""


def _importances(study: optuna.Study, top: list[FrozenTrial]) -> Any:
    """fANOVA importances of the recipe fields that every complete trial has and that vary among them."""
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if TrialKeys.RECIPE in t.user_attrs
    ]
    if len(complete) < MIN_IMPORTANCE_TRIALS:
        raise ValueError(f"{len(complete)} complete trials; importances need at least {MIN_IMPORTANCE_TRIALS}")
    recipes = [t.user_attrs[TrialKeys.RECIPE] for t in complete]
    features = [
        key
        for key in RECIPE_FEATURES
        if all(r.get(key) is not None for r in recipes) and len({repr(r[key]) for r in recipes}) > 1
    ]
    if not features:
        raise ValueError("no recipe field varies among the complete trials")
    derived = optuna.create_study(direction=study.direction)
    for trial, recipe in zip(complete, recipes):
        values = {key: recipe[key] for key in features}
        distributions = {key: _distribution(key, [r[key] for r in recipes]) for key in features}
        derived.add_trial(optuna.trial.create_trial(params=values, distributions=distributions, value=trial.value))
    figure = optuna.visualization.plot_param_importances(derived)
    figure.update_layout(
        title=f"importance of the recipe's fields ({len(complete)} complete trials; an optimizer's "
        f"own parameters, present in its trials only, are left out)"
    )
    return figure


def _distribution(key: str, values: list[Any]) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        low, high = float(min(values)), float(max(values))
        return FloatDistribution(low, high, log=key == "lr" and low > 0)
    return CategoricalDistribution(sorted(set(values), key=repr))


def _by_family(study: optuna.Study, top: list[FrozenTrial]) -> Any:
    import plotly.graph_objects as go

    from tuner.optim import OPTIMIZERS

    maximize = study.direction.name == "MAXIMIZE"
    best: dict[str, tuple[float, str]] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = trial.user_attrs.get(TrialKeys.RECIPE, {}).get("optimizer", "?")
        family = OPTIMIZERS[name].family if name in OPTIMIZERS else "?"
        old = best.get(family, (None,))[0]
        if old is None or (trial.value > old if maximize else trial.value < old):
            best[family] = (trial.value, f"{name} (trial {trial.number})")
    if not best:
        raise ValueError("no complete trial yet")
    families = sorted(best, key=lambda f: best[f][0], reverse=maximize)
    bar = go.Bar(x=families, y=[best[f][0] for f in families], text=[best[f][1] for f in families])
    return go.Figure(bar, layout={"title": "best value per optimizer family", "yaxis_title": study_metric(study)})


def lr_curve(recipe: Recipe, total_steps: int, points: int = LR_CURVE_POINTS) -> tuple[list[int], list[float]]:
    """(steps, LR) of a recipe over a run of ``total_steps``: peak LR times the schedule (plateau: never reduced)."""
    return recipe_lr_curve(recipe, total_steps, points)


def _lr_curves(study: optuna.Study, top: list[FrozenTrial]) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure(
        layout={
            "title": "LR curves of the top trials",
            "xaxis_title": "optimizer step",
            "yaxis_title": "learning rate",
            "yaxis_type": "log",
        }
    )
    for trial in top:
        if TrialKeys.RECIPE not in trial.user_attrs or TrialKeys.TOTAL_STEPS not in trial.user_attrs:
            continue
        recipe = Recipe.from_dict(trial.user_attrs[TrialKeys.RECIPE])
        steps, lrs = lr_curve(recipe, int(trial.user_attrs[TrialKeys.TOTAL_STEPS]))
        figure.add_scatter(x=steps, y=lrs, mode="lines", name=f"#{trial.number} {recipe.optimizer} {recipe.schedule}")
    if not figure.data:
        raise ValueError("no complete trial with a recipe and total_steps")
    return figure


def _learning_curves(study: optuna.Study, top: list[FrozenTrial]) -> Any:
    import plotly.graph_objects as go

    figure = go.Figure(
        layout={
            "title": "learning curves of the top trials (intermediate values)",
            "xaxis_title": "optimizer step",
            "yaxis_title": study_metric(study),
        }
    )
    for trial in top:
        values = sorted(trial.intermediate_values.items())
        if values:
            figure.add_scatter(
                x=[s for s, _ in values], y=[v for _, v in values], mode="lines+markers", name=f"#{trial.number}"
            )
    if not figure.data:
        raise ValueError("no intermediate values recorded")
    return figure


FIGURES: list[tuple[str, Callable[[optuna.Study, list[FrozenTrial]], Any]]] = [
    ("Optimization history", _history),
    ("Parallel coordinates", _parallel),
    ("Parameter importances", _importances),
    ("Best value per optimizer family", _by_family),
    ("LR curves of the top trials", _lr_curves),
    ("Learning curves of the top trials", _learning_curves),
]
