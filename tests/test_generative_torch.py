"""The generative examples against PyTorch, step by step: the GAN's two
train blocks (each updating only its own model, `on`, with Adam) and the
autoencoder's, from the same weights and batches, give the same losses and
the same weights. fp32 tolerances: rtol 1e-4, atol 1e-5."""
from pathlib import Path

import numpy as np
import torch

import dlc

EXAMPLES = Path(__file__).parent.parent / "examples"
RTOL, ATOL = 1e-4, 1e-5
F = torch.nn.functional


def mlp(prog, names, activations):
    """A torch network of Linear layers holding copies of prog's weights."""
    layers = []
    for name, act in zip(names, activations):
        w = prog.params[f"{name}.weight"]
        linear = torch.nn.Linear(w.shape[1], w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(prog.params[f"{name}.bias"]))
        layers += [linear, act] if act else [linear]
    return torch.nn.Sequential(*layers)


def assert_same_weights(prog, net, names):
    for name, layer in zip(names, (m for m in net if isinstance(m, torch.nn.Linear))):
        for part in ("weight", "bias"):
            np.testing.assert_allclose(prog.params[f"{name}.{part}"], getattr(layer, part).detach().numpy(),
                                       rtol=RTOL, atol=ATOL, err_msg=f"{name}.{part}")


def test_gan_steps_match_torch():
    prog = dlc.compile(EXAMPLES / "gan.dl", seed=3)
    leaky = torch.nn.LeakyReLU(0.2)
    gen_names, disc_names = ["g1", "g2", "g3"], ["d1", "d2", "d3"]
    gen = mlp(prog, gen_names, [leaky, leaky, None])
    disc = mlp(prog, disc_names, [leaky, leaky, torch.nn.Sigmoid()])
    opt_d = torch.optim.Adam(disc.parameters(), lr=0.001, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(gen.parameters(), lr=0.001, betas=(0.5, 0.999))
    rng = np.random.default_rng(0)
    batch = 16
    real, fake = np.ones((batch, 1), np.float32), np.zeros((batch, 1), np.float32)
    for _ in range(3):
        x = rng.normal(size=(batch, 2)).astype(np.float32)
        z = rng.normal(size=(batch, 4)).astype(np.float32)
        d_loss = prog.train("train_disc", x=x, z=z, real=real, fake=fake)
        opt_d.zero_grad()
        d_ref = (F.binary_cross_entropy(disc(torch.from_numpy(x)), torch.from_numpy(real))
                 + F.binary_cross_entropy(disc(gen(torch.from_numpy(z))), torch.from_numpy(fake)))
        d_ref.backward()
        opt_d.step()
        z = rng.normal(size=(batch, 4)).astype(np.float32)
        g_loss = prog.train("train_gen", z=z, real=real)
        opt_g.zero_grad()
        g_ref = F.binary_cross_entropy(disc(gen(torch.from_numpy(z))), torch.from_numpy(real))
        g_ref.backward()
        opt_g.step()
        np.testing.assert_allclose([d_loss, g_loss], [d_ref.item(), g_ref.item()], rtol=RTOL, atol=ATOL)
        assert_same_weights(prog, gen, gen_names)
        assert_same_weights(prog, disc, disc_names)


def test_autoencoder_steps_match_torch():
    prog = dlc.compile(EXAMPLES / "autoencoder.dl", seed=1)
    relu = torch.nn.ReLU()
    names = ["enc1", "enc2", "dec1", "dec2"]
    net = mlp(prog, names, [relu, None, relu, torch.nn.Sigmoid()])
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = rng.uniform(size=(10, 64)).astype(np.float32)
        np.testing.assert_allclose(prog.run("autoencoder", x=x)["y"], net(torch.from_numpy(x)).detach().numpy(),
                                   rtol=RTOL, atol=ATOL)
        loss = prog.train("fit", x=x)
        opt.zero_grad()
        ref = F.mse_loss(net(torch.from_numpy(x)), torch.from_numpy(x))
        ref.backward()
        opt.step()
        np.testing.assert_allclose(loss, ref.item(), rtol=RTOL, atol=ATOL)
        assert_same_weights(prog, net, names)
    code = prog.run("encoder", x=x)["code"]
    assert code.shape == (10, 8)
    np.testing.assert_allclose(prog.run("decoder", code=code)["x"], prog.run("autoencoder", x=x)["y"],
                               rtol=RTOL, atol=ATOL)
