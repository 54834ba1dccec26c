"""The optimizer catalog and its builder (re-exports only; torch is imported lazily)."""

from tuner.optim.build import ManagedOptimizer, build_optimizer, clip_gradients, resolve_params, torch_kwargs
from tuner.optim.catalog import OPTIMIZERS, PARAM_RULES, OptimizerSpec, get_optimizer_spec

__all__ = [
    "OPTIMIZERS",
    "PARAM_RULES",
    "ManagedOptimizer",
    "OptimizerSpec",
    "build_optimizer",
    "clip_gradients",
    "get_optimizer_spec",
    "resolve_params",
    "torch_kwargs",
]
