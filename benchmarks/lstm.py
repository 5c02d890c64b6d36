"""LSTM (input 64, hidden 128, length 50): dlc against PyTorch eager and ONNX
Runtime, in one process.

    python benchmarks/lstm.py

Inference latency at batch 1, 32 and 128 (dlc, torch.nn.LSTM, ONNX Runtime with
the same network exported from PyTorch) and a training step at batch 32 and 128
(dlc, PyTorch; Adam, loss on the last hidden state), each the median of many runs,
with ratios. Threads: every framework gets the same number (DLC_BENCH_THREADS,
default 2).
"""
from __future__ import annotations

import os

import numpy as np
import torch

from common import medians_ms, onnx_session, print_table, threads  # noqa: E402  (first: the checkout's dlc)
import dlc  # noqa: E402

FEATURES, HIDDEN, STEPS = 64, 128, 50
BUDGET_S = float(os.environ.get("DLC_BENCH_BUDGET_S", "2"))   # per figure
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


class AllStates(torch.nn.Module):
    """torch.nn.LSTM returning all hidden states, as the dlc model does."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, batch_first=True)

    def forward(self, x):
        return self.lstm(x)[0]


def main() -> None:
    torch.set_num_threads(threads())
    prog = dlc.compile(SRC, num_threads=threads())
    net = AllStates()
    with torch.no_grad():
        for part in PARTS:
            getattr(net.lstm, f"{part}_l0").copy_(torch.from_numpy(prog.params[f"lstm.{part}"]))
    sess = onnx_session(net, torch.zeros(1, STEPS, FEATURES), {0: "b", 1: "t"}, threads())

    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 32, 128):
        x = rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
        xt = torch.from_numpy(x)
        ref = net(xt).detach().numpy()
        np.testing.assert_allclose(prog.run("seq", x=x)["h"], ref, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, rtol=1e-3, atol=1e-4)
        def torch_infer():
            with torch.inference_mode():
                net(xt)

        d, t, o = medians_ms(lambda: prog.run("seq", x=x), torch_infer, lambda: sess.run(None, {"x": x}),
                             budget_s=BUDGET_S)
        rows.append((f"inference batch {batch}", d, t, o))
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    for batch in (32, 128):
        x = rng.normal(size=(batch, STEPS, FEATURES)).astype(np.float32)
        target = rng.normal(size=(batch, HIDDEN)).astype(np.float32)
        xt, tt = torch.from_numpy(x), torch.from_numpy(target)

        def torch_step():
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(xt)[:, -1], tt).backward()
            opt.step()

        d, t = medians_ms(lambda: prog.train("fit", x=x, t=target), torch_step, budget_s=BUDGET_S)
        rows.append((f"train step batch {batch}", d, t, None))

    print_table(f"LSTM {FEATURES}-{HIDDEN}, {STEPS} steps", rows)

if __name__ == "__main__":
    main()
