"""Batched optimizers: the catalog's update rules over *stacked* parameters (one row per population member).

Every tensor here has a leading member dimension ``N``; each member has its own hyperparameters, held as
float64 tensors of shape ``(N,)`` (LR from the member's own schedule at each step; momentum, betas, eps,
weight decay, clipping). The rules mirror torch.optim's single-tensor implementations line by line
(``torch/optim/adam.py`` ``_single_tensor_adam`` and its siblings), so that each member's trajectory equals
training that member alone with ``tuner.optim.build_optimizer`` (tests/test_batched.py proves it to 1e-5).

The per-member scalars of one step (``lr / bias_correction`` ...) are computed in float64, as torch computes
its Python-float scalars, and only then cast to the parameters' dtype.

Weight decay follows ``ManagedOptimizer``: "coupled" adds ``wd * p`` to the clipped gradient, "decoupled"
shrinks ``p *= 1 - lr * wd`` before the update. Clipping is per member: each value to ``[-clip_value,
clip_value]``, then the member's global gradient norm to ``clip_norm`` (``tuner.optim.clip_gradients``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from tuner.errors import TunerError, lookup
from tuner.optim.build import resolve_params
from tuner.optim.catalog import get_optimizer_spec
from tuner.recipe import Recipe

Tensor = torch.Tensor
State = dict[str, Tensor]
Hypers = Mapping[str, Tensor]


def column(values: Tensor, like: Tensor) -> Tensor:
    """Per-member ``values`` (N,) cast to ``like``'s dtype and shaped to broadcast over ``like`` (N, ...)."""
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


@dataclass(frozen=True)
class Step:
    """What one update needs besides the tensors: the step count (1-based) and the members' LRs (float64)."""

    count: int
    lr: Tensor


# ----------------------------------------------------------------------------- the update rules


def _sgd_state(p: Tensor, h: Hypers) -> State:
    return {"buf": torch.zeros_like(p)}


def _sgd(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    """torch.optim.SGD for plain, heavy-ball and Nesterov members at once. A member without momentum keeps
    ``buf = g`` exactly (its dampening is taken as 0), so ``p -= lr * g`` as torch's momentum-free branch."""
    mu = column(h["momentum"], p)
    if t.count == 1:  # torch's first step copies the gradient into the buffer
        s["buf"].copy_(g)
    else:
        dampening = torch.where(h["momentum"] > 0, h["dampening"], torch.zeros_like(h["dampening"]))
        s["buf"].mul_(mu).add_(g * column(1 - dampening, p))
    nesterov = h["nesterov"] > 0
    if bool(nesterov.any()):
        g = torch.where(nesterov.view(-1, *([1] * (p.ndim - 1))), g + mu * s["buf"], s["buf"])
    else:
        g = s["buf"]
    p.add_(g * column(-t.lr, p))


def _adagrad_state(p: Tensor, h: Hypers) -> State:
    return {"sum": column(h["initial_accumulator_value"], p).expand_as(p).clone()}


def _adagrad(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    clr = t.lr / (1 + (t.count - 1) * h["lr_decay"])
    s["sum"].addcmul_(g, g, value=1)
    std = s["sum"].sqrt().add_(column(h["eps"], p))
    p.add_((g / std) * column(-clr, p))


def _rmsprop_state(p: Tensor, h: Hypers) -> State:
    state = {"square_avg": torch.zeros_like(p), "buf": torch.zeros_like(p)}
    if bool((h["centered"] > 0).any()):
        state["grad_avg"] = torch.zeros_like(p)
    return state


def _rmsprop(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    """torch.optim.RMSprop, centered or not, with or without momentum, per member. Without momentum the buffer
    is ``0 * buf + g / avg = g / avg`` exactly, i.e. torch's ``p -= lr * g / avg``."""
    alpha = h["alpha"]
    s["square_avg"].mul_(column(alpha, p)).add_(g * g * column(1 - alpha, p))
    avg = s["square_avg"].sqrt()
    if "grad_avg" in s:
        s["grad_avg"].lerp_(g, column(1 - alpha, p))
        centered = (s["square_avg"] - s["grad_avg"] * s["grad_avg"]).sqrt_()
        avg = torch.where((h["centered"] > 0).view(-1, *([1] * (p.ndim - 1))), centered, avg)
    avg = avg.add_(column(h["eps"], p))
    s["buf"].mul_(column(h["momentum"], p)).add_(g / avg)
    p.add_(s["buf"] * column(-t.lr, p))


def _adadelta_state(p: Tensor, h: Hypers) -> State:
    return {"square_avg": torch.zeros_like(p), "acc_delta": torch.zeros_like(p)}


def _adadelta(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    rho, eps = column(h["rho"], p), column(h["eps"], p)
    s["square_avg"].mul_(rho).add_(g * g * column(1 - h["rho"], p))
    std = s["square_avg"].add(eps).sqrt_()
    delta = s["acc_delta"].add(eps).sqrt_().div_(std).mul_(g)
    s["acc_delta"].mul_(rho).add_(delta * delta * column(1 - h["rho"], p))
    p.add_(delta * column(-t.lr, p))


def _moments_state(p: Tensor, h: Hypers) -> State:
    state = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    if "amsgrad_on" in h:
        state["max_exp_avg_sq"] = torch.zeros_like(p)
    return state


def _moments(p: Tensor, g: Tensor, s: State, h: Hypers) -> None:
    """exp_avg <- lerp(exp_avg, g, 1 - beta1); exp_avg_sq <- beta2 * exp_avg_sq + (1 - beta2) g^2."""
    s["exp_avg"].lerp_(g, column(1 - h["beta1"], p))
    s["exp_avg_sq"].mul_(column(h["beta2"], p)).add_(g * g * column(1 - h["beta2"], p))


def _adam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    _moments(p, g, s, h)
    bias_correction1 = 1 - h["beta1"] ** t.count
    bias_correction2_sqrt = (1 - h["beta2"] ** t.count) ** 0.5
    second = s["exp_avg_sq"]
    if "max_exp_avg_sq" in s:
        torch.maximum(s["max_exp_avg_sq"], second, out=s["max_exp_avg_sq"])
        second = s["max_exp_avg_sq"]
    denom = (second.sqrt() / column(bias_correction2_sqrt, p)).add_(column(h["eps"], p))
    p.add_((s["exp_avg"] / denom) * column(-t.lr / bias_correction1, p))


def _adamax_state(p: Tensor, h: Hypers) -> State:
    return {"exp_avg": torch.zeros_like(p), "exp_inf": torch.zeros_like(p)}


def _adamax(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    s["exp_avg"].lerp_(g, column(1 - h["beta1"], p))
    torch.maximum(s["exp_inf"].mul_(column(h["beta2"], p)), g.abs().add_(column(h["eps"], p)), out=s["exp_inf"])
    clr = t.lr / (1 - h["beta1"] ** t.count)
    p.add_((s["exp_avg"] / s["exp_inf"]) * column(-clr, p))


def _nadam_state(p: Tensor, h: Hypers) -> State:
    # torch keeps mu_product as a float32 scalar tensor per parameter; so do we (one per member)
    return {**_moments_state(p, h), "mu_product": torch.ones(p.shape[0], dtype=torch.float32, device=p.device)}


def _nadam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    beta1, decay, step = h["beta1"], h["momentum_decay"], t.count
    bias_correction2 = 1 - h["beta2"] ** step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * decay)))
    s["mu_product"].mul_(mu.to(torch.float32))
    mu_product = s["mu_product"].double()
    _moments(p, g, s, h)
    denom = (s["exp_avg_sq"] / column(bias_correction2, p)).sqrt().add_(column(h["eps"], p))
    p.add_((g / denom) * column(-t.lr * (1.0 - mu) / (1.0 - mu_product), p))
    p.add_((s["exp_avg"] / denom) * column(-t.lr * mu_next / (1.0 - mu_product * mu_next), p))


def _radam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    beta1, beta2, step = h["beta1"], h["beta2"], t.count
    _moments(p, g, s, h)
    bias_correction1, bias_correction2 = 1 - beta1 ** step, 1 - beta2 ** step
    corrected = s["exp_avg"] / column(bias_correction1, p)
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2 ** step) / bias_correction2
    rectified = rho_t > 5.0
    rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).clamp(min=0) ** 0.5
    adaptive = column(bias_correction2 ** 0.5, p) / s["exp_avg_sq"].sqrt().add_(column(h["eps"], p))
    plain = corrected * column(t.lr, p)
    mask = rectified.view(-1, *([1] * (p.ndim - 1)))
    p.add_(torch.where(mask, plain * adaptive * column(rect, p), plain), alpha=-1.0)


@dataclass(frozen=True)
class BatchedRule:
    """One catalog optimizer's update over stacked parameters.

    Catalog entries with the same ``group`` share one population (sgd, momentum and nesterov; adam and adamw);
    ``defaults`` fill the hyperparameters a member's optimizer does not have (plain sgd: momentum 0).
    ``init(p, hypers)`` makes the state of one stacked parameter; ``update(p, g, state, hypers, step)`` applies
    one step in place. ``switches(params)`` names the structural choices (branches in torch's code) a member's
    resolved hyperparameters make; members with different switches cannot share a population.
    """

    group: str
    init: Callable[[Tensor, Hypers], State]
    update: Callable[[Tensor, Tensor, State, Hypers, Step], None]
    switches: Callable[[Mapping[str, Any]], tuple[str, ...]] = lambda params: ()
    defaults: Mapping[str, float] = field(default_factory=dict)


def _amsgrad(params: Mapping[str, Any]) -> tuple[str, ...]:
    return ("amsgrad_on",) if params.get("amsgrad") else ()


_SGD_DEFAULTS = {"momentum": 0.0, "dampening": 0.0, "nesterov": 0.0}
_RMSPROP_DEFAULTS = {"momentum": 0.0, "centered": 0.0}


BATCHED: dict[str, BatchedRule] = {
    "sgd": BatchedRule("sgd", _sgd_state, _sgd, defaults=_SGD_DEFAULTS),
    "momentum": BatchedRule("sgd", _sgd_state, _sgd, defaults=_SGD_DEFAULTS),
    "nesterov": BatchedRule("sgd", _sgd_state, _sgd, defaults=_SGD_DEFAULTS),
    "adagrad": BatchedRule("adagrad", _adagrad_state, _adagrad),
    "rmsprop": BatchedRule("rmsprop", _rmsprop_state, _rmsprop, defaults=_RMSPROP_DEFAULTS),
    "adadelta": BatchedRule("adadelta", _adadelta_state, _adadelta),
    "adam": BatchedRule("adam", _moments_state, _adam, _amsgrad),
    "adamw": BatchedRule("adam", _moments_state, _adam, _amsgrad),
    "nadam": BatchedRule("nadam", _nadam_state, _nadam),
    "radam": BatchedRule("radam", _moments_state, _radam),
    "adamax": BatchedRule("adamax", _adamax_state, _adamax),
}
"""Catalog optimizers with a batched implementation (the others train sequentially)."""


# ----------------------------------------------------------------------------- grouping


def population_key(recipe: Recipe) -> tuple[Any, ...] | None:
    """What members must share to be stacked in one batched optimizer (optimizer, its branch switches, batch
    size), or None when the recipe has no batched implementation (an optimizer outside ``BATCHED``, a switch)."""
    if recipe.optimizer not in BATCHED or recipe.switch is not None:
        return None
    rule = BATCHED[recipe.optimizer]
    params = resolve_params(get_optimizer_spec(recipe.optimizer), recipe.optimizer_params)
    return rule.group, rule.switches(params), recipe.batch_size


# ----------------------------------------------------------------------------- the optimizer


def _per_member(values: Sequence[float], device: torch.device) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)


def _limit(value: float | None) -> float:
    return math.inf if value is None else float(value)


class BatchedOptimizer:
    """One catalog optimizer over a population's stacked parameters, each member with its own hyperparameters.

    ``step(params, grads, multipliers)`` clips each member's gradients, applies its weight decay and the update
    rule at LR ``peak * multiplier``, in place. ``select(rows)`` keeps only those members (pruned or diverged
    members leave the stacks). Raises ``TunerError`` when the recipes cannot share one population.
    """

    def __init__(self, recipes: Sequence[Recipe], params: Mapping[str, Tensor]) -> None:
        keys = {population_key(recipe) for recipe in recipes}
        if len(keys) != 1 or None in keys:
            raise TunerError(f"recipes cannot share one batched optimizer: population keys {sorted(map(str, keys))}")
        self.rule = lookup(BATCHED, "batched optimizer", recipes[0].optimizer)
        device = next(iter(params.values())).device
        resolved = [{**self.rule.defaults, **resolve_params(get_optimizer_spec(r.optimizer), r.optimizer_params)}
                    for r in recipes]
        numeric = [key for key, value in resolved[0].items() if isinstance(value, (int, float))]  # bools: 0/1
        self.hypers: dict[str, Tensor] = {key: _per_member([r[key] for r in resolved], device) for key in numeric}
        for switch in self.rule.switches(resolved[0]):
            self.hypers[switch] = torch.ones(len(recipes), dtype=torch.float64, device=device)
        self.peak = _per_member([recipe.lr for recipe in recipes], device)
        self.coupled = _per_member([r.weight_decay * (r.weight_decay_mode == "coupled") for r in recipes], device)
        self.decoupled = _per_member([r.weight_decay * (r.weight_decay_mode == "decoupled") for r in recipes], device)
        self.clip_norm = _per_member([_limit(r.clip_norm) for r in recipes], device)
        self.clip_value = _per_member([_limit(r.clip_value) for r in recipes], device)
        self.state = {name: self.rule.init(p, self.hypers) for name, p in params.items()}
        self._uses = (bool((self.coupled > 0).any()), bool((self.decoupled > 0).any()),
                      bool(torch.isfinite(self.clip_value).any()), bool(torch.isfinite(self.clip_norm).any()))
        self.count = 0
        self.lr = self.peak.clone()

    def __len__(self) -> int:
        return int(self.peak.shape[0])

    @torch.no_grad()
    def step(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], multipliers: Tensor) -> None:
        """One step of every member: LR ``peak * multipliers`` (float64, (N,)), gradients ``grads`` (clipped here)."""
        self.lr = self.peak * multipliers.to(self.peak)
        self.count += 1
        grads = self._clip(dict(grads))
        step = Step(self.count, self.lr)
        coupled, decoupled = self._uses[:2]
        for name, p in params.items():
            g = grads[name]
            if coupled:
                g = g + column(self.coupled, p) * p
            if decoupled:
                p.mul_(column(1 - self.lr * self.decoupled, p))
            self.rule.update(p, g, self.state[name], self.hypers, step)

    def _clip(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._uses[2]:
            grads = {k: torch.clamp(g, -column(self.clip_value, g), column(self.clip_value, g)) for k, g in grads.items()}
        if not self._uses[3]:
            return grads
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads.values()])
        total = torch.linalg.vector_norm(norms, 2, dim=0)
        limit = self.clip_norm.to(total.dtype)
        coefficient = torch.where(torch.isinf(limit), torch.ones_like(total), torch.clamp(limit / (total + 1e-6), max=1.0))
        return {k: g * column(coefficient, g) for k, g in grads.items()}

    def select(self, rows: Tensor) -> None:
        """Keep only the members at ``rows`` (a LongTensor of row indices), in that order."""
        for name in ("peak", "coupled", "decoupled", "clip_norm", "clip_value", "lr"):
            setattr(self, name, getattr(self, name).index_select(0, rows.to(self.peak.device)))
        self.hypers = {key: value.index_select(0, rows.to(value.device)) for key, value in self.hypers.items()}
        self.state = {name: {slot: t.index_select(0, rows.to(t.device)) for slot, t in slots.items()}
                      for name, slots in self.state.items()}
