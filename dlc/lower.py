"""Lowering: graph IR (differentiated, fused) -> loop IR.

Every node that is not inlined gets a kernel: a loop nest over its output
shape storing the op's lowering expression, in which inlined producers are
expanded in place. An op whose output is not a per-element expression (a
recurrence over time, a scatter-add) provides `lower_kernel` instead, and
its statement becomes the kernel's body (see `Op.lower_kernel`). After this
pass no graph op survives; `Reduce` expressions remain until
`lower_reductions`.

The tensor table (what the runtime sees) is laid out here: parameters,
optimizer states, then each entry's inputs and outputs, and the caches its
kernels ask for (state rows too: see `KernelCtx`).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Callable

from .errors import InternalError
from .ir import loops as L
from .ir.graph import Dim, Function, Init, Node, Program, Value, dim_factors

Accessor = Callable[[list[L.Expr]], L.Expr]
# A step's halves write params and state, as a step does: 'train' to the runtime.
ENTRY_KIND = {"model": "infer", "train": "train", "grads": "grads", "apply": "train",
              "step_grads": "train"}


@dataclass(frozen=True)
class IndexRange:
    """The values an integer tensor must hold: lo <= v <= hi, plus the value
    of symbol `sym` when given (lengths go up to `time`, tokens to vocab - 1),
    or v == `extra` when given (a loss's ignore_index outside the classes)."""
    lo: int
    hi: int
    sym: str | None = None
    extra: int | None = None

    @staticmethod
    def upto(lo: int, end: Dim, offset: int = 0) -> IndexRange:
        """[lo, end + offset], for a dim `end` fixed or symbolic."""
        return IndexRange(lo, offset, end) if isinstance(end, str) else IndexRange(lo, end + offset)

    def intersect(self, other: IndexRange | None) -> IndexRange:
        """Both ranges at once. Upper bounds over different symbols (or a
        symbol and a number) cannot be compared here: self's is kept, and
        the kernels' own guards cover the other's."""
        if other is None:
            return self
        hi = min(self.hi, other.hi) if self.sym == other.sym else self.hi
        extra = self.extra if self.extra == other.extra else None
        return IndexRange(max(self.lo, other.lo), hi, self.sym, extra)


@dataclass(frozen=True)
class TensorSlot:
    """One row of the runtime's tensor table."""
    name: str
    role: str                  # param | state | input | output
    dtype: str
    dims: tuple[Dim, ...]
    init: Init | None = None
    entry: str = ""            # for inputs and outputs
    valid: IndexRange | None = None   # an integer input's values, checked by the runtime


def input_range(v: Value, readers: dict[int, list[Node]]) -> IndexRange | None:
    """The values integer input v must hold: what every op reading it asks
    of it (`Op.operand_range`), also through reshapes, which keep its values."""
    out, todo = None, [v]
    while todo:
        x = todo.pop()
        for n in readers.get(id(x), []):
            if n.op.same_order_as_input:
                todo.append(n.out)
            for k, operand in enumerate(n.inputs):
                r = n.op.operand_range(n, k) if operand is x else None
                if r is not None:
                    out = r.intersect(out)
    return out


@dataclass
class EntrySlots:
    name: str
    kind: str
    inputs: list[int]
    outputs: list[int]


class LowerCtx:
    """What an op's lowering rule may ask for: dims as expressions, fresh
    loop variables, and the target (a CPU schedule in a statement-level
    lowering is for target 'cpu' only)."""

    def __init__(self, syms: dict[str, L.Var], target: str = "cpu"):
        self.syms, self.target = syms, target

    def dim(self, d: Dim) -> L.Expr:
        if isinstance(d, int):
            return L.Const(d, L.INDEX)
        fixed, syms = dim_factors(d)
        for s in syms:
            if s not in self.syms:
                raise InternalError("lower", f"symbol '{s}' is not bound by any input")
        out = self.syms[syms[0]]
        for s in syms[1:]:
            out = out * self.syms[s]
        return out if fixed == 1 else L.Const(fixed, L.INDEX) * out

    def var(self, name: str) -> L.Var:
        return L.Var(name)


class KernelCtx(LowerCtx):
    """What a statement-level lowering (`Op.lower_kernel`) may also ask for:
    scratch workspace that lives for its kernel only; a cache, a buffer the
    session keeps from call to call (zeroed when it starts), shared by every
    entry that asks for the same name, for values derived from params (it
    is the op's to check that they still match)."""

    def __init__(self, syms: dict[str, L.Var], scratch: Callable[[str, L.Expr], L.Buffer],
                 cache: Callable[[str, str, int], L.Buffer], target: str = "cpu"):
        super().__init__(syms, target)
        self.scratch = scratch   # (dtype, number of elements) -> a workspace buffer
        self.cache = cache       # (name, dtype, number of elements) -> a session buffer


def flat_index(ctx: LowerCtx, idx: list[L.Expr], shape: tuple[Dim, ...]) -> L.Expr:
    """Row-major offset of idx in shape."""
    out: L.Expr = L.Const(0, L.INDEX)
    for i, d in zip(idx, shape):
        out = out * ctx.dim(d) + i
    return out


def _readers_first(buffers: list[L.Buffer], reads: list[set]) -> list[int] | None:
    """An order of stores into `buffers` (store k's value reads the buffers
    reads[k]) in which no value reads the buffer of a store before it,
    keeping the given order where nothing constrains it; None if reads go
    round in a cycle."""
    pending, order = list(range(len(buffers))), []
    while pending:
        # The first store whose buffer no other pending value reads.
        free = next((j for j in pending
                     if not any(buffers[j] in reads[k] for k in pending if k != j)), None)
        if free is None:
            return None
        order.append(free)
        pending.remove(free)
    return order


def size_of(ctx: LowerCtx, shape: tuple[Dim, ...]) -> L.Expr:
    n: L.Expr = L.Const(1, L.INDEX)
    for d in shape:
        n = n * ctx.dim(d)
    return n


def lower(program: Program, target: str = "cpu") -> tuple[L.LoopProgram, list[EntrySlots]]:
    """Graph IR -> loop IR for `target`, and the tensor table with each entry's slots."""
    syms = {s: L.Var(s) for s in program.symbols}
    ctx = LowerCtx(syms, target)
    tensors: list[TensorSlot] = []
    global_index: dict[str, int] = {}
    for p in program.params.values():
        global_index[p.name] = len(tensors)
        tensors.append(TensorSlot(p.name, "param", p.type.dtype, p.type.shape, p.init))
    for s in program.states.values():
        global_index[s.name] = len(tensors)
        tensors.append(TensorSlot(s.name, "state", s.type.dtype, s.type.shape, s.init))
    entries, slots = [], []
    for fn in program.functions.values():
        entry, es = FunctionLowering(ctx, fn, tensors, global_index).run()
        entries.append(entry)
        slots.append(es)
    return L.LoopProgram(list(syms.values()), tensors, entries), slots


class FunctionLowering:
    def __init__(self, ctx: LowerCtx, fn: Function, tensors: list[TensorSlot],
                 global_index: dict[str, int]):
        self.ctx, self.fn, self.tensors, self.global_index = ctx, fn, tensors, global_index
        self.buffers: dict[int, L.Buffer] = {}
        self.workspace: list[L.Buffer] = []
        self.kernels: list[L.Kernel] = []
        for name, v in {**fn.params, **fn.states}.items():
            self.buffers[id(v)] = self.tensor_buffer(global_index[name], v)

    def tensor_buffer(self, index: int, v: Value) -> L.Buffer:
        return L.Buffer(self.tensors[index].name, v.type.dtype, "tensor", index,
                        size_of(self.ctx, v.type.shape))

    def new_tensor(self, name: str, role: str, v: Value, valid: IndexRange | None = None) -> int:
        self.tensors.append(TensorSlot(name, role, v.type.dtype, v.type.shape, entry=self.fn.name,
                                       valid=valid))
        return len(self.tensors) - 1

    def run(self) -> tuple[L.LoopEntry, EntrySlots]:
        fn = self.fn
        readers = fn.readers()
        inputs = []
        for v in fn.inputs:
            valid = input_range(v, readers) if v.type.dtype == "i32" else None
            i = self.new_tensor(v.name, "input", v, valid)
            inputs.append(i)
            self.buffers[id(v)] = self.tensor_buffer(i, v)
        outputs = [self.new_tensor(name, "output", v) for name, v in fn.outputs.items()]
        # An output computed by a node is written in place; others are copied.
        copies = []
        for slot, v in zip(outputs, fn.outputs.values()):
            if v.kind == "node" and id(v) not in self.buffers:
                self.buffers[id(v)] = self.tensor_buffer(slot, v)
            else:
                copies.append((slot, v))
        for n in fn.nodes:
            if id(n.out) in fn.inlined:
                continue
            if n.op.same_order_as_input and id(n.out) not in self.buffers \
                    and id(n.inputs[0]) not in fn.inlined:
                self.buffers[id(n.out)] = self.buffers[id(n.inputs[0])]   # a view: no kernel
                continue
            buf = self.buffers.get(id(n.out)) or self.workspace_buffer(n.out)
            name = f"{n.op.name}_{len(self.kernels)}"
            if n.op.lower_kernel is not None:
                ctx = KernelCtx(self.ctx.syms, self.scratch_buffer, self.cache_buffer, self.ctx.target)
                body = n.op.lower_kernel(ctx, buf, [self.access(i) for i in n.inputs], n)
                self.kernels.append(L.Kernel(name, body))
            elif n.op.same_order_as_input:
                x = n.inputs[0]
                self.kernels.append(self.store_kernel(name, x.type.shape, [(buf, self.access(x))]))
            else:
                self.kernels.append(self.store_kernel(name, n.out.type.shape,
                                                      [(buf, self.define(n))]))
        for slot, v in copies:
            self.kernels.append(self.store_kernel(f"copy_{len(self.kernels)}", v.type.shape,
                                                  [(self.tensor_buffer(slot, v), self.access(v))]))
        self.kernels += self.assign_kernels()
        # A train step's gradients are workspace buffers: name them by param.
        grads = {self.buffers[id(v)]: name for name, v in fn.gradients.items() if id(v) in self.buffers}
        self.kernels = [self.after_layer(k, grads) for k in self.kernels]
        entry = L.LoopEntry(fn.name, self.kernels, self.workspace,
                            list(range(len(self.workspace))))
        return entry, EntrySlots(fn.name, ENTRY_KIND[fn.kind], inputs, outputs)

    def after_layer(self, k: L.Kernel, grads: dict[L.Buffer, str]) -> L.Kernel:
        """k with the layer whose parameters (or their gradients) it reads
        or writes, where there is one (Kernel.layer)."""
        names = [grads.get(buf) or (buf.name if buf.kind == "tensor"   # a grads entry's outputs: by param
                                    and self.tensors[buf.index].role in ("param", "output") else "")
                 for buf in L.buffers_of(k.body)]
        layers = {name.split(".")[0] for name in names if "." in name}
        return replace(k, layer=layers.pop()) if len(layers) == 1 else k

    def workspace_buffer(self, v: Value) -> L.Buffer:
        buf = self.scratch_buffer(v.type.dtype, size_of(self.ctx, v.type.shape))
        self.buffers[id(v)] = buf
        return buf

    def scratch_buffer(self, dtype: str, size: L.Expr) -> L.Buffer:
        buf = L.Buffer(f"t{len(self.workspace)}", dtype, "workspace", len(self.workspace), size)
        self.workspace.append(buf)
        return buf

    def cache_buffer(self, name: str, dtype: str, size: int) -> L.Buffer:
        """A session-owned buffer (a zero-initialised `state` row of the
        tensor table), the same for every entry that names it."""
        if name not in self.global_index:
            self.global_index[name] = len(self.tensors)
            self.tensors.append(TensorSlot(name, "state", dtype, (size,), Init("zeros")))
        index = self.global_index[name]
        return L.Buffer(name, dtype, "tensor", index, L.Const(size, L.INDEX))

    def define(self, node: Node) -> Accessor:
        """node's output element as an expression of its inputs' elements."""
        ins = [self.access(i) for i in node.inputs]
        return lambda idx: node.op.lower(self.ctx, idx, ins, node)

    def access(self, v: Value) -> Accessor:
        """How a consumer reads v at an index: a load, or v's expression."""
        if id(v) in self.fn.inlined:
            return self.define(v.node)
        buf = self.buffers.get(id(v))
        if buf is None:
            raise InternalError("lower", f"{self.fn.name}: {v!r} has no storage")
        return lambda idx: L.Load(buf, flat_index(self.ctx, idx, v.type.shape))

    def store_kernel(self, name: str, shape: tuple[Dim, ...],
                     stores: list[tuple[L.Buffer, Accessor]]) -> L.Kernel:
        """Loops over `shape` storing each value into its buffer. With several
        stores, every value is computed before any is written, so an update
        may read the old value of a buffer it overwrites: where the stores can
        be ordered so that no value reads a buffer stored before it (SGD's
        weight before its momentum, which the weight's value reads), they
        follow each other (a body of plain stores, which vectorizes); else
        through scalar temporaries."""
        idx = [L.Var(f"i{k}") for k in range(len(shape))]
        flat = flat_index(self.ctx, idx, shape)
        values = [f(idx) for _, f in stores]
        reads = [{x.buf for x in L.subexprs(v) if isinstance(x, L.Load)} for v in values]
        order = _readers_first([buf for buf, _ in stores], reads)
        if order is not None:
            plain = [L.Store(stores[k][0], flat, values[k]) for k in order]
            body: L.Stmt = L.Seq(plain) if len(plain) > 1 else plain[0]
        else:
            temps = [L.Buffer(f"new{k}", v.dtype, "local", -1, L.Const(1, L.INDEX))
                     for k, v in enumerate(values)]
            zero = L.Const(0, L.INDEX)
            body = L.Seq([L.Store(t, zero, e) for t, e in zip(temps, values)]
                         + [L.Store(buf, flat, L.Load(t, zero)) for t, (buf, _) in zip(temps, stores)])
            for t in temps:
                body = L.Allocate(t, body)
        return L.Kernel(name, L.nest([(var, self.ctx.dim(d)) for var, d in zip(idx, shape)], body))

    def assign_kernels(self) -> list[L.Kernel]:
        """One kernel per target shape; a kernel that overwrites a value other
        kernels read runs after them."""
        groups: dict[tuple, list[tuple[L.Buffer, Accessor]]] = defaultdict(list)
        for target, v in self.fn.assigns:
            groups[target.type.shape].append((self.buffers[id(target)], self.access(v)))
        kernels = {shape: self.store_kernel(f"update_{len(self.kernels) + i}", shape, stores)
                   for i, (shape, stores) in enumerate(groups.items())}
        reads = {shape: set(L.buffers_of(k.body)) for shape, k in kernels.items()}
        writes = {shape: {buf for buf, _ in stores} for shape, stores in groups.items()}
        ordered, pending = [], list(kernels)
        while pending:
            ready = [s for s in pending
                     if not any(writes[s] & reads[o] for o in pending if o != s)]
            if not ready:
                raise InternalError("lower", f"{self.fn.name}: updates read each other's targets")
            ordered.append(ready[0])
            pending.remove(ready[0])
        return [kernels[s] for s in ordered]

