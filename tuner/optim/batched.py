"""Batched optimizers: the catalog's update rules over *stacked* parameters (one row per population member).

Every tensor here has a leading member dimension ``N``; each member has its own hyperparameters, held as
float64 tensors of shape ``(N,)`` (LR from the member's own schedule at each step; momentum, betas, eps,
weight decay, clipping). The rules mirror torch.optim's single-tensor implementations line by line
(``torch/optim/adam.py`` ``_single_tensor_adam`` and its siblings), so that each member's trajectory equals
training that member alone with ``tuner.optim.build_optimizer`` (tests/test_batched.py proves it to 1e-5).

The per-member scalars of one step (``lr / bias_correction`` ...) are computed in float64, as torch computes
its Python-float scalars, and only then cast to the parameters' dtype. A hyperparameter every member shares is
held as one Python float (``_shared``), so the update makes torch's own call (``addcdiv_(a, b, value=-step)``);
a per-member one rounds the same way (``addcdiv_(a * column, b)``: ``(value * a) / b`` either way). Adam with
betas and eps shared runs torch's fused kernel (``tuner._torch.fused_adam``): one pass instead of eight, the same
formula.

Weight decay follows ``ManagedOptimizer``: "coupled" adds ``wd * p`` to the clipped gradient, "decoupled"
shrinks ``p *= 1 - lr * wd`` before the update. Clipping is per member: each value to ``[-clip_value,
clip_value]``, then the member's global gradient norm to ``clip_norm`` (``tuner.optim.clip_gradients``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import torch

from tuner._torch import fused_adam
from tuner.errors import TunerError, lookup
from tuner.optim.build import resolve_params
from tuner.optim.catalog import get_optimizer_spec
from tuner.recipe import Recipe

Tensor = torch.Tensor
Value = Union[float, Tensor]
"""A per-member value: one Python float shared by every member, or an (N,) float64 tensor."""
State = dict[str, Tensor]
Hypers = Mapping[str, Value]


def column(values: Value, like: Tensor) -> Value:
    """``values`` ready to broadcast over ``like`` (N, ...): a float stays a float (as torch's own Python scalars);
    an (N,) tensor is cast to ``like``'s dtype and shaped (N, 1, ...)."""
    if isinstance(values, float):
        return values
    return values.to(like.dtype).view(-1, *([1] * (like.ndim - 1)))


def _any(condition: Union[bool, Tensor]) -> bool:
    return bool(condition) if isinstance(condition, bool) else bool(condition.any())


def _pick(condition: Union[bool, Tensor], a: Any, b: Any) -> Any:
    """Per member: ``a`` where ``condition`` holds, else ``b`` (rows of stacked tensors, or per-member values)."""
    if isinstance(condition, bool):
        return a if condition else b
    rows = next((x for x in (a, b) if isinstance(x, Tensor) and x.ndim > 1), None)
    if rows is not None:
        return torch.where(condition.view(-1, *([1] * (rows.ndim - 1))), a, b)
    return torch.where(condition, *(torch.as_tensor(x, dtype=torch.float64, device=condition.device) for x in (a, b)))


def _add_(target: Tensor, x: Tensor, scale: Value) -> Tensor:
    """``target += scale * x``: torch's ``add_(x, alpha=scale)`` for a float, the same product per member else."""
    if isinstance(scale, float):
        return target.add_(x, alpha=scale)
    return target.addcmul_(x, column(scale, target))


def _add(x: Tensor, y: Tensor, scale: Value) -> Tensor:
    """``x + scale * y``, out of place, as ``_add_``."""
    if isinstance(scale, float):
        return x.add(y, alpha=scale)
    return torch.addcmul(x, y, column(scale, x))


def _addcmul_(target: Tensor, a: Tensor, b: Tensor, scale: Value) -> Tensor:
    """``target += scale * a * b`` rounded as torch's ``addcmul_(a, b, value=scale)``: ``(scale * a) * b``."""
    if isinstance(scale, float):
        return target.addcmul_(a, b, value=scale)
    return target.addcmul_(a * column(scale, target), b)


def _addcdiv_(target: Tensor, a: Tensor, b: Tensor, scale: Value) -> Tensor:
    """``target += scale * a / b`` rounded as torch's ``addcdiv_(a, b, value=scale)``: ``(scale * a) / b``."""
    if isinstance(scale, float):
        return target.addcdiv_(a, b, value=scale)
    return target.addcdiv_(a * column(scale, target), b)


@dataclass(frozen=True)
class Step:
    """What one update needs besides the tensors: the step count (1-based) and the members' LRs (float64)."""

    count: int
    lr: Value


# ----------------------------------------------------------------------------- the update rules


def _sgd_state(p: Tensor, h: Hypers) -> State:
    return {"buf": torch.zeros_like(p)}


def _sgd(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    """torch.optim.SGD for plain, heavy-ball and Nesterov members at once. A member without momentum keeps
    ``buf = g`` exactly (its dampening is taken as 0), so ``p -= lr * g`` as torch's momentum-free branch."""
    mu = h["momentum"]
    if isinstance(mu, float) and mu == 0:  # no member has momentum: torch's branch without a buffer
        _add_(p, g, -t.lr)
        return
    if t.count == 1:  # torch's first step copies the gradient into the buffer
        s["buf"].copy_(g)
    else:
        _add_(s["buf"].mul_(column(mu, p)), g, 1 - _pick(mu > 0, h["dampening"], 0.0))
    nesterov = h["nesterov"] > 0
    if _any(nesterov):
        g = _pick(nesterov, _add(g, s["buf"], mu), s["buf"])
    else:
        g = s["buf"]
    _add_(p, g, -t.lr)


def _adagrad_state(p: Tensor, h: Hypers) -> State:
    return {"sum": torch.zeros_like(p).add_(column(h["initial_accumulator_value"], p))}


def _adagrad(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    clr = t.lr / (1 + (t.count - 1) * h["lr_decay"])
    s["sum"].addcmul_(g, g, value=1)
    std = s["sum"].sqrt().add_(column(h["eps"], p))
    _addcdiv_(p, g, std, -clr)


def _rmsprop_state(p: Tensor, h: Hypers) -> State:
    state = {"square_avg": torch.zeros_like(p), "buf": torch.zeros_like(p)}
    if _any(h["centered"] > 0):
        state["grad_avg"] = torch.zeros_like(p)
    return state


def _rmsprop(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    """torch.optim.RMSprop, centered or not, with or without momentum, per member. Among members with and
    without momentum, the buffer of one without is ``0 * buf + g / avg = g / avg``, i.e. ``p -= lr * g / avg``."""
    alpha, mu = h["alpha"], h["momentum"]
    _addcmul_(s["square_avg"].mul_(column(alpha, p)), g, g, 1 - alpha)
    avg = s["square_avg"].sqrt()
    if "grad_avg" in s:
        s["grad_avg"].lerp_(g, column(1 - alpha, p))
        centered = s["square_avg"].addcmul(s["grad_avg"], s["grad_avg"], value=-1).sqrt_()
        avg = _pick(h["centered"] > 0, centered, avg)
    avg = avg.add_(column(h["eps"], p))
    if isinstance(mu, float) and mu == 0:  # no member has momentum: torch's branch without a buffer
        _addcdiv_(p, g, avg, -t.lr)
        return
    s["buf"].mul_(column(mu, p)).addcdiv_(g, avg)
    _add_(p, s["buf"], -t.lr)


def _adadelta_state(p: Tensor, h: Hypers) -> State:
    return {"square_avg": torch.zeros_like(p), "acc_delta": torch.zeros_like(p)}


def _adadelta(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    rho, eps = h["rho"], column(h["eps"], p)
    _addcmul_(s["square_avg"].mul_(column(rho, p)), g, g, 1 - rho)
    std = s["square_avg"].add(eps).sqrt_()
    delta = s["acc_delta"].add(eps).sqrt_().div_(std).mul_(g)
    _addcmul_(s["acc_delta"].mul_(column(rho, p)), delta, delta, 1 - rho)
    _add_(p, delta, -t.lr)


def _moments_state(p: Tensor, h: Hypers) -> State:
    state = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    if "amsgrad_on" in h:
        state["max_exp_avg_sq"] = torch.zeros_like(p)
    return state


def _moments(p: Tensor, g: Tensor, s: State, h: Hypers) -> None:
    """exp_avg <- lerp(exp_avg, g, 1 - beta1); exp_avg_sq <- beta2 * exp_avg_sq + (1 - beta2) g^2."""
    s["exp_avg"].lerp_(g, column(1 - h["beta1"], p))
    _addcmul_(s["exp_avg_sq"].mul_(column(h["beta2"], p)), g, g, 1 - h["beta2"])


def _adam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    if all(isinstance(h[key], float) for key in ("beta1", "beta2", "eps")) and fused_adam() is not None:
        _fused_adam(p, g, s, h, t)
        return
    _moments(p, g, s, h)
    bias_correction1 = 1 - h["beta1"] ** t.count
    bias_correction2_sqrt = (1 - h["beta2"] ** t.count) ** 0.5
    second = s["exp_avg_sq"]
    if "max_exp_avg_sq" in s:
        torch.maximum(s["max_exp_avg_sq"], second, out=s["max_exp_avg_sq"])
        second = s["max_exp_avg_sq"]
    denom = second.sqrt().div_(column(bias_correction2_sqrt, p)).add_(column(h["eps"], p))
    _addcdiv_(p, s["exp_avg"], denom, -(t.lr / bias_correction1))


def _fused_adam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    """``_adam`` for members that share betas and eps, in one pass of torch's fused kernel (``Adam(fused=True)``)
    instead of eight: the kernel writes each member's step at LR 1 into a scratch buffer, then the member's LR
    scales it. The same formula as the single-tensor rule, rounded a little differently (within float32 ulps)."""
    if "direction" not in s:
        s["direction"] = torch.empty_like(p)
    direction = s["direction"].zero_()
    maxima = [s["max_exp_avg_sq"]] if "max_exp_avg_sq" in s else []
    fused_adam()(
        [direction],
        [g.contiguous()],
        [s["exp_avg"]],
        [s["exp_avg_sq"]],
        maxima,
        [torch.tensor(float(t.count), device=p.device)],
        lr=1.0,
        beta1=h["beta1"],
        beta2=h["beta2"],
        weight_decay=0.0,
        eps=h["eps"],
        amsgrad=bool(maxima),
        maximize=False,
    )
    _add_(p, direction, t.lr)


def _adamax_state(p: Tensor, h: Hypers) -> State:
    return {"exp_avg": torch.zeros_like(p), "exp_inf": torch.zeros_like(p)}


def _adamax(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    s["exp_avg"].lerp_(g, column(1 - h["beta1"], p))
    torch.maximum(s["exp_inf"].mul_(column(h["beta2"], p)), g.abs().add_(column(h["eps"], p)), out=s["exp_inf"])
    clr = t.lr / (1 - h["beta1"] ** t.count)
    _addcdiv_(p, s["exp_avg"], s["exp_inf"], -clr)


def _nadam_state(p: Tensor, h: Hypers) -> State:
    # torch keeps mu_product as a float32 scalar tensor per parameter; so do we (one per member)
    return {**_moments_state(p, h), "mu_product": torch.ones(p.shape[0], dtype=torch.float32, device=p.device)}


def _nadam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    beta1, decay, step = h["beta1"], h["momentum_decay"], t.count
    bias_correction2 = 1 - h["beta2"] ** step
    mu = beta1 * (1.0 - 0.5 * (0.96 ** (step * decay)))
    mu_next = beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * decay)))
    s["mu_product"].mul_(mu if isinstance(mu, float) else mu.to(torch.float32))
    mu_product = s["mu_product"].double()
    _moments(p, g, s, h)
    denom = s["exp_avg_sq"].div(column(bias_correction2, p)).sqrt_().add_(column(h["eps"], p))
    _addcdiv_(p, g, denom, -t.lr * (1.0 - mu) / (1.0 - mu_product))
    _addcdiv_(p, s["exp_avg"], denom, -t.lr * mu_next / (1.0 - mu_product * mu_next))


def _radam(p: Tensor, g: Tensor, s: State, h: Hypers, t: Step) -> None:
    beta1, beta2, step = h["beta1"], h["beta2"], t.count
    _moments(p, g, s, h)
    bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
    update = s["exp_avg"].div(column(bias_correction1, p)).mul_(column(t.lr, p))
    rho_inf = 2 / (1 - beta2) - 1
    rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
    rectified = rho_t > 5.0
    if _any(rectified):
        rect = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        rect = rect**0.5 if isinstance(rect, float) else rect.clamp(min=0) ** 0.5  # a float is rectified: >= 0
        # torch: (bias_correction2 ** 0.5) / sqrt, which Tensor.__rtruediv__ computes as reciprocal() * scalar
        adaptive = s["exp_avg_sq"].sqrt().add_(column(h["eps"], p)).reciprocal_()
        adaptive = adaptive.mul_(column(bias_correction2**0.5, p))
        update = _pick(rectified, update * adaptive * column(rect, p), update)
    p.sub_(update)


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
    """What members must share to be updated by one ``BatchedOptimizer`` (update rule, its branch switches, batch
    size): one block of a stack (``BlockOptimizer``). None when the recipe has no batched implementation (an
    optimizer outside ``BATCHED``, a switch)."""
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


def _shared(values: Tensor) -> Value:
    """Per-member ``values`` (N,) as one float when every member has the same one (the update then uses torch's
    own scalar arithmetic, and no per-member column), else as they are."""
    first = float(values[0])
    return first if bool((values == first).all()) else values


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
        self.key = population_key(recipes[0])
        self.hypers, rows = self._rows(recipes, next(iter(params.values())).device)
        self.peak, self.coupled, self.decoupled = rows["peak"], rows["coupled"], rows["decoupled"]
        self.clip_norm, self.clip_value = rows["clip_norm"], rows["clip_value"]
        self._share()
        self.state = {name: self.rule.init(p, self.values) for name, p in params.items()}
        self.count = 0
        self.lr = self.peak.clone()

    def _rows(self, recipes: Sequence[Recipe], device: torch.device) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """The members' hyperparameters of the update rule, and their LR, weight decay and clipping, (N,) each."""
        resolved = [
            {**self.rule.defaults, **resolve_params(get_optimizer_spec(r.optimizer), r.optimizer_params)}
            for r in recipes
        ]
        numeric = [key for key, value in resolved[0].items() if isinstance(value, (int, float))]  # bools: 0/1
        hypers = {key: _per_member([r[key] for r in resolved], device) for key in numeric}
        for switch in self.rule.switches(resolved[0]):
            hypers[switch] = torch.ones(len(recipes), dtype=torch.float64, device=device)
        rows = {
            "peak": [r.lr for r in recipes],
            "coupled": [r.weight_decay * (r.weight_decay_mode == "coupled") for r in recipes],
            "decoupled": [r.weight_decay * (r.weight_decay_mode == "decoupled") for r in recipes],
            "clip_norm": [_limit(r.clip_norm) for r in recipes],
            "clip_value": [_limit(r.clip_value) for r in recipes],
        }
        return hypers, {name: _per_member(values, device) for name, values in rows.items()}

    def copy_row(self, target: int, source: int, recipe: Recipe) -> None:
        """Member ``target`` takes member ``source``'s optimizer state (every slot's row), then trains with
        ``recipe`` (its hyperparameters; same ``population_key``): population-based training's exploit."""
        if population_key(recipe) != self.key:
            raise TunerError(f"a member cannot take recipe {recipe.optimizer!r} into a {self.rule.group!r} block")
        for slots in self.state.values():
            for tensor in slots.values():
                tensor[target] = tensor[source]
        hypers, rows = self._rows([recipe], self.peak.device)
        for key, value in hypers.items():
            self.hypers[key][target] = value[0]
        for name, value in rows.items():
            getattr(self, name)[target] = value[0]
        self._share()

    def _share(self) -> None:
        """The hyperparameters as the rules read them (``_shared``), and which optional parts any member uses."""
        self.values = {key: _shared(value) for key, value in self.hypers.items()}
        self._coupled, self._decoupled = _shared(self.coupled), _shared(self.decoupled)
        self._uses = (
            bool((self.coupled > 0).any()),
            bool((self.decoupled > 0).any()),
            bool(torch.isfinite(self.clip_value).any()),
            bool(torch.isfinite(self.clip_norm).any()),
        )

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
            if coupled:  # torch: grad.add(param, alpha=weight_decay)
                g = _add(g, p, self._coupled)
            if decoupled:
                p.mul_(column(1 - self.lr * self._decoupled, p))
            self.rule.update(p, g, self.state[name], self.values, step)

    def _clip(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        if self._uses[2]:
            grads = {
                k: torch.clamp(g, -column(self.clip_value, g), column(self.clip_value, g)) for k, g in grads.items()
            }
        if not self._uses[3]:
            return grads
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), 2, dim=1) for g in grads.values()])
        total = torch.linalg.vector_norm(norms, 2, dim=0)
        limit = self.clip_norm.to(total.dtype)
        coefficient = torch.where(
            torch.isinf(limit), torch.ones_like(total), torch.clamp(limit / (total + 1e-6), max=1.0)
        )
        return {k: g * column(coefficient, g) for k, g in grads.items()}

    def select(self, rows: Tensor) -> None:
        """Keep only the members at ``rows`` (a LongTensor of row indices), in that order."""
        for name in ("peak", "coupled", "decoupled", "clip_norm", "clip_value", "lr"):
            setattr(self, name, getattr(self, name).index_select(0, rows.to(self.peak.device)))
        self.hypers = {key: value.index_select(0, rows.to(value.device)) for key, value in self.hypers.items()}
        self._share()
        self.state = {
            name: {slot: t.index_select(0, rows.to(t.device)) for slot, t in slots.items()}
            for name, slots in self.state.items()
        }


class BlockOptimizer:
    """Members of different update rules in one stack: one ``BatchedOptimizer`` per block of consecutive rows
    whose recipes share a ``population_key`` (the caller orders the members so that equal keys are adjacent).

    Forward and backward passes run once for the whole stack; only the update is split by rule. Each block updates
    its rows of ``params`` in place (row slices of the stacked tensors are views). ``select`` keeps rows across
    blocks, dropping blocks left empty.
    """

    def __init__(self, recipes: Sequence[Recipe], params: Mapping[str, Tensor]) -> None:
        self.blocks: list[tuple[int, int, BatchedOptimizer]] = []
        start = 0
        for end in range(1, len(recipes) + 1):
            if end == len(recipes) or population_key(recipes[end]) != population_key(recipes[start]):
                rows = {name: p[start:end] for name, p in params.items()}
                self.blocks.append((start, end, BatchedOptimizer(recipes[start:end], rows)))
                start = end

    def __len__(self) -> int:
        return self.blocks[-1][1] if self.blocks else 0

    def step(self, params: Mapping[str, Tensor], grads: Mapping[str, Tensor], multipliers: Tensor) -> None:
        """One step of every member (see ``BatchedOptimizer.step``)."""
        for start, end, optimizer in self.blocks:
            optimizer.step(
                {name: p[start:end] for name, p in params.items()},
                {name: g[start:end] for name, g in grads.items()},
                multipliers[start:end],
            )

    def copy_row(self, target: int, source: int, recipe: Recipe) -> None:
        """``BatchedOptimizer.copy_row`` for two rows of one block (``TunerError`` across blocks)."""
        for start, end, optimizer in self.blocks:
            if start <= target < end:
                if not start <= source < end:
                    raise TunerError(f"rows {source} and {target} are updated by different rules: they cannot copy")
                optimizer.copy_row(target - start, source - start, recipe)
                return
        raise IndexError(f"no row {target} in a population of {len(self)}")

    def select(self, rows: Tensor) -> None:
        """Keep only the members at ``rows`` (ascending row indices)."""
        blocks, offset = [], 0
        for start, end, optimizer in self.blocks:
            local = rows[(rows >= start) & (rows < end)] - start
            if len(local):
                optimizer.select(local)
                blocks.append((offset, offset + len(local), optimizer))
                offset += len(local)
        self.blocks = blocks
