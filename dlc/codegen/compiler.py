"""Compiler: LLVM IR modules -> optimized object code -> shared library.

The renderer gives a program as several modules (its descriptor and entry
functions, and one module per kernel). The compiler parses, verifies and
links them, optimizes with LLVM's new pass manager (O3, loop vectorization:
objects.optimize) for the target CPU, and emits an object file or assembly.
A shared library is built in parallel (`Build`): each kernel module is
compiled on its own by whichever process takes it first, a worker process
(objects.py) or this one, while the renderer still makes the others, and
the objects are linked by the system C compiler. Libraries are cached by a
hash of the IR, the target and the options.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path

import llvmlite.binding as llvm

from ..errors import DlcError, InternalError, ToolError
from ..progress import QUIET, CompileProgress
from . import objects
from .objects import OPT_LEVEL, host_target, target_machine

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


def default_jobs() -> int:
    """Processes for a build: DLC_COMPILE_JOBS, by default one per core this
    process may run on (one where Python cannot start itself: an embedding
    interpreter)."""
    if not sys.executable:
        return 1
    limit = os.environ.get("DLC_COMPILE_JOBS", "")
    if limit.isdigit() and int(limit) > 0:
        return int(limit)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Build:
    """Object files of a program's modules in `directory`, compiled while
    the renderer still makes them. Each kernel module is written there as it
    is made (`add`) and its number sent to the worker processes; every
    process compiles each module no other took first (objects.claim), the
    workers from the first, this one from the last once it has them all
    (`objects`). So rendering and LLVM overlap, and the work is shared as
    each process becomes free (LeNet in-process, 2 cores: 1.5 -> 1.2 s).
    The workers start with the first module: a program that fails before it
    starts none. Use it in a `with` block, which stops them."""

    def __init__(self, directory: Path, cpu: str | None = None, jobs: int | None = None):
        self.directory, self.cpu = directory, selected_cpu(cpu)
        self.jobs = jobs or default_jobs()
        self.count = 0   # kernel modules added
        self.workers: list[subprocess.Popen] = []

    def __enter__(self) -> Build:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.workers:   # any still running has nothing left to take
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.stderr.close()

    def add(self, text: str) -> None:
        """A kernel module's IR text, to compile."""
        n, self.count = self.count, self.count + 1
        new = self.directory / f"{n}.ll.new"
        new.write_text(text)
        os.replace(new, self.directory / f"{n}.ll")   # whole when a worker takes it
        if not self.workers and self.jobs > 1:
            # The workers find llvmlite where this process did, even on a
            # sys.path changed at run time; -P keeps the worker's own folder off it.
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
            cmd = [sys.executable, "-P", objects.__file__, self.cpu or "", str(self.directory)]
            self.workers = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True, env=env) for _ in range(self.jobs - 1)]
        for proc in self.workers:
            try:
                proc.stdin.write(f"{n}\n")
                proc.stdin.flush()
            except OSError:
                pass   # the worker failed: `objects` says why if it took a module

    def objects(self, main: str, progress: CompileProgress = QUIET) -> list[Path]:
        """The object files: the main module's (the descriptor and entries,
        compiled here, with the kernels no worker took) and the kernels'."""
        for proc in self.workers:
            try:
                proc.stdin.close()
            except OSError:
                pass
        progress.stage(f"LLVM, {self.count + 1} modules in {len(self.workers) + 1} processes")
        tm = target_machine(self.cpu)
        own = self.directory / "main.o"
        try:
            (self.directory / "main.ll").write_text(main)
            objects.compile_file(self.directory / "main.ll", own, tm)
            for n in reversed(range(self.count)):
                objects.claim(self.directory, n, tm)
        except RuntimeError as e:
            raise InternalError("codegen", f"LLVM rejected a module: {e}") from e
        kernels = [self.directory / f"{n}.o" for n in range(self.count)]
        while not all(p.exists() for p in kernels):
            failed = [proc for proc in self.workers if proc.poll() not in (None, 0)]
            if failed:
                raise InternalError("codegen", f"an LLVM worker process failed:\n{failed[0].stderr.read()}")
            if all(proc.poll() is not None for proc in self.workers):
                raise InternalError("codegen", "a kernel module was taken and never compiled")
            time.sleep(0.002)
        return [own, *kernels]


def object_files(modules: Sequence[str], directory: Path, cpu: str | None = None,
                 jobs: int | None = None, progress: CompileProgress = QUIET) -> list[Path]:
    """Object files of the program's modules (the main module first), built
    in `directory` by a Build."""
    with Build(directory, cpu, jobs) as build:
        for text in modules[1:]:
            build.add(text)
        return build.objects(modules[0], progress)


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
                   progress: CompileProgress = QUIET, build: Build | None = None) -> Path:
    """The path of a shared library for the program's modules, built unless
    an intact one is cached (by `jobs` processes; default_jobs when None), or
    from `build`, to which the renderer added the kernel modules as it made
    them.
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
            if build is None:
                parts = object_files(modules, Path(d), cpu, jobs, progress)
            elif build.count != len(modules) - 1:
                raise InternalError("codegen", f"{build.count} kernel modules built, {len(modules) - 1} rendered")
            else:
                parts = build.objects(modules[0], progress)
            link_shared(parts, tmp)
            with tmp.open("ab") as f:
                f.write(SEAL_TAG + hashlib.sha256(tmp.read_bytes()).digest())
            os.replace(tmp, path)
    except OSError as e:
        raise DlcError(f"cannot use the compile cache '{path.parent}': {e.strerror or e}; "
                       "set DLC_CACHE_DIR to a writable directory") from None
    return path
