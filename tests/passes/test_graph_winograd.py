"""The `winograd` graph pass: which convolutions it replaces, what it
absorbs (bias add, relu) and where it must not, its place in the pipeline
(cpu only), that its products are register-blocked by `tile`, and that the
numbers (outputs and gradients) are those of the program without it."""
import numpy as np
import pytest

import dlc
from dlc import driver, frontend
from dlc.ir import loops as L
from dlc.ops.conv import CONV2D
from dlc.ops.elementwise import RELU
from dlc.ops.pool import MAXPOOL
from dlc.ops.winograd import WINOGRAD_CONV2D
from dlc.passes import loop_tile
from dlc.passes.graph_winograd import chunk_rows, winograd

from .helpers import kernels, loops_after

SRC = """
model cnn {
    input x: f32[batch, 3, 16, 16]
    h = conv2d(x, 16, 3, padding=1, name="c1") |> relu
    h = conv2d(h, 16, 3, padding=1, name="c2") |> relu
    h = conv2d(h, 20, 3, padding=(1, 0), name="c3") |> maxpool(2)
    h = conv2d(h, 16, 3, name="c4") |> flatten
    output y = dense(h, 5, name="fc")
}
train fit {
    input x: f32[batch, 3, 16, 16]
    input t: i32[batch]
    loss = cross_entropy(cnn(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


def graph_before_winograd(src):
    program = frontend.parse_program(src, "<test>")
    for name, p in driver.graph_passes("cpu"):
        if name == "winograd":
            return program
        program = p(program)


def ops(fn):
    return [n.op for n in fn.nodes]


def test_replaces_eligible_convolutions_and_absorbs_bias_and_relu():
    program = winograd(graph_before_winograd(SRC))
    for name in ("cnn", "fit"):
        fn = program.functions[name]
        convs = [n for n in fn.nodes if n.op is WINOGRAD_CONV2D and not n.attrs["flip"]]
        # c1 has 3 input channels (< MIN_CHANNELS), c4's output is 6x5
        # (< MIN_CHUNK_TILES tiles): they stay conv2d.
        assert [n.inputs[1].name for n in fn.nodes if n.op is CONV2D] == ["c1.weight", "c4.weight"]
        assert [n.inputs[1].name for n in convs] == ["c2.weight", "c3.weight"]
        # conv2d's padding folds into the op: it reads c1's relu, not a pad2d
        assert [n.inputs[0].node.op for n in convs] == [RELU, WINOGRAD_CONV2D]
        assert [n.attrs["padding"] for n in convs] == [(1, 1), (1, 0)]
        c2, c3 = convs
        # c2: bias and relu absorbed; c3: bias only (no relu follows).
        assert [v.name for v in c2.inputs[1:]] == ["c2.weight", "c2.bias"] and c2.attrs["relu"]
        assert [v.name for v in c3.inputs[1:]] == ["c3.weight", "c3.bias"] and not c3.attrs["relu"]
        assert c3.attrs["size"] == (16, 14)
        # c3's max pooling (2x2, stride 2: the tiles) is absorbed, except in
        # the train entry, whose pooling gradient reads c3's output.
        pooled = name == "cnn"
        assert c3.attrs["pool"] == pooled
        assert c3.out.type.shape[2:] == ((8, 7) if pooled else (16, 14))
        assert (MAXPOOL in ops(fn)) == (not pooled)
        assert ops(fn).count(RELU) == 1   # c1's
    # The gradients are conv2d's: its weight gradient ops remain; the input
    # gradients of c2, c3 and c4 (3x3, stride 1, 16+ channels each way) are
    # Winograd convolutions over the flipped filters.
    fit = program.functions["fit"]
    assert "conv2d_weight_grad" in {n.op.name for n in fit.nodes}
    assert "conv2d_input_grad" not in {n.op.name for n in fit.nodes}
    flips = [n for n in fit.nodes if n.op is WINOGRAD_CONV2D and n.attrs["flip"]]
    assert sorted(n.inputs[1].name for n in flips) == ["c2.weight", "c3.weight", "c4.weight"]


def test_keeps_values_other_readers_need():
    src = """
model m {
    input x: f32[batch, 16, 8, 8]
    a = conv2d(x, 16, 3, padding=1, name="c")
    output pre = a
    output y = relu(a)
}
"""
    fn = winograd(graph_before_winograd(src)).functions["m"]
    conv = next(n for n in fn.nodes if n.op is WINOGRAD_CONV2D)
    # The pre-activation is an output: the bias add is absorbed, relu is not.
    assert len(conv.inputs) == 3 and not conv.attrs["relu"]
    assert fn.outputs["pre"] is conv.out and fn.outputs["y"].node.op is RELU


def test_runs_for_cpu_only():
    assert "winograd" in [n for n, _ in driver.graph_passes("cpu")]
    assert "winograd" not in [n for n, _ in driver.graph_passes("cuda")]


def test_chunks_fit_and_share_out_an_image():
    assert chunk_rows(16, 16, 32, 32) == 4      # 64 tiles per chunk, 4 chunks per image
    assert chunk_rows(8, 8, 64, 64) == 4        # at least two chunks per image
    assert chunk_rows(7, 3, 16, 16) == 7        # 7 is prime: the whole image
    assert chunk_rows(4, 4, 16, 16) == 4        # two chunks would be too narrow
    assert chunk_rows(1, 1, 16, 16) == 1


def test_products_are_register_blocked():
    loops = loops_after(SRC, "tile")
    for entry in ("cnn", "fit"):
        ks = [k for name, k in kernels(loops, entry).items() if name.startswith("winograd_conv2d")]
        # fit: also the input gradients of c2, c3 and c4
        assert len(ks) == (2 if entry == "cnn" else 5)
        for k in ks:
            accs = [s.buf.name for s in L.stmts_of(k.body) if isinstance(s, L.Allocate)]
            assert "acc_outer" in accs
            assert not any(isinstance(x, L.Reduce) for e in L.exprs_of(k.body) for x in L.subexprs(e))
            assert any(isinstance(s, L.For) and s.kind == "parallel" for s in L.stmts_of(k.body))


@pytest.mark.parametrize("vector", [(64, 32), (32, 16)], ids=["avx512", "avx2"])
def test_numbers_match_the_program_without_it(monkeypatch, vector):
    # With 8-lane vectors the products' chunks (28 and 32 tiles) end in
    # ragged register blocks: masked stores into the chunk's scratch.
    monkeypatch.setattr(loop_tile, "vector_registers", lambda: vector)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 16, 16)).astype(np.float32)
    t = rng.integers(0, 5, 3).astype(np.int32)
    with_pass = dlc.compile(SRC)
    monkeypatch.setattr(driver, "GRAPH_PASSES", [p for p in driver.GRAPH_PASSES if p[0] != "winograd"])
    without = dlc.compile(SRC)
    for k, v in with_pass.params.items():
        without.params[k][...] = v
    # Winograd reorders the sums: fp32 rtol 1e-5 forward, 1e-4 gradients.
    np.testing.assert_allclose(with_pass.run("cnn", x=x)["y"], without.run("cnn", x=x)["y"],
                               rtol=1e-5, atol=1e-5)
    g1, g2 = with_pass.grads("fit", x=x, t=t), without.grads("fit", x=x, t=t)
    for name in g1:
        np.testing.assert_allclose(g1[name], g2[name], rtol=1e-4, atol=1e-5, err_msg=name)
    l1 = with_pass.train("fit", x=x, t=t)
    l2 = without.train("fit", x=x, t=t)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)


def test_staged_rows_read_with_vector_loads():
    """The staged input rows fold conv2d's padding into spans of plain
    loads: the vectorized loops that read the convolution's input read it
    with stride 2 (rendered as vector loads and a shuffle), no selects."""
    loops = loops_after(SRC, "vectorize")
    convs = [k for name, k in kernels(loops, "cnn").items() if name.startswith("winograd_conv2d")]
    assert len(convs) == 2
    for k in convs:
        written = {s.buf for s in L.stmts_of(k.body) if isinstance(s, L.Store)}
        inputs = {b for b in L.buffers_of(k.body) if b.kind == "workspace"} - written
        assert len(inputs) == 1   # the output of c1's kernel, or c2's
        vec = [s for s in L.stmts_of(k.body) if isinstance(s, L.For) and s.kind == "vectorized"]
        reads = [(x, s) for s in vec for e in L.exprs_of(s.body) for x in L.subexprs(e)
                 if isinstance(x, L.Load) and x.buf in inputs]
        assert reads and all(L.stride_of(x.index, s.var) == 2 for x, s in reads)
        assert not any(isinstance(x, L.Select) for _, s in reads for e in L.exprs_of(s.body)
                       for x in L.subexprs(e))
