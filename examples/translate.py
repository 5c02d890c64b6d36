"""Translation with attention: an encoder-decoder pair of LSTMs learns a toy
language, and its attention weights show which source word each output
word comes from.

The toy language has 12 words; a sentence (3 to 10 words, 20% of 4000
distinct ones held out) translates into the other language's 12 words,
each word by a fixed dictionary, in reverse order. examples/translate.dl
holds the encoder LSTM and the attention decoder, trained with teacher
forcing; here the decoder translates greedily, one word per run from
Python, feeding each word it picks back in. Figures: the held-out token
accuracy of those greedy translations (<end> included), the share of
their output words whose heaviest attention weight falls on the source
word they translate (the alignment: output word i of a sentence of n
reads source word n - 1 - i), and the training time.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

import dlc
from example_data import held_out_split, shuffled_batches

HERE = Path(__file__).parent
WORDS = 12                       # in each language; target ids 12 and 13 are <start> and <end>
START, END = WORDS, WORDS + 1
DICTIONARY = np.random.default_rng(1234).permutation(WORDS)   # source word -> target word
SHORTEST, LONGEST = 3, 10


def sentences(seed: int, n: int = 4000) -> list[tuple[int, ...]]:
    """n distinct random sentences, so that none held out was seen in training."""
    rng = np.random.default_rng(seed)
    found: dict[tuple[int, ...], None] = {}
    while len(found) < n:
        found[tuple(rng.integers(WORDS, size=rng.integers(SHORTEST, LONGEST + 1)))] = None
    return list(found)


def batch_arrays(batch: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The encoder's and decoder's inputs, padded to the longest sentence,
    and the targets: the translation, then <end>, padded with -1."""
    n, longest = len(batch), max(map(len, batch))
    source = np.zeros((n, longest), np.int32)
    mask = np.zeros((n, 1, longest), np.float32)
    words = np.full((n, longest + 1), END, np.int32)
    targets = np.full((n, longest + 1), -1, np.int32)
    for i, sentence in enumerate(batch):
        translation = list(DICTIONARY[list(reversed(sentence))])
        source[i, :len(sentence)] = sentence
        mask[i, 0, :len(sentence)] = 1
        words[i, :len(sentence) + 1] = [START] + translation
        targets[i, :len(sentence) + 1] = translation + [END]
    lengths = np.array([len(s) for s in batch], np.int32)
    return dict(source=source, lengths=lengths, mask=mask, words=words, next=targets)


def train(seed: int = 0, verbose: bool = True, target: str = "cpu", epochs: int = 10,
          batch: int = 32) -> dict[str, float]:
    """Figures: `accuracy` (held-out tokens, greedy decoding), `alignment`
    (output words attending most to their source word) and `seconds`
    (training)."""
    data = sentences(seed)
    rng = np.random.default_rng(seed)
    test, tr = held_out_split(len(data), rng)
    prog = dlc.compile(HERE / "translate.dl", seed=seed, target=target)

    def translate(idx) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Greedy decoding: the words picked and the attention weights at
        each step ([n, longest + 1] and [n, longest + 1, longest])."""
        a = batch_arrays([data[i] for i in idx])
        enc = prog.run("encoder", source=a["source"], lengths=a["lengths"])
        h, c = enc["h"], enc["c"]
        word = np.full((len(idx), 1), START, np.int32)
        picked, weights = [], []
        for _ in range(a["next"].shape[1]):
            out = prog.run("decoder", words=word, h=h, c=c, source=enc["states"], mask=a["mask"])
            word = out["logits"].argmax(axis=-1).astype(np.int32)
            h, c = out["h_n"], out["c_n"]
            picked.append(word[:, 0])
            weights.append(out["weights"][:, 0])
        return np.stack(picked, axis=1), np.stack(weights, axis=1), a

    def figures(idx) -> dict[str, float]:
        picked, weights, a = translate(idx)
        scored = a["next"] >= 0
        n = a["lengths"][:, None]
        steps = np.arange(picked.shape[1])[None, :]
        translating = steps < n                                  # output words, not <end>
        aligned = weights.argmax(axis=-1) == n - 1 - steps
        return {"accuracy": float((picked == a["next"])[scored].mean()),
                "alignment": float(aligned[translating].mean())}

    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        losses = [prog.train("fit", **batch_arrays([data[i] for i in idx]))
                  for idx in shuffled_batches(tr, batch, rng)]
        if verbose:
            f = figures(test)
            print(f"epoch {epoch:3d}  loss {np.mean(losses):.4f}  held-out token accuracy "
                  f"{f['accuracy']:.3f}  alignment {f['alignment']:.3f}")
    result = {"seconds": time.perf_counter() - t0} | figures(test)
    if verbose:
        print(f"trained {epochs} epochs in {result['seconds']:.2f} s; held-out token accuracy "
              f"{result['accuracy']:.3f} on {len(test)} sentences (greedy), attention on the "
              f"source word translated for {result['alignment']:.3f} of the output words")
    return result
