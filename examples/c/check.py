"""Runs a C example and compares what it prints with the Python API on the
same inputs (CTest runs this; see CMakeLists.txt).

    python check.py classify CLASSIFY_EXE MOONS_DL WORKDIR
    python check.py train TRAIN_EXE MOONS_DL WORKDIR
    python check.py train_mpi TRAIN_MPI_EXE MOONS_DL WORKDIR   # MPIEXEC: its launcher

classify: trains examples/moons.dl from Python, saves the weights, and
checks that the C program's logits for held-out points are the Python
API's. train: checks that training from C gives the losses, accuracy and
weights of the same steps taken from Python. train_mpi: the same, for
train_mpi.c run by 2 processes, each on its slice of every batch.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import dlc


def moons(n: int, noise: float, seed: int):
    """Two interleaved half circles (scikit-learn's make_moons, without it)."""
    rng = np.random.default_rng(seed)
    a, b = np.linspace(0, np.pi, n // 2), np.linspace(0, np.pi, n - n // 2)
    x = np.concatenate([np.stack([np.cos(a), np.sin(a)], 1),
                        np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)])
    x += rng.normal(0, noise, x.shape)
    t = np.r_[np.zeros(n // 2), np.ones(n - n // 2)]
    order = rng.permutation(n)
    return x[order].astype(np.float32), t[order].astype(np.int32)


def write_points(path: Path, x, t=None):
    with open(path, "w") as f:
        f.write(f"{len(x)} 2\n")
        for i, row in enumerate(x):
            f.write(" ".join(f"{v:.9g}" for v in row) + (f" {t[i]}" if t is not None else "") + "\n")


def run(cmd) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        sys.exit(f"{cmd[0]} failed with status {done.returncode}")
    return done.stdout


def train_python(prog, x, t, epochs: int, batch: int) -> list[float]:
    """The loop of train.c: epochs over the data in order."""
    losses = []
    for _ in range(epochs):
        steps = [prog.train("fit", x=x[i:i + batch], t=t[i:i + batch])
                 for i in range(0, len(x), batch)]
        losses.append(float(np.mean(steps)))
    return losses


def check_classify(exe: Path, source: Path, work: Path):
    x, t = moons(600, 0.15, seed=1)
    prog = dlc.compile(source, seed=0)
    train_python(prog, x[:400], t[:400], epochs=40, batch=32)
    prog.save(work / "moons.safetensors")
    write_points(work / "points.txt", x[400:])
    out = np.loadtxt(run([exe, work / "moons.safetensors", work / "points.txt"]).splitlines(), ndmin=2)
    expected = prog.run("moons", x=x[400:])["logits"]
    np.testing.assert_allclose(out[:, 1:], expected, rtol=1e-5, atol=1e-6)
    assert (out[:, 0] == expected.argmax(1)).all()
    accuracy = float((out[:, 0] == t[400:]).mean())
    print(f"classify: {len(out)} points, logits match the Python API; accuracy {accuracy:.3f}")
    assert accuracy > 0.9, accuracy


def check_train(exe: Path, source: Path, work: Path, launcher: tuple = ()):
    x, t = moons(400, 0.15, seed=2)
    epochs, batch, seed = 30, 32, 5
    write_points(work / "train.txt", x, t)
    out = run([*launcher, exe, work / "train.txt", epochs, batch, seed, work / "trained.safetensors"])
    lines = out.split("\n")
    c_losses = [float(line.split()[3]) for line in lines if line.startswith("epoch")]
    c_accuracy = float(next(line for line in lines if line.startswith("accuracy")).split()[1])
    prog = dlc.compile(source, seed=seed)
    losses = train_python(prog, x, t, epochs, batch)
    np.testing.assert_allclose(c_losses, losses, rtol=1e-4)
    trained = {k: v.copy() for k, v in prog.params.items()}
    prog.load(work / "trained.safetensors")
    for k, v in trained.items():
        np.testing.assert_allclose(prog.params[k], v, rtol=1e-4, atol=1e-5, err_msg=k)
    accuracy = float((prog.run("moons", x=x)["logits"].argmax(1) == t).mean())
    assert abs(accuracy - c_accuracy) < 1e-3, (accuracy, c_accuracy)
    print(f"{exe.name}: {epochs} epochs; losses {c_losses[0]:.4f} -> {c_losses[-1]:.4f} match the "
          f"Python API, as do the saved weights; accuracy {c_accuracy:.3f}")
    assert c_accuracy > 0.9, c_accuracy


def check_train_mpi(exe: Path, source: Path, work: Path):
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    check_train(exe, source, work, (os.environ["MPIEXEC"], *root, "--oversubscribe", "-n", "2"))


if __name__ == "__main__":
    what, exe, source, work = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
    work.mkdir(parents=True, exist_ok=True)
    {"classify": check_classify, "train": check_train, "train_mpi": check_train_mpi}[what](exe, source, work)
