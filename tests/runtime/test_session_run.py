"""Sessions: seeded initialisation, parameter views, running entries (checked
against NumPy), and every malformed call, which must fail with a clear message
and leave the session as it was."""
import gc

import numpy as np
import pytest

from dlc.errors import InvalidArgumentError, NotFoundError, RuntimeInternalError


def snapshot(s):
    return {k: v.copy() for k, v in s.params.items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_init_is_deterministic(program):
    a, b, c = program.session(seed=5), program.session(seed=5), program.session(seed=6)
    assert_same(snapshot(a), snapshot(b))
    assert not np.array_equal(a.params["W"], c.params["W"])
    a.init_params(6)
    assert_same(snapshot(a), snapshot(c))


def test_param_values_depend_only_on_seed_and_index(program, build_fake):
    from dlc.runtime import load_program
    # Another init rule for b (index 1) leaves the params after it unchanged.
    other = load_program(build_fake("b_normal", "FAKE_B_INIT=DLC_INIT_NORMAL"))
    s, s2 = program.session(seed=3), other.session(seed=3)
    assert not np.array_equal(s.params["b"], s2.params["b"])
    for name in ("W", "emb.weight", "scale"):
        np.testing.assert_array_equal(s.params[name], s2.params[name])


def test_init_distributions(program):
    s = program.session(seed=11)
    emb = s.params["emb.weight"]
    assert emb.dtype == np.float32 and emb.shape == (100, 10)
    assert emb.min() >= -0.1 and emb.max() < 0.1
    assert abs(emb.mean()) < 0.01 and abs(emb.std() - 0.2 / np.sqrt(12)) < 0.005
    w = s.params["W"]
    assert w.min() >= -0.5 and w.max() < 0.5
    scale = s.params["scale"]
    assert scale.dtype == np.float64
    assert abs(scale.mean() - 1.0) < 0.05 and abs(scale.std() - 0.5) < 0.05
    np.testing.assert_array_equal(s.params["b"], np.zeros(2, np.float32))
    np.testing.assert_array_equal(s.params["count"], np.ones(3, np.int32))


def test_params_are_writable_views(session):
    w = session.params["W"]
    w[...] = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(session.params["W"], w)
    x = np.ones((1, 3), np.float32)
    np.testing.assert_allclose(session.run("model", {"x": x})["y"], [[3, 12]])
    with pytest.raises(TypeError):
        session.params["W"] = w  # the mapping itself is read-only


def test_view_keeps_session_memory_alive(program):
    w = program.session(seed=2).params["W"]
    gc.collect()
    w[...] = 1.0
    assert w.sum() == 6.0


def test_set_param(session):
    session.set_param("W", np.full((2, 3), 2.0))  # f64 -> f32 within a kind
    assert session.params["W"].dtype == np.float32
    np.testing.assert_array_equal(session.params["W"], np.full((2, 3), 2.0, np.float32))
    before = snapshot(session)
    with pytest.raises(InvalidArgumentError,
                       match=r"param 'W' has shape \[2, 3\]; the value has shape \[3, 2\]"):
        session.set_param("W", np.zeros((3, 2), np.float32))
    with pytest.raises(InvalidArgumentError, match="expected floating-point values"):
        session.set_param("W", np.zeros((2, 3), np.int64))
    with pytest.raises(NotFoundError, match="param 'V' not found; params are: W, b, "
                                            "emb.weight, scale, count"):
        session.set_param("V", np.zeros((2, 3), np.float32))
    assert_same(before, snapshot(session))


def forward(params, x):
    return x @ params["W"].T + params["b"]


def test_run_model(session):
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    out = session.run("model", {"x": x})
    assert list(out) == ["y"]
    np.testing.assert_allclose(out["y"], forward(session.params, x), rtol=1e-6, atol=1e-6)
    # Outputs are arrays of their own: copies of small ones; large ones (after
    # a large run) the entry writes into (64-byte aligned:
    # dlc_session_run_into). A later run changes neither.
    big_x = np.random.default_rng(1).standard_normal((8192, 3)).astype(np.float32)
    session.run("model", {"x": big_x})   # copied; the next large ones are not
    big = session.run("model", {"x": big_x})["y"]
    assert big.ctypes.data % 64 == 0 and not big.flags.owndata
    np.testing.assert_allclose(big, forward(session.params, big_x), rtol=1e-6, atol=1e-6)
    first, big_first = out["y"].copy(), big.copy()
    session.run("model", {"x": big_x[:2] * 3})
    session.run("model", {"x": big_x[::-1] * 3})
    np.testing.assert_array_equal(out["y"], first)
    np.testing.assert_array_equal(big, big_first)
    # Inputs of another rank: the runtime's message, not a shape guess.
    with pytest.raises(InvalidArgumentError, match="rank"):
        session.run("model", {"x": x[None]})
    # A larger batch grows the output and workspace buffers.
    big = np.ones((1000, 3), np.float32)
    assert session.run("model", {"x": big})["y"].shape == (1000, 2)


def test_run_accepts_lists_and_f64(session):
    out = session.run("model", {"x": [[1.0, 0.0, 0.0]]})
    np.testing.assert_allclose(out["y"], session.params["W"][:, 0][None, :], rtol=1e-6)
    xt = np.asfortranarray(np.ones((4, 3)))  # f64, non-contiguous layout
    assert session.run("model", {"x": xt})["y"].dtype == np.float32


def test_train_step_matches_numpy(session):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    t = rng.standard_normal((8, 2)).astype(np.float32)
    p = snapshot(session)
    v = np.zeros((2, 3), np.float32)
    for _ in range(3):
        y = forward(p, x)
        loss = np.mean((y - t) ** 2)
        dy = 2 * (y - t) / y.size
        gw, gb = dy.T @ x, dy.sum(0)
        got = session.run("fit.grads", {"x": x, "t": t})
        np.testing.assert_allclose(got["loss"], loss, rtol=1e-5)
        np.testing.assert_allclose(got["W"], gw, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(got["b"], gb, rtol=1e-4, atol=1e-6)
        out = session.run("fit", {"t": t, "x": x})
        assert out["loss"].shape == () and out["loss"].dtype == np.float32
        np.testing.assert_allclose(out["loss"], loss, rtol=1e-5)
        v = 0.9 * v + gw
        p["W"] = p["W"] - 0.1 * v
        p["b"] = p["b"] - 0.1 * gb
        np.testing.assert_allclose(session.params["W"], p["W"], rtol=1e-4, atol=1e-6)
    # init_params also resets the momentum: the next step starts from v = 0.
    session.init_params(4)
    fresh = snapshot(session)
    session.run("fit", {"x": x, "t": t})
    y = forward(fresh, x)
    gw = (2 * (y - t) / y.size).T @ x
    np.testing.assert_allclose(session.params["W"], fresh["W"] - 0.1 * gw, rtol=1e-4, atol=1e-6)


X = np.ones((4, 3), np.float32)
T = np.ones((4, 2), np.float32)


@pytest.mark.parametrize("entry, inputs, error, message", [
    ("modle", {"x": X}, NotFoundError,
     "entry 'modle' not found; entries are: model, fit, fit.grads, boom, pick"),
    ("model", {"y": X}, InvalidArgumentError,
     "entry 'model' has no input 'y'; its inputs are: x"),
    ("model", {"x": X, "t": T}, InvalidArgumentError,
     "entry 'model' has no input 't'; its inputs are: x"),
    ("fit", {"x": X}, InvalidArgumentError,
     "entry 'fit' needs input 't', which is missing; its inputs are: x, t"),
    ("model", {}, InvalidArgumentError, "entry 'model' needs input 'x'"),
    ("model", {"x": X.astype(np.int32)}, InvalidArgumentError,
     "input 'x' of entry 'model': expected floating-point values \\(f32\\), got an "
     "array of int32"),
    ("model", {"x": np.ones((4, 3, 1), np.float32)}, InvalidArgumentError,
     "input 'x' of entry 'model': rank is 3 but the program declares \\[batch, 3\\]"),
    ("model", {"x": np.ones((4, 2), np.float32)}, InvalidArgumentError,
     "input 'x' of entry 'model': dim 1 is 2 but the program declares \\[batch, 3\\]"),
    ("model", {"x": np.ones((0, 3), np.float32)}, InvalidArgumentError,
     "input 'x' of entry 'model': dim 0 is 0, but it binds symbol 'batch', which "
     "must be >= 1"),
    ("fit", {"x": X, "t": np.ones((5, 2), np.float32)}, InvalidArgumentError,
     "entry 'fit': symbol 'batch' is 4 from dim 0 of input 'x', but 5 from dim 0 "
     "of input 't'"),
    ("model", {"x": np.ones((1,) * 9, np.float32)}, InvalidArgumentError,
     "rank 9 is above the limit of 8"),
    ("boom", {"x": X}, RuntimeInternalError, "entry 'boom' failed with code 7"),
    # Integer inputs outside the ranges in the descriptor, before any run.
    ("pick", {"x": X, "idx": [0, 1, 3, 2], "len": [1, 1, 1, 1]}, InvalidArgumentError,
     "input 'idx' of entry 'pick': idx\\[2\\] is 3, outside the valid range \\[0, 2\\]$"),
    ("pick", {"x": X, "idx": [0, -1, 0, 0], "len": [1, 1, 1, 1]}, InvalidArgumentError,
     "idx\\[1\\] is -1, outside the valid range \\[0, 2\\]"),
    ("pick", {"x": X, "idx": [0, 0, 0, 0], "len": [1, 0, 1, 1]}, InvalidArgumentError,
     "input 'len' of entry 'pick': len\\[1\\] is 0, outside the valid range "
     "\\[1, batch\\] = \\[1, 4\\]"),
    ("pick", {"x": X, "idx": [0, 0, 0, 0], "len": [1, 1, 1, 5]}, InvalidArgumentError,
     "len\\[3\\] is 5, outside the valid range \\[1, batch\\] = \\[1, 4\\]"),
])
def test_bad_run(session, entry, inputs, error, message):
    before = snapshot(session)
    with pytest.raises(error, match=message):
        session.run(entry, inputs)
    assert_same(before, snapshot(session))
    session.run("model", {"x": X})  # the session still works


def test_integer_inputs_in_range(session):
    out = session.run("pick", {"x": np.arange(12, dtype=np.float32).reshape(4, 3),
                               "idx": [0, 1, 2, 2], "len": [1, 2, 3, 4]})
    np.testing.assert_array_equal(out["picked"], [0, 8, 24, 44])


def test_float_for_i32_is_refused():
    from dlc.runtime import _as_input
    with pytest.raises(InvalidArgumentError, match="expected integers \\(i32\\), got an "
                                                   "array of float64"):
        _as_input("input 't'", np.ones(3), np.dtype(np.int32))
    with pytest.raises(InvalidArgumentError, match="do not fit in i32"):
        _as_input("input 't'", np.array([2**40]), np.dtype(np.int32))
    a = _as_input("input 't'", np.arange(3, dtype=np.int64), np.dtype(np.int32))
    assert a.dtype == np.int32 and list(a) == [0, 1, 2]


def test_sessions_are_independent(program):
    a, b = program.session(seed=1), program.session(seed=1)
    a.run("fit", {"x": X, "t": T})
    assert not np.array_equal(a.params["W"], b.params["W"])


def test_bad_num_threads(program):
    with pytest.raises(InvalidArgumentError, match="num_threads is -1"):
        program.session(num_threads=-1)
    # Checked before cffi, which raised OverflowError, and by the C runtime.
    with pytest.raises(InvalidArgumentError, match="num_threads is 2147483648; .* from 1 to 1024"):
        program.session(num_threads=2**31)
    with pytest.raises(InvalidArgumentError, match="num_threads is 1025"):
        program.session(num_threads=1025)
    with pytest.raises(InvalidArgumentError, match="seed is -1"):
        program.session(seed=-1)
    with pytest.raises(InvalidArgumentError, match="seed is 18446744073709551616"):
        program.session().init_params(2**64)


@pytest.mark.parametrize("value", ["abc", "0", "-3", "4x", "99999"])
def test_bad_dlc_num_threads(program, monkeypatch, value):
    monkeypatch.setenv("DLC_NUM_THREADS", value)
    with pytest.raises(InvalidArgumentError, match=f"DLC_NUM_THREADS is '{value}'; set it to a "
                                                   "thread count from 1 to 1024, or unset it"):
        program.session()
    program.session(num_threads=2)   # an explicit count does not read it
    monkeypatch.setenv("DLC_NUM_THREADS", "")
    program.session()
