"""The pipeline: one table of named passes from source to shared library.

    parse+check -> autodiff -> dce -> fuse        (graph IR)
    -> lower -> tile -> lower_reductions -> parallelize -> vectorize
    -> plan_memory                                (loop IR)
    -> render (LLVM IR) -> optimize, emit, link   (object, .so)

Each pass is a pure function; with `verify=True` (tests, DLC_VERIFY=1) the
IR's verifier runs after every pass; `dump_after` prints a stage.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import frontend
from .autodiff import differentiate
from .codegen.render import render
from .ir import graph as G
from .ir import loops as L
from .lower import EntrySlots, lower
from .passes.graph_dce import eliminate_dead_code
from .passes.graph_fuse import fuse
from .passes.loop_memory import plan_memory
from .passes.loop_parallel import parallelize
from .passes.loop_reductions import lower_reductions
from .passes.loop_tile import tile
from .passes.loop_vectorize import vectorize

GRAPH_PASSES: list[tuple[str, Callable[[G.Program], G.Program]]] = [
    ("autodiff", differentiate),
    ("dce", eliminate_dead_code),
    ("fuse", fuse),
]
LOOP_PASSES: list[tuple[str, Callable[[L.LoopProgram], L.LoopProgram]]] = [
    ("tile", tile),
    ("lower_reductions", lower_reductions),
    ("parallelize", parallelize),
    ("vectorize", vectorize),
    ("plan_memory", plan_memory),
]
PASS_NAMES = ["check"] + [n for n, _ in GRAPH_PASSES] + ["lower"] + [n for n, _ in LOOP_PASSES] + ["render"]


@dataclass
class Artifact:
    graph: G.Program
    loops: L.LoopProgram
    entries: list[EntrySlots]
    llvm_ir: str


def _log(dump_after: str | None, name: str, text: Callable[[], str], out) -> None:
    if dump_after in (name, "all"):
        print(f"// ----- IR after {name}", file=out)
        print(text(), file=out)


def build(source: str, file: str = "<source>", dump_after: str | None = None,
          verify: bool | None = None, time_passes: bool = False, out=sys.stderr) -> Artifact:
    """Run the pipeline up to LLVM IR."""
    if dump_after is not None and dump_after != "all" and dump_after not in PASS_NAMES:
        raise ValueError(f"unknown pass '{dump_after}'; passes are: {', '.join(PASS_NAMES)}")
    if verify is None:
        verify = os.environ.get("DLC_VERIFY") == "1"
    timings = []

    def timed(name, f, *args):
        t0 = time.perf_counter()
        r = f(*args)
        timings.append((name, time.perf_counter() - t0))
        return r

    program = timed("check", frontend.parse_program, source, file)
    _log(dump_after, "check", lambda: G.print_program(program), out)
    for name, p in GRAPH_PASSES:
        program = timed(name, p, program)
        if verify:
            G.verify(program, name)
        _log(dump_after, name, lambda: G.print_program(program), out)
    loops, entries = timed("lower", lower, program)
    if verify:
        L.verify(loops, "lower", allow_reduce=True)
    _log(dump_after, "lower", lambda: L.print_program(loops), out)
    reduced = False  # Reduce expressions remain until lower_reductions
    for name, p in LOOP_PASSES:
        loops = timed(name, p, loops)
        reduced = reduced or p is lower_reductions
        if verify:
            L.verify(loops, name, allow_reduce=not reduced)
        _log(dump_after, name, lambda: L.print_program(loops), out)
    llvm_ir = timed("render", render, loops, entries, Path(file).stem)
    _log(dump_after, "render", lambda: llvm_ir, out)
    if time_passes:
        for name, t in timings:
            print(f"{name:>18}: {t * 1e3:8.2f} ms", file=out)
    return Artifact(program, loops, entries, llvm_ir)


def read_source(path_or_source: str | os.PathLike) -> tuple[str, str]:
    """(source, file name): a path to a .dl file, or the source text itself."""
    text = str(path_or_source)
    if "\n" not in text and "{" not in text:
        p = Path(text)
        return p.read_text(), str(p)
    return text, "<source>"
