"""The stacked fast path: every known layer, forward and backward by hand over N members, equals each member's own
module under autograd; unknown models are refused; the stacked losses and metrics equal the per-member ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

import tuner.train.stacked as stacked
from tuner.tasks import SimpleTask
from tuner.tasks.base import classification_metrics, cross_entropy, stacked_cross_entropy
from tuner.train.stacked import StackedNet, cross_entropy_with_grad

MEMBERS, BATCH = 3, 5


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.Tanh(),
        nn.Sequential(nn.Linear(8, 8, bias=False), nn.GELU(approximate="tanh")),
        nn.Identity(),
        nn.Linear(8, 7),
        nn.SiLU(),
        nn.Dropout(0.0),
        nn.Linear(7, 5),
        nn.Sigmoid(),
        nn.Linear(5, 4),
        nn.LeakyReLU(0.1),
        nn.GELU(),
        nn.Linear(4, 3),
    )


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 6, 3, padding="same", groups=2, bias=False),
        nn.Tanh(),
        nn.MaxPool2d(3, stride=1),
        nn.Conv2d(6, 4, 2, stride=2, dilation=1, padding="valid"),
        nn.ReLU(),
        nn.AvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    )


def _pools() -> nn.Module:
    return nn.Sequential(
        nn.MaxPool2d(2, stride=2, padding=1),
        nn.Conv2d(2, 3, 3, dilation=2, padding=2),
        nn.ReLU(),
        nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(1),
        nn.Linear(3, 2),
    )


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp": (_mlp, (6,)),
    "sequence-mlp": (lambda: nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2)), (7, 6)),  # (T, features)
    "bare-linear": (lambda: nn.Linear(6, 1, bias=False), (6,)),
    "activation-first": (lambda: nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Tanh(), nn.Linear(6, 2), nn.ReLU()), (2, 3)),
    "cnn": (_cnn, (2, 8, 8)),
    "pools": (_pools, (2, 9, 9)),
}


def _stack(make: Callable[[], nn.Module]) -> tuple[list[nn.Module], dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    models = [make() for _ in range(MEMBERS)]
    params, _ = stack_module_state(models)
    return models, {name: p.detach() for name, p in params.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_and_backward_equal_each_member_under_autograd(case: str) -> None:
    make, shape = CASES[case]
    models, params = _stack(make)
    net = StackedNet.of(models[0])
    assert net is not None
    inputs = torch.randn(MEMBERS, BATCH, *shape)
    given = inputs.clone()
    outputs, tape = net.forward_train(params, inputs)
    torch.testing.assert_close(net.forward(params, inputs), outputs)
    grad_outputs = torch.randn_like(outputs)
    grads = net.backward(params, tape, grad_outputs)
    assert torch.equal(inputs, given), "in-place activations must never write into the inputs"
    assert set(grads) == set(params)
    for i, model in enumerate(models):
        expected = model(inputs[i])
        torch.testing.assert_close(outputs[i], expected, rtol=1e-5, atol=1e-6)
        expected_grads = torch.autograd.grad((expected * grad_outputs[i]).sum(), list(model.parameters()))
        for (name, _), want in zip(model.named_parameters(), expected_grads):
            torch.testing.assert_close(grads[name][i], want, rtol=1e-5, atol=1e-6, msg=f"{case}: {name}")


@pytest.mark.parametrize("piece_bytes", [stacked.PIECE_BYTES, 1])
def test_a_shared_batch_may_be_expanded_and_run_in_pieces(piece_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stacked, "PIECE_BYTES", piece_bytes)  # 1: one example at a time
    models, params = _stack(_cnn)
    net = StackedNet.of(models[0])
    batch = torch.randn(BATCH, 2, 8, 8)
    net.forward_train(params, batch.expand(MEMBERS, *batch.shape))  # learns the widest activation
    outputs = net.forward(params, batch.expand(MEMBERS, *batch.shape))
    for i, model in enumerate(models):
        torch.testing.assert_close(outputs[i], model(batch), rtol=1e-5, atol=1e-6)


class _Custom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


class _SequentialWithForward(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1


def _hooked() -> nn.Module:
    model = nn.Sequential(nn.Linear(2, 2))
    model[0].register_forward_hook(lambda module, args, output: output * 2)
    return model


@pytest.mark.parametrize(
    "model",
    [
        nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)),
        nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)),
        nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5)),
        nn.Sequential(nn.Linear(2, 2), _Custom()),
        _SequentialWithForward(nn.Linear(2, 2)),
        nn.Sequential(nn.Conv2d(1, 1, 3, padding_mode="reflect", padding=1)),
        nn.Sequential(nn.Conv2d(1, 1, 2, padding="same")),  # asymmetric padding
        nn.Sequential(nn.MaxPool2d(2, return_indices=True)),
        nn.Sequential(nn.Flatten(0)),
        _hooked(),
    ],
    ids=lambda m: type(m).__name__ + ":" + "/".join(type(c).__name__ for c in m.children()),
)
def test_unknown_layers_and_hooks_are_refused(model: nn.Module) -> None:
    assert StackedNet.of(model) is None


def test_cross_entropy_by_hand_is_autograd_bit_for_bit_ignored_targets_included() -> None:
    torch.manual_seed(0)
    for logits_shape in ((MEMBERS, BATCH, 4), (MEMBERS, BATCH, 3, 4)):
        logits, targets = torch.randn(*logits_shape), torch.randint(0, 4, logits_shape[:-1])
        for ignore in (False, True):
            if ignore:
                targets.view(-1)[::3] = -100
            leaf = logits.clone().requires_grad_(True)
            want = stacked_cross_entropy(leaf, targets)
            (want_grad,) = torch.autograd.grad(want.sum(), leaf)
            got, got_grad = cross_entropy_with_grad(logits, targets)
            assert torch.equal(got, want) and torch.equal(got_grad, want_grad)  # autograd's own kernels


def _task(loss_fn: Callable, metrics_fn: Callable | None = None) -> SimpleTask:
    return SimpleTask(name="t", model_fn=lambda: None, data_fn=lambda: None, loss_fn=loss_fn, metrics_fn=metrics_fn)


@pytest.mark.parametrize(
    "loss_fn, outputs, targets",
    [
        (cross_entropy, torch.randn(MEMBERS, BATCH, 4), torch.randint(0, 4, (MEMBERS, BATCH))),
        (cross_entropy, torch.randn(MEMBERS, BATCH, 3, 4), torch.randint(0, 4, (MEMBERS, BATCH, 3))),
        (F.cross_entropy, torch.randn(MEMBERS, BATCH, 4), torch.randint(0, 4, (MEMBERS, BATCH))),
        (
            F.cross_entropy,
            torch.randn(MEMBERS, BATCH, 4, 3),
            torch.randint(0, 4, (MEMBERS, BATCH, 3)),
        ),  # classes on dim 1
        (F.cross_entropy, torch.randn(MEMBERS, BATCH, 4), torch.softmax(torch.randn(MEMBERS, BATCH, 4), -1)),
        (F.mse_loss, torch.randn(MEMBERS, BATCH, 2), torch.randn(MEMBERS, BATCH, 2)),
    ],
    ids=["ce", "ce-sequence", "torch-ce", "torch-ce-2d", "torch-ce-probabilities", "mse"],
)
def test_population_loss_hook_equals_each_member_loss(
    loss_fn: Callable, outputs: torch.Tensor, targets: torch.Tensor
) -> None:
    hook = _task(loss_fn).population_loss
    assert hook is not None
    expected = torch.stack([loss_fn(outputs[i], targets[i]) for i in range(MEMBERS)])
    torch.testing.assert_close(hook(outputs, targets), expected, rtol=1e-6, atol=1e-7)


def test_population_metrics_hook_equals_each_member_metrics() -> None:
    outputs, targets = torch.randn(MEMBERS, 40, 4), torch.randint(0, 4, (MEMBERS, 40))
    task = _task(cross_entropy, classification_metrics)
    got = task.population_metrics(outputs, targets)
    for i in range(MEMBERS):
        expected = task.metrics(outputs[i], targets[i])
        assert {name: float(values[i]) for name, values in got.items()} == pytest.approx(expected, rel=1e-6)
    loss_only = _task(F.mse_loss).population_metrics(outputs, outputs * 0.5)
    assert float(loss_only["loss"][1]) == pytest.approx(float(F.mse_loss(outputs[1], outputs[1] * 0.5)))


def test_unknown_losses_and_metrics_have_no_hook() -> None:
    def my_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs - targets).abs().mean()

    assert _task(my_loss).population_loss is None and _task(my_loss).population_metrics is None
    assert _task(cross_entropy, lambda out, y: {"top1": 0.0}).population_metrics is None
