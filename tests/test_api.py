"""The Python API and the command line, end to end."""
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import dlc
from dlc.errors import NotFoundError

SRC = """
model net {
    input x: f32[batch, 3]
    h = dense(x, 5, name="fc1") |> relu
    output y = dense(h, 2, name="fc2")
}
train fit {
    input x: f32[batch, 3]
    input t: i32[batch]
    loss = cross_entropy(net(x), t)
    optimizer = adam(lr=0.01)
}
"""


def torch_net():
    return torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))


def test_weights_saved_by_dlc_load_in_torch(tmp_path):
    prog = dlc.compile(SRC)
    prog.save(tmp_path / "w.safetensors")
    net = torch_net()
    sd = load_file(tmp_path / "w.safetensors")
    net.load_state_dict({k.replace("fc1", "0").replace("fc2", "2"): v for k, v in sd.items()})
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(prog.run("net", x=x)["y"], net(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_weights_saved_by_torch_load_in_dlc(tmp_path):
    net = torch_net()
    sd = {k.replace("0.", "fc1.").replace("2.", "fc2."): v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, tmp_path / "t.safetensors")
    prog = dlc.compile(SRC)
    prog.load(tmp_path / "t.safetensors")
    x = np.random.default_rng(1).normal(size=(7, 3)).astype(np.float32)
    np.testing.assert_allclose(prog.run("net", x=x)["y"], net(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


def test_any_batch_size_and_params_are_live_views():
    prog = dlc.compile(SRC)
    for batch in (1, 2, 33):
        assert prog.run("net", x=np.ones((batch, 3), np.float32))["y"].shape == (batch, 2)
    prog.params["fc2.bias"][:] = [5.0, -5.0]
    prog.params["fc2.weight"][:] = 0
    assert np.allclose(prog.run("net", x=np.ones((1, 3), np.float32))["y"], [[5, -5]])


def test_runs_that_change_shapes_and_fail_between_keep_the_right_shapes():
    """A run reuses the last call's tensor shapes while they hold: a batch
    that changes back and forth, a failed call, and a new array each time
    (or the same one, written in between) give the reference's numbers."""
    prog = dlc.compile(SRC)
    w1, b1, w2, b2 = (prog.params[k] for k in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"))
    ref = lambda x: np.maximum(x @ w1.T + b1, 0) @ w2.T + b2
    rng = np.random.default_rng(0)
    same = rng.normal(size=(2, 3)).astype(np.float32)
    for batch in (2, 2, 5, 2, 1, 1, 5, "bad", 5, 2):
        if batch == "bad":
            with pytest.raises(dlc.DlcError, match="dim 1"):
                prog.run("net", x=np.ones((5, 4), np.float32))
            continue
        x = same if batch == 2 else rng.normal(size=(batch, 3)).astype(np.float32)
        y = prog.run("net", x=x)["y"]
        assert y.shape == (batch, 2)
        np.testing.assert_allclose(y, ref(x), rtol=1e-5, atol=1e-5)
        same[:] = rng.normal(size=(2, 3))


def test_bad_calls_raise_dlc_errors():
    prog = dlc.compile(SRC)
    with pytest.raises(NotFoundError, match="fit"):
        prog.run("fit", x=np.ones((1, 3), np.float32))
    with pytest.raises(dlc.DlcError, match="dim 1"):
        prog.run("net", x=np.ones((1, 4), np.float32))
    with pytest.raises(dlc.DlcError):
        prog.train("fit", x=np.ones((2, 3), np.float32), t=np.zeros(3, np.int32))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "dlc.cli", *args], capture_output=True, text=True)


def test_cli_compile_summary_and_errors(tmp_path):
    src = tmp_path / "net.dl"
    src.write_text(SRC)
    r = run_cli("compile", str(src), "-o", str(tmp_path / "net.so"), "--time-passes")
    assert r.returncode == 0 and (tmp_path / "net.so").exists(), r.stderr
    timed = [line.split(":")[0].strip() for line in r.stderr.splitlines() if line.endswith(" ms")]
    assert timed[0] == "check" and timed[-2:] == ["render", "llvm"], r.stderr
    for emit in ("ast", "graph", "loops", "ll", "asm"):
        r = run_cli("compile", str(src), "--emit", emit, "-o", "-")
        assert r.returncode == 0 and r.stdout, (emit, r.stderr)
    r = run_cli("compile", str(src), "--emit", "loops", "-o", "-", "--dump-ir-after", "fuse")
    assert "IR after fuse" in r.stderr and "(inlined)" in r.stderr
    r = run_cli("summary", str(src))
    assert "fc1" in r.stdout and "total parameters: 32" in r.stdout
    bad = tmp_path / "bad.dl"
    bad.write_text(SRC.replace("|> relu", "|> rleu"))
    r = run_cli("compile", str(bad))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{bad}:4:" in r.stderr and "did you mean 'relu'" in r.stderr and "^" in r.stderr
    assert run_cli("--version").stdout.startswith("dlc ")


def test_cli_reports_unwritable_outputs_and_caches_without_a_traceback(tmp_path):
    src = tmp_path / "net.dl"
    src.write_text(SRC)
    r = run_cli("compile", str(src), "-o", str(tmp_path / "missing" / "net.so"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot write" in r.stderr and "No such file or directory" in r.stderr
    (tmp_path / "file").write_text("")
    env = dict(os.environ, DLC_CACHE_DIR=str(tmp_path / "file" / "cache"))
    r = subprocess.run([sys.executable, "-m", "dlc.cli", "compile", str(src), "-o", str(tmp_path / "n.so")],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot use the compile cache" in r.stderr and "DLC_CACHE_DIR" in r.stderr


def test_summary_counts_batchnorm_counters_in_the_model_as_in_the_total():
    src = """
model m {
    input x: f32[batch, 3, 8, 8]
    h = conv2d(x, 4, 3, name="c") |> batchnorm(name="bn") |> relu |> flatten
    output y = dense(h, 2, name="fc")
}
"""
    text = dlc.api.summary(dlc.driver.build(src).graph)
    # conv 4*3*9 + 4, batchnorm 4 + 4 + 4 + 4 + 1 (num_batches_tracked), dense 2*144 + 2
    assert "  parameters: 419" in text and "total parameters: 419 in 9 tensors" in text, text


def test_readme_names_the_passes_that_dump_ir_after_takes():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `dlc/passes/`"))
    listed, said_after = row.split("|")[2].split("These are the names")
    stages = ["check", "autodiff", "lower", "render"]   # named after the list, not in it
    # the row lists the passes in the driver's order, as it says
    assert re.findall(r"`(\w+)`", listed) == [n for n in dlc.driver.PASS_NAMES if n not in stages]
    assert re.findall(r"`(\w+)`", said_after) == stages


def test_summary_lists_the_layers_without_parameters_too():
    src = """
model m {
    input x: f32[batch, 3, 8, 8]
    h = conv2d(x, 4, 3, name="c") |> relu |> maxpool(2) |> flatten
    output y = dense(h, 2) |> softmax
}
"""
    rows = [line.split()[:2] for line in dlc.api.summary(dlc.driver.build(src).graph).splitlines()[2:8]]
    assert rows == [["c", "conv2d"], ["m.relu0", "relu"], ["m.maxpool0", "maxpool"],
                    ["m.flatten0", "flatten"], ["m.dense0", "dense"], ["m.softmax0", "softmax"]], rows
