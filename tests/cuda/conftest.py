import ctypes
import os

import pytest

if os.environ.get("DLC_CUDA_EMULATOR") == "1":  # run the gpu tests on the CPU emulator
    import emulator
    emulator.install()


def gpu_available() -> str | None:
    """None if the CUDA driver sees a GPU, else why not."""
    try:
        cuda = ctypes.CDLL(os.environ.get("DLC_LIBCUDA") or "libcuda.so.1")
    except OSError as e:
        return f"no CUDA driver ({e})"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the CUDA driver sees no GPU"
    return None


def pytest_collection_modifyitems(config, items):
    reason = None
    for item in items:
        if "gpu" in item.keywords:
            reason = reason or gpu_available() or ""
            if reason:
                item.add_marker(pytest.mark.skip(reason=f"needs an NVIDIA GPU: {reason}"))
