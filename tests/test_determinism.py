"""Gradients that scatter are deterministic on two threads.

A gradient that adds many contributions into one element (an embedding's
rows, overlapping pooling windows, a strided convolution's input, an LSTM's
recurrent weights) must not lose updates or change its summation order when
the runtime's pool shares its loops out. Each program below is called
repeatedly at two threads on the same inputs: every call must give the
first call's bits, and those bits must equal one thread's (sharing loops out
never changes an element's arithmetic; see tests/passes/test_loop_parallel.py).
A tiny vocabulary makes every token the same row: the worst case for a race.
"""
import time

import numpy as np
import pytest

import dlc

PROGRAMS = {
    # embedding -> flatten -> dense: the scatter into the table had been split
    # over (batch, time) on the token it loads, losing updates
    "embedding_dense": ("""
model m {
    input tok: i32[batch, 12]
    h = embedding(tok, 1, 8, name="emb") |> flatten
    output y = dense(h, 3, name="fc")
}""", lambda rng, b: {"tok": np.zeros((b, 12), np.int32)}, 256),
    "embedding_bilstm": ("""
model m {
    input tok: i32[batch, time]
    h = embedding(tok, 1, 8, name="emb")
    h = lstm(h, 16, bidirectional=true, name="l1")
    h = lstm(h, 16, bidirectional=true, name="l2")
    output y = dense(last(h), 3, name="fc")
}""", lambda rng, b: {"tok": np.zeros((b, 9), np.int32)}, 64),
    "embedding_lengths": ("""
model m {
    input tok: i32[batch, time]
    input n: i32[batch]
    h = embedding(tok, 3, 16, name="emb")
    h = rnn(h, 24, lengths=n, name="rnn")
    output y = dense(last(h, n), 3, name="fc")
}""", lambda rng, b: {"tok": rng.integers(0, 3, (b, 7)).astype(np.int32),
                      "n": rng.integers(1, 8, b).astype(np.int32)}, 96),
    # overlapping pooling windows and strided, padded, grouped convolutions:
    # their input gradients sum several windows into one element
    "conv_pool": ("""
model m {
    input x: f32[batch, 4, 15, 15]
    h = conv2d(x, 8, 3, stride=2, padding=1, name="c1") |> relu
    h = maxpool(h, 3, stride=2, padding=1)
    h = conv2d(h, 8, 3, padding=2, dilation=2, groups=2, name="c2") |> relu
    h = avgpool(h, 3, stride=1, padding=1) |> flatten
    output y = dense(h, 3, name="fc")
}""", lambda rng, b: {"x": rng.normal(size=(b, 4, 15, 15)).astype(np.float32)}, 48),
    "batchnorm_concat": ("""
model m {
    input x: f32[batch, 3, 8, 8]
    a = conv2d(x, 6, 3, padding=1, name="a") |> batchnorm(name="bn") |> relu
    b = conv2d(x, 2, 1, name="b")
    h = concat(a, b, axis=1) |> global_avgpool |> flatten
    output y = dense(h, 3, name="fc")
}""", lambda rng, b: {"x": rng.normal(size=(b, 3, 8, 8)).astype(np.float32)}, 64),
}

TRAIN = """
train fit {{
{inputs}
    input t: i32[batch]
    loss = cross_entropy(m({args}), t)
    optimizer = sgd(lr=0.1)
}}"""

SECONDS = 2.0   # per program: a few thousand calls of these sizes


def _program(model: str, threads: int):
    decls = [line.strip() for line in model.splitlines() if line.strip().startswith("input ")]
    args = ", ".join(d.split()[1].rstrip(":") for d in decls)
    train = TRAIN.format(inputs="\n".join("    " + d for d in decls), args=args)
    return dlc.compile(model + train, num_threads=threads)


@pytest.mark.parametrize("name", PROGRAMS)
def test_gradients_bit_identical_over_repeated_calls_at_two_threads(name):
    model, make_inputs, batch = PROGRAMS[name]
    rng = np.random.default_rng(0)
    inputs = make_inputs(rng, batch)
    inputs["t"] = rng.integers(0, 3, batch).astype(np.int32)
    two, one = _program(model, 2), _program(model, 1)
    first = two.grads("fit", **inputs)
    serial = one.grads("fit", **inputs)
    for p in first:
        np.testing.assert_array_equal(first[p], serial[p], err_msg=f"{name}: {p} at 2 threads vs 1")
    calls, deadline = 0, time.perf_counter() + SECONDS
    while calls < 200 or (time.perf_counter() < deadline and calls < 5000):
        g = two.grads("fit", **inputs)
        calls += 1
        for p in first:
            if not np.array_equal(g[p], first[p]):
                worst = np.abs(g[p] - first[p]).max()
                pytest.fail(f"{name}: call {calls} changed {p} by up to {worst:g}")
