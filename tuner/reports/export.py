"""Export a trial's recipe: YAML, JSON, or a self-contained Python snippet (plain torch, or a LightningModule's hooks);
or its trained weights (``write_model``, ``--format checkpoint``: the ``model.pt`` a ``save_model`` study kept).

The Python snippet imports torch and the optimizer's own package, never tuner:

* ``make_optimizer(model)``: the torch optimizer with the recipe's hyperparameters at the peak LR. With an optimizer
  ``switch`` it is ``make_optimizer(model, total_steps)`` and returns a ``SwitchingOptimizer``: the first optimizer,
  then a fresh second one at its own peak LR from step ``round(at_fraction * total_steps)`` on, as tuner's trainer.
* ``make_scheduler(optimizer, total_steps)``: a ``LambdaLR`` over ``lr_multiplier(step, total_steps)``, the recipe's
  schedule and warmup in closed form (``tuner.reports.schedule_code``), right for a run of any length;
  ``scheduler.step()`` after every optimizer step. A plateau recipe gets its warmup then ``ReduceLROnPlateau``
  (``WarmupThenPlateau``): ``scheduler.step()`` after every optimizer step, ``scheduler.step(val_loss)`` after
  each evaluation, and only the evaluations after the warmup count, as in tuner's trainer.
* ``clip_gradients(model)``: the recipe's clipping, between ``backward()`` and ``optimizer.step()``.

muon and sparse_adam (two torch optimizers over split parameter groups) and a weight decay mode the torch class does
not apply itself are refused with the reason: export those as YAML and build them with tuner (``tuner.Trial.build``).
"""

from __future__ import annotations

import json
import pprint
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import optuna
import yaml

from tuner.errors import TunerError
from tuner.optim import OPTIMIZERS
from tuner.optim.build import resolve_params, torch_kwargs, weight_decay_kwargs
from tuner.optim.catalog import OptimizerSpec
from tuner.recipe import Recipe
from tuner.reports.schedule_code import SCHEDULE_CODE, plateau_params, schedule_source, warmup_source
from tuner.schedules import PLATEAU_EPS, SCHEDULES


@dataclass(frozen=True)
class Exported:
    """What an export describes: a trial's recipe and where it came from."""

    recipe: Recipe
    study: str
    trial: int
    value: Optional[float]
    metric: str
    total_steps: Optional[int]
    best: bool = True
    state: str = "COMPLETE"
    model: Optional[str] = None  # the file of the trial's final weights (save_model), when it was kept


def best_of(study: optuna.Study) -> Exported:
    """The study's best trial, to export."""
    from tuner.study.records import best_record

    return _exported(study, best_record(study), best=True)


def trial_of(study: optuna.Study, number: int) -> Exported:
    """Trial ``number`` of the study, to export (``TunerError`` when there is no such trial or it has no recipe)."""
    from tuner.study.records import trial_record

    return _exported(study, trial_record(study, number), best=False)


def _exported(study: optuna.Study, record: Any, *, best: bool) -> Exported:
    from tuner.study.records import study_metric

    return Exported(
        record.to_recipe(),
        study.study_name,
        record.number,
        record.value,
        study_metric(study),
        record.total_steps,
        best,
        record.state,
        record.model,
    )


def export_yaml(exported: Exported) -> str:
    """The recipe as YAML."""
    return yaml.safe_dump(exported.recipe.to_dict(), sort_keys=False)


def export_json(exported: Exported) -> str:
    """The recipe as JSON."""
    return json.dumps(exported.recipe.to_dict(), indent=2)


def export_python(exported: Exported) -> str:
    """A snippet with ``make_optimizer``, ``make_scheduler(optimizer, total_steps)`` and ``clip_gradients(model)``."""
    value = "-" if exported.value is None else f"{exported.value:.6g}"
    which = "best trial" if exported.best else f"{exported.state.lower()} trial"
    return python_snippet(
        exported.recipe,
        exported.total_steps,
        header=f"{which} {exported.trial} of study {exported.study!r}, {exported.metric} = {value}",
    )


def python_snippet(recipe: Recipe, total_steps: Optional[int] = None, header: str = "") -> str:
    """The Python source that builds ``recipe``'s torch optimizer, scheduler and clipping for a run of any number of
    optimizer steps, with ``header`` in its docstring (``total_steps``: the trial's run, named there if known)."""
    spec = OPTIMIZERS[recipe.optimizer]
    switch_spec = OPTIMIZERS[recipe.switch.optimizer] if recipe.switch is not None else None
    _check_exportable(recipe, spec, switch_spec)
    plateau = SCHEDULES[recipe.schedule].metric_driven
    source = warmup_source(recipe) if plateau else schedule_source(recipe)
    modules = {"torch", *source.imports, *(_module(s) for s in (spec, switch_spec) if s is not None)}
    blocks = [
        _docstring(recipe, total_steps, header, [s for s in (spec, switch_spec) if s is not None], plateau),
        "\n".join(f"import {name}" for name in sorted(modules)),
        "\n".join(_constants(recipe, spec, switch_spec)),
        *(_switch_blocks(spec, switch_spec) if switch_spec is not None else [_make_optimizer(spec)]),
        source.code,
        *(_plateau_blocks(recipe) if plateau else [_make_lambda_scheduler()]),
        _clip_block(recipe),
    ]
    return blocks[0] + "\n\n" + "\n\n\n".join(block.strip("\n") for block in blocks[1:]) + "\n"


def _module(spec: OptimizerSpec) -> str:
    """What the snippet imports for the optimizer's class: torch, or the class's own package."""
    module = spec.torch_class.rpartition(".")[0]
    return "torch" if module.split(".")[0] == "torch" else module


def _check_exportable(recipe: Recipe, spec: OptimizerSpec, switch_spec: Optional[OptimizerSpec]) -> None:
    problems = []
    for optimizer in (spec, switch_spec):
        if optimizer is None:
            continue
        if optimizer.companion:
            problems.append(
                f"{optimizer.name}, which builds two optimizers over split parameter groups "
                f"({optimizer.torch_class} and {optimizer.companion} for the rest)"
            )
        if weight_decay_kwargs(optimizer, recipe.weight_decay, recipe.weight_decay_mode)[1] is not None:
            problems.append(
                f"{recipe.weight_decay_mode} weight decay, which {optimizer.torch_class} does not apply itself"
            )
    if recipe.schedule not in SCHEDULE_CODE and not SCHEDULES[recipe.schedule].metric_driven:
        problems.append(f"schedule {recipe.schedule!r}, which has no closed form to write out")
    if problems:
        raise TunerError(
            "--format python cannot express " + " and ".join(problems) + "; use --format yaml and build the recipe "
            "with tuner (tuner.Trial.build)"
        )


def _docstring(
    recipe: Recipe, total_steps: Optional[int], header: str, specs: list[OptimizerSpec], plateau: bool
) -> str:
    switch = recipe.switch
    make = "make_optimizer(model, total_steps)" if switch is not None else "make_optimizer(model)"
    if any(spec.needs_closure for spec in specs):
        per_batch = [
            "        def closure():",
            "            optimizer.zero_grad()",
            "            loss = ...  # forward",
            "            loss.backward()",
            "            clip_gradients(model)",
            "            return loss",
            "        optimizer.step(closure)",
            "        scheduler.step()",
        ]
    else:
        per_batch = [
            "        loss = ...  # forward",
            "        loss.backward()",
            "        clip_gradients(model)",
            "        optimizer.step()",
            "        scheduler.step()",
            "        optimizer.zero_grad()",
        ]
    if plateau:
        per_batch.append("    after each evaluation: scheduler.step(val_loss)  # the plateau (after the warmup)")
    lines = [
        f'"""Exported by `tuner export`: {header}.',
        "",
        f"Recipe: {recipe.optimizer}, peak lr {recipe.lr:.6g}, schedule {recipe.schedule} "
        f"{dict(recipe.schedule_params)}, warmup {recipe.warmup!r} ({recipe.warmup_kind}), batch size "
        f"{recipe.batch_size}.",
    ]
    if switch is not None:
        lines.append(
            f"Switch: to {switch.optimizer} at {switch.at_fraction:.4g} of the run, peak lr {switch.lr:.6g} "
            f"(the schedule's multiplier applies to it too)."
        )
    if total_steps is not None:
        lines.append(f"The trial ran {total_steps} optimizer steps; pass your run's own number as total_steps.")
    lines += [
        "",
        f"    optimizer = {make}",
        "    scheduler = make_scheduler(optimizer, total_steps)  # total_steps: optimizer steps of the whole run",
        "    for each batch:",
        *per_batch,
    ]
    if any(spec.schedule_free for spec in specs):
        lines.append("    schedule-free: optimizer.train() before training steps, optimizer.eval() before evaluating")
    return "\n".join(lines) + '\n"""'


def _kwargs(spec: OptimizerSpec, params: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The torch constructor's keyword arguments, weight decay included exactly as tuner builds them (a class whose
    default decay is not 0, AdamW's 0.01, gets the recipe's 0.0)."""
    decay, _ = weight_decay_kwargs(spec, recipe.weight_decay, recipe.weight_decay_mode)
    return {**torch_kwargs(spec, resolve_params(spec, params)), **decay}


def _constants(recipe: Recipe, spec: OptimizerSpec, switch_spec: Optional[OptimizerSpec]) -> list[str]:
    lines = [
        f"PEAK_LR = {recipe.lr!r}",
        f"OPTIMIZER_KWARGS = {pprint.pformat(_kwargs(spec, recipe.optimizer_params, recipe), width=100)}",
    ]
    switch = recipe.switch
    if switch is not None and switch_spec is not None:
        lines += [
            f"SWITCH_AT_FRACTION = {switch.at_fraction!r}  # of the run's optimizer steps",
            f"SWITCH_LR = {switch.lr!r}  # the second optimizer's peak LR",
            f"SWITCH_KWARGS = {pprint.pformat(_kwargs(switch_spec, switch.optimizer_params, recipe), width=100)}",
        ]
    return lines


def _make_optimizer(spec: OptimizerSpec) -> str:
    train = "\n    optimizer.train()  # schedule-free: train() before training steps, eval() before evaluating" * (
        spec.schedule_free
    )
    return f'''
def make_optimizer(model):
    """{spec.torch_class} over the model's parameters at the peak LR (make_scheduler scales it)."""
    optimizer = {spec.torch_class}(model.parameters(), lr=PEAK_LR, **OPTIMIZER_KWARGS){train}
    return optimizer
'''


def _switch_blocks(spec: OptimizerSpec, switch_spec: OptimizerSpec) -> list[str]:
    first, second = spec.torch_class, switch_spec.torch_class
    return [
        f'''
def make_optimizer(model, total_steps):
    """{first}, then {second} from optimizer step round(SWITCH_AT_FRACTION * total_steps) on."""
    return SwitchingOptimizer(model.parameters(), total_steps)
''',
        '''
def set_mode(optimizer, mode):
    """optimizer.train() or .eval(): schedule-free optimizers move their weights; torch's own have neither."""
    getattr(optimizer, mode, lambda: None)()
''',
        f'''
class SwitchingOptimizer(torch.optim.Optimizer):
    """{first} until optimizer step `switch_step`, then a fresh {second} at its own peak LR (SWITCH_LR).

    One param group holds every parameter; its lr is PEAK_LR times the schedule's multiplier (make_scheduler drives it,
    LR monitors read it), and each step() gives the active optimizer its own peak LR times that multiplier.
    """

    def __init__(self, params, total_steps):
        params = [p for p in params if p.requires_grad]
        super().__init__(params, {{"lr": PEAK_LR}})
        self.first = {first}(params, lr=PEAK_LR, **OPTIMIZER_KWARGS)
        self.second = {second}(params, lr=SWITCH_LR, **SWITCH_KWARGS)
        set_mode(self.first, "train")
        set_mode(self.second, "train")
        self.switch_step = int(round(SWITCH_AT_FRACTION * total_steps))
        self.steps_taken, self.switched = 0, False
        self.switch_if_due()

    @property
    def active(self):
        """The optimizer in use."""
        return self.second if self.switched else self.first

    def switch_if_due(self):
        """Hand over once `switch_step` steps are done, before the next forward pass (a schedule-free first optimizer
        hands over its averaged weights, which the switch step's gradients are then computed at)."""
        if not self.switched and self.steps_taken >= self.switch_step:
            set_mode(self.first, "eval")
            set_mode(self.second, "train")
            self.switched = True

    def step(self, closure=None):
        multiplier = self.param_groups[0]["lr"] / PEAK_LR
        peak = SWITCH_LR if self.switched else PEAK_LR
        for group in self.active.param_groups:
            group["lr"] = peak * multiplier
        loss = self.active.step(closure)
        self.steps_taken += 1
        self.switch_if_due()
        return loss

    def train(self):
        """Before training steps (schedule-free: the weights move to y; otherwise nothing)."""
        set_mode(self.active, "train")

    def eval(self):
        """Before evaluating (schedule-free: the weights move to the average x; otherwise nothing)."""
        set_mode(self.active, "eval")

    def state_dict(self):
        return {{
            "steps_taken": self.steps_taken,
            "switched": self.switched,
            "lr": self.param_groups[0]["lr"],
            "first": self.first.state_dict(),
            "second": self.second.state_dict(),
        }}

    def load_state_dict(self, state_dict):
        self.first.load_state_dict(state_dict["first"])
        self.second.load_state_dict(state_dict["second"])
        self.steps_taken, self.switched = state_dict["steps_taken"], state_dict["switched"]
        self.param_groups[0]["lr"] = state_dict["lr"]
''',
    ]


_CHECK_TOTAL_STEPS = """
def check_total_steps(total_steps):
    if not 0 <= warmup_steps(total_steps) < total_steps:
        raise ValueError(f"the warmup ({WARMUP!r}) must be shorter than the run, got total_steps={total_steps}")
"""


def _make_lambda_scheduler() -> str:
    return (
        _CHECK_TOTAL_STEPS
        + '''

def make_scheduler(optimizer, total_steps):
    """LambdaLR for a run of `total_steps` optimizer steps: the LR at step t is PEAK_LR * lr_multiplier(t, total_steps).
    Call scheduler.step() after every optimizer.step()."""
    check_total_steps(total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps))
'''
    )


def _plateau_blocks(recipe: Recipe) -> list[str]:
    params = plateau_params(recipe)
    return [
        _CHECK_TOTAL_STEPS,
        '''
class Warmup(torch.optim.lr_scheduler.LRScheduler):
    """The recipe's warmup over the first warmup_steps(total_steps) optimizer steps, up to PEAK_LR; after it, it
    leaves the LR to ReduceLROnPlateau. step() after every optimizer step."""

    def __init__(self, optimizer, total_steps):
        self.warmup_steps = warmup_steps(total_steps)
        super().__init__(optimizer)

    def get_lr(self):
        if self.last_epoch < self.warmup_steps:
            return [base * warmup_ramp(self.last_epoch, self.warmup_steps) for base in self.base_lrs]
        if self.last_epoch == self.warmup_steps:
            return list(self.base_lrs)
        return [group["lr"] for group in self.optimizer.param_groups]
''',
        f'''
class PlateauAfterWarmup(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """ReduceLROnPlateau on the validation loss that counts only the evaluations after the warmup (as tuner's trainer):
    step(val_loss) after each evaluation."""

    def __init__(self, optimizer, warmup):
        self.warmup = warmup
        super().__init__(
            optimizer,
            mode="min",
            factor={params["factor"]!r},
            patience={params["patience"]!r},
            cooldown={params["cooldown"]!r},
            threshold={params["threshold"]!r},
            threshold_mode="rel",
            min_lr=PEAK_LR * {params["min_factor"]!r},
            eps=PEAK_LR * {PLATEAU_EPS!r},
        )

    def step(self, metrics, epoch=None):
        if self.warmup.last_epoch > self.warmup.warmup_steps:
            super().step(metrics)

    def state_dict(self):
        return {{key: value for key, value in super().state_dict().items() if key != "warmup"}}
''',
        '''
class WarmupThenPlateau:
    """The recipe's warmup, then ReduceLROnPlateau: step() after every optimizer step, step(val_loss) after each
    evaluation."""

    def __init__(self, optimizer, total_steps):
        self.warmup = Warmup(optimizer, total_steps)
        self.plateau = PlateauAfterWarmup(optimizer, self.warmup)

    def step(self, val_loss=None):
        if val_loss is None:
            self.warmup.step()
        else:
            self.plateau.step(val_loss)

    def get_last_lr(self):
        return [group["lr"] for group in self.warmup.optimizer.param_groups]

    def state_dict(self):
        return {"warmup": self.warmup.state_dict(), "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state_dict):
        self.warmup.load_state_dict(state_dict["warmup"])
        self.plateau.load_state_dict(state_dict["plateau"])
''',
        '''
def make_scheduler(optimizer, total_steps):
    """The warmup, then ReduceLROnPlateau, for a run of `total_steps` optimizer steps: call scheduler.step() after
    every optimizer.step() and scheduler.step(val_loss) after each evaluation."""
    check_total_steps(total_steps)
    return WarmupThenPlateau(optimizer, total_steps)
''',
    ]


def _clip_block(recipe: Recipe) -> str:
    lines = []
    if recipe.clip_value is not None:
        lines.append(f"    torch.nn.utils.clip_grad_value_(model.parameters(), {recipe.clip_value!r})")
    if recipe.clip_norm is not None:
        lines.append(f"    torch.nn.utils.clip_grad_norm_(model.parameters(), {recipe.clip_norm!r})")
    body = "\n".join(lines or ["    pass  # the recipe does not clip gradients"])
    return f'''
def clip_gradients(model):
    """The recipe's clipping: call it between loss.backward() and optimizer.step()."""
{body}
'''


def export_lightning(exported: Exported) -> str:
    """``--format python`` plus the LightningModule hooks: ``configure_optimizers`` (the run's length from
    ``trainer.estimated_stepping_batches``; the scheduler stepped every optimizer step, and for plateau
    ``ReduceLROnPlateau`` on ``val_loss`` each epoch) and, when the recipe clips, ``configure_gradient_clipping``."""
    recipe = exported.recipe
    snippet = export_python(exported)
    make = "make_optimizer(self, total_steps)" if recipe.switch is not None else "make_optimizer(self)"
    if SCHEDULES[recipe.schedule].metric_driven:
        returned = [
            "    return [optimizer], [",
            '        {"scheduler": scheduler.warmup, "interval": "step", "frequency": 1},',
            '        {"scheduler": scheduler.plateau, "monitor": "val_loss", "interval": "epoch", "frequency": 1},',
            "    ]",
        ]
    else:
        returned = [
            '    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", '
            '"frequency": 1}}'
        ]
    lines = [
        "",
        "",
        "# --- PyTorch Lightning: paste these methods into your LightningModule ---",
        "",
        "def configure_optimizers(self):",
        "    total_steps = int(self.trainer.estimated_stepping_batches)  # the run's optimizer steps",
        f"    optimizer = {make}",
        "    scheduler = make_scheduler(optimizer, total_steps)",
        *returned,
    ]
    if recipe.clip_norm is not None or recipe.clip_value is not None:
        lines += [
            "",
            "",
            "def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):",
            "    clip_gradients(self)  # the recipe's clipping (leave the Trainer's gradient_clip_val unset)",
        ]
    return snippet + "\n".join(lines) + "\n"


def write_model(exported: Exported, output: Path) -> Path:
    """``tuner export --format checkpoint``: copy the trial's final weights (``model.pt``, a ``state_dict`` for
    ``model.load_state_dict(torch.load(path))``) to ``output``. ``TunerError`` when the study kept none for it."""
    where = f"trial {exported.trial} of study {exported.study!r}"
    if exported.model is None:
        raise TunerError(
            f"{where} has no saved model: run the study with save_model: true (the keep_best best complete trials "
            f"keep their final weights)"
        )
    source = Path(exported.model)
    if not source.is_file():
        raise TunerError(
            f"{where}: its model {source} is gone (keep_best keeps the best trials' only; a checkpoint_dir on another "
            f"machine is not seen here -- the best model is also an artifact of the study's MLflow parent run)"
        )
    shutil.copyfile(source, output)
    return output


EXPORTERS: dict[str, Callable[[Exported], str]] = {
    "yaml": export_yaml,
    "json": export_json,
    "python": export_python,
    "lightning": export_lightning,
}
