"""Renderer: loop IR -> LLVM IR text with llvmlite.ir (opaque pointers).

The module holds one internal function per kernel, taking its buffers as
`noalias` pointers (distinct buffers never overlap: memory planning
guarantees it for workspace slots), an entry function and a workspace-size
function per entry point, and the descriptor the runtime reads
(runtime/include/dlc/program.h).
"""
from __future__ import annotations

from llvmlite import ir

from ..errors import InternalError
from ..ir import loops as L

ABI_VERSION = 2
PTR = ir.PointerType()
I32, I64 = ir.IntType(32), ir.IntType(64)
TYPES = {"f32": ir.FloatType(), "f64": ir.DoubleType(), "i32": I32, L.INDEX: I64,
         "bool": ir.IntType(1)}
DTYPE_CODE = {"f32": 0, "f64": 1, "i32": 2}
ROLE_CODE = {"param": 0, "state": 1, "input": 2, "output": 3}
INIT_CODE = {"zeros": 0, "ones": 1, "uniform": 2, "normal": 3}
ENTRY_CODE = {"infer": 0, "train": 1, "grads": 2}
# reassoc lets LLVM vectorize reductions; contract allows FMA. No nnan/ninf:
# NaN must flow through (an out-of-range label shows as a NaN loss).
FAST = ["reassoc", "contract", "nsz"]
FCMP = {"<": "<", "<=": "<=", ">": ">", ">=": ">=", "==": "==", "!=": "!="}
ALIGN = 64


class ExprEmitter:
    """Emits loop-IR expressions at a builder's position."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder, syms_ptr, sym_vars: list[L.Var]):
        self.module, self.b = module, builder
        self.values: dict[L.Var, ir.Value] = {}
        for k, v in enumerate(sym_vars):
            p = builder.gep(syms_ptr, [I64(k)], source_etype=I64)
            self.values[v] = builder.load(p, typ=I64, name=v.name)
        self.pointers: dict[L.Buffer, ir.Value] = {}

    def intrinsic(self, name: str, t: ir.Type, n: int = 1) -> ir.Function:
        suffix = {"f32": "f32", "f64": "f64", "i64": "i64"}[_dtype_of(t)]
        full = f"llvm.{name}.{suffix}"
        fn = self.module.globals.get(full)
        return fn or ir.Function(self.module, ir.FunctionType(t, [t] * n), name=full)

    def address(self, buf: L.Buffer, index: L.Expr) -> ir.Value:
        return self.b.gep(self.pointers[buf], [self.emit(index)], inbounds=True,
                          source_etype=TYPES[buf.dtype])

    def emit(self, e: L.Expr) -> ir.Value:
        b = self.b
        if isinstance(e, L.Const):
            return TYPES[e.dtype](e.value)
        if isinstance(e, L.Var):
            if e not in self.values:
                raise InternalError("render", f"unbound variable {e.name}")
            return self.values[e]
        if isinstance(e, L.Load):
            return b.load(self.address(e.buf, e.index), typ=TYPES[e.dtype])
        if isinstance(e, L.Bin):
            return self.binary(e)
        if isinstance(e, L.Call):
            args = [self.emit(a) for a in e.args]
            t = TYPES[e.dtype]
            if e.fn == "neg":
                return b.fneg(args[0]) if e.dtype in ("f32", "f64") else b.neg(args[0])
            name = {"abs": "fabs"}.get(e.fn, e.fn)
            return b.call(self.intrinsic(name, t, len(args)), args)
        if isinstance(e, L.Select):
            return b.select(self.emit(e.cond), self.emit(e.a), self.emit(e.b))
        if isinstance(e, L.Cast):
            return self.cast(self.emit(e.value), e.value.dtype, e.dtype)
        raise InternalError("render", f"cannot render {type(e).__name__}")

    def binary(self, e: L.Bin) -> ir.Value:
        b = self.b
        x, y = self.emit(e.a), self.emit(e.b)
        dt = e.a.dtype
        is_float = dt in ("f32", "f64")
        if e.op == "and":
            return b.and_(x, y)
        if e.op in L.COMPARISONS:
            return b.fcmp_ordered(FCMP[e.op], x, y) if is_float else b.icmp_signed(e.op, x, y)
        if e.op in ("min", "max"):
            name = ("minnum" if e.op == "min" else "maxnum") if is_float else \
                   ("smin" if e.op == "min" else "smax")
            return b.call(self.intrinsic(name, TYPES[dt], 2), [x, y])
        return self.arith(e.op, x, y, dt)

    def arith(self, op: str, x: ir.Value, y: ir.Value, dtype: str) -> ir.Value:
        b = self.b
        if dtype in ("f32", "f64"):
            inst = {"+": b.fadd, "-": b.fsub, "*": b.fmul, "/": b.fdiv}[op](x, y)
            inst.flags.extend(FAST)
            return inst
        return {"+": b.add, "-": b.sub, "*": b.mul, "/": b.sdiv, "xor": b.xor, "shl": b.shl,
                "shr": b.lshr}[op](x, y)

    def cast(self, v: ir.Value, src: str, dst: str) -> ir.Value:
        b, t = self.b, TYPES[dst]
        fs, fd = src in ("f32", "f64"), dst in ("f32", "f64")
        if src == dst:
            return v
        if fs and fd:
            return b.fpext(v, t) if dst == "f64" else b.fptrunc(v, t)
        if fs:
            return b.fptosi(v, t)
        if fd:
            return b.sitofp(v, t)
        return b.sext(v, t) if t.width > v.type.width else b.trunc(v, t)


def _dtype_of(t: ir.Type) -> str:
    for k, v in TYPES.items():
        if v == t:
            return k
    raise InternalError("render", f"no dtype for {t}")


class StmtEmitter(ExprEmitter):
    def emit_stmt(self, s: L.Stmt) -> None:
        b = self.b
        if isinstance(s, L.Seq):
            for x in s.body:
                self.emit_stmt(x)
        elif isinstance(s, L.Store):
            v = self.emit(s.value)
            p = self.address(s.buf, s.index)
            if s.accumulate:
                old = b.load(p, typ=TYPES[s.buf.dtype])
                v = self.arith("+", old, v, s.buf.dtype)
            b.store(v, p)
        elif isinstance(s, L.Allocate):
            self.emit_stmt(s.body)  # its alloca was placed in the entry block
        elif isinstance(s, L.If):
            with b.if_then(self.emit(s.cond)):
                self.emit_stmt(s.then)
        elif isinstance(s, L.For):
            self.loop(s)
        else:
            raise InternalError("render", f"cannot render {type(s).__name__}")

    def loop(self, s: L.For) -> None:
        b = self.b
        n = self.emit(s.extent)
        pre = b.block
        header = b.append_basic_block(f"{s.var.name}.header")
        body = b.append_basic_block(f"{s.var.name}.body")
        exit_ = b.append_basic_block(f"{s.var.name}.exit")
        b.branch(header)
        b.position_at_end(header)
        i = b.phi(I64, name=s.var.name)
        i.add_incoming(I64(0), pre)
        b.cbranch(b.icmp_signed("<", i, n), body, exit_)
        b.position_at_end(body)
        self.values[s.var] = i
        self.emit_stmt(s.body)
        nxt = b.add(i, I64(1), flags=["nuw", "nsw"])
        i.add_incoming(nxt, b.block)
        b.branch(header)
        b.position_at_end(exit_)


def _global_buffers(s: L.Stmt) -> list[L.Buffer]:
    seen: dict[L.Buffer, None] = {}
    for buf in L.buffers_of(s):
        if buf.kind != "local":
            seen.setdefault(buf)
    return list(seen)


class Renderer:
    def __init__(self, prog: L.LoopProgram, entries, name: str):
        self.prog, self.entries = prog, entries
        self.module = ir.Module(name=name)
        self.strings: dict[str, ir.GlobalVariable] = {}

    def render(self) -> ir.Module:
        descs = []
        for entry, slots in zip(self.prog.entries, self.entries):
            kernels = [self.kernel(f"{entry.name}.{k.name}", k) for k in entry.kernels]
            run = self.entry_function(entry, kernels)
            ws = self.workspace_function(entry)
            descs.append((slots, run, ws))
        self.descriptor(descs)
        return self.module

    # -- kernels
    def kernel(self, name: str, k: L.Kernel) -> tuple[ir.Function, list[L.Buffer]]:
        bufs = _global_buffers(k.body)
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [PTR] * (len(bufs) + 1)),
                         name=f"dlc.kernel.{name}")
        fn.linkage = "internal"
        # A kernel is a loop nest called once per run: inlining it into the
        # entry saves nothing and makes O3 several times slower on big programs.
        fn.attributes.add("noinline")
        for a in fn.args[:-1]:
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = StmtEmitter(self.module, b, fn.args[-1], self.prog.syms)
        for buf, arg in zip(bufs, fn.args):
            em.pointers[buf] = arg
        for buf in (st.buf for st in L.stmts_of(k.body) if isinstance(st, L.Allocate)):
            em.pointers[buf] = b.alloca(TYPES[buf.dtype], name=buf.name)
        em.emit_stmt(k.body)
        b.ret_void()
        return fn, bufs

    def slot_offsets(self, em: ExprEmitter, entry: L.LoopEntry) -> tuple[list[ir.Value], ir.Value]:
        """Byte offset of each workspace slot, and the total, from the syms."""
        b = em.b
        offsets, total = [], I64(0)
        for slot in entry.slots():
            offsets.append(total)
            size = I64(0)
            for buf in slot:
                nbytes = b.mul(em.emit(buf.size), I64(L.DTYPE_BYTES[buf.dtype]))
                size = em.b.call(em.intrinsic("smax", I64, 2), [size, nbytes])
            rounded = b.and_(b.add(size, I64(ALIGN - 1)), I64(-ALIGN))
            total = b.add(total, rounded)
        return offsets, total

    def entry_function(self, entry: L.LoopEntry, kernels) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(I32, [PTR, PTR, PTR, PTR]),
                         name=f"dlc.entry.{entry.name}")
        fn.linkage = "internal"
        tensors, syms, ws, _host = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = ExprEmitter(self.module, b, syms, self.prog.syms)
        offsets, _ = self.slot_offsets(em, entry)
        status = I32(0)
        for kfn, bufs in kernels:
            args = []
            for buf in bufs:
                if buf.kind == "tensor":
                    p = b.gep(tensors, [I64(buf.index)], source_etype=PTR)
                    args.append(b.load(p, typ=PTR))
                else:
                    off = offsets[entry.slot_of[buf.index]]
                    args.append(b.gep(ws, [off], source_etype=ir.IntType(8)))
            status = b.or_(status, self.call_kernel(em, fn, kfn, args))
        b.ret(status)
        return fn

    def call_kernel(self, em: ExprEmitter, entry_fn: ir.Function, kernel, args: list) -> ir.Value:
        """Runs a kernel from an entry function; returns its i32 status (the
        CUDA target launches instead of calling)."""
        em.b.call(kernel, args + [entry_fn.args[1]])
        return I32(0)

    def workspace_function(self, entry: L.LoopEntry) -> ir.Function:
        fn = ir.Function(self.module, ir.FunctionType(I64, [PTR]), name=f"dlc.workspace.{entry.name}")
        fn.linkage = "internal"
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = ExprEmitter(self.module, b, fn.args[0], self.prog.syms)
        _, total = self.slot_offsets(em, entry)
        b.ret(total)
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
        tensor_t = ir.LiteralStructType([PTR, I32, I32, I32, I32, PTR, ir.DoubleType(), ir.DoubleType()])
        rows = []
        for k, t in enumerate(self.prog.tensors):
            dims = [I64(d if isinstance(d, int) else -(sym_index[d] + 1)) for d in t.dims]
            init = t.init.kind if t.init else "zeros"
            rows.append(ir.Constant(tensor_t, [
                self.string(t.name), I32(ROLE_CODE[t.role]), I32(DTYPE_CODE[t.dtype]),
                I32(len(t.dims)), I32(INIT_CODE[init]), self.array(f"dlc.dims.{k}", I64, dims),
                ir.Constant(ir.DoubleType(), t.init.a if t.init else 0.0),
                ir.Constant(ir.DoubleType(), t.init.b if t.init else 0.0)]))
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


def render(prog: L.LoopProgram, entries, name: str = "dlc") -> str:
    """LLVM IR text of the whole program (triple and layout set by the compiler)."""
    return str(Renderer(prog, entries, name).render())
