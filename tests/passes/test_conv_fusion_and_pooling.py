"""The `fuse` pass on convolutions and pooling, and the `lower_pooling`
pass: the IR after each has the expected form, and the numbers are those of
the program compiled without the pass."""
import numpy as np
import pytest
import torch

import dlc
from dlc import driver
from dlc.ir import loops as L
from dlc.ops.pool import MAXPOOL_ARGMAX, MAXPOOL_GRAD

F = torch.nn.functional


def net(pool: str) -> str:
    return f"""
model m {{
    input x: f32[batch, 3, 8, 8]
    h = conv2d(x, 4, 3, padding=1, name="c") |> relu
    output y = {pool} |> flatten
}}
train g {{
    input x: f32[batch, 3, 8, 8]
    input t: f32[batch, {4 * 16 if "2)" in pool else 4 * 64}]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}}
"""


def kernels(art, entry):
    return next(e for e in art.loops.entries if e.name == entry).kernels


def without(pass_name, monkeypatch):
    monkeypatch.setattr(driver, "GRAPH_PASSES", [p for p in driver.GRAPH_PASSES if p[0] != pass_name])


def run_both(src, monkeypatch, pass_name):
    """(outputs and grads with the pass, without it) on the same params."""
    rng = np.random.default_rng(0)
    x = np.zeros((2, 3, 8, 8), np.float32)   # zero rows: ties in the pooling windows
    x[:, :, 4:] = rng.normal(size=(2, 3, 4, 8))
    results = []
    for drop in (False, True):
        if drop:
            without(pass_name, monkeypatch)
        prog = dlc.compile(src)
        y = prog.run("m", x=x)["y"]
        t = np.random.default_rng(1).normal(size=y.shape).astype(np.float32)
        results.append((y, prog.grads("g", x=x, t=t), dict(prog.params)))
    return results


def test_conv_bias_relu_is_one_kernel_in_inference_and_training():
    art = driver.build(net("maxpool(h, 2)"))
    infer = kernels(art, "m")
    # The zero-padded input, conv + bias + relu (a tiled kernel: see
    # test_conv_tile.py), then disjoint maxpool + flatten: nothing else.
    assert [k.name for k in infer] == ["pad2d_0", "relu_1", "reshape_2"]
    # Training: conv + bias + relu still one kernel (relu's gradient reads its output).
    first = kernels(art, "g")[1]
    body = L.print_stmt(first.body)
    assert first.name.startswith("relu") and "c.weight" in body and "c.bias" in body


def test_overlapping_pool_is_not_fused_with_its_producer():
    art = driver.build(net("maxpool(h, 3, stride=1, padding=1)"))
    names = [k.name for k in kernels(art, "m")]
    assert [n.split("_")[0] for n in names] == ["pad2d", "relu", "reshape"]


def test_flatten_of_a_stored_value_is_a_view():
    """A reshape of a value in memory is not inlined: no kernel, and the
    dense layer reading it keeps its plain index, so `tile` blocks it."""
    from tests.passes.helpers import loops_after
    src = """
model m {
    input x: f32[batch, 3, 8, 8]
    h = conv2d(x, 4, 3, padding=1, name="c") |> relu |> flatten
    output y = dense(h, 5, name="fc")
}
"""
    prog = loops_after(src, "tile")
    ks = next(e for e in prog.entries if e.name == "m").kernels
    assert [k.name.split("_")[0] for k in ks] == ["pad2d", "relu", "add"]
    assert any(isinstance(s, L.Allocate) and s.buf.name == "acc_dot" for s in L.stmts_of(ks[-1].body))


POOL_THEN_CONV = 'maxpool(h, 2) |> conv2d(4, 3, padding=1, name="d")'


def test_pool_is_computed_inside_the_next_convs_padding():
    """A pooling read by a padded conv is inlined into the pad2d kernel
    (read once per element, the border not at all); the pad kernels copy
    their rows with stride-1 vector stores, without selects, and the 2x2
    pooling (a chain of maxima, no reduction loop) is vectorized too."""
    from tests.passes.helpers import loops_after
    names = [k.name for k in kernels(driver.build(net(POOL_THEN_CONV)), "m")]
    assert [n.split("_")[0] for n in names] == ["pad2d", "relu", "pad2d", "add", "reshape"]
    prog = loops_after(net(POOL_THEN_CONV), "vectorize")
    pads = [k for k in next(e for e in prog.entries if e.name == "m").kernels if k.name.startswith("pad2d")]
    for k in pads:
        assert not any(isinstance(x, L.Select) for e in L.exprs_of(k.body) for x in L.subexprs(e))
    first_rows = [s for s in L.stmts_of(pads[0].body) if isinstance(s, L.For) and s.kind == "vectorized"
                  and isinstance(s.body, L.Store) and isinstance(s.body.value, L.Load)]
    assert first_rows
    pooled_rows = [s for s in L.stmts_of(pads[1].body) if isinstance(s, L.For) and s.kind == "vectorized"
                   and "max(" in L.print_stmt(s)]
    assert pooled_rows


@pytest.mark.parametrize("pool", ["maxpool(h, 2)", "maxpool(h, 3, stride=1, padding=1)", POOL_THEN_CONV])
def test_fuse_keeps_the_numbers(pool, monkeypatch):
    (y1, g1, _), (y2, g2, _) = run_both(net(pool), monkeypatch, "fuse")
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5, atol=1e-6, err_msg=k)


def pool_nodes(src):
    art = driver.build(src)
    fn = art.graph.functions["g"]
    return ([n.attrs["saved"] for n in fn.nodes if n.op is MAXPOOL_GRAD],
            sum(n.op is MAXPOOL_ARGMAX for n in fn.nodes))


def test_lower_pooling_recomputes_small_disjoint_windows():
    assert pool_nodes(net("maxpool(h, 2)")) == (["recompute"], 0)


def test_lower_pooling_saves_indices_for_overlapping_windows():
    assert pool_nodes(net("maxpool(h, 3, stride=1, padding=1)")) == (["indices"], 1)
    art = driver.build(net("maxpool(h, 3, stride=1, padding=1)"))
    # The indices are output-sized i32, not a full-size mask of the input.
    ws = next(e for e in art.loops.entries if e.name == "g").workspace
    assert [L.print_expr(b.size) for b in ws if b.dtype == "i32"] == ["batch * 256"]


def test_lower_pooling_keeps_the_numbers(monkeypatch):
    (y1, g1, params), (y2, g2, _) = run_both(net("maxpool(h, 3, stride=1, padding=1)"),
                                             monkeypatch, "lower_pooling")
    np.testing.assert_array_equal(y1, y2)
    for k in g1:
        np.testing.assert_allclose(g1[k], g2[k], rtol=1e-5, atol=1e-6, err_msg=k)
