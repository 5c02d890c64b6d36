"""Neural-network layers and the matrix product: matmul, dense, softmax, log_softmax.

`dense` owns parameters `<name>.weight` [units, in] and `<name>.bias` [units]
with PyTorch's nn.Linear layout and default initialisation
(U(-1/sqrt(in), 1/sqrt(in)) for both).
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, Init, TensorType, Value, dim_product, format_shape
from .base import Arg, Op, OpError, broadcast_shapes, need_float, register, same_dtype
from .elementwise import EXP, LOG, add, div, sub
from .reduce import MAX_LAST, SUM_LAST
from .shape import STOP_GRADIENT, broadcast, reshape, sum_to


class Gemm(Op):
    """C = op(A) @ op(B), op transposing the last two axes when ta / tb, over
    the broadcast leading (batch) axes of A and B. The 2-D product of dense
    layers and the batched one of `matmul`; graph_fuse and the loop passes
    treat it as the product it is."""
    name = "gemm"
    rereads = True
    reduces = True

    def infer(self, ins, attrs) -> TensorType:
        a, b = ins
        dtype = same_dtype(self.name, ins)
        need_float(self.name, a)
        if a.rank < 2 or b.rank < 2:
            raise OpError(f"'gemm' needs operands of at least 2 axes, got {a} and {b}")
        m, k = a.shape[:-3:-1] if attrs["ta"] else a.shape[-2:]
        k2, n = b.shape[:-3:-1] if attrs["tb"] else b.shape[-2:]
        if k != k2:
            raise OpError(f"'matmul' inner dims differ: {format_shape(a.shape)} and {format_shape(b.shape)}",
                          arg="b")
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2], "batch axes of 'matmul'")
        return TensorType(dtype, batch + (m, n))

    def grad(self, b, node, g):
        x, y = node.inputs
        ta, tb = node.attrs["ta"], node.attrs["tb"]
        mm = lambda p, q, tp, tq: b.node(GEMM, [p, q], ta=tp, tb=tq)
        if not ta and not tb:
            gx, gy = mm(g, y, False, True), mm(x, g, True, False)
        elif not ta and tb:
            gx, gy = mm(g, y, False, False), mm(g, x, True, False)
        elif ta and not tb:
            gx, gy = mm(y, g, False, True), mm(x, g, False, False)
        else:
            gx, gy = mm(y, g, True, True), mm(g, x, True, True)
        # a broadcast batch axis sums its gradient
        return [sum_to(b, gx, x.type.shape), sum_to(b, gy, y.type.shape)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        *batch, m, n = idx
        k = ctx.var("k")
        a_t, b_t = (v.type for v in node.inputs)
        kdim = a_t.shape[-2] if node.attrs["ta"] else a_t.shape[-1]
        a = ins[0](batch_index(batch, a_t) + ([k, m] if node.attrs["ta"] else [m, k]))
        b = ins[1](batch_index(batch, b_t) + ([n, k] if node.attrs["tb"] else [k, n]))
        return L.Reduce("sum", (k,), (ctx.dim(kdim),), a * b)

    def reference(self, a, b, *, ta, tb):
        return np.matmul(np.swapaxes(a, -1, -2) if ta else a, np.swapaxes(b, -1, -2) if tb else b)


def batch_index(batch: list, t: TensorType) -> list:
    """An operand's batch indices from the output's: its missing leading
    axes dropped, its size-1 axes read at 0."""
    lead = len(batch) - (t.rank - 2)
    return [L.Const(0, L.INDEX) if d == 1 else batch[lead + i] for i, d in enumerate(t.shape[:-2])]


GEMM = register(Gemm())


def rows(b: Builder, x: Value) -> Value:
    """x as a matrix [product of the leading dims, last dim]: a product over
    the last axis of any rank is one 2-D product (one tiled kernel, and no
    per-batch copies of the other operand's gradient)."""
    return reshape(b, x, (dim_product(x.type.shape[:-1]), x.type.shape[-1]))


class MatMul(Op):
    """torch.matmul: 1-D operands get an axis (removed after), the leading
    axes broadcast."""
    name = "matmul"
    signature = (Arg("a", "tensor"), Arg("b", "tensor"))

    def build(self, b: Builder, args) -> Value:
        x, y = args["a"], args["b"]
        for arg, v in (("a", x), ("b", y)):
            if v.type.rank == 0:
                raise OpError(f"'matmul' needs tensors of at least 1 axis, got a scalar {v.type}", arg=arg)
            need_float(self.name, v.type, arg=arg)
        if x.type.dtype != y.type.dtype:
            raise OpError(f"'matmul' mixes dtypes {x.type} and {y.type}", arg="b")
        xm = x if x.type.rank > 1 else reshape(b, x, (1,) + x.type.shape)
        ym = y if y.type.rank > 1 else reshape(b, y, y.type.shape + (1,))
        if xm.type.shape[-1] != ym.type.shape[-2]:
            raise OpError(f"'matmul' needs a's last dim equal to b's "
                          f"{'only' if y.type.rank == 1 else 'second-to-last'} dim, "
                          f"got {x.type} and {y.type}", arg="b")
        broadcast_shapes(xm.type.shape[:-2], ym.type.shape[:-2], "batch axes of 'matmul'", arg="b")
        if xm.type.rank > 2 and ym.type.rank == 2:
            out = b.node(GEMM, [rows(b, xm), ym], ta=False, tb=False)
            out = reshape(b, out, xm.type.shape[:-1] + ym.type.shape[-1:])
        else:
            out = b.node(GEMM, [xm, ym], ta=False, tb=False)
        shape = out.type.shape
        if x.type.rank == 1:
            shape = shape[:-2] + shape[-1:]
        if y.type.rank == 1:
            shape = shape[:-1]
        return reshape(b, out, shape)

    def reference(self, a, b):
        return np.matmul(a, b)


class Dense(Op):
    """nn.Linear over the last axis of an input of any rank >= 1."""
    name = "dense"
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("units", "int"), Arg("name", "str", None),
                 Arg("bias", "bool", True))

    def build(self, b: Builder, args) -> Value:
        x, units, name = args["x"], args["units"], args["name"]
        if x.type.rank == 0:
            raise OpError(f"'dense' expects an input [..., features], got a scalar {x.type}", arg="x")
        need_float(self.name, x.type, arg="x")
        if units < 1:
            raise OpError(f"'dense' needs units >= 1, got {units}", arg="units")
        fan_in = x.type.shape[-1]
        if not isinstance(fan_in, int):
            raise OpError(f"'dense' needs a fixed number of input features, got {x.type}", arg="x")
        bound = 1.0 / math.sqrt(fan_in)
        init = Init("uniform", -bound, bound)
        w = b.param(f"{name}.weight", TensorType(x.type.dtype, (units, fan_in)), init, layer=name)
        y = b.node(GEMM, [rows(b, x), w], ta=False, tb=True)
        if args["bias"]:
            bias = b.param(f"{name}.bias", TensorType(x.type.dtype, (units,)), init, layer=name)
            y = add(b, y, broadcast(b, bias, y.type.shape))
        y = reshape(b, y, x.type.shape[:-1] + (units,))
        b.layer(name, self.name, y)
        return y

    def reference(self, x, w, bias=None):
        return x @ w.T + (0 if bias is None else bias)


class LogSoftmax(Op):
    """log_softmax over the last axis, as x - max - log(sum(exp(x - max)))."""
    name = "log_softmax"
    signature = (Arg("x", "tensor"),)

    def build(self, b: Builder, args) -> Value:
        z = shifted(b, args["x"], self.name)
        lse = b.node(LOG, [b.node(SUM_LAST, [b.node(EXP, [z])])])
        return sub(b, z, broadcast(b, lse, z.type.shape))

    def reference(self, x):
        z = x - x.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Softmax(Op):
    name = "softmax"
    signature = (Arg("x", "tensor"),)

    def build(self, b: Builder, args) -> Value:
        e = b.node(EXP, [shifted(b, args["x"], self.name)])
        return div(b, e, broadcast(b, b.node(SUM_LAST, [e]), e.type.shape))

    def reference(self, x):
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)


def shifted(b: Builder, x: Value, op: str) -> Value:
    """x minus its row max; the max is a constant shift, so no gradient."""
    need_float(op, x.type)
    if x.type.rank == 0:
        raise OpError(f"'{op}' needs at least one axis, got a scalar {x.type}", arg="x")
    m = b.node(STOP_GRADIENT, [b.node(MAX_LAST, [x])])
    return sub(b, x, broadcast(b, m, x.type.shape))


MATMUL, DENSE = register(MatMul()), register(Dense())
LOG_SOFTMAX, SOFTMAX = register(LogSoftmax()), register(Softmax())
