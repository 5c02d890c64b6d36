"""Optimizer state as session memory: checkpoints that resume exactly, and a
learning rate that changes between steps without recompiling."""
import numpy as np
import pytest
import torch

import dlc

NET = """
model net {{
    input x: f32[batch, 6]
    h = dense(x, 16, name="fc1") |> relu |> dropout(p=0.2)
    output y = dense(h, 3, name="fc2")
}}
train fit {{
    input x: f32[batch, 6]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = {opt}
}}
"""
OPTIMIZERS = ["sgd(lr=0.1, momentum=0.9)", "adam(lr=0.01)", "adamw(lr=0.01, weight_decay=0.1)",
              "rmsprop(lr=0.01, momentum=0.5, centered=true)", "adagrad(lr=0.1, lr_decay=0.01)"]


def batches(n: int):
    rng = np.random.default_rng(1)
    return [(rng.normal(size=(8, 6)).astype(np.float32), rng.integers(0, 3, 8).astype(np.int32))
            for _ in range(n)]


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_a_checkpoint_resumes_bit_identically(opt, tmp_path):
    data = batches(6)
    straight = dlc.compile(NET.format(opt=opt), seed=3)
    for x, t in data[:3]:
        straight.train("fit", x=x, t=t)
    straight.save(tmp_path / "ckpt.safetensors", optimizer=True)
    straight.save(tmp_path / "weights.safetensors")
    for x, t in data[3:]:
        straight.train("fit", x=x, t=t)

    resumed = dlc.compile(NET.format(opt=opt), seed=99)
    assert resumed.load(tmp_path / "ckpt.safetensors") == []
    for x, t in data[3:]:
        resumed.train("fit", x=x, t=t)
    for name, value in straight.params.items():
        np.testing.assert_array_equal(resumed.params[name], value, err_msg=name)
    for name, value in straight.state.items():
        np.testing.assert_array_equal(resumed.state[name], value, err_msg=name)

    # The weights alone restart the optimizer (fresh moments, step 0): the
    # next steps differ, as they would in PyTorch without its state_dict.
    fresh = dlc.compile(NET.format(opt=opt), seed=99)
    fresh.load(tmp_path / "weights.safetensors")
    for x, t in data[3:]:
        fresh.train("fit", x=x, t=t)
    assert not np.array_equal(fresh.params["fc1.weight"], straight.params["fc1.weight"])


def test_state_names_and_learning_rate():
    prog = dlc.compile(NET.format(opt="adam(lr=0.01)"))
    assert {"fit.lr", "fit.step", "fit.fc1.weight.exp_avg", "fit.fc2.bias.exp_avg_sq"} <= set(prog.state)
    assert prog.get_lr("fit") == pytest.approx(0.01)
    prog.set_lr("fit", 0.5)
    assert prog.get_lr("fit") == 0.5 and prog.state["fit.lr"] == np.float32(0.5)
    prog.init_params(0)   # a fresh optimizer: the program's lr again
    assert prog.get_lr("fit") == pytest.approx(0.01)
    with pytest.raises(dlc.errors.NotFoundError, match="no train block named 'net'"):
        prog.set_lr("net", 0.1)


@pytest.mark.parametrize("opt,lr,torch_opt", [
    ("sgd(lr=0.1, momentum=0.9)", 0.1, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    ("adam(lr=0.01)", 0.01, lambda p: torch.optim.Adam(p, lr=0.01)),
    ("adamw(lr=0.01, weight_decay=0.1)", 0.01, lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
])
def test_a_learning_rate_schedule_matches_torch(opt, lr, torch_opt):
    """lr changed between steps as torch.optim.lr_scheduler.StepLR(step_size=2,
    gamma=0.5) changes it: the same weights after 6 steps."""
    src = NET.format(opt=opt).replace(" |> dropout(p=0.2)", "")
    prog = dlc.compile(src, seed=0)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
    optim = torch_opt(list(P.values()))
    sched = torch.optim.lr_scheduler.StepLR(optim, step_size=2, gamma=0.5)
    for x, t in batches(6):
        prog.set_lr("fit", optim.param_groups[0]["lr"])
        prog.train("fit", x=x, t=t)
        optim.zero_grad()
        h = torch.relu(torch.nn.functional.linear(torch.tensor(x), P["fc1.weight"], P["fc1.bias"]))
        y = torch.nn.functional.linear(h, P["fc2.weight"], P["fc2.bias"])
        torch.nn.functional.cross_entropy(y, torch.tensor(t).long()).backward()
        optim.step()
        sched.step()
    assert prog.get_lr("fit") == pytest.approx(lr * 0.5 ** 2)   # the last step's
    for name, p in P.items():
        np.testing.assert_allclose(prog.params[name], p.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
