"""The phase_split pass: strided convolutions become stride-1 ones over the
input's and filters' stride phases, with the same numbers."""
import numpy as np
import pytest

import dlc
from dlc import driver, frontend
from dlc.autodiff import differentiate
from dlc.ir.graph import verify
from dlc.ops.conv import CONV2D, PHASE_SPLIT
from dlc.passes.graph_phase_split import phase_split

CASES = {   # conv2d arguments, input channels and size
    "1x1 stride 2": ("5, 1, stride=2", 6, (8, 7)),
    "2x2 stride 2": ("8, 2, stride=2, padding=1", 4, (9, 10)),
    "4x4 stride 2": ("6, 4, stride=2, padding=1", 3, (16, 15)),
    "6x6 stride 3": ("4, 6, stride=3, padding=2", 2, (11, 13)),
    "stride (2, 1)": ("4, (4, 2), stride=(2, 1), padding=(1, 0)", 3, (7, 6)),
    "kernel below stride": ("3, 2, stride=3", 2, (9, 8)),
}


def program(conv: str, channels: int, size: tuple) -> str:
    h, w = size
    return f"""
model m {{
    input x: f32[batch, {channels}, {h}, {w}]
    output y = conv2d(x, {conv}, name="c") |> relu
}}
train fit {{
    input x: f32[batch, {channels}, {h}, {w}]
    input t: f32[batch, 1]
    loss = mse(mean(m(x), axis=(1, 2, 3), keepdim=true) |> reshape((batch, 1)), t)
    optimizer = sgd(lr=0.1)
}}
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_strided_convolutions_give_the_same_numbers(case, monkeypatch):
    src = program(*CASES[case])
    after = phase_split(differentiate(frontend.parse_program(src)))
    verify(after, "phase_split")
    model = after.functions["m"]
    assert not [n for n in model.nodes if n.op is CONV2D and n.attrs["stride"] != (1, 1)]
    assert sum(n.op is PHASE_SPLIT for n in model.nodes) == 2

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3,) + (CASES[case][1],) + CASES[case][2]).astype(np.float32)
    t = rng.normal(size=(3, 1)).astype(np.float32)
    split = dlc.compile(src)
    monkeypatch.setattr(driver, "GRAPH_PASSES", [p for p in driver.GRAPH_PASSES if p[0] != "phase_split"])
    direct = dlc.compile(src)
    np.testing.assert_allclose(split.run("m", x=x)["y"], direct.run("m", x=x)["y"], rtol=1e-5, atol=1e-6)
    # The training step's forward pass goes through the split convolution too.
    for k, g in split.grads("fit", x=x, t=t).items():
        np.testing.assert_allclose(g, direct.grads("fit", x=x, t=t)[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_kernels_with_zero_taps_stay_direct():
    """3x3 of stride 2 would have zero taps, and NaN from 0 x inf (see the pass)."""
    after = phase_split(differentiate(frontend.parse_program(program("8, 3, stride=2, padding=1", 4, (9, 10)))))
    assert not any(n.op is PHASE_SPLIT for fn in after.functions.values() for n in fn.nodes)


def test_phase_split_reference_matches_its_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 6)).astype(np.float32)
    out = PHASE_SPLIT.reference(x, stride=(2, 3), phases=(2, 3), size=(4, 2))
    for ry in range(2):
        for rx in range(3):
            for i in range(4):
                for j in range(2):
                    r, c = 2 * i + ry, 3 * j + rx
                    want = x[:, :, r, c] if r < 7 and c < 6 else 0
                    np.testing.assert_array_equal(out[:, (ry * 3 + rx) * 3:(ry * 3 + rx + 1) * 3, i, j], want)
