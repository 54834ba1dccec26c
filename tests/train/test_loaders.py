"""Tasks that stream their data from loaders: training, evaluation, reruns, unsized loaders, bad batches, the
population's fallback, the LR range test, and ``check_training``'s refusals (devices, loaders)."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import FIXTURES, RecordingTask
from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.tasks import SimpleTask, load_task, loaders_of
from tuner.train import TrainBudget, check_training, fit, fit_population, range_test
from tuner.train.lr_range import SweepConfig
from tuner.train.population import PopulationFallbackWarning

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():
    """Two blobs, 256 training examples in DataLoaders shuffled from the seed; 100 validation examples in batches
    of 32 (the last one of 4)."""
    return load_task(f"{FIXTURES / 'loader_task.py'}:make_task")


def _streamed(train, val=None) -> SimpleTask:
    """A task of the fixture's model whose loader factories are ``train`` and ``val`` (default: the fixture's)."""
    base = load_task(f"{FIXTURES / 'loader_task.py'}:make_task")
    return SimpleTask(
        name="streamed",
        model_fn=base.model_fn,
        loss_fn=base.loss_fn,
        metrics_fn=base.metrics_fn,
        metric="accuracy",
        direction="maximize",
        train_loader_fn=train,
        val_loader_fn=val or base.val_loader_fn,
    )


def test_a_loader_task_trains_and_its_metrics_are_weighted_by_batch_size(task) -> None:
    recorded = RecordingTask(task)
    result = fit(recorded, Recipe("adam", 1e-2, batch_size=32), TrainBudget(epochs=3), device="cpu")
    assert result.status == "completed" and result.total_steps == 3 * 8  # len(loader) = 256 / 32 steps an epoch
    assert [e.epoch for e in result.evaluations] == [1.0, 2.0, 3.0]
    assert result.best.metrics["accuracy"] >= 0.9
    val = loaders_of(task).val().dataset.tensors
    with torch.no_grad():
        whole = task.metrics(recorded.model(val[0]), val[1])  # one batch of all 100: what 32+32+32+4 must average to
    assert result.evaluations[-1].metrics == pytest.approx(whole, rel=1e-6)


def test_the_same_seed_gives_bit_identical_runs(task) -> None:
    recipe, budget = Recipe("momentum", 0.05, schedule="cosine", batch_size=16), TrainBudget(epochs=2)
    runs = [fit(task, recipe, budget, seed=3, device="cpu", deterministic=True) for _ in range(2)]
    assert [e.metrics for e in runs[0].evaluations] == [e.metrics for e in runs[1].evaluations]
    other = fit(task, recipe, budget, seed=4, device="cpu", deterministic=True)
    assert other.evaluations[-1].metrics["loss"] != runs[0].evaluations[-1].metrics["loss"]


def test_the_train_loader_gets_the_batch_size_and_the_seed(task) -> None:
    calls = []

    def train(batch_size, seed):
        calls.append((batch_size, seed))
        return loaders_of(task).train(batch_size, seed)

    fit(_streamed(train), Recipe("sgd", 0.1, batch_size=64), TrainBudget(steps=2), seed=11, device="cpu")
    assert calls == [(64, 11)]


class Unsized:
    """A re-iterable loader without ``len()`` (an iterable-style dataset)."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __iter__(self):
        return iter(self.loader)


def test_a_loader_without_len_needs_a_step_budget(task) -> None:
    unsized = _streamed(lambda batch_size, seed: Unsized(loaders_of(task).train(batch_size, seed)))
    recipe = Recipe("adam", 1e-2, batch_size=32)
    with pytest.raises(TunerError, match=r"train loader has no len\(\).*set budget.steps"):
        fit(unsized, recipe, TrainBudget(epochs=2), device="cpu")
    with pytest.raises(TunerError, match=r"train loader has no len\(\)"):
        check_training(unsized, TrainBudget(epochs=2), "cpu", 32)
    check_training(unsized, TrainBudget(steps=20), "cpu", 32)
    result = fit(unsized, recipe, TrainBudget(steps=20, eval_every=10), device="cpu")  # 2.5 passes over the loader
    assert result.status == "completed" and [e.step for e in result.evaluations] == [10, 20]
    assert math.isnan(result.evaluations[0].epoch) and result.best.metrics["accuracy"] >= 0.9


def test_a_loader_spent_after_one_pass_is_named(task) -> None:
    def one_pass(batch_size, seed):
        return iter(loaders_of(task).train(batch_size, seed))

    with pytest.raises(TunerError, match=r"train_loader yielded no batch \(a generator is spent after one pass"):
        fit(_streamed(one_pass), Recipe("sgd", 0.1, batch_size=128), TrainBudget(epochs=2), device="cpu")


@pytest.mark.parametrize(
    "batch, shown",
    [
        ({"x": torch.zeros(8, 4), "y": torch.zeros(8)}, r"a dict with keys \['x', 'y'\]"),
        (torch.zeros(8, 4), r"a single tensor of shape \(8, 4\)"),
        ((torch.zeros(8, 4), torch.zeros(8), torch.zeros(8)), r"a tuple of 3 items \(Tensor, Tensor, Tensor\)"),
        ([torch.zeros(8, 4), [0, 1]], r"a list of 2 items \(Tensor, list\)"),
    ],
)
@pytest.mark.parametrize("which", ["train_loader", "val_loader"])
def test_check_training_refuses_a_loader_that_yields_no_pairs_of_tensors(task, batch, shown, which) -> None:
    def bad_train(batch_size, seed):
        return [batch]

    def bad_val():
        return [batch]

    bad = _streamed(bad_train) if which == "train_loader" else _streamed(loaders_of(task).train, bad_val)
    message = rf"the task's {which} must yield \(inputs, targets\) pairs of tensors; it yielded {shown}"
    with pytest.raises(TunerError, match=message):
        check_training(bad, TrainBudget(epochs=1), "cpu", 8)
    with pytest.raises(TunerError, match=message):  # and the trainer, had nobody checked
        fit(bad, Recipe("sgd", 0.1, batch_size=8), TrainBudget(epochs=1), device="cpu")


def test_check_training_passes_a_good_loader_task_and_an_in_memory_one(task) -> None:
    check_training(task, TrainBudget(epochs=1), "cpu", 32, optimizers=["adam", "lbfgs"])
    check_training(load_task("digits-mlp", {"hidden": [8]}), TrainBudget(epochs=1), "cpu", 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_check_training_refuses_a_device_this_machine_lacks(task, device: str) -> None:
    message = (
        f"device: {device} is not available on this machine (torch.cuda.is_available() is False); "
        "use device: cpu or auto"
    )
    with pytest.raises(TunerError) as error:
        check_training(task, TrainBudget(epochs=1), device, 32)
    assert str(error.value) == message
    with pytest.raises(TunerError, match="is not available on this machine"):
        fit(task, Recipe("sgd", 0.1), TrainBudget(epochs=1), device=device)
    with pytest.raises(TunerError, match=r"device: 'gpu' is not a device .*use auto, cpu, cuda or cuda:N"):
        check_training(task, TrainBudget(epochs=1), "gpu", 32)


def test_a_population_of_a_loader_task_trains_sequentially_after_one_warning(task) -> None:
    recipes, seeds = [Recipe("adam", 1e-2, batch_size=32), Recipe("sgd", 0.1, batch_size=32)], [1, 2]
    budget = TrainBudget(steps=12, eval_every=6)
    with pytest.warns(PopulationFallbackWarning, match="streams its data from loaders") as record:
        results = fit_population(task, recipes, budget, seeds=seeds, device="cpu")
    assert len([w for w in record if issubclass(w.category, PopulationFallbackWarning)]) == 1
    for recipe, seed, result in zip(recipes, seeds, results):
        alone = fit(task, recipe, budget, seed=seed, device="cpu")
        assert [e.metrics for e in result.evaluations] == [e.metrics for e in alone.evaluations]


def test_the_lr_range_test_sweeps_a_loader_task(task) -> None:
    finding = range_test(task, "adam", batch_size=32, config=SweepConfig(1e-5, 10.0, steps=30), device="cpu")
    assert 10 <= len(finding.losses) <= 30 and all(math.isfinite(loss) for loss in finding.losses[:10])
    assert 1e-5 <= finding.suggestion.lr <= 10.0
