"""dlc's cuda target against PyTorch (eager, cuDNN) on the same GPU, in one process.

    python benchmarks/gpu.py

The MLP 784-256-256-10, LeNet-5 and the CIFAR CNN at batch 1 and 128
(inference, and a training step with SGD and momentum), and the LSTM 64-128
over 50 steps at batch 32 (inference and an Adam step): the networks of the
CPU benchmarks, with dlc's initial weights copied into PyTorch. Both sides take
numpy in and give numpy out (dlc's API copies inputs to the device and outputs
back on every call, so PyTorch's figure includes the same copies). Each figure
is a median over interleaved blocks of runs.

Then the kernels alone: the CIFAR CNN's inference at batch 128 and one large
dense layer, run on inputs already on the device (dlc_session_set_device_io,
as a C caller holding device pointers would), timed by CUDA events, as a
fraction of the GPU's FP32 peak (SMs x 128 lanes x 2 flops x clock).
"""
from __future__ import annotations

import ctypes
import os
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import common  # noqa: E402  (first: the checkout's dlc)
from common import EXAMPLES  # noqa: E402
import dlc  # noqa: E402
from dlc.runtime import _check, _runtime, ffi  # noqa: E402
from cnn import CifarCNN, LeNet  # noqa: E402
from lstm import PARTS, SRC as LSTM_SRC, AllStates  # noqa: E402
from mlp import SRC as MLP_SRC  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = float(os.environ.get("DLC_BENCH_BUDGET_S", "1"))   # per figure
DEV = torch.device("cuda")


def medians_ms(*fs) -> list[float]:
    """Median wall time of each of fs (each ends synchronised: numpy out);
    few blocks, one run each at least: a slow kernel's figure still fits."""
    return common.medians_ms(*fs, budget_s=BUDGET_S, blocks=4, least=1)


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = (torch.nn.Linear(784, 256), torch.nn.Linear(256, 256),
                                        torch.nn.Linear(256, 10))

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


NETS = [  # name, source, model, torch module, input shape, lr (as the programs' optimizers)
    ("MLP", MLP_SRC, "mlp", MLP, (784,), 0.01),
    ("LeNet-5", EXAMPLES / "lenet.dl", "lenet", LeNet, (1, 28, 28), 0.05),
    ("CIFAR CNN", EXAMPLES / "cifar_cnn.dl", "cifar_cnn", CifarCNN, (3, 32, 32), 0.01),
]


def classifier_rows(name, src, model, module, shape, lr) -> list[tuple]:
    prog = dlc.compile(src, target="cuda")
    net = module().to(DEV)
    net.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in prog.params.items()})
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 128):
        x = rng.normal(size=(batch,) + shape).astype(np.float32)

        def torch_infer():
            with torch.inference_mode():
                return net(torch.from_numpy(x).to(DEV)).cpu().numpy()
        np.testing.assert_allclose(prog.run(model, x=x)["logits"], torch_infer(), rtol=1e-3, atol=1e-4)
        rows.append((f"{name} inference b{batch}", *medians_ms(lambda: prog.run(model, x=x), torch_infer)))
    for batch in (1, 128):
        x = rng.normal(size=(batch,) + shape).astype(np.float32)
        lab = rng.integers(0, 10, size=batch).astype(np.int32)
        opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)

        def torch_step():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(x).to(DEV)),
                                                     torch.from_numpy(lab).to(DEV).long())
            loss.backward()
            opt.step()
            return loss.item()
        rows.append((f"{name} train step b{batch}",
                     *medians_ms(lambda: prog.train("fit", x=x, t=lab), torch_step)))
    return rows


def lstm_rows() -> list[tuple]:
    prog = dlc.compile(LSTM_SRC, target="cuda")
    net = AllStates().to(DEV)
    with torch.no_grad():
        for part in PARTS:
            getattr(net.lstm, f"{part}_l0").copy_(torch.from_numpy(prog.params[f"lstm.{part}"]))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 50, 64)).astype(np.float32)
    target = rng.normal(size=(32, 128)).astype(np.float32)

    def torch_infer():
        with torch.inference_mode():
            return net(torch.from_numpy(x).to(DEV)).cpu().numpy()
    np.testing.assert_allclose(prog.run("seq", x=x)["h"], torch_infer(), rtol=1e-3, atol=1e-4)
    opt = torch.optim.Adam(net.parameters(), lr=0.001)

    def torch_step():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(torch.from_numpy(x).to(DEV))[:, -1],
                                            torch.from_numpy(target).to(DEV))
        loss.backward()
        opt.step()
        return loss.item()
    return [("LSTM 64-128 T=50 inference b32", *medians_ms(lambda: prog.run("seq", x=x), torch_infer)),
            ("LSTM 64-128 T=50 train step b32",
             *medians_ms(lambda: prog.train("fit", x=x, t=target), torch_step))]


def fp32_peak_tflops() -> float:
    """SMs x 128 FP32 lanes x 2 (an FMA) x the boost clock (Hopper, Ampere GA10x)."""
    cu = ctypes.CDLL("libcuda.so.1")
    clock_khz, dev = ctypes.c_int(), ctypes.c_int()
    assert cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cu.cuDeviceGetAttribute(ctypes.byref(clock_khz), 13, dev) == 0   # CLOCK_RATE
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    return sms * 128 * 2 * clock_khz.value * 1e3 / 1e12


def device_io_ms(prog, entry: str, x: torch.Tensor, reps: int = 20) -> float:
    """Median time of `entry` on a device-resident input, by CUDA events."""
    lib, session = _runtime(), prog._session._ptr
    _check(lib.dlc_session_set_device_io(session, 1))
    tin, tout = ffi.new("dlc_tensor[1]"), ffi.new("dlc_tensor[4]")
    tin[0].data = ffi.cast("void *", x.data_ptr())
    tin[0].dtype, tin[0].rank = 0, x.dim()
    tin[0].dims[0:x.dim()] = list(x.shape)
    name = ffi.new("char[]", b"x")
    names = ffi.new("const char *[1]", [name])
    n_out = len(prog._runtime.entries[entry].outputs)
    times = []
    try:
        for i in range(reps + 3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            _check(lib.dlc_session_run(session, entry.encode(), 1, names, tin, n_out, tout))
            end.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(start.elapsed_time(end))
    finally:
        _check(lib.dlc_session_set_device_io(session, 0))
    return statistics.median(times)


def kernel_rows():
    peak = fp32_peak_tflops()
    yield f"FP32 peak: {peak:.1f} TFLOP/s"
    t0 = time.perf_counter()
    cifar = dlc.compile(EXAMPLES / "cifar_cnn.dl", target="cuda")
    yield f"compile of cifar_cnn.dl for cuda: {time.perf_counter() - t0:.1f} s"
    x = torch.randn(128, 3, 32, 32, device=DEV)
    convs = [(3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16)]   # (in, out, side), 3x3
    flops = 128 * (sum(2 * i * o * 9 * s * s for i, o, s in convs) + 2 * (4096 * 512 + 512 * 10))
    ms = device_io_ms(cifar, "cifar_cnn", x)
    yield (f"CIFAR CNN inference b128, device-resident: {ms:.3f} ms, "
           f"{flops / ms / 1e9:.2f} TFLOP/s = {flops / ms / 1e9 / peak:.1%} of peak")
    n = 4096
    dense = dlc.compile(f"model big {{ input x: f32[batch, {n}]\n output y = dense(x, {n}) }}",
                        target="cuda")
    x = torch.randn(n, n, device=DEV)
    ms = device_io_ms(dense, "big", x)
    t0 = torch.cuda.Event(enable_timing=True)
    t1 = torch.cuda.Event(enable_timing=True)
    w = torch.randn(n, n, device=DEV)
    torch.backends.cuda.matmul.allow_tf32 = False
    for _ in range(3):
        x @ w
    t0.record()
    for _ in range(10):
        x @ w
    t1.record()
    torch.cuda.synchronize()
    torch_ms = t0.elapsed_time(t1) / 10
    flops = 2 * n ** 3
    yield (f"dense {n}x{n} at batch {n}, device-resident: dlc {ms:.3f} ms, "
           f"{flops / ms / 1e9:.2f} TFLOP/s = {flops / ms / 1e9 / peak:.1%} of peak; "
           f"cuBLAS fp32 (no TF32) {torch_ms:.3f} ms = {flops / torch_ms / 1e9 / peak:.1%}")


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs PyTorch with CUDA and an NVIDIA GPU")
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False   # both sides in plain fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    print(f"{torch.cuda.get_device_name()}, dlc {commit}, PyTorch {torch.__version__}; "
          "medians in ms, numpy in and out (ratio = PyTorch / dlc: above 1 means dlc is faster)")
    print(f"{'':34}{'dlc':>10}{'PyTorch':>10}{'ratio':>7}")
    for line in kernel_rows():
        print(line, flush=True)
    groups = [lambda spec=spec: classifier_rows(*spec) for spec in NETS]
    for rows in groups[:2] + [lstm_rows] + groups[2:]:
        t0 = time.perf_counter()
        for name, d, t in rows():
            print(f"{name:34}{d:10.4f}{t:10.4f}{t / d:7.2f}", flush=True)
        print(f"    (compile and timing: {time.perf_counter() - t0:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
