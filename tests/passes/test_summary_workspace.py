"""`summary` reports the planned peak workspace of inference and of a
training step."""
from dlc.api import summary

from .helpers import compile_without

SRC = """
model net {
    input x: f32[batch, 3]
    h = dense(x, 5, name="fc1") |> relu
    output y = dense(h, 2, name="fc2")
}
train fit {
    input x: f32[batch, 3]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = sgd(lr=0.1)
}
"""


def test_summary_prints_peak_workspace():
    prog = compile_without(SRC)
    text = prog.summary()
    # inference: the relu'd hidden layer, batch x 5 floats, is the only intermediate
    assert "peak workspace, inference net: 20 B per batch" in text
    assert "peak workspace, training step fit:" in text
    assert summary(prog.graph) in text
