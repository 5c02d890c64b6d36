"""The cost of prog.fit over a bare loop of prog.train calls on moons.

    python benchmarks/fit_overhead.py

Trains examples/moons.dl for 10 epochs of 25 batches of 32 (a step takes
~10 us, so any per-step Python shows) three ways, from the same weights and
the same order of batches: the hand loop of examples/train.py before fit
(shuffled index batches, x[idx], prog.train); fit with verbose=0; fit
printing a line per epoch (to a file, as in a log); and fit drawing its
progress bar (to a stream that says it is a TTY). Prints the median time
of each (interleaved blocks, common.medians_ms) and fit's overhead in
percent; on a shared machine the figures move by a few percent from run to
run. Validation is left out: it is work (an inference pass per epoch), not
overhead.
"""
from __future__ import annotations

import io

import numpy as np

from common import EXAMPLES, medians_ms, threads  # noqa: E402  (first: the checkout's dlc)
import dlc  # noqa: E402

EPOCHS, BATCH = 10, 32


class TTY(io.StringIO):
    def isatty(self):
        return True


def main() -> None:
    from sklearn.datasets import make_moons
    x, y = make_moons(1000, noise=0.2, random_state=0)
    x, y = x.astype(np.float32), y.astype(np.int32)
    tr = np.arange(800)
    prog = dlc.compile(EXAMPLES / "moons.dl", num_threads=threads())
    data = {"x": x[tr], "t": y[tr]}

    def hand_loop():
        rng = np.random.default_rng(0)
        for _ in range(EPOCHS):
            order = rng.permutation(tr)
            for i in range(0, len(order), BATCH):
                idx = order[i:i + BATCH]
                prog.train("fit", x=x[idx], t=y[idx])

    def fit_silent():
        prog.fit("fit", data, epochs=EPOCHS, batch_size=BATCH, seed=0, verbose=0)

    def fit_lines():
        prog.fit("fit", data, epochs=EPOCHS, batch_size=BATCH, seed=0, file=io.StringIO())

    def fit_bar():
        prog.fit("fit", data, epochs=EPOCHS, batch_size=BATCH, seed=0, file=TTY())

    loop, silent, lines, bar = medians_ms(hand_loop, fit_silent, fit_lines, fit_bar)
    steps = EPOCHS * -(-len(tr) // BATCH)
    print(f"moons, {EPOCHS} epochs of {steps // EPOCHS} steps, {threads()} threads, medians in ms")
    print(f"  hand loop of prog.train          {loop:8.3f}  ({loop / steps * 1e3:.2f} us a step)")
    for name, t in [("fit, verbose=0", silent), ("fit, a line per epoch", lines), ("fit, progress bar", bar)]:
        print(f"  {name:31s}  {t:8.3f}  overhead {100 * (t / loop - 1):+.1f}%")


if __name__ == "__main__":
    main()
