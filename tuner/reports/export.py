"""Export a trial's recipe: YAML, JSON, or a self-contained Python snippet (plain torch, or a LightningModule's hooks).

The Python snippet builds the torch optimizer and an ``LambdaLR`` whose multipliers are the exact
values training used (the schedule evaluated at every optimizer step of the trial's run), so the
LR sequence is identical without depending on ``tuner``. Plateau becomes ``ReduceLROnPlateau``.
"""

from __future__ import annotations

import json
import pprint
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import optuna
import yaml

from tuner.errors import TunerError
from tuner.optim import OPTIMIZERS
from tuner.optim.build import resolve_params, torch_kwargs
from tuner.recipe import Recipe
from tuner.schedules import recipe_schedule

MAX_TABLE_STEPS = 100_000


@dataclass(frozen=True)
class Exported:
    """What an export describes: a trial's recipe and where it came from."""

    recipe: Recipe
    study: str
    trial: int
    value: Optional[float]
    metric: str
    total_steps: Optional[int]


def best_of(study: optuna.Study) -> Exported:
    """The study's best trial, to export."""
    from tuner.study.records import best_record, study_metric

    record = best_record(study)
    return Exported(
        record.to_recipe(), study.study_name, record.number, record.value, study_metric(study), record.total_steps
    )


def export_yaml(exported: Exported) -> str:
    """The recipe as YAML."""
    return yaml.safe_dump(exported.recipe.to_dict(), sort_keys=False)


def export_json(exported: Exported) -> str:
    """The recipe as JSON."""
    return json.dumps(exported.recipe.to_dict(), indent=2)


def export_python(exported: Exported) -> str:
    """A snippet with ``make_optimizer(model)``, ``make_scheduler(optimizer)`` and ``clip_gradients(model)``."""
    if exported.total_steps is None:
        raise TunerError(f"trial {exported.trial} of study {exported.study!r} has no recorded total_steps")
    value = "-" if exported.value is None else f"{exported.value:.6g}"
    return python_snippet(
        exported.recipe,
        exported.total_steps,
        header=f"best trial {exported.trial} of study {exported.study!r}, {exported.metric} = {value}",
    )


def python_snippet(recipe: Recipe, total_steps: int, header: str = "") -> str:
    """The Python source that builds ``recipe``'s torch optimizer, scheduler and clipping for ``total_steps``
    steps, with ``header`` in its docstring."""
    spec = OPTIMIZERS[recipe.optimizer]
    _check_exportable(recipe, spec)
    kwargs = torch_kwargs(spec, resolve_params(spec, recipe.optimizer_params))
    if recipe.weight_decay:
        kwargs.update(weight_decay=recipe.weight_decay, **spec.native_weight_decay[recipe.weight_decay_mode])
    module, _, cls = spec.torch_class.rpartition(".")
    lines = [
        f'"""Exported by `tuner export`: {header}.',
        "",
        f"Recipe: {recipe.optimizer}, peak lr {recipe.lr:.6g}, "
        f"schedule {recipe.schedule} {dict(recipe.schedule_params)},",
        f"warmup {recipe.warmup} ({recipe.warmup_kind}), batch size {recipe.batch_size}, "
        f"{total_steps} optimizer steps.",
        "Per batch: loss.backward(); clip_gradients(model); optimizer.step(); scheduler.step(); optimizer.zero_grad()",
        '"""',
        f"import {module}" if module != "torch.optim" else "import torch",
        "import torch" if module != "torch.optim" else "",
        "",
        f"PEAK_LR = {recipe.lr!r}",
        f"TOTAL_STEPS = {total_steps}",
        f"OPTIMIZER_KWARGS = {pprint.pformat(kwargs, width=100)}",
        "",
        "",
        "def make_optimizer(model):",
        f"    return {spec.torch_class}(model.parameters(), lr=PEAK_LR, **OPTIMIZER_KWARGS)",
        "",
        "",
        *_scheduler_lines(recipe, total_steps),
        "",
        "",
        "def clip_gradients(model):",
        *_clip_lines(recipe),
    ]
    return "\n".join(line for i, line in enumerate(lines) if line or lines[i - 1]) + "\n"


def _check_exportable(recipe: Recipe, spec: Any) -> None:
    problems = []
    if spec.companion:
        problems.append(f"{spec.name} builds two optimizers over split parameter groups")
    if recipe.switch is not None:
        problems.append("an optimizer switch")
    if recipe.weight_decay and recipe.weight_decay_mode not in spec.native_weight_decay:
        problems.append(f"{recipe.weight_decay_mode} weight decay, which {spec.torch_class} does not apply itself")
    if problems:
        raise TunerError("--format python cannot express " + " and ".join(problems) + "; use --format yaml")


def _scheduler_lines(recipe: Recipe, total_steps: int) -> list[str]:
    schedule = recipe_schedule(recipe, total_steps)
    if hasattr(schedule, "report"):
        return _plateau_lines(recipe)
    if total_steps > MAX_TABLE_STEPS:
        raise TunerError(
            f"--format python tabulates the schedule and supports up to {MAX_TABLE_STEPS} steps, got {total_steps}"
        )
    table = [schedule(step) for step in range(total_steps)]
    return [
        "# The schedule's multiplier of PEAK_LR at every optimizer step, exactly as training used it.",
        f"LR_MULTIPLIERS = {pprint.pformat(table, width=110, compact=True)}",
        "",
        "",
        "def make_scheduler(optimizer):",
        "    return torch.optim.lr_scheduler.LambdaLR(",
        "        optimizer, lambda step: LR_MULTIPLIERS[min(step, TOTAL_STEPS - 1)])",
    ]


def _plateau_lines(recipe: Recipe) -> list[str]:
    from tuner.schedules import schedule_params

    params = schedule_params("plateau", recipe.schedule_params)
    warn = ["# note: the recipe warms up first; ReduceLROnPlateau has no warmup"] if recipe.warmup else []
    return [
        *warn,
        "def make_scheduler(optimizer):",
        "    # call scheduler.step(validation_loss) after each evaluation",
        "    return torch.optim.lr_scheduler.ReduceLROnPlateau(",
        f"        optimizer, mode='min', factor={params['factor']!r}, patience={params['patience']!r},",
        f"        cooldown={params['cooldown']!r}, threshold={params['threshold']!r}, threshold_mode='rel',",
        f"        min_lr=PEAK_LR * {params['min_factor']!r})",
    ]


def _clip_lines(recipe: Recipe) -> list[str]:
    lines = []
    if recipe.clip_value is not None:
        lines.append(f"    torch.nn.utils.clip_grad_value_(model.parameters(), {recipe.clip_value!r})")
    if recipe.clip_norm is not None:
        lines.append(f"    torch.nn.utils.clip_grad_norm_(model.parameters(), {recipe.clip_norm!r})")
    return lines or ["    pass  # the recipe does not clip gradients"]


def export_lightning(exported: Exported) -> str:
    """``--format python`` plus the LightningModule hooks: ``configure_optimizers`` (scheduler stepped every optimizer
    step, or on ``val_loss`` each epoch for plateau) and, when the recipe clips, ``configure_gradient_clipping``."""
    recipe = exported.recipe
    snippet = export_python(exported)
    plateau = "ReduceLROnPlateau" in snippet
    scheduler = (
        '{"scheduler": make_scheduler(optimizer), "monitor": "val_loss", "interval": "epoch"}'
        if plateau
        else '{"scheduler": make_scheduler(optimizer), "interval": "step", "frequency": 1}'
    )
    lines = [
        "",
        "",
        "# --- PyTorch Lightning: paste these methods into your LightningModule ---",
        "",
        "def configure_optimizers(self):",
        "    optimizer = make_optimizer(self)",
        f'    return {{"optimizer": optimizer, "lr_scheduler": {scheduler}}}',
    ]
    if recipe.clip_norm is not None or recipe.clip_value is not None:
        lines += [
            "",
            "",
            "def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):",
            "    clip_gradients(self)  # the recipe's clipping (leave the Trainer's gradient_clip_val unset)",
        ]
    return snippet + "\n".join(lines) + "\n"


EXPORTERS: dict[str, Callable[[Exported], str]] = {
    "yaml": export_yaml,
    "json": export_json,
    "python": export_python,
    "lightning": export_lightning,
}
