"""One compiled program called from several Python threads at once.

Calls on one session run one at a time (the runtime's session lock, and the
Python session's for its scratch), so mixing run, train, grads and param
reads from four threads must give exactly the serial results: every train
step maps the params to the same next params whichever thread takes it, so
the k-th step anywhere returns the serial k-th loss, each run or grads sees
the params after some whole number of steps, and the final params are those
of as many serial steps. Before the locks, a round crashed or went wrong
about four times in five (threads overwrote each other's inputs in the
shared tensor table and scratch).
"""
import collections
import threading

import numpy as np

import dlc

SOURCE = """
model net {
    input x: f32[batch, 32]
    h = dense(x, 64, name="fc1") |> relu
    output y = dense(h, 4, name="fc2")
}

train fit {
    input x: f32[batch, 32]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = sgd(lr=0.05, momentum=0.9)
}
"""
THREADS, ITERS, ROUNDS = 4, 120, 3
OPS = ("run", "grads", "train", "params")


def key(arrays: dict) -> bytes:
    return b"".join(arrays[k].tobytes() for k in sorted(arrays))


def test_threads_mixing_entries_match_serial():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 32)).astype(np.float32)
    t = rng.integers(0, 4, 128).astype(np.int32)
    steps = THREADS * ITERS // len(OPS)

    # The serial reference: outputs after each number of train steps.
    ref = dlc.compile(SOURCE, seed=3, num_threads=2)
    runs, grads, losses = {}, {}, []
    for k in range(steps + 1):
        runs[key(ref.run("net", x=x))] = k
        grads[key(ref.grads("fit", x=x, t=t))] = k
        if k < steps:
            losses.append(ref.train("fit", x=x, t=t))
    final = {k: v.copy() for k, v in ref.params.items()}

    prog = dlc.compile(SOURCE, seed=3, num_threads=2)
    for _ in range(ROUNDS):
        prog.init_params(3)   # as created: the same params, no momentum
        mix_threads(prog, x, t, runs, grads, losses, final)


def mix_threads(prog, x, t, runs, grads, losses, final):
    seen = collections.defaultdict(list)
    errors = []
    start = threading.Barrier(THREADS)

    def work(i: int):
        try:
            start.wait()
            for j in range(ITERS):
                op = OPS[(i + j) % len(OPS)]
                if op == "run":
                    seen["run"].append(runs.get(key(prog.run("net", x=x))))
                elif op == "grads":
                    seen["grads"].append(grads.get(key(prog.grads("fit", x=x, t=t))))
                elif op == "train":
                    seen["loss"].append(prog.train("fit", x=x, t=t))
                else:   # live views: a read during a step may see it half done
                    p = {k: v.copy() for k, v in prog.params.items()}
                    seen["params"].append(all(p[k].shape == final[k].shape for k in p))
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert None not in seen["run"] and None not in seen["grads"]
    assert len(seen["run"]) == len(seen["grads"]) == len(losses)
    assert all(seen["params"])
    assert collections.Counter(seen["loss"]) == collections.Counter(losses)
    for k, v in prog.params.items():
        np.testing.assert_array_equal(v, final[k])
