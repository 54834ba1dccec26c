"""What a study is shown as: exports of a recipe (YAML, JSON, Python, Lightning), the HTML report, static plots."""

from tuner.reports.export import EXPORTERS, Exported, best_of
from tuner.reports.html import render, write_report

__all__ = ["EXPORTERS", "Exported", "best_of", "render", "write_report"]
