"""LeNet-5 and the CIFAR-style CNN: dlc against PyTorch eager and ONNX Runtime,
in one process.

    python benchmarks/cnn.py

For each network (examples/lenet.dl, examples/cifar_cnn.dl): inference
latency at batch 1 and 64 (dlc, PyTorch, ONNX Runtime running the same
network exported from PyTorch with dlc's weights) and a training step (dlc,
PyTorch, SGD with momentum) at batch 64 (LeNet) or 32 (CIFAR), each the
median of repeated runs (interleaved blocks, as many as fit a time budget
per figure), with ratios; then the compile time of the CIFAR CNN with its training step,
uncached. Threads: every framework gets the same number (DLC_BENCH_THREADS,
default 2).
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np
import torch
from torch import nn

from common import EXAMPLES, medians_ms, onnx_session, print_table, threads  # noqa: E402  (first: the checkout's dlc)
import dlc  # noqa: E402

BUDGET_S = float(os.environ.get("DLC_BENCH_BUDGET_S", "3"))   # per figure


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5, padding=2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


class CifarCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(32, 32, 3, padding=1)
        self.conv3, self.conv4 = nn.Conv2d(32, 64, 3, padding=1), nn.Conv2d(64, 64, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(4096, 512), nn.Linear(512, 10)

    def forward(self, x):
        r, pool = torch.relu, nn.functional.max_pool2d
        x = pool(r(self.conv2(r(self.conv1(x)))), 2)
        x = pool(r(self.conv4(r(self.conv3(x)))), 2).flatten(1)
        return self.fc2(r(self.fc1(x)))


NETS = [  # name, example file, model, torch module, input shape, train batch
    ("LeNet-5", "lenet.dl", "lenet", LeNet, (1, 28, 28), 64),
    ("CIFAR CNN", "cifar_cnn.dl", "cifar_cnn", CifarCNN, (3, 32, 32), 32),
]


def bench(name, file, model, module, shape, train_batch, threads) -> list[tuple]:
    prog = dlc.compile(EXAMPLES / file, num_threads=threads)
    net = module()
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in prog.params.items()})
    sess = onnx_session(net, torch.zeros((1,) + shape), {0: "b"}, threads)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 64):
        x = rng.normal(size=(batch,) + shape).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            ref = net(xt).numpy()
        np.testing.assert_allclose(prog.run(model, x=x)["logits"], ref, rtol=1e-3, atol=1e-4)
        def torch_infer():
            with torch.inference_mode():
                net(xt)

        d, t, o = medians_ms(lambda: prog.run(model, x=x), torch_infer,
                             lambda: sess.run(None, {"x": x}), budget_s=BUDGET_S)
        rows.append((f"{name} inference batch {batch}", d, t, o))
    x = rng.normal(size=(train_batch,) + shape).astype(np.float32)
    lab = rng.integers(0, 10, size=train_batch).astype(np.int32)
    xt, lt = torch.from_numpy(x), torch.from_numpy(lab).long()
    lr = 0.05 if model == "lenet" else 0.01   # as the examples' optimizers
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)

    def torch_step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(xt), lt).backward()
        opt.step()

    d, t = medians_ms(lambda: prog.train("fit", x=x, t=lab), torch_step, budget_s=BUDGET_S)
    rows.append((f"{name} train step batch {train_batch}", d, t, None))
    return rows


def compile_seconds(file: str) -> float:
    """dlc.compile of `file` (inference, training step and gradient entries)
    into a fresh cache directory, so nothing is reused."""
    old = os.environ.get("DLC_CACHE_DIR")
    with tempfile.TemporaryDirectory() as d:
        os.environ["DLC_CACHE_DIR"] = d
        try:
            t0 = time.perf_counter()
            dlc.compile(EXAMPLES / file)
            return time.perf_counter() - t0
        finally:
            if old is None:
                del os.environ["DLC_CACHE_DIR"]
            else:
                os.environ["DLC_CACHE_DIR"] = old


def main() -> None:
    torch.set_num_threads(threads())
    print_table("CNNs", [r for spec in NETS for r in bench(*spec, threads())])
    # The machine's load average beside it: wall times on a shared machine vary with it.
    print(f"compile time of cifar_cnn.dl (inference + training step + gradients, uncached): "
          f"{compile_seconds('cifar_cnn.dl'):.2f} s (load average {os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
