"""batchnorm against nn.BatchNorm2d (train and eval behaviour, running
statistics, weights files) and dropout (identity in inference, seeded
deterministic masks in training, gradients through the same mask)."""
import numpy as np
import pytest
import torch

import dlc
from dlc.ops import REGISTRY

RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional

BN = """
model m {
    input x: f32[batch, 3, 6, 5]
    h = conv2d(x, 4, 3, name="c")
    output y = batchnorm(h, name="bn") |> relu |> flatten
}
train g {
    input x: f32[batch, 3, 6, 5]
    input t: f32[batch, 48]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


class TorchBN(torch.nn.Module):
    def __init__(self, params):
        super().__init__()
        self.c = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.load_state_dict({k: torch.tensor(np.array(v)) for k, v in params.items()})

    def forward(self, x):
        return torch.relu(self.bn(self.c(x))).flatten(1)


def test_batchnorm_matches_batchnorm2d_in_train_and_eval(tmp_path):
    prog = dlc.compile(BN, seed=3)
    assert {"bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
            "bn.num_batches_tracked"} <= set(prog.params)
    prog.params["bn.weight"][:] = [0.5, 1.5, -1.0, 2.0]   # non-trivial affine part
    prog.params["bn.bias"][:] = [0.1, -0.2, 0.3, 0.0]
    net = TorchBN(prog.params)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for step in range(3):
        x = (2 * rng.normal(size=(5, 3, 6, 5)) + 1).astype(np.float32)
        t = rng.normal(size=(5, 48)).astype(np.float32)
        net.train()
        opt.zero_grad()
        loss = F.mse_loss(net(torch.tensor(x)), torch.tensor(t))
        loss.backward()
        grads = prog.grads("g", x=x, t=t)
        for k, v in net.named_parameters():
            np.testing.assert_allclose(grads[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
        assert prog.train("g", x=x, t=t) == pytest.approx(loss.item(), rel=RTOL)
        opt.step()
        for k, v in net.state_dict().items():
            np.testing.assert_allclose(prog.params[k], v.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
    assert prog.params["bn.num_batches_tracked"] == 3
    # Inference uses the running statistics, as eval mode.
    net.eval()
    x = rng.normal(size=(2, 3, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(prog.run("m", x=x)["y"], net(torch.tensor(x)).detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    # The buffers are saved in weights files, under PyTorch's names.
    prog.save(tmp_path / "bn.safetensors")
    fresh = dlc.compile(BN, seed=9)
    fresh.load(tmp_path / "bn.safetensors")
    for k in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        np.testing.assert_array_equal(fresh.params[k], prog.params[k])


DROP = """
model m {
    input x: f32[batch, 8]
    output y = dense(x, 64, name="fc") |> dropout(p=0.3) |> dropout(0.5, seed=7)
}
train g {
    input x: f32[batch, 8]
    input t: f32[batch, 64]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}
"""


def masks(shape, step):
    drop = REGISTRY["dropout"]
    ones = np.ones(shape, np.float64)
    return (drop.reference(ones, step, p=0.3, seed=0, salt=0)
            * drop.reference(ones, step, p=0.5, seed=7, salt=1))


def test_dropout_is_identity_in_inference_and_seeded_in_training():
    prog = dlc.compile(DROP)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 8)).astype(np.float32)
    t = rng.normal(size=(32, 64)).astype(np.float32)
    w, bias = prog.params["fc.weight"].copy(), prog.params["fc.bias"].copy()
    np.testing.assert_allclose(prog.run("m", x=x)["y"], x @ w.T + bias, rtol=RTOL, atol=ATOL)
    seen = []
    for step in range(2):
        mask = masks((32, 64), step)
        seen.append(mask)
        kept = (mask > 0).mean()
        assert abs(kept - 0.7 * 0.5) < 0.03
        np.testing.assert_allclose(mask[mask > 0], 1 / (0.7 * 0.5), rtol=1e-6)
        P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in prog.params.items()}
        y = (torch.tensor(x) @ P["fc.weight"].T + P["fc.bias"]) * torch.tensor(mask, dtype=torch.float32)
        loss = F.mse_loss(y, torch.tensor(t))
        loss.backward()
        g = prog.grads("g", x=x, t=t)    # the mask of the coming step, again and again
        assert prog.grads("g", x=x, t=t)["fc.weight"].tolist() == g["fc.weight"].tolist()
        for k, v in P.items():
            np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
        assert prog.train("g", x=x, t=t) == pytest.approx(loss.item(), rel=RTOL)
    assert (seen[0] != seen[1]).mean() > 0.3


def test_dropout_in_a_cnn_trains_deterministically():
    src = """
model m {
    input x: f32[batch, 2, 6, 6]
    h = conv2d(x, 4, 3, padding=1, name="c") |> relu |> dropout(p=0.25)
    output y = maxpool(h, 2) |> flatten |> dense(3, name="fc")
}
train g {
    input x: f32[batch, 2, 6, 6]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = adam(lr=1e-2)
}
"""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 2, 6, 6)).astype(np.float32)
    t = rng.integers(0, 3, size=8).astype(np.int32)
    runs = []
    for _ in range(2):
        prog = dlc.compile(src, seed=1)
        runs.append([prog.train("g", x=x, t=t) for _ in range(20)])
    assert runs[0] == runs[1]
    assert runs[0][-1] < 0.5 * runs[0][0]
