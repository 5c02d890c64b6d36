"""Indexing ops, as PyTorch's: gather (with its adjoint, a scatter-add),
one_hot and argmax.

An index read from an entry's input is checked by the runtime before
anything runs (`operand_range`: out of range is an error naming it, as
PyTorch raises); one computed inside a program is guarded in the kernels
(a gather outside its axis reads NaN, a scatter adds nothing).
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value, format_shape
from ..lower import IndexRange, flat_index
from .base import Arg, Op, OpError, need_float, register


def _axis(op: str, axis: int, t: TensorType) -> int:
    if not -t.rank <= axis < t.rank:
        raise OpError(f"'{op}' axis {axis} is out of range for {t}", arg="axis")
    return axis % t.rank


def _need_index(op: str, t: TensorType, arg: str) -> None:
    if t.dtype != "i32":
        raise OpError(f"'{op}' expects integer {arg} (i32), got {t}", arg=arg)


def _clamped(ctx, idx: list[L.Expr], axis: int, n) -> tuple[list[L.Expr], L.Expr]:
    """idx with idx[axis] clamped into [0, n), and whether it was in range."""
    i = idx[axis]
    safe = L.minimum(L.maximum(i, 0), ctx.dim(n) - 1)
    ok = L.Bin("and", L.cmp(">=", i, 0), L.cmp("<", i, ctx.dim(n)), "bool")
    return idx[:axis] + [safe] + idx[axis + 1:], ok


class Gather(Op):
    """torch.gather(x, axis, index): out[..., i, ...] = x[..., index[..., i, ...], ...]
    along `axis`; index has x's rank, and along the other axes its sizes
    are at most x's (equal, where symbolic)."""
    name = "gather"
    # An inlined producer is computed only where picked: less work than the
    # whole of it when the index is the smaller (Q(s)[a]), more only where
    # the index repeats an element.
    rereads = False
    signature = (Arg("x", "tensor"), Arg("index", "tensor"), Arg("axis", "int"))

    def build(self, b: Builder, args) -> Value:
        x, index = args["x"], args["index"]
        _need_index(self.name, index.type, "index")
        axis = _axis(self.name, args["axis"], x.type)
        if index.type.rank != x.type.rank:
            raise OpError(f"'gather' needs an index of x's rank {x.type.rank}, got {index.type}",
                          arg="index")
        for a, (n, m) in enumerate(zip(x.type.shape, index.type.shape)):
            if a != axis and n != m and not (isinstance(n, int) and isinstance(m, int) and m <= n):
                raise OpError(f"'gather' index {format_shape(index.type.shape)} is larger than x "
                              f"{format_shape(x.type.shape)} along axis {a}", arg="index")
        return b.node(self, [x, index], axis=axis)

    def infer(self, ins, attrs) -> TensorType:
        x, index = ins
        return TensorType(x.dtype, index.shape)

    def grad(self, b, node, g):
        x, index = node.inputs
        return [b.node(SCATTER_ADD, [g, index], axis=node.attrs["axis"], shape=x.type.shape), None]

    def operand_range(self, node, k):
        return IndexRange.upto(0, node.inputs[0].type.shape[node.attrs["axis"]], -1) if k == 1 else None

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        axis = node.attrs["axis"]
        at = idx[:axis] + [L.Cast(ins[1](idx), L.INDEX)] + idx[axis + 1:]
        safe, ok = _clamped(ctx, at, axis, node.inputs[0].type.shape[axis])
        lost = float("nan") if node.out.type.is_float else 0
        return L.Select(ok, ins[0](safe), L.const_like(lost, node.out.type.dtype))

    def reference(self, x, index, *, axis):
        return np.take_along_axis(x, index.astype(np.int64), axis=axis)


class ScatterAdd(Op):
    """out (of `shape`) = 0, then out[..., index[..., i, ...], ...] += g[..., i, ...]:
    gather's adjoint. Deterministic at any thread count: the loops over the
    other axes are outer (each writes its own elements, so the `parallelize`
    pass may share them out), and the sum along the axis is one serial loop
    in a fixed order."""
    name = "scatter_add"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(ins[0].dtype, tuple(attrs["shape"]))

    def operand_range(self, node, k):
        return IndexRange.upto(0, node.attrs["shape"][node.attrs["axis"]], -1) if k == 1 else None

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        axis, shape = node.attrs["axis"], node.out.type.shape
        g_shape = node.inputs[0].type.shape
        zero_idx = [ctx.var(f"z{a}") for a in range(len(shape))]
        zero = L.nest([(v, ctx.dim(d)) for v, d in zip(zero_idx, shape)],
                      L.Store(out, flat_index(ctx, zero_idx, shape), L.const_like(0, out.dtype)))
        pos = [ctx.var(f"i{a}") for a in range(len(g_shape))]
        at = pos[:axis] + [L.Cast(ins[1](pos), L.INDEX)] + pos[axis + 1:]
        # Out of range adds 0 at a clamped place: a statement without `If`
        # keeps the loop over the axis the innermost, serial one.
        safe, ok = _clamped(ctx, at, axis, shape[axis])
        add = L.Store(out, flat_index(ctx, safe, shape),
                      L.Select(ok, ins[0](pos), L.const_like(0, out.dtype)), accumulate=True)
        loops = [(v, ctx.dim(d)) for a, (v, d) in enumerate(zip(pos, g_shape)) if a != axis]
        return L.Seq([zero, L.nest(loops + [(pos[axis], ctx.dim(g_shape[axis]))], add)])

    def reference(self, g, index, *, axis, shape):
        out = np.zeros(shape, g.dtype)
        grid = list(np.indices(g.shape, sparse=True))
        grid[axis] = index.astype(np.int64)
        np.add.at(out, tuple(grid), g)
        return out


class OneHot(Op):
    """F.one_hot(t, n) as floats: [..., n] with 1 at each label."""
    name = "one_hot"
    signature = (Arg("t", "tensor"), Arg("n", "int"))

    def build(self, b: Builder, args) -> Value:
        _need_index(self.name, args["t"].type, "t")
        if args["n"] < 1:
            raise OpError(f"'one_hot' needs n >= 1, got {args['n']}", arg="n")
        return b.node(self, [args["t"]], n=args["n"])

    def infer(self, ins, attrs) -> TensorType:
        return TensorType("f32", ins[0].shape + (attrs["n"],))

    def grad(self, b, node, g):
        return [None]

    def operand_range(self, node, k):
        return IndexRange(0, node.attrs["n"] - 1)

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        label = L.Cast(ins[0](idx[:-1]), L.INDEX)
        return L.Select(L.cmp("==", label, idx[-1]), L.const_like(1, "f32"), L.const_like(0, "f32"))

    def reference(self, t, *, n):
        return (t[..., None] == np.arange(n)).astype(np.float32)


class Argmax(Op):
    """torch.argmax(x, axis) as i32: the first maximum, or the first NaN."""
    name = "argmax"
    signature = (Arg("x", "tensor"), Arg("axis", "int"))

    def build(self, b: Builder, args) -> Value:
        x = args["x"]
        need_float(self.name, x.type)
        return b.node(self, [x], axis=_axis(self.name, args["axis"], x.type))

    def infer(self, ins, attrs) -> TensorType:
        shape = ins[0].shape
        return TensorType("i32", shape[:attrs["axis"]] + shape[attrs["axis"] + 1:])

    def grad(self, b, node, g):
        return [None]

    def lower_kernel(self, ctx, out, ins, node) -> L.Stmt:
        axis, shape = node.attrs["axis"], node.inputs[0].type.shape
        pos = [ctx.var(f"i{a}") for a in range(len(shape)) if a != axis]
        k = ctx.var("k")
        dtype = node.inputs[0].type.dtype
        best = L.Buffer("best", dtype, "local", -1, L.Const(1, L.INDEX))
        arg = L.Buffer("arg", L.INDEX, "local", -1, L.Const(1, L.INDEX))
        zero = L.Const(0, L.INDEX)
        at = lambda i: ins[0](pos[:axis] + [i] + pos[axis:])
        b_, a_, v = L.Load(best, zero), L.Load(arg, zero), at(k)
        # Keep the best when it is NaN (the first NaN wins) or v is at most
        # it (ties keep the first); else take v (larger, or a NaN).
        pick = lambda old, new: L.Select(L.isnan(b_), old, L.Select(L.cmp("<=", v, b_), old, new))
        step = L.Seq([L.Store(arg, zero, pick(a_, k)), L.Store(best, zero, pick(b_, v))])
        body = L.Seq([L.Store(best, zero, at(zero)), L.Store(arg, zero, zero),
                      L.For(k, ctx.dim(shape[axis]), step),
                      L.Store(out, flat_index(ctx, pos, node.out.type.shape), L.Cast(a_, "i32"))])
        outer = [(v_, ctx.dim(d)) for v_, d in zip(pos, node.out.type.shape)]
        return L.nest(outer, L.Allocate(best, L.Allocate(arg, body)))

    def reference(self, x, *, axis):
        return np.argmax(x, axis=axis).astype(np.int32)   # NaN counts as the maximum, as torch


GATHER, SCATTER_ADD = register(Gather()), register(ScatterAdd())
ONE_HOT, ARGMAX = register(OneHot()), register(Argmax())
