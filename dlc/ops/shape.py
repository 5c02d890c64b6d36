"""Ops that move elements between shapes: broadcasts, reductions to a shape,
and the gradient barrier."""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import TensorType, format_shape
from .base import Op, OpError, register


class BroadcastTo(Op):
    """NumPy broadcasting of x to `shape`, made explicit."""
    name = "broadcast_to"

    def infer(self, ins, attrs) -> TensorType:
        (x,), shape = ins, tuple(attrs["shape"])
        lead = len(shape) - x.rank
        if lead < 0 or any(d != 1 and d != shape[lead + i] for i, d in enumerate(x.shape)):
            raise OpError(f"cannot broadcast {format_shape(x.shape)} to {format_shape(shape)}")
        return TensorType(x.dtype, shape)

    def grad(self, b, node, g):
        return [sum_to(b, g, node.inputs[0].type.shape)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        x = node.inputs[0].type
        lead = len(idx) - x.rank
        return ins[0]([L.Const(0, L.INDEX) if d == 1 else idx[lead + i]
                       for i, d in enumerate(x.shape)])

    def reference(self, x, *, shape):
        return np.broadcast_to(x, shape)


class SumTo(Op):
    """Sums x over the axes that broadcasting to x's shape from `shape` added
    or stretched: the adjoint of broadcast_to."""
    name = "sum_to"

    def infer(self, ins, attrs) -> TensorType:
        (x,), shape = ins, tuple(attrs["shape"])
        lead = x.rank - len(shape)
        if lead < 0 or any(d != 1 and d != x.shape[lead + i] for i, d in enumerate(shape)):
            raise OpError(f"cannot sum {format_shape(x.shape)} to {format_shape(shape)}")
        return TensorType(x.dtype, shape)

    def grad(self, b, node, g):
        from .elementwise import broadcast
        return [broadcast(b, g, node.inputs[0].type.shape)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        x = node.inputs[0].type
        shape = node.attrs["shape"]
        lead = x.rank - len(shape)
        xi, vars_, extents = [], [], []
        for axis, d in enumerate(x.shape):
            if axis < lead or (shape[axis - lead] == 1 and d != 1):
                v = ctx.var(f"r{axis}")
                vars_.append(v)
                extents.append(ctx.dim(d))
                xi.append(v)
            else:
                xi.append(idx[axis - lead])
        if not vars_:
            return ins[0](xi)
        return L.Reduce("sum", tuple(vars_), tuple(extents), ins[0](xi))

    def reference(self, x, *, shape):
        lead = x.ndim - len(shape)
        axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                          if d == 1 and x.shape[lead + i] != 1)
        return x.sum(axis=axes, keepdims=True).reshape(shape)


class StopGradient(Op):
    """Identity whose gradient is zero: for shifts whose effect cancels, such
    as the max subtracted inside a stable log-softmax."""
    name = "stop_gradient"

    def infer(self, ins, attrs) -> TensorType:
        return ins[0]

    def grad(self, b, node, g):
        return [None]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        return ins[0](idx)

    def reference(self, x):
        return x


BROADCAST_TO, SUM_TO = register(BroadcastTo()), register(SumTo())
STOP_GRADIENT = register(StopGradient())


def sum_to(b, x, shape):
    return x if x.type.shape == tuple(shape) else b.node(SUM_TO, [x], shape=tuple(shape))
