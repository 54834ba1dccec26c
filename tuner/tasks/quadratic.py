"""``quadratic``: a noisy quadratic f(w) = 1/2 (w - w*)^T H (w - w*) posed as linear regression.

The inputs are built as ``X = sqrt(n) Z diag(sqrt(eigs)) Q^T`` with ``Z`` an ``(n, dim)`` matrix of
orthonormal columns and ``Q`` a random rotation, so the data covariance ``X^T X / n`` equals
``H = Q diag(eigs) Q^T`` exactly, with ``eigs`` log-spaced in ``[min_eig, max_eig]`` (condition number
``max_eig / min_eig``). Labels are ``y = X w* + noise * N(0, 1)``; the model is ``nn.Linear(dim, 1,
bias=False)`` and the loss ``1/2 mean((x.w - y)^2)``, whose Hessian is exactly ``H``.

Targets are ``(N, 2)``: column 0 the noisy label, column 1 the clean ``x.w*``. That makes
``excess_loss = 1/2 mean((x.w - x.w*)^2)`` a per-example mean, and over the whole validation split
(which has the same covariance) it equals f(w) exactly.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from tuner.tasks.base import SimpleTask, TaskData

DIRECTIONS = {"loss": "minimize", "excess_loss": "minimize"}


def eigenvalues(dim: int, min_eig: float, max_eig: float) -> Any:
    """The ``dim`` Hessian eigenvalues, log-spaced from ``min_eig`` to ``max_eig`` (float64)."""
    import torch

    return torch.logspace(math.log10(min_eig), math.log10(max_eig), dim, dtype=torch.float64)


def load(dim: int, n: int, val_n: int, min_eig: float, max_eig: float, noise: float, seed: int) -> TaskData:
    """Train and validation splits that share ``H`` and ``w*`` (deterministic in ``seed``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    scale = eigenvalues(dim, min_eig, max_eig).sqrt()
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    w_star = torch.randn(dim, generator=generator, dtype=torch.float64)

    def split(count: int) -> tuple[Any, Any]:
        z, _ = torch.linalg.qr(torch.randn(count, dim, generator=generator, dtype=torch.float64))
        x = math.sqrt(count) * (z * scale) @ rotation.T
        clean = x @ w_star
        noisy = clean + noise * torch.randn(count, generator=generator, dtype=torch.float64)
        return x.float(), torch.stack([noisy, clean], dim=1).float()

    return TaskData(*split(n), *split(val_n))


def half_mse(outputs: Any, targets: Any) -> Any:
    """``1/2 mean((output - noisy label)^2)``: the quadratic's value on this batch."""
    return 0.5 * (outputs.reshape(-1) - targets[:, 0]).pow(2).mean()


def quadratic_metrics(outputs: Any, targets: Any) -> dict[str, float]:
    """``loss`` (noisy labels) and ``excess_loss`` (distance to the optimum, f(w) - f(w*) w/o noise)."""
    prediction = outputs.reshape(-1)
    return {
        "loss": half_mse(outputs, targets).item(),
        "excess_loss": (0.5 * (prediction - targets[:, 1]).pow(2).mean()).item(),
    }


def build_linear(dim: int) -> Any:
    """The quadratic task's model: one linear map from the features to a scalar."""
    from torch import nn

    return nn.Linear(dim, 1, bias=False)


def _check(dim: int, n: int, val_n: int, min_eig: float, max_eig: float, noise: float) -> None:
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got dim={dim}")
    for name, value in (("n", n), ("val_n", val_n)):
        if value < dim:
            raise ValueError(f"{name} must be >= dim (the covariance needs full rank), got {name}={value}, dim={dim}")
    if not 0 < min_eig <= max_eig:
        raise ValueError(f"eigenvalues need 0 < min_eig <= max_eig, got min_eig={min_eig}, max_eig={max_eig}")
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got noise={noise}")


def quadratic(
    dim: int = 50,
    n: int = 2048,
    val_n: int = 512,
    min_eig: float = 0.01,
    max_eig: float = 1.0,
    noise: float = 0.1,
    seed: int = 0,
    full_batch: bool = False,
) -> SimpleTask:
    """A noisy ill-conditioned quadratic as linear regression; minimize validation loss."""
    _check(dim, n, val_n, min_eig, max_eig, noise)
    return SimpleTask(
        name="quadratic",
        model_fn=partial(build_linear, int(dim)),
        data_fn=partial(load, int(dim), int(n), int(val_n), float(min_eig), float(max_eig), float(noise), int(seed)),
        loss_fn=half_mse,
        metrics_fn=quadratic_metrics,
        metric="loss",
        direction="minimize",
        directions=DIRECTIONS,
        default_batch_size=None if full_batch else 64,
    )
