"""The compile's progress line: on a terminal, past the delay, one line
redrawn in place and cleared at the end; nothing elsewhere."""
import io

import dlc
from dlc import driver
from dlc.codegen import compiler
from dlc.progress import CompileProgress

SOURCE = """
model m {
    input x: f32[batch, 3]
    output y = dense(x, 4, name="fc") |> relu
}
"""


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_slow_compile_on_a_terminal_shows_its_stages_then_clears_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path))   # the LLVM build runs
    out = Terminal()
    progress = CompileProgress("m.dl", file=out, delay_s=0)
    art = driver.build(SOURCE, "m.dl", progress=progress)
    compiler.shared_library(art.llvm_modules, jobs=2, progress=progress)
    progress.done()
    text = out.getvalue()
    for stage in ("check", "autodiff", "fuse", "lower", "tile", "render", "LLVM, "):
        assert f"dlc: compiling m.dl: {stage}" in text, text
    assert "\n" not in text and text.endswith("\r\x1b[K")


def test_nothing_is_shown_off_a_terminal_or_before_the_delay():
    for out, delay in ((io.StringIO(), 0), (Terminal(), 60)):
        progress = CompileProgress("m.dl", file=out, delay_s=delay)
        driver.build(SOURCE, "m.dl", progress=progress)
        progress.done()
        assert out.getvalue() == ""


def test_compile_writes_nothing_for_a_quick_program(capfd):
    dlc.compile(SOURCE)
    assert capfd.readouterr().err == ""
