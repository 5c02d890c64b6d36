"""Data sets and batching shared by the examples: scikit-learn's make_moons
and load_digits (both ship in the package), a held-out split, shuffled
batches."""
from __future__ import annotations

import numpy as np


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


def held_out_split(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """(test, training) indices of n examples: a random 20% held out."""
    order = rng.permutation(n)
    return order[:n // 5], order[n // 5:]


def shuffled_batches(indices: np.ndarray, size: int, rng) -> list[np.ndarray]:
    """An epoch: the indices in a random order, in batches of `size` (the
    last may be smaller)."""
    order = rng.permutation(indices)
    return [order[i:i + size] for i in range(0, len(order), size)]
