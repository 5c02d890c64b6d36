"""Elementwise ops: constants, arithmetic, unary math and activations.

Primitive elementwise ops take operands of one shape (broadcasts are explicit
`broadcast_to` nodes, so gradient rules stay local); the language's `+ - * /`
insert those broadcasts in `build`. Each op's lowering gives its output
element from its inputs' elements at the same index.
"""
from __future__ import annotations

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value, format_shape
from .base import Arg, Op, OpError, broadcast_shapes, need_float, register, same_dtype


class Constant(Op):
    """A scalar literal."""
    name = "constant"

    def build(self, b: Builder, args) -> Value:
        return b.node(self, [], value=float(args["value"]), dtype=args["dtype"])

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(attrs["dtype"], ())

    def grad(self, b, node, g):
        return []

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        return L.const_like(node.attrs["value"], node.attrs["dtype"])

    def reference(self, *, value, dtype):
        return np.array(value, dtype=ctx_numpy_dtype(dtype))


class Numel(Op):
    """The number of elements of a shape, which may be symbolic, as a scalar."""
    name = "numel"

    def infer(self, ins, attrs) -> TensorType:
        return TensorType(attrs["dtype"], ())

    def grad(self, b, node, g):
        return []

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        n: L.Expr = L.Const(1, L.INDEX)
        for d in node.attrs["shape"]:
            n = n * ctx.dim(d)
        return L.Cast(n, node.attrs["dtype"])

    def reference(self, *, shape, dtype):
        return np.array(np.prod(shape), dtype=ctx_numpy_dtype(dtype))


def ctx_numpy_dtype(dtype: str):
    return {"f32": np.float32, "f64": np.float64, "i32": np.int32}[dtype]


CONSTANT = register(Constant())
NUMEL = register(Numel())


class Elementwise(Op):
    """Operands of one shape and dtype; the output has that type."""
    arity = 1
    float_only = True

    def infer(self, ins, attrs) -> TensorType:
        if len(ins) != self.arity:
            raise OpError(f"'{self.name}' takes {self.arity} tensors, got {len(ins)}")
        dtype = same_dtype(self.name, ins)
        if self.float_only:
            need_float(self.name, ins[0])
        if any(t.shape != ins[0].shape for t in ins):
            raise OpError(f"'{self.name}' operands differ in shape: "
                          + " and ".join(format_shape(t.shape) for t in ins))
        return TensorType(dtype, ins[0].shape)

    def lower(self, ctx, idx, ins, node) -> L.Expr:
        return self.scalar(*(f(idx) for f in ins), **node.attrs)

    def scalar(self, *xs: L.Expr, **attrs) -> L.Expr:
        raise NotImplementedError


# ---------------------------------------------------------------- arithmetic

class Binary(Elementwise):
    arity = 2
    float_only = False
    signature = (Arg("a", "tensor"), Arg("b", "tensor"))

    def build(self, b: Builder, args) -> Value:
        x, y = args["a"], args["b"]
        if x.type.dtype != y.type.dtype:
            raise OpError(f"'{self.name}' mixes dtypes {x.type} and {y.type}")
        shape = broadcast_shapes(x.type.shape, y.type.shape, f"operands of '{self.name}'")
        return b.node(self, [broadcast(b, x, shape), broadcast(b, y, shape)])


class Add(Binary):
    name = "add"
    def scalar(self, a, b): return a + b
    def grad(self, b, node, g): return [g, g]
    def reference(self, a, b): return a + b


class Sub(Binary):
    name = "sub"
    def scalar(self, a, b): return a - b
    def grad(self, b, node, g): return [g, neg(b, g)]
    def reference(self, a, b): return a - b


class Mul(Binary):
    name = "mul"
    def scalar(self, a, b): return a * b
    def grad(self, b, node, g):
        x, y = node.inputs
        return [mul(b, g, y), mul(b, g, x)]
    def reference(self, a, b): return a * b


class Div(Binary):
    name = "div"
    def scalar(self, a, b): return a / b
    def grad(self, b, node, g):
        x, y = node.inputs
        gx = div(b, g, y)
        return [gx, neg(b, mul(b, gx, node.out))]   # d(x/y)/dy = -(x/y)/y
    def reference(self, a, b): return a / b


ADD, SUB, MUL, DIV = register(Add()), register(Sub()), register(Mul()), register(Div())


# ------------------------------------------------------------------- unary

class Unary(Elementwise):
    signature = (Arg("x", "tensor"),)


class Neg(Unary):
    name = "neg"
    signature = None
    float_only = False
    def build(self, b, args): return b.node(self, [args["x"]])
    def scalar(self, x): return -x
    def grad(self, b, node, g): return [neg(b, g)]
    def reference(self, x): return -x


class Exp(Unary):
    name = "exp"
    def scalar(self, x): return L.call("exp", x)
    def grad(self, b, node, g): return [mul(b, g, node.out)]
    def reference(self, x): return np.exp(x)


class Log(Unary):
    name = "log"
    def scalar(self, x): return L.call("log", x)
    def grad(self, b, node, g): return [div(b, g, node.inputs[0])]
    def reference(self, x): return np.log(x)


class Sqrt(Unary):
    name = "sqrt"
    def scalar(self, x): return L.call("sqrt", x)
    def grad(self, b, node, g):
        return [div(b, g, mul(b, node.out, scalar_like(b, 2.0, node.out)))]
    def reference(self, x): return np.sqrt(x)


class ClampedLog(Unary):
    """max(log(x), -100), as PyTorch's binary cross-entropy clamps its logs
    (std::max: log 0 gives -100, a NaN stays NaN)."""
    name = "clamped_log"
    signature = None
    def scalar(self, x): return L.maximum(L.call("log", x), -100.0)
    def grad(self, b, node, g):
        above = add(b, node.out, scalar_like(b, 100.0, node.out))
        return [b.node(STEP_MASK, [above, div(b, g, node.inputs[0])], slope=0.0)]
    def reference(self, x): return np.maximum(np.log(x), -100)


class ExpBase(Unary):
    """base ** x for a constant base: Adam's bias corrections."""
    name = "exp_base"
    signature = None
    def scalar(self, x, base): return L.call("exp", x * float(np.log(base)))
    def reference(self, x, base): return np.power(base, x)


class Relu(Unary):
    name = "relu"
    def scalar(self, x): return L.maximum(x, 0.0)
    # relu(x) > 0 exactly where x > 0: reading the output lets the producer
    # (a conv or dense with its bias) fuse with relu in training too.
    def grad(self, b, node, g): return [b.node(STEP_MASK, [node.out, g], slope=0.0)]
    def reference(self, x): return np.maximum(x, 0)


class LeakyRelu(Unary):
    name = "leaky_relu"
    signature = (Arg("x", "tensor"), Arg("slope", "float", 0.01))
    def scalar(self, x, slope): return L.Select(L.cmp(">", x, 0.0), x, x * slope)
    def grad(self, b, node, g):
        return [b.node(STEP_MASK, [node.inputs[0], g], slope=node.attrs["slope"])]
    def reference(self, x, slope=0.01): return np.where(x > 0, x, x * slope)


class StepMask(Elementwise):
    """g where x > 0, else slope * g: the gradient of relu and leaky_relu.
    At x = NaN, as PyTorch's: relu's passes g (x <= 0 ? 0 : g), leaky_relu's
    scales it (x > 0 ? g : slope * g)."""
    name = "step_mask"
    arity = 2
    def scalar(self, x, g, slope):
        if slope:
            return L.Select(L.cmp(">", x, 0.0), g, g * slope)
        return L.Select(L.cmp("<=", x, 0.0), L.const_like(0, g.dtype), g)
    def reference(self, x, g, slope):
        return np.where(x > 0, g, g * slope) if slope else np.where(x <= 0, 0, g)


class Sigmoid(Unary):
    name = "sigmoid"
    def scalar(self, x):
        # Split by sign so exp never overflows: both branches are in (0, 1].
        e = L.call("exp", -L.call("abs", x))
        return L.Select(L.cmp(">=", x, 0.0), 1.0 / (1.0 + e), e / (1.0 + e))
    def grad(self, b, node, g):
        y = node.out
        return [mul(b, g, mul(b, y, sub(b, scalar_like(b, 1.0, y), y)))]
    def reference(self, x): return 1 / (1 + np.exp(-x))


class Tanh(Unary):
    name = "tanh"
    def scalar(self, x): return L.call("tanh", x)
    def grad(self, b, node, g):
        y = node.out
        return [mul(b, g, sub(b, scalar_like(b, 1.0, y), mul(b, y, y)))]
    def reference(self, x): return np.tanh(x)


NEG, EXP, LOG, SQRT = register(Neg()), register(Exp()), register(Log()), register(Sqrt())
CLAMPED_LOG, EXP_BASE = register(ClampedLog()), register(ExpBase())
RELU, LEAKY_RELU = register(Relu()), register(LeakyRelu())
STEP_MASK = register(StepMask())
SIGMOID, TANH = register(Sigmoid()), register(Tanh())


# ------------------------------------------------ helpers for gradient rules

def broadcast(b: Builder, x: Value, shape: tuple) -> Value:
    from .shape import BROADCAST_TO
    return x if x.type.shape == tuple(shape) else b.node(BROADCAST_TO, [x], shape=tuple(shape))


def scalar_like(b: Builder, value: float, like: Value) -> Value:
    """`value` broadcast to `like`'s type."""
    c = b.node(CONSTANT, [], value=float(value), dtype=like.type.dtype)
    return broadcast(b, c, like.type.shape)


def add(b, x, y): return b.node(ADD, [x, y])
def sub(b, x, y): return b.node(SUB, [x, y])
def mul(b, x, y): return b.node(MUL, [x, y])
def div(b, x, y): return b.node(DIV, [x, y])
def neg(b, x): return b.node(NEG, [x])
