"""A convolutional GAN draws each of the ten digits on request.

examples/dcgan.dl holds three models: the generator grows 16 numbers of
noise and a digit label into an 8x8 image through a transposed convolution
(2x2 to 4x4) and an upsampling followed by a convolution (4x4 to 8x8); the
discriminator, convolutional, tells real images from generated ones and
names the digit (an auxiliary-classifier GAN); the classifier is a small
CNN. The loop trains the classifier on the real digits (scikit-learn's,
20% held out), then the GAN, a discriminator step and a generator step on
each batch, `on` keeping each step to its model.

The generator takes the label and the discriminator names the digit
because without them it collapses: the same networks and loop, trained as
a plain GAN, draw 1 to 3 distinct digits after 800 steps (seeds 0, 1); a
generator given the label, with only the discriminator also reading it,
still ignored it after 800 steps (seed 0). Asked for each digit, the
generator can be checked digit by digit. Figures:
`classifier_accuracy` (held out, real digits); on 100 generated images of
each label, `label_accuracy` (the classifier names their label),
`classes` (distinct digits it names), `min_share` (the rarest one's share)
and `confidence` (its mean top probability: how clearly they are digits);
`seconds` (training the GAN).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import dlc
from example_data import digit_images, held_out_split, shuffled_batches

HERE = Path(__file__).parent
NOISE = 16
PER_LABEL = 100


def train(seed: int = 0, verbose: bool = True, target: str = "cpu", classifier_epochs: int = 8,
          steps: int = 800, batch: int = 64) -> dict[str, float]:
    x, y = digit_images(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    prog = dlc.compile(HERE / "dcgan.dl", seed=seed, target=target)

    def classify(images) -> np.ndarray:
        logits = prog.run("classifier", x=images)["logits"]
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return p / p.sum(axis=1, keepdims=True)

    for _ in range(classifier_epochs):
        for idx in shuffled_batches(tr, 32, rng):
            prog.train("train_classifier", x=x[idx], t=y[idx])
    figures = {"classifier_accuracy": float((classify(x[test]).argmax(axis=1) == y[test]).mean())}
    if verbose:
        print(f"classifier: held-out accuracy {figures['classifier_accuracy']:.3f}")

    labels = np.repeat(np.arange(10, dtype=np.int32), PER_LABEL)
    noise = np.random.default_rng(seed + 1).normal(size=(len(labels), NOISE)).astype(np.float32)

    def quality() -> dict[str, float]:
        p = classify(prog.run("gen", z=noise, label=labels)["x"])
        shares = np.bincount(p.argmax(axis=1), minlength=10) / len(labels)
        return {"label_accuracy": float((p.argmax(axis=1) == labels).mean()),
                "classes": int((shares > 0).sum()), "min_share": float(shares.min()),
                "confidence": float(p.max(axis=1).mean())}

    # Real images are labeled 0.9, not 1 (one-sided label smoothing), so the
    # discriminator does not grow overconfident and starve the generator.
    real, fake = np.full((batch, 1), 0.9, np.float32), np.zeros((batch, 1), np.float32)
    passed = np.ones((batch, 1), np.float32)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = rng.choice(tr, batch)
        fake_label = rng.integers(0, 10, batch).astype(np.int32)
        z = rng.normal(size=(batch, NOISE)).astype(np.float32)
        d_loss = prog.train("train_disc", x=x[idx], label=y[idx], z=z, fake_label=fake_label,
                            real=real, fake=fake)
        z = rng.normal(size=(batch, NOISE)).astype(np.float32)
        g_loss = prog.train("train_gen", z=z, label=fake_label, real=passed)
        if verbose and step % 100 == 0:
            q = quality()
            print(f"step {step:4d}  discriminator loss {d_loss:.3f}  generator loss {g_loss:.3f}  "
                  f"label accuracy {q['label_accuracy']:.3f}  confidence {q['confidence']:.3f}")
    figures["seconds"] = time.perf_counter() - t0
    figures.update(quality())
    if verbose:
        print(f"trained {steps} steps in {figures['seconds']:.2f} s; the classifier names "
              f"{figures['label_accuracy']:.3f} of {len(labels)} generated digits as their label, "
              f"{figures['classes']} digits in all (the rarest: {figures['min_share']:.3f}), "
              f"confidence {figures['confidence']:.3f}")
    return figures
