"""Compile a .dl program and train it on a scikit-learn data set.

    python examples/train.py moons     # examples/moons.dl on make_moons(1000, noise=0.2)
    python examples/train.py moons --plot moons.png  # ... and draw its loss and accuracy curves
    python examples/train.py digits    # examples/digits_mlp.dl on load_digits, 20% held out
    python examples/train.py digits_cnn  # examples/digits_cnn.dl: the digits as 1x8x8 images
    python examples/train.py crnn      # examples/crnn.dl: a CNN feeding an LSTM, on the same images
    python examples/train.py adding    # examples/adding.dl: LSTM vs plain RNN on the adding problem
    python examples/train.py sentiment # examples/sentiment.dl on a synthetic grammar, 20% held out
    python examples/train.py autoencoder  # examples/autoencoder.dl: the digits through 8 numbers
    python examples/train.py gan       # examples/gan.dl: a GAN drawing points of make_moons
    python examples/train.py caption   # examples/caption.{dl,py}: a CNN starts an LSTM that describes a digit
    python examples/train.py translate # examples/translate.{dl,py}: encoder-decoder LSTMs with attention
    python examples/train.py dqn       # examples/dqn.{dl,py}: deep Q-learning in a grid world
    python examples/train.py dcgan     # examples/dcgan.{dl,py}: a convolutional GAN drawing digits
    python examples/train.py denoise   # examples/denoise.{dl,py}: a stacked denoising autoencoder
    python examples/train.py adversarial  # examples/adversarial.py: fast-gradient-sign attacks on digits_mlp.dl

Prints the loss as it trains and the held-out accuracy reached (adding: mean
squared error; autoencoder: reconstruction error; gan: how the generated
points match real ones).
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np

import dlc

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))  # the examples' own modules, also when a test loads this file

from example_data import digit_images, digits_data, held_out_split, moons_data, shuffled_batches  # noqa: E402


TASKS = {  # name: (program, model, data, epochs, batch)
    "moons": ("moons.dl", "moons", moons_data, 100, 32),
    "digits": ("digits_mlp.dl", "digits", digits_data, 40, 32),
    "digits_cnn": ("digits_cnn.dl", "digits_cnn", digit_images, 15, 32),
    "crnn": ("crnn.dl", "crnn", digit_images, 15, 32),
}


def train(task: str, seed: int = 0, verbose: bool = True, target: str = "cpu", plot: str | None = None):
    """Train `task` on `target` (cpu or cuda) and return the held-out
    accuracy (a dict of figures for the tasks with their own loop); `plot`:
    a path for the loss and accuracy curves (the tasks of TASKS)."""
    if task in OWN_LOOP_TASKS:
        return OWN_LOOP_TASKS[task](seed=seed, verbose=verbose, target=target)
    if task in MODULE_TASKS:
        return importlib.import_module(task).train(seed=seed, verbose=verbose, target=target)
    file, model, data, epochs, batch = TASKS[task]
    x, y = data(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    t0 = time.perf_counter()
    prog = dlc.compile(HERE / file, seed=seed, target=target)
    if verbose:
        print(f"compiled {file} in {time.perf_counter() - t0:.2f} s")
        print(prog.summary())

    # The batches come from `rng`, after the split: fit's permutation of the
    # training rows is shuffled_batches' order, so the figures are the loop's.
    held_out = dlc.training.Validation(model, {"x": x[test], "t": y[test]}, labels="t")
    t0 = time.perf_counter()
    history = prog.fit("fit", {"x": x[tr], "t": y[tr]}, epochs=epochs, batch_size=batch, seed=rng,
                       validation=held_out, metrics=["loss", "accuracy"], verbose=int(verbose), log_every=10)
    acc = history.metrics["val_accuracy"][-1]
    if verbose:
        print(f"trained {epochs} epochs in {time.perf_counter() - t0:.2f} s; "
              f"held-out accuracy {acc:.3f} on {len(test)} examples")
    if plot:
        history.plot(plot)
        if verbose:
            print(f"wrote {plot}")
    return acc


# ------------------------------------------------------------- sequences

def adding_batch(rng, n: int, steps: int):
    """The adding problem: step t carries (value ~ U(0, 1), marker); one step
    in each half of the sequence is marked; the target is their sum."""
    values = rng.uniform(size=(n, steps)).astype(np.float32)
    marks = np.zeros((n, steps), np.float32)
    rows = np.arange(n)
    marks[rows, rng.integers(0, steps // 2, n)] = 1
    marks[rows, rng.integers(steps // 2, steps, n)] = 1
    return np.stack([values, marks], axis=-1), (values * marks).sum(1, keepdims=True, dtype=np.float32)


def train_adding(seed: int = 0, verbose: bool = True, steps: int = 50, updates: int = 3000,
                 batch: int = 32, target: str = "cpu") -> dict[str, float]:
    """Train the LSTM and the plain RNN of examples/adding.dl on fresh batches;
    return each one's mean squared error on 1000 held-out sequences (the
    baseline, always answering 1, scores 1/6 = 0.167)."""
    rng = np.random.default_rng(seed)
    prog = dlc.compile(HERE / "adding.dl", seed=seed, target=target)
    x_test, t_test = adding_batch(np.random.default_rng(seed + 1), 1000, steps)
    mse = {}
    for model, fit in [("adding", "fit"), ("adding_rnn", "fit_rnn")]:
        t0 = time.perf_counter()
        for step in range(1, updates + 1):
            x, t = adding_batch(rng, batch, steps)
            prog.train(fit, x=x, t=t)
            if verbose and step % 500 == 0:
                y = prog.run(model, x=x_test)["y"]
                print(f"{model:10s} step {step:5d}  held-out mse {np.mean((y - t_test) ** 2):.4f}")
        y = prog.run(model, x=x_test)["y"]
        mse[model] = float(np.mean((y - t_test) ** 2))
        if verbose:
            print(f"{model}: {updates} steps of {batch} sequences of {steps} in "
                  f"{time.perf_counter() - t0:.1f} s; held-out mse {mse[model]:.4f}")
    return mse


NEUTRAL, POSITIVE, NEGATIVE, NOT = range(1, 12), range(12, 17), range(17, 22), 22  # 0 pads


def sentiment_data(seed: int, n: int = 2500):
    """Sentences of 4 to 24 words: neutral filler with 1 or 3 sentiment words,
    each preceded by "not" (which flips it) with probability 1/3. Label 1
    when positive words outnumber negative ones after negation."""
    rng = np.random.default_rng(seed)
    tokens = np.zeros((n, 24), np.int32)
    lengths = rng.integers(4, 25, n).astype(np.int32)
    labels = np.zeros(n, np.int32)
    for i, length in enumerate(lengths):
        words = list(rng.choice(NEUTRAL, length))
        score = 0
        slots = rng.choice(length // 2, rng.choice([1, 3]) if length >= 6 else 1, replace=False) * 2
        for slot in slots:
            positive = rng.random() < 0.5
            words[slot + 1] = rng.choice(POSITIVE if positive else NEGATIVE)
            negated = rng.random() < 1 / 3
            if negated:
                words[slot] = NOT
            score += 1 if positive != negated else -1
        tokens[i, :length] = words
        labels[i] = score > 0
    return tokens, lengths, labels


def train_sentiment(seed: int = 0, verbose: bool = True, epochs: int = 6, batch: int = 32,
                    target: str = "cpu") -> float:
    """Train examples/sentiment.dl; return the held-out accuracy (20% held out)."""
    tokens, lengths, labels = sentiment_data(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(tokens), rng)
    prog = dlc.compile(HERE / "sentiment.dl", seed=seed, target=target)

    def inputs(idx):  # a batch is padded only to its longest sentence
        longest = lengths[idx].max()
        return dict(tokens=tokens[idx, :longest], lengths=lengths[idx])

    def accuracy(idx) -> float:
        logits = prog.run("sentiment", **inputs(idx))["logits"]
        return float((logits.argmax(axis=1) == labels[idx]).mean())

    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        losses = [prog.train("fit", **inputs(idx), label=labels[idx])
                  for idx in shuffled_batches(tr, batch, rng)]
        if verbose:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  held-out accuracy {accuracy(test):.3f}")
    acc = accuracy(test)
    if verbose:
        print(f"trained {epochs} epochs in {time.perf_counter() - t0:.2f} s; "
              f"held-out accuracy {acc:.3f} on {len(test)} sentences")
    return acc


# ------------------------------------------------------ generative models

def train_autoencoder(seed: int = 0, verbose: bool = True, epochs: int = 50, batch: int = 32,
                      target: str = "cpu") -> dict[str, float]:
    """Train examples/autoencoder.dl on the digits (20% held out); return
    the held-out reconstruction error (mean squared, per pixel) and that of
    always drawing the mean training image."""
    x, _ = digits_data(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    prog = dlc.compile(HERE / "autoencoder.dl", seed=seed, target=target)
    mean_image = float(np.mean((x[test] - x[tr].mean(axis=0)) ** 2))

    def error(idx) -> float:
        return float(np.mean((prog.run("autoencoder", x=x[idx])["y"] - x[idx]) ** 2))

    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        losses = [prog.train("fit", x=x[idx]) for idx in shuffled_batches(tr, batch, rng)]
        if verbose and epoch % 10 == 0:
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  held-out error {error(test):.4f}")
    result = {"error": error(test), "mean_image_error": mean_image}
    if verbose:
        print(f"trained {epochs} epochs in {time.perf_counter() - t0:.2f} s; held-out error "
              f"{result['error']:.4f} (drawing the mean image: {mean_image:.4f})")
    return result


def moon_points(rng, n: int):
    """n points of make_moons (noise 0.05) and their moon (0 or 1)."""
    from sklearn.datasets import make_moons
    x, moon = make_moons(n, noise=0.05, random_state=int(rng.integers(1 << 31)))
    return x.astype(np.float32), moon


def train_gan(seed: int = 0, verbose: bool = True, steps: int = 3000, batch: int = 64,
              target: str = "cpu") -> dict[str, float]:
    """Train examples/gan.dl, a discriminator step then a generator step on
    fresh batches; return how 1000 generated points match 4000 real ones:
    precision (generated points within 0.1 of a real one), coverage (real
    points within 0.1 of a generated one) and the share in the second moon."""
    rng = np.random.default_rng(seed)
    prog = dlc.compile(HERE / "gan.dl", seed=seed, target=target)
    real, fake = np.ones((batch, 1), np.float32), np.zeros((batch, 1), np.float32)
    points, moon = moon_points(np.random.default_rng(seed + 1), 4000)
    noise = np.random.default_rng(seed + 2).normal(size=(1000, 4)).astype(np.float32)

    def quality() -> dict[str, float]:
        made = prog.run("gen", z=noise)["x"]
        dist = np.sqrt(((made[:, None, :] - points[None, :, :]) ** 2).sum(-1))
        return {"precision": float((dist.min(axis=1) < 0.1).mean()),
                "coverage": float((dist.min(axis=0) < 0.1).mean()),
                "second_moon": float(moon[dist.argmin(axis=1)].mean())}

    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        x, _ = moon_points(rng, batch)
        z = rng.normal(size=(batch, 4)).astype(np.float32)
        d_loss = prog.train("train_disc", x=x, z=z, real=real, fake=fake)
        z = rng.normal(size=(batch, 4)).astype(np.float32)
        g_loss = prog.train("train_gen", z=z, real=real)
        if verbose and step % 500 == 0:
            q = quality()
            print(f"step {step:5d}  discriminator loss {d_loss:.3f}  generator loss {g_loss:.3f}  "
                  f"precision {q['precision']:.3f}  coverage {q['coverage']:.3f}")
    result = quality()
    if verbose:
        print(f"trained {steps} steps in {time.perf_counter() - t0:.2f} s; precision "
              f"{result['precision']:.3f}, coverage {result['coverage']:.3f}, "
              f"{result['second_moon']:.3f} of the points in the second moon")
    return result


OWN_LOOP_TASKS = {"adding": train_adding, "sentiment": train_sentiment,
                  "autoencoder": train_autoencoder, "gan": train_gan}

# Tasks whose loop lives in examples/TASK.py (a `train(seed, verbose, target)`
# returning a dict of figures), their program in examples/TASK.dl
# (adversarial attacks digits_mlp.dl).
MODULE_TASKS = ("caption", "translate", "dqn", "dcgan", "denoise", "adversarial")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=list(TASKS) + list(OWN_LOOP_TASKS) + list(MODULE_TASKS), nargs="?", default="moons")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--target", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--plot", metavar="PATH", help="draw the training curves to PATH (.png, .svg; "
                    "needs matplotlib: pip install 'dlc[plot]'), for " + ", ".join(TASKS))
    args = ap.parse_args()
    train(args.task, args.seed, target=args.target, plot=args.plot)
