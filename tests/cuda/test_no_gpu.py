"""Without a GPU (or without the NVIDIA driver), the cuda target still
compiles, and creating a session fails with a clear UnavailableError."""
import pytest

import dlc
from dlc.errors import DlcError, UnavailableError

from conftest import gpu_available
from cuda_programs import DIGITS_MLP

no_gpu = gpu_available()


@pytest.mark.skipif(no_gpu is None, reason="a GPU is present: the no-GPU path cannot be taken")
def test_cuda_target_without_gpu_raises_unavailable():
    with pytest.raises(UnavailableError, match="CUDA is unavailable") as info:
        dlc.compile(DIGITS_MLP, target="cuda")
    assert isinstance(info.value, DlcError)
    assert "target 'cuda'" in str(info.value)


def test_arch_needs_cuda_target():
    with pytest.raises(DlcError, match="arch applies to target 'cuda' only"):
        dlc.compile(DIGITS_MLP, arch="sm_90")


def test_unknown_target_is_a_dlc_error():
    with pytest.raises(DlcError, match="targets: cpu, cuda"):
        dlc.compile(DIGITS_MLP, target="rocm")


def test_device_io_needs_a_cuda_session():
    import ctypes

    from dlc.runtime import ffi, find_library
    cpu = dlc.compile(DIGITS_MLP)
    runtime = ctypes.CDLL(str(find_library()))
    runtime.dlc_status_message.restype = ctypes.c_char_p
    session = ctypes.c_void_p(int(ffi.cast("uintptr_t", cpu._session._ptr)))
    assert runtime.dlc_session_set_device_io(session, 1) == 7  # DLC_ERR_UNAVAILABLE
    assert b"target 'cuda'" in runtime.dlc_status_message()
