"""examples/translate.py: encoder-decoder LSTMs with attention reverse and
translate held-out sentences, the attention aligned with the source."""
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import translate  # noqa: E402


def test_padding_changes_nothing():
    # A sentence padded to a longer one's length: `lengths` keeps the
    # encoder off the padding and the mask keeps the attention off it.
    import dlc
    prog = dlc.compile(EXAMPLES / "translate.dl", seed=0)

    def run(batch):
        a = translate.batch_arrays(batch)
        enc = prog.run("encoder", source=a["source"], lengths=a["lengths"])
        return prog.run("decoder", words=a["words"], h=enc["h"], c=enc["c"], source=enc["states"],
                        mask=a["mask"])

    short, long = (3, 1, 4, 1), (5, 9, 2, 6, 5, 3, 5, 8)
    alone, padded = run([short]), run([short, long])
    np.testing.assert_allclose(padded["logits"][0, :5], alone["logits"][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(padded["weights"][0, :5, :4], alone["weights"][0], rtol=1e-4, atol=1e-6)
    assert np.all(padded["weights"][0, :, 4:] == 0)


def test_translates_held_out_sentences_and_attends_to_the_source_word():
    # 10 epochs, 4-8 s of training; seeds 0-5: greedy token accuracy
    # 0.997-1.0, alignment 0.975-0.982.
    figures = translate.train(seed=0, verbose=False)
    assert figures["accuracy"] >= 0.95, figures
    assert figures["alignment"] >= 0.9, figures
