"""Subscripts, `x[:, -1]` and `x[:, 2:5]`, as PyTorch's basic indexing.

Each subscripted axis becomes a `narrow` (a window of `length` elements from
`start`); an integer subscript is a window of one whose axis is then
dropped by a reshape. On a fixed axis the bounds are Python's (negative from
the end, slices clamped to the axis, an index out of range an error). On a
symbolic axis (`time`), whose size is known only at run time, the result
must have a fixed length: an index, `:`, or a slice with both bounds of the
same sign (`2:5`, `:5`, `-3:-1`, `-3:`); a bound past the run-time size reads the
nearest element rather than stray memory (PyTorch would raise).
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, Dim, TensorType, Value
from .base import Op, OpError, register
from .shape import reshape


def _start(ctx, size: Dim, start: int) -> L.Expr:
    """The window's first index: from the end when negative (symbolic axes)."""
    return L.Const(start, L.INDEX) if start >= 0 else ctx.dim(size) + start


def _inside(ctx, i: L.Expr, size: Dim) -> L.Expr:
    """i clamped to the axis, on a symbolic one (see the module docstring)."""
    return i if isinstance(size, int) else L.maximum(L.minimum(i, ctx.dim(size) - 1), L.Const(0, L.INDEX))


class Narrow(Op):
    """out = x[..., start:start + length, ...] along `axis`."""
    name = "narrow"

    def infer(self, ins, attrs) -> TensorType:
        (x,), axis = ins, attrs["axis"]
        return TensorType(x.dtype, x.shape[:axis] + (attrs["length"],) + x.shape[axis + 1:])

    def grad(self, b, node, g):
        return [b.node(NARROW_GRAD, [g], axis=node.attrs["axis"], start=node.attrs["start"],
                       size=node.inputs[0].type.shape[node.attrs["axis"]])]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        axis, size = node.attrs["axis"], node.inputs[0].type.shape[node.attrs["axis"]]
        at = list(idx)
        at[axis] = _inside(ctx, idx[axis] + _start(ctx, size, node.attrs["start"]), size)
        return ins[0](at)

    def reference(self, x, *, axis, start, length):
        start = start if start >= 0 else x.shape[axis] + start
        return np.take(x, np.arange(start, start + length), axis=axis)


class NarrowGrad(Op):
    """narrow's gradient: g placed in a zero tensor of the input's shape."""
    name = "narrow_grad"

    def infer(self, ins, attrs) -> TensorType:
        (g,), axis = ins, attrs["axis"]
        return TensorType(g.dtype, g.shape[:axis] + (attrs["size"],) + g.shape[axis + 1:])

    def grad(self, b, node, g):
        a = node.attrs
        return [b.node(NARROW, [g], axis=a["axis"], start=a["start"],
                       length=node.inputs[0].type.shape[a["axis"]])]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        axis, size, length = node.attrs["axis"], node.attrs["size"], node.inputs[0].type.shape[node.attrs["axis"]]
        pos = idx[axis] - _start(ctx, size, node.attrs["start"])
        at = list(idx)
        at[axis] = L.maximum(L.minimum(pos, L.Const(length - 1, L.INDEX)), L.Const(0, L.INDEX))
        inside = L.all_of([L.cmp(">=", pos, 0), L.cmp("<", pos, length)])
        return L.Select(inside, ins[0](at), L.const_like(0, node.out.type.dtype))

    def reference(self, g, *, axis, start, size):
        shape = list(g.shape)
        shape[axis] = size
        out = np.zeros(shape, g.dtype)
        start = start if start >= 0 else size + start
        index = [slice(None)] * g.ndim
        index[axis] = slice(start, start + g.shape[axis])
        out[tuple(index)] = g
        return out


NARROW, NARROW_GRAD = register(Narrow()), register(NarrowGrad())


def subscript(b: Builder, x: Value, items: list) -> Value:
    """x[items]: each item an int (an index) or a (start, stop) pair of ints
    or None (a slice). Raises OpError(arg=k) for the k-th item at fault."""
    shape = x.type.shape
    if len(items) > len(shape):
        raise OpError(f"too many subscripts: {len(items)} for {x.type}", arg=len(shape))
    dropped = []
    for axis, item in enumerate(items):
        size = shape[axis]
        if isinstance(item, int):
            start, length = _index(item, size, axis), 1
            dropped.append(axis)
        else:
            window = _slice(item, size, axis)
            if window is None:
                continue
            start, length = window
        x = b.node(NARROW, [x], axis=axis, start=start, length=length)
    if dropped:
        x = reshape(b, x, tuple(d for k, d in enumerate(x.type.shape) if k not in dropped))
    return x


def _index(i: int, size: Dim, axis: int) -> int:
    if isinstance(size, int):
        if not -size <= i < size:
            raise OpError(f"index {i} is out of range for axis {axis} of size {size}", arg=axis)
        return i % size
    return i


def _slice(item: tuple, size: Dim, axis: int) -> tuple[int, int] | None:
    """(start, length) of a slice, or None for the whole axis."""
    start, stop = item
    if isinstance(size, int):
        lo, hi, _ = slice(start, stop).indices(size)
        if hi <= lo:
            raise OpError(f"the slice {_text(item)} of axis {axis} (size {size}) is empty", arg=axis)
        return None if (lo, hi) == (0, size) else (lo, hi - lo)
    if start is None and stop is None:
        return None
    if start is None and stop > 0:          # :k
        start = 0
    if stop is None and start is not None and start < 0:   # -k:
        return start, -start
    if start is None or stop is None or (start < 0) != (stop < 0) or stop == 0:
        raise OpError(f"the slice {_text(item)} of the symbolic axis '{size}' must have a fixed "
                      f"length: bounds of the same sign (as 2:5, :5, -3:-1 or -3:)", arg=axis)
    if stop <= start:
        raise OpError(f"the slice {_text(item)} of axis {axis} is empty", arg=axis)
    return start, stop - start


def _text(item: tuple) -> str:
    return ":".join("" if v is None else str(v) for v in item)
