"""The `dlc` command: compile a .dl file, stop at any stage, summarise it;
train it or run it on arrays of .npz files; draw its models.

Errors in the user's program print `file:line:col: error: ...` with the
source line and a caret, and exit 1; no traceback reaches the user.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import __version__, driver
from .api import read, summary
from .codegen import compiler
from .codegen.ptx import DEFAULT_ARCH
from .errors import CompileError, DlcError
from .progress import CompileProgress

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
    c.add_argument("--cpu", help="LLVM CPU name to build for, e.g. x86-64-v3 for any CPU with AVX2 "
                   "and FMA (default: $DLC_CPU, else this machine's)")
    c.add_argument("--dump-ir-after", metavar="PASS", choices=driver.PASS_NAMES + ["all"],
                   help=f"print the IR after a pass to stderr: {', '.join(driver.PASS_NAMES)}, all")
    c.add_argument("--time-passes", action="store_true", help="print each pass's time to stderr")
    s = sub.add_parser("summary", help="print layers, shapes and parameter counts",
                       description="Print a program's layers, output shapes and parameter counts.")
    s.add_argument("file", help="the .dl source file")
    t = sub.add_parser("train", help="train a program on arrays in a .npz file",
                       description="Train a train block on the arrays of a .npz file, named as its "
                       "inputs, with a progress bar; write the weights as safetensors.")
    t.add_argument("file", help="the .dl source file")
    t.add_argument("--data", required=True, help=".npz file of the training arrays")
    t.add_argument("--block", help="the train block (default: the program's only one)")
    t.add_argument("--epochs", type=int, default=1)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--seed", type=int, default=0, help="seeds the initial weights and the shuffling")
    t.add_argument("--val", help=".npz file of validation arrays: the model's inputs and the labels")
    t.add_argument("--model", help="the model --val runs (default: the program's only one)")
    t.add_argument("--metric", action="append", choices=["accuracy", "mse"],
                   help="computed on --val after each epoch (repeatable; default accuracy)")
    t.add_argument("--labels", default="t", help="the labels' name in the --val file (default t)")
    t.add_argument("--init", help="safetensors weights to start from")
    t.add_argument("--log-every", type=int, default=1, metavar="N",
                   help="print the line of the first, every N-th and the last epoch (default 1)")
    t.add_argument("-o", "--output", required=True, help="safetensors file for the trained weights")
    r = sub.add_parser("run", help="run a model on arrays in a .npz file",
                       description="Run a model on the arrays of a .npz file, named as its inputs; "
                       "write its outputs to a .npz file.")
    r.add_argument("file", help="the .dl source file")
    r.add_argument("--weights", help="safetensors weights (default: the initial ones of --seed)")
    r.add_argument("--data", required=True, help=".npz file of the input arrays")
    r.add_argument("--model", help="the model to run (default: the program's only one)")
    r.add_argument("--batch-size", type=int, default=256)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("-o", "--output", required=True, help=".npz file for the outputs")
    d = sub.add_parser("draw", help="draw each model's layers as a graph",
                       description="Draw each model's layers, shapes and parameter counts as a "
                       "Graphviz graph (svg, png, pdf, ... need the `dot` program; dot is the text).")
    d.add_argument("file", help="the .dl source file")
    d.add_argument("-o", "--output", help="output path (default: FILE.svg; with --format dot, "
                   "standard output)")
    d.add_argument("--format", help="dot, svg, png, pdf, ... (default: the output's suffix)")
    e = sub.add_parser("export", help="write a model as an ONNX model",
                       description="Write one model's inference graph, with its weights, as an ONNX "
                       "model (needs the onnx package: pip install 'dlc[onnx]').")
    e.add_argument("file", help="the .dl source file")
    e.add_argument("--model", help="the model to export (default: the program's only one)")
    e.add_argument("--weights", help="safetensors weights (default: the initial ones of --seed)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    i = sub.add_parser("import", help="translate an ONNX model to a .dl program",
                       description="Translate an ONNX model to a .dl program (one model) and write its "
                       "weights as safetensors beside it (needs the onnx package).")
    i.add_argument("file", help="the .onnx file")
    i.add_argument("-o", "--output", required=True, help="the .dl file to write; the weights go to "
                   "the same path with suffix .safetensors")
    i.add_argument("--model", help="the model's name (default: from the output's file name)")
    i.add_argument("--loss", help="add a train block with this loss, e.g. cross_entropy or mse")
    i.add_argument("--optimizer", default="sgd(lr=0.01)", help="the train block's optimizer "
                   "(default sgd(lr=0.01))")
    args = ap.parse_args(argv)
    source = None
    try:
        if args.command in ("export", "import"):   # import reads an .onnx file, not a .dl one
            from .onnx.cli import export_command, import_command
            return (export_command if args.command == "export" else import_command)(args)
        source, file = read(args.file)
        if args.command == "summary":
            art = driver.build(source, file)
            print(summary(art.graph, art.loops))
            return 0
        if args.command == "draw":
            return draw_command(args, source, file)
        if args.command in ("train", "run"):
            return (train_command if args.command == "train" else run_command)(args)
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


def load_npz(path: str) -> dict:
    """The arrays of a .npz file (no pickled objects)."""
    import zipfile

    import numpy as np
    try:
        with open(path, "rb"):   # a missing file: OSError, not "not a .npz"
            pass
        if not zipfile.is_zipfile(path):
            raise DlcError(f"data '{path}' is not a .npz file (numpy.savez writes them)")
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:   # missing, unreadable, object arrays
        raise DlcError(f"cannot read data '{path}': {getattr(e, 'strerror', None) or e}") from None


def only(prog, kind: str, given: str | None, what: str, option: str) -> str:
    """`given`, or the program's only function of `kind` ('model', 'train')."""
    if given:
        return given
    names = [n for n, fn in prog.graph.functions.items() if fn.kind == kind]
    if len(names) != 1:
        raise DlcError(f"this program has {len(names)} {what}s ({', '.join(names) or 'none'}); "
                       f"name one with {option}")
    return names[0]


def train_command(args) -> int:
    from . import api, training
    prog = api.compile(args.file, seed=args.seed)
    block = only(prog, "train", args.block, "train block", "--block")
    if args.init:
        prog.load(args.init)
    validation, metrics = None, ()
    if args.val:
        model = only(prog, "model", args.model, "model", "--model")
        validation = training.Validation(model, load_npz(args.val), args.labels)
        metrics = args.metric or ["accuracy"]
    history = prog.fit(block, load_npz(args.data), epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed, validation=validation, metrics=metrics,
                       log_every=args.log_every)
    prog.save(args.output)
    figures = "".join(f", {k} {v[-1]:.4f}" for k, v in history.metrics.items())
    print(f"trained {history.epochs} epochs in {sum(history.time):.2f} s: loss "
          f"{history.loss[-1]:.4f}{figures}; wrote {args.output}", file=sys.stderr)
    return 0


def run_command(args) -> int:
    import numpy as np
    from . import api
    prog = api.compile(args.file, seed=args.seed)
    model = only(prog, "model", args.model, "model", "--model")
    if args.weights:
        prog.load(args.weights)
    out = prog.predict(model, load_npz(args.data), batch_size=args.batch_size)
    with open(args.output, "wb") as f:   # a path of ours: savez would add .npz to a name
        np.savez(f, **out)
    print(f"wrote {args.output}: " + ", ".join(f"{k} {list(v.shape)}" for k, v in out.items()),
          file=sys.stderr)
    return 0


def draw_command(args, source: str, file: str) -> int:
    from . import draw
    fmt = args.format or (Path(args.output).suffix.lstrip(".") if args.output else "svg")
    if fmt in ("dot", "gv") and args.output in (None, "-"):
        sys.stdout.write(draw.dot(source, file))
        return 0
    out = args.output or str(Path(args.file).with_suffix("." + fmt))
    draw.draw(source, file, out, fmt)
    print(f"wrote {out}", file=sys.stderr)
    return 0


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
    progress = CompileProgress(Path(file).name)
    try:
        return compile_to(args, source, file, progress)
    finally:
        progress.done()


def compile_to(args, source: str, file: str, progress: CompileProgress) -> int:
    with tempfile.TemporaryDirectory(prefix="dlc-build-") as d, compiler.Build(Path(d), args.cpu) as build:
        # A library's kernels are compiled as they are rendered.
        streamed = args.emit == "so" and args.target == "cpu"
        art = driver.build(source, file, dump_after=args.dump_ir_after, time_passes=args.time_passes,
                           target=args.target, arch=args.arch, progress=progress, cpu=args.cpu,
                           sink=build.add if streamed else None)
        return emit_artifact(args, art, file, progress, build if streamed else None)


def emit_artifact(args, art, file: str, progress: CompileProgress, build) -> int:
    if args.emit == "ptx":
        return write(args, art.ptx.encode())
    if args.emit == "graph":
        from .ir.graph import print_program
        return write(args, print_program(art.graph).encode())
    if args.emit == "loops":
        from .ir.loops import print_program
        return write(args, print_program(art.loops).encode())
    t0 = time.perf_counter()
    status = native_code(args, art, file, progress, build)
    if args.time_passes:   # LLVM and the linker: most of a big program's compile time
        print(f"{'llvm':>18}: {(time.perf_counter() - t0) * 1e3:8.2f} ms", file=sys.stderr)
    return status


def native_code(args, art, file: str, progress: CompileProgress, build) -> int:
    """Writes what --emit asks of LLVM: ll, asm, obj, so or lib."""
    if args.emit == "lib":
        from .codegen.library import write_library
        out = Path(args.output) if args.output else Path(file).with_suffix("")
        paths = write_library(art, file, out, args.cpu)
        print(f"wrote {', '.join(map(str, paths))}", file=sys.stderr)
        return 0
    if args.emit == "so":
        lib = compiler.shared_library(art.llvm_modules, args.cpu, progress=progress, build=build)
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
