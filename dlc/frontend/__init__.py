"""The frontend: .dl source text to the graph IR.

    parse(source, file)          -> ast.Module     (--emit=ast; ast.unparse prints it)
    parse_program(source, file)  -> ir.graph.Program

Both raise dlc.errors.CompileError, whose diagnostics point into the source.
"""
from __future__ import annotations

from ..ir.graph import Program
from .ast import unparse
from .check import check
from .parser import parse


def parse_program(source: str, file: str = "<source>") -> Program:
    """Parse and check `source`; every error found is in the CompileError."""
    return check(parse(source, file), source)


__all__ = ["parse", "parse_program", "unparse"]
