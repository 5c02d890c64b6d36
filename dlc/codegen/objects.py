"""LLVM IR modules -> one optimized module -> object code, with llvmlite alone.

The compiler uses these functions in its own process, and also runs this
file as a worker process (`python -P objects.py CPU OUT.o IN.ll...`) to
optimize and compile a big program's modules on several cores at once:
llvmlite lets one thread of a process into LLVM at a time. The file imports
nothing from dlc, whose import takes longer than a worker can spare.
"""
from __future__ import annotations

import functools
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
    """O3 with loop and SLP vectorization, in place."""
    pto = llvm.create_pipeline_tuning_options(speed_level=OPT_LEVEL)
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pb = llvm.create_pass_builder(tm, pto)
    pb.getModulePassManager().run(mod, pb)


def main(argv: list[str]) -> None:
    """Worker: CPU ('' for the host's) OUT.o IN.ll...; part of a program."""
    cpu, out, *inputs = argv
    tm = target_machine(cpu or None)
    mod = load([Path(p).read_text() for p in inputs], tm, whole=False)
    optimize(mod, tm)
    Path(out).write_bytes(tm.emit_object(mod))


if __name__ == "__main__":
    main(sys.argv[1:])
