"""Fixtures for the runtime tests: fake program libraries compiled from
fake_program.c with the system C compiler, standing in for compiler output."""
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
INCLUDE = ROOT / "runtime" / "include"


def _compile(out: Path, source: Path, defines=()) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler to build the fake programs")
    cmd = [cc, "-shared", "-fPIC", "-O1", "-Wall", "-Werror", f"-I{INCLUDE}",
           *(f"-D{d}" for d in defines), str(source), "-o", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return out


@pytest.fixture(scope="session")
def build_fake(tmp_path_factory):
    """build_fake(name, *defines) -> path of fake_program.c built with them."""
    out_dir = tmp_path_factory.mktemp("fake_programs")
    cache = {}

    def build(name: str, *defines: str) -> Path:
        if name not in cache:
            cache[name] = _compile(out_dir / f"{name}.so", HERE / "fake_program.c", defines)
        return cache[name]

    return build


@pytest.fixture(scope="session")
def fake_path(build_fake) -> Path:
    return build_fake("fake")


@pytest.fixture(scope="session")
def program(fake_path):
    from dlc.runtime import load_program
    return load_program(fake_path)


@pytest.fixture
def session(program):
    return program.session(seed=1)
