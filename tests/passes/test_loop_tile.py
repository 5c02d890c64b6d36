"""Loop tiling: matmul-like kernels become register-blocked vectorized
micro-kernels, for the forward, input-gradient and weight-gradient products,
with the same numbers as the untiled kernels (odd sizes exercise the edge
tiles, batch 1 the single-row path)."""
import numpy as np
import pytest

from dlc.ir import loops as L
from dlc.passes import loop_tile

from .helpers import CONV_TRAIN_SRC, assert_tiled_like_untiled, compile_without, kernels, loops_after, loops_of

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
        assert_tiled_like_untiled(tiled, plain, "net", x, t)


def test_rows_past_the_l2_band_are_tiled_in_bands(monkeypatch):
    """a's rows are split into bands that fit L2_BAND_BYTES (here 4 rows of
    37 floats), the band loop outermost; the bands still share the kernel
    out to threads and give the same numbers, ragged last band included."""
    monkeypatch.setattr(loop_tile, "L2_BAND_BYTES", 4 * 37 * 4)
    for k in matmul_kernels(loops_after(SRC, "tile"), "net"):
        band = loops_of(k.body)[0]
        assert band.var.name == "ib"
        assert any(lp.var.name == "it" and L.depends_on(lp.extent, band.var) for lp in loops_of(band.body))
    for k in matmul_kernels(loops_after(SRC, "parallelize"), "net"):
        assert loops_of(k.body)[0].kind == "parallel"   # bands and j tiles fused
    tiled = compile_without(SRC, num_threads=2)
    plain = compile_without(SRC, skip=("tile",))
    rng = np.random.default_rng(2)
    for batch in (3, 9, 301):
        x = rng.normal(size=(batch, 37)).astype(np.float32)
        t = rng.integers(0, 13, size=batch).astype(np.int32)
        assert_tiled_like_untiled(tiled, plain, "net", x, t)


def test_long_reductions_run_in_blocks_that_add_into_the_output(monkeypatch):
    """A weight gradient's sum over the batch passing L2_BLOCK_BYTES (here 5
    rows of both operands) runs in blocks of batch rows, the block loop
    outermost and serial around the parallel tiles, each block after the
    first adding to the sums before it: same numbers, ragged last block
    included."""
    monkeypatch.setattr(loop_tile, "L2_BLOCK_BYTES", 5 * (37 + 29) * 4)
    blocked = [k for k in matmul_kernels(loops_after(SRC, "parallelize"), "fit")
               if loops_of(k.body)[0].var.name == "kb"]
    assert len(blocked) == 2   # the two weight gradients (outer form, a plain sum)
    for k in blocked:
        kb = loops_of(k.body)[0]
        assert kb.kind == "serial" and loops_of(kb.body)[0].kind == "parallel"
    tiled = compile_without(SRC, num_threads=2)
    plain = compile_without(SRC, skip=("tile",))
    rng = np.random.default_rng(3)
    for batch in (3, 9, 301):
        x = rng.normal(size=(batch, 37)).astype(np.float32)
        t = rng.integers(0, 13, size=batch).astype(np.int32)
        assert_tiled_like_untiled(tiled, plain, "net", x, t)


def test_dot_form_weight_gradients_run_in_blocks_too(monkeypatch):
    """A convolution's weight gradient (the dot form: its rows are too
    narrow to vectorize, the sum over batch x pixels is) blocked over the
    batch: each block's lane sums add to the sums before it."""
    monkeypatch.setattr(loop_tile, "L2_BLOCK_BYTES", 2 * 4 * (6 * 12 * 20 + 3 * 14 * 22))
    blocked = [k for k in matmul_kernels(loops_after(CONV_TRAIN_SRC, "parallelize"), "fit")
               if loops_of(k.body)[0].var.name == "kb"
               and any(isinstance(x, L.LaneSum) for e in L.exprs_of(k.body) for x in L.subexprs(e))]
    assert blocked
    tiled = compile_without(CONV_TRAIN_SRC, num_threads=2)
    plain = compile_without(CONV_TRAIN_SRC, skip=("tile",))
    rng = np.random.default_rng(4)
    for batch in (1, 2, 7):
        x = rng.normal(size=(batch, 3, 12, 20)).astype(np.float32)
        t = rng.integers(0, 5, size=batch).astype(np.int32)
        assert_tiled_like_untiled(tiled, plain, "net", x, t)


def test_register_model_fits_the_register_file():
    for form in ("outer", "dot"):
        for regs in (16, 32):
            mr, nr = loop_tile.choose_blocks(form, None, None, 8, regs)
            need = mr * nr + (nr + 1 if form == "outer" else mr + 1)
            assert need <= regs and mr * nr >= 8
    # a constant extent smaller than the best block narrows it
    assert loop_tile.choose_blocks("outer", 2, 512, 16, 32)[0] <= 2
    assert loop_tile.choose_blocks("dot", None, 3, 1, 32)[1] <= 3


def test_register_model_avoids_row_by_row_edges_of_symbolic_rows():
    """With symbolic rows, a ragged edge runs row by row: on AVX2 (8 lanes,
    16 registers) the LSTM's 64-column panels take blocks of 16 columns, not
    the 24 that would run a third of the tiles row by row (input projection
    3.7x slower), and its recurrent product, over blocks of min(8, ...)
    examples, rows in blocks that divide 8. AVX-512's choices stay."""
    mr, nr = loop_tile.choose_blocks("outer", None, 64, 8, 16)
    assert 64 % (nr * 8) == 0 and mr * nr >= 8
    mr, nr = loop_tile.choose_blocks("outer", 8, 64, 8, 16, symbolic_rows=True)
    assert 8 % mr == 0 and 64 % (nr * 8) == 0
    assert loop_tile.choose_blocks("outer", 8, 64, 16, 32, symbolic_rows=True) == (4, 4)
    # constant rows: an edge block runs clamped at full cost, as before
    assert loop_tile.choose_blocks("outer", None, 64, 16, 32) == (4, 4)


def masked_loops(k: L.Kernel) -> list[L.For]:
    return [lp for lp in loops_of(k.body) if lp.kind == "vectorized" and not isinstance(lp.extent, L.Const)]


def test_edge_tiles_are_the_micro_kernel_on_masked_lanes():
    """A ragged edge runs the full micro-kernel: outer-form columns past the
    end are masked lanes, the rest of a dot product's k is one masked step
    whose inactive lanes leave the accumulators alone, and no scalar
    column-by-column path is left."""
    prog = loops_after(SRC, "tile")
    for k in matmul_kernels(prog, "fit") + matmul_kernels(prog, "net"):
        assert masked_loops(k), k.name
        names = {lp.var.name for lp in loops_of(k.body)}
        assert "rj" not in names and "kt" not in names, k.name
    for k in matmul_kernels(prog, "net"):   # dot: k = 37 or 29, not a multiple of the lanes
        tails = [lp for lp in masked_loops(k)
                 if any(isinstance(x, L.Select) for e in L.exprs_of(lp.body) for x in L.subexprs(e))]
        assert tails, k.name


CONV_SRC = """
model cnn {
    input x: f32[batch, 6, 14, WIDTH]
    output y = conv2d(x, 12, 5, name="c") |> relu
}
train fit {
    input x: f32[batch, 6, 14, WIDTH]
    input t: f32[batch, 12, 10, OUT]
    loss = mse(cnn(x), t)
    optimizer = sgd(lr=0.1)
}
"""


@pytest.mark.parametrize("vector,width", [((64, 32), 9), ((32, 16), 8), ((32, 16), 9)],
                         ids=["avx512-9", "avx2-8", "avx2-9"])
def test_narrow_rows_block_the_next_output_loop(monkeypatch, vector, width):
    """An output row that fits one vector is not the whole block: NR output
    rows are, one (masked) vector each, with the output height (10) not a
    multiple of NR; a row wider than a vector is blocked along itself. The
    numbers are the untiled ones."""
    monkeypatch.setattr(loop_tile, "vector_registers", lambda: vector)
    src = CONV_SRC.replace("WIDTH", str(width + 4)).replace("OUT", str(width))
    conv = matmul_kernels(loops_after(src, "tile"), "cnn")
    assert len(conv) == 1
    names = {lp.var.name for lp in loops_of(conv[0].body)}
    assert ("pt" in names) == (width <= vector[0] // 4)
    fast, plain = compile_without(src), compile_without(src, skip=("tile",))
    rng = np.random.default_rng(3)
    for batch in (1, 3):
        x = rng.normal(size=(batch, 6, 14, width + 4)).astype(np.float32)
        t = rng.normal(size=(batch, 12, 10, width)).astype(np.float32)
        assert_tiled_like_untiled(fast, plain, "cnn", x, t)

