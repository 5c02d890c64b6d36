"""End-to-end training of the examples to their stated accuracies."""
import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


def load_train():
    spec = importlib.util.spec_from_file_location("train_example", EXAMPLES / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.train


@pytest.mark.parametrize("task,target", [("moons", 0.97), ("digits", 0.95)])
def test_example_reaches_accuracy(task, target):
    acc = load_train()(task, seed=0, verbose=False)
    assert acc >= target, f"{task}: held-out accuracy {acc:.3f} < {target}"
