"""`dlc train`, `dlc run` and `dlc draw` end to end: files in, files out,
and a clear one-line error (exit 1, no traceback) for bad data."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc import cli

ROOT = Path(__file__).parent.parent
MOONS = str(ROOT / "examples" / "moons.dl")
sys.path.insert(0, str(ROOT / "examples"))
from example_data import moons_data  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("npz")
    x, y = moons_data(0)
    np.savez(d / "train.npz", x=x[:800], t=y[:800])
    np.savez(d / "val.npz", x=x[800:], t=y[800:])
    return d, x, y


def dlc_cmd(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "dlc.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_train_then_run_end_to_end(data):
    d, x, y = data
    r = dlc_cmd("train", MOONS, "--data", "train.npz", "--epochs", 30, "--batch-size", 32,
                "--val", "val.npz", "--metric", "accuracy", "-o", "w.safetensors", cwd=d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()   # not a TTY: one line per epoch
    assert len(lines) == 30 and lines[0].startswith("epoch  1/30  25/25  ") and "val_accuracy" in lines[-1]
    summary = r.stderr.strip()
    assert summary.startswith("trained 30 epochs in ") and summary.endswith("; wrote w.safetensors")
    acc = float(summary.split("val_accuracy ")[1].split(";")[0])
    assert acc >= 0.95, summary
    # The same training from Python: the same weights.
    prog = dlc.compile(MOONS, seed=0)
    prog.fit("fit", {"x": x[:800], "t": y[:800]}, epochs=30, batch_size=32, seed=0, verbose=0)
    trained = dlc.compile(MOONS)
    trained.load(d / "w.safetensors")
    for k, v in prog.params.items():
        np.testing.assert_array_equal(trained.params[k], v, err_msg=k)

    r = dlc_cmd("run", MOONS, "--weights", "w.safetensors", "--data", "val.npz", "-o", "out.npz", cwd=d)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == "wrote out.npz: logits [200, 2]"
    with np.load(d / "out.npz") as f:
        assert f.files == ["logits"]
        assert float((f["logits"].argmax(1) == y[800:]).mean()) == pytest.approx(acc, abs=1e-4)
        np.testing.assert_allclose(f["logits"], prog.run("moons", x=x[800:])["logits"], rtol=1e-6, atol=1e-6)


def test_train_from_init_weights(data, capsys):
    d, x, y = data
    prog = dlc.compile(MOONS, seed=5)
    prog.save(d / "init.safetensors")
    assert cli.main(["train", MOONS, "--data", str(d / "train.npz"), "--epochs", "2", "--init",
                     str(d / "init.safetensors"), "-o", str(d / "w2.safetensors")]) == 0
    prog.fit("fit", {"x": x[:800], "t": y[:800]}, epochs=2, verbose=0)
    got = dlc.compile(MOONS)
    got.load(d / "w2.safetensors")
    for k, v in prog.params.items():
        np.testing.assert_array_equal(got.params[k], v, err_msg=k)


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("arrays,message", [
    (lambda x, y: {"x": x}, "dlc: error: 'fit' needs input 't'; the data has: x"),
    (lambda x, y: {"x": x.astype(np.int64), "t": y},
     "input 'x' of entry '{entry}': expected floating-point values (f32), got an array of int64"),
    (lambda x, y: {"x": np.zeros((5, 3), np.float32), "t": y[:5]},
     "dlc: error: input 'x' of entry '{entry}': dim 1 is 3 but the program declares [batch, 2]"),
])
def test_bad_npz_is_a_clear_error(data, capsys, command, arrays, message, tmp_path):
    d, x, y = data
    np.savez(tmp_path / "bad.npz", **arrays(x[:5], y[:5]))
    if command == "run" and "needs input 't'" in message:
        np.savez(tmp_path / "bad.npz", z=x[:5])
        message = "dlc: error: 'moons' needs input 'x'; the data has: z"
    args = ["--data", str(tmp_path / "bad.npz"), "-o", str(tmp_path / "out")]
    assert cli.main([command, MOONS, *args]) == 1
    err = capsys.readouterr().err
    assert message.format(entry="fit" if command == "train" else "moons") in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unreadable_data_files(tmp_path, capsys):
    (tmp_path / "text.npz").write_text("not numpy")
    np.savez(tmp_path / "objects.npz", x=np.array([object()], dtype=object))
    for name, message in [("missing.npz", "cannot read data '{p}': No such file or directory"),
                          ("text.npz", "data '{p}' is not a .npz file"),
                          ("objects.npz", "cannot read data '{p}': Object arrays cannot be loaded")]:
        p = str(tmp_path / name)
        assert cli.main(["run", MOONS, "--data", p, "-o", str(tmp_path / "o.npz")]) == 1
        assert message.format(p=p) in capsys.readouterr().err


def test_a_program_with_two_models_needs_model(tmp_path, capsys):
    src = tmp_path / "two.dl"
    src.write_text("model a {\n    input x: f32[batch, 2]\n    output y = dense(x, 1, name=\"d\")\n}\n"
                   "model b {\n    input x: f32[batch, 2]\n    output y = dense(x, 3, name=\"e\")\n}\n")
    np.savez(tmp_path / "x.npz", x=np.ones((4, 2), np.float32))
    assert cli.main(["run", str(src), "--data", str(tmp_path / "x.npz"), "-o", str(tmp_path / "o.npz")]) == 1
    assert "this program has 2 models (a, b); name one with --model" in capsys.readouterr().err
    assert cli.main(["run", str(src), "--model", "b", "--data", str(tmp_path / "x.npz"),
                     "-o", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as f:
        assert f["y"].shape == (4, 3)
    # The output is written where -o says, with no .npz added.
    assert cli.main(["run", str(src), "--model", "a", "--data", str(tmp_path / "x.npz"),
                     "-o", str(tmp_path / "y.out")]) == 0
    with np.load(tmp_path / "y.out") as f:
        assert f["y"].shape == (4, 1)


def test_draw_dot_to_stdout(capsys):
    assert cli.main(["draw", MOONS, "--format", "dot"]) == 0
    out = capsys.readouterr().out
    assert out == dlc.compile(MOONS).draw()
    assert '"moons/fc2" [shape=box, style=rounded, label="fc2\\ndense\\nf32[batch, 16]\\n272 params"];' in out


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's dot is not installed")
def test_draw_svg(tmp_path, capsys):
    assert cli.main(["draw", MOONS, "-o", str(tmp_path / "n.svg")]) == 0
    assert "<svg" in (tmp_path / "n.svg").read_text()
    assert capsys.readouterr().err == f"wrote {tmp_path / 'n.svg'}\n"


def test_draw_without_graphviz(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cli.main(["draw", MOONS, "-o", str(tmp_path / "n.png")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dlc: error: drawing png needs Graphviz's `dot` program") and "Traceback" not in err
