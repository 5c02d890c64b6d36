"""Graph IR: typed tensor values, op nodes with source spans, programs.

A `Program` holds parameter declarations and functions. A `Function` is a
model (inference entry), a train step (forward + loss, later backward and
update) or a gradient entry. Values are identities: two values with the same
printed name are different objects, and passes never compare names.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..errors import InternalError, OpError, Span
from .loops import DTYPE_BYTES


class Op(Protocol):
    """What the IR asks of an op (dlc/ops/base.py defines them): a name to
    print and a shape rule to verify nodes against. The IR knows no op."""
    name: str

    def infer(self, ins: list[TensorType], attrs: dict[str, Any]) -> TensorType: ...


DTYPES = ("f32", "f64", "i32")
# A fixed size, a symbol bound at run time, or a product of symbols (and a
# factor) written "2*batch*time", symbols sorted so equal products are equal
# strings: what reshape makes of [batch, time, 2] when it merges the axes.
Dim = int | str
# Limits on every tensor type, so no program text can make the compiler (or
# the runtime) compute with absurd sizes: NumPy's limit on dims (each is a
# loop of a kernel's nest), and 2^48 bytes (256 TiB, past any machine's
# address space; so sums of sizes, such as a workspace's, stay in int64).
MAX_RANK = 32
MAX_TENSOR_BYTES = 1 << 48


@dataclass(frozen=True)
class TensorType:
    dtype: str
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in ("f32", "f64")

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(map(str, self.shape))}]"


def dim_factors(d: Dim) -> tuple[int, list[str]]:
    """d as (integer factor, symbols): 6 -> (6, []), "2*batch*time" -> (2, ["batch", "time"])."""
    if isinstance(d, int):
        return d, []
    fixed, syms = 1, []
    for f in d.split("*"):
        if f.isdigit():
            fixed *= int(f)
        else:
            syms.append(f)
    return fixed, syms


def dim_product(dims) -> Dim:
    """The product of `dims` as one Dim (see Dim)."""
    fixed, syms = 1, []
    for d in dims:
        f, s = dim_factors(d)
        fixed, syms = fixed * f, syms + s
    if not syms:
        return fixed
    return "*".join(([str(fixed)] if fixed != 1 else []) + sorted(syms))


def format_shape(shape: tuple[Dim, ...]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def type_error(t: TensorType) -> str | None:
    """Why no tensor can have type t (see MAX_RANK), or None."""
    if t.rank > MAX_RANK:
        return f"a tensor has at most {MAX_RANK} dims, this one would have {t.rank}"
    n = DTYPE_BYTES[t.dtype]
    for d in t.shape:
        n *= dim_factors(d)[0]
    if n > MAX_TENSOR_BYTES:
        at = " with its symbols at 1" if any(isinstance(d, str) for d in t.shape) else ""
        return (f"a tensor of type {t} would be too large ({n:.3g} bytes{at}); "
                f"a tensor holds at most 2^48 bytes (256 TiB)")
    return None


_ids = itertools.count()


class Value:
    """An SSA value. `kind` is 'input', 'param' or 'node'; inputs and params
    carry a `name`, node values their producing `node`."""
    __slots__ = ("type", "kind", "name", "node", "id")

    def __init__(self, type: TensorType, kind: str, name: str | None = None,
                 node: Node | None = None):
        self.type, self.kind, self.name, self.node = type, kind, name, node
        self.id = next(_ids)

    def __repr__(self) -> str:
        return f"%{self.name or self.id}: {self.type}"


class Node:
    __slots__ = ("op", "inputs", "attrs", "out", "span")

    def __init__(self, op: Op, inputs: tuple[Value, ...], attrs: dict[str, Any],
                 type: TensorType, span: Span | None):
        self.op, self.inputs, self.attrs, self.span = op, tuple(inputs), dict(attrs), span
        self.out = Value(type, "node", node=self)


@dataclass(frozen=True)
class Init:
    """A parameter's initialisation rule; kinds mirror dlc_init_kind."""
    kind: str  # 'zeros' | 'ones' | 'uniform' (a, b) | 'normal' (mean a, std b) | 'constant' (a)
    a: float = 0.0
    b: float = 0.0


@dataclass
class ParamDecl:
    name: str
    type: TensorType
    init: Init
    span: Span | None
    layer: str = ""  # the layer that owns it, for summaries


@dataclass
class OptimizerSpec:
    kind: str                          # 'sgd' | 'adam'
    hparams: dict[str, float]
    on: tuple[str, ...] = ()           # models whose params it updates; () = all used
    span: Span | None = None


@dataclass
class Function:
    """A model, a train step or a gradient entry.

    For a train step, `outputs` holds 'loss'; after autodiff, `updates` maps
    each trained param to the node values that hold its new value and the new
    values of its optimizer states."""
    name: str
    kind: str                                  # 'model' | 'train' | 'grads' | 'apply' | 'step_grads'
    inputs: list[Value] = field(default_factory=list)
    params: dict[str, Value] = field(default_factory=dict)   # param name -> its value here
    nodes: list[Node] = field(default_factory=list)
    outputs: dict[str, Value] = field(default_factory=dict)
    optimizer: OptimizerSpec | None = None
    trained: list[str] = field(default_factory=list)         # params the optimizer updates
    states: dict[str, Value] = field(default_factory=dict)   # optimizer state name -> value
    # Writes after the step: (target value: a param or state, new value).
    assigns: list[tuple[Value, Value]] = field(default_factory=list)
    span: Span | None = None
    # Node values computed inside their consumers' kernels (graph_fuse).
    inlined: set[int] = field(default_factory=set)
    # id(value) -> the layer whose call gave it, as checked (for drawings).
    layer_values: dict[int, str] = field(default_factory=dict)
    # A train step's gradient of each trained param, as the optimizer reads
    # it. Stored (graph_fuse), not computed inside the update: the kernels
    # then are the grads entry's and its update kernels the apply entry's,
    # compiled once for the three entries.
    gradients: dict[str, Value] = field(default_factory=dict)

    def with_nodes(self, nodes: list[Node], m: Callable[[Value], Value]) -> Function:
        """This function with `nodes`, its outputs, assigns and gradients
        read through m (an old value -> the value replacing it)."""
        return Function(**{**self.__dict__, "nodes": nodes,
                           "outputs": {k: m(v) for k, v in self.outputs.items()},
                           "assigns": [(t, m(v)) for t, v in self.assigns],
                           "gradients": {k: m(v) for k, v in self.gradients.items()}})

    def readers(self) -> dict[int, list[Node]]:
        """id(value) -> the nodes that read it, in order (none: absent)."""
        out: dict[int, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(id(v), []).append(n)
        return out

    def escaping(self) -> set[int]:
        """ids of the values the entry returns or assigns: read after it."""
        return {id(v) for v in self.outputs.values()} | {id(v) for _, v in self.assigns}


@dataclass
class StateDecl:
    """Optimizer state owned by the session (momenta, moments, step count,
    learning rate), zeros unless `init` says otherwise."""
    name: str
    type: TensorType
    init: Init = field(default_factory=lambda: Init("zeros"))


@dataclass
class Layer:
    """A layer as the user wrote it, for summaries."""
    name: str
    op: str
    model: str
    out: TensorType


@dataclass
class Program:
    params: dict[str, ParamDecl] = field(default_factory=dict)
    layers: dict[str, Layer] = field(default_factory=dict)
    functions: dict[str, Function] = field(default_factory=dict)
    states: dict[str, StateDecl] = field(default_factory=dict)
    file: str = "<source>"
    source: str = ""

    @property
    def symbols(self) -> list[str]:
        """Every symbolic dim, in order of first appearance."""
        seen: dict[str, None] = {}
        for fn in self.functions.values():
            for v in fn.inputs:
                for d in v.type.shape:
                    if isinstance(d, str):
                        seen.setdefault(d)
        return list(seen)


class Builder:
    """Appends nodes to a function, running each op's shape rule.

    `span` is the source span given to new nodes; the frontend sets it before
    it asks an op to build itself."""

    def __init__(self, program: Program, fn: Function, span: Span | None = None):
        self.program, self.fn, self.span = program, fn, span

    def node(self, op: Op, inputs: list[Value] | tuple[Value, ...], **attrs) -> Value:
        type = op.infer([v.type for v in inputs], attrs)
        _check_type(type)
        n = Node(op, tuple(inputs), attrs, type, self.span)
        self.fn.nodes.append(n)
        return n.out

    def input(self, name: str, type: TensorType) -> Value:
        v = Value(type, "input", name)
        self.fn.inputs.append(v)
        return v

    def param(self, name: str, type: TensorType, init: Init, layer: str = "") -> Value:
        """The value of parameter `name` in this function, declaring it on
        first use. A second declaration must agree (that is weight sharing)."""
        _check_type(type)
        decl = self.program.params.get(name)
        if decl is None:
            self.program.params[name] = ParamDecl(name, type, init, self.span, layer)
        elif decl.type != type:
            raise OpError(f"parameter '{name}' is already declared as {decl.type}, "
                          f"here it would be {type}; give the layer another name")
        if name not in self.fn.params:
            self.fn.params[name] = Value(type, "param", name)
        return self.fn.params[name]

    def layer(self, name: str, op: str, out: Value) -> None:
        """Record a layer's output type for summaries (first definition wins)
        and, for drawings, that this call of it gave `out`."""
        self.program.layers.setdefault(name, Layer(name, op, self.fn.name, out.type))
        self.fn.layer_values[id(out)] = name

    def state(self, name: str, type: TensorType, init: Init | None = None) -> Value:
        self.program.states.setdefault(name, StateDecl(name, type, init or Init("zeros")))
        if name not in self.fn.states:
            self.fn.states[name] = Value(type, "state", name)
        return self.fn.states[name]


def rewrite(fn: Function, replace: Callable[[Node, tuple[Value, ...]], list[Node] | Value | None]
            ) -> Function:
    """fn with each node n, in order, as `replace(n, its inputs as rewritten)`
    says: None keeps it (rebuilt if an input changed); a list of nodes stands
    in for it, the last one's value for n's (none: n is dropped, and nothing
    may read it); a value drops it, its readers reading that value instead.
    The graph passes' common walk."""
    same: dict[int, Value] = {}   # id(an old value) -> the value that replaces it
    nodes: list[Node] = []
    for n in fn.nodes:
        inputs = tuple(same.get(id(v), v) for v in n.inputs)
        new = replace(n, inputs)
        if isinstance(new, Value):
            same[id(n.out)] = new
            continue
        if new is None:
            if inputs == n.inputs:
                nodes.append(n)
                continue
            new = [Node(n.op, inputs, n.attrs, n.out.type, n.span)]
        nodes += new
        if new:
            same[id(n.out)] = new[-1].out
    if not same and len(nodes) == len(fn.nodes):
        return fn
    return fn.with_nodes(nodes, lambda v: same.get(id(v), v))


def _check_type(t: TensorType) -> None:
    message = type_error(t)
    if message is not None:
        raise OpError(message)


# ---------------------------------------------------------------- verifier

def verify(program: Program, where: str = "graph") -> None:
    """Check SSA form, topological order and types; raise InternalError."""
    for fn in program.functions.values():
        defined = set(id(v) for v in fn.inputs) | set(id(v) for v in fn.params.values())
        defined |= set(id(v) for v in fn.states.values())
        for n in fn.nodes:
            for v in n.inputs:
                if id(v) not in defined:
                    raise InternalError(where, f"{fn.name}: {n.op.name} uses {v!r} before it is defined")
            want = n.op.infer([v.type for v in n.inputs], n.attrs)
            if want != n.out.type:
                raise InternalError(where, f"{fn.name}: {n.op.name} has type {n.out.type}, its rule says {want}")
            if id(n.out) in defined:
                raise InternalError(where, f"{fn.name}: {n.out!r} defined twice")
            defined.add(id(n.out))
        for name, v in list(fn.outputs.items()) + [(t.name, v) for t, v in fn.assigns]:
            if id(v) not in defined:
                raise InternalError(where, f"{fn.name}: result '{name}' is not defined")
        for target, v in fn.assigns:
            if target.type != v.type:
                raise InternalError(where, f"{fn.name}: assigns {v.type} to {target!r}")


# ----------------------------------------------------------------- printer

def _attr_text(attrs: dict[str, Any]) -> str:
    return "".join(f", {k}={v!r}" for k, v in attrs.items())


def print_program(program: Program) -> str:
    names: dict[int, str] = {}

    def name(v: Value) -> str:
        if v.kind in ("input", "param", "state"):
            return f"%{v.name}"
        return names.setdefault(id(v), f"%{len(names)}")

    out = []
    for p in program.params.values():
        out.append(f"param {p.name}: {p.type} = {p.init.kind}({p.init.a:g}, {p.init.b:g})")
    for s in program.states.values():
        init = f" = {s.init.kind}({s.init.a:g})" if s.init.kind != "zeros" else ""
        out.append(f"state {s.name}: {s.type}{init}")
    for fn in program.functions.values():
        names.clear()
        ins = ", ".join(f"%{v.name}: {v.type}" for v in fn.inputs)
        out.append(f"\n{fn.kind} {fn.name}({ins}) {{")
        for n in fn.nodes:
            args = ", ".join(name(v) for v in n.inputs)
            fused = "  (inlined)" if id(n.out) in fn.inlined else ""
            out.append(f"  {name(n.out)} = {n.op.name}({args}{_attr_text(n.attrs)}) : {n.out.type}{fused}")
        for k, v in fn.outputs.items():
            out.append(f"  output {k} = {name(v)}")
        for t, v in fn.assigns:
            out.append(f"  assign %{t.name} <- {name(v)}")
        out.append("}")
    return "\n".join(out).lstrip("\n") + "\n"
