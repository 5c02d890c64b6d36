"""Recurrent state against PyTorch: initial states h0 / c0, final states
h_n / c_n (read as `s.h_n`, `s.c_n`), rnn's relu nonlinearity, and gru vs
nn.GRU; over packed sequences, bidirectional, with symbolic batch and time
at two sizes; gradients (into h0 and c0 too); f64 finite differences; a
decoder stepped one token at a time from Python. fp32 tolerances: rtol
1e-4, atol 1e-5.

Layouts: h0, c0, h_n and c_n are [batch, hidden], bidirectional
[batch, 2*hidden] (forward then backward direction, as the outputs'
features): torch's h0 [2, batch, hidden] is `h0.transpose(0, 1).reshape(batch, -1)`.
"""
import numpy as np
import pytest
import torch

import dlc
from tests.gradcheck import assert_param_grads_match

RTOL, ATOL = 1e-4, 1e-5
PARTS = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
MODULES = {"rnn": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
pack = torch.nn.utils.rnn.pack_padded_sequence
unpack = torch.nn.utils.rnn.pad_packed_sequence


def torch_layer(prog, cell, features, hidden, name, bidirectional=False):
    """The torch.nn module of `cell` with the program's layer `name`."""
    extra = {"nonlinearity": "relu"} if cell == "rnn_relu" else {}
    net = MODULES[cell](features, hidden, batch_first=True, bidirectional=bidirectional, **extra)
    with torch.no_grad():
        for suffix in ["", "_reverse"] if bidirectional else [""]:
            for part in PARTS:
                getattr(net, f"{part}_l0{suffix}").copy_(torch.tensor(prog.params[f"{name}.{part}{suffix}"]))
    return net


def linear(prog, name):
    lin = torch.nn.Linear(*prog.params[f"{name}.weight"].shape[::-1])
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(prog.params[f"{name}.weight"]))
        lin.bias.copy_(torch.tensor(prog.params[f"{name}.bias"]))
    return lin


def to_torch_state(s, dirs):
    """dlc's [batch, dirs*hidden] as torch's [dirs, batch, hidden]."""
    return s.reshape(s.shape[0], dirs, -1).transpose(0, 1).contiguous()


def from_torch_state(s):
    return s.transpose(0, 1).reshape(s.shape[1], -1)


# The initial states come from an input z through dense layers, so their
# gradients show in the dense layers' parameters.
STATE_SRC = """
model m {{
    input x: f32[batch, time, {F}]
    input n: i32[batch]
    input z: f32[batch, 2]
    s = {op}(x, {H}, name="l", lengths=n, bidirectional={bi}, {init}{extra})
    output y = s
{outputs}
}}
train fit {{
    input x: f32[batch, time, {F}]
    input n: i32[batch]
    input z: f32[batch, 2]
    input t: f32[batch, time, {W}]
    input u: f32[batch, {W}]
    s = {op}(x, {H}, name="l", lengths=n, bidirectional={bi}, {init}{extra})
    loss = mse(s, t){losses}
    optimizer = sgd(lr=0.1)
}}
"""


def state_program(cell, F, H, bidirectional, seed):
    op = "rnn" if cell.startswith("rnn") else cell
    states = ["h", "c"] if cell == "lstm" else ["h"]
    return dlc.compile(STATE_SRC.format(
        op=op, F=F, H=H, W=2 * H if bidirectional else H, bi=str(bidirectional).lower(),
        init=", ".join(f'{s}0=dense(z, {2 * H if bidirectional else H}, name="f{s}") |> tanh' for s in states),
        extra=', nonlinearity="relu"' if cell == "rnn_relu" else "",
        outputs="\n".join(f"    output {s}_n = s.{s}_n" for s in states),
        losses="".join(f" + mse(s.{s}_n, u)" for s in states)), seed=seed)


# batch, time, features, hidden, lengths (1 and the maximum among them).
# Case 2: two example blocks (EXAMPLE_BLOCK 8), a hidden size the tile pass
# blocks with ragged edges; case 3: one block, its steps split by units over
# the thread pool (hidden 128: 2 parts of PANEL 64 units).
CASES = [(4, 6, 3, 5, [6, 1, 3, 6]), (3, 9, 7, 8, [2, 9, 1]),
         (11, 5, 9, 20, [5, 1, 3, 5, 2, 4, 5, 1, 2, 3, 5]), (3, 6, 10, 128, [6, 1, 4])]


@pytest.mark.parametrize("cell,bidirectional,case,other", [
    ("lstm", False, 0, 1), ("lstm", True, 1, 0), ("lstm", False, 3, None), ("gru", False, 0, 1),
    ("gru", True, 1, 0), ("gru", False, 2, None), ("gru", False, 3, None), ("rnn", True, 0, 1),
    ("rnn_relu", False, 1, 0), ("rnn_relu", True, 2, None)])
def test_states_vs_torch(cell, bidirectional, case, other):
    """Outputs, h_n, c_n and every gradient (the dense layers' carry h0's
    and c0's); `other` reruns the program at another batch and time."""
    F, H = CASES[case][2:4]
    dirs = 2 if bidirectional else 1
    prog = state_program(cell, F, H, bidirectional, seed=case)
    net = torch_layer(prog, cell, F, H, "l", bidirectional)
    states = ["h", "c"] if cell == "lstm" else ["h"]
    dense = {s: linear(prog, f"f{s}") for s in states}
    for k in [case] + ([other] if other is not None else []):
        B, T, _, _, n = CASES[k]
        rng = np.random.default_rng(k)
        x = rng.normal(size=(B, T, F)).astype(np.float32)
        z = rng.normal(size=(B, 2)).astype(np.float32)
        n = np.array(n, np.int32)
        t = rng.normal(size=(B, T, dirs * H)).astype(np.float32)
        u = rng.normal(size=(B, dirs * H)).astype(np.float32)
        got = prog.run("m", x=x, n=n, z=z)

        for mod in [net, *dense.values()]:
            mod.zero_grad()
        init = [to_torch_state(torch.tanh(dense[s](torch.tensor(z))), dirs) for s in states]
        packed = pack(torch.tensor(x), torch.tensor(n), batch_first=True, enforce_sorted=False)
        out, final = net(packed, tuple(init) if cell == "lstm" else init[0])
        y, _ = unpack(out, batch_first=True, total_length=T)
        finals = dict(zip(states, final if cell == "lstm" else (final,)))
        np.testing.assert_allclose(got["y"], y.detach().numpy(), rtol=RTOL, atol=ATOL)
        for s in states:
            np.testing.assert_allclose(got[f"{s}_n"], from_torch_state(finals[s]).detach().numpy(),
                                       rtol=RTOL, atol=ATOL, err_msg=f"{s}_n")

        loss = torch.nn.functional.mse_loss(y, torch.tensor(t))
        for s in states:
            loss = loss + torch.nn.functional.mse_loss(from_torch_state(finals[s]), torch.tensor(u))
        loss.backward()
        grads = prog.grads("fit", x=x, n=n, z=z, t=t, u=u)
        want = {f"l.{p}{sfx}": getattr(net, f"{p}_l0{sfx}").grad
                for sfx in ["", "_reverse"][:dirs] for p in PARTS}
        want.update({f"f{s}.{p}": getattr(dense[s], p).grad for s in states for p in ("weight", "bias")})
        assert set(grads) == set(want)
        for name, w in want.items():
            np.testing.assert_allclose(grads[name], w.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)
            assert np.abs(w.numpy()).max() > 0, name


def test_h_n_and_last_of_a_bidirectional_layer():
    """last(h, n) is each example's output at its last valid step: the
    forward direction's h_n, beside a backward direction that has read one
    step; h_n's backward half is its state after reading back to step 0,
    the output at step 0."""
    prog = dlc.compile("""
model m {
    input x: f32[batch, time, 3]
    input n: i32[batch]
    s = gru(x, 4, name="g", lengths=n, bidirectional=true)
    output y = s
    output last_y = last(s, n)
    output h_n = s.h_n
}""")
    rng = np.random.default_rng(0)
    x, n = rng.normal(size=(3, 5, 3)).astype(np.float32), np.array([5, 2, 1], np.int32)
    out = prog.run("m", x=x, n=n)
    np.testing.assert_array_equal(out["last_y"][:, :4], out["h_n"][:, :4])
    np.testing.assert_array_equal(out["y"][:, 0, 4:], out["h_n"][:, 4:])
    assert not np.allclose(out["last_y"][:2, 4:], out["h_n"][:2, 4:])


DECODER_SRC = """
model step {{
    input tok: i32[batch, time]
    input h: f32[batch, 6]
{c_input}
    s = {cell}(embedding(tok, 7, 5, name="emb"), 6, name="dec", h0=h{c0})
    output logits = dense(s, 7, name="out")
    output h_n = s.h_n
{c_output}
}}
"""


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_greedy_decoding_one_step_at_a_time(cell):
    """A decoder run one token at a time from Python, its state passed back
    in and its argmax fed back as the next token, gives the logits of the
    whole sequence of those tokens run at once (the same model, time = T)."""
    lstm = cell == "lstm"
    prog = dlc.compile(DECODER_SRC.format(
        cell=cell, c_input="    input c: f32[batch, 6]" if lstm else "", c0=", c0=c" if lstm else "",
        c_output="    output c_n = s.c_n" if lstm else ""), seed=3)
    rng = np.random.default_rng(1)
    B, T = 4, 7
    h0 = rng.normal(size=(B, 6)).astype(np.float32)
    state = {"h": h0} | ({"c": rng.normal(size=(B, 6)).astype(np.float32)} if lstm else {})
    first = dict(state)
    tok = np.array([[1], [2], [3], [4]], np.int32)
    tokens, logits = [tok], []
    for _ in range(T):
        out = prog.run("step", tok=tok, **state)
        logits.append(out["logits"][:, 0])
        state = {k: out[f"{k}_n"] for k in state}
        tok = out["logits"].argmax(-1).astype(np.int32)
        tokens.append(tok)
    whole = prog.run("step", tok=np.concatenate(tokens[:-1], axis=1), **first)
    np.testing.assert_allclose(np.stack(logits, axis=1), whole["logits"], rtol=RTOL, atol=ATOL)
    for k in state:
        np.testing.assert_allclose(state[k], whole[f"{k}_n"], rtol=RTOL, atol=ATOL)


FD_SRC = """
model net {
    input x: f64[batch, time, 2]
    input n: i32[batch]
    input z: f64[batch, 2]
    input t: f64[batch, 3]
    a = gru(x, 3, name="a", lengths=n, bidirectional=true, h0=dense(z, 6, name="ha"))
    b = lstm(a, 3, name="b", lengths=n, h0=dense(z, 3, name="hb"), c0=dense(z, 3, name="cb"))
    r = rnn(x, 3, name="r", lengths=n, nonlinearity="relu", h0=b.c_n)
    output value = mse(dense(last(b, n), 3, name="d") + dense(a.h_n, 3, name="e") * b.h_n + r.h_n, t)
}
train fit {
    input x: f64[batch, time, 2]
    input n: i32[batch]
    input z: f64[batch, 2]
    input t: f64[batch, 3]
    loss = net(x, n, z, t)
    optimizer = sgd(lr=0.1)
}"""


def test_gradients_match_finite_differences_f64():
    prog = dlc.compile(FD_SRC, seed=5)
    rng = np.random.default_rng(0)
    x, z, t = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 2)), rng.normal(size=(3, 3))
    assert_param_grads_match(prog, dict(x=x, n=np.array([4, 1, 2], np.int32), z=z, t=t), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("call,caret,message", [
    ('rnn(x, 4, nonlinearity="sigmoid")', 'nonlinearity="sigmoid"',
     "'rnn' takes nonlinearity=\"tanh\" or \"relu\", got \"sigmoid\""),
    ("lstm(x, 4, h0=h, bidirectional=true)", "h0=h",
     "'lstm' expects h0 f32[batch, 8] (one state per example of f32[batch, time, 3], forward then "
     "backward direction), got f32[batch, 4]"),
    ("gru(x, 4).c_n", "c_n", "'gru' has no result 'c_n'; its results are h_n"),
])
def test_bad_arguments_are_located(call, caret, message):
    src = f"""model m {{
    input x: f32[batch, time, 3]
    input h: f32[batch, 4]
    output y = {call}
}}"""
    with pytest.raises(dlc.errors.CompileError) as e:
        dlc.compile(src)
    text = str(e.value)
    assert message in text, text
    col = src.splitlines()[3].index(caret) + 1
    assert f":4:{col}: error" in text, text
