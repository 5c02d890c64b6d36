"""Data-parallel training on MPI: examples/digits_cnn.dl on the digits, each
process training on its share of every batch (dlc.distributed).

    pip install 'dlc[mpi]'
    mpiexec -n 2 python -m mpi4py examples/train_distributed.py

(`python -m mpi4py` makes an uncaught exception in one process end them
all.) Every process reads the same data with the same seed and takes its
slice of each batch of 32; rank 0 prints the held-out accuracy, which is the
one-process figure of `python examples/train.py digits_cnn` up to rounding,
except that batchnorm sees each process's slice (see dlc.distributed).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import dlc
from dlc.distributed import DataParallel

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from example_data import digit_images, held_out_split  # noqa: E402


def main(seed: int = 0, epochs: int = 15, batch: int = 32) -> float:
    x, y = digit_images(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    prog = dlc.compile(HERE / "digits_cnn.dl", seed=seed, num_threads=1)
    dp = DataParallel(prog)
    t0 = time.perf_counter()
    # Every process shuffles alike (the same seed) and trains on its slice of each batch.
    history = dp.fit("fit", {"x": x[tr], "t": y[tr]}, epochs=epochs, batch_size=batch, seed=rng,
                     validation=("digits_cnn", {"x": x[test], "t": y[test]}, "t"),
                     metrics=["accuracy"], log_every=5)
    accuracy = history.metrics["val_accuracy"][-1]
    if dp.rank == 0:
        print(f"{dp.size} processes trained {epochs} epochs in {time.perf_counter() - t0:.2f} s; "
              f"held-out accuracy {accuracy:.3f} on {len(test)} digits")
    return accuracy


if __name__ == "__main__":
    main()
