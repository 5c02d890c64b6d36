"""NaN and +-inf through every op, forward and gradient, against PyTorch:
a diverging network must never look healthy (relu, max pooling and the
recurrent cells' tanh had turned NaN into numbers through llvm.maxnum).

Each op reads a table holding NaN, +inf and -inf as an embedding's rows
(tokens 0..V-1, each once: e = table as [B, T, D]), so the table's gradient
is the op's input gradient; the op's parameters are PyTorch leaves too.
Compared NaN-aware (assert_allclose, equal_nan): fp32 rtol 1e-4, atol 1e-5.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dlc
from dlc import driver
from dlc.errors import UnavailableError

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional
nan, inf = np.nan, np.inf
ROOT = Path(__file__).parent.parent.parent

B, T, D = 2, 8, 8
V = B * T
TOKENS = np.arange(V, dtype=np.int32).reshape(B, T)


def specials() -> np.ndarray:
    """[V, D], normal but for: two NaNs in one 2x2 pooling window of example
    0's [8, 8] image (rows 0-1, columns 2-3), +inf, -inf, a row with both,
    a row all -inf, NaN beside +inf, and a NaN late in example 1."""
    w = np.random.default_rng(0).normal(size=(V, D)).astype(np.float32)
    w[0, 3] = w[1, 2] = nan
    w[1, 0] = inf
    w[2, 5] = -inf
    w[3, [1, 6]], w[3, 2] = -inf, inf
    w[5] = -inf
    w[9, 0], w[9, 7] = nan, inf
    w[12, 7] = nan
    return w


def sequence_specials() -> np.ndarray:
    """Example 0: -inf and +inf inputs at steps 2 and 3 (saturated gates,
    finite states); example 1: a NaN at step 4 (NaN from there on)."""
    w = np.random.default_rng(1).normal(size=(V, D)).astype(np.float32)
    w[2, 5], w[3, 2], w[12, 7] = -inf, inf, nan
    return w


def channel_specials() -> np.ndarray:
    """As the image [2, 2, 4, 8]: a NaN and an inf in channel 0 only."""
    w = np.random.default_rng(2).normal(size=(V, D)).astype(np.float32)
    w[1, 3], w[10, 6] = nan, inf
    return w


def close(got, want, what=""):
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=what)


SRC = """
model m {{
    input tok: i32[{B}, {T}]
    e = embedding(tok, {V}, {D}, name="e")
    output y = {body}
}}
train g {{
    input tok: i32[{B}, {T}]
    input t: {t_type}
    loss = {loss}(m(tok), t)
    optimizer = sgd(lr=0.1)
}}
"""
TORCH_LOSS = {"mse": F.mse_loss, "bce": F.binary_cross_entropy,
              "cross_entropy": lambda y, t: F.cross_entropy(y, t.long())}


def check(body, shape, torch_fn, table=specials, loss="mse", t=None, target="cpu"):
    """Compiles y = body (of e) with the table, and checks y, the gradient of
    every parameter and the loss against torch_fn(e, params, training) and
    PyTorch's loss; returns the program, its parameters as before."""
    if t is None:
        t = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    t_type = f"{'i32' if t.dtype == np.int32 else 'f32'}[{', '.join(map(str, t.shape))}]"
    prog = dlc.compile(SRC.format(B=B, T=T, V=V, D=D, body=body, t_type=t_type, loss=loss), target=target)
    prog.params["e.weight"][...] = table()
    before = {k: v.copy() for k, v in prog.params.items()}
    P = {k: torch.tensor(v, requires_grad=v.dtype.kind == "f") for k, v in before.items()}
    e = P["e.weight"][torch.tensor(TOKENS).long()]
    with torch.no_grad():
        close(prog.run("m", tok=TOKENS)["y"], torch_fn(e, P, False).numpy(), "y")
    want = TORCH_LOSS[loss](torch_fn(e, P, True), torch.tensor(t))
    want.backward()
    for k, got in prog.grads("g", tok=TOKENS, t=t).items():
        close(got, P[k].grad.numpy(), f"gradient of {k}")
    close(prog.train("g", tok=TOKENS, t=t), want.item(), "loss")
    params = prog.params
    for k, v in before.items():
        params[k][...] = v
    return prog


def image(shape=(1, 8, 8)):
    dims = ", ".join(map(str, shape))
    return f"reshape(e, (-1, {dims}))", lambda e: e.reshape(-1, *shape)


def recurrent(cell: str, name: str, last=False):
    """torch.nn.RNN / LSTM on the program's parameters `name.*`."""
    def fn(e, P, training):
        net = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(D, 5, batch_first=True)
        parts = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
        y = torch.func.functional_call(net, {f"{p}_l0": P[f"{name}.{p}"] for p in parts}, (e,))[0]
        return y[:, -1] if last else y
    return fn


IMG, img = image()
ELEMENTWISE = {
    "relu": ("relu(e)", torch.relu),
    "leaky_relu": ("leaky_relu(e, slope=0.2)", lambda z: F.leaky_relu(z, 0.2)),
    "sigmoid": ("sigmoid(e)", torch.sigmoid),
    "tanh": ("tanh(e)", torch.tanh),
    "softmax": ("softmax(e)", lambda z: torch.softmax(z, -1)),
    "log_softmax": ("log_softmax(e)", lambda z: torch.log_softmax(z, -1)),
    "exp": ("exp(e)", torch.exp),
    "log": ("log(e)", torch.log),
    "sqrt": ("sqrt(e)", torch.sqrt),
    "arithmetic": ("(e - 1) * (e + 2) / 3", lambda z: (z - 1) * (z + 2) / 3),
    "abs": ("abs(e)", torch.abs),
    "clamp": ("clamp(e, -0.5, 0.5)", lambda z: z.clamp(-0.5, 0.5)),
    "clamp_lo": ("clamp(e, lo=-0.5)", lambda z: z.clamp(min=-0.5)),
    # torch's f64 (and scalar f32) kernel: gelu(+inf) = +inf; its vectorized
    # f32 kernel gives NaN there.
    "gelu": ("gelu(e)", lambda z: F.gelu(z.double()).float()),
    "gelu_tanh": ('gelu(e, approximate="tanh")', lambda z: F.gelu(z, approximate="tanh")),
    "where": ("where(e, e, e * 2)", lambda z: torch.where(z.bool(), z, z * 2)),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_elementwise(name):
    body, fn = ELEMENTWISE[name]
    check(body, (B, T, D), lambda e, P, training: fn(e))


def pool(size, stride=None, padding=0):
    return lambda e, P, training: F.max_pool2d(img(e), size, stride, padding)


# body, output shape, PyTorch, table
LAYERS = {
    "dense": ('dense(reshape(e, (-1, 8)), 5, name="d")', (V, 5),
              lambda e, P, training: F.linear(e.reshape(-1, 8), P["d.weight"], P["d.bias"])),
    "conv2d": (f'conv2d({IMG}, 3, 3, padding=1, name="c")', (B, 3, 8, 8),
               lambda e, P, training: F.conv2d(img(e), P["c.weight"], P["c.bias"], padding=1)),
    "conv2d_strided": (f'conv2d({IMG}, 2, 3, stride=2, name="c")', (B, 2, 3, 3),
                       lambda e, P, training: F.conv2d(img(e), P["c.weight"], P["c.bias"], stride=2)),
    # Max pooling: windows of up to 9 taps are chains of maxima, larger ones
    # loops; the gradient recomputes each window's argmax or, past 16 reads
    # per element, reads the forward pass's indices.
    "maxpool": (f"maxpool({IMG}, 2)", (B, 1, 4, 4), pool(2)),
    "maxpool_padded": (f"maxpool({IMG}, 3, stride=2, padding=1)", (B, 1, 4, 4), pool(3, 2, 1)),
    "maxpool_overlapping": (f"maxpool({IMG}, 2, stride=1)", (B, 1, 7, 7), pool(2, 1)),
    "maxpool_indices": (f"maxpool({IMG}, 3, stride=1)", (B, 1, 6, 6), pool(3, 1)),
    "maxpool_large": (f"maxpool({IMG}, 4)", (B, 1, 2, 2), pool(4)),
    "maxpool_large_indices": (f"maxpool({IMG}, 4, stride=2, padding=1)", (B, 1, 4, 4), pool(4, 2, 1)),
    "conv2d_relu_maxpool": (f'conv2d({IMG}, 2, 3, padding=1, name="c") |> relu |> maxpool(2)', (B, 2, 4, 4),
                            lambda e, P, training: F.max_pool2d(torch.relu(F.conv2d(
                                img(e), P["c.weight"], P["c.bias"], padding=1)), 2)),
    "avgpool": (f"avgpool({IMG}, 2)", (B, 1, 4, 4), lambda e, P, training: F.avg_pool2d(img(e), 2)),
    "avgpool_padded": (f"avgpool({IMG}, 3, stride=2, padding=1)", (B, 1, 4, 4),
                       lambda e, P, training: F.avg_pool2d(img(e), 3, 2, 1)),
    "global_avgpool": (f"global_avgpool({IMG})", (B, 1, 1, 1),
                       lambda e, P, training: F.adaptive_avg_pool2d(img(e), 1)),
    "concat_flatten": (f"flatten(concat({IMG}, relu({IMG}), axis=1))", (B, 128),
                       lambda e, P, training: torch.cat([img(e), torch.relu(img(e))], 1).flatten(1)),
    "batchnorm": ('batchnorm(reshape(e, (-1, 2, 4, 8)), name="bn")', (B, 2, 4, 8),
                  lambda e, P, training: F.batch_norm(
                      e.reshape(-1, 2, 4, 8), P["bn.running_mean"].detach().clone(),
                      P["bn.running_var"].detach().clone(), P["bn.weight"], P["bn.bias"], training, 0.1, 1e-5),
                  channel_specials),
    "layernorm": ('layernorm(e, name="ln")', (B, T, D),
                  lambda e, P, training: F.layer_norm(e, (D,), P["ln.weight"], P["ln.bias"])),
    # Each row's maximum (its first NaN, if any), by argmax and gather.
    "argmax_gather": (f"gather(e, reshape(argmax(e, 2), ({B}, {T}, 1)), 2)", (B, T, 1),
                      lambda e, P, training: torch.gather(e, 2, e.argmax(2, keepdim=True))),
    "rnn": ('rnn(e, 5, name="r")', (B, T, 5), recurrent("rnn", "r"), sequence_specials),
    "lstm": ('lstm(e, 5, name="l")', (B, T, 5), recurrent("lstm", "l"), sequence_specials),
    "lstm_last": ('last(lstm(e, 5, name="l"))', (B, 5), recurrent("lstm", "l", last=True), sequence_specials),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer(name):
    check(*LAYERS[name])


def test_relu_keeps_nan_and_inf():
    prog = dlc.compile("model m {\n input x: f32[1, 4]\n output y = relu(x)\n}")
    y = prog.run("m", x=np.array([[nan, -1, 2, inf]], np.float32))["y"]
    close(y, [[nan, 0, 2, inf]])


def test_maxpool_window_with_nan_is_nan_and_its_gradient_goes_to_the_last_nan():
    prog = check(*LAYERS["maxpool"])
    y = prog.run("m", tok=TOKENS)["y"]
    assert np.isnan(y[0, 0, 0, 1]) and np.isfinite(y[1, 0, 2, 0])
    t = np.zeros((B, 1, 4, 4), np.float32)
    g = prog.grads("g", tok=TOKENS, t=t)["e.weight"]
    # rows 0-1 of the image, columns 2-3: NaNs at (0, 3) and (1, 2).
    assert np.isnan(g[1, 2]) and g[0, 3] == 0 and g[0, 2] == 0 and g[1, 3] == 0


def test_rnn_fed_nan_outputs_nan_from_that_step():
    prog = check(*LAYERS["rnn"])
    y = prog.run("m", tok=TOKENS)["y"]
    assert np.isfinite(y[0]).all() and np.isfinite(y[1, :4]).all() and np.isnan(y[1, 4:]).all()


def test_batchnorm_running_statistics_take_the_nan():
    prog = check(*LAYERS["batchnorm"])
    prog.train("g", tok=TOKENS, t=np.zeros((B, 2, 4, 8), np.float32))
    mean, var = prog.params["bn.running_mean"], prog.params["bn.running_var"]
    assert np.isnan(mean[0]) and np.isnan(var[0]) and np.isfinite(mean[1]) and np.isfinite(var[1])


LOSS_SRC = """
model m {{
    input x: f32[4, 3]
    output y = dense(x, 3, name="d")
}}
train g {{
    input x: f32[4, 3]
    input t: {t_type}[{t_shape}]
    loss = {loss}(m(x), t)
    optimizer = sgd(lr=0.1)
}}
"""


@pytest.mark.parametrize("loss,special,want", [
    ("cross_entropy", None, "finite"), ("cross_entropy", -inf, "finite"),   # -inf off the labels
    ("cross_entropy", "label", "inf"), ("cross_entropy", inf, "nan"), ("cross_entropy", nan, "nan"),
    ("mse", inf, "inf"), ("mse", nan, "nan"),
])
def test_loss(loss, special, want):
    """A loss over a dense layer's output whose bias holds the special value
    in one class: the loss and every gradient as PyTorch's."""
    labels = np.array([0, 1, 0, 1], np.int32)
    t = labels if loss == "cross_entropy" else np.random.default_rng(4).normal(size=(4, 3)).astype(np.float32)
    prog = dlc.compile(LOSS_SRC.format(loss=loss, t_type="i32" if t.ndim == 1 else "f32",
                                       t_shape=", ".join(map(str, t.shape))))
    if special is not None:
        prog.params["d.bias"][0 if special == "label" else 2] = -inf if special == "label" else special
    x = np.random.default_rng(5).normal(size=(4, 3)).astype(np.float32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    got = prog.grads("g", x=x, t=t)
    ref = TORCH_LOSS[loss](F.linear(torch.tensor(x), P["d.weight"], P["d.bias"]), torch.tensor(t))
    ref.backward()
    for k in got:
        close(got[k], P[k].grad.numpy(), k)
    value = prog.train("g", x=x, t=t)
    close(value, ref.item(), "loss")
    assert {"finite": np.isfinite, "inf": np.isposinf, "nan": np.isnan}[want](value)


def test_bce():
    # Probabilities 0 and 1 meet the -100 clamp of PyTorch's logs (the
    # losses compared: there PyTorch's gradient divides by max(p (1 - p),
    # 1e-12) instead); a NaN probability, which PyTorch refuses, gives NaN.
    table = lambda: np.tile(np.array([0.1, 0.25, 0.9, 0.5, 0.75, 0.6, 0.3, 0.99], np.float32), (V, 1))
    t = np.tile(np.array([0, 1, 1, 0, 1, 0, 0.5, 1], np.float32), (B, T, 1))
    prog = check("e", (B, T, D), lambda e, P, training: e, table, loss="bce", t=t)
    edges = np.tile(np.array([0, 1, 0, 1, 0, 1, 0.5, 1], np.float32), (V, 1))
    prog.params["e.weight"][...] = edges
    want = F.binary_cross_entropy(torch.tensor(edges.reshape(B, T, D)), torch.tensor(t)).item()
    close(prog.train("g", tok=TOKENS, t=t), want, "loss")
    edges[4, 2] = nan
    prog.params["e.weight"][...] = edges
    assert np.isnan(prog.train("g", tok=TOKENS, t=t))
    with pytest.raises(RuntimeError):
        F.binary_cross_entropy(torch.tensor(edges[4]), torch.tensor(t[0, 4]))


def test_dropout_keeps_nan():
    # As nn.Dropout, a product with the mask: a dropped NaN is still NaN.
    prog = dlc.compile(SRC.format(B=B, T=T, V=V, D=D, body="e", t_type=f"f32[{B}, {T}, {D}]", loss="mse")
                       .replace("loss = mse(m(tok), t)", "loss = mse(dropout(m(tok), p=0.9), t)"))
    prog.params["e.weight"][...] = specials()
    t = np.zeros((B, T, D), np.float32)
    g = prog.grads("g", tok=TOKENS, t=t)["e.weight"]
    assert np.isnan(g[np.isnan(specials())]).all()
    assert np.isnan(prog.train("g", tok=TOKENS, t=t))


def test_gaussian_noise_keeps_nan_and_inf():
    prog = dlc.compile(SRC.format(B=B, T=T, V=V, D=D, body="e", t_type=f"f32[{B}, {T}, {D}]", loss="mse")
                       .replace("loss = mse(m(tok), t)", "loss = mse(gaussian_noise(m(tok), 0.1), t)"))
    prog.params["e.weight"][...] = specials()
    g = prog.grads("g", tok=TOKENS, t=np.zeros((B, T, D), np.float32))["e.weight"]
    assert np.isnan(g[np.isnan(specials())]).all() and np.isposinf(g[specials() == inf]).all()


LSTM_CLASSIFIER = """
model clf {
    input x: f32[batch, time, 3]
    output logits = dense(last(lstm(x, 8, name="lstm")), 2, name="out")
}
train fit {
    input x: f32[batch, time, 3]
    input y: i32[batch]
    loss = cross_entropy(clf(x), y)
    optimizer = adam(lr=0.01)
}
"""


def test_lstm_classifier_fed_one_nan_reports_nan_losses():
    prog = dlc.compile(LSTM_CLASSIFIER, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 5, 3)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int32)
    clean = [prog.train("fit", x=x, y=y) for _ in range(5)]
    assert np.isfinite(clean).all() and clean[-1] < clean[0]
    bad = x.copy()
    bad[3, 2, 1] = nan
    assert np.isnan(prog.train("fit", x=bad, y=y))
    # The update spread the NaN through every weight: later losses are NaN,
    # never a falling finite one, and so is every logit.
    assert np.isnan(prog.params["lstm.weight_ih"]).all()
    assert all(np.isnan(prog.train("fit", x=x, y=y)) for _ in range(3))
    assert np.isnan(prog.run("clf", x=x)["logits"]).all()


# ------------------------------------------------------------------ Winograd

def winograd(src: str):
    """The program, whose one kernel is a Winograd convolution (a pooling
    before it computed in its staged rows, one after it of its tiles)."""
    prog = dlc.compile(src)
    kinds = [k.name.rsplit("_", 1)[0] for e in prog.loops.entries for k in e.kernels]
    assert kinds == ["winograd_conv2d"], kinds
    return prog


def nan_image(n, c, h, w, value):
    x = np.random.default_rng(6).normal(size=(n, c, h, w)).astype(np.float32)
    x[0, 3, 2, 5] = x[0, 0, 9, 9] = x[1, 7, 14, 0] = value
    return x


@pytest.mark.parametrize("n,h,w", [(2, 16, 14), (2, 15, 13)])
def test_winograd_absorbed_pooling_keeps_nan(n, h, w):
    # conv2d 3x3 |> relu |> maxpool(2): the pooling windows are the Winograd
    # tiles, each tile's maximum. A NaN input reaches an output of each tile
    # whose 4x4 input patch holds it, in PyTorch as here: equal NaN patterns.
    prog = winograd(f"""
model m {{
    input x: f32[batch, 16, {h}, {w}]
    output y = conv2d(x, 20, 3, padding=1, name="c") |> relu |> maxpool(2)
}}
""")
    x = nan_image(n, 16, h, w, nan)
    p = {k: torch.tensor(v.copy()) for k, v in prog.params.items()}
    want = F.max_pool2d(F.relu(F.conv2d(torch.tensor(x), p["c.weight"], p["c.bias"], padding=1)), 2)
    close(prog.run("m", x=x)["y"], want.numpy())


@pytest.mark.parametrize("value", [nan, inf, -inf])
@pytest.mark.parametrize("pooled", ["before", "after", "none"])
def test_winograd_never_hides_a_non_finite_input(value, pooled):
    # Winograd's transforms mix each tile's 4x4 input patch into its 2x2
    # outputs (inf - inf: NaN), so a non-finite input makes every output of
    # its tiles non-finite, where PyTorch's direct convolution has some: no
    # output that PyTorch gives as non-finite is finite, and the others match.
    before = " |> maxpool(2)" if pooled == "before" else ""
    after = " |> maxpool(2)" if pooled == "after" else ""
    prog = winograd(f"""
model m {{
    input x: f32[batch, 16, 16, 16]
    output y = conv2d(x{before}, 16, 3, padding=1, name="c") |> relu{after}
}}
""")
    x = nan_image(2, 16, 16, 16, value)
    p = {k: torch.tensor(v.copy()) for k, v in prog.params.items()}
    xt = F.max_pool2d(torch.tensor(x), 2) if before else torch.tensor(x)
    want = F.relu(F.conv2d(xt, p["c.weight"], p["c.bias"], padding=1))
    want = (F.max_pool2d(want, 2) if after else want).numpy()
    got = prog.run("m", x=x)["y"]
    assert not np.isfinite(got[~np.isfinite(want)]).any()
    both = np.isfinite(got) & np.isfinite(want)
    assert both.mean() > 0.5
    close(got[both], want[both])


# ---------------------------------------------------------------------- cuda

CUDA_CASES = ["maxpool", "maxpool_indices", "maxpool_large_indices", "lstm"]
CUDA_ELEMENTWISE = ["relu", "leaky_relu", "softmax"]


def check_cuda():
    """The cuda target on the cases above (a GPU, or the driver's emulator)."""
    for name in CUDA_ELEMENTWISE:
        body, fn = ELEMENTWISE[name]
        check(body, (B, T, D), lambda e, P, training: fn(e), target="cuda")
    for name in CUDA_CASES:
        check(*LAYERS[name], target="cuda")


@pytest.mark.gpu
def test_cuda_target():
    try:
        dlc.compile("model m {\n input x: f32[1]\n output y = x\n}", target="cuda")
    except UnavailableError as e:
        pytest.skip(f"needs an NVIDIA GPU: {e}")
    check_cuda()


def test_cuda_target_on_the_emulator():
    # In a subprocess: the emulator replaces the CUDA driver for the process.
    code = ("import sys; sys.path.insert(0, 'tests/cuda'); import emulator; emulator.install(); "
            "from tests.ops.test_nan_semantics import check_cuda; check_cuda()")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="ptxas (CUDA toolkit) is not on PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptx_max_propagates_nan(arch, tmp_path):
    # relu and pooling as max.NaN (sm_80+), which ptxas assembles.
    src = "model m {\n input x: f32[batch, 1, 8, 8]\n output y = relu(x) |> maxpool(2)\n}"
    ptx = driver.build(src, "m", target="cuda", arch=arch).ptx
    assert "max.NaN.f32" in ptx and "max.f32" not in ptx
    path = tmp_path / "m.ptx"
    path.write_text(ptx)
    r = subprocess.run(["ptxas", f"-arch={arch}", str(path), "-o", str(tmp_path / "m.cubin")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_no_algebra_cancels_nan_or_inf():
    """x - x is NaN for x = NaN or +-inf (reassoc on every add had let LLVM
    fold it to 0: a fuzzer finding); and x + 1 - x is 0 at 1e8 in f32."""
    prog = dlc.compile("""
model m {
    input x: f32[batch, 4]
    output a = x - x - 1.1
    output b = x + -x
    output c = x + 1 - x
}""")
    x = np.array([[np.nan, np.inf, -np.inf, 1e8]], np.float32)
    out = prog.run("m", x=x)
    X = torch.from_numpy(x)
    for name, want in (("a", X - X - 1.1), ("b", X + -X), ("c", X + 1 - X)):
        np.testing.assert_array_equal(out[name], want.numpy(), err_msg=name)
