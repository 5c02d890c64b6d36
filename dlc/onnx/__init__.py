"""ONNX in and out: `export_model(prog, model, path)` writes a compiled
program's model as an ONNX model; `import_model(path)` reads one as `.dl`
source and weights. Both need the optional `onnx` package
(`pip install 'dlc[onnx]'`), imported only when they are called.
"""
from __future__ import annotations


def export_model(prog, model: str, path):
    from .export import export_model as run
    return run(prog, model, path)


def import_model(path, **options):
    from .importer import import_model as run
    return run(path, **options)


__all__ = ["export_model", "import_model"]
