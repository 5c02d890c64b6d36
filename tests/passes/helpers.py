"""Compile a program with some loop passes left out, to compare numbers."""
from __future__ import annotations

import numpy as np

from dlc import driver, frontend
from dlc.api import CompiledProgram
from dlc.codegen import compiler
from dlc.ir import loops as L
from dlc.lower import lower

# A convolution and a dense layer, trained: kernels of every kind, named after
# their layers.
CONV_TRAIN_SRC = """
model net {
    input x: f32[batch, 3, 12, 20]
    h = conv2d(x, 6, 3, padding=1, name="conv") |> relu |> flatten
    output y = dense(h, 5, name="fc")
}
train fit {
    input x: f32[batch, 3, 12, 20]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


def loops_after(src: str, upto: str, target: str = "cpu") -> L.LoopProgram:
    """The loop IR after pass `upto` of `target`'s pipeline (verified)."""
    program = frontend.parse_program(src, "<test>")
    for _, p in driver.graph_passes(target):
        program = p(program)
    loops, _ = lower(program, target)
    reduced = False
    for name, p in driver.LOOP_PASSES[target]:
        loops = p(loops)
        reduced = reduced or name == "lower_reductions"
        L.verify(loops, name, allow_reduce=not reduced)
        if name == upto:
            return loops
    raise ValueError(upto)


def compile_without(src: str, skip: tuple[str, ...] = (), num_threads: int = 1) -> CompiledProgram:
    art = driver.build(src, verify=True, skip_passes=skip)
    return CompiledProgram(art.graph, compiler.shared_library(art.llvm_modules), 0, num_threads,
                           loops=art.loops)


def kernels(prog: L.LoopProgram, entry: str) -> dict[str, L.Kernel]:
    e = next(e for e in prog.entries if e.name == entry)
    return {k.name: k for k in e.kernels}


def loops_of(s: L.Stmt) -> list[L.For]:
    return [x for x in L.stmts_of(s) if isinstance(x, L.For)]


def assert_tiled_like_untiled(tiled: CompiledProgram, plain: CompiledProgram, model: str,
                              x: np.ndarray, t: np.ndarray) -> None:
    """The model's output y and the gradients of train block `fit` agree
    (tiling reorders sums: fp32 rtol 1e-5 forward, 1e-4 gradients)."""
    np.testing.assert_allclose(tiled.run(model, x=x)["y"], plain.run(model, x=x)["y"],
                               rtol=1e-5, atol=1e-5)
    g1, g2 = tiled.grads("fit", x=x, t=t), plain.grads("fit", x=x, t=t)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5, err_msg=name)
