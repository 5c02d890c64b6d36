"""Image captioning: a CNN looks at a digit and an LSTM describes it in words.

Each of scikit-learn's 8x8 digits (20% held out) gets a caption of 3 to 5
words: its name, odd or even, prime or not, and "square" for perfect
squares ("seven odd prime", "four even not prime square"). In
examples/caption.dl the CNN's features set the LSTM decoder's first hidden
state; the decoder is trained with teacher forcing (it reads the true words
before each one it predicts, the padding past each caption's end ignored by
the loss) and writes captions greedily, one word per run of the `step`
model from Python, its state passed back in. Figures: the share of held-out
digits whose caption comes out exactly right, and the training time.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import dlc
from example_data import digit_images, held_out_split, shuffled_batches

HERE = Path(__file__).parent
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
VOCAB = ["<end>", "<start>"] + NAMES + ["odd", "even", "not", "prime", "square"]  # 17, as in caption.dl
END, START = 0, 1
LONGEST = 6  # words, <end> included


def describe(digit: int) -> list[str]:
    words = [NAMES[digit], "odd" if digit % 2 else "even"]
    words += ["prime"] if digit in (2, 3, 5, 7) else ["not", "prime"]
    return words + (["square"] if digit in (0, 1, 4, 9) else [])


def caption_arrays(digits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's inputs (<start>, then the caption) and targets (the
    caption, then <end>, padded with -1, which the loss ignores)."""
    words = np.full((len(digits), LONGEST), END, np.int32)
    targets = np.full((len(digits), LONGEST), -1, np.int32)
    for i, digit in enumerate(digits):
        ids = [VOCAB.index(w) for w in describe(digit)]
        words[i, :len(ids) + 1] = [START] + ids
        targets[i, :len(ids) + 1] = ids + [END]
    return words, targets


def train(seed: int = 0, verbose: bool = True, target: str = "cpu", epochs: int = 15,
          batch: int = 32) -> dict[str, float]:
    """Figures: `accuracy` (held-out captions exactly right, greedy
    decoding) and `seconds` (training)."""
    x, digits = digit_images(seed)
    words, targets = caption_arrays(digits)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(x), rng)
    prog = dlc.compile(HERE / "caption.dl", seed=seed, target=target)

    def write(images) -> list[list[str] | None]:
        """Greedy decoding: each step feeds back the likeliest word."""
        h = prog.run("encoder", x=images)["h0"]
        c = np.zeros_like(h)
        word = np.full((len(images), 1), START, np.int32)
        out = []
        for _ in range(LONGEST):
            step = prog.run("step", word=word, h=h, c=c)
            word = step["logits"].argmax(axis=-1).astype(np.int32)
            h, c = step["h_n"], step["c_n"]
            out.append(word[:, 0])
        return [[VOCAB[i] for i in row[:row.index(END)]] if END in row else None  # None: never ended
                for row in np.stack(out, axis=1).tolist()]

    def accuracy(idx) -> float:
        return float(np.mean([c == describe(d) for c, d in zip(write(x[idx]), digits[idx])]))

    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        losses = [prog.train("fit", x=x[idx], words=words[idx], next=targets[idx])
                  for idx in shuffled_batches(tr, batch, rng)]
        if verbose and (epoch % 5 == 0 or epoch == 1):
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  held-out captions right {accuracy(test):.3f}")
    figures = {"seconds": time.perf_counter() - t0, "accuracy": accuracy(test)}
    if verbose:
        print(f"trained {epochs} epochs in {figures['seconds']:.2f} s; {figures['accuracy']:.3f} of "
              f"{len(test)} held-out digits captioned exactly right")
        firsts = [test[digits[test] == d][0] for d in range(10)]  # a held-out image of each digit
        for digit, caption in enumerate(write(x[firsts])):
            print(f"  {digit}: {' '.join(caption) if caption else '(no <end>)'}")
    return figures
