"""Renderer: loop IR -> LLVM IR text with llvmlite.ir (opaque pointers).

The module holds one internal function per kernel, taking its buffers as
`noalias` pointers (distinct buffers never overlap: memory planning
guarantees it for workspace slots), an entry function and a workspace-size
function per entry point, and the descriptor the runtime reads
(runtime/include/dlc/program.h).

What LLVM's O3 spends its time on is steered here (compile time): loops the
loop passes already unrolled or vectorized carry metadata turning LLVM's own
unrolling and vectorization off, and cold kernels (`cold_kernels`) are optnone.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

from llvmlite import ir

from ..errors import InternalError
from ..ir import loops as L
from ..ir.structure import Structure
from ..passes.loop_memory import layout

ABI_VERSION = 4
PTR = ir.PointerType()
I32, I64 = ir.IntType(32), ir.IntType(64)
TYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i32": I32, L.INDEX: I64,
         "bool": ir.IntType(1)}
DTYPE_CODE = {"f32": 0, "f64": 1, "i32": 2}
ROLE_CODE = {"param": 0, "state": 1, "input": 2, "output": 3}
INIT_CODE = {"zeros": 0, "ones": 1, "uniform": 2, "normal": 3, "constant": 4}
ENTRY_CODE = {"infer": 0, "train": 1, "grads": 2}
# contract allows FMA. No nnan/ninf: NaN must flow through. reassoc only on
# a reduction's accumulating add (ACCUMULATE), which LLVM needs to vectorize
# the reduction: on every add it had let LLVM cancel x - x to 0 (NaN and inf
# in x lost; a fuzzer finding).
FAST = ["contract", "nsz"]
ACCUMULATE = ["reassoc", *FAST]
FCMP = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}
ALIGN = 64
# Loads of a larger stride in a vectorized loop are gathered lane by lane.
MAX_SHUFFLED_STRIDE = 4


class ExprEmitter:
    """Emits loop-IR expressions at a builder's position.

    Inside a vectorized loop (`lanes` = (var, W)) an expression that uses the
    loop's variable becomes a W-lane vector: loads with stride 1 in it are
    vector loads, with stride k up to MAX_SHUFFLED_STRIDE k vector loads and
    shuffles, other loads are gathered lane by lane, and operands that do
    not use it stay scalar until combined with a vector (then splatted).
    In a loop of min(W, n) lanes, `mask` holds the active ones: loads and
    stores of stride 1 outside local buffers are masked (locals are whole)."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder, syms_ptr, sym_vars: list[L.Var]):
        self.module, self.b = module, builder
        self.values: dict[L.Var, ir.Value] = {}
        for k, v in enumerate(sym_vars):
            p = builder.gep(syms_ptr, [I64(k)], source_etype=I64)
            self.values[v] = builder.load(p, typ=I64, name=v.name)
        self.pointers: dict[L.Buffer, ir.Value] = {}
        self.lanes: tuple[L.Var, int] | None = None
        self.mask: ir.Value | None = None
        # Index arithmetic already emitted in the current basic block, by
        # structure: unrolled micro-kernels repeat the same index terms.
        self.index_cache: dict[tuple, ir.Value] = {}
        self.cache_block = None
        # fold's memos of what is asked of nodes in a vectorized loop, by its
        # variable (an unrolled loop renders the same vectorized loop again):
        # whether they vary, their stride, their value at lane 0.
        self.lane_memos: dict[L.Var, tuple[dict, dict, dict]] = {}
        self.vary_cache, self.stride_cache, self.first_cache = {}, {}, {}

    def intrinsic(self, name: str, t: ir.Type, n: int = 1) -> ir.Function:
        if isinstance(t, ir.VectorType):
            suffix = f"v{t.count}{_SUFFIX[_dtype_of(t.element)]}"
        else:
            suffix = _SUFFIX[_dtype_of(t)]
        full = f"llvm.{name}.{suffix}"
        fn = self.module.globals.get(full)
        return fn or ir.Function(self.module, ir.FunctionType(t, [t] * n), name=full)

    def address(self, buf: L.Buffer, index: L.Expr) -> ir.Value:
        p = self.b.gep(self.pointers[buf], [self.emit(index)], inbounds=True,
                       source_etype=TYPES[buf.dtype])
        p.type = PTR  # opaque, so vectors load and store through it too
        return p

    def varies(self, e: L.Expr) -> bool:
        """e differs between the lanes of the enclosing vectorized loop."""
        if self.lanes is None:
            return False
        # From the children's answers, each cached: emit asks of every node.
        return L.fold(e, lambda x, kids: x is self.lanes[0] or any(kids), memo=self.vary_cache)

    def lane_stride(self, index: L.Expr) -> int | None:
        """index's stride along the enclosing vectorized loop (L.stride_of)."""
        return L.stride_of(index, self.lanes[0], self.stride_cache)

    def first_lane(self, index: L.Expr) -> L.Expr:
        """index at lane 0 of the enclosing vectorized loop."""
        return L.substitute(index, {self.lanes[0]: L.Const(0, L.INDEX)}, self.first_cache)

    def splat(self, v: ir.Value) -> ir.Value:
        if self.lanes is None or isinstance(v.type, ir.VectorType):
            return v
        return self.splat_to(v, self.lanes[1])

    def splat_to(self, v: ir.Value, w: int) -> ir.Value:
        if isinstance(v, ir.Constant):
            return _splat_constant(v.type, v.constant, w)
        one = self.b.insert_element(_vector_constant(v.type, w, None), v, I32(0))
        return self.b.shuffle_vector(one, one, _vector_constant(I32, w, 0))

    def matched(self, *values: ir.Value) -> list[ir.Value]:
        """values, all splatted to vectors if any of them is one."""
        if any(isinstance(v.type, ir.VectorType) for v in values):
            return [self.splat(v) for v in values]
        return list(values)

    def per_lane(self, f) -> ir.Value:
        """A vector whose lane l is f() emitted with the lane variable = l."""
        var, w = self.lanes
        if self.mask is not None:
            raise InternalError("render", "a strided access in a masked vectorized loop")
        out = None
        self.lanes = None
        try:
            for lane in range(w):
                self.values[var] = I64(lane)
                v = f()
                if out is None:
                    out = _vector_constant(v.type, w, None)
                out = self.b.insert_element(out, v, I32(lane))
        finally:
            self.lanes = (var, w)
            self.values[var] = _lane_ids(w)
        return out

    def emit(self, e: L.Expr, memo: dict | None = None) -> ir.Value:
        """e's value here: operands first (L.fold: each node once, however
        deep), except a load's index, which the load emits. `memo`: the
        values of nodes emitted before, still valid here (see fold)."""
        return L.fold(e, self.emit_node, _operands, memo)

    def emit_node(self, e: L.Expr, args: list[ir.Value]) -> ir.Value:
        """e's value from its operands' values. Index arithmetic (and its
        comparisons) already emitted in this basic block is reused (unrolled
        micro-kernels repeat the same index terms): the same operation on the
        same values."""
        if isinstance(e, (L.Bin, L.Call)) and e.dtype == L.INDEX or \
                isinstance(e, L.Bin) and e.op in L.COMPARISONS and e.a.dtype == L.INDEX:
            if self.cache_block is not self.b.block:
                self.index_cache, self.cache_block = {}, self.b.block
            key = (type(e), e.op if isinstance(e, L.Bin) else e.fn, *map(_cache_key, args))
            v = self.index_cache.get(key)
            if v is None:
                v = self.index_cache[key] = self.emit_uncached(e, args)
                self.cache_block = self.b.block
            return v
        return self.emit_uncached(e, args)

    def emit_uncached(self, e: L.Expr, args: list[ir.Value]) -> ir.Value:
        b = self.b
        if isinstance(e, L.Const):
            return TYPES[e.dtype](e.value)
        if isinstance(e, L.Var):
            if e not in self.values:
                raise InternalError("render", f"unbound variable {e.name}")
            return self.values[e]
        if isinstance(e, L.LaneSum):
            v = b.load(self.address(e.buf, e.index), typ=ir.VectorType(TYPES[e.dtype], e.lanes))
            v.align = L.DTYPE_BYTES[e.dtype]
            t = TYPES[e.dtype]
            fn = self.module.globals.get(f"llvm.vector.reduce.fadd.v{e.lanes}{_SUFFIX[e.dtype]}") or \
                ir.Function(self.module, ir.FunctionType(t, [t, v.type]),
                            name=f"llvm.vector.reduce.fadd.v{e.lanes}{_SUFFIX[e.dtype]}")
            return b.call(fn, [t(-0.0), v], fastmath=ACCUMULATE)  # reassoc: a tree of shuffles
        if isinstance(e, L.Load):
            if self.varies(e.index):
                return self.vector_load(e)
            return b.load(self.address(e.buf, e.index), typ=TYPES[e.dtype])
        if isinstance(e, L.Bin):
            return self.binary(e, *args)
        if isinstance(e, L.Call):
            args = self.matched(*args)
            t = args[0].type
            if e.fn == "neg":
                return b.fneg(args[0]) if e.dtype in ("f32", "f64") else b.neg(args[0])
            name = {"abs": "fabs"}.get(e.fn, e.fn)
            return b.call(self.intrinsic(name, t, len(args)), args)
        if isinstance(e, L.Select):
            cond, x, y = args
            if isinstance(cond.type, ir.VectorType):
                cond, x, y = self.matched(cond, x, y)
            else:   # one condition for all lanes: LLVM selects whole vectors
                x, y = self.matched(x, y)
            return b.select(cond, x, y)
        if isinstance(e, L.Cast):
            return self.cast(args[0], e.value.dtype, e.dtype)
        raise InternalError("render", f"cannot render {type(e).__name__}")

    def vector_load(self, e: L.Load) -> ir.Value:
        w = self.lanes[1]
        k = self.lane_stride(e.index)
        if k == 1:
            first = self.first_lane(e.index)
            vt = ir.VectorType(TYPES[e.dtype], w)
            p = self.address(e.buf, first)
            if self.masked(e.buf):
                return self.b.call(self.masked_intrinsic("load", vt), [
                    p, I32(L.DTYPE_BYTES[e.dtype]), self.mask, _Splat(vt, None)])
            v = self.b.load(p, typ=vt)
            v.align = L.DTYPE_BYTES[e.dtype]
            return v
        if k is not None and 2 <= k <= MAX_SHUFFLED_STRIDE and self.mask is None and w > 1:
            # Every k-th element (a stride-2 window, a split by parity, both
            # of a pooling window's columns): k vector loads, the last ending
            # at the last lane's element (none reads past it), joined into
            # one wide vector and the lanes picked from it by a shuffle.
            first = self.first_lane(e.index)
            vt = ir.VectorType(TYPES[e.dtype], w)
            starts = [j * w for j in range(k - 1)] + [(k - 1) * (w - 1)]
            parts = []
            for start in starts:
                part = self.b.load(self.address(e.buf, first + start), typ=vt)
                part.align = L.DTYPE_BYTES[e.dtype]
                parts.append(part)
            pick = []
            for lane in range(w):
                j = min(k * lane // w, k - 1)
                pick.append(j * w + k * lane - starts[j])
            while len(parts) > 1:
                if len(parts) % 2:
                    parts.append(_Splat(parts[0].type, None))
                n = parts[0].type.count
                join = ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n)))
                parts = [self.b.shuffle_vector(parts[i], parts[i + 1], join) for i in range(0, len(parts), 2)]
            wide = parts[0]
            return self.b.shuffle_vector(wide, _Splat(wide.type, None),
                                         ir.Constant(ir.VectorType(I32, w), pick))
        return self.per_lane(lambda: self.b.load(self.address(e.buf, e.index), typ=TYPES[e.dtype]))

    def masked(self, buf: L.Buffer) -> bool:
        return self.mask is not None and buf.kind != "local"

    def masked_intrinsic(self, op: str, vt: ir.VectorType) -> ir.Function:
        name = f"llvm.masked.{op}.v{vt.count}{_SUFFIX[_dtype_of(vt.element)]}.p0"
        mask_t = ir.VectorType(ir.IntType(1), vt.count)
        ft = ir.FunctionType(vt, [PTR, I32, mask_t, vt]) if op == "load" else \
            ir.FunctionType(ir.VoidType(), [vt, PTR, I32, mask_t])
        return self.module.globals.get(name) or ir.Function(self.module, ft, name=name)

    def binary(self, e: L.Bin, a: ir.Value, c: ir.Value) -> ir.Value:
        """e from its operands' values a and c."""
        b = self.b
        x, y = self.matched(a, c)
        dt = e.a.dtype
        is_float = dt in ("f32", "f64")
        if e.op == "and":
            return b.and_(x, y)
        if e.op in L.COMPARISONS:
            if not is_float:
                return b.icmp_signed(e.op, x, y)
            # C's: false with a NaN operand, except != (une), so x != x finds NaNs.
            return b.fcmp_unordered("!=", x, y) if e.op == "!=" else b.fcmp_ordered(FCMP[e.op], x, y)
        if e.op in ("min", "max"):
            if not is_float:
                return b.call(self.intrinsic("s" + e.op, x.type, 2), [x, y])
            # NaN-propagating (loops.Bin). With nsz, x86 needs one vmaxps where
            # an operand is a constant (relu), else vmaxps and a NaN blend, as
            # llvm.maxnum did; NVPTX has max.NaN.
            name = "minimum" if e.op == "min" else "maximum"
            return b.call(self.intrinsic(name, x.type, 2), [x, y], fastmath=["nsz"])
        # acc + term, acc a local accumulator (loop_reductions, loop_tile)
        accumulates = e.op == "+" and isinstance(e.a, L.Load) and e.a.buf.kind == "local"
        return self.arith(e.op, x, y, dt, accumulates)

    def arith(self, op: str, x: ir.Value, y: ir.Value, dtype: str, accumulates: bool = False) -> ir.Value:
        b = self.b
        if dtype in ("f32", "f64"):
            inst = {"+": b.fadd, "-": b.fsub, "*": b.fmul, "/": b.fdiv}[op](x, y)
            inst.flags.extend(ACCUMULATE if accumulates else FAST)
            return inst
        if isinstance(x, ir.Constant) and isinstance(y, ir.Constant) and isinstance(x.type, ir.IntType) \
                and op in "+-*/":
            return _fold(op, x, y)  # unrolled loops make many index terms constant
        return {"+": b.add, "-": b.sub, "*": b.mul, "/": b.sdiv, "xor": b.xor, "shl": b.shl,
                "shr": b.lshr}[op](x, y)

    def cast(self, v: ir.Value, src: str, dst: str) -> ir.Value:
        b, t = self.b, TYPES[dst]
        if isinstance(v.type, ir.VectorType):
            t = ir.VectorType(t, v.type.count)
        fs, fd = src in ("f32", "f64"), dst in ("f32", "f64")
        if src == dst:
            return v
        if fs and fd:
            return b.fpext(v, t) if dst == "f64" else b.fptrunc(v, t)
        if fs:
            return b.fptosi(v, t)
        if fd:
            return b.sitofp(v, t)
        wider = TYPES[dst].width > TYPES[src].width
        return b.sext(v, t) if wider else b.trunc(v, t)


def _fold(op: str, x: ir.Constant, y: ir.Constant) -> ir.Value:
    a, c = x.constant, y.constant
    if op == "/":
        if c == 0:
            return ir.Constant(x.type, ir.Undefined)
        return ir.Constant(x.type, L.trunc_div(a, c))
    return ir.Constant(x.type, {"+": a + c, "-": a - c, "*": a * c}[op])


_SUFFIX = {"f32": "f32", "f64": "f64", "i64": "i64", "i32": "i32"}


def _cache_key(v: ir.Value):
    """v in a key of ExprEmitter.index_cache: an index constant as its
    number (index arithmetic has one type), anything else as itself:
    llvmlite hashes a constant by printing it, and unrolled loops make a
    new constant per index term (a twentieth of the renderer's time)."""
    return v.constant if type(v) is ir.Constant and type(v.constant) is int else v


def _operands(e: L.Expr) -> tuple[L.Expr, ...]:
    """What ExprEmitter.emit emits before e: its children, but for a load."""
    return () if isinstance(e, L.Load) else L.children(e)


# Vector constants, made once: an unrolled micro-kernel splats the same few
# constants into every statement (llvmlite checks each element as it makes one).
@functools.cache
def _lane_ids(w: int) -> ir.Constant:
    return ir.Constant(ir.VectorType(I64, w), list(range(w)))


class _Splat(ir.Constant):
    """A vector constant with every lane one value, in LLVM's short forms,
    zeroinitializer or splat (t v): written out lane by lane, the vector
    constants of unrolled kernels were a sixth of a program's IR text."""

    def __init__(self, typ: ir.VectorType, value):
        super().__init__(typ, None)
        self.lane = None if value is None else ir.Constant(typ.element, value)

    def _get_reference(self) -> str:
        return "zeroinitializer" if self.lane is None else f"splat ({self.lane})"


@functools.cache
def _vector_constant(t: ir.Type, w: int, value) -> ir.Constant:
    """<w x t> with every lane `value`; None: zeroinitializer."""
    return _Splat(ir.VectorType(t, w), value)


def _splat_constant(t: ir.Type, value, w: int) -> ir.Constant:
    zero = isinstance(value, (int, float)) and value == 0 and math.copysign(1, value) > 0   # not -0.0
    return _vector_constant(t, w, None if zero else value)


def _dtype_of(t: ir.Type) -> str:
    for k, v in TYPES.items():
        if v == t:
            return k
    raise InternalError("render", f"no dtype for {t}")


class StmtEmitter(ExprEmitter):
    """Emits statements. `host` is the kernel's dlc_host pointer (parallel
    loops call its parallel_for), or None to run parallel loops serially."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder, syms_ptr, sym_vars: list[L.Var],
                 host: ir.Value | None = None):
        super().__init__(module, builder, syms_ptr, sym_vars)
        self.host = host
        self.cold = False   # functions made for the kernel are not optimized (Renderer.kernel)

    def emit_stmt(self, s: L.Stmt) -> None:
        b = self.b
        if isinstance(s, L.Seq):
            stores = L.plain_stores(s) if self.lanes is not None else None
            if stores and L.interleaved_pair(stores, self.lanes[0]):
                self.store_pair(stores)
                return
            for x in s.body:
                self.emit_stmt(x)
        elif isinstance(s, L.Store):
            self.store(s)
        elif isinstance(s, L.Allocate):
            # A chain as long as an update kernel's list of new values (lower.store_kernel).
            while isinstance(s, L.Allocate):
                self.pointers[s.buf] = self.alloca(s.buf)
                s = s.body
            self.emit_stmt(s)
        elif isinstance(s, L.If):
            with b.if_then(self.emit(s.cond)):
                self.emit_stmt(s.then)
        elif isinstance(s, L.For):
            # Kinds without a method of their own (serial; a target's own kinds)
            # go to `loop`, which a target's emitter may extend.
            {"unrolled": self.unrolled_loop, "vectorized": self.vectorized_loop,
             "parallel": self.parallel_loop}.get(s.kind, self.loop)(s)
        else:
            raise InternalError("render", f"cannot render {type(s).__name__}")

    def mark(self, fn: ir.Function) -> None:
        """The attributes of a function holding (part of) this kernel."""
        fn.attributes.add("noinline")
        if self.cold:
            fn.attributes.add("optnone")

    def alloca(self, buf: L.Buffer) -> ir.Value:
        """Local storage in the function's entry block, where LLVM promotes
        small arrays (register-blocked accumulators) to registers."""
        if not isinstance(buf.size, L.Const):
            raise InternalError("render", f"local {buf.name} has a non-constant size")
        return self.entry_alloca(TYPES[buf.dtype], I64(buf.size.value), buf.name)

    def entry_alloca(self, t: ir.Type, size: ir.Value | None = None, name: str = "") -> ir.Value:
        """An alloca in the entry block (an opaque pointer, like buffers)."""
        entry = self.b.function.entry_basic_block
        ab = self.b
        if ab.block is not entry:
            # Another builder: inserting before this builder's position in its
            # own block would shift the instruction index it keeps.
            ab = ir.IRBuilder(entry)
            ab.position_at_start(entry)
        p = ab.alloca(t, size=size, name=name)
        p.align = ALIGN
        p.type = PTR
        return p

    def store(self, s: L.Store) -> None:
        b = self.b
        t = TYPES[s.buf.dtype]
        if self.varies(s.index):
            if self.lane_stride(s.index) != 1:
                self.scatter(s)
                return
            v = self.splat(self.emit(s.value))
            first = self.first_lane(s.index)
            if s.accumulate:
                v = self.arith("+", self.vector_load(L.Load(s.buf, s.index)), v, s.buf.dtype, True)
            p = self.address(s.buf, first)
            align = L.DTYPE_BYTES[s.buf.dtype]
            if self.masked(s.buf):
                b.call(self.masked_intrinsic("store", v.type), [v, p, I32(align), self.mask])
            else:
                b.store(v, p).align = align
            return
        v = self.emit(s.value)
        if isinstance(v.type, ir.VectorType):  # one address for every lane: the last lane wins
            v = b.extract_element(v, I32(v.type.count - 1))
        p = self.address(s.buf, s.index)
        if s.accumulate:
            v = self.arith("+", b.load(p, typ=t), v, s.buf.dtype, True)
        b.store(v, p)

    def store_pair(self, stores: list[L.Store]) -> None:
        """An interleaved pair (L.interleaved_pair) as one vector of 2W lanes,
        lane 2l from the first store's value at lane l, 2l + 1 the second's."""
        w = self.lanes[1]
        b = self.b
        values = [self.splat(self.emit(st.value)) for st in stores]
        zip_ = ir.Constant(ir.VectorType(I32, 2 * w), [j // 2 + (j % 2) * w for j in range(2 * w)])
        both = b.shuffle_vector(values[0], values[1], zip_)
        first = self.first_lane(stores[0].index)
        p = self.address(stores[0].buf, first)
        align = L.DTYPE_BYTES[stores[0].buf.dtype]
        if self.masked(stores[0].buf):
            mask = b.shuffle_vector(self.mask, self.mask, zip_)
            b.call(self.masked_intrinsic("store", both.type), [both, p, I32(align), mask])
        else:
            b.store(both, p).align = align

    def scatter(self, s: L.Store) -> None:
        var, w = self.lanes
        if self.mask is not None:
            raise InternalError("render", "a strided store in a masked vectorized loop")
        self.lanes = None
        try:
            for lane in range(w):
                self.values[var] = I64(lane)
                self.store(s)
        finally:
            self.lanes = (var, w)
            self.values[var] = _lane_ids(w)

    def unrolled_loop(self, s: L.For) -> None:
        for k in range(s.extent.value):
            self.values[s.var] = I64(k)
            self.emit_stmt(s.body)

    def vectorized_loop(self, s: L.For) -> None:
        w, active = L.vector_lanes(s.extent)
        if self.lanes is not None:
            raise InternalError("render", f"vectorized loop {s.var.name} inside another")
        if active is not None:
            n = self.emit(active)
            self.mask = self.b.icmp_signed("<", _lane_ids(w), self.splat_to(n, w))
        self.lanes = (s.var, w)
        self.values[s.var] = _lane_ids(w)
        self.vary_cache, self.stride_cache, self.first_cache = self.lane_memos.setdefault(s.var, ({}, {}, {}))
        try:
            self.emit_stmt(s.body)
        finally:
            self.lanes, self.mask = None, None

    def loop(self, s: L.For, start: ir.Value | None = None, end: ir.Value | None = None) -> None:
        """A serial loop over [start, end) (default [0, extent))."""
        b = self.b
        n = self.emit(s.extent) if end is None else end
        pre = b.block
        header = b.append_basic_block(f"{s.var.name}.header")
        body = b.append_basic_block(f"{s.var.name}.body")
        exit_ = b.append_basic_block(f"{s.var.name}.exit")
        b.branch(header)
        b.position_at_end(header)
        i = b.phi(I64, name=s.var.name)
        i.add_incoming(I64(0) if start is None else start, pre)
        b.cbranch(b.icmp_signed("<", i, n), body, exit_)
        b.position_at_end(body)
        self.values[s.var] = i
        self.emit_stmt(s.body)
        nxt = b.add(i, I64(1), flags=["nuw", "nsw"])
        i.add_incoming(nxt, b.block)
        latch = b.branch(header)
        if any(isinstance(x, L.For) and x.kind in ("unrolled", "vectorized") for x in L.stmts_of(s.body)):
            # The loop passes already unrolled and vectorized this loop's body
            # (a register-blocked micro-kernel, a vectorized row): LLVM's
            # runtime unrolling of it would multiply the code (and the compile
            # time) for nothing.
            latch.set_metadata("llvm.loop", self.loop_id(unroll=False, vectorize=False))
        elif any(isinstance(x, L.Load) and L.stride_of(x.index, s.var) not in (0, 1)
                 for e in L.exprs_of(s.body) for x in L.subexprs(e)):
            # Strided reads (a reduction down a column): LLVM would vectorize
            # them into gathers, much code that is no faster.
            latch.set_metadata("llvm.loop", self.loop_id(vectorize=False))
        b.position_at_end(exit_)

    def loop_id(self, unroll: bool = True, vectorize: bool = True) -> ir.Value:
        """A fresh loop ID turning LLVM's unrolling and/or vectorization off."""
        m = self.module
        props = [m.add_metadata([ir.MetaDataString(m, "llvm.loop.unroll.disable")])] * (not unroll)
        props += [m.add_metadata([ir.MetaDataString(m, "llvm.loop.vectorize.enable"),
                                  ir.IntType(1)(0)])] * (not vectorize)
        return _LoopID(m, props)

    def parallel_loop(self, s: L.For) -> None:
        """Outlines the body into `void task(closure, begin, end)`; the
        closure holds the buffers and the values of the variables the body
        uses. Runs it through host->parallel_for, or directly without one."""
        b = self.b
        free = [v for v in dict.fromkeys(x for e in L.exprs_of(s.body) for x in L.subexprs(e)
                                         if isinstance(x, L.Var))
                if v in self.values and v is not s.var]
        bufs = [buf for buf in dict.fromkeys(L.buffers_of(s.body)) if buf.kind != "local"]
        # An array of each, not a field per value: a literal struct's type is
        # printed in every access, and an update kernel's loop may use a
        # buffer per parameter of the program.
        closure_t = ir.LiteralStructType([ir.ArrayType(PTR, len(bufs)), ir.ArrayType(I64, len(free))])
        at = lambda bb, p, part, k: bb.gep(p, [I32(0), I32(part), I32(k)], source_etype=closure_t)
        fn = b.function
        name = self.module.get_unique_name(f"{fn.name}.{s.var.name}")
        self.module.scope.register(name)   # a kernel may hold several loops over `p`
        # The body gets its buffers as noalias arguments (kept as scoped
        # metadata when LLVM inlines it into the task), like a kernel.
        body = ir.Function(self.module, ir.FunctionType(
            ir.VoidType(), [PTR] * len(bufs) + [I64] * (len(free) + 2)), name=f"{name}.body")
        body.linkage = "internal"
        self.mark(body)
        bb = ir.IRBuilder(body.append_basic_block("entry"))
        inner = type(self)(self.module, bb, None, [], None)
        inner.cold = self.cold
        for buf, arg in zip(bufs, body.args):
            arg.add_attribute("noalias")
            inner.pointers[buf] = arg
        for v, arg in zip(free, body.args[len(bufs):]):
            inner.values[v] = arg
        inner.loop(L.For(s.var, s.extent, s.body), body.args[-2], body.args[-1])
        bb.ret_void()

        task = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR, I64, I64]),
                           name=f"{name}.task")
        task.linkage = "internal"
        self.mark(task)
        tb = ir.IRBuilder(task.append_basic_block("entry"))
        closure_arg, begin, end = task.args
        fields = [tb.load(at(tb, closure_arg, part, k), typ=t)
                  for part, (n, t) in enumerate(((len(bufs), PTR), (len(free), I64))) for k in range(n)]
        tb.call(body, fields + [begin, end])
        tb.ret_void()

        closure = self.entry_alloca(closure_t, name="closure")
        for k, buf in enumerate(bufs):
            b.store(self.pointers[buf], at(b, closure, 0, k))
        for k, v in enumerate(free):
            b.store(self.values[v], at(b, closure, 1, k))
        n = self.emit(s.extent)
        if self.host is None:
            b.call(task, [closure, I64(0), n])
            return
        host_t = ir.LiteralStructType([PTR, PTR])
        # A NULL host (an embedding caller running serially) reads as one
        # without parallel_for.
        serial_host = self.module.globals.get("dlc.serial_host")
        if serial_host is None:
            serial_host = ir.GlobalVariable(self.module, host_t, name="dlc.serial_host")
            serial_host.initializer = ir.Constant(host_t, [ir.Constant(PTR, None)] * 2)
            serial_host.global_constant, serial_host.linkage = True, "private"
        host = b.select(b.icmp_unsigned("==", self.host, ir.Constant(PTR, None)), serial_host, self.host)
        # Typed as a function pointer so that llvmlite can call through it.
        pf_t = ir.FunctionType(ir.VoidType(), [PTR, I64, I64, PTR, PTR]).as_pointer()
        pf = b.load(b.gep(host, [I32(0), I32(1)], source_etype=host_t), typ=pf_t)
        with b.if_else(b.icmp_unsigned("==", pf, ir.Constant(pf_t, None))) as (serial, threaded):
            with serial:
                b.call(task, [closure, I64(0), n])
            with threaded:
                pool = b.load(b.gep(host, [I32(0), I32(0)], source_etype=host_t), typ=PTR)
                grain = I64(1) if s.grain is None else self.emit(s.grain)
                b.call(pf, [pool, n, grain, task, closure])


class _LoopID(ir.values.MDValue):
    """A distinct, self-referential loop ID node: !N = distinct !{!N, props...}."""

    def __init__(self, module: ir.Module, props):
        super().__init__(module, props, name=str(len(module.metadata)))

    def descr(self, buf):
        buf += ("distinct !{{ {0} }}".format(", ".join([self.get_reference()] + [
            p.get_reference() for p in self.operands])), "\n")

    __hash__ = object.__hash__
    __eq__ = object.__eq__


def _unoptimized(fn: ir.Function) -> None:
    """fn is compiled without optimization: entry and workspace functions
    are a block of address arithmetic and calls that grows with the program,
    run once per call, and LLVM's instruction selection takes time
    superlinear in a block's size (a 2,000-layer chain: 2 minutes, against
    seconds with optnone's fast selector)."""
    fn.attributes.add("noinline")
    fn.attributes.add("optnone")


def _global_buffers(s: L.Stmt) -> list[L.Buffer]:
    seen: dict[L.Buffer, None] = {}
    for buf in L.buffers_of(s):
        if buf.kind != "local":
            seen.setdefault(buf)
    return list(seen)


# Kernels cheap outright and next to their entry (loss terms and bias-sized
# updates: work units at a batch of NOMINAL_SIZE, as loop_parallel counts
# them) are left unoptimized by LLVM (optnone): their run time is noise, while
# O3 costs tens of milliseconds of compile time for each.
COLD_COST, COLD_SHARE, NOMINAL_SIZE = 16384, 1000, 64


def cold_kernels(entry: L.LoopEntry, syms: list[L.Var],
                 cost_of: Callable[[L.Stmt, list[L.Var]], int | None] | None = None) -> set[int]:
    """The ids of the entry's cold kernels (see COLD_COST). `cost_of`: a
    body's work units at NOMINAL_SIZE (nominal_cost), where a caller knows
    them."""
    costs = {id(k): (cost_of or nominal_cost)(k.body, syms) for k in entry.kernels}
    total = sum(c for c in costs.values() if c is not None)
    return {k for k, c in costs.items() if c is not None and c < COLD_COST and c * COLD_SHARE < total}


def nominal_cost(body: L.Stmt, syms: list[L.Var]) -> int | None:
    """A kernel body's work units with every symbol NOMINAL_SIZE."""
    from ..passes.loop_parallel import cost
    return L.evaluate(cost(body), {v.name: NOMINAL_SIZE for v in syms})


class Renderer:
    def __init__(self, prog: L.LoopProgram, entries, name: str, sink: Callable[[str], None] | None = None,
                 copies: dict | None = None):
        self.prog, self.entries = prog, entries
        # Kernel bodies that are others' on other buffers (kernel_sharing.
        # unshare), by id (a Copy holds its body: the ids stay theirs): they
        # call the other's function. Given them, the other kernels are of
        # different structures; else (no per-kernel passes ran) equal
        # structures are found here (Structure).
        self.shared = copies is not None
        self.copies = copies or {}
        self.costs: dict[int, int | None] = {}   # nominal_cost, by id of the body
        self.module = ir.Module(name=name)
        self.kernel_modules: list[ir.Module] = []
        # Hears of each kernel module's text as soon as the module is done
        # (compiler.Build.add: LLVM starts on it while the others are made).
        self.sink = sink
        self.texts: dict[int, str] = {}   # id(kernel module) -> its text, once made
        self.strings: dict[str, ir.GlobalVariable] = {}
        # By structure (by id of the body when `shared`): the function and
        # the buffers of the kernel it was made for.
        self.kernel_fns: dict[int, tuple[ir.Function, list[L.Buffer]]] = {}
        self.shapes: dict[tuple, int] = {}      # Structure's table
        self.entry: L.LoopEntry | None = None   # the entry being rendered
        self.cold: dict[int, set[int]] = {}     # cold kernels by entry

    def render(self) -> list[ir.Module]:
        """The program's modules: the first holds the descriptor and entry
        functions, each other one a kernel (so the compiler can optimize
        them in parallel)."""
        descs = []
        for entry, slots in zip(self.prog.entries, self.entries):
            self.entry = entry
            kernels = [self.kernel(".".join(filter(None, (entry.name, k.name, k.layer))), k)
                       for k in entry.kernels]
            offsets, size = layout(entry)
            run = self.entry_function(entry, kernels, offsets)
            ws = self.workspace_function(entry, size)
            descs.append((slots, run, ws))
        self.descriptor(descs)
        return [self.module, *self.kernel_modules]

    # -- kernels
    def kernel(self, name: str, k: L.Kernel) -> tuple[ir.Function, list[L.Buffer]]:
        """A function (buffers..., syms, host) in a module of its own, and
        its declaration in the main module. Kernels that differ only in their
        buffers (a model's forward pass inside its train and grads entries)
        share one function."""
        copy = self.copies.get(id(k.body))
        if copy is not None and id(copy.of) in self.kernel_fns:
            fn, bufs = self.kernel_fns[id(copy.of)]
            return fn, [copy.buffers.get(b, b) for b in bufs]
        bufs = _global_buffers(k.body)
        key = id(k.body) if self.shared else Structure(set(self.prog.syms), self.shapes).stmt(k.body)
        if key in self.kernel_fns:
            return self.kernel_fns[key][0], bufs
        module = ir.Module(name=f"{self.module.name}.{name}")
        self.kernel_modules.append(module)
        ftype = ir.FunctionType(ir.VoidType(), [PTR] * (len(bufs) + 2))
        fn = ir.Function(module, ftype, name=f"dlc.kernel.{name}")
        declared = ir.Function(self.module, ftype, name=fn.name)
        # llvmlite writes the linkage where LLVM also reads a visibility:
        # external but hidden, so the shared library does not export kernels
        # (compiled as one module, they become internal: objects.load).
        fn.linkage = declared.linkage = "hidden"
        for a in fn.args[:-2]:
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = StmtEmitter(module, b, fn.args[-2], self.prog.syms, host=fn.args[-1])
        # A kernel is a loop nest called once per run: inlining it into the
        # entry saves nothing and makes O3 several times slower on big programs.
        if id(self.entry) not in self.cold:
            self.cold[id(self.entry)] = cold_kernels(self.entry, self.prog.syms, self.nominal_cost)
        em.cold = id(k) in self.cold[id(self.entry)]
        em.mark(fn)
        for buf, arg in zip(bufs, fn.args):
            em.pointers[buf] = arg
        em.emit_stmt(k.body)
        b.ret_void()
        if self.sink is not None:
            self.texts[id(module)] = str(module)
            self.sink(self.texts[id(module)])
        self.kernel_fns[key] = declared, bufs
        return declared, bufs

    def nominal_cost(self, body: L.Stmt, syms: list[L.Var]) -> int | None:
        """nominal_cost, once for a body and its copies."""
        copy = self.copies.get(id(body))
        of = body if copy is None else copy.of
        if id(of) not in self.costs:
            self.costs[id(of)] = nominal_cost(of, syms)
        return self.costs[id(of)]

    def entry_function(self, entry: L.LoopEntry, kernels, offsets: list[L.Expr]) -> ir.Function:
        """Runs the kernels on the tensors and on workspace buffers at
        `offsets` (bytes, by buffer index: loop_memory.layout)."""
        fn = ir.Function(self.module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR]),
                         name=f"dlc.entry.{entry.name}")
        fn.linkage = "internal"
        _unoptimized(fn)
        tensors, syms, ws, host = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = ExprEmitter(self.module, b, syms, self.prog.syms)
        # The offsets are sums over the buffers before each: emitted as a DAG.
        # Each is stored as it is computed and loaded by the calls that use
        # it: thousands of values live across the calls would make register
        # allocation superlinear.
        table_t = ir.ArrayType(I64, len(offsets))
        table = b.alloca(table_t, name="offsets")
        slot = lambda i: b.gep(table, [I32(0), I32(i)], source_etype=table_t, inbounds=True)
        table.type = PTR  # opaque, as buffers are
        memo: dict = {}
        for i, at in enumerate(offsets):
            b.store(em.emit(at, memo), slot(i))
        status = I32(0)
        for kfn, bufs in kernels:
            args = []
            for buf in bufs:
                if buf.kind == "tensor":
                    p = b.gep(tensors, [I64(buf.index)], source_etype=PTR)
                    args.append(b.load(p, typ=PTR))
                else:
                    args.append(b.gep(ws, [b.load(slot(buf.index), typ=I64)], source_etype=ir.IntType(8)))
            status = b.or_(status, self.call_kernel(em, fn, kfn, args))
        b.ret(status)
        return fn

    def call_kernel(self, em: ExprEmitter, entry_fn: ir.Function, kernel, args: list) -> ir.Value:
        """Runs a kernel from an entry function; returns its i32 status (the
        CUDA target launches instead of calling)."""
        em.b.call(kernel, args + [entry_fn.args[1], entry_fn.args[3]])  # syms, host
        return I32(0)

    def workspace_function(self, entry: L.LoopEntry, size: L.Expr) -> ir.Function:
        """Returns the workspace's `size` (bytes: loop_memory.layout)."""
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR]), name=f"dlc.workspace.{entry.name}")
        fn.linkage = "internal"
        _unoptimized(fn)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = ExprEmitter(self.module, b, fn.args[0], self.prog.syms)
        b.ret(em.emit(size))
        return fn

    # -- descriptor (layout of program.h's structs)
    def string(self, s: str) -> ir.GlobalVariable:
        if s not in self.strings:
            data = bytearray(s.encode() + b"\0")
            at = ir.ArrayType(ir.IntType(8), len(data))
            g = ir.GlobalVariable(self.module, at, name=f"dlc.str.{len(self.strings)}")
            g.initializer = ir.Constant(at, data)
            g.global_constant, g.linkage = True, "private"
            self.strings[s] = g
        return self.strings[s]

    def array(self, name: str, t: ir.Type, items: list) -> ir.Value:
        if not items:
            return ir.Constant(PTR, None)
        at = ir.ArrayType(t, len(items))
        g = ir.GlobalVariable(self.module, at, name=name)
        g.initializer = ir.Constant(at, items)
        g.global_constant, g.linkage = True, "private"
        return g

    def descriptor(self, entries) -> None:
        sym_index = {v.name: k for k, v in enumerate(self.prog.syms)}
        tensor_t = ir.LiteralStructType([PTR, I32, I32, I32, I32, PTR, ir.DoubleType(), ir.DoubleType(),
                                         I32, I32, I64, I64, I32, I64])
        rows = []
        for k, t in enumerate(self.prog.tensors):
            dims = [I64(d if isinstance(d, int) else -(sym_index[d] + 1)) for d in t.dims]
            init = t.init.kind if t.init else "zeros"
            v = t.valid
            rows.append(ir.Constant(tensor_t, [
                self.string(t.name), I32(ROLE_CODE[t.role]), I32(DTYPE_CODE[t.dtype]),
                I32(len(t.dims)), I32(INIT_CODE[init]), self.array(f"dlc.dims.{k}", I64, dims),
                ir.Constant(ir.DoubleType(), t.init.a if t.init else 0.0),
                ir.Constant(ir.DoubleType(), t.init.b if t.init else 0.0),
                # bounded, hi_sym, lo, hi, has_extra, extra (program.h)
                I32(int(v is not None)), I32(sym_index[v.sym] if v and v.sym else -1),
                I64(v.lo if v else 0), I64(v.hi if v else 0),
                I32(int(v is not None and v.extra is not None)),
                I64(v.extra if v and v.extra is not None else 0)]))
        entry_t = ir.LiteralStructType([PTR, I32, I32, PTR, I32, PTR, PTR, PTR])
        erows = []
        for k, (slots, run, ws) in enumerate(entries):
            erows.append(ir.Constant(entry_t, [
                self.string(slots.name), I32(ENTRY_CODE[slots.kind]),
                I32(len(slots.inputs)), self.array(f"dlc.in.{k}", I32, [I32(i) for i in slots.inputs]),
                I32(len(slots.outputs)), self.array(f"dlc.out.{k}", I32, [I32(i) for i in slots.outputs]),
                run, ws]))
        prog_t = ir.LiteralStructType([I32, I32, PTR, I32, PTR, I32, PTR])
        g = ir.GlobalVariable(self.module, prog_t, name="dlc.descriptor")
        g.initializer = ir.Constant(prog_t, [
            I32(ABI_VERSION), I32(len(self.prog.syms)),
            self.array("dlc.syms", PTR, [self.string(v.name) for v in self.prog.syms]),
            I32(len(rows)), self.array("dlc.tensors", tensor_t, rows),
            I32(len(erows)), self.array("dlc.entries", entry_t, erows)])
        g.global_constant, g.linkage = True, "private"
        fn = ir.Function(self.module, ir.FunctionType(PTR, []), name="dlc_program")
        ir.IRBuilder(fn.append_basic_block("entry")).ret(g)


def render(prog: L.LoopProgram, entries, name: str = "dlc", sink: Callable[[str], None] | None = None,
           copies: dict | None = None) -> list[str]:
    """LLVM IR text of the program's modules (Renderer.render; triple and
    layout set by the compiler); `sink` hears of each kernel module's as it
    is made; `copies`: kernel_sharing.unshare's."""
    r = Renderer(prog, entries, name, sink, copies)
    return [r.texts.get(id(m)) or str(m) for m in r.render()]
