"""A fixed sample of the fuzzer's programs, for CI: each seed's program is
compiled and checked against PyTorch and the metamorphic relations
(tests/fuzz/checks.py). A failure names its seed; rerun it alone with
`pytest tests/fuzz -k seed_17`, or print it with
`python -c "from tests.fuzz.generate import generate; from tests.fuzz.ir import emit; print(emit(generate(17, 'small'))[0])"`.

Longer runs, with delta-debugged reproducers: `python -m tests.fuzz --minutes 10`.
"""
import pytest
import torch

from .checks import check
from .generate import generate
from .ir import emit

SEEDS = range(50)
SIZE = "small"     # programs of ~1 s to compile; the CLI's default is "normal"
# Seeds whose failure is a known compiler issue being fixed: seed -> reason.
KNOWN: dict[int, str] = {}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed_{s}")
def test_fuzz_program(seed):
    if seed in KNOWN:
        pytest.xfail(KNOWN[seed])
    prog = generate(seed, SIZE)
    out = check(prog, seed)
    assert out.comparisons > 0 or out.failures
    if out.failures:
        lines = [str(f) for f in out.failures[:10]]
        pytest.fail(f"seed {seed}: {len(out.failures)} failures\n" + "\n".join(lines)
                    + "\n\n" + emit(prog)[0], pytrace=False)
