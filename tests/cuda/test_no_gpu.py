"""Without a GPU (or without the NVIDIA driver), the cuda target still
compiles, and creating a session fails with a clear UnavailableError."""
import pytest

import dlc
from dlc.errors import DlcError, UnavailableError

from conftest import gpu_available
from cuda_programs import EXAMPLES

no_gpu = gpu_available()


@pytest.mark.skipif(no_gpu is None, reason="a GPU is present: the no-GPU path cannot be taken")
def test_cuda_target_without_gpu_raises_unavailable():
    with pytest.raises(UnavailableError, match="CUDA is unavailable") as info:
        dlc.compile(EXAMPLES[0], target="cuda")
    assert isinstance(info.value, DlcError)
    assert "target 'cuda'" in str(info.value)


def test_arch_needs_cuda_target():
    with pytest.raises(DlcError, match="arch applies to target 'cuda' only"):
        dlc.compile(EXAMPLES[0], arch="sm_90")


def test_unknown_target_is_a_dlc_error():
    with pytest.raises(DlcError, match="targets: cpu, cuda"):
        dlc.compile(EXAMPLES[0], target="rocm")


def test_device_io_needs_a_cuda_session():
    from dlc.runtime import _check, _runtime
    cpu = dlc.compile(EXAMPLES[0])
    with pytest.raises(UnavailableError, match="target 'cuda'"):
        _check(_runtime().dlc_session_set_device_io(cpu._session._ptr, 1))
