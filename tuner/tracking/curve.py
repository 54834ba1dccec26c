"""The LR curve as MLflow should draw it: the fewest points whose straight-line joins stay within a tolerance."""

from __future__ import annotations


def simplify_curve(points: list[tuple[int, float]], tolerance: float) -> list[tuple[int, float]]:
    """The subset of ``points`` (step, value) whose straight-line joins stay within ``tolerance`` times the curve's
    largest magnitude of every dropped point (Ramer-Douglas-Peucker on the value axis); first and last are kept."""
    if len(points) <= 2:
        return list(points)
    import numpy as np

    steps = np.array([step for step, _ in points], dtype=float)
    values = np.array([value for _, value in points], dtype=float)
    if not np.all(np.isfinite(values)):
        return list(points)
    limit = tolerance * float(np.max(np.abs(values)))
    keep = np.zeros(len(points), dtype=bool)
    keep[[0, -1]] = True
    segments = [(0, len(points) - 1)]
    while segments:
        first, last = segments.pop()
        if last - first < 2:
            continue
        inside = slice(first + 1, last)
        line = values[first] + (values[last] - values[first]) * (steps[inside] - steps[first]) / (
            steps[last] - steps[first]
        )
        errors = np.abs(values[inside] - line)
        worst = int(np.argmax(errors))
        if errors[worst] > limit:
            middle = first + 1 + worst
            keep[middle] = True
            segments += [(first, middle), (middle, last)]
    return [point for point, kept in zip(points, keep) if kept]
