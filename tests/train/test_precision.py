"""How steps compute: the budget's precision, gradient accumulation, channels-last and torch.compile; fp16's
GradScaler plumbing; what ``check_training`` refuses; the population's fallback."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import FIXTURES, RecordingTask
from tuner.errors import TunerError
from tuner.recipe import Recipe
from tuner.tasks import SimpleTask, TaskData, load_task
from tuner.train import TrainBudget, Trainer, check_training, fit, fit_population
from tuner.train.population import PopulationFallbackWarning

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n_train: int) -> SimpleTask:
    """In-memory blobs (``n_train`` training examples) and a ReLU MLP: no layer depends on the batch."""
    loader_task = load_task(f"{FIXTURES / 'loader_task.py'}:make_task", {"n_train": n_train})
    train, val = loader_task.train_loader(None, 0).dataset.tensors, loader_task.val_loader().dataset.tensors
    return SimpleTask(
        name="blobs",
        model_fn=loader_task.model_fn,
        data_fn=lambda: TaskData(*train, *val),
        loss_fn=loader_task.loss_fn,
        metrics_fn=loader_task.metrics_fn,
        metric="accuracy",
        direction="maximize",
    )


@pytest.fixture(scope="module")
def blobs() -> SimpleTask:
    return _blobs(256)


@pytest.fixture(scope="module")
def streamed() -> SimpleTask:
    return load_task(f"{FIXTURES / 'loader_task.py'}:make_task")


@pytest.fixture(scope="module")
def cnn() -> SimpleTask:
    return load_task("digits-cnn", {"channels": [4]})


# -- the budget ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, message",
    [
        ({"precision": "fp8"}, r"precision must be one of fp32, bf16, fp16, got precision='fp8'"),
        ({"accumulate": 0}, r"accumulate must be an integer >= 1, got accumulate=0"),
        ({"accumulate": 1.5}, r"accumulate must be an integer >= 1, got accumulate=1.5"),
        ({"compile": "yes"}, r"compile must be true or false, got compile='yes'"),
        ({"channels_last": 1}, r"channels_last must be true or false, got channels_last=1"),
    ],
)
def test_the_budget_refuses_bad_step_settings_showing_the_value(field: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainBudget(epochs=1, **field)


# -- gradient accumulation ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["in memory", "loader"])
def test_accumulating_two_batches_of_32_is_one_step_on_a_batch_of_64(source: str, blobs, streamed) -> None:
    task = blobs if source == "in memory" else streamed
    runs = {}
    for batch_size, accumulate in ((32, 2), (64, 1), (32, 1)):
        recorded = RecordingTask(task)
        budget = TrainBudget(epochs=2, accumulate=accumulate)
        result = fit(recorded, Recipe("sgd", 0.2, batch_size=batch_size), budget, seed=5, device="cpu")
        runs[batch_size, accumulate] = result, dict(recorded.model.named_parameters())
    (accumulated, params), (big, big_params), (small, _) = runs[32, 2], runs[64, 1], runs[32, 1]
    assert accumulated.total_steps == big.total_steps == small.total_steps // 2 == 2 * 256 // 64
    for name, param in params.items():
        torch.testing.assert_close(param, big_params[name], rtol=1e-5, atol=1e-6)
    for a, b in zip(accumulated.evaluations, big.evaluations, strict=True):
        assert a.step == b.step and a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.metrics == pytest.approx(b.metrics, rel=1e-5)


def test_an_epochs_last_step_takes_the_micro_batches_left(blobs) -> None:
    task = _blobs(200)  # 7 batches of 32 an epoch: steps of 3, 3 and 1
    trainer = Trainer(task, Recipe("sgd", 0.1, batch_size=32), TrainBudget(epochs=2, accumulate=3), device="cpu")
    steps = list(trainer.batches())
    assert trainer.total_steps == len(steps) == 6 and trainer.per_epoch == 3
    assert [[len(inputs) for inputs, _ in step] for step in steps] == [[32, 32, 32], [32, 32, 32], [8]] * 2


def test_an_accumulated_steps_loss_is_the_mean_of_its_micro_batches(blobs) -> None:
    trainer = Trainer(blobs, Recipe("sgd", 0.1, batch_size=16), TrainBudget(steps=3, accumulate=4), device="cpu")
    micro_batches = next(trainer.batches())
    with torch.no_grad():
        expected = sum(float(blobs.loss(trainer.model(x), y)) for x, y in micro_batches) / 4
    assert trainer.train_step(0, micro_batches) == pytest.approx(expected, rel=1e-6)


def test_a_closure_optimizer_refuses_accumulation_and_mixed_precision() -> None:
    task = load_task("quadratic", {"dim": 4, "n": 64})
    for budget in (TrainBudget(steps=5, accumulate=2), TrainBudget(steps=5, precision="bf16")):
        with pytest.raises(TunerError, match=r"optimizer lbfgs steps with a closure, which works only with"):
            check_training(task, budget, "cpu", None, optimizers=["adam", "lbfgs"])
        with pytest.raises(TunerError, match=r"optimizer lbfgs steps with a closure"):
            fit(task, Recipe("lbfgs", 0.5, batch_size=None), budget, device="cpu")
    check_training(task, TrainBudget(steps=5, accumulate=2), "cpu", None, optimizers=["adam", "sgd"])


# -- mixed precision ----------------------------------------------------------------------------------------------


def test_bf16_on_cpu_trains_with_finite_metrics(blobs) -> None:
    budget = TrainBudget(epochs=3, precision="bf16")
    check_training(blobs, budget, "cpu", 32)
    result = fit(blobs, Recipe("adam", 1e-2, batch_size=32), budget, seed=0, device="cpu")
    assert result.status == "completed" and len(result.evaluations) == 3
    assert all(math.isfinite(v) for e in result.evaluations for v in e.metrics.values())
    assert result.best.metrics["accuracy"] >= 0.9


def test_fp16_on_cpu_is_refused(blobs) -> None:
    budget = TrainBudget(epochs=1, precision="fp16")
    with pytest.raises(TunerError) as error:
        check_training(blobs, budget, "cpu", 32)
    assert str(error.value) == "budget.precision: fp16 needs a CUDA device; got device cpu; use bf16 on CPU"
    with pytest.raises(TunerError, match="fp16 needs a CUDA device"):
        fit(blobs, Recipe("adam", 1e-2, batch_size=32), budget, device="cpu")


def test_the_grad_scaler_unscales_before_clipping(blobs) -> None:
    """fp16's plumbing on the CPU: a GradScaler (scale 2^10, exact) around fp32 steps with tight clipping must change
    nothing -- clipping the scaled gradients would shrink the updates 1024 times."""
    recipe, budget = Recipe("sgd", 0.5, batch_size=32, clip_norm=0.01), TrainBudget(steps=4)
    plain, scaled = (Trainer(blobs, recipe, budget, seed=1, device="cpu") for _ in range(2))
    scaled.precision.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for trainer in (plain, scaled):
        for step, micro_batches in enumerate(trainer.batches()):
            trainer.train_step(step, micro_batches)
    assert scaled.precision.scaler.get_scale() == 1024.0  # no step was skipped
    for got, want in zip(scaled.model.parameters(), plain.model.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_trains_with_finite_metrics(blobs, precision: str) -> None:
    # 6 epochs: fp32 on the CPU reaches 0.92 here (0.85 after 3, which an H200 run showed fp16/bf16 match too)
    budget = TrainBudget(epochs=6, precision=precision, accumulate=2)
    recipe = Recipe("adam", 1e-2, batch_size=32, clip_norm=1.0)
    check_training(blobs, budget, "cuda", 32)
    result = fit(blobs, recipe, budget, seed=0, device="cuda")
    reference = fit(blobs, recipe, TrainBudget(epochs=6, accumulate=2), seed=0, device="cpu")
    assert result.status == "completed"
    assert all(math.isfinite(v) for e in result.evaluations for v in e.metrics.values())
    assert result.best.metrics["accuracy"] >= 0.9
    assert result.best.metrics["accuracy"] == pytest.approx(reference.best.metrics["accuracy"], abs=0.03)


@needs_cuda
def test_a_loader_task_streams_to_cuda_as_on_the_cpu(streamed) -> None:
    recipe, budget = Recipe("sgd", 0.1, batch_size=32), TrainBudget(epochs=2)
    on_cuda = fit(streamed, recipe, budget, seed=0, device="cuda")
    on_cpu = fit(streamed, recipe, budget, seed=0, device="cpu")
    assert on_cuda.evaluations[-1].metrics == pytest.approx(on_cpu.evaluations[-1].metrics, rel=1e-3, abs=1e-4)


# -- memory format and compilation --------------------------------------------------------------------------------


def test_channels_last_trains_a_conv_task_on_channels_last_inputs(cnn) -> None:
    recorded, layouts = RecordingTask(cnn), []
    budget = TrainBudget(steps=30, eval_every=15, channels_last=True)
    check_training(cnn, budget, "cpu", 64)
    trainer = Trainer(recorded, Recipe("adam", 1e-2, batch_size=64), budget, seed=0, device="cpu")
    trainer.model.register_forward_pre_hook(
        lambda module, args: layouts.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    result = trainer.run()
    assert result.status == "completed" and all(layouts) and len(layouts) == 30 + 2 * 1  # steps + 2 validations
    assert recorded.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert result.evaluations[0].metrics["loss"] > result.evaluations[-1].metrics["loss"]


def test_a_model_torch_compile_cannot_compile_is_a_clear_error(blobs, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(model, *args, **kwargs):
        raise RuntimeError("Dynamo is not supported here\nmore details")

    monkeypatch.setattr(torch, "compile", refuse)
    message = r"budget.compile: torch.compile cannot compile this model \(RuntimeError: Dynamo is not supported here\)"
    with pytest.raises(TunerError, match=message + "; set compile: false"):
        fit(blobs, Recipe("adam", 1e-2, batch_size=32), TrainBudget(steps=2, compile=True), device="cpu")
    with pytest.raises(TunerError, match=message):
        check_training(blobs, TrainBudget(steps=2, compile=True), "cpu", 32)


def test_check_training_names_compiling_when_only_the_compiled_model_fails(blobs, monkeypatch) -> None:
    class Broken(torch.nn.Module):
        def forward(self, *args):
            raise NotImplementedError("backend inductor has no kernel")

    monkeypatch.setattr(torch, "compile", lambda model: Broken())
    with pytest.raises(TunerError, match=r"torch.compile cannot compile this model \(NotImplementedError: backend"):
        check_training(blobs, TrainBudget(steps=2, compile=True), "cpu", 32)
    eager_failure = SimpleTask("t", lambda: torch.nn.Linear(3, 2), blobs.data_fn, blobs.loss_fn)  # 4 features in
    with pytest.raises(TunerError, match=r"one training step of task 't' fails under precision bf16: RuntimeError"):
        check_training(eager_failure, TrainBudget(steps=2, precision="bf16"), "cpu", 32)


@pytest.mark.slow  # the first torch.compile of a process takes 5-20 s on a CPU
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # inside torch
def test_compile_trains_or_fails_with_the_clear_error(blobs) -> None:
    budget = TrainBudget(steps=6, eval_every=3, compile=True)
    try:
        check_training(blobs, budget, "cpu", 32)
        result = fit(blobs, Recipe("adam", 1e-2, batch_size=32), budget, seed=0, device="cpu")
    except TunerError as error:
        assert str(error).startswith("budget.compile: torch.compile cannot compile this model")
        return
    plain = fit(blobs, Recipe("adam", 1e-2, batch_size=32), TrainBudget(steps=6, eval_every=3), seed=0, device="cpu")
    assert result.status == "completed"
    assert result.evaluations[-1].metrics == pytest.approx(plain.evaluations[-1].metrics, rel=1e-4, abs=1e-6)


# -- the population -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, reason",
    [
        ({"precision": "bf16"}, "budget precision bf16"),
        ({"accumulate": 2}, "budget accumulate 2"),
        ({"channels_last": True}, "budget channels_last"),
    ],
)
def test_a_population_falls_back_for_what_its_stacks_do_not_compute(blobs, settings: dict, reason: str) -> None:
    budget = TrainBudget(steps=6, eval_every=3, **settings)
    recipes, seeds = [Recipe("adam", 1e-2, batch_size=32), Recipe("sgd", 0.1, batch_size=32)], [1, 2]
    with pytest.warns(PopulationFallbackWarning, match=reason) as record:
        results = fit_population(blobs, recipes, budget, seeds=seeds, device="cpu")
    assert len([w for w in record if issubclass(w.category, PopulationFallbackWarning)]) == 1
    for recipe, seed, result in zip(recipes, seeds, results):
        alone = fit(blobs, recipe, budget, seed=seed, device="cpu")
        assert [e.metrics for e in result.evaluations] == [e.metrics for e in alone.evaluations]
