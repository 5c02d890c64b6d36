"""Dense layers over cached weight panels (dlc/ops/packed.py), as the
`pack_dense` pass puts them in inference entries: forward against PyTorch
on both sides of MIN_ROWS (panels below it, W itself above), panel widths
32 and 16, with and without bias and relu; writes to the live weights
(whole, one element, a NaN) and train steps seen by the next call; train
entries keep `gemm`; the op's NumPy reference against PyTorch.

Tolerance: fp32 rtol 1e-4, atol 1e-5 (the sum over k runs in another
order than PyTorch's, as for `gemm`).
"""
import numpy as np
import pytest
import torch

import dlc
from dlc.ops.packed import PACKED_DENSE
from dlc.passes.graph_pack_dense import MIN_ROWS

F = torch.nn.functional
RTOL, ATOL = 1e-4, 1e-5


def kinds(prog, entry):
    return [k.name.rsplit("_", 1)[0] for e in prog.loops.entries if e.name == entry for k in e.kernels]


def compile_dense(k, units, bias, relu):
    src = f"""
model m {{
    input x: f32[batch, {k}]
    output y = dense(x, {units}, bias={str(bias).lower()}, name="fc"){" |> relu" * relu}
}}
"""
    prog = dlc.compile(src)
    assert kinds(prog, "m") == ["packed_dense"], kinds(prog, "m")
    return prog


def torch_dense(prog, x, relu):
    p = {name: torch.tensor(v.copy()) for name, v in prog.params.items()}
    y = F.linear(torch.tensor(x), p["fc.weight"], p.get("fc.bias"))
    return (F.relu(y) if relu else y).numpy()


@pytest.mark.parametrize("k,units,bias,relu", [
    (784, 256, True, True),     # panels of 32
    (100, 48, True, False),     # panels of 16
    (70, 64, False, True),      # K not a multiple of the vector width
])
@pytest.mark.parametrize("batch", [1, MIN_ROWS - 1, MIN_ROWS, MIN_ROWS + 1, 70])
def test_forward_matches_torch(k, units, bias, relu, batch):
    prog = compile_dense(k, units, bias, relu)
    x = np.random.default_rng(batch).normal(size=(batch, k)).astype(np.float32)
    np.testing.assert_allclose(prog.run("m", x=x)["y"], torch_dense(prog, x, relu), rtol=RTOL, atol=ATOL)


def test_changed_weights_are_seen():
    # The panels are cached in the session with the weights they came
    # from: writes to the live params and train steps each show in the next
    # call; the train entry computes from W (gemm).
    prog = dlc.compile("""
model m {
    input x: f32[batch, 72]
    output y = dense(x, 32, name="fc")
}
train g {
    input x: f32[batch, 72]
    input t: f32[batch, 32]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.5)
}
""")
    assert kinds(prog, "m") == ["packed_dense"] and "packed_dense" not in kinds(prog, "g")
    states = [(t.name, t.dims) for t in prog.loops.tensors if t.role == "state"]
    assert states == [("g.lr", ()), ("fc.weight.panels", (32 * 72,)), ("fc.weight.panels_of", (32 * 72,))]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(MIN_ROWS + 3, 72)).astype(np.float32)
    w = prog.params["fc.weight"]

    def matches_torch():
        np.testing.assert_allclose(prog.run("m", x=x)["y"], torch_dense(prog, x, False), rtol=RTOL, atol=ATOL)

    matches_torch()
    w *= 2
    matches_torch()
    w[31, 71] += 1          # the last element of the last panel
    matches_torch()
    before = w.copy()
    prog.train("g", x=x, t=rng.normal(size=(MIN_ROWS + 3, 32)).astype(np.float32))
    assert not np.array_equal(before, w)
    matches_torch()
    w[0, 0] = np.nan        # a NaN is a change (NaN != NaN) and shows
    y = prog.run("m", x=x)["y"]
    assert np.isnan(y[:, 0]).all() and np.isfinite(y[:, 1:]).all()


def test_a_pre_activation_output_keeps_its_own_value():
    # The value before the relu is an output: the bias add and relu are not absorbed.
    prog = dlc.compile("""
model m {
    input x: f32[batch, 72]
    output z = dense(x, 32, name="fc")
    output y = relu(z)
}
""")
    x = np.random.default_rng(1).normal(size=(MIN_ROWS, 72)).astype(np.float32)
    out = prog.run("m", x=x)
    want = torch_dense(prog, x, False)
    np.testing.assert_allclose(out["z"], want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(out["y"], np.maximum(want, 0), rtol=RTOL, atol=ATOL)


def test_reference_matches_torch():
    rng = np.random.default_rng(2)
    x, w, b = (rng.normal(size=s).astype(np.float32) for s in ((5, 7), (32, 7), (32,)))
    want = F.relu(F.linear(torch.tensor(x), torch.tensor(w), torch.tensor(b))).numpy()
    got = PACKED_DENSE.reference(x, w, b, panel=32, relu=True, min_rows=MIN_ROWS)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL)
