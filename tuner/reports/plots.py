"""Plots: the LR range test's curves, or its probes for own training (matplotlib, written to a file), and the best
value against compute (a plotly figure, for the HTML pages of ``tuner report`` and ``tuner compare``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tuner.train.lr_range import LRFinding

if TYPE_CHECKING:
    from tuner.study.economics import Economics, Spent

COMPUTE_AXES = (
    ("steps", "optimizer steps trained"),
    ("seconds", "training seconds (summed)"),
    ("wall_s", "wall clock (s)"),
)
"""The x-axes of the economics figure: a ``Spent`` field and its title (buttons switch between them)."""


def plot_findings(findings: dict[str, LRFinding], path: str) -> None:
    """Raw and smoothed loss against LR (log axis) per optimizer, suggestion marked, written to ``path`` (png, svg,
    pdf). Probe sweeps (own training) draw each probe's metric, one marker per probe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    metrics = {f.extras["metric"] for f in findings.values() if "probes" in f.extras}
    probes = bool(metrics)
    for name, finding in findings.items():
        (line,) = axis.plot(
            finding.lrs[: len(finding.smoothed)],
            finding.smoothed,
            marker="o" if probes else None,
            label=f"{name} (suggest {finding.suggestion.lr:.2g})",
        )
        axis.plot(
            finding.lrs[: len(finding.smoothed)],
            finding.losses[: len(finding.smoothed)],
            color=line.get_color(),
            alpha=0.25,
        )
        axis.axvline(finding.suggestion.lr, color=line.get_color(), linestyle="--", linewidth=1)
    starts = [f.smoothed[0] for f in findings.values() if f.smoothed]
    if starts and not probes:  # the divergence at the end would flatten every curve
        axis.set_ylim(0, 1.5 * max(starts))
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel(", ".join(sorted(metrics)) if probes else "training loss")
    axis.set_title(
        "LR probe sweep (a short run per point; dashed: suggestion)"
        if probes
        else "LR range test (faint: raw loss; dashed: suggestion)"
    )
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def economics_figure(curves: Sequence[Economics], title: str = "best value against compute") -> Any:
    """Best value so far against compute, one step line per study, with buttons that switch the x-axis between
    optimizer steps, summed training seconds and wall clock (``ValueError`` when no study has a complete trial)."""
    import plotly.graph_objects as go

    figure = go.Figure()
    xs: dict[str, list[list[float]]] = {field: [] for field, _ in COMPUTE_AXES}
    for curve in curves:
        points = [p for p in curve.points if p.best is not None]
        if not points:
            continue
        for field, _ in COMPUTE_AXES:
            xs[field].append([_x(p.spent, field) for p in points])
        figure.add_scatter(
            x=xs["steps"][-1],
            y=[p.best for p in points],
            mode="lines+markers",
            line_shape="hv",
            name=curve.study,
            text=[f"trial {p.trial} ({p.state.lower()})" for p in points],
            hovertemplate="%{text}<br>best %{y:.4g} at %{x:.4g}<extra>" + curve.study + "</extra>",
        )
    if not figure.data:
        raise ValueError("no complete trial yet: no best value to plot")
    buttons = [
        dict(label=name, method="update", args=[{"x": xs[field]}, {"xaxis.title.text": name}])
        for field, name in COMPUTE_AXES
    ]
    metrics = sorted({c.metric for c in curves})
    figure.update_layout(
        title=title,
        xaxis_title=COMPUTE_AXES[0][1],
        yaxis_title=f"best {', '.join(metrics)} so far",
        updatemenus=[dict(type="buttons", direction="right", buttons=buttons, x=0, xanchor="left", y=1.15)],
    )
    return figure


def _x(spent: Spent, field: str) -> float:
    return float(getattr(spent, field))
