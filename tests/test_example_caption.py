"""examples/caption.py: a CNN-started LSTM captions held-out digits."""
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import caption  # noqa: E402
from example_data import digit_images  # noqa: E402


def test_step_model_shares_the_decoder_of_the_teacher_forced_model():
    # `step`, run one word at a time with its state passed back, gives the
    # logits `caption` gives for the whole caption: one set of weights.
    import dlc
    prog = dlc.compile(EXAMPLES / "caption.dl", seed=0)
    x, digits = digit_images(0)
    x, digits = x[:5], digits[:5]
    words, _ = caption.caption_arrays(digits)
    whole = prog.run("caption", x=x, words=words)["logits"]
    h = prog.run("encoder", x=x)["h0"]
    c = np.zeros_like(h)
    for t in range(words.shape[1]):
        out = prog.run("step", word=words[:, t:t + 1], h=h, c=c)
        np.testing.assert_allclose(out["logits"][:, 0], whole[:, t], rtol=1e-4, atol=1e-5)
        h, c = out["h_n"], out["c_n"]
    assert sum(name.startswith("dec.") for name in prog.params) == 4  # weight_ih/hh, bias_ih/hh


def test_captions_held_out_digits_exactly():
    # 15 epochs, 1-2 s of training; seeds 0-7: 0.986-0.997 of the
    # held-out captions exactly right (a tanh in place of the layernorm on
    # h0: 0.09 for seed 0, the decoder ignoring the image).
    figures = caption.train(seed=0, verbose=False)
    assert figures["accuracy"] >= 0.9, figures
