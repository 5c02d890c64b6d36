"""Elementwise ops: constants, arithmetic, unary math and activations.

Primitive elementwise ops take operands of one shape (broadcasts are explicit
`broadcast_to` nodes, so gradient rules stay local); the language's `+ - * /`
insert those broadcasts in `build`. Each op's lowering gives its output
element from its inputs' elements at the same index.
"""
from __future__ import annotations

import math

import numpy as np

from ..ir import loops as L
from ..ir.graph import Builder, TensorType, Value, format_shape
from .base import Arg, Op, OpError, broadcast_shapes, need_float, register, same_dtype
from .shape import broadcast


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


class Abs(Unary):
    name = "abs"
    def scalar(self, x): return L.call("abs", x)
    def grad(self, b, node, g): return [mul(b, g, b.node(SIGN, [node.inputs[0]]))]
    def reference(self, x): return np.abs(x)


class Sign(Unary):
    """-1, 0 or 1; 0 at NaN, as torch.sgn (so abs passes no gradient to a NaN)."""
    name = "sign"
    signature = None
    def scalar(self, x):
        one, zero = L.const_like(1, x.dtype), L.const_like(0, x.dtype)
        return L.Select(L.cmp(">", x, 0.0), one, L.Select(L.cmp("<", x, 0.0), -one, zero))
    def reference(self, x): return np.where(np.isnan(x), 0, np.sign(x)).astype(x.dtype)


class Clamp(Unary):
    """torch.clamp(x, lo, hi): either bound may be left out; lo > hi gives hi."""
    name = "clamp"
    signature = (Arg("x", "tensor"), Arg("lo", "float", None), Arg("hi", "float", None))

    def build(self, b, args):
        if args["lo"] is None and args["hi"] is None:
            raise OpError("'clamp' needs at least one of 'lo' and 'hi'")
        return b.node(self, [args["x"]], lo=args["lo"], hi=args["hi"])

    def scalar(self, x, lo, hi):
        y = x if lo is None else L.maximum(x, lo)
        return y if hi is None else L.minimum(y, hi)

    def grad(self, b, node, g):
        return [b.node(CLAMP_GRAD, [node.inputs[0], g], **node.attrs)]

    def reference(self, x, lo, hi): return np.clip(x, lo, hi)


class ClampGrad(Elementwise):
    """g where lo <= x <= hi, else 0 (0 at NaN), as torch.clamp's gradient."""
    name = "clamp_grad"
    arity = 2

    def scalar(self, x, g, lo, hi):
        inside = L.all_of(([] if lo is None else [L.cmp(">=", x, lo)])
                          + ([] if hi is None else [L.cmp("<=", x, hi)]))
        return L.Select(inside, g, L.const_like(0, g.dtype))

    def reference(self, x, g, lo, hi):
        lo_ok = True if lo is None else x >= lo
        return np.where(lo_ok & (True if hi is None else x <= hi), g, 0).astype(g.dtype)


class Where(Elementwise):
    """torch.where(cond, a, b), its three operands broadcast together. cond
    is a tensor of any dtype, true where nonzero (NaN included, as
    torch's bool()); the language has no comparisons, so a mask is a float
    or integer tensor (one_hot, a data input). One of a and b may be a
    number, of the other's dtype (`where(mask, scores, -1e9)`)."""
    name = "where"
    signature = (Arg("cond", "tensor"), Arg("a", "operand"), Arg("b", "operand"))

    def build(self, b, args):
        c, x, y = args["cond"], args["a"], args["b"]
        if not isinstance(x, Value) and not isinstance(y, Value):
            raise OpError("'where' needs a tensor for a or b, got two numbers", arg="a")
        x, y = self.tensor(b, x, y, "a"), self.tensor(b, y, x, "b")
        if x.type.dtype != y.type.dtype:
            raise OpError(f"'where' needs a and b of one dtype, got {x.type} and {y.type}", arg="b")
        shape = broadcast_shapes(broadcast_shapes(c.type.shape, x.type.shape, "operands of 'where'"),
                                 y.type.shape, "operands of 'where'")
        return b.node(self, [broadcast(b, v, shape) for v in (c, x, y)])

    @staticmethod
    def tensor(b, v, other: Value, arg: str) -> Value:
        """Operand v, a number made a scalar of the other operand's dtype."""
        if isinstance(v, Value):
            return v
        if other.type.dtype == "i32" and v != int(v):
            raise OpError(f"'where' can't put the number {v:g} in the integer tensor {other.type}", arg=arg)
        return b.node(CONSTANT, [], value=float(v), dtype=other.type.dtype)

    def infer(self, ins, attrs) -> TensorType:
        c, x, y = ins
        if x.dtype != y.dtype or not (c.shape == x.shape == y.shape):
            raise OpError(f"'where' operands differ: {c}, {x} and {y}")
        return x

    def scalar(self, c, x, y):
        return L.Select(L.cmp("!=", c, L.const_like(0, c.dtype)), x, y)

    def grad(self, b, node, g):
        c = node.inputs[0]
        zero = scalar_like(b, 0.0, g)
        return [None, b.node(WHERE, [c, g, zero]), b.node(WHERE, [c, zero, g])]

    def reference(self, c, x, y): return np.where(c != 0, x, y)


# GELU's tanh approximation: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))).
GELU_C, GELU_K = float(np.sqrt(2 / np.pi)), 0.044715
# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z / 2), z >= 0: relative error
# below 1.2e-7 for every z (Numerical Recipes' erfcc, a Chebyshev fit).
ERFC_P = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
          0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def horner(x: L.Expr, coeffs) -> L.Expr:
    """sum coeffs[k] x^k."""
    p: L.Expr = L.const_like(coeffs[-1], x.dtype)
    for c in reversed(coeffs[:-1]):
        p = p * x + c
    return p


def normal_cdf(x: L.Expr) -> L.Expr:
    """Phi(x) = erfc(-x / sqrt 2) / 2, from the tail that keeps relative
    accuracy on both sides (gelu(x) = x Phi(x) is tiny for negative x)."""
    z = L.call("abs", x) * float(np.sqrt(0.5))
    t = 1.0 / (1.0 + 0.5 * z)
    tail = 0.5 * t * L.call("exp", horner(t, ERFC_P) - z * z)   # Phi(-|x|)
    return L.Select(L.cmp("<=", x, 0.0), tail, 1.0 - tail)


class Gelu(Unary):
    """torch.nn.functional.gelu: x Phi(x) (erf form, the default), or its
    tanh approximation. gelu(+inf) is +inf and gelu(-inf) NaN, as torch's
    scalar and f64 kernels (its vectorized f32 kernel gives NaN at +inf)."""
    name = "gelu"
    signature = (Arg("x", "tensor"), Arg("approximate", "str", "none"))

    def build(self, b, args):
        if args["approximate"] not in ("none", "tanh"):
            raise OpError(f"'gelu' approximate must be \"none\" or \"tanh\", "
                          f"got \"{args['approximate']}\"", arg="approximate")
        return b.node(self, [args["x"]], approximate=args["approximate"])

    def scalar(self, x, approximate):
        if approximate == "tanh":
            return 0.5 * x * (1.0 + L.call("tanh", GELU_C * (x + GELU_K * x * x * x)))
        return x * normal_cdf(x)

    def grad(self, b, node, g):
        return [b.node(GELU_GRAD, [node.inputs[0], g], **node.attrs)]

    def reference(self, x, approximate="none"):
        if approximate == "tanh":
            return 0.5 * x * (1 + np.tanh(GELU_C * (x + GELU_K * x ** 3)))
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return (0.5 * x * (1 + erf(x / np.sqrt(2)))).astype(x.dtype)


class GeluGrad(Elementwise):
    """g times gelu'(x): Phi(x) + x phi(x), or the tanh form's derivative."""
    name = "gelu_grad"
    arity = 2

    def scalar(self, x, g, approximate):
        if approximate == "tanh":
            t = L.call("tanh", GELU_C * (x + GELU_K * x * x * x))
            du = GELU_C * (1.0 + 3 * GELU_K * x * x)
            return g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du)
        pdf = L.call("exp", -0.5 * x * x) * float(1 / np.sqrt(2 * np.pi))
        return g * (normal_cdf(x) + x * pdf)


NEG, EXP, LOG, SQRT = register(Neg()), register(Exp()), register(Log()), register(Sqrt())
ABS, SIGN = register(Abs()), register(Sign())
CLAMP, CLAMP_GRAD, WHERE = register(Clamp()), register(ClampGrad()), register(Where())
GELU, GELU_GRAD = register(Gelu()), register(GeluGrad())
CLAMPED_LOG, EXP_BASE = register(ClampedLog()), register(ExpBase())
RELU, LEAKY_RELU = register(Relu()), register(LeakyRelu())
STEP_MASK = register(StepMask())
SIGMOID, TANH = register(Sigmoid()), register(Tanh())


# ------------------------------------------------ helpers for gradient rules

def scalar_like(b: Builder, value: float, like: Value) -> Value:
    """`value` broadcast to `like`'s type."""
    c = b.node(CONSTANT, [], value=float(value), dtype=like.type.dtype)
    return broadcast(b, c, like.type.shape)


def add(b, x, y): return b.node(ADD, [x, y])
def sub(b, x, y): return b.node(SUB, [x, y])
def mul(b, x, y): return b.node(MUL, [x, y])
def div(b, x, y): return b.node(DIV, [x, y])
def neg(b, x): return b.node(NEG, [x])
