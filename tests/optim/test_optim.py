"""The optimizer catalog: every entry trains, maps onto its torch class exactly, and refuses bad input."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tuner.errors import TunerError, UnknownNameError
from tuner.optim import OPTIMIZERS, PARAM_RULES, OptimizerSpec, build_optimizer, clip_gradients, resolve_params
from tuner.optim.build import SPLITS, resolve_class
from tuner.recipe import Recipe, Switch
from tuner.space import Float

NAMES = list(OPTIMIZERS)
COMPANION_NAMES = [name for name, spec in OPTIMIZERS.items() if spec.companion]
SCHEDULE_FREE = [name for name, spec in OPTIMIZERS.items() if spec.schedule_free]


# ----------------------------------------------------------------------------- a tiny fixed problem


class TinyNet(torch.nn.Module):
    """Embedding (sparse on request) -> Linear -> tanh -> Linear: 2-D matrices, 1-D biases and an embedding."""

    def __init__(self, sparse: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(16, 4, sparse=sparse)
        self.hidden = torch.nn.Linear(12, 16)
        self.out = torch.nn.Linear(16, 1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(self.emb(tokens).flatten(1)))).squeeze(-1)

    def touch_every_row(self) -> torch.Tensor:
        """A term that puts every embedding row into the (sparse) gradient."""
        return self.emb(torch.arange(self.emb.num_embeddings)).sum()

    def l2(self, weight_decay: float) -> torch.Tensor:
        """``wd/2 * |p|^2`` over all parameters, the embedding through a lookup of every row."""
        dense = sum((p * p).sum() for name, p in self.named_parameters() if not name.startswith("emb."))
        rows = self.emb(torch.arange(self.emb.num_embeddings))
        return 0.5 * weight_decay * (dense + (rows * rows).sum())


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 16, (128, 3), generator=generator)
    table = torch.randn(16, generator=generator)
    target = table[tokens].sum(1) + 0.5 * table[tokens[:, 0]] * table[tokens[:, 1]]
    return tokens, (target - target.mean()) / target.std()


TOKENS, TARGET = make_data()


def make_model(name: str, seed: int = 0) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(sparse=OPTIMIZERS[name].needs_sparse)


def mse_closure(model: TinyNet, loss_fn: Callable[[], torch.Tensor] | None = None) -> Callable[[], torch.Tensor]:
    def closure() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = loss_fn() if loss_fn else F.mse_loss(model(TOKENS), TARGET)
        loss.backward()
        return loss.detach()

    return closure


def zero_loss(model: TinyNet) -> Callable[[], torch.Tensor]:
    """A closure whose gradients are all exactly zero (sparse zeros for a sparse embedding)."""
    return mse_closure(model, lambda: 0.0 * (model(TOKENS).sum() + model.touch_every_row()))


def full_loss(model: TinyNet) -> float:
    with torch.no_grad():
        return float(F.mse_loss(model(TOKENS), TARGET))


def midpoint_lr(name: str) -> float:
    return OPTIMIZERS[name].lr.grid(3)[1]


def recipe_for(name: str, **changes: Any) -> Recipe:
    return Recipe(**{"optimizer": name, "lr": midpoint_lr(name), "batch_size": None, **changes})


def build(model: torch.nn.Module, recipe: Recipe, total_steps: int = 100, full_batch: bool = True):
    return build_optimizer(model, recipe, total_steps, full_batch=full_batch)


def snapshot(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


class MidpointTrial:
    """A stand-in for ``optuna.Trial`` that answers the middle of every range (log ranges: geometric)."""

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return math.sqrt(low * high) if log else (low + high) / 2

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return int(round(self.suggest_float(name, low, high, log=log)))

    def suggest_categorical(self, name: str, choices: list) -> Any:
        return choices[len(choices) // 2]


# ----------------------------------------------------------------------------- the table itself


def test_the_catalog_holds_exactly_the_documented_optimizers() -> None:
    assert set(OPTIMIZERS) == {
        "sgd",
        "momentum",
        "nesterov",
        "adagrad",
        "rmsprop",
        "adadelta",
        "adam",
        "adamw",
        "nadam",
        "radam",
        "adamax",
        "adafactor",
        "muon",
        "schedulefree_adamw",
        "schedulefree_sgd",
        "lbfgs",
        "sparse_adam",
    }


@pytest.mark.parametrize("name", NAMES)
def test_spec_is_consistent(name: str) -> None:
    spec = OPTIMIZERS[name]
    assert spec.name == name and spec.description and "\n" not in spec.description
    assert isinstance(spec.lr, Float) and spec.lr.log and spec.lr.low > 0
    assert set(spec.space) <= set(spec.valid_params())
    assert spec.split in SPLITS
    assert spec.companion is None or spec.companion in OPTIMIZERS
    assert set(spec.companion_shares) <= set(spec.defaults)
    assert set(spec.native_weight_decay) <= {"coupled", "decoupled"}
    assert isinstance(resolve_class(spec.torch_class), type)
    assert resolve_params(spec, {}) == dict(spec.defaults)  # every default passes its own rule


@pytest.mark.parametrize("name", NAMES)
def test_every_hyperparameter_has_a_validity_rule(name: str) -> None:
    spec = OPTIMIZERS[name]
    assert set(spec.defaults) <= set(PARAM_RULES)


def test_a_space_key_without_a_default_is_refused() -> None:
    with pytest.raises(ValueError, match=r"space keys \['beta3'\] have no default"):
        replace(OPTIMIZERS["adam"], space={"beta3": Float(0.1, 0.2)})


@pytest.mark.parametrize("name", NAMES)
def test_space_samples_with_a_real_optuna_trial_build(name: str) -> None:
    optuna = pytest.importorskip("optuna")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    spec = OPTIMIZERS[name]
    for _ in range(3):
        trial = study.ask()
        params = spec.suggest_params(trial, prefix=f"{name}.")
        assert set(params) == set(spec.space)
        build(make_model(name), recipe_for(name, optimizer_params=params))
        study.tell(trial, 0.0)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("source", ["defaults", "midpoint"])
@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_lowers_the_loss(name: str, source: str) -> None:
    params = {"defaults": {}, "midpoint": OPTIMIZERS[name].suggest_params(MidpointTrial())}[source]
    model = make_model(name)
    optimizer = build(model, recipe_for(name, optimizer_params=params))
    before = full_loss(model)
    losses = [float(optimizer.step(step, 1.0, mse_closure(model))) for step in range(100)]
    optimizer.eval()
    after = full_loss(model)
    assert losses[0] == pytest.approx(before)
    assert math.isfinite(after) and after < 0.95 * before, (before, after)


def test_sparse_adam_moves_only_the_rows_seen() -> None:
    model = make_model("sparse_adam")
    optimizer = build(model, recipe_for("sparse_adam"))
    before = model.emb.weight.detach().clone()
    seen = torch.tensor([1, 2, 3])
    optimizer.step(0, 1.0, mse_closure(model, lambda: model.emb(seen).sum()))
    moved = (model.emb.weight != before).any(dim=1)
    assert moved.nonzero().flatten().tolist() == [1, 2, 3]


# ----------------------------------------------------------------------------- equality with hand-built torch


def _muon_parts(m: TinyNet) -> tuple[list, list]:
    return [m.hidden.weight, m.out.weight], [m.emb.weight, m.hidden.bias, m.out.bias]


def _sparse_parts(m: TinyNet) -> tuple[list, list]:
    return [m.emb.weight], [m.hidden.weight, m.hidden.bias, m.out.weight, m.out.bias]


def _trained_schedule_free(cls: type, m: TinyNet, lr: float, **kwargs: Any) -> list:
    optimizer = cls(m.parameters(), lr=lr, **kwargs)
    optimizer.train()
    return [optimizer]


def _schedulefree(name: str) -> type:
    return resolve_class(f"schedulefree.{name}")


O = torch.optim
COUPLED = {"weight_decay": 0.01, "weight_decay_mode": "coupled"}
DECOUPLED = {"weight_decay": 0.01, "weight_decay_mode": "decoupled"}
B = {"beta1": 0.85, "beta2": 0.995, "eps": 1e-7}

# name -> (optimizer_params, recipe changes, the same optimizer built by hand from (model, lr))
REFERENCES: dict[str, tuple[dict, dict, Callable[[TinyNet, float], list]]] = {
    "sgd": ({}, COUPLED, lambda m, lr: [O.SGD(m.parameters(), lr=lr, weight_decay=0.01)]),
    "momentum": (
        {"momentum": 0.8, "dampening": 0.1},
        COUPLED,
        lambda m, lr: [O.SGD(m.parameters(), lr=lr, momentum=0.8, dampening=0.1, weight_decay=0.01)],
    ),
    "nesterov": (
        {"momentum": 0.7},
        COUPLED,
        lambda m, lr: [O.SGD(m.parameters(), lr=lr, momentum=0.7, nesterov=True, weight_decay=0.01)],
    ),
    "adagrad": (
        {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "eps": 1e-8},
        COUPLED,
        lambda m, lr: [
            O.Adagrad(m.parameters(), lr=lr, lr_decay=0.01, initial_accumulator_value=0.1, eps=1e-8, weight_decay=0.01)
        ],
    ),
    "rmsprop": (
        {"alpha": 0.9, "eps": 1e-6, "momentum": 0.5, "centered": True},
        COUPLED,
        lambda m, lr: [
            O.RMSprop(m.parameters(), lr=lr, alpha=0.9, eps=1e-6, momentum=0.5, centered=True, weight_decay=0.01)
        ],
    ),
    "adadelta": (
        {"rho": 0.8, "eps": 1e-5},
        COUPLED,
        lambda m, lr: [O.Adadelta(m.parameters(), lr=lr, rho=0.8, eps=1e-5, weight_decay=0.01)],
    ),
    "adam": (
        {**B, "amsgrad": True},
        DECOUPLED,
        lambda m, lr: [
            O.Adam(
                m.parameters(),
                lr=lr,
                betas=(0.85, 0.995),
                eps=1e-7,
                amsgrad=True,
                weight_decay=0.01,
                decoupled_weight_decay=True,
            )
        ],
    ),
    "adamw": (
        B,
        DECOUPLED,
        lambda m, lr: [O.AdamW(m.parameters(), lr=lr, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.01)],
    ),
    "nadam": (
        {**B, "momentum_decay": 0.002},
        COUPLED,
        lambda m, lr: [
            O.NAdam(m.parameters(), lr=lr, betas=(0.85, 0.995), eps=1e-7, momentum_decay=0.002, weight_decay=0.01)
        ],
    ),
    "radam": (
        B,
        DECOUPLED,
        lambda m, lr: [
            O.RAdam(
                m.parameters(), lr=lr, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.01, decoupled_weight_decay=True
            )
        ],
    ),
    "adamax": (
        B,
        COUPLED,
        lambda m, lr: [O.Adamax(m.parameters(), lr=lr, betas=(0.85, 0.995), eps=1e-7, weight_decay=0.01)],
    ),
    "adafactor": (
        {"beta2_decay": -0.6, "eps1": 1e-20, "eps2": 1e-2, "d": 2.0},
        DECOUPLED,
        lambda m, lr: [
            O.Adafactor(m.parameters(), lr=lr, beta2_decay=-0.6, eps=(1e-20, 1e-2), d=2.0, weight_decay=0.01)
        ],
    ),
    "muon": (
        {
            "momentum": 0.9,
            "nesterov": False,
            "ns_steps": 4,
            "eps": 1e-6,
            "adjust_lr_fn": "original",
            "adamw_lr_ratio": 0.5,
            "adamw_beta1": 0.8,
            "adamw_eps": 1e-6,
        },
        DECOUPLED,
        lambda m, lr: [
            O.Muon(
                _muon_parts(m)[0],
                lr=lr,
                momentum=0.9,
                nesterov=False,
                ns_steps=4,
                eps=1e-6,
                adjust_lr_fn="original",
                weight_decay=0.01,
            ),
            O.AdamW(_muon_parts(m)[1], lr=lr * 0.5, betas=(0.8, 0.999), eps=1e-6, weight_decay=0.01),
        ],
    ),
    "schedulefree_adamw": (
        {**B, "warmup_steps": 3, "r": 0.5, "weight_lr_power": 1.0},
        DECOUPLED,
        lambda m, lr: _trained_schedule_free(
            _schedulefree("AdamWScheduleFree"),
            m,
            lr,
            betas=(0.85, 0.995),
            eps=1e-7,
            warmup_steps=3,
            r=0.5,
            weight_lr_power=1.0,
            weight_decay=0.01,
        ),
    ),
    "schedulefree_sgd": (
        {"momentum": 0.8, "warmup_steps": 2},
        COUPLED,
        lambda m, lr: _trained_schedule_free(
            _schedulefree("SGDScheduleFree"), m, lr, momentum=0.8, warmup_steps=2, weight_decay=0.01
        ),
    ),
    "lbfgs": (
        {"max_iter": 5, "history_size": 7, "line_search_fn": None},
        {},
        lambda m, lr: [O.LBFGS(m.parameters(), lr=lr, max_iter=5, history_size=7, line_search_fn=None)],
    ),
    "sparse_adam": (
        {**B, "adam_lr_ratio": 2.0, "adam_amsgrad": True},
        {},
        lambda m, lr: [
            O.SparseAdam(_sparse_parts(m)[0], lr=lr, betas=(0.85, 0.995), eps=1e-7),
            O.Adam(_sparse_parts(m)[1], lr=lr * 2.0, betas=(0.85, 0.995), eps=1e-7, amsgrad=True),
        ],
    ),
}


def _reference_step(optimizers: list, closure: Callable[[], torch.Tensor], needs_closure: bool) -> None:
    if needs_closure:
        optimizers[0].step(closure)
        return
    closure()
    for optimizer in optimizers:
        optimizer.step()


def test_every_optimizer_has_a_reference() -> None:
    assert set(REFERENCES) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", NAMES)
def test_equals_the_torch_class_built_by_hand(name: str) -> None:
    params, changes, reference = REFERENCES[name]
    recipe = recipe_for(name, optimizer_params=params, **changes)
    ours, theirs = make_model(name), make_model(name)
    managed = build(ours, recipe)
    by_hand = reference(theirs, recipe.lr)
    assert [type(o) for o in managed.torch_optimizers] == [type(o) for o in by_hand]
    for step in range(20):
        managed.step(step, 1.0, mse_closure(ours))
        _reference_step(by_hand, mse_closure(theirs), OPTIMIZERS[name].needs_closure)
    for mine, expected in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(mine, expected, rtol=0, atol=1e-7)
    assert not torch.equal(snapshot(ours)[1], snapshot(make_model(name))[1])  # it did train


# ----------------------------------------------------------------------------- learning rate and switch


@pytest.mark.parametrize("name", NAMES)
def test_step_sets_lr_to_peak_times_multiplier(name: str) -> None:
    model = make_model(name)
    recipe = recipe_for(name)
    optimizer = build(model, recipe)
    for step, multiplier in enumerate([0.25, 1.0, 0.5]):
        optimizer.step(step, multiplier, mse_closure(model))
        assert optimizer.lr == pytest.approx(recipe.lr * multiplier, rel=1e-12)
        groups = [group for o in optimizer.torch_optimizers for group in o.param_groups]
        assert [g["lr"] for g in groups] == pytest.approx([recipe.lr * multiplier] * len(groups), rel=1e-12)


@pytest.mark.parametrize("name", COMPANION_NAMES)
def test_companion_optimizer_runs_at_its_lr_ratio(name: str) -> None:
    spec = OPTIMIZERS[name]
    model = make_model(name)
    recipe = recipe_for(name, optimizer_params={spec.companion_lr_ratio_key: 0.5})
    optimizer = build(model, recipe)
    optimizer.step(0, 0.1, mse_closure(model))
    main, companion = optimizer.torch_optimizers
    assert main.param_groups[0]["lr"] == pytest.approx(recipe.lr * 0.1)
    assert companion.param_groups[0]["lr"] == pytest.approx(recipe.lr * 0.1 * 0.5)
    assert type(companion) is resolve_class(OPTIMIZERS[spec.companion].torch_class)
    owned = {id(p) for o in optimizer.torch_optimizers for g in o.param_groups for p in g["params"]}
    assert owned == {id(p) for p in model.parameters()}


def test_sgd_step_is_lr_times_multiplier_times_gradient() -> None:
    model = make_model("sgd")
    optimizer = build(model, recipe_for("sgd", lr=0.2))
    before = snapshot(model)
    optimizer.step(0, 0.5, mse_closure(model))
    for p, old in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), old - 0.1 * p.grad, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    "at_fraction, total_steps, switch_step", [(0.3, 10, 3), (0.55, 10, 6), (0.5, 7, 4), (0.01, 20, 0)]
)
def test_switch_happens_at_the_rounded_step_with_its_own_lr(
    at_fraction: float, total_steps: int, switch_step: int
) -> None:
    model = make_model("adam")
    recipe = recipe_for(
        "adam", lr=1e-3, switch=Switch("momentum", at_fraction, lr=0.05, optimizer_params={"momentum": 0.5})
    )
    optimizer = build(model, recipe, total_steps=total_steps)
    first, second = optimizer.torch_optimizers
    assert optimizer.switch_step == switch_step
    for step in range(total_steps):
        optimizer.step(step, 0.5, mse_closure(model))
        switched = step >= switch_step
        assert optimizer.optimizer_name == ("momentum" if switched else "adam")
        assert optimizer.lr == pytest.approx((0.05 if switched else 1e-3) * 0.5)
        assert optimizer.active_optimizers == [second if switched else first]
        assert len(second.state) == (len(list(model.parameters())) if switched else 0)  # starts fresh
        assert second.param_groups[0]["momentum"] == 0.5


def test_switch_leaves_the_first_optimizer_untouched() -> None:
    model = make_model("adam")
    optimizer = build(model, recipe_for("adam", switch=Switch("sgd", 0.5, lr=0.01)), total_steps=4)
    first = optimizer.torch_optimizers[0]
    for step in range(2):
        optimizer.step(step, 1.0, mse_closure(model))
    steps_before = [float(s["step"]) for s in first.state.values()]
    for step in range(2, 4):
        optimizer.step(step, 1.0, mse_closure(model))
    assert [float(s["step"]) for s in first.state.values()] == steps_before == [2.0] * len(steps_before)


def test_switch_from_schedule_free_hands_over_the_averaged_weights() -> None:
    model = make_model("schedulefree_sgd")
    optimizer = build(model, recipe_for("schedulefree_sgd", switch=Switch("sgd", 0.5, lr=0.01)), total_steps=10)
    for step in range(5):
        optimizer.step(step, 1.0, mse_closure(model))
    optimizer.eval()
    x = snapshot(model)
    optimizer.train()
    sgd_closure = mse_closure(model)
    before_update: list[torch.Tensor] = []

    def recording_closure() -> torch.Tensor:
        before_update.extend(snapshot(model))
        return sgd_closure()

    optimizer.step(5, 1.0, recording_closure)
    for got, expected in zip(before_update, x):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_train_and_eval_move_weights_only_for_schedule_free(name: str) -> None:
    model = make_model(name)
    optimizer = build(model, recipe_for(name))
    for step in range(3):
        optimizer.step(step, 1.0, mse_closure(model))
    y = snapshot(model)
    optimizer.eval()
    x = snapshot(model)
    optimizer.train()
    moved = any(not torch.equal(a, b) for a, b in zip(x, y))
    assert moved == OPTIMIZERS[name].schedule_free
    for back, original in zip(model.parameters(), y):
        torch.testing.assert_close(back.detach(), original, rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- weight decay


@pytest.mark.parametrize("name", NAMES)
def test_decoupled_decay_with_zero_gradient_shrinks_weights(name: str) -> None:
    model = make_model(name)
    optimizer = build(model, recipe_for(name, lr=0.1, weight_decay=0.2, weight_decay_mode="decoupled"))
    before = snapshot(model)
    optimizer.step(0, 0.5, zero_loss(model))
    for p, old in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), old * (1 - 0.05 * 0.2), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_coupled_decay_equals_an_l2_term_in_the_loss(name: str) -> None:
    decayed, plain = make_model(name), make_model(name)
    with_decay = build(decayed, recipe_for(name, lr=0.05, weight_decay=0.1, weight_decay_mode="coupled"))
    with_l2 = build(plain, recipe_for(name, lr=0.05))
    for step in range(3):
        with_decay.step(step, 1.0, zero_loss(decayed))
        with_l2.step(step, 1.0, mse_closure(plain, lambda: plain.l2(0.1)))
    for a, b in zip(decayed.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(snapshot(decayed)[1], snapshot(make_model(name))[1])


# name, mode -> expected weights after one step with zero loss gradient at lr, wd (closed forms)
CLOSED_FORMS: dict[tuple[str, str], Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    ("sgd", "coupled"): lambda p, lr, wd: p - lr * wd * p,
    ("sgd", "decoupled"): lambda p, lr, wd: p * (1 - lr * wd),
    ("adam", "coupled"): lambda p, lr, wd: p - lr * torch.sign(p),  # Adam normalizes the L2 gradient away
    ("adam", "decoupled"): lambda p, lr, wd: p * (1 - lr * wd),
}


@pytest.mark.parametrize("name, mode", list(CLOSED_FORMS))
def test_one_step_weight_decay_closed_form(name: str, mode: str) -> None:
    model = make_model(name)
    optimizer = build(model, recipe_for(name, lr=0.01, weight_decay=0.3, weight_decay_mode=mode))
    before = snapshot(model)
    optimizer.step(0, 1.0, zero_loss(model))
    for p, old in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), CLOSED_FORMS[name, mode](old, 0.01, 0.3), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- clipping


def _gradients(sparse: bool = False, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> TinyNet:
    model = make_model("sparse_adam" if sparse else "sgd").to(dtype)
    model.zero_grad()
    (scale * F.mse_loss(model(TOKENS), TARGET.to(dtype))).backward()
    return model


def _dense(grad: torch.Tensor) -> torch.Tensor:
    return grad.to_dense() if grad.is_sparse else grad


@pytest.mark.parametrize("clip_norm", [1e-3, 0.1, 1e3])
def test_clip_by_norm_matches_torch(clip_norm: float) -> None:
    ours, theirs = _gradients(scale=10.0), _gradients(scale=10.0)
    total = clip_gradients(ours.parameters(), clip_norm, None)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), clip_norm)
    assert total == pytest.approx(float(expected), rel=1e-6)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ours.parameters()]))
    assert float(norm) == pytest.approx(min(clip_norm, total), rel=1e-4)


def test_clip_by_value_then_norm() -> None:
    model = _gradients(scale=10.0)
    raw = [p.grad.clone() for p in model.parameters()]
    total = clip_gradients(model.parameters(), 0.5, 0.01)
    clamped = [g.clamp(-0.01, 0.01) for g in raw]
    expected_total = torch.linalg.vector_norm(torch.cat([g.flatten() for g in clamped]))
    assert total == pytest.approx(float(expected_total), rel=1e-6)
    factor = min(1.0, 0.5 / (float(expected_total) + 1e-6))
    for p, g in zip(model.parameters(), clamped):
        torch.testing.assert_close(p.grad, g * factor, rtol=1e-6, atol=1e-9)
    assert max(float(p.grad.abs().max()) for p in model.parameters()) <= 0.01


def test_clip_handles_sparse_gradients_like_their_dense_form() -> None:
    # float64: the sparse and dense embedding backward sum rows in different orders, which in float32 differs by a
    # few ulps depending on the CPU's vector units (1.5e-9 on one Xeon); the comparison is of the clipping, not that
    sparse = _gradients(sparse=True, scale=10.0, dtype=torch.float64)
    dense = _gradients(sparse=False, scale=10.0, dtype=torch.float64)
    assert sparse.emb.weight.grad.is_sparse
    assert clip_gradients(sparse.parameters(), 0.2, 0.05) == pytest.approx(
        clip_gradients(dense.parameters(), 0.2, 0.05)
    )
    for a, b in zip(sparse.parameters(), dense.parameters()):
        torch.testing.assert_close(_dense(a.grad), b.grad, rtol=1e-6, atol=1e-9)


def test_no_clipping_leaves_gradients_alone() -> None:
    model = _gradients(scale=10.0)
    raw = [p.grad.clone() for p in model.parameters()]
    assert clip_gradients(model.parameters(), None, None) is None
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), raw))


@pytest.mark.parametrize(
    "clip_norm, clip_value, match", [(0.0, None, "clip_norm=0.0"), (None, -1.0, "clip_value=-1.0")]
)
def test_clip_refuses_non_positive_limits(clip_norm: float | None, clip_value: float | None, match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        clip_gradients(_gradients().parameters(), clip_norm, clip_value)


def test_managed_clip_uses_the_recipe() -> None:
    model = _gradients(scale=10.0)
    optimizer = build(model, recipe_for("sgd", clip_norm=0.1))
    total = optimizer.clip()
    assert total > 0.1
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert float(norm) == pytest.approx(0.1, rel=1e-4)


# ----------------------------------------------------------------------------- refusals


def test_lbfgs_refuses_mini_batches() -> None:
    with pytest.raises(TunerError, match=re.escape("lbfgs needs a full-batch task (batch_size: null)")):
        build(make_model("lbfgs"), recipe_for("lbfgs", batch_size=32), full_batch=False)


def test_switch_to_lbfgs_refuses_mini_batches_too() -> None:
    with pytest.raises(TunerError, match="lbfgs needs a full-batch task"):
        build(make_model("adam"), recipe_for("adam", switch=Switch("lbfgs", 0.5, lr=1.0)), full_batch=False)


def test_sparse_adam_refuses_a_model_without_sparse_embedding() -> None:
    with pytest.raises(TunerError, match=re.escape("sparse_adam needs a model with a sparse embedding")):
        build(TinyNet(sparse=False), recipe_for("sparse_adam"))


def test_muon_refuses_a_model_without_weight_matrices() -> None:
    with pytest.raises(TunerError, match="muon needs 2-D weight matrices"):
        build(torch.nn.Sequential(torch.nn.LayerNorm(4)), recipe_for("muon"))


@pytest.mark.parametrize("where", ["optimizer", "switch"])
def test_unknown_optimizer_lists_the_valid_ones(where: str) -> None:
    recipes = {
        "optimizer": lambda: recipe_for("sgd", optimizer="adamm"),
        "switch": lambda: recipe_for("sgd", switch=Switch("adamm", 0.5, lr=0.1)),
    }
    with pytest.raises(UnknownNameError) as raised:
        build(make_model("sgd"), recipes[where]())
    assert "unknown optimizer 'adamm'" in str(raised.value)
    assert all(name in str(raised.value) for name in OPTIMIZERS)


@pytest.mark.parametrize(
    "name, key",
    [("adam", "momentum"), ("sgd", "momentum"), ("muon", "adamw_momentum"), ("sparse_adam", "adamw_lr_ratio")],
)
def test_unknown_param_key_names_key_and_valid_ones(name: str, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown parameter {key!r} for optimizer {name!r}")) as raised:
        build(make_model(name), recipe_for(name, optimizer_params={key: 0.5}))
    assert str(raised.value).endswith("valid parameters: " + ", ".join(OPTIMIZERS[name].valid_params()))


INVALID = [
    ("adam", "beta1", 1.0),
    ("adam", "beta2", -0.1),
    ("adamw", "beta2", 1.5),
    ("adam", "eps", 0.0),
    ("nadam", "eps", -1e-8),
    ("momentum", "momentum", 1.0),
    ("nesterov", "momentum", -0.5),
    ("momentum", "dampening", 2.0),
    ("rmsprop", "alpha", 1.0),
    ("rmsprop", "centered", "yes"),
    ("adadelta", "rho", 1.1),
    ("adagrad", "lr_decay", -1.0),
    ("adagrad", "initial_accumulator_value", -0.1),
    ("nadam", "momentum_decay", -0.1),
    ("adafactor", "beta2_decay", 0.5),
    ("adafactor", "eps1", 0.0),
    ("adafactor", "d", 0.0),
    ("muon", "ns_steps", 0),
    ("muon", "nesterov", 1),
    ("muon", "adjust_lr_fn", "rms"),
    ("muon", "adamw_beta1", 1.0),
    ("muon", "adamw_lr_ratio", 0.0),
    ("schedulefree_adamw", "warmup_steps", -1),
    ("lbfgs", "history_size", 2.5),
    ("lbfgs", "line_search_fn", "armijo"),
    ("sparse_adam", "adam_lr_ratio", -1.0),
    ("adam", "beta1", "0.9"),
]


@pytest.mark.parametrize("name, key, value", INVALID)
def test_invalid_hyperparameter_names_parameter_and_value(name: str, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"{key} must be ") + ".*" + re.escape(f"got {key}={value!r}")):
        build(make_model(name), recipe_for(name, optimizer_params={key: value}))


def test_invalid_switch_hyperparameter_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("beta1 must be a number in [0, 1), got beta1=1.0")):
        build(make_model("sgd"), recipe_for("sgd", switch=Switch("adam", 0.5, lr=0.1, optimizer_params={"beta1": 1.0})))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Recipe(optimizer="adam", lr=-1e-3),
        lambda: Recipe(optimizer="adam", lr=0.0),
        lambda: Switch("sgd", 0.5, lr=-0.1),
    ],
    ids=["negative-lr", "zero-lr", "negative-switch-lr"],
)
def test_non_positive_lr_is_refused_with_its_value(make: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match=r"lr must be > 0, got lr=-?0?\.?\d"):
        make()


@pytest.mark.parametrize("total_steps", [0, -3, 2.5])
def test_total_steps_must_be_a_positive_integer(total_steps: Any) -> None:
    with pytest.raises(ValueError, match=re.escape(f"total_steps={total_steps!r}")):
        build(make_model("sgd"), recipe_for("sgd"), total_steps=total_steps)


def test_importing_the_catalog_does_not_import_torch() -> None:
    code = "import sys, tuner.optim; print('torch' in sys.modules, 'schedulefree' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_spec_is_frozen() -> None:
    with pytest.raises(AttributeError):
        OPTIMIZERS["adam"].lr = Float(1.0, 2.0, log=True)  # type: ignore[misc]
    assert isinstance(OPTIMIZERS["adam"], OptimizerSpec)
