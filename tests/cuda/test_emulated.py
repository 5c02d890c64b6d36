"""The gpu tests' core on the CPU emulator of the CUDA driver (emulator.py),
so that the cuda target's runtime path runs everywhere: session creation,
parameter upload and download, launch plans, grid-stride kernels, device
math. In a subprocess, because the emulator replaces the driver library
for the whole process."""
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent


def test_gpu_tests_pass_on_the_emulator():
    env = {**os.environ, "DLC_CUDA_EMULATOR": "1"}
    subset = "cross_entropy-37 or math-300 or sequence-37 or round_trip or device_pointers"
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                        "-k", subset, str(Path(__file__).parent / "test_gpu.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert re.search(r"\b5 passed", r.stdout), r.stdout[-2000:]
