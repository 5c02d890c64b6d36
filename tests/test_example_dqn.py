"""examples/dqn.py: deep Q-learning in a grid world reaches the optimal policy."""
import sys
from pathlib import Path

import numpy as np

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import dqn  # noqa: E402


def test_fit_is_the_huber_loss_of_the_bellman_target_and_trains_q_only():
    import dlc
    prog = dlc.compile(EXAMPLES / "dqn.dl", seed=0)
    rng = np.random.default_rng(0)
    s, s2 = (np.eye(49, dtype=np.float32)[rng.integers(49, size=16)] for _ in range(2))
    a = rng.integers(4, size=(16, 1)).astype(np.int32)
    r = rng.integers(2, size=(16, 1)).astype(np.float32)
    done = rng.integers(2, size=(16, 1)).astype(np.float32)
    y = r + 0.9 * prog.run("target", s=s2)["values"].max(axis=1, keepdims=True) * (1 - done)
    diff = np.abs(np.take_along_axis(prog.run("q", s=s)["values"], a, axis=1) - y)
    huber = np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).mean()
    before = {k: v.copy() for k, v in prog.params.items()}
    loss = prog.train("fit", s=s, a=a, r=r, s2=s2, done=done)
    np.testing.assert_allclose(loss, huber, rtol=1e-5, atol=1e-6)
    for name, value in prog.params.items():
        assert np.array_equal(value, before[name]) == name.startswith("target."), name


def test_greedy_policy_takes_a_shortest_path_from_every_cell():
    # 400 episodes, about 6700 updates, under a second; seeds 0-3 all reach 1.0
    # (after 50 episodes, 0.53 for seed 0).
    figures = dqn.train(seed=0, verbose=False)
    assert figures["optimal"] == 1.0, figures
