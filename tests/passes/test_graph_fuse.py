"""graph_fuse: the optimizer's arithmetic is computed inside the update kernel,
not stored to a parameter-sized buffer first, even where a value has several
readers (SGD's new momentum; Adam's moments), and the update's stores are
ordered so that its body is plain stores (no scalar temporaries), which
vectorizes. The numbers are test_optim_torch's."""
from __future__ import annotations

import pytest

from dlc.ir import loops as L

from .helpers import CONV_TRAIN_SRC, kernels, loops_after

OPTIMIZERS = {
    "sgd(lr=0.1, momentum=0.9)": ("momentum",),
    "adam(lr=0.01)": ("exp_avg", "exp_avg_sq"),
    "rmsprop(lr=0.01, momentum=0.9, centered=true)": ("square_avg", "grad_avg", "momentum"),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_optimizer_states_are_read_only_by_the_update_kernels(optimizer):
    src = CONV_TRAIN_SRC.replace("sgd(lr=0.1, momentum=0.9)", optimizer)
    fit = kernels(loops_after(src, "vectorize"), "fit")
    states = {f"fit.fc.weight.{s}" for s in OPTIMIZERS[optimizer]}
    readers = {name for name, k in fit.items()
               if any(b.name in states for b in L.buffers_of(k.body))}
    assert readers and all(name.startswith("update_") for name in readers), readers
    for name in readers:
        body = fit[name].body
        stored = {s.buf.name for s in L.stmts_of(body) if isinstance(s, L.Store)}
        assert states <= stored and "fc.weight" in stored
        assert not any(isinstance(s, L.Allocate) for s in L.stmts_of(body)), \
            f"{name} computes through scalar temporaries"
        assert any(isinstance(s, L.For) and s.kind == "vectorized" for s in L.stmts_of(body))
