"""The cse pass: equal nodes are computed once; numbers do not change."""
import numpy as np

import dlc
from dlc import frontend
from dlc.autodiff import differentiate
from dlc.ir.graph import verify
from dlc.passes.graph_cse import eliminate_common_subexpressions

SOURCE = """
model net {
    input x: f32[batch, 4]
    output logits = dense(x, 3, name="fc")
    output probs = softmax(logits)
}
train fit {
    input x: f32[batch, 4]
    input t: f32[batch, 3]
    h = dropout(x, p=0.5) + dropout(x, p=0.5)          # two streams: never merged
    loss = mse(net(x).probs, t) + mse(net(x).logits, t) + mse(net(h).logits, t)
    optimizer = sgd(lr=0.1)
}
"""


def test_a_model_called_twice_on_the_same_input_is_computed_once():
    before = differentiate(frontend.parse_program(SOURCE))
    after = eliminate_common_subexpressions(before)
    verify(after, "cse")
    count = lambda fn, op: sum(n.op.name == op for n in fn.nodes)
    fit0, fit1 = before.functions["fit"], after.functions["fit"]
    assert count(fit0, "gemm") > count(fit1, "gemm")
    # The forward products: net(x) once, net(h) once.
    assert count(after.functions["fit.grads"], "gemm") == count(before.functions["fit.grads"], "gemm") - 1
    assert count(fit1, "dropout") == count(fit0, "dropout") == 4   # 2 forward, their 2 adjoints
    assert after.functions["net"] is before.functions["net"]   # nothing to merge: the same function


def test_numbers_are_unchanged(monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    t = rng.normal(size=(5, 3)).astype(np.float32)
    with_cse = dlc.compile(SOURCE)
    monkeypatch.setattr(dlc.driver, "GRAPH_PASSES", [p for p in dlc.driver.GRAPH_PASSES if p[0] != "cse"])
    without = dlc.compile(SOURCE)
    for block in ("fit",):
        g1, g2 = with_cse.grads(block, x=x, t=t), without.grads(block, x=x, t=t)
        for k in g1:
            np.testing.assert_array_equal(g1[k], g2[k], err_msg=k)
    assert with_cse.train("fit", x=x, t=t) == without.train("fit", x=x, t=t)
