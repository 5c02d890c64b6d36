"""Adversarial examples: a little noise, chosen by the gradient, mislabels digits.

Trains examples/digits_mlp.dl on scikit-learn's digits (20% held out), then
moves every held-out image by eps in the direction of the sign of the loss's
gradient with respect to the pixels (the fast gradient sign method,
Goodfellow et al. 2014), the gradient coming from `prog.grads(..., wrt=("x",))`.
Reports, for each eps, the fraction of correctly classified images whose
prediction flips, and the same for noise of the same size in random signs.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import dlc
from example_data import digits_data, held_out_split, shuffled_batches

HERE = Path(__file__).parent
EPSILONS = (0.05, 0.1, 0.2)  # pixels are in [0, 1]


def train(seed: int = 0, verbose: bool = True, target: str = "cpu", epochs: int = 40,
          batch: int = 32) -> dict[str, float]:
    """Figures: `accuracy` (held out, clean), `flipped@eps` (fast gradient
    sign) and `random@eps` (random signs) for each eps, `seconds` (training)."""
    x, y = digits_data(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    prog = dlc.compile(HERE / "digits_mlp.dl", seed=seed, target=target)

    def predict(images):
        return prog.run("digits", x=images)["logits"].argmax(axis=1)

    t0 = time.perf_counter()
    for _ in range(epochs):
        for idx in shuffled_batches(tr, batch, rng):
            prog.train("fit", x=x[idx], t=y[idx])
    figures = {"seconds": time.perf_counter() - t0}

    right = test[predict(x[test]) == y[test]]  # only correct predictions can flip
    figures["accuracy"] = len(right) / len(test)
    images, labels = x[right], y[right]
    # The loss's gradient for each image: the loss is a batch mean, so each
    # image's gradient is scaled by 1/n, which the sign ignores.
    direction = np.sign(prog.grads("fit", wrt=("x",), x=images, t=labels)["x"])
    noise = rng.choice(np.float32([-1, 1]), size=images.shape)
    for eps in EPSILONS:
        for name, step in (("flipped", direction), ("random", noise)):
            moved = np.clip(images + np.float32(eps) * step, 0, 1)
            figures[f"{name}@{eps}"] = float((predict(moved) != labels).mean())
    if verbose:
        print(f"trained {epochs} epochs in {figures['seconds']:.2f} s; held-out accuracy "
              f"{figures['accuracy']:.3f} on {len(test)} digits")
        for eps in EPSILONS:
            print(f"eps {eps:.2f}: the gradient's sign flips {figures[f'flipped@{eps}']:.3f} of the "
                  f"{len(right)} correct predictions, random signs {figures[f'random@{eps}']:.3f}")
    return figures
