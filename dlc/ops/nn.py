"""Neural-network layers and the matrix product: dense, softmax, log_softmax.

`dense` owns parameters `<name>.weight` [units, in] and `<name>.bias` [units]
with PyTorch's nn.Linear layout and default initialisation
(U(-1/sqrt(in), 1/sqrt(in)) for both).
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, Init, TensorType, Value, format_shape
from .base import Arg, Op, OpError, need_float, register, same_dtype
from .elementwise import EXP, LOG, add, broadcast, div, sub
from .reduce import MAX_LAST, SUM_LAST
from .shape import STOP_GRADIENT


class MatMul(Op):
    """C = op(A) @ op(B) on 2-D operands, op transposing when ta / tb."""
    name = "matmul"

    def infer(self, ins, attrs) -> TensorType:
        a, b = ins
        dtype = same_dtype(self.name, ins)
        need_float(self.name, a)
        if a.rank != 2 or b.rank != 2:
            raise OpError(f"'matmul' needs 2-D operands, got {a} and {b}")
        m, k = a.shape[::-1] if attrs["ta"] else a.shape
        k2, n = b.shape[::-1] if attrs["tb"] else b.shape
        if k != k2:
            raise OpError(f"matmul inner dims differ: {format_shape(a.shape)} and {format_shape(b.shape)}")
        return TensorType(dtype, (m, n))

    def grad(self, b, node, g):
        x, y = node.inputs
        ta, tb = node.attrs["ta"], node.attrs["tb"]
        mm = lambda p, q, tp, tq: b.node(MATMUL, [p, q], ta=tp, tb=tq)
        if not ta and not tb:
            return [mm(g, y, False, True), mm(x, g, True, False)]
        if not ta and tb:
            return [mm(g, y, False, False), mm(g, x, True, False)]
        if ta and not tb:
            return [mm(y, g, False, True), mm(x, g, False, False)]
        return [mm(y, g, True, True), mm(g, x, True, True)]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        m, n = idx
        a_t = node.inputs[0].type
        k = ctx.var("k")
        kdim = a_t.shape[0] if node.attrs["ta"] else a_t.shape[1]
        a = ins[0]([k, m] if node.attrs["ta"] else [m, k])
        b = ins[1]([n, k] if node.attrs["tb"] else [k, n])
        return L.Reduce("sum", (k,), (ctx.dim(kdim),), a * b)

    def reference(self, a, b, *, ta, tb):
        return (a.T if ta else a) @ (b.T if tb else b)


MATMUL = register(MatMul())


class Dense(Op):
    name = "dense"
    owns_params = True
    signature = (Arg("x", "tensor"), Arg("units", "int"), Arg("name", "str", None),
                 Arg("bias", "bool", True))

    def build(self, b: Builder, args) -> Value:
        x, units, name = args["x"], args["units"], args["name"]
        if x.type.rank != 2:
            raise OpError(f"'dense' expects a 2-D input [batch, features], got {x.type}", arg="x")
        need_float("dense", x.type)
        if units < 1:
            raise OpError(f"'dense' needs units >= 1, got {units}", arg="units")
        fan_in = x.type.shape[1]
        if not isinstance(fan_in, int):
            raise OpError(f"'dense' needs a fixed number of input features, got {x.type}", arg="x")
        bound = 1.0 / math.sqrt(fan_in)
        init = Init("uniform", -bound, bound)
        w = b.param(f"{name}.weight", TensorType(x.type.dtype, (units, fan_in)), init, layer=name)
        y = b.node(MATMUL, [x, w], ta=False, tb=True)
        if args["bias"]:
            bias = b.param(f"{name}.bias", TensorType(x.type.dtype, (units,)), init, layer=name)
            y = add(b, y, broadcast(b, bias, y.type.shape))
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


DENSE = register(Dense())
LOG_SOFTMAX, SOFTMAX = register(LogSoftmax()), register(Softmax())
