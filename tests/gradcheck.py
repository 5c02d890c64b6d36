"""Central finite differences of a train block's loss, parameter by
parameter, against its `grads` entry (programs in f64)."""
import numpy as np


def assert_param_grads_match(prog, inputs: dict, rtol: float, atol: float,
                             loss_model: str = "net", train: str = "fit", eps: float = 1e-6) -> None:
    """`loss_model` is a model of the program whose output `value` is the
    train block's loss on the same inputs; every gradient must be nonzero."""
    grads = prog.grads(train, **inputs)
    for pname, g in grads.items():
        p = prog.params[pname]
        fd = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + eps
            up = prog.run(loss_model, **inputs)["value"]
            p[i] = old - eps
            down = prog.run(loss_model, **inputs)["value"]
            p[i] = old
            fd[i] = (up - down) / (2 * eps)
        np.testing.assert_allclose(g, fd, rtol=rtol, atol=atol, err_msg=pname)
        assert np.abs(g).max() > 0, pname
