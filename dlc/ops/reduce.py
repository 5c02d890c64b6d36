"""Reductions: sum / max / min over axes (kept as size 1), the language's
sum / mean / max / min (axis=, keepdim=, as torch's sum / mean / amax /
amin), and the sum over everything."""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import TensorType
from .base import Arg, Op, OpError, need_float, register
from .elementwise import NUMEL, Elementwise, div, mul
from .shape import broadcast, reshape


class ReduceAxes(Op):
    """sum, max or min over `axes` (sorted, in [0, rank)), kept as size 1.
    The gradient of max / min is torch.amax's: shared evenly by the elements
    equal to the result."""
    reduces = True

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"reduce_{kind}"

    def axes(self, x: TensorType, attrs) -> tuple[int, ...]:
        return attrs["axes"]

    def infer(self, ins, attrs) -> TensorType:
        (x,) = ins
        axes = self.axes(x, attrs)
        return TensorType(x.dtype, tuple(1 if a in axes else d for a, d in enumerate(x.shape)))

    def grad(self, b, node, g):
        shape = node.inputs[0].type.shape
        if self.kind == "sum":
            return [broadcast(b, g, shape)]
        hit = b.node(EQUAL_MASK, [node.inputs[0], broadcast(b, node.out, shape)])
        count = b.node(REDUCE_SUM, [hit], axes=self.axes(node.inputs[0].type, node.attrs))
        return [mul(b, hit, broadcast(b, div(b, g, count), shape))]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        x = node.inputs[0].type
        axes = self.axes(x, node.attrs)
        vs = {a: ctx.var(f"r{a}") for a in axes}
        body = ins[0]([vs.get(a, i) for a, i in enumerate(idx)])
        extents = tuple(ctx.dim(x.shape[a]) for a in axes)
        if self.kind == "min":   # the loop IR reduces by sum and max
            return -L.Reduce("max", tuple(vs.values()), extents, -body)
        return L.Reduce(self.kind, tuple(vs.values()), extents, body)

    def reference(self, x, *, axes):
        return getattr(np, self.kind)(x, axis=axes, keepdims=True)


class ReduceLast(ReduceAxes):
    """sum or max over the last axis, kept as size 1 (softmax's)."""

    def __init__(self, kind: str):
        self.kind, self.name = kind, f"{kind}_last"

    def axes(self, x, attrs):
        if x.rank == 0:
            raise OpError(f"'{self.name}' needs at least one axis, got a scalar")
        return (x.rank - 1,)

    def reference(self, x):
        return getattr(np, self.kind)(x, axis=-1, keepdims=True)


class EqualMask(Elementwise):
    """1 where x == y, else 0: the elements a max or min picked."""
    name = "equal_mask"
    arity = 2

    def scalar(self, x, y):
        return L.Select(L.cmp("==", x, y), L.const_like(1, x.dtype), L.const_like(0, x.dtype))

    def reference(self, x, y):
        return (x == y).astype(x.dtype)


class SumAll(Op):
    name = "sum_all"
    reduces = True

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


REDUCE_SUM, REDUCE_MAX, REDUCE_MIN = (register(ReduceAxes(k)) for k in ("sum", "max", "min"))
SUM_LAST, MAX_LAST = register(ReduceLast("sum")), register(ReduceLast("max"))
EQUAL_MASK = register(EqualMask())
SUM_ALL = register(SumAll())


def mean(b, x):
    """Mean over all elements; the count may be symbolic (the batch)."""
    n = b.node(NUMEL, [], shape=x.type.shape, dtype=x.type.dtype)
    return div(b, b.node(SUM_ALL, [x]), n)


class Reduction(Op):
    """torch's x.sum / mean / amax / amin over `axis` (an int or a tuple,
    negative from the end; all axes when not given), the axes dropped
    unless keepdim."""
    signature = (Arg("x", "tensor"), Arg("axis", "axes", None), Arg("keepdim", "bool", False))

    def __init__(self, name: str):
        self.name = name

    def build(self, b, args):
        x, axis = args["x"], args["axis"]
        need_float(self.name, x.type, arg="x")
        rank, n = x.type.rank, max(x.type.rank, 1)   # torch takes axis 0 or -1 of a scalar
        given = (axis,) if isinstance(axis, int) else axis
        axes = tuple(range(rank)) if given is None else tuple(sorted({a % n for a in given}))
        if given is not None and (any(not -n <= a < n for a in given) or len(axes) != len(given)):
            raise OpError(f"'{self.name}' axes must be distinct and in [{-n}, {n - 1}] for {x.type}, "
                          f"got {axis}", arg="axis")
        if rank == 0:
            return x
        op = {"sum": REDUCE_SUM, "mean": REDUCE_SUM, "max": REDUCE_MAX, "min": REDUCE_MIN}[self.name]
        y = b.node(op, [x], axes=axes)
        if self.name == "mean":
            count = b.node(NUMEL, [], shape=tuple(x.type.shape[a] for a in axes), dtype=x.type.dtype)
            y = div(b, y, broadcast(b, count, y.type.shape))
        if args["keepdim"]:
            return y
        return reshape(b, y, tuple(d for a, d in enumerate(x.type.shape) if a not in axes))

    def reference(self, x, axis=None, keepdim=False):
        f = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min}[self.name]
        return f(x, axis=axis, keepdims=keepdim)


SUM, MEAN, MAX, MIN = (register(Reduction(n)) for n in ("sum", "mean", "max", "min"))
