"""The compiled backward pass in f64 against central finite differences."""
import numpy as np
import pytest

import dlc
from tests.gradcheck import assert_param_grads_match

NETS = {
    "mlp_ce": ("""
model net {
    input x: f64[batch, 4]
    input t: i32[batch]
    h = dense(x, 6, name="a") |> tanh
    h = dense(h, 5, name="b") |> leaky_relu(slope=0.1)
    output value = cross_entropy(dense(h, 3, name="c"), t)
}""", "ce"),
    "sigmoid_bce": ("""
model net {
    input x: f64[batch, 4]
    input t: f64[batch, 2]
    output value = bce(sigmoid(dense(x, 2, name="a") * dense(x, 1, name="s")), t)
}""", "bce"),
    "softmax_mse": ("""
model net {
    input x: f64[batch, 4]
    input t: f64[batch, 3]
    h = dense(x, 3, name="a") |> relu
    output value = mse(softmax(h - dense(x, 1, name="s") / 2), t)
}""", "mse"),
}


@pytest.mark.parametrize("name", sorted(NETS))
def test_gradients_match_finite_differences(name):
    body, kind = NETS[name]
    train = """
train fit {
    input x: f64[batch, 4]
    input t: %s
    loss = net(x, t)
    optimizer = sgd(lr=0.1)
}"""
    ttype = "i32[batch]" if kind == "ce" else f"f64[batch, {2 if kind == 'bce' else 3}]"
    prog = dlc.compile(body + train % ttype, seed=3)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4))
    t = (rng.integers(0, 3, size=5).astype(np.int32) if kind == "ce"
         else rng.uniform(size=(5, 2 if kind == "bce" else 3)))
    assert_param_grads_match(prog, dict(x=x, t=t), rtol=1e-3, atol=1e-5)
