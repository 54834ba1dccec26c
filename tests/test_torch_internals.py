"""tuner._torch: every private torch name has a public fallback that computes the same values."""

from __future__ import annotations

import pytest
import torch

import tuner._torch as internals


@pytest.fixture
def fallbacks(monkeypatch):
    monkeypatch.setattr(internals, "SUPPORTED", False)


def _log_softmax_case():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    grad = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    log_probs = internals.log_softmax(x, 1)
    return x, grad, log_probs, internals.log_softmax_backward(grad, log_probs, 1, x.dtype)


def test_the_fallbacks_compute_what_the_kernels_compute(monkeypatch) -> None:
    assert internals.SUPPORTED and internals.fused_adam() is not None
    fast = _log_softmax_case()
    x = torch.randn(2, 3, 7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dy = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    fast_pool = internals.adaptive_avg_pool2d_backward(dy, x)
    monkeypatch.setattr(internals, "SUPPORTED", False)
    slow = _log_softmax_case()
    for a, b in zip(fast[2:], slow[2:]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(internals.adaptive_avg_pool2d_backward(dy, x), fast_pool, rtol=1e-12, atol=1e-12)
    assert internals.fused_adam() is None


def test_hooks_are_seen_and_unknown_modules_count_as_hooked() -> None:
    layer = torch.nn.Linear(2, 2)
    assert not internals.has_hooks(layer)
    layer.register_forward_hook(lambda module, args, output: None)
    assert internals.has_hooks(layer)

    class Bare:
        pass

    assert internals.has_hooks(Bare())  # type: ignore[arg-type]


def test_a_population_trains_to_the_same_result_on_the_fallbacks(fallbacks) -> None:
    from tuner.recipe import Recipe
    from tuner.tasks import load_task
    from tuner.train import TrainBudget, fit, fit_population

    task = load_task("digits-cnn", {"channels": [4]})
    recipes = [Recipe(optimizer="adam", lr=3e-3, batch_size=64), Recipe(optimizer="sgd", lr=0.05, batch_size=64)]
    budget = TrainBudget(steps=12, eval_every=6)
    stacked = fit_population(task, recipes, budget, seeds=[1, 2], device="cpu")
    alone = [fit(task, recipe, budget, seed=seed, device="cpu") for recipe, seed in zip(recipes, [1, 2])]
    for a, b in zip(stacked, alone):
        assert a.best.metrics["loss"] == pytest.approx(b.best.metrics["loss"], rel=1e-4)
