"""LLVM IR modules -> one optimized module -> object code, with llvmlite alone.

The compiler uses these functions in its own process, and also runs this
file as a worker process (`python -P objects.py CPU DIRECTORY`) to optimize
and compile a program's kernel modules on several cores at once, while the
renderer still makes the others: llvmlite lets one thread of a process into
LLVM at a time. The file imports nothing from dlc, whose import takes longer
than a worker can spare.
"""
from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import llvmlite.binding as llvm

OPT_LEVEL = 3


@functools.cache
def _init() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def host_target() -> tuple[str, str, str]:
    """(triple, cpu, features) of this machine."""
    _init()
    return llvm.get_process_triple(), llvm.get_host_cpu_name(), llvm.get_host_cpu_features().flatten()


def target_machine(cpu: str | None = None):
    triple, host_cpu, features = host_target()
    if cpu and cpu != host_cpu:
        features = ""  # a named CPU brings its own feature set
    target = llvm.Target.from_triple(triple)
    return target.create_target_machine(cpu=cpu or host_cpu, features=features,
                                        opt=OPT_LEVEL, reloc="pic", codemodel="default")


def load(texts: list[str], tm, whole: bool = True):
    """Parses and verifies the modules and links them into one for `tm`.
    Functions one module defines for another are hidden externals; `whole`
    says the texts are the whole program, so they become internal, as if it
    had been written as one module. Raises RuntimeError on invalid IR."""
    linked = None
    for text in texts:
        mod = llvm.parse_assembly(text)
        mod.verify()
        mod.triple, mod.data_layout = tm.triple, str(tm.target_data)
        if linked is None:
            linked = mod
        else:
            linked.link_in(mod)
    if whole:
        for fn in linked.functions:
            if not fn.is_declaration and fn.visibility == llvm.Visibility.hidden:
                fn.linkage = "internal"
    return linked


def optimize(mod, tm) -> None:
    """O3 with loop vectorization, in place. Not SLP: the loop passes
    vectorize what pays, and the SLP vectorizer spent 0.9 s on each of the
    CIFAR CNN's Winograd kernels (its compile time 3.3 -> 1.6 s of LLVM),
    for no change in any benchmark (cnn, mlp, lstm: within noise)."""
    pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
    pto.loop_vectorization = True
    pto.slp_vectorization = False
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def compile_file(path: Path, out: Path, tm) -> None:
    """One module's IR file -> its object file, which appears whole (a part
    file renamed into place: another process waits for it)."""
    mod = load([path.read_text()], tm, whole=False)
    optimize(mod, tm)
    part = out.with_name(out.name + ".part")
    part.write_bytes(tm.emit_object(mod))
    os.replace(part, out)


def claim(directory: Path, n: int, tm) -> bool:
    """Compiles module n of a build directory (n.ll -> n.o) unless another
    process took it first. Taking it is renaming n.ll, which one process
    alone can do."""
    taken = directory / f"{n}.ll.{os.getpid()}"
    try:
        os.rename(directory / f"{n}.ll", taken)
    except FileNotFoundError:
        return False
    compile_file(taken, directory / f"{n}.o", tm)
    return True


def main(argv: list[str]) -> None:
    """Worker: CPU ('' for the host's) DIRECTORY. Reads module numbers from
    standard input, one a line, as the modules are written, and compiles
    each that no other process took first."""
    cpu, directory = argv
    tm = target_machine(cpu or None)
    for line in sys.stdin:
        claim(Path(directory), int(line), tm)


if __name__ == "__main__":
    main(sys.argv[1:])
