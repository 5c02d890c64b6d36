"""Ops that move elements between shapes: broadcasts, reductions to a shape,
the gradient barrier, reshape / flatten, concat with its adjoint slice, and
transpose."""
from __future__ import annotations

import math

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value, dim_factors, dim_product, format_shape
from .base import Arg, Op, OpError, register


class BroadcastTo(Op):
    """NumPy broadcasting of x to `shape`, made explicit."""
    name = "broadcast_to"
    rereads = True

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
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        (x,), shape = ins, tuple(attrs["shape"])
        lead = x.rank - len(shape)
        if lead < 0 or any(d != 1 and d != x.shape[lead + i] for i, d in enumerate(shape)):
            raise OpError(f"cannot sum {format_shape(x.shape)} to {format_shape(shape)}")
        return TensorType(x.dtype, shape)

    def grad(self, b, node, g):
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


def broadcast(b: Builder, x: Value, shape: tuple) -> Value:
    """x broadcast to `shape` (x itself when it has that shape): for gradient rules."""
    return x if x.type.shape == tuple(shape) else b.node(BROADCAST_TO, [x], shape=tuple(shape))


def sum_to(b, x, shape):
    return x if x.type.shape == tuple(shape) else b.node(SUM_TO, [x], shape=tuple(shape))


# ------------------------------------------------ reshape, flatten, concat

def _count(shape) -> tuple[int, list]:
    """(product of the fixed dims and factors, sorted symbols)."""
    fixed, syms = 1, []
    for d in shape:
        f, s = dim_factors(d)
        fixed, syms = fixed * f, syms + s
    return fixed, sorted(syms)


def filled_dims(x: TensorType, dims: tuple) -> tuple:
    """reshape's dims (sizes, fixed or symbolic) with its -1 inferred: the
    elements of x over the other dims, symbols included ([batch, time, 64]
    to (-1, 64) fills batch*time)."""
    shown = "(" + ", ".join(map(str, dims)) + ("," if len(dims) == 1 else "") + ")"
    if sum(d == -1 for d in dims) > 1 or any(dim_factors(d)[0] < 1 for d in dims if d != -1):
        raise OpError(f"'reshape' dims must be positive, with at most one -1, got {shown}",
                      arg="dims")
    if -1 not in dims:
        return dims
    fixed_in, syms = _count(x.shape)
    fixed_out, syms_out = _count([d for d in dims if d != -1])
    for sym in syms_out:
        if sym not in syms:
            break
        syms.remove(sym)
    else:
        if fixed_in % fixed_out == 0:
            fill = dim_product([fixed_in // fixed_out] + syms)
            return tuple(fill if d == -1 else d for d in dims)
    raise OpError(f"'reshape' can't fill the -1 of {shown}: {x} has "
                  f"{format_shape(x.shape)} elements", arg="dims")


class Reshape(Op):
    """Row-major reshape (a view in PyTorch; here the consumer reads through
    it). Dims may be symbols and products of them (`batch * time`); one may
    be -1, inferred with the symbols (see filled_dims)."""
    name = "reshape"
    signature = (Arg("x", "tensor"), Arg("dims", "dims"))
    same_order_as_input = True

    def build(self, b, args):
        return reshape(b, args["x"], filled_dims(args["x"].type, tuple(args["dims"])))

    def infer(self, ins, attrs) -> TensorType:
        (x,), shape = ins, tuple(attrs["shape"])
        if _count(x.shape) != _count(shape):
            raise OpError(f"'reshape' can't make {format_shape(shape)} from "
                          f"{x} ({format_shape(x.shape)} elements differ)", arg="dims")
        return TensorType(x.dtype, shape)

    def grad(self, b, node, g):
        return [reshape(b, g, node.inputs[0].type.shape)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        src, dst = node.inputs[0].type.shape, node.attrs["shape"]
        k = 0   # leading dims that agree map directly (the batch, usually)
        while k < min(len(src), len(dst)) and src[k] == dst[k]:
            k += 1
        out = [(i, d) for i, d in zip(idx[k:], dst[k:]) if d != 1]
        zero = L.Const(0, L.INDEX)
        if [d for _, d in out] == [d for d in src[k:] if d != 1]:
            it = iter(i for i, _ in out)   # only unit dims differ
            return ins[0](idx[:k] + [zero if d == 1 else next(it) for d in src[k:]])
        flat: L.Expr = zero
        for i, d in out:
            flat = flat * ctx.dim(d) + i
        rest = []
        inner = [a for a, d in enumerate(src) if a >= k and d != 1]
        for a in reversed(range(k, len(src))):
            if src[a] == 1:
                rest.append(zero)
            elif a == inner[0]:
                rest.append(flat)
            else:
                q = L.binop("/", flat, ctx.dim(src[a]))
                rest.append(flat - q * ctx.dim(src[a]))
                flat = q
        return ins[0](idx[:k] + rest[::-1])

    def reference(self, x, *, shape):
        return x.reshape(tuple(-1 if isinstance(d, str) else d for d in shape))


class Flatten(Op):
    """[batch, ...] -> [batch, product of the rest], as nn.Flatten."""
    name = "flatten"
    signature = (Arg("x", "tensor"),)

    def build(self, b, args):
        x = args["x"]
        if x.type.rank < 2:
            raise OpError(f"'flatten' needs at least 2 axes [batch, ...], got {x.type}", arg="x")
        if not all(isinstance(d, int) for d in x.type.shape[1:]):
            raise OpError(f"'flatten' needs fixed sizes after the batch axis, got {x.type}", arg="x")
        return reshape(b, x, (x.type.shape[0], math.prod(x.type.shape[1:])))


class Concat(Op):
    """torch.cat((a, b), dim=axis)."""
    name = "concat"
    signature = (Arg("a", "tensor"), Arg("b", "tensor"), Arg("axis", "int", 1))

    def build(self, b, args):
        x, y, axis = args["a"], args["b"], args["axis"]
        if x.type.dtype != y.type.dtype or x.type.rank != y.type.rank:
            raise OpError(f"'concat' needs tensors of one dtype and rank, got {x.type} and {y.type}",
                          arg="b")
        if not -x.type.rank <= axis < x.type.rank:
            raise OpError(f"'concat' axis {axis} is out of range for {x.type}", arg="axis")
        axis %= x.type.rank
        if not isinstance(x.type.shape[axis], int) or not isinstance(y.type.shape[axis], int):
            raise OpError(f"'concat' needs fixed sizes along axis {axis}, got {x.type} and {y.type}",
                          arg="axis")
        if any(d != e for a, (d, e) in enumerate(zip(x.type.shape, y.type.shape)) if a != axis):
            raise OpError(f"'concat' along axis {axis} needs the other dims equal, got "
                          f"{x.type} and {y.type}", arg="b")
        return b.node(self, [x, y], axis=axis)

    def infer(self, ins, attrs) -> TensorType:
        x, y = ins
        axis = attrs["axis"]
        shape = list(x.shape)
        shape[axis] = x.shape[axis] + y.shape[axis]
        return TensorType(x.dtype, tuple(shape))

    def grad(self, b, node, g):
        axis = node.attrs["axis"]
        na, nb = (v.type.shape[axis] for v in node.inputs)
        return [b.node(SLICE, [g], axis=axis, start=0, size=na),
                b.node(SLICE, [g], axis=axis, start=na, size=nb)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        axis = node.attrs["axis"]
        na = node.inputs[0].type.shape[axis]
        i = idx[axis]
        ia = idx[:axis] + [L.minimum(i, na - 1)] + idx[axis + 1:]
        ib = idx[:axis] + [L.maximum(i - na, 0)] + idx[axis + 1:]
        return L.Select(L.cmp("<", i, na), ins[0](ia), ins[1](ib))

    def reference(self, a, b, *, axis):
        return np.concatenate([a, b], axis=axis)


class Slice(Op):
    """x[..., start:start + size, ...] along `axis`: concat's adjoint."""
    name = "slice"

    def infer(self, ins, attrs) -> TensorType:
        shape = list(ins[0].shape)
        shape[attrs["axis"]] = attrs["size"]
        return TensorType(ins[0].dtype, tuple(shape))

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        a = node.attrs["axis"]
        return ins[0](idx[:a] + [idx[a] + node.attrs["start"]] + idx[a + 1:])

    def reference(self, x, *, axis, start, size):
        return np.take(x, range(start, start + size), axis=axis)


class Transpose(Op):
    """x.permute(dims): output axis k is x's axis dims[k] (CNN features
    read as a sequence: [batch, C, H, W] -> [batch, W, C, H])."""
    name = "transpose"
    signature = (Arg("x", "tensor"), Arg("dims", "ints"))

    def build(self, b, args):
        x, dims = args["x"], tuple(args["dims"])
        if sorted(dims) != list(range(x.type.rank)):
            raise OpError(f"'transpose' dims must order the {x.type.rank} axes of {x.type}, "
                          f"each once (0 to {x.type.rank - 1}), got {dims}", arg="dims")
        return x if dims == tuple(range(x.type.rank)) else b.node(self, [x], dims=dims)

    def infer(self, ins, attrs) -> TensorType:
        (x,) = ins
        return TensorType(x.dtype, tuple(x.shape[a] for a in attrs["dims"]))

    def grad(self, b, node, g):
        dims = node.attrs["dims"]
        inverse = tuple(sorted(range(len(dims)), key=dims.__getitem__))
        return [b.node(TRANSPOSE, [g], dims=inverse)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        src = [None] * len(idx)
        for i, a in zip(idx, node.attrs["dims"]):
            src[a] = i
        return ins[0](src)

    def reference(self, x, *, dims):
        return np.transpose(x, dims)


RESHAPE, FLATTEN = register(Reshape()), register(Flatten())
CONCAT, SLICE = register(Concat()), register(Slice())
TRANSPOSE = register(Transpose())


def reshape(b, x, shape):
    return x if x.type.shape == tuple(shape) else b.node(RESHAPE, [x], shape=tuple(shape))
