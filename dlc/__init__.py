"""dlc: a compiler for neural networks written in a small language.

    import dlc
    prog = dlc.compile("examples/moons.dl")
    prog.train("fit", x=X, t=T)
"""
__version__ = "0.1.0"

from .api import CompiledProgram, compile  # noqa: E402
from .errors import CompileError, DlcError  # noqa: E402

__all__ = ["compile", "CompiledProgram", "CompileError", "DlcError", "__version__"]
