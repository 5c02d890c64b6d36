"""Loop IR: kernels over flat buffers, as in Halide and TVM.

Expressions are scalars: constants, variables (loop indices and symbolic
sizes, all i64), loads (and `LaneSum`, a load of several consecutive
elements summed), arithmetic, intrinsics, selects, casts, and `Reduce`
(only before `lower_reductions`, which turns each into an accumulator loop).
Statements: `For` (serial, parallel, vectorized, unrolled; gpu kinds from
dlc/passes/loop_gpu.py), `Store`, `Allocate` (a scoped local buffer), `If`,
`Seq`, `Barrier` (GPU block synchronisation).

Loop kinds say how a loop is rendered; the loop's meaning (iterations 0..n-1
in order) is the same for every kind, so a pass that changes a kind never
changes results as long as the iterations are independent:
  - vectorized: extent W (a constant) or min(W, n): the body runs once on
    W-lane vectors, of which only the first n are active in the second form
    (a ragged edge at vector speed): there, inactive lanes of loads from
    tensors and workspace are unspecified and stores to them skip those
    lanes; local buffers are read and written in every lane;
  - unrolled: constant extent; the body is emitted once per iteration;
  - parallel: the body is outlined into a task over a range of iterations
    and run by the host's thread pool (serially without one), in chunks of
    at least `grain` iterations (an index expression: a cost threshold).

A `Kernel` is one loop nest over buffers; a `LoopProgram` is, per entry, the
kernels in run order plus the buffers they use.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, TypeVar

from ..errors import InternalError

INDEX = "i64"
_uid = itertools.count()
T = TypeVar("T")


# --------------------------------------------------------------- expressions

class Expr:
    dtype: str

    # Arithmetic sugar keeps the ops' lowering rules readable.
    def __add__(self, o): return binop("+", self, o)
    def __radd__(self, o): return binop("+", o, self)
    def __sub__(self, o): return binop("-", self, o)
    def __rsub__(self, o): return binop("-", o, self)
    def __mul__(self, o): return binop("*", self, o)
    def __rmul__(self, o): return binop("*", o, self)
    def __truediv__(self, o): return binop("/", self, o)
    def __rtruediv__(self, o): return binop("/", o, self)
    def __neg__(self): return Call("neg", (self,), self.dtype)


@dataclass(frozen=True, eq=False)
class Const(Expr):
    value: float | int
    dtype: str


@dataclass(frozen=True, eq=False)
class Var(Expr):
    """A loop index or a symbolic size; identity matters, not the name."""
    name: str
    dtype: str = INDEX
    uid: int = field(default_factory=lambda: next(_uid))


@dataclass(frozen=True, eq=False)
class Buffer:
    """A flat array. kind: 'tensor' (slot `index` in the entry's tensor
    table), 'workspace' (slot `index` of the workspace plan), 'local', or
    'shared' (GPU: one per thread block, constant size)."""
    name: str
    dtype: str
    kind: str
    index: int
    size: Expr


@dataclass(frozen=True, eq=False)
class Load(Expr):
    buf: Buffer
    index: Expr

    @property
    def dtype(self) -> str:
        return self.buf.dtype


@dataclass(frozen=True, eq=False)
class LaneSum(Load):
    """buf[index] + buf[index + 1] + ... + buf[index + lanes - 1]: the sum
    across the lanes of a vector accumulator (rendered as one vector load
    and a horizontal add)."""
    lanes: int = 1


@dataclass(frozen=True, eq=False)
class Bin(Expr):
    """Arithmetic (+ - * / min max), integer bit ops (xor, shl, shr: logical
    shift right; for hashes), and comparisons (< <= > >= == !=, dtype 'bool').

    NaN, as PyTorch: float min and max propagate it (IEEE 754-2019 minimum
    and maximum, torch.minimum/maximum), so a NaN reaching relu, a pooling
    window, a row max or a clamp shows in the result; integer min and max
    are index clamps. Float comparisons with a NaN operand are false except
    != (so x != x tests for NaN), as in C."""
    op: str
    a: Expr
    b: Expr
    dtype: str


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """An intrinsic: neg exp log tanh sqrt abs pow."""
    fn: str
    args: tuple[Expr, ...]
    dtype: str


@dataclass(frozen=True, eq=False)
class Select(Expr):
    cond: Expr
    a: Expr
    b: Expr

    @property
    def dtype(self) -> str:
        return self.a.dtype


@dataclass(frozen=True, eq=False)
class Cast(Expr):
    value: Expr
    dtype: str


@dataclass(frozen=True, eq=False)
class Reduce(Expr):
    """`kind` (sum | max) of `body` over vars in [0, extent)."""
    kind: str
    vars: tuple[Var, ...]
    extents: tuple[Expr, ...]
    body: Expr

    @property
    def dtype(self) -> str:
        return self.body.dtype


COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


def const_like(v, dtype: str) -> Const:
    return Const(int(v) if dtype in ("i32", INDEX) else float(v), dtype)


def binop(op: str, a, b) -> Expr:
    if not isinstance(a, Expr):
        a = const_like(a, b.dtype)
    if not isinstance(b, Expr):
        b = const_like(b, a.dtype)
    if a.dtype != b.dtype:
        raise InternalError("loop IR", f"{op} of {a.dtype} and {b.dtype}")
    # Fold index arithmetic with constants so flat indices stay small.
    if isinstance(a, Const) and isinstance(b, Const) and a.dtype == INDEX and op in "+-*":
        return Const({"+": a.value + b.value, "-": a.value - b.value,
                      "*": a.value * b.value}[op], INDEX)
    if a.dtype == INDEX and op == "/":
        # 0 / b (a chunk loop's first iteration: the grain's p = 0; a zero b
        # would be undefined anyway), c / c' and a / 1
        if isinstance(a, Const) and a.value == 0:
            return a
        if isinstance(b, Const) and b.value != 0:
            if isinstance(a, Const):
                return Const(trunc_div(a.value, b.value), INDEX)
            if b.value == 1:
                return a
    if a.dtype == INDEX and op in "+-" and isinstance(b, Const) and b.value == 0:
        return a
    # Constants gather: (x * c) * c' -> x * cc', (x +- c) +- c' -> x + (+-c +- c'),
    # exact in the index's modular arithmetic: a flat index reads
    # (k * 32 + c) * 9 + 2, not (k * 32 + c) * 3 * 3 + 1 + 1.
    if a.dtype == INDEX and isinstance(b, Const) and isinstance(a, Bin) and isinstance(a.b, Const):
        if op == "*" and a.op == "*":
            return binop("*", a.a, a.b.value * b.value)
        if op in ("+", "-") and a.op in ("+", "-"):
            c = (a.b.value if a.op == "+" else -a.b.value) + (b.value if op == "+" else -b.value)
            return binop("+", a.a, c) if c >= 0 else binop("-", a.a, -c)
    if a.dtype == INDEX and op == "+" and isinstance(a, Const) and a.value == 0:
        return b
    # x + (y - x) -> y: a collapsed loop's (p / c) * c + p % c is p again.
    if a.dtype == INDEX and op == "+":
        if isinstance(b, Bin) and b.op == "-" and _same_index(b.b, a):
            return b.a
        if isinstance(a, Bin) and a.op == "-" and _same_index(a.b, b):
            return a.a
    if a.dtype == INDEX and op == "*":
        if isinstance(b, Const) and b.value == 1:
            return a
        if isinstance(a, Const) and a.value == 1:
            return b
        if (isinstance(a, Const) and a.value == 0) or (isinstance(b, Const) and b.value == 0):
            return Const(0, INDEX)
    return Bin(op, a, b, "bool" if op in COMPARISONS else a.dtype)


def _same_index(a: Expr, b: Expr) -> bool:
    """a and b are the same index arithmetic of vars and constants."""
    if a is b:
        return True
    if isinstance(a, Const) and isinstance(b, Const):
        return a.value == b.value and a.dtype == b.dtype
    return isinstance(a, Bin) and isinstance(b, Bin) and a.op == b.op \
        and _same_index(a.a, b.a) and _same_index(a.b, b.b)


def call(fn: str, *args: Expr) -> Call:
    return Call(fn, tuple(args), args[0].dtype)


def maximum(a: Expr, b) -> Expr:
    """max(a, b); NaN if either is (see Bin)."""
    return binop("max", a, b)


def minimum(a: Expr, b) -> Expr:
    """min(a, b); NaN if either is (see Bin)."""
    return binop("min", a, b)


def isnan(x: Expr) -> Expr:
    """x != x: true for a NaN (see Bin)."""
    return binop("!=", x, x)


def cmp(op: str, a, b) -> Expr:
    return binop(op, a, b)


def trunc_div(a: int, b: int) -> int:
    """a / b as the IR's index division means it: truncated toward zero (C's,
    LLVM's sdiv), not Python's floor."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


_EVALUATED = ("+", "-", "*", "/", "min", "max") + COMPARISONS


def evaluate(e: Expr, syms: dict[str, int]) -> int | None:
    """The value of an index expression of constants and symbols (`syms`:
    by name; a comparison is 1 or 0, a select picks); None when it holds
    anything else, an unknown symbol or a division by zero."""
    def value(x: Expr, args: list) -> int | None:
        if isinstance(x, Const):
            return int(x.value)
        if isinstance(x, Var):
            return syms.get(x.name)
        if isinstance(x, Select):
            c, a, b = args
            return None if c is None else a if c else b
        if not isinstance(x, Bin) or x.op not in _EVALUATED or None in args:
            return None
        a, b = args
        if x.op == "/":
            return None if b == 0 else trunc_div(a, b)
        return int({"+": a + b, "-": a - b, "*": a * b, "min": min(a, b), "max": max(a, b),
                    "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b, "==": a == b,
                    "!=": a != b}[x.op])
    # Only what `value` can use is visited: never a load's index, say.
    return fold(e, value, lambda x: children(x) if isinstance(x, Select) or (
        isinstance(x, Bin) and x.op in _EVALUATED) else ())


def all_of(conds: list[Expr]) -> Expr | None:
    """The conjunction of conds (None for none)."""
    out = None
    for c in conds:
        out = c if out is None else Bin("and", out, c, "bool")
    return out


# ---------------------------------------------------------------- statements

class Stmt:
    pass


@dataclass(eq=False)
class For(Stmt):
    var: Var
    extent: Expr
    body: Stmt
    kind: str = "serial"   # one of LOOP_KINDS
    grain: Expr | None = None  # parallel: fewest iterations worth a task


# cpu: serial, parallel (over the runtime's pool), vectorized, unrolled;
# cuda (dlc/passes/loop_gpu.py): over all threads of a launch, over its
# blocks, over the threads of one block.
LOOP_KINDS = ("serial", "parallel", "vectorized", "unrolled", "gpu_grid", "gpu_blocks", "gpu_threads")


@dataclass(eq=False)
class Store(Stmt):
    buf: Buffer
    index: Expr
    value: Expr
    accumulate: bool = False  # buf[index] += value


@dataclass(eq=False)
class Allocate(Stmt):
    buf: Buffer  # kind 'local', lives for `body`
    body: Stmt


@dataclass(eq=False)
class If(Stmt):
    cond: Expr
    then: Stmt


@dataclass(eq=False)
class Seq(Stmt):
    body: list[Stmt]


@dataclass(eq=False)
class Barrier(Stmt):
    """GPU: every thread of the block waits here until all have arrived."""


@dataclass(eq=False)
class Kernel:
    name: str
    body: Stmt
    # The layer whose parameters (or their gradients) the kernel reads or
    # writes, where there is one: in its symbol and printed, so a profile or
    # an IR dump says where time goes.
    layer: str = ""


DTYPE_BYTES = {"f32": 4, "f64": 8, "i32": 4, INDEX: 8}
# DLC_ALIGNMENT (runtime/include/dlc/runtime.h): of the weights region, the
# workspace and each region the memory planner lays out in it.
ALIGNMENT = 64


@dataclass
class LoopEntry:
    """An entry's kernels in run order. `workspace` lists its intermediate
    buffers (buffer i has index i); `slot_of[i]` is the workspace region it
    lives in (memory planning lets buffers with disjoint lifetimes share)."""
    name: str
    kernels: list[Kernel]
    workspace: list[Buffer]
    slot_of: list[int]

    def slots(self) -> list[list[Buffer]]:
        out: list[list[Buffer]] = [[] for _ in range(max(self.slot_of, default=-1) + 1)]
        for buf in self.workspace:
            out[self.slot_of[buf.index]].append(buf)
        return out


@dataclass
class LoopProgram:
    """Per entry: kernels in run order. `syms` are the symbolic sizes, in the
    order of the runtime's `syms` array; `tensors` describes the tensor table."""
    syms: list[Var]
    tensors: list  # dlc.lower.TensorSlot
    entries: list[LoopEntry]


# ------------------------------------------------------------------- walking

def stmt_children(s: Stmt) -> tuple[Stmt, ...]:
    """The statements directly nested in s, in order."""
    if isinstance(s, (For, Allocate)):
        return (s.body,)
    if isinstance(s, If):
        return (s.then,)
    if isinstance(s, Seq):
        return tuple(s.body)
    return ()


def with_stmt_children(s: Stmt, kids: list[Stmt]) -> Stmt:
    """A copy of s with its nested statements replaced (in the order of
    `stmt_children`)."""
    if isinstance(s, For):
        return For(s.var, s.extent, kids[0], s.kind, s.grain)
    if isinstance(s, Allocate):
        return Allocate(s.buf, kids[0])
    if isinstance(s, If):
        return If(s.cond, kids[0])
    if isinstance(s, Seq):
        return Seq(list(kids))
    return s


def stmts_of(s: Stmt) -> Iterator[Stmt]:
    """s and every statement nested in it, outermost first (with a stack:
    nesting grows with a kernel's size, an Allocate per value an update
    kernel computes)."""
    stack = [s]
    while stack:
        x = stack.pop()
        yield x
        stack.extend(reversed(stmt_children(x)))


def exprs_of(s: Stmt) -> Iterator[Expr]:
    """The expressions written directly in s and its nested statements."""
    for st in stmts_of(s):
        if isinstance(st, For):
            yield st.extent
        elif isinstance(st, Store):
            yield st.index
            yield st.value
        elif isinstance(st, Allocate):
            yield st.buf.size
        elif isinstance(st, If):
            yield st.cond


def children(e: Expr) -> tuple[Expr, ...]:
    """The direct subexpressions of e, in order."""
    if isinstance(e, Load):
        return (e.index,)
    if isinstance(e, Bin):
        return (e.a, e.b)
    if isinstance(e, Call):
        return e.args
    if isinstance(e, Select):
        return (e.cond, e.a, e.b)
    if isinstance(e, Cast):
        return (e.value,)
    if isinstance(e, Reduce):
        return (*e.extents, e.body)
    return ()


def fold(e, f: Callable[[object, list], T], kids: Callable = children, memo: dict | None = None) -> T:
    """f(x, [f's results for x's children]) for every node x of e, children
    first (`kids` says which: `stmt_children` for a statement), once per
    node: expressions are DAGs (an op's lowering may use an operand twice,
    and a chain of such ops doubles the paths each time), and as deep as a
    program's fused chains of ops or its sums over buffers grow, so the walk
    has an explicit stack and a memo, id(x) -> (x, result); a caller may keep
    one across calls."""
    memo = {} if memo is None else memo
    done: list = []
    stack: list[tuple[object, int]] = [(e, -1)]   # -1: children not yet pushed
    while stack:
        x, n = stack.pop()
        if n < 0:
            hit = memo.get(id(x))
            if hit is not None and hit[0] is x:   # the node is kept: its id stays its own
                done.append(hit[1])
                continue
            ks = kids(x)
            if ks:
                stack.append((x, len(ks)))
                stack.extend([(k, -1) for k in reversed(ks)])
                continue
            args = []
        else:
            args = done[-n:]
            del done[-n:]
        r = f(x, args)
        memo[id(x)] = (x, r)
        done.append(r)
    return done[0]


def with_children(e: Expr, kids: list[Expr]) -> Expr:
    """e with its children (in the order of `children`) replaced; index
    arithmetic is rebuilt through binop so constants fold."""
    if isinstance(e, LaneSum):
        return LaneSum(e.buf, kids[0], e.lanes)
    if isinstance(e, Load):
        return Load(e.buf, kids[0])
    if isinstance(e, Bin):
        return binop(e.op, *kids)
    if isinstance(e, Call):
        return Call(e.fn, tuple(kids), e.dtype)
    if isinstance(e, Select):
        return Select(*kids)
    if isinstance(e, Cast):
        return Cast(kids[0], e.dtype)
    if isinstance(e, Reduce):
        return Reduce(e.kind, e.vars, tuple(kids[:-1]), kids[-1])
    return e


def subexprs(e: Expr, seen: set[int] | None = None) -> Iterator[Expr]:
    """e and every expression inside it, each node once (see fold), in
    preorder (with a stack: nested generators would cost the depth for
    every node). `seen`: ids of nodes not to visit (again), kept across
    calls by a caller that walks several expressions."""
    seen = set() if seen is None else seen   # ids of nodes e keeps
    stack = [e]
    while stack:
        x = stack.pop()
        if id(x) not in seen:
            seen.add(id(x))
            yield x
            stack.extend(reversed(children(x)))


def buffers_of(s: Stmt) -> Iterator[Buffer]:
    """Every buffer a statement stores to or loads from."""
    for st in stmts_of(s):
        if isinstance(st, Store):
            yield st.buf
    seen: set[int] = set()   # the statements' expressions share nodes
    for e in exprs_of(s):
        for x in subexprs(e, seen):
            if isinstance(x, Load):
                yield x.buf


def depends_on(e: Expr, var: Var) -> bool:
    return any(x is var for x in subexprs(e))


def stride_of(e: Expr, var: Var, memo: dict | None = None) -> int | None:
    """d e / d var when e is affine in var with a constant coefficient
    (0 when e does not use var); None otherwise. `memo`: fold's, kept
    across calls for the same var."""
    def step(x: Expr, args: list[tuple[bool, int | None]]) -> tuple[bool, int | None]:
        """(x uses var, its stride)"""
        if x is var:
            return True, 1
        if not any(uses for uses, _ in args):
            return False, 0
        strides = [k for _, k in args]
        if isinstance(x, Bin) and x.op in "+-":
            a, b = strides
            if a is None or b is None:
                return True, None
            return True, a + b if x.op == "+" else a - b
        if isinstance(x, Bin) and x.op == "*":
            for k, c in ((strides[0], x.b), (strides[1], x.a)):
                if isinstance(c, Const):
                    return True, None if k is None else k * c.value
        return True, None
    return fold(e, step, memo=memo)[1]


def substitute(e: Expr, env: dict, memo: dict | None = None) -> Expr:
    """e with variables replaced by expressions (env: Var -> Expr); index
    arithmetic is rebuilt through binop so constants fold. `memo`: fold's,
    kept across calls with the same env."""
    return fold(e, lambda x, kids: env.get(x, x) if isinstance(x, Var) else with_children(x, kids),
                memo=memo)


def substitute_stmt(s: Stmt, env: dict) -> Stmt:
    """s with variables replaced (see substitute); statements are copied,
    expressions its statements share substituted once."""
    memo: dict = {}
    return map_stmt(s, lambda e: substitute(e, env, memo))


def on_buffers(s: Stmt, buffers: dict) -> Stmt:
    """s on other buffers (buffers: Buffer -> Buffer; the others stay);
    expressions that read none of them are kept."""
    def node(x: Expr, kids: list[Expr]) -> Expr:
        if isinstance(x, Load):   # and LaneSum
            buf = buffers.get(x.buf, x.buf)
            return x if buf is x.buf and kids[0] is x.index else replace(x, buf=buf, index=kids[0])
        return x if all(a is b for a, b in zip(kids, children(x))) else with_children(x, kids)
    memo: dict = {}
    return map_stmt(s, lambda e: fold(e, node, memo=memo), lambda b: buffers.get(b, b))


def map_stmt(s: Stmt, expr: Callable[[Expr], Expr], buffer: Callable[[Buffer], Buffer] = lambda b: b) -> Stmt:
    """A copy of s with `expr` applied to each expression its statements
    hold and `buffer` to each buffer they store to or allocate."""
    def copy(x: Stmt, kids: list[Stmt]) -> Stmt:
        if isinstance(x, For):
            return For(x.var, expr(x.extent), kids[0], x.kind, None if x.grain is None else expr(x.grain))
        if isinstance(x, Store):
            return Store(buffer(x.buf), expr(x.index), expr(x.value), x.accumulate)
        if isinstance(x, If):
            return If(expr(x.cond), kids[0])
        if isinstance(x, Allocate):
            return Allocate(buffer(x.buf), kids[0])
        if isinstance(x, (Seq, Barrier)):
            return with_stmt_children(x, kids)
        raise TypeError(x)
    return fold(s, copy, stmt_children)


def rewrite(s: Stmt, f) -> Stmt:
    """s rewritten top-down by f: where f(x) returns a statement it replaces
    x (and is not descended into); where it returns None, x is kept with its
    nested statements rewritten."""
    new: dict[int, Stmt] = {}   # f's replacements, by id of the statement replaced

    def kids(x: Stmt) -> tuple[Stmt, ...]:
        y = f(x)
        if y is None:
            return stmt_children(x)
        new[id(x)] = y
        return ()
    return fold(s, lambda x, ks: new[id(x)] if id(x) in new else with_stmt_children(x, ks), kids)


def vector_lanes(extent: Expr) -> tuple[int, Expr | None] | None:
    """(W, active lanes or None when all W are) of a vectorized loop's
    extent, W or min(W, n); None for any other extent."""
    if isinstance(extent, Const):
        return extent.value, None
    if isinstance(extent, Bin) and extent.op == "min" and isinstance(extent.a, Const):
        return extent.a.value, extent.b
    return None


def interleaved_pair(stores: list[Store], var: Var) -> bool:
    """The two stores write one buffer's elements 2i and 2i + 1 at i = var
    (stride 2 in var, the second one element after the first): a Winograd
    tile's two output columns. A vectorized loop stores both streams as one
    vector (the renderer interleaves them)."""
    if len(stores) != 2 or stores[0].buf is not stores[1].buf \
            or any(stride_of(st.index, var) != 2 for st in stores):
        return False
    first = [substitute(st.index, {var: Const(0, INDEX)}) for st in stores]
    return _offset(first[1], first[0]) == 1


def _offset(a: Expr, b: Expr) -> int | None:
    """c where a is b + c in the same index arithmetic (c the constant
    terms down the right of the sums), else None."""
    def split(e: Expr) -> tuple[Expr | None, int]:
        if isinstance(e, Const) and e.dtype == INDEX:
            return None, e.value
        if isinstance(e, Bin) and e.op == "+":
            rest, c = split(e.b)
            if c:
                return (e.a if rest is None else Bin("+", e.a, rest, INDEX)), c
        return e, 0
    (ra, ca), (rb, cb) = split(a), split(b)
    same = ra is rb if ra is None or rb is None else _same_index(ra, rb)
    return ca - cb if same else None


def plain_stores(s: Stmt) -> list[Store] | None:
    """s's stores when s is one store or a sequence of them (an elementwise
    loop's body: an optimizer's update of a weight and its state); else None."""
    if isinstance(s, Store):
        return [s]
    if isinstance(s, Seq) and s.body and all(isinstance(x, Store) for x in s.body):
        return list(s.body)
    return None


def nest(loops: list[tuple[Var, Expr]], body: Stmt) -> Stmt:
    """Serial loops (var, extent), outermost first, around body."""
    for var, extent in reversed(loops):
        body = For(var, extent, body)
    return body


def loop(var: Var, extent, body: Stmt, kind: str = "serial") -> Stmt:
    """A For, folded away when the extent is the constant 1 (var := 0) and
    dropped when it is the constant 0."""
    if not isinstance(extent, Expr):
        extent = Const(int(extent), INDEX)
    if isinstance(extent, Const) and extent.value == 1:
        return substitute_stmt(body, {var: Const(0, INDEX)})
    if isinstance(extent, Const) and extent.value <= 0:
        return Seq([])
    return For(var, extent, body, kind)


# ------------------------------------------------------------------ verifier

def verify(prog: LoopProgram, where: str = "loops", allow_reduce: bool = False) -> None:
    """Every variable is bound (a symbol, or an enclosing loop), types agree,
    local buffers are used inside their Allocate, no Reduce after lowering."""
    syms = set(prog.syms)
    for entry in prog.entries:
        for k in entry.kernels:
            _verify_stmt(k.body, syms, set(), where, f"{entry.name}/{k.name}", allow_reduce)


def _verify_expr(e: Expr, bound: set, locals_: set, where: str, ctx: str, allow_reduce: bool) -> None:
    stack = [(e, bound)]   # a Reduce's body also sees its vars
    bounds, seen = [bound], set()   # each node once per set of bound vars (kept: ids stay theirs)
    while stack:
        x, bound = stack.pop()
        if (id(x), id(bound)) in seen:
            continue
        seen.add((id(x), id(bound)))
        if isinstance(x, Var) and x not in bound:
            raise InternalError(where, f"{ctx}: variable {x.name} is not bound")
        if isinstance(x, Load) and x.buf.kind == "local" and x.buf not in locals_:
            raise InternalError(where, f"{ctx}: local {x.buf.name} used outside its Allocate")
        if isinstance(x, Load) and x.index.dtype != INDEX:
            raise InternalError(where, f"{ctx}: index of {x.buf.name} is {x.index.dtype}")
        if isinstance(x, Reduce):
            if not allow_reduce:
                raise InternalError(where, f"{ctx}: Reduce survived reduction lowering")
            bounds.append(bound | set(x.vars))
            stack += [(x.body, bounds[-1])] + [(n, bound) for n in x.extents]
            continue
        if isinstance(x, Bin) and x.a.dtype != x.b.dtype:
            raise InternalError(where, f"{ctx}: {x.op} mixes {x.a.dtype} and {x.b.dtype}")
        stack += [(c, bound) for c in children(x)]


def _verify_stmt(s: Stmt, bound: set, locals_: set, where: str, ctx: str, allow_reduce: bool) -> None:
    stack = [(s, bound, locals_)]   # what each statement sees
    while stack:
        s, bound, locals_ = stack.pop()
        if isinstance(s, For):
            _verify_expr(s.extent, bound, locals_, where, ctx, allow_reduce)
            if s.kind not in LOOP_KINDS:
                raise InternalError(where, f"{ctx}: loop {s.var.name} has unknown kind {s.kind}")
            if s.kind == "unrolled" and not isinstance(s.extent, Const):
                raise InternalError(where, f"{ctx}: unrolled loop {s.var.name} needs a constant extent")
            if s.kind == "vectorized" and vector_lanes(s.extent) is None:
                raise InternalError(where, f"{ctx}: vectorized loop {s.var.name} needs extent W or min(W, n)")
            if s.kind == "vectorized" and any(isinstance(x, (For, Allocate)) for x in stmts_of(s.body)):
                raise InternalError(where, f"{ctx}: vectorized loop {s.var.name} holds loops or allocations")
            if s.kind == "parallel":
                if any(b.kind == "local" and b in locals_ for b in buffers_of(s.body)):
                    raise InternalError(where, f"{ctx}: parallel loop {s.var.name} shares a local buffer")
                if s.grain is not None:
                    _verify_expr(s.grain, bound, locals_, where, ctx, allow_reduce)
            if s.var in bound:
                raise InternalError(where, f"{ctx}: loop variable {s.var.name} bound twice")
            stack.append((s.body, bound | {s.var}, locals_))
        elif isinstance(s, Store):
            if s.buf.kind == "local" and s.buf not in locals_:
                raise InternalError(where, f"{ctx}: store to {s.buf.name} outside its Allocate")
            _verify_expr(s.index, bound, locals_, where, ctx, allow_reduce)
            _verify_expr(s.value, bound, locals_, where, ctx, allow_reduce)
            if s.value.dtype != s.buf.dtype:
                raise InternalError(where, f"{ctx}: stores {s.value.dtype} into {s.buf.dtype} {s.buf.name}")
        elif isinstance(s, Allocate):
            stack.append((s.body, bound, locals_ | {s.buf}))
        elif isinstance(s, If):
            _verify_expr(s.cond, bound, locals_, where, ctx, allow_reduce)
            stack.append((s.then, bound, locals_))
        elif isinstance(s, Seq):
            stack += [(b, bound, locals_) for b in reversed(s.body)]
        elif not isinstance(s, Barrier):
            raise InternalError(where, f"{ctx}: unknown statement {s!r}")


# ------------------------------------------------------------------- printer

def print_expr(e: Expr) -> str:
    """e as text: operators without the parentheses their precedence makes
    redundant, and an index's a - (a / c) * c (the remainder, as passes
    write it) as a % c."""
    return fold(e, _expr_text)[0]


# Binding strength of the infix operators (higher binds tighter); every
# other expression prints as an atom.
_PRECEDENCE = {**dict.fromkeys(("<", "<=", ">", ">=", "==", "!="), 1), "+": 2, "-": 2,
               "*": 3, "/": 3, "%": 3}
_ATOM = 4


def _remainder(e: Bin) -> tuple[Expr, Expr] | None:
    """(a, c) where e is the index expression a - (a / c) * c."""
    q = e.b
    if e.op != "-" or e.dtype != INDEX or not isinstance(q, Bin) or q.op != "*":
        return None
    d = q.a
    if not isinstance(d, Bin) or d.op != "/":
        return None
    same = lambda x, y: x is y or print_expr(x) == print_expr(y)
    return (e.a, q.b) if same(d.a, e.a) and same(d.b, q.b) else None


def _expr_text(e: Expr, kids: list[tuple[str, int]]) -> tuple[str, int]:
    """e as text and its binding strength, given its children's."""
    text = [k[0] for k in kids]
    if isinstance(e, Const):
        return repr(e.value), _ATOM if not (isinstance(e.value, (int, float)) and e.value < 0) else 0
    if isinstance(e, Var):
        return e.name, _ATOM
    if isinstance(e, LaneSum):
        return f"lanesum({e.buf.name}[{text[0]} : +{e.lanes}])", _ATOM
    if isinstance(e, Load):
        return f"{e.buf.name}[{text[0]}]", _ATOM
    if isinstance(e, Bin):
        if e.op in ("min", "max"):
            return f"{e.op}({text[0]}, {text[1]})", _ATOM
        if e.op not in _PRECEDENCE:
            return f"({text[0]} {e.op} {text[1]})", _ATOM
        rem = _remainder(e)
        if rem is not None:
            op, kids = "%", [fold(x, _expr_text) for x in rem]
        else:
            op = e.op
        level = _PRECEDENCE[op]
        # operands bind at least as tightly; a right operand of the same
        # strength keeps its parentheses (a - (b - c))
        left = kids[0][0] if kids[0][1] >= level else f"({kids[0][0]})"
        right = kids[1][0] if kids[1][1] > level else f"({kids[1][0]})"
        return f"{left} {op} {right}", level
    if isinstance(e, Call):
        return f"{e.fn}({', '.join(text)})", _ATOM
    if isinstance(e, Select):
        return f"select({text[0]}, {text[1]}, {text[2]})", _ATOM
    if isinstance(e, Cast):
        return f"{e.dtype}({text[0]})", _ATOM
    if isinstance(e, Reduce):
        rng = ", ".join(f"{v.name} < {x}" for v, x in zip(e.vars, text))
        return f"{e.kind}({rng}: {text[-1]})", _ATOM
    raise TypeError(e)


def print_stmt(s: Stmt, indent: int = 0) -> str:
    lines = []
    stack = [(s, indent)]
    while stack:
        s, indent = stack.pop()
        pad = "  " * indent
        if isinstance(s, For):
            kind = "" if s.kind == "serial" else f" {s.kind}"
            if s.grain is not None:
                kind += f"(grain {print_expr(s.grain)})"
            lines.append(f"{pad}for{kind} {s.var.name} in 0..{print_expr(s.extent)}:\n")
            stack.append((s.body, indent + 1))
        elif isinstance(s, Store):
            op = "+=" if s.accumulate else "="
            lines.append(f"{pad}{s.buf.name}[{print_expr(s.index)}] {op} {print_expr(s.value)}\n")
        elif isinstance(s, Allocate):
            lines.append(f"{pad}allocate {s.buf.name}: {s.buf.dtype}[{print_expr(s.buf.size)}]\n")
            stack.append((s.body, indent))
        elif isinstance(s, If):
            lines.append(f"{pad}if {print_expr(s.cond)}:\n")
            stack.append((s.then, indent + 1))
        elif isinstance(s, Seq):
            stack += [(b, indent) for b in reversed(s.body)]
        elif isinstance(s, Barrier):
            lines.append(f"{pad}barrier\n")
        else:
            raise TypeError(s)
    return "".join(lines)


def print_program(prog: LoopProgram) -> str:
    out = []
    for e in prog.entries:
        for i, slot in enumerate(e.slots()):
            sizes = ", ".join(f"{b.name}: {b.dtype}[{print_expr(b.size)}]" for b in slot)
            out.append(f"# {e.name}: workspace slot {i}: {sizes}")
        out.append(f"entry {e.name}:")
        for k in e.kernels:
            out.append(f"  kernel {k.name}{f' ({k.layer})' if k.layer else ''}:")
            out.append(print_stmt(k.body, 2).rstrip("\n"))
    return "\n".join(out) + "\n"
