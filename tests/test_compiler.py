"""The compiler's parallel build: a program's modules (the descriptor and
entries, one per kernel), each optimized and compiled by whichever process
takes it first, as the renderer makes them, give a library that computes
what the one-module build computes and exports only dlc_program."""
import ctypes
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from dlc import driver
from dlc.api import CompiledProgram
from dlc.codegen import compiler, library
from dlc.errors import DlcError, InternalError
from dlc.ir import loops as L

SRC = """
model cnn {
    input x: f32[batch, 3, 12, 12]
    h = conv2d(x, 8, 3, padding=1, name="c1") |> relu |> maxpool(2)
    h = conv2d(h, 8, 3, name="c2") |> relu |> flatten
    output y = dense(h, 4, name="fc")
}
train fit {
    input x: f32[batch, 3, 12, 12]
    input t: i32[batch]
    loss = cross_entropy(cnn(x), t)
    optimizer = sgd(lr=0.1, momentum=0.9)
}
"""


@pytest.fixture(scope="module")
def art():
    return driver.build(SRC)


def test_builds_use_a_process_per_core_or_dlc_compile_jobs(monkeypatch):
    monkeypatch.setenv("DLC_COMPILE_JOBS", "3")
    assert compiler.default_jobs() == 3
    monkeypatch.setenv("DLC_COMPILE_JOBS", "1")
    assert compiler.default_jobs() == 1
    monkeypatch.delenv("DLC_COMPILE_JOBS")
    assert compiler.default_jobs() == len(os.sched_getaffinity(0))


def test_every_kernel_is_compiled_once_by_one_of_the_processes(art, tmp_path):
    with compiler.Build(tmp_path, jobs=3) as build:
        for text in art.llvm_modules[1:]:
            build.add(text)
        objects = build.objects(art.llvm_modules[0])
        assert len(build.workers) == 2
    assert len(objects) == len(art.llvm_modules) and all(p.stat().st_size > 0 for p in objects)
    taken = [p.name for p in tmp_path.glob("*.ll.*")]   # n.ll.<pid of the process that took it>
    assert sorted(int(name.split(".")[0]) for name in taken) == list(range(len(art.llvm_modules) - 1))


def test_a_library_built_while_rendering_is_the_library_built_after(tmp_path, monkeypatch):
    """driver.build's sink: the kernels compiled as they are made give the
    cached library the same key, and the same numbers."""
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "build").mkdir()
    with compiler.Build(tmp_path / "build") as build:
        streamed = driver.build(SRC, sink=build.add)
        assert build.count == len(streamed.llvm_modules) - 1
        lib = compiler.shared_library(streamed.llvm_modules, build=build)
    assert compiler.shared_library(driver.build(SRC).llvm_modules) == lib   # cached: same IR


@pytest.mark.parametrize("jobs", [2, 3])
def test_parallel_build_computes_what_one_module_computes(art, jobs, tmp_path, monkeypatch):
    def program(jobs):
        monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path / f"jobs{jobs}"))
        lib = compiler.shared_library(art.llvm_modules, jobs=jobs)
        return lib, CompiledProgram(art.graph, lib, 0, 2, loops=art.loops)

    (_, one), (lib, split) = program(1), program(jobs)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 12, 12)).astype(np.float32)
    t = rng.integers(0, 4, size=5).astype(np.int32)
    np.testing.assert_array_equal(one.run("cnn", x=x)["y"], split.run("cnn", x=x)["y"])
    for _ in range(2):
        assert one.train("fit", x=x, t=t) == split.train("fit", x=x, t=t)
    for name, p in one.params.items():
        np.testing.assert_array_equal(p, split.params[name], err_msg=name)
    so = ctypes.CDLL(str(lib))
    so["dlc_program"]
    kernel = re.search(r'define hidden void @"(dlc\.kernel\.[^"]+)"', art.llvm_modules[1])[1]
    with pytest.raises(AttributeError):
        so[kernel]   # hidden: linked into the library, not exported


def test_one_module_emits_kernels_as_internal_functions(art):
    text = compiler.emit(art.llvm_modules, "ll").decode()
    assert re.search(r'^define internal .*@"?dlc\.kernel\.', text, re.MULTILINE)
    assert not any(line.startswith(("define hidden", "declare hidden")) for line in text.splitlines())


def test_a_module_llvm_rejects_is_an_internal_error(art, tmp_path):
    """Whichever process takes it: a worker (first in line) or this one."""
    bad = art.llvm_modules[:1] + ["define void @broken() {\n  ret i32 0\n}\n"] + art.llvm_modules[1:]
    with pytest.raises(InternalError, match="LLVM worker process failed|LLVM rejected a module"):
        compiler.object_files(bad, tmp_path, jobs=3)


def test_archive_of_a_parallel_build_exports_no_kernel(art, tmp_path, monkeypatch):
    """--emit=lib: kernels, global between the parts of a parallel build,
    are local in the archive (two programs in one binary may name kernels
    alike); the descriptor is <name>_program."""
    monkeypatch.setattr(compiler, "default_jobs", lambda: 3)
    _, archive, _ = library.write_library(art, "cnn.dl", tmp_path / "cnn")
    symbols = subprocess.run(["nm", "--defined-only", str(archive)], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    kernels = [line.split() for line in symbols if "dlc.kernel." in line]
    assert kernels and all(kind.islower() for _, kind, _ in kernels), kernels
    assert any(line.endswith(" T cnn_program") for line in symbols)


MOONS = """
model m {
    input x: f32[batch, 2]
    output y = dense(x, 3, name="fc") |> relu
}
"""


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "foreign"])
def test_a_damaged_cached_library_is_rebuilt(damage, tmp_path, monkeypatch):
    """A cached library that is cut short (dlopen had mapped past its end:
    SIGBUS), empty, overwritten, or another valid library under the name
    fails its seal and is rebuilt, and the program runs."""
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path))
    modules = driver.build(MOONS).llvm_modules
    path = compiler.shared_library(modules)
    good = path.read_bytes()
    assert compiler.sealed(good)
    broken = {"truncated": good[:len(good) // 2], "empty": b"", "garbage": b"\x7fELF" + b"\0" * 999,
              "foreign": good[:-compiler.SEAL_BYTES]}[damage]
    path.write_bytes(broken)
    assert compiler.shared_library(modules) == path
    assert compiler.sealed(path.read_bytes())
    x = np.ones((2, 2), np.float32)
    y = CompiledProgram(driver.build(MOONS).graph, path, 0, 1).run("m", x=x)["y"]
    assert y.shape == (2, 3) and np.isfinite(y).all()
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "a temporary file was left behind"


def test_processes_building_one_library_at_once_leave_an_intact_one(tmp_path):
    """Four processes compile the same program into an empty cache at the
    same time: each renames its own whole file into place."""
    script = ("import dlc, numpy as np; p = dlc.compile(%r); "
              "print(p.run('m', x=np.ones((1, 2), np.float32))['y'].shape)" % MOONS)
    env = dict(__import__("os").environ, DLC_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and out.strip() == "(1, 3)", err
    libs = list(tmp_path.iterdir())
    assert len(libs) == 1 and compiler.sealed(libs[0].read_bytes())


def test_an_unusable_cache_directory_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path / "file" / "cache"))
    with pytest.raises(DlcError, match="cannot use the compile cache .*DLC_CACHE_DIR"):
        compiler.shared_library(driver.build(MOONS).llvm_modules)


PORTABLE = "x86-64-v3"   # AVX2 and FMA: every x86-64 machine of the last decade


def test_a_named_cpu_sizes_the_vectors_and_builds_its_code(art):
    """cpu='x86-64-v3' on any host: 32-byte vectors in the loop IR and no
    AVX-512 instruction in the code; the host's own build uses its widest
    registers (zmm where it has AVX-512)."""
    assert compiler.vector_registers(PORTABLE) == (32, 16)
    portable = driver.build(SRC, cpu=PORTABLE)
    lanes = {lp.extent.value for e in portable.loops.entries for k in e.kernels
             for lp in L.stmts_of(k.body) if isinstance(lp, L.For) and lp.kind == "vectorized"
             and isinstance(lp.extent, L.Const)}
    assert max(lanes) == 8
    asm = compiler.emit(portable.llvm_modules, "asm", PORTABLE).decode()
    assert "ymm" in asm and "zmm" not in asm
    if compiler.vector_registers() == (64, 32):
        assert "zmm" in compiler.emit(art.llvm_modules, "asm").decode()


def test_dlc_cpu_selects_the_cpu_and_the_numbers_stay(monkeypatch):
    """DLC_CPU is the default of dlc.compile(cpu=...): the portable library
    computes what the host's computes (forward, one training step)."""
    import dlc
    host = dlc.compile(SRC)
    monkeypatch.setenv("DLC_CPU", PORTABLE)
    assert compiler.selected_cpu() == PORTABLE
    portable = dlc.compile(SRC)
    assert portable.library != host.library
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 3, 12, 12)).astype(np.float32)
    t = rng.integers(0, 4, size=5).astype(np.int32)
    np.testing.assert_allclose(portable.run("cnn", x=x)["y"], host.run("cnn", x=x)["y"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(portable.train("fit", x=x, t=t), host.train("fit", x=x, t=t), rtol=1e-5)
