"""Optimizers: their signatures in the language and their update rules,
written as elementwise graph ops with exactly torch.optim's arithmetic.
`clip=c` first scales all gradients by min(1, c / (global norm + 1e-6)),
as torch.nn.utils.clip_grad_norm_(params, c) before the step does.

`updates` returns (target, new value) pairs; the target is a parameter or an
optimizer state value, and the lowering writes all new values of one shape
in one kernel, reading every old value before writing any.

State names follow torch.optim's state dicts, under the train block:
`<block>.<param>.momentum` (sgd's and rmsprop's momentum buffer),
`.exp_avg` / `.exp_avg_sq` (adam, adamw), `.square_avg` / `.grad_avg`
(rmsprop), `.sum` (adagrad: the squared gradients summed, without
initial_accumulator_value, since states start at zero), one step count
`<block>.step` (adam, adamw, adagrad), and the learning rate `<block>.lr`,
a state set to the program's lr, so that a schedule can change it between
steps without recompiling.
"""
from __future__ import annotations

from typing import Callable

from ..ir.graph import Builder, Init, OptimizerSpec, TensorType, Value
from .base import Arg
from .elementwise import EXP_BASE, RELU, SQRT, add, div, mul, scalar_like, sub
from .reduce import SUM_ALL
from .shape import broadcast

_CLIP = Arg("clip", "float", None)
_ADAM = (Arg("lr", "float"), Arg("beta1", "float", 0.9), Arg("beta2", "float", 0.999),
         Arg("eps", "float", 1e-8))
OPTIMIZERS: dict[str, tuple[Arg, ...]] = {
    "sgd": (Arg("lr", "float"), Arg("momentum", "float", 0.0),
            Arg("weight_decay", "float", 0.0), _CLIP),
    "adam": _ADAM + (Arg("weight_decay", "float", 0.0), _CLIP),
    "adamw": _ADAM + (Arg("weight_decay", "float", 0.01), _CLIP),
    "rmsprop": (Arg("lr", "float"), Arg("alpha", "float", 0.99), Arg("eps", "float", 1e-8),
                Arg("momentum", "float", 0.0), Arg("weight_decay", "float", 0.0),
                Arg("centered", "bool", False), _CLIP),
    "adagrad": (Arg("lr", "float"), Arg("lr_decay", "float", 0.0),
                Arg("weight_decay", "float", 0.0),
                Arg("initial_accumulator_value", "float", 0.0), Arg("eps", "float", 1e-10),
                _CLIP),
}


def clip_by_global_norm(b: Builder, grads: dict[str, Value], max_norm: float) -> dict[str, Value]:
    squares = [b.node(SUM_ALL, [mul(b, g, g)]) for g in grads.values()]
    total = squares[0]
    for s in squares[1:]:
        total = add(b, total, s)
    # min(max_norm / (norm + 1e-6), 1) as max_norm / max(norm + 1e-6, max_norm):
    # exactly 1 below the limit, within an ulp or two above it at any scale
    # (1 - relu(1 - coef) had lost coef's digits: a step of exactly 0 when
    # the norm was 1e8 times the limit).
    limit = scalar_like(b, max_norm, total)
    norm = add(b, b.node(SQRT, [total]), scalar_like(b, 1e-6, total))
    coef = div(b, limit, add(b, limit, b.node(RELU, [sub(b, norm, limit)])))
    return {k: mul(b, g, broadcast(b, coef, g.type.shape)) for k, g in grads.items()}


class _Param:
    """One parameter's update: the parameter `p`, the value its step starts
    from (`start`: p, or p decayed for adamw), its gradient `g` (clipped,
    plus the L2 term for the others), its states and constants."""

    def __init__(self, b: Builder, block: str, name: str, p: Value, start: Value, g: Value):
        self.b, self.block, self.name, self.p, self.start, self.g = b, block, name, p, start, g

    def c(self, v: float) -> Value:
        return scalar_like(self.b, v, self.p)

    def wide(self, s: Value) -> Value:
        """A per-step scalar broadcast to the parameter's shape."""
        return broadcast(self.b, s, self.p.type.shape)

    def state(self, what: str) -> Value:
        return self.b.state(f"{self.block}.{self.name}.{what}", self.p.type)

    def ema(self, avg: Value, beta: float, x: Value) -> Value:
        """beta * avg + (1 - beta) * x."""
        b = self.b
        return add(b, mul(b, self.c(beta), avg), mul(b, self.c(1 - beta), x))

    def descend(self, h: dict, k: dict, step: Value) -> "Pairs":
        """p - lr * step, through a momentum buffer when h has momentum
        (torch's SGD and RMSprop alike: buf = momentum * buf + step)."""
        b, out = self.b, []
        if h["momentum"]:
            buf = self.state("momentum")
            step = add(b, mul(b, self.c(h["momentum"]), buf), step)
            out.append((buf, step))
        return out + [(self.p, sub(b, self.start, mul(b, self.wide(k["lr"]), step)))]


Pairs = list[tuple[Value, Value]]


def _sgd(q: _Param, h: dict, k: dict) -> Pairs:
    return q.descend(h, k, q.g)


def _adam_scalars(b: Builder, h: dict, t: Value, lr: Value) -> dict:
    one = scalar_like(b, 1.0, t)
    bc1 = sub(b, one, b.node(EXP_BASE, [t], base=h["beta1"]))
    bc2 = sub(b, one, b.node(EXP_BASE, [t], base=h["beta2"]))
    return {"step_size": div(b, lr, bc1), "sqrt_bc2": b.node(SQRT, [bc2])}


def _adam(q: _Param, h: dict, k: dict) -> Pairs:
    b, g = q.b, q.g
    m, v = q.state("exp_avg"), q.state("exp_avg_sq")
    m2, v2 = q.ema(m, h["beta1"], g), q.ema(v, h["beta2"], mul(b, g, g))
    denom = add(b, div(b, b.node(SQRT, [v2]), q.wide(k["sqrt_bc2"])), q.c(h["eps"]))
    delta = mul(b, q.wide(k["step_size"]), div(b, m2, denom))
    return [(m, m2), (v, v2), (q.p, sub(b, q.start, delta))]


def _rmsprop(q: _Param, h: dict, k: dict) -> Pairs:
    b, g = q.b, q.g
    sq = q.state("square_avg")
    sq2 = q.ema(sq, h["alpha"], mul(b, g, g))
    out = [(sq, sq2)]
    if h["centered"]:
        ga = q.state("grad_avg")
        ga2 = q.ema(ga, h["alpha"], g)
        out.append((ga, ga2))
        sq2 = sub(b, sq2, mul(b, ga2, ga2))
    return out + q.descend(h, k, div(b, g, add(b, b.node(SQRT, [sq2]), q.c(h["eps"]))))


def _adagrad_scalars(b: Builder, h: dict, t: Value, lr: Value) -> dict:
    # lr / (1 + (t - 1) * lr_decay), t counting this step from 1.
    done = sub(b, t, scalar_like(b, 1.0, t))
    decay = add(b, scalar_like(b, 1.0, t), mul(b, scalar_like(b, h["lr_decay"], t), done))
    return {"clr": div(b, lr, decay)}


def _adagrad(q: _Param, h: dict, k: dict) -> Pairs:
    b, g = q.b, q.g
    s = q.state("sum")
    s2 = add(b, s, mul(b, g, g))
    total = add(b, s2, q.c(h["initial_accumulator_value"])) if h["initial_accumulator_value"] else s2
    std = add(b, b.node(SQRT, [total]), q.c(h["eps"]))
    return [(s, s2), (q.p, sub(b, q.start, mul(b, q.wide(k["clr"]), div(b, g, std))))]


# kind -> (per-parameter rule, per-step scalars from the step count t and
# the lr, or None for rules that keep no step count).
RULES: dict[str, tuple[Callable[[_Param, dict, dict], Pairs],
                       Callable[[Builder, dict, Value, Value], dict] | None]] = {
    "sgd": (_sgd, None),
    "adam": (_adam, _adam_scalars),
    "adamw": (_adam, _adam_scalars),
    "rmsprop": (_rmsprop, None),
    "adagrad": (_adagrad, _adagrad_scalars),
}
# Weight decay applied to the parameter before the step (torch.optim.AdamW)
# rather than added to the gradient.
DECOUPLED = {"adamw"}


def updates(b: Builder, spec: OptimizerSpec, params: dict[str, Value],
            grads: dict[str, Value], block: str) -> list[tuple[Value, Value]]:
    """The update of train block `block` (its states' names start with it)."""
    h = spec.hparams
    rule, scalars = RULES[spec.kind]
    if "clip" in h and grads:
        grads = clip_by_global_norm(b, grads, h["clip"])
    out: Pairs = []
    if not params:
        return out
    dtype = next(iter(params.values())).type.dtype
    lr = b.state(f"{block}.lr", TensorType(dtype, ()), Init("constant", h["lr"]))
    k: dict = {"lr": lr}
    if scalars is not None:
        step = b.state(f"{block}.step", TensorType(dtype, ()))
        t = add(b, step, scalar_like(b, 1.0, step))
        k.update(scalars(b, h, t, lr))
    wd = h["weight_decay"]
    for name, p in params.items():
        start, g = p, grads[name]
        if wd and spec.kind in DECOUPLED:   # p * (1 - lr * weight_decay)
            keep = sub(b, scalar_like(b, 1.0, lr), mul(b, lr, scalar_like(b, wd, lr)))
            start = mul(b, p, broadcast(b, keep, p.type.shape))
        elif wd:
            g = add(b, g, mul(b, scalar_like(b, wd, p), p))
        out += rule(_Param(b, block, name, p, start, g), h, k)
    if scalars is not None:
        out.append((step, t))
    return out
