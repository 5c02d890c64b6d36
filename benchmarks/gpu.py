"""dlc's cuda target against PyTorch eager on CUDA, in one process.

    python benchmarks/gpu.py

MLP 784-256-256-10: inference at batch 1 and 256 and an SGD-with-momentum
training step at batch 128, each the median of many runs. Both sides take
numpy in and give numpy out (dlc's API copies inputs to the device and
outputs back on every call, so PyTorch's timing includes the same copies).
LeNet and the CIFAR-style CNN join the table when their examples exist
(branch cnn). Prints the GPU model and the commit with the table.
"""
from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: E402,F401  (puts this checkout's dlc first on the path)
import dlc  # noqa: E402
from mlp import SRC  # noqa: E402  the same network as the CPU benchmark

ROOT = Path(__file__).resolve().parent.parent


def median_ms(f, reps: int) -> float:
    for _ in range(max(3, reps // 10)):
        f()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs PyTorch with CUDA and an NVIDIA GPU")
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    prog = dlc.compile(SRC, target="cuda")
    net = torch.nn.Sequential(torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                              torch.nn.ReLU(), torch.nn.Linear(256, 10)).to(dev)
    names = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "out.weight", "out.bias"]
    with torch.no_grad():
        for name, p in zip(names, net.parameters()):
            p.copy_(torch.from_numpy(prog.params[name]))

    rng = np.random.default_rng(0)
    rows = []
    for batch, reps in [(1, 2000), (256, 500)]:
        x = rng.normal(size=(batch, 784)).astype(np.float32)

        def torch_infer():
            with torch.inference_mode():
                return net(torch.from_numpy(x).to(dev)).cpu().numpy()
        np.testing.assert_allclose(prog.run("mlp", x=x)["logits"], torch_infer(), rtol=1e-3, atol=1e-4)
        rows.append((f"MLP inference batch {batch}", median_ms(lambda: prog.run("mlp", x=x), reps),
                     median_ms(torch_infer, reps)))
    x = rng.normal(size=(128, 784)).astype(np.float32)
    lab = rng.integers(0, 10, size=128).astype(np.int32)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)

    def torch_step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x).to(dev)),
                                                 torch.from_numpy(lab).to(dev).long())
        loss.backward()
        opt.step()
        return loss.item()
    rows.append(("MLP train step batch 128", median_ms(lambda: prog.train("fit", x=x, t=lab), 500),
                 median_ms(torch_step, 500)))

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"{torch.cuda.get_device_name()}, dlc {commit}, PyTorch {torch.__version__}; "
          "medians in ms (ratio = PyTorch / dlc: above 1 means dlc is faster)")
    print(f"{'':28}{'dlc':>9}{'PyTorch':>10}{'ratio':>7}")
    for name, d, t in rows:
        print(f"{name:28}{d:9.4f}{t:10.4f}{t / d:7.2f}")


if __name__ == "__main__":
    main()
