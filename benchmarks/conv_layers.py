"""The CIFAR CNN's convolution layers one by one: GFLOP/s of dlc (padding,
convolution, bias and relu, as compiled in the network) against numpy's
sgemm rate and PyTorch's conv2d + relu on the same layer, in one process.

    python benchmarks/conv_layers.py [BATCH]

Each layer of examples/cifar_cnn.dl (3x3, padding 1) runs alone at batch 64
(default) in inference; FLOPs count 2 per multiply-add of the direct
convolution, whatever the algorithm (conv2..conv4 compile to Winograd
F(2x2, 3x3), which does 2.25x fewer: their rate can pass sgemm's).
numpy's rate is `a @ b` at 1024^3 (the sgemm benchmark's shape). The target
(issue 4) is every layer at >= 50% of numpy's rate. Threads: DLC_BENCH_THREADS
(default 2) for every framework.
"""
from __future__ import annotations

import sys

from common import blas_threads, medians_ms  # noqa: E402  (first: the checkout's dlc)

THREADS = blas_threads()

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dlc  # noqa: E402

LAYERS = [  # in channels, filters, spatial size: examples/cifar_cnn.dl's conv1..conv4
    (3, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16),
]


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    torch.set_num_threads(THREADS)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((1024, 1024), dtype=np.float32)
    b = rng.standard_normal((1024, 1024), dtype=np.float32)
    (blas,) = medians_ms(lambda: a @ b)
    sgemm = 2 * 1024 ** 3 / blas / 1e6
    print(f"CIFAR CNN conv layers, batch {batch}, {THREADS} threads, medians; "
          f"numpy sgemm 1024^3: {sgemm:.1f} GFLOP/s")
    print(f"  {'layer':<22}{'dlc ms':>9}{'GFLOP/s':>9}{'of sgemm':>10}{'PyTorch ms':>12}{'GFLOP/s':>9}")
    for k, (cin, cout, size) in enumerate(LAYERS, 1):
        prog = dlc.compile(f"""
model conv {{
    input x: f32[batch, {cin}, {size}, {size}]
    output y = conv2d(x, {cout}, 3, padding=1, name="c") |> relu
}}
""", num_threads=THREADS)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        conv.load_state_dict({"weight": torch.from_numpy(prog.params["c.weight"].copy()),
                              "bias": torch.from_numpy(prog.params["c.bias"].copy())})
        x = rng.standard_normal((batch, cin, size, size), dtype=np.float32)
        xt = torch.from_numpy(x)

        def torch_layer():
            with torch.inference_mode():
                return torch.relu(conv(xt))

        np.testing.assert_allclose(prog.run("conv", x=x)["y"], torch_layer().numpy(), rtol=1e-3, atol=1e-4)
        d, t = medians_ms(lambda: prog.run("conv", x=x), torch_layer)
        gflop = 2 * batch * cout * size * size * cin * 9 / 1e9
        name = f"conv{k} {cin}->{cout} @{size}x{size}"
        print(f"  {name:<22}{d:9.3f}{gflop / d * 1e3:9.1f}{gflop / d * 1e3 / sgemm:10.2f}"
              f"{t:12.3f}{gflop / t * 1e3:9.1f}")


if __name__ == "__main__":
    main()
