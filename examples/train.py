"""Compile a .dl classifier and train it on a scikit-learn data set.

    python examples/train.py moons     # examples/moons.dl on make_moons(1000, noise=0.2)
    python examples/train.py digits    # examples/digits_mlp.dl on load_digits, 20% held out
    python examples/train.py digits_cnn  # examples/digits_cnn.dl: the digits as 1x8x8 images

Prints the loss as it trains and the held-out accuracy reached.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import dlc

HERE = Path(__file__).parent


def moons_data(seed: int):
    from sklearn.datasets import make_moons
    x, y = make_moons(1000, noise=0.2, random_state=seed)
    return x.astype(np.float32), y.astype(np.int32)


def digits_data(seed: int):
    from sklearn.datasets import load_digits
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int32)


def digit_images(seed: int):
    x, y = digits_data(seed)
    return x.reshape(-1, 1, 8, 8), y


TASKS = {  # name: (program, model, data, epochs, batch)
    "moons": ("moons.dl", "moons", moons_data, 100, 32),
    "digits": ("digits_mlp.dl", "digits", digits_data, 40, 32),
    "digits_cnn": ("digits_cnn.dl", "digits_cnn", digit_images, 15, 32),
}


def train(task: str, seed: int = 0, verbose: bool = True, target: str = "cpu") -> float:
    """Train `task` on `target` (cpu or cuda) and return the held-out accuracy."""
    file, model, data, epochs, batch = TASKS[task]
    x, y = data(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_test = len(x) // 5
    test, tr = order[:n_test], order[n_test:]
    t0 = time.perf_counter()
    prog = dlc.compile(HERE / file, seed=seed, target=target)
    if verbose:
        print(f"compiled {file} in {time.perf_counter() - t0:.2f} s")
        print(prog.summary())

    def accuracy(idx) -> float:
        logits = prog.run(model, x=x[idx])["logits"]
        return float((logits.argmax(axis=1) == y[idx]).mean())

    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(tr)
        losses = [prog.train("fit", x=x[perm[i:i + batch]], t=y[perm[i:i + batch]])
                  for i in range(0, len(perm), batch)]
        if verbose and (epoch % 10 == 0 or epoch == 1):
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  held-out accuracy {accuracy(test):.3f}")
    acc = accuracy(test)
    if verbose:
        print(f"trained {epochs} epochs in {time.perf_counter() - t0:.2f} s; "
              f"held-out accuracy {acc:.3f} on {len(test)} examples")
    return acc


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=TASKS, nargs="?", default="moons")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    args = ap.parse_args()
    train(args.task, args.seed, target=args.target)
