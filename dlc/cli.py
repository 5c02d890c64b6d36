"""The `dlc` command: compile a .dl file, stop at any stage, summarise it.

Errors in the user's program print `file:line:col: error: ...` with the
source line and a caret, and exit 1; no traceback reaches the user.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from . import __version__, driver
from .api import read, summary
from .codegen import compiler
from .codegen.ptx import DEFAULT_ARCH
from .errors import CompileError, DlcError

EMITS = ("ast", "graph", "loops", "ll", "asm", "obj", "so", "lib", "ptx")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dlc", description="Compile neural networks written in .dl to native code.")
    ap.add_argument("--version", action="version", version=f"dlc {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="compile a .dl file", description="Compile a .dl file to a "
                       "shared library (default), or stop at an earlier stage with --emit.")
    c.add_argument("file", help="the .dl source file")
    c.add_argument("-o", "--output", help="output path (default: FILE with the --emit suffix; "
                   "'-' for standard output)")
    c.add_argument("--emit", choices=EMITS, default="so",
                   help="what to write: ast, graph (after autodiff+fusion), loops (loop IR), "
                        "ll (optimized LLVM IR), asm, obj, so (default), lib (for C: with "
                        "-o DIR/NAME, DIR/NAME.so, DIR/libNAME.a and the header DIR/NAME.h), "
                        "ptx (--target cuda: the kernels)")
    c.add_argument("--target", default="cpu", choices=driver.TARGETS,
                   help="code generation target: cpu (default) or cuda (PTX kernels in a host "
                        "library; ll, asm, obj and so are the host side)")
    c.add_argument("--arch", help=f"CUDA architecture for --target cuda (default {DEFAULT_ARCH}), "
                   "e.g. sm_90")
    c.add_argument("--cpu", help="LLVM CPU name for a portable build (default: this machine's)")
    c.add_argument("--dump-ir-after", metavar="PASS", choices=driver.PASS_NAMES + ["all"],
                   help=f"print the IR after a pass to stderr: {', '.join(driver.PASS_NAMES)}, all")
    c.add_argument("--time-passes", action="store_true", help="print each pass's time to stderr")
    s = sub.add_parser("summary", help="print layers, shapes and parameter counts",
                       description="Print a program's layers, output shapes and parameter counts.")
    s.add_argument("file", help="the .dl source file")
    args = ap.parse_args(argv)
    source = None
    try:
        source, file = read(args.file)
        if args.command == "summary":
            art = driver.build(source, file)
            print(summary(art.graph, art.loops))
            return 0
        return compile_command(args, source, file)
    except CompileError as e:
        print(e.render(), file=sys.stderr)
        n = len(e.diagnostics)
        if n > 1:
            print(f"{n} errors", file=sys.stderr)
        return 1
    except DlcError as e:
        print(f"dlc: error: {e}", file=sys.stderr)
        return 1
    except OSError as e:   # writing an output: a missing directory, a full disk, no permission
        print(f"dlc: error: cannot write '{e.filename}': {e.strerror or e}", file=sys.stderr)
        return 1


def compile_command(args, source: str, file: str) -> int:
    if args.emit == "ast":
        from . import frontend
        return write(args, (frontend.unparse(frontend.parse(source, file)) + "\n").encode())
    if args.emit == "ptx" and args.target != "cuda":
        raise DlcError("--emit ptx needs --target cuda")
    if args.arch and args.target != "cuda":
        raise DlcError("--arch applies to --target cuda only")
    if args.emit == "lib" and args.target != "cpu":
        raise DlcError("--emit lib builds for --target cpu only; a cuda program is a .so "
                       "(--emit so) loaded with dlc_program_load")
    art = driver.build(source, file, dump_after=args.dump_ir_after, time_passes=args.time_passes,
                       target=args.target, arch=args.arch)
    if args.emit == "ptx":
        return write(args, art.ptx.encode())
    if args.emit == "graph":
        from .ir.graph import print_program
        return write(args, print_program(art.graph).encode())
    if args.emit == "loops":
        from .ir.loops import print_program
        return write(args, print_program(art.loops).encode())
    t0 = time.perf_counter()
    status = native_code(args, art, file)
    if args.time_passes:   # LLVM and the linker: most of a big program's compile time
        print(f"{'llvm':>18}: {(time.perf_counter() - t0) * 1e3:8.2f} ms", file=sys.stderr)
    return status


def native_code(args, art, file: str) -> int:
    """Writes what --emit asks of LLVM: ll, asm, obj, so or lib."""
    if args.emit == "lib":
        from .codegen.library import write_library
        out = Path(args.output) if args.output else Path(file).with_suffix("")
        paths = write_library(art, file, out, args.cpu)
        print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
        return 0
    if args.emit == "so":
        lib = compiler.shared_library(art.llvm_modules, args.cpu)
        out = Path(args.output or Path(file).with_suffix(".so"))
        shutil.copyfile(lib, out)
        print(f"wrote {out}", file=sys.stderr)
        return 0
    return write(args, compiler.emit(art.llvm_modules, args.emit, args.cpu))


def write(args, data: bytes) -> int:
    suffix = {"ast": ".ast", "graph": ".graph", "loops": ".loops", "ll": ".ll", "asm": ".s", "obj": ".o",
              "ptx": ".ptx"}
    out = args.output or str(Path(args.file).with_suffix(suffix[args.emit]))
    if out == "-":
        sys.stdout.buffer.write(data)
    else:
        Path(out).write_bytes(data)
        print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
