"""conv2d, pooling, flatten / reshape / concat / transpose: forward and gradients against
PyTorch, and the backward pass in f64 against finite differences.

The op under test reads the output of a 1x1 convolution `pre`, so
`pre.weight`'s gradient checks the op's input gradient, and the op's own
parameters check its weight gradient. fp32 tolerances: rtol 1e-4, atol 1e-5.
"""
import numpy as np
import pytest
import torch

import dlc
from dlc.frontend import parse_program
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional


def dl_pair(v):
    return str(tuple(v)) if isinstance(v, tuple) else str(v)


def check(body: str, torch_body, shape, seed=0, x=None, dtype="f32"):
    """Compile `y = body(h)` with h = pre(x), compare y and every gradient
    of mse(y, t) against `torch_body(h, params)`."""
    n, c, hh, ww = shape
    src = f"""
model m {{
    input x: {dtype}[batch, {c}, {hh}, {ww}]
    h = conv2d(x, {c}, 1, name="pre")
    output y = {body}
}}
"""
    # The output's shape, from the checked graph (cheap), types the target.
    yshape = parse_program(src).functions["m"].outputs["y"].type.shape[1:]
    prog = dlc.compile(src + f"""
train g {{
    input x: {dtype}[batch, {c}, {hh}, {ww}]
    input t: {dtype}[batch, {", ".join(map(str, yshape))}]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}}
""", seed=seed)
    rng = np.random.default_rng(seed)
    if x is None:
        x = rng.normal(size=shape).astype(np.float32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    yt = torch_body(F.conv2d(torch.tensor(x), P["pre.weight"], P["pre.bias"]), P)
    y = prog.run("m", x=x)["y"]
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    t = rng.normal(size=y.shape).astype(np.float32)
    F.mse_loss(yt, torch.tensor(t)).backward()
    grads = prog.grads("g", x=x, t=t)
    assert set(grads) == set(P)
    for k, v in P.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
    assert np.abs(grads["pre.weight"]).max() > 0


# (n, c, h, w), filters, kernel, stride, padding, dilation, groups
CONVS = [
    ((1, 1, 5, 5), 1, 3, 1, 0, 1, 1),
    ((2, 3, 7, 6), 4, 3, 2, 1, 1, 1),
    ((3, 4, 9, 9), 6, (3, 2), (2, 1), (1, 0), 1, 2),
    ((1, 2, 8, 7), 4, 3, 1, 2, 2, 1),
    ((2, 6, 5, 5), 6, 3, 1, 1, 1, 3),
    ((2, 4, 6, 6), 4, 3, 1, 1, 1, 4),
    ((1, 3, 11, 10), 5, 5, 3, 2, 1, 1),
    ((4, 2, 4, 4), 3, 4, 1, 0, 1, 1),
    ((2, 2, 7, 9), 3, (1, 3), (3, 2), (0, 2), (1, 2), 1),
    # Stride 1, one group, rows of 8 or more: the tiled input gradient over
    # the padded output gradient (ragged rows; dilation; a padding beyond the
    # kernel's span, which keeps the bounds-checked one).
    ((2, 3, 9, 19), 5, 3, 1, 1, 1, 1),
    ((1, 2, 10, 12), 3, (3, 2), 1, 1, (2, 1), 1),
    ((2, 3, 6, 9), 4, 1, 1, 1, 1, 1),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,dilation,groups", CONVS)
def test_conv2d(shape, filters, kernel, stride, padding, dilation, groups):
    body = (f"conv2d(h, {filters}, {dl_pair(kernel)}, stride={dl_pair(stride)}, "
            f"padding={dl_pair(padding)}, dilation={dl_pair(dilation)}, groups={groups}, name=\"c\")")
    check(body, lambda h, P: F.conv2d(h, P["c.weight"], P["c.bias"], stride=stride,
                                      padding=padding, dilation=dilation, groups=groups), shape)


def test_conv2d_without_bias_and_residual():
    body = "relu(conv2d(h, 3, 3, padding=1, bias=false, name=\"c\") + h)"
    check(body, lambda h, P: torch.relu(F.conv2d(h, P["c.weight"], padding=1) + h), (2, 3, 5, 6))


def test_conv2d_init_is_kaiming_uniform():
    prog = dlc.compile("""
model m {
    input x: f32[batch, 8, 6, 6]
    output y = conv2d(x, 64, 3, groups=2, name="c")
}""")
    bound = 1 / np.sqrt(4 * 9)
    w, b = prog.params["c.weight"], prog.params["c.bias"]
    assert w.shape == (64, 4, 3, 3) and b.shape == (64,)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert np.abs(b).max() <= bound


# kind, (n, c, h, w), size, stride, padding
POOLS = [
    ("max", (2, 3, 6, 6), 2, None, 0),
    ("max", (1, 2, 7, 9), 3, 2, 1),
    ("max", (2, 2, 5, 5), 3, 1, 1),
    ("max", (2, 3, 7, 8), (2, 3), (1, 2), (1, 0)),
    ("avg", (2, 3, 6, 6), 2, None, 0),
    ("avg", (1, 2, 7, 9), 3, 2, 1),
    ("avg", (2, 2, 5, 5), 3, 1, 1),
    ("avg", (2, 3, 7, 8), (2, 3), (1, 2), (1, 0)),
]


@pytest.mark.parametrize("kind,shape,size,stride,padding", POOLS)
def test_pool(kind, shape, size, stride, padding):
    stride_arg = "" if stride is None else f", stride={dl_pair(stride)}"
    body = f"{kind}pool(h, {dl_pair(size)}{stride_arg}, padding={dl_pair(padding)})"
    ref = F.max_pool2d if kind == "max" else F.avg_pool2d
    check(body, lambda h, P: ref(h, size, stride, padding), shape)


@pytest.mark.parametrize("size,stride", [(2, None), (3, 1)])
def test_maxpool_ties_go_to_the_first_maximum(size, stride):
    # Zero regions of x make equal values after `pre`: PyTorch routes the
    # gradient to the first maximum of each window only.
    x = np.zeros((2, 2, 6, 6), np.float32)
    x[:, :, 3:, 2:] = np.random.default_rng(0).normal(size=(2, 2, 3, 4))
    stride_arg = "" if stride is None else f", stride={stride}"
    check(f"maxpool(h, {size}{stride_arg})", lambda h, P: F.max_pool2d(h, size, stride),
          x.shape, x=x)


def test_global_avgpool_flatten_dense():
    check("global_avgpool(h) |> flatten |> dense(5, name=\"fc\")",
          lambda h, P: F.linear(h.mean(dim=(2, 3)), P["fc.weight"], P["fc.bias"]), (3, 4, 5, 3))


def test_reshape_and_concat():
    body = ("concat(reshape(h, (-1, 3, 10)), reshape(conv2d(h, 2, 1, name=\"c\"), (-1, 2, 10)), "
            "axis=-2)")
    check(body, lambda h, P: torch.cat([h.reshape(-1, 3, 10),
                                        F.conv2d(h, P["c.weight"], P["c.bias"]).reshape(-1, 2, 10)],
                                       dim=1), (2, 3, 2, 5))


@pytest.mark.parametrize("dims", [(0, 3, 1, 2), (0, 2, 3, 1), (0, 1, 3, 2)])
def test_transpose(dims):
    check(f"transpose(h, {dims})", lambda h, P: h.permute(*dims), (2, 3, 4, 5))


def test_cnn_columns_as_a_sequence():
    """A CNN feeding an LSTM (as CRNN): the feature map's columns are steps."""
    body = ('transpose(relu(conv2d(h, 4, 3, padding=1, name="c")), (0, 3, 1, 2)) '
            '|> reshape((-1, 5, 16)) |> lstm(6, name="lstm")')

    def torch_body(h, P):
        f = torch.relu(F.conv2d(h, P["c.weight"], P["c.bias"], padding=1))
        lstm = torch.nn.LSTM(16, 6, batch_first=True)
        weights = {f"{k}_l0": P[f"lstm.{k}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
        return torch.func.functional_call(lstm, weights, (f.permute(0, 3, 1, 2).reshape(-1, 5, 16),))[0]

    check(body, torch_body, (2, 3, 4, 5))


def test_concat_channels():
    check("concat(h, relu(conv2d(h, 2, 3, padding=1, name=\"c\")))",
          lambda h, P: torch.cat([h, torch.relu(F.conv2d(h, P["c.weight"], P["c.bias"],
                                                         padding=1))], dim=1), (2, 3, 4, 5))


def test_cnn_gradients_match_finite_differences():
    src = """
model net {
    input x: f64[batch, 2, 9, 10]
    input t: i32[batch]
    h = conv2d(x, 3, 3, stride=2, padding=1, name="a") |> relu
    h = conv2d(h, 4, (2, 3), padding=(1, 0), dilation=(2, 1), groups=1, name="b")
    h = maxpool(h, 2, stride=1) |> tanh
    h = avgpool(h, 2, padding=1) |> flatten
    output value = cross_entropy(dense(h, 3, name="c"), t)
}
train fit {
    input x: f64[batch, 2, 9, 10]
    input t: i32[batch]
    loss = net(x, t)
    optimizer = sgd(lr=0.1)
}"""
    prog = dlc.compile(src, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 9, 10))
    t = rng.integers(0, 3, size=2).astype(np.int32)
    assert_param_grads_match(prog, dict(x=x, t=t), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["conv2d", "conv2d_input_grad", "conv2d_weight_grad",
                                  "maxpool_grad", "avgpool_grad"])
def test_numpy_references_agree_with_torch(name):
    """The ops' NumPy references (used by other tests) match PyTorch."""
    from dlc.ops import REGISTRY
    rng = np.random.default_rng(0)
    attrs = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 1), dilation=(1, 1))
    x = torch.tensor(rng.normal(size=(2, 4, 7, 6)))
    w = torch.tensor(rng.normal(size=(6, 2, 3, 2)), requires_grad=True)
    xg = x.clone().requires_grad_(True)
    if name.startswith("conv2d"):
        y = F.conv2d(xg, w, stride=(2, 1), padding=(1, 1), groups=2)
        cattrs = dict(attrs, groups=2)
    elif name == "maxpool_grad":
        y = F.max_pool2d(xg, (3, 2), (2, 1), (1, 1))
    else:
        y = F.avg_pool2d(xg, (3, 2), (2, 1), (1, 1))
    g = torch.tensor(rng.normal(size=y.shape))
    y.backward(g)
    op = REGISTRY[name]
    if name == "conv2d":
        got, want = op.reference(x.numpy(), w.detach().numpy(), **cattrs), y.detach()
    elif name == "conv2d_input_grad":
        got, want = op.reference(g.numpy(), w.detach().numpy(), size=(7, 6), gpad=None, **cattrs), xg.grad
    elif name == "conv2d_weight_grad":
        got, want = op.reference(g.numpy(), x.numpy(), **cattrs), w.grad
    elif name == "maxpool_grad":
        got = op.reference(x.numpy(), y.detach().numpy(), g.numpy(), saved="recompute", **attrs)
        want = xg.grad
    else:
        got, want = op.reference(g.numpy(), size=(7, 6), **attrs), xg.grad
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-10, atol=1e-12)


def test_padded_input_grad_reference_agrees_with_torch():
    """The input gradient's form over g zero-padded by span - 1 - padding
    (stride 1, one group, dilation)."""
    from dlc.ops import REGISTRY
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(2, 4, 7, 6)), requires_grad=True)
    w = torch.tensor(rng.normal(size=(3, 4, 3, 2)))
    y = F.conv2d(x, w, padding=(1, 1), dilation=(2, 1))
    g = rng.normal(size=y.shape)
    y.backward(torch.tensor(g))
    gpad = (2 * 2 - 1, 1 - 1)   # span - 1 - padding per axis
    gp = np.pad(g, ((0, 0), (0, 0), (gpad[0],) * 2, (gpad[1],) * 2))
    got = REGISTRY["conv2d_input_grad"].reference(
        gp, w.numpy(), size=(7, 6), kernel=(3, 2), stride=(1, 1), padding=(1, 1), dilation=(2, 1),
        groups=1, gpad=gpad)
    np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-10, atol=1e-12)
