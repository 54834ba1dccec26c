"""``fit_population(task, recipes, budget, ...)``: train many recipes of one task in one vectorized pass.

Same contract as ``tuner.train.fit``, per member: member ``i`` trains ``task``'s model with ``recipes[i]`` and
``seeds[i]``, hears ``on_eval[i]`` at each evaluation (returning True stops that member only) and gets its own
``FitResult``. Under the hood the members' parameters are stacked (``torch.func.stack_module_state``) in one
flat ``(N, P)`` buffer. A model of known layers runs on the stacks directly, forward and backward by hand
(``tuner.train.stacked``); any other model through ``vmap(functional_call)`` and autograd. The loss is the task's
``population_loss`` hook when it has one (``SimpleTask``'s stock losses), else ``vmap(task.loss)``; validation
metrics likewise use ``population_metrics``. ``BatchedOptimizer`` applies each member's own optimizer
hyperparameters, LR schedule, weight decay and clipping; members of different update rules share a stack, each
rule updating its own block of rows (``BlockOptimizer``).

Exactness. Each member equals training it alone with ``fit``: the same model init (``build_model`` right
after ``torch.manual_seed(seed)``), the same data order (each member's own ``torch.randperm`` generator seeded
by its seed -- members gather their own mini-batches from the shared data, so different seeds need no
grouping), the same update rules (tests/test_batched.py, 1e-5 relative in float32).

Members that stop (pruned, diverged, early-stopped) leave the stacks at once, so they cost nothing after; a
NaN stays in its member's rows (every operation is per member). Members that cannot be stacked -- an
optimizer without a batched rule, an optimizer switch, a model vmap cannot run (BatchNorm running statistics,
dropout's random masks and other buffers or randomness fall back: they would not reproduce ``fit``) -- train
sequentially with ``fit``, after one ``PopulationFallbackWarning``; so does every member of a task that streams its
data from loaders, or of a budget asking for mixed precision, accumulation, ``torch.compile`` or channels-last
(``population_blocker``).

Population-based training (``pbt=``, ``tuner.train.pbt``) is a hook of this same pass: after an evaluation that is an
exploit round, ``_Population._exploit`` copies the rows ``Explorer.decide`` picks. It never falls back: what would
train sequentially is a ``TunerError`` (members must share the stacks to copy each other).
"""

from __future__ import annotations

import copy
import ctypes
import functools
import math
import random
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch.func import functional_call, stack_module_state, vmap

from tuner.errors import TunerError
from tuner.optim.batched import BlockOptimizer, population_key
from tuner.recipe import Recipe
from tuner.schedules import recipe_schedule
from tuner.tasks import Task, loaders_of
from tuner.tasks.base import population_hooks, stacked_cross_entropy
from tuner.train.compute import resolve_device, seed_everything
from tuner.train.data import EVAL_CHUNK, data_on_device
from tuner.train.pbt import Explorer, Lineage, PBTConfig, check_pbt_recipe
from tuner.train.progress import MIN_LOSS_SCALE, FitResult, OnEval, RunProgress, TrainBudget, plan_steps
from tuner.train.stacked import StackedNet, cross_entropy_with_grad
from tuner.train.trainer import fit

OnEvaluated = Callable[[int, dict[int, dict[str, float]]], None]

MEMORY_SHARE = 0.5
"""Fraction of the free device memory a population may plan to use (the cap on its size)."""


class PopulationFallbackWarning(UserWarning):
    """Some members train sequentially (the reason says why)."""


def fit_population(
    task: Task,
    recipes: Sequence[Recipe],
    budget: TrainBudget,
    *,
    seeds: Sequence[int],
    on_eval: Optional[Sequence[Optional[OnEval]]] = None,
    on_evaluated: Optional[OnEvaluated] = None,
    metric: Optional[str] = None,
    direction: Optional[str] = None,
    device: str = "auto",
    deterministic: bool = False,
    max_members: Optional[int] = None,
    keep_params: bool = False,
    pbt: Optional[PBTConfig] = None,
) -> list[FitResult]:
    """Train ``recipes`` (member ``i`` with ``seeds[i]`` and ``on_eval[i]``); one ``FitResult`` each, in order.

    Members are grouped by what must match to stack them (the batch size, and an update rule with a batched
    implementation); each group trains in vectorized passes of at most ``max_members`` (default: what fits in
    ``MEMORY_SHARE`` of the free device memory). ``keep_params`` puts each member's final parameters (with
    ``objective: best``: those of its best evaluation) in ``result.extras["params"]``.
    ``on_evaluated(step, {i: metrics})``, when given, hears the finite metrics of every member of a vectorized
    pass evaluated at ``step`` before any of their ``on_eval`` (a pruner comparing members with their peers).

    ``pbt``: population-based training (``tuner.train.pbt``): every ``pbt.interval`` evaluations the bottom members
    copy the top ones' rows and perturb their hyperparameters; each result's ``extras["pbt"]`` is its
    ``Lineage.to_dict()`` (the recipe and seed that replay it with ``fit``). The members must share one stack:
    where they cannot (what would fall back to sequential training), ``TunerError`` says why.
    """
    if len(seeds) != len(recipes):
        raise ValueError(f"need one seed per recipe, got {len(recipes)} recipes and {len(seeds)} seeds")
    callbacks = list(on_eval) if on_eval is not None else [None] * len(recipes)
    if len(callbacks) != len(recipes):
        raise ValueError(f"need one on_eval per recipe, got {len(recipes)} recipes and {len(callbacks)} callbacks")
    metric = metric or task.metric
    members = [_Member(i, r, s, callbacks[i]) for i, (r, s) in enumerate(zip(recipes, seeds))]
    common = _Common(
        task,
        budget,
        metric,
        direction or task.directions.get(metric, task.direction),
        resolve_device(device),
        deterministic,
        keep_params,
        on_evaluated or _nobody,
        Explorer(pbt) if pbt is not None else None,
    )
    if pbt is not None:
        _check_pbt(members, budget, max_members)
    blocker = population_blocker(task, budget)
    if blocker is not None:
        results = _sequential(common, members, blocker)
    else:
        results = {}
        for key, group in _groups(members).items():
            results.update(_train_group(common, group, key is not None, max_members))
    return [results[i] for i in range(len(recipes))]


def population_blocker(task: Task, budget: TrainBudget) -> Optional[str]:
    """Why no member can train stacked, whatever its recipe -- streamed data, or steps the stacks do not compute
    (mixed precision, gradient accumulation, ``torch.compile``, channels-last) -- or None."""
    if loaders_of(task) is not None:
        return "the task streams its data from loaders (a population trains on in-memory data)"
    asked = [f"precision {budget.precision}"] if budget.precision != "fp32" else []
    asked += [f"accumulate {budget.accumulate}"] if budget.accumulate > 1 else []
    asked += [name for name in ("compile", "channels_last") if getattr(budget, name)]
    if asked:
        return f"budget {', '.join(asked)} (a population trains in fp32, one eager batch a step)"
    return None


def _nobody(step: int, metrics: dict[int, dict[str, float]]) -> None:
    pass


def _check_pbt(members: list[_Member], budget: TrainBudget, max_members: Optional[int]) -> None:
    """PBT's members copy each other's rows: one update rule (``population_key``), one pass, a held LR; a member's
    value is its final evaluation (its best one may predate the weights it ends with)."""
    if budget.objective != "final":
        raise TunerError(f"PBT members are valued by their final evaluation, got objective={budget.objective!r}")
    for m in members:
        check_pbt_recipe(m.recipe)
    keys = sorted({str(population_key(m.recipe)) for m in members})
    if len(keys) != 1 or population_key(members[0].recipe) is None:
        names = sorted({m.recipe.optimizer for m in members})
        raise TunerError(
            f"PBT members copy each other's optimizer state, so they need one batched update rule and batch size; "
            f"got optimizers {names} with population keys {keys}"
        )
    if max_members is not None and max_members < len(members):
        raise TunerError(f"PBT trains its {len(members)} members in one pass, got max_members={max_members}")


@dataclass
class _Common:
    task: Task
    budget: TrainBudget
    metric: str
    direction: str
    device: torch.device
    deterministic: bool
    keep_params: bool
    on_evaluated: OnEvaluated
    explorer: Optional[Explorer] = None


@dataclass
class _Member:
    """One member: its recipe, seed and callback (its index in the caller's lists)."""

    index: int
    recipe: Recipe
    seed: int
    on_eval: Optional[OnEval]


@dataclass
class _Running:
    """A member in a vectorized pass: its recipe (PBT changes it), schedule and ``RunProgress``."""

    member: _Member
    recipe: Recipe
    schedule: Any
    progress: RunProgress
    lineage: Lineage
    best_params: Optional[dict[str, torch.Tensor]] = None  # with objective "best" and keep_params


def _groups(members: list[_Member]) -> dict[Any, list[_Member]]:
    """Members that can share one stack (one batch size, any batched update rule), each group ordered so that
    members of one update rule are adjacent (``BlockOptimizer``); key None: no batched rule, trained alone."""
    groups: dict[Any, list[_Member]] = {}
    for member in members:
        key = population_key(member.recipe)
        groups.setdefault(None if key is None else ("batch_size", member.recipe.batch_size), []).append(member)
    for key, group in groups.items():
        if key is not None:
            group.sort(key=lambda m: (str(population_key(m.recipe)), m.index))
    return groups


def _train_group(
    common: _Common, group: list[_Member], stackable: bool, max_members: Optional[int]
) -> dict[int, FitResult]:
    if not stackable:
        names = sorted({m.recipe.optimizer + (" + switch" if m.recipe.switch else "") for m in group})
        return _sequential(common, group, f"no batched optimizer for {', '.join(names)}")
    data = data_on_device(common.task, common.device)
    seed_everything(group[0].seed, common.deterministic)
    probe = common.task.build_model().to(common.device)
    reason = vmap_blocker(probe)
    if reason is not None:
        return _sequential(common, group, reason)
    cap = max_members or population_cap(probe, data.train_inputs, group[0].recipe.batch_size, common.device)
    if common.explorer is not None and cap < len(group):
        raise TunerError(
            f"PBT trains its {len(group)} members in one pass, but only {cap} fit in {MEMORY_SHARE:.0%} of the free "
            f"memory of {common.device}: use a smaller budget.population"
        )
    if common.device.type == "cpu":
        _keep_freed_memory()
    results: dict[int, FitResult] = {}
    for start in range(0, len(group), cap):
        chunk = group[start : start + cap]
        try:
            population = _Population(common, chunk)
        except _VmapFailed as error:
            results.update(_sequential(common, chunk, str(error)))
            continue
        results.update(population.train())
    return results


def _sequential(common: _Common, group: list[_Member], reason: str) -> dict[int, FitResult]:
    if common.explorer is not None:
        raise TunerError(f"PBT needs the shared vectorized pass (members copy each other's rows), but {reason}")
    warnings.warn(
        f"population training: {len(group)} member(s) of task {common.task.name!r} train sequentially: {reason}",
        PopulationFallbackWarning,
        stacklevel=3,
    )
    results = {}
    for m in group:
        results[m.index] = fit(
            common.task,
            m.recipe,
            common.budget,
            metric=common.metric,
            direction=common.direction,
            on_eval=m.on_eval,
            device=str(common.device),
            seed=m.seed,
            deterministic=common.deterministic,
        )
    return results


# ----------------------------------------------------------------------------- what vmap can run


def vmap_blocker(model: torch.nn.Module) -> Optional[str]:
    """Why ``model`` cannot train stacked to the same result as alone (buffers, random layers), or None."""
    for name, module in model.named_modules():
        if getattr(module, "track_running_stats", False) and module.training:  # BatchNorm*, InstanceNorm* ...
            return f"module {name!r} ({type(module).__name__}) updates running statistics"
        if isinstance(module, DROPOUT_LAYERS) and module.p > 0:
            return f"module {name!r} ({type(module).__name__}) draws random masks"
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers {buffers[:3]} (stateful layers are not stacked)"
    return None


DROPOUT_LAYERS = (
    torch.nn.Dropout,
    torch.nn.Dropout1d,
    torch.nn.Dropout2d,
    torch.nn.Dropout3d,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
)


class _VmapFailed(Exception):
    pass


def population_cap(
    model: torch.nn.Module, inputs: torch.Tensor, batch_size: Optional[int], device: torch.device
) -> int:
    """How many members fit in ``MEMORY_SHARE`` of the free memory of ``device`` (at least 1)."""
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rows = max(batch_size or len(inputs), min(len(inputs), EVAL_CHUNK))
    activations = _activation_bytes_per_example(model, inputs[:1]) * rows
    per_member = 8 * param_bytes + 3 * activations  # params, grads, up to 3 state slots, temporaries; fwd + bwd
    return max(1, int(MEMORY_SHARE * free_memory(device) // max(per_member, 1)))


def _activation_bytes_per_example(model: torch.nn.Module, example: torch.Tensor) -> int:
    total = [example.numel() * example.element_size()]

    def hook(module: Any, args: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return total[0]


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device``: CUDA's ``mem_get_info``, else the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


@functools.lru_cache(maxsize=1)
def _keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse from now on in this process (no trimming; blocks up to 32 MiB from
    the heap, not fresh mmaps). A population frees and reallocates megabytes of activations every step; giving
    them back to the OS only to page-fault them in again costs 10-40% of a CPU run. Whether it took (False off
    glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


# ----------------------------------------------------------------------------- how members compute


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossWithGrad = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class _Stacked:
    """Gradients and outputs through ``tuner.train.stacked.StackedNet``: layers by hand, the loss by hand or
    autograd."""

    def __init__(self, net: StackedNet, loss: LossWithGrad) -> None:
        self.net, self.loss = net, loss

    def grads(
        self, params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        outputs, tape = self.net.forward_train(params, inputs)
        losses, grad_outputs = self.loss(outputs, targets)
        return self.net.backward(params, tape, grad_outputs), losses

    def outputs(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.net.forward(params, inputs)


class _Vmapped:
    """Gradients and outputs through ``vmap(functional_call)``: any model torch.func can run."""

    def __init__(self, model: torch.nn.Module, loss: Loss) -> None:
        self.base, self.loss = copy.deepcopy(model).to("meta"), loss
        self.forward = vmap(self._forward)

    def _forward(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, params, (inputs,))

    def grads(
        self, params: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        leaves = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        losses = self.loss(self.forward(leaves, inputs), targets)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        return dict(zip(leaves, grads)), losses.detach()

    @torch.no_grad()
    def outputs(self, params: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
        return self.forward(params, inputs)


def _with_autograd(loss: Loss) -> LossWithGrad:
    """``loss`` and its gradient with respect to the outputs, by autograd."""

    def loss_with_grad(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            outputs = outputs.detach().requires_grad_(True)
            losses = loss(outputs, targets)
            (grad,) = torch.autograd.grad(losses.sum(), outputs)
        return losses.detach(), grad

    return loss_with_grad


def _engines(task: Task, model: torch.nn.Module) -> list[Callable[[], Any]]:
    """The ways to compute this population, fastest first (each built on demand): stacked (known layers), then
    vmap. The loss is the task's ``population_loss`` hook (stock cross-entropy: by hand), else ``vmap(task.loss)``."""
    loss = population_hooks(task)[0] or vmap(task.loss)
    net = StackedNet.of(model)
    engines: list[Callable[[], Any]] = [lambda: _Vmapped(model, loss)]
    if net is not None:
        by_hand = cross_entropy_with_grad if loss is stacked_cross_entropy else _with_autograd(loss)
        engines.insert(0, lambda: _Stacked(net, by_hand))
    return engines


# ----------------------------------------------------------------------------- the vectorized run


def _seed(seed: int, deterministic: bool) -> None:
    """``seed_everything`` before building a member's model. Without any accelerator only the CPU generator and
    ``random`` matter, and seeding just them skips torch's queued accelerator seeds (each formats a stack trace)."""
    accelerator = getattr(torch, "accelerator", None)
    if deterministic or accelerator is None or accelerator.is_available():
        seed_everything(seed, deterministic)
    else:
        random.seed(seed)
        torch.default_generator.manual_seed(seed)


def divergence_limit_of(first_losses: torch.Tensor, factor: float) -> torch.Tensor:
    """``tuner.train.progress.divergence_limit`` of every member at once."""
    return factor * first_losses.abs().clamp(min=MIN_LOSS_SCALE)


def _gather(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[index]`` for an (N, B) index: each member's examples, contiguous (index_select is the fast kernel)."""
    return rows.index_select(0, index.reshape(-1)).view(*index.shape, *rows.shape[1:])


class _Population:
    """Stacked models, one batched optimizer, per-member schedules, data orders and bookkeeping."""

    def __init__(self, common: _Common, members: list[_Member]) -> None:
        self.common = common
        task, device = common.task, common.device
        self.data = data_on_device(task, device)
        models = []
        for m in members:
            _seed(m.seed, common.deterministic)
            models.append(task.build_model())
        params, _ = stack_module_state(models)
        self.layout = [(name, p.shape[1:], p[0].numel()) for name, p in params.items()]
        self._set_flat(torch.cat([p.detach().flatten(1).to(device) for p in params.values()], 1))
        recipe = members[0].recipe
        self.batch_size = recipe.batch_size
        self.per_epoch, self.total_steps, eval_every = plan_steps(
            len(self.data.train_inputs), self.batch_size, common.budget
        )
        self.running = [self._running(m, eval_every) for m in members]
        self.optimizer = BlockOptimizer([m.recipe for m in members], {"flat": self.flat})
        self.generators = [torch.Generator().manual_seed(m.seed) for m in members]
        self.metrics_hook = population_hooks(task)[1]
        self.orders: Optional[torch.Tensor] = None  # (examples, N): row k holds each member's k-th example this epoch
        self.multipliers: list[float] = []
        self.limits: Optional[torch.Tensor] = None  # divergence threshold of each member's training loss
        self.loss_sums = torch.zeros(len(members), dtype=torch.float64)
        self.loss_count = 0
        self.evaluations = 0
        self.engine = self._probe(_engines(task, models[0]))

    def _running(self, m: _Member, eval_every: int) -> _Running:
        recipe, total = m.recipe, self.total_steps
        schedule = recipe_schedule(recipe, total)
        common = self.common
        progress = RunProgress(
            common.budget,
            common.metric,
            common.direction,
            total_steps=total,
            per_epoch=self.per_epoch,
            eval_every=eval_every,
            on_eval=m.on_eval,
            schedule=schedule,
        )
        return _Running(m, recipe, schedule, progress, Lineage.root(m.index, recipe, m.seed))

    def _set_flat(self, flat: torch.Tensor) -> None:
        """Take ``flat`` (N, P) as the parameters; ``params`` are each parameter's stacked (N, *shape) view of it."""
        self.flat, self.params, offset, n = flat, {}, 0, flat.shape[0]
        for name, shape, size in self.layout:
            self.params[name] = flat[:, offset : offset + size].view(n, *shape)
            offset += size

    def _grads(self, engine: Any, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every member's gradient (N, P) and loss (N,): members are independent, so d(sum of losses)/d(member's
        parameters) is that member's own gradient, exactly."""
        grads, losses = engine.grads(self.params, inputs, targets)
        n = self.flat.shape[0]
        return torch.cat([grads[name].reshape(n, -1) for name, _, _ in self.layout], 1), losses

    def _probe(self, engines: list[Callable[[], Any]]) -> Any:
        """The first engine that computes a gradient on a few examples (nothing changes); none: train sequentially."""
        inputs, targets = self._stacked_batch(self.data.train_inputs[:2], self.data.train_targets[:2])
        errors = []
        for build in engines:
            try:
                engine = build()
                self._grads(engine, inputs, targets)
                return engine
            except Exception as error:  # any failure on this model: the next engine, at last the sequential path
                errors.append(f"{type(error).__name__}: {error}")
        raise _VmapFailed(f"torch.func.vmap cannot run this model: {errors[-1]}")

    def _stacked_batch(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch seen by every member, as (N, B, ...) views."""
        n = self.flat.shape[0]
        return inputs.expand(n, *inputs.shape), targets.expand(n, *targets.shape)

    # -- the loop

    def train(self) -> dict[int, FitResult]:
        started = time.perf_counter()
        finished: dict[int, FitResult] = {}
        for step in range(self.total_steps):
            if not self.running:
                break
            if self.batch_size is not None and step % self.per_epoch == 0:
                n = len(self.data.train_inputs)
                self.orders = torch.stack([torch.randperm(n, generator=g) for g in self.generators], 1)
            self.multipliers = [r.schedule(step) for r in self.running]
            stopped = self._after_step(step, self._step(step))
            if self.running[0].progress.is_eval_step(step + 1):
                metrics = self._val_metrics()
                stopped |= self._evaluate(step + 1, stopped, metrics)
                self._exploit(step + 1, stopped, metrics)
            self._finish(stopped, step + 1, started, finished)
        self._finish(set(range(len(self.running))), self.total_steps, started, finished)
        return finished

    def _step(self, step: int) -> torch.Tensor:
        data = self.data
        if self.batch_size is None:
            inputs, targets = self._stacked_batch(data.train_inputs, data.train_targets)
        else:
            assert self.orders is not None  # drawn at the start of every epoch
            position = step % self.per_epoch
            rows = self.orders[position * self.batch_size : (position + 1) * self.batch_size]
            index = rows.t().to(data.train_inputs.device)
            inputs, targets = _gather(data.train_inputs, index), _gather(data.train_targets, index)
        grads, losses = self._grads(self.engine, inputs, targets)
        self.optimizer.step({"flat": self.flat}, {"flat": grads}, torch.tensor(self.multipliers, dtype=torch.float64))
        return losses

    def _after_step(self, step: int, losses: torch.Tensor) -> set[int]:
        """Record each member's loss and LR; the rows of members that diverged (``RunProgress``'s rule, one
        vectorized mask in float64; each such row's progress gives the reason)."""
        losses = losses.to("cpu", torch.float64)
        if self.limits is None:
            for r, loss in zip(self.running, losses.tolist()):
                r.progress.first_loss = loss
            self.limits = divergence_limit_of(losses, self.common.budget.divergence_factor)
        for r, multiplier in zip(self.running, self.multipliers):
            r.progress.record_lr(step, r.recipe.lr * multiplier)
        healthy = torch.isfinite(losses) & (losses <= self.limits)
        self.loss_sums += losses  # a member that is not healthy leaves now, its sum with it
        self.loss_count += 1
        if bool(healthy.all()):
            return set()
        stopped = set((~healthy).nonzero().flatten().tolist())
        for row in stopped:
            self.running[row].progress.diverged_on_loss(step, float(losses[row]))
        return stopped

    @torch.no_grad()
    def _evaluate(self, step: int, skip: set[int], metrics: list[dict[str, float]]) -> set[int]:
        """Hand every member (but ``skip``) its evaluation (``metrics``, by row); the rows that stop."""
        train_losses = (self.loss_sums / max(self.loss_count, 1)).tolist()
        self.common.on_evaluated(
            step,
            {
                r.member.index: metrics[row]
                for row, r in enumerate(self.running)
                if row not in skip and all(math.isfinite(v) for v in metrics[row].values())
            },
        )
        stopped = set()
        for row, r in enumerate(self.running):
            if row in skip:
                continue
            lr = r.recipe.lr * self.multipliers[row]
            evaluation = r.progress.evaluation(step, metrics[row], train_losses[row], lr)
            if r.progress.evaluated(evaluation):
                stopped.add(row)
            if self.common.keep_params and self.common.budget.objective == "best" and r.progress.best is evaluation:
                r.best_params = self._member_params(row)
        self.loss_sums.zero_()
        self.loss_count = 0
        return stopped

    def _exploit(self, step: int, stopped: set[int], metrics: list[dict[str, float]]) -> None:
        """PBT's round after the evaluation at ``step``, when due: the copies ``Explorer.decide`` picks among the
        members still training, each a copy of rows (parameters, optimizer state, data order, divergence limit)."""
        explorer = self.common.explorer
        if explorer is None:
            return
        self.evaluations += 1
        if not explorer.due(self.evaluations, step, self.total_steps):
            return
        rows = [row for row in range(len(self.running)) if row not in stopped]
        exploits = explorer.decide(
            step,
            [metrics[row][self.common.metric] for row in rows],
            [self.running[row].lineage for row in rows],
            [self.running[row].member.index for row in rows],
            self.common.direction == "maximize",
        )
        for exploit in exploits:
            self._copy_member(rows[exploit.child], rows[exploit.parent], exploit.lineage)

    @torch.no_grad()
    def _copy_member(self, child: int, parent: int, lineage: Lineage) -> None:
        self.flat[child] = self.flat[parent]
        self.optimizer.copy_row(child, parent, lineage.recipe)
        self.generators[child].set_state(self.generators[parent].get_state())
        if self.orders is not None:
            self.orders[:, child] = self.orders[:, parent]
        if self.limits is not None:
            self.limits[child] = self.limits[parent]
        r = self.running[child]
        r.progress.first_loss = self.running[parent].progress.first_loss
        r.recipe, r.lineage = lineage.recipe, lineage
        r.schedule = recipe_schedule(lineage.recipe, self.total_steps)

    def _val_metrics(self) -> list[dict[str, float]]:
        """Each member's validation metrics, weighted over chunks as ``fit`` weighs them (float64)."""
        inputs, targets = self.data.val_inputs, self.data.val_targets
        totals: dict[str, torch.Tensor] = {}
        for start in range(0, len(inputs), EVAL_CHUNK):
            chunk_inputs, chunk_targets = self._stacked_batch(
                inputs[start : start + EVAL_CHUNK], targets[start : start + EVAL_CHUNK]
            )
            outputs = self.engine.outputs(self.params, chunk_inputs)
            for name, values in self._chunk_metrics(outputs, chunk_targets).items():
                totals[name] = totals.get(name, 0.0) + values * len(chunk_inputs[0])
        columns = {name: (total / len(inputs)).tolist() for name, total in totals.items()}
        return [{name: column[row] for name, column in columns.items()} for row in range(len(self.running))]

    def _chunk_metrics(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every member's metrics of one chunk, {name: (N,) float64}: the task's stacked hook, else member by member."""
        if self.metrics_hook is not None:
            return {
                name: values.to("cpu", torch.float64) for name, values in self.metrics_hook(outputs, targets).items()
            }
        rows = [self.common.task.metrics(outputs[row], targets[row]) for row in range(len(outputs))]
        return {name: torch.tensor([row[name] for row in rows], dtype=torch.float64) for name in rows[0]}

    def _member_params(self, row: int) -> dict[str, torch.Tensor]:
        return {name: p[row].detach().clone() for name, p in self.params.items()}

    def _finish(self, rows: set[int], steps_done: int, started: float, finished: dict[int, FitResult]) -> None:
        """Hand the members at ``rows`` their results and take them out of the stacks."""
        if not rows:
            return
        seconds = time.perf_counter() - started
        for row in sorted(rows):
            r = self.running[row]
            extras: dict[str, Any] = {"population": len(self.optimizer)}
            if self.common.explorer is not None:
                extras["pbt"] = r.lineage.to_dict()
            if self.common.keep_params:
                extras["params"] = r.best_params if r.best_params is not None else self._member_params(row)
            finished[r.member.index] = r.progress.result(steps_done, seconds, extras)
        keep = [row for row in range(len(self.running)) if row not in rows]
        index = torch.tensor(keep, dtype=torch.long)
        self.running = [self.running[row] for row in keep]
        self.generators = [self.generators[row] for row in keep]
        self.multipliers = [self.multipliers[row] for row in keep]
        self.orders = self.orders.index_select(1, index) if self.orders is not None and keep else self.orders
        if keep:
            self._set_flat(self.flat.index_select(0, index.to(self.flat.device)))
            self.optimizer.select(index)
            for name in ("loss_sums", "limits"):
                setattr(self, name, getattr(self, name).index_select(0, index))
