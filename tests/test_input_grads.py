"""`prog.grads(block, wrt=(...))`: gradients of the loss for float inputs,
against torch autograd (an MLP, a small CNN) and central finite differences."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.errors import InvalidArgumentError

MLP = """
model m {
    input x: f32[batch, 5]
    input s: f32[batch, 3]
    h = dense(x, 8, name="fc1") |> tanh
    output y = dense(h, 3, name="fc2") * s
}
train fit {
    input x: f32[batch, 5]
    input s: f32[batch, 3]
    input unused: f32[batch, 2]
    input t: i32[batch]
    loss = cross_entropy(m(x, s), t)
    optimizer = adam(lr=1e-2)
}
"""

CNN = """
model net {
    input img: f32[batch, 2, 7, 7]
    h = conv2d(img, 4, 3, stride=2, padding=1, name="c1") |> relu
    h = maxpool(h, 2) |> flatten
    output logits = dense(h, 3, name="fc")
}
train fit {
    input img: f32[batch, 2, 7, 7]
    input t: i32[batch]
    loss = cross_entropy(net(img), t)
    optimizer = sgd(lr=0.1)
}
"""


def torch_params(prog):
    return {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}


def test_mlp_input_grads_match_torch():
    prog = dlc.compile(MLP)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 5)).astype(np.float32)
    s = rng.normal(size=(6, 3)).astype(np.float32)
    u = rng.normal(size=(6, 2)).astype(np.float32)
    t = rng.integers(0, 3, size=6).astype(np.int32)
    P = torch_params(prog)
    X, S = torch.tensor(x, requires_grad=True), torch.tensor(s, requires_grad=True)
    h = torch.tanh(X @ P["fc1.weight"].T + P["fc1.bias"])
    F.cross_entropy((h @ P["fc2.weight"].T + P["fc2.bias"]) * S, torch.tensor(t).long()).backward()

    g = prog.grads("fit", wrt=("x", "s", "unused"), x=x, s=s, unused=u, t=t)
    assert sorted(g) == sorted([*P, "x", "s", "unused"])
    np.testing.assert_allclose(g["x"], X.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["s"], S.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(g["unused"], np.zeros((6, 2), np.float32))
    for k, v in P.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    # Only the inputs asked for; one name as a string; none: params only.
    assert sorted(prog.grads("fit", wrt="s", x=x, s=s, unused=u, t=t)) == sorted([*P, "s"])
    assert sorted(prog.grads("fit", x=x, s=s, unused=u, t=t)) == sorted(P)


def test_cnn_input_grads_match_torch():
    prog = dlc.compile(CNN)
    rng = np.random.default_rng(1)
    img = rng.normal(size=(3, 2, 7, 7)).astype(np.float32)
    t = rng.integers(0, 3, size=3).astype(np.int32)
    P = torch_params(prog)
    X = torch.tensor(img, requires_grad=True)
    h = F.relu(F.conv2d(X, P["c1.weight"], P["c1.bias"], stride=2, padding=1))
    h = F.max_pool2d(h, 2).flatten(1)
    F.cross_entropy(h @ P["fc.weight"].T + P["fc.bias"], torch.tensor(t).long()).backward()
    g = prog.grads("fit", wrt=("img",), img=img, t=t)
    np.testing.assert_allclose(g["img"], X.grad.numpy(), rtol=1e-4, atol=1e-5)
    assert np.abs(g["img"]).max() > 0


def test_input_grads_match_finite_differences():
    src = """
model net {
    input x: f64[batch, 4]
    input t: f64[batch, 2]
    h = dense(x, 6, name="a") |> tanh
    output value = mse(sigmoid(dense(h, 2, name="b")), t)
}
train fit {
    input x: f64[batch, 4]
    input t: f64[batch, 2]
    loss = net(x, t)
    optimizer = sgd(lr=0.1)
}
"""
    prog = dlc.compile(src, seed=3)
    rng = np.random.default_rng(0)
    x, t = rng.normal(size=(5, 4)), rng.uniform(size=(5, 2))
    g = prog.grads("fit", wrt=("x", "t"), x=x, t=t)
    eps = 1e-6
    for name, a in (("x", x), ("t", t)):
        fd = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            up, down = a.copy(), a.copy()
            up[i] += eps
            down[i] -= eps
            other = {"x": x, "t": t}
            fd[i] = (prog.run("net", **{**other, name: up})["value"]
                     - prog.run("net", **{**other, name: down})["value"]) / (2 * eps)
        np.testing.assert_allclose(g[name], fd, rtol=1e-6, atol=1e-9, err_msg=name)
        assert np.abs(g[name]).max() > 0


def test_wrt_names_a_float_input_of_the_block():
    prog = dlc.compile(MLP)
    x = np.zeros((2, 5), np.float32)
    inputs = dict(x=x, s=np.ones((2, 3), np.float32), unused=np.zeros((2, 2), np.float32),
                  t=np.zeros(2, np.int32))
    for bad in ("t", "y", "fc1.weight"):
        with pytest.raises(InvalidArgumentError,
                           match=f"'{bad}' is not a float input of train block 'fit'; "
                                 "its float inputs are: x, s, unused"):
            prog.grads("fit", wrt=(bad,), **inputs)


def test_train_and_grads_entries_compute_no_input_gradient():
    """Input gradients have an entry of their own: the train and grads
    entries (and their C signatures) are as before."""
    prog = dlc.compile(MLP)
    entries = prog._runtime.entries
    assert [t.name for t in entries["fit.grads"].outputs] == ["loss", *prog.params]
    assert [t.name for t in entries["fit.input_grads"].outputs] == \
        ["loss", *prog.params, "x", "s", "unused"]
    assert [t.name for t in entries["fit"].outputs] == ["loss"]
