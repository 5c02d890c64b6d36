"""dlc.training: fit, predict, evaluate, callbacks, schedules against
torch.optim.lr_scheduler, progress output, plots, and the small comforts of
CompiledProgram (params[name] = array, repr, draw)."""
import io
import re
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import dlc
from dlc.errors import DlcError, InvalidArgumentError, NotFoundError
from dlc.training import (BestWeights, Callback, Checkpoint, CosineAnnealing, EarlyStopping,
                          ReduceOnPlateau, StepLR, Validation)

EXAMPLES = Path(__file__).parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
from example_data import held_out_split, moons_data, shuffled_batches  # noqa: E402

# A linear model whose loss numpy computes, to see which rows each step had.
LINEAR = """
model lin {{
    input x: f32[batch, 3]
    output y = dense(x, 1, name="d")
}}
train fit {{
    input x: f32[batch, 3]
    input t: f32[batch, 1]
    loss = mse(lin(x), t)
    optimizer = {opt}
}}
"""
NET = """
model m {{
    input x: f32[batch, 5]
    h = dense(x, 8, name="fc1") |> tanh
    output y = dense(h, 3, name="fc2")
}}
train fit {{
    input x: f32[batch, 5]
    input t: i32[batch]
    loss = cross_entropy(m(x), t)
    optimizer = {opt}
}}
"""


class TTY(io.StringIO):
    def isatty(self):
        return True


class Scripted:
    """A metric callable giving preset values, epoch after epoch."""

    def __init__(self, values):
        self.values, self.__name__ = list(values), "score"

    def __call__(self, outputs, data):
        return self.values.pop(0)


@pytest.fixture(scope="module")
def moons():
    x, y = moons_data(0)
    return x, y


def linear_data(n=10):
    rng = np.random.default_rng(1)
    return {"x": rng.normal(size=(n, 3)).astype(np.float32),
            "t": rng.normal(size=(n, 1)).astype(np.float32)}


def net_data(n=12):
    rng = np.random.default_rng(2)
    return {"x": rng.normal(size=(n, 5)).astype(np.float32),
            "t": rng.integers(0, 3, size=n).astype(np.int32)}


# ---------------------------------------------------------------- batching

@pytest.mark.parametrize("seed", [0, 1])
def test_fit_gives_the_hand_loops_weights_and_accuracy_on_moons(moons, seed):
    x, y = moons
    results = []
    for use_fit in (False, True):
        rng = np.random.default_rng(seed)
        test, tr = held_out_split(len(x), rng)
        prog = dlc.compile(EXAMPLES / "moons.dl", seed=seed)
        if use_fit:
            h = prog.fit("fit", {"x": x[tr], "t": y[tr]}, epochs=100, batch_size=32, seed=rng,
                         validation=Validation("moons", {"x": x[test], "t": y[test]}),
                         metrics=["accuracy"], verbose=0)
            acc = h.metrics["val_accuracy"][-1]
            assert len(h.step_loss) == 100 * 25 and h.epochs == 100
        else:
            for _ in range(100):
                for idx in shuffled_batches(tr, 32, rng):
                    prog.train("fit", x=x[idx], t=y[idx])
            acc = float((prog.run("moons", x=x[test])["logits"].argmax(1) == y[test]).mean())
        results.append((acc, {k: v.copy() for k, v in prog.params.items()}))
    (loop_acc, loop_w), (fit_acc, fit_w) = results
    assert fit_acc == loop_acc and fit_acc >= 0.97, (fit_acc, loop_acc)
    for k in loop_w:
        np.testing.assert_array_equal(fit_w[k], loop_w[k], err_msg=k)


def test_batches_are_seeded_permutations_with_a_partial_last_batch():
    data = linear_data(10)
    prog = dlc.compile(LINEAR.format(opt="sgd(lr=0.1)"))
    prog.set_lr("fit", 0.0)   # the weights stay put: each loss is numpy's on its rows
    w, b = prog.params["d.weight"].copy(), prog.params["d.bias"].copy()

    def loss(rows):
        return float(np.mean((data["x"][rows] @ w.T + b - data["t"][rows]) ** 2))

    h = prog.fit("fit", data, epochs=2, batch_size=4, seed=7, verbose=0)
    rng = np.random.default_rng(7)
    expect = []
    for _ in range(2):
        order = rng.permutation(10)
        expect += [loss(order[i:i + 4]) for i in (0, 4, 8)]   # 4, 4 and 2 rows
    np.testing.assert_allclose(h.step_loss, expect, rtol=1e-5)
    assert h.loss == pytest.approx([np.mean(expect[:3]), np.mean(expect[3:])], rel=1e-6)
    h = prog.fit("fit", data, epochs=1, batch_size=4, shuffle=False, verbose=0)
    np.testing.assert_allclose(h.step_loss, [loss(np.arange(0, 4)), loss(np.arange(4, 8)),
                                             loss(np.arange(8, 10))], rtol=1e-5)


def test_the_same_seed_gives_the_same_run():
    def run(seed):
        prog = dlc.compile(NET.format(opt="adam(lr=0.01)"))
        return prog.fit("fit", net_data(), epochs=3, batch_size=5, seed=seed, verbose=0).step_loss

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_an_iterable_of_batches_is_a_loader():
    data = linear_data(10)
    batches = [{k: v[i:i + 4] for k, v in data.items()} for i in (0, 4, 8)]
    a = dlc.compile(LINEAR.format(opt="sgd(lr=0.1)"))
    b = dlc.compile(LINEAR.format(opt="sgd(lr=0.1)"))
    ha = a.fit("fit", data, epochs=3, batch_size=4, shuffle=False, verbose=0)
    hb = b.fit("fit", batches, epochs=3, verbose=0)
    assert ha.step_loss == hb.step_loss and len(hb.step_loss) == 9
    with pytest.raises(InvalidArgumentError, match="iterator, which one epoch would exhaust"):
        b.fit("fit", iter(batches), epochs=2, verbose=0)
    with pytest.raises(InvalidArgumentError, match="'fit' needs input 't'; a batch has: x"):
        b.fit("fit", [{"x": data["x"]}], verbose=0)
    with pytest.raises(InvalidArgumentError, match="entry 'fit' has no input 'y'; its inputs are: x, t"):
        b.fit("fit", [{"x": data["x"], "y": data["t"]}], verbose=0)
    extra = [{**batch, "note": "ignored"} for batch in batches]
    assert b.predict("lin", extra)["y"].shape == (10, 1)


def test_bad_data_is_refused_with_names():
    prog = dlc.compile(LINEAR.format(opt="sgd(lr=0.1)"))
    data = linear_data(10)
    with pytest.raises(InvalidArgumentError, match=r"'fit' needs input 't'; the data has: x"):
        prog.fit("fit", {"x": data["x"]}, verbose=0)
    with pytest.raises(InvalidArgumentError, match=r"one length along axis 0; 'x' has shape \[10, 3\], "
                                                   r"'t' has shape \[9, 1\]"):
        prog.fit("fit", {"x": data["x"], "t": data["t"][:9]}, verbose=0)
    with pytest.raises(InvalidArgumentError, match="expected floating-point values"):
        prog.fit("fit", {"x": data["x"].astype(np.int64), "t": data["t"]}, verbose=0)
    with pytest.raises(NotFoundError, match="no train block named 'lin'"):
        prog.fit("lin", data, verbose=0)
    with pytest.raises(InvalidArgumentError, match="metrics are computed on validation data"):
        prog.fit("fit", data, metrics=["mse"], verbose=0)


def test_validation_loss_is_the_blocks_loss_on_held_out_data():
    data, held_out = linear_data(10), {k: v[3:] for k, v in linear_data(17).items()}
    prog = dlc.compile(LINEAR.format(opt="sgd(lr=0.1)"))
    h = prog.fit("fit", data, epochs=3, batch_size=4, verbose=0, metrics=["loss"],
                 validation=Validation("lin", held_out, batch_size=3))   # batches of 3, 3 and 1
    y = held_out["x"] @ prog.params["d.weight"].T + prog.params["d.bias"]
    assert h.metrics["val_loss"][-1] == pytest.approx(float(np.mean((y - held_out["t"]) ** 2)), rel=1e-5)
    assert len(h.metrics["val_loss"]) == 3 and list(h.metrics) == ["val_loss"]
    with pytest.raises(InvalidArgumentError, match="'fit' needs input 't'; the data has: x"):
        prog.fit("fit", data, metrics=["loss"], validation=Validation("lin", {"x": held_out["x"]}),
                 verbose=0)


# --------------------------------------------------------- predict, evaluate

def test_predict_and_evaluate(moons):
    x, y = moons
    prog = dlc.compile(EXAMPLES / "moons.dl")
    prog.fit("fit", {"x": x, "t": y}, epochs=5, verbose=0)
    whole = prog.run("moons", x=x)["logits"]
    for size in (None, 256, 7):
        np.testing.assert_allclose(prog.predict("moons", {"x": x}, batch_size=size)["logits"], whole,
                                   rtol=1e-6, atol=1e-6)
    loader = [{"x": x[i:i + 300]} for i in range(0, 1000, 300)]
    np.testing.assert_allclose(prog.predict("moons", loader)["logits"], whole, rtol=1e-6, atol=1e-6)
    acc = float((whole.argmax(1) == y).mean())
    assert 0.8 < acc < 1

    def wrong(outputs, data):
        return float((outputs["logits"].argmax(1) != data["t"]).sum())

    got = prog.evaluate("moons", {"x": x, "t": y}, ["accuracy", wrong])
    assert got["accuracy"] == pytest.approx(acc, abs=1e-12)
    assert got["wrong"] == round((1 - acc) * 1000)
    with pytest.raises(InvalidArgumentError, match=r"mse: output 'logits' has shape \[1000, 2\], "
                                                   r"the labels \[1000\]"):
        prog.evaluate("moons", {"x": x, "t": y}, ["mse"])
    lin, data = dlc.compile(LINEAR.format(opt="sgd(lr=0.1)")), linear_data(10)
    y_lin = lin.run("lin", x=data["x"])["y"]
    assert lin.evaluate("lin", data, "mse", batch_size=3)["mse"] == \
        pytest.approx(float(np.mean((y_lin - data["t"]) ** 2)), rel=1e-6)
    assert prog.evaluate("moons", {"x": x}, "accuracy", labels=y) == {"accuracy": pytest.approx(acc)}
    with pytest.raises(InvalidArgumentError, match="unknown metric 'f1'; metrics are 'accuracy', 'mse', "
                                                   "a callable"):
        prog.evaluate("moons", {"x": x, "t": y}, ["f1"])
    with pytest.raises(InvalidArgumentError, match="labels: the data has no 'y'"):
        prog.evaluate("moons", {"x": x, "t": y}, labels="y")


# ---------------------------------------------------------------- callbacks

def fit_scripted(prog, values, callbacks, epochs):
    data = net_data()
    return prog.fit("fit", data, epochs=epochs, batch_size=4, seed=0, verbose=0,
                    validation=Validation("m", data), metrics=[Scripted(values)], callbacks=callbacks)


def test_early_stopping_waits_patience_epochs():
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    stop = EarlyStopping("val_score", patience=2)   # 'auto': a score counts as a loss, min
    h = fit_scripted(prog, [0.5, 0.4, 0.45, 0.41, 0.3, 0.2], [stop], epochs=6)
    assert h.epochs == 4 and stop.stopped_epoch == 4 and stop.best == 0.4 and stop.best_epoch == 2
    stop = EarlyStopping("val_score", patience=2, mode="max", min_delta=0.05)
    h = fit_scripted(prog, [0.5, 0.52, 0.6, 0.62, 0.64, 0.9], [stop], epochs=6)
    assert h.epochs == 5 and stop.best_epoch == 3
    stop = EarlyStopping("val_nothing")
    with pytest.raises(InvalidArgumentError, match="no 'val_nothing' to monitor; an epoch gives: "
                                                   "loss, val_score"):
        fit_scripted(prog, [0.5], [stop], epochs=1)


def test_best_weights_are_restored_at_the_end():
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))

    class Keep(Callback):
        def __init__(self):
            self.weights = []

        def on_epoch_end(self, run, epoch, logs):
            self.weights.append({k: v.copy() for k, v in run.prog.params.items()})

    keep, best = Keep(), BestWeights("val_score", mode="max")
    fit_scripted(prog, [0.1, 0.9, 0.5, 0.3], [best, keep], epochs=4)
    assert best.best_epoch == 2
    for k, v in prog.params.items():
        np.testing.assert_array_equal(v, keep.weights[1][k], err_msg=k)
        assert not np.array_equal(v, keep.weights[3][k]), k


def test_checkpoints_are_written_and_resume(tmp_path):
    data = net_data()
    prog = dlc.compile(NET.format(opt="adam(lr=0.01)"))
    ck = Checkpoint(tmp_path / "ck-{epoch:02d}-{loss:.3f}.safetensors", every=2)
    h = prog.fit("fit", data, epochs=5, batch_size=4, shuffle=False, callbacks=[ck], verbose=0)
    names = [Path(p).name for p in ck.saved]
    assert names == [f"ck-02-{h.loss[1]:.3f}.safetensors", f"ck-04-{h.loss[3]:.3f}.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    # Epoch 5 from the epoch-4 checkpoint (Adam's moments and step included)
    # gives the weights of the run straight through.
    resumed = dlc.compile(NET.format(opt="adam(lr=0.01)"), seed=9)
    resumed.load(ck.saved[1])
    resumed.fit("fit", data, epochs=1, batch_size=4, shuffle=False, verbose=0)
    for k, v in prog.params.items():
        np.testing.assert_array_equal(resumed.params[k], v, err_msg=k)
    with pytest.raises(InvalidArgumentError, match="every must be at least 1"):
        Checkpoint("x", every=0)


# ---------------------------------------------------- schedules against torch

def torch_run(prog, data, make_opt, make_sched, epochs, batch, plateau=False):
    """The same training in torch: per-epoch scheduler steps; returns the
    lr of each epoch."""
    P = {k: torch.nn.Parameter(torch.tensor(v.copy())) for k, v in prog.params.items()}
    opt = make_opt(list(P.values()))
    sched = make_sched(opt)
    lrs = []
    for _ in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        losses = []
        for i in range(0, len(data["t"]), batch):
            x, t = torch.tensor(data["x"][i:i + batch]), torch.tensor(data["t"][i:i + batch]).long()
            opt.zero_grad()
            h = torch.tanh(x @ P["fc1.weight"].T + P["fc1.bias"])
            loss = torch.nn.functional.cross_entropy(h @ P["fc2.weight"].T + P["fc2.bias"], t)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step(np.mean(losses)) if plateau else sched.step()
    return {k: v.detach().numpy() for k, v in P.items()}, lrs


S = torch.optim.lr_scheduler
SCHEDULES = {
    "step": (lambda: StepLR(step_size=2, gamma=0.5), lambda o: S.StepLR(o, step_size=2, gamma=0.5), False),
    "cosine": (lambda: CosineAnnealing(T_max=3, eta_min=0.001),
               lambda o: S.CosineAnnealingLR(o, T_max=3, eta_min=0.001), False),
    "plateau": (lambda: ReduceOnPlateau("loss", factor=0.5, patience=0, threshold=0.1),
                lambda o: S.ReduceLROnPlateau(o, factor=0.5, patience=0, threshold=0.1), True),
}
OPTS = {
    "sgd(lr=0.1, momentum=0.9)": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "adam(lr=0.02)": lambda p: torch.optim.Adam(p, lr=0.02),
}


@pytest.mark.parametrize("opt", sorted(OPTS))
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_schedules_give_torchs_weights(schedule, opt):
    ours, theirs, plateau = SCHEDULES[schedule]
    data, epochs = net_data(), 8
    prog = dlc.compile(NET.format(opt=opt))
    want, torch_lrs = torch_run(prog, data, OPTS[opt], theirs, epochs, 4, plateau)
    h = prog.fit("fit", data, epochs=epochs, batch_size=4, shuffle=False, callbacks=[ours()], verbose=0)
    np.testing.assert_allclose(h.lr, torch_lrs, rtol=1e-6)
    assert len(set(torch_lrs)) >= 3, torch_lrs   # the schedule did change the rate
    for k, v in want.items():
        np.testing.assert_allclose(prog.params[k], v, rtol=1e-4, atol=1e-5, err_msg=k)


def test_a_schedule_continues_across_fit_calls():
    data = net_data()
    a, b = dlc.compile(NET.format(opt="sgd(lr=0.1)")), dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    sa, sb = StepLR(2, 0.5), StepLR(2, 0.5)
    a.fit("fit", data, epochs=5, shuffle=False, callbacks=[sa], verbose=0)
    for _ in range(5):
        b.fit("fit", data, epochs=1, shuffle=False, callbacks=[sb], verbose=0)
    assert a.get_lr("fit") == b.get_lr("fit") == pytest.approx(0.1 * 0.5 ** 2)
    for k, v in a.params.items():
        np.testing.assert_array_equal(b.params[k], v, err_msg=k)


# ----------------------------------------------------------------- progress

LINE = re.compile(r"epoch (\d)/(\d)  3/3  \d+ steps/s  loss (\d\.\d{4})  val_score (\d\.\d{4})  "
                  r"\d+\.\d (ms|s)")


def test_progress_lines_when_not_a_tty():
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    data = net_data()
    out = io.StringIO()
    h = prog.fit("fit", data, epochs=5, batch_size=4, validation=Validation("m", data),
                 metrics=[Scripted([0.5, 0.25, 0.125, 0.0625, 0.03125])], file=out, log_every=2)
    lines = out.getvalue().splitlines()
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [int(m[1]) for m in matches] == [1, 2, 4, 5] and {m[2] for m in matches} == {"5"}
    for m in matches:
        epoch = int(m[1])
        assert m[3] == f"{h.loss[epoch - 1]:.4f}" and m[4] == f"{0.5 ** epoch:.4f}"
    silent = io.StringIO()
    prog.fit("fit", data, epochs=2, batch_size=4, file=silent, verbose=0)
    assert silent.getvalue() == ""


def test_progress_bar_on_a_tty():
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    data = net_data()
    out = TTY()
    h = prog.fit("fit", data, epochs=3, batch_size=4, validation=Validation("m", data),
                 metrics=[Scripted([0.5, 0.25, 0.125])], file=out, log_every=2)
    text = out.getvalue()
    # Epoch 1 is drawn after its first step (1/3, a bar a third full), each
    # epoch's end as a full bar; epochs 1, 2 and 3 are kept (first, 2nd, last).
    assert re.search(r"\repoch 1/3  \[========>\s{15}\]  1/3  \d+ steps/s  loss \d\.\d{4}\x1b\[K", text), text
    kept = [seg.rsplit("\r", 1)[-1] for seg in text.split("\n")[:-1]]
    assert len(kept) == 3 and text.endswith("\n")
    for epoch, line in enumerate(kept, 1):
        bar = LINE.fullmatch(line.removesuffix("\x1b[K").replace(f"  [{'=' * 24}]", ""))
        assert f"[{'=' * 24}]  3/3" in line and bar and int(bar[1]) == epoch, line
        assert bar[3] == f"{h.loss[epoch - 1]:.4f}"
    # verbose=2: lines only, as in a log.
    out = TTY()
    prog.fit("fit", data, epochs=2, batch_size=4, file=out, verbose=2)
    assert "\r" not in out.getvalue() and len(out.getvalue().splitlines()) == 2


# -------------------------------------------------------------------- plots

def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_of_the_expected_size_and_an_svg(tmp_path):
    pytest.importorskip("matplotlib", reason="History.plot needs matplotlib (pip install 'dlc[plot]')")
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    data = net_data()
    h = prog.fit("fit", data, epochs=4, batch_size=4, validation=Validation("m", data, labels="t"),
                 metrics=["accuracy", Scripted([0.4, 0.3, 0.2, 0.1])], verbose=0)
    h.plot(tmp_path / "h.png")   # loss, accuracy and score panels of 5 x 4 inches at 100 dpi
    assert png_size((tmp_path / "h.png").read_bytes()) == (1500, 400)
    h.plot(tmp_path / "h2.png", dpi=50, size=(4, 3))
    assert png_size((tmp_path / "h2.png").read_bytes()) == (600, 150)
    h.plot(tmp_path / "h.svg")
    svg = (tmp_path / "h.svg").read_text()
    assert svg.startswith("<?xml") and "<svg" in svg


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)   # import fails
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    h = prog.fit("fit", net_data(), epochs=1, verbose=0)
    with pytest.raises(DlcError, match=r"needs matplotlib: pip install 'dlc\[plot\]'"):
        h.plot(tmp_path / "h.png")


# ------------------------------------------------ params, repr, draw, history

def test_params_setitem_copies_with_checks():
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    w = np.arange(40, dtype=np.float32).reshape(8, 5)
    view = prog.params["fc1.weight"]
    prog.params["fc1.weight"] = w
    w[0, 0] = -1   # a copy: the param keeps what was assigned
    assert view[0, 0] == 0 and view[7, 4] == 39
    prog.params["fc1.bias"] = np.full(8, 0.25, np.float64)   # within a kind: converted
    assert prog.params["fc1.bias"].dtype == np.float32 and prog.params["fc1.bias"][3] == 0.25
    with pytest.raises(InvalidArgumentError, match=r"param 'fc1.weight' has shape \[8, 5\]; the value "
                                                   r"has shape \[5, 8\]"):
        prog.params["fc1.weight"] = w.T
    with pytest.raises(InvalidArgumentError, match="expected floating-point values"):
        prog.params["fc1.bias"] = np.zeros(8, np.int32)
    with pytest.raises(NotFoundError, match="param 'fc3.weight' not found; params are: fc1.weight"):
        prog.params["fc3.weight"] = w
    with pytest.raises(KeyError):
        prog.params["fc3.weight"]
    assert list(prog.params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert len(prog.params) == 4 and "fc2.bias" in prog.params


def test_repr_names_source_target_and_entries():
    prog = dlc.compile(EXAMPLES / "moons.dl")
    assert repr(prog) == f"<dlc.CompiledProgram {str(EXAMPLES / 'moons.dl')!r} target=cpu: " \
                         "moons (model), fit (train)>"
    assert repr(dlc.compile(NET.format(opt="sgd(lr=0.1)"))) == \
        "<dlc.CompiledProgram '<source>' target=cpu: m (model), fit (train)>"


def test_history_names_its_figures():
    prog = dlc.compile(NET.format(opt="sgd(lr=0.1)"))
    data = net_data()
    h = prog.fit("fit", data, epochs=2, validation=Validation("m", data), metrics=["accuracy"], verbose=0)
    assert h["loss"] is h.loss and h["val_accuracy"] is h.metrics["val_accuracy"]
    assert h["lr"] == pytest.approx([0.1, 0.1]) and len(h["time"]) == 2
    acc = h.metrics["val_accuracy"][-1]
    assert repr(h) == f"History(epochs=2, loss={h.loss[-1]:.4g}, val_accuracy={acc:.4g})"
    with pytest.raises(KeyError, match="history has no 'val_loss'; it has: loss, lr, time, val_accuracy"):
        h["val_loss"]


CRNN_EDGES = ['"crnn/input/x" -> "crnn/conv1"', '"crnn/conv1" -> "crnn/crnn.relu0"',
              '"crnn/crnn.reshape0" -> "crnn/lstm"', '"crnn/lstm" -> "crnn/crnn.last0"',
              '"crnn/crnn.last0" -> "crnn/out"', '"crnn/out" -> "crnn/output/logits"']


def test_draw_gives_layers_shapes_counts_and_data_flow(tmp_path):
    prog = dlc.compile(EXAMPLES / "crnn.dl")
    text = prog.draw()
    assert text.startswith("digraph dlc {") and text.endswith("}\n")
    lstm = '"crnn/lstm" [shape=box, style=rounded, label="lstm\\nlstm\\nf32[batch, 8, 64]\\n33,280 params"];'
    assert lstm in text
    assert all(e in text for e in CRNN_EDGES)
    assert text.count(" -> ") == 11   # a chain: input, 10 layers, output
    # Branches: both operands of an add feed the next layer.
    res = dlc.compile("""
model r {
    input x: f32[batch, 4]
    a = dense(x, 4, name="a")
    b = dense(x, 4, name="b")
    output y = dense(a + b, 2, name="c")
}
""")
    edges = set(re.findall(r'"(r/[^"]+)" -> "(r/[^"]+)"', res.draw()))
    assert edges == {("r/input/x", "r/a"), ("r/input/x", "r/b"), ("r/a", "r/c"), ("r/b", "r/c"),
                     ("r/c", "r/output/y")}
    assert prog.draw(tmp_path / "n.dot") == (tmp_path / "n.dot").read_text() == text


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_renders_svg_with_graphviz(tmp_path):
    dlc.compile(EXAMPLES / "moons.dl").draw(tmp_path / "n.svg")
    svg = (tmp_path / "n.svg").read_text()
    assert "<svg" in svg and "272 params" in svg and "fc2" in svg


def test_draw_without_graphviz_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(DlcError, match="needs Graphviz's `dot` program, which is not on PATH: "
                                       "install graphviz"):
        dlc.compile(EXAMPLES / "moons.dl").draw(tmp_path / "n.svg")
    assert not (tmp_path / "n.svg").exists()
