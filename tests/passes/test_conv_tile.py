"""Convolutions hit the `tile` pass's register-blocked micro-kernels: their
zero padding is a `pad2d` kernel of its own, so the forward convolution (with
its bias + relu epilogue, padded or not, before a pooling or not) is a plain
product of loads; the numbers are those of the untiled program."""
import numpy as np
import pytest

from dlc.ir import loops as L
from dlc.passes import loop_tile

from .helpers import assert_tiled_like_untiled, compile_without, kernels, loops_after

SRC = """
model cnn {
    input x: f32[batch, 3, 20, 20]
    h = conv2d(x, 8, 3, padding=1, name="c1") |> relu
    h = conv2d(h, 12, 3, padding=1, name="c2") |> relu
    h = maxpool(h, 2)
    h = conv2d(h, 8, 3, name="c3") |> relu |> flatten
    output y = dense(h, 5, name="fc")
}
train fit {
    input x: f32[batch, 3, 20, 20]
    input t: i32[batch]
    loss = cross_entropy(cnn(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


def tiled(k: L.Kernel) -> bool:
    return any(isinstance(s, L.Allocate) and s.buf.name.startswith("acc_") for s in L.stmts_of(k.body))


def untiled_products(prog: L.LoopProgram, entry: str) -> list[str]:
    """The kernels still holding a sum of products (left to `lower_reductions`)."""
    return [k.name for k in kernels(prog, entry).values()
            if any(isinstance(x, L.Reduce) and x.kind == "sum" and isinstance(x.body, L.Bin)
                   and x.body.op == "*" for e in L.exprs_of(k.body) for x in L.subexprs(e))]


def conv_kernels(prog: L.LoopProgram, entry: str) -> dict[str, L.Kernel]:
    """The first kernel reading each convolution weight, by its name."""
    out = {}
    for k in kernels(prog, entry).values():
        reads = {x.buf.name for e in L.exprs_of(k.body) for x in L.subexprs(e) if isinstance(x, L.Load)}
        for w in ("c1.weight", "c2.weight", "c3.weight"):
            if w in reads:
                out.setdefault(w, k)   # the first: the forward convolution
    return out


@pytest.mark.parametrize("entry", ["cnn", "fit"])
def test_forward_convolutions_are_tiled(entry):
    convs = conv_kernels(loops_after(SRC, "tile"), entry)
    assert set(convs) == {"c1.weight", "c2.weight", "c3.weight"}
    for name, k in convs.items():
        assert tiled(k), name
        assert not any(isinstance(x, (L.Reduce, L.Select)) for e in L.exprs_of(k.body)
                       for x in L.subexprs(e)), name


@pytest.mark.parametrize("vector", [(64, 32), (32, 16)], ids=["avx512", "avx2"])
def test_numbers_unchanged(monkeypatch, vector):
    monkeypatch.setattr(loop_tile, "vector_registers", lambda: vector)
    fast = compile_without(SRC)
    plain = compile_without(SRC, skip=("tile",))
    rng = np.random.default_rng(2)
    for batch in (1, 3):
        x = rng.normal(size=(batch, 3, 20, 20)).astype(np.float32)
        t = rng.integers(0, 5, size=batch).astype(np.int32)
        assert_tiled_like_untiled(fast, plain, "cnn", x, t)


def test_every_product_of_training_is_tiled():
    """Convolutions, their weight gradients (narrow along kx: the dot form,
    vectorized along ow), their input gradients (over the zero-padded output
    gradient: plain loads, no bounds checks) and the dense layer."""
    prog = loops_after(SRC, "tile")
    assert untiled_products(prog, "fit") == []
    for w in ("c2.weight", "c3.weight"):   # c1's input is x: no input gradient
        reading = [k for k in kernels(prog, "fit").values() if tiled(k) and any(
            isinstance(x, L.Load) and x.buf.name == w for e in L.exprs_of(k.body) for x in L.subexprs(e))]
        assert len(reading) == 2, w   # the forward convolution and the input gradient
        for k in reading:
            updates = [s for s in L.stmts_of(k.body) if isinstance(s, L.Store) and s.buf.name.startswith("acc_")]
            assert not any(isinstance(x, L.Select) for s in updates for x in L.subexprs(s.value)), k.name


def test_input_gradient_of_a_padded_convolution_skips_the_padding():
    """c2 (padding 1) gets the input gradient of its unpadded input directly
    (g padded by span - 1 - padding = 1), not that of the padded input cropped."""
    from dlc import frontend
    from dlc.driver import GRAPH_PASSES
    program = frontend.parse_program(SRC, "<test>")
    for _, p in GRAPH_PASSES:
        program = p(program)
    nodes = program.functions["fit"].nodes
    grads = [n for n in nodes if n.op.name == "conv2d_input_grad"]
    assert sorted(n.attrs["gpad"] for n in grads) == [(1, 1), (2, 2)]
    c2 = next(n for n in grads if n.attrs["padding"] == (1, 1))
    assert c2.out.type.shape[2:] == (20, 20)


def test_dense_input_gradient_into_a_narrow_flatten_is_tiled():
    """dx of a dense layer after a flatten of 5x5 maps is inlined into the
    reshape back to [4, 5, 5], whose kernel loops over the product's rows of
    100 (not rows of 5, which the tile pass would leave alone): tiled."""
    src = """
model m {
    input x: f32[batch, 2, 10, 10]
    h = conv2d(x, 4, 3, padding=1, name="c") |> relu |> maxpool(2) |> flatten
    output y = dense(h, 6, name="fc")
}
train fit {
    input x: f32[batch, 2, 10, 10]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = sgd(lr=0.1)
}
"""
    prog = loops_after(src, "tile")
    assert untiled_products(prog, "fit") == []


def test_only_cold_kernels_skip_llvm_optimization():
    """render marks kernels cheap outright and next to their entry (the loss
    terms, bias-sized updates) optnone; convolutions and the like keep O3.
    (Their numbers: test_numbers_unchanged and the optimizer tests.)"""
    import re
    from dlc import driver
    from dlc.codegen.render import cold_kernels
    art = driver.build(SRC)
    fit = next(e for e in art.loops.entries if e.name == "fit")
    cold = {k.name for k in fit.kernels if id(k) in cold_kernels(fit, art.loops.syms)}
    assert {"exp", "sum_last", "scatter_last"} <= {name.rsplit("_", 1)[0] for name in cold}
    assert not any(tiled(k) for k in fit.kernels if k.name in cold)
    text = "\n".join(art.llvm_modules)
    optnone = set(re.findall(r'define hidden void @"(dlc\.kernel\.[\w.]+)"\([^)]*\)[^\n]*optnone', text))
    # The function each of fit's kernels runs (one that another kernel
    # identical to it gave, if any), in order.
    entry = text[text.index('@"dlc.entry.fit"'):]
    called = re.findall(r'call void @"(dlc\.kernel\.[\w.]+)"', entry[:entry.index("\n}")])
    assert len(called) == len(fit.kernels)
    for k, fn in zip(fit.kernels, called):
        assert (fn in optnone) == (k.name in cold), (k.name, fn)
        assert not (fn in optnone and tiled(k))


def test_train_step_stores_the_gradient_then_updates_like_untiled():
    """Rows of 20 (16 lanes + 4): the weight gradient is a tiled kernel of
    its own (the grads entry's: the train step stores its gradients), the
    SGD update in place a plain one after it. Training steps' numbers,
    tiled or not."""
    src = """
model m {
    input x: f32[batch, 20]
    output y = dense(x, 20, name="fc") |> relu |> dense(3, name="out")
}
train fit {
    input x: f32[batch, 20]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = sgd(lr=0.1)
}
"""
    prog = loops_after(src, "tile")
    fit = kernels(prog, "fit")
    writes = lambda k, name: any(isinstance(s, L.Store) and s.buf.name == name for s in L.stmts_of(k.body))
    assert [tiled(k) for k in fit.values() if writes(k, "fc.weight")] == [False]
    grads = kernels(prog, "fit.grads")
    assert [k for k in grads.values() if writes(k, "fc.weight") and tiled(k)]   # its output fc.weight
    fast, plain = compile_without(src), compile_without(src, skip=("tile",))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 20)).astype(np.float32)
    t = rng.integers(0, 3, size=6).astype(np.int32)
    for _ in range(2):
        fast.train("fit", x=x, t=t)
        plain.train("fit", x=x, t=t)
    for name in fast.params:
        np.testing.assert_allclose(fast.params[name], plain.params[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_ragged_reduction_rows_end_with_a_masked_vector_step():
    """c1's and c2's weight gradients reduce rows of 20 (16 lanes + 4): the
    last 4 in one more vector step of 4 active lanes, whose inactive lanes
    leave the accumulators alone (a Select on the lane), no scalar loop."""
    prog = loops_after(SRC, "tile")
    dots = [k for k in kernels(prog, "fit.grads").values()
            if any(isinstance(s, L.Allocate) and s.buf.name == "acc_dot" for s in L.stmts_of(k.body))
            and k.name.startswith("conv2d_weight_grad")]
    assert len(dots) == 3
    on_lane = lambda x: isinstance(x, L.Select) and any(isinstance(v, L.Var) and v.name == "l"
                                                        for v in L.subexprs(x.cond))
    ragged = [k for k in dots if any(on_lane(x) for e in L.exprs_of(k.body) for x in L.subexprs(e))]
    assert len(ragged) == 2   # c3's rows of 8 are whole vectors
    for k in dots:
        assert not any(isinstance(s, L.For) and s.var.name == "kt" for s in L.stmts_of(k.body)), k.name
