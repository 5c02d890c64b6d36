"""Every example and every op compiles to PTX that ptxas assembles, for
sm_80 and sm_90, and the CUDA target's passes and CLI behave."""
import re
import shutil
import subprocess

import pytest

from dlc import driver
from dlc.cli import main
from dlc.errors import DlcError
from dlc.ir import loops as L
from dlc.ops.base import REGISTRY
from dlc.passes.loop_gpu import BLOCKS, GRID, THREADS, map_to_gpu

from cuda_programs import DIGITS_MLP, EXAMPLES, PROGRAMS

ARCHS = ["sm_80", "sm_90"]
PTXAS = shutil.which("ptxas")
needs_ptxas = pytest.mark.skipif(PTXAS is None, reason="ptxas (CUDA toolkit) is not on PATH")


def assemble(ptx: str, arch: str, tmp_path) -> None:
    path = tmp_path / f"{arch}.ptx"
    path.write_text(ptx)
    r = subprocess.run([PTXAS, f"-arch={arch}", str(path), "-o", str(tmp_path / f"{arch}.cubin")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


SOURCES = {**{p.stem: p.read_text() for p in EXAMPLES}, **PROGRAMS}


@needs_ptxas
@pytest.mark.parametrize("name", sorted(SOURCES))
def test_ptx_assembles(name, tmp_path):
    for arch in ARCHS:
        art = driver.build(SOURCES[name], name, target="cuda", arch=arch)
        assert f".target {arch}" in art.ptx
        assemble(art.ptx, arch, tmp_path)


def test_programs_cover_every_op():
    used = set()
    for name, src in SOURCES.items():
        used |= set(re.findall(r"\b(\w+)\(", src))
        for fn in driver.build(src, name).graph.functions.values():
            used |= {n.op.name for n in fn.nodes}
    missing = sorted(set(REGISTRY) - used)
    assert not missing, f"add a program using {', '.join(missing)} to tests/cuda/programs.py"


def ev(e: L.Expr, env: dict):
    """The value of an integer loop-IR expression."""
    if isinstance(e, L.Const):
        return e.value
    if isinstance(e, L.Var):
        return env[e]
    if isinstance(e, L.Cast):
        return ev(e.value, env)
    a, b = ev(e.a, env), ev(e.b, env)
    return {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}[e.op](a, b)


def test_map_gpu_binds_every_kernel_to_the_grid():
    from tests.passes.helpers import loops_after
    unmapped = loops_after(PROGRAMS["cross_entropy"], "plan_memory", target="cuda")
    mapped = map_to_gpu(unmapped)
    L.verify(mapped, "map_gpu")
    syms = {v: 7 for v in unmapped.syms}
    for entry, before in zip(mapped.entries, unmapped.entries):
        for k, k0 in zip(entry.kernels, before.kernels):
            assert isinstance(k.body, L.For) and k.body.kind in (GRID, BLOCKS)
            # One grid loop per kernel, every loop inside serial per thread;
            # or a sum over the batch (the loss): a block per output.
            inner = [s for s in L.stmts_of(k.body.body) if isinstance(s, L.For)]
            assert all(s.kind == "serial" for s in inner) if k.body.kind == GRID else \
                any(isinstance(s, L.Barrier) for s in L.stmts_of(k.body))
            # The grid covers the kernel's outer loop nest (a loss: one output).
            threads, s = 1, k0.body
            while isinstance(s, L.For):
                threads *= ev(s.extent, syms)
                s = s.body
            assert ev(k.body.extent, syms) == threads


def test_map_gpu_spreads_a_recurrence_over_a_block():
    """A kernel whose independent loop (the batch) encloses the time steps
    is a block per batch slice; each step's nests are spread over the
    block's threads with barriers between them, the time loop uniform. A
    kernel that packs a weight and then uses it is split in two."""
    from tests.passes.helpers import loops_after
    unmapped = loops_after(PROGRAMS["sequence"], "plan_memory", target="cuda")
    mapped = map_to_gpu(unmapped)
    L.verify(mapped, "map_gpu")
    kernels = [k for e in mapped.entries for k in e.kernels]
    assert len(kernels) > sum(len(e.kernels) for e in unmapped.entries)
    assert not any(isinstance(k.body, L.Seq) for k in kernels)
    scans = [k for k in kernels if k.body.kind == BLOCKS
             and not any(b.kind == "shared" for b in L.buffers_of(k.body))]   # not a sum's tree
    assert scans
    for k in scans:
        stmts = list(L.stmts_of(k.body.body))
        serial = [s for s in stmts if isinstance(s, L.For) and s.kind == "serial"
                  and any(isinstance(x, L.Barrier) for x in L.stmts_of(s.body))]
        assert serial, k.name   # the time loop, barriers inside
        assert any(isinstance(s, L.For) and s.kind == THREADS for s in stmts)


def test_map_gpu_sums_long_reductions_in_a_block():
    """A bias gradient (few outputs, batch x pixels terms) is a block per
    output: strided partial sums, then a tree in shared memory."""
    from tests.passes.helpers import loops_after
    mapped = map_to_gpu(loops_after(PROGRAMS["cnn"], "plan_memory", target="cuda"))
    reductions = [k for e in mapped.entries for k in e.kernels if k.body.kind == BLOCKS
                  and any(b.kind == "shared" and b.name.startswith("partial")
                          for b in L.buffers_of(k.body))]
    assert reductions
    for k in reductions:
        barriers = [s for s in L.stmts_of(k.body) if isinstance(s, L.Barrier)]
        assert len(barriers) == 1 + 8   # after the partial sums, after each of log2(256) levels


def test_map_gpu_index_recovery():
    """gid -> (i, j, k) is row-major: the substituted index equals gid."""
    from dlc.passes.loop_gpu import map_kernel
    i, j, k = L.Var("i"), L.Var("j"), L.Var("k")
    buf = L.Buffer("out", "i32", "tensor", 0, L.Const(60, L.INDEX))
    flat = (i * 4 + j) * 5 + k
    body = L.For(i, L.Const(3, L.INDEX), L.For(j, L.Const(4, L.INDEX), L.For(k, L.Const(5, L.INDEX),
                 L.Store(buf, flat, L.Cast(flat, "i32")))))
    mapped = map_kernel(body)
    assert isinstance(mapped, L.For) and mapped.kind == GRID and mapped.extent.value == 60
    for gid in range(60):
        assert ev(mapped.body.index, {mapped.var: gid}) == gid


def test_emit_ptx_cli(tmp_path, capsys):
    out = tmp_path / "moons.ptx"
    assert main(["compile", str(DIGITS_MLP), "--target", "cuda", "--emit", "ptx",
                 "--arch", "sm_90", "-o", str(out)]) == 0
    assert ".target sm_90" in out.read_text()
    assert main(["compile", str(DIGITS_MLP), "--emit", "ptx", "-o", str(out)]) == 1
    assert "--emit ptx needs --target cuda" in capsys.readouterr().err
    assert main(["compile", str(DIGITS_MLP), "--target", "cuda", "--arch", "gfx90a",
                 "--emit", "ptx", "-o", str(out)]) == 1
    assert "unknown CUDA architecture 'gfx90a'" in capsys.readouterr().err
    assert main(["compile", str(DIGITS_MLP), "--target", "cuda", "--emit", "lib",
                 "-o", str(tmp_path / "m")]) == 1
    assert "--emit lib builds for --target cpu only" in capsys.readouterr().err


def test_cuda_host_library_builds(tmp_path):
    """--target cuda --emit so: the host library with the PTX inside."""
    out = tmp_path / "m.so"
    assert main(["compile", str(DIGITS_MLP), "--target", "cuda", "-o", str(out)]) == 0
    data = out.read_bytes()
    assert b"dlc_cuda_program" in data and b".target sm_80" in data


def test_unknown_target():
    with pytest.raises(DlcError, match="unknown target 'tpu'"):
        driver.build(PROGRAMS["math"], "math", target="tpu")


def test_tile_gpu_tiles_matmuls_only():
    """Dense layers and their gradients (sums over k of A * B, A free of the
    output's column, B of its row) get shared-memory tiles with barriers;
    elementwise kernels and other reductions stay for map_gpu."""
    from dlc.passes.loop_gpu import BLOCKS, THREADS, tile_matmuls
    from tests.passes.helpers import loops_after
    before_tiling = loops_after(DIGITS_MLP.read_text(), "plan_memory", target="cuda")
    tiled = tile_matmuls(before_tiling)
    L.verify(tiled, "tile_gpu")
    tiled_count = {}
    for entry, before in zip(tiled.entries, before_tiling.entries):
        tiled_count[entry.name] = 0
        for k, k0 in zip(entry.kernels, before.kernels):
            if k.body is k0.body:
                assert not any(isinstance(s, L.Barrier) for s in L.stmts_of(k.body))
                continue
            assert not k0.name.startswith(("sum", "neg", "div", "update")), k0.name
            tiled_count[entry.name] += 1
            assert k.body.kind == BLOCKS and k.body.body.kind == THREADS
            stmts = list(L.stmts_of(k.body))
            assert sum(isinstance(s, L.Barrier) for s in stmts) == 2
            shared = {b for b in L.buffers_of(k.body) if b.kind == "shared"}
            assert len(shared) == 2 and all(b.size.value == 16 * 17 for b in shared)
    # 3 dense layers forward; training adds 3 weight and 2 input gradients
    # (fit fuses the relu masks into them); input_grads adds the input's;
    # apply has no product.
    assert tiled_count == {"digits": 3, "fit": 8, "fit.grads": 8, "fit.input_grads": 9, "fit.apply": 0}
    ptx = driver.build(DIGITS_MLP.read_text(), "digits", target="cuda").ptx
    assert "bar.sync" in ptx and ".shared" in ptx
