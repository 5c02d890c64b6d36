"""On an NVIDIA GPU (`pytest -m gpu`): the cuda target against the cpu
target and PyTorch, forward, gradients and training steps, for every op;
parameter access and weights files on a device session; the digits MLP
trained on the device. Skipped without a GPU (see conftest.py)."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import dlc

from cuda_programs import PROGRAMS

pytestmark = pytest.mark.gpu
RTOL, ATOL = 1e-4, 1e-5
ROOT = Path(__file__).parent.parent.parent


def inputs(prog, batch: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    out = {}
    for t in prog._runtime.entries["g"].inputs:
        shape = tuple(batch if d == "batch" else d for d in t.dims)
        if t.dtype == "i32":
            out[t.name] = rng.integers(0, 3, size=shape).astype(np.int32)
        elif t.name == "t":
            out[t.name] = rng.uniform(size=shape).astype(np.float32)
        else:
            out[t.name] = rng.normal(size=shape).astype(np.float32)
    return out


@pytest.mark.parametrize("batch", [1, 37, 300])
@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_matches_cpu_target(name, batch):
    cpu = dlc.compile(PROGRAMS[name], seed=3)
    gpu = dlc.compile(PROGRAMS[name], target="cuda", seed=3)
    for k, v in cpu.params.items():
        np.testing.assert_array_equal(gpu.params[k], v)
    data = inputs(cpu, batch)
    np.testing.assert_allclose(gpu.run("m", x=data["x"])["y"], cpu.run("m", x=data["x"])["y"],
                               rtol=RTOL, atol=ATOL)
    g_cpu, g_gpu = cpu.grads("g", **data), gpu.grads("g", **data)
    for k in g_cpu:
        np.testing.assert_allclose(g_gpu[k], g_cpu[k], rtol=RTOL, atol=ATOL, err_msg=k)
    for step in range(3):
        assert gpu.train("g", **data) == pytest.approx(cpu.train("g", **data), rel=RTOL, abs=ATOL)
    for k, v in cpu.params.items():
        np.testing.assert_allclose(gpu.params[k], v, rtol=RTOL, atol=ATOL, err_msg=k)


def test_mlp_matches_pytorch():
    gpu = dlc.compile(ROOT / "examples" / "digits_mlp.dl", target="cuda", seed=1)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 64)).astype(np.float32)
    t = rng.integers(0, 10, size=64).astype(np.int32)
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in gpu.params.items()}
    h = torch.relu(torch.tensor(x) @ P["fc1.weight"].T + P["fc1.bias"])
    h = torch.relu(h @ P["fc2.weight"].T + P["fc2.bias"])
    logits = h @ P["out.weight"].T + P["out.bias"]
    np.testing.assert_allclose(gpu.run("digits", x=x)["logits"], logits.detach().numpy(),
                               rtol=RTOL, atol=ATOL)
    loss = torch.nn.functional.cross_entropy(logits, torch.tensor(t).long())
    loss.backward()
    g = gpu.grads("fit", x=x, t=t)
    for k, v in P.items():
        np.testing.assert_allclose(g[k], v.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=k)


def test_param_writes_reach_the_device_and_weights_round_trip(tmp_path):
    gpu = dlc.compile(PROGRAMS["no_bias"], target="cuda", seed=0)
    x = np.ones((2, 5), np.float32)
    gpu.params["p.weight"][...] = 0.0
    np.testing.assert_array_equal(gpu.run("m", x=x)["y"], np.zeros((2, 4), np.float32))
    data = inputs(gpu, 8)
    gpu.params["p.weight"][...] = 0.5
    before = gpu.params["q.weight"].copy()
    gpu.train("g", **data)
    assert not np.array_equal(gpu.params["q.weight"], before)  # the update came back
    gpu.save(tmp_path / "w.safetensors")
    y = gpu.run("m", x=data["x"])["y"]
    gpu.init_params(5)
    gpu.load(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(gpu.run("m", x=data["x"])["y"], y)


@pytest.mark.parametrize("task", ["digits", "digits_cnn"])
def test_digits_train_on_the_gpu_to_the_cpus_accuracy(task):
    spec = importlib.util.spec_from_file_location("train_example", ROOT / "examples" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    on_cpu = mod.train(task, seed=0, verbose=False, target="cpu")
    on_gpu = mod.train(task, seed=0, verbose=False, target="cuda")
    # The same seed, batches and update rule: fp32 rounding alone may move a
    # few of the 360 held-out digits.
    assert on_gpu >= 0.95 and abs(on_gpu - on_cpu) <= 0.02, (on_cpu, on_gpu)


def test_device_pointers_from_c():
    """dlc_session_set_device_io: inputs and outputs in device memory, as a
    C caller holding CUdeviceptrs would run it."""
    import ctypes
    import os

    from dlc.runtime import ffi, find_library
    prog = dlc.compile(PROGRAMS["activations"], target="cuda", seed=0)
    x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
    expected = prog.run("m", x=x)["y"]
    cu = ctypes.CDLL(os.environ.get("DLC_LIBCUDA") or "libcuda.so.1")
    ctx, dev, dx = ctypes.c_void_p(), ctypes.c_int(), ctypes.c_uint64()
    assert cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), 0) == 0
    assert cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev) == 0
    assert cu.cuCtxPushCurrent_v2(ctx) == 0
    try:
        assert cu.cuMemAlloc_v2(ctypes.byref(dx), ctypes.c_size_t(x.nbytes)) == 0
        assert cu.cuMemcpyHtoD_v2(dx, x.ctypes.data_as(ctypes.c_void_p), ctypes.c_size_t(x.nbytes)) == 0

        def address(cdata) -> ctypes.c_void_p:
            return ctypes.c_void_p(int(ffi.cast("uintptr_t", cdata)))

        session = address(prog._session._ptr)
        runtime = ctypes.CDLL(str(find_library()))  # the library the bindings loaded
        assert runtime.dlc_session_set_device_io(session, 1) == 0
        tin, tout = ffi.new("dlc_tensor[1]"), ffi.new("dlc_tensor[1]")
        tin[0].data = ffi.cast("void *", dx.value)
        tin[0].dtype, tin[0].rank = 0, 2
        tin[0].dims[0:2] = x.shape
        name = ffi.new("char[]", b"x")
        names = ffi.new("const char *[1]", [name])
        assert runtime.dlc_session_run(session, b"m", 1, address(names), address(tin), 1,
                                       address(tout)) == 0
        y = np.empty(expected.shape, np.float32)
        assert cu.cuMemcpyDtoH_v2(y.ctypes.data_as(ctypes.c_void_p),
                                  ctypes.c_uint64(int(ffi.cast("uintptr_t", tout[0].data))),
                                  ctypes.c_size_t(y.nbytes)) == 0
        np.testing.assert_array_equal(y, expected)
        assert runtime.dlc_session_set_device_io(session, 0) == 0
        np.testing.assert_array_equal(prog.run("m", x=x)["y"], expected)
        cu.cuMemFree_v2(dx)
    finally:
        cu.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
        cu.cuDevicePrimaryCtxRelease_v2(dev)

