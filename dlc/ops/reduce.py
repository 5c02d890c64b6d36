"""Reductions: over the last axis (kept as size 1) and over everything."""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import TensorType
from .base import Op, OpError, register
from .elementwise import broadcast


class ReduceLast(Op):
    """sum or max over the last axis, keeping it as size 1."""

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"{kind}_last"

    def infer(self, ins, attrs) -> TensorType:
        (x,) = ins
        if x.rank == 0:
            raise OpError(f"'{self.name}' needs at least one axis, got a scalar")
        return TensorType(x.dtype, x.shape[:-1] + (1,))

    def grad(self, b, node, g):
        if self.kind != "sum":
            raise OpError(f"'{self.name}' is only used under stop_gradient")
        return [broadcast(b, g, node.inputs[0].type.shape)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        k = ctx.var("k")
        n = ctx.dim(node.inputs[0].type.shape[-1])
        return L.Reduce(self.kind, (k,), (n,), ins[0](idx[:-1] + [k]))

    def reference(self, x):
        return getattr(np, self.kind)(x, axis=-1, keepdims=True)


class SumAll(Op):
    name = "sum_all"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, ())

    def grad(self, b, node, g):
        return [broadcast(b, g, node.inputs[0].type.shape)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        shape = node.inputs[0].type.shape
        if not shape:
            return ins[0]([])
        vs = [ctx.var(f"r{i}") for i in range(len(shape))]
        return L.Reduce("sum", tuple(vs), tuple(ctx.dim(d) for d in shape), ins[0](vs))

    def reference(self, x):
        return np.sum(x)


SUM_LAST, MAX_LAST = register(ReduceLast("sum")), register(ReduceLast("max"))
SUM_ALL = register(SumAll())


def mean(b, x):
    """Mean over all elements; the count may be symbolic (the batch)."""
    from .elementwise import NUMEL, div
    n = b.node(NUMEL, [], shape=x.type.shape, dtype=x.type.dtype)
    return div(b, b.node(SUM_ALL, [x]), n)
