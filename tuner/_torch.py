"""Every private torch name tuner uses, behind one version check, each with a public fallback.

They serve the population's fast paths (``tuner.optim.batched``, ``tuner.train.stacked``), where one kernel instead
of several, or no autograd graph, is what the speed rests on (docs/benchmarks.md); the fallbacks compute the same
values with public operations, more slowly:

* ``torch._fused_adam_``: the kernel behind ``Adam(fused=True)``; without it Adam's rule runs op by op.
* ``aten._log_softmax``, ``aten._log_softmax_backward_data``, ``aten._adaptive_avg_pool2d_backward``: the kernels
  autograd itself runs; without them ``torch.log_softmax`` and the backward's formula, or ``torch.autograd.grad``.
* ``Module._forward_hooks``, ``_forward_pre_hooks``, ``_backward_hooks``: whether a module has hooks (the stacked path
  would skip them); without them every module is taken to have hooks, so the stacked path is not used.

``SUPPORTED`` is the version check: torch 2.x with every name above.

Random-number states live here too (``rng_states`` / ``set_rng_states``), so that one module knows every generator a
run draws from -- torch's CPU and CUDA generators, Python's ``random``, NumPy's global one when NumPy is loaded, and
a run's own ``torch.Generator`` objects (data order) -- and what a checkpoint must hold to resume them.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import Any, Optional

import torch

_aten = torch.ops.aten
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")


def _supported() -> bool:
    names = ("_log_softmax", "_log_softmax_backward_data", "_adaptive_avg_pool2d_backward")
    return torch.__version__.startswith("2.") and all(hasattr(_aten, name) for name in names)


SUPPORTED = _supported()


def fused_adam() -> Optional[Any]:
    """torch's fused Adam kernel (``torch._fused_adam_``), or None where this torch has none."""
    return getattr(torch, "_fused_adam_", None) if SUPPORTED else None


def log_softmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log_softmax`` over ``dim``, without recording an autograd graph."""
    return _aten._log_softmax(x, dim, False) if SUPPORTED else torch.log_softmax(x, dim)


def log_softmax_backward(grad: torch.Tensor, log_probs: torch.Tensor, dim: int, dtype: torch.dtype) -> torch.Tensor:
    """The gradient through ``log_softmax`` over ``dim``: ``grad - softmax * sum(grad)``."""
    if SUPPORTED:
        return _aten._log_softmax_backward_data(grad, log_probs, dim, dtype)
    return grad - log_probs.exp() * grad.sum(dim, keepdim=True)


def adaptive_avg_pool2d_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The gradient of ``adaptive_avg_pool2d(x, size)`` with respect to ``x``, given the output gradient ``grad``."""
    if SUPPORTED:
        return _aten._adaptive_avg_pool2d_backward(grad, x)
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = torch.nn.functional.adaptive_avg_pool2d(leaf, grad.shape[-2:])
        (dx,) = torch.autograd.grad(out, leaf, grad)
    return dx


def has_hooks(module: torch.nn.Module) -> bool:
    """Whether forward, forward-pre or backward hooks are registered on ``module`` (True when torch cannot say)."""
    if not all(hasattr(module, name) for name in _HOOKS):
        return True
    return any(bool(getattr(module, name)) for name in _HOOKS)


def rng_states(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """Every random-number state a run draws from, as data ``torch.load(weights_only=True)`` reads back: torch's CPU
    generator, CUDA's (when initialized), ``random``'s, NumPy's global one (when NumPy is imported) and
    ``generators`` (a run's data-order generators)."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "random": random.getstate(),
        "generators": [generator.get_state() for generator in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        kind, keys, position, has_gauss, cached = numpy.random.get_state()
        states["numpy"] = (kind, torch.from_numpy(keys.astype("int64")), position, has_gauss, cached)
    return states


def set_rng_states(states: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Put back what ``rng_states`` returned (CUDA's on as many devices as both have; NumPy's when it is loaded)."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["random"])
    for generator, state in zip(generators, states["generators"]):
        generator.set_state(state)
    if "cuda" in states and torch.cuda.is_available():
        for device, state in enumerate(states["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, device)
    numpy = sys.modules.get("numpy")
    if "numpy" in states and numpy is not None:
        kind, keys, position, has_gauss, cached = states["numpy"]
        numpy.random.set_state((kind, keys.numpy().astype("uint32"), position, has_gauss, cached))
