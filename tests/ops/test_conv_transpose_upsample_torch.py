"""conv_transpose2d, upsample and conv1d: forward and gradients against
PyTorch at two sizes of the symbolic batch, the backward pass in f64 against
finite differences, the NumPy references, and located errors.

The op under test reads the output of a 1x1 convolution `pre`, so
`pre.weight`'s gradient checks the op's input gradient, and the op's own
parameters check its weight gradients. fp32 tolerances: rtol 1e-4, atol 1e-5.
"""
import numpy as np
import pytest
import torch

import dlc
from dlc.errors import CompileError
from dlc.frontend import parse_program
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional


def dl(v):
    return str(tuple(v)) if isinstance(v, tuple) else str(v)


def check(body: str, torch_body, shape: tuple, batches=(2, 3), seed=0):
    """Compile `y = body(h)` with h = pre(x) for x of [batch] + shape (a
    conv2d or conv1d pre), compare y and every gradient of mse(y, t) with
    `torch_body(h, params)` at each batch size."""
    pre, fpre = ("conv2d", F.conv2d) if len(shape) == 3 else ("conv1d", F.conv1d)
    dims = ", ".join(map(str, shape))
    src = f"""
model m {{
    input x: f32[batch, {dims}]
    h = {pre}(x, {shape[0]}, 1, name="pre")
    output y = {body}
}}
"""
    yshape = parse_program(src).functions["m"].outputs["y"].type.shape[1:]
    prog = dlc.compile(src + f"""
train g {{
    input x: f32[batch, {dims}]
    input t: f32[batch, {", ".join(map(str, yshape))}]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}}
""", seed=seed)
    rng = np.random.default_rng(seed)
    for n in batches:
        x = rng.normal(size=(n,) + shape).astype(np.float32)
        P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
        yt = torch_body(fpre(torch.tensor(x), P["pre.weight"], P["pre.bias"]), P)
        y = prog.run("m", x=x)["y"]
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
        t = rng.normal(size=y.shape).astype(np.float32)
        F.mse_loss(yt, torch.tensor(t)).backward()
        grads = prog.grads("g", x=x, t=t)
        assert set(grads) == set(P)
        for k, v in P.items():
            np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"{k} at {n}")
        assert np.abs(grads["pre.weight"]).max() > 0


# (c, h, w), filters, kernel, stride, padding, output_padding, groups, dilation
TRANSPOSED = [
    ((3, 4, 5), 2, 3, 1, 0, 0, 1, 1),              # stride 1: the tiled form over padded x
    ((3, 4, 5), 4, 3, 1, 1, 0, 1, 1),
    ((2, 5, 4), 3, (3, 2), 1, (2, 1), 0, 1, 1),    # padding = span - 1: x read unpadded
    ((2, 3, 4), 3, 3, 1, 1, 0, 1, 2),              # dilated
    ((2, 6, 6), 3, 3, 1, 3, 0, 1, 1),              # padding beyond the span: bounds checked
    ((2, 4, 4), 3, 4, 2, 1, 0, 1, 1),              # DCGAN's doubling
    ((4, 3, 5), 6, 3, 2, 1, 1, 2, 1),
    ((2, 3, 4), 2, (2, 3), (3, 2), (0, 1), (2, 1), 1, (1, 2)),
    ((6, 3, 3), 6, 3, 1, 1, 0, 3, 2),              # depthwise, stride 1
    ((4, 3, 4), 2, (1, 3), (2, 1), 0, (1, 0), 2, 1),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,output_padding,groups,dilation", TRANSPOSED)
def test_conv_transpose2d(shape, filters, kernel, stride, padding, output_padding, groups, dilation):
    body = (f"conv_transpose2d(h, {filters}, {dl(kernel)}, stride={dl(stride)}, padding={dl(padding)}, "
            f"output_padding={dl(output_padding)}, groups={groups}, dilation={dl(dilation)}, name=\"c\")")
    check(body, lambda h, P: F.conv_transpose2d(h, P["c.weight"], P["c.bias"], stride=stride, padding=padding,
                                                output_padding=output_padding, groups=groups,
                                                dilation=dilation), shape)


def test_generator_chain():
    """Transposed convolutions, upsampling and a padded conv2d in a row, as
    a DCGAN generator: the gradients meet each other's paddings."""
    body = ('conv_transpose2d(h, 4, 4, stride=2, padding=1, bias=false, name="a") |> relu '
            '|> upsample(2, mode="bilinear") |> conv2d(3, 3, padding=1, name="b") |> relu '
            '|> conv_transpose2d(2, 3, padding=1, name="d") |> tanh')

    def torch_body(h, P):
        h = torch.relu(F.conv_transpose2d(h, P["a.weight"], stride=2, padding=1))
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        h = torch.relu(F.conv2d(h, P["b.weight"], P["b.bias"], padding=1))
        return torch.tanh(F.conv_transpose2d(h, P["d.weight"], P["d.bias"], padding=1))

    check(body, torch_body, (3, 3, 4))


def test_conv_transpose2d_init_is_pytorchs():
    prog = dlc.compile("""
model m {
    input x: f32[batch, 8, 5, 5]
    output y = conv_transpose2d(x, 6, (3, 2), groups=2, name="c")
}""")
    w, b = prog.params["c.weight"], prog.params["c.bias"]
    ref = torch.nn.ConvTranspose2d(8, 6, (3, 2), groups=2)
    assert w.shape == tuple(ref.weight.shape) == (8, 3, 3, 2) and b.shape == (6,)
    bound = 1 / np.sqrt(3 * 3 * 2)   # fan_in = out/groups * kh * kw, from the weight's dim 1
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(b).max() <= bound
    assert np.abs(ref.weight.detach().numpy()).max() <= bound


# (c, h, w), scale, mode
UPSAMPLES = [
    ((2, 3, 4), 2, "nearest"),
    ((2, 3, 2), (2, 3), "nearest"),
    ((3, 2, 3), 4, "nearest"),
    ((2, 3, 4), 1, "bilinear"),
    ((2, 3, 4), 2, "bilinear"),
    ((2, 4, 3), 3, "bilinear"),
    ((2, 3, 2), (3, 2), "bilinear"),
    ((2, 1, 3), 2, "bilinear"),      # a unit height: both rows are row 0
]


@pytest.mark.parametrize("shape,scale,mode", UPSAMPLES)
def test_upsample(shape, scale, mode):
    check(f"upsample(h, {dl(scale)}, mode=\"{mode}\")",
          lambda h, P: F.interpolate(h, scale_factor=scale, mode=mode,
                                     **({} if mode == "nearest" else {"align_corners": False})), shape)


# (c, length), filters, kernel, stride, padding, dilation, groups
CONV1DS = [
    ((3, 10), 4, 3, 1, 0, 1, 1),
    ((4, 11), 6, 3, 2, 1, 1, 2),
    ((2, 9), 3, 2, 1, 2, 2, 1),
    ((4, 8), 4, 3, 1, 1, 1, 4),
    ((2, 12), 5, 4, 3, 0, 1, 1),
]


@pytest.mark.parametrize("shape,filters,kernel,stride,padding,dilation,groups", CONV1DS)
def test_conv1d(shape, filters, kernel, stride, padding, dilation, groups):
    body = (f"conv1d(h, {filters}, {kernel}, stride={stride}, padding={padding}, dilation={dilation}, "
            f"groups={groups}, name=\"c\")")
    check(body, lambda h, P: F.conv1d(h, P["c.weight"], P["c.bias"], stride=stride, padding=padding,
                                      dilation=dilation, groups=groups), shape)


def test_conv1d_weight_is_pytorchs():
    prog = dlc.compile("""
model m {
    input x: f32[batch, 4, 9]
    output y = conv1d(x, 6, 3, groups=2, bias=false, name="c")
}""")
    assert set(prog.params) == {"c.weight"} and prog.params["c.weight"].shape == (6, 2, 3)
    assert np.abs(prog.params["c.weight"]).max() <= 1 / np.sqrt(2 * 3)


def test_gradients_match_finite_differences():
    src = """
model net {
    input x: f64[batch, 2, 3, 3]
    input t: i32[batch]
    h = conv_transpose2d(x, 2, 3, stride=2, padding=1, output_padding=1, name="a") |> tanh
    h = conv_transpose2d(h, 2, 2, padding=1, dilation=2, name="b") |> upsample(2, mode="bilinear")
    h = upsample(h, (1, 2)) |> reshape((-1, 2, 288)) |> conv1d(1, 3, stride=8, padding=1, name="c")
    output value = cross_entropy(dense(flatten(h), 3, name="d"), t)
}
train fit {
    input x: f64[batch, 2, 3, 3]
    input t: i32[batch]
    loss = net(x, t)
    optimizer = sgd(lr=0.1)
}"""
    prog = dlc.compile(src, seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 2, 3, 3))
    t = rng.integers(0, 3, size=2).astype(np.int32)
    assert_param_grads_match(prog, dict(x=x, t=t), rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("scale", [(2, 2), (3, 2)])
def test_upsample_references_agree_with_torch(mode, scale):
    from dlc.ops import REGISTRY
    x = torch.tensor(np.random.default_rng(0).normal(size=(2, 3, 4, 5)), requires_grad=True)
    y = F.interpolate(x, scale_factor=scale, mode=mode, **({} if mode == "nearest" else {"align_corners": False}))
    g = torch.tensor(np.random.default_rng(1).normal(size=y.shape))
    y.backward(g)
    got = REGISTRY["upsample"].reference(x.detach().numpy(), scale=scale, mode=mode)
    np.testing.assert_allclose(got, y.detach().numpy(), rtol=1e-12, atol=1e-12)
    dx = REGISTRY["upsample_grad"].reference(g.numpy(), size=(4, 5), scale=scale, mode=mode)
    np.testing.assert_allclose(dx, x.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call,at,message", [
    ("conv_transpose2d(x, 4, 3, stride=2, output_padding=2)", "output_padding",
     "needs 0 <= output_padding < stride"),
    ("conv_transpose2d(x, 4, 3, padding=3)", "padding", "would make an empty output"),
    ("conv_transpose2d(x, 3, 3, groups=2)", "groups", "divisible by 2"),
    ('upsample(x, 2, mode="bilinar")', "mode", "did you mean 'bilinear'"),
    ("upsample(x, 0)", "0", "integer scale >= 1"),
    ("conv1d(x, 4, 3)", "x", "expects a 3-D input [batch, channels, length]"),
])
def test_bad_arguments_are_located(call, at, message):
    """The caret points at the argument at fault (`at` starts there)."""
    src = f"""
model m {{
    input x: f32[batch, 2, 4, 4]
    output y = {call}
}}
"""
    with pytest.raises(CompileError) as e:
        parse_program(src, "t.dl")
    err = e.value
    assert message in err.message, err.render()
    line = src.splitlines()[err.line - 1]
    assert line[err.col - 1:].startswith(at), err.render()
