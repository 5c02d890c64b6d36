"""Memory planning (`plan_memory`, `layout`): buffers share a slot only when
their lifetimes do not overlap; the slots share memory only where that saves
more than SHARING_MIN_SAVING bytes, else each buffer has a region of its own;
the compiled workspace function computes the same layout."""
import numpy as np

from dlc import api
from dlc.ir import loops as L
from dlc.passes.loop_memory import SHARING_MIN_SAVING, layout
from dlc.runtime import _runtime, ffi

from .helpers import compile_without, loops_after

SRC = """
model cnn {
    input x: f32[batch, 3, 16, 16]
    h = conv2d(x, 16, 3, padding=1, name="c1") |> relu
    h = conv2d(h, 16, 3, padding=1, name="c2") |> relu |> maxpool(2)
    output y = dense(flatten(h), 10, name="fc")
}
"""


def regions(entry, batch):
    offsets, total = layout(entry)
    syms = {"batch": batch}
    at = [L.evaluate(e, syms) for e in offsets]
    size = [L.evaluate(b.size, syms) * L.DTYPE_BYTES[b.dtype] for b in entry.workspace]
    return at, size, L.evaluate(total, syms)


def lifetimes(entry):
    first, last = {}, {}
    for k, kernel in enumerate(entry.kernels):
        for buf in L.buffers_of(kernel.body):
            if buf.kind == "workspace":
                first.setdefault(buf.index, k)
                last[buf.index] = k
    return first, last


def test_slot_mates_do_not_overlap_in_time():
    entry = loops_after(SRC, "plan_memory").entries[0]
    first, last = lifetimes(entry)
    slots = entry.slots()
    assert len(slots) < len(entry.workspace)   # something is shared
    for slot in slots:
        spans = sorted((first[b.index], last[b.index]) for b in slot)
        assert all(a[1] < b[0] for a, b in zip(spans, spans[1:])), spans


def test_buffers_have_their_own_regions_unless_sharing_saves_enough():
    entry = loops_after(SRC, "plan_memory").entries[0]
    first, last = lifetimes(entry)
    for batch in (1, 2048):
        at, size, total = regions(entry, batch)
        assert all(a % L.ALIGNMENT == 0 for a in at) and all(a + s <= total for a, s in zip(at, size))
        own = sum(-(-s // L.ALIGNMENT) * L.ALIGNMENT for s in size)
        if batch == 1:
            # each buffer its own region, disjoint from every other
            assert total == own
            ends = sorted(zip(at, size))
            assert all(a + s <= b for (a, s), (b, _) in zip(ends, ends[1:]))
        else:
            assert own - total > SHARING_MIN_SAVING
            # overlapping regions belong to buffers that are not live together
            for i in range(len(at)):
                for j in range(i):
                    if at[i] < at[j] + size[j] and at[j] < at[i] + size[i]:
                        assert last[i] < first[j] or last[j] < first[i]


def test_compiled_workspace_function_agrees():
    prog = compile_without(SRC)
    entry = prog.loops.entries[0]
    pdesc = ffi.new("const dlc_program_desc **")
    assert _runtime().dlc_program_descriptor(prog._runtime._ptr, pdesc) == 0
    compiled = pdesc[0].entries[0].workspace_bytes
    for batch in (1, 7, 2048):
        assert compiled(ffi.new("int64_t[1]", [batch])) == api.workspace_bytes(entry, {"batch": batch})
    x = np.random.default_rng(0).normal(size=(2048, 3, 16, 16)).astype(np.float32)
    whole = prog.run("cnn", x=x)["y"]   # slots shared
    np.testing.assert_allclose(prog.run("cnn", x=x[:1])["y"], whole[:1], rtol=1e-6, atol=1e-6)
