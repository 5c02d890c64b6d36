"""Embedding a compiled network in C: `dlc compile --emit=lib`, the generated
header's two layers against the Python API, the CMake package
(find_package(dlc), dlc_add_program re-running when the .dl changes), and
the whole CTest suite (runtime tests, C examples, fuzzer) under
AddressSanitizer and UndefinedBehaviorSanitizer."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlc
from dlc.cli import main as dlc_main
from dlc.runtime import find_library

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
INCLUDE = ROOT / "runtime" / "include"
CC = shutil.which("cc") or shutil.which("gcc")
CXX = shutil.which("c++") or shutil.which("g++")
needs_cmake = pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
STRICT = ["-Wall", "-Wextra", "-pedantic", "-Werror"]


def run(cmd, **kw):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert done.returncode == 0, f"{cmd}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def moons_lib(tmp_path_factory):
    out = tmp_path_factory.mktemp("lib")
    assert dlc_main(["compile", str(ROOT / "examples" / "moons.dl"), "--emit=lib",
                     "-o", str(out / "moons")]) == 0
    return out


def test_emit_lib_writes_library_archive_and_header(moons_lib):
    assert {p.name for p in moons_lib.iterdir()} == {"moons.so", "libmoons.a", "moons.h"}
    # The .so is a program library like --emit=so's: the runtime loads it.
    prog = dlc.runtime.load_program(moons_lib / "moons.so")
    assert list(prog.entries) == ["moons", "fit", "fit.grads", "fit.input_grads", "fit.apply"]
    # The archive: the program object, exporting its descriptor under its own
    # name, and the typed functions; the no-malloc object needs no runtime.
    symbols = run(["nm", "-A", moons_lib / "libmoons.a"])
    defined = {line.split()[-1] for line in symbols.splitlines() if " T " in line}
    assert {"moons_program", "moons_open", "moons_moons", "moons_fit", "moons_fit_grads",
            "moons_moons_run", "moons_fit_run", "moons_moons_workspace_bytes",
            "moons_init_weights", "moons_load_weights"} <= defined
    assert "dlc_program" not in defined
    bare = [line for line in symbols.splitlines() if "moons_bare.o" in line and " U " in line]
    assert not [line for line in bare if "dlc_" in line], bare
    text = (moons_lib / "moons.h").read_text()
    assert "dlc_status moons_fit(dlc_session *session, int64_t batch, const float *x, " \
           "const int32_t *t, float *loss);" in text
    assert "#define MOONS_MOONS_X_BYTES(batch) ((size_t)(batch) * (size_t)2 * (size_t)4)" in text
    assert "#define MOONS_WEIGHTS_BYTES 3008" in text


@pytest.mark.parametrize("compiler,flags", [(CC, ["-x", "c", "-std=c11"]),
                                            (CXX, ["-x", "c++", "-std=c++11"])])
def test_generated_header_is_strict_c_and_cxx(moons_lib, compiler, flags):
    if compiler is None:
        pytest.skip("no C or C++ compiler (cc, c++, gcc, g++) on the PATH")
    run([compiler, *flags, *STRICT, "-fsyntax-only", f"-I{INCLUDE}", moons_lib / "moons.h"])


def test_typed_functions_match_python(moons_lib, tmp_path):
    """Session and no-malloc layers agree with each other and with Python;
    bad use returns statuses and messages."""
    lib = find_library()
    exe = tmp_path / "use_moons"
    run([CC, "-std=c11", *STRICT, f"-I{moons_lib}", f"-I{INCLUDE}", HERE / "use_moons.c",
         moons_lib / "libmoons.a", lib, f"-Wl,-rpath,{lib.parent}", "-lm", "-o", exe])
    out = run([exe, tmp_path]).splitlines()
    assert out[-1].endswith(" passed, 0 failed"), out[-1]
    logits = np.array([[float(v) for v in line.split()] for line in out[:-1]], np.float32)
    x = np.array([[0.1, 0.2], [1.0, -0.5], [2.0, 0.3], [-1.0, 0.5], [0.5, 0.25]], np.float32)
    prog = dlc.compile(ROOT / "examples" / "moons.dl", seed=0)
    np.testing.assert_allclose(logits, prog.run("moons", x=x)["logits"], rtol=1e-5, atol=1e-6)


TWO = """
model two {
    input float: f32[n, 3]
    input k: f32[m, 3]
    output y = dense(float, 2, name="fc")
    output z = dense(k, 2, name="fc.2")
}
"""
DRIVE_TWO = r"""
#include <stdio.h>
#include "two.h"
int main(void) {
  float a[2 * 3] = {1, 2, 3, 4, 5, 6}, b[3 * 3] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, y[4], z[6];
  dlc_program *p; dlc_session *s;
  if (two_open(&p) || dlc_session_create(p, NULL, &s) || two_two(s, 2, 3, a, b, y, z))
    return 1;
  for (int i = 0; i < 4; i++) printf("%.9g\n", y[i]);
  for (int i = 0; i < 6; i++) printf("%.9g\n", z[i]);
  return TWO_TWO_Z_BYTES(2, 3) != sizeof z || TWO_FC_2_BIAS_OFFSET != 192;
}
"""


def test_two_symbols_and_c_names(tmp_path, moons_lib):
    """Symbols in declaration order, .dl names that are C keywords or hold
    dots, the generated sources clean under -Werror, and two programs linked
    whole into one binary without clashing symbols."""
    from dlc import driver
    from dlc.codegen import header
    (tmp_path / "two.dl").write_text(TWO)
    assert dlc_main(["compile", str(tmp_path / "two.dl"), "--emit=lib", "-o", str(tmp_path / "two")]) == 0
    text = (tmp_path / "two.h").read_text()
    assert ("dlc_status two_two(dlc_session *session, int64_t n, int64_t m, const float *float_, "
            "const float *k, float *y, float *z);") in text
    art = driver.build(TWO, "two.dl")
    for name, source in (("session", header.session_source), ("bare", header.bare_source)):
        (tmp_path / f"{name}.c").write_text(source(header.Interface("two", "two.dl", art.loops, art.entries)))
        run([CC, "-std=c11", *STRICT, "-c", f"-I{tmp_path}", f"-I{INCLUDE}", tmp_path / f"{name}.c",
             "-o", tmp_path / f"{name}.o"])
    (tmp_path / "drive.c").write_text(DRIVE_TWO)
    lib = find_library()
    run([CC, "-std=c11", *STRICT, f"-I{tmp_path}", f"-I{INCLUDE}", tmp_path / "drive.c",
         "-Wl,--whole-archive", tmp_path / "libtwo.a", moons_lib / "libmoons.a",
         "-Wl,--no-whole-archive", lib, f"-Wl,-rpath,{lib.parent}", "-lm", "-o", tmp_path / "drive"])
    out = np.array(run([tmp_path / "drive"]).split(), np.float32)
    prog = dlc.compile(TWO)
    a = np.arange(1, 7, dtype=np.float32).reshape(2, 3)
    expected = prog.run("two", float=a, k=np.eye(3, dtype=np.float32))
    np.testing.assert_allclose(out[:4], expected["y"].ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[4:], expected["z"].ravel(), rtol=1e-5, atol=1e-6)


def cmake_env():
    # dlc_add_program runs this checkout's compiler, like the `dlc` command.
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@needs_cmake
def test_find_package_and_dlc_add_program(tmp_path):
    """Install the runtime, build an application against the package, and
    check that editing the .dl file recompiles and relinks it."""
    build, prefix, app = tmp_path / "build", tmp_path / "prefix", tmp_path / "app"
    run(["cmake", "-S", ROOT, "-B", build, "-DDLC_BUILD_TESTS=OFF", "-DDLC_BUILD_EXAMPLES=OFF"])
    run(["cmake", "--build", build, "-j2"])
    run(["cmake", "--install", build, "--prefix", prefix])
    app.mkdir()
    shutil.copy(HERE / "consumer.c", app)
    (app / "tiny.dl").write_text((HERE / "tiny.dl").read_text())
    (app / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.20)\nproject(app C)\n"
        "find_package(dlc 0.1 REQUIRED)\n"
        "dlc_add_program(NAME tiny SOURCE tiny.dl)\n"
        "add_executable(consumer consumer.c)\n"
        "target_link_libraries(consumer PRIVATE tiny)\n")
    command = f"{sys.executable};-m;dlc.cli"
    run(["cmake", "-S", app, "-B", app / "build", f"-DCMAKE_PREFIX_PATH={prefix}",
         f"-DDLC_COMMAND={command}"], env=cmake_env())
    run(["cmake", "--build", app / "build"], env=cmake_env())
    first = run([app / "build" / "consumer"]).split()
    assert first[0] == "32" and len(first) == 1 + 8
    run(["cmake", "--build", app / "build"], env=cmake_env())  # up to date: no change
    (app / "tiny.dl").write_text((HERE / "tiny.dl").read_text().replace("dense(x, 2", "dense(x, 5"))
    log = run(["cmake", "--build", app / "build"], env=cmake_env())
    assert "dlc: compiling" in log
    second = run([app / "build" / "consumer"]).split()
    assert second[0] == "80" and len(second) == 1 + 20


@needs_cmake
def test_ctest_under_sanitizers(tmp_path):
    """The runtime's C tests, the C examples and a bounded fuzz run of the
    safetensors reader, all under ASan and UBSan: clean."""
    build = tmp_path / "build"
    run(["cmake", "-S", ROOT, "-B", build, "-DDLC_SANITIZE=ON", "-DDLC_FUZZ_SECONDS=20",
         "-DCMAKE_BUILD_TYPE=Debug"])
    run(["cmake", "--build", build, "-j2"])
    # ASan in the C programs only; the Python in check.py runs without it.
    out = run(["ctest", "--test-dir", build, "--output-on-failure", "-V"],
              env={**os.environ, "ASAN_OPTIONS": "detect_leaks=1"})
    assert "100% tests passed" in out
    for name in ("runtime_c", "fuzz_safetensors", "example_classify", "example_train"):
        assert re.search(rf"Test +#\d+: {name} \.+ +Passed", out), name
    fuzz = next(line for line in out.splitlines() if "fuzz_safetensors:" in line and "inputs" in line)
    print(fuzz)
    assert fuzz.endswith(" 0 crashes")
