"""Static plots (matplotlib, written to a file): the LR range test's curves."""

from __future__ import annotations

from tuner.train.lr_range import LRFinding


def plot_findings(findings: dict[str, LRFinding], path: str) -> None:
    """Raw and smoothed loss against LR (log axis) per optimizer, suggestion marked, written to ``path`` (png, svg,
    pdf)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5))
    for name, finding in findings.items():
        (line,) = axis.plot(
            finding.lrs[: len(finding.smoothed)],
            finding.smoothed,
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
    if starts:  # the divergence at the end would flatten every curve
        axis.set_ylim(0, 1.5 * max(starts))
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.set_title("LR range test (faint: raw loss; dashed: suggestion)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
