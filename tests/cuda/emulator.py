"""A CPU emulator of the CUDA driver, to run the cuda target's runtime path
(runtime/src/cuda.c, the launch plans, the mapped kernels and device math)
on machines without a GPU. It does not run PTX: `install()` makes the
compiler also build each program's device IR for the host CPU, where the
fake driver (emulator/fake_libcuda.c) finds it by a hash of the PTX text.

    DLC_CUDA_EMULATOR=1 python -m pytest -m gpu tests/cuda

runs the GPU tests on it (see conftest.py). The threads of a block run one
after another as coroutines that switch at barriers, so it checks indexing,
launch geometry, shared-memory staging and data movement, not memory races
or the hardware (test_ptx.py assembles the same PTX with ptxas).
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import llvmlite.binding as llvm

from dlc.codegen import compiler, ptx

HERE = Path(__file__).parent
REGISTERS = ("tid", "ntid", "ctaid", "nctaid")


def fnv1a(text: str) -> str:
    h = 1469598103934665603
    for byte in text.encode():
        h = ((h ^ byte) * 1099511628211) & (2**64 - 1)
    return f"{h:016x}"


def host_kernels_ir(device_ir: str) -> str:
    """The device module for the host: special registers read a global,
    and each kernel gets a `<name>_emu(void **params)` wrapper."""
    text = device_ir.replace("define ptx_kernel ", "define ")
    text = re.sub(r'declare i32 @"llvm\.nvvm\.read\.ptx\.sreg\.\w+\.x"\(\)\n', "", text)
    text = re.sub(r'@"llvm\.nvvm\.read\.ptx\.sreg\.(\w+)\.x"', r"@dlc_emu_\1", text)
    # Shared memory: one array per module (blocks run one after another);
    # barriers call back into the fake driver, which switches threads.
    text = re.sub(r"addrspacecast \[[^\]]*\] addrspace\(3\)\* (@\"[^\"]+\") to ptr", r"bitcast ptr \1 to ptr", text)
    text = text.replace("internal addrspace(3) global", "internal global")
    text = re.sub(r'declare void @"llvm\.nvvm\.barrier0"\(\)\n', "", text)
    text = text.replace('@"llvm.nvvm.barrier0"', "@dlc_emu_barrier")
    out = [text, "@dlc_emu_regs = global [4 x i32] zeroinitializer",
           "@dlc_emu_barrier_fn = global ptr null",
           "define void @dlc_emu_barrier() {\n  %f = load ptr, ptr @dlc_emu_barrier_fn\n"
           "  call void %f()\n  ret void\n}"]
    for k, reg in enumerate(REGISTERS):
        out.append(f"define i32 @dlc_emu_{reg}() {{\n"
                   f"  %p = getelementptr [4 x i32], ptr @dlc_emu_regs, i64 0, i64 {k}\n"
                   f"  %v = load i32, ptr %p\n  ret i32 %v\n}}")
    mod = llvm.parse_assembly(device_ir)
    for fn in mod.functions:
        if fn.is_declaration or not fn.name.startswith("dlc_"):
            continue
        types = [str(a.type) for a in fn.arguments]
        body, args = [], []
        for i, t in enumerate(types):
            body += [f"  %s{i} = getelementptr ptr, ptr %params, i64 {i}",
                     f"  %p{i} = load ptr, ptr %s{i}", f"  %a{i} = load {t}, ptr %p{i}"]
            args.append(f"{t} %a{i}")
        sync = int("llvm.nvvm.barrier" in str(fn))  # as parsed: maybe upgraded to barrier.cta.*
        out.append(f'@"{fn.name}_emu_sync" = constant i32 {sync}')
        out.append(f'define void @"{fn.name}_emu"(ptr %params) {{\n' + "\n".join(body)
                   + f'\n  call void @"{fn.name}"({", ".join(args)})\n  ret void\n}}')
    return "\n".join(out) + "\n"


def install(directory: str | None = None) -> Path:
    """Builds the fake driver, points the runtime at it (DLC_LIBCUDA) and
    makes every PTX emission also write its host kernels; returns the
    directory that holds them."""
    d = Path(directory or tempfile.mkdtemp(prefix="dlc-cuda-emu-"))
    lib = d / "libcuda_fake.so"
    cc = os.environ.get("CC") or "cc"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-U_FORTIFY_SOURCE", "-o", str(lib),
                    str(HERE / "emulator" / "fake_libcuda.c"), "-ldl"], check=True)
    os.environ["DLC_LIBCUDA"] = str(lib)
    os.environ["DLC_FAKE_CUDA_DIR"] = str(d)
    emit = ptx.emit_ptx
    if getattr(emit, "emulated", False):
        return d

    def emit_and_build_host_kernels(device_ir: str, arch: str = ptx.DEFAULT_ARCH) -> str:
        text = emit(device_ir, arch)
        target = d / f"{fnv1a(text)}.so"
        if not target.exists():
            compiler.link_shared([compiler.emit(host_kernels_ir(device_ir), "obj")], target)
        return text

    emit_and_build_host_kernels.emulated = True
    ptx.emit_ptx = emit_and_build_host_kernels
    return d
