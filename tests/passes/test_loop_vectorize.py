"""Vectorization: contiguous innermost store loops become a vector loop of
the host's width plus a scalar tail, with the same numbers."""
import numpy as np

from dlc.codegen.compiler import vector_registers
from dlc.ir import loops as L

from .helpers import compile_without, kernels, loops_after, loops_of

SRC = """
model net {
    input x: f32[batch, 37]
    h = sigmoid(x) * 2.0 - x |> tanh
    output y = softmax(h)
    output z = h / (x + 3.0)
}
"""


def test_elementwise_loops_become_vector_loops_with_a_tail():
    prog = loops_after(SRC, "vectorize")
    lanes = vector_registers()[0] // 4
    vec = [lp for k in kernels(prog, "net").values() for lp in loops_of(k.body)
           if lp.kind == "vectorized"]
    assert vec and all(isinstance(lp.extent, L.Const) and lp.extent.value == lanes
                       for lp in vec)
    for lp in vec:
        assert isinstance(lp.body, L.Store)
    # 37 % lanes iterations remain in a scalar loop
    tails = [lp for k in kernels(prog, "net").values() for lp in loops_of(k.body)
             if lp.kind == "serial" and isinstance(lp.extent, L.Const) and lp.extent.value == 37 % lanes]
    assert tails


def test_numbers_unchanged():
    vec = compile_without(SRC)
    plain = compile_without(SRC, skip=("vectorize",))
    rng = np.random.default_rng(3)
    for batch in (1, 6):
        x = rng.normal(size=(batch, 37)).astype(np.float32)
        a, b = vec.run("net", x=x), plain.run("net", x=x)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_strided_loads_read_every_kth_element():
    # A pooling window of 1 x k reads x with stride k in its vector loop:
    # up to MAX_SHUFFLED_STRIDE as k vector loads and shuffles (the last
    # load ending at the last lane's element), beyond it lane by lane.
    src = """
model pools {
    input x: f32[batch, 3, 5, 101]
    output y2 = maxpool(x, (1, 2))
    output y3 = maxpool(x, (1, 3))
    output y4 = maxpool(x, (1, 4))
    output y5 = maxpool(x, (1, 5))
}
"""
    prog = compile_without(src)
    x = np.random.default_rng(4).normal(size=(2, 3, 5, 101)).astype(np.float32)
    out = prog.run("pools", x=x)
    for k in (2, 3, 4, 5):
        w = 101 // k
        want = x[..., :w * k].reshape(2, 3, 5, w, k).max(-1)
        np.testing.assert_array_equal(out[f"y{k}"], want, err_msg=f"stride {k}")


def test_interleaved_pairs_are_recognized_by_their_indices():
    i, n = L.Var("i"), L.Var("n")
    out, x = L.Buffer("out", "f32", "tensor", 0, n * 2), L.Buffer("x", "f32", "tensor", 1, n)
    at = lambda index: L.Store(out, index, L.Load(x, i))
    base = n * 3
    assert L.interleaved_pair([at(base + i * 2), at(base + (i * 2 + 1))], i)
    assert not L.interleaved_pair([at(base + i * 2), at(base + (i * 2 + 2))], i)   # a gap
    assert not L.interleaved_pair([at(base + (i * 2 + 1)), at(base + i * 2)], i)   # the wrong order
    assert not L.interleaved_pair([at(base + i), at(base + (i + 1))], i)           # stride 1


def test_winograd_output_columns_are_stored_as_interleaved_vectors():
    # A 3x3 convolution's Winograd kernel stores each tile's two output
    # columns by one loop over the tiles: vectorized as one vector of both
    # (widths 14: 7 tiles, a vector of 4 and a tail; 32: whole vectors).
    src = """
model net {
    input x: f32[batch, 16, 12, 14]
    input z: f32[batch, 16, 6, 32]
    output y = conv2d(x, 16, 3, padding=1, name="a") |> relu
    output w = conv2d(z, 16, 3, padding=1, name="b")
}
"""
    prog = loops_after(src, "vectorize")
    pairs = [lp for k in kernels(prog, "net").values() if k.name.startswith("winograd")
             for lp in loops_of(k.body) if lp.kind == "vectorized"
             and L.interleaved_pair(L.plain_stores(lp.body) or [], lp.var)]
    assert len(pairs) >= 4, len(pairs)   # two output rows per tile, in each kernel
    vec = compile_without(src)
    plain = compile_without(src, skip=("vectorize",))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 16, 12, 14)).astype(np.float32)
    z = rng.normal(size=(3, 16, 6, 32)).astype(np.float32)
    a, b = vec.run("net", x=x, z=z), plain.run("net", x=x, z=z)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-6, err_msg=k)
