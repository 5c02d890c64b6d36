"""LSTM (input 64, hidden 128, length 50): dlc against PyTorch eager and ONNX
Runtime, in one process.

    python benchmarks/lstm.py

Inference latency at batch 1 and 32 (dlc, torch.nn.LSTM, ONNX Runtime with the
same network exported from PyTorch) and a training step at batch 32 (dlc,
PyTorch; Adam, loss on the last hidden state), each the median of many runs,
with ratios. Threads: every framework gets the same number (DLC_BENCH_THREADS,
default 2).
"""
from __future__ import annotations

import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's dlc
import dlc  # noqa: E402

FEATURES, HIDDEN, STEPS = 64, 128, 50
PARTS = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
SRC = f"""
model seq {{
    input x: f32[batch, time, {FEATURES}]
    output h = lstm(x, {HIDDEN}, name="lstm")
}}
train fit {{
    input x: f32[batch, time, {FEATURES}]
    input t: f32[batch, {HIDDEN}]
    loss = mse(last(seq(x)), t)
    optimizer = adam(lr=0.001)
}}
"""


def median_ms(f, reps: int) -> float:
    for _ in range(max(3, reps // 10)):
        f()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


class AllStates(torch.nn.Module):
    """torch.nn.LSTM returning all hidden states, as the dlc model does."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def main() -> None:
    threads = int(os.environ.get("DLC_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    prog = dlc.compile(SRC, num_threads=threads)
    net = AllStates()
    with torch.no_grad():
        for part in PARTS:
            getattr(net.lstm, f"{part}_l0").copy_(torch.from_numpy(prog.params[f"lstm.{part}"]))
    import onnxruntime as ort
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, STEPS, FEATURES), buf, input_names=["x"], output_names=["h"],
                      dynamic_axes={"x": {0: "b", 1: "t"}}, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    rows = []
    for batch, reps in [(1, 300), (32, 100)]:
        x = rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
        xt = torch.from_numpy(x)
        ref = net(xt).detach().numpy()
        np.testing.assert_allclose(prog.run("seq", x=x)["h"], ref, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-3, atol=1e-4)
        d = median_ms(lambda: prog.run("seq", x=x), reps)
        with torch.inference_mode():
            t = median_ms(lambda: net(xt), reps)
        o = median_ms(lambda: sess.run(None, {"x": x}), reps)
        rows.append((f"inference batch {batch}", d, t, o))
    x = rng.normal(size=(32, STEPS, FEATURES)).astype(np.float32)
    target = rng.normal(size=(32, HIDDEN)).astype(np.float32)
    xt, tt = torch.from_numpy(x), torch.from_numpy(target)
    opt = torch.optim.Adam(net.parameters(), lr=0.001)

    def torch_step():
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(xt)[:, -1], tt).backward()
        opt.step()

    d = median_ms(lambda: prog.train("fit", x=x, t=target), 50)
    t = median_ms(torch_step, 50)
    rows.append(("train step batch 32", d, t, None))

    print(f"LSTM {FEATURES}-{HIDDEN}, {STEPS} steps, {threads} threads, medians in ms "
          "(ratio = other / dlc: above 1 means dlc is faster)")
    print(f"{'':22}{'dlc':>9}{'PyTorch':>10}{'ratio':>7}{'ONNX RT':>10}{'ratio':>7}")
    for name, d, t, o in rows:
        onnx = f"{o:10.4f}{o / d:7.2f}" if o is not None else f"{'-':>10}{'-':>7}"
        print(f"{name:22}{d:9.4f}{t:10.4f}{t / d:7.2f}{onnx}")


if __name__ == "__main__":
    main()
