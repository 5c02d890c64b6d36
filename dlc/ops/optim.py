"""Optimizers: their signatures in the language and their update rules,
written as elementwise graph ops with exactly torch.optim's arithmetic.
`clip=c` first scales all gradients by min(1, c / (global norm + 1e-6)),
as torch.nn.utils.clip_grad_norm_(params, c) before the step does.

`updates` returns (target, new value) pairs; the target is a parameter or an
optimizer state value, and the lowering writes all new values of one shape
in one kernel, reading every old value before writing any.
"""
from __future__ import annotations

from ..ir.graph import Builder, OptimizerSpec, TensorType, Value
from .base import Arg
from .elementwise import EXP_BASE, RELU, SQRT, add, broadcast, div, mul, scalar_like, sub
from .reduce import SUM_ALL

OPTIMIZERS: dict[str, tuple[Arg, ...]] = {
    "sgd": (Arg("lr", "float"), Arg("momentum", "float", 0.0),
            Arg("weight_decay", "float", 0.0), Arg("clip", "float", None)),
    "adam": (Arg("lr", "float"), Arg("beta1", "float", 0.9), Arg("beta2", "float", 0.999),
             Arg("eps", "float", 1e-8), Arg("weight_decay", "float", 0.0),
             Arg("clip", "float", None)),
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


def updates(b: Builder, spec: OptimizerSpec, params: dict[str, Value],
            grads: dict[str, Value]) -> list[tuple[Value, Value]]:
    h = spec.hparams
    out: list[tuple[Value, Value]] = []
    prefix = b.fn.name
    if "clip" in h and grads:
        grads = clip_by_global_norm(b, grads, h["clip"])
    if spec.kind == "adam":
        dtype = next(iter(params.values())).type.dtype
        step = b.state(f"{prefix}.step", TensorType(dtype, ()))
        t = add(b, step, scalar_like(b, 1.0, step))
        one = scalar_like(b, 1.0, t)
        bc1 = sub(b, one, b.node(EXP_BASE, [t], base=h["beta1"]))
        bc2 = sub(b, one, b.node(EXP_BASE, [t], base=h["beta2"]))
        step_size = div(b, scalar_like(b, h["lr"], t), bc1)
        sqrt_bc2 = b.node(SQRT, [bc2])
    for name, p in params.items():
        g = grads[name]
        c = lambda v: scalar_like(b, v, p)
        if h["weight_decay"]:
            g = add(b, g, mul(b, c(h["weight_decay"]), p))
        if spec.kind == "sgd":
            if h["momentum"]:
                buf = b.state(f"{prefix}.{name}.momentum", p.type)
                g = add(b, mul(b, c(h["momentum"]), buf), g)
                out.append((buf, g))
            out.append((p, sub(b, p, mul(b, c(h["lr"]), g))))
        else:
            m = b.state(f"{prefix}.{name}.exp_avg", p.type)
            v = b.state(f"{prefix}.{name}.exp_avg_sq", p.type)
            m2 = add(b, mul(b, c(h["beta1"]), m), mul(b, c(1 - h["beta1"]), g))
            v2 = add(b, mul(b, c(h["beta2"]), v), mul(b, c(1 - h["beta2"]), mul(b, g, g)))
            denom = add(b, div(b, b.node(SQRT, [v2]), broadcast(b, sqrt_bc2, p.type.shape)),
                        c(h["eps"]))
            delta = mul(b, broadcast(b, step_size, p.type.shape), div(b, m2, denom))
            out += [(m, m2), (v, v2), (p, sub(b, p, delta))]
    if spec.kind == "adam":
        out.append((step, t))
    return out
