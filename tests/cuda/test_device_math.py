"""The device math functions (exp, log, tanh as plain LLVM IR, see
dlc/codegen/ptx.py) against NumPy. Being target-independent IR, they are
compiled for the host CPU here; the GPU runs the same IR."""
import ctypes

import llvmlite.binding as llvm
import numpy as np
import pytest
from llvmlite import ir

from dlc.codegen import compiler
from dlc.codegen.ptx import DeviceMath
from dlc.codegen.render import I64, PTR, TYPES

# Max error in units of the dtype's epsilon, relative to |f(x)|, with an
# absolute floor of one epsilon near zeros of log and tanh.
ULPS = 8


def compiled(name: str, dtype: str):
    """y[i] = name(x[i]) for i < n, compiled for this CPU."""
    mod = ir.Module(name="math")
    t = TYPES[dtype]
    fn = ir.Function(mod, ir.FunctionType(ir.VoidType(), [PTR, PTR, I64]), name="apply")
    math_fn = DeviceMath(mod).function(name, dtype)
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    x, y, n = fn.args
    loop = b.append_basic_block("loop")
    done = b.append_basic_block("done")
    pre = b.block
    b.cbranch(b.icmp_signed(">", n, I64(0)), loop, done)
    b.position_at_end(loop)
    i = b.phi(I64)
    i.add_incoming(I64(0), pre)
    v = b.load(b.gep(x, [i], source_etype=t), typ=t)
    b.store(b.call(math_fn, [v]), b.gep(y, [i], source_etype=t))
    nxt = b.add(i, I64(1))
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    module, tm = compiler.optimize(str(mod))
    engine = llvm.create_mcjit_compiler(module, tm)
    engine.finalize_object()
    cfn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(
        engine.get_function_address("apply"))

    def run(xs: np.ndarray) -> np.ndarray:
        xs = np.ascontiguousarray(xs, dtype=np.float32 if dtype == "f32" else np.float64)
        ys = np.empty_like(xs)
        cfn(xs.ctypes.data, ys.ctypes.data, xs.size)
        return ys
    run.engine = engine  # keep the code alive
    return run


def points(dtype: str, lo: float, hi: float) -> np.ndarray:
    rng = np.random.default_rng(0)
    np_t = np.float32 if dtype == "f32" else np.float64
    xs = np.concatenate([np.linspace(lo, hi, 20001), rng.uniform(lo, hi, 20000),
                         np.array([0.0, -0.0, 1.0, -1.0, 0.5, 1e-3, -1e-3, lo, hi])])
    return xs.astype(np_t)


RANGES = {"exp": {"f32": (-100, 88), "f64": (-740, 709)},
          "log": {"f32": (1e-30, 1e30), "f64": (1e-300, 1e300)},
          "tanh": {"f32": (-20, 20), "f64": (-40, 40)}}
REFS = {"exp": np.exp, "log": np.log, "tanh": np.tanh}


@pytest.mark.parametrize("dtype", ["f32", "f64"])
@pytest.mark.parametrize("name", ["exp", "log", "tanh"])
def test_accuracy(name, dtype):
    f = compiled(name, dtype)
    lo, hi = RANGES[name][dtype]
    xs = points(dtype, lo, hi)
    if name == "log":  # log spacing, plus values near 1 and subnormals
        xs = np.concatenate([np.geomspace(lo, hi, 40001), 1 + np.linspace(-0.3, 0.3, 2001),
                             [np.finfo(xs.dtype).smallest_subnormal, 3e-39 if dtype == "f32" else 3e-310]]
                            ).astype(xs.dtype)
    ref = REFS[name](xs.astype(np.float64))
    got = f(xs).astype(np.float64)
    eps = float(np.finfo(xs.dtype).eps)
    finite = np.isfinite(ref) & (np.abs(ref) < float(np.finfo(xs.dtype).max))
    err = np.abs(got[finite] - ref[finite]) / np.maximum(np.abs(ref[finite]), float(np.finfo(xs.dtype).tiny) / eps)
    worst = int(np.argmax(err))
    assert err[worst] <= ULPS * eps, f"{name}.{dtype} at x={xs[finite][worst]!r}: {err[worst] / eps:.1f} ulp"


@pytest.mark.parametrize("dtype", ["f32", "f64"])
def test_special_values(dtype):
    np_t = np.float32 if dtype == "f32" else np.float64
    xs = np.array([np.inf, -np.inf, np.nan, 1e4, -1e4, 0.0], dtype=np_t)
    with np.errstate(all="ignore"):
        for name, ref in REFS.items():
            np.testing.assert_array_equal(compiled(name, dtype)(xs), ref(xs), err_msg=name)
