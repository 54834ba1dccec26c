"""Tests for tuner.tasks: every built-in task (parametrized over BUILTIN_TASKS), the quadratic's
spectrum, the char-LM text, CIFAR-10 from a generated directory, and loading user task files."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import socket
import string
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import FIXTURES, ROOT, write_cifar
from tuner.errors import TunerError, UnknownNameError
from tuner.tasks import BUILTIN_TASKS, Loaders, SimpleTask, TaskData, charlm, check_task, cifar, load_task, loaders_of

CIFAR_IMAGES_PER_BATCH = 20
#: Metrics that are not means over examples (the chunk-average test skips them): exp of a mean.


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar(tmp_path_factory.mktemp("cifar") / "cifar-10-batches-py")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test: the built-in tasks are offline."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a task tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def builtin(request: pytest.FixtureRequest, cifar_root: Path, no_network: None):
    """``(name, task, options)`` for each built-in; options that a test run needs (CIFAR's root) come from here."""
    options = {"cifar10": {"root": str(cifar_root)}}.get(request.param, {})
    return request.param, load_task(request.param, options), options


builtins = pytest.mark.parametrize("builtin", sorted(BUILTIN_TASKS), indirect=True)


def marked_line(path: Path, mark: str) -> int:
    """The 1-based line of ``path`` that carries ``# MARK: mark``."""
    lines = path.read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.rstrip().endswith(f"# MARK: {mark}"))


def batch(data: TaskData, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    return data.train_inputs[:size], data.train_targets[:size]


# --- every built-in task ----------------------------------------------------------------------------


@builtins
def test_builtin_data_is_consistent_and_deterministic(builtin) -> None:
    name, task, options = builtin
    data = task.load_data()
    assert data.n_train > 0 and data.n_val > 0
    assert data.train_inputs.shape[1:] == data.val_inputs.shape[1:]
    assert data.train_targets.shape[1:] == data.val_targets.shape[1:]
    assert data.train_inputs.dtype == data.val_inputs.dtype
    assert data.train_targets.dtype == data.val_targets.dtype
    assert torch.isfinite(data.train_inputs.float()).all()
    again = load_task(name, options).load_data()
    assert torch.equal(again.train_inputs, data.train_inputs) and torch.equal(again.val_targets, data.val_targets)


@builtins
def test_builtin_forward_loss_and_metrics(builtin) -> None:
    name, task, _ = builtin
    torch.manual_seed(0)
    model = task.build_model()
    inputs, targets = batch(task.load_data())
    outputs = model(inputs)
    loss = task.loss(outputs, targets)
    metrics = task.metrics(outputs.detach(), targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(metrics) == set(task.directions)
    assert task.metric in metrics and task.directions[task.metric] == task.direction
    assert metrics["loss"] == pytest.approx(loss.item(), rel=1e-5)
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())


@builtins
def test_builtin_metrics_are_means_over_examples(builtin) -> None:
    """What the trainer relies on: the count-weighted average over chunks equals the whole batch's value."""
    name, task, _ = builtin
    torch.manual_seed(0)
    model = task.build_model()
    inputs, targets = batch(task.load_data(), 20)
    with torch.no_grad():
        whole = task.metrics(model(inputs), targets)
        first, second = task.metrics(model(inputs[:15]), targets[:15]), task.metrics(model(inputs[15:]), targets[15:])
    for key in whole:
        assert whole[key] == pytest.approx((15 * first[key] + 5 * second[key]) / 20, rel=1e-4, abs=1e-6), key


@builtins
def test_builtin_adam_lowers_training_loss(builtin) -> None:
    name, task, _ = builtin
    torch.manual_seed(0)
    model = task.build_model()
    inputs, targets = batch(task.load_data())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = task.loss(model(inputs), targets)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


@builtins
def test_builtin_model_is_deterministic_given_the_seed(builtin) -> None:
    name, task, _ = builtin

    def weights(seed: int) -> list[torch.Tensor]:
        torch.manual_seed(seed)
        return list(task.build_model().state_dict().values())

    first, again, other = weights(0), weights(0), weights(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@builtins
def test_builtin_model_runs_under_vmap(builtin) -> None:
    """The population path stacks members' parameters: each member's vmapped gradient must equal plain autograd's."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    name, task, _ = builtin
    torch.manual_seed(0)
    models = [task.build_model() for _ in range(3)]
    params, buffers = stack_module_state(models)
    inputs, targets = batch(task.load_data(), 8)

    def member_loss(p, b):
        return task.loss(functional_call(models[0], (p, b), (inputs,)), targets)

    grads = vmap(grad(member_loss))(params, buffers)
    expected = torch.autograd.grad(task.loss(models[1](inputs), targets), list(models[1].parameters()))
    for got, want in zip(grads.values(), expected):
        torch.testing.assert_close(got[1], want, atol=1e-5, rtol=1e-4)


@builtins
def test_builtin_metadata(builtin) -> None:
    name, task, _ = builtin
    assert task.name == name
    assert check_task(task, name) is task
    assert task.default_batch_size is None or task.default_batch_size >= 1
    spec = BUILTIN_TASKS[name]
    assert spec.describe()["options"] == dict(spec.options) and spec.description


def test_builtin_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(UnknownNameError) as error:
        load_task("mnist")
    assert all(name in str(error.value) for name in BUILTIN_TASKS)


def test_builtin_unknown_option_names_it_and_the_valid_ones() -> None:
    with pytest.raises(TunerError, match=r"unknown option 'hiden' for task 'digits-mlp'; valid options: .*hidden"):
        load_task("digits-mlp", {"hiden": [32]})


@pytest.mark.parametrize(
    "name, options, message",
    [
        ("digits-mlp", {"hidden": [32, 0]}, r"hidden must be .* got hidden=\[32, 0\]"),
        ("digits-mlp", {"val_fraction": 1.5}, r"val_fraction must be a number in \(0, 1\), got val_fraction=1.5"),
        ("digits-cnn", {"channels": [4, 4, 4, 4]}, r"too many conv layers for 8x8 images"),
        ("quadratic", {"min_eig": 2.0}, r"0 < min_eig <= max_eig, got min_eig=2.0, max_eig=1.0"),
        ("quadratic", {"n": 10}, r"n must be >= dim .* got n=10, dim=50"),
        ("charlm", {"d_model": 30}, r"d_model must be a multiple of n_heads, got d_model=30, n_heads=4"),
        ("charlm", {"text": "shakespeare"}, r"unknown text source 'shakespeare'"),
        ("tabular-mlp", {"dataset": "iris"}, r"unknown dataset 'iris'.*breast-cancer, wine"),
        ("tabular-mlp", {"val_fraction": 0}, r"val_fraction must be a number in \(0, 1\), got val_fraction=0"),
    ],
)
def test_builtin_bad_option_values_are_reported(name: str, options: dict, message: str) -> None:
    with pytest.raises(TunerError, match=message):  # a user error: exit 2 with the message, no traceback
        load_task(name, options)


# --- task-specific ------------------------------------------------------------------------------------


def train_digits(task, epochs: int, lr: float) -> float:
    data = task.load_data()
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(data.n_train, generator=generator).split(task.default_batch_size):
            optimizer.zero_grad()
            task.loss(model(data.train_inputs[index]), data.train_targets[index]).backward()
            optimizer.step()
    with torch.no_grad():
        return task.metrics(model(data.val_inputs), data.val_targets)["accuracy"]


def test_digits_mlp_is_learnable() -> None:
    assert train_digits(load_task("digits-mlp"), epochs=10, lr=3e-3) >= 0.95


def test_digits_split_is_stratified_standardized_and_seeded() -> None:
    data = load_task("digits-mlp").load_data()
    assert (data.n_train, data.n_val) == (1437, 360)
    assert torch.bincount(data.val_targets).tolist() == pytest.approx([36] * 10, abs=1)
    assert data.train_inputs.mean(0).abs().max() < 1e-5
    other = load_task("digits-mlp", {"split_seed": 1}).load_data()
    assert not torch.equal(other.val_targets, data.val_targets)
    images = load_task("digits-cnn").load_data()
    assert torch.equal(images.train_inputs.reshape(data.n_train, -1), data.train_inputs)


@pytest.mark.parametrize(
    "dataset, shape, classes, floor", [("breast-cancer", (398, 30), 2, 0.93), ("wine", (124, 13), 3, 0.9)]
)
def test_tabular_sets_are_split_stratified_standardized_and_learnable(
    dataset: str, shape: tuple[int, int], classes: int, floor: float
) -> None:
    task = load_task("tabular-mlp", {"dataset": dataset})
    data = task.load_data()
    assert tuple(data.train_inputs.shape) == shape and data.train_inputs.mean(0).abs().max() < 1e-5
    train_share = torch.bincount(data.train_targets) / data.n_train
    val_share = torch.bincount(data.val_targets, minlength=classes) / data.n_val
    assert torch.allclose(train_share, val_share, atol=0.03)  # stratified
    assert task.build_model()(data.val_inputs[:2]).shape == (2, classes)
    assert train_digits(task, epochs=20, lr=3e-3) >= floor


@pytest.mark.parametrize("min_eig, max_eig", [(0.01, 1.0), (1e-3, 10.0), (0.5, 0.5)])
def test_quadratic_data_covariance_has_the_requested_eigenvalues(min_eig: float, max_eig: float) -> None:
    task = load_task("quadratic", {"dim": 20, "n": 256, "val_n": 64, "min_eig": min_eig, "max_eig": max_eig})
    data = task.load_data()
    expected = np.geomspace(min_eig, max_eig, 20)
    for inputs in (data.train_inputs, data.val_inputs):
        x = inputs.double()
        eigenvalues = torch.linalg.eigvalsh(x.T @ x / x.shape[0]).numpy()
        np.testing.assert_allclose(eigenvalues, expected, rtol=1e-4)


def test_quadratic_loss_hessian_is_the_data_covariance_and_optimum_is_w_star() -> None:
    task = load_task("quadratic", {"dim": 10, "n": 128, "val_n": 4096, "noise": 0.2})
    data = task.load_data()
    x, targets = data.train_inputs.double(), data.train_targets.double()
    w0 = torch.zeros(10, dtype=torch.double)
    hessian = torch.autograd.functional.hessian(lambda w: task.loss(x @ w, targets), w0)
    torch.testing.assert_close(hessian, x.T @ x / x.shape[0])
    w_star = torch.linalg.lstsq(x, targets[:, 1:]).solution
    val = task.metrics(data.val_inputs.double() @ w_star, data.val_targets.double())
    assert val["excess_loss"] == pytest.approx(0.0, abs=1e-9)
    assert val["loss"] == pytest.approx(0.5 * 0.2**2, rel=0.1)  # the noise floor: 1/2 noise^2


def test_quadratic_full_batch_option() -> None:
    assert load_task("quadratic").default_batch_size == 64
    assert load_task("quadratic", {"full_batch": True}).default_batch_size is None


def test_charlm_vocabulary_is_fixed_printable_ascii() -> None:
    assert "\n" + "".join(sorted(set(string.printable) - set("\t\n\r\x0b\x0c"))) == charlm.VOCAB
    assert charlm.encode("A a\n~").tolist() == [34, 1, 66, 0, 95]  # pinned: a saved model stays decodable
    assert len(charlm.VOCAB) == len(set(charlm.VOCAB)) == 96
    assert charlm.normalize("“naïve” — ok…\t") == '"na?ve" - ok...    '


@pytest.mark.parametrize("source", sorted(charlm.TEXT_SOURCES))
def test_charlm_text_loads_offline_and_round_trips(source: str, no_network: None) -> None:
    text = charlm.corpus(source, 50_000)
    assert len(text) == 50_000 and set(text) <= set(charlm.VOCAB)
    tokens = charlm.encode(text)
    assert tokens.dtype == torch.long and int(tokens.max()) < len(charlm.VOCAB)
    assert charlm.decode(tokens) == text


def test_charlm_windows_predict_the_next_char() -> None:
    data = load_task("charlm", {"context": 16, "max_chars": 5_000, "stride": 8}).load_data()
    assert data.train_inputs.shape[1] == 16 and data.train_inputs.dtype == torch.long
    assert torch.equal(data.train_inputs[:, 1:], data.train_targets[:, :-1])
    assert torch.equal(data.train_inputs[1, :8], data.train_inputs[0, 8:])
    text = charlm.corpus("python-docs", 5_000)
    assert charlm.decode(data.train_inputs[0]) == text[:16]
    assert charlm.decode(data.val_inputs[0]) == text[4_500:4_516]  # validation = the last 10 % of the text


def test_charlm_model_is_causal() -> None:
    torch.manual_seed(0)
    model = load_task("charlm", {"context": 12}).build_model()
    tokens = torch.randint(0, len(charlm.VOCAB), (2, 12))
    changed = tokens.clone()
    changed[:, 7:] = (changed[:, 7:] + 1) % len(charlm.VOCAB)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[:, :7], model(changed)[:, :7])
        assert not torch.allclose(model(tokens)[:, 7:], model(changed)[:, 7:])


def test_cifar10_reads_the_python_batches_and_normalizes(cifar_root: Path) -> None:
    data = load_task("cifar10", {"root": str(cifar_root)}).load_data()
    assert data.train_inputs.shape == (5 * CIFAR_IMAGES_PER_BATCH, 3, 32, 32)
    assert data.val_inputs.shape == (CIFAR_IMAGES_PER_BATCH, 3, 32, 32)
    assert data.train_targets.dtype == torch.long and data.train_targets.tolist()[:3] == [0, 1, 2]
    torch.testing.assert_close(data.train_inputs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.train_inputs.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    raw = np.concatenate([pickle.loads((cifar_root / name).read_bytes())[b"data"] for name in cifar.TRAIN_FILES])
    raw = raw.reshape(-1, 3, 32, 32) / 255.0
    mean, std = raw.mean(axis=(0, 2, 3), keepdims=True), raw.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    np.testing.assert_allclose(data.train_inputs.numpy(), (raw - mean) / std, atol=1e-4)
    assert load_task("cifar10", {"root": str(cifar_root), "limit": 30}).load_data().n_train == 30


def test_cifar10_needs_root() -> None:
    with pytest.raises(TunerError, match="needs the option root"):
        load_task("cifar10")


def test_cifar10_missing_file_is_named(tmp_path: Path) -> None:
    root = write_cifar(tmp_path / "cifar")
    (root / "data_batch_3").unlink()
    with pytest.raises(TunerError, match=r"lacks data_batch_3") as error:
        load_task("cifar10", {"root": str(root)})
    assert str(root) in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a pickle", r"cannot read CIFAR-10 batch"),
        (pickle.dumps({b"labels": [0]}), r"cannot read CIFAR-10 batch .*KeyError"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"must be uint8 \(N, 3072\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), r"b'labels' must be 2 ints"),
    ],
)
def test_cifar10_malformed_batch_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    root = write_cifar(tmp_path / "cifar")
    (root / "test_batch").write_bytes(content)
    task = load_task("cifar10", {"root": str(root)})
    with pytest.raises(TunerError, match=message) as error:
        task.load_data()
    assert str((root / "test_batch").resolve()) in str(error.value)


# --- user tasks ------------------------------------------------------------------------------------------


@pytest.fixture
def fixture_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The fixtures importable as top-level modules and as the package ``tuner_fixture_pkg``."""
    package = tmp_path / "tuner_fixture_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for path in FIXTURES.glob("*.py"):
        shutil.copy(path, package / path.name)
    monkeypatch.syspath_prepend(str(FIXTURES))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [name for name in sys.modules if name.startswith("tuner_fixture_pkg")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("user_task", "broken_task", "import_error_task"):
        monkeypatch.delitem(sys.modules, name, raising=False)


def fit_user_task(task) -> float:
    data = task.load_data()
    torch.manual_seed(0)
    model = task.build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        task.loss(model(data.train_inputs), data.train_targets).backward()
        optimizer.step()
    with torch.no_grad():
        return task.metrics(model(data.val_inputs), data.val_targets)[task.metric]


@pytest.mark.parametrize(
    "ref, base_dir",
    [
        (str(FIXTURES / "user_task.py") + ":make_task", None),
        (str(FIXTURES / "user_task.py"), None),  # the function defaults to make_task
        ("user_task.py:make_task", FIXTURES),
        ("fixtures/user_task.py:make_task", None),  # relative to the working directory
        ("user_task:make_task", None),
        ("tuner_fixture_pkg.user_task:make_task", None),
    ],
)
def test_user_task_by_path_and_by_module(ref: str, base_dir, fixture_modules, monkeypatch) -> None:
    monkeypatch.chdir(FIXTURES.parent)
    task = load_task(ref, {"hidden": 8}, base_dir=base_dir)
    assert (task.name, task.metric, task.default_batch_size) == ("blobs", "accuracy", 32)
    assert task.directions == {"loss": "minimize", "accuracy": "maximize"}
    assert fit_user_task(task) >= 0.9
    assert task.build_model()[0].out_features == 8


def test_user_task_without_simple_task(fixture_modules) -> None:
    task = load_task(f"{FIXTURES / 'user_task.py'}:make_plain_task")
    assert task.name == "plain" and fit_user_task(task) < 0.5


def test_user_task_unknown_option(fixture_modules) -> None:
    with pytest.raises(TunerError, match=r"do not fit make_task\(\).*'bogus'.*its parameters: hidden, n"):
        load_task(f"{FIXTURES / 'user_task.py'}:make_task", {"bogus": 1})


BROKEN = FIXTURES / "broken_task.py"
IMPORT_ERROR = FIXTURES / "import_error_task.py"


@pytest.mark.parametrize(
    "path, function, module, mark, message",
    [
        (BROKEN, "make_task", "broken_task", "make_task", r"error in make_task\(\) .*ZeroDivisionError: division by"),
        (BROKEN, "make_task_via_helper", "broken_task", "helper", r"\(in helper\): RuntimeError: boom in helper"),
        (IMPORT_ERROR, "make_task", "import_error_task", "import", r"error importing task file .*KeyError: 'depth'"),
    ],
)
@pytest.mark.parametrize("by", ["path", "module"])
def test_user_task_exception_names_file_and_line(path, function, module, mark, message, by, fixture_modules) -> None:
    ref = f"{path}:{function}" if by == "path" else f"{module}:{function}"
    with pytest.raises(TunerError, match=message) as error:
        load_task(ref)
    assert str(path.resolve()) in str(error.value)
    assert f"line {marked_line(path, mark)} " in str(error.value)


def test_user_task_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "syntax_task.py"  # written here, not in fixtures/, so linters never see invalid code
    path.write_text("import torch\n\n\ndef make_task(:\n    return None\n")
    with pytest.raises(TunerError, match=r"line 4: SyntaxError: .*def make_task\(:") as error:
        load_task(f"{path}:make_task")
    assert str(path.resolve()) in str(error.value)


@pytest.mark.parametrize(
    "function, message",
    [
        ("make_wrong_type", r"returned dict, which is not a Task: missing name, metric, .*build_model\(\)"),
        ("make_half_task", r"returned Half, which is not a Task: missing directions, default_batch_size, load_data"),
        ("make_inconsistent_task", r"inconsistent metrics: direction='minimize' disagrees with directions\['accuracy"),
    ],
)
def test_user_task_wrong_return_type_says_what_is_missing(function: str, message: str) -> None:
    with pytest.raises(TunerError, match=message) as error:
        load_task(f"{BROKEN}:{function}")
    assert str(BROKEN.resolve()) in str(error.value)


def test_user_task_missing_function_lists_the_callables_defined_there() -> None:
    message = r"defines no function 'make_tsak'; callables defined there: helper, make_half_task, make_inconsistent"
    with pytest.raises(TunerError, match=message) as error:
        load_task(f"{BROKEN}:make_tsak")
    assert str(BROKEN.resolve()) in str(error.value) and "SimpleTask" not in str(error.value)


def test_user_task_missing_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(TunerError, match=r"task file not found: 'tasks/nope.py'") as error:
        load_task("tasks/nope.py:make_task", base_dir=tmp_path)
    assert str(tmp_path / "tasks" / "nope.py") in str(error.value)


def test_user_task_missing_module() -> None:
    with pytest.raises(TunerError, match=r"cannot find task module 'no_such_pkg_xyz.tasks'"):
        load_task("no_such_pkg_xyz.tasks:make_task")


# --- SimpleTask and TaskData -----------------------------------------------------------------------------


def tiny_data() -> TaskData:
    return TaskData(torch.zeros(4, 2), torch.zeros(4), torch.zeros(2, 2), torch.zeros(2))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"direction": "up"}, r"direction of 'loss' must be 'maximize' or 'minimize', got 'up'"),
        (
            {"metric": "accuracy", "directions": {"accuracy": "minimize"}, "direction": "maximize"},
            r"direction='maximize' disagrees with directions\['accuracy'\]='minimize'",
        ),
        ({"loss_fn": "mse"}, r"loss_fn must be callable, got loss_fn='mse'"),
        ({"default_batch_size": 0}, r"default_batch_size must be >= 1 or None, got default_batch_size=0"),
        ({"data_fn": None}, r"data_fn is missing: a task needs data_fn, or train_loader_fn and val_loader_fn"),
        ({"data_fn": None, "train_loader_fn": list}, r"val_loader_fn is missing: .* got train_loader_fn only"),
        ({"data_fn": None, "val_loader_fn": list}, r"train_loader_fn is missing: .* got val_loader_fn only"),
        ({"train_loader_fn": list, "val_loader_fn": list}, r"give data_fn .* or train_loader_fn and val_loader_fn"),
        ({"data_fn": None, "train_loader_fn": "x", "val_loader_fn": list}, r"train_loader_fn must be callable or None"),
    ],
)
def test_simple_task_validates_at_construction(kwargs: dict, message: str) -> None:
    base = {"name": "t", "model_fn": lambda: None, "data_fn": tiny_data, "loss_fn": torch.nn.functional.mse_loss}
    with pytest.raises(ValueError, match=message):
        SimpleTask(**{**base, **kwargs})


def test_simple_task_adds_loss_and_caches_data() -> None:
    calls = []

    def data_fn():
        calls.append(1)
        return tuple(tiny_data().__dict__.values())

    task = SimpleTask(name="t", model_fn=lambda: None, data_fn=data_fn, loss_fn=torch.nn.functional.mse_loss)
    assert isinstance(task.load_data(), TaskData) and task.load_data() is task.load_data() and len(calls) == 1
    assert task.metrics(torch.ones(3), torch.zeros(3)) == {"loss": 1.0}
    assert task.directions == {"loss": "minimize"}


def test_a_simple_task_streams_from_its_loader_fns_and_has_no_in_memory_data() -> None:
    def train(batch_size, seed):
        return [(torch.zeros(batch_size, 2), torch.zeros(batch_size))]

    def val():
        return [(torch.zeros(3, 2), torch.zeros(3))]

    task = SimpleTask(
        name="s", model_fn=lambda: None, loss_fn=torch.nn.functional.mse_loss, train_loader_fn=train, val_loader_fn=val
    )
    loaders = loaders_of(task)
    assert loaders == Loaders(train, val) and loaders.train(4, 0)[0][0].shape == (4, 2)
    with pytest.raises(TunerError, match=r"task 's' streams its data from loaders: it has no in-memory data"):
        task.load_data()
    in_memory = SimpleTask(name="m", model_fn=lambda: None, data_fn=tiny_data, loss_fn=torch.nn.functional.mse_loss)
    assert loaders_of(in_memory) is None and loaders_of(object()) is None


def test_a_hand_written_loader_task_needs_no_load_data() -> None:
    class Streamed:
        name, metric, direction, directions, default_batch_size = "h", "loss", "minimize", {"loss": "minimize"}, 8

        def build_model(self): ...

        def loss(self, outputs, targets): ...

        def metrics(self, outputs, targets): ...

        def train_loader(self, batch_size, seed): ...

        def val_loader(self): ...

    task = check_task(Streamed(), "make_task()")
    assert loaders_of(task).train == task.train_loader
    del Streamed.val_loader
    with pytest.raises(TunerError, match=r"not a Task: missing load_data\(\)"):
        check_task(Streamed(), "make_task()")


def test_a_loader_task_file_loads(fixture_modules) -> None:
    task = load_task(f"{FIXTURES / 'loader_task.py'}:make_task", {"n_val": 10})
    inputs, targets = next(iter(loaders_of(task).train(16, 0)))
    assert inputs.shape == (16, 4) and targets.shape == (16,)
    assert sum(len(y) for _, y in loaders_of(task).val()) == 10


def test_task_data_checks_example_counts() -> None:
    with pytest.raises(ValueError, match="train_inputs and train_targets must have as many examples, got 4 and 3"):
        TaskData(torch.zeros(4, 2), torch.zeros(3), torch.zeros(2, 2), torch.zeros(2))


def test_import_is_cheap() -> None:
    code = "import sys, tuner.tasks; print(sorted({'torch', 'numpy', 'sklearn'} & set(sys.modules)))"
    root = str(ROOT)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
    )
    assert out.stdout.strip() == "[]"


def test_a_cifar_pickle_that_would_run_code_is_refused_not_run(tmp_path: Path) -> None:
    """A planted batch whose unpickling would call os.system: refused with the file named, the command never run."""
    import pickle

    root = write_cifar(tmp_path / "cifar-10-batches-py")
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / cifar.TRAIN_FILES[0]).write_bytes(pickle.dumps({b"data": Exploit(), b"labels": [0]}))
    with pytest.raises(TunerError, match=r"cannot read CIFAR-10 batch .*data_batch_1.*posix.system.*refused, not run"):
        load_task("cifar10", {"root": str(root)}).load_data()
    assert not marker.exists()
