"""The optimizer catalog: one frozen ``OptimizerSpec`` per optimizer name, in ``OPTIMIZERS``.

A spec names its torch class by dotted path (resolved lazily, so this module never imports torch),
its hyperparameters in the flat names a ``Recipe`` uses (``beta1``, ``beta2``, ``eps``, ``momentum``
...), their default values, their default search space, and the flags the builder and the trainer
need. ``PARAM_RULES`` holds the validity rule of every hyperparameter name the catalog uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

from tuner.errors import lookup
from tuner.space import Beta, Choice, Dimension, Float, Int, TrialLike

WEIGHT_DECAY_MODES = ("coupled", "decoupled")

# ``native_weight_decay`` values: weight-decay mode -> extra torch kwargs that select it.
COUPLED_ONLY: Mapping[str, Mapping[str, Any]] = MappingProxyType({"coupled": {}})
DECOUPLED_ONLY: Mapping[str, Mapping[str, Any]] = MappingProxyType({"decoupled": {}})
BOTH_VIA_FLAG: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {"coupled": {}, "decoupled": {"decoupled_weight_decay": True}}
)
SAME_FOR_BOTH: Mapping[str, Mapping[str, Any]] = MappingProxyType({"coupled": {}, "decoupled": {}})
NO_WEIGHT_DECAY: Mapping[str, Mapping[str, Any]] = MappingProxyType({})


@dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer of the catalog.

    ``defaults`` holds every hyperparameter the optimizer accepts in a recipe (flat names) with its
    default value; ``space`` the ones searched by default. ``packs`` turns flat names into torch's
    tuple arguments (``betas = (beta1, beta2)``). ``native_weight_decay`` maps each weight-decay
    mode the torch class applies itself through ``weight_decay`` to the extra kwargs selecting it
    (``decoupled_weight_decay=True``); a mode not in it is applied by the ``ManagedOptimizer``. ``split``
    names how the model's parameters are divided (see ``tuner.optim.build.SPLITS``): the torch class takes the
    first part, ``companion`` (another catalog name) the rest, with its hyperparameters given as
    ``<companion>_<name>`` and its LR as ``<companion>_lr_ratio`` times the peak LR; ``companion_shares`` are names
    passed on unprefixed.
    """

    name: str
    description: str
    torch_class: str
    defaults: Mapping[str, Any]
    lr: Float
    space: Mapping[str, Dimension]
    family: str
    full_batch_only: bool = False
    needs_sparse: bool = False
    schedule_free: bool = False
    packs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    native_weight_decay: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: COUPLED_ONLY)
    needs_closure: bool = False
    split: str = "all"
    companion: Optional[str] = None
    companion_shares: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.space) - set(self.defaults))
        if unknown:
            raise ValueError(f"{self.name}: space keys {unknown} have no default; defaults: {sorted(self.defaults)}")
        packed = sorted({key for keys in self.packs.values() for key in keys} - set(self.defaults))
        if packed:
            raise ValueError(f"{self.name}: packed keys {packed} have no default")
        if self.lr.low <= 0:
            raise ValueError(f"{self.name}: the lr range needs low > 0, got low={self.lr.low}")

    @property
    def companion_prefix(self) -> str:
        """The prefix of the companion optimizer's hyperparameters (``adamw_``), or ``""``."""
        return f"{self.companion}_" if self.companion else ""

    @property
    def companion_lr_ratio_key(self) -> Optional[str]:
        """The key of the companion's LR ratio (``adamw_lr_ratio``), or None."""
        return f"{self.companion}_lr_ratio" if self.companion else None

    def valid_params(self) -> list[str]:
        """Every key a recipe may set in ``optimizer_params`` for this optimizer, sorted."""
        own = set(self.defaults)
        if self.companion:
            own |= {self.companion_prefix + key for key in OPTIMIZERS[self.companion].defaults}
        return sorted(own)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: name, description, family, torch class, lr, defaults, space, flags."""
        return {
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "torch_class": self.torch_class,
            "lr": self.lr.describe(),
            "defaults": dict(self.defaults),
            "space": {key: dim.describe() for key, dim in self.space.items()},
            "native_weight_decay": sorted(self.native_weight_decay),
            "full_batch_only": self.full_batch_only,
            "needs_sparse": self.needs_sparse,
            "schedule_free": self.schedule_free,
            "companion": self.companion,
            "valid_params": self.valid_params(),
        }

    def suggest_params(self, trial: TrialLike, prefix: str = "") -> dict[str, Any]:
        """Sample this optimizer's space with ``trial`` (parameter names ``prefix + key``)."""
        return {key: dim.suggest(trial, prefix + key) for key, dim in self.space.items()}


@dataclass(frozen=True)
class ParamRule:
    """The validity rule of one hyperparameter name: a predicate and the words that describe it."""

    check: Callable[[Any], bool]
    expected: str


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _interval(low: float, high: float, *, high_open: bool) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return _number(value) and low <= value and (value < high if high_open else value <= high)

    return check


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


def _non_negative(value: Any) -> bool:
    return _number(value) and value >= 0


def _non_positive(value: Any) -> bool:
    return _number(value) and value <= 0


def _count(minimum: int) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _one_of(*options: Any) -> Callable[[Any], bool]:
    return lambda value: any(value is option or (value == option and type(value) is type(option)) for option in options)


_UNIT = ParamRule(_interval(0.0, 1.0, high_open=True), "a number in [0, 1)")
_CLOSED_UNIT = ParamRule(_interval(0.0, 1.0, high_open=False), "a number in [0, 1]")
_POSITIVE = ParamRule(_positive, "a number > 0")
_NON_NEGATIVE = ParamRule(_non_negative, "a number >= 0")
_BOOL = ParamRule(_one_of(True, False), "true or false")

PARAM_RULES: Mapping[str, ParamRule] = {
    "beta1": _UNIT,
    "beta2": _UNIT,
    "momentum": _UNIT,
    "alpha": _UNIT,
    "rho": _CLOSED_UNIT,
    "dampening": _CLOSED_UNIT,
    "eps": _POSITIVE,
    "eps1": ParamRule(lambda v: v is None or _positive(v), "null or a number > 0"),
    "eps2": _POSITIVE,
    "d": _POSITIVE,
    "lr_decay": _NON_NEGATIVE,
    "initial_accumulator_value": _NON_NEGATIVE,
    "momentum_decay": _NON_NEGATIVE,
    "beta2_decay": ParamRule(_non_positive, "a number <= 0"),
    "weight_lr_power": _NON_NEGATIVE,
    "r": _NON_NEGATIVE,
    "warmup_steps": ParamRule(_count(0), "an integer >= 0"),
    "ns_steps": ParamRule(_count(1), "an integer >= 1"),
    "max_iter": ParamRule(_count(1), "an integer >= 1"),
    "history_size": ParamRule(_count(1), "an integer >= 1"),
    "tolerance_grad": _NON_NEGATIVE,
    "tolerance_change": _NON_NEGATIVE,
    "centered": _BOOL,
    "nesterov": _BOOL,
    "amsgrad": _BOOL,
    "adjust_lr_fn": ParamRule(_one_of(None, "original", "match_rms_adamw"), "null, 'original' or 'match_rms_adamw'"),
    "line_search_fn": ParamRule(_one_of(None, "strong_wolfe"), "null or 'strong_wolfe'"),
    "adamw_lr_ratio": _POSITIVE,
    "adam_lr_ratio": _POSITIVE,
}


def check_param(key: str, value: Any, rule_name: Optional[str] = None) -> None:
    """Raise ``ValueError`` naming ``key`` and ``value`` when ``value`` breaks the rule of ``rule_name``."""
    rule = PARAM_RULES[rule_name or key]
    if not rule.check(value):
        raise ValueError(f"{key} must be {rule.expected}, got {key}={value!r}")


# Search ranges shared by several entries.
_BETA1 = Beta(0.8, 0.99)
_BETA2 = Beta(0.9, 0.9999)
_EPS = Float(1e-10, 1e-6, log=True)
_ADAM_DEFAULTS = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
_BETAS = {"betas": ("beta1", "beta2")}
_ADAM_LR = Float(1e-5, 1e-1, log=True)


def _spec(*args: Any, **kwargs: Any) -> tuple[str, OptimizerSpec]:
    spec = OptimizerSpec(*args, **kwargs)
    return spec.name, spec


OPTIMIZERS: dict[str, OptimizerSpec] = dict(
    [
        _spec(
            "sgd",
            "plain SGD: p -= lr * g",
            "torch.optim.SGD",
            defaults={},
            lr=Float(1e-3, 1.0, log=True),
            space={},
            family="sgd",
        ),
        _spec(
            "momentum",
            "heavy-ball SGD: b = mu*b + g; p -= lr * b",
            "torch.optim.SGD",
            defaults={"momentum": 0.9, "dampening": 0.0},
            lr=Float(1e-4, 0.5, log=True),
            space={"momentum": Beta(0.5, 0.99)},
            family="sgd",
        ),
        _spec(
            "nesterov",
            "Nesterov SGD: b = mu*b + g; p -= lr * (g + mu*b)",
            "torch.optim.SGD",
            defaults={"momentum": 0.9, "nesterov": True},
            lr=Float(1e-4, 0.5, log=True),
            space={"momentum": Beta(0.5, 0.99)},
            family="sgd",
        ),
        _spec(
            "adagrad",
            "Adagrad: G += g^2; p -= lr * g / (sqrt(G) + eps)",
            "torch.optim.Adagrad",
            defaults={"lr_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10},
            lr=Float(1e-3, 1.0, log=True),
            space={"initial_accumulator_value": Float(0.0, 0.1)},
            family="adaptive",
        ),
        _spec(
            "rmsprop",
            "RMSprop: v = a*v + (1-a)*g^2; p -= lr * g / (sqrt(v) + eps) (centered: v - mean(g)^2)",
            "torch.optim.RMSprop",
            defaults={"alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "centered": False},
            lr=Float(1e-5, 1e-1, log=True),
            space={
                "alpha": Beta(0.9, 0.999),
                "eps": _EPS,
                "momentum": Beta(0.0, 0.99),
                "centered": Choice((False, True)),
            },
            family="adaptive",
        ),
        _spec(
            "adadelta",
            "Adadelta: u = sqrt(D + eps) / sqrt(v + eps) * g; p -= lr * u (v, D running averages, rho)",
            "torch.optim.Adadelta",
            defaults={"rho": 0.9, "eps": 1e-6},
            lr=Float(1e-2, 10.0, log=True),
            space={"rho": Beta(0.8, 0.99), "eps": Float(1e-8, 1e-4, log=True)},
            family="adaptive",
        ),
        _spec(
            "adam",
            "Adam: p -= lr * m_hat / (sqrt(v_hat) + eps)",
            "torch.optim.Adam",
            defaults={**_ADAM_DEFAULTS, "amsgrad": False},
            lr=_ADAM_LR,
            space={"beta1": _BETA1, "beta2": _BETA2, "eps": _EPS},
            family="adam",
            packs=_BETAS,
            native_weight_decay=BOTH_VIA_FLAG,
        ),
        _spec(
            "adamw",
            "AdamW: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)",
            "torch.optim.AdamW",
            defaults={**_ADAM_DEFAULTS, "amsgrad": False},
            lr=_ADAM_LR,
            space={"beta1": _BETA1, "beta2": _BETA2, "eps": _EPS},
            family="adam",
            packs=_BETAS,
            native_weight_decay=DECOUPLED_ONLY,
        ),
        _spec(
            "nadam",
            "NAdam: Adam with Nesterov momentum (momentum_decay schedules mu_t)",
            "torch.optim.NAdam",
            defaults={**_ADAM_DEFAULTS, "momentum_decay": 4e-3},
            lr=_ADAM_LR,
            space={"beta1": _BETA1, "beta2": _BETA2, "momentum_decay": Float(1e-3, 1e-2, log=True)},
            family="adam",
            packs=_BETAS,
            native_weight_decay=BOTH_VIA_FLAG,
        ),
        _spec(
            "radam",
            "RAdam: Adam with the variance of the adaptive LR rectified (SGD-like first steps)",
            "torch.optim.RAdam",
            defaults=dict(_ADAM_DEFAULTS),
            lr=_ADAM_LR,
            space={"beta1": _BETA1, "beta2": _BETA2, "eps": _EPS},
            family="adam",
            packs=_BETAS,
            native_weight_decay=BOTH_VIA_FLAG,
        ),
        _spec(
            "adamax",
            "Adamax: u = max(beta2*u, |g|); p -= lr * m_hat / u",
            "torch.optim.Adamax",
            defaults=dict(_ADAM_DEFAULTS),
            lr=_ADAM_LR,
            space={"beta1": _BETA1, "beta2": _BETA2},
            family="adam",
            packs=_BETAS,
        ),
        _spec(
            "adafactor",
            "Adafactor: factored second moments; p -= lr_rel * rms(p) * g / sqrt(v_row v_col)",
            "torch.optim.Adafactor",
            defaults={"beta2_decay": -0.8, "eps1": None, "eps2": 1e-3, "d": 1.0},
            lr=Float(1e-4, 1.0, log=True),
            space={"beta2_decay": Float(-1.0, -0.5)},
            family="adaptive",
            packs={"eps": ("eps1", "eps2")},
            native_weight_decay=DECOUPLED_ONLY,
        ),
        _spec(
            "muon",
            "Muon: p -= lr * NewtonSchulz(momentum(g)) on 2-D weight matrices; AdamW on the rest",
            "torch.optim.Muon",
            defaults={
                "momentum": 0.95,
                "nesterov": True,
                "ns_steps": 5,
                "eps": 1e-7,
                "adjust_lr_fn": "match_rms_adamw",
                "adamw_lr_ratio": 1.0,
            },
            lr=Float(1e-4, 1e-1, log=True),
            space={"momentum": Beta(0.8, 0.99), "adamw_lr_ratio": Float(0.1, 10.0, log=True)},
            family="muon",
            native_weight_decay=DECOUPLED_ONLY,
            split="matrices",
            companion="adamw",
        ),
        _spec(
            "schedulefree_adamw",
            "schedule-free AdamW: Adam steps on z, y = mix of z and the average x (no LR decay needed)",
            "schedulefree.AdamWScheduleFree",
            defaults={**_ADAM_DEFAULTS, "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0},
            lr=Float(1e-5, 1e-1, log=True),
            space={"beta1": _BETA1, "beta2": _BETA2},
            family="adam",
            schedule_free=True,
            packs=_BETAS,
            native_weight_decay=DECOUPLED_ONLY,
        ),
        _spec(
            # Weight decay is added to the gradient at y; with no momentum buffer both modes are the same.
            "schedulefree_sgd",
            "schedule-free SGD: z -= lr * g; y = mix of z and the average x (no LR decay needed)",
            "schedulefree.SGDScheduleFree",
            defaults={"momentum": 0.9, "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0},
            lr=Float(1e-3, 10.0, log=True),
            space={"momentum": Beta(0.5, 0.99)},
            family="sgd",
            schedule_free=True,
            native_weight_decay=SAME_FOR_BOTH,
        ),
        _spec(
            "lbfgs",
            "L-BFGS: quasi-Newton direction from the last history_size steps, strong-Wolfe line search",
            "torch.optim.LBFGS",
            defaults={
                "max_iter": 20,
                "history_size": 100,
                "line_search_fn": "strong_wolfe",
                "tolerance_grad": 1e-7,
                "tolerance_change": 1e-9,
            },
            lr=Float(1e-2, 1.0, log=True),
            space={"history_size": Int(5, 100, log=True)},
            family="quasi_newton",
            full_batch_only=True,
            native_weight_decay=NO_WEIGHT_DECAY,
            needs_closure=True,
        ),
        _spec(
            "sparse_adam",
            "SparseAdam on sparse embeddings (lazy Adam: only rows seen in the batch move); Adam on the rest",
            "torch.optim.SparseAdam",
            defaults={**_ADAM_DEFAULTS, "adam_lr_ratio": 1.0},
            lr=_ADAM_LR,
            space={"beta1": _BETA1, "beta2": _BETA2},
            family="adam",
            needs_sparse=True,
            packs=_BETAS,
            native_weight_decay=NO_WEIGHT_DECAY,
            split="sparse",
            companion="adam",
            companion_shares=("beta1", "beta2", "eps"),
        ),
    ]
)


def get_optimizer_spec(name: str) -> OptimizerSpec:
    """The spec of ``name``, or an ``UnknownNameError`` listing the valid optimizer names."""
    return lookup(OPTIMIZERS, "optimizer", name)
