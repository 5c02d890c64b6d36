"""Losses over sequences and any rank, against PyTorch: cross_entropy with the
classes on the last axis and `ignore_index`, mse, bce, smooth_l1, each with
`reduction`. Logits and predictions are `embedding(tok) + x` ([batch, time,
features], symbolic batch and time), so gradients reach `e.weight`. fp32
tolerances: rtol 1e-4, atol 1e-5."""
import numpy as np
import pytest
import torch

import dlc
from dlc.errors import CompileError, InvalidArgumentError
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional
V = 5        # classes / features
SIZES = [(3, 4), (2, 7)]   # (batch, time): one program, two sizes


def seq_program(loss: str, target: str = "i32[batch, time]", wrap: str = "{}") -> str:
    """Model `m` gives `wrap` of embedding(tok) + x; train block `g` and
    model `net` (its loss as `value`) apply `loss` to it and t."""
    inputs = f"""
    input tok: i32[batch, time]
    input x: f32[batch, time, {V}]
    input t: {target}"""
    return f"""
model m {{
    input tok: i32[batch, time]
    input x: f32[batch, time, {V}]
    output y = {wrap.format(f'embedding(tok, 7, {V}, name="e") + x')}
}}
model net {{{inputs}
    output value = {loss.format("m(tok, x)")}
}}
train g {{{inputs}
    loss = {loss.format("m(tok, x)")}
    optimizer = sgd(lr=0.5, momentum=0.9)
}}
"""


def torch_pred(W, tok, x, wrap=lambda z: z):
    return wrap(W[torch.tensor(tok).long()] + torch.tensor(x))


def check_loss_and_grads(prog, inputs, torch_loss, W):
    """prog's loss (`net`) and e.weight gradient against torch's."""
    loss = torch_loss(W)
    loss.backward()
    np.testing.assert_allclose(prog.run("net", **inputs)["value"], loss.item(), rtol=RTOL, atol=ATOL)
    g = prog.grads("g", **inputs)["e.weight"]
    np.testing.assert_allclose(g, W.grad.numpy(), rtol=RTOL, atol=ATOL)
    assert np.abs(g).max() > 0


def sequence_batch(rng, batch, time, ignore):
    tok = rng.integers(0, 7, (batch, time)).astype(np.int32)
    x = (2 * rng.normal(size=(batch, time, V))).astype(np.float32)
    t = rng.integers(0, V, (batch, time)).astype(np.int32)
    if ignore is not None:
        t[rng.uniform(size=t.shape) < 0.3] = ignore
        t[0, 0] = ignore
    return dict(tok=tok, x=x, t=t)


@pytest.mark.parametrize("ignore", [None, -100, 0, V + 2])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_sequence_cross_entropy(ignore, reduction):
    attrs = ("" if ignore is None else f", ignore_index={ignore}") + f', reduction="{reduction}"'
    prog = dlc.compile(seq_program(f"cross_entropy({{}}, t{attrs})"))
    rng = np.random.default_rng(0)
    for batch, time in SIZES:
        inputs = sequence_batch(rng, batch, time, ignore)
        t = torch.tensor(inputs["t"]).long()
        kw = dict(reduction=reduction) if ignore is None else dict(reduction=reduction, ignore_index=ignore)
        # torch's classes axis is 1 for N-D input: flatten batch and time.
        ce = lambda W: F.cross_entropy(torch_pred(W, inputs["tok"], inputs["x"]).reshape(-1, V),
                                       t.reshape(-1), **kw)
        W = torch.tensor(prog.params["e.weight"].copy(), requires_grad=True)
        check_loss_and_grads(prog, inputs, ce, W)
        # Same numbers with torch's own N-D layout [batch, classes, time].
        nd = F.cross_entropy(torch_pred(W, inputs["tok"], inputs["x"]).permute(0, 2, 1), t, **kw)
        assert prog.run("net", **inputs)["value"] == pytest.approx(nd.item(), rel=RTOL, abs=ATOL)


def test_cross_entropy_2d_ignore_index_and_sum():
    src = """
model m {
    input x: f32[batch, 6]
    output y = dense(x, 4, name="fc")
}
train g {
    input x: f32[batch, 6]
    input t: i32[batch]
    loss = cross_entropy(m(x), t, ignore_index=-1, reduction="sum")
    optimizer = sgd(lr=0.1)
}
"""
    prog = dlc.compile(src)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(9, 6)).astype(np.float32)
    t = np.array([0, -1, 3, 2, -1, 1, 3, 0, 2], np.int32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    loss = F.cross_entropy(torch.tensor(x) @ P["fc.weight"].T + P["fc.bias"], torch.tensor(t).long(),
                           ignore_index=-1, reduction="sum")
    loss.backward()
    g = prog.grads("g", x=x, t=t)
    for k, v in P.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
    assert prog.train("g", x=x, t=t) == pytest.approx(loss.item(), rel=RTOL, abs=ATOL)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_all_ignored_is_torch_nan_or_zero_with_zero_gradients(reduction):
    """Mean over no labels is 0 / 0 = NaN, sum is 0, and every gradient is 0,
    as PyTorch's (so an sgd step leaves the params as they were)."""
    prog = dlc.compile(seq_program(f'cross_entropy({{}}, t, ignore_index=-100, reduction="{reduction}")'))
    inputs = sequence_batch(np.random.default_rng(2), 2, 3, -100)
    inputs["t"][:] = -100
    W = torch.tensor(prog.params["e.weight"].copy(), requires_grad=True)
    loss = F.cross_entropy(torch_pred(W, inputs["tok"], inputs["x"]).reshape(-1, V),
                           torch.tensor(inputs["t"]).long().reshape(-1), ignore_index=-100,
                           reduction=reduction)
    loss.backward()
    np.testing.assert_array_equal(prog.run("net", **inputs)["value"], loss.item())  # NaN == NaN here
    np.testing.assert_array_equal(prog.grads("g", **inputs)["e.weight"], W.grad.numpy())
    assert not W.grad.any()
    before = prog.params["e.weight"].copy()
    prog.train("g", **inputs)
    np.testing.assert_array_equal(prog.params["e.weight"], before)


@pytest.mark.parametrize("bad", [V, -5, -101])
def test_labels_outside_the_classes_and_the_ignore_value(bad):
    """The runtime refuses a label that is neither a class nor the ignore
    value, naming it, as PyTorch raises."""
    prog = dlc.compile(seq_program("cross_entropy({}, t, ignore_index=-100)"))
    inputs = sequence_batch(np.random.default_rng(3), 2, 3, -100)
    inputs["t"][1, 2] = bad
    with pytest.raises(InvalidArgumentError,
                       match=rf"t\[1, 2\] is {bad}, outside the valid range \[0, 4\] or -100"):
        prog.run("net", **inputs)
    inputs["t"][1, 2] = -100
    assert np.isfinite(prog.run("net", **inputs)["value"])


REGRESSION = {
    # name: (loss call, torch loss, wrap of the prediction in dlc and torch)
    "mse": ("mse({}, t{})", lambda p, t, r: F.mse_loss(p, t, reduction=r), "{}", lambda z: z),
    "bce": ("bce({}, t{})", lambda p, t, r: F.binary_cross_entropy(p, t, reduction=r),
            "sigmoid({})", torch.sigmoid),
    **{f"smooth_l1_beta{beta}": (f"smooth_l1({{}}, t, beta={beta}{{}})",
                                 lambda p, t, r, beta=beta: F.smooth_l1_loss(p, t, reduction=r, beta=beta),
                                 "{}", lambda z: z) for beta in (1.0, 0.5, 0.0)},
    "smooth_l1_default": ("smooth_l1({}, t{})", lambda p, t, r: F.smooth_l1_loss(p, t, reduction=r),
                          "{}", lambda z: z),
}


@pytest.mark.parametrize("name", sorted(REGRESSION))
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_regression_losses_on_sequences(name, reduction):
    call, torch_loss, wrap, torch_wrap = REGRESSION[name]
    loss = call.format("{}", "" if reduction == "mean" else ', reduction="sum"')
    prog = dlc.compile(seq_program(loss, f"f32[batch, time, {V}]", wrap))
    rng = np.random.default_rng(4)
    for batch, time in SIZES:
        inputs = sequence_batch(rng, batch, time, None)
        y = prog.run("m", tok=inputs["tok"], x=inputs["x"])["y"]
        t = y + rng.normal(size=y.shape).astype(np.float32)
        t.reshape(-1)[::4] = y.reshape(-1)[::4]   # exact ties: smooth_l1's kink at 0
        inputs["t"] = np.clip(t, 0, 1) if name == "bce" else t
        W = torch.tensor(prog.params["e.weight"].copy(), requires_grad=True)
        check_loss_and_grads(prog, inputs, lambda W: torch_loss(
            torch_pred(W, inputs["tok"], inputs["x"], torch_wrap), torch.tensor(inputs["t"]), reduction), W)


@pytest.mark.parametrize("call, message, arg", [
    ('mse(p, t, reduction="median")', "'mse' has no reduction \"median\"; it takes: \"mean\", \"sum\"",
     'reduction="median"'),
    ("smooth_l1(p, t, beta=-1)", "'smooth_l1' needs beta >= 0, got -1.0", "beta=-1"),
    ("cross_entropy(p, t)", "'cross_entropy' expects integer labels (i32), got f32[batch, 3]", "t"),
])
def test_bad_arguments_are_located(call, message, arg):
    src = f"""
model m {{
    input p: f32[batch, 3]
    input t: f32[batch, 3]
    output value = {call}
}}
"""
    with pytest.raises(CompileError) as e:
        dlc.compile(src)
    text = str(e.value)
    assert message in text
    line = next(l for l in text.splitlines() if "output value" in l)
    caret = text.splitlines()[text.splitlines().index(line) + 1]
    assert caret.strip().startswith("^") and line[caret.index("^"):].startswith(arg)


F64_LOSSES = {
    "ce_ignore": ("cross_entropy({}, t, ignore_index=-100)", "i32[batch, time]"),
    "ce_sum_ignore0": ('cross_entropy({}, t, ignore_index=0, reduction="sum")', "i32[batch, time]"),
    "smooth_l1": ("smooth_l1({}, t, beta=0.3)", "f64[batch, time, 4]"),
    "bce_sum": ('bce(sigmoid({}), t, reduction="sum")', "f64[batch, time, 4]"),
}


@pytest.mark.parametrize("name", sorted(F64_LOSSES))
def test_f64_finite_differences(name):
    loss, target = F64_LOSSES[name]
    inputs = f"""
    input x: f64[batch, time, 3]
    input t: {target}"""
    call = loss.format('rnn(x, 4, name="r") * 3')
    prog = dlc.compile(f"model net {{{inputs}\n    output value = {call}\n}}\n"
                       f"train fit {{{inputs}\n    loss = net(x, t)\n    optimizer = sgd(lr=0.1)\n}}", seed=1)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 5, 3))
    if target.startswith("i32"):
        t = rng.integers(0, 4, (3, 5)).astype(np.int32)
        t[rng.uniform(size=t.shape) < 0.3] = -100 if "-100" in loss else 0
    else:
        t = rng.uniform(size=(3, 5, 4)) * (1 if "bce" in name else 4) - (0 if "bce" in name else 2)
    assert_param_grads_match(prog, dict(x=x, t=t), rtol=1e-3, atol=1e-5)


def test_training_with_padded_sequences_matches_torch_sgd():
    """A few sgd steps of a sequence cross_entropy that ignores padding, at a
    different time each step, against torch.optim.SGD."""
    prog = dlc.compile(seq_program("cross_entropy({}, t, ignore_index=-100)"))
    W = torch.nn.Parameter(torch.tensor(prog.params["e.weight"].copy()))
    opt = torch.optim.SGD([W], lr=0.5, momentum=0.9)
    rng = np.random.default_rng(6)
    for step, (batch, time) in enumerate([(4, 6), (4, 3), (2, 5)]):
        inputs = sequence_batch(rng, batch, time, -100)
        opt.zero_grad()
        loss = F.cross_entropy(torch_pred(W, inputs["tok"], inputs["x"]).reshape(-1, V),
                               torch.tensor(inputs["t"]).long().reshape(-1), ignore_index=-100)
        loss.backward()
        opt.step()
        assert prog.train("g", **inputs) == pytest.approx(loss.item(), rel=RTOL, abs=ATOL)
        np.testing.assert_allclose(prog.params["e.weight"], W.detach().numpy(), rtol=RTOL, atol=ATOL,
                                   err_msg=f"after step {step + 1}")
