"""Loading program libraries: introspection of the descriptor, and every way
a library can be refused (missing, not a library, no symbol, wrong ABI,
inconsistent descriptor)."""
import pytest

from dlc.codegen.render import ABI_VERSION
from dlc.errors import AbiError, FormatError, InvalidArgumentError, NotFoundError
from dlc.runtime import EntryInfo, TensorInfo, load_program


def test_introspection(program):
    assert program.syms == ["batch"]
    names = [(t.name, t.role) for t in program.tensors]
    assert names[:6] == [("W", "param"), ("b", "param"), ("emb.weight", "param"),
                         ("scale", "param"), ("count", "param"), ("W.momentum", "state")]
    w = program.tensors[0]
    assert w == TensorInfo("W", "param", "f32", (2, 3), "uniform", -0.5, 0.5)
    assert program.tensors[3].dtype == "f64" and program.tensors[3].init == "normal"
    assert program.tensors[4].dtype == "i32" and program.tensors[4].init == "ones"
    assert list(program.entries) == ["model", "fit", "fit.grads", "boom", "pick"]
    model = program.entries["model"]
    assert isinstance(model, EntryInfo) and model.kind == "infer"
    assert [t.name for t in model.inputs] == ["x"]
    assert model.inputs[0].dims == ("batch", 3)
    assert [(t.name, t.dims) for t in model.outputs] == [("y", ("batch", 2))]
    assert program.entries["fit"].kind == "train"
    grads = program.entries["fit.grads"]
    assert grads.kind == "grads"
    assert [(t.name, t.role, t.dims) for t in grads.outputs] == [
        ("loss", "output", ()), ("W", "output", (2, 3)), ("b", "output", (2,))]


def test_missing_file(tmp_path):
    with pytest.raises(NotFoundError, match="program library '.*nope.so' not found"):
        load_program(tmp_path / "nope.so")


def test_path_with_nul(fake_path):
    # C would have loaded the library named by the part before the NUL.
    with pytest.raises(InvalidArgumentError, match="contains a NUL character"):
        load_program(str(fake_path) + "\0.old")


def test_not_a_library(tmp_path):
    bogus = tmp_path / "bogus.so"
    bogus.write_text("not an ELF file")
    with pytest.raises(FormatError, match="cannot load program library"):
        load_program(bogus)


def test_no_descriptor_symbol(tmp_path):
    import subprocess
    src = tmp_path / "plain.c"
    src.write_text("int not_a_program(void) { return 0; }\n")
    lib = tmp_path / "plain.so"
    subprocess.run(["cc", "-shared", "-fPIC", str(src), "-o", str(lib)], check=True)
    with pytest.raises(FormatError, match="is not a dlc program: it exports no 'dlc_program'"):
        load_program(lib)


def test_abi_mismatch(build_fake):
    path = build_fake("abi99", "FAKE_ABI_VERSION=99")
    with pytest.raises(AbiError) as err:
        load_program(path)
    assert "ABI version 99" in str(err.value)
    assert f"implements version {ABI_VERSION}" in str(err.value)


@pytest.mark.parametrize("bad, message", [
    (1, "param 'b' has symbolic dim 0 \\(batch\\); params and optimizer state must "
        "have fixed shapes"),
    (2, "tensor 'x' has unknown dtype 9"),
    (3, "entry 'model' input 0 is tensor 20, out of range"),
    (4, "tensor 8 has no name"),
    (5, "dlc_program\\(\\) returned NULL"),
    (6, "two entries are named 'model'"),
    (7, "output 'y' of entry 'boom' uses symbol 'batch', which none of its inputs binds"),
    (8, "tensor 'x' has rank 9; ranks go from 0 to 8"),
    (9, "entry 'model' lists tensor 'W' among its inputs, but its role is 0"),
    (10, "entry 'model' has no code"),
    (11, "tensor 'x' has a range of valid values, but ranges are for i32 inputs"),
    (12, "tensor 'len' has a range of valid values, .* \\(hi_sym 1\\)"),
])
def test_bad_descriptor(build_fake, bad, message):
    path = build_fake(f"bad{bad}", f"FAKE_BAD={bad}")
    with pytest.raises(FormatError, match=message):
        load_program(path)


def test_program_outlives_python_handle(fake_path):
    s = load_program(fake_path).session()
    import gc
    gc.collect()
    out = s.run("model", {"x": [[1.0, 2.0, 3.0]]})
    assert out["y"].shape == (1, 2)
