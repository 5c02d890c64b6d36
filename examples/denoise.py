"""A stacked denoising autoencoder turns unlabeled digits into better features.

examples/denoise.dl holds two layers, each an encoder and a decoder model,
and a classifier head. With all but a few of the digits' labels hidden
(scikit-learn's digits, 20% held out), the loop pretrains layer 1 (`pre1`)
to restore the training images from copies with Gaussian noise added, then
layer 2 (`pre2`) to restore layer 1's codes likewise, `on` keeping each
train block to its own layer. With the few labels it then trains the head
alone (`probe`) and then the whole classifier (`finetune`). The baseline is
the same classifier from the same initial weights (the same seed) put
through the same two supervised phases, batch for batch, without pretraining.

Figures: `error`, the held-out reconstruction error through both layers
and back (mean squared, per pixel), and `mean_image_error`, that of
drawing the mean training image; held-out accuracies `probe_accuracy` and
`accuracy` (after each supervised phase, pretrained) and
`scratch_probe_accuracy`, `scratch_accuracy` (the baseline); `seconds`
(pretraining and both phases).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import dlc
from example_data import digits_data, held_out_split, shuffled_batches

HERE = Path(__file__).parent


def train(seed: int = 0, verbose: bool = True, target: str = "cpu", labeled: int = 50,
          pretrain_epochs: int = 200, probe_steps: int = 300, finetune_steps: int = 300,
          batch: int = 32) -> dict[str, float]:
    x, y = digits_data(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    few = tr[:labeled]  # tr is in random order: a random few keep their labels
    prog = dlc.compile(HERE / "denoise.dl", seed=seed, target=target)
    scratch = dlc.compile(HERE / "denoise.dl", seed=seed, target=target)

    # Both classifiers see the same batches of the labeled few, in the same order.
    batches = [rng.choice(few, min(batch, labeled), replace=False) for _ in range(probe_steps + finetune_steps)]

    def supervised(p, prefix: str) -> dict[str, float]:
        """The two supervised phases; the held-out accuracy after each."""
        accuracy = {}
        for block, steps, figure in (("probe", batches[:probe_steps], "probe_accuracy"),
                                     ("finetune", batches[probe_steps:], "accuracy")):
            for idx in steps:
                p.train(block, x=x[idx], t=y[idx])
            predicted = p.run("classifier", x=x[test])["logits"].argmax(axis=1)
            accuracy[prefix + figure] = float((predicted == y[test]).mean())
        return accuracy

    t0 = time.perf_counter()
    for block in ("pre1", "pre2"):
        for _ in range(pretrain_epochs):
            losses = [prog.train(block, x=x[idx]) for idx in shuffled_batches(tr, batch, rng)]
        if verbose:
            print(f"{block}: {pretrain_epochs} epochs, last epoch's denoising loss {np.mean(losses):.4f}")
    figures = {"error": float(np.mean((prog.run("reconstruct", x=x[test])["y"] - x[test]) ** 2)),
               "mean_image_error": float(np.mean((x[test] - x[tr].mean(axis=0)) ** 2))}
    figures.update(supervised(prog, ""))
    figures["seconds"] = time.perf_counter() - t0
    figures.update(supervised(scratch, "scratch_"))
    if verbose:
        print(f"trained in {figures['seconds']:.2f} s; held-out reconstruction error {figures['error']:.4f} "
              f"(drawing the mean image: {figures['mean_image_error']:.4f})")
        for name, prefix in (("pretrained", ""), ("from scratch", "scratch_")):
            print(f"{name:12s} with {labeled} labels: held-out accuracy "
                  f"{figures[prefix + 'probe_accuracy']:.3f} training the head alone, "
                  f"{figures[prefix + 'accuracy']:.3f} after fine-tuning")
    return figures
