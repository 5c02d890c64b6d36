"""One optimizer step against torch.optim on the same weights."""
import numpy as np
import pytest
import torch

import dlc

SRC = """
model m {{
    input x: f32[batch, 5]
    h = dense(x, 8, name="fc1") |> tanh
    output y = dense(h, 3, name="fc2")
}}
train fit {{
    input x: f32[batch, 5]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = {opt}
}}
"""
CASES = {
    "sgd(lr=0.1, momentum=0.9)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "sgd(lr=0.05, momentum=0.5, weight_decay=0.01)":
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.01),
    "sgd(lr=0.1)": lambda p: torch.optim.SGD(p, lr=0.1),
    "adam(lr=1e-2)": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1)":
        lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
}


@pytest.mark.parametrize("opt", sorted(CASES))
def test_steps_match_torch_optim(opt):
    prog = dlc.compile(SRC.format(opt=opt))
    P = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in prog.params.items()}
    torch_opt = CASES[opt](list(P.values()))
    rng = np.random.default_rng(0)
    for step in range(3):  # several steps, so momenta and Adam's bias corrections matter
        x = rng.normal(size=(9, 5)).astype(np.float32)
        t = rng.integers(0, 3, size=9).astype(np.int32)
        torch_opt.zero_grad()
        h = torch.tanh(torch.tensor(x) @ P["fc1.weight"].T + P["fc1.bias"])
        loss = torch.nn.functional.cross_entropy(h @ P["fc2.weight"].T + P["fc2.bias"],
                                                 torch.tensor(t).long())
        loss.backward()
        torch_opt.step()
        assert prog.train("fit", x=x, t=t) == pytest.approx(loss.item(), rel=1e-4, abs=1e-5)
        for k, v in P.items():
            np.testing.assert_allclose(prog.params[k], v.detach().numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{k} after step {step + 1}")


@pytest.mark.parametrize("scale", [1.0, 1e2, 1e4, 1e6])
def test_clip_scales_huge_gradients_to_the_limit(scale):
    """clip=c gives a step of norm lr*c however large the gradient (the
    coefficient had been min(coef, 1) as 1 - relu(1 - coef): 2% short at a
    norm 1e5 times the limit and exactly 0 at 1e8, so exploding gradients
    stopped training silently)."""
    src = """
model m {
    input x: f32[batch, 2]
    output y = dense(x, 1, name="d", bias=false)
}
train fit {
    input x: f32[batch, 2]
    input t: f32[batch, 1]
    loss = mse(m(x), t)
    optimizer = sgd(lr=1.0, clip=0.01)
}
"""
    prog = dlc.compile(src)
    x = np.array([[scale, -scale / 2], [scale / 3, scale]], np.float32)
    t = np.zeros((2, 1), np.float32)
    w0 = prog.params["d.weight"].copy()
    ref = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(w0))
    torch.nn.functional.mse_loss(ref(torch.from_numpy(x)), torch.from_numpy(t)).backward()
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.01)
    with torch.no_grad():
        ref.weight -= ref.weight.grad
    prog.train("fit", x=x, t=t)
    step = prog.params["d.weight"] - w0
    assert np.linalg.norm(step) == pytest.approx(0.01, rel=1e-4)
    np.testing.assert_allclose(prog.params["d.weight"], ref.weight.detach().numpy(), rtol=1e-4, atol=1e-5)
