"""The pipeline: one table of named passes from source to shared library.

    parse+check -> autodiff -> dce -> lower_pooling -> winograd (cpu) -> pack_dense (cpu) -> fuse   (graph IR)
    -> lower -> loop passes of the target:                  (loop IR)
         cpu:  tile -> lower_reductions -> parallelize -> vectorize -> plan_memory
         cuda: lower_reductions -> plan_memory -> tile_gpu -> map_gpu
    -> render (LLVM IR) -> optimize, emit, link   (object, .so)

The cuda target renders PTX plus a host module that carries it
(dlc/codegen/ptx.py).

Each pass is a pure function; with `verify=True` (tests, DLC_VERIFY=1) the
IR's verifier runs after every pass; `dump_after` prints a stage.
"""
from __future__ import annotations

import codecs
import functools
import gc
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import frontend
from .codegen import compiler
from .autodiff import differentiate
from .codegen.ptx import DEFAULT_ARCH, render_cuda
from .codegen.render import render
from .errors import CompileError, Diagnostic, DlcError, Span
from .ir import graph as G
from .ir import loops as L
from .lower import EntrySlots, lower
from .passes.graph_cse import eliminate_common_subexpressions
from .passes.graph_dce import eliminate_dead_code
from .passes.graph_fuse import fuse
from .progress import QUIET, CompileProgress
from .passes.graph_pooling import lower_pooling
from .passes.graph_phase_split import phase_split
from .passes.graph_pack_dense import pack_dense
from .passes.graph_trim_recurrences import trim_recurrences
from .passes.graph_winograd import winograd
from .passes.kernel_sharing import share, unshare
from .passes.loop_memory import plan_memory
from .passes.loop_gpu import map_to_gpu, tile_matmuls
from .passes.loop_parallel import parallelize
from .passes.loop_reductions import lower_reductions
from .passes.loop_tile import tile
from .passes.loop_vectorize import vectorize

GRAPH_PASSES: list[tuple[str, Callable[[G.Program], G.Program]]] = [
    ("autodiff", differentiate),
    ("cse", eliminate_common_subexpressions),
    ("dce", eliminate_dead_code),
    ("trim_recurrences", trim_recurrences),
    ("lower_pooling", lower_pooling),
    ("phase_split", phase_split),
    ("winograd", winograd),
    ("pack_dense", pack_dense),
    ("fuse", fuse),
]
# Graph passes that only some targets run (the rest run for all).
GRAPH_PASS_TARGETS = {"winograd": ("cpu",), "pack_dense": ("cpu",), "phase_split": ("cpu",)}
LoopPass = tuple[str, Callable[[L.LoopProgram], L.LoopProgram]]
# The loop passes of each target, in order.
LOOP_PASSES: dict[str, list[LoopPass]] = {
    "cpu": [("tile", tile), ("lower_reductions", lower_reductions), ("parallelize", parallelize),
            ("vectorize", vectorize), ("plan_memory", plan_memory)],
    "cuda": [("lower_reductions", lower_reductions), ("plan_memory", plan_memory),
             ("tile_gpu", tile_matmuls), ("map_gpu", map_to_gpu)],
}
TARGETS = tuple(LOOP_PASSES)
# Loop passes that transform each kernel on its own, one for one: they run
# once per kernel structure (passes/kernel_sharing.py).
PER_KERNEL_PASSES = {"tile", "lower_reductions", "parallelize", "vectorize"}


def graph_passes(target: str) -> list[tuple[str, Callable[[G.Program], G.Program]]]:
    """The graph passes `target` runs, in order."""
    return [(n, p) for n, p in GRAPH_PASSES if target in GRAPH_PASS_TARGETS.get(n, TARGETS)]


PASS_NAMES = (["check"] + [n for n, _ in GRAPH_PASSES] + ["lower"]
              + list(dict.fromkeys(n for t in TARGETS for n, _ in LOOP_PASSES[t])) + ["render"])


@dataclass
class Artifact:
    graph: G.Program
    loops: L.LoopProgram
    entries: list[EntrySlots]
    llvm_modules: list[str]   # the host library's modules (render.Renderer.render)
    ptx: str | None = None    # cuda target: the kernels


def _log(dump_after: str | None, name: str, text: Callable[[], str], out) -> None:
    if dump_after in (name, "all"):
        print(f"// ----- IR after {name}", file=out)
        print(text(), file=out)


def without_gc(f):
    """f with Python's cyclic garbage collector paused: the pipeline makes and
    drops many small IR objects (reference counting frees them), and each
    collection would rescan every live object of the process (a third of the
    build's time, more beside a large library such as torch)."""
    @functools.wraps(f)
    def run(*args, **kwargs):
        enabled = gc.isenabled()
        gc.disable()
        try:
            return f(*args, **kwargs)
        finally:
            if enabled:
                gc.enable()
    return run


@without_gc
def build(source: str, file: str = "<source>", dump_after: str | None = None,
          verify: bool | None = None, time_passes: bool = False, out=sys.stderr,
          target: str = "cpu", arch: str | None = None, skip_passes: tuple[str, ...] = (),
          progress: CompileProgress = QUIET, cpu: str | None = None,
          sink: Callable[[str], None] | None = None) -> Artifact:
    """Run the pipeline up to LLVM IR (and PTX for target 'cuda', for `arch`).
    `skip_passes` names loop passes to leave out (tests compare the numbers);
    `progress` hears of each pass as it starts; `cpu` (an LLVM CPU name)
    sizes vectors and register blocks for that CPU (compiler.selected_cpu);
    `sink` hears of each kernel module of a cpu program as the renderer
    makes it (compiler.Build.add)."""
    token = compiler.TARGET_CPU.set(cpu)
    try:
        return _build(source, file, dump_after, verify, time_passes, out, target, arch, skip_passes,
                      progress, sink)
    finally:
        compiler.TARGET_CPU.reset(token)


def _build(source, file, dump_after, verify, time_passes, out, target, arch, skip_passes,
           progress, sink) -> Artifact:
    if target not in TARGETS:
        raise DlcError(f"unknown target '{target}'; targets are: {', '.join(TARGETS)}")
    if dump_after is not None and dump_after != "all" and dump_after not in PASS_NAMES:
        raise ValueError(f"unknown pass '{dump_after}'; passes are: {', '.join(PASS_NAMES)}")
    if verify is None:
        verify = os.environ.get("DLC_VERIFY") == "1"
    timings = []

    def timed(name, f, *args):
        progress.stage(name)
        t0 = time.perf_counter()
        r = f(*args)
        timings.append((name, time.perf_counter() - t0))
        return r

    program = timed("check", frontend.parse_program, source, file)
    _log(dump_after, "check", lambda: G.print_program(program), out)
    for name, p in graph_passes(target):
        program = timed(name, p, program)
        if verify:
            G.verify(program, name)
        _log(dump_after, name, lambda: G.print_program(program), out)
    loops, entries = timed("lower", lower, program, target)
    if verify:
        L.verify(loops, "lower", allow_reduce=True)
    _log(dump_after, "lower", lambda: L.print_program(loops), out)
    reduced = False  # Reduce expressions remain until lower_reductions
    sharing = None   # while per-kernel passes run: kernel_sharing
    copies = None    # the kernels unshare made, for the renderer
    whole = lambda: loops if sharing is None else unshare(loops, sharing)[0]
    for name, p in LOOP_PASSES[target]:
        if name in skip_passes:
            continue
        if name in PER_KERNEL_PASSES and sharing is None:
            loops, sharing = timed("share_kernels", share, loops)
        elif name not in PER_KERNEL_PASSES and sharing is not None:
            (loops, copies), sharing = timed("unshare_kernels", unshare, loops, sharing), None
        loops = timed(name, p, loops)
        reduced = reduced or p is lower_reductions
        if verify:
            L.verify(loops, name, allow_reduce=not reduced)
        _log(dump_after, name, lambda: L.print_program(whole()), out)
    if sharing is not None:   # the per-kernel passes ran last
        (loops, copies), sharing = timed("unshare_kernels", unshare, loops, sharing), None
    ptx = None
    if target == "cuda":
        ptx, llvm_modules = timed("render", render_cuda, loops, entries, Path(file).stem,
                                  arch or DEFAULT_ARCH)
    else:
        llvm_modules = timed("render", render, loops, entries, Path(file).stem, sink, copies)
    _log(dump_after, "render", lambda: "\n".join(llvm_modules), out)
    if time_passes:
        for name, t in timings:
            print(f"{name:>18}: {t * 1e3:8.2f} ms", file=out)
    return Artifact(program, loops, entries, llvm_modules, ptx)


def read_source(path_or_source: str | os.PathLike) -> tuple[str, str]:
    """(source, file name): a path to a .dl file, or the source text itself.
    A file is UTF-8 (a byte order mark is skipped); a CompileError points at
    its first byte that is not."""
    text = str(path_or_source)
    if "\n" not in text and "{" not in text:
        p = Path(text)
        return decode_source(p.read_bytes(), str(p)), str(p)
    return text, "<source>"


def decode_source(data: bytes, file: str) -> str:
    """The text of file `file`, whose bytes are `data` (see read_source)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + 3 * data.startswith(codecs.BOM_UTF8)   # e.start is past the mark
        line_start = data.rfind(b"\n", 0, start) + 1
        line = data.count(b"\n", 0, start) + 1
        col = len(data[line_start:start].decode("utf-8-sig")) + 1   # in characters, as elsewhere
        shown = data.decode("utf-8-sig", errors="replace")            # for the caret line
        raise CompileError([Diagnostic(Span(file, line, col, line, col + 1),
                                       f"the file is not valid UTF-8 (byte 0x{data[start]:02x}: "
                                       f"{e.reason}); dlc reads source files as UTF-8")],
                           shown) from None
