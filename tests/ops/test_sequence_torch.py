"""Sequence ops against PyTorch: embedding vs nn.Embedding, rnn / lstm vs
nn.RNN / nn.LSTM over packed sequences of mixed lengths (1 and the maximum
included), stacked and bidirectional, last(); f64 finite differences; and
gradient clipping vs clip_grad_norm_. fp32 tolerances: rtol 1e-4, atol 1e-5.
"""
import numpy as np
import pytest
import torch

import dlc
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
PARTS = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
pack = torch.nn.utils.rnn.pack_padded_sequence
unpack = torch.nn.utils.rnn.pad_packed_sequence


def torch_layer(prog, cell, features, hidden, names, bidirectional=False):
    """The torch.nn module with the program's weights: layer k from names[k]."""
    cls = torch.nn.LSTM if cell == "lstm" else torch.nn.RNN
    net = cls(features, hidden, num_layers=len(names), batch_first=True,
              bidirectional=bidirectional)
    with torch.no_grad():
        for k, name in enumerate(names):
            for suffix in ["", "_reverse"] if bidirectional else [""]:
                for part in PARTS:
                    getattr(net, f"{part}_l{k}{suffix}").copy_(
                        torch.tensor(prog.params[f"{name}.{part}{suffix}"]))
    return net


def run_torch(net, x, n):
    """All outputs (zero past each length) and the last layer's final states."""
    packed = pack(torch.tensor(x), torch.tensor(n), batch_first=True, enforce_sorted=False)
    out, state = net(packed)
    y, _ = unpack(out, batch_first=True, total_length=x.shape[1])
    h_n = state[0] if isinstance(state, tuple) else state
    return y, h_n


def check_grads(prog, entry, inputs, net, names, loss, bidirectional=False, all_used=True):
    loss.backward()
    grads = prog.grads(entry, **inputs)
    for k, name in enumerate(names):
        for suffix in ["", "_reverse"] if bidirectional else [""]:
            for part in PARTS:
                want = getattr(net, f"{part}_l{k}{suffix}").grad.numpy()
                got = grads[f"{name}.{part}{suffix}"]
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{name}.{part}{suffix}")
                assert np.abs(want).max() > 0 or not all_used


SEQ_SRC = """
model m {{
    input x: f32[batch, time, {F}]
    input n: i32[batch]
    output y = {body}
}}
train all_steps {{
    input x: f32[batch, time, {F}]
    input n: i32[batch]
    input t: f32[batch, time, {W}]
    loss = mse(m(x, n), t)
    optimizer = sgd(lr=0.1)
}}
train last_step {{
    input x: f32[batch, time, {F}]
    input n: i32[batch]
    input t: f32[batch, {W}]
    loss = mse(last(m(x, n), n), t)
    optimizer = sgd(lr=0.1)
}}
"""
# batch, time, features, hidden, lengths (1 and the maximum among them)
# Cases 3 and 4 have hidden sizes the tile pass blocks (with ragged edges);
# 4, a batch of two example blocks, the second partial (EXAMPLE_BLOCK 8,
# register blocks of 4 examples); 5, one block of a hidden size whose steps
# are split by units over the thread pool (2 parts of PANEL 64 units).
CASES = [(4, 6, 3, 5, [6, 1, 3, 6]), (3, 9, 7, 8, [2, 9, 1]), (1, 1, 2, 3, [1]),
         (2, 4, 33, 36, [4, 2]), (11, 5, 9, 20, [5, 1, 3, 5, 2, 4, 5, 1, 2, 3, 5]),
         (3, 6, 10, 128, [6, 1, 4])]


# Each program compiles in seconds, so the combinations are chosen, not crossed.
@pytest.mark.parametrize("cell,layers,bidirectional,case", [
    ("rnn", 1, False, 0), ("rnn", 1, False, 2), ("rnn", 1, True, 1),
    ("lstm", 1, False, 0), ("lstm", 1, False, 1), ("lstm", 1, False, 2), ("lstm", 2, True, 0),
    ("lstm", 1, False, 3), ("rnn", 1, False, 4), ("lstm", 1, False, 4), ("rnn", 1, False, 5),
    ("lstm", 1, False, 5)])
def test_recurrent_vs_torch(cell, layers, bidirectional, case):
    B, T, F, H, n = CASES[case]
    bi = "true" if bidirectional else "false"
    W = 2 * H if bidirectional else H
    names = [f"l{k}" for k in range(layers)]
    body = "x"
    for name in names:
        body = f'{cell}({body}, {H}, name="{name}", lengths=n, bidirectional={bi})'
    prog = dlc.compile(SEQ_SRC.format(F=F, W=W, body=body), seed=case)
    rng = np.random.default_rng(case)
    x = rng.normal(size=(B, T, F)).astype(np.float32)
    n = np.array(n, np.int32)
    net = torch_layer(prog, cell, F, H, names, bidirectional)

    y = prog.run("m", x=x, n=n)["y"]
    y_t, h_n = run_torch(net, x, n)
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=RTOL, atol=ATOL)
    assert np.all(y[np.arange(T)[None, :] >= n[:, None]] == 0)

    t = rng.normal(size=(B, T, W)).astype(np.float32)
    loss = torch.nn.functional.mse_loss(y_t, torch.tensor(t))
    # With one step, W_hh meets only the zero initial state: no gradient.
    check_grads(prog, "all_steps", dict(x=x, n=n, t=t), net, names, loss, bidirectional,
                all_used=T > 1)

    net.zero_grad()
    t = rng.normal(size=(B, W)).astype(np.float32)
    y_t, h_n = run_torch(net, x, n)
    # torch's final forward state is each example's last valid step; the
    # reverse direction's is at step 0, which last() does not pick.
    last_t = y_t[torch.arange(B), torch.tensor(n).long() - 1]
    if not bidirectional:
        np.testing.assert_allclose(last_t.detach().numpy(), h_n[-1].detach().numpy(), rtol=RTOL, atol=ATOL)
    loss = torch.nn.functional.mse_loss(last_t, torch.tensor(t))
    # The reverse direction's last step has seen one input: W_hh_reverse may get no gradient.
    check_grads(prog, "last_step", dict(x=x, n=n, t=t), net, names, loss, bidirectional,
                all_used=T > 1 and not bidirectional)


SCHEDULE_SRC = """
model m {
    input x: f32[batch, time, 16]
    output y = lstm(x, 128, name="l")
}
train fit {
    input x: f32[batch, time, 16]
    input t: f32[batch, time, 128]
    loss = mse(m(x), t)
    optimizer = sgd(lr=0.1)
}"""


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_scans_schedule(target):
    """On the CPU the scans run over blocks of examples on the thread pool
    with register-blocked per-step products, and the forward scan of a
    single block has its steps split by units (a parallel loop inside the
    loop over time); on cuda no CPU schedule."""
    from tests.passes.helpers import kernels, loops_after, loops_of
    from dlc.ir import loops as L
    prog = loops_after(SCHEDULE_SRC, "vectorize" if target == "cpu" else "map_gpu", target)
    for entry, op in (("m", "recurrence"), ("fit", "recurrence_grad")):
        k = next(k for name, k in kernels(prog, entry).items() if name.startswith(op))
        kinds = {lp.kind for lp in loops_of(k.body)}
        tiled = any(isinstance(s, L.Allocate) and s.buf.name in ("acc_outer", "acc_dot")
                    for s in L.stmts_of(k.body))
        if target == "cpu":
            assert {"parallel", "vectorized"} <= kinds and tiled, (entry, op)
            split = [lp for lp in loops_of(k.body) if lp.kind == "serial" and lp.var.name == "t"
                     and any(inner.kind == "parallel" for inner in loops_of(lp.body))]
            assert bool(split) == (op == "recurrence"), (entry, op)
        else:
            assert not kinds & {"parallel", "vectorized"} and not tiled, (entry, op)


def test_time_is_symbolic_and_last_without_lengths():
    src = """
model m {
    input x: f32[batch, time, 3]
    output y = last(lstm(x, 4, name="l"))
}"""
    prog = dlc.compile(src)
    net = torch_layer(prog, "lstm", 3, 4, ["l"])
    rng = np.random.default_rng(1)
    for T in (1, 5, 12):
        x = rng.normal(size=(2, T, 3)).astype(np.float32)
        _, (h, _) = net(torch.tensor(x))
        np.testing.assert_allclose(prog.run("m", x=x)["y"], h[0].detach().numpy(), rtol=RTOL, atol=ATOL)


def test_embedding_vs_torch():
    src = """
model m {
    input tok: i32[batch, time]
    output y = embedding(tok, 11, 4, name="emb")
}
train fit {
    input tok: i32[batch, time]
    input t: f32[batch, time, 4]
    loss = mse(m(tok), t)
    optimizer = sgd(lr=0.1)
}"""
    prog = dlc.compile(src, seed=2)
    w = prog.params["emb.weight"]
    assert abs(w.std() - 1) < 0.5 and abs(w.mean()) < 0.5   # N(0, 1), as nn.Embedding
    emb = torch.nn.Embedding(11, 4)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(w))
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 11, size=(3, 7)).astype(np.int32)
    tok[0, :3] = 5   # a repeated token: its gradient rows add up
    t = rng.normal(size=(3, 7, 4)).astype(np.float32)
    y = prog.run("m", tok=tok)["y"]
    y_t = emb(torch.tensor(tok).long())
    np.testing.assert_allclose(y, y_t.detach().numpy(), rtol=RTOL, atol=ATOL)
    torch.nn.functional.mse_loss(y_t, torch.tensor(t)).backward()
    g = prog.grads("fit", tok=tok, t=t)["emb.weight"]
    np.testing.assert_allclose(g, emb.weight.grad.numpy(), rtol=RTOL, atol=ATOL)
    bad = tok.copy()
    bad[1, 2] = 11
    with pytest.raises(dlc.errors.InvalidArgumentError, match=r"tok\[1, 2\] is 11, outside the valid range \[0, 10\]"):
        prog.run("m", tok=bad)


def test_embedding_lstm_classifier_vs_torch():
    src = """
model m {
    input tok: i32[batch, time]
    input n: i32[batch]
    h = lstm(embedding(tok, 9, 5, name="emb"), 6, name="l", lengths=n)
    output logits = dense(last(h, n), 3, name="out")
}
train fit {
    input tok: i32[batch, time]
    input n: i32[batch]
    input c: i32[batch]
    loss = cross_entropy(m(tok, n), c)
    optimizer = sgd(lr=0.1)
}"""
    prog = dlc.compile(src, seed=4)
    emb = torch.nn.Embedding(9, 5)
    net = torch_layer(prog, "lstm", 5, 6, ["l"])
    out = torch.nn.Linear(6, 3)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor(prog.params["emb.weight"]))
        out.weight.copy_(torch.tensor(prog.params["out.weight"]))
        out.bias.copy_(torch.tensor(prog.params["out.bias"]))
    rng = np.random.default_rng(3)
    tok = rng.integers(0, 9, size=(5, 8)).astype(np.int32)
    n = np.array([8, 1, 4, 7, 2], np.int32)
    c = rng.integers(0, 3, size=5).astype(np.int32)
    packed = pack(emb(torch.tensor(tok).long()), torch.tensor(n), batch_first=True, enforce_sorted=False)
    _, (h, _) = net(packed)
    logits = out(h[0])
    np.testing.assert_allclose(prog.run("m", tok=tok, n=n)["logits"], logits.detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    torch.nn.functional.cross_entropy(logits, torch.tensor(c).long()).backward()
    grads = prog.grads("fit", tok=tok, n=n, c=c)
    np.testing.assert_allclose(grads["emb.weight"], emb.weight.grad.numpy(), rtol=RTOL, atol=ATOL)
    for part in PARTS:
        np.testing.assert_allclose(grads[f"l.{part}"], getattr(net, f"{part}_l0").grad.numpy(),
                                   rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_gradients_match_finite_differences_f64(cell):
    src = f"""
model net {{
    input x: f64[batch, time, 2]
    input n: i32[batch]
    input t: f64[batch, 3]
    h = {cell}(x, 3, name="a", lengths=n, bidirectional=true)
    h = {cell}(h, 3, name="b", lengths=n)
    output value = mse(dense(last(h, n), 3, name="d") + last(h) * 0.5 |> tanh, t)
}}
train fit {{
    input x: f64[batch, time, 2]
    input n: i32[batch]
    input t: f64[batch, 3]
    loss = net(x, n, t)
    optimizer = sgd(lr=0.1)
}}"""
    prog = dlc.compile(src, seed=5)
    rng = np.random.default_rng(0)
    x, n, t = rng.normal(size=(3, 4, 2)), np.array([4, 1, 2], np.int32), rng.normal(size=(3, 3))
    assert_param_grads_match(prog, dict(x=x, n=n, t=t), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("opt,make", [
    ("sgd(lr=0.5, momentum=0.9, clip=0.05)", lambda p: torch.optim.SGD(p, lr=0.5, momentum=0.9)),
    ("adam(lr=1e-2, clip=0.1)", lambda p: torch.optim.Adam(p, lr=1e-2)),
    ("sgd(lr=0.1, clip=1000.0)", lambda p: torch.optim.SGD(p, lr=0.1)),   # norm below: unchanged
])
def test_clip_by_global_norm_matches_torch(opt, make):
    src = f"""
model m {{
    input x: f32[batch, time, 3]
    output y = dense(last(lstm(x, 4, name="l")), 2, name="d")
}}
train fit {{
    input x: f32[batch, time, 3]
    input t: f32[batch, 2]
    loss = mse(m(x), t)
    optimizer = {opt}
}}"""
    max_norm = float(opt.split("clip=")[1].rstrip(")"))
    prog = dlc.compile(src)
    net = torch_layer(prog, "lstm", 3, 4, ["l"])
    dense = torch.nn.Linear(4, 2)
    with torch.no_grad():
        dense.weight.copy_(torch.tensor(prog.params["d.weight"]))
        dense.bias.copy_(torch.tensor(prog.params["d.bias"]))
    params = {**{f"l.{p}": getattr(net, f"{p}_l0") for p in PARTS},
              "d.weight": dense.weight, "d.bias": dense.bias}
    torch_opt = make(list(params.values()))
    rng = np.random.default_rng(0)
    for step in range(3):
        x = rng.normal(size=(4, 5, 3)).astype(np.float32)
        t = rng.normal(size=(4, 2)).astype(np.float32) * 10
        torch_opt.zero_grad()
        _, (h, _) = net(torch.tensor(x))
        loss = torch.nn.functional.mse_loss(dense(h[0]), torch.tensor(t))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm)
        torch_opt.step()
        got = prog.train("fit", x=x, t=t)
        np.testing.assert_allclose(got, loss.item(), rtol=RTOL)
        for k, p in params.items():
            np.testing.assert_allclose(prog.params[k], p.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=k)
