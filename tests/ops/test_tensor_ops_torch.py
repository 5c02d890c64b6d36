"""N-D dense, symbolic reshape, batched matmul and the axis reductions
(sum, mean, max, min) against PyTorch: forward and parameter gradients at
fp32 rtol 1e-4 / atol 1e-5, symbolic batch and time at two sizes each, an
f64 finite-difference check, and located errors."""
import numpy as np
import pytest
import torch

import dlc
from dlc.errors import CompileError
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
SIZES = [(2, 5), (9, 7)]   # (batch, time), unlike the fixed dims (1, 3, 4, 6)


def check(prog, inputs: dict, y: torch.Tensor, params: dict) -> None:
    """prog's model output `m.y` against torch's `y`, and the gradients of
    train block `fit` (loss sum(y * r)) for `params` (name -> torch leaf)."""
    got = prog.run("m", **{k: v for k, v in inputs.items() if k != "r"})["y"]
    np.testing.assert_allclose(got, y.detach().numpy(), rtol=RTOL, atol=ATOL)
    (y * torch.tensor(inputs["r"])).sum().backward()
    grads = prog.grads("fit", **inputs)
    for name, p in params.items():
        np.testing.assert_allclose(grads[name], p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)
        assert np.abs(grads[name]).max() > 0, name


def leaves(prog, *names):
    return {n: torch.tensor(prog.params[n].copy(), requires_grad=True) for n in names}


def program(inputs: list[str], body: str, rtype: str) -> str:
    """Model m with inputs `inputs` ("x: f32[...]") and output y, and train
    block fit whose loss is sum(m(...).y * r) for an input r: f32`rtype`."""
    decls = "\n".join(f"    input {i}" for i in inputs)
    args = ", ".join(i.split(":")[0] for i in inputs)
    return f"""
model m {{
{decls}
{body}
}}
train fit {{
{decls}
    input r: f32{rtype}
    loss = sum(m({args}).y * r)
    optimizer = sgd(lr=0.1)
}}
"""


# ------------------------------------------------------------ dense, reshape

DENSE_SRC = """
model m {
    input x: f32[batch, time, 6]
    input z: f32[6]
    h = dense(x, 5, name="a") |> tanh
    f = reshape(h, (-1, 5))
    g = reshape(dense(f, 4, name="b"), (batch, time, 4))
    output y = reshape(dense(reshape(g, (batch * time, 4)), 3, name="c"), (batch, -1, 3))
    output f = dense(z, 2, name="v")
}
train fit {
    input x: f32[batch, time, 6]
    input z: f32[6]
    input r: f32[batch, time, 3]
    loss = sum(m(x, z).y * r) + sum(m(x, z).f)
    optimizer = sgd(lr=0.1)
}
"""


@pytest.mark.parametrize("batch,time", SIZES)
def test_dense_nd_and_symbolic_reshape(batch, time):
    prog = dlc.compile(DENSE_SRC, seed=batch)
    rng = np.random.default_rng(batch)
    x = rng.normal(size=(batch, time, 6)).astype(np.float32)
    z = rng.normal(size=6).astype(np.float32)
    r = rng.normal(size=(batch, time, 3)).astype(np.float32)
    p = leaves(prog, *(f"{l}.{k}" for l in "abcv" for k in ("weight", "bias")))
    lin = lambda l, z: torch.nn.functional.linear(z, p[f"{l}.weight"], p[f"{l}.bias"])
    xt = torch.tensor(x)
    h = torch.tanh(lin("a", xt))
    g = lin("b", h.reshape(-1, 5)).reshape(batch, time, 4)
    y = lin("c", g.reshape(batch * time, 4)).reshape(batch, -1, 3)
    f = lin("v", torch.tensor(z))   # dense on a 1-D input, as nn.Linear
    got = prog.run("m", x=x, z=z)
    np.testing.assert_allclose(got["y"], y.detach().numpy(), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got["f"], f.detach().numpy(), rtol=RTOL, atol=ATOL)
    ((y * torch.tensor(r)).sum() + f.sum()).backward()
    grads = prog.grads("fit", x=x, z=z, r=r)
    for name, t in p.items():
        np.testing.assert_allclose(grads[name], t.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


def test_dense_init_and_layout_as_nn_linear():
    prog = dlc.compile("model m {\n input x: f32[batch, time, 50]\n output y = dense(x, 7, name=\"a\")\n}")
    w, b = prog.params["a.weight"], prog.params["a.bias"]
    assert w.shape == (7, 50) and b.shape == (7,)
    bound = 1 / np.sqrt(50)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound
    assert np.abs(b).max() <= bound


# ------------------------------------------------------------------ matmul

MATMUL_CASES = {
    # name: (the layers it uses, its expression of a, b [batch, time, 4], c [4, 3], v [4], torch's)
    "3d_3d": ("ab", "matmul(a, transpose(b, (0, 2, 1)))", lambda a, b, c, v: a @ b.transpose(1, 2)),
    "3d_2d": ("ac", "matmul(a, c)", lambda a, b, c, v: a @ c),
    "2d_2d": ("c", "matmul(transpose(c, (1, 0)), c)", lambda a, b, c, v: c.T @ c),
    "broadcast_batch": ("ac", "matmul(a, reshape(c, (1, 4, 3)))", lambda a, b, c, v: a @ c.reshape(1, 4, 3)),
    "4d_3d": ("ab", "matmul(reshape(a, (batch, 1, time, 4)), transpose(b, (0, 2, 1)))",
              lambda a, b, c, v: a.unsqueeze(1) @ b.transpose(1, 2)),
    "3d_1d": ("av", "matmul(a, v)", lambda a, b, c, v: a @ v),
    "1d_3d": ("av", "matmul(v, transpose(a, (0, 2, 1)))", lambda a, b, c, v: v @ a.transpose(1, 2)),
    "1d_2d": ("cv", "matmul(v, c)", lambda a, b, c, v: v @ c),
    "1d_1d": ("v", "matmul(v, v) * v", lambda a, b, c, v: (v @ v) * v),
}


def shape_type(shape: tuple, batch: int, time: int) -> str:
    """The dl dims of a result shape: batch and time by name."""
    names = {batch: "batch", time: "time"}
    return "[" + ", ".join(names.get(d, str(d)) for d in shape) + "]"


@pytest.mark.parametrize("case", sorted(MATMUL_CASES))
@pytest.mark.parametrize("batch,time", SIZES)
def test_matmul_as_torch(case, batch, time):
    layers, expr, ref = MATMUL_CASES[case]
    shape = tuple(ref(torch.zeros(batch, time, 4), torch.zeros(batch, time, 4), torch.zeros(4, 3),
                      torch.zeros(4)).shape)
    src = program(["x: f32[batch, time, 6]", "z: f32[4, 2]"], f"""    a = dense(x, 4, name="a")
    b = dense(x, 4, name="b")
    c = dense(z, 3, name="c")
    v = reshape(dense(z, 1, name="v"), (4,))
    output y = {expr}""", shape_type(shape, batch, time))
    prog = dlc.compile(src, seed=1)
    rng = np.random.default_rng(batch)
    inputs = dict(x=rng.normal(size=(batch, time, 6)).astype(np.float32),
                  z=rng.normal(size=(4, 2)).astype(np.float32),
                  r=rng.normal(size=shape).astype(np.float32))
    p = leaves(prog, *(f"{l}.{k}" for l in layers for k in ("weight", "bias")))
    lin = lambda l, t: torch.nn.functional.linear(t, p[f"{l}.weight"], p[f"{l}.bias"]) if l in layers else None
    x, z = torch.tensor(inputs["x"]), torch.tensor(inputs["z"])
    v = lin("v", z)
    check(prog, inputs, ref(lin("a", x), lin("b", x), lin("c", z), v if v is None else v.reshape(4)), p)


# -------------------------------------------------------------- reductions

REDUCTIONS = {
    "sum_axis": ("sum(h, axis=1)", lambda h: h.sum(1)),
    "sum_neg_keepdim": ("sum(h, axis=-1, keepdim=true)", lambda h: h.sum(-1, keepdim=True)),
    "sum_all": ("sum(h) * h", lambda h: h.sum() * h),
    "mean_tuple": ("mean(h, axis=(0, 2))", lambda h: h.mean((0, 2))),
    "mean_all": ("mean(h) * h", lambda h: h.mean() * h),
    "mean_batch_keepdim": ("mean(h, axis=0, keepdim=true)", lambda h: h.mean(0, keepdim=True)),
    "max_last": ("max(h, axis=-1)", lambda h: h.amax(-1)),
    "max_tuple_keepdim": ("max(h, axis=(1, -1), keepdim=true)", lambda h: h.amax((1, -1), keepdim=True)),
    "max_all": ("max(h) * h", lambda h: h.amax() * h),
    "min_time": ("min(h, axis=1)", lambda h: h.amin(1)),
    "min_tuple": ("min(h, axis=(0, 1))", lambda h: h.amin((0, 1))),
}


@pytest.mark.parametrize("case", sorted(REDUCTIONS))
@pytest.mark.parametrize("batch,time", SIZES)
def test_reductions_as_torch(case, batch, time):
    expr, ref = REDUCTIONS[case]
    shape = tuple(ref(torch.zeros(batch, time, 6)).shape)
    # h is x scaled per feature by s.weight, which the tests with ties set
    # to ones, keeping x's ties: how a tie's gradient is split shows in
    # s.weight's gradient (torch.amax / amin split it evenly).
    src = program(["x: f32[batch, time, 6]", "one: f32[1, 1]"], f"""    h = x * dense(one, 6, name="s", bias=false)
    output y = {expr}""", shape_type(shape, batch, time))
    prog = dlc.compile(src, seed=2)
    rng = np.random.default_rng(batch)
    for ties in (False, True):
        x = rng.integers(-1, 2, size=(batch, time, 6)) if ties else rng.normal(size=(batch, time, 6))
        if ties:
            prog.params["s.weight"][:] = 1.0
        inputs = dict(x=x.astype(np.float32), one=np.ones((1, 1), np.float32),
                      r=rng.normal(size=shape).astype(np.float32))
        p = leaves(prog, "s.weight")
        check(prog, inputs, ref(torch.tensor(inputs["x"]) * p["s.weight"].T), p)


# ---------------------------------------------------- f64 finite differences

FD_SRC = """
model net {
    input x: f64[batch, time, 3]
    input w: f64[batch, time, 2]
    a = dense(x, 4, name="a") |> tanh
    att = softmax(matmul(a, transpose(dense(x, 4, name="b"), (0, 2, 1))))
    h = reshape(dense(reshape(matmul(att, a), (-1, 4)), 2, name="c"), (batch, time, 2))
    s = max(h, axis=1, keepdim=true) + mean(h, axis=(0, 1)) - min(h, axis=-1, keepdim=true)
    output value = sum(s * w) + sum(matmul(a, dense(w, 4, name="d") |> transpose((0, 2, 1))) * 0.1)
}
train fit {
    input x: f64[batch, time, 3]
    input w: f64[batch, time, 2]
    loss = net(x, w)
    optimizer = sgd(lr=0.1)
}
"""


def test_gradients_match_finite_differences():
    prog = dlc.compile(FD_SRC, seed=4)
    rng = np.random.default_rng(0)
    inputs = dict(x=rng.normal(size=(3, 4, 3)), w=rng.normal(size=(3, 4, 2)))
    assert_param_grads_match(prog, inputs, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ errors

@pytest.mark.parametrize("call,arg,message", [
    ("sum(x, axis=3)", "axis=3", "'sum' axes must be distinct and in [-3, 2] for f32[batch, time, 6], got 3"),
    ("max(x, axis=(1, -2))", "axis=", "'max' axes must be distinct"),
    ("matmul(x, x)", "x)", "'matmul' needs a's last dim equal to b's second-to-last dim"),
    ("matmul(x, transpose(reshape(x, (time, batch, 6)), (0, 2, 1)))", "transpose",
     "batch axes of 'matmul' do not broadcast"),
    ("reshape(x, (-1, batch * 5))", "(-1", "'reshape' can't fill the -1 of (-1, 5*batch)"),
    ("reshape(x, (batch + 1, 6))", "+ 1", "sizes can only be multiplied by sizes"),
    ("reshape(x, (batch, time, 3))", "(batch", "elements differ"),
    ("dense(x, batch)", "batch", "argument 'units' of 'dense' must be an integer, got the size batch"),
])
def test_errors_located_at_the_argument(call, arg, message):
    src = f"""
model m {{
    input x: f32[batch, time, 6]
    output y = {call}
}}
"""
    with pytest.raises(CompileError) as e:
        dlc.compile(src)
    text = str(e.value)
    assert message in text
    lines = text.splitlines()
    line = next(l for l in lines if "output y" in l)
    caret = lines[lines.index(line) + 1]
    assert line[caret.index("^"):].startswith(arg), text


def test_output_with_a_product_dim_is_an_error():
    src = "model m {\n    input x: f32[batch, time, 6]\n    output y = reshape(x, (-1, 6))\n}"
    with pytest.raises(CompileError, match=r"an output's dims must be integers or single symbols, "
                                           r"got f32\[batch\*time, 6\]"):
        dlc.compile(src)
