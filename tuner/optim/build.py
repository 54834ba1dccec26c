"""Build the torch optimizers of a recipe and drive them: ``build_optimizer`` -> ``ManagedOptimizer``.

The trainer calls ``ManagedOptimizer.step(step, lr_multiplier, closure)`` once per optimizer step;
the closure zero-grads, runs the forward and backward passes, clips (``clip_gradients``) and
returns the loss. The managed optimizer sets the learning rate, applies the weight decay the torch
class does not apply itself, switches optimizer part-way when the recipe says so and keeps
schedule-free optimizers in the right mode. torch is imported inside the functions, so importing
this module stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from tuner.errors import TunerError
from tuner.optim.catalog import OptimizerSpec, check_param, get_optimizer_spec
from tuner.recipe import Recipe

if TYPE_CHECKING:
    import torch

Closure = Callable[[], "torch.Tensor"]
Split = Callable[["torch.nn.Module", str], "tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]"]


# ----------------------------------------------------------------------------- hyperparameters


def resolve_params(spec: OptimizerSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """``spec.defaults`` overridden by ``params``; unknown keys and invalid values raise ``ValueError``."""
    valid = spec.valid_params()
    for key, value in params.items():
        if key not in valid:
            raise ValueError(
                f"unknown parameter {key!r} for optimizer {spec.name!r}; valid parameters: {', '.join(valid)}"
            )
        check_param(key, value, _rule_name(spec, key))
    return {**spec.defaults, **params}


def _rule_name(spec: OptimizerSpec, key: str) -> str:
    prefix = spec.companion_prefix
    is_companion_param = bool(prefix) and key.startswith(prefix) and key != spec.companion_lr_ratio_key
    return key[len(prefix) :] if is_companion_param else key


def _own_params(spec: OptimizerSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    prefix = spec.companion_prefix
    return {key: value for key, value in params.items() if not (prefix and key.startswith(prefix))}


def _companion_params(spec: OptimizerSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    prefix, ratio_key = spec.companion_prefix, spec.companion_lr_ratio_key
    prefixed = {
        key[len(prefix) :]: value for key, value in params.items() if key.startswith(prefix) and key != ratio_key
    }
    return {**{key: params[key] for key in spec.companion_shares}, **prefixed}


def torch_kwargs(spec: OptimizerSpec, params: Mapping[str, Any]) -> dict[str, Any]:
    """Flat recipe names -> the torch constructor's keyword arguments (``beta1, beta2 -> betas``)."""
    kwargs = dict(params)
    for torch_name, flat_names in spec.packs.items():
        kwargs[torch_name] = tuple(kwargs.pop(name) for name in flat_names)
    return kwargs


def weight_decay_kwargs(spec: OptimizerSpec, weight_decay: float, mode: str) -> tuple[dict[str, Any], Optional[str]]:
    """The torch kwargs for weight decay, and the mode the managed optimizer must apply itself (or None)."""
    native = spec.native_weight_decay
    if mode in native:
        return {"weight_decay": weight_decay, **native[mode]}, None
    return ({"weight_decay": 0.0} if native else {}), (mode if weight_decay > 0 else None)


def resolve_class(dotted: str) -> type:
    """Import ``"package.module.Class"`` and return the class."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


# ----------------------------------------------------------------------------- parameter splits


def _trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def _embedding_params(model: torch.nn.Module, *, sparse_only: bool) -> set[int]:
    import torch

    kinds = (torch.nn.Embedding, torch.nn.EmbeddingBag)
    return {
        id(p)
        for module in model.modules()
        if isinstance(module, kinds) and (module.sparse or not sparse_only)
        for p in module.parameters(recurse=False)
    }


def _partition(params: list, chosen: set[int]) -> tuple[list, list]:
    return [p for p in params if id(p) in chosen], [p for p in params if id(p) not in chosen]


def _split_all(model: torch.nn.Module, name: str) -> tuple[list, list]:
    return _trainable(model), []


def _split_matrices(model: torch.nn.Module, name: str) -> tuple[list, list]:
    params = _trainable(model)
    embeddings = _embedding_params(model, sparse_only=False)
    matrices, rest = _partition(params, {id(p) for p in params if p.ndim == 2 and id(p) not in embeddings})
    if not matrices:
        raise TunerError(f"{name} needs 2-D weight matrices (e.g. nn.Linear), but the model has none")
    return matrices, rest


def _split_sparse(model: torch.nn.Module, name: str) -> tuple[list, list]:
    sparse, rest = _partition(_trainable(model), _embedding_params(model, sparse_only=True))
    if not sparse:
        raise TunerError(
            f"{name} needs a model with a sparse embedding (nn.Embedding(..., sparse=True)), but the model has none"
        )
    return sparse, rest


SPLITS: Mapping[str, Split] = {"all": _split_all, "matrices": _split_matrices, "sparse": _split_sparse}


# ----------------------------------------------------------------------------- weight decay we apply


class _NoDecay:
    """The torch class applies the weight decay itself (or there is none)."""

    def after_backward(self, params: list, weight_decay: float) -> None:
        return None

    def before_update(self, params: list, lr: float, weight_decay: float, *, all_params: bool = False) -> None:
        return None

    def penalty(self, params: list, weight_decay: float) -> float:
        return 0.0


class _CoupledL2(_NoDecay):
    """L2: ``g += wd * p`` (only the rows present in a sparse gradient); the loss gains ``wd/2 * |p|^2``."""

    def after_backward(self, params: list, weight_decay: float) -> None:
        import torch

        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad = _add_l2(p.grad, p, weight_decay)

    def penalty(self, params: list, weight_decay: float) -> float:
        import torch

        with torch.no_grad():
            return 0.5 * weight_decay * sum(float(torch.sum(p * p)) for p in params)


def _add_l2(grad: torch.Tensor, p: torch.Tensor, weight_decay: float) -> torch.Tensor:
    import torch

    if not grad.is_sparse:
        return grad.add_(p, alpha=weight_decay)
    grad = grad.coalesce()
    values = grad.values() + weight_decay * p[tuple(grad.indices())]
    return torch.sparse_coo_tensor(grad.indices(), values, grad.shape, is_coalesced=True, check_invariants=False)


class _DecoupledShrink(_NoDecay):
    """Decoupled decay before the update: ``p <- p * (1 - lr * wd)`` for every parameter with a gradient
    (as torch's AdamW), or every parameter (``all_params``: a closure step has no gradients yet)."""

    def before_update(self, params: list, lr: float, weight_decay: float, *, all_params: bool = False) -> None:
        import torch

        with torch.no_grad():
            for p in params:
                if all_params or p.grad is not None:
                    p.mul_(1 - lr * weight_decay)


MANUAL_DECAY: Mapping[Optional[str], _NoDecay] = {
    None: _NoDecay(),
    "coupled": _CoupledL2(),
    "decoupled": _DecoupledShrink(),
}


# ----------------------------------------------------------------------------- parts and phases


def _noop() -> None:
    return None


@dataclass
class _Part:
    """One torch optimizer over some parameters, at ``lr_scale`` times the phase's LR."""

    optimizer: Any
    params: list
    lr_scale: float
    decay: _NoDecay
    schedule_free: bool

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * self.lr_scale

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self) -> None:
        (self.optimizer.train if self.schedule_free else _noop)()

    def eval(self) -> None:
        (self.optimizer.eval if self.schedule_free else _noop)()


@dataclass
class _Phase:
    """The optimizer(s) of one stretch of training and their peak LR."""

    name: str
    parts: list[_Part]
    peak_lr: float
    needs_closure: bool


def _make_part(
    spec: OptimizerSpec, params: list, kwargs: dict[str, Any], lr: float, recipe: Recipe, scale: float
) -> _Part:
    decay_kwargs, manual = weight_decay_kwargs(spec, recipe.weight_decay, recipe.weight_decay_mode)
    optimizer = resolve_class(spec.torch_class)(params, lr=lr * scale, **kwargs, **decay_kwargs)
    part = _Part(optimizer, params, scale, MANUAL_DECAY[manual], spec.schedule_free)
    part.train()
    return part


def _companion_parts(spec: OptimizerSpec, params: dict[str, Any], rest: list, lr: float, recipe: Recipe) -> list[_Part]:
    if not rest:
        return []
    companion = get_optimizer_spec(spec.companion)  # type: ignore[arg-type]
    kwargs = torch_kwargs(companion, resolve_params(companion, _companion_params(spec, params)))
    return [_make_part(companion, rest, kwargs, lr, recipe, params[spec.companion_lr_ratio_key])]


def _build_phase(
    model: torch.nn.Module, name: str, lr: float, overrides: Mapping[str, Any], recipe: Recipe, full_batch: bool
) -> _Phase:
    spec = get_optimizer_spec(name)
    if spec.full_batch_only and not full_batch:
        raise TunerError(f"{name} needs a full-batch task (batch_size: null); this task trains on mini-batches")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got lr={lr}")
    params = resolve_params(spec, overrides)
    main, rest = SPLITS[spec.split](model, name)
    if rest and not spec.companion:
        raise TunerError(f"{name}: {len(rest)} parameters are left without an optimizer")
    parts = [_make_part(spec, main, torch_kwargs(spec, _own_params(spec, params)), lr, recipe, 1.0)]
    return _Phase(name, parts + _companion_parts(spec, params, rest, lr, recipe), lr, spec.needs_closure)


# ----------------------------------------------------------------------------- the managed optimizer


class ManagedOptimizer:
    """What the trainer drives: one or more torch optimizers behind one ``step``.

    muon owns Muon (2-D weight matrices) + AdamW (the rest); sparse_adam owns SparseAdam (sparse
    embeddings) + Adam (the rest); with a ``switch`` the first optimizer runs until step
    ``switch_step`` and a fresh switch optimizer (its own peak LR) from there on.
    """

    def __init__(self, phases: list[_Phase], switch_step: Optional[int], recipe: Recipe, params: list) -> None:
        self._phases = phases
        self._active = 0
        self.switch_step = switch_step
        self.recipe = recipe
        self.params = params

    @property
    def phase(self) -> _Phase:
        """The phase in use (index 0 before the switch, 1 after)."""
        return self._phases[self._active]

    @property
    def optimizer_name(self) -> str:
        """The catalog name of the optimizer in use."""
        return self.phase.name

    def step(
        self, step: int, lr_multiplier: float, closure: Closure, *, scaler: Optional[torch.amp.GradScaler] = None
    ) -> torch.Tensor:
        """One optimizer step at LR ``peak * lr_multiplier``; ``closure`` computes the gradients.

        ``scaler``: fp16's GradScaler. The closure then backpropagates the scaled loss and unscales the gradients
        (``scaler.unscale_`` on ``active_optimizers``, before clipping); each torch optimizer steps through
        ``scaler.step`` (skipped when a gradient is inf/NaN; a decoupled weight decay still shrinks the weights) and
        the scaler updates its scale. Not with an optimizer that steps with a closure (lbfgs).

        Returns the (detached) loss the closure computed; with lbfgs, the loss of its first evaluation.
        """
        phase = self._enter(step)
        for part in phase.parts:
            part.set_lr(phase.peak_lr * lr_multiplier)
        if not phase.needs_closure:
            return self._plain_step(phase, closure, scaler)
        if scaler is not None:
            raise TunerError(f"{phase.name} steps with a closure: it cannot train with fp16's GradScaler")
        return self._closure_step(phase, closure)

    def _plain_step(self, phase: _Phase, closure: Closure, scaler: Optional[torch.amp.GradScaler]) -> torch.Tensor:
        loss = closure()
        self._update(phase, scaler)
        return loss.detach()

    def apply_gradients(self, step: int, lr_multiplier: float) -> None:
        """One optimizer step with the gradients already computed (a user's own loop called ``backward``): the LR,
        the weight decay the torch class does not apply, the switch. Closure optimizers (lbfgs) need ``step``."""
        phase = self._enter(step)
        if phase.needs_closure:
            raise TunerError(f"{phase.name} evaluates the loss itself: call optimizer.step(closure)")
        for part in phase.parts:
            part.set_lr(phase.peak_lr * lr_multiplier)
        self._update(phase)

    def _update(self, phase: _Phase, scaler: Optional[torch.amp.GradScaler] = None) -> None:
        """Apply the decay the torch class does not apply itself, then step each torch optimizer (through fp16's
        ``scaler`` when given, which then updates its scale)."""
        wd = self.recipe.weight_decay
        for part in phase.parts:
            part.decay.after_backward(part.params, wd)
            part.decay.before_update(part.params, part.lr, wd)
            if scaler is None:
                part.optimizer.step()
            else:
                scaler.step(part.optimizer)
        if scaler is not None:
            scaler.update()

    def _closure_step(self, phase: _Phase, closure: Closure) -> torch.Tensor:
        (part,) = phase.parts
        wd, losses = self.recipe.weight_decay, []

        def penalized() -> torch.Tensor:
            loss = closure()
            losses.append(loss)
            part.decay.after_backward(part.params, wd)
            return loss + part.decay.penalty(part.params, wd)

        part.decay.before_update(part.params, part.lr, wd, all_params=True)
        part.optimizer.step(penalized)
        return losses[0].detach()

    def begin(self, step: int, *, hand_over: bool = True) -> None:
        """Enter the phase of optimizer step ``step`` before its gradients are computed (a user's own loop computes
        them before ``apply_gradients``). ``hand_over=False`` when the weights already are the later phase's (loaded
        from a checkpoint)."""
        self._enter(step, hand_over=hand_over)

    def _enter(self, step: int, *, hand_over: bool = True) -> _Phase:
        if self.switch_step is not None and self._active == 0 and step >= self.switch_step:
            if hand_over:
                for part in self._phases[0].parts:
                    part.eval()  # a schedule-free first optimizer hands over its averaged weights x
            self._active = 1
            if hand_over:
                for part in self._phases[1].parts:
                    part.train()
        return self.phase

    def train(self) -> None:
        """Before training steps: schedule-free optimizers move the weights to y; otherwise a no-op."""
        for part in self.phase.parts:
            part.train()

    def eval(self) -> None:
        """Before evaluation: schedule-free optimizers move the weights to the average x; otherwise a no-op."""
        for part in self.phase.parts:
            part.eval()

    @property
    def lr(self) -> float:
        """The current effective LR of the active optimizer's first param group."""
        return self.phase.parts[0].lr

    def state_dict(self) -> dict[str, Any]:
        """Every torch optimizer's state, in ``torch_optimizers`` order (for checkpoints)."""
        return {"optimizers": [optimizer.state_dict() for optimizer in self.torch_optimizers]}

    def load_state_dict(self, state_dict: Mapping[str, Any], step: int) -> None:
        """Restore what ``state_dict`` returned, at optimizer step ``step`` (the phase of that step is entered without
        handing weights over: the model's weights are already the saved ones)."""
        optimizers, saved = self.torch_optimizers, list(state_dict.get("optimizers", []))
        if len(saved) != len(optimizers):
            raise ValueError(f"the state holds {len(saved)} optimizers, this recipe has {len(optimizers)}")
        for optimizer, state in zip(optimizers, saved):
            optimizer.load_state_dict(state)
        self.begin(step, hand_over=False)

    @property
    def torch_optimizers(self) -> list[torch.optim.Optimizer]:
        """Every torch optimizer owned, in order (the switch optimizer last)."""
        return [part.optimizer for phase in self._phases for part in phase.parts]

    @property
    def active_optimizers(self) -> list[torch.optim.Optimizer]:
        """The torch optimizers of the phase in use."""
        return [part.optimizer for part in self.phase.parts]

    def clip(self) -> Optional[float]:
        """``clip_gradients`` over the model's parameters with the recipe's ``clip_norm`` / ``clip_value``."""
        return clip_gradients(self.params, self.recipe.clip_norm, self.recipe.clip_value)


def build_optimizer(model: torch.nn.Module, recipe: Recipe, total_steps: int, *, full_batch: bool) -> ManagedOptimizer:
    """The ``ManagedOptimizer`` of ``recipe`` over ``model``'s trainable parameters.

    ``total_steps`` places the switch (step ``round(at_fraction * total_steps)``); ``full_batch``
    says whether each step sees the whole training set (lbfgs needs it). Raises
    ``UnknownNameError`` for an unknown optimizer, ``ValueError`` for an invalid hyperparameter and
    ``TunerError`` when the optimizer does not fit the task or model.
    """
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"total_steps must be an integer >= 1, got total_steps={total_steps!r}")
    phases = [_build_phase(model, recipe.optimizer, recipe.lr, recipe.optimizer_params, recipe, full_batch)]
    switch, switch_step = recipe.switch, None
    if switch is not None:
        phases.append(_build_phase(model, switch.optimizer, switch.lr, switch.optimizer_params, recipe, full_batch))
        switch_step = int(round(switch.at_fraction * total_steps))
    return ManagedOptimizer(phases, switch_step, recipe, _trainable(model))


# ----------------------------------------------------------------------------- clipping


def _grad_values(p: torch.Tensor) -> torch.Tensor:
    """The tensor holding ``p``'s gradient values (a sparse gradient is coalesced first)."""
    if p.grad.is_sparse:
        p.grad = p.grad.coalesce()
        return p.grad.values()
    return p.grad


def clip_gradients(
    parameters: Iterable[torch.Tensor], clip_norm: Optional[float], clip_value: Optional[float]
) -> Optional[float]:
    """Clip gradients in place: each value to ``[-clip_value, clip_value]``, then the global L2 norm to
    ``clip_norm`` (as ``torch.nn.utils.clip_grad_norm_``; sparse gradients included). Returns the total
    norm before norm clipping when ``clip_norm`` is set, else None."""
    import torch

    for name, value in (("clip_norm", clip_norm), ("clip_value", clip_value)):
        if value is not None and not value > 0:
            raise ValueError(f"{name} must be > 0 or None, got {name}={value}")
    grads = [_grad_values(p) for p in parameters if p.grad is not None]
    with torch.no_grad():
        for grad in grads if clip_value is not None else []:
            grad.clamp_(-clip_value, clip_value)
        if clip_norm is None:
            return None
        total = torch.nn.utils.get_total_norm(grads, 2.0) if grads else torch.tensor(0.0)
        coefficient = torch.clamp(clip_norm / (total + 1e-6), max=1.0)
        for grad in grads:
            grad.mul_(coefficient.to(grad.device))
    return float(total)
