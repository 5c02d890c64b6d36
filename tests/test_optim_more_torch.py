"""rmsprop, adagrad and adamw against torch.optim: 20 steps from the same
weights, every hyperparameter exercised, params compared after each step."""
import numpy as np
import pytest
import torch

import dlc
from dlc.errors import CompileError

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
O = torch.optim
CASES = {
    "rmsprop(lr=1e-2)": lambda p: O.RMSprop(p, lr=1e-2),
    "rmsprop(lr=3e-3, alpha=0.9, eps=1e-6, momentum=0.8, weight_decay=0.05)":
        lambda p: O.RMSprop(p, lr=3e-3, alpha=0.9, eps=1e-6, momentum=0.8, weight_decay=0.05),
    "rmsprop(lr=2e-3, centered=true)": lambda p: O.RMSprop(p, lr=2e-3, centered=True),
    "rmsprop(lr=2e-3, alpha=0.95, momentum=0.5, centered=true, clip=0.5)":
        lambda p: O.RMSprop(p, lr=2e-3, alpha=0.95, momentum=0.5, centered=True),
    "adagrad(lr=5e-2)": lambda p: O.Adagrad(p, lr=5e-2),
    "adagrad(lr=0.1, lr_decay=0.05, weight_decay=0.01, initial_accumulator_value=0.3, eps=1e-6)":
        lambda p: O.Adagrad(p, lr=0.1, lr_decay=0.05, weight_decay=0.01,
                            initial_accumulator_value=0.3, eps=1e-6),
    "adagrad(lr=0.1, clip=0.2)": lambda p: O.Adagrad(p, lr=0.1),
    "adamw(lr=1e-2)": lambda p: O.AdamW(p, lr=1e-2),
    "adamw(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.3)":
        lambda p: O.AdamW(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.3),
    "adamw(lr=1e-2, weight_decay=0, clip=0.3)": lambda p: O.AdamW(p, lr=1e-2, weight_decay=0),
}


def clip_of(opt: str) -> float | None:
    return float(opt.split("clip=")[1].rstrip(")")) if "clip=" in opt else None


@pytest.mark.parametrize("opt", sorted(CASES))
def test_twenty_steps_match_torch_optim(opt):
    prog = dlc.compile(SRC.format(opt=opt))
    P = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in prog.params.items()}
    torch_opt = CASES[opt](list(P.values()))
    clip = clip_of(opt)
    rng = np.random.default_rng(0)
    for step in range(20):
        x = rng.normal(size=(9, 5)).astype(np.float32)
        t = rng.integers(0, 3, size=9).astype(np.int32)
        torch_opt.zero_grad()
        h = torch.tanh(torch.tensor(x) @ P["fc1.weight"].T + P["fc1.bias"])
        loss = torch.nn.functional.cross_entropy(h @ P["fc2.weight"].T + P["fc2.bias"],
                                                 torch.tensor(t).long())
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(list(P.values()), clip)
        torch_opt.step()
        assert prog.train("fit", x=x, t=t) == pytest.approx(loss.item(), rel=1e-4, abs=1e-5)
        for k, v in P.items():
            np.testing.assert_allclose(prog.params[k], v.detach().numpy(), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{k} after step {step + 1}")


def test_state_names_follow_the_block_and_param():
    prog = dlc.compile(SRC.format(opt="rmsprop(lr=1e-2, momentum=0.9, centered=true)"))
    states = {t.name for t in prog._runtime.tensors if t.role == "state"}
    assert {f"fit.fc1.weight.{s}" for s in ("square_avg", "grad_avg", "momentum")} <= states
    prog = dlc.compile(SRC.format(opt="adagrad(lr=1e-2)"))
    states = {t.name for t in prog._runtime.tensors if t.role == "state"}
    assert {"fit.step", "fit.fc2.bias.sum"} <= states


def test_summary_shows_the_hyperparameters():
    prog = dlc.compile(SRC.format(opt="rmsprop(lr=0.01, centered=true)"))
    assert "train fit: rmsprop(lr=0.01, centered=true, alpha=0.99, eps=1e-08, momentum=0, " \
           "weight_decay=0)" in prog.summary()


@pytest.mark.parametrize("opt, message", [
    ("rmsprop(lr=0.1, alpha=-0.5)", "'alpha' of 'rmsprop' must be at least 0, got -0.5"),
    ("rmsprop(lr=0.1, momentum=-1)", "'momentum' of 'rmsprop' must be at least 0"),
    ("adagrad(lr=0.1, lr_decay=-1)", "'lr_decay' of 'adagrad' must be at least 0"),
    ("adagrad(lr=0.1, initial_accumulator_value=-0.1)",
     "'initial_accumulator_value' of 'adagrad' must be at least 0"),
    ("adagrad(lr=0.1, eps=0)", "'eps' of 'adagrad' must be positive"),
    ("adamw(lr=0.1, weight_decay=-0.01)", "'weight_decay' of 'adamw' must be at least 0"),
    ("adamw(lr=0, beta1=0.9)", "'lr' of 'adamw' must be positive"),
    ("rmsprop(lr=0.1, centered=1)", "centered"),
])
def test_bad_hyperparameters_are_located_errors(opt, message):
    with pytest.raises(CompileError, match=message):
        dlc.compile(SRC.format(opt=opt))
