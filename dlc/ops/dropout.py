"""dropout(x, p): in a train block, zeroes each element with probability p
and scales the rest by 1 / (1 - p), as nn.Dropout in train mode (a
multiplication by the mask: a dropped NaN or inf gives NaN); in a
model's inference entry it is the identity.

The mask is never stored: element i of the k-th dropout of a train block
keeps when a counter-based hash (splitmix64) of (seed, k, step, i) is at
least p, where `step` is the block's state `<block>.dropout_step` (i32,
incremented by every training step). The gradient is the same op applied to
the output gradient: the same hash gives the same mask. So a step is
deterministic given the session's state, and the gradient entry sees the
mask of the next training step.
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value
from .base import Arg, Op, OpError, need_float, register
from .elementwise import add, scalar_like

MIX1, MIX2, GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1


def signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def splitmix(z: L.Expr) -> L.Expr:
    """splitmix64's finalizer on i64 (wrapping multiplication, logical shifts)."""
    for shift, mult in ((30, MIX1), (27, MIX2)):
        z = L.binop("*", L.binop("xor", z, L.binop("shr", z, shift)), L.Const(signed(mult), L.INDEX))
    return L.binop("xor", z, L.binop("shr", z, 31))


def splitmix_np(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.uint64)
    with np.errstate(over="ignore"):
        for shift, mult in ((30, MIX1), (27, MIX2)):
            z = (z ^ (z >> np.uint64(shift))) * np.uint64(mult)
    return z ^ (z >> np.uint64(31))


class Dropout(Op):
    name = "dropout"
    signature = (Arg("x", "tensor"), Arg("p", "float", 0.5), Arg("seed", "int", 0))

    def build(self, b: Builder, args) -> Value:
        x, p = args["x"], args["p"]
        need_float("dropout", x.type)
        if not 0 <= p < 1:
            raise OpError(f"'dropout' needs p in [0, 1), got {p:g}", arg="p")
        if b.fn.kind != "train" or p == 0:
            return x
        name = f"{b.fn.name}.dropout_step"
        first = name not in b.fn.states
        step = b.state(name, TensorType("i32", ()))
        if first:
            b.fn.assigns.append((step, add(b, step, scalar_like(b, 1, step))))
        salt = sum(n.op is self for n in b.fn.nodes)
        return b.node(self, [x, step], p=p, seed=args["seed"], salt=salt)

    def infer(self, ins, attrs) -> TensorType:
        return ins[0]

    def grad(self, b, node, g):
        return [b.node(self, [g, node.inputs[1]], **node.attrs), None]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        shape = node.inputs[0].type.shape
        flat: L.Expr = L.Const(0, L.INDEX)
        for i, d in zip(idx, shape):
            flat = flat * ctx.dim(d) + i
        a = node.attrs
        step = L.Cast(ins[1]([]), L.INDEX)
        stream = L.Const(signed(((a["seed"] << 48) + (a["salt"] << 32)) & M64), L.INDEX)
        base = splitmix(L.binop("+", stream, step))
        z = splitmix(L.binop("+", base, flat * signed(GOLDEN)))
        x = ins[0](idx)
        u = L.Cast(L.binop("shr", z, 40), x.dtype) * (1.0 / (1 << 24))   # uniform [0, 1)
        # x times the mask, as PyTorch: a dropped NaN or inf still gives NaN.
        return x * L.Select(L.cmp(">=", u, a["p"]), L.const_like(1.0 / (1.0 - a["p"]), x.dtype),
                            L.const_like(0, x.dtype))

    def reference(self, x, step, *, p, seed, salt):
        stream = np.uint64((((seed << 48) + (salt << 32)) + int(step)) & M64)
        base = splitmix_np(np.array([stream]))[0]
        with np.errstate(over="ignore"):
            z = splitmix_np(base + np.arange(x.size, dtype=np.uint64) * np.uint64(GOLDEN))
        u = (z >> np.uint64(40)).astype(np.float64) / (1 << 24)
        keep = (u >= p).reshape(x.shape)
        return (x * np.where(keep, 1 / (1 - p), 0)).astype(x.dtype)


DROPOUT = register(Dropout())
