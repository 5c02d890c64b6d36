"""Compiler: LLVM IR text -> optimized object code -> shared library.

Parses and verifies the module, optimizes it with LLVM's new pass manager
(O3, loop and SLP vectorization) for the host CPU, emits an object file or
assembly, and links a shared library with the system C compiler. Libraries
are cached by a hash of the IR, the target and the options.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import llvmlite.binding as llvm

from ..errors import InternalError, ToolError

OPT_LEVEL = 3


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def host_target() -> tuple[str, str, str]:
    """(triple, cpu, features) of this machine."""
    _init()
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def vector_registers() -> tuple[int, int]:
    """(bytes per vector register, number of vector registers) of the host
    CPU: what loop tiling sizes register blocks for."""
    features = set(host_target()[2].split(","))
    if "+avx512f" in features:
        return 64, 32
    if "+avx" in features:
        return 32, 16
    return 16, 16


def target_machine(cpu: str | None = None):
    triple, host_cpu, features = host_target()
    if cpu and cpu != host_cpu:
        features = ""  # a named CPU brings its own feature set
    target = llvm.Target.from_triple(triple)
    return target.create_target_machine(cpu=cpu or host_cpu, features=features,
                                        opt=OPT_LEVEL, reloc="pic", codemodel="default")


def optimize(llvm_ir: str, cpu: str | None = None, machine=None):
    """Parse, verify, set the target, run O3; returns (module, target machine).
    `machine` overrides the host target (the CUDA target passes NVPTX's)."""
    tm = machine or target_machine(cpu)
    try:
        mod = llvm.parse_assembly(llvm_ir)
        mod.verify()
    except RuntimeError as e:
        raise InternalError("codegen", f"LLVM rejected the module: {e}") from e
    mod.triple = tm.triple
    mod.data_layout = str(tm.target_data)
    pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)
    return mod, tm


def emit(llvm_ir: str, kind: str, cpu: str | None = None) -> bytes:
    """kind: 'll' (optimized IR), 'asm' or 'obj'."""
    mod, tm = optimize(llvm_ir, cpu)
    if kind == "ll":
        return str(mod).encode()
    if kind == "asm":
        return tm.emit_assembly(mod).encode()
    return tm.emit_object(mod)


def link_shared(obj: bytes, out: Path) -> None:
    """Link an object into a shared library at `out`, atomically (another
    process may be building the same cached library)."""
    cc = os.environ.get("CC") or shutil.which("cc") or "cc"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as d:
        o = Path(d) / "program.o"
        o.write_bytes(obj)
        tmp = Path(d) / "program.so"
        cmd = [cc, "-shared", "-o", str(tmp), str(o), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ToolError(cmd, r.stderr)
        os.replace(tmp, out)


def cache_dir() -> Path:
    base = os.environ.get("DLC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dlc")
    return Path(base)


def shared_library(llvm_ir: str, cpu: str | None = None) -> Path:
    """The path of a shared library for this IR, built unless cached."""
    from .. import __version__
    triple, host_cpu, features = host_target()
    key = hashlib.sha256("\0".join(
        [__version__, triple, cpu or host_cpu, features, str(OPT_LEVEL), llvm_ir]).encode()).hexdigest()
    path = cache_dir() / f"{key[:32]}.so"
    if not path.exists():
        link_shared(emit(llvm_ir, "obj", cpu), path)
    return path
