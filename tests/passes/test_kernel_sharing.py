"""kernel_sharing: the per-kernel loop passes transform one kernel of each
structure, and every entry gets its kernels back, on its own buffers."""
from __future__ import annotations

import io

from dlc import driver, frontend
from dlc.ir import loops as L
from dlc.ir.structure import Structure
from dlc.lower import lower
from dlc.passes.kernel_sharing import share, unshare

from .helpers import CONV_TRAIN_SRC


def lowered(src: str) -> L.LoopProgram:
    program = frontend.parse_program(src, "<test>")
    for _, p in driver.graph_passes("cpu"):
        program = p(program)
    return lower(program, "cpu")[0]


def global_buffers(k: L.Kernel) -> set[L.Buffer]:
    return {b for b in L.buffers_of(k.body) if b.kind != "local"}


def test_one_kernel_of_each_structure_is_kept():
    loops = lowered(CONV_TRAIN_SRC)
    shared, _ = share(loops)
    table: dict = {}
    structures = {Structure(set(loops.syms), table).stmt(k.body) for e in loops.entries for k in e.kernels}
    total = sum(len(e.kernels) for e in loops.entries)
    kept = sum(len(e.kernels) for e in shared.entries)
    assert kept == len(structures)
    # The grads, input_grads and apply entries repeat the train step's kernels.
    assert kept < total * 0.6, (kept, total)


def test_kernels_come_back_in_order_on_their_own_buffers():
    loops = lowered(CONV_TRAIN_SRC)
    shared, sharing = share(loops)
    for name, p in driver.LOOP_PASSES["cpu"]:
        if name in driver.PER_KERNEL_PASSES:
            shared = p(shared)
    whole, _ = unshare(shared, sharing)
    L.verify(whole, "unshare")
    table: dict = {}
    key = lambda k: Structure(set(loops.syms), table).stmt(k.body)
    kept = {key(k) for e in shared.entries for k in e.kernels}
    for before, after in zip(loops.entries, whole.entries):
        assert [k.name for k in after.kernels] == [k.name for k in before.kernels]
        for k0, k1 in zip(before.kernels, after.kernels):
            assert global_buffers(k1) == global_buffers(k0), (after.name, k1.name)
            assert key(k1) in kept   # a transformed kernel, not the lowered one


def test_ir_dumps_between_per_kernel_passes_show_every_kernel():
    dumps = {}
    for upto in ("vectorize", "plan_memory"):
        out = io.StringIO()
        driver.build(CONV_TRAIN_SRC, dump_after=upto, out=out)
        dumps[upto] = out.getvalue()
    count = lambda text: sum(line.lstrip().startswith("kernel ") for line in text.splitlines())
    assert count(dumps["vectorize"]) == count(dumps["plan_memory"]) > 0
