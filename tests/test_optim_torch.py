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
