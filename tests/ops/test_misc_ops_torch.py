"""abs, clamp, where, gelu, layernorm, gather, one_hot, argmax and
gaussian_noise, forward and gradients against PyTorch.

Each op reads a dense layer's output h (so `p.weight` and `p.bias` carry
its input gradient) at two symbolic batch sizes; an f64 program checks the
backward passes against finite differences. fp32: rtol 1e-4, atol 1e-5.
"""
import numpy as np
import pytest
import torch

import dlc
from dlc.errors import CompileError, InvalidArgumentError
from dlc.frontend import parse_program
from dlc.ops import REGISTRY
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional
BATCHES = [3, 17]


def program(body: str, extra: str = "", units: int = 5, dtype: str = "f32") -> str:
    return f"""
model m {{
    input x: {dtype}[batch, 6]{extra}
    h = dense(x, 5, name="p")
    output y = {body}
}}
train g {{
    input x: {dtype}[batch, 6]{extra}
    input t: {dtype}[batch, {units}]
    loss = mse(m(x{", c" if extra else ""}), t)
    optimizer = sgd(lr=0.1)
}}
"""


def check(body, torch_fn, batch, extra="", c=None, units=5):
    """y = body(h) and every parameter's gradient, against torch_fn(h, c)."""
    prog = dlc.compile(program(body, f"\n    input c: {extra}" if extra else "", units), seed=batch)
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, 6)).astype(np.float32)
    t = rng.normal(size=(batch, units)).astype(np.float32)
    inputs = dict(x=x) if c is None else dict(x=x, c=c)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    h = F.linear(torch.tensor(x), P["p.weight"], P["p.bias"])
    want = torch_fn(h, None if c is None else torch.tensor(c), P)
    np.testing.assert_allclose(prog.run("m", **inputs)["y"], want.detach().numpy(), rtol=RTOL, atol=ATOL)
    F.mse_loss(want, torch.tensor(t)).backward()
    grads = prog.grads("g", t=t, **inputs)
    for k, v in P.items():
        np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
        assert np.abs(grads[k]).max() > 0, k
    return prog


# body of h, PyTorch (h, c, params), the input c's type and values (batch -> array)
CASES = {
    "abs": ("abs(h)", lambda h, c, P: h.abs()),
    "clamp": ("clamp(h, -0.3, 0.4)", lambda h, c, P: h.clamp(-0.3, 0.4)),
    "clamp_lo": ("clamp(h, lo=-0.2)", lambda h, c, P: h.clamp(min=-0.2)),
    "clamp_hi": ("h |> clamp(hi=0.1)", lambda h, c, P: h.clamp(max=0.1)),
    "gelu": ("gelu(h * 3)", lambda h, c, P: F.gelu(h * 3)),
    "gelu_tanh": ('gelu(h * 3, approximate="tanh")', lambda h, c, P: F.gelu(h * 3, approximate="tanh")),
    "layernorm": ('layernorm(h, name="ln") * 2', lambda h, c, P: 2 * F.layer_norm(
        h, (5,), P["ln.weight"], P["ln.bias"], 1e-5)),
    "layernorm_eps": ('layernorm(h * 0.01, eps=0.1, name="ln")', lambda h, c, P: F.layer_norm(
        h * 0.01, (5,), P["ln.weight"], P["ln.bias"], 0.1)),
    "where": ("where(c, h, h * 0.5 - 1)", lambda h, c, P: torch.where(c.bool(), h, h * 0.5 - 1),
              "f32[batch, 5]", lambda n, rng: rng.choice([0, 1, -2, np.nan], size=(n, 5)).astype(np.float32)),
    "where_number": ("where(c, h * 2, -1e4) |> softmax", lambda h, c, P: torch.softmax(torch.where(
        c.bool(), h * 2, -1e4), -1), "f32[batch, 5]",
        lambda n, rng: np.concatenate([np.ones((n, 1)), rng.integers(0, 2, size=(n, 4))], 1).astype(np.float32)),
    "where_number_first": ("where(c, 0, h)", lambda h, c, P: torch.where(c.bool(), 0, h),
                           "i32[batch, 5]", lambda n, rng: rng.integers(0, 2, size=(n, 5)).astype(np.int32)),
    "where_broadcast": ("where(c, h, sigmoid(h))", lambda h, c, P: torch.where(c.bool(), h, torch.sigmoid(h)),
                        "i32[batch, 1]", lambda n, rng: rng.integers(0, 2, size=(n, 1)).astype(np.int32)),
    "gather": ("gather(h, c, 1)", lambda h, c, P: torch.gather(h, 1, c.long()),
               "i32[batch, 7]", lambda n, rng: rng.integers(0, 5, size=(n, 7)).astype(np.int32), 7),
    "gather_narrow": ("gather(h, c, -1)", lambda h, c, P: torch.gather(h, -1, c.long()),
                      "i32[batch, 1]", lambda n, rng: rng.integers(0, 5, size=(n, 1)).astype(np.int32), 1),
    "gather_batch_axis": ("gather(h, c, 0)", lambda h, c, P: torch.gather(h, 0, c.long()),
                          "i32[4, 5]", lambda n, rng: rng.integers(0, n, size=(4, 5)).astype(np.int32)),
    "gather_3d": ("reshape(gather(reshape(h, (-1, 5, 1)), c, 1), (-1, 2))",
                  lambda h, c, P: torch.gather(h.reshape(-1, 5, 1), 1, c.long()).reshape(-1, 2),
                  "i32[batch, 2, 1]", lambda n, rng: rng.integers(0, 5, size=(n, 2, 1)).astype(np.int32), 2),
    "one_hot_argmax": ("where(one_hot(argmax(h, 1), 5), h, h * 0.1)",
                       lambda h, c, P: torch.where(F.one_hot(h.argmax(1), 5).bool(), h, h * 0.1)),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch", BATCHES)
def test_op_forward_and_gradient(name, batch):
    body, fn, *more = CASES[name]
    if not more:
        check(body, fn, batch)
        return
    extra, make, *units = more
    c = make(batch, np.random.default_rng(batch + 1))
    if name == "gather_batch_axis":   # the rows gathered: 4 of them
        prog = dlc.compile(program(body, f"\n    input c: {extra}", 5).replace("[batch, 5]", "[4, 5]"))
        rng = np.random.default_rng(0)
        x = rng.normal(size=(batch, 6)).astype(np.float32)
        P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
        want = fn(F.linear(torch.tensor(x), P["p.weight"], P["p.bias"]), torch.tensor(c), P)
        np.testing.assert_allclose(prog.run("m", x=x, c=c)["y"], want.detach().numpy(), rtol=RTOL, atol=ATOL)
        t = rng.normal(size=(4, 5)).astype(np.float32)
        F.mse_loss(want, torch.tensor(t)).backward()
        grads = prog.grads("g", x=x, c=c, t=t)
        for k, v in P.items():
            np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
        return
    check(body, fn, batch, extra, c, *units)


def test_references_match_torch():
    rng = np.random.default_rng(0)
    x = (3 * rng.normal(size=(4, 6))).astype(np.float32)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    x[1, 1] = x[1, 4] = 9   # a tie
    X = torch.tensor(x)
    close = lambda got, want: np.testing.assert_allclose(got, want.numpy(), rtol=RTOL, atol=ATOL, equal_nan=True)
    close(REGISTRY["abs"].reference(x), X.abs())
    close(REGISTRY["clamp"].reference(x, lo=-1.0, hi=None), X.clamp(min=-1))
    close(REGISTRY["gelu"].reference(x[1:]), F.gelu(X[1:]))
    with np.errstate(invalid="ignore"):   # inf * 0 at -inf: NaN, as torch
        close(REGISTRY["gelu"].reference(x, approximate="tanh"), F.gelu(X, approximate="tanh"))
    close(REGISTRY["argmax"].reference(x, axis=1), X.argmax(1).int())
    idx = rng.integers(0, 6, size=(4, 3)).astype(np.int32)
    close(REGISTRY["gather"].reference(x, idx, axis=1), torch.gather(X, 1, torch.tensor(idx).long()))
    g = rng.normal(size=(4, 3)).astype(np.float32)
    want = torch.zeros(4, 6).scatter_add_(1, torch.tensor(idx).long(), torch.tensor(g))
    close(REGISTRY["scatter_add"].reference(g, idx, axis=1, shape=(4, 6)), want)


def test_argmax_takes_the_first_maximum_or_the_first_nan():
    prog = dlc.compile("""
model m {
    input x: f32[batch, 3, 5]
    output last = argmax(x, -1)
    output mid = argmax(x, 1)
    output first = argmax(x, 0)
}""")
    x = np.random.default_rng(0).integers(0, 3, size=(4, 3, 5)).astype(np.float32)   # many ties
    x[0, 1, 2] = x[0, 1, 4] = x[2, 0, 0] = np.nan
    x[1, 2, 3] = -np.inf
    out = prog.run("m", x=x)
    X = torch.tensor(x)
    for name, axis in (("last", -1), ("mid", 1), ("first", 0)):
        assert out[name].dtype == np.int32
        np.testing.assert_array_equal(out[name], X.argmax(axis).numpy(), err_msg=name)


def test_one_hot_matches_torch_and_refuses_labels_outside_n():
    prog = dlc.compile("model m {\n input t: i32[batch, time]\n output y = one_hot(t, 4)\n}")
    t = np.array([[0, 3, 1], [2, 2, 0]], np.int32)
    y = prog.run("m", t=t)["y"]
    assert y.dtype == np.float32 and y.shape == (2, 3, 4)
    np.testing.assert_array_equal(y, F.one_hot(torch.tensor(t).long(), 4).numpy())
    with pytest.raises(InvalidArgumentError, match=r"t\[1, 0\] is 4, outside the valid range \[0, 3\]"):
        prog.run("m", t=np.array([[0, 1, 2], [4, 0, 0]], np.int32))


def test_gather_refuses_an_index_outside_the_axis():
    prog = dlc.compile(program("gather(h, c, 1)", "\n    input c: i32[batch, 2]", 2))
    x = np.zeros((2, 6), np.float32)
    with pytest.raises(InvalidArgumentError, match=r"c\[0, 1\] is -1, outside the valid range \[0, 4\]"):
        prog.run("m", x=x, c=np.array([[0, -1], [1, 1]], np.int32))
    with pytest.raises(InvalidArgumentError, match=r"c\[1, 0\] is 5, outside the valid range \[0, 4\]"):
        prog.grads("g", x=x, c=np.array([[0, 1], [5, 1]], np.int32), t=np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("source,where,message", [
    ("gather(h, h, 1)", "h, 1)", "'gather' expects integer index (i32)"),
    ("gather(h, c, 2)", "2", "'gather' axis 2 is out of range"),
    ("clamp(h)", "clamp", "'clamp' needs at least one of 'lo' and 'hi'"),
    ('gelu(h, approximate="fast")', 'approximate="fast"', "'gelu' approximate must be"),
    ("gaussian_noise(h, -1)", "-1", "'gaussian_noise' needs std >= 0"),
    ("one_hot(c, 0)", "0", "'one_hot' needs n >= 1"),
    ("where(c, 1, 2)", "1", "'where' needs a tensor for a or b, got two numbers"),
    ("where(h, c, 0.5)", "0.5", "'where' can't put the number 0.5 in the integer tensor"),
])
def test_bad_arguments_are_located_errors(source, where, message):
    src = f"model m {{\n    input x: f32[batch, 6]\n    input c: i32[batch, 2]\n" \
          f"    h = dense(x, 5, name=\"p\")\n    output y = {source}\n}}\n"
    with pytest.raises(CompileError) as info:
        parse_program(src, "t.dl")
    err = info.value
    assert message in err.message, err.render()
    assert err.line == 5, err.render()
    assert src.splitlines()[4][err.col - 1:].startswith(where), err.render()


def test_gradients_match_finite_differences():
    src = """
model net {
    input x: f64[batch, 6]
    input i: i32[batch, 4]
    input c: f64[batch, 5]
    input t: f64[batch, 4]
    h = dense(x, 5, name="a")
    h = gelu(h) + gelu(h, approximate="tanh") + abs(h) + clamp(h, -0.5, 0.6)
    h = layernorm(where(c, h, h * h), name="ln")
    output value = mse(gather(dense(h, 5, name="b"), i, 1), t)
}
train fit {
    input x: f64[batch, 6]
    input i: i32[batch, 4]
    input c: f64[batch, 5]
    input t: f64[batch, 4]
    loss = net(x, i, c, t)
    optimizer = sgd(lr=0.1)
}"""
    prog = dlc.compile(src, seed=1)
    rng = np.random.default_rng(0)
    inputs = dict(x=rng.normal(size=(3, 6)), i=rng.integers(0, 5, size=(3, 4)).astype(np.int32),
                  c=rng.integers(0, 2, size=(3, 5)).astype(np.float64), t=rng.normal(size=(3, 4)))
    assert_param_grads_match(prog, inputs, rtol=1e-3, atol=1e-6)


# ----------------------------------------------------------- gaussian_noise

NOISE = """
model m {
    input x: f32[batch, 6]
    output y = dense(x, 4096, name="fc")
}
train g {
    input x: f32[batch, 6]
    input t: f32[batch, 4096]
    loss = mse(gaussian_noise(m(x), 0.5, seed=SEED), t)
    optimizer = sgd(lr=1e-3)
}
"""


def noise_of(prog, x, t):
    """The noise the next training step adds, read off the bias gradient:
    with one example, d mse / d bias = 2 (y + noise - t) / units."""
    y = prog.run("m", x=x)["y"]
    return prog.grads("g", x=x, t=t)["fc.bias"] * 4096 / 2 - y[0] + t[0]


def test_gaussian_noise_is_seeded_per_step_and_normal():
    x = np.random.default_rng(0).normal(size=(1, 6)).astype(np.float32)
    t = np.zeros((1, 4096), np.float32)
    prog = dlc.compile(NOISE.replace("SEED", "3"), seed=0)
    y = prog.run("m", x=x)["y"]
    np.testing.assert_allclose(y, x @ prog.params["fc.weight"].T + prog.params["fc.bias"], rtol=RTOL, atol=ATOL)
    draws = []
    for step in range(3):
        n = noise_of(prog, x, t)
        np.testing.assert_allclose(noise_of(prog, x, t), n, atol=1e-4)   # the gradient entry steps nothing
        want = REGISTRY["gaussian_noise"].reference(np.zeros((1, 4096), np.float32), step, std=0.5, seed=3, salt=0)
        np.testing.assert_allclose(n, want[0], atol=2e-4)
        # mean 0 and std 0.5 of 4096 draws: within 5 standard errors
        assert abs(n.mean()) < 5 * 0.5 / 64 and abs(n.std() - 0.5) < 5 * 0.5 / np.sqrt(2 * 4096)
        assert abs(np.mean(np.abs(n) > 1.0) - 0.0455) < 0.02   # the tails of a normal: P(|z| > 2)
        draws.append(n)
        prog.train("g", x=x, t=t)
    assert not np.allclose(draws[0], draws[1]) and abs(np.corrcoef(draws[0], draws[1])[0, 1]) < 0.1
    # Another session with the same seed draws the same; another seed does not.
    again = dlc.compile(NOISE.replace("SEED", "3"), seed=0)
    np.testing.assert_allclose(noise_of(again, x, t), draws[0], atol=2e-4)
    other = dlc.compile(NOISE.replace("SEED", "4"), seed=0)
    assert abs(np.corrcoef(noise_of(other, x, t), draws[0])[0, 1]) < 0.1


def test_gaussian_noise_and_dropout_draw_independent_streams():
    src = """
model m {
    input x: f32[batch, 8]
    output y = dense(x, 64, name="fc")
}
train g {
    input x: f32[batch, 8]
    input t: f32[batch, 64]
    loss = mse(dropout(gaussian_noise(m(x), 0.3), p=0.25), t)
    optimizer = sgd(lr=0.1)
}
"""
    prog = dlc.compile(src)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(16, 8)).astype(np.float32)
    t = rng.normal(size=(16, 64)).astype(np.float32)
    for step in range(2):
        ones = np.ones((16, 64), np.float32)
        noise = REGISTRY["gaussian_noise"].reference(0 * ones, step, std=0.3, seed=0, salt=0)
        mask = REGISTRY["dropout"].reference(ones, step, p=0.25, seed=0, salt=1)
        P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
        y = (F.linear(torch.tensor(x), P["fc.weight"], P["fc.bias"]) + torch.tensor(noise)) * torch.tensor(mask)
        loss = F.mse_loss(y, torch.tensor(t))
        loss.backward()
        g = prog.grads("g", x=x, t=t)
        for k, v in P.items():
            np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
        assert prog.train("g", x=x, t=t) == pytest.approx(loss.item(), rel=RTOL)


def test_gaussian_noise_is_the_identity_in_inference_and_trains_reproducibly():
    src = """
model ae {
    input x: f32[batch, 8]
    output y = gaussian_noise(x, 0.2, seed=1) |> dense(4, name="enc") |> tanh |> dense(8, name="dec")
}
train fit {
    input x: f32[batch, 8]
    loss = mse(ae(x), x)
    optimizer = adam(lr=1e-2)
}
"""
    x = np.random.default_rng(2).normal(size=(32, 8)).astype(np.float32)
    runs = []
    for _ in range(2):
        prog = dlc.compile(src, seed=5)
        P = {k: torch.tensor(v.copy()) for k, v in prog.params.items()}
        want = F.linear(torch.tanh(F.linear(torch.tensor(x), P["enc.weight"], P["enc.bias"])),
                        P["dec.weight"], P["dec.bias"])
        np.testing.assert_allclose(prog.run("ae", x=x)["y"], want.numpy(), rtol=RTOL, atol=ATOL)
        runs.append([prog.train("fit", x=x) for _ in range(30)])
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.8 * runs[0][0]
