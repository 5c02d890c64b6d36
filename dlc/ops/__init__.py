"""The op registry: importing this package registers every op.

One op = one class in one module, holding its signature, shape rule,
gradient rule, lowering and NumPy reference (see base.Op)."""
from . import conv, dropout, elementwise, index, loss, nn, norm, packed, pool, reduce, sequence, shape, slicing, upsample, winograd  # noqa: F401  (registration)
from .base import REGISTRY, Arg, Op, OpError, bind
from .optim import OPTIMIZERS

__all__ = ["REGISTRY", "Arg", "Op", "OpError", "bind", "OPTIMIZERS"]
