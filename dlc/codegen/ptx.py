"""CUDA code generation: GPU-mapped loop IR -> PTX (LLVM's NVPTX backend)
and the host module that carries it.

The artifact of the cuda target is one shared library for the host CPU, like
the cpu target's, holding:
  - the usual descriptor (`dlc_program`, runtime/include/dlc/program.h): the
    tensor table, the entries, their workspace-size functions;
  - `dlc_cuda_program` (program.h): the PTX text for one architecture and the
    names of its kernels;
  - per entry, the descriptor's `run` function, which is the entry's launch
    plan as code: from the syms it computes each kernel's thread count, the
    device workspace pointers (the cpu target's slot offsets, applied to a
    device base address) and the grid, then launches the kernels in order
    through the `dlc_cuda_host` the runtime passes in place of `dlc_host`.
Every kernel takes one pointer per global buffer it uses (device memory),
then every symbol by value (i64). Kernels are grid-stride loops over
threads, or over blocks of BLOCK threads for tiled ones, with shared arrays
and barriers (see dlc/passes/loop_gpu.py); every launch has BLOCK threads
per block and at most MAX_GRID blocks.

Math: NVPTX does not lower llvm.exp/llvm.log/llvm.tanh (clang calls
libdevice for them). exp, log and tanh are emitted here as plain LLVM IR -
Cody-Waite range reduction, a polynomial, exponent bit manipulation, fma -
in f32 and f64, accurate to a few ulp. Being target-independent IR, the same
functions are checked against NumPy on the host CPU
(tests/cuda/test_device_math.py).
"""
from __future__ import annotations

import functools
import math
import re
from decimal import Decimal

import llvmlite.binding as llvm
import numpy as np
from llvmlite import ir

from ..errors import DlcError, InternalError
from ..ir import loops as L
from ..passes.loop_gpu import BLOCK, BLOCKS, GRID, THREADS, launch_threads
from . import compiler
from .render import I32, I64, PTR, TYPES, Renderer, StmtEmitter, _dtype_of, _global_buffers

TRIPLE = "nvptx64-nvidia-cuda"
DEFAULT_ARCH = "sm_80"
MAX_GRID = 1 << 16
# LLVM intrinsics the NVPTX backend selects natively; anything else would
# abort LLVM ("cannot select"), so it must be implemented here first.
NATIVE = {"sqrt", "fabs", "minimum", "maximum", "smin", "smax", "fma", "rint", "copysign"}

_LN2 = Decimal("0.69314718055994530941723212145817656807550013436026")
# Per float type: its integer twin, mantissa bits, exponent bias, the range
# of x outside which exp(x) is 0 or inf, and polynomial lengths.
_FLOAT = {
    "f32": dict(int=I32, mbits=23, bias=127, lo=-104.0, hi=89.0, exp_terms=8, log_terms=6),
    "f64": dict(int=I64, mbits=52, bias=1023, lo=-746.0, hi=710.0, exp_terms=14, log_terms=12),
}
# tanh(a) = a * P(a^2) for small a (Taylor series).
_TANH_SERIES = [1.0, -1 / 3, 2 / 15, -17 / 315, 62 / 2835, -1382 / 155925, 21844 / 6081075]
_TANH_SMALL = 0.125


def _ln2_split(dtype: str) -> tuple[float, float]:
    """ln 2 as hi + lo, hi in the target precision (for Cody-Waite)."""
    hi = float(np.float32(float(_LN2))) if dtype == "f32" else float(_LN2)
    return hi, float(_LN2 - Decimal(hi))


class DeviceMath:
    """exp, log and tanh as internal functions of a module, built on demand."""
    FUNCTIONS = ("exp", "log", "tanh")

    def __init__(self, module: ir.Module):
        self.module = module

    def function(self, name: str, dtype: str) -> ir.Function:
        full = f"dlc.math.{name}.{dtype}"
        fn = self.module.globals.get(full)
        if fn is None:
            t = TYPES[dtype]
            fn = ir.Function(self.module, ir.FunctionType(t, [t]), name=full)
            fn.linkage = "internal"
            fn.attributes.add("alwaysinline")
            b = ir.IRBuilder(fn.append_basic_block("entry"))
            b.ret(getattr(self, name)(b, fn.args[0], dtype))
        return fn

    def llvm(self, b: ir.IRBuilder, name: str, *args: ir.Value) -> ir.Value:
        t = args[0].type
        full = f"llvm.{name}.{_dtype_of(t)}"
        fn = self.module.globals.get(full) or ir.Function(
            self.module, ir.FunctionType(t, [t] * len(args)), name=full)
        return b.call(fn, list(args))

    @staticmethod
    def poly(b: ir.IRBuilder, fma, x: ir.Value, coeffs: list[float]) -> ir.Value:
        """sum coeffs[k] x^k by Horner's rule with fma."""
        t = x.type
        p = ir.Constant(t, coeffs[-1])
        for c in reversed(coeffs[:-1]):
            p = fma(p, x, ir.Constant(t, c))
        return p

    def exp(self, b: ir.IRBuilder, x: ir.Value, dtype: str) -> ir.Value:
        f, t = _FLOAT[dtype], x.type
        it = f["int"]
        fma = functools.partial(self.llvm, b, "fma")
        xc = self.llvm(b, "minnum", self.llvm(b, "maxnum", x, ir.Constant(t, f["lo"])),
                       ir.Constant(t, f["hi"]))
        # x = n ln2 + r, |r| <= ln2 / 2; exp(x) = 2^n exp(r).
        n = self.llvm(b, "rint", b.fmul(xc, ir.Constant(t, 1 / math.log(2))))
        hi, lo = _ln2_split(dtype)
        r = fma(b.fneg(n), ir.Constant(t, hi), xc)
        r = fma(b.fneg(n), ir.Constant(t, lo), r)
        p = self.poly(b, fma, r, [1 / math.factorial(k) for k in range(f["exp_terms"])])
        # 2^n as two factors, each a normal number, so that results near the
        # ends of the range (subnormal or overflowing) round correctly.
        ni = b.fptosi(n, it)
        half = b.ashr(ni, ir.Constant(it, 1))

        def pow2(e):
            return b.bitcast(b.shl(b.add(e, ir.Constant(it, f["bias"])), ir.Constant(it, f["mbits"])), t)

        out = b.fmul(b.fmul(p, pow2(half)), pow2(b.sub(ni, half)))
        return b.select(b.fcmp_unordered("uno", x, x), x, out)

    def log(self, b: ir.IRBuilder, x: ir.Value, dtype: str) -> ir.Value:
        f, t = _FLOAT[dtype], x.type
        it, mbits, bias = f["int"], f["mbits"], f["bias"]
        fma = functools.partial(self.llvm, b, "fma")
        c = functools.partial(ir.Constant, t)
        # Subnormals are scaled into the normal range first.
        sub = b.fcmp_ordered("<", x, c(float(np.finfo(np.float32 if dtype == "f32" else np.float64).tiny)))
        xs = b.select(sub, b.fmul(x, c(2.0 ** (mbits + 1))), x)
        bits = b.bitcast(xs, it)
        e = b.sub(b.lshr(bits, ir.Constant(it, mbits)), ir.Constant(it, bias))
        e = b.add(e, b.select(sub, ir.Constant(it, -(mbits + 1)), ir.Constant(it, 0)))
        # x = 2^e m with m in [sqrt(1/2), sqrt(2)).
        m = b.bitcast(b.or_(b.and_(bits, ir.Constant(it, (1 << mbits) - 1)),
                            ir.Constant(it, bias << mbits)), t)
        big = b.fcmp_ordered(">", m, c(math.sqrt(2)))
        m = b.select(big, b.fmul(m, c(0.5)), m)
        e = b.add(e, b.zext(big, it))
        # log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| <= 0.172.
        fm = b.fsub(m, c(1.0))
        s = b.fdiv(fm, b.fadd(fm, c(2.0)))
        q = self.poly(b, fma, b.fmul(s, s), [2 / (2 * k + 1) for k in range(f["log_terms"])])
        ef = b.sitofp(e, t)
        hi, lo = _ln2_split(dtype)
        out = fma(ef, c(hi), fma(ef, c(lo), b.fmul(s, q)))
        out = b.select(b.fcmp_ordered("==", x, c(math.inf)), c(math.inf), out)
        out = b.select(b.fcmp_ordered("==", x, c(0.0)), c(-math.inf), out)
        out = b.select(b.fcmp_ordered("<", x, c(0.0)), c(math.nan), out)
        return b.select(b.fcmp_unordered("uno", x, x), x, out)

    def tanh(self, b: ir.IRBuilder, x: ir.Value, dtype: str) -> ir.Value:
        t = x.type
        c = functools.partial(ir.Constant, t)
        fma = functools.partial(self.llvm, b, "fma")
        a = self.llvm(b, "fabs", x)
        small = b.fmul(a, self.poly(b, fma, b.fmul(a, a), _TANH_SERIES))
        # 1 - 2 / (exp(2a) + 1): exact limits (1 for large a, NaN for NaN).
        e2 = b.call(self.function("exp", dtype), [b.fadd(a, a)])
        large = b.fsub(c(1.0), b.fdiv(c(2.0), b.fadd(e2, c(1.0))))
        out = b.select(b.fcmp_ordered("<", a, c(_TANH_SMALL)), small, large)
        return self.llvm(b, "copysign", out, x)


class PtxEmitter(StmtEmitter):
    """The cpu target's emitters, with symbols passed by value, device math,
    and grid loops over the threads of the launch."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder, sym_values: dict):
        super().__init__(module, builder, None, [])
        self.values.update(sym_values)
        self.math = DeviceMath(module)

    def intrinsic(self, name: str, t: ir.Type, n: int = 1) -> ir.Function:
        if name in DeviceMath.FUNCTIONS:
            return self.math.function(name, _dtype_of(t))
        if name not in NATIVE:
            raise InternalError("ptx", f"intrinsic {name} has no CUDA lowering")
        return super().intrinsic(name, t, n)

    def special_register(self, name: str) -> ir.Value:
        full = f"llvm.nvvm.read.ptx.sreg.{name}"
        fn = self.module.globals.get(full) or ir.Function(self.module, ir.FunctionType(I32, []), name=full)
        return self.b.zext(self.b.call(fn, []), I64)

    def emit_stmt(self, s: L.Stmt) -> None:
        if isinstance(s, L.Barrier):
            fn = self.module.globals.get("llvm.nvvm.barrier0") or ir.Function(
                self.module, ir.FunctionType(ir.VoidType(), []), name="llvm.nvvm.barrier0")
            self.b.call(fn, [])
        else:
            super().emit_stmt(s)

    def loop(self, s: L.For) -> None:
        b, sreg = self.b, self.special_register
        if s.kind == GRID:  # over every thread of the launch
            first = b.add(sreg("tid.x"), b.mul(sreg("ctaid.x"), sreg("ntid.x")))
            self.grid_stride(s, first, b.mul(sreg("ntid.x"), sreg("nctaid.x")))
        elif s.kind == BLOCKS:  # over the blocks, uniformly within each
            self.grid_stride(s, sreg("ctaid.x"), sreg("nctaid.x"))
        elif s.kind == THREADS:  # one iteration per thread of the block
            if not (isinstance(s.extent, L.Const) and s.extent.value == BLOCK):
                raise InternalError("ptx", f"a gpu_threads loop must have {BLOCK} iterations")
            self.values[s.var] = sreg("tid.x")
            self.emit_stmt(s.body)
        else:
            super().loop(s)

    def grid_stride(self, s: L.For, first_value: ir.Value, stride_value: ir.Value) -> None:
        """Iterations first, first + stride, ... < extent: a serial loop over
        j with var = first + j * stride."""
        first, stride, j = L.Var("first"), L.Var("stride"), L.Var(f"{s.var.name}.j")
        self.values[first], self.values[stride] = first_value, stride_value
        count = L.binop("/", s.extent - first + stride - 1, stride)
        super().loop(L.For(j, count, L.substitute_stmt(s.body, {s.var: first + j * stride})))

    def shared(self, buf: L.Buffer) -> ir.Value:
        """A generic pointer to a block's shared array for buf."""
        t = ir.ArrayType(TYPES[buf.dtype], buf.size.value)
        g = ir.GlobalVariable(self.module, t, name=f"{self.b.function.name}.{buf.name}", addrspace=3)
        g.linkage, g.initializer = "internal", ir.Constant(t, ir.Undefined)
        return self.b.addrspacecast(g, PTR)


def _kernel_arguments(body: L.Stmt) -> list[L.Buffer]:
    """The buffers a kernel takes as arguments (shared ones are its own)."""
    return [buf for buf in _global_buffers(body) if buf.kind != "shared"]


def kernel_symbols(prog: L.LoopProgram) -> list[str]:
    """The PTX name of every kernel, entries' kernels in order."""
    names = []
    for e in prog.entries:
        for k in e.kernels:
            name = "_".join(filter(None, (f"dlc_{len(names)}", e.name, k.name, k.layer)))
            names.append(re.sub(r"[^A-Za-z0-9_]", "_", name))
    return names


def device_module(prog: L.LoopProgram, name: str = "dlc") -> str:
    """LLVM IR for NVPTX of every kernel of a GPU-mapped loop program."""
    module = ir.Module(name=name)
    kernels = [k for e in prog.entries for k in e.kernels]
    for symbol, k in zip(kernel_symbols(prog), kernels):
        launch_threads(k)  # every kernel must be mapped
        bufs = _kernel_arguments(k.body)
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR] * len(bufs) + [I64] * len(prog.syms)),
                         name=symbol)
        fn.calling_convention = "ptx_kernel"
        for a in fn.args[:len(bufs)]:
            a.add_attribute("noalias")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        em = PtxEmitter(module, b, dict(zip(prog.syms, fn.args[len(bufs):])))
        em.pointers.update(zip(bufs, fn.args))
        for buf in dict.fromkeys(x for x in L.buffers_of(k.body) if x.kind == "shared"):
            em.pointers[buf] = em.shared(buf)
        em.emit_stmt(k.body)
        b.ret_void()
    return str(module)


@functools.cache
def _init_nvptx() -> None:
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()


def check_arch(arch: str) -> str:
    if not re.fullmatch(r"sm_\d{2,3}[af]?", arch) or int(re.sub(r"\D", "", arch)) < 50:
        raise DlcError(f"unknown CUDA architecture '{arch}'; use sm_XY such as sm_80 or sm_90")
    return arch


def emit_ptx(device_ir: str, arch: str = DEFAULT_ARCH) -> str:
    """Optimized PTX text of a device module."""
    _init_nvptx()
    tm = llvm.Target.from_triple(TRIPLE).create_target_machine(
        cpu=check_arch(arch), features="", opt=compiler.OPT_LEVEL)
    mod, tm = compiler.optimize(device_ir, machine=tm)
    return tm.emit_assembly(mod)


class _LoadedFunction(ir.instructions.LoadInstr):
    """A function pointer loaded from memory that IRBuilder.call accepts
    (llvmlite takes a callee's type from a Function or a typed pointer)."""

    def __init__(self, parent, ptr, ftype: ir.FunctionType):
        super().__init__(parent, ptr, typ=PTR)
        self._ftype = ftype

    @property
    def function_type(self) -> ir.FunctionType:
        return self._ftype


# int32_t launch(void *ctx, int32_t kernel, int64_t grid, int32_t block, void **params)
LAUNCH_TYPE = ir.FunctionType(I32, [PTR, I32, I64, I32, PTR])


class CudaHostRenderer(Renderer):
    """The host module: descriptor, launching entry functions, PTX as data."""

    def __init__(self, prog: L.LoopProgram, entries, name: str, ptx: str, arch: str,
                 symbols: list[str]):
        super().__init__(prog, entries, name)
        self.ptx, self.arch, self.symbols = ptx, arch, symbols
        self.launched = 0

    def kernel(self, name: str, k: L.Kernel):
        """What a launch needs: the kernel's index and thread count."""
        index = self.launched
        self.launched += 1
        return (index, launch_threads(k)), _kernel_arguments(k.body)

    def call_kernel(self, em, entry_fn: ir.Function, kernel, args: list) -> ir.Value:
        index, threads = kernel
        b = em.b
        values = args + [em.values[v] for v in self.prog.syms]
        params = b.alloca(PTR, size=I32(max(len(values), 1)), name="params")
        for k, v in enumerate(values):
            slot = b.alloca(v.type)
            b.store(v, slot)
            b.store(slot, b.gep(params, [I64(k)], source_etype=PTR))
        blocks = b.sdiv(b.add(em.emit(threads), I64(BLOCK - 1)), I64(BLOCK))
        # At least one block: a kernel over an empty shape launches and does nothing.
        blocks = b.call(em.intrinsic("smax", I64, 2), [blocks, I64(1)])
        grid = b.call(em.intrinsic("smin", I64, 2), [blocks, I64(MAX_GRID)])
        host = entry_fn.args[3]  # a dlc_cuda_host: {void *ctx; launch fn}
        ctx = b.load(host, typ=PTR)
        launch = _LoadedFunction(b.block, b.gep(host, [I64(1)], source_etype=PTR), LAUNCH_TYPE)
        b._insert(launch)
        return b.call(launch, [ctx, I32(index), grid, I32(BLOCK), params])

    def render(self) -> list[ir.Module]:
        [module] = super().render()   # launches, no kernel modules
        cuda_t = ir.LiteralStructType([PTR, PTR, I32, PTR])
        g = ir.GlobalVariable(module, cuda_t, name="dlc.cuda")
        g.initializer = ir.Constant(cuda_t, [
            self.string(self.ptx), self.string(self.arch), I32(len(self.symbols)),
            self.array("dlc.cuda.kernels", PTR, [self.string(s) for s in self.symbols])])
        g.global_constant, g.linkage = True, "private"
        fn = ir.Function(module, ir.FunctionType(PTR, []), name="dlc_cuda_program")
        ir.IRBuilder(fn.append_basic_block("entry")).ret(g)
        return [module]


def render_cuda(prog: L.LoopProgram, entries, name: str = "dlc",
                arch: str = DEFAULT_ARCH) -> tuple[str, list[str]]:
    """(PTX text, host LLVM IR modules) of a GPU-mapped loop program."""
    ptx = emit_ptx(device_module(prog, name), arch)
    host = CudaHostRenderer(prog, entries, name, ptx, arch, kernel_symbols(prog)).render()
    return ptx, [str(m) for m in host]
