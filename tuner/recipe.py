"""The Recipe: the one currency every layer exchanges.

Search produces it, training consumes it, tracking logs it flat, export prints it as code and lock
files store it. If a layer needs something that is not here, the Recipe is missing a field.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Optional

WeightDecayMode = Literal["coupled", "decoupled"]
WarmupKind = Literal["linear", "exponential"]


@dataclass(frozen=True)
class Switch:
    """Change optimizer part-way: train with the first, then continue with ``optimizer`` from
    ``at_fraction`` of the total steps on, at peak LR ``lr`` (the schedule multiplier still applies)."""

    optimizer: str
    at_fraction: float
    lr: float
    optimizer_params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 < self.at_fraction < 1:
            raise ValueError(f"switch.at_fraction must be in (0, 1), got at_fraction={self.at_fraction}")
        if not self.lr > 0:
            raise ValueError(f"switch.lr must be > 0, got lr={self.lr}")


@dataclass(frozen=True)
class Recipe:
    """Everything that defines how a model is optimized.

    ``lr`` is the peak learning rate; the schedule returns a multiplier of it at each optimizer step.
    ``warmup`` is a duration in front of the schedule: an int >= 1 is a number of steps, a float in
    [0, 1) a fraction of the total steps. ``weight_decay_mode`` "coupled" adds ``wd * p`` to the
    gradient (L2); "decoupled" shrinks the weights directly (AdamW style).
    """

    optimizer: str
    lr: float
    optimizer_params: dict[str, Any] = field(default_factory=dict)
    weight_decay: float = 0.0
    weight_decay_mode: WeightDecayMode = "coupled"
    clip_norm: Optional[float] = None
    clip_value: Optional[float] = None
    schedule: str = "constant"
    schedule_params: dict[str, Any] = field(default_factory=dict)
    warmup: float = 0
    warmup_kind: WarmupKind = "linear"
    batch_size: Optional[int] = 64
    switch: Optional[Switch] = None

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got weight_decay={self.weight_decay}")
        if self.weight_decay_mode not in ("coupled", "decoupled"):
            raise ValueError(f"weight_decay_mode must be 'coupled' or 'decoupled', got {self.weight_decay_mode!r}")
        for name in ("clip_norm", "clip_value"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or null, got {name}={value}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got warmup={self.warmup}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 or null (full batch), got batch_size={self.batch_size}")

    def warmup_steps(self, total_steps: int) -> int:
        """The warmup duration in optimizer steps for a run of ``total_steps``."""
        return resolve_duration(self.warmup, total_steps, "warmup")

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-ready dict (the inverse of ``from_dict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The Recipe of a dict made by ``to_dict`` (a ``switch`` dict becomes a ``Switch``)."""
        data = dict(data)
        switch = data.get("switch")
        if isinstance(switch, dict):
            data["switch"] = Switch(**switch)
        return cls(**data)

    def flat(self) -> dict[str, Any]:
        """Flat ``key: scalar`` pairs for tracking (``optimizer_params.beta2`` style keys)."""
        out: dict[str, Any] = {}
        _flatten(self.to_dict(), "", out)
        return out


def resolve_duration(value: float, total_steps: int, name: str) -> int:
    """An int >= 1 is a number of steps; a float in [0, 1) is a fraction of ``total_steps``."""
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value}")
    if isinstance(value, float) and value < 1:
        return int(round(value * total_steps))
    if float(value) != int(value):
        raise ValueError(f"{name} must be a whole number of steps or a fraction in [0, 1), got {name}={value}")
    return int(value)


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else key, out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
