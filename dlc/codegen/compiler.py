"""Compiler: LLVM IR modules -> optimized object code -> shared library.

The renderer gives a program as several modules (its descriptor and entry
functions, and one module per kernel). The compiler parses, verifies and
links them, optimizes with LLVM's new pass manager (O3, loop and SLP
vectorization) for the host CPU, and emits an object file or assembly.
A shared library of a big program is built in parallel: its modules are
split into balanced groups, each optimized and compiled by its own process
(objects.py), and the objects are linked by the system C compiler.
Libraries are cached by a hash of the IR, the target and the options.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path

import llvmlite.binding as llvm

from ..errors import DlcError, InternalError, ToolError
from ..progress import QUIET, CompileProgress
from . import objects
from .objects import OPT_LEVEL, host_target, target_machine

# IR text per job of a parallel build: about 0.2 s of LLVM's time (Zen 4),
# against about 0.15 s to start a worker process. (At 1 MiB LeNet's 2 MB of
# training program had been built by one process: 1.55 s, 0.82 s by two.)
MIN_JOB_BYTES = 256 << 10


# The CPU a build's code is for: an LLVM CPU name (x86-64-v3: AVX2 and FMA,
# for a portable library), or None for this machine's. A build's explicit
# choice (dlc.compile(cpu=...), dlc compile --cpu) holds for the passes while
# driver.build runs; else the DLC_CPU environment variable; else the host.
TARGET_CPU: ContextVar[str | None] = ContextVar("dlc_target_cpu", default=None)


def selected_cpu(cpu: str | None = None) -> str | None:
    """cpu, else the build's, else DLC_CPU's; None means the host's."""
    return cpu or TARGET_CPU.get() or os.environ.get("DLC_CPU") or None


def vector_registers(cpu: str | None = None) -> tuple[int, int]:
    """(bytes per vector register, number of vector registers) of the target
    CPU (selected_cpu): what loop tiling sizes register blocks for."""
    return _vector_registers(selected_cpu(cpu))


@functools.cache
def _vector_registers(cpu: str | None) -> tuple[int, int]:
    triple, host_cpu, features = host_target()
    if cpu is None or cpu == host_cpu:
        flags = set(features.split(","))
        wide = "+avx512f" in flags, "+avx" in flags
    else:   # a named CPU: ask LLVM which registers a 512-bit add uses
        asm = target_machine(cpu).emit_assembly(llvm.parse_assembly(VECTOR_PROBE))
        wide = "zmm" in asm, "ymm" in asm
    if wide[0]:
        return 64, 32
    if wide[1]:
        return 32, 16
    return 16, 16


VECTOR_PROBE = """
define void @probe(ptr %p) {
  %v = load <16 x float>, ptr %p
  %w = fadd <16 x float> %v, %v
  store <16 x float> %w, ptr %p
  ret void
}
"""


def optimize(modules: str | Sequence[str], cpu: str | None = None, machine=None, whole: bool = True):
    """Parse, verify and link the modules, set the target, run O3; returns
    (module, target machine). `machine` overrides the host target (the CUDA
    target passes NVPTX's); `whole`: see objects.load."""
    tm = machine or target_machine(selected_cpu(cpu))
    try:
        mod = objects.load([modules] if isinstance(modules, str) else list(modules), tm, whole)
    except RuntimeError as e:
        raise InternalError("codegen", f"LLVM rejected the module: {e}") from e
    objects.optimize(mod, tm)
    return mod, tm


def emit(modules: str | Sequence[str], kind: str, cpu: str | None = None) -> bytes:
    """kind: 'll' (optimized IR), 'asm' or 'obj'."""
    mod, tm = optimize(modules, cpu)
    if kind == "ll":
        return str(mod).encode()
    if kind == "asm":
        return tm.emit_assembly(mod).encode()
    return tm.emit_object(mod)


def default_jobs(modules: Sequence[str]) -> int:
    """Processes for a parallel build: one per MIN_JOB_BYTES of IR, at most
    DLC_COMPILE_JOBS, by default one per core this process may run on (one
    where Python cannot start itself: an embedding interpreter)."""
    if not sys.executable:
        return 1
    limit = os.environ.get("DLC_COMPILE_JOBS", "")
    if limit.isdigit() and int(limit) > 0:
        cores = int(limit)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, sum(map(len, modules)) // MIN_JOB_BYTES))


def balance(modules: Sequence[str], jobs: int) -> list[list[str]]:
    """The modules in at most `jobs` groups of about equal size (largest
    first into the smallest group); the first module stays in the first."""
    groups: list[list[str]] = [[modules[0]]] + [[] for _ in range(jobs - 1)]
    sizes = [len(modules[0])] + [0] * (jobs - 1)
    for text in sorted(modules[1:], key=len, reverse=True):
        k = sizes.index(min(sizes))
        groups[k].append(text)
        sizes[k] += len(text)
    return [g for g in groups if g]


def object_files(modules: Sequence[str], directory: Path, cpu: str | None = None,
                 jobs: int | None = None, progress: CompileProgress = QUIET) -> list[Path]:
    """Object files of the program's modules, written in `directory`: the
    first group compiled here, each other one by a worker process at the
    same time."""
    cpu = selected_cpu(cpu)
    groups = balance(modules, jobs or default_jobs(modules))
    progress.stage(f"LLVM, {len(modules)} modules in {len(groups)} processes")
    # The workers find llvmlite where this process did, even on a sys.path
    # changed at run time; -P keeps the worker's own folder off it.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    workers = []
    try:
        for k, group in enumerate(groups[1:], 1):
            inputs = [directory / f"job{k}.{i}.ll" for i in range(len(group))]
            for path, text in zip(inputs, group):
                path.write_text(text)
            out = directory / f"job{k}.o"
            cmd = [sys.executable, "-P", objects.__file__, cpu or "", str(out), *map(str, inputs)]
            workers.append((out, subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)))
        own = directory / "job0.o"
        mod, tm = optimize(groups[0], cpu, whole=len(groups) == 1)
        own.write_bytes(tm.emit_object(mod))
        for done, (out, proc) in enumerate(workers, 2):
            progress.stage(f"LLVM, {done - 1} of {len(groups)} processes done")
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise InternalError("codegen", f"an LLVM worker process failed:\n{err}")
    finally:
        for _, proc in workers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [own] + [out for out, _ in workers]


def link_shared(parts: Sequence[bytes | Path], out: Path) -> None:
    """Link object code (bytes) or object files into a shared library at
    `out`, atomically (another process may be building the same cached
    library)."""
    cc = os.environ.get("CC") or shutil.which("cc") or "cc"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as d:
        files = []
        for k, obj in enumerate(parts):
            if isinstance(obj, bytes):
                files.append(Path(d) / f"part{k}.o")
                files[-1].write_bytes(obj)
            else:
                files.append(obj)
        tmp = Path(d) / "program.so"
        cmd = [cc, "-shared", "-o", str(tmp), *map(str, files), "-lm"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise ToolError(cmd, r.stderr)
        os.replace(tmp, out)


def cache_dir() -> Path:
    base = os.environ.get("DLC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dlc")
    return Path(base)


# A cached library ends with this seal: a tag and the SHA-256 of every byte
# before it. The dynamic loader maps only the segments the ELF headers name,
# so trailing bytes change nothing; a truncated file (which dlopen would map
# past its end: SIGBUS), a partly written or a foreign one fails the check
# and is rebuilt.
SEAL_TAG = b"dlc-cache-seal-1"
SEAL_BYTES = len(SEAL_TAG) + hashlib.sha256().digest_size


def sealed(data: bytes) -> bool:
    """data ends with a seal of what precedes it."""
    body, seal = data[:-SEAL_BYTES], data[-SEAL_BYTES:]
    return len(data) > SEAL_BYTES and seal == SEAL_TAG + hashlib.sha256(body).digest()


def shared_library(modules: Sequence[str], cpu: str | None = None, jobs: int | None = None,
                   progress: CompileProgress = QUIET) -> Path:
    """The path of a shared library for the program's modules, built unless
    an intact one is cached (by `jobs` processes; default_jobs when None).
    Processes building the same library at once each write their own
    temporary file and rename it into place: the file seen under the cached
    name is always whole."""
    from .. import __version__
    cpu = selected_cpu(cpu)
    triple, host_cpu, features = host_target()
    key = hashlib.sha256("\0".join(
        [__version__, triple, cpu or host_cpu, features, str(OPT_LEVEL), *modules]).encode()).hexdigest()
    path = cache_dir() / f"{key[:32]}.so"
    try:
        if path.is_file() and sealed(path.read_bytes()):
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as d:
            tmp = Path(d) / "program.so"
            link_shared(object_files(modules, Path(d), cpu, jobs, progress), tmp)
            with tmp.open("ab") as f:
                f.write(SEAL_TAG + hashlib.sha256(tmp.read_bytes()).digest())
            os.replace(tmp, path)
    except OSError as e:
        raise DlcError(f"cannot use the compile cache '{path.parent}': {e.strerror or e}; "
                       "set DLC_CACHE_DIR to a writable directory") from None
    return path
