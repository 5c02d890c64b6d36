"""MLP 784-256-256-10: dlc against PyTorch eager and ONNX Runtime, in one process.

    python benchmarks/mlp.py

Inference latency at batch 1, 64 and 256 (dlc, PyTorch, ONNX Runtime with the
same network exported from PyTorch) and a training step at batch 64 and 256
(dlc, PyTorch, SGD with momentum), each the median of many runs, with ratios. Threads: every
framework gets the same number (DLC_BENCH_THREADS, default 2).
"""
from __future__ import annotations


import numpy as np
import torch

from common import medians_ms, onnx_session, print_table, threads  # noqa: E402  (first: the checkout's dlc)
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


def main() -> None:
    torch.set_num_threads(threads())
    prog = dlc.compile(SRC, num_threads=threads())
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10))
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    with torch.no_grad():
        for name, p in zip(names, net.parameters()):
            p.copy_(torch.from_numpy(prog.params[name]))
    sess = onnx_session(net, torch.zeros(1, 784), {0: "b"}, threads())

    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 64, 256):
        x = rng.normal(size=(batch, 784)).astype(np.float32)
        xt = torch.from_numpy(x)
        ref = net(xt).detach().numpy()
        np.testing.assert_allclose(prog.run("mlp", x=x)["logits"], ref, rtol=1e-3, atol=1e-4)
        def torch_infer():
            with torch.inference_mode():
                net(xt)

        d, t, o = medians_ms(lambda: prog.run("mlp", x=x), torch_infer,
                             lambda: sess.run(None, {"x": x}))
        rows.append((f"inference batch {batch}", d, t, o))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for batch in (64, 256):
        x = rng.normal(size=(batch, 784)).astype(np.float32)
        lab = rng.integers(0, 10, size=batch).astype(np.int32)
        xt, lt = torch.from_numpy(x), torch.from_numpy(lab).long()

        def torch_step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt), lt).backward()
            opt.step()

        d, t = medians_ms(lambda: prog.train("fit", x=x, t=lab), torch_step)
        rows.append((f"train step batch {batch}", d, t, None))

    print_table("MLP 784-256-256-10", rows)

if __name__ == "__main__":
    main()
