"""The stacked fast path: N members of one ``nn.Sequential`` architecture computed on stacked parameters.

``StackedNet.of(model)`` compiles a model made only of known layers -- Linear, Conv2d, elementwise activations,
Flatten, max/average pooling, Identity, inert Dropout (p=0), nested ``nn.Sequential``s, or one such layer alone
-- into a list of ops, or returns None (the population then keeps ``vmap(functional_call)``). The ops run every
member at once on stacked tensors: Linear is one ``torch.baddbmm`` over ``(N, B, in)``, Conv2d one grouped
convolution with the members folded into the channels. ``forward_train`` + ``backward`` differentiate by hand
with the ATen backward kernels autograd itself would call, so no ``vmap`` dispatch and no autograd graph: the
population differentiates only its loss with autograd.

Layouts. Activations flow as "members" ``(N, B, *features)``, or, for convolutions and pooling, "folded"
``(B, N * C, H, W)`` channels-last; the net converts between the two where the next op needs the other one.

Exactness. Each op is the member's own operation on its own rows (the same kernels over a batch dimension), so
every member computes what it computes alone up to float rounding (tests/test_stacked.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tuner._torch import adaptive_avg_pool2d_backward, has_hooks, log_softmax, log_softmax_backward

MEMBERS, FOLDED = "members", "folded"
PIECE_BYTES = 16 << 20
"""Evaluation runs the batch in pieces whose largest activation (all members) stays under this many bytes."""
aten = torch.ops.aten
Backward = tuple[Optional[Tensor], list[Tensor]]
"""What an op's backward returns: its input's gradient (None when not needed) and its parameters' gradients."""


def pair(value: Any) -> tuple[Any, Any]:
    """A layer's int-or-pair argument (kernel size, stride ...) as a pair."""
    return (value[0], value[1]) if isinstance(value, (tuple, list)) else (value, value)


class _Op:
    """One layer over stacked tensors. ``names``: the stacked parameters it reads (in the order it gets them);
    ``layout``: the activation layout it needs (None: any); ``owned``: its output is new memory that its own
    backward does not read (so the next op may overwrite it)."""

    names: tuple[str, ...] = ()
    layout: Optional[str] = None
    owned = False

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        """The output, and what ``backward`` needs (when ``keep``)."""
        raise NotImplementedError

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        """The input's gradient (when ``need_dx``) and the parameters' gradients, stacked like ``params``."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- layers with parameters


class _Linear(_Op):
    layout = MEMBERS
    owned = True

    def __init__(self, prefix: str, module: nn.Linear) -> None:
        self.names = (prefix + "weight",) + ((prefix + "bias",) if module.bias is not None else ())

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        weight = params[0]
        rows = x.reshape(n, -1, x.shape[-1])  # extra feature dimensions join the batch, as in F.linear
        if len(params) > 1:
            y = torch.baddbmm(params[1].unsqueeze(1), rows, weight.transpose(1, 2))
        else:
            y = torch.bmm(rows, weight.transpose(1, 2))
        return y.view(*x.shape[:-1], weight.shape[1]), ((rows, x.shape) if keep else None)

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        rows, shape = saved
        d = dy.reshape(n, -1, dy.shape[-1])
        grads = [torch.bmm(d.transpose(1, 2), rows)]
        if len(params) > 1:
            grads.append(d.sum(1))
        dx = torch.bmm(d, params[0]).view(shape) if need_dx else None
        return dx, grads


class _Conv2d(_Op):
    layout = FOLDED
    owned = True

    def __init__(self, prefix: str, module: nn.Conv2d, padding: tuple[int, int]) -> None:
        self.names = (prefix + "weight",) + ((prefix + "bias",) if module.bias is not None else ())
        self.stride, self.padding, self.dilation, self.groups = module.stride, padding, module.dilation, module.groups

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        weight = params[0].reshape(-1, *params[0].shape[2:])  # (N * out, in / groups, kh, kw): member-major groups
        bias = params[1].reshape(-1) if len(params) > 1 else None
        y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, n * self.groups)
        return y, ((x, weight) if keep else None)

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        x, weight = saved
        has_bias = len(params) > 1
        dx, dw, db = aten.convolution_backward(
            dy,
            x,
            weight,
            [weight.shape[0]] if has_bias else None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            [0, 0],
            n * self.groups,
            [need_dx, True, has_bias],
        )
        return dx, [dw.view(params[0].shape)] + ([db.view(params[1].shape)] if has_bias else [])


def _conv_padding(module: nn.Conv2d) -> Optional[tuple[int, int]]:
    """The explicit (symmetric) padding of ``module``, or None when it has none (asymmetric 'same', other modes)."""
    if module.padding_mode != "zeros":
        return None
    if module.padding == "valid":
        return (0, 0)
    if module.padding == "same":
        totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
        return None if any(t % 2 for t in totals) else (totals[0] // 2, totals[1] // 2)
    return tuple(module.padding)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- layers without parameters


class _Activation(_Op):
    """An elementwise activation: ``forward(x)``, and ``backward(dy, x, y)`` (ATen's backward kernel). One whose
    backward reads only ``y`` has an in-place form, used when its input is owned by the op before it."""

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        backward: Callable[[Tensor, Tensor, Tensor], Tensor],
        in_place: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> None:
        self._forward, self._backward, self.in_place = forward, backward, in_place
        self.overwrite = False

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        y = self.in_place(x) if self.overwrite and self.in_place is not None else self._forward(x)
        return y, ((x, y) if keep else None)

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        return self._backward(dy, *saved), []


def _activation(module: nn.Module) -> Optional[_Activation]:
    if type(module) is nn.ReLU:  # the backward reads the output, as autograd's does
        return _Activation(torch.relu, lambda dy, x, y: aten.threshold_backward(dy, y, 0), torch.relu_)
    if type(module) is nn.Tanh:
        return _Activation(torch.tanh, lambda dy, x, y: aten.tanh_backward(dy, y), torch.tanh_)
    if type(module) is nn.Sigmoid:
        return _Activation(torch.sigmoid, lambda dy, x, y: aten.sigmoid_backward(dy, y), torch.sigmoid_)
    if type(module) is nn.SiLU:
        return _Activation(F.silu, lambda dy, x, y: aten.silu_backward(dy, x))
    if type(module) is nn.GELU:
        approximate = module.approximate
        return _Activation(
            lambda x: F.gelu(x, approximate=approximate),
            lambda dy, x, y: aten.gelu_backward(dy, x, approximate=approximate),
        )
    if type(module) is nn.LeakyReLU:
        slope = module.negative_slope
        return _Activation(
            lambda x: F.leaky_relu(x, slope), lambda dy, x, y: aten.leaky_relu_backward(dy, x, slope, False)
        )
    return None


class _MaxPool2d(_Op):
    layout = FOLDED
    owned = True

    def __init__(self, module: nn.MaxPool2d) -> None:
        self.args = (
            pair(module.kernel_size),
            pair(module.stride),
            pair(module.padding),
            pair(module.dilation),
            module.ceil_mode,
        )
        kernel, stride, _, dilation, _ = self.args
        self.disjoint = all(s >= d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))  # windows never overlap

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        if not keep:
            return F.max_pool2d(x, *self.args), None
        y, indices = aten.max_pool2d_with_indices(x, *self.args)
        return y, (x, indices)

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        x, indices = saved
        if self.disjoint and x.is_contiguous(memory_format=torch.channels_last):
            return _scatter_channels_last(dy, x, indices), []
        # ATen's channels-last backward kernel is many times slower than its contiguous one
        return aten.max_pool2d_with_indices_backward(
            dy.contiguous(), x.contiguous(), *self.args, indices.contiguous()
        ), []


def _scatter_channels_last(dy: Tensor, x: Tensor, indices: Tensor) -> Tensor:
    """Max-pool backward when each input position is the maximum of at most one window: ``dy`` scattered to
    the ``indices`` (positions within each H * W plane), channels-last like ``x``."""
    b, c, h, w = x.shape
    positions = indices.permute(0, 2, 3, 1).reshape(b, -1, c)
    values = dy.permute(0, 2, 3, 1).reshape(b, -1, c)
    dx = x.new_zeros(b, h * w, c).scatter_(1, positions, values)
    return dx.view(b, h, w, c).permute(0, 3, 1, 2)


class _AvgPool2d(_Op):
    layout = FOLDED
    owned = True

    def __init__(self, module: nn.AvgPool2d) -> None:
        self.args = (
            pair(module.kernel_size),
            pair(module.stride),
            pair(module.padding),
            module.ceil_mode,
            module.count_include_pad,
            module.divisor_override,
        )

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        return F.avg_pool2d(x, *self.args), (x if keep else None)

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        return aten.avg_pool2d_backward(dy, saved, *self.args), []


class _AdaptiveAvgPool2d(_Op):
    layout = FOLDED
    owned = True

    def __init__(self, module: nn.AdaptiveAvgPool2d) -> None:
        self.size = module.output_size

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        return F.adaptive_avg_pool2d(x, self.size), (x if keep else None)

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        return adaptive_avg_pool2d_backward(dy.contiguous(), saved), []


class _Flatten(_Op):
    layout = MEMBERS

    def __init__(self, module: nn.Flatten) -> None:  # a member's dimension d is the stack's d + 1
        self.start = module.start_dim + 1 if module.start_dim >= 0 else module.start_dim
        self.end = module.end_dim + 1 if module.end_dim >= 0 else module.end_dim

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        return x.flatten(self.start, self.end), x.shape

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        return dy.reshape(saved), []


# ----------------------------------------------------------------------------- layout changes


class _Fold(_Op):
    """members ``(N, B, C, H, W)`` -> folded ``(B, N * C, H, W)``."""

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        return _folded(x), None

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        return _members(dy, n), []


class _Unfold(_Op):
    """folded ``(B, N * C, H, W)`` -> members ``(N, B, C, H, W)``."""

    def forward(self, x: Tensor, params: list[Tensor], n: int, keep: bool) -> tuple[Tensor, Any]:
        return _members(x, n), None

    def backward(self, dy: Tensor, saved: Any, params: list[Tensor], n: int, need_dx: bool) -> Backward:
        return _folded(dy), []


def _folded(x: Tensor) -> Tensor:
    """Members ``(N, B, C, H, W)`` as one channels-last ``(B, N * C, H, W)`` batch: CPU convolutions and
    max-pooling over many channels are many times faster channels-last than contiguous."""
    b, h, w = x.shape[1], x.shape[3], x.shape[4]
    return x.permute(1, 3, 4, 0, 2).contiguous().view(b, h, w, -1).permute(0, 3, 1, 2)


def _members(x: Tensor, n: int) -> Tensor:
    """A folded ``(B, N * C, H, W)`` batch as members ``(N, B, C, H, W)`` (a view when possible)."""
    b, _, h, w = x.shape
    if x.is_contiguous():
        return x.view(b, n, -1, h, w).transpose(0, 1)
    return x.permute(0, 2, 3, 1).reshape(b, h, w, n, -1).permute(3, 0, 4, 1, 2)


# ----------------------------------------------------------------------------- compiling a model


def _leaf(prefix: str, module: nn.Module) -> Optional[list[_Op]]:
    """The ops of one known layer ([] for the inert ones), or None."""
    if type(module) is nn.Identity or (type(module) is nn.Dropout and module.p == 0):
        return []
    if type(module) is nn.Linear:
        return [_Linear(prefix, module)]
    if type(module) is nn.Conv2d:
        padding = _conv_padding(module)
        return None if padding is None else [_Conv2d(prefix, module, padding)]
    if type(module) is nn.MaxPool2d:
        return None if module.return_indices else [_MaxPool2d(module)]
    if type(module) is nn.AvgPool2d:
        return [_AvgPool2d(module)]
    if type(module) is nn.AdaptiveAvgPool2d:
        return [_AdaptiveAvgPool2d(module)]
    if type(module) is nn.Flatten:
        return None if module.start_dim == 0 else [_Flatten(module)]
    activation = _activation(module)
    return None if activation is None else [activation]


def _compile(module: nn.Module, prefix: str) -> Optional[list[_Op]]:
    if has_hooks(module):
        return None
    if type(module) is not nn.Sequential:
        return _leaf(prefix, module)
    ops: list[_Op] = []
    for name, child in module.named_children():
        child_ops = _compile(child, f"{prefix}{name}.")
        if child_ops is None:
            return None
        ops += child_ops
    return ops


def _with_layouts(ops: Sequence[_Op]) -> list[_Op]:
    """``ops`` with the layout changes they need, from members input to members output."""
    planned: list[_Op] = []
    layout = MEMBERS
    for op in ops:
        if op.layout is not None and op.layout != layout:
            planned.append(_Fold() if op.layout == FOLDED else _Unfold())
            layout = op.layout
        planned.append(op)
    if layout == FOLDED:
        planned.append(_Unfold())
    return planned


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_globals

    return any(
        getattr(module_globals, name, None)
        for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")
    )


class StackedNet:
    """A compiled model: ``forward`` for evaluation, ``forward_train`` then ``backward`` for gradients.

    Parameters are the members' stacked tensors by name (``{"0.weight": (N, out, in), ...}``), inputs are
    ``(N, B, *features)`` (an ``expand``ed shared batch is fine), outputs ``(N, B, *outputs)``.
    """

    def __init__(self, ops: Sequence[_Op]) -> None:
        self.ops = _with_layouts(ops)
        for before, op in zip(self.ops, self.ops[1:]):
            if isinstance(op, _Activation) and op.in_place is not None and before.owned:
                op.overwrite = True
        firsts = [i for i, op in enumerate(self.ops) if op.names]
        self._first = firsts[0] if firsts else len(self.ops)  # no gradient needed below the first parameter
        self._widest = 0  # the most activation values one member's example has had, at any op

    @classmethod
    def of(cls, model: nn.Module) -> Optional[StackedNet]:
        """The compiled ``model``, or None when it has a layer (or a hook) the fast path does not know."""
        ops = _compile(model, "")
        if ops is None or _global_hooks():
            return None
        return cls(ops)

    @torch.no_grad()
    def forward(self, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        """Every member's outputs for its inputs, in pieces of the batch whose activations stay under
        ``PIECE_BYTES`` (huge blocks are slow to allocate; each example's outputs are its own either way)."""
        n, batch = inputs.shape[:2]
        rows = max(1, PIECE_BYTES // max(1, n * self._widest * inputs.element_size()))
        if rows >= batch:
            return self._forward(params, inputs)
        return torch.cat([self._forward(params, inputs[:, start : start + rows]) for start in range(0, batch, rows)], 1)

    def _forward(self, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        x, n = inputs, inputs.shape[0]
        for op in self.ops:
            x, _ = op.forward(x, [params[name] for name in op.names], n, False)
        return x

    @torch.no_grad()
    def forward_train(self, params: Mapping[str, Tensor], inputs: Tensor) -> tuple[Tensor, list[Any]]:
        """Every member's outputs, and the tape ``backward`` reads."""
        x, tape = inputs, []
        n, batch = inputs.shape[:2]
        for i, op in enumerate(self.ops):
            x, saved = op.forward(x, [params[name] for name in op.names], n, i >= self._first)
            tape.append(saved)
            self._widest = max(self._widest, x.numel() // (n * batch))
        return x, tape

    @torch.no_grad()
    def backward(self, params: Mapping[str, Tensor], tape: list[Any], grad_outputs: Tensor) -> dict[str, Tensor]:
        """The stacked gradients of every parameter, by name, from the outputs' gradient."""
        grads: dict[str, Tensor] = {}
        dy, n = grad_outputs, grad_outputs.shape[0]
        for i in range(len(self.ops) - 1, self._first - 1, -1):
            op = self.ops[i]
            dx, op_grads = op.backward(dy, tape[i], [params[name] for name in op.names], n, i > self._first)
            grads.update(zip(op.names, op_grads))
            if dx is not None:
                dy = dx
        return grads


# ----------------------------------------------------------------------------- a loss by hand


def cross_entropy_with_grad(logits: Tensor, targets: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """``tuner.tasks.base.stacked_cross_entropy`` (each member's mean cross-entropy, (N,)) and its gradient with
    respect to ``logits`` (N, ..., classes): the ATen kernels autograd runs for it, without building a graph."""
    n, classes = logits.shape[0], logits.shape[-1]
    picks = targets.reshape(n, -1, 1)
    inputs = logits.reshape(n, -1, classes).transpose(1, 2).unsqueeze(3)  # (N, C, M, 1): F.nll_loss's 2-d form
    log_probs = log_softmax(inputs, 1)
    nll, total_weight = aten.nll_loss2d_forward(log_probs, picks, None, 0, ignore_index)  # reduction "none"
    counted = (picks != ignore_index).sum((1, 2))
    weights = counted.to(logits.dtype).reciprocal().view(n, 1, 1).expand_as(nll)  # d(mean)/d(each loss)
    grad = aten.nll_loss2d_backward(weights, log_probs, picks, None, 0, ignore_index, total_weight)
    grad = log_softmax_backward(grad, log_probs, 1, logits.dtype)
    return nll.sum((1, 2)) / counted, grad.squeeze(3).transpose(1, 2).reshape(logits.shape)
