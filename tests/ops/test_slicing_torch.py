"""Subscripts `x[:, -1]`, `x[:, 2:5]` against PyTorch's basic indexing:
forward and gradients (through an embedding before the subscript), on
fixed and symbolic axes at two run-time sizes; f64 finite differences;
located errors."""
import numpy as np
import pytest
import torch

import dlc
from dlc.errors import CompileError
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5

# (subscript in dlc, the same on a torch tensor); h is [batch, time, 6].
CASES = [
    ("h[:, -1]", lambda h: h[:, -1]),
    ("h[:, 0]", lambda h: h[:, 0]),
    ("h[:, 1:3]", lambda h: h[:, 1:3]),
    ("h[:, -3:-1, 2:]", lambda h: h[:, -3:-1, 2:]),
    ("h[:, -2:]", lambda h: h[:, -2:]),
    ("h[:, :2, -4:5]", lambda h: h[:, :2, -4:5]),
    ("h[:, 1, 1:-1]", lambda h: h[:, 1, 1:-1]),
    ("h[-1]", lambda h: h[-1]),
    ("h[:, -1][:, 3]", lambda h: h[:, -1][:, 3]),
]


def program(expr: str) -> str:
    return f"""
model m {{
    input x: i32[batch, time]
    h = embedding(x, 5, 6, name="e") |> tanh
    output y = {expr}
}}
model net {{
    input x: i32[batch, time]
    output value = mse(m(x) * 0.5, m(x) * 0.0)
}}
"""


@pytest.mark.parametrize("expr, ref", CASES, ids=[c[0] for c in CASES])
def test_matches_torch(expr, ref):
    prog = dlc.compile(program(expr) + """
train g {
    input x: i32[batch, time]
    loss = net(x).value
    optimizer = sgd(lr=0.1)
}""", seed=1)
    w = torch.tensor(prog.params["e.weight"], requires_grad=True)
    for batch, time in [(3, 5), (2, 9)]:
        x = np.random.default_rng(time).integers(0, 5, size=(batch, time)).astype(np.int32)
        y = ref(torch.tanh(w[torch.tensor(x).long()]))
        np.testing.assert_allclose(prog.run("m", x=x)["y"], y.detach().numpy(), rtol=RTOL, atol=ATOL)
        (gw,) = torch.autograd.grad(torch.mean((y * 0.5) ** 2), [w])
        np.testing.assert_allclose(prog.grads("g", x=x)["e.weight"], gw.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("expr", ["h[:, -1]", "h[:, 0:1, 2:]", "h[-1]", "h[-2:][:, 1, 1:4]"])
def test_gradients_match_finite_differences(expr):
    """In f64 (embeddings are f32): h is [batch, 2, 6] from a dense layer,
    so h[-1] and h[-2:] index the symbolic batch axis from its end."""
    prog = dlc.compile(f"""
model m {{
    input x: f64[batch, 4]
    h = reshape(dense(x, 12, name="d") |> tanh, (-1, 2, 6))
    output y = {expr}
}}
model net {{
    input x: f64[batch, 4]
    output value = mse(m(x) * 0.5, m(x) * 0.0)
}}
train fit {{
    input x: f64[batch, 4]
    loss = net(x).value
    optimizer = sgd(lr=0.1)
}}""", seed=2)
    x = np.random.default_rng(0).normal(size=(3, 4))
    assert_param_grads_match(prog, dict(x=x), rtol=1e-5, atol=1e-8, loss_model="net")


@pytest.mark.parametrize("expr, message, column", [
    ("h[:, :, 7]", "index 7 is out of range for axis 2 of size 6", 24),
    ("h[:, 1:]", "the slice 1: of the symbolic axis 'time' must have a fixed length", 21),
    ("h[:, :, 4:2]", "the slice 4:2 of axis 2 (size 6) is empty", 24),
    ("h[0, 0, 0, 0]", "too many subscripts: 4 for f32[batch, time, 6]", 27),
    ("h[:, 1.5]", "a subscript must be an integer, got float 1.5", 21),
])
def test_errors_point_at_the_subscript(expr, message, column):
    with pytest.raises(CompileError) as e:
        dlc.compile(program(expr))
    text = str(e.value)
    assert message in text and f":5:{column}:" in text, text
