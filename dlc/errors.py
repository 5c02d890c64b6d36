"""The errors dlc raises: user errors in a .dl file, and runtime errors.

Two channels, as in Triton and Halide: `CompileError` is the user's fault and
points at their source; `InternalError` is ours and names the pass that broke.
Runtime errors mirror the C runtime's status codes, one subclass each.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A region of a source file; line and col are 1-based."""
    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0


@dataclass(frozen=True)
class Diagnostic:
    span: Span | None
    message: str

    def render(self, source: str | None) -> str:
        """`file:line:col: error: msg`, then the source line and a caret."""
        if self.span is None:
            return f"error: {self.message}"
        s = self.span
        out = [f"{s.file}:{s.line}:{s.col}: error: {self.message}"]
        # Lines end at "\n" only, as the lexer counts them (splitlines would
        # also split at a form feed or U+2028 inside a comment).
        lines = source.split("\n") if source else []
        if 1 <= s.line <= len(lines):
            text = lines[s.line - 1].rstrip("\r")
            width = 1
            if s.end_line == s.line and s.end_col > s.col:
                width = s.end_col - s.col
            out.append(f"    {text}")
            out.append("    " + " " * (s.col - 1) + "^" + "~" * (width - 1))
        return "\n".join(out)


class DlcError(Exception):
    """Base of every error dlc raises on purpose."""


class OpError(DlcError):
    """A user error found by an op's rules (or a type the IR refuses); the
    frontend adds the source span. `arg` names the argument at fault, so
    the caret can point at it."""

    def __init__(self, message: str, arg: str | None = None):
        super().__init__(message)
        self.message, self.arg = message, arg


class CompileError(DlcError):
    """One or more errors in a .dl program. `line`, `col` and `message` are the
    first one's; `diagnostics` holds all of them, in source order."""

    def __init__(self, diagnostics: list[Diagnostic], source: str | None = None):
        self.diagnostics = sorted(
            diagnostics, key=lambda d: (d.span.line, d.span.col) if d.span else (0, 0))
        self.source = source
        first = self.diagnostics[0]
        self.message = first.message
        self.file = first.span.file if first.span else None
        self.line = first.span.line if first.span else 0
        self.col = first.span.col if first.span else 0
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render(self.source) for d in self.diagnostics)


class InternalError(DlcError):
    """A bug in dlc: a pass produced IR its verifier rejects, or similar."""

    def __init__(self, where: str, message: str):
        super().__init__(f"internal error in {where}: {message}\n"
                         "This is a bug in dlc; please report it with the .dl file.")
        self.where = where


class ToolError(DlcError):
    """An external tool (cc, ptxas) failed; carries the command that reproduces it."""

    def __init__(self, command: list[str], output: str):
        super().__init__(f"command failed: {' '.join(command)}\n{output}")
        self.command = command


# Runtime errors: one class per dlc_status code of the C runtime.
class RuntimeError_(DlcError):
    """Base of the errors reported by the C runtime."""
    status = 0


class InvalidArgumentError(RuntimeError_):
    status = 1


class NotFoundError(RuntimeError_):
    status = 2


class IOError_(RuntimeError_):
    status = 3


class FormatError(RuntimeError_):
    status = 4


class AbiError(RuntimeError_):
    status = 5


class OutOfMemoryError(RuntimeError_):
    status = 6


class UnavailableError(RuntimeError_):
    status = 7


class RuntimeInternalError(RuntimeError_):
    status = 8


STATUS_ERRORS = {cls.status: cls for cls in (
    InvalidArgumentError, NotFoundError, IOError_, FormatError, AbiError,
    OutOfMemoryError, UnavailableError, RuntimeInternalError)}
