"""Loop tiling: matmul-like kernels become register-blocked vectorized
micro-kernels, for the forward, input-gradient and weight-gradient products,
with the same numbers as the untiled kernels (odd sizes exercise the edge
tiles, batch 1 the single-row path)."""
import numpy as np
import pytest

from dlc.ir import loops as L
from dlc.passes import loop_tile

from .helpers import compile_without, kernels, loops_after, loops_of

SRC = """
model net {
    input x: f32[batch, 37]
    h = dense(x, 29, name="fc1") |> relu
    output y = dense(h, 13, name="fc2")
}
train fit {
    input x: f32[batch, 37]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


def matmul_kernels(prog: L.LoopProgram, entry: str) -> list[L.Kernel]:
    return [k for k in kernels(prog, entry).values()
            if any(isinstance(x, L.Load) and x.buf.name.startswith("acc_") for e in L.exprs_of(k.body)
                   for x in L.subexprs(e))]


def test_every_product_is_tiled_in_both_forms():
    prog = loops_after(SRC, "tile")
    fwd = matmul_kernels(prog, "net")
    assert len(fwd) == 2
    # dense forward (x W^T): both operands contiguous along k: the dot form
    for k in fwd:
        assert any(isinstance(x, L.LaneSum) for e in L.exprs_of(k.body) for x in L.subexprs(e))
        assert not any(isinstance(x, L.Reduce) for e in L.exprs_of(k.body) for x in L.subexprs(e))
    # training: 2 forward, 2 input-gradient (fc1's is not needed: x is an input), 2 weight-gradient
    train = matmul_kernels(prog, "fit")
    assert len(train) == 5
    outer = [k for k in train if any(s.buf.name == "acc_outer" for s in L.stmts_of(k.body)
                                     if isinstance(s, L.Allocate))]
    assert len(outer) == 3
    for k in train:
        kinds = {lp.kind for lp in loops_of(k.body)}
        assert {"vectorized", "unrolled"} <= kinds, k.name
        # accumulators: constant-size locals, indexed only by unrolled / vectorized loops
        for a in (s.buf for s in L.stmts_of(k.body) if isinstance(s, L.Allocate)):
            assert isinstance(a.size, L.Const) and a.size.value <= 32 * 64


@pytest.mark.parametrize("vector", [(64, 32), (32, 16)], ids=["avx512", "avx2"])
def test_numbers_unchanged(monkeypatch, vector):
    monkeypatch.setattr(loop_tile, "vector_registers", lambda: vector)
    tiled = compile_without(SRC)
    plain = compile_without(SRC, skip=("tile",))
    rng = np.random.default_rng(1)
    for batch in (1, 7, 20):
        x = rng.normal(size=(batch, 37)).astype(np.float32)
        t = rng.integers(0, 13, size=batch).astype(np.int32)
        np.testing.assert_allclose(tiled.run("net", x=x)["y"], plain.run("net", x=x)["y"],
                                   rtol=1e-5, atol=1e-5)
        g1, g2 = tiled.grads("fit", x=x, t=t), plain.grads("fit", x=x, t=t)
        for name in g1:
            np.testing.assert_allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_register_model_fits_the_register_file():
    for form in ("outer", "dot"):
        for regs in (16, 32):
            mr, nr = loop_tile.choose_blocks(form, None, None, 8, regs)
            need = mr * nr + (nr + 1 if form == "outer" else mr + 1)
            assert need <= regs and mr * nr >= 8
    # a constant extent smaller than the best block narrows it
    assert loop_tile.choose_blocks("outer", 2, 512, 16, 32)[0] <= 2
    assert loop_tile.choose_blocks("dot", None, 3, 16, 32)[1] <= 3
