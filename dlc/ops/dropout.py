"""Random ops of train blocks, the identity in a model's inference entry:

- dropout(x, p): zeroes each element with probability p and scales the
  rest by 1 / (1 - p), as nn.Dropout in train mode (a multiplication by the
  mask: a dropped NaN or inf gives NaN);
- gaussian_noise(x, std): adds N(0, std^2) noise to each element, as
  `x + std * torch.randn_like(x)`.

Nothing random is stored: element i of the k-th random op of a train block
draws 64 bits from a counter-based hash (splitmix64) of (seed, k, step, i),
where `step` is the block's state `<block>.random_step` (i32, incremented
by every training step). Dropout keeps an element when the top 24 bits,
as a uniform in [0, 1), are at least p; noise turns two 24-bit uniforms
into a normal (Box-Muller). The gradient of dropout is the same op applied
to the output gradient (the same hash gives the same mask); that of noise
is the identity. So a step is deterministic given the session's state, and
the gradient entry sees the draw of the next training step.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value
from ..lower import flat_index
from .base import Arg, Op, OpError, need_float, register
from .elementwise import add, horner, scalar_like

MIX1, MIX2, GOLDEN = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0x9E3779B97F4A7C15
M64 = (1 << 64) - 1
UNIT = 1.0 / (1 << 24)   # a 24-bit uniform's step


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


def stream(seed: int, salt: int) -> int:
    """The first counter of op `salt`'s stream under `seed` (steps follow)."""
    return ((seed << 48) + (salt << 32)) & M64


class RandomOp(Op):
    """An op over (x, step) whose element i reads 64 random bits: the hash
    of its stream, the step and i. Subclasses give the op's value from x
    and the bits, in the loop IR (`apply`) and in NumPy (`apply_np`)."""

    def build_random(self, b: Builder, x: Value, **attrs) -> Value:
        """This op on x in a train block (else x), drawing from its own stream."""
        if b.fn.kind != "train":
            return x
        name = f"{b.fn.name}.random_step"
        first = name not in b.fn.states
        step = b.state(name, TensorType("i32", ()))
        if first:
            b.fn.assigns.append((step, add(b, step, scalar_like(b, 1, step))))
        salt = sum(isinstance(n.op, RandomOp) for n in b.fn.nodes)
        return b.node(self, [x, step], salt=salt, **attrs)

    def infer(self, ins, attrs) -> TensorType:
        return ins[0]

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        a = node.attrs
        step = L.Cast(ins[1]([]), L.INDEX)
        base = splitmix(L.binop("+", L.Const(signed(stream(a["seed"], a["salt"])), L.INDEX), step))
        flat = flat_index(ctx, idx, node.inputs[0].type.shape)
        return self.apply(ins[0](idx), splitmix(L.binop("+", base, flat * signed(GOLDEN))), **a)

    def reference(self, x, step, *, seed, salt, **attrs):
        base = splitmix_np(np.array([(stream(seed, salt) + int(step)) & M64]))[0]
        with np.errstate(over="ignore"):
            z = splitmix_np(base + np.arange(x.size, dtype=np.uint64) * np.uint64(GOLDEN))
        return self.apply_np(x, z.reshape(x.shape), **attrs).astype(x.dtype)

    def apply(self, x: L.Expr, bits: L.Expr, **attrs) -> L.Expr:
        raise NotImplementedError

    def apply_np(self, x: np.ndarray, bits: np.ndarray, **attrs) -> np.ndarray:
        raise NotImplementedError


def uniform(bits: L.Expr, k: int, dtype: str) -> L.Expr:
    """The k-th 24-bit field of bits from the top, as a uniform in [0, 1)."""
    field = L.binop("shr", L.binop("shl", bits, 24 * k) if k else bits, 40)
    return L.Cast(field, dtype) * UNIT


def uniform_np(bits: np.ndarray, k: int) -> np.ndarray:
    return ((bits << np.uint64(24 * k)) >> np.uint64(40)).astype(np.float64) * UNIT


class Dropout(RandomOp):
    name = "dropout"
    signature = (Arg("x", "tensor"), Arg("p", "float", 0.5), Arg("seed", "int", 0))

    def build(self, b: Builder, args) -> Value:
        x, p = args["x"], args["p"]
        need_float("dropout", x.type)
        if not 0 <= p < 1:
            raise OpError(f"'dropout' needs p in [0, 1), got {p:g}", arg="p")
        return x if p == 0 else self.build_random(b, x, p=p, seed=args["seed"])

    def grad(self, b, node, g):
        return [b.node(self, [g, node.inputs[1]], **node.attrs), None]

    def apply(self, x, bits, *, p, **_):
        # x times the mask, as PyTorch: a dropped NaN or inf still gives NaN.
        return x * L.Select(L.cmp(">=", uniform(bits, 0, x.dtype), p),
                            L.const_like(1.0 / (1.0 - p), x.dtype), L.const_like(0, x.dtype))

    def apply_np(self, x, bits, *, p):
        return x * np.where(uniform_np(bits, 0) >= p, 1 / (1 - p), 0)


# cos(a) = sum (-1)^k a^2k / (2k)! for |a| <= pi / 2 (error below 1e-12).
COS_SERIES = [(-1) ** k / math.factorial(2 * k) for k in range(9)]


def cos_2pi(u: L.Expr) -> L.Expr:
    """cos(2 pi u) for u in [0, 1): a = |u - 1/2| gives -cos(2 pi a), and
    a quarter turn folds a into [0, 1/4], where the series converges fast."""
    a = L.call("abs", u - 0.5)
    r = L.minimum(a, 0.5 - a) * float(2 * np.pi)
    c = horner(r * r, COS_SERIES)
    return L.Select(L.cmp("<=", a, 0.25), -c, c)


class GaussianNoise(RandomOp):
    name = "gaussian_noise"
    signature = (Arg("x", "tensor"), Arg("std", "float"), Arg("seed", "int", 0))

    def build(self, b: Builder, args) -> Value:
        x, std = args["x"], args["std"]
        need_float("gaussian_noise", x.type)
        if not std >= 0:
            raise OpError(f"'gaussian_noise' needs std >= 0, got {std:g}", arg="std")
        return x if std == 0 else self.build_random(b, x, std=std, seed=args["seed"])

    def grad(self, b, node, g):
        return [g, None]

    def apply(self, x, bits, *, std, **_):
        # Box-Muller: 1 - u is in (0, 1], so the log is finite.
        radius = L.call("sqrt", -2.0 * L.call("log", 1.0 - uniform(bits, 0, x.dtype)))
        return x + std * radius * cos_2pi(uniform(bits, 1, x.dtype))

    def apply_np(self, x, bits, *, std):
        radius = np.sqrt(-2 * np.log(1 - uniform_np(bits, 0)))
        return x + std * radius * np.cos(2 * np.pi * uniform_np(bits, 1))


DROPOUT, GAUSSIAN_NOISE = register(Dropout()), register(GaussianNoise())
