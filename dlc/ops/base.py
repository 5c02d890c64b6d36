"""What an op is: its signature in the language, shape rule, gradient rule,
lowering and NumPy reference, all on one class.

Ops are instances of `Op` subclasses registered in `REGISTRY` by the module
that defines them (`dlc/ops/*.py`). Language-level ops have a `signature`;
primitives used only inside other ops' expansions and gradients have none.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..errors import OpError
from ..ir.graph import Builder, Dim, TensorType, Value, format_shape

if TYPE_CHECKING:
    from ..ir.graph import Node


REQUIRED = object()

# Kinds of non-tensor arguments and the Python types they accept.
ARG_KINDS: dict[str, tuple[type, ...]] = {
    "tensor": (Value,),
    "operand": (Value, int, float),   # a tensor, or a number that becomes one
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
    "pair": (int, tuple),   # an int or a (h, w) tuple of ints
    "ints": (tuple,),       # a tuple of ints, as transpose's dims
    "axes": (int, tuple),   # an int or a tuple of ints, as sum's axis
    "dims": (tuple,),       # a tuple of ints and Sizes, as reshape's dims
}
ARG_KIND_WORDS = {"tensor": "a tensor", "operand": "a tensor or a number", "int": "an integer", "float": "a number",
                  "bool": "true or false", "str": "a string", "pair": "an integer or a pair (h, w)",
                  "ints": "a tuple of integers", "axes": "an integer or a tuple of integers",
                  "dims": "a tuple of sizes (integers, or symbols such as batch)"}


@dataclass(frozen=True)
class Size:
    """A symbolic size written in a program (`batch`, `batch * time`), as a
    Dim; a class of its own so that a string is never taken for one."""
    dim: Dim


@dataclass(frozen=True)
class Arg:
    name: str
    kind: str
    default: Any = REQUIRED


class Op:
    """Base of all ops. Subclasses override what applies to them."""
    name: str = ""
    signature: tuple[Arg, ...] | None = None   # None: not callable from the language
    owns_params: bool = False                  # a layer: gets an automatic `name`
    # The output is the first input's elements in the same row-major order (a
    # reshape): a view of the input's buffer when the input is stored, else a
    # kernel looping over the input's shape, so the loop nest of the inlined
    # producer (a product's output rows) is kept for the passes.
    same_order_as_input: bool = False

    # -- language
    def build(self, b: Builder, args: dict[str, Any]) -> Value:
        """Add this op to `b` for bound arguments `args` (see `bind`)."""
        tensors = [args[a.name] for a in self.signature if a.kind == "tensor"]
        attrs = {a.name: args[a.name] for a in self.signature if a.kind != "tensor"}
        return b.node(self, tensors, **attrs)

    # -- shape rule
    def infer(self, ins: list[TensorType], attrs: dict[str, Any]) -> TensorType:
        raise NotImplementedError(f"{self.name} has no shape rule")

    # -- gradient rule: one value (or None: no gradient) per input
    def grad(self, b: Builder, node: Node, g: Value) -> list[Value | None]:
        raise OpError(f"'{self.name}' is not differentiable")

    # -- statement-level lowering, for outputs that are not a per-element
    # expression (a recurrence over time, a scatter-add). When set, it is
    # called as lower_kernel(ctx: KernelCtx, out: Buffer, ins: [accessor], node)
    # and returns the kernel's whole body (an L.Stmt) that fills `out`
    # (flat, row-major); `lower` is then unused. Such a node is never inlined
    # into its consumers, and producers with reductions are not inlined into it.
    lower_kernel: Callable | None = None

    # -- fusion (passes/graph_fuse.py). `reduces`: an output element combines
    # several input elements (a sum, a max, a dot product), so computing this
    # op inside a consumer that re-reads its elements repeats that work.
    # `rereads`: some input element is read for several output elements, so
    # a producer inlined into it would be computed once per read; None: as
    # its lowering says (a statement kernel is taken to, an expression not).
    reduces: bool = False
    rereads: bool | None = None
    # Always written to memory, never computed inside its consumers: a layout
    # change whose point is that they then load it contiguously.
    stored: bool = False

    # -- the values integer operand k must hold (an IndexRange of dlc.lower:
    # tokens below the vocabulary, lengths in [1, time]), or None for any;
    # the runtime checks each integer input against its readers' ranges
    def operand_range(self, node: Node, k: int):
        return None

    # -- NumPy reference, used by tests
    def reference(self, *xs: np.ndarray, **attrs) -> np.ndarray:
        raise NotImplementedError(f"{self.name} has no reference")

    def __repr__(self) -> str:
        return f"<op {self.name}>"


REGISTRY: dict[str, Op] = {}


def register(op: Op) -> Op:
    assert op.name not in REGISTRY, op.name
    REGISTRY[op.name] = op
    return op


def suggest(name: str, choices) -> str:
    """' (did you mean 'relu'?)' or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def bind(op_name: str, signature: tuple[Arg, ...], positional: list[Any],
         keywords: dict[str, Any]) -> dict[str, Any]:
    """Match call arguments to a signature. Raises OpError with `arg` set to
    the offending keyword (or None for arity errors)."""
    if len(positional) > len(signature):
        want = sum(a.default is REQUIRED for a in signature)
        raise OpError(f"'{op_name}' takes at most {len(signature)} arguments "
                      f"({want} required), got {len(positional)}")
    out = dict(zip((a.name for a in signature), positional))
    known = {a.name: a for a in signature}
    for k, v in keywords.items():
        if k not in known:
            raise OpError(f"'{op_name}' has no attribute '{k}'{suggest(k, known)}; "
                          f"it takes: {', '.join(known)}", arg=k)
        if k in out:
            raise OpError(f"'{op_name}' got argument '{k}' twice", arg=k)
        out[k] = v
    for a in signature:
        if a.name not in out:
            if a.default is REQUIRED:
                raise OpError(f"'{op_name}' is missing its argument '{a.name}' "
                              f"({ARG_KIND_WORDS[a.kind]})")
            out[a.name] = a.default
            continue  # defaults are trusted, and may be None ('not given')
        v = out[a.name]
        ok = isinstance(v, ARG_KINDS[a.kind]) and not (a.kind in ("int", "float", "axes", "operand") and isinstance(v, bool))
        if a.kind == "pair" and isinstance(v, tuple):
            ok = len(v) == 2 and all(isinstance(e, int) and not isinstance(e, bool) for e in v)
        if ok and (a.kind == "ints" or (a.kind == "axes" and isinstance(v, tuple))):
            ok = all(isinstance(e, int) and not isinstance(e, bool) for e in v)
        if a.kind == "dims" and ok:
            ok = all(isinstance(e, Size) or (isinstance(e, int) and not isinstance(e, bool)) for e in v)
            if ok:
                out[a.name] = v = tuple(e.dim if isinstance(e, Size) else e for e in v)
        if a.kind == "float" and ok:
            out[a.name] = v = float(v)
        if not ok:
            raise OpError(f"argument '{a.name}' of '{op_name}' must be "
                          f"{ARG_KIND_WORDS[a.kind]}, got {describe(v)}", arg=a.name)
    return out


@dataclass(frozen=True, eq=False)
class ModelOutputs:
    """The outputs of a call of a model with several, bound to a name
    (`enc = encoder(x)`) so that `enc.h0` and `enc.c0` share one call."""
    model: str
    outputs: dict[str, Value]


def describe(v: Any) -> str:
    if isinstance(v, Value):
        return f"a tensor {v.type}"
    if isinstance(v, ModelOutputs):
        return (f"the {len(v.outputs)} outputs of model '{v.model}' ({', '.join(v.outputs)}); "
                f"pick one, as in {v.model}(...).{next(iter(v.outputs))}")
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, Size):
        return f"the size {v.dim}"
    if isinstance(v, str):
        return f"the string \"{v}\""
    return f"{type(v).__name__} {v!r}"


# ------------------------------------------------------------- shape helpers

def broadcast_shapes(a: tuple, b: tuple, what: str = "operands", arg: str | None = None) -> tuple:
    """NumPy broadcasting over fixed and symbolic dims."""
    out = []
    for i in range(1, max(len(a), len(b)) + 1):
        x = a[-i] if i <= len(a) else 1
        y = b[-i] if i <= len(b) else 1
        if x == y or y == 1:
            out.append(x)
        elif x == 1:
            out.append(y)
        else:
            raise OpError(f"shapes {format_shape(a)} and {format_shape(b)} of the {what} "
                          f"do not broadcast (dim {x} against {y})", arg=arg)
    return tuple(reversed(out))


def need_float(op: str, t: TensorType, which: str = "input", arg: str | None = None) -> None:
    if not t.is_float:
        raise OpError(f"'{op}' needs a floating-point {which}, got {t}", arg=arg)


def need_image(op: str, t: TensorType, fixed_channels: bool = False) -> None:
    """t is a floating-point [batch, channels, height, width] (with a constant
    number of channels when asked)."""
    if t.rank != 4:
        raise OpError(f"'{op}' expects a 4-D input [batch, channels, height, width], got {t}", arg="x")
    need_float(op, t)
    if fixed_channels and not isinstance(t.shape[1], int):
        raise OpError(f"'{op}' needs a fixed number of channels, got {t}", arg="x")


def same_dtype(op: str, ts: list[TensorType]) -> str:
    dts = {t.dtype for t in ts}
    if len(dts) > 1:
        raise OpError(f"'{op}' mixes dtypes: " + " and ".join(str(t) for t in ts))
    return ts[0].dtype


Reference = Callable[..., np.ndarray]
