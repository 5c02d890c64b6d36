"""The loop IR printer (`--dump-ir-after`): no parentheses that precedence
makes redundant, the ones it needs kept, and an index's remainder as the
passes write it (a - (a / c) * c) printed as a % c."""
import re

from dlc import driver
from dlc.ir import loops as L

from .helpers import CONV_TRAIN_SRC

MLP_SRC = """
model mlp {
    input x: f32[batch, 784]
    h = dense(x, 256, name="fc1") |> relu
    output y = dense(h, 10, name="out")
}
"""

I = lambda v: L.Const(v, L.INDEX)
p, t = L.Var("p"), L.Var("time")


def test_precedence_drops_redundant_parentheses_only():
    assert L.print_expr((p * 4 + 1) * 8) == "(p * 4 + 1) * 8"
    assert L.print_expr(p * t * 8) == "p * time * 8"
    assert L.print_expr(p - (t - 1)) == "p - (time - 1)"
    assert L.print_expr(p / (t * 2)) == "p / (time * 2)"
    assert L.print_expr(L.cmp("<", p + 1, t)) == "p + 1 < time"


def test_constants_of_index_arithmetic_gather():
    """A flat index over a filter's 3 x 3 taps reads `* 9`, not `* 3 * 3`."""
    assert L.print_expr((p * 32 + t) * 3 * 3) == "(p * 32 + time) * 9"
    assert L.print_expr(p + 1 + 1) == "p + 2"
    assert L.print_expr(p + 2 - 5) == "p - 3"
    assert L.print_expr(p - 1 + 1) == "p"
    assert L.print_expr(t * 2 * 17 + p) == "time * 34 + p"


def test_remainder_prints_as_percent():
    assert L.print_expr(p - (p / t) * t) == "p % time"
    assert L.print_expr((p - (p / t) * t) * 128 + 3) == "p % time * 128 + 3"
    # not a remainder: a different divisor
    assert L.print_expr(p - (p / t) * I(3)) == "p - p / time * 3"


def test_collapsed_loops_index_folds_back():
    """A fused loop's (p / c) * c + p % c is p: the optimizer's update over
    a weight matrix indexes it flat, and vectorizes."""
    assert L.print_expr((p / I(4096)) * I(4096) + (p - (p / I(4096)) * I(4096))) == "p"


def test_index_division_folds():
    """0 / x, c / c' (truncated, as sdiv) and x / 1 fold when built: a chunk
    loop's grain, the body at p = 0, printed `0 % (...)` before."""
    assert L.print_expr(I(0) / (t + 7)) == "0"
    assert L.print_expr(I(-7) / I(2)) == "-3"
    assert L.print_expr(t / I(1)) == "time"
    assert L.print_expr(t - (I(0) - (I(0) / t) * t)) == "time"
    assert L.print_expr(I(6) / t) == "6 / time"   # a symbolic divisor may be anything
    art = driver.build(MLP_SRC)
    text = L.print_program(art.loops)
    assert "parallel" in text and not re.search(r"\b0 [/%]", text)


def test_kernels_are_named_after_their_layers():
    """A kernel that reads or writes one layer's parameters or their
    gradients carries the layer's name, printed and in its symbol."""
    art = driver.build(CONV_TRAIN_SRC)
    fit = next(e for e in art.loops.entries if e.name == "fit")
    layers = {k.name.rsplit("_", 1)[0]: k.layer for k in fit.kernels if k.layer}
    assert layers["conv2d_weight_grad"] == "conv" and layers["gemm"] == "fc"
    assert {k.layer for k in fit.kernels if k.name.startswith("update")} <= {"conv", "fc", ""}
    text = L.print_program(art.loops)
    assert "kernel relu_1 (conv):" in text
    symbols = str(art.llvm_modules[1]) + "".join(str(m) for m in art.llvm_modules[2:])
    assert "dlc.kernel.net.relu_1.conv" in symbols
