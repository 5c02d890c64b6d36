"""Every language op, forward and gradient, against PyTorch.

Gradients are checked through a parameter: the op is applied to a dense
layer's output, so the compiled backward pass must carry the op's gradient
to `p.weight`. fp32 tolerances: rtol 1e-4, atol 1e-5.
"""
import numpy as np
import pytest
import torch

import dlc

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional

UNARY = {
    "relu": (lambda s: f"relu({s})", torch.relu),
    "sigmoid": (lambda s: f"sigmoid({s})", torch.sigmoid),
    "tanh": (lambda s: f"tanh({s})", torch.tanh),
    "leaky_relu": (lambda s: f"leaky_relu({s}, slope=0.2)", lambda z: F.leaky_relu(z, 0.2)),
    "leaky_relu_default": (lambda s: f"{s} |> leaky_relu", lambda z: F.leaky_relu(z, 0.01)),
    "softmax": (lambda s: f"softmax({s})", lambda z: torch.softmax(z, -1)),
    "log_softmax": (lambda s: f"log_softmax({s})", lambda z: torch.log_softmax(z, -1)),
    "exp": (lambda s: f"exp({s})", torch.exp),
    "neg_scale": (lambda s: f"-{s} * 2.5 + 1", lambda z: -z * 2.5 + 1),
    "div": (lambda s: f"{s} / 3", lambda z: z / 3),
}
SHAPES = [(1, 1, 1), (1, 5, 3), (4, 3, 7), (7, 16, 5), (33, 2, 10)]  # batch, in, units


def program(expr: str, inp: int, units: int) -> str:
    body = expr("dense(x, %d, name=\"p\", bias=false)" % units)
    return f"""
model m {{
    input x: f32[batch, {inp}]
    output y = {body}
}}
train g {{
    input x: f32[batch, {inp}]
    input t: f32[batch, {units}]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}}
"""


@pytest.mark.parametrize("name", sorted(UNARY))
@pytest.mark.parametrize("batch,inp,units", SHAPES)
def test_unary_forward_and_gradient(name, batch, inp, units):
    expr, ref = UNARY[name]
    prog = dlc.compile(program(expr, inp, units), seed=batch)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, inp)).astype(np.float32)
    t = rng.normal(size=(batch, units)).astype(np.float32)
    y = prog.run("m", x=x)["y"]
    w = torch.tensor(prog.params["p.weight"].copy(), requires_grad=True)
    yt = ref(torch.tensor(x) @ w.T)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    F.mse_loss(yt, torch.tensor(t)).backward()
    g = prog.grads("g", x=x, t=t)["p.weight"]
    np.testing.assert_allclose(g, w.grad.numpy(), rtol=RTOL, atol=ATOL)
    if units > 1 or "softmax" not in name:  # softmax over one unit is constant
        assert np.abs(g).max() > 0


BINARY = ["+", "-", "*", "/"]
# (a's units, b's units): equal, and broadcast in either direction
BROADCASTS = [(4, 4), (4, 1), (1, 4), (1, 1)]


@pytest.mark.parametrize("op", BINARY)
@pytest.mark.parametrize("ua,ub", BROADCASTS)
@pytest.mark.parametrize("batch", [1, 6])
def test_binary_broadcast(op, ua, ub, batch):
    # b is kept positive (sigmoid) so division is well conditioned.
    src = f"""
model m {{
    input x: f32[batch, 3]
    output y = dense(x, {ua}, name="a") {op} sigmoid(dense(x, {ub}, name="b"))
}}
train g {{
    input x: f32[batch, 3]
    input t: f32[batch, {max(ua, ub)}]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}}
"""
    prog = dlc.compile(src)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(batch, 3)).astype(np.float32)
    t = rng.normal(size=(batch, max(ua, ub))).astype(np.float32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    xt = torch.tensor(x)
    a = xt @ P["a.weight"].T + P["a.bias"]
    b = torch.sigmoid(xt @ P["b.weight"].T + P["b.bias"])
    yt = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]
    np.testing.assert_allclose(prog.run("m", x=x)["y"], yt.detach().numpy(), rtol=RTOL, atol=ATOL)
    F.mse_loss(yt, torch.tensor(t)).backward()
    g = prog.grads("g", x=x, t=t)
    for k, v in P.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.mark.parametrize("batch,classes", [(1, 2), (5, 3), (64, 10), (17, 1)])
def test_cross_entropy(batch, classes):
    src = f"""
model m {{
    input x: f32[batch, 6]
    output logits = dense(x, {classes}, name="fc")
}}
train g {{
    input x: f32[batch, 6]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = sgd(lr=0.1)
}}
"""
    prog = dlc.compile(src)
    rng = np.random.default_rng(2)
    x = (3 * rng.normal(size=(batch, 6))).astype(np.float32)
    t = rng.integers(0, classes, size=batch).astype(np.int32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    loss = F.cross_entropy(torch.tensor(x) @ P["fc.weight"].T + P["fc.bias"], torch.tensor(t).long())
    loss.backward()
    g = prog.grads("g", x=x, t=t)
    for k, v in P.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
    assert prog.train("g", x=x, t=t) == pytest.approx(loss.item(), rel=RTOL, abs=ATOL)


def test_cross_entropy_bad_label_is_refused():
    src = """
model m {
    input x: f32[batch, 2]
    output y = dense(x, 3, name="fc")
}
train g {
    input x: f32[batch, 2]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = sgd(lr=0.1)
}
"""
    prog = dlc.compile(src)
    # As PyTorch: an error (the runtime checks labels against the classes).
    with pytest.raises(dlc.errors.InvalidArgumentError, match=r"t\[1\] is 7, outside the valid range \[0, 2\]"):
        prog.train("g", x=np.zeros((2, 2), np.float32), t=np.array([0, 7], np.int32))


@pytest.mark.parametrize("loss_name", ["mse", "bce"])
@pytest.mark.parametrize("batch,units", [(1, 1), (8, 3), (31, 5)])
def test_regression_losses(loss_name, batch, units):
    src = f"""
model m {{
    input x: f32[batch, 4]
    output p = sigmoid(dense(x, {units}, name="fc"))
}}
train g {{
    input x: f32[batch, 4]
    input t: f32[batch, {units}]
    loss = {loss_name}(m(x), t)
    optimizer = sgd(lr=0.1)
}}
"""
    prog = dlc.compile(src)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(batch, 4)).astype(np.float32)
    t = rng.uniform(size=(batch, units)).astype(np.float32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    p = torch.sigmoid(torch.tensor(x) @ P["fc.weight"].T + P["fc.bias"])
    loss = (F.mse_loss if loss_name == "mse" else F.binary_cross_entropy)(p, torch.tensor(t))
    loss.backward()
    g = prog.grads("g", x=x, t=t)
    for k, v in P.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
