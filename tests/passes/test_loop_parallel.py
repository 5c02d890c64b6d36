"""Parallel loops: kernels with enough work get one parallel outer loop (the
fused tile loops of a tiled product, the row loop of an elementwise kernel),
small ones stay serial, and the numbers match the serial program when the
runtime's pool runs them on two threads."""
import numpy as np

from dlc.ir import loops as L

from .helpers import compile_without, kernels, loops_after, loops_of

SRC = """
model net {
    input x: f32[batch, 48]
    h = dense(x, 200, name="fc1") |> relu
    output y = dense(h, 10, name="fc2")
}
train fit {
    input x: f32[batch, 48]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = sgd(lr=0.1)
}
"""


def test_outer_loops_become_one_parallel_loop_with_a_grain():
    prog = loops_after(SRC, "parallelize")
    for name, k in kernels(prog, "net").items():
        top = k.body
        assert isinstance(top, L.For) and top.kind == "parallel", name
        assert top.grain is not None
        assert not any(lp.kind == "parallel" for lp in loops_of(top.body)), "nested parallel loop"
    fit = kernels(prog, "fit")
    # the loss is one scalar reduction: nothing to share out
    assert not any(lp.kind == "parallel" for k in fit.values() if k.name.startswith("neg")
                   for lp in loops_of(k.body))
    # an elementwise kernel keeps its innermost loop serial (LLVM vectorizes it)
    elementwise = [k for k in fit.values() if k.name.startswith(("sub", "exp"))]
    assert elementwise
    for k in elementwise:
        assert k.body.kind == "parallel" and k.body.body.kind == "serial"


def test_numbers_unchanged_on_two_threads(monkeypatch):
    """Sharing loops out never changes an element's arithmetic: one program
    gives the same bits on one thread and two. (Against the program compiled
    without the pass, only close: LLVM may reassociate differently shaped
    code differently.)"""
    monkeypatch.setenv("DLC_NUM_THREADS", "2")
    par = compile_without(SRC, num_threads=0)   # 0: the pool size comes from DLC_NUM_THREADS
    one = compile_without(SRC, num_threads=1)
    ser = compile_without(SRC, skip=("parallelize",))
    rng = np.random.default_rng(2)
    for batch in (1, 5, 333):
        x = rng.normal(size=(batch, 48)).astype(np.float32)
        t = rng.integers(0, 10, size=batch).astype(np.int32)
        np.testing.assert_array_equal(par.run("net", x=x)["y"], one.run("net", x=x)["y"])
        np.testing.assert_allclose(par.run("net", x=x)["y"], ser.run("net", x=x)["y"], rtol=1e-5, atol=1e-6)
        g1, g2 = par.grads("fit", x=x, t=t), one.grads("fit", x=x, t=t)
        for name in g1:
            np.testing.assert_array_equal(g1[name], g2[name], err_msg=name)
    for _ in range(3):  # updates in place, in parallel, stay identical
        assert par.train("fit", x=x, t=t) == one.train("fit", x=x, t=t)
    for name in par.params:
        np.testing.assert_array_equal(par.params[name], one.params[name])


def test_a_scatter_by_loaded_rows_stays_serial():
    """The embedding's gradient adds each (example, step) into the row its
    token names: its store depends on the loop only through the loaded token,
    so two iterations may add into one row. It must stay serial (it had been
    shared out, losing updates at two threads)."""
    src = """
model m {
    input tok: i32[batch, 12]
    output y = embedding(tok, 20, 8, name="emb") |> flatten |> dense(3, name="fc")
}
train fit {
    input tok: i32[batch, 12]
    input t: i32[batch]
    loss = cross_entropy(m(tok), t)
    optimizer = sgd(lr=0.1)
}
"""
    scatters = [k for k in kernels(loops_after(src, "parallelize"), "fit").values()
                if k.name.startswith("scatter_rows")]
    assert scatters
    for k in scatters:
        assert not any(lp.kind == "parallel" for lp in loops_of(k.body)), k.name
