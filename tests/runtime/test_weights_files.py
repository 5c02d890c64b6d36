"""Weights in safetensors: round trips, interoperation with the `safetensors`
package (NumPy and PyTorch flavours), and malformed or mismatched files, which
must be refused with a clear message and leave the params untouched."""
import json
import struct

import numpy as np
import pytest

from dlc.errors import FormatError, InvalidArgumentError, IOError_, NotFoundError


def snapshot(s):
    return {k: v.copy() for k, v in s.params.items()}


def assert_params(s, expected):
    assert list(s.params) == list(expected)
    for k, v in expected.items():
        np.testing.assert_array_equal(s.params[k], v)
        assert s.params[k].dtype == v.dtype


def st_file(path, header, data=b"", length=None):
    """Writes a safetensors-shaped file from a header (dict or raw str)."""
    text = header if isinstance(header, (str, bytes)) else json.dumps(header)
    raw = text.encode() if isinstance(text, str) else text
    n = len(raw) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + raw + data)
    return path


def good_header(s):
    """The header and data of a valid file holding the session's params."""
    header, data = {}, b""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
             np.dtype(np.int32): "I32"}
    for k, v in s.params.items():
        header[k] = {"dtype": names[v.dtype], "shape": list(v.shape),
                     "data_offsets": [len(data), len(data) + v.nbytes]}
        data += v.tobytes()
    return header, data


def test_roundtrip(program, tmp_path):
    a = program.session(seed=1)
    a.params["count"][...] = [4, 5, 6]
    a.save(tmp_path / "w.safetensors")
    b = program.session(seed=2)
    b.load(str(tmp_path / "w.safetensors"))
    assert_params(b, snapshot(a))


def test_read_by_safetensors_numpy(session, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file
    path = tmp_path / "w.safetensors"
    session.save(path)
    loaded = load_file(path)
    assert set(loaded) == set(session.params)
    for k, v in loaded.items():
        np.testing.assert_array_equal(v, session.params[k])
        assert v.dtype == session.params[k].dtype
    with safe_open(path, framework="np") as f:
        assert f.metadata() == {"format": "pt"}
    # Like the reference writer: data 8-aligned, each tensor aligned to its dtype.
    blob = path.read_bytes()
    assert struct.unpack("<Q", blob[:8])[0] % 8 == 0
    header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
    assert header["scale"]["data_offsets"][0] % 8 == 0


def test_written_by_safetensors_numpy(program, tmp_path):
    from safetensors.numpy import save_file
    src = program.session(seed=9)
    expected = snapshot(src)
    save_file(expected, str(tmp_path / "np.safetensors"), metadata={"note": "x"})
    dst = program.session(seed=0)
    dst.load(tmp_path / "np.safetensors")
    assert_params(dst, expected)


def test_torch_interop(program, tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file
    s = program.session(seed=4)
    s.save(tmp_path / "dlc.safetensors")
    state = load_file(tmp_path / "dlc.safetensors")
    assert state["W"].dtype == torch.float32 and state["scale"].dtype == torch.float64
    assert state["count"].dtype == torch.int32
    np.testing.assert_array_equal(state["W"].numpy(), s.params["W"])
    # A state dict written by PyTorch loads by name.
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) + (1 if k != "count" else 0)
             for k, v in snapshot(s).items()}
    save_file(state, str(tmp_path / "torch.safetensors"))
    s.load(tmp_path / "torch.safetensors")
    np.testing.assert_allclose(s.params["W"], state["W"].numpy())


def test_missing_and_unwritable(session, tmp_path):
    with pytest.raises(NotFoundError, match="weights file '.*nope' not found"):
        session.load(tmp_path / "nope")
    with pytest.raises(IOError_, match="weights file '.*' is a directory"):
        session.load(tmp_path)
    for call in (session.load, session.save):
        with pytest.raises(InvalidArgumentError, match="contains a NUL character"):
            call(str(tmp_path / "w.safetensors\0.bak"))
    with pytest.raises(IOError_, match="cannot write weights file"):
        session.save(tmp_path / "no" / "dir" / "w.safetensors")


def i64_file(s, path, count):
    """The session's params with `count` stored as I64, as PyTorch stores
    counters such as BatchNorm's num_batches_tracked."""
    header, data = good_header(s)
    del header["count"]
    raw = np.asarray(count, np.int64).tobytes()
    header["count"] = {"dtype": "I64", "shape": [3], "data_offsets": [len(data), len(data) + len(raw)]}
    return st_file(path, header, data + raw)


def test_i64_loads_into_i32_when_it_fits(session, tmp_path):
    session.load(i64_file(session, tmp_path / "ok.safetensors", [7, -2**31, 2**31 - 1]))
    np.testing.assert_array_equal(session.params["count"], [7, -2**31, 2**31 - 1])
    before = snapshot(session)
    with pytest.raises(FormatError, match="tensor 'count' \\(I64\\) holds 2147483648 at element 1, "
                                          "which does not fit the program's i32"):
        session.load(i64_file(session, tmp_path / "big.safetensors", [1, 2**31, 3]))
    assert_params(session, before)


def test_torch_batchnorm_state_dict_loads(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    import dlc
    prog = dlc.compile("""
model m {
    input x: f32[batch, 2, 4, 4]
    output y = batchnorm(x, name="bn")
}""")
    bn = torch.nn.BatchNorm2d(2)
    bn.train()
    for _ in range(3):
        bn(torch.randn(5, 2, 4, 4))
    state = {f"bn.{k}": v for k, v in bn.state_dict().items()}
    assert state["bn.num_batches_tracked"].dtype == torch.int64
    save_file(state, str(tmp_path / "bn.safetensors"))
    prog.load(tmp_path / "bn.safetensors")
    assert prog.params["bn.num_batches_tracked"] == 3
    np.testing.assert_array_equal(prog.params["bn.running_var"], state["bn.running_var"].numpy())


def mismatches(h):
    """(mutated header, expected message) pairs for well-formed files that do
    not fit the program."""
    def without(name):
        g = dict(h)
        del g[name]
        return g

    def changed(name, **kw):
        g = json.loads(json.dumps(h))
        g[name].update(kw)
        return g

    extra = dict(h)
    extra["fc9.weight"] = {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}
    return [
        (without("count"), "weights file '.*' has no tensor 'count'"),
        (extra, "tensor 'fc9.weight' is not a param of the program; its params are: "
                "W, b, emb.weight, scale, count"),
        (changed("W", dtype="I32"), "tensor 'W' has dtype I32, the program expects F32"),
        (changed("W", dtype="BF16", data_offsets=[0, 12]),
         "tensor 'W' has dtype BF16, the program expects F32"),
        # The dtype is named, not the offsets sized for the program's dtype.
        (changed("W", dtype="F16"), r"tensor 'W' has dtype F16, the program expects F32 \(f32\)"),
        (changed("scale", dtype="F32"), r"tensor 'scale' has dtype F32, the program expects F64"),
        (changed("W", dtype="I64"), "tensor 'W' has dtype I64, the program expects F32"),
        (changed("W", shape=[3, 2]),
         r"tensor 'W' has shape \[3, 2\], the program expects \[2, 3\]"),
        (changed("W", shape=[6]), r"tensor 'W' has shape \[6\], the program expects \[2, 3\]"),
    ]


def malformed(h):
    """(header text or dict, data override or None, expected message) for files
    that are not valid safetensors."""
    def changed(name, **kw):
        g = json.loads(json.dumps(h))
        g[name].update(kw)
        return g

    def dropped(name, key):
        g = json.loads(json.dumps(h))
        del g[name][key]
        return g
    deep = '{"__metadata__":' + "[" * 200 + "]" * 200 + "}"
    return [
        ("", "not safetensors: its header is not a JSON object"),
        ("[]", "not safetensors"),
        ('{"W": {"dtype": "F32"', "malformed header"),
        ('{"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}} x',
         "unexpected data after the header object"),
        (deep, "nesting too deep"),
        ('{"W": 5}', "tensor 'W': expected an object describing the tensor"),
        ('{"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, '
         '"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}',
         "tensor 'W' appears twice"),
        ('{"\\u0057": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, '
         '"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}',
         "tensor 'W' appears twice"),
        ('{"W\\ud800": {}}', "unpaired surrogate"),
        ('{"W\\u0000": {}}', "a NUL character in a name"),
        ('{"W\x01": {}}', "control character in a string"),
        ('{"W\\q": {}}', "bad escape"),
        (changed("W", dtype="Q7"), "tensor 'W': unknown dtype 'Q7'"),
        (dropped("W", "data_offsets"), "tensor 'W': missing \"data_offsets\""),
        (dropped("W", "shape"), "tensor 'W': missing \"shape\""),
        (dropped("W", "dtype"), "tensor 'W': missing \"dtype\""),
        (changed("W", shape=[-2, 3]), "tensor 'W': expected a non-negative integer"),
        (changed("W", shape=[2.0, 3]), "expected an integer, found a fraction"),
        (changed("W", shape=[2, 3, 99999999999, 99999999999]), "shape too large"),
        (changed("W", data_offsets=[0, 18446744073709551615]), "integer too large"),
        (changed("W", data_offsets=[0]), "must hold two integers"),
        (changed("W", data_offsets=[0, 1, 2]), "must hold two integers"),
        (changed("W", data_offsets=[24, 0]), "do not hold its 24 bytes"),
        (changed("W", data_offsets=[0, 20]), "do not hold its 24 bytes"),
        (changed("W", data_offsets=[10 ** 9, 10 ** 9 + 24]), "do not hold its 24 bytes"),
        (changed("W", data_offsets=[4, 28]), "tensors '.*' and '.*' overlap"),
        (changed("W", shape="2x3"), "\"shape\" must be a list"),
    ]


def test_mismatched_files_leave_params_unchanged(session, tmp_path):
    header, data = good_header(session)
    before = snapshot(session)
    for i, (h, message) in enumerate(mismatches(header)):
        path = st_file(tmp_path / f"m{i}.safetensors", h, data)
        with pytest.raises(FormatError, match=message):
            session.load(path)
        assert_params(session, before)


def test_malformed_files_leave_params_unchanged(session, tmp_path):
    header, data = good_header(session)
    before = snapshot(session)
    for i, (h, message) in enumerate(malformed(header)):
        path = st_file(tmp_path / f"bad{i}.safetensors", h, data)
        with pytest.raises(FormatError, match=message):
            session.load(path)
        assert_params(session, before)


def test_header_escapes_and_metadata(program, tmp_path):
    s = program.session(seed=3)
    header, data = good_header(s)
    text = json.dumps({"__metadata__": {"a": "b\\\"\n", "n": {"deep": [1, 2.5e3, None]}},
                       **header}, ensure_ascii=True)
    text = text.replace('"emb.weight"', '"emb\\u002eweight"')
    target = program.session(seed=8)
    target.load(st_file(tmp_path / "esc.safetensors", text, data))
    assert_params(target, snapshot(s))


def test_bad_lengths(session, tmp_path):
    header, data = good_header(session)
    before = snapshot(session)
    text = json.dumps(header)
    cases = [
        (st_file(tmp_path / "a", text, data, length=len(text) + len(data) + 1),
         "header claims"),
        (st_file(tmp_path / "b", text, data, length=2 ** 63), "header claims"),
        (st_file(tmp_path / "c", text, b"", length=None), "do not hold"),
    ]
    (tmp_path / "d").write_bytes(b"\x05\x00")
    cases.append((tmp_path / "d", "is truncated: it has 2 bytes"))
    for path, message in cases:
        with pytest.raises(FormatError, match=message):
            session.load(path)
        assert_params(session, before)


def test_every_truncation_is_refused(session, tmp_path):
    path = tmp_path / "w.safetensors"
    session.save(path)
    blob = path.read_bytes()
    before = snapshot(session)
    cut = tmp_path / "cut.safetensors"
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    for n in [*range(0, header_end + 16), *range(header_end + 16, len(blob), 97)]:
        cut.write_bytes(blob[:n])
        with pytest.raises(FormatError):
            session.load(cut)
        assert_params(session, before)


def test_random_corruption_never_crashes(session, tmp_path):
    path = tmp_path / "w.safetensors"
    session.save(path)
    blob = bytearray(path.read_bytes())
    header_end = 8 + struct.unpack("<Q", blob[:8])[0]
    rng = np.random.default_rng(0)
    before = snapshot(session)
    bad = tmp_path / "fuzz.safetensors"
    for _ in range(2000):
        b = bytearray(blob)
        for _ in range(rng.integers(1, 4)):
            b[rng.integers(0, header_end)] = rng.integers(0, 256)
        bad.write_bytes(bytes(b))
        try:
            session.load(bad)
        except FormatError:
            assert_params(session, before)
        else:  # a corruption that kept the file valid, e.g. inside a name's case
            session.load(path)


def subset_file(s, path, keep, extra=True):
    """The session's params named in `keep`, plus (with `extra`) tensors the
    program lacks, one in a dtype dlc does not have."""
    header, data = good_header(s)
    header = {k: v for k, v in header.items() if k in keep}
    if extra:
        header["head.weight"] = {"dtype": "BF16", "shape": [2], "data_offsets": [len(data), len(data) + 4]}
        header["head.bias"] = {"dtype": "F32", "shape": [1], "data_offsets": [len(data) + 4, len(data) + 8]}
        data += b"\0" * 8
    return st_file(path, header, data)


def test_not_strict_loads_what_the_file_holds(program, tmp_path):
    a = program.session(seed=1)
    b = program.session(seed=2)
    before = snapshot(b)
    path = subset_file(a, tmp_path / "part.safetensors", {"W", "count"})
    # Strict, the default: refused, as before (the extra tensor is named first).
    with pytest.raises(FormatError, match="tensor 'head.weight' is not a param of the program"):
        b.load(path)
    assert_params(b, before)
    assert b.load(path, strict=False) == ["b", "emb.weight", "scale"]
    np.testing.assert_array_equal(b.params["W"], a.params["W"])
    np.testing.assert_array_equal(b.params["count"], a.params["count"])
    for k in ("b", "emb.weight", "scale"):
        np.testing.assert_array_equal(b.params[k], before[k])
    # Only missing tensors (no extra): strict names the first missing one.
    path = subset_file(a, tmp_path / "few.safetensors", {"scale"}, extra=False)
    with pytest.raises(FormatError, match="has no tensor 'W'"):
        b.load(path)
    assert b.load(path, strict=False) == ["W", "b", "count", "emb.weight"]
    # A whole file: nothing missing either way.
    a.save(tmp_path / "all.safetensors")
    assert b.load(tmp_path / "all.safetensors", strict=False) == []
    assert b.load(tmp_path / "all.safetensors") == []
    assert_params(b, snapshot(a))
    # No param at all: loads nothing, every param missing.
    path = subset_file(a, tmp_path / "none.safetensors", set())
    assert b.load(path, strict=False) == ["W", "b", "count", "emb.weight", "scale"]
    assert_params(b, snapshot(a))


def test_not_strict_still_refuses_mismatched_and_malformed_files(session, tmp_path):
    header, data = good_header(session)
    before = snapshot(session)
    cases = [(h, m) for h, m in mismatches(header) if "not a param" not in m and "has no tensor" not in m]
    cases += [(h, m) for h, m, *_ in malformed(header)]
    for i, (h, message) in enumerate(cases):
        path = st_file(tmp_path / f"m{i}.safetensors", h, data)
        with pytest.raises(FormatError, match=message):
            session.load(path, strict=False)
        assert_params(session, before)


def test_fine_tune_a_pretrained_trunk_with_a_new_head(tmp_path):
    import dlc
    trunk = """
model net {{
    input x: f32[batch, 4]
    h = dense(x, 8, name="trunk") |> relu
    output y = dense(h, {n}, name="{head}")
}}
"""
    old = dlc.compile(trunk.format(n=3, head="head"), seed=1)
    old.save(tmp_path / "pre.safetensors")
    new = dlc.compile(trunk.format(n=2, head="new_head"), seed=2)
    head = new.params["new_head.weight"].copy()
    assert new.load(tmp_path / "pre.safetensors", strict=False) == ["new_head.bias", "new_head.weight"]
    np.testing.assert_array_equal(new.params["trunk.weight"], old.params["trunk.weight"])
    np.testing.assert_array_equal(new.params["new_head.weight"], head)
