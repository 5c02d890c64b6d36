"""`dlc compile --emit=lib`: a program as a C library.

From the program's objects (compiler.object_files) it writes, next to
each other:
  <name>.so    the program library (exports `dlc_program`), for
               dlc_program_load and the Python API;
  lib<name>.a  the compiled object, exporting the descriptor as
               `<name>_program` (so several programs link into one binary),
               and the typed functions of the header (dlc/codegen/header.py),
               compiled by the system C compiler;
  <name>.h     the header.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import ToolError
from . import compiler, header

PKG_DIR = Path(__file__).resolve().parents[1]


def include_dir() -> Path:
    """The runtime's headers: installed in the package (a wheel), or in the
    source checkout."""
    for d in (PKG_DIR / "include", PKG_DIR.parent / "runtime" / "include"):
        if (d / "dlc" / "runtime.h").is_file():
            return d
    raise ToolError(["dlc"], "cannot find the dlc runtime headers (dlc/runtime.h)")


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise ToolError(cmd, done.stdout + done.stderr)


def write_library(art, source_file: str, out: Path, cpu: str | None = None) -> list[Path]:
    """Writes out.so, lib<out.name>.a and out.h; returns their paths."""
    itf = header.Interface(out.name, source_file, art.loops, art.entries)
    out.parent.mkdir(parents=True, exist_ok=True)
    so = out.parent / f"{out.name}.so"
    archive = out.parent / f"lib{out.name}.a"
    h = out.parent / f"{out.name}.h"
    cc = os.environ.get("CC") or shutil.which("cc") or "cc"
    ar = os.environ.get("AR") or shutil.which("ar") or "ar"
    objcopy = os.environ.get("OBJCOPY") or shutil.which("objcopy") or "objcopy"
    with tempfile.TemporaryDirectory(dir=out.parent) as d:
        tmp = Path(d)
        program = compiler.object_files(art.llvm_modules, tmp, cpu)
        compiler.link_shared(program, so)
        # The archive's program is one object: kernels (hidden symbols shared
        # between the compiled parts) made local, since two programs linked
        # into one binary may name kernels alike; the descriptor renamed.
        objects = [tmp / f"{itf.prefix}.o"]
        _run([cc, "-r", "-o", str(tmp / "program.o"), *map(str, program)])
        _run([objcopy, "--localize-hidden", "--redefine-sym", f"dlc_program={itf.prefix}_program",
              str(tmp / "program.o"), str(objects[0])])
        (tmp / h.name).write_text(header.header(itf))
        for part, text in (("session", header.session_source(itf)),
                           ("bare", header.bare_source(itf))):
            src = tmp / f"{itf.prefix}_{part}.c"
            src.write_text(text)
            objects.append(src.with_suffix(".o"))
            _run([cc, "-std=c11", "-O2", "-fPIC", "-I", str(tmp), "-I", str(include_dir()),
                  "-c", str(src), "-o", str(objects[-1])])
        _run([ar, "rcs", str(tmp / archive.name), *map(str, objects)])
        os.replace(tmp / archive.name, archive)
        os.replace(tmp / h.name, h)
    return [so, archive, h]
