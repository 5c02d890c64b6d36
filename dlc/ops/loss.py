"""Losses, as PyTorch's, each with `reduction="mean"|"sum"` over all loss
elements: cross_entropy (stable log-softmax + NLL on integer labels, classes
on the last axis, optional `ignore_index`), mse, bce (with PyTorch's log
clamp at -100) and smooth_l1 on any rank."""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value, format_shape
from ..lower import IndexRange
from .base import Arg, Op, OpError, need_float, register
from .elementwise import CLAMP, CLAMPED_LOG, SIGN, Elementwise, add, div, mul, neg, scalar_like, sub
from .nn import LOG_SOFTMAX
from .reduce import SUM_ALL, mean

REDUCTIONS = ("mean", "sum")


def label_range(classes, ignore: int | None) -> IndexRange:
    """Labels in [0, classes - 1], or the ignore value. With a symbolic number
    of classes a non-negative ignore value must be below it."""
    valid = IndexRange.upto(0, classes, -1)
    if ignore is None or ignore >= 0 and (isinstance(classes, str) or ignore < classes):
        return valid
    return IndexRange(valid.lo, valid.hi, valid.sym, extra=ignore)


class PickLast(Op):
    """out[...] = x[..., idx[...]], 0 where idx is `ignore`; NaN where the
    index is out of range, never stray memory (the runtime refuses such
    labels first: `operand_range`)."""
    name = "pick_last"

    def infer(self, ins, attrs) -> TensorType:
        x, i = ins
        return TensorType(x.dtype, x.shape[:-1])

    def grad(self, b, node, g):
        x, i = node.inputs
        return [b.node(SCATTER_LAST, [g, i], classes=x.type.shape[-1], ignore=node.attrs["ignore"]), None]

    def operand_range(self, node, k):
        return label_range(node.inputs[0].type.shape[-1], node.attrs["ignore"]) if k == 1 else None

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n = ctx.dim(node.inputs[0].type.shape[-1])
        dtype = node.out.type.dtype
        label = L.Cast(ins[1](idx), L.INDEX)
        safe = L.minimum(L.maximum(label, 0), n - 1)
        ok = L.Bin("and", L.cmp(">=", label, 0), L.cmp("<", label, n), "bool")
        out = L.Select(ok, ins[0](idx + [safe]), L.const_like(float("nan"), dtype))
        if node.attrs["ignore"] is None:
            return out
        return L.Select(L.cmp("==", label, node.attrs["ignore"]), L.const_like(0, dtype), out)

    def reference(self, x, i, *, ignore=None):
        kept = i != ignore
        picked = np.take_along_axis(x, np.where(kept, i, 0)[..., None].astype(np.int64), axis=-1)[..., 0]
        return np.where(kept, picked, 0).astype(x.dtype)


class ScatterLast(Op):
    """out[..., c] = g[...] where idx[...] == c != ignore, else 0: pick_last's
    adjoint. A select, not a product, so an infinite g (the mean over no
    labels) still gives 0 to ignored elements, as PyTorch's."""
    name = "scatter_last"
    rereads = True

    def infer(self, ins, attrs) -> TensorType:
        g, i = ins
        return TensorType(g.dtype, g.shape + (attrs["classes"],))

    def operand_range(self, node, k):
        return label_range(node.attrs["classes"], node.attrs["ignore"]) if k == 1 else None

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        label = L.Cast(ins[1](idx[:-1]), L.INDEX)
        hit = L.cmp("==", label, idx[-1])
        if node.attrs["ignore"] is not None:
            hit = L.Bin("and", hit, L.cmp("!=", label, node.attrs["ignore"]), "bool")
        return L.Select(hit, ins[0](idx[:-1]), L.const_like(0, node.out.type.dtype))

    def reference(self, g, i, *, classes, ignore=None):
        out = np.zeros(g.shape + (classes,), g.dtype)
        kept = i != ignore
        np.put_along_axis(out, np.where(kept, i, 0)[..., None].astype(np.int64),
                          np.where(kept, g, 0)[..., None], axis=-1)
        return out


class NotIgnored(Op):
    """1 where the label is not `ignore`, else 0, in float `dtype`: the count
    of labels a mean divides by."""
    name = "not_ignored"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(attrs["dtype"], ins[0].shape)

    def grad(self, b, node, g):
        return [None]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        kept = L.cmp("!=", L.Cast(ins[0](idx), L.INDEX), node.attrs["ignore"])
        dtype = node.attrs["dtype"]
        return L.Select(kept, L.const_like(1, dtype), L.const_like(0, dtype))

    def reference(self, i, *, ignore, dtype):
        return (i != ignore).astype({"f32": np.float32, "f64": np.float64}[dtype])


PICK_LAST, SCATTER_LAST = register(PickLast()), register(ScatterLast())
NOT_IGNORED = register(NotIgnored())


def reduction_of(op: str, args) -> str:
    r = args["reduction"]
    if r not in REDUCTIONS:
        raise OpError(f"'{op}' has no reduction \"{r}\"; it takes: "
                      + ", ".join(f'"{c}"' for c in REDUCTIONS), arg="reduction")
    return r


def reduce_loss(b: Builder, x: Value, reduction: str) -> Value:
    return mean(b, x) if reduction == "mean" else b.node(SUM_ALL, [x])


def reduce_reference(x: np.ndarray, reduction: str) -> np.ndarray:
    return np.mean(x) if reduction == "mean" else np.sum(x)


class CrossEntropy(Op):
    name = "cross_entropy"
    signature = (Arg("logits", "tensor"), Arg("labels", "tensor"), Arg("ignore_index", "int", None),
                 Arg("reduction", "str", "mean"))

    def build(self, b: Builder, args) -> Value:
        x, t, ignore = args["logits"], args["labels"], args["ignore_index"]
        reduction = reduction_of(self.name, args)
        need_float(self.name, x.type, "logits")
        if x.type.rank < 1:
            raise OpError(f"'cross_entropy' expects logits [..., classes], got {x.type}", arg="logits")
        if t.type.dtype != "i32":
            raise OpError(f"'cross_entropy' expects integer labels (i32), got {t.type}", arg="labels")
        if t.type.shape != x.type.shape[:-1]:
            raise OpError(f"'cross_entropy' labels {format_shape(t.type.shape)} do not match "
                          f"logits {format_shape(x.type.shape)}: expected {format_shape(x.type.shape[:-1])}",
                          arg="labels")
        logp = LOG_SOFTMAX.build(b, {"x": x})
        picked = b.node(PICK_LAST, [logp, t], ignore=ignore)
        if ignore is None or reduction == "sum":
            return neg(b, reduce_loss(b, picked, reduction))
        # PyTorch's mean over the labels kept: NaN (0 / 0) when none is.
        kept = b.node(NOT_IGNORED, [t], ignore=ignore, dtype=x.type.dtype)
        return neg(b, div(b, b.node(SUM_ALL, [picked]), b.node(SUM_ALL, [kept])))

    def reference(self, logits, labels, ignore_index=None, reduction="mean"):
        picked = PICK_LAST.reference(LOG_SOFTMAX.reference(logits), labels, ignore=ignore_index)
        if ignore_index is None or reduction == "sum":
            return -reduce_reference(picked, reduction)
        return -picked.sum() / np.sum(labels != ignore_index).astype(logits.dtype)


def same_shape(op: str, p: Value, t: Value) -> None:
    need_float(op, p.type)
    if p.type != t.type:
        raise OpError(f"'{op}' needs prediction and target of one type, got {p.type} and {t.type}",
                      arg="target")


class Mse(Op):
    name = "mse"
    signature = (Arg("pred", "tensor"), Arg("target", "tensor"), Arg("reduction", "str", "mean"))

    def build(self, b: Builder, args) -> Value:
        p, t = args["pred"], args["target"]
        reduction = reduction_of(self.name, args)
        same_shape(self.name, p, t)
        d = sub(b, p, t)
        return reduce_loss(b, mul(b, d, d), reduction)

    def reference(self, pred, target, reduction="mean"):
        return reduce_reference((pred - target) ** 2, reduction)


class Bce(Op):
    name = "bce"
    signature = (Arg("prob", "tensor"), Arg("target", "tensor"), Arg("reduction", "str", "mean"))

    def build(self, b: Builder, args) -> Value:
        p, t = args["prob"], args["target"]
        reduction = reduction_of(self.name, args)
        same_shape(self.name, p, t)
        one = scalar_like(b, 1.0, p)
        ll = add(b, mul(b, t, b.node(CLAMPED_LOG, [p])),
                 mul(b, sub(b, one, t), b.node(CLAMPED_LOG, [sub(b, one, p)])))
        return neg(b, reduce_loss(b, ll, reduction))

    def reference(self, prob, target, reduction="mean"):
        lp = np.maximum(np.log(prob), -100)
        l1p = np.maximum(np.log(1 - prob), -100)
        return -reduce_reference(target * lp + (1 - target) * l1p, reduction)


class Huber(Elementwise):
    """smooth_l1's elementwise loss of d = pred - target: 0.5 d^2 / beta where
    |d| < beta, else |d| - 0.5 beta; |d| at beta = 0."""
    name = "huber"

    def scalar(self, d, beta):
        a = L.call("abs", d)
        return L.Select(L.cmp("<", a, beta), 0.5 * a * a / beta, a - 0.5 * beta) if beta else a

    def grad(self, b, node, g):
        # d / beta clamped to [-1, 1]; sign(d) (0 at 0) at beta = 0, as
        # PyTorch's l1_loss, which smooth_l1_loss calls then.
        d, beta = node.inputs[0], node.attrs["beta"]
        if beta == 0:
            return [mul(b, g, b.node(SIGN, [d]))]
        return [mul(b, g, b.node(CLAMP, [div(b, d, scalar_like(b, beta, d))], lo=-1.0, hi=1.0))]

    def reference(self, d, beta):
        a = np.abs(d)
        return np.where(a < beta, 0.5 * a * a / beta, a - 0.5 * beta) if beta else a


HUBER = register(Huber())


class SmoothL1(Op):
    name = "smooth_l1"
    signature = (Arg("pred", "tensor"), Arg("target", "tensor"), Arg("beta", "float", 1.0),
                 Arg("reduction", "str", "mean"))

    def build(self, b: Builder, args) -> Value:
        p, t, beta = args["pred"], args["target"], args["beta"]
        reduction = reduction_of(self.name, args)
        same_shape(self.name, p, t)
        if not beta >= 0:
            raise OpError(f"'smooth_l1' needs beta >= 0, got {beta}", arg="beta")
        return reduce_loss(b, b.node(HUBER, [sub(b, p, t)], beta=beta), reduction)

    def reference(self, pred, target, beta=1.0, reduction="mean"):
        return reduce_reference(HUBER.reference(pred - target, beta), reduction)


CROSS_ENTROPY, MSE, BCE = register(CrossEntropy()), register(Mse()), register(Bce())
SMOOTH_L1 = register(SmoothL1())
