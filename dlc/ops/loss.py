"""Losses, each a mean over the batch: cross_entropy (stable log-softmax +
NLL on integer labels), mse and bce (with PyTorch's log clamp at -100)."""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value, format_shape
from ..lower import IndexRange
from .base import Arg, Op, OpError, need_float, register
from .elementwise import CLAMPED_LOG, mul, neg, scalar_like, sub, add
from .nn import LOG_SOFTMAX
from .reduce import mean


class PickLast(Op):
    """out[...] = x[..., idx[...]]; NaN where the index is out of range, never
    stray memory (the runtime refuses such labels first: `operand_range`)."""
    name = "pick_last"

    def infer(self, ins, attrs) -> TensorType:
        x, i = ins
        return TensorType(x.dtype, x.shape[:-1])

    def grad(self, b, node, g):
        x, i = node.inputs
        return [b.node(SCATTER_LAST, [g, i], classes=x.type.shape[-1]), None]

    def operand_range(self, node, k):
        return IndexRange.upto(0, node.inputs[0].type.shape[-1], -1) if k == 1 else None

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n = ctx.dim(node.inputs[0].type.shape[-1])
        label = L.Cast(ins[1](idx), L.INDEX)
        safe = L.minimum(L.maximum(label, 0), n - 1)
        ok = L.Bin("and", L.cmp(">=", label, 0), L.cmp("<", label, n), "bool")
        return L.Select(ok, ins[0](idx + [safe]), L.const_like(float("nan"), node.out.type.dtype))

    def reference(self, x, i):
        return np.take_along_axis(x, i[..., None].astype(np.int64), axis=-1)[..., 0]


class ScatterLast(Op):
    """out[..., c] = g[...] where idx[...] == c, else 0: pick_last's adjoint."""
    name = "scatter_last"

    def infer(self, ins, attrs) -> TensorType:
        g, i = ins
        return TensorType(g.dtype, g.shape + (attrs["classes"],))

    def operand_range(self, node, k):
        return IndexRange.upto(0, node.attrs["classes"], -1) if k == 1 else None

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        label = L.Cast(ins[1](idx[:-1]), L.INDEX)
        return L.Select(L.cmp("==", label, idx[-1]), ins[0](idx[:-1]),
                        L.const_like(0, node.out.type.dtype))

    def reference(self, g, i, *, classes):
        out = np.zeros(g.shape + (classes,), g.dtype)
        np.put_along_axis(out, i[..., None].astype(np.int64), g[..., None], axis=-1)
        return out


PICK_LAST, SCATTER_LAST = register(PickLast()), register(ScatterLast())


class CrossEntropy(Op):
    name = "cross_entropy"
    signature = (Arg("logits", "tensor"), Arg("labels", "tensor"))

    def build(self, b: Builder, args) -> Value:
        x, t = args["logits"], args["labels"]
        need_float(self.name, x.type, "logits")
        if x.type.rank != 2:
            raise OpError(f"'cross_entropy' expects logits [batch, classes], got {x.type}", arg="logits")
        if t.type.dtype != "i32":
            raise OpError(f"'cross_entropy' expects integer labels (i32), got {t.type}", arg="labels")
        if t.type.shape != x.type.shape[:1]:
            raise OpError(f"'cross_entropy' labels {format_shape(t.type.shape)} do not match "
                          f"logits {format_shape(x.type.shape)}: expected {format_shape(x.type.shape[:1])}",
                          arg="labels")
        logp = LOG_SOFTMAX.build(b, {"x": x})
        return neg(b, mean(b, b.node(PICK_LAST, [logp, t])))

    def reference(self, logits, labels):
        logp = LOG_SOFTMAX.reference(logits)
        return -PICK_LAST.reference(logp, labels).mean()


def same_shape(op: str, p: Value, t: Value) -> None:
    need_float(op, p.type)
    if p.type != t.type:
        raise OpError(f"'{op}' needs prediction and target of one type, got {p.type} and {t.type}",
                      arg="target")


class Mse(Op):
    name = "mse"
    signature = (Arg("pred", "tensor"), Arg("target", "tensor"))

    def build(self, b: Builder, args) -> Value:
        p, t = args["pred"], args["target"]
        same_shape(self.name, p, t)
        d = sub(b, p, t)
        return mean(b, mul(b, d, d))

    def reference(self, pred, target):
        return np.mean((pred - target) ** 2)


class Bce(Op):
    name = "bce"
    signature = (Arg("prob", "tensor"), Arg("target", "tensor"))

    def build(self, b: Builder, args) -> Value:
        p, t = args["prob"], args["target"]
        same_shape(self.name, p, t)
        one = scalar_like(b, 1.0, p)
        ll = add(b, mul(b, t, b.node(CLAMPED_LOG, [p])),
                 mul(b, sub(b, one, t), b.node(CLAMPED_LOG, [sub(b, one, p)])))
        return neg(b, mean(b, ll))

    def reference(self, prob, target):
        lp = np.maximum(np.log(prob), -100)
        l1p = np.maximum(np.log(1 - prob), -100)
        return -np.mean(target * lp + (1 - target) * l1p)


CROSS_ENTROPY, MSE, BCE = register(CrossEntropy()), register(Mse()), register(Bce())
