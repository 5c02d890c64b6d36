"""The trim_recurrences pass: a recurrence read only for h gives h alone,
[batch, time, hidden], with the same numbers; one whose c or gates are read
(its gradient, c_n) keeps the packed output."""
import numpy as np
import pytest

import dlc
from dlc import driver, frontend
from dlc.autodiff import differentiate
from dlc.ir.graph import verify
from dlc.passes.graph_dce import eliminate_dead_code
from dlc.ops.sequence import RECURRENCE, SLICE_LAST
from dlc.passes.graph_trim_recurrences import trim_recurrences


def trimmed(src: str):
    """The program after trim_recurrences and the passes before it that matter."""
    return trim_recurrences(eliminate_dead_code(differentiate(frontend.parse_program(src))))

SRC = """
model m {{
    input x: f32[batch, time, 5]
    input n: i32[batch]
    output y = {cell}(x, 12, name="r", lengths=n)
}}
train fit {{
    input x: f32[batch, time, 5]
    input n: i32[batch]
    input t: f32[batch, 12]
    loss = mse(last(m(x, n), n), t)
    optimizer = sgd(lr=0.1)
}}
"""
STATES_SRC = """
model states {
    input x: f32[batch, time, 5]
    s = lstm(x, 12, name="r")
    output y = s
    output c = s.c_n
}
"""


def recurrences(fn):
    return [n for n in fn.nodes if n.op is RECURRENCE]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_inference_gives_h_alone_with_the_same_numbers(cell, monkeypatch):
    src = SRC.format(cell=cell)
    after = trimmed(src)
    verify(after, "trim_recurrences")
    (r,) = recurrences(after.functions["m"])
    assert r.attrs["h_only"] and r.out.type.shape[-1] == 12
    assert not any(n.op is SLICE_LAST for n in after.functions["m"].nodes)
    assert after.functions["m"].outputs["y"] is r.out
    # The train step's recurrence is read by its gradient: packed.
    assert all(not n.attrs.get("h_only") and n.out.type.shape[-1] > 12
               for n in recurrences(after.functions["fit"]))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 5)).astype(np.float32)
    n = np.array([7, 2, 5], np.int32)
    t = rng.normal(size=(3, 12)).astype(np.float32)
    trim = dlc.compile(src)
    monkeypatch.setattr(driver, "GRAPH_PASSES", [p for p in driver.GRAPH_PASSES if p[0] != "trim_recurrences"])
    packed = dlc.compile(src)
    np.testing.assert_array_equal(trim.run("m", x=x, n=n)["y"], packed.run("m", x=x, n=n)["y"])
    for k, g in trim.grads("fit", x=x, n=n, t=t).items():
        np.testing.assert_array_equal(g, packed.grads("fit", x=x, n=n, t=t)[k], err_msg=k)


def test_a_recurrence_whose_c_is_read_stays_packed():
    after = trimmed(STATES_SRC)
    (r,) = recurrences(after.functions["states"])
    assert not r.attrs.get("h_only") and r.out.type.shape[-1] == 6 * 12
