"""MLP 784-256-256-10: dlc against PyTorch eager and ONNX Runtime, in one process.

    python benchmarks/mlp.py

Inference latency at batch 1 and 256 (dlc, PyTorch, ONNX Runtime with the same
network exported from PyTorch) and a training step at batch 64 (dlc, PyTorch,
SGD with momentum), each the median of many runs, with ratios. Threads: every
framework gets the same number (DLC_BENCH_THREADS, default 2).
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

SRC = """
model mlp {
    input x: f32[batch, 784]
    h = dense(x, 256, name="fc1") |> relu
    h = dense(h, 256, name="fc2") |> relu
    output logits = dense(h, 10, name="out")
}
train fit {
    input x: f32[batch, 784]
    input t: i32[batch]
    loss = cross_entropy(mlp(x), t)
    optimizer = sgd(lr=0.01, momentum=0.9)
}
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


def main() -> None:
    threads = int(os.environ.get("DLC_BENCH_THREADS", "2"))
    torch.set_num_threads(threads)
    prog = dlc.compile(SRC, num_threads=threads)
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    with torch.no_grad():
        for name, p in zip(names, net.parameters()):
            p.copy_(torch.from_numpy(prog.params[name]))
    import onnxruntime as ort
    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 784), buf, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "b"}}, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    sess = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(0)
    rows = []
    for batch, reps in [(1, 2000), (256, 200)]:
        x = rng.normal(size=(batch, 784)).astype(np.float32)
        xt = torch.from_numpy(x)
        ref = net(xt).detach().numpy()
        np.testing.assert_allclose(prog.run("mlp", x=x)["logits"], ref, rtol=1e-3, atol=1e-4)
        d = median_ms(lambda: prog.run("mlp", x=x), reps)
        with torch.inference_mode():
            t = median_ms(lambda: net(xt), reps)
        o = median_ms(lambda: sess.run(None, {"x": x}), reps)
        rows.append((f"inference batch {batch}", d, t, o))
    x = rng.normal(size=(64, 784)).astype(np.float32)
    lab = rng.integers(0, 10, size=64).astype(np.int32)
    xt, lt = torch.from_numpy(x), torch.from_numpy(lab).long()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def torch_step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(xt), lt).backward()
        opt.step()

    d = median_ms(lambda: prog.train("fit", x=x, t=lab), 200)
    t = median_ms(torch_step, 200)
    rows.append(("train step batch 64", d, t, None))

    print(f"MLP 784-256-256-10, {threads} threads, medians in ms "
          "(ratio = other / dlc: above 1 means dlc is faster)")
    print(f"{'':22}{'dlc':>9}{'PyTorch':>10}{'ratio':>7}{'ONNX RT':>10}{'ratio':>7}")
    for name, d, t, o in rows:
        onnx = f"{o:10.4f}{o / d:7.2f}" if o is not None else f"{'-':>10}{'-':>7}"
        print(f"{name:22}{d:9.4f}{t:10.4f}{t / d:7.2f}{onnx}")


if __name__ == "__main__":
    main()
