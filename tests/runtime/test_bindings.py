"""The bindings against the C side: the cffi declarations match the real
headers, a call stays cheap, and the C test suite (CTest) passes."""
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dlc import runtime

ROOT = Path(__file__).resolve().parents[2]


def test_cdef_structs_match_headers(tmp_path):
    """Built in API mode, cffi checks each struct's size and field offsets
    against the real headers when the type is first used."""
    import importlib.util
    from cffi import FFI
    ffi = FFI()
    ffi.cdef(runtime.CDEF)
    ffi.set_source("_dlc_cdef_check", '#include "dlc/runtime.h"',
                   include_dirs=[str(ROOT / "runtime" / "include")])
    so = ffi.compile(tmpdir=str(tmp_path))
    runtime._runtime()  # resolves the module's references to the runtime
    spec = importlib.util.spec_from_file_location("_dlc_cdef_check", so)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for struct in ("dlc_tensor", "dlc_tensor_desc", "dlc_entry_desc", "dlc_program_desc",
                   "dlc_session_options"):
        module.ffi.sizeof(struct)


def test_cdef_functions_match_headers(tmp_path):
    """Redeclaring each cdef prototype after the header: C rejects any that
    conflicts with the real declaration."""
    import re
    protos = re.findall(r"^(?:const )?\w+ \*?dlc_\w+\([^;]*\);", runtime.CDEF, re.M)
    assert len(protos) == 27
    src = tmp_path / "protos.c"
    src.write_text('#include "dlc/runtime.h"\n' + "\n".join(protos) + "\n")
    cc = shutil.which("cc") or shutil.which("gcc")
    done = subprocess.run([cc, "-fsyntax-only", "-Werror", f"-I{ROOT / 'runtime' / 'include'}",
                           str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_api_function_is_bound():
    import re
    text = (ROOT / "runtime" / "include" / "dlc" / "runtime.h").read_text()
    declared = set(re.findall(r"DLC_API [^(]*?\b(dlc_\w+)\(", text))
    assert declared and declared == set(re.findall(r"\b(dlc_\w+)\(", runtime.CDEF))


def test_run_overhead(session):
    x = {"x": np.ones((4, 3), np.float32)}
    for _ in range(100):
        session.run("model", x)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(1000):
            session.run("model", x)
        best = min(best, (time.perf_counter() - t0) / 1000)
    print(f"run overhead: {best * 1e6:.1f} us per call")
    assert best < 50e-6  # ~4 us on a quiet machine; generous for shared CI


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_ctest(tmp_path):
    build = tmp_path / "build"
    # The examples and a long fuzz run are tests/embed's (under sanitizers).
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug",
                 "-DDLC_BUILD_EXAMPLES=OFF", "-DDLC_FUZZ_SECONDS=2"],
                ["cmake", "--build", str(build), "-j2"],
                ["ctest", "--test-dir", str(build), "--output-on-failure"]):
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
