"""Winograd convolution F(2x2, 3x3) (dlc/ops/winograd.py), as the `winograd`
pass puts it in place of 3x3 stride-1 convolutions with at least
MIN_CHANNELS channels and filters: forward (and the gradients of the train
entry whose forward convolutions it computes) against PyTorch, for odd and
even output sizes, batch 1, channel counts that are not multiples of the
vector width, with and without bias and relu, a max pooling computed in
the staged input rows; the op's NumPy reference against PyTorch.

Tolerance: fp32 rtol 1e-4, atol 1e-5, as for the direct convolution. The
transforms add and subtract up to 16 products of both signs, so the rounding
error grows with the size of the terms, not of the result; with these inputs
(unit normal, nn.Conv2d's initialisation) the largest error measured is
about 1e-6.
"""
import numpy as np
import pytest
import torch

import dlc
from dlc import driver
from dlc.ops.winograd import WINOGRAD_CONV2D, XI_PAD
from tests.ops.test_conv_torch import ATOL, RTOL, check

F = torch.nn.functional


def compile_conv(c, k, h, w, padding, bias, relu):
    src = f"""
model m {{
    input x: f32[batch, {c}, {h}, {w}]
    output y = conv2d(x, {k}, 3, padding={padding}, bias={str(bias).lower()}, name="c"){" |> relu" * relu}
}}
"""
    prog = dlc.compile(src)
    kinds = [k.name.rsplit("_", 1)[0] for e in prog.loops.entries for k in e.kernels]
    assert "winograd_conv2d" in kinds and "conv2d" not in kinds, kinds
    return prog


@pytest.mark.parametrize("c,k,h,w,padding,bias,relu,n", [
    (16, 16, 8, 8, 1, True, True, 2),
    (32, 32, 32, 32, 1, True, True, 3),     # the CIFAR CNN's conv2: 4 chunks per image
    (17, 20, 7, 9, 1, False, False, 1),     # odd output sizes, batch 1
    (16, 24, 13, 10, 0, True, False, 2),    # no padding: odd rows, even columns
    (20, 16, 9, 9, 1, False, True, 1),
    (16, 16, 12, 11, (2, 0), True, True, 2),   # padding past one row: whole zero rows staged
])
def test_forward_matches_torch(c, k, h, w, padding, bias, relu, n):
    prog = compile_conv(c, k, h, w, padding, bias, relu)
    x = np.random.default_rng(0).normal(size=(n, c, h, w)).astype(np.float32)
    p = {name: torch.tensor(v.copy()) for name, v in prog.params.items()}
    want = F.conv2d(torch.tensor(x), p["c.weight"], p.get("c.bias"), padding=padding)
    if relu:
        want = F.relu(want)
    np.testing.assert_allclose(prog.run("m", x=x)["y"], want.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("shape", [(2, 16, 9, 10), (1, 16, 8, 8)])
def test_train_entry_forward_and_gradients_match_torch(shape):
    # The train entry's convolution (bias and relu absorbed) is Winograd;
    # its gradients come from conv2d's rule.
    check('conv2d(h, 18, 3, padding=1, name="c") |> relu',
          lambda h, P: F.relu(F.conv2d(h, P["c.weight"], P["c.bias"], padding=1)), shape)


def test_changed_weights_are_seen():
    # The transformed filters are cached in the session with the weights
    # they came from: writes to the live params (a whole tensor, one
    # element, a NaN) and train steps must each show in the next call.
    prog = dlc.compile("""
model m {
    input x: f32[batch, 16, 8, 8]
    output y = conv2d(x, 16, 3, padding=1, name="c")
}
train g {
    input x: f32[batch, 16, 8, 8]
    input t: f32[batch, 16, 8, 8]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.5)
}
""")
    # one cache for both entries: session state, zeroed with the optimizer's
    states = [(t.name, t.dims) for t in prog.loops.tensors if t.role == "state"]
    assert states == [("g.lr", ()), ("c.weight.winograd", (16 * (16 * 16 + XI_PAD),)),
                      ("c.weight.winograd_of", (16 * 16 * 9,))], states
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 8, 8)).astype(np.float32)
    w = prog.params["c.weight"]

    def matches_torch():
        want = F.conv2d(torch.tensor(x), torch.tensor(w.copy()), torch.tensor(prog.params["c.bias"].copy()),
                        padding=1).numpy()
        np.testing.assert_allclose(prog.run("m", x=x)["y"], want, rtol=RTOL, atol=ATOL)

    matches_torch()
    w *= 2
    matches_torch()
    w[3, 5, 1, 2] += 1
    matches_torch()
    # Filter 3's elements 60 and 143 (its last): on AVX-512 (W 16) counted in
    # the last of the four count vectors and in the 16 after their whole
    # steps of 64 (ops/cache.py), on AVX2 in the tail's second vector.
    w[3, 6, 2, 0] += 1
    matches_torch()
    w[3, 15, 2, 2] += 1
    matches_torch()
    before = w.copy()
    prog.train("g", x=x, t=rng.normal(size=(2, 16, 8, 8)).astype(np.float32))
    assert not np.array_equal(w, before)
    matches_torch()
    w[0, 0, 0, 0] = np.nan
    y = prog.run("m", x=x)["y"]
    assert np.isnan(y[:, 0]).all() and not np.isnan(y[:, 1:]).any()


def test_reference_matches_torch():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 9)).astype(np.float32)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    want = F.relu(F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), padding=(1, 0)))
    for pool, expect in ((False, want), (True, F.max_pool2d(want, 2))):
        y = WINOGRAD_CONV2D.reference(x, w, b, padding=(1, 0), size=(7, 7), relu=True, pool=pool, rows=1,
                                      flip=False)
        np.testing.assert_allclose(y, expect.numpy(), rtol=RTOL, atol=ATOL)


def run_against_torch(src, n, c, h, w, torch_fn, kinds):
    prog = dlc.compile(src)
    got = [k.name.rsplit("_", 1)[0] for e in prog.loops.entries for k in e.kernels]
    assert got == kinds, got
    x = np.random.default_rng(2).normal(size=(n, c, h, w)).astype(np.float32)
    p = {name: torch.tensor(v.copy()) for name, v in prog.params.items()}
    want = torch_fn(torch.tensor(x), p)
    np.testing.assert_allclose(prog.run("m", x=x)["y"], want.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n", [1, 3])
def test_pooling_before_is_computed_in_the_staged_rows(n):
    # c1 (3 channels) is a direct convolution; the max pooling after it has
    # no kernel of its own: each chunk of c2 pools the rows it stages
    # (stride-4 loads of c1's output), the two edge rows of a chunk twice.
    run_against_torch("""
model m {
    input x: f32[batch, 3, 16, 14]
    h = conv2d(x, 16, 3, padding=1, name="c1") |> relu |> maxpool(2)
    output y = conv2d(h, 24, 3, padding=1, name="c2") |> relu
}
""", n, 3, 16, 14, lambda x, p: F.relu(F.conv2d(
        F.max_pool2d(F.relu(F.conv2d(x, p["c1.weight"], p["c1.bias"], padding=1)), 2),
        p["c2.weight"], p["c2.bias"], padding=1)), ["pad2d", "relu", "winograd_conv2d"])


@pytest.mark.parametrize("n,h,w", [(1, 16, 14), (2, 15, 13)])
def test_pooling_after_is_each_tiles_maximum(n, h, w):
    # A 2x2 max pooling of stride 2 after the convolution (and relu) is
    # absorbed: its windows are the tiles. Odd sizes: the last tile row and
    # column are partial, and pooling drops them.
    run_against_torch(f"""
model m {{
    input x: f32[batch, 16, {h}, {w}]
    output y = conv2d(x, 20, 3, padding=1, name="c") |> relu |> maxpool(2)
}}
""", n, 16, h, w, lambda x, p: F.max_pool2d(F.relu(F.conv2d(x, p["c.weight"], p["c.bias"], padding=1)), 2),
        ["winograd_conv2d"])


@pytest.mark.parametrize("padding,shape", [(1, (2, 16, 10, 9)), (0, (1, 16, 12, 12)), (2, (2, 17, 8, 9))])
def test_input_gradient_is_a_flipped_winograd_convolution(padding, shape):
    """The gradient reaching `pre` through c's input is winograd_conv2d
    with the filters transposed and turned (flip), for every padding whose
    input gradient reads a zero-padded output gradient: same numbers as
    PyTorch."""
    n, c, h, w = shape
    art = driver.build(f"""
model m {{
    input x: f32[batch, {c}, {h}, {w}]
    h = conv2d(x, {c}, 1, name="pre")
    output y = conv2d(h, 20, 3, padding={padding}, name="c")
}}
train g {{
    input x: f32[batch, {c}, {h}, {w}]
    input t: i32[batch]
    loss = cross_entropy(flatten(m(x)), t)
    optimizer = sgd(lr=0.1)
}}
""")
    flips = [nd for nd in art.graph.functions["g"].nodes if nd.op is WINOGRAD_CONV2D and nd.attrs["flip"]]
    assert len(flips) == 1 and flips[0].out.type.shape[1] == c
    check(f'conv2d(h, 20, 3, padding={padding}, name="c")',
          lambda h, P: F.conv2d(h, P["c.weight"], P["c.bias"], padding=padding), shape)
