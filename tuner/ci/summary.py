"""What ``tuner regress`` prints and writes: the table rows, a markdown summary for CI, JUnit XML."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tuner.ci.rule import mean_std
from tuner.ci.runner import CaseResult


def fmt(value: float) -> str:
    """A number to 4 significant digits (``-`` for None or NaN)."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def table_rows(cases: Sequence[CaseResult]) -> list[dict[str, str]]:
    """One row per locked recipe: lock, metric, locked mean±std, new mean±std, delta, tolerance, verdict. Locked and
    new are the values the rule compared (the locked seeds that were re-run, paired; fresh seeds are in the reason)."""
    rows = []
    for case in cases:
        compared = case.compared
        delta = mean_std(compared.new)[0] - mean_std(compared.locked)[0] if compared.new else math.nan
        rows.append(
            {
                "lock": case.name,
                "metric": f"{case.lock.metric} ({'max' if case.lock.direction == 'maximize' else 'min'})",
                "locked": _mean_std(compared.locked),
                "new": _mean_std(compared.new),
                "delta": _signed(delta),
                "tolerance": fmt(case.verdict.tolerance),
                "p": fmt(case.verdict.p_value),
                "verdict": "PASS" if case.verdict.passed else "REGRESSED",
            }
        )
    return rows


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{fmt(mean)} ± {fmt(std)}"


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.4g}"


COLUMNS = ("lock", "metric", "locked", "new", "delta", "tolerance", "p", "verdict")
HEADERS = ("lock", "metric", "locked mean ± std", "new mean ± std", "delta", "tolerance", "p", "verdict")


def markdown_summary(cases: Sequence[CaseResult]) -> str:
    """A markdown report for a CI step summary: the table, then each recipe's reason and per-seed values."""
    failed = sum(not case.verdict.passed for case in cases)
    title = "all locked recipes pass" if not failed else f"{failed} of {len(cases)} locked recipes REGRESSED"
    lines = [f"## tuner regress: {title}", "", "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in table_rows(cases):
        verdict = "✅ PASS" if row["verdict"] == "PASS" else "❌ REGRESSED"
        lines.append("| " + " | ".join([f"`{row['lock']}`", *(row[c] for c in COLUMNS[1:-1]), verdict]) + " |")
    lines.append("")
    for case in cases:
        recipe = case.entry.recipe
        lines.append(
            f"- `{case.name}` ({recipe.get('optimizer')} lr={fmt(recipe.get('lr'))} "
            f"schedule={recipe.get('schedule')}): "
            f"{case.verdict.reason}"
        )
        lines.append(
            f"  - seeds {case.seeds}: new {[fmt(r.value) for r in case.new]}, "
            f"locked {[fmt(v) for v in case.entry.values]}"
        )
        lines.extend(f"  - note: {note}" for note in case.notes)
    lines.append("")
    lines.append(
        "Rule: REGRESSED when a one-sided t-test (paired over the locked seeds that were re-run; fresh seeds are "
        "reported, not tested) finds the new mean worse than the locked mean by more than the tolerance, "
        "`max(floor, min_effect × locked std)`, at p < alpha."
    )
    return "\n".join(lines) + "\n"


def junit_xml(cases: Sequence[CaseResult]) -> str:
    """JUnit XML: a testsuite ``tuner regress`` with one testcase per locked recipe; a regression is a failure."""
    from xml.etree import ElementTree as ET

    failures = sum(not case.verdict.passed for case in cases)
    suite = ET.Element(
        "testsuite",
        name="tuner regress",
        tests=str(len(cases)),
        failures=str(failures),
        errors="0",
        skipped="0",
        time=f"{sum(c.seconds for c in cases):.3f}",
    )
    for case, row in zip(cases, table_rows(cases)):
        testcase = ET.SubElement(
            suite,
            "testcase",
            classname=f"tuner.regress.{Path(case.lock_path).name}",
            name=case.name,
            time=f"{case.seconds:.3f}",
        )
        detail = (
            f"{case.lock.metric}: locked {row['locked']}, new {row['new']}, delta {row['delta']}; "
            f"{case.verdict.reason}\n"
            f"seeds {case.seeds}\nnew values {[r.value for r in case.new]}\nlocked values {case.entry.values}"
        )
        if case.verdict.passed:
            ET.SubElement(testcase, "system-out").text = detail
        else:
            ET.SubElement(
                testcase, "failure", message=f"REGRESSED: {case.verdict.reason}", type="regression"
            ).text = detail
    root = ET.Element("testsuites", name="tuner regress", tests=str(len(cases)), failures=str(failures))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
