"""examples/dcgan.py: a conditional convolutional GAN draws every digit."""
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import dcgan  # noqa: E402


def test_generated_digits_are_named_as_their_labels_and_cover_every_digit():
    # 800 steps: about 20 s on 2 idle cores (50 s when shared), compiling
    # included. Seeds 0-3: classifier held-out accuracy 0.961-0.975; of 100
    # generated images per label, 0.90-0.99 named as their label, all 10
    # digits named, the rarest 0.060-0.097 of them, mean confidence 0.84-0.97.
    # The untrained generator's images (seeds 0, 1) are all named the same
    # digit, with confidence 0.48-0.50.
    f = dcgan.train(seed=0, verbose=False)
    assert f["classifier_accuracy"] >= 0.95, f
    assert f["label_accuracy"] >= 0.85, f
    assert f["classes"] == 10 and f["min_share"] >= 0.02, f
    assert f["confidence"] >= 0.8, f
